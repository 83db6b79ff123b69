//! Waking and sleeping the Deployment: its cached state (a watch on that one object), this
//! replica's connection counts, and the scaler that turns `deadline::decide` into writes.
//! Writes are JSON merge patches under the field manager `kubectl-hsd-proxy`; a wake and a
//! sleep carry the resourceVersion they were decided on, so a change made meanwhile by another
//! replica (or a person) makes them fail with a conflict instead of overriding it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::ErrorLog;
use super::deadline::{
    Decision, LocalState, SCALE_DOWN_AT, SharedState, Timing, decide, format_deadline,
    forward_window, parse_deadline,
};
use super::metrics::{ProxyMetrics, ScaleWrite};

pub const FIELD_MANAGER: &str = "kubectl-hsd-proxy";

/// This replica's connections, shared by the connection tasks and the scaler.
pub struct Activity {
    open: AtomicUsize,
    held: AtomicUsize,
    /// Milliseconds after `started` of the last connection opened or closed, plus one (0: none).
    last_activity: AtomicU64,
    started: Instant,
    started_at: Timestamp,
    /// Wakes the scaler when a connection waits for the app.
    pub demand: Notify,
    /// Wakes a drain when the last connection closes.
    idle: Notify,
    /// When this replica scaled the app up from zero, until a connection is forwarded after it.
    woke_at: std::sync::Mutex<Option<Instant>>,
    metrics: Arc<ProxyMetrics>,
}

impl Activity {
    pub fn new(metrics: Arc<ProxyMetrics>) -> Self {
        Self {
            open: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            last_activity: AtomicU64::new(0),
            started: Instant::now(),
            started_at: Timestamp::now(),
            demand: Notify::new(),
            idle: Notify::new(),
            woke_at: std::sync::Mutex::new(None),
            metrics,
        }
    }

    fn touch(&self) {
        let millis = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.last_activity.fetch_max(millis + 1, Ordering::Relaxed);
    }

    /// Counts a connection as open until the guard drops.
    pub fn open(self: &Arc<Self>) -> OpenGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        self.touch();
        OpenGuard(self.clone())
    }

    /// Counts a connection as held, unless `max` are held already.
    pub fn try_hold(self: &Arc<Self>, max: usize) -> Option<HeldGuard> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held < max).then_some(held + 1)
            })
            .ok()?;
        self.metrics.held.inc();
        Some(HeldGuard(self.clone()))
    }

    pub fn open_count(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    pub fn held_count(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    pub fn local_state(&self) -> LocalState {
        let last = self.last_activity.load(Ordering::Relaxed);
        LocalState {
            open: self.open_count(),
            held: self.held_count(),
            last_activity: (last > 0).then(|| {
                self.started_at
                    .checked_add(SignedDuration::from_millis(
                        i64::try_from(last - 1).unwrap_or(i64::MAX),
                    ))
                    .unwrap_or(Timestamp::MAX)
            }),
            started: self.started_at,
        }
    }

    pub(super) fn woke(&self) {
        *self.woke_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// The time since this replica's last wake, the first time it is asked after the wake.
    pub fn take_wake(&self) -> Option<Duration> {
        self.woke_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .map(|at| at.elapsed())
    }

    /// Waits until no connection is open; false if `deadline` came first.
    pub async fn wait_idle(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.open_count() == 0 {
                return true;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline) => return self.open_count() == 0,
            }
        }
    }
}

pub struct OpenGuard(Arc<Activity>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.touch();
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

pub struct HeldGuard(Arc<Activity>);

impl Drop for HeldGuard {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.held.dec();
    }
}

/// The Deployment as this replica knows it.
#[derive(Clone, Debug, Default)]
pub struct ScaleView {
    /// The first watch list has been seen.
    pub synced: bool,
    pub shared: SharedState,
    pub resource_version: Option<String>,
    /// New connections may be forwarded without waiting for an extension until then.
    pub forward_until: Option<Instant>,
    /// HSD mode: the child's replicas as this proxy's wake wrote them, with the resourceVersion
    /// the write left, until the child's cache has caught up with it.
    pub child_written: Option<(String, i32)>,
}

