//! The proxy measurement: `kubectl hsd proxy` (the release binary, spawned) next to the floor, a
//! minimal tokio `copy_bidirectional` proxy (this benchmark binary run again with
//! `HSD_BENCH_FLOOR_PROXY`), both in front of the same loopback upstream, with a direct
//! connection to the upstream as the baseline. Loopback only: the EndpointSlice that makes the
//! proxy's app ready holds a TEST-NET address that nothing dials.
//!
//! Measured side by side: round trips (64-byte ping-pong), connection rate, throughput, memory
//! with idle forwarded connections, the product's memory with 10,000 held connections, and the
//! product's API requests per connection on the warm path.
//!
//! Wake: a cold start through the product (client connect to the first byte back, the app at zero)
//! next to the floor measured in the same run (a scale PATCH, then a pod watch until a pod is
//! Ready). The cluster runs no EndpointSlice controller (pod IPs are loopback, which slices
//! refuse), so the benchmark plays its part: it watches the app's pods and, once one is Ready,
//! writes the slice's TEST-NET endpoint ready. That write and its watch event are in the
//! product's figure and not in the floor's.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::product::{Product, http_get, proc_memory_kb, tail};
use crate::util::{Context, Res, percentile, round, say, wait_for};

/// Set to the upstream address, this binary runs the floor proxy instead of the benchmark.
pub const FLOOR_ENV: &str = "HSD_BENCH_FLOOR_PROXY";
const NAMESPACE: &str = "bench-proxy";
const APP: &str = "echo";
/// What the upstream does with a connection, chosen by its first byte.
pub(crate) const ECHO: u8 = b'E';
const SINK: u8 = b'S';
const PING: usize = 64;

#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    rtt_samples: usize,
    rounds: usize,
    connections: usize,
    concurrency: usize,
    throughput_bytes: usize,
    idle_forwarded: usize,
    held: usize,
    wakes: usize,
}

pub fn sizes(quick: bool) -> Sizes {
    Sizes {
        rtt_samples: if quick { 6_000 } else { 30_000 },
        rounds: if quick { 3 } else { 5 },
        connections: if quick { 3_000 } else { 10_000 },
        concurrency: 16,
        throughput_bytes: if quick { 128 << 20 } else { 512 << 20 },
        idle_forwarded: 5_000,
        held: 10_000,
        // 100: the p99 of 30 was the second slowest start, and moved 1.2x to 1.7x between runs.
        wakes: if quick { 8 } else { 100 },
    }
}

/// Raises the open-file limit to the hard limit: the held measurement opens 10,000 sockets.
pub fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// The floor: accept, dial the upstream, `copy_bidirectional`. Nothing else.
pub fn floor_main(target: String) -> ! {
    raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        eprintln!(
            "floor listening on {}",
            listener.local_addr().expect("address")
        );
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            let target = target.clone();
            tokio::spawn(async move {
                let _ = client.set_nodelay(true);
                let Ok(mut upstream) = TcpStream::connect(&target).await else {
                    return;
                };
                let _ = upstream.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    std::process::exit(0)
}

/// The upstream, on a runtime thread of its own: echo, or count bytes to EOF and answer the count.
struct Upstream {
    addr: SocketAddr,
}

impl Upstream {
    fn start() -> Res<Self> {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                let _ = sender.send(listener.local_addr().expect("address"));
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    };
                    tokio::spawn(serve_upstream(stream));
                }
            });
        });
        let addr = receiver
            .recv_timeout(Duration::from_secs(5))
            .ctx("starting the upstream")?;
        Ok(Self { addr })
    }
}

pub(crate) async fn serve_upstream(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut mode = [0u8; 1];
    if stream.read_exact(&mut mode).await.is_err() {
        return;
    }
    match mode[0] {
        ECHO => {
            let (mut read, mut write) = stream.split();
            let _ = tokio::io::copy(&mut read, &mut write).await;
        }
        SINK => {
            let mut buffer = vec![0u8; 64 * 1024];
            let mut total: u64 = 0;
            loop {
                match stream.read(&mut buffer).await {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(_) => return,
                }
            }
            let _ = stream.write_all(&total.to_be_bytes()).await;
        }
        _ => {}
    }
}

