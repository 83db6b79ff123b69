//! Why the plan chose its replica count: the `Decision` that `explain` prints, and the words of
//! events and conditions.

use std::fmt::Write as _;

use super::DeploymentAction;
use super::count::Counts;
use super::target::{Bound, Recommendation};

/// Why the plan chose its replica count, step by step (what `explain` prints).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// Scaled to zero (`spec.scaleToZero`): nothing busy and the shared deadline passed.
    pub asleep: bool,
    pub busy_by_annotation: i32,
    pub busy_by_probe: i32,
    /// Busy pods whose annotation value is not an accepted spelling (counted as busy).
    pub busy_by_invalid_annotation: i32,
    /// Busy as the master of an active-standby Service.
    pub busy_as_master: i32,
    /// 1 when an active-standby Service selects this HSD's pods and none carries the master
    /// label right now (a failover): the master's place is kept.
    pub master_reserved: i32,
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
    /// Held at the pods that stay plus the drained ones: pods drained this pass (or less than
    /// `DRAIN_SETTLE` ago) go when the ReplicaSet has had time to see their marks.
    pub held_for_drain: Option<i32>,
    /// While the drop is held for its drain: when the youngest mark is `DRAIN_SETTLE` old.
    pub drain_settles_at: Option<jiff::Timestamp>,
    /// Held at the current count: the pods belong to more than one ReplicaSet (a rollout).
    pub held_for_rollout: Option<i32>,
    /// Held at the current count: some probes did not run before the probe deadline.
    pub held_for_probe_deadline: Option<i32>,
    /// Busy pods of earlier templates, running beside the Deployment until their work ends.
    pub old_busy: i32,
    /// The pods chosen to go this pass.
    pub drained: Vec<String>,
    pub current_replicas: Option<i32>,
    pub replicas: i32,
    pub why: Vec<String>,
}

pub fn explain_steps(decision: &Decision, paused: bool, action: &DeploymentAction) -> Vec<String> {
    let mut why = Vec::new();
    let busy = decision.busy_by_annotation
        + decision.busy_by_probe
        + decision.busy_by_invalid_annotation
        + decision.busy_as_master
        + decision.master_reserved;
    let target = match decision.idle_target_from_percent {
        Some(percent) => format!(
            "idle target {} = max(idleTarget {}, {percent} from idlePercent)",
            decision.idle_target, decision.idle_target_fixed
        ),
        None => format!("idle target {}", decision.idle_target),
    };
    if decision.master_reserved > 0 {
        why.push(
            "1 busy is the place of an active-standby master: a Service selects these pods and none carries the label right now (a failover), so it is kept".to_string(),
        );
    }
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
    if decision.asleep {
        why.push(
            "asleep at 0: nothing busy and no proxied connection for scaleToZero.afterSeconds (the first connection through the proxy wakes it)".to_string(),
        );
    }
    if decision.old_busy > 0 {
        why.push(format!(
            "{} busy pod(s) of an earlier template run beside the Deployment until their work ends: it gets the rest",
            decision.old_busy
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
    if let Some(held) = decision.held_for_drain {
        why.push(format!(
            "held at {held}: drained pods keep their places until the ReplicaSet has had {}s to see their marks; replicas drop on a later pass",
            super::DRAIN_SETTLE.as_secs()
        ));
    }
    if !decision.drained.is_empty() {
        why.push(format!(
            "going: {} (idle, chosen by this tool; each removal is a compare-and-swap on what was read)",
            decision.drained.join(", ")
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

/// The `ProbeDegraded` reason and message, if probes or annotations say nothing usable.
pub fn probe_degraded_message(
    probes_cut_short: usize,
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
    if probes_cut_short > 0 {
        Some((
            "ProbeDeadlineExceeded",
            format!(
                "{probes_cut_short} pod(s) were not probed before the probe deadline; they count as busy and replicas are held: lower busyProbe.http.timeoutSeconds (exec: busyProbe.exec.timeoutSeconds), or fix the pods that do not answer ({})",
                list(probe_failures)
            ),
        ))
    } else if !probe_failures.is_empty() {
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

/// The note of a `ScaledUp`/`ScaledDown` event: the arithmetic.
pub fn scale_message(
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
