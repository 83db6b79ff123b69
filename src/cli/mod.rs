//! The `kubectl hsd` command line: flags like kubectl's, data on stdout, everything else on
//! stderr, exit 1 on errors and 2 on usage errors (clap's).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::client::{ClientOptions, WritePolicy};
use crate::manifests::{MonitorKind, OperatorMode};
use crate::observe::Scope;

pub mod complete;
mod create;
mod describe;
mod explain;
mod get;
mod install;
pub mod jsonpath;
pub(crate) mod mark;
pub mod output;
mod probe;
mod proxy;
mod reconcile;
mod rollout;
mod services;
mod uninstall;

pub use output::OutputFormat;
pub use reconcile::laptop_lease_namespace;

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
    #[arg(long, global = true, value_name = "NAME", add = complete::contexts())]
    pub context: Option<String>,
    /// The namespace (default: the context's namespace).
    #[arg(short = 'n', long, global = true, value_name = "NS", add = complete::namespaces())]
    pub namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long, global = true, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// Output format: json, yaml, name, wide, jsonpath=TEMPLATE, jsonpath-file=PATH,
    /// custom-columns=HEADER:PATH,..., custom-columns-file=PATH.
    #[arg(short = 'o', long, global = true, value_name = "FORMAT", value_parser = clap::builder::ValueParser::new(parse_output), add = complete::output_formats())]
    pub output: Option<OutputFormat>,
    /// Log verbosity on stderr, like kubectl's -v: 0 warnings, 1-3 info, 4-5 debug, 6 and 7
    /// also one line per API request, 8 trace, 9 trace of every library.
    #[arg(
        short = 'v',
        long = "v",
        global = true,
        default_value_t = 0,
        value_name = "LEVEL"
    )]
    pub verbosity: u8,
    /// Log format on stderr: every stderr line is JSON with `json`.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// How long to wait for the answer to one API request (not a watch): a duration (1s, 2m) or
    /// seconds; 0 waits forever.
    #[arg(long, global = true, value_name = "DURATION", default_value = "30s", value_parser = crate::client::parse_request_timeout)]
    pub request_timeout: std::time::Duration,
}

fn parse_output(text: &str) -> Result<OutputFormat, String> {
    text.parse()
}

/// `--dry-run`: kubectl's strategies. A bare `--dry-run` means `client`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum DryRun {
    /// Write for real.
    #[default]
    None,
    /// Print what would be written; send no write.
    Client,
    /// Send every write as a server-side dry run (`dryRun=All`): the API server validates and
    /// admits it, and persists nothing.
    Server,
}

impl DryRun {
    pub fn is_dry(self) -> bool {
        self != DryRun::None
    }

    /// The flag's value: none, client or server.
    pub fn name(self) -> &'static str {
        match self {
            DryRun::None => "none",
            DryRun::Client => "client",
            DryRun::Server => "server",
        }
    }

    /// What kubectl appends to a message about a dry-run write.
    pub fn suffix(self) -> &'static str {
        match self {
            DryRun::None => "",
            DryRun::Client => " (dry run)",
            DryRun::Server => " (server dry run)",
        }
    }
}

/// The write flags of every command that writes, as kubectl names them.
#[derive(Debug, Args, Clone)]
pub struct WriteArgs {
    /// none: write; client: print what would be written, send nothing; server: send every write
    /// as a server-side dry run. A bare --dry-run means client.
    #[arg(
        long,
        value_enum,
        value_name = "STRATEGY",
        default_value_t = DryRun::None,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "client"
    )]
    pub dry_run: DryRun,
    /// The field manager of the writes (server-side apply ownership). Default: kubectl-hsd
    /// (kubectl-hsd-mark for mark-busy/mark-idle).
    #[arg(long, value_name = "NAME")]
    pub field_manager: Option<String>,
}

impl GlobalArgs {
    pub fn client_options(&self) -> ClientOptions {
        ClientOptions {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
            writes: WritePolicy::default(),
        }
    }

