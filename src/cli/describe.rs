//! `describe NAME`: the HSD, its Deployment, each pod's state, conditions and events; and
//! `describe hsj/NAME`: the HSJ, each Job with its worker's state, conditions and events.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use k8s_openapi::api::core::v1::Event;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::GlobalArgs;
use super::output::{age_since, describe_table, human_age, table};
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
    text.push_str(&map_field("Labels:", object.labels(), "="));
    let mut annotations = object.annotations().clone();
    // kubectl leaves this one out: it is a copy of the object.
    annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    text.push_str(&map_field("Annotations:", &annotations, ": "));
    let _ = writeln!(
        text,
        "API Version:  {}",
        crate::observe::hsd_resource().api_version
    );
    let _ = writeln!(
        text,
        "Kind:         {}",
        crate::observe::hsd_resource().kind
    );
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
            let _ = writeln!(text, "Busy probe:   {}", probe_line(&spec.busy_probe));
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
    if status.conditions.is_empty() {
        let _ = writeln!(text, "Conditions:   <none>");
    } else {
        let _ = writeln!(text, "Conditions:");
        let rows = status
            .conditions
            .iter()
            .map(|c| {
                vec![
                    c.type_.clone(),
                    c.status.clone(),
                    c.reason.clone(),
                    age_since(Some(&c.last_transition_time)),
                    c.message.clone(),
                ]
            })
            .collect();
        text.push_str(&describe_table(
            &["Type", "Status", "Reason", "Age", "Message"],
            rows,
        ));
    }
    let probed_mode = hsd
        .spec
        .as_ref()
        .is_ok_and(|s| s.busy_probe.mode.is_probed());
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
            let state = if probed_mode
                && state == "unknown"
                && observe::probe_target(pod, hsd.spec.as_ref().expect("http mode")).is_some()
            {
                "not probed here (the reconciler probes it)"
            } else {
                state
            };
            let status = pod.status.as_ref();
            vec![
                pod_name,
                state.to_string(),
                status.and_then(|s| s.phase.clone()).unwrap_or_default(),
                status
                    .and_then(|s| s.pod_ip.clone())
                    .unwrap_or_else(|| "<none>".into()),
                age_since(pod.metadata.creation_timestamp.as_ref()),
            ]
        })
        .collect::<Vec<_>>();
    if rows.is_empty() {
        let _ = writeln!(text, "Pods:         <none>");
    } else {
        let _ = writeln!(text, "Pods:");
        text.push_str(&describe_table(
            &["Name", "State", "Phase", "IP", "Age"],
            rows,
        ));
    }

    append_events(&client, &namespace, &hsd.uid, &mut text).await;
    print!("{text}");
    Ok(0)
}

