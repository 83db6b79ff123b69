//! Step 2, target: the formula `clamp(busy + unknown + idle target, minReplicas, maxReplicas)`,
//! with the idle target from `idlePercent` and unknown pods capped at the pods that exist.

use super::count::Counts;
use crate::api::hsd::{HotStandbyDeploymentSpec, SAFETY_MAX_REPLICAS};

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

/// What the formula needs from a spec, whatever its kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Formula {
    pub idle_target: i32,
    pub idle_percent: Option<i32>,
    pub min: i32,
    /// The ceiling in force (maxReplicas, or a safety ceiling).
    pub max: i32,
}

impl Formula {
    pub fn of_hsd(spec: &HotStandbyDeploymentSpec) -> Self {
        Self {
            idle_target: spec.idle_target,
            idle_percent: spec.idle_percent,
            min: spec.min_replicas,
            max: effective_max_replicas(spec),
        }
    }
}

/// The idle target in force: `max(idleTarget, ceil(busy * idlePercent / 100))`, busy counting
/// unknown pods. Returns it and the percent part, if a percent is set.
pub fn idle_target(counts: &Counts, spec: &HotStandbyDeploymentSpec) -> (i32, Option<i32>) {
    idle_target_with(counts, &Formula::of_hsd(spec))
}

/// [`idle_target`] for any kind.
pub fn idle_target_with(counts: &Counts, formula: &Formula) -> (i32, Option<i32>) {
    let fixed = formula.idle_target.max(0);
    match formula.idle_percent {
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
    recommend_with(counts, &Formula::of_hsd(spec))
}

/// [`recommend`] for any kind (a HotStandbyJob counts Jobs where an HSD counts pods).
pub fn recommend_with(counts: &Counts, formula: &Formula) -> Recommendation {
    let target = |counts: &Counts| {
        let (target, _) = idle_target_with(counts, formula);
        counts
            .busy
            .saturating_add(counts.unknown)
            .saturating_add(target)
    };
    let with_unknown = target(counts);
    let without_unknown = target(&Counts {
        unknown: 0,
        ..*counts
    });
    let existing = counts.total();
    let (unbounded, unknown_capped_at) = if with_unknown > without_unknown.max(existing) {
        (without_unknown.max(existing), Some(existing))
    } else {
        (with_unknown, None)
    };
    let min = formula.min.max(0);
    let max = formula.max.max(0);
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
    spec.max_replicas.unwrap_or(SAFETY_MAX_REPLICAS).max(1)
}

/// The `ScalingLimited` reason and message when a bound decided.
pub fn limit_message(recommendation: &Recommendation) -> Option<(&'static str, String)> {
    match recommendation.limited_by {
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
    }
}

#[cfg(test)]
mod tests {
    #![allow(unused_imports)]
    use std::collections::BTreeMap;
    use std::time::Duration;

    use jiff::{SignedDuration, Timestamp};
    use proptest::prelude::*;
    use serde_json::json;

    use crate::api::hsd::*;
    use crate::plan::fixtures::*;
    use crate::plan::*;

    #[test]
    fn formula_table() {
        struct Case {
            name: &'static str,
            idle_target: i32,
            min: i32,
            max: Option<i32>,
            busy: i32,
            idle: i32,
            unknown: i32,
            replicas: i32,
            limited_by: Option<Bound>,
        }
        let cases = [
            Case {
                name: "the issue's example",
                idle_target: 3,
                min: 0,
                max: Some(50),
                busy: 2,
                idle: 0,
                unknown: 0,
                replicas: 5,
                limited_by: None,
            },
            Case {
                name: "nothing busy",
                idle_target: 3,
                min: 0,
                max: Some(50),
                busy: 0,
                idle: 0,
                unknown: 0,
                replicas: 3,
                limited_by: None,
            },
            Case {
                name: "unknown counts as busy",
                idle_target: 3,
                min: 0,
                max: None,
                busy: 1,
                idle: 3,
                unknown: 2,
                replicas: 6,
                limited_by: None,
            },
            Case {
                name: "unknown pods add at most the pods that exist (no runaway)",
                idle_target: 3,
                min: 0,
                max: None,
                busy: 1,
                idle: 0,
                unknown: 2,
                replicas: 4,
                limited_by: None,
            },
            Case {
                name: "every pod unknown: replicas hold at the pods that exist",
                idle_target: 2,
                min: 0,
                max: Some(100),
                busy: 0,
                idle: 0,
                unknown: 7,
                replicas: 7,
                limited_by: None,
            },
            Case {
                name: "clamped at max",
                idle_target: 3,
                min: 0,
                max: Some(4),
                busy: 2,
                idle: 0,
                unknown: 0,
                replicas: 4,
                limited_by: Some(Bound::Max),
            },
            Case {
                name: "held at min",
                idle_target: 1,
                min: 5,
                max: Some(10),
                busy: 1,
                idle: 0,
                unknown: 0,
                replicas: 5,
                limited_by: Some(Bound::Min),
            },
            Case {
                name: "zero buffer",
                idle_target: 0,
                min: 0,
                max: None,
                busy: 0,
                idle: 0,
                unknown: 0,
                replicas: 0,
                limited_by: None,
            },
            Case {
                name: "exactly max is not limited",
                idle_target: 3,
                min: 0,
                max: Some(5),
                busy: 2,
                idle: 0,
                unknown: 0,
                replicas: 5,
                limited_by: None,
            },
            Case {
                name: "exactly min is not limited",
                idle_target: 3,
                min: 3,
                max: None,
                busy: 0,
                idle: 0,
                unknown: 0,
                replicas: 3,
                limited_by: None,
            },
            Case {
                name: "no max means the safety ceiling of 1000",
                idle_target: 2,
                min: 0,
                max: None,
                busy: 1000,
                idle: 0,
                unknown: 0,
                replicas: 1000,
                limited_by: Some(Bound::Max),
            },
        ];
        for case in cases {
            let counts = Counts {
                busy: case.busy,
                idle: case.idle,
                starting: 0,
                unknown: case.unknown,
                leaving: 0,
            };
            let got = recommend(&counts, &spec(case.idle_target, case.min, case.max));
            assert_eq!(got.replicas, case.replicas, "{}: replicas", case.name);
            assert_eq!(got.limited_by, case.limited_by, "{}: limited_by", case.name);
        }
    }

    #[test]
    fn percent_idle_target_grows_with_load() {
        let mut percent = spec(2, 0, None);
        percent.idle_percent = Some(25);
        for (busy, expected_target) in [(0, 2), (4, 2), (8, 2), (9, 3), (20, 5)] {
            let counts = Counts {
                busy,
                idle: 0,
                starting: 0,
                unknown: 0,
                leaving: 0,
            };
            assert_eq!(
                idle_target(&counts, &percent).0,
                expected_target,
                "{busy} busy"
            );
            assert_eq!(
                recommend(&counts, &percent).replicas,
                busy + expected_target
            );
        }
    }
}
