//! kubectl-hsd keeps hot-standby capacity on Kubernetes: each HotStandbyDeployment's child
//! Deployment runs `clamp(busyPods + idleTarget, minReplicas, maxReplicas)` replicas.
//!
//! One pipeline, two drivers:
//! - [`api`]: the custom resources, one file per kind;
//! - [`observe`] (reads: lists or caches into one snapshot, indexed by namespace and owner, and
//!   the busy probes) -> [`plan`] (pure, in named steps) -> [`execute`] (writes, status last);
//! - [`once`] drives the pipeline once over a scope (the CronJob, `kubectl hsd reconcile`);
//!   [`watch`] drives it from caches, leader-elected (`reconcile --watch`);
//! - [`manifests`] renders everything the tool installs; [`cli`] has one file per subcommand.
//! - [`proxy`] is `kubectl hsd proxy`, the wake-on-connect TCP proxy: a room of its own.

pub mod api;
pub mod cli;
pub mod client;
pub mod error;
pub mod execute;
pub mod labels;
pub mod manifests;
pub mod metrics;
pub mod notice;
pub mod observe;
pub mod once;
pub mod plan;
pub mod proxy;
pub mod watch;

pub use error::{Error, Result};
