//! HSD mode's side of waking and sleeping: the view (the child Deployment's replicas with the
//! HSD's shared deadline), and the writes. The deadline moves by compare-and-swap on the HSD's
//! resourceVersion. A wake moves it and, beside that write, carries out the HSD's own plan as
//! the proxy's caches show it (the deadline moved), when that plan only raises the child's
//! replicas from 0: one round trip to the child, as a watcher's. A pass over one fresh read
//! ([`crate::once::reconcile_read`]) follows, and writes the status and whatever the caches
//! missed: at once when the caches could not wake the child, else half a second later, out of
//! the cold start's way. Both go through the plan and the reconciler's field manager: the proxy
//! never decides replicas itself, and never puts the HSD to sleep: the plan does, once the
//! deadline has passed and nothing is busy.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::ErrorLog;
use super::deadline::{Decision, format_deadline, parse_deadline};
use super::metrics::{ProxyMetrics, ScaleWrite};
use super::scale::{FIELD_MANAGER, ScaleView, Scaler, WriteError, publish};
use crate::plan::sleep::SLEEP_DEADLINE_ANNOTATION;

/// HSD mode's scale target: the HSD's API and what the proxy's watches hold of it.
pub struct HsdScaleTarget {
    pub client: Client,
    pub api: Api<DynamicObject>,
    pub namespace: String,
    pub caches: HsdCaches,
}

/// What the proxy's own watches hold: the HSD, its child Deployment and its pods (the pods'
/// watch is the routing's, [`super::hsd`]).
#[derive(Clone)]
pub struct HsdCaches {
    pub hsd: reflector::Store<DynamicObject>,
    pub child: reflector::Store<Deployment>,
    pub pods: reflector::Store<Pod>,
}

/// The writing ends of [`HsdCaches`], for the watches that fill them.
pub struct HsdCacheWriters {
    pub hsd: reflector::store::Writer<DynamicObject>,
    pub child: reflector::store::Writer<Deployment>,
    pub pods: reflector::store::Writer<Pod>,
}

pub fn caches() -> (HsdCaches, HsdCacheWriters) {
    let writers = HsdCacheWriters {
        hsd: reflector::store::Writer::new(crate::observe::hsd_resource()),
        child: Default::default(),
        pods: Default::default(),
    };
    let caches = HsdCaches {
        hsd: writers.hsd.as_reader(),
        child: writers.child.as_reader(),
        pods: writers.pods.as_reader(),
    };
    (caches, writers)
}

/// The view from the HSD (its deadline and resourceVersion) and its child's replicas.
pub fn view(hsd: &DynamicObject, replicas: i32, guard: Duration) -> ScaleView {
    let deadline = hsd
        .annotations()
        .get(SLEEP_DEADLINE_ANNOTATION)
        .and_then(|value| parse_deadline(value));
    ScaleView::from_parts(replicas, deadline, hsd.resource_version(), guard)
}

/// Watches the HSD and its child Deployment and publishes the combined view until `stop`.
/// Without `scaleToZero` (`sleeps` false) the view never holds a connection for a wake.
#[allow(clippy::too_many_arguments)]
pub async fn watch(
    (hsd_writer, child_writer): (
        reflector::store::Writer<DynamicObject>,
        reflector::store::Writer<Deployment>,
    ),
    client: Client,
    namespace: String,
    name: String,
    sleeps: bool,
    sender: watch::Sender<ScaleView>,
    metrics: Arc<ProxyMetrics>,
    guard: Duration,
    stop: CancellationToken,
) {
    let hsds: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &namespace, &crate::observe::hsd_resource());
    let deployments: Api<Deployment> = Api::namespaced(client, &namespace);
    let child = crate::api::hsd::workload_name(&name);
    let hsd_reader = hsd_writer.as_reader();
    let child_reader = child_writer.as_reader();
    let hsd_events = watcher(
        hsds,
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .backoff(super::watch_backoff())
    .modify(|o: &mut DynamicObject| o.metadata.managed_fields = None)
    .reflect(hsd_writer)
    .map(|event| event.map(|e| (true, matches!(e, watcher::Event::InitDone))));
    let child_events = watcher(
        deployments,
        watcher::Config::default().fields(&format!("metadata.name={child}")),
    )
    .backoff(super::watch_backoff())
    // Who owns spec.replicas stays: a wake planned from this cache tells another writer as a
    // pass does.
    .modify(|d: &mut Deployment| crate::watch::lean_deployment_meta(&mut d.metadata))
    .reflect(child_writer)
    .map(|event| event.map(|e| (false, matches!(e, watcher::Event::InitDone))));
    let mut events = futures::stream::select(hsd_events.boxed(), child_events.boxed());
    let mut errors = ErrorLog::new("watching the HotStandbyDeployment");
    let (mut hsd_synced, mut child_synced) = (false, false);
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            event = events.next() => event,
        };
        match event {
            None => return,
            Some(Err(error)) => errors.failed(&error),
            Some(Ok((of_hsd, init_done))) => {
                errors.recovered();
                if init_done && of_hsd {
                    hsd_synced = true;
                } else if init_done {
                    child_synced = true;
                }
                if !(hsd_synced && child_synced) {
                    continue;
                }
                // No child yet: 0 replicas (a wake's pass creates it).
                let cached_child = child_reader.state().first().cloned();
                let mut replicas = cached_child
                    .as_ref()
                    .map_or(0, |d| d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1));
                // A wake's own child write wins over a cache that has not seen it yet: the HSD's
                // event of the same wake can come first, and a view of 0 replicas with
                // connections held would wake again.
                let child_written = sender
                    .borrow()
                    .child_written
                    .clone()
                    .filter(|(version, _)| {
                        crate::watch::cache_is_behind(
                            cached_child
                                .as_ref()
                                .and_then(|d| d.metadata.resource_version.as_deref()),
                            version,
                        )
                    });
                if let Some((_, written)) = &child_written {
                    replicas = *written;
                }
                let next = match hsd_reader.state().first() {
                    None => {
                        tracing::warn!(%name, "the HotStandbyDeployment does not exist: connections are held until --max-wait");
                        ScaleView {
                            synced: true,
                            ..Default::default()
                        }
                    }
                    Some(_) if !sleeps => ScaleView::never_sleeps(replicas),
                    Some(hsd) => ScaleView {
                        child_written,
                        ..view(hsd, replicas, guard)
                    },
                };
                publish(&sender, &metrics, next);
            }
        }
    }
}

