//! The library's one error type. Each variant says what was being attempted; `reason()` is a
//! stable category for metrics and summaries.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the HotStandbyDeployment CRD is not installed: run `kubectl hsd install`")]
    CrdMissing,

    #[error(
        "permission denied to {verb} {resource}{scope}: {message}. Grant it in the Role/ClusterRole bound to this identity (`kubectl hsd install --operator ... --print` shows the rules)"
    )]
    Forbidden {
        verb: String,
        resource: String,
        scope: String,
        message: String,
    },

    #[error("{action}: {}", describe_kube_error(.source))]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },

    #[error("cannot load the Kubernetes client configuration: {0}")]
    Config(String),

    #[error("{0}")]
    Invalid(String),

    #[error("{what} not found")]
    NotFound { what: String },

    /// A write whose precondition failed: the object changed since it was read. Retried at
    /// once from a fresh view.
    #[error("{action}: {source}")]
    Stale {
        action: String,
        #[source]
        source: kube::Error,
    },

    #[error("timed out after {} waiting for {}", humantime::format_duration(*.0), .1)]
    Timeout(Duration, String),

    #[error("{0}")]
    Io(#[from] std::io::Error),

    #[error("cannot serialize {what}: {message}")]
    Serialize { what: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A short stable label for metrics and the summary table.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::CrdMissing => "crd_missing",
            Error::Forbidden { .. } => "forbidden",
            Error::Kube { source, .. } => match source {
                kube::Error::Api(status) if status.code == 409 => "conflict",
                kube::Error::Api(status) if status.code == 422 => "invalid",
                kube::Error::Api(_) => "api_error",
                _ => "transport",
            },
            Error::Config(_) => "config",
            Error::Invalid(_) => "invalid",
            Error::NotFound { .. } => "not_found",
            Error::Stale { .. } => "conflict",
            Error::Timeout(..) => "timeout",
            Error::Io(_) => "io",
            Error::Serialize { .. } => "serialize",
        }
    }
}

/// Wraps a kube error with what was attempted, turning 403s into a message that names the
/// missing permission.
pub fn kube_error(
    action: impl Into<String>,
    verb: &str,
    resource: &str,
    namespace: Option<&str>,
) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    let verb = verb.to_string();
    let resource = resource.to_string();
    let scope = match namespace {
        Some(ns) => format!(" in namespace {ns}"),
        None => " cluster-wide".to_string(),
    };
    move |source| match &source {
        kube::Error::Api(status) if status.code == 403 => Error::Forbidden {
            verb,
            resource,
            scope,
            message: status.message.clone(),
        },
        _ => Error::Kube { action, source },
    }
}

/// Whether the error is the API server saying the resource type does not exist.
pub fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}

/// The error of reading HotStandbyDeployments: a 404 means the CRD is not installed.
pub fn hsd_read_error(namespace: Option<&str>) -> impl FnOnce(kube::Error) -> Error {
    move |e| {
        if is_not_found(&e) {
            Error::CrdMissing
        } else {
            kube_error(
                "listing HotStandbyDeployments",
                "list",
                "hotstandbydeployments.apps.paia.tech",
                namespace,
            )(e)
        }
    }
}

/// [`hsd_read_error`] for HotStandbyJobs.
pub fn hsj_read_error(namespace: Option<&str>) -> impl FnOnce(kube::Error) -> Error {
    move |e| {
        if is_not_found(&e) {
            Error::Invalid(
                "the HotStandbyJob CRD is not installed: run `kubectl hsd install`".into(),
            )
        } else {
            kube_error(
                "listing HotStandbyJobs",
                "list",
                "hotstandbyjobs.apps.paia.tech",
                namespace,
            )(e)
        }
    }
}

/// The API server this process talks to, for messages about an unreachable server (set once by
/// [`crate::client::load_config`]).
static API_SERVER: std::sync::OnceLock<String> = std::sync::OnceLock::new();

pub(crate) fn set_api_server(url: &str) {
    let _ = API_SERVER.set(url.trim_end_matches('/').to_string());
}

/// The API server's URL, once a configuration was loaded.
pub(crate) fn api_server() -> &'static str {
    API_SERVER.get().map_or("", String::as_str)
}

/// A kube error as one line, the way kubectl words it, never with a Debug dump: an API error as
/// `<Reason>: <message>` plus the field causes the message leaves out and, where there is one,
/// the fix; a transport error as what failed and what to check.
pub fn describe_kube_error(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => describe_status(status),
        other => describe_transport(other),
    }
}

