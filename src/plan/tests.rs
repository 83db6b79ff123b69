//! Table-driven tests of the whole plan (events, conditions, the child Deployment, explain), and
//! property tests of its invariants. Each step's own rules are tested in its module.

#![allow(unused_imports)]

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;
use serde_json::json;

use crate::api::hsd::TimedRecommendation;
use crate::api::hsd::*;
use crate::plan::fixtures::*;
use crate::plan::*;

#[test]
fn two_busy_pods_scale_three_to_five_with_an_event() {
    let mut pods = busy_pods(2);
    pods.extend(idle_pods(1));
    let plan = plan(&observed(spec(3, 0, Some(50)), Some(3), pods), now());
    assert_eq!(plan.scale, Some((3, 5)));
    assert!(matches!(
        plan.deployment,
        DeploymentAction::Apply { replicas: 5, .. }
    ));
    let event = plan
        .events
        .iter()
        .find(|e| e.reason == "ScaledUp")
        .expect("a ScaledUp event");
    assert_eq!(event.note, "from 3 to 5: 2 busy + idle target 3");
    assert_eq!(event.type_, EventType::Normal);
    assert_eq!(plan.status.desired_replicas, 5);
    assert_eq!(plan.status.busy_count, 2);
    assert_eq!(
        plan.status.last_scale_time.as_deref(),
        Some("2026-11-21T12:00:00Z")
    );
}

#[test]
fn scale_down_event_names_the_numbers() {
    let hsd = observed(spec(3, 0, Some(50)), Some(5), idle_pods(5));
    let drained = plan(&hsd, now());
    assert!(
        !drained.events.iter().any(|e| e.reason == "ScaledDown"),
        "the pass that drains drops nothing yet"
    );
    let plan = settled_plan(&hsd, now());
    assert_eq!(plan.scale, Some((5, 3)));
    let event = plan
        .events
        .iter()
        .find(|e| e.reason == "ScaledDown")
        .expect("a ScaledDown event");
    assert_eq!(event.note, "from 5 to 3: 0 busy + idle target 3");
}

#[test]
fn clamping_at_max_sets_scaling_limited_and_warns_once() {
    let hsd = observed(spec(3, 0, Some(4)), Some(4), busy_pods(4));
    let first = plan(&hsd, now());
    let limited = first
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == condition::SCALING_LIMITED)
        .unwrap();
    assert_eq!(
        (limited.status.as_str(), limited.reason.as_str()),
        ("True", "TooManyReplicas")
    );
    assert!(
        first
            .events
            .iter()
            .any(|e| e.reason == "ScalingLimited" && e.type_ == EventType::Warning)
    );

    // The next pass over the same world: same status, no event, nothing to write.
    let mut again = hsd.clone();
    again.status = Some(first.status.clone());
    let second = plan(&again, now() + jiff::SignedDuration::from_secs(60));
    assert!(second.events.is_empty(), "{:?}", second.events);
    assert!(!second.status_changed);
    assert_eq!(second.deployment, DeploymentAction::Keep);
}

#[test]
fn held_at_min_is_limited_without_a_warning() {
    let plan = plan(&observed(spec(1, 5, None), Some(5), idle_pods(5)), now());
    let limited = plan
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == condition::SCALING_LIMITED)
        .unwrap();
    assert_eq!(
        (limited.status.as_str(), limited.reason.as_str()),
        ("True", "TooFewReplicas")
    );
    assert!(plan.events.is_empty());
}

#[test]
fn a_steady_world_writes_nothing() {
    let hsd = observed(spec(3, 0, Some(50)), Some(3), idle_pods(3));
    let first = plan(&hsd, now());
    assert!(first.status_changed, "the first pass records the status");
    let mut again = hsd;
    again.status = Some(first.status);
    let second = plan(&again, now() + jiff::SignedDuration::from_secs(3600));
    assert_eq!(second.deployment, DeploymentAction::Keep);
    assert!(!second.status_changed);
    assert!(second.events.is_empty());
    assert_eq!(second.scale, None);
}

