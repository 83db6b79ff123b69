//! `reconcile --watch`: the same reconcile as the one-shot pass, driven by watches instead of a
//! timer. Pods, Deployments and HSDs are cached (stripped of what the plan never reads); an HSD
//! is reconciled as soon as one of its pods, its Deployment or its spec changes, when an HTTP
//! probe's answer changes, and on a periodic resync. Only the holder of a Lease reconciles, and
//! only from a complete view: nothing is decided until all three caches are synced (at start,
//! after every lease acquisition and after every relist). Beside the HSD controller ([`hsd`])
//! runs the active-standby Service controller ([`services`]), under the same Lease and fence.

mod cache;
mod cached;
mod hsd;
mod hsj;
mod lease;
mod pace;
mod probes;
mod services;
pub mod shards;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kube::{Api, Client, Config};
use tokio_util::sync::CancellationToken;

pub use lease::{Fence, renew_deadline};
pub use probes::Answers;
pub use shards::Shard;

use crate::client::ClientHooks;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::observe::Scope;

pub const DEFAULT_LEASE_NAME: &str = "kubectl-hsd";
/// How long running reconciles may go on after a shutdown or a lost lease.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How often the leader checks that its lease is still fresh.
const FENCE_CHECK: Duration = Duration::from_millis(100);
/// Retry delay of a reconcile that found the caches not synced yet.
pub(crate) const UNSYNCED_RETRY: Duration = Duration::from_millis(500);

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
    /// HTTP probes in flight at once, per HSD.
    pub probe_concurrency: usize,
    /// Shards of the HSDs (and HSJs), each on its own Lease (1: no sharding).
    pub shards: u32,
    /// Exec probes in flight at once, per HSD or HSJ.
    pub exec_probe_concurrency: usize,
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
pub async fn run(config: Config, options: WatchOptions, shutdown: CancellationToken) -> Result<()> {
    let metrics = Arc::new(Metrics::new());
    // Without leader election the process writes alone, always; with it, each shard's fence
    // (in `shards`) gates that shard's writes.
    let (client, _) = crate::client::client_with(
        config.clone(),
        ClientHooks {
            on_write: Some({
                let metrics = metrics.clone();
                Arc::new(move |sent| metrics.write(sent))
            }),
            ..ClientHooks::default()
        },
    )?;
    let server = match options.metrics_addr {
        Some(addr) => {
            let (bound, task) = crate::metrics::serve(addr, metrics.clone(), shutdown.clone())
                .await
                .map_err(|e| Error::Invalid(format!("cannot serve metrics on {addr}: {e}")))?;
            crate::notice!(addr = %bound, "serving /metrics, /healthz and /readyz on {bound}");
            Some(task)
        }
        None => None,
    };

    if !options.leader_elect {
        metrics.set_leader(true);
        metrics.set_ready(true);
        run_kinds(
            client,
            options.clone(),
            Shard::all(),
            metrics.clone(),
            shutdown.clone(),
        )
        .await;
        if let Some(server) = server {
            let _ = server.await;
        }
        return Ok(());
    }

    let run_shard = {
        let options = options.clone();
        let metrics = metrics.clone();
        move |client: Client, shard: Shard, stop: CancellationToken| {
            run_kinds(client, options.clone(), shard, metrics.clone(), stop)
        }
    };
    shards::supervise(config, options, metrics, shutdown, run_shard).await?;
    if let Some(server) = server {
        let _ = tokio::time::timeout(Duration::from_secs(1), server).await;
    }
    Ok(())
}

