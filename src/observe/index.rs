//! The index every driver reads through: pods by the HSD label their template carries (namespace,
//! label value), child Deployments by (namespace, name). The one-shot pass fills it from
//! paginated lists; the watcher keeps it current from watch events (a relist builds a fresh one
//! that replaces the old when complete). Either way a reconcile reads one HSD's objects in time
//! proportional to that HSD alone.

use std::collections::HashMap;
use std::sync::Arc;

use kube::ResourceExt;

use super::{LeanDeployment, LeanPod};
use crate::labels::{HSD_LABEL, hsd_label_value};

/// (namespace, value of the HSD label).
type OwnerKey = (String, String);

#[derive(Debug, Default, Clone)]
pub struct Index {
    /// Pods by their HSD label, then by name.
    pods: HashMap<OwnerKey, HashMap<String, Arc<LeanPod>>>,
    /// Where each pod (namespace/name) is filed, to move it when its label changes.
    pod_owner: HashMap<(String, String), OwnerKey>,
    deployments: HashMap<(String, String), Arc<LeanDeployment>>,
}

fn pod_key(pod: &LeanPod) -> (String, String) {
    (pod.namespace().unwrap_or_default(), pod.name_any())
}

fn owner_of(pod: &LeanPod) -> Option<OwnerKey> {
    let value = pod.labels().get(HSD_LABEL)?;
    Some((pod.namespace().unwrap_or_default(), value.clone()))
}

impl Index {
    /// An index of listed objects.
    pub fn from_lists(deployments: Vec<LeanDeployment>, pods: Vec<LeanPod>) -> Self {
        let mut index = Self::default();
        for deployment in deployments {
            index.apply_deployment(Arc::new(deployment));
        }
        for pod in pods {
            index.apply_pod(Arc::new(pod));
        }
        index
    }

    /// Adds or replaces a pod (a pod without the HSD label is not kept).
    pub fn apply_pod(&mut self, pod: Arc<LeanPod>) {
        let key = pod_key(&pod);
        let owner = owner_of(&pod);
        if let Some(previous) = self.pod_owner.get(&key).cloned()
            && Some(&previous) != owner.as_ref()
        {
            self.remove_filed(&previous, &key.1);
            self.pod_owner.remove(&key);
        }
        let Some(owner) = owner else {
            return;
        };
        self.pods
            .entry(owner.clone())
            .or_default()
            .insert(key.1.clone(), pod);
        self.pod_owner.insert(key, owner);
    }

    pub fn delete_pod(&mut self, pod: &LeanPod) {
        let key = pod_key(pod);
        if let Some(owner) = self.pod_owner.remove(&key) {
            self.remove_filed(&owner, &key.1);
        }
    }

    fn remove_filed(&mut self, owner: &OwnerKey, name: &str) {
        if let Some(pods) = self.pods.get_mut(owner) {
            pods.remove(name);
            if pods.is_empty() {
                self.pods.remove(owner);
            }
        }
    }

    pub fn apply_deployment(&mut self, deployment: Arc<LeanDeployment>) {
        self.deployments.insert(
            (
                deployment.namespace().unwrap_or_default(),
                deployment.name_any(),
            ),
            deployment,
        );
    }

    pub fn delete_deployment(&mut self, deployment: &LeanDeployment) {
        self.deployments.remove(&(
            deployment.namespace().unwrap_or_default(),
            deployment.name_any(),
        ));
    }

    /// Replaces every pod (a relist is complete).
    pub fn replace_pods(&mut self, pods: Vec<Arc<LeanPod>>) {
        self.pods.clear();
        self.pod_owner.clear();
        for pod in pods {
            self.apply_pod(pod);
        }
    }

    /// Replaces every Deployment (a relist is complete).
    pub fn replace_deployments(&mut self, deployments: Vec<Arc<LeanDeployment>>) {
        self.deployments.clear();
        for deployment in deployments {
            self.apply_deployment(deployment);
        }
    }

    /// The pods labelled as the HSD `name`'s in `namespace`, in name order.
    pub fn pods_of(&self, namespace: &str, name: &str) -> Vec<Arc<LeanPod>> {
        let mut pods: Vec<Arc<LeanPod>> = self
            .pods
            .get(&(namespace.to_string(), hsd_label_value(name)))
            .map(|pods| pods.values().cloned().collect())
            .unwrap_or_default();
        pods.sort_by_key(|pod| pod.name_any());
        pods
    }

