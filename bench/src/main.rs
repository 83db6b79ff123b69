//! The kubectl-hsd benchmark (`hack/bench.sh [--quick]`, which builds this crate and the
//! release binary, then runs `hsd-bench ...`).
//!
//! It starts its own local control plane (hack/cluster.sh, cluster dir target/bench-cluster),
//! fills it with HotStandbyDeployments of 20 pods, and measures the release binary
//! `target/release/kubectl-hsd` (spawned, so that time, memory and API requests are its own),
//! each figure beside a floor measured in the same run:
//!
//! 1. one-shot pass cost at 100 to 100,000 pods, beside a bare paginated list of the same
//!    objects (`pass`);
//! 2. watcher start to first decision, and the watcher's memory, beside kube's bare reflector
//!    on the same objects (`start`);
//! 3. reaction latency of `reconcile --watch` beside a floor client, with and without 20,000
//!    other pods (`reaction`);
//! 4. two sharded replicas at 40,000 pods against one watcher at 20,000 (`shards`), and the
//!    failover of a sharded replica (`failover`);
//! 5. HTTP probe throughput against servers bound on the pods' loopback IPs, and the delay one
//!    never-answering server adds to the others (`probes`).
//! 6. `kubectl hsd proxy` next to a minimal tokio proxy (the floor): round trips, connection
//!    rate, throughput, memory with idle and with 10,000 held connections, API requests per
//!    connection on the warm path, and the wake from zero (`proxy`);
//! 7. HotStandbyJob figures (`hsj`, bench/hsj.rs).
//! 8. active-standby failover (#16): a master's deletion to the new master alone in the
//!    Service's EndpointSlices, beside a floor that moves the label itself (`standby`,
//!    bench/failover.rs).
//!
//! Results: tables on stdout, bench/results/<date>-<quick|full>.{json,md}. See bench/README.md.
//! A measurement of its own lives in a file of its own, with a hook here: a `mod` line, its
//! name in `MEASUREMENTS`, a call in `benchmark` and its goals in `goals`.

mod cluster;
mod deployments;
mod floor;
// Active-standby failover (#16): its own file, hooked in like the HSJ figures.
mod failover;
// HotStandbyJob figures (#14): their own file, hooked in at three marked places below.
mod hsj;
mod pass;
mod populate;
mod probes;
mod product;
mod proxy;
mod proxy_hsd;
mod reaction;
mod report;
mod shards;
mod start;
mod util;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::deployments::DeploymentWatch;
use crate::populate::{Layout, PODS_PER_HSD, PodTracker};
use crate::product::Product;
use crate::reaction::Contender;
use crate::report::Goal;
use crate::util::{Context, Res, load_average, round, say};

const USAGE: &str = "usage: hack/bench.sh [--quick] [options]
  --quick             reduced run (up to 2,000 pods): under 10 minutes
  --sizes N,N,..      pod counts of the one-shot pass measurements (multiples of 20)
  --start-sizes N,..  pod counts of the watcher start measurements
  --shard-pods N      pods of the one-watcher reference and the failover; the sharded pair
                      runs at twice as many
  --other-pods N      other pods (no HSD made them) of the second reaction measurement
  --max-pods N        leave out every measurement above N pods
  --reaction-hsds N   HSDs of 20 pods whose pods the reaction flips
  --events N          busy/idle flips measured for the product and for the floor
  --probe-pods N      pods with an HTTP server for the probe measurement
  --kubeconfig PATH   use this running cluster instead of starting one (it must be empty)
  --keep-cluster      leave the benchmark's cluster running at the end
  --only LIST         run only these measurements (comma-separated), of MEASUREMENTS below
  --out DIR           results directory (default bench/results)";

/// The measurements, for `--only`.
const MEASUREMENTS: &[&str] = &[
    "pass",
    "start",
    "reaction",
    "shards",
    "failover",
    "probes",
    "hsj",
    "proxy",
    "proxy-hsd",
    "standby",
];

#[derive(Clone, Debug)]
pub struct Options {
    pub quick: bool,
    pub pass_pods: Vec<usize>,
    pub start_pods: Vec<usize>,
    pub shard_pods: usize,
    pub other_pods: usize,
    pub reaction_hsds: usize,
    pub events: usize,
    pub probe_pods: usize,
    pub namespaces: usize,
    pub pass_repetitions: usize,
    pub start_repetitions: usize,
    pub kubeconfig: Option<PathBuf>,
    pub keep_cluster: bool,
    pub out: PathBuf,
    /// Measurements to run (all when empty), of [`MEASUREMENTS`].
    pub only: Vec<String>,
}

