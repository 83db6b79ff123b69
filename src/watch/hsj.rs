//! The HotStandbyJob controller of `reconcile --watch`, beside the HSD's ([`super::hsd`]):
//! caches (Jobs and pods that carry the HSJ label, filed into a [`JobIndex`]; the HSJs in a
//! reflector), triggers (a Job or pod names its HSJ in its label; a changed probe answer), its
//! own probe loop (per-HSJ budgets, like the HSD's), and the reconcile, which runs the same
//! pipeline as the one-shot pass ([`crate::once::reconcile_hsj`]): victims are asked again just
//! before their deletion, and deletions are compare-and-swaps.
//!
//! Nothing is decided until the three caches are synced. This process's own writes are laid over
//! the caches until they show them: a Job it created counts as starting capacity, a Job it
//! deleted as gone, its last status as the status, so that a reconcile triggered before a write
//! comes back through the watch never repeats it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use kube::api::DynamicObject;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::cache::{Cache, SyncGate};
use super::probes::Probes;
use super::shards::Shard;
use super::{
    SHUTDOWN_GRACE, UNSYNCED_RETRY, WatchOptions, backoff_delay, cache_is_behind, lean_pod,
    receiver_stream, scoped, strip_meta, watch_backoff,
};
use crate::error::Error;
use crate::labels::hsd_label_value;
use crate::metrics::Metrics;
use crate::observe::jobs::{JobIndex, LeanJob, hsj_owned_selector, hsj_resource, job_resource};
use crate::observe::probe::Prober;
use crate::observe::{self, LeanPod};
use crate::plan::hsj::{ObservedHsj, ObservedJob};

type SharedJobIndex = Arc<RwLock<JobIndex>>;
type HsjKey = (String, String);

/// How long an own write is laid over caches that have not shown it (a watch that lost it
/// relists well before).
const OWN_WRITE_LIFETIME: Duration = Duration::from_secs(60);
/// How often the probe loop looks for pods due for a probe.
const PROBE_TICK: Duration = Duration::from_millis(250);

/// What this process wrote per HSJ that the caches may not show yet.
#[derive(Default)]
struct OwnWrites {
    /// Jobs created: name -> when.
    created: HashMap<String, Instant>,
    /// Jobs deleted: uid -> when.
    deleted: HashMap<String, Instant>,
    /// The last status written, with its resourceVersion.
    status: Option<(String, crate::api::hsj::HotStandbyJobStatus)>,
}

struct Context {
    client: Client,
    index: SharedJobIndex,
    probes: Arc<Probes>,
    prober: Prober,
    gate: Arc<SyncGate>,
    own: Mutex<HashMap<HsjKey, OwnWrites>>,
    failures: Mutex<HashMap<HsjKey, u32>>,
    metrics: Arc<Metrics>,
    resync: Duration,
    /// The HSJs this controller reconciles: those whose bucket is in its shard.
    shard: Shard,
}

/// HSJ names by (namespace, HSJ label value), so that a Job or pod event finds its HSJ in O(1).
#[derive(Default)]
struct HsjNames {
    by_label: RwLock<HashMap<(String, String), String>>,
}

impl HsjNames {
    fn apply(&self, event: &watcher::Event<DynamicObject>) {
        let mut names = self.by_label.write().expect("names lock");
        let key = |hsj: &DynamicObject| {
            (
                hsj.namespace().unwrap_or_default(),
                hsd_label_value(&hsj.name_any()),
            )
        };
        match event {
            watcher::Event::Init => names.clear(),
            watcher::Event::Apply(hsj) | watcher::Event::InitApply(hsj) => {
                names.insert(key(hsj), hsj.name_any());
            }
            watcher::Event::Delete(hsj) => {
                names.remove(&key(hsj));
            }
            watcher::Event::InitDone => {}
        }
    }

    fn of<T: kube::Resource>(&self, object: &T) -> Option<(String, String)> {
        let (namespace, value) = observe::jobs::owner_label(object)?;
        let name = self
            .by_label
            .read()
            .expect("names lock")
            .get(&(namespace.clone(), value))
            .cloned()?;
        Some((namespace, name))
    }
}

/// Files watch events into the index, a relist buffered and swapped in when complete.
struct Filer<T> {
    index: SharedJobIndex,
    relist: Option<Vec<Arc<T>>>,
    apply: fn(&mut JobIndex, Arc<T>),
    delete: fn(&mut JobIndex, &T),
    replace: fn(&mut JobIndex, Vec<Arc<T>>),
}

