//! HotStandbyJob against the real control plane: the Job controller makes the pods, kwok runs
//! them (Jobs labelled `hsd-test/keep-running` run until annotated `hsd-test/complete`), and the
//! exec probe really goes through the API server's `pods/exec` to kwok, which runs the command
//! on this machine in the pod's own work dir (`PodExec`).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use kubectl_hsd::observe::Scope;
use kubectl_hsd::observe::jobs::hsj_resource;
use kubectl_hsd::once::{PassOptions, PassReport, run_pass};
use serde_json::{Value, json};

use crate::common::{PodExec, TestNs, Watcher, ensure_crd, example, kubectl, wait_for};
use crate::core::annotate;

const TIMEOUT: Duration = Duration::from_secs(45);
const KEEP_RUNNING: &str = "hsd-test/keep-running";

/// An HSJ named `name` whose workers keep running, with `probe` as its busyProbe.
pub(crate) fn hsj(ns: &TestNs, name: &str, idle_target: i32, delay: i32, probe: Value) -> Value {
    json!({
        "apiVersion": "apps.paia.tech/v1alpha1",
        "kind": "HotStandbyJob",
        "metadata": {"name": name, "namespace": ns.name},
        "spec": {
            "idleTarget": idle_target,
            "maxReplicas": 20,
            "scaleDownDelaySeconds": delay,
            "selector": {"matchLabels": {"app": name}},
            "jobTemplate": {
                "parallelism": 1,
                "backoffLimit": 0,
                "template": {
                    "metadata": {"labels": {"app": name, KEEP_RUNNING: "true"}},
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "worker", "image": "registry.invalid/worker:1"}],
                    },
                },
            },
            "busyProbe": probe,
        },
    })
}

/// The exec probe of the tests: `cat busy_state` in the pod's own work dir, so a pod is busy
/// while its file exists; a `hang` file makes the command outlive the 1 s timeout.
pub(crate) fn exec_probe() -> Value {
    json!({
        "mode": "exec",
        "exec": {
            "command": ["sh", "-c", "if [ -e hang ]; then sleep 5; fi; cat busy_state"],
            "timeoutSeconds": 1,
            "periodSeconds": 1,
        },
    })
}

pub(crate) async fn create_hsj(ns: &TestNs, manifest: &Value) -> DynamicObject {
    let api: Api<DynamicObject> =
        Api::namespaced_with(ns.client.clone(), &ns.name, &hsj_resource());
    let object: DynamicObject = serde_json::from_value(manifest.clone()).unwrap();
    api.create(&PostParams::default(), &object).await.unwrap()
}

pub(crate) async fn hsj_status(ns: &TestNs, name: &str) -> Value {
    let api: Api<DynamicObject> =
        Api::namespaced_with(ns.client.clone(), &ns.name, &hsj_resource());
    api.get(name)
        .await
        .unwrap()
        .data
        .get("status")
        .cloned()
        .unwrap_or(Value::Null)
}

fn condition<'a>(status: &'a Value, kind: &str) -> Option<&'a Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

fn finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        })
}

