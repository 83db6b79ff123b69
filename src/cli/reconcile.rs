//! `reconcile`: one pass, a summary on stdout, one line per failed HSD on stderr.

use serde_json::json;

use super::output::{self, OutputFormat, table};
use super::{GlobalArgs, ReconcileArgs};
use crate::error::Result;
use crate::once::{PassOptions, PassReport, run_pass};

pub async fn reconcile(global: &GlobalArgs, args: ReconcileArgs) -> Result<i32> {
    let config = crate::client::load_config(&global.client_options()).await?;
    let default_ns = config.default_namespace.clone();
    let scope = global.scope(&default_ns);
    let lease_namespace = args
        .lease_namespace
        .clone()
        .unwrap_or_else(|| crate::watch::default_lease_namespace(&scope));
    if args.watch {
        return watch(config, scope, lease_namespace, args).await;
    }
    let (client, stats) = crate::client::counted_client(config)?;
    if !args.force && !args.dry_run {
        let mut namespaces = vec![lease_namespace];
        let cluster_wide = crate::watch::default_lease_namespace(&crate::observe::Scope::All);
        if !namespaces.contains(&cluster_wide) {
            namespaces.push(cluster_wide);
        }
        for namespace in namespaces {
            // Fails closed: a pass that cannot read the Lease does not run beside a watcher.
            if let Some(holder) =
                crate::watch::live_holder(&client, &namespace, &args.lease_name).await?
            {
                eprintln!(
                    "a watcher ({holder}) holds Lease {namespace}/{}: it reconciles; this pass does nothing (--force to run anyway)",
                    args.lease_name
                );
                return Ok(0);
            }
        }
    }
    let options = PassOptions {
        dry_run: args.dry_run,
        probe_concurrency: Some(args.probe_concurrency),
        deadline: Some(args.deadline),
    };
    let report = run_pass(&client, &scope, &options).await?;
    for (outcome, error) in report.failures() {
        eprintln!("error: {}/{}: {error}", outcome.namespace, outcome.name);
    }
    for (outcome, error) in report.service_failures() {
        eprintln!(
            "error: active-standby Services of namespace {}: {error}",
            outcome.plan.namespace
        );
    }
    if let Some(error) = &report.services_error {
        eprintln!("error: active-standby Services: {error}");
    }
    match global.output {
        Some(OutputFormat::Json) => {
            print!("{}", output::to_json(&report_json(&report, args.dry_run)))
        }
        Some(OutputFormat::Yaml) => {
            print!("{}", output::to_yaml(&report_json(&report, args.dry_run)))
        }
        Some(OutputFormat::Name) => {
            for outcome in &report.outcomes {
                println!("hotstandbydeployment.apps.paia.tech/{}", outcome.name);
            }
            for outcome in &report.services {
                for service in &outcome.plan.services {
                    println!("service/{}", service.name);
                }
            }
        }
        _ => {
            if report.outcomes.is_empty() {
                eprintln!("No HotStandbyDeployments found in scope.");
            } else {
                print!("{}", summary_table(&report, args.dry_run));
            }
            if report.services.iter().any(|o| !o.plan.services.is_empty()) {
                if !report.outcomes.is_empty() {
                    println!();
                }
                print!("{}", services_table(&report, args.dry_run));
            }
        }
    }
    if args.stats {
        eprintln!(
            "stats: {} HSDs, {} pods probed, {} API requests ({} reads, {} writes), {:.3}s",
            report.outcomes.len(),
            report.probes.len(),
            stats.total(),
            stats.reads(),
            stats.writes(),
            report.elapsed.as_secs_f64()
        );
    }
    Ok(if report.failed() { 1 } else { 0 })
}

/// How long a watcher may take to stop after SIGTERM/SIGINT, whatever state the API server is in.
const SHUTDOWN_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

async fn watch(
    config: kube::Config,
    scope: crate::observe::Scope,
    lease_namespace: String,
    args: ReconcileArgs,
) -> Result<i32> {
    let metrics_addr = match args.metrics_addr.as_str() {
        "off" | "" => None,
        addr => Some(
            addr.parse()
                .map_err(|e| crate::Error::Invalid(format!("--metrics-addr {addr:?}: {e}")))?,
        ),
    };
    let options = crate::watch::WatchOptions {
        scope,
        metrics_addr,
        leader_elect: args.leader_elect,
        lease_name: args.lease_name,
        lease_namespace,
        lease_duration: args.lease_duration,
        identity: args.identity.unwrap_or_else(crate::watch::default_identity),
        resync: args.resync,
        probe_concurrency: args.probe_concurrency,
        shards: args.shards,
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        crate::watch::shutdown_signal().await;
        eprintln!("shutting down");
        on_signal.cancel();
        tokio::time::sleep(SHUTDOWN_LIMIT).await;
        eprintln!(
            "still stopping after {}s (is the API server reachable?): exiting now; the lease expires on its own",
            SHUTDOWN_LIMIT.as_secs()
        );
        std::process::exit(0);
    });
    crate::watch::run(config, options, shutdown).await?;
    Ok(0)
}

