//! Observe: the reads of a pass. HSDs, and the Deployments and pods that carry the HSD label,
//! are each listed once per scope (one namespace, or all with `-A`), never once per HSD, into
//! lean types that keep only what the plan reads, and filed in the [`Index`] that both drivers
//! read through; then HTTP-mode pods are probed.

pub mod exec;
pub mod index;
pub mod jobs;
pub mod probe;
pub mod services;

pub use index::Index;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ApiResource, DynamicObject, ListParams, ObjectList};
use kube::core::object::{NotUsed, Object};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::api::hsd::{
    HotStandbyDeployment, HotStandbyDeploymentSpec, HotStandbyDeploymentStatus, ProbeMode,
};
use crate::api::probe::BusyProbe;
use crate::error::{Result, hsd_read_error, kube_error};
use crate::observe::probe::{ProbeResult, ProbeTarget, Prober, Target};
use crate::plan::{self, ObservedDeployment, ObservedHsd, ObservedPod, PodPhase};

/// The annotation on the child Deployment that holds the applied template's hash.
pub const TEMPLATE_HASH_ANNOTATION: &str = "paia.tech/template-hash";
/// The annotation on the child Deployment that held the replicas this tool last applied, before
/// `metadata.managedFields` told another writer's change (see [`replicas_writer`]). The
/// Deployment controller copies a Deployment's annotations to its ReplicaSet, so a changing one
/// cost a ReplicaSet update per scale. A replicas write removes it from children that have it.
pub const APPLIED_REPLICAS_ANNOTATION: &str = "paia.tech/applied-replicas";
/// The annotation on a child Deployment that this tool paused to relabel it without a rollout:
/// a pass that finds it finishes the relabel and unpauses it.
pub const RELABELLING_ANNOTATION: &str = "paia.tech/relabelling";

/// Page size of list calls: bounds memory and the API server's work per request.
const PAGE_SIZE: u32 = 500;

/// Which namespaces a pass covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Namespace(String),
    All,
}

impl Scope {
    pub fn namespace(&self) -> Option<&str> {
        match self {
            Scope::Namespace(ns) => Some(ns),
            Scope::All => None,
        }
    }

    fn api<K>(&self, client: &Client, resource: &ApiResource) -> Api<K>
    where
        K: Resource<DynamicType = ApiResource, Scope = kube::core::DynamicResourceScope>,
    {
        match self {
            Scope::Namespace(ns) => Api::namespaced_with(client.clone(), ns, resource),
            Scope::All => Api::all_with(client.clone(), resource),
        }
    }
}

/// The parts of a pod's spec the plan reads.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeanPodSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeanPodStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, rename = "podIP", skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<LeanCondition>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeanCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// A pod as read from the API, without the fields the plan never reads.
pub type LeanPod = Object<LeanPodSpec, LeanPodStatus>;

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct LeanDeploymentSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
}

/// A Deployment as read from the API: its metadata and replica count.
pub type LeanDeployment = Object<LeanDeploymentSpec, NotUsed>;

pub fn pod_resource() -> ApiResource {
    ApiResource::erase::<Pod>(&())
}
pub fn deployment_resource() -> ApiResource {
    ApiResource::erase::<Deployment>(&())
}
pub fn hsd_resource() -> ApiResource {
    ApiResource::erase::<HotStandbyDeployment>(&())
}

/// What a pass read, before probing and planning.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub hsds: Vec<DynamicObject>,
    pub index: Index,
}

/// Only what an HSD made: its child Deployments and their pods carry the HSD label.
pub fn hsd_owned_selector() -> String {
    crate::labels::HSD_LABEL.to_string()
}

/// Lists everything a pass needs in the scope: three paginated lists.
pub async fn read_snapshot(client: &Client, scope: &Scope) -> Result<Snapshot> {
    let namespace = scope.namespace();
    let hsds = list_all::<DynamicObject>(scope.api(client, &hsd_resource()))
        .await
        .map_err(hsd_read_error(namespace))?;
    if hsds.is_empty() {
        return Ok(Snapshot::default());
    }
    read_children(client, scope, hsds, &hsd_owned_selector()).await
}

