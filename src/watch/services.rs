//! The active-standby controller of `reconcile --watch`: the same observe -> plan -> execute as
//! the one-shot pass, one namespace at a time, triggered by the watches below instead of a
//! timer, so that a failover starts as soon as the master's deletion or unreadiness arrives.
//! It runs only while this process leads, behind the write fence, like the HSD controller; a
//! new leader starts from the records on the Services, so it adopts the recorded masters.
//!
//! What is watched, and what it costs:
//! - **Services** of the scope, all of them (an annotation cannot be filtered on), keeping only
//!   those that are active-standby or carry a record: a few hundred bytes each.
//! - **Pods of the namespaces that have such a Service**, one watch per namespace, started
//!   and stopped as Services gain and lose the annotation. A Service selects its pods with the
//!   user's own labels, not one this tool injects, so there is no label to filter on: every pod
//!   of such a namespace is cached, lean (metadata without managedFields, Ready, pod IP), about
//!   1-2 KB per pod. Namespaces without an active-standby Service cost nothing: their pods are
//!   never listed.
//! - **Pods labelled as masters** anywhere in the scope (a label-filtered watch: a handful), so
//!   that a label left behind by a Service that was deleted is cleaned up.
//! - **HSDs**, to rank candidates (busy pods last).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::DynamicObject;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    WatchOptions, backoff_delay, cache_is_behind, lean_pod, scoped, strip_meta, watch_backoff,
};
use crate::api::active_standby::DESIGNATION_LABEL;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::observe::services::{
    BusyRule, BusyRules, LeanService, busy_rule, is_of_interest, service_resource,
};
use crate::observe::{LeanPod, Scope, pod_resource};
use crate::plan::active_standby::{ObservedNamespace, TransitionReason};

/// Namespaces reconciled at once.
const CONCURRENCY: usize = 16;
/// How long a reconcile waits for the caches to show this process's own last writes before it
/// decides from them anyway (their compare-and-swap keeps a stale decision from being written).
const OWN_WRITE_WAIT: Duration = Duration::from_secs(3);
/// Retry of a namespace whose caches are not complete yet, or behind our own writes.
const NOT_READY_RETRY: Duration = Duration::from_millis(200);

type PodMap = HashMap<String, Arc<LeanPod>>;

/// The Services of interest (active-standby, or with a record), by namespace then name: filled
/// by this controller, read by the HSD controller too (a Service over an HSD's pods keeps its
/// master's place there).
pub(super) type ServiceCache = Arc<RwLock<HashMap<String, HashMap<String, Arc<LeanService>>>>>;

/// The pods of one namespace with an active-standby Service.
struct NamespacePods {
    synced: bool,
    pods: PodMap,
    task: tokio::task::JoinHandle<()>,
}

/// What this process wrote last in a namespace, until the caches show it.
struct OwnWrites {
    at: Instant,
    services: BTreeMap<String, String>,
    pods: BTreeMap<String, Option<String>>,
}

struct Caches {
    /// Services of interest, by namespace then name.
    services: ServiceCache,
    services_synced: AtomicBool,
    /// Pods labelled as masters, by namespace then name.
    labelled: RwLock<HashMap<String, PodMap>>,
    labelled_synced: AtomicBool,
    namespaces: Mutex<HashMap<String, NamespacePods>>,
    /// Each HSD's busy rule, by namespace then name.
    hsds: RwLock<HsdRules>,
    hsds_synced: AtomicBool,
}

type HsdRules = HashMap<String, HashMap<String, BusyRule>>;

struct Context {
    client: Client,
    caches: Arc<Caches>,
    trigger: mpsc::UnboundedSender<String>,
    metrics: Arc<Metrics>,
    own_writes: Mutex<HashMap<String, OwnWrites>>,
    /// When this process first saw each Service's master unfit: (namespace, service) ->
    /// (master, when).
    unfit_since: Mutex<HashMap<(String, String), (String, Instant)>>,
    failures: Mutex<HashMap<String, u32>>,
}