impl ScaleView {
    pub fn of(deployment: Option<&Deployment>, guard: Duration) -> Self {
        let Some(deployment) = deployment else {
            return Self {
                synced: true,
                ..Default::default()
            };
        };
        let deadline = deployment
            .annotations()
            .get(SCALE_DOWN_AT)
            .and_then(|value| parse_deadline(value));
        Self::from_parts(
            deployment
                .spec
                .as_ref()
                .and_then(|s| s.replicas)
                .unwrap_or(1),
            deadline,
            deployment.resource_version(),
            guard,
        )
    }

    /// A view of an object that exists: its replicas, the shared deadline, and the version the
    /// deadline was read at.
    pub fn from_parts(
        replicas: i32,
        deadline: Option<Timestamp>,
        resource_version: Option<String>,
        guard: Duration,
    ) -> Self {
        Self {
            synced: true,
            shared: SharedState {
                exists: true,
                replicas,
                deadline,
            },
            resource_version,
            forward_until: forward_window(Timestamp::now(), deadline, guard)
                .map(|w| Instant::now() + w),
            child_written: None,
        }
    }

    /// HSD mode without `scaleToZero`: nothing to decide, connections go as soon as a pod can
    /// take them.
    pub fn never_sleeps(replicas: i32) -> Self {
        Self {
            synced: true,
            shared: SharedState {
                exists: false,
                replicas,
                deadline: None,
            },
            resource_version: None,
            forward_until: Some(Instant::now() + Duration::from_secs(10 * 365 * 24 * 3600)),
            child_written: None,
        }
    }

    /// Whether a new connection may be forwarded now (when the app is also ready).
    pub fn awake(&self, now: Instant) -> bool {
        self.shared.replicas > 0 && self.forward_until.is_some_and(|until| now < until)
    }
}

/// Whether version `a` is older than `b`. Resource versions are opaque, but the API server's are
/// etcd revisions: when both are numbers, an older one (a watch event that trails the answer to
/// our own write) is not allowed to replace a newer state.
fn older(a: Option<&str>, b: Option<&str>) -> bool {
    match (
        a.and_then(|a| a.parse::<u64>().ok()),
        b.and_then(|b| b.parse::<u64>().ok()),
    ) {
        (Some(a), Some(b)) => a < b,
        _ => false,
    }
}

pub(super) fn publish(sender: &watch::Sender<ScaleView>, metrics: &ProxyMetrics, next: ScaleView) {
    sender.send_if_modified(|current| {
        if next.shared.exists
            && current.shared.exists
            && older(
                next.resource_version.as_deref(),
                current.resource_version.as_deref(),
            )
        {
            return false;
        }
        if current.synced == next.synced
            && current.shared == next.shared
            && current.resource_version == next.resource_version
        {
            return false;
        }
        if current.shared.replicas != next.shared.replicas || !current.synced {
            tracing::info!(
                replicas = next.shared.replicas,
                exists = next.shared.exists,
                "deployment"
            );
        }
        metrics.replicas.set(i64::from(next.shared.replicas));
        metrics
            .scale_down_at
            .set(next.shared.deadline.map_or(0, |d| d.as_second()));
        *current = next;
        true
    });
}

/// Caches the one Deployment and publishes its state until `stop`.
pub async fn watch_deployment(
    api: Api<Deployment>,
    name: String,
    sender: watch::Sender<ScaleView>,
    metrics: Arc<ProxyMetrics>,
    guard: Duration,
    stop: CancellationToken,
) {
    let (reader, writer) = reflector::store();
    let mut events = watcher(
        api,
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .backoff(super::watch_backoff())
    .modify(|d: &mut Deployment| d.metadata.managed_fields = None)
    .reflect(writer)
    .boxed();
    let mut errors = ErrorLog::new("watching the Deployment");
    let mut synced = false;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            event = events.next() => event,
        };
        match event {
            None => return,
            Some(Err(error)) => errors.failed(&error),
            Some(Ok(event)) => {
                errors.recovered();
                if matches!(event, watcher::Event::InitDone) {
                    synced = true;
                }
                if synced {
                    let deployment = reader.state().into_iter().next();
                    if deployment.is_none() {
                        tracing::warn!(%name, "the Deployment does not exist: connections are held until --max-wait");
                    }
                    publish(
                        &sender,
                        &metrics,
                        ScaleView::of(deployment.as_deref(), guard),
                    );
                }
            }
        }
    }
}

