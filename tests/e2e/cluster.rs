//! The local control plane behaves like a real cluster: the Deployment and ReplicaSet
//! controllers, the scheduler, kwok's fake kubelets and the garbage collector; and its extras
//! work: the data node and EndpointSlices, exec through kwok, Jobs whose pods keep running.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

use crate::common::{
    DATA_NODE, DATA_NODE_CIDR, DATA_NODE_TAINT, PodExec, TestNs, is_data_node_ip, is_ready,
    kubectl, on_data_node, wait_for,
};

const TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_plain_deployment_runs_scales_and_is_garbage_collected() {
    let ns = TestNs::new("cluster").await;
    let deployments: Api<Deployment> = ns.api();
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "plain"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "plain"}},
            "template": {
                "metadata": {"labels": {"app": "plain"}},
                "spec": {"containers": [{"name": "c", "image": "registry.invalid/pause:1"}]},
            },
        },
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();

    let pods = wait_for(
        "3 Running and Ready pods",
        Duration::from_secs(30),
        || async {
            let pods = ns.live_pods("app=plain").await;
            let ready = pods
                .iter()
                .filter(|p| {
                    is_ready(p)
                        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                })
                .count();
            (pods.len() == 3 && ready == 3).then_some(pods)
        },
    )
    .await;
    for pod in &pods {
        let ip: std::net::Ipv4Addr = pod
            .status
            .as_ref()
            .unwrap()
            .pod_ip
            .as_deref()
            .unwrap()
            .parse()
            .unwrap();
        assert!(ip.is_loopback(), "pod IP {ip} must be inside 127.0.0.0/8");
    }
    let mut ips: Vec<_> = pods
        .iter()
        .map(|p| p.status.as_ref().unwrap().pod_ip.clone())
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 3, "pod IPs are unique");

    deployments
        .patch(
            "plain",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .unwrap();
    let before: Vec<String> = pods
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    wait_for(
        "2 of the 3 pods deleted",
        Duration::from_secs(30),
        || async {
            let pods = ns.live_pods("app=plain").await;
            let survivors = pods
                .iter()
                .filter(|p| before.contains(p.metadata.name.as_ref().unwrap()))
                .count();
            (pods.len() == 1 && survivors == 1).then_some(())
        },
    )
    .await;

    deployments
        .delete("plain", &DeleteParams::background())
        .await
        .unwrap();
    let replicasets: Api<ReplicaSet> = ns.api();
    wait_for(
        "the ReplicaSet and pods garbage-collected",
        Duration::from_secs(30),
        || async {
            let sets = replicasets
                .list(&ListParams::default())
                .await
                .unwrap()
                .items;
            let pods = ns.live_pods("app=plain").await;
            (sets.is_empty() && pods.is_empty()).then_some(())
        },
    )
    .await;
}

fn deployment(name: &str, replicas: i32, pod_spec: Value) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec},
        },
    }))
    .unwrap()
}

fn pause_spec() -> Value {
    json!({"containers": [{"name": "c", "image": "registry.invalid/pause:1"}]})
}

fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default()
}

fn node_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

/// Waits until `n` pods of the selector run, Ready, with an IP.
async fn running_pods(ns: &TestNs, selector: &str, n: usize) -> Vec<Pod> {
    wait_for(
        &format!("{n} running pods of {selector}"),
        TIMEOUT,
        || async {
            let pods = ns.live_pods(selector).await;
            let running = pods.iter().all(|p| {
                is_ready(p)
                    && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                    && !pod_ip(p).is_empty()
            });
            (pods.len() == n && running).then_some(pods)
        },
    )
    .await
}

/// The ready addresses the EndpointSlices of a Service list.
async fn ready_slice_addresses(ns: &TestNs, service: &str) -> BTreeSet<String> {
    let slices: Api<EndpointSlice> = ns.api();
    slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .flat_map(|slice| slice.endpoints)
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .flat_map(|e| e.addresses)
        .collect()
}

fn headless_service(name: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"clusterIP": "None", "selector": {"app": name}, "ports": [{"name": "http", "port": 8080}]},
    }))
    .unwrap()
}

