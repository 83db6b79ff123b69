//! Observe for active-standby Services: the Services of a scope, and the pods of the namespaces
//! that have an active-standby Service (its selector is the user's, so its pods cannot be found
//! by a label this tool injects), plus the pods that carry the master label anywhere in the
//! scope (a label left behind by a Service that is gone). Turned into the plan's
//! [`ObservedNamespace`], one per namespace.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Service;
use kube::api::{ApiResource, DynamicObject};
use kube::core::object::{NotUsed, Object};
use kube::{Client, ResourceExt};
use serde::{Deserialize, Serialize};

use super::{LeanPod, LeanPodSpec, LeanPodStatus, Scope, list_lean, pod_resource};
use crate::api::active_standby::{
    ACTIVE_STANDBY, DESIGNATION_LABEL, POD_MARK_ANNOTATION, RECORD_ANNOTATION, Record,
    SERVICE_MODE_ANNOTATION,
};
use crate::api::hsd::ProbeMode;
use crate::error::{Result, kube_error};
use crate::plan::active_standby::{Busyness, ObservedNamespace, PodFacts, ServiceFacts};
use crate::plan::{BusyAnnotation, parse_busy_annotation};

/// The parts of a Service's spec the plan reads.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeanServiceSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<BTreeMap<String, String>>,
    #[serde(default, rename = "clusterIP", skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<String>,
}

/// A Service as read: metadata, selector and cluster IP.
pub type LeanService = Object<LeanServiceSpec, NotUsed>;

pub fn service_resource() -> ApiResource {
    ApiResource::erase::<Service>(&())
}

/// Whether the Service is annotated active-standby.
pub fn is_enabled(service: &LeanService) -> bool {
    service
        .annotations()
        .get(SERVICE_MODE_ANNOTATION)
        .is_some_and(|v| v.trim() == ACTIVE_STANDBY)
}

/// Whether the Service concerns this tool: active-standby, or with a record to clean up.
pub fn is_of_interest(service: &LeanService) -> bool {
    is_enabled(service) || service.annotations().contains_key(RECORD_ANNOTATION)
}

pub fn service_facts(service: &LeanService) -> ServiceFacts {
    ServiceFacts {
        name: service.name_any(),
        uid: service.uid().unwrap_or_default(),
        resource_version: service.resource_version().unwrap_or_default(),
        enabled: is_enabled(service),
        selector: service.spec.selector.clone(),
        record: service
            .annotations()
            .get(RECORD_ANNOTATION)
            .map(|v| Record::parse(v)),
    }
}

/// How one HSD's pods are told busy: (label value, selector, the busy annotation's key, or
/// `None` when a probe decides).
pub type BusyRule = (String, BTreeMap<String, String>, Option<String>);

/// The HSDs of one namespace as far as busy goes.
pub struct BusyRules {
    rules: Vec<BusyRule>,
}

/// One HSD's rule; `None` when its spec cannot be read (its pods then count as not busy, which
/// only changes the order of candidates).
pub fn busy_rule(object: &DynamicObject) -> Option<BusyRule> {
    let facts = super::hsd_facts(object);
    let spec = facts.spec.ok()?;
    let key = match spec.busy_probe.mode {
        ProbeMode::Annotation => Some(spec.busy_probe.annotation_key.clone()),
        ProbeMode::Http | ProbeMode::Exec => None,
    };
    Some((
        crate::labels::hsd_label_value(&facts.name),
        spec.selector.match_labels.clone(),
        key,
    ))
}

impl BusyRules {
    /// From the HSD objects of the namespace.
    pub fn new<'a>(hsds: impl IntoIterator<Item = &'a DynamicObject>) -> Self {
        Self::from_rules(hsds.into_iter().filter_map(busy_rule))
    }

    pub fn from_rules(rules: impl IntoIterator<Item = BusyRule>) -> Self {
        Self {
            rules: rules.into_iter().collect(),
        }
    }

    /// How busy a pod is for the HSD it belongs to.
    pub fn of(&self, pod: &LeanPod) -> Busyness {
        let labels = pod.labels();
        let Some(value) = labels.get(crate::labels::HSD_LABEL) else {
            return Busyness::Idle;
        };
        let Some((_, _, key)) = self
            .rules
            .iter()
            .find(|(v, selector, _)| v == value && crate::plan::selector_matches(selector, labels))
        else {
            return Busyness::Idle;
        };
        match key {
            Some(key) => {
                match parse_busy_annotation(pod.annotations().get(key).map(|s| s.as_str())) {
                    BusyAnnotation::Busy | BusyAnnotation::Invalid => Busyness::Busy,
                    BusyAnnotation::Idle | BusyAnnotation::Absent => Busyness::Idle,
                }
            }
            None => Busyness::Unknown,
        }
    }
}