    /// The client options of a command that writes: `--dry-run=server` makes every write a
    /// server-side dry run.
    pub fn write_client_options(&self, writes: &WriteArgs) -> ClientOptions {
        ClientOptions {
            writes: WritePolicy {
                server_dry_run: writes.dry_run == DryRun::Server,
            },
            ..self.client_options()
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

pub use crate::notice::LogFormat;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Install the CRD (and with --operator, the unattended reconciler).
    Install(InstallArgs),
    /// Remove what install made.
    Uninstall(UninstallArgs),
    /// Print the CRDs (HotStandbyDeployment, HotStandbyJob) as YAML.
    Crd,
    /// Create a HotStandbyDeployment (`create NAME`) or a HotStandbyJob (`create hsj NAME`).
    Create(CreateArgs),
    /// List HotStandbyDeployments (`get hsj` lists HotStandbyJobs, `get svc` active-standby
    /// Services; `get hsj/NAME` or `get hsj NAME` shows one).
    Get {
        /// `NAME` (an HSD), a type (`hsd`, `hsj`, `svc`) and a `NAME`, or `TYPE/NAME`.
        #[arg(value_name = "TYPE|NAME", num_args = 0..=2, add = complete::hsd_names())]
        args: Vec<String>,
    },
    /// Show a HotStandbyDeployment (or hsj/NAME): labels, annotations, spec, its children, each
    /// pod's state, conditions and events.
    Describe {
        /// NAME (a HotStandbyDeployment) or hsj/NAME.
        #[arg(add = complete::hsd_names())]
        name: String,
    },
    /// Explain the count a pass would choose for a HotStandbyDeployment (or hsj/NAME), step by
    /// step, or (`svc/NAME`) the master a pass would choose for an active-standby Service.
    Explain {
        /// NAME (a HotStandbyDeployment), hsj/NAME or svc/NAME.
        #[arg(add = complete::hsd_names())]
        name: String,
    },
    /// Mark pods busy (inside a pod with no argument: POD_NAME/POD_NAMESPACE).
    MarkBusy(MarkArgs),
    /// Mark pods idle.
    MarkIdle(MarkArgs),
    /// Run a pod's busy probe once (its HSD's or HSJ's) and print the answer.
    Probe(ProbeArgs),
    /// Run one reconcile pass over the HotStandbyDeployments and HotStandbyJobs in scope.
    Reconcile(ReconcileArgs),
    /// Follow a HotStandbyDeployment's rollout (a podTemplate change).
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// Wake-on-connect TCP proxy: scale a Deployment to zero when idle, back up on a connection
    /// (Zero Pod Autoscaler compatible).
    Proxy(crate::proxy::ProxyArgs),
    /// Print a shell completion script (bash, zsh, fish, powershell, elvish). It completes
    /// subcommands, flags, HotStandbyDeployment names, pods and namespaces from the cluster.
    Completion {
        #[arg(value_enum)]
        shell: complete::Shell,
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
    /// With --operator deployment: also a prometheus-operator ServiceMonitor or PodMonitor
    /// (their CRDs must be installed).
    #[arg(long, value_enum, value_name = "KIND", requires = "operator")]
    pub monitor: Option<MonitorKind>,
    /// How long to wait for the CRD to be established.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
    #[command(flatten)]
    pub writes: WriteArgs,
}

#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// Also delete the CRD when HotStandbyDeployments still exist (deletes them, their
    /// Deployments and their pods).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub writes: WriteArgs,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// NAME (a HotStandbyDeployment), or `hsj NAME` (a HotStandbyJob).
    #[arg(num_args = 1..=2, value_names = ["KIND", "NAME"], required = true)]
    pub names: Vec<String>,
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
    /// With --probe exec: the command, split like a shell does (quotes group words; no
    /// shell runs it). Default: cat /tmp/healthy.
    #[arg(long, value_name = "COMMAND")]
    pub exec_command: Option<String>,
    /// With --probe exec: the container to run it in.
    #[arg(long, value_name = "NAME")]
    pub exec_container: Option<String>,
    /// With --probe http or exec: whether a successful probe means idle instead of busy.
    #[arg(long)]
    pub success_is_idle: bool,
    /// HotStandbyJob only: the worker's command, split like --exec-command.
    #[arg(long, value_name = "COMMAND")]
    pub command: Option<String>,
    /// HotStandbyJob only: the scale-down delay in seconds (default 30).
    #[arg(long, value_name = "SECONDS")]
    pub scale_down_delay: Option<i32>,
    /// HotStandbyJob only: ttlSecondsAfterFinished of its Jobs (default 60).
    #[arg(long, value_name = "SECONDS")]
    pub ttl_after_finished: Option<i32>,
    #[command(flatten)]
    pub writes: WriteArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProbeArg {
    Annotation,
    Http,
    Exec,
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The pod (of a HotStandbyDeployment or a HotStandbyJob).
    pub pod: String,
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Wait until the rollout has finished, like `kubectl rollout status`: new pods up and
    /// available, and no pod of an earlier template left (busy ones leave when their work ends).
    Status {
        #[arg(add = complete::hsd_names())]
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
    #[arg(add = complete::pod_names())]
    pub pods: Vec<String>,
    #[command(flatten)]
    pub writes: WriteArgs,
}

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Keep running: react to every pod, Deployment and HSD change (leader-elected).
    #[arg(long)]
    pub watch: bool,
    #[command(flatten)]
    pub writes: WriteArgs,
    /// Reconcile even while a watcher holds the lease (one-shot pass only).
    #[arg(long)]
    pub force: bool,
    /// With --watch: where to serve /metrics, /healthz and /readyz ("off" to disable). Default:
    /// 0.0.0.0:8080 in a pod, else 127.0.0.1:8080 (a free loopback port if that one is taken).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,
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
    /// Exec probes in flight at once, per HSD or HSJ (each is a request to the API server).
    #[arg(long, default_value_t = crate::observe::probe::DEFAULT_EXEC_CONCURRENCY)]
    pub exec_probe_concurrency: usize,
    /// One-shot pass: end within this. Probes stop 15s before it (unprobed pods count as busy
    /// and their HSD keeps its replicas); writes still running at it fail with a timeout.
    #[arg(long, default_value = "50s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub deadline: std::time::Duration,
}

/// Which kind a command argument names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Hsd,
    Hsj,
    /// An active-standby Service (`svc`, `service`, `services`).
    Service,
}

impl Kind {
    /// The words that name the kind: its short name, singular, plural and `plural.group`, all
    /// from the derive.
    fn words(self) -> Vec<String> {
        use kube::{CustomResourceExt, Resource};
        fn of<K: CustomResourceExt + Resource<DynamicType = ()>>() -> Vec<String> {
            let mut words: Vec<String> = K::shortnames().iter().map(|s| s.to_string()).collect();
            words.push(K::kind(&()).to_lowercase());
            words.push(K::plural(&()).to_string());
            words.push(K::crd_name().to_string());
            words.push(format!("{}.{}", K::kind(&()).to_lowercase(), K::group(&())));
            words
        }
        match self {
            Kind::Hsd => of::<crate::api::HotStandbyDeployment>(),
            Kind::Hsj => of::<crate::api::HotStandbyJob>(),
            Kind::Service => Vec::new(),
        }
    }

    fn named_by(word: &str) -> Option<Kind> {
        if services::is_service_type(word) {
            return Some(Kind::Service);
        }
        let word = word.to_ascii_lowercase();
        [Kind::Hsd, Kind::Hsj]
            .into_iter()
            .find(|kind| kind.words().contains(&word))
    }
}

/// Reads `NAME` (a HotStandbyDeployment), `KIND/NAME` (`hsj/NAME`, `hotstandbyjob/NAME`, ...)
/// or, with `kind_alone`, a bare kind (`hsj`): `(kind, name)`.
pub fn parse_object_ref(arg: &str, kind_alone: bool) -> crate::Result<(Kind, Option<String>)> {
    if let Some((kind, name)) = arg.split_once('/') {
        let kind = Kind::named_by(kind).ok_or_else(|| {
            crate::Error::Invalid(format!(
                "unknown kind {kind:?} in {arg:?}: use hsd/NAME, hsj/NAME or svc/NAME"
            ))
        })?;
        if name.is_empty() {
            return if kind_alone {
                Ok((kind, None))
            } else {
                Err(crate::Error::Invalid(format!("{arg:?} names no object")))
            };
        }
        return Ok((kind, Some(name.to_string())));
    }
    if kind_alone && let Some(kind) = Kind::named_by(arg) {
        return Ok((kind, None));
    }
    Ok((Kind::Hsd, Some(arg.to_string())))
}

/// `get`'s arguments: none (HSDs), `NAME`, `TYPE`, `TYPE/NAME` or `TYPE NAME`.
fn parse_get(args: &[String]) -> crate::Result<(Kind, Option<String>)> {
    match args {
        [] => Ok((Kind::Hsd, None)),
        [one] => parse_object_ref(one, true),
        [kind, name] => match Kind::named_by(kind) {
            Some(kind) => Ok((kind, Some(name.clone()))),
            None => Err(crate::Error::Invalid(format!(
                "the server doesn't have a resource type {kind:?} here: use hsd, hsj or svc"
            ))),
        },
        _ => Err(crate::Error::Invalid(
            "get takes at most a type and a name".into(),
        )),
    }
}

/// Runs a parsed command. Returns the process exit code.
pub async fn run(cli: Cli) -> crate::Result<i32> {
    let global = cli.global;
    let field_manager = match &cli.command {
        Command::Install(args) => args.writes.field_manager.clone(),
        Command::Uninstall(args) => args.writes.field_manager.clone(),
        Command::Create(args) => args.writes.field_manager.clone(),
        Command::MarkBusy(args) | Command::MarkIdle(args) => args.writes.field_manager.clone(),
        Command::Reconcile(args) => args.writes.field_manager.clone(),
        _ => None,
    };
    crate::client::set_process_defaults(crate::client::ProcessDefaults {
        request_timeout: Some(global.request_timeout),
        field_manager,
    });
    match cli.command {
        Command::Crd => {
            print!("{}", crate::manifests::crds_yaml());
            Ok(0)
        }
        Command::Version => {
            println!("kubectl-hsd v{}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        Command::Completion { shell } => {
            print!("{}", complete::script(shell));
            Ok(0)
        }
        Command::Install(args) => install::install(&global, args).await,
        Command::Uninstall(args) => uninstall::uninstall(&global, args).await,
        Command::Create(args) => create::create(&global, args).await,
        Command::Get { args } => match parse_get(&args)? {
            (Kind::Hsd, name) => get::get(&global, name).await,
            (Kind::Hsj, name) => get::get_hsj(&global, name).await,
            (Kind::Service, name) => services::get(&global, name.as_deref()).await,
        },
        Command::Describe { name } => match parse_object_ref(&name, false)? {
            (Kind::Hsd, Some(name)) => describe::describe(&global, &name).await,
            (Kind::Hsj, Some(name)) => describe::describe_hsj(&global, &name).await,
            (Kind::Service, _) => Err(crate::Error::Invalid(
                "describe takes an HSD or hsj/NAME; for a Service: kubectl hsd explain svc/NAME"
                    .into(),
            )),
            (_, None) => Err(crate::Error::Invalid("describe needs a name".into())),
        },
        Command::Explain { name } => match parse_object_ref(&name, false)? {
            (Kind::Hsd, Some(name)) => explain::explain(&global, &name).await,
            (Kind::Hsj, Some(name)) => explain::explain_hsj(&global, &name).await,
            (Kind::Service, Some(name)) => services::explain(&global, &name).await,
            (_, None) => Err(crate::Error::Invalid("explain needs a name".into())),
        },
        Command::MarkBusy(args) => mark::mark(&global, args, true).await,
        Command::MarkIdle(args) => mark::mark(&global, args, false).await,
        Command::Probe(args) => probe::probe(&global, &args.pod).await,
        Command::Reconcile(args) => reconcile::reconcile(&global, args).await,
        Command::Rollout { command } => rollout::rollout(&global, command).await,
        Command::Proxy(args) => proxy::proxy(&global, args).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_reads_types_and_names_like_kubectl() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let name = |n: &str| Some(n.to_string());
        type Parsed = Result<(Kind, Option<String>), ()>;
        let cases: Vec<(Vec<String>, Parsed)> = vec![
            (args(&[]), Ok((Kind::Hsd, None))),
            (args(&["game-ws"]), Ok((Kind::Hsd, name("game-ws")))),
            (args(&["svc"]), Ok((Kind::Service, None))),
            (args(&["services"]), Ok((Kind::Service, None))),
            (args(&["svc", "db"]), Ok((Kind::Service, name("db")))),
            (args(&["svc/db"]), Ok((Kind::Service, name("db")))),
            (args(&["hsd"]), Ok((Kind::Hsd, None))),
            (args(&["hsd", "svc"]), Ok((Kind::Hsd, name("svc")))),
            (args(&["hsd/game-ws"]), Ok((Kind::Hsd, name("game-ws")))),
            (args(&["hsj"]), Ok((Kind::Hsj, None))),
            (args(&["hsj", "runner"]), Ok((Kind::Hsj, name("runner")))),
            (args(&["hsj/runner"]), Ok((Kind::Hsj, name("runner")))),
            (args(&["pods", "x"]), Err(())),
            (args(&["pod/x"]), Err(())),
        ];
        for (input, want) in cases {
            assert_eq!(parse_get(&input).map_err(|_| ()), want, "{input:?}");
        }
    }
}
