//! The core product against the real control plane: the CRD, one-shot passes, both busy probes
//! and the CLI, as a user would check them (Deployment replicas, status, events).

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

use crate::common::{TestNs, ensure_crd, is_ready, wait_for};
pub use crate::common::{create_hsd, event_reasons, example, hsd_status, replicas};
use kubectl_hsd::observe::hsd_resource;

const TIMEOUT: Duration = Duration::from_secs(30);

/// Waits until `n` pods of the selector are Ready (and none more exist).
pub async fn ready_pods(ns: &TestNs, selector: &str, n: usize) -> Vec<Pod> {
    wait_for(
        &format!("{n} ready pods of {selector}"),
        TIMEOUT,
        || async {
            let pods = ns.live_pods(selector).await;
            (pods.len() == n && pods.iter().all(is_ready)).then_some(pods)
        },
    )
    .await
}

fn with_namespace(mut manifest: Value, ns: &TestNs) -> Value {
    manifest["metadata"]["namespace"] = json!(ns.name);
    manifest
}

#[tokio::test]
async fn the_annotation_example_scales_3_to_5_and_back() {
    ensure_crd();
    let ns = TestNs::new("core-annotation").await;
    create_hsd(&ns, &with_namespace(example("hsd-annotation.yaml"), &ns))
        .await
        .unwrap();

    ns.hsd_ok(&["reconcile"]);
    assert_eq!(replicas(&ns, "game-ws-workload").await, Some(3));
    let pods = ready_pods(&ns, "app=game-ws", 3).await;
    let deployments: Api<Deployment> = ns.api();
    let deployment = deployments.get("game-ws-workload").await.unwrap();
    let owner = &deployment.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("HotStandbyDeployment", "game-ws", Some(true))
    );

    let names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
    let marked = ns.hsd_ok(&["mark-busy", &names[0], &names[1]]);
    assert!(marked.contains("marked busy"), "{marked}");
    let summary = ns.hsd_ok(&["reconcile"]);
    assert!(summary.contains("scaled 3->5"), "{summary}");
    assert_eq!(replicas(&ns, "game-ws-workload").await, Some(5));
    ready_pods(&ns, "app=game-ws", 5).await;
    ns.hsd_ok(&["reconcile"]);
    let status = hsd_status(&ns, "game-ws").await;
    assert_eq!(status["busyCount"], 2);
    assert_eq!(status["idleCount"], 3);
    assert_eq!(status["desiredReplicas"], 5);
    assert_eq!(status["replicas"], 5);
    assert!(status["lastScaleTime"].is_string());
    let events = event_reasons(&ns).await;
    assert!(
        events.iter().any(|(t, r, m)| t == "Normal"
            && r == "ScaledUp"
            && m == "from 3 to 5: 2 busy + idle target 3"),
        "{events:?}"
    );

    // `get` shows the numbers a user looks for.
    let table = ns.hsd_ok(&["get"]);
    let row = table
        .lines()
        .find(|l| l.starts_with("game-ws"))
        .expect(&table);
    // NAME READY BUSY IDLE DESIRED REPLICAS AGE, as `kubectl get hsd`.
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cells[1..6], ["True", "2", "3", "5", "5"], "{table}");

    ns.hsd_ok(&["mark-idle", &names[0], &names[1]]);
    let summary = ns.hsd_ok(&["reconcile"]);
    assert!(summary.contains("scaled 5->3"), "{summary}");
    assert_eq!(replicas(&ns, "game-ws-workload").await, Some(3));
    let remaining = ready_pods(&ns, "app=game-ws", 3).await;
    assert_eq!(remaining.len(), 3);
}

