//! The shared test fixture: one real local control plane per test process (started from the
//! cached binaries, or the one named by `HSD_TEST_KUBECONFIG`), one namespace per test.

#![allow(dead_code)]

pub mod active_standby;
pub mod http_server;
pub mod proxy;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Namespace, Pod, ServiceAccount};
use kube::api::DynamicObject;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use kubectl_hsd::observe::hsd_resource;
use serde_json::Value;

pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

static KUBECONFIG: OnceLock<PathBuf> = OnceLock::new();
static CRD_INSTALLED: OnceLock<()> = OnceLock::new();

/// The kubeconfig of the shared cluster, starting it on first use.
pub fn kubeconfig() -> &'static Path {
    KUBECONFIG.get_or_init(|| {
        if let Some(path) = std::env::var_os("HSD_TEST_KUBECONFIG") {
            return PathBuf::from(path);
        }
        // One cluster per test binary: binaries run one after another, and each one's cluster
        // is torn down when that binary exits.
        let dir = std::env::var_os("HSD_TEST_CLUSTER_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join(format!("target/{}-cluster", env!("CARGO_CRATE_NAME"))));
        let output = Command::new(repo_root().join("hack/cluster.sh"))
            .arg("up")
            .env("HSD_CLUSTER_DIR", &dir)
            // The cluster tears itself down when this test process exits.
            .env("HSD_CLUSTER_OWNER_PID", std::process::id().to_string())
            .output()
            .expect("cannot run hack/cluster.sh");
        if !output.status.success() {
            panic!(
                "the local control plane did not start (if its binaries are missing, run `hack/cluster.sh build`):\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let path = stdout.lines().last().expect("cluster.sh up prints the kubeconfig path").trim();
        PathBuf::from(path)
    })
}

pub async fn client() -> Client {
    kubectl_hsd::client::install_crypto_provider();
    let kubeconfig = Kubeconfig::read_from(kubeconfig()).expect("the test kubeconfig is readable");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("the test kubeconfig is valid");
    Client::try_from(config).expect("a client")
}

/// Runs the real binary against the test cluster.
pub fn hsd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-hsd"))
        .args(args)
        .env("KUBECONFIG", kubeconfig())
        .env_remove("POD_NAME")
        .env_remove("POD_NAMESPACE")
        .output()
        .expect("cannot run kubectl-hsd")
}

/// Runs the binary and requires success; returns stdout.
pub fn hsd_ok(args: &[&str]) -> String {
    let output = hsd(args);
    assert!(
        output.status.success(),
        "kubectl-hsd {} failed ({}):\nstdout: {}\nstderr: {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Installs the CRD once per test process, through the real `install` command.
pub fn ensure_crd() {
    CRD_INSTALLED.get_or_init(|| {
        hsd_ok(&["install"]);
    });
}

/// A namespace for one test, deleted when the test ends (pass or fail).
pub struct TestNs {
    pub client: Client,
    pub name: String,
}

impl TestNs {
    pub async fn new(prefix: &str) -> Self {
        let client = client().await;
        let name = format!(
            "{prefix}-{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_micros()
                & 0xffffff
        );
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let namespace: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
        namespaces
            .create(&PostParams::default(), &namespace)
            .await
            .expect("create the test namespace");
        ensure_default_service_account(&client, &name).await;
        Self { client, name }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Runs the binary with `-n <this namespace>` appended.
    pub fn hsd(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-n", &self.name]);
        hsd(&all)
    }

    pub fn hsd_ok(&self, args: &[&str]) -> String {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-n", &self.name]);
        hsd_ok(&all)
    }

    /// [`wait_for`], whose timeout also prints what the namespace's events and pods say, so that
    /// a run that failed far away (CI) shows which controller stalled.
    pub async fn wait_for<T, F, Fut>(&self, what: &str, timeout: Duration, check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        match poll(timeout, check).await {
            Some(value) => value,
            None => panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                self.diagnosis().await
            ),
        }
    }

    async fn diagnosis(&self) -> String {
        let mut lines = vec![format!("namespace {}:", self.name)];
        let events: Api<Event> = self.api();
        if let Ok(list) = events.list(&ListParams::default()).await {
            for event in list.items {
                lines.push(format!(
                    "  event {} {}: {} x{} {}",
                    event.involved_object.name.unwrap_or_default(),
                    event.reason.unwrap_or_default(),
                    event.source.and_then(|s| s.component).unwrap_or_default(),
                    event.count.unwrap_or(1),
                    event.message.unwrap_or_default(),
                ));
            }
        }
        let pods: Api<Pod> = self.api();
        if let Ok(list) = pods.list(&ListParams::default()).await {
            for pod in list.items {
                lines.push(format!(
                    "  pod {} phase={:?} ready={} node={:?} deleting={}",
                    pod.metadata.name.clone().unwrap_or_default(),
                    pod.status.as_ref().and_then(|s| s.phase.clone()),
                    is_ready(&pod),
                    pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                    pod.metadata.deletion_timestamp.is_some(),
                ));
            }
        }
        lines.join("\n")
    }

    /// Pods of the namespace that are not terminating.
    pub async fn live_pods(&self, selector: &str) -> Vec<Pod> {
        let pods: Api<Pod> = self.api();
        pods.list(&ListParams::default().labels(selector))
            .await
            .expect("list pods")
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect()
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop cannot await: delete from a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let namespaces: Api<Namespace> = Api::all(client().await);
                let _ = namespaces.delete(&name, &DeleteParams::background()).await;
            });
        })
        .join();
    }
}

