//! `create NAME --image IMAGE ...`: a HotStandbyDeployment from flags; `create hsj NAME
//! --image IMAGE ... --probe exec --exec-command '...'`: a HotStandbyJob.

use kube::CustomResourceExt;
use kube::api::ApiResource;
use serde_json::{Value, json};

use super::output::{self, OutputFormat};
use super::{CreateArgs, DryRun, GlobalArgs, Kind, ProbeArg};
use crate::api::hsd::HotStandbyDeployment;
use crate::api::hsj::HotStandbyJob;
use crate::error::{Error, Result, is_unknown_type};

/// Splits a command line into words as a POSIX shell would, without running a shell (the shlex
/// crate): whitespace separates words, single quotes keep everything, double quotes keep
/// everything but `\"`, `\\`, `\$` and `` \` ``, and a backslash outside quotes escapes the next
/// character.
pub fn split_command(line: &str) -> std::result::Result<Vec<String>, String> {
    let words = shlex::split(line)
        .ok_or_else(|| format!("an unterminated quote or a trailing backslash in {line:?}"))?;
    if words.is_empty() {
        return Err("the command is empty".into());
    }
    Ok(words)
}

/// The kind and name the positional arguments give: `NAME` or `KIND NAME`.
fn kind_and_name(args: &CreateArgs) -> Result<(Kind, String)> {
    match args.names.as_slice() {
        [name] => Ok((Kind::Hsd, name.clone())),
        [kind, name] => match Kind::named_by(kind) {
            Some(kind @ (Kind::Hsd | Kind::Hsj)) => Ok((kind, name.clone())),
            _ => Err(Error::Invalid(format!(
                "create takes NAME or KIND NAME (hsd NAME, hsj NAME), not {kind:?}"
            ))),
        },
        _ => Err(Error::Invalid("create takes NAME or KIND NAME".into())),
    }
}

/// The busyProbe the flags describe.
fn busy_probe(args: &CreateArgs, port: Option<i32>) -> Result<Value> {
    if args.probe != ProbeArg::Exec
        && (args.exec_command.is_some() || args.exec_container.is_some())
    {
        return Err(Error::Invalid(
            "--exec-command and --exec-container need --probe exec".into(),
        ));
    }
    let mode = match args.probe {
        ProbeArg::Annotation => "annotation",
        ProbeArg::Http => "http",
        ProbeArg::Exec => "exec",
    };
    let mut probe = json!({"mode": mode});
    match args.probe {
        ProbeArg::Annotation => {}
        ProbeArg::Http => {
            probe["http"] = json!({
                "port": port.unwrap_or(8080),
                "path": args.http_path.clone().unwrap_or_else(|| "/busy".into()),
                "successIsBusy": !args.success_is_idle,
            });
        }
        ProbeArg::Exec => {
            let mut exec = json!({"successIsBusy": !args.success_is_idle});
            if let Some(line) = &args.exec_command {
                exec["command"] = json!(
                    split_command(line)
                        .map_err(|e| Error::Invalid(format!("--exec-command: {e}")))?
                );
            }
            if let Some(container) = &args.exec_container {
                exec["container"] = json!(container);
            }
            probe["exec"] = exec;
        }
    }
    Ok(probe)
}

/// The HSD the flags describe, as a manifest.
pub fn hsd_manifest(args: &CreateArgs, name: &str, namespace: &str) -> Result<Value> {
    if args.command.is_some()
        || args.scale_down_delay.is_some()
        || args.ttl_after_finished.is_some()
    {
        return Err(Error::Invalid(
            "--command, --scale-down-delay and --ttl-after-finished are for `create hsj NAME`"
                .into(),
        ));
    }
    let mut container = json!({"name": name, "image": args.image});
    let port = args.port.or((args.probe == ProbeArg::Http).then_some(8080));
    if let Some(port) = port {
        container["ports"] = json!([{"containerPort": port, "name": "http"}]);
    }
    let mut spec = json!({
        "idleTarget": args.idle_target,
        "minReplicas": args.min_replicas,
        "selector": {"matchLabels": {"app": name}},
        "podTemplate": {
            "metadata": {"labels": {"app": name}},
            "spec": {"containers": [container]},
        },
        "busyProbe": busy_probe(args, port)?,
    });
    if let Some(max) = args.max_replicas {
        spec["maxReplicas"] = json!(max);
    }
    let crd = HotStandbyDeployment::api_resource();
    Ok(json!({
        "apiVersion": crd.api_version,
        "kind": crd.kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }))
}