#[tokio::test]
async fn clamped_at_max_replicas_with_scaling_limited() {
    ensure_crd();
    let ns = TestNs::new("core-clamp").await;
    let mut manifest = with_namespace(example("hsd-annotation.yaml"), &ns);
    manifest["spec"]["idleTarget"] = json!(2);
    manifest["spec"]["maxReplicas"] = json!(3);
    create_hsd(&ns, &manifest).await.unwrap();
    ns.hsd_ok(&["reconcile"]);
    let pods = ready_pods(&ns, "app=game-ws", 2).await;
    let names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
    ns.hsd_ok(&["mark-busy", &names[0], &names[1]]);
    ns.hsd_ok(&["reconcile"]);
    assert_eq!(
        replicas(&ns, "game-ws-workload").await,
        Some(3),
        "2 busy + 2 idle is clamped to max 3"
    );
    let status = hsd_status(&ns, "game-ws").await;
    let limited = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "ScalingLimited")
        .unwrap();
    assert_eq!(limited["status"], "True");
    assert_eq!(limited["reason"], "TooManyReplicas");
    let events = event_reasons(&ns).await;
    assert!(
        events
            .iter()
            .any(|(t, r, _)| t == "Warning" && r == "ScalingLimited"),
        "{events:?}"
    );
}

/// A one-shot pass tells another writer of the child's replicas by `metadata.managedFields`,
/// as the watcher does (tests/faults), sets them back, and says who it was.
#[tokio::test]
async fn a_pass_sets_back_replicas_another_writer_set_and_names_it() {
    ensure_crd();
    let ns = TestNs::new("core-writer").await;
    let manifest = with_namespace(example("hsd-annotation.yaml"), &ns);
    create_hsd(&ns, &manifest).await.unwrap();
    ns.hsd_ok(&["reconcile"]);
    assert_eq!(replicas(&ns, "game-ws-workload").await, Some(3));
    crate::common::set_replicas_as(&ns, "game-ws-workload", "someone-else", 7).await;
    ns.hsd_ok(&["reconcile"]);
    assert_eq!(replicas(&ns, "game-ws-workload").await, Some(3));
    let events = event_reasons(&ns).await;
    let overridden = events
        .iter()
        .find(|(_, reason, _)| reason == "ReplicasOverridden")
        .unwrap_or_else(|| panic!("no ReplicasOverridden event: {events:?}"));
    assert_eq!(overridden.0, "Warning");
    assert!(
        overridden
            .2
            .contains("set to 7 by another writer (field manager someone-else)"),
        "{overridden:?}"
    );
}

#[tokio::test]
async fn a_pass_with_nothing_to_change_writes_nothing() {
    ensure_crd();
    let ns = TestNs::new("core-noop").await;
    create_hsd(&ns, &with_namespace(example("hsd-annotation.yaml"), &ns))
        .await
        .unwrap();
    ns.hsd_ok(&["reconcile"]);
    ready_pods(&ns, "app=game-ws", 3).await;
    ns.hsd_ok(&["reconcile"]);

    let hsds: Api<DynamicObject> =
        Api::namespaced_with(ns.client.clone(), &ns.name, &hsd_resource());
    let deployments: Api<Deployment> = ns.api();
    let hsd_version = hsds.get("game-ws").await.unwrap().resource_version();
    let deployment_generation = deployments
        .get("game-ws-workload")
        .await
        .unwrap()
        .metadata
        .generation;
    let events_before = crate::common::our_event_count(&ns).await;
    assert!(
        events_before > 0,
        "the passes before reported nothing: the count would prove nothing"
    );

    let output = ns.hsd(&["reconcile", "--stats"]);
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(" 0 writes)"), "{stderr}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("unchanged"));
    assert_eq!(
        hsds.get("game-ws").await.unwrap().resource_version(),
        hsd_version
    );
    // The Deployment controller keeps writing the Deployment's status; its spec generation
    // moves only when someone writes the spec.
    assert_eq!(
        deployments
            .get("game-ws-workload")
            .await
            .unwrap()
            .metadata
            .generation,
        deployment_generation
    );
    assert_eq!(crate::common::our_event_count(&ns).await, events_before);
}

