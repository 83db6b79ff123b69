//! `get services` (`get svc`) and `explain svc/NAME`: active-standby Services as the record on
//! each Service has them, with what a pass would decide now. They read as a pass reads
//! (Services, their namespaces' pods, HSDs for the busy order) and write nothing.

use std::fmt::Write as _;

use kube::api::{DynamicObject, ListParams};
use kube::{Api, Client};
use serde_json::json;

use super::GlobalArgs;
use super::output::{self, OutputFormat, human_age, table};
use crate::error::{Error, Result};
use crate::observe::{Scope, hsd_resource};
use crate::plan::active_standby::{NamespacePlan, ServiceDecision, ServicePlan, plan};

/// The resource names `get` and `explain` take for Services.
pub fn is_service_type(word: &str) -> bool {
    matches!(
        word.to_ascii_lowercase().as_str(),
        "svc" | "service" | "services"
    )
}

/// Reads and plans every namespace of the scope that has an active-standby Service (or a record
/// to clean up).
async fn planned(client: &Client, scope: &Scope) -> Result<Vec<NamespacePlan>> {
    // HSDs only order the candidates: without the CRD (or the right to list it), none.
    let hsds: Vec<DynamicObject> = {
        let api: Api<DynamicObject> = match scope {
            Scope::Namespace(ns) => Api::namespaced_with(client.clone(), ns, &hsd_resource()),
            Scope::All => Api::all_with(client.clone(), &hsd_resource()),
        };
        api.list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
    };
    let services = crate::observe::services::list_services(client, scope).await?;
    let namespaces = crate::observe::services::read_scope(client, scope, services, &hsds).await?;
    let now = jiff::Timestamp::now();
    Ok(namespaces
        .iter()
        .map(|observed| plan(observed, now))
        .filter(|p| !p.services.is_empty())
        .collect())
}

fn since(decision: &ServiceDecision) -> String {
    decision
        .since
        .as_deref()
        .and_then(|s| s.parse::<jiff::Timestamp>().ok())
        .map_or("<none>".into(), |t| {
            human_age(jiff::Timestamp::now().duration_since(t).as_secs())
        })
}

fn ready(decision: &ServiceDecision) -> String {
    match decision.recorded_master_ready {
        Some(true) => "True".into(),
        Some(false) => "False".into(),
        None => "<none>".into(),
    }
}

fn row_json(namespace: &str, service: &ServicePlan) -> serde_json::Value {
    let d = &service.decision;
    json!({
        "namespace": namespace,
        "name": service.name,
        "activeStandby": d.enabled,
        "master": d.recorded_master,
        "masterReady": d.recorded_master_ready,
        "candidates": d.candidates,
        "since": d.since,
        "failovers": d.failovers,
        "epoch": d.epoch,
        "warning": d.warning,
        "nextPass": d.action,
    })
}

pub async fn get(global: &GlobalArgs, name: Option<&str>) -> Result<i32> {
    let (client, _, default_ns) = crate::client::connect(&global.client_options()).await?;
    let scope = global.scope(&default_ns);
    if name.is_some() && scope == Scope::All {
        return Err(Error::Invalid(
            "a resource cannot be retrieved by name across all namespaces".into(),
        ));
    }
    let plans = planned(&client, &scope).await?;
    let rows: Vec<(&str, &ServicePlan)> = plans
        .iter()
        .flat_map(|p| p.services.iter().map(move |s| (p.namespace.as_str(), s)))
        .filter(|(_, s)| name.is_none_or(|n| s.name == n))
        .collect();
    if let Some(name) = name
        && rows.is_empty()
    {
        return Err(Error::NotFound {
            what: format!(
                "active-standby service {name:?} in namespace {}",
                scope.namespace().unwrap_or_default()
            ),
        });
    }
    match global.output.clone().unwrap_or(OutputFormat::Table) {
        OutputFormat::Name => {
            for (_, service) in &rows {
                println!("service/{}", service.name);
            }
        }
        format @ (OutputFormat::Json
        | OutputFormat::Yaml
        | OutputFormat::JsonPath(_)
        | OutputFormat::CustomColumns(_)) => {
            let value = json!({"apiVersion": "v1", "kind": "List", "items": rows.iter().map(|(ns, s)| row_json(ns, s)).collect::<Vec<_>>()});
            output::print_generic(&format, &value, "service")?;
        }
        format @ (OutputFormat::Table | OutputFormat::Wide) => {
            if rows.is_empty() {
                match scope.namespace() {
                    Some(ns) => eprintln!("No active-standby services found in {ns} namespace."),
                    None => eprintln!("No active-standby services found"),
                }
                return Ok(0);
            }
            let all = scope == Scope::All;
            let wide = format == OutputFormat::Wide;
            let mut headers = Vec::new();
            if all {
                headers.push("NAMESPACE");
            }
            headers.extend([
                "NAME",
                "MASTER",
                "READY",
                "CANDIDATES",
                "SINCE",
                "FAILOVERS",
            ]);
            if wide {
                headers.extend(["EPOCH", "NEXT PASS", "WARNING"]);
            }
            let table_rows = rows
                .iter()
                .map(|(ns, s)| {
                    let d = &s.decision;
                    let mut row = Vec::new();
                    if all {
                        row.push(ns.to_string());
                    }
                    row.extend([
                        s.name.clone(),
                        d.recorded_master.clone().unwrap_or_else(|| "<none>".into()),
                        ready(d),
                        d.candidates.to_string(),
                        since(d),
                        d.failovers.to_string(),
                    ]);
                    if wide {
                        row.extend([
                            d.epoch.to_string(),
                            d.action.clone(),
                            d.warning.clone().unwrap_or_else(|| "<none>".into()),
                        ]);
                    }
                    row
                })
                .collect();
            print!("{}", table(&headers, table_rows));
        }
    }
    Ok(0)
}

