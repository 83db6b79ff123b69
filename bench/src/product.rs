//! The product under test: the release binary `target/release/kubectl-hsd`, spawned for every
//! measured pass and watcher, so that time, memory and API requests are its own.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::{Context, Res};

#[derive(Clone)]
pub struct Product {
    pub binary: PathBuf,
    pub kubeconfig: PathBuf,
    pub work_dir: PathBuf,
}

/// The `--stats` line of a one-shot pass.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub hsds: u64,
    pub probed: u64,
    pub requests: u64,
    pub reads: u64,
    pub writes: u64,
    pub seconds: f64,
}

impl Stats {
    /// `stats: N HSDs, P pods probed, R API requests (X reads, W writes), S.SSSs`
    pub fn parse(stderr: &str) -> Option<Self> {
        let line = stderr.lines().rev().find(|l| l.starts_with("stats: "))?;
        let numbers: Vec<f64> = line
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|s| !s.is_empty() && *s != ".")
            .filter_map(|s| s.parse().ok())
            .collect();
        let [hsds, probed, requests, reads, writes, seconds] = numbers[..] else {
            return None;
        };
        Some(Self {
            hsds: hsds as u64,
            probed: probed as u64,
            requests: requests as u64,
            reads: reads as u64,
            writes: writes as u64,
            seconds,
        })
    }
}

/// One run of a one-shot pass.
#[derive(Debug)]
pub struct PassRun {
    /// Wall time of the process, start to exit.
    pub wall: Duration,
    pub stats: Stats,
    /// Peak RSS from `/usr/bin/time -v` (kB).
    pub peak_rss_kb: u64,
    /// User + system CPU seconds of the process (`/usr/bin/time -v`).
    pub cpu_seconds: f64,
}

impl Product {
    pub fn new(kubeconfig: &Path, work_dir: &Path) -> Res<Self> {
        // HSD_BENCH_BINARY: another build of the same binary, e.g. one with symbols to profile.
        let binary = std::env::var_os("HSD_BENCH_BINARY")
            .map(PathBuf::from)
            // hack/bench.sh builds it beside this benchmark: target/release/kubectl-hsd.
            .or_else(|| {
                let exe = std::env::current_exe().ok()?;
                Some(exe.parent()?.join("kubectl-hsd"))
            })
            .ok_or("the benchmark's own path")?;
        if !binary.is_file() {
            return Err(format!(
                "{} is missing: run hack/bench.sh (it builds it)",
                binary.display()
            ));
        }
        if !Path::new("/usr/bin/time").is_file() {
            return Err(
                "/usr/bin/time is missing (apt-get install time; hack/bench.sh does)".into(),
            );
        }
        Ok(Self {
            binary,
            kubeconfig: kubeconfig.to_path_buf(),
            work_dir: work_dir.to_path_buf(),
        })
    }

