//! The benchmark's own watch on the child Deployments: their `spec.replicas` now, and each change
//! stamped when its watch event arrived (the end of every reaction and decision measured).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use tokio::sync::mpsc;

use kubectl_hsd::observe::{LeanDeployment, deployment_resource};

use crate::populate::Layout;
use crate::util::{Res, say};

/// A change of a Deployment's `spec.replicas`, stamped when the watch event arrived.
#[derive(Debug)]
pub struct ReplicaChange {
    pub namespace: String,
    pub name: String,
    pub replicas: i32,
    pub at: Instant,
}

/// The benchmark's own watch on the child Deployments.
pub struct DeploymentWatch {
    replicas: Arc<Mutex<HashMap<(String, String), i32>>>,
    changes: mpsc::UnboundedReceiver<ReplicaChange>,
    task: tokio::task::JoinHandle<()>,
}

impl DeploymentWatch {
    pub async fn start(client: &Client) -> Res<Self> {
        let api: Api<LeanDeployment> = Api::all_with(client.clone(), &deployment_resource());
        let replicas = Arc::new(Mutex::new(HashMap::new()));
        let (sender, changes) = mpsc::unbounded_channel();
        let shared = replicas.clone();
        let (synced_tx, synced_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let events = watcher::watcher(
                api,
                watcher::Config::default().labels(kubectl_hsd::labels::HSD_LABEL),
            )
            .default_backoff();
            futures::pin_mut!(events);
            let mut synced = Some(synced_tx);
            loop {
                let event = match events.try_next().await {
                    Ok(Some(event)) => event,
                    Ok(None) => return,
                    Err(error) => {
                        say(format!("deployment watch: {error} (retrying)"));
                        continue;
                    }
                };
                let at = Instant::now();
                let (deployment, initial) = match event {
                    Event::Apply(d) => (d, false),
                    Event::InitApply(d) => (d, true),
                    Event::InitDone => {
                        if let Some(tx) = synced.take() {
                            let _ = tx.send(());
                        }
                        continue;
                    }
                    Event::Init | Event::Delete(_) => continue,
                };
                let key = (
                    deployment.namespace().unwrap_or_default(),
                    deployment.name_any(),
                );
                let Some(value) = deployment.spec.replicas else {
                    continue;
                };
                let previous = shared
                    .lock()
                    .expect("replicas lock")
                    .insert(key.clone(), value);
                if !initial && previous != Some(value) {
                    let _ = sender.send(ReplicaChange {
                        namespace: key.0,
                        name: key.1,
                        replicas: value,
                        at,
                    });
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(120), synced_rx)
            .await
            .map_err(|_| "the deployment watch did not sync within 120s".to_string())?
            .map_err(|_| "the deployment watch stopped".to_string())?;
        Ok(Self {
            replicas,
            changes,
            task,
        })
    }

    pub fn replicas(&self, namespace: &str, name: &str) -> Option<i32> {
        self.replicas
            .lock()
            .expect("replicas lock")
            .get(&(namespace.to_string(), name.to_string()))
            .copied()
    }

    /// Forgets the changes seen so far.
    pub fn drain(&mut self) {
        while self.changes.try_recv().is_ok() {}
    }

    /// Waits for the Deployment to reach `replicas`; returns when the watch saw it.
    pub async fn wait_change(
        &mut self,
        namespace: &str,
        name: &str,
        replicas: i32,
        timeout: Duration,
    ) -> Option<Instant> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let change = tokio::time::timeout_at(deadline, self.changes.recv())
                .await
                .ok()??;
            if change.namespace == namespace && change.name == name && change.replicas == replicas {
                return Some(change.at);
            }
        }
    }

    /// The next change, if one comes before `deadline`.
    pub async fn next_change(&mut self, deadline: tokio::time::Instant) -> Option<ReplicaChange> {
        tokio::time::timeout_at(deadline, self.changes.recv())
            .await
            .ok()
            .flatten()
    }

    /// Waits until each of the first `hsds` Deployments is at `replicas`.
    pub async fn wait_all(
        &self,
        layout: &Layout,
        hsds: usize,
        replicas: i32,
        timeout: Duration,
    ) -> Res<()> {
        crate::util::wait_for(
            &format!("{hsds} Deployments at {replicas} replicas"),
            timeout,
            Duration::from_millis(100),
            || async {
                Ok((0..hsds)
                    .all(|h| {
                        self.replicas(&layout.namespace(h), &Layout::workload(h)) == Some(replicas)
                    })
                    .then_some(()))
            },
        )
        .await
    }
}

impl Drop for DeploymentWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}
