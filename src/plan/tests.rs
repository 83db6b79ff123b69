//! Table-driven tests of every rule of the plan, and property tests of its invariants.

use std::collections::BTreeMap;

use jiff::Timestamp;
use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::crd::{BusyProbe, HttpProbe, Selector};

fn spec(idle_target: i32, min: i32, max: Option<i32>) -> HotStandbyDeploymentSpec {
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
    }
}

fn http_spec(success_is_busy: bool) -> HotStandbyDeploymentSpec {
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

fn pod(name: &str, ready: bool, busy: Option<&str>) -> ObservedPod {
    ObservedPod {
        name: name.into(),
        ready,
        phase: if ready {
            PodPhase::Running
        } else {
            PodPhase::Pending
        },
        terminating: false,
        busy_annotation: busy.map(String::from),
        probe: None,
    }
}

fn probed(name: &str, outcome: ProbeOutcome) -> ObservedPod {
    ObservedPod {
        probe: Some(outcome),
        ..pod(name, true, None)
    }
}

fn observed(
    spec: HotStandbyDeploymentSpec,
    replicas: Option<i32>,
    pods: Vec<ObservedPod>,
) -> ObservedHsd {
    let hash = template_hash(&spec);
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
        }),
        pods,
    }
}

fn now() -> Timestamp {
    "2026-11-21T12:00:00Z".parse().unwrap()
}

fn idle_pods(n: usize) -> Vec<ObservedPod> {
    (0..n)
        .map(|i| pod(&format!("idle-{i}"), true, None))
        .collect()
}

fn busy_pods(n: usize) -> Vec<ObservedPod> {
    (0..n)
        .map(|i| pod(&format!("busy-{i}"), true, Some("true")))
        .collect()
}

