//! HSD mode (`kubectl hsd proxy --hsd NAME`): connections go straight to the HSD's pods, one
//! new connection per idle pod, and the HSD sleeps and wakes through its own plan.
//!
//! - **Which pods.** The HSD's pods (its label-filtered watch, as the watcher's), each usable when
//!   it is Running, Ready, has a pod IP, is not terminating and is not draining. Dialled directly
//!   at the container port: no Service, no EndpointSlice hop.
//! - **Idle-only routing.** A new connection goes to an idle pod (its busy annotation is not
//!   busy, and its `paia.tech/state` label, where the HSD keeps one, is not busy) that has no
//!   connection open through this proxy. The pod is claimed under a lock before the dial, so two
//!   accepts never take the same pod before the app has marked itself busy. The claim is
//!   released when the connection closes. With no such pod, the connection is held until one
//!   appears (the idle buffer refills it), or with `--when-all-busy=least-conn` it goes to the
//!   ready pod with the fewest connections from this proxy.
//! - **Sleep and wake.** See [`crate::plan::sleep`]: the proxy moves the HSD's shared deadline
//!   (`zero-pod-autoscaler/scale-down-at` on the HSD) while it has connections, and wakes a
//!   sleeping HSD by moving it and, beside that write, carrying out the HSD's plan as its caches
//!   show it when that plan only raises the child from 0; one pass of the plan over a fresh read
//!   ([`crate::once::reconcile_read`]) follows ([`super::hsd_scale`]). The proxy never decides
//!   `spec.replicas` itself.
//!
//! Claims are per proxy replica: two replicas may each send one connection to the same idle pod
//! in the moment before it marks itself busy. Run one replica for strict one-session-per-pod.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;
use kube::api::DynamicObject;
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;

use super::metrics::ProxyMetrics;
use super::readiness::Readiness;
use crate::api::hsd::HotStandbyDeploymentSpec;
use crate::error::{Error, Result, kube_error};
use crate::labels::{DRAINING_ANNOTATION, HSD_LABEL, STATE_LABEL, hsd_label_value};
use crate::plan::{BusyAnnotation, parse_busy_annotation};

/// What `--when-all-busy` says to do with a connection when no idle pod is free.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum WhenAllBusy {
    /// Hold it (up to --max-wait) until an idle pod is free.
    #[default]
    Hold,
    /// Send it to the ready pod with the fewest connections through this proxy.
    LeastConn,
}

impl WhenAllBusy {
    /// The flag's value.
    pub fn flag(self) -> &'static str {
        match self {
            WhenAllBusy::Hold => "hold",
            WhenAllBusy::LeastConn => "least-conn",
        }
    }
}

/// One pod of the HSD that may take connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCandidate {
    pub name: String,
    pub address: IpAddr,
    /// Busy by its annotation or its state label (an unreadable annotation counts as busy).
    pub busy: bool,
}

/// The HSD as the proxy needs it, read once at start.
#[derive(Clone, Debug)]
pub struct HsdTarget {
    pub namespace: String,
    pub name: String,
    pub port: u16,
    pub busy_key: String,
    /// `spec.scaleToZero.afterSeconds`, if the HSD sleeps.
    pub sleep_after: Option<std::time::Duration>,
}

/// Reads the HSD: its busy annotation key, its port (`--port`, else the pod template's first
/// container port) and its scale-to-zero period. An error names what to fix.
pub async fn resolve(
    client: &Client,
    namespace: &str,
    name: &str,
    port: Option<u16>,
) -> Result<HsdTarget> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &crate::observe::hsd_resource());
    let object = api
        .get_opt(name)
        .await
        .map_err(kube_error(
            "reading the HotStandbyDeployment",
            "get",
            "hotstandbydeployments.apps.paia.tech",
            Some(namespace),
        ))?
        .ok_or_else(|| Error::NotFound {
            what: format!("HotStandbyDeployment {namespace}/{name}"),
        })?;
    let spec: HotStandbyDeploymentSpec = object
        .data
        .get("spec")
        .cloned()
        .ok_or_else(|| {
            Error::Invalid(format!(
                "HotStandbyDeployment {namespace}/{name} has no spec"
            ))
        })
        .and_then(|spec| {
            serde_json::from_value(spec).map_err(|e| {
                Error::Invalid(format!(
                    "the spec of HotStandbyDeployment {namespace}/{name} cannot be read: {e}"
                ))
            })
        })?;
    let port = match port.or_else(|| first_container_port(&spec.pod_template)) {
        Some(port) => port,
        None => {
            return Err(Error::Invalid(format!(
                "HotStandbyDeployment {namespace}/{name}: its pod template declares no containerPort: give --port"
            )));
        }
    };
    Ok(HsdTarget {
        namespace: namespace.to_string(),
        name: name.to_string(),
        port,
        busy_key: spec.busy_probe.annotation_key.clone(),
        sleep_after: spec
            .scale_to_zero
            .as_ref()
            .and_then(|s| u64::try_from(s.after_seconds).ok())
            .filter(|s| *s > 0)
            .map(std::time::Duration::from_secs),
    })
}

