//! The active-standby plan: a pure function of one namespace's Services, their pods and the time.
//!
//! Election. A pod is **eligible** when it is Ready, has a pod IP and is not being deleted. The
//! master is **sticky**: it moves only when it is no longer eligible (or no longer selected, or
//! gone) and another pod is. A new master is the best eligible candidate: not busy before busy
//! (an HSD's busy pods are doing work), then the longest Ready, then by name.
//!
//! Conflicts. The label is shared: a Service resolves to every labelled pod its selector
//! selects. So, in each namespace, for every active-standby Service at most one chosen master
//! may be among its pods. Services are decided one after another (those whose recorded master is
//! still eligible first, then by name), and a choice that would put a second master among any
//! Service's pods is never made: such a Service follows the master already among its pods, or
//! gets none, with an `ActiveStandbyConflict` Warning.
//!
//! Writes, in the order `execute` carries them out (see `execute::active_standby` for why this
//! order means no two labelled pods ever show):
//! 1. each Service's record (compare-and-swap on its resourceVersion), with the selector key;
//! 2. fences: every former master (the record's `unfenced`), every stray label among an
//!    active Service's pods, every label this tool left behind;
//! 3. confirmations: the records of the Services that select a pod about to be labelled, not
//!    written in step 1, are compared-and-swapped unchanged;
//! 4. labels, each with the pod's resourceVersion as read;
//! 5. the records whose `unfenced` were all fenced are written without them.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use serde::Serialize;

use super::{EventType, PlannedEvent};
use crate::api::active_standby::{ACTIVE, DESIGNATION_LABEL, MASTER_MARK_PREFIX, PodRef, Record};

/// How busy a pod is for the HSD that owns it (a pod of no HSD is idle).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Busyness {
    #[default]
    Idle,
    /// An HTTP-mode HSD's pod: the Service controller does not probe.
    Unknown,
    Busy,
}

/// One Service of the namespace, as read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceFacts {
    pub name: String,
    pub uid: String,
    pub resource_version: String,
    /// Annotated `qoqo.dev/service-mode: active-standby`.
    pub enabled: bool,
    /// `spec.selector` as it is (our key included, if present).
    pub selector: Option<BTreeMap<String, String>>,
    /// The record annotation, read (or why it cannot be).
    pub record: Option<Result<Record, String>>,
}

/// One pod of the namespace, as read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodFacts {
    pub name: String,
    pub uid: String,
    pub resource_version: String,
    pub labels: BTreeMap<String, String>,
    pub ready: bool,
    /// When the Ready condition last turned True.
    pub ready_since: Option<Timestamp>,
    pub has_ip: bool,
    pub deleting: bool,
    /// Chosen by an HSD's scale-down (`paia.tech/draining`): it is about to go.
    pub draining: bool,
    pub busy: Busyness,
    /// The pod's `paia.tech/active-standby` annotation.
    pub mark: Option<String>,
}

impl PodFacts {
    pub fn labelled(&self) -> bool {
        is_designated(&self.labels)
    }

    fn reference(&self) -> PodRef {
        PodRef {
            name: self.name.clone(),
            uid: self.uid.clone(),
        }
    }

    fn is(&self, pod: &PodRef) -> bool {
        self.name == pod.name && (pod.uid.is_empty() || self.uid == pod.uid)
    }

    /// Why the pod cannot be master, if it cannot.
    pub fn ineligible(&self) -> Option<Ineligible> {
        if self.deleting {
            Some(Ineligible::Deleted)
        } else if self.draining {
            Some(Ineligible::Draining)
        } else if !self.ready {
            Some(Ineligible::NotReady)
        } else if !self.has_ip {
            Some(Ineligible::NoIp)
        } else {
            None
        }
    }
}

/// Whether two references name the same pod (a reference without a uid matches by name).
fn same_pod(a: Option<&PodRef>, b: Option<&PodRef>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.name == b.name && (a.uid.is_empty() || b.uid.is_empty() || a.uid == b.uid)
        }
        _ => false,
    }
}

/// Whether labels carry the master designation.
pub fn is_designated(labels: &BTreeMap<String, String>) -> bool {
    labels.get(DESIGNATION_LABEL).map(String::as_str) == Some(ACTIVE)
}

/// One namespace: its Services (active-standby or with a record to clean up) and its pods.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ObservedNamespace {
    pub namespace: String,
    pub services: Vec<ServiceFacts>,
    pub pods: Vec<PodFacts>,
}

/// Why a master is not, or no longer, fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Ineligible {
    /// No such pod (or one replaced under its name).
    Gone,
    /// Being deleted (deletionTimestamp set).
    Deleted,
    /// Drained by its HSD's scale-down (about to be deleted).
    Draining,
    NotReady,
    NoIp,
    /// The Service's selector no longer selects it.
    Unselected,
}

