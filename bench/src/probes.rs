//! HTTP probe throughput: real HTTP servers bound on the pods' loopback IPs, probed with the
//! library's `Prober` at the default concurrency (and by a one-shot pass of the binary).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use kubectl_hsd::observe::probe::{DEFAULT_CONCURRENCY, ProbeTarget, Prober};

use serde_json::{Value, json};

use crate::Bench;
use crate::populate::{PODS_PER_HSD, PROBE_NAMESPACE};
use crate::util::{Context, Res, round, say};

pub const ANSWER_OK: u8 = 0;
pub const ANSWER_UNAVAILABLE: u8 = 1;
/// Accepts, reads the request and never answers.
pub const ANSWER_NEVER: u8 = 2;

/// One server per pod IP. Each records when it last finished answering.
pub struct Servers {
    pub addrs: Vec<SocketAddr>,
    modes: Vec<Arc<AtomicU8>>,
    answered: Arc<Mutex<HashMap<usize, Instant>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Servers {
    /// Binds `ip:port` for each IP; even ones answer 200 (busy), odd ones 503 (idle).
    pub async fn start(ips: &[IpAddr], port: u16) -> Res<Self> {
        let answered = Arc::new(Mutex::new(HashMap::new()));
        let mut servers = Self {
            addrs: Vec::new(),
            modes: Vec::new(),
            answered: answered.clone(),
            tasks: Vec::new(),
        };
        for (index, ip) in ips.iter().enumerate() {
            if !ip.is_loopback() {
                return Err(format!("pod IP {ip} is not a loopback address"));
            }
            let addr = SocketAddr::new(*ip, port);
            let listener = TcpListener::bind(addr)
                .await
                .ctx(format!("binding {addr}"))?;
            let mode = Arc::new(AtomicU8::new(if index % 2 == 0 {
                ANSWER_OK
            } else {
                ANSWER_UNAVAILABLE
            }));
            let task_mode = mode.clone();
            let task_answered = answered.clone();
            servers.tasks.push(tokio::spawn(async move {
                loop {
                    let Ok((mut socket, _)) = listener.accept().await else {
                        return;
                    };
                    let mode = task_mode.clone();
                    let answered = task_answered.clone();
                    tokio::spawn(async move {
                        let mut request = Vec::with_capacity(512);
                        let mut buffer = [0u8; 1024];
                        // Read the request head (bounded).
                        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16384
                        {
                            match socket.read(&mut buffer).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => request.extend_from_slice(&buffer[..n]),
                            }
                        }
                        let status = match mode.load(Ordering::Relaxed) {
                            ANSWER_OK => "200 OK",
                            ANSWER_UNAVAILABLE => "503 Service Unavailable",
                            _ => {
                                // Hold the connection until the client gives up (bounded).
                                let _ = tokio::time::timeout(
                                    Duration::from_secs(60),
                                    socket.read(&mut buffer),
                                )
                                .await;
                                return;
                            }
                        };
                        let response = format!(
                            "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        );
                        let _ = socket.write_all(response.as_bytes()).await;
                        answered
                            .lock()
                            .expect("answered lock")
                            .insert(index, Instant::now());
                    });
                }
            }));
            servers.addrs.push(addr);
            servers.modes.push(mode);
        }
        Ok(servers)
    }

    pub fn set_mode(&self, index: usize, mode: u8) {
        self.modes[index].store(mode, Ordering::Relaxed);
    }

    fn reset_answered(&self) {
        self.answered.lock().expect("answered lock").clear();
    }

    /// When the last server other than `except` answered.
    fn last_answer(&self, except: Option<usize>) -> Option<Instant> {
        self.answered
            .lock()
            .expect("answered lock")
            .iter()
            .filter(|(i, _)| Some(**i) != except)
            .map(|(_, t)| *t)
            .max()
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[derive(Debug, Default)]
pub struct ProbeNumbers {
    pub pods: usize,
    pub per_second: f64,
    /// Each repetition: seconds for all probes.
    pub seconds: Vec<f64>,
    /// With one never-answering server: how much later the others were all answered.
    pub slow_server_extra_ms: f64,
    pub slow_server_extra_samples_ms: Vec<f64>,
    /// With one never-answering server: the whole probe round, and the probe timeout.
    pub slow_round_seconds: f64,
    pub timeout_seconds: f64,
    pub concurrency: usize,
}

fn targets(servers: &Servers, path: &str, timeout: Duration) -> Vec<(usize, ProbeTarget)> {
    servers
        .addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            (
                i,
                ProbeTarget {
                    ip: addr.ip(),
                    port: addr.port(),
                    path: path.to_string(),
                    timeout,
                },
            )
        })
        .collect()
}

/// Probes every server with `Prober::probe_all` at the default concurrency, `rounds` times;
/// then once with the first server never answering.
pub async fn measure(servers: &Servers, rounds: usize) -> Res<ProbeNumbers> {
    let timeout = Duration::from_secs(1);
    let prober = Prober::new(DEFAULT_CONCURRENCY);
    let mut numbers = ProbeNumbers {
        pods: servers.addrs.len(),
        concurrency: DEFAULT_CONCURRENCY,
        timeout_seconds: timeout.as_secs_f64(),
        ..Default::default()
    };
    // Warm-up round, not counted.
    prober.probe_all(targets(servers, "/busy", timeout)).await;
    for _ in 0..rounds {
        servers.reset_answered();
        let started = Instant::now();
        let results = prober.probe_all(targets(servers, "/busy", timeout)).await;
        let elapsed = started.elapsed();
        let failed = results
            .iter()
            .filter(|(_, r)| matches!(r.outcome, kubectl_hsd::plan::ProbeOutcome::Error(_)))
            .count();
        if failed > 0 {
            return Err(format!(
                "{failed} of {} probes failed with every server answering",
                results.len()
            ));
        }
        numbers.seconds.push(elapsed.as_secs_f64());
    }
    let median = crate::util::median(&numbers.seconds);
    numbers.per_second = numbers.pods as f64 / median;

    // One server that never answers, first in the list (the worst place for head-of-line
    // blocking): the others should be answered as fast as without it. Three rounds, each next
    // to a baseline round (machine load drifts); the median difference counts.
    let mut extra = Vec::new();
    for _ in 0..3 {
        servers.reset_answered();
        let started = Instant::now();
        prober.probe_all(targets(servers, "/busy", timeout)).await;
        let baseline = servers
            .last_answer(Some(0))
            .ok_or("no server answered")?
            .saturating_duration_since(started)
            .as_secs_f64();

        servers.set_mode(0, ANSWER_NEVER);
        servers.reset_answered();
        let started = Instant::now();
        let results = prober.probe_all(targets(servers, "/busy", timeout)).await;
        numbers.slow_round_seconds = started.elapsed().as_secs_f64();
        servers.set_mode(0, ANSWER_OK);
        let others_done = servers
            .last_answer(Some(0))
            .ok_or("no server answered")?
            .saturating_duration_since(started)
            .as_secs_f64();
        let unknown = results
            .iter()
            .filter(|(_, r)| matches!(r.outcome, kubectl_hsd::plan::ProbeOutcome::Error(_)))
            .count();
        if unknown != 1 {
            return Err(format!(
                "with one silent server, {unknown} probes failed (expected 1)"
            ));
        }
        extra.push((others_done - baseline) * 1000.0);
    }
    numbers.slow_server_extra_ms = crate::util::median(&extra).max(0.0);
    numbers.slow_server_extra_samples_ms = extra;
    Ok(numbers)
}

/// The probe measurement: HTTP-mode HSDs of 20 pods in their own namespace, one server per pod
/// IP, probed by the library and by a one-shot pass of the binary.
pub async fn run(bench: &Bench<'_>, probe_pods: usize) -> Res<Value> {
    let (client, product, tracker) = (&bench.client, &bench.product, &bench.tracker);
    let hsds = probe_pods.div_ceil(PODS_PER_HSD);
    let pods = hsds * PODS_PER_HSD;
    say(format!(
        "HTTP probes: {pods} pods ({hsds} HTTP-mode HSDs in {PROBE_NAMESPACE})"
    ));
    crate::populate::create_namespaces(client, &[PROBE_NAMESPACE.to_string()]).await?;
    let manifests = (0..hsds)
        .map(|i| crate::populate::http_hsd(PROBE_NAMESPACE, &format!("p{i:03}")))
        .collect();
    crate::populate::create_hsds(client, manifests, "HTTP-mode HSDs").await?;
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
    let servers = Servers::start(&ips, crate::populate::PROBE_PORT).await?;
    let numbers = measure(&servers, 5).await?;
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
