//! The Helm chart (`charts/kubectl-hsd`) and the kustomize tree (`kustomize/`), rendered from
//! the same functions as `kubectl hsd install`, so that the three install paths cannot drift.
//! `tests/generated.rs` keeps the committed files equal to this rendering; e2e tests render the
//! chart with `helm` and the overlays with `kubectl kustomize` and compare the objects with
//! `install --print`'s.
//!
//! The chart is made by rendering every combination of its switches (mode, namespace scope,
//! pod policy) with sentinel values in place of what Helm fills in (the release namespace, the
//! image, the busy annotation, the resources), then grouping identical documents under the
//! `if` of the combinations that produce them.

use serde_json::{Value, json};

use super::{
    DEFAULT_OPERATOR_NAMESPACE, IMAGE_REPOSITORY, MonitorKind, OperatorMode, OperatorOptions,
    aggregated_roles, crd_yaml, crds_yaml, default_resources, hsj_crd_yaml, operator, pod_policy,
    to_yaml_documents,
};

/// The chart's directory, relative to the repository.
pub const CHART_DIR: &str = "charts/kubectl-hsd";
/// The kustomize tree's directory, relative to the repository.
pub const KUSTOMIZE_DIR: &str = "kustomize";

const NAMESPACE: &str = "__HSD_NAMESPACE__";
const IMAGE: &str = "__HSD_IMAGE__";
const BUSY_KEY: &str = "__HSD_BUSY_KEY__";
const RESOURCES: &str = "__HSD_RESOURCES__";
/// Numbers that no real install uses, standing for `.Values.replicas` and `.Values.shards`.
const REPLICAS: i32 = 987_601;
const SHARDS: u32 = 987_602;

const GENERATED: &str = "Generated from src/manifests by `HSD_REGENERATE=1 cargo test --test generated`: edit the code, not this file.";

/// One switch combination of the chart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Variant {
    mode: OperatorMode,
    namespace_scoped: bool,
    pod_policy: bool,
    /// `shards` > 1 (sharded watchers hold several Leases, with other rights).
    sharded: bool,
}

fn variants() -> Vec<Variant> {
    let mut all = Vec::new();
    for mode in [OperatorMode::Cronjob, OperatorMode::Deployment] {
        for namespace_scoped in [false, true] {
            for pod_policy in [false, true] {
                for sharded in [false, true] {
                    all.push(Variant {
                        mode,
                        namespace_scoped,
                        pod_policy,
                        sharded,
                    });
                }
            }
        }
    }
    all
}

fn mode_name(mode: OperatorMode) -> &'static str {
    match mode {
        OperatorMode::Cronjob => "cronjob",
        OperatorMode::Deployment => "deployment",
    }
}

/// What `install` applies for a variant, with sentinels (without the Namespace, which Helm's
/// `--create-namespace` makes, and the CRD, which is in the chart's `crds/`).
fn variant_documents(variant: Variant, monitor: Option<MonitorKind>) -> Vec<Value> {
    let options = OperatorOptions {
        namespace_scoped: variant.namespace_scoped,
        resources: json!(RESOURCES),
        monitor,
        replicas: REPLICAS,
        shards: if variant.sharded { SHARDS } else { 1 },
        ..OperatorOptions::new(variant.mode, NAMESPACE, IMAGE)
    };
    let mut documents = aggregated_roles(NAMESPACE);
    documents.extend(operator(&options));
    if variant.pod_policy {
        documents.extend(pod_policy(NAMESPACE, BUSY_KEY, variant.namespace_scoped));
    }
    documents.retain(|d| d["kind"] != "Namespace");
    documents
}