impl Ineligible {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Gone => "is gone",
            Self::Deleted => "is being deleted",
            Self::Draining => "is draining (its HSD scales it down)",
            Self::NotReady => "is not Ready",
            Self::NoIp => "has no pod IP",
            Self::Unselected => "is no longer selected",
        }
    }
}

/// Why the master changes: the metric label and the words of the event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum TransitionReason {
    /// The first master.
    Elected,
    Master(Ineligible),
    /// Another Service's master is among its pods, or its master is among another's.
    Conflict,
}

impl TransitionReason {
    /// A stable label value for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Elected => "elected",
            Self::Master(Ineligible::Gone) => "gone",
            Self::Master(Ineligible::Deleted) => "deleted",
            Self::Master(Ineligible::Draining) => "draining",
            Self::Master(Ineligible::NotReady) => "not_ready",
            Self::Master(Ineligible::NoIp) => "no_ip",
            Self::Master(Ineligible::Unselected) => "unselected",
            Self::Conflict => "conflict",
        }
    }
}

/// A change of master.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: Option<PodRef>,
    pub to: Option<PodRef>,
    pub reason: TransitionReason,
}

/// What to do with the selector's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectorChange {
    Keep,
    Add,
    Remove,
}

/// The compare-and-swap write of one Service: its record (`None`: remove it) and its selector
/// key, with the resourceVersion read as precondition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceWrite {
    pub record: Option<Record>,
    pub selector: SelectorChange,
}

/// A fence: the pod's label removed and its mark changed (so its resourceVersion changes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FenceWrite {
    pub pod: PodRef,
    pub mark: String,
    pub why: String,
}

/// A label on a new (or re-labelled) master, with the pod's resourceVersion as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelWrite {
    pub pod: PodRef,
    pub resource_version: String,
    pub mark: String,
    /// The Services whose master it is.
    pub services: Vec<String>,
}

/// What a Service is to this plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    /// Annotated, with a usable selector: it gets a master.
    Active,
    /// Annotated, but it cannot have a master (no usable selector).
    Invalid,
    /// Not annotated (any more), with a record: cleaned up.
    Cleanup,
}

/// One selected pod, as `explain` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodLine {
    pub name: String,
    pub ready: bool,
    pub ready_since: Option<String>,
    pub busy: Busyness,
    pub labelled: bool,
    /// Why it is not eligible, if it is not.
    pub ineligible: Option<Ineligible>,
    /// `master`, `candidate` (eligible, could take over), `excluded` (eligible, but a master of
    /// another Service is among its Services' pods), `ineligible`.
    pub role: String,
    /// Its rank among the candidates (1 = the next master), if it is one.
    pub rank: Option<usize>,
}

/// Why a Service's plan is what it is: what `explain svc/NAME` prints and `get svc` shows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceDecision {
    pub enabled: bool,
    /// The selector without the designation key.
    pub selector: BTreeMap<String, String>,
    /// The master as recorded (before this plan).
    pub recorded_master: Option<String>,
    /// Whether the recorded master is Ready.
    pub recorded_master_ready: Option<bool>,
    pub epoch: u64,
    pub failovers: u64,
    pub since: Option<String>,
    /// The master after this plan.
    pub master: Option<String>,
    /// Eligible pods that could take over from the master (conflicts excluded).
    pub candidates: usize,
    pub pods: Vec<PodLine>,
    pub warning: Option<String>,
    /// One line: `keep`, `elect X`, `failover X -> Y`, `clean up`, `nothing`.
    pub action: String,
    pub why: Vec<String>,
}

/// The plan of one Service.
#[derive(Clone, Debug, PartialEq)]
pub struct ServicePlan {
    pub name: String,
    pub uid: String,
    pub resource_version: String,
    pub role: Role,
    pub decision: ServiceDecision,
    /// Step 1: the compare-and-swap write.
    pub write: Option<ServiceWrite>,
    /// Step 3: compare-and-swap unchanged before a label (when there is no write).
    pub confirm: bool,
    /// Step 5: the record after step 1, without the former masters fenced in step 2.
    pub clear_unfenced: Option<Record>,
    pub events: Vec<PlannedEvent>,
    pub transition: Option<Transition>,
}

/// The plan of one namespace.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NamespacePlan {
    pub namespace: String,
    pub services: Vec<ServicePlan>,
    pub fences: Vec<FenceWrite>,
    pub labels: Vec<LabelWrite>,
}

