//! The drain handshake and busy-safe rollouts, with the real Deployment and ReplicaSet
//! controllers: a scale-down removes exactly the idle pods this tool chose, each with a
//! compare-and-swap on what it read; a template change keeps busy pods of the old template
//! running until their work ends; the state label routes new work to idle pods only.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use kubectl_hsd::labels::{DRAINING_ANNOTATION, RETIRED_ANNOTATION, STATE_LABEL, TEMPLATE_LABEL};
use kubectl_hsd::observe::hsd_resource;
use serde_json::{Value, json};

use crate::common::{
    TestNs, Watcher, busy_victims, ensure_crd, is_ready, on_data_node, spawn_deletion_recorder,
    wait_for,
};
use crate::core::{annotate, create_hsd, example, hsd_status, replicas};

const TIMEOUT: Duration = Duration::from_secs(60);

fn manifest(ns: &TestNs, idle_target: i32) -> Value {
    let mut manifest = example("hsd-annotation.yaml");
    manifest["metadata"]["namespace"] = json!(ns.name);
    manifest["spec"]["idleTarget"] = json!(idle_target);
    manifest
}

async fn ready(ns: &TestNs, n: usize) -> Vec<Pod> {
    wait_for(&format!("{n} ready pods"), TIMEOUT, || async {
        let pods = ns.live_pods("app=game-ws").await;
        (pods.len() == n && pods.iter().all(is_ready)).then_some(pods)
    })
    .await
}

fn busy(pod: &Pod) -> bool {
    pod.annotations().get("paia.tech/busy").map(String::as_str) == Some("true")
}

fn idle_names(pods: &[Pod]) -> Vec<String> {
    pods.iter()
        .filter(|p| !busy(p))
        .map(|p| p.name_any())
        .collect()
}

#[tokio::test]
async fn mark_busy_refuses_a_draining_pod_with_its_own_exit_code() {
    ensure_crd();
    let ns = TestNs::new("draining").await;
    create_hsd(&ns, &manifest(&ns, 2)).await.unwrap();
    ns.hsd_ok(&["reconcile"]);
    let pods = ready(&ns, 2).await;
    let name = pods[0].name_any();
    annotate(&ns, &name, DRAINING_ANNOTATION, "2026-12-01T00:00:00Z").await;
    let output = ns.hsd(&["mark-busy", &name]);
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is draining"), "{stderr}");
    let pod: Pod = ns.api().get(&name).await.unwrap();
    assert!(!busy(&pod), "not marked");
    // The other one is marked as ever.
    ns.hsd_ok(&["mark-busy", &pods[1].name_any()]);

    // A terminating pod (held by a finalizer, so that it stays) is refused the same way.
    let pod_api: Api<Pod> = ns.api();
    let held = pods[1].name_any();
    ns.hsd_ok(&["mark-idle", &held]);
    let finalizer = json!({"metadata": {"finalizers": ["paia.tech/test-hold"]}});
    pod_api
        .patch(&held, &PatchParams::default(), &Patch::Merge(&finalizer))
        .await
        .unwrap();
    pod_api
        .delete(&held, &DeleteParams::default())
        .await
        .unwrap();
    let output = ns.hsd(&["mark-busy", &held]);
    let release = json!({"metadata": {"finalizers": null}});
    pod_api
        .patch(&held, &PatchParams::default(), &Patch::Merge(&release))
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is terminating"), "{stderr}");
}

