//! The proxy's Prometheus metrics (`hsd_proxy_*`) and its admin port: `/healthz` (the process
//! runs), `/readyz` (caches synced, listener bound, not draining) and `/metrics`.
//!
//! Series used on every connection are created once and kept as handles, so the warm path
//! touches only atomics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::client::RequestStats;

type Labels = Vec<(&'static str, String)>;

fn labels(key: &'static str, value: &str) -> Labels {
    vec![(key, value.to_string())]
}

/// Why a dial failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DialFailure {
    Refused,
    Timeout,
    NotAllowed,
    Resolve,
    Other,
    /// HSD mode: the pod chosen was claimed by another connection first.
    NoFreePod,
}

impl DialFailure {
    pub const ALL: [DialFailure; 6] = [
        DialFailure::Refused,
        DialFailure::Timeout,
        DialFailure::NotAllowed,
        DialFailure::Resolve,
        DialFailure::Other,
        DialFailure::NoFreePod,
    ];

    pub fn reason(self) -> &'static str {
        match self {
            DialFailure::Refused => "refused",
            DialFailure::Timeout => "timeout",
            DialFailure::NotAllowed => "not_allowed",
            DialFailure::Resolve => "resolve",
            DialFailure::Other => "other",
            DialFailure::NoFreePod => "no_free_pod",
        }
    }
}

/// How a held connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldOutcome {
    /// The app answered: the connection was forwarded.
    Forwarded,
    /// `--max-wait` passed first.
    MaxWait,
    /// The client went away while held.
    ClientClosed,
    /// Every address of the target is outside `--allow-dial-cidr`.
    NotAllowed,
}

impl HoldOutcome {
    const ALL: [HoldOutcome; 4] = [
        HoldOutcome::Forwarded,
        HoldOutcome::MaxWait,
        HoldOutcome::ClientClosed,
        HoldOutcome::NotAllowed,
    ];

    fn label(self) -> &'static str {
        match self {
            HoldOutcome::Forwarded => "forwarded",
            HoldOutcome::MaxWait => "max_wait",
            HoldOutcome::ClientClosed => "client_closed",
            HoldOutcome::NotAllowed => "not_allowed",
        }
    }
}

/// Kinds of writes to the Deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleWrite {
    Wake,
    /// HSD mode: the child applied from the proxy's caches beside the wake's deadline write.
    WakeChild,
    Extend,
    Sleep,
}

impl ScaleWrite {
    pub fn label(self) -> &'static str {
        match self {
            ScaleWrite::Wake => "wake",
            ScaleWrite::WakeChild => "wake_child",
            ScaleWrite::Extend => "extend",
            ScaleWrite::Sleep => "sleep",
        }
    }
}

pub struct ProxyMetrics {
    registry: Registry,
    pub connections: Counter,
    pub active: Gauge,
    pub held: Gauge,
    refused_max_held: Counter,
    refused_not_allowed: Counter,
    holds: [Counter; 4],
    dial_errors: [Counter; 6],
    /// HSD mode: where each new connection went (an idle pod, or the least loaded one).
    routed: Family<Labels, Counter>,
    pub bytes_to_upstream: Counter,
    pub bytes_to_client: Counter,
    pub hold_seconds: Histogram,
    pub wake_seconds: Histogram,
    scale_writes: Family<Labels, Counter>,
    pub accept_errors: Counter,
    endpoints: Family<Labels, Gauge>,
    pub replicas: Gauge,
    pub scale_down_at: Gauge,
    api_requests: Family<Labels, Counter>,
    stats: Arc<RequestStats>,
    api_seen: std::sync::Mutex<(u64, u64)>,
    synced: AtomicBool,
    bound: AtomicBool,
    draining: AtomicBool,
}

