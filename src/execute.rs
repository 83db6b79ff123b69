//! Execute: the writes of a pass. Every write is a server-side apply under [`FIELD_MANAGER`]
//! (events are created), and a plan that changes nothing writes nothing.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ObjectMeta;
use kube::{Api, Client};
use serde_json::json;

use crate::crd::{API_VERSION, HotStandbyDeploymentSpec, KIND, workload_name};
use crate::error::{Result, kube_error};
use crate::observe::{
    APPLIED_REPLICAS_ANNOTATION, TEMPLATE_HASH_ANNOTATION, deployment_resource, hsd_resource,
};
use crate::plan::{
    DELETION_COST_ANNOTATION, DeploymentAction, EventType, ObservedHsd, Plan, PlannedEvent,
};

/// The one field manager of every write this tool makes.
pub const FIELD_MANAGER: &str = "kubectl-hsd";
/// The controller name on events.
pub const REPORTING_CONTROLLER: &str = "paia.tech/kubectl-hsd";
/// Labels on the child Deployment (not on its pods: the template is the user's).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const HSD_LABEL: &str = "paia.tech/hotstandbydeployment";

/// What one execution wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub pod_costs: usize,
    pub deployment: bool,
    pub status: bool,
    pub events: usize,
    /// The resourceVersion each write returned, so that a watcher can tell when its caches
    /// have caught up with its own writes.
    pub deployment_version: Option<String>,
    pub status_version: Option<String>,
}

impl Written {
    pub fn count(&self) -> usize {
        self.pod_costs + usize::from(self.deployment) + usize::from(self.status) + self.events
    }
}

/// The child Deployment as this tool applies it.
pub fn desired_deployment(
    hsd: &ObservedHsd,
    spec: &HotStandbyDeploymentSpec,
    replicas: i32,
    template_hash: &str,
) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": workload_name(&hsd.name),
            "namespace": hsd.namespace,
            "labels": {
                MANAGED_BY_LABEL: FIELD_MANAGER,
                HSD_LABEL: hsd.name,
            },
            "annotations": {
                TEMPLATE_HASH_ANNOTATION: template_hash,
                APPLIED_REPLICAS_ANNOTATION: replicas.to_string(),
            },
            "ownerReferences": [{
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": hsd.name,
                "uid": hsd.uid,
                "controller": true,
            }],
        },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": spec.selector.match_labels },
            "template": spec.pod_template,
        },
    })
}

/// Carries out a plan. Events go last: they describe writes that happened.
pub async fn execute(client: &Client, hsd: &ObservedHsd, plan: &Plan) -> Result<Written> {
    let mut written = Written::default();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    // Deletion costs go first, so that the ReplicaSet ranks busy pods last when replicas drop.
    if !plan.cost_writes.is_empty() {
        let pods: Api<k8s_openapi::api::core::v1::Pod> =
            Api::namespaced(client.clone(), &hsd.namespace);
        for (pod, cost) in &plan.cost_writes {
            let body = json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": pod,
                    "namespace": hsd.namespace,
                    "annotations": { DELETION_COST_ANNOTATION: cost.to_string() },
                },
            });
            match pods.patch(pod, &params, &Patch::Apply(&body)).await {
                Ok(_) => written.pod_costs += 1,
                // Gone already: nothing left to protect or to delete.
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => {
                    return Err(kube_error(
                        format!("setting the deletion cost of pod {}/{pod}", hsd.namespace),
                        "patch",
                        "pods",
                        Some(&hsd.namespace),
                    )(error));
                }
            }
        }
    }
    if let (
        DeploymentAction::Apply {
            replicas,
            template_hash,
        },
        Ok(spec),
    ) = (&plan.deployment, &hsd.spec)
    {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &hsd.namespace, &deployment_resource());
        let body = desired_deployment(hsd, spec, *replicas, template_hash);
        let applied = api
            .patch(&workload_name(&hsd.name), &params, &Patch::Apply(&body))
            .await
            .map_err(kube_error(
                format!(
                    "applying Deployment {}/{}",
                    hsd.namespace,
                    workload_name(&hsd.name)
                ),
                "patch",
                "deployments.apps",
                Some(&hsd.namespace),
            ))?;
        written.deployment = true;
        written.deployment_version = applied.metadata.resource_version;
    }
    if plan.status_changed {
        written.status_version = write_status(client, hsd, &plan.status).await?;
        written.status = true;
    }
    for event in &plan.events {
        publish(client, hsd, event).await?;
        written.events += 1;
    }
    Ok(written)
}

/// Applies the HSD's status subresource; returns the new resourceVersion.
pub async fn write_status(
    client: &Client,
    hsd: &ObservedHsd,
    status: &crate::crd::HotStandbyDeploymentStatus,
) -> Result<Option<String>> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &hsd.namespace, &hsd_resource());
    let body = json!({ "apiVersion": API_VERSION, "kind": KIND, "status": status });
    let written = api
        .patch_status(
            &hsd.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(kube_error(
            format!("writing the status of {}/{}", hsd.namespace, hsd.name),
            "patch",
            "hotstandbydeployments/status",
            Some(&hsd.namespace),
        ))?;
    Ok(written.metadata.resource_version)
}

/// Creates one `events.k8s.io/v1` Event about the HSD.
pub async fn publish(client: &Client, hsd: &ObservedHsd, event: &PlannedEvent) -> Result<()> {
    let now = jiff::Timestamp::now();
    let api: Api<Event> = Api::namespaced(client.clone(), &hsd.namespace);
    let body = Event {
        metadata: ObjectMeta {
            name: Some(format!("{}.{:x}", hsd.name, now.as_nanosecond())),
            namespace: Some(hsd.namespace.clone()),
            ..Default::default()
        },
        event_time: Some(MicroTime(now)),
        action: Some(event.reason.to_string()),
        reason: Some(event.reason.to_string()),
        note: Some(truncate(&event.note, 1000)),
        type_: Some(
            match event.type_ {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            }
            .to_string(),
        ),
        reporting_controller: Some(REPORTING_CONTROLLER.to_string()),
        reporting_instance: Some(reporting_instance()),
        regarding: Some(ObjectReference {
            api_version: Some(API_VERSION.to_string()),
            kind: Some(KIND.to_string()),
            name: Some(hsd.name.clone()),
            namespace: Some(hsd.namespace.clone()),
            uid: Some(hsd.uid.clone()),
            ..Default::default()
        }),
        ..Default::default()
    };
    api.create(&PostParams::default(), &body)
        .await
        .map_err(kube_error(
            format!(
                "recording event {} on {}/{}",
                event.reason, hsd.namespace, hsd.name
            ),
            "create",
            "events.events.k8s.io",
            Some(&hsd.namespace),
        ))?;
    Ok(())
}

fn reporting_instance() -> String {
    std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| FIELD_MANAGER.to_string())
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}
