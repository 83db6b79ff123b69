//! Execute for active-standby Services: one namespace's plan, in this order.
//!
//! 1. **Records.** Each Service's record (master, epoch, former masters still to fence) and its
//!    selector key, in one merge patch carrying the Service's resourceVersion as read: a
//!    compare-and-swap. A writer whose view is stale (a deposed leader resuming, a second
//!    process) gets a 409 and stops there. The selector is a merge patch of our key alone:
//!    `spec.selector` is an atomic map for server-side apply, and applying only our key would
//!    wipe the user's.
//! 2. **Fences.** Every former master and every stray label: the label removed and the pod's
//!    mark rewritten, with the pod's uid as precondition (a 404, or a 409 for a pod replaced
//!    under its name, means there is nothing left to fence).
//! 3. **Confirmations.** The records of the Services that select a pod about to be labelled,
//!    unless step 1 wrote them: a compare-and-swap of nothing, which fails if the record moved.
//! 4. **Labels.** With the pod's uid and resourceVersion as read as preconditions.
//! 5. **Former masters cleared** from the records, now that they are fenced.
//!
//! Why no two labelled pods ever show among a Service's pods, whoever writes and however late:
//! a label is only written after a compare-and-swap (step 1 or 3) that found the record naming
//! that pod, and with the pod's resourceVersion read before it. Any later change of master
//! records the old one as unfenced, and whoever labels the next master first fences every
//! unfenced pod (step 2 precedes step 4), which changes its resourceVersion. So a late label
//! either lands before that fence (and is removed by it) or after it (and fails on the
//! resourceVersion), and the next master is labelled only after the fence. A former master
//! leaves the record only once a fence of it succeeded after it was recorded as former.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kube::api::{DynamicObject, Patch};
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::api::active_standby::{
    ACTIVE, DESIGNATION_LABEL, POD_MARK_ANNOTATION, RECORD_ANNOTATION, Record,
};
use crate::error::{Error, Result, kube_error};
use crate::observe::pod_resource;
use crate::observe::services::service_resource;
use crate::plan::active_standby::{NamespacePlan, SelectorChange, ServicePlan, Transition};

/// What carrying out one namespace's plan wrote.
#[derive(Clone, Debug, Default)]
pub struct NamespaceWritten {
    /// Requests that changed (or compared-and-swapped) an object.
    pub writes: usize,
    pub events: usize,
    pub events_failed: usize,
    /// The resourceVersion each written Service has now.
    pub service_versions: BTreeMap<String, String>,
    /// The resourceVersion each written pod has now (`None`: it is gone).
    pub pod_versions: BTreeMap<String, Option<String>>,
    /// When each master's label was acknowledged.
    pub labelled: BTreeMap<String, Instant>,
    /// The changes of master recorded (by Service).
    pub transitions: Vec<(String, Transition)>,
}

/// Carries out a namespace's plan. A failed step stops the rest (the next pass plans again from
/// what is then true); the events of the Services whose record was written are published all
/// the same, since the change they describe is recorded.
pub async fn execute(client: &Client, plan: &NamespacePlan) -> Result<NamespaceWritten> {
    let mut written = NamespaceWritten::default();
    let mut recorded: BTreeSet<String> = BTreeSet::new();
    let result = write(client, plan, &mut written, &mut recorded).await;
    for service in plan.services.iter().filter(|s| recorded.contains(&s.name)) {
        for event in &service.events {
            let regarding = super::events::Regarding {
                api_version: "v1".into(),
                kind: "Service".into(),
                name: service.name.clone(),
                namespace: plan.namespace.clone(),
                uid: service.uid.clone(),
            };
            match super::events::publish_about(client, &regarding, event).await {
                Ok(()) => written.events += 1,
                Err(error) => {
                    written.events_failed += 1;
                    tracing::warn!(namespace = %plan.namespace, service = %service.name, reason = event.reason, %error, "could not record an event");
                }
            }
        }
    }
    result.map(|()| written)
}