pub(super) async fn run(
    client: Client,
    options: WatchOptions,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    services: ServiceCache,
) {
    let scope = options.scope.clone();
    let (trigger, mut triggers) = mpsc::unbounded_channel::<String>();
    services.write().expect("services lock").clear();
    let caches = Arc::new(Caches {
        services,
        services_synced: AtomicBool::new(false),
        labelled: RwLock::default(),
        labelled_synced: AtomicBool::new(false),
        namespaces: Mutex::default(),
        hsds: RwLock::default(),
        hsds_synced: AtomicBool::new(false),
    });
    let context = Arc::new(Context {
        client: client.clone(),
        caches: caches.clone(),
        trigger: trigger.clone(),
        metrics,
        own_writes: Mutex::default(),
        unfit_since: Mutex::default(),
        failures: Mutex::default(),
    });

    let mut tasks = vec![
        tokio::spawn(watch_services(context.clone(), scope.clone(), stop.clone())),
        tokio::spawn(watch_labelled(context.clone(), scope.clone(), stop.clone())),
        tokio::spawn(watch_hsds(context.clone(), scope.clone(), stop.clone())),
        tokio::spawn(resync(context.clone(), options.resync, stop.clone())),
    ];

    // The work loop: each namespace reconciled by one task at a time; a trigger that arrives
    // while it runs makes it run once more after.
    let mut running: HashSet<String> = HashSet::new();
    let mut dirty: HashSet<String> = HashSet::new();
    let mut queue: Vec<String> = Vec::new();
    let mut work = tokio::task::JoinSet::new();
    loop {
        while running.len() < CONCURRENCY {
            let Some(namespace) = queue.pop() else { break };
            running.insert(namespace.clone());
            let context = context.clone();
            work.spawn(async move {
                reconcile(&context, &namespace).await;
                namespace
            });
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            namespace = triggers.recv() => {
                let Some(namespace) = namespace else { break };
                if running.contains(&namespace) {
                    dirty.insert(namespace);
                } else if !queue.contains(&namespace) {
                    queue.push(namespace);
                }
            }
            Some(done) = work.join_next(), if !work.is_empty() => {
                if let Ok(namespace) = done {
                    running.remove(&namespace);
                    if dirty.remove(&namespace) && !queue.contains(&namespace) {
                        queue.push(namespace);
                    }
                }
            }
        }
    }
    // Writes under way finish within the shutdown grace (they are fenced anyway).
    let _ = tokio::time::timeout(super::SHUTDOWN_GRACE, async {
        while work.join_next().await.is_some() {}
    })
    .await;
    work.abort_all();
    for task in tasks.drain(..) {
        task.abort();
    }
    for (_, namespace) in caches.namespaces.lock().expect("namespaces lock").drain() {
        namespace.task.abort();
    }
}

