//! `kubectl hsd proxy` against the real control plane: sleep after the TTL and wake on connect,
//! the hold limits, two replicas sharing the deadline, the SIGTERM drain, a ready endpoint that
//! still refuses, terminating endpoints, a Service named unlike the Deployment, the dial
//! allow-list, least-privilege RBAC and the Endpoints fallback. Readiness comes from
//! EndpointSlices the test writes (TEST-NET addresses, never dialled); the app is a loopback
//! stand-in. No test opens a Service IP.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Endpoints, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::PostParams;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::common::proxy::{
    EndpointState, Proxy, StandIn, closed_within, create_deployment, echo, read_exactly,
    scale_down_at, stays_silent, wait_replicas, write_slice, zpa_app, zpa_proxy, zpa_proxy_as,
};
use crate::common::{TestNs, hsd, wait_for};

const SHORT: Duration = Duration::from_secs(5);
const LONG: Duration = Duration::from_secs(30);

fn deadline_of(ns_annotation: &str) -> jiff::Timestamp {
    ns_annotation.parse().expect("an RFC 3339 annotation")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeps_after_the_ttl_and_wakes_on_connect() {
    let (ns, app) = zpa_app("proxy-wake", &[EndpointState::Ready], true).await;
    let proxy = zpa_proxy(&ns, &app, "wake", &["--ttl", "2s"]).await;

    // 1 -> 0 after the TTL without connections.
    wait_replicas(&ns, "app", 0, LONG).await;
    assert_eq!(
        proxy
            .metric("hsd_proxy_scale_writes_total{kind=\"sleep\",result=\"ok\"}")
            .await,
        Some(1.0)
    );
    // The app's pods go away: nothing ready, nothing listening.
    write_slice(&ns, "app", &[]).await;
    app.switch(false).await;

    // 0 -> 1 on a connection, which is held meanwhile.
    let mut client = proxy.connect().await;
    client.write_all(b"ping").await.unwrap();
    wait_replicas(&ns, "app", 1, SHORT).await;
    // ZPA's JSON-patch `replace` of an absent annotation failed; here the wake writes it, and
    // a TTL ahead.
    let annotation = scale_down_at(&ns, "app").await.expect("the annotation");
    assert!(
        deadline_of(&annotation) > jiff::Timestamp::now(),
        "{annotation}"
    );
    assert!(stays_silent(&mut client, Duration::from_secs(1)).await);
    assert_eq!(proxy.metric("hsd_proxy_connections_held").await, Some(1.0));

    // The pod starts: it listens, then its endpoint turns ready. The held bytes go through.
    app.switch(true).await;
    write_slice(&ns, "app", &[EndpointState::Ready]).await;
    read_exactly(&mut client, b"ping", SHORT).await.unwrap();
    echo(&mut client, b"more", SHORT).await.unwrap();
    assert_eq!(
        proxy.metric("hsd_proxy_wake_seconds_count").await,
        Some(1.0)
    );
    assert_eq!(
        proxy
            .metric("hsd_proxy_holds_total{outcome=\"forwarded\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        proxy
            .metric("hsd_proxy_scale_writes_total{kind=\"wake\",result=\"ok\"}")
            .await,
        Some(1.0)
    );
    // An open connection keeps the app up, however long past the TTL.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(crate::common::replicas(&ns, "app").await, Some(1));
    echo(&mut client, b"still", SHORT).await.unwrap();
}

async fn requests(proxy: &Proxy) -> f64 {
    let mut total = 0.0;
    for kind in ["read", "write"] {
        total += proxy
            .metric(&format!("hsd_proxy_api_requests_total{{kind=\"{kind}\"}}"))
            .await
            .unwrap();
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_warm_path_makes_no_api_request() {
    let (ns, app) = zpa_app("proxy-warm", &[EndpointState::Ready], true).await;
    let proxy = zpa_proxy(&ns, &app, "warm", &["--ttl", "1h"]).await;
    // The first connection writes the deadline (there was none).
    echo(&mut proxy.connect().await, b"first", SHORT)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = requests(&proxy).await;
    for i in 0..50 {
        let mut client = proxy.connect().await;
        echo(&mut client, format!("n{i}").as_bytes(), SHORT)
            .await
            .unwrap();
    }
    assert_eq!(
        requests(&proxy).await,
        before,
        "API requests on the warm path"
    );
    assert_eq!(
        proxy.metric("hsd_proxy_connections_total").await,
        Some(51.0)
    );
    assert_eq!(app.accepted(), 51);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_wait_closes_held_connections_and_max_held_refuses_at_once() {
    // The pod exists but is not ready: connections are held, never forwarded.
    let (ns, app) = zpa_app("proxy-limits", &[EndpointState::NotReady], true).await;
    let args = ["--max-wait", "2s", "--max-held", "2"];
    let proxy = zpa_proxy(&ns, &app, "limits", &args).await;
    let opened = Instant::now();
    let mut first = proxy.connect().await;
    let mut second = proxy.connect().await;
    proxy
        .wait_metric("hsd_proxy_connections_held", SHORT, |v| v == 2.0)
        .await;
    let mut third = proxy.connect().await;
    let refused_after = closed_within(&mut third, SHORT).await;
    assert!(
        refused_after.is_some_and(|d| d < Duration::from_secs(1)),
        "the third is refused at once: {refused_after:?}"
    );
    assert_eq!(
        proxy
            .metric("hsd_proxy_connections_refused_total{reason=\"max_held\"}")
            .await,
        Some(1.0)
    );
    for client in [&mut first, &mut second] {
        assert!(
            closed_within(client, Duration::from_secs(10))
                .await
                .is_some()
        );
    }
    let held_for = opened.elapsed();
    assert!(
        held_for >= Duration::from_millis(1800) && held_for < Duration::from_secs(8),
        "held for about --max-wait: {held_for:?}"
    );
    assert_eq!(
        proxy
            .metric("hsd_proxy_holds_total{outcome=\"max_wait\"}")
            .await,
        Some(2.0)
    );
    assert_eq!(
        proxy.metric("hsd_proxy_hold_seconds_count").await,
        Some(2.0)
    );
    assert_eq!(proxy.metric("hsd_proxy_connections_held").await, Some(0.0));
    assert_eq!(
        app.accepted(),
        0,
        "nothing was forwarded to a not-ready app"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_busy_proxy_keeps_the_app_awake_although_the_other_is_idle() {
    let (ns, app) = zpa_app("proxy-shared", &[EndpointState::Ready], true).await;
    let busy = zpa_proxy(&ns, &app, "busy", &["--ttl", "3s"]).await;
    let idle = zpa_proxy(&ns, &app, "idle", &["--ttl", "3s"]).await;
    let mut client = busy.connect().await;
    echo(&mut client, b"hello", SHORT).await.unwrap();

    // The idle proxy's own TTL passes three times over; only the busy one's deadline holds it.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(10) {
        assert_eq!(
            crate::common::replicas(&ns, "app").await,
            Some(1),
            "scaled down while a connection was open"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    echo(&mut client, b"alive", SHORT).await.unwrap();
    let seen_by_idle = idle
        .metric("hsd_proxy_scale_down_at_seconds")
        .await
        .unwrap();
    assert!(
        seen_by_idle > jiff::Timestamp::now().as_second() as f64,
        "the idle proxy sees the busy one's deadline ahead: {seen_by_idle}"
    );
    assert_eq!(
        idle.metric("hsd_proxy_scale_writes_total{kind=\"sleep\",result=\"ok\"}")
            .await,
        Some(0.0)
    );

    // Once the connection closes, the app sleeps after a TTL: the check above could fail.
    drop(client);
    wait_replicas(&ns, "app", 0, LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_open_connections_and_refuses_new_ones() {
    let (ns, app) = zpa_app("proxy-drain", &[EndpointState::Ready], true).await;
    let args = ["--ttl", "1h", "--drain-timeout", "20s"];
    let mut proxy = zpa_proxy(&ns, &app, "drain", &args).await;
    let mut client = proxy.connect().await;
    echo(&mut client, b"before", SHORT).await.unwrap();
    let signalled = Instant::now();
    proxy.signal("TERM");
    wait_for("the drain to start", SHORT, || async {
        proxy.log().contains("stopped accepting").then_some(())
    })
    .await;
    // New connections are refused; /readyz says not ready; the open one keeps working.
    let refused = tokio::net::TcpStream::connect(proxy.addr).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused),
        "{refused:?}"
    );
    let (status, _) = crate::common::http_get(&format!("{}/readyz", proxy.admin))
        .await
        .unwrap();
    assert_eq!(status, 503);
    tokio::time::sleep(Duration::from_secs(1)).await;
    echo(&mut client, b"during the drain", SHORT).await.unwrap();
    proxy.assert_alive();
    drop(client);
    let status = proxy.wait_exit(SHORT).await.expect("exits once drained");
    assert!(status.success(), "{status}\n{}", proxy.log());
    assert!(signalled.elapsed() < Duration::from_secs(15));
    assert!(proxy.log().contains("drained"), "{}", proxy.log());

    // A connection still open at the drain timeout is closed, and the exit is still clean.
    let args = ["--ttl", "1h", "--drain-timeout", "1s"];
    let mut proxy = zpa_proxy(&ns, &app, "drain-timeout", &args).await;
    let mut client = proxy.connect().await;
    echo(&mut client, b"x", SHORT).await.unwrap();
    proxy.signal("TERM");
    let status = proxy
        .wait_exit(SHORT)
        .await
        .expect("exits after the timeout");
    assert!(status.success(), "{status}");
    assert!(closed_within(&mut client, SHORT).await.is_some());
    assert!(
        proxy.log().contains("drain timeout: closing 1 connections"),
        "{}",
        proxy.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_endpoint_that_refuses_is_retried_until_it_answers() {
    // Ready says the endpoint, yet nothing listens yet.
    let (ns, app) = zpa_app("proxy-refusing", &[EndpointState::Ready], false).await;
    let proxy = zpa_proxy(&ns, &app, "refusing", &["--ttl", "1h"]).await;
    let mut client = proxy.connect().await;
    client.write_all(b"hi").await.unwrap();
    proxy
        .wait_metric(
            "hsd_proxy_dial_errors_total{reason=\"refused\"}",
            SHORT,
            |v| v >= 3.0,
        )
        .await;
    assert!(stays_silent(&mut client, Duration::from_millis(500)).await);
    assert_eq!(proxy.metric("hsd_proxy_connections_held").await, Some(1.0));
    app.switch(true).await;
    read_exactly(&mut client, b"hi", SHORT).await.unwrap();
    assert_eq!(
        proxy
            .metric("hsd_proxy_holds_total{outcome=\"forwarded\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminating_endpoint_is_never_treated_as_ready() {
    // The stand-in listens: forwarding now would succeed, so silence means the proxy held.
    let terminating = [
        EndpointState::Terminating,
        EndpointState::TerminatingButReady,
    ];
    let (ns, app) = zpa_app("proxy-terminating", &terminating, true).await;
    let proxy = zpa_proxy(&ns, &app, "terminating", &["--ttl", "1h"]).await;
    proxy
        .wait_metric("hsd_proxy_endpoints{state=\"terminating\"}", SHORT, |v| {
            v == 2.0
        })
        .await;
    let mut client = proxy.connect().await;
    client.write_all(b"x").await.unwrap();
    assert!(stays_silent(&mut client, Duration::from_secs(2)).await);
    assert_eq!(
        app.accepted(),
        0,
        "forwarded while every endpoint terminated"
    );
    assert_eq!(proxy.metric("hsd_proxy_connections_held").await, Some(1.0));
    // A replacement turns ready.
    write_slice(
        &ns,
        "app",
        &[EndpointState::Terminating, EndpointState::Ready],
    )
    .await;
    read_exactly(&mut client, b"x", SHORT).await.unwrap();
    assert_eq!(app.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_named_unlike_the_deployment_wake_it() {
    let ns = TestNs::new("proxy-endpoints").await;
    create_deployment(&ns, "backend", 0).await;
    // The Service is backend-svc. A slice labelled with the Deployment's name is a decoy: a
    // proxy reading readiness by the Deployment's name would forward too early.
    write_slice(&ns, "backend-svc", &[EndpointState::NotReady]).await;
    write_slice(&ns, "backend", &[EndpointState::Ready]).await;
    let app = StandIn::new(true).await;
    let target = app.addr.to_string();
    let proxy = Proxy::start(
        &ns.name,
        "endpoints",
        &[
            "--deployment",
            "backend",
            "--endpoints",
            "backend-svc",
            "--target",
            &target,
        ],
    )
    .await;
    let mut client = proxy.connect().await;
    client.write_all(b"wake").await.unwrap();
    wait_replicas(&ns, "backend", 1, SHORT).await;
    assert!(stays_silent(&mut client, Duration::from_millis(1500)).await);
    assert_eq!(app.accepted(), 0);
    write_slice(&ns, "backend-svc", &[EndpointState::Ready]).await;
    read_exactly(&mut client, b"wake", SHORT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_outside_the_allow_list_is_never_dialled() {
    let (ns, _app) = zpa_app("proxy-allow", &[EndpointState::Ready], true).await;
    // The target is loopback too, so that a broken guard would only reach this stand-in,
    // which counts it.
    let outside = StandIn::on_ip("127.0.0.2", true).await;
    let args = ["--allow-dial-cidr", "127.0.0.1/32"];
    let proxy = zpa_proxy(&ns, &outside, "allow", &args).await;
    let mut client = proxy.connect().await;
    let closed = closed_within(&mut client, SHORT).await;
    assert!(
        closed.is_some_and(|d| d < Duration::from_secs(2)),
        "{closed:?}"
    );
    assert_eq!(outside.accepted(), 0, "dialled outside --allow-dial-cidr");
    assert_eq!(
        proxy
            .metric("hsd_proxy_dial_errors_total{reason=\"not_allowed\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        proxy
            .metric("hsd_proxy_connections_refused_total{reason=\"not_allowed\"}")
            .await,
        Some(1.0)
    );
}

/// Applies the ServiceAccount, Role and RoleBinding of `--zpa-manifest`, with `edit` applied to
/// the Role; returns a kubeconfig that authenticates as that ServiceAccount.
async fn proxy_identity(ns: &TestNs, edit: impl Fn(&mut Role)) -> std::path::PathBuf {
    let output = hsd(&[
        "proxy",
        "--zpa-manifest",
        "-n",
        &ns.name,
        "--deployment",
        "app",
        "--target",
        "app:80",
        "--address",
        ":80",
    ]);
    assert!(output.status.success(), "{output:?}");
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(&String::from_utf8_lossy(&output.stdout)).unwrap();
    let find = |kind: &str| {
        documents
            .iter()
            .find(|d| d["kind"] == kind)
            .cloned()
            .unwrap_or_else(|| panic!("a {kind}"))
    };
    let post = PostParams::default();
    let account: ServiceAccount = serde_json::from_value(find("ServiceAccount")).unwrap();
    let mut role: Role = serde_json::from_value(find("Role")).unwrap();
    edit(&mut role);
    let binding: RoleBinding = serde_json::from_value(find("RoleBinding")).unwrap();
    ns.api::<ServiceAccount>()
        .create(&post, &account)
        .await
        .unwrap();
    ns.api::<Role>().create(&post, &role).await.unwrap();
    ns.api::<RoleBinding>()
        .create(&post, &binding)
        .await
        .unwrap();
    let token = crate::security::token_for(ns, "app-proxy", None).await;
    crate::security::token_kubeconfig(ns, "app-proxy", &token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rendered_rbac_is_enough_to_sleep_and_wake() {
    let (ns, app) = zpa_app("proxy-rbac", &[EndpointState::Ready], true).await;
    let config = proxy_identity(&ns, |_| {}).await;
    let proxy = zpa_proxy_as(&config, &ns, &app, "rbac", &["--ttl", "2s"]).await;
    wait_replicas(&ns, "app", 0, LONG).await;
    let mut client = proxy.connect().await;
    wait_replicas(&ns, "app", 1, SHORT).await;
    echo(&mut client, b"least privilege", SHORT).await.unwrap();
    assert!(
        proxy.log().contains("readiness from EndpointSlices"),
        "{}",
        proxy.log()
    );
    assert!(!proxy.log().contains("forbidden"), "{}", proxy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_endpointslices_readiness_comes_from_endpoints() {
    // A ready slice that this identity may not read.
    let (ns, app) = zpa_app("proxy-fallback", &[EndpointState::Ready], true).await;
    let config = proxy_identity(&ns, |role| {
        for rule in role.rules.iter_mut().flatten() {
            if rule
                .resources
                .as_ref()
                .is_some_and(|r| r.contains(&"endpointslices".to_string()))
            {
                rule.verbs.clear();
                rule.verbs.push("get".into());
            }
        }
    })
    .await;
    let proxy = zpa_proxy_as(&config, &ns, &app, "fallback", &["--ttl", "1h"]).await;
    assert!(
        proxy.log().contains("readiness from Endpoints"),
        "{}",
        proxy.log()
    );
    let mut client = proxy.connect().await;
    client.write_all(b"old api").await.unwrap();
    assert!(stays_silent(&mut client, Duration::from_secs(1)).await);
    let endpoints: Endpoints = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "app"},
        "subsets": [{"addresses": [{"ip": "192.0.2.10"}], "ports": [{"port": 80}]}],
    }))
    .unwrap();
    ns.api::<Endpoints>()
        .create(&PostParams::default(), &endpoints)
        .await
        .unwrap();
    read_exactly(&mut client, b"old api", SHORT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_proxy_input_is_a_clear_error() {
    let ns = TestNs::new("proxy-bad").await;
    create_deployment(&ns, "app", 1).await;
    create_deployment(&ns, "other", 1).await;
    let run = |args: &[&str]| {
        let mut all = vec![
            "proxy",
            "-n",
            &ns.name,
            "--admin-address",
            "127.0.0.1:0",
            "--address",
            "127.0.0.1:0",
        ];
        all.extend(args);
        let output = hsd(&all);
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    for (args, code, message) in [
        (&["--deployment", "app"][..], 2, "--target"),
        (&["--target", "app:80"], 2, "--deployment"),
        (&["--deployment", "app", "--target", "app"], 2, "--target"),
        (
            &["--deployment", "app", "--target", "app:80", "--ttl", "soon"],
            2,
            "--ttl",
        ),
        (
            &["--deployment", "app", "--target", "app:80", "--ttl", "0"],
            2,
            "--ttl must be at least 1s",
        ),
        (
            &[
                "--deployment",
                "app",
                "--target",
                "app:80",
                "--allow-dial-cidr",
                "10.0.0.0/40",
            ],
            2,
            "--allow-dial-cidr",
        ),
        (
            &["--deployment", "App!", "--target", "app:80"],
            2,
            "not a valid object name",
        ),
        (
            &["--deployment", "nope", "--target", "app:80"],
            1,
            "error: Deployment",
        ),
        (
            &["-l", "app in (app,other)", "--target", "app:80"],
            1,
            "matches 2 Deployments",
        ),
        (&["-l", "app=none", "--target", "app:80"], 1, "not found"),
        // HSD mode.
        (&["--hsd", "nope"], 1, "HotStandbyDeployment"),
        (
            &["--hsd", "nope", "--target", "app:80"],
            2,
            "cannot be used with",
        ),
        (
            &["--deployment", "app", "--target", "app:80", "--port", "80"],
            2,
            "--hsd",
        ),
        (
            &["--hsd", "nope", "--when-all-busy", "sometimes"],
            2,
            "least-conn",
        ),
        (
            &["--hsd", "nope", "--zpa-manifest"],
            2,
            "cannot be used with",
        ),
    ] {
        let (got, stderr) = run(args);
        assert_eq!(got, Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(stderr.lines().any(|l| l.starts_with("error")), "{stderr}");
    }
    // A taken port is an error, not a panic.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = busy.local_addr().unwrap().to_string();
    let output = hsd(&[
        "proxy",
        "-n",
        &ns.name,
        "--deployment",
        "app",
        "--target",
        "app:80",
        "--address",
        &address,
        "--admin-address",
        "127.0.0.1:0",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("error: cannot listen on"), "{stderr}");
}