/// One HSJ read as a pass reads it (probes left to the caller), with its lean pods.
pub(super) async fn read_one_hsj(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<(
    kube::api::DynamicObject,
    crate::plan::hsj::ObservedHsj,
    Vec<Vec<std::sync::Arc<observe::LeanPod>>>,
)> {
    let scope = Scope::Namespace(namespace.to_string());
    let snapshot = observe::jobs::read_hsj_snapshot(client, &scope).await?;
    let Some(object) = snapshot.hsjs.iter().find(|o| o.name_any() == name).cloned() else {
        return Err(Error::NotFound {
            what: format!("hotstandbyjobs.apps.paia.tech {name:?} in namespace {namespace}"),
        });
    };
    let (observed, pods) = observe::jobs::observe_hsj(&object, &snapshot.index, |_| None);
    Ok((object, observed, pods))
}

/// `describe hsj/NAME`: the HSJ, each Job and its worker's state, conditions and events.
pub async fn describe_hsj(global: &GlobalArgs, name: &str) -> Result<i32> {
    let (client, _, default_ns) = crate::client::connect(&global.client_options()).await?;
    let Scope::Namespace(namespace) = global.scope(&default_ns) else {
        return Err(Error::Invalid(
            "describe takes one namespace, not -A".into(),
        ));
    };
    let (object, hsj, pods) = read_one_hsj(&client, &namespace, name).await?;
    let status = hsj.status.clone().unwrap_or_default();
    // The plan as a pass would make it, without probes (describe does not exec into pods).
    let plan = crate::plan::hsj::plan(&hsj, jiff::Timestamp::now());
    let mut text = String::new();
    let _ = writeln!(text, "Name:         {name}");
    let _ = writeln!(text, "Kind:         HotStandbyJob");
    let _ = writeln!(text, "Namespace:    {namespace}");
    let _ = writeln!(
        text,
        "Created:      {} ago",
        age_since(object.metadata.creation_timestamp.as_ref())
    );
    let probed = match &hsj.spec {
        Ok(spec) => {
            let _ = writeln!(text, "Idle target:  {}", spec.idle_target);
            let _ = writeln!(
                text,
                "Bounds:       min {}, max {}",
                spec.min_jobs(),
                spec.max_replicas
                    .map_or("none (1000)".into(), |m| m.to_string())
            );
            let _ = writeln!(
                text,
                "Delay:        {}s before a surplus Job is deleted",
                spec.scale_down_delay_seconds
            );
            let selector: Vec<String> = spec
                .selector
                .match_labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let _ = writeln!(text, "Selector:     {}", selector.join(","));
            let _ = writeln!(text, "Busy probe:   {}", probe_line(&spec.busy_probe));
            spec.busy_probe.mode.is_probed()
        }
        Err(error) => {
            let _ = writeln!(text, "Spec:         invalid: {error}");
            false
        }
    };
    if hsj.paused {
        let _ = writeln!(
            text,
            "Paused:       yes ({}=true)",
            crate::api::hsd::PAUSED_ANNOTATION
        );
    }
    let _ = writeln!(
        text,
        "Status:       {} busy, {} idle, {} starting, {} unknown; desired {}, active {}",
        status.busy_count,
        status.idle_count,
        status.starting_count,
        status.unknown_count,
        status.desired_active,
        status.active_count
    );
    let _ = writeln!(
        text,
        "Job counts:   {} ({} active, {} completed, {} failed{})",
        status.child_jobs,
        status.active_jobs,
        status.completed_jobs,
        status.failed_jobs,
        if status.outdated_jobs > 0 {
            format!(", {} of an older template", status.outdated_jobs)
        } else {
            String::new()
        }
    );
    if let Some(time) = &status.last_sync_time {
        let _ = writeln!(text, "Last sync:    {time}");
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
    let _ = writeln!(text, "Jobs:");
    let rows = hsj
        .jobs
        .iter()
        .zip(&pods)
        .map(|(job, lean)| {
            let state = plan
                .job_states
                .iter()
                .find(|(n, _)| *n == job.name)
                .map_or("-", |(_, s)| s.as_str());
            let worker = lean
                .iter()
                .find(|pod| pod.metadata.deletion_timestamp.is_none())
                .or(lean.first());
            let state = if probed && state == "unknown" {
                "not probed here (the reconciler probes it)"
            } else {
                state
            };
            let template = match (&job.template_hash, plan.template_hash.as_str()) {
                (Some(hash), current) if hash == current => "current",
                _ => "older",
            };
            vec![
                format!("  {}", job.name),
                state.to_string(),
                worker.map_or("<none>".into(), |p| p.name_any()),
                worker
                    .and_then(|p| p.status.as_ref())
                    .and_then(|s| s.phase.clone())
                    .unwrap_or_else(|| "-".into()),
                template.to_string(),
                job.created.map_or("-".into(), |t| {
                    age_since(Some(&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        t,
                    )))
                }),
            ]
        })
        .collect();
    text.push_str(&table(
        &["  NAME", "STATE", "POD", "PHASE", "TEMPLATE", "AGE"],
        rows,
    ));
    append_events(&client, &namespace, &hsj.uid, &mut text).await;
    print!("{text}");
    Ok(0)
}

/// The busy probe in one line.
pub(super) fn probe_line(probe: &crate::api::probe::BusyProbe) -> String {
    use crate::api::probe::ProbeMode;
    let meaning = |busy: bool| if busy { "busy" } else { "idle" };
    match probe.mode {
        ProbeMode::Annotation => format!("annotation {}", probe.annotation_key),
        ProbeMode::Http => {
            let http = &probe.http;
            format!(
                "http GET :{}{} (2xx means {}), timeout {}s, every {}s",
                http.port,
                http.path,
                meaning(http.success_is_busy),
                http.timeout_seconds,
                http.period_seconds
            )
        }
        ProbeMode::Exec => {
            let exec = &probe.exec;
            format!(
                "exec {}{} (exit 0 means {}), timeout {}s, every {}s",
                exec.command.join(" "),
                exec.container
                    .as_deref()
                    .map_or(String::new(), |c| format!(" in container {c}")),
                meaning(exec.success_is_busy),
                exec.timeout_seconds,
                exec.period_seconds
            )
        }
    }
}

async fn append_events(client: &kube::Client, namespace: &str, uid: &str, text: &mut String) {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let params = ListParams::default().fields(&format!("involvedObject.uid={uid}"));
    match events.list(&params).await {
        Ok(list) => {
            let mut items = list.items;
            items.sort_by_key(last_seen);
            if items.is_empty() {
                let _ = writeln!(text, "Events:       <none>");
            } else {
                let _ = writeln!(text, "Events:");
                let rows = items
                    .iter()
                    .rev()
                    .take(20)
                    .rev()
                    .map(|e| {
                        vec![
                            e.type_.clone().unwrap_or_default(),
                            e.reason.clone().unwrap_or_default(),
                            event_age(e),
                            event_source(e),
                            e.message.clone().unwrap_or_default().trim().to_string(),
                        ]
                    })
                    .collect();
                text.push_str(&describe_table(
                    &["Type", "Reason", "Age", "From", "Message"],
                    rows,
                ));
            }
        }
        Err(error) => {
            let _ = writeln!(
                text,
                "Events:       cannot list ({})",
                crate::error::describe_kube_error(&error)
            );
        }
    }
}

/// `Labels:` or `Annotations:` as kubectl prints them: `<none>`, or one entry a line, the
/// first beside the title and the rest aligned under it.
fn map_field(title: &str, map: &BTreeMap<String, String>, separator: &str) -> String {
    let mut text = String::new();
    if map.is_empty() {
        let _ = writeln!(text, "{title:<14}<none>");
        return text;
    }
    for (i, (key, value)) in map.iter().enumerate() {
        let lead = if i == 0 { title } else { "" };
        let _ = writeln!(text, "{lead:<14}{key}{separator}{value}");
    }
    text
}

/// When an event was last seen: its series, its last timestamp, or when it happened.
fn last_seen(event: &Event) -> Option<jiff::Timestamp> {
    event
        .series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
        .or(event.last_timestamp.as_ref().map(|t| t.0))
        .or(event.event_time.as_ref().map(|t| t.0))
}

fn since(time: jiff::Timestamp) -> String {
    human_age(jiff::Timestamp::now().duration_since(time).as_secs())
}

/// kubectl describe's Age: `5m`, or `30s (x4 over 5m)` for a repeated event.
fn event_age(event: &Event) -> String {
    let first = event
        .first_timestamp
        .as_ref()
        .map(|t| t.0)
        .or(event.event_time.as_ref().map(|t| t.0));
    let first_text = first.map_or_else(|| "<unknown>".to_string(), since);
    if let Some(series) = &event.series
        && let Some(last) = &series.last_observed_time
    {
        return format!(
            "{} (x{} over {first_text})",
            since(last.0),
            series.count.unwrap_or(1)
        );
    }
    match (event.count, &event.last_timestamp) {
        (Some(count), Some(last)) if count > 1 => {
            format!("{} (x{count} over {first_text})", since(last.0))
        }
        _ => first_text,
    }
}

/// kubectl describe's From: the source component, else the reporting controller.
fn event_source(event: &Event) -> String {
    event
        .source
        .as_ref()
        .and_then(|s| s.component.clone())
        .filter(|c| !c.is_empty())
        .or_else(|| event.reporting_component.clone())
        .unwrap_or_default()
}