#[test]
fn a_missing_deployment_is_created_with_the_formula() {
    let plan = plan(&observed(spec(3, 0, Some(50)), None, vec![]), now());
    assert_eq!(
        plan.deployment,
        DeploymentAction::Apply {
            replicas: 3,
            template_hash: template_hash("default", "game-ws", &spec(3, 0, Some(50))),
            relabel: false,
        }
    );
    assert!(plan.events.iter().any(|e| e.reason == "Created"));
}

#[test]
fn a_changed_template_is_reapplied_without_scaling() {
    let mut hsd = observed(spec(3, 0, Some(50)), Some(3), idle_pods(3));
    hsd.deployment.as_mut().unwrap().template_hash = Some("stale".into());
    let plan = plan(&hsd, now());
    assert!(matches!(
        plan.deployment,
        DeploymentAction::Apply { replicas: 3, .. }
    ));
    assert_eq!(plan.scale, None);
}

#[test]
fn an_unowned_deployment_is_never_touched() {
    let mut hsd = observed(spec(3, 0, Some(50)), Some(1), vec![]);
    hsd.deployment.as_mut().unwrap().owned = false;
    let plan = plan(&hsd, now());
    assert_eq!(plan.deployment, DeploymentAction::Blocked);
    assert_eq!(plan.scale, None);
    let ready = plan
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == condition::READY)
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "DeploymentNotOwned")
    );
    assert!(
        plan.events
            .iter()
            .any(|e| e.reason == "DeploymentNotOwned" && e.type_ == EventType::Warning)
    );
}

#[test]
fn probe_failures_hold_replicas_and_degrade() {
    let pods = vec![
        probed("busy", ProbeOutcome::Success),
        probed("idle", ProbeOutcome::Failure(503)),
        probed("silent", ProbeOutcome::Error("no answer within 1s".into())),
    ];
    let plan = plan(&observed(http_spec(true), Some(5), pods), now());
    assert_eq!(
        plan.counts,
        Counts {
            busy: 1,
            idle: 1,
            starting: 0,
            unknown: 1,
            leaving: 0,
        }
    );
    assert_eq!(
        plan.recommendation.unwrap().replicas,
        4,
        "1 busy + 1 unknown + 3, what the unknown pod adds capped at the 3 pods that exist"
    );
    let degraded = plan
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == condition::PROBE_DEGRADED)
        .unwrap();
    assert_eq!(degraded.status, "True");
    assert!(
        degraded.message.contains("silent: no answer"),
        "{}",
        degraded.message
    );
}

#[test]
fn invalid_annotations_degrade_with_a_warning() {
    let mut pods = idle_pods(2);
    pods.push(pod("odd", true, Some("busy-ish")));
    let plan = plan(&observed(spec(3, 0, None), Some(4), pods), now());
    assert_eq!(plan.counts.busy, 1);
    let degraded = plan
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == condition::PROBE_DEGRADED)
        .unwrap();
    assert_eq!(degraded.reason, "InvalidBusyAnnotation");
    assert!(
        plan.events
            .iter()
            .any(|e| e.reason == "InvalidBusyAnnotation")
    );
}

#[test]
fn paused_hsds_do_not_scale() {
    let mut hsd = observed(spec(3, 0, None), Some(3), busy_pods(3));
    hsd.paused = true;
    let plan = plan(&hsd, now());
    assert_eq!(plan.deployment, DeploymentAction::Blocked);
    assert_eq!(plan.scale, None);
    assert!(
        plan.status
            .conditions
            .iter()
            .any(|c| c.type_ == condition::PAUSED && c.status == "True")
    );
    assert_eq!(
        plan.status.desired_replicas, 6,
        "the status still shows what the formula asks"
    );
}