    pub fn deployment(&self, namespace: &str, name: &str) -> Option<Arc<LeanDeployment>> {
        self.deployments
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// The HSD label value (and namespace) a pod is filed under: its HSD, for a pod event.
    pub fn owner_label(pod: &LeanPod) -> Option<(String, String)> {
        owner_of(pod)
    }

    pub fn pod_count(&self) -> usize {
        self.pod_owner.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn pod(namespace: &str, name: &str, labels: &BTreeMap<String, String>) -> LeanPod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {},
        }))
        .unwrap()
    }

    fn labelled(hsd: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(HSD_LABEL.to_string(), hsd_label_value(hsd))])
    }

    #[test]
    fn pods_move_with_their_label_and_leave_when_deleted() {
        let mut index = Index::default();
        index.apply_pod(Arc::new(pod("a", "p1", &labelled("h1"))));
        index.apply_pod(Arc::new(pod("a", "p2", &labelled("h1"))));
        index.apply_pod(Arc::new(pod("b", "p1", &labelled("h1"))));
        index.apply_pod(Arc::new(pod("a", "stray", &BTreeMap::new())));
        assert_eq!(index.pods_of("a", "h1").len(), 2);
        assert_eq!(index.pods_of("b", "h1").len(), 1);
        assert_eq!(index.pod_count(), 3, "unlabelled pods are not kept");
        // Relabelled to another HSD: it moves.
        index.apply_pod(Arc::new(pod("a", "p2", &labelled("h2"))));
        assert_eq!(index.pods_of("a", "h1").len(), 1);
        assert_eq!(index.pods_of("a", "h2").len(), 1);
        // Label removed: it goes.
        index.apply_pod(Arc::new(pod("a", "p2", &BTreeMap::new())));
        assert!(index.pods_of("a", "h2").is_empty());
        index.delete_pod(&pod("a", "p1", &labelled("h1")));
        assert!(index.pods_of("a", "h1").is_empty());
        assert_eq!(index.pod_count(), 1);
        // A name over 63 characters is found through its label value.
        let long = format!("{}-x", "n".repeat(70));
        index.apply_pod(Arc::new(pod("a", "p9", &labelled(&long))));
        assert_eq!(index.pods_of("a", &long).len(), 1);
    }

    /// Events: (namespace 0-1, pod 0-5, hsd label 0-2 or none, delete?).
    fn events() -> impl Strategy<Value = Vec<(u8, u8, Option<u8>, bool)>> {
        proptest::collection::vec(
            (0..2u8, 0..6u8, proptest::option::of(0..3u8), any::<bool>()),
            0..60,
        )
    }

    proptest! {
        /// The index answers what a brute-force scan of the surviving pods answers, whatever
        /// the order of adds, relabels and deletes.
        #[test]
        fn the_index_agrees_with_a_brute_force_scan(events in events()) {
            let mut index = Index::default();
            let mut truth: BTreeMap<(String, String), BTreeMap<String, String>> = BTreeMap::new();
            for (ns, name, hsd, delete) in events {
                let (ns, name) = (format!("ns{ns}"), format!("p{name}"));
                let labels = hsd.map(|h| labelled(&format!("h{h}"))).unwrap_or_default();
                let object = pod(&ns, &name, &labels);
                if delete {
                    index.delete_pod(&object);
                    truth.remove(&(ns, name));
                } else {
                    index.apply_pod(Arc::new(object));
                    truth.insert((ns, name), labels);
                }
            }
            for ns in ["ns0", "ns1"] {
                for h in 0..3 {
                    let hsd = format!("h{h}");
                    let want: Vec<String> = truth
                        .iter()
                        .filter(|((n, _), labels)| n == ns && labels.get(HSD_LABEL) == Some(&hsd))
                        .map(|((_, name), _)| name.clone())
                        .collect();
                    let got: Vec<String> = index.pods_of(ns, &hsd).iter().map(|p| p.name_any()).collect();
                    prop_assert_eq!(got, want);
                }
            }
            let labelled_pods = truth.values().filter(|l| l.contains_key(HSD_LABEL)).count();
            prop_assert_eq!(index.pod_count(), labelled_pods);
        }
    }
}