impl Options {
    fn runs(&self, what: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == what)
    }

    /// The most pods any planned measurement needs at once.
    fn most_pods(&self) -> usize {
        let mut most = self.reaction_hsds * PODS_PER_HSD + self.other_pods;
        for pods in self.pass_pods.iter().chain(&self.start_pods) {
            most = most.max(*pods);
        }
        if self.runs("shards") {
            most = most.max(2 * self.shard_pods);
        }
        most + self.probe_pods
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
            vec![100, 1000, 10_000, 20_000, 100_000]
        },
        start_pods: if quick {
            vec![1000]
        } else {
            vec![20_000, 100_000]
        },
        shard_pods: if quick { 1000 } else { 20_000 },
        other_pods: if quick { 2000 } else { 20_000 },
        reaction_hsds: if quick { 20 } else { 100 },
        events: if quick { 50 } else { 200 },
        probe_pods: if quick { 200 } else { 1000 },
        namespaces: 10,
        pass_repetitions: 3,
        start_repetitions: if quick { 2 } else { 3 },
        kubeconfig: None,
        keep_cluster: false,
        out: repo.join("bench/results"),
        only: Vec::new(),
    };
    let mut max_pods = None;
    let mut iter = args.iter();
    let number = |value: Option<&String>, flag: &str| -> Res<usize> {
        value
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{flag} needs a positive number"))
    };
    let sizes = |value: Option<&String>, flag: &str| -> Res<Vec<usize>> {
        let mut sizes = value
            .ok_or(format!("{flag} needs a list"))?
            .split(',')
            .map(|s| {
                s.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n >= PODS_PER_HSD)
            })
            .collect::<Option<Vec<_>>>()
            .ok_or(format!(
                "{flag}: pod counts of at least 20, comma-separated"
            ))?;
        sizes.sort_unstable();
        Ok(sizes)
    };
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--quick" => {}
            "--sizes" => options.pass_pods = sizes(iter.next(), arg)?,
            "--start-sizes" => options.start_pods = sizes(iter.next(), arg)?,
            "--shard-pods" => options.shard_pods = number(iter.next(), arg)?.max(PODS_PER_HSD),
            "--other-pods" => options.other_pods = number(iter.next(), arg)?,
            "--max-pods" => max_pods = Some(number(iter.next(), arg)?),
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
                if let Some(bad) = options
                    .only
                    .iter()
                    .find(|o| !MEASUREMENTS.contains(&o.as_str()))
                {
                    return Err(format!(
                        "--only: unknown measurement {bad} (one of {})",
                        MEASUREMENTS.join(", ")
                    ));
                }
            }
            "--out" => options.out = PathBuf::from(iter.next().ok_or("--out needs a directory")?),
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if let Some(max) = max_pods {
        options.pass_pods.retain(|p| *p <= max);
        options.start_pods.retain(|p| *p <= max);
        if 2 * options.shard_pods > max {
            options.shard_pods = (max / 2 / PODS_PER_HSD * PODS_PER_HSD).max(PODS_PER_HSD);
        }
    }
    Ok(options)
}

/// The repository: the parent of this crate's directory (bench/).
fn repo_root() -> PathBuf {
    let bench = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    bench.parent().map(PathBuf::from).unwrap_or(bench)
}

fn main() {
    // The proxy measurement runs this binary again as its floor proxy.
    if let Ok(target) = std::env::var(proxy::FLOOR_ENV) {
        proxy::floor_main(target);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, kubeconfig] = &args[..]
        && flag == floor::PROCESS_FLAG
    {
        if let Err(message) = floor::reflector_process_main(std::path::Path::new(kubeconfig)) {
            eprintln!("floor: error: {message}");
            std::process::exit(1);
        }
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
            options.most_pods(),
        )?,
    };
    let mut results =
        json!({"quick": options.quick, "only": options.only, "machine": {}, "notes": []});
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
                "The benchmark's cluster ran with these flags added ({}): to populate faster, and \
                 room for 100,000 pods; the measured numbers are the product's own.",
                cluster.tuning.join(", ")
            )));
    }
    if let Some(cidr) = &cluster.pod_cidr {
        results["machine"]["pod_cidr"] = json!(cidr);
    }
    cluster.down();
    let goals = goals(&results);
    report::print_tables(&results, &goals);
    let path = report::write(&options.out, &results, &goals, outcome.is_err())?;
    if let Err(error) = outcome {
        say(format!("partial results in {}.{{json,md}}", path.display()));
        return Err(error);
    }
    say(format!(
        "results in {}.{{json,md}} after {:.0}s",
        path.display(),
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

/// What every measurement works with.
pub struct Bench<'a> {
    pub options: &'a Options,
    pub cluster: &'a Cluster,
    pub client: kube::Client,
    pub product: Product,
    pub tracker: PodTracker,
    pub layout: Layout,
}

impl Bench<'_> {
    /// Waits until no benchmark pod changed for 2 s.
    pub async fn settle(&self) -> Res<()> {
        self.tracker
            .settle(Duration::from_secs(2), Duration::from_secs(300))
            .await
    }

    /// One pass (statuses and replicas catch up with the pods), then a settled cluster.
    ///
    /// The pass gets a 10 min deadline: after populating 100,000 pods every one of 5,000 HSDs
    /// has a status to write, more than the default 50 s allow on two cores (the last 20 timed
    /// out, and a CronJob's next pass would have finished them). This pass is not measured.
    pub async fn converge(&self) -> Res<()> {
        self.product
            .run(
                &["reconcile", "-A", "--deadline", "10m"],
                Duration::from_secs(900),
            )
            .await?;
        self.tracker
            .settle(Duration::from_secs(3), Duration::from_secs(300))
            .await
    }
}

