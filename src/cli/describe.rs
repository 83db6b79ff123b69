//! `describe NAME`: the HSD, its Deployment, each pod's state, conditions and events.

use std::fmt::Write as _;

use k8s_openapi::api::core::v1::Event;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::GlobalArgs;
use super::output::{age_since, table};
use crate::error::{Error, Result};
use crate::observe::{self, Scope};
use crate::plan;

pub async fn describe(global: &GlobalArgs, name: &str) -> Result<i32> {
    let (client, _, default_ns) = crate::client::connect(&global.client_options()).await?;
    let Scope::Namespace(namespace) = global.scope(&default_ns) else {
        return Err(Error::Invalid(
            "describe takes one namespace, not -A".into(),
        ));
    };
    let scope = Scope::Namespace(namespace.clone());
    let snapshot = observe::read_snapshot(&client, &scope).await?;
    let Some(object) = snapshot.hsds.iter().find(|o| o.name_any() == name) else {
        return Err(Error::NotFound {
            what: format!("hotstandbydeployments.apps.paia.tech {name:?} in namespace {namespace}"),
        });
    };
    let (mut observed, pods) = observe::observe_hsd(object, &snapshot.index, |_| None);
    if let Ok(services) = observe::services::list_services(&client, &scope).await {
        observed.master_slot = observe::services::master_slot(&observed, &services);
    }
    observe::confirm_missing_child(&client, &mut observed).await?;
    let hsd = &observed;
    let status = hsd.status.clone().unwrap_or_default();
    // The plan as a pass would make it, without probes (pod IPs are often not reachable from
    // where kubectl runs); HTTP-mode pod states come from the last pass's status instead.
    let plan = plan::plan(hsd, jiff::Timestamp::now());

    let mut text = String::new();
    let _ = writeln!(text, "Name:         {name}");
    let _ = writeln!(text, "Namespace:    {namespace}");
    let _ = writeln!(
        text,
        "Created:      {} ago",
        age_since(object.metadata.creation_timestamp.as_ref())
    );
    match &hsd.spec {
        Ok(spec) => {
            let _ = writeln!(text, "Idle target:  {}", spec.idle_target);
            let _ = writeln!(
                text,
                "Bounds:       min {}, max {}",
                spec.min_replicas,
                spec.max_replicas.map_or("none".into(), |m| m.to_string())
            );
            let selector: Vec<String> = spec
                .selector
                .match_labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let _ = writeln!(text, "Selector:     {}", selector.join(","));
            match spec.busy_probe.mode {
                crate::api::hsd::ProbeMode::Annotation => {
                    let _ = writeln!(
                        text,
                        "Busy probe:   annotation {}",
                        spec.busy_probe.annotation_key
                    );
                }
                crate::api::hsd::ProbeMode::Http => {
                    let http = &spec.busy_probe.http;
                    let _ = writeln!(
                        text,
                        "Busy probe:   http GET :{}{} (2xx means {}), timeout {}s, every {}s",
                        http.port,
                        http.path,
                        if http.success_is_busy { "busy" } else { "idle" },
                        http.timeout_seconds,
                        http.period_seconds
                    );
                }
            }
        }
        Err(error) => {
            let _ = writeln!(text, "Spec:         invalid: {error}");
        }
    }
    if hsd.paused {
        let _ = writeln!(
            text,
            "Paused:       yes ({}=true)",
            crate::api::hsd::PAUSED_ANNOTATION
        );
    }
    let _ = writeln!(
        text,
        "Status:       {} busy, {} idle, {} starting, {} unknown; desired {}, replicas {}",
        status.busy_count,
        status.idle_count,
        status.starting_count,
        status.unknown_count,
        status.desired_replicas,
        status.replicas
    );
    if let Some(time) = &status.last_scale_time {
        let _ = writeln!(text, "Last scale:   {time}");
    }
    let workload = crate::api::hsd::workload_name(name);
    match &hsd.deployment {
        Some(d) => {
            let _ = writeln!(
                text,
                "Deployment:   {workload} ({} replicas{})",
                d.replicas.unwrap_or(1),
                if d.owned {
                    ""
                } else {
                    ", NOT owned by this HSD"
                }
            );
        }
        None => {
            let _ = writeln!(text, "Deployment:   {workload} (not created yet)");
        }
    }
    let _ = writeln!(text, "Conditions:");
    let rows = status
        .conditions
        .iter()
        .map(|c| {
            vec![
                format!("  {}", c.type_),
                c.status.clone(),
                c.reason.clone(),
                c.message.clone(),
            ]
        })
        .collect();
    text.push_str(&table(&["  TYPE", "STATUS", "REASON", "MESSAGE"], rows));
    let _ = writeln!(text, "Pods:");
    let http_mode = hsd
        .spec
        .as_ref()
        .is_ok_and(|s| s.busy_probe.mode == crate::api::hsd::ProbeMode::Http);
    let rows = pods
        .iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .map(|pod| {
            let pod_name = pod.name_any();
            let state = plan
                .pod_states
                .iter()
                .find(|(n, _)| *n == pod_name)
                .map_or("terminating", |(_, s)| s.as_str());
            // describe does not probe (pod IPs are often out of reach from where kubectl runs).
            let state = if http_mode
                && state == "unknown"
                && observe::probe_target(pod, hsd.spec.as_ref().expect("http mode")).is_some()
            {
                "not probed here (the reconciler probes it)"
            } else {
                state
            };
            let status = pod.status.as_ref();
            vec![
                format!("  {pod_name}"),
                state.to_string(),
                status.and_then(|s| s.phase.clone()).unwrap_or_default(),
                status
                    .and_then(|s| s.pod_ip.clone())
                    .unwrap_or_else(|| "<none>".into()),
                age_since(pod.metadata.creation_timestamp.as_ref()),
            ]
        })
        .collect();
    text.push_str(&table(&["  NAME", "STATE", "PHASE", "IP", "AGE"], rows));

    let events: Api<Event> = Api::namespaced(client.clone(), &namespace);
    let params = ListParams::default().fields(&format!("involvedObject.uid={}", hsd.uid));
    match events.list(&params).await {
        Ok(list) => {
            let mut items = list.items;
            items.sort_by_key(|e| {
                e.event_time
                    .as_ref()
                    .map(|t| t.0)
                    .or(e.last_timestamp.as_ref().map(|t| t.0))
            });
            let _ = writeln!(text, "Events:");
            if items.is_empty() {
                let _ = writeln!(text, "  <none>");
            } else {
                let rows = items
                    .iter()
                    .rev()
                    .take(20)
                    .rev()
                    .map(|e| {
                        vec![
                            format!("  {}", e.type_.clone().unwrap_or_default()),
                            e.reason.clone().unwrap_or_default(),
                            e.message.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                text.push_str(&table(&["  TYPE", "REASON", "MESSAGE"], rows));
            }
        }
        Err(error) => {
            let _ = writeln!(text, "Events:       cannot list ({error})");
        }
    }
    print!("{text}");
    Ok(0)
}
