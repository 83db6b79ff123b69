//! The HotStandbyJob side of observe: Jobs and their pods, both found by the label injected into
//! every HSJ's Jobs and pod template, filed in a [`JobIndex`] by (namespace, HSJ label value) the
//! way the HSD's [`super::Index`] files pods. The one-shot pass fills it from lists, the watcher
//! from label-filtered watches; a reconcile reads one HSJ's objects in time proportional to that
//! HSJ alone.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::batch::v1::Job;
use kube::api::{ApiResource, DynamicObject};
use kube::core::object::Object;
use kube::{Client, ResourceExt};
use serde::{Deserialize, Serialize};

use super::{LeanCondition, LeanPod, LeanPodSpec, LeanPodStatus, Scope, list_lean, pod_resource};
use crate::api::hsj::{HotStandbyJob, HotStandbyJobSpec, HotStandbyJobStatus};
use crate::error::{Result, is_not_found, kube_error};
use crate::labels::{HSJ_LABEL, hsd_label_value};
use crate::plan::hsj::{Finished, ObservedHsj, ObservedJob};
use crate::plan::{ObservedPod, ProbeOutcome};

/// The parts of a Job's spec the plan reads.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct LeanJobSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completions: Option<i32>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct LeanJobStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<LeanCondition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succeeded: Option<i32>,
}

/// A Job as read from the API, without the fields the plan never reads.
pub type LeanJob = Object<LeanJobSpec, LeanJobStatus>;

pub fn job_resource() -> ApiResource {
    ApiResource::erase::<Job>(&())
}
pub fn hsj_resource() -> ApiResource {
    ApiResource::erase::<HotStandbyJob>(&())
}

/// Only what an HSJ made: its Jobs and their pods carry the HSJ label.
pub fn hsj_owned_selector() -> String {
    HSJ_LABEL.to_string()
}

/// (namespace, value of the HSJ label).
type OwnerKey = (String, String);

/// Objects filed by the HSJ label they carry, then by name.
#[derive(Debug)]
struct Filed<T> {
    by_owner: HashMap<OwnerKey, HashMap<String, Arc<T>>>,
    owner_of: HashMap<(String, String), OwnerKey>,
}

impl<T> Default for Filed<T> {
    fn default() -> Self {
        Self {
            by_owner: HashMap::new(),
            owner_of: HashMap::new(),
        }
    }
}

impl<T> Clone for Filed<T> {
    fn clone(&self) -> Self {
        Self {
            by_owner: self.by_owner.clone(),
            owner_of: self.owner_of.clone(),
        }
    }
}

impl<T: kube::Resource> Filed<T> {
    fn apply(&mut self, object: Arc<T>) {
        let key = (
            object.meta().namespace.clone().unwrap_or_default(),
            object.meta().name.clone().unwrap_or_default(),
        );
        let owner = object
            .meta()
            .labels
            .as_ref()
            .and_then(|labels| labels.get(HSJ_LABEL))
            .map(|value| (key.0.clone(), value.clone()));
        if let Some(previous) = self.owner_of.get(&key).cloned()
            && Some(&previous) != owner.as_ref()
        {
            self.remove_filed(&previous, &key.1);
            self.owner_of.remove(&key);
        }
        let Some(owner) = owner else { return };
        self.by_owner
            .entry(owner.clone())
            .or_default()
            .insert(key.1.clone(), object);
        self.owner_of.insert(key, owner);
    }

    fn delete(&mut self, object: &T) {
        let key = (
            object.meta().namespace.clone().unwrap_or_default(),
            object.meta().name.clone().unwrap_or_default(),
        );
        if let Some(owner) = self.owner_of.remove(&key) {
            self.remove_filed(&owner, &key.1);
        }
    }

    fn remove_filed(&mut self, owner: &OwnerKey, name: &str) {
        if let Some(objects) = self.by_owner.get_mut(owner) {
            objects.remove(name);
            if objects.is_empty() {
                self.by_owner.remove(owner);
            }
        }
    }

    fn of(&self, namespace: &str, hsj: &str) -> Vec<Arc<T>> {
        let mut objects: Vec<Arc<T>> = self
            .by_owner
            .get(&(namespace.to_string(), hsd_label_value(hsj)))
            .map(|objects| objects.values().cloned().collect())
            .unwrap_or_default();
        objects.sort_by(|a, b| a.meta().name.cmp(&b.meta().name));
        objects
    }

    fn len(&self) -> usize {
        self.owner_of.len()
    }
}

/// Jobs and pods by the HSJ label they carry.
#[derive(Debug, Default, Clone)]
pub struct JobIndex {
    jobs: Filed<LeanJob>,
    pods: Filed<LeanPod>,
}