pub fn pod_facts(pod: &LeanPod, busy: &BusyRules) -> PodFacts {
    let status = pod.status.as_ref();
    let ready = status.and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "Ready" && c.status == "True")
    });
    PodFacts {
        name: pod.name_any(),
        uid: pod.uid().unwrap_or_default(),
        resource_version: pod.resource_version().unwrap_or_default(),
        labels: pod.labels().clone(),
        ready: ready.is_some(),
        ready_since: ready
            .and_then(|c| c.last_transition_time.as_deref())
            .and_then(|t| t.parse().ok()),
        has_ip: status
            .and_then(|s| s.pod_ip.as_deref())
            .is_some_and(|ip| !ip.is_empty()),
        deleting: pod.metadata.deletion_timestamp.is_some(),
        draining: pod
            .annotations()
            .contains_key(crate::labels::DRAINING_ANNOTATION),
        busy: busy.of(pod),
        mark: pod.annotations().get(POD_MARK_ANNOTATION).cloned(),
    }
}

/// One namespace as the plan reads it: its Services of interest, and its pods (all of them
/// when it has Services of interest, else only the labelled ones, which is all the plan needs
/// to clean up labels left behind).
pub fn observe_namespace<'a>(
    namespace: &str,
    services: impl IntoIterator<Item = &'a LeanService>,
    pods: impl IntoIterator<Item = &'a LeanPod>,
    busy: &BusyRules,
) -> ObservedNamespace {
    let mut services: Vec<ServiceFacts> = services
        .into_iter()
        .filter(|s| is_of_interest(s))
        .map(service_facts)
        .collect();
    services.sort_by(|a, b| a.name.cmp(&b.name));
    let mut pods: Vec<PodFacts> = pods.into_iter().map(|p| pod_facts(p, busy)).collect();
    pods.sort_by(|a, b| a.name.cmp(&b.name));
    ObservedNamespace {
        namespace: namespace.to_string(),
        services,
        pods,
    }
}

/// Whether an active-standby Service selects every pod of the HSD (its selector is part of the
/// HSD's pod template labels): then one of the HSD's pods is that Service's master at all times.
pub fn master_slot<'a>(
    hsd: &crate::plan::ObservedHsd,
    services: impl IntoIterator<Item = &'a LeanService>,
) -> bool {
    let Ok(spec) = &hsd.spec else {
        return false;
    };
    let template = crate::plan::template_labels(&crate::plan::child_template(
        &hsd.namespace,
        &hsd.name,
        spec,
    ));
    services.into_iter().any(|service| {
        if !is_enabled(service) || service.namespace().as_deref() != Some(hsd.namespace.as_str()) {
            return false;
        }
        let Some(selector) = &service.spec.selector else {
            return false;
        };
        let mut selector = selector.clone();
        if selector
            .remove(DESIGNATION_LABEL)
            .is_some_and(|v| v != crate::api::active_standby::ACTIVE)
        {
            return false;
        }
        crate::plan::selector_matches(&selector, &template)
    })
}

/// The Services of a scope (one paginated list).
pub async fn list_services(client: &Client, scope: &Scope) -> Result<Vec<LeanService>> {
    list_lean::<LeanServiceSpec, NotUsed>(client, scope, &service_resource(), "")
        .await
        .map_err(kube_error(
            "listing Services",
            "list",
            "services",
            scope.namespace(),
        ))
}

