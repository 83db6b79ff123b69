//! Relabelling a child made before labels were injected, without a rollout.

use kube::api::{DynamicObject, Patch};
use kube::{Api, Client};
use serde_json::json;

use super::patch_pod;
use crate::api::hsd::{HotStandbyDeploymentSpec, workload_name};
use crate::error::{Result, kube_error};
use crate::plan::ObservedHsd;

/// Pauses the child (and marks it, so that an interrupted relabel is finished by the next pass)
/// or unpauses it. Returns the Deployment's new resourceVersion.
pub(super) async fn set_paused(
    api: &Api<DynamicObject>,
    hsd: &ObservedHsd,
    paused: bool,
) -> Result<Option<String>> {
    let body = if paused {
        json!({"metadata": {"annotations": {crate::observe::RELABELLING_ANNOTATION: "true"}}, "spec": {"paused": true}})
    } else {
        json!({"metadata": {"annotations": {crate::observe::RELABELLING_ANNOTATION: null}}, "spec": {"paused": null}})
    };
    let params = super::merge_params();
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
pub(super) async fn label_running_children(
    client: &Client,
    hsd: &ObservedHsd,
    spec: &HotStandbyDeploymentSpec,
) -> Result<()> {
    // Everything the child template adds to the user's: the injected labels and the template's
    // own hash, so that the relabelled pods are of the current template.
    let mut labels = crate::labels::injected(&hsd.namespace, &hsd.name);
    labels.insert(
        crate::labels::TEMPLATE_LABEL.to_string(),
        crate::plan::template_label(&hsd.namespace, &hsd.name, spec),
    );
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
        let params = super::merge_params();
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
