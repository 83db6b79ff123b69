//! The HSJ plan's rules, table-driven and property-tested.

use std::collections::{BTreeMap, BTreeSet};

use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::api::hsd::Selector;
use crate::api::hsj::HotStandbyJobSpec;
use crate::api::probe::{BusyProbe, ProbeMode};
use crate::plan::{ObservedPod, PodPhase, ProbeOutcome};

fn now() -> Timestamp {
    "2026-11-21T12:00:00Z".parse().unwrap()
}

fn spec(idle_target: i32, max: Option<i32>, delay: i32) -> HotStandbyJobSpec {
    HotStandbyJobSpec {
        idle_target,
        min_replicas: Some(0),
        max_replicas: max,
        scale_down_delay_seconds: delay,
        selector: Selector {
            match_labels: BTreeMap::from([("app".into(), "w".into())]),
        },
        job_template: json!({
            "parallelism": 1, "backoffLimit": 0,
            "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}},
        }),
        busy_probe: BusyProbe::default(),
    }
}

fn exec_spec(idle_target: i32) -> HotStandbyJobSpec {
    let mut spec = spec(idle_target, Some(100), 0);
    spec.busy_probe.mode = ProbeMode::Exec;
    spec
}

fn hash_of(spec: &HotStandbyJobSpec) -> String {
    let job = template::job_spec("ns", "w", spec).unwrap();
    template::template_hash("ns", "w", &job)
}

fn running_pod(name: &str, busy: Option<&str>) -> ObservedPod {
    ObservedPod {
        name: format!("{name}-pod"),
        uid: format!("pod-{name}"),
        ready: true,
        phase: PodPhase::Running,
        busy_annotation: busy.map(String::from),
        scheduled: true,
        ..ObservedPod::default()
    }
}

/// A Job of `spec`'s template whose one pod is `pod` (none: not created yet), created at
/// second `age` before now.
fn job(spec: &HotStandbyJobSpec, name: &str, age: i64, pod: Option<ObservedPod>) -> ObservedJob {
    ObservedJob {
        name: name.into(),
        uid: format!("uid-{name}"),
        resource_version: Some("7".into()),
        created: Some(now() - SignedDuration::from_secs(age)),
        template_hash: Some(hash_of(spec)),
        completions: 1,
        pods: pod.into_iter().collect(),
        ..ObservedJob::default()
    }
}

fn busy(spec: &HotStandbyJobSpec, name: &str, age: i64) -> ObservedJob {
    job(spec, name, age, Some(running_pod(name, Some("true"))))
}
fn idle(spec: &HotStandbyJobSpec, name: &str, age: i64) -> ObservedJob {
    job(spec, name, age, Some(running_pod(name, Some("false"))))
}
fn pending(spec: &HotStandbyJobSpec, name: &str, age: i64) -> ObservedJob {
    let mut pod = running_pod(name, None);
    pod.phase = PodPhase::Pending;
    pod.ready = false;
    pod.scheduled = false;
    job(spec, name, age, Some(pod))
}

fn observed(spec: HotStandbyJobSpec, jobs: Vec<ObservedJob>) -> ObservedHsj {
    ObservedHsj {
        name: "w".into(),
        namespace: "ns".into(),
        uid: "hsj-uid".into(),
        generation: Some(1),
        paused: false,
        spec: Ok(spec),
        status: None,
        jobs,
        probes_cut_short: 0,
        confirmed_idle: None,
    }
}

fn deleted(plan: &HsjPlan) -> Vec<&str> {
    plan.deletions.iter().map(|d| d.job.as_str()).collect()
}

