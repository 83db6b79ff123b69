//! Active-standby failover time (#16): from a master's deletion being acknowledged to this
//! benchmark's own watch of the Service's EndpointSlices showing the new master, alone and
//! ready; for the product's watcher and for the floor (an in-process watch of the pods that
//! moves the label at once, then the EndpointSlice controller's own hop).
//!
//! The pods run on the cluster's tainted data node: their addresses (198.18.0.0/24) are data in
//! the EndpointSlices, never connected to.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use kubectl_hsd::api::active_standby::{
    ACTIVE, ACTIVE_STANDBY, DESIGNATION_LABEL, SERVICE_MODE_ANNOTATION,
};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::report::Goal;
use crate::util::{Context, Res, load_average, percentile, round, say, wait_for};

const DATA_NODE: &str = "hsd-data-node";
const DATA_NODE_TAINT: &str = "paia.tech/data-only";
const NAME: &str = "fo";
const REPLICAS: i32 = 4;
const TIMEOUT: Duration = Duration::from_secs(60);

/// A Deployment of pods on the data node (no probe: nothing ever dials them).
fn deployment() -> Res<Deployment> {
    serde_json::from_value(json!({
        "metadata": {"name": NAME},
        "spec": {
            "replicas": REPLICAS,
            "selector": {"matchLabels": {"app": NAME}},
            "template": {
                "metadata": {"labels": {"app": NAME}},
                "spec": {
                    "containers": [{"name": "c", "image": "registry.invalid/pause:1"}],
                    "terminationGracePeriodSeconds": 0,
                    "tolerations": [{"key": DATA_NODE_TAINT, "operator": "Equal", "value": "true", "effect": "NoSchedule"}],
                    "nodeSelector": {"kubernetes.io/hostname": DATA_NODE},
                },
            },
        },
    }))
    .ctx("the failover Deployment")
}

/// The product's Service is annotated (the product adds the selector key); the floor's selects
/// the master label itself and is not annotated (the product never touches it).
fn service(annotated: bool) -> Res<Service> {
    let mut selector = json!({"app": NAME});
    let mut annotations = json!({});
    if annotated {
        annotations[SERVICE_MODE_ANNOTATION] = json!(ACTIVE_STANDBY);
    } else {
        selector[DESIGNATION_LABEL] = json!(ACTIVE);
    }
    serde_json::from_value(json!({
        "metadata": {"name": NAME, "annotations": annotations},
        "spec": {"clusterIP": "None", "selector": selector, "ports": [{"name": "p", "port": 5432}]},
    }))
    .ctx("the failover Service")
}

/// The ready endpoints of the Service (pod names), as this benchmark's own watch last saw them.
struct SliceWatch {
    ready: watch::Receiver<(Instant, BTreeSet<String>)>,
    task: tokio::task::JoinHandle<()>,
}

impl SliceWatch {
    fn start(client: &Client, namespace: &str) -> Self {
        let api: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
        let (sender, ready) = watch::channel((Instant::now(), BTreeSet::new()));
        let task = tokio::spawn(async move {
            let config =
                watcher::Config::default().labels(&format!("kubernetes.io/service-name={NAME}"));
            let events = watcher::watcher(api, config).default_backoff();
            futures::pin_mut!(events);
            let mut slices: HashMap<String, BTreeSet<String>> = HashMap::new();
            while let Ok(Some(event)) = events.try_next().await {
                match event {
                    Event::Apply(slice) | Event::InitApply(slice) => {
                        slices.insert(slice.name_any(), ready_pods(&slice));
                    }
                    Event::Delete(slice) => {
                        slices.remove(&slice.name_any());
                    }
                    Event::Init => slices.clear(),
                    Event::InitDone => {}
                }
                let union: BTreeSet<String> = slices.values().flatten().cloned().collect();
                if union != sender.borrow().1 {
                    let _ = sender.send((Instant::now(), union));
                }
            }
        });
        Self { ready, task }
    }

