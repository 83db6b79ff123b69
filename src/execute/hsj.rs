//! The writes of a HotStandbyJob's pass: deletions first (each two compare-and-swaps: the
//! worker pod is marked draining on its uid and resourceVersion as read, so a worker marked busy
//! meanwhile keeps its Job; then the Job's uid and resourceVersion as read are the preconditions
//! of its deletion, so a Job that changed or was replaced meanwhile is not deleted), then creations (each Job under a name of its own: a second
//! attempt at the same Job is refused by the API server instead of making a duplicate), the
//! status (server-side apply), and events describing what was really done.

use futures::StreamExt;
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, Client, Resource};
use serde_json::{Value, json};

use super::events::{Regarding, publish_about};
use super::{FIELD_MANAGER, MANAGED_BY_LABEL};
use crate::api::HotStandbyJob;
use crate::error::{Result, kube_error};
use crate::observe::TEMPLATE_HASH_ANNOTATION;
use crate::observe::jobs::{hsj_resource, job_resource};
use crate::plan::hsj::{DeletionReason, HsjPlan, ObservedHsj, created_event, deleted_event};

/// Writes in flight at once for one HSJ.
const WRITE_CONCURRENCY: usize = 8;

/// What one execution wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HsjWritten {
    /// Jobs created.
    pub created: Vec<String>,
    /// Jobs of this HSJ that already existed under a name the plan chose (an earlier attempt
    /// made them; a read had not shown them yet): capacity, not created again.
    pub found: Vec<String>,
    /// Jobs deleted, and why.
    pub deleted: Vec<(String, DeletionReason)>,
    /// Deletions refused by their precondition (the Job changed or was replaced since it was
    /// read) or of Jobs already gone: (Job, why).
    pub skipped: Vec<(String, String)>,
    pub status: bool,
    pub status_version: Option<String>,
    pub events: usize,
    pub events_failed: usize,
}

impl HsjWritten {
    pub fn count(&self) -> usize {
        self.created.len() + self.deleted.len() + usize::from(self.status) + self.events
    }
}

/// The object events are about.
pub fn regarding(hsj: &ObservedHsj) -> Regarding {
    Regarding {
        api_version: HotStandbyJob::api_version(&()).to_string(),
        kind: HotStandbyJob::kind(&()).to_string(),
        name: hsj.name.clone(),
        namespace: hsj.namespace.clone(),
        uid: hsj.uid.clone(),
    }
}

/// The labels on each Job: who manages it, and the HSJ label and bucket.
pub fn job_labels(namespace: &str, name: &str) -> Value {
    let mut labels = serde_json::Map::new();
    labels.insert(MANAGED_BY_LABEL.into(), FIELD_MANAGER.into());
    for (key, value) in crate::labels::injected_hsj(namespace, name) {
        labels.insert(key, value.into());
    }
    Value::Object(labels)
}

/// One Job as this tool creates it.
pub fn job_manifest(hsj: &ObservedHsj, plan: &HsjPlan, name: &str) -> Option<Value> {
    let spec = plan.job_spec.as_ref()?;
    Some(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": hsj.namespace,
            // The HSJ label and bucket its pods carry too: a sharded watcher's label-filtered
            // watch sees the Job.
            "labels": job_labels(&hsj.namespace, &hsj.name),
            "annotations": { TEMPLATE_HASH_ANNOTATION: plan.template_hash },
            "ownerReferences": [{
                "apiVersion": HotStandbyJob::api_version(&()),
                "kind": HotStandbyJob::kind(&()),
                "name": hsj.name,
                "uid": hsj.uid,
                "controller": true,
            }],
        },
        "spec": spec,
    }))
}

/// How one Job's deletion went.
enum JobDeleted {
    Deleted,
    /// The Job changed or was replaced since it was read: kept.
    JobChanged,
    /// Its worker pod changed since it was read (perhaps marked busy): kept, not drained.
    PodChanged,
    Gone,
}

