//! Faults survived, against the real local control plane: the API server and etcd stopped and
//! restarted under a watcher and under one-shot passes, a reconciler killed mid-pass, another
//! writer changing the Deployment, an HSD deleted during a pass, proxy connections held across an
//! API server restart; and the active-standby invariant over 200 failovers. Each asserts the final
//! state, that no busy pod was deleted, and that nothing crashed.
//!
//! A test binary of its own: these tests stop the API server, so they run one at a time, after
//! (never beside) the other integration tests.

mod active_standby;
#[path = "../e2e/common/mod.rs"]
mod common;
mod failover;
mod proxy;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use kubectl_hsd::observe::{self, Scope, hsd_resource};
use serde_json::json;

use common::{
    TestNs, Watcher, busy_victims, ensure_crd, kubeconfig, replicas, spawn_deletion_recorder,
    wait_for,
};

/// One fault at a time: they stop shared components.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Takes the fault lock, then waits until the controllers work again: after a test that
/// restarted the API server or etcd, the controller-manager's informers can take a while to
/// relist (CI once saw a ReplicaSet scaled to 3 make no pod for 60 s in the next test). The
/// proof is a Deployment of this lock's own that makes its pod.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    let guard = SERIAL.lock().await;
    let ns = TestNs::new("fault-canary").await;
    let deployments: Api<Deployment> = ns.api();
    deployments
        .create(
            &Default::default(),
            &serde_json::from_value(json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "canary"},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": "canary"}},
                    "template": {
                        "metadata": {"labels": {"app": "canary"}},
                        "spec": {"containers": [{"name": "c", "image": "canary:1"}]},
                    },
                },
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    ns.wait_for(
        "the controllers to make a canary pod",
        Duration::from_secs(180),
        || async { (!ns.live_pods("app=canary").await.is_empty()).then_some(()) },
    )
    .await;
    guard
}

const TIMEOUT: Duration = Duration::from_secs(60);

fn cluster(args: &[&str]) {
    let dir: PathBuf = kubeconfig()
        .parent()
        .expect("the kubeconfig is in the cluster dir")
        .into();
    let output = Command::new(common::repo_root().join("hack/cluster.sh"))
        .args(args)
        .env("HSD_CLUSTER_DIR", &dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "cluster.sh {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// An HSD like the annotation example, with its own name and app label.
async fn create_hsd(ns: &TestNs, name: &str, app: &str) {
    let mut manifest = common::example("hsd-annotation.yaml");
    manifest["metadata"] = json!({"name": name, "namespace": ns.name});
    manifest["spec"]["selector"]["matchLabels"] = json!({"app": app});
    manifest["spec"]["podTemplate"]["metadata"]["labels"] = json!({"app": app});
    common::create_hsd(ns, &manifest).await.unwrap();
}

async fn wait_replicas(ns: &TestNs, name: &str, want: i32, what: &str) {
    ns.wait_for(what, TIMEOUT, || async {
        (replicas(ns, name).await == Some(want)).then_some(())
    })
    .await;
}

async fn mark(ns: &TestNs, pod: &str, busy: bool) {
    let pods: Api<Pod> = ns.api();
    let value = if busy { "true" } else { "false" };
    pods.patch(
        pod,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"paia.tech/busy": value}}})),
    )
    .await
    .unwrap();
}

async fn ready_pod_names(ns: &TestNs, selector: &str, n: usize) -> Vec<String> {
    ns.wait_for(&format!("{n} ready pods"), TIMEOUT, || async {
        let pods = ns.live_pods(selector).await;
        (pods.len() == n && pods.iter().all(common::is_ready))
            .then(|| pods.iter().map(|p| p.name_any()).collect())
    })
    .await
}

