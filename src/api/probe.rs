//! The busy probe, shared by every kind: how a pod tells that it is busy. Annotation (the pod,
//! or anyone allowed to, sets an annotation), HTTP (the reconciler sends a GET to the pod) or
//! exec (the reconciler runs a command in the pod through the `pods/exec` subresource).
//!
//! The mode is a closed set: the CRD's schema lists the three modes, so admission refuses any
//! other (a fork added `redis`); an object that got past it anyway gets `InvalidSpec` with
//! [`unknown_mode_message`].

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The busy annotation when the object names none.
pub const DEFAULT_BUSY_ANNOTATION: &str = "paia.tech/busy";

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProbeMode {
    /// The pod (or anyone allowed to) sets the busy annotation to "true" or "false".
    #[default]
    Annotation,
    /// The reconciler sends `GET http://<podIP>:<port><path>` to each running pod.
    Http,
    /// The reconciler runs a command in each running pod (the `pods/exec` subresource).
    Exec,
}

impl ProbeMode {
    /// Every mode, as written in a spec.
    pub const ALL: [&'static str; 3] = ["annotation", "http", "exec"];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Annotation => "annotation",
            Self::Http => "http",
            Self::Exec => "exec",
        }
    }

    /// Whether the reconciler probes the pods itself (http, exec), rather than reading them.
    pub fn is_probed(self) -> bool {
        matches!(self, Self::Http | Self::Exec)
    }
}

