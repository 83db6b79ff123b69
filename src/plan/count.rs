//! Step 1, count: each pod's state (busy, idle, starting, unknown), and the tallies the later
//! steps, the status and `explain` need.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::input::{ObservedPod, PodPhase, ProbeOutcome};
use crate::api::hsd::{HotStandbyDeploymentSpec, ProbeMode};

/// A pod unschedulable for longer than this gets a Warning and a condition.
pub const UNSCHEDULABLE_WARNING_AFTER: Duration = Duration::from_secs(60);

/// How one pod counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PodState {
    Busy,
    Idle,
    Starting,
    /// No answer about busy: counted as busy for scaling, so a slow busy pod is never scaled away.
    Unknown,
    /// Not busy, and on its way out: chosen for removal (draining), or of an earlier template.
    /// Never capacity.
    Leaving,
}

impl PodState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Busy => "busy",
            Self::Idle => "idle",
            Self::Starting => "starting",
            Self::Unknown => "unknown",
            Self::Leaving => "leaving",
        }
    }
}

/// The busy annotation's value as the plan reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusyAnnotation {
    Absent,
    Busy,
    Idle,
    /// A value that is none of the accepted spellings: treated as busy (fail-safe).
    Invalid,
}

/// Accepted spellings, case-insensitive: true/yes/1 and false/no/0.
pub fn parse_busy_annotation(value: Option<&str>) -> BusyAnnotation {
    let Some(value) = value else {
        return BusyAnnotation::Absent;
    };
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => BusyAnnotation::Busy,
        "false" | "no" | "0" => BusyAnnotation::Idle,
        _ => BusyAnnotation::Invalid,
    }
}

/// Whether a pod is part of the HSD's population at all.
pub fn is_counted(pod: &ObservedPod) -> bool {
    !pod.terminating && !matches!(pod.phase, PodPhase::Succeeded | PodPhase::Failed)
}

/// Classifies one counted pod. A Pending pod runs nothing, so it is never busy (a template
/// that carries the busy annotation must not make every new pod count as busy). The master of
/// an active-standby Service is busy, in either mode: it holds the high deletion cost and is
/// never a scale-down victim. In HTTP mode a running pod without a fresh answer is unknown:
/// protected, and never idle.
pub fn classify(pod: &ObservedPod, mode: ProbeMode, success_is_busy: bool) -> PodState {
    if pod.phase == PodPhase::Pending {
        return PodState::Starting;
    }
    if pod.designated_active {
        return PodState::Busy;
    }
    let idle_or_starting = if pod.ready {
        PodState::Idle
    } else {
        PodState::Starting
    };
    match mode {
        ProbeMode::Annotation => match parse_busy_annotation(pod.busy_annotation.as_deref()) {
            BusyAnnotation::Busy | BusyAnnotation::Invalid => PodState::Busy,
            BusyAnnotation::Absent | BusyAnnotation::Idle => idle_or_starting,
        },
        ProbeMode::Http | ProbeMode::Exec => {
            match pod.probe.as_ref().and_then(ProbeOutcome::succeeded) {
                Some(success) if success == success_is_busy => PodState::Busy,
                Some(_) => idle_or_starting,
                None => PodState::Unknown,
            }
        }
    }
}

/// Pod counts by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub busy: i32,
    pub idle: i32,
    pub starting: i32,
    pub unknown: i32,
    /// Pods on their way out (not counted in `total`).
    pub leaving: i32,
}

impl Counts {
    /// The pods that stay: every state but leaving.
    pub fn total(&self) -> i32 {
        self.busy + self.idle + self.starting + self.unknown
    }
    fn add(&mut self, state: PodState) {
        match state {
            PodState::Busy => self.busy += 1,
            PodState::Idle => self.idle += 1,
            PodState::Starting => self.starting += 1,
            PodState::Unknown => self.unknown += 1,
            PodState::Leaving => self.leaving += 1,
        }
    }
}

/// Whether a pod is of an earlier template than `current`, or detached from its ReplicaSet:
/// it is not the Deployment's to count, and it is never idle capacity.
pub fn is_old(pod: &ObservedPod, current_template: &str) -> bool {
    pod.detached
        || pod
            .template
            .as_deref()
            .is_some_and(|template| template != current_template)
}

/// A pod's state with its fate: a pod chosen for removal, or of an earlier template, that is
/// not busy is leaving.
pub fn state_in_rollout(state: PodState, pod: &ObservedPod, current_template: &str) -> PodState {
    match state {
        PodState::Idle | PodState::Starting if pod.draining || is_old(pod, current_template) => {
            PodState::Leaving
        }
        other => other,
    }
}

