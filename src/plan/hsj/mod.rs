//! The HotStandbyJob plan: a pure function of what a pass observed and the time, like the HSD's,
//! and built from the same steps where they fit (the pod states of [`crate::plan::count`], the
//! formula of [`crate::plan::target`], the delay of [`crate::plan::stabilize`], the conditions).
//!
//! Each Job runs one pod, and that pod is the worker. A Job is:
//! - **starting** while its pod does not run yet (or runs, answers idle and is not ready): it is
//!   capacity, so nothing is made twice while pods are Pending;
//! - **busy**, **idle** or **unknown** by its running pod's answer (unknown is protected);
//! - **finished** (Complete or Failed), left to `ttlSecondsAfterFinished`, not capacity;
//! - **terminating** while it is deleted, not capacity.
//!
//! Creation makes exactly `target − capacity` Jobs (at most [`MAX_CREATES_PER_PASS`]).
//! Scale-down deletes only idle Jobs, starting ones first, then the oldest idle, once the
//! surplus has held for `scaleDownDelaySeconds`; each deletion is a compare-and-swap made right
//! after a fresh idle answer ([`ObservedHsj::confirmed_idle`]). Jobs of an older template are
//! recycled when idle or starting; busy and unknown ones finish their work.

pub mod input;
pub mod template;

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::Timestamp;

pub use input::{Finished, ObservedHsj, ObservedJob};

use super::conditions::{Conditions, condition};
use super::count::{Counts, PodState, classify, is_counted};
use super::explain::probe_degraded_message;
use super::target::{Formula, Recommendation, recommend_with};
use super::{PlannedEvent, PodPhase, normal, report_limit, stabilize, warning};
use crate::api::hsj::{HotStandbyJobSpec, HotStandbyJobStatus};
use crate::api::probe::{BusyProbe, ProbeMode};

/// Jobs created by one pass at most: a bound on what a mistake can cost, and on the burst one
/// reconcile sends to the API server. A watcher requeues at once while it is reached.
pub const MAX_CREATES_PER_PASS: usize = 50;

/// How one Job counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum JobState {
    Busy,
    Idle,
    Starting,
    /// No answer about busy: counted as busy, never deleted.
    Unknown,
    Succeeded,
    Failed,
    Terminating,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Busy => "busy",
            Self::Idle => "idle",
            Self::Starting => "starting",
            Self::Unknown => "unknown",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Terminating => "terminating",
        }
    }

    /// Whether the Job is capacity at all (it runs, or will).
    pub fn is_live(self) -> bool {
        matches!(
            self,
            Self::Busy | Self::Idle | Self::Starting | Self::Unknown
        )
    }

    fn from_pod(state: PodState) -> Self {
        match state {
            PodState::Busy => Self::Busy,
            PodState::Idle => Self::Idle,
            PodState::Starting => Self::Starting,
            PodState::Unknown => Self::Unknown,
            // An HSD's state for pods of an earlier template; `classify` never gives it.
            PodState::Leaving => Self::Idle,
        }
    }
}

/// The pod that speaks for a Job: its live pod (the busiest, should there be two), if any.
pub fn worker(job: &ObservedJob, probe: &BusyProbe) -> Option<usize> {
    let rank = |state: PodState| match state {
        PodState::Busy => 0,
        PodState::Unknown => 1,
        PodState::Idle | PodState::Leaving => 2,
        PodState::Starting => 3,
    };
    job.pods
        .iter()
        .enumerate()
        .filter(|(_, pod)| is_counted(pod))
        .min_by_key(|(_, pod)| rank(classify(pod, probe.mode, probe.success_is_busy())))
        .map(|(i, _)| i)
}