/// Everything a one-shot pass reads for active-standby in a scope, besides the Services
/// (listed once, see [`list_services`]): the pods of each namespace with a Service of interest
/// (one list per such namespace), and the labelled pods of the whole scope (one list). Returns
/// one namespace per namespace that has a Service of interest or a labelled pod.
pub async fn read_scope(
    client: &Client,
    scope: &Scope,
    services: Vec<LeanService>,
    hsds: &[DynamicObject],
) -> Result<Vec<ObservedNamespace>> {
    let scope_ns = scope.namespace();
    let labelled: Vec<LeanPod> =
        list_lean::<LeanPodSpec, LeanPodStatus>(client, scope, &pod_resource(), DESIGNATION_LABEL)
            .await
            .map_err(kube_error(
                "listing the pods labelled as masters",
                "list",
                "pods",
                scope_ns,
            ))?;
    let mut services_by_ns: BTreeMap<String, Vec<LeanService>> = BTreeMap::new();
    for service in services.into_iter().filter(is_of_interest) {
        services_by_ns
            .entry(service.namespace().unwrap_or_default())
            .or_default()
            .push(service);
    }
    let mut labelled_by_ns: BTreeMap<String, Vec<LeanPod>> = BTreeMap::new();
    for pod in labelled {
        labelled_by_ns
            .entry(pod.namespace().unwrap_or_default())
            .or_default()
            .push(pod);
    }
    let namespaces: BTreeSet<String> = services_by_ns
        .keys()
        .chain(labelled_by_ns.keys())
        .cloned()
        .collect();
    let mut observed = Vec::new();
    for namespace in namespaces {
        let busy = BusyRules::new(
            hsds.iter()
                .filter(|h| h.namespace().as_deref() == Some(namespace.as_str())),
        );
        let services = services_by_ns.remove(&namespace).unwrap_or_default();
        let pods: Vec<LeanPod> = if services.is_empty() {
            labelled_by_ns.remove(&namespace).unwrap_or_default()
        } else {
            list_lean::<LeanPodSpec, LeanPodStatus>(
                client,
                &Scope::Namespace(namespace.clone()),
                &pod_resource(),
                "",
            )
            .await
            .map_err(kube_error(
                format!("listing the pods of namespace {namespace}"),
                "list",
                "pods",
                Some(&namespace),
            ))?
        };
        observed.push(observe_namespace(&namespace, &services, &pods, &busy));
    }
    Ok(observed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(value: serde_json::Value) -> LeanPod {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn pod_facts_read_readiness_ip_deletion_and_busy() {
        let hsd: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "apps.paia.tech/v1alpha1", "kind": "HotStandbyDeployment",
            "metadata": {"name": "db", "namespace": "a", "uid": "u"},
            "spec": {"idleTarget": 1, "selector": {"matchLabels": {"app": "db"}},
                     "podTemplate": {"metadata": {"labels": {"app": "db"}}}},
        }))
        .unwrap();
        let rules = BusyRules::new([&hsd]);
        let busy = pod(json!({
            "metadata": {"name": "p", "namespace": "a", "uid": "u1", "resourceVersion": "7",
                         "labels": {"app": "db", crate::labels::HSD_LABEL: "db", DESIGNATION_LABEL: "active"},
                         "annotations": {"paia.tech/busy": "true", POD_MARK_ANNOTATION: "master of s (epoch 1)"}},
            "spec": {},
            "status": {"podIP": "198.18.0.4", "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-21T12:00:00Z"}]},
        }));
        let facts = pod_facts(&busy, &rules);
        assert!(facts.ready && facts.has_ip && !facts.deleting && facts.labelled());
        assert_eq!(facts.busy, Busyness::Busy);
        assert_eq!(facts.resource_version, "7");
        assert_eq!(
            facts.ready_since,
            Some("2026-11-21T12:00:00Z".parse().unwrap())
        );
        assert_eq!(facts.mark.as_deref(), Some("master of s (epoch 1)"));
        // No status at all, being deleted, of no HSD: not ready, no IP, idle.
        let bare = pod(json!({
            "metadata": {"name": "q", "namespace": "a", "deletionTimestamp": "2026-11-21T12:00:00Z"},
            "spec": {},
        }));
        let facts = pod_facts(&bare, &rules);
        assert!(!facts.ready && !facts.has_ip && facts.deleting && !facts.labelled());
        assert_eq!(facts.busy, Busyness::Idle);
    }

    #[test]
    fn services_of_interest_are_annotated_or_recorded() {
        let service = |annotations: serde_json::Value| -> LeanService {
            serde_json::from_value(json!({
                "metadata": {"name": "s", "namespace": "a", "annotations": annotations},
                "spec": {"selector": {"app": "db"}},
            }))
            .unwrap()
        };
        assert!(is_of_interest(&service(
            json!({SERVICE_MODE_ANNOTATION: "active-standby"})
        )));
        assert!(!is_enabled(&service(
            json!({SERVICE_MODE_ANNOTATION: "off"})
        )));
        assert!(is_of_interest(&service(json!({RECORD_ANNOTATION: "{}"}))));
        assert!(!is_of_interest(&service(json!({}))));
        let facts = service_facts(&service(json!({
            SERVICE_MODE_ANNOTATION: "active-standby",
            RECORD_ANNOTATION: "garbage",
        })));
        assert!(facts.enabled);
        assert!(matches!(facts.record, Some(Err(_))));
        // A Service without spec.selector: no selector, not a panic.
        let bare: LeanService = serde_json::from_value(json!({
            "metadata": {"name": "s", "namespace": "a"}, "spec": {},
        }))
        .unwrap();
        assert_eq!(service_facts(&bare).selector, None);
    }
}
