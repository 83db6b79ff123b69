//! Helpers of the proxy tests: the Deployment to scale, EndpointSlices written by the test
//! (addresses from TEST-NET 192.0.2.0/24: a readiness signal only, never dialled), a loopback
//! stand-in for the app that refuses until switched on, and `kubectl hsd proxy` as the real
//! binary. Every dial the proxy makes in a test is limited to 127.0.0.0/8 by --allow-dial-cidr.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{TestNs, http_get, kubeconfig, wait_for};

/// Addresses from TEST-NET-1: the API server accepts them in EndpointSlices (it rejects
/// loopback), and nothing ever connects to them.
pub const TEST_NET: [&str; 3] = ["192.0.2.10", "192.0.2.11", "192.0.2.12"];

pub const ANNOTATION: &str = "zero-pod-autoscaler/scale-down-at";

/// A Deployment of `replicas` pods (kwok runs them; they only make the cluster realistic).
pub async fn create_deployment(ns: &TestNs, name: &str, replicas: i32) {
    let deployments: Api<Deployment> = ns.api();
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
            },
        },
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
}

pub async fn deployment(ns: &TestNs, name: &str) -> Deployment {
    let deployments: Api<Deployment> = ns.api();
    deployments.get(name).await.unwrap()
}

/// The Deployment's scale-down-at annotation.
pub async fn scale_down_at(ns: &TestNs, name: &str) -> Option<String> {
    deployment(ns, name)
        .await
        .metadata
        .annotations
        .and_then(|a| a.get(ANNOTATION).cloned())
}

pub async fn wait_replicas(ns: &TestNs, name: &str, want: i32, timeout: Duration) {
    wait_for(&format!("{name} at {want} replicas"), timeout, || async {
        (super::replicas(ns, name).await == Some(want)).then_some(())
    })
    .await;
}

#[derive(Clone, Copy, Debug)]
pub enum EndpointState {
    Ready,
    NotReady,
    /// Being deleted: ready false, still serving, terminating (as the EndpointSlice controller
    /// writes it).
    Terminating,
    /// Terminating, with a writer that left ready true.
    TerminatingButReady,
}

/// Writes the EndpointSlice `<service>-test`, labelled kubernetes.io/service-name=<service>,
/// with one TEST-NET endpoint per state.
pub async fn write_slice(ns: &TestNs, service: &str, endpoints: &[EndpointState]) {
    let endpoints: Vec<serde_json::Value> = endpoints
        .iter()
        .enumerate()
        .map(|(i, state)| {
            let (ready, serving, terminating) = match state {
                EndpointState::Ready => (true, true, false),
                EndpointState::NotReady => (false, false, false),
                EndpointState::Terminating => (false, true, true),
                EndpointState::TerminatingButReady => (true, true, true),
            };
            json!({
                "addresses": [TEST_NET[i % TEST_NET.len()]],
                "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
            })
        })
        .collect();
    let slices: Api<EndpointSlice> = ns.api();
    let name = format!("{service}-test");
    slices
        .patch(
            &name,
            &PatchParams::apply("hsd-test").force(),
            &Patch::Apply(json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": [{"name": "", "port": 80, "protocol": "TCP"}],
            })),
        )
        .await
        .unwrap();
}

/// A loopback echo server standing in for the app. While off, its port is closed (connections
/// are refused); it keeps the same port when switched on again.
pub struct StandIn {
    pub addr: SocketAddr,
    server: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    accepted: Arc<AtomicUsize>,
}

impl StandIn {
    pub async fn new(on: bool) -> Self {
        Self::on_ip("127.0.0.1", on).await
    }

    /// On another loopback address (127.0.0.2 ...).
    pub async fn on_ip(ip: &str, on: bool) -> Self {
        // A port below the ephemeral range, so that no outgoing connection takes it while off.
        let mut seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        for _ in 0..200 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let port = 21_000 + (seed >> 8) % 11_000;
            let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
            if let Ok(listener) = TcpListener::bind(addr).await {
                let stand_in = Self {
                    addr,
                    server: std::sync::Mutex::new(None),
                    accepted: Arc::new(AtomicUsize::new(0)),
                };
                if on {
                    stand_in.serve(listener);
                }
                return stand_in;
            }
        }
        panic!("no free port for the stand-in on {ip}");
    }

    fn serve(&self, listener: TcpListener) {
        let accepted = self.accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        *self.server.lock().unwrap() = Some(task);
    }

    pub async fn switch(&self, on: bool) {
        let running = self.server.lock().unwrap().take();
        if let Some(task) = running {
            task.abort();
            let _ = task.await;
        }
        if !on {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => return self.serve(listener),
                Err(error) if Instant::now() < deadline => {
                    eprintln!("stand-in: rebinding {}: {error}", self.addr);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("the stand-in cannot bind {} again: {error}", self.addr),
            }
        }
    }

    /// Connections the stand-in accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        if let Some(task) = self.server.lock().unwrap().take() {
            task.abort();
        }
    }
}

/// `kubectl hsd proxy` as the real binary, on free loopback ports; killed when dropped.
pub struct Proxy {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: String,
    log: PathBuf,
}

impl Proxy {
    /// Starts the proxy in `ns` with `args` (and `--allow-dial-cidr 127.0.0.0/8` unless `args`
    /// sets its own), and waits until it is ready.
    pub async fn start(ns: &str, label: &str, args: &[&str]) -> Self {
        Self::start_as(kubeconfig(), ns, label, args, true).await
    }

