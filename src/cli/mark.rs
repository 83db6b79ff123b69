//! `mark-busy` and `mark-idle`: set the busy annotation on pods (of a HotStandbyDeployment or a
//! HotStandbyJob), from a terminal or from inside the pod itself (POD_NAME and POD_NAMESPACE
//! from the Downward API, in-cluster config).

use k8s_openapi::api::core::v1::Pod;
use kube::api::{DynamicObject, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::{DryRun, GlobalArgs, MarkArgs};
use crate::api::hsd::DEFAULT_BUSY_ANNOTATION;
use crate::error::{Error, Result, kube_error};
use crate::observe;

/// Field manager of busy marks. Not the reconciler's, so that the two writers of a pod's
/// annotations are told apart in its managed fields.
pub const MARK_FIELD_MANAGER: &str = "kubectl-hsd-mark";
/// The exit code of `mark-busy` when a pod is draining or terminating: it is being removed and
/// must take no new work.
pub const EXIT_DRAINING: i32 = 3;
/// Attempts of a mark that raced another write to the pod.
const ATTEMPTS: usize = 5;

/// Why one pod was not marked.
enum Refusal {
    Draining,
    Terminating,
    Failed(Error),
}

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
    let dry_run = args.writes.dry_run;
    let (client, _, default_ns) =
        crate::client::connect(&global.write_client_options(&args.writes)).await?;
    let namespace = global
        .namespace
        .clone()
        .or(env_namespace)
        .unwrap_or(default_ns);
    let value = if busy { "true" } else { "false" };
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let keys = annotation_keys(&client, &namespace).await;
    let mut failed = 0;
    let mut draining = 0;
    for name in &pods {
        match mark_one(&pod_api, &keys, name, value, busy, dry_run).await {
            Ok((key, note)) => {
                println!(
                    "pod/{name} marked {} ({key}={value}){}",
                    if busy { "busy" } else { "idle" },
                    dry_run.suffix()
                );
                if let Some(note) = note {
                    crate::notice!("pod/{name}: {note}");
                }
            }
            Err(Refusal::Draining) => {
                crate::notice_error!(
                    "pod/{name} is draining: it is being removed and takes no new work (not marked busy)"
                );
                draining += 1;
            }
            Err(Refusal::Terminating) => {
                crate::notice_error!(
                    "pod/{name} is terminating: it is being deleted and takes no new work (not marked busy)"
                );
                draining += 1;
            }
            Err(Refusal::Failed(error)) => {
                crate::notice_error!("pod/{name}: {error}");
                failed += 1;
            }
        }
    }
    Ok(if failed > 0 {
        1
    } else if draining > 0 {
        EXIT_DRAINING
    } else {
        0
    })
}

/// What marking needs to know of one HSD or HSJ: which pods it selects, its busy annotation,
/// and (for a note) how it really reads busy.
struct Owner {
    kind: &'static str,
    name: String,
    selector: std::collections::BTreeMap<String, String>,
    /// The label the HSJ injects into its pods (HSJs only), with its value.
    label: Option<(String, String)>,
    key: String,
    mode: crate::api::probe::ProbeMode,
}