/// A watcher's scale-down marks the pods it chose, and drops replicas only once the
/// ReplicaSet controller has had `DRAIN_SETTLE` to see the marks in its own pod cache; the
/// ReplicaSet then deletes exactly the marked pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_drops_replicas_only_once_the_drain_has_settled() {
    ensure_crd();
    let ns = TestNs::new("settle").await;
    create_hsd(&ns, &manifest(&ns, 3)).await.unwrap();
    let (deletions, recorder) = spawn_deletion_recorder(&ns);
    let watcher = Watcher::start(&ns.name, "settle", &[]);
    ready(&ns, 3).await;
    let hsds: Api<DynamicObject> =
        Api::namespaced_with(ns.client.clone(), &ns.name, &hsd_resource());
    hsds.patch(
        "game-ws",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"idleTarget": 1}})),
    )
    .await
    .unwrap();
    // The marks as written (their value is when the watcher wrote them), and when the drop was
    // first seen here.
    let mut marked: std::collections::BTreeMap<String, jiff::Timestamp> = Default::default();
    let started = Instant::now();
    let dropped_seen = loop {
        assert!(
            started.elapsed() < TIMEOUT,
            "no drop to 1 replica\n{}",
            watcher.log()
        );
        for pod in ns.live_pods("app=game-ws").await {
            if let Some(since) = pod.annotations().get(DRAINING_ANNOTATION) {
                marked
                    .entry(pod.name_any())
                    .or_insert_with(|| since.parse().expect("an RFC 3339 mark"));
            }
        }
        if replicas(&ns, "game-ws-workload").await == Some(1) {
            break jiff::Timestamp::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        marked.len(),
        2,
        "two pods marked before the drop: {marked:?}"
    );
    let last_mark = marked.values().max().copied().unwrap();
    assert!(
        dropped_seen.duration_since(last_mark) >= kubectl_hsd::plan::DRAIN_SETTLE,
        "replicas dropped {} after the last mark\n{}",
        dropped_seen.duration_since(last_mark),
        watcher.log()
    );
    ready(&ns, 1).await;
    let deleted: BTreeSet<String> = deletions.lock().unwrap().keys().cloned().collect();
    assert_eq!(
        deleted,
        marked.keys().cloned().collect::<BTreeSet<_>>(),
        "the ReplicaSet deleted exactly the marked pods"
    );
    recorder.abort();
}