proptest! {
    #[test]
    fn replicas_stay_within_bounds_and_cover_busy_pods(
        idle_target in 0..20i32,
        min in 0..30i32,
        extra in 0..30i32,
        bounded in any::<bool>(),
        busy in 0..100i32,
        unknown in 0..10i32,
    ) {
        let max = bounded.then_some((min + extra).max(1));
        let spec = spec(idle_target, min, max);
        let counts = Counts { busy, idle: 0, starting: 0, unknown, leaving: 0 };
        let r = recommend(&counts, &spec);
        prop_assert!(r.replicas >= min);
        if let Some(max) = max {
            prop_assert!(r.replicas <= max);
        }
        // Never below the busy (and unknown) pods, unless maxReplicas forbids it.
        if r.replicas < busy + unknown {
            prop_assert_eq!(Some(r.replicas), max);
            prop_assert_eq!(r.limited_by, Some(Bound::Max));
        }
        // Monotone in the busy count.
        let more = recommend(&Counts { busy: busy + 1, ..counts }, &spec);
        prop_assert!(more.replicas >= r.replicas);
    }

    #[test]
    fn passes_converge_to_one_that_writes_nothing(
        states in proptest::collection::vec((any::<bool>(), prop_oneof![Just(None), Just(Some("true")), Just(Some("false")), Just(Some("zzz"))]), 0..30),
        idle_target in 0..10i32,
        current in 0..40i32,
    ) {
        let mut pods: Vec<ObservedPod> = states
            .iter()
            .enumerate()
            .map(|(i, (ready, busy))| pod(&format!("p{i}"), *ready, *busy))
            .collect();
        let mut hsd = observed(spec(idle_target, 0, Some(30)), Some(current), pods.clone());
        let mut quiet = false;
        for round in 0..6 {
            let at = now() + SignedDuration::from_secs(60 * round);
            let plan = plan(&hsd, at);
            if plan.deployment == DeploymentAction::Keep && plan.events.is_empty() && !plan.status_changed && plan.cost_writes.is_empty() {
                quiet = true;
                break;
            }
            // The world follows: costs written, the ReplicaSet deletes or adds (ready, idle) pods.
            let costs: BTreeMap<String, i32> = costs_of(&plan).into_iter().collect();
            for p in &mut pods {
                if let Some(cost) = costs.get(&p.name) { p.deletion_cost = Some(*cost); }
            }
            let replicas = plan.decision.as_ref().unwrap().replicas;
            let active = pods.len() as i32;
            if replicas < active {
                let victims: Vec<String> = replicaset_victims(&pods, &BTreeMap::new(), (active - replicas) as usize).iter().map(|p| p.name.clone()).collect();
                for victim in &victims {
                    prop_assert!(pods.iter().find(|p| &p.name == victim).unwrap().busy_annotation.as_deref() != Some("true"));
                }
                pods.retain(|p| !victims.contains(&p.name));
            }
            for i in 0..(replicas - active).max(0) {
                pods.push(pod(&format!("new{round}-{i}"), true, None));
            }
            hsd.pods = pods.clone();
            hsd.status = Some(plan.status.clone());
            hsd.deployment.as_mut().unwrap().replicas = Some(replicas);
        }
        prop_assert!(quiet, "no quiet pass within 6 rounds");
    }
}

#[test]
fn a_template_that_marks_pods_busy_gets_a_condition_and_its_pending_pods_are_not_busy() {
    let mut spec = spec(2, 0, None);
    spec.pod_template["metadata"]["annotations"] = json!({"paia.tech/busy": "true"});
    let pods = vec![
        pending(pod("new-1", false, Some("true"))),
        pending(pod("new-2", false, Some("true"))),
        pod("old", true, Some("false")),
    ];
    let plan = plan_for(spec, Some(3), pods);
    assert_eq!(plan.counts.busy, 0);
    assert_eq!(plan.counts.starting, 2);
    let condition = plan
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == condition::BUSY_TEMPLATE)
        .expect("a condition");
    assert!(
        condition.message.contains("Remove it from the template"),
        "{}",
        condition.message
    );
    assert!(
        plan.events
            .iter()
            .any(|e| e.reason == "BusyAnnotationInTemplate")
    );
}

