//! `reconcile`: one pass, a summary on stdout, one line per failed HSD or HSJ on stderr. The
//! HSDs' rows are as they always were; HotStandbyJobs, when the scope has any, follow as rows
//! named `hsj/NAME` (and under `hotStandbyJobs` in `-o json|yaml`).

use serde_json::json;

use std::net::SocketAddr;

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;

use super::output::{self, OutputFormat, table};
use super::{DryRun, GlobalArgs, ReconcileArgs};
use crate::client::{ClientHooks, WritePolicy};
use crate::error::{Error, Result};
use crate::manifests::METRICS_PORT;
use crate::observe::Scope;
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
        let lease_namespace = if args.lease_namespace.is_none()
            && args.leader_elect
            && scope == Scope::All
            && std::env::var_os("POD_NAMESPACE").is_none()
        {
            laptop_lease_namespace(&config, &lease_namespace, &default_ns).await?
        } else {
            lease_namespace
        };
        return watch(config, scope, lease_namespace, args).await;
    }
    let dry_run = args.writes.dry_run;
    let (client, stats) = crate::client::client_with_policy(
        config,
        ClientHooks::default(),
        WritePolicy {
            server_dry_run: dry_run == DryRun::Server,
        },
    )?;
    if !args.force && !dry_run.is_dry() {
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
                crate::notice!(
                    "a watcher ({holder}) holds Lease {namespace}/{}: it reconciles; this pass does nothing (--force to run anyway)",
                    args.lease_name
                );
                return Ok(0);
            }
        }
    }
    let options = PassOptions {
        // A server-side dry run executes the plan: every write goes out with dryRun=All.
        dry_run: dry_run == DryRun::Client,
        probe_concurrency: Some(args.probe_concurrency),
        exec_probe_concurrency: Some(args.exec_probe_concurrency),
        deadline: Some(args.deadline),
    };
    // A pass over a large cluster takes a while: a spinner on a terminal (never in JSON logs).
    let bar = super::install::spinner(global, "reconciling HotStandbyDeployments");
    let report = run_pass(&client, &scope, &options).await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let report = report?;
    for (outcome, error) in report.failures() {
        crate::notice_error!("{}/{}: {error}", outcome.namespace, outcome.name);
    }
    for (outcome, error) in report.hsj_failures() {
        crate::notice_error!("{}/hsj/{}: {error}", outcome.namespace, outcome.name);
    }
    if let Some(error) = &report.hsj_error {
        crate::notice_error!("HotStandbyJobs: {error}");
    }
    for (outcome, error) in report.service_failures() {
        crate::notice_error!(
            "active-standby Services of namespace {}: {error}",
            outcome.plan.namespace
        );
    }
    if let Some(error) = &report.services_error {
        crate::notice_error!("active-standby Services: {error}");
    }
    let format = global.output.clone().unwrap_or(OutputFormat::Table);
    let value = report_json(&report, dry_run);
    let printed = match &format {
        OutputFormat::Name => {
            for outcome in &report.outcomes {
                println!("hotstandbydeployment.apps.paia.tech/{}", outcome.name);
            }
            for outcome in &report.hsj_outcomes {
                println!("hotstandbyjob.apps.paia.tech/{}", outcome.name);
            }
            for outcome in &report.services {
                for service in &outcome.plan.services {
                    println!("service/{}", service.name);
                }
            }
            true
        }
        other => output::print_generic(other, &value, "hotstandbydeployment.apps.paia.tech")?,
    };
    if !printed {
        let any_services = report.services.iter().any(|o| !o.plan.services.is_empty());
        if report.outcomes.is_empty() && report.hsj_outcomes.is_empty() && !any_services {
            crate::notice!("No HotStandbyDeployments found in scope.");
        } else if !report.outcomes.is_empty() || !report.hsj_outcomes.is_empty() {
            print!("{}", summary_table(&report, dry_run));
        }
        if any_services {
            if !report.outcomes.is_empty() || !report.hsj_outcomes.is_empty() {
                println!();
            }
            print!("{}", services_table(&report, dry_run));
        }
    }
    if args.stats {
        crate::notice!(
            "stats: {} HSDs{}, {} pods probed, {} API requests ({} reads, {} writes), {:.3}s",
            report.outcomes.len(),
            if report.hsj_outcomes.is_empty() {
                String::new()
            } else {
                format!(", {} HSJs", report.hsj_outcomes.len())
            },
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

/// The Lease namespace of a cluster-wide watcher started outside a pod (a laptop), where the
/// operator namespace may not exist: create it if this identity may, else use the kubeconfig's
/// namespace. Says which on stderr.
pub async fn laptop_lease_namespace(
    config: &kube::Config,
    wanted: &str,
    kubeconfig_namespace: &str,
) -> Result<String> {
    let (client, _) = crate::client::counted_client(config.clone())?;
    let namespaces: Api<Namespace> = Api::all(client);
    let error = |verb| {
        crate::error::kube_error(
            format!("{verb} namespace {wanted} for the Lease"),
            verb,
            "namespaces",
            None,
        )
    };
    match namespaces.get_opt(wanted).await {
        Ok(Some(_)) => return Ok(wanted.to_string()),
        Ok(None) => {}
        // No right to read namespaces: use it as it is; the lease manager names any failure.
        Err(kube::Error::Api(status)) if status.code == 403 => return Ok(wanted.to_string()),
        Err(e) => return Err(error("get")(e)),
    }
    let namespace: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": wanted, "labels": {"app.kubernetes.io/managed-by": crate::manifests::OPERATOR_NAME}},
    }))
    .map_err(|e| Error::Serialize {
        what: "a namespace".into(),
        message: e.to_string(),
    })?;
    match namespaces.create(&Default::default(), &namespace).await {
        Ok(_) => {
            crate::notice!(
                "namespace {wanted} did not exist: created it for the Lease (use --lease-namespace to choose another)"
            );
            Ok(wanted.to_string())
        }
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(wanted.to_string()),
        Err(kube::Error::Api(status)) if status.code == 403 => {
            crate::notice!(
                "namespace {wanted} does not exist and this identity may not create it: using the Lease in namespace {kubeconfig_namespace} (the kubeconfig's) instead"
            );
            Ok(kubeconfig_namespace.to_string())
        }
        Err(e) => Err(error("create")(e)),
    }
}

