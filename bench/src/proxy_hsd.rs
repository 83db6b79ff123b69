//! The wake of HSD mode (`kubectl hsd proxy --hsd`), next to the same floor as ZPA mode's wake,
//! measured in the same run: a scale PATCH of the child Deployment, then a pod watch until a pod
//! is Ready.
//!
//! The product: the HSD asleep (0 replicas, put there by one-shot passes after its sleep deadline
//! was set in the past), a client connects through the proxy and sends one byte; the figure is
//! the time until that byte comes back from the woken pod. In between: the proxy holds the
//! connection, moves the HSD's deadline, runs the HSD's plan (which scales the child up), sees
//! the new pod Ready in its own pod watch, and dials the pod's IP directly (no EndpointSlice hop,
//! unlike ZPA mode). The benchmark binds an echo server on each pod's loopback IP as soon as its
//! pod watch shows the IP; a dial that came first is refused and retried, and the refusals are
//! reported beside the figure.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::product::Product;
use crate::proxy::{
    ECHO, Process, connect, pods_gone, serve_upstream, spawn_proxy, until_pod_ready,
};
use crate::util::{Context, Res, percentile, round, say, wait_for};

const NAMESPACE: &str = "bench-proxy-hsd";
const HSD: &str = "echo-hsd";
const CHILD: &str = "echo-hsd-workload";

fn hsd_resource() -> ApiResource {
    ApiResource {
        group: "apps.paia.tech".into(),
        version: "v1alpha1".into(),
        api_version: "apps.paia.tech/v1alpha1".into(),
        kind: "HotStandbyDeployment".into(),
        plural: "hotstandbydeployments".into(),
    }
}

fn port() -> u16 {
    30000 + (std::process::id() % 2000) as u16
}

/// Echo servers on the HSD's pods' IPs, bound as soon as the pod watch shows each IP.
fn spawn_pod_servers(client: Client, port: u16) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let pods: Api<Pod> = Api::namespaced(client, NAMESPACE);
        let config = kube::runtime::watcher::Config::default().labels(&format!("app={HSD}"));
        let mut bound: HashMap<std::net::IpAddr, Arc<TcpListener>> = HashMap::new();
        let mut events = kube::runtime::watcher(pods, config).boxed();
        while let Some(event) = events.next().await {
            let Ok(event) = event else {
                continue;
            };
            let pods: Vec<Pod> = match event {
                kube::runtime::watcher::Event::Apply(pod)
                | kube::runtime::watcher::Event::InitApply(pod) => vec![pod],
                _ => Vec::new(),
            };
            for pod in pods {
                let Some(ip) = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.pod_ip.as_deref())
                    .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
                else {
                    continue;
                };
                // Loopback only: a pod IP outside 127.0.0.0/8 is never served (nor dialled).
                if !ip.is_loopback() || bound.contains_key(&ip) {
                    continue;
                }
                let Ok(listener) = TcpListener::bind(SocketAddr::new(ip, port)).await else {
                    continue;
                };
                let listener = Arc::new(listener);
                bound.insert(ip, listener.clone());
                tokio::spawn(async move {
                    while let Ok((stream, _)) = listener.accept().await {
                        tokio::spawn(serve_upstream(stream));
                    }
                });
            }
        }
    })
}

async fn prepare(client: &Client, port: u16) -> Res<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace =
        serde_json::from_value(json!({"metadata": {"name": NAMESPACE}})).ctx("a namespace")?;
    match namespaces.create(&PostParams::default(), &namespace).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(error) => return Err(format!("creating namespace {NAMESPACE}: {error}")),
    }
    let hsds: Api<DynamicObject> = Api::namespaced_with(client.clone(), NAMESPACE, &hsd_resource());
    hsds.patch(
        HSD,
        &PatchParams::apply("hsd-bench").force(),
        &Patch::Apply(json!({
            "apiVersion": "apps.paia.tech/v1alpha1", "kind": "HotStandbyDeployment",
            "metadata": {"name": HSD},
            "spec": {
                "idleTarget": 1, "minReplicas": 0, "maxReplicas": 2,
                // Short: a proxy that forwarded a connection keeps the HSD awake for this long
                // after it (as it should), so each sleep waits it out.
                "scaleToZero": {"afterSeconds": 2},
                "selector": {"matchLabels": {"app": HSD}},
                "podTemplate": {
                    "metadata": {"labels": {"app": HSD}},
                    "spec": {"containers": [{
                        "name": "echo", "image": "registry.invalid/echo:1",
                        "ports": [{"containerPort": port}],
                    }]},
                },
            },
        })),
    )
    .await
    .ctx("applying the benchmark's HSD")?;
    Ok(())
}

async fn pass(product: &Product) -> Res<()> {
    product
        .run(&["reconcile", "-n", NAMESPACE], Duration::from_secs(60))
        .await
        .map(|_| ())
}

