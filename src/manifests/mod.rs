//! Everything the tool installs, rendered from code: the CRDs, least-privilege RBAC ([`rbac`]),
//! the unattended operator ([`operator`]: a CronJob running one pass a minute, or a watcher
//! Deployment) and the pod policy ([`policy`]). `crd/` and `cronjob/` hold their rendered form,
//! guarded by a drift test.

mod operator;
pub mod package;
mod policy;
mod rbac;

pub use operator::{
    METRICS_PORT, cronjob_active_deadline_seconds, default_resources, metrics_service_name,
    operator,
};
pub(crate) use operator::{container_security_context, downward_api_env, pod_security_context};
pub use policy::{hsj_pod_policy_name, pod_policy, pod_policy_name};
pub use rbac::{aggregated_roles, lease_rules, reconcile_rules, user_role_name};

use kube::CustomResourceExt;
use serde_json::{Value, json};

use crate::api::{HotStandbyDeployment, HotStandbyJob};

/// The namespace the operator objects go to unless `-n` says otherwise.
pub const DEFAULT_OPERATOR_NAMESPACE: &str = "hsd-system";
pub const OPERATOR_NAME: &str = "kubectl-hsd";
/// Nonroot uid/gid of the image (distroless's `nonroot`).
pub const RUN_AS: i64 = 65532;

/// The image repository `hack/release.sh` pushes to; the tag is `v<crate version>`.
pub const IMAGE_REPOSITORY: &str = "ghcr.io/paia-tech/kubectl-hsd";

/// The image of this very version, as `hack/release.sh` tags it.
pub fn default_image() -> String {
    format!("{IMAGE_REPOSITORY}:v{}", env!("CARGO_PKG_VERSION"))
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OperatorMode {
    /// One pass a minute from a CronJob.
    #[default]
    Cronjob,
    /// `reconcile --watch` in a 2-replica Deployment with leader election.
    Deployment,
}

/// A prometheus-operator object that scrapes the watcher's `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MonitorKind {
    /// A ServiceMonitor on the metrics Service.
    ServiceMonitor,
    /// A PodMonitor on the watcher pods.
    PodMonitor,
}

#[derive(Clone, Debug)]
pub struct OperatorOptions {
    pub mode: OperatorMode,
    pub namespace: String,
    pub image: String,
    /// Watch only `namespace`, with a Role there instead of a ClusterRole.
    pub namespace_scoped: bool,
    /// Watcher replicas (Deployment mode).
    pub replicas: i32,
    /// Shards of the HSDs, each on its own Lease (Deployment mode; 1: no sharding).
    pub shards: u32,
    /// The container's `resources` ([`default_resources`] unless told otherwise).
    pub resources: Value,
    /// With the Deployment: a ServiceMonitor or PodMonitor too.
    pub monitor: Option<MonitorKind>,
}

impl OperatorOptions {
    /// The options of a mode with the defaults: cluster-wide, 2 replicas, no sharding, the
    /// mode's resources, no monitor.
    pub fn new(mode: OperatorMode, namespace: &str, image: &str) -> Self {
        Self {
            mode,
            namespace: namespace.to_string(),
            image: image.to_string(),
            resources: default_resources(mode),
            ..Self::default()
        }
    }
}

impl Default for OperatorOptions {
    fn default() -> Self {
        Self {
            mode: OperatorMode::default(),
            namespace: DEFAULT_OPERATOR_NAMESPACE.to_string(),
            image: default_image(),
            namespace_scoped: false,
            replicas: 2,
            shards: 1,
            resources: default_resources(OperatorMode::default()),
            monitor: None,
        }
    }
}

/// Serializes manifests as a YAML stream (`---` between documents).
pub fn to_yaml_documents(documents: &[Value]) -> String {
    documents
        .iter()
        .map(|doc| serde_saphyr::to_string(doc).expect("JSON values always serialize to YAML"))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The HotStandbyDeployment CRD.
pub fn crd() -> Value {
    serde_json::to_value(HotStandbyDeployment::crd()).expect("a CRD always serializes")
}

/// The HotStandbyJob CRD.
pub fn hsj_crd() -> Value {
    serde_json::to_value(HotStandbyJob::crd()).expect("a CRD always serializes")
}

/// Every CRD of the tool, in the order `install` applies them.
pub fn crds() -> Vec<Value> {
    vec![crd(), hsj_crd()]
}

/// The HotStandbyDeployment CRD as YAML, exactly as committed in `crd/hotstandbydeployment.yaml`.
pub fn crd_yaml() -> String {
    to_yaml_documents(&[crd()])
}

/// The HotStandbyJob CRD as YAML, exactly as committed in `crd/hotstandbyjob.yaml`.
pub fn hsj_crd_yaml() -> String {
    to_yaml_documents(&[hsj_crd()])
}

/// Every CRD as one YAML stream (`kubectl hsd crd`).
pub fn crds_yaml() -> String {
    to_yaml_documents(&crds())
}

/// The label on every object an install makes, naming the install's namespace: `uninstall -n NS`
/// removes exactly the objects of that install, cluster-scoped ones included.
pub const INSTALL_LABEL: &str = "paia.tech/install-namespace";

pub(crate) fn labels() -> Value {
    json!({
        "app.kubernetes.io/name": OPERATOR_NAME,
        "app.kubernetes.io/component": "reconciler",
        "app.kubernetes.io/managed-by": OPERATOR_NAME,
    })
}

pub(crate) fn install_labels(namespace: &str) -> Value {
    let mut labels = labels();
    labels[INSTALL_LABEL] = json!(namespace);
    labels
}

/// The name of an install's cluster-scoped objects: one set per install namespace, so that
/// installs never share (or delete) each other's.
pub fn cluster_object_name(namespace: &str) -> String {
    format!("{OPERATOR_NAME}.{namespace}")
}

/// How many of [`install_documents`] come first as CRDs.
pub const CRD_COUNT: usize = 2;

/// Everything `install` applies, in order: the CRDs first, the `view`/`edit` roles of their
/// resources, then the operator.
pub fn install_documents(
    install_namespace: &str,
    operator_options: Option<&OperatorOptions>,
) -> Vec<Value> {
    let mut documents = crds();
    documents.extend(aggregated_roles(install_namespace));
    if let Some(options) = operator_options {
        documents.extend(operator(options));
    }
    documents
}

/// The committed rendering of `install --operator <mode> --print` with the defaults.
pub fn default_operator_yaml(mode: OperatorMode) -> String {
    to_yaml_documents(&install_documents(
        DEFAULT_OPERATOR_NAMESPACE,
        Some(&OperatorOptions::new(
            mode,
            DEFAULT_OPERATOR_NAMESPACE,
            &default_image(),
        )),
    ))
}
