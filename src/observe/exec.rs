//! The exec busy probe: a command run in the pod through the API server's `pods/exec`
//! subresource (kube's `ws` feature: a WebSocket upgrade of a connection of the reconciler's own
//! client), within the probe's timeout.
//!
//! What the answer means:
//! - the API server's status `Success`: the command exited 0 (success);
//! - a `Failure` status that reports an exit code (reason `NonZeroExitCode` with an `ExitCode`
//!   cause, as kubelets send it, or a message `... exit status N`, as kwok sends every non-zero
//!   exit): the command ran and failed ("command failed", busy or idle by `successIsBusy`);
//! - anything else says nothing about busy, and the pod is unknown (protected): a timeout, a
//!   refused or broken connection, an error answer before the upgrade (no right to
//!   `pods/exec`, no such container), a connection that closes without a status, and a
//!   `Failure` without an exit code (the command never ran: executable not found, kwok's "no
//!   exec found"). The reference operator counted all of these as idle.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::AttachParams;
use kube::{Api, Client};
use tokio::io::AsyncReadExt;

use super::probe::ProbeResult;
use crate::plan::ProbeOutcome;

/// How much of the command's output is kept (for `kubectl hsd probe` and messages).
const OUTPUT_KEPT: usize = 256;

/// One exec probe to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecTarget {
    pub namespace: String,
    pub pod: String,
    pub container: Option<String>,
    pub command: Vec<String>,
    pub timeout: Duration,
}

impl ExecTarget {
    pub fn describe(&self) -> String {
        let container = self
            .container
            .as_deref()
            .map_or(String::new(), |c| format!(" -c {c}"));
        format!(
            "exec {}/{}{container} -- {}",
            self.namespace,
            self.pod,
            self.command.join(" ")
        )
    }
}

/// Reads a stream to its end, keeping its first [`OUTPUT_KEPT`] bytes (the rest is read and
/// dropped, so that the remote command never blocks on a full buffer).
async fn drain(reader: Option<impl tokio::io::AsyncRead + Unpin>) -> Vec<u8> {
    let Some(mut reader) = reader else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let mut buffer = [0u8; 1024];
    loop {
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = OUTPUT_KEPT.saturating_sub(kept.len());
                kept.extend_from_slice(&buffer[..n.min(room)]);
            }
        }
    }
}

/// Runs the probe: within `target.timeout`, whatever the API server or the pod does.
pub async fn exec_probe(client: &Client, target: &ExecTarget) -> ProbeResult {
    let started = Instant::now();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &target.namespace);
    let mut params = AttachParams::default().stdout(true).stderr(true);
    params.stdin = false;
    params.tty = false;
    if let Some(container) = &target.container {
        params = params.container(container.clone());
    }
    let run = async {
        let mut attached = pods
            .exec(&target.pod, target.command.clone(), &params)
            .await
            .map_err(|error| describe_error(&error))?;
        let status = attached
            .take_status()
            .expect("the status is taken once, here");
        let (stdout, stderr, status) =
            tokio::join!(drain(attached.stdout()), drain(attached.stderr()), status);
        // The message loop ends after the status; join reports a broken connection.
        let joined = attached.join().await;
        Ok::<_, String>((status, joined, stdout, stderr))
    };
    let (outcome, output) = match tokio::time::timeout(target.timeout, run).await {
        Err(_) => (
            ProbeOutcome::Error(format!(
                "no answer within {}s",
                target.timeout.as_secs_f32()
            )),
            None,
        ),
        Ok(Err(error)) => (ProbeOutcome::Error(error), None),
        Ok(Ok((status, joined, stdout, stderr))) => {
            let mut output = stdout;
            output.extend_from_slice(&stderr);
            output.truncate(OUTPUT_KEPT);
            let output = (!output.is_empty())
                .then(|| String::from_utf8_lossy(&output).trim_end().to_string());
            let outcome = match status {
                Some(status) => interpret(&status),
                None => ProbeOutcome::Error(match joined {
                    Err(error) => format!("the exec stream broke: {error}"),
                    Ok(()) => "the exec stream closed without an exit status".to_string(),
                }),
            };
            (outcome, output)
        }
    };
    ProbeResult {
        outcome,
        latency: started.elapsed(),
        output,
    }
}