fn first_container_port(template: &serde_json::Value) -> Option<u16> {
    template
        .pointer("/spec/containers")?
        .as_array()?
        .iter()
        .filter_map(|c| c.get("ports")?.as_array())
        .flatten()
        .find_map(|p| u16::try_from(p.get("containerPort")?.as_u64()?).ok())
}

/// The label selector of the HSD's pods.
pub fn pod_selector(name: &str) -> String {
    format!("{HSD_LABEL}={}", hsd_label_value(name))
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// The HSD's pods as readiness: every pod that may take a connection (Running, Ready, a pod IP,
/// not terminating, not draining), busy or not, in name order.
pub fn readiness_of(pods: &[Arc<Pod>], busy_key: &str) -> Readiness {
    let mut readiness = Readiness::default();
    let mut candidates = Vec::new();
    for pod in pods {
        if pod.metadata.deletion_timestamp.is_some() {
            readiness.terminating += 1;
            continue;
        }
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        let address = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse::<IpAddr>().ok());
        let draining = pod.annotations().contains_key(DRAINING_ANNOTATION)
            || pod.labels().get(STATE_LABEL).map(String::as_str) == Some("draining");
        let (true, Some(address), false) = (running && is_ready(pod), address, draining) else {
            readiness.not_ready += 1;
            continue;
        };
        let annotation = parse_busy_annotation(pod.annotations().get(busy_key).map(String::as_str));
        let busy = matches!(annotation, BusyAnnotation::Busy | BusyAnnotation::Invalid)
            || pod.labels().get(STATE_LABEL).map(String::as_str) == Some("busy");
        candidates.push(PodCandidate {
            name: pod.name_any(),
            address,
            busy,
        });
    }
    candidates.sort_by(|a, b| a.name.cmp(&b.name));
    readiness.ready = candidates.len();
    readiness.ready_addresses = candidates.iter().map(|c| c.address).collect();
    readiness.pods = candidates.into();
    readiness
}

/// How a connection was routed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    Idle,
    LeastConn,
}

impl Choice {
    pub fn label(self) -> &'static str {
        match self {
            Choice::Idle => "idle",
            Choice::LeastConn => "least_conn",
        }
    }
}

/// The pod for a new connection: an idle one with no connection from this proxy (the first in
/// name order); else, with `least-conn`, the pod with the fewest such connections.
pub fn choose<'a>(
    pods: &'a [PodCandidate],
    open: &HashMap<String, usize>,
    when_all_busy: WhenAllBusy,
) -> Option<(&'a PodCandidate, Choice)> {
    let connections = |pod: &PodCandidate| open.get(&pod.name).copied().unwrap_or(0);
    if let Some(idle) = pods.iter().find(|p| !p.busy && connections(p) == 0) {
        return Some((idle, Choice::Idle));
    }
    match when_all_busy {
        WhenAllBusy::Hold => None,
        WhenAllBusy::LeastConn => pods
            .iter()
            .min_by_key(|p| connections(p))
            .map(|p| (p, Choice::LeastConn)),
    }
}

/// The route of HSD mode: claims pods for connections.
pub struct HsdRoute {
    pub target: HsdTarget,
    pub when_all_busy: WhenAllBusy,
    claims: Arc<Claims>,
    metrics: Arc<ProxyMetrics>,
}

struct Claims {
    open: Mutex<HashMap<String, usize>>,
    /// Bumped when a claim is released, so that held connections look again.
    readiness: Arc<watch::Sender<Readiness>>,
}

/// A pod's place taken by one connection, until dropped.
pub struct Claim {
    claims: Arc<Claims>,
    pod: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        {
            let mut open = self.claims.open.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(count) = open.get_mut(&self.pod) {
                *count -= 1;
                if *count == 0 {
                    open.remove(&self.pod);
                }
            }
        }
        self.claims.readiness.send_modify(|_| {});
    }
}

impl HsdRoute {
    pub fn new(
        target: HsdTarget,
        when_all_busy: WhenAllBusy,
        readiness: Arc<watch::Sender<Readiness>>,
        metrics: Arc<ProxyMetrics>,
    ) -> Self {
        Self {
            target,
            when_all_busy,
            claims: Arc::new(Claims {
                open: Mutex::new(HashMap::new()),
                readiness,
            }),
            metrics,
        }
    }

    /// Whether a new connection would find a pod now.
    pub fn available(&self, readiness: &Readiness) -> bool {
        let open = self.claims.open.lock().unwrap_or_else(|e| e.into_inner());
        choose(&readiness.pods, &open, self.when_all_busy).is_some()
    }

    /// Chooses and claims a pod, under one lock.
    pub fn claim(&self, readiness: &Readiness) -> Option<(SocketAddr, Claim)> {
        let mut open = self.claims.open.lock().unwrap_or_else(|e| e.into_inner());
        let (pod, choice) = choose(&readiness.pods, &open, self.when_all_busy)?;
        *open.entry(pod.name.clone()).or_insert(0) += 1;
        self.metrics.routed(choice.label());
        tracing::debug!(pod = %pod.name, choice = choice.label(), "routed a connection");
        Some((
            SocketAddr::new(pod.address, self.target.port),
            Claim {
                claims: self.claims.clone(),
                pod: pod.name.clone(),
            },
        ))
    }
}

