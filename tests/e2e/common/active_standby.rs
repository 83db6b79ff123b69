//! Active-standby fixtures shared by the e2e, fault and benchmark code: workloads on the data node
//! (their pod IPs are in 198.18.0.0/24, which EndpointSlices accept; data only, never dialled),
//! annotated Services, and the invariant monitor: a watch of a Service's EndpointSlices that
//! records every ready set it ever shows.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use kubectl_hsd::api::active_standby::{
    ACTIVE, ACTIVE_STANDBY, DESIGNATION_LABEL, RECORD_ANNOTATION, Record, SERVICE_MODE_ANNOTATION,
};
use serde_json::{Value, json};

use super::{TestNs, on_data_node, wait_for};

pub const MASTER_SELECTOR: &str = "qoqo.dev/pod-designation=active";

/// A pod spec on the data node: no probe of any kind, nothing ever dials its IP.
pub fn data_pod_spec() -> Value {
    on_data_node(json!({
        "containers": [{"name": "c", "image": "registry.invalid/pause:1"}],
        "terminationGracePeriodSeconds": 0,
    }))
}

/// A Deployment of `replicas` pods on the data node, labelled `labels`.
pub fn data_deployment(name: &str, replicas: i32, labels: &Value) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": data_pod_spec()},
        },
    }))
    .unwrap()
}

/// A Service selecting `selector`, annotated active-standby; headless unless `cluster_ip`.
pub fn annotated_service(name: &str, selector: &Value, headless: bool) -> Service {
    let mut spec = json!({"selector": selector, "ports": [{"name": "db", "port": 5432}]});
    if headless {
        spec["clusterIP"] = json!("None");
    }
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {SERVICE_MODE_ANNOTATION: ACTIVE_STANDBY}},
        "spec": spec,
    }))
    .unwrap()
}

pub async fn create_deployment(ns: &TestNs, deployment: &Deployment) {
    let api: Api<Deployment> = ns.api();
    api.create(&PostParams::default(), deployment)
        .await
        .unwrap();
}

pub async fn create_service(ns: &TestNs, service: &Service) {
    let api: Api<Service> = ns.api();
    api.create(&PostParams::default(), service).await.unwrap();
}

/// Names of the pods of `selector` that are live and carry the master label.
pub async fn labelled(ns: &TestNs, selector: &str) -> Vec<String> {
    let mut names: Vec<String> = ns
        .live_pods(&format!("{selector},{MASTER_SELECTOR}"))
        .await
        .iter()
        .map(|p| p.name_any())
        .collect();
    names.sort();
    names
}

/// Waits until `n` pods of `selector` are Ready with an IP; returns their names.
pub async fn ready_pods(ns: &TestNs, selector: &str, n: usize) -> Vec<String> {
    wait_for(
        &format!("{n} ready pods of {selector}"),
        Duration::from_secs(60),
        || async {
            let pods = ns.live_pods(selector).await;
            let ready = pods
                .iter()
                .filter(|p| super::is_ready(p) && has_ip(p))
                .count();
            (pods.len() == n && ready == n).then(|| {
                let mut names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
                names.sort();
                names
            })
        },
    )
    .await
}

pub fn has_ip(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .is_some_and(|ip| !ip.is_empty())
}

/// The names of the pods the Service's EndpointSlices list as ready.
pub async fn ready_endpoints(ns: &TestNs, service: &str) -> BTreeSet<String> {
    let slices: Api<EndpointSlice> = ns.api();
    slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await
        .unwrap()
        .items
        .iter()
        .flat_map(ready_in)
        .collect()
}

fn ready_in(slice: &EndpointSlice) -> Vec<String> {
    slice
        .endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .map(|e| {
            e.target_ref
                .as_ref()
                .and_then(|t| t.name.clone())
                .unwrap_or_else(|| e.addresses.join(","))
        })
        .collect()
}

/// Waits until the Service's EndpointSlices list exactly `pod` as ready.
pub async fn wait_endpoint(ns: &TestNs, service: &str, pod: &str) {
    wait_for(
        &format!("the EndpointSlice of {service} to list only {pod} as ready"),
        Duration::from_secs(60),
        || async {
            (ready_endpoints(ns, service).await == BTreeSet::from([pod.to_string()])).then_some(())
        },
    )
    .await;
}

pub async fn service(ns: &TestNs, name: &str) -> Service {
    let api: Api<Service> = ns.api();
    api.get(name).await.unwrap()
}

pub async fn record(ns: &TestNs, name: &str) -> Option<Record> {
    let service = service(ns, name).await;
    service
        .annotations()
        .get(RECORD_ANNOTATION)
        .map(|v| Record::parse(v).unwrap())
}

pub async fn selector(ns: &TestNs, name: &str) -> BTreeMap<String, String> {
    service(ns, name)
        .await
        .spec
        .and_then(|s| s.selector)
        .unwrap_or_default()
}

/// The recorded master of the Service, once it has one.
pub async fn wait_master(ns: &TestNs, service: &str) -> String {
    wait_for(
        &format!("a master recorded on {service}"),
        Duration::from_secs(60),
        || async {
            record(ns, service)
                .await
                .and_then(|r| r.master)
                .map(|m| m.name)
        },
    )
    .await
}

