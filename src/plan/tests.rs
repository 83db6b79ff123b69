//! Table-driven tests of every rule of the plan, and property tests of its invariants.

use std::collections::BTreeMap;

use jiff::Timestamp;
use proptest::prelude::*;
use serde_json::json;

use std::time::Duration;

use jiff::SignedDuration;

use super::*;
use crate::crd::TimedRecommendation;
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
        scale_down_delay_seconds: None,
        idle_percent: None,
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

/// A running pod (ready or not). `pending()` makes one that runs nothing yet.
fn pod(name: &str, ready: bool, busy: Option<&str>) -> ObservedPod {
    ObservedPod {
        name: name.into(),
        uid: format!("uid-{name}"),
        ready,
        phase: PodPhase::Running,
        terminating: false,
        busy_annotation: busy.map(String::from),
        probe: None,
        scheduled: true,
        deletion_cost: None,
        cost_in_flight: None,
        template_hash: Some("rs-1".into()),
        unschedulable_since: None,
    }
}

fn pending(mut pod: ObservedPod) -> ObservedPod {
    pod.phase = PodPhase::Pending;
    pod.ready = false;
    pod
}

/// The cost writes as (pod, cost).
fn costs_of(plan: &Plan) -> Vec<(String, i32)> {
    plan.cost_writes
        .iter()
        .map(|w| (w.pod.clone(), w.cost))
        .collect()
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
            applied_replicas: Some(replicas),
            relabelling: false,
        }),
        pods,
        probes_cut_short: 0,
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
        idle: i32,
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
            idle: 0,
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
            idle: 0,
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
            idle: 3,
            unknown: 2,
            replicas: 6,
            limited_by: None,
        },
        Case {
            name: "unknown pods add at most the pods that exist (no runaway)",
            idle_target: 3,
            min: 0,
            max: None,
            busy: 1,
            idle: 0,
            unknown: 2,
            replicas: 4,
            limited_by: None,
        },
        Case {
            name: "every pod unknown: replicas hold at the pods that exist",
            idle_target: 2,
            min: 0,
            max: Some(100),
            busy: 0,
            idle: 0,
            unknown: 7,
            replicas: 7,
            limited_by: None,
        },
        Case {
            name: "clamped at max",
            idle_target: 3,
            min: 0,
            max: Some(4),
            busy: 2,
            idle: 0,
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
            idle: 0,
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
            idle: 0,
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
            idle: 0,
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
            idle: 0,
            unknown: 0,
            replicas: 3,
            limited_by: None,
        },
        Case {
            name: "no max means the safety ceiling of 1000",
            idle_target: 2,
            min: 0,
            max: None,
            busy: 1000,
            idle: 0,
            unknown: 0,
            replicas: 1000,
            limited_by: Some(Bound::Max),
        },
    ];
    for case in cases {
        let counts = Counts {
            busy: case.busy,
            idle: case.idle,
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
            "template label contradicting the selector",
            selector_mismatch,
            "app=other (the selector says game-ws)",
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
    let hash = |spec: &HotStandbyDeploymentSpec| template_hash("ns", "game-ws", spec);
    assert_eq!(
        hash(&a),
        hash(&b),
        "bounds are not part of the Deployment template"
    );
    b.pod_template["spec"]["containers"][0]["image"] = json!("game-ws:2");
    assert_ne!(hash(&a), hash(&b));
    assert_ne!(
        hash(&a),
        template_hash("ns", "other", &a),
        "the injected labels name the HSD"
    );
    assert_ne!(hash(&a), legacy_template_hash(&a));
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

// --- Busy-safe scale-down, delay, percent ---------------------------------------------------

fn not_ready_busy(name: &str) -> ObservedPod {
    pod(name, false, Some("true"))
}

fn unscheduled(mut pod: ObservedPod) -> ObservedPod {
    pod.scheduled = false;
    pod.phase = PodPhase::Pending;
    pod
}

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
    let second = plan(&observed(spec(3, 0, None), Some(7), pods.clone()), now());
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
fn recent_recommendations_stay_bounded_and_keep_the_highest() {
    let start = now();
    let mut history = Vec::new();
    let window = Duration::from_secs(86400);
    for i in 0..100i64 {
        let replicas = if i == 3 { 40 } else { 5 + (i % 2) as i32 };
        let (_, kept) = stabilize(
            replicas,
            &history,
            window,
            start + SignedDuration::from_secs(i),
        );
        history = kept;
    }
    assert!(history.len() <= MAX_RECOMMENDATIONS, "{}", history.len());
    let (held, _) = stabilize(5, &history, window, start + SignedDuration::from_secs(101));
    assert_eq!(held, 40, "the early high recommendation still holds");
}

fn plan_for(spec: HotStandbyDeploymentSpec, replicas: Option<i32>, pods: Vec<ObservedPod>) -> Plan {
    plan(&observed(spec, replicas, pods), now())
}

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
        let plan = plan_for(spec(3, 0, None), Some(current), pods);
        assert_eq!(plan.decision.as_ref().unwrap().replicas, expected, "{name}");
        let held = plan.decision.as_ref().unwrap().held_to_protect_busy;
        assert_eq!(
            held.is_some(),
            expected > 4 || name.contains("not-ready busy pod") || name.contains("unscheduled"),
            "{name}: {held:?}"
        );
    }
}

