//! Reaction latency: from a pod's busy-annotation PATCH being acknowledged to this benchmark's
//! own watch seeing the child Deployment's `spec.replicas` change; for the product's watcher
//! (one alone, or a sharded pair) and for the floor (a minimal kube-rs client that watches the
//! same pods and PATCHes a Deployment), taking turns in blocks.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use kubectl_hsd::labels::HSD_LABEL;
use kubectl_hsd::observe::{LeanPod, deployment_resource, pod_resource};

use crate::Bench;
use crate::deployments::DeploymentWatch;
use crate::populate::{BUSY_ANNOTATION, Layout, PODS_PER_HSD, set_busy};
use crate::product::{Watcher, wait_all_decided};
use crate::shards::Pair;
use crate::util::{Context, Progress, Res, load_average, percentile, round, say};

/// Who reacts to the flips.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contender {
    /// One `reconcile --watch -A --leader-elect=false`.
    Single,
    /// Two replicas of `reconcile --watch -A --shards 2`, each leading one shard.
    ShardedPair,
}

/// The product's watcher(s) during one block.
enum Running {
    Single(Box<Watcher>),
    Pair(Pair),
}

/// Reaction of the product and of the floor, `events` flips each over the first `hsds` HSDs,
/// with every HSD of the cluster (`total_hsds`) in the product's caches.
pub async fn measure(
    bench: &Bench<'_>,
    deployments: &mut DeploymentWatch,
    hsds: usize,
    total_hsds: usize,
    events: usize,
    contender: Contender,
) -> Res<Value> {
    say(format!(
        "reaction latency: flips over {hsds} of {total_hsds} HSDs x 20 pods, {events} flips each for the floor and the product ({contender:?})"
    ));
    // Statuses up to date before the watchers start.
    bench.converge().await?;
    let load = load_average();
    // Floor and product take turns in blocks, so that a change in background load (this is a
    // shared 2-core machine) weighs on both alike.
    let blocks = if bench.options.quick { 1 } else { 2 };
    let per_block = events.div_ceil(blocks);
    let mut floor_samples = Samples::default();
    let mut samples = Samples::default();
    let mut syncs = Vec::new();
    let mut memory: HashMap<String, (u64, u64)> = HashMap::new();
    let mut floor_writes = HashMap::new();
    let mut product_writes = HashMap::new();
    let mut watcher_cpu = 0.0;
    // Which replica led each shard (sharded pair), by identity.
    let mut leaders: HashMap<u32, String> = HashMap::new();
    for block in 0..blocks {
        let events = per_block.min(events - block * per_block);
        let mut floor = Floor::start(bench.cluster.kubeconfig.clone()).await?;
        let before = api_write_counters(&bench.client).await?;
        let series = flip_series(
            bench,
            deployments,
            hsds,
            events,
            &format!("floor flips ({}/{blocks})", block + 1),
        )
        .await;
        floor.stop();
        let after = api_write_counters(&bench.client).await?;
        add_delta(&mut floor_writes, &before, &after);
        floor_samples.extend(series?);
        bench.settle().await?;

        let started = Instant::now();
        let mut running = match contender {
            Contender::Single => {
                let mut watcher = bench.product.start_watcher("reaction").await?;
                wait_all_decided(&mut watcher, total_hsds, Duration::from_secs(900)).await?;
                Running::Single(Box::new(watcher))
            }
            Contender::ShardedPair => {
                Running::Pair(Pair::start(bench, "reaction", total_hsds).await?)
            }
        };
        syncs.push(started.elapsed().as_secs_f64());
        say(format!(
            "watcher(s) ready in {:.1}s",
            started.elapsed().as_secs_f64()
        ));
        if let Running::Pair(pair) = &running {
            leaders = pair.leaders(&bench.client).await?;
        }
        bench.settle().await?;
        let before = api_write_counters(&bench.client).await?;
        let watchers: Vec<&mut Watcher> = match &mut running {
            Running::Single(watcher) => vec![watcher],
            Running::Pair(pair) => pair.watchers.iter_mut().collect(),
        };
        let cpu_before: f64 = watchers.iter().filter_map(|w| w.cpu_seconds().ok()).sum();
        let series = flip_series(
            bench,
            deployments,
            hsds,
            events,
            &format!("kubectl-hsd flips ({}/{blocks})", block + 1),
        )
        .await;
        let cpu_after: f64 = watchers.iter().filter_map(|w| w.cpu_seconds().ok()).sum();
        watcher_cpu += cpu_after - cpu_before;
        let after = api_write_counters(&bench.client).await?;
        add_delta(&mut product_writes, &before, &after);
        let mut alive = Ok(());
        for (i, watcher) in watchers.into_iter().enumerate() {
            alive = alive.and(watcher.alive());
            if let Ok(kb) = watcher.memory_kb() {
                memory.insert(watcher.identity.clone().unwrap_or(i.to_string()), kb);
            }
        }
        match running {
            Running::Single(watcher) => watcher.stop().await,
            Running::Pair(pair) => pair.stop().await,
        }
        samples.extend(series?);
        alive?;
        bench.settle().await?;
    }

    let p = |s: &[f64], q: f64| round(percentile(s, q), 1);
    let mut value = json!({
        "contender": format!("{contender:?}"),
        "hsds": hsds,
        "total_hsds": total_hsds,
        "pods": total_hsds * PODS_PER_HSD,
        "samples": samples.all.len(),
        "p50_ms": p(&samples.all, 50.0),
        "p99_ms": p(&samples.all, 99.0),
        "max_ms": p(&samples.all, 100.0),
        "up_p50_ms": p(&samples.up, 50.0),
        "up_p99_ms": p(&samples.up, 99.0),
        "down_p50_ms": p(&samples.down, 50.0),
        "down_p99_ms": p(&samples.down, 99.0),
        "timeouts": samples.timeouts,
        "floor_samples": floor_samples.all.len(),
        "floor_p50_ms": p(&floor_samples.all, 50.0),
        "floor_p99_ms": p(&floor_samples.all, 99.0),
        "floor_max_ms": p(&floor_samples.all, 100.0),
        "floor_up_p50_ms": p(&floor_samples.up, 50.0),
        "floor_up_p99_ms": p(&floor_samples.up, 99.0),
        "floor_down_p50_ms": p(&floor_samples.down, 50.0),
        "floor_down_p99_ms": p(&floor_samples.down, 99.0),
        "floor_timeouts": floor_samples.timeouts,
        "pod_watch_p50_ms": p(&samples.pod_watch, 50.0),
        "pod_watch_p99_ms": p(&samples.pod_watch, 99.0),
        "floor_pod_watch_p50_ms": p(&floor_samples.pod_watch, 50.0),
        "floor_pod_watch_p99_ms": p(&floor_samples.pod_watch, 99.0),
        "ratio_p50": round(percentile(&samples.all, 50.0) / percentile(&floor_samples.all, 50.0), 2),
        "ratio_p99": round(percentile(&samples.all, 99.0) / percentile(&floor_samples.all, 99.0), 2),
        "watcher_ready_seconds": syncs.iter().map(|s| round(*s, 1)).collect::<Vec<_>>(),
        "blocks": blocks,
        "watcher_cpu_ms_per_flip": round(watcher_cpu * 1000.0 / samples.all.len().max(1) as f64, 2),
        "api_writes": {
            "product": per_flip(&product_writes, samples.all.len()),
            "floor": per_flip(&floor_writes, floor_samples.all.len()),
        },
        "samples_ms": samples.all.iter().map(|v| round(*v, 1)).collect::<Vec<_>>(),
        "floor_samples_ms": floor_samples.all.iter().map(|v| round(*v, 1)).collect::<Vec<_>>(),
        "watcher_rss_mb": memory.values().map(|(rss, _)| rss).max().map(|rss| round(*rss as f64 / 1024.0, 1)),
        "load": load,
    });
    if contender == Contender::ShardedPair {
        // Each replica's own flips: those of the HSDs in the shard it led.
        let mut replicas = Vec::new();
        let mut by_leader: Vec<(&u32, &String)> = leaders.iter().collect();
        by_leader.sort();
        for (shard, identity) in by_leader {
            let mine: Vec<f64> = samples
                .all
                .iter()
                .zip(&samples.hsd)
                .filter(|(_, h)| Pair::shard_of(&bench.layout, **h) == *shard)
                .map(|(ms, _)| *ms)
                .collect();
            // The scale-ups alone: a scale-down waits the drain's settle (1 s) by design.
            let mine_up: Vec<f64> = samples
                .all
                .iter()
                .zip(&samples.hsd)
                .zip(&samples.busy)
                .filter(|((_, h), busy)| **busy && Pair::shard_of(&bench.layout, **h) == *shard)
                .map(|((ms, _), _)| *ms)
                .collect();
            let (rss, hwm) = memory.get(identity).copied().unwrap_or_default();
            replicas.push(json!({
                "identity": identity,
                "shard": shard,
                "samples": mine.len(),
                "p50_ms": p(&mine, 50.0),
                "p99_ms": p(&mine, 99.0),
                "up_p99_ms": p(&mine_up, 99.0),
                "rss_mb": round(rss as f64 / 1024.0, 1),
                "hwm_mb": round(hwm as f64 / 1024.0, 1),
            }));
        }
        value["replicas"] = json!(replicas);
    }
    say(format!(
        "reaction: p50 {} ms, p99 {} ms; floor p50 {} ms, p99 {} ms",
        value["p50_ms"], value["p99_ms"], value["floor_p50_ms"], value["floor_p99_ms"]
    ));
    Ok(value)
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
    /// The HSD (index in the layout) of each of `all`.
    pub hsd: Vec<usize>,
    /// Whether each of `all` was a busy flip (replicas up).
    pub busy: Vec<bool>,
    pub timeouts: usize,
}