    pub fn command(&self, program: &Path) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(program);
        command
            .env("KUBECONFIG", &self.kubeconfig)
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .env_remove("HSD_LOG")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        // For a diagnosis only: the product's log filter (its logs go to the work dir's files).
        if let Ok(filter) = std::env::var("HSD_BENCH_PRODUCT_LOG") {
            command.env("HSD_LOG", filter);
        }
        command
    }

    /// Runs the binary to completion (not measured); fails on a non-zero exit.
    pub async fn run(&self, args: &[&str], timeout: Duration) -> Res<String> {
        let child = self
            .command(&self.binary)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .ctx("spawning kubectl-hsd")?;
        let output = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .map_err(|_| format!("kubectl-hsd {} took more than {timeout:?}", args.join(" ")))?
            .ctx("waiting for kubectl-hsd")?;
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if !output.status.success() {
            return Err(format!(
                "kubectl-hsd {} failed ({}):\n{}",
                args.join(" "),
                output.status,
                tail(&stderr, 20)
            ));
        }
        Ok(stderr)
    }

    /// A one-shot pass with `--stats` under `/usr/bin/time -v`: wall time, stats, peak RSS.
    pub async fn measured_pass(&self, args: &[&str], timeout: Duration) -> Res<PassRun> {
        let time_file = self
            .work_dir
            .join(format!("time-{}.txt", std::process::id()));
        let started = Instant::now();
        let child = self
            .command(Path::new("/usr/bin/time"))
            .arg("-v")
            .arg("-o")
            .arg(&time_file)
            .arg(&self.binary)
            .args(["reconcile", "--stats"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .ctx("spawning /usr/bin/time kubectl-hsd")?;
        let output = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .map_err(|_| format!("a pass took more than {timeout:?}"))?
            .ctx("waiting for the pass")?;
        let wall = started.elapsed();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if !output.status.success() {
            return Err(format!(
                "kubectl-hsd reconcile --stats {} failed ({}):\n{}",
                args.join(" "),
                output.status,
                tail(&stderr, 20)
            ));
        }
        let stats = Stats::parse(&stderr)
            .ok_or_else(|| format!("no stats line in the pass's stderr:\n{}", tail(&stderr, 20)))?;
        let time = std::fs::read_to_string(&time_file).ctx("reading /usr/bin/time's output")?;
        let _ = std::fs::remove_file(&time_file);
        let peak_rss_kb = time
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("Maximum resident set size (kbytes): ")
            })
            .and_then(|v| v.trim().parse().ok())
            .ok_or("no peak RSS in /usr/bin/time's output")?;
        let seconds = |label: &str| -> f64 {
            time.lines()
                .find_map(|l| l.trim().strip_prefix(label))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0.0)
        };
        let cpu_seconds = seconds("User time (seconds): ") + seconds("System time (seconds): ");
        Ok(PassRun {
            wall,
            stats,
            peak_rss_kb,
            cpu_seconds,
        })
    }

    /// Starts `reconcile --watch -A --leader-elect=false` (one watcher, alone) and waits until it
    /// serves /metrics.
    pub async fn start_watcher(&self, name: &str) -> Res<Watcher> {
        self.start_watcher_with(name, &["--leader-elect=false"])
            .await
    }

    /// Starts `reconcile --watch -A` with `extra` arguments and waits until it serves /metrics.
    /// The watcher's `spawned` is taken just before the process is spawned.
    pub async fn start_watcher_with(&self, name: &str, extra: &[&str]) -> Res<Watcher> {
        let log = self.work_dir.join(format!("watch-{name}.log"));
        let file = std::fs::File::create(&log).ctx(format!("creating {}", log.display()))?;
        let spawned = Instant::now();
        let child = self
            .command(&self.binary)
            .args([
                "reconcile",
                "--watch",
                "-A",
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .ctx("spawning kubectl-hsd reconcile --watch")?;
        let pid = child.id().ok_or("the watcher exited at once")?;
        let identity = extra
            .iter()
            .position(|a| *a == "--identity")
            .and_then(|i| extra.get(i + 1))
            .map(|s| s.to_string());
        let mut watcher = Watcher {
            child,
            pid,
            addr: String::new(),
            log,
            spawned,
            identity,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = watcher.log_text();
            if let Some(addr) = text
                .lines()
                .find_map(|l| l.strip_prefix("serving /metrics, /healthz and /readyz on "))
            {
                watcher.addr = addr.trim().to_string();
                return Ok(watcher);
            }
            if let Ok(Some(status)) = watcher.child.try_wait() {
                return Err(format!(
                    "the watcher exited ({status}):\n{}",
                    tail(&text, 20)
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the watcher did not serve /metrics within 30s:\n{}",
                    tail(&text, 20)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A running `reconcile --watch`; killed when dropped.
pub struct Watcher {
    child: tokio::process::Child,
    pub pid: u32,
    pub addr: String,
    log: PathBuf,
    /// Just before the process was spawned.
    pub spawned: Instant,
    /// Its `--identity`, if it was given one.
    pub identity: Option<String>,
}

impl Watcher {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn alive(&mut self) -> Res<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "the watcher exited ({status}):\n{}",
                tail(&self.log_text(), 20)
            )),
            Err(e) => Err(format!("the watcher: {e}")),
        }
    }

    pub async fn get(&self, path: &str) -> Res<(u16, String)> {
        http_get(&self.addr, path).await
    }

    /// HSDs the watcher has reconciled at least once: one `hsd_desired_replicas` series each.
    pub async fn reconciled_hsds(&self) -> Res<usize> {
        let (_, text) = self.get("/metrics").await?;
        Ok(count_series(&text, "hsd_desired_replicas"))
    }

    /// The sum of a metric's samples (all its series), 0 when it has none.
    pub async fn metric_sum(&self, name: &str) -> Res<f64> {
        let (_, text) = self.get("/metrics").await?;
        Ok(metric_sum(&text, name))
    }

    /// (VmRSS, VmHWM) in kB from /proc.
    pub fn memory_kb(&self) -> Res<(u64, u64)> {
        proc_memory_kb(self.pid)
    }

    /// RssAnon in kB (see [`proc_anon_kb`]).
    pub fn anon_kb(&self) -> Res<u64> {
        proc_anon_kb(self.pid)
    }

    /// User + system CPU seconds so far (/proc/<pid>/stat, 100 ticks a second).
    pub fn cpu_seconds(&self) -> Res<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .ctx("reading the watcher's /proc stat")?;
        let fields: Vec<&str> = stat
            .rsplit_once(") ")
            .map(|(_, rest)| rest.split(' ').collect())
            .unwrap_or_default();
        // After the command: state is field 3, utime 14 and stime 15 (1-based).
        let tick = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<f64>().ok());
        match (tick(14), tick(15)) {
            (Some(user), Some(system)) => Ok((user + system) / 100.0),
            _ => Err("unreadable /proc stat".into()),
        }
    }

    /// SIGKILL, at once (a crash: no lease is released).
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Waits until the watcher answers /readyz and has reconciled `hsds` HSDs; returns the seconds
/// that took.
pub async fn wait_all_decided(watcher: &mut Watcher, hsds: usize, timeout: Duration) -> Res<f64> {
    let started = Instant::now();
    let mut progress = crate::util::Progress::new("watcher reconciled HSDs", hsds as u64);
    loop {
        watcher.alive()?;
        let ready = matches!(watcher.get("/readyz").await, Ok((200, _)));
        let reconciled = if ready {
            watcher.reconciled_hsds().await?
        } else {
            0
        };
        progress.set(reconciled as u64);
        if ready && reconciled >= hsds {
            progress.finish(reconciled as u64);
            return Ok(started.elapsed().as_secs_f64());
        }
        if started.elapsed() > timeout {
            progress.finish(reconciled as u64);
            return Err(format!(
                "the watcher reconciled {reconciled} of {hsds} HSDs within {timeout:?} (ready: {ready}):\n{}",
                tail(&watcher.log_text(), 10)
            ));
        }
        // /metrics has a handful of series per HSD: poll it gently on big sets.
        let every = if hsds > 100 { 1000 } else { 200 };
        tokio::time::sleep(Duration::from_millis(every)).await;
    }
}

/// Series of a metric in the text exposition format.
pub fn count_series(text: &str, name: &str) -> usize {
    let prefix = format!("{name}{{");
    text.lines().filter(|l| l.starts_with(&prefix)).count()
}

/// The sum of a metric's samples (with or without labels) in the text exposition format.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Fields of /proc/<pid>/status in kB (`"VmRSS:"`, ...), read at one moment.
fn proc_status_kb<const N: usize>(pid: u32, names: [&str; N]) -> Res<[u64; N]> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ctx(format!("reading /proc/{pid}/status"))?;
    let mut values = [0; N];
    for (value, name) in values.iter_mut().zip(names) {
        *value = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| format!("no {name} in /proc/{pid}/status"))?;
    }
    Ok(values)
}