/// Waits until the recorded master differs from `old`; returns it.
pub async fn wait_new_master(ns: &TestNs, service: &str, old: &str) -> String {
    wait_for(
        &format!("a master other than {old} recorded on {service}"),
        Duration::from_secs(60),
        || async {
            record(ns, service)
                .await
                .and_then(|r| r.master)
                .map(|m| m.name)
                .filter(|m| m != old)
        },
    )
    .await
}

/// Sets a pod's Ready condition (and ContainersReady) through the status subresource, as a
/// kubelet would: kwok leaves a Running pod's conditions alone afterwards.
pub async fn set_ready(ns: &TestNs, pod: &str, ready: bool) {
    let pods: Api<Pod> = ns.api();
    let status = if ready { "True" } else { "False" };
    let now = jiff::Timestamp::now().to_string();
    pods.patch_status(
        pod,
        &PatchParams::default(),
        &Patch::Strategic(json!({"status": {"conditions": [
            {"type": "Ready", "status": status, "lastTransitionTime": now},
            {"type": "ContainersReady", "status": status, "lastTransitionTime": now},
        ]}})),
    )
    .await
    .unwrap();
}

/// Adds a finalizer that holds the pod in Terminating once deleted.
pub const HOLD_FINALIZER: &str = "hsd-test/hold";

pub async fn hold(ns: &TestNs, pod: &str) {
    let pods: Api<Pod> = ns.api();
    pods.patch(
        pod,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": [HOLD_FINALIZER]}})),
    )
    .await
    .unwrap();
}

pub async fn release(ns: &TestNs, pod: &str) {
    let pods: Api<Pod> = ns.api();
    let _ = pods
        .patch(
            pod,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await;
}

/// Every ready set a Service's EndpointSlices showed, as seen by a watch that runs from
/// `start` until `finish`.
#[derive(Clone, Default)]
pub struct Seen {
    /// (when, the ready pods) at each change of the ready set.
    pub timeline: Vec<(Instant, BTreeSet<String>)>,
    /// Every moment two different pods were ready at once.
    pub violations: Vec<String>,
    /// Watch events received (slices applied or deleted).
    pub events: usize,
}

/// The invariant monitor: a watch of one Service's EndpointSlices for a whole test. It never
/// dials anything; it only reads the slices.
pub struct EndpointMonitor {
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl EndpointMonitor {
    pub fn start(ns: &TestNs, service: &str) -> Self {
        let slices: Api<EndpointSlice> = ns.api();
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let config =
            watcher::Config::default().labels(&format!("kubernetes.io/service-name={service}"));
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut by_slice: HashMap<String, Vec<String>> = HashMap::new();
                let mut events = watcher(slices, config)
                    .backoff(kube::runtime::watcher::DefaultBackoff::default())
                    .boxed();
                let mut relist: Option<HashMap<String, Vec<String>>> = None;
                while let Some(event) = events.next().await {
                    let Ok(event) = event else { continue };
                    match event {
                        watcher::Event::Init => {
                            relist = Some(HashMap::new());
                            continue;
                        }
                        watcher::Event::InitApply(slice) => {
                            if let Some(buffer) = relist.as_mut() {
                                buffer.insert(slice.name_any(), ready_in(&slice));
                            }
                            continue;
                        }
                        watcher::Event::InitDone => {
                            by_slice = relist.take().unwrap_or_default();
                        }
                        watcher::Event::Apply(slice) => {
                            by_slice.insert(slice.name_any(), ready_in(&slice));
                        }
                        watcher::Event::Delete(slice) => {
                            by_slice.remove(&slice.name_any());
                        }
                    }
                    let ready: BTreeSet<String> = by_slice.values().flatten().cloned().collect();
                    let mut seen = seen.lock().unwrap();
                    seen.events += 1;
                    if ready.len() > 1 {
                        seen.violations.push(format!("ready at once: {ready:?}"));
                    }
                    if seen.timeline.last().map(|(_, r)| r) != Some(&ready) {
                        seen.timeline.push((Instant::now(), ready));
                    }
                }
            })
        };
        Self { seen, task }
    }

    pub fn seen(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until the slices show exactly `pod` ready (first seen after `since`); returns when
    /// the watch saw it.
    pub async fn wait_ready(
        &self,
        pod: &str,
        since: Instant,
        timeout: Duration,
    ) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        let want = BTreeSet::from([pod.to_string()]);
        loop {
            if let Some((at, _)) = self
                .seen
                .lock()
                .unwrap()
                .timeline
                .iter()
                .find(|(at, ready)| *at >= since && *ready == want)
            {
                return Some(*at);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn finish(self) -> Seen {
        self.task.abort();
        self.seen.lock().unwrap().clone()
    }
}

/// The labels of the master, for a Service's selector check.
pub fn master_label() -> (String, String) {
    (DESIGNATION_LABEL.to_string(), ACTIVE.to_string())
}
