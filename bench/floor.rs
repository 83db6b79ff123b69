//! The floors of the read side: what any client must do to read the objects a pass or a watcher
//! of HSDs reads, measured in-process beside the product, each on a thread and runtime of its own
//! (like a separate process) with a client built inside the measured time (kubeconfig, TLS).
//!
//! - [`list`]: a bare paginated list (500 a page, one page after the other) of the HSDs, the
//!   Deployments and the pods that carry the HSD label, the three lists at once, each page parsed
//!   into lean structs that keep only what a pass reads. Its own code, not the product's
//!   `observe::list_lean`, so that it does not move when the product does.
//! - [`reflector_sync`]: kube's own `reflector(watcher(..))` on the same three label-filtered
//!   resources, until all three deliver `InitDone`; pods and Deployments into the same lean
//!   object types as the product (every reflector of these objects parses the same JSON).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource};
use serde::Deserialize;
use serde::de::IgnoredAny;

use kubectl_hsd::labels::HSD_LABEL;
use kubectl_hsd::observe::{
    LeanDeployment, LeanPod, deployment_resource, hsd_resource, pod_resource,
};

use crate::util::{Context, Res};

const PAGE: u32 = 500;

/// Runs `work` with a fresh client on a thread and runtime of its own; returns its result and
/// the time from before the client was built to the end of `work`.
fn on_own_runtime<T, F, Fut>(kubeconfig: &Path, work: F) -> Res<(T, Duration)>
where
    T: Send + 'static,
    F: FnOnce(Client) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Res<T>>,
{
    let kubeconfig = kubeconfig.to_path_buf();
    std::thread::Builder::new()
        .name("floor".into())
        .spawn(move || -> Res<(T, Duration)> {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .ctx("floor runtime")?;
            runtime.block_on(async move {
                let started = Instant::now();
                let client = client(&kubeconfig).await?;
                let value = work(client).await?;
                Ok((value, started.elapsed()))
            })
        })
        .ctx("floor thread")?
        .join()
        .map_err(|_| "the floor thread panicked".to_string())?
}

async fn client(kubeconfig: &Path) -> Res<Client> {
    crate::cluster::Cluster::existing(Path::new("."), kubeconfig)
        .client()
        .await
}

/// The metadata a pass reads.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // parsed, as a pass parses it; not read
struct Meta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    creation_timestamp: Option<String>,
    deletion_timestamp: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
    owner_references: Option<Vec<serde_json::Value>>,
    // Named so that serde skips it without keeping it, like every field not listed here.
    managed_fields: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct PodSpec {
    node_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct Condition {
    #[serde(rename = "type")]
    type_: String,
    status: String,
    reason: Option<String>,
    last_transition_time: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct PodStatus {
    phase: Option<String>,
    #[serde(rename = "podIP")]
    pod_ip: Option<String>,
    #[serde(default)]
    conditions: Vec<Condition>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Pod {
    metadata: Meta,
    spec: Option<PodSpec>,
    status: Option<PodStatus>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct DeploymentSpec {
    replicas: Option<i32>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Deployment {
    metadata: Meta,
    spec: Option<DeploymentSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListMeta {
    #[serde(rename = "continue")]
    continue_: Option<String>,
}

#[derive(Deserialize)]
struct List<T> {
    metadata: ListMeta,
    items: Vec<T>,
}

/// Lists one resource page by page (cluster-wide, `selector`), parsing each page into `T`.
async fn list_pages<T: serde::de::DeserializeOwned>(
    client: &Client,
    resource: &ApiResource,
    selector: Option<&str>,
) -> Res<Vec<T>> {
    let base = DynamicObject::url_path(resource, None);
    let mut items = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut query = format!("{base}?limit={PAGE}");
        if let Some(selector) = selector {
            query.push_str(&format!("&labelSelector={}", encode(selector)));
        }
        if let Some(token) = &token {
            query.push_str(&format!("&continue={}", encode(token)));
        }
        let request = http::Request::get(query)
            .body(Vec::new())
            .ctx("list request")?;
        let text = client
            .request_text(request)
            .await
            .ctx(format!("listing {}", resource.plural))?;
        let page: List<T> = serde_json::from_str(&text).ctx("parsing a page")?;
        items.extend(page.items);
        match page.metadata.continue_.filter(|t| !t.is_empty()) {
            Some(next) => token = Some(next),
            None => return Ok(items),
        }
    }
}

/// Percent-encodes a query value (label selectors and continue tokens).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What the list floor read.
#[derive(Clone, Copy, Debug)]
pub struct Listed {
    pub hsds: usize,
    pub deployments: usize,
    pub pods: usize,
}

/// The bare paginated list of everything a pass reads; returns the counts and the time.
pub fn list(kubeconfig: &Path) -> Res<(Listed, Duration)> {
    on_own_runtime(kubeconfig, |client| async move {
        let hsd = hsd_resource();
        let deployment = deployment_resource();
        let pod = pod_resource();
        let (hsds, deployments, pods) = tokio::try_join!(
            list_pages::<IgnoredAny>(&client, &hsd, None),
            list_pages::<Deployment>(&client, &deployment, Some(HSD_LABEL)),
            list_pages::<Pod>(&client, &pod, Some(HSD_LABEL)),
        )?;
        Ok(Listed {
            hsds: hsds.len(),
            deployments: deployments.len(),
            pods: pods.len(),
        })
    })
}

/// kube's reflector on the three resources a watcher reads (pods and Deployments filtered by the
/// HSD label, all HSDs), until each has delivered `InitDone`; returns what the stores hold and
/// the time.
pub fn reflector_sync(kubeconfig: &Path) -> Res<(Listed, Duration)> {
    on_own_runtime(kubeconfig, |client| async move {
        let owned = watcher::Config::default().labels(HSD_LABEL);
        let pods = Writer::<LeanPod>::new(pod_resource());
        let pods_read = pods.as_reader();
        let pod_events = reflector::reflector(
            pods,
            watcher::watcher(
                Api::all_with(client.clone(), &pod_resource()),
                owned.clone(),
            ),
        )
        .default_backoff()
        .boxed();
        let deployments = Writer::<LeanDeployment>::new(deployment_resource());
        let deployments_read = deployments.as_reader();
        let deployment_events = reflector::reflector(
            deployments,
            watcher::watcher(Api::all_with(client.clone(), &deployment_resource()), owned),
        )
        .default_backoff()
        .boxed();
        let hsds = Writer::<DynamicObject>::new(hsd_resource());
        let hsds_read = hsds.as_reader();
        let hsd_events = reflector::reflector(
            hsds,
            watcher::watcher(
                Api::all_with(client.clone(), &hsd_resource()),
                watcher::Config::default(),
            ),
        )
        .default_backoff()
        .boxed();
        tokio::try_join!(
            until_init_done(pod_events),
            until_init_done(deployment_events),
            until_init_done(hsd_events),
        )?;
        Ok(Listed {
            hsds: hsds_read.state().len(),
            deployments: deployments_read.state().len(),
            pods: pods_read.state().len(),
        })
    })
}

/// Reads a watch stream until its first list is complete.
async fn until_init_done<K>(
    mut events: futures::stream::BoxStream<'static, Result<Event<K>, watcher::Error>>,
) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::InitDone) => return Ok(()),
            Ok(_) => {}
            Err(error) if Instant::now() < deadline => {
                crate::util::say(format!("floor reflector: {error} (retrying)"));
            }
            Err(error) => return Err(format!("floor reflector: {error}")),
        }
    }
    Err("floor reflector: the stream ended".into())
}