/// Deletes one Job in two compare-and-swaps: its live worker pod is first marked draining on
/// the uid and resourceVersion it was read at (a pod marked busy since is kept; after the mark,
/// `mark-busy` and the pod policy refuse it), then the Job goes on its own uid (and, when it has
/// no worker to drain, its resourceVersion). A Job whose precondition fails gets its worker back
/// (the draining mark removed), since it stays.
async fn delete_job(
    jobs: &Api<DynamicObject>,
    pods: &Api<DynamicObject>,
    deletion: &crate::plan::hsj::Deletion,
) -> std::result::Result<JobDeleted, (&'static str, &'static str, kube::Error)> {
    let params = super::merge_params();
    let mut drained = None;
    if let Some(pod) = deletion.pod.as_ref().filter(|_| !deletion.pod_draining) {
        let body = json!({"metadata": {
            "uid": pod.uid,
            "resourceVersion": pod.resource_version,
            "annotations": {
                crate::labels::DRAINING_ANNOTATION: jiff::Timestamp::now().to_string(),
            },
        }});
        match pods.patch(&pod.pod, &params, &Patch::Merge(&body)).await {
            Ok(_) => drained = Some(pod),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                return Ok(JobDeleted::PodChanged);
            }
            // The pod is gone: nothing runs in it any more.
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(("pods", "patch", error)),
        }
    }
    // With its worker drained (by this pass or an earlier one), the worker can no longer take
    // work, so the Job's own resourceVersion need not hold: the Job controller moves it with
    // every status write (under load, between this pass's read and this delete). The uid keeps a
    // Job replaced under the same name safe. A Job with no worker yet keeps the full swap.
    let worker_drained = drained.is_some() || deletion.pod_draining;
    let delete = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(deletion.uid.clone()),
            resource_version: if worker_drained {
                None
            } else {
                deletion.resource_version.clone()
            },
        }),
        propagation_policy: Some(kube::api::PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    match jobs.delete(&deletion.job, &delete).await {
        Ok(_) => Ok(JobDeleted::Deleted),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            if let Some(pod) = drained {
                // Best effort: a mark left behind makes the Job the first victim of a later
                // pass, never a deleted busy one.
                let body = json!({"metadata": {
                    "uid": pod.uid,
                    "annotations": { crate::labels::DRAINING_ANNOTATION: null },
                }});
                if let Err(error) = pods.patch(&pod.pod, &params, &Patch::Merge(&body)).await {
                    tracing::warn!(pod = %pod.pod, %error, "cannot remove the draining mark of a kept Job's worker");
                }
            }
            Ok(JobDeleted::JobChanged)
        }
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(JobDeleted::Gone),
        Err(error) => Err(("jobs.batch", "delete", error)),
    }
}

