//! One reconcile pass: observe -> plan -> execute (which writes the status last), for each kind:
//! HotStandbyDeployments and HotStandbyJobs, side by side. The one-shot `reconcile` command and
//! `reconcile --watch` both drive [`reconcile_hsd`] and [`reconcile_hsj`]. After the HSDs, a
//! pass does the same for active-standby Services, one namespace at a time
//! ([`reconcile_services`]); a master that fails is replaced by the next pass.

use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use kube::Client;

use crate::error::{Error, Result};
use crate::execute::active_standby::NamespaceWritten;
use crate::execute::hsj::HsjWritten;
use crate::execute::{self, Written};
use crate::observe::probe::{ProbeResult, Prober};
use crate::observe::{self, Scope};
use crate::plan::active_standby::NamespacePlan;
use crate::plan::hsj::{HsjPlan, ObservedHsj};
use crate::plan::{self, ObservedHsd, Plan};

/// HSDs executed at once in a pass.
const EXECUTE_CONCURRENCY: usize = 16;
/// HSDs probed at once in a pass: each has its own probe budget, so this bounds only how many
/// HTTP-mode HSDs make progress together.
const PROBE_HSD_CONCURRENCY: usize = 256;
/// How long a one-shot pass may run, unless told otherwise. The rendered CronJob gives its Job
/// a few seconds more as `activeDeadlineSeconds` (see `manifests`).
pub const DEFAULT_PASS_DEADLINE: Duration = Duration::from_secs(50);
/// The part of the pass deadline kept for the writes after the last probe.
pub const WRITE_MARGIN: Duration = Duration::from_secs(15);

#[derive(Clone, Debug, Default)]
pub struct PassOptions {
    pub dry_run: bool,
    /// HTTP probes in flight at once, per HSD.
    pub probe_concurrency: Option<usize>,
    /// Exec probes in flight at once, per HSD or HSJ.
    pub exec_probe_concurrency: Option<usize>,
    /// The pass ends within this (default [`DEFAULT_PASS_DEADLINE`]): probes stop at the
    /// deadline minus [`WRITE_MARGIN`], and an HSD whose writes are still running at the
    /// deadline fails with a timeout.
    pub deadline: Option<Duration>,
}

impl PassOptions {
    fn prober(&self, client: &Client) -> Prober {
        Prober::new(
            self.probe_concurrency
                .unwrap_or(crate::observe::probe::DEFAULT_CONCURRENCY),
        )
        .with_exec(
            client.clone(),
            self.exec_probe_concurrency
                .unwrap_or(crate::observe::probe::DEFAULT_EXEC_CONCURRENCY),
        )
    }

    fn deadlines(&self, started: Instant) -> (tokio::time::Instant, tokio::time::Instant) {
        let total = self.deadline.unwrap_or(DEFAULT_PASS_DEADLINE);
        let probing = total
            .saturating_sub(WRITE_MARGIN)
            .max(total / 2)
            .max(Duration::from_secs(1));
        let started = tokio::time::Instant::from_std(started);
        (started + probing, started + total)
    }
}

/// What happened to one HSD in a pass.
#[derive(Debug)]
pub struct HsdOutcome {
    pub namespace: String,
    pub name: String,
    pub plan: Plan,
    pub result: Result<Written>,
}

impl HsdOutcome {
    /// This outcome and a later one of the same HSD in the same pass, as one: the later plan,
    /// with the pods drained and the replicas changed by both, and the writes of both.
    fn followed_by(self, mut later: HsdOutcome) -> HsdOutcome {
        later.plan.scale = match (self.plan.scale, later.plan.scale) {
            (Some((from, _)), Some((_, to))) => Some((from, to)),
            (earlier, latest) => latest.or(earlier),
        };
        if let (Some(earlier), Some(decision)) = (&self.plan.decision, &mut later.plan.decision) {
            let mut drained = earlier.drained.clone();
            drained.append(&mut decision.drained);
            decision.drained = drained;
        }
        later.result = match (self.result, later.result) {
            (Ok(earlier), Ok(latest)) => Ok(earlier.followed_by(latest)),
            (_, latest) => latest,
        };
        later
    }

