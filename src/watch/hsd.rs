//! The HotStandbyDeployment controller of `reconcile --watch`: caches (label-filtered watches
//! filed into the shared index), triggers (a pod names its HSD in its label; a Deployment by its
//! owner; a changed probe answer), and the reconcile itself, which runs the same pipeline as the
//! one-shot pass.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use kube::api::DynamicObject;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::cache::{Cache, DeploymentFiler, HsdNames, PodFiler, SharedIndex, SyncGate};
use super::cached::CachedHsd;
use super::pace::{self, StatusWrite};
use super::probes::{self, Probes};
use super::{
    SHUTDOWN_GRACE, Shard, UNSYNCED_RETRY, WatchOptions, backoff_delay, cache_is_behind,
    lean_deployment_meta, lean_hsd_pod, receiver_stream, scoped, watch_backoff,
};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::observe::{self, LeanDeployment, LeanPod};
use crate::plan::{ObservedDeployment, ObservedHsd, PodState};

/// What this process wrote last per HSD, overlaid on the caches until they catch up, so that a
/// reconcile triggered before its own write comes back through the watch does not repeat it.
#[derive(Clone, Debug, Default)]
struct OwnWrite {
    deployment: Option<(String, ObservedDeployment)>,
    status: Option<(String, crate::api::hsd::HotStandbyDeploymentStatus)>,
    /// A status planned and held back (see [`pace`]): this watcher's passes read it, as if
    /// written, until it is.
    held_status: Option<crate::api::hsd::HotStandbyDeploymentStatus>,
    /// When this watcher last wrote the status.
    status_written_at: Option<Instant>,
}

struct Context {
    client: Client,
    index: SharedIndex,
    probes: Arc<Probes>,
    gate: Arc<SyncGate>,
    own_writes: Mutex<HashMap<(String, String), OwnWrite>>,
    /// Deletion costs written, by pod uid: (resourceVersion, cost).
    own_costs: Mutex<HashMap<String, (String, i32)>>,
    failures: Mutex<HashMap<(String, String), u32>>,
    metrics: Arc<Metrics>,
    resync: Duration,
    /// The active-standby controller's Services (see `services::ServiceCache`).
    services: super::services::ServiceCache,
}

