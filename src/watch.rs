//! `reconcile --watch`: the same reconcile as the one-shot pass, driven by watches instead of a
//! timer. Pods, Deployments and HSDs are cached (stripped of what the plan never reads); an HSD
//! is reconciled as soon as one of its pods, its Deployment or its spec changes, when an HTTP
//! probe's answer changes, and on a periodic resync. Only the holder of a Lease reconciles.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::DynamicObject;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use kube_lease_manager::LeaseManagerBuilder;
use tokio_util::sync::CancellationToken;

use crate::crd::ProbeMode;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::observe::{self, LeanDeployment, LeanPod, Scope};
use crate::plan::{ObservedDeployment, ProbeOutcome};
use crate::probe::Prober;

pub const DEFAULT_LEASE_NAME: &str = "kubectl-hsd";
/// How long running reconciles may go on after a shutdown or a lost lease.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

#[derive(Clone, Debug)]
pub struct WatchOptions {
    pub scope: Scope,
    pub metrics_addr: Option<SocketAddr>,
    pub leader_elect: bool,
    pub lease_name: String,
    pub lease_namespace: String,
    pub lease_duration: Duration,
    pub identity: String,
    pub resync: Duration,
    pub probe_concurrency: usize,
}

/// The lease namespace a scope uses unless told otherwise: the watched namespace itself (so a
/// namespace-scoped install needs no cluster-wide rights), else the operator's namespace.
pub fn default_lease_namespace(scope: &Scope) -> String {
    match scope {
        Scope::Namespace(ns) => ns.clone(),
        Scope::All => std::env::var("POD_NAMESPACE")
            .unwrap_or_else(|_| crate::manifests::DEFAULT_OPERATOR_NAMESPACE.to_string()),
    }
}

pub fn default_identity() -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "kubectl-hsd".to_string());
    format!("{host}-{}", std::process::id())
}

/// Runs until `shutdown` is cancelled: serves metrics, takes part in leader election, and
/// reconciles while leading. Releases the lease on the way out.
pub async fn run(client: Client, options: WatchOptions, shutdown: CancellationToken) -> Result<()> {
    let metrics = Arc::new(Metrics::new());
    let server = match options.metrics_addr {
        Some(addr) => {
            let (bound, task) = crate::metrics::serve(addr, metrics.clone(), shutdown.clone())
                .await
                .map_err(|e| Error::Invalid(format!("cannot serve metrics on {addr}: {e}")))?;
            tracing::info!(%bound, "serving /metrics, /healthz and /readyz");
            eprintln!("serving /metrics, /healthz and /readyz on {bound}");
            Some(task)
        }
        None => None,
    };

    if !options.leader_elect {
        metrics.set_leader(true);
        metrics.set_ready(true);
        run_controller(client, options.clone(), metrics.clone(), shutdown.clone()).await;
        if let Some(server) = server {
            let _ = server.await;
        }
        return Ok(());
    }

    let seconds = options.lease_duration.as_secs().max(2);
    let manager = LeaseManagerBuilder::new(client.clone(), &options.lease_name)
        .with_namespace(&options.lease_namespace)
        .with_identity(&options.identity)
        .with_duration(seconds)
        // Renew a third of the way before expiry.
        .with_grace((seconds / 3).max(1))
        .with_field_manager(format!("{}-lease", crate::execute::FIELD_MANAGER))
        .build()
        .await
        .map_err(|e| Error::Invalid(format!(
            "cannot use Lease {}/{}: {e}. The identity needs get, create and update on leases.coordination.k8s.io there",
            options.lease_namespace, options.lease_name
        )))?;
    let (mut leading, lease_task) = manager.watch().await;
    metrics.set_ready(true);
    eprintln!(
        "waiting for Lease {}/{} as {}",
        options.lease_namespace, options.lease_name, options.identity
    );
    loop {
        if *leading.borrow_and_update() {
            tracing::info!(identity = %options.identity, "leading: reconciling");
            eprintln!("leading: reconciling");
            metrics.set_leader(true);
            let stop = shutdown.child_token();
            let controller = tokio::spawn(run_controller(
                client.clone(),
                options.clone(),
                metrics.clone(),
                stop.clone(),
            ));
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = async { while leading.changed().await.is_ok() && *leading.borrow() {} } => {
                    tracing::warn!("lost the lease: stopping");
                    eprintln!("lost the lease: stopping");
                }
            }
            stop.cancel();
            let _ = controller.await;
            metrics.set_leader(false);
            if shutdown.is_cancelled() {
                break;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = leading.changed() => if changed.is_err() { break },
        }
    }
    // Closing the channel makes the lease manager release the lease.
    drop(leading);
    match tokio::time::timeout(Duration::from_secs(5), lease_task).await {
        Ok(Ok(Ok(_))) => eprintln!(
            "released Lease {}/{}",
            options.lease_namespace, options.lease_name
        ),
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "could not release the lease"),
        _ => tracing::warn!("the lease manager did not stop in time"),
    }
    if let Some(server) = server {
        let _ = server.await;
    }
    Ok(())
}