impl JobIndex {
    pub fn from_lists(jobs: Vec<LeanJob>, pods: Vec<LeanPod>) -> Self {
        let mut index = Self::default();
        for job in jobs {
            index.apply_job(Arc::new(job));
        }
        for pod in pods {
            index.apply_pod(Arc::new(pod));
        }
        index
    }

    pub fn apply_job(&mut self, job: Arc<LeanJob>) {
        self.jobs.apply(job);
    }
    pub fn delete_job(&mut self, job: &LeanJob) {
        self.jobs.delete(job);
    }
    pub fn apply_pod(&mut self, pod: Arc<LeanPod>) {
        self.pods.apply(pod);
    }
    pub fn delete_pod(&mut self, pod: &LeanPod) {
        self.pods.delete(pod);
    }
    pub fn replace_jobs(&mut self, jobs: Vec<Arc<LeanJob>>) {
        self.jobs = Filed::default();
        for job in jobs {
            self.jobs.apply(job);
        }
    }
    pub fn replace_pods(&mut self, pods: Vec<Arc<LeanPod>>) {
        self.pods = Filed::default();
        for pod in pods {
            self.pods.apply(pod);
        }
    }

    /// The Jobs labelled as the HSJ `name`'s in `namespace`, in name order.
    pub fn jobs_of(&self, namespace: &str, name: &str) -> Vec<Arc<LeanJob>> {
        self.jobs.of(namespace, name)
    }
    /// The pods labelled as the HSJ `name`'s in `namespace`, in name order.
    pub fn pods_of(&self, namespace: &str, name: &str) -> Vec<Arc<LeanPod>> {
        self.pods.of(namespace, name)
    }
    pub fn job_count(&self) -> usize {
        self.jobs.len()
    }
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }
}

/// The (namespace, HSJ label value) an object is labelled for.
pub fn owner_label<T: kube::Resource>(object: &T) -> Option<(String, String)> {
    let value = object.meta().labels.as_ref()?.get(HSJ_LABEL)?;
    Some((
        object.meta().namespace.clone().unwrap_or_default(),
        value.clone(),
    ))
}

/// What a pass reads for the HSJs of a scope.
#[derive(Debug, Default)]
pub struct HsjSnapshot {
    pub hsjs: Vec<DynamicObject>,
    pub index: JobIndex,
}

/// Lists the HSJs, their Jobs and their pods in the scope (three paginated lists). A missing
/// HotStandbyJob CRD (an install from before it existed) reads as no HSJs.
pub async fn read_hsj_snapshot(client: &Client, scope: &Scope) -> Result<HsjSnapshot> {
    let namespace = scope.namespace();
    let hsjs = match super::list_all::<DynamicObject>(scope.api(client, &hsj_resource())).await {
        Ok(hsjs) => hsjs,
        Err(error) if is_not_found(&error) => {
            tracing::debug!("the HotStandbyJob CRD is not installed: no HSJs");
            return Ok(HsjSnapshot::default());
        }
        Err(error) => {
            return Err(kube_error(
                "listing HotStandbyJobs",
                "list",
                "hotstandbyjobs.apps.paia.tech",
                namespace,
            )(error));
        }
    };
    if hsjs.is_empty() {
        return Ok(HsjSnapshot::default());
    }
    let (jobs, pods) = tokio::try_join!(
        async {
            list_lean::<LeanJobSpec, LeanJobStatus>(
                client,
                scope,
                &job_resource(),
                &hsj_owned_selector(),
            )
            .await
            .map_err(kube_error("listing Jobs", "list", "jobs.batch", namespace))
        },
        async {
            list_lean::<LeanPodSpec, LeanPodStatus>(
                client,
                scope,
                &pod_resource(),
                &hsj_owned_selector(),
            )
            .await
            .map_err(kube_error("listing pods", "list", "pods", namespace))
        },
    )?;
    Ok(HsjSnapshot {
        hsjs,
        index: JobIndex::from_lists(jobs, pods),
    })
}

/// The raw HSJ object as the plan sees it (without its Jobs).
pub fn hsj_facts(object: &DynamicObject) -> ObservedHsj {
    ObservedHsj {
        name: object.name_any(),
        namespace: object.namespace().unwrap_or_default(),
        uid: object.uid().unwrap_or_default(),
        generation: object.metadata.generation,
        paused: object
            .annotations()
            .get(crate::api::hsd::PAUSED_ANNOTATION)
            .is_some_and(|v| v.eq_ignore_ascii_case("true")),
        spec: super::parse_spec::<HotStandbyJobSpec>(object),
        status: object
            .data
            .get("status")
            .and_then(|status| serde_json::from_value::<HotStandbyJobStatus>(status.clone()).ok()),
        jobs: Vec::new(),
        probes_cut_short: 0,
        confirmed_idle: None,
    }
}

