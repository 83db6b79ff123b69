//! The watcher's busy probes (HTTP and exec). Each probed HSD (and HSJ: its controller has its
//! own `Probes`) has its own probe budget (a semaphore), so one object's hung endpoints or
//! commands hold only its own slots and never delay another's answers. Answers are kept per pod
//! uid with the time they came; an answer older than the object's `periodSeconds +
//! timeoutSeconds` is not fresh, and its pod counts as unknown.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::cached::CachedHsd;
use crate::api::hsd::HotStandbyDeploymentSpec;
use crate::metrics::Metrics;
use crate::observe;
use crate::observe::probe::{Prober, Target};
use crate::plan::ProbeOutcome;

/// How often the scheduler looks for pods due for a probe.
const TICK: Duration = Duration::from_millis(250);

type HsdKey = (String, String);

/// Probe answers by pod uid, with when each came.
#[derive(Default)]
pub struct Answers {
    by_pod: Mutex<HashMap<String, (ProbeOutcome, Instant)>>,
}

impl Answers {
    /// The pod's answer if it is younger than `lifetime`.
    pub fn fresh(&self, uid: &str, lifetime: Duration) -> Option<ProbeOutcome> {
        let answers = self.by_pod.lock().expect("answers lock");
        let (outcome, at) = answers.get(uid)?;
        (at.elapsed() < lifetime).then(|| outcome.clone())
    }

    fn age(&self, uid: &str) -> Option<Duration> {
        let answers = self.by_pod.lock().expect("answers lock");
        answers.get(uid).map(|(_, at)| at.elapsed())
    }

    /// Records an answer; returns whether it differs from the previous one.
    pub fn record(&self, uid: String, outcome: ProbeOutcome) -> bool {
        let mut answers = self.by_pod.lock().expect("answers lock");
        let previous = answers.insert(uid, (outcome.clone(), Instant::now()));
        previous.is_none_or(|(before, _)| before != outcome)
    }

    fn retain(&self, live: &HashSet<String>) {
        self.by_pod
            .lock()
            .expect("answers lock")
            .retain(|uid, _| live.contains(uid));
    }
}

/// Probes with a budget per object.
pub struct Probes {
    pub answers: Answers,
    prober: Prober,
    per_hsd: usize,
    per_hsd_exec: usize,
    /// Each object's budget, with its size (an object that changes mode gets a new one).
    budgets: Mutex<HashMap<HsdKey, (usize, Arc<Semaphore>)>>,
    in_flight: Mutex<HashSet<String>>,
    metrics: Arc<Metrics>,
}

impl Probes {
    /// HTTP probes `per_hsd` at once per object; exec probes (through `client`)
    /// `per_hsd_exec` at once per object.
    pub fn new(
        per_hsd: usize,
        client: kube::Client,
        per_hsd_exec: usize,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            answers: Answers::default(),
            prober: Prober::new(per_hsd).with_exec(client, per_hsd_exec),
            per_hsd: per_hsd.max(1),
            per_hsd_exec: per_hsd_exec.max(1),
            budgets: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashSet::new()),
            metrics,
        })
    }

    fn budget(&self, key: &HsdKey, target: &Target) -> Arc<Semaphore> {
        let size = match target {
            Target::Http(_) => self.per_hsd,
            Target::Exec(_) => self.per_hsd_exec,
        };
        let mut budgets = self.budgets.lock().expect("budgets lock");
        let entry = budgets
            .entry(key.clone())
            .or_insert_with(|| (size, Arc::new(Semaphore::new(size))));
        if entry.0 != size {
            *entry = (size, Arc::new(Semaphore::new(size)));
        }
        entry.1.clone()
    }

    /// Probes one pod within its object's budget and records the answer. Returns whether the
    /// answer changed.
    pub async fn probe(&self, key: &HsdKey, uid: String, target: Target) -> bool {
        let budget = self.budget(key, &target);
        let Ok(_slot) = budget.acquire().await else {
            return false;
        };
        let result = self.prober.run(&target).await;
        self.metrics.probed(&result.outcome, result.latency);
        self.answers.record(uid, result.outcome)
    }

    /// Whether the pod's last answer is at least `period` old (or it has none).
    pub fn due(&self, uid: &str, period: Duration) -> bool {
        self.answers.age(uid).is_none_or(|age| age >= period)
    }

    /// Marks a probe of the pod as running; false when one already runs.
    pub fn start(&self, uid: &str) -> bool {
        self.in_flight
            .lock()
            .expect("in-flight lock")
            .insert(uid.to_string())
    }

    pub fn finish(&self, uid: &str) {
        self.in_flight.lock().expect("in-flight lock").remove(uid);
    }

    /// Forgets the answers of pods and the budgets of objects no longer probed.
    pub fn retain(&self, live_pods: &HashSet<String>, live_objects: &HashSet<HsdKey>) {
        self.answers.retain(live_pods);
        self.forget_hsds(live_objects);
    }

    /// Probes the given pods of one HSD now (each within the HSD's budget, all by `deadline`),
    /// for a decision that needs fresh answers: a scale-down.
    pub async fn confirm(
        &self,
        key: &HsdKey,
        pods: Vec<(String, Target)>,
        deadline: tokio::time::Instant,
    ) {
        let probes = pods
            .into_iter()
            .map(|(uid, target)| self.probe(key, uid, target));
        let _ = tokio::time::timeout_at(deadline, futures::future::join_all(probes)).await;
    }

    fn forget_hsds(&self, live: &HashSet<HsdKey>) {
        self.budgets
            .lock()
            .expect("budgets lock")
            .retain(|key, _| live.contains(key));
    }
}

