//! The kubectl-hsd benchmark (`cargo bench --bench hsd -- [--quick]`, or `hack/bench.sh`).
//!
//! It starts its own local control plane (hack/cluster.sh, cluster dir target/bench-cluster),
//! fills it with HotStandbyDeployments of 20 pods, and measures the release binary
//! `target/release/kubectl-hsd` (spawned, so that time, memory and API requests are its own):
//!
//! 1. reaction latency of `reconcile --watch` (busy-annotation PATCH acknowledged -> the child
//!    Deployment's new replicas seen on this benchmark's own watch), next to a floor client;
//! 2. one-shot pass cost (wall time, API requests, writes of a pass with nothing to change,
//!    peak RSS) at 100, 1,000, 10,000 and 20,000 pods;
//! 3. watch-mode memory after sync at the largest size;
//! 4. HTTP probe throughput against servers bound on the pods' loopback IPs, and the delay one
//!    never-answering server adds to the others.
//!
//! Results: a table on stdout, bench/results/latest.{json,md}. See bench/README.md.

mod cluster;
mod failover;
mod populate;
mod probes;
mod product;
mod reaction;
mod report;
mod util;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::populate::{Layout, PODS_PER_HSD, PROBE_NAMESPACE, PodTracker};
use crate::product::Product;
use crate::report::Goal;
use crate::util::{Context, Res, median, percentile, round, say};

const USAGE: &str =
    "usage: cargo bench --bench hsd -- [--quick] [--sizes N,N,..] [--reaction-hsds N] [--events N]
       [--probe-pods N] [--kubeconfig PATH] [--keep-cluster] [--out DIR]
  --quick           reduced run (100 and 1,000 pods, 20 HSDs x 50 events): under 5 minutes
  --sizes           pod counts of the one-shot pass measurements (multiples of 20)
  --reaction-hsds   HSDs of 20 pods present for the reaction measurement
  --events          busy/idle flips measured for the product and for the floor
  --probe-pods      pods with an HTTP server for the probe measurement
  --kubeconfig      use this running cluster instead of starting one (it must be empty)
  --keep-cluster    leave the benchmark's cluster running at the end
  --only LIST       run only these measurements: reaction,pass,watch,probes,failover
  --out             results directory (default bench/results)";

#[derive(Clone, Debug)]
struct Options {
    quick: bool,
    pass_pods: Vec<usize>,
    reaction_hsds: usize,
    events: usize,
    probe_pods: usize,
    namespaces: usize,
    pass_repetitions: usize,
    kubeconfig: Option<PathBuf>,
    keep_cluster: bool,
    out: PathBuf,
    /// Measurements to run (all when empty): reaction, pass, watch, probes, failover.
    only: Vec<String>,
}

impl Options {
    fn runs(&self, what: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == what)
    }
}

