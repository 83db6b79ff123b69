//! The HotStandbyJob figures (#14), each next to a floor measured in the same run:
//!
//! 1. **Exec probes per second** at the default concurrency (`Prober::probe_all`, 16 exec probes
//!    in flight) against a bare kube-rs exec loop (`Api::<Pod>::exec` at the same concurrency,
//!    reading the same status) on the same pods. Rounds alternate between the two, so a change
//!    in background load weighs on both alike. Goal: the product >= 0.9x the bare loop.
//! 2. **Busy flip to a new standby Job**: from the acknowledged PATCH of a worker's busy
//!    annotation to this benchmark's own Job watch delivering the new Job. The product is a
//!    `reconcile --watch -n <ns>` of the release binary; the floor is an in-process kube-rs
//!    client that watches the pods and POSTs a Job when one turns busy. Goal: product p99 <=
//!    1.5x the floor's p99.
//!
//! Everything runs in namespaces of its own (`bench-hsj-flip`, `bench-hsj-exec`), after the HSD
//! measurements, and is deleted at the end. kwok runs every exec on this machine in the pod's
//! own work dir under `target/bench-work/exec/`: nothing leaves 127.0.0.0/8.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{
    AttachParams, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use kubectl_hsd::observe::exec::ExecTarget;
use kubectl_hsd::observe::probe::{DEFAULT_CONCURRENCY, DEFAULT_EXEC_CONCURRENCY, Prober};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

use crate::product::{Product, http_get, tail};
use crate::report::Goal;
use crate::util::{Context, Res, median, percentile, round, say, wait_for};

const FLIP_NS: &str = "bench-hsj-flip";
const EXEC_NS: &str = "bench-hsj-exec";
const KEEP_RUNNING: &str = "hsd-test/keep-running";

struct Sizes {
    /// Workers probed by exec.
    workers: usize,
    /// Rounds of each exec loop.
    rounds: usize,
    /// Standby workers of the flip measurement.
    standby: usize,
    /// Busy flips measured for the product and for the floor.
    flips: usize,
    /// Blocks the flips are split in (floor and product take turns).
    blocks: usize,
}

fn sizes(quick: bool) -> Sizes {
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(default)
    };
    Sizes {
        workers: env("HSD_BENCH_HSJ_WORKERS", if quick { 48 } else { 100 }),
        rounds: env("HSD_BENCH_HSJ_ROUNDS", if quick { 4 } else { 6 }),
        standby: 5,
        flips: env("HSD_BENCH_HSJ_FLIPS", if quick { 40 } else { 120 }),
        blocks: if quick { 1 } else { 2 },
    }
}

fn hsj(name: &str, namespace: &str, idle_target: usize, probe: Value) -> Value {
    json!({
        "apiVersion": "apps.paia.tech/v1alpha1",
        "kind": "HotStandbyJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "idleTarget": idle_target,
            "maxReplicas": idle_target * 2 + 10,
            "scaleDownDelaySeconds": 0,
            "selector": {"matchLabels": {"app": name}},
            "jobTemplate": {
                "backoffLimit": 0,
                "template": {
                    "metadata": {"labels": {"app": name, KEEP_RUNNING: "true"}},
                    "spec": {"containers": [{"name": "worker", "image": "registry.invalid/worker:1"}]},
                },
            },
            "busyProbe": probe,
        },
    })
}

async fn create_namespace(client: &Client, name: &str) -> Res<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("a namespace");
    match namespaces.create(&PostParams::default(), &namespace).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(error) => Err(format!("creating namespace {name}: {error}")),
    }
}

async fn create(client: &Client, namespace: &str, manifest: Value) -> Res<()> {
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        namespace,
        &kubectl_hsd::observe::jobs::hsj_resource(),
    );
    let object: DynamicObject = serde_json::from_value(manifest).ctx("an HSJ manifest")?;
    api.create(&PostParams::default(), &object)
        .await
        .ctx("creating a HotStandbyJob")?;
    Ok(())
}