    /// Waits until the ready set is exactly one pod other than `old`; returns it and when it
    /// was seen.
    async fn wait_new(&mut self, old: &str) -> Res<(String, Instant)> {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            {
                let (at, ready) = &*self.ready.borrow_and_update();
                if ready.len() == 1 && !ready.contains(old) {
                    return Ok((ready.iter().next().cloned().unwrap_or_default(), *at));
                }
            }
            tokio::time::timeout_at(deadline, self.ready.changed())
                .await
                .map_err(|_| format!("timed out waiting for a new master after {old}"))?
                .map_err(|_| "the EndpointSlice watch ended".to_string())?;
        }
    }

    fn current(&self) -> BTreeSet<String> {
        self.ready.borrow().1.clone()
    }
}

impl Drop for SliceWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn ready_pods(slice: &EndpointSlice) -> BTreeSet<String> {
    slice
        .endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .filter_map(|e| e.target_ref.as_ref().and_then(|t| t.name.clone()))
        .collect()
}

fn eligible(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod.status.as_ref().is_some_and(|s| {
            s.pod_ip.as_deref().is_some_and(|ip| !ip.is_empty())
                && s.conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// The floor: watches the namespace's pods and, whenever no eligible pod carries the master
/// label, labels one (a merge patch, nothing else: no record, no fence).
fn start_floor(client: &Client, namespace: &str) -> tokio::task::JoinHandle<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    tokio::spawn(async move {
        let events = watcher::watcher(
            api.clone(),
            watcher::Config::default().labels(&format!("app={NAME}")),
        )
        .default_backoff();
        futures::pin_mut!(events);
        let mut pods: HashMap<String, Pod> = HashMap::new();
        let mut synced = false;
        while let Ok(Some(event)) = events.try_next().await {
            match event {
                Event::Apply(pod) | Event::InitApply(pod) => {
                    pods.insert(pod.name_any(), pod);
                }
                Event::Delete(pod) => {
                    pods.remove(&pod.name_any());
                }
                Event::Init => pods.clear(),
                Event::InitDone => synced = true,
            }
            if !synced {
                continue;
            }
            let labelled =
                |p: &Pod| p.labels().get(DESIGNATION_LABEL).map(String::as_str) == Some(ACTIVE);
            if pods.values().any(|p| labelled(p) && eligible(p)) {
                continue;
            }
            let Some(next) = pods
                .values()
                .filter(|p| eligible(p))
                .map(|p| p.name_any())
                .min()
            else {
                continue;
            };
            let patch = json!({"metadata": {"labels": {DESIGNATION_LABEL: ACTIVE}}});
            if let Ok(pod) = api
                .patch(&next, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                pods.insert(next, pod);
            }
        }
    })
}

/// Deletes the master `rounds` times, each after the Deployment is back to its ready pods, and
/// returns the failover times in milliseconds, and how long each DELETE took to be
/// acknowledged (not in the failover time: the API server's own latency, shown beside it).
async fn rounds(
    client: &Client,
    namespace: &str,
    slices: &mut SliceWatch,
    rounds: usize,
) -> Res<(Vec<f64>, Vec<f64>)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut samples = Vec::with_capacity(rounds);
    let mut deletes = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let master = wait_for(
            &format!(
                "round {round}: one ready master and {} ready pods",
                REPLICAS
            ),
            TIMEOUT,
            Duration::from_millis(50),
            || {
                let pods = pods.clone();
                let current = slices.current();
                async move {
                    let list = pods
                        .list(&Default::default())
                        .await
                        .ctx("listing the failover pods")?;
                    let ready = list.items.iter().filter(|p| eligible(p)).count();
                    Ok((ready >= REPLICAS as usize && current.len() == 1)
                        .then(|| current.into_iter().next().unwrap_or_default()))
                }
            },
        )
        .await?;
        let sent = Instant::now();
        pods.delete(&master, &DeleteParams::default())
            .await
            .ctx(format!("deleting the master {master}"))?;
        let since = Instant::now();
        let (_, seen) = slices.wait_new(&master).await?;
        samples.push(seen.saturating_duration_since(since).as_secs_f64() * 1000.0);
        deletes.push(since.duration_since(sent).as_secs_f64() * 1000.0);
    }
    Ok((samples, deletes))
}