async fn write(
    client: &Client,
    plan: &NamespacePlan,
    written: &mut NamespaceWritten,
    recorded: &mut BTreeSet<String>,
) -> Result<()> {
    let ns = &plan.namespace;
    let services: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &service_resource());
    let pods: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &pod_resource());
    let mut versions: BTreeMap<&str, String> = plan
        .services
        .iter()
        .map(|s| (s.name.as_str(), s.resource_version.clone()))
        .collect();

    // 1. Records.
    for service in &plan.services {
        let Some(change) = &service.write else {
            continue;
        };
        let mut body = json!({"metadata": {
            "resourceVersion": versions[service.name.as_str()],
            "annotations": {RECORD_ANNOTATION: change.record.as_ref().map(Record::to_annotation)},
        }});
        match change.selector {
            SelectorChange::Add => body["spec"] = json!({"selector": {DESIGNATION_LABEL: ACTIVE}}),
            SelectorChange::Remove => {
                body["spec"] = json!({"selector": {DESIGNATION_LABEL: Value::Null}})
            }
            SelectorChange::Keep => {}
        }
        let version = compare_and_swap(&services, ns, service, &body).await?;
        written.writes += 1;
        recorded.insert(service.name.clone());
        if let Some(transition) = &service.transition {
            written
                .transitions
                .push((service.name.clone(), transition.clone()));
        }
        written
            .service_versions
            .insert(service.name.clone(), version.clone());
        versions.insert(service.name.as_str(), version);
    }
    if plan.services.iter().any(|s| s.transition.is_some())
        && let Some(delay) = test_failover_delay()
    {
        tokio::time::sleep(delay).await;
    }

    // 2. Fences.
    for fence in &plan.fences {
        let mut metadata = json!({
            "labels": {DESIGNATION_LABEL: Value::Null},
            "annotations": {POD_MARK_ANNOTATION: fence.mark},
        });
        if !fence.pod.uid.is_empty() {
            metadata["uid"] = json!(fence.pod.uid);
        }
        let version = super::patch_pod(&pods, &fence.pod.name, &json!({"metadata": metadata}))
            .await
            .map_err(kube_error(
                format!(
                    "fencing pod {ns}/{} (removing its {DESIGNATION_LABEL} label: {})",
                    fence.pod.name, fence.why
                ),
                "patch",
                "pods",
                Some(ns),
            ))?;
        written.writes += 1;
        written.pod_versions.insert(fence.pod.name.clone(), version);
    }

    // 3. Confirmations.
    for service in plan
        .services
        .iter()
        .filter(|s| s.confirm && !recorded.contains(&s.name))
    {
        let body = json!({"metadata": {"resourceVersion": versions[service.name.as_str()]}});
        compare_and_swap(&services, ns, service, &body).await?;
        written.writes += 1;
    }

    // 4. Labels.
    for label in &plan.labels {
        let body = json!({"metadata": {
            "uid": label.pod.uid,
            "resourceVersion": label.resource_version,
            "labels": {DESIGNATION_LABEL: ACTIVE},
            "annotations": {POD_MARK_ANNOTATION: label.mark},
        }});
        let labelled = pods
            .patch(&label.pod.name, &super::merge_params(), &Patch::Merge(&body))
            .await
            .map_err(|error| match &error {
                kube::Error::Api(status) if status.code == 404 || status.code == 409 => {
                    Error::Stale {
                        action: format!(
                            "labelling pod {ns}/{} as the master of {}: it changed since it was read; the next pass decides again",
                            label.pod.name,
                            label.services.join(", ")
                        ),
                        source: error,
                    }
                }
                _ => kube_error(
                    format!(
                        "labelling pod {ns}/{} as the master of {}",
                        label.pod.name,
                        label.services.join(", ")
                    ),
                    "patch",
                    "pods",
                    Some(ns),
                )(error),
            })?;
        written.writes += 1;
        written
            .labelled
            .insert(label.pod.name.clone(), Instant::now());
        written
            .pod_versions
            .insert(label.pod.name.clone(), labelled.metadata.resource_version);
    }

    // 5. Former masters cleared.
    for service in &plan.services {
        let Some(record) = &service.clear_unfenced else {
            continue;
        };
        let body = json!({"metadata": {
            "resourceVersion": versions[service.name.as_str()],
            "annotations": {RECORD_ANNOTATION: record.to_annotation()},
        }});
        let version = compare_and_swap(&services, ns, service, &body).await?;
        written.writes += 1;
        written
            .service_versions
            .insert(service.name.clone(), version.clone());
        versions.insert(service.name.as_str(), version);
    }
    Ok(())
}

/// A merge patch of a Service that carries its resourceVersion: it fails with a 409 if the
/// Service changed since. Returns the new resourceVersion.
async fn compare_and_swap(
    services: &Api<DynamicObject>,
    ns: &str,
    service: &ServicePlan,
    body: &Value,
) -> Result<String> {
    let patched = services
        .patch(&service.name, &super::merge_params(), &Patch::Merge(body))
        .await
        .map_err(|error| match &error {
            kube::Error::Api(status) if status.code == 409 => Error::Stale {
                action: format!(
                    "writing the active-standby record of Service {ns}/{} (compare-and-swap: it changed since it was read; the next pass decides again)",
                    service.name
                ),
                source: error,
            },
            _ => kube_error(
                format!("writing the active-standby record of Service {ns}/{}", service.name),
                "patch",
                "services",
                Some(ns),
            )(error),
        })?;
    Ok(patched.metadata.resource_version.unwrap_or_default())
}

/// Tests only: `HSD_TEST_FAILOVER_DELAY_MS` holds a namespace's writes that long after its
/// records changed master and before anything is fenced or labelled, so that a test can kill
/// the writer in the middle of a failover.
fn test_failover_delay() -> Option<Duration> {
    static DELAY: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    *DELAY.get_or_init(|| {
        std::env::var("HSD_TEST_FAILOVER_DELAY_MS")
            .ok()?
            .parse()
            .ok()
            .map(Duration::from_millis)
    })
}