/// The child Deployment and pods of one HSD (a label-selected list each, at once): what the
/// proxy's wake runs the plan on, beside the HSD it has just written.
pub async fn read_one_index(client: &Client, namespace: &str, name: &str) -> Result<Index> {
    let selector = format!(
        "{}={}",
        crate::labels::HSD_LABEL,
        crate::labels::hsd_label_value(name)
    );
    let scope = Scope::Namespace(namespace.to_string());
    read_children(client, &scope, Vec::new(), &selector)
        .await
        .map(|snapshot| snapshot.index)
}

async fn read_children(
    client: &Client,
    scope: &Scope,
    hsds: Vec<DynamicObject>,
    selector: &str,
) -> Result<Snapshot> {
    let namespace = scope.namespace();
    let (deployments, pods) = tokio::try_join!(
        async {
            list_lean::<LeanDeploymentSpec, NotUsed>(
                client,
                scope,
                &deployment_resource(),
                selector,
            )
            .await
            .map_err(kube_error(
                "listing Deployments",
                "list",
                "deployments.apps",
                namespace,
            ))
        },
        async {
            list_lean::<LeanPodSpec, LeanPodStatus>(client, scope, &pod_resource(), selector)
                .await
                .map_err(kube_error("listing pods", "list", "pods", namespace))
        },
    )?;
    Ok(Snapshot {
        hsds,
        index: Index::from_lists(deployments, pods),
    })
}

async fn list_all<K>(api: Api<K>) -> Result<Vec<K>, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut items = Vec::new();
    let mut params = ListParams::default().limit(PAGE_SIZE);
    loop {
        let page: ObjectList<K> = api.list(&params).await?;
        items.extend(page.items);
        match page.metadata.continue_.filter(|token| !token.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(items),
        }
    }
}

/// Object metadata as a pass reads it: what the plan needs, and not `managedFields` (often the
/// largest part of a pod), which serde skips without keeping it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeanMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    creation_timestamp: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    deletion_timestamp: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
    owner_references: Option<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>>,
    /// Of the managed fields, who owns `spec.replicas` (what [`replicas_writer`] reads); the
    /// rest is skipped unbuilt.
    #[serde(default, deserialize_with = "replicas_owners")]
    managed_fields: Option<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry>>,
}

/// A managed-fields entry read for its manager and whether it owns `spec.replicas` only.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManagedEntryHead {
    manager: Option<String>,
    operation: Option<String>,
    fields_type: Option<String>,
    #[serde(default)]
    fields_v1: OwnsReplicas,
}

/// Whether a `fieldsV1` tree holds `f:spec` -> `f:replicas`, found without building the tree.
#[derive(Default)]
struct OwnsReplicas(bool);

impl<'de> Deserialize<'de> for OwnsReplicas {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// Finds `wanted` among a map's keys; with `inner`, `wanted`'s value must hold `inner`.
        struct Find {
            wanted: &'static str,
            inner: Option<&'static str>,
        }
        impl<'de> serde::de::Visitor<'de> for Find {
            type Value = bool;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a managed-fields tree")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
                let mut found = false;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key == self.wanted {
                        found |= match self.inner {
                            Some(inner) => map.next_value_seed(Find {
                                wanted: inner,
                                inner: None,
                            })?,
                            None => {
                                map.next_value::<serde::de::IgnoredAny>()?;
                                true
                            }
                        };
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(found)
            }
        }
        impl<'de> serde::de::DeserializeSeed<'de> for Find {
            type Value = bool;
            fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
                d.deserialize_map(self)
            }
        }
        deserializer
            .deserialize_map(Find {
                wanted: "f:spec",
                inner: Some("f:replicas"),
            })
            .map(OwnsReplicas)
    }
}

fn replicas_owners<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry>>, D::Error>
{
    let entries = Option::<Vec<ManagedEntryHead>>::deserialize(deserializer)?.unwrap_or_default();
    let owners: Vec<_> = entries
        .into_iter()
        .filter(|entry| entry.fields_v1.0)
        .map(|entry| replicas_owner_entry(entry.manager, entry.operation, entry.fields_type))
        .collect();
    Ok((!owners.is_empty()).then_some(owners))
}

