//! Install manifests, rendered from code: the CRD, least-privilege RBAC and the unattended
//! operator (a CronJob running one pass a minute). `cronjob/` holds their rendered form,
//! guarded by a drift test.

use kube::CustomResourceExt;
use serde_json::{Value, json};

use crate::crd::HotStandbyDeployment;

/// The namespace the operator objects go to unless `-n` says otherwise.
pub const DEFAULT_OPERATOR_NAMESPACE: &str = "hsd-system";
pub const OPERATOR_NAME: &str = "kubectl-hsd";
/// Nonroot uid/gid of the image (distroless's `nonroot`).
pub const RUN_AS: i64 = 65532;

pub fn default_image() -> String {
    format!(
        "ghcr.io/paia-tech/kubectl-hsd:v{}",
        env!("CARGO_PKG_VERSION")
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OperatorMode {
    /// One pass a minute from a CronJob.
    Cronjob,
    /// `reconcile --watch` in a 2-replica Deployment with leader election.
    Deployment,
}

#[derive(Clone, Debug)]
pub struct OperatorOptions {
    pub mode: OperatorMode,
    pub namespace: String,
    pub image: String,
    /// Watch only `namespace`, with a Role there instead of a ClusterRole.
    pub namespace_scoped: bool,
}

/// Serializes manifests as a YAML stream (`---` between documents).
pub fn to_yaml_documents(documents: &[Value]) -> String {
    documents
        .iter()
        .map(|doc| serde_saphyr::to_string(doc).expect("JSON values always serialize to YAML"))
        .collect::<Vec<_>>()
        .join("---\n")
}

pub fn crd() -> Value {
    serde_json::to_value(HotStandbyDeployment::crd()).expect("a CRD always serializes")
}

/// The label on every object an install makes, naming the install's namespace: `uninstall -n NS`
/// removes exactly the objects of that install, cluster-scoped ones included.
pub const INSTALL_LABEL: &str = "paia.tech/install-namespace";

fn labels() -> Value {
    json!({
        "app.kubernetes.io/name": OPERATOR_NAME,
        "app.kubernetes.io/component": "reconciler",
        "app.kubernetes.io/managed-by": OPERATOR_NAME,
    })
}

fn install_labels(namespace: &str) -> Value {
    let mut labels = labels();
    labels[INSTALL_LABEL] = json!(namespace);
    labels
}

/// The name of an install's cluster-scoped objects: one set per install namespace, so that
/// installs never share (or delete) each other's.
pub fn cluster_object_name(namespace: &str) -> String {
    format!("{OPERATOR_NAME}.{namespace}")
}

/// The cluster-wide rules each mode needs, and nothing more: a one-shot pass lists, a watcher
/// lists and watches.
pub fn reconcile_rules(mode: OperatorMode) -> Value {
    let read: &[&str] = match mode {
        OperatorMode::Cronjob => &["list"],
        OperatorMode::Deployment => &["list", "watch"],
    };
    // get: a watcher reads a child missing from its cache before creating it.
    let write_deployments = [read, &["get", "create", "patch"]].concat();
    let patch_pods = [read, &["patch"]].concat();
    json!([
        {"apiGroups": ["apps.paia.tech"], "resources": ["hotstandbydeployments"], "verbs": read},
        {"apiGroups": ["apps.paia.tech"], "resources": ["hotstandbydeployments/status"], "verbs": ["patch"]},
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": write_deployments},
        // list, patch: children made before labels were injected gain them without a rollout.
        {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["list", "patch"]},
        // patch: the deletion cost that keeps busy pods out of a scale-down.
        {"apiGroups": [""], "resources": ["pods"], "verbs": patch_pods},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create"]},
    ])
}

/// The Lease rules, in the operator's namespace only and on the one Lease by name: a pass
/// reads it to stand aside while a watcher holds it; a watcher takes and renews it (create
/// cannot be limited by name: the object has none yet when it is authorized).
pub fn lease_rules(mode: OperatorMode) -> Value {
    let named = json!([crate::watch::DEFAULT_LEASE_NAME]);
    match mode {
        OperatorMode::Cronjob => json!([
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": named, "verbs": ["get"]},
        ]),
        OperatorMode::Deployment => json!([
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": named, "verbs": ["get", "update", "patch"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        ]),
    }
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
            lease_rules(options.mode)
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
                "rules": lease_rules(options.mode),
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
        OperatorMode::Deployment => documents.push(deployment(options)),
    }
    documents
}

/// The reconciler's arguments with its scope: `--all-namespaces`, or its own namespace.
fn scope_args(options: &OperatorOptions, args: &[&str]) -> Value {
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    if options.namespace_scoped {
        all.extend(["--namespace".to_string(), options.namespace.clone()]);
    } else {
        all.push("--all-namespaces".to_string());
    }
    json!(all)
}

fn pod_security_context() -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

fn container_security_context() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]},
    })
}

/// The CronJob's `activeDeadlineSeconds`: the pass's own deadline (`reconcile --deadline`)
/// plus a few seconds to start the process and print the summary.
pub fn cronjob_active_deadline_seconds() -> u64 {
    crate::reconcile::DEFAULT_PASS_DEADLINE.as_secs() + 5
}

fn cronjob(options: &OperatorOptions) -> Value {
    let deadline = format!("{}s", crate::reconcile::DEFAULT_PASS_DEADLINE.as_secs());
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
                            "resources": {
                                "requests": {"cpu": "50m", "memory": "64Mi"},
                                "limits": {"memory": "256Mi"},
                            },
                        }],
                    },
                },
            }},
        },
    })
}

