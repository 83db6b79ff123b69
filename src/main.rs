//! The `kubectl-hsd` binary: parse, set up TLS and logging, dispatch, map errors to exit codes.

use clap::Parser;
use kubectl_hsd::cli::Cli;

fn main() {
    // A completion script calling back (`kubectl-hsd completion SHELL`): answer and exit.
    kubectl_hsd::cli::complete::complete_from_env();
    // kubectl's plugin completion, through `kubectl_complete-hsd`: `kubectl-hsd __complete ARGS`.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(kubectl_hsd::cli::complete::COBRA_COMMAND) {
        std::process::exit(kubectl_hsd::cli::complete::cobra(&args[2..]));
    }
    // Usage errors exit 2, --help and --version 0 (clap's codes); with --log-format json the
    // usage error is a JSON line too.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            if error.use_stderr() && json_requested() {
                eprintln!(
                    "{}",
                    kubectl_hsd::notice::usage_error_json(&error.render().to_string())
                );
                std::process::exit(error.exit_code());
            }
            error.exit();
        }
    };
    kubectl_hsd::notice::init(cli.global.verbosity, cli.global.log_format);
    kubectl_hsd::client::install_crypto_provider();
    // The proxy keeps glibc's per-thread arenas: its connections allocate on every worker at
    // once, where one arena's lock would be contended.
    if !matches!(cli.command, kubectl_hsd::cli::Command::Proxy(_)) {
        kubectl_hsd::client::limit_malloc_arenas();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            kubectl_hsd::notice_error!("cannot start the async runtime: {error}");
            std::process::exit(1);
        }
    };
    let code = match runtime.block_on(kubectl_hsd::cli::run(cli)) {
        Ok(code) => code,
        Err(error) => {
            kubectl_hsd::notice_error!("{error}");
            1
        }
    };
    std::process::exit(code);
}

/// Whether the command line asks for JSON logs (read before clap could parse it).
fn json_requested() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .any(|w| w[0] == "--log-format" && w[1] == "json")
        || args.iter().any(|a| a == "--log-format=json")
}
