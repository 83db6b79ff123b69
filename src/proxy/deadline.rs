//! The shared scale-down deadline, as pure functions: what the annotation says, and what one
//! proxy replica should write next. No client and no clock: `scale` feeds them.
//!
//! The protocol between replicas (compatible with ZPA's annotation):
//! - `zero-pod-autoscaler/scale-down-at` on the Deployment is the earliest time (RFC 3339) at
//!   which any replica may scale the app to zero. Replicas only move it later.
//! - A replica with open connections, or one that saw a connection within the last TTL, keeps
//!   the deadline at least half a TTL after the time it needs (`now + ttl` while connections
//!   are open): one write per half TTL at most, never one per connection.
//! - A replica scales to zero only when it has no open connection, the deadline and its own
//!   last activity plus the TTL have passed, and only through a write conditioned on the
//!   resourceVersion it decided on. If another replica moved the deadline meanwhile, the write
//!   fails with a conflict and the decision is made again on the new state.
//! - A connection is forwarded at once only while the deadline is more than a guard (a quarter
//!   TTL, at most 5 s) away; otherwise it waits for an extension to be written first. So no
//!   replica can decide to scale down an app that another replica is forwarding to (clock skew
//!   between replicas below the guard). Busy replicas extend at half the TTL, before the guard
//!   is reached, so connections of a busy app never wait for a write.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

/// The annotation ZPA uses; replicas of either proxy share it.
pub const SCALE_DOWN_AT: &str = "zero-pod-autoscaler/scale-down-at";

/// The deadline an annotation value says, if it is a valid RFC 3339 time. Anything else counts
/// as no deadline (as ZPA does).
pub fn parse_deadline(value: &str) -> Option<Timestamp> {
    value.trim().parse::<Timestamp>().ok()
}

/// The annotation value of a deadline: RFC 3339 in UTC, whole seconds, rounded up (a deadline
/// is never written earlier than asked).
pub fn format_deadline(deadline: Timestamp) -> String {
    let mut seconds = deadline.as_second();
    if deadline.subsec_nanosecond() > 0 {
        seconds = seconds.saturating_add(1);
    }
    Timestamp::from_second(seconds)
        .unwrap_or(deadline)
        .to_string()
}

/// How close to the deadline a connection may still be forwarded without an extension first.
pub fn guard(ttl: Duration) -> Duration {
    (ttl / 4).min(Duration::from_secs(5))
}

/// The Deployment as the scaler last saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SharedState {
    pub exists: bool,
    /// `spec.replicas` (1 when unset, as the API server defaults it).
    pub replicas: i32,
    /// The shared deadline; `None` if the annotation is absent or unreadable.
    pub deadline: Option<Timestamp>,
}

/// This replica's own connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalState {
    /// Connections open now, held or forwarding.
    pub open: usize,
    /// Of those, the ones waiting for the app.
    pub held: usize,
    /// The last time a connection opened or closed here.
    pub last_activity: Option<Timestamp>,
    /// When this replica started: it never scales down within its first TTL.
    pub started: Timestamp,
}

#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub ttl: SignedDuration,
    pub wake_replicas: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Nothing,
    /// Scale 0 -> `replicas` and move the deadline to `deadline`, in one conditional write.
    Wake {
        replicas: i32,
        deadline: Timestamp,
    },
    /// Move the deadline to `deadline`.
    Extend {
        deadline: Timestamp,
    },
    /// Scale to zero, in a write conditioned on the state decided on.
    Sleep,
}

fn plus(t: Timestamp, d: SignedDuration) -> Timestamp {
    t.checked_add(d).unwrap_or(Timestamp::MAX)
}

/// What this replica should write now.
pub fn decide(
    now: Timestamp,
    timing: &Timing,
    shared: &SharedState,
    local: &LocalState,
) -> Decision {
    if !shared.exists {
        return Decision::Nothing;
    }
    let ttl = timing.ttl;
    if local.held > 0 && shared.replicas <= 0 {
        // Never earlier than the deadline already shared.
        let deadline = shared
            .deadline
            .map_or(plus(now, ttl), |d| d.max(plus(now, ttl)));
        return Decision::Wake {
            replicas: timing.wake_replicas,
            deadline,
        };
    }
    // The deadline this replica needs: a full TTL after now while connections are open, else
    // after its last connection.
    let wanted = if local.open > 0 {
        Some(plus(now, ttl))
    } else {
        local.last_activity.map(|at| plus(at, ttl))
    };
    if shared.replicas > 0
        && let Some(wanted) = wanted
        && wanted > now
        && shared
            .deadline
            .is_none_or(|deadline| plus(deadline, ttl / 2) < wanted)
    {
        return Decision::Extend { deadline: wanted };
    }
    if shared.replicas > 0 && local.open == 0 {
        let mut earliest = plus(local.started, ttl);
        if let Some(deadline) = shared.deadline {
            earliest = earliest.max(deadline);
        }
        if let Some(at) = local.last_activity {
            earliest = earliest.max(plus(at, ttl));
        }
        if now >= earliest {
            return Decision::Sleep;
        }
    }
    Decision::Nothing
}

