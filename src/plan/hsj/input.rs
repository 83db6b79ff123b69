//! What the HotStandbyJob plan reads: one HSJ with its Jobs and their pods, as a pass observed
//! them.

use jiff::Timestamp;

use crate::api::hsj::{HotStandbyJobSpec, HotStandbyJobStatus};
use crate::plan::ObservedPod;

/// What a pass knows about one HSJ and its Jobs.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedHsj {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub generation: Option<i64>,
    pub paused: bool,
    /// The spec, or why it could not be read.
    pub spec: Result<HotStandbyJobSpec, String>,
    pub status: Option<HotStandbyJobStatus>,
    /// Every Job of this HSJ (its owner reference and label), finished ones included.
    pub jobs: Vec<ObservedJob>,
    /// Pods whose probe did not run before the probe deadline (unknown; nothing is deleted).
    pub probes_cut_short: usize,
    /// When set, only these Jobs (by uid) may be deleted: each got a fresh idle answer just now
    /// ([`crate::plan::hsj::plan`] is run again after the victims of a first plan are
    /// confirmed, and only confirmed ones go).
    pub confirmed_idle: Option<std::collections::BTreeSet<String>>,
}

/// How a Job ended, from its conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finished {
    Complete,
    Failed,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct ObservedJob {
    pub name: String,
    pub uid: String,
    /// The resourceVersion read: the precondition of its deletion.
    pub resource_version: Option<String>,
    pub created: Option<Timestamp>,
    /// The hash of the jobTemplate it was made from (its annotation).
    pub template_hash: Option<String>,
    pub finished: Option<Finished>,
    /// Being deleted (deletionTimestamp set).
    pub deleting: bool,
    /// `status.succeeded` and `spec.completions` (default 1).
    pub succeeded: i32,
    pub completions: i32,
    /// Its pods (owner reference), terminating and finished ones included.
    pub pods: Vec<ObservedPod>,
    /// Created by this process and not seen by a read yet: starting capacity.
    pub in_flight: bool,
}