/// A proxy process (the product or the floor), killed when dropped.
pub(crate) struct Process {
    child: tokio::process::Child,
    pid: u32,
    pub(crate) addr: SocketAddr,
    admin: Option<String>,
    pub(crate) log: PathBuf,
}

impl Process {
    pub(crate) async fn wait_for_line(
        child: tokio::process::Child,
        log: PathBuf,
        listening: &str,
        admin_prefix: Option<&str>,
    ) -> Res<Self> {
        let pid = child.id().ok_or("the proxy exited at once")?;
        let mut process = Self {
            child,
            pid,
            addr: "127.0.0.1:0".parse().expect("an address"),
            admin: None,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&process.log).unwrap_or_default();
            let find = |prefix: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(prefix))
                    .and_then(|rest| rest.split(' ').next())
                    .map(str::to_string)
            };
            let admin = admin_prefix.map(find);
            if let Some(addr) = find(listening)
                && admin.as_ref().is_none_or(|a| a.is_some())
            {
                process.addr = addr.parse().ctx("the proxy's address")?;
                process.admin = admin.flatten();
                return Ok(process);
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                return Err(format!("the proxy exited ({status}):\n{}", tail(&text, 20)));
            }
            if Instant::now() > deadline {
                return Err(format!("the proxy did not start:\n{}", tail(&text, 20)));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the proxy has seen the app at 0 replicas with no ready endpoint.
    pub(crate) async fn wait_asleep(&self) -> Res<()> {
        wait_for(
            "the proxy to see the app asleep",
            Duration::from_secs(30),
            Duration::from_millis(20),
            || async {
                let replicas = self.metric("hsd_proxy_replicas").await?;
                let ready = self.metric("hsd_proxy_endpoints{state=\"ready\"}").await?;
                Ok((replicas == 0.0 && ready == 0.0).then_some(()))
            },
        )
        .await
    }

    fn rss_kb(&self) -> Res<u64> {
        Ok(proc_memory_kb(self.pid)?.0)
    }

    pub(crate) async fn metric(&self, series: &str) -> Res<f64> {
        let admin = self.admin.as_deref().ok_or("no admin port")?;
        let (_, text) = http_get(admin, "/metrics").await?;
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .ok_or_else(|| format!("no {series} in the proxy's /metrics"))
    }

    async fn api_requests(&self) -> Res<f64> {
        Ok(self
            .metric("hsd_proxy_api_requests_total{kind=\"read\"}")
            .await?
            + self
                .metric("hsd_proxy_api_requests_total{kind=\"write\"}")
                .await?)
    }
}