pub(super) async fn run(
    client: Client,
    options: WatchOptions,
    shard: Shard,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    services: super::services::ServiceCache,
) {
    let scope = &options.scope;
    let pod_resource = observe::pod_resource();
    let deployment_resource = observe::deployment_resource();
    let hsd_resource = observe::hsd_resource();
    let (synced_tx, synced_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let gate = SyncGate::new(synced_tx);
    let index: SharedIndex = Arc::default();
    let names = Arc::new(HsdNames::default());
    // Only what an HSD made: pods and Deployments that carry the HSD label.
    // Only what this shard's HSDs made: pods and Deployments that carry the HSD label (and, when
    // sharded, one of the shard's buckets).
    let owned = watcher::Config::default()
        .labels(&shard.owned_selector())
        .streaming_lists();

    let pod_gate = gate.clone();
    let mut pod_filer = PodFiler::new(index.clone());
    let pod_stream = watcher(
        scoped::<LeanPod>(&client, scope, &pod_resource),
        owned.clone(),
    )
    .backoff(watch_backoff())
    .modify(lean_hsd_pod)
    .inspect_ok(move |event| {
        pod_filer.apply(event);
        pod_gate.observe(Cache::Pods, event);
    })
    .touched_objects();
    let deployment_gate = gate.clone();
    let mut deployment_filer = DeploymentFiler::new(index.clone());
    let deployment_stream = watcher(
        scoped::<LeanDeployment>(&client, scope, &deployment_resource),
        owned,
    )
    .backoff(watch_backoff())
    .modify(|d: &mut LeanDeployment| lean_deployment_meta(&mut d.metadata))
    .inspect_ok(move |event| {
        deployment_filer.apply(event);
        deployment_gate.observe(Cache::Deployments, event);
    })
    .touched_objects();
    let hsd_writer = Writer::new(hsd_resource.clone());
    let hsds = hsd_writer.as_reader();
    let hsd_gate = gate.clone();
    let hsd_names = names.clone();
    let hsd_stream = watcher(
        scoped::<CachedHsd>(&client, scope, &hsd_resource),
        watcher::Config::default(),
    )
    .backoff(watch_backoff())
    .try_filter(move |event| {
        // The shard's HSDs only (HSD objects without managedFields are small: every shard
        // watches them all).
        let keep = match event {
            watcher::Event::Apply(hsd)
            | watcher::Event::InitApply(hsd)
            | watcher::Event::Delete(hsd) => {
                shard.contains(&hsd.namespace().unwrap_or_default(), &hsd.name_any())
            }
            watcher::Event::Init | watcher::Event::InitDone => true,
        };
        std::future::ready(keep)
    })
    .reflect(hsd_writer)
    .inspect_ok(move |event| {
        hsd_names.apply(event);
        hsd_gate.observe(Cache::Hsds, event);
    })
    .touched_objects();

    let controller = Controller::for_stream_with(hsd_stream, hsds.clone(), hsd_resource.clone())
        .with_config(ControllerConfig::default().concurrency(16))
        .trigger_backoff(watch_backoff());
    let (probe_trigger, probe_triggers) =
        tokio::sync::mpsc::unbounded_channel::<ObjectRef<CachedHsd>>();
    let probes = Probes::new(
        options.probe_concurrency,
        client.clone(),
        options.exec_probe_concurrency,
        metrics.clone(),
    );

    let context = Arc::new(Context {
        client: client.clone(),
        index: index.clone(),
        probes: probes.clone(),
        gate,
        own_writes: Mutex::new(HashMap::new()),
        own_costs: Mutex::new(HashMap::new()),
        failures: Mutex::new(HashMap::new()),
        metrics: metrics.clone(),
        resync: options.resync,
        services,
    });

    let hsd_resource_for_map = hsd_resource.clone();
    let pruner_task = tokio::spawn(prune_loop(
        hsds.clone(),
        context.clone(),
        shard,
        stop.clone(),
    ));
    let prober_task = tokio::spawn(probes::probe_loop(
        hsds.clone(),
        index,
        probes,
        probe_trigger,
        stop.clone(),
    ));
    let stop_for_controller = stop.clone();
    let running = controller
        .watches_stream_with(
            pod_stream,
            // A pod names its HSD in its label: O(1) per event, whatever the number of HSDs.
            move |pod: LeanPod| {
                names.of_pod(&pod).map(|(namespace, name)| {
                    ObjectRef::new_with(&name, hsd_resource_for_map.clone()).within(&namespace)
                })
            },
            pod_resource,
        )
        .owns_stream_with(deployment_stream, deployment_resource)
        .reconcile_on(receiver_stream(probe_triggers))
        // Once every cache holds a complete view, reconcile everything: the reconciles that
        // came earlier decided nothing.
        .reconcile_all_on(receiver_stream(synced_rx))
        .graceful_shutdown_on(async move { stop_for_controller.cancelled().await })
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(error = %crate::error::describe_error(&error), "controller");
            }
        });
    // A graceful shutdown lets running reconciles finish, but the custom trigger streams (pods,
    // Deployments, probes) need not end: bound the wait. Reconciles are idempotent, so one cut
    // short is redone by the next leader.
    let grace = async {
        stop.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        _ = running => {}
        _ = grace => tracing::info!("reconciles still running after the shutdown grace: dropped"),
    }
    stop.cancel();
    let _ = prober_task.await;
    let _ = pruner_task.await;
}

/// The HSD as the index (and this process's own writes) show it, with fresh probe answers.
async fn observe_hsd(
    object: &DynamicObject,
    context: &Context,
) -> Result<(ObservedHsd, Vec<Arc<LeanPod>>)> {
    let key = (object.namespace().unwrap_or_default(), object.name_any());
    let lifetime = observe::hsd_facts(object)
        .spec
        .as_ref()
        .ok()
        .filter(|spec| spec.busy_probe.mode.is_probed())
        .map(observe::answer_lifetime);
    let (mut hsd, pods) = {
        let index = context.index.read().expect("index lock");
        observe::observe_hsd(object, &index, |pod| {
            context.probes.answers.fresh(&pod.uid()?, lifetime?)
        })
    };
    hsd.master_slot = {
        let services = context.services.read().expect("services lock");
        services.get(&hsd.namespace).is_some_and(|services| {
            observe::services::master_slot(&hsd, services.values().map(|s| s.as_ref()))
        })
    };
    let cached_deployment_version = {
        let workload = crate::api::hsd::workload_name(&hsd.name);
        let index = context.index.read().expect("index lock");
        index
            .deployment(&hsd.namespace, &workload)
            .and_then(|d| d.metadata.resource_version.clone())
    };
    // Absent from a synced cache is absent, unless the child is not ours or the cache is a
    // moment behind a create: it is read before anything creates it.
    observe::confirm_missing_child(&context.client, &mut hsd).await?;
    // Our own last writes win over caches that have not seen them yet.
    {
        let mut own_costs = context.own_costs.lock().expect("own costs lock");
        for (pod, lean) in hsd.pods.iter_mut().zip(&pods) {
            if let Some((version, cost)) = own_costs.get(&pod.uid).cloned() {
                if cache_is_behind(lean.metadata.resource_version.as_deref(), &version) {
                    pod.cost_in_flight = Some(cost);
                } else {
                    own_costs.remove(&pod.uid);
                }
            }
        }
    }
    if let Some(own) = context
        .own_writes
        .lock()
        .expect("own writes lock")
        .get(&key)
        .cloned()
    {
        if let Some((version, written)) = own.deployment
            && cache_is_behind(cached_deployment_version.as_deref(), &version)
        {
            hsd.deployment = Some(written);
        }
        if let Some((version, status)) = own.status
            && cache_is_behind(object.metadata.resource_version.as_deref(), &version)
        {
            hsd.status = Some(status);
        }
        if let Some(held) = own.held_status {
            hsd.status = Some(held);
        }
    }
    Ok((hsd, pods))
}

