//! The scaling plan: a pure function of what a pass observed and the time.
//!
//! Nothing here sees a client or the clock, so every rule is unit-tested table-driven and
//! property-tested. [`plan`] runs the named steps in order; each step is a module with its own
//! tests: [`count`] (each pod's state), [`target`] (the formula and its bounds), [`stabilize`]
//! (the scale-down delay), [`protect`] (deletion costs and what holds a scale-down) and
//! [`step`] (how far one scale-down may go). `execute` carries the plan out.
//!
//! [`active_standby`] is the plan of the other kind, active-standby Services, one namespace at a
//! time. The two meet in [`count`]: the master of an active-standby Service is busy for its HSD.

pub mod active_standby;
pub mod conditions;
pub mod count;
pub mod drain;
pub mod explain;
pub mod hsj;
pub mod input;
pub mod protect;
pub mod sleep;
pub mod stabilize;
pub mod step;
pub mod target;
pub mod template;
pub mod validate;

use std::time::Duration;

use jiff::Timestamp;

pub use conditions::{Conditions, condition};
pub use count::{
    BusyAnnotation, Counted, Counts, PodState, UNSCHEDULABLE_WARNING_AFTER, classify, count,
    is_counted, parse_busy_annotation,
};
pub use drain::{DRAIN_GRACE, DRAIN_SETTLE, DRAINING_DELETION_COST, PodFates, PodRef, Removal};
pub use explain::Decision;
pub use input::{ObservedDeployment, ObservedHsd, ObservedPod, PodPhase, ProbeOutcome};
pub use protect::{
    BUSY_DELETION_COST, CostWrite, DELETION_COST_ANNOTATION, Hold, effective_cost, is_protected,
    wanted_cost,
};
pub use stabilize::{MAX_RECOMMENDATIONS, stabilize};
pub use step::{deletion_rank, safe_deletions};
pub use target::{
    Bound, Formula, Recommendation, effective_max_replicas, idle_target, idle_target_with,
    recommend, recommend_with,
};
pub use template::{
    busy_annotation_in_template, child_template, legacy_template_hash, selector_matches,
    template_hash, template_label, template_labels,
};
pub use validate::validate_spec;

use crate::api::hsd::{
    HotStandbyDeploymentSpec, HotStandbyDeploymentStatus, RetiredPod, RolloutStatus,
};

/// The label Deployments put on their pods, one value per ReplicaSet.
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

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

pub(crate) fn normal(reason: &'static str, note: String) -> PlannedEvent {
    PlannedEvent {
        type_: EventType::Normal,
        reason,
        note,
    }
}

pub(crate) fn warning(reason: &'static str, note: String) -> PlannedEvent {
    PlannedEvent {
        type_: EventType::Warning,
        reason,
        note,
    }
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
        /// unchanged: label its ReplicaSets' templates and its pods first (the Deployment
        /// paused meanwhile), so that the new template matches the running ReplicaSet and
        /// nothing rolls out.
        relabel: bool,
    },
    /// Something stops the pass from touching it (invalid spec, paused, not ours).
    Blocked,
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
    /// The pods that leave, and how (each a compare-and-swap on what was read).
    pub fates: PodFates,
    pub deployment: DeploymentAction,
    /// `(from, to)` when the replica count changes.
    pub scale: Option<(i32, i32)>,
    pub status: HotStandbyDeploymentStatus,
    /// Whether `status` differs from the HSD's current status (a write is needed).
    pub status_changed: bool,
    pub events: Vec<PlannedEvent>,
    /// Scale to zero: asleep or not, and the shared deadline to move.
    pub sleep: sleep::Sleep,
}

impl Plan {
    /// The replicas the HSD wants: the bounded formula, or 0 while asleep.
    pub fn desired(&self) -> Option<i32> {
        self.recommendation
            .map(|r| if self.sleep.asleep { 0 } else { r.replicas })
    }