impl<T: Clone> Filer<T> {
    fn on(&mut self, event: &watcher::Event<T>) {
        match event {
            watcher::Event::Init => self.relist = Some(Vec::new()),
            watcher::Event::InitApply(object) => {
                if let Some(buffer) = self.relist.as_mut() {
                    buffer.push(Arc::new(object.clone()));
                }
            }
            watcher::Event::InitDone => {
                let objects = self.relist.take().unwrap_or_default();
                (self.replace)(&mut self.index.write().expect("index lock"), objects);
            }
            watcher::Event::Apply(object) => (self.apply)(
                &mut self.index.write().expect("index lock"),
                Arc::new(object.clone()),
            ),
            watcher::Event::Delete(object) => {
                (self.delete)(&mut self.index.write().expect("index lock"), object)
            }
        }
    }
}

/// The label selector of what the shard's HSJs made: Jobs and pods with the HSJ label, and
/// with one of the shard's buckets.
fn owned_selector(shard: &Shard) -> String {
    if shard.is_everything() {
        return hsj_owned_selector();
    }
    let buckets: Vec<String> = shard.buckets().iter().map(u32::to_string).collect();
    format!(
        "{},{} in ({})",
        hsj_owned_selector(),
        crate::labels::BUCKET_LABEL,
        buckets.join(",")
    )
}

pub(super) async fn run(
    client: Client,
    options: WatchOptions,
    shard: Shard,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let scope = &options.scope;
    let pod_resource = observe::pod_resource();
    let job_resource = job_resource();
    let hsj_resource = hsj_resource();
    let (synced_tx, synced_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    // The same three-flag gate as the HSD's: here HSJs, pods and Jobs.
    let gate = SyncGate::new(synced_tx);
    let index: SharedJobIndex = Arc::default();
    let names = Arc::new(HsjNames::default());
    let owned = watcher::Config::default().labels(&owned_selector(&shard));

    let pod_gate = gate.clone();
    let mut pod_filer = Filer::<LeanPod> {
        index: index.clone(),
        relist: None,
        apply: JobIndex::apply_pod,
        delete: JobIndex::delete_pod,
        replace: JobIndex::replace_pods,
    };
    let pod_stream = watcher(
        scoped::<LeanPod>(&client, scope, &pod_resource),
        owned.clone(),
    )
    .backoff(watch_backoff())
    .modify(lean_pod)
    .inspect_ok(move |event| {
        pod_filer.on(event);
        pod_gate.observe(Cache::Pods, event);
    })
    .touched_objects();
    let job_gate = gate.clone();
    let mut job_filer = Filer::<LeanJob> {
        index: index.clone(),
        relist: None,
        apply: JobIndex::apply_job,
        delete: JobIndex::delete_job,
        replace: JobIndex::replace_jobs,
    };
    let job_stream = watcher(scoped::<LeanJob>(&client, scope, &job_resource), owned)
        .backoff(watch_backoff())
        .modify(|job: &mut LeanJob| strip_meta(&mut job.metadata))
        .inspect_ok(move |event| {
            job_filer.on(event);
            job_gate.observe(Cache::Deployments, event);
        })
        .touched_objects();
    let hsj_writer = Writer::new(hsj_resource.clone());
    let hsjs = hsj_writer.as_reader();
    let hsj_gate = gate.clone();
    let hsj_names = names.clone();
    let hsj_stream = watcher(
        scoped::<DynamicObject>(&client, scope, &hsj_resource),
        watcher::Config::default(),
    )
    .backoff(watch_backoff())
    .modify(|hsj: &mut DynamicObject| strip_meta(&mut hsj.metadata))
    .reflect(hsj_writer)
    .inspect_ok(move |event| {
        hsj_names.apply(event);
        hsj_gate.observe(Cache::Hsds, event);
    })
    .touched_objects();

    let controller = Controller::for_stream_with(hsj_stream, hsjs.clone(), hsj_resource.clone())
        .with_config(ControllerConfig::default().concurrency(16))
        .trigger_backoff(watch_backoff());
    let (probe_trigger, probe_triggers) =
        tokio::sync::mpsc::unbounded_channel::<ObjectRef<DynamicObject>>();
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
        prober: Prober::new(options.probe_concurrency)
            .with_exec(client.clone(), options.exec_probe_concurrency),
        gate,
        own: Mutex::new(HashMap::new()),
        failures: Mutex::new(HashMap::new()),
        metrics: metrics.clone(),
        resync: options.resync,
        shard,
    });

    let prober_task = tokio::spawn(probe_loop(
        hsjs.clone(),
        index,
        probes,
        probe_trigger,
        shard,
        stop.clone(),
    ));
    let pruner_task = tokio::spawn(prune_loop(hsjs.clone(), context.clone(), stop.clone()));
    let to_hsj = {
        let resource = hsj_resource.clone();
        move |namespace_name: Option<(String, String)>| {
            namespace_name.map(|(namespace, name)| {
                ObjectRef::new_with(&name, resource.clone()).within(&namespace)
            })
        }
    };
    let to_hsj_from_job = to_hsj.clone();
    let job_names = names.clone();
    let stop_for_controller = stop.clone();
    let running = controller
        .watches_stream_with(
            pod_stream,
            move |pod: LeanPod| to_hsj(names.of(&pod)),
            pod_resource,
        )
        .watches_stream_with(
            job_stream,
            move |job: LeanJob| to_hsj_from_job(job_names.of(&job)),
            job_resource,
        )
        .reconcile_on(receiver_stream(probe_triggers))
        .reconcile_all_on(receiver_stream(synced_rx))
        .graceful_shutdown_on(async move { stop_for_controller.cancelled().await })
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "hsj controller");
            }
        });
    let grace = async {
        stop.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        _ = running => {}
        _ = grace => tracing::info!("HSJ reconciles still running after the shutdown grace: dropped"),
    }
    stop.cancel();
    let _ = prober_task.await;
    let _ = pruner_task.await;
}

