//! What the plan reads: one HSD with its child Deployment and pods, as a pass observed them.

use jiff::Timestamp;

use crate::api::hsd::{HotStandbyDeploymentSpec, HotStandbyDeploymentStatus};

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
    /// The HSD's pods (labelled as its own), terminating ones included (the plan leaves them out).
    pub pods: Vec<ObservedPod>,
    /// Pods whose probe did not run before the HSD's probe deadline (they count as unknown,
    /// and the HSD keeps its replicas).
    pub probes_cut_short: usize,
    /// An active-standby Service selects every pod of this HSD, so one of them is its master
    /// at all times: while none carries the label (during a failover, between the old master's
    /// fence and the new one's label) one busy pod is still counted, so that a failover never
    /// reads as a scale-down.
    pub master_slot: bool,
    /// The resourceVersion the HSD was read at: the sleep deadline moves by compare-and-swap.
    pub resource_version: Option<String>,
    /// The shared sleep deadline (`spec.scaleToZero`), if the annotation holds a valid time.
    pub sleep_deadline: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedDeployment {
    /// Whether this HSD is the Deployment's controller owner.
    pub owned: bool,
    pub replicas: Option<i32>,
    /// The hash of the selector and template this tool last applied (an annotation).
    pub template_hash: Option<String>,
    /// The field manager that set `spec.replicas`, when it is not this tool (from
    /// `metadata.managedFields`).
    pub replicas_writer: Option<String>,
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
    /// The resourceVersion it was read at: every change this tool makes to the pod's fate is a
    /// compare-and-swap on it.
    pub resource_version: String,
    /// The hash of the template it was made from (`paia.tech/template`), if it carries one.
    pub template: Option<String>,
    /// Chosen for removal by this tool (`paia.tech/draining`): it may not be marked busy.
    pub draining: bool,
    /// When it was marked draining (the annotation's value); `None` when unreadable.
    pub draining_since: Option<Timestamp>,
    /// Detached from its ReplicaSet and owned by the HSD (a retired or draining pod).
    pub detached: bool,
    /// When this tool retired it (a busy pod of an earlier template), if it did.
    pub retired_since: Option<Timestamp>,
    /// Its `paia.tech/state` label, if it has one.
    pub state_label: Option<String>,
    pub ready: bool,
    pub phase: PodPhase,
    pub terminating: bool,
    /// The value of the HSD's busy annotation, if the pod has it.
    pub busy_annotation: Option<String>,
    /// The master of an active-standby Service (it carries `qoqo.dev/pod-designation: active`):
    /// busy, whatever its annotation or probe says.
    pub designated_active: bool,
    /// The probe's fresh answer (http and exec modes, running pods only).
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
    /// An exec probe's command ran and exited non-zero (the API server's Failure status with an
    /// exit code): a "failure" answer, mapped to busy or idle by `successIsBusy`.
    CommandFailed(String),
    /// No answer: timeout, refused connection, invalid HTTP, an exec that could not start.
    Error(String),
}

impl ProbeOutcome {
    /// Whether the probe answered "success" (2xx, exit 0), "failure" (another status, a
    /// non-zero exit), or nothing (`None`: unknown).
    pub fn succeeded(&self) -> Option<bool> {
        match self {
            Self::Success => Some(true),
            Self::Failure(_) | Self::CommandFailed(_) => Some(false),
            Self::Redirect { .. } | Self::Error(_) => None,
        }
    }

    /// The answer in a few words, for people.
    pub fn describe(&self) -> String {
        match self {
            Self::Success => "success".into(),
            Self::Failure(status) => format!("HTTP {status}"),
            Self::CommandFailed(message) => format!("command failed ({message})"),
            Self::Redirect { status, .. } => format!("redirect {status}"),
            Self::Error(error) => format!("no answer ({error})"),
        }
    }

    /// Why the answer says nothing about busy, if it does not.
    pub fn unknown_reason(&self) -> Option<String> {
        match self {
            Self::Error(error) => Some(error.clone()),
            Self::Redirect { status, location } => Some(format!(
                "redirect {status} to {} (redirects are not followed)",
                location.as_deref().unwrap_or("no Location")
            )),
            Self::Success | Self::Failure(_) | Self::CommandFailed(_) => None,
        }
    }
}