fn action(outcome: &crate::once::HsdOutcome, dry_run: bool) -> String {
    if !dry_run {
        return outcome.action();
    }
    match (&outcome.plan.deployment, outcome.plan.scale) {
        (crate::plan::DeploymentAction::Blocked, _) => "blocked".into(),
        (_, Some((from, to))) => format!("would scale {from}->{to}"),
        (crate::plan::DeploymentAction::Apply { .. }, None) => "would apply".into(),
        _ if outcome.plan.status_changed => "would update status".into(),
        _ => "unchanged".into(),
    }
}

fn summary_table(report: &PassReport, dry_run: bool) -> String {
    let rows = report
        .outcomes
        .iter()
        .map(|o| {
            let counts = o.plan.counts;
            vec![
                o.namespace.clone(),
                o.name.clone(),
                counts.busy.to_string(),
                counts.idle.to_string(),
                counts.starting.to_string(),
                counts.unknown.to_string(),
                o.plan
                    .recommendation
                    .map_or("-".into(), |r| r.replicas.to_string()),
                action(o, dry_run),
            ]
        })
        .collect();
    table(
        &[
            "NAMESPACE",
            "NAME",
            "BUSY",
            "IDLE",
            "STARTING",
            "UNKNOWN",
            "DESIRED",
            "ACTION",
        ],
        rows,
    )
}

/// What a pass did to a Service, in a word or three.
fn service_action(
    outcome: &crate::once::ServiceOutcome,
    service: &crate::plan::active_standby::ServicePlan,
    dry_run: bool,
) -> String {
    let action = &service.decision.action;
    if outcome.result.is_err() {
        return "failed".into();
    }
    let quiet = action == "keep" || action == "nothing";
    match (dry_run, quiet) {
        (_, true) if service.write.is_some() => "record".into(),
        (_, true) => "unchanged".into(),
        (true, false) => format!("would {action}"),
        (false, false) => action.clone(),
    }
}

fn services_table(report: &PassReport, dry_run: bool) -> String {
    let rows = report
        .services
        .iter()
        .flat_map(|o| {
            o.plan.services.iter().map(move |s| {
                vec![
                    o.plan.namespace.clone(),
                    s.name.clone(),
                    s.decision.master.clone().unwrap_or_else(|| "<none>".into()),
                    s.decision.candidates.to_string(),
                    service_action(o, s, dry_run),
                ]
            })
        })
        .collect();
    table(
        &["NAMESPACE", "SERVICE", "MASTER", "CANDIDATES", "ACTION"],
        rows,
    )
}

fn report_json(report: &PassReport, dry_run: bool) -> serde_json::Value {
    json!({
        "dryRun": dry_run,
        "elapsedSeconds": report.elapsed.as_secs_f64(),
        "writes": report.writes(),
        "items": report.outcomes.iter().map(|o| json!({
            "namespace": o.namespace,
            "name": o.name,
            "busy": o.plan.counts.busy,
            "idle": o.plan.counts.idle,
            "starting": o.plan.counts.starting,
            "unknown": o.plan.counts.unknown,
            "desiredReplicas": o.plan.recommendation.map(|r| r.replicas),
            "scale": o.plan.scale.map(|(from, to)| json!({"from": from, "to": to})),
            "action": action(o, dry_run),
            "events": o.plan.events.iter().map(|e| json!({"reason": e.reason, "note": e.note})).collect::<Vec<_>>(),
            "error": o.result.as_ref().err().map(|e| e.to_string()),
        })).collect::<Vec<_>>(),
        "services": report.services.iter().flat_map(|o| o.plan.services.iter().map(move |s| json!({
            "namespace": o.plan.namespace,
            "name": s.name,
            "master": s.decision.master,
            "candidates": s.decision.candidates,
            "action": service_action(o, s, dry_run),
            "events": s.events.iter().map(|e| json!({"reason": e.reason, "note": e.note})).collect::<Vec<_>>(),
            "error": o.result.as_ref().err().map(|e| e.to_string()),
        }))).collect::<Vec<_>>(),
        "servicesError": report.services_error.as_ref().map(|e| e.to_string()),
    })
}