/// An error and its sources as one line, with any kube error in the chain worded by
/// [`describe_kube_error`] (for errors of other crates that wrap one, e.g. the lease manager's).
pub fn describe_error(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(kube) = error.downcast_ref::<kube::Error>() {
            parts.push(describe_kube_error(kube));
            break;
        }
        if let Some(ours) = error.downcast_ref::<Error>() {
            parts.push(ours.to_string());
            break;
        }
        let text = error.to_string();
        // Wrappers often repeat their source in their own message ("Kube error: ApiError: ..."):
        // keep only the part before it.
        let own = match error.source() {
            Some(source) => {
                let source_text = source.to_string();
                text.split(source_text.as_str())
                    .next()
                    .unwrap_or(&text)
                    .trim_end_matches([':', ' '])
                    .to_string()
            }
            None => text,
        };
        if !own.is_empty() && !parts.iter().any(|p| p.contains(&own)) {
            parts.push(own);
        }
        current = error.source();
    }
    parts.join(": ")
}

/// The reason an API server gives for a status code when its answer has none.
fn reason_of_code(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        410 => "Expired",
        413 => "RequestEntityTooLarge",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Failure",
    }
}

fn describe_status(status: &kube::core::Status) -> String {
    let reason = if status.reason.is_empty() {
        reason_of_code(status.code)
    } else {
        status.reason.as_str()
    };
    let mut message = status.message.trim().replace('\n', " ");
    if message.is_empty() {
        message = format!("the server answered {} {reason}", status.code);
    }
    // The API server writes the field causes into the message of most errors; add those it left
    // out, so that every cause is on the line.
    let missing: Vec<String> = status
        .details
        .iter()
        .flat_map(|details| &details.causes)
        .filter(|cause| !cause.message.is_empty() && !message.contains(&cause.message))
        .map(|cause| {
            if cause.field.is_empty() {
                cause.message.clone()
            } else {
                format!("{}: {}", cause.field, cause.message)
            }
        })
        .collect();
    if !missing.is_empty() {
        message = format!("{message} ({})", missing.join("; "));
    }
    let fix = match (status.code, reason) {
        (401, _) => Some(
            "the API server refused the credentials: renew them, or check the user of the kubeconfig context (`kubectl config view --minify`)",
        ),
        (403, _) => Some(
            "grant the right in a Role/ClusterRole bound to this identity (`kubectl auth can-i --list` shows what it may do)",
        ),
        (404, _) if is_unknown_type(status) => Some(
            "the API server does not serve this resource type: if it is HotStandbyDeployments, run `kubectl hsd install`",
        ),
        (409, "AlreadyExists") => Some("choose another name, or delete the existing object first"),
        (409, _) if is_apply_conflict(status) => Some(
            "another field manager owns these fields: change them with the tool that owns them, or take them over with this command's --field-manager",
        ),
        (409, _) => Some("another writer changed the object meanwhile: run the command again"),
        (410, _) => Some("the list or watch was too old: run the command again"),
        (429, _) | (500..=599, _) => Some("the API server is overloaded or failing: retry shortly"),
        _ => None,
    };
    match fix {
        Some(fix) => format!("{reason}: {message}. Fix: {fix}"),
        None => format!("{reason}: {message}"),
    }
}

/// A 404 about the resource type itself (no object named), as when a CRD is not installed.
pub fn is_unknown_type(status: &kube::core::Status) -> bool {
    let named = status.details.as_ref().is_some_and(|d| !d.name.is_empty());
    !named
        && (status
            .message
            .contains("could not find the requested resource")
            || status.message.is_empty()
            || status.message == "404 page not found")
}

fn is_apply_conflict(status: &kube::core::Status) -> bool {
    status.message.starts_with("Apply failed")
        || status
            .details
            .iter()
            .flat_map(|d| &d.causes)
            .any(|c| c.reason == "FieldManagerConflict")
}

