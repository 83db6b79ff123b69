//! The `kubectl hsd` command line: flags like kubectl's, data on stdout, everything else on
//! stderr, exit 1 on errors and 2 on usage errors (clap's).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::client::ClientOptions;
use crate::manifests::OperatorMode;
use crate::observe::Scope;

mod create;
mod describe;
mod explain;
mod get;
mod install;
mod mark;
pub mod output;
mod reconcile;
mod rollout;
mod services;
mod uninstall;

pub use output::OutputFormat;

#[derive(Debug, Parser)]
#[command(
    name = "kubectl-hsd",
    bin_name = "kubectl hsd",
    version,
    about = "Hot-standby capacity for Kubernetes: keep a buffer of idle, warm pods",
    long_about = "Keeps a constant buffer of idle, warm pods. The child Deployment of each \
HotStandbyDeployment runs clamp(busyPods + idleTarget, minReplicas, maxReplicas) replicas."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct GlobalArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// The namespace (default: the context's namespace).
    #[arg(short = 'n', long, global = true, value_name = "NS")]
    pub namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long, global = true, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum)]
    pub output: Option<OutputFormat>,
    /// Log verbosity on stderr: 0 warnings, 1 info, 2 debug, 3+ trace (like kubectl's -v).
    #[arg(
        short = 'v',
        long = "v",
        global = true,
        default_value_t = 0,
        value_name = "LEVEL"
    )]
    pub verbosity: u8,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl GlobalArgs {
    pub fn client_options(&self) -> ClientOptions {
        ClientOptions {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
        }
    }

    /// The scope of namespaced commands.
    pub fn scope(&self, default_namespace: &str) -> Scope {
        if self.all_namespaces {
            Scope::All
        } else {
            Scope::Namespace(
                self.namespace
                    .clone()
                    .unwrap_or_else(|| default_namespace.to_string()),
            )
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Install the CRD (and with --operator, the unattended reconciler).
    Install(InstallArgs),
    /// Remove what install made.
    Uninstall(UninstallArgs),
    /// Print the CRD as YAML.
    Crd,
    /// Create a HotStandbyDeployment.
    Create(CreateArgs),
    /// List HotStandbyDeployments, or active-standby Services (`get svc`, `get services`).
    Get {
        /// `NAME` (an HSD), or a type (`hsd`, `svc`) and a `NAME`, or `svc/NAME`.
        #[arg(value_name = "TYPE|NAME", num_args = 0..=2)]
        args: Vec<String>,
    },
    /// Show a HotStandbyDeployment, its Deployment, each pod's state, conditions and events.
    Describe { name: String },
    /// Explain the replica count a pass would choose for a HotStandbyDeployment, step by step,
    /// or (`svc/NAME`) the master a pass would choose for an active-standby Service.
    Explain {
        /// `NAME` (an HSD) or `svc/NAME`.
        name: String,
    },
    /// Mark pods busy (inside a pod with no argument: POD_NAME/POD_NAMESPACE).
    MarkBusy(MarkArgs),
    /// Mark pods idle.
    MarkIdle(MarkArgs),
    /// Run one reconcile pass over the HotStandbyDeployments in scope.
    Reconcile(ReconcileArgs),
    /// Follow a HotStandbyDeployment's rollout (a podTemplate change).
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// Print a shell completion script.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the version.
    Version,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Print the manifests instead of applying them.
    #[arg(long)]
    pub print: bool,
    /// Also install the unattended reconciler.
    #[arg(long, value_enum)]
    pub operator: Option<OperatorMode>,
    /// The image the reconciler runs.
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// Watch only the namespace given by -n (default hsd-system), with a Role there instead
    /// of a ClusterRole.
    #[arg(long, requires = "operator")]
    pub namespace_scoped: bool,
    /// Also install a ValidatingAdmissionPolicy: a pod's own token may change only that pod,
    /// and only its busy annotation.
    #[arg(long)]
    pub pod_policy: bool,
    /// With --operator deployment: watcher replicas.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(i32).range(1..))]
    pub replicas: i32,
    /// With --operator deployment: split the HSDs into this many shards, each on its own Lease;
    /// each replica holds a fair share and watches only its shards' pods.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub shards: u32,
    /// The busy annotation the pod policy lets pods change.
    #[arg(long, default_value = crate::api::hsd::DEFAULT_BUSY_ANNOTATION, value_name = "KEY")]
    pub annotation_key: String,
    /// How long to wait for the CRD to be established.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// Also delete the CRD when HotStandbyDeployments still exist (deletes them, their
    /// Deployments and their pods).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    pub name: String,
    /// The container image.
    #[arg(long)]
    pub image: String,
    #[arg(long, default_value_t = 1)]
    pub idle_target: i32,
    #[arg(long = "min", default_value_t = 0)]
    pub min_replicas: i32,
    #[arg(long = "max")]
    pub max_replicas: Option<i32>,
    /// The container port (and the HTTP probe's port in http mode).
    #[arg(long)]
    pub port: Option<i32>,
    #[arg(long, value_enum, default_value_t = ProbeArg::Annotation)]
    pub probe: ProbeArg,
    #[arg(long, value_name = "PATH")]
    pub http_path: Option<String>,
    /// Print what would be created; write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProbeArg {
    Annotation,
    Http,
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Wait until the rollout has finished, like `kubectl rollout status`: new pods up and
    /// available, and no pod of an earlier template left (busy ones leave when their work ends).
    Status {
        name: String,
        /// Keep waiting; with --watch=false, print the status once.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
        watch: bool,
        /// Give up after this long (0 waits forever).
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration, value_name = "DURATION")]
        timeout: std::time::Duration,
    },
}

