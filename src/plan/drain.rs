//! Step 6, fates: which pods leave, and how, so that a removal never reaches a pod that turned
//! busy after it was read. The ReplicaSet never chooses: a scale-down picks exactly the idle
//! pods to go, and each goes through a compare-and-swap on the resourceVersion it was read at
//! (docs/pod-states.md has the state machine and why each transition is safe):
//!
//! - **drain**: an idle pod chosen to go is marked draining (from then on it may not be marked
//!   busy), given the lowest deletion cost and detached from its ReplicaSet (its
//!   `pod-template-hash` label removed, the HSD its owner), all in one write; then deleted with
//!   a uid and resourceVersion precondition. A pod marked busy meanwhile fails the swap and stays.
//! - **retire**: a busy pod of an earlier template is detached the same way and kept running
//!   until its work ends (or `rollout.maxBusySeconds`), then drained.
//! - **remove**: a detached pod that is not busy (or is past `maxBusySeconds`) is deleted with a
//!   precondition on what was read.

use jiff::{SignedDuration, Timestamp};

use super::count::{PodState, is_old};
use super::input::ObservedPod;
use super::protect::{effective_cost, is_protected};
use super::step::deletion_rank;
use crate::api::hsd::HotStandbyDeploymentSpec;

/// How long a drained pod's mark is left for the ReplicaSet controller to see before replicas
/// drop past it. The controller reads pods from its own cache, which a loaded API server can
/// feed later than the replica change; its watch of pods would have to lag this much for it to
/// choose without the mark.
pub const DRAIN_SETTLE: SignedDuration = SignedDuration::from_secs(1);

/// How long a drained pod of the current template is left to its ReplicaSet before this tool
/// deletes it itself: the settle, then 2 s. The ReplicaSet deletes it within milliseconds of
/// the drop; one still there after this was kept because replicas went up again before the
/// ReplicaSet acted (it counts the pod as one of its own): deleted, it is replaced by a pod
/// that can take work.
pub const DRAIN_GRACE: SignedDuration = SignedDuration::from_secs(3);

/// Whether a drained pod was marked less than `DRAIN_SETTLE` ago (a pod whose mark has no
/// readable time has settled: it was not written by this version).
pub fn settling(pod: &ObservedPod, now: Timestamp) -> bool {
    pod.draining
        && pod
            .draining_since
            .is_some_and(|since| now.duration_since(since) < DRAIN_SETTLE)
}

/// The deletion cost of a pod chosen to go: below every other pod's.
pub const DRAINING_DELETION_COST: i32 = i32::MIN;

/// One pod, as read: every change to its fate is a compare-and-swap on this.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    pub pod: String,
    pub uid: String,
    pub resource_version: String,
}

impl PodRef {
    pub(crate) fn of(pod: &ObservedPod) -> Self {
        Self {
            pod: pod.name.clone(),
            uid: pod.uid.clone(),
            resource_version: pod.resource_version.clone(),
        }
    }
}

/// Why a detached pod is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removal {
    /// Chosen to go earlier (draining) and not busy: its deletion did not happen yet.
    Drained,
    /// A retired pod whose work ended.
    RetiredIdle,
    /// A retired pod still busy after `rollout.maxBusySeconds`.
    MaxBusyExceeded,
}

/// What happens to the pods in this pass, besides the replica count.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodFates {
    /// Idle pods of the current template chosen to go: marked draining with the lowest deletion
    /// cost (still in their ReplicaSet, which would delete them first), then replicas drop by
    /// exactly these, then they are deleted.
    pub drain: Vec<PodRef>,
    /// Idle pods of an earlier template: marked draining and detached, then deleted.
    pub drain_old: Vec<PodRef>,
    /// Busy pods of an earlier template: detached and kept until their work ends.
    pub retire: Vec<PodRef>,
    /// Detached pods to delete now.
    pub remove: Vec<(PodRef, Removal)>,
    /// `paia.tech/state` labels to write (`None`: remove the label).
    pub state_labels: Vec<(PodRef, Option<&'static str>)>,
}

impl PodFates {
    /// Every pod this pass drains, of the current template or an earlier one.
    pub fn drained(&self) -> impl Iterator<Item = &PodRef> {
        self.drain.iter().chain(&self.drain_old)
    }

    pub fn is_empty(&self) -> bool {
        self.drain.is_empty()
            && self.drain_old.is_empty()
            && self.retire.is_empty()
            && self.remove.is_empty()
            && self.state_labels.is_empty()
    }
}

