//! The busy probes, run concurrently with a bound and each within its own timeout:
//! - HTTP: `GET http://<podIP>:<port><path>`, no redirects, no proxy, no body read. Addresses
//!   outside `HSD_DIAL_ALLOW_CIDRS` (when set: the tests set 127.0.0.0/8) are never dialled.
//! - exec: a command run in the pod through the API server ([`super::exec`]).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};

use crate::plan::ProbeOutcome;

/// Concurrent HTTP probes per HSD unless told otherwise.
pub const DEFAULT_CONCURRENCY: usize = 64;
/// Concurrent exec probes per object unless told otherwise. Each exec is a new connection to the
/// API server and a hop to the kubelet: the API server, not the pods, is what this bounds.
pub const DEFAULT_EXEC_CONCURRENCY: usize = 16;

/// The environment variable that limits every dial this process makes (probes, proxy) to a
/// comma-separated list of CIDRs. Unset: no limit.
pub const DIAL_ALLOW_ENV: &str = "HSD_DIAL_ALLOW_CIDRS";

/// The CIDRs of [`DIAL_ALLOW_ENV`], read once. `None` allows every address.
pub fn dial_allow_list() -> Option<&'static [ipnet::IpNet]> {
    static LIST: std::sync::OnceLock<Option<Vec<ipnet::IpNet>>> = std::sync::OnceLock::new();
    LIST.get_or_init(|| {
        let text = std::env::var(DIAL_ALLOW_ENV).ok()?;
        let nets: Vec<ipnet::IpNet> = text
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .filter_map(|part| match part.parse() {
                Ok(net) => Some(net),
                Err(error) => {
                    // A typo must not open every address: an unreadable entry allows nothing.
                    tracing::warn!(entry = part, %error, "ignoring an unreadable {DIAL_ALLOW_ENV} entry");
                    None
                }
            })
            .collect();
        Some(nets)
    })
    .as_deref()
}

/// Whether this process may dial `ip`.
pub fn may_dial(ip: IpAddr) -> bool {
    dial_allow_list().is_none_or(|nets| nets.iter().any(|net| net.contains(&ip)))
}

/// One probe to make.
#[derive(Clone, Debug)]
pub struct ProbeTarget {
    pub ip: IpAddr,
    pub port: u16,
    pub path: String,
    pub timeout: Duration,
}

impl ProbeTarget {
    pub fn url(&self) -> String {
        match self.ip {
            IpAddr::V4(ip) => format!("http://{ip}:{}{}", self.port, self.path),
            IpAddr::V6(ip) => format!("http://[{ip}]:{}{}", self.port, self.path),
        }
    }
}

/// Any probe to make: an HTTP GET to the pod, or a command run in it.
#[derive(Clone, Debug)]
pub enum Target {
    Http(ProbeTarget),
    Exec(super::exec::ExecTarget),
}

impl From<ProbeTarget> for Target {
    fn from(target: ProbeTarget) -> Self {
        Self::Http(target)
    }
}

impl From<super::exec::ExecTarget> for Target {
    fn from(target: super::exec::ExecTarget) -> Self {
        Self::Exec(target)
    }
}

impl Target {
    pub fn timeout(&self) -> Duration {
        match self {
            Self::Http(target) => target.timeout,
            Self::Exec(target) => target.timeout,
        }
    }

    /// What is probed, for people: the URL, or the command and the pod.
    pub fn describe(&self) -> String {
        match self {
            Self::Http(target) => format!("GET {}", target.url()),
            Self::Exec(target) => target.describe(),
        }
    }
}

/// A probe's result and how long it took.
#[derive(Clone, Debug)]
pub struct ProbeResult {
    pub outcome: ProbeOutcome,
    pub latency: Duration,
    /// The start of what an exec probe's command printed (stdout, then stderr), if anything.
    pub output: Option<String>,
}

#[derive(Clone)]
pub struct Prober {
    http: reqwest::Client,
    concurrency: usize,
    /// The client exec probes go through (the API server's `pods/exec`); without one, an exec
    /// probe answers nothing.
    kube: Option<kube::Client>,
    exec_concurrency: usize,
}

