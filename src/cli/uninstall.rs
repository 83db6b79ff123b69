//! `uninstall`: removes one install, and the CRD when nothing needs it any more.

use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
use kube::api::{DynamicObject, ListParams};
use kube::{Api, Client};
use serde_json::Value;

use super::install::{delete_document, operator_namespace};
use super::{GlobalArgs, UninstallArgs};
use crate::error::{Error, Result, is_not_found, kube_error};
use crate::manifests::{self, DEFAULT_OPERATOR_NAMESPACE, OperatorOptions};

/// Removes one install (the operator objects of `-n`, default hsd-system, of every mode, and its
/// pod policy), and the CRD when nothing needs it any more. It first checks for HSDs, and it
/// never touches another install's objects.
pub async fn uninstall(global: &GlobalArgs, args: UninstallArgs) -> Result<i32> {
    let dry_run = args.writes.dry_run;
    let (client, _, _) = crate::client::connect(&global.write_client_options(&args.writes)).await?;
    let namespace = operator_namespace(global);

    // First, before deleting anything: do HSDs or HSJs still exist?
    let mut crd_installed = false;
    let mut existing = Vec::new();
    for (resource, plural) in [
        (
            crate::observe::hsd_resource(),
            "hotstandbydeployments.apps.paia.tech",
        ),
        (
            crate::observe::jobs::hsj_resource(),
            "hotstandbyjobs.apps.paia.tech",
        ),
    ] {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        match api.list(&ListParams::default().limit(1)).await {
            Ok(list) => {
                crd_installed = true;
                if !list.items.is_empty() {
                    existing.push(resource.kind.clone());
                }
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                return Err(kube_error(
                    format!("listing {plural}"),
                    "list",
                    plural,
                    None,
                )(e));
            }
        }
    }

    // This install's objects, newest first; those that are absent are skipped.
    let mut documents = Vec::new();
    for mode in [
        manifests::OperatorMode::Deployment,
        manifests::OperatorMode::Cronjob,
    ] {
        // Every variant of the mode: scoped or not, with either monitor.
        let variants = [
            (false, Some(manifests::MonitorKind::ServiceMonitor)),
            (true, Some(manifests::MonitorKind::PodMonitor)),
        ]
        .map(|(namespace_scoped, monitor)| OperatorOptions {
            namespace_scoped,
            monitor,
            ..OperatorOptions::new(mode, &namespace, &manifests::default_image())
        });
        let rendered = manifests::aggregated_roles(&namespace)
            .into_iter()
            .chain(variants.iter().flat_map(manifests::operator))
            .chain(manifests::pod_policy(&namespace, "", false));
        for document in rendered.collect::<Vec<_>>().into_iter().rev() {
            // A namespace the user named may hold other things: only ours is deleted.
            let foreign_namespace =
                document["kind"] == "Namespace" && namespace != DEFAULT_OPERATOR_NAMESPACE;
            let key = (
                document["kind"].clone(),
                document["metadata"]["name"].clone(),
            );
            if !foreign_namespace
                && !documents
                    .iter()
                    .any(|d: &Value| (d["kind"].clone(), d["metadata"]["name"].clone()) == key)
            {
                documents.push(document);
            }
        }
    }
    for document in &documents {
        delete_document(&client, document, dry_run).await?;
    }

    if !crd_installed {
        crate::notice!("the CRDs are not installed");
        return Ok(0);
    }
    if !existing.is_empty() && !args.force {
        let kinds: Vec<String> = existing.iter().map(|kind| format!("{kind}s")).collect();
        let named = match kinds.as_slice() {
            [one] => format!("{one} still exist"),
            [first, rest @ ..] => format!("{first} still exist (and {})", rest.join(", ")),
            [] => unreachable!("checked above"),
        };
        return Err(Error::Invalid(format!(
            "{named}: the CRDs stay, because deleting them would delete them, with their Deployments, Jobs and pods. \
             Delete them first, or pass --force"
        )));
    }
    let others = other_installs(&client, &namespace).await;
    if !others.is_empty() && !args.force {
        crate::notice!(
            "the CRD stays: other installs use it (namespaces {}); pass --force to delete it anyway",
            others.join(", ")
        );
        return Ok(0);
    }
    for crd in manifests::crds() {
        delete_document(&client, &crd, dry_run).await?;
    }
    Ok(0)
}

/// The namespaces of the other installs of kubectl-hsd (found by the label every install puts on
/// its Roles and ClusterRoles). Unknown (no right to list) counts as none.
async fn other_installs(client: &Client, namespace: &str) -> Vec<String> {
    let selector = format!("{key},{key}!={namespace}", key = manifests::INSTALL_LABEL);
    let params = ListParams::default().labels(&selector);
    let mut found = std::collections::BTreeSet::new();
    let cluster_roles: Api<ClusterRole> = Api::all(client.clone());
    if let Ok(list) = cluster_roles.list(&params).await {
        found.extend(list.items.iter().filter_map(|role| {
            role.metadata
                .labels
                .as_ref()?
                .get(manifests::INSTALL_LABEL)
                .cloned()
        }));
    }
    let roles: Api<Role> = Api::all(client.clone());
    if let Ok(list) = roles.list(&params).await {
        found.extend(list.items.iter().filter_map(|role| {
            role.metadata
                .labels
                .as_ref()?
                .get(manifests::INSTALL_LABEL)
                .cloned()
        }));
    }
    found.into_iter().collect()
}
