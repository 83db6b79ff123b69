//! Sharding on Kubernetes' own primitives: `--shards N` splits the HSDs into N shards by a
//! stable hash into the fixed buckets every child pod carries (`paia.tech/bucket`), shard `i`
//! being the buckets `b` with `b % N == i`. Each shard has its own Lease (shard 0's is the
//! plain `--lease-name`, so one-shot passes stand aside as before), its own write fence, and its
//! own label-filtered caches. Each replica keeps a member Lease of its own alive, and holds at
//! most `ceil(N / live members)` shard Leases: it takes free or expired ones while below that,
//! and releases extras when more members join. When a replica dies, its shard Leases expire and
//! the others take them; a shard's controller decides nothing before its caches are synced.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, Config, ResourceExt};
use kube_lease_manager::LeaseManagerBuilder;
use tokio_util::sync::CancellationToken;

use super::lease::{Fence, renew_grace_seconds};
use super::{FENCE_CHECK, WatchOptions};
use crate::client::ClientHooks;
use crate::error::{Error, Result};
use crate::labels::{BUCKET_LABEL, BUCKETS, HSD_LABEL, bucket};
use crate::metrics::Metrics;

/// The label on every shard and member Lease of one watcher group (value: `--lease-name`).
pub const LEASE_GROUP_LABEL: &str = "paia.tech/lease-group";
/// How often a member checks the group (members, free shards).
const REBALANCE_EVERY: Duration = Duration::from_secs(1);

/// One shard of `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// Everything (no sharding).
    pub fn all() -> Self {
        Self { index: 0, count: 1 }
    }

    pub fn is_everything(&self) -> bool {
        self.count <= 1
    }

    /// The buckets of this shard.
    pub fn buckets(&self) -> Vec<u32> {
        (0..BUCKETS)
            .filter(|b| b % self.count.max(1) == self.index)
            .collect()
    }

    /// Whether the HSD `namespace/name` is in this shard.
    pub fn contains(&self, namespace: &str, name: &str) -> bool {
        self.is_everything() || bucket(namespace, name) % self.count == self.index
    }

    /// The label selector of what this shard's HSDs made: pods and Deployments with the HSD
    /// label, and with one of the shard's buckets.
    pub fn owned_selector(&self) -> String {
        if self.is_everything() {
            return HSD_LABEL.to_string();
        }
        let buckets: Vec<String> = self.buckets().iter().map(u32::to_string).collect();
        format!("{HSD_LABEL},{BUCKET_LABEL} in ({})", buckets.join(","))
    }

    /// The Lease of this shard: shard 0 keeps the group's plain name.
    pub fn lease_name(&self, base: &str) -> String {
        if self.index == 0 {
            base.to_string()
        } else {
            format!("{base}-shard-{}", self.index)
        }
    }
}

/// How many shards a replica should hold.
pub fn fair_share(shards: u32, members: usize) -> usize {
    (shards as usize).div_ceil(members.max(1))
}

/// The state of one shard in this replica.
struct Slot {
    shard: Shard,
    fence: Arc<Fence>,
    /// The lease manager while this replica contends for, or holds, the shard.
    manager: Option<Contender>,
    /// The shard's controllers while the fence is open.
    running: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
}

struct Contender {
    leading: tokio::sync::watch::Receiver<bool>,
    task: tokio::task::JoinHandle<
        std::result::Result<
            kube_lease_manager::LeaseManager,
            kube_lease_manager::LeaseManagerError,
        >,
    >,
}

fn field_manager(options: &WatchOptions) -> String {
    format!(
        "{}-lease-{}",
        crate::execute::FIELD_MANAGER,
        options.identity
    )
}

