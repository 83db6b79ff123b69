//! `create NAME --image IMAGE ...`: a HotStandbyDeployment from flags.

use kube::CustomResourceExt;
use serde_json::{Value, json};

use super::output::{self, OutputFormat};
use super::{CreateArgs, GlobalArgs, ProbeArg};
use crate::api::hsd::HotStandbyDeployment;
use crate::error::{Error, Result, is_not_found};

/// The HSD the flags describe, as a manifest.
pub fn hsd_manifest(args: &CreateArgs, namespace: &str) -> Value {
    let mut container = json!({"name": args.name, "image": args.image});
    let port = args.port.or((args.probe == ProbeArg::Http).then_some(8080));
    if let Some(port) = port {
        container["ports"] = json!([{"containerPort": port, "name": "http"}]);
    }
    let mut busy_probe = json!({"mode": match args.probe { ProbeArg::Annotation => "annotation", ProbeArg::Http => "http" }});
    if args.probe == ProbeArg::Http {
        busy_probe["http"] = json!({
            "port": port.unwrap_or(8080),
            "path": args.http_path.clone().unwrap_or_else(|| "/busy".into()),
        });
    }
    let mut spec = json!({
        "idleTarget": args.idle_target,
        "minReplicas": args.min_replicas,
        "selector": {"matchLabels": {"app": args.name}},
        "podTemplate": {
            "metadata": {"labels": {"app": args.name}},
            "spec": {"containers": [container]},
        },
        "busyProbe": busy_probe,
    });
    if let Some(max) = args.max_replicas {
        spec["maxReplicas"] = json!(max);
    }
    let crd = HotStandbyDeployment::api_resource();
    json!({
        "apiVersion": crd.api_version,
        "kind": crd.kind,
        "metadata": {"name": args.name, "namespace": namespace},
        "spec": spec,
    })
}

pub async fn create(global: &GlobalArgs, args: CreateArgs) -> Result<i32> {
    if global.all_namespaces {
        return Err(Error::Invalid("create takes one namespace, not -A".into()));
    }
    let print = |manifest: &Value| match global.output {
        Some(OutputFormat::Json) => print!("{}", output::to_json(manifest)),
        Some(OutputFormat::Yaml) => print!("{}", output::to_yaml(manifest)),
        _ => {}
    };
    if args.dry_run {
        let namespace = global.namespace.clone().unwrap_or_else(|| "default".into());
        let manifest = hsd_manifest(&args, &namespace);
        match global.output {
            Some(OutputFormat::Json | OutputFormat::Yaml) => print(&manifest),
            _ => println!(
                "hotstandbydeployment.apps.paia.tech/{} created (dry run)",
                args.name
            ),
        }
        return Ok(0);
    }
    let (client, _, default_ns) = crate::client::connect(&global.client_options()).await?;
    let namespace = global.namespace.clone().unwrap_or(default_ns);
    let manifest = hsd_manifest(&args, &namespace);
    let api: kube::Api<kube::api::DynamicObject> =
        kube::Api::namespaced_with(client, &namespace, &crate::observe::hsd_resource());
    let object: kube::api::DynamicObject =
        serde_json::from_value(manifest).map_err(|e| Error::Serialize {
            what: "the HotStandbyDeployment".into(),
            message: e.to_string(),
        })?;
    let created = api
        .create(&kube::api::PostParams::default(), &object)
        .await
        .map_err(|e| match &e {
            kube::Error::Api(status) if status.code == 409 => Error::Invalid(format!(
                "hotstandbydeployments.apps.paia.tech {:?} already exists in namespace {namespace}",
                args.name
            )),
            _ if is_not_found(&e) => Error::CrdMissing,
            _ => crate::error::kube_error(
                "creating the HotStandbyDeployment",
                "create",
                "hotstandbydeployments.apps.paia.tech",
                Some(&namespace),
            )(e),
        })?;
    match global.output {
        Some(OutputFormat::Json | OutputFormat::Yaml) => {
            print(&serde_json::to_value(&created).unwrap_or_default())
        }
        Some(OutputFormat::Name) => println!("hotstandbydeployment.apps.paia.tech/{}", args.name),
        _ => println!("hotstandbydeployment.apps.paia.tech/{} created", args.name),
    }
    Ok(0)
}