async fn setup(client: &Client, namespace: &str, annotated: bool) -> Res<SliceWatch> {
    crate::populate::create_namespaces(client, &[namespace.to_string()]).await?;
    // Until the namespace's default ServiceAccount exists, admission refuses its pods and the
    // ReplicaSet controller backs off for longer each time; the tests create it too (1bdb75e).
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let account: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "default"}})).ctx("ServiceAccount")?;
    match accounts.create(&PostParams::default(), &account).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(e) => {
            return Err(format!(
                "creating {namespace}'s default ServiceAccount: {e}"
            ));
        }
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    deployments
        .create(&PostParams::default(), &deployment()?)
        .await
        .ctx("creating the failover Deployment")?;
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    services
        .create(&PostParams::default(), &service(annotated)?)
        .await
        .ctx("creating the failover Service")?;
    Ok(SliceWatch::start(client, namespace))
}

/// Failovers per block: the floor and the product take turns, a block each, so that a change in
/// the shared machine's load weighs on both alike.
const BLOCKS: usize = 4;

/// Runs the floor and the product (a `reconcile --watch -A` started here), `count` failovers
/// each, in namespaces of their own, taking turns in [`BLOCKS`] blocks. Both stay up for the
/// whole measurement; neither sees the other's namespace (the floor watches its own pods, the
/// product's per-namespace pod watch is only for namespaces with an active-standby Service).
pub async fn measure(
    client: &Client,
    product: &crate::product::Product,
    count: usize,
) -> Res<Value> {
    say(format!(
        "active-standby failover: {count} master deletions each for the floor and the product, taking turns in {BLOCKS} blocks"
    ));
    let load_start = load_average();
    let (floor_ns, product_ns) = ("bench-failover-floor", "bench-failover");
    let outcome = async {
        let mut floor_slices = setup(client, floor_ns, false).await?;
        let mut product_slices = setup(client, product_ns, true).await?;
        let _floor = AbortOnDrop(start_floor(client, floor_ns));
        let watcher = product.start_watcher("failover").await?;
        let mut floor = (Vec::new(), Vec::new());
        let mut ours = (Vec::new(), Vec::new());
        let per_block = count.div_ceil(BLOCKS);
        let mut outcome = Ok(());
        for block in 0..BLOCKS {
            let n = per_block.min(count - (block * per_block).min(count));
            if n == 0 {
                break;
            }
            let step = async {
                let (s, d) = rounds(client, floor_ns, &mut floor_slices, n).await?;
                floor.0.extend(s);
                floor.1.extend(d);
                let (s, d) = rounds(client, product_ns, &mut product_slices, n).await?;
                ours.0.extend(s);
                ours.1.extend(d);
                Res::Ok(())
            };
            if let Err(e) = step.await {
                outcome = Err(e);
                break;
            }
        }
        let log = watcher.log_text();
        watcher.stop().await;
        outcome.map_err(|e| format!("{e}\nwatcher log:\n{}", crate::product::tail(&log, 20)))?;
        Res::Ok((floor, ours, log))
    }
    .await;
    delete_namespace(client, floor_ns).await;
    delete_namespace(client, product_ns).await;
    let ((floor_samples, floor_deletes), (samples, deletes), log) = outcome?;

    let max = |s: &[f64]| round(s.iter().cloned().fold(0.0, f64::max), 1);
    let (p50, p90, p99) = (
        percentile(&samples, 50.0),
        percentile(&samples, 90.0),
        percentile(&samples, 99.0),
    );
    let (floor_p50, floor_p90, floor_p99) = (
        percentile(&floor_samples, 50.0),
        percentile(&floor_samples, 90.0),
        percentile(&floor_samples, 99.0),
    );
    Ok(json!({
        "failovers": count,
        "p50_ms": round(p50, 1),
        "p90_ms": round(p90, 1),
        "p99_ms": round(p99, 1),
        "max_ms": max(&samples),
        "floor_p50_ms": round(floor_p50, 1),
        "floor_p90_ms": round(floor_p90, 1),
        "floor_p99_ms": round(floor_p99, 1),
        "floor_max_ms": max(&floor_samples),
        "ratio_p50": round(p50 / floor_p50, 2),
        "ratio_p90": round(p90 / floor_p90, 2),
        "ratio_p99": round(p99 / floor_p99, 2),
        "load": format!("{load_start} -> {}", load_average()),
        // The product's failed reconciles (each retried), e.g. a label write that lost a race.
        "watcher_warnings": log.lines().filter(|l| l.contains("reconcile failed")).count(),
        "samples_ms": samples.iter().map(|v| round(*v, 1)).collect::<Vec<_>>(),
        "floor_samples_ms": floor_samples.iter().map(|v| round(*v, 1)).collect::<Vec<_>>(),
        "delete_ack_ms": deletes.iter().map(|v| round(*v, 1)).collect::<Vec<_>>(),
        "floor_delete_ack_ms": floor_deletes.iter().map(|v| round(*v, 1)).collect::<Vec<_>>(),
    }))
}