/// The HSJ as the index and this process's own writes show it, with fresh probe answers.
fn observe_hsj(object: &DynamicObject, context: &Context) -> ObservedHsj {
    let key = (object.namespace().unwrap_or_default(), object.name_any());
    let lifetime = observe::jobs::hsj_facts(object)
        .spec
        .as_ref()
        .ok()
        .filter(|spec| spec.busy_probe.mode.is_probed())
        .map(|spec| spec.busy_probe.answer_lifetime());
    let mut hsj = {
        let index = context.index.read().expect("index lock");
        observe::jobs::observe_hsj(object, &index, |pod| {
            context.probes.answers.fresh(&pod.uid()?, lifetime?)
        })
        .0
    };
    let mut own = context.own.lock().expect("own writes lock");
    let Some(writes) = own.get_mut(&key) else {
        return hsj;
    };
    // Deleted by us: gone, whatever the cache still shows.
    writes
        .deleted
        .retain(|_, at| at.elapsed() < OWN_WRITE_LIFETIME);
    for job in &mut hsj.jobs {
        if writes.deleted.contains_key(&job.uid) {
            job.deleting = true;
        }
    }
    // Created by us and not in the cache yet: starting capacity (and its name is taken).
    writes.created.retain(|name, at| {
        at.elapsed() < OWN_WRITE_LIFETIME && !hsj.jobs.iter().any(|job| &job.name == name)
    });
    for name in writes.created.keys() {
        hsj.jobs.push(ObservedJob {
            name: name.clone(),
            in_flight: true,
            completions: 1,
            ..ObservedJob::default()
        });
    }
    if let Some((version, status)) = &writes.status
        && cache_is_behind(object.metadata.resource_version.as_deref(), version)
    {
        hsj.status = Some(status.clone());
    }
    hsj
}

