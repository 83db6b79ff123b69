//! Active-standby Services on the real control plane: the pods are on the data node, so the
//! real EndpointSlice controller publishes them (198.18.0.0/24: data only, nothing dials them;
//! the tests only read the slices). One-shot passes and the watcher, failover on deletion,
//! unreadiness and a pod held terminating, the user's selector keys kept, clean-up, conflicts,
//! bad input, the master busy for its HSD, and a new leader that adopts the recorded master.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use kubectl_hsd::api::active_standby::{
    ACTIVE, DESIGNATION_LABEL, PodRef, RECORD_ANNOTATION, Record, SERVICE_MODE_ANNOTATION,
};
use serde_json::json;

use crate::common::active_standby::*;
use crate::common::{TestNs, Watcher, ensure_crd, event_reasons, wait_for};

const TIMEOUT: Duration = Duration::from_secs(60);

async fn delete_pod(ns: &TestNs, pod: &str) {
    let pods: Api<Pod> = ns.api();
    pods.delete(pod, &DeleteParams::default()).await.unwrap();
}

fn pass_writes(ns: &TestNs) -> String {
    let output = ns.hsd(&["reconcile", "--stats"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn reasons_of(events: &[(String, String, String)], reason: &str) -> Vec<String> {
    events
        .iter()
        .filter(|(_, r, _)| r == reason)
        .map(|(_, _, message)| message.clone())
        .collect()
}

#[tokio::test]
async fn one_master_for_a_clusterip_and_a_headless_service_with_the_users_selector_kept() {
    ensure_crd();
    let ns = TestNs::new("as-elect").await;
    let labels = json!({"app": "db", "tier": "pool"});
    create_deployment(&ns, &data_deployment("db", 3, &labels)).await;
    create_service(&ns, &annotated_service("db", &labels, false)).await;
    create_service(&ns, &annotated_service("db-headless", &labels, true)).await;
    let pods = ready_pods(&ns, "app=db", 3).await;

    ns.hsd_ok(&["reconcile"]);
    let masters = labelled(&ns, "app=db").await;
    assert_eq!(masters.len(), 1, "{masters:?}");
    let master = &masters[0];
    assert!(pods.contains(master));
    for service in ["db", "db-headless"] {
        let record = record(&ns, service).await.unwrap();
        assert_eq!(record.master.as_ref().map(|m| &m.name), Some(master));
        assert_eq!((record.epoch, record.failovers), (1, 0));
        assert!(record.selector_added);
        // The user's keys survive: our key was merged in, not applied alone.
        assert_eq!(
            selector(&ns, service).await,
            BTreeMap::from([
                ("app".to_string(), "db".to_string()),
                ("tier".to_string(), "pool".to_string()),
                (DESIGNATION_LABEL.to_string(), ACTIVE.to_string()),
            ])
        );
        wait_endpoint(&ns, service, master).await;
    }
    let events = event_reasons(&ns).await;
    assert_eq!(reasons_of(&events, "MasterElected").len(), 2, "{events:?}");

    // Nothing to change: nothing written.
    let stats = pass_writes(&ns);
    assert!(stats.contains(" 0 writes)"), "{stats}");

    let table = ns.hsd_ok(&["get", "svc"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        [
            "NAME",
            "MASTER",
            "READY",
            "CANDIDATES",
            "SINCE",
            "FAILOVERS"
        ]
    );
    for line in &lines[1..] {
        let columns: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(&columns[1..4], [master.as_str(), "True", "2"], "{line}");
        assert_eq!(columns[5], "0", "{line}");
    }
    let explained = ns.hsd_ok(&["explain", "svc/db"]);
    assert!(
        explained.contains(&format!("master {master} (epoch 1")),
        "{explained}"
    );
    assert!(explained.contains("candidate #1"), "{explained}");
    assert!(explained.contains("next pass    keep"), "{explained}");
    let json: serde_json::Value =
        serde_json::from_str(&ns.hsd_ok(&["get", "svc/db", "-o", "json"])).unwrap();
    assert_eq!(json["items"][0]["master"], json!(master));
}

#[tokio::test]
async fn in_one_shot_passes_a_failover_waits_for_the_next_pass() {
    ensure_crd();
    let ns = TestNs::new("as-once").await;
    let labels = json!({"app": "db"});
    create_deployment(&ns, &data_deployment("db", 3, &labels)).await;
    create_service(&ns, &annotated_service("db", &labels, true)).await;
    ready_pods(&ns, "app=db", 3).await;
    ns.hsd_ok(&["reconcile"]);
    let first = wait_master(&ns, "db").await;
    wait_endpoint(&ns, "db", &first).await;

    // Ready=False: the slice shows nobody ready until the next pass moves the label.
    set_ready(&ns, &first, false).await;
    wait_for("the slice to drop the unready master", TIMEOUT, || async {
        ready_endpoints(&ns, "db").await.is_empty().then_some(())
    })
    .await;
    ns.hsd_ok(&["reconcile"]);
    let second = wait_master(&ns, "db").await;
    assert_ne!(second, first);
    wait_endpoint(&ns, "db", &second).await;
    assert_eq!(labelled(&ns, "app=db").await, vec![second.clone()]);

    // Held terminating by a finalizer: ineligible, and fenced although it still exists.
    hold(&ns, &second).await;
    delete_pod(&ns, &second).await;
    ns.hsd_ok(&["reconcile"]);
    let third = wait_master(&ns, "db").await;
    assert!(third != second && third != first, "{third}");
    wait_endpoint(&ns, "db", &third).await;
    let pods: Api<Pod> = ns.api();
    let held = pods.get(&second).await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    assert!(!held.labels().contains_key(DESIGNATION_LABEL), "fenced");
    release(&ns, &second).await;

    let record = record(&ns, "db").await.unwrap();
    assert_eq!((record.epoch, record.failovers), (3, 2));
    assert!(record.unfenced.is_empty(), "{record:?}");
    let failovers = reasons_of(&event_reasons(&ns).await, "MasterFailover");
    assert!(
        failovers
            .iter()
            .any(|m| m.contains(&format!("{first} is not Ready"))),
        "{failovers:?}"
    );
    assert!(
        failovers
            .iter()
            .any(|m| m.contains(&format!("{second} is being deleted"))),
        "{failovers:?}"
    );
}

#[tokio::test]
async fn the_watcher_fails_over_on_deletion_unreadiness_and_a_pod_held_terminating() {
    ensure_crd();
    let ns = TestNs::new("as-watch").await;
    let labels = json!({"app": "db"});
    create_deployment(&ns, &data_deployment("db", 3, &labels)).await;
    create_service(&ns, &annotated_service("db", &labels, true)).await;
    ready_pods(&ns, "app=db", 3).await;
    let watcher = Watcher::start(&ns.name, "as-watch", &[]);
    let mut master = wait_master(&ns, "db").await;
    wait_endpoint(&ns, "db", &master).await;
    let monitor = EndpointMonitor::start(&ns, "db");

    for (round, cause) in ["delete", "unready", "held", "delete", "unready"]
        .iter()
        .enumerate()
    {
        match *cause {
            "delete" => delete_pod(&ns, &master).await,
            "unready" => set_ready(&ns, &master, false).await,
            _ => {
                hold(&ns, &master).await;
                delete_pod(&ns, &master).await;
            }
        }
        let next = wait_new_master(&ns, "db", &master).await;
        wait_endpoint(&ns, "db", &next).await;
        assert_eq!(
            labelled(&ns, "app=db").await,
            vec![next.clone()],
            "round {round}"
        );
        if *cause == "held" {
            release(&ns, &master).await;
        }
        if *cause == "unready" {
            // Back to Ready, it is a standby: the master stays where it is (sticky).
            set_ready(&ns, &master, true).await;
        }
        master = next;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(wait_master(&ns, "db").await, master, "sticky");
    let seen = monitor.finish();
    assert_eq!(seen.violations, Vec::<String>::new());
    assert!(
        seen.timeline.len() >= 5,
        "the monitor saw the failovers: {:?}",
        seen.timeline
    );
    let record = record(&ns, "db").await.unwrap();
    assert_eq!(record.failovers, 5);
    let not_ready = watcher
        .metric(&format!(
            "hsd_active_standby_failovers_total{{namespace=\"{}\",service=\"db\",reason=\"not_ready\"}}",
            ns.name
        ))
        .await;
    assert_eq!(not_ready, Some(2.0), "{}", watcher.log());
    let took = watcher
        .metric("hsd_active_standby_failover_seconds_count")
        .await;
    assert!(took >= Some(5.0), "{took:?}");
    assert!(!watcher.log().contains("panicked"));
}

#[tokio::test]
async fn removing_the_annotation_takes_out_only_the_key_we_added_and_our_labels() {
    ensure_crd();
    let ns = TestNs::new("as-cleanup").await;
    let labels = json!({"app": "db"});
    create_deployment(&ns, &data_deployment("db", 3, &labels)).await;
    create_service(&ns, &annotated_service("db", &labels, true)).await;
    // This one's owner wrote the key into its selector: it stays theirs.
    let mut own_key = annotated_service("own-key", &labels, true);
    own_key
        .spec
        .as_mut()
        .unwrap()
        .selector
        .as_mut()
        .unwrap()
        .insert(DESIGNATION_LABEL.into(), ACTIVE.into());
    create_service(&ns, &own_key).await;
    let pods = ready_pods(&ns, "app=db", 3).await;
    ns.hsd_ok(&["reconcile"]);
    let master = wait_master(&ns, "db").await;
    assert_eq!(
        wait_master(&ns, "own-key").await,
        master,
        "shared pods, one master"
    );
    assert!(record(&ns, "db").await.unwrap().selector_added);
    assert!(!record(&ns, "own-key").await.unwrap().selector_added);

    let services: Api<Service> = ns.api();
    for name in ["db", "own-key"] {
        services
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"annotations": {SERVICE_MODE_ANNOTATION: null}}}),
                ),
            )
            .await
            .unwrap();
    }
    ns.hsd_ok(&["reconcile"]);
    assert_eq!(
        selector(&ns, "db").await,
        BTreeMap::from([("app".to_string(), "db".to_string())])
    );
    assert!(
        selector(&ns, "own-key")
            .await
            .contains_key(DESIGNATION_LABEL)
    );
    for name in ["db", "own-key"] {
        assert!(
            !service(&ns, name)
                .await
                .annotations()
                .contains_key(RECORD_ANNOTATION),
            "{name}"
        );
    }
    assert!(labelled(&ns, "app=db").await.is_empty());
    // The Service resolves to all its pods again.
    wait_for("the slice to list every pod", TIMEOUT, || async {
        (ready_endpoints(&ns, "db").await == pods.iter().cloned().collect::<BTreeSet<_>>())
            .then_some(())
    })
    .await;
    let events = event_reasons(&ns).await;
    assert_eq!(
        reasons_of(&events, "ActiveStandbyDisabled").len(),
        2,
        "{events:?}"
    );
    let stats = pass_writes(&ns);
    assert!(stats.contains(" 0 writes)"), "{stats}");
}

