//! Busy safety at ordinary moments: an HSD whose endpoints hang never delays another HSD's
//! decision (one-shot pass and watcher), a child made before labels were injected gains them
//! without a rollout, and uninstalling one install leaves the others alone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

use crate::common::http_server::{SILENT, serve_switchable, test_port};
use crate::common::{TestNs, Watcher, ensure_crd, wait_for};
use crate::core::{annotate, create_hsd, example, hsd_status, ready_pods, replicas};

/// An HTTP-mode HSD named `name` (app label `name`) on `port`.
fn http_hsd(ns: &TestNs, name: &str, port: u16, timeout_seconds: i32) -> Value {
    let mut manifest = example("hsd-http.yaml");
    manifest["metadata"] = json!({"name": name, "namespace": ns.name});
    manifest["spec"]["selector"]["matchLabels"] = json!({"app": name});
    manifest["spec"]["podTemplate"]["metadata"]["labels"] = json!({"app": name});
    manifest["spec"]["idleTarget"] = json!(2);
    manifest["spec"]["busyProbe"]["http"] =
        json!({"port": port, "timeoutSeconds": timeout_seconds, "periodSeconds": 1});
    manifest
}

/// Servers on each pod of `app` answering what their switch says.
async fn serve_pods(
    ns: &TestNs,
    app: &str,
    n: usize,
    port: u16,
    code: u16,
) -> (Vec<Arc<AtomicU16>>, Vec<tokio::task::JoinHandle<()>>) {
    let pods = ready_pods(ns, &format!("app={app}"), n).await;
    let mut switches = Vec::new();
    let mut servers = Vec::new();
    for pod in &pods {
        let ip = pod.status.as_ref().unwrap().pod_ip.clone().unwrap();
        let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        let switch = Arc::new(AtomicU16::new(code));
        servers.push(serve_switchable(addr, switch.clone()).await);
        switches.push(switch);
    }
    (switches, servers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hsd_whose_endpoints_hang_never_delays_another() {
    ensure_crd();
    let ns = TestNs::new("hang").await;
    let port = test_port();
    // "slow": every endpoint accepts and never answers, within a 50 s probe timeout.
    create_hsd(&ns, &http_hsd(&ns, "slow", port, 50))
        .await
        .unwrap();
    create_hsd(&ns, &http_hsd(&ns, "fast", port, 1))
        .await
        .unwrap();
    ns.hsd_ok(&["reconcile", "--deadline", "10s"]);
    let (_, slow_servers) = serve_pods(&ns, "slow", 2, port, SILENT).await;
    let (fast, fast_servers) = serve_pods(&ns, "fast", 2, port, 503).await;

    // One-shot pass: one fast pod turns busy; the fast HSD scales while the pass still waits on
    // the slow one, which keeps its replicas and says why.
    fast[0].store(200, Ordering::SeqCst);
    let started = Instant::now();
    let mut pass = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-hsd"))
        .args(["reconcile", "-n", &ns.name, "--deadline", "10s"])
        .env("KUBECONFIG", crate::common::kubeconfig())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(
        "the fast HSD to scale to 3",
        Duration::from_secs(4),
        || async { (replicas(&ns, "fast-workload").await == Some(3)).then_some(()) },
    )
    .await;
    let scaled_after = started.elapsed();
    assert!(
        pass.try_wait().unwrap().is_none(),
        "the fast HSD must scale while the pass still waits for the slow one"
    );
    let status = pass.wait().unwrap();
    let ended_after = started.elapsed();
    assert!(status.success(), "exit {status}");
    eprintln!("fast HSD scaled after {scaled_after:?}; the pass ended after {ended_after:?}");
    assert!(
        ended_after < Duration::from_secs(12),
        "the pass ends within its deadline: {ended_after:?}"
    );
    assert_eq!(replicas(&ns, "slow-workload").await, Some(2));
    let slow = hsd_status(&ns, "slow").await;
    let degraded = slow["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "ProbeDegraded")
        .cloned()
        .unwrap_or_default();
    assert_eq!(degraded["reason"], "ProbeDeadlineExceeded", "{slow}");

    // Watch mode: the slow HSD's probes hang in its own budget; the fast one reacts at once.
    let watcher = Watcher::start(&ns.name, "hang", &[]);
    wait_for("the watcher to lead", Duration::from_secs(10), || async {
        (watcher.metric("hsd_leader").await == Some(1.0)).then_some(())
    })
    .await;
    ready_pods(&ns, "app=fast", 3).await;
    let (more, more_servers) = {
        // The third fast pod needs a server too (idle).
        let pods = ready_pods(&ns, "app=fast", 3).await;
        let mut switches = Vec::new();
        let mut servers = Vec::new();
        for pod in &pods {
            let ip = pod.status.as_ref().unwrap().pod_ip.clone().unwrap();
            let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
            if let Ok(listener) = std::net::TcpListener::bind(addr) {
                drop(listener);
                let switch = Arc::new(AtomicU16::new(503));
                servers.push(serve_switchable(addr, switch.clone()).await);
                switches.push(switch);
            }
        }
        (switches, servers)
    };
    assert_eq!(more.len(), 1, "one new fast pod");
    let started = Instant::now();
    fast[1].store(200, Ordering::SeqCst);
    wait_for(
        "the fast HSD to scale to 4",
        Duration::from_secs(10),
        || async { (replicas(&ns, "fast-workload").await == Some(4)).then_some(()) },
    )
    .await;
    eprintln!(
        "watch mode: fast HSD scaled {:?} after its pod turned busy, beside 50 s hangs",
        started.elapsed()
    );
    assert_eq!(
        replicas(&ns, "slow-workload").await,
        Some(2),
        "the slow HSD holds"
    );
    for server in slow_servers
        .into_iter()
        .chain(fast_servers)
        .chain(more_servers)
    {
        server.abort();
    }
}

#[tokio::test]
async fn every_probe_failing_never_runs_replicas_away() {
    ensure_crd();
    let ns = TestNs::new("probes-fail").await;
    // No server anywhere: every probe is refused, every pod unknown.
    create_hsd(&ns, &http_hsd(&ns, "dark", test_port(), 1))
        .await
        .unwrap();
    let watcher = Watcher::start(&ns.name, "dark", &[]);
    wait_for(
        "the watcher to see 2 unknown pods",
        Duration::from_secs(20),
        || async { (hsd_status(&ns, "dark").await["unknownCount"] == 2).then_some(()) },
    )
    .await;
    // The watcher decided (it counted them); for 5 s more, replicas never grow past the pods
    // that exist, whatever the 1000 ceiling would allow.
    for _ in 0..25 {
        assert_eq!(replicas(&ns, "dark-workload").await, Some(2));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        watcher
            .metric("hsd_probes_total{outcome=\"error\"}")
            .await
            .unwrap_or(0.0)
            >= 4.0
    );
}

#[tokio::test]
async fn a_child_made_before_labels_were_injected_gains_them_without_a_rollout() {
    ensure_crd();
    let ns = TestNs::new("relabel").await;
    let mut manifest = example("hsd-annotation.yaml");
    manifest["metadata"]["namespace"] = json!(ns.name);
    manifest["spec"]["idleTarget"] = json!(2);
    let hsd = create_hsd(&ns, &manifest).await.unwrap();
    // The child as an earlier version applied it: the user's template as it was, and the hash
    // of that version.
    let spec: kubectl_hsd::api::hsd::HotStandbyDeploymentSpec =
        serde_json::from_value(manifest["spec"].clone()).unwrap();
    let legacy = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {
            "name": "game-ws-workload", "namespace": ns.name,
            "annotations": {
                "paia.tech/template-hash": kubectl_hsd::plan::legacy_template_hash(&spec),
                "paia.tech/applied-replicas": "3",
            },
            "ownerReferences": [{
                "apiVersion": "apps.paia.tech/v1alpha1", "kind": "HotStandbyDeployment",
                "name": "game-ws", "uid": hsd.uid().unwrap(), "controller": true,
            }],
        },
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": spec.selector.match_labels},
            "template": spec.pod_template,
        },
    });
    let deployments: Api<kube::api::DynamicObject> = Api::namespaced_with(
        ns.client.clone(),
        &ns.name,
        &kube::api::ApiResource::erase::<k8s_openapi::api::apps::v1::Deployment>(&()),
    );
    deployments
        .patch(
            "game-ws-workload",
            &PatchParams::apply("kubectl-hsd").force(),
            &Patch::Apply(&legacy),
        )
        .await
        .unwrap();
    let pods = ready_pods(&ns, "app=game-ws", 3).await;
    annotate(&ns, &pods[0].name_any(), "paia.tech/busy", "true").await;
    let (deletions, recorder) = crate::common::spawn_deletion_recorder(&ns);

    ns.hsd_ok(&["reconcile"]);
    // Labelled in place: still one ReplicaSet, the same pods, all of them labelled.
    let sets: Api<ReplicaSet> = ns.api();
    let listed = sets
        .list(&ListParams::default().labels("app=game-ws"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1, "no new ReplicaSet: no rollout");
    let template_labels = listed.items[0]
        .spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap();
    assert_eq!(
        template_labels
            .get(kubectl_hsd::labels::HSD_LABEL)
            .map(String::as_str),
        Some("game-ws")
    );
    let labelled = ns
        .live_pods(&format!("{}=game-ws", kubectl_hsd::labels::HSD_LABEL))
        .await;
    let names: Vec<String> = labelled.iter().map(|p| p.name_any()).collect();
    for pod in &pods {
        assert!(
            names.contains(&pod.name_any()),
            "{} kept and labelled",
            pod.name_any()
        );
    }
    let child: k8s_openapi::api::apps::v1::Deployment =
        ns.api().get("game-ws-workload").await.unwrap();
    let child_spec = child.spec.unwrap();
    assert_ne!(child_spec.paused, Some(true), "unpaused after the relabel");
    assert!(
        child_spec
            .template
            .metadata
            .unwrap()
            .labels
            .unwrap()
            .contains_key(kubectl_hsd::labels::HSD_LABEL),
        "the child's own template carries the label"
    );
    // The next pass sees the pods (they are the HSD's by label now): it counts them and gives
    // the busy one its cost. The one after is quiet.
    tokio::time::sleep(Duration::from_secs(1)).await;
    ns.hsd_ok(&["reconcile"]);
    let status = hsd_status(&ns, "game-ws").await;
    assert_eq!(
        (status["busyCount"].as_i64(), status["idleCount"].as_i64()),
        (Some(1), Some(2)),
        "{status}"
    );
    let busy: k8s_openapi::api::core::v1::Pod = ns.api().get(&pods[0].name_any()).await.unwrap();
    assert_eq!(
        busy.annotations()
            .get("controller.kubernetes.io/pod-deletion-cost")
            .map(String::as_str),
        Some("1000000")
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let output = ns.hsd(&["reconcile", "--stats"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(" 0 writes)"), "{stderr}");
    let listed = sets
        .list(&ListParams::default().labels("app=game-ws"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1, "still no rollout");
    recorder.abort();
    assert!(deletions.lock().unwrap().is_empty(), "no pod was replaced");
}

#[tokio::test]
async fn uninstalling_one_install_leaves_the_others_alone() {
    ensure_crd();
    let ns = TestNs::new("two-installs").await;
    let (a, b) = (format!("{}-a", ns.name), format!("{}-b", ns.name));
    for namespace in [&a, &b] {
        crate::common::hsd_ok(&[
            "install",
            "--operator",
            "cronjob",
            "--pod-policy",
            "-n",
            namespace,
            "--image",
            "registry.invalid/x:1",
        ]);
    }
    let roles: Api<ClusterRole> = Api::all(ns.client.clone());
    let bindings: Api<ClusterRoleBinding> = Api::all(ns.client.clone());
    let name = |namespace: &str| kubectl_hsd::manifests::cluster_object_name(namespace);
    assert!(roles.get_opt(&name(&a)).await.unwrap().is_some());
    assert!(roles.get_opt(&name(&b)).await.unwrap().is_some());

    // HSDs exist in the cluster (other tests make them): uninstall says so, keeps the CRD, and
    // removes only install a.
    let output = crate::common::hsd(&["uninstall", "-n", &a]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.code() == Some(1) && stderr.contains("HotStandbyDeployments still exist"),
        "{stderr}"
    );
    assert!(
        roles.get_opt(&name(&a)).await.unwrap().is_none(),
        "a's ClusterRole is gone"
    );
    assert!(bindings.get_opt(&name(&a)).await.unwrap().is_none());
    assert!(
        roles.get_opt(&name(&b)).await.unwrap().is_some(),
        "b's ClusterRole stays"
    );
    assert!(
        bindings.get_opt(&name(&b)).await.unwrap().is_some(),
        "b's binding stays"
    );
    let policies: Api<k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy> =
        Api::all(ns.client.clone());
    let policy = |namespace: &str| kubectl_hsd::manifests::pod_policy_name(namespace);
    assert!(policies.get_opt(&policy(&a)).await.unwrap().is_none());
    assert!(
        policies.get_opt(&policy(&b)).await.unwrap().is_some(),
        "b's pod policy stays"
    );
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(ns.client.clone());
    assert!(
        crds.get_opt(
            <kubectl_hsd::api::HotStandbyDeployment as kube::CustomResourceExt>::crd_name()
        )
        .await
        .unwrap()
        .is_some()
    );

    crate::common::hsd(&["uninstall", "-n", &b]);
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(ns.client.clone());
    for namespace in [&a, &b] {
        let _ = namespaces
            .delete(namespace, &DeleteParams::background())
            .await;
    }
}
