//! Step 3, stabilize: the scale-down delay, the highest recommendation of a sliding window (like
//! the HPA's stabilization window). The window's history lives in the HSD's status, so separate
//! one-shot passes share it.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::api::hsd::TimedRecommendation;

/// Scale-down-delay recommendations kept in the status at most (older ones fold into the next).
pub const MAX_RECOMMENDATIONS: usize = 32;

/// The highest recommendation of the last `window`, and the history to keep (each value from
/// when it was first made; an entry lasts until the next one starts).
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
    fn recent_recommendations_stay_bounded_and_keep_the_highest() {
        let start = now();
        let mut history = Vec::new();
        let window = Duration::from_secs(86400);
        for i in 0..100i64 {
            let replicas = if i == 3 { 40 } else { 5 + (i % 2) as i32 };
            let (_, kept) = stabilize(
                replicas,
                &history,
                window,
                start + SignedDuration::from_secs(i),
            );
            history = kept;
        }
        assert!(history.len() <= MAX_RECOMMENDATIONS, "{}", history.len());
        let (held, _) = stabilize(5, &history, window, start + SignedDuration::from_secs(101));
        assert_eq!(held, 40, "the early high recommendation still holds");
    }

    #[test]
    fn the_delay_holds_the_highest_recommendation_of_the_window() {
        let mut delayed = spec(3, 0, None);
        delayed.scale_down_delay_seconds = Some(120);
        // Pass 1: 2 busy -> 5 replicas, recorded.
        let mut hsd = observed(
            delayed.clone(),
            Some(5),
            [busy_pods(2), idle_pods(3)].concat(),
        );
        let first = plan(&hsd, now());
        assert_eq!(first.scale, None);
        assert_eq!(first.status.recent_recommendations.len(), 1);
        // Pass 2, 60 s later: nothing busy -> formula 3, but the window holds 5.
        hsd.status = Some(first.status.clone());
        hsd.pods = idle_pods(5);
        let second = plan(&hsd, now() + SignedDuration::from_secs(60));
        assert_eq!(second.scale, None, "held by the delay");
        assert_eq!(second.decision.as_ref().unwrap().held_by_delay, Some(5));
        assert_eq!(
            second.status.desired_replicas, 3,
            "desired shows the formula"
        );
        // Pass 3, 10 s later: still inside the window.
        hsd.status = Some(second.status.clone());
        let third = plan(&hsd, now() + SignedDuration::from_secs(70));
        assert_eq!(third.scale, None);
        assert!(!third.status_changed, "nothing new to record: no write");
        // Pass 4, after the window of the last 5: released.
        hsd.status = Some(third.status.clone());
        let fourth = settled_plan(&hsd, now() + SignedDuration::from_secs(181));
        assert_eq!(fourth.scale, Some((5, 3)));
        // Scale-up is never delayed.
        hsd.status = Some(fourth.status.clone());
        hsd.deployment.as_mut().unwrap().replicas = Some(3);
        hsd.pods = [busy_pods(3), idle_pods(0)].concat();
        let up = plan(&hsd, now() + SignedDuration::from_secs(182));
        assert_eq!(up.scale, Some((3, 6)));
    }

    #[test]
    fn stabilize_table() {
        let t = |s: i64| (now() + SignedDuration::from_secs(s)).to_string();
        let entry = |replicas, s| TimedRecommendation {
            replicas,
            since: t(s),
        };
        let window = Duration::from_secs(100);
        // (history, recommendation now, now offset, expected replicas, expected history length)
        let cases = vec![
            (vec![], 3, 0, 3, 1),
            (vec![entry(5, 0)], 3, 50, 5, 2),
            (vec![entry(5, 0), entry(3, 50)], 3, 149, 5, 2),
            (vec![entry(5, 0), entry(3, 50)], 3, 151, 3, 1),
            (vec![entry(3, 0)], 7, 10, 7, 2),
            (vec![entry(5, 0), entry(4, 10), entry(3, 20)], 3, 115, 4, 2),
        ];
        for (history, recommendation, offset, expected, kept) in cases {
            let (replicas, new_history) = stabilize(
                recommendation,
                &history,
                window,
                now() + SignedDuration::from_secs(offset),
            );
            assert_eq!(replicas, expected, "{history:?} at +{offset}s");
            assert_eq!(
                new_history.len(),
                kept,
                "{history:?} at +{offset}s: {new_history:?}"
            );
        }
        let (replicas, history) = stabilize(3, &[entry(9, 0)], Duration::ZERO, now());
        assert_eq!(
            (replicas, history.len()),
            (3, 0),
            "no window: no history kept"
        );
    }
}