/// What happens at each HSD count, in growing order.
#[derive(Debug, Default)]
struct Stage {
    hsds: usize,
    pass: bool,
    start: bool,
    reaction: bool,
    /// One watcher at this size: the reference of the sharded pair.
    shard_reference: bool,
    failover: bool,
    /// Two sharded replicas at this size.
    shard_pair: bool,
}

/// The stage at `pods`, added if it is new.
fn stage_at(stages: &mut Vec<Stage>, pods: usize) -> &mut Stage {
    let hsds = pods / PODS_PER_HSD;
    let i = match stages.iter().position(|s| s.hsds == hsds) {
        Some(i) => i,
        None => {
            stages.push(Stage {
                hsds,
                ..Default::default()
            });
            stages.len() - 1
        }
    };
    &mut stages[i]
}

fn stages(options: &Options) -> Vec<Stage> {
    let mut stages: Vec<Stage> = Vec::new();
    let at = stage_at;
    if options.runs("pass") {
        for &pods in &options.pass_pods {
            at(&mut stages, pods).pass = true;
        }
    }
    if options.runs("start") {
        for &pods in &options.start_pods {
            at(&mut stages, pods).start = true;
        }
    }
    if options.runs("reaction") {
        at(&mut stages, options.reaction_hsds * PODS_PER_HSD).reaction = true;
    }
    if options.runs("shards") {
        at(&mut stages, options.shard_pods).shard_reference = true;
        at(&mut stages, 2 * options.shard_pods).shard_pair = true;
    }
    if options.runs("failover") {
        at(&mut stages, options.shard_pods).failover = true;
    }
    stages.sort_by_key(|s| s.hsds);
    stages
}