/// The outcome of counting an HSD's pods.
#[derive(Debug, Default)]
pub struct Counted<'a> {
    /// Every counted pod and its state.
    pub classified: Vec<(&'a ObservedPod, PodState)>,
    pub counts: Counts,
    pub busy_by_annotation: i32,
    pub busy_by_probe: i32,
    pub busy_by_invalid_annotation: i32,
    /// Busy as the master of an active-standby Service.
    pub busy_as_master: i32,
    pub terminating: i32,
    /// Pods the scheduler reports unschedulable (they count as starting).
    pub unschedulable: i32,
    /// `name: why` of each unknown pod.
    pub probe_failures: Vec<String>,
    /// `name="value"` of each pod whose busy annotation is not an accepted spelling.
    pub invalid_annotations: Vec<String>,
    /// Pods unschedulable for longer than [`UNSCHEDULABLE_WARNING_AFTER`].
    pub unschedulable_too_long: Vec<String>,
}

impl Counted<'_> {
    /// Each counted pod and its state, sorted by name.
    pub fn pod_states(&self) -> Vec<(String, PodState)> {
        let mut states: Vec<(String, PodState)> = self
            .classified
            .iter()
            .map(|(pod, state)| (pod.name.clone(), *state))
            .collect();
        states.sort();
        states
    }
}

/// Counts the pods of one HSD whose current template hash is `current_template`.
pub fn count<'a>(
    pods: &'a [ObservedPod],
    spec: &HotStandbyDeploymentSpec,
    current_template: &str,
    now: Timestamp,
) -> Counted<'a> {
    let mode = spec.busy_probe.mode;
    let mut counted = Counted::default();
    let too_long = SignedDuration::try_from(UNSCHEDULABLE_WARNING_AFTER).unwrap_or_default();
    for pod in pods {
        if pod.terminating {
            counted.terminating += 1;
            continue;
        }
        if !is_counted(pod) {
            continue;
        }
        let state = state_in_rollout(
            classify(pod, mode, spec.busy_probe.success_is_busy()),
            pod,
            current_template,
        );
        counted.counts.add(state);
        counted.classified.push((pod, state));
        if state == PodState::Unknown {
            let reason = match &pod.probe {
                Some(outcome) => outcome.unknown_reason().unwrap_or_default(),
                None => "no fresh answer yet".to_string(),
            };
            counted
                .probe_failures
                .push(format!("{}: {reason}", pod.name));
        }
        if state == PodState::Busy && pod.designated_active {
            counted.busy_as_master += 1;
        } else if state == PodState::Busy {
            let annotation = parse_busy_annotation(pod.busy_annotation.as_deref());
            match (mode, annotation) {
                (ProbeMode::Annotation, BusyAnnotation::Invalid) => {
                    counted.busy_by_invalid_annotation += 1;
                    counted.invalid_annotations.push(format!(
                        "{}={:?}",
                        pod.name,
                        pod.busy_annotation.as_deref().unwrap_or_default()
                    ));
                }
                (ProbeMode::Annotation, _) => counted.busy_by_annotation += 1,
                (ProbeMode::Http | ProbeMode::Exec, _) => counted.busy_by_probe += 1,
            }
        }
        if let Some(since) = pod.unschedulable_since {
            counted.unschedulable += 1;
            if now.duration_since(since) >= too_long {
                counted.unschedulable_too_long.push(pod.name.clone());
            }
        }
    }
    counted
}

#[cfg(test)]
mod tests {
    #![allow(unused_imports)]
    use std::collections::BTreeMap;
    use std::time::Duration;

    use jiff::{SignedDuration, Timestamp};
    use proptest::prelude::*;
    use serde_json::json;

    use crate::api::hsd::*;
    use crate::plan::fixtures::*;
    use crate::plan::*;

