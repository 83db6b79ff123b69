//! The scaling plan: a pure function of what a pass observed and the time.
//!
//! Nothing here sees a client or the clock, so every rule is unit-tested table-driven
//! (`tests` below) and property-tested. `execute` carries the plan out.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use sha2::{Digest, Sha256};

use crate::crd::{
    Condition, HotStandbyDeploymentSpec, HotStandbyDeploymentStatus, ProbeMode, TimedRecommendation,
};

/// The annotation the ReplicaSet reads to choose which pods go first on scale-down.
pub const DELETION_COST_ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";
/// The deletion cost of busy and unknown pods: far above the default 0 of idle ones.
pub const BUSY_DELETION_COST: i32 = 1_000_000;
/// Scale-down-delay recommendations kept in the status at most (older ones fold into the next).
pub const MAX_RECOMMENDATIONS: usize = 32;
/// The label Deployments put on their pods, one value per ReplicaSet.
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";
/// A pod unschedulable for longer than this gets a Warning and a condition.
pub const UNSCHEDULABLE_WARNING_AFTER: Duration = Duration::from_secs(60);

/// Condition types on the HSD status.
pub mod condition {
    pub const READY: &str = "Ready";
    pub const SCALING_LIMITED: &str = "ScalingLimited";
    pub const PROBE_DEGRADED: &str = "ProbeDegraded";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const PAUSED: &str = "Paused";
    pub const PODS_UNSCHEDULABLE: &str = "PodsUnschedulable";
    pub const BUSY_TEMPLATE: &str = "BusyAnnotationInTemplate";
}

/// What a pass knows about one HSD and its objects.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedHsd {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub generation: Option<i64>,
    pub paused: bool,
    /// The spec, or why it could not be read.
    pub spec: Result<HotStandbyDeploymentSpec, String>,
    pub status: Option<HotStandbyDeploymentStatus>,
    pub deployment: Option<ObservedDeployment>,
    /// Pods matching the selector, terminating ones included (the plan leaves them out).
    pub pods: Vec<ObservedPod>,
    /// Pods whose probe did not run before the HSD's probe deadline (they count as unknown,
    /// and the HSD keeps its replicas).
    pub probes_cut_short: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedDeployment {
    /// Whether this HSD is the Deployment's controller owner.
    pub owned: bool,
    pub replicas: Option<i32>,
    /// The hash of the selector and template this tool last applied (an annotation).
    pub template_hash: Option<String>,
    /// The replicas this tool last applied (an annotation), to tell another writer's change.
    pub applied_replicas: Option<i32>,
    /// A relabel without a rollout was started and not finished (the child is paused).
    pub relabelling: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PodPhase {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

impl PodPhase {
    pub fn parse(phase: Option<&str>) -> Self {
        match phase {
            Some("Running") => Self::Running,
            Some("Succeeded") => Self::Succeeded,
            Some("Failed") => Self::Failed,
            Some("Unknown") => Self::Unknown,
            _ => Self::Pending,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ObservedPod {
    pub name: String,
    pub uid: String,
    pub ready: bool,
    pub phase: PodPhase,
    pub terminating: bool,
    /// The value of the HSD's busy annotation, if the pod has it.
    pub busy_annotation: Option<String>,
    /// The HTTP probe's answer this pass (http mode, ready pods with an IP only).
    pub probe: Option<ProbeOutcome>,
    /// Bound to a node (`spec.nodeName`).
    pub scheduled: bool,
    /// `controller.kubernetes.io/pod-deletion-cost` as read, if set and readable.
    pub deletion_cost: Option<i32>,
    /// A cost this process wrote that the read has not caught up with yet: it saves writing
    /// it again, but a scale-down waits until the read shows it.
    pub cost_in_flight: Option<i32>,
    /// The ReplicaSet the pod belongs to (its `pod-template-hash` label).
    pub template_hash: Option<String>,
    /// Since when the scheduler has reported the pod unschedulable, if it does.
    pub unschedulable_since: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// A 2xx answer.
    Success,
    /// An answer outside 2xx and 3xx.
    Failure(u16),
    /// A 3xx answer: never followed, and no answer about busy at all (unknown).
    Redirect {
        status: u16,
        location: Option<String>,
    },
    /// No answer: timeout, refused connection, invalid HTTP.
    Error(String),
}

impl ProbeOutcome {
    /// Why the answer says nothing about busy, if it does not.
    pub fn unknown_reason(&self) -> Option<String> {
        match self {
            Self::Error(error) => Some(error.clone()),
            Self::Redirect { status, location } => Some(format!(
                "redirect {status} to {} (redirects are not followed)",
                location.as_deref().unwrap_or("no Location")
            )),
            Self::Success | Self::Failure(_) => None,
        }
    }
}

/// How one pod counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PodState {
    Busy,
    Idle,
    Starting,
    /// The probe failed: counted as busy for scaling, so a slow busy pod is never scaled away.
    Unknown,
}

impl PodState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Busy => "busy",
            Self::Idle => "idle",
            Self::Starting => "starting",
            Self::Unknown => "unknown",
        }
    }
}

/// The busy annotation's value as the plan reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusyAnnotation {
    Absent,
    Busy,
    Idle,
    /// A value that is none of the accepted spellings: treated as busy (fail-safe).
    Invalid,
}

/// Accepted spellings, case-insensitive: true/yes/1 and false/no/0.
pub fn parse_busy_annotation(value: Option<&str>) -> BusyAnnotation {
    let Some(value) = value else {
        return BusyAnnotation::Absent;
    };
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => BusyAnnotation::Busy,
        "false" | "no" | "0" => BusyAnnotation::Idle,
        _ => BusyAnnotation::Invalid,
    }
}

