//! The unattended operator: its namespace, ServiceAccount, RBAC, and the CronJob (one pass a
//! minute) or the watcher Deployment with its metrics Service, PodDisruptionBudget and,
//! optionally, a prometheus-operator monitor.

use serde_json::{Value, json};

use super::{
    MonitorKind, OPERATOR_NAME, OperatorMode, OperatorOptions, RUN_AS, cluster_object_name,
    install_labels, lease_rules, reconcile_rules,
};

/// The watcher's `/metrics`, `/healthz` and `/readyz` port.
pub const METRICS_PORT: u16 = 8080;

/// The headless Service of the watcher's metrics: one endpoint per replica, since each replica
/// has metrics of its own (`hsd_leader` first of all).
pub fn metrics_service_name() -> String {
    format!("{OPERATOR_NAME}-metrics")
}

/// The container resources of each mode unless told otherwise.
pub fn default_resources(mode: OperatorMode) -> Value {
    match mode {
        OperatorMode::Cronjob => json!({
            "requests": {"cpu": "50m", "memory": "64Mi"},
            "limits": {"memory": "256Mi"},
        }),
        OperatorMode::Deployment => json!({
            "requests": {"cpu": "100m", "memory": "64Mi"},
            "limits": {"memory": "512Mi"},
        }),
    }
}

/// The labels that select the watcher's pods.
fn pod_selector() -> Value {
    json!({"app.kubernetes.io/name": OPERATOR_NAME, "app.kubernetes.io/component": "reconciler"})
}

/// The manifests of the unattended operator (without the CRD).
pub fn operator(options: &OperatorOptions) -> Vec<Value> {
    let ns = &options.namespace;
    let name = OPERATOR_NAME;
    let labels = || install_labels(ns);
    let subjects = json!([{"kind": "ServiceAccount", "name": name, "namespace": ns}]);
    let mut documents = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels()}}),
        json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": ns, "labels": labels()},
            "automountServiceAccountToken": true,
        }),
    ];
    if options.namespace_scoped {
        // One Role in the watched namespace holds every right, the Lease's included.
        let mut rules = reconcile_rules(options.mode)
            .as_array()
            .cloned()
            .unwrap_or_default();
        rules.extend(
            lease_rules(options.mode, options.shards)
                .as_array()
                .cloned()
                .unwrap_or_default(),
        );
        documents.push(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": name, "namespace": ns, "labels": labels()},
            "rules": rules,
        }));
        documents.push(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": ns, "labels": labels()},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": subjects,
        }));
    } else {
        let cluster_name = cluster_object_name(ns);
        documents.extend([
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": cluster_name, "labels": labels()},
                "rules": reconcile_rules(options.mode),
            }),
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": cluster_name, "labels": labels()},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_name},
                "subjects": subjects,
            }),
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": format!("{name}-lease"), "namespace": ns, "labels": labels()},
                "rules": lease_rules(options.mode, options.shards),
            }),
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": format!("{name}-lease"), "namespace": ns, "labels": labels()},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": format!("{name}-lease")},
                "subjects": subjects,
            }),
        ]);
    }
    match options.mode {
        OperatorMode::Cronjob => documents.push(cronjob(options)),
        OperatorMode::Deployment => {
            documents.push(deployment(options));
            documents.extend(watcher_extras(options));
        }
    }
    documents
}

/// Beside the watcher Deployment: its metrics Service, a PodDisruptionBudget that keeps one of
/// the two replicas through a drain (the standby takes the lease), and the monitor, if any.
fn watcher_extras(options: &OperatorOptions) -> Vec<Value> {
    let ns = &options.namespace;
    let labels = || install_labels(ns);
    let mut documents = vec![
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": metrics_service_name(), "namespace": ns, "labels": labels()},
            "spec": {
                "clusterIP": "None",
                "selector": pod_selector(),
                "ports": [{"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"}],
            },
        }),
        json!({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": OPERATOR_NAME, "namespace": ns, "labels": labels()},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": pod_selector()}},
        }),
    ];
    match options.monitor {
        Some(MonitorKind::ServiceMonitor) => documents.push(json!({
            "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
            "metadata": {"name": OPERATOR_NAME, "namespace": ns, "labels": labels()},
            "spec": {
                "selector": {"matchLabels": install_labels(ns)},
                "namespaceSelector": {"matchNames": [ns]},
                "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "30s"}],
            },
        })),
        Some(MonitorKind::PodMonitor) => documents.push(json!({
            "apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
            "metadata": {"name": OPERATOR_NAME, "namespace": ns, "labels": labels()},
            "spec": {
                "selector": {"matchLabels": pod_selector()},
                "namespaceSelector": {"matchNames": [ns]},
                "podMetricsEndpoints": [{"port": "metrics", "path": "/metrics", "interval": "30s"}],
            },
        })),
        None => {}
    }
    documents
}