/// Every HSD and HSJ of the namespace; empty when they cannot be listed (a pod's own identity
/// usually may not), in which case the default key is used.
async fn annotation_keys(client: &Client, namespace: &str) -> Vec<Owner> {
    let mut owners = Vec::new();
    let hsds: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &observe::hsd_resource());
    match hsds.list(&ListParams::default()).await {
        Ok(list) => owners.extend(list.items.iter().filter_map(|object| {
            let hsd = observe::hsd_facts(object);
            let spec = hsd.spec.ok()?;
            Some(Owner {
                kind: "HotStandbyDeployment",
                name: hsd.name,
                selector: spec.selector.match_labels,
                label: None,
                key: spec.busy_probe.annotation_key,
                mode: spec.busy_probe.mode,
            })
        })),
        Err(error) => {
            tracing::debug!(%error, "cannot list HotStandbyDeployments; using the default busy annotation");
        }
    }
    let hsjs: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &observe::jobs::hsj_resource());
    match hsjs.list(&ListParams::default()).await {
        Ok(list) => owners.extend(list.items.iter().filter_map(|object| {
            let hsj = observe::jobs::hsj_facts(object);
            let spec = hsj.spec.ok()?;
            Some(Owner {
                kind: "HotStandbyJob",
                label: Some((
                    crate::labels::HSJ_LABEL.to_string(),
                    crate::labels::hsd_label_value(&hsj.name),
                )),
                name: hsj.name,
                selector: spec.selector.match_labels,
                key: spec.busy_probe.annotation_key,
                mode: spec.busy_probe.mode,
            })
        })),
        Err(error) => {
            tracing::debug!(%error, "cannot list HotStandbyJobs; using the default busy annotation");
        }
    }
    owners
}

/// Marks one pod, a compare-and-swap on the resourceVersion it was read at: a pod that this
/// tool marked draining in between is seen, and never marked busy. Returns the annotation key
/// used, and a note when its owner does not read the annotation (http or exec mode).
async fn mark_one(
    pods: &Api<Pod>,
    owners: &[Owner],
    name: &str,
    value: &str,
    busy: bool,
    dry_run: DryRun,
) -> std::result::Result<(String, Option<String>), Refusal> {
    let namespace = pods.namespace().unwrap_or("default").to_string();
    for attempt in 1..=ATTEMPTS {
        let pod = pods
            .get_opt(name)
            .await
            .map_err(|e| {
                Refusal::Failed(kube_error(
                    format!("reading pod {name}"),
                    "get",
                    "pods",
                    Some(&namespace),
                )(e))
            })?
            .ok_or_else(|| {
                Refusal::Failed(Error::NotFound {
                    what: format!("pod {name:?} in namespace {namespace}"),
                })
            })?;
        if busy
            && pod
                .annotations()
                .contains_key(crate::labels::DRAINING_ANNOTATION)
        {
            return Err(Refusal::Draining);
        }
        if busy && pod.metadata.deletion_timestamp.is_some() {
            return Err(Refusal::Terminating);
        }
        let owner = owners.iter().find(|owner| {
            crate::plan::selector_matches(&owner.selector, pod.labels())
                && owner
                    .label
                    .as_ref()
                    .is_none_or(|(label, value)| pod.labels().get(label) == Some(value))
        });
        let key = owner.map_or(DEFAULT_BUSY_ANNOTATION.to_string(), |owner| {
            owner.key.clone()
        });
        let note = owner.filter(|owner| owner.mode.is_probed()).map(|owner| {
            format!(
                "{} {} reads busy by its {} probe, not by this annotation",
                owner.kind,
                owner.name,
                owner.mode.as_str()
            )
        });
        if dry_run == DryRun::Client {
            return Ok((key, note));
        }
        let patch = json!({"metadata": {
            "resourceVersion": pod.resource_version(),
            "annotations": {key.as_str(): value},
        }});
        let params = PatchParams {
            field_manager: Some(MARK_FIELD_MANAGER.to_string()),
            ..Default::default()
        };
        match pods.patch(name, &params, &Patch::Merge(&patch)).await {
            Ok(_) => return Ok((key, note)),
            // Changed since read (perhaps marked draining): read again.
            Err(kube::Error::Api(status)) if status.code == 409 && attempt < ATTEMPTS => continue,
            Err(error) => {
                return Err(Refusal::Failed(kube_error(
                    format!("annotating pod {name}"),
                    "patch",
                    "pods",
                    Some(&namespace),
                )(error)));
            }
        }
    }
    Err(Refusal::Failed(Error::Invalid(format!(
        "pod {name} kept changing while it was being marked ({ATTEMPTS} attempts): try again"
    ))))
}
