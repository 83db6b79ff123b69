//! Sharding: two replicas of `reconcile --watch -A --shards 2` (leader election on Leases of
//! their own, in `bench-leases`), each leading one shard; and the failover of one of them
//! (kill -9) while a busy flip waits in its shard.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use serde_json::{Value, json};

use kubectl_hsd::labels::bucket;

use crate::Bench;
use crate::deployments::DeploymentWatch;
use crate::populate::{Layout, PODS_PER_HSD, create_namespaces, set_busy};
use crate::product::{Watcher, count_series};
use crate::util::{Res, load_average, round, say};

/// Where the benchmark's watcher groups keep their Leases.
pub const LEASE_NAMESPACE: &str = "bench-leases";
/// The replicas' `--lease-duration` (the product's default).
pub const LEASE_SECONDS: u64 = 15;
const SHARDS: u32 = 2;
const IDENTITIES: [&str; 2] = ["bench-replica-a", "bench-replica-b"];

/// Each pair gets Leases of its own: what a killed replica left behind never counts.
static PAIRS: AtomicUsize = AtomicUsize::new(0);

/// Two sharded replicas.
pub struct Pair {
    pub watchers: Vec<Watcher>,
    pub lease: String,
}

impl Pair {
    /// The shard of the layout's HSD `h`, as the product computes it.
    pub fn shard_of(layout: &Layout, h: usize) -> u32 {
        bucket(&layout.namespace(h), &Layout::name(h)) % SHARDS
    }

