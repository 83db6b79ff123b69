//! `get`: HotStandbyDeployments as `kubectl get hsd` shows them (the CRD's printer columns,
//! read from the same definition the CRD is generated from), or any `-o` format; with `hsj`,
//! HotStandbyJobs.

use kube::api::{DynamicObject, ListParams};
use kube::{Api, CustomResourceExt};
use serde_json::{Value, json};

use super::GlobalArgs;
use super::jsonpath::{Template, value_text};
use super::output::{self, OutputFormat, age_since, human_age, table};
use crate::api::hsd::HotStandbyDeployment;
use crate::error::{Error, Result, hsd_read_error};
use crate::observe::{Scope, hsd_resource};
use crate::plan;

/// The HSD kind as kubectl names it in `-o name`.
const HSD_KIND: &str = "hotstandbydeployment.apps.paia.tech";

pub async fn get(global: &GlobalArgs, name: Option<String>) -> Result<i32> {
    let (client, _, default_ns) = crate::client::connect(&global.client_options()).await?;
    let scope = global.scope(&default_ns);
    let namespace = scope.namespace();
    let (items, value) = read_for_get(&client, &scope, &hsd_resource(), name.as_deref(), &|e| {
        hsd_read_error(namespace)(e)
    })
    .await?;
    let format = global.output.clone().unwrap_or(OutputFormat::Table);
    if output::print_generic(&format, &value, HSD_KIND)? {
        return Ok(0);
    }
    if items.is_empty() {
        match scope.namespace() {
            Some(ns) => crate::notice!("No resources found in {ns} namespace."),
            None => crate::notice!("No resources found"),
        }
        return Ok(0);
    }
    let objects: Vec<Value> = items
        .iter()
        .map(|item| serde_json::to_value(item).unwrap_or_default())
        .collect();
    print!(
        "{}",
        hsd_table(&objects, scope == Scope::All, format == OutputFormat::Wide)
    );
    Ok(0)
}

/// One printer column of the CRD.
struct Column {
    header: String,
    kind: String,
    path: Option<Template>,
}

/// The CRD's printer columns (priority 0, and with `wide` the rest), in its order.
fn printer_columns(wide: bool) -> Vec<Column> {
    let crd = HotStandbyDeployment::crd();
    crd.spec
        .versions
        .iter()
        .find(|v| v.storage)
        .and_then(|v| v.additional_printer_columns.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|c| wide || c.priority.unwrap_or(0) == 0)
        .map(|c| Column {
            header: c.name.to_uppercase(),
            kind: c.type_,
            path: Template::parse(&format!("{{{}}}", c.json_path)).ok(),
        })
        .collect()
}

/// A cell as the API server's table converter makes it for a CRD (the first result of the
/// path, typed by the column), and as kubectl prints it: dates as ages, a missing value empty.
fn cell(column: &Column, object: &Value) -> String {
    let first = column
        .path
        .as_ref()
        .and_then(|path| path.values(object).ok())
        .and_then(|values| values.into_iter().next().cloned());
    match (column.kind.as_str(), first) {
        (_, None | Some(Value::Null)) => String::new(),
        ("date", Some(Value::String(text))) => match text.parse::<jiff::Timestamp>() {
            Ok(time) => human_age(jiff::Timestamp::now().duration_since(time).as_secs()),
            Err(_) => "<invalid>".into(),
        },
        ("integer", Some(Value::Number(n))) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .map_or(String::new(), |i| i.to_string()),
        (_, Some(value)) => value_text(&value),
    }
}

fn hsd_table(objects: &[Value], with_namespace: bool, wide: bool) -> String {
    let columns = printer_columns(wide);
    let mut headers = Vec::new();
    if with_namespace {
        headers.push("NAMESPACE".to_string());
    }
    headers.push("NAME".to_string());
    headers.extend(columns.iter().map(|c| c.header.clone()));
    let rows = objects
        .iter()
        .map(|object| {
            let mut row = Vec::new();
            if with_namespace {
                row.push(value_text(&object["metadata"]["namespace"]));
            }
            row.push(value_text(&object["metadata"]["name"]));
            row.extend(columns.iter().map(|column| cell(column, object)));
            row
        })
        .collect();
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    table(&headers, rows)
}