#[test]
fn unschedulable_pods_warn_after_a_minute_and_never_add_replicas() {
    let mut stuck = unscheduled(pod("stuck", false, None));
    stuck.unschedulable_since = Some(now() - SignedDuration::from_secs(30));
    let pods = [vec![stuck.clone()], idle_pods(2)].concat();
    let young = plan_for(spec(3, 0, None), Some(3), pods.clone());
    assert_eq!(
        young.recommendation.unwrap().replicas,
        3,
        "pending pods add nothing"
    );
    assert!(
        !young
            .status
            .conditions
            .iter()
            .any(|c| c.type_ == condition::PODS_UNSCHEDULABLE)
    );
    stuck.unschedulable_since = Some(now() - SignedDuration::from_secs(90));
    let old = plan_for(
        spec(3, 0, None),
        Some(3),
        [vec![stuck], idle_pods(2)].concat(),
    );
    assert!(
        old.status
            .conditions
            .iter()
            .any(|c| c.type_ == condition::PODS_UNSCHEDULABLE && c.status == "True")
    );
    assert!(
        old.events
            .iter()
            .any(|e| e.reason == "PodsUnschedulable" && e.type_ == EventType::Warning)
    );
    assert_eq!(old.recommendation.unwrap().replicas, 3);
}

#[test]
fn explain_says_why() {
    let mut percent = spec(2, 0, Some(6));
    percent.idle_percent = Some(50);
    let plan = plan_for(percent, Some(4), busy_pods(4));
    let why = plan.decision.unwrap().why.join("\n");
    assert!(
        why.contains(
            "4 busy + 0 unknown + idle target 2 = max(idleTarget 2, 2 from idlePercent) = 6"
        ),
        "{why}"
    );
    assert!(why.contains("the Deployment goes from 4 to 6"), "{why}");
}

#[test]
fn another_writer_changing_replicas_is_reverted_with_a_warning() {
    let mut hsd = observed(spec(3, 0, None), Some(7), idle_pods(7));
    hsd.deployment.as_mut().unwrap().replicas_writer = Some("kubectl-scale".into());
    let plan = settled_plan(&hsd, now());
    assert_eq!(plan.scale, Some((7, 3)));
    let event = plan
        .events
        .iter()
        .find(|e| e.reason == "ReplicasOverridden")
        .expect("a warning");
    assert!(
        event
            .note
            .contains("set to 7 by another writer (field manager kubectl-scale); setting it to 3"),
        "{}",
        event.note
    );
    // Our own earlier value: an ordinary scale, no warning.
    let ours = plan_for(spec(3, 0, None), Some(5), idle_pods(5));
    assert!(!ours.events.iter().any(|e| e.reason == "ReplicasOverridden"));
}

#[test]
fn replicas_drop_by_the_pods_drained_and_no_further() {
    // 7 pods seen, 4 drained: replicas drop by exactly those, once the ReplicaSet has had
    // DRAIN_SETTLE to see the marks.
    let hsd = observed(spec(3, 0, None), Some(7), idle_pods(7));
    let seen = plan(&hsd, now());
    assert_eq!(seen.scale, None, "the drop waits for the drain to settle");
    assert_eq!(seen.decision.as_ref().unwrap().drained.len(), 4);
    assert_eq!(seen.decision.as_ref().unwrap().held_for_drain, Some(7));
    let marked = after_drain(&hsd, &seen, now());
    // Read back at once (the watch delivers the marks in milliseconds): still held, and the
    // drained pods are neither drained again nor deleted.
    let early = plan(&marked, now() + SignedDuration::from_millis(20));
    assert_eq!(early.scale, None);
    assert_eq!(early.decision.as_ref().unwrap().held_for_drain, Some(7));
    assert!(early.fates.is_empty(), "{:?}", early.fates);
    // The wait: a settle from the marks, not from each pass that looks in between.
    let settle = DRAIN_SETTLE.unsigned_abs();
    let margin = std::time::Duration::from_millis(50);
    assert_eq!(seen.drop_held_for(now()), Some(settle + margin));
    let between = now() + SignedDuration::from_millis(600);
    assert_eq!(
        plan(&marked, between).drop_held_for(between),
        Some(settle - std::time::Duration::from_millis(600) + margin)
    );
    let ahead = now() - SignedDuration::from_secs(5);
    assert_eq!(
        early.drop_held_for(ahead),
        Some(settle + margin),
        "never more than a settle"
    );
    // Settled: the drop, by exactly the drained pods, which the ReplicaSet deletes (not this
    // tool, even past the grace: the drop is what removes them).
    let dropped = plan(&marked, now() + DRAIN_SETTLE);
    assert_eq!(dropped.scale, Some((7, 3)));
    assert_eq!(dropped.decision.as_ref().unwrap().held_for_drain, None);
    let late = plan(&marked, now() + DRAIN_GRACE + SignedDuration::from_secs(1));
    assert_eq!(late.scale, Some((7, 3)));
    assert!(late.fates.remove.is_empty(), "{:?}", late.fates.remove);
    // A pod that turned busy after the drain was planned but before its mark (the mark's
    // compare-and-swap refused it) is busy in the pass that drops: it keeps its place.
    let mut refused = marked.clone();
    let turned = refused.pods.iter_mut().find(|p| p.draining).unwrap();
    turned.draining = false;
    turned.draining_since = None;
    turned.deletion_cost = None;
    turned.busy_annotation = Some("true".into());
    let after_refusal = plan(&refused, now() + DRAIN_SETTLE);
    assert_eq!(
        after_refusal.decision.as_ref().unwrap().held_for_costs,
        Some(7),
        "its cost goes first"
    );

    // Replicas 7, 3 pods seen: the 4 owed are not made or not seen yet; the ReplicaSet drops
    // those itself (unmade or Pending). Nothing seen is drained.
    let owed = plan(&observed(spec(3, 0, None), Some(7), idle_pods(3)), now());
    assert_eq!(owed.scale, Some((7, 3)));
    assert!(owed.decision.as_ref().unwrap().drained.is_empty());
}