fn parse_options(args: &[String]) -> Res<Options> {
    let repo = repo_root();
    let quick = args.iter().any(|a| a == "--quick");
    let mut options = Options {
        quick,
        pass_pods: if quick {
            vec![100, 1000]
        } else {
            vec![100, 1000, 10_000, 20_000]
        },
        reaction_hsds: if quick { 20 } else { 100 },
        events: if quick { 50 } else { 200 },
        probe_pods: if quick { 200 } else { 1000 },
        namespaces: 10,
        pass_repetitions: 3,
        kubeconfig: None,
        keep_cluster: false,
        out: repo.join("bench/results"),
        only: Vec::new(),
    };
    let mut iter = args.iter();
    let number = |value: Option<&String>, flag: &str| -> Res<usize> {
        value
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{flag} needs a positive number"))
    };
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--quick" | "--bench" => {}
            "--sizes" => {
                let value = iter.next().ok_or("--sizes needs a list")?;
                options.pass_pods = value
                    .split(',')
                    .map(|s| {
                        s.trim()
                            .parse::<usize>()
                            .ok()
                            .filter(|n| *n >= PODS_PER_HSD)
                    })
                    .collect::<Option<Vec<_>>>()
                    .ok_or("--sizes: pod counts of at least 20, comma-separated")?;
                options.pass_pods.sort_unstable();
            }
            "--reaction-hsds" => options.reaction_hsds = number(iter.next(), arg)?,
            "--events" => options.events = number(iter.next(), arg)?,
            "--probe-pods" => options.probe_pods = number(iter.next(), arg)?.max(PODS_PER_HSD),
            "--kubeconfig" => {
                options.kubeconfig = Some(PathBuf::from(
                    iter.next().ok_or("--kubeconfig needs a path")?,
                ))
            }
            "--keep-cluster" => options.keep_cluster = true,
            "--only" => {
                let value = iter.next().ok_or("--only needs a list")?;
                options.only = value.split(',').map(|s| s.trim().to_string()).collect();
                if let Some(bad) = options.only.iter().find(|o| {
                    !["reaction", "pass", "watch", "probes", "failover"].contains(&o.as_str())
                }) {
                    return Err(format!("--only: unknown measurement {bad}"));
                }
            }
            "--out" => options.out = PathBuf::from(iter.next().ok_or("--out needs a directory")?),
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    Ok(options)
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it, and
    // must not start a cluster and a long benchmark.
    if !args.iter().any(|a| a == "--bench") && std::env::var_os("HSD_BENCH_RUN").is_none() {
        println!("hsd benchmark: skipped outside `cargo bench` (run hack/bench.sh)");
        return;
    }
    let options = match parse_options(&args) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let code = runtime.block_on(async {
        match run(options).await {
            Ok(()) => 0,
            Err(message) => {
                eprintln!("bench: error: {message}");
                1
            }
        }
    });
    // Stop what is left (servers, watches) before the cluster is gone.
    runtime.shutdown_timeout(Duration::from_secs(5));
    std::process::exit(code);
}