/// Flips pods busy and idle with the real `mark-busy`/`mark-idle` (separate processes, at
/// random moments, never waiting for the watcher) while the watcher scales up and down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_downs_never_take_a_pod_that_turned_busy_under_500_random_flips() {
    ensure_crd();
    let ns = TestNs::new("race").await;
    let mut manifest = manifest(&ns, 2);
    manifest["spec"]["maxReplicas"] = json!(10);
    create_hsd(&ns, &manifest).await.unwrap();
    let (deletions, recorder) = spawn_deletion_recorder(&ns);
    // Pods Ready for 3 s or more, deleted without a draining mark: the ReplicaSet's own choice
    // of a pod it did not owe (one it owed was made after the pass read, so is younger), taken
    // while its cache lacked the drain: the race that can reach a busy pod. Counted, not
    // asserted (timestamps are whole seconds).
    let (unmarked, unmarked_recorder) = crate::common::spawn_deletion_recorder_with(
        &ns,
        Arc::new(|pod: &Pod| {
            let ready_since = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready" && c.status == "True"))
                .and_then(|c| c.last_transition_time.as_ref())
                .map(|t| t.0);
            // The deletion timestamp is the end of the grace period, not the request.
            let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(0);
            let deleted_at = pod
                .metadata
                .deletion_timestamp
                .as_ref()
                .map(|t| t.0 - jiff::SignedDuration::from_secs(grace));
            let long_ready = match (ready_since, deleted_at) {
                (Some(since), Some(at)) => {
                    at.duration_since(since) >= jiff::SignedDuration::from_secs(3)
                }
                _ => false,
            };
            let hit = long_ready && !pod.annotations().contains_key(DRAINING_ANNOTATION);
            if hit {
                eprintln!(
                    "deleted unmarked: {} Ready since {ready_since:?}, deleted at {deleted_at:?}",
                    pod.name_any()
                );
            }
            hit
        }),
    );
    let watcher = Watcher::start(&ns.name, "race", &[]);
    ready(&ns, 2).await;

    let flips = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let seed = std::env::var("HSD_RACE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15_u64);
    eprintln!("race seed {seed:#x} (HSD_RACE_SEED to replay)");
    // One flip: the real CLI, a process of its own; returns whether the mark was accepted.
    let flip = {
        let (flips, refused) = (flips.clone(), refused.clone());
        let namespace = ns.name.clone();
        move |verb: &'static str, pod: String| {
            let (flips, refused, namespace) = (flips.clone(), refused.clone(), namespace.clone());
            async move {
                let output = tokio::task::spawn_blocking(move || {
                    crate::common::hsd(&[verb, &pod, "-n", &namespace])
                })
                .await
                .unwrap();
                flips.fetch_add(1, Ordering::SeqCst);
                match output.status.code() {
                    Some(0) => true,
                    Some(3) => {
                        refused.fetch_add(1, Ordering::SeqCst);
                        false
                    }
                    // A pod deleted between the list and the mark.
                    _ => false,
                }
            }
        }
    };
    let pods_api: Api<Pod> = ns.api();
    let ready_pods = {
        let pods_api = pods_api.clone();
        move || {
            let pods_api = pods_api.clone();
            async move {
                pods_api
                    .list(&ListParams::default().labels("app=game-ws"))
                    .await
                    .map(|l| l.items)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none() && is_ready(p))
                    .collect::<Vec<Pod>>()
            }
        }
    };
    // The cycler: three pods turn busy, the buffer refills, then they turn idle together, so
    // that the watcher drains three pods while the racer below marks pods busy at random.
    let cycler = {
        let (flip, ready_pods, flips) = (flip.clone(), ready_pods.clone(), flips.clone());
        let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = ns.api();
        tokio::spawn(async move {
            while flips.load(Ordering::SeqCst) < 500 {
                let chosen: Vec<String> = idle_names(&ready_pods().await)
                    .into_iter()
                    .take(3)
                    .collect();
                let marks = futures::future::join_all(
                    chosen.iter().map(|pod| flip("mark-busy", pod.clone())),
                )
                .await;
                let marked: Vec<String> = chosen
                    .into_iter()
                    .zip(marks)
                    .filter(|(_, accepted)| *accepted)
                    .map(|(pod, _)| pod)
                    .collect();
                // Let the buffer refill: every pod the Deployment asks for exists and is ready,
                // so that the coming scale-down has pods to drain.
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    let want = deployments
                        .get_opt("game-ws-workload")
                        .await
                        .ok()
                        .flatten()
                        .and_then(|d| d.spec?.replicas)
                        .unwrap_or(0) as usize;
                    if ready_pods().await.len() >= want {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                futures::future::join_all(marked.into_iter().map(|pod| flip("mark-idle", pod)))
                    .await;
            }
        })
    };
    let racer = {
        let (flip, ready_pods, flips) = (flip.clone(), ready_pods.clone(), flips.clone());
        tokio::spawn(async move {
            let mut rng = seed;
            let mut next = move || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            while flips.load(Ordering::SeqCst) < 500 {
                // An idle pod turns busy at a random moment (perhaps the moment the watcher
                // drains it), and soon idle again.
                let idle = idle_names(&ready_pods().await);
                if idle.is_empty() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                let pod = idle[(next() % idle.len() as u64) as usize].clone();
                if flip("mark-busy", pod.clone()).await {
                    tokio::time::sleep(Duration::from_millis(next() % 80)).await;
                    flip("mark-idle", pod).await;
                }
                tokio::time::sleep(Duration::from_millis(100 + next() % 200)).await;
            }
        })
    };
    cycler.await.unwrap();
    racer.await.unwrap();
    // Let the last scale-downs finish, then look.
    tokio::time::sleep(Duration::from_secs(3)).await;
    recorder.abort();
    unmarked_recorder.abort();
    let deleted = deletions.lock().unwrap().len();
    let unmarked = busy_victims(&unmarked).len();
    let mut reasons = std::collections::BTreeMap::<String, usize>::new();
    for (_, reason, _) in crate::common::event_reasons(&ns).await {
        *reasons.entry(reason).or_default() += 1;
    }
    eprintln!("events: {reasons:?}");
    eprintln!(
        "{} flips, {} refused as draining, {deleted} pods deleted, {unmarked} of them Ready for 3 s or more and unmarked",
        flips.load(Ordering::SeqCst),
        refused.load(Ordering::SeqCst)
    );
    assert!(flips.load(Ordering::SeqCst) >= 500);
    assert!(
        deleted >= 10,
        "the watcher scaled down while the flips ran: {deleted} deletions\n{}",
        watcher.log()
    );
    assert_eq!(
        busy_victims(&deletions),
        Vec::<String>::new(),
        "{}",
        watcher.log()
    );
}

