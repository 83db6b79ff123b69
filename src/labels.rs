//! The labels this tool injects into each child pod template: the HSD's name (so that a
//! watcher, the pod policy and the proxy find an HSD's pods by label) and a fixed bucket (a
//! stable hash, so that shards can be sets of buckets without ever changing a template).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use sha2::{Digest, Sha256};

/// The label naming the HSD, on the child Deployment and on every pod of its template.
pub const HSD_LABEL: &str = "paia.tech/hotstandbydeployment";
/// The label naming the HotStandbyJob, on each of its Jobs and on every pod of their template.
pub const HSJ_LABEL: &str = "paia.tech/hotstandbyjob";
/// The label holding the HSD's bucket, on every pod of its template.
pub const BUCKET_LABEL: &str = "paia.tech/bucket";
/// The number of buckets. Fixed: changing it would change every template.
pub const BUCKETS: u32 = 256;
/// The label holding the hash of the template a pod was made from: a pod whose value is not
/// the current one is from an earlier template (a rollout is under way).
pub const TEMPLATE_LABEL: &str = "paia.tech/template";
/// The annotation on a pod this tool chose to remove: from then on it may not be marked busy.
pub const DRAINING_ANNOTATION: &str = "paia.tech/draining";
/// The annotation on a busy pod of an earlier template, detached from its ReplicaSet and kept
/// running until its work ends (value: when it was retired).
pub const RETIRED_ANNOTATION: &str = "paia.tech/retired";
/// The label `spec.routing.stateLabel` keeps on each pod: idle, busy or draining.
pub const STATE_LABEL: &str = "paia.tech/state";

/// A label value naming the HSD. Names longer than a label value may be (63 characters) keep
/// their start and end with a hash of the whole name, so two long names never share a value.
pub fn hsd_label_value(name: &str) -> String {
    if name.len() <= 63 {
        return name.to_string();
    }
    let digest = Sha256::digest(name.as_bytes());
    let mut hash = String::new();
    for byte in &digest[..5] {
        let _ = write!(hash, "{byte:02x}");
    }
    // Names are DNS subdomains (ASCII), so byte slicing is safe; keep it alphanumeric at the ends.
    let head: String = name.chars().take(52).collect();
    format!("{}-{hash}", head.trim_end_matches(['-', '.', '_']))
}

/// The bucket of an HSD: a stable hash of namespace and name into [`BUCKETS`].
pub fn bucket(namespace: &str, name: &str) -> u32 {
    let digest = Sha256::digest(format!("{namespace}/{name}").as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) % BUCKETS
}

/// A short hash as a label value.
pub fn short_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut hex = String::new();
    for byte in &digest[..8] {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// The labels injected into an HSD's pod template.
pub fn injected(namespace: &str, name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (HSD_LABEL.to_string(), hsd_label_value(name)),
        (
            BUCKET_LABEL.to_string(),
            bucket(namespace, name).to_string(),
        ),
    ])
}

/// The labels injected into a HotStandbyJob's pod template (and, the first, on its Jobs): the
/// HSJ's name (shortened like [`hsd_label_value`]) and its bucket.
pub fn injected_hsj(namespace: &str, name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (HSJ_LABEL.to_string(), hsd_label_value(name)),
        (
            BUCKET_LABEL.to_string(),
            bucket(namespace, name).to_string(),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_fit_and_stay_distinct() {
        let short = "game-ws";
        assert_eq!(hsd_label_value(short), short);
        let exactly = "a".repeat(63);
        assert_eq!(hsd_label_value(&exactly), exactly);
        let long_a = format!("{}-a", "x".repeat(70));
        let long_b = format!("{}-b", "x".repeat(70));
        for value in [hsd_label_value(&long_a), hsd_label_value(&long_b)] {
            assert!(value.len() <= 63, "{value}");
            assert!(value.chars().next().unwrap().is_ascii_alphanumeric());
            assert!(value.chars().last().unwrap().is_ascii_alphanumeric());
        }
        assert_ne!(hsd_label_value(&long_a), hsd_label_value(&long_b));
        // A name whose 52nd character is a dash still ends the head cleanly.
        let dashed = format!("{}-{}", "y".repeat(51), "z".repeat(30));
        assert!(!hsd_label_value(&dashed).contains("--"));
    }

    #[test]
    fn buckets_are_stable_and_in_range() {
        assert_eq!(bucket("games", "game-ws"), bucket("games", "game-ws"));
        assert!((0..200).all(|i| bucket("ns", &format!("h{i}")) < BUCKETS));
        let distinct: std::collections::BTreeSet<u32> =
            (0..200).map(|i| bucket("ns", &format!("h{i}"))).collect();
        assert!(distinct.len() > 100, "spread: {}", distinct.len());
    }
}
