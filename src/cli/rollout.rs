//! `rollout status NAME`: waits for a HotStandbyDeployment's template change to finish, like
//! `kubectl rollout status`. A busy-safe rollout ends later than the Deployment's: busy pods of
//! the earlier template keep running until their work ends (or `rollout.maxBusySeconds`).

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::DynamicObject;
use kube::{Api, ResourceExt};

use super::output::human_age;
use super::{GlobalArgs, RolloutCommand};
use crate::api::hsd::{HotStandbyDeploymentStatus, workload_name};
use crate::error::{Error, Result, hsd_read_error, kube_error};
use crate::observe::{Scope, hsd_resource};

const POLL: Duration = Duration::from_secs(1);

/// Where a rollout stands: done, or the one line that says what it waits for.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    Done,
    Waiting(String),
}

/// The rollout's progress from the HSD (its generation and status) and its child Deployment.
pub fn progress(
    generation: Option<i64>,
    status: &HotStandbyDeploymentStatus,
    deployment: Option<&Deployment>,
    now: jiff::Timestamp,
) -> Progress {
    if status.observed_generation.unwrap_or(0) < generation.unwrap_or(0) {
        return Progress::Waiting("waiting for a pass to see the latest spec".into());
    }
    let Some(deployment) = deployment else {
        return Progress::Waiting("waiting for the Deployment to be created".into());
    };
    let spec_replicas = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let ds = deployment.status.clone().unwrap_or_default();
    if ds.observed_generation.unwrap_or(0) < deployment.metadata.generation.unwrap_or(0) {
        return Progress::Waiting("waiting for the Deployment spec update to be observed".into());
    }
    let updated = ds.updated_replicas.unwrap_or(0);
    if updated < spec_replicas {
        return Progress::Waiting(format!(
            "{updated} out of {spec_replicas} new replicas have been updated"
        ));
    }
    let total = ds.replicas.unwrap_or(0);
    if total > updated {
        return Progress::Waiting(format!(
            "{} old replicas are pending termination",
            total - updated
        ));
    }
    let available = ds.available_replicas.unwrap_or(0);
    if available < updated {
        return Progress::Waiting(format!(
            "{available} of {updated} updated replicas are available"
        ));
    }
    if let Some(rollout) = &status.rollout {
        if !rollout.old_busy_pods.is_empty() {
            let pods: Vec<String> = rollout
                .old_busy_pods
                .iter()
                .map(|pod| {
                    let age = pod
                        .since
                        .parse::<jiff::Timestamp>()
                        .map(|since| human_age(now.duration_since(since).as_secs()))
                        .unwrap_or_else(|_| "?".into());
                    format!("{} (retired {age} ago)", pod.name)
                })
                .collect();
            return Progress::Waiting(format!(
                "{} old busy pod(s) still working: {}",
                pods.len(),
                pods.join(", ")
            ));
        }
        if rollout.old_pods > 0 {
            return Progress::Waiting(format!("{} old pod(s) pending removal", rollout.old_pods));
        }
    }
    Progress::Done
}

/// The HSD's status; an unreadable or missing one is an empty status (a pass has yet to write).
fn status_of(object: &DynamicObject) -> HotStandbyDeploymentStatus {
    object
        .data
        .get("status")
        .and_then(|s| serde_json::from_value(s.clone()).ok())
        .unwrap_or_default()
}

pub async fn rollout(global: &GlobalArgs, command: RolloutCommand) -> Result<i32> {
    let RolloutCommand::Status {
        name,
        watch,
        timeout,
    } = command;
    // A long wait: a spinner on a terminal (stderr, never with --log-format json), beside
    // kubectl's "Waiting for ..." lines on stdout.
    let bar = if watch {
        super::install::spinner(global, "waiting for the rollout")
    } else {
        None
    };
    let result = status(global, &name, watch, timeout, bar.as_ref()).await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    result
}

