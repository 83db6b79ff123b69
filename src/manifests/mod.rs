//! Everything the tool installs, rendered from code: the CRDs, least-privilege RBAC ([`rbac`]),
//! the unattended operator ([`operator`]: a CronJob running one pass a minute, or a watcher
//! Deployment) and the pod policy ([`policy`]). `crd/` and `cronjob/` hold their rendered form,
//! guarded by a drift test.

mod operator;
mod policy;
mod rbac;

pub(crate) use operator::{container_security_context, downward_api_env, pod_security_context};
pub use operator::{cronjob_active_deadline_seconds, operator};
pub use policy::{pod_policy, pod_policy_name};
pub use rbac::{lease_rules, reconcile_rules};

use kube::CustomResourceExt;
use serde_json::{Value, json};

use crate::api::HotStandbyDeployment;

/// The namespace the operator objects go to unless `-n` says otherwise.
pub const DEFAULT_OPERATOR_NAMESPACE: &str = "hsd-system";
pub const OPERATOR_NAME: &str = "kubectl-hsd";
/// Nonroot uid/gid of the image (distroless's `nonroot`).
pub const RUN_AS: i64 = 65532;

pub fn default_image() -> String {
    format!(
        "ghcr.io/paia-tech/kubectl-hsd:v{}",
        env!("CARGO_PKG_VERSION")
    )
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OperatorMode {
    /// One pass a minute from a CronJob.
    #[default]
    Cronjob,
    /// `reconcile --watch` in a 2-replica Deployment with leader election.
    Deployment,
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

pub fn crd() -> Value {
    serde_json::to_value(HotStandbyDeployment::crd()).expect("a CRD always serializes")
}

/// The CRD as YAML, exactly as committed in `crd/hotstandbydeployment.yaml`.
pub fn crd_yaml() -> String {
    to_yaml_documents(&[crd()])
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

/// The cluster-wide rules each mode needs, and nothing more: a one-shot pass lists, a watcher
/// lists and watches.
/// Everything `install` applies, in order: CRD first, then the operator.
pub fn install_documents(operator_options: Option<&OperatorOptions>) -> Vec<Value> {
    let mut documents = vec![crd()];
    if let Some(options) = operator_options {
        documents.extend(operator(options));
    }
    documents
}

/// The committed rendering of `install --operator <mode> --print` with the defaults.
pub fn default_operator_yaml(mode: OperatorMode) -> String {
    to_yaml_documents(&install_documents(Some(&OperatorOptions {
        mode,
        ..OperatorOptions::default()
    })))
}