#[tokio::test]
async fn deleting_the_hsd_garbage_collects_its_deployment_and_pods() {
    ensure_crd();
    let ns = TestNs::new("core-gc").await;
    create_hsd(&ns, &with_namespace(example("hsd-annotation.yaml"), &ns))
        .await
        .unwrap();
    ns.hsd_ok(&["reconcile"]);
    ready_pods(&ns, "app=game-ws", 3).await;
    let hsds: Api<DynamicObject> =
        Api::namespaced_with(ns.client.clone(), &ns.name, &hsd_resource());
    hsds.delete("game-ws", &DeleteParams::background())
        .await
        .unwrap();
    wait_for(
        "the Deployment and pods to be garbage-collected",
        TIMEOUT,
        || async {
            let gone = replicas(&ns, "game-ws-workload").await.is_none()
                && ns.live_pods("app=game-ws").await.is_empty();
            gone.then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn an_unowned_deployment_of_the_same_name_is_left_alone() {
    ensure_crd();
    let ns = TestNs::new("core-unowned").await;
    let deployments: Api<Deployment> = ns.api();
    let theirs: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "game-ws-workload"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "someone-else"}},
            "template": {"metadata": {"labels": {"app": "someone-else"}}, "spec": {"containers": [{"name": "c", "image": "x:1"}]}},
        },
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &theirs)
        .await
        .unwrap();
    let generation = deployments
        .get("game-ws-workload")
        .await
        .unwrap()
        .metadata
        .generation;
    create_hsd(&ns, &with_namespace(example("hsd-annotation.yaml"), &ns))
        .await
        .unwrap();

    let output = ns.hsd(&["reconcile"]);
    assert!(
        output.status.success(),
        "a blocked HSD is reported, not an error of the pass"
    );
    let after = deployments.get("game-ws-workload").await.unwrap();
    // The Deployment controller writes its status; only the spec's generation tells a takeover.
    assert_eq!(
        after.metadata.generation, generation,
        "the spec was not touched"
    );
    assert!(after.owner_references().is_empty());
    let managers: Vec<_> = after
        .managed_fields()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        !managers.iter().any(|m| m.starts_with("kubectl-hsd")),
        "{managers:?}"
    );
    let status = hsd_status(&ns, "game-ws").await;
    let ready = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "DeploymentNotOwned");
    let events = event_reasons(&ns).await;
    assert!(
        events
            .iter()
            .any(|(t, r, _)| t == "Warning" && r == "DeploymentNotOwned"),
        "{events:?}"
    );
}

#[tokio::test]
async fn invalid_specs_are_rejected_at_admission_with_the_reason() {
    ensure_crd();
    let ns = TestNs::new("core-invalid").await;
    let base = with_namespace(example("hsd-annotation.yaml"), &ns);
    type Mutation = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Mutation, &str)> = vec![
        (
            "min above max",
            Box::new(|m| m["spec"]["minReplicas"] = json!(60)),
            "minReplicas must be less than or equal to maxReplicas",
        ),
        (
            "negative idle target",
            Box::new(|m| m["spec"]["idleTarget"] = json!(-1)),
            "spec.idleTarget",
        ),
        (
            "max zero",
            Box::new(|m| m["spec"]["maxReplicas"] = json!(0)),
            "spec.maxReplicas",
        ),
        (
            "template label contradicting the selector",
            Box::new(|m| m["spec"]["selector"]["matchLabels"] = json!({"app": "other"})),
            "a podTemplate.metadata.labels entry contradicts selector.matchLabels",
        ),
        (
            "empty selector",
            Box::new(|m| m["spec"]["selector"]["matchLabels"] = json!({})),
            "spec.selector.matchLabels",
        ),
        (
            // A fork of the reference added `redis`; exec is a mode of its own since #14.
            "unknown probe mode",
            Box::new(|m| m["spec"]["busyProbe"]["mode"] = json!("redis")),
            "spec.busyProbe.mode: Unsupported value: \"redis\"",
        ),
        (
            "port out of range",
            Box::new(|m| m["spec"]["busyProbe"]["http"] = json!({"port": 70000})),
            "spec.busyProbe.http.port",
        ),
        (
            "missing idle target",
            Box::new(|m| {
                m["spec"].as_object_mut().unwrap().remove("idleTarget");
            }),
            "idleTarget",
        ),
    ];
    for (name, mutate, expected) in cases {
        let mut manifest = base.clone();
        manifest["metadata"]["name"] = json!(format!("bad-{}", name.replace(' ', "-")));
        mutate(&mut manifest);
        match create_hsd(&ns, &manifest).await {
            Ok(_) => panic!("{name}: the API server accepted an invalid HSD"),
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{name}: {status:?}");
                assert!(
                    status.message.contains(expected),
                    "{name}: {}",
                    status.message
                );
            }
            Err(other) => panic!("{name}: {other}"),
        }
    }
}