async fn contend(config: &Config, options: &WatchOptions, slot: &Slot) -> Result<Contender> {
    let name = slot.shard.lease_name(&options.lease_name);
    // The lease client reports each successful write to this shard's Lease to its fence: the
    // renew deadline runs from when the last renewal was sent.
    let (lease_client, _) = crate::client::client_with(
        config.clone(),
        ClientHooks {
            on_success: Some(slot.fence.renewal_observer(&name)),
            ..ClientHooks::default()
        },
    )?;
    let manager = LeaseManagerBuilder::new(lease_client, &name)
        .with_namespace(&options.lease_namespace)
        .with_identity(&options.identity)
        .with_duration(options.lease_duration.as_secs().max(2))
        .with_grace(renew_grace_seconds(options.lease_duration))
        // One field manager per identity: server-side apply's conflict detection is what keeps
        // two replicas from taking a lease at once.
        .with_field_manager(field_manager(options))
        .build()
        .await
        .map_err(|e| Error::Invalid(format!(
            "cannot use Lease {}/{name}: {}. The identity needs get, create, update and patch on leases.coordination.k8s.io there",
            options.lease_namespace, crate::error::describe_error(&e)
        )))?;
    let (leading, task) = manager.watch().await;
    Ok(Contender { leading, task })
}

/// Stops contending (releasing the Lease if held), bounded: the API server may be gone.
async fn release(contender: Contender, lease: &str, namespace: &str) {
    drop(contender.leading);
    match tokio::time::timeout(Duration::from_secs(2), contender.task).await {
        Ok(Ok(Ok(_))) => crate::notice!("released Lease {namespace}/{lease}"),
        Ok(Ok(Err(e))) => {
            tracing::warn!(error = %crate::error::describe_error(&e), lease, "could not release the lease")
        }
        _ => tracing::warn!(lease, "the lease manager did not stop in time"),
    }
}

/// The group's Leases by name.
async fn group_leases(leases: &Api<Lease>, group: &str) -> Result<BTreeMap<String, Lease>> {
    let list = leases
        .list(&ListParams::default().labels(&format!("{LEASE_GROUP_LABEL}={group}")))
        .await
        .map_err(crate::error::kube_error(
            "listing the watcher group's Leases",
            "list",
            "leases.coordination.k8s.io",
            leases.namespace(),
        ))?;
    Ok(list
        .items
        .into_iter()
        .map(|lease| (lease.name_any(), lease))
        .collect())
}

/// Whether a Lease has a holder whose renewal has not expired.
fn live(lease: &Lease, now: Timestamp) -> bool {
    let Some(spec) = &lease.spec else {
        return false;
    };
    if spec.holder_identity.as_deref().is_none_or(str::is_empty) {
        return false;
    }
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return false;
    };
    let duration =
        jiff::SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    renewed.0 + duration > now
}

/// Renews this replica's member Lease, and makes sure the group label is on its shard Leases
/// (the lease manager creates them without it).
async fn heartbeat(leases: &Api<Lease>, options: &WatchOptions, member: &str, held: &[String]) {
    let params = PatchParams::apply(&field_manager(options)).force();
    let body = serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": member, "labels": {LEASE_GROUP_LABEL: options.lease_name, "paia.tech/lease-role": "member"}},
        "spec": {
            "holderIdentity": options.identity,
            "leaseDurationSeconds": options.lease_duration.as_secs().max(2),
            "renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(Timestamp::now()),
        },
    });
    if let Err(error) = leases.patch(member, &params, &Patch::Apply(&body)).await {
        tracing::warn!(%error, member, "could not renew the member lease");
    }
    for name in held {
        let label = serde_json::json!({"metadata": {"labels": {LEASE_GROUP_LABEL: options.lease_name, "paia.tech/lease-role": "shard"}}});
        let merge = PatchParams::default();
        if let Err(error) = leases.patch(name, &merge, &Patch::Merge(&label)).await {
            tracing::debug!(%error, name, "could not label a shard lease");
        }
    }
}

/// The member Lease's name for this replica.
fn member_lease_name(options: &WatchOptions) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(options.identity.as_bytes());
    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-member-{hex}", options.lease_name)
}