    #[test]
    fn classification_table() {
        let cases: Vec<(&str, ObservedPod, ProbeMode, bool, PodState)> = vec![
            (
                "annotation true",
                pod("a", true, Some("true")),
                ProbeMode::Annotation,
                true,
                PodState::Busy,
            ),
            (
                "annotation True",
                pod("a", true, Some("True")),
                ProbeMode::Annotation,
                true,
                PodState::Busy,
            ),
            (
                "annotation yes/1",
                pod("a", true, Some("1")),
                ProbeMode::Annotation,
                true,
                PodState::Busy,
            ),
            (
                "busy but not ready is still busy",
                pod("a", false, Some("true")),
                ProbeMode::Annotation,
                true,
                PodState::Busy,
            ),
            (
                "annotation false, ready",
                pod("a", true, Some("false")),
                ProbeMode::Annotation,
                true,
                PodState::Idle,
            ),
            (
                "no annotation, ready",
                pod("a", true, None),
                ProbeMode::Annotation,
                true,
                PodState::Idle,
            ),
            (
                "no annotation, not ready",
                pod("a", false, None),
                ProbeMode::Annotation,
                true,
                PodState::Starting,
            ),
            (
                "garbage annotation is busy (fail-safe)",
                pod("a", true, Some("maybe")),
                ProbeMode::Annotation,
                true,
                PodState::Busy,
            ),
            (
                "empty annotation is busy (fail-safe)",
                pod("a", true, Some("")),
                ProbeMode::Annotation,
                true,
                PodState::Busy,
            ),
            (
                "http 2xx, successIsBusy",
                probed("a", ProbeOutcome::Success),
                ProbeMode::Http,
                true,
                PodState::Busy,
            ),
            (
                "http 503, successIsBusy",
                probed("a", ProbeOutcome::Failure(503)),
                ProbeMode::Http,
                true,
                PodState::Idle,
            ),
            (
                "http 2xx, successIsIdle",
                probed("a", ProbeOutcome::Success),
                ProbeMode::Http,
                false,
                PodState::Idle,
            ),
            (
                "http 404, successIsIdle",
                probed("a", ProbeOutcome::Failure(404)),
                ProbeMode::Http,
                false,
                PodState::Busy,
            ),
            (
                "http redirect is unknown, whatever successIsBusy says",
                probed(
                    "a",
                    ProbeOutcome::Redirect {
                        status: 302,
                        location: Some("http://elsewhere/".into()),
                    },
                ),
                ProbeMode::Http,
                true,
                PodState::Unknown,
            ),
            (
                "http redirect is unknown with successIsBusy false too",
                probed(
                    "a",
                    ProbeOutcome::Redirect {
                        status: 301,
                        location: None,
                    },
                ),
                ProbeMode::Http,
                false,
                PodState::Unknown,
            ),
            (
                "http busy answer from a not-ready pod is busy",
                ObservedPod {
                    ready: false,
                    ..probed("a", ProbeOutcome::Success)
                },
                ProbeMode::Http,
                true,
                PodState::Busy,
            ),
            (
                "http idle answer from a not-ready pod is starting",
                ObservedPod {
                    ready: false,
                    ..probed("a", ProbeOutcome::Failure(503))
                },
                ProbeMode::Http,
                true,
                PodState::Starting,
            ),
            (
                "http ready pod without a fresh answer is unknown",
                pod("a", true, None),
                ProbeMode::Http,
                true,
                PodState::Unknown,
            ),
            (
                "http pending pod is starting (nothing runs yet)",
                pending(pod("a", false, None)),
                ProbeMode::Http,
                true,
                PodState::Starting,
            ),
            (
                "annotation busy on a pending pod is starting",
                pending(pod("a", false, Some("true"))),
                ProbeMode::Annotation,
                true,
                PodState::Starting,
            ),
            (
                "http timeout is unknown",
                probed("a", ProbeOutcome::Error("timed out".into())),
                ProbeMode::Http,
                true,
                PodState::Unknown,
            ),
            (
                "http not ready without an answer is unknown (protected)",
                pod("a", false, None),
                ProbeMode::Http,
                true,
                PodState::Unknown,
            ),
            (
                "http ignores the annotation",
                probed("a", ProbeOutcome::Failure(503)),
                ProbeMode::Http,
                true,
                PodState::Idle,
            ),
            (
                "an active-standby master marked idle is busy",
                master(pod("a", true, Some("false"))),
                ProbeMode::Annotation,
                true,
                PodState::Busy,
            ),
            (
                "an active-standby master without the annotation is busy",
                master(pod("a", true, None)),
                ProbeMode::Annotation,
                true,
                PodState::Busy,
            ),
            (
                "an active-standby master that is not ready is still busy",
                master(pod("a", false, None)),
                ProbeMode::Annotation,
                true,
                PodState::Busy,
            ),
            (
                "an active-standby master answering idle over HTTP is busy",
                master(probed("a", ProbeOutcome::Failure(503))),
                ProbeMode::Http,
                true,
                PodState::Busy,
            ),
            (
                "an active-standby master without an HTTP answer is busy, not unknown",
                master(pod("a", true, None)),
                ProbeMode::Http,
                true,
                PodState::Busy,
            ),
            (
                "a pending pod with the master label runs nothing: starting",
                master(pending(pod("a", false, None))),
                ProbeMode::Annotation,
                true,
                PodState::Starting,
            ),
        ];
        for (name, pod, mode, success_is_busy, expected) in cases {
            assert_eq!(classify(&pod, mode, success_is_busy), expected, "{name}");
        }
    }

    fn master(mut pod: ObservedPod) -> ObservedPod {
        pod.designated_active = true;
        pod
    }

