//! Reaction latency: from a pod's busy-annotation PATCH being acknowledged to this benchmark's
//! own watch seeing the child Deployment's `spec.replicas` change; for the product's watcher
//! and for the floor (a minimal kube-rs client that watches pods and PATCHes a Deployment).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;

use kubectl_hsd::observe::{LeanDeployment, LeanPod, deployment_resource, pod_resource};

use crate::populate::{Layout, PODS_PER_HSD, PodTracker};
use crate::util::{Context, Progress, Res, say};

const BUSY: &str = "paia.tech/busy";

/// A change of a Deployment's `spec.replicas`, stamped when the watch event arrived.
#[derive(Debug)]
struct ReplicaChange {
    namespace: String,
    name: String,
    replicas: i32,
    at: Instant,
}

/// The benchmark's own watch on the child Deployments.
pub struct DeploymentWatch {
    replicas: Arc<Mutex<HashMap<(String, String), i32>>>,
    changes: mpsc::UnboundedReceiver<ReplicaChange>,
    task: tokio::task::JoinHandle<()>,
}

impl DeploymentWatch {
    pub async fn start(client: &Client) -> Res<Self> {
        let api: Api<LeanDeployment> = Api::all_with(client.clone(), &deployment_resource());
        let replicas = Arc::new(Mutex::new(HashMap::new()));
        let (sender, changes) = mpsc::unbounded_channel();
        let shared = replicas.clone();
        let (synced_tx, synced_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let events = watcher::watcher(
                api,
                watcher::Config::default().labels(kubectl_hsd::labels::HSD_LABEL),
            )
            .default_backoff();
            futures::pin_mut!(events);
            let mut synced = Some(synced_tx);
            loop {
                let event = match events.try_next().await {
                    Ok(Some(event)) => event,
                    Ok(None) => return,
                    Err(error) => {
                        say(format!("deployment watch: {error} (retrying)"));
                        continue;
                    }
                };
                let at = Instant::now();
                let (deployment, initial) = match event {
                    Event::Apply(d) => (d, false),
                    Event::InitApply(d) => (d, true),
                    Event::InitDone => {
                        if let Some(tx) = synced.take() {
                            let _ = tx.send(());
                        }
                        continue;
                    }
                    Event::Init | Event::Delete(_) => continue,
                };
                let key = (
                    deployment.namespace().unwrap_or_default(),
                    deployment.name_any(),
                );
                let Some(value) = deployment.spec.replicas else {
                    continue;
                };
                let previous = shared
                    .lock()
                    .expect("replicas lock")
                    .insert(key.clone(), value);
                if !initial && previous != Some(value) {
                    let _ = sender.send(ReplicaChange {
                        namespace: key.0,
                        name: key.1,
                        replicas: value,
                        at,
                    });
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(120), synced_rx)
            .await
            .map_err(|_| "the deployment watch did not sync within 120s".to_string())?
            .map_err(|_| "the deployment watch stopped".to_string())?;
        Ok(Self {
            replicas,
            changes,
            task,
        })
    }

    pub fn replicas(&self, namespace: &str, name: &str) -> Option<i32> {
        self.replicas
            .lock()
            .expect("replicas lock")
            .get(&(namespace.to_string(), name.to_string()))
            .copied()
    }

    fn drain(&mut self) {
        while self.changes.try_recv().is_ok() {}
    }

    /// Waits for the Deployment to reach `replicas`; returns when the watch saw it.
    async fn wait_change(
        &mut self,
        namespace: &str,
        name: &str,
        replicas: i32,
        timeout: Duration,
    ) -> Option<Instant> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let change = tokio::time::timeout_at(deadline, self.changes.recv())
                .await
                .ok()??;
            if change.namespace == namespace && change.name == name && change.replicas == replicas {
                return Some(change.at);
            }
        }
    }

    /// Waits until each of the first `hsds` Deployments is at `replicas`.
    pub async fn wait_all(
        &self,
        layout: &Layout,
        hsds: usize,
        replicas: i32,
        timeout: Duration,
    ) -> Res<()> {
        crate::util::wait_for(
            &format!("{hsds} Deployments at {replicas} replicas"),
            timeout,
            Duration::from_millis(100),
            || async {
                Ok((0..hsds)
                    .all(|h| {
                        self.replicas(&layout.namespace(h), &Layout::workload(h)) == Some(replicas)
                    })
                    .then_some(()))
            },
        )
        .await
    }
}

impl Drop for DeploymentWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The latencies of one series of flips.
#[derive(Debug, Default)]
pub struct Samples {
    /// Every event, ms.
    pub all: Vec<f64>,
    /// Busy flips (replicas up), ms.
    pub up: Vec<f64>,
    /// Idle flips (replicas down), ms.
    pub down: Vec<f64>,
    /// PATCH acknowledged -> the benchmark's own pod watch delivered the flip, ms: the part of
    /// the latency that is the API server's watch delivery, common to every controller.
    pub pod_watch: Vec<f64>,
    pub timeouts: usize,
}

