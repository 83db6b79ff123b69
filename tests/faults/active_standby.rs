//! The active-standby invariant under faults: over more than 200 failovers, a watch of the
//! Service's EndpointSlices that runs for the whole test never sees two different pods ready at
//! once, and no master is deleted by the HSD's scale-down. The failovers mix a master deleted,
//! a master turned Ready=False, a master held terminating by a finalizer, the leader killed -9
//! in the middle of a failover (between its record and its label), and an API server restart.
//! The pods are on the data node: the monitor reads their addresses in the slices and nothing
//! ever connects to them.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::DeleteParams;
use kube::{Api, ResourceExt};
use kubectl_hsd::api::active_standby::{ACTIVE, DESIGNATION_LABEL};
use serde_json::json;

use crate::cluster;
use crate::common::active_standby::*;
use crate::common::{self, TestNs, Watcher, ensure_crd, wait_for};

const FAILOVERS: usize = 210;
const TIMEOUT: Duration = Duration::from_secs(90);
/// Each watcher holds its writes this long between a record that changes master and its
/// fences and label: the window in which the test kills the leader.
const FAILOVER_DELAY_MS: &str = "300";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Cause {
    Deleted,
    NotReady,
    HeldTerminating,
    LeaderKilled,
    ApiServerRestart,
}

fn cause_of(round: usize) -> Cause {
    match round {
        r if r == FAILOVERS / 2 => Cause::ApiServerRestart,
        r if r % 25 == 12 => Cause::LeaderKilled,
        r => [Cause::Deleted, Cause::NotReady, Cause::HeldTerminating][r % 3],
    }
}

async fn lease_holder(ns: &TestNs) -> Option<String> {
    let leases: Api<Lease> = ns.api();
    leases
        .get_opt("kubectl-hsd")
        .await
        .ok()??
        .spec?
        .holder_identity
}

struct Watchers {
    ns: String,
    running: Vec<(String, Watcher)>,
    started: usize,
}

impl Watchers {
    fn spawn(&mut self) {
        self.started += 1;
        let identity = format!("as-fault-{}", self.started);
        let watcher = Watcher::start_with_env(
            &self.ns,
            &identity,
            &[],
            &[("HSD_TEST_FAILOVER_DELAY_MS", FAILOVER_DELAY_MS)],
        );
        self.running.push((identity, watcher));
    }

    /// Kills the leader with SIGKILL (it releases nothing) and starts a new standby.
    async fn kill_leader(&mut self, ns: &TestNs) -> String {
        let holder = lease_holder(ns).await.unwrap_or_default();
        let index = self
            .running
            .iter()
            .position(|(identity, _)| holder.starts_with(identity.as_str()))
            .unwrap_or_else(|| panic!("the leader {holder:?} is one of ours"));
        let (identity, mut watcher) = self.running.remove(index);
        watcher.child.kill().unwrap();
        watcher.child.wait().unwrap();
        self.spawn();
        identity
    }

