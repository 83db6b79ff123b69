//! kubectl-hsd keeps hot-standby capacity on Kubernetes: each HotStandbyDeployment's child
//! Deployment runs `clamp(busyPods + idleTarget, minReplicas, maxReplicas)` replicas.
//!
//! A reconcile pass is `observe` (reads) -> `plan` (pure) -> `execute` (writes, status last);
//! `reconcile` drives it once for the CronJob.

pub mod cli;
pub mod client;
pub mod crd;
pub mod error;
pub mod execute;
pub mod labels;
pub mod manifests;
pub mod metrics;
pub mod observe;
pub mod plan;
pub mod probe;
pub mod reconcile;
pub mod watch;

pub use error::{Error, Result};