#[tokio::test]
async fn services_that_would_need_different_masters_among_shared_pods_get_a_conflict_not_two() {
    ensure_crd();
    let ns = TestNs::new("as-conflict").await;
    let labels = json!({"app": "db"});
    create_deployment(&ns, &data_deployment("db", 3, &labels)).await;
    create_service(&ns, &annotated_service("a", &labels, true)).await;
    let pods = ready_pods(&ns, "app=db", 3).await;
    ns.hsd_ok(&["reconcile"]);
    let master = wait_master(&ns, "a").await;
    // Left behind by an older controller: a second Service over the same pods whose record
    // and label name another pod. Both resolve to two pods until the next pass.
    let other = pods.iter().find(|p| **p != master).unwrap().clone();
    let pod_api: Api<Pod> = ns.api();
    let uid = pod_api.get(&other).await.unwrap().uid().unwrap();
    pod_api
        .patch(
            &other,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {DESIGNATION_LABEL: ACTIVE}}})),
        )
        .await
        .unwrap();
    let mut b = annotated_service("b", &labels, true);
    let record_b = Record {
        master: Some(PodRef {
            name: other.clone(),
            uid,
        }),
        epoch: 1,
        selector_added: true,
        ..Record::default()
    };
    b.metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(RECORD_ANNOTATION.into(), record_b.to_annotation());
    b.spec
        .as_mut()
        .unwrap()
        .selector
        .as_mut()
        .unwrap()
        .insert(DESIGNATION_LABEL.into(), ACTIVE.into());
    create_service(&ns, &b).await;

    ns.hsd_ok(&["reconcile"]);
    assert_eq!(labelled(&ns, "app=db").await, vec![master.clone()]);
    assert_eq!(wait_master(&ns, "b").await, master);
    for service in ["a", "b"] {
        wait_endpoint(&ns, service, &master).await;
    }
    let events = event_reasons(&ns).await;
    let conflicts: Vec<&(String, String, String)> = events
        .iter()
        .filter(|(_, reason, _)| reason == "ActiveStandbyConflict")
        .collect();
    assert_eq!(conflicts.len(), 1, "{events:?}");
    assert_eq!(conflicts[0].0, "Warning");
    assert!(
        conflicts[0]
            .2
            .contains(&format!("Service a, whose master is {master}")),
        "{}",
        conflicts[0].2
    );
    let stats = pass_writes(&ns);
    assert!(stats.contains(" 0 writes)"), "{stats}");
}

