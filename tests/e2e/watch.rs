//! `reconcile --watch` against the real control plane: it reacts without any command, elects
//! one leader, hands over, shuts down cleanly, and its metrics match the HSD status.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::common::{TestNs, Watcher, ensure_crd, http_get, wait_for};
use crate::core::{annotate, create_hsd, example, hsd_status, ready_pods, replicas};

async fn annotation_hsd(ns: &TestNs) {
    annotation_hsd_with_idle_target(ns, 3).await;
}

async fn annotation_hsd_with_idle_target(ns: &TestNs, idle_target: i32) {
    let mut manifest = example("hsd-annotation.yaml");
    manifest["metadata"]["namespace"] = json!(ns.name);
    manifest["spec"]["idleTarget"] = json!(idle_target);
    create_hsd(ns, &manifest).await.unwrap();
}

#[tokio::test]
async fn a_busy_pod_scales_the_deployment_without_any_command() {
    ensure_crd();
    let ns = TestNs::new("watch-react").await;
    annotation_hsd(&ns).await;
    let watcher = Watcher::start(&ns.name, "solo", &[]);
    wait_for(
        "the watcher to create the Deployment",
        Duration::from_secs(10),
        || async { (replicas(&ns, "game-ws-workload").await == Some(3)).then_some(()) },
    )
    .await;
    let pods = ready_pods(&ns, "app=game-ws", 3).await;
    let started = Instant::now();
    annotate(&ns, &pods[0].name_any(), "paia.tech/busy", "true").await;
    wait_for(
        "4 replicas after one pod turned busy",
        Duration::from_secs(5),
        || async { (replicas(&ns, "game-ws-workload").await == Some(4)).then_some(()) },
    )
    .await;
    eprintln!(
        "reacted in {:?} (generous bound 5 s; speed is measured by hack/bench.sh)",
        started.elapsed()
    );
    // The count is not kept in an annotation: the Deployment controller would copy it to the
    // ReplicaSet, one more ReplicaSet update per scale.
    let child: k8s_openapi::api::apps::v1::Deployment =
        ns.api().get("game-ws-workload").await.unwrap();
    let sets: Api<k8s_openapi::api::apps::v1::ReplicaSet> = ns.api();
    let set_annotations: Vec<_> = sets
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|set| set.annotations().clone())
        .collect();
    assert_eq!(set_annotations.len(), 1);
    for annotations in set_annotations.iter().chain([child.annotations()]) {
        assert!(
            !annotations.contains_key(kubectl_hsd::observe::APPLIED_REPLICAS_ANNOTATION),
            "{annotations:?}"
        );
    }

    // /metrics matches the status once the status has settled.
    ready_pods(&ns, "app=game-ws", 4).await;
    let status = wait_for(
        "the status to show 1 busy and 3 idle",
        Duration::from_secs(10),
        || async {
            let status = hsd_status(&ns, "game-ws").await;
            (status["busyCount"] == 1 && status["idleCount"] == 3).then_some(status)
        },
    )
    .await;
    let series = |state: &str| {
        format!(
            "hsd_pods{{namespace=\"{}\",name=\"game-ws\",state=\"{state}\"}}",
            ns.name
        )
    };
    for (state, field) in [
        ("busy", "busyCount"),
        ("idle", "idleCount"),
        ("starting", "startingCount"),
        ("unknown", "unknownCount"),
    ] {
        assert_eq!(
            watcher.metric(&series(state)).await,
            status[field].as_f64(),
            "{state}"
        );
    }
    let desired = format!(
        "hsd_desired_replicas{{namespace=\"{}\",name=\"game-ws\"}}",
        ns.name
    );
    assert_eq!(
        watcher.metric(&desired).await,
        status["desiredReplicas"].as_f64()
    );
    assert_eq!(watcher.metric("hsd_leader").await, Some(1.0));
    assert!(
        watcher
            .metric("hsd_reconciles_total{result=\"ok\"}")
            .await
            .unwrap_or(0.0)
            >= 1.0
    );
    let (code, body) = http_get(&format!("{}/healthz", watcher.metrics))
        .await
        .unwrap();
    assert_eq!((code, body.trim()), (200, "ok"));
    let (code, _) = http_get(&format!("{}/readyz", watcher.metrics))
        .await
        .unwrap();
    assert_eq!(code, 200);
}

