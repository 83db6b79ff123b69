//! `install`: the CRD, and with `--operator`, the unattended reconciler.

use std::io::IsTerminal;

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client};
use serde_json::Value;

use super::output::{self, OutputFormat};
use super::{DryRun, GlobalArgs, InstallArgs};
use crate::api::{HotStandbyDeployment, HotStandbyJob};
use crate::error::{Error, Result, is_not_found, kube_error};
use crate::execute::FIELD_MANAGER;
use crate::manifests::{self, DEFAULT_OPERATOR_NAMESPACE, OperatorOptions};
use kube::CustomResourceExt;

fn operator_options(global: &GlobalArgs, args: &InstallArgs) -> Option<OperatorOptions> {
    args.operator.map(|mode| OperatorOptions {
        namespace_scoped: args.namespace_scoped,
        replicas: args.replicas,
        shards: args.shards,
        monitor: args.monitor,
        ..OperatorOptions::new(
            mode,
            &operator_namespace(global),
            &args.image.clone().unwrap_or_else(manifests::default_image),
        )
    })
}

pub(super) fn operator_namespace(global: &GlobalArgs) -> String {
    global
        .namespace
        .clone()
        .unwrap_or_else(|| DEFAULT_OPERATOR_NAMESPACE.to_string())
}

/// The API resource of a manifest this tool renders.
fn resource_of(document: &Value) -> Result<(ApiResource, bool)> {
    let kind = document["kind"].as_str().unwrap_or_default();
    let namespaced = !matches!(
        kind,
        "Namespace" | "ClusterRole" | "ClusterRoleBinding" | "CustomResourceDefinition"
    );
    let resource = match kind {
        "Namespace" => ApiResource::erase::<Namespace>(&()),
        "ServiceAccount" => ApiResource::erase::<ServiceAccount>(&()),
        "ClusterRole" => ApiResource::erase::<ClusterRole>(&()),
        "ClusterRoleBinding" => ApiResource::erase::<ClusterRoleBinding>(&()),
        "Role" => ApiResource::erase::<Role>(&()),
        "RoleBinding" => ApiResource::erase::<RoleBinding>(&()),
        "CronJob" => ApiResource::erase::<CronJob>(&()),
        "Deployment" => ApiResource::erase::<Deployment>(&()),
        "Service" => ApiResource::erase::<Service>(&()),
        "PodDisruptionBudget" => ApiResource::erase::<PodDisruptionBudget>(&()),
        "ServiceMonitor" | "PodMonitor" => ApiResource {
            group: "monitoring.coreos.com".into(),
            version: "v1".into(),
            api_version: "monitoring.coreos.com/v1".into(),
            kind: kind.to_string(),
            plural: format!("{}s", kind.to_lowercase()),
        },
        "CustomResourceDefinition" => ApiResource::erase::<CustomResourceDefinition>(&()),
        "ValidatingAdmissionPolicy" => ApiResource::erase::<ValidatingAdmissionPolicy>(&()),
        "ValidatingAdmissionPolicyBinding" => {
            ApiResource::erase::<ValidatingAdmissionPolicyBinding>(&())
        }
        other => {
            return Err(Error::Invalid(format!(
                "no API resource known for kind {other:?}"
            )));
        }
    };
    Ok((resource, namespaced))
}

fn api_for(client: &Client, document: &Value) -> Result<(Api<DynamicObject>, String, String)> {
    let (resource, namespaced) = resource_of(document)?;
    let name = document["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let kind = resource.kind.clone();
    let api = match document["metadata"]["namespace"].as_str() {
        Some(ns) if namespaced => Api::namespaced_with(client.clone(), ns, &resource),
        _ => Api::all_with(client.clone(), &resource),
    };
    Ok((api, kind, name))
}

/// `kind/name` of a manifest, as kubectl prints it.
fn kind_name(document: &Value) -> String {
    format!(
        "{}/{}",
        document["kind"].as_str().unwrap_or_default().to_lowercase(),
        document["metadata"]["name"].as_str().unwrap_or_default()
    )
}

/// Server-side applies one manifest; returns the object as the API server answered.
pub async fn apply_document(client: &Client, document: &Value) -> Result<DynamicObject> {
    let (api, kind, name) = api_for(client, document)?;
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(document),
    )
    .await
    .map_err(kube_error(
        format!("applying {kind} {name}"),
        "patch",
        &plural_of(document),
        document["metadata"]["namespace"].as_str(),
    ))
}

/// The resource name RBAC uses (`clusterroles.rbac.authorization.k8s.io`).
fn plural_of(document: &Value) -> String {
    match resource_of(document) {
        Ok((resource, _)) if resource.group.is_empty() => resource.plural,
        Ok((resource, _)) => format!("{}.{}", resource.plural, resource.group),
        Err(_) => document["kind"].as_str().unwrap_or_default().to_lowercase(),
    }
}

