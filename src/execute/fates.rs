//! Carrying out the pods' fates: each write is a compare-and-swap on the resourceVersion the
//! pod was read at (or that this tool's own previous write returned), so it cannot reach a pod
//! whose state changed meanwhile: a pod marked busy after it was read keeps running.

use jiff::Timestamp;
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, Preconditions};
use serde_json::json;

use crate::api::HotStandbyDeployment;
use crate::error::{Result, kube_error};
use crate::labels::{DRAINING_ANNOTATION, RETIRED_ANNOTATION, STATE_LABEL};
use crate::plan::{
    DELETION_COST_ANNOTATION, DRAINING_DELETION_COST, ObservedHsd, POD_TEMPLATE_HASH_LABEL, PodRef,
};

/// What happened to one compare-and-swap.
enum Swap {
    /// Written: the pod's new resourceVersion.
    Done(String),
    /// The pod changed since it was read, or is gone: left as it is.
    Refused,
}

fn pods(client: &Client, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), namespace, &crate::observe::pod_resource())
}

/// The HSD as the pod's controller owner: a detached pod goes when the HSD goes.
fn owner(hsd: &ObservedHsd) -> serde_json::Value {
    json!([{
        "apiVersion": <HotStandbyDeployment as kube::Resource>::api_version(&()),
        "kind": <HotStandbyDeployment as kube::Resource>::kind(&()),
        "name": hsd.name,
        "uid": hsd.uid,
        "controller": true,
        "blockOwnerDeletion": true,
    }])
}

async fn swap(
    pods: &Api<DynamicObject>,
    hsd: &ObservedHsd,
    pod: &PodRef,
    metadata: serde_json::Value,
) -> Result<Swap> {
    let mut metadata = metadata;
    metadata["uid"] = json!(pod.uid);
    metadata["resourceVersion"] = json!(pod.resource_version);
    let params = super::merge_params();
    match pods
        .patch(
            &pod.pod,
            &params,
            &Patch::Merge(json!({ "metadata": metadata })),
        )
        .await
    {
        Ok(patched) => Ok(Swap::Done(
            patched.metadata.resource_version.unwrap_or_default(),
        )),
        Err(kube::Error::Api(status)) if status.code == 409 || status.code == 404 => {
            Ok(Swap::Refused)
        }
        Err(error) => Err(kube_error(
            format!("changing pod {}/{}", hsd.namespace, pod.pod),
            "patch",
            "pods",
            Some(&hsd.namespace),
        )(error)),
    }
}

/// Marks `pod` draining and gives it the lowest deletion cost, in one write; with `detach`
/// (a pod of an earlier template), also detaches it from its ReplicaSet (the HSD becomes its
/// owner). Returns the new resourceVersion, or `None` when the pod changed since it was read
/// (it may have turned busy): it then stays as it is.
///
/// A pod of the current template stays in its ReplicaSet: were it detached before replicas
/// drop, the ReplicaSet would replace it at once, and its replacement (ready within
/// milliseconds on a fast node) would tie with a pod that just turned busy when the drop makes
/// one of them surplus. In its ReplicaSet, with the lowest cost, it is the one the ReplicaSet
/// deletes first (docs/pod-states.md).
pub(super) async fn drain(
    client: &Client,
    hsd: &ObservedHsd,
    pod: &PodRef,
    state_label: bool,
    detach: bool,
) -> Result<Option<String>> {
    let mut labels = json!({});
    if detach {
        labels[POD_TEMPLATE_HASH_LABEL] = serde_json::Value::Null;
    }
    if state_label {
        labels[STATE_LABEL] = json!("draining");
    }
    let mut metadata = json!({
        "labels": labels,
        "annotations": {
            DRAINING_ANNOTATION: Timestamp::now().to_string(),
            DELETION_COST_ANNOTATION: DRAINING_DELETION_COST.to_string(),
        },
    });
    if detach {
        metadata["ownerReferences"] = owner(hsd);
    }
    match swap(&pods(client, &hsd.namespace), hsd, pod, metadata).await? {
        Swap::Done(version) => Ok(Some(version)),
        Swap::Refused => Ok(None),
    }
}

/// Detaches a busy pod of an earlier template and keeps it, marked retired.
pub(super) async fn retire(client: &Client, hsd: &ObservedHsd, pod: &PodRef) -> Result<bool> {
    let metadata = json!({
        "labels": { POD_TEMPLATE_HASH_LABEL: null },
        "annotations": { RETIRED_ANNOTATION: Timestamp::now().to_string() },
        "ownerReferences": owner(hsd),
    });
    Ok(matches!(
        swap(&pods(client, &hsd.namespace), hsd, pod, metadata).await?,
        Swap::Done(_)
    ))
}

/// Deletes a detached pod if it is still exactly as read (uid and resourceVersion).
pub(super) async fn delete(client: &Client, hsd: &ObservedHsd, pod: &PodRef) -> Result<bool> {
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(pod.uid.clone()),
            resource_version: Some(pod.resource_version.clone()),
        }),
        ..DeleteParams::default()
    };
    match pods(client, &hsd.namespace).delete(&pod.pod, &params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 || status.code == 404 => Ok(false),
        Err(error) => Err(kube_error(
            format!("deleting pod {}/{}", hsd.namespace, pod.pod),
            "delete",
            "pods",
            Some(&hsd.namespace),
        )(error)),
    }
}

/// Sets (or removes) the `paia.tech/state` label. Not a swap: the label routes traffic, it
/// decides no pod's fate; the uid keeps it off a pod replaced under the same name.
pub(super) async fn state_label(
    client: &Client,
    hsd: &ObservedHsd,
    pod: &PodRef,
    value: Option<&str>,
) -> Result<bool> {
    let body = json!({"metadata": {"uid": pod.uid, "labels": { STATE_LABEL: value }}});
    match super::patch_pod(&pods(client, &hsd.namespace), &pod.pod, &body).await {
        Ok(done) => Ok(done.is_some()),
        Err(error) => Err(kube_error(
            format!("labelling pod {}/{}", hsd.namespace, pod.pod),
            "patch",
            "pods",
            Some(&hsd.namespace),
        )(error)),
    }
}