impl Prober {
    pub fn new(concurrency: usize) -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // Pod IPs are reached directly: a proxy from the environment must never see them.
            .no_proxy()
            .pool_max_idle_per_host(1)
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!(
                "kubectl-hsd/",
                env!("CARGO_PKG_VERSION"),
                " busy-probe"
            ))
            .build()
            .expect("a plain HTTP client without TLS always builds");
        Self {
            http,
            concurrency: concurrency.max(1),
            kube: None,
            exec_concurrency: DEFAULT_EXEC_CONCURRENCY,
        }
    }

    /// The same prober, able to run exec probes through `client`, `exec_concurrency` at once.
    pub fn with_exec(mut self, client: kube::Client, exec_concurrency: usize) -> Self {
        self.kube = Some(client);
        self.exec_concurrency = exec_concurrency.max(1);
        self
    }

    /// How many probes of this kind run at once.
    fn limit(&self, target: Option<&Target>) -> usize {
        match target {
            Some(Target::Exec(_)) => self.exec_concurrency,
            _ => self.concurrency,
        }
    }

    /// Runs any probe.
    pub async fn run(&self, target: &Target) -> ProbeResult {
        match target {
            Target::Http(target) => self.probe(target).await,
            Target::Exec(target) => match &self.kube {
                Some(client) => super::exec::exec_probe(client, target).await,
                None => ProbeResult {
                    outcome: ProbeOutcome::Error("no client for exec probes".into()),
                    latency: Duration::ZERO,
                    output: None,
                },
            },
        }
    }

    /// Probes one pod. Only the status line and headers are read; the body is dropped unread.
    pub async fn probe(&self, target: &ProbeTarget) -> ProbeResult {
        let started = Instant::now();
        if !may_dial(target.ip) {
            return ProbeResult {
                outcome: ProbeOutcome::Error(format!(
                    "{} is outside {DIAL_ALLOW_ENV}: not dialled",
                    target.ip
                )),
                latency: started.elapsed(),
                output: None,
            };
        }
        let request = self.http.get(target.url()).timeout(target.timeout).send();
        let outcome = match tokio::time::timeout(target.timeout, request).await {
            Err(_) => ProbeOutcome::Error(format!(
                "no answer within {}s",
                target.timeout.as_secs_f32()
            )),
            Ok(Err(error)) => ProbeOutcome::Error(describe_error(&error)),
            Ok(Ok(response)) if response.status().is_success() => ProbeOutcome::Success,
            Ok(Ok(response)) if response.status().is_redirection() => ProbeOutcome::Redirect {
                status: response.status().as_u16(),
                location: response.headers().get(reqwest::header::LOCATION).map(|v| {
                    String::from_utf8_lossy(v.as_bytes())
                        .chars()
                        .take(200)
                        .collect()
                }),
            },
            Ok(Ok(response)) => ProbeOutcome::Failure(response.status().as_u16()),
        };
        ProbeResult {
            outcome,
            latency: started.elapsed(),
            output: None,
        }
    }

    /// Probes all targets, at most `concurrency` (exec: `exec_concurrency`) at once. Unordered,
    /// so that one pod that never answers holds one slot for its timeout and delays no other
    /// probe.
    pub async fn probe_all<K: Clone, T: Into<Target>>(
        &self,
        targets: Vec<(K, T)>,
    ) -> Vec<(K, ProbeResult)> {
        let targets: Vec<(K, Target)> = targets.into_iter().map(|(k, t)| (k, t.into())).collect();
        let limit = self.limit(targets.first().map(|(_, t)| t));
        stream::iter(targets)
            .map(|(key, target)| async move { (key, self.run(&target).await) })
            .buffer_unordered(limit)
            .collect()
            .await
    }

    /// Like [`Prober::probe_all`], but stops at `deadline`: returns the answers that arrived
    /// and how many targets got none.
    pub async fn probe_until<K, T: Into<Target>>(
        &self,
        targets: Vec<(K, T)>,
        deadline: tokio::time::Instant,
    ) -> (Vec<(K, ProbeResult)>, usize) {
        let targets: Vec<(K, Target)> = targets.into_iter().map(|(k, t)| (k, t.into())).collect();
        let limit = self.limit(targets.first().map(|(_, t)| t));
        let wanted = targets.len();
        let mut answers = Vec::with_capacity(wanted);
        let mut stream = stream::iter(targets)
            .map(|(key, target)| async move { (key, self.run(&target).await) })
            .buffer_unordered(limit);
        while let Ok(Some(answer)) = tokio::time::timeout_at(deadline, stream.next()).await {
            answers.push(answer);
        }
        let missing = wanted - answers.len();
        (answers, missing)
    }
}

fn describe_error(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timed out".to_string()
    } else if error.is_connect() {
        "connection failed".to_string()
    } else {
        // The innermost cause says most ("invalid HTTP version", "connection reset", ...).
        let mut source: &dyn std::error::Error = error;
        while let Some(next) = source.source() {
            source = next;
        }
        format!("invalid answer: {source}")
    }
}