/// `--metrics-addr` unless given: every interface inside a pod (the probes and Prometheus reach
/// it there), loopback elsewhere, so that a watcher on a laptop never exposes its metrics; and
/// there, a free loopback port when 8080 is taken (a second watcher on the machine).
fn default_metrics_addr() -> SocketAddr {
    let in_pod = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    let ip = if in_pod {
        std::net::Ipv4Addr::UNSPECIFIED
    } else {
        std::net::Ipv4Addr::LOCALHOST
    };
    let addr = SocketAddr::from((ip, METRICS_PORT));
    if in_pod || std::net::TcpListener::bind(addr).is_ok() {
        return addr;
    }
    crate::notice!("{addr} is in use (another watcher?): serving metrics on a free loopback port");
    SocketAddr::from((ip, 0))
}

async fn watch(
    config: kube::Config,
    scope: crate::observe::Scope,
    lease_namespace: String,
    args: ReconcileArgs,
) -> Result<i32> {
    let metrics_addr = match args.metrics_addr.as_deref() {
        Some("off" | "") => None,
        Some(addr) => Some(
            addr.parse()
                .map_err(|e| crate::Error::Invalid(format!("--metrics-addr {addr:?}: {e}")))?,
        ),
        None => Some(default_metrics_addr()),
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
        exec_probe_concurrency: args.exec_probe_concurrency,
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        crate::watch::shutdown_signal().await;
        crate::notice!("shutting down");
        on_signal.cancel();
        tokio::time::sleep(SHUTDOWN_LIMIT).await;
        crate::notice_warn!(
            "still stopping after {}s (is the API server reachable?): exiting now; the lease expires on its own",
            SHUTDOWN_LIMIT.as_secs()
        );
        std::process::exit(0);
    });
    crate::watch::run(config, options, shutdown).await?;
    Ok(0)
}

fn action(outcome: &crate::once::HsdOutcome, dry_run: DryRun) -> String {
    match dry_run {
        DryRun::None => return outcome.action(),
        DryRun::Server => return format!("{}{}", outcome.action(), dry_run.suffix()),
        DryRun::Client => {}
    }
    match (&outcome.plan.deployment, outcome.plan.scale) {
        (crate::plan::DeploymentAction::Blocked, _) => "blocked".into(),
        (_, Some((from, to))) => format!("would scale {from}->{to}"),
        (crate::plan::DeploymentAction::Apply { .. }, None) => "would apply".into(),
        _ if outcome.plan.status_changed => "would update status".into(),
        _ => "unchanged".into(),
    }
}