async fn run(options: Options) -> Res<()> {
    let repo = repo_root();
    let started = Instant::now();
    let load_start = load_average();
    let mut cluster = match &options.kubeconfig {
        Some(path) => Cluster::existing(&repo, path),
        None => Cluster::up(
            &repo,
            &repo.join("target/bench-cluster"),
            options.keep_cluster,
        )?,
    };
    let mut results = json!({"quick": options.quick, "machine": {}, "notes": []});
    let outcome = tokio::select! {
        outcome = benchmark(&options, &cluster, &mut results) => outcome,
        _ = interrupted() => Err("interrupted".to_string()),
    };
    if options.keep_cluster && cluster.dir.is_some() {
        say(format!(
            "leaving the cluster up: export KUBECONFIG={}",
            cluster.kubeconfig.display()
        ));
        cluster.dir = None;
    }
    results["machine"]["load_start"] = json!(load_start);
    results["machine"]["load_end"] = json!(load_average());
    results["machine"]["bench_seconds"] = json!(round(started.elapsed().as_secs_f64(), 0));
    if !cluster.tuning.is_empty() {
        results["notes"]
            .as_array_mut()
            .expect("notes")
            .push(json!(format!(
                "To populate faster, the benchmark's cluster ran with raised client limits ({}); \
             the measured numbers are the product's own.",
                cluster.tuning.join(", ")
            )));
    }
    cluster.down();
    let goals = goals(&results);
    report::print_tables(&results, &goals);
    if let Err(error) = outcome {
        results["error"] = json!(error);
        report::write(&options.out, "partial", &results, &goals)?;
        say(format!(
            "partial results in {}/partial.{{json,md}}",
            options.out.display()
        ));
        return Err(error);
    }
    report::write(&options.out, "latest", &results, &goals)?;
    say(format!(
        "results in {} (latest.json, latest.md) after {:.0}s",
        options.out.display(),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

async fn interrupted() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// What happens at each HSD count, in growing order.
#[derive(Debug, Default)]
struct Stage {
    hsds: usize,
    pass: bool,
    reaction: bool,
    watch: bool,
}

fn stages(options: &Options) -> Vec<Stage> {
    let mut stages: Vec<Stage> = Vec::new();
    let mut at = |hsds: usize| -> usize {
        match stages.iter().position(|s| s.hsds == hsds) {
            Some(i) => i,
            None => {
                stages.push(Stage {
                    hsds,
                    ..Default::default()
                });
                stages.len() - 1
            }
        }
    };
    let pass: Vec<usize> = options.pass_pods.iter().map(|p| p / PODS_PER_HSD).collect();
    let mut marks = Vec::new();
    if options.runs("pass") {
        for &h in &pass {
            marks.push((at(h), "pass"));
        }
    }
    if options.runs("reaction") {
        marks.push((at(options.reaction_hsds), "reaction"));
    }
    if options.runs("watch") {
        let max = pass.iter().copied().max().unwrap_or(options.reaction_hsds);
        marks.push((at(max), "watch"));
    }
    for (i, what) in marks {
        match what {
            "pass" => stages[i].pass = true,
            "reaction" => stages[i].reaction = true,
            _ => stages[i].watch = true,
        }
    }
    stages.sort_by_key(|s| s.hsds);
    stages
}

async fn benchmark(options: &Options, cluster: &Cluster, results: &mut Value) -> Res<()> {
    let repo = repo_root();
    let work = repo.join("target/bench-work");
    std::fs::create_dir_all(&work).ctx(format!("creating {}", work.display()))?;
    let product = Product::new(&repo, &cluster.kubeconfig, &work)?;
    let client = cluster.client().await?;
    let version = client
        .apiserver_version()
        .await
        .ctx("reading the API server version")?;
    let layout = Layout {
        namespaces: options.namespaces,
    };
    results["machine"] = machine(&version.git_version);
    results["machine"]["binary"] = json!(product.binary.display().to_string());
    say(format!(
        "plan: one-shot passes at {:?} pods, reaction with {} HSDs x {} events, probes over {} pods",
        options.pass_pods, options.reaction_hsds, options.events, options.probe_pods
    ));

    product.run(&["install"], Duration::from_secs(120)).await?;
    let namespaces: Vec<String> = (0..layout.namespaces)
        .map(|i| layout.namespace(i))
        .collect();
    populate::create_namespaces(&client, &namespaces).await?;
    let tracker = PodTracker::start(&client);
    tracker.wait_synced().await?;

    let mut created = 0;
    let mut passes = Vec::new();
    for stage in stages(options) {
        grow(
            &client,
            &product,
            &tracker,
            &layout,
            &mut created,
            stage.hsds,
        )
        .await?;
        if stage.reaction {
            results["reaction"] = reaction(
                options, cluster, &client, &product, &tracker, &layout, stage.hsds,
            )
            .await?;
        }
        if stage.pass {
            passes.push(pass(options, &product, &tracker, &layout, stage.hsds).await?);
            results["pass"] = json!(passes);
        }
        if stage.watch {
            results["watch"] = watch_memory(&product, stage.hsds).await?;
        }
    }
    results["notes"] = json!([
        "Reaction: each event flips one pod's paia.tech/busy annotation (merge PATCH); the latency runs from the PATCH's response to this benchmark's own Deployment watch delivering the new spec.replicas. Flips alternate busy/idle per HSD (replicas 20 <-> 21), one at a time, each waited for. The floor (in-process kube-rs client on its own runtime thread) watches all pods and merge-PATCHes spec.replicas to idleTarget + busy on each change; it ran first, then the product's watcher (`reconcile --watch -A --leader-elect=false`), on the same pods.",
        "One-shot pass: `/usr/bin/time -v kubectl-hsd reconcile -A --stats` after a converging pass and a settled cluster; seconds = process wall time (median of the repetitions), pass_seconds = the --stats time, cpu_seconds = the process's user + system CPU (the rest of the wall time is waiting for the API server), requests/noop_writes from --stats, peak RSS from /usr/bin/time. HSDs are spread over 10 namespaces.",
        "Watch memory: VmRSS of `reconcile --watch -A` once /readyz answers 200 and every HSD has been reconciled (one hsd_desired_replicas series each), 5 s later.",
        "Probes: per_second is kubectl_hsd::observe::probe::Prober::probe_all at the default concurrency against one real HTTP server per pod IP (half 200, half 503), median of 5 rounds; pass_per_second is pods probed / --stats seconds of a one-shot pass over the HTTP-mode HSDs; slow_server_extra_ms is how much later the other servers were all answered when the first one never answers (1 s timeout) than in the baseline round just before, median of 3 such pairs.",
    ]);
    if options.runs("probes") {
        results["probes"] = probes(options, &client, &product, &tracker).await?;
    }
    if options.runs("failover") {
        let count = if options.quick { 30 } else { 100 };
        results["failover"] = failover::measure(&client, &product, count).await?;
    }
    Ok(())
}

fn machine(kubernetes: &str) -> Value {
    let memory_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let git = |args: &[&str]| -> String {
        std::process::Command::new("git")
            .args(args)
            .current_dir(repo_root())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_gb": round(memory_kb as f64 / 1024.0 / 1024.0, 1),
        "kubernetes": kubernetes,
        "commit": git(&["rev-parse", "HEAD"]),
        "dirty": !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty(),
        "date": jiff::Timestamp::now().round(jiff::Unit::Second).map(|t| t.to_string()).unwrap_or_default(),
        "cpu": std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default().lines()
            .find_map(|l| l.strip_prefix("model name")).map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()),
    })
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split(' ')
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Grows the annotation-mode set to `target` HSDs and waits until all their pods are ready.
async fn grow(
    client: &kube::Client,
    product: &Product,
    tracker: &PodTracker,
    layout: &Layout,
    created: &mut usize,
    target: usize,
) -> Res<()> {
    if *created < target {
        let manifests = (*created..target)
            .map(|i| populate::annotation_hsd(&layout.namespace(i), &Layout::name(i)))
            .collect();
        populate::create_hsds(client, manifests, &format!("HSDs {}..{}", *created, target)).await?;
        *created = target;
        // One pass creates the new Deployments; the controllers and kwok make the pods.
        let t = Instant::now();
        product
            .run(&["reconcile", "-A"], Duration::from_secs(600))
            .await?;
        say(format!(
            "pass creating the Deployments: {:.1}s",
            t.elapsed().as_secs_f64()
        ));
    }
    let pods = target * PODS_PER_HSD;
    let timeout = Duration::from_secs(120) + Duration::from_millis(100) * pods as u32;
    tracker
        .wait_ready("w", pods, timeout, &format!("pods ready ({target} HSDs)"))
        .await
}

/// One-shot pass cost at the current size.
async fn pass(
    options: &Options,
    product: &Product,
    tracker: &PodTracker,
    layout: &Layout,
    hsds: usize,
) -> Res<Value> {
    let pods = hsds * PODS_PER_HSD;
    say(format!("one-shot pass at {pods} pods ({hsds} HSDs)"));
    // Converge (statuses catch up with the ready pods), let the cluster settle, then measure.
    product
        .run(&["reconcile", "-A"], Duration::from_secs(600))
        .await?;
    tracker
        .settle(Duration::from_secs(3), Duration::from_secs(120))
        .await?;
    let mut runs = Vec::new();
    for i in 0..options.pass_repetitions {
        let run = product
            .measured_pass(&["-A"], Duration::from_secs(600))
            .await?;
        say(format!(
            "  pass {}: {:.3}s wall, {:.3}s pass, {:.2}s CPU, {} requests ({} writes), peak RSS {:.1} MB",
            i + 1,
            run.wall.as_secs_f64(),
            run.stats.seconds,
            run.cpu_seconds,
            run.stats.requests,
            run.stats.writes,
            run.peak_rss_kb as f64 / 1024.0
        ));
        if run.stats.hsds as usize != hsds {
            return Err(format!(
                "the pass saw {} HSDs, expected {hsds}",
                run.stats.hsds
            ));
        }
        runs.push(run);
    }
    let walls: Vec<f64> = runs.iter().map(|r| r.wall.as_secs_f64()).collect();
    let pass_seconds: Vec<f64> = runs.iter().map(|r| r.stats.seconds).collect();
    Ok(json!({
        "pods": pods,
        "hsds": hsds,
        "namespaces": hsds.min(layout.namespaces),
        "seconds": round(median(&walls), 3),
        "pass_seconds": round(median(&pass_seconds), 3),
        "requests": runs.iter().map(|r| r.stats.requests).max(),
        "reads": runs.iter().map(|r| r.stats.reads).max(),
        "noop_writes": runs.iter().map(|r| r.stats.writes).max(),
        "peak_rss_mb": round(runs.iter().map(|r| r.peak_rss_kb).max().unwrap_or(0) as f64 / 1024.0, 1),
        "repetitions": runs.len(),
        // The product's own CPU (user + system) next to its wall time: the rest is waiting
        // for the API server.
        "cpu_seconds": round(median(&runs.iter().map(|r| r.cpu_seconds).collect::<Vec<_>>()), 2),
    }))
}

/// Waits until the watcher answers /readyz and has reconciled `hsds` HSDs.
async fn wait_watcher_synced(
    watcher: &mut product::Watcher,
    hsds: usize,
    timeout: Duration,
) -> Res<f64> {
    let started = Instant::now();
    let mut progress = util::Progress::new("watcher reconciled HSDs", hsds as u64);
    loop {
        watcher.alive()?;
        let ready = matches!(watcher.get("/readyz").await, Ok((200, _)));
        let reconciled = if ready {
            watcher.reconciled_hsds().await?
        } else {
            0
        };
        progress.set(reconciled as u64);
        if ready && reconciled >= hsds {
            progress.finish(reconciled as u64);
            return Ok(started.elapsed().as_secs_f64());
        }
        if started.elapsed() > timeout {
            progress.finish(reconciled as u64);
            return Err(format!(
                "the watcher reconciled {reconciled} of {hsds} HSDs within {timeout:?} (ready: {ready}):\n{}",
                product::tail(&watcher.log_text(), 10)
            ));
        }
        // /metrics has a handful of series per HSD: poll it gently on big sets.
        let every = if hsds > 100 { 1000 } else { 200 };
        tokio::time::sleep(Duration::from_millis(every)).await;
    }
}

async fn reaction(
    options: &Options,
    cluster: &Cluster,
    client: &kube::Client,
    product: &Product,
    tracker: &PodTracker,
    layout: &Layout,
    hsds: usize,
) -> Res<Value> {
    say(format!(
        "reaction latency: {hsds} HSDs x 20 pods, {} flips each for the floor and the product",
        options.events
    ));
    // Statuses up to date before the watchers start.
    product
        .run(&["reconcile", "-A"], Duration::from_secs(600))
        .await?;
    tracker
        .settle(Duration::from_secs(2), Duration::from_secs(120))
        .await?;
    let mut deployments = reaction::DeploymentWatch::start(client).await?;

    // Floor and product take turns in blocks, so that a change in background load (this is a
    // shared 2-core machine) weighs on both alike.
    let blocks = if options.quick { 1 } else { 2 };
    let per_block = options.events.div_ceil(blocks);
    let mut floor_samples = reaction::Samples::default();
    let mut samples = reaction::Samples::default();
    let mut sync = 0.0;
    let mut memory = None;
    let mut floor_writes = std::collections::HashMap::new();
    let mut product_writes = std::collections::HashMap::new();
    let mut watcher_cpu = 0.0;
    for block in 0..blocks {
        let events = per_block.min(options.events - block * per_block);
        let mut floor = reaction::Floor::start(cluster.kubeconfig.clone()).await?;
        let before = reaction::api_write_counters(client).await?;
        let series = reaction::flip_series(
            client,
            tracker,
            &mut deployments,
            layout,
            hsds,
            events,
            &format!("floor flips ({}/{blocks})", block + 1),
        )
        .await;
        floor.stop();
        let after = reaction::api_write_counters(client).await?;
        reaction::add_delta(&mut floor_writes, &before, &after);
        floor_samples.extend(series?);
        tracker
            .settle(Duration::from_secs(2), Duration::from_secs(120))
            .await?;

        let mut watcher = product.start_watcher("reaction").await?;
        sync = wait_watcher_synced(&mut watcher, hsds, Duration::from_secs(600)).await?;
        say(format!("watcher synced in {sync:.1}s"));
        tracker
            .settle(Duration::from_secs(2), Duration::from_secs(120))
            .await?;
        let before = reaction::api_write_counters(client).await?;
        let cpu_before = watcher.cpu_seconds()?;
        let series = reaction::flip_series(
            client,
            tracker,
            &mut deployments,
            layout,
            hsds,
            events,
            &format!("kubectl-hsd flips ({}/{blocks})", block + 1),
        )
        .await;
        watcher_cpu += watcher.cpu_seconds()? - cpu_before;
        let after = reaction::api_write_counters(client).await?;
        reaction::add_delta(&mut product_writes, &before, &after);
        let alive = watcher.alive();
        memory = watcher.memory_kb().ok();
        watcher.stop().await;
        samples.extend(series?);
        alive?;
        tracker
            .settle(Duration::from_secs(2), Duration::from_secs(120))
            .await?;
    }

    let p = |s: &[f64], q: f64| round(percentile(s, q), 1);
    let value = json!({
        "hsds": hsds,
        "pods": hsds * PODS_PER_HSD,
        "samples": samples.all.len(),
        "p50_ms": p(&samples.all, 50.0),
        "p99_ms": p(&samples.all, 99.0),
        "max_ms": p(&samples.all, 100.0),
        "up_p50_ms": p(&samples.up, 50.0),
        "down_p50_ms": p(&samples.down, 50.0),
        "timeouts": samples.timeouts,
        "floor_samples": floor_samples.all.len(),
        "floor_p50_ms": p(&floor_samples.all, 50.0),
        "floor_p99_ms": p(&floor_samples.all, 99.0),
        "floor_max_ms": p(&floor_samples.all, 100.0),
        "floor_up_p50_ms": p(&floor_samples.up, 50.0),
        "floor_down_p50_ms": p(&floor_samples.down, 50.0),
        "floor_timeouts": floor_samples.timeouts,
        "pod_watch_p50_ms": p(&samples.pod_watch, 50.0),
        "pod_watch_p99_ms": p(&samples.pod_watch, 99.0),
        "floor_pod_watch_p50_ms": p(&floor_samples.pod_watch, 50.0),
        "floor_pod_watch_p99_ms": p(&floor_samples.pod_watch, 99.0),
        "ratio_p50": round(percentile(&samples.all, 50.0) / percentile(&floor_samples.all, 50.0), 2),
        "ratio_p99": round(percentile(&samples.all, 99.0) / percentile(&floor_samples.all, 99.0), 2),
        "watcher_sync_seconds": round(sync, 1),
        "blocks": blocks,
        "watcher_cpu_ms_per_flip": round(watcher_cpu * 1000.0 / samples.all.len().max(1) as f64, 2),
        "api_writes": {
            "product": reaction::per_flip(&product_writes, samples.all.len()),
            "floor": reaction::per_flip(&floor_writes, floor_samples.all.len()),
        },
        "samples_ms": samples.all.iter().map(|v| round(*v, 1)).collect::<Vec<_>>(),
        "floor_samples_ms": floor_samples.all.iter().map(|v| round(*v, 1)).collect::<Vec<_>>(),
        "watcher_rss_mb": memory.map(|(rss, _)| round(rss as f64 / 1024.0, 1)),
    });
    say(format!(
        "reaction: p50 {} ms, p99 {} ms; floor p50 {} ms, p99 {} ms",
        value["p50_ms"], value["p99_ms"], value["floor_p50_ms"], value["floor_p99_ms"]
    ));
    Ok(value)
}

async fn watch_memory(product: &Product, hsds: usize) -> Res<Value> {
    let pods = hsds * PODS_PER_HSD;
    say(format!("watch-mode memory at {pods} pods ({hsds} HSDs)"));
    let mut watcher = product.start_watcher("memory").await?;
    let timeout = Duration::from_secs(120) + Duration::from_millis(30) * pods as u32;
    let started = Instant::now();
    let synced = wait_watcher_synced(&mut watcher, hsds, timeout).await;
    let result = async {
        if synced.is_ok() {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        watcher.alive()?;
        let (rss, hwm) = watcher.memory_kb()?;
        let reconciled = watcher.reconciled_hsds().await.unwrap_or(0);
        Ok::<_, String>(json!({
            "pods": pods,
            "hsds": hsds,
            "rss_mb": round(rss as f64 / 1024.0, 1),
            "hwm_mb": round(hwm as f64 / 1024.0, 1),
            "synced": synced.is_ok(),
            "reconciled_hsds": reconciled,
            "sync_seconds": round(synced.as_ref().copied().unwrap_or(started.elapsed().as_secs_f64()), 1),
            "cpu_seconds": watcher.cpu_seconds().ok().map(|s| round(s, 1)),
        }))
    }
    .await;
    watcher.stop().await;
    let mut value = result?;
    if let Err(error) = synced {
        // Not fatal: the memory at the deadline is still a number worth having.
        say(format!("watch: {error}"));
        value["error"] = json!(error);
        value["sync_seconds"] = Value::Null;
    }
    say(format!(
        "watch: VmRSS {} MB (VmHWM {} MB), synced: {}, {} s, {} CPU s",
        value["rss_mb"],
        value["hwm_mb"],
        value["synced"],
        value["sync_seconds"],
        value["cpu_seconds"]
    ));
    Ok(value)
}

async fn probes(
    options: &Options,
    client: &kube::Client,
    product: &Product,
    tracker: &PodTracker,
) -> Res<Value> {
    let hsds = options.probe_pods.div_ceil(PODS_PER_HSD);
    let pods = hsds * PODS_PER_HSD;
    say(format!(
        "HTTP probes: {pods} pods ({hsds} HTTP-mode HSDs in {PROBE_NAMESPACE})"
    ));
    populate::create_namespaces(client, &[PROBE_NAMESPACE.to_string()]).await?;
    let manifests = (0..hsds)
        .map(|i| populate::http_hsd(PROBE_NAMESPACE, &format!("p{i:03}")))
        .collect();
    populate::create_hsds(client, manifests, "HTTP-mode HSDs").await?;
    let scope = ["-n", PROBE_NAMESPACE];
    let mut args = vec!["reconcile"];
    args.extend(scope);
    product.run(&args, Duration::from_secs(300)).await?;
    let timeout = Duration::from_secs(120) + Duration::from_millis(100) * pods as u32;
    tracker
        .wait_ready("p", pods, timeout, "HTTP-mode pods ready")
        .await?;
    let ips: Vec<IpAddr> = tracker
        .pods_of_set("p")
        .iter()
        .map(|p| {
            p.ip.as_deref()
                .and_then(|ip| ip.parse().ok())
                .ok_or_else(|| format!("pod {}/{} has no IP", p.namespace, p.name))
        })
        .collect::<Res<_>>()?;
    let servers = probes::Servers::start(&ips, populate::PROBE_PORT).await?;
    let numbers = probes::measure(&servers, 5).await?;
    say(format!(
        "probes: {:.0}/s over {} servers; one silent server: others done {:.1} ms later, round {:.2}s",
        numbers.per_second, numbers.pods, numbers.slow_server_extra_ms, numbers.slow_round_seconds
    ));
    // The same servers through a one-shot pass of the binary.
    product.run(&args, Duration::from_secs(300)).await?;
    let run = product
        .measured_pass(&scope, Duration::from_secs(300))
        .await?;
    drop(servers);
    let pass_per_second = run.stats.probed as f64 / run.stats.seconds;
    Ok(json!({
        "pods": numbers.pods,
        "per_second": round(numbers.per_second, 0),
        "slow_server_extra_ms": round(numbers.slow_server_extra_ms, 1),
        "method": "kubectl_hsd::observe::probe::Prober::probe_all",
        "concurrency": numbers.concurrency,
        "round_seconds": numbers.seconds.iter().map(|s| round(*s, 4)).collect::<Vec<_>>(),
        "slow_round_seconds": round(numbers.slow_round_seconds, 3),
        "slow_server_extra_samples_ms": numbers.slow_server_extra_samples_ms.iter().map(|v| round(*v, 1)).collect::<Vec<_>>(),
        "timeout_seconds": numbers.timeout_seconds,
        "pass_per_second": round(pass_per_second, 0),
        "pass_probed": run.stats.probed,
        "pass_seconds": round(run.stats.seconds, 3),
        "pass_writes": run.stats.writes,
    }))
}

fn goals(results: &Value) -> Vec<Goal> {
    let mut goals = Vec::new();
    let quick = results["quick"] == true;
    let r = &results["reaction"];
    if let (Some(p99), Some(floor)) = (r["p99_ms"].as_f64(), r["floor_p99_ms"].as_f64()) {
        goals.push(Goal {
            name: "reaction p99".into(),
            target: "<= 100 ms".into(),
            value: format!("{p99:.1} ms"),
            met: Some(p99 <= 100.0),
        });
        goals.push(Goal {
            name: "reaction p99 vs floor".into(),
            target: "<= 3x floor p99".into(),
            value: format!("{:.2}x ({p99:.1} / {floor:.1} ms)", p99 / floor),
            met: Some(p99 <= 3.0 * floor),
        });
    }
    let f = &results["failover"];
    if let (Some(p99), Some(floor)) = (f["p99_ms"].as_f64(), f["floor_p99_ms"].as_f64()) {
        goals.push(Goal {
            name: "active-standby failover p99 vs floor".into(),
            target: "<= 2x floor p99".into(),
            value: format!("{:.2}x ({p99:.1} / {floor:.1} ms)", p99 / floor),
            met: Some(p99 <= 2.0 * floor),
        });
    }
    let passes = results["pass"].as_array().cloned().unwrap_or_default();
    if let Some(largest) = passes.iter().max_by_key(|p| p["pods"].as_u64()) {
        let pods = largest["pods"].as_u64().unwrap_or(0);
        let hsds = largest["hsds"].as_u64().unwrap_or(0);
        let at = if pods == 20_000 {
            String::new()
        } else {
            format!(" (at {pods} pods; goal is at 20,000)")
        };
        let full = pods >= 20_000;
        let seconds = largest["seconds"].as_f64().unwrap_or(f64::NAN);
        goals.push(Goal {
            name: format!("pass wall time{at}"),
            target: "<= 5 s at 20,000 pods".into(),
            value: format!("{seconds:.2} s"),
            met: full.then_some(seconds <= 5.0),
        });
        // Three paginated lists (500 a page) and the Lease check: nothing per HSD.
        let requests = largest["requests"].as_u64().unwrap_or(u64::MAX);
        let pages = |n: u64| n.div_ceil(500).max(1);
        let bound = pages(hsds) * 2 + pages(pods) + 2;
        goals.push(Goal {
            name: format!("pass API requests{at}"),
            target: "O(namespaces), not O(HSDs): paginated lists only".into(),
            value: format!("{requests} for {hsds} HSDs (list-only bound {bound})"),
            met: Some(requests <= bound),
        });
        let rss = largest["peak_rss_mb"].as_f64().unwrap_or(f64::NAN);
        goals.push(Goal {
            name: format!("pass peak RSS{at}"),
            target: "<= 150 MB at 20,000 pods".into(),
            value: format!("{rss:.1} MB"),
            met: full.then_some(rss <= 150.0),
        });
    }
    let writes: u64 = passes
        .iter()
        .filter_map(|p| p["noop_writes"].as_u64())
        .max()
        .unwrap_or(0);
    if !passes.is_empty() {
        goals.push(Goal {
            name: "writes of a no-op pass".into(),
            target: "0 at every size".into(),
            value: writes.to_string(),
            met: Some(writes == 0),
        });
    }
    let w = &results["watch"];
    if let Some(rss) = w["rss_mb"].as_f64() {
        let pods = w["pods"].as_u64().unwrap_or(0);
        let at = if pods == 20_000 {
            String::new()
        } else {
            format!(" (at {pods} pods; goal is at 20,000)")
        };
        let synced = w["synced"] != false;
        goals.push(Goal {
            name: format!("watch memory after sync{at}"),
            target: "<= 200 MB at 20,000 pods".into(),
            value: if synced {
                format!("{rss:.1} MB")
            } else {
                format!("{rss:.1} MB, but not synced within the deadline")
            },
            met: (pods >= 20_000).then_some(rss <= 200.0 && synced),
        });
    }
    let p = &results["probes"];
    if let Some(extra) = p["slow_server_extra_ms"].as_f64() {
        goals.push(Goal {
            name: "one silent probe target".into(),
            target: "no delay to the others beyond its own timeout (<= 50 ms noise)".into(),
            value: format!("{extra:.1} ms"),
            met: Some(extra <= 50.0),
        });
    }
    if quick {
        for goal in &mut goals {
            if goal.met.is_none() {
                goal.value.push_str(" (quick run)");
            }
        }
    }
    goals
}