#[tokio::test]
async fn two_watchers_elect_one_leader_and_hand_over_when_it_dies() {
    ensure_crd();
    let ns = TestNs::new("watch-ha").await;
    annotation_hsd(&ns).await;
    let first = Watcher::start(&ns.name, "first", &[]);
    let second = Watcher::start(&ns.name, "second", &[]);
    let leases: Api<Lease> = ns.api();
    let holder = wait_for("a lease holder", Duration::from_secs(10), || async {
        leases
            .get_opt("kubectl-hsd")
            .await
            .unwrap()?
            .spec?
            .holder_identity
    })
    .await;
    let (leader, standby, standby_name) = if holder.starts_with("first") {
        (first, second, "second")
    } else {
        (second, first, "first")
    };
    wait_for(
        "the leader to create the Deployment",
        Duration::from_secs(10),
        || async { (replicas(&ns, "game-ws-workload").await == Some(3)).then_some(()) },
    )
    .await;
    assert_eq!(leader.metric("hsd_leader").await, Some(1.0));
    assert_eq!(standby.metric("hsd_leader").await, Some(0.0));
    assert_eq!(
        standby.metric("hsd_reconciles_total{result=\"ok\"}").await,
        None,
        "the standby never reconciles"
    );

    // Kill the leader without a chance to release the lease; the standby takes over.
    let mut leader = leader;
    leader.child.kill().unwrap();
    leader.child.wait().unwrap();
    let killed = Instant::now();
    let pods = ready_pods(&ns, "app=game-ws", 3).await;
    annotate(&ns, &pods[0].name_any(), "paia.tech/busy", "true").await;
    wait_for(
        "the standby to take over and scale to 4",
        Duration::from_secs(15),
        || async { (replicas(&ns, "game-ws-workload").await == Some(4)).then_some(()) },
    )
    .await;
    eprintln!(
        "handed over and scaled {:?} after the leader died (lease 3 s)",
        killed.elapsed()
    );
    assert_eq!(
        standby.metric("hsd_leader").await,
        Some(1.0),
        "{}",
        standby.log()
    );
    let holder = leases
        .get("kubectl-hsd")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap();
    assert!(
        holder.starts_with(standby_name),
        "the lease moved to the standby, holder {holder}"
    );
}