fn hsj_action(outcome: &crate::once::HsjOutcome, dry_run: DryRun) -> String {
    if dry_run != DryRun::Client {
        return outcome.action();
    }
    let plan = &outcome.plan;
    if plan.decision.is_none() {
        return "blocked".into();
    }
    let mut parts = Vec::new();
    if !plan.creates.is_empty() {
        parts.push(format!("would create {}", plan.creates.len()));
    }
    if !plan.deletions.is_empty() {
        parts.push(format!("would delete {}", plan.deletions.len()));
    }
    if parts.is_empty() {
        if plan.status_changed {
            "would update status".into()
        } else {
            "unchanged".into()
        }
    } else {
        parts.join(", ")
    }
}

fn summary_table(report: &PassReport, dry_run: DryRun) -> String {
    let hsj_rows = report.hsj_outcomes.iter().map(|o| {
        let counts = o.plan.counts;
        vec![
            o.namespace.clone(),
            format!("hsj/{}", o.name),
            counts.busy.to_string(),
            counts.idle.to_string(),
            counts.starting.to_string(),
            counts.unknown.to_string(),
            o.plan
                .recommendation
                .map_or("-".into(), |r| r.replicas.to_string()),
            hsj_action(o, dry_run),
        ]
    });
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
                o.plan.desired().map_or("-".into(), |r| r.to_string()),
                action(o, dry_run),
            ]
        })
        .chain(hsj_rows)
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
    dry_run: DryRun,
) -> String {
    let action = &service.decision.action;
    if outcome.result.is_err() {
        return "failed".into();
    }
    let quiet = action == "keep" || action == "nothing";
    match (dry_run == DryRun::Client, quiet) {
        (_, true) if service.write.is_some() => "record".into(),
        (_, true) => "unchanged".into(),
        (true, false) => format!("would {action}"),
        (false, false) => action.clone(),
    }
}

fn services_table(report: &PassReport, dry_run: DryRun) -> String {
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

fn report_json(report: &PassReport, dry_run: DryRun) -> serde_json::Value {
    let mut value = hsd_report_json(report, dry_run);
    if !report.hsj_outcomes.is_empty() || report.hsj_error.is_some() {
        value["hotStandbyJobs"] = json!(report.hsj_outcomes.iter().map(|o| json!({
            "namespace": o.namespace,
            "name": o.name,
            "busy": o.plan.counts.busy,
            "idle": o.plan.counts.idle,
            "starting": o.plan.counts.starting,
            "unknown": o.plan.counts.unknown,
            "desiredActive": o.plan.recommendation.map(|r| r.replicas),
            "create": o.plan.creates,
            "delete": o.plan.deletions.iter().map(|d| &d.job).collect::<Vec<_>>(),
            "created": o.result.as_ref().ok().map(|w| &w.created),
            "deleted": o.result.as_ref().ok().map(|w| w.deleted.iter().map(|(n, _)| n).collect::<Vec<_>>()),
            "action": hsj_action(o, dry_run),
            "events": o.plan.events.iter().map(|e| json!({"reason": e.reason, "note": e.note})).collect::<Vec<_>>(),
            "error": o.result.as_ref().err().map(|e| e.to_string()),
        })).collect::<Vec<_>>());
        if let Some(error) = &report.hsj_error {
            value["hotStandbyJobsError"] = json!(error.to_string());
        }
    }
    value
}

fn hsd_report_json(report: &PassReport, dry_run: DryRun) -> serde_json::Value {
    json!({
        "dryRun": dry_run.name(),
        "elapsedSeconds": report.elapsed.as_secs_f64(),
        "writes": report.writes(),
        "items": report.outcomes.iter().map(|o| json!({
            "namespace": o.namespace,
            "name": o.name,
            "busy": o.plan.counts.busy,
            "idle": o.plan.counts.idle,
            "starting": o.plan.counts.starting,
            "unknown": o.plan.counts.unknown,
            "desiredReplicas": o.plan.desired(),
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
