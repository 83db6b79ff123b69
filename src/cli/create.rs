//! `create NAME --image IMAGE ...`: a HotStandbyDeployment from flags.

use kube::CustomResourceExt;
use serde_json::{Value, json};

use super::output::{self, OutputFormat};
use super::{CreateArgs, DryRun, GlobalArgs, ProbeArg};
use crate::api::hsd::HotStandbyDeployment;
use crate::error::{Error, Result, is_unknown_type};

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

/// The name kubectl gives the HSD kind in `-o name` and in messages.
const HSD_KIND: &str = "hotstandbydeployment.apps.paia.tech";

pub async fn create(global: &GlobalArgs, args: CreateArgs) -> Result<i32> {
    if global.all_namespaces {
        return Err(Error::Invalid("create takes one namespace, not -A".into()));
    }
    let dry_run = args.writes.dry_run;
    let format = global.output.clone().unwrap_or(OutputFormat::Table);
    let print = |object: &Value, verb: &str| -> Result<()> {
        if !output::print_generic(&format, object, HSD_KIND)? {
            println!("{HSD_KIND}/{} {verb}{}", args.name, dry_run.suffix());
        }
        Ok(())
    };
    if dry_run == DryRun::Client {
        // Like kubectl: the kubeconfig's namespace when there is one; no request is sent.
        let namespace = match &global.namespace {
            Some(namespace) => namespace.clone(),
            None => crate::client::load_config(&global.client_options())
                .await
                .map_or_else(|_| "default".to_string(), |c| c.default_namespace),
        };
        print(&hsd_manifest(&args, &namespace), "created")?;
        return Ok(0);
    }
    let (client, _, default_ns) =
        crate::client::connect(&global.write_client_options(&args.writes)).await?;
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
            kube::Error::Api(status) if is_unknown_type(status) => Error::CrdMissing,
            _ => crate::error::kube_error(
                format!(
                    "creating {HSD_KIND} {:?} in namespace {namespace}",
                    args.name
                ),
                "create",
                "hotstandbydeployments.apps.paia.tech",
                Some(&namespace),
            )(e),
        })?;
    print(
        &serde_json::to_value(&created).unwrap_or_default(),
        "created",
    )?;
    Ok(0)
}
