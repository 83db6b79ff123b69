//! The Jobs' spec: the HSJ's `jobTemplate` (the full form, or the shorthand expanded into it),
//! with the selector's labels and the injected labels on the pod template; its hash; and the
//! Jobs' names.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::api::hsj::{FULL_FORM, HotStandbyJobSpec};

/// Shorthand keys that belong to the one container.
const SHORTHAND_CONTAINER_KEYS: [&str; 8] = [
    "image",
    "command",
    "args",
    "env",
    "envFrom",
    "resources",
    "imagePullPolicy",
    "workingDir",
];
/// Shorthand keys that are the JobSpec's own (valid in both forms).
const JOB_KEYS: [&str; 5] = [
    "parallelism",
    "completions",
    "backoffLimit",
    "ttlSecondsAfterFinished",
    "activeDeadlineSeconds",
];

/// A container name from the HSJ's name: a DNS label (no dots, at most 63 characters).
pub fn container_name(hsj: &str) -> String {
    let name: String = hsj
        .chars()
        .map(|c| if c == '.' { '-' } else { c })
        .take(63)
        .collect();
    let name = name.trim_matches('-').to_string();
    if name.is_empty() {
        "worker".into()
    } else {
        name
    }
}

/// The Jobs' spec as written, before labels are added: the full form as it is, or the
/// shorthand expanded into it. The error shows the full form.
pub fn expand(hsj: &str, spec: &HotStandbyJobSpec) -> Result<Value, String> {
    let Some(template) = spec.job_template.as_object() else {
        return Err(format!(
            "spec.jobTemplate is not an object. The full form: {FULL_FORM}"
        ));
    };
    let shorthand: Vec<&str> = SHORTHAND_CONTAINER_KEYS
        .iter()
        .copied()
        .filter(|key| template.contains_key(*key))
        .collect();
    let has_template = template.contains_key("template");
    match (has_template, shorthand.is_empty()) {
        (true, true) => Ok(Value::Object(template.clone())),
        (true, false) => Err(format!(
            "spec.jobTemplate mixes the full form (template) with shorthand keys ({}): move them into a container of template.spec.containers. The full form: {FULL_FORM}",
            shorthand.join(", ")
        )),
        (false, true) => Err(format!(
            "spec.jobTemplate has neither template (a Job's pod template) nor the shorthand image. The full form: {FULL_FORM}"
        )),
        (false, false) => {
            let unknown: Vec<&str> = template
                .keys()
                .map(String::as_str)
                .filter(|key| !SHORTHAND_CONTAINER_KEYS.contains(key) && !JOB_KEYS.contains(key))
                .collect();
            if !unknown.is_empty() {
                return Err(format!(
                    "spec.jobTemplate's shorthand takes {} and {}; {} belong(s) in the full form. The full form: {FULL_FORM}",
                    SHORTHAND_CONTAINER_KEYS.join(", "),
                    JOB_KEYS.join(", "),
                    unknown.join(", ")
                ));
            }
            let mut container = Map::new();
            container.insert("name".into(), json!(container_name(hsj)));
            let mut job = Map::new();
            for (key, value) in template {
                if SHORTHAND_CONTAINER_KEYS.contains(&key.as_str()) {
                    container.insert(key.clone(), value.clone());
                } else {
                    job.insert(key.clone(), value.clone());
                }
            }
            job.insert(
                "template".into(),
                json!({
                    "metadata": {"labels": spec.selector.match_labels},
                    "spec": {"restartPolicy": "Never", "containers": [container]},
                }),
            );
            Ok(Value::Object(job))
        }
    }
}

/// The labels of the expanded pod template.
pub fn template_labels(job_spec: &Value) -> BTreeMap<String, String> {
    crate::plan::template_labels(job_spec.get("template").unwrap_or(&Value::Null))
}

/// The Jobs' spec as this tool creates them: the expanded jobTemplate with the selector's labels
/// (where missing) and the injected labels on the pod template, and `restartPolicy: Never` when
/// the template names none (a Job needs Never or OnFailure).
pub fn job_spec(namespace: &str, hsj: &str, spec: &HotStandbyJobSpec) -> Result<Value, String> {
    let mut job = expand(hsj, spec)?;
    let root = job.as_object_mut().expect("expand returns an object");
    let template = root.entry("template").or_insert_with(|| json!({}));
    if !template.is_object() {
        return Err(format!(
            "spec.jobTemplate.template is not an object. The full form: {FULL_FORM}"
        ));
    }
    let template = template.as_object_mut().expect("checked above");
    let metadata = template.entry("metadata").or_insert_with(|| json!({}));
    if !metadata.is_object() {
        *metadata = json!({});
    }
    let labels = metadata
        .as_object_mut()
        .expect("made an object above")
        .entry("labels")
        .or_insert_with(|| json!({}));
    if !labels.is_object() {
        *labels = json!({});
    }
    let labels = labels.as_object_mut().expect("made an object above");
    for (key, value) in &spec.selector.match_labels {
        labels
            .entry(key.clone())
            .or_insert_with(|| value.clone().into());
    }
    for (key, value) in crate::labels::injected_hsj(namespace, hsj) {
        labels.insert(key, value.into());
    }
    let pod_spec = template.entry("spec").or_insert_with(|| json!({}));
    if let Some(pod_spec) = pod_spec.as_object_mut() {
        pod_spec
            .entry("restartPolicy")
            .or_insert_with(|| json!("Never"));
    }
    Ok(job)
}

