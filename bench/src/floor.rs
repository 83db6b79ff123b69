//! The floors of the read side: what any client must do to read the objects a pass or a watcher
//! of HSDs reads, measured in-process beside the product, each on a thread and runtime of its own
//! (like a separate process) with a client built inside the measured time (kubeconfig, TLS).
//!
//! - [`list`]: a bare paginated list (500 a page, one page after the other) of the HSDs, the
//!   Deployments and the pods that carry the HSD label, the three lists at once, each page parsed
//!   into lean structs that keep only what a pass reads. Its own code, not the product's
//!   `observe::list_lean`, so that it does not move when the product does.
//! - [`reflector_process`]: kube's own `reflector(watcher(..))` on the same three label-filtered
//!   resources, until all three deliver `InitDone`; pods and Deployments into the same lean
//!   object types as the product (every reflector of these objects parses the same JSON). It
//!   runs as a process of its own, so that its memory can be read beside the watcher's.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::BoxStream;
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

/// The three reflectors, after each delivered `InitDone`: what the stores hold, and the streams
/// (the stores live as long as they are polled or held).
async fn reflect(client: Client) -> Res<(Listed, Vec<BoxStream<'static, ()>>)> {
    let owned = watcher::Config::default().labels(HSD_LABEL);
    let pods = Writer::<LeanPod>::new(pod_resource());
    let pods_read = pods.as_reader();
    let mut pod_events = reflector::reflector(
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
    let mut deployment_events = reflector::reflector(
        deployments,
        watcher::watcher(Api::all_with(client.clone(), &deployment_resource()), owned),
    )
    .default_backoff()
    .boxed();
    let hsds = Writer::<DynamicObject>::new(hsd_resource());
    let hsds_read = hsds.as_reader();
    let mut hsd_events = reflector::reflector(
        hsds,
        watcher::watcher(
            Api::all_with(client.clone(), &hsd_resource()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .boxed();
    tokio::try_join!(
        until_init_done(&mut pod_events),
        until_init_done(&mut deployment_events),
        until_init_done(&mut hsd_events),
    )?;
    let listed = Listed {
        hsds: hsds_read.state().len(),
        deployments: deployments_read.state().len(),
        pods: pods_read.state().len(),
    };
    let streams = vec![
        pod_events.map(|_| ()).boxed(),
        deployment_events.map(|_| ()).boxed(),
        hsd_events.map(|_| ()).boxed(),
    ];
    Ok((listed, streams))
}

/// The argument that makes this binary the reflector floor process (see [`reflector_process`]).
pub const PROCESS_FLAG: &str = "--floor-reflector";

/// The reflector floor as a process of its own, so that its memory is its own: this binary with
/// [`PROCESS_FLAG`]. Returns what its stores hold, the time from spawning it to its "synced"
/// line (process start, client, the three first lists), and its VmRSS and VmHWM in kB read
/// `hold` later, while it keeps watching.
pub fn reflector_process(kubeconfig: &Path, hold: Duration) -> Res<(Listed, Duration, u64, u64)> {
    use std::io::BufRead;
    let exe = std::env::current_exe().ctx("the benchmark's own path")?;
    let started = Instant::now();
    let mut child = std::process::Command::new(exe)
        .arg(PROCESS_FLAG)
        .arg(kubeconfig)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .ctx("spawning the reflector floor")?;
    let result = (|| -> Res<(Listed, Duration, u64, u64)> {
        let stdout = child.stdout.take().ok_or("the floor's stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .ctx("reading the reflector floor")?;
        let synced = started.elapsed();
        let counts: Vec<usize> = line
            .strip_prefix("synced ")
            .map(|rest| {
                rest.split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        let [hsds, deployments, pods] = counts[..] else {
            return Err(format!("the reflector floor said {line:?}"));
        };
        std::thread::sleep(hold);
        let (rss, hwm) = crate::product::proc_memory_kb(child.id())?;
        Ok((
            Listed {
                hsds,
                deployments,
                pods,
            },
            synced,
            rss,
            hwm,
        ))
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// The reflector floor process's main: syncs, prints "synced HSDS DEPLOYMENTS PODS", and keeps
/// watching until it is killed.
pub fn reflector_process_main(kubeconfig: &Path) -> Res<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .ctx("floor runtime")?;
    runtime.block_on(async move {
        let client = client(kubeconfig).await?;
        let (listed, streams) = reflect(client).await?;
        println!(
            "synced {} {} {}",
            listed.hsds, listed.deployments, listed.pods
        );
        futures::stream::select_all(streams)
            .for_each(|_| async {})
            .await;
        Ok(())
    })
}

/// Reads a watch stream until its first list is complete.
async fn until_init_done<K>(
    events: &mut BoxStream<'static, Result<Event<K>, watcher::Error>>,
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