async fn start_floor(work: &Path, upstream: SocketAddr) -> Res<Process> {
    let log = work.join("proxy-floor.log");
    let file = std::fs::File::create(&log).ctx("creating the floor's log")?;
    let child = tokio::process::Command::new(std::env::current_exe().ctx("this binary")?)
        .env(FLOOR_ENV, upstream.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .ctx("starting the floor proxy")?;
    Process::wait_for_line(child, log, "floor listening on ", None).await
}

async fn start_product(product: &Product, work: &Path, upstream: SocketAddr) -> Res<Process> {
    let target = upstream.to_string();
    spawn_proxy(
        product,
        work.join("proxy-product.log"),
        &[
            "-n",
            NAMESPACE,
            "--deployment",
            APP,
            "--target",
            &target,
            "--ttl",
            "1h",
            "--max-held",
            "20000",
        ],
    )
    .await
}

/// Runs `kubectl hsd proxy ARGS` on loopback ports, dialling only 127.0.0.0/8, and waits until
/// its /readyz answers 200.
pub(crate) async fn spawn_proxy(product: &Product, log: PathBuf, args: &[&str]) -> Res<Process> {
    let file = std::fs::File::create(&log).ctx("creating the proxy's log")?;
    let child = product
        .command(&product.binary)
        .args([
            "proxy",
            "--address",
            "127.0.0.1:0",
            "--admin-address",
            "127.0.0.1:0",
        ])
        .args(["--allow-dial-cidr", "127.0.0.0/8"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .ctx("starting kubectl-hsd proxy")?;
    let process = Process::wait_for_line(
        child,
        log,
        "proxy listening on ",
        Some("serving /metrics, /healthz and /readyz on "),
    )
    .await?;
    let admin = process.admin.clone().unwrap_or_default();
    wait_for(
        "the proxy's /readyz",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async { Ok(matches!(http_get(&admin, "/readyz").await, Ok((200, _))).then_some(())) },
    )
    .await?;
    Ok(process)
}

/// The app the proxy fronts: a Deployment of one pod and a slice with one endpoint.
async fn prepare_cluster(client: &Client) -> Res<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace =
        serde_json::from_value(json!({"metadata": {"name": NAMESPACE}})).ctx("a namespace")?;
    match namespaces.create(&PostParams::default(), &namespace).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(error) => return Err(format!("creating namespace {NAMESPACE}: {error}")),
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    deployments
        .patch(
            APP,
            &PatchParams::apply("hsd-bench").force(),
            &Patch::Apply(json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": APP},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": APP}},
                    "template": {
                        "metadata": {"labels": {"app": APP}},
                        "spec": {"containers": [{"name": "echo", "image": "registry.invalid/echo:1"}]},
                    },
                },
            })),
        )
        .await
        .ctx("applying the proxied Deployment")?;
    set_ready(client, true).await
}

/// The app's one endpoint (TEST-NET: a readiness signal only), ready or not.
async fn set_ready(client: &Client, ready: bool) -> Res<()> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    slices
        .patch(
            "echo-bench",
            &PatchParams::apply("hsd-bench").force(),
            &Patch::Apply(json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "echo-bench", "labels": {"kubernetes.io/service-name": APP}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["192.0.2.1"], "conditions": {"ready": ready}}],
                "ports": [{"name": "", "port": 80, "protocol": "TCP"}],
            })),
        )
        .await
        .ctx("writing the EndpointSlice")?;
    Ok(())
}

/// Scales the app to `replicas` (a merge patch, as the proxy writes it).
async fn scale(client: &Client, replicas: i32) -> Res<()> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    deployments
        .patch(
            APP,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await
        .ctx("scaling the proxied Deployment")?;
    Ok(())
}

pub(crate) fn pod_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Puts the app to sleep: slice not ready, zero replicas, no pod left, and the proxy has seen
/// it all. Returns the pod list's resourceVersion, to watch from.
async fn put_to_sleep(client: &Client, proxy: &Process) -> Res<String> {
    set_ready(client, false).await?;
    scale(client, 0).await?;
    let resource_version = pods_gone(client, NAMESPACE, APP).await?;
    proxy.wait_asleep().await?;
    Ok(resource_version)
}

/// Waits until no pod labelled `app=<app>` is left; returns the list's resourceVersion.
pub(crate) async fn pods_gone(client: &Client, namespace: &str, app: &str) -> Res<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let params = ListParams::default().labels(&format!("app={app}"));
    wait_for(
        &format!("the pods of {app} to be gone"),
        Duration::from_secs(120),
        Duration::from_millis(50),
        || async {
            let list = pods.list(&params).await.ctx("listing the app's pods")?;
            Ok(list
                .items
                .is_empty()
                .then(|| list.metadata.resource_version.unwrap_or_default()))
        },
    )
    .await
}

/// Waits, on a watch from `resource_version`, until a pod labelled `app=<app>` is Ready.
pub(crate) async fn until_pod_ready(
    client: &Client,
    namespace: &str,
    app: &str,
    resource_version: &str,
) -> Res<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let params = WatchParams::default()
        .labels(&format!("app={app}"))
        .timeout(120);
    let mut events = pods
        .watch(&params, resource_version)
        .await
        .ctx("watching the app's pods")?
        .boxed();
    while let Some(event) = events.try_next().await.ctx("the app's pod watch")? {
        match event {
            WatchEvent::Added(pod) | WatchEvent::Modified(pod) if pod_ready(&pod) => return Ok(()),
            WatchEvent::Error(error) => return Err(format!("the app's pod watch: {error}")),
            _ => {}
        }
    }
    Err("the app's pod watch ended before a pod was Ready".into())
}