/// The pods' template labels and whether they are retired.
async fn templates(ns: &TestNs) -> Vec<(String, Option<String>, bool, bool)> {
    ns.live_pods("app=game-ws")
        .await
        .iter()
        .map(|p| {
            (
                p.name_any(),
                p.labels().get(TEMPLATE_LABEL).cloned(),
                p.annotations().contains_key(RETIRED_ANNOTATION),
                busy(p),
            )
        })
        .collect()
}

async fn change_image(ns: &TestNs, image: &str) {
    let api: Api<DynamicObject> =
        Api::namespaced_with(ns.client.clone(), &ns.name, &hsd_resource());
    let patch = json!({"spec": {"podTemplate": {"spec": {"containers": [
        {"name": "game-ws", "image": image, "ports": [{"containerPort": 8080}]},
    ]}}}});
    api.patch("game-ws", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_keeps_busy_pods_until_their_work_ends_and_ends_on_the_new_template() {
    ensure_crd();
    let ns = TestNs::new("rollout").await;
    create_hsd(&ns, &manifest(&ns, 2)).await.unwrap();
    let (deletions, recorder) = spawn_deletion_recorder(&ns);
    let _watcher = Watcher::start(&ns.name, "rollout", &[]);
    let pods = ready(&ns, 2).await;
    for pod in &pods {
        annotate(&ns, &pod.name_any(), "paia.tech/busy", "true").await;
    }
    let all = ready(&ns, 4).await;
    let old_template = all[0].labels().get(TEMPLATE_LABEL).cloned().unwrap();
    let busy_old: BTreeSet<String> = pods.iter().map(|p| p.name_any()).collect();

    change_image(&ns, "ghcr.io/paia-tech/game-ws:2.0.0").await;
    // The idle old pods go, the busy ones stay (retired), 2 idle new ones come.
    let state = wait_for(
        "2 retired busy pods beside 2 new idle ones",
        TIMEOUT,
        || async {
            let pods = templates(&ns).await;
            let retired: BTreeSet<String> = pods
                .iter()
                .filter(|(_, _, retired, _)| *retired)
                .map(|(n, ..)| n.clone())
                .collect();
            let new = pods
                .iter()
                .filter(|(_, t, ..)| t.as_deref() != Some(old_template.as_str()))
                .count();
            (retired == busy_old && new == 2 && pods.len() == 4).then_some(pods)
        },
    )
    .await;
    eprintln!("mid-rollout: {state:?}");
    // The status follows a pass behind the pods: the idle old pods may still be terminating.
    wait_for("the status to show 2 old busy pods", TIMEOUT, || async {
        let status = hsd_status(&ns, "game-ws").await;
        (status["rollout"]["oldPods"] == 2
            && status["rollout"]["oldBusyPods"].as_array().map(Vec::len) == Some(2))
        .then_some(())
    })
    .await;
    let get = ns.hsd_ok(&["get", "-o", "wide"]);
    eprintln!("{get}");
    // `rollout status` waits for them, and says so: once the Deployment's own rollout is over
    // (it reports that first), the retired pods are what it waits for.
    wait_for(
        "rollout status to name the old busy pods",
        TIMEOUT,
        || async {
            let output = ns.hsd(&["rollout", "status", "game-ws", "--watch=false"]);
            String::from_utf8_lossy(&output.stdout)
                .contains("2 old busy pod(s) still working")
                .then_some(())
        },
    )
    .await;
    let output = ns.hsd(&["rollout", "status", "game-ws", "--timeout", "2s"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        stdout.contains("2 old busy pod(s) still working"),
        "{stdout}"
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("timed out"),
        "{output:?}"
    );

    // Their work ends: they go, one by one; the buffer stays on the new template.
    for name in &busy_old {
        annotate(&ns, name, "paia.tech/busy", "false").await;
        wait_for(&format!("{name} to go"), TIMEOUT, || async {
            (!ns.live_pods("app=game-ws")
                .await
                .iter()
                .any(|p| p.name_any() == *name))
            .then_some(())
        })
        .await;
    }
    let end = wait_for("only new-template pods, idle target 2", TIMEOUT, || async {
        let pods = templates(&ns).await;
        (pods.len() == 2
            && pods
                .iter()
                .all(|(_, t, retired, _)| t.as_deref() != Some(old_template.as_str()) && !retired))
        .then_some(pods)
    })
    .await;
    eprintln!("after: {end:?}");
    wait_for("the rollout status to clear", TIMEOUT, || async {
        hsd_status(&ns, "game-ws").await["rollout"]
            .is_null()
            .then_some(())
    })
    .await;
    let done = ns.hsd_ok(&["rollout", "status", "game-ws", "--timeout", "60s"]);
    assert!(done.contains("successfully rolled out"), "{done}");
    recorder.abort();
    assert_eq!(busy_victims(&deletions), Vec::<String>::new());
    assert!(
        deletions.lock().unwrap().len() >= 4,
        "2 idle old pods and 2 retired ones left: {:?}",
        deletions.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_busy_seconds_removes_a_retired_pod_that_stays_busy() {
    ensure_crd();
    let ns = TestNs::new("max-busy").await;
    let mut manifest = manifest(&ns, 1);
    manifest["spec"]["rollout"] = json!({"maxBusySeconds": 3});
    create_hsd(&ns, &manifest).await.unwrap();
    let _watcher = Watcher::start(&ns.name, "max-busy", &["--resync", "1s"]);
    let pods = ready(&ns, 1).await;
    let name = pods[0].name_any();
    annotate(&ns, &name, "paia.tech/busy", "true").await;
    ready(&ns, 2).await;
    change_image(&ns, "ghcr.io/paia-tech/game-ws:2.0.0").await;
    wait_for("the busy pod to be retired", TIMEOUT, || async {
        let pod: Pod = ns.api().get_opt(&name).await.ok()??;
        pod.annotations()
            .contains_key(RETIRED_ANNOTATION)
            .then_some(())
    })
    .await;
    let retired = Instant::now();
    wait_for(
        "the retired pod to be removed after 3 s",
        TIMEOUT,
        || async {
            let pod: Option<Pod> = ns.api().get_opt(&name).await.ok()?;
            pod.is_none_or(|p| p.metadata.deletion_timestamp.is_some())
                .then_some(())
        },
    )
    .await;
    assert!(
        retired.elapsed() >= Duration::from_secs(2),
        "not before maxBusySeconds: {:?}",
        retired.elapsed()
    );
    // The event follows the deletion: the pass records it after its writes.
    wait_for("the RetiredPodRemoved warning", TIMEOUT, || async {
        crate::common::event_reasons(&ns)
            .await
            .iter()
            .any(|(t, r, m)| t == "Warning" && r == "RetiredPodRemoved" && m.contains(&name))
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_hsd_during_a_rollout_leaves_nothing_behind() {
    ensure_crd();
    let ns = TestNs::new("rollout-delete").await;
    create_hsd(&ns, &manifest(&ns, 1)).await.unwrap();
    let watcher = Watcher::start(&ns.name, "rollout-delete", &[]);
    let pods = ready(&ns, 1).await;
    annotate(&ns, &pods[0].name_any(), "paia.tech/busy", "true").await;
    ready(&ns, 2).await;
    change_image(&ns, "ghcr.io/paia-tech/game-ws:2.0.0").await;
    wait_for("a retired pod", TIMEOUT, || async {
        templates(&ns)
            .await
            .iter()
            .any(|(_, _, retired, _)| *retired)
            .then_some(())
    })
    .await;
    drop(watcher);
    let api: Api<DynamicObject> =
        Api::namespaced_with(ns.client.clone(), &ns.name, &hsd_resource());
    api.delete("game-ws", &DeleteParams::background())
        .await
        .unwrap();
    wait_for(
        "every pod and the Deployment to be gone",
        TIMEOUT,
        || async {
            let pods: Api<Pod> = ns.api();
            let left = pods.list(&ListParams::default()).await.unwrap().items.len();
            (left == 0 && replicas(&ns, "game-ws-workload").await.is_none()).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_label_routes_new_work_to_idle_pods_only() {
    ensure_crd();
    let ns = TestNs::new("state-label").await;
    let mut manifest = manifest(&ns, 3);
    manifest["spec"]["routing"] = json!({"stateLabel": true});
    // On the data node: its pod IPs (198.18.0.x) may stand in EndpointSlices. Nothing dials them.
    manifest["spec"]["podTemplate"]["spec"] =
        on_data_node(manifest["spec"]["podTemplate"]["spec"].clone());
    create_hsd(&ns, &manifest).await.unwrap();
    let services: Api<Service> = ns.api();
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "idle-game-ws"},
        "spec": {
            "clusterIP": "None",
            "selector": {"app": "game-ws", STATE_LABEL: "idle"},
            "ports": [{"port": 8080}],
        },
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let _watcher = Watcher::start(&ns.name, "state-label", &[]);
    let pods = ready(&ns, 3).await;

    // The EndpointSlice's ready addresses, by pod name.
    let slices: Api<EndpointSlice> = ns.api();
    let endpoint_pods = || async {
        let mut names = BTreeSet::new();
        let list = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=idle-game-ws"))
            .await
            .unwrap();
        for slice in list.items {
            for endpoint in slice.endpoints {
                let ready = endpoint
                    .conditions
                    .as_ref()
                    .and_then(|c| c.ready)
                    .unwrap_or(false);
                if ready {
                    for address in &endpoint.addresses {
                        assert!(crate::common::is_data_node_ip(address), "{address}");
                    }
                    if let Some(target) = endpoint.target_ref {
                        names.insert(target.name.unwrap_or_default());
                    }
                }
            }
        }
        names
    };
    let all: BTreeSet<String> = pods.iter().map(|p| p.name_any()).collect();
    wait_for("all 3 idle pods in the EndpointSlice", TIMEOUT, || async {
        (endpoint_pods().await == all).then_some(())
    })
    .await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let target = pods[0].name_any();
    annotate(&ns, &target, "paia.tech/busy", "true").await;
    let without: BTreeSet<String> = all.iter().filter(|n| **n != target).cloned().collect();
    wait_for("the busy pod out of the EndpointSlice", TIMEOUT, || async {
        let now = endpoint_pods().await;
        seen.lock().unwrap().push(now.len());
        // The new idle pod (the buffer refilled) joins too; the busy one never stays.
        (!now.contains(&target) && without.is_subset(&now)).then_some(())
    })
    .await;
    let pod: Pod = ns.api().get(&target).await.unwrap();
    assert_eq!(
        pod.labels().get(STATE_LABEL).map(String::as_str),
        Some("busy")
    );
    assert!(is_ready(&pod), "readiness is never touched");
    annotate(&ns, &target, "paia.tech/busy", "false").await;
    wait_for(
        "the pod back in the EndpointSlice (or drained)",
        TIMEOUT,
        || async {
            let now = endpoint_pods().await;
            let pod: Option<Pod> = ns.api().get_opt(&target).await.unwrap();
            let state = pod
                .as_ref()
                .and_then(|p| p.labels().get(STATE_LABEL).cloned());
            // Idle again, it is either back or, the buffer being full, chosen to go (draining).
            (now.contains(&target) || state.as_deref() == Some("draining") || pod.is_none())
                .then_some(())
        },
    )
    .await;
}