/// A managed-fields entry trimmed to what [`replicas_writer`] reads: its manager owns
/// `spec.replicas`.
pub(crate) fn replicas_owner_entry(
    manager: Option<String>,
    operation: Option<String>,
    fields_type: Option<String>,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry {
        manager,
        operation,
        fields_type,
        fields_v1: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1(
            serde_json::json!({"f:spec": {"f:replicas": {}}}),
        )),
        ..Default::default()
    }
}

#[derive(Deserialize)]
#[serde(bound(deserialize = "P: Default + DeserializeOwned, U: DeserializeOwned"))]
struct LeanItem<P, U> {
    metadata: LeanMeta,
    #[serde(default)]
    spec: P,
    status: Option<U>,
}

#[derive(Deserialize)]
#[serde(bound(deserialize = "P: Default + DeserializeOwned, U: DeserializeOwned"))]
struct LeanList<P, U> {
    metadata: kube::core::ListMeta,
    items: Vec<LeanItem<P, U>>,
}

/// Lists a resource page by page straight into lean objects: one request per page, and the
/// memory of one page's raw JSON (and the next one's, in flight) at a time.
///
/// The next page is requested as soon as its continue token is read off the head of this one,
/// and arrives while this one is parsed: at 500 pods a page the API server's work for one page
/// and the parse of the previous one overlap instead of taking turns. The token is checked
/// against the parsed page; where it cannot be read early, pages go one after another.
pub async fn list_lean<P, U>(
    client: &Client,
    scope: &Scope,
    resource: &ApiResource,
    label_selector: &str,
) -> Result<Vec<Object<P, U>>, kube::Error>
where
    P: Clone + Default + DeserializeOwned,
    U: Clone + DeserializeOwned,
{
    let url = <Object<P, U> as Resource>::url_path(resource, scope.namespace());
    let request = kube::core::Request::new(url);
    let params = ListParams::default()
        .limit(PAGE_SIZE)
        .labels(label_selector);
    let fetch = |continue_token: Option<&str>| {
        let params = match continue_token {
            Some(token) => params.clone().continue_token(token),
            None => params.clone(),
        };
        let http_request = request.list(&params).map_err(kube::Error::BuildRequest);
        let client = client.clone();
        // Aborted when dropped: a page fetched ahead of a list that fails or ends differently
        // is not left running.
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            client.request_text(http_request?).await
        }))
    };
    let mut items = Vec::new();
    let mut pending = fetch(None);
    loop {
        let text = pending.await.map_err(|error| {
            kube::Error::Service(format!("a list page's request task failed: {error}").into())
        })??;
        let early = continue_token_of(&text);
        let prefetched = early
            .as_deref()
            .map(|token| (token.to_string(), fetch(Some(token))));
        let page: LeanList<P, U> = serde_json::from_str(&text).map_err(kube::Error::SerdeError)?;
        drop(text);
        items.extend(page.items.into_iter().map(lean_object));
        let token = page.metadata.continue_.filter(|token| !token.is_empty());
        pending = match (prefetched, token) {
            (Some((early, next)), Some(token)) if early == token => next,
            (_, Some(token)) => fetch(Some(&token)),
            (_, None) => return Ok(items),
        };
    }
}

fn lean_object<P: Clone, U: Clone>(item: LeanItem<P, U>) -> Object<P, U> {
    let mut annotations = item.metadata.annotations;
    if let Some(annotations) = annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    Object {
        types: None,
        metadata: kube::api::ObjectMeta {
            name: item.metadata.name,
            namespace: item.metadata.namespace,
            uid: item.metadata.uid,
            resource_version: item.metadata.resource_version,
            creation_timestamp: item.metadata.creation_timestamp,
            deletion_timestamp: item.metadata.deletion_timestamp,
            labels: item.metadata.labels,
            annotations,
            owner_references: item.metadata.owner_references,
            managed_fields: item.metadata.managed_fields,
            ..Default::default()
        },
        spec: item.spec,
        status: item.status,
    }
}

