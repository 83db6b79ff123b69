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

    #[error("{action}: {source}")]
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

    #[error("timed out after {0:?} waiting for {1}")]
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
