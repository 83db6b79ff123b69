//! Step 4, protect: busy and unknown pods get the high deletion cost in the pass that first sees
//! them so, and a scale-down waits while anything could still reach one of them: costs not yet
//! read back, a rollout (two ReplicaSets), probes that ran out of time.

use std::collections::BTreeSet;

use super::count::PodState;
use super::input::ObservedPod;

/// The annotation the ReplicaSet reads to choose which pods go first on scale-down.
pub const DELETION_COST_ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";
/// The deletion cost of busy and unknown pods: far above the default 0 of idle ones.
pub const BUSY_DELETION_COST: i32 = 1_000_000;

/// Whether a pod of this state is protected from a scale-down (busy or unknown).
pub fn is_protected(state: PodState) -> bool {
    matches!(state, PodState::Busy | PodState::Unknown)
}

/// The deletion cost a pod should carry, if it must change. Busy and unknown pods get the high
/// cost in the pass that first sees them so; a cost left high from a busy past is lowered to 0
/// only when `may_lower` (never in a pass that lowers replicas). `current` is the cost as read,
/// or as this process last wrote it.
pub fn wanted_cost(state: PodState, current: Option<i32>, may_lower: bool) -> Option<i32> {
    match state {
        _ if is_protected(state) && current != Some(BUSY_DELETION_COST) => Some(BUSY_DELETION_COST),
        PodState::Idle | PodState::Starting if may_lower && current == Some(BUSY_DELETION_COST) => {
            Some(0)
        }
        _ => None,
    }
}

/// The cost this process knows a pod has: its own write in flight, else what was read.
pub fn effective_cost(pod: &ObservedPod) -> Option<i32> {
    pod.cost_in_flight.or(pod.deletion_cost)
}

/// A deletion cost to write on one pod (with its uid: a pod replaced under the same name is
/// not written).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CostWrite {
    pub pod: String,
    pub uid: String,
    pub cost: i32,
}

/// The cost writes the pods need.
pub fn cost_changes(classified: &[(&ObservedPod, PodState)], may_lower: bool) -> Vec<CostWrite> {
    classified
        .iter()
        .filter_map(|(pod, state)| {
            Some(CostWrite {
                pod: pod.name.clone(),
                uid: pod.uid.clone(),
                cost: wanted_cost(*state, effective_cost(pod), may_lower)?,
            })
        })
        .collect()
}

/// Why a pass keeps the current replica count instead of changing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// Some probes did not run before the probe deadline: no answer is no answer.
    ProbeDeadline,
    /// The pods belong to more than one ReplicaSet (a rollout): two ReplicaSets split a
    /// scale-down by their own rules, and the costs only rank inside each.
    Rollout,
    /// A busy pod's cost has not been read back yet: written in the same pass as the drop, it
    /// may not have reached the ReplicaSet controller's cache.
    CostsUnseen,
}

