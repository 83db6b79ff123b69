//! How often the watcher writes one HSD's status.
//!
//! A busy flip moves an HSD's status several times within a second (the flip, the scale-up,
//! the new pod's Pending, Running and Ready), and each status write is a server-side apply
//! the API server handles beside the next flip's writes: the benchmark counted 2.7 status
//! writes per flip, at 23 ms each, against one Deployment write. The watcher writes a
//! status at once when it wrote none in the last [`STATUS_INTERVAL`]; later changes within it
//! are folded into one write at its end. The Deployment, pod and event writes are never held,
//! nor are the metrics, which each pass sets at once.

use std::time::{Duration, Instant};

/// The shortest time between two status writes of one HSD by one watcher.
pub(crate) const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// What a pass does with the status it planned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StatusWrite {
    /// Nothing new to record.
    Skip,
    /// Write it in this pass.
    Now,
    /// Keep it unwritten (the watcher's passes read it) and write it in a pass this much later.
    Later(Duration),
}

/// `changed`: the planned status differs from the one the pass read (the last one written, or
/// the one held back). `held`: a planned status is not written yet. `last_written`: when this
/// watcher last wrote the HSD's status.
pub(crate) fn status_write(
    changed: bool,
    held: bool,
    last_written: Option<Instant>,
    now: Instant,
) -> StatusWrite {
    if !changed && !held {
        return StatusWrite::Skip;
    }
    let since = last_written.map(|at| now.saturating_duration_since(at));
    match since {
        Some(since) if since < STATUS_INTERVAL => StatusWrite::Later(STATUS_INTERVAL - since),
        _ => StatusWrite::Now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_is_written_at_most_once_an_interval() {
        let now = Instant::now();
        let ago = |ms: u64| Some(now - Duration::from_millis(ms));
        let cases = [
            (
                "nothing new, nothing held",
                false,
                false,
                ago(10),
                StatusWrite::Skip,
            ),
            (
                "nothing new, never written",
                false,
                false,
                None,
                StatusWrite::Skip,
            ),
            ("first write", true, false, None, StatusWrite::Now),
            (
                "a change after a quiet second",
                true,
                false,
                ago(1000),
                StatusWrite::Now,
            ),
            (
                "a change soon after a write waits for the interval's end",
                true,
                false,
                ago(300),
                StatusWrite::Later(Duration::from_millis(700)),
            ),
            (
                "a held status is written at the interval's end though nothing changed since",
                false,
                true,
                ago(1200),
                StatusWrite::Now,
            ),
            (
                "a held status waits out the interval",
                false,
                true,
                ago(999),
                StatusWrite::Later(Duration::from_millis(1)),
            ),
        ];
        for (name, changed, held, last_written, expected) in cases {
            assert_eq!(
                status_write(changed, held, last_written, now),
                expected,
                "{name}"
            );
        }
    }

    proptest::proptest! {
        /// Passes come at random times (events), each with or without a new status; a
        /// requested later pass comes when asked. Writes are never closer than the interval,
        /// and the last status planned is written within an interval of the last change.
        #[test]
        fn writes_keep_the_interval_and_the_last_status_lands(
            passes in proptest::collection::vec((0u64..1500, proptest::bool::ANY), 1..40),
        ) {
            let start = Instant::now();
            let mut at = start;
            let mut events: Vec<(Instant, bool)> = Vec::new();
            for (gap, changed) in passes {
                at += Duration::from_millis(gap);
                events.push((at, changed));
            }
            let last_change = events.iter().filter(|(_, changed)| *changed).map(|(at, _)| *at).next_back();
            let mut writes: Vec<Instant> = Vec::new();
            let mut held = false;
            let mut requested: Option<Instant> = None;
            let mut queue = events.clone();
            queue.reverse();
            loop {
                // The next pass: the next event, or the pass asked for, whichever is first.
                let next_event = queue.last().copied();
                let (now, changed) = match (next_event, requested) {
                    (Some((at, changed)), Some(due)) if at <= due => { queue.pop(); (at, changed) }
                    (_, Some(due)) => { requested = None; (due, false) }
                    (Some((at, changed)), None) => { queue.pop(); (at, changed) }
                    (None, None) => break,
                };
                match status_write(changed, held, writes.last().copied(), now) {
                    StatusWrite::Skip => {}
                    StatusWrite::Now => { writes.push(now); held = false; }
                    StatusWrite::Later(after) => {
                        held = true;
                        let due = now + after;
                        requested = Some(requested.map_or(due, |r| r.min(due)));
                    }
                }
            }
            proptest::prop_assert!(!held, "a status was left unwritten");
            for pair in writes.windows(2) {
                proptest::prop_assert!(pair[1] - pair[0] >= STATUS_INTERVAL);
            }
            if let Some(changed_at) = last_change {
                let written = writes.last().copied();
                proptest::prop_assert!(written.is_some_and(|w| w >= changed_at && w - changed_at <= STATUS_INTERVAL));
            }
        }
    }

    #[test]
    fn a_clock_behind_the_last_write_waits_the_whole_interval() {
        let now = Instant::now();
        let future = now + Duration::from_millis(50);
        assert_eq!(
            status_write(true, false, Some(future), now),
            StatusWrite::Later(STATUS_INTERVAL)
        );
    }
}
