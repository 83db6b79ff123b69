//! `mark-busy` and `mark-idle`: set the busy annotation on pods, from a terminal or from inside
//! the pod itself (POD_NAME and POD_NAMESPACE from the Downward API, in-cluster config).

use k8s_openapi::api::core::v1::Pod;
use kube::api::{DynamicObject, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::{GlobalArgs, MarkArgs};
use crate::api::hsd::DEFAULT_BUSY_ANNOTATION;
use crate::error::{Error, Result, kube_error};
use crate::observe;

/// Field manager of busy marks. Not the reconciler's: server-side apply removes the fields a
/// manager stops applying, so the two writers of a pod's annotations must not share one.
pub const MARK_FIELD_MANAGER: &str = "kubectl-hsd-mark";

pub async fn mark(global: &GlobalArgs, args: MarkArgs, busy: bool) -> Result<i32> {
    let (pods, env_namespace) = if args.pods.is_empty() {
        match std::env::var("POD_NAME") {
            Ok(pod) if !pod.is_empty() => (vec![pod], std::env::var("POD_NAMESPACE").ok()),
            _ => {
                return Err(Error::Invalid(
                    "name the pods to mark, or run inside a pod with POD_NAME (and POD_NAMESPACE) set from the Downward API".into(),
                ));
            }
        }
    } else {
        (args.pods, None)
    };
    let (client, _, default_ns) = crate::client::connect(&global.client_options()).await?;
    let namespace = global
        .namespace
        .clone()
        .or(env_namespace)
        .unwrap_or(default_ns);
    let value = if busy { "true" } else { "false" };
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let keys = annotation_keys(&client, &namespace).await;
    let mut failed = 0;
    for name in &pods {
        match mark_one(&pod_api, &keys, name, value).await {
            Ok(key) => println!(
                "pod/{name} marked {} ({key}={value})",
                if busy { "busy" } else { "idle" }
            ),
            Err(error) => {
                eprintln!("error: pod/{name}: {error}");
                failed += 1;
            }
        }
    }
    Ok(if failed == 0 { 0 } else { 1 })
}

/// (selector, annotation key) of each HSD in the namespace; empty when HSDs cannot be listed
/// (a pod's own identity usually may not), in which case the default key is used.
async fn annotation_keys(
    client: &Client,
    namespace: &str,
) -> Vec<(std::collections::BTreeMap<String, String>, String)> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &observe::hsd_resource());
    match api.list(&ListParams::default()).await {
        Ok(list) => list
            .items
            .iter()
            .filter_map(|object| {
                let spec = observe::hsd_facts(object).spec.ok()?;
                Some((spec.selector.match_labels, spec.busy_probe.annotation_key))
            })
            .collect(),
        Err(error) => {
            tracing::debug!(%error, "cannot list HotStandbyDeployments; using the default busy annotation");
            Vec::new()
        }
    }
}

async fn mark_one(
    pods: &Api<Pod>,
    keys: &[(std::collections::BTreeMap<String, String>, String)],
    name: &str,
    value: &str,
) -> Result<String> {
    let namespace = pods.namespace().unwrap_or("default").to_string();
    // Read first: an apply to a pod that does not exist would try to create one.
    let pod = pods
        .get_opt(name)
        .await
        .map_err(kube_error(
            format!("reading pod {name}"),
            "get",
            "pods",
            Some(&namespace),
        ))?
        .ok_or_else(|| Error::NotFound {
            what: format!("pod {name:?} in namespace {namespace}"),
        })?;
    let key = keys
        .iter()
        .find(|(selector, _)| crate::plan::selector_matches(selector, pod.labels()))
        .map_or(DEFAULT_BUSY_ANNOTATION.to_string(), |(_, key)| key.clone());
    let patch = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "annotations": {key.as_str(): value}},
    });
    pods.patch(
        name,
        &PatchParams::apply(MARK_FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(kube_error(
        format!("annotating pod {name}"),
        "patch",
        "pods",
        Some(&namespace),
    ))?;
    Ok(key)
}
