//! Least privilege and pods that may mark only themselves, with real ServiceAccount tokens,
//! real RBAC and a real ValidatingAdmissionPolicy.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::Role;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::common::{TestNs, ensure_crd, hsd_ok, is_ready, kubeconfig, wait_for};
use crate::core::{create_hsd, example, replicas};

/// A kubeconfig for the test cluster that authenticates with `token`.
pub fn token_kubeconfig(ns: &TestNs, name: &str, token: &str) -> PathBuf {
    let admin: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(kubeconfig()).unwrap()).unwrap();
    let cluster = &admin["clusters"][0]["cluster"];
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "test", "cluster": cluster}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": "test", "user": name, "namespace": ns.name}}],
        "current-context": name,
    });
    let path = std::env::temp_dir().join(format!("hsd-{}-{name}.kubeconfig", ns.name));
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
    path
}

pub async fn token_for(ns: &TestNs, service_account: &str, bound_pod: Option<&Pod>) -> String {
    let accounts: Api<ServiceAccount> = ns.api();
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(3600),
            bound_object_ref: bound_pod.map(|pod| BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name_any()),
                uid: pod.uid(),
            }),
        },
        ..Default::default()
    };
    let created = accounts
        .create_token_request(service_account, &PostParams::default(), &request)
        .await
        .unwrap();
    created.status.unwrap().token
}