    fn assert_alive(&mut self) {
        for (identity, watcher) in self.running.iter_mut() {
            assert!(
                watcher.child.try_wait().unwrap().is_none(),
                "{identity} exited:\n{}",
                watcher.log()
            );
            assert!(!watcher.log().contains("panicked"), "{}", watcher.log());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_two_ready_masters_over_200_failovers_with_leader_kills_and_an_api_server_restart() {
    let _serial = crate::serial().await;
    ensure_crd();
    let ns = TestNs::new("as-invariant").await;
    let mut manifest = common::example("hsd-annotation.yaml");
    manifest["metadata"] = json!({"name": "db", "namespace": ns.name});
    manifest["spec"]["idleTarget"] = json!(3);
    manifest["spec"]["selector"]["matchLabels"] = json!({"app": "db"});
    manifest["spec"]["podTemplate"] = json!({
        "metadata": {"labels": {"app": "db"}},
        "spec": data_pod_spec(),
    });
    common::create_hsd(&ns, &manifest).await.unwrap();
    create_service(&ns, &annotated_service("db", &json!({"app": "db"}), true)).await;

    // Pod deletions the test did not ask for, with whether the pod was a master then.
    let ours: Arc<Mutex<HashSet<String>>> = Arc::default();
    let (deletions, recorder) = common::spawn_deletion_recorder_with(
        &ns,
        Arc::new(|pod: &Pod| {
            pod.labels().get(DESIGNATION_LABEL).map(String::as_str) == Some(ACTIVE)
        }),
    );

    let mut watchers = Watchers {
        ns: ns.name.clone(),
        running: Vec::new(),
        started: 0,
    };
    watchers.spawn();
    watchers.spawn();
    let mut master = wait_master(&ns, "db").await;
    wait_endpoint(&ns, "db", &master).await;
    ready_pods(&ns, "app=db", 4).await;
    let monitor = EndpointMonitor::start(&ns, "db");
    wait_for("the monitor to see the master", TIMEOUT, || async {
        (monitor.seen().timeline.last().map(|(_, r)| r.clone())
            == Some(BTreeSet::from([master.clone()])))
        .then_some(())
    })
    .await;

    let pods: Api<Pod> = ns.api();
    let mut held: Vec<String> = Vec::new();
    let mut done: Vec<(Cause, Duration)> = Vec::new();
    let started = Instant::now();
    for round in 0..FAILOVERS {
        let cause = cause_of(round);
        // Every round starts from one ready master and at least two eligible standbys.
        wait_for(
            &format!("round {round}: a ready master and two standbys"),
            TIMEOUT,
            || async {
                let live = ns.live_pods("app=db").await;
                let eligible = live
                    .iter()
                    .filter(|p| common::is_ready(p) && has_ip(p))
                    .count();
                (eligible >= 3).then_some(())
            },
        )
        .await;
        let since = Instant::now();
        match cause {
            Cause::Deleted | Cause::LeaderKilled | Cause::ApiServerRestart => {
                ours.lock().unwrap().insert(master.clone());
                pods.delete(&master, &DeleteParams::default())
                    .await
                    .unwrap();
            }
            Cause::NotReady => set_ready(&ns, &master, false).await,
            Cause::HeldTerminating => {
                hold(&ns, &master).await;
                ours.lock().unwrap().insert(master.clone());
                pods.delete(&master, &DeleteParams::default())
                    .await
                    .unwrap();
                held.push(master.clone());
            }
        }
        match cause {
            Cause::LeaderKilled => {
                // The leader has recorded the new master and holds its fence and label back:
                // kill it there. Its successor finds the record and finishes the failover.
                wait_new_master(&ns, "db", &master).await;
                let killed = watchers.kill_leader(&ns).await;
                eprintln!("round {round}: killed the leader {killed} mid-failover");
            }
            Cause::ApiServerRestart => {
                cluster(&["restart", "apiserver"]);
                eprintln!("round {round}: restarted the API server mid-failover");
            }
            _ => {}
        }
        // The new master: recorded, and alone in the slice (a first choice may be lost before
        // its label, for instance to a scale-down; then the record moves on).
        let next = wait_for(
            &format!("round {round} ({cause:?}): a new master alone in the slice"),
            TIMEOUT,
            || async {
                let recorded = record(&ns, "db").await?.master?.name;
                let alone = monitor.seen().timeline.last().map(|(_, r)| r.clone())
                    == Some(BTreeSet::from([recorded.clone()]));
                (recorded != master && alone).then_some(recorded)
            },
        )
        .await;
        let shown = monitor
            .wait_ready(&next, since, TIMEOUT)
            .await
            .expect("seen alone");
        done.push((cause, shown - since));
        if cause == Cause::NotReady {
            // Recovered, it is a standby again (the master does not move back).
            set_ready(&ns, &master, true).await;
        }
        // Let the held ones go a few rounds later, so that some are still terminating while
        // others fail over.
        if held.len() > 3 {
            release(&ns, &held.remove(0)).await;
        }
        master = next;
        let seen = monitor.seen();
        assert_eq!(seen.violations, Vec::<String>::new(), "round {round}");
        if round % 20 == 19 {
            eprintln!(
                "{} failovers in {:.0}s, {} endpoint changes seen",
                round + 1,
                started.elapsed().as_secs_f64(),
                seen.timeline.len()
            );
        }
    }
    for pod in held.drain(..) {
        release(&ns, &pod).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    recorder.abort();
    let seen = monitor.finish();
    watchers.assert_alive();

    assert_eq!(seen.violations, Vec::<String>::new());
    // Proof that the monitor watched: every failover changed the ready set at least once.
    assert!(
        seen.timeline.len() > FAILOVERS,
        "the monitor saw {} changes for {FAILOVERS} failovers",
        seen.timeline.len()
    );
    let record = record(&ns, "db").await.unwrap();
    assert!(record.failovers as usize >= FAILOVERS, "{record:?}");
    assert!(record.unfenced.is_empty(), "{record:?}");
    assert_eq!(labelled(&ns, "app=db").await, vec![master.clone()]);
    let ours = ours.lock().unwrap().clone();
    let victims: Vec<String> = common::busy_victims(&deletions)
        .into_iter()
        .filter(|pod| !ours.contains(pod))
        .collect();
    assert_eq!(
        victims,
        Vec::<String>::new(),
        "masters deleted by a scale-down"
    );
    for cause in [
        Cause::Deleted,
        Cause::NotReady,
        Cause::HeldTerminating,
        Cause::LeaderKilled,
        Cause::ApiServerRestart,
    ] {
        let times: Vec<f64> = done
            .iter()
            .filter(|(c, _)| *c == cause)
            .map(|(_, d)| d.as_secs_f64() * 1000.0)
            .collect();
        assert!(!times.is_empty(), "{cause:?} was exercised");
        let max = times.iter().cloned().fold(0.0, f64::max);
        eprintln!(
            "{cause:?}: {} failovers, slowest {max:.0} ms to the new master in the slice",
            times.len()
        );
    }
    eprintln!(
        "{} failovers in {:.0}s; the monitor saw {} watch events and {} ready-set changes, never two ready pods",
        done.len(),
        started.elapsed().as_secs_f64(),
        seen.events,
        seen.timeline.len()
    );
}
