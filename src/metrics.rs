//! Prometheus metrics of `reconcile --watch`, in the text exposition format, and the HTTP port
//! that serves them with `/healthz` and `/readyz`.

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

use crate::api::hsd::HotStandbyDeploymentStatus;
use crate::api::hsj::HotStandbyJobStatus;
use crate::plan::ProbeOutcome;

type Labels = Vec<(&'static str, String)>;
/// A liveness check: `Err(why)` when the process should be restarted.
pub type LivenessCheck = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

fn seconds_histogram() -> Histogram {
    // 1 ms to about 16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

pub struct Metrics {
    registry: Registry,
    hsd_pods: Family<Labels, Gauge>,
    hsd_desired: Family<Labels, Gauge>,
    hsd_replicas: Family<Labels, Gauge>,
    hsj_jobs: Family<Labels, Gauge>,
    hsj_desired: Family<Labels, Gauge>,
    reconciles: Family<Labels, Counter>,
    reconcile_errors: Family<Labels, Counter>,
    reconcile_duration: Histogram,
    probes: Family<Labels, Counter>,
    probe_duration: Histogram,
    leader: Gauge,
    shards_led: Gauge,
    cached_pods: Family<Labels, Gauge>,
    events_failed: Counter,
    writes: Family<Labels, Counter>,
    failovers: Family<Labels, Counter>,
    failover_duration: Histogram,
    service_errors: Family<Labels, Counter>,
    ready: AtomicBool,
    /// What `/healthz` asks: `Err(why)` makes it answer 503.
    liveness: std::sync::OnceLock<LivenessCheck>,
    /// HSDs that have series, so that a deleted one's can be removed.
    known: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
    /// HSJs that have series.
    known_hsjs: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
}

/// The states a pod-count series is kept for.
const POD_STATES: [&str; 4] = ["busy", "idle", "starting", "unknown"];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("hsd");
        let hsd_pods = Family::<Labels, Gauge>::default();
        let hsd_desired = Family::<Labels, Gauge>::default();
        let hsd_replicas = Family::<Labels, Gauge>::default();
        let hsj_jobs = Family::<Labels, Gauge>::default();
        let hsj_desired = Family::<Labels, Gauge>::default();
        let reconciles = Family::<Labels, Counter>::default();
        let reconcile_errors = Family::<Labels, Counter>::default();
        let reconcile_duration = seconds_histogram();
        let probes = Family::<Labels, Counter>::default();
        let probe_duration = seconds_histogram();
        let leader = Gauge::default();
        let events_failed = Counter::default();
        let shards_led = Gauge::default();
        let cached_pods = Family::<Labels, Gauge>::default();
        let writes = Family::<Labels, Counter>::default();
        let failovers = Family::<Labels, Counter>::default();
        // 10 ms to about 40 s.
        let failover_duration = Histogram::new(exponential_buckets(0.01, 2.0, 13));
        let service_errors = Family::<Labels, Counter>::default();
        registry.register(
            "pods",
            "Pods of a HotStandbyDeployment by state (busy, idle, starting, unknown)",
            hsd_pods.clone(),
        );
        registry.register(
            "desired_replicas",
            "Replicas the formula asks for",
            hsd_desired.clone(),
        );
        registry.register(
            "replicas",
            "Pods of the HotStandbyDeployment that exist (not terminating)",
            hsd_replicas.clone(),
        );
        registry.register(
            "hsj_jobs",
            "Jobs of a HotStandbyJob that count as capacity, by state (busy, idle, starting, unknown)",
            hsj_jobs.clone(),
        );
        registry.register(
            "hsj_desired_jobs",
            "Jobs the formula asks for, per HotStandbyJob",
            hsj_desired.clone(),
        );
        registry.register("reconciles", "Reconciles by result", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Failed reconciles by reason",
            reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time of one HSD's reconcile",
            reconcile_duration.clone(),
        );
        registry.register(
            "probes",
            "Busy probes (HTTP and exec) by outcome",
            probes.clone(),
        );
        registry.register(
            "probe_duration_seconds",
            "Time of one busy probe (HTTP or exec)",
            probe_duration.clone(),
        );
        registry.register(
            "api_writes",
            "Writes to the API server by the reconciler: sent, or refused because this process did not hold a fresh lease",
            writes.clone(),
        );
        registry.register(
            "shards_led",
            "Shards whose Lease this process holds (each reconciled while its lease is fresh)",
            shards_led.clone(),
        );
        registry.register(
            "cached_pods",
            "Pods in this process's caches, by shard (only the pods of the shard's HSDs are watched)",
            cached_pods.clone(),
        );
        registry.register(
            "events_failed",
            "Events that could not be recorded (best effort: they never fail a reconcile)",
            events_failed.clone(),
        );
        registry.register(
            "leader",
            "1 while this process holds the lease and reconciles",
            leader.clone(),
        );
        registry.register(
            "active_standby_failovers",
            "Changes of master of an active-standby Service after its first election, by reason (deleted, draining, not_ready, no_ip, gone, unselected, conflict)",
            failovers.clone(),
        );
        registry.register(
            "active_standby_failover_seconds",
            "From when this process first saw a master unfit to the new master's label acknowledged",
            failover_duration.clone(),
        );
        registry.register(
            "active_standby_reconcile_errors",
            "Failed active-standby reconciles of a namespace, by reason",
            service_errors.clone(),
        );
        Self {
            registry,
            hsd_pods,
            hsd_desired,
            hsd_replicas,
            hsj_jobs,
            hsj_desired,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            probes,
            probe_duration,
            leader,
            shards_led,
            cached_pods,
            events_failed,
            writes,
            failovers,
            failover_duration,
            service_errors,
            ready: AtomicBool::new(false),
            liveness: std::sync::OnceLock::new(),
            known: Default::default(),
            known_hsjs: Default::default(),
        }
    }

    /// The labels of one pod-state series of an HSD or HSJ.
    fn state_labels(namespace: &str, name: &str, state: &str) -> Labels {
        let mut labels = Self::hsd_labels(namespace, name);
        labels.push(("state", state.to_string()));
        labels
    }

    fn hsd_labels(namespace: &str, name: &str) -> Labels {
        vec![
            ("namespace", namespace.to_string()),
            ("name", name.to_string()),
        ]
    }

    /// Publishes an HSD's numbers exactly as its status has them.
    pub fn set_status(&self, namespace: &str, name: &str, status: &HotStandbyDeploymentStatus) {
        self.known
            .lock()
            .expect("known HSDs lock")
            .insert((namespace.to_string(), name.to_string()));
        for (state, value) in [
            ("busy", status.busy_count),
            ("idle", status.idle_count),
            ("starting", status.starting_count),
            ("unknown", status.unknown_count),
        ] {
            self.hsd_pods
                .get_or_create(&Self::state_labels(namespace, name, state))
                .set(i64::from(value));
        }
        let labels = Self::hsd_labels(namespace, name);
        self.hsd_desired
            .get_or_create(&labels)
            .set(i64::from(status.desired_replicas));
        self.hsd_replicas
            .get_or_create(&labels)
            .set(i64::from(status.replicas));
    }

    /// The HSDs that have series.
    pub fn known_hsds(&self) -> Vec<(String, String)> {
        self.known
            .lock()
            .expect("known HSDs lock")
            .iter()
            .cloned()
            .collect()
    }

    /// Drops the series of a deleted HSD.
    pub fn forget(&self, namespace: &str, name: &str) {
        self.known
            .lock()
            .expect("known HSDs lock")
            .remove(&(namespace.to_string(), name.to_string()));
        for state in POD_STATES {
            self.hsd_pods
                .remove(&Self::state_labels(namespace, name, state));
        }
        let labels = Self::hsd_labels(namespace, name);
        self.hsd_desired.remove(&labels);
        self.hsd_replicas.remove(&labels);
    }

    /// Publishes an HSJ's numbers exactly as its status has them.
    pub fn set_hsj_status(&self, namespace: &str, name: &str, status: &HotStandbyJobStatus) {
        self.known_hsjs
            .lock()
            .expect("known HSJs lock")
            .insert((namespace.to_string(), name.to_string()));
        for (state, value) in [
            ("busy", status.busy_count),
            ("idle", status.idle_count),
            ("starting", status.starting_count),
            ("unknown", status.unknown_count),
        ] {
            self.hsj_jobs
                .get_or_create(&Self::state_labels(namespace, name, state))
                .set(i64::from(value));
        }
        self.hsj_desired
            .get_or_create(&Self::hsd_labels(namespace, name))
            .set(i64::from(status.desired_active));
    }

    /// The HSJs that have series.
    pub fn known_hsjs(&self) -> Vec<(String, String)> {
        self.known_hsjs
            .lock()
            .expect("known HSJs lock")
            .iter()
            .cloned()
            .collect()
    }

    /// Drops the series of a deleted HSJ.
    pub fn forget_hsj(&self, namespace: &str, name: &str) {
        self.known_hsjs
            .lock()
            .expect("known HSJs lock")
            .remove(&(namespace.to_string(), name.to_string()));
        for state in POD_STATES {
            self.hsj_jobs
                .remove(&Self::state_labels(namespace, name, state));
        }
        self.hsj_desired.remove(&Self::hsd_labels(namespace, name));
    }

    pub fn reconciled(&self, duration: Duration, error_reason: Option<&'static str>) {
        self.reconcile_duration.observe(duration.as_secs_f64());
        let result = if error_reason.is_some() {
            "error"
        } else {
            "ok"
        };
        self.reconciles
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
        if let Some(reason) = error_reason {
            self.reconcile_errors
                .get_or_create(&vec![("reason", reason.to_string())])
                .inc();
        }
    }

    pub fn probed(&self, outcome: &ProbeOutcome, duration: Duration) {
        let outcome = match outcome {
            ProbeOutcome::Success => "success",
            ProbeOutcome::Failure(_) | ProbeOutcome::CommandFailed(_) => "failure",
            ProbeOutcome::Redirect { .. } => "redirect",
            ProbeOutcome::Error(_) => "error",
        };
        self.probes
            .get_or_create(&vec![("outcome", outcome.to_string())])
            .inc();
        self.probe_duration.observe(duration.as_secs_f64());
    }

    pub fn set_shards_led(&self, shards: usize) {
        self.shards_led.set(shards as i64);
    }

    pub fn set_cached_pods(&self, shard: u32, pods: usize) {
        self.cached_pods
            .get_or_create(&vec![("shard", shard.to_string())])
            .set(pods as i64);
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    pub fn write(&self, sent: bool) {
        let result = if sent { "sent" } else { "refused" };
        self.writes
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
    }

    /// A change of master of an active-standby Service (not its first election).
    pub fn failover(&self, namespace: &str, service: &str, reason: &str) {
        self.failovers
            .get_or_create(&vec![
                ("namespace", namespace.to_string()),
                ("service", service.to_string()),
                ("reason", reason.to_string()),
            ])
            .inc();
    }

    /// How long a failover took, from the unfit master first seen to the new one labelled.
    pub fn failover_took(&self, duration: Duration) {
        self.failover_duration.observe(duration.as_secs_f64());
    }

    pub fn service_error(&self, reason: &'static str) {
        self.service_errors
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    pub fn events_failed(&self, count: usize) {
        if count > 0 {
            self.events_failed.inc_by(count as u64);
        }
    }

    /// Sets what `/healthz` checks (once).
    pub fn set_liveness(&self, check: LivenessCheck) {
        let _ = self.liveness.set(check);
    }

    fn live(&self) -> Result<(), String> {
        self.liveness.get().map_or(Ok(()), |check| check())
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

async fn metrics_handler(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}

async fn healthz(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    match metrics.live() {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

async fn readyz(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    if metrics.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Binds the metrics port; returns the bound address (port 0 picks a free one) and the server.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(metrics);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    Ok((bound, task))
}