#[tokio::test]
async fn sigterm_exits_zero_and_releases_the_lease() {
    ensure_crd();
    let ns = TestNs::new("watch-term").await;
    let mut watcher = Watcher::start(&ns.name, "term", &[]);
    let leases: Api<Lease> = ns.api();
    wait_for(
        "the watcher to hold the lease",
        Duration::from_secs(10),
        || async {
            let holder = leases
                .get_opt("kubectl-hsd")
                .await
                .unwrap()?
                .spec?
                .holder_identity?;
            holder.starts_with("term").then_some(())
        },
    )
    .await;
    // A one-shot pass stands aside while the watcher holds the lease.
    let output = ns.hsd(&["reconcile"]);
    assert!(output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("holds Lease"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    watcher.signal("TERM");
    let status = wait_for("the watcher to exit", Duration::from_secs(10), || {
        let status = watcher.child.try_wait().unwrap();
        async move { status }
    })
    .await;
    assert!(status.success(), "exit status {status}: {}", watcher.log());
    let lease = leases.get("kubectl-hsd").await.unwrap();
    let holder = lease
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    assert!(
        holder.is_empty(),
        "the lease was released, holder {holder:?}"
    );
    // With the lease free, a one-shot pass runs again.
    let output = ns.hsd(&["reconcile"]);
    assert!(!String::from_utf8_lossy(&output.stderr).contains("holds Lease"));
}

#[tokio::test]
async fn a_burst_of_pod_changes_coalesces_into_few_writes() {
    ensure_crd();
    let ns = TestNs::new("watch-burst").await;
    annotation_hsd_with_idle_target(&ns, 6).await;
    let _watcher = Watcher::start(&ns.name, "burst", &[]);
    let pods = ready_pods(&ns, "app=game-ws", 6).await;
    // Six pods turn busy at once.
    let names: Vec<String> = pods.iter().map(|pod| pod.name_any()).collect();
    futures::future::join_all(
        names
            .iter()
            .map(|name| annotate(&ns, name, "paia.tech/busy", "true")),
    )
    .await;
    wait_for("12 replicas", Duration::from_secs(10), || async {
        (replicas(&ns, "game-ws-workload").await == Some(12)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let events: Api<k8s_openapi::api::core::v1::Event> = ns.api();
    let scaled = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("ScaledUp"))
        .count();
    eprintln!("6 busy flips gave {scaled} scale writes");
    assert!(
        scaled <= 3,
        "6 flips in a burst should coalesce, got {scaled} scale writes"
    );
}

/// A watcher writes an HSD's status at most once a second (src/watch/pace.rs): the changes of a
/// burst of flips are folded into a write at the interval's end, and the last one lands with
/// nothing further to trigger it.
#[tokio::test]
async fn status_writes_keep_their_interval_and_the_last_one_lands() {
    use futures::StreamExt;
    use kube::api::{DynamicObject, WatchEvent, WatchParams};
    ensure_crd();
    let ns = TestNs::new("watch-pace").await;
    annotation_hsd_with_idle_target(&ns, 6).await;
    let watcher = Watcher::start(&ns.name, "pace", &[]);
    let pods = ready_pods(&ns, "app=game-ws", 6).await;
    wait_for(
        "the status to show 6 idle",
        Duration::from_secs(10),
        || async { (hsd_status(&ns, "game-ws").await["idleCount"] == 6).then_some(()) },
    )
    .await;
    let hsds: Api<DynamicObject> = Api::namespaced_with(
        ns.client.clone(),
        &ns.name,
        &kubectl_hsd::observe::hsd_resource(),
    );
    let version = hsds
        .get("game-ws")
        .await
        .unwrap()
        .resource_version()
        .unwrap();
    let mut stream = hsds
        .watch(
            &WatchParams::default().fields("metadata.name=game-ws"),
            &version,
        )
        .await
        .unwrap()
        .boxed();
    let writes = std::sync::Arc::new(std::sync::Mutex::new(
        Vec::<(Instant, serde_json::Value)>::new(),
    ));
    let recorder = {
        let writes = writes.clone();
        tokio::spawn(async move {
            let mut last = serde_json::Value::Null;
            while let Some(Ok(event)) = stream.next().await {
                if let WatchEvent::Modified(hsd) = event {
                    let status = hsd.data["status"].clone();
                    if status != last {
                        writes
                            .lock()
                            .unwrap()
                            .push((Instant::now(), status.clone()));
                        last = status;
                    }
                }
            }
        })
    };
    // The burst spans more than one interval (6 x 300 ms), so that a paced watcher must write
    // at least twice: once within a second of the first flip, and again for the last.
    for pod in &pods {
        annotate(&ns, &pod.name_any(), "paia.tech/busy", "true").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_for(
        "the status to show 6 busy and 6 idle",
        Duration::from_secs(20),
        || async {
            let status = hsd_status(&ns, "game-ws").await;
            (status["busyCount"] == 6 && status["idleCount"] == 6).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    recorder.abort();
    let writes = writes.lock().unwrap().clone();
    let gaps: Vec<Duration> = writes.windows(2).map(|w| w[1].0 - w[0].0).collect();
    eprintln!("{} status writes, gaps {gaps:?}", writes.len());
    // The watcher reacted to the burst, with more than one write.
    assert!(writes.len() >= 2, "{writes:?}\n{}", watcher.log());
    // One second apart, less what the watch delivery may shift (unpaced, the flips' and the
    // new pods' writes would come at most 300 ms apart).
    for gap in &gaps {
        assert!(
            *gap >= Duration::from_millis(600),
            "status writes {gap:?} apart: {gaps:?}"
        );
    }
    assert_eq!(writes.last().unwrap().1["busyCount"], 6);
}