#[test]
fn job_states_follow_their_pod() {
    let s = exec_spec(1);
    let probe = &s.busy_probe;
    let probed = |outcome: Option<ProbeOutcome>| {
        let mut pod = running_pod("p", None);
        pod.probe = outcome;
        job(&s, "j", 1, Some(pod))
    };
    let mut finished = idle(&s, "f", 1);
    finished.finished = Some(Finished::Failed);
    let mut deleting = busy(&s, "d", 1);
    deleting.deleting = true;
    let mut succeeded_pod = running_pod("s", None);
    succeeded_pod.phase = PodPhase::Succeeded;
    let mut failed_pod = running_pod("x", None);
    failed_pod.phase = PodPhase::Failed;
    let mut in_flight = job(&s, "n", 0, None);
    in_flight.in_flight = true;
    let mut replaced = job(&s, "r", 1, Some(failed_pod.clone()));
    let mut retry = running_pod("r2", None);
    retry.probe = Some(ProbeOutcome::Success);
    replaced.pods.push(retry);
    let cases = [
        (
            "exit 0, success is busy",
            probed(Some(ProbeOutcome::Success)),
            JobState::Busy,
        ),
        (
            "command failed",
            probed(Some(ProbeOutcome::CommandFailed("exit code 1".into()))),
            JobState::Idle,
        ),
        (
            "no answer is protected",
            probed(Some(ProbeOutcome::Error("timed out".into()))),
            JobState::Unknown,
        ),
        ("not probed yet", probed(None), JobState::Unknown),
        ("no pod yet", job(&s, "j", 1, None), JobState::Starting),
        ("pending pod", pending(&s, "j", 1), JobState::Starting),
        ("created, not seen", in_flight, JobState::Starting),
        ("finished", finished, JobState::Failed),
        ("being deleted", deleting, JobState::Terminating),
        (
            "its pod succeeded",
            job(&s, "s", 1, Some(succeeded_pod)),
            JobState::Succeeded,
        ),
        (
            "its pod failed, a retry comes",
            job(&s, "x", 1, Some(failed_pod)),
            JobState::Starting,
        ),
        ("the retry speaks", replaced, JobState::Busy),
    ];
    for (name, job, expected) in cases {
        assert_eq!(classify_job(&job, probe), expected, "{name}");
    }
}

#[test]
fn a_worker_turning_busy_is_backfilled_and_pending_jobs_are_never_duplicated() {
    let s = spec(3, Some(100), 30);
    // 3 idle, one turns busy: 1 busy + 3 idle target = 4, 3 run: exactly 1 new Job.
    let jobs = vec![
        busy(&s, "w-0", 30),
        idle(&s, "w-1", 30),
        idle(&s, "w-2", 30),
    ];
    let plan = plan(&observed(s.clone(), jobs.clone()), now());
    assert_eq!(plan.creates, ["w-3"]);
    assert!(plan.deletions.is_empty());
    assert_eq!(plan.status.desired_active, 4);
    // Its pod is Pending: starting capacity, nothing more is made, however often asked.
    let mut with_new = jobs;
    with_new.push(pending(&s, "w-3", 1));
    for _ in 0..3 {
        let again = super::plan(&observed(s.clone(), with_new.clone()), now());
        assert!(again.creates.is_empty(), "{:?}", again.creates);
        assert!(again.deletions.is_empty());
    }
    // Created by this process but not seen yet: the same.
    let mut in_flight = job(&s, "w-3", 0, None);
    in_flight.in_flight = true;
    let mut seen = with_new.clone();
    seen[3] = in_flight;
    assert!(super::plan(&observed(s, seen), now()).creates.is_empty());
}

#[test]
fn finished_jobs_are_not_capacity_and_their_names_are_not_reused() {
    let s = spec(2, None, 0);
    let mut done = idle(&s, "w-0", 60);
    done.finished = Some(Finished::Complete);
    let plan = plan(&observed(s.clone(), vec![done, idle(&s, "w-1", 60)]), now());
    assert_eq!(plan.creates, ["w-2"]);
    assert_eq!(
        (
            plan.status.completed_jobs,
            plan.status.child_jobs,
            plan.status.active_jobs
        ),
        (1, 2, 1)
    );
}