/// Takes part in the group: holds a fair share of the shards and runs each held shard's
/// controllers while its fence is open, until `shutdown`.
pub async fn supervise<F, Fut>(
    config: Config,
    options: WatchOptions,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    run_shard: F,
) -> Result<()>
where
    F: Fn(Client, Shard, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let count = options.shards.max(1);
    let mut slots: Vec<Slot> = (0..count)
        .map(|index| Slot {
            shard: Shard { index, count },
            fence: Fence::new(options.lease_duration),
            manager: None,
            running: None,
        })
        .collect();
    {
        let fences: Vec<Arc<Fence>> = slots.iter().map(|slot| slot.fence.clone()).collect();
        metrics.set_liveness(Box::new(move || {
            match fences.iter().position(|fence| fence.leader_in_name_only()) {
                Some(shard) => Err(format!(
                    "leader in name only of shard {shard}: its lease was not renewed within the renew deadline; it writes nothing"
                )),
                None => Ok(()),
            }
        }));
    }
    let (plain, _) = crate::client::counted_client(config.clone())?;
    let leases: Api<Lease> = Api::namespaced(plain, &options.lease_namespace);
    let member = member_lease_name(&options);
    metrics.set_ready(true);
    crate::notice!(
        "waiting for Lease {}/{} as {}{}",
        options.lease_namespace,
        options.lease_name,
        options.identity,
        if count > 1 {
            format!(" ({count} shards)")
        } else {
            String::new()
        }
    );
    let mut tick = tokio::time::interval(FENCE_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_rebalance: Option<Instant> = None;
    let heartbeat_every = options.lease_duration / 3;
    let mut last_heartbeat: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        // Fences and controllers follow the lease managers.
        for slot in &mut slots {
            if let Some(contender) = &mut slot.manager {
                slot.fence
                    .set_leading(*contender.leading.borrow_and_update());
            } else {
                slot.fence.set_leading(false);
            }
            let open = slot.fence.is_open();
            match (&slot.running, open) {
                (None, true) => {
                    let shard = slot.shard;
                    crate::notice!(
                        shard = shard.index,
                        "leading: reconciling{}",
                        if count > 1 {
                            format!(" shard {} of {count}", shard.index)
                        } else {
                            String::new()
                        }
                    );
                    let (client, _) = crate::client::client_with(
                        config.clone(),
                        ClientHooks {
                            write_gate: Some(slot.fence.write_gate()),
                            on_success: None,
                            on_write: Some({
                                let metrics = metrics.clone();
                                Arc::new(move |sent| metrics.write(sent))
                            }),
                        },
                    )?;
                    let stop = shutdown.child_token();
                    let task = tokio::spawn(run_shard(client, shard, stop.clone()));
                    slot.running = Some((stop, task));
                }
                (Some(_), false) => {
                    let why = if slot.fence.is_leading() {
                        "the lease was not renewed within the renew deadline"
                    } else {
                        "lost the lease"
                    };
                    crate::notice_warn!(shard = slot.shard.index, "{why}: stopping");
                    if let Some((stop, task)) = slot.running.take() {
                        stop.cancel();
                        let _ = task.await;
                    }
                }
                _ => {}
            }
        }
        let held = slots.iter().filter(|slot| slot.fence.is_leading()).count();
        metrics.set_leader(held > 0);
        metrics.set_shards_led(held);

        if last_heartbeat.is_none_or(|at| at.elapsed() >= heartbeat_every) {
            let held_names: Vec<String> = slots
                .iter()
                .filter(|slot| slot.fence.is_leading())
                .map(|slot| slot.shard.lease_name(&options.lease_name))
                .collect();
            if count > 1 {
                heartbeat(&leases, &options, &member, &held_names).await;
            }
            last_heartbeat = Some(Instant::now());
        }
        if last_rebalance.is_some_and(|at| at.elapsed() < REBALANCE_EVERY) {
            continue;
        }
        last_rebalance = Some(Instant::now());

        // How many shards this replica should hold, which are free to take, and which another
        // live replica holds.
        let (target, free, taken): (usize, Vec<usize>, Vec<usize>) = if count == 1 {
            (1, vec![0], Vec::new())
        } else {
            match group_leases(&leases, &options.lease_name).await {
                Ok(group) => {
                    let now = Timestamp::now();
                    let members = group
                        .iter()
                        .filter(|(name, lease)| name.contains("-member-") && live(lease, now))
                        .count()
                        .max(1);
                    let mut free = Vec::new();
                    let mut taken = Vec::new();
                    for (i, slot) in slots.iter().enumerate() {
                        match group.get(&slot.shard.lease_name(&options.lease_name)) {
                            Some(lease) if live(lease, now) => {
                                let ours = lease
                                    .spec
                                    .as_ref()
                                    .and_then(|s| s.holder_identity.as_deref())
                                    == Some(options.identity.as_str());
                                if !ours {
                                    taken.push(i);
                                }
                            }
                            _ => free.push(i),
                        }
                    }
                    (fair_share(count, members), free, taken)
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot read the watcher group; keeping the shards held");
                    continue;
                }
            }
        };
        // Contending for a shard another live replica holds only waits: stop that.
        for &i in &taken {
            if slots[i].manager.is_some() && !slots[i].fence.is_leading() {
                stop_slot(&mut slots[i], &options).await;
            }
        }
        let contending = |slots: &[Slot]| {
            slots
                .iter()
                .enumerate()
                .filter(|(_, slot)| slot.manager.is_some() && !slot.fence.is_leading())
                .map(|(i, _)| i)
                .collect::<Vec<usize>>()
        };
        if held > target {
            // More members joined: hand the highest extra shard back.
            if let Some(i) = (0..slots.len())
                .rev()
                .find(|&i| slots[i].fence.is_leading())
            {
                stop_slot(&mut slots[i], &options).await;
            }
        } else {
            for i in free {
                if held + contending(&slots).len() >= target {
                    break;
                }
                if slots[i].manager.is_none() {
                    slots[i].manager = Some(contend(&config, &options, &slots[i]).await?);
                }
            }
            let waiting = contending(&slots);
            if held + waiting.len() > target {
                // Contending for more than the share: stop the extra contenders.
                for &i in waiting.iter().rev().take(held + waiting.len() - target) {
                    stop_slot(&mut slots[i], &options).await;
                }
            }
        }
    }
    for slot in &mut slots {
        stop_slot(slot, &options).await;
    }
    if count > 1 {
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            leases.delete(&member, &Default::default()),
        )
        .await;
    }
    Ok(())
}

