//! What the CRD schema and its CEL rules enforce, checked again for objects that slipped past
//! them (created before a rule existed). The message names the fix.

use super::template::template_labels;
use crate::api::hsd::HotStandbyDeploymentSpec;

pub fn validate_spec(spec: &HotStandbyDeploymentSpec) -> Result<(), String> {
    let mut problems = Vec::new();
    if spec.idle_target < 0 {
        problems.push(format!(
            "spec.idleTarget is {}: set it to 0 or more",
            spec.idle_target
        ));
    }
    if spec.min_replicas < 0 {
        problems.push(format!(
            "spec.minReplicas is {}: set it to 0 or more",
            spec.min_replicas
        ));
    }
    if let Some(max) = spec.max_replicas {
        if max < 1 {
            problems.push(format!(
                "spec.maxReplicas is {max}: set it to 1 or more, or remove it"
            ));
        }
        if spec.min_replicas > max {
            problems.push(format!(
                "spec.minReplicas ({}) is greater than spec.maxReplicas ({max}): lower minReplicas or raise maxReplicas",
                spec.min_replicas
            ));
        }
    }
    if let Some(scale_to_zero) = &spec.scale_to_zero
        && scale_to_zero.after_seconds < 1
    {
        problems.push(format!(
            "spec.scaleToZero.afterSeconds is {}: set it to 1 or more, or remove scaleToZero",
            scale_to_zero.after_seconds
        ));
    }
    if spec.selector.match_labels.is_empty() {
        problems.push(
            "spec.selector.matchLabels is empty: name at least one label of the pod template"
                .into(),
        );
    }
    // Missing selector labels are merged into the template (as the reference accepted them);
    // a contradicting one cannot be.
    let template_labels = template_labels(&spec.pod_template);
    let conflicting: Vec<String> = spec
        .selector
        .match_labels
        .iter()
        .filter_map(|(k, v)| {
            let found = template_labels.get(k)?;
            (found != v).then(|| format!("{k}={found} (the selector says {v})"))
        })
        .collect();
    if !conflicting.is_empty() {
        problems.push(format!(
            "spec.podTemplate.metadata.labels contradicts the selector: {}: give the template the selector's value",
            conflicting.join(", ")
        ));
    }
    if !spec.pod_template.is_object() {
        problems.push("spec.podTemplate is not an object: give a Deployment pod template".into());
    }
    problems.extend(crate::api::probe::probe_problems(&spec.busy_probe));
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
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
    fn invalid_specs_are_flagged_with_the_fix() {
        let mut selector_mismatch = spec(3, 0, None);
        selector_mismatch.pod_template = json!({"metadata": {"labels": {"app": "other"}}});
        let mut bad_port = http_spec(true);
        bad_port.busy_probe.http.port = 70000;
        let cases: Vec<(&str, HotStandbyDeploymentSpec, &str)> = vec![
            (
                "negative idle target",
                spec(-1, 0, None),
                "spec.idleTarget is -1",
            ),
            (
                "min above max",
                spec(3, 10, Some(5)),
                "greater than spec.maxReplicas",
            ),
            ("max zero", spec(3, 0, Some(0)), "spec.maxReplicas is 0"),
            (
                "template label contradicting the selector",
                selector_mismatch,
                "app=other (the selector says game-ws)",
            ),
            ("port out of range", bad_port, "use 1-65535"),
        ];
        for (name, spec, needle) in cases {
            let hsd = observed(spec, Some(3), idle_pods(3));
            let plan = plan(&hsd, now());
            assert_eq!(plan.deployment, DeploymentAction::Blocked, "{name}");
            let invalid = plan
                .status
                .conditions
                .iter()
                .find(|c| c.type_ == condition::INVALID_SPEC)
                .unwrap();
            assert_eq!(invalid.status, "True", "{name}");
            assert!(
                invalid.message.contains(needle),
                "{name}: {}",
                invalid.message
            );
            assert!(
                plan.events.iter().any(|e| e.reason == "InvalidSpec"),
                "{name}"
            );
        }
        let mut unreadable = observed(spec(3, 0, None), Some(3), vec![]);
        unreadable.spec = Err("invalid type: string \"three\", expected i32".into());
        let plan = plan(&unreadable, now());
        assert_eq!(plan.deployment, DeploymentAction::Blocked);
        assert!(
            plan.status
                .conditions
                .iter()
                .any(|c| c.type_ == condition::INVALID_SPEC && c.message.contains("cannot be read"))
        );
    }
}
