//! Scale to zero (`spec.scaleToZero.afterSeconds`): whether the HSD sleeps at 0 replicas, and
//! how the shared deadline moves.
//!
//! One deadline, the HSD's annotation `zero-pod-autoscaler/scale-down-at` (the key ZPA uses on
//! its Deployment), is shared by everything that sees activity, and it only ever moves later:
//! - the reconciler moves it to `now + afterSeconds` while any pod is busy (or unknown, which
//!   counts as busy), at most once per half period;
//! - each `kubectl hsd proxy --hsd` replica moves it the same way while it has connections open,
//!   and moves it first when a connection arrives at a sleeping HSD (the wake).
//!
//! The HSD sleeps when nothing is busy and the deadline has passed. Every move is a
//! compare-and-swap on the HSD's resourceVersion, so a move never undoes a later one. Only the
//! plan sets `spec.replicas` (under the reconciler's field manager): a proxy wakes an HSD by
//! moving the deadline and running this same plan, so nothing fights over the count, and the
//! wake works with the CronJob as well as with a watcher.

use jiff::{SignedDuration, Timestamp};

/// The shared deadline on the HSD: the same key ZPA keeps on its Deployment.
pub const SLEEP_DEADLINE_ANNOTATION: &str = "zero-pod-autoscaler/scale-down-at";

/// What scale to zero decides in one pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sleep {
    /// Replicas go to 0 this pass.
    pub asleep: bool,
    /// The deadline to write (later than the one read), if it must move.
    pub move_deadline_to: Option<Timestamp>,
    /// When the HSD may sleep, if it is awake and nothing is busy: the next pass to look.
    pub sleeps_at: Option<Timestamp>,
}

/// Decides from `afterSeconds`, the deadline read, and the pods that keep the HSD awake (busy
/// and unknown ones).
pub fn decide(
    after_seconds: Option<i64>,
    deadline: Option<Timestamp>,
    busy_or_unknown: i32,
    now: Timestamp,
) -> Sleep {
    let Some(after_seconds) = after_seconds.filter(|s| *s > 0) else {
        return Sleep::default();
    };
    let period = SignedDuration::from_secs(after_seconds);
    let wanted = now.checked_add(period).unwrap_or(Timestamp::MAX);
    if busy_or_unknown > 0 {
        // Half a period of slack: one write per half period while busy, never one per pass.
        let stale =
            deadline.is_none_or(|d| d.checked_add(period / 2).unwrap_or(Timestamp::MAX) < wanted);
        return Sleep {
            asleep: false,
            move_deadline_to: stale.then_some(wanted),
            sleeps_at: None,
        };
    }
    match deadline {
        // The clock starts when scale to zero is first seen.
        None => Sleep {
            asleep: false,
            move_deadline_to: Some(wanted),
            sleeps_at: Some(wanted),
        },
        Some(deadline) if now >= deadline => Sleep {
            asleep: true,
            ..Sleep::default()
        },
        Some(deadline) => Sleep {
            asleep: false,
            move_deadline_to: None,
            sleeps_at: Some(deadline),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    #[test]
    fn table() {
        struct Case {
            name: &'static str,
            after: Option<i64>,
            deadline: Option<i64>,
            busy: i32,
            now: i64,
            want: Sleep,
        }
        let awake_until = |at: i64| Sleep {
            sleeps_at: Some(t(at)),
            ..Sleep::default()
        };
        let cases = [
            Case {
                name: "off: nothing, whatever the annotation says",
                after: None,
                deadline: Some(0),
                busy: 0,
                now: 100,
                want: Sleep::default(),
            },
            Case {
                name: "first seen: the clock starts",
                after: Some(60),
                deadline: None,
                busy: 0,
                now: 10,
                want: Sleep {
                    move_deadline_to: Some(t(70)),
                    ..awake_until(70)
                },
            },
            Case {
                name: "quiet, deadline ahead: awake, look again at the deadline",
                after: Some(60),
                deadline: Some(50),
                busy: 0,
                now: 10,
                want: awake_until(50),
            },
            Case {
                name: "quiet, deadline passed: asleep",
                after: Some(60),
                deadline: Some(50),
                busy: 0,
                now: 50,
                want: Sleep {
                    asleep: true,
                    ..Sleep::default()
                },
            },
            Case {
                name: "busy past the deadline: awake, the deadline moves a period on",
                after: Some(60),
                deadline: Some(50),
                busy: 1,
                now: 100,
                want: Sleep {
                    move_deadline_to: Some(t(160)),
                    ..Sleep::default()
                },
            },
            Case {
                name: "busy, deadline fresh enough: no write",
                after: Some(60),
                deadline: Some(100),
                busy: 3,
                now: 60,
                want: Sleep::default(),
            },
            Case {
                name: "busy with no deadline yet: it starts a period on",
                after: Some(60),
                deadline: None,
                busy: 1,
                now: 0,
                want: Sleep {
                    move_deadline_to: Some(t(60)),
                    ..Sleep::default()
                },
            },
        ];
        for case in cases {
            assert_eq!(
                decide(case.after, case.deadline.map(t), case.busy, t(case.now)),
                case.want,
                "{}",
                case.name
            );
        }
    }

    proptest! {
        /// A busy or unknown pod never lets the HSD sleep, and the deadline only moves later.
        #[test]
        fn busy_never_sleeps_and_deadlines_only_move_later(
            after in proptest::option::of(-5i64..100_000),
            deadline in proptest::option::of(-100_000i64..100_000),
            busy in 0i32..5,
            now in -100_000i64..100_000,
        ) {
            let sleep = decide(after, deadline.map(t), busy, t(now));
            if busy > 0 {
                prop_assert!(!sleep.asleep);
            }
            if let (Some(moved), Some(read)) = (sleep.move_deadline_to, deadline) {
                prop_assert!(moved > t(read));
            }
            if sleep.asleep {
                prop_assert!(deadline.is_some_and(|d| t(d) <= t(now)));
            }
        }
    }
}