/// Creates a new namespace's `default` ServiceAccount unless the controller-manager already has.
/// Until it exists, admission refuses every pod there, and the ReplicaSet controller backs off
/// for longer each time: after an API server restart, the ServiceAccount controller relists late
/// and a Deployment's pods could wait past a test's timeout (a CI run waited over 60 s).
pub async fn ensure_default_service_account(client: &Client, namespace: &str) {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let account: ServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "default"}})).unwrap();
    match accounts.create(&PostParams::default(), &account).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(error) => panic!("create the default ServiceAccount in {namespace}: {error}"),
    }
}

/// Polls `check` until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match poll(timeout, check).await {
        Some(value) => value,
        None => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Polls `check` every 200 ms until it returns `Some`, or `None` after `timeout`.
async fn poll<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A `reconcile --watch` process of the real binary, killed when dropped.
pub struct Watcher {
    pub child: std::process::Child,
    pub metrics: String,
    stderr_log: PathBuf,
}

impl Watcher {
    /// Starts a watcher on `namespace` and waits until it serves metrics.
    pub fn start(namespace: &str, identity: &str, extra: &[&str]) -> Self {
        Self::start_with_env(namespace, identity, extra, &[])
    }

    /// Like [`Watcher::start`], with environment variables for the process.
    pub fn start_with_env(
        namespace: &str,
        identity: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut args = vec!["-n", namespace];
        args.extend(extra);
        Self::spawn_with_env(namespace, identity, &args, env)
    }

    /// Starts `reconcile --watch` with `args` (a scope among them), a 3 s lease, metrics on a
    /// free loopback port; waits until it serves metrics. `tag` names its log file.
    pub fn spawn(tag: &str, identity: &str, extra: &[&str]) -> Self {
        Self::spawn_with_env(tag, identity, extra, &[])
    }