fn downward_api_env() -> Value {
    json!([
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ])
}

fn deployment(options: &OperatorOptions) -> Value {
    let probe = |path: &str| json!({"httpGet": {"path": path, "port": "metrics"}, "periodSeconds": 10, "timeoutSeconds": 2});
    let labels = || install_labels(&options.namespace);
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": OPERATOR_NAME, "namespace": options.namespace, "labels": labels()},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app.kubernetes.io/name": OPERATOR_NAME, "app.kubernetes.io/component": "reconciler"}},
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
                        "args": scope_args(options, &["reconcile", "--watch", "--log-format", "json", "--v", "1"]),
                        "env": downward_api_env(),
                        "ports": [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}],
                        "livenessProbe": probe("/healthz"),
                        "readinessProbe": probe("/readyz"),
                        "securityContext": container_security_context(),
                        "resources": {
                            "requests": {"cpu": "100m", "memory": "64Mi"},
                            "limits": {"memory": "512Mi"},
                        },
                    }],
                },
            },
        },
    })
}

/// Everything `install` applies, in order: CRD first, then the operator.
pub fn install_documents(operator_options: Option<&OperatorOptions>) -> Vec<Value> {
    let mut documents = vec![crd()];
    if let Some(options) = operator_options {
        documents.extend(operator(options));
    }
    documents
}

/// The committed rendering of `install --operator <mode> --print` with the defaults.
pub fn default_operator_yaml(mode: OperatorMode) -> String {
    to_yaml_documents(&install_documents(Some(&OperatorOptions {
        mode,
        namespace: DEFAULT_OPERATOR_NAMESPACE.to_string(),
        image: default_image(),
        namespace_scoped: false,
    })))
}

/// The name of an install's pod policy and its binding.
pub fn pod_policy_name(operator_namespace: &str) -> String {
    format!("{OPERATOR_NAME}-pods.{operator_namespace}")
}

/// A ValidatingAdmissionPolicy and its binding: a request made with a pod-bound ServiceAccount
/// token may update only the pod the token is bound to, and in it only the busy annotation.
/// It covers only pods an HSD made (they carry [`crate::labels::HSD_LABEL`], injected into every
/// child template), so other controllers annotating their own pods are never blocked; and only
/// the namespaces the install reconciles. The install's own reconciler (its ServiceAccount in its
/// namespace) is exempt: it writes deletion costs.
pub fn pod_policy(
    operator_namespace: &str,
    annotation_key: &str,
    namespace_scoped: bool,
) -> Vec<Value> {
    let reconciler = format!("system:serviceaccount:{operator_namespace}:{OPERATOR_NAME}");
    let reconciler_group = format!("system:serviceaccounts:{operator_namespace}");
    let key = annotation_key.replace('\'', "");
    let name = pod_policy_name(operator_namespace);
    let labels = install_labels(operator_namespace);
    let namespaces = if namespace_scoped {
        json!({"matchLabels": {"kubernetes.io/metadata.name": operator_namespace}})
    } else {
        json!({"matchExpressions": [{
            "key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system"],
        }]})
    };
    vec![
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [{
                        "apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["pods"],
                    }],
                    // Only HSD pods (old or new object carrying the label: removing it is caught).
                    "objectSelector": {"matchExpressions": [{"key": crate::labels::HSD_LABEL, "operator": "Exists"}]},
                },
                "matchConditions": [
                    {
                        "name": "pod-bound-token",
                        "expression": "has(request.userInfo.extra) && 'authentication.kubernetes.io/pod-name' in request.userInfo.extra",
                    },
                    {
                        "name": "not-the-reconciler",
                        "expression": format!("!(request.userInfo.username == '{reconciler}' && '{reconciler_group}' in request.userInfo.groups)"),
                    },
                ],
                "variables": [
                    {"name": "oldAnnotations", "expression": "has(oldObject.metadata.annotations) ? oldObject.metadata.annotations : {}"},
                    {"name": "newAnnotations", "expression": "has(object.metadata.annotations) ? object.metadata.annotations : {}"},
                    {"name": "oldLabels", "expression": "has(oldObject.metadata.labels) ? oldObject.metadata.labels : {}"},
                    {"name": "newLabels", "expression": "has(object.metadata.labels) ? object.metadata.labels : {}"},
                ],
                "validations": [
                    {
                        "expression": "object.metadata.name == request.userInfo.extra['authentication.kubernetes.io/pod-name'][0]",
                        "messageExpression": "'a pod may mark only itself: this token is bound to pod ' + request.userInfo.extra['authentication.kubernetes.io/pod-name'][0] + ', not ' + object.metadata.name",
                        "reason": "Forbidden",
                    },
                    {
                        "expression": format!(
                            "variables.newAnnotations.all(k, k == '{key}' || (k in variables.oldAnnotations && variables.oldAnnotations[k] == variables.newAnnotations[k])) && variables.oldAnnotations.all(k, k == '{key}' || k in variables.newAnnotations) && variables.newLabels == variables.oldLabels && object.spec == oldObject.spec"
                        ),
                        "message": format!("a pod may change only its own {key} annotation"),
                        "reason": "Forbidden",
                    },
                ],
            },
        }),
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name, "labels": install_labels(operator_namespace)},
            "spec": {
                "policyName": name,
                "validationActions": ["Deny"],
                "matchResources": {"namespaceSelector": namespaces},
            },
        }),
    ]
}
