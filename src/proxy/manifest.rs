//! `kubectl hsd proxy --zpa-manifest`: the objects that replace a ZPA install. A ServiceAccount
//! with a Role holding only what the proxy uses (the Deployment by name where it is known:
//! get, list, watch, patch; EndpointSlices and Endpoints: list, watch), the proxy's Deployment
//! (replicas share the scale-down deadline; non-root, read-only, probed on /healthz and /readyz)
//! and the Service that clients connect to instead of the app's.

use serde_json::{Value, json};

use super::args::{ProxyArgs, ProxyConfig, format_duration};
use crate::manifests::{
    OPERATOR_NAME, container_security_context, default_image, downward_api_env,
    pod_security_context,
};

/// The admin port in the rendered Deployment when `--admin-address` gives none.
const DEFAULT_ADMIN_PORT: u16 = 8080;

fn labels(name: &str) -> Value {
    json!({
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/component": "proxy",
        "app.kubernetes.io/managed-by": OPERATOR_NAME,
    })
}

/// The name of the proxy's objects: `--name`, else `<deployment>-proxy`.
pub fn proxy_name(args: &ProxyArgs) -> String {
    args.name.clone().unwrap_or_else(|| match &args.deployment {
        Some(deployment) => format!("{deployment}-proxy"),
        None => "hsd-proxy".to_string(),
    })
}

/// The Role's rules: what `proxy` calls, and nothing else.
pub fn rules(config: &ProxyConfig) -> Value {
    let names = |name: Option<&String>| name.map(|n| json!([n]));
    let mut deployments = json!({
        "apiGroups": ["apps"], "resources": ["deployments"],
        // get: find it and re-read after a conflict; list, watch: follow it (with a
        // metadata.name field selector, which resourceNames can authorize); patch: scale it and
        // move the deadline annotation.
        "verbs": ["get", "list", "watch", "patch"],
    });
    if config.selector.is_none()
        && let Some(names) = names(config.deployment.as_ref())
    {
        deployments["resourceNames"] = names;
    }
    let mut endpoints = json!({
        "apiGroups": [""], "resources": ["endpoints"], "verbs": ["list", "watch"],
    });
    if let Some(names) = names(config.endpoints.as_ref().or(config.deployment.as_ref())) {
        endpoints["resourceNames"] = names;
    }
    json!([
        deployments,
        // EndpointSlice names are generated: only the label selector narrows them.
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
        // The fallback where EndpointSlices are not served.
        endpoints,
    ])
}

/// The container's arguments: the given flags, listening on every interface.
pub fn container_args(args: &ProxyArgs, config: &ProxyConfig, namespace: &str) -> Vec<String> {
    let admin_port = match config.admin_address.port {
        0 => DEFAULT_ADMIN_PORT,
        port => port,
    };
    let mut all = vec![
        "proxy".to_string(),
        format!("--namespace={namespace}"),
        format!("--address=:{}", config.address.port),
        format!("--admin-address=:{admin_port}"),
    ];
    if let Some(deployment) = &config.deployment {
        all.push(format!("--deployment={deployment}"));
    }
    if let Some(selector) = &config.selector {
        all.push(format!("--selector={selector}"));
    }
    if let Some(endpoints) = &config.endpoints {
        all.push(format!("--endpoints={endpoints}"));
    }
    all.extend([
        format!("--target={}", config.target),
        format!("--ttl={}", format_duration(config.ttl)),
        format!("--max-wait={}", format_duration(config.max_wait)),
        format!(
            "--connect-timeout={}",
            format_duration(config.connect_timeout)
        ),
        format!("--max-held={}", config.max_held),
        format!("--wake-replicas={}", config.wake_replicas),
        format!("--drain-timeout={}", format_duration(config.drain_timeout)),
    ]);
    for cidr in &args.allow_dial_cidr {
        all.push(format!("--allow-dial-cidr={cidr}"));
    }
    all.extend(["--log-format=json".to_string(), "--v=1".to_string()]);
    all
}

/// The manifests, in apply order.
pub fn render(
    args: &ProxyArgs,
    config: &ProxyConfig,
    namespace: &str,
) -> Result<Vec<Value>, String> {
    if config.address.port == 0 {
        return Err("--zpa-manifest needs a fixed port in --address (such as :3000)".into());
    }
    let name = proxy_name(args);
    let image = args.image.clone().unwrap_or_else(default_image);
    let labels = labels(&name);
    let selector = json!({
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/component": "proxy",
    });
    let admin_port = match config.admin_address.port {
        0 => DEFAULT_ADMIN_PORT,
        port => port,
    };
    let probe = |path: &str| json!({"httpGet": {"path": path, "port": "admin"}, "periodSeconds": 10, "timeoutSeconds": 2});
    // Kubernetes waits this long after SIGTERM before it kills the pod: the drain, and a margin.
    let grace = config.drain_timeout.as_secs().saturating_add(10);
    let mut security_context = pod_security_context();
    if config.address.port < 1024 || admin_port < 1024 {
        // A non-root process may bind a port below 1024 only with this (safe, namespaced) sysctl.
        security_context["sysctls"] =
            json!([{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]);
    }
    Ok(vec![
        json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "rules": rules(config),
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        }),
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "replicas": args.proxy_replicas,
                "selector": {"matchLabels": selector},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": name,
                        "securityContext": security_context,
                        "terminationGracePeriodSeconds": grace,
                        "containers": [{
                            "name": "proxy",
                            "image": image,
                            "args": container_args(args, config, namespace),
                            "env": downward_api_env(),
                            "ports": [
                                {"name": "proxy", "containerPort": config.address.port, "protocol": "TCP"},
                                {"name": "admin", "containerPort": admin_port, "protocol": "TCP"},
                            ],
                            "livenessProbe": probe("/healthz"),
                            "readinessProbe": probe("/readyz"),
                            "securityContext": container_security_context(),
                            "resources": {
                                "requests": {"cpu": "50m", "memory": "32Mi"},
                                "limits": {"memory": "512Mi"},
                            },
                        }],
                    },
                },
            },
        }),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "type": "ClusterIP",
                "selector": selector,
                "ports": [{"name": "proxy", "port": config.address.port, "targetPort": "proxy", "protocol": "TCP"}],
            },
        }),
    ])
}
