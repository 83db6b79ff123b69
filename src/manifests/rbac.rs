//! Least-privilege rules: what each operator mode needs, and nothing more.

use serde_json::{Value, json};

use super::OperatorMode;

pub fn reconcile_rules(mode: OperatorMode) -> Value {
    let read: &[&str] = match mode {
        OperatorMode::Cronjob => &["list"],
        OperatorMode::Deployment => &["list", "watch"],
    };
    // get: a watcher reads a child missing from its cache before creating it.
    let write_deployments = [read, &["get", "create", "patch"]].concat();
    // delete: the pods a scale-down drained (with a precondition on what was read).
    let patch_pods = [read, &["patch", "delete"]].concat();
    // Active-standby Services: read (and, for a watcher, watch) them, and merge-patch the
    // record and the selector key. No get, create, update or delete.
    let patch_services = [read, &["patch"]].concat();
    json!([
        {"apiGroups": ["apps.paia.tech"], "resources": ["hotstandbydeployments"], "verbs": read},
        {"apiGroups": ["apps.paia.tech"], "resources": ["hotstandbydeployments/status"], "verbs": ["patch"]},
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": write_deployments},
        // list, patch: children made before labels were injected gain them without a rollout.
        {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["list", "patch"]},
        // patch: the deletion cost that keeps busy pods out of a scale-down, and the label of
        // an active-standby master.
        {"apiGroups": [""], "resources": ["pods"], "verbs": patch_pods},
        {"apiGroups": [""], "resources": ["services"], "verbs": patch_services},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create"]},
    ])
}

/// The Lease rules, in the operator's namespace only and on the one Lease by name: a pass
/// reads it to stand aside while a watcher holds it; a watcher takes and renews it (create
/// cannot be limited by name: the object has none yet when it is authorized).
pub fn lease_rules(mode: OperatorMode, shards: u32) -> Value {
    let named = json!([crate::watch::DEFAULT_LEASE_NAME]);
    match mode {
        // Sharded watchers keep a Lease per shard and one per replica (whose names follow the
        // pods'): those cannot be listed by name, so the rights cover the namespace's Leases.
        OperatorMode::Deployment if shards > 1 => json!([
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "list", "create", "update", "patch", "delete"]},
        ]),
        OperatorMode::Cronjob => json!([
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": named, "verbs": ["get"]},
        ]),
        OperatorMode::Deployment => json!([
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": named, "verbs": ["get", "update", "patch"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        ]),
    }
}
