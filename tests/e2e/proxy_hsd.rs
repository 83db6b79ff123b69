//! `kubectl hsd proxy --hsd NAME` against the real control plane: each new connection goes to
//! an idle pod that has no connection through the proxy (servers bound on the pods' loopback
//! IPs answer with their pod's name), busy pods get none, `--when-all-busy=least-conn`, and an
//! HSD with `scaleToZero` that one-shot passes put to sleep and the proxy wakes, with no watcher;
//! a busy pod that keeps such an HSD awake, and a watcher that puts it to sleep at its deadline.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::common::http_server::test_port;
use crate::common::proxy::{Proxy, stays_silent, wait_replicas};
use crate::common::{TestNs, Watcher, ensure_crd, hsd_status, wait_for};
use crate::core::{annotate, create_hsd, example, ready_pods};

const TIMEOUT: Duration = Duration::from_secs(30);

fn hsd_manifest(ns: &TestNs, name: &str, port: u16, idle_target: i32) -> Value {
    let mut manifest = example("hsd-annotation.yaml");
    manifest["metadata"] = json!({"name": name, "namespace": ns.name});
    manifest["spec"]["selector"]["matchLabels"] = json!({"app": name});
    manifest["spec"]["podTemplate"]["metadata"]["labels"] = json!({"app": name});
    manifest["spec"]["podTemplate"]["spec"]["containers"][0]["ports"] =
        json!([{"containerPort": port}]);
    manifest["spec"]["idleTarget"] = json!(idle_target);
    manifest
}

