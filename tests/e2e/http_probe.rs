//! HTTP mode with real HTTP servers bound on the pods' loopback IPs.

use std::net::SocketAddr;

use crate::common::TestNs;
use crate::common::http_server::{Behaviour, serve, serve_switchable, test_port};
use crate::core::{create_hsd, example, hsd_status, ready_pods, replicas};
use kube::ResourceExt;
use serde_json::json;

// Multi-threaded: the test servers must answer while a blocking CLI call runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_probes_count_busy_idle_and_unknown() {
    crate::common::ensure_crd();
    let ns = TestNs::new("http").await;
    let port = test_port();
    let mut manifest = example("hsd-http.yaml");
    manifest["metadata"]["namespace"] = json!(ns.name);
    manifest["spec"]["busyProbe"]["http"]["port"] = json!(port);
    create_hsd(&ns, &manifest).await.unwrap();
    ns.hsd_ok(&["reconcile"]);
    let pods = ready_pods(&ns, "app=game-ws", 3).await;
    let addr = |i: usize| -> SocketAddr {
        let ip = pods[i].status.as_ref().unwrap().pod_ip.as_deref().unwrap();
        format!("{ip}:{port}").parse().unwrap()
    };
    // 200 busy, 503 idle, silent unknown.
    let servers = vec![
        serve(addr(0), Behaviour::Status(200)).await,
        serve(addr(1), Behaviour::Status(503)).await,
        serve(addr(2), Behaviour::Silent).await,
    ];
    let summary = ns.hsd_ok(&["reconcile"]);
    // 1 busy + 1 unknown + 3 idle target, what the unknown pod adds capped at the 3 pods
    // that exist (no runaway when probes fail).
    assert!(summary.contains("scaled 3->4"), "{summary}");
    let status = hsd_status(&ns, "game-ws").await;
    assert_eq!(
        (
            status["busyCount"].as_i64(),
            status["idleCount"].as_i64(),
            status["unknownCount"].as_i64()
        ),
        (Some(1), Some(1), Some(1))
    );
    let degraded = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "ProbeDegraded")
        .unwrap();
    assert_eq!(degraded["status"], "True");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains(&pods[2].name_any()),
        "{degraded}"
    );
    assert_eq!(replicas(&ns, "game-ws-workload").await, Some(4));

    // The new pod has no server: connection refused is unknown too. It is protected (never
    // scaled away while unanswered), and the unknown pods add nothing beyond the pods that
    // exist: no runaway while probes fail.
    ready_pods(&ns, "app=game-ws", 4).await;
    for _ in 0..3 {
        ns.hsd_ok(&["reconcile"]);
        assert_eq!(replicas(&ns, "game-ws-workload").await, Some(4));
    }
    let status = hsd_status(&ns, "game-ws").await;
    assert_eq!(status["unknownCount"].as_i64(), Some(2), "{status}");
    for server in servers {
        server.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_probes_every_period_and_reacts_to_a_changed_answer() {
    crate::common::ensure_crd();
    let ns = TestNs::new("http-watch").await;
    let port = test_port();
    let mut manifest = example("hsd-http.yaml");
    manifest["metadata"]["namespace"] = json!(ns.name);
    manifest["spec"]["busyProbe"]["http"]["port"] = json!(port);
    manifest["spec"]["busyProbe"]["http"]["periodSeconds"] = json!(1);
    manifest["spec"]["maxReplicas"] = json!(4);
    create_hsd(&ns, &manifest).await.unwrap();
    ns.hsd_ok(&["reconcile"]);
    let pods = ready_pods(&ns, "app=game-ws", 3).await;
    let statuses: Vec<_> = (0..3)
        .map(|_| std::sync::Arc::new(std::sync::atomic::AtomicU16::new(503)))
        .collect();
    let mut servers = Vec::new();
    for (pod, status) in pods.iter().zip(&statuses) {
        let addr: SocketAddr = format!(
            "{}:{port}",
            pod.status.as_ref().unwrap().pod_ip.as_deref().unwrap()
        )
        .parse()
        .unwrap();
        servers.push(serve_switchable(addr, status.clone()).await);
    }
    let _watcher = crate::common::Watcher::start(&ns.name, "prober", &[]);
    crate::common::wait_for(
        "3 idle pods by probe",
        std::time::Duration::from_secs(10),
        || async { (hsd_status(&ns, "game-ws").await["idleCount"] == 3).then_some(()) },
    )
    .await;
    // One pod starts answering 200 (busy); nobody runs any command.
    statuses[0].store(200, std::sync::atomic::Ordering::SeqCst);
    crate::common::wait_for(
        "4 replicas after a probe turned busy",
        std::time::Duration::from_secs(10),
        || async { (replicas(&ns, "game-ws-workload").await == Some(4)).then_some(()) },
    )
    .await;
    for server in servers {
        server.abort();
    }
}