/// How a Job counts (see the module's documentation).
pub fn classify_job(job: &ObservedJob, probe: &BusyProbe) -> JobState {
    if job.in_flight {
        return JobState::Starting;
    }
    if job.deleting {
        return JobState::Terminating;
    }
    match job.finished {
        Some(Finished::Complete) => return JobState::Succeeded,
        Some(Finished::Failed) => return JobState::Failed,
        None => {}
    }
    match worker(job, probe) {
        Some(i) => JobState::from_pod(classify(&job.pods[i], probe.mode, probe.success_is_busy())),
        None => {
            // No live pod: done (its pods succeeded, the Job's condition is on its way), or
            // one is coming (not created yet, or a failed one being replaced).
            let succeeded_pods = job
                .pods
                .iter()
                .filter(|pod| !pod.terminating && pod.phase == PodPhase::Succeeded)
                .count();
            let succeeded = job
                .succeeded
                .max(i32::try_from(succeeded_pods).unwrap_or(i32::MAX));
            if succeeded >= job.completions.max(1) {
                JobState::Succeeded
            } else {
                JobState::Starting
            }
        }
    }
}

/// Why a Job is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeletionReason {
    /// More Jobs than the target, held for the delay.
    Surplus,
    /// Made from an older jobTemplate, and idle or starting.
    Recycle,
}

/// One Job to delete: a compare-and-swap on its uid and resourceVersion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deletion {
    pub job: String,
    pub uid: String,
    pub resource_version: Option<String>,
    pub state: JobState,
    pub reason: DeletionReason,
    /// Its live worker pod as read (none while no pod runs): marked draining by a
    /// compare-and-swap on this before the Job goes, so that a worker marked busy since the read
    /// keeps its Job, and `mark-busy` refuses it afterwards (as for an HSD's pods).
    pub pod: Option<crate::plan::PodRef>,
    /// The worker pod carries the draining mark already (an earlier pass drained it).
    pub pod_draining: bool,
}

/// Why the plan chose its Job count, step by step (what `explain hsj/NAME` prints).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HsjDecision {
    pub busy: i32,
    pub unknown: i32,
    pub idle: i32,
    pub starting: i32,
    /// Busy or unknown Jobs of an older template (counted above; replaced once idle).
    pub outdated_working: i32,
    /// Idle or starting Jobs of an older template, recycled now.
    pub outdated_recycled: i32,
    pub finished: i32,
    pub terminating: i32,
    pub idle_target: i32,
    pub min_replicas: i32,
    pub max_replicas: i32,
    /// `busy + unknown + idleTarget` (unknown capped at the Jobs that exist).
    pub formula: i32,
    pub bounded: i32,
    pub scale_down_delay_seconds: i32,
    /// The highest recommendation of the delay window, when it holds Jobs up.
    pub held_by_delay: Option<i32>,
    /// Jobs that count as capacity.
    pub capacity: i32,
    pub target: i32,
    pub create: i32,
    /// Creations the per-pass cap or maxReplicas left for a later pass.
    pub create_deferred: i32,
    pub delete: i32,
    /// Surplus Jobs kept because they are busy or unknown (never deleted) or not confirmed idle.
    pub surplus_kept: i32,
    pub why: Vec<String>,
}

/// The plan for one HSJ.
#[derive(Clone, Debug, PartialEq)]
pub struct HsjPlan {
    pub counts: Counts,
    /// Each Job and its state, for `describe` and `--dry-run`.
    pub job_states: Vec<(String, JobState)>,
    pub recommendation: Option<Recommendation>,
    pub decision: Option<HsjDecision>,
    /// The names of the Jobs to create.
    pub creates: Vec<String>,
    /// How many of `creates` need the recycling deletions first (maxReplicas counts every Job
    /// that runs): one fewer for each recycling deletion that does not happen.
    pub creates_need_recycles: usize,
    pub deletions: Vec<Deletion>,
    /// The Jobs' spec and its hash, when the spec is valid.
    pub job_spec: Option<serde_json::Value>,
    pub template_hash: String,
    /// Nothing is created or deleted (invalid spec, paused).
    pub blocked: bool,
    pub status: HotStandbyJobStatus,
    /// Whether `status` differs from the current one (a write is needed).
    pub status_changed: bool,
    pub events: Vec<PlannedEvent>,
    /// The arithmetic, for the notes of the events the executor records.
    pub note: String,
    /// When the scale-down delay next lets a held surplus go: a watcher looks again then.
    pub recheck_after: Option<Duration>,
}

