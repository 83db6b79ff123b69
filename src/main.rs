//! The `kubectl-hsd` binary: parse, set up TLS and logging, dispatch, map errors to exit codes.

use clap::Parser;
use kubectl_hsd::cli::{Cli, LogFormat};
use tracing_subscriber::EnvFilter;

fn init_logging(verbosity: u8, format: LogFormat) {
    let level = match verbosity {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("HSD_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("kubectl_hsd={level},kube={level},warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_target(false).init(),
    }
}

fn main() {
    // clap exits 2 on usage errors and 0 for --help/--version.
    let cli = Cli::parse();
    init_logging(cli.global.verbosity, cli.global.log_format);
    kubectl_hsd::client::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            std::process::exit(1);
        }
    };
    let code = match runtime.block_on(kubectl_hsd::cli::run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            1
        }
    };
    std::process::exit(code);
}