async fn stop_slot(slot: &mut Slot, options: &WatchOptions) {
    if let Some((stop, task)) = slot.running.take() {
        stop.cancel();
        let _ = task.await;
    }
    slot.fence.set_leading(false);
    if let Some(contender) = slot.manager.take() {
        release(
            contender,
            &slot.shard.lease_name(&options.lease_name),
            &options.lease_namespace,
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_split_the_buckets_and_keep_shard_zero_on_the_plain_lease() {
        for count in [1u32, 2, 3, 7, 16] {
            let mut seen = vec![0; BUCKETS as usize];
            for index in 0..count {
                for b in (Shard { index, count }).buckets() {
                    seen[b as usize] += 1;
                }
            }
            assert!(
                seen.iter().all(|n| *n == 1),
                "{count} shards cover each bucket once"
            );
        }
        assert_eq!(
            Shard { index: 0, count: 4 }.lease_name("kubectl-hsd"),
            "kubectl-hsd"
        );
        assert_eq!(
            Shard { index: 3, count: 4 }.lease_name("kubectl-hsd"),
            "kubectl-hsd-shard-3"
        );
        assert_eq!(Shard::all().owned_selector(), HSD_LABEL);
        let two = Shard { index: 1, count: 2 }.owned_selector();
        assert!(
            two.starts_with(&format!("{HSD_LABEL},{BUCKET_LABEL} in (1,3,5,")),
            "{two}"
        );
        // Every HSD is in exactly one shard, the one its bucket says.
        for i in 0..100 {
            let name = format!("h{i}");
            let owners = (0..3)
                .filter(|&index| Shard { index, count: 3 }.contains("ns", &name))
                .count();
            assert_eq!(owners, 1);
            assert!(Shard::all().contains("ns", &name));
        }
    }

    #[test]
    fn fair_shares_cover_every_shard() {
        for shards in 1..=16u32 {
            for members in 1..=8usize {
                assert!(fair_share(shards, members) * members >= shards as usize);
                assert!(fair_share(shards, members) <= shards as usize);
            }
        }
        assert_eq!(fair_share(2, 2), 1);
        assert_eq!(fair_share(2, 1), 2, "a lone survivor takes every shard");
        assert_eq!(fair_share(5, 2), 3);
    }
}
