//! An HSD as the watcher caches it: its metadata, and the rest of it as JSON text, turned back
//! into a `DynamicObject` only when a reconcile reads it.
//!
//! Why: a `DynamicObject` keeps its spec and status as a tree of `serde_json::Value`s, in which
//! every JSON object, however small, is a B-tree node of about 630 bytes. An HSD without
//! `managedFields` has about 18 of them: 13 MB for 1,000 HSDs, against about 2 MB as text. A
//! reconcile parses the text again (a few microseconds for an HSD), and still sees a spec that
//! cannot be read as such, as the one-shot pass does.

use std::borrow::Cow;

use kube::api::{ApiResource, DynamicObject, ObjectMeta, TypeMeta};
use kube::core::DynamicResourceScope;
use serde::{Deserialize, Deserializer};

#[derive(Clone, Debug)]
pub struct CachedHsd {
    pub metadata: ObjectMeta,
    types: Option<TypeMeta>,
    /// The object's fields other than `metadata` and the type, as a JSON object.
    body: Box<str>,
    /// Whether its busy probe is http or exec (the probe loop asks each second).
    probed: bool,
}

impl CachedHsd {
    pub fn from_object(object: DynamicObject) -> Self {
        let mut metadata = object.metadata;
        super::strip_meta(&mut metadata);
        Self {
            probed: super::probes::wants_probe(&object.data),
            body: serde_json::to_string(&object.data)
                .unwrap_or_default()
                .into_boxed_str(),
            metadata,
            types: object.types,
        }
    }

    /// The object as the API server sent it (without `managedFields`).
    pub fn expand(&self) -> DynamicObject {
        DynamicObject {
            types: self.types.clone(),
            metadata: self.metadata.clone(),
            // The text was written from a JSON value, so it reads back as one.
            data: serde_json::from_str(&self.body).unwrap_or_default(),
        }
    }

    pub fn wants_probe(&self) -> bool {
        self.probed
    }
}

impl<'de> Deserialize<'de> for CachedHsd {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        DynamicObject::deserialize(deserializer).map(Self::from_object)
    }
}

impl kube::Resource for CachedHsd {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        DynamicObject::kind(dt)
    }
    fn group(dt: &ApiResource) -> Cow<'_, str> {
        DynamicObject::group(dt)
    }
    fn version(dt: &ApiResource) -> Cow<'_, str> {
        DynamicObject::version(dt)
    }
    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        DynamicObject::api_version(dt)
    }
    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        DynamicObject::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a reconcile reads back is the object that came in, less what no cache keeps; a spec
    /// that cannot be read stays unreadable, so that it still gets its condition.
    #[test]
    fn an_expanded_hsd_is_the_object_that_was_cached() {
        for (spec, probed) in [
            (
                serde_json::json!({"idleTarget": 2, "busyProbe": {"mode": "http"}}),
                true,
            ),
            (
                serde_json::json!({"idleTarget": 2, "busyProbe": {"mode": "exec"}}),
                true,
            ),
            (serde_json::json!({"idleTarget": 2}), false),
            (
                serde_json::json!({"idleTarget": "three", "busyProbe": 7}),
                false,
            ),
        ] {
            let raw = serde_json::json!({
                "apiVersion": "apps.paia.tech/v1alpha1",
                "kind": "HotStandbyDeployment",
                "metadata": {
                    "name": "h", "namespace": "ns", "resourceVersion": "7",
                    "managedFields": [{"manager": "m", "operation": "Apply"}],
                },
                "spec": spec,
                "status": {"replicas": 3, "conditions": [{"type": "Ready", "status": "True"}]},
            });
            let cached: CachedHsd = serde_json::from_value(raw.clone()).unwrap();
            assert_eq!(cached.wants_probe(), probed, "{spec}");
            let expanded = cached.expand();
            let mut expected: DynamicObject = serde_json::from_value(raw).unwrap();
            expected.metadata.managed_fields = None;
            assert_eq!(expanded, expected);
            assert_eq!(
                crate::observe::hsd_facts(&expanded),
                crate::observe::hsd_facts(&expected)
            );
        }
    }
}
