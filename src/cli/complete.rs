//! Shell completion, one engine for two front ends.
//!
//! The engine is clap_complete's dynamic completion (`unstable-dynamic`): it walks the real
//! clap command tree, so subcommands and flags can never drift from the parser, and arguments
//! carry completers that ask the live cluster for HotStandbyDeployment names, pods and
//! namespaces (with the `--kubeconfig`, `--context` and `-n` typed on the same line, within
//! [`CLUSTER_TIMEOUT`]; no cluster means no candidates, never an error).
//!
//! - `kubectl hsd <TAB>`: kubectl runs `kubectl_complete-hsd ARGS... CURRENT` (krew's and
//!   kubectl's plugin convention) and reads cobra's protocol: one candidate a line, then
//!   `:<directive>`. `kubectl_complete-hsd` (a second, std-only binary) runs
//!   `kubectl-hsd __complete ARGS...`, answered by [`cobra`].
//! - `kubectl-hsd <TAB>`: `kubectl-hsd completion SHELL` prints clap_complete's registration
//!   script, which calls `kubectl-hsd` back with [`COMPLETE_VAR`] set ([`complete_from_env`]).

use std::ffi::OsStr;
use std::time::Duration;

use clap::CommandFactory;
use clap_complete::engine::{ArgValueCompleter, CompletionCandidate};
use kube::Api;
use kube::api::{DynamicObject, ListParams};
use kube::config::Kubeconfig;

use super::Cli;
use crate::client::ClientOptions;

/// The environment variable of clap_complete's registration scripts (unusual on purpose: a
/// stray `COMPLETE=...` in someone's environment must not turn every run into a completion).
pub const COMPLETE_VAR: &str = "_KUBECTL_HSD_COMPLETE";
/// Longest wait for the cluster while completing: a shell must stay responsive.
pub const CLUSTER_TIMEOUT: Duration = Duration::from_secs(3);

/// The hidden first argument of kubectl's plugin completion: `kubectl-hsd __complete ARGS...`.
pub const COBRA_COMMAND: &str = "__complete";

/// cobra's `ShellCompDirectiveNoFileComp`: never fall back to file names.
const NO_FILE_COMP: u32 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
    Powershell,
    Elvish,
}

/// The completion script of a shell, for `kubectl-hsd` typed directly.
pub fn script(shell: Shell) -> String {
    use clap_complete::env::EnvCompleter;
    let completer: &dyn EnvCompleter = match shell {
        Shell::Bash => &clap_complete::env::Bash,
        Shell::Zsh => &clap_complete::env::Zsh,
        Shell::Fish => &clap_complete::env::Fish,
        Shell::Powershell => &clap_complete::env::Powershell,
        Shell::Elvish => &clap_complete::env::Elvish,
    };
    let mut buf = Vec::new();
    let _ = completer.write_registration(
        COMPLETE_VAR,
        "kubectl-hsd",
        "kubectl-hsd",
        "kubectl-hsd",
        &mut buf,
    );
    String::from_utf8_lossy(&buf).into_owned()
}

