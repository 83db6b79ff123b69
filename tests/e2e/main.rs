//! Integration tests against the real local control plane (see `hack/cluster.sh`): one test
//! binary, so that all tests share one cluster; each test works in its own namespace.

mod active_standby;
mod bad_input;
mod busy_safe;
mod busy_safety;
mod cli;
mod cluster;
mod common;
mod core;
mod drain;
mod hsj;
mod http_probe;
mod install_paths;
mod proxy;
mod proxy_hsd;
mod security;
mod sharding;
mod watch;