async fn benchmark(options: &Options, cluster: &Cluster, results: &mut Value) -> Res<()> {
    let repo = repo_root();
    let work = repo.join("target/bench-work");
    std::fs::create_dir_all(&work).ctx(format!("creating {}", work.display()))?;
    let product = Product::new(&cluster.kubeconfig, &work)?;
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
    let stages = stages(options);
    say(format!(
        "plan: {} (HSDs of 20 pods)",
        stages
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join("; ")
    ));

    // First, while the cluster is quiet: the proxy needs only one Deployment.
    if options.runs("proxy") {
        results["proxy"] = proxy::measure(options.quick, &client, &product, &work).await?;
    }

    product.run(&["install"], Duration::from_secs(120)).await?;
    // Next, while the cluster is still quiet: HSD mode's wake needs the CRD.
    if options.runs("proxy-hsd") {
        results["proxy_hsd"] = proxy_hsd::measure(options.quick, &client, &product, &work).await?;
    }
    // Active-standby failover hook (#16): bench/failover.rs, in namespaces of its own, while the
    // cluster holds no other pods (neither the product's watcher nor the floor watches them).
    if options.runs("standby") {
        let count = std::env::var("HSD_BENCH_FAILOVERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(if options.quick { 100 } else { 300 });
        results["standby"] = failover::measure(&client, &product, count).await?;
    }
    let namespaces: Vec<String> = (0..layout.namespaces)
        .map(|i| layout.namespace(i))
        .collect();
    populate::create_namespaces(&client, &namespaces).await?;
    let tracker = PodTracker::start(&client);
    tracker.wait_synced().await?;
    let mut deployments = DeploymentWatch::start(&client).await?;
    let bench = Bench {
        options,
        cluster,
        client: client.clone(),
        product: product.clone(),
        tracker,
        layout,
    };

    let mut created = 0;
    let mut passes = Vec::new();
    let mut starts = Vec::new();
    for stage in stages {
        grow(&bench, &mut created, stage.hsds).await?;
        results["load"][format!("{}_pods", stage.hsds * PODS_PER_HSD)] = json!(load_average());
        if stage.pass {
            passes.push(pass::measure(&bench, stage.hsds).await?);
            results["pass"] = json!(passes);
        }
        if stage.start {
            let repetitions = if stage.hsds * PODS_PER_HSD > 50_000 {
                options.start_repetitions.min(2)
            } else {
                options.start_repetitions
            };
            starts.push(start::measure(&bench, &mut deployments, stage.hsds, repetitions).await?);
            results["start"] = json!(starts);
        }
        if stage.reaction {
            let (hsds, events) = (options.reaction_hsds, options.events);
            results["reaction"] = reaction::measure(
                &bench,
                &mut deployments,
                hsds,
                stage.hsds,
                events,
                Contender::Single,
            )
            .await?;
            // The same again with `routing.stateLabel` on: what the label writes cost (#13).
            set_state_label(&client, &bench.layout, hsds, true).await?;
            let labelled = reaction::measure(
                &bench,
                &mut deployments,
                hsds,
                stage.hsds,
                events,
                Contender::Single,
            )
            .await;
            set_state_label(&client, &bench.layout, hsds, false).await?;
            results["reaction_state_label"] = labelled?;
            // The same again with other pods beside the HSDs' own.
            populate::create_other_pods(&client, &bench.layout, options.other_pods).await?;
            let mut others = reaction::measure(
                &bench,
                &mut deployments,
                hsds,
                stage.hsds,
                events,
                Contender::Single,
            )
            .await;
            if let Ok(value) = &mut others {
                value["other_pods"] = json!(options.other_pods);
            }
            populate::delete_other_pods(&client, &bench.layout).await?;
            results["reaction_others"] = others?;
        }
        if stage.shard_reference {
            results["shards"]["single"] = reaction::measure(
                &bench,
                &mut deployments,
                options.reaction_hsds.min(stage.hsds),
                stage.hsds,
                options.events,
                Contender::Single,
            )
            .await?;
        }
        if stage.failover {
            results["failover"] = shards::failover(&bench, &mut deployments, stage.hsds).await?;
        }
        if stage.shard_pair {
            results["shards"]["pair"] = reaction::measure(
                &bench,
                &mut deployments,
                options.reaction_hsds.min(stage.hsds),
                stage.hsds,
                options.events,
                Contender::ShardedPair,
            )
            .await?;
        }
    }
    results["notes"] = json!(notes());
    if options.runs("probes") {
        results["probes"] = probes::run(&bench, options.probe_pods).await?;
    }
    // HSJ hook (#14): bench/hsj.rs, in namespaces of its own, after everything else.
    if options.runs("hsj") {
        results["hsj"] =
            hsj::measure(options.quick, &client, &product, &cluster.kubeconfig, &work).await?;
    }
    Ok(())
}

/// Turns `routing.stateLabel` on or off for the first `hsds` HSDs (merge patch of the spec).
async fn set_state_label(
    client: &kube::Client,
    layout: &populate::Layout,
    hsds: usize,
    on: bool,
) -> Res<()> {
    let resource = kubectl_hsd::observe::hsd_resource();
    for h in 0..hsds {
        let api: kube::Api<kube::api::DynamicObject> =
            kube::Api::namespaced_with(client.clone(), &layout.namespace(h), &resource);
        let patch = json!({"spec": {"routing": {"stateLabel": on}}});
        api.patch(
            &populate::Layout::name(h),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .ctx("setting routing.stateLabel")?;
    }
    Ok(())
}

fn notes() -> Vec<&'static str> {
    vec![
        "One-shot pass: `/usr/bin/time -v kubectl-hsd reconcile -A --stats` after a converging pass and a settled cluster; seconds = process wall time (median of the repetitions), pass_seconds = the --stats time, cpu_seconds = the process's user + system CPU (the rest of the wall time is waiting for the API server), requests/noop_writes from --stats, peak RSS from /usr/bin/time. Its floor (floor_seconds, taking turns with it): a bare paginated list, in-process on a runtime of its own with a client built in the measured time, of the HSDs and of the Deployments and pods that carry the HSD label, the three lists at once, 500 a page, parsed into lean structs. HSDs are spread over 10 namespaces.",
        "Watcher start: from just before `reconcile --watch -A --leader-elect=false` is spawned to the first Deployment write it makes (the benchmark's own watch delivers it): before each start, with no controller running, one pod in each of 5 HSDs (different ones each start) was flipped busy, so that they need 20 -> 21. The floor (floor_sync_s, taking turns with it): kube's reflector on the same three resources (pods and Deployments with the HSD label, all HSDs), the objects parsed into the product's lean types, in a process of its own (this benchmark binary with --floor-reflector), from its spawn until all three delivered InitDone; floor_rss_mb: its VmRSS 5 s later, while it keeps watching (the largest of the starts). all_decided_s: until every HSD has its hsd_desired_replicas series (polled). rss_mb: VmRSS 5 s after that (the largest of the starts).",
        "Reaction: each event flips one pod's paia.tech/busy annotation (merge PATCH); the latency runs from the PATCH's response to this benchmark's own Deployment watch delivering the new spec.replicas. Flips alternate busy/idle per HSD (replicas 20 <-> 21), one at a time, each waited for. The floor (in-process kube-rs client on its own runtime thread) watches the pods that carry the HSD label and merge-PATCHes spec.replicas to idleTarget + busy on each change; floor and product take turns in blocks on the same pods. reaction_others: the same with other pods (never scheduled, no HSD label) in the HSDs' namespaces.",
        "reaction_state_label: the reaction series again with spec.routing.stateLabel on for the flipped HSDs, so that every flip also relabels the pod (paia.tech/state): the label writes' cost, beside the same floor.",
        "Shards: the one-watcher reference (`reconcile --watch -A --leader-elect=false`) at the smaller size, and two replicas of `reconcile --watch -A --shards 2` (leader election on Leases of their own) at twice the size, each leading one shard; each replica's reaction is over the flips of its own shard's HSDs, its RSS read after the flips.",
        "Failover: two sharded replicas at steady state; the one leading shard 1 is killed (SIGKILL) and at once a pod of an HSD in shard 1 is flipped busy. shard_taken: until the survivor's hsd_shards_led is 2 (polled every 200 ms); acted: until the benchmark's Deployment watch sees the flip's 20 -> 21.",
        "Active-standby failover (standby, #16): a Deployment of 4 pods on the tainted data node (addresses in 198.18.0.0/24, data in the EndpointSlices, never connected to) behind a headless Service; the figure runs from a master pod's DELETE being acknowledged to this benchmark's own watch of the Service's EndpointSlices showing one ready pod, the new master. The floor, in a namespace of its own: an in-process pod watch that merge-patches qoqo.dev/pod-designation=active onto a ready pod as soon as no ready pod carries it (no record, no fence), behind a Service that selects the label itself; the product, `reconcile --watch -A --leader-elect=false`, on a Service annotated qoqo.dev/service-mode=active-standby in another namespace. Both run throughout and take turns in 4 blocks. Each deletion waits for 4 ready pods and one ready endpoint again; only deletions; 100 each (quick), 300 (full), HSD_BENCH_FAILOVERS overrides. Both figures include the EndpointSlice controller's hop, and with it its retries when its informer cache is behind its own last slice write (a requeue with backoff, hundreds of ms): delete_ack_ms is how long each DELETE took to be answered, not part of the figure.",
        "Probes: per_second is kubectl_hsd::observe::probe::Prober::probe_all at the default concurrency against one real HTTP server per pod IP (half 200, half 503), median of 5 rounds; pass_per_second is pods probed / --stats seconds of a one-shot pass over the HTTP-mode HSDs; slow_server_extra_ms is how much later the other servers were all answered when the first one never answers (1 s timeout) than in the baseline round just before, median of 3 such pairs.",
        "Proxy: `kubectl hsd proxy` (release binary, --ttl 1h, --max-held 20000) and the floor (a minimal tokio proxy: accept, connect, TCP_NODELAY, copy_bidirectional; this benchmark binary run again as a process of its own) forward to the same loopback upstream (a runtime thread of the benchmark: echo, or a sink that answers the byte count); direct is the client to the upstream without a proxy. Round trips: 64-byte ping-pong on one connection per round; connection rate: connect, 1 byte each way, close, 16 at a time; throughput: one connection sending to the sink; all interleaved in rounds (direct, floor, product). Idle forwarded: connections that each exchanged one byte, kept open, VmRSS after 1 s. Held: connections to the product while its app's only endpoint is not ready, VmRSS once /metrics counts them all. Warm API requests: the product's hsd_proxy_api_requests_total over the round-trip and connection-rate phases, after a first connection wrote the scale-down deadline. Wake (last, alternating): the floor merge-PATCHes the app from 0 to 1 replica and watches its pods until one is Ready; the product's figure runs from a client's connect to the proxy, the app at 0, to the first byte back through the woken app. No EndpointSlice controller runs (loopback pod IPs), so the benchmark writes the slice's TEST-NET endpoint ready when its pod watch sees a Ready pod; that write is in the product's figure only.",
        "Load: the load average (1, 5, 15 min) is recorded at the start and end of the run, at each size (load) and with each figure; the machine is shared, so ratios to the floor measured in the same run are the figures to compare.",
    ]
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

/// Grows the annotation-mode set to `target` HSDs and waits until all their pods are ready.
async fn grow(bench: &Bench<'_>, created: &mut usize, target: usize) -> Res<()> {
    let layout = &bench.layout;
    if *created < target {
        let manifests = (*created..target)
            .map(|i| populate::annotation_hsd(&layout.namespace(i), &Layout::name(i)))
            .collect();
        populate::create_hsds(
            &bench.client,
            manifests,
            &format!("HSDs {}..{}", *created, target),
        )
        .await?;
        *created = target;
        // One pass creates the new Deployments; the controllers and kwok make the pods.
        // Not measured: a deadline and a request timeout that thousands of Deployment
        // creations fit in (at 100,000 pods on 2 cores the default 50 s deadline passed, and a
        // list waited over 30 s on the API server busy making pods), and another pass if one
        // fails all the same (each takes up where the last one stopped).
        let t = Instant::now();
        let args = [
            "reconcile",
            "-A",
            "--deadline",
            "25m",
            "--request-timeout",
            "5m",
        ];
        let mut attempt = 1;
        while let Err(error) = bench.product.run(&args, Duration::from_secs(1800)).await {
            if attempt == 3 {
                return Err(error);
            }
            say(format!(
                "the pass creating the Deployments failed (attempt {attempt}), again: {}",
                error.lines().last().unwrap_or_default()
            ));
            attempt += 1;
        }
        say(format!(
            "pass creating the Deployments: {:.1}s",
            t.elapsed().as_secs_f64()
        ));
    }
    let pods = target * PODS_PER_HSD;
    let timeout = Duration::from_secs(120) + Duration::from_millis(100) * pods as u32;
    bench
        .tracker
        .wait_ready("w", pods, timeout, &format!("pods ready ({target} HSDs)"))
        .await
}

/// The entry of `list` at the goal's size, else the largest (then the goal is not evaluated).
fn at_size(list: &Value, pods: u64) -> Option<(&Value, bool)> {
    let entries = list.as_array()?;
    if let Some(entry) = entries.iter().find(|e| e["pods"].as_u64() == Some(pods)) {
        return Some((entry, true));
    }
    entries
        .iter()
        .filter(|e| e["pods"].as_u64() < Some(pods))
        .max_by_key(|e| e["pods"].as_u64())
        .map(|e| (e, false))
}

/// " (at N pods; the goal is at M)" when measured at another size.
fn at_note(entry: &Value, full: bool, goal_pods: u64) -> String {
    if full {
        String::new()
    } else {
        format!(" (at {} pods; the goal is at {goal_pods})", entry["pods"])
    }
}

fn goals(results: &Value) -> Vec<Goal> {
    let mut goals = Vec::new();
    let quick = results["quick"] == true;
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);

    // Watcher start to first decision, and memory.
    if let Some((s, full)) = at_size(&results["start"], 20_000) {
        let at = at_note(s, full, 20_000);
        let (first, floor) = (f(&s["first_decision_s"]), f(&s["floor_sync_s"]));
        goals.push(Goal {
            name: format!("watcher start to first decision{at}"),
            target: "<= 5 s at 20,000 pods and 1,000 HSDs".into(),
            value: format!("{first:.2} s"),
            met: full.then_some(first <= 5.0),
        });
        goals.push(Goal {
            name: format!("watcher start vs a bare reflector sync{at}"),
            target: "<= 1.5x the floor".into(),
            value: format!("{:.2}x ({first:.2} / {floor:.2} s)", first / floor),
            met: Some(first <= 1.5 * floor),
        });
        let (rss, floor_rss) = (f(&s["rss_mb"]), f(&s["floor_rss_mb"]));
        goals.push(Goal {
            name: format!("watcher RSS{at}"),
            target: "<= 80 MB at 20,000 pods".into(),
            value: format!(
                "{rss:.1} MB, of which {:.1} MB anonymous, the rest the binary's mapped pages (the reflector floor: {floor_rss:.1} MB)",
                f(&s["anon_mb"])
            ),
            met: full.then_some(rss <= 80.0),
        });
    }

    // What the state label's writes cost (#13): the same series with routing.stateLabel on.
    let (plain, labelled) = (&results["reaction"], &results["reaction_state_label"]);
    // Busy flips: an idle flip's p99 is mostly the drain settle, with the label or without.
    if let (Some(off), Some(on)) = (plain["up_p99_ms"].as_f64(), labelled["up_p99_ms"].as_f64()) {
        goals.push(Goal {
            name: "busy flip p99 with routing.stateLabel on".into(),
            target: "measured (no goal): the label writes' cost".into(),
            value: format!(
                "{on:.1} ms against {off:.1} ms with it off (floor {:.1} ms)",
                f(&labelled["floor_up_p99_ms"])
            ),
            met: None,
        });
    }

    // Reaction.
    let r = &results["reaction"];
    if let (Some(up), Some(floor_up)) = (r["up_p99_ms"].as_f64(), r["floor_up_p99_ms"].as_f64()) {
        // A busy flip's scale-up: the reaction #12 is about. A scale-down drains a pod first
        // (#13), which the floor's bare PATCH does not.
        goals.push(Goal {
            name: "busy flip to scale-up, p99 vs floor".into(),
            target: "<= 1.3x the floor's p99".into(),
            value: format!("{:.2}x ({up:.1} / {floor_up:.1} ms)", up / floor_up),
            met: Some(up <= 1.3 * floor_up),
        });
    }
    if let (Some(p99), Some(floor)) = (r["p99_ms"].as_f64(), r["floor_p99_ms"].as_f64()) {
        // Half the flips are scale-downs, which wait DRAIN_SETTLE (1 s) after the drain by
        // design (the ReplicaSet's pod cache must see the marks): this p99 is one of those.
        goals.push(Goal {
            name: "reaction p99 vs floor (busy and idle flips)".into(),
            target: "<= 1.3x the floor's p99".into(),
            value: format!(
                "{:.2}x ({p99:.1} / {floor:.1} ms; a scale-down that drains waits the 1 s settle by design)",
                p99 / floor
            ),
            met: Some(p99 <= 1.3 * floor),
        });
        if let (Some(down), Some(floor_down)) =
            (r["down_p99_ms"].as_f64(), r["floor_down_p99_ms"].as_f64())
        {
            goals.push(Goal {
                name: "idle flip to scale-down, p99".into(),
                target: "measured (no goal): the 1 s drain settle, then the drop".into(),
                // Only a flip that had to drain a pod waits the settle (one that comes before
                // the last scale-up's pod is seen drops past a pod the ReplicaSet owes).
                value: if down >= 1000.0 {
                    format!(
                        "{down:.1} ms, of which 1,000 the settle (the floor's bare PATCH: {floor_down:.1} ms)"
                    )
                } else {
                    format!(
                        "{down:.1} ms: no idle flip in the top 1% waited the settle (the floor's bare PATCH: {floor_down:.1} ms)"
                    )
                },
                met: None,
            });
        }
    }
    // Against a cluster with other pods: the scale-ups, where the watcher's machinery is all
    // of the latency (a scale-down's is mostly the settle, the same with or without them).
    if let (Some(up), Some(floor_up)) = (r["up_p99_ms"].as_f64(), r["floor_up_p99_ms"].as_f64()) {
        let o = &results["reaction_others"];
        if let Some(others) = o["up_p99_ms"].as_f64() {
            goals.push(Goal {
                name: format!(
                    "busy flip to scale-up p99 with {} other pods vs with none",
                    o["other_pods"]
                ),
                target: "<= 1.2x (20,000 other pods)".into(),
                value: format!(
                    "{:.2}x ({others:.1} / {up:.1} ms; the floor's: {:.2}x)",
                    others / up,
                    f(&o["floor_up_p99_ms"]) / floor_up
                ),
                met: Some(others <= 1.2 * up),
            });
        }
    }

    // One-shot pass.
    let passes = results["pass"].as_array().cloned().unwrap_or_default();
    if let Some((p, full)) = at_size(&results["pass"], 20_000) {
        let at = at_note(p, full, 20_000);
        let (seconds, floor) = (f(&p["seconds"]), f(&p["floor_seconds"]));
        goals.push(Goal {
            name: format!("pass vs a bare paginated list{at}"),
            target: "<= 1.3x the floor".into(),
            value: format!("{:.2}x ({seconds:.2} / {floor:.2} s)", seconds / floor),
            met: Some(seconds <= 1.3 * floor),
        });
        goals.push(Goal {
            name: format!("pass wall time{at}"),
            target: "<= 5 s at 20,000 pods".into(),
            value: format!("{seconds:.2} s"),
            met: full.then_some(seconds <= 5.0),
        });
        let rss = f(&p["peak_rss_mb"]);
        goals.push(Goal {
            name: format!("pass peak RSS{at}"),
            target: "<= 150 MB at 20,000 pods".into(),
            value: format!("{rss:.1} MB"),
            met: full.then_some(rss <= 150.0),
        });
    }
    if let Some(largest) = passes.iter().max_by_key(|p| p["pods"].as_u64()) {
        // Paginated lists only (500 a page), nothing per HSD: the HSDs, their Deployments and pods,
        // plus one GET of the leader Lease and a page each of the HSJs, the Services and the pods
        // labelled as masters (active-standby), which hold nothing in this benchmark.
        let (pods, hsds) = (
            largest["pods"].as_u64().unwrap_or(0),
            largest["hsds"].as_u64().unwrap_or(0),
        );
        let requests = largest["requests"].as_u64().unwrap_or(u64::MAX);
        let pages = |n: u64| n.div_ceil(500).max(1);
        let bound = pages(hsds) * 2 + pages(pods) + 4;
        goals.push(Goal {
            name: format!("pass API requests (at {pods} pods)"),
            target: "O(namespaces), not O(HSDs): paginated lists only".into(),
            value: format!("{requests} for {hsds} HSDs (list-only bound {bound})"),
            met: Some(requests <= bound),
        });
        let writes: u64 = passes
            .iter()
            .filter_map(|p| p["noop_writes"].as_u64())
            .max()
            .unwrap_or(0);
        goals.push(Goal {
            name: "writes of a no-op pass".into(),
            target: "0 at every size".into(),
            value: writes.to_string(),
            met: Some(writes == 0),
        });
    }

    // Shards.
    let (single, pair) = (&results["shards"]["single"], &results["shards"]["pair"]);
    if let (Some(replicas), Some(rss), Some(p99)) = (
        pair["replicas"].as_array(),
        single["watcher_rss_mb"].as_f64(),
        single["up_p99_ms"].as_f64(),
    ) {
        let at = format!(
            " ({} pods on 2 replicas vs {} on one)",
            pair["pods"], single["pods"]
        );
        let worst_rss = replicas.iter().map(|r| f(&r["rss_mb"])).fold(0.0, f64::max);
        // Scale-ups: a scale-down's latency is mostly the drain settle, the same everywhere.
        let worst_p99 = replicas
            .iter()
            .map(|r| f(&r["up_p99_ms"]))
            .fold(0.0, f64::max);
        goals.push(Goal {
            name: format!("2 shards: each replica's RSS{at}"),
            target: "as with one shard: <= 1.1x the one watcher's".into(),
            value: format!(
                "{} MB vs {rss:.1} MB",
                replicas
                    .iter()
                    .map(|r| format!("{:.1}", f(&r["rss_mb"])))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
            met: Some(worst_rss <= 1.1 * rss),
        });
        goals.push(Goal {
            name: format!("2 shards: each replica's scale-up reaction p99{at}"),
            target: "as with one shard: <= 1.2x the one watcher's".into(),
            value: format!(
                "{} ms vs {p99:.1} ms (floors {:.1} and {:.1} ms)",
                replicas
                    .iter()
                    .map(|r| format!("{:.1}", f(&r["up_p99_ms"])))
                    .collect::<Vec<_>>()
                    .join(" and "),
                f(&pair["floor_up_p99_ms"]),
                f(&single["floor_up_p99_ms"])
            ),
            met: Some(worst_p99 <= 1.2 * p99),
        });
    }
    let x = &results["proxy"];
    if let (Some(added), Some(floor)) = (
        x["round_trip"]["added_p99_us"].as_f64(),
        x["round_trip"]["floor_p99_us"].as_f64(),
    ) {
        goals.push(Goal {
            name: "proxy: added round trip p99".into(),
            target: "<= +50 us over the floor".into(),
            value: format!("{added:+.1} us (floor p99 {floor:.1} us)"),
            met: Some(added <= 50.0),
        });
    }
    if let (Some(rss), Some(goal)) = (x["held"]["rss_mb"].as_f64(), x["held"]["goal_mb"].as_f64()) {
        goals.push(Goal {
            name: format!(
                "proxy: RSS with {} held connections",
                x["held"]["connections"]
            ),
            target: "<= 50 MB + 32 KiB per connection".into(),
            value: format!(
                "{rss:.1} MB ({} KiB each; goal {goal:.1} MB)",
                x["held"]["per_connection_kib"]
            ),
            met: Some(rss <= goal),
        });
    }
    for (figure, name) in [
        ("connection_rate", "proxy: connection rate"),
        ("throughput", "proxy: throughput"),
    ] {
        if let Some(ratio) = x[figure]["ratio"].as_f64() {
            goals.push(Goal {
                name: name.into(),
                target: ">= 95% of the floor".into(),
                value: format!("{:.0}% of the floor", ratio * 100.0),
                met: Some(ratio >= 0.95),
            });
        }
    }
    if let (Some(product), Some(floor)) = (
        x["wake"]["product_p99_ms"].as_f64(),
        x["wake"]["floor_p99_ms"].as_f64(),
    ) {
        goals.push(Goal {
            name: format!("proxy: wake p99 ({} cold starts)", x["wake"]["samples"]),
            target: "<= 1.5x the floor (scale PATCH, watch until a pod is Ready)".into(),
            value: format!(
                "{product:.0} ms, {:.2}x the floor ({floor:.0} ms)",
                product / floor
            ),
            met: Some(product <= 1.5 * floor),
        });
    }
    let h = &results["proxy_hsd"]["wake"];
    if let (Some(product), Some(floor)) = (h["product_p99_ms"].as_f64(), h["floor_p99_ms"].as_f64())
    {
        goals.push(Goal {
            name: format!("proxy --hsd: wake p99 ({} cold starts)", h["samples"]),
            target: "<= 1.5x the floor (scale PATCH, watch until a pod is Ready)".into(),
            value: format!(
                "{product:.0} ms, {:.2}x the floor ({floor:.0} ms); {} dials refused before the pod's server was bound",
                product / floor,
                h["dials_refused"]
            ),
            met: Some(product <= 1.5 * floor),
        });
    }
    if let Some(requests) = x["warm_api_requests"]["requests"].as_f64() {
        goals.push(Goal {
            name: "proxy: API requests per warm connection".into(),
            target: "0".into(),
            value: format!(
                "{requests} for {} connections",
                x["warm_api_requests"]["connections"]
            ),
            met: Some(requests == 0.0),
        });
    }
    let fo = &results["failover"];
    if let (Some(acted), Some(lease)) = (fo["acted_seconds"].as_f64(), fo["lease_seconds"].as_f64())
    {
        goals.push(Goal {
            name: format!("failover of a sharded replica (at {} pods)", fo["pods"]),
            target: "<= lease + 5 s".into(),
            value: format!(
                "{acted:.1} s (shard taken after {:.1} s; lease {lease:.0} s)",
                f(&fo["shard_taken_seconds"])
            ),
            met: Some(acted <= lease + 5.0),
        });
    }

    // The scale figure.
    for (key, what) in [("pass", "pass"), ("start", "watcher start")] {
        if let Some(entry) = results[key]
            .as_array()
            .and_then(|l| l.iter().find(|e| e["pods"].as_u64() == Some(100_000)))
        {
            let value = if key == "pass" {
                format!(
                    "{:.2} s (floor {:.2} s), peak RSS {:.1} MB",
                    f(&entry["seconds"]),
                    f(&entry["floor_seconds"]),
                    f(&entry["peak_rss_mb"])
                )
            } else {
                format!(
                    "first decision {:.2} s (floor {:.2} s), RSS {:.1} MB",
                    f(&entry["first_decision_s"]),
                    f(&entry["floor_sync_s"]),
                    f(&entry["rss_mb"])
                )
            };
            goals.push(Goal {
                name: format!("scale: {what} at 100,000 pods"),
                target: "measured once in a full run (no goal)".into(),
                value,
                met: None,
            });
        }
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
    // HSJ hook (#14).
    goals.extend(hsj::goals(results));
    // Active-standby failover hook (#16).
    goals.extend(failover::goals(results));
    if quick {
        for goal in &mut goals {
            if goal.met.is_none() && !goal.target.contains("no goal") {
                goal.value.push_str(" (quick run)");
            }
        }
    }
    goals
}
