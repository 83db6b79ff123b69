//! Leader election on a Lease (kube-lease-manager), with a renew deadline the crate lacks: a
//! leader whose lease was not renewed for [`renew_deadline`] stops writing before the lease can
//! expire and another replica can take over. The fence is checked by the reconciler's client
//! before every write, so even a reconcile already under way when the process froze (SIGSTOP,
//! a long GC pause, a partition) writes nothing once it resumes.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long after its last successful renewal a leader keeps writing: two thirds of the lease,
/// as client-go's defaults (15 s lease, 10 s renew deadline).
pub fn renew_deadline(lease_duration: Duration) -> Duration {
    lease_duration * 2 / 3
}

/// The crate's grace (renew this long before expiry, whole seconds): half the lease, so that a
/// leader renews well inside its renew deadline and has time to retry a failed renewal.
pub fn renew_grace_seconds(lease_duration: Duration) -> u64 {
    lease_duration.as_secs().max(2).div_ceil(2)
}

/// Whether this process may write: it holds the lease and renewed it recently.
#[derive(Debug)]
pub struct Fence {
    /// `None`: no leader election (`--leader-elect=false`): always open.
    renew_deadline: Option<Duration>,
    leading: AtomicBool,
    /// When the last successful lease write was sent (monotonic: a frozen process's clock runs on).
    last_renewal: Mutex<Option<Instant>>,
}

impl Fence {
    pub fn always_open() -> Arc<Self> {
        Arc::new(Self {
            renew_deadline: None,
            leading: AtomicBool::new(true),
            last_renewal: Mutex::new(None),
        })
    }

    pub fn new(lease_duration: Duration) -> Arc<Self> {
        Arc::new(Self {
            renew_deadline: Some(renew_deadline(lease_duration)),
            leading: AtomicBool::new(false),
            last_renewal: Mutex::new(None),
        })
    }

    pub fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::SeqCst);
    }

    pub fn is_leading(&self) -> bool {
        self.leading.load(Ordering::SeqCst)
    }

    /// Records a successful lease write sent at `sent`.
    pub fn renewed(&self, sent: Instant) {
        let mut last = self.last_renewal.lock().expect("fence lock");
        if last.is_none_or(|previous| previous < sent) {
            *last = Some(sent);
        }
    }

    /// Whether writes may go out now.
    pub fn is_open(&self) -> bool {
        let Some(deadline) = self.renew_deadline else {
            return true;
        };
        self.is_leading()
            && self
                .last_renewal
                .lock()
                .expect("fence lock")
                .is_some_and(|renewed| renewed.elapsed() < deadline)
    }

    /// The lease manager still says "leader", but the lease has not been renewed in time:
    /// this process must not act, and its liveness check says so.
    pub fn leader_in_name_only(&self) -> bool {
        self.is_leading() && !self.is_open()
    }

    /// A client hook that records every successful write to the lease `name`.
    pub fn renewal_observer(self: &Arc<Self>, name: &str) -> crate::client::AnswerObserver {
        let fence = self.clone();
        let suffix = format!("/leases/{name}");
        Arc::new(move |method, path, sent| {
            if *method != http::Method::GET && path.ends_with(&suffix) {
                fence.renewed(sent);
            }
        })
    }

    /// A client hook that lets writes out only while the fence is open.
    pub fn write_gate(self: &Arc<Self>) -> crate::client::WriteGate {
        let fence = self.clone();
        Arc::new(move || fence.is_open())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_is_inside_the_lease_and_after_the_renewal() {
        for seconds in [2, 3, 5, 15, 60] {
            let lease = Duration::from_secs(seconds);
            let grace = Duration::from_secs(renew_grace_seconds(lease));
            let renew_after = lease.saturating_sub(grace);
            assert!(renew_deadline(lease) < lease, "{seconds}s");
            assert!(
                renew_after < renew_deadline(lease),
                "{seconds}s: renews at {renew_after:?}"
            );
        }
    }

    #[test]
    fn the_fence_opens_on_renewal_and_closes_after_the_deadline() {
        let fence = Fence::new(Duration::from_millis(300));
        assert!(!fence.is_open(), "not leading yet");
        fence.set_leading(true);
        assert!(!fence.is_open(), "leading but never renewed");
        assert!(fence.leader_in_name_only());
        fence.renewed(Instant::now());
        assert!(fence.is_open());
        std::thread::sleep(Duration::from_millis(250));
        assert!(!fence.is_open(), "200 ms deadline passed");
        assert!(fence.leader_in_name_only());
        // An older renewal never moves the fence back.
        fence.renewed(Instant::now() - Duration::from_secs(5));
        assert!(!fence.is_open());
        fence.renewed(Instant::now());
        assert!(fence.is_open());
        fence.set_leading(false);
        assert!(!fence.is_open() && !fence.leader_in_name_only());
        assert!(Fence::always_open().is_open());
    }

    #[test]
    fn only_successful_lease_writes_count_as_renewals() {
        let fence = Fence::new(Duration::from_secs(15));
        fence.set_leading(true);
        let observe = fence.renewal_observer("kubectl-hsd");
        let now = Instant::now();
        observe(
            &http::Method::GET,
            "/apis/coordination.k8s.io/v1/namespaces/a/leases/kubectl-hsd",
            now,
        );
        observe(
            &http::Method::PATCH,
            "/apis/coordination.k8s.io/v1/namespaces/a/leases/other",
            now,
        );
        assert!(!fence.is_open());
        observe(
            &http::Method::PATCH,
            "/apis/coordination.k8s.io/v1/namespaces/a/leases/kubectl-hsd",
            now,
        );
        assert!(fence.is_open());
    }
}