impl ProxyMetrics {
    pub fn new(stats: Arc<RequestStats>) -> Self {
        let mut registry = Registry::with_prefix("hsd_proxy");
        let connections = Counter::default();
        let active = Gauge::default();
        let held = Gauge::default();
        let refused = Family::<Labels, Counter>::default();
        let holds_family = Family::<Labels, Counter>::default();
        let dial_family = Family::<Labels, Counter>::default();
        let bytes = Family::<Labels, Counter>::default();
        // 1 ms to about 9 minutes: a cold start can take minutes.
        let hold_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 20));
        let wake_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 20));
        let scale_writes = Family::<Labels, Counter>::default();
        let accept_errors = Counter::default();
        let endpoints = Family::<Labels, Gauge>::default();
        let replicas = Gauge::default();
        let scale_down_at = Gauge::default();
        let api_requests = Family::<Labels, Counter>::default();
        let routed = Family::<Labels, Counter>::default();
        registry.register(
            "routed",
            "HSD mode: connections sent to a pod, by choice (idle: an idle pod with no proxied connection; least_conn: --when-all-busy=least-conn)",
            routed.clone(),
        );
        registry.register("connections", "Connections accepted", connections.clone());
        registry.register(
            "connections_active",
            "Connections being forwarded now",
            active.clone(),
        );
        registry.register(
            "connections_held",
            "Connections waiting for the app (waking, not ready, or refusing)",
            held.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed at once: over --max-held, or a target outside --allow-dial-cidr",
            refused.clone(),
        );
        registry.register(
            "holds",
            "Held connections by how the hold ended",
            holds_family.clone(),
        );
        registry.register(
            "dial_errors",
            "Failed connection attempts to the target, by reason",
            dial_family.clone(),
        );
        registry.register(
            "bytes",
            "Bytes forwarded, by direction (counted when a connection ends)",
            bytes.clone(),
        );
        registry.register(
            "hold_seconds",
            "How long a held connection waited",
            hold_seconds.clone(),
        );
        registry.register(
            "wake_seconds",
            "Cold starts: from scaling the Deployment up from zero to the first connection forwarded",
            wake_seconds.clone(),
        );
        registry.register(
            "scale_writes",
            "Writes to the Deployment (HSD mode: to the HSD) by kind (wake, wake_child, extend, sleep) and result",
            scale_writes.clone(),
        );
        registry.register(
            "accept_errors",
            "Errors accepting a connection (the listener stays open)",
            accept_errors.clone(),
        );
        registry.register(
            "endpoints",
            "Endpoints of the watched Service by state (ready, not_ready, terminating)",
            endpoints.clone(),
        );
        registry.register(
            "replicas",
            "spec.replicas of the Deployment as last seen",
            replicas.clone(),
        );
        registry.register(
            "scale_down_at_seconds",
            "The shared scale-down deadline (Unix time; 0 when the annotation is absent)",
            scale_down_at.clone(),
        );
        registry.register(
            "api_requests",
            "Requests this process made to the Kubernetes API, by kind (read, write)",
            api_requests.clone(),
        );
        let refused_max_held = refused.get_or_create(&labels("reason", "max_held")).clone();
        let refused_not_allowed = refused
            .get_or_create(&labels("reason", "not_allowed"))
            .clone();
        let holds = HoldOutcome::ALL.map(|o| {
            holds_family
                .get_or_create(&labels("outcome", o.label()))
                .clone()
        });
        let dial_errors = DialFailure::ALL.map(|f| {
            dial_family
                .get_or_create(&labels("reason", f.reason()))
                .clone()
        });
        let bytes_to_upstream = bytes
            .get_or_create(&labels("direction", "client_to_upstream"))
            .clone();
        let bytes_to_client = bytes
            .get_or_create(&labels("direction", "upstream_to_client"))
            .clone();
        for kind in [ScaleWrite::Wake, ScaleWrite::Extend, ScaleWrite::Sleep] {
            for result in ["ok", "conflict", "error"] {
                let _ = scale_writes.get_or_create(&vec![
                    ("kind", kind.label().to_string()),
                    ("result", result.to_string()),
                ]);
            }
        }
        for kind in ["read", "write"] {
            let _ = api_requests.get_or_create(&labels("kind", kind));
        }
        Self {
            registry,
            connections,
            active,
            held,
            refused_max_held,
            refused_not_allowed,
            holds,
            dial_errors,
            bytes_to_upstream,
            bytes_to_client,
            hold_seconds,
            wake_seconds,
            scale_writes,
            accept_errors,
            endpoints,
            replicas,
            scale_down_at,
            api_requests,
            routed,
            stats,
            api_seen: std::sync::Mutex::new((0, 0)),
            synced: AtomicBool::new(false),
            bound: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        }
    }

    pub fn routed(&self, choice: &'static str) {
        self.routed.get_or_create(&labels("choice", choice)).inc();
    }

    pub fn refused_max_held(&self) {
        self.refused_max_held.inc();
    }

    pub fn refused_not_allowed(&self) {
        self.refused_not_allowed.inc();
    }

    pub fn hold_ended(&self, outcome: HoldOutcome, waited: Duration) {
        let index = HoldOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(0);
        self.holds[index].inc();
        self.hold_seconds.observe(waited.as_secs_f64());
    }

    pub fn dial_failed(&self, failure: DialFailure) {
        let index = DialFailure::ALL
            .iter()
            .position(|f| *f == failure)
            .unwrap_or(0);
        self.dial_errors[index].inc();
    }

    pub fn scale_write(&self, kind: ScaleWrite, result: &'static str) {
        self.scale_writes
            .get_or_create(&vec![
                ("kind", kind.label().to_string()),
                ("result", result.to_string()),
            ])
            .inc();
    }

    pub fn set_endpoints(&self, ready: usize, not_ready: usize, terminating: usize) {
        for (state, value) in [
            ("ready", ready),
            ("not_ready", not_ready),
            ("terminating", terminating),
        ] {
            self.endpoints
                .get_or_create(&labels("state", state))
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        }
    }

    pub fn set_synced(&self) {
        self.synced.store(true, Ordering::Relaxed);
    }

    pub fn set_bound(&self) {
        self.bound.store(true, Ordering::Relaxed);
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
            && self.bound.load(Ordering::Relaxed)
            && !self.draining.load(Ordering::Relaxed)
    }

    pub fn encode(&self) -> String {
        {
            // The request counter lives in the client; bring the series up to it.
            let mut seen = self.api_seen.lock().unwrap_or_else(|e| e.into_inner());
            let (reads, writes) = (self.stats.reads(), self.stats.writes());
            self.api_requests
                .get_or_create(&labels("kind", "read"))
                .inc_by(reads.saturating_sub(seen.0));
            self.api_requests
                .get_or_create(&labels("kind", "write"))
                .inc_by(writes.saturating_sub(seen.1));
            *seen = (reads.max(seen.0), writes.max(seen.1));
        }
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

async fn metrics_handler(State(metrics): State<Arc<ProxyMetrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}

async fn readyz(State(metrics): State<Arc<ProxyMetrics>>) -> impl IntoResponse {
    if metrics.is_ready() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Serves the admin port on `listener` until `shutdown`.
pub fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<ProxyMetrics>,
    shutdown: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        // Process health only: an app that is asleep or refusing is not the proxy's illness.
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(metrics);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    })
}

/// Binds one of `addresses` (the first that works).
pub async fn bind(addresses: &[SocketAddr]) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = None;
    for address in addresses {
        match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => return Ok(listener),
            Err(error) => last = Some(error),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no address to bind")))
}