    /// When to look at the HSD again for a drop held by its drain: once the youngest drained
    /// pod's mark is `DRAIN_SETTLE` old, and never later than a settle from `now` (a pass in
    /// between, for another change, must not restart the wait; a mark ahead of this clock is
    /// looked at again after one settle).
    pub fn drop_held_for(&self, now: Timestamp) -> Option<std::time::Duration> {
        let decision = self.decision.as_ref()?;
        decision.held_for_drain?;
        let settle = DRAIN_SETTLE.unsigned_abs();
        let left = decision.drain_settles_at.map_or(settle, |at| {
            std::time::Duration::try_from(at.duration_since(now))
                .unwrap_or(std::time::Duration::ZERO)
                .min(settle)
        });
        Some(left + std::time::Duration::from_millis(50))
    }
}

/// Plans one HSD: count, target, stabilize, then protect and step for the child Deployment.
pub fn plan(observed: &ObservedHsd, now: Timestamp) -> Plan {
    let previous = observed.status.clone().unwrap_or_default();
    let mut conditions = Conditions::new(&previous.conditions, now, observed.generation);
    let mut events = Vec::new();

    let spec = match &observed.spec {
        Ok(spec) => validate_spec(spec).map(|()| spec),
        Err(parse_error) => Err(format!("the spec cannot be read: {parse_error}")),
    };
    let spec = match spec {
        Ok(spec) => spec,
        Err(message) => return invalid(observed, previous, conditions, events, message),
    };
    conditions.set(condition::INVALID_SPEC, false, "Valid", "the spec is valid");

    // 1. Count.
    let current_template = template_label(&observed.namespace, &observed.name, spec);
    let counted = count(&observed.pods, spec, &current_template, now);
    report_pods(observed, spec, &counted, &mut conditions, &mut events);

    // 2. Target. A master slot with no labelled pod (a failover under way) counts as busy.
    let master_reserved = i32::from(observed.master_slot && counted.busy_as_master == 0);
    let target_counts = Counts {
        busy: counted.counts.busy + master_reserved,
        ..counted.counts
    };
    let recommendation = recommend(&target_counts, spec);
    let (idle_target_in_force, from_percent) = idle_target(&target_counts, spec);
    report_limit(&recommendation, &mut conditions, &mut events);

    // 3. Stabilize.
    let delay_seconds = spec.scale_down_delay_seconds.unwrap_or(0).max(0);
    let window = Duration::from_secs(u64::try_from(delay_seconds).unwrap_or(0));
    let (stabilized, recent_recommendations) = stabilize(
        recommendation.replicas,
        &previous.recent_recommendations,
        window,
        now,
    );

    // Scale to zero: asleep, whatever the bounds say, once nothing has been busy for the period.
    let sleep = sleep::decide(
        spec.scale_to_zero.as_ref().map(|s| s.after_seconds),
        observed.sleep_deadline,
        target_counts.busy + counted.counts.unknown,
        now,
    );
    let stabilized = if sleep.asleep { 0 } else { stabilized };
    report_sleep(&sleep, spec, observed, &mut conditions);

    let mut decision = Decision {
        asleep: sleep.asleep,
        busy_by_annotation: counted.busy_by_annotation,
        busy_by_probe: counted.busy_by_probe,
        busy_by_invalid_annotation: counted.busy_by_invalid_annotation,
        busy_as_master: counted.busy_as_master,
        master_reserved,
        unknown: counted.counts.unknown,
        idle: counted.counts.idle,
        starting: counted.counts.starting,
        terminating: counted.terminating,
        unschedulable: counted.unschedulable,
        idle_target_fixed: spec.idle_target,
        idle_target_from_percent: from_percent,
        idle_target: idle_target_in_force,
        min_replicas: spec.min_replicas,
        max_replicas: spec.max_replicas,
        formula: recommendation.unbounded,
        bounded: recommendation.replicas,
        unknown_capped_at: recommendation.unknown_capped_at,
        scale_down_delay_seconds: delay_seconds,
        held_by_delay: (stabilized > recommendation.replicas).then_some(stabilized),
        ..Decision::default()
    };

    // 4 and 5. Protect and step: what the child Deployment gets.
    let child = decide_child(
        observed,
        spec,
        &counted,
        stabilized,
        &mut decision,
        &mut conditions,
        &mut events,
        now,
    );
    decision.replicas = child.replicas;
    decision.why = explain::explain_steps(&decision, observed.paused, &child.action);

    if let Some((from, to)) = child.scale {
        let reason = if to > from { "ScaledUp" } else { "ScaledDown" };
        events.push(normal(
            reason,
            explain::scale_message(
                from,
                to,
                &target_counts,
                idle_target_in_force,
                &recommendation,
                &decision,
            ),
        ));
    }
    if child.action != DeploymentAction::Blocked || observed.paused {
        // The same words before and after the scale, so that the next pass writes nothing.
        let message = if observed.paused {
            "paused: no scaling until the annotation is removed".to_string()
        } else {
            format!(
                "the child Deployment is kept at {} replicas",
                child.replicas
            )
        };
        let reason = if observed.paused {
            "Paused"
        } else {
            "Reconciled"
        };
        conditions.set(condition::READY, !observed.paused, reason, &message);
    }

    let last_scale_time = match child.scale {
        Some(_) if !observed.paused => Some(now.to_string()),
        _ => previous.last_scale_time.clone(),
    };
    let relabelling = matches!(child.action, DeploymentAction::Apply { relabel: true, .. });
    let status = if relabelling {
        // The child's pods are not the HSD's by label yet: the counts of this pass would be
        // false. The status keeps the last ones until the next pass sees the pods.
        HotStandbyDeploymentStatus {
            observed_generation: observed.generation,
            conditions: conditions.finish(),
            ..previous.clone()
        }
    } else {
        HotStandbyDeploymentStatus {
            busy_count: counted.counts.busy,
            idle_count: counted.counts.idle,
            starting_count: counted.counts.starting,
            unknown_count: counted.counts.unknown,
            terminating_count: counted.terminating,
            desired_replicas: if sleep.asleep {
                0
            } else {
                recommendation.replicas
            },
            replicas: counted.counts.total(),
            observed_generation: observed.generation,
            last_scale_time,
            recent_recommendations,
            rollout: child.rollout.clone(),
            conditions: conditions.finish(),
        }
    };
    Plan {
        counts: counted.counts,
        pod_states: counted.pod_states(),
        recommendation: Some(recommendation),
        decision: Some(decision),
        cost_writes: child.cost_writes,
        fates: child.fates,
        deployment: child.action,
        scale: child.scale,
        status_changed: status != previous,
        status,
        events,
        sleep,
    }
}

