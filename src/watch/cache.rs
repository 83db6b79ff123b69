//! The watcher's caches: watch events filed into the shared [`Index`] (the same type the
//! one-shot pass fills from lists), with a reflector's relist semantics (a relist builds its
//! objects aside and replaces the old ones only when complete), and a [`SyncGate`] that says
//! when every cache holds a complete view.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use kube::ResourceExt;
use kube::runtime::watcher;

use crate::labels::hsd_label_value;
use crate::observe::{Index, LeanDeployment, LeanPod};

/// Which caches have a complete view: set false when a (re)list starts, true when it is done.
/// Decisions wait for all three.
#[derive(Default)]
pub struct SyncGate {
    hsds: AtomicBool,
    pods: AtomicBool,
    deployments: AtomicBool,
    became_synced: Mutex<Option<tokio::sync::mpsc::UnboundedSender<()>>>,
}

#[derive(Clone, Copy)]
pub enum Cache {
    Hsds,
    Pods,
    Deployments,
}

impl SyncGate {
    /// A gate that tells `became_synced` each time all three caches become complete.
    pub fn new(became_synced: tokio::sync::mpsc::UnboundedSender<()>) -> Arc<Self> {
        let gate = Self::default();
        *gate.became_synced.lock().expect("gate lock") = Some(became_synced);
        Arc::new(gate)
    }

    fn flag(&self, cache: Cache) -> &AtomicBool {
        match cache {
            Cache::Hsds => &self.hsds,
            Cache::Pods => &self.pods,
            Cache::Deployments => &self.deployments,
        }
    }

    pub fn synced(&self) -> bool {
        self.hsds.load(Ordering::SeqCst)
            && self.pods.load(Ordering::SeqCst)
            && self.deployments.load(Ordering::SeqCst)
    }

    pub fn observe<K>(&self, cache: Cache, event: &watcher::Event<K>) {
        match event {
            watcher::Event::Init => self.flag(cache).store(false, Ordering::SeqCst),
            watcher::Event::InitDone => {
                let was = self.synced();
                self.flag(cache).store(true, Ordering::SeqCst);
                if !was
                    && self.synced()
                    && let Some(tell) = self.became_synced.lock().expect("gate lock").as_ref()
                {
                    let _ = tell.send(());
                }
            }
            _ => {}
        }
    }
}

/// The index, shared by the event streams (writers) and the reconciles (readers).
pub type SharedIndex = Arc<RwLock<Index>>;

/// Files pod events into the index; a relist is buffered and swapped in when complete.
pub struct PodFiler {
    index: SharedIndex,
    relist: Option<Vec<Arc<LeanPod>>>,
}

impl PodFiler {
    pub fn new(index: SharedIndex) -> Self {
        Self {
            index,
            relist: None,
        }
    }

    pub fn apply(&mut self, event: &watcher::Event<LeanPod>) {
        match event {
            watcher::Event::Init => self.relist = Some(Vec::new()),
            watcher::Event::InitApply(pod) => {
                if let Some(buffer) = self.relist.as_mut() {
                    buffer.push(Arc::new(pod.clone()));
                }
            }
            watcher::Event::InitDone => {
                let pods = self.relist.take().unwrap_or_default();
                self.index.write().expect("index lock").replace_pods(pods);
            }
            watcher::Event::Apply(pod) => self
                .index
                .write()
                .expect("index lock")
                .apply_pod(Arc::new(pod.clone())),
            watcher::Event::Delete(pod) => self.index.write().expect("index lock").delete_pod(pod),
        }
    }
}

/// Files Deployment events into the index, like [`PodFiler`].
pub struct DeploymentFiler {
    index: SharedIndex,
    relist: Option<Vec<Arc<LeanDeployment>>>,
}

impl DeploymentFiler {
    pub fn new(index: SharedIndex) -> Self {
        Self {
            index,
            relist: None,
        }
    }

    pub fn apply(&mut self, event: &watcher::Event<LeanDeployment>) {
        match event {
            watcher::Event::Init => self.relist = Some(Vec::new()),
            watcher::Event::InitApply(deployment) => {
                if let Some(buffer) = self.relist.as_mut() {
                    buffer.push(Arc::new(deployment.clone()));
                }
            }
            watcher::Event::InitDone => {
                let deployments = self.relist.take().unwrap_or_default();
                self.index
                    .write()
                    .expect("index lock")
                    .replace_deployments(deployments);
            }
            watcher::Event::Apply(deployment) => self
                .index
                .write()
                .expect("index lock")
                .apply_deployment(Arc::new(deployment.clone())),
            watcher::Event::Delete(deployment) => self
                .index
                .write()
                .expect("index lock")
                .delete_deployment(deployment),
        }
    }
}

/// HSD names by (namespace, HSD label value), so that a pod event finds its HSD in O(1) even
/// when a long name was shortened into its label value.
#[derive(Default)]
pub struct HsdNames {
    by_label: RwLock<HashMap<(String, String), String>>,
}

impl HsdNames {
    pub fn apply<K: kube::Resource>(&self, event: &watcher::Event<K>) {
        let mut names = self.by_label.write().expect("names lock");
        let key = |hsd: &K| {
            (
                hsd.namespace().unwrap_or_default(),
                hsd_label_value(&hsd.name_any()),
            )
        };
        match event {
            watcher::Event::Init => names.clear(),
            watcher::Event::Apply(hsd) | watcher::Event::InitApply(hsd) => {
                names.insert(key(hsd), hsd.name_any());
            }
            watcher::Event::Delete(hsd) => {
                names.remove(&key(hsd));
            }
            watcher::Event::InitDone => {}
        }
    }

    /// The name of the HSD a pod is labelled for.
    pub fn of_pod(&self, pod: &LeanPod) -> Option<(String, String)> {
        let (namespace, value) = Index::owner_label(pod)?;
        let name = self
            .by_label
            .read()
            .expect("names lock")
            .get(&(namespace.clone(), value))
            .cloned()?;
        Some((namespace, name))
    }
}