/// Whether a pod is part of the HSD's population at all.
pub fn is_counted(pod: &ObservedPod) -> bool {
    !pod.terminating && !matches!(pod.phase, PodPhase::Succeeded | PodPhase::Failed)
}

/// Classifies one counted pod. A Pending pod runs nothing, so it is never busy (a template
/// that carries the busy annotation must not make every new pod count as busy). In HTTP mode
/// a running pod without a fresh answer is unknown: protected, and never idle.
pub fn classify(pod: &ObservedPod, mode: ProbeMode, success_is_busy: bool) -> PodState {
    if pod.phase == PodPhase::Pending {
        return PodState::Starting;
    }
    let idle_or_starting = if pod.ready {
        PodState::Idle
    } else {
        PodState::Starting
    };
    match mode {
        ProbeMode::Annotation => match parse_busy_annotation(pod.busy_annotation.as_deref()) {
            BusyAnnotation::Busy | BusyAnnotation::Invalid => PodState::Busy,
            BusyAnnotation::Absent | BusyAnnotation::Idle => idle_or_starting,
        },
        ProbeMode::Http => match &pod.probe {
            Some(ProbeOutcome::Success) if success_is_busy => PodState::Busy,
            Some(ProbeOutcome::Failure(_)) if !success_is_busy => PodState::Busy,
            Some(ProbeOutcome::Success | ProbeOutcome::Failure(_)) => idle_or_starting,
            None | Some(ProbeOutcome::Error(_) | ProbeOutcome::Redirect { .. }) => {
                PodState::Unknown
            }
        },
    }
}

/// Pod counts by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub busy: i32,
    pub idle: i32,
    pub starting: i32,
    pub unknown: i32,
}

impl Counts {
    pub fn total(&self) -> i32 {
        self.busy + self.idle + self.starting + self.unknown
    }
    fn add(&mut self, state: PodState) {
        match state {
            PodState::Busy => self.busy += 1,
            PodState::Idle => self.idle += 1,
            PodState::Starting => self.starting += 1,
            PodState::Unknown => self.unknown += 1,
        }
    }
}

/// The replica count the formula gives, and which bound (if any) decided it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recommendation {
    /// `busy + unknown + idleTarget` before the bounds (unknown pods capped, see [`recommend`]).
    pub unbounded: i32,
    pub replicas: i32,
    pub limited_by: Option<Bound>,
    /// The pods that exist, when they capped what unknown pods add.
    pub unknown_capped_at: Option<i32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    Min,
    Max,
}

/// The idle target in force: `max(idleTarget, ceil(busy * idlePercent / 100))`, busy counting
/// unknown pods. Returns it and the percent part, if a percent is set.
pub fn idle_target(counts: &Counts, spec: &HotStandbyDeploymentSpec) -> (i32, Option<i32>) {
    let fixed = spec.idle_target.max(0);
    match spec.idle_percent {
        Some(percent) => {
            let busy = i64::from(counts.busy) + i64::from(counts.unknown);
            let from_percent = (busy * i64::from(percent.max(0)) + 99) / 100;
            let from_percent = i32::try_from(from_percent).unwrap_or(i32::MAX);
            (fixed.max(from_percent), Some(from_percent))
        }
        None => (fixed, None),
    }
}

/// `replicas = clamp(busy + unknown + idle target, minReplicas, maxReplicas)`.
///
/// Unknown pods count as busy, but what they add is capped at the pods that exist: when every
/// probe fails, replicas hold instead of growing without end (no runaway). Without
/// maxReplicas, [`SAFETY_MAX_REPLICAS`] is the ceiling.
pub fn recommend(counts: &Counts, spec: &HotStandbyDeploymentSpec) -> Recommendation {
    let formula = |counts: &Counts| {
        let (target, _) = idle_target(counts, spec);
        counts
            .busy
            .saturating_add(counts.unknown)
            .saturating_add(target)
    };
    let with_unknown = formula(counts);
    let without_unknown = formula(&Counts {
        unknown: 0,
        ..*counts
    });
    let existing = counts.total();
    let (unbounded, unknown_capped_at) = if with_unknown > without_unknown.max(existing) {
        (without_unknown.max(existing), Some(existing))
    } else {
        (with_unknown, None)
    };
    let min = spec.min_replicas.max(0);
    let max = effective_max_replicas(spec);
    let (replicas, limited_by) = if unbounded > max {
        (max, Some(Bound::Max))
    } else if unbounded < min {
        (min.min(max), Some(Bound::Min))
    } else {
        (unbounded, None)
    };
    Recommendation {
        unbounded,
        replicas,
        limited_by,
        unknown_capped_at,
    }
}

/// maxReplicas, or the safety ceiling when it is absent (or null).
pub fn effective_max_replicas(spec: &HotStandbyDeploymentSpec) -> i32 {
    spec.max_replicas
        .unwrap_or(crate::crd::SAFETY_MAX_REPLICAS)
        .max(1)
}