async fn watch_services(context: Arc<Context>, scope: Scope, stop: CancellationToken) {
    let api = scoped::<LeanService>(&context.client, &scope, &service_resource());
    let mut events = watcher(api, watcher::Config::default())
        .backoff(watch_backoff())
        .modify(|s: &mut LeanService| strip_meta(&mut s.metadata))
        .boxed();
    let mut relist: Option<HashMap<String, HashMap<String, Arc<LeanService>>>> = None;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            event = events.next() => event,
        };
        let Some(event) = event else { return };
        let Ok(event) = event else { continue };
        let caches = &context.caches;
        match event {
            watcher::Event::Init => {
                relist = Some(HashMap::new());
                caches.services_synced.store(false, Ordering::SeqCst);
            }
            watcher::Event::InitApply(service) => {
                if is_of_interest(&service)
                    && let Some(buffer) = relist.as_mut()
                {
                    buffer
                        .entry(service.namespace().unwrap_or_default())
                        .or_default()
                        .insert(service.name_any(), Arc::new(service));
                }
            }
            watcher::Event::InitDone => {
                let fresh = relist.take().unwrap_or_default();
                let mut touched: HashSet<String> = fresh.keys().cloned().collect();
                {
                    let mut services = caches.services.write().expect("services lock");
                    touched.extend(services.keys().cloned());
                    *services = fresh;
                }
                caches.services_synced.store(true, Ordering::SeqCst);
                update_namespaces(&context);
                for namespace in touched {
                    let _ = context.trigger.send(namespace);
                }
                trigger_labelled(&context);
            }
            watcher::Event::Apply(service) => {
                let namespace = service.namespace().unwrap_or_default();
                let name = service.name_any();
                let was = {
                    let mut services = caches.services.write().expect("services lock");
                    let entry = services.entry(namespace.clone()).or_default();
                    let was = if is_of_interest(&service) {
                        entry.insert(name, Arc::new(service)).is_some()
                    } else {
                        entry.remove(&name).is_some()
                    };
                    if entry.is_empty() {
                        services.remove(&namespace);
                    }
                    was
                };
                let now = caches
                    .services
                    .read()
                    .expect("services lock")
                    .get(&namespace)
                    .is_some();
                if was || now {
                    update_namespaces(&context);
                    let _ = context.trigger.send(namespace);
                }
            }
            watcher::Event::Delete(service) => {
                let namespace = service.namespace().unwrap_or_default();
                let removed = {
                    let mut services = caches.services.write().expect("services lock");
                    let removed = services
                        .get_mut(&namespace)
                        .is_some_and(|entry| entry.remove(&service.name_any()).is_some());
                    if services.get(&namespace).is_some_and(HashMap::is_empty) {
                        services.remove(&namespace);
                    }
                    removed
                };
                if removed {
                    update_namespaces(&context);
                    let _ = context.trigger.send(namespace);
                }
            }
        }
    }
}

/// Starts a pod watch for each namespace that has a Service of interest, and stops the watches
/// of namespaces that no longer have one.
fn update_namespaces(context: &Arc<Context>) {
    let wanted: HashSet<String> = context
        .caches
        .services
        .read()
        .expect("services lock")
        .keys()
        .cloned()
        .collect();
    let mut namespaces = context.caches.namespaces.lock().expect("namespaces lock");
    namespaces.retain(|namespace, pods| {
        let keep = wanted.contains(namespace);
        if !keep {
            pods.task.abort();
        }
        keep
    });
    for namespace in wanted {
        if namespaces.contains_key(&namespace) {
            continue;
        }
        let task = tokio::spawn(watch_namespace_pods(context.clone(), namespace.clone()));
        namespaces.insert(
            namespace,
            NamespacePods {
                synced: false,
                pods: HashMap::new(),
                task,
            },
        );
    }
}

async fn watch_namespace_pods(context: Arc<Context>, namespace: String) {
    let api: Api<LeanPod> =
        Api::namespaced_with(context.client.clone(), &namespace, &pod_resource());
    let mut events = watcher(api, watcher::Config::default())
        .backoff(watch_backoff())
        .modify(lean_pod)
        .boxed();
    let mut relist: Option<PodMap> = None;
    while let Some(event) = events.next().await {
        let Ok(event) = event else { continue };
        let notify = {
            let mut namespaces = context.caches.namespaces.lock().expect("namespaces lock");
            let Some(entry) = namespaces.get_mut(&namespace) else {
                return;
            };
            match event {
                watcher::Event::Init => {
                    relist = Some(HashMap::new());
                    entry.synced = false;
                    false
                }
                watcher::Event::InitApply(pod) => {
                    if let Some(buffer) = relist.as_mut() {
                        buffer.insert(pod.name_any(), Arc::new(pod));
                    }
                    false
                }
                watcher::Event::InitDone => {
                    entry.pods = relist.take().unwrap_or_default();
                    entry.synced = true;
                    true
                }
                watcher::Event::Apply(pod) => {
                    entry.pods.insert(pod.name_any(), Arc::new(pod));
                    true
                }
                watcher::Event::Delete(pod) => {
                    entry.pods.remove(&pod.name_any());
                    true
                }
            }
        };
        if notify {
            let _ = context.trigger.send(namespace.clone());
        }
    }
}