async fn reconcile(
    object: Arc<DynamicObject>,
    context: Arc<Context>,
) -> std::result::Result<Action, Error> {
    let started = Instant::now();
    let key = (object.namespace().unwrap_or_default(), object.name_any());
    if object.metadata.deletion_timestamp.is_some() {
        context.metrics.forget_hsj(&key.0, &key.1);
        return Ok(Action::await_change());
    }
    // Another shard's: its Jobs are not even in this controller's caches.
    if !context.shard.contains(&key.0, &key.1) {
        return Ok(Action::await_change());
    }
    if !context.gate.synced() {
        return Ok(Action::requeue(UNSYNCED_RETRY));
    }
    let mut hsj = observe_hsj(&object, &context);
    let (plan, result) =
        crate::once::reconcile_hsj(&context.client, &context.prober, &mut hsj, false).await;
    let error_reason = result.as_ref().err().map(Error::reason);
    context.metrics.reconciled(started.elapsed(), error_reason);
    let written = result?;
    context.failures.lock().expect("failures lock").remove(&key);
    context.metrics.set_hsj_status(&key.0, &key.1, &plan.status);
    context.metrics.events_failed(written.events_failed);
    {
        let mut own = context.own.lock().expect("own writes lock");
        let writes = own.entry(key).or_default();
        let now = Instant::now();
        for name in written.created.iter().chain(&written.found) {
            writes.created.insert(name.clone(), now);
        }
        for (name, _) in &written.deleted {
            if let Some(job) = hsj.jobs.iter().find(|job| &job.name == name) {
                writes.deleted.insert(job.uid.clone(), now);
            }
        }
        if let Some(version) = written.status_version {
            writes.status = Some((version, plan.status.clone()));
        }
    }
    // More to do soon: creations left for a later pass, deletions refused by a precondition
    // (the cache was behind), or a held surplus whose delay ends.
    let deferred = plan
        .decision
        .as_ref()
        .is_some_and(|d| d.create_deferred > 0);
    if deferred || !written.skipped.is_empty() {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    if let Some(after) = plan.recheck_after.filter(|after| *after < context.resync) {
        return Ok(Action::requeue(after));
    }
    Ok(Action::requeue(context.resync))
}

fn error_policy(object: Arc<DynamicObject>, error: &Error, context: Arc<Context>) -> Action {
    let key = (object.namespace().unwrap_or_default(), object.name_any());
    let attempt = {
        let mut failures = context.failures.lock().expect("failures lock");
        let attempt = failures.entry(key.clone()).or_insert(0);
        *attempt += 1;
        *attempt
    };
    let delay = backoff_delay(attempt);
    tracing::warn!(namespace = %key.0, name = %key.1, %error, attempt, retry_in = ?delay, "HSJ reconcile failed");
    Action::requeue(delay)
}

/// Probes each running worker of each HSJ in http or exec mode every period, within the HSJ's
/// own budget; a changed answer triggers a reconcile of its HSJ at once. Probes run as their
/// own tasks, so the loop never waits for a slow pod.
async fn probe_loop(
    hsjs: Store<DynamicObject>,
    index: SharedJobIndex,
    probes: Arc<Probes>,
    trigger: tokio::sync::mpsc::UnboundedSender<ObjectRef<DynamicObject>>,
    shard: Shard,
    stop: CancellationToken,
) {
    let mut running = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(PROBE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        while running.try_join_next().is_some() {}
        let mut live_hsjs = HashSet::new();
        let mut live_pods = HashSet::new();
        for object in hsjs.state() {
            let probed = object
                .data
                .pointer("/spec/busyProbe/mode")
                .and_then(|mode| mode.as_str())
                .is_some_and(|mode| mode == "http" || mode == "exec");
            let (namespace, name) = (object.namespace().unwrap_or_default(), object.name_any());
            if !probed || !shard.contains(&namespace, &name) {
                continue;
            }
            let (hsj, pods) = {
                let index = index.read().expect("index lock");
                observe::jobs::observe_hsj(&object, &index, |_| None)
            };
            let Ok(spec) = &hsj.spec else { continue };
            let key = (hsj.namespace.clone(), hsj.name.clone());
            live_hsjs.insert(key.clone());
            let period = spec.busy_probe.period();
            let hsj_ref = ObjectRef::new_with(&hsj.name, hsj_resource()).within(&hsj.namespace);
            for ((j, p), target) in observe::jobs::probe_targets(&hsj, &pods) {
                let Some(uid) = pods[j][p].uid() else {
                    continue;
                };
                live_pods.insert(uid.clone());
                if probes.due(&uid, period) && probes.start(&uid) {
                    let probes = probes.clone();
                    let trigger = trigger.clone();
                    let key = key.clone();
                    let hsj_ref = hsj_ref.clone();
                    running.spawn(async move {
                        let changed = probes.probe(&key, uid.clone(), target).await;
                        probes.finish(&uid);
                        if changed {
                            let _ = trigger.send(hsj_ref);
                        }
                    });
                }
            }
        }
        probes.retain(&live_pods, &live_hsjs);
    }
    running.abort_all();
    while running.join_next().await.is_some() {}
}

/// Forgets what belonged to deleted HSJs every few seconds.
async fn prune_loop(hsjs: Store<DynamicObject>, context: Arc<Context>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            ready = hsjs.wait_until_ready() => if ready.is_err() { return },
        }
        let live: HashSet<HsjKey> = hsjs
            .state()
            .iter()
            .map(|hsj| (hsj.namespace().unwrap_or_default(), hsj.name_any()))
            .collect();
        let gone: Vec<HsjKey> = context
            .own
            .lock()
            .expect("own writes lock")
            .keys()
            .chain(context.metrics.known_hsjs().iter())
            .filter(|key| !live.contains(*key))
            .cloned()
            .collect();
        for key in gone {
            context.own.lock().expect("own writes lock").remove(&key);
            context.failures.lock().expect("failures lock").remove(&key);
            context.metrics.forget_hsj(&key.0, &key.1);
        }
    }
}