impl Samples {
    pub fn extend(&mut self, other: Samples) {
        self.all.extend(other.all);
        self.up.extend(other.up);
        self.down.extend(other.down);
        self.pod_watch.extend(other.pod_watch);
        self.timeouts += other.timeouts;
    }
}

async fn set_busy(client: &Client, namespace: &str, pod: &str, busy: bool) -> Res<()> {
    let api: Api<LeanPod> = Api::namespaced_with(client.clone(), namespace, &pod_resource());
    let patch = json!({"metadata": {"annotations": {BUSY: if busy { "true" } else { "false" }}}});
    api.patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .ctx(format!("patching pod {namespace}/{pod}"))?;
    Ok(())
}

/// Alternates busy/idle flips over the first `hsds` HSDs (one pod busy, the same pod idle
/// again, then the next HSD), one at a time, each waited for: every flip changes that HSD's
/// replicas by one (20 <-> 21).
pub async fn flip_series(
    client: &Client,
    tracker: &PodTracker,
    deployments: &mut DeploymentWatch,
    layout: &Layout,
    hsds: usize,
    events: usize,
    what: &str,
) -> Res<Samples> {
    let idle = PODS_PER_HSD as i32;
    deployments
        .wait_all(layout, hsds, idle, Duration::from_secs(120))
        .await?;
    let mut busy_pod: Vec<Option<String>> = vec![None; hsds];
    let mut samples = Samples::default();
    let mut progress = Progress::new(what, events as u64);
    let timeout = Duration::from_secs(15);
    for i in 0..events {
        // Busy then idle on one HSD, then the next HSD: every block has as many ups as downs.
        let h = (i / 2) % hsds;
        let namespace = layout.namespace(h);
        let app = Layout::name(h);
        let workload = Layout::workload(h);
        let (pod, busy, expected) = match busy_pod[h].take() {
            Some(pod) => (pod, false, idle),
            None => {
                let pod = tracker
                    .pods_of(&namespace, &app)
                    .into_iter()
                    .find(|p| p.ready && !p.busy)
                    .ok_or_else(|| format!("no ready idle pod of {namespace}/{app}"))?;
                busy_pod[h] = Some(pod.name.clone());
                (pod.name, true, idle + 1)
            }
        };
        deployments.drain();
        set_busy(client, &namespace, &pod, busy).await?;
        let acknowledged = Instant::now();
        match deployments
            .wait_change(&namespace, &workload, expected, timeout)
            .await
        {
            Some(seen) => {
                let ms = seen.saturating_duration_since(acknowledged).as_secs_f64() * 1000.0;
                samples.all.push(ms);
                if let Some(pod_seen) = tracker.busy_seen(&namespace, &pod, busy) {
                    samples.pod_watch.push(
                        pod_seen
                            .saturating_duration_since(acknowledged)
                            .as_secs_f64()
                            * 1000.0,
                    );
                }
                if busy {
                    samples.up.push(ms);
                } else {
                    samples.down.push(ms);
                }
            }
            None => {
                samples.timeouts += 1;
                say(format!(
                    "{what}: {namespace}/{workload} did not reach {expected} replicas within {timeout:?} after {pod} went {}",
                    if busy { "busy" } else { "idle" }
                ));
                if samples.timeouts > 5 {
                    return Err(format!("{what}: more than 5 flips never landed"));
                }
            }
        }
        progress.set(i as u64 + 1);
    }
    progress.finish(events as u64);
    // Back to all idle (not measured).
    for (h, pod) in busy_pod.iter().enumerate() {
        if let Some(pod) = pod {
            set_busy(client, &layout.namespace(h), pod, false).await?;
        }
    }
    deployments
        .wait_all(layout, hsds, idle, Duration::from_secs(60))
        .await?;
    Ok(samples)
}

/// The floor: the least any controller can do. One watch on all pods; on each event that
/// changes an HSD's busy count, one merge PATCH of `spec.replicas` (idleTarget + busy). It runs
/// on its own thread and runtime, like a separate process.
pub struct Floor {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Res<()>>>,
}

