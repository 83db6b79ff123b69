//! `kubectl hsd proxy` across an API server restart: connections held before and during the
//! outage are forwarded once the app is ready, and a connection that arrives while the API
//! server is down wakes an app at zero once it is back.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::common::TestNs;
use crate::common::proxy::{
    EndpointState, Proxy, StandIn, create_deployment, read_exactly, wait_replicas, write_slice,
};
use crate::{TIMEOUT, cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_proxy_connections_survive_an_api_server_restart() {
    let _serial = crate::serial().await;
    let ns = TestNs::new("fault-proxy").await;
    create_deployment(&ns, "app", 0).await;
    write_slice(&ns, "app", &[]).await;
    let app = StandIn::new(false).await;
    let target = app.addr.to_string();
    let mut proxy = Proxy::start(
        &ns.name,
        "restart",
        &["--deployment", "app", "--target", &target, "--ttl", "1h"],
    )
    .await;

    // Held across the outage: one connection from before it (it woke the app), one from during.
    let mut before = proxy.connect().await;
    before.write_all(b"before").await.unwrap();
    wait_replicas(&ns, "app", 1, TIMEOUT).await;
    cluster(&["stop", "apiserver"]);
    let mut during = proxy.connect().await;
    during.write_all(b"during").await.unwrap();
    proxy
        .wait_metric("hsd_proxy_connections_held", TIMEOUT, |v| v == 2.0)
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster(&["start", "apiserver"]);
    // The pod starts after the restart.
    app.switch(true).await;
    write_slice(&ns, "app", &[EndpointState::Ready]).await;
    read_exactly(&mut before, b"before", TIMEOUT).await.unwrap();
    read_exactly(&mut during, b"during", TIMEOUT).await.unwrap();
    proxy.assert_alive();

    // An app put to sleep, and a connection that arrives while the API server is down: the
    // wake happens once it is back (a restart does not strand the app at zero).
    drop((before, during));
    let deployments: Api<Deployment> = ns.api();
    deployments
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 0}})),
        )
        .await
        .unwrap();
    write_slice(&ns, "app", &[]).await;
    app.switch(false).await;
    proxy
        .wait_metric("hsd_proxy_replicas", TIMEOUT, |v| v == 0.0)
        .await;
    cluster(&["stop", "apiserver"]);
    let mut stranded = proxy.connect().await;
    stranded.write_all(b"stranded?").await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster(&["start", "apiserver"]);
    wait_replicas(&ns, "app", 1, TIMEOUT).await;
    app.switch(true).await;
    write_slice(&ns, "app", &[EndpointState::Ready]).await;
    read_exactly(&mut stranded, b"stranded?", TIMEOUT)
        .await
        .unwrap();
    proxy.assert_alive();
    assert!(
        proxy
            .metric("hsd_proxy_scale_writes_total{kind=\"wake\",result=\"error\"}")
            .await
            .unwrap_or(0.0)
            >= 1.0,
        "the wake was tried during the outage:\n{}",
        proxy.log()
    );
}
