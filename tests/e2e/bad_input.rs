//! Bad input answered with a clear condition, never a crash and never a write outside the HSD's
//! own objects: garbage busy annotations, hostile HTTP busy endpoints, a huge pod template.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::common::http_server::test_port;
use crate::common::{TestNs, ensure_crd};
use crate::core::{annotate, create_hsd, event_reasons, example, hsd_status, ready_pods, replicas};

#[tokio::test]
async fn garbage_busy_annotations_count_as_busy_with_a_warning() {
    ensure_crd();
    let ns = TestNs::new("bad-annotation").await;
    let mut manifest = example("hsd-annotation.yaml");
    manifest["metadata"]["namespace"] = json!(ns.name);
    create_hsd(&ns, &manifest).await.unwrap();
    ns.hsd_ok(&["reconcile"]);
    let pods = ready_pods(&ns, "app=game-ws", 3).await;
    annotate(&ns, &pods[0].name_any(), "paia.tech/busy", "maybe?").await;
    annotate(&ns, &pods[1].name_any(), "paia.tech/busy", "YES").await;
    let summary = ns.hsd_ok(&["reconcile"]);
    assert!(
        summary.contains("scaled 3->5"),
        "a garbage value is busy (fail-safe), YES is busy: {summary}"
    );
    let status = hsd_status(&ns, "game-ws").await;
    let degraded = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "ProbeDegraded")
        .unwrap();
    assert_eq!(degraded["reason"], "InvalidBusyAnnotation");
    assert!(
        degraded["message"].as_str().unwrap().contains("maybe?"),
        "{degraded}"
    );
    let events = event_reasons(&ns).await;
    assert!(
        events
            .iter()
            .any(|(t, r, _)| t == "Warning" && r == "InvalidBusyAnnotation"),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_huge_pod_template_is_handled() {
    ensure_crd();
    let ns = TestNs::new("bad-huge").await;
    let mut manifest = example("hsd-annotation.yaml");
    manifest["metadata"]["namespace"] = json!(ns.name);
    // About 300 KB of environment: large, but within what the API server stores.
    let env: Vec<_> = (0..3000)
        .map(|i| json!({"name": format!("VAR_{i}"), "value": "x".repeat(80)}))
        .collect();
    manifest["spec"]["podTemplate"]["spec"]["containers"][0]["env"] = json!(env);
    create_hsd(&ns, &manifest).await.unwrap();
    ns.hsd_ok(&["reconcile"]);
    assert_eq!(replicas(&ns, "game-ws-workload").await, Some(3));
    // Past the API server's request limit, the create is refused with its reason; nothing crashes.
    let env: Vec<_> = (0..40000)
        .map(|i| json!({"name": format!("VAR_{i}"), "value": "x".repeat(80)}))
        .collect();
    manifest["metadata"]["name"] = json!("too-big");
    manifest["spec"]["podTemplate"]["spec"]["containers"][0]["env"] = json!(env);
    let error = create_hsd(&ns, &manifest).await.unwrap_err();
    eprintln!("a 4 MB HSD: {error}");
    let output = ns.hsd(&["reconcile"]);
    assert!(output.status.success());
}

#[derive(Clone, Copy, Debug)]
enum Hostile {
    /// 302 to another loopback address (which records whether anyone followed).
    Redirect,
    /// 200 with a body that never ends.
    EndlessBody,
    /// The status line one byte at a time, slower than the timeout.
    Trickle,
    /// Not HTTP at all.
    Garbage,
}

async fn serve_hostile(
    addr: SocketAddr,
    behaviour: Hostile,
    redirect_to: SocketAddr,
) -> tokio::task::JoinHandle<()> {
    let listener = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buffer = [0u8; 1024];
                let _ = socket.read(&mut buffer).await;
                match behaviour {
                    Hostile::Redirect => {
                        let response = format!(
                            "HTTP/1.1 302 Found\r\nlocation: http://{redirect_to}/busy\r\ncontent-length: 0\r\n\r\n"
                        );
                        let _ = socket.write_all(response.as_bytes()).await;
                    }
                    Hostile::EndlessBody => {
                        let _ = socket
                            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                            .await;
                        let chunk = format!("{:x}\r\n{}\r\n", 4096, "y".repeat(4096));
                        // Bounded: at most a minute of output, as long as the client reads.
                        let deadline = Instant::now() + Duration::from_secs(60);
                        while Instant::now() < deadline
                            && socket.write_all(chunk.as_bytes()).await.is_ok()
                        {
                        }
                    }
                    Hostile::Trickle => {
                        for byte in b"HTTP/1.1 200 OK\r\n\r\n" {
                            if socket.write_all(&[*byte]).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(300)).await;
                        }
                    }
                    Hostile::Garbage => {
                        let _ = socket.write_all(b"HELLO THERE\r\n\r\n").await;
                    }
                }
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_http_endpoints_are_bounded_and_never_followed() {
    ensure_crd();
    let ns = TestNs::new("bad-http").await;
    let port = test_port();
    let mut manifest = example("hsd-http.yaml");
    manifest["metadata"]["namespace"] = json!(ns.name);
    manifest["spec"]["idleTarget"] = json!(5);
    manifest["spec"]["maxReplicas"] = json!(20);
    manifest["spec"]["busyProbe"]["http"]["port"] = json!(port);
    create_hsd(&ns, &manifest).await.unwrap();
    ns.hsd_ok(&["reconcile"]);
    let pods = ready_pods(&ns, "app=game-ws", 5).await;
    let ip = |i: usize| pods[i].status.as_ref().unwrap().pod_ip.clone().unwrap();

    // The redirect target: a loopback address of no pod, counting visitors.
    let trap: SocketAddr = format!("127.0.0.1:{}", port + 1).parse().unwrap();
    let visitors = Arc::new(AtomicUsize::new(0));
    let trap_listener = TcpListener::bind(trap).await.unwrap();
    let counted = visitors.clone();
    let trap_task = tokio::spawn(async move {
        while let Ok((_socket, _)) = trap_listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
        }
    });
    let mut servers = Vec::new();
    for (i, behaviour) in [
        Hostile::Redirect,
        Hostile::EndlessBody,
        Hostile::Trickle,
        Hostile::Garbage,
    ]
    .into_iter()
    .enumerate()
    {
        let addr: SocketAddr = format!("{}:{port}", ip(i)).parse().unwrap();
        servers.push(serve_hostile(addr, behaviour, trap).await);
    }
    // Pod 4 has no server at all: the wrong port.

    let started = Instant::now();
    let output = ns.hsd(&["reconcile", "-o", "json"]);
    let elapsed = started.elapsed();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let item = &report["items"][0];
    // Endless body: 2xx, the body is never read (busy). Redirect (never followed), trickle,
    // garbage, wrong port: no answer about busy at all (unknown, counted as busy).
    assert_eq!(
        (
            item["busy"].as_i64(),
            item["idle"].as_i64(),
            item["unknown"].as_i64()
        ),
        (Some(1), Some(0), Some(4)),
        "{item}"
    );
    let degraded = item["events"].to_string();
    assert!(
        degraded.contains("redirect 302 to http://127.0.0.1:") && degraded.contains("not followed"),
        "ProbeDegraded names the status and the Location: {degraded}"
    );
    assert_eq!(
        visitors.load(Ordering::SeqCst),
        0,
        "the redirect was followed"
    );
    // Probes run concurrently, each bounded by its own 1 s timeout.
    assert!(
        elapsed < Duration::from_secs(8),
        "the pass took {elapsed:?}"
    );
    let status = hsd_status(&ns, "game-ws").await;
    let degraded = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "ProbeDegraded")
        .unwrap();
    assert_eq!(degraded["status"], "True");
    assert_eq!(
        replicas(&ns, "game-ws-workload").await,
        Some(6),
        "1 busy + idle target 5: the 4 unknown pods add nothing beyond the 5 pods that exist"
    );
    for server in servers {
        server.abort();
    }
    trap_task.abort();
}