fn run_with(kubeconfig: &PathBuf, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-hsd"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("POD_NAME")
        .env_remove("POD_NAMESPACE")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[tokio::test]
async fn a_namespace_scoped_reconciler_works_with_exactly_its_verbs() {
    ensure_crd();
    let ns = TestNs::new("least-privilege").await;
    // The real install: ServiceAccount, Role and RoleBinding in this namespace only.
    hsd_ok(&[
        "install",
        "--operator",
        "cronjob",
        "--namespace-scoped",
        "-n",
        &ns.name,
        "--image",
        "registry.invalid/kubectl-hsd:test",
    ]);
    let roles: Api<Role> = ns.api();
    assert!(
        roles.get_opt("kubectl-hsd").await.unwrap().is_some(),
        "a Role, not a ClusterRole"
    );
    let mut manifest = example("hsd-annotation.yaml");
    manifest["metadata"]["namespace"] = json!(ns.name);
    create_hsd(&ns, &manifest).await.unwrap();

    let token = token_for(&ns, "kubectl-hsd", None).await;
    let config = token_kubeconfig(&ns, "reconciler", &token);
    // As the CronJob's pod runs it: POD_NAMESPACE (the Downward API) names its own namespace.
    let in_pod = [("POD_NAMESPACE", ns.name.as_str())];
    let output = run_with(&config, &["reconcile", "-n", &ns.name], &in_pod);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(replicas(&ns, "game-ws-workload").await, Some(3));

    // A scale-down drains its pods, waits for the ReplicaSet to see the marks and reads the HSD
    // again, all within the one pass and with only these verbs.
    wait_for("3 ready pods", Duration::from_secs(30), || async {
        let pods: Api<Pod> = ns.api();
        let listed = pods.list(&Default::default()).await.ok()?;
        (listed.items.iter().filter(|pod| is_ready(pod)).count() == 3).then_some(())
    })
    .await;
    let patched = crate::common::kubectl(&[
        "patch",
        "hotstandbydeployments.apps.paia.tech",
        "game-ws",
        "-n",
        &ns.name,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"idleTarget":1}}"#,
    ]);
    assert!(patched.status.success(), "{patched:?}");
    let output = run_with(&config, &["reconcile", "-n", &ns.name], &in_pod);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{stderr}");
    assert!(stdout.contains("scaled 3->1"), "{stdout}\n{stderr}");
    assert!(!stderr.contains("next pass"), "{stderr}");
    assert_eq!(replicas(&ns, "game-ws-workload").await, Some(1));

    // Beyond its namespace it has no rights, and says which one it lacks.
    // A pass that cannot tell whether a watcher leads does nothing (fails closed): run from a
    // laptop without POD_NAMESPACE, it looks for the cluster-wide watcher's Lease in hsd-system,
    // where this identity may not read.
    let output = run_with(&config, &["reconcile", "-n", &ns.name], &[]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "permission denied to get leases.coordination.k8s.io in namespace hsd-system"
        ),
        "{stderr}"
    );

    let output = run_with(&config, &["reconcile", "-A"], &in_pod);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "permission denied to list hotstandbydeployments.apps.paia.tech cluster-wide"
        ),
        "{stderr}"
    );

    // Take one verb away: the pass fails and names it.
    let mut role = roles.get("kubectl-hsd").await.unwrap();
    for rule in role.rules.iter_mut().flatten() {
        if rule
            .resources
            .as_ref()
            .is_some_and(|r| r.contains(&"pods".to_string()))
        {
            rule.verbs.retain(|v| v != "list");
        }
    }
    role.metadata.managed_fields = None;
    roles
        .replace("kubectl-hsd", &PostParams::default(), &role)
        .await
        .unwrap();
    let output = wait_for("the RBAC change to apply", Duration::from_secs(10), || {
        let output = run_with(&config, &["reconcile", "-n", &ns.name], &in_pod);
        async move { (!output.status.success()).then_some(output) }
    })
    .await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "permission denied to list pods in namespace {}",
            ns.name
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn pods_may_mark_only_themselves_and_only_the_busy_annotation() {
    ensure_crd();
    hsd_ok(&["install", "--pod-policy"]);
    let ns = TestNs::new("pod-policy").await;
    // The application's identity: may get and patch pods in its namespace (RBAC cannot say
    // "only its own pod"; the admission policy does).
    let accounts: Api<ServiceAccount> = ns.api();
    accounts
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "app"}})).unwrap(),
        )
        .await
        .unwrap();
    let apply = |doc: serde_json::Value| {
        let client = ns.client.clone();
        async move {
            let (api, name): (Api<kube::api::DynamicObject>, String) = {
                let kind = doc["kind"].as_str().unwrap();
                let resource = match kind {
                    "Role" => kube::api::ApiResource::erase::<Role>(&()),
                    _ => {
                        kube::api::ApiResource::erase::<k8s_openapi::api::rbac::v1::RoleBinding>(&())
                    }
                };
                (
                    Api::namespaced_with(
                        client,
                        doc["metadata"]["namespace"].as_str().unwrap(),
                        &resource,
                    ),
                    doc["metadata"]["name"].as_str().unwrap().to_string(),
                )
            };
            api.patch(
                &name,
                &PatchParams::apply("e2e").force(),
                &Patch::Apply(&doc),
            )
            .await
            .unwrap();
        }
    };
    apply(
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "mark-busy", "namespace": ns.name},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}]}),
    )
    .await;
    apply(
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "mark-busy", "namespace": ns.name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "mark-busy"},
        "subjects": [{"kind": "ServiceAccount", "name": "app", "namespace": ns.name}]}),
    )
    .await;
    let pods: Api<Pod> = ns.api();
    // "me" and "other" are an HSD's pods (the label every child template carries), "worker" a
    // HotStandbyJob's; "foreign" belongs to some other controller, which the policy must never
    // get in the way of.
    for name in ["me", "other", "worker", "foreign"] {
        let labels = match name {
            "foreign" => json!({"app": "matchmaker"}),
            "worker" => {
                json!({"app": "game-worker", kubectl_hsd::labels::HSJ_LABEL: "game-worker"})
            }
            _ => json!({"app": "game-ws", kubectl_hsd::labels::HSD_LABEL: "game-ws"}),
        };
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"serviceAccountName": "app", "containers": [{"name": "c", "image": "registry.invalid/app:1"}]},
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    let me = wait_for("the pods to run", Duration::from_secs(30), || async {
        let me = pods.get("me").await.unwrap();
        (is_ready(&me) && is_ready(&pods.get("other").await.unwrap())).then_some(me)
    })
    .await;
    let token = token_for(&ns, "app", Some(&me)).await;
    let config = token_kubeconfig(&ns, "me", &token);

    let as_pod = {
        let kubeconfig = Kubeconfig::read_from(&config).unwrap();
        let client_config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        Api::<Pod>::namespaced(kube::Client::try_from(client_config).unwrap(), &ns.name)
    };
    // A new policy takes a moment to be in force: probe with dry-run requests until it denies.
    wait_for(
        "the admission policy to be in force",
        Duration::from_secs(20),
        || async {
            let probe = json!({"metadata": {"labels": {"probe": "x"}}});
            let mut denied = true;
            // Both policies: the HSD pods' and the HotStandbyJob workers'.
            for pod in ["other", "worker"] {
                denied &= as_pod
                    .patch(
                        pod,
                        &PatchParams::default().dry_run(),
                        &Patch::Merge(&probe),
                    )
                    .await
                    .is_err();
            }
            denied.then_some(())
        },
    )
    .await;

    // Inside the pod: no argument, POD_NAME and POD_NAMESPACE from the Downward API.
    let output = run_with(
        &config,
        &["mark-busy"],
        &[("POD_NAME", "me"), ("POD_NAMESPACE", &ns.name)],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        pods.get("me")
            .await
            .unwrap()
            .annotations()
            .get("paia.tech/busy")
            .map(String::as_str),
        Some("true")
    );

    let output = run_with(&config, &["mark-busy", "other", "-n", &ns.name], &[]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("a pod may mark only itself: this token is bound to pod me, not other"),
        "{stderr}"
    );
    assert!(
        pods.get("other")
            .await
            .unwrap()
            .annotations()
            .get("paia.tech/busy")
            .is_none()
    );
    // A HotStandbyJob's worker is covered the same way.
    let output = run_with(&config, &["mark-busy", "worker", "-n", &ns.name], &[]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("a pod may mark only itself: this token is bound to pod me, not worker"),
        "{stderr}"
    );

    // Any other field of its own pod is refused.
    let denied = as_pod
        .patch(
            "me",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"role": "leader"}}})),
        )
        .await
        .unwrap_err();
    assert!(
        denied
            .to_string()
            .contains("a pod may change only its own paia.tech/busy annotation"),
        "{denied}"
    );
    let denied = as_pod
        .patch(
            "me",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"other": "x"}}})),
        )
        .await
        .unwrap_err();
    assert!(
        denied.to_string().contains("may change only its own"),
        "{denied}"
    );
    // A pod no HSD made is out of the policy's reach: the same token changes it as RBAC allows.
    as_pod
        .patch(
            "foreign",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"matchmaker/slot": "3"}}})),
        )
        .await
        .expect("pods that no HSD made are never blocked");
    // The admin (no pod-bound token) is not restricted.
    pods.patch(
        "me",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"role": "leader"}}})),
    )
    .await
    .unwrap();
}