/// The answer an exec status gives (see the module's documentation).
pub fn interpret(status: &Status) -> ProbeOutcome {
    let message = status.message.clone().unwrap_or_default();
    match status.status.as_deref() {
        Some("Success") => ProbeOutcome::Success,
        Some("Failure") if reports_exit_code(status) => {
            ProbeOutcome::CommandFailed(short(&exit_description(status, &message)))
        }
        _ => ProbeOutcome::Error(format!(
            "the command did not run: {}",
            short(if message.is_empty() {
                status.reason.as_deref().unwrap_or("no reason given")
            } else {
                &message
            })
        )),
    }
}

fn reports_exit_code(status: &Status) -> bool {
    let cause = status
        .details
        .as_ref()
        .and_then(|d| d.causes.as_ref())
        .is_some_and(|causes| {
            causes
                .iter()
                .any(|c| c.reason.as_deref() == Some("ExitCode"))
        });
    cause
        || status.reason.as_deref() == Some("NonZeroExitCode")
        || exit_status_in(status.message.as_deref().unwrap_or_default()).is_some()
}

/// The N of "exit status N" (Go's exec.ExitError, as kwok passes it on) or "exit code N".
fn exit_status_in(message: &str) -> Option<i64> {
    for marker in ["exit status ", "exit code "] {
        if let Some(at) = message.rfind(marker) {
            let digits: String = message[at + marker.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(code) = digits.parse() {
                return Some(code);
            }
        }
    }
    None
}

fn exit_description(status: &Status, message: &str) -> String {
    let from_cause = status
        .details
        .as_ref()
        .and_then(|d| d.causes.as_ref())
        .and_then(|causes| {
            causes
                .iter()
                .find(|c| c.reason.as_deref() == Some("ExitCode"))
        })
        .and_then(|c| c.message.clone());
    match from_cause
        .and_then(|m| m.parse::<i64>().ok())
        .or_else(|| exit_status_in(message))
    {
        Some(code) => format!("exit code {code}"),
        None => message.to_string(),
    }
}

fn short(text: &str) -> String {
    let text = text.trim();
    if text.chars().count() <= 200 {
        text.to_string()
    } else {
        let mut cut: String = text.chars().take(200).collect();
        cut.push('…');
        cut
    }
}

fn describe_error(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) if status.code == 403 => format!(
            "no right to exec (pods/exec needs get and create): {}",
            short(&status.message)
        ),
        kube::Error::Api(status) => format!("{} ({})", short(&status.message), status.code),
        other => {
            let mut source: &dyn std::error::Error = other;
            while let Some(next) = source.source() {
                source = next;
            }
            format!("exec failed: {}", short(&source.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status(value: serde_json::Value) -> Status {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn an_exit_code_is_a_failed_command_anything_else_is_no_answer() {
        let cases = [
            (json!({"status": "Success"}), "success"),
            // A kubelet's non-zero exit.
            (
                json!({"status": "Failure", "reason": "NonZeroExitCode",
                    "message": "command terminated with non-zero exit code: error executing command [cat /tmp/busy], exit code 1",
                    "details": {"causes": [{"reason": "ExitCode", "message": "1"}]}}),
                "failed: exit code 1",
            ),
            // kwok's: every non-zero exit as an InternalError with Go's exit error.
            (
                json!({"status": "Failure", "reason": "InternalError", "code": 500,
                    "message": "Internal error occurred: error executing command in container: exit status 3"}),
                "failed: exit code 3",
            ),
            // The command never ran.
            (
                json!({"status": "Failure", "reason": "InternalError", "code": 500,
                    "message": "Internal error occurred: error executing command in container: no exec found for container \"c\" in pod \"ns/p\""}),
                "unknown",
            ),
            (
                json!({"status": "Failure", "reason": "InternalError",
                    "message": "OCI runtime exec failed: exec: \"cat\": executable file not found in $PATH"}),
                "unknown",
            ),
            (json!({"status": "Failure"}), "unknown"),
            (json!({}), "unknown"),
        ];
        for (value, expected) in cases {
            let outcome = interpret(&status(value.clone()));
            let got = match &outcome {
                ProbeOutcome::Success => "success".to_string(),
                ProbeOutcome::CommandFailed(why) => format!("failed: {why}"),
                ProbeOutcome::Error(_) => "unknown".to_string(),
                other => format!("{other:?}"),
            };
            assert_eq!(got, expected, "{value}");
        }
    }

    #[test]
    fn exit_codes_are_read_from_the_message() {
        assert_eq!(exit_status_in("... exit status 1"), Some(1));
        assert_eq!(exit_status_in("exit code 127 and more"), Some(127));
        assert_eq!(exit_status_in("exit status x"), None);
        assert_eq!(exit_status_in("no exec found"), None);
    }
}