/// Cold starts, in milliseconds, alternating: the floor (scale PATCH, then a pod watch until a
/// pod is Ready) and the product (connect through the proxy, one byte each way); and for each of
/// the product's, where the time went (`WakeParts`).
async fn wakes(
    client: &Client,
    proxy: &Process,
    samples: usize,
) -> Res<([Vec<f64>; 2], Vec<WakeParts>)> {
    let mut times: [Vec<f64>; 2] = Default::default();
    let mut parts = Vec::new();
    for _ in 0..samples {
        // The floor.
        let resource_version = put_to_sleep(client, proxy).await?;
        let started = Instant::now();
        scale(client, 1).await?;
        until_pod_ready(client, NAMESPACE, APP, &resource_version).await?;
        times[0].push(started.elapsed().as_secs_f64() * 1e3);
        // The product, with the benchmark in the EndpointSlice controller's place.
        let resource_version = put_to_sleep(client, proxy).await?;
        let mirror = {
            let client = client.clone();
            tokio::spawn(async move {
                until_pod_ready(&client, NAMESPACE, APP, &resource_version).await?;
                let seen_ready = Instant::now();
                set_ready(&client, true).await?;
                Ok::<_, String>((seen_ready, Instant::now()))
            })
        };
        let started = Instant::now();
        let mut stream = connect(proxy.addr, ECHO).await?;
        stream.write_all(&[1]).await.ctx("the first byte")?;
        let mut byte = [0u8; 1];
        stream
            .read_exact(&mut byte)
            .await
            .ctx("the first byte back from the woken app")?;
        let answered = Instant::now();
        times[1].push((answered - started).as_secs_f64() * 1e3);
        drop(stream);
        let (seen_ready, written) = mirror.await.ctx("the endpoint mirror")??;
        let ms =
            |from: Instant, to: Instant| to.saturating_duration_since(from).as_secs_f64() * 1e3;
        parts.push(WakeParts {
            to_pod_ready: ms(started, seen_ready),
            slice_write: ms(seen_ready, written),
            after_slice: ms(written, answered),
        });
    }
    Ok((times, parts))
}

/// Where one of the product's cold starts went, in milliseconds: until the benchmark's pod watch
/// saw a Ready pod (the floor's span, plus the connect and the proxy's scale write), the
/// benchmark's own EndpointSlice write (the EndpointSlice controller's part, not the proxy's),
/// and from that write to the first byte back (the proxy's watch event, dial and forward).
struct WakeParts {
    to_pod_ready: f64,
    slice_write: f64,
    after_slice: f64,
}

pub(crate) async fn connect(addr: SocketAddr, mode: u8) -> Res<TcpStream> {
    let mut stream = TcpStream::connect(addr)
        .await
        .ctx(format!("connecting to {addr}"))?;
    stream.set_nodelay(true).ctx("TCP_NODELAY")?;
    stream.write_all(&[mode]).await.ctx("writing the mode")?;
    Ok(stream)
}

/// Round trips of 64 bytes on one connection, in microseconds.
async fn round_trips(addr: SocketAddr, samples: usize) -> Res<Vec<f64>> {
    let mut stream = connect(addr, ECHO).await?;
    let ping = [7u8; PING];
    let mut pong = [0u8; PING];
    // Warm the path (and the proxy's task) up first.
    for _ in 0..50 {
        stream.write_all(&ping).await.ctx("ping")?;
        stream.read_exact(&mut pong).await.ctx("pong")?;
    }
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        stream.write_all(&ping).await.ctx("ping")?;
        stream.read_exact(&mut pong).await.ctx("pong")?;
        times.push(started.elapsed().as_secs_f64() * 1e6);
    }
    Ok(times)
}