/// What the CRD's schema and CEL rules enforce, checked again (objects that got past them),
/// and what only a pass can check (the template expands). The message names the fix.
pub fn validate(namespace: &str, name: &str, spec: &HotStandbyJobSpec) -> Result<(), String> {
    let mut problems = Vec::new();
    if spec.idle_target < 0 {
        problems.push(format!(
            "spec.idleTarget is {}: set it to 0 or more",
            spec.idle_target
        ));
    }
    for (field, value) in [
        ("minReplicas", spec.min_replicas),
        ("maxReplicas", spec.max_replicas),
    ] {
        if let Some(value) = value.filter(|v| *v < 0) {
            problems.push(format!("spec.{field} is {value}: set it to 0 or more"));
        }
    }
    if let (Some(min), Some(max)) = (spec.min_replicas, spec.max_replicas)
        && min > max
    {
        problems.push(format!(
            "spec.minReplicas ({min}) is greater than spec.maxReplicas ({max}): lower minReplicas or raise maxReplicas"
        ));
    }
    if !(0..=86400).contains(&spec.scale_down_delay_seconds) {
        problems.push(format!(
            "spec.scaleDownDelaySeconds is {}: use 0-86400",
            spec.scale_down_delay_seconds
        ));
    }
    if spec.selector.match_labels.is_empty() {
        problems.push(
            "spec.selector.matchLabels is empty: name at least one label of the pod template"
                .into(),
        );
    }
    match template::expand(name, spec) {
        Ok(expanded) => {
            if let Some(parallelism) = expanded.get("parallelism")
                && parallelism.as_i64() != Some(1)
            {
                problems.push(format!(
                    "spec.jobTemplate.parallelism is {parallelism}: it must be 1 (each Job runs one pod, and that pod is the worker)"
                ));
            }
            let labels = template::template_labels(&expanded);
            let conflicting: Vec<String> = spec
                .selector
                .match_labels
                .iter()
                .filter_map(|(k, v)| {
                    let found = labels.get(k)?;
                    (found != v).then(|| format!("{k}={found} (the selector says {v})"))
                })
                .collect();
            if !conflicting.is_empty() {
                problems.push(format!(
                    "spec.jobTemplate.template.metadata.labels contradicts the selector: {}: give the template the selector's value",
                    conflicting.join(", ")
                ));
            }
            if let Err(error) = template::job_spec(namespace, name, spec) {
                problems.push(error);
            }
        }
        Err(error) => problems.push(error),
    }
    problems.extend(crate::api::probe::probe_problems(&spec.busy_probe));
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Plans one HSJ.
pub fn plan(observed: &ObservedHsj, now: Timestamp) -> HsjPlan {
    let previous = observed.status.clone().unwrap_or_default();
    let mut conditions = Conditions::new(&previous.conditions, now, observed.generation);
    let mut events = Vec::new();
    let spec = match &observed.spec {
        Ok(spec) => validate(&observed.namespace, &observed.name, spec).map(|()| spec),
        Err(parse_error) => Err(format!("the spec cannot be read: {parse_error}")),
    };
    let spec = match spec {
        Ok(spec) => spec,
        Err(message) => {
            if conditions.set(condition::INVALID_SPEC, true, "InvalidSpec", &message) {
                events.push(warning("InvalidSpec", message.clone()));
            }
            conditions.set(condition::READY, false, "InvalidSpec", &message);
            let mut status = HotStandbyJobStatus {
                observed_generation: observed.generation,
                conditions: conditions.finish(),
                ..previous.clone()
            };
            let status_changed = finish_status(&mut status, &previous, now);
            return HsjPlan {
                counts: Counts::default(),
                job_states: Vec::new(),
                recommendation: None,
                decision: None,
                creates: Vec::new(),
                creates_need_recycles: 0,
                deletions: Vec::new(),
                job_spec: None,
                template_hash: String::new(),
                blocked: true,
                status,
                status_changed,
                events,
                note: String::new(),
                recheck_after: None,
            };
        }
    };
    conditions.set(condition::INVALID_SPEC, false, "Valid", "the spec is valid");
    let job_spec = template::job_spec(&observed.namespace, &observed.name, spec)
        .expect("validate checked that the template expands");
    let hash = template::template_hash(&observed.namespace, &observed.name, &job_spec);
    let probe = &spec.busy_probe;

    // 1. Count: each Job's state; Jobs of an older template are capacity only while working.
    let mut counts = Counts::default();
    let mut decision = HsjDecision::default();
    let mut states = Vec::with_capacity(observed.jobs.len());
    let mut recyclable: Vec<(&ObservedJob, JobState)> = Vec::new();
    let mut candidates: Vec<(&ObservedJob, JobState)> = Vec::new();
    let mut probe_failures = Vec::new();
    let mut status = HotStandbyJobStatus {
        observed_generation: observed.generation,
        child_jobs: i32::try_from(observed.jobs.len()).unwrap_or(i32::MAX),
        ..HotStandbyJobStatus::default()
    };
    for job in &observed.jobs {
        let state = classify_job(job, probe);
        states.push((job.name.clone(), state));
        match state {
            JobState::Succeeded => status.completed_jobs += 1,
            JobState::Failed => status.failed_jobs += 1,
            JobState::Terminating => decision.terminating += 1,
            _ => {}
        }
        if !state.is_live() {
            continue;
        }
        status.active_jobs += 1;
        if state == JobState::Unknown {
            let pod = worker(job, probe).map(|i| &job.pods[i]);
            let why = pod
                .and_then(|pod| pod.probe.as_ref())
                .and_then(|outcome| outcome.unknown_reason())
                .unwrap_or_else(|| "no fresh answer yet".to_string());
            let name = pod.map_or(job.name.as_str(), |pod| pod.name.as_str());
            probe_failures.push(format!("{name}: {why}"));
        }
        let outdated = !job.in_flight && job.template_hash.as_deref() != Some(hash.as_str());
        if outdated {
            status.outdated_jobs += 1;
            if matches!(state, JobState::Idle | JobState::Starting) {
                recyclable.push((job, state));
                continue;
            }
            decision.outdated_working += 1;
        }
        match state {
            JobState::Busy => counts.busy += 1,
            JobState::Idle => counts.idle += 1,
            JobState::Starting => counts.starting += 1,
            JobState::Unknown => counts.unknown += 1,
            _ => unreachable!("live states only"),
        }
        if matches!(state, JobState::Idle | JobState::Starting) && !job.in_flight {
            candidates.push((job, state));
        }
    }
    decision.finished = status.completed_jobs + status.failed_jobs;
    match probe_degraded_message(
        observed.probes_cut_short,
        &probe_failures,
        &[],
        &probe.annotation_key,
    ) {
        Some((reason, message)) => {
            if conditions.set(condition::PROBE_DEGRADED, true, reason, &message) {
                events.push(warning(reason, message));
            }
        }
        None if probe.mode == ProbeMode::Annotation => {
            conditions.remove(condition::PROBE_DEGRADED);
        }
        None => {
            conditions.set(
                condition::PROBE_DEGRADED,
                false,
                "ProbesHealthy",
                "every probe answered",
            );
        }
    }

    // 2. Target.
    let formula = Formula {
        idle_target: spec.idle_target,
        idle_percent: None,
        min: spec.min_jobs(),
        max: spec.max_jobs(),
    };
    let recommendation = recommend_with(&counts, &formula);
    report_limit(&recommendation, &mut conditions, &mut events);

    // 3. Stabilize: surplus Jobs go only once the lower count has held for the delay.
    let delay = spec.scale_down_delay_seconds.max(0);
    let window = Duration::from_secs(u64::try_from(delay).unwrap_or(0));
    let (stabilized, recent_recommendations) = stabilize(
        recommendation.replicas,
        &previous.recent_recommendations,
        window,
        now,
    );
    let target = stabilized.min(formula.max.max(0));
    let capacity = counts.total();
    let recheck_after = (stabilized > recommendation.replicas)
        .then(|| {
            delay_ends(
                &recent_recommendations,
                recommendation.replicas,
                window,
                now,
            )
        })
        .flatten();

    // 4. What changes: creations up to the target, deletions of the surplus and the recycled.
    let mut creates = Vec::new();
    let mut creates_need_recycles = 0;
    let mut deletions = Vec::new();
    let eligible = |job: &ObservedJob| {
        observed
            .confirmed_idle
            .as_ref()
            .is_none_or(|confirmed| confirmed.contains(&job.uid))
    };
    if observed.paused {
        conditions.set(
            condition::PAUSED,
            true,
            "Paused",
            &format!(
                "the {} annotation stops all creation and deletion",
                crate::api::hsd::PAUSED_ANNOTATION
            ),
        );
    } else {
        conditions.remove(condition::PAUSED);
        // Recycle: every idle or starting Job of an older template.
        for (job, state) in &recyclable {
            if eligible(job) {
                deletions.push(deletion(job, probe, *state, DeletionReason::Recycle));
            }
        }
        decision.outdated_recycled = i32::try_from(deletions.len()).unwrap_or(i32::MAX);
        let live = capacity + i32::try_from(recyclable.len()).unwrap_or(i32::MAX);
        let wanted = (target - capacity).max(0);
        let cap = i32::try_from(MAX_CREATES_PER_PASS).unwrap_or(i32::MAX);
        let room_after = (formula.max - (live - decision.outdated_recycled)).max(0);
        let room_now = (formula.max - live).max(0);
        let create = wanted.min(cap).min(room_after);
        creates_need_recycles =
            usize::try_from(create - wanted.min(cap).min(room_now).min(create)).unwrap_or(0);
        decision.create = create;
        decision.create_deferred = wanted - create;
        let taken: Vec<&str> = observed.jobs.iter().map(|j| j.name.as_str()).collect();
        creates =
            template::next_names(&observed.name, &taken, usize::try_from(create).unwrap_or(0));
        // Surplus: idle Jobs whose worker an earlier pass drained (it may take no new work),
        // then starting Jobs (newest first: the least sunk cost), then the oldest idle ones.
        // Busy and unknown Jobs are never candidates. Nothing goes while probes ran out of time
        // (an unanswered pod may be a busy one).
        let surplus = (capacity - target).max(0);
        if surplus > 0 && observed.probes_cut_short == 0 {
            let mut ordered = candidates.clone();
            let drained = |job: &ObservedJob| {
                !worker(job, probe)
                    .is_some_and(|i| job.pods[i].draining && !job.pods[i].terminating)
            };
            ordered.sort_by(|(a, sa), (b, sb)| {
                let starting = |s: &JobState| *s != JobState::Starting;
                (drained(a), starting(sa))
                    .cmp(&(drained(b), starting(sb)))
                    .then_with(|| {
                        if *sa == JobState::Starting {
                            b.created.cmp(&a.created)
                        } else {
                            a.created.cmp(&b.created)
                        }
                    })
            });
            let chosen: Vec<Deletion> = ordered
                .iter()
                .filter(|(job, _)| eligible(job))
                .take(usize::try_from(surplus).unwrap_or(0))
                .map(|(job, state)| deletion(job, probe, *state, DeletionReason::Surplus))
                .collect();
            decision.surplus_kept = surplus - i32::try_from(chosen.len()).unwrap_or(0);
            deletions.extend(chosen);
        } else {
            decision.surplus_kept = surplus;
        }
        decision.delete = i32::try_from(deletions.len()).unwrap_or(i32::MAX);
    }

    decision.busy = counts.busy;
    decision.unknown = counts.unknown;
    decision.idle = counts.idle;
    decision.starting = counts.starting;
    decision.idle_target = spec.idle_target;
    decision.min_replicas = formula.min;
    decision.max_replicas = formula.max;
    decision.formula = recommendation.unbounded;
    decision.bounded = recommendation.replicas;
    decision.scale_down_delay_seconds = delay;
    decision.held_by_delay = (stabilized > recommendation.replicas).then_some(stabilized);
    decision.capacity = capacity;
    decision.target = target;
    decision.why = explain_steps(&decision, observed.paused, &recommendation);

    let note = format!(
        "{} busy + {} unknown + idle target {} = {}{}; {} Job(s) run",
        counts.busy,
        counts.unknown,
        spec.idle_target,
        recommendation.unbounded,
        match recommendation.limited_by {
            Some(_) => format!(", bounded to {}", recommendation.replicas),
            None => String::new(),
        },
        capacity
    );
    let ready_message = if observed.paused {
        "paused: no Jobs are created or deleted until the annotation is removed".to_string()
    } else {
        format!("the Jobs are kept at {target} (busy + idle target, within the bounds)")
    };
    conditions.set(
        condition::READY,
        !observed.paused,
        if observed.paused {
            "Paused"
        } else {
            "Reconciled"
        },
        &ready_message,
    );

    status.busy_count = counts.busy;
    status.idle_count = counts.idle;
    status.starting_count = counts.starting;
    status.unknown_count = counts.unknown;
    status.active_count = capacity;
    status.desired_active = recommendation.replicas;
    status.recent_recommendations = recent_recommendations;
    status.last_scale_time = if creates.is_empty() && deletions.is_empty() {
        previous.last_scale_time.clone()
    } else {
        Some(now.to_string())
    };
    status.conditions = conditions.finish();
    let status_changed = finish_status(&mut status, &previous, now);
    let mut job_states = states;
    job_states.sort();
    HsjPlan {
        counts,
        job_states,
        recommendation: Some(recommendation),
        decision: Some(decision),
        creates,
        creates_need_recycles,
        deletions,
        job_spec: Some(job_spec),
        template_hash: hash,
        blocked: observed.paused,
        status,
        status_changed,
        events,
        note,
        recheck_after,
    }
}

/// How long until the first recommendation above `current` leaves the delay window (each entry
/// of the window counts until `window` after the next one started).
fn delay_ends(
    history: &[crate::api::hsd::TimedRecommendation],
    current: i32,
    window: Duration,
    now: Timestamp,
) -> Option<Duration> {
    let window = jiff::SignedDuration::try_from(window).ok()?;
    let starts: Vec<(i32, Option<Timestamp>)> = history
        .iter()
        .map(|entry| (entry.replicas, entry.since.parse().ok()))
        .collect();
    starts
        .windows(2)
        .filter(|pair| pair[0].0 > current)
        .filter_map(|pair| pair[1].1)
        .map(|ended| ended + window)
        .min()
        .map(|expires| {
            let left = now.duration_until(expires);
            Duration::try_from(left).unwrap_or(Duration::ZERO) + Duration::from_millis(200)
        })
}

fn deletion(
    job: &ObservedJob,
    probe: &BusyProbe,
    state: JobState,
    reason: DeletionReason,
) -> Deletion {
    let pod = worker(job, probe)
        .map(|i| &job.pods[i])
        .filter(|pod| !pod.terminating);
    Deletion {
        job: job.name.clone(),
        uid: job.uid.clone(),
        resource_version: job.resource_version.clone(),
        state,
        reason,
        pod: pod.map(crate::plan::PodRef::of),
        pod_draining: pod.is_some_and(|pod| pod.draining),
    }
}

/// `lastSyncTime` is when the status last changed: a status equal to the previous one but for
/// it is no change (a pass with nothing to change writes nothing).
fn finish_status(
    status: &mut HotStandbyJobStatus,
    previous: &HotStandbyJobStatus,
    now: Timestamp,
) -> bool {
    status.last_sync_time = previous.last_sync_time.clone();
    let changed = status != previous;
    if changed {
        status.last_sync_time = Some(now.to_string());
    }
    changed
}

fn explain_steps(d: &HsjDecision, paused: bool, recommendation: &Recommendation) -> Vec<String> {
    let mut why = vec![format!(
        "{} busy + {} unknown + idle target {} = {}",
        d.busy, d.unknown, d.idle_target, recommendation.unbounded
    )];
    if let Some(capped) = recommendation.unknown_capped_at {
        why.push(format!(
            "unknown Jobs add nothing beyond the {capped} that exist (no runaway while probes fail)"
        ));
    }
    match recommendation.limited_by {
        Some(super::Bound::Max) => why.push(format!(
            "bounded to {} by maxReplicas",
            recommendation.replicas
        )),
        Some(super::Bound::Min) => why.push(format!(
            "raised to {} by minReplicas",
            recommendation.replicas
        )),
        None => {}
    }
    if let Some(held) = d.held_by_delay {
        why.push(format!(
            "held at {held}: the highest recommendation of the last {}s (scaleDownDelaySeconds)",
            d.scale_down_delay_seconds
        ));
    }
    if paused {
        why.push("paused: nothing is created or deleted".into());
        return why;
    }
    why.push(format!(
        "{} Job(s) are capacity (busy, idle, starting, unknown); the target is {}",
        d.capacity, d.target
    ));
    if d.create > 0 {
        why.push(format!("create {} Job(s)", d.create));
    }
    if d.create_deferred > 0 {
        why.push(format!(
            "{} more later: at most {MAX_CREATES_PER_PASS} per pass, and never beyond maxReplicas Jobs running",
            d.create_deferred
        ));
    }
    if d.outdated_recycled > 0 {
        why.push(format!(
            "recycle {} idle or starting Job(s) of an older jobTemplate",
            d.outdated_recycled
        ));
    }
    if d.outdated_working > 0 {
        why.push(format!(
            "{} busy or unknown Job(s) of an older jobTemplate finish their work first",
            d.outdated_working
        ));
    }
    let surplus_deleted = d.delete - d.outdated_recycled;
    if surplus_deleted > 0 {
        why.push(format!(
            "delete {surplus_deleted} surplus Job(s): starting ones first, then the oldest idle"
        ));
    }
    if d.surplus_kept > 0 {
        why.push(format!(
            "{} surplus Job(s) kept: busy or unknown Jobs are never deleted",
            d.surplus_kept
        ));
    }
    if d.create == 0 && d.delete == 0 && d.surplus_kept == 0 {
        why.push("nothing to change".into());
    }
    why
}

/// The event notes of what the executor did.
pub fn created_event(plan: &HsjPlan, names: &[String]) -> PlannedEvent {
    normal(
        "JobsCreated",
        format!(
            "created {} Job(s) ({}): {}",
            names.len(),
            list(names),
            plan.note
        ),
    )
}

pub fn deleted_event(plan: &HsjPlan, deleted: &[(String, DeletionReason)]) -> PlannedEvent {
    let recycled: Vec<String> = deleted
        .iter()
        .filter(|(_, r)| *r == DeletionReason::Recycle)
        .map(|(n, _)| n.clone())
        .collect();
    let surplus: Vec<String> = deleted
        .iter()
        .filter(|(_, r)| *r == DeletionReason::Surplus)
        .map(|(n, _)| n.clone())
        .collect();
    let mut parts = Vec::new();
    if !surplus.is_empty() {
        parts.push(format!(
            "deleted {} surplus idle Job(s) ({})",
            surplus.len(),
            list(&surplus)
        ));
    }
    if !recycled.is_empty() {
        parts.push(format!(
            "recycled {} Job(s) of an older jobTemplate ({})",
            recycled.len(),
            list(&recycled)
        ));
    }
    normal(
        "JobsDeleted",
        format!("{}: {}", parts.join("; "), plan.note),
    )
}

fn list(names: &[String]) -> String {
    let mut text = names.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > 5 {
        text.push_str(&format!(" and {} more", names.len() - 5));
    }
    text
}

/// The uids of the Jobs a plan deletes.
pub fn victims(plan: &HsjPlan) -> BTreeSet<String> {
    plan.deletions.iter().map(|d| d.uid.clone()).collect()
}

#[cfg(test)]
mod tests;