/// What this process wrote last per HSD, overlaid on the caches until they catch up, so that a
/// reconcile triggered before its own write comes back through the watch does not repeat it.
#[derive(Clone, Debug)]
struct OwnWrite {
    deployment: Option<(String, ObservedDeployment)>,
    status: Option<(String, crate::crd::HotStandbyDeploymentStatus)>,
}

struct Context {
    client: Client,
    pods: Store<LeanPod>,
    deployments: Store<LeanDeployment>,
    probes: Mutex<HashMap<String, (ProbeOutcome, Instant)>>,
    own_writes: Mutex<HashMap<(String, String), OwnWrite>>,
    failures: Mutex<HashMap<(String, String), u32>>,
    metrics: Arc<Metrics>,
    resync: Duration,
}

/// Whether the cached object (at `cached`) is older than our write (at `written`).
fn cache_is_behind(cached: Option<&str>, written: &str) -> bool {
    match (
        cached.and_then(|c| c.parse::<u64>().ok()),
        written.parse::<u64>().ok(),
    ) {
        (Some(cached), Some(written)) => cached < written,
        _ => cached != Some(written),
    }
}

fn strip_meta(meta: &mut kube::api::ObjectMeta) {
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

async fn run_controller(
    client: Client,
    options: WatchOptions,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let scope = &options.scope;
    let pod_resource = observe::pod_resource();
    let deployment_resource = observe::deployment_resource();
    let hsd_resource = observe::hsd_resource();
    let pod_api: Api<LeanPod> = match scope {
        Scope::Namespace(ns) => Api::namespaced_with(client.clone(), ns, &pod_resource),
        Scope::All => Api::all_with(client.clone(), &pod_resource),
    };
    let deployment_api: Api<LeanDeployment> = match scope {
        Scope::Namespace(ns) => Api::namespaced_with(client.clone(), ns, &deployment_resource),
        Scope::All => Api::all_with(client.clone(), &deployment_resource),
    };
    let hsd_api: Api<DynamicObject> = match scope {
        Scope::Namespace(ns) => Api::namespaced_with(client.clone(), ns, &hsd_resource),
        Scope::All => Api::all_with(client.clone(), &hsd_resource),
    };

    let pod_writer = Writer::new(pod_resource.clone());
    let pods = pod_writer.as_reader();
    let pod_stream = watcher(pod_api, watcher::Config::default())
        .backoff(watch_backoff())
        .modify(|pod: &mut LeanPod| strip_meta(&mut pod.metadata))
        .reflect(pod_writer)
        .touched_objects();
    let deployment_writer = Writer::new(deployment_resource.clone());
    let deployments = deployment_writer.as_reader();
    let deployment_stream = watcher(deployment_api, watcher::Config::default())
        .backoff(watch_backoff())
        .modify(|d: &mut LeanDeployment| strip_meta(&mut d.metadata))
        .reflect(deployment_writer)
        .touched_objects();

    let controller =
        Controller::new_with(hsd_api, watcher::Config::default(), hsd_resource.clone())
            .with_config(ControllerConfig::default().concurrency(16))
            .trigger_backoff(watch_backoff());
    let hsds = controller.store();
    let (probe_trigger, probe_triggers) =
        tokio::sync::mpsc::unbounded_channel::<ObjectRef<DynamicObject>>();

    let context = Arc::new(Context {
        client: client.clone(),
        pods: pods.clone(),
        deployments,
        probes: Mutex::new(HashMap::new()),
        own_writes: Mutex::new(HashMap::new()),
        failures: Mutex::new(HashMap::new()),
        metrics: metrics.clone(),
        resync: options.resync,
    });

    let mapper_hsds = hsds.clone();
    let hsd_resource_for_map = hsd_resource.clone();
    let pruner_task = tokio::spawn(prune_loop(hsds.clone(), context.clone(), stop.clone()));
    let prober_task = tokio::spawn(probe_loop(
        hsds.clone(),
        pods.clone(),
        context.clone(),
        probe_trigger,
        options.probe_concurrency,
        stop.clone(),
    ));
    let stop_for_controller = stop.clone();
    let running = controller
        .watches_stream_with(
            pod_stream,
            move |pod: LeanPod| {
                // The HSDs whose selector takes this pod.
                mapper_hsds
                    .state()
                    .into_iter()
                    .filter(|hsd| observe::raw_hsd_selects(hsd, &pod))
                    .map(|hsd| {
                        ObjectRef::new_with(&hsd.name_any(), hsd_resource_for_map.clone())
                            .within(&hsd.namespace().unwrap_or_default())
                    })
                    .collect::<Vec<_>>()
            },
            pod_resource,
        )
        .owns_stream_with(deployment_stream, deployment_resource)
        .reconcile_on(tokio_stream_from(probe_triggers))
        .graceful_shutdown_on(async move { stop_for_controller.cancelled().await })
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "controller");
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

/// Re-watch backoff: short, so that a watcher is back within seconds of an API server's return
/// (the default grows to 30 s during an outage, which then delays the first reaction after it).
fn watch_backoff() -> kube::runtime::watcher::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(3))
        .with_jitter()
        .without_max_times()
        .into()
}