impl Floor {
    pub async fn start(kubeconfig: PathBuf) -> Res<Self> {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("floor".into())
            .spawn(move || -> Res<()> {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .ctx("floor runtime")?;
                runtime.block_on(async move {
                    let cluster =
                        crate::cluster::Cluster::existing(std::path::Path::new("."), &kubeconfig);
                    let client = cluster.client().await?;
                    tokio::select! {
                        result = floor_loop(client, ready_tx) => result,
                        _ = stop_rx => Ok(()),
                    }
                })
            })
            .ctx("floor thread")?;
        let mut floor = Self {
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        if tokio::time::timeout(Duration::from_secs(120), ready_rx)
            .await
            .is_err()
        {
            floor.stop();
            return Err("the floor client did not sync within 120s".into());
        }
        Ok(floor)
    }

    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            match thread.join() {
                Ok(Err(error)) => say(format!("floor client: {error}")),
                Err(_) => say("floor client panicked"),
                Ok(Ok(())) => {}
            }
        }
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn floor_loop(client: Client, ready: tokio::sync::oneshot::Sender<()>) -> Res<()> {
    let pods: Api<LeanPod> = Api::all_with(client.clone(), &pod_resource());
    let events = watcher::watcher(pods, watcher::Config::default()).default_backoff();
    futures::pin_mut!(events);
    let mut busy: HashMap<(String, String), HashSet<String>> = HashMap::new();
    let mut applied: HashMap<(String, String), i32> = HashMap::new();
    let mut ready = Some(ready);
    let params = PatchParams::default();
    loop {
        let event = match events.try_next().await {
            Ok(Some(event)) => event,
            Ok(None) => return Ok(()),
            Err(error) => {
                say(format!("floor watch: {error} (retrying)"));
                continue;
            }
        };
        let (pod, live, initial) = match event {
            Event::Apply(pod) => (pod, true, false),
            Event::Delete(pod) => (pod, false, false),
            Event::InitApply(pod) => (pod, true, true),
            Event::Init => continue,
            Event::InitDone => {
                for (key, pods) in &busy {
                    applied.insert(key.clone(), PODS_PER_HSD as i32 + pods.len() as i32);
                }
                if let Some(ready) = ready.take() {
                    let _ = ready.send(());
                }
                continue;
            }
        };
        let Some(app) = pod.labels().get("app").cloned() else {
            continue;
        };
        let key = (pod.namespace().unwrap_or_default(), app);
        let is_busy = live
            && pod.metadata.deletion_timestamp.is_none()
            && pod.annotations().get(BUSY).is_some_and(|v| v == "true");
        let set = busy.entry(key.clone()).or_default();
        if is_busy {
            set.insert(pod.name_any());
        } else {
            set.remove(&pod.name_any());
        }
        let desired = PODS_PER_HSD as i32 + set.len() as i32;
        if initial || applied.get(&key) == Some(&desired) {
            continue;
        }
        applied.insert(key.clone(), desired);
        let deployments: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &key.0, &deployment_resource());
        let patch = json!({"spec": {"replicas": desired}});
        if let Err(error) = deployments
            .patch(
                &format!("{}-workload", key.1),
                &params,
                &Patch::Merge(&patch),
            )
            .await
        {
            say(format!(
                "floor: patching {}/{}-workload: {error}",
                key.0, key.1
            ));
        }
    }
}

/// The API server's own request latency counters for writes, by "VERB resource[/subresource]":
/// (count, total seconds). Read from its /metrics, before and after a series, to show which
/// writes a series made and what each cost the server.
pub async fn api_write_counters(client: &Client) -> Res<HashMap<String, (f64, f64)>> {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .ctx("metrics request")?;
    let text = client
        .request_text(request)
        .await
        .ctx("reading the API server's /metrics")?;
    let mut counters: HashMap<String, (f64, f64)> = HashMap::new();
    for line in text.lines() {
        let (is_sum, rest) = if let Some(rest) =
            line.strip_prefix("apiserver_request_duration_seconds_sum{")
        {
            (true, rest)
        } else if let Some(rest) = line.strip_prefix("apiserver_request_duration_seconds_count{") {
            (false, rest)
        } else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| -> &str {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")[..]))
                .map_or("", |v| v.trim_end_matches('"'))
        };
        let verb = label("verb");
        if !["APPLY", "PATCH", "POST", "PUT", "DELETE"].contains(&verb) {
            continue;
        }
        let mut key = format!("{verb} {}", label("resource"));
        if !label("subresource").is_empty() {
            key = format!("{key}/{}", label("subresource"));
        }
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let entry = counters.entry(key).or_default();
        if is_sum {
            entry.1 += value;
        } else {
            entry.0 += value;
        }
    }
    Ok(counters)
}

/// Adds the writes between two counter readings to `total`.
pub fn add_delta(
    total: &mut HashMap<String, (f64, f64)>,
    before: &HashMap<String, (f64, f64)>,
    after: &HashMap<String, (f64, f64)>,
) {
    for (key, (count, sum)) in after {
        let (count0, sum0) = before.get(key).copied().unwrap_or_default();
        let entry = total.entry(key.clone()).or_default();
        entry.0 += count - count0;
        entry.1 += sum - sum0;
    }
}

/// Writes per flip and their mean server latency: {"VERB resource": {"per_flip", "mean_ms"}}.
pub fn per_flip(total: &HashMap<String, (f64, f64)>, flips: usize) -> serde_json::Value {
    let mut keys: Vec<&String> = total.keys().collect();
    keys.sort();
    let mut out = serde_json::Map::new();
    for key in keys {
        let (n, sum) = total[key];
        if n < 0.5 {
            continue;
        }
        out.insert(
            key.clone(),
            json!({
                "per_flip": crate::util::round(n / flips.max(1) as f64, 2),
                "mean_ms": crate::util::round(sum / n * 1000.0, 1),
            }),
        );
    }
    serde_json::Value::Object(out)
}