/// Waits until `n` pods labelled `app=<app>` run and are ready; returns their names.
async fn running(client: &Client, namespace: &str, app: &str, n: usize) -> Res<Vec<String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = format!("app={app}");
    wait_for(
        &format!("{n} running workers of {app}"),
        Duration::from_secs(120) + Duration::from_millis(200) * n as u32,
        Duration::from_millis(250),
        || async {
            let list = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .ctx("listing pods")?;
            let running: Vec<String> = list
                .items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .map(|p| p.name_any())
                .collect();
            Ok((running.len() == n).then_some(running))
        },
    )
    .await
}

/// Runs both measurements; returns the `hsj` part of the results.
pub async fn measure(
    quick: bool,
    client: &Client,
    product: &Product,
    kubeconfig: &Path,
    work: &Path,
) -> Res<Value> {
    let sizes = sizes(quick);
    let flip = flips(&sizes, client, product, kubeconfig, work).await;
    let exec = exec_throughput(&sizes, client, product, work).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for name in [FLIP_NS, EXEC_NS] {
        let _ = namespaces.delete(name, &DeleteParams::background()).await;
    }
    Ok(json!({"flip": flip?, "exec": exec?}))
}

// ---------------------------------------------------------------------------------------------
// Exec probes per second.

/// A kwok Exec per pod (its own work dir), half of them with a busy_state file.
async fn give_execs(client: &Client, pods: &[String], work: &Path) -> Res<Vec<PathBuf>> {
    let resource = kube::api::ApiResource {
        group: "kwok.x-k8s.io".into(),
        version: "v1alpha1".into(),
        api_version: "kwok.x-k8s.io/v1alpha1".into(),
        kind: "Exec".into(),
        plural: "execs".into(),
    };
    let execs: Api<DynamicObject> = Api::namespaced_with(client.clone(), EXEC_NS, &resource);
    let mut dirs = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        let dir = work.join("exec").join(pod);
        std::fs::create_dir_all(&dir).ctx(format!("creating {}", dir.display()))?;
        if i % 2 == 0 {
            std::fs::write(dir.join("busy_state"), "busy\n").ctx("writing busy_state")?;
        }
        let exec: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Exec",
            "metadata": {"name": pod, "namespace": EXEC_NS},
            "spec": {"execs": [{"local": {"workDir": dir}}]},
        }))
        .ctx("an Exec")?;
        match execs.create(&PostParams::default(), &exec).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(error) => return Err(format!("creating kwok's Exec for {pod}: {error}")),
        }
        dirs.push(dir);
    }
    Ok(dirs)
}

/// One exec of `cat busy_state` the way a bare kube-rs client does it: the status is the
/// answer (Success, or a Failure with the exit code).
async fn bare_exec(pods: &Api<Pod>, pod: &str) -> Result<bool, String> {
    let params = AttachParams::default().stdout(true).stderr(true);
    let mut attached = pods
        .exec(pod, ["cat", "busy_state"], &params)
        .await
        .map_err(|e| e.to_string())?;
    let status = attached.take_status().ok_or("no status")?;
    let drain = |reader: Option<tokio::io::ReadHalf<tokio::io::SimplexStream>>| async move {
        if let Some(mut reader) = reader {
            let mut sink = Vec::new();
            let _ = reader.read_to_end(&mut sink).await;
        }
    };
    let (_, _, status) = tokio::join!(drain(attached.stdout()), drain(attached.stderr()), status);
    let status = status.ok_or("the stream closed without a status")?;
    Ok(status.status.as_deref() == Some("Success"))
}

