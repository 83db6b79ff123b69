//! Step 5, step: how far one scale-down may go. The ReplicaSet deletes the pods it ranks first
//! whenever replicas fall below the pods that exist; a step never goes deeper than the pods it
//! ranks strictly before every busy one.

use super::count::PodState;
use super::input::{ObservedPod, PodPhase};
use super::protect::{effective_cost, is_protected, wanted_cost};

/// The ReplicaSet's scale-down ranking, as far as it is decided before the tie-breakers
/// (node spread, ready time, restarts, age): unscheduled, then Pending < Unknown < Running,
/// then not ready, then lower deletion cost go first. Lower keys are deleted first.
pub fn deletion_rank(pod: &ObservedPod, cost: i32) -> (u8, u8, u8, i32) {
    let phase = match pod.phase {
        PodPhase::Pending => 0,
        PodPhase::Unknown => 1,
        _ => 2,
    };
    (u8::from(pod.scheduled), phase, u8::from(pod.ready), cost)
}

/// How many pods the ReplicaSet can delete before it could reach a busy (or unknown) one:
/// those ranking strictly before every busy pod, given the deletion costs the plan sets.
pub fn safe_deletions(pods: &[(&ObservedPod, PodState, i32)]) -> i32 {
    let first_busy = pods
        .iter()
        .filter(|(_, state, _)| is_protected(*state))
        .map(|(pod, _, cost)| deletion_rank(pod, *cost))
        .min();
    let safe = pods
        .iter()
        .filter(|(pod, state, cost)| {
            !is_protected(*state) && first_busy.is_none_or(|busy| deletion_rank(pod, *cost) < busy)
        })
        .count();
    i32::try_from(safe).unwrap_or(i32::MAX)
}

/// The lowest replica count one step may go to, with busy pods carrying their high cost.
pub fn lowest_safe(classified: &[(&ObservedPod, PodState)]) -> i32 {
    let with_costs: Vec<(&ObservedPod, PodState, i32)> = classified
        .iter()
        .map(|(pod, state)| {
            let cost = effective_cost(pod);
            let planned = wanted_cost(*state, cost, false).or(cost).unwrap_or(0);
            (*pod, *state, planned)
        })
        .collect();
    let active = i32::try_from(classified.len()).unwrap_or(i32::MAX);
    active - safe_deletions(&with_costs)
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
    fn step_limit_table() {
        // (name, pods, current replicas, expected replicas)
        let cases: Vec<(&str, Vec<ObservedPod>, i32, i32)> = vec![
            (
                "all ready: costs make any step safe",
                [busy_pods(1), idle_pods(6)].concat(),
                7,
                4,
            ),
            (
                "a not-ready busy pod ranks before ready idle ones: no step",
                [vec![not_ready_busy("nr-busy")], idle_pods(6)].concat(),
                7,
                7,
            ),
            (
                "not-ready idle pods rank before it: the step stops at them",
                [
                    vec![
                        not_ready_busy("nr-busy"),
                        pod("nr-idle-1", false, None),
                        pod("nr-idle-2", false, None),
                    ],
                    idle_pods(4),
                ]
                .concat(),
                7,
                5,
            ),
            (
                "a pending pod marked busy runs nothing: it may go",
                [
                    vec![unscheduled(pod("pending-busy", false, Some("true")))],
                    idle_pods(6),
                ]
                .concat(),
                7,
                3,
            ),
            (
                "unscheduled idle pods go before a not-ready busy one",
                [
                    vec![
                        not_ready_busy("nr-busy"),
                        unscheduled(pod("pending-idle", false, None)),
                    ],
                    idle_pods(5),
                ]
                .concat(),
                7,
                6,
            ),
        ];
        for (name, mut pods, current, expected) in cases {
            // Earlier passes gave the busy pods their cost: the step limit is what is tested here.
            for pod in &mut pods {
                if pod.busy_annotation.as_deref() == Some("true") {
                    pod.deletion_cost = Some(BUSY_DELETION_COST);
                }
            }
            let hsd = observed(spec(3, 0, None), Some(current), pods);
            let first = plan(&hsd, now());
            let dropped = settled_plan(&hsd, now());
            assert_eq!(
                dropped.decision.as_ref().unwrap().replicas,
                expected,
                "{name}"
            );
            let held = first.decision.as_ref().unwrap().held_to_protect_busy;
            assert_eq!(
                held.is_some(),
                expected > 4 || name.contains("not-ready busy pod") || name.contains("unscheduled"),
                "{name}: {held:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn no_step_reaches_a_busy_pod(
            pods in proptest::collection::vec((any::<bool>(), any::<bool>(), any::<bool>(), prop_oneof![Just(None), Just(Some(BUSY_DELETION_COST)), Just(Some(0))]), 0..25),
            idle_target in 0..6i32,
            current_extra in 0..10i32,
        ) {
            let pods: Vec<ObservedPod> = pods
                .iter()
                .enumerate()
                .map(|(i, (busy, ready, scheduled, cost))| {
                    let mut p = pod(&format!("p{i}"), *ready, Some(if *busy { "true" } else { "false" }));
                    p.scheduled = *scheduled;
                    if !scheduled { p.phase = PodPhase::Pending; }
                    p.deletion_cost = *cost;
                    p
                })
                .collect();
            let active = pods.len() as i32;
            let current = active + current_extra;
            // The pass that drops replicas, after the drain settled: the ReplicaSet ranks the
            // pods as that pass left them.
            let (after, plan) = settled(&observed(spec(idle_target, 0, None), Some(current), pods.clone()), now());
            let replicas = plan.decision.as_ref().unwrap().replicas;
            let costs: BTreeMap<String, i32> = costs_of(&plan).into_iter().collect();
            let deletions = (active - replicas).max(0) as usize;
            for victim in replicaset_victims(&after.pods, &costs, deletions) {
                // A Pending pod runs nothing: never busy, whatever its annotation says.
                let busy = victim.busy_annotation.as_deref() == Some("true") && victim.phase != PodPhase::Pending;
                prop_assert!(!busy, "busy victim {}", victim.name);
            }
            // Never below the busy pods.
            let busy = pods.iter().filter(|p| p.busy_annotation.as_deref() == Some("true") && p.phase != PodPhase::Pending).count() as i32;
            prop_assert!(replicas >= busy.min(current));
        }
    }
}