/// Runs the controller of every kind while this process leads, until `stop`. A new kind of
/// controller adds one line here (and its module beside `hsd`).
async fn run_kinds(
    client: Client,
    options: WatchOptions,
    shard: Shard,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    // Active-standby Services are not sharded: their controller runs beside shard 0 only, under
    // that shard's Lease (the group's plain name) and fence, so one replica elects at a time.
    // Its Service cache tells shard 0's HSD controller which HSDs hold a master's place; other
    // shards see an empty cache (a master is still busy there by its label).
    let services = services::ServiceCache::default();
    if shard.index == 0 {
        tokio::join!(
            hsd::run(
                client.clone(),
                options.clone(),
                shard,
                metrics.clone(),
                stop.clone(),
                services.clone(),
            ),
            hsj::run(
                client.clone(),
                options.clone(),
                shard,
                metrics.clone(),
                stop.clone()
            ),
            services::run(client, options, metrics, stop, services),
        );
    } else {
        tokio::join!(
            hsd::run(
                client.clone(),
                options.clone(),
                shard,
                metrics.clone(),
                stop.clone(),
                services,
            ),
            hsj::run(client, options, shard, metrics, stop),
        );
    }
}

/// Whether the cached object (at `cached`) is older than our write (at `written`).
pub(crate) fn cache_is_behind(cached: Option<&str>, written: &str) -> bool {
    match (
        cached.and_then(|c| c.parse::<u64>().ok()),
        written.parse::<u64>().ok(),
    ) {
        (Some(cached), Some(written)) => cached < written,
        _ => cached != Some(written),
    }
}

/// A cached pod keeps what the plans read of its conditions (Ready's status and time; an unschedulable
/// PodScheduled with its reason and time) and nothing else: at 20,000 pods the rest costs
/// about 8 MB.
pub(crate) fn lean_pod(pod: &mut crate::observe::LeanPod) {
    strip_meta(&mut pod.metadata);
    pod.metadata.generate_name = None;
    if let Some(status) = pod.status.as_mut() {
        status.conditions.retain_mut(|c| match c.type_.as_str() {
            "Ready" => {
                c.reason = None;
                true
            }
            "PodScheduled" => c.status == "False",
            _ => false,
        });
    }
}

/// A pod of an HSD, cached: as [`lean_pod`], and of its owners only an HSD that adopted it
/// (a detached pod), the one owner its plan reads.
pub(crate) fn lean_hsd_pod(pod: &mut crate::observe::LeanPod) {
    lean_pod(pod);
    if let Some(owners) = pod.metadata.owner_references.as_mut() {
        owners.retain(|owner| owner.kind == "HotStandbyDeployment");
    }
}

/// What no cache needs: `managedFields` (in an HSD, 84 of its 102 JSON objects) and the
/// last-applied annotation.
/// A cached Deployment keeps, of its managed fields, only who owns `spec.replicas` (what
/// [`crate::observe::replicas_writer`] reads).
pub(crate) fn lean_deployment_meta(meta: &mut kube::api::ObjectMeta) {
    let replicas_owners: Option<Vec<_>> = meta.managed_fields.take().map(|entries| {
        entries
            .into_iter()
            .filter(crate::observe::owns_replicas)
            .map(|entry| {
                crate::observe::replicas_owner_entry(
                    entry.manager,
                    entry.operation,
                    entry.fields_type,
                )
            })
            .collect()
    });
    strip_meta(meta);
    meta.managed_fields = replicas_owners;
}

pub(crate) fn strip_meta(meta: &mut kube::api::ObjectMeta) {
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

pub(crate) fn scoped<K>(client: &Client, scope: &Scope, resource: &kube::api::ApiResource) -> Api<K>
where
    K: kube::Resource<
            DynamicType = kube::api::ApiResource,
            Scope = kube::core::DynamicResourceScope,
        >,
{
    match scope {
        Scope::Namespace(ns) => Api::namespaced_with(client.clone(), ns, resource),
        Scope::All => Api::all_with(client.clone(), resource),
    }
}

/// Re-watch backoff: short, so that a watcher is back within seconds of an API server's return
/// (the default grows to 30 s during an outage, which then delays the first reaction after it).
pub(crate) fn watch_backoff() -> kube::runtime::watcher::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(3))
        .with_jitter()
        .without_max_times()
        .into()
}

pub(crate) fn receiver_stream<T: Send + 'static>(
    mut receiver: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

