//! `kubectl_complete-hsd`: what kubectl runs to complete `kubectl hsd ...` (kubectl's plugin
//! completion convention, kubectl 1.26+). It only hands over to `kubectl-hsd __complete`, found
//! beside this executable (a krew or `cargo install` directory) or else on PATH, so it stays a
//! few hundred kilobytes of std: the command tree and the cluster access live in one binary.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let plugin = sibling().unwrap_or_else(|| PathBuf::from("kubectl-hsd"));
    let mut command = Command::new(plugin);
    command.arg("__complete").args(&args);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let error = command.exec();
        eprintln!("kubectl_complete-hsd: cannot run kubectl-hsd: {error}");
        std::process::exit(1);
    }
    #[cfg(not(unix))]
    {
        match command.status() {
            Ok(status) => std::process::exit(status.code().unwrap_or(1)),
            Err(error) => {
                eprintln!("kubectl_complete-hsd: cannot run kubectl-hsd: {error}");
                std::process::exit(1);
            }
        }
    }
}

/// `kubectl-hsd` in the directory of this executable (symlinks resolved, as krew links it).
fn sibling() -> Option<PathBuf> {
    let me = std::env::current_exe().ok()?;
    let me = std::fs::canonicalize(&me).unwrap_or(me);
    let name = if cfg!(windows) {
        "kubectl-hsd.exe"
    } else {
        "kubectl-hsd"
    };
    let candidate = me.parent()?.join(name);
    candidate.is_file().then_some(candidate)
}
