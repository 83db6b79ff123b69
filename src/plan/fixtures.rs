//! Shared test fixtures of the plan's steps: specs, pods and observed HSDs.

#![allow(dead_code)]

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde_json::json;

use crate::api::hsd::{BusyProbe, HotStandbyDeploymentSpec, HttpProbe, ProbeMode, Selector};
use crate::plan::*;

pub fn spec(idle_target: i32, min: i32, max: Option<i32>) -> HotStandbyDeploymentSpec {
    HotStandbyDeploymentSpec {
        idle_target,
        min_replicas: min,
        max_replicas: max,
        selector: Selector {
            match_labels: BTreeMap::from([("app".into(), "game-ws".into())]),
        },
        pod_template: json!({
            "metadata": {"labels": {"app": "game-ws"}},
            "spec": {"containers": [{"name": "ws", "image": "game-ws:1"}]},
        }),
        busy_probe: BusyProbe::default(),
        scale_down_delay_seconds: None,
        idle_percent: None,
        rollout: None,
        routing: None,
        scale_to_zero: None,
    }
}

pub fn http_spec(success_is_busy: bool) -> HotStandbyDeploymentSpec {
    let mut spec = spec(3, 0, Some(50));
    spec.busy_probe = BusyProbe {
        mode: ProbeMode::Http,
        http: HttpProbe {
            success_is_busy,
            ..HttpProbe::default()
        },
        ..BusyProbe::default()
    };
    spec
}

/// A running pod (ready or not). `pending()` makes one that runs nothing yet.
pub fn pod(name: &str, ready: bool, busy: Option<&str>) -> ObservedPod {
    ObservedPod {
        name: name.into(),
        uid: format!("uid-{name}"),
        ready,
        phase: PodPhase::Running,
        terminating: false,
        busy_annotation: busy.map(String::from),
        designated_active: false,
        probe: None,
        scheduled: true,
        deletion_cost: None,
        cost_in_flight: None,
        template_hash: Some("rs-1".into()),
        resource_version: "1".into(),
        template: None,
        draining: false,
        draining_since: None,
        detached: false,
        retired_since: None,
        state_label: None,
        unschedulable_since: None,
    }
}

pub fn pending(mut pod: ObservedPod) -> ObservedPod {
    pod.phase = PodPhase::Pending;
    pod.ready = false;
    pod
}

/// The cost writes as (pod, cost).
pub fn costs_of(plan: &Plan) -> Vec<(String, i32)> {
    plan.cost_writes
        .iter()
        .map(|w| (w.pod.clone(), w.cost))
        .collect()
}

pub fn probed(name: &str, outcome: ProbeOutcome) -> ObservedPod {
    ObservedPod {
        probe: Some(outcome),
        ..pod(name, true, None)
    }
}

pub fn observed(
    spec: HotStandbyDeploymentSpec,
    replicas: Option<i32>,
    pods: Vec<ObservedPod>,
) -> ObservedHsd {
    let hash = template_hash("default", "game-ws", &spec);
    ObservedHsd {
        name: "game-ws".into(),
        namespace: "default".into(),
        uid: "uid-1".into(),
        generation: Some(1),
        paused: false,
        spec: Ok(spec),
        status: None,
        deployment: replicas.map(|replicas| ObservedDeployment {
            owned: true,
            replicas: Some(replicas),
            template_hash: Some(hash),
            replicas_writer: None,
            relabelling: false,
        }),
        pods,
        probes_cut_short: 0,
        master_slot: false,
        resource_version: Some("1".into()),
        sleep_deadline: None,
    }
}

pub fn now() -> Timestamp {
    "2026-11-21T12:00:00Z".parse().unwrap()
}

pub fn idle_pods(n: usize) -> Vec<ObservedPod> {
    (0..n)
        .map(|i| pod(&format!("idle-{i}"), true, None))
        .collect()
}

pub fn busy_pods(n: usize) -> Vec<ObservedPod> {
    (0..n)
        .map(|i| pod(&format!("busy-{i}"), true, Some("true")))
        .collect()
}

pub fn not_ready_busy(name: &str) -> ObservedPod {
    pod(name, false, Some("true"))
}

pub fn unscheduled(mut pod: ObservedPod) -> ObservedPod {
    pod.scheduled = false;
    pod.phase = PodPhase::Pending;
    pod
}

pub fn plan_for(
    spec: HotStandbyDeploymentSpec,
    replicas: Option<i32>,
    pods: Vec<ObservedPod>,
) -> Plan {
    plan(&observed(spec, replicas, pods), now())
}

/// The ReplicaSet's choice, as the API server's controller makes it (before tie-breakers, which
/// the test resolves against the plan: busy pods win ties).
pub fn replicaset_victims<'a>(
    pods: &'a [ObservedPod],
    costs: &BTreeMap<String, i32>,
    deletions: usize,
) -> Vec<&'a ObservedPod> {
    let mut ranked: Vec<&ObservedPod> = pods.iter().filter(|p| is_counted(p)).collect();
    ranked.sort_by_key(|p| {
        let cost = costs.get(&p.name).copied().or(p.deletion_cost).unwrap_or(0);
        let busy_first = u8::from(p.busy_annotation.as_deref() != Some("true"));
        (deletion_rank(p, cost), busy_first)
    });
    ranked.into_iter().take(deletions).collect()
}

/// The HSD as a pass `DRAIN_SETTLE` after `plan` reads it: the pods the plan drained marked
/// draining with the lowest cost, its cost writes read back, its replicas applied.
pub fn after_drain(hsd: &ObservedHsd, plan: &Plan, planned_at: Timestamp) -> ObservedHsd {
    let mut next = hsd.clone();
    for pod in &mut next.pods {
        if plan
            .fates
            .drain
            .iter()
            .any(|drained| drained.uid == pod.uid)
        {
            pod.draining = true;
            pod.draining_since = Some(planned_at);
            pod.deletion_cost = Some(DRAINING_DELETION_COST);
        }
        if let Some(write) = plan.cost_writes.iter().find(|w| w.uid == pod.uid) {
            pod.deletion_cost = Some(write.cost);
        }
    }
    if let (Some((_, to)), Some(deployment)) = (plan.scale, next.deployment.as_mut()) {
        deployment.replicas = Some(to);
        deployment.replicas_writer = None;
    }
    next.status = Some(plan.status.clone());
    next
}

/// A scale-down across its passes: the HSD as the pass after the drain settled reads it, and
/// that pass's plan (the first pass's own when it drained nothing).
pub fn settled(hsd: &ObservedHsd, now: Timestamp) -> (ObservedHsd, Plan) {
    let first = plan(hsd, now);
    let held = first
        .decision
        .as_ref()
        .is_some_and(|d| d.held_for_drain.is_some());
    if !held {
        return (hsd.clone(), first);
    }
    let next = after_drain(hsd, &first, now);
    let second = plan(&next, now + DRAIN_SETTLE);
    (next, second)
}

/// The plan of the pass that drops replicas once the drain has settled.
pub fn settled_plan(hsd: &ObservedHsd, now: Timestamp) -> Plan {
    settled(hsd, now).1
}