/// The Helm condition that holds exactly for `chosen` among all variants, as simple as the
/// set allows (each switch that matters, and-ed).
fn condition(chosen: &[Variant]) -> Option<String> {
    let all = variants();
    if chosen.len() == all.len() {
        return None;
    }
    let mut parts = Vec::new();
    let modes: Vec<OperatorMode> = dedup(chosen.iter().map(|v| v.mode));
    let scopes: Vec<bool> = dedup(chosen.iter().map(|v| v.namespace_scoped));
    let policies: Vec<bool> = dedup(chosen.iter().map(|v| v.pod_policy));
    let sharding: Vec<bool> = dedup(chosen.iter().map(|v| v.sharded));
    if modes.len() * scopes.len() * policies.len() * sharding.len() != chosen.len() {
        // Not a product of per-switch choices: spell out each variant.
        let each: Vec<String> = chosen
            .iter()
            .map(|v| condition(&[*v]).unwrap_or_default())
            .map(|c| format!("({c})"))
            .collect();
        return Some(format!("or {}", each.join(" ")));
    }
    if modes.len() == 1 {
        parts.push(format!("(eq .Values.mode \"{}\")", mode_name(modes[0])));
    }
    if scopes.len() == 1 {
        parts.push(if scopes[0] {
            ".Values.namespaceScoped".to_string()
        } else {
            "(not .Values.namespaceScoped)".to_string()
        });
    }
    if policies.len() == 1 {
        parts.push(if policies[0] {
            ".Values.podPolicy.enabled".to_string()
        } else {
            "(not .Values.podPolicy.enabled)".to_string()
        });
    }
    if sharding.len() == 1 {
        parts.push(if sharding[0] {
            "(gt (int .Values.shards) 1)".to_string()
        } else {
            "(le (int .Values.shards) 1)".to_string()
        });
    }
    Some(match parts.len() {
        1 => parts.remove(0),
        _ => format!("and {}", parts.join(" ")),
    })
}