async fn watch_labelled(context: Arc<Context>, scope: Scope, stop: CancellationToken) {
    let api = scoped::<LeanPod>(&context.client, &scope, &pod_resource());
    let mut events = watcher(api, watcher::Config::default().labels(DESIGNATION_LABEL))
        .backoff(watch_backoff())
        .modify(lean_pod)
        .boxed();
    let mut relist: Option<HashMap<String, PodMap>> = None;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            event = events.next() => event,
        };
        let Some(event) = event else { return };
        let Ok(event) = event else { continue };
        let caches = &context.caches;
        match event {
            watcher::Event::Init => {
                relist = Some(HashMap::new());
                caches.labelled_synced.store(false, Ordering::SeqCst);
            }
            watcher::Event::InitApply(pod) => {
                if let Some(buffer) = relist.as_mut() {
                    buffer
                        .entry(pod.namespace().unwrap_or_default())
                        .or_default()
                        .insert(pod.name_any(), Arc::new(pod));
                }
            }
            watcher::Event::InitDone => {
                *caches.labelled.write().expect("labelled lock") =
                    relist.take().unwrap_or_default();
                caches.labelled_synced.store(true, Ordering::SeqCst);
                trigger_labelled(&context);
            }
            watcher::Event::Apply(pod) => {
                let namespace = pod.namespace().unwrap_or_default();
                caches
                    .labelled
                    .write()
                    .expect("labelled lock")
                    .entry(namespace.clone())
                    .or_default()
                    .insert(pod.name_any(), Arc::new(pod));
                let _ = context.trigger.send(namespace);
            }
            watcher::Event::Delete(pod) => {
                let namespace = pod.namespace().unwrap_or_default();
                let mut labelled = caches.labelled.write().expect("labelled lock");
                if let Some(pods) = labelled.get_mut(&namespace) {
                    pods.remove(&pod.name_any());
                    if pods.is_empty() {
                        labelled.remove(&namespace);
                    }
                }
                drop(labelled);
                let _ = context.trigger.send(namespace);
            }
        }
    }
}

fn trigger_labelled(context: &Context) {
    let namespaces: Vec<String> = context
        .caches
        .labelled
        .read()
        .expect("labelled lock")
        .keys()
        .cloned()
        .collect();
    for namespace in namespaces {
        let _ = context.trigger.send(namespace);
    }
}

/// Keeps each HSD's busy rule, not the HSD: a rule is all a ranking reads, and a few hundred
/// bytes against an HSD object's ten thousand.
async fn watch_hsds(context: Arc<Context>, scope: Scope, stop: CancellationToken) {
    let api = scoped::<DynamicObject>(&context.client, &scope, &crate::observe::hsd_resource());
    let mut events = watcher(api, watcher::Config::default())
        .backoff(watch_backoff())
        .boxed();
    let mut relist: Option<HsdRules> = None;
    let key = |hsd: &DynamicObject| (hsd.namespace().unwrap_or_default(), hsd.name_any());
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            event = events.next() => event,
        };
        let Some(event) = event else { return };
        let Ok(event) = event else { continue };
        let mut rules = context.caches.hsds.write().expect("hsds lock");
        match event {
            watcher::Event::Init => {
                context.caches.hsds_synced.store(false, Ordering::SeqCst);
                relist = Some(HsdRules::new());
            }
            watcher::Event::InitApply(hsd) => {
                if let (Some(buffer), Some(rule)) = (relist.as_mut(), busy_rule(&hsd)) {
                    let (namespace, name) = key(&hsd);
                    buffer.entry(namespace).or_default().insert(name, rule);
                }
            }
            watcher::Event::Apply(hsd) => {
                let (namespace, name) = key(&hsd);
                let of_namespace = rules.entry(namespace).or_default();
                match busy_rule(&hsd) {
                    Some(rule) => of_namespace.insert(name, rule),
                    None => of_namespace.remove(&name),
                };
            }
            watcher::Event::Delete(hsd) => {
                let (namespace, name) = key(&hsd);
                if let Some(of_namespace) = rules.get_mut(&namespace) {
                    of_namespace.remove(&name);
                }
            }
            watcher::Event::InitDone => {
                *rules = relist.take().unwrap_or_default();
                drop(rules);
                context.caches.hsds_synced.store(true, Ordering::SeqCst);
                let namespaces: Vec<String> = context
                    .caches
                    .services
                    .read()
                    .expect("services lock")
                    .keys()
                    .cloned()
                    .collect();
                for namespace in namespaces {
                    let _ = context.trigger.send(namespace);
                }
            }
        }
    }
}