/// The continue token of a list page, read from the list's `metadata`, which the API server
/// writes before `items` (`{"kind":..,"apiVersion":..,"metadata":{..},"items":[..]}`). `None`
/// when the page has no token, or its head is not laid out so.
pub fn continue_token_of(page: &str) -> Option<String> {
    let at = page.find("\"metadata\":")?;
    if page.find("\"items\":").is_some_and(|items| items < at) {
        return None;
    }
    let rest = &page[at + "\"metadata\":".len()..];
    let mut head = serde_json::Deserializer::from_str(rest);
    let metadata = kube::core::ListMeta::deserialize(&mut head).ok()?;
    metadata.continue_.filter(|token| !token.is_empty())
}

/// A raw object's spec, or why it cannot be read (an unknown probe mode is named as such,
/// with the modes there are).
pub fn parse_spec<S: DeserializeOwned>(object: &DynamicObject) -> Result<S, String> {
    let Some(spec) = object.data.get("spec") else {
        return Err("spec is missing".to_string());
    };
    if let Some(message) = crate::api::probe::unknown_mode_message(spec) {
        return Err(message);
    }
    S::deserialize(spec).map_err(|e| e.to_string())
}

/// Turns the raw HSD object into the plan's view, keeping a spec that cannot be read as an
/// error for that HSD alone.
pub fn hsd_facts(object: &DynamicObject) -> ObservedHsd {
    let spec = parse_spec::<HotStandbyDeploymentSpec>(object);
    let status = object.data.get("status").and_then(|status| {
        serde_json::from_value::<HotStandbyDeploymentStatus>(status.clone()).ok()
    });
    ObservedHsd {
        name: object.name_any(),
        namespace: object.namespace().unwrap_or_default(),
        uid: object.uid().unwrap_or_default(),
        generation: object.metadata.generation,
        paused: object
            .annotations()
            .get(crate::api::hsd::PAUSED_ANNOTATION)
            .is_some_and(|v| v.eq_ignore_ascii_case("true")),
        spec,
        status,
        deployment: None,
        pods: Vec::new(),
        probes_cut_short: 0,
        master_slot: false,
        resource_version: object.resource_version(),
        sleep_deadline: object
            .annotations()
            .get(crate::plan::sleep::SLEEP_DEADLINE_ANNOTATION)
            .and_then(|value| crate::proxy::deadline::parse_deadline(value)),
    }
}

pub fn deployment_facts(deployment: &LeanDeployment, hsd_uid: &str) -> ObservedDeployment {
    ObservedDeployment {
        owned: deployment
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|owner| owner.controller == Some(true) && owner.uid == hsd_uid),
        replicas: deployment.spec.replicas,
        template_hash: deployment
            .annotations()
            .get(TEMPLATE_HASH_ANNOTATION)
            .cloned(),
        replicas_writer: replicas_writer(&deployment.metadata),
        relabelling: deployment
            .annotations()
            .contains_key(RELABELLING_ANNOTATION),
    }
}

/// The field manager that set a Deployment's `spec.replicas`, when it is not this tool: the API
/// server records in `metadata.managedFields` which manager owns each field, and a write that
/// changes a field moves it to its writer. `None` when this tool owns it (alone or shared, as
/// when another applier set the same value) or no entry says.
pub fn replicas_writer(meta: &kube::api::ObjectMeta) -> Option<String> {
    let ours = crate::client::product_field_manager();
    let owners: Vec<&str> = meta
        .managed_fields
        .iter()
        .flatten()
        .filter(|entry| owns_replicas(entry))
        .map(|entry| entry.manager.as_deref().unwrap_or("(unnamed)"))
        .collect();
    if owners.is_empty() || owners.contains(&ours.as_str()) {
        return None;
    }
    Some(owners.join(", "))
}

/// Whether a managed-fields entry owns `spec.replicas`.
pub fn owns_replicas(
    entry: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry,
) -> bool {
    entry.fields_v1.as_ref().is_some_and(|fields| {
        fields
            .0
            .get("f:spec")
            .and_then(|spec| spec.get("f:replicas"))
            .is_some()
    })
}