#[derive(Debug, Args)]
pub struct MarkArgs {
    /// Pod names (default: $POD_NAME in $POD_NAMESPACE, as the Downward API sets them).
    pub pods: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Keep running: react to every pod, Deployment and HSD change (leader-elected).
    #[arg(long, conflicts_with = "dry_run")]
    pub watch: bool,
    /// Print the plan; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Reconcile even while a watcher holds the lease (one-shot pass only).
    #[arg(long)]
    pub force: bool,
    /// With --watch: where to serve /metrics, /healthz and /readyz ("off" to disable).
    #[arg(long, default_value = "0.0.0.0:8080", value_name = "ADDR")]
    pub metrics_addr: String,
    /// With --watch: take part in leader election on a Lease (false: reconcile at once, alone).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub leader_elect: bool,
    /// The Lease's name.
    #[arg(long, default_value = crate::watch::DEFAULT_LEASE_NAME, value_name = "NAME")]
    pub lease_name: String,
    /// The Lease's namespace (default: the watched namespace, or $POD_NAMESPACE / hsd-system with -A).
    #[arg(long, value_name = "NS")]
    pub lease_namespace: Option<String>,
    /// How long a lease holder may be silent before another replica takes over.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub lease_duration: std::time::Duration,
    /// This replica's identity in the Lease (default: $POD_NAME or the host name, with the pid).
    #[arg(long, value_name = "ID")]
    pub identity: Option<String>,
    /// With --watch: split the HSDs into this many shards, each on its own Lease; each replica
    /// holds a fair share and watches only its shards' pods.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub shards: u32,
    /// With --watch: reconcile every HSD at least this often, even without changes.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub resync: std::time::Duration,
    /// Print the API requests the pass made (to stderr).
    #[arg(long)]
    pub stats: bool,
    /// HTTP probes in flight at once, per HSD.
    #[arg(long, default_value_t = crate::observe::probe::DEFAULT_CONCURRENCY)]
    pub probe_concurrency: usize,
    /// One-shot pass: end within this. Probes stop 15s before it (unprobed pods count as busy
    /// and their HSD keeps its replicas); writes still running at it fail with a timeout.
    #[arg(long, default_value = "50s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub deadline: std::time::Duration,
}

/// What `get` lists.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Hsd(Option<String>),
    Service(Option<String>),
}

fn is_hsd_type(word: &str) -> bool {
    matches!(
        word.to_ascii_lowercase().as_str(),
        "hsd"
            | "hsds"
            | "hotstandbydeployment"
            | "hotstandbydeployments"
            | "hotstandbydeployments.apps.paia.tech"
    )
}