    /// One word for the summary table.
    pub fn action(&self) -> String {
        match (&self.result, self.plan.scale) {
            (Err(_), _) => "failed".into(),
            (Ok(_), _) if self.plan.deployment == plan::DeploymentAction::Blocked => {
                "blocked".into()
            }
            (Ok(_), Some((from, to))) => format!("scaled {from}->{to}"),
            (Ok(w), None) if w.deployment => "applied".into(),
            // A drop held for its drain to settle, and not followed up (a dry run never drains).
            (Ok(w), None) if !w.drained.is_empty() => format!("drained {}", w.drained.len()),
            (Ok(w), None) if w.count() > 0 => "status".into(),
            (Ok(_), None) => "unchanged".into(),
        }
    }
}

/// What happened to one HotStandbyJob in a pass.
#[derive(Debug)]
pub struct HsjOutcome {
    pub namespace: String,
    pub name: String,
    pub plan: HsjPlan,
    pub result: Result<HsjWritten>,
}

impl HsjOutcome {
    /// A few words for the summary table.
    pub fn action(&self) -> String {
        let written = match &self.result {
            Err(_) => return "failed".into(),
            Ok(_) if self.plan.blocked && self.plan.decision.is_none() => {
                return "blocked".into();
            }
            Ok(written) => written,
        };
        let mut parts = Vec::new();
        if !written.created.is_empty() {
            parts.push(format!("created {}", written.created.len()));
        }
        if !written.deleted.is_empty() {
            parts.push(format!("deleted {}", written.deleted.len()));
        }
        if !written.skipped.is_empty() {
            parts.push(format!("kept {} (changed)", written.skipped.len()));
        }
        if parts.is_empty() {
            if self.plan.blocked {
                "paused".into()
            } else if written.status {
                "status".into()
            } else {
                "unchanged".into()
            }
        } else {
            parts.join(", ")
        }
    }
}

/// What happened to one namespace's active-standby Services in a pass.
#[derive(Debug)]
pub struct ServiceOutcome {
    pub plan: NamespacePlan,
    pub result: Result<NamespaceWritten>,
}

/// The outcome of a pass.
#[derive(Debug, Default)]
pub struct PassReport {
    pub outcomes: Vec<HsdOutcome>,
    pub hsj_outcomes: Vec<HsjOutcome>,
    /// Why the HotStandbyJobs of the scope could not be read (the HSDs were still reconciled).
    pub hsj_error: Option<Error>,
    pub probes: Vec<ProbeResult>,
    /// One per namespace with an active-standby Service (or a label to clean up).
    pub services: Vec<ServiceOutcome>,
    /// Why the Services could not be read, if they could not (the HSDs were reconciled).
    pub services_error: Option<Error>,
    pub elapsed: Duration,
}

impl PassReport {
    pub fn failures(&self) -> impl Iterator<Item = (&HsdOutcome, &Error)> {
        self.outcomes
            .iter()
            .filter_map(|o| o.result.as_ref().err().map(|e| (o, e)))
    }
    pub fn hsj_failures(&self) -> impl Iterator<Item = (&HsjOutcome, &Error)> {
        self.hsj_outcomes
            .iter()
            .filter_map(|o| o.result.as_ref().err().map(|e| (o, e)))
    }
    /// Whether anything failed (an HSD, an HSJ, reading the HSJs, or active-standby Services).
    pub fn failed(&self) -> bool {
        self.failures().next().is_some()
            || self.hsj_failures().next().is_some()
            || self.hsj_error.is_some()
            || self.service_failures().next().is_some()
            || self.services_error.is_some()
    }
    pub fn writes(&self) -> usize {
        self.outcomes
            .iter()
            .filter_map(|o| o.result.as_ref().ok())
            .map(Written::count)
            .sum::<usize>()
            + self
                .hsj_outcomes
                .iter()
                .filter_map(|o| o.result.as_ref().ok())
                .map(HsjWritten::count)
                .sum::<usize>()
            + self
                .services
                .iter()
                .filter_map(|o| o.result.as_ref().ok())
                .map(|w| w.writes + w.events)
                .sum::<usize>()
    }