/// The `Asleep` condition of an HSD with `scaleToZero`.
fn report_sleep(
    sleep: &sleep::Sleep,
    spec: &HotStandbyDeploymentSpec,
    observed: &ObservedHsd,
    conditions: &mut Conditions,
) {
    let Some(scale_to_zero) = &spec.scale_to_zero else {
        conditions.remove(condition::ASLEEP);
        return;
    };
    if sleep.asleep {
        let since = observed
            .sleep_deadline
            .map_or_else(String::new, |d| format!(" since {d}"));
        conditions.set(
            condition::ASLEEP,
            true,
            "ScaledToZero",
            &format!(
                "no busy pod and no proxied connection for {}s{since}: the first connection through `kubectl hsd proxy --hsd {}` wakes it",
                scale_to_zero.after_seconds, observed.name
            ),
        );
    } else {
        conditions.set(
            condition::ASLEEP,
            false,
            "Awake",
            &format!(
                "sleeps at 0 replicas after {}s without a busy pod or a proxied connection",
                scale_to_zero.after_seconds
            ),
        );
    }
}

/// The plan of an HSD whose spec cannot be used: a condition and a Warning, nothing touched.
fn invalid(
    observed: &ObservedHsd,
    previous: HotStandbyDeploymentStatus,
    mut conditions: Conditions,
    mut events: Vec<PlannedEvent>,
    message: String,
) -> Plan {
    if conditions.set(condition::INVALID_SPEC, true, "InvalidSpec", &message) {
        events.push(warning("InvalidSpec", message.clone()));
    }
    conditions.set(condition::READY, false, "InvalidSpec", &message);
    let status = HotStandbyDeploymentStatus {
        conditions: conditions.finish(),
        observed_generation: observed.generation,
        ..previous.clone()
    };
    Plan {
        counts: Counts::default(),
        pod_states: Vec::new(),
        recommendation: None,
        decision: None,
        cost_writes: Vec::new(),
        fates: PodFates::default(),
        deployment: DeploymentAction::Blocked,
        scale: None,
        status_changed: status != previous,
        status,
        events,
        sleep: sleep::Sleep::default(),
    }
}