#[tokio::test]
async fn data_node_pods_get_198_18_ips_that_an_endpointslice_lists_as_ready() {
    let ns = TestNs::new("data-node").await;
    let deployments: Api<Deployment> = ns.api();
    let services: Api<Service> = ns.api();
    let post = PostParams::default();
    deployments
        .create(&post, &deployment("data", 3, on_data_node(pause_spec())))
        .await
        .unwrap();
    // Beside it, a Service over ordinary (loopback) pods, whose addresses the API refuses in
    // EndpointSlices: it must not keep the controller from serving the other one.
    deployments
        .create(&post, &deployment("loopback", 2, pause_spec()))
        .await
        .unwrap();
    services
        .create(&post, &headless_service("loopback"))
        .await
        .unwrap();
    services
        .create(&post, &headless_service("data"))
        .await
        .unwrap();

    let pods = running_pods(&ns, "app=data", 3).await;
    let ips: BTreeSet<String> = pods.iter().map(pod_ip).collect();
    for pod in &pods {
        assert_eq!(
            node_of(pod),
            DATA_NODE,
            "{} is on the data node",
            pod.name_any()
        );
        assert!(
            is_data_node_ip(&pod_ip(pod)),
            "pod IP {} is in {DATA_NODE_CIDR}",
            pod_ip(pod)
        );
    }
    assert_eq!(ips.len(), 3, "pod IPs are unique: {ips:?}");

    wait_for(
        "the EndpointSlice to list the 3 data pods as ready",
        TIMEOUT,
        || async { (ready_slice_addresses(&ns, "data").await == ips).then_some(()) },
    )
    .await;

    // The slice follows the pods: scaled to 2, it lists the 2 that are left.
    deployments
        .patch(
            "data",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await
        .unwrap();
    wait_for(
        "the EndpointSlice to list the 2 pods left",
        TIMEOUT,
        || async {
            let left: BTreeSet<String> =
                ns.live_pods("app=data").await.iter().map(pod_ip).collect();
            let ready = ready_slice_addresses(&ns, "data").await;
            (left.len() == 2 && ready == left).then_some(())
        },
    )
    .await;

    running_pods(&ns, "app=loopback", 2).await;
    assert!(
        ready_slice_addresses(&ns, "loopback").await.is_empty(),
        "loopback pod IPs never appear in an EndpointSlice"
    );
}

#[tokio::test]
async fn ordinary_pods_never_land_on_the_data_node() {
    let nodes: Api<Node> = Api::all(crate::common::client().await);
    let node = nodes.get(DATA_NODE).await.unwrap();
    let spec = node.spec.clone().unwrap_or_default();
    assert_eq!(spec.pod_cidr.as_deref(), Some(DATA_NODE_CIDR));
    assert!(
        spec.taints
            .unwrap_or_default()
            .iter()
            .any(|t| t.key == DATA_NODE_TAINT
                && t.value.as_deref() == Some("true")
                && t.effect == "NoSchedule"),
        "the data node carries {DATA_NODE_TAINT}=true:NoSchedule"
    );

    // Without the taint, the scheduler's default spreading puts about a third of these there.
    let ns = TestNs::new("no-data-node").await;
    let deployments: Api<Deployment> = ns.api();
    deployments
        .create(
            &PostParams::default(),
            &deployment("plain", 12, pause_spec()),
        )
        .await
        .unwrap();
    for pod in running_pods(&ns, "app=plain", 12).await {
        assert_ne!(
            node_of(&pod),
            DATA_NODE,
            "{} is not on the data node",
            pod.name_any()
        );
        assert!(!is_data_node_ip(&pod_ip(&pod)));
    }

    // Cluster-wide, whatever the other tests run: every pod on the data node asked for it.
    let pods: Api<Pod> = Api::all(ns.client.clone());
    let on_data_node = pods
        .list(&ListParams::default().fields(&format!("spec.nodeName={DATA_NODE}")))
        .await
        .unwrap()
        .items;
    for pod in on_data_node {
        let tolerates = pod
            .spec
            .and_then(|s| s.tolerations)
            .unwrap_or_default()
            .iter()
            .any(|t| t.key.as_deref() == Some(DATA_NODE_TAINT));
        assert!(
            tolerates,
            "{}/{} is on the data node without tolerating its taint",
            pod.metadata.namespace.unwrap_or_default(),
            pod.metadata.name.unwrap_or_default()
        );
    }
}

/// `kubectl exec -n NS POD -- ARGS`: (exit code, stdout, stderr, duration).
fn exec(ns: &TestNs, pod: &str, args: &[&str]) -> (Option<i32>, String, String, Duration) {
    let started = Instant::now();
    let mut all = vec!["exec", "-n", &ns.name, pod, "--"];
    all.extend(args);
    let output = kubectl(&all);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn exec_runs_a_relative_command_in_the_pods_own_exec_work_dir() {
    let ns = TestNs::new("exec").await;
    let deployments: Api<Deployment> = ns.api();
    deployments
        .create(&PostParams::default(), &deployment("exec", 3, pause_spec()))
        .await
        .unwrap();
    let pods = running_pods(&ns, "app=exec", 3).await;
    let (a, b, without) = (pods[0].name_any(), pods[1].name_any(), pods[2].name_any());
    let exec_a = PodExec::create(&ns, &a).await;
    let exec_b = PodExec::create(&ns, &b).await;
    exec_a.write("busy_state", "busy\n");
    exec_b.write("busy_state", "idle\n");

    // kwok picks a new Exec up from its watch: wait for the first answer.
    wait_for("kwok to know the pod's Exec", TIMEOUT, || async {
        (exec(&ns, &a, &["cat", "busy_state"]).1 == "busy\n").then_some(())
    })
    .await;
    let (code, out, err, took) = exec(&ns, &b, &["cat", "busy_state"]);
    assert_eq!((code, out.as_str()), (Some(0), "idle\n"), "stderr: {err}");
    eprintln!("exec round trip through the API server and kwok: {took:?}");

    // Each call reads the file as it is now.
    exec_a.write("busy_state", "idle\n");
    let (code, out, err, _) = exec(&ns, &a, &["cat", "busy_state"]);
    assert_eq!((code, out.as_str()), (Some(0), "idle\n"), "stderr: {err}");

    // A command that fails arrives as a failure (kwok does not pass the exit code on).
    let (code, out, err, _) = exec(&ns, &a, &["cat", "no_such_file"]);
    assert_ne!(code, Some(0), "a failing command fails: {out} {err}");
    assert!(err.contains("exit status 1"), "stderr: {err}");

    // A pod without an Exec has no command to run.
    let (code, _, err, _) = exec(&ns, &without, &["cat", "busy_state"]);
    assert_ne!(code, Some(0), "no Exec, no command: {err}");
}

fn job(name: &str, keep_running: bool) -> Job {
    let labels = if keep_running {
        json!({"hsd-test/keep-running": "true"})
    } else {
        json!({})
    };
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "registry.invalid/worker:1"}],
                },
            },
        },
    }))
    .unwrap()
}