fn sleepy_spec(min: i32) -> HotStandbyDeploymentSpec {
    let mut spec = spec(2, min, Some(10));
    spec.scale_to_zero = Some(ScaleToZero { after_seconds: 60 });
    spec
}

#[test]
fn scale_to_zero_sleeps_below_min_replicas_once_the_deadline_passed_and_nothing_is_busy() {
    let mut hsd = observed(sleepy_spec(1), Some(2), idle_pods(2));
    hsd.sleep_deadline = Some(now() - SignedDuration::from_secs(1));
    let draining = plan(&hsd, now());
    assert!(draining.sleep.asleep);
    assert_eq!(
        draining.fates.drain.len(),
        2,
        "the pods go through the drain handshake"
    );
    let asleep = settled_plan(&hsd, now());
    assert!(asleep.sleep.asleep);
    assert_eq!(asleep.scale, Some((2, 0)), "below minReplicas 1");
    assert_eq!(asleep.status.desired_replicas, 0);
    assert_eq!(
        asleep.desired(),
        Some(0),
        "what `reconcile` prints as DESIRED"
    );
    let condition = asleep
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == condition::ASLEEP)
        .expect("an Asleep condition");
    assert_eq!(condition.status, "True");
    assert!(
        asleep
            .decision
            .unwrap()
            .why
            .iter()
            .any(|w| w.contains("asleep")),
        "explained"
    );

    // Nothing written while the deadline is ahead; the pass says when to look again.
    hsd.sleep_deadline = Some(now() + SignedDuration::from_secs(30));
    let awake = plan(&hsd, now());
    assert!(!awake.sleep.asleep);
    assert_eq!(awake.scale, None);
    assert_eq!(awake.sleep.move_deadline_to, None);
    assert_eq!(awake.sleep.sleeps_at, hsd.sleep_deadline);
}

#[test]
fn a_busy_pod_keeps_a_sleepy_hsd_awake_and_moves_the_deadline() {
    let mut pods = busy_pods(1);
    pods.extend(idle_pods(2));
    let mut hsd = observed(sleepy_spec(0), Some(3), pods);
    hsd.sleep_deadline = Some(now() - SignedDuration::from_secs(100));
    let plan = plan(&hsd, now());
    assert!(!plan.sleep.asleep);
    assert_eq!(plan.scale, None, "1 busy + 2 idle is the target");
    assert_eq!(
        plan.sleep.move_deadline_to,
        Some(now() + SignedDuration::from_secs(60))
    );
}

#[test]
fn a_sleeping_hsd_wakes_to_its_normal_count_when_the_deadline_moves_later() {
    let mut hsd = observed(sleepy_spec(1), Some(0), Vec::new());
    hsd.sleep_deadline = Some(now() + SignedDuration::from_secs(60));
    let plan = plan(&hsd, now());
    assert_eq!(plan.scale, Some((0, 2)), "idleTarget 2");
}