    pub async fn start_as(
        kubeconfig: &Path,
        ns: &str,
        label: &str,
        args: &[&str],
        wait_ready: bool,
    ) -> Self {
        let log = std::env::temp_dir().join(format!("hsd-proxy-{ns}-{label}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let mut all = vec![
            "proxy",
            "-n",
            ns,
            "--address",
            "127.0.0.1:0",
            "--admin-address",
            "127.0.0.1:0",
            "-v",
            "2",
        ];
        if !args.contains(&"--allow-dial-cidr") {
            all.extend(["--allow-dial-cidr", "127.0.0.0/8"]);
        }
        all.extend(args);
        let child = Command::new(env!("CARGO_BIN_EXE_kubectl-hsd"))
            .args(&all)
            .env("KUBECONFIG", kubeconfig)
            .env("NO_COLOR", "1")
            .env_remove("HSD_LOG")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start the proxy");
        let deadline = Instant::now() + Duration::from_secs(20);
        let (addr, admin) = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let find = |prefix: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(prefix))
                    .and_then(|rest| rest.split(' ').next())
                    .map(str::to_string)
            };
            if let (Some(addr), Some(admin)) = (
                find("proxy listening on "),
                find("serving /metrics, /healthz and /readyz on "),
            ) {
                break (addr.parse().unwrap(), format!("http://{admin}"));
            }
            assert!(
                Instant::now() < deadline,
                "the proxy did not start:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let proxy = Self {
            child,
            addr,
            admin,
            log,
        };
        if wait_ready {
            proxy.wait_ready().await;
        }
        proxy
    }

    pub async fn wait_ready(&self) {
        wait_for("the proxy's /readyz", Duration::from_secs(20), || async {
            let status = http_get(&format!("{}/readyz", self.admin)).await.ok()?.0;
            (status == 200).then_some(())
        })
        .await;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The value of one series (exact name and labels), if present.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = http_get(&format!("{}/metrics", self.admin)).await.ok()?.1;
        text.lines()
            .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
            .and_then(|line| line.rsplit(' ').next()?.parse().ok())
    }

    /// Waits until `series` satisfies `check`; returns its value.
    pub async fn wait_metric(
        &self,
        series: &str,
        timeout: Duration,
        check: impl Fn(f64) -> bool,
    ) -> f64 {
        wait_for(&format!("{series} (proxy log below)"), timeout, || async {
            self.metric(series).await.filter(|v| check(*v))
        })
        .await
    }

    pub async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.unwrap()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The exit status, if the process exits within `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn assert_alive(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the proxy exited:\n{}",
            self.log()
        );
        assert!(!self.log().contains("panicked"), "{}", self.log());
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- proxy log ({}) ---\n{}", self.log.display(), self.log());
        }
    }
}

/// Sends `message` and reads the echo back within `timeout`.
pub async fn echo(stream: &mut TcpStream, message: &[u8], timeout: Duration) -> Result<(), String> {
    stream
        .write_all(message)
        .await
        .map_err(|e| format!("write: {e}"))?;
    read_exactly(stream, message, timeout).await
}

/// Reads `expected.len()` bytes within `timeout` and compares them.
pub async fn read_exactly(
    stream: &mut TcpStream,
    expected: &[u8],
    timeout: Duration,
) -> Result<(), String> {
    let mut buffer = vec![0u8; expected.len()];
    match tokio::time::timeout(timeout, stream.read_exact(&mut buffer)).await {
        Err(_) => Err(format!("no answer within {timeout:?}")),
        Ok(Err(e)) => Err(format!("read: {e}")),
        Ok(Ok(_)) if buffer == expected => Ok(()),
        Ok(Ok(_)) => Err(format!("got {buffer:?}")),
    }
}

/// Whether the connection stays open and silent for `duration`.
pub async fn stays_silent(stream: &mut TcpStream, duration: Duration) -> bool {
    let mut byte = [0u8; 1];
    tokio::time::timeout(duration, stream.peek(&mut byte))
        .await
        .is_err()
}

/// How long until the proxy closes the connection (EOF or reset), if within `timeout`.
pub async fn closed_within(stream: &mut TcpStream, timeout: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buffer = [0u8; 64];
    loop {
        match tokio::time::timeout(
            timeout.saturating_sub(started.elapsed()),
            stream.read(&mut buffer),
        )
        .await
        {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

/// A ZPA-mode app in a namespace of its own: the Deployment `app` with one pod, its
/// EndpointSlice showing `endpoints`, and a loopback stand-in for the pods (listening when
/// `listening`).
pub async fn zpa_app(
    prefix: &str,
    endpoints: &[EndpointState],
    listening: bool,
) -> (TestNs, StandIn) {
    let ns = TestNs::new(prefix).await;
    create_deployment(&ns, "app", 1).await;
    write_slice(&ns, "app", endpoints).await;
    (ns, StandIn::new(listening).await)
}

/// `proxy --deployment app --target <the stand-in>` in the app's namespace, and `args`.
pub async fn zpa_proxy(ns: &TestNs, app: &StandIn, label: &str, args: &[&str]) -> Proxy {
    zpa_proxy_as(kubeconfig(), ns, app, label, args).await
}

/// [`zpa_proxy`] with the identity of `config`.
pub async fn zpa_proxy_as(
    config: &Path,
    ns: &TestNs,
    app: &StandIn,
    label: &str,
    args: &[&str],
) -> Proxy {
    let target = app.addr.to_string();
    let mut all = vec!["--deployment", "app", "--target", target.as_str()];
    all.extend_from_slice(args);
    Proxy::start_as(config, &ns.name, label, &all, true).await
}