    /// The namespaces whose active-standby writes failed.
    pub fn service_failures(&self) -> impl Iterator<Item = (&ServiceOutcome, &Error)> {
        self.services
            .iter()
            .filter_map(|o| o.result.as_ref().err().map(|e| (o, e)))
    }
}

/// Plans and (unless `dry_run`) carries out the active-standby Services of each namespace. A
/// namespace's failure never stops the others.
pub async fn reconcile_services(
    client: &Client,
    namespaces: Vec<crate::plan::active_standby::ObservedNamespace>,
    dry_run: bool,
    deadline: tokio::time::Instant,
) -> Vec<ServiceOutcome> {
    stream::iter(namespaces)
        .map(|observed| async move {
            let plan = crate::plan::active_standby::plan(&observed, jiff::Timestamp::now());
            let result = if dry_run || !plan.writes() && plan.services.iter().all(|s| s.events.is_empty()) {
                Ok(NamespaceWritten::default())
            } else {
                match tokio::time::timeout_at(
                    deadline,
                    crate::execute::active_standby::execute(client, &plan),
                )
                .await
                {
                    Ok(result) => result,
                    Err(_) => Err(Error::Timeout(
                        deadline.saturating_duration_since(tokio::time::Instant::now()),
                        format!(
                            "the active-standby writes of namespace {} (the pass deadline passed; the next pass retries)",
                            plan.namespace
                        ),
                    )),
                }
            };
            if let Err(error) = &result {
                tracing::warn!(namespace = %plan.namespace, %error, "active-standby reconcile failed");
            }
            ServiceOutcome { plan, result }
        })
        .buffer_unordered(EXECUTE_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
}

/// Plans and executes one HSD.
pub async fn reconcile_hsd(
    client: &Client,
    observed: &ObservedHsd,
    dry_run: bool,
) -> (Plan, Result<Written>) {
    let plan = plan::plan(observed, jiff::Timestamp::now());
    if dry_run {
        return (plan, Ok(Written::default()));
    }
    let result = execute_plan(client, observed, &plan).await;
    (plan, result)
}

/// Executes a plan. An HSD deleted meanwhile is not an error: its objects go with it.
pub async fn execute_plan(client: &Client, observed: &ObservedHsd, plan: &Plan) -> Result<Written> {
    match execute::execute(client, observed, plan).await {
        Err(Error::Kube {
            source: kube::Error::Api(status),
            ..
        }) if status.code == 404 => {
            tracing::info!(namespace = %observed.namespace, name = %observed.name, "deleted during the pass");
            Ok(Written::default())
        }
        other => other,
    }
}

/// One pass over every HSD in the scope. Errors of one HSD never stop the others; an error
/// reading the scope (missing CRD, missing permission) fails the pass. Each HSD is probed
/// with its own budget, then planned and executed as soon as its own probes are in: an HSD
/// whose endpoints hang never delays another's decision.
pub async fn run_pass(client: &Client, scope: &Scope, options: &PassOptions) -> Result<PassReport> {
    let started = Instant::now();
    let (probe_deadline, deadline) = options.deadlines(started);
    let prober = options.prober(client);
    let (hsds, hsjs) = tokio::join!(
        run_hsd_pass(client, scope, options, &prober, probe_deadline, deadline),
        run_hsj_pass(client, scope, options, &prober, probe_deadline, deadline),
    );
    let HsdPass {
        outcomes,
        mut probes,
        services,
        services_error,
    } = hsds?;
    let (hsj_outcomes, hsj_probes, hsj_error) = hsjs;
    probes.extend(hsj_probes);
    if let Some(error) = &hsj_error {
        tracing::warn!(%error, "HotStandbyJobs not reconciled");
    }
    Ok(PassReport {
        outcomes,
        hsj_outcomes,
        hsj_error,
        probes,
        services,
        services_error,
        elapsed: started.elapsed(),
    })
}

/// The HSD side of a pass, and the active-standby Services read beside it.
struct HsdPass {
    outcomes: Vec<HsdOutcome>,
    probes: Vec<ProbeResult>,
    services: Vec<ServiceOutcome>,
    services_error: Option<Error>,
}

/// Probes, plans and executes one observed HSD within the pass's deadlines.
async fn reconcile_observed(
    client: &Client,
    mut hsd: ObservedHsd,
    targets: Vec<(usize, crate::observe::probe::Target)>,
    prober: &Prober,
    (probe_deadline, deadline): (tokio::time::Instant, tokio::time::Instant),
    options: &PassOptions,
    execute_slots: &tokio::sync::Semaphore,
) -> (HsdOutcome, Vec<ProbeResult>) {
    let probes = if targets.is_empty() {
        Vec::new()
    } else {
        observe::probe_hsd(prober, &mut hsd, targets, probe_deadline).await
    };
    if let Err(error) = observe::confirm_missing_child(client, &mut hsd).await {
        let plan = plan::plan(&hsd, jiff::Timestamp::now());
        return (
            HsdOutcome {
                namespace: hsd.namespace,
                name: hsd.name,
                plan,
                result: Err(error),
            },
            probes,
        );
    }
    let _slot = execute_slots.acquire().await.expect("never closed");
    let (plan, result) =
        match tokio::time::timeout_at(deadline, reconcile_hsd(client, &hsd, options.dry_run)).await
        {
            Ok(done) => done,
            Err(_) => (
                plan::plan(&hsd, jiff::Timestamp::now()),
                Err(Error::Timeout(
                    options.deadline.unwrap_or(DEFAULT_PASS_DEADLINE),
                    "this HSD's writes (the pass deadline passed; the next pass retries)".into(),
                )),
            ),
        };
    if let Err(error) = &result {
        tracing::warn!(namespace = %hsd.namespace, name = %hsd.name, %error, "reconcile failed");
    }
    (
        HsdOutcome {
            namespace: hsd.namespace,
            name: hsd.name,
            plan,
            result,
        },
        probes,
    )
}

/// What a pass over one HSD reads besides the HSD itself: its child and pods, and the
/// namespace's Services (an active-standby Service over its pods keeps its master's place).
pub struct OneRead {
    index: crate::observe::index::Index,
    services: Vec<crate::observe::services::LeanService>,
}

/// Reads what [`reconcile_read`] needs besides the HSD: three lists at once.
pub async fn read_for_one(client: &Client, namespace: &str, name: &str) -> Result<OneRead> {
    let scope = Scope::Namespace(namespace.to_string());
    let (index, services) = tokio::try_join!(
        observe::read_one_index(client, namespace, name),
        observe::services::list_services(client, &scope),
    )?;
    Ok(OneRead { index, services })
}

/// One pass over one HSD, as [`run_pass`] makes it for each: probe, plan and execute, on the
/// HSD given and what [`read_for_one`] read. The proxy runs it to wake an HSD, on the HSD its
/// deadline write returned (the lists run beside that write), so that a wake goes through the
/// same plan and field manager as every other replica change, with or without a watcher.
pub async fn reconcile_read(
    client: &Client,
    object: &kube::api::DynamicObject,
    read: OneRead,
    options: &PassOptions,
) -> HsdOutcome {
    let (probe_deadline, deadline) = options.deadlines(Instant::now());
    let (mut hsd, pods) = observe::observe_hsd(object, &read.index, |_| None);
    hsd.master_slot = observe::services::master_slot(&hsd, &read.services);
    let targets = match &hsd.spec {
        Ok(spec) => observe::probe_targets(spec, &pods),
        Err(_) => Vec::new(),
    };
    drop(read);
    let prober = options.prober(client);
    let slots = tokio::sync::Semaphore::new(1);
    let (outcome, _) = reconcile_observed(
        client,
        hsd,
        targets,
        &prober,
        (probe_deadline, deadline),
        options,
        &slots,
    )
    .await;
    outcome
}

/// How many times one pass looks at an HSD again for a drop held by its own drain.
const SETTLE_ROUNDS: usize = 3;

/// A scale-down marks its pods draining and drops replicas only once the ReplicaSet has had
/// `DRAIN_SETTLE` to see the marks. So that one pass still takes a scale-down to its end, the
/// pass waits that long and looks at the HSD again: a fresh read, fresh probes, a fresh plan
/// (a pod that turned busy meanwhile counts as busy). Within the pass's deadline; an error of
/// the follow-up leaves the drop to the next pass.
async fn settle_drains(
    client: &Client,
    mut outcome: HsdOutcome,
    options: &PassOptions,
    deadline: tokio::time::Instant,
) -> HsdOutcome {
    let api: kube::Api<kube::api::DynamicObject> =
        kube::Api::namespaced_with(client.clone(), &outcome.namespace, &observe::hsd_resource());
    for _ in 0..SETTLE_ROUNDS {
        let Some(settled) = outcome.plan.drop_held_for(jiff::Timestamp::now()) else {
            break;
        };
        let wake = tokio::time::Instant::now() + settled;
        if options.dry_run || outcome.result.is_err() || wake >= deadline {
            break;
        }
        tokio::time::sleep_until(wake).await;
        let (namespace, name) = (outcome.namespace.clone(), outcome.name.clone());
        let fresh = async {
            // A list by name: the one-shot pass's role may list HSDs, not get them.
            let by_name = kube::api::ListParams::default().fields(&format!("metadata.name={name}"));
            let listed = api.list(&by_name).await.map_err(crate::error::kube_error(
                format!("reading HotStandbyDeployment {namespace}/{name}"),
                "list",
                "hotstandbydeployments.apps.paia.tech",
                Some(&namespace),
            ))?;
            let Some(object) = listed.items.into_iter().next() else {
                return Ok(None);
            };
            let read = read_for_one(client, &namespace, &name).await?;
            Ok::<_, Error>(Some(reconcile_read(client, &object, read, options).await))
        };
        match fresh.await {
            Ok(Some(next)) => outcome = outcome.followed_by(next),
            Ok(None) => break,
            Err(error) => {
                tracing::warn!(%namespace, %name, %error, "the drop after the drain is left to the next pass");
                break;
            }
        }
    }
    outcome
}

/// The HSD side of a pass: its outcomes and probes, or the error of reading the scope.
async fn run_hsd_pass(
    client: &Client,
    scope: &Scope,
    options: &PassOptions,
    prober: &Prober,
    probe_deadline: tokio::time::Instant,
    deadline: tokio::time::Instant,
) -> Result<HsdPass> {
    let snapshot = observe::read_snapshot(client, scope).await?;
    let hsd_objects = snapshot.hsds.clone();
    // Services first: an active-standby Service over an HSD's pods keeps its master's place.
    let services = observe::services::list_services(client, scope).await;
    let no_services = Vec::new();
    let listed = services.as_ref().unwrap_or(&no_services);
    let work: Vec<(ObservedHsd, Vec<(usize, crate::observe::probe::Target)>)> = snapshot
        .hsds
        .iter()
        .map(|object| {
            let (mut hsd, pods) = observe::observe_hsd(object, &snapshot.index, |_| None);
            hsd.master_slot = observe::services::master_slot(&hsd, listed);
            let targets = match &hsd.spec {
                Ok(spec) => observe::probe_targets(spec, &pods),
                Err(_) => Vec::new(),
            };
            (hsd, targets)
        })
        .collect();
    drop(snapshot);
    let execute_slots = tokio::sync::Semaphore::new(EXECUTE_CONCURRENCY);

    let results: Vec<(HsdOutcome, Vec<ProbeResult>)> = stream::iter(work)
        .map(|(hsd, targets)| async {
            let (outcome, probes) = reconcile_observed(
                client,
                hsd,
                targets,
                prober,
                (probe_deadline, deadline),
                options,
                &execute_slots,
            )
            .await;
            (
                settle_drains(client, outcome, options, deadline).await,
                probes,
            )
        })
        .buffer_unordered(PROBE_HSD_CONCURRENCY)
        .collect()
        .await;
    let mut outcomes = Vec::with_capacity(results.len());
    let mut probes = Vec::new();
    for (outcome, hsd_probes) in results {
        outcomes.push(outcome);
        probes.extend(hsd_probes);
    }
    outcomes.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let read = match services {
        Ok(services) => observe::services::read_scope(client, scope, services, &hsd_objects).await,
        Err(error) => Err(error),
    };
    let (mut services, services_error) = match read {
        Ok(namespaces) => (
            reconcile_services(client, namespaces, options.dry_run, deadline).await,
            None,
        ),
        Err(error) => (Vec::new(), Some(error)),
    };
    services.sort_by(|a, b| a.plan.namespace.cmp(&b.plan.namespace));
    Ok(HsdPass {
        outcomes,
        probes,
        services,
        services_error,
    })
}

/// The HSJ side of a pass: each HSJ probed with its own budget, planned, its victims confirmed
/// idle, and executed. Errors of one HSJ never stop the others; an error reading the HSJs is
/// returned beside the outcomes (the HSDs of the pass are reconciled all the same).
async fn run_hsj_pass(
    client: &Client,
    scope: &Scope,
    options: &PassOptions,
    prober: &Prober,
    probe_deadline: tokio::time::Instant,
    deadline: tokio::time::Instant,
) -> (Vec<HsjOutcome>, Vec<ProbeResult>, Option<Error>) {
    let snapshot = match observe::jobs::read_hsj_snapshot(client, scope).await {
        Ok(snapshot) => snapshot,
        Err(error) => return (Vec::new(), Vec::new(), Some(error)),
    };
    let work: Vec<_> = snapshot
        .hsjs
        .iter()
        .map(|object| {
            let (hsj, pods) = observe::jobs::observe_hsj(object, &snapshot.index, |_| None);
            let targets = observe::jobs::probe_targets(&hsj, &pods);
            (hsj, targets)
        })
        .collect();
    drop(snapshot);
    let execute_slots = tokio::sync::Semaphore::new(EXECUTE_CONCURRENCY);
    let results: Vec<(HsjOutcome, Vec<ProbeResult>)> = stream::iter(work)
        .map(|(mut hsj, targets)| {
            let execute_slots = &execute_slots;
            async move {
                let probes = if targets.is_empty() {
                    Vec::new()
                } else {
                    observe::jobs::probe_hsj(prober, &mut hsj, targets, probe_deadline).await
                };
                let _slot = execute_slots.acquire().await.expect("never closed");
                let (plan, result) = match tokio::time::timeout_at(
                    deadline,
                    reconcile_hsj(client, prober, &mut hsj, options.dry_run),
                )
                .await
                {
                    Ok(done) => done,
                    Err(_) => (
                        crate::plan::hsj::plan(&hsj, jiff::Timestamp::now()),
                        Err(Error::Timeout(
                            options.deadline.unwrap_or(DEFAULT_PASS_DEADLINE),
                            "this HSJ's writes (the pass deadline passed; the next pass retries)"
                                .into(),
                        )),
                    ),
                };
                if let Err(error) = &result {
                    tracing::warn!(namespace = %hsj.namespace, name = %hsj.name, %error, "reconcile failed");
                }
                (
                    HsjOutcome {
                        namespace: hsj.namespace,
                        name: hsj.name,
                        plan,
                        result,
                    },
                    probes,
                )
            }
        })
        .buffer_unordered(PROBE_HSD_CONCURRENCY)
        .collect()
        .await;
    let mut outcomes = Vec::with_capacity(results.len());
    let mut probes = Vec::new();
    for (outcome, hsj_probes) in results {
        outcomes.push(outcome);
        probes.extend(hsj_probes);
    }
    outcomes.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    (outcomes, probes, None)
}

/// Plans one HSJ and carries the plan out. A plan that deletes Jobs is made twice: the victims
/// of the first are asked again right now (a fresh probe, or a fresh read of the pod), and the
/// second plan may delete only those that answered idle. The deletions themselves are
/// compare-and-swaps on each Job's uid and resourceVersion.
pub async fn reconcile_hsj(
    client: &Client,
    prober: &Prober,
    hsj: &mut ObservedHsj,
    dry_run: bool,
) -> (HsjPlan, Result<HsjWritten>) {
    let mut plan = crate::plan::hsj::plan(hsj, jiff::Timestamp::now());
    if dry_run {
        return (plan, Ok(HsjWritten::default()));
    }
    if !plan.deletions.is_empty() {
        let victims = crate::plan::hsj::victims(&plan);
        let confirmed = observe::jobs::confirm_idle(client, prober, hsj, &victims)
            .await
            .unwrap_or_default();
        hsj.confirmed_idle = Some(confirmed);
        plan = crate::plan::hsj::plan(hsj, jiff::Timestamp::now());
    }
    let result = execute_hsj_plan(client, hsj, &plan).await;
    (plan, result)
}

/// Executes an HSJ's plan. An HSJ deleted meanwhile is not an error: its Jobs go with it.
pub async fn execute_hsj_plan(
    client: &Client,
    hsj: &ObservedHsj,
    plan: &HsjPlan,
) -> Result<HsjWritten> {
    match execute::hsj::execute(client, hsj, plan).await {
        Err(Error::Kube {
            source: kube::Error::Api(status),
            ..
        }) if status.code == 404 => {
            tracing::info!(namespace = %hsj.namespace, name = %hsj.name, "deleted during the pass");
            Ok(HsjWritten::default())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::fixtures::*;

    #[test]
    fn a_scale_down_and_its_follow_up_read_as_one() {
        // The pass that drains: 5 idle pods, target 3, replicas held at 5.
        let hsd = observed(spec(3, 0, None), Some(5), idle_pods(5));
        let drained = plan::plan(&hsd, now());
        assert_eq!(drained.scale, None);
        let (_, dropped) = settled(&hsd, now());
        assert_eq!(dropped.scale, Some((5, 3)));
        let outcome = |plan: Plan, written: Written| HsdOutcome {
            namespace: "default".into(),
            name: "game-ws".into(),
            plan,
            result: Ok(written),
        };
        let first = outcome(
            drained.clone(),
            Written {
                drained: drained.decision.as_ref().unwrap().drained.clone(),
                events: 1,
                ..Written::default()
            },
        );
        assert_eq!(
            first.action(),
            "drained 2",
            "a pass that only drained says so"
        );
        let second = outcome(
            dropped,
            Written {
                deployment: true,
                events: 1,
                ..Written::default()
            },
        );
        let whole = first.followed_by(second);
        assert_eq!(whole.action(), "scaled 5->3");
        let decision = whole.plan.decision.as_ref().unwrap();
        assert_eq!(decision.drained, drained.decision.unwrap().drained);
        let written = whole.result.unwrap();
        assert_eq!((written.drained.len(), written.events), (2, 2));
        assert!(written.deployment);
    }
}