/// In http and exec mode a scale-down (a drop or a drain) needs a fresh idle answer from every
/// pod it may remove: probe them again now, then observe again.
async fn confirm_scale_down(
    hsd: &mut ObservedHsd,
    pods: &[Arc<LeanPod>],
    object: &DynamicObject,
    plan: &crate::plan::Plan,
    context: &Context,
) -> bool {
    let Ok(spec) = hsd.spec.clone() else {
        return false;
    };
    let scales_down =
        plan.scale.is_some_and(|(from, to)| to < from) || !plan.fates.drain.is_empty();
    if !spec.busy_probe.mode.is_probed() || !scales_down {
        return false;
    }
    let removable: std::collections::HashSet<&str> = plan
        .pod_states
        .iter()
        .filter(|(_, state)| matches!(state, PodState::Idle | PodState::Starting))
        .map(|(name, _)| name.as_str())
        .collect();
    let targets: Vec<(String, crate::observe::probe::Target)> = pods
        .iter()
        .filter(|pod| removable.contains(pod.name_any().as_str()))
        .filter_map(|pod| Some((pod.uid()?, observe::probe_target(pod, &spec)?)))
        .collect();
    if targets.is_empty() {
        return false;
    }
    let key = (hsd.namespace.clone(), hsd.name.clone());
    let deadline = tokio::time::Instant::now() + observe::probe_timeout(&spec);
    context.probes.confirm(&key, targets, deadline).await;
    match observe_hsd(object, context).await {
        Ok((fresh, _)) => {
            *hsd = fresh;
            true
        }
        Err(_) => false,
    }
}

async fn reconcile(
    cached: Arc<CachedHsd>,
    context: Arc<Context>,
) -> std::result::Result<Action, Error> {
    let started = Instant::now();
    let key = (cached.namespace().unwrap_or_default(), cached.name_any());
    if cached.metadata.deletion_timestamp.is_some() {
        context.metrics.forget(&key.0, &key.1);
        return Ok(Action::await_change());
    }
    // Decisions only from a complete view: an unsynced pod cache would show busy pods as
    // missing, and an unsynced Deployment cache would show the child as missing.
    if !context.gate.synced() {
        return Ok(Action::requeue(UNSYNCED_RETRY));
    }
    let object = cached.expand();
    let (mut hsd, pods) = observe_hsd(&object, &context).await?;
    let mut plan = crate::plan::plan(&hsd, jiff::Timestamp::now());
    if confirm_scale_down(&mut hsd, &pods, &object, &plan, &context).await {
        plan = crate::plan::plan(&hsd, jiff::Timestamp::now());
    }
    let status_write = {
        let own_writes = context.own_writes.lock().expect("own writes lock");
        let own = own_writes.get(&key);
        pace::status_write(
            plan.status_changed,
            own.is_some_and(|own| own.held_status.is_some()),
            own.and_then(|own| own.status_written_at),
            Instant::now(),
        )
    };
    plan.status_changed = status_write == StatusWrite::Now;
    if let Some(delay) = test_write_delay()
        && plan.deployment != crate::plan::DeploymentAction::Keep
    {
        tokio::time::sleep(delay).await;
    }
    let result = crate::once::execute_plan(&context.client, &hsd, &plan).await;
    let error_reason = result.as_ref().err().map(Error::reason);
    context.metrics.reconciled(started.elapsed(), error_reason);
    let written = result?;
    context.failures.lock().expect("failures lock").remove(&key);
    context.metrics.set_status(&key.0, &key.1, &plan.status);
    context.metrics.events_failed(written.events_failed);
    if !written.cost_versions.is_empty() {
        let mut own_costs = context.own_costs.lock().expect("own costs lock");
        for (uid, version, cost) in &written.cost_versions {
            own_costs.insert(uid.clone(), (version.clone(), *cost));
        }
    }
    if written.deployment || written.status || matches!(status_write, StatusWrite::Later(_)) {
        let mut own_writes = context.own_writes.lock().expect("own writes lock");
        let entry = own_writes.entry(key).or_default();
        if let (
            Some(version),
            crate::plan::DeploymentAction::Apply {
                replicas,
                template_hash,
                ..
            },
        ) = (written.deployment_version, &plan.deployment)
        {
            entry.deployment = Some((
                version,
                ObservedDeployment {
                    owned: true,
                    replicas: Some(written.applied_replicas.unwrap_or(*replicas)),
                    template_hash: Some(template_hash.clone()),
                    replicas_writer: None,
                    relabelling: false,
                },
            ));
        }
        if let Some(version) = written.status_version {
            entry.status = Some((version, plan.status.clone()));
        }
        if written.status {
            entry.held_status = None;
            entry.status_written_at = Some(Instant::now());
        } else if matches!(status_write, StatusWrite::Later(_)) {
            entry.held_status = Some(plan.status.clone());
        }
    }
    let next = next_look(&plan, &hsd, &context);
    Ok(Action::requeue(match status_write {
        StatusWrite::Later(after) => next.min(after),
        StatusWrite::Now | StatusWrite::Skip => next,
    }))
}