/// The phase of the one pod of a Job, once it has one.
async fn job_pod(ns: &TestNs, job: &str) -> Option<(String, String)> {
    let pods = ns.live_pods(&format!("job-name={job}")).await;
    let pod = pods.first()?;
    let phase = pod.status.as_ref()?.phase.clone()?;
    Some((pod.name_any(), phase))
}

async fn job_condition(ns: &TestNs, job: &str, condition: &str) -> bool {
    let jobs: Api<Job> = ns.api();
    jobs.get(job)
        .await
        .unwrap()
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == condition && c.status == "True")
}

#[tokio::test]
async fn a_keep_running_job_pod_runs_until_annotated_then_succeeds_or_fails() {
    let ns = TestNs::new("jobs").await;
    let jobs: Api<Job> = ns.api();
    let post = PostParams::default();
    for (name, keep_running) in [("plain", false), ("worker", true), ("doomed", true)] {
        jobs.create(&post, &job(name, keep_running)).await.unwrap();
    }
    // The stock behaviour stays for every other Job: its pod completes at once.
    wait_for("the plain Job to complete", TIMEOUT, || async {
        job_condition(&ns, "plain", "Complete").await.then_some(())
    })
    .await;

    let mut running = Vec::new();
    for name in ["worker", "doomed"] {
        let pod = wait_for(&format!("the {name} pod to run"), TIMEOUT, || async {
            job_pod(&ns, name)
                .await
                .filter(|(_, phase)| phase == "Running")
        })
        .await;
        running.push(pod.0);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (name, pod) in ["worker", "doomed"].iter().zip(&running) {
        assert_eq!(
            job_pod(&ns, name).await,
            Some((pod.clone(), "Running".to_string())),
            "a keep-running pod is still running 3 s later"
        );
        assert!(!job_condition(&ns, name, "Complete").await);
    }

    let pods: Api<Pod> = ns.api();
    for (pod, value) in running.iter().zip(["succeed", "fail"]) {
        pods.patch(
            pod,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"hsd-test/complete": value}}})),
        )
        .await
        .unwrap();
    }
    for (name, pod, phase, condition) in [
        ("worker", &running[0], "Succeeded", "Complete"),
        ("doomed", &running[1], "Failed", "Failed"),
    ] {
        wait_for(
            &format!("{pod} {phase}, Job {name} {condition}"),
            TIMEOUT,
            || async {
                let pod = pods.get(pod).await.unwrap();
                let phase_now = pod.status.and_then(|s| s.phase).unwrap_or_default();
                (phase_now == phase && job_condition(&ns, name, condition).await).then_some(())
            },
        )
        .await;
    }
}
