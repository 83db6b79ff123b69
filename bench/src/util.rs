//! Small helpers shared by the benchmark modules: errors with context, progress output,
//! percentiles, bounded polling.

use std::future::Future;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// The benchmark's error: a message that says what failed and what to look at.
pub type Res<T> = Result<T, String>;

pub trait Context<T> {
    fn ctx(self, what: impl std::fmt::Display) -> Res<T>;
}

impl<T, E: std::fmt::Display> Context<T> for Result<T, E> {
    fn ctx(self, what: impl std::fmt::Display) -> Res<T> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

/// One line on stderr, prefixed so that it stands out from the cluster's and cargo's output.
pub fn say(message: impl std::fmt::Display) {
    eprintln!("bench: {message}");
}

/// A progress display: an indicatif bar on a terminal, plain lines (at most one every 5 s)
/// otherwise.
pub struct Progress {
    bar: Option<ProgressBar>,
    what: String,
    total: u64,
    last_line: Instant,
    started: Instant,
}

impl Progress {
    pub fn new(what: &str, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "bench: {msg:28} [{bar:32}] {pos:>6}/{len:6} {per_sec:>10} {elapsed_precise}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.set_message(what.to_string());
            bar
        });
        if bar.is_none() {
            say(format!("{what}: 0/{total}"));
        }
        Self {
            bar,
            what: what.to_string(),
            total,
            last_line: Instant::now(),
            started: Instant::now(),
        }
    }

    pub fn set(&mut self, position: u64) {
        match &self.bar {
            Some(bar) => bar.set_position(position),
            None if self.last_line.elapsed() >= Duration::from_secs(5) => {
                self.last_line = Instant::now();
                say(format!(
                    "{}: {position}/{} ({:.0}s)",
                    self.what,
                    self.total,
                    self.started.elapsed().as_secs_f64()
                ));
            }
            None => {}
        }
    }

    pub fn finish(self, position: u64) {
        let line = format!(
            "{}: {position}/{} in {:.1}s",
            self.what,
            self.total,
            self.started.elapsed().as_secs_f64()
        );
        if let Some(bar) = &self.bar {
            bar.set_position(position);
            bar.finish_and_clear();
        }
        say(line);
    }
}

/// Polls `check` every `every` until it returns `Some`, or fails after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> Res<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Res<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if Instant::now() > deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        tokio::time::sleep(every).await;
    }
}

/// The p-th percentile (0..=100) of the samples, nearest rank.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn median(samples: &[f64]) -> f64 {
    percentile(samples, 50.0)
}

/// Rounds to `digits` decimals (for the JSON).
pub fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

/// The load average (1, 5 and 15 minutes), as /proc/loadavg has it.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split(' ')
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}