/// The scale-down delay: the highest recommendation of the last `window`, and the history to
/// keep (each value from when it was first made; an entry lasts until the next one starts).
pub fn stabilize(
    recommendation: i32,
    history: &[TimedRecommendation],
    window: Duration,
    now: Timestamp,
) -> (i32, Vec<TimedRecommendation>) {
    if window.is_zero() {
        return (recommendation, Vec::new());
    }
    let window_start = now - SignedDuration::try_from(window).unwrap_or(SignedDuration::MAX);
    let mut kept: Vec<TimedRecommendation> = Vec::new();
    let parsed: Vec<(i32, Timestamp)> = history
        .iter()
        .filter_map(|entry| Some((entry.replicas, entry.since.parse::<Timestamp>().ok()?)))
        .collect();
    for (i, (replicas, since)) in parsed.iter().enumerate() {
        // An entry still counts if it was in force at some point of the window.
        let ended = parsed.get(i + 1).map(|(_, next)| *next);
        if ended.is_none_or(|end| end > window_start) {
            kept.push(TimedRecommendation {
                replicas: *replicas,
                since: since.to_string(),
            });
        }
    }
    if kept
        .last()
        .is_none_or(|last| last.replicas != recommendation)
    {
        kept.push(TimedRecommendation {
            replicas: recommendation,
            since: now.to_string(),
        });
    }
    // Bounded: the oldest entries fold into the next one, keeping the higher count, so the
    // window never forgets a high recommendation early.
    while kept.len() > MAX_RECOMMENDATIONS {
        let oldest = kept.remove(0);
        kept[0].replicas = kept[0].replicas.max(oldest.replicas);
    }
    let highest = kept
        .iter()
        .map(|entry| entry.replicas)
        .max()
        .unwrap_or(recommendation);
    (highest.max(recommendation), kept)
}

/// The ReplicaSet's scale-down ranking, as far as it is decided before the tie-breakers
/// (node spread, ready time, restarts, age): unscheduled, then Pending < Unknown < Running,
/// then not ready, then lower deletion cost go first. Lower keys are deleted first.
pub fn deletion_rank(pod: &ObservedPod, cost: i32) -> (u8, u8, u8, i32) {
    let phase = match pod.phase {
        PodPhase::Pending => 0,
        PodPhase::Unknown => 1,
        _ => 2,
    };
    (u8::from(pod.scheduled), phase, u8::from(pod.ready), cost)
}

/// How many pods the ReplicaSet can delete before it could reach a busy (or unknown) one:
/// those ranking strictly before every busy pod, given the deletion costs the plan sets.
pub fn safe_deletions(pods: &[(&ObservedPod, PodState, i32)]) -> i32 {
    let is_busy = |state: &PodState| matches!(state, PodState::Busy | PodState::Unknown);
    let first_busy = pods
        .iter()
        .filter(|(_, state, _)| is_busy(state))
        .map(|(pod, _, cost)| deletion_rank(pod, *cost))
        .min();
    let safe = pods
        .iter()
        .filter(|(pod, state, cost)| {
            !is_busy(state) && first_busy.is_none_or(|busy| deletion_rank(pod, *cost) < busy)
        })
        .count();
    i32::try_from(safe).unwrap_or(i32::MAX)
}

/// Whether a pod of this state is protected from a scale-down (busy or unknown).
pub fn is_protected(state: PodState) -> bool {
    matches!(state, PodState::Busy | PodState::Unknown)
}

/// The deletion cost a pod should carry, if it must change. Busy and unknown pods get the high
/// cost in the pass that first sees them so; a cost left high from a busy past is lowered to 0
/// only when `may_lower` (never in a pass that lowers replicas). `current` is the cost as read,
/// or as this process last wrote it.
pub fn wanted_cost(state: PodState, current: Option<i32>, may_lower: bool) -> Option<i32> {
    match state {
        _ if is_protected(state) && current != Some(BUSY_DELETION_COST) => Some(BUSY_DELETION_COST),
        PodState::Idle | PodState::Starting if may_lower && current == Some(BUSY_DELETION_COST) => {
            Some(0)
        }
        _ => None,
    }
}

/// The cost this process knows a pod has: its own write in flight, else what was read.
pub fn effective_cost(pod: &ObservedPod) -> Option<i32> {
    pod.cost_in_flight.or(pod.deletion_cost)
}

/// A deletion cost to write on one pod (with its uid: a pod replaced under the same name is
/// not written).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CostWrite {
    pub pod: String,
    pub uid: String,
    pub cost: i32,
}

fn cost_changes(classified: &[(&ObservedPod, PodState)], may_lower: bool) -> Vec<CostWrite> {
    classified
        .iter()
        .filter_map(|(pod, state)| {
            Some(CostWrite {
                pod: pod.name.clone(),
                uid: pod.uid.clone(),
                cost: wanted_cost(*state, effective_cost(pod), may_lower)?,
            })
        })
        .collect()
}

/// The busy annotation's value in the pod template, when the template sets it (annotation mode).
pub fn busy_annotation_in_template(spec: &HotStandbyDeploymentSpec) -> Option<String> {
    if spec.busy_probe.mode != ProbeMode::Annotation {
        return None;
    }
    let value = spec
        .pod_template
        .pointer("/metadata/annotations")?
        .get(&spec.busy_probe.annotation_key)?;
    Some(
        value
            .as_str()
            .map_or_else(|| value.to_string(), String::from),
    )
}