async fn exec_throughput(
    sizes: &Sizes,
    client: &Client,
    product: &Product,
    work: &Path,
) -> Res<Value> {
    say(format!(
        "HSJ exec probes: {} workers, {} rounds each of the product and a bare kube-rs loop, concurrency {DEFAULT_EXEC_CONCURRENCY}",
        sizes.workers, sizes.rounds
    ));
    create_namespace(client, EXEC_NS).await?;
    let probe =
        json!({"mode": "exec", "exec": {"command": ["cat", "busy_state"], "timeoutSeconds": 5}});
    create(client, EXEC_NS, hsj("x", EXEC_NS, sizes.workers, probe)).await?;
    product
        .run(&["reconcile", "-n", EXEC_NS], Duration::from_secs(300))
        .await?;
    let pods = running(client, EXEC_NS, "x", sizes.workers).await?;
    give_execs(client, &pods, work).await?;
    let targets: Vec<(usize, ExecTarget)> = pods
        .iter()
        .enumerate()
        .map(|(i, pod)| {
            (
                i,
                ExecTarget {
                    namespace: EXEC_NS.into(),
                    pod: pod.clone(),
                    container: None,
                    command: vec!["cat".into(), "busy_state".into()],
                    timeout: Duration::from_secs(5),
                },
            )
        })
        .collect();
    let prober =
        Prober::new(DEFAULT_CONCURRENCY).with_exec(client.clone(), DEFAULT_EXEC_CONCURRENCY);
    let api: Api<Pod> = Api::namespaced(client.clone(), EXEC_NS);
    // Warm up both (kwok learns every Exec; connections are made).
    let warm = prober.probe_all(targets.clone()).await;
    let unanswered = warm
        .iter()
        .filter(|(_, r)| r.outcome.succeeded().is_none())
        .count();
    if unanswered > 0 {
        // kwok picks new Execs up from its watch: give it a moment, then require answers.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let product_round = || async {
        let started = Instant::now();
        let answers = prober.probe_all(targets.clone()).await;
        let elapsed = started.elapsed().as_secs_f64();
        let busy = answers
            .iter()
            .filter(|(_, r)| r.outcome.succeeded() == Some(true))
            .count();
        let errors = answers
            .iter()
            .filter(|(_, r)| r.outcome.succeeded().is_none())
            .count();
        (answers.len() as f64 / elapsed, busy, errors)
    };
    let bare_round = || async {
        let started = Instant::now();
        let answers: Vec<Result<bool, String>> = futures::stream::iter(pods.clone())
            .map(|pod| {
                let api = api.clone();
                async move { bare_exec(&api, &pod).await }
            })
            .buffer_unordered(DEFAULT_EXEC_CONCURRENCY)
            .collect()
            .await;
        let elapsed = started.elapsed().as_secs_f64();
        let busy = answers.iter().filter(|a| matches!(a, Ok(true))).count();
        let errors = answers.iter().filter(|a| a.is_err()).count();
        (answers.len() as f64 / elapsed, busy, errors)
    };
    let _ = bare_round().await;
    let mut product_rates = Vec::new();
    let mut bare_rates = Vec::new();
    let mut errors = (0, 0);
    let mut busy = (0, 0);
    for round in 0..sizes.rounds {
        // Alternate which goes first.
        let (p, b) = if round % 2 == 0 {
            let p = product_round().await;
            (p, bare_round().await)
        } else {
            let b = bare_round().await;
            (product_round().await, b)
        };
        say(format!(
            "  round {}: product {:.1}/s, bare loop {:.1}/s",
            round + 1,
            p.0,
            b.0
        ));
        product_rates.push(p.0);
        bare_rates.push(b.0);
        errors.0 += p.2;
        errors.1 += b.2;
        busy = (p.1, b.1);
    }
    // The same pods through a one-shot pass of the binary: list, probe, plan, status.
    let output = tokio::process::Command::new(&product.binary)
        .args(["reconcile", "-n", EXEC_NS, "--stats"])
        .env("KUBECONFIG", &product.kubeconfig)
        .stdin(Stdio::null())
        .output()
        .await
        .ctx("running a one-shot pass")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stats = stderr.lines().rev().find(|l| l.starts_with("stats: "));
    let number_before = |line: &str, marker: &str| -> Option<f64> {
        let head = &line[..line.find(marker)?];
        head.rsplit(|c: char| !(c.is_ascii_digit() || c == '.'))
            .find(|s| !s.is_empty())?
            .parse()
            .ok()
    };
    let pass = stats.and_then(|line| {
        let probed = number_before(line, " pods probed")?;
        let seconds: f64 = line
            .rsplit(", ")
            .next()?
            .trim_end_matches('s')
            .parse()
            .ok()?;
        Some((probed, seconds))
    });
    let product_median = median(&product_rates);
    let bare_median = median(&bare_rates);
    say(format!(
        "HSJ exec probes: product {product_median:.1}/s, bare kube-rs loop {bare_median:.1}/s ({:.2}x)",
        product_median / bare_median
    ));
    Ok(json!({
        "workers": sizes.workers,
        "concurrency": DEFAULT_EXEC_CONCURRENCY,
        "per_second": round(product_median, 1),
        "bare_per_second": round(bare_median, 1),
        "ratio": round(product_median / bare_median, 2),
        "rounds_per_second": product_rates.iter().map(|v| round(*v, 1)).collect::<Vec<_>>(),
        "bare_rounds_per_second": bare_rates.iter().map(|v| round(*v, 1)).collect::<Vec<_>>(),
        "busy_answers": {"product": busy.0, "bare": busy.1},
        "errors": {"product": errors.0, "bare": errors.1},
        "pass_probed": pass.map(|p| p.0),
        "pass_seconds": pass.map(|p| round(p.1, 3)),
        "pass_per_second": pass.map(|(n, s)| round(n / s, 1)),
        "pass_stats": stats.map(str::to_string),
        "method": "Prober::probe_all (exec) vs Api::<Pod>::exec in buffer_unordered, same pods, alternating rounds",
    }))
}