/// The reconciler's arguments with its scope: `--all-namespaces`, or its own namespace.
fn scope_args<S: AsRef<str>>(options: &OperatorOptions, args: &[S]) -> Value {
    let mut all: Vec<String> = args.iter().map(|a| a.as_ref().to_string()).collect();
    if options.namespace_scoped {
        all.extend(["--namespace".to_string(), options.namespace.clone()]);
    } else {
        all.push("--all-namespaces".to_string());
    }
    json!(all)
}

pub(crate) fn pod_security_context() -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

pub(crate) fn container_security_context() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]},
    })
}

/// The CronJob's `activeDeadlineSeconds`: the pass's own deadline (`reconcile --deadline`)
/// plus a few seconds to start the process and print the summary.
pub fn cronjob_active_deadline_seconds() -> u64 {
    crate::once::DEFAULT_PASS_DEADLINE.as_secs() + 5
}

fn cronjob(options: &OperatorOptions) -> Value {
    let deadline = format!("{}s", crate::once::DEFAULT_PASS_DEADLINE.as_secs());
    let labels = || install_labels(&options.namespace);
    json!({
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": OPERATOR_NAME, "namespace": options.namespace, "labels": labels()},
        "spec": {
            "schedule": "* * * * *",
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": 30,
            "successfulJobsHistoryLimit": 1,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {"spec": {
                "backoffLimit": 0,
                "activeDeadlineSeconds": cronjob_active_deadline_seconds(),
                "ttlSecondsAfterFinished": 600,
                "template": {
                    "metadata": {"labels": labels()},
                    "spec": {
                        "serviceAccountName": OPERATOR_NAME,
                        "restartPolicy": "Never",
                        "securityContext": pod_security_context(),
                        "containers": [{
                            "name": "reconcile",
                            "image": options.image,
                            "args": scope_args(options, &["reconcile", "--deadline", &deadline]),
                            // POD_NAMESPACE: the Lease of a watcher to stand aside for.
                            "env": downward_api_env(),
                            "securityContext": container_security_context(),
                            "resources": options.resources,
                        }],
                    },
                },
            }},
        },
    })
}

pub(crate) fn downward_api_env() -> Value {
    json!([
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ])
}

fn watch_args(options: &OperatorOptions) -> Vec<String> {
    let metrics_addr = format!("0.0.0.0:{METRICS_PORT}");
    let mut args: Vec<String> = [
        "reconcile",
        "--watch",
        "--metrics-addr",
        &metrics_addr,
        "--log-format",
        "json",
        "--v",
        "1",
    ]
    .map(String::from)
    .to_vec();
    if options.shards > 1 {
        args.extend(["--shards".to_string(), options.shards.to_string()]);
    }
    args
}

fn deployment(options: &OperatorOptions) -> Value {
    let probe = |path: &str| json!({"httpGet": {"path": path, "port": "metrics"}, "periodSeconds": 10, "timeoutSeconds": 2});
    let labels = || install_labels(&options.namespace);
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": OPERATOR_NAME, "namespace": options.namespace, "labels": labels()},
        "spec": {
            "replicas": options.replicas,
            "selector": {"matchLabels": pod_selector()},
            "template": {
                "metadata": {"labels": labels()},
                "spec": {
                    "serviceAccountName": OPERATOR_NAME,
                    "securityContext": pod_security_context(),
                    // The standby takes over within the lease duration; SIGTERM releases the lease at once.
                    "terminationGracePeriodSeconds": 30,
                    "containers": [{
                        "name": "reconcile",
                        "image": options.image,
                        "args": scope_args(options, &watch_args(options)),
                        "env": downward_api_env(),
                        "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
                        "livenessProbe": probe("/healthz"),
                        "readinessProbe": probe("/readyz"),
                        "securityContext": container_security_context(),
                        "resources": options.resources,
                    }],
                },
            },
        },
    })
}