fn controller_uid(meta: &kube::api::ObjectMeta) -> Option<&str> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|owner| owner.controller == Some(true))
        .map(|owner| owner.uid.as_str())
}

/// The plan's view of one Job (without its pods).
pub fn job_facts(job: &LeanJob) -> ObservedJob {
    let status = job.status.as_ref();
    let condition = |kind: &str| {
        status.is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == kind && c.status == "True")
        })
    };
    let finished = if condition("Complete") || condition("SuccessCriteriaMet") {
        Some(Finished::Complete)
    } else if condition("Failed") || condition("FailureTarget") {
        Some(Finished::Failed)
    } else {
        None
    };
    ObservedJob {
        name: job.name_any(),
        uid: job.uid().unwrap_or_default(),
        resource_version: job.metadata.resource_version.clone(),
        created: job.metadata.creation_timestamp.as_ref().map(|time| time.0),
        template_hash: job
            .annotations()
            .get(super::TEMPLATE_HASH_ANNOTATION)
            .cloned(),
        finished,
        deleting: job.metadata.deletion_timestamp.is_some(),
        succeeded: status.and_then(|s| s.succeeded).unwrap_or(0),
        completions: job.spec.completions.unwrap_or(1),
        pods: Vec::new(),
        in_flight: false,
    }
}

/// One HSJ as the index shows it: its Jobs (labelled as its own and controlled by it), each
/// with its pods (controlled by the Job, and matched by the selector), each pod with its fresh
/// probe answer if it has one. Also returns the lean pods by (Job index, pod index).
pub fn observe_hsj(
    object: &DynamicObject,
    index: &JobIndex,
    probe: impl Fn(&LeanPod) -> Option<ProbeOutcome>,
) -> (ObservedHsj, Vec<Vec<Arc<LeanPod>>>) {
    let mut hsj = hsj_facts(object);
    let jobs: Vec<Arc<LeanJob>> = index
        .jobs_of(&hsj.namespace, &hsj.name)
        .into_iter()
        .filter(|job| controller_uid(&job.metadata) == Some(hsj.uid.as_str()))
        .collect();
    let (annotation_key, selector) = match &hsj.spec {
        Ok(spec) => (
            spec.busy_probe.annotation_key.clone(),
            Some(spec.selector.match_labels.clone()),
        ),
        Err(_) => (String::new(), None),
    };
    let mut pods_by_job: HashMap<String, Vec<Arc<LeanPod>>> = HashMap::new();
    for pod in index.pods_of(&hsj.namespace, &hsj.name) {
        let selected = selector.as_ref().is_some_and(|selector| {
            pod.metadata
                .labels
                .as_ref()
                .is_some_and(|labels| crate::plan::selector_matches(selector, labels))
        });
        if let (true, Some(job_uid)) = (selected, controller_uid(&pod.metadata)) {
            pods_by_job
                .entry(job_uid.to_string())
                .or_default()
                .push(pod);
        }
    }
    let mut lean = Vec::with_capacity(jobs.len());
    hsj.jobs = jobs
        .iter()
        .map(|job| {
            let mut facts = job_facts(job);
            let pods = pods_by_job.remove(&facts.uid).unwrap_or_default();
            facts.pods = pods
                .iter()
                .map(|pod| ObservedPod {
                    probe: probe(pod),
                    ..super::pod_facts(pod, &annotation_key)
                })
                .collect();
            lean.push(pods);
            facts
        })
        .collect();
    (hsj, lean)
}

/// The probes one HSJ needs: ((Job index, pod index), target), for each running pod of a Job
/// that is not finished.
pub fn probe_targets(
    hsj: &ObservedHsj,
    pods: &[Vec<Arc<LeanPod>>],
) -> Vec<((usize, usize), super::probe::Target)> {
    let Ok(spec) = &hsj.spec else {
        return Vec::new();
    };
    let mut targets = Vec::new();
    for (j, job) in hsj.jobs.iter().enumerate() {
        if job.finished.is_some() || job.deleting {
            continue;
        }
        for (p, pod) in pods.get(j).into_iter().flatten().enumerate() {
            if let Some(target) = super::pod_probe_target(pod, &spec.busy_probe) {
                targets.push(((j, p), target));
            }
        }
    }
    targets
}

