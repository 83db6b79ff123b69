//! The status conditions (`metav1.Condition`, k8s-openapi's type), built so that an unchanged
//! world gives an identical list: a condition keeps its transition time while its status holds.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition types on the HSD status.
pub mod condition {
    pub const READY: &str = "Ready";
    pub const SCALING_LIMITED: &str = "ScalingLimited";
    pub const PROBE_DEGRADED: &str = "ProbeDegraded";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const PAUSED: &str = "Paused";
    pub const PODS_UNSCHEDULABLE: &str = "PodsUnschedulable";
    pub const BUSY_TEMPLATE: &str = "BusyAnnotationInTemplate";
    pub const ASLEEP: &str = "Asleep";
}

pub struct Conditions {
    previous: Vec<Condition>,
    current: Vec<Condition>,
    now: Timestamp,
    generation: Option<i64>,
}

impl Conditions {
    pub fn new(previous: &[Condition], now: Timestamp, generation: Option<i64>) -> Self {
        Self {
            previous: previous.to_vec(),
            current: previous.to_vec(),
            now,
            generation,
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
            _ => Time(self.now),
        };
        let condition = Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message: message.to_string(),
            last_transition_time,
            observed_generation: self.generation,
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
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn conditions_keep_their_transition_time_while_status_holds() {
        let earlier = at("2026-01-01T00:00:00Z");
        let now = at("2026-11-21T12:00:00Z");
        let mut conditions = Conditions::new(&[], earlier, Some(1));
        conditions.set("Ready", true, "Reconciled", "fine");
        let previous = conditions.finish();
        assert_eq!(previous[0].observed_generation, Some(1));

        let mut conditions = Conditions::new(&previous, now, Some(1));
        assert!(!conditions.set("Ready", true, "Reconciled", "still fine"));
        assert_eq!(conditions.finish()[0].last_transition_time, Time(earlier));

        let mut conditions = Conditions::new(&previous, now, Some(2));
        assert!(
            conditions.set(
                "Ready",
                true,
                "Paused",
                "a new reason is a change worth an event"
            ),
            "reason changed"
        );
        let kept = conditions.finish();
        assert_eq!(kept[0].last_transition_time, Time(earlier), "same status");
        assert_eq!(kept[0].observed_generation, Some(2));

        let mut conditions = Conditions::new(&previous, now, Some(1));
        assert!(conditions.set("Ready", false, "Failed", "broken"));
        assert_eq!(conditions.finish()[0].last_transition_time, Time(now));
    }

    #[test]
    fn removed_conditions_go_and_the_order_is_stable() {
        let now = at("2026-11-21T12:00:00Z");
        let mut conditions = Conditions::new(&[], now, None);
        conditions.set(condition::PAUSED, true, "Paused", "");
        conditions.set(condition::PROBE_DEGRADED, false, "ProbesHealthy", "");
        conditions.set(condition::READY, true, "Reconciled", "");
        conditions.set("Custom", true, "X", "");
        let types: Vec<String> = conditions.finish().into_iter().map(|c| c.type_).collect();
        assert_eq!(types, ["Ready", "ProbeDegraded", "Paused", "Custom"]);
        let mut conditions = Conditions::new(&[], now, None);
        conditions.set(condition::PAUSED, true, "Paused", "");
        conditions.remove(condition::PAUSED);
        assert!(conditions.finish().is_empty());
    }
}
