//! Filling the cluster: namespaces, HotStandbyDeployments of 20 pods each (the real Deployment
//! and ReplicaSet controllers and kwok make the pods), and a pod tracker that follows them
//! through one watch, so that waiting costs the API server nothing per poll.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::runtime::{WatchStreamExt, watcher::Event};
use kube::{Client, ResourceExt};
use serde_json::json;

use kubectl_hsd::observe::{LeanPod, hsd_resource, pod_resource};

use crate::util::{Context, Progress, Res, say};

/// The busy annotation of the benchmark's annotation-mode HSDs.
pub const BUSY_ANNOTATION: &str = "paia.tech/busy";
/// Pods per HotStandbyDeployment (idleTarget with no busy pod).
pub const PODS_PER_HSD: usize = 20;
/// The label every benchmark pod carries; its value says which set the pod belongs to.
pub const SET_LABEL: &str = "hsd-bench";

/// The HSD sets of the benchmark: `w*` (annotation mode, spread over `namespaces`) and `p*`
/// (HTTP mode, one namespace).
#[derive(Clone, Debug)]
pub struct Layout {
    pub namespaces: usize,
}

impl Layout {
    pub fn namespace(&self, index: usize) -> String {
        format!("bench-{}", index % self.namespaces)
    }
    pub fn name(index: usize) -> String {
        format!("w{index:05}")
    }
    pub fn workload(index: usize) -> String {
        format!("{}-workload", Self::name(index))
    }
}

pub const PROBE_NAMESPACE: &str = "bench-probe";
pub const PROBE_PORT: u16 = 18080;

/// An annotation-mode HSD: 20 idle pods, up to 50.
pub fn annotation_hsd(namespace: &str, name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "apps.paia.tech/v1alpha1",
        "kind": "HotStandbyDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "idleTarget": PODS_PER_HSD,
            "minReplicas": 0,
            "maxReplicas": 50,
            "selector": {"matchLabels": {"app": name}},
            "podTemplate": {
                "metadata": {"labels": {"app": name, SET_LABEL: "w"}},
                "spec": {"containers": [{"name": "app", "image": "bench.invalid/idle:1"}]}
            },
            "busyProbe": {"mode": "annotation", "annotationKey": "paia.tech/busy"}
        }
    })
}

/// An HTTP-mode HSD held at exactly 20 pods (min = max), so that busy answers never scale it.
pub fn http_hsd(namespace: &str, name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "apps.paia.tech/v1alpha1",
        "kind": "HotStandbyDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "idleTarget": 0,
            "minReplicas": PODS_PER_HSD,
            "maxReplicas": PODS_PER_HSD,
            "selector": {"matchLabels": {"app": name}},
            "podTemplate": {
                "metadata": {"labels": {"app": name, SET_LABEL: "p"}},
                "spec": {"containers": [{"name": "app", "image": "bench.invalid/http:1"}]}
            },
            "busyProbe": {
                "mode": "http",
                "http": {"port": PROBE_PORT, "path": "/busy", "successIsBusy": true,
                         "timeoutSeconds": 1, "periodSeconds": 10}
            }
        }
    })
}

pub async fn create_namespaces(client: &Client, names: &[String]) -> Res<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    for name in names {
        let namespace: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name}})).ctx("namespace")?;
        match api.create(&PostParams::default(), &namespace).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => return Err(format!("creating namespace {name}: {e}")),
        }
    }
    Ok(())
}

/// Creates the HSDs (16 at a time), with a progress display.
pub async fn create_hsds(
    client: &Client,
    manifests: Vec<serde_json::Value>,
    what: &str,
) -> Res<()> {
    let total = manifests.len() as u64;
    let mut progress = Progress::new(what, total);
    let created = stream::iter(manifests)
        .map(|manifest| async move {
            let object: DynamicObject = serde_json::from_value(manifest).ctx("HSD manifest")?;
            let namespace = object.namespace().unwrap_or_default();
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), &namespace, &hsd_resource());
            match api.create(&PostParams::default(), &object).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
                Err(e) => Err(format!(
                    "creating HSD {namespace}/{}: {e}",
                    object.name_any()
                )),
            }
        })
        .buffer_unordered(16);
    futures::pin_mut!(created);
    let mut done = 0;
    while let Some(result) = created.next().await {
        result?;
        done += 1;
        progress.set(done);
    }
    progress.finish(done);
    Ok(())
}

/// The label of the other pods: pods that no HSD made (no HSD label), in the HSDs' namespaces.
pub const OTHER_LABEL: &str = "hsd-bench-other";

