//! `install`: the CRD, and with `--operator`, the unattended reconciler.

use std::io::IsTerminal;

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client};
use serde_json::Value;

use super::{GlobalArgs, InstallArgs};
use crate::api::{HotStandbyDeployment, HotStandbyJob};
use crate::error::{Error, Result, is_not_found, kube_error};
use crate::execute::FIELD_MANAGER;
use crate::manifests::{self, DEFAULT_OPERATOR_NAMESPACE, OperatorOptions};
use kube::CustomResourceExt;

fn operator_options(global: &GlobalArgs, args: &InstallArgs) -> Option<OperatorOptions> {
    args.operator.map(|mode| OperatorOptions {
        mode,
        namespace: operator_namespace(global),
        image: args.image.clone().unwrap_or_else(manifests::default_image),
        namespace_scoped: args.namespace_scoped,
        replicas: args.replicas,
        shards: args.shards,
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

/// Server-side applies one manifest.
pub async fn apply_document(client: &Client, document: &Value) -> Result<String> {
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
        &kind.to_lowercase(),
        None,
    ))?;
    Ok(format!("{}/{name}", kind.to_lowercase()))
}

/// A spinner on stderr, only when stderr is a terminal.
pub fn spinner(message: &str) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message(message.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(100));
    Some(bar)
}

pub async fn install(global: &GlobalArgs, args: InstallArgs) -> Result<i32> {
    let operator = operator_options(global, &args);
    let mut documents = manifests::install_documents(operator.as_ref());
    if args.pod_policy {
        documents.extend(manifests::pod_policy(
            &operator_namespace(global),
            &args.annotation_key,
            args.namespace_scoped,
        ));
    }
    if args.print {
        print!("{}", manifests::to_yaml_documents(&documents));
        return Ok(0);
    }
    let (client, _, _) = crate::client::connect(&global.client_options()).await?;
    let crd_count = manifests::CRD_COUNT;
    for document in &documents[..crd_count] {
        let crd = apply_document(&client, document).await?;
        println!("{crd} serverside-applied");
    }
    let bar = spinner("waiting for the CRDs to be established");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let names = [HotStandbyDeployment::crd_name(), HotStandbyJob::crd_name()];
    let established = tokio::time::timeout(args.timeout, async {
        for name in names {
            await_condition(crds.clone(), name, conditions::is_crd_established())
                .await
                .map_err(|e| Error::Invalid(format!("waiting for {name}: {e}")))?;
            eprintln!("{name} established");
        }
        Ok::<(), Error>(())
    })
    .await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    match established {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return Err(error),
        Err(_) => {
            return Err(Error::Timeout(
                args.timeout,
                format!("{} to be established", names.join(" and ")),
            ));
        }
    }
    for document in &documents[crd_count..] {
        let applied = apply_document(&client, document).await?;
        println!("{applied} serverside-applied");
    }
    Ok(0)
}

pub(super) async fn delete_document(client: &Client, document: &Value) -> Result<()> {
    let (api, kind, name) = api_for(client, document)?;
    match api.delete(&name, &DeleteParams::background()).await {
        Ok(_) => println!("{}/{name} deleted", kind.to_lowercase()),
        Err(e) if is_not_found(&e) => {}
        Err(e) => {
            return Err(kube_error(
                format!("deleting {kind} {name}"),
                "delete",
                &kind.to_lowercase(),
                None,
            )(e));
        }
    }
    Ok(())
}