pub async fn explain(global: &GlobalArgs, name: &str) -> Result<i32> {
    let (client, _, default_ns) = crate::client::connect(&global.client_options()).await?;
    let Scope::Namespace(namespace) = global.scope(&default_ns) else {
        return Err(Error::Invalid("explain takes one namespace, not -A".into()));
    };
    let plans = planned(&client, &Scope::Namespace(namespace.clone())).await?;
    let Some(service) = plans
        .iter()
        .flat_map(|p| &p.services)
        .find(|s| s.name == name)
    else {
        let services: Api<DynamicObject> = Api::namespaced_with(
            client.clone(),
            &namespace,
            &crate::observe::services::service_resource(),
        );
        let exists = services
            .get_opt(name)
            .await
            .map_err(crate::error::kube_error(
                format!("reading Service {namespace}/{name}"),
                "get",
                "services",
                Some(&namespace),
            ))?
            .is_some();
        return Err(if exists {
            Error::Invalid(format!(
                "service {namespace}/{name} is not active-standby: annotate it {}={}",
                crate::api::active_standby::SERVICE_MODE_ANNOTATION,
                crate::api::active_standby::ACTIVE_STANDBY
            ))
        } else {
            Error::NotFound {
                what: format!("service {name:?} in namespace {namespace}"),
            }
        });
    };
    match global.output {
        Some(OutputFormat::Json) => print!("{}", output::to_json(&service.decision)),
        Some(OutputFormat::Yaml) => print!("{}", output::to_yaml(&service.decision)),
        _ => print!("{}", render(&namespace, service)),
    }
    Ok(0)
}

fn render(namespace: &str, service: &ServicePlan) -> String {
    let d = &service.decision;
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{namespace}/{}: {}",
        service.name,
        match &d.recorded_master {
            Some(master) => format!(
                "master {master} (epoch {}, since {}, {} failover{})",
                d.epoch,
                since(d),
                d.failovers,
                if d.failovers == 1 { "" } else { "s" }
            ),
            None => "no master".into(),
        }
    );
    if !d.selector.is_empty() {
        let selector: Vec<String> = d.selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            text,
            "  selector     {} (+ {}={})",
            selector.join(","),
            crate::api::active_standby::DESIGNATION_LABEL,
            crate::api::active_standby::ACTIVE
        );
    }
    let eligible = d.pods.iter().filter(|p| p.ineligible.is_none()).count();
    let _ = writeln!(
        text,
        "  pods         {} selected, {eligible} eligible (Ready, with a pod IP, not being deleted or drained)",
        d.pods.len()
    );
    let rows: Vec<Vec<String>> = d
        .pods
        .iter()
        .map(|p| {
            vec![
                format!("    {}", p.name),
                match (p.role.as_str(), p.rank) {
                    ("candidate", Some(rank)) => format!("candidate #{rank}"),
                    (role, _) => role.to_string(),
                },
                match p.ineligible {
                    Some(why) => why.describe().trim_start_matches("is ").to_string(),
                    None => format!(
                        "Ready since {}",
                        p.ready_since.as_deref().unwrap_or("<unknown>")
                    ),
                },
                format!("{:?}", p.busy).to_lowercase(),
                if p.labelled { "labelled" } else { "" }.to_string(),
            ]
        })
        .collect();
    if !rows.is_empty() {
        // A borderless table without its header, indented under "pods".
        let rendered = table(&["", "", "", "", ""], rows);
        for line in rendered.lines().skip(1) {
            let _ = writeln!(text, "{line}");
        }
    }
    if let Some(warning) = &d.warning {
        let _ = writeln!(text, "  warning      {warning}");
    }
    let _ = writeln!(text, "  next pass    {}", d.action);
    let _ = writeln!(text, "why:");
    for line in &d.why {
        let _ = writeln!(text, "  - {line}");
    }
    text
}