    #[test]
    fn a_master_is_counted_busy_as_master_and_keeps_its_replica_and_high_cost() {
        // 3 idle pods, one of them the master of an active-standby Service; idleTarget 2.
        let mut pods = idle_pods(3);
        pods[1].designated_active = true;
        let counted = count(&pods, &spec(2, 0, None), "rs-1", now());
        assert_eq!((counted.counts.busy, counted.counts.idle), (1, 2));
        assert_eq!(counted.busy_as_master, 1);
        assert_eq!(counted.busy_by_annotation, 0);
        // 1 busy + idle target 2 = 3: nothing is scaled away, and the master gets the cost.
        let plan = plan_for(spec(2, 0, None), Some(3), pods.clone());
        assert_eq!(plan.deployment, DeploymentAction::Keep);
        assert_eq!(
            costs_of(&plan),
            vec![("idle-1".to_string(), BUSY_DELETION_COST)]
        );
        assert_eq!(plan.decision.as_ref().unwrap().busy_as_master, 1);
        // With the cost read back and one replica too many, the drop never reaches the master:
        // the ReplicaSet's ranking puts the two cost-0 pods first.
        pods[1].deletion_cost = Some(BUSY_DELETION_COST);
        pods.push(pod("idle-3", true, None));
        let (after, plan) = settled(&observed(spec(2, 0, None), Some(4), pods.clone()), now());
        assert_eq!(plan.scale, Some((4, 3)));
        let costs: BTreeMap<String, i32> = costs_of(&plan).into_iter().collect();
        let victims = replicaset_victims(&after.pods, &costs, 1);
        assert!(victims.iter().all(|p| !p.designated_active), "{victims:?}");
        // Deposed (label gone), it is an idle pod again: its cost drops in a pass that keeps
        // the replicas.
        pods[1].designated_active = false;
        let plan = plan_for(spec(3, 0, None), Some(3), pods[..3].to_vec());
        assert_eq!(costs_of(&plan), vec![("idle-1".to_string(), 0)]);
    }

    #[test]
    fn a_failover_never_reads_as_a_scale_down() {
        // An active-standby Service selects every pod; the old master is gone and the new one
        // not labelled yet: its place is kept, so 4 replicas stay 4.
        let mut hsd = observed(spec(3, 0, None), Some(4), idle_pods(4));
        hsd.master_slot = true;
        let planned = plan(&hsd, now());
        assert_eq!(planned.deployment, DeploymentAction::Keep);
        assert_eq!(planned.decision.as_ref().unwrap().master_reserved, 1);
        assert_eq!(
            planned.status.busy_count, 0,
            "no pod is busy: the status says so"
        );
        // Once labelled, the master is the busy pod, and nothing more is kept.
        hsd.pods[2].designated_active = true;
        let planned = plan(&hsd, now());
        assert_eq!(planned.decision.as_ref().unwrap().master_reserved, 0);
        assert_eq!(planned.deployment, DeploymentAction::Keep);
        // Without the Service, the same gap is a scale-down.
        hsd.master_slot = false;
        hsd.pods[2].designated_active = false;
        assert_eq!(settled_plan(&hsd, now()).scale, Some((4, 3)));
    }

    #[test]
    fn terminating_and_finished_pods_do_not_count() {
        let mut terminating = pod("t", true, Some("true"));
        terminating.terminating = true;
        let mut failed = pod("f", false, None);
        failed.phase = PodPhase::Failed;
        let mut succeeded = pod("s", false, None);
        succeeded.phase = PodPhase::Succeeded;
        let mut pods = vec![terminating, failed, succeeded];
        pods.extend(idle_pods(3));
        let plan = plan(&observed(spec(3, 0, None), Some(3), pods), now());
        assert_eq!(
            plan.counts,
            Counts {
                busy: 0,
                idle: 3,
                starting: 0,
                unknown: 0,
                leaving: 0,
            }
        );
        assert_eq!(plan.deployment, DeploymentAction::Keep);
    }

    #[test]
    fn busy_annotation_spellings() {
        for (value, expected) in [
            (None, BusyAnnotation::Absent),
            (Some("true"), BusyAnnotation::Busy),
            (Some(" TRUE "), BusyAnnotation::Busy),
            (Some("yes"), BusyAnnotation::Busy),
            (Some("1"), BusyAnnotation::Busy),
            (Some("false"), BusyAnnotation::Idle),
            (Some("No"), BusyAnnotation::Idle),
            (Some("0"), BusyAnnotation::Idle),
            (Some("busy"), BusyAnnotation::Invalid),
            (Some(""), BusyAnnotation::Invalid),
        ] {
            assert_eq!(parse_busy_annotation(value), expected, "{value:?}");
        }
    }
}