/// Aborts the task when dropped (also when the measurement fails).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Deletes a namespace of this measurement (without waiting), so that no later measurement's
/// watcher finds its Service.
async fn delete_namespace(client: &Client, namespace: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    if let Err(e) = api.delete(namespace, &DeleteParams::default()).await {
        say(format!(
            "active-standby failover: deleting {namespace}: {e}"
        ));
    }
}

/// The table of the report.
pub fn table(results: &Value) -> Option<(String, Vec<String>, Vec<Vec<String>>)> {
    let f = &results["standby"];
    if !f.is_object() {
        return None;
    }
    let cell = |key: &str| crate::report::fmt(&f[key]);
    let row = |label: &str, prefix: &str| -> Vec<String> {
        let mut row = vec![label.to_string()];
        for key in ["p50_ms", "p90_ms", "p99_ms", "max_ms"] {
            row.push(cell(&format!("{prefix}{key}")));
        }
        row
    };
    let mut ratio = vec!["ratio".to_string()];
    for key in ["ratio_p50", "ratio_p90", "ratio_p99"] {
        ratio.push(cell(key));
    }
    ratio.push(String::new());
    Some((
        format!(
            "Active-standby failover (master DELETE acknowledged -> the new master alone and ready in the Service's EndpointSlices), {} each",
            cell("failovers")
        ),
        ["", "p50 ms", "p90 ms", "p99 ms", "max ms"]
            .map(String::from)
            .to_vec(),
        vec![
            row("kubectl-hsd reconcile --watch", ""),
            row("floor (label moved by a bare pod watch)", "floor_"),
            ratio,
        ],
    ))
}

pub fn goals(results: &Value) -> Vec<Goal> {
    let f = &results["standby"];
    let mut goals = Vec::new();
    if let (Some(p99), Some(floor)) = (f["p99_ms"].as_f64(), f["floor_p99_ms"].as_f64()) {
        goals.push(Goal {
            name: format!("active-standby failover p99 ({} failovers)", f["failovers"]),
            target: "<= 2x the floor's p99".into(),
            value: format!("{:.2}x ({p99:.1} / {floor:.1} ms)", p99 / floor),
            met: Some(p99 <= 2.0 * floor),
        });
    }
    goals
}