/// Every namespace with a Service of interest or a labelled pod, every `period`.
async fn resync(context: Arc<Context>, period: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(period.max(Duration::from_secs(1)));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut namespaces: HashSet<String> = context
            .caches
            .services
            .read()
            .expect("services lock")
            .keys()
            .cloned()
            .collect();
        namespaces.extend(
            context
                .caches
                .labelled
                .read()
                .expect("labelled lock")
                .keys()
                .cloned(),
        );
        for namespace in namespaces {
            let _ = context.trigger.send(namespace);
        }
    }
}

fn retry_later(context: &Context, namespace: &str, delay: Duration) {
    let trigger = context.trigger.clone();
    let namespace = namespace.to_string();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let _ = trigger.send(namespace);
    });
}

/// The namespace as the caches show it, or `None` while a cache it needs is incomplete.
fn observe(context: &Context, namespace: &str) -> Option<ObservedNamespace> {
    let caches = &context.caches;
    if !caches.services_synced.load(Ordering::SeqCst)
        || !caches.labelled_synced.load(Ordering::SeqCst)
        || !caches.hsds_synced.load(Ordering::SeqCst)
    {
        return None;
    }
    let services: Vec<Arc<LeanService>> = caches
        .services
        .read()
        .expect("services lock")
        .get(namespace)
        .map(|s| s.values().cloned().collect())
        .unwrap_or_default();
    let pods: Vec<Arc<LeanPod>> = if services.is_empty() {
        caches
            .labelled
            .read()
            .expect("labelled lock")
            .get(namespace)
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default()
    } else {
        let namespaces = caches.namespaces.lock().expect("namespaces lock");
        let entry = namespaces.get(namespace)?;
        if !entry.synced {
            return None;
        }
        entry.pods.values().cloned().collect()
    };
    let busy = BusyRules::from_rules(
        caches
            .hsds
            .read()
            .expect("hsds lock")
            .get(namespace)
            .into_iter()
            .flat_map(|rules| rules.values().cloned()),
    );
    Some(crate::observe::services::observe_namespace(
        namespace,
        services.iter().map(|s| s.as_ref()),
        pods.iter().map(|p| p.as_ref()),
        &busy,
    ))
}

/// Whether the caches still show objects older than this process's last writes.
fn behind_own_writes(context: &Context, namespace: &str, observed: &ObservedNamespace) -> bool {
    let mut own = context.own_writes.lock().expect("own writes lock");
    let Some(writes) = own.get(namespace) else {
        return false;
    };
    if writes.at.elapsed() > OWN_WRITE_WAIT {
        own.remove(namespace);
        return false;
    }
    let service_behind = writes.services.iter().any(|(name, version)| {
        let cached = observed
            .services
            .iter()
            .find(|s| &s.name == name)
            .map(|s| s.resource_version.as_str());
        // A Service whose record was removed is no longer cached: that is caught up.
        cached.is_some_and(|cached| cache_is_behind(Some(cached), version))
    });
    let pod_behind = writes.pods.iter().any(|(name, version)| {
        let cached = observed.pods.iter().find(|p| &p.name == name);
        match (cached, version) {
            (Some(pod), Some(version)) => cache_is_behind(Some(&pod.resource_version), version),
            // Gone for the API server, still cached here.
            (Some(_), None) => true,
            (None, _) => false,
        }
    });
    if !service_behind && !pod_behind {
        own.remove(namespace);
        return false;
    }
    true
}