impl NamespacePlan {
    /// Whether carrying it out writes anything (events aside).
    pub fn writes(&self) -> bool {
        !self.fences.is_empty()
            || !self.labels.is_empty()
            || self
                .services
                .iter()
                .any(|s| s.write.is_some() || s.confirm || s.clear_unfenced.is_some())
    }

    pub fn service(&self, name: &str) -> Option<&ServicePlan> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// The selector without our key, or why the Service cannot have a master.
fn user_selector(service: &ServiceFacts) -> Result<BTreeMap<String, String>, String> {
    let Some(selector) = &service.selector else {
        return Err("it has no selector (its endpoints are not managed by Kubernetes): give it a selector, or remove the qoqo.dev/service-mode annotation".to_string());
    };
    let mut selector = selector.clone();
    match selector.remove(DESIGNATION_LABEL) {
        Some(value) if value != ACTIVE => {
            return Err(format!(
                "its selector sets {DESIGNATION_LABEL}={value:?}; only {ACTIVE:?} is managed: remove that key from the selector"
            ));
        }
        _ => {}
    }
    if selector.is_empty() {
        return Err(format!(
            "its selector has no key besides {DESIGNATION_LABEL}: give it a selector for its pods"
        ));
    }
    Ok(selector)
}

fn selects(selector: &BTreeMap<String, String>, pod: &PodFacts) -> bool {
    selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
}

fn warning(reason: &'static str, note: String) -> PlannedEvent {
    PlannedEvent {
        type_: EventType::Warning,
        reason,
        note,
    }
}

fn normal(reason: &'static str, note: String) -> PlannedEvent {
    PlannedEvent {
        type_: EventType::Normal,
        reason,
        note,
    }
}

/// The order of candidates: not busy first, then the longest Ready, then the name.
fn rank_key(pod: &PodFacts) -> (Busyness, Timestamp, &str) {
    (
        pod.busy,
        pod.ready_since.unwrap_or(Timestamp::MAX),
        pod.name.as_str(),
    )
}

/// Where a Service's recorded master is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Recorded {
    None,
    Gone,
    /// Exists, but not selected.
    Unselected(usize),
    Selected(usize),
}

struct Active {
    service: usize,
    selector: BTreeMap<String, String>,
    /// Indices of the pods it selects.
    selection: BTreeSet<usize>,
    record: Record,
    unreadable: Option<String>,
    recorded: Recorded,
}