#[test]
fn the_surplus_waits_for_the_delay_then_goes_starting_first_then_oldest_idle() {
    let s = spec(1, None, 30);
    let jobs = vec![
        busy(&s, "w-0", 300),
        idle(&s, "w-1", 200),
        idle(&s, "w-2", 100),
        pending(&s, "w-3", 10),
        pending(&s, "w-4", 5),
    ];
    // A moment ago all 5 were wanted: the window holds 5.
    let mut held = observed(s.clone(), jobs.clone());
    held.status = Some(HotStandbyJobStatus {
        recent_recommendations: vec![crate::api::hsd::TimedRecommendation {
            replicas: 5,
            since: (now() - SignedDuration::from_secs(10)).to_string(),
        }],
        ..Default::default()
    });
    let first = plan(&held, now());
    assert!(first.deletions.is_empty(), "held by the delay");
    assert_eq!(first.decision.as_ref().unwrap().held_by_delay, Some(5));
    let recheck = first
        .recheck_after
        .expect("a watcher looks again when the delay ends");
    assert!(
        (30.0..31.0).contains(&recheck.as_secs_f64()),
        "{recheck:?}: the 5 ends now and leaves the 30 s window 30 s from now"
    );
    // 31 s later the window has passed: 1 busy + 1 idle target = 2; 5 run; 3 go.
    let mut later = held.clone();
    later.status = Some(first.status.clone());
    let second = plan(&later, now() + SignedDuration::from_secs(31));
    assert_eq!(deleted(&second), ["w-4", "w-3", "w-1"]);
    assert!(second.creates.is_empty());
    assert!(
        second
            .deletions
            .iter()
            .all(|d| d.reason == DeletionReason::Surplus)
    );
    assert_eq!(second.deletions[0].resource_version.as_deref(), Some("7"));
}

#[test]
fn a_victim_carries_its_worker_as_read_and_drained_workers_go_first() {
    let s = spec(1, None, 0);
    let mut drained = idle(&s, "w-2", 100);
    drained.pods[0].draining = true;
    drained.pods[0].resource_version = "41".into();
    let mut terminating = pending(&s, "w-3", 10);
    terminating.pods[0].terminating = true;
    let jobs = vec![
        busy(&s, "w-0", 300),
        idle(&s, "w-1", 200),
        drained,
        terminating,
        job(&s, "w-4", 5, None),
    ];
    // 1 busy + 1 idle target = 2; 5 run; 3 go: the drained idle one first, then starting ones.
    let plan = plan(&observed(s, jobs), now());
    assert_eq!(deleted(&plan), ["w-2", "w-4", "w-3"]);
    let by_job = |name: &str| plan.deletions.iter().find(|d| d.job == name).unwrap();
    let first = by_job("w-2");
    assert!(first.pod_draining);
    assert_eq!(
        first.pod,
        Some(crate::plan::PodRef {
            pod: "w-2-pod".into(),
            uid: "pod-w-2".into(),
            resource_version: "41".into(),
        }),
        "the drain is a compare-and-swap on the worker as read"
    );
    // No live pod (not created yet, or already terminating): nothing to drain.
    assert_eq!(by_job("w-4").pod, None);
    assert_eq!(by_job("w-3").pod, None);
    assert!(!by_job("w-4").pod_draining);
}

#[test]
fn busy_and_unknown_jobs_are_never_deleted() {
    let mut s = exec_spec(0);
    s.scale_down_delay_seconds = 0;
    let unknown = {
        let mut pod = running_pod("u", None);
        pod.probe = Some(ProbeOutcome::Error("timed out".into()));
        job(&s, "w-1", 100, Some(pod))
    };
    let busy_job = {
        let mut pod = running_pod("b", None);
        pod.probe = Some(ProbeOutcome::Success);
        job(&s, "w-0", 200, Some(pod))
    };
    let plan = plan(&observed(s, vec![busy_job, unknown]), now());
    // 1 busy + 1 unknown + 0 = 2 = what runs: nothing to delete, and nothing could be.
    assert!(plan.deletions.is_empty());
    assert!(plan.creates.is_empty());
    let degraded = plan
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "ProbeDegraded")
        .unwrap();
    assert_eq!(degraded.status, "True");
    assert!(
        degraded.message.contains("u-pod: timed out"),
        "{}",
        degraded.message
    );
}

#[test]
fn every_probe_failing_never_runs_jobs_away() {
    let s = exec_spec(3);
    let mut jobs: Vec<ObservedJob> = (0..3)
        .map(|i| {
            let mut pod = running_pod(&format!("w-{i}"), None);
            pod.probe = Some(ProbeOutcome::Error("refused".into()));
            job(&s, &format!("w-{i}"), 10, Some(pod))
        })
        .collect();
    for round in 0..5 {
        let plan = plan(&observed(s.clone(), jobs.clone()), now());
        assert!(plan.creates.is_empty(), "round {round}: {:?}", plan.creates);
        jobs.extend(plan.creates.iter().map(|n| job(&s, n, 0, None)));
    }
}

