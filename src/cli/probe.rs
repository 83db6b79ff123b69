//! `probe POD`: runs a pod's busy probe once, as the reconciler does, and prints the answer: the
//! pod's owner (the HotStandbyDeployment or HotStandbyJob whose label it carries) says how
//! (annotation, HTTP GET, or a command run through `pods/exec`). A pod without an answer
//! (unknown) exits 1 with the reason on stderr; busy, idle and starting exit 0.

use std::fmt::Write as _;

use kube::api::{DynamicObject, ListParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::GlobalArgs;
use super::output::{self, OutputFormat};
use crate::api::probe::BusyProbe;
use crate::error::{Error, Result, kube_error};
use crate::labels::{HSD_LABEL, HSJ_LABEL, hsd_label_value};
use crate::observe::probe::{DEFAULT_CONCURRENCY, DEFAULT_EXEC_CONCURRENCY, Prober};
use crate::observe::{self, LeanPod};
use crate::plan::{PodState, classify};

/// The object a pod belongs to, and its probe.
struct Owner {
    reference: String,
    probe: BusyProbe,
}

/// The HSD or HSJ whose label the pod carries (and whose selector matches it).
async fn owner_of(client: &Client, namespace: &str, pod: &LeanPod) -> Result<Owner> {
    let labels = pod.labels();
    let candidates = [
        (HSD_LABEL, observe::hsd_resource(), "hotstandbydeployment"),
        (HSJ_LABEL, observe::jobs::hsj_resource(), "hotstandbyjob"),
    ];
    for (label, resource, singular) in candidates {
        let Some(value) = labels.get(label) else {
            continue;
        };
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
        let objects = api.list(&ListParams::default()).await.map_err(kube_error(
            format!("listing {}s", resource.kind),
            "list",
            &format!("{}.{}", resource.plural, resource.group),
            Some(namespace),
        ))?;
        for object in objects.items {
            if hsd_label_value(&object.name_any()) != *value {
                continue;
            }
            let spec = object.data.get("spec").cloned().unwrap_or_default();
            let probe: BusyProbe = spec
                .get("busyProbe")
                .cloned()
                .map(serde_json::from_value)
                .transpose()
                .map_err(|e| {
                    Error::Invalid(format!(
                        "{singular}/{}: spec.busyProbe cannot be read: {e}",
                        object.name_any()
                    ))
                })?
                .unwrap_or_default();
            let selector: std::collections::BTreeMap<String, String> = spec
                .pointer("/selector/matchLabels")
                .cloned()
                .and_then(|v| serde_json::from_value(v).ok())
                .unwrap_or_default();
            if crate::plan::selector_matches(&selector, labels) {
                return Ok(Owner {
                    reference: format!("{singular}/{}", object.name_any()),
                    probe,
                });
            }
        }
    }
    Err(Error::Invalid(format!(
        "pod {} belongs to no HotStandbyDeployment or HotStandbyJob of namespace {namespace} (it carries neither {HSD_LABEL} nor {HSJ_LABEL} of one whose selector matches it)",
        pod.name_any()
    )))
}

pub async fn probe(global: &GlobalArgs, pod_name: &str) -> Result<i32> {
    if global.all_namespaces {
        return Err(Error::Invalid("probe takes one namespace, not -A".into()));
    }
    let (client, _, default_ns) = crate::client::connect(&global.client_options()).await?;
    let namespace = global.namespace.clone().unwrap_or(default_ns);
    let pods: Api<LeanPod> =
        Api::namespaced_with(client.clone(), &namespace, &observe::pod_resource());
    let pod = pods
        .get_opt(pod_name)
        .await
        .map_err(kube_error(
            format!("reading pod {pod_name}"),
            "get",
            "pods",
            Some(&namespace),
        ))?
        .ok_or_else(|| Error::NotFound {
            what: format!("pod {pod_name:?} in namespace {namespace}"),
        })?;
    let owner = owner_of(&client, &namespace, &pod).await?;
    let probe = &owner.probe;
    let mut facts = observe::pod_facts(&pod, &probe.annotation_key);
    let target = observe::pod_probe_target(&pod, probe);
    let result = match &target {
        Some(target) => Some(
            Prober::new(DEFAULT_CONCURRENCY)
                .with_exec(client.clone(), DEFAULT_EXEC_CONCURRENCY)
                .run(target)
                .await,
        ),
        None => None,
    };
    facts.probe = result.as_ref().map(|r| r.outcome.clone());
    let state = if crate::plan::is_counted(&facts) {
        classify(&facts, probe.mode, probe.success_is_busy())
    } else {
        PodState::Starting
    };
    let finished = !crate::plan::is_counted(&facts);
    let state_word = if finished { "finished" } else { state.as_str() };
    let how = match (&target, probe.mode) {
        (Some(target), _) => format!(
            "{} ({} means {})",
            target.describe(),
            if matches!(target, crate::observe::probe::Target::Exec(_)) {
                "exit 0"
            } else {
                "2xx"
            },
            if probe.success_is_busy() {
                "busy"
            } else {
                "idle"
            }
        ),
        (None, crate::api::probe::ProbeMode::Annotation) => {
            format!(
                "annotation {}={}",
                probe.annotation_key,
                facts.busy_annotation.as_deref().unwrap_or("<unset>")
            )
        }
        (None, mode) => format!("{} probe: none, the pod does not run", mode.as_str()),
    };
    let answer = result
        .as_ref()
        .map(|r| format!("{} in {}ms", r.outcome.describe(), r.latency.as_millis()));
    match global.output.clone() {
        Some(format @ (OutputFormat::Json | OutputFormat::Yaml)) => {
            let value = json!({
                "pod": pod_name,
                "namespace": namespace,
                "owner": owner.reference,
                "mode": probe.mode.as_str(),
                "state": state_word,
                "probe": how,
                "answer": result.as_ref().map(|r| r.outcome.describe()),
                "latencyMs": result.as_ref().map(|r| r.latency.as_millis()),
                "output": result.as_ref().and_then(|r| r.output.clone()),
            });
            print!(
                "{}",
                if format == OutputFormat::Json {
                    output::to_json(&value)
                } else {
                    output::to_yaml(&value)
                }
            );
        }
        _ => {
            let mut text = String::new();
            let _ = writeln!(text, "pod/{pod_name}: {state_word}");
            let _ = writeln!(text, "  owner    {}", owner.reference);
            let _ = writeln!(text, "  probe    {how}");
            if let Some(answer) = &answer {
                let _ = writeln!(text, "  answer   {answer}");
            }
            if let Some(out) = result.as_ref().and_then(|r| r.output.as_ref()) {
                for (i, line) in out.lines().take(5).enumerate() {
                    let _ = writeln!(
                        text,
                        "  {}{line}",
                        if i == 0 { "output   " } else { "         " }
                    );
                }
            }
            print!("{text}");
        }
    }
    if state == PodState::Unknown && !finished {
        let why = facts
            .probe
            .as_ref()
            .and_then(|o| o.unknown_reason())
            .unwrap_or_else(|| "no answer".into());
        eprintln!(
            "error: pod/{pod_name}: no answer about busy (the reconciler counts it as busy and never removes it): {why}"
        );
        return Ok(1);
    }
    Ok(0)
}