async fn status(
    global: &GlobalArgs,
    name: &str,
    watch: bool,
    timeout: Duration,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<i32> {
    let (client, _, default_ns) = crate::client::connect(&global.client_options()).await?;
    let Scope::Namespace(namespace) = global.scope(&default_ns) else {
        return Err(Error::Invalid(
            "rollout status takes one namespace, not -A".into(),
        ));
    };
    let hsds: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &namespace, &hsd_resource());
    let deployments: Api<Deployment> = Api::namespaced(client, &namespace);
    let started = Instant::now();
    let mut last = None;
    loop {
        let Some(object) = hsds
            .get_opt(name)
            .await
            .map_err(hsd_read_error(Some(&namespace)))?
        else {
            return Err(Error::NotFound {
                what: format!("hotstandbydeployments.apps.paia.tech {name:?}"),
            });
        };
        let deployment = deployments
            .get_opt(&workload_name(name))
            .await
            .map_err(kube_error(
                format!("reading the Deployment of {name}"),
                "get",
                "deployments",
                Some(&namespace),
            ))?;
        let status = status_of(&object);
        match progress(
            object.metadata.generation,
            &status,
            deployment.as_ref(),
            jiff::Timestamp::now(),
        ) {
            Progress::Done => {
                println!(
                    "hotstandbydeployment {:?} successfully rolled out",
                    object.name_any()
                );
                return Ok(0);
            }
            Progress::Waiting(line) => {
                if last.as_ref() != Some(&line) {
                    let print = || {
                        println!(
                            "Waiting for hotstandbydeployment {name:?} rollout to finish: {line}..."
                        )
                    };
                    match bar {
                        Some(bar) => bar.suspend(print),
                        None => print(),
                    }
                    last = Some(line);
                }
            }
        }
        if !watch {
            return Ok(0);
        }
        if !timeout.is_zero() && started.elapsed() >= timeout {
            return Err(Error::Timeout(
                timeout,
                format!("the rollout of hotstandbydeployment {name:?} (--timeout)"),
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::hsd::{RetiredPod, RolloutStatus};
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};

    fn deployment(generation: i64, observed: i64, replicas: i32, status: [i32; 3]) -> Deployment {
        let [total, updated, available] = status;
        Deployment {
            metadata: kube::api::ObjectMeta {
                generation: Some(generation),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                ..Default::default()
            }),
            status: Some(DeploymentStatus {
                observed_generation: Some(observed),
                replicas: Some(total),
                updated_replicas: Some(updated),
                available_replicas: Some(available),
                ..Default::default()
            }),
        }
    }

    fn seen(generation: i64) -> HotStandbyDeploymentStatus {
        HotStandbyDeploymentStatus {
            observed_generation: Some(generation),
            ..Default::default()
        }
    }

    #[test]
    fn progress_reads_like_kubectl_and_waits_for_old_busy_pods() {
        let now: jiff::Timestamp = "2026-12-02T12:00:00Z".parse().unwrap();
        let done = deployment(2, 2, 3, [3, 3, 3]);
        let mut retiring = seen(2);
        retiring.rollout = Some(RolloutStatus {
            template: "t2".into(),
            old_pods: 1,
            old_busy_pods: vec![RetiredPod {
                name: "ws-a".into(),
                since: "2026-12-02T11:57:00Z".into(),
            }],
        });
        let mut idle_old = seen(2);
        idle_old.rollout = Some(RolloutStatus {
            template: "t2".into(),
            old_pods: 2,
            old_busy_pods: vec![],
        });
        let waiting = |s: &str| Progress::Waiting(s.to_string());
        let cases = [
            (
                Some(2),
                seen(1),
                Some(done.clone()),
                waiting("waiting for a pass to see the latest spec"),
            ),
            (
                Some(2),
                seen(2),
                None,
                waiting("waiting for the Deployment to be created"),
            ),
            (
                Some(2),
                seen(2),
                Some(deployment(3, 2, 3, [3, 3, 3])),
                waiting("waiting for the Deployment spec update to be observed"),
            ),
            (
                Some(2),
                seen(2),
                Some(deployment(2, 2, 3, [4, 1, 1])),
                waiting("1 out of 3 new replicas have been updated"),
            ),
            (
                Some(2),
                seen(2),
                Some(deployment(2, 2, 3, [4, 3, 3])),
                waiting("1 old replicas are pending termination"),
            ),
            (
                Some(2),
                seen(2),
                Some(deployment(2, 2, 3, [3, 3, 2])),
                waiting("2 of 3 updated replicas are available"),
            ),
            (
                Some(2),
                retiring,
                Some(done.clone()),
                waiting("1 old busy pod(s) still working: ws-a (retired 3m ago)"),
            ),
            (
                Some(2),
                idle_old,
                Some(done.clone()),
                waiting("2 old pod(s) pending removal"),
            ),
            (Some(2), seen(2), Some(done), Progress::Done),
        ];
        for (generation, status, deployment, expected) in cases {
            assert_eq!(
                progress(generation, &status, deployment.as_ref(), now),
                expected,
                "{status:?} {deployment:?}"
            );
        }
    }
}