/// RssAnon in kB from /proc: the private heap and stacks, without the binary's mapped pages.
pub fn proc_anon_kb(pid: u32) -> Res<u64> {
    proc_status_kb(pid, ["RssAnon:"]).map(|[anon]| anon)
}

/// (VmRSS, VmHWM) in kB from /proc.
pub fn proc_memory_kb(pid: u32) -> Res<(u64, u64)> {
    proc_status_kb(pid, ["VmRSS:", "VmHWM:"]).map(|[rss, hwm]| (rss, hwm))
}

/// A plain HTTP/1.1 GET to a loopback address: (status, body).
pub async fn http_get(authority: &str, path: &str) -> Res<(u16, String)> {
    let addr: std::net::SocketAddr = authority.parse().ctx(format!("address {authority}"))?;
    if !addr.ip().is_loopback() {
        return Err(format!("{addr} is not a loopback address"));
    }
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| format!("GET {authority}{path} timed out"))?
        .ctx(format!("GET {authority}{path}"))?;
    let response = String::from_utf8_lossy(&response);
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("GET {authority}{path}: no status line"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    /// Reads this test process's own /proc status: every field is there and plausible.
    #[test]
    fn proc_status_fields_are_read() {
        let pid = std::process::id();
        let (rss, hwm) = super::proc_memory_kb(pid).unwrap();
        let anon = super::proc_anon_kb(pid).unwrap();
        assert!(
            rss > 0 && hwm >= rss && anon > 0 && anon <= rss,
            "{rss} {hwm} {anon}"
        );
        assert!(super::proc_status_kb(pid, ["NoSuchField:"]).is_err());
    }
}
