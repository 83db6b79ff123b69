//! Busy pods survive every watcher start, SIGTERM handover and kill -9 failover, in a cluster
//! with thousands of other pods (so that a watcher's caches take a while to sync), in annotation
//! and in HTTP mode; and a leader frozen past its lease writes nothing once it resumes.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::common::http_server::{serve_switchable, test_port};
use crate::common::{
    self, TestNs, Watcher, busy_victims, ensure_crd, is_ready, spawn_deletion_recorder,
    spawn_deletion_recorder_with, wait_for,
};
use crate::{TIMEOUT, mark, wait_replicas};

/// Other pods in the cluster: a watcher with `-A` must list them all before it may decide.
const OTHER_PODS: usize = 2000;
const WORKLOAD: &str = "game-ws-workload";
const IDLE_TARGET: i32 = 2;

/// Creates the other pods once per test process: unscheduled and never scheduled (a scheduler
/// name no scheduler has), so they cost the control plane nothing but their size in every list.
async fn ensure_other_pods() {
    static DONE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    DONE.get_or_init(|| async {
        let client = common::client().await;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let name = "hsd-other-pods";
        if namespaces.get_opt(name).await.unwrap().is_none() {
            namespaces
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
                )
                .await
                .unwrap();
        }
        common::ensure_default_service_account(&client, name).await;
        let pods: Api<Pod> = Api::namespaced(client, name);
        let existing = pods.list(&ListParams::default().limit(1)).await.unwrap();
        let have = existing.metadata.remaining_item_count.unwrap_or(0) as usize + existing.items.len();
        futures::stream::iter(have..OTHER_PODS)
            .map(|i| {
                let pods = pods.clone();
                async move {
                    let pod: Pod = serde_json::from_value(json!({
                        "metadata": {"name": format!("other-{i}"), "labels": {"app": "other", "team": format!("t{}", i % 50)}},
                        "spec": {
                            "schedulerName": "hsd-test-nobody",
                            "containers": [{"name": "c", "image": "registry.invalid/other:1"}],
                        },
                    }))
                    .unwrap();
                    pods.create(&PostParams::default(), &pod).await.unwrap();
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
    })
    .await;
}

/// Records, for the whole test, any moment the child Deployment asked for fewer replicas than
/// `floor` (busy + idleTarget, kept by the test).
struct FloorMonitor {
    floor: Arc<AtomicI32>,
    violations: Arc<Mutex<Vec<String>>>,
    seen: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl FloorMonitor {
    fn start(ns: &TestNs, floor: i32) -> Self {
        let floor = Arc::new(AtomicI32::new(floor));
        let violations: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = Arc::new(AtomicBool::new(false));
        let deployments: Api<Deployment> = ns.api();
        let task = {
            let (floor, violations, seen) = (floor.clone(), violations.clone(), seen.clone());
            tokio::spawn(async move {
                let config =
                    watcher::Config::default().fields(&format!("metadata.name={WORKLOAD}"));
                let mut events = watcher(deployments, config).applied_objects().boxed();
                while let Ok(Some(deployment)) = events.try_next().await {
                    let replicas = deployment.spec.and_then(|s| s.replicas).unwrap_or(0);
                    seen.store(true, Ordering::SeqCst);
                    let floor = floor.load(Ordering::SeqCst);
                    if replicas < floor {
                        violations
                            .lock()
                            .unwrap()
                            .push(format!("replicas {replicas} < busy + idleTarget {floor}"));
                    }
                }
            })
        };
        Self {
            floor,
            violations,
            seen,
            task,
        }
    }

    fn set(&self, floor: i32) {
        self.floor.store(floor, Ordering::SeqCst);
    }

    fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }

    fn finish(self) -> Vec<String> {
        assert!(
            self.seen.load(Ordering::SeqCst),
            "the monitor saw the Deployment"
        );
        self.task.abort();
        self.violations.lock().unwrap().clone()
    }
}

/// How the test makes pods busy: the annotation, or HTTP answers from servers on the pod IPs.
enum Busy {
    Annotation,
    Http(HttpPods),
}

/// A switchable test server on every pod of the HSD (new pods get one as they appear), answering
/// 503 (idle) until switched to 200 (busy).
struct HttpPods {
    port: u16,
    statuses: Arc<Mutex<HashMap<String, Arc<AtomicU16>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpPods {
    fn start(ns: &TestNs, port: u16) -> Self {
        let statuses: Arc<Mutex<HashMap<String, Arc<AtomicU16>>>> = Arc::default();
        let pods: Api<Pod> = ns.api();
        let task = {
            let statuses = statuses.clone();
            tokio::spawn(async move {
                let mut servers = Vec::new();
                let mut served = HashSet::new();
                loop {
                    for pod in pods
                        .list(&ListParams::default().labels("app=game-ws"))
                        .await
                        .into_iter()
                        .flat_map(|l| l.items)
                    {
                        let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
                            continue;
                        };
                        if !served.insert(pod.name_any()) {
                            continue;
                        }
                        let status = Arc::new(AtomicU16::new(503));
                        statuses
                            .lock()
                            .unwrap()
                            .insert(pod.name_any(), status.clone());
                        let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
                        servers.push(serve_switchable(addr, status).await);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        Self {
            port,
            statuses,
            task,
        }
    }

    fn set_busy(&self, pod: &str, busy: bool) {
        let statuses = self.statuses.lock().unwrap();
        let status = statuses
            .get(pod)
            .unwrap_or_else(|| panic!("no server for {pod} yet"));
        status.store(if busy { 200 } else { 503 }, Ordering::SeqCst);
    }

    fn busy_pods(&self) -> HashSet<String> {
        self.statuses
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| s.load(Ordering::SeqCst) == 200)
            .map(|(name, _)| name.clone())
            .collect()
    }
}

impl Busy {
    async fn set(&self, ns: &TestNs, pod: &str, busy: bool) {
        match self {
            Busy::Annotation => mark(ns, pod, busy).await,
            Busy::Http(http) => http.set_busy(pod, busy),
        }
    }
}

/// A ready pod that is not busy (and, in HTTP mode, already has its server).
async fn idle_pod(ns: &TestNs, busy: &Busy, taken: &HashSet<String>) -> String {
    wait_for("a ready idle pod", TIMEOUT, || async {
        let pods = ns.live_pods("app=game-ws").await;
        pods.iter()
            .filter(|p| is_ready(p) && !taken.contains(&p.name_any()))
            .map(|p| p.name_any())
            .find(|name| match busy {
                Busy::Annotation => true,
                Busy::Http(http) => http.statuses.lock().unwrap().contains_key(name),
            })
    })
    .await
}

async fn lease_holder(ns: &TestNs) -> Option<String> {
    let leases: Api<Lease> = ns.api();
    leases
        .get_opt("kubectl-hsd")
        .await
        .ok()??
        .spec?
        .holder_identity
}

async fn wait_leader(ns: &TestNs, identity: &str) {
    wait_for(
        &format!("{identity} to hold the lease"),
        TIMEOUT,
        || async {
            lease_holder(ns)
                .await
                .filter(|holder| holder.starts_with(identity))
                .map(|_| ())
        },
    )
    .await;
}

/// Turns one more pod busy and waits for the watcher to add a replica: proof that the watcher
/// now in charge decides (its silence before that proves nothing).
async fn one_more_busy(
    ns: &TestNs,
    busy: &Busy,
    marked: &mut HashSet<String>,
    monitor: &FloorMonitor,
    deletions: &common::Deletions,
    who: &str,
) {
    // Whatever the new watcher did while it started must not have hurt.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        monitor.violations(),
        Vec::<String>::new(),
        "before {who} was asked to react"
    );
    assert_eq!(
        busy_victims(deletions),
        Vec::<String>::new(),
        "before {who} was asked to react"
    );
    let pod = idle_pod(ns, busy, marked).await;
    busy.set(ns, &pod, true).await;
    marked.insert(pod);
    let want = marked.len() as i32 + IDLE_TARGET;
    wait_replicas(
        ns,
        WORKLOAD,
        want,
        &format!("{who} to react: {want} replicas"),
    )
    .await;
    monitor.set(want);
}

async fn busy_pods_survive_starts_handovers_and_failovers(mode: &str) {
    let _serial = crate::serial().await;
    ensure_crd();
    ensure_other_pods().await;
    let ns = TestNs::new(&format!("failover-{mode}")).await;
    let mut manifest = common::example("hsd-annotation.yaml");
    manifest["metadata"]["namespace"] = json!(ns.name);
    manifest["spec"]["idleTarget"] = json!(IDLE_TARGET);
    let busy = if mode == "http" {
        let port = test_port();
        manifest["spec"]["busyProbe"] =
            json!({"mode": "http", "http": {"port": port, "periodSeconds": 1}});
        Busy::Http(HttpPods::start(&ns, port))
    } else {
        Busy::Annotation
    };
    common::create_hsd(&ns, &manifest).await.unwrap();
    // As users run it: all namespaces, leader-elected (the Lease in the test's namespace).
    let args = ["-A", "--lease-namespace", ns.name.as_str()];
    let first = Watcher::spawn(&ns.name, "first", &args);
    wait_replicas(
        &ns,
        WORKLOAD,
        IDLE_TARGET,
        "the first watcher to create the child",
    )
    .await;

    // 4 busy pods: 6 replicas.
    let mut marked = HashSet::new();
    for _ in 0..4 {
        let pod = idle_pod(&ns, &busy, &marked).await;
        busy.set(&ns, &pod, true).await;
        marked.insert(pod);
        let want = marked.len() as i32 + IDLE_TARGET;
        wait_replicas(&ns, WORKLOAD, want, "the first watcher to add replicas").await;
    }
    wait_for("6 ready pods", TIMEOUT, || async {
        let pods = ns.live_pods("app=game-ws").await;
        (pods.len() == 6 && pods.iter().all(is_ready)).then_some(())
    })
    .await;
    if let Busy::Http(http) = &busy {
        wait_for("servers on every pod", TIMEOUT, || async {
            (http.statuses.lock().unwrap().len() >= 6).then_some(())
        })
        .await;
    }
    let monitor = FloorMonitor::start(&ns, 4 + IDLE_TARGET);
    let (deletions, recorder) = match &busy {
        Busy::Annotation => spawn_deletion_recorder(&ns),
        Busy::Http(http) => {
            let statuses = http.statuses.clone();
            spawn_deletion_recorder_with(
                &ns,
                Arc::new(move |pod: &Pod| {
                    statuses
                        .lock()
                        .unwrap()
                        .get(&pod.name_any())
                        .is_some_and(|s| s.load(Ordering::SeqCst) == 200)
                }),
            )
        }
    };

    // A watcher start with cold caches (the first one dies without releasing the lease).
    let mut first = first;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let second = Watcher::spawn(&ns.name, "second", &args);
    wait_leader(&ns, "second").await;
    one_more_busy(
        &ns,
        &busy,
        &mut marked,
        &monitor,
        &deletions,
        "the restarted watcher",
    )
    .await;

    // SIGTERM handover to a standby.
    let third = Watcher::spawn(&ns.name, "third", &args);
    let mut second = second;
    second.signal("TERM");
    let exited = wait_for("the leader to exit on SIGTERM", TIMEOUT, || {
        let status = second.child.try_wait().unwrap();
        async move { status }
    })
    .await;
    assert!(exited.success(), "{}", second.log());
    wait_leader(&ns, "third").await;
    one_more_busy(
        &ns,
        &busy,
        &mut marked,
        &monitor,
        &deletions,
        "the watcher that took over",
    )
    .await;

    // kill -9 of the leader: a standby takes over after the lease.
    let fourth = Watcher::spawn(&ns.name, "fourth", &args);
    let mut third = third;
    third.child.kill().unwrap();
    third.child.wait().unwrap();
    wait_leader(&ns, "fourth").await;
    one_more_busy(
        &ns,
        &busy,
        &mut marked,
        &monitor,
        &deletions,
        "the watcher after the failover",
    )
    .await;

    // One pod turns idle: exactly one replica goes, and it is an idle pod.
    let released = marked.iter().next().cloned().unwrap();
    monitor.set(marked.len() as i32 - 1 + IDLE_TARGET);
    busy.set(&ns, &released, false).await;
    marked.remove(&released);
    let want = marked.len() as i32 + IDLE_TARGET;
    wait_replicas(
        &ns,
        WORKLOAD,
        want,
        "the scale-down after a pod turned idle",
    )
    .await;
    common::wait_for("the ReplicaSet to delete one pod", TIMEOUT, || async {
        (!deletions.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    recorder.abort();
    let violations = monitor.finish();
    assert_eq!(violations, Vec::<String>::new(), "{}", fourth.log());
    assert_eq!(
        busy_victims(&deletions),
        Vec::<String>::new(),
        "{}",
        fourth.log()
    );
    if let Busy::Http(http) = &busy {
        assert_eq!(http.busy_pods().len(), marked.len());
        http.task.abort();
        let _ = http.port;
    }
    drop(fourth);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_pods_survive_watcher_starts_handovers_and_failovers_in_annotation_mode() {
    busy_pods_survive_starts_handovers_and_failovers("annotation").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_pods_survive_watcher_starts_handovers_and_failovers_in_http_mode() {
    busy_pods_survive_starts_handovers_and_failovers("http").await;
}

fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_frozen_past_its_lease_writes_nothing_once_it_resumes() {
    let _serial = crate::serial().await;
    ensure_crd();
    let ns = TestNs::new("frozen-leader").await;
    let mut manifest = common::example("hsd-annotation.yaml");
    manifest["metadata"]["namespace"] = json!(ns.name);
    manifest["spec"]["idleTarget"] = json!(IDLE_TARGET);
    common::create_hsd(&ns, &manifest).await.unwrap();
    // The old leader holds each Deployment write 1.5 s after planning, so that it can be frozen
    // with a write in flight: without the fence, that write goes out when it resumes.
    let old = Watcher::start_with_env(&ns.name, "old", &[], &[("HSD_TEST_WRITE_DELAY_MS", "1500")]);
    wait_leader(&ns, "old").await;
    wait_replicas(&ns, WORKLOAD, IDLE_TARGET, "the leader to create the child").await;
    let standby = Watcher::start(&ns.name, "standby", &[]);
    let pods = wait_for("2 ready pods", TIMEOUT, || async {
        let pods = ns.live_pods("app=game-ws").await;
        (pods.len() == 2 && pods.iter().all(is_ready))
            .then(|| pods.iter().map(|p| p.name_any()).collect::<Vec<_>>())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let writes_before = old
        .metric("hsd_api_writes_total{result=\"sent\"}")
        .await
        .unwrap_or(0.0);
    assert!(writes_before >= 1.0, "the old leader wrote while it led");

    // A pod turns busy; the leader plans a scale-up and is frozen before it writes, past its
    // lease (3 s): the standby takes over and acts.
    mark(&ns, &pods[0], true).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    signal(old.child.id(), "STOP");
    wait_leader(&ns, "standby").await;
    wait_replicas(
        &ns,
        WORKLOAD,
        1 + IDLE_TARGET,
        "the new leader to add a replica",
    )
    .await;
    mark(&ns, &pods[1], true).await;
    wait_replicas(
        &ns,
        WORKLOAD,
        2 + IDLE_TARGET,
        "the new leader to add replicas",
    )
    .await;

    // Resume it: its caches and its running reconciles are stale; it must write nothing.
    signal(old.child.id(), "CONT");
    wait_for("the resumed leader to stand down", TIMEOUT, || {
        let log = old.log();
        async move {
            (log.contains("the lease was not renewed within the renew deadline: stopping")
                || log.contains("lost the lease: stopping"))
            .then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writes_after = old
        .metric("hsd_api_writes_total{result=\"sent\"}")
        .await
        .unwrap_or(0.0);
    assert_eq!(
        writes_after,
        writes_before,
        "the resumed leader wrote:\n{}",
        old.log()
    );
    assert_eq!(old.metric("hsd_leader").await, Some(0.0));
    assert_eq!(
        common::replicas(&ns, WORKLOAD).await,
        Some(2 + IDLE_TARGET),
        "nothing set the replicas back"
    );
    let holder = lease_holder(&ns).await.unwrap_or_default();
    assert!(holder.starts_with("standby"), "holder {holder}");
    eprintln!(
        "writes refused by the fence after resuming: {}",
        old.metric("hsd_api_writes_total{result=\"refused\"}")
            .await
            .unwrap_or(0.0)
    );
    drop(standby);
}