#[test]
fn formula_table() {
    struct Case {
        name: &'static str,
        idle_target: i32,
        min: i32,
        max: Option<i32>,
        busy: i32,
        unknown: i32,
        replicas: i32,
        limited_by: Option<Bound>,
    }
    let cases = [
        Case {
            name: "the issue's example",
            idle_target: 3,
            min: 0,
            max: Some(50),
            busy: 2,
            unknown: 0,
            replicas: 5,
            limited_by: None,
        },
        Case {
            name: "nothing busy",
            idle_target: 3,
            min: 0,
            max: Some(50),
            busy: 0,
            unknown: 0,
            replicas: 3,
            limited_by: None,
        },
        Case {
            name: "unknown counts as busy",
            idle_target: 3,
            min: 0,
            max: None,
            busy: 1,
            unknown: 2,
            replicas: 6,
            limited_by: None,
        },
        Case {
            name: "clamped at max",
            idle_target: 3,
            min: 0,
            max: Some(4),
            busy: 2,
            unknown: 0,
            replicas: 4,
            limited_by: Some(Bound::Max),
        },
        Case {
            name: "held at min",
            idle_target: 1,
            min: 5,
            max: Some(10),
            busy: 1,
            unknown: 0,
            replicas: 5,
            limited_by: Some(Bound::Min),
        },
        Case {
            name: "zero buffer",
            idle_target: 0,
            min: 0,
            max: None,
            busy: 0,
            unknown: 0,
            replicas: 0,
            limited_by: None,
        },
        Case {
            name: "exactly max is not limited",
            idle_target: 3,
            min: 0,
            max: Some(5),
            busy: 2,
            unknown: 0,
            replicas: 5,
            limited_by: None,
        },
        Case {
            name: "exactly min is not limited",
            idle_target: 3,
            min: 3,
            max: None,
            busy: 0,
            unknown: 0,
            replicas: 3,
            limited_by: None,
        },
        Case {
            name: "no max means unbounded",
            idle_target: 2,
            min: 0,
            max: None,
            busy: 1000,
            unknown: 0,
            replicas: 1002,
            limited_by: None,
        },
    ];
    for case in cases {
        let counts = Counts {
            busy: case.busy,
            idle: 0,
            starting: 0,
            unknown: case.unknown,
        };
        let got = recommend(&counts, &spec(case.idle_target, case.min, case.max));
        assert_eq!(got.replicas, case.replicas, "{}: replicas", case.name);
        assert_eq!(got.limited_by, case.limited_by, "{}: limited_by", case.name);
    }
}

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
            "http redirect is a failure",
            probed("a", ProbeOutcome::Failure(302)),
            ProbeMode::Http,
            true,
            PodState::Idle,
        ),
        (
            "http timeout is unknown",
            probed("a", ProbeOutcome::Error("timed out".into())),
            ProbeMode::Http,
            true,
            PodState::Unknown,
        ),
        (
            "http not ready is starting",
            pod("a", false, None),
            ProbeMode::Http,
            true,
            PodState::Starting,
        ),
        (
            "http ignores the annotation",
            pod("a", false, Some("true")),
            ProbeMode::Http,
            true,
            PodState::Starting,
        ),
    ];
    for (name, pod, mode, success_is_busy, expected) in cases {
        assert_eq!(classify(&pod, mode, success_is_busy), expected, "{name}");
    }
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
            unknown: 0
        }
    );
    assert_eq!(plan.deployment, DeploymentAction::Keep);
}

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
    let plan = plan(
        &observed(spec(3, 0, Some(50)), Some(5), idle_pods(5)),
        now(),
    );
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
            template_hash: template_hash(&spec(3, 0, Some(50)))
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
fn invalid_specs_are_flagged_with_the_fix() {
    let mut selector_mismatch = spec(3, 0, None);
    selector_mismatch.pod_template = json!({"metadata": {"labels": {"app": "other"}}});
    let mut bad_port = http_spec(true);
    bad_port.busy_probe.http.port = 70000;
    let cases: Vec<(&str, HotStandbyDeploymentSpec, &str)> = vec![
        (
            "negative idle target",
            spec(-1, 0, None),
            "spec.idleTarget is -1",
        ),
        (
            "min above max",
            spec(3, 10, Some(5)),
            "greater than spec.maxReplicas",
        ),
        ("max zero", spec(3, 0, Some(0)), "spec.maxReplicas is 0"),
        (
            "selector not in template",
            selector_mismatch,
            "lacks app=game-ws",
        ),
        ("port out of range", bad_port, "use 1-65535"),
    ];
    for (name, spec, needle) in cases {
        let hsd = observed(spec, Some(3), idle_pods(3));
        let plan = plan(&hsd, now());
        assert_eq!(plan.deployment, DeploymentAction::Blocked, "{name}");
        let invalid = plan
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == condition::INVALID_SPEC)
            .unwrap();
        assert_eq!(invalid.status, "True", "{name}");
        assert!(
            invalid.message.contains(needle),
            "{name}: {}",
            invalid.message
        );
        assert!(
            plan.events.iter().any(|e| e.reason == "InvalidSpec"),
            "{name}"
        );
    }
    let mut unreadable = observed(spec(3, 0, None), Some(3), vec![]);
    unreadable.spec = Err("invalid type: string \"three\", expected i32".into());
    let plan = plan(&unreadable, now());
    assert_eq!(plan.deployment, DeploymentAction::Blocked);
    assert!(
        plan.status
            .conditions
            .iter()
            .any(|c| c.type_ == condition::INVALID_SPEC && c.message.contains("cannot be read"))
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
            unknown: 1
        }
    );
    assert_eq!(
        plan.recommendation.unwrap().replicas,
        5,
        "1 busy + 1 unknown + 3"
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

#[test]
fn conditions_keep_their_transition_time_while_status_holds() {
    let earlier: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    let mut conditions = Conditions::new(&[], earlier);
    conditions.set("Ready", true, "Reconciled", "fine");
    let previous = conditions.finish();
    let mut conditions = Conditions::new(&previous, now());
    assert!(!conditions.set("Ready", true, "Reconciled", "still fine"));
    assert_eq!(
        conditions.finish()[0].last_transition_time,
        "2026-01-01T00:00:00Z"
    );
    let mut conditions = Conditions::new(&previous, now());
    assert!(conditions.set("Ready", false, "Failed", "broken"));
    assert_eq!(
        conditions.finish()[0].last_transition_time,
        "2026-11-21T12:00:00Z"
    );
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

#[test]
fn selectors_match_subsets_and_never_empty() {
    let labels = BTreeMap::from([
        ("app".to_string(), "a".to_string()),
        ("tier".to_string(), "x".to_string()),
    ]);
    assert!(selector_matches(
        &BTreeMap::from([("app".into(), "a".into())]),
        &labels
    ));
    assert!(!selector_matches(
        &BTreeMap::from([("app".into(), "b".into())]),
        &labels
    ));
    assert!(!selector_matches(&BTreeMap::new(), &labels));
}

#[test]
fn template_hash_changes_with_the_template_only() {
    let a = spec(3, 0, None);
    let mut b = spec(9, 2, Some(20));
    assert_eq!(
        template_hash(&a),
        template_hash(&b),
        "bounds are not part of the Deployment template"
    );
    b.pod_template["spec"]["containers"][0]["image"] = json!("game-ws:2");
    assert_ne!(template_hash(&a), template_hash(&b));
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
        let counts = Counts { busy, idle: 0, starting: 0, unknown };
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
    fn the_plan_never_panics_and_a_second_pass_is_a_no_op(
        states in proptest::collection::vec((any::<bool>(), prop_oneof![Just(None), Just(Some("true")), Just(Some("false")), Just(Some("zzz"))]), 0..30),
        idle_target in 0..10i32,
        current in 0..40i32,
    ) {
        let pods: Vec<ObservedPod> = states
            .iter()
            .enumerate()
            .map(|(i, (ready, busy))| pod(&format!("p{i}"), *ready, *busy))
            .collect();
        let hsd = observed(spec(idle_target, 0, Some(30)), Some(current), pods);
        let first = plan(&hsd, now());
        let mut converged = hsd.clone();
        converged.status = Some(first.status.clone());
        converged.deployment.as_mut().unwrap().replicas = Some(first.recommendation.unwrap().replicas);
        let second = plan(&converged, now() + jiff::SignedDuration::from_secs(60));
        prop_assert_eq!(second.deployment, DeploymentAction::Keep);
        prop_assert!(second.events.is_empty());
        prop_assert!(!second.status_changed, "{:?} -> {:?}", first.status, second.status);
    }
}