/// What `get` reads: the object named (in one namespace) or every object of the scope, and the
/// value `-o` prints (that object, or a List of them).
async fn read_for_get(
    client: &kube::Client,
    scope: &Scope,
    resource: &kube::api::ApiResource,
    name: Option<&str>,
    read_error: &dyn Fn(kube::Error) -> Error,
) -> Result<(Vec<DynamicObject>, Value)> {
    let api: Api<DynamicObject> = match scope {
        Scope::Namespace(ns) => Api::namespaced_with(client.clone(), ns, resource),
        Scope::All => Api::all_with(client.clone(), resource),
    };
    let Some(name) = name else {
        let items = api
            .list(&ListParams::default())
            .await
            .map_err(read_error)?
            .items;
        let value = json!({"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}});
        return Ok((items, value));
    };
    if *scope == Scope::All {
        return Err(Error::Invalid(
            "a resource cannot be retrieved by name across all namespaces".into(),
        ));
    }
    match api.get_opt(name).await.map_err(read_error)? {
        Some(object) => {
            let value = serde_json::to_value(&object).unwrap_or_default();
            Ok((vec![object], value))
        }
        None => Err(Error::NotFound {
            what: format!("{}.{} {name:?}", resource.plural, resource.group),
        }),
    }
}

/// `get hsj [NAME]`: HotStandbyJobs, with the columns of `kubectl get hsj` (`-o wide` adds the
/// starting and unknown counts, the finished Jobs and Ready).
pub async fn get_hsj(global: &GlobalArgs, name: Option<String>) -> Result<i32> {
    let (client, _, default_ns) = crate::client::connect(&global.client_options()).await?;
    let scope = global.scope(&default_ns);
    let namespace = scope.namespace();
    let (items, value) = read_for_get(
        &client,
        &scope,
        &crate::observe::jobs::hsj_resource(),
        name.as_deref(),
        &|e| crate::error::hsj_read_error(namespace)(e),
    )
    .await?;
    let format = global.output.clone().unwrap_or(OutputFormat::Table);
    if output::print_generic(&format, &value, "hotstandbyjob.apps.paia.tech")? {
        return Ok(0);
    }
    if items.is_empty() {
        match scope.namespace() {
            Some(ns) => crate::notice!("No resources found in {ns} namespace."),
            None => crate::notice!("No resources found"),
        }
        return Ok(0);
    }
    print!(
        "{}",
        hsj_table(&items, scope == Scope::All, format == OutputFormat::Wide)
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_columns_are_the_crds_printer_columns() {
        let headers: Vec<String> = printer_columns(false)
            .into_iter()
            .map(|c| c.header)
            .collect();
        assert_eq!(
            headers,
            ["READY", "BUSY", "IDLE", "DESIRED", "REPLICAS", "AGE"]
        );
        let wide: Vec<String> = printer_columns(true)
            .into_iter()
            .map(|c| c.header)
            .collect();
        assert_eq!(
            wide,
            [
                "READY",
                "BUSY",
                "IDLE",
                "DESIRED",
                "REPLICAS",
                "STARTING",
                "UNKNOWN",
                "OLD",
                "IDLE-TARGET",
                "MIN",
                "MAX",
                "PROBE",
                "AGE"
            ]
        );
    }

    #[test]
    fn cells_read_like_kubectl() {
        let object = json!({
            "metadata": {"name": "a", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"idleTarget": 3},
            "status": {"busyCount": 2, "conditions": [{"type": "Ready", "status": "True"}]},
        });
        let text = hsd_table(&[object], false, false);
        let mut lines = text.lines();
        assert_eq!(
            lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
            [
                "NAME", "READY", "BUSY", "IDLE", "DESIRED", "REPLICAS", "AGE"
            ]
        );
        let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        // Missing values are empty cells, as kubectl prints them.
        assert_eq!(&row[..3], ["a", "True", "2"]);
        assert_eq!(row.len(), 4, "{row:?}");
        assert!(row[3].ends_with('d') || row[3].ends_with('y'), "{row:?}");
    }
}