#[test]
fn the_delay_holds_the_highest_recommendation_of_the_window() {
    let mut delayed = spec(3, 0, None);
    delayed.scale_down_delay_seconds = Some(120);
    // Pass 1: 2 busy -> 5 replicas, recorded.
    let mut hsd = observed(
        delayed.clone(),
        Some(5),
        [busy_pods(2), idle_pods(3)].concat(),
    );
    let first = plan(&hsd, now());
    assert_eq!(first.scale, None);
    assert_eq!(first.status.recent_recommendations.len(), 1);
    // Pass 2, 60 s later: nothing busy -> formula 3, but the window holds 5.
    hsd.status = Some(first.status.clone());
    hsd.pods = idle_pods(5);
    let second = plan(&hsd, now() + SignedDuration::from_secs(60));
    assert_eq!(second.scale, None, "held by the delay");
    assert_eq!(second.decision.as_ref().unwrap().held_by_delay, Some(5));
    assert_eq!(
        second.status.desired_replicas, 3,
        "desired shows the formula"
    );
    // Pass 3, 10 s later: still inside the window.
    hsd.status = Some(second.status.clone());
    let third = plan(&hsd, now() + SignedDuration::from_secs(70));
    assert_eq!(third.scale, None);
    assert!(!third.status_changed, "nothing new to record: no write");
    // Pass 4, after the window of the last 5: released.
    hsd.status = Some(third.status.clone());
    let fourth = plan(&hsd, now() + SignedDuration::from_secs(181));
    assert_eq!(fourth.scale, Some((5, 3)));
    // Scale-up is never delayed.
    hsd.status = Some(fourth.status.clone());
    hsd.deployment.as_mut().unwrap().replicas = Some(3);
    hsd.pods = [busy_pods(3), idle_pods(0)].concat();
    let up = plan(&hsd, now() + SignedDuration::from_secs(182));
    assert_eq!(up.scale, Some((3, 6)));
}

#[test]
fn stabilize_table() {
    let t = |s: i64| (now() + SignedDuration::from_secs(s)).to_string();
    let entry = |replicas, s| TimedRecommendation {
        replicas,
        since: t(s),
    };
    let window = Duration::from_secs(100);
    // (history, recommendation now, now offset, expected replicas, expected history length)
    let cases = vec![
        (vec![], 3, 0, 3, 1),
        (vec![entry(5, 0)], 3, 50, 5, 2),
        (vec![entry(5, 0), entry(3, 50)], 3, 149, 5, 2),
        (vec![entry(5, 0), entry(3, 50)], 3, 151, 3, 1),
        (vec![entry(3, 0)], 7, 10, 7, 2),
        (vec![entry(5, 0), entry(4, 10), entry(3, 20)], 3, 115, 4, 2),
    ];
    for (history, recommendation, offset, expected, kept) in cases {
        let (replicas, new_history) = stabilize(
            recommendation,
            &history,
            window,
            now() + SignedDuration::from_secs(offset),
        );
        assert_eq!(replicas, expected, "{history:?} at +{offset}s");
        assert_eq!(
            new_history.len(),
            kept,
            "{history:?} at +{offset}s: {new_history:?}"
        );
    }
    let (replicas, history) = stabilize(3, &[entry(9, 0)], Duration::ZERO, now());
    assert_eq!(
        (replicas, history.len()),
        (3, 0),
        "no window: no history kept"
    );
}

#[test]
fn percent_idle_target_grows_with_load() {
    let mut percent = spec(2, 0, None);
    percent.idle_percent = Some(25);
    for (busy, expected_target) in [(0, 2), (4, 2), (8, 2), (9, 3), (20, 5)] {
        let counts = Counts {
            busy,
            idle: 0,
            starting: 0,
            unknown: 0,
        };
        assert_eq!(
            idle_target(&counts, &percent).0,
            expected_target,
            "{busy} busy"
        );
        assert_eq!(
            recommend(&counts, &percent).replicas,
            busy + expected_target
        );
    }
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

/// The ReplicaSet's choice, as the API server's controller makes it (before tie-breakers, which
/// the test resolves against the plan: busy pods win ties).
fn replicaset_victims<'a>(
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
        let plan = plan_for(spec(idle_target, 0, None), Some(current), pods.clone());
        let replicas = plan.decision.as_ref().unwrap().replicas;
        let costs: BTreeMap<String, i32> = costs_of(&plan).into_iter().collect();
        let deletions = (active - replicas).max(0) as usize;
        for victim in replicaset_victims(&pods, &costs, deletions) {
            // A Pending pod runs nothing: never busy, whatever its annotation says.
            let busy = victim.busy_annotation.as_deref() == Some("true") && victim.phase != PodPhase::Pending;
            prop_assert!(!busy, "busy victim {}", victim.name);
        }
        // Never below the busy pods.
        let busy = pods.iter().filter(|p| p.busy_annotation.as_deref() == Some("true") && p.phase != PodPhase::Pending).count() as i32;
        prop_assert!(replicas >= busy.min(current));
    }
}

#[test]
fn another_writer_changing_replicas_is_reverted_with_a_warning() {
    let mut hsd = observed(spec(3, 0, None), Some(7), idle_pods(3));
    hsd.deployment.as_mut().unwrap().applied_replicas = Some(3);
    let plan = plan(&hsd, now());
    assert_eq!(plan.scale, Some((7, 3)));
    let event = plan
        .events
        .iter()
        .find(|e| e.reason == "ReplicasOverridden")
        .expect("a warning");
    assert!(
        event
            .note
            .contains("set to 7 by another writer (this tool set 3)"),
        "{}",
        event.note
    );
    // Our own earlier value: an ordinary scale, no warning.
    let ours = plan_for(spec(3, 0, None), Some(5), idle_pods(5));
    assert!(!ours.events.iter().any(|e| e.reason == "ReplicasOverridden"));
}
