//! Execute: the writes of a pass. Every write is a server-side apply under [`FIELD_MANAGER`],
//! except deletion costs and relabels, which are merge patches with a uid precondition (a pod
//! replaced under the same name is never written), and events, which are created. A plan that
//! changes nothing writes nothing.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ObjectMeta;
use kube::{Api, Client, Resource};
use serde_json::json;

use crate::api::HotStandbyDeployment;
use crate::api::hsd::{HotStandbyDeploymentSpec, workload_name};
use crate::error::{Result, kube_error};
use crate::labels::{HSD_LABEL, hsd_label_value};
use crate::observe::{
    APPLIED_REPLICAS_ANNOTATION, TEMPLATE_HASH_ANNOTATION, deployment_resource, hsd_resource,
};
use crate::plan::{
    DELETION_COST_ANNOTATION, DeploymentAction, EventType, ObservedHsd, Plan, PlannedEvent,
    child_template,
};

/// The one field manager of every write this tool makes.
pub const FIELD_MANAGER: &str = "kubectl-hsd";
/// The controller name on events.
pub const REPORTING_CONTROLLER: &str = "paia.tech/kubectl-hsd";
/// Labels on the child Deployment (its pods get [`crate::labels::injected`]).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

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
    /// (pod uid, resourceVersion, cost) of each cost written.
    pub cost_versions: Vec<(String, String, i32)>,
    /// Events that could not be recorded (best effort: they never fail a pass).
    pub events_failed: usize,
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
                HSD_LABEL: hsd_label_value(&hsd.name),
            },
            "annotations": {
                TEMPLATE_HASH_ANNOTATION: template_hash,
                APPLIED_REPLICAS_ANNOTATION: replicas.to_string(),
            },
            "ownerReferences": [{
                "apiVersion": HotStandbyDeployment::api_version(&()),
                "kind": HotStandbyDeployment::kind(&()),
                "name": hsd.name,
                "uid": hsd.uid,
                "controller": true,
            }],
        },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": spec.selector.match_labels },
            "template": child_template(&hsd.namespace, &hsd.name, spec),
        },
    })
}

