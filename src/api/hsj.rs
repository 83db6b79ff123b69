//! The `HotStandbyJob` custom resource (`apps.paia.tech/v1alpha1`): a buffer of idle Jobs whose
//! one pod each is the worker. Its identity (group, version, kind, plural, short name) is the
//! derive's alone.
//!
//! Field names, defaults and meaning follow the Python/kopf reference operator, so its YAML
//! applies unchanged (`examples/hsj-exec.yaml` is its users' own example); the status fields
//! its printer columns name are really written here, which the reference never managed.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use super::hsd::{Selector, TimedRecommendation};
use super::probe::BusyProbe;

/// The scale-down delay when the spec names none (the reference operator's code default).
pub const DEFAULT_SCALE_DOWN_DELAY_SECONDS: i32 = 30;
/// The Job ceiling of an HSJ without maxReplicas (as for HotStandbyDeployments).
pub const SAFETY_MAX_JOBS: i32 = 1000;

/// The full form of `jobTemplate`, shown whenever a shorthand cannot be read.
pub const FULL_FORM: &str = "jobTemplate: {parallelism: 1, backoffLimit: 0, \
ttlSecondsAfterFinished: 60, template: {metadata: {labels: {app: NAME}}, spec: {restartPolicy: \
Never, containers: [{name: worker, image: IMAGE, command: [...]}]}}}";

/// Keeps a buffer of idle Jobs: `clamp(busy + idleTarget, minReplicas, maxReplicas)` Jobs run,
/// each one pod that is the worker.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "apps.paia.tech",
    version = "v1alpha1",
    kind = "HotStandbyJob",
    plural = "hotstandbyjobs",
    singular = "hotstandbyjob",
    shortname = "hsj",
    category = "paia",
    namespaced,
    status = "HotStandbyJobStatus",
    doc = "Keeps a buffer of idle Jobs (one worker pod each) in front of busy ones.",
    printcolumn = r#"{"name": "Mode", "type": "string", "jsonPath": ".spec.busyProbe.mode"}"#,
    printcolumn = r#"{"name": "IdleTarget", "type": "integer", "jsonPath": ".spec.idleTarget"}"#,
    printcolumn = r#"{"name": "Min", "type": "integer", "jsonPath": ".spec.minReplicas"}"#,
    printcolumn = r#"{"name": "Max", "type": "integer", "jsonPath": ".spec.maxReplicas"}"#,
    printcolumn = r#"{"name": "Busy", "type": "integer", "jsonPath": ".status.busyCount"}"#,
    printcolumn = r#"{"name": "Idle", "type": "integer", "jsonPath": ".status.idleCount"}"#,
    printcolumn = r#"{"name": "ActivePods", "type": "integer", "jsonPath": ".status.activeCount"}"#,
    printcolumn = r#"{"name": "DesiredActive", "type": "integer", "jsonPath": ".status.desiredActive"}"#,
    printcolumn = r#"{"name": "ChildJobs", "type": "integer", "jsonPath": ".status.childJobs"}"#,
    printcolumn = r#"{"name": "ActiveJobs", "type": "integer", "jsonPath": ".status.activeJobs"}"#,
    printcolumn = r#"{"name": "CompletedJobs", "type": "integer", "jsonPath": ".status.completedJobs"}"#,
    printcolumn = r#"{"name": "FailedJobs", "type": "integer", "jsonPath": ".status.failedJobs"}"#,
    printcolumn = r#"{"name": "LastSync", "type": "date", "jsonPath": ".status.lastSyncTime"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("!has(self.maxReplicas) || !has(self.minReplicas) || self.minReplicas <= self.maxReplicas").message("minReplicas must be less than or equal to maxReplicas").reason(Reason::FieldValueInvalid).field_path(".minReplicas"))]
#[x_kube(validation = Rule::new("has(self.jobTemplate.template) != has(self.jobTemplate.image)").message("jobTemplate takes either `template` (a Job's pod template) or the shorthand `image` (one container named after the HotStandbyJob), not both and not neither. The full form: jobTemplate: {parallelism: 1, backoffLimit: 0, template: {spec: {restartPolicy: Never, containers: [{name: worker, image: IMAGE}]}}}").reason(Reason::FieldValueInvalid).field_path(".jobTemplate"))]
#[x_kube(validation = Rule::new("!has(self.jobTemplate.parallelism) || self.jobTemplate.parallelism == 1").message("jobTemplate.parallelism must be 1: each Job of a HotStandbyJob runs one pod, and that pod is the worker").reason(Reason::FieldValueInvalid).field_path(".jobTemplate.parallelism"))]
// A template label that contradicts the selector is refused; a missing one is merged in.
#[x_kube(validation = Rule::new("!has(self.jobTemplate.template) || !has(self.jobTemplate.template.metadata) || !has(self.jobTemplate.template.metadata.labels) || self.selector.matchLabels.all(k, !(k in self.jobTemplate.template.metadata.labels) || self.jobTemplate.template.metadata.labels[k] == self.selector.matchLabels[k])").message("a jobTemplate.template.metadata.labels entry contradicts selector.matchLabels: give it the selector's value, or remove it (missing selector labels are added to the template)").reason(Reason::FieldValueInvalid).field_path(".selector.matchLabels"))]
#[serde(rename_all = "camelCase")]
pub struct HotStandbyJobSpec {
    /// Idle Jobs (pod running, ready, not busy) to keep on top of the busy ones.
    #[schemars(range(min = 0))]
    pub idle_target: i32,