/// The plan's view of one pod for an HSD whose busy annotation is `annotation_key`.
pub fn pod_facts(pod: &LeanPod, annotation_key: &str) -> ObservedPod {
    let status = pod.status.as_ref();
    let annotations = pod.annotations();
    ObservedPod {
        name: pod.name_any(),
        uid: pod.uid().unwrap_or_default(),
        resource_version: pod.resource_version().unwrap_or_default(),
        template: pod.labels().get(crate::labels::TEMPLATE_LABEL).cloned(),
        draining: annotations.contains_key(crate::labels::DRAINING_ANNOTATION),
        draining_since: annotations
            .get(crate::labels::DRAINING_ANNOTATION)
            .and_then(|since| since.parse().ok()),
        detached: pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|owner| owner.controller == Some(true) && owner.kind == "HotStandbyDeployment"),
        retired_since: annotations
            .get(crate::labels::RETIRED_ANNOTATION)
            .and_then(|since| since.parse().ok()),
        state_label: pod.labels().get(crate::labels::STATE_LABEL).cloned(),
        template_hash: pod.labels().get(plan::POD_TEMPLATE_HASH_LABEL).cloned(),
        cost_in_flight: None,
        ready: status.is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        }),
        phase: PodPhase::parse(status.and_then(|s| s.phase.as_deref())),
        terminating: pod.metadata.deletion_timestamp.is_some(),
        busy_annotation: pod.annotations().get(annotation_key).cloned(),
        designated_active: crate::plan::active_standby::is_designated(pod.labels()),
        probe: None,
        scheduled: pod.spec.node_name.as_deref().is_some_and(|n| !n.is_empty()),
        deletion_cost: pod
            .annotations()
            .get(plan::DELETION_COST_ANNOTATION)
            .and_then(|v| v.trim().parse().ok()),
        unschedulable_since: status.and_then(|s| {
            s.conditions
                .iter()
                .find(|c| {
                    c.type_ == "PodScheduled"
                        && c.status == "False"
                        && c.reason.as_deref() == Some("Unschedulable")
                })
                .map(|c| {
                    c.last_transition_time
                        .as_deref()
                        .and_then(|t| t.parse().ok())
                        .unwrap_or_default()
                })
        }),
    }
}

/// The plan's view of an HSD's pods, each with its probe outcome if it has one.
pub fn pods_facts<'a>(
    hsd: &ObservedHsd,
    pods: impl Iterator<Item = &'a LeanPod>,
    probe: impl Fn(&LeanPod) -> Option<crate::plan::ProbeOutcome>,
) -> Vec<ObservedPod> {
    let Ok(spec) = &hsd.spec else {
        return Vec::new();
    };
    let key = &spec.busy_probe.annotation_key;
    pods.map(|pod| ObservedPod {
        probe: probe(pod),
        ..pod_facts(pod, key)
    })
    .collect()
}

/// Whether the pod belongs to the HSD (same namespace, selector matches).
pub fn hsd_selects(hsd: &ObservedHsd, pod: &LeanPod) -> bool {
    let Ok(spec) = &hsd.spec else { return false };
    pod.metadata.namespace.as_deref() == Some(hsd.namespace.as_str())
        && pod
            .metadata
            .labels
            .as_ref()
            .is_some_and(|labels| plan::selector_matches(&spec.selector.match_labels, labels))
}

/// A pod an HSD in http or exec mode wants probed: every Running pod (with an IP, for HTTP),
/// ready or not (a busy pod may be NotReady), as the reference operator probed.
pub fn probe_target(pod: &LeanPod, spec: &HotStandbyDeploymentSpec) -> Option<Target> {
    pod_probe_target(pod, &spec.busy_probe)
}