#[tokio::test]
async fn dry_run_plans_without_writing() {
    ensure_crd();
    let ns = TestNs::new("core-dry").await;
    create_hsd(&ns, &with_namespace(example("hsd-annotation.yaml"), &ns))
        .await
        .unwrap();
    let output = ns.hsd(&["reconcile", "--dry-run", "--stats"]);
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("would apply") || stdout.contains("would scale"),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains(" 0 writes)"));
    assert_eq!(
        replicas(&ns, "game-ws-workload").await,
        None,
        "nothing was created"
    );
}

#[tokio::test]
async fn mark_busy_refuses_a_pod_that_does_not_exist() {
    ensure_crd();
    let ns = TestNs::new("core-mark").await;
    let output = ns.hsd(&["mark-busy", "no-such-pod"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("pod \"no-such-pod\" in namespace") && stderr.contains("not found"),
        "{stderr}"
    );
    let pods: Api<Pod> = ns.api();
    assert!(
        pods.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "no pod was created"
    );
}

#[tokio::test]
async fn create_makes_an_hsd_that_reconciles() {
    ensure_crd();
    let ns = TestNs::new("core-create").await;
    let out = ns.hsd_ok(&[
        "create",
        "sandbox",
        "--image",
        "registry.invalid/sandbox:1",
        "--idle-target",
        "2",
        "--max",
        "4",
    ]);
    assert!(
        out.contains("hotstandbydeployment.apps.paia.tech/sandbox created"),
        "{out}"
    );
    ns.hsd_ok(&["reconcile"]);
    assert_eq!(replicas(&ns, "sandbox-workload").await, Some(2));
    let again = ns.hsd(&["create", "sandbox", "--image", "x:1"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}

/// Patches a pod annotation directly, as an application would.
pub async fn annotate(ns: &TestNs, pod: &str, key: &str, value: &str) {
    let pods: Api<Pod> = ns.api();
    pods.patch(
        pod,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {key: value}}})),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn one_failing_hsd_does_not_stop_the_others_and_the_pass_says_why() {
    ensure_crd();
    let ns = TestNs::new("core-partial").await;
    create_hsd(&ns, &with_namespace(example("hsd-annotation.yaml"), &ns))
        .await
        .unwrap();
    // A template the Deployment API refuses (a container without an image).
    let mut broken = with_namespace(example("hsd-annotation.yaml"), &ns);
    broken["metadata"]["name"] = json!("broken");
    broken["spec"]["podTemplate"]["spec"]["containers"] = json!([{"name": "no-image"}]);
    create_hsd(&ns, &broken).await.unwrap();
    let output = ns.hsd(&["reconcile"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with(&format!("error: {}/broken: ", ns.name)))
        .expect(&stderr);
    assert!(
        line.contains("applying Deployment") && line.contains("image"),
        "{line}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("failed") && stdout.contains("applied"),
        "the summary table: {stdout}"
    );
    assert_eq!(
        replicas(&ns, "game-ws-workload").await,
        Some(3),
        "the good HSD was reconciled"
    );
}

#[tokio::test]
async fn describe_shows_the_deployment_pods_conditions_and_events() {
    ensure_crd();
    let ns = TestNs::new("core-describe").await;
    create_hsd(&ns, &with_namespace(example("hsd-annotation.yaml"), &ns))
        .await
        .unwrap();
    ns.hsd_ok(&["reconcile"]);
    let pods = ready_pods(&ns, "app=game-ws", 3).await;
    ns.hsd_ok(&["mark-busy", &pods[0].name_any()]);
    ns.hsd_ok(&["reconcile"]);
    let text = ns.hsd_ok(&["describe", "game-ws"]);
    for needle in [
        "Deployment:   game-ws-workload (4 replicas)",
        "Idle target:  3",
        &format!("{}  busy", pods[0].name_any()),
        "Ready",
        "ScaledUp",
        "from 3 to 4: 1 busy + idle target 3",
    ] {
        assert!(text.contains(needle), "{needle:?} in:\n{text}");
    }
}

#[tokio::test]
async fn uninstall_removes_the_operator_but_keeps_the_crd_while_hsds_exist() {
    ensure_crd();
    let ns = TestNs::new("core-uninstall").await;
    create_hsd(&ns, &with_namespace(example("hsd-annotation.yaml"), &ns))
        .await
        .unwrap();
    let operator_ns = format!("{}-op", ns.name);
    crate::common::hsd_ok(&[
        "install",
        "--operator",
        "cronjob",
        "-n",
        &operator_ns,
        "--image",
        "registry.invalid/x:1",
    ]);
    let cronjobs: Api<k8s_openapi::api::batch::v1::CronJob> =
        Api::namespaced(ns.client.clone(), &operator_ns);
    assert!(cronjobs.get_opt("kubectl-hsd").await.unwrap().is_some());
    let output = crate::common::hsd(&["uninstall", "-n", &operator_ns]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "the CRD stays while HSDs exist"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("HotStandbyDeployments still exist"));
    assert!(
        cronjobs.get_opt("kubectl-hsd").await.unwrap().is_none(),
        "the operator is gone"
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
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(ns.client.clone());
    let _ = namespaces
        .delete(&operator_ns, &DeleteParams::background())
        .await;
}

#[test]
fn completion_and_version() {
    for shell in ["bash", "zsh", "fish", "powershell"] {
        let output = crate::common::hsd(&["completion", shell]);
        assert!(output.status.success());
        let script = String::from_utf8_lossy(&output.stdout);
        // The script calls kubectl-hsd back for every completion (tests/e2e/cli.rs runs it).
        assert!(
            script.contains("_KUBECTL_HSD_COMPLETE") && script.contains("kubectl-hsd"),
            "{shell}: {script}"
        );
    }
    let version = crate::common::hsd_ok(&["version"]);
    assert_eq!(
        version.trim(),
        format!("kubectl-hsd v{}", env!("CARGO_PKG_VERSION"))
    );
    let usage = crate::common::hsd(&["reconcile", "--no-such-flag"]);
    assert_eq!(usage.status.code(), Some(2), "usage errors exit 2");
}

/// A list of several pages reads every object once, and the next page's token is read off each
/// page's head (so that the next page is requested while this one is parsed): checked against
/// the real API server's layout, since the early read falls back silently where it fails.
#[tokio::test]
async fn a_list_of_several_pages_reads_every_object_once() {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ApiResource;
    use kube::core::object::NotUsed;
    use kubectl_hsd::observe::{Scope, continue_token_of, list_lean};

    let ns = TestNs::new("core-pages").await;
    let config_maps: Api<ConfigMap> = ns.api();
    let count = 1_001;
    let created: Vec<_> = futures::stream::iter(0..count)
        .map(|i| {
            let config_maps = config_maps.clone();
            async move {
                let object: ConfigMap = serde_json::from_value(json!({
                    "metadata": {"name": format!("page-{i:04}"), "labels": {"pages": "yes"}},
                }))
                .unwrap();
                config_maps.create(&PostParams::default(), &object).await
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(created.iter().all(Result::is_ok), "creating the ConfigMaps");

    let resource = ApiResource::erase::<ConfigMap>(&());
    let scope = Scope::Namespace(ns.name.clone());
    let listed = list_lean::<kubectl_hsd::observe::LeanPodSpec, NotUsed>(
        &ns.client,
        &scope,
        &resource,
        "pages=yes",
    )
    .await
    .expect("the paginated list");
    let mut names: Vec<String> = listed.iter().map(|o| o.name_any()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), count, "every object once");

    // The first page, raw: its token read early equals the parsed one.
    let request = http::Request::get(format!(
        "/api/v1/namespaces/{}/configmaps?limit=500&labelSelector=pages%3Dyes",
        ns.name
    ))
    .body(Vec::new())
    .unwrap();
    let page = ns.client.request_text(request).await.unwrap();
    let parsed: kube::core::ObjectList<ConfigMap> = serde_json::from_str(&page).unwrap();
    let token = parsed
        .metadata
        .continue_
        .expect("a first page of 500 has a continue token");
    assert_eq!(continue_token_of(&page).as_deref(), Some(token.as_str()));
}
