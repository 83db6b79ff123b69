//! The child Deployment's template and selector: the HSD's own, with the selector's labels and
//! the injected labels added, and the hashes that tell whether the child is up to date.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use crate::api::hsd::{HotStandbyDeploymentSpec, ProbeMode};

/// The labels of a pod template, ignoring anything malformed.
pub fn template_labels(pod_template: &serde_json::Value) -> BTreeMap<String, String> {
    pod_template
        .pointer("/metadata/labels")
        .and_then(|labels| labels.as_object())
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `labels` carry every entry of `match_labels`. An empty selector matches nothing
/// (the API server refuses an empty one; a pass must not adopt every pod of a namespace).
pub fn selector_matches(
    match_labels: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    !match_labels.is_empty() && match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The child Deployment's pod template: the HSD's, with the selector's labels added where
/// missing, the injected labels ([`crate::labels::injected`]), and the template's own hash
/// ([`crate::labels::TEMPLATE_LABEL`]), so that each pod tells which template it came from.
pub fn child_template(
    namespace: &str,
    name: &str,
    spec: &HotStandbyDeploymentSpec,
) -> serde_json::Value {
    let mut template = labelled_template(namespace, name, spec);
    let hash = crate::labels::short_hash(&serde_json::to_vec(&template).unwrap_or_default());
    if let Some(labels) = template
        .pointer_mut("/metadata/labels")
        .and_then(|labels| labels.as_object_mut())
    {
        labels.insert(crate::labels::TEMPLATE_LABEL.to_string(), hash.into());
    }
    template
}

/// The current template's hash, as its pods carry it in [`crate::labels::TEMPLATE_LABEL`].
pub fn template_label(namespace: &str, name: &str, spec: &HotStandbyDeploymentSpec) -> String {
    crate::labels::short_hash(
        &serde_json::to_vec(&labelled_template(namespace, name, spec)).unwrap_or_default(),
    )
}

/// The HSD's template with the selector's labels and the injected ones.
fn labelled_template(
    namespace: &str,
    name: &str,
    spec: &HotStandbyDeploymentSpec,
) -> serde_json::Value {
    let mut template = spec.pod_template.clone();
    let Some(root) = template.as_object_mut() else {
        return template;
    };
    let metadata = root
        .entry("metadata")
        .or_insert_with(|| serde_json::json!({}));
    if !metadata.is_object() {
        *metadata = serde_json::json!({});
    }
    let labels = metadata
        .as_object_mut()
        .expect("made an object above")
        .entry("labels")
        .or_insert_with(|| serde_json::json!({}));
    if !labels.is_object() {
        *labels = serde_json::json!({});
    }
    let labels = labels.as_object_mut().expect("made an object above");
    for (key, value) in &spec.selector.match_labels {
        labels
            .entry(key.clone())
            .or_insert_with(|| value.clone().into());
    }
    for (key, value) in crate::labels::injected(namespace, name) {
        labels.insert(key, value.into());
    }
    template
}

fn short_hex(digest: &[u8]) -> String {
    let mut hex = String::with_capacity(16);
    for byte in &digest[..8] {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// A stable hash of what this tool applies to the child Deployment besides the replica count,
/// stored as an annotation there so that a pass with nothing to change writes nothing.
pub fn template_hash(namespace: &str, name: &str, spec: &HotStandbyDeploymentSpec) -> String {
    let mut hasher = Sha256::new();
    hasher.update(serde_json::to_vec(&spec.selector).unwrap_or_default());
    hasher.update([0]);
    hasher.update(serde_json::to_vec(&child_template(namespace, name, spec)).unwrap_or_default());
    // v3: the Deployment's own labels (its bucket) are applied too.
    hasher.update([0]);
    hasher
        .update(serde_json::to_vec(&crate::labels::injected(namespace, name)).unwrap_or_default());
    format!("v3-{}", short_hex(&hasher.finalize()))
}

/// The hash an earlier version stored: the user's template as it was, with no injected labels.
/// A child still carrying it gains the labels without a rollout
/// ([`super::DeploymentAction::Apply`]'s `relabel`).
pub fn legacy_template_hash(spec: &HotStandbyDeploymentSpec) -> String {
    let mut hasher = Sha256::new();
    hasher.update(serde_json::to_vec(&spec.selector).unwrap_or_default());
    hasher.update([0]);
    hasher.update(serde_json::to_vec(&spec.pod_template).unwrap_or_default());
    short_hex(&hasher.finalize())
}

/// The busy annotation's value in the pod template, when the template sets it (annotation mode).
pub fn busy_annotation_in_template(spec: &HotStandbyDeploymentSpec) -> Option<String> {
    if spec.busy_probe.mode != ProbeMode::Annotation {
        return None;
    }
    let value = spec
        .pod_template
        .pointer("/metadata/annotations")?
        .get(&spec.busy_probe.annotation_key)?;
    Some(
        value
            .as_str()
            .map_or_else(|| value.to_string(), String::from),
    )
}

#[cfg(test)]
mod tests {
    #![allow(unused_imports)]
    use std::collections::BTreeMap;
    use std::time::Duration;

    use jiff::{SignedDuration, Timestamp};
    use proptest::prelude::*;
    use serde_json::json;

    use crate::api::hsd::*;
    use crate::plan::fixtures::*;
    use crate::plan::*;

    #[test]
    fn selectors_match_subsets_and_never_empty() {
        let labels = BTreeMap::from([
            ("app".to_string(), "a".to_string()),
            ("tier".to_string(), "x".to_string()),
        ]);
        assert!(selector_matches(
            &BTreeMap::from([("app".into(), "a".into())]),
            &labels
        ));
        assert!(!selector_matches(
            &BTreeMap::from([("app".into(), "b".into())]),
            &labels
        ));
        assert!(!selector_matches(&BTreeMap::new(), &labels));
    }

    #[test]
    fn template_hash_changes_with_the_template_only() {
        let a = spec(3, 0, None);
        let mut b = spec(9, 2, Some(20));
        let hash = |spec: &HotStandbyDeploymentSpec| template_hash("ns", "game-ws", spec);
        assert_eq!(
            hash(&a),
            hash(&b),
            "bounds are not part of the Deployment template"
        );
        b.pod_template["spec"]["containers"][0]["image"] = json!("game-ws:2");
        assert_ne!(hash(&a), hash(&b));
        assert_ne!(
            hash(&a),
            template_hash("ns", "other", &a),
            "the injected labels name the HSD"
        );
        assert_ne!(hash(&a), legacy_template_hash(&a));
    }
}