/// The conditions (and transition Warnings) that the pods alone decide.
fn report_pods(
    observed: &ObservedHsd,
    spec: &HotStandbyDeploymentSpec,
    counted: &Counted,
    conditions: &mut Conditions,
    events: &mut Vec<PlannedEvent>,
) {
    match explain::probe_degraded_message(
        observed.probes_cut_short,
        &counted.probe_failures,
        &counted.invalid_annotations,
        &spec.busy_probe.annotation_key,
    ) {
        Some((reason, message)) => {
            if conditions.set(condition::PROBE_DEGRADED, true, reason, &message) {
                events.push(warning(reason, message));
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
    let unschedulable = &counted.unschedulable_too_long;
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
}

/// `ScalingLimited`, and a Warning when maxReplicas starts capping the formula.
pub(crate) fn report_limit(
    recommendation: &Recommendation,
    conditions: &mut Conditions,
    events: &mut Vec<PlannedEvent>,
) {
    match target::limit_message(recommendation) {
        Some((reason, message)) => {
            let changed = conditions.set(condition::SCALING_LIMITED, true, reason, &message);
            // Being held at minReplicas is normal operation; running out of room is worth a warning.
            if changed && recommendation.limited_by == Some(Bound::Max) {
                events.push(warning("ScalingLimited", message));
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
}

/// What the pass does to the child Deployment and to the pods.
struct Child {
    action: DeploymentAction,
    replicas: i32,
    scale: Option<(i32, i32)>,
    cost_writes: Vec<CostWrite>,
    fates: PodFates,
    rollout: Option<RolloutStatus>,
}

/// Protect and step: from the stabilized count to what the child Deployment gets this pass.
#[allow(clippy::too_many_arguments)]
fn decide_child(
    observed: &ObservedHsd,
    spec: &HotStandbyDeploymentSpec,
    counted: &Counted,
    stabilized: i32,
    decision: &mut Decision,
    conditions: &mut Conditions,
    events: &mut Vec<PlannedEvent>,
    now: Timestamp,
) -> Child {
    let previous_rollout = observed.status.as_ref().and_then(|s| s.rollout.clone());
    let hash = template_hash(&observed.namespace, &observed.name, spec);
    let mut desired = stabilized;
    if observed.paused {
        conditions.set(
            condition::PAUSED,
            true,
            "Paused",
            &format!(
                "the {} annotation stops all scaling",
                crate::api::hsd::PAUSED_ANNOTATION
            ),
        );
        let owned = observed.deployment.as_ref().is_some_and(|d| d.owned);
        return Child {
            action: DeploymentAction::Blocked,
            replicas: desired,
            scale: None,
            cost_writes: if owned {
                protect::cost_changes(&counted.classified, false)
            } else {
                Vec::new()
            },
            fates: PodFates::default(),
            rollout: previous_rollout.clone(),
        };
    }
    conditions.remove(condition::PAUSED);
    let Some(deployment) = &observed.deployment else {
        events.push(normal(
            "Created",
            format!(
                "created Deployment {}-workload with {desired} replicas",
                observed.name
            ),
        ));
        return Child {
            action: DeploymentAction::Apply {
                replicas: desired,
                template_hash: hash,
                relabel: false,
            },
            replicas: desired,
            scale: None,
            cost_writes: Vec::new(),
            fates: PodFates::default(),
            rollout: previous_rollout.clone(),
        };
    };
    if !deployment.owned {
        let message = format!(
            "a Deployment named {}-workload exists and is not owned by this HotStandbyDeployment: delete or rename it, or rename the HotStandbyDeployment",
            observed.name
        );
        if conditions.set(condition::READY, false, "DeploymentNotOwned", &message) {
            events.push(warning("DeploymentNotOwned", message));
        }
        return Child {
            action: DeploymentAction::Blocked,
            replicas: desired,
            scale: None,
            cost_writes: Vec::new(),
            fates: PodFates::default(),
            rollout: previous_rollout.clone(),
        };
    }

    let current = deployment.replicas.unwrap_or(1);
    decision.current_replicas = Some(current);
    let relabel = deployment.relabelling
        || deployment.template_hash.as_deref() == Some(legacy_template_hash(spec).as_str());
    let current_template = template_label(&observed.namespace, &observed.name, spec);
    // The ReplicaSet's own pods: the current template's, not detached, and not drained by an
    // earlier pass (those are on their way out: the ReplicaSet deletes them first, or this pass
    // does).
    let rs_pods: Vec<(&ObservedPod, PodState)> = counted
        .classified
        .iter()
        .filter(|(pod, state)| {
            let drained_earlier = pod.draining && *state == PodState::Leaving;
            !(count::is_old(pod, &current_template) || drained_earlier)
        })
        .copied()
        .collect();
    // Busy pods of earlier templates run beside the Deployment until their work ends: they
    // count toward the total, and the Deployment gets the rest.
    let outside = counted
        .classified
        .iter()
        .filter(|(pod, state)| count::is_old(pod, &current_template) && is_protected(*state))
        .count();
    let outside = i32::try_from(outside).unwrap_or(i32::MAX);
    decision.old_busy = outside;
    let active = i32::try_from(rs_pods.len()).unwrap_or(i32::MAX);
    let mut victims = Vec::new();
    let mut draining_now = false;
    if relabel {
        // Pods made before the labels were injected are not the HSD's by label yet: this pass
        // only relabels; the next one, which sees them, decides.
        desired = current;
    } else {
        desired = (desired - outside).max(0);
        // Step: no deeper than the ReplicaSet's ranking makes safe, should it ever choose.
        if desired < active {
            let lowest_safe = step::lowest_safe(&rs_pods);
            if lowest_safe > desired {
                decision.held_to_protect_busy = Some(lowest_safe);
                desired = lowest_safe;
            }
        }
        // Protect: what keeps the current count.
        let held = protect::hold(&rs_pods, observed.probes_cut_short, current, desired);
        match held {
            Some(Hold::ProbeDeadline) => decision.held_for_probe_deadline = Some(current),
            Some(Hold::Rollout) => decision.held_for_rollout = Some(current),
            Some(Hold::CostsUnseen) => decision.held_for_costs = Some(current),
            None => {}
        }
        if held.is_some() {
            desired = current;
        }
        // The pods that go are chosen here, never by the ReplicaSet.
        if desired < active {
            victims = drain::victims(&rs_pods, usize::try_from(active - desired).unwrap_or(0));
        }
        // Replicas drop to the pods that stay, no further, and only past drained pods the
        // ReplicaSet has had `DRAIN_SETTLE` to see: this pass's victims are marked now and
        // dropped by a later pass. A drop in the same pass as the mark let a ReplicaSet whose
        // pod cache lagged choose among pods that all looked idle, and once (CI, 2026-12-03)
        // it took one that had just turned busy. Pods the ReplicaSet owes beyond these (made
        // after this pass read, or not made yet) are its surplus: it removes those itself,
        // unmade or Pending, so before any work could reach them. Holding replicas for them
        // instead stalled scale-downs for as long as the controller-manager was slow to make
        // them (after an etcd restart, > 60 s).
        let settling_marks: Vec<Option<Timestamp>> = counted
            .classified
            .iter()
            .filter(|(pod, state)| {
                *state == PodState::Leaving
                    && !count::is_old(pod, &current_template)
                    && drain::settling(pod, now)
            })
            .map(|(pod, _)| pod.draining_since)
            .collect();
        let settling = i32::try_from(settling_marks.len()).unwrap_or(i32::MAX);
        if desired < current {
            let floor = (active + settling).min(current);
            if floor > desired && (settling > 0 || !victims.is_empty()) {
                decision.held_for_drain = Some(floor);
                // This pass's victims are marked now: theirs are the youngest marks.
                let youngest = if victims.is_empty() {
                    settling_marks.into_iter().flatten().max()
                } else {
                    Some(now)
                };
                decision.drain_settles_at = youngest.map(|at| at + DRAIN_SETTLE);
            }
            desired = desired.max(floor);
        }
        draining_now = settling > 0 || !victims.is_empty();
    }
    let lowers = desired < current || desired < active || current < active || draining_now;
    let cost_writes = protect::cost_changes(&counted.classified, !lowers);
    let fates = if relabel {
        PodFates::default()
    } else {
        drain::fates(
            &counted.classified,
            &victims,
            spec,
            &current_template,
            desired < current,
            now,
        )
    };
    decision.drained = fates.drained().map(|d| d.pod.clone()).collect();
    if !fates.retire.is_empty() {
        events.push(normal(
            "Retired",
            format!(
                "{} busy pod(s) of an earlier template keep running until their work ends: {}",
                fates.retire.len(),
                fates
                    .retire
                    .iter()
                    .map(|r| r.pod.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    for (pod, why) in &fates.remove {
        if *why == Removal::MaxBusyExceeded {
            events.push(warning(
                "RetiredPodRemoved",
                format!(
                    "pod {} of an earlier template was still busy after rollout.maxBusySeconds: removed",
                    pod.pod
                ),
            ));
        }
    }

    let mut scale = None;
    if current != desired {
        scale = Some((current, desired));
        if let Some(writer) = &deployment.replicas_writer {
            events.push(warning(
                "ReplicasOverridden",
                format!(
                    "spec.replicas of {}-workload was set to {current} by another writer (field manager {writer}); setting it to {desired}. Scale the HotStandbyDeployment's bounds instead",
                    observed.name
                ),
            ));
        }
    }
    let template_changes = deployment.template_hash.as_deref() != Some(hash.as_str());
    let action = if current == desired && !template_changes && !deployment.relabelling {
        DeploymentAction::Keep
    } else {
        DeploymentAction::Apply {
            replicas: desired,
            template_hash: hash,
            relabel,
        }
    };
    let any_old = counted
        .classified
        .iter()
        .any(|(pod, _)| count::is_old(pod, &current_template));
    let rollout = (!relabel && (any_old || template_changes))
        .then(|| rollout_status(&counted.classified, &current_template, now));
    Child {
        action,
        replicas: desired,
        scale,
        cost_writes,
        fates,
        rollout,
    }
}

/// The progress of a rollout: the pods of earlier templates, and the busy ones' retirement.
fn rollout_status(
    classified: &[(&ObservedPod, PodState)],
    current_template: &str,
    now: Timestamp,
) -> RolloutStatus {
    let old: Vec<&(&ObservedPod, PodState)> = classified
        .iter()
        .filter(|(pod, _)| count::is_old(pod, current_template))
        .collect();
    let mut old_busy_pods: Vec<RetiredPod> = old
        .iter()
        .filter(|(_, state)| is_protected(*state))
        .map(|(pod, _)| RetiredPod {
            name: pod.name.clone(),
            since: pod.retired_since.unwrap_or(now).to_string(),
        })
        .collect();
    old_busy_pods.sort_by(|a, b| a.name.cmp(&b.name));
    RolloutStatus {
        template: current_template.to_string(),
        old_pods: i32::try_from(old.len()).unwrap_or(i32::MAX),
        old_busy_pods,
    }
}

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod tests;
