//! `get`: HotStandbyDeployments (or, with `hsj`, HotStandbyJobs) as a kubectl table, or
//! `-o json|yaml|name`.

use kube::api::{DynamicObject, ListParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::GlobalArgs;
use super::output::{self, OutputFormat, age_since, table};
use crate::api::hsd::HotStandbyDeploymentStatus;
use crate::error::{Error, Result, hsd_read_error};
use crate::observe::{self, Scope, hsd_resource};
use crate::plan;

pub(super) fn status_of(object: &DynamicObject) -> HotStandbyDeploymentStatus {
    object
        .data
        .get("status")
        .and_then(|s| serde_json::from_value(s.clone()).ok())
        .unwrap_or_default()
}

pub async fn get(global: &GlobalArgs, name: Option<String>) -> Result<i32> {
    let (client, _, default_ns) = crate::client::connect(&global.client_options()).await?;
    let scope = global.scope(&default_ns);
    let api: Api<DynamicObject> = match &scope {
        Scope::Namespace(ns) => Api::namespaced_with(client.clone(), ns, &hsd_resource()),
        Scope::All => Api::all_with(client.clone(), &hsd_resource()),
    };
    let items = match &name {
        Some(name) => {
            if scope == Scope::All {
                return Err(Error::Invalid(
                    "a resource cannot be retrieved by name across all namespaces".into(),
                ));
            }
            match api
                .get_opt(name)
                .await
                .map_err(hsd_read_error(scope.namespace()))?
            {
                Some(object) => vec![object],
                None => {
                    return Err(Error::NotFound {
                        what: format!("hotstandbydeployments.apps.paia.tech {name:?}"),
                    });
                }
            }
        }
        None => {
            api.list(&ListParams::default())
                .await
                .map_err(hsd_read_error(scope.namespace()))?
                .items
        }
    };
    let format = global.output.unwrap_or(OutputFormat::Table);
    match format {
        OutputFormat::Json | OutputFormat::Yaml => {
            let value = if name.is_some() {
                serde_json::to_value(&items[0]).unwrap_or_default()
            } else {
                json!({"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}})
            };
            print!(
                "{}",
                if format == OutputFormat::Json {
                    output::to_json(&value)
                } else {
                    output::to_yaml(&value)
                }
            );
        }
        OutputFormat::Name => {
            for item in &items {
                println!("hotstandbydeployment.apps.paia.tech/{}", item.name_any());
            }
        }
        OutputFormat::Table | OutputFormat::Wide => {
            if items.is_empty() {
                match scope.namespace() {
                    Some(ns) => eprintln!("No resources found in {ns} namespace."),
                    None => eprintln!("No resources found"),
                }
                return Ok(0);
            }
            print!(
                "{}",
                hsd_table(&items, scope == Scope::All, format == OutputFormat::Wide)
            );
        }
    }
    Ok(0)
}

fn hsd_table(items: &[DynamicObject], with_namespace: bool, wide: bool) -> String {
    let mut headers = Vec::new();
    if with_namespace {
        headers.push("NAMESPACE");
    }
    headers.extend([
        "NAME", "BUSY", "IDLE", "STARTING", "UNKNOWN", "DESIRED", "REPLICAS", "AGE",
    ]);
    if wide {
        headers.extend(["IDLE-TARGET", "MIN", "MAX", "PROBE", "READY"]);
    }
    let rows = items
        .iter()
        .map(|item| {
            let status = status_of(item);
            let facts = observe::hsd_facts(item);
            let mut row = Vec::new();
            if with_namespace {
                row.push(item.namespace().unwrap_or_default());
            }
            row.extend([
                item.name_any(),
                status.busy_count.to_string(),
                status.idle_count.to_string(),
                status.starting_count.to_string(),
                status.unknown_count.to_string(),
                status.desired_replicas.to_string(),
                status.replicas.to_string(),
                age_since(item.metadata.creation_timestamp.as_ref()),
            ]);
            if wide {
                let (target, min, max, probe) = match &facts.spec {
                    Ok(spec) => (
                        spec.idle_target.to_string(),
                        spec.min_replicas.to_string(),
                        spec.max_replicas.map_or("<none>".into(), |m| m.to_string()),
                        format!("{:?}", spec.busy_probe.mode).to_lowercase(),
                    ),
                    Err(_) => ("<invalid>".into(), "-".into(), "-".into(), "-".into()),
                };
                let ready = status
                    .conditions
                    .iter()
                    .find(|c| c.type_ == plan::condition::READY)
                    .map_or("<unknown>".into(), |c| c.status.clone());
                row.extend([target, min, max, probe, ready]);
            }
            row
        })
        .collect();
    table(&headers, rows)
}

/// `get hsj [NAME]`: HotStandbyJobs, with the columns of `kubectl get hsj` (`-o wide` adds the
/// starting and unknown counts, the finished Jobs and Ready).
pub async fn get_hsj(global: &GlobalArgs, name: Option<String>) -> Result<i32> {
    let (client, _, default_ns) = crate::client::connect(&global.client_options()).await?;
    let scope = global.scope(&default_ns);
    let resource = crate::observe::jobs::hsj_resource();
    let api: Api<DynamicObject> = match &scope {
        Scope::Namespace(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        Scope::All => Api::all_with(client.clone(), &resource),
    };
    let read_error = |namespace: Option<&str>| {
        let namespace = namespace.map(str::to_string);
        move |e: kube::Error| {
            if crate::error::is_not_found(&e) {
                Error::Invalid(
                    "the HotStandbyJob CRD is not installed: run `kubectl hsd install`".into(),
                )
            } else {
                crate::error::kube_error(
                    "listing HotStandbyJobs",
                    "list",
                    "hotstandbyjobs.apps.paia.tech",
                    namespace.as_deref(),
                )(e)
            }
        }
    };
    let items = match &name {
        Some(name) => {
            if scope == Scope::All {
                return Err(Error::Invalid(
                    "a resource cannot be retrieved by name across all namespaces".into(),
                ));
            }
            match api
                .get_opt(name)
                .await
                .map_err(read_error(scope.namespace()))?
            {
                Some(object) => vec![object],
                None => {
                    return Err(Error::NotFound {
                        what: format!("hotstandbyjobs.apps.paia.tech {name:?}"),
                    });
                }
            }
        }
        None => {
            api.list(&ListParams::default())
                .await
                .map_err(read_error(scope.namespace()))?
                .items
        }
    };
    let format = global.output.unwrap_or(OutputFormat::Table);
    match format {
        OutputFormat::Json | OutputFormat::Yaml => {
            let value = if name.is_some() {
                serde_json::to_value(&items[0]).unwrap_or_default()
            } else {
                json!({"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}})
            };
            print!(
                "{}",
                if format == OutputFormat::Json {
                    output::to_json(&value)
                } else {
                    output::to_yaml(&value)
                }
            );
        }
        OutputFormat::Name => {
            for item in &items {
                println!("hotstandbyjob.apps.paia.tech/{}", item.name_any());
            }
        }
        OutputFormat::Table | OutputFormat::Wide => {
            if items.is_empty() {
                match scope.namespace() {
                    Some(ns) => eprintln!("No resources found in {ns} namespace."),
                    None => eprintln!("No resources found"),
                }
                return Ok(0);
            }
            print!(
                "{}",
                hsj_table(&items, scope == Scope::All, format == OutputFormat::Wide)
            );
        }
    }
    Ok(0)
}

fn hsj_table(items: &[DynamicObject], with_namespace: bool, wide: bool) -> String {
    let mut headers = Vec::new();
    if with_namespace {
        headers.push("NAMESPACE");
    }
    headers.extend([
        "NAME",
        "MODE",
        "IDLE-TARGET",
        "BUSY",
        "IDLE",
        "ACTIVE",
        "DESIRED",
        "JOBS",
        "AGE",
    ]);
    if wide {
        headers.extend([
            "MIN",
            "MAX",
            "STARTING",
            "UNKNOWN",
            "COMPLETED",
            "FAILED",
            "READY",
        ]);
    }
    let rows = items
        .iter()
        .map(|item| {
            let hsj = crate::observe::jobs::hsj_facts(item);
            let status = hsj.status.clone().unwrap_or_default();
            let mut row = Vec::new();
            if with_namespace {
                row.push(hsj.namespace.clone());
            }
            let (mode, target, min, max) = match &hsj.spec {
                Ok(spec) => (
                    spec.busy_probe.mode.as_str().to_string(),
                    spec.idle_target.to_string(),
                    spec.min_replicas.map_or("<none>".into(), |m| m.to_string()),
                    spec.max_replicas.map_or("<none>".into(), |m| m.to_string()),
                ),
                Err(_) => ("<invalid>".into(), "-".into(), "-".into(), "-".into()),
            };
            row.extend([
                hsj.name.clone(),
                mode,
                target,
                status.busy_count.to_string(),
                status.idle_count.to_string(),
                status.active_count.to_string(),
                status.desired_active.to_string(),
                status.child_jobs.to_string(),
                age_since(item.metadata.creation_timestamp.as_ref()),
            ]);
            if wide {
                let ready = status
                    .conditions
                    .iter()
                    .find(|c| c.type_ == plan::condition::READY)
                    .map_or("<unknown>".into(), |c| c.status.clone());
                row.extend([
                    min,
                    max,
                    status.starting_count.to_string(),
                    status.unknown_count.to_string(),
                    status.completed_jobs.to_string(),
                    status.failed_jobs.to_string(),
                    ready,
                ]);
            }
            row
        })
        .collect();
    table(&headers, rows)
}
