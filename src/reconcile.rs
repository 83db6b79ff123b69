//! One reconcile pass: observe -> plan -> execute (which writes the status last). The one-shot
//! `reconcile` command and `reconcile --watch` both drive [`reconcile_hsd`].

use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use kube::Client;

use crate::error::{Error, Result};
use crate::execute::{self, Written};
use crate::observe::{self, Scope};
use crate::plan::{self, ObservedHsd, Plan};
use crate::probe::{ProbeResult, Prober};

/// HSDs executed at once in a pass.
const EXECUTE_CONCURRENCY: usize = 16;

#[derive(Clone, Debug, Default)]
pub struct PassOptions {
    pub dry_run: bool,
    pub probe_concurrency: Option<usize>,
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
    /// One word for the summary table.
    pub fn action(&self) -> String {
        match (&self.result, self.plan.scale) {
            (Err(_), _) => "failed".into(),
            (Ok(_), _) if self.plan.deployment == plan::DeploymentAction::Blocked => {
                "blocked".into()
            }
            (Ok(_), Some((from, to))) => format!("scaled {from}->{to}"),
            (Ok(w), None) if w.deployment => "applied".into(),
            (Ok(w), None) if w.count() > 0 => "status".into(),
            (Ok(_), None) => "unchanged".into(),
        }
    }
}

/// The outcome of a pass.
#[derive(Debug, Default)]
pub struct PassReport {
    pub outcomes: Vec<HsdOutcome>,
    pub probes: Vec<ProbeResult>,
    pub elapsed: Duration,
}

impl PassReport {
    pub fn failures(&self) -> impl Iterator<Item = (&HsdOutcome, &Error)> {
        self.outcomes
            .iter()
            .filter_map(|o| o.result.as_ref().err().map(|e| (o, e)))
    }
    pub fn writes(&self) -> usize {
        self.outcomes
            .iter()
            .filter_map(|o| o.result.as_ref().ok())
            .map(Written::count)
            .sum()
    }
}

/// Plans and executes one HSD. A HSD deleted meanwhile is not an error: its objects go with it.
pub async fn reconcile_hsd(
    client: &Client,
    observed: &ObservedHsd,
    dry_run: bool,
) -> (Plan, Result<Written>) {
    let plan = plan::plan(observed, jiff::Timestamp::now());
    if dry_run {
        return (plan, Ok(Written::default()));
    }
    let result = match execute::execute(client, observed, &plan).await {
        Err(Error::Kube {
            source: kube::Error::Api(status),
            ..
        }) if status.code == 404 => {
            tracing::info!(namespace = %observed.namespace, name = %observed.name, "deleted during the pass");
            Ok(Written::default())
        }
        other => other,
    };
    (plan, result)
}

/// One pass over every HSD in the scope. Errors of one HSD never stop the others; an error
/// reading the scope (missing CRD, missing permission) fails the pass.
pub async fn run_pass(client: &Client, scope: &Scope, options: &PassOptions) -> Result<PassReport> {
    let started = Instant::now();
    let snapshot = observe::read_snapshot(client, scope).await?;
    let mut assembled = observe::assemble(&snapshot);
    let prober = Prober::new(
        options
            .probe_concurrency
            .unwrap_or(crate::probe::DEFAULT_CONCURRENCY),
    );
    let probes = observe::probe_pods(&prober, &snapshot, &mut assembled).await;
    drop(snapshot);

    let mut outcomes: Vec<HsdOutcome> = stream::iter(assembled)
        .map(|assembled| async move {
            let hsd = assembled.hsd;
            let (plan, result) = reconcile_hsd(client, &hsd, options.dry_run).await;
            if let Err(error) = &result {
                tracing::warn!(namespace = %hsd.namespace, name = %hsd.name, %error, "reconcile failed");
            }
            HsdOutcome {
                namespace: hsd.namespace,
                name: hsd.name,
                plan,
                result,
            }
        })
        .buffer_unordered(EXECUTE_CONCURRENCY)
        .collect()
        .await;
    outcomes.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(PassReport {
        outcomes,
        probes,
        elapsed: started.elapsed(),
    })
}