/// The probe a running pod gets under `probe` (none in annotation mode, or when the pod does
/// not run).
pub fn pod_probe_target(pod: &LeanPod, probe: &BusyProbe) -> Option<Target> {
    if !probe.mode.is_probed() || pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    match probe.mode {
        ProbeMode::Annotation => None,
        ProbeMode::Http => {
            let ip: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
            let http = &probe.http;
            Some(Target::Http(ProbeTarget {
                ip,
                port: u16::try_from(http.port).ok().filter(|p| *p > 0)?,
                path: http.path.clone(),
                timeout: probe.timeout(),
            }))
        }
        ProbeMode::Exec => {
            let exec = &probe.exec;
            if exec.command.is_empty() {
                return None;
            }
            Some(Target::Exec(exec::ExecTarget {
                namespace: pod.namespace().unwrap_or_default(),
                pod: pod.name_any(),
                container: exec.container.clone().or_else(|| {
                    pod.annotations()
                        .get(DEFAULT_CONTAINER_ANNOTATION)
                        .filter(|c| !c.is_empty())
                        .cloned()
                }),
                command: exec.command.clone(),
                timeout: probe.timeout(),
            }))
        }
    }
}

/// kubectl's annotation naming the container `kubectl exec` picks when none is given.
pub const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";

/// The per-probe timeout of an HSD.
pub fn probe_timeout(spec: &HotStandbyDeploymentSpec) -> Duration {
    spec.busy_probe.timeout()
}

/// How long a probe answer stays fresh: an answer older than this says nothing, and its pod is
/// unknown until probed again.
pub fn answer_lifetime(spec: &HotStandbyDeploymentSpec) -> Duration {
    spec.busy_probe.answer_lifetime()
}

/// One HSD as the index shows it: its child Deployment, and its pods (those labelled as its own
/// that its selector matches), each with its fresh probe answer if it has one. Also returns the
/// lean pods, in the order of `hsd.pods`.
pub fn observe_hsd(
    object: &DynamicObject,
    index: &Index,
    probe: impl Fn(&LeanPod) -> Option<crate::plan::ProbeOutcome>,
) -> (ObservedHsd, Vec<std::sync::Arc<LeanPod>>) {
    let mut hsd = hsd_facts(object);
    let workload = crate::api::hsd::workload_name(&hsd.name);
    hsd.deployment = index
        .deployment(&hsd.namespace, &workload)
        .map(|deployment| deployment_facts(&deployment, &hsd.uid));
    let pods: Vec<std::sync::Arc<LeanPod>> = index
        .pods_of(&hsd.namespace, &hsd.name)
        .into_iter()
        .filter(|pod| hsd_selects(&hsd, pod))
        .collect();
    hsd.pods = pods_facts(&hsd, pods.iter().map(|pod| pod.as_ref()), probe);
    (hsd, pods)
}

/// A child missing from the index may exist all the same: not made by this HSD (no label), or
/// not in a cache yet. It is read before anything creates it (this happens once per child).
pub async fn confirm_missing_child(client: &Client, hsd: &mut ObservedHsd) -> Result<()> {
    if hsd.deployment.is_some() {
        return Ok(());
    }
    let workload = crate::api::hsd::workload_name(&hsd.name);
    let api: Api<LeanDeployment> =
        Api::namespaced_with(client.clone(), &hsd.namespace, &deployment_resource());
    let found = api.get_opt(&workload).await.map_err(kube_error(
        format!("reading Deployment {}/{workload}", hsd.namespace),
        "get",
        "deployments.apps",
        Some(&hsd.namespace),
    ))?;
    hsd.deployment = found.map(|deployment| deployment_facts(&deployment, &hsd.uid));
    Ok(())
}

/// The probes one HSD needs: (index of the pod in `pods`, target).
pub fn probe_targets(
    spec: &HotStandbyDeploymentSpec,
    pods: &[std::sync::Arc<LeanPod>],
) -> Vec<(usize, Target)> {
    pods.iter()
        .enumerate()
        .filter_map(|(p, pod)| Some((p, probe_target(pod, spec)?)))
        .collect()
}