/// When to look at an HSD again, without a change to trigger it.
fn next_look(plan: &crate::plan::Plan, hsd: &ObservedHsd, context: &Context) -> Duration {
    // A scale-down held for its costs to be seen goes on as soon as they are: soon.
    if plan
        .decision
        .as_ref()
        .is_some_and(|d| d.held_for_costs.is_some())
    {
        return Duration::from_secs(1);
    }
    // A drop held for drained pods to settle goes on once they have.
    if let Some(settled) = plan.drop_held_for(jiff::Timestamp::now()) {
        return settled;
    }
    // Drained pods the ReplicaSet may keep are looked at again once their grace is over.
    let drained_in_replica_set = !plan.fates.drain.is_empty()
        || hsd
            .pods
            .iter()
            .any(|pod| pod.draining && !pod.detached && !pod.terminating);
    if drained_in_replica_set {
        return crate::plan::DRAIN_GRACE.unsigned_abs() + Duration::from_millis(100);
    }
    // An HSD that may fall asleep is looked at again when its deadline passes.
    if let Some(at) = plan.sleep.sleeps_at {
        let left = at.duration_since(jiff::Timestamp::now());
        let left = Duration::try_from(left).unwrap_or(Duration::ZERO) + Duration::from_millis(100);
        return left.min(context.resync);
    }
    context.resync
}

/// Tests only: `HSD_TEST_WRITE_DELAY_MS` holds each Deployment write of a reconcile that long
/// after planning, so that a test can freeze the process with a write in flight.
fn test_write_delay() -> Option<Duration> {
    static DELAY: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    *DELAY.get_or_init(|| {
        std::env::var("HSD_TEST_WRITE_DELAY_MS")
            .ok()?
            .parse()
            .ok()
            .map(Duration::from_millis)
    })
}

fn error_policy(object: Arc<CachedHsd>, error: &Error, context: Arc<Context>) -> Action {
    let key = (object.namespace().unwrap_or_default(), object.name_any());
    let attempt = {
        let mut failures = context.failures.lock().expect("failures lock");
        let attempt = failures.entry(key.clone()).or_insert(0);
        *attempt += 1;
        *attempt
    };
    let delay = backoff_delay(attempt);
    tracing::warn!(namespace = %key.0, name = %key.1, %error, attempt, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Forgets what belonged to deleted HSDs (their metric series above all: a gauge of an HSD that
/// no longer exists would be a false number) every few seconds.
async fn prune_loop(
    hsds: Store<CachedHsd>,
    context: Arc<Context>,
    shard: Shard,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // The sync gate, not `Store::wait_until_ready`: that future keeps only its last
        // poller's waker, so a second waiter on the same store (the controller) leaves this one
        // asleep for good.
        if !context.gate.synced() {
            continue;
        }
        let cached = context.index.read().expect("index lock").pod_count();
        context.metrics.set_cached_pods(shard.index, cached);
        let live: std::collections::HashSet<(String, String)> = hsds
            .state()
            .iter()
            .map(|hsd| (hsd.namespace().unwrap_or_default(), hsd.name_any()))
            .collect();
        let gone: Vec<(String, String)> = context
            .own_writes
            .lock()
            .expect("own writes lock")
            .keys()
            .chain(context.metrics.known_hsds().iter())
            // Another shard's HSDs are not this one's to forget.
            .filter(|key| shard.contains(&key.0, &key.1) && !live.contains(*key))
            .cloned()
            .collect();
        for key in gone {
            context
                .own_writes
                .lock()
                .expect("own writes lock")
                .remove(&key);
            context.failures.lock().expect("failures lock").remove(&key);
            context.metrics.forget(&key.0, &key.1);
        }
    }
}