/// How long from `now` new connections may still be forwarded without an extension first:
/// `None` when the deadline is absent or already within the guard.
pub fn forward_window(
    now: Timestamp,
    deadline: Option<Timestamp>,
    guard: Duration,
) -> Option<Duration> {
    let guard = SignedDuration::try_from(guard).ok()?;
    let left = deadline?.duration_since(now).checked_sub(guard)?;
    if left.is_positive() {
        Duration::try_from(left).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).unwrap()
    }

    fn timing(ttl: i64) -> Timing {
        Timing {
            ttl: SignedDuration::from_secs(ttl),
            wake_replicas: 1,
        }
    }

    fn shared(replicas: i32, deadline: Option<i64>) -> SharedState {
        SharedState {
            exists: true,
            replicas,
            deadline: deadline.map(t),
        }
    }

    fn local(open: usize, held: usize, last: Option<i64>) -> LocalState {
        LocalState {
            open,
            held,
            last_activity: last.map(t),
            started: t(0),
        }
    }

    #[test]
    fn annotations_parse_as_rfc3339_and_garbage_is_no_deadline() {
        assert_eq!(parse_deadline("2023-11-14T22:13:20Z"), Some(t(0)));
        // Go writes local time with an offset.
        assert_eq!(parse_deadline("2023-11-15T00:13:20+02:00"), Some(t(0)));
        assert_eq!(
            parse_deadline(" 2023-11-14T22:13:20.5Z "),
            t(0).checked_add(SignedDuration::from_millis(500)).ok()
        );
        for garbage in [
            "",
            "soon",
            "2023-11-14",
            "1700000000",
            "2023-13-40T99:00:00Z",
        ] {
            assert_eq!(parse_deadline(garbage), None, "{garbage:?}");
        }
    }

    #[test]
    fn deadlines_are_written_in_utc_whole_seconds_rounded_up() {
        assert_eq!(format_deadline(t(0)), "2023-11-14T22:13:20Z");
        let later = t(0).checked_add(SignedDuration::from_millis(1)).unwrap();
        assert_eq!(format_deadline(later), "2023-11-14T22:13:21Z");
        assert_eq!(parse_deadline(&format_deadline(t(3600))), Some(t(3600)));
    }

    #[test]
    fn the_guard_is_a_quarter_ttl_up_to_5_seconds() {
        assert_eq!(guard(Duration::from_secs(2)), Duration::from_millis(500));
        assert_eq!(guard(Duration::from_secs(3600)), Duration::from_secs(5));
    }

    #[test]
    fn a_held_connection_wakes_an_app_at_zero_and_moves_the_deadline_with_it() {
        let decision = decide(
            t(100),
            &timing(60),
            &shared(0, Some(50)),
            &local(1, 1, Some(100)),
        );
        assert_eq!(
            decision,
            Decision::Wake {
                replicas: 1,
                deadline: t(160)
            }
        );
        let mut more = timing(60);
        more.wake_replicas = 3;
        assert!(matches!(
            decide(t(100), &more, &shared(0, None), &local(2, 2, None)),
            Decision::Wake { replicas: 3, .. }
        ));
    }

    #[test]
    fn a_missing_annotation_is_written_on_the_first_connection() {
        // ZPA's JSON-patch `replace` of an absent annotation failed here.
        assert_eq!(
            decide(t(10), &timing(60), &shared(1, None), &local(1, 0, Some(10))),
            Decision::Extend { deadline: t(70) }
        );
    }

    #[test]
    fn open_connections_extend_only_once_half_the_ttl_is_used() {
        let ttl = timing(60);
        // Deadline 40 s away: more than half a TTL left, no write.
        assert_eq!(
            decide(t(100), &ttl, &shared(1, Some(140)), &local(3, 0, Some(90))),
            Decision::Nothing
        );
        // 29 s left: extend to a full TTL.
        assert_eq!(
            decide(t(100), &ttl, &shared(1, Some(129)), &local(3, 0, Some(90))),
            Decision::Extend { deadline: t(160) }
        );
    }

    #[test]
    fn a_connection_that_came_and_went_extends_from_its_last_activity() {
        let ttl = timing(60);
        assert_eq!(
            decide(t(100), &ttl, &shared(1, Some(110)), &local(0, 0, Some(95))),
            Decision::Extend { deadline: t(155) }
        );
        assert_eq!(
            decide(t(100), &ttl, &shared(1, Some(140)), &local(0, 0, Some(95))),
            Decision::Nothing
        );
    }

    #[test]
    fn never_sleeps_with_open_connections() {
        let ttl = timing(60);
        for (open, held) in [(1, 0), (1, 1), (5, 2)] {
            let decision = decide(
                t(1000),
                &ttl,
                &shared(1, Some(10)),
                &local(open, held, Some(0)),
            );
            assert_ne!(decision, Decision::Sleep, "{open} open");
        }
    }

    #[test]
    fn sleeps_after_the_shared_deadline_its_own_activity_and_its_first_ttl() {
        let ttl = timing(60);
        let idle = local(0, 0, None);
        // Within the first TTL of this replica: no.
        assert_eq!(
            decide(t(59), &ttl, &shared(1, None), &idle),
            Decision::Nothing
        );
        assert_eq!(
            decide(t(60), &ttl, &shared(1, None), &idle),
            Decision::Sleep
        );
        // Another replica's deadline holds it up.
        assert_eq!(
            decide(t(100), &ttl, &shared(1, Some(130)), &idle),
            Decision::Nothing
        );
        assert_eq!(
            decide(t(130), &ttl, &shared(1, Some(130)), &idle),
            Decision::Sleep
        );
        // Its own last connection holds it up too (even if its extension could not be written).
        let recent = local(0, 0, Some(100));
        assert_eq!(
            decide(t(130), &ttl, &shared(1, Some(130)), &recent),
            Decision::Nothing
        );
        assert_eq!(
            decide(t(160), &ttl, &shared(1, Some(130)), &recent),
            Decision::Sleep
        );
        // Already at zero, or the Deployment is gone: nothing.
        assert_eq!(
            decide(t(500), &ttl, &shared(0, Some(130)), &idle),
            Decision::Nothing
        );
        assert_eq!(
            decide(t(500), &ttl, &SharedState::default(), &local(1, 1, None)),
            Decision::Nothing
        );
    }

    #[test]
    fn forwarding_needs_the_deadline_beyond_the_guard() {
        let guard = Duration::from_secs(5);
        assert_eq!(
            forward_window(t(100), Some(t(160)), guard),
            Some(Duration::from_secs(55))
        );
        assert_eq!(forward_window(t(100), Some(t(105)), guard), None);
        assert_eq!(forward_window(t(100), Some(t(90)), guard), None);
        assert_eq!(forward_window(t(100), None, guard), None);
    }

    proptest! {
        /// Whatever the states, a replica with open connections never scales down, an app at
        /// zero with a held connection is always woken, and no write moves the deadline
        /// earlier than the shared one.
        #[test]
        fn decisions_are_safe(
            now in 0i64..10_000, ttl in 1i64..5_000, replicas in 0i32..4,
            deadline in proptest::option::of(-10_000i64..20_000),
            open in 0usize..4, held in 0usize..4, last in proptest::option::of(-10_000i64..10_000),
        ) {
            let held = held.min(open);
            let last = last.map(|l| l.min(now));
            let shared = shared(replicas, deadline);
            let local = local(open, held, last);
            let decision = decide(t(now), &timing(ttl), &shared, &local);
            if open > 0 {
                prop_assert_ne!(decision, Decision::Sleep);
            }
            if held > 0 && replicas == 0 {
                let is_wake = matches!(decision, Decision::Wake { .. });
                prop_assert!(is_wake);
            }
            if let Decision::Extend { deadline: written } | Decision::Wake { deadline: written, .. } = decision {
                prop_assert!(shared.deadline.is_none_or(|d| written >= d));
                prop_assert!(written > t(now));
            }
            if decision == Decision::Sleep {
                prop_assert!(shared.deadline.is_none_or(|d| d <= t(now)));
                prop_assert!(last.is_none_or(|l| t(l + ttl) <= t(now)));
            }
        }

        /// A deadline written and read back is the same instant or up to a second later.
        #[test]
        fn formatting_round_trips(seconds in 0i64..4_000_000_000, nanos in 0i32..1_000_000_000) {
            let at = Timestamp::new(seconds, nanos).unwrap();
            let back = parse_deadline(&format_deadline(at)).unwrap();
            prop_assert!(back >= at && back.duration_since(at) < SignedDuration::from_secs(1));
        }

        #[test]
        fn any_annotation_value_parses_or_not_without_panicking(value in ".{0,64}") {
            let _ = parse_deadline(&value);
        }
    }
}