/// Probes one HSJ's pods with its own budget until `deadline`, recording each answer on its
/// pod; pods not probed by then stay unknown and are counted in `probes_cut_short`.
pub async fn probe_hsj(
    prober: &super::probe::Prober,
    hsj: &mut ObservedHsj,
    targets: Vec<((usize, usize), super::probe::Target)>,
    deadline: tokio::time::Instant,
) -> Vec<super::probe::ProbeResult> {
    let (answers, cut_short) = prober.probe_until(targets, deadline).await;
    let mut results = Vec::with_capacity(answers.len());
    for ((j, p), result) in answers {
        if let Some(pod) = hsj.jobs.get_mut(j).and_then(|job| job.pods.get_mut(p)) {
            pod.probe = Some(result.outcome.clone());
        }
        results.push(result);
    }
    hsj.probes_cut_short = cut_short;
    results
}

/// Right before a deletion: a fresh answer for each victim's worker. Annotation mode reads the
/// pod again from the API server (not a cache); http and exec probe it now. A Job whose pod does
/// not run (and did not start meanwhile) has no work: it is idle for this purpose. Returns the
/// uids of the victims that answered idle now, and updates the observed pods with what was read.
pub async fn confirm_idle(
    client: &Client,
    prober: &super::probe::Prober,
    hsj: &mut ObservedHsj,
    victims: &std::collections::BTreeSet<String>,
) -> Result<std::collections::BTreeSet<String>> {
    use futures::StreamExt;
    let Ok(spec) = hsj.spec.clone() else {
        return Ok(Default::default());
    };
    let probe = spec.busy_probe.clone();
    let pods: kube::Api<LeanPod> =
        kube::Api::namespaced_with(client.clone(), &hsj.namespace, &pod_resource());
    let work: Vec<(usize, Option<usize>)> = hsj
        .jobs
        .iter()
        .enumerate()
        .filter(|(_, job)| victims.contains(&job.uid))
        .map(|(j, job)| (j, crate::plan::hsj::worker(job, &probe)))
        .collect();
    let names: Vec<(usize, Option<String>)> = work
        .iter()
        .map(|(j, p)| (*j, p.map(|p| hsj.jobs[*j].pods[p].name.clone())))
        .collect();
    let namespace = hsj.namespace.clone();
    let items: Vec<(usize, Option<String>, Option<usize>)> = names
        .into_iter()
        .zip(work.iter().map(|(_, p)| *p))
        .map(|((j, name), p)| (j, name, p))
        .collect();
    type Answer = (
        usize,
        Option<usize>,
        Result<Option<(LeanPod, Option<ProbeOutcome>)>>,
    );
    let answers: Vec<Answer> = futures::stream::iter(items)
        .map(|(j, name, p): (usize, Option<String>, Option<usize>)| {
            let pods = pods.clone();
            let probe = probe.clone();
            let namespace = namespace.clone();
            async move {
                let Some(name) = name else {
                    return (j, p, Ok(None));
                };
                let read = pods.get_opt(&name).await.map_err(kube_error(
                    format!("reading pod {namespace}/{name} before deleting its Job"),
                    "get",
                    "pods",
                    Some(&namespace),
                ));
                let result = match read {
                    Ok(Some(pod)) => {
                        let answer = match super::pod_probe_target(&pod, &probe) {
                            Some(target) => Some(prober.run(&target).await.outcome),
                            None => None,
                        };
                        Ok(Some((pod, answer)))
                    }
                    Ok(None) => Ok(None),
                    Err(error) => Err(error),
                };
                (j, p, result)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut confirmed = std::collections::BTreeSet::new();
    for (j, p, answer) in answers {
        let job = &mut hsj.jobs[j];
        match (answer, p) {
            (Err(error), _) => {
                tracing::warn!(job = %job.name, %error, "cannot confirm that a Job is idle: kept");
            }
            // No live pod then, none now (or gone): nothing runs in it.
            (Ok(None), _) => {
                confirmed.insert(job.uid.clone());
            }
            (Ok(Some((pod, answer))), p) => {
                let mut fresh = ObservedPod {
                    probe: answer,
                    ..super::pod_facts(&pod, &probe.annotation_key)
                };
                if !probe.mode.is_probed() {
                    fresh.probe = None;
                }
                let state = crate::plan::classify(&fresh, probe.mode, probe.success_is_busy());
                // A pod that finished runs nothing any more; a live one must answer idle (or
                // not run yet).
                let idle = !crate::plan::is_counted(&fresh)
                    || matches!(
                        state,
                        crate::plan::PodState::Idle | crate::plan::PodState::Starting
                    );
                match p {
                    Some(p) => job.pods[p] = fresh,
                    None => job.pods.push(fresh),
                }
                if idle {
                    confirmed.insert(job.uid.clone());
                }
            }
        }
    }
    Ok(confirmed)
}