    /// Lower bound of the Jobs that count as capacity (null: 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "nullable_count_schema")]
    pub min_replicas: Option<i32>,

    /// Upper bound of the Jobs that run (null or absent: a safety ceiling of 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "nullable_count_schema")]
    pub max_replicas: Option<i32>,

    /// Idle Jobs are deleted only once the surplus has held this long (the highest
    /// recommendation of the window wins). Creation is never delayed.
    #[serde(default = "default_scale_down_delay")]
    #[schemars(range(min = 0, max = 86400))]
    pub scale_down_delay_seconds: i32,

    /// Which pods are the workers (with the label injected into the template).
    pub selector: Selector,

    /// The Jobs' spec (a JobSpec; unknown fields are kept, the API server validates them when a
    /// Job is created), or the shorthand `image`, `command`, `args`, `env`, `resources`,
    /// `imagePullPolicy` with `parallelism`, `completions`, `backoffLimit`,
    /// `ttlSecondsAfterFinished` and `activeDeadlineSeconds`.
    #[schemars(schema_with = "job_template_schema")]
    pub job_template: serde_json::Value,

    /// How a worker tells that it is busy.
    #[serde(default)]
    pub busy_probe: BusyProbe,
}

fn default_scale_down_delay() -> i32 {
    DEFAULT_SCALE_DOWN_DELAY_SECONDS
}

fn nullable_count_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "integer", "format": "int32", "minimum": 0, "nullable": true})
}

fn job_template_schema(generator: &mut SchemaGenerator) -> Schema {
    // Unknown fields are kept; what the CEL rules read is declared. The pod template is the
    // HotStandbyDeployment's.
    let pod_template = super::hsd::pod_template_schema(generator);
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "properties": {
            "parallelism": {"type": "integer", "format": "int32"},
            "image": {"type": "string", "minLength": 1},
            "template": pod_template
        }
    })
}

/// What the last pass saw and decided.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HotStandbyJobStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Jobs whose worker is busy.
    #[serde(default)]
    pub busy_count: i32,
    /// Jobs whose worker runs, is ready, and is not busy.
    #[serde(default)]
    pub idle_count: i32,
    /// Jobs whose worker does not run yet (or is not ready): capacity on its way.
    #[serde(default)]
    pub starting_count: i32,
    /// Jobs whose worker did not answer its probe: counted as busy, never deleted.
    #[serde(default)]
    pub unknown_count: i32,
    /// Jobs that count as capacity (busy, idle, starting, unknown): one pod each.
    #[serde(default)]
    pub active_count: i32,
    /// The Jobs the formula asks for, within the bounds.
    #[serde(default)]
    pub desired_active: i32,
    /// Every Job of this HSJ, finished ones included.
    #[serde(default)]
    pub child_jobs: i32,
    /// Jobs not finished and not being deleted.
    #[serde(default)]
    pub active_jobs: i32,
    /// Jobs that completed (left to ttlSecondsAfterFinished).
    #[serde(default)]
    pub completed_jobs: i32,
    /// Jobs that failed (left to ttlSecondsAfterFinished).
    #[serde(default)]
    pub failed_jobs: i32,
    /// Jobs made from an older jobTemplate that still run (busy ones finish their work; idle
    /// ones are replaced).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub outdated_jobs: i32,
    /// When the status last changed (a pass with nothing to change writes nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<String>,
    /// When Jobs were last created or deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<String>,
    /// Recommendations inside the scale-down delay window, each from when it was first made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_recommendations: Vec<TimedRecommendation>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

fn is_zero(value: &i32) -> bool {
    *value == 0
}

fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema
}

impl HotStandbyJobSpec {
    /// minReplicas, null or absent reading as 0.
    pub fn min_jobs(&self) -> i32 {
        self.min_replicas.unwrap_or(0).max(0)
    }

    /// maxReplicas, or the safety ceiling when it is absent or null.
    pub fn max_jobs(&self) -> i32 {
        self.max_replicas.unwrap_or(SAFETY_MAX_JOBS).max(0)
    }

    /// The selector's labels.
    pub fn match_labels(&self) -> &BTreeMap<String, String> {
        &self.selector.match_labels
    }
}