/// A stable hash of the Jobs' spec (and the HSJ it belongs to), stored on each Job: a Job whose
/// hash differs was made from an older template.
pub fn template_hash(namespace: &str, hsj: &str, job_spec: &Value) -> String {
    let mut hasher = Sha256::new();
    hasher.update(namespace.as_bytes());
    hasher.update(b"/");
    hasher.update(hsj.as_bytes());
    hasher.update(b"\n");
    // serde_json's maps are sorted: the same spec always gives the same text.
    hasher.update(job_spec.to_string().as_bytes());
    let digest = hasher.finalize();
    let mut hex = String::with_capacity(16);
    for byte in &digest[..8] {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// The start of every Job name of an HSJ: its name, or for a long one its head and a hash of it,
/// so that a name with its index stays a valid label value (a Job's name is one, on its pods).
pub fn job_base(hsj: &str) -> String {
    if hsj.len() <= 52 {
        return hsj.to_string();
    }
    let digest = Sha256::digest(hsj.as_bytes());
    let mut hash = String::new();
    for byte in &digest[..4] {
        let _ = write!(hash, "{byte:02x}");
    }
    let head: String = hsj.chars().take(43).collect();
    format!("{}-{hash}", head.trim_end_matches(['-', '.']))
}

/// The Job names for `count` new Jobs: `<base>-<index>`, the lowest indices no Job of the HSJ
/// has (a name a Job still holds is never reused while it exists).
pub fn next_names(hsj: &str, taken: &[&str], count: usize) -> Vec<String> {
    let base = job_base(hsj);
    let mut names = Vec::with_capacity(count);
    let mut index = 0u32;
    while names.len() < count {
        let name = format!("{base}-{index}");
        if !taken.contains(&name.as_str()) {
            names.push(name);
        }
        index += 1;
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::hsd::Selector;
    use crate::api::probe::BusyProbe;

    fn spec(job_template: Value) -> HotStandbyJobSpec {
        HotStandbyJobSpec {
            idle_target: 1,
            min_replicas: None,
            max_replicas: None,
            scale_down_delay_seconds: 30,
            selector: Selector {
                match_labels: BTreeMap::from([("app".into(), "w".into())]),
            },
            job_template,
            busy_probe: BusyProbe::default(),
        }
    }

    #[test]
    fn the_shorthand_expands_into_one_container_named_from_the_hsj() {
        let short = spec(json!({
            "image": "busybox:1.36", "command": ["sleep", "30"],
            "parallelism": 1, "backoffLimit": 0, "ttlSecondsAfterFinished": 60,
        }));
        let job = job_spec("ns", "game.worker", &short).unwrap();
        assert_eq!(job["backoffLimit"], 0);
        assert_eq!(job["ttlSecondsAfterFinished"], 60);
        let container = &job["template"]["spec"]["containers"][0];
        assert_eq!(container["name"], "game-worker", "a DNS label");
        assert_eq!(container["image"], "busybox:1.36");
        assert_eq!(container["command"], json!(["sleep", "30"]));
        assert_eq!(job["template"]["spec"]["restartPolicy"], "Never");
        let labels = template_labels(&job);
        assert_eq!(labels["app"], "w");
        assert_eq!(labels[crate::labels::HSJ_LABEL], "game.worker");
    }

    #[test]
    fn mixed_or_missing_forms_are_refused_with_the_full_form() {
        for (template, needle) in [
            (
                json!({"image": "x", "template": {"spec": {}}}),
                "mixes the full form",
            ),
            (json!({"backoffLimit": 0}), "neither template"),
            (json!({"image": "x", "volumes": []}), "volumes belong(s)"),
            (json!("text"), "not an object"),
        ] {
            let error = job_spec("ns", "w", &spec(template)).unwrap_err();
            assert!(error.contains(needle), "{error}");
            assert!(error.contains("The full form: jobTemplate:"), "{error}");
        }
    }

    #[test]
    fn the_full_form_keeps_everything_and_gains_the_labels() {
        let full = spec(json!({
            "parallelism": 1,
            "template": {
                "metadata": {"labels": {"tier": "t"}},
                "spec": {"restartPolicy": "OnFailure", "containers": [{"name": "c", "image": "i"}], "nodeSelector": {"a": "b"}},
            },
        }));
        let job = job_spec("ns", "w", &full).unwrap();
        assert_eq!(job["template"]["spec"]["restartPolicy"], "OnFailure");
        assert_eq!(job["template"]["spec"]["nodeSelector"]["a"], "b");
        let labels = template_labels(&job);
        assert_eq!(
            (labels["tier"].as_str(), labels["app"].as_str()),
            ("t", "w")
        );
        let hash = template_hash("ns", "w", &job);
        assert_eq!(hash, template_hash("ns", "w", &job), "stable");
        let mut changed = full.clone();
        changed.job_template["template"]["spec"]["containers"][0]["image"] = json!("i2");
        assert_ne!(
            hash,
            template_hash("ns", "w", &job_spec("ns", "w", &changed).unwrap())
        );
    }

    #[test]
    fn names_take_the_lowest_free_indices_and_fit_a_label_value() {
        assert_eq!(next_names("w", &["w-0", "w-2"], 3), ["w-1", "w-3", "w-4"]);
        let long = "x".repeat(80);
        let names = next_names(&long, &[], 2);
        assert!(names.iter().all(|n| n.len() <= 63), "{names:?}");
        assert_ne!(job_base(&long), job_base(&format!("{long}y")));
    }
}
