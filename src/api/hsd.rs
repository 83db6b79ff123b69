//! The `HotStandbyDeployment` custom resource (`apps.paia.tech/v1alpha1`). Its identity (group,
//! version, kind, plural, short name) is the derive's alone; everything else reads it from there.
//!
//! Field names, defaults and meaning follow the Python reference operator, so its YAML applies
//! unchanged; the status adds what users need to see why a pass decided what it did.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

pub use super::probe::{
    BusyProbe, DEFAULT_BUSY_ANNOTATION, ExecProbe, HttpProbe, ProbeMode, unknown_mode_message,
};
/// Setting this annotation to "true" on an HSD stops all scaling of it.
pub const PAUSED_ANNOTATION: &str = "paia.tech/paused";
/// The replica ceiling of an HSD without maxReplicas: the reference operator's CRD default.
pub const SAFETY_MAX_REPLICAS: i32 = 1000;

/// Keeps a constant buffer of idle, warm pods: the child Deployment `<name>-workload` runs
/// `clamp(busyPods + idleTarget, minReplicas, maxReplicas)` replicas.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "apps.paia.tech",
    version = "v1alpha1",
    kind = "HotStandbyDeployment",
    plural = "hotstandbydeployments",
    singular = "hotstandbydeployment",
    shortname = "hsd",
    category = "paia",
    namespaced,
    status = "HotStandbyDeploymentStatus",
    doc = "Keeps a constant buffer of idle, warm pods in front of busy ones.",
    printcolumn = r#"{"name": "Ready", "type": "string", "description": "The Ready condition: the Deployment is kept at the desired replicas", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name": "Busy", "type": "integer", "jsonPath": ".status.busyCount"}"#,
    printcolumn = r#"{"name": "Idle", "type": "integer", "jsonPath": ".status.idleCount"}"#,
    printcolumn = r#"{"name": "Desired", "type": "integer", "jsonPath": ".status.desiredReplicas"}"#,
    printcolumn = r#"{"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas"}"#,
    printcolumn = r#"{"name": "Starting", "type": "integer", "jsonPath": ".status.startingCount", "priority": 1}"#,
    printcolumn = r#"{"name": "Unknown", "type": "integer", "jsonPath": ".status.unknownCount", "priority": 1}"#,
    printcolumn = r#"{"name": "Old", "type": "integer", "description": "Pods of an earlier template still there (a rollout under way)", "jsonPath": ".status.rollout.oldPods", "priority": 1}"#,
    printcolumn = r#"{"name": "Idle-Target", "type": "integer", "jsonPath": ".spec.idleTarget", "priority": 1}"#,
    printcolumn = r#"{"name": "Min", "type": "integer", "jsonPath": ".spec.minReplicas", "priority": 1}"#,
    printcolumn = r#"{"name": "Max", "type": "integer", "jsonPath": ".spec.maxReplicas", "priority": 1}"#,
    printcolumn = r#"{"name": "Probe", "type": "string", "jsonPath": ".spec.busyProbe.mode", "priority": 1}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("!has(self.maxReplicas) || !has(self.minReplicas) || self.minReplicas <= self.maxReplicas").message("minReplicas must be less than or equal to maxReplicas").reason(Reason::FieldValueInvalid).field_path(".minReplicas"))]
// A template label that contradicts the selector is refused; a missing one is merged in (the
// reference operator's schema accepted templates without the selector's labels).
#[x_kube(validation = Rule::new("!has(self.podTemplate.metadata) || !has(self.podTemplate.metadata.labels) || self.selector.matchLabels.all(k, !(k in self.podTemplate.metadata.labels) || self.podTemplate.metadata.labels[k] == self.selector.matchLabels[k])").message("a podTemplate.metadata.labels entry contradicts selector.matchLabels: give it the selector's value, or remove it (missing selector labels are added to the template)").reason(Reason::FieldValueInvalid).field_path(".selector.matchLabels"))]
#[serde(rename_all = "camelCase")]
pub struct HotStandbyDeploymentSpec {
    /// Idle (ready, not busy) pods to keep on top of the busy ones.
    #[schemars(range(min = 0))]
    pub idle_target: i32,

    /// Lower bound of the child Deployment's replicas.
    #[serde(default, deserialize_with = "null_as_default")]
    #[schemars(range(min = 0), schema_with = "min_replicas_schema")]
    pub min_replicas: i32,