/// Carries out one decision of [`super::deadline::decide`] on the HSD.
pub(super) async fn write(
    scaler: &Scaler,
    target: &HsdScaleTarget,
    decision: Decision,
    view: &ScaleView,
) -> Result<(), WriteError> {
    let HsdScaleTarget {
        client,
        api,
        namespace,
        caches,
    } = target;
    let (kind, deadline) = match decision {
        // The plan puts the HSD to sleep; the proxy only ever moves the deadline later.
        Decision::Nothing | Decision::Sleep => return Ok(()),
        Decision::Wake { deadline, .. } => (ScaleWrite::Wake, deadline),
        Decision::Extend { deadline } => (ScaleWrite::Extend, deadline),
    };
    let Some(resource_version) = &view.resource_version else {
        return Ok(());
    };
    let body = json!({"metadata": {
        "resourceVersion": resource_version,
        "annotations": {SLEEP_DEADLINE_ANNOTATION: format_deadline(deadline)},
    }});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..Default::default()
    };
    let name = &scaler.name;
    let body = Patch::Merge(&body);
    let patch = api.patch(name, &params, &body);
    // A wake applies the child from the caches beside the deadline write: one round trip.
    let mut child_applied = None;
    let patched = if kind == ScaleWrite::Wake {
        let (patched, applied) = tokio::join!(patch, apply_from_caches(client, caches, deadline));
        match applied {
            Ok(Some(applied)) => {
                scaler.metrics.scale_write(ScaleWrite::WakeChild, "ok");
                child_applied = Some(applied);
            }
            Ok(None) => {}
            Err(error) => {
                scaler.metrics.scale_write(ScaleWrite::WakeChild, "error");
                tracing::debug!(hsd = %name, %error, "the wake from the caches failed: the pass decides");
            }
        }
        patched
    } else {
        patch.await
    };
    let hsd = match patched {
        Ok(hsd) => hsd,
        Err(kube::Error::Api(status)) if status.code == 409 => {
            scaler.metrics.scale_write(kind, "conflict");
            tracing::debug!(hsd = %name, kind = kind.label(), "changed meanwhile: deciding again");
            return Err(WriteError::Conflict);
        }
        Err(error) => {
            scaler.metrics.scale_write(kind, "error");
            return Err(WriteError::Failed(error.to_string()));
        }
    };
    // The child's replicas as the wake applied them, before the child's watch shows them: a
    // decision made meanwhile would see 0 and wake again.
    let replicas = child_applied
        .as_ref()
        .map_or(view.shared.replicas, |(replicas, _)| *replicas);
    publish(
        &scaler.sender,
        &scaler.metrics,
        ScaleView {
            child_written: child_applied
                .as_ref()
                .and_then(|(replicas, version)| Some((version.clone()?, *replicas))),
            ..self::view(&hsd, replicas, scaler.guard)
        },
    );
    if kind == ScaleWrite::Extend {
        scaler.metrics.scale_write(kind, "ok");
        tracing::debug!(hsd = %name, %deadline, "moved the sleep deadline");
        return Ok(());
    }
    if child_applied.is_some() {
        // The child is scaling up and the deadline is ahead: the cold start is under way. The
        // pass that writes the status comes once the new pod has had time to start, so that its
        // reads and writes do not compete with the pod's creation for the API server (on the
        // benchmark's 2 cores they did, inside the wake's critical path).
        scaler.metrics.scale_write(kind, "ok");
        scaler.activity.woke();
        tracing::info!(
            hsd = %name,
            held = scaler.activity.held_count(),
            "woke the HotStandbyDeployment: its plan, from the proxy's caches, scaled it up from 0"
        );
        let (client, api, namespace, name) =
            (client.clone(), api.clone(), namespace.clone(), name.clone());
        tokio::spawn(async move {
            tokio::time::sleep(WAKE_PASS_DELAY).await;
            if let Err(error) = follow_up_pass(&client, &api, &namespace, &name).await {
                tracing::warn!(hsd = %name, %error, "the pass after the wake failed: the next pass writes the status");
            }
        });
        return Ok(());
    }
    // The wake: the HSD's own plan, now that the deadline is ahead, scales it up.
    let failed = |error: &dyn std::fmt::Display| {
        scaler.metrics.scale_write(kind, "error");
        WriteError::Failed(format!(
            "the wake's pass over HotStandbyDeployment {namespace}/{name}: {error}"
        ))
    };
    let read = match crate::once::read_for_one(client, namespace, name).await {
        Ok(read) => read,
        Err(error) => return Err(failed(&error)),
    };
    let outcome = crate::once::reconcile_read(client, &hsd, read, &wake_pass_options()).await;
    match outcome.result {
        Ok(_) => {
            scaler.metrics.scale_write(kind, "ok");
            scaler.activity.woke();
            let replicas = outcome.plan.decision.as_ref().map_or(0, |d| d.replicas);
            tracing::info!(
                hsd = %name,
                replicas,
                held = scaler.activity.held_count(),
                "woke the HotStandbyDeployment: its plan scaled it up from 0"
            );
            Ok(())
        }
        Err(error) => Err(failed(&error)),
    }
}