/// Carries out a plan. Costs go first (busy pods are protected before anything else moves),
/// events last: they describe writes that happened.
pub async fn execute(client: &Client, hsd: &ObservedHsd, plan: &Plan) -> Result<Written> {
    let mut written = Written::default();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    if !plan.cost_writes.is_empty() {
        let pods: Api<DynamicObject> = Api::namespaced_with(
            client.clone(),
            &hsd.namespace,
            &crate::observe::pod_resource(),
        );
        for write in &plan.cost_writes {
            let body = json!({"metadata": {
                "uid": write.uid,
                "annotations": { DELETION_COST_ANNOTATION: write.cost.to_string() },
            }});
            match patch_pod(&pods, &write.pod, &body).await {
                Ok(Some(version)) => {
                    written.pod_costs += 1;
                    written
                        .cost_versions
                        .push((write.uid.clone(), version, write.cost));
                }
                // Gone or replaced meanwhile: nothing left to protect or to delete.
                Ok(None) => {}
                Err(error) => {
                    return Err(kube_error(
                        format!(
                            "setting the deletion cost of pod {}/{}",
                            hsd.namespace, write.pod
                        ),
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
            relabel,
        },
        Ok(spec),
    ) = (&plan.deployment, &hsd.spec)
    {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &hsd.namespace, &deployment_resource());
        if *relabel {
            // Paused, the Deployment controller neither creates a ReplicaSet for a template it
            // cannot match nor rolls out: it only keeps the replicas.
            set_paused_for_relabel(&api, hsd, true).await?;
            relabel_running_children(client, hsd, spec).await?;
        }
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
        if *relabel {
            // Now the template equals the labelled ReplicaSet's: unpaused, nothing rolls out.
            written.deployment_version = set_paused_for_relabel(&api, hsd, false).await?;
        }
    }
    if plan.status_changed {
        written.status_version = write_status(client, hsd, &plan.status).await?;
        written.status = true;
    }
    for event in &plan.events {
        match publish(client, hsd, event).await {
            Ok(()) => written.events += 1,
            Err(error) => {
                written.events_failed += 1;
                tracing::warn!(namespace = %hsd.namespace, name = %hsd.name, reason = event.reason, %error, "could not record an event");
            }
        }
    }
    Ok(written)
}

/// A merge patch of one pod whose body carries `metadata.uid` as a precondition. Returns the
/// new resourceVersion, or `None` when the pod is gone or was replaced under its name.
async fn patch_pod(
    pods: &Api<DynamicObject>,
    name: &str,
    body: &serde_json::Value,
) -> Result<Option<String>, kube::Error> {
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..Default::default()
    };
    match pods.patch(name, &params, &Patch::Merge(body)).await {
        Ok(pod) => Ok(Some(pod.metadata.resource_version.unwrap_or_default())),
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(None),
        Err(error) => Err(error),
    }
}

/// Pauses the child (and marks it, so that an interrupted relabel is finished by the next pass)
/// or unpauses it. Returns the Deployment's new resourceVersion.
async fn set_paused_for_relabel(
    api: &Api<DynamicObject>,
    hsd: &ObservedHsd,
    paused: bool,
) -> Result<Option<String>> {
    let body = if paused {
        json!({"metadata": {"annotations": {crate::observe::RELABELLING_ANNOTATION: "true"}}, "spec": {"paused": true}})
    } else {
        json!({"metadata": {"annotations": {crate::observe::RELABELLING_ANNOTATION: null}}, "spec": {"paused": null}})
    };
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..Default::default()
    };
    let workload = workload_name(&hsd.name);
    let patched = api
        .patch(&workload, &params, &Patch::Merge(&body))
        .await
        .map_err(kube_error(
            format!(
                "{} Deployment {}/{workload} for a relabel without a rollout",
                if paused { "pausing" } else { "unpausing" },
                hsd.namespace
            ),
            "patch",
            "deployments.apps",
            Some(&hsd.namespace),
        ))?;
    Ok(patched.metadata.resource_version)
}

/// Gives a child made before labels were injected those labels without a rollout: the
/// Deployment controller treats the ReplicaSet whose template equals the Deployment's (apart
/// from `pod-template-hash`) as its current one. So, with the Deployment paused (else the
/// controller, woken by the ReplicaSet change, would find no ReplicaSet matching the old
/// template and create one), the ReplicaSets' templates are labelled first, then the running
/// pods, then the Deployment, whose new template then equals the running ReplicaSet's; unpaused,
/// no new ReplicaSet appears and no pod is replaced, busy or not.
async fn relabel_running_children(
    client: &Client,
    hsd: &ObservedHsd,
    spec: &HotStandbyDeploymentSpec,
) -> Result<()> {
    let labels = crate::labels::injected(&hsd.namespace, &hsd.name);
    let selector = spec
        .selector
        .match_labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let list = kube::api::ListParams::default().labels(&selector);
    let workload = workload_name(&hsd.name);
    let replica_sets: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &hsd.namespace,
        &kube::api::ApiResource::erase::<k8s_openapi::api::apps::v1::ReplicaSet>(&()),
    );
    let owned_by = |object: &DynamicObject, kind: &str, name: &str| {
        object
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|owner| owner.kind == kind && owner.name == name && owner.controller == Some(true))
    };
    let sets = replica_sets.list(&list).await.map_err(kube_error(
        format!("listing the ReplicaSets of {}/{workload}", hsd.namespace),
        "list",
        "replicasets.apps",
        Some(&hsd.namespace),
    ))?;
    let mut set_names = Vec::new();
    for set in sets
        .items
        .iter()
        .filter(|set| owned_by(set, "Deployment", &workload))
    {
        let name = kube::ResourceExt::name_any(set);
        let body = json!({
            "metadata": {"uid": set.metadata.uid},
            "spec": {"template": {"metadata": {"labels": labels}}},
        });
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..Default::default()
        };
        replica_sets
            .patch(&name, &params, &Patch::Merge(&body))
            .await
            .map_err(kube_error(
                format!(
                    "labelling the template of ReplicaSet {}/{name}",
                    hsd.namespace
                ),
                "patch",
                "replicasets.apps",
                Some(&hsd.namespace),
            ))?;
        set_names.push(name);
    }
    let pods: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &hsd.namespace,
        &crate::observe::pod_resource(),
    );
    let listed = pods.list(&list).await.map_err(kube_error(
        format!("listing the pods of {}/{}", hsd.namespace, hsd.name),
        "list",
        "pods",
        Some(&hsd.namespace),
    ))?;
    for pod in listed
        .items
        .iter()
        .filter(|pod| set_names.iter().any(|set| owned_by(pod, "ReplicaSet", set)))
    {
        let name = kube::ResourceExt::name_any(pod);
        let body = json!({"metadata": {"uid": pod.metadata.uid, "labels": labels}});
        patch_pod(&pods, &name, &body).await.map_err(kube_error(
            format!("labelling pod {}/{name}", hsd.namespace),
            "patch",
            "pods",
            Some(&hsd.namespace),
        ))?;
    }
    tracing::info!(namespace = %hsd.namespace, name = %hsd.name, replica_sets = set_names.len(), "labelled a child made before labels were injected, without a rollout");
    Ok(())
}

/// Applies the HSD's status subresource; returns the new resourceVersion.
pub async fn write_status(
    client: &Client,
    hsd: &ObservedHsd,
    status: &crate::api::hsd::HotStandbyDeploymentStatus,
) -> Result<Option<String>> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &hsd.namespace, &hsd_resource());
    let body = json!({ "apiVersion": HotStandbyDeployment::api_version(&()), "kind": HotStandbyDeployment::kind(&()), "status": status });
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
            api_version: Some(HotStandbyDeployment::api_version(&()).to_string()),
            kind: Some(HotStandbyDeployment::kind(&()).to_string()),
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