struct Choice {
    /// The pod that is master after this plan (labelled, if eligible).
    master: Option<usize>,
    /// The record's master stays as it is, although it is not chosen (it is gone, or no longer
    /// selected, and nothing can take over): the change is recorded when a pod can.
    hold: bool,
    reason: Option<TransitionReason>,
    /// (reason, message) of the Warning in force while the situation lasts: recorded, and
    /// sent when it starts.
    warning: Option<(&'static str, String)>,
    /// (reason, message) of a Warning about this change of master alone (a conflict it resolves).
    notice: Option<(&'static str, String)>,
    why: Vec<String>,
}

/// Plans one namespace.
pub fn plan(observed: &ObservedNamespace, now: Timestamp) -> NamespacePlan {
    let pods = &observed.pods;
    let find = |reference: &PodRef| pods.iter().position(|p| p.is(reference));
    let mut actives: Vec<Active> = Vec::new();
    let mut plans: Vec<ServicePlan> = Vec::new();
    let mut cleanups: Vec<(usize, Record)> = Vec::new();

    for (s, service) in observed.services.iter().enumerate() {
        let (record, unreadable) = match &service.record {
            None => (None, None),
            Some(Ok(record)) => (Some(record.clone()), None),
            Some(Err(error)) => (None, Some(error.clone())),
        };
        if !service.enabled {
            if let Some(record) = record {
                cleanups.push((s, record));
            }
            continue;
        }
        match user_selector(service) {
            Ok(selector) => {
                let selection: BTreeSet<usize> = pods
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| selects(&selector, p))
                    .map(|(i, _)| i)
                    .collect();
                let record = record.unwrap_or_default();
                let recorded = match record.master.as_ref().map(find) {
                    None => Recorded::None,
                    Some(None) => Recorded::Gone,
                    Some(Some(i)) if selection.contains(&i) => Recorded::Selected(i),
                    Some(Some(i)) => Recorded::Unselected(i),
                };
                actives.push(Active {
                    service: s,
                    selector,
                    selection,
                    record,
                    unreadable,
                    recorded,
                });
            }
            Err(problem) => plans.push(invalid_plan(service, record, unreadable, &problem)),
        }
    }

    // Decide the active Services one after another: those whose recorded master is still
    // eligible first (so that a sticky master wins a conflict), each group by name. The order
    // depends on nothing a plan writes, so the next pass decides the same.
    let eligible_master = |a: &Active| match a.recorded {
        Recorded::Selected(i) => pods[i].ineligible().is_none(),
        _ => false,
    };
    let mut order: Vec<usize> = (0..actives.len()).collect();
    order.sort_by_key(|&a| {
        let active = &actives[a];
        (
            !eligible_master(active),
            observed.services[active.service].name.clone(),
        )
    });
    let mut masters: BTreeMap<usize, usize> = BTreeMap::new(); // pod -> the active that chose it first
    let mut choices: Vec<Option<Choice>> = (0..actives.len()).map(|_| None).collect();
    for &a in &order {
        let choice = choose(a, &actives, &masters, observed);
        if let Some(m) = choice.master {
            masters.entry(m).or_insert(a);
        }
        choices[a] = Some(choice);
    }
    let master_set: BTreeSet<usize> = masters.keys().copied().collect();

    // Writes of the active Services.
    let mut fences: BTreeMap<PodRef, String> = BTreeMap::new();
    let mut labels: BTreeMap<usize, Vec<usize>> = BTreeMap::new(); // pod -> actives
    let mut active_plans: Vec<(usize, ServicePlan)> = Vec::new();
    for (a, active) in actives.iter().enumerate() {
        let choice = choices[a].take().expect("every active Service was decided");
        let service = &observed.services[active.service];
        let record = &active.record;
        let new_master = choice.master.map(|m| pods[m].reference());
        let changes_master = !choice.hold && !same_pod(record.master.as_ref(), new_master.as_ref());
        let selector_has_key = service
            .selector
            .as_ref()
            .is_some_and(|s| s.contains_key(DESIGNATION_LABEL));
        let mut next = record.clone();
        if active.unreadable.is_some() {
            // Start over, keeping nothing of what cannot be read; the key stays the user's.
            next = Record::default();
        }
        next.selector_added = next.selector_added || !selector_has_key;
        next.warning = choice.warning.as_ref().map(|(r, m)| format!("{r}: {m}"));
        let mut transition = None;
        if changes_master {
            next.epoch = record.epoch + 1;
            next.master = new_master.clone();
            next.since = new_master.as_ref().map(|_| now.to_string());
            if record.master.is_some() && new_master.is_some() {
                next.failovers = record.failovers + 1;
            }
            transition = Some(Transition {
                from: record.master.clone(),
                to: new_master.clone(),
                reason: choice.reason.unwrap_or(TransitionReason::Elected),
            });
        }
        // Every former master is fenced before anything is labelled, whatever the view says
        // of it: a pod the view does not show may exist all the same (the views of Services
        // and of pods are not taken at the same instant). A 404 is a fence too.
        let mut unfenced: BTreeSet<PodRef> = next.unfenced.iter().cloned().collect();
        if changes_master && let Some(old) = &record.master {
            unfenced.insert(old.clone());
        }
        // A former master chosen again (here or by a Service that shares it) keeps its label:
        // a late label of it is a label of a master.
        unfenced.retain(|p| !find(p).is_some_and(|i| master_set.contains(&i)));
        next.unfenced = unfenced.iter().cloned().collect();
        for pod in &unfenced {
            fences.entry(pod.clone()).or_insert_with(|| {
                format!(
                    "former master of {} (epoch {})",
                    service.name,
                    next.epoch.max(1)
                )
            });
        }
        let write = (service.record.is_none()
            || active.unreadable.is_some()
            || next != *record
            || !selector_has_key)
            .then(|| ServiceWrite {
                record: Some(next.clone()),
                selector: if selector_has_key {
                    SelectorChange::Keep
                } else {
                    SelectorChange::Add
                },
            });
        if let Some(m) = choice.master
            && pods[m].ineligible().is_none()
            && !pods[m].labelled()
        {
            labels.entry(m).or_default().push(a);
        }
        let clear_unfenced = (!next.unfenced.is_empty()).then(|| Record {
            unfenced: Vec::new(),
            ..next.clone()
        });
        let mut events = Vec::new();
        if let Some(error) = &active.unreadable {
            events.push(warning(
                "InvalidActiveStandbyRecord",
                format!("{error}; starting over with a new election"),
            ));
        }
        if let Some(t) = &transition {
            events.push(transition_event(t, &choice, pods, active));
        }
        if let Some((reason, message)) = choice.notice.clone() {
            events.push(warning(reason, message));
        }
        if next.warning.is_some() && next.warning != record.warning {
            let (reason, message) = choice.warning.clone().expect("a warning");
            events.push(warning(reason, message));
        }
        let decision = decide(
            observed,
            &actives,
            a,
            &choice,
            &next,
            transition.as_ref(),
            &master_set,
        );
        active_plans.push((
            a,
            ServicePlan {
                name: service.name.clone(),
                uid: service.uid.clone(),
                resource_version: service.resource_version.clone(),
                role: Role::Active,
                decision,
                write,
                confirm: false,
                clear_unfenced,
                events,
                transition,
            },
        ));
    }

    // Clean-up of Services that are no longer active-standby: the record and the key go first
    // (the Service resolves to all its pods again), then the labels.
    for (s, record) in cleanups {
        let service = &observed.services[s];
        let selector_has_key = service
            .selector
            .as_ref()
            .is_some_and(|sel| sel.contains_key(DESIGNATION_LABEL));
        let mut former: BTreeSet<PodRef> = record.unfenced.iter().cloned().collect();
        if let Some(master) = &record.master {
            former.insert(master.clone());
        }
        let selection: Vec<usize> = service
            .selector
            .as_ref()
            .map(|sel| {
                let mut sel = sel.clone();
                sel.remove(DESIGNATION_LABEL);
                sel
            })
            .filter(|sel| !sel.is_empty())
            .map(|sel| {
                pods.iter()
                    .enumerate()
                    .filter(|(_, p)| selects(&sel, p) && p.labelled())
                    .map(|(i, _)| i)
                    .collect()
            })
            .unwrap_or_default();
        for i in selection {
            former.insert(pods[i].reference());
        }
        for pod in former {
            // A master of an active Service keeps its label.
            if find(&pod).is_some_and(|i| master_set.contains(&i)) {
                continue;
            }
            fences
                .entry(pod)
                .or_insert_with(|| format!("{} is no longer active-standby", service.name));
        }
        let remove_key = record.selector_added && selector_has_key;
        plans.push(ServicePlan {
            name: service.name.clone(),
            uid: service.uid.clone(),
            resource_version: service.resource_version.clone(),
            role: Role::Cleanup,
            decision: ServiceDecision {
                enabled: false,
                recorded_master: record.master.as_ref().map(|m| m.name.clone()),
                epoch: record.epoch,
                failovers: record.failovers,
                since: record.since.clone(),
                action: "clean up".into(),
                why: vec![format!(
                    "the {} annotation is gone: remove the record{}, then the labels",
                    crate::api::active_standby::SERVICE_MODE_ANNOTATION,
                    if remove_key {
                        " and the selector key this tool added"
                    } else {
                        ""
                    }
                )],
                ..ServiceDecision::default()
            },
            write: Some(ServiceWrite {
                record: None,
                selector: if remove_key {
                    SelectorChange::Remove
                } else {
                    SelectorChange::Keep
                },
            }),
            confirm: false,
            clear_unfenced: None,
            events: vec![normal(
                "ActiveStandbyDisabled",
                format!(
                    "active-standby is off: removed the record{} and the master's label",
                    if remove_key {
                        " and the selector key"
                    } else {
                        ""
                    }
                ),
            )],
            transition: None,
        });
    }

    // Labels this tool wrote that no active Service's choice accounts for (a Service deleted,
    // a selector changed), and stray labels among an active Service's pods.
    for (i, pod) in pods.iter().enumerate() {
        if !pod.labelled() || master_set.contains(&i) {
            continue;
        }
        let ours = pod
            .mark
            .as_deref()
            .is_some_and(|m| m.starts_with(MASTER_MARK_PREFIX));
        let stray = actives.iter().any(|a| a.selection.contains(&i));
        if ours || stray {
            fences.entry(pod.reference()).or_insert_with(|| {
                if stray {
                    "labelled, but not the master".to_string()
                } else {
                    "labelled by this tool for a Service that no longer has it as master"
                        .to_string()
                }
            });
        }
    }

    // Labels: each after its Services' records are confirmed.
    let mut label_writes = Vec::new();
    for (m, chosen_by) in labels {
        let pod = &pods[m];
        let first = chosen_by[0];
        let epoch = active_plans
            .iter()
            .find(|(a, _)| *a == first)
            .and_then(|(_, p)| p.write.as_ref())
            .and_then(|w| w.record.as_ref())
            .map_or(actives[first].record.epoch, |r| r.epoch);
        // Every active Service that selects the pod must still have the record this plan saw.
        for (a, plan) in active_plans.iter_mut() {
            if actives[*a].selection.contains(&m) && plan.write.is_none() {
                plan.confirm = true;
            }
        }
        label_writes.push(LabelWrite {
            pod: pod.reference(),
            resource_version: pod.resource_version.clone(),
            mark: format!(
                "{MASTER_MARK_PREFIX}{} (epoch {epoch})",
                observed.services[actives[first].service].name
            ),
            services: {
                let mut names: Vec<String> = chosen_by
                    .iter()
                    .map(|a| observed.services[actives[*a].service].name.clone())
                    .collect();
                names.sort();
                names
            },
        });
    }

    let stamp = now.to_string();
    let fence_writes = fences
        .into_iter()
        .map(|(pod, why)| FenceWrite {
            mark: format!("fenced at {stamp} ({why})"),
            pod,
            why,
        })
        .collect();
    active_plans.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    plans.extend(active_plans.into_iter().map(|(_, p)| p));
    plans.sort_by(|a, b| a.name.cmp(&b.name));
    NamespacePlan {
        namespace: observed.namespace.clone(),
        services: plans,
        fences: fence_writes,
        labels: label_writes,
    }
}

/// Chooses the master of one active Service, given the masters already chosen.
fn choose(
    a: usize,
    actives: &[Active],
    masters: &BTreeMap<usize, usize>,
    observed: &ObservedNamespace,
) -> Choice {
    let pods = &observed.pods;
    let active = &actives[a];
    let name_of = |other: usize| observed.services[actives[other].service].name.as_str();
    let mut why = Vec::new();
    // Adding `c` as a master keeps at most one master among every active Service's pods.
    let conflict_of = |c: usize| -> Option<(usize, usize)> {
        actives.iter().enumerate().find_map(|(u, other)| {
            if !other.selection.contains(&c) {
                return None;
            }
            masters
                .keys()
                .find(|m| **m != c && other.selection.contains(m))
                .map(|m| (u, *m))
        })
    };
    let forced: Vec<usize> = masters
        .keys()
        .copied()
        .filter(|m| active.selection.contains(m))
        .collect();
    let recorded = active.recorded;
    let recorded_name = active
        .record
        .master
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let master_problem = match recorded {
        Recorded::None => None,
        Recorded::Gone => Some(Ineligible::Gone),
        Recorded::Unselected(_) => Some(Ineligible::Unselected),
        Recorded::Selected(r) => pods[r].ineligible(),
    };
    let eligible: Vec<usize> = active
        .selection
        .iter()
        .copied()
        .filter(|&p| pods[p].ineligible().is_none())
        .collect();

    if let [m] = forced[..] {
        let owner = name_of(masters[&m]);
        let keep = recorded == Recorded::Selected(m);
        why.push(format!(
            "{} is the master of Service {owner} and is among this Service's pods: both share it",
            pods[m].name
        ));
        let mut warning = None;
        let mut notice = None;
        let mut reason = None;
        if !keep {
            match (recorded, master_problem) {
                (Recorded::Selected(_), None) => {
                    notice = Some((
                        "ActiveStandbyConflict",
                        format!(
                            "shares pods with Service {owner}, whose master is {}: {} gives way to it (two masters among shared pods would both receive traffic)",
                            pods[m].name, recorded_name
                        ),
                    ));
                    reason = Some(TransitionReason::Conflict);
                }
                (Recorded::None, _) => reason = Some(TransitionReason::Elected),
                (_, Some(problem)) => reason = Some(TransitionReason::Master(problem)),
                (_, None) => reason = Some(TransitionReason::Conflict),
            }
        }
        if pods[m].ineligible().is_some() {
            let others: Vec<usize> = eligible.iter().copied().filter(|p| *p != m).collect();
            if !others.is_empty() {
                warning = Some((
                    "ActiveStandbyConflict",
                    format!(
                        "its pods include {}, the master of Service {owner}, which {}: this Service cannot fail over until {owner} does",
                        pods[m].name,
                        pods[m].ineligible().map_or("", Ineligible::describe)
                    ),
                ));
            }
        }
        return Choice {
            master: Some(m),
            hold: false,
            reason,
            warning,
            notice,
            why,
        };
    }
    if forced.len() > 1 {
        // Never reached: a choice that makes this happen is never made. Kept safe anyway.
        return Choice {
            master: None,
            hold: false,
            reason: Some(TransitionReason::Conflict),
            warning: Some((
                "ActiveStandbyConflict",
                format!(
                    "its pods include the masters of other Services ({}): it cannot have one of its own",
                    forced
                        .iter()
                        .map(|m| pods[*m].name.clone())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
            notice: None,
            why,
        };
    }

    // No master among its pods yet.
    if let Recorded::Selected(r) = recorded
        && master_problem.is_none()
    {
        match conflict_of(r) {
            None => {
                why.push(format!(
                    "{} is the recorded master and is eligible: it stays (election is sticky)",
                    pods[r].name
                ));
                return Choice {
                    master: Some(r),
                    hold: false,
                    reason: None,
                    warning: None,
                    notice: None,
                    why,
                };
            }
            Some((u, m)) => why.push(format!(
                "{} is eligible, but it is among the pods of Service {}, whose master is {}",
                pods[r].name,
                name_of(u),
                pods[m].name
            )),
        }
    } else if let Some(problem) = master_problem {
        why.push(format!(
            "the recorded master {recorded_name} {}",
            problem.describe()
        ));
    } else {
        why.push("no master yet".to_string());
    }
    let mut candidates: Vec<usize> = Vec::new();
    let mut excluded = BTreeSet::new();
    for &p in &eligible {
        if recorded == Recorded::Selected(p) && master_problem.is_none() {
            excluded.insert(p);
            continue;
        }
        match conflict_of(p) {
            None => candidates.push(p),
            Some(_) => {
                excluded.insert(p);
            }
        }
    }
    candidates.sort_by(|x, y| rank_key(&pods[*x]).cmp(&rank_key(&pods[*y])));
    if let Some(&best) = candidates.first() {
        let reason = match (recorded, master_problem) {
            (Recorded::None, _) => TransitionReason::Elected,
            (_, Some(problem)) => TransitionReason::Master(problem),
            (_, None) => TransitionReason::Conflict,
        };
        why.push(format!(
            "{} is the best of {} eligible candidate(s): {}",
            pods[best].name,
            candidates.len(),
            describe_rank(&pods[best])
        ));
        let notice = (reason == TransitionReason::Conflict).then(|| {
            (
                "ActiveStandbyConflict",
                format!(
                    "its master {recorded_name} is among the pods of another active-standby Service with a master of its own: {} takes over",
                    pods[best].name
                ),
            )
        });
        return Choice {
            master: Some(best),
            hold: false,
            reason: Some(reason),
            warning: None,
            notice,
            why,
        };
    }
    // No candidate.
    let conflict_only = !excluded.is_empty();
    let keep = match recorded {
        Recorded::Selected(r) if conflict_of(r).is_none() => Some(r),
        _ => None,
    };
    let warning = if conflict_only {
        (
            "ActiveStandbyConflict",
            "every eligible pod is among the pods of another active-standby Service that has a master: no master can be chosen without giving that Service two".to_string(),
        )
    } else if active.selection.is_empty() {
        ("NoEligiblePod", "its selector selects no pod".to_string())
    } else if keep.is_some() {
        (
            "NoEligiblePod",
            format!(
                "the master {recorded_name} {} and no other selected pod is eligible (Ready, with a pod IP, not being deleted): it keeps the label until one is",
                master_problem.map_or("", Ineligible::describe)
            ),
        )
    } else {
        (
            "NoEligiblePod",
            "no selected pod is eligible (Ready, with a pod IP, not being deleted)".to_string(),
        )
    };
    why.push(warning.1.clone());
    let (master, hold, reason) = match (keep, recorded) {
        (Some(r), _) => (Some(r), false, None),
        // The recorded master must give way, and nothing replaces it.
        (None, Recorded::Selected(_)) => (None, false, Some(TransitionReason::Conflict)),
        // No master, or one that is gone or no longer selected: the record stays as it is
        // until a pod can take over.
        (None, _) => (None, true, None),
    };
    Choice {
        master,
        hold,
        reason,
        warning: Some(warning),
        notice: None,
        why,
    }
}

fn describe_rank(pod: &PodFacts) -> String {
    let busy = match pod.busy {
        Busyness::Idle => "not busy",
        Busyness::Unknown => "busy state unknown",
        Busyness::Busy => "busy",
    };
    match pod.ready_since {
        Some(since) => format!("{busy}, Ready since {since}"),
        None => busy.to_string(),
    }
}

fn transition_event(
    t: &Transition,
    choice: &Choice,
    pods: &[PodFacts],
    active: &Active,
) -> PlannedEvent {
    let to = t.to.as_ref().map(|p| p.name.as_str()).unwrap_or("nobody");
    let detail = choice
        .master
        .map(|m| describe_rank(&pods[m]))
        .unwrap_or_default();
    match (&t.from, t.reason) {
        (None, _) => normal("MasterElected", format!("elected {to} ({detail})")),
        (Some(from), reason) => {
            let why = match reason {
                TransitionReason::Master(problem) => {
                    format!("{} {}", from.name, problem.describe())
                }
                TransitionReason::Conflict => format!(
                    "{} gives way to a master shared with another Service",
                    from.name
                ),
                TransitionReason::Elected => String::new(),
            };
            normal(
                "MasterFailover",
                format!(
                    "from {} to {to} ({detail}): {why}; failover {} of this Service",
                    from.name,
                    active.record.failovers + 1
                ),
            )
        }
    }
}

fn decide(
    observed: &ObservedNamespace,
    actives: &[Active],
    a: usize,
    choice: &Choice,
    next: &Record,
    transition: Option<&Transition>,
    masters: &BTreeSet<usize>,
) -> ServiceDecision {
    let active = &actives[a];
    let service = &observed.services[active.service];
    let pods = &observed.pods;
    let master = choice.master;
    // A pod could take over if, in place of this master, it would be the only master among
    // the pods of every Service that selects it.
    let excluded = |p: usize| {
        actives.iter().any(|u| {
            u.selection.contains(&p)
                && masters
                    .iter()
                    .any(|m| *m != p && Some(*m) != master && u.selection.contains(m))
        })
    };
    let mut candidates: Vec<usize> = active
        .selection
        .iter()
        .copied()
        .filter(|p| Some(*p) != master && pods[*p].ineligible().is_none() && !excluded(*p))
        .collect();
    candidates.sort_by(|x, y| rank_key(&pods[*x]).cmp(&rank_key(&pods[*y])));
    let lines = active
        .selection
        .iter()
        .map(|&p| {
            let pod = &pods[p];
            let role = if Some(p) == master {
                "master"
            } else if pod.ineligible().is_some() {
                "ineligible"
            } else if excluded(p) {
                "excluded"
            } else {
                "candidate"
            };
            PodLine {
                name: pod.name.clone(),
                ready: pod.ready,
                ready_since: pod.ready_since.map(|t| t.to_string()),
                busy: pod.busy,
                labelled: pod.labelled(),
                ineligible: pod.ineligible(),
                role: role.to_string(),
                rank: candidates.iter().position(|c| *c == p).map(|i| i + 1),
            }
        })
        .collect();
    let recorded_master = active.record.master.as_ref().map(|m| m.name.clone());
    let recorded_master_ready = match active.recorded {
        Recorded::Selected(r) | Recorded::Unselected(r) => Some(pods[r].ready),
        Recorded::Gone => Some(false),
        Recorded::None => None,
    };
    let action = match transition {
        Some(Transition {
            from: None,
            to: Some(to),
            ..
        }) => format!("elect {}", to.name),
        Some(Transition {
            from: Some(from),
            to: Some(to),
            ..
        }) => format!("failover {} -> {}", from.name, to.name),
        Some(Transition {
            from: Some(from),
            to: None,
            ..
        }) => format!("drop {}", from.name),
        _ => match master {
            Some(m) if !pods[m].labelled() && pods[m].ineligible().is_none() => {
                format!("label {}", pods[m].name)
            }
            Some(_) => "keep".to_string(),
            None => "nothing".to_string(),
        },
    };
    ServiceDecision {
        enabled: service.enabled,
        selector: active.selector.clone(),
        recorded_master,
        recorded_master_ready,
        epoch: next.epoch,
        failovers: next.failovers,
        since: next.since.clone(),
        master: master.map(|m| pods[m].name.clone()),
        candidates: candidates.len(),
        pods: lines,
        warning: next.warning.clone(),
        action,
        why: choice.why.clone(),
    }
}

/// The plan of an annotated Service that cannot have a master.
fn invalid_plan(
    service: &ServiceFacts,
    record: Option<Record>,
    unreadable: Option<String>,
    problem: &str,
) -> ServicePlan {
    let warning_text = format!("InvalidActiveStandbyService: {problem}");
    let current = record.clone().unwrap_or_default();
    let mut next = current.clone();
    next.warning = Some(warning_text.clone());
    let changed = record.is_none() || unreadable.is_some() || next != current;
    let mut events = Vec::new();
    if changed && current.warning.as_deref() != Some(warning_text.as_str()) {
        events.push(warning("InvalidActiveStandbyService", problem.to_string()));
    }
    ServicePlan {
        name: service.name.clone(),
        uid: service.uid.clone(),
        resource_version: service.resource_version.clone(),
        role: Role::Invalid,
        decision: ServiceDecision {
            enabled: true,
            recorded_master: current.master.as_ref().map(|m| m.name.clone()),
            epoch: current.epoch,
            failovers: current.failovers,
            since: current.since.clone(),
            warning: Some(warning_text),
            action: "nothing".into(),
            why: vec![problem.to_string()],
            ..ServiceDecision::default()
        },
        write: changed.then_some(ServiceWrite {
            record: Some(next),
            selector: SelectorChange::Keep,
        }),
        confirm: false,
        clear_unfenced: None,
        events,
        transition: None,
    }
}

#[cfg(test)]
mod tests;