    /// Starts both replicas at once and waits until each leads one shard and has reconciled its
    /// shard's HSDs from synced caches (its `hsd_cached_pods` for the shard is the shard's pod
    /// count, and it has a `hsd_desired_replicas` series for each of the shard's HSDs).
    pub async fn start(bench: &Bench<'_>, tag: &str, total_hsds: usize) -> Res<Self> {
        create_namespaces(&bench.client, &[LEASE_NAMESPACE.to_string()]).await?;
        let lease = format!("bench-{tag}-{}", PAIRS.fetch_add(1, Ordering::SeqCst));
        let duration = format!("{LEASE_SECONDS}s");
        let mut watchers = Vec::new();
        for identity in IDENTITIES {
            let args = [
                "--shards",
                "2",
                "--lease-name",
                &lease,
                "--lease-namespace",
                LEASE_NAMESPACE,
                "--lease-duration",
                &duration,
                "--identity",
                identity,
            ];
            watchers.push(
                bench
                    .product
                    .start_watcher_with(&format!("{tag}-{identity}"), &args)
                    .await?,
            );
        }
        let mut pair = Self { watchers, lease };
        let mut hsds_in = [0usize; SHARDS as usize];
        for h in 0..total_hsds {
            hsds_in[Self::shard_of(&bench.layout, h) as usize] += 1;
        }
        let started = Instant::now();
        let timeout = Duration::from_secs(300) + Duration::from_millis(30) * total_hsds as u32;
        loop {
            for watcher in &mut pair.watchers {
                watcher.alive()?;
            }
            let leaders = pair.leaders(&bench.client).await.unwrap_or_default();
            let mut ready = leaders.len() == SHARDS as usize;
            let mut state = Vec::new();
            for watcher in &pair.watchers {
                let text = watcher
                    .get("/metrics")
                    .await
                    .map(|(_, t)| t)
                    .unwrap_or_default();
                let led = crate::product::metric_sum(&text, "hsd_shards_led");
                let shard = leaders
                    .iter()
                    .find(|(_, who)| Some(*who) == watcher.identity.as_ref())
                    .map(|(shard, _)| *shard);
                let cached = shard.map(|s| shard_metric(&text, "hsd_cached_pods", s));
                let decided = count_series(&text, "hsd_desired_replicas");
                ready &= led == 1.0
                    && shard.is_some_and(|s| {
                        cached == Some(hsds_in[s as usize] * PODS_PER_HSD)
                            && decided >= hsds_in[s as usize]
                    });
                state.push(format!(
                    "{}: leads {led}, shard {shard:?}, cached {cached:?}, decided {decided}",
                    watcher.identity.as_deref().unwrap_or("?")
                ));
            }
            if ready {
                say(format!(
                    "sharded pair ready in {:.1}s ({})",
                    started.elapsed().as_secs_f64(),
                    state.join("; ")
                ));
                return Ok(pair);
            }
            if started.elapsed() > timeout {
                let logs: Vec<String> = pair
                    .watchers
                    .iter()
                    .map(|w| crate::product::tail(&w.log_text(), 8))
                    .collect();
                pair.stop().await;
                return Err(format!(
                    "the sharded pair was not ready within {timeout:?}: {}\n{}",
                    state.join("; "),
                    logs.join("\n--\n")
                ));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// The live holder of each shard's Lease (shard 0's is the plain lease name).
    pub async fn leaders(&self, client: &kube::Client) -> Res<HashMap<u32, String>> {
        let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
        let mut leaders = HashMap::new();
        for shard in 0..SHARDS {
            let name = if shard == 0 {
                self.lease.clone()
            } else {
                format!("{}-shard-{shard}", self.lease)
            };
            let lease = leases
                .get_opt(&name)
                .await
                .map_err(|e| format!("reading Lease {name}: {e}"))?;
            let Some(spec) = lease.and_then(|l| l.spec) else {
                continue;
            };
            let live = spec
                .renew_time
                .as_ref()
                .or(spec.acquire_time.as_ref())
                .is_some_and(|at| {
                    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
                    at.0 + jiff::SignedDuration::from_secs(duration) > jiff::Timestamp::now()
                });
            if let Some(holder) = spec.holder_identity.filter(|h| !h.is_empty() && live) {
                leaders.insert(shard, holder);
            }
        }
        Ok(leaders)
    }

    pub async fn stop(self) {
        futures::future::join_all(self.watchers.into_iter().map(Watcher::stop)).await;
    }
}

/// The value of a metric's series for one shard (`{shard="N"}`).
fn shard_metric(text: &str, name: &str, shard: u32) -> usize {
    let label = format!("shard=\"{shard}\"");
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .map(|v| v as usize)
        .next_back()
        .unwrap_or(0)
}

/// Failover of a sharded replica: with both replicas steady, kill -9 the one leading shard 1
/// and at once flip a pod of an HSD in that shard busy; measure until the survivor leads both
/// shards, and until the flip is acted on (the benchmark's Deployment watch sees 20 -> 21).
pub async fn failover(
    bench: &Bench<'_>,
    deployments: &mut DeploymentWatch,
    total_hsds: usize,
) -> Res<Value> {
    let pods = total_hsds * PODS_PER_HSD;
    say(format!(
        "failover of a sharded replica at {pods} pods ({total_hsds} HSDs, lease {LEASE_SECONDS}s)"
    ));
    bench.converge().await?;
    let load = load_average();
    let pair = Pair::start(bench, "failover", total_hsds).await?;
    let leaders = pair.leaders(&bench.client).await?;
    let victim_identity = leaders.get(&1).cloned().ok_or("no replica leads shard 1")?;
    let h = (0..total_hsds)
        .find(|h| Pair::shard_of(&bench.layout, *h) == 1)
        .ok_or("no HSD in shard 1")?;
    let (namespace, app, workload) = (
        bench.layout.namespace(h),
        Layout::name(h),
        Layout::workload(h),
    );
    let pod = bench
        .tracker
        .pods_of(&namespace, &app)
        .into_iter()
        .find(|p| p.ready && !p.busy)
        .ok_or_else(|| format!("no ready idle pod of {namespace}/{app}"))?;
    bench.settle().await?;
    let (victims, mut survivors): (Vec<Watcher>, Vec<Watcher>) = pair
        .watchers
        .into_iter()
        .partition(|w| w.identity.as_deref() == Some(victim_identity.as_str()));
    let survivor = survivors.pop().ok_or("no survivor")?;
    deployments.drain();
    let killed = Instant::now();
    for victim in victims {
        victim.kill().await;
    }
    set_busy(&bench.client, &namespace, &pod.name, true).await?;
    let flipped = killed.elapsed();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(LEASE_SECONDS + 180);
    let mut taken: Option<Duration> = None;
    let mut acted: Option<Duration> = None;
    // The survivor's shards are polled every 200 ms (the resolution of `shard_taken`); the flip's
    // write is stamped when the Deployment watch delivers it.
    loop {
        let now = tokio::time::Instant::now();
        if (taken.is_some() && acted.is_some()) || now >= deadline {
            break;
        }
        if taken.is_none()
            && survivor
                .metric_sum("hsd_shards_led")
                .await
                .is_ok_and(|led| led >= 2.0)
        {
            taken = Some(killed.elapsed());
        }
        let until = (now + Duration::from_millis(200)).min(deadline);
        if acted.is_some() {
            tokio::time::sleep_until(until).await;
            continue;
        }
        while let Some(change) = deployments.next_change(until).await {
            if change.namespace == namespace
                && change.name == workload
                && change.replicas == PODS_PER_HSD as i32 + 1
            {
                acted = Some(change.at.saturating_duration_since(killed));
                break;
            }
        }
    }
    let log = crate::product::tail(&survivor.log_text(), 10);
    survivor.stop().await;
    set_busy(&bench.client, &namespace, &pod.name, false).await?;
    bench.converge().await?;
    deployments
        .wait_all(
            &bench.layout,
            total_hsds,
            PODS_PER_HSD as i32,
            Duration::from_secs(120),
        )
        .await?;
    let (Some(taken), Some(acted)) = (taken, acted) else {
        return Err(format!(
            "failover: the survivor took the shard after {taken:?}, acted on the flip after {acted:?} (within {}s):\n{log}",
            LEASE_SECONDS + 180
        ));
    };
    let value = json!({
        "pods": pods,
        "hsds": total_hsds,
        "shards": SHARDS,
        "lease_seconds": LEASE_SECONDS,
        "killed_shard": 1,
        "flip_sent_after_ms": round(flipped.as_secs_f64() * 1000.0, 1),
        "shard_taken_seconds": round(taken.as_secs_f64(), 2),
        "acted_seconds": round(acted.as_secs_f64(), 2),
        "goal_seconds": LEASE_SECONDS + 5,
        "load": load,
    });
    say(format!(
        "failover: the survivor led the dead replica's shard after {:.1}s and acted on the flip after {:.1}s (lease {LEASE_SECONDS}s)",
        taken.as_secs_f64(),
        acted.as_secs_f64()
    ));
    Ok(value)
}
