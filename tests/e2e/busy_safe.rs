//! Busy-safe scale-down with the real ReplicaSet controller, the scale-down delay across
//! separate one-shot passes, the percent idle target, pause and explain.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::{Api, ResourceExt};
use kubectl_hsd::observe::{Scope, hsd_resource};
use kubectl_hsd::once::{PassOptions, run_pass};
use serde_json::json;

use crate::common::{
    TestNs, busy_victims, ensure_crd, is_ready, spawn_deletion_recorder, wait_for,
};
use crate::core::{annotate, create_hsd, example, hsd_status, ready_pods, replicas};

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

async fn set_ready(ns: &TestNs, pod: &str, ready: bool) {
    let pods: Api<Pod> = ns.api();
    let status = if ready { "True" } else { "False" };
    let patch = json!({"status": {"conditions": [
        {"type": "Ready", "status": status},
        {"type": "ContainersReady", "status": status},
    ]}});
    pods.patch_status(pod, &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .unwrap();
}

/// Waits until the ReplicaSet has done what the Deployment asks: as many live pods as replicas.
async fn settle(ns: &TestNs) {
    wait_for(
        "the ReplicaSet to settle",
        Duration::from_secs(20),
        || async {
            let want = replicas(ns, "game-ws-workload").await? as usize;
            let live = ns.live_pods("app=game-ws").await;
            let all: Api<Pod> = ns.api();
            let terminating = all
                .list(&kube::api::ListParams::default().labels("app=game-ws"))
                .await
                .unwrap()
                .items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_some())
                .count();
            (live.len() == want && terminating == 0).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_never_deletes_a_busy_pod() {
    ensure_crd();
    let ns = TestNs::new("churn").await;
    let mut manifest = example("hsd-annotation.yaml");
    manifest["metadata"]["namespace"] = json!(ns.name);
    manifest["spec"]["idleTarget"] = json!(2);
    manifest["spec"]["maxReplicas"] = json!(12);
    create_hsd(&ns, &manifest).await.unwrap();
    let (deletions, recorder) = spawn_deletion_recorder(&ns);
    let scope = Scope::Namespace(ns.name.clone());
    let pass = || async {
        let report = run_pass(&ns.client, &scope, &PassOptions::default())
            .await
            .unwrap();
        assert_eq!(report.failures().count(), 0, "{:?}", report.outcomes);
    };
    pass().await;
    settle(&ns).await;

    let seed = std::env::var("HSD_CHURN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1234_u64);
    eprintln!("churn seed {seed:#x} (HSD_CHURN_SEED to replay)");
    let mut rng = Rng(seed);
    let mut busy_not_ready_rounds = 0;
    for round in 0..60 {
        let pods = ns.live_pods("app=game-ws").await;
        if pods.is_empty() {
            pass().await;
            continue;
        }
        let pod = &pods[rng.below(pods.len())];
        let name = pod.name_any();
        let is_busy = pod.annotations().get("paia.tech/busy").map(String::as_str) == Some("true");
        match rng.below(10) {
            0..=3 => annotate(&ns, &name, "paia.tech/busy", "true").await,
            4..=6 => {
                // Release one busy pod, if any.
                if let Some(busy) = pods.iter().find(|p| {
                    p.annotations().get("paia.tech/busy").map(String::as_str) == Some("true")
                }) {
                    annotate(&ns, &busy.name_any(), "paia.tech/busy", "false").await;
                }
            }
            7 | 8 => set_ready(&ns, &name, false).await,
            _ => set_ready(&ns, &name, true).await,
        }
        let now_pods = ns.live_pods("app=game-ws").await;
        if now_pods.iter().any(|p| {
            !is_ready(p)
                && p.annotations().get("paia.tech/busy").map(String::as_str) == Some("true")
        }) {
            busy_not_ready_rounds += 1;
        }
        let _ = (round, is_busy);
        pass().await;
        settle(&ns).await;
    }
    // Release everything and let it scale all the way down.
    for pod in ns.live_pods("app=game-ws").await {
        annotate(&ns, &pod.name_any(), "paia.tech/busy", "false").await;
        set_ready(&ns, &pod.name_any(), true).await;
    }
    pass().await;
    settle(&ns).await;
    assert_eq!(replicas(&ns, "game-ws-workload").await, Some(2));
    tokio::time::sleep(Duration::from_millis(500)).await;
    recorder.abort();

    let victims = busy_victims(&deletions);
    let deleted = deletions.lock().unwrap().len();
    eprintln!(
        "{deleted} pod deletions, {busy_not_ready_rounds} rounds with a busy pod that was not ready, busy victims: {victims:?}"
    );
    assert!(
        deleted >= 5,
        "the churn must make the ReplicaSet delete pods to prove anything"
    );
    assert!(
        busy_not_ready_rounds >= 3,
        "the churn must include busy pods that are not ready"
    );
    assert!(victims.is_empty(), "busy pods were deleted: {victims:?}");
}

#[tokio::test]
async fn the_delay_holds_across_one_shot_passes_then_releases() {
    ensure_crd();
    let ns = TestNs::new("delay").await;
    let mut manifest = example("hsd-annotation.yaml");
    manifest["metadata"]["namespace"] = json!(ns.name);
    manifest["spec"]["idleTarget"] = json!(1);
    manifest["spec"]["scaleDownDelaySeconds"] = json!(4);
    create_hsd(&ns, &manifest).await.unwrap();
    ns.hsd_ok(&["reconcile"]);
    let pods = ready_pods(&ns, "app=game-ws", 1).await;
    annotate(&ns, &pods[0].name_any(), "paia.tech/busy", "true").await;
    ns.hsd_ok(&["reconcile"]);
    assert_eq!(replicas(&ns, "game-ws-workload").await, Some(2));
    ready_pods(&ns, "app=game-ws", 2).await;

    annotate(&ns, &pods[0].name_any(), "paia.tech/busy", "false").await;
    ns.hsd_ok(&["reconcile"]);
    assert_eq!(
        replicas(&ns, "game-ws-workload").await,
        Some(2),
        "held by the delay"
    );
    let status = hsd_status(&ns, "game-ws").await;
    assert_eq!(status["desiredReplicas"], 1, "the status shows the formula");
    let history = status["recentRecommendations"]
        .as_array()
        .expect("the window is kept in the status");
    assert!(history.iter().any(|r| r["replicas"] == 2), "{status}");
    assert_eq!(history.last().unwrap()["replicas"], 1, "{status}");
    let explain = ns.hsd_ok(&["explain", "game-ws"]);
    assert!(
        explain.contains("held at 2: the highest recommendation of the last 4s"),
        "{explain}"
    );

    // A separate process two seconds later still holds it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    ns.hsd_ok(&["reconcile"]);
    assert_eq!(
        replicas(&ns, "game-ws-workload").await,
        Some(2),
        "still inside the window"
    );

    // Released once the lower recommendation has held 4 s (measured from when a pass first
    // made it, as recorded in the status), not before.
    let lower_since: jiff::Timestamp = history.last().unwrap()["since"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let release_at = lower_since + jiff::SignedDuration::from_secs(4);
    loop {
        let before = jiff::Timestamp::now();
        let summary = ns.hsd_ok(&["reconcile"]);
        if summary.contains("scaled 2->1") {
            assert!(
                jiff::Timestamp::now() >= release_at,
                "released early: {summary}"
            );
            break;
        }
        assert!(
            before < release_at + jiff::SignedDuration::from_secs(5),
            "never released: {summary}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn percent_target_pause_and_explain() {
    ensure_crd();
    let ns = TestNs::new("percent").await;
    let mut manifest = example("hsd-annotation.yaml");
    manifest["metadata"]["namespace"] = json!(ns.name);
    manifest["spec"]["idleTarget"] = json!(1);
    manifest["spec"]["idlePercent"] = json!(50);
    create_hsd(&ns, &manifest).await.unwrap();
    ns.hsd_ok(&["reconcile"]);
    let pods = ready_pods(&ns, "app=game-ws", 1).await;
    annotate(&ns, &pods[0].name_any(), "paia.tech/busy", "true").await;
    ns.hsd_ok(&["reconcile"]);
    let pods = ready_pods(&ns, "app=game-ws", 2).await;
    for pod in &pods {
        annotate(&ns, &pod.name_any(), "paia.tech/busy", "true").await;
    }
    ns.hsd_ok(&["reconcile"]);
    let pods = ready_pods(&ns, "app=game-ws", 3).await;
    for pod in &pods {
        annotate(&ns, &pod.name_any(), "paia.tech/busy", "true").await;
    }
    ns.hsd_ok(&["reconcile"]);
    // 3 busy: idle target max(1, ceil(3 * 50%)) = 2, so 5.
    assert_eq!(replicas(&ns, "game-ws-workload").await, Some(5));
    let explain: serde_json::Value =
        serde_json::from_str(&ns.hsd_ok(&["explain", "game-ws", "-o", "json"])).unwrap();
    assert_eq!(explain["idleTargetFromPercent"], 2);
    assert_eq!(explain["idleTarget"], 2);
    assert_eq!(explain["replicas"], 5);
    let text = ns.hsd_ok(&["explain", "game-ws"]);
    assert!(
        text.contains("idle target  2 = max(idleTarget 1, 2 from idlePercent)"),
        "{text}"
    );
    assert!(text.contains("busy         3 (3 by annotation"), "{text}");

    // Paused: nothing scales, and the status says so.
    let hsds: Api<DynamicObject> =
        Api::namespaced_with(ns.client.clone(), &ns.name, &hsd_resource());
    hsds.patch(
        "game-ws",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"paia.tech/paused": "true"}}})),
    )
    .await
    .unwrap();
    for pod in ready_pods(&ns, "app=game-ws", 5).await {
        annotate(&ns, &pod.name_any(), "paia.tech/busy", "false").await;
    }
    ns.hsd_ok(&["reconcile"]);
    assert_eq!(replicas(&ns, "game-ws-workload").await, Some(5), "paused");
    let status = hsd_status(&ns, "game-ws").await;
    let paused = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Paused")
        .unwrap();
    assert_eq!(paused["status"], "True");
    hsds.patch(
        "game-ws",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"paia.tech/paused": null}}})),
    )
    .await
    .unwrap();
    ns.hsd_ok(&["reconcile"]);
    assert_eq!(
        replicas(&ns, "game-ws-workload").await,
        Some(1),
        "unpaused: 0 busy + 1"
    );
}