    pub fn spawn_with_env(tag: &str, identity: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let stderr_log = std::env::temp_dir().join(format!("hsd-watch-{tag}-{identity}.log"));
        let log = std::fs::File::create(&stderr_log).unwrap();
        let mut args = vec![
            "reconcile",
            "--watch",
            "--metrics-addr",
            "127.0.0.1:0",
            "--identity",
            identity,
            "--lease-duration",
            "3s",
            "-v",
            "1",
        ];
        args.extend(extra);
        let child = Command::new(env!("CARGO_BIN_EXE_kubectl-hsd"))
            .args(&args)
            .env("KUBECONFIG", kubeconfig())
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the watcher");
        let deadline = Instant::now() + Duration::from_secs(20);
        let metrics = loop {
            let text = std::fs::read_to_string(&stderr_log).unwrap_or_default();
            if let Some(addr) = text.lines().find_map(metrics_addr_of_line) {
                break format!("http://{addr}");
            }
            assert!(
                Instant::now() < deadline,
                "the watcher did not start:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Self {
            child,
            metrics,
            stderr_log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// The value of one metric line (exact name and labels), if present.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = http_get(&format!("{}/metrics", self.metrics)).await.ok()?.1;
        text.lines()
            .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
            .and_then(|line| line.rsplit(' ').next()?.parse().ok())
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address in a watcher's `serving /metrics, /healthz and /readyz on ADDR` line, whether
/// the line is text (`--log-format text`) or JSON (`--log-format json`, the message in
/// `fields.message`).
pub fn metrics_addr_of_line(line: &str) -> Option<String> {
    const PREFIX: &str = "serving /metrics, /healthz and /readyz on ";
    let message = match serde_json::from_str::<Value>(line) {
        Ok(json) => json["fields"]["message"].as_str()?.to_string(),
        Err(_) => line.to_string(),
    };
    message
        .strip_prefix(PREFIX)
        .map(|addr| addr.trim().to_string())
}

/// A plain HTTP GET to a loopback address (the watcher's metrics port): (status, body).
pub async fn http_get(url: &str) -> Result<(u16, String), String> {
    let rest = url.strip_prefix("http://").ok_or("not http")?;
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let addr: std::net::SocketAddr = authority.parse().map_err(|e| format!("{e}"))?;
    assert!(addr.ip().is_loopback(), "tests only talk to loopback");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Every pod deletion in a namespace, with whether the pod was busy (its busy annotation) at
/// the moment the deletion was first seen (deletionTimestamp set, or the delete event itself).
pub type Deletions = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, bool>>>;

pub fn spawn_deletion_recorder(ns: &TestNs) -> (Deletions, tokio::task::JoinHandle<()>) {
    use kube::ResourceExt;
    use kubectl_hsd::plan::{BusyAnnotation, parse_busy_annotation};
    spawn_deletion_recorder_with(
        ns,
        std::sync::Arc::new(|pod: &Pod| {
            matches!(
                parse_busy_annotation(pod.annotations().get("paia.tech/busy").map(String::as_str)),
                BusyAnnotation::Busy | BusyAnnotation::Invalid
            )
        }),
    )
}

/// Tells whether a pod was busy when its deletion was seen.
pub type BusyCheck = std::sync::Arc<dyn Fn(&Pod) -> bool + Send + Sync>;

/// Every pod deletion in a namespace, with `is_busy` of the pod at that moment.
pub fn spawn_deletion_recorder_with(
    ns: &TestNs,
    is_busy: BusyCheck,
) -> (Deletions, tokio::task::JoinHandle<()>) {
    use futures::StreamExt;
    use kube::ResourceExt;
    use kube::runtime::watcher;
    let deletions: Deletions = Default::default();
    let pods: Api<Pod> = ns.api();
    let record = deletions.clone();
    let task = tokio::spawn(async move {
        let mut events = watcher(pods, watcher::Config::default()).boxed();
        while let Some(event) = events.next().await {
            let (pod, deleted) = match event {
                Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => (pod, false),
                Ok(watcher::Event::Delete(pod)) => (pod, true),
                _ => continue,
            };
            if deleted || pod.metadata.deletion_timestamp.is_some() {
                let busy = is_busy(&pod);
                if busy {
                    eprintln!(
                        "busy pod deleted: {} annotations {:?} owners {:?}",
                        pod.name_any(),
                        pod.annotations(),
                        pod.metadata
                            .owner_references
                            .as_ref()
                            .map(|o| o.iter().map(|o| o.kind.clone()).collect::<Vec<_>>())
                    );
                }
                record.lock().unwrap().entry(pod.name_any()).or_insert(busy);
            }
        }
    });
    (deletions, task)
}

/// The names of busy pods that were deleted.
pub fn busy_victims(deletions: &Deletions) -> Vec<String> {
    deletions
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, busy)| **busy)
        .map(|(name, _)| name.clone())
        .collect()
}

// Helpers shared by the e2e and fault tests.

pub fn example(name: &str) -> Value {
    let text = std::fs::read_to_string(repo_root().join("examples").join(name)).unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

pub async fn create_hsd(ns: &TestNs, manifest: &Value) -> Result<DynamicObject, kube::Error> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(ns.client.clone(), &ns.name, &hsd_resource());
    let object: DynamicObject = serde_json::from_value(manifest.clone()).unwrap();
    api.create(&PostParams::default(), &object).await
}

pub async fn hsd_status(ns: &TestNs, name: &str) -> Value {
    let api: Api<DynamicObject> =
        Api::namespaced_with(ns.client.clone(), &ns.name, &hsd_resource());
    api.get(name)
        .await
        .unwrap()
        .data
        .get("status")
        .cloned()
        .unwrap_or(Value::Null)
}

pub async fn replicas(ns: &TestNs, deployment: &str) -> Option<i32> {
    let deployments: Api<Deployment> = ns.api();
    deployments
        .get_opt(deployment)
        .await
        .unwrap()
        .and_then(|d| d.spec?.replicas)
}

/// Sets a Deployment's `spec.replicas` as another writer would: a server-side apply under the
/// field manager `manager`, which then owns the field.
pub async fn set_replicas_as(ns: &TestNs, deployment: &str, manager: &str, replicas: i32) {
    let deployments: Api<Deployment> = ns.api();
    deployments
        .patch(
            deployment,
            &kube::api::PatchParams::apply(manager).force(),
            &kube::api::Patch::Apply(serde_json::json!({
                "apiVersion": "apps/v1", "kind": "Deployment", "spec": {"replicas": replicas},
            })),
        )
        .await
        .unwrap();
}

/// (type, reason, message) of every event in the test namespace.
pub async fn event_reasons(ns: &TestNs) -> Vec<(String, String, String)> {
    events(ns)
        .await
        .into_iter()
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default(),
            )
        })
        .collect()
}