#[tokio::test]
async fn bad_services_get_a_warning_and_never_stop_the_others() {
    ensure_crd();
    let ns = TestNs::new("as-bad").await;
    let empty = TestNs::new("as-empty").await;
    let labels = json!({"app": "db"});
    create_deployment(&ns, &data_deployment("db", 2, &labels)).await;
    let services: Api<Service> = ns.api();
    let post = PostParams::default();
    // No selector at all (its endpoints are someone else's).
    let no_selector: Service = serde_json::from_value(json!({
        "metadata": {"name": "no-selector", "annotations": {SERVICE_MODE_ANNOTATION: "active-standby"}},
        "spec": {"ports": [{"port": 80}]},
    }))
    .unwrap();
    services.create(&post, &no_selector).await.unwrap();
    // Selects no pod.
    create_service(
        &ns,
        &annotated_service("no-pods", &json!({"app": "nothing"}), true),
    )
    .await;
    // A record that is not one.
    let mut garbage = annotated_service("garbage", &json!({"app": "other"}), true);
    garbage
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(RECORD_ANNOTATION.into(), "{not json".into());
    services.create(&post, &garbage).await.unwrap();
    create_service(&ns, &annotated_service("db", &labels, true)).await;
    // A namespace with an active-standby Service and no pod at all.
    let empty_services: Api<Service> = empty.api();
    empty_services
        .create(&post, &annotated_service("lonely", &labels, true))
        .await
        .unwrap();
    ready_pods(&ns, "app=db", 2).await;

    for namespace in [&ns, &empty] {
        let output = namespace.hsd(&["reconcile"]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_eq!(output.status.code(), Some(0), "{stderr}");
    }
    let master = wait_master(&ns, "db").await;
    wait_endpoint(&ns, "db", &master).await;
    let events = event_reasons(&ns).await;
    for (reason, words) in [
        ("InvalidActiveStandbyService", "it has no selector"),
        ("NoEligiblePod", "its selector selects no pod"),
        ("InvalidActiveStandbyRecord", "is not a record"),
    ] {
        let found = reasons_of(&events, reason);
        assert!(
            found.iter().any(|m| m.contains(words)),
            "{reason}: {found:?} in {events:?}"
        );
    }
    assert_eq!(
        selector(&ns, "no-selector").await,
        BTreeMap::new(),
        "a Service without a selector is never given one"
    );
    let lonely = reasons_of(&event_reasons(&empty).await, "NoEligiblePod");
    assert_eq!(lonely.len(), 1, "{lonely:?}");
    // The warnings are recorded: the next passes say nothing more and write nothing.
    for namespace in [&ns, &empty] {
        let stats = pass_writes(namespace);
        assert!(stats.contains(" 0 writes)"), "{stats}");
    }
    assert_eq!(event_reasons(&ns).await.len(), events.len());
}

#[tokio::test]
async fn the_master_is_busy_for_its_hsd_and_the_hsd_keeps_standbys_warm() {
    ensure_crd();
    let ns = TestNs::new("as-hsd").await;
    let mut manifest = crate::common::example("hsd-annotation.yaml");
    manifest["metadata"] = json!({"name": "db", "namespace": ns.name});
    manifest["spec"]["idleTarget"] = json!(2);
    manifest["spec"]["selector"]["matchLabels"] = json!({"app": "db"});
    manifest["spec"]["podTemplate"] = json!({
        "metadata": {"labels": {"app": "db"}},
        "spec": data_pod_spec(),
    });
    crate::common::create_hsd(&ns, &manifest).await.unwrap();
    create_service(&ns, &annotated_service("db", &json!({"app": "db"}), true)).await;
    let (deletions, recorder) = crate::common::spawn_deletion_recorder_with(
        &ns,
        std::sync::Arc::new(|pod: &Pod| {
            pod.labels().get(DESIGNATION_LABEL).map(String::as_str) == Some(ACTIVE)
        }),
    );
    let watcher = Watcher::start(&ns.name, "as-hsd", &[]);
    let master = wait_master(&ns, "db").await;
    // 1 busy (the master) + idleTarget 2.
    wait_for("3 replicas", TIMEOUT, || async {
        (crate::common::replicas(&ns, "db-workload").await == Some(3)).then_some(())
    })
    .await;
    let pods: Api<Pod> = ns.api();
    wait_for("the master's high deletion cost", TIMEOUT, || async {
        let pod = pods.get(&master).await.ok()?;
        (pod.annotations()
            .get("controller.kubernetes.io/pod-deletion-cost")
            .map(String::as_str)
            == Some("1000000"))
        .then_some(())
    })
    .await;
    let explained = ns.hsd_ok(&["explain", "db"]);
    assert!(
        explained.contains("1 as an active-standby master"),
        "{explained}"
    );
    ready_pods(&ns, "app=db", 3).await;

    // A standby turns busy, then idle: the scale-down that follows never takes the master.
    let standby = ns
        .live_pods("app=db")
        .await
        .iter()
        .map(|p| p.name_any())
        .find(|p| *p != master)
        .unwrap();
    pods.patch(
        &standby,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"paia.tech/busy": "true"}}})),
    )
    .await
    .unwrap();
    wait_for("4 replicas", TIMEOUT, || async {
        (crate::common::replicas(&ns, "db-workload").await == Some(4)).then_some(())
    })
    .await;
    ready_pods(&ns, "app=db", 4).await;
    pods.patch(
        &standby,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"paia.tech/busy": "false"}}})),
    )
    .await
    .unwrap();
    wait_for("back to 3 replicas and 3 pods", TIMEOUT, || async {
        (crate::common::replicas(&ns, "db-workload").await == Some(3)
            && ns.live_pods("app=db").await.len() == 3)
            .then_some(())
    })
    .await;
    assert_eq!(wait_master(&ns, "db").await, master);
    recorder.abort();
    assert_eq!(
        crate::common::busy_victims(&deletions),
        Vec::<String>::new(),
        "a master was deleted by a scale-down"
    );

    // A failover ranks the HSD's busy pods last (the watcher keeps each HSD's busy rule): the
    // standby that would win on Ready time and name alone is made busy, and the master's
    // deletion must pass it over for an idle one.
    let ready_since = |pod: &Pod| {
        pod.status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "Ready" && c.status == "True")?
            .last_transition_time
            .as_ref()
            .map(|t| t.0)
    };
    let mut standbys: Vec<Pod> = ns
        .live_pods("app=db")
        .await
        .into_iter()
        .filter(|p| p.name_any() != master)
        .collect();
    standbys.sort_by_key(|p| {
        let since = ready_since(p);
        (since.is_none(), since, p.name_any())
    });
    let favourite = standbys[0].name_any();
    pods.patch(
        &favourite,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"paia.tech/busy": "true"}}})),
    )
    .await
    .unwrap();
    wait_for("4 replicas for the busy standby", TIMEOUT, || async {
        (crate::common::replicas(&ns, "db-workload").await == Some(4)).then_some(())
    })
    .await;
    ready_pods(&ns, "app=db", 4).await;
    pods.delete(&master, &DeleteParams::default())
        .await
        .unwrap();
    let successor = wait_new_master(&ns, "db", &master).await;
    assert_ne!(
        successor, favourite,
        "the busy standby was made master over idle ones"
    );
    assert!(!watcher.log().contains("panicked"));
}

