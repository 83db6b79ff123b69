//! The pod policy: a ValidatingAdmissionPolicy that lets a pod's own token change only that
//! pod's busy annotation.

use serde_json::{Value, json};

use super::{OPERATOR_NAME, install_labels};

/// The name of an install's pod policy and its binding.
pub fn pod_policy_name(operator_namespace: &str) -> String {
    format!("{OPERATOR_NAME}-pods.{operator_namespace}")
}

/// The name of an install's pod policy for HotStandbyJob workers, and its binding.
pub fn hsj_pod_policy_name(operator_namespace: &str) -> String {
    format!("{OPERATOR_NAME}-hsj-pods.{operator_namespace}")
}

/// A ValidatingAdmissionPolicy and its binding: a request made with a pod-bound ServiceAccount
/// token may update only the pod the token is bound to, and in it only the busy annotation.
/// It covers only pods an HSD made (they carry [`crate::labels::HSD_LABEL`], injected into every
/// child template), so other controllers annotating their own pods are never blocked; and only
/// the namespaces the install reconciles. The install's own reconciler (its ServiceAccount in its
/// namespace) is exempt: it writes deletion costs.
///
/// An object selector cannot say "this label or that one", so HotStandbyJob workers (which carry
/// [`crate::labels::HSJ_LABEL`]) get a second policy with the same rules.
pub fn pod_policy(
    operator_namespace: &str,
    annotation_key: &str,
    namespace_scoped: bool,
) -> Vec<Value> {
    let mut documents = pod_policy_for(
        &pod_policy_name(operator_namespace),
        crate::labels::HSD_LABEL,
        operator_namespace,
        annotation_key,
        namespace_scoped,
    );
    documents.extend(pod_policy_for(
        &hsj_pod_policy_name(operator_namespace),
        crate::labels::HSJ_LABEL,
        operator_namespace,
        annotation_key,
        namespace_scoped,
    ));
    documents
}

fn pod_policy_for(
    name: &str,
    label: &str,
    operator_namespace: &str,
    annotation_key: &str,
    namespace_scoped: bool,
) -> Vec<Value> {
    let reconciler = format!("system:serviceaccount:{operator_namespace}:{OPERATOR_NAME}");
    let reconciler_group = format!("system:serviceaccounts:{operator_namespace}");
    let key = annotation_key.replace('\'', "");
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
                    // Only HSD (or HSJ) pods (old or new object carrying the label: removing it is
                    // caught).
                    "objectSelector": {"matchExpressions": [{"key": label, "operator": "Exists"}]},
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
                    {"name": "turnsBusy", "expression": format!(
                        "'{key}' in variables.newAnnotations && variables.newAnnotations['{key}'].lowerAscii() in ['true', 'yes', '1'] && !('{key}' in variables.oldAnnotations && variables.oldAnnotations['{key}'] == variables.newAnnotations['{key}'])"
                    )},
                ],
                "validations": [
                    {
                        "expression": "object.metadata.name == request.userInfo.extra['authentication.kubernetes.io/pod-name'][0]",
                        "messageExpression": "'a pod may mark only itself: this token is bound to pod ' + request.userInfo.extra['authentication.kubernetes.io/pod-name'][0] + ', not ' + object.metadata.name",
                        "reason": "Forbidden",
                    },
                    {
                        // A pod this tool is removing may not take new work (the drain handshake).
                        "expression": format!(
                            "!('{draining}' in variables.oldAnnotations) || !variables.turnsBusy",
                            draining = crate::labels::DRAINING_ANNOTATION
                        ),
                        "messageExpression": "'pod ' + object.metadata.name + ' is draining: it is being removed and may not be marked busy'",
                        "reason": "Forbidden",
                    },
                    {
                        // Nor may a pod that is being deleted: its work would die with it.
                        "expression": "!has(oldObject.metadata.deletionTimestamp) || !variables.turnsBusy",
                        "messageExpression": "'pod ' + object.metadata.name + ' is terminating: it is being deleted and may not be marked busy'",
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