#[test]
fn only_jobs_confirmed_idle_just_now_are_deleted() {
    let s = spec(0, None, 0);
    let jobs = vec![idle(&s, "w-0", 30), idle(&s, "w-1", 20)];
    let mut hsj = observed(s, jobs);
    let proposed = plan(&hsj, now());
    assert_eq!(deleted(&proposed), ["w-0", "w-1"]);
    // w-0 answered busy on the fresh probe: only w-1 goes.
    hsj.confirmed_idle = Some(BTreeSet::from(["uid-w-1".to_string()]));
    let fin = plan(&hsj, now());
    assert_eq!(deleted(&fin), ["w-1"]);
    assert_eq!(fin.decision.unwrap().surplus_kept, 1);
}

#[test]
fn a_template_change_recycles_only_idle_and_starting_jobs() {
    let old = spec(2, Some(4), 30);
    let mut new = old.clone();
    new.job_template["template"]["spec"]["containers"][0]["image"] = json!("i2");
    let jobs = vec![
        busy(&old, "w-0", 100),
        idle(&old, "w-1", 100),
        pending(&old, "w-2", 100),
        idle(&old, "w-3", 100),
    ];
    let plan = plan(&observed(new.clone(), jobs), now());
    // The busy old Job stays and counts; the 3 others are recycled at once (no delay), and 2
    // new Jobs keep the idle target: 1 busy + 2 = 3, 1 capacity.
    let mut recycled = deleted(&plan);
    recycled.sort();
    assert_eq!(recycled, ["w-1", "w-2", "w-3"]);
    assert!(
        plan.deletions
            .iter()
            .all(|d| d.reason == DeletionReason::Recycle)
    );
    assert_eq!(plan.creates, ["w-4", "w-5"]);
    // maxReplicas 4 counts every running Job: 4 run now, so both need the recycling first.
    assert_eq!(plan.creates_need_recycles, 2);
    assert_eq!(plan.status.outdated_jobs, 4);
    let decision = plan.decision.unwrap();
    assert_eq!(
        (decision.outdated_working, decision.outdated_recycled),
        (1, 3)
    );
}

#[test]
fn creation_is_capped_per_pass_and_by_max_replicas() {
    let s = spec(80, Some(70), 0);
    let plan = plan(&observed(s, Vec::new()), now());
    assert_eq!(plan.creates.len(), MAX_CREATES_PER_PASS);
    let decision = plan.decision.unwrap();
    assert_eq!((decision.target, decision.create_deferred), (70, 20));
    assert!(decision.why.iter().any(|w| w.contains("more later")));
}

#[test]
fn a_second_pass_with_nothing_changed_writes_nothing() {
    let s = spec(2, None, 30);
    let jobs = vec![idle(&s, "w-0", 30), idle(&s, "w-1", 30)];
    let mut hsj = observed(s, jobs);
    let first = plan(&hsj, now());
    assert!(first.status_changed);
    assert!(first.status.last_sync_time.is_some());
    hsj.status = Some(first.status.clone());
    let second = plan(&hsj, now() + SignedDuration::from_secs(90));
    assert!(!second.status_changed, "{:?}", second.status);
    assert!(second.creates.is_empty() && second.deletions.is_empty());
    assert!(second.events.is_empty());
    assert_eq!(second.status.last_sync_time, first.status.last_sync_time);
}