/// Puts the HSD to sleep: its deadline in the past, then passes until the child is at 0 and
/// no pod is left, and the proxy has seen it. Returns the pod list's resourceVersion. After a
/// proxied connection the proxy moves the deadline back to a period after that connection, so
/// the passes wait that out.
async fn put_to_sleep(client: &Client, product: &Product, proxy: &Process) -> Res<String> {
    let hsds: Api<DynamicObject> = Api::namespaced_with(client.clone(), NAMESPACE, &hsd_resource());
    hsds.patch(
        HSD,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {
            "zero-pod-autoscaler/scale-down-at": "2000-01-01T00:00:00Z"}}})),
    )
    .await
    .ctx("moving the sleep deadline into the past")?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let asleep = wait_for(
        "the HSD to fall asleep",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            pass(product).await?;
            let replicas = deployments
                .get_opt(CHILD)
                .await
                .ctx("reading the child")?
                .and_then(|d| d.spec?.replicas);
            Ok((replicas == Some(0)).then_some(()))
        },
    )
    .await;
    if let Err(error) = asleep {
        let explained = product
            .command(&product.binary)
            .args(["explain", &format!("hsd/{HSD}"), "-n", NAMESPACE])
            .output()
            .await
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        return Err(format!("{error}; the HSD says:\n{explained}"));
    }
    let resource_version = pods_gone(client, NAMESPACE, HSD).await?;
    proxy.wait_asleep().await?;
    Ok(resource_version)
}

async fn start_proxy(product: &Product, work: &Path) -> Res<Process> {
    spawn_proxy(
        product,
        work.join("proxy-hsd-product.log"),
        &["-n", NAMESPACE, "--hsd", HSD],
    )
    .await
}

pub async fn measure(quick: bool, client: &Client, product: &Product, work: &Path) -> Res<Value> {
    // As ZPA mode's wake: 100, so that the p99 is not the second slowest of a few.
    let samples = if quick { 8 } else { 100 };
    let port = port();
    say(format!(
        "proxy-hsd: {samples} cold starts through `proxy --hsd`, floor vs product"
    ));
    prepare(client, port).await?;
    let servers = spawn_pod_servers(client.clone(), port);
    pass(product).await?;
    let proxy = start_proxy(product, work).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let mut times: [Vec<f64>; 2] = Default::default();
    for _ in 0..samples {
        // The floor: the child scaled by a PATCH, then a pod watch until a pod is Ready.
        let resource_version = put_to_sleep(client, product, &proxy).await?;
        let started = Instant::now();
        deployments
            .patch(
                CHILD,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": 1}})),
            )
            .await
            .ctx("scaling the child")?;
        until_pod_ready(client, NAMESPACE, HSD, &resource_version).await?;
        times[0].push(started.elapsed().as_secs_f64() * 1e3);
        // The product: connect through the proxy to the sleeping HSD; one byte each way.
        put_to_sleep(client, product, &proxy).await?;
        let started = Instant::now();
        let mut stream = connect(proxy.addr, ECHO).await?;
        stream.write_all(&[1]).await.ctx("the first byte")?;
        let mut byte = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(60), stream.read_exact(&mut byte))
            .await
            .ctx("the first byte back from the woken pod (timed out)")?
            .ctx("the first byte back from the woken pod")?;
        times[1].push(started.elapsed().as_secs_f64() * 1e3);
    }
    let refused = proxy
        .metric("hsd_proxy_dial_errors_total{reason=\"refused\"}")
        .await?;
    let wakes_ok = proxy
        .metric("hsd_proxy_scale_writes_total{kind=\"wake\",result=\"ok\"}")
        .await?;
    let wake_children_ok = proxy
        .metric("hsd_proxy_scale_writes_total{kind=\"wake_child\",result=\"ok\"}")
        .await?;
    say(format!(
        "proxy-hsd: wake p99 floor {:.0} ms / product {:.0} ms ({refused} dials refused before the pod's server was bound)",
        percentile(&times[0], 99.0),
        percentile(&times[1], 99.0)
    ));
    let log = std::fs::read_to_string(&proxy.log).unwrap_or_default();
    drop(proxy);
    servers.abort();
    remove_hsd(client).await?;
    if log.contains("panicked") {
        return Err(format!(
            "the proxy panicked:\n{}",
            crate::product::tail(&log, 20)
        ));
    }
    Ok(json!({
        "wake": {
            "samples": times[0].len(),
            "floor_p50_ms": round(percentile(&times[0], 50.0), 1),
            "floor_p99_ms": round(percentile(&times[0], 99.0), 1),
            "product_p50_ms": round(percentile(&times[1], 50.0), 1),
            "product_p99_ms": round(percentile(&times[1], 99.0), 1),
            "ratio_p99": round(percentile(&times[1], 99.0) / percentile(&times[0], 99.0), 2),
            "wake_writes_ok": wakes_ok,
            "wake_child_writes_ok": wake_children_ok,
            "dials_refused": refused,
        },
    }))
}

/// Deletes the HSD and waits until it, its child and its pods are gone (foreground deletion), so
/// that the later measurements count only the populated HSDs.
async fn remove_hsd(client: &Client) -> Res<()> {
    let hsds: Api<DynamicObject> = Api::namespaced_with(client.clone(), NAMESPACE, &hsd_resource());
    hsds.delete(HSD, &kube::api::DeleteParams::foreground())
        .await
        .ctx("deleting the HSD")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while hsds.get_opt(HSD).await.ctx("reading the HSD")?.is_some() {
        if Instant::now() > deadline {
            return Err(format!(
                "HSD {NAMESPACE}/{HSD} still there 120 s after its deletion"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