use kube::config::Kubeconfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_reconciler_may_exec_into_workers_and_retire_their_jobs() {
    use crate::hsj::{
        create_hsj, exec_for, exec_probe, hsj, hsj_status, live_jobs, running_workers,
    };
    ensure_crd();
    let ns = TestNs::new("hsj-rbac").await;
    hsd_ok(&[
        "install",
        "--operator",
        "cronjob",
        "--namespace-scoped",
        "-n",
        &ns.name,
        "--image",
        "registry.invalid/kubectl-hsd:test",
    ]);
    let mut manifest = hsj(&ns, "w", 2, 0, exec_probe());
    manifest["spec"]["scaleDownDelaySeconds"] = json!(0);
    create_hsj(&ns, &manifest).await;
    let token = token_for(&ns, "kubectl-hsd", None).await;
    let config = token_kubeconfig(&ns, "reconciler", &token);
    let in_pod = [("POD_NAMESPACE", ns.name.as_str())];
    let reconcile = || {
        let output = run_with(&config, &["reconcile", "-n", &ns.name], &in_pod);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    // The reconciler's own identity creates the Jobs...
    reconcile();
    let workers = running_workers(&ns, "w", 2).await;
    let mut execs = std::collections::BTreeMap::new();
    for (_, pod) in &workers {
        exec_for(&ns, &pod.name_any(), &mut execs).await;
    }
    execs[&workers[0].1.name_any()].write("busy_state", "busy\n");
    // ... execs into them (pods/exec get and create) ...
    reconcile();
    let status = hsj_status(&ns, "w").await;
    assert_eq!(
        (
            status["busyCount"].as_i64(),
            status["unknownCount"].as_i64()
        ),
        (Some(1), Some(0)),
        "the reconciler's exec probes answer: {status}"
    );
    // ... and retires an idle one (jobs delete) once there is a surplus: 1 busy + 2 made a
    // third Job; when the busy one is done, one of the 3 goes.
    for (_, pod) in &running_workers(&ns, "w", 3).await {
        exec_for(&ns, &pod.name_any(), &mut execs).await;
    }
    let _ = std::fs::remove_file(execs[&workers[0].1.name_any()].dir.join("busy_state"));
    let summary = reconcile();
    assert!(summary.contains("deleted 1"), "{summary}");
    wait_for("2 Jobs again", Duration::from_secs(30), || async {
        (live_jobs(&ns, "w").await.len() == 2).then_some(())
    })
    .await;

    // An application's identity that may read pods may not exec into them: its probe gets no
    // answer, and says which right is missing.
    let accounts: Api<ServiceAccount> = ns.api();
    accounts
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "app"}})).unwrap(),
        )
        .await
        .unwrap();
    let roles: Api<Role> = ns.api();
    roles
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "reader"}, "rules": [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
                {"apiGroups": ["apps.paia.tech"], "resources": ["hotstandbydeployments", "hotstandbyjobs"], "verbs": ["list"]},
            ]}))
            .unwrap(),
        )
        .await
        .unwrap();
    let bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> = ns.api();
    bindings
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "reader"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
                "subjects": [{"kind": "ServiceAccount", "name": "app", "namespace": ns.name}]}))
            .unwrap(),
        )
        .await
        .unwrap();
    let app = token_kubeconfig(&ns, "app", &token_for(&ns, "app", None).await);
    let pod = running_workers(&ns, "w", 2).await[0].1.name_any();
    let output = wait_for(
        "the reader's rights to apply",
        Duration::from_secs(10),
        || {
            let output = run_with(&app, &["probe", &pod, "-n", &ns.name], &[]);
            async move {
                String::from_utf8_lossy(&output.stderr)
                    .contains("no right to exec")
                    .then_some(output)
            }
        },
    )
    .await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("pods/exec needs get and create"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_namespace_scoped_watcher_runs_active_standby_with_exactly_its_verbs() {
    use crate::common::active_standby::*;
    ensure_crd();
    let ns = TestNs::new("least-privilege-as").await;
    hsd_ok(&[
        "install",
        "--operator",
        "deployment",
        "--namespace-scoped",
        "-n",
        &ns.name,
        "--image",
        "registry.invalid/kubectl-hsd:test",
    ]);
    let labels = json!({"app": "db"});
    create_deployment(&ns, &data_deployment("db", 2, &labels)).await;
    create_service(&ns, &annotated_service("db", &labels, true)).await;
    ready_pods(&ns, "app=db", 2).await;

    let token = token_for(&ns, "kubectl-hsd", None).await;
    let config = token_kubeconfig(&ns, "watcher", &token);
    let config = config.to_string_lossy().into_owned();
    let watcher = crate::common::Watcher::start_with_env(
        &ns.name,
        "least-privilege",
        &[],
        &[
            ("KUBECONFIG", config.as_str()),
            ("POD_NAMESPACE", ns.name.as_str()),
        ],
    );
    let master = wait_master(&ns, "db").await;
    wait_endpoint(&ns, "db", &master).await;
    let pods: Api<Pod> = ns.api();
    pods.delete(&master, &Default::default()).await.unwrap();
    let next = wait_new_master(&ns, "db", &master).await;
    wait_endpoint(&ns, "db", &next).await;
    let log = watcher.log();
    assert!(
        !log.contains("permission denied") && !log.to_lowercase().contains("forbidden"),
        "{log}"
    );
}