/// The HSJ the flags describe, as a manifest: the full jobTemplate form, one container named
/// from the HSJ, one pod per Job (`parallelism: 1`, `backoffLimit: 0`).
pub fn hsj_manifest(args: &CreateArgs, name: &str, namespace: &str) -> Result<Value> {
    let mut container = json!({
        "name": crate::plan::hsj::template::container_name(name),
        "image": args.image,
    });
    if let Some(line) = &args.command {
        container["command"] =
            json!(split_command(line).map_err(|e| Error::Invalid(format!("--command: {e}")))?);
    }
    let port = args.port.or((args.probe == ProbeArg::Http).then_some(8080));
    if let Some(port) = port {
        container["ports"] = json!([{"containerPort": port, "name": "http"}]);
    }
    let mut spec = json!({
        "idleTarget": args.idle_target,
        "minReplicas": args.min_replicas,
        "scaleDownDelaySeconds": args.scale_down_delay.unwrap_or(crate::api::hsj::DEFAULT_SCALE_DOWN_DELAY_SECONDS),
        "selector": {"matchLabels": {"app": name}},
        "jobTemplate": {
            "parallelism": 1,
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": args.ttl_after_finished.unwrap_or(60),
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"restartPolicy": "Never", "containers": [container]},
            },
        },
        "busyProbe": busy_probe(args, port)?,
    });
    if let Some(max) = args.max_replicas {
        spec["maxReplicas"] = json!(max);
    }
    let crd = HotStandbyJob::api_resource();
    Ok(json!({
        "apiVersion": crd.api_version,
        "kind": crd.kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }))
}

/// The name kubectl gives the HSD kind in `-o name` and in messages.
const HSD_KIND: &str = "hotstandbydeployment.apps.paia.tech";

pub async fn create(global: &GlobalArgs, args: CreateArgs) -> Result<i32> {
    if global.all_namespaces {
        return Err(Error::Invalid("create takes one namespace, not -A".into()));
    }
    let (kind, name) = kind_and_name(&args)?;
    let (resource, singular): (ApiResource, &str) = match kind {
        Kind::Hsd => (crate::observe::hsd_resource(), HSD_KIND),
        Kind::Hsj | Kind::Service => (
            crate::observe::jobs::hsj_resource(),
            "hotstandbyjob.apps.paia.tech",
        ),
    };
    let manifest_for = |namespace: &str| match kind {
        Kind::Hsd => hsd_manifest(&args, &name, namespace),
        Kind::Hsj | Kind::Service => hsj_manifest(&args, &name, namespace),
    };
    let dry_run = args.writes.dry_run;
    let format = global.output.clone().unwrap_or(OutputFormat::Table);
    let print = |object: &Value, verb: &str| -> Result<()> {
        if !output::print_generic(&format, object, singular)? {
            println!("{singular}/{name} {verb}{}", dry_run.suffix());
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
        print(&manifest_for(&namespace)?, "created")?;
        return Ok(0);
    }
    let (client, _, default_ns) =
        crate::client::connect(&global.write_client_options(&args.writes)).await?;
    let namespace = global.namespace.clone().unwrap_or(default_ns);
    let manifest = manifest_for(&namespace)?;
    let api: kube::Api<kube::api::DynamicObject> =
        kube::Api::namespaced_with(client, &namespace, &resource);
    let object: kube::api::DynamicObject =
        serde_json::from_value(manifest).map_err(|e| Error::Serialize {
            what: format!("the {}", resource.kind),
            message: e.to_string(),
        })?;
    let created = api
        .create(&kube::api::PostParams::default(), &object)
        .await
        .map_err(|e| match &e {
            kube::Error::Api(status) if is_unknown_type(status) => match kind {
                Kind::Hsd => Error::CrdMissing,
                Kind::Hsj | Kind::Service => Error::Invalid(
                    "the HotStandbyJob CRD is not installed: run `kubectl hsd install`".into(),
                ),
            },
            _ => crate::error::kube_error(
                format!("creating {singular} {name:?} in namespace {namespace}"),
                "create",
                &format!("{}.{}", resource.plural, resource.group),
                Some(&namespace),
            )(e),
        })?;
    print(
        &serde_json::to_value(&created).unwrap_or_default(),
        "created",
    )?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_split_like_a_shell_without_one() {
        let cases: [(&str, &[&str]); 6] = [
            ("cat /tmp/busy_state", &["cat", "/tmp/busy_state"]),
            (
                "  sh -c 'test -f /tmp/busy && echo yes'  ",
                &["sh", "-c", "test -f /tmp/busy && echo yes"],
            ),
            (
                r#"echo "a \"quoted\" word" b"#,
                &["echo", "a \"quoted\" word", "b"],
            ),
            (r"a\ b c", &["a b", "c"]),
            ("''", &[""]),
            ("x''y", &["xy"]),
        ];
        for (line, words) in cases {
            assert_eq!(split_command(line).unwrap(), words, "{line}");
        }
        for bad in ["", "   ", "'open", "\"open", "trailing\\"] {
            assert!(split_command(bad).is_err(), "{bad:?}");
        }
    }
}