/// Why a spec whose `busyProbe.mode` is `mode` cannot be used, if the mode is not one of
/// [`ProbeMode::ALL`]: read before the spec is parsed, so the message names the fix instead of
/// serde's words.
pub fn unknown_mode_message(spec: &serde_json::Value) -> Option<String> {
    let mode = spec.pointer("/busyProbe/mode")?;
    match mode.as_str() {
        Some(text) if ProbeMode::ALL.contains(&text) => None,
        _ => Some(format!(
            "spec.busyProbe.mode {mode} is not supported: use one of {} (the busy state of a \
             pod is read from its annotation, an HTTP GET to it, or a command run in it)",
            ProbeMode::ALL.join(", ")
        )),
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BusyProbe {
    /// `annotation` (default), `http` or `exec`.
    #[serde(default)]
    pub mode: ProbeMode,
    /// The pod annotation read in annotation mode.
    #[serde(default = "default_annotation_key")]
    #[schemars(length(min = 1, max = 317))]
    pub annotation_key: String,
    /// The HTTP probe, used in http mode.
    #[serde(default)]
    pub http: HttpProbe,
    /// The exec probe, used in exec mode.
    #[serde(default)]
    pub exec: ExecProbe,
}

impl Default for BusyProbe {
    fn default() -> Self {
        Self {
            mode: ProbeMode::Annotation,
            annotation_key: default_annotation_key(),
            http: HttpProbe::default(),
            exec: ExecProbe::default(),
        }
    }
}

impl BusyProbe {
    /// Whether a successful probe means busy, in the probed modes.
    pub fn success_is_busy(&self) -> bool {
        match self.mode {
            ProbeMode::Exec => self.exec.success_is_busy,
            _ => self.http.success_is_busy,
        }
    }

    /// The per-probe timeout of the mode in force (at least 1 s).
    pub fn timeout(&self) -> std::time::Duration {
        let seconds = match self.mode {
            ProbeMode::Exec => self.exec.timeout_seconds,
            _ => self.http.timeout_seconds,
        };
        std::time::Duration::from_secs(u64::try_from(seconds.max(1)).unwrap_or(1))
    }

    /// How often `reconcile --watch` probes each pod in the mode in force.
    pub fn period(&self) -> std::time::Duration {
        let seconds = match self.mode {
            ProbeMode::Exec => self.exec.period_seconds,
            _ => self.http.period_seconds,
        };
        std::time::Duration::from_secs(u64::try_from(seconds.max(1)).unwrap_or(10))
    }

    /// How long a probe answer stays fresh: an answer older than this says nothing, and its pod
    /// is unknown until probed again.
    pub fn answer_lifetime(&self) -> std::time::Duration {
        self.period() + self.timeout()
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpProbe {
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    #[serde(default = "default_path")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^/"))]
    pub path: String,
    /// When true (default) a 2xx answer means busy; when false a 2xx answer means idle.
    #[serde(default = "default_true")]
    pub success_is_busy: bool,
    #[serde(default = "default_timeout_seconds")]
    #[schemars(range(min = 1, max = 60))]
    pub timeout_seconds: i32,
    /// How often `reconcile --watch` probes each pod.
    #[serde(default = "default_period_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub period_seconds: i32,
}

impl Default for HttpProbe {
    fn default() -> Self {
        Self {
            port: default_port(),
            path: default_path(),
            success_is_busy: true,
            timeout_seconds: default_timeout_seconds(),
            period_seconds: default_period_seconds(),
        }
    }
}

/// A command run in the pod through the API server (`pods/exec`). Exit 0 is a success; a
/// command that ran and exited non-zero is a failure; no answer (a timeout, a refused or broken
/// connection, a command that could not be started) says nothing, and the pod is unknown.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecProbe {
    /// The command and its arguments (no shell: `["sh", "-c", "..."]` for one).
    #[serde(default = "default_exec_command")]
    #[schemars(length(min = 1, max = 64), inner(length(max = 4096)))]
    pub command: Vec<String>,
    /// The container to run it in. Default: the pod's `kubectl.kubernetes.io/default-container`
    /// annotation, else the API server's choice (the only container).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub container: Option<String>,
    /// When true (default) exit 0 means busy; when false exit 0 means idle.
    #[serde(default = "default_true")]
    pub success_is_busy: bool,
    #[serde(default = "default_timeout_seconds")]
    #[schemars(range(min = 1, max = 60))]
    pub timeout_seconds: i32,
    /// How often `reconcile --watch` probes each pod.
    #[serde(default = "default_period_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub period_seconds: i32,
}

impl Default for ExecProbe {
    fn default() -> Self {
        Self {
            command: default_exec_command(),
            container: None,
            success_is_busy: true,
            timeout_seconds: default_timeout_seconds(),
            period_seconds: default_period_seconds(),
        }
    }
}

/// What the probe spec says is wrong with it, for the checks every pass makes again on objects
/// that got past admission: one message per problem, each naming the fix.
pub fn probe_problems(probe: &BusyProbe) -> Vec<String> {
    let mut problems = Vec::new();
    let http = &probe.http;
    match probe.mode {
        ProbeMode::Annotation => {}
        ProbeMode::Http => {
            if !(1..=65535).contains(&http.port) {
                problems.push(format!(
                    "spec.busyProbe.http.port is {}: use 1-65535",
                    http.port
                ));
            }
            if http.timeout_seconds < 1 {
                problems.push(format!(
                    "spec.busyProbe.http.timeoutSeconds is {}: use 1 or more",
                    http.timeout_seconds
                ));
            }
            if !http.path.starts_with('/') {
                problems.push(format!(
                    "spec.busyProbe.http.path {:?} must start with /",
                    http.path
                ));
            }
        }
        ProbeMode::Exec => {
            let exec = &probe.exec;
            if exec.command.is_empty() || exec.command[0].trim().is_empty() {
                problems.push(
                    "spec.busyProbe.exec.command is empty: give the command and its arguments, \
                     for example [\"cat\", \"/tmp/busy\"]"
                        .into(),
                );
            }
            if exec.timeout_seconds < 1 {
                problems.push(format!(
                    "spec.busyProbe.exec.timeoutSeconds is {}: use 1 or more",
                    exec.timeout_seconds
                ));
            }
            if exec.container.as_deref().is_some_and(str::is_empty) {
                problems.push(
                    "spec.busyProbe.exec.container is empty: name a container, or remove it".into(),
                );
            }
        }
    }
    problems
}

fn default_annotation_key() -> String {
    DEFAULT_BUSY_ANNOTATION.to_string()
}
fn default_port() -> i32 {
    8080
}
fn default_path() -> String {
    "/busy".to_string()
}
fn default_true() -> bool {
    true
}
fn default_timeout_seconds() -> i32 {
    1
}
fn default_period_seconds() -> i32 {
    10
}
fn default_exec_command() -> Vec<String> {
    vec!["cat".to_string(), "/tmp/healthy".to_string()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_modes_are_named_with_the_ones_that_exist() {
        assert_eq!(unknown_mode_message(&json!({})), None);
        for mode in ProbeMode::ALL {
            assert_eq!(
                unknown_mode_message(&json!({"busyProbe": {"mode": mode}})),
                None
            );
        }
        let message = unknown_mode_message(&json!({"busyProbe": {"mode": "redis"}})).unwrap();
        assert!(message.contains("\"redis\""), "{message}");
        assert!(message.contains("annotation, http, exec"), "{message}");
        assert!(unknown_mode_message(&json!({"busyProbe": {"mode": 3}})).is_some());
    }

    #[test]
    fn exec_defaults_follow_the_reference() {
        let probe: BusyProbe = serde_json::from_value(json!({"mode": "exec"})).unwrap();
        assert_eq!(probe.exec.command, ["cat", "/tmp/healthy"]);
        assert!(probe.exec.success_is_busy && probe.success_is_busy());
        assert_eq!(probe.timeout(), std::time::Duration::from_secs(1));
        assert_eq!(probe.exec.container, None);
        assert!(probe_problems(&probe).is_empty());
        let empty: BusyProbe =
            serde_json::from_value(json!({"mode": "exec", "exec": {"command": []}})).unwrap();
        assert!(probe_problems(&empty)[0].contains("command is empty"));
    }
}