/// Answers the registration scripts' call-backs (when [`COMPLETE_VAR`] is set) and exits;
/// returns at once otherwise.
pub fn complete_from_env() {
    if std::env::var_os(COMPLETE_VAR).is_none_or(|v| v.is_empty() || v == "0") {
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    let words = args
        .iter()
        .position(|a| a == "--")
        .map_or(&args[..0], |i| &args[i + 1..]);
    remember_line(words.iter().skip(1).cloned().collect());
    clap_complete::CompleteEnv::with_factory(Cli::command)
        .var(COMPLETE_VAR)
        .bin("kubectl-hsd")
        .completer("kubectl-hsd")
        .complete();
}

/// kubectl's plugin completion (cobra's protocol): `args` are the words after `kubectl hsd`,
/// the last one the word being completed (empty for a new word). Prints the candidates, one a
/// line with its help after a tab, then `:4` (no file names). Returns the exit code.
pub fn cobra(args: &[String]) -> i32 {
    let mut words: Vec<String> = vec!["kubectl-hsd".to_string()];
    words.extend(args.iter().cloned());
    if words.len() == 1 {
        words.push(String::new());
    }
    remember_line(words[1..words.len() - 1].to_vec());
    let index = words.len() - 1;
    let mut command = Cli::command();
    let candidates = clap_complete::engine::complete(
        &mut command,
        words.iter().map(Into::into).collect(),
        index,
        None,
    )
    .unwrap_or_default();
    // As cobra does: flags only once the word starts with `-`.
    let current = words.last().map(String::as_str).unwrap_or_default();
    let flags_wanted = current.starts_with('-');
    let mut out = String::new();
    for candidate in candidates.iter().filter(|c| {
        !c.is_hide_set() && (flags_wanted || !c.get_value().to_string_lossy().starts_with('-'))
    }) {
        out.push_str(&candidate.get_value().to_string_lossy());
        if let Some(help) = candidate.get_help() {
            let help = help.to_string();
            let first_line = help.lines().next().unwrap_or_default();
            if !first_line.is_empty() {
                out.push('\t');
                out.push_str(first_line);
            }
        }
        out.push('\n');
    }
    out.push_str(&format!(":{NO_FILE_COMP}\n"));
    print!("{out}");
    0
}

/// The words typed before the one being completed: completers read `--kubeconfig`,
/// `--context` and `-n` from them.
static LINE: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

fn remember_line(words: Vec<String>) {
    let _ = LINE.set(words);
}

/// The value of a flag on the line being completed (`--flag V`, `--flag=V`, `-f V`, `-fV`).
fn flag_value(long: &str, short: Option<char>) -> Option<String> {
    let words = LINE.get()?;
    let mut found = None;
    let mut iter = words.iter().peekable();
    while let Some(word) = iter.next() {
        let long_flag = format!("--{long}");
        if *word == long_flag {
            found = iter.peek().map(|v| v.to_string());
        } else if let Some(value) = word.strip_prefix(&format!("{long_flag}=")) {
            found = Some(value.to_string());
        } else if let Some(short) = short {
            let short_flag = format!("-{short}");
            if *word == short_flag {
                found = iter.peek().map(|v| v.to_string());
            } else if let Some(value) = word.strip_prefix(&short_flag)
                && !word.starts_with("--")
                && !value.is_empty()
            {
                found = Some(value.trim_start_matches('=').to_string());
            }
        }
    }
    found
}

fn line_client_options() -> ClientOptions {
    ClientOptions {
        kubeconfig: flag_value("kubeconfig", None).map(Into::into),
        context: flag_value("context", None),
        ..ClientOptions::default()
    }
}

/// Runs `query` against the cluster of the line being completed; nothing on any failure.
fn from_cluster<F, Fut>(query: F) -> Vec<String>
where
    F: FnOnce(kube::Client, String) -> Fut,
    Fut: std::future::Future<Output = Option<Vec<String>>>,
{
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return Vec::new();
    };
    crate::client::install_crypto_provider();
    runtime.block_on(async {
        let work = async {
            let (client, _, default_namespace) =
                crate::client::connect(&line_client_options()).await.ok()?;
            let namespace = flag_value("namespace", Some('n')).unwrap_or(default_namespace);
            query(client, namespace).await
        };
        tokio::time::timeout(CLUSTER_TIMEOUT, work)
            .await
            .ok()
            .flatten()
            .unwrap_or_default()
    })
}

fn matching(names: Vec<String>, current: &OsStr) -> Vec<CompletionCandidate> {
    let current = current.to_string_lossy();
    let mut names: Vec<String> = names
        .into_iter()
        .filter(|n| n.starts_with(current.as_ref()))
        .collect();
    names.sort();
    names.dedup();
    names.into_iter().map(CompletionCandidate::new).collect()
}