/// Connections per second: connect, one byte each way, close; `concurrency` at a time.
async fn connection_rate(addr: SocketAddr, connections: usize, concurrency: usize) -> Res<f64> {
    let started = Instant::now();
    let results: Vec<Res<()>> = stream::iter(0..connections)
        .map(|_| async move {
            let mut stream = connect(addr, ECHO).await?;
            stream.write_all(b"x").await.ctx("write")?;
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await.ctx("read")?;
            Ok(())
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    results.into_iter().collect::<Res<Vec<()>>>()?;
    Ok(connections as f64 / elapsed)
}

/// MiB/s of one connection sending `bytes` to the sink, until the sink's count comes back.
async fn throughput(addr: SocketAddr, bytes: usize) -> Res<f64> {
    let mut stream = connect(addr, SINK).await?;
    let chunk = vec![0x5au8; 64 * 1024];
    let started = Instant::now();
    let mut sent = 0;
    while sent < bytes {
        let n = chunk.len().min(bytes - sent);
        stream.write_all(&chunk[..n]).await.ctx("sending")?;
        sent += n;
    }
    stream.shutdown().await.ctx("closing the sending side")?;
    let mut count = [0u8; 8];
    stream
        .read_exact(&mut count)
        .await
        .ctx("reading the count")?;
    let elapsed = started.elapsed().as_secs_f64();
    if u64::from_be_bytes(count) != bytes as u64 {
        return Err(format!(
            "the sink counted {} bytes of {bytes}",
            u64::from_be_bytes(count)
        ));
    }
    Ok(bytes as f64 / (1024.0 * 1024.0) / elapsed)
}

/// Opens `n` connections; with `forwarded`, each proves it reached the upstream first.
async fn open_many(addr: SocketAddr, n: usize, forwarded: bool) -> Res<Vec<TcpStream>> {
    let opened: Vec<Res<TcpStream>> = stream::iter(0..n)
        .map(|_| async move {
            if !forwarded {
                return TcpStream::connect(addr).await.ctx("connecting");
            }
            let mut stream = connect(addr, ECHO).await?;
            stream.write_all(b"x").await.ctx("write")?;
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await.ctx("read")?;
            Ok(stream)
        })
        .buffer_unordered(128)
        .collect()
        .await;
    opened.into_iter().collect()
}

fn mb(kb: u64) -> f64 {
    round(kb as f64 / 1024.0, 1)
}

fn median(values: &[f64]) -> f64 {
    percentile(values, 50.0)
}

pub async fn measure(quick: bool, client: &Client, product: &Product, work: &Path) -> Res<Value> {
    let sizes = sizes(quick);
    raise_open_file_limit();
    say(format!(
        "proxy: {} round trips, {} connections, {} MiB, {} idle and {} held connections, floor vs kubectl-hsd proxy",
        sizes.rtt_samples,
        sizes.connections,
        sizes.throughput_bytes >> 20,
        sizes.idle_forwarded,
        sizes.held
    ));
    prepare_cluster(client).await?;
    let upstream = Upstream::start()?;
    let floor = start_floor(work, upstream.addr).await?;
    let proxy = start_product(product, work, upstream.addr).await?;
    let targets = [
        ("direct", upstream.addr),
        ("floor", floor.addr),
        ("product", proxy.addr),
    ];
    // The first connection through the product writes the deadline (there was none).
    for (_, addr) in &targets {
        round_trips(*addr, 10).await?;
    }
    // First, while the process is fresh: the product's memory with held connections. The app
    // is not ready, so every connection waits (no upstream socket, no buffer).
    set_ready(client, false).await?;
    wait_for(
        "the proxy to see the app not ready",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            Ok((proxy.metric("hsd_proxy_endpoints{state=\"ready\"}").await? == 0.0).then_some(()))
        },
    )
    .await?;
    let held_before = proxy.rss_kb()?;
    let started = Instant::now();
    let held = open_many(proxy.addr, sizes.held, false).await?;
    let want = sizes.held as f64;
    wait_for(
        &format!("{} held connections", sizes.held),
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async { Ok((proxy.metric("hsd_proxy_connections_held").await? >= want).then_some(())) },
    )
    .await?;
    let held_after = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (held_rss, held_hwm) = proc_memory_kb(proxy.pid)?;
    drop(held);
    wait_for(
        "the held connections to be released",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async { Ok((proxy.metric("hsd_proxy_connections_held").await? == 0.0).then_some(())) },
    )
    .await?;
    set_ready(client, true).await?;
    wait_for(
        "the proxy to see the app ready again",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            Ok((proxy.metric("hsd_proxy_endpoints{state=\"ready\"}").await? == 1.0).then_some(()))
        },
    )
    .await?;
    let held_goal_mb = 50.0 + 32.0 * sizes.held as f64 / 1024.0;
    say(format!(
        "proxy: {} held connections in {:.1}s, VmRSS {:.1} MB (before {:.1} MB, goal <= {held_goal_mb:.1} MB)",
        sizes.held,
        held_after,
        mb(held_rss),
        mb(held_before)
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let api_before = proxy.api_requests().await?;
    let connections_before = proxy.metric("hsd_proxy_connections_total").await?;

    // Round trips, interleaved in rounds so that background load weighs on all alike.
    let mut rtt: [Vec<f64>; 3] = Default::default();
    for _ in 0..sizes.rounds {
        for (i, (_, addr)) in targets.iter().enumerate() {
            rtt[i].extend(round_trips(*addr, sizes.rtt_samples / sizes.rounds).await?);
        }
    }
    // Connection rate.
    let mut rates: [Vec<f64>; 3] = Default::default();
    for _ in 0..sizes.rounds {
        for (i, (_, addr)) in targets.iter().enumerate() {
            rates[i].push(
                connection_rate(*addr, sizes.connections / sizes.rounds, sizes.concurrency).await?,
            );
        }
    }
    let api_after = proxy.api_requests().await?;
    let warm_connections = proxy.metric("hsd_proxy_connections_total").await? - connections_before;
    // Throughput.
    let mut mib_s: [Vec<f64>; 3] = Default::default();
    for _ in 0..sizes.rounds {
        for (i, (_, addr)) in targets.iter().enumerate() {
            mib_s[i].push(throughput(*addr, sizes.throughput_bytes / sizes.rounds).await?);
        }
    }
    say(format!(
        "proxy: round trip p99 direct {:.1} / floor {:.1} / product {:.1} us; {:.0} / {:.0} / {:.0} connections/s; {:.0} / {:.0} / {:.0} MiB/s",
        percentile(&rtt[0], 99.0),
        percentile(&rtt[1], 99.0),
        percentile(&rtt[2], 99.0),
        median(&rates[0]),
        median(&rates[1]),
        median(&rates[2]),
        median(&mib_s[0]),
        median(&mib_s[1]),
        median(&mib_s[2]),
    ));

    // Memory with idle forwarded connections, floor and product alike.
    let mut idle = serde_json::Map::new();
    for (name, process) in [("floor", &floor), ("product", &proxy)] {
        let before = process.rss_kb()?;
        let open = open_many(process.addr, sizes.idle_forwarded, true).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let with = process.rss_kb()?;
        drop(open);
        idle.insert(
            name.to_string(),
            json!({
                "rss_before_mb": mb(before),
                "rss_mb": mb(with),
                "per_connection_kib": round(with.saturating_sub(before) as f64 / sizes.idle_forwarded as f64, 1),
            }),
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // Cold starts, last: they put the app to sleep.
    let (wake, wake_parts) = wakes(client, &proxy, sizes.wakes).await?;
    let part = |f: fn(&WakeParts) -> f64| wake_parts.iter().map(f).collect::<Vec<_>>();
    let to_pod_ready = part(|p| p.to_pod_ready);
    let slice_write = part(|p| p.slice_write);
    let after_slice = part(|p| p.after_slice);
    let without_slice_write = part(|p| p.to_pod_ready + p.after_slice);
    say(format!(
        "proxy: wake p99 floor {:.0} ms / product {:.0} ms (p50 {:.0} ms to a Ready pod, {:.0} ms the benchmark's slice write, {:.0} ms after it)",
        percentile(&wake[0], 99.0),
        percentile(&wake[1], 99.0),
        percentile(&to_pod_ready, 50.0),
        percentile(&slice_write, 50.0),
        percentile(&after_slice, 50.0),
    ));
    scale(client, 1).await?;

    let log = std::fs::read_to_string(&proxy.log).unwrap_or_default();
    if log.contains("panicked") {
        return Err(format!("the proxy panicked:\n{}", tail(&log, 20)));
    }
    drop(floor);
    drop(proxy);

    let p = |values: &[f64], q: f64| round(percentile(values, q), 1);
    Ok(json!({
        "round_trip": {
            "samples": rtt[0].len(),
            "bytes": PING,
            "direct_p50_us": p(&rtt[0], 50.0),
            "direct_p99_us": p(&rtt[0], 99.0),
            "floor_p50_us": p(&rtt[1], 50.0),
            "floor_p99_us": p(&rtt[1], 99.0),
            "product_p50_us": p(&rtt[2], 50.0),
            "product_p99_us": p(&rtt[2], 99.0),
            "added_p99_us": round(percentile(&rtt[2], 99.0) - percentile(&rtt[1], 99.0), 1),
            "added_p50_us": round(percentile(&rtt[2], 50.0) - percentile(&rtt[1], 50.0), 1),
        },
        "connection_rate": {
            "connections": sizes.connections / sizes.rounds * sizes.rounds,
            "concurrency": sizes.concurrency,
            "direct_per_second": round(median(&rates[0]), 0),
            "floor_per_second": round(median(&rates[1]), 0),
            "product_per_second": round(median(&rates[2]), 0),
            "ratio": round(median(&rates[2]) / median(&rates[1]), 2),
        },
        "throughput": {
            "bytes_per_round": sizes.throughput_bytes / sizes.rounds,
            "direct_mib_s": round(median(&mib_s[0]), 0),
            "floor_mib_s": round(median(&mib_s[1]), 0),
            "product_mib_s": round(median(&mib_s[2]), 0),
            "ratio": round(median(&mib_s[2]) / median(&mib_s[1]), 2),
        },
        "idle_forwarded": {
            "connections": sizes.idle_forwarded,
            "floor": idle.get("floor"),
            "product": idle.get("product"),
        },
        "held": {
            "connections": sizes.held,
            "seconds_to_hold_all": round(held_after, 2),
            "rss_before_mb": mb(held_before),
            "rss_mb": mb(held_rss),
            "hwm_mb": mb(held_hwm),
            "per_connection_kib": round(held_rss.saturating_sub(held_before) as f64 / sizes.held as f64, 2),
            "goal_mb": round(held_goal_mb, 1),
        },
        "warm_api_requests": {
            "connections": warm_connections,
            "requests": api_after - api_before,
            "per_connection": if warm_connections > 0.0 { (api_after - api_before) / warm_connections } else { f64::NAN },
        },
        "wake": {
            "samples": wake[0].len(),
            "floor_p50_ms": round(percentile(&wake[0], 50.0), 1),
            "floor_p99_ms": round(percentile(&wake[0], 99.0), 1),
            "product_p50_ms": round(percentile(&wake[1], 50.0), 1),
            "product_p99_ms": round(percentile(&wake[1], 99.0), 1),
            "ratio_p99": round(percentile(&wake[1], 99.0) / percentile(&wake[0], 99.0), 2),
            "product_to_pod_ready_p50_ms": p(&to_pod_ready, 50.0),
            "product_to_pod_ready_p99_ms": p(&to_pod_ready, 99.0),
            "slice_write_p50_ms": p(&slice_write, 50.0),
            "slice_write_p99_ms": p(&slice_write, 99.0),
            "after_slice_p50_ms": p(&after_slice, 50.0),
            "after_slice_p99_ms": p(&after_slice, 99.0),
            "without_slice_write_p99_ms": p(&without_slice_write, 99.0),
            "without_slice_write_ratio_p99": round(percentile(&without_slice_write, 99.0) / percentile(&wake[0], 99.0), 2),
        },
        "rounds": sizes.rounds,
    }))
}