/// The Jobs of the HSJ that neither finished nor are being deleted, by name.
pub(crate) async fn live_jobs(ns: &TestNs, hsj: &str) -> Vec<Job> {
    let jobs: Api<Job> = ns.api();
    let mut live: Vec<Job> = jobs
        .list(&ListParams::default().labels(&format!("paia.tech/hotstandbyjob={hsj}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|job| job.metadata.deletion_timestamp.is_none() && !finished(job))
        .collect();
    live.sort_by_key(|job| job.name_any());
    live
}

/// Waits until the HSJ has exactly `n` live Jobs, each with one Running and Ready pod; returns
/// (Job name, pod) pairs in Job name order.
pub(crate) async fn running_workers(ns: &TestNs, hsj: &str, n: usize) -> Vec<(String, Pod)> {
    wait_for(
        &format!("{n} running workers of {hsj}"),
        TIMEOUT,
        || async {
            let jobs = live_jobs(ns, hsj).await;
            if jobs.len() != n {
                return None;
            }
            let pods = ns.live_pods(&format!("app={hsj}")).await;
            let mut workers = Vec::new();
            for job in jobs {
                let uid = job.uid()?;
                let pod = pods.iter().find(|pod| {
                    pod.owner_references()
                        .iter()
                        .any(|o| o.uid == uid && o.controller == Some(true))
                })?;
                let running = pod.status.as_ref()?.phase.as_deref() == Some("Running");
                if !running || !crate::common::is_ready(pod) {
                    return None;
                }
                workers.push((job.name_any(), pod.clone()));
            }
            Some(workers)
        },
    )
    .await
}

/// One in-process one-shot pass over the namespace; no HSJ may fail.
async fn pass(ns: &TestNs) -> PassReport {
    let report = run_pass(
        &ns.client,
        &Scope::Namespace(ns.name.clone()),
        &PassOptions::default(),
    )
    .await
    .unwrap();
    assert!(
        !report.failed(),
        "{:?} {:?}",
        report.hsj_outcomes,
        report.hsj_error
    );
    report
}

/// Every Job deletion of a namespace (by uid: names are reused), with whether the Job was busy
/// at the moment the deletion was first seen, as `busy` says.
type JobDeletions = Arc<Mutex<BTreeMap<String, (String, bool)>>>;

fn spawn_job_deletion_recorder(
    ns: &TestNs,
    busy: Arc<Mutex<HashSet<String>>>,
) -> (JobDeletions, tokio::task::JoinHandle<()>) {
    use futures::StreamExt;
    use kube::runtime::watcher;
    let deletions: JobDeletions = Default::default();
    let jobs: Api<Job> = ns.api();
    let record = deletions.clone();
    let task = tokio::spawn(async move {
        let mut events = watcher(jobs, watcher::Config::default()).boxed();
        while let Some(event) = events.next().await {
            let (job, deleted) = match event {
                Ok(watcher::Event::Apply(job) | watcher::Event::InitApply(job)) => (job, false),
                Ok(watcher::Event::Delete(job)) => (job, true),
                _ => continue,
            };
            if deleted || job.metadata.deletion_timestamp.is_some() {
                let name = job.name_any();
                let was_busy = busy.lock().unwrap().contains(&name);
                record
                    .lock()
                    .unwrap()
                    .entry(job.uid().unwrap_or_default())
                    .or_insert((name, was_busy));
            }
        }
    });
    (deletions, task)
}

fn busy_victims(deletions: &JobDeletions) -> Vec<String> {
    deletions
        .lock()
        .unwrap()
        .values()
        .filter(|(_, busy)| *busy)
        .map(|(name, _)| name.clone())
        .collect()
}

/// Gives a pod its kwok Exec (a work dir of its own) once, and waits for kwok to know it.
pub(crate) async fn exec_for(ns: &TestNs, pod: &str, execs: &mut BTreeMap<String, PodExec>) {
    if execs.contains_key(pod) {
        return;
    }
    let exec = PodExec::create(ns, pod).await;
    exec.write("ready", "");
    wait_for("kwok to know the pod's Exec", TIMEOUT, || async {
        let output = kubectl(&["exec", "-n", &ns.name, pod, "--", "cat", "ready"]);
        output.status.success().then_some(())
    })
    .await;
    execs.insert(pod.to_string(), exec);
}

#[tokio::test]
async fn the_example_applies_unchanged_and_the_status_columns_fill() {
    ensure_crd();
    // Unchanged, into the namespace it names (a server-side dry run: nothing is created there).
    let path = crate::common::repo_root().join("examples/hsj-exec.yaml");
    let output = kubectl(&["apply", "--dry-run=server", "-f", path.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // And for real in a namespace of its own (only metadata.namespace differs). Its workers
    // run `sleep 30`, which kwok completes at once: every pass backfills what completed.
    let ns = TestNs::new("hsj-example").await;
    let mut manifest = example("hsj-exec.yaml");
    manifest["metadata"]["namespace"] = json!(ns.name);
    create_hsj(&ns, &manifest).await;
    let first = pass(&ns).await;
    assert_eq!(first.hsj_outcomes[0].plan.creates.len(), 20);
    wait_for("the first 20 Jobs to complete", TIMEOUT, || async {
        let status = hsj_status(&ns, "game-worker3").await;
        let jobs: Api<Job> = ns.api();
        let done = jobs
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|job| finished(job))
            .count();
        (done >= 20 && status.is_object()).then_some(())
    })
    .await;
    let second = pass(&ns).await;
    let outcome = &second.hsj_outcomes[0];
    assert_eq!(
        outcome.result.as_ref().unwrap().created.len(),
        20,
        "the completed workers are backfilled: {}",
        outcome.action()
    );
    let output = kubectl(&["get", "hsj", "-n", &ns.name, "--no-headers", "-o", "wide"]);
    let line = String::from_utf8_lossy(&output.stdout).to_string();
    let columns: Vec<&str> = line.split_whitespace().collect();
    eprintln!("kubectl get hsj: {line}");
    // NAME MODE IDLETARGET MIN MAX BUSY IDLE ACTIVEPODS DESIREDACTIVE CHILDJOBS ACTIVEJOBS
    // COMPLETEDJOBS FAILEDJOBS LASTSYNC AGE: every column has a value.
    assert_eq!(columns.len(), 15, "{line}");
    assert_eq!(&columns[..5], ["game-worker3", "exec", "20", "0", "100"]);
    let status = hsj_status(&ns, "game-worker3").await;
    assert_eq!(status["desiredActive"], 20, "{status}");
    assert_eq!(status["completedJobs"], 20, "{status}");
    assert_eq!(status["childJobs"], 20, "{status}");
    assert!(status["lastSyncTime"].is_string(), "{status}");
    assert_eq!(status["observedGeneration"], 1);
}

#[tokio::test]
async fn a_busy_worker_is_backfilled_and_the_surplus_goes_only_after_the_delay() {
    ensure_crd();
    let ns = TestNs::new("hsj-backfill").await;
    create_hsj(&ns, &hsj(&ns, "w", 2, 3, json!({"mode": "annotation"}))).await;
    let busy: Arc<Mutex<HashSet<String>>> = Default::default();
    let (deletions, recorder) = spawn_job_deletion_recorder(&ns, busy.clone());
    pass(&ns).await;
    let workers = running_workers(&ns, "w", 2).await;
    // A worker takes work: 1 busy + idle target 2 = 3 Jobs, exactly one new.
    busy.lock().unwrap().insert(workers[0].0.clone());
    ns.hsd_ok(&["mark-busy", &workers[0].1.name_any()]);
    let summary = ns.hsd_ok(&["reconcile"]);
    assert!(
        summary.contains("hsj/w") && summary.contains("created 1"),
        "{summary}"
    );
    let workers = running_workers(&ns, "w", 3).await;
    // It finishes its work: the surplus is held for the 3 s delay, then the oldest idle goes.
    ns.hsd_ok(&["mark-idle", &workers[0].1.name_any()]);
    busy.lock().unwrap().clear();
    let held = pass(&ns).await;
    assert!(held.hsj_outcomes[0].plan.deletions.is_empty());
    assert_eq!(
        held.hsj_outcomes[0]
            .plan
            .decision
            .as_ref()
            .unwrap()
            .held_by_delay,
        Some(3)
    );
    assert_eq!(live_jobs(&ns, "w").await.len(), 3);
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let after = pass(&ns).await;
    let written = after.hsj_outcomes[0].result.as_ref().unwrap();
    assert_eq!(
        written
            .deleted
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        [workers[0].0.as_str()],
        "the oldest idle Job goes"
    );
    wait_for("2 live Jobs", TIMEOUT, || async {
        (live_jobs(&ns, "w").await.len() == 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    recorder.abort();
    assert_eq!(deletions.lock().unwrap().len(), 1, "the recorder saw it");
    assert!(busy_victims(&deletions).is_empty());
}

/// Every pod deletion of a namespace: (pod name, its annotations in its last state).
type PodDeletions = Arc<Mutex<Vec<(String, BTreeMap<String, String>)>>>;

fn spawn_pod_deletion_recorder(ns: &TestNs) -> (PodDeletions, tokio::task::JoinHandle<()>) {
    use futures::StreamExt;
    use kube::runtime::watcher;
    let deletions: PodDeletions = Default::default();
    let pods: Api<Pod> = ns.api();
    let record = deletions.clone();
    let task = tokio::spawn(async move {
        let mut events = watcher(pods, watcher::Config::default()).boxed();
        while let Some(event) = events.next().await {
            if let Ok(watcher::Event::Delete(pod)) = event {
                record
                    .lock()
                    .unwrap()
                    .push((pod.name_any(), pod.annotations().clone()));
            }
        }
    });
    (deletions, task)
}

#[tokio::test]
async fn a_victims_worker_is_drained_before_its_job_goes_and_mark_busy_then_refuses_it() {
    ensure_crd();
    let ns = TestNs::new("hsj-drain").await;
    create_hsj(&ns, &hsj(&ns, "d", 2, 0, json!({"mode": "annotation"}))).await;
    let (pod_deletions, recorder) = spawn_pod_deletion_recorder(&ns);
    pass(&ns).await;
    let workers = running_workers(&ns, "d", 2).await;
    // One Job is surplus once the idle target drops to 1.
    let api: Api<DynamicObject> =
        Api::namespaced_with(ns.client.clone(), &ns.name, &hsj_resource());
    api.patch(
        "d",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"idleTarget": 1}})),
    )
    .await
    .unwrap();

    // A plan made from a read, then the victim's worker is marked busy before the plan is
    // carried out: the drain's compare-and-swap on the pod as read refuses, the Job stays.
    let snapshot = kubectl_hsd::observe::jobs::read_hsj_snapshot(
        &ns.client,
        &Scope::Namespace(ns.name.clone()),
    )
    .await
    .unwrap();
    let (observed, _) =
        kubectl_hsd::observe::jobs::observe_hsj(&snapshot.hsjs[0], &snapshot.index, |_| None);
    let stale = kubectl_hsd::plan::hsj::plan(&observed, jiff::Timestamp::now());
    assert_eq!(stale.deletions.len(), 1, "{:?}", stale.deletions);
    let victim = stale.deletions[0].clone();
    let victim_pod = victim.pod.clone().expect("the victim's worker as read");
    assert!(
        workers
            .iter()
            .any(|(job, pod)| *job == victim.job && pod.name_any() == victim_pod.pod),
        "{victim:?}"
    );
    ns.hsd_ok(&["mark-busy", &victim_pod.pod]);
    let written = kubectl_hsd::execute::hsj::execute(&ns.client, &observed, &stale)
        .await
        .unwrap();
    assert!(written.deleted.is_empty(), "{written:?}");
    assert_eq!(written.skipped.len(), 1, "{written:?}");
    assert!(
        written.skipped[0].1.contains("worker pod changed"),
        "{written:?}"
    );
    assert_eq!(
        live_jobs(&ns, "d").await.len(),
        2,
        "the busy worker's Job stays"
    );
    let pods: Api<Pod> = ns.api();
    let kept = pods.get(&victim_pod.pod).await.unwrap();
    assert!(
        !kept.annotations().contains_key("paia.tech/draining"),
        "a refused drain leaves no mark: {:?}",
        kept.annotations()
    );

    // Idle again: a real pass drains the victim's worker, then deletes its Job.
    ns.hsd_ok(&["mark-idle", &victim_pod.pod]);
    let report = pass(&ns).await;
    let written = report.hsj_outcomes[0].result.as_ref().unwrap();
    assert_eq!(written.deleted.len(), 1, "{written:?}");
    let gone = written.deleted[0].0.clone();
    let (_, gone_pod) = workers.iter().find(|(job, _)| *job == gone).unwrap();
    let gone_pod = gone_pod.name_any();
    wait_for("the deleted Job's pod to go", TIMEOUT, || async {
        pod_deletions
            .lock()
            .unwrap()
            .iter()
            .find(|(name, _)| *name == gone_pod)
            .cloned()
    })
    .await;
    recorder.abort();
    let deletions = pod_deletions.lock().unwrap().clone();
    assert_eq!(deletions.len(), 1, "{deletions:?}");
    assert!(
        deletions[0].1.contains_key("paia.tech/draining"),
        "the worker was marked draining before its Job went: {deletions:?}"
    );

    // mark-busy refuses a draining HSJ worker with its own exit code (as for an HSD's pods).
    let (_, remaining) = running_workers(&ns, "d", 1).await.remove(0);
    annotate(
        &ns,
        &remaining.name_any(),
        "paia.tech/draining",
        "2026-12-02T00:00:00Z",
    )
    .await;
    let output = ns.hsd(&["mark-busy", &remaining.name_any()]);
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("draining"),
        "{output:?}"
    );
    let still = pods.get(&remaining.name_any()).await.unwrap();
    assert_ne!(
        still
            .annotations()
            .get("paia.tech/busy")
            .map(String::as_str),
        Some("true")
    );
}

#[tokio::test]
async fn no_duplicates_while_pods_are_held_pending() {
    ensure_crd();
    let ns = TestNs::new("hsj-pending").await;
    let mut manifest = hsj(&ns, "pending", 3, 0, json!({"mode": "annotation"}));
    // No node has this label: the scheduler holds every pod Pending.
    manifest["spec"]["jobTemplate"]["template"]["spec"]["nodeSelector"] =
        json!({"hsd-test/no-such-node": "true"});
    create_hsj(&ns, &manifest).await;
    pass(&ns).await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let report = pass(&ns).await;
        assert!(report.hsj_outcomes[0].plan.creates.is_empty());
    }
    // A watcher, reacting to every pod and Job event, makes none either.
    let watcher = Watcher::start(&ns.name, "pending", &["--leader-elect=false"]);
    wait_for("the watcher to reconcile", TIMEOUT, || async {
        (watcher
            .metric(&format!(
                "hsd_hsj_desired_jobs{{namespace=\"{}\",name=\"pending\"}}",
                ns.name
            ))
            .await
            == Some(3.0))
        .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pods = ns.live_pods("app=pending").await;
    assert_eq!(pods.len(), 3);
    assert!(
        pods.iter()
            .all(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending")),
        "the pods stay Pending"
    );
    assert_eq!(live_jobs(&ns, "pending").await.len(), 3, "no duplicates");
    let status = hsj_status(&ns, "pending").await;
    assert_eq!(
        (
            status["startingCount"].as_i64(),
            status["activeCount"].as_i64()
        ),
        (Some(3), Some(3)),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_probes_answer_busy_idle_timeout_and_error() {
    ensure_crd();
    let ns = TestNs::new("hsj-exec").await;
    create_hsj(&ns, &hsj(&ns, "x", 4, 0, exec_probe())).await;
    pass(&ns).await;
    let workers = running_workers(&ns, "x", 4).await;
    let pod = |i: usize| workers[i].1.name_any();
    let mut execs = BTreeMap::new();
    for i in 0..3 {
        exec_for(&ns, &pod(i), &mut execs).await;
    }
    execs[&pod(0)].write("busy_state", "busy\n");
    execs[&pod(2)].write("hang", "");
    // pod 3 has no Exec: kwok says the command never ran.
    let probe = |i: usize| ns.hsd(&["probe", &pod(i)]);
    let busy = probe(0);
    assert!(busy.status.success());
    let stdout = String::from_utf8_lossy(&busy.stdout);
    assert!(
        stdout.starts_with(&format!("pod/{}: busy", pod(0))),
        "{stdout}"
    );
    assert!(stdout.contains("output   busy"), "{stdout}");
    let idle = probe(1);
    assert!(idle.status.success());
    let stdout = String::from_utf8_lossy(&idle.stdout);
    assert!(
        stdout.contains(": idle") && stdout.contains("command failed (exit code 1)"),
        "{stdout}"
    );
    let timeout = probe(2);
    assert_eq!(timeout.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&timeout.stderr).contains("no answer within 1s"));
    let error = probe(3);
    assert_eq!(error.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&error.stderr);
    assert!(
        stderr.contains("the command did not run") && stderr.contains("no exec found"),
        "{stderr}"
    );
    // A pass sees the same: 1 busy, 1 idle, 2 unknown (protected; they add nothing beyond the
    // 4 Jobs there are: 1 busy + idle target 4 = 5).
    let report = pass(&ns).await;
    let plan = &report.hsj_outcomes[0].plan;
    assert_eq!(
        (plan.counts.busy, plan.counts.idle, plan.counts.unknown),
        (1, 1, 2)
    );
    assert_eq!(plan.creates.len(), 1);
    assert!(plan.deletions.is_empty());
    let status = hsj_status(&ns, "x").await;
    let degraded = condition(&status, "ProbeDegraded").unwrap();
    assert_eq!(degraded["reason"], "ProbeFailed", "{degraded}");
    let message = degraded["message"].as_str().unwrap();
    assert!(
        message.contains(&pod(2)) && message.contains(&pod(3)),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_victim_that_turns_busy_on_the_fresh_probe_is_kept() {
    ensure_crd();
    let ns = TestNs::new("hsj-confirm").await;
    // Each pod answers idle to its first probe and busy to every later one: the pass's probe
    // says idle, the fresh probe just before the deletion says busy.
    let mut probe = exec_probe();
    probe["exec"]["command"] = json!([
        "sh",
        "-c",
        "n=$(cat count 2>/dev/null || echo 0); echo $((n+1)) > count; [ -e armed ] && [ \"$n\" -ge 1 ]"
    ]);
    create_hsj(&ns, &hsj(&ns, "c", 2, 0, probe)).await;
    pass(&ns).await;
    let workers = running_workers(&ns, "c", 2).await;
    let mut execs = BTreeMap::new();
    for (_, pod) in &workers {
        exec_for(&ns, &pod.name_any(), &mut execs).await;
    }
    // Lower the idle target: one Job is surplus. Arm the pods with a fresh count.
    let api: Api<DynamicObject> =
        Api::namespaced_with(ns.client.clone(), &ns.name, &hsj_resource());
    api.patch(
        "c",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"idleTarget": 1}})),
    )
    .await
    .unwrap();
    for exec in execs.values() {
        exec.write("count", "0\n");
        exec.write("armed", "");
    }
    let report = pass(&ns).await;
    let outcome = &report.hsj_outcomes[0];
    let written = outcome.result.as_ref().unwrap();
    assert!(written.deleted.is_empty(), "{:?}", written.deleted);
    // The fresh probe really ran: the victim's pod answered twice.
    let counts: Vec<String> = execs
        .values()
        .map(|exec| std::fs::read_to_string(exec.dir.join("count")).unwrap_or_default())
        .collect();
    assert!(
        counts.iter().any(|c| c.trim() == "2"),
        "one pod was probed again just before its deletion: {counts:?}"
    );
    assert_eq!(live_jobs(&ns, "c").await.len(), 2, "nothing was deleted");
    // The victim now answers busy: 1 busy + idle target 1 = 2, nothing to delete.
    assert_eq!(outcome.plan.counts.busy, 1);
}

/// A small seeded generator: the churn is random but repeatable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_churn_never_deletes_a_busy_job() {
    ensure_crd();
    let ns = TestNs::new("hsj-churn").await;
    let mut manifest = hsj(&ns, "churn", 2, 0, exec_probe());
    manifest["spec"]["maxReplicas"] = json!(10);
    create_hsj(&ns, &manifest).await;
    let busy: Arc<Mutex<HashSet<String>>> = Default::default();
    let (deletions, recorder) = spawn_job_deletion_recorder(&ns, busy.clone());
    let seed = std::env::var("HSD_CHURN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_4a0b_u64);
    eprintln!("churn seed {seed:#x} (HSD_CHURN_SEED to replay)");
    let mut rng = Rng(seed);
    let mut execs: BTreeMap<String, PodExec> = BTreeMap::new();
    let mut created = 0;
    pass(&ns).await;
    for round in 0..60 {
        // Every running worker gets its Exec (a pod without one is unknown: protected).
        let workers = running_workers_now(&ns, "churn").await;
        for (_, pod) in &workers {
            exec_for(&ns, &pod.name_any(), &mut execs).await;
        }
        if !workers.is_empty() {
            let (job, pod) = &workers[rng.below(workers.len())];
            let exec = &execs[&pod.name_any()];
            if rng.below(10) < 5 {
                busy.lock().unwrap().insert(job.clone());
                exec.write("busy_state", "busy\n");
            } else {
                // Release one busy worker, if any.
                let released = workers
                    .iter()
                    .find(|(job, _)| busy.lock().unwrap().contains(job));
                if let Some((job, pod)) = released {
                    let _ = std::fs::remove_file(execs[&pod.name_any()].dir.join("busy_state"));
                    busy.lock().unwrap().remove(job);
                }
            }
        }
        let report = pass(&ns).await;
        let outcome = &report.hsj_outcomes[0];
        created += outcome.result.as_ref().unwrap().created.len();
        let live = live_jobs(&ns, "churn").await.len();
        assert!(live <= 10, "round {round}: {live} Jobs run, max 10");
        settle_jobs(&ns, "churn").await;
    }
    // Release everything: back down to the idle target.
    for (job, pod) in running_workers_now(&ns, "churn").await {
        exec_for(&ns, &pod.name_any(), &mut execs).await;
        let _ = std::fs::remove_file(execs[&pod.name_any()].dir.join("busy_state"));
        busy.lock().unwrap().remove(&job);
    }
    pass(&ns).await;
    wait_for("the idle target of 2 Jobs", TIMEOUT, || async {
        (live_jobs(&ns, "churn").await.len() == 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    recorder.abort();
    let deleted = deletions.lock().unwrap().len();
    eprintln!("churn: {created} Jobs created, {deleted} deleted over 60 rounds");
    assert!(deleted >= 5, "the recorder saw deletions: {deleted}");
    assert!(created >= 5, "{created}");
    assert_eq!(busy_victims(&deletions), Vec::<String>::new());
}

/// The HSJ's running workers as they are now (no waiting): (Job name, pod).
async fn running_workers_now(ns: &TestNs, hsj: &str) -> Vec<(String, Pod)> {
    let jobs = live_jobs(ns, hsj).await;
    let pods = ns.live_pods(&format!("app={hsj}")).await;
    jobs.iter()
        .filter_map(|job| {
            let uid = job.uid()?;
            let pod = pods.iter().find(|pod| {
                pod.owner_references().iter().any(|o| o.uid == uid)
                    && pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            })?;
            Some((job.name_any(), pod.clone()))
        })
        .collect()
}

/// Waits until every live Job of the HSJ has a running pod.
async fn settle_jobs(ns: &TestNs, hsj: &str) {
    wait_for("every Job's pod to run", TIMEOUT, || async {
        let jobs = live_jobs(ns, hsj).await.len();
        (running_workers_now(ns, hsj).await.len() == jobs).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_template_change_recycles_only_idle_jobs_while_busy_ones_run() {
    ensure_crd();
    let ns = TestNs::new("hsj-template").await;
    create_hsj(&ns, &hsj(&ns, "t", 2, 30, json!({"mode": "annotation"}))).await;
    let busy: Arc<Mutex<HashSet<String>>> = Default::default();
    let (deletions, recorder) = spawn_job_deletion_recorder(&ns, busy.clone());
    pass(&ns).await;
    let workers = running_workers(&ns, "t", 2).await;
    busy.lock().unwrap().insert(workers[0].0.clone());
    annotate(&ns, &workers[0].1.name_any(), "paia.tech/busy", "true").await;
    pass(&ns).await;
    running_workers(&ns, "t", 3).await;
    let old_hash = live_jobs(&ns, "t").await[0].annotations()["paia.tech/template-hash"].clone();

    // A new image: the 2 idle Jobs are recycled at once (no delay for a template change), the
    // busy one keeps running its work, and 2 Jobs of the new template keep the idle target.
    let api: Api<DynamicObject> =
        Api::namespaced_with(ns.client.clone(), &ns.name, &hsj_resource());
    api.patch(
        "t",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"spec": {"jobTemplate": {"template": {"spec": {"containers": [
                {"name": "worker", "image": "registry.invalid/worker:2"}
            ]}}}}}),
        ),
    )
    .await
    .unwrap();
    let report = pass(&ns).await;
    let written = report.hsj_outcomes[0].result.as_ref().unwrap();
    assert_eq!(written.deleted.len(), 2, "{written:?}");
    assert_eq!(written.created.len(), 2, "{written:?}");
    let workers = running_workers(&ns, "t", 3).await;
    let hashes: BTreeSet<String> = live_jobs(&ns, "t")
        .await
        .iter()
        .map(|job| job.annotations()["paia.tech/template-hash"].clone())
        .collect();
    assert_eq!(hashes.len(), 2, "old (busy) and new");
    assert!(
        workers
            .iter()
            .any(|(job, _)| busy.lock().unwrap().contains(job))
    );
    let images: BTreeSet<String> = workers
        .iter()
        .map(|(_, pod)| {
            pod.spec.as_ref().unwrap().containers[0]
                .image
                .clone()
                .unwrap()
        })
        .collect();
    assert_eq!(images.len(), 2, "{images:?}");

    // The busy worker finishes: now it is recycled too, and a new one takes its place (the
    // delay still holds 3 Jobs: 1 busy + 2 were wanted a moment ago).
    let old = workers
        .iter()
        .find(|(job, _)| busy.lock().unwrap().contains(job))
        .cloned()
        .unwrap();
    annotate(&ns, &old.1.name_any(), "paia.tech/busy", "false").await;
    busy.lock().unwrap().clear();
    pass(&ns).await;
    pass(&ns).await;
    wait_for("3 Jobs of the new template", TIMEOUT, || async {
        let jobs = live_jobs(&ns, "t").await;
        (jobs.len() == 3
            && jobs
                .iter()
                .all(|job| job.annotations()["paia.tech/template-hash"] != old_hash))
        .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    recorder.abort();
    assert_eq!(
        deletions.lock().unwrap().len(),
        3,
        "2 recycled idle, then the released one"
    );
    assert!(busy_victims(&deletions).is_empty());
}

#[tokio::test]
async fn job_pods_completing_on_their_own_are_backfilled_and_left_to_their_ttl() {
    ensure_crd();
    let ns = TestNs::new("hsj-complete").await;
    create_hsj(&ns, &hsj(&ns, "done", 3, 0, json!({"mode": "annotation"}))).await;
    let (deletions, recorder) = spawn_job_deletion_recorder(&ns, Default::default());
    pass(&ns).await;
    let workers = running_workers(&ns, "done", 3).await;
    let pods: Api<Pod> = ns.api();
    for ((_, pod), how) in workers.iter().zip(["succeed", "fail"]) {
        pods.patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"hsd-test/complete": how}}})),
        )
        .await
        .unwrap();
    }
    wait_for("one Job complete, one failed", TIMEOUT, || async {
        let status = {
            let jobs: Api<Job> = ns.api();
            jobs.list(&ListParams::default()).await.unwrap().items
        };
        let done = status.iter().filter(|job| finished(job)).count();
        (done == 2).then_some(())
    })
    .await;
    let report = pass(&ns).await;
    assert_eq!(
        report.hsj_outcomes[0]
            .result
            .as_ref()
            .unwrap()
            .created
            .len(),
        2,
        "the two finished workers are replaced"
    );
    running_workers(&ns, "done", 3).await;
    pass(&ns).await;
    let status = hsj_status(&ns, "done").await;
    assert_eq!(
        (
            status["completedJobs"].as_i64(),
            status["failedJobs"].as_i64(),
            status["childJobs"].as_i64(),
            status["activeCount"].as_i64()
        ),
        (Some(1), Some(1), Some(5), Some(3)),
        "{status}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    recorder.abort();
    assert!(
        deletions.lock().unwrap().is_empty(),
        "finished Jobs are left to ttlSecondsAfterFinished"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_backfills_at_once_and_retires_workers_by_exec_probe() {
    ensure_crd();
    let ns = TestNs::new("hsj-watch").await;
    create_hsj(&ns, &hsj(&ns, "live", 2, 2, exec_probe())).await;
    let busy: Arc<Mutex<HashSet<String>>> = Default::default();
    let (deletions, recorder) = spawn_job_deletion_recorder(&ns, busy.clone());
    let _watcher = Watcher::start(&ns.name, "hsj", &["--leader-elect=false"]);
    let workers = running_workers(&ns, "live", 2).await;
    let mut execs = BTreeMap::new();
    for (_, pod) in &workers {
        exec_for(&ns, &pod.name_any(), &mut execs).await;
    }
    wait_for("2 idle workers by exec probe", TIMEOUT, || async {
        (hsj_status(&ns, "live").await["idleCount"] == 2).then_some(())
    })
    .await;
    // A worker turns busy; nobody runs any command: the watcher's probe sees it, and a third
    // Job is made.
    busy.lock().unwrap().insert(workers[0].0.clone());
    execs[&workers[0].1.name_any()].write("busy_state", "busy\n");
    let started = std::time::Instant::now();
    wait_for("a third Job", TIMEOUT, || async {
        (live_jobs(&ns, "live").await.len() == 3).then_some(())
    })
    .await;
    eprintln!("busy flip to a new Job: {:?}", started.elapsed());
    let workers = running_workers(&ns, "live", 3).await;
    for (_, pod) in &workers {
        exec_for(&ns, &pod.name_any(), &mut execs).await;
    }
    // It finishes: after the 2 s delay the surplus goes, the oldest idle first.
    let _ = std::fs::remove_file(execs[&workers[0].1.name_any()].dir.join("busy_state"));
    busy.lock().unwrap().clear();
    wait_for("back to 2 Jobs", TIMEOUT, || async {
        (live_jobs(&ns, "live").await.len() == 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    recorder.abort();
    assert_eq!(deletions.lock().unwrap().len(), 1);
    assert!(busy_victims(&deletions).is_empty());
}

#[tokio::test]
async fn the_cli_creates_shows_and_explains_an_hsj() {
    ensure_crd();
    let ns = TestNs::new("hsj-cli").await;
    let created = ns.hsd_ok(&[
        "create",
        "hsj",
        "runner",
        "--image",
        "registry.invalid/runner:1",
        "--idle-target",
        "2",
        "--max",
        "5",
        "--probe",
        "exec",
        "--exec-command",
        "sh -c 'test -e /tmp/busy'",
    ]);
    assert_eq!(
        created.trim(),
        "hotstandbyjob.apps.paia.tech/runner created"
    );
    let api: Api<DynamicObject> =
        Api::namespaced_with(ns.client.clone(), &ns.name, &hsj_resource());
    let object = api.get("runner").await.unwrap();
    assert_eq!(
        object.data["spec"]["busyProbe"]["exec"]["command"],
        json!(["sh", "-c", "test -e /tmp/busy"])
    );
    let dry = ns.hsd_ok(&["reconcile", "--dry-run"]);
    assert!(
        dry.contains("hsj/runner") && dry.contains("would create 2"),
        "{dry}"
    );
    ns.hsd_ok(&["reconcile"]);
    let listed = ns.hsd_ok(&["get", "hsj"]);
    assert!(
        listed.contains("runner") && listed.contains("exec"),
        "{listed}"
    );
    let one = ns.hsd_ok(&["get", "hsj/runner", "-o", "name"]);
    assert_eq!(one.trim(), "hotstandbyjob.apps.paia.tech/runner");
    let described = ns.hsd_ok(&["describe", "hsj/runner"]);
    assert!(
        described.contains("Kind:         HotStandbyJob"),
        "{described}"
    );
    assert!(
        described.contains("runner-0") && described.contains("runner-1"),
        "{described}"
    );
    assert!(described.contains("JobsCreated"), "{described}");
    let explained = ns.hsd_ok(&["explain", "hsj/runner", "-o", "json"]);
    let decision: Value = serde_json::from_str(&explained).unwrap();
    assert_eq!(decision["idleTarget"], 2);
    assert_eq!(decision["maxReplicas"], 5);
    // HSDs stay the default kind, and their listing does not show HSJs.
    let output = ns.hsd(&["get"]);
    assert!(String::from_utf8_lossy(&output.stdout).is_empty());
    // The shorthand applies; a mixed form is refused with the full form in the message.
    let mut short = example("hsj-shorthand.yaml");
    short["metadata"]["namespace"] = json!(ns.name);
    create_hsj(&ns, &short).await;
    let mut mixed = short.clone();
    mixed["metadata"]["name"] = json!("mixed");
    mixed["spec"]["jobTemplate"]["template"] = json!({"spec": {"containers": []}});
    let object: DynamicObject = serde_json::from_value(mixed).unwrap();
    let error = api
        .create(&PostParams::default(), &object)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("The full form"), "{error}");
    let mut redis = short.clone();
    redis["metadata"]["name"] = json!("redis");
    redis["spec"]["busyProbe"]["mode"] = json!("redis");
    let object: DynamicObject = serde_json::from_value(redis).unwrap();
    let error = api
        .create(&PostParams::default(), &object)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("Unsupported value: \"redis\"") && error.contains("\"exec\""),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hotstandbydeployment_in_exec_mode_scales_by_its_pods_answers() {
    ensure_crd();
    let ns = TestNs::new("hsd-exec").await;
    let mut manifest = example("hsd-annotation.yaml");
    manifest["metadata"]["namespace"] = json!(ns.name);
    manifest["spec"]["busyProbe"] = exec_probe();
    crate::core::create_hsd(&ns, &manifest).await.unwrap();
    ns.hsd_ok(&["reconcile"]);
    let pods = crate::core::ready_pods(&ns, "app=game-ws", 3).await;
    // Before the pods have an Exec, the command never runs: unknown, protected, no runaway.
    let summary = ns.hsd_ok(&["reconcile"]);
    assert!(
        summary.contains("unchanged") || summary.contains("status"),
        "{summary}"
    );
    let mut execs = BTreeMap::new();
    for pod in &pods {
        exec_for(&ns, &pod.name_any(), &mut execs).await;
    }
    execs[&pods[0].name_any()].write("busy_state", "busy\n");
    let summary = ns.hsd_ok(&["reconcile"]);
    assert!(
        summary.contains("scaled 3->4"),
        "1 busy + idle target 3: {summary}"
    );
    let status = crate::core::hsd_status(&ns, "game-ws").await;
    assert_eq!(
        (status["busyCount"].as_i64(), status["idleCount"].as_i64()),
        (Some(1), Some(2)),
        "{status}"
    );
    let explained = ns.hsd_ok(&["explain", "game-ws"]);
    assert!(explained.contains("1 by exec probe"), "{explained}");
}