pub(super) enum WriteError {
    Conflict,
    Failed(String),
}

/// What the scaler writes to.
pub enum ScaleTarget {
    /// ZPA mode: the Deployment's replicas and its annotation.
    Deployment(Api<Deployment>),
    /// HSD mode: only the HSD's deadline annotation; a wake then runs the HSD's plan.
    Hsd(super::hsd_scale::HsdScaleTarget),
}

pub struct Scaler {
    pub target: ScaleTarget,
    pub name: String,
    pub timing: Timing,
    pub guard: Duration,
    pub activity: Arc<Activity>,
    pub sender: watch::Sender<ScaleView>,
    pub metrics: Arc<ProxyMetrics>,
}

impl Scaler {
    /// How often the scaler looks again without being asked: a quarter TTL, 100 ms to 1 s.
    fn period(&self) -> Duration {
        Duration::try_from(self.timing.ttl / 4)
            .unwrap_or(Duration::from_secs(1))
            .clamp(Duration::from_millis(100), Duration::from_secs(1))
    }

    /// Decides and writes until `stop`: on every tick, every change of the Deployment, and
    /// whenever a connection waits for the app.
    pub async fn run(self, stop: CancellationToken) {
        let period = self.period();
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut changes = self.sender.subscribe();
        let mut errors = ErrorLog::new("writing the Deployment");
        let mut quiet_until: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
                _ = self.activity.demand.notified() => {}
                changed = changes.changed() => if changed.is_err() { return },
            }
            let view = changes.borrow_and_update().clone();
            if !view.synced {
                continue;
            }
            let decision = decide(
                Timestamp::now(),
                &self.timing,
                &view.shared,
                &self.activity.local_state(),
            );
            if decision == Decision::Nothing {
                continue;
            }
            // After a failed write, wait a period before the next one.
            if quiet_until.is_some_and(|until| Instant::now() < until) {
                continue;
            }
            match self.write(decision, &view).await {
                Ok(()) => {
                    errors.recovered();
                    quiet_until = None;
                }
                Err(WriteError::Conflict) => {
                    // Someone changed the object since it was read: read it again.
                    if let Err(error) = self.reread().await {
                        errors.failed(&error);
                        quiet_until = Some(Instant::now() + period);
                    }
                }
                Err(WriteError::Failed(error)) => {
                    errors.failed(&error);
                    quiet_until = Some(Instant::now() + period);
                }
            }
        }
    }

    async fn reread(&self) -> Result<(), kube::Error> {
        match &self.target {
            ScaleTarget::Deployment(api) => {
                let deployment = api.get_opt(&self.name).await?;
                publish(
                    &self.sender,
                    &self.metrics,
                    ScaleView::of(deployment.as_ref(), self.guard),
                );
            }
            ScaleTarget::Hsd(target) => {
                let hsd = target.api.get_opt(&self.name).await?;
                let replicas = self.sender.borrow().shared.replicas;
                if let Some(hsd) = hsd {
                    publish(
                        &self.sender,
                        &self.metrics,
                        super::hsd_scale::view(&hsd, replicas, self.guard),
                    );
                }
            }
        }
        Ok(())
    }

    async fn write(&self, decision: Decision, view: &ScaleView) -> Result<(), WriteError> {
        let api = match &self.target {
            ScaleTarget::Deployment(api) => api,
            ScaleTarget::Hsd(target) => {
                return super::hsd_scale::write(self, target, decision, view).await;
            }
        };
        let resource_version = view.resource_version.clone();
        let (kind, patch) = match decision {
            Decision::Nothing => return Ok(()),
            Decision::Wake { replicas, deadline } => (
                ScaleWrite::Wake,
                json!({
                    "metadata": {
                        "resourceVersion": resource_version,
                        "annotations": {SCALE_DOWN_AT: format_deadline(deadline)},
                    },
                    "spec": {"replicas": replicas},
                }),
            ),
            Decision::Extend { deadline } => (
                ScaleWrite::Extend,
                json!({"metadata": {"annotations": {SCALE_DOWN_AT: format_deadline(deadline)}}}),
            ),
            Decision::Sleep => (
                ScaleWrite::Sleep,
                json!({
                    "metadata": {"resourceVersion": resource_version},
                    "spec": {"replicas": 0},
                }),
            ),
        };
        if kind != ScaleWrite::Extend && resource_version.is_none() {
            return Ok(());
        }
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..Default::default()
        };
        match api.patch(&self.name, &params, &Patch::Merge(&patch)).await {
            Ok(deployment) => {
                self.metrics.scale_write(kind, "ok");
                match decision {
                    Decision::Wake { replicas, .. } => {
                        self.activity.woke();
                        tracing::info!(
                            deployment = %self.name,
                            replicas,
                            held = self.activity.held_count(),
                            "woke the app: scaled up from 0"
                        );
                    }
                    Decision::Sleep => tracing::info!(
                        deployment = %self.name,
                        "scaled to 0: no connection for the TTL"
                    ),
                    Decision::Extend { deadline } => tracing::debug!(
                        deployment = %self.name,
                        %deadline,
                        "moved the scale-down deadline"
                    ),
                    Decision::Nothing => {}
                }
                publish(
                    &self.sender,
                    &self.metrics,
                    ScaleView::of(Some(&deployment), self.guard),
                );
                Ok(())
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                self.metrics.scale_write(kind, "conflict");
                tracing::debug!(deployment = %self.name, kind = kind.label(), "changed meanwhile: deciding again");
                Err(WriteError::Conflict)
            }
            Err(error) => {
                self.metrics.scale_write(kind, "error");
                Err(WriteError::Failed(error.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_resource_versions_win_and_opaque_ones_always_apply() {
        assert!(older(Some("5"), Some("10")));
        assert!(!older(Some("10"), Some("5")));
        assert!(!older(Some("abc"), Some("5")));
        assert!(!older(None, Some("5")));
    }

    #[test]
    fn a_view_reads_replicas_and_the_deadline() {
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "app", "resourceVersion": "7",
                "annotations": {SCALE_DOWN_AT: "2999-01-01T00:00:00Z"}},
            "spec": {"selector": {}, "template": {}},
        }))
        .unwrap();
        let view = ScaleView::of(Some(&deployment), Duration::from_secs(5));
        assert_eq!(view.shared.replicas, 1, "unset replicas default to 1");
        assert!(view.shared.deadline.is_some());
        assert!(view.awake(Instant::now()));
        let gone = ScaleView::of(None, Duration::from_secs(5));
        assert!(gone.synced && !gone.shared.exists && !gone.awake(Instant::now()));
    }

    #[tokio::test]
    async fn counts_open_and_held_connections_and_bounds_the_held() {
        let metrics = Arc::new(ProxyMetrics::new(Default::default()));
        let activity = Arc::new(Activity::new(metrics));
        assert_eq!(activity.local_state().last_activity, None);
        let open = activity.open();
        let first = activity.try_hold(2).expect("room for 2");
        let second = activity.try_hold(2).expect("room for 2");
        assert!(activity.try_hold(2).is_none(), "the third is refused");
        assert_eq!((activity.open_count(), activity.held_count()), (1, 2));
        drop((first, second));
        assert!(activity.try_hold(2).is_some());
        assert!(activity.local_state().last_activity.is_some());
        let deadline = tokio::time::Instant::now() + Duration::from_millis(50);
        assert!(!activity.wait_idle(deadline).await, "still open");
        drop(open);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        assert!(activity.wait_idle(deadline).await);
    }
}