/// Whether this pass must keep `current` replicas rather than go to `desired`.
pub fn hold(
    classified: &[(&ObservedPod, PodState)],
    probes_cut_short: usize,
    current: i32,
    desired: i32,
) -> Option<Hold> {
    if probes_cut_short > 0 && desired != current {
        return Some(Hold::ProbeDeadline);
    }
    if desired >= current {
        return None;
    }
    let replica_sets: BTreeSet<&str> = classified
        .iter()
        .filter_map(|(pod, _)| pod.template_hash.as_deref())
        .collect();
    if replica_sets.len() > 1 {
        return Some(Hold::Rollout);
    }
    let costs_unseen = classified
        .iter()
        .any(|(pod, state)| is_protected(*state) && pod.deletion_cost != Some(BUSY_DELETION_COST));
    costs_unseen.then_some(Hold::CostsUnseen)
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
    fn costs_protect_busy_pods_before_any_drop_and_are_never_lowered_while_replicas_drop() {
        let mut pods = busy_pods(2);
        pods[1].deletion_cost = Some(BUSY_DELETION_COST); // already right: no write
        let mut stale = pod("was-busy", true, Some("false"));
        stale.deletion_cost = Some(BUSY_DELETION_COST);
        pods.push(stale);
        pods.extend(idle_pods(4));

        // busy-0 has no cost yet: it gets one, and the drop waits for a later pass.
        let first = plan(&observed(spec(3, 0, None), Some(7), pods.clone()), now());
        assert_eq!(
            costs_of(&first),
            vec![
                ("busy-0".to_string(), BUSY_DELETION_COST),
                ("was-busy".to_string(), 0)
            ],
            "a held pass lowers no replicas: the idle pod's stale cost goes"
        );
        assert_eq!(first.scale, None, "held while the cost is not yet seen");
        assert_eq!(first.decision.as_ref().unwrap().held_for_costs, Some(7));

        // Written but not yet read back: not written again, still held.
        let mut in_flight = pods.clone();
        in_flight[0].cost_in_flight = Some(BUSY_DELETION_COST);
        let waiting = plan(&observed(spec(3, 0, None), Some(7), in_flight), now());
        assert_eq!(costs_of(&waiting), vec![("was-busy".to_string(), 0)]);
        assert_eq!(waiting.scale, None);

        // Seen: the drop goes ahead; an idle pod's high cost stays (no lowering while dropping).
        pods[0].deletion_cost = Some(BUSY_DELETION_COST);
        let second = settled_plan(&observed(spec(3, 0, None), Some(7), pods.clone()), now());
        assert_eq!(second.scale, Some((7, 5)));
        assert!(second.cost_writes.is_empty(), "{:?}", second.cost_writes);

        // A steady pass lowers the stale cost.
        let steady_pods: Vec<ObservedPod> = pods.into_iter().take(5).collect();
        let steady = plan(&observed(spec(3, 0, None), Some(5), steady_pods), now());
        assert_eq!(steady.scale, None);
        assert_eq!(costs_of(&steady), vec![("was-busy".to_string(), 0)]);

        // A pod turning busy gets its cost at once, with no scale-down in sight.
        let turning = plan_for(
            spec(3, 0, None),
            Some(4),
            [busy_pods(1), idle_pods(3)].concat(),
        );
        assert_eq!(turning.scale, None);
        assert_eq!(
            costs_of(&turning),
            vec![("busy-0".to_string(), BUSY_DELETION_COST)]
        );
    }

    #[test]
    fn a_rollout_holds_every_pod() {
        let mut pods = idle_pods(6);
        for p in &mut pods[..3] {
            p.template_hash = Some("rs-2".into());
        }
        let plan = plan_for(spec(2, 0, None), Some(6), pods);
        assert_eq!(plan.scale, None);
        assert_eq!(plan.decision.as_ref().unwrap().held_for_rollout, Some(6));
    }

    #[test]
    fn probes_cut_short_keep_the_current_replicas_with_a_condition() {
        let mut hsd = observed(
            http_spec(true),
            Some(4),
            vec![
                probed("a", ProbeOutcome::Failure(503)),
                probed("b", ProbeOutcome::Failure(503)),
                pod("c", true, None),
                pod("d", true, None),
            ],
        );
        hsd.probes_cut_short = 2;
        let at_four = plan(&hsd, now());
        assert_eq!(at_four.scale, None);
        assert_eq!(
            at_four.decision.as_ref().unwrap().held_for_probe_deadline,
            None,
            "already at 4"
        );
        let degraded = at_four
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == condition::PROBE_DEGRADED)
            .unwrap();
        assert_eq!(degraded.reason, "ProbeDeadlineExceeded");
        assert!(
            degraded.message.contains("2 pod(s) were not probed"),
            "{}",
            degraded.message
        );
        // Fewer replicas than the formula asks: held too (no answer is no answer).
        let mut low = hsd.clone();
        low.deployment.as_mut().unwrap().replicas = Some(2);
        let held = plan(&low, now());
        assert_eq!(held.scale, None);
        assert_eq!(held.decision.unwrap().held_for_probe_deadline, Some(2));
    }
}
