//! Everything a command says on stderr, and the logging set-up behind it.
//!
//! Notices (start-up and shutdown lines, progress, per-item errors, the final `error: ...`) go
//! through tracing under [`TARGET`], shown at every verbosity: with `--log-format text` each is
//! the bare line (`error: `/`warning: ` prefixed by level), with `--log-format json` a JSON
//! object like every other log line. So in JSON mode every stderr line is JSON; in text mode the
//! lines read as before (tests and scripts parse some of them, e.g. `serving /metrics ...`).

use std::io::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterExt, filter_fn};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// The tracing target of notices.
pub const TARGET: &str = "kubectl_hsd::notice";

/// A line for the person running the command, on stderr at every verbosity (INFO level).
#[macro_export]
macro_rules! notice {
    ($($arg:tt)+) => { ::tracing::info!(target: $crate::notice::TARGET, $($arg)+) };
}

/// A warning for the person running the command (`warning: ...` in text mode).
#[macro_export]
macro_rules! notice_warn {
    ($($arg:tt)+) => { ::tracing::warn!(target: $crate::notice::TARGET, $($arg)+) };
}

/// An error line (`error: ...` in text mode).
#[macro_export]
macro_rules! notice_error {
    ($($arg:tt)+) => { ::tracing::error!(target: $crate::notice::TARGET, $($arg)+) };
}

/// The log format on stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The filter of `-v LEVEL`, kubectl's scale: 0 warnings, 1-3 info, 4-5 debug, 6-7 also one
/// line per API request, 8 trace, 9 trace of every library.
pub fn verbosity_filter(verbosity: u8) -> String {
    // kube_client logs every failed request at ERROR, which the command reports itself (once,
    // worded): it speaks from -v 4 on.
    let http = crate::client::HTTP_LOG_TARGET;
    match verbosity {
        0 => "kubectl_hsd=warn,kube_client=off,kube=warn,warn".into(),
        1..=3 => "kubectl_hsd=info,kube_client=off,kube=warn,warn".into(),
        4..=5 => format!("kubectl_hsd=debug,{http}=info,kube=info,warn"),
        6..=7 => "kubectl_hsd=debug,kube=info,warn".into(),
        8 => "kubectl_hsd=trace,kube=trace,info".into(),
        _ => "trace".into(),
    }
}

/// Sets up logging on stderr: `HSD_LOG` (an `EnvFilter` directive) or `-v`, and the format.
/// Notices pass whatever the filter says.
pub fn init(verbosity: u8, format: LogFormat) {
    let filter = || {
        EnvFilter::try_from_env("HSD_LOG")
            .unwrap_or_else(|_| EnvFilter::new(verbosity_filter(verbosity)))
    };
    let is_notice = || filter_fn(|metadata| metadata.target() == TARGET);
    match format {
        LogFormat::Json => {
            let logs = tracing_subscriber::fmt::layer()
                .json()
                .with_writer(std::io::stderr)
                .with_filter(is_notice().or(filter()));
            let _ = tracing_subscriber::registry().with(logs).try_init();
            // A panic is a line of its own too.
            std::panic::set_hook(Box::new(|info| {
                tracing::error!(target: TARGET, "panic: {info}");
            }));
        }
        LogFormat::Text => {
            let logs = tracing_subscriber::fmt::layer()
                .with_target(false)
                .with_writer(std::io::stderr)
                .with_filter(is_notice().not().and(filter()));
            let notices = PlainNotices.with_filter(is_notice());
            let _ = tracing_subscriber::registry()
                .with(logs)
                .with(notices)
                .try_init();
        }
    }
}

/// Writes a notice as its bare message.
struct PlainNotices;

impl<S: Subscriber> Layer<S> for PlainNotices {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut message = MessageText(String::new());
        event.record(&mut message);
        let prefix = match *event.metadata().level() {
            Level::ERROR => "error: ",
            Level::WARN => "warning: ",
            _ => "",
        };
        let mut stderr = std::io::stderr().lock();
        let _ = writeln!(stderr, "{prefix}{}", message.0);
    }
}

struct MessageText(String);

impl Visit for MessageText {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_string();
        }
    }
}

/// A usage error from clap as one JSON line, for `--log-format json` (clap prints text).
pub fn usage_error_json(message: &str) -> String {
    serde_json::json!({
        "timestamp": jiff::Timestamp::now().to_string(),
        "level": "ERROR",
        "fields": {"message": message.trim()},
        "target": TARGET,
    })
    .to_string()
}