/// How long after a wake from the caches its follow-up pass waits: a cold start on the local
/// control plane takes 25 to 70 ms, and nothing in that pass is urgent (the child is applied).
const WAKE_PASS_DELAY: Duration = Duration::from_millis(500);

fn wake_pass_options() -> crate::once::PassOptions {
    crate::once::PassOptions {
        deadline: Some(Duration::from_secs(20)),
        ..Default::default()
    }
}

/// The pass after a wake from the caches, on a fresh read of the HSD: it writes the status, and
/// whatever the caches missed.
async fn follow_up_pass(
    client: &Client,
    api: &Api<DynamicObject>,
    namespace: &str,
    name: &str,
) -> crate::error::Result<()> {
    let Some(hsd) = api.get_opt(name).await.map_err(crate::error::kube_error(
        format!("reading HotStandbyDeployment {namespace}/{name}"),
        "get",
        "hotstandbydeployments.apps.paia.tech",
        Some(namespace),
    ))?
    else {
        return Ok(());
    };
    let read = crate::once::read_for_one(client, namespace, name).await?;
    crate::once::reconcile_read(client, &hsd, read, &wake_pass_options())
        .await
        .result
        .map(|_| ())
}

/// The wake's first write, planned from the proxy's caches as a watcher plans from its own: the
/// HSD's plan with the deadline moved, carried out at once when the child is at 0 and the plan
/// only raises its replicas (no pod can leave). It runs beside the deadline write; the pass
/// after it writes the status. Returns the replicas the child was applied with, if it was.
async fn apply_from_caches(
    client: &Client,
    caches: &HsdCaches,
    deadline: jiff::Timestamp,
) -> crate::error::Result<Option<(i32, Option<String>)>> {
    let Some(hsd) = caches.hsd.state().into_iter().next() else {
        return Ok(None);
    };
    let mut object = (*hsd).clone();
    object
        .annotations_mut()
        .insert(SLEEP_DEADLINE_ANNOTATION.into(), format_deadline(deadline));
    let index = crate::observe::Index::from_lists(
        caches
            .child
            .state()
            .iter()
            .filter_map(|d| lean(d.as_ref()))
            .collect(),
        caches
            .pods
            .state()
            .iter()
            .filter_map(|p| lean(p.as_ref()))
            .collect(),
    );
    let (observed, _) = crate::observe::observe_hsd(&object, &index, |_| None);
    let mut plan = crate::plan::plan(&observed, jiff::Timestamp::now());
    let at_zero = observed
        .deployment
        .as_ref()
        .is_some_and(|child| child.replicas == Some(0));
    if !at_zero || !crate::execute::only_raises_replicas(&observed, &plan) {
        return Ok(None);
    }
    // The proxy's own write moves the deadline, and the pass after this one writes the status
    // (the status write would make that compare-and-swap fail).
    plan.sleep.move_deadline_to = None;
    plan.status_changed = false;
    let replicas = match &plan.deployment {
        crate::plan::DeploymentAction::Apply { replicas, .. } => *replicas,
        _ => return Ok(None),
    };
    let written = crate::execute::execute(client, &observed, &plan).await?;
    Ok(written
        .deployment
        .then(|| (replicas, written.deployment_version.clone())))
}

/// A watched object in the lean form the index holds.
fn lean<T: serde::Serialize, U: serde::de::DeserializeOwned>(object: &T) -> Option<U> {
    serde_json::to_value(object)
        .ok()
        .and_then(|value| serde_json::from_value(value).ok())
}