/// Whether the raw object asks for probes (http or exec), read without parsing the whole spec
/// (most objects are in annotation mode).
pub fn wants_probe(data: &serde_json::Value) -> bool {
    matches!(
        data.pointer("/spec/busyProbe/mode")
            .and_then(|mode| mode.as_str()),
        Some("http" | "exec")
    )
}

fn period(spec: &HotStandbyDeploymentSpec) -> Duration {
    spec.busy_probe.period()
}

/// Probes each running pod of each HSD in http or exec mode every `periodSeconds`; a changed answer
/// triggers a reconcile of its HSD at once. Probes run as their own tasks, so the loop never
/// waits for a slow endpoint.
pub async fn probe_loop(
    hsds: Store<CachedHsd>,
    index: super::cache::SharedIndex,
    probes: Arc<Probes>,
    trigger: tokio::sync::mpsc::UnboundedSender<ObjectRef<CachedHsd>>,
    stop: CancellationToken,
) {
    let mut running = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        while running.try_join_next().is_some() {}
        let mut live_hsds = HashSet::new();
        let mut live_pods = HashSet::new();
        for cached in hsds.state() {
            if !cached.wants_probe() {
                continue;
            }
            let hsd = observe::hsd_facts(&cached.expand());
            let Ok(spec) = &hsd.spec else { continue };
            if !spec.busy_probe.mode.is_probed() {
                continue;
            }
            let key = (hsd.namespace.clone(), hsd.name.clone());
            live_hsds.insert(key.clone());
            let period = period(spec);
            let hsd_ref =
                ObjectRef::new_with(&hsd.name, observe::hsd_resource()).within(&hsd.namespace);
            let pods = index
                .read()
                .expect("index lock")
                .pods_of(&hsd.namespace, &hsd.name);
            for pod in pods.iter().filter(|pod| observe::hsd_selects(&hsd, pod)) {
                let (Some(target), Some(uid)) = (observe::probe_target(pod, spec), pod.uid())
                else {
                    continue;
                };
                live_pods.insert(uid.clone());
                if probes.answers.age(&uid).is_some_and(|age| age < period) {
                    continue;
                }
                if !probes
                    .in_flight
                    .lock()
                    .expect("in-flight lock")
                    .insert(uid.clone())
                {
                    continue;
                }
                let probes = probes.clone();
                let trigger = trigger.clone();
                let key = key.clone();
                let hsd_ref = hsd_ref.clone();
                running.spawn(async move {
                    let changed = probes.probe(&key, uid.clone(), target).await;
                    probes
                        .in_flight
                        .lock()
                        .expect("in-flight lock")
                        .remove(&uid);
                    if changed {
                        let _ = trigger.send(hsd_ref);
                    }
                });
            }
        }
        // Answers of pods no probed HSD probes any more go.
        probes.answers.retain(&live_pods);
        probes.forget_hsds(&live_hsds);
    }
    running.abort_all();
    while running.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_expire_and_report_changes() {
        let answers = Answers::default();
        assert!(answers.record("a".into(), ProbeOutcome::Success));
        assert!(
            !answers.record("a".into(), ProbeOutcome::Success),
            "same answer"
        );
        assert!(answers.record("a".into(), ProbeOutcome::Failure(503)));
        assert_eq!(
            answers.fresh("a", Duration::from_secs(10)),
            Some(ProbeOutcome::Failure(503))
        );
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(answers.fresh("a", Duration::from_millis(10)), None, "stale");
        assert_eq!(answers.fresh("b", Duration::from_secs(10)), None);
        answers.retain(&HashSet::new());
        assert_eq!(answers.fresh("a", Duration::from_secs(10)), None);
    }
}
