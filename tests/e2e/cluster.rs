//! The local control plane behaves like a real cluster: the Deployment and ReplicaSet
//! controllers, the scheduler, kwok's fake kubelets and the garbage collector.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::common::{TestNs, is_ready, wait_for};

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