fn dedup<T: PartialEq>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut out = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// A document's YAML with the sentinels turned into Helm template expressions.
fn templated(document: &Value, mode: OperatorMode) -> String {
    let yaml = to_yaml_documents(std::slice::from_ref(document));
    let mut out = String::new();
    for line in yaml.lines() {
        let trimmed = line.trim_start();
        if trimmed == format!("resources: {RESOURCES}") {
            let indent = line.len() - trimmed.len();
            let pad = " ".repeat(indent + 2);
            let default = to_yaml_documents(&[default_resources(mode)]);
            out.push_str(&format!("{}resources:\n", " ".repeat(indent)));
            out.push_str(&format!("{pad}{{{{- if .Values.resources }}}}\n"));
            out.push_str(&format!(
                "{pad}{{{{- toYaml .Values.resources | nindent {} }}}}\n",
                indent + 2
            ));
            out.push_str(&format!("{pad}{{{{- else }}}}\n"));
            for default_line in default.lines() {
                out.push_str(&format!("{pad}{default_line}\n"));
            }
            out.push_str(&format!("{pad}{{{{- end }}}}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    let out = out
        .replace(
            &format!("replicas: {REPLICAS}"),
            "replicas: {{ .Values.replicas }}",
        )
        .replace(&format!("'{SHARDS}'"), "{{ .Values.shards | quote }}")
        .replace(&format!("\"{SHARDS}\""), "{{ .Values.shards | quote }}");
    out.replace(NAMESPACE, "{{ .Release.Namespace }}")
        .replace(IMAGE, "{{ include \"kubectl-hsd.image\" . }}")
        .replace(
            BUSY_KEY,
            "{{ .Values.podPolicy.annotationKey | replace \"'\" \"\" }}",
        )
}

/// The chart's one template: every document of every variant, each under its condition.
fn chart_template() -> String {
    // (document text, variants that have it), in first-seen order.
    let mut groups: Vec<(String, Vec<Variant>)> = Vec::new();
    for variant in variants() {
        for document in variant_documents(variant, None) {
            let text = templated(&document, variant.mode);
            match groups.iter_mut().find(|(t, _)| *t == text) {
                Some((_, chosen)) => chosen.push(variant),
                None => groups.push((text, vec![variant])),
            }
        }
    }
    let mut out = format!("{{{{- /* {GENERATED} */}}}}\n");
    out.push_str("{{- include \"kubectl-hsd.validate\" . }}\n");
    for (text, chosen) in &groups {
        match condition(chosen) {
            Some(condition) => out.push_str(&format!(
                "{{{{- if {condition} }}}}\n---\n{text}{{{{- end }}}}\n"
            )),
            None => out.push_str(&format!("---\n{text}")),
        }
    }
    // The monitors: only beside the watcher, each behind its own switch.
    for (monitor, switch) in [
        (
            MonitorKind::ServiceMonitor,
            ".Values.metrics.serviceMonitor.enabled",
        ),
        (
            MonitorKind::PodMonitor,
            ".Values.metrics.podMonitor.enabled",
        ),
    ] {
        let variant = Variant {
            mode: OperatorMode::Deployment,
            namespace_scoped: false,
            pod_policy: false,
            sharded: false,
        };
        let kind = match monitor {
            MonitorKind::ServiceMonitor => "ServiceMonitor",
            MonitorKind::PodMonitor => "PodMonitor",
        };
        let document = variant_documents(variant, Some(monitor))
            .into_iter()
            .find(|d| d["kind"] == kind)
            .expect("the watcher renders its monitor");
        let text = templated(&document, OperatorMode::Deployment);
        out.push_str(&format!(
            "{{{{- if and (eq .Values.mode \"deployment\") {switch} }}}}\n---\n{text}{{{{- end }}}}\n"
        ));
    }
    out
}

const HELPERS: &str = r#"{{/* The image: image.repository and image.tag, the tag defaulting to v<appVersion>. */}}
{{- define "kubectl-hsd.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default (printf "v%s" .Chart.AppVersion) }}
{{- end }}

{{/* Refuses values that `kubectl hsd install` would refuse. */}}
{{- define "kubectl-hsd.validate" -}}
{{- if not (has .Values.mode (list "cronjob" "deployment")) }}
{{- fail (printf "mode must be cronjob or deployment, not %q" .Values.mode) }}
{{- end }}
{{- if and (ne .Values.mode "deployment") (or .Values.metrics.serviceMonitor.enabled .Values.metrics.podMonitor.enabled) }}
{{- fail "metrics.serviceMonitor and metrics.podMonitor need mode: deployment (the CronJob serves no metrics)" }}
{{- end }}
{{- end }}
"#;

fn values_yaml() -> String {
    let cronjob = to_yaml_documents(&[default_resources(OperatorMode::Cronjob)]);
    let deployment = to_yaml_documents(&[default_resources(OperatorMode::Deployment)]);
    let comment = |text: &str| {
        text.lines()
            .map(|l| format!("#   {l}\n"))
            .collect::<String>()
    };
    format!(
        r#"# {GENERATED}
# Values of the kubectl-hsd chart; `kubectl hsd install --help` describes the same choices.

# How the reconciler runs: "cronjob" (one pass a minute, `install --operator cronjob`) or
# "deployment" (`reconcile --watch` in 2 replicas with leader election, a metrics Service and a
# PodDisruptionBudget, `install --operator deployment`).
mode: cronjob

# true: reconcile only the release namespace, with a Role there and nothing cluster-wide
# (`install --namespace-scoped`). false: every namespace, with a ClusterRole.
namespaceScoped: false

# With mode: deployment, the watcher replicas (`install --replicas`) and the shards the HSDs are
# split into, each on its own Lease (`install --shards`; 1: no sharding).
replicas: 2
shards: 1

image:
  repository: {IMAGE_REPOSITORY}
  # Default: v<appVersion>, the image `hack/release.sh` builds for this chart's version.
  tag: ""

# A ValidatingAdmissionPolicy so that a pod's own token may change only that pod's busy
# annotation (`install --pod-policy`).
podPolicy:
  enabled: false
  annotationKey: paia.tech/busy

# The reconciler container's resources. Empty: the mode's default, as `install` sets it:
# cronjob:
{}# deployment:
{}resources: {{}}

# With mode: deployment, a prometheus-operator monitor of /metrics (its CRDs must exist).
metrics:
  serviceMonitor:
    enabled: false
  podMonitor:
    enabled: false
"#,
        comment(&cronjob),
        comment(&deployment),
    )
}

fn values_schema() -> String {
    let schema = json!({
        "$schema": "https://json-schema.org/draft-07/schema#",
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "mode": {"type": "string", "enum": ["cronjob", "deployment"]},
            "namespaceScoped": {"type": "boolean"},
            "replicas": {"type": "integer", "minimum": 1},
            "shards": {"type": "integer", "minimum": 1},
            "image": {
                "type": "object", "additionalProperties": false,
                "properties": {"repository": {"type": "string", "minLength": 1}, "tag": {"type": "string"}},
            },
            "podPolicy": {
                "type": "object", "additionalProperties": false,
                "properties": {"enabled": {"type": "boolean"}, "annotationKey": {"type": "string", "minLength": 1, "maxLength": 317}},
            },
            "resources": {"type": "object"},
            "metrics": {
                "type": "object", "additionalProperties": false,
                "properties": {
                    "serviceMonitor": {"type": "object", "additionalProperties": false, "properties": {"enabled": {"type": "boolean"}}},
                    "podMonitor": {"type": "object", "additionalProperties": false, "properties": {"enabled": {"type": "boolean"}}},
                },
            },
        },
    });
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema serializes");
    text.push('\n');
    text
}

fn chart_yaml() -> String {
    let version = env!("CARGO_PKG_VERSION");
    format!(
        r#"# {GENERATED}
apiVersion: v2
name: kubectl-hsd
description: Hot-standby capacity for Kubernetes - the HotStandbyDeployment CRD and its reconciler (CronJob or leader-elected watcher)
type: application
version: {version}
appVersion: "{version}"
home: {repository}
sources:
  - {repository}
keywords:
  - autoscaling
  - hot-standby
annotations:
  licenses: Apache-2.0
"#,
        repository = env!("CARGO_PKG_REPOSITORY"),
    )
}

/// Every file of the chart: (path relative to the repository, content).
pub fn helm_chart_files() -> Vec<(String, String)> {
    let file = |name: &str, content: String| (format!("{CHART_DIR}/{name}"), content);
    vec![
        file("Chart.yaml", chart_yaml()),
        file("values.yaml", values_yaml()),
        file("values.schema.json", values_schema()),
        file(
            ".helmignore",
            "# Generated with the chart (see templates/kubectl-hsd.yaml).\n*.orig\n*.swp\n".into(),
        ),
        file(
            "crds/hotstandbydeployment.yaml",
            format!("# {GENERATED}\n{}", crd_yaml()),
        ),
        file(
            "crds/hotstandbyjob.yaml",
            format!("# {GENERATED}\n{}", hsj_crd_yaml()),
        ),
        file("templates/_helpers.tpl", HELPERS.to_string()),
        file("templates/kubectl-hsd.yaml", chart_template()),
    ]
}

/// A kustomize overlay: `(name, mode, namespace_scoped, pod_policy)`.
pub fn kustomize_overlays() -> Vec<(String, OperatorMode, bool, bool)> {
    variants()
        .into_iter()
        .filter(|v| !v.sharded)
        .map(|v| {
            let mut name = mode_name(v.mode).to_string();
            if v.namespace_scoped {
                name.push_str("-namespaced");
            }
            if v.pod_policy {
                name.push_str("-pod-policy");
            }
            (name, v.mode, v.namespace_scoped, v.pod_policy)
        })
        .collect()
}

fn kustomization(kind: &str, resources: &[&str], components: &[String]) -> String {
    let mut text = format!("# {GENERATED}\napiVersion: kustomize.config.k8s.io/");
    text.push_str(match kind {
        "Component" => "v1alpha1\nkind: Component\n",
        _ => "v1beta1\nkind: Kustomization\n",
    });
    if !resources.is_empty() {
        text.push_str("resources:\n");
        for resource in resources {
            text.push_str(&format!("  - {resource}\n"));
        }
    }
    if !components.is_empty() {
        text.push_str("components:\n");
        for component in components {
            text.push_str(&format!("  - {component}\n"));
        }
    }
    text
}

/// Every file of the kustomize tree, for the operator namespace `hsd-system`: a base (the CRD
/// and the view/edit roles), one component per operator mode and scope, pod policy and
/// monitor, and an overlay per combination of mode, scope and pod policy.
pub fn kustomize_files() -> Vec<(String, String)> {
    let ns = DEFAULT_OPERATOR_NAMESPACE;
    let image = super::default_image();
    let yaml = |documents: Vec<Value>| format!("# {GENERATED}\n{}", to_yaml_documents(&documents));
    let mut files = vec![
        (
            "base/kustomization.yaml".to_string(),
            kustomization("Kustomization", &["crd.yaml", "roles.yaml"], &[]),
        ),
        (
            "base/crd.yaml".to_string(),
            format!("# {GENERATED}\n{}", crds_yaml()),
        ),
        ("base/roles.yaml".to_string(), yaml(aggregated_roles(ns))),
    ];
    let mut component = |name: &str, documents: Vec<Value>| {
        files.push((
            format!("components/{name}/kustomization.yaml"),
            kustomization("Component", &["resources.yaml"], &[]),
        ));
        files.push((format!("components/{name}/resources.yaml"), yaml(documents)));
    };
    for mode in [OperatorMode::Cronjob, OperatorMode::Deployment] {
        for namespace_scoped in [false, true] {
            let options = OperatorOptions {
                namespace_scoped,
                ..OperatorOptions::new(mode, ns, &image)
            };
            let suffix = if namespace_scoped { "-namespaced" } else { "" };
            component(&format!("{}{suffix}", mode_name(mode)), operator(&options));
        }
    }
    component(
        "pod-policy",
        pod_policy(ns, crate::api::hsd::DEFAULT_BUSY_ANNOTATION, false),
    );
    component(
        "pod-policy-namespaced",
        pod_policy(ns, crate::api::hsd::DEFAULT_BUSY_ANNOTATION, true),
    );
    for (name, monitor, kind) in [
        (
            "service-monitor",
            MonitorKind::ServiceMonitor,
            "ServiceMonitor",
        ),
        ("pod-monitor", MonitorKind::PodMonitor, "PodMonitor"),
    ] {
        let options = OperatorOptions {
            monitor: Some(monitor),
            ..OperatorOptions::new(OperatorMode::Deployment, ns, &image)
        };
        let documents = operator(&options)
            .into_iter()
            .filter(|d| d["kind"] == kind)
            .collect();
        component(name, documents);
    }
    for (name, mode, namespace_scoped, policy) in kustomize_overlays() {
        let suffix = if namespace_scoped { "-namespaced" } else { "" };
        let mut components = vec![format!("../../components/{}{suffix}", mode_name(mode))];
        if policy {
            components.push(format!("../../components/pod-policy{suffix}"));
        }
        files.push((
            format!("overlays/{name}/kustomization.yaml"),
            kustomization("Kustomization", &["../../base"], &components),
        ));
    }
    files
        .into_iter()
        .map(|(path, content)| (format!("{KUSTOMIZE_DIR}/{path}"), content))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_name_only_the_switches_that_matter() {
        let all = variants();
        assert_eq!(condition(&all), None);
        let deployment: Vec<Variant> = all
            .iter()
            .copied()
            .filter(|v| v.mode == OperatorMode::Deployment)
            .collect();
        assert_eq!(
            condition(&deployment).as_deref(),
            Some("(eq .Values.mode \"deployment\")")
        );
        let scoped_cronjob: Vec<Variant> = all
            .iter()
            .copied()
            .filter(|v| v.mode == OperatorMode::Cronjob && v.namespace_scoped)
            .collect();
        assert_eq!(
            condition(&scoped_cronjob).as_deref(),
            Some("and (eq .Values.mode \"cronjob\") .Values.namespaceScoped")
        );
        let sharded: Vec<Variant> = all.iter().copied().filter(|v| v.sharded).collect();
        assert_eq!(
            condition(&sharded).as_deref(),
            Some("(gt (int .Values.shards) 1)")
        );
    }

    #[test]
    fn every_sentinel_is_replaced() {
        let template = chart_template();
        for sentinel in [NAMESPACE, IMAGE, BUSY_KEY, RESOURCES] {
            assert!(!template.contains(sentinel), "{sentinel} left in the chart");
        }
        for sentinel in [REPLICAS.to_string(), SHARDS.to_string()] {
            assert!(
                !template.contains(&sentinel),
                "{sentinel} left in the chart"
            );
        }
    }
}