/// A failure below the API: no answer, refused connection, TLS, DNS, a timeout.
fn describe_transport(error: &kube::Error) -> String {
    let mut chain: Vec<&(dyn std::error::Error + 'static)> = Vec::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        chain.push(e);
        current = e.source();
    }
    let io_kind = chain
        .iter()
        .find_map(|e| e.downcast_ref::<std::io::Error>().map(std::io::Error::kind));
    let texts: Vec<String> = chain.iter().map(|e| e.to_string()).collect();
    let all = texts.join(": ");
    let server = API_SERVER
        .get()
        .map_or_else(String::new, |url| format!(" at {url}"));
    let check = "Is the cluster running, and is the server of the kubeconfig context right? (`kubectl cluster-info`)";
    if let Some(text) = texts
        .iter()
        .find(|t| t.starts_with("no answer from the API server within"))
    {
        return format!(
            "{text}. Fix: check that the API server{server} is healthy, or allow more time with --request-timeout"
        );
    }
    if let Some(text) = texts.iter().find(|t| t.starts_with("write refused")) {
        return text.clone();
    }
    use std::io::ErrorKind;
    let reached = match io_kind {
        Some(ErrorKind::ConnectionRefused) => Some("connection refused"),
        Some(ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe) => {
            Some("the connection was closed")
        }
        Some(ErrorKind::TimedOut) => Some("the connection timed out"),
        Some(ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable) => {
            Some("no route to the host")
        }
        _ if all.contains("dns error") || all.contains("failed to lookup address") => {
            Some("its host name does not resolve")
        }
        _ => None,
    };
    if let Some(why) = reached {
        return format!("cannot reach the API server{server}: {why}. {check}");
    }
    if chain
        .iter()
        .any(|e| e.downcast_ref::<rustls::Error>().is_some())
        || all.contains("invalid peer certificate")
    {
        let detail = texts.last().cloned().unwrap_or_default();
        return format!(
            "TLS with the API server{server} failed: {detail}. Fix: check certificate-authority(-data) of the kubeconfig cluster"
        );
    }
    // Anything else: the chain without repeats (each wrapper tends to repeat its source).
    let mut parts: Vec<String> = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let own = match texts.get(i + 1) {
            Some(next) => text
                .split(next.as_str())
                .next()
                .unwrap_or(text)
                .trim_end_matches([':', ' ', '('])
                .to_string(),
            None => text.clone(),
        };
        if !own.is_empty() && !parts.iter().any(|p| p.contains(&own)) {
            parts.push(own);
        }
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;
    use kube::core::response::{StatusCause, StatusDetails};

    fn status(code: u16, reason: &str, message: &str) -> Status {
        Status {
            status: Some(kube::core::response::StatusSummary::Failure),
            code,
            message: message.into(),
            metadata: None,
            reason: reason.into(),
            details: None,
        }
    }

    fn details() -> StatusDetails {
        serde_json::from_value(serde_json::json!({})).unwrap()
    }

    fn api(status: Status) -> kube::Error {
        kube::Error::Api(Box::new(status))
    }

    fn cause(field: &str, message: &str) -> StatusCause {
        StatusCause {
            reason: "FieldValueInvalid".into(),
            message: message.into(),
            field: field.into(),
        }
    }

    /// Every kind of error a user meets, worded exactly: one line, the reason, the fix, and
    /// never a Debug dump.
    #[test]
    fn errors_read_like_kubectl() {
        let mut invalid = status(
            422,
            "Invalid",
            r#"HotStandbyDeployment.apps.paia.tech "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters"#,
        );
        invalid.details = Some(StatusDetails {
            name: "Bad_Name".into(),
            kind: "HotStandbyDeployment".into(),
            causes: vec![
                cause(
                    "metadata.name",
                    r#"Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters"#,
                ),
                cause(
                    "spec.idleTarget",
                    "Invalid value: -1: should be greater than or equal to 0",
                ),
            ],
            ..details()
        });
        let mut apply_conflict = status(
            409,
            "Conflict",
            r#"Apply failed with 1 conflict: conflict with "kubectl-edit" using apps/v1: .spec.replicas"#,
        );
        apply_conflict.details = Some(StatusDetails {
            causes: vec![StatusCause {
                reason: "FieldManagerConflict".into(),
                message: r#"conflict with "kubectl-edit" using apps/v1"#.into(),
                field: ".spec.replicas".into(),
            }],
            ..details()
        });
        let mut missing_object = status(404, "NotFound", r#"pods "x" not found"#);
        missing_object.details = Some(StatusDetails {
            name: "x".into(),
            kind: "pods".into(),
            ..details()
        });
        let wrap = |source: kube::Error| Error::Kube {
            action: "applying Deployment web".into(),
            source,
        };
        let cases: Vec<(&str, Error, &str)> = vec![
            (
                "invalid, with a field cause the message left out",
                wrap(api(invalid)),
                r#"applying Deployment web: Invalid: HotStandbyDeployment.apps.paia.tech "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters (spec.idleTarget: Invalid value: -1: should be greater than or equal to 0)"#,
            ),
            (
                "optimistic concurrency conflict",
                wrap(api(status(
                    409,
                    "Conflict",
                    r#"Operation cannot be fulfilled on deployments.apps "web": the object has been modified; please apply your changes to the latest version and try again"#,
                ))),
                r#"applying Deployment web: Conflict: Operation cannot be fulfilled on deployments.apps "web": the object has been modified; please apply your changes to the latest version and try again. Fix: another writer changed the object meanwhile: run the command again"#,
            ),
            (
                "server-side apply conflict",
                wrap(api(apply_conflict)),
                r#"applying Deployment web: Conflict: Apply failed with 1 conflict: conflict with "kubectl-edit" using apps/v1: .spec.replicas. Fix: another field manager owns these fields: change them with the tool that owns them, or take them over with this command's --field-manager"#,
            ),
            (
                "already exists",
                wrap(api(status(
                    409,
                    "AlreadyExists",
                    r#"deployments.apps "web" already exists"#,
                ))),
                r#"applying Deployment web: AlreadyExists: deployments.apps "web" already exists. Fix: choose another name, or delete the existing object first"#,
            ),
            (
                "a resource type the server does not serve (no CRD)",
                wrap(api(status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ))),
                "applying Deployment web: NotFound: the server could not find the requested resource. Fix: the API server does not serve this resource type: if it is HotStandbyDeployments, run `kubectl hsd install`",
            ),
            (
                "a missing object",
                wrap(api(missing_object)),
                r#"applying Deployment web: NotFound: pods "x" not found"#,
            ),
            (
                "no reason given",
                wrap(api(status(403, "", ""))),
                "applying Deployment web: Forbidden: the server answered 403 Forbidden. Fix: grant the right in a Role/ClusterRole bound to this identity (`kubectl auth can-i --list` shows what it may do)",
            ),
            (
                "expired credentials",
                wrap(api(status(401, "Unauthorized", "Unauthorized"))),
                "applying Deployment web: Unauthorized: Unauthorized. Fix: the API server refused the credentials: renew them, or check the user of the kubeconfig context (`kubectl config view --minify`)",
            ),
            (
                "an overloaded server",
                wrap(api(status(429, "TooManyRequests", "too many requests"))),
                "applying Deployment web: TooManyRequests: too many requests. Fix: the API server is overloaded or failing: retry shortly",
            ),
            (
                "an unreachable server",
                wrap(kube::Error::Service(Box::new(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "Connection refused (os error 111)",
                )))),
                "applying Deployment web: cannot reach the API server: connection refused. Is the cluster running, and is the server of the kubeconfig context right? (`kubectl cluster-info`)",
            ),
            (
                "a server that does not answer in time",
                wrap(kube::Error::Service(
                    "no answer from the API server within 30s".into(),
                )),
                "applying Deployment web: no answer from the API server within 30s. Fix: check that the API server is healthy, or allow more time with --request-timeout",
            ),
            (
                "a missing right",
                kube_error("listing pods", "list", "pods", Some("team-a"))(api(status(
                    403,
                    "Forbidden",
                    r#"pods is forbidden: User "bob" cannot list resource "pods" in API group "" in the namespace "team-a""#,
                ))),
                r#"permission denied to list pods in namespace team-a: pods is forbidden: User "bob" cannot list resource "pods" in API group "" in the namespace "team-a". Grant it in the Role/ClusterRole bound to this identity (`kubectl hsd install --operator ... --print` shows the rules)"#,
            ),
            (
                "no CRD",
                Error::CrdMissing,
                "the HotStandbyDeployment CRD is not installed: run `kubectl hsd install`",
            ),
            (
                "a timeout",
                Error::Timeout(Duration::from_secs(60), "the CRD to be established".into()),
                "timed out after 1m waiting for the CRD to be established",
            ),
        ];
        for (what, error, expected) in cases {
            let text = error.to_string();
            assert_eq!(text, expected, "{what}");
            assert!(!text.contains('\n'), "{what}: one line");
            for debug in ["Status {", "ErrorResponse", "Some(", "Box("] {
                assert!(!text.contains(debug), "{what}: no Debug output: {text}");
            }
        }
    }

    #[test]
    fn wrapped_kube_errors_are_worded_too() {
        #[derive(Debug, thiserror::Error)]
        #[error("Kube error: {0}")]
        struct Wrapper(#[source] kube::Error);
        let error = Wrapper(api(status(403, "Forbidden", "leases are forbidden")));
        assert_eq!(
            describe_error(&error),
            "Kube error: Forbidden: leases are forbidden. Fix: grant the right in a Role/ClusterRole bound to this identity (`kubectl auth can-i --list` shows what it may do)"
        );
    }
}