    /// Upper bound of the child Deployment's replicas. Defaults to 1000, as in the reference
    /// operator; an explicit null means the same safety ceiling of 1000.
    #[serde(
        default = "default_max_replicas",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "max_replicas_schema")]
    pub max_replicas: Option<i32>,

    /// Which pods belong to this HSD; becomes the child Deployment's selector (immutable there).
    pub selector: Selector,

    /// The pod template of the child Deployment (a Deployment's `spec.template`).
    #[schemars(schema_with = "pod_template_schema")]
    pub pod_template: serde_json::Value,

    /// How a pod tells that it is busy.
    #[serde(default)]
    pub busy_probe: BusyProbe,

    /// Replicas drop only after the lower count has held this long (the highest recommendation
    /// of the window wins, like the HPA's stabilization window). Scale-up is never delayed.
    /// 0 (the default) scales down at once, as the reference operator does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400))]
    pub scale_down_delay_seconds: Option<i32>,

    /// Grows the buffer with load: idle target = max(idleTarget, ceil((busy + unknown) * idlePercent / 100)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub idle_percent: Option<i32>,

    /// How a change of podTemplate replaces the pods: idle pods of the earlier template go first,
    /// busy ones keep running to the end of their work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutPolicy>,

    /// Routing new work to idle pods only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<Routing>,

    /// Sleep at 0 replicas when nothing has been busy and no connection has come through
    /// `kubectl hsd proxy --hsd` for a while; the proxy wakes the HSD on the next connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_to_zero: Option<ScaleToZero>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleToZero {
    /// Seconds without a busy pod and without a proxied connection before replicas go to 0
    /// (below minReplicas). The shared deadline is the HSD's annotation
    /// `zero-pod-autoscaler/scale-down-at`, moved later by the reconciler while pods are busy
    /// and by every proxy replica while connections are open.
    #[schemars(range(min = 1))]
    pub after_seconds: i64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutPolicy {
    /// How long a busy pod of an earlier template may hold the rollout; after that it is
    /// removed, with a Warning event. Absent: as long as its work lasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_busy_seconds: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Routing {
    /// Keep the label `paia.tech/state` (idle, busy or draining) on each pod, so that a Service
    /// selecting `paia.tech/state: idle` sends new connections only to idle pods. Readiness is
    /// never touched.
    #[serde(default)]
    pub state_label: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Selector {
    /// Labels a pod must carry, all of them, to belong to this HSD.
    #[schemars(schema_with = "match_labels_schema")]
    pub match_labels: BTreeMap<String, String>,
}

fn default_max_replicas() -> Option<i32> {
    Some(SAFETY_MAX_REPLICAS)
}

/// `minReplicas: null` (nullable in the reference's schema) reads as 0.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

fn min_replicas_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "integer", "format": "int32", "minimum": 0, "default": 0, "nullable": true})
}

fn max_replicas_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "integer", "format": "int32", "minimum": 1, "default": SAFETY_MAX_REPLICAS, "nullable": true})
}

/// What the last pass saw and decided.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HotStandbyDeploymentStatus {
    /// Pods that are busy (annotation or probe).
    #[serde(default)]
    pub busy_count: i32,
    /// Ready pods that are not busy.
    #[serde(default)]
    pub idle_count: i32,
    /// Pods that are not ready yet and not busy.
    #[serde(default)]
    pub starting_count: i32,
    /// Pods whose probe failed (timeout, connection error); counted as busy for scaling.
    #[serde(default)]
    pub unknown_count: i32,
    /// Pods being deleted (not counted anywhere else).
    #[serde(default)]
    pub terminating_count: i32,
    /// The replicas the formula asks for.
    #[serde(default)]
    pub desired_replicas: i32,
    /// Pods of the HSD that exist now (not terminating).
    #[serde(default)]
    pub replicas: i32,
    /// The HSD generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the child Deployment's replicas were last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<String>,
    /// Recommendations inside the scale-down delay window, each from when it was first made
    /// (kept here so that separate one-shot passes share the window).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_recommendations: Vec<TimedRecommendation>,
    /// A rollout under way: pods of an earlier template that are still there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// The progress of a rollout.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The hash of the current template (the `paia.tech/template` label of its pods).
    pub template: String,
    /// Pods of earlier templates still there (busy ones running to the end of their work).
    pub old_pods: i32,
    /// Busy pods of earlier templates, each with when it was retired.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub old_busy_pods: Vec<RetiredPod>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetiredPod {
    pub name: String,
    pub since: String,
}

/// A replica count the formula gave, and since when.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimedRecommendation {
    pub replicas: i32,
    pub since: String,
}

pub(crate) fn pod_template_schema(_: &mut SchemaGenerator) -> Schema {
    // Unknown fields are kept (the API server validates them when the Deployment is applied);
    // metadata.labels is declared so that the CEL rule on the selector can read it.
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "properties": {
            "metadata": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": true,
                "properties": {
                    "labels": {
                        "type": "object",
                        "maxProperties": 64,
                        "additionalProperties": {"type": "string", "maxLength": 63}
                    }
                }
            },
            "spec": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": true
            }
        }
    })
}

fn match_labels_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "minProperties": 1,
        "maxProperties": 64,
        "additionalProperties": {"type": "string", "maxLength": 63}
    })
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

impl HotStandbyDeployment {
    pub fn workload_name(&self) -> String {
        workload_name(&kube::ResourceExt::name_any(self))
    }
    pub fn is_paused(&self) -> bool {
        kube::ResourceExt::annotations(self)
            .get(PAUSED_ANNOTATION)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }
}

/// The child Deployment's name for the HSD `hsd_name`.
pub fn workload_name(hsd_name: &str) -> String {
    format!("{hsd_name}-workload")
}
