//! The Helm chart and the kustomize tree (#17): rendered by the real `helm` and `kubectl
//! kustomize`, they hold exactly what `kubectl hsd install` applies for the same choices, and
//! they apply to the local control plane.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::Role;
use kube::Api;
use kubectl_hsd::manifests::{self, MonitorKind, OperatorMode, OperatorOptions};
use serde_json::Value;

use crate::common::{TestNs, ensure_crd, kubeconfig, kubectl, kubectl_path, repo_root, wait_for};

/// The helm that `hack/cluster.sh build` puts next to kubectl.
fn helm(args: &[&str]) -> Output {
    let helm = kubectl_path().with_file_name("helm");
    assert!(
        helm.exists(),
        "{} is missing: run `hack/cluster.sh build helm`",
        helm.display()
    );
    let home = std::env::temp_dir().join(format!("hsd-helm-home-{}", std::process::id()));
    Command::new(helm)
        .args(args)
        .env("KUBECONFIG", kubeconfig())
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .expect("run helm")
}

fn ok(output: Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The objects of a YAML stream, sorted by kind, namespace and name.
fn objects(yaml: &str) -> Vec<Value> {
    let mut documents: Vec<Value> = serde_saphyr::from_multiple(yaml).expect("YAML documents");
    documents.retain(|d| !d.is_null());
    sort(documents)
}

/// Numbers compared by value: YAML tools write the CRD's `minimum: 0.0` as `0`.
fn normalize(value: &mut Value) {
    match value {
        Value::Number(n) => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && f.abs() < 1e15
            {
                *value = Value::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize),
        Value::Object(map) => map.values_mut().for_each(normalize),
        _ => {}
    }
}

fn sort(mut documents: Vec<Value>) -> Vec<Value> {
    documents.iter_mut().for_each(normalize);
    documents.sort_by_key(|d| {
        (
            d["kind"].as_str().unwrap_or_default().to_string(),
            d["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            d["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    });
    documents
}

/// What `kubectl hsd install` applies for these choices.
fn install(namespace: &str, options: &OperatorOptions, pod_policy: bool) -> Vec<Value> {
    let mut documents = manifests::install_documents(namespace, Some(options));
    if pod_policy {
        documents.extend(manifests::pod_policy(
            namespace,
            kubectl_hsd::api::hsd::DEFAULT_BUSY_ANNOTATION,
            options.namespace_scoped,
        ));
    }
    documents
}

fn chart() -> String {
    repo_root()
        .join(manifests::package::CHART_DIR)
        .display()
        .to_string()
}

#[test]
fn the_chart_lints_and_renders_exactly_what_install_applies_for_every_choice() {
    ok(helm(&["lint", "--strict", &chart()]), "helm lint --strict");
    let mut checked = 0;
    for mode in [OperatorMode::Cronjob, OperatorMode::Deployment] {
        let monitors: &[Option<MonitorKind>] = match mode {
            OperatorMode::Cronjob => &[None],
            OperatorMode::Deployment => &[
                None,
                Some(MonitorKind::ServiceMonitor),
                Some(MonitorKind::PodMonitor),
            ],
        };
        let sharding: &[(i32, u32)] = match mode {
            OperatorMode::Cronjob => &[(2, 1)],
            OperatorMode::Deployment => &[(2, 1), (3, 4)],
        };
        for namespace_scoped in [false, true] {
            for pod_policy in [false, true] {
                for (monitor, &(replicas, shards)) in monitors
                    .iter()
                    .flat_map(|m| sharding.iter().map(move |s| (m, s)))
                {
                    let mode_name = match mode {
                        OperatorMode::Cronjob => "cronjob",
                        OperatorMode::Deployment => "deployment",
                    };
                    let sets = [
                        format!("mode={mode_name}"),
                        format!("namespaceScoped={namespace_scoped}"),
                        format!("podPolicy.enabled={pod_policy}"),
                        format!(
                            "metrics.serviceMonitor.enabled={}",
                            *monitor == Some(MonitorKind::ServiceMonitor)
                        ),
                        format!(
                            "metrics.podMonitor.enabled={}",
                            *monitor == Some(MonitorKind::PodMonitor)
                        ),
                        format!("replicas={replicas}"),
                        format!("shards={shards}"),
                    ];
                    let mut args = vec![
                        "template",
                        "hsd",
                        &chart(),
                        "--namespace",
                        "team-a",
                        "--include-crds",
                    ]
                    .into_iter()
                    .map(String::from)
                    .collect::<Vec<_>>();
                    for set in &sets {
                        args.extend(["--set".to_string(), set.clone()]);
                    }
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    let rendered = objects(&ok(helm(&args), "helm template"));
                    let options = OperatorOptions {
                        namespace_scoped,
                        monitor: *monitor,
                        replicas,
                        shards,
                        ..OperatorOptions::new(mode, "team-a", &manifests::default_image())
                    };
                    // Helm makes the release namespace itself (--create-namespace).
                    let mut expected = install("team-a", &options, pod_policy);
                    expected.retain(|d| d["kind"] != "Namespace");
                    assert_eq!(rendered, sort(expected), "{sets:?}");
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(
        checked,
        4 + 4 * 3 * 2,
        "every mode, scope, policy, monitor and sharding"
    );

    // The values a platform team sets: image and resources.
    let rendered = objects(&ok(
        helm(&[
            "template",
            "hsd",
            &chart(),
            "--set",
            "mode=deployment",
            "--set",
            "image.tag=v9.9.9",
            "--set-json",
            r#"resources={"requests":{"cpu":"1"},"limits":{"memory":"1Gi"}}"#,
        ]),
        "helm template",
    ));
    let deployment = rendered.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "ghcr.io/paia-tech/kubectl-hsd:v9.9.9");
    assert_eq!(
        container["resources"],
        serde_json::json!({"requests": {"cpu": "1"}, "limits": {"memory": "1Gi"}})
    );
    // Values install would refuse.
    for bad in ["mode=daemonset", "metrics.podMonitor.enabled=true"] {
        let output = helm(&["template", "hsd", &chart(), "--set", bad]);
        assert!(!output.status.success(), "{bad} must be refused");
    }
}

#[tokio::test]
async fn helm_installs_and_uninstalls_the_watcher_in_a_namespace() {
    ensure_crd();
    let ns = TestNs::new("helm").await;
    ok(
        helm(&[
            "install",
            "hsd",
            &chart(),
            "--namespace",
            &ns.name,
            "--set",
            "mode=deployment",
            "--set",
            "namespaceScoped=true",
            "--set",
            "podPolicy.enabled=true",
            "--set",
            "image.repository=registry.invalid/kubectl-hsd",
            "--wait=false",
        ]),
        "helm install",
    );
    let deployments: Api<Deployment> = ns.api();
    let deployment = wait_for("the watcher's pods", Duration::from_secs(30), || async {
        deployments
            .get_opt("kubectl-hsd")
            .await
            .unwrap()
            .filter(|d| d.status.as_ref().and_then(|s| s.ready_replicas) == Some(2))
    })
    .await;
    assert_eq!(deployment.spec.unwrap().replicas, Some(2));
    let services: Api<Service> = ns.api();
    let service = services.get("kubectl-hsd-metrics").await.unwrap();
    assert_eq!(
        service.spec.unwrap().cluster_ip.as_deref(),
        Some("None"),
        "headless: one endpoint per replica"
    );
    let budgets: Api<PodDisruptionBudget> = ns.api();
    assert!(budgets.get_opt("kubectl-hsd").await.unwrap().is_some());
    let roles: Api<Role> = ns.api();
    assert!(roles.get_opt("kubectl-hsd").await.unwrap().is_some());
    let policy = manifests::pod_policy_name(&ns.name);
    let policies: Api<k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy> =
        Api::all(ns.client.clone());
    assert!(policies.get_opt(&policy).await.unwrap().is_some());

    ok(
        helm(&["uninstall", "hsd", "--namespace", &ns.name]),
        "helm uninstall",
    );
    assert!(deployments.get_opt("kubectl-hsd").await.unwrap().is_none());
    assert!(policies.get_opt(&policy).await.unwrap().is_none());
}

fn kustomize_dir(overlay: &str) -> PathBuf {
    repo_root()
        .join(manifests::package::KUSTOMIZE_DIR)
        .join("overlays")
        .join(overlay)
}

#[tokio::test]
async fn every_kustomize_overlay_is_what_install_applies_and_applies_with_kubectl() {
    ensure_crd();
    let ns = manifests::DEFAULT_OPERATOR_NAMESPACE;
    let overlays = manifests::package::kustomize_overlays();
    assert_eq!(overlays.len(), 8);
    for (name, mode, namespace_scoped, pod_policy) in &overlays {
        let dir = kustomize_dir(name);
        let rendered = objects(&ok(
            kubectl(&["kustomize", &dir.display().to_string()]),
            "kubectl kustomize",
        ));
        let options = OperatorOptions {
            namespace_scoped: *namespace_scoped,
            ..OperatorOptions::new(*mode, ns, &manifests::default_image())
        };
        assert_eq!(rendered, sort(install(ns, &options, *pod_policy)), "{name}");
    }

    // One overlay for real, the others as server-side dry runs against the same API server.
    let real = kustomize_dir("deployment-namespaced");
    ok(
        kubectl(&["apply", "-k", &real.display().to_string()]),
        "kubectl apply -k",
    );
    let client = crate::common::client().await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    wait_for(
        "the watcher Deployment",
        Duration::from_secs(30),
        || async { deployments.get_opt("kubectl-hsd").await.unwrap() },
    )
    .await;
    for (name, ..) in &overlays {
        let dir = kustomize_dir(name);
        ok(
            kubectl(&[
                "apply",
                "-k",
                &dir.display().to_string(),
                "--dry-run=server",
            ]),
            &format!("kubectl apply -k {name} --dry-run=server"),
        );
    }
    // Remove what the real apply added, but the namespace, the CRD, the view/edit roles and the
    // pod policy, which other tests of this cluster use.
    let options = OperatorOptions {
        namespace_scoped: true,
        ..OperatorOptions::new(OperatorMode::Deployment, ns, &manifests::default_image())
    };
    for document in manifests::operator(&options) {
        if document["kind"] == "Namespace" {
            continue;
        }
        let output = kubectl(&[
            "delete",
            &document["kind"].as_str().unwrap().to_lowercase(),
            document["metadata"]["name"].as_str().unwrap(),
            "-n",
            ns,
            "--ignore-not-found",
            "--wait=false",
        ]);
        ok(output, "kubectl delete");
    }
}
