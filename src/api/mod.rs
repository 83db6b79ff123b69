//! The custom resources, one file per kind, and what they share ([`probe`]: the busy probe).
//! Each kind's identity (group, version, kind, plural) comes from its `#[derive(CustomResource)]`
//! alone: use `Resource::kind(&())`, `CustomResourceExt::crd_name()` and friends, never a copy of
//! the strings.
//! [`active_standby`] is the contract on core Services and pods that active-standby uses.

pub mod active_standby;
pub mod hsd;
pub mod hsj;
pub mod probe;

pub use hsd::HotStandbyDeployment;
pub use hsj::HotStandbyJob;