/// Creates `count` other pods, spread over the layout's namespaces (32 at a time): never
/// scheduled (a scheduler name that no scheduler serves), so that they cost the control plane
/// only their place in its store, as in tests/faults/failover.rs. They carry neither the HSD
/// label nor the tracker's label.
pub async fn create_other_pods(client: &Client, layout: &Layout, count: usize) -> Res<()> {
    let have = count_other_pods(client).await?;
    let mut progress = Progress::new("other pods", count as u64);
    let created = stream::iter(have..count)
        .map(|i| async move {
            let namespace = layout.namespace(i);
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {
                    "name": format!("other-{i:06}"),
                    "labels": {OTHER_LABEL: "true", "app": "other", "team": format!("t{}", i % 50)},
                },
                "spec": {
                    "schedulerName": "hsd-bench-nobody",
                    "containers": [{"name": "c", "image": "bench.invalid/other:1"}],
                },
            }))
            .ctx("other pod manifest")?;
            let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
            match api.create(&PostParams::default(), &pod).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
                Err(e) => Err(format!("creating other pod {namespace}/other-{i:06}: {e}")),
            }
        })
        .buffer_unordered(32);
    futures::pin_mut!(created);
    let mut done = have as u64;
    while let Some(result) = created.next().await {
        result?;
        done += 1;
        progress.set(done);
    }
    progress.finish(done);
    Ok(())
}

/// Other pods that exist (one list call of one item: the server counts the rest).
pub async fn count_other_pods(client: &Client) -> Res<usize> {
    let api: Api<Pod> = Api::all(client.clone());
    let page = api
        .list_metadata(&ListParams::default().labels(OTHER_LABEL).limit(1))
        .await
        .ctx("counting the other pods")?;
    Ok(page.items.len() + page.metadata.remaining_item_count.unwrap_or(0).max(0) as usize)
}

/// Deletes every other pod (one delete-collection call per namespace; unscheduled pods go at
/// once) and waits until they are gone.
pub async fn delete_other_pods(client: &Client, layout: &Layout) -> Res<()> {
    for i in 0..layout.namespaces {
        let api: Api<Pod> = Api::namespaced(client.clone(), &layout.namespace(i));
        api.delete_collection(
            &DeleteParams::default().grace_period(0),
            &ListParams::default().labels(OTHER_LABEL),
        )
        .await
        .ctx("deleting the other pods")?;
    }
    crate::util::wait_for(
        "the other pods to go",
        Duration::from_secs(300),
        Duration::from_millis(500),
        || async { Ok((count_other_pods(client).await? == 0).then_some(())) },
    )
    .await
}

/// What the tracker keeps of a pod.
#[derive(Clone, Debug)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub set: String,
    pub app: String,
    pub ready: bool,
    pub terminating: bool,
    pub busy: bool,
    pub ip: Option<String>,
}

#[derive(Default)]
struct TrackerState {
    pods: HashMap<(String, String), PodInfo>,
    /// Pods listed since the last (re)start of the watch, swapped in at InitDone.
    init: Option<HashMap<(String, String), PodInfo>>,
    synced: bool,
    changes: u64,
    last_change: Option<Instant>,
    /// When the watch delivered each pod's last busy change.
    busy_seen: HashMap<(String, String), (bool, Instant)>,
}

/// Follows every benchmark pod through one watch.
#[derive(Clone)]
pub struct PodTracker {
    state: Arc<Mutex<TrackerState>>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

/// Counts of one set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub live: usize,
    pub ready: usize,
    pub terminating: usize,
    pub busy: usize,
}

impl PodTracker {
    pub fn start(client: &Client) -> Self {
        let api: Api<LeanPod> = Api::all_with(client.clone(), &pod_resource());
        let state = Arc::new(Mutex::new(TrackerState::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let events =
                watcher(api, watcher::Config::default().labels(SET_LABEL)).default_backoff();
            futures::pin_mut!(events);
            loop {
                let event = match events.try_next().await {
                    Ok(Some(event)) => event,
                    Ok(None) => return,
                    Err(error) => {
                        say(format!("pod tracker: {error} (retrying)"));
                        continue;
                    }
                };
                let mut state = shared.lock().expect("tracker lock");
                state.changes += 1;
                state.last_change = Some(Instant::now());
                match event {
                    Event::Init => state.init = Some(HashMap::new()),
                    Event::InitApply(pod) => {
                        let info = info(&pod);
                        if let Some(init) = state.init.as_mut() {
                            init.insert((info.namespace.clone(), info.name.clone()), info);
                        }
                    }
                    Event::InitDone => {
                        state.pods = state.init.take().unwrap_or_default();
                        state.synced = true;
                    }
                    Event::Apply(pod) => {
                        let info = info(&pod);
                        let key = (info.namespace.clone(), info.name.clone());
                        if state
                            .pods
                            .get(&key)
                            .is_some_and(|old| old.busy != info.busy)
                        {
                            state.busy_seen.insert(key, (info.busy, Instant::now()));
                        }
                        state
                            .pods
                            .insert((info.namespace.clone(), info.name.clone()), info);
                    }
                    Event::Delete(pod) => {
                        state
                            .pods
                            .remove(&(pod.namespace().unwrap_or_default(), pod.name_any()));
                    }
                }
            }
        });
        Self {
            state,
            task: Arc::new(task),
        }
    }