#[tokio::test]
async fn a_new_leader_adopts_the_recorded_master() {
    ensure_crd();
    let ns = TestNs::new("as-adopt").await;
    let labels = json!({"app": "db"});
    create_deployment(&ns, &data_deployment("db", 3, &labels)).await;
    create_service(&ns, &annotated_service("db", &labels, true)).await;
    ready_pods(&ns, "app=db", 3).await;
    let mut first = Watcher::start(&ns.name, "first", &[]);
    let master = wait_master(&ns, "db").await;
    wait_endpoint(&ns, "db", &master).await;
    let before = record(&ns, "db").await.unwrap();
    first.child.kill().unwrap();
    first.child.wait().unwrap();

    let second = Watcher::start(&ns.name, "second", &[]);
    wait_for("the second watcher to lead", TIMEOUT, || {
        let log = second.log();
        async move { log.contains("leading: reconciling").then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        record(&ns, "db").await.unwrap(),
        before,
        "adopted, not re-elected"
    );
    assert_eq!(labelled(&ns, "app=db").await, vec![master.clone()]);
    // And it is in charge: the next failover is its own.
    delete_pod(&ns, &master).await;
    let next = wait_new_master(&ns, "db", &master).await;
    wait_endpoint(&ns, "db", &next).await;
    // The event follows the writes that move the master: the slice can show the new master a
    // moment before the event is recorded.
    let events = wait_for("the failover's event", TIMEOUT, || async {
        let events = event_reasons(&ns).await;
        (!reasons_of(&events, "MasterFailover").is_empty()).then_some(events)
    })
    .await;
    assert_eq!(reasons_of(&events, "MasterElected").len(), 1, "{events:?}");
    assert_eq!(reasons_of(&events, "MasterFailover").len(), 1, "{events:?}");
}