/// Events this tool reported in the namespace; the cluster's own controllers report late
/// (a ReplicaSet's SuccessfulCreate can land seconds after the pods), so a "writes nothing" check
/// counts only ours.
pub async fn our_event_count(ns: &TestNs) -> usize {
    events(ns)
        .await
        .iter()
        .filter(|e| e.reporting_component.as_deref() == Some("paia.tech/kubectl-hsd"))
        .count()
}

async fn events(ns: &TestNs) -> Vec<Event> {
    let events: Api<Event> = ns.api();
    events.list(&ListParams::default()).await.unwrap().items
}

// The cluster's extras (hack/cluster.sh): the data node, kwok's exec, kubectl.

/// The tainted node whose pods get IPs from `DATA_NODE_CIDR`, addresses that EndpointSlices accept
/// (loopback pod IPs are refused there). Data only: nothing may ever connect to them.
pub const DATA_NODE: &str = "hsd-data-node";
pub const DATA_NODE_TAINT: &str = "paia.tech/data-only";
pub const DATA_NODE_CIDR: &str = "198.18.0.0/24";

/// Whether `ip` is a data node pod IP (198.18.0.0/24).
pub fn is_data_node_ip(ip: &str) -> bool {
    ip.parse::<std::net::Ipv4Addr>()
        .is_ok_and(|ip| ip.octets()[..3] == [198, 18, 0])
}

/// Puts a pod spec (of a Pod, or a template's `spec`) on the data node: the toleration of its
/// taint, kept beside any other, and a nodeSelector for it.
pub fn on_data_node(mut pod_spec: Value) -> Value {
    let toleration = serde_json::json!({
        "key": DATA_NODE_TAINT, "operator": "Equal", "value": "true", "effect": "NoSchedule",
    });
    match pod_spec["tolerations"].as_array_mut() {
        Some(tolerations) => tolerations.push(toleration),
        None => pod_spec["tolerations"] = serde_json::json!([toleration]),
    }
    pod_spec["nodeSelector"] = serde_json::json!({"kubernetes.io/hostname": DATA_NODE});
    pod_spec
}

/// The cluster's own kubectl (the bin dir named in the cluster dir's state.env), else `kubectl`.
pub fn kubectl_path() -> PathBuf {
    let state = kubeconfig()
        .parent()
        .map(|dir| dir.join("state.env"))
        .and_then(|path| std::fs::read_to_string(path).ok())
        .unwrap_or_default();
    state
        .lines()
        .find_map(|line| line.strip_prefix("BIN_DIR="))
        .map(|dir| Path::new(dir.trim_matches('\'')).join("kubectl"))
        .filter(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from("kubectl"))
}

/// Runs kubectl against the test cluster.
pub fn kubectl(args: &[&str]) -> Output {
    Command::new(kubectl_path())
        .arg("--kubeconfig")
        .arg(kubeconfig())
        .args(args)
        .output()
        .expect("cannot run kubectl")
}

/// kwok's `Exec` for one pod: `pods/exec` into that pod runs the command on this machine, in a
/// work dir of the pod's own, so that a relative command (`cat busy_state`) reads that pod's
/// files. The dir is removed when this is dropped; the Exec goes with the namespace.
pub struct PodExec {
    pub dir: PathBuf,
}

impl PodExec {
    pub async fn create(ns: &TestNs, pod: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("hsd-exec-{}-{pod}", ns.name));
        std::fs::create_dir_all(&dir).unwrap();
        let resource = kube::api::ApiResource {
            group: "kwok.x-k8s.io".into(),
            version: "v1alpha1".into(),
            api_version: "kwok.x-k8s.io/v1alpha1".into(),
            kind: "Exec".into(),
            plural: "execs".into(),
        };
        let execs: Api<DynamicObject> =
            Api::namespaced_with(ns.client.clone(), &ns.name, &resource);
        let exec: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "Exec",
            "metadata": {"name": pod, "namespace": ns.name},
            "spec": {"execs": [{"local": {"workDir": dir}}]},
        }))
        .unwrap();
        execs
            .create(&PostParams::default(), &exec)
            .await
            .expect("create kwok's Exec for the pod");
        Self { dir }
    }

    /// Writes a file of the pod's work dir (atomically: a probe never reads half of it).
    pub fn write(&self, file: &str, content: &str) {
        let partial = self.dir.join(format!(".{file}.partial"));
        std::fs::write(&partial, content).unwrap();
        std::fs::rename(&partial, self.dir.join(file)).unwrap();
    }
}

impl Drop for PodExec {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