/// Checks what the CRD schema and its CEL rules enforce, for objects that slipped past them
/// (created before a rule existed). The message names the fix.
pub fn validate_spec(spec: &HotStandbyDeploymentSpec) -> Result<(), String> {
    let mut problems = Vec::new();
    if spec.idle_target < 0 {
        problems.push(format!(
            "spec.idleTarget is {}: set it to 0 or more",
            spec.idle_target
        ));
    }
    if spec.min_replicas < 0 {
        problems.push(format!(
            "spec.minReplicas is {}: set it to 0 or more",
            spec.min_replicas
        ));
    }
    if let Some(max) = spec.max_replicas {
        if max < 1 {
            problems.push(format!(
                "spec.maxReplicas is {max}: set it to 1 or more, or remove it"
            ));
        }
        if spec.min_replicas > max {
            problems.push(format!(
                "spec.minReplicas ({}) is greater than spec.maxReplicas ({max}): lower minReplicas or raise maxReplicas",
                spec.min_replicas
            ));
        }
    }
    if spec.selector.match_labels.is_empty() {
        problems.push(
            "spec.selector.matchLabels is empty: name at least one label of the pod template"
                .into(),
        );
    }
    // Missing selector labels are merged into the template (as the reference accepted them);
    // a contradicting one cannot be.
    let template_labels = template_labels(&spec.pod_template);
    let conflicting: Vec<String> = spec
        .selector
        .match_labels
        .iter()
        .filter_map(|(k, v)| {
            let found = template_labels.get(k)?;
            (found != v).then(|| format!("{k}={found} (the selector says {v})"))
        })
        .collect();
    if !conflicting.is_empty() {
        problems.push(format!(
            "spec.podTemplate.metadata.labels contradicts the selector: {}: give the template the selector's value",
            conflicting.join(", ")
        ));
    }
    if !spec.pod_template.is_object() {
        problems.push("spec.podTemplate is not an object: give a Deployment pod template".into());
    }
    let http = &spec.busy_probe.http;
    if spec.busy_probe.mode == ProbeMode::Http {
        if !(1..=65535).contains(&http.port) {
            problems.push(format!(
                "spec.busyProbe.http.port is {}: use 1-65535",
                http.port
            ));
        }
        if http.timeout_seconds < 1 {
            problems.push(format!(
                "spec.busyProbe.http.timeoutSeconds is {}: use 1 or more",
                http.timeout_seconds
            ));
        }
        if !http.path.starts_with('/') {
            problems.push(format!(
                "spec.busyProbe.http.path {:?} must start with /",
                http.path
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// The labels of a pod template, ignoring anything malformed.
pub fn template_labels(pod_template: &serde_json::Value) -> BTreeMap<String, String> {
    pod_template
        .pointer("/metadata/labels")
        .and_then(|labels| labels.as_object())
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `labels` carry every entry of `match_labels`. An empty selector matches nothing
/// (the API server refuses an empty one; a pass must not adopt every pod of a namespace).
pub fn selector_matches(
    match_labels: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    !match_labels.is_empty() && match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The child Deployment's pod template: the HSD's, with the selector's labels added where
/// missing and the injected labels ([`crate::labels::injected`]).
pub fn child_template(
    namespace: &str,
    name: &str,
    spec: &HotStandbyDeploymentSpec,
) -> serde_json::Value {
    let mut template = spec.pod_template.clone();
    if !template.is_object() {
        return template;
    }
    let metadata = template
        .as_object_mut()
        .expect("checked above")
        .entry("metadata")
        .or_insert_with(|| serde_json::json!({}));
    if !metadata.is_object() {
        *metadata = serde_json::json!({});
    }
    let labels = metadata
        .as_object_mut()
        .expect("made an object above")
        .entry("labels")
        .or_insert_with(|| serde_json::json!({}));
    if !labels.is_object() {
        *labels = serde_json::json!({});
    }
    let labels = labels.as_object_mut().expect("made an object above");
    for (key, value) in &spec.selector.match_labels {
        labels
            .entry(key.clone())
            .or_insert_with(|| value.clone().into());
    }
    for (key, value) in crate::labels::injected(namespace, name) {
        labels.insert(key, value.into());
    }
    template
}

fn short_hex(digest: &[u8]) -> String {
    let mut hex = String::with_capacity(16);
    for byte in &digest[..8] {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// A stable hash of what this tool applies to the child Deployment besides the replica count,
/// stored as an annotation there so that a pass with nothing to change writes nothing.
pub fn template_hash(namespace: &str, name: &str, spec: &HotStandbyDeploymentSpec) -> String {
    let mut hasher = Sha256::new();
    hasher.update(serde_json::to_vec(&spec.selector).unwrap_or_default());
    hasher.update([0]);
    hasher.update(serde_json::to_vec(&child_template(namespace, name, spec)).unwrap_or_default());
    format!("v2-{}", short_hex(&hasher.finalize()))
}

/// The hash an earlier version stored: the user's template as it was, with no injected labels.
/// A child still carrying it gains the labels without a rollout ([`DeploymentAction::Apply`]'s
/// `relabel`).
pub fn legacy_template_hash(spec: &HotStandbyDeploymentSpec) -> String {
    let mut hasher = Sha256::new();
    hasher.update(serde_json::to_vec(&spec.selector).unwrap_or_default());
    hasher.update([0]);
    hasher.update(serde_json::to_vec(&spec.pod_template).unwrap_or_default());
    short_hex(&hasher.finalize())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// An event to publish on the HSD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedEvent {
    pub type_: EventType,
    pub reason: &'static str,
    pub note: String,
}

/// What to do with the child Deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeploymentAction {
    /// It is as it should be.
    Keep,
    /// Server-side apply it (create, template change or replica change).
    Apply {
        replicas: i32,
        template_hash: String,
        /// The child was made before labels were injected and its template is otherwise
        /// unchanged: label its ReplicaSets' templates and its pods first, so that the new
        /// template matches the running ReplicaSet and nothing rolls out.
        relabel: bool,
    },
    /// Something stops the pass from touching it (invalid spec, paused, not ours).
    Blocked,
}

/// Why the plan chose its replica count, step by step (what `explain` prints).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    pub busy_by_annotation: i32,
    pub busy_by_probe: i32,
    /// Busy pods whose annotation value is not an accepted spelling (counted as busy).
    pub busy_by_invalid_annotation: i32,
    pub unknown: i32,
    pub idle: i32,
    pub starting: i32,
    pub terminating: i32,
    pub unschedulable: i32,
    pub idle_target_fixed: i32,
    /// `ceil(busy * idlePercent / 100)` when idlePercent is set.
    pub idle_target_from_percent: Option<i32>,
    pub idle_target: i32,
    pub min_replicas: i32,
    pub max_replicas: Option<i32>,
    /// `busy + unknown + idle target`.
    pub formula: i32,
    /// The formula within the bounds.
    pub bounded: i32,
    pub scale_down_delay_seconds: i32,
    /// The highest recommendation of the delay window, when it holds replicas up.
    pub held_by_delay: Option<i32>,
    /// The lowest count the ReplicaSet's ranking makes safe, when it holds replicas up.
    pub held_to_protect_busy: Option<i32>,
    /// The pods that exist, when they capped what unknown pods add.
    pub unknown_capped_at: Option<i32>,
    /// Held at the current count: busy pods' deletion costs are written this pass and must
    /// be visible before replicas drop.
    pub held_for_costs: Option<i32>,
    /// Held at the current count: the pods belong to more than one ReplicaSet (a rollout).
    pub held_for_rollout: Option<i32>,
    /// Held at the current count: some probes did not run before the probe deadline.
    pub held_for_probe_deadline: Option<i32>,
    pub current_replicas: Option<i32>,
    pub replicas: i32,
    pub why: Vec<String>,
}

/// The plan for one HSD.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub counts: Counts,
    /// Each counted pod and its state, for `describe` and `--dry-run`.
    pub pod_states: Vec<(String, PodState)>,
    pub recommendation: Option<Recommendation>,
    pub decision: Option<Decision>,
    /// Deletion costs to write, before anything else.
    pub cost_writes: Vec<CostWrite>,
    pub deployment: DeploymentAction,
    /// `(from, to)` when the replica count changes.
    pub scale: Option<(i32, i32)>,
    pub status: HotStandbyDeploymentStatus,
    /// Whether `status` differs from the HSD's current status (a write is needed).
    pub status_changed: bool,
    pub events: Vec<PlannedEvent>,
}

/// Plans one HSD.
pub fn plan(observed: &ObservedHsd, now: Timestamp) -> Plan {
    let previous = observed.status.clone().unwrap_or_default();
    let mut conditions = Conditions::new(&previous.conditions, now);
    let mut events = Vec::new();

    let spec = match &observed.spec {
        Ok(spec) => validate_spec(spec).map(|()| spec),
        Err(parse_error) => Err(format!("the spec cannot be read: {parse_error}")),
    };
    let spec = match spec {
        Ok(spec) => spec,
        Err(message) => {
            if conditions.set(condition::INVALID_SPEC, true, "InvalidSpec", &message) {
                events.push(warning("InvalidSpec", message.clone()));
            }
            conditions.set(condition::READY, false, "InvalidSpec", &message);
            let status = HotStandbyDeploymentStatus {
                conditions: conditions.finish(),
                observed_generation: observed.generation,
                ..previous.clone()
            };
            return Plan {
                counts: Counts::default(),
                pod_states: Vec::new(),
                recommendation: None,
                decision: None,
                cost_writes: Vec::new(),
                deployment: DeploymentAction::Blocked,
                scale: None,
                status_changed: status != previous,
                status,
                events,
            };
        }
    };
    conditions.set(condition::INVALID_SPEC, false, "Valid", "the spec is valid");

    // Classify.
    let mode = spec.busy_probe.mode;
    let mut counts = Counts::default();
    let mut decision = Decision::default();
    let mut classified: Vec<(&ObservedPod, PodState)> = Vec::new();
    let mut probe_failures = Vec::new();
    let mut invalid_annotations = Vec::new();
    let mut unschedulable = Vec::new();
    for pod in &observed.pods {
        if pod.terminating {
            decision.terminating += 1;
            continue;
        }
        if !is_counted(pod) {
            continue;
        }
        let state = classify(pod, mode, spec.busy_probe.http.success_is_busy);
        counts.add(state);
        classified.push((pod, state));
        if state == PodState::Unknown {
            let reason = match &pod.probe {
                Some(outcome) => outcome.unknown_reason().unwrap_or_default(),
                None => "no fresh answer yet".to_string(),
            };
            probe_failures.push(format!("{}: {reason}", pod.name));
        }
        let annotation = parse_busy_annotation(pod.busy_annotation.as_deref());
        if state == PodState::Busy {
            match (mode, annotation) {
                (ProbeMode::Annotation, BusyAnnotation::Invalid) => {
                    decision.busy_by_invalid_annotation += 1;
                    invalid_annotations.push(format!(
                        "{}={:?}",
                        pod.name,
                        pod.busy_annotation.as_deref().unwrap_or_default()
                    ));
                }
                (ProbeMode::Annotation, _) => decision.busy_by_annotation += 1,
                (ProbeMode::Http, _) => decision.busy_by_probe += 1,
            }
        }
        if let Some(since) = pod.unschedulable_since {
            decision.unschedulable += 1;
            if now.duration_since(since)
                >= SignedDuration::try_from(UNSCHEDULABLE_WARNING_AFTER).unwrap_or_default()
            {
                unschedulable.push(pod.name.clone());
            }
        }
    }
    let mut pod_states: Vec<(String, PodState)> = classified
        .iter()
        .map(|(pod, state)| (pod.name.clone(), *state))
        .collect();
    pod_states.sort();

    let degraded = if observed.probes_cut_short > 0 {
        Some((
            "ProbeDeadlineExceeded",
            format!(
                "{} pod(s) were not probed before the probe deadline; they count as busy and replicas are held: lower busyProbe.http.timeoutSeconds, or fix the pods that do not answer ({})",
                observed.probes_cut_short,
                probe_failures
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))
    } else {
        probe_degraded_message(
            &probe_failures,
            &invalid_annotations,
            &spec.busy_probe.annotation_key,
        )
    };
    match &degraded {
        Some((reason, message)) => {
            if conditions.set(condition::PROBE_DEGRADED, true, reason, message) {
                events.push(warning(reason, message.clone()));
            }
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
    match busy_annotation_in_template(spec) {
        Some(value) => {
            let message = format!(
                "podTemplate.metadata.annotations sets {}={value:?}: every new pod starts out marked busy. Remove it from the template; pods mark themselves busy when work starts (Pending pods are never counted as busy)",
                spec.busy_probe.annotation_key
            );
            if conditions.set(
                condition::BUSY_TEMPLATE,
                true,
                "BusyAnnotationInTemplate",
                &message,
            ) {
                events.push(warning("BusyAnnotationInTemplate", message));
            }
        }
        None => conditions.remove(condition::BUSY_TEMPLATE),
    }
    if unschedulable.is_empty() {
        conditions.remove(condition::PODS_UNSCHEDULABLE);
    } else {
        let message = format!(
            "{} pod(s) unschedulable for over {}s (they count as starting, never as capacity): {}",
            unschedulable.len(),
            UNSCHEDULABLE_WARNING_AFTER.as_secs(),
            unschedulable
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
        if conditions.set(
            condition::PODS_UNSCHEDULABLE,
            true,
            "Unschedulable",
            &message,
        ) {
            events.push(warning("PodsUnschedulable", message));
        }
    }

    // The formula and its bounds.
    let recommendation = recommend(&counts, spec);
    let (target, from_percent) = idle_target(&counts, spec);
    let limit_message = match recommendation.limited_by {
        Some(Bound::Max) => Some((
            "TooManyReplicas",
            format!(
                "the formula asks for {} replicas but maxReplicas is {}: raise maxReplicas to keep the idle buffer",
                recommendation.unbounded, recommendation.replicas
            ),
        )),
        Some(Bound::Min) => Some((
            "TooFewReplicas",
            format!(
                "the formula asks for {} replicas; minReplicas {} holds",
                recommendation.unbounded, recommendation.replicas
            ),
        )),
        None => None,
    };
    match &limit_message {
        Some((reason, message)) => {
            let changed = conditions.set(condition::SCALING_LIMITED, true, reason, message);
            // Being held at minReplicas is normal operation; running out of room is worth a warning.
            if changed && recommendation.limited_by == Some(Bound::Max) {
                events.push(warning("ScalingLimited", message.clone()));
            }
        }
        None => {
            conditions.set(
                condition::SCALING_LIMITED,
                false,
                "DesiredWithinRange",
                "the formula is within the bounds",
            );
        }
    }

    // The scale-down delay.
    let delay_seconds = spec.scale_down_delay_seconds.unwrap_or(0).max(0);
    let window = Duration::from_secs(u64::try_from(delay_seconds).unwrap_or(0));
    let (stabilized, recent_recommendations) = stabilize(
        recommendation.replicas,
        &previous.recent_recommendations,
        window,
        now,
    );

    decision.unknown = counts.unknown;
    decision.idle = counts.idle;
    decision.starting = counts.starting;
    decision.idle_target_fixed = spec.idle_target;
    decision.idle_target_from_percent = from_percent;
    decision.idle_target = target;
    decision.min_replicas = spec.min_replicas;
    decision.max_replicas = spec.max_replicas;
    decision.formula = recommendation.unbounded;
    decision.bounded = recommendation.replicas;
    decision.unknown_capped_at = recommendation.unknown_capped_at;
    decision.scale_down_delay_seconds = delay_seconds;
    if stabilized > recommendation.replicas {
        decision.held_by_delay = Some(stabilized);
    }

    let hash = template_hash(&observed.namespace, &observed.name, spec);
    let mut scale = None;
    let mut cost_writes = Vec::new();
    let mut desired = stabilized;
    let deployment_action = if observed.paused {
        if observed.deployment.as_ref().is_some_and(|d| d.owned) {
            cost_writes = cost_changes(&classified, false);
        }
        conditions.set(
            condition::PAUSED,
            true,
            "Paused",
            &format!(
                "the {} annotation stops all scaling",
                crate::crd::PAUSED_ANNOTATION
            ),
        );
        DeploymentAction::Blocked
    } else {
        conditions.remove(condition::PAUSED);
        match &observed.deployment {
            Some(deployment) if !deployment.owned => {
                let message = format!(
                    "a Deployment named {}-workload exists and is not owned by this HotStandbyDeployment: delete or rename it, or rename the HotStandbyDeployment",
                    observed.name
                );
                if conditions.set(condition::READY, false, "DeploymentNotOwned", &message) {
                    events.push(warning("DeploymentNotOwned", message));
                }
                DeploymentAction::Blocked
            }
            Some(deployment) => {
                let current = deployment.replicas.unwrap_or(1);
                decision.current_replicas = Some(current);
                let active = i32::try_from(classified.len()).unwrap_or(i32::MAX);
                // Busy-safe scale-down: the ReplicaSet deletes pods whenever replicas fall below
                // the pods that exist (whatever the Deployment said before). No step goes deeper
                // than its ranking makes safe, given the costs busy pods carry.
                if desired < active {
                    let with_costs: Vec<(&ObservedPod, PodState, i32)> = classified
                        .iter()
                        .map(|(pod, state)| {
                            let cost = effective_cost(pod);
                            let planned = wanted_cost(*state, cost, false).or(cost).unwrap_or(0);
                            (*pod, *state, planned)
                        })
                        .collect();
                    let lowest_safe = active - safe_deletions(&with_costs);
                    if lowest_safe > desired {
                        decision.held_to_protect_busy = Some(lowest_safe);
                        desired = lowest_safe;
                    }
                }
                if observed.probes_cut_short > 0 && desired != current {
                    // Probes that never ran say nothing: keep what runs.
                    decision.held_for_probe_deadline = Some(current);
                    desired = current;
                } else if desired < current {
                    let replica_sets: BTreeSet<&str> = classified
                        .iter()
                        .filter_map(|(pod, _)| pod.template_hash.as_deref())
                        .collect();
                    let costs_unseen = classified.iter().any(|(pod, state)| {
                        is_protected(*state) && pod.deletion_cost != Some(BUSY_DELETION_COST)
                    });
                    if replica_sets.len() > 1 {
                        // Two ReplicaSets split a scale-down by their own rules; the costs only
                        // rank inside each. Protect every pod until the rollout ends.
                        decision.held_for_rollout = Some(current);
                        desired = current;
                    } else if costs_unseen {
                        // A cost written in the same pass as the drop may not have reached the
                        // ReplicaSet controller's cache: drop on a later pass.
                        decision.held_for_costs = Some(current);
                        desired = current;
                    }
                }
                let lowers = desired < current || desired < active || current < active;
                cost_writes = cost_changes(&classified, !lowers);
                if current != desired {
                    scale = Some((current, desired));
                    if let Some(applied) = deployment
                        .applied_replicas
                        .filter(|applied| *applied != current)
                    {
                        events.push(warning(
                            "ReplicasOverridden",
                            format!(
                                "spec.replicas of {}-workload was set to {current} by another writer (this tool set {applied}); setting it to {desired}. Scale the HotStandbyDeployment's bounds instead",
                                observed.name
                            ),
                        ));
                    }
                }
                if current == desired
                    && deployment.template_hash.as_deref() == Some(hash.as_str())
                    && !deployment.relabelling
                {
                    DeploymentAction::Keep
                } else {
                    let relabel = deployment.relabelling
                        || deployment.template_hash.as_deref()
                            == Some(legacy_template_hash(spec).as_str());
                    DeploymentAction::Apply {
                        replicas: desired,
                        template_hash: hash,
                        relabel,
                    }
                }
            }
            None => {
                events.push(normal(
                    "Created",
                    format!(
                        "created Deployment {}-workload with {desired} replicas",
                        observed.name
                    ),
                ));
                DeploymentAction::Apply {
                    replicas: desired,
                    template_hash: hash,
                    relabel: false,
                }
            }
        }
    };
    decision.replicas = desired;
    decision.why = explain_steps(&decision, observed.paused, &deployment_action);

    if let Some((from, to)) = scale {
        let reason = if to > from { "ScaledUp" } else { "ScaledDown" };
        events.push(normal(
            reason,
            scale_message(from, to, &counts, target, &recommendation, &decision),
        ));
    }
    if deployment_action != DeploymentAction::Blocked || observed.paused {
        // The same words before and after the scale, so that the next pass writes nothing.
        let message = if observed.paused {
            "paused: no scaling until the annotation is removed".to_string()
        } else {
            format!("the child Deployment is kept at {desired} replicas")
        };
        conditions.set(
            condition::READY,
            !observed.paused,
            if observed.paused {
                "Paused"
            } else {
                "Reconciled"
            },
            &message,
        );
    }

    let last_scale_time = match scale {
        Some(_) if !observed.paused => Some(now.to_string()),
        _ => previous.last_scale_time.clone(),
    };
    let status = HotStandbyDeploymentStatus {
        busy_count: counts.busy,
        idle_count: counts.idle,
        starting_count: counts.starting,
        unknown_count: counts.unknown,
        terminating_count: decision.terminating,
        desired_replicas: recommendation.replicas,
        replicas: counts.total(),
        observed_generation: observed.generation,
        last_scale_time,
        recent_recommendations,
        conditions: conditions.finish(),
    };
    Plan {
        counts,
        pod_states,
        recommendation: Some(recommendation),
        decision: Some(decision),
        cost_writes,
        deployment: deployment_action,
        scale,
        status_changed: status != previous,
        status,
        events,
    }
}

fn explain_steps(decision: &Decision, paused: bool, action: &DeploymentAction) -> Vec<String> {
    let mut why = Vec::new();
    let busy =
        decision.busy_by_annotation + decision.busy_by_probe + decision.busy_by_invalid_annotation;
    let target = match decision.idle_target_from_percent {
        Some(percent) => format!(
            "idle target {} = max(idleTarget {}, {percent} from idlePercent)",
            decision.idle_target, decision.idle_target_fixed
        ),
        None => format!("idle target {}", decision.idle_target),
    };
    match decision.unknown_capped_at {
        Some(existing) => why.push(format!(
            "{busy} busy + {} unknown + {target}, with what unknown pods add capped at the {existing} pods that exist = {}",
            decision.unknown, decision.formula
        )),
        None => why.push(format!(
            "{busy} busy + {} unknown + {target} = {}",
            decision.unknown, decision.formula
        )),
    }
    if decision.bounded != decision.formula {
        why.push(format!(
            "bounded to {} by {}",
            decision.bounded,
            if decision.bounded > decision.formula {
                "minReplicas"
            } else {
                "maxReplicas"
            }
        ));
    }
    if let Some(held) = decision.held_by_delay {
        why.push(format!(
            "held at {held}: the highest recommendation of the last {}s (scaleDownDelaySeconds)",
            decision.scale_down_delay_seconds
        ));
    }
    if let Some(held) = decision.held_to_protect_busy {
        why.push(format!(
            "held at {held}: a deeper step could reach a busy pod that the ReplicaSet deletes first (not ready or unscheduled)"
        ));
    }
    if let Some(held) = decision.held_for_probe_deadline {
        why.push(format!(
            "held at {held}: some pods were not probed before the probe deadline"
        ));
    }
    if let Some(held) = decision.held_for_rollout {
        why.push(format!(
            "held at {held}: the pods belong to more than one ReplicaSet (a rollout); no scale-down until it ends"
        ));
    }
    if let Some(held) = decision.held_for_costs {
        why.push(format!(
            "held at {held}: busy pods' deletion costs are written first; replicas drop on the next pass"
        ));
    }
    match (paused, action, decision.current_replicas) {
        (true, _, _) => why.push("paused: the Deployment is left as it is".into()),
        (_, DeploymentAction::Blocked, _) => {
            why.push("blocked: the Deployment is not touched".into())
        }
        (_, _, Some(current)) if current != decision.replicas => {
            why.push(format!(
                "the Deployment goes from {current} to {} replicas",
                decision.replicas
            ));
        }
        (_, _, Some(_)) => why.push(format!(
            "the Deployment already has {} replicas",
            decision.replicas
        )),
        (_, _, None) => why.push(format!(
            "the Deployment is created with {} replicas",
            decision.replicas
        )),
    }
    why
}

fn probe_degraded_message(
    probe_failures: &[String],
    invalid_annotations: &[String],
    annotation_key: &str,
) -> Option<(&'static str, String)> {
    const SHOWN: usize = 5;
    let list = |items: &[String]| {
        let mut text = items
            .iter()
            .take(SHOWN)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if items.len() > SHOWN {
            let _ = write!(text, " and {} more", items.len() - SHOWN);
        }
        text
    };
    if !probe_failures.is_empty() {
        Some((
            "ProbeFailed",
            format!(
                "{} pod(s) did not answer the busy probe and count as busy: {}",
                probe_failures.len(),
                list(probe_failures)
            ),
        ))
    } else if !invalid_annotations.is_empty() {
        Some((
            "InvalidBusyAnnotation",
            format!(
                "{} pod(s) carry a {annotation_key} value that is not true/false (counted as busy): {}",
                invalid_annotations.len(),
                list(invalid_annotations)
            ),
        ))
    } else {
        None
    }
}

fn scale_message(
    from: i32,
    to: i32,
    counts: &Counts,
    idle_target: i32,
    recommendation: &Recommendation,
    decision: &Decision,
) -> String {
    let mut message = format!("from {from} to {to}: {} busy", counts.busy);
    if counts.unknown > 0 {
        let _ = write!(message, " + {} unknown", counts.unknown);
    }
    let _ = write!(message, " + idle target {idle_target}");
    match recommendation.limited_by {
        Some(Bound::Max) => {
            let _ = write!(
                message,
                " (limited by maxReplicas {})",
                recommendation.replicas
            );
        }
        Some(Bound::Min) => {
            let _ = write!(
                message,
                " (held at minReplicas {})",
                recommendation.replicas
            );
        }
        None => {}
    }
    if decision.held_by_delay == Some(to) {
        let _ = write!(message, " (held by the scale-down delay)");
    }
    if decision.held_to_protect_busy == Some(to) {
        let _ = write!(message, " (step limited to protect busy pods)");
    }
    if decision.held_for_probe_deadline == Some(to) {
        let _ = write!(message, " (held: probes ran out of time)");
    }
    message
}

fn normal(reason: &'static str, note: String) -> PlannedEvent {
    PlannedEvent {
        type_: EventType::Normal,
        reason,
        note,
    }
}

fn warning(reason: &'static str, note: String) -> PlannedEvent {
    PlannedEvent {
        type_: EventType::Warning,
        reason,
        note,
    }
}

/// Builds the new condition list, keeping each condition's transition time while its status
/// holds, so that an unchanged world gives an identical status (and no write).
pub struct Conditions {
    previous: Vec<Condition>,
    current: Vec<Condition>,
    now: String,
}

impl Conditions {
    pub fn new(previous: &[Condition], now: Timestamp) -> Self {
        Self {
            previous: previous.to_vec(),
            current: previous.to_vec(),
            now: now.to_string(),
        }
    }

    /// Sets a condition; returns whether its status or reason changed (a transition worth an event).
    pub fn set(&mut self, type_: &str, status: bool, reason: &str, message: &str) -> bool {
        let status = if status { "True" } else { "False" };
        let before = self.previous.iter().find(|c| c.type_ == type_);
        let transitioned = before.is_none_or(|c| c.status != status);
        let changed = before.is_none_or(|c| c.status != status || c.reason != reason);
        let last_transition_time = match before {
            Some(c) if !transitioned => c.last_transition_time.clone(),
            _ => self.now.clone(),
        };
        let condition = Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message: message.to_string(),
            last_transition_time,
            observed_generation: None,
        };
        match self.current.iter_mut().find(|c| c.type_ == type_) {
            Some(slot) => *slot = condition,
            None => self.current.push(condition),
        }
        changed
    }

    pub fn remove(&mut self, type_: &str) {
        self.current.retain(|c| c.type_ != type_);
    }

    pub fn finish(mut self) -> Vec<Condition> {
        let order = |t: &str| {
            [
                condition::READY,
                condition::SCALING_LIMITED,
                condition::PROBE_DEGRADED,
                condition::INVALID_SPEC,
                condition::PAUSED,
            ]
            .iter()
            .position(|known| *known == t)
            .unwrap_or(usize::MAX)
        };
        self.current.sort_by_key(|c| order(&c.type_));
        self.current
    }
}

#[cfg(test)]
mod tests;