impl std::fmt::Display for HsdRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the idle pods of HotStandbyDeployment {}/{} at port {}",
            self.target.namespace, self.target.name, self.target.port
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, ip: &str, annotations: serde_json::Value, ready: bool) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "annotations": annotations},
                "status": {
                    "phase": "Running",
                    "podIP": ip,
                    "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                },
            }))
            .unwrap(),
        )
    }

    fn candidate(name: &str, busy: bool) -> PodCandidate {
        PodCandidate {
            name: name.into(),
            address: "127.0.0.1".parse().unwrap(),
            busy,
        }
    }

    #[test]
    fn only_running_ready_addressed_pods_that_are_not_leaving_are_candidates() {
        let mut terminating = (*pod("e", "127.0.0.5", json!({}), true)).clone();
        terminating.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        );
        let pods = vec![
            pod("b", "127.0.0.2", json!({"paia.tech/busy": "true"}), true),
            pod("a", "127.0.0.1", json!({}), true),
            pod("c", "127.0.0.3", json!({}), false),
            pod(
                "d",
                "127.0.0.4",
                json!({DRAINING_ANNOTATION: "2026-01-01T00:00:00Z"}),
                true,
            ),
            Arc::new(terminating),
            pod("f", "not-an-ip", json!({}), true),
            pod("g", "127.0.0.7", json!({"paia.tech/busy": "garbage"}), true),
        ];
        let readiness = readiness_of(&pods, "paia.tech/busy");
        let names: Vec<(&str, bool)> = readiness
            .pods
            .iter()
            .map(|p| (p.name.as_str(), p.busy))
            .collect();
        assert_eq!(names, [("a", false), ("b", true), ("g", true)]);
        assert_eq!(
            (readiness.ready, readiness.not_ready, readiness.terminating),
            (3, 3, 1)
        );
    }

    #[test]
    fn routing_table() {
        let pods = [
            candidate("a", true),
            candidate("b", false),
            candidate("c", false),
        ];
        let open = |pairs: &[(&str, usize)]| -> HashMap<String, usize> {
            pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        let chosen = |open: &HashMap<String, usize>, mode| {
            choose(&pods, open, mode).map(|(p, c)| (p.name.clone(), c))
        };
        // The first idle pod with no connection.
        assert_eq!(
            chosen(&open(&[]), WhenAllBusy::Hold),
            Some(("b".into(), Choice::Idle))
        );
        assert_eq!(
            chosen(&open(&[("b", 1)]), WhenAllBusy::Hold),
            Some(("c".into(), Choice::Idle))
        );
        // Every idle pod has a connection: hold, or the least loaded of all.
        let all_taken = open(&[("b", 1), ("c", 2)]);
        assert_eq!(chosen(&all_taken, WhenAllBusy::Hold), None);
        assert_eq!(
            chosen(&all_taken, WhenAllBusy::LeastConn),
            Some(("a".into(), Choice::LeastConn))
        );
        assert_eq!(choose(&[], &open(&[]), WhenAllBusy::LeastConn), None);
    }

    #[tokio::test]
    async fn a_claimed_pod_is_never_chosen_twice_and_its_release_wakes_waiters() {
        let (sender, mut receiver) = watch::channel(Readiness::default());
        let sender = Arc::new(sender);
        let route = HsdRoute::new(
            HsdTarget {
                namespace: "ns".into(),
                name: "app".into(),
                port: 8080,
                busy_key: "paia.tech/busy".into(),
                sleep_after: None,
            },
            WhenAllBusy::Hold,
            sender.clone(),
            Arc::new(ProxyMetrics::new(Default::default())),
        );
        let readiness = Readiness {
            pods: vec![candidate("a", false), candidate("b", false)].into(),
            ..Readiness::default()
        };
        let (first, claim_a) = route.claim(&readiness).unwrap();
        let (_, claim_b) = route.claim(&readiness).unwrap();
        assert_eq!(first.port(), 8080);
        assert!(!route.available(&readiness));
        assert!(
            route.claim(&readiness).is_none(),
            "both idle pods are taken"
        );
        receiver.borrow_and_update();
        drop(claim_a);
        assert!(
            receiver.has_changed().unwrap(),
            "a release wakes held connections"
        );
        let (_, again) = route.claim(&readiness).unwrap();
        assert_eq!(again.pod, "a");
        drop(claim_b);
        assert!(
            route
                .metrics
                .encode()
                .contains("hsd_proxy_routed_total{choice=\"idle\"} 3")
        );
    }

    #[test]
    fn the_port_is_the_first_container_port() {
        let template = json!({"spec": {"containers": [
            {"name": "sidecar"},
            {"name": "app", "ports": [{"containerPort": 7777}, {"containerPort": 9}]},
        ]}});
        assert_eq!(first_container_port(&template), Some(7777));
        assert_eq!(
            first_container_port(&json!({"spec": {"containers": []}})),
            None
        );
    }
}