/// Exponential backoff with jitter: 0.5 s doubling to 60 s, each delay randomized by up to half.
pub(crate) fn backoff_delay(attempt: u32) -> Duration {
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

/// The holder of the Lease if it is held and not expired; `None` when it is absent, free or
/// expired. An error (no permission, API server unreachable) is returned as one: a one-shot
/// pass that cannot tell whether a watcher is leading must not run beside it (fail closed).
pub async fn live_holder(client: &Client, namespace: &str, name: &str) -> Result<Option<String>> {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), namespace);
    let Some(lease) = leases
        .get_opt(name)
        .await
        .map_err(crate::error::kube_error(
            format!("reading Lease {namespace}/{name} (to stand aside while a watcher leads)"),
            "get",
            "leases.coordination.k8s.io",
            Some(namespace),
        ))?
    else {
        return Ok(None);
    };
    let Some(spec) = lease.spec else {
        return Ok(None);
    };
    let Some(holder) = spec.holder_identity.filter(|h| !h.is_empty()) else {
        return Ok(None);
    };
    let Some(renewed) = spec.renew_time.or(spec.acquire_time) else {
        return Ok(None);
    };
    let duration =
        jiff::SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    Ok((renewed.0 + duration > jiff::Timestamp::now()).then_some(holder))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::LeanPod;

    fn pod(conditions: serde_json::Value, owners: &[&str]) -> LeanPod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "p", "namespace": "ns", "generateName": "p-",
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "a": "b"},
                "managedFields": [{"manager": "m", "operation": "Update"}],
                "ownerReferences": owners.iter().map(|kind| serde_json::json!({
                    "apiVersion": "v1", "kind": kind, "name": "o", "uid": "u", "controller": true
                })).collect::<Vec<_>>(),
            },
            "spec": {"nodeName": "n"},
            "status": {"phase": "Running", "conditions": conditions},
        }))
        .unwrap()
    }

    /// The cached pod still gives the plans the same facts, without what they never read.
    #[test]
    fn a_lean_pod_keeps_what_the_plans_read() {
        let conditions = serde_json::json!([
            {"type": "Initialized", "status": "True"},
            {"type": "Ready", "status": "True", "reason": "r", "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {"type": "ContainersReady", "status": "True"},
            {"type": "PodScheduled", "status": "True"},
        ]);
        let unschedulable = serde_json::json!([
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "lastTransitionTime": "2026-01-01T00:00:00Z"},
        ]);
        for (conditions, owners, hsd_pod) in [
            (conditions.clone(), vec!["ReplicaSet"], true),
            (conditions, vec!["HotStandbyDeployment"], true),
            (unschedulable.clone(), vec!["ReplicaSet"], false),
            (unschedulable, vec!["Job"], true),
        ] {
            let original = pod(conditions, &owners);
            let mut lean = original.clone();
            if hsd_pod {
                lean_hsd_pod(&mut lean);
            } else {
                lean_pod(&mut lean);
            }
            let facts = |p: &LeanPod| crate::observe::pod_facts(p, "paia.tech/busy");
            assert_eq!(facts(&lean), facts(&original), "{owners:?}");
            let lean_status = lean.status.as_ref().unwrap();
            assert!(
                lean_status
                    .conditions
                    .iter()
                    .all(|c| c.type_ == "Ready"
                        || (c.type_ == "PodScheduled" && c.status == "False")),
                "{:?}",
                lean_status.conditions
            );
            assert_eq!(lean.metadata.managed_fields, None);
            assert_eq!(lean.metadata.generate_name, None);
            assert_eq!(lean.metadata.annotations.as_ref().unwrap().len(), 1);
            let kept = lean.metadata.owner_references.unwrap_or_default().len();
            let expected = if hsd_pod {
                usize::from(owners == ["HotStandbyDeployment"])
            } else {
                1
            };
            assert_eq!(kept, expected, "{owners:?}");
        }
    }
}