// ---------------------------------------------------------------------------------------------
// Busy flip to a new standby Job.

/// The Jobs of the flip namespace, as the benchmark's own watch sees them: when each Job was
/// first seen, by uid (the product names its Jobs by index and reuses a freed name, so a name
/// seen before can be a new Job).
struct JobWatch {
    seen: Arc<Mutex<HashMap<String, Instant>>>,
    live: Arc<Mutex<HashSet<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl JobWatch {
    async fn start(client: &Client) -> Res<Self> {
        let jobs: Api<Job> = Api::namespaced(client.clone(), FLIP_NS);
        let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let live: Arc<Mutex<HashSet<String>>> = Arc::default();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (s, l) = (seen.clone(), live.clone());
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut events = watcher(jobs, watcher::Config::default()).boxed();
            while let Some(event) = events.next().await {
                let now = Instant::now();
                match event {
                    Ok(watcher::Event::Apply(job) | watcher::Event::InitApply(job)) => {
                        let uid = job.uid().unwrap_or_default();
                        s.lock().unwrap().entry(uid.clone()).or_insert(now);
                        let finished = job.metadata.deletion_timestamp.is_some();
                        let mut live = l.lock().unwrap();
                        if finished {
                            live.remove(&uid);
                        } else {
                            live.insert(uid);
                        }
                    }
                    Ok(watcher::Event::Delete(job)) => {
                        l.lock().unwrap().remove(&job.uid().unwrap_or_default());
                    }
                    Ok(watcher::Event::InitDone) => {
                        if let Some(ready) = ready.take() {
                            let _ = ready.send(());
                        }
                    }
                    _ => {}
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(30), ready_rx)
            .await
            .map_err(|_| "the Job watch did not sync".to_string())?
            .map_err(|_| "the Job watch stopped".to_string())?;
        Ok(Self { seen, live, task })
    }

    fn live(&self) -> usize {
        self.live.lock().unwrap().len()
    }

    /// When the first Job not in `before` was seen, waiting up to `timeout`.
    async fn new_job(&self, before: &HashSet<String>, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self
                .seen
                .lock()
                .unwrap()
                .iter()
                .filter(|(name, _)| !before.contains(*name))
                .map(|(_, at)| *at)
                .min();
            if found.is_some() {
                return found;
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The uids of every Job seen so far.
    fn uids(&self) -> HashSet<String> {
        self.seen.lock().unwrap().keys().cloned().collect()
    }
}

impl Drop for JobWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The floor: a minimal kube-rs client, on a runtime thread of its own, that watches the
/// workers and POSTs a Job as soon as one turns busy (and deletes that Job when it turns idle
/// again).
struct Floor {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Floor {
    fn start(kubeconfig: PathBuf) -> Res<Self> {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Res<()>>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let client = match floor_client(&kubeconfig).await {
                    Ok(client) => client,
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                        return;
                    }
                };
                let pods: Api<Pod> = Api::namespaced(client.clone(), FLIP_NS);
                let jobs: Api<Job> = Api::namespaced(client.clone(), FLIP_NS);
                let mut busy: HashMap<String, Option<String>> = HashMap::new();
                let mut events = watcher(pods, watcher::Config::default().labels("app=f"))
                    .default_backoff()
                    .boxed();
                let mut ready = Some(ready_tx);
                let work = async {
                    while let Ok(Some(event)) = events.try_next().await {
                        let pod = match event {
                            watcher::Event::Apply(pod) => pod,
                            watcher::Event::InitDone => {
                                if let Some(ready) = ready.take() {
                                    let _ = ready.send(Ok(()));
                                }
                                continue;
                            }
                            _ => continue,
                        };
                        let name = pod.name_any();
                        let is_busy = pod.annotations().get("paia.tech/busy").map(String::as_str)
                            == Some("true");
                        let was_busy = busy.get(&name).is_some_and(|job| job.is_some());
                        if is_busy && !was_busy {
                            let job: Job = serde_json::from_value(json!({
                                "metadata": {"generateName": "floor-", "labels": {"floor": "true"}},
                                "spec": {"backoffLimit": 0, "template": {
                                    "metadata": {"labels": {"floor-worker": "true", KEEP_RUNNING: "true"}},
                                    "spec": {"restartPolicy": "Never", "containers": [{"name": "worker", "image": "registry.invalid/worker:1"}]},
                                }},
                            }))
                            .expect("a Job");
                            let created = jobs.create(&PostParams::default(), &job).await.ok();
                            busy.insert(name, created.map(|job| job.name_any()));
                        } else if !is_busy
                            && was_busy
                            && let Some(Some(job)) = busy.insert(name, None)
                        {
                            let _ = jobs.delete(&job, &DeleteParams::background()).await;
                        }
                    }
                };
                tokio::select! {
                    _ = work => {}
                    _ = stop_rx => {}
                }
            });
        });
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(())) => Ok(Self {
                stop: Some(stop_tx),
                thread: Some(thread),
            }),
            Ok(Err(error)) => Err(error),
            Err(_) => Err("the floor did not start".into()),
        }
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn floor_client(kubeconfig: &Path) -> Res<Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig).ctx("the kubeconfig")?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .ctx("loading the kubeconfig")?;
    kubectl_hsd::client::nodelay_client(config).map_err(|e| format!("building a client: {e}"))
}

