//! Least-privilege rules: what each operator mode needs, and nothing more.

use serde_json::{Value, json};

use super::{OPERATOR_NAME, OperatorMode, install_labels};

pub fn reconcile_rules(mode: OperatorMode) -> Value {
    let read: &[&str] = match mode {
        OperatorMode::Cronjob => &["list"],
        OperatorMode::Deployment => &["list", "watch"],
    };
    // get: a watcher reads a child missing from its cache before creating it.
    let write_deployments = [read, &["get", "create", "patch"]].concat();
    // delete: the pods a scale-down drained (with a precondition on what was read). get: a
    // HotStandbyJob reads a worker's pod again right before deleting its Job.
    let patch_pods = [read, &["get", "patch", "delete"]].concat();
    // get: a Job name already taken is read to tell whether it is one of ours; create and
    // delete: HotStandbyJobs make and retire their Jobs (deletions carry preconditions).
    let write_jobs = [read, &["get", "create", "delete"]].concat();
    // Active-standby Services: read (and, for a watcher, watch) them, and merge-patch the
    // record and the selector key. No get, create, update or delete.
    let patch_services = [read, &["patch"]].concat();
    json!([
        {"apiGroups": ["apps.paia.tech"], "resources": ["hotstandbydeployments", "hotstandbyjobs"], "verbs": read},
        {"apiGroups": ["apps.paia.tech"], "resources": ["hotstandbydeployments/status", "hotstandbyjobs/status"], "verbs": ["patch"]},
        // patch: the shared sleep deadline annotation of an HSD with scaleToZero (a
        // compare-and-swap on its resourceVersion).
        {"apiGroups": ["apps.paia.tech"], "resources": ["hotstandbydeployments"], "verbs": ["patch"]},
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": write_jobs},
        // get and create (each alone is refused): the exec busy probe runs its command in a pod.
        {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["get", "create"]},
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": write_deployments},
        // list, patch: children made before labels were injected gain them without a rollout.
        {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["list", "patch"]},
        // patch: the deletion cost that keeps busy pods out of a scale-down, and the label of
        // an active-standby master. get: a HotStandbyJob reads a worker's pod again right
        // before deleting its Job.
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

/// The name of an install's `view` or `edit` ClusterRole (`kubectl-hsd-view.NS`).
pub fn user_role_name(role: &str, install_namespace: &str) -> String {
    format!("{OPERATOR_NAME}-{role}.{install_namespace}")
}

/// ClusterRoles that Kubernetes aggregates into the built-in `view`, `edit` and `admin` roles,
/// so that whoever may view or edit a namespace may view or edit its HotStandbyDeployments
/// (the status stays the reconciler's).
pub fn aggregated_roles(install_namespace: &str) -> Vec<Value> {
    let with = |extra: &[&str]| {
        let mut labels = install_labels(install_namespace);
        for label in extra {
            labels[format!("rbac.authorization.k8s.io/aggregate-to-{label}")] = json!("true");
        }
        labels
    };
    let read = ["get", "list", "watch"];
    vec![
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": user_role_name("view", install_namespace), "labels": with(&["view", "edit", "admin"])},
            "rules": [
                {"apiGroups": ["apps.paia.tech"], "resources": ["hotstandbydeployments", "hotstandbydeployments/status", "hotstandbyjobs", "hotstandbyjobs/status"], "verbs": read},
            ],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": user_role_name("edit", install_namespace), "labels": with(&["edit", "admin"])},
            "rules": [
                {"apiGroups": ["apps.paia.tech"], "resources": ["hotstandbydeployments", "hotstandbyjobs"], "verbs": ["create", "update", "patch", "delete", "deletecollection"]},
            ],
        }),
    ]
}
