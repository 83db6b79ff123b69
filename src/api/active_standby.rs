//! Active-standby Services: not a custom resource, but a contract on core objects, the one the
//! `qoqo.dev` active-standby controller defined (so that its users' Services work unchanged):
//!
//! - a Service annotated [`SERVICE_MODE_ANNOTATION`]`: active-standby` gets one master among the
//!   pods its selector selects;
//! - the master carries the label [`DESIGNATION_LABEL`]`: active`, and the Service's selector gets
//!   the same key and value, so that the Service (and a headless Service's DNS) resolves to the
//!   master only.
//!
//! What this tool adds: the [`Record`] on the Service (annotation [`RECORD_ANNOTATION`]), a
//! compare-and-swap record of the master and an epoch, and a mark on pods
//! ([`POD_MARK_ANNOTATION`]) saying which Service labelled them, or when they were fenced.

use serde::{Deserialize, Serialize};

/// The Service annotation that turns active-standby on.
pub const SERVICE_MODE_ANNOTATION: &str = "qoqo.dev/service-mode";
/// The value of [`SERVICE_MODE_ANNOTATION`] that turns it on.
pub const ACTIVE_STANDBY: &str = "active-standby";
/// The label of the master pod, and the key added to the Service's selector.
pub const DESIGNATION_LABEL: &str = "qoqo.dev/pod-designation";
/// The value of [`DESIGNATION_LABEL`] on the master.
pub const ACTIVE: &str = "active";
/// The Service annotation holding the [`Record`] (JSON).
pub const RECORD_ANNOTATION: &str = "paia.tech/active-standby";
/// The pod annotation written with each label and each fence: `master of SERVICE (epoch N)`,
/// or `fenced at TIME (SERVICE epoch N)`. A label this tool wrote is found by it (a Service
/// deleted meanwhile leaves no record), and every fence changes the pod (its resourceVersion),
/// which is what makes a deposed writer's late label fail.
pub const POD_MARK_ANNOTATION: &str = "paia.tech/active-standby";
/// The prefix of [`POD_MARK_ANNOTATION`] on a pod this tool labelled.
pub const MASTER_MARK_PREFIX: &str = "master of ";

/// A pod by name and uid: a pod replaced under the same name (a StatefulSet's) is another pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PodRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
}

/// The compare-and-swap record on an active-standby Service. It is only ever written with the
/// Service's resourceVersion as a precondition, so a writer whose view is stale (a deposed
/// leader resuming, a second process) fails instead of overwriting it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// The master, if one was ever elected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<PodRef>,
    /// Bumped by every change of master.
    #[serde(default)]
    pub epoch: u64,
    /// When the current master was elected (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Changes of master after the first election.
    #[serde(default)]
    pub failovers: u64,
    /// Whether this tool added [`DESIGNATION_LABEL`] to the selector (clean-up removes it only then).
    #[serde(default)]
    pub selector_added: bool,
    /// Former masters not yet known to be fenced: each is fenced (its label removed, its
    /// resourceVersion changed) before any master is labelled, and leaves the list only once
    /// its fence succeeded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unfenced: Vec<PodRef>,
    /// The Warning in force (`Reason: message`), so that it is sent once, not every pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

impl Record {
    /// The record as the annotation holds it.
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).expect("a record always serializes")
    }

    /// Reads the annotation; an unreadable one is an error for that Service alone.
    pub fn parse(value: &str) -> Result<Self, String> {
        serde_json::from_str(value).map_err(|e| format!("{RECORD_ANNOTATION} is not a record: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_old_fields_default() {
        let record = Record {
            master: Some(PodRef {
                name: "db-0".into(),
                uid: "u1".into(),
            }),
            epoch: 3,
            since: Some("2026-11-21T12:00:00Z".into()),
            failovers: 2,
            selector_added: true,
            unfenced: vec![PodRef {
                name: "db-1".into(),
                uid: "u2".into(),
            }],
            warning: None,
        };
        assert_eq!(Record::parse(&record.to_annotation()), Ok(record));
        assert_eq!(Record::parse("{}"), Ok(Record::default()));
        assert!(Record::parse("not json").is_err());
        assert!(Record::parse("").is_err());
    }
}