async fn reconcile(context: &Arc<Context>, namespace: &str) {
    let Some(observed) = observe(context, namespace) else {
        // A cache is (re)listing: its InitDone triggers the namespace again.
        return;
    };
    if behind_own_writes(context, namespace, &observed) {
        retry_later(context, namespace, NOT_READY_RETRY);
        return;
    }
    track_unfit_masters(context, &observed);
    let plan = crate::plan::active_standby::plan(&observed, jiff::Timestamp::now());
    if !plan.writes() && plan.services.iter().all(|s| s.events.is_empty()) {
        context
            .failures
            .lock()
            .expect("failures lock")
            .remove(namespace);
        return;
    }
    let result = crate::execute::active_standby::execute(&context.client, &plan).await;
    // Whatever was written, even before a failure, is ours to wait for.
    let (written, error) = match result {
        Ok(written) => (Some(written), None),
        Err(error) => (None, Some(error)),
    };
    if let Some(written) = &written {
        context.metrics.events_failed(written.events_failed);
        context.own_writes.lock().expect("own writes lock").insert(
            namespace.to_string(),
            OwnWrites {
                at: Instant::now(),
                services: written.service_versions.clone(),
                pods: written.pod_versions.clone(),
            },
        );
        for (service, transition) in &written.transitions {
            if transition.from.is_some() && transition.to.is_some() {
                context
                    .metrics
                    .failover(namespace, service, transition.reason.label());
            }
            let key = (namespace.to_string(), service.clone());
            let seen = context.unfit_since.lock().expect("unfit lock").remove(&key);
            if let (Some((_, since)), Some(to)) = (seen, &transition.to)
                && transition.reason != TransitionReason::Elected
                && let Some(labelled) = written.labelled.get(&to.name)
            {
                context
                    .metrics
                    .failover_took(labelled.saturating_duration_since(since));
            }
            tracing::info!(namespace, service, from = ?transition.from.as_ref().map(|p| &p.name), to = ?transition.to.as_ref().map(|p| &p.name), reason = transition.reason.label(), "master changed");
        }
        context
            .failures
            .lock()
            .expect("failures lock")
            .remove(namespace);
    }
    if let Some(error) = error {
        on_error(context, namespace, &error);
    }
}

/// Remembers when each Service's recorded master was first seen unfit (for the failover time).
fn track_unfit_masters(context: &Context, observed: &ObservedNamespace) {
    let mut unfit = context.unfit_since.lock().expect("unfit lock");
    for service in observed.services.iter().filter(|s| s.enabled) {
        let key = (observed.namespace.clone(), service.name.clone());
        let Some(Ok(record)) = &service.record else {
            unfit.remove(&key);
            continue;
        };
        let Some(master) = &record.master else {
            unfit.remove(&key);
            continue;
        };
        let fit = observed
            .pods
            .iter()
            .find(|p| p.name == master.name && p.uid == master.uid)
            .is_some_and(|p| p.ineligible().is_none());
        if fit {
            unfit.remove(&key);
        } else {
            unfit
                .entry(key)
                .or_insert_with(|| (master.name.clone(), Instant::now()));
        }
    }
}

fn on_error(context: &Context, namespace: &str, error: &Error) {
    let attempt = {
        let mut failures = context.failures.lock().expect("failures lock");
        let attempt = failures.entry(namespace.to_string()).or_insert(0);
        *attempt += 1;
        *attempt
    };
    context.metrics.service_error(error.reason());
    // A compare-and-swap that lost (our view was a moment behind) is retried at once: the watch
    // event that makes the view current triggers it too.
    let delay = if error.reason() == "conflict" && attempt < 5 {
        NOT_READY_RETRY
    } else {
        backoff_delay(attempt)
    };
    tracing::warn!(namespace, %error, attempt, retry_in = ?delay, "active-standby reconcile failed");
    retry_later(context, namespace, delay);
}