/// `get`, `get NAME` (an HSD, as before), `get TYPE`, `get TYPE NAME`, `get TYPE/NAME`.
fn parse_get(args: &[String]) -> Result<Target, String> {
    let typed = |kind: &str, name: Option<String>| {
        if services::is_service_type(kind) {
            Ok(Target::Service(name))
        } else if is_hsd_type(kind) {
            Ok(Target::Hsd(name))
        } else {
            Err(format!(
                "the server doesn't have a resource type {kind:?} here: use hsd or svc"
            ))
        }
    };
    match args {
        [] => Ok(Target::Hsd(None)),
        [one] => match one.split_once('/') {
            Some((kind, name)) => typed(kind, Some(name.to_string())),
            None if services::is_service_type(one) || is_hsd_type(one) => typed(one, None),
            None => Ok(Target::Hsd(Some(one.clone()))),
        },
        [kind, name] => typed(kind, Some(name.clone())),
        _ => Err("get takes at most a type and a name".into()),
    }
}

/// Runs a parsed command. Returns the process exit code.
pub async fn run(cli: Cli) -> crate::Result<i32> {
    let global = cli.global;
    match cli.command {
        Command::Crd => {
            print!("{}", crate::manifests::crd_yaml());
            Ok(0)
        }
        Command::Version => {
            println!("kubectl-hsd v{}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        Command::Completion { shell } => {
            use clap::CommandFactory;
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "kubectl-hsd", &mut std::io::stdout());
            Ok(0)
        }
        Command::Install(args) => install::install(&global, args).await,
        Command::Uninstall(args) => uninstall::uninstall(&global, args).await,
        Command::Create(args) => create::create(&global, args).await,
        Command::Get { args } => match parse_get(&args) {
            Ok(Target::Hsd(name)) => get::get(&global, name).await,
            Ok(Target::Service(name)) => services::get(&global, name.as_deref()).await,
            Err(message) => {
                eprintln!("error: {message}");
                Ok(2)
            }
        },
        Command::Describe { name } => describe::describe(&global, &name).await,
        Command::Explain { name } => match name.split_once('/') {
            Some((kind, service)) if services::is_service_type(kind) => {
                services::explain(&global, service).await
            }
            Some((kind, hsd)) if is_hsd_type(kind) => explain::explain(&global, hsd).await,
            Some((kind, _)) => {
                eprintln!(
                    "error: explain takes NAME (a HotStandbyDeployment), hsd/NAME or svc/NAME, not {kind:?}"
                );
                Ok(2)
            }
            None => explain::explain(&global, &name).await,
        },
        Command::MarkBusy(args) => mark::mark(&global, args, true).await,
        Command::MarkIdle(args) => mark::mark(&global, args, false).await,
        Command::Reconcile(args) => reconcile::reconcile(&global, args).await,
        Command::Rollout { command } => rollout::rollout(&global, command).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_reads_types_and_names_like_kubectl() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cases: Vec<(Vec<String>, Result<Target, ()>)> = vec![
            (args(&[]), Ok(Target::Hsd(None))),
            (args(&["game-ws"]), Ok(Target::Hsd(Some("game-ws".into())))),
            (args(&["svc"]), Ok(Target::Service(None))),
            (args(&["services"]), Ok(Target::Service(None))),
            (args(&["svc", "db"]), Ok(Target::Service(Some("db".into())))),
            (args(&["svc/db"]), Ok(Target::Service(Some("db".into())))),
            (args(&["hsd"]), Ok(Target::Hsd(None))),
            (args(&["hsd", "svc"]), Ok(Target::Hsd(Some("svc".into())))),
            (
                args(&["hsd/game-ws"]),
                Ok(Target::Hsd(Some("game-ws".into()))),
            ),
            (args(&["pods", "x"]), Err(())),
            (args(&["pod/x"]), Err(())),
        ];
        for (input, want) in cases {
            assert_eq!(parse_get(&input).map_err(|_| ()), want, "{input:?}");
        }
    }
}