#[test]
fn invalid_specs_and_pauses_touch_no_job() {
    let mut bad = spec(1, Some(2), 0);
    bad.min_replicas = Some(5);
    let plan = plan(&observed(bad, vec![]), now());
    assert!(plan.blocked && plan.creates.is_empty());
    assert!(plan.events.iter().any(|e| e.reason == "InvalidSpec"));
    let mut unreadable = observed(spec(1, None, 0), vec![]);
    unreadable.spec = Err("spec.busyProbe.mode \"redis\" is not supported".into());
    let plan = super::plan(&unreadable, now());
    let invalid = plan
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "InvalidSpec")
        .unwrap();
    assert!(invalid.message.contains("redis"), "{}", invalid.message);
    let s = spec(0, None, 0);
    let mut paused = observed(s.clone(), vec![idle(&s, "w-0", 10)]);
    paused.paused = true;
    let plan = super::plan(&paused, now());
    assert!(plan.deletions.is_empty() && plan.blocked);
    assert!(plan.status.conditions.iter().any(|c| c.type_ == "Paused"));
}

#[test]
fn parallelism_other_than_one_is_refused() {
    let mut s = spec(1, None, 0);
    s.job_template["parallelism"] = json!(3);
    let error = validate("ns", "w", &s).unwrap_err();
    assert!(error.contains("must be 1"), "{error}");
}

/// A random Job: (state 0..7, template current?, age).
fn jobs() -> impl Strategy<Value = Vec<(u8, bool, u8)>> {
    proptest::collection::vec((0..7u8, any::<bool>(), 0..200u8), 0..40)
}

proptest! {
    /// Whatever the Jobs, a plan never deletes a busy or unknown Job, never creates beyond
    /// maxReplicas or the per-pass cap, and never reuses a name a Job holds.
    #[test]
    fn plans_are_safe(jobs in jobs(), idle_target in 0..30i32, max in 0..60i32, confirm_half in any::<bool>()) {
        let s = exec_spec(idle_target);
        let mut s = s;
        s.max_replicas = Some(max);
        s.scale_down_delay_seconds = 0;
        let old = {
            let mut old = s.clone();
            old.job_template["backoffLimit"] = json!(3);
            old
        };
        let observed_jobs: Vec<ObservedJob> = jobs
            .iter()
            .enumerate()
            .map(|(i, (state, current, age))| {
                let template = if *current { &s } else { &old };
                let name = format!("w-{i}");
                let mut pod = running_pod(&name, None);
                let mut job = job(template, &name, i64::from(*age), None);
                match state {
                    0 => pod.probe = Some(ProbeOutcome::Success),
                    1 => pod.probe = Some(ProbeOutcome::CommandFailed("exit code 1".into())),
                    2 => pod.probe = Some(ProbeOutcome::Error("timed out".into())),
                    3 => { pod.phase = PodPhase::Pending; pod.ready = false; }
                    4 => job.finished = Some(Finished::Complete),
                    5 => job.deleting = true,
                    _ => pod.probe = None,
                }
                job.pods.push(pod);
                job
            })
            .collect();
        let mut hsj = observed(s.clone(), observed_jobs.clone());
        if confirm_half {
            hsj.confirmed_idle = Some(observed_jobs.iter().step_by(2).map(|j| j.uid.clone()).collect());
        }
        let plan = plan(&hsj, now());
        for deletion in &plan.deletions {
            let job = observed_jobs.iter().find(|j| j.name == deletion.job).unwrap();
            let state = classify_job(job, &s.busy_probe);
            prop_assert!(matches!(state, JobState::Idle | JobState::Starting), "{} is {state:?}", job.name);
            if let Some(confirmed) = &hsj.confirmed_idle {
                prop_assert!(confirmed.contains(&deletion.uid));
            }
        }
        let live = observed_jobs
            .iter()
            .filter(|j| classify_job(j, &s.busy_probe).is_live())
            .count();
        let recycled = plan.deletions.iter().filter(|d| d.reason == DeletionReason::Recycle).count();
        prop_assert!(plan.creates.len() <= MAX_CREATES_PER_PASS);
        prop_assert!(
            live - recycled + plan.creates.len() <= usize::try_from(max).unwrap().max(live - recycled),
            "live {live}, recycled {recycled}, creates {}", plan.creates.len()
        );
        let taken: BTreeSet<&str> = observed_jobs.iter().map(|j| j.name.as_str()).collect();
        let new: BTreeSet<&str> = plan.creates.iter().map(String::as_str).collect();
        prop_assert_eq!(new.len(), plan.creates.len());
        prop_assert!(new.is_disjoint(&taken));
    }
}