/// HotStandbyDeployment names in the namespace of the line.
pub fn hsd_names() -> ArgValueCompleter {
    ArgValueCompleter::new(|current: &OsStr| {
        matching(
            from_cluster(|client, namespace| async move {
                let api: Api<DynamicObject> =
                    Api::namespaced_with(client, &namespace, &crate::observe::hsd_resource());
                let list = api.list_metadata(&ListParams::default()).await.ok()?;
                Some(
                    list.items
                        .into_iter()
                        .filter_map(|o| o.metadata.name)
                        .collect(),
                )
            }),
            current,
        )
    })
}

/// Pod names in the namespace of the line.
pub fn pod_names() -> ArgValueCompleter {
    ArgValueCompleter::new(|current: &OsStr| {
        matching(
            from_cluster(|client, namespace| async move {
                let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client, &namespace);
                let list = api.list_metadata(&ListParams::default()).await.ok()?;
                Some(
                    list.items
                        .into_iter()
                        .filter_map(|o| o.metadata.name)
                        .collect(),
                )
            }),
            current,
        )
    })
}

/// Namespaces of the cluster.
pub fn namespaces() -> ArgValueCompleter {
    ArgValueCompleter::new(|current: &OsStr| {
        matching(
            from_cluster(|client, _| async move {
                let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client);
                let list = api.list_metadata(&ListParams::default()).await.ok()?;
                Some(
                    list.items
                        .into_iter()
                        .filter_map(|o| o.metadata.name)
                        .collect(),
                )
            }),
            current,
        )
    })
}

/// Contexts of the kubeconfig (no cluster needed).
pub fn contexts() -> ArgValueCompleter {
    ArgValueCompleter::new(|current: &OsStr| {
        let kubeconfig = match flag_value("kubeconfig", None) {
            Some(path) => Kubeconfig::read_from(path).ok(),
            None => Kubeconfig::read().ok(),
        };
        let names = kubeconfig
            .map(|k| k.contexts.into_iter().map(|c| c.name).collect())
            .unwrap_or_default();
        matching(names, current)
    })
}

/// `-o` values.
pub fn output_formats() -> ArgValueCompleter {
    ArgValueCompleter::new(|current: &OsStr| {
        matching(
            super::output::OUTPUT_FORMATS
                .iter()
                .map(|f| f.to_string())
                .collect(),
            current,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates(args: &[&str]) -> Vec<String> {
        let mut words = vec!["kubectl-hsd".to_string()];
        words.extend(args.iter().map(|a| a.to_string()));
        let index = words.len() - 1;
        clap_complete::engine::complete(
            &mut Cli::command(),
            words.iter().map(Into::into).collect(),
            index,
            None,
        )
        .unwrap()
        .iter()
        .map(|c| c.get_value().to_string_lossy().into_owned())
        .collect()
    }

    #[test]
    fn subcommands_flags_and_formats_complete_without_a_cluster() {
        let subcommands = candidates(&[""]);
        for expected in ["get", "describe", "reconcile", "mark-busy", "completion"] {
            assert!(
                subcommands.contains(&expected.to_string()),
                "{subcommands:?}"
            );
        }
        assert!(!subcommands.contains(&"__complete".to_string()), "hidden");
        let flags = candidates(&["reconcile", "--dr"]);
        assert_eq!(flags, ["--dry-run"]);
        let formats = candidates(&["get", "-o", "js"]);
        assert_eq!(formats, ["json", "jsonpath-file=", "jsonpath="]);
    }

    #[test]
    fn flags_are_read_from_the_line() {
        remember_line(
            ["get", "-n", "team-a", "--context=dev", "--kubeconfig", "/k"]
                .map(String::from)
                .to_vec(),
        );
        assert_eq!(
            flag_value("namespace", Some('n')).as_deref(),
            Some("team-a")
        );
        assert_eq!(flag_value("context", None).as_deref(), Some("dev"));
        assert_eq!(flag_value("kubeconfig", None).as_deref(), Some("/k"));
    }
}