fn assert_alive(watcher: &mut Watcher) {
    assert!(
        watcher.child.try_wait().unwrap().is_none(),
        "the watcher exited:\n{}",
        watcher.log()
    );
    assert!(!watcher.log().contains("panicked"), "{}", watcher.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_survives_an_api_server_restart_and_an_etcd_restart() {
    let _serial = serial().await;
    ensure_crd();
    let ns = TestNs::new("fault-watch").await;
    create_hsd(&ns, "game-ws", "game-ws").await;
    let (deletions, recorder) = spawn_deletion_recorder(&ns);
    let mut watcher = Watcher::start(&ns.name, "survivor", &[]);
    wait_replicas(
        &ns,
        "game-ws-workload",
        3,
        "the watcher to create the Deployment",
    )
    .await;
    let pods = ready_pod_names(&ns, "app=game-ws", 3).await;

    cluster(&["stop", "apiserver"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster(&["start", "apiserver"]);
    mark(&ns, &pods[0], true).await;
    wait_replicas(
        &ns,
        "game-ws-workload",
        4,
        "a reaction after the API server came back",
    )
    .await;
    assert_alive(&mut watcher);

    cluster(&["restart", "etcd"]);
    wait_for("the API server to answer again", TIMEOUT, || async {
        ns.client.apiserver_version().await.ok().map(|_| ())
    })
    .await;
    mark(&ns, &pods[1], true).await;
    wait_replicas(
        &ns,
        "game-ws-workload",
        5,
        "a reaction after etcd came back",
    )
    .await;
    mark(&ns, &pods[0], false).await;
    wait_replicas(
        &ns,
        "game-ws-workload",
        4,
        "a scale-down after the restarts",
    )
    .await;
    assert_alive(&mut watcher);
    tokio::time::sleep(Duration::from_secs(1)).await;
    recorder.abort();
    assert_eq!(busy_victims(&deletions), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_passes_fail_clearly_while_the_api_server_restarts_then_converge() {
    let _serial = serial().await;
    ensure_crd();
    let ns = TestNs::new("fault-pass").await;
    for i in 0..5 {
        create_hsd(&ns, &format!("hsd-{i}"), &format!("app-{i}")).await;
    }
    ns.hsd_ok(&["reconcile"]);
    // Passes run back to back while the API server restarts beneath them.
    let restart = std::thread::spawn(|| cluster(&["restart", "apiserver"]));
    let mut failures = 0;
    while !restart.is_finished() {
        let output = ns.hsd(&["reconcile"]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
        match output.status.code() {
            Some(0) => {}
            Some(1) => {
                failures += 1;
                assert!(
                    stderr.lines().any(|l| l.starts_with("error: ")),
                    "a clear error line: {stderr}"
                );
            }
            other => panic!("exit {other:?}: {stderr}"),
        }
    }
    restart.join().unwrap();
    eprintln!("{failures} passes failed cleanly during the restart");
    assert!(failures > 0, "the restart must overlap at least one pass");
    wait_for("a pass to succeed again", TIMEOUT, || async {
        ns.hsd(&["reconcile"]).status.success().then_some(())
    })
    .await;
    for i in 0..5 {
        assert_eq!(replicas(&ns, &format!("hsd-{i}-workload")).await, Some(3));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconciler_killed_mid_pass_leaves_nothing_duplicated() {
    let _serial = serial().await;
    ensure_crd();
    let ns = TestNs::new("fault-kill").await;
    let count = 40;
    for i in 0..count {
        create_hsd(&ns, &format!("hsd-{i}"), &format!("app-{i}")).await;
    }
    let mut killed_mid_pass = false;
    // Kill sooner or later until one kill lands mid-pass (the pass's speed depends on the load).
    for delay_ms in [30u64, 60, 120, 250, 400, 600, 900, 1300, 2000, 3000] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kubectl-hsd"))
            .args(["reconcile", "-n", &ns.name])
            .env("KUBECONFIG", kubeconfig())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        let deployments: Api<Deployment> = ns.api();
        let made = deployments
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len();
        if made > 0 && made < count {
            killed_mid_pass = true;
            break;
        }
    }
    assert!(killed_mid_pass, "no kill landed in the middle of a pass");
    ns.hsd_ok(&["reconcile"]);
    let deployments: Api<Deployment> = ns.api();
    let all = deployments
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert_eq!(all.len(), count, "one Deployment per HSD");
    assert!(
        all.iter()
            .all(|d| d.spec.as_ref().and_then(|s| s.replicas) == Some(3))
    );
    let events: Api<Event> = ns.api();
    let mut created: std::collections::HashMap<String, usize> = Default::default();
    for event in events.list(&ListParams::default()).await.unwrap().items {
        if event.reason.as_deref() == Some("Created") {
            *created
                .entry(event.involved_object.name.unwrap_or_default())
                .or_default() += 1;
        }
    }
    // A kill between a write and its event loses that event (events are best effort); none
    // is ever repeated.
    assert!(created.values().all(|n| *n == 1), "{created:?}");
    // And a pass soon has nothing left to do.
    wait_for("a pass with no writes", TIMEOUT, || {
        let output = ns.hsd(&["reconcile", "--stats"]);
        async move {
            String::from_utf8_lossy(&output.stderr)
                .contains(" 0 writes)")
                .then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_writer_changing_replicas_is_reverted_with_an_event() {
    let _serial = serial().await;
    ensure_crd();
    let ns = TestNs::new("fault-writer").await;
    create_hsd(&ns, "game-ws", "game-ws").await;
    let mut watcher = Watcher::start(&ns.name, "reverter", &[]);
    wait_replicas(&ns, "game-ws-workload", 3, "the Deployment").await;
    common::set_replicas_as(&ns, "game-ws-workload", "someone-else", 7).await;
    wait_replicas(&ns, "game-ws-workload", 3, "the watcher to set it back").await;
    let (type_, _, message) = wait_for("a ReplicasOverridden warning", TIMEOUT, || async {
        common::event_reasons(&ns)
            .await
            .into_iter()
            .find(|(_, reason, _)| reason == "ReplicasOverridden")
    })
    .await;
    assert_eq!(type_, "Warning");
    assert!(
        message.contains("set to 7 by another writer (field manager someone-else)"),
        "{message}"
    );
    assert_alive(&mut watcher);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hsd_deleted_during_a_pass_is_not_an_error_and_leaves_nothing_behind() {
    let _serial = serial().await;
    ensure_crd();
    let ns = TestNs::new("fault-delete").await;
    create_hsd(&ns, "doomed", "doomed").await;
    create_hsd(&ns, "kept", "kept").await;
    // The pass has observed both; then one is deleted before it writes.
    let scope = Scope::Namespace(ns.name.clone());
    let snapshot = observe::read_snapshot(&ns.client, &scope).await.unwrap();
    let observed: Vec<_> = snapshot
        .hsds
        .iter()
        .map(|object| observe::observe_hsd(object, &snapshot.index, |_| None).0)
        .collect();
    assert_eq!(observed.len(), 2);
    let hsds: Api<DynamicObject> =
        Api::namespaced_with(ns.client.clone(), &ns.name, &hsd_resource());
    hsds.delete("doomed", &DeleteParams::background())
        .await
        .unwrap();
    for hsd in &observed {
        let (_, result) = kubectl_hsd::once::reconcile_hsd(&ns.client, hsd, false).await;
        assert!(result.is_ok(), "{}: {result:?}", hsd.name);
    }
    assert_eq!(
        replicas(&ns, "kept-workload").await,
        Some(3),
        "the other HSD is reconciled"
    );
    // A Deployment applied for the deleted HSD belongs to nobody alive: the garbage collector takes it.
    wait_for("the orphan to be collected", TIMEOUT, || async {
        replicas(&ns, "doomed-workload")
            .await
            .is_none()
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_cluster_without_the_crd_gets_told_how_to_install_it() {
    let _serial = serial().await;
    // A cluster of its own, where nothing was installed.
    let dir = common::repo_root().join(format!("target/faults-no-crd-{}", std::process::id()));
    let up = Command::new(common::repo_root().join("hack/cluster.sh"))
        .arg("up")
        .env("HSD_CLUSTER_DIR", &dir)
        .env("HSD_CLUSTER_OWNER_PID", std::process::id().to_string())
        .output()
        .unwrap();
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let kubeconfig = String::from_utf8_lossy(&up.stdout)
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_string();
    for args in [&["get"][..], &["reconcile", "-A"], &["describe", "x"]] {
        let output = Command::new(env!("CARGO_BIN_EXE_kubectl-hsd"))
            .args(args)
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            stderr.trim(),
            "error: the HotStandbyDeployment CRD is not installed: run `kubectl hsd install`",
            "{args:?}"
        );
    }
    let down = Command::new(common::repo_root().join("hack/cluster.sh"))
        .arg("down")
        .env("HSD_CLUSTER_DIR", &dir)
        .output()
        .unwrap();
    assert!(down.status.success());
}