/// The `count` pods of the ReplicaSet to remove: removable ones only (never busy or unknown),
/// in the order the ReplicaSet itself would delete them (so that even a ReplicaSet acting on a
/// stale view takes these), newest first among equals.
pub fn victims<'a>(rs_pods: &[(&'a ObservedPod, PodState)], count: usize) -> Vec<&'a ObservedPod> {
    let mut removable: Vec<&ObservedPod> = rs_pods
        .iter()
        .filter(|(_, state)| matches!(state, PodState::Idle | PodState::Starting))
        .map(|(pod, _)| *pod)
        .collect();
    removable.sort_by(|a, b| {
        let rank = |pod: &ObservedPod| deletion_rank(pod, effective_cost(pod).unwrap_or(0));
        rank(a).cmp(&rank(b)).then_with(|| b.name.cmp(&a.name))
    });
    removable.truncate(count);
    removable
}

/// The label a pod should carry under `routing.stateLabel`.
pub fn state_label(state: PodState, draining: bool) -> &'static str {
    match state {
        _ if draining => "draining",
        PodState::Busy | PodState::Unknown => "busy",
        PodState::Leaving => "draining",
        PodState::Idle | PodState::Starting => "idle",
    }
}

/// The fates of the pods this pass: `victims` to drain, the old and detached pods' fates, and
/// the state labels. `replicas_drop`: this pass lowers replicas, so the ReplicaSet deletes the
/// drained pods it keeps; this tool deletes only those a pass without a drop finds past the
/// grace.
pub fn fates(
    classified: &[(&ObservedPod, PodState)],
    victims: &[&ObservedPod],
    spec: &HotStandbyDeploymentSpec,
    current_template: &str,
    replicas_drop: bool,
    now: Timestamp,
) -> PodFates {
    let mut fates = PodFates {
        drain: victims.iter().map(|pod| PodRef::of(pod)).collect(),
        ..PodFates::default()
    };
    let max_busy = spec
        .rollout
        .as_ref()
        .and_then(|rollout| rollout.max_busy_seconds)
        .map(SignedDuration::from_secs);
    for (pod, state) in classified {
        if !is_old(pod, current_template) {
            // Drained by an earlier pass, and its ReplicaSet has not deleted it within the
            // grace (replicas went up again meanwhile, say): deleted, on what was read.
            if pod.draining
                && !replicas_drop
                && *state == PodState::Leaving
                && pod
                    .draining_since
                    .is_none_or(|since| now.duration_since(since) >= DRAIN_GRACE)
            {
                fates.remove.push((PodRef::of(pod), Removal::Drained));
            }
            continue;
        }
        match (pod.detached, *state) {
            // An idle pod of an earlier template, still in its ReplicaSet: drained.
            (false, PodState::Leaving) => fates.drain_old.push(PodRef::of(pod)),
            // A busy one: retired, kept until its work ends.
            (false, _) => fates.retire.push(PodRef::of(pod)),
            (true, PodState::Leaving) => {
                let why = if pod.draining {
                    Removal::Drained
                } else {
                    Removal::RetiredIdle
                };
                fates.remove.push((PodRef::of(pod), why));
            }
            (true, state) if is_protected(state) => {
                let since = pod.retired_since.unwrap_or(now);
                if max_busy.is_some_and(|max| now.duration_since(since) >= max) {
                    fates
                        .remove
                        .push((PodRef::of(pod), Removal::MaxBusyExceeded));
                }
            }
            (true, _) => {}
        }
    }
    let routing = spec
        .routing
        .as_ref()
        .is_some_and(|routing| routing.state_label);
    for (pod, state) in classified {
        let drained_now = fates.drained().any(|d| d.uid == pod.uid);
        let draining = pod.draining || drained_now;
        let wanted = routing.then(|| state_label(*state, draining));
        // A drained pod gets its label in the drain write itself.
        if wanted.is_some() && drained_now {
            continue;
        }
        if pod.state_label.as_deref() != wanted {
            fates.state_labels.push((PodRef::of(pod), wanted));
        }
    }
    fates
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::PodPhase;
    use crate::plan::fixtures::*;

    #[test]
    fn victims_are_removable_pods_in_the_replicasets_order() {
        let mut not_ready = pod("not-ready", false, None);
        not_ready.ready = false;
        let mut unscheduled = pod("unscheduled", false, None);
        unscheduled.scheduled = false;
        unscheduled.phase = PodPhase::Pending;
        let pods = [
            pod("idle-a", true, None),
            pod("busy", true, Some("true")),
            not_ready,
            unscheduled,
            pod("idle-b", true, None),
        ];
        let classified: Vec<(&ObservedPod, PodState)> = pods
            .iter()
            .map(|p| {
                let state = if p.name == "busy" {
                    PodState::Busy
                } else if p.ready {
                    PodState::Idle
                } else {
                    PodState::Starting
                };
                (p, state)
            })
            .collect();
        let names = |count| -> Vec<String> {
            victims(&classified, count)
                .iter()
                .map(|p| p.name.clone())
                .collect()
        };
        assert_eq!(names(1), ["unscheduled"]);
        assert_eq!(names(2), ["unscheduled", "not-ready"]);
        assert_eq!(
            names(3),
            ["unscheduled", "not-ready", "idle-b"],
            "newest name first"
        );
        assert_eq!(names(10).len(), 4, "never the busy pod");
    }

    #[test]
    fn old_and_detached_pods_get_their_fate() {
        let now: Timestamp = "2026-11-21T12:00:00Z".parse().unwrap();
        let old = |name: &str, busy: bool, detached: bool, draining: bool, retired_ago: i64| {
            let mut p = pod(name, true, Some(if busy { "true" } else { "false" }));
            p.template = Some("old".into());
            p.detached = detached;
            p.draining = draining;
            p.retired_since = detached.then(|| now - SignedDuration::from_secs(retired_ago));
            p
        };
        let pods = [
            old("old-idle", false, false, false, 0),
            old("old-busy", true, false, false, 0),
            old("retired-busy", true, true, false, 100),
            old("retired-long", true, true, false, 4000),
            old("retired-idle", false, true, false, 100),
            old("drained", false, true, true, 0),
            pod("current", true, None),
        ];
        let mut spec = spec(2, 0, None);
        spec.rollout = Some(crate::api::hsd::RolloutPolicy {
            max_busy_seconds: Some(3600),
        });
        let counted = crate::plan::count(&pods, &spec, "new", now);
        let fates = fates(&counted.classified, &[], &spec, "new", false, now);
        let names = |refs: &[PodRef]| refs.iter().map(|r| r.pod.clone()).collect::<Vec<_>>();
        assert_eq!(names(&fates.drain_old), ["old-idle"]);
        assert!(fates.drain.is_empty());
        assert_eq!(names(&fates.retire), ["old-busy"]);
        let removed: Vec<(String, Removal)> = fates
            .remove
            .iter()
            .map(|(r, why)| (r.pod.clone(), *why))
            .collect();
        assert_eq!(
            removed,
            [
                ("retired-long".to_string(), Removal::MaxBusyExceeded),
                ("retired-idle".to_string(), Removal::RetiredIdle),
                ("drained".to_string(), Removal::Drained),
            ]
        );
        assert!(
            fates.state_labels.is_empty(),
            "routing is off and no pod has a label"
        );
    }

    #[test]
    fn a_drained_pod_is_left_to_its_replica_set_for_the_grace_then_deleted() {
        let now: Timestamp = "2026-11-21T12:00:00Z".parse().unwrap();
        let drained = |name: &str, ago: i64| {
            let mut p = pod(name, true, None);
            p.draining = true;
            p.draining_since = Some(now - SignedDuration::from_secs(ago));
            p.deletion_cost = Some(DRAINING_DELETION_COST);
            p
        };
        let pods = [
            drained("fresh", 1),
            drained("stale", 4),
            pod("idle", true, None),
        ];
        let spec = spec(1, 0, None);
        let current = crate::plan::template_label("default", "game-ws", &spec);
        let pods: Vec<ObservedPod> = pods
            .into_iter()
            .map(|mut p| {
                p.template = Some(current.clone());
                p
            })
            .collect();
        let counted = crate::plan::count(&pods, &spec, &current, now);
        let fates = fates(&counted.classified, &[], &spec, &current, false, now);
        let removed: Vec<(String, Removal)> = fates
            .remove
            .iter()
            .map(|(r, why)| (r.pod.clone(), *why))
            .collect();
        assert_eq!(removed, [("stale".to_string(), Removal::Drained)]);
        assert!(fates.drain.is_empty() && fates.drain_old.is_empty());
    }

    #[test]
    fn state_labels_follow_the_states_and_are_written_only_when_they_change() {
        let now: Timestamp = "2026-11-21T12:00:00Z".parse().unwrap();
        let mut spec = spec(1, 0, None);
        spec.routing = Some(crate::api::hsd::Routing { state_label: true });
        let mut busy = pod("busy", true, Some("true"));
        busy.state_label = Some("idle".into());
        let mut idle = pod("idle", true, None);
        idle.state_label = Some("idle".into());
        let fresh = pod("fresh", true, None);
        let pods = [busy, idle, fresh];
        let counted = crate::plan::count(&pods, &spec, "t", now);
        let fates = fates(&counted.classified, &[], &spec, "t", false, now);
        let labels: Vec<(String, Option<&str>)> = fates
            .state_labels
            .iter()
            .map(|(r, v)| (r.pod.clone(), *v))
            .collect();
        assert_eq!(
            labels,
            [
                ("busy".to_string(), Some("busy")),
                ("fresh".to_string(), Some("idle"))
            ]
        );
        // Routing switched off: the labels go.
        spec.routing = None;
        let fates = super::fates(&counted.classified, &[], &spec, "t", false, now);
        let removed: Vec<String> = fates
            .state_labels
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(r, _)| r.pod.clone())
            .collect();
        assert_eq!(removed, ["busy", "idle"]);
    }
}