/// A `reconcile --watch` of the release binary over the flip namespace only.
struct HsjWatcher {
    child: tokio::process::Child,
    addr: String,
    log: PathBuf,
}

impl HsjWatcher {
    async fn start(product: &Product, work: &Path) -> Res<Self> {
        let log = work.join("watch-hsj.log");
        let file = std::fs::File::create(&log).ctx("creating the watcher's log")?;
        let child = tokio::process::Command::new(&product.binary)
            .args([
                "reconcile",
                "--watch",
                "-n",
                FLIP_NS,
                "--metrics-addr",
                "127.0.0.1:0",
                "--leader-elect=false",
            ])
            .env("KUBECONFIG", &product.kubeconfig)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .ctx("spawning kubectl-hsd reconcile --watch")?;
        let mut watcher = Self {
            child,
            addr: String::new(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&watcher.log).unwrap_or_default();
            if let Some(addr) = text
                .lines()
                .find_map(|l| l.strip_prefix("serving /metrics, /healthz and /readyz on "))
            {
                watcher.addr = addr.trim().to_string();
                break;
            }
            if let Ok(Some(status)) = watcher.child.try_wait() {
                return Err(format!(
                    "the watcher exited ({status}):\n{}",
                    tail(&text, 20)
                ));
            }
            if Instant::now() > deadline {
                return Err(format!("the watcher did not start:\n{}", tail(&text, 20)));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Synced: it has reconciled the HSJ (its gauge is there).
        wait_for(
            "the watcher to reconcile the HSJ",
            Duration::from_secs(60),
            Duration::from_millis(200),
            || async {
                let (_, text) = http_get(&watcher.addr, "/metrics").await?;
                Ok(text
                    .lines()
                    .any(|l| l.starts_with("hsd_hsj_desired_jobs{"))
                    .then_some(()))
            },
        )
        .await?;
        Ok(watcher)
    }

    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Flips `count` workers busy one at a time: each sample runs from the acknowledged PATCH to
/// the Job watch seeing a new Job; then the worker is released and the Jobs go back to `base`.
/// The worker is picked each time among the `standby` running ones: the product's scale-down
/// may delete any idle worker, not the one it made last.
async fn flip_series(
    client: &Client,
    watch: &JobWatch,
    standby: usize,
    base: usize,
    count: usize,
    what: &str,
) -> Res<(Vec<f64>, usize)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), FLIP_NS);
    let patch =
        |value: &str| Patch::Merge(json!({"metadata": {"annotations": {"paia.tech/busy": value}}}));
    let mut samples = Vec::with_capacity(count);
    let mut timeouts = 0;
    let mut progress = crate::util::Progress::new(what, count as u64);
    for i in 0..count {
        let mut workers = running(client, FLIP_NS, "f", standby).await?;
        workers.sort();
        let pod = &workers[i % workers.len()];
        let before = watch.uids();
        pods.patch(pod, &PatchParams::default(), &patch("true"))
            .await
            .ctx(format!("marking {pod} busy"))?;
        let acknowledged = Instant::now();
        match watch.new_job(&before, Duration::from_secs(10)).await {
            Some(at) => {
                samples.push(at.saturating_duration_since(acknowledged).as_secs_f64() * 1000.0)
            }
            None => timeouts += 1,
        }
        pods.patch(pod, &PatchParams::default(), &patch("false"))
            .await
            .ctx(format!("marking {pod} idle"))?;
        wait_for(
            &format!("the Jobs back to {base}"),
            Duration::from_secs(30),
            Duration::from_millis(20),
            || async { Ok((watch.live() == base).then_some(())) },
        )
        .await?;
        progress.set(i as u64 + 1);
    }
    progress.finish(count as u64);
    Ok((samples, timeouts))
}