/// Carries out a plan (see the module's documentation).
pub async fn execute(client: &Client, hsj: &ObservedHsj, plan: &HsjPlan) -> Result<HsjWritten> {
    let mut written = HsjWritten::default();
    let jobs: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &hsj.namespace, &job_resource());
    let mut first_error = None;

    if !plan.blocked && !plan.deletions.is_empty() {
        let pods: Api<DynamicObject> = Api::namespaced_with(
            client.clone(),
            &hsj.namespace,
            &crate::observe::pod_resource(),
        );
        let results: Vec<_> = futures::stream::iter(plan.deletions.clone())
            .map(|deletion: crate::plan::hsj::Deletion| {
                let jobs = jobs.clone();
                let pods = pods.clone();
                async move {
                    let result = delete_job(&jobs, &pods, &deletion).await;
                    (deletion, result)
                }
            })
            .buffer_unordered(WRITE_CONCURRENCY)
            .collect()
            .await;
        for (deletion, result) in results {
            match result {
                Ok(JobDeleted::Deleted) => written
                    .deleted
                    .push((deletion.job.clone(), deletion.reason)),
                Ok(JobDeleted::JobChanged) => written.skipped.push((
                    deletion.job.clone(),
                    "it changed since it was read (precondition failed)".into(),
                )),
                Ok(JobDeleted::PodChanged) => written.skipped.push((
                    deletion.job.clone(),
                    "its worker pod changed since it was read (it may have been marked busy)"
                        .into(),
                )),
                Ok(JobDeleted::Gone) => written
                    .skipped
                    .push((deletion.job.clone(), "already gone".into())),
                Err((resource, verb, error)) => {
                    first_error.get_or_insert(kube_error(
                        format!("deleting Job {}/{}", hsj.namespace, deletion.job),
                        verb,
                        resource,
                        Some(&hsj.namespace),
                    )(error));
                }
            }
        }
        written.deleted.sort_by(|a, b| a.0.cmp(&b.0));
    }

    if !plan.blocked && !plan.creates.is_empty() && first_error.is_none() {
        // Creations that needed a recycling deletion to stay within maxReplicas wait for one.
        let recycles_missed = plan
            .deletions
            .iter()
            .filter(|d| d.reason == DeletionReason::Recycle)
            .count()
            .saturating_sub(
                written
                    .deleted
                    .iter()
                    .filter(|(_, r)| *r == DeletionReason::Recycle)
                    .count(),
            );
        let count = plan
            .creates
            .len()
            .saturating_sub(recycles_missed.min(plan.creates_need_recycles));
        let post = PostParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PostParams::default()
        };
        let mut names: Vec<String> = plan.creates[..count].to_vec();
        let mut taken: Vec<String> = hsj.jobs.iter().map(|j| j.name.clone()).collect();
        taken.extend(names.iter().cloned());
        // A name held by a Job that is not this HSJ's is skipped for the next free one; bounded.
        let mut attempts_left = count * 2 + 4;
        while !names.is_empty() && attempts_left > 0 {
            attempts_left = attempts_left.saturating_sub(names.len());
            let results: Vec<_> = futures::stream::iter(names.drain(..))
                .map(|name: String| {
                    let jobs = jobs.clone();
                    let post = post.clone();
                    let manifest = job_manifest(hsj, plan, &name);
                    async move {
                        let result = match manifest {
                            Some(manifest) => create_job(&jobs, &post, hsj, &name, manifest).await,
                            None => Created::Taken,
                        };
                        (name, result)
                    }
                })
                .buffer_unordered(WRITE_CONCURRENCY)
                .collect()
                .await;
            let mut retry = 0;
            for (name, result) in results {
                match result {
                    Created::New => written.created.push(name),
                    Created::Ours => written.found.push(name),
                    Created::Taken => retry += 1,
                    Created::Failed(error) => {
                        first_error.get_or_insert(error);
                    }
                }
            }
            if retry > 0 && first_error.is_none() {
                let refs: Vec<&str> = taken.iter().map(String::as_str).collect();
                let more = crate::plan::hsj::template::next_names(&hsj.name, &refs, retry);
                taken.extend(more.iter().cloned());
                names = more;
            }
        }
        written.created.sort();
    }

    if plan.status_changed {
        match write_status(client, hsj, &plan.status).await {
            Ok(version) => {
                written.status = true;
                written.status_version = version;
            }
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }

    let mut events = plan.events.clone();
    if !written.created.is_empty() {
        events.push(created_event(plan, &written.created));
    }
    if !written.deleted.is_empty() {
        events.push(deleted_event(plan, &written.deleted));
    }
    let about = regarding(hsj);
    for event in &events {
        match publish_about(client, &about, event).await {
            Ok(()) => written.events += 1,
            Err(error) => {
                written.events_failed += 1;
                tracing::warn!(namespace = %hsj.namespace, name = %hsj.name, reason = event.reason, %error, "could not record an event");
            }
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(written),
    }
}

/// What became of one creation.
enum Created {
    New,
    /// The name is held by a Job of this HSJ (an earlier attempt made it).
    Ours,
    /// The name is held by a Job that is not this HSJ's (or was, and went meanwhile).
    Taken,
    Failed(crate::Error),
}

async fn create_job(
    jobs: &Api<DynamicObject>,
    post: &PostParams,
    hsj: &ObservedHsj,
    name: &str,
    manifest: Value,
) -> Created {
    let object: DynamicObject = match serde_json::from_value(manifest) {
        Ok(object) => object,
        Err(error) => {
            return Created::Failed(crate::Error::Serialize {
                what: "a Job".into(),
                message: error.to_string(),
            });
        }
    };
    let failed = |verb: &str, error| {
        Created::Failed(kube_error(
            format!("creating Job {}/{name}", hsj.namespace),
            verb,
            "jobs.batch",
            Some(&hsj.namespace),
        )(error))
    };
    match jobs.create(post, &object).await {
        Ok(_) => Created::New,
        Err(kube::Error::Api(status)) if status.code == 409 => match jobs.get_opt(name).await {
            Ok(Some(existing))
                if existing
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|owner| owner.uid == hsj.uid) =>
            {
                Created::Ours
            }
            Ok(_) => Created::Taken,
            Err(error) => failed("get", error),
        },
        Err(error) => failed("create", error),
    }
}

/// Applies the HSJ's status subresource; returns the new resourceVersion.
pub async fn write_status(
    client: &Client,
    hsj: &ObservedHsj,
    status: &crate::api::hsj::HotStandbyJobStatus,
) -> Result<Option<String>> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &hsj.namespace, &hsj_resource());
    let body = json!({
        "apiVersion": HotStandbyJob::api_version(&()),
        "kind": HotStandbyJob::kind(&()),
        "status": status,
    });
    let written = api
        .patch_status(
            &hsj.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(kube_error(
            format!("writing the status of {}/{}", hsj.namespace, hsj.name),
            "patch",
            "hotstandbyjobs/status",
            Some(&hsj.namespace),
        ))?;
    Ok(written.metadata.resource_version)
}