/// A server on a pod's IP that writes the pod's name on each connection, then echoes.
struct PodServer {
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PodServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_pod(pod: &Pod, port: u16) -> PodServer {
    let ip = pod.status.as_ref().unwrap().pod_ip.clone().unwrap();
    let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
    assert!(addr.ip().is_loopback(), "pod IPs are loopback: {addr}");
    let listener = TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    let accepted = Arc::new(AtomicUsize::new(0));
    let name = pod.name_any();
    let task = tokio::spawn({
        let accepted = accepted.clone();
        async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let name = name.clone();
                tokio::spawn(async move {
                    if socket
                        .write_all(format!("{name}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let mut buffer = [0u8; 1024];
                    loop {
                        use tokio::io::AsyncReadExt;
                        match socket.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if socket.write_all(&buffer[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        }
    });
    PodServer { accepted, task }
}

/// The pod a proxied connection landed on: the first line its server wrote.
async fn landed_on(stream: &mut TcpStream) -> String {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    tokio::time::timeout(TIMEOUT, reader.read_line(&mut line))
        .await
        .expect("an answer from a pod")
        .unwrap();
    line.trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_go_only_to_idle_pods_with_no_connection_through_the_proxy() {
    ensure_crd();
    let ns = TestNs::new("proxy-idle").await;
    let port = test_port();
    create_hsd(&ns, &hsd_manifest(&ns, "lobby", port, 3))
        .await
        .unwrap();
    ns.hsd_ok(&["reconcile"]);
    let pods = ready_pods(&ns, "app=lobby", 3).await;
    let mut servers = BTreeMap::new();
    for pod in &pods {
        servers.insert(pod.name_any(), serve_pod(pod, port).await);
    }
    let busy = pods[0].name_any();
    annotate(&ns, &busy, "paia.tech/busy", "true").await;
    // Ready means its caches are synced: its pod view already shows the busy pod.
    let proxy = Proxy::start(&ns.name, "idle", &["--hsd", "lobby"]).await;

    // Two idle pods: two connections, one each; the busy pod gets none.
    let mut first = proxy.connect().await;
    let mut second = proxy.connect().await;
    let (a, b) = (landed_on(&mut first).await, landed_on(&mut second).await);
    assert_ne!(a, b, "one new connection per idle pod");
    assert!(a != busy && b != busy, "{a} {b} (busy: {busy})");
    // Both idle pods have a connection: the third is held, not sent to a busy or taken pod.
    let mut third = proxy.connect().await;
    assert!(stays_silent(&mut third, Duration::from_secs(1)).await);
    assert_eq!(proxy.metric("hsd_proxy_connections_held").await, Some(1.0));
    // A connection closes: its pod is free again, and the held one goes there.
    drop(first);
    assert_eq!(landed_on(&mut third).await, a);
    // Both idle pods taken again: held connections get the pods set free in the order they
    // arrived (with every held connection watching, any of them could win each pod).
    let mut queue = Vec::new();
    for held in 1..=3 {
        queue.push(proxy.connect().await);
        proxy
            .wait_metric("hsd_proxy_connections_held", TIMEOUT, |v| v == held as f64)
            .await;
    }
    let [mut fourth, mut fifth, mut sixth]: [TcpStream; 3] = queue.try_into().unwrap();
    drop(second);
    assert_eq!(
        landed_on(&mut fourth).await,
        b,
        "the oldest held connection first"
    );
    drop(fourth);
    assert_eq!(landed_on(&mut fifth).await, b);
    drop(third);
    assert_eq!(landed_on(&mut sixth).await, a);
    assert_eq!(servers[&busy].accepted.load(Ordering::SeqCst), 0);
    assert!(
        proxy
            .metric("hsd_proxy_routed_total{choice=\"idle\"}")
            .await
            .unwrap()
            >= 3.0
    );

    // Every pod busy: --when-all-busy=least-conn sends to the least loaded pod.
    for pod in &pods {
        annotate(&ns, &pod.name_any(), "paia.tech/busy", "true").await;
    }
    let least = Proxy::start(
        &ns.name,
        "least",
        &["--hsd", "lobby", "--when-all-busy", "least-conn"],
    )
    .await;
    let mut landed = Vec::new();
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut stream = least.connect().await;
        landed.push(landed_on(&mut stream).await);
        open.push(stream);
    }
    landed.sort();
    landed.dedup();
    assert_eq!(
        landed.len(),
        3,
        "one each, the least loaded first: {landed:?}"
    );
    assert_eq!(
        least
            .metric("hsd_proxy_routed_total{choice=\"least_conn\"}")
            .await,
        Some(3.0)
    );
    drop((fifth, sixth));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_passes_put_an_hsd_to_sleep_and_the_proxy_wakes_it() {
    ensure_crd();
    let ns = TestNs::new("proxy-sleep").await;
    let port = test_port();
    let mut manifest = hsd_manifest(&ns, "arena", port, 1);
    manifest["spec"]["minReplicas"] = json!(1);
    manifest["spec"]["scaleToZero"] = json!({"afterSeconds": 3});
    create_hsd(&ns, &manifest).await.unwrap();
    // The first pass creates the child and starts the clock.
    ns.hsd_ok(&["reconcile"]);
    ready_pods(&ns, "app=arena", 1).await;
    // Passes as the CronJob makes them, until the deadline has passed: replicas go to 0,
    // below minReplicas.
    wait_for("the HSD to fall asleep", TIMEOUT, || async {
        ns.hsd_ok(&["reconcile"]);
        (crate::common::replicas(&ns, "arena-workload").await == Some(0)).then_some(())
    })
    .await;
    let status = hsd_status(&ns, "arena").await;
    let asleep = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Asleep")
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(asleep["status"], "True", "{status}");
    wait_for("the pod to go", TIMEOUT, || async {
        ns.live_pods("app=arena").await.is_empty().then_some(())
    })
    .await;

    // A connection wakes it: the proxy moves the deadline and runs the plan itself.
    let proxy = Proxy::start(&ns.name, "wake", &["--hsd", "arena"]).await;
    let mut client = proxy.connect().await;
    wait_replicas(&ns, "arena-workload", 1, TIMEOUT).await;
    let woken = ready_pods(&ns, "app=arena", 1).await;
    let _server = serve_pod(&woken[0], port).await;
    assert_eq!(landed_on(&mut client).await, woken[0].name_any());
    assert_eq!(
        proxy
            .metric("hsd_proxy_scale_writes_total{kind=\"wake\",result=\"ok\"}")
            .await,
        Some(1.0)
    );
    // The child was applied from the proxy's caches beside the deadline write, and the pass
    // after it (half a second later, out of the cold start's way) wrote the status.
    assert_eq!(
        proxy
            .metric("hsd_proxy_scale_writes_total{kind=\"wake_child\",result=\"ok\"}")
            .await,
        Some(1.0)
    );
    wait_for(
        "the pass after the wake to clear Asleep",
        TIMEOUT,
        || async {
            let status = hsd_status(&ns, "arena").await;
            status["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["type"] != "Asleep" || c["status"] != "True")
                .then_some(())
        },
    )
    .await;
    // The wake reports the scale it made, with the numbers it acted on.
    wait_for("the wake's ScaledUp event", TIMEOUT, || async {
        crate::common::event_reasons(&ns)
            .await
            .iter()
            .any(|(_, reason, message)| {
                reason == "ScaledUp" && message == "from 0 to 1: 0 busy + idle target 1"
            })
            .then_some(())
    })
    .await;

    // An open connection keeps it awake past the period, across passes.
    tokio::time::sleep(Duration::from_secs(4)).await;
    ns.hsd_ok(&["reconcile"]);
    assert_eq!(
        crate::common::replicas(&ns, "arena-workload").await,
        Some(1)
    );
    client.write_all(b"still here\n").await.unwrap();
    let mut echoed = String::new();
    BufReader::new(&mut client)
        .read_line(&mut echoed)
        .await
        .unwrap();
    assert_eq!(echoed, "still here\n");
}

async fn sleep_deadline(ns: &TestNs, name: &str) -> Option<jiff::Timestamp> {
    let api: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(
        ns.client.clone(),
        &ns.name,
        &kubectl_hsd::observe::hsd_resource(),
    );
    api.get(name)
        .await
        .unwrap()
        .annotations()
        .get("zero-pod-autoscaler/scale-down-at")?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_pod_keeps_a_sleepy_hsd_awake_and_a_watcher_sleeps_it_at_its_deadline() {
    ensure_crd();
    let ns = TestNs::new("sleep-busy").await;
    let mut manifest = hsd_manifest(&ns, "den", test_port(), 1);
    // Long enough that the watcher's own reconciles (scale 2 -> 1, the drained pod going) end
    // before the deadline: only a requeue at the deadline can then put the HSD to sleep.
    manifest["spec"]["scaleToZero"] = json!({"afterSeconds": 8});
    create_hsd(&ns, &manifest).await.unwrap();
    ns.hsd_ok(&["reconcile"]);
    let pods = ready_pods(&ns, "app=den", 1).await;
    annotate(&ns, &pods[0].name_any(), "paia.tech/busy", "true").await;
    // The deadline long past: only the busy pod keeps the HSD awake.
    let api: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(
        ns.client.clone(),
        &ns.name,
        &kubectl_hsd::observe::hsd_resource(),
    );
    api.patch(
        "den",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"metadata": {"annotations": {
            "zero-pod-autoscaler/scale-down-at": "2000-01-01T00:00:00Z"}}})),
    )
    .await
    .unwrap();
    ns.hsd_ok(&["reconcile"]);
    // The pass saw the busy pod (1 busy + idle target 1) and moved the deadline a period on.
    assert_eq!(crate::common::replicas(&ns, "den-workload").await, Some(2));
    assert!(
        sleep_deadline(&ns, "den").await.unwrap() > jiff::Timestamp::now(),
        "the reconciler moves the deadline while a pod is busy"
    );

    // Idle again: a watcher, with no event after its first reconciles and a 60 s resync, puts
    // the HSD to sleep when the deadline passes.
    annotate(&ns, &pods[0].name_any(), "paia.tech/busy", "false").await;
    let _watcher = Watcher::start(&ns.name, "sleep", &[]);
    wait_replicas(&ns, "den-workload", 1, Duration::from_secs(20)).await;
    wait_replicas(&ns, "den-workload", 0, Duration::from_secs(30)).await;
}