async fn flips(
    sizes: &Sizes,
    client: &Client,
    product: &Product,
    kubeconfig: &Path,
    work: &Path,
) -> Res<Value> {
    say(format!(
        "HSJ busy flip -> new Job: {} standby workers, {} flips each for the floor and the product",
        sizes.standby, sizes.flips
    ));
    create_namespace(client, FLIP_NS).await?;
    create(
        client,
        FLIP_NS,
        hsj("f", FLIP_NS, sizes.standby, json!({"mode": "annotation"})),
    )
    .await?;
    product
        .run(&["reconcile", "-n", FLIP_NS], Duration::from_secs(120))
        .await?;
    let workers = running(client, FLIP_NS, "f", sizes.standby).await?;
    // The statuses settle (a pass that writes nothing), then the watch starts.
    product
        .run(&["reconcile", "-n", FLIP_NS], Duration::from_secs(120))
        .await?;
    let watch = JobWatch::start(client).await?;
    let base = watch.live();
    let mut floor_samples = Vec::new();
    let mut samples = Vec::new();
    let mut timeouts = BTreeMap::from([("floor", 0), ("product", 0)]);
    let per_block = sizes.flips.div_ceil(sizes.blocks);
    for block in 0..sizes.blocks {
        let events = per_block.min(sizes.flips - block * per_block);
        let mut floor = Floor::start(kubeconfig.to_path_buf())?;
        let series = flip_series(
            client,
            &watch,
            workers.len(),
            base,
            events,
            &format!("floor flips ({}/{})", block + 1, sizes.blocks),
        )
        .await;
        floor.stop();
        let (mut s, t) = series?;
        floor_samples.append(&mut s);
        *timeouts.get_mut("floor").unwrap() += t;

        let watcher = HsjWatcher::start(product, work).await?;
        let series = flip_series(
            client,
            &watch,
            workers.len(),
            base,
            events,
            &format!("kubectl-hsd flips ({}/{})", block + 1, sizes.blocks),
        )
        .await;
        watcher.stop().await;
        let (mut s, t) = series?;
        samples.append(&mut s);
        *timeouts.get_mut("product").unwrap() += t;
    }
    drop(watch);
    let p = |s: &[f64], q: f64| round(percentile(s, q), 1);
    let value = json!({
        "standby": sizes.standby,
        "samples": samples.len(),
        "p50_ms": p(&samples, 50.0),
        "p99_ms": p(&samples, 99.0),
        "max_ms": p(&samples, 100.0),
        "floor_samples": floor_samples.len(),
        "floor_p50_ms": p(&floor_samples, 50.0),
        "floor_p99_ms": p(&floor_samples, 99.0),
        "floor_max_ms": p(&floor_samples, 100.0),
        "ratio_p99": round(percentile(&samples, 99.0) / percentile(&floor_samples, 99.0), 2),
        "timeouts": timeouts,
        "blocks": sizes.blocks,
        "samples_ms": samples.iter().map(|v| round(*v, 1)).collect::<Vec<_>>(),
        "floor_samples_ms": floor_samples.iter().map(|v| round(*v, 1)).collect::<Vec<_>>(),
        "method": "annotation PATCH acknowledged -> the benchmark's Job watch sees a new Job; product: reconcile --watch -n (release binary); floor: in-process kube-rs pod watch + Job POST",
    });
    say(format!(
        "HSJ flip: p50 {} ms, p99 {} ms; floor p50 {} ms, p99 {} ms",
        value["p50_ms"], value["p99_ms"], value["floor_p50_ms"], value["floor_p99_ms"]
    ));
    Ok(value)
}