impl Samples {
    pub fn extend(&mut self, other: Samples) {
        self.all.extend(other.all);
        self.up.extend(other.up);
        self.down.extend(other.down);
        self.pod_watch.extend(other.pod_watch);
        self.hsd.extend(other.hsd);
        self.busy.extend(other.busy);
        self.timeouts += other.timeouts;
    }
}

/// Alternates busy/idle flips over the first `hsds` HSDs (one pod busy, the same pod idle
/// again, then the next HSD), one at a time, each waited for: every flip changes that HSD's
/// replicas by one (20 <-> 21).
async fn flip_series(
    bench: &Bench<'_>,
    deployments: &mut DeploymentWatch,
    hsds: usize,
    events: usize,
    what: &str,
) -> Res<Samples> {
    let (client, tracker, layout) = (&bench.client, &bench.tracker, &bench.layout);
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
                samples.hsd.push(h);
                samples.busy.push(busy);
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

/// The floor: the least any controller can do. One watch on the pods that carry the HSD label
/// (the product's watcher watches the same); on each event that
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
    let events =
        watcher::watcher(pods, watcher::Config::default().labels(HSD_LABEL)).default_backoff();
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
            && pod
                .annotations()
                .get(BUSY_ANNOTATION)
                .is_some_and(|v| v == "true");
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