/// A spinner on stderr, only when stderr is a terminal and logs are text (a spinner never
/// goes into JSON logs).
pub fn spinner(global: &GlobalArgs, message: &str) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() || global.log_format != super::LogFormat::Text {
        return None;
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message(message.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(100));
    Some(bar)
}

pub async fn install(global: &GlobalArgs, args: InstallArgs) -> Result<i32> {
    let namespace = operator_namespace(global);
    let operator = operator_options(global, &args);
    let mut documents = manifests::install_documents(&namespace, operator.as_ref());
    if args.pod_policy {
        documents.extend(manifests::pod_policy(
            &namespace,
            &args.annotation_key,
            args.namespace_scoped,
        ));
    }
    let dry_run = args.writes.dry_run;
    let format = global.output.clone().unwrap_or(OutputFormat::Table);
    let listed = |items: Vec<Value>| serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}});
    if args.print || (dry_run == DryRun::Client && format == OutputFormat::Yaml) {
        print!("{}", manifests::to_yaml_documents(&documents));
        return Ok(0);
    }
    if dry_run == DryRun::Client {
        if !print_objects(&format, &listed(documents.clone()))? {
            for document in &documents {
                println!("{} serverside-applied (dry run)", kind_name(document));
            }
        }
        return Ok(0);
    }
    let (client, _, _) = crate::client::connect(&global.write_client_options(&args.writes)).await?;
    let mut applied = Vec::new();
    let quiet = format != OutputFormat::Table && format != OutputFormat::Wide;
    let crd_count = manifests::CRD_COUNT;
    for document in &documents[..crd_count] {
        applied.push(apply_document(&client, document).await?);
        if !quiet {
            println!(
                "{} serverside-applied{}",
                kind_name(document),
                dry_run.suffix()
            );
        }
    }
    // A server-side dry run created no CRD: nothing to wait for.
    if dry_run == DryRun::None {
        wait_until_established(global, args.timeout).await?;
    }
    for document in &documents[crd_count..] {
        applied.push(apply_document(&client, document).await?);
        if !quiet {
            println!(
                "{} serverside-applied{}",
                kind_name(document),
                dry_run.suffix()
            );
        }
    }
    if quiet {
        let items = applied
            .iter()
            .map(|o| serde_json::to_value(o).unwrap_or_default())
            .collect();
        print_objects(&format, &listed(items))?;
    }
    Ok(0)
}

/// `-o json|yaml|name|jsonpath|custom-columns` of a list of objects; false for a table.
fn print_objects(format: &OutputFormat, list: &Value) -> Result<bool> {
    if *format == OutputFormat::Name {
        for item in output::items_of(list) {
            println!("{}", kind_name(item));
        }
        return Ok(true);
    }
    output::print_generic(format, list, "")
}

async fn wait_until_established(global: &GlobalArgs, timeout: std::time::Duration) -> Result<()> {
    let (client, _, _) = crate::client::connect(&global.client_options()).await?;
    let bar = spinner(global, "waiting for the CRDs to be established");
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    let names = [HotStandbyDeployment::crd_name(), HotStandbyJob::crd_name()];
    let established = tokio::time::timeout(timeout, async {
        for name in names {
            await_condition(crds.clone(), name, conditions::is_crd_established())
                .await
                .map_err(|e| {
                    Error::Invalid(format!(
                        "waiting for {name}: {}",
                        crate::error::describe_error(&e)
                    ))
                })?;
            crate::notice!("{name} established");
        }
        Ok::<(), Error>(())
    })
    .await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    match established {
        Ok(result) => result,
        Err(_) => Err(Error::Timeout(
            timeout,
            format!("{} to be established", names.join(" and ")),
        )),
    }
}

/// Deletes one manifest's object if it exists (with `--dry-run=client`, only says so).
pub(super) async fn delete_document(
    client: &Client,
    document: &Value,
    dry_run: DryRun,
) -> Result<()> {
    let (api, kind, name) = api_for(client, document)?;
    let plural = plural_of(document);
    let error = |verb: &'static str| {
        kube_error(
            format!("deleting {kind} {name}"),
            verb,
            &plural,
            document["metadata"]["namespace"].as_str(),
        )
    };
    if dry_run == DryRun::Client {
        if api.get_opt(&name).await.map_err(error("get"))?.is_some() {
            println!("{} deleted (dry run)", kind_name(document));
        }
        return Ok(());
    }
    match api.delete(&name, &DeleteParams::background()).await {
        Ok(_) => println!("{} deleted{}", kind_name(document), dry_run.suffix()),
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(error("delete")(e)),
    }
    Ok(())
}