/// The table of the report.
pub fn table(results: &Value) -> Option<(String, Vec<String>, Vec<Vec<String>>)> {
    let flip = &results["hsj"]["flip"];
    let exec = &results["hsj"]["exec"];
    if !flip.is_object() && !exec.is_object() {
        return None;
    }
    let cell = |v: &Value| crate::report::fmt(v);
    let mut rows = Vec::new();
    for (label, prefix) in [
        ("busy flip -> new Job: kubectl-hsd --watch", ""),
        ("busy flip -> new Job: floor (watch + POST)", "floor_"),
    ] {
        rows.push(vec![
            label.to_string(),
            cell(&flip[format!("{prefix}samples")]),
            cell(&flip[format!("{prefix}p50_ms")]),
            cell(&flip[format!("{prefix}p99_ms")]),
            cell(&flip[format!("{prefix}max_ms")]),
            cell(
                &flip["timeouts"][if prefix.is_empty() {
                    "product"
                } else {
                    "floor"
                }],
            ),
            String::new(),
        ]);
    }
    for (label, key) in [
        ("exec probes: Prober::probe_all", "per_second"),
        ("exec probes: bare kube-rs exec loop", "bare_per_second"),
    ] {
        rows.push(vec![
            label.to_string(),
            cell(&exec["workers"]),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            cell(&exec[key]),
        ]);
    }
    Some((
        "HotStandbyJob: busy flip -> new standby Job, and exec probes per second".into(),
        [
            "",
            "samples / workers",
            "p50 ms",
            "p99 ms",
            "max ms",
            "timeouts",
            "per second",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    ))
}

/// The goals of the HSJ figures.
pub fn goals(results: &Value) -> Vec<Goal> {
    let mut goals = Vec::new();
    let exec = &results["hsj"]["exec"];
    if let (Some(ratio), Some(product), Some(bare)) = (
        exec["ratio"].as_f64(),
        exec["per_second"].as_f64(),
        exec["bare_per_second"].as_f64(),
    ) {
        goals.push(Goal {
            name: format!(
                "HSJ exec probes/s at the default concurrency ({})",
                exec["concurrency"]
            ),
            target: ">= 0.9x a bare kube-rs exec loop on the same pods".into(),
            value: format!("{ratio:.2}x ({product:.1} vs {bare:.1}/s)"),
            met: Some(ratio >= 0.9),
        });
    }
    let flip = &results["hsj"]["flip"];
    if let (Some(p99), Some(floor)) = (flip["p99_ms"].as_f64(), flip["floor_p99_ms"].as_f64()) {
        goals.push(Goal {
            name: "HSJ busy flip -> new standby Job p99".into(),
            target: "<= 1.5x the floor (watch + create) p99".into(),
            value: format!("{:.2}x ({p99:.1} / {floor:.1} ms)", p99 / floor),
            met: Some(p99 <= 1.5 * floor),
        });
    }
    goals
}