fn tokio_stream_from<T: Send + 'static>(
    mut receiver: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

async fn reconcile(
    object: Arc<DynamicObject>,
    context: Arc<Context>,
) -> std::result::Result<Action, Error> {
    let started = Instant::now();
    let key = (object.namespace().unwrap_or_default(), object.name_any());
    let mut hsd = observe::hsd_facts(&object);
    if object.metadata.deletion_timestamp.is_some() {
        context.metrics.forget(&key.0, &key.1);
        return Ok(Action::await_change());
    }
    let workload = crate::crd::workload_name(&hsd.name);
    let deployment = context.deployments.get(
        &ObjectRef::new_with(&workload, observe::deployment_resource()).within(&hsd.namespace),
    );
    hsd.deployment = deployment
        .as_ref()
        .map(|d| observe::deployment_facts(d, &hsd.uid));
    let pods: Vec<Arc<LeanPod>> = context
        .pods
        .state()
        .into_iter()
        .filter(|pod| observe::hsd_selects(&hsd, pod))
        .collect();
    {
        let probes = context.probes.lock().expect("probe results lock");
        hsd.pods = observe::pods_facts(&hsd, pods.iter().map(|p| p.as_ref()), |pod| {
            pod.uid()
                .and_then(|uid| probes.get(&uid).map(|(outcome, _)| outcome.clone()))
        });
    }
    // Our own last writes win over caches that have not seen them yet.
    if let Some(own) = context
        .own_writes
        .lock()
        .expect("own writes lock")
        .get(&key)
        .cloned()
    {
        if let Some((version, written)) = own.deployment {
            let cached_version = deployment
                .as_ref()
                .and_then(|d| d.metadata.resource_version.clone());
            if cache_is_behind(cached_version.as_deref(), &version) {
                hsd.deployment = Some(written);
            }
        }
        if let Some((version, status)) = own.status
            && cache_is_behind(object.metadata.resource_version.as_deref(), &version)
        {
            hsd.status = Some(status);
        }
    }

    let (plan, result) = crate::reconcile::reconcile_hsd(&context.client, &hsd, false).await;
    let error_reason = result.as_ref().err().map(Error::reason);
    context.metrics.reconciled(started.elapsed(), error_reason);
    let written = result?;
    context.failures.lock().expect("failures lock").remove(&key);
    context.metrics.set_status(&key.0, &key.1, &plan.status);
    if written.deployment || written.status {
        let mut own_writes = context.own_writes.lock().expect("own writes lock");
        let entry = own_writes.entry(key).or_insert(OwnWrite {
            deployment: None,
            status: None,
        });
        if let (
            Some(version),
            crate::plan::DeploymentAction::Apply {
                replicas,
                template_hash,
            },
        ) = (written.deployment_version, &plan.deployment)
        {
            entry.deployment = Some((
                version,
                ObservedDeployment {
                    owned: true,
                    replicas: Some(*replicas),
                    template_hash: Some(template_hash.clone()),
                    applied_replicas: Some(*replicas),
                },
            ));
        }
        if let Some(version) = written.status_version {
            entry.status = Some((version, plan.status.clone()));
        }
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
    tracing::warn!(namespace = %key.0, name = %key.1, %error, attempt, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Exponential backoff with jitter: 0.5 s doubling to 60 s, each delay randomized by up to half.
fn backoff_delay(attempt: u32) -> Duration {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(60))
        .with_jitter()
        .without_max_times()
        .build()
        .nth(attempt.saturating_sub(1) as usize)
        .unwrap_or(Duration::from_secs(60))
}

/// Probes each ready pod of HTTP-mode HSDs every `periodSeconds`; a changed answer triggers a
/// reconcile of the HSD at once.
async fn probe_loop(
    hsds: Store<DynamicObject>,
    pods: Store<LeanPod>,
    context: Arc<Context>,
    trigger: tokio::sync::mpsc::UnboundedSender<ObjectRef<DynamicObject>>,
    concurrency: usize,
    stop: CancellationToken,
) {
    let prober = Prober::new(concurrency);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let mut due = Vec::new();
        let all_pods = pods.state();
        for object in hsds.state() {
            // Most HSDs are in annotation mode: skip them without reading the whole spec.
            if object
                .data
                .pointer("/spec/busyProbe/mode")
                .and_then(|m| m.as_str())
                != Some("http")
            {
                continue;
            }
            let hsd = observe::hsd_facts(&object);
            let Ok(spec) = &hsd.spec else { continue };
            if spec.busy_probe.mode != ProbeMode::Http {
                continue;
            }
            let period = Duration::from_secs(
                u64::try_from(spec.busy_probe.http.period_seconds.max(1)).unwrap_or(10),
            );
            let hsd_ref =
                ObjectRef::new_with(&hsd.name, observe::hsd_resource()).within(&hsd.namespace);
            let probes = context.probes.lock().expect("probe results lock");
            for pod in all_pods
                .iter()
                .filter(|pod| observe::hsd_selects(&hsd, pod))
            {
                let (Some(target), Some(uid)) = (observe::probe_target(pod, spec), pod.uid())
                else {
                    continue;
                };
                let fresh = probes
                    .get(&uid)
                    .is_some_and(|(_, at)| now.duration_since(*at) < period);
                if !fresh {
                    due.push(((uid, hsd_ref.clone()), target));
                }
            }
        }
        if due.is_empty() {
            continue;
        }
        let results = prober.probe_all(due).await;
        let mut changed = Vec::new();
        {
            let mut probes = context.probes.lock().expect("probe results lock");
            let live: std::collections::HashSet<String> =
                all_pods.iter().filter_map(|p| p.uid()).collect();
            probes.retain(|uid, _| live.contains(uid));
            for ((uid, hsd_ref), result) in results {
                context.metrics.probed(&result.outcome, result.latency);
                let previous = probes.insert(uid, (result.outcome.clone(), Instant::now()));
                if previous.map(|(outcome, _)| outcome) != Some(result.outcome)
                    && !changed.contains(&hsd_ref)
                {
                    changed.push(hsd_ref);
                }
            }
        }
        for hsd_ref in changed {
            let _ = trigger.send(hsd_ref);
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

/// The holder of the Lease if it is held and not expired. Anything that prevents reading it
/// (absent, no permission) means no live holder is known.
pub async fn live_holder(client: &Client, namespace: &str, name: &str) -> Option<String> {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), namespace);
    let lease = match leases.get_opt(name).await {
        Ok(lease) => lease?,
        Err(error) => {
            tracing::info!(%error, namespace, name, "cannot read the lease; assuming no watcher");
            return None;
        }
    };
    let spec = lease.spec?;
    let holder = spec.holder_identity.filter(|h| !h.is_empty())?;
    let renewed = spec.renew_time.or(spec.acquire_time)?.0;
    let duration =
        jiff::SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    (renewed + duration > jiff::Timestamp::now()).then_some(holder)
}

/// Forgets what belonged to deleted HSDs (their metric series above all: a gauge of an HSD that
/// no longer exists would be a false number) every few seconds.
async fn prune_loop(hsds: Store<DynamicObject>, context: Arc<Context>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            ready = hsds.wait_until_ready() => if ready.is_err() { return },
        }
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
            .filter(|key| !live.contains(*key))
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