    pub async fn wait_synced(&self) -> Res<()> {
        crate::util::wait_for(
            "the pod tracker's first list",
            Duration::from_secs(120),
            Duration::from_millis(100),
            || async {
                Ok(self
                    .state
                    .lock()
                    .expect("tracker lock")
                    .synced
                    .then_some(()))
            },
        )
        .await
    }

    pub fn counts(&self, set: &str) -> Counts {
        let state = self.state.lock().expect("tracker lock");
        let mut counts = Counts::default();
        for pod in state.pods.values().filter(|p| p.set == set) {
            if pod.terminating {
                counts.terminating += 1;
                continue;
            }
            counts.live += 1;
            counts.ready += usize::from(pod.ready);
            counts.busy += usize::from(pod.busy);
        }
        counts
    }

    /// Live pods of one HSD (by its app label).
    pub fn pods_of(&self, namespace: &str, app: &str) -> Vec<PodInfo> {
        let state = self.state.lock().expect("tracker lock");
        let mut pods: Vec<PodInfo> = state
            .pods
            .values()
            .filter(|p| p.namespace == namespace && p.app == app && !p.terminating)
            .cloned()
            .collect();
        pods.sort_by(|a, b| a.name.cmp(&b.name));
        pods
    }

    pub fn pods_of_set(&self, set: &str) -> Vec<PodInfo> {
        let state = self.state.lock().expect("tracker lock");
        let mut pods: Vec<PodInfo> = state
            .pods
            .values()
            .filter(|p| p.set == set && !p.terminating)
            .cloned()
            .collect();
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        pods
    }

    /// When the watch delivered the pod's change to `busy`, if it did.
    pub fn busy_seen(&self, namespace: &str, name: &str, busy: bool) -> Option<Instant> {
        let state = self.state.lock().expect("tracker lock");
        state
            .busy_seen
            .get(&(namespace.to_string(), name.to_string()))
            .filter(|(b, _)| *b == busy)
            .map(|(_, at)| *at)
    }

    /// How long ago a benchmark pod last changed.
    pub fn quiet_for(&self) -> Duration {
        let state = self.state.lock().expect("tracker lock");
        state.last_change.map_or(Duration::MAX, |t| t.elapsed())
    }

    /// Waits until the set has exactly `target` live pods, all ready and none terminating.
    /// Fails after `timeout`, or when nothing moved for `stall`.
    pub async fn wait_ready(
        &self,
        set: &str,
        target: usize,
        timeout: Duration,
        what: &str,
    ) -> Res<()> {
        let stall = Duration::from_secs(180);
        let started = Instant::now();
        let mut progress = Progress::new(what, target as u64);
        let mut best = 0;
        let mut best_at = Instant::now();
        loop {
            let counts = self.counts(set);
            progress.set(counts.ready.min(target) as u64);
            if counts.live == target && counts.ready == target && counts.terminating == 0 {
                progress.finish(target as u64);
                return Ok(());
            }
            if counts.ready > best {
                best = counts.ready;
                best_at = Instant::now();
            }
            if started.elapsed() > timeout || best_at.elapsed() > stall {
                progress.finish(counts.ready as u64);
                return Err(format!(
                    "{what}: timed out after {:.0}s with {counts:?} (want {target} live and ready); \
                     see the controller-manager, scheduler and kwok logs in the cluster dir",
                    started.elapsed().as_secs_f64()
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until no benchmark pod changed for `quiet` (at most `timeout`).
    pub async fn settle(&self, quiet: Duration, timeout: Duration) -> Res<()> {
        crate::util::wait_for(
            "the cluster to settle",
            timeout,
            Duration::from_millis(100),
            || async { Ok((self.quiet_for() >= quiet).then_some(())) },
        )
        .await
    }
}

impl Drop for PodTracker {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

fn info(pod: &LeanPod) -> PodInfo {
    let labels = pod.labels();
    let status = pod.status.as_ref();
    PodInfo {
        namespace: pod.namespace().unwrap_or_default(),
        name: pod.name_any(),
        set: labels.get(SET_LABEL).cloned().unwrap_or_default(),
        app: labels.get("app").cloned().unwrap_or_default(),
        ready: status.is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        }),
        terminating: pod.metadata.deletion_timestamp.is_some(),
        busy: pod
            .annotations()
            .get(BUSY_ANNOTATION)
            .is_some_and(|v| v == "true"),
        ip: status.and_then(|s| s.pod_ip.clone()),
    }
}

/// Sets a pod's busy annotation (merge PATCH).
pub async fn set_busy(client: &Client, namespace: &str, pod: &str, busy: bool) -> Res<()> {
    let api: Api<LeanPod> = Api::namespaced_with(client.clone(), namespace, &pod_resource());
    let patch = json!({"metadata": {"annotations": {BUSY_ANNOTATION: if busy { "true" } else { "false" }}}});
    api.patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .ctx(format!("patching pod {namespace}/{pod}"))?;
    Ok(())
}