/// Probes one HSD's pods with its own budget and records each answer on its pod. Pods not
/// probed by `deadline` stay without an answer (unknown) and are counted in
/// `probes_cut_short`, so that one HSD's hung endpoints never delay another's decision.
pub async fn probe_hsd(
    prober: &Prober,
    hsd: &mut ObservedHsd,
    targets: Vec<(usize, Target)>,
    deadline: tokio::time::Instant,
) -> Vec<ProbeResult> {
    let wanted = targets.len();
    let (answers, cut_short) = prober.probe_until(targets, deadline).await;
    let mut results = Vec::with_capacity(answers.len());
    for (p, result) in answers {
        if let Some(pod) = hsd.pods.get_mut(p) {
            pod.probe = Some(result.outcome.clone());
        }
        results.push(result);
    }
    debug_assert_eq!(results.len() + cut_short, wanted);
    hsd.probes_cut_short = cut_short;
    results
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hsd(namespace: &str, labels: serde_json::Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "apps.paia.tech/v1alpha1", "kind": "HotStandbyDeployment",
            "metadata": {"name": "h", "namespace": namespace, "uid": "u"},
            "spec": {
                "idleTarget": 1,
                "selector": {"matchLabels": labels},
                "podTemplate": {"metadata": {"labels": labels}},
            },
        }))
        .unwrap()
    }

    fn pod(namespace: &str, labels: serde_json::Value) -> LeanPod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": namespace, "labels": labels},
            "spec": {},
            "status": {"podIP": "127.10.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap()
    }

    #[test]
    fn a_pod_belongs_to_an_hsd_of_its_namespace_whose_selector_it_matches() {
        let cases = [
            (
                hsd("a", json!({"app": "x"})),
                pod("a", json!({"app": "x", "other": "y"})),
                true,
            ),
            (
                hsd("a", json!({"app": "x"})),
                pod("a", json!({"app": "z"})),
                false,
            ),
            (
                hsd("a", json!({"app": "x"})),
                pod("b", json!({"app": "x"})),
                false,
            ),
            (
                hsd("a", json!({"app": "x", "tier": "t"})),
                pod("a", json!({"app": "x"})),
                false,
            ),
            (hsd("a", json!({})), pod("a", json!({"app": "x"})), false),
        ];
        for (object, pod, expected) in cases {
            assert_eq!(
                hsd_selects(&hsd_facts(&object), &pod),
                expected,
                "{:?}",
                object.data
            );
        }
    }

    #[test]
    fn an_hsd_sees_only_its_labelled_pods_that_its_selector_matches() {
        let labelled = |name: &str, labels: serde_json::Value| {
            let mut p = pod("a", labels);
            p.metadata.name = Some(name.into());
            p
        };
        let index = Index::from_lists(
            Vec::new(),
            vec![
                labelled("mine", json!({"app": "x", crate::labels::HSD_LABEL: "h"})),
                labelled("stray", json!({"app": "x"})),
                labelled(
                    "relabelled",
                    json!({"app": "y", crate::labels::HSD_LABEL: "h"}),
                ),
                labelled("other", json!({"app": "x", crate::labels::HSD_LABEL: "g"})),
            ],
        );
        let (observed, lean) = observe_hsd(&hsd("a", json!({"app": "x"})), &index, |_| None);
        let names: Vec<&str> = observed.pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["mine"]);
        assert_eq!(lean.len(), 1);
        assert!(observed.deployment.is_none());
    }

    #[test]
    fn a_list_page_yields_its_continue_token_from_its_head() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                r#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"7","continue":"abc","remainingItemCount":3},"items":[{"metadata":{"name":"p"}}]}"#,
                Some("abc"),
            ),
            (
                r#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"7"},"items":[]}"#,
                None,
            ),
            (
                r#"{"metadata":{"resourceVersion":"7","continue":""},"items":[]}"#,
                None,
            ),
            // An item's metadata must never pass for the list's.
            (
                r#"{"items":[{"metadata":{"continue":"not-this"}}],"metadata":{"continue":"abc"}}"#,
                None,
            ),
            (r#"{"metadata":{"continue":"#, None),
            ("", None),
        ];
        for (page, expected) in cases {
            assert_eq!(continue_token_of(page).as_deref(), *expected, "page {page}");
        }
    }

    #[test]
    fn pod_facts_read_what_the_plan_needs() {
        let mut lean = pod("a", json!({"app": "x"}));
        lean.spec.node_name = Some("node-1".into());
        lean.metadata.annotations = Some(
            [
                ("paia.tech/busy".to_string(), "true".to_string()),
                (
                    plan::DELETION_COST_ANNOTATION.to_string(),
                    "1000000".to_string(),
                ),
            ]
            .into(),
        );
        let facts = pod_facts(&lean, "paia.tech/busy");
        assert!(facts.ready && facts.scheduled && !facts.terminating);
        assert_eq!(facts.busy_annotation.as_deref(), Some("true"));
        assert_eq!(facts.deletion_cost, Some(1_000_000));
        assert_eq!(
            lean.status.as_ref().unwrap().pod_ip.as_deref(),
            Some("127.10.0.1"),
            "podIP, not podIp"
        );
    }

    fn managed_entry(
        manager: &str,
        operation: &str,
        fields: serde_json::Value,
    ) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry {
        k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some(operation.into()),
            fields_type: Some("FieldsV1".into()),
            fields_v1: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1(
                fields,
            )),
            ..Default::default()
        }
    }

    /// Who set `spec.replicas`, read from the managed fields as the API server keeps them, the
    /// same from a cached Deployment's lean metadata, and from a Deployment as a pass lists it.
    #[test]
    fn another_writer_is_told_by_the_owner_of_spec_replicas() {
        let replicas = json!({"f:spec": {"f:replicas": {}}});
        let template = json!({"f:metadata": {"f:annotations": {}}, "f:spec": {"f:template": {}}});
        let status = json!({"f:status": {"f:replicas": {}}});
        type Case = (
            &'static str,
            Option<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry>>,
            Option<&'static str>,
        );
        let cases: Vec<Case> = vec![
            ("no managed fields", None, None),
            (
                "ours, applied",
                Some(vec![managed_entry(
                    "kubectl-hsd",
                    "Apply",
                    json!({"f:spec": {"f:replicas": {}, "f:template": {}}}),
                )]),
                None,
            ),
            (
                "ours, merge-patched after our apply",
                Some(vec![
                    managed_entry("kubectl-hsd", "Apply", template.clone()),
                    managed_entry("kubectl-hsd", "Update", replicas.clone()),
                    managed_entry("kube-controller-manager", "Update", status.clone()),
                ]),
                None,
            ),
            (
                "kubectl scale took it",
                Some(vec![
                    managed_entry("kubectl-hsd", "Apply", template.clone()),
                    managed_entry("kubectl", "Update", replicas.clone()),
                ]),
                Some("kubectl"),
            ),
            (
                "shared with another applier of the same value",
                Some(vec![
                    managed_entry("kubectl-hsd", "Apply", replicas.clone()),
                    managed_entry("someone-else", "Apply", replicas.clone()),
                ]),
                None,
            ),
            (
                "status replicas are not spec replicas",
                Some(vec![managed_entry(
                    "kube-controller-manager",
                    "Update",
                    status,
                )]),
                None,
            ),
        ];
        for (name, managed_fields, expected) in cases {
            let listed = format!(
                r#"{{"metadata": {{}}, "items": [{{"metadata": {{"name": "d", "managedFields": {}}}, "spec": {{"replicas": 3}}}}]}}"#,
                serde_json::to_string(&managed_fields).unwrap()
            );
            let page: LeanList<LeanDeploymentSpec, NotUsed> =
                serde_json::from_str(&listed).unwrap();
            let read = lean_object(page.items.into_iter().next().unwrap());
            assert_eq!(
                replicas_writer(&read.metadata).as_deref(),
                expected,
                "{name}, listed by a pass"
            );
            assert!(
                read.metadata
                    .managed_fields
                    .iter()
                    .flatten()
                    .all(owns_replicas),
                "{name}: a pass keeps only owners of spec.replicas"
            );
            let mut meta = kube::api::ObjectMeta {
                managed_fields,
                ..Default::default()
            };
            assert_eq!(replicas_writer(&meta).as_deref(), expected, "{name}");
            crate::watch::lean_deployment_meta(&mut meta);
            assert_eq!(
                replicas_writer(&meta).as_deref(),
                expected,
                "{name}, cached"
            );
            assert!(
                meta.managed_fields.iter().flatten().all(owns_replicas),
                "{name}: the cache keeps only owners of spec.replicas"
            );
        }
    }
}
