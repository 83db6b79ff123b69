//! `kubectl hsd proxy`: a wake-on-connect TCP proxy in front of a Deployment, compatible with the
//! Zero Pod Autoscaler (same flags, same `zero-pod-autoscaler/scale-down-at` annotation). It
//! scales the Deployment to zero after `--ttl` without connections, and back up when a connection
//! arrives, holding that connection until the app answers.
//!
//! - `forward`: accept, hold, dial and copy bytes (the data path; no API request once awake);
//! - `route`: where a connection goes (ZPA mode: `--target`) and the allow-listed dial;
//! - `readiness`: whether the app is ready (EndpointSlices, or Endpoints as a fallback);
//! - `scale` and `deadline`: the Deployment's state, and the wake/extend/sleep decisions shared
//!   between proxy replicas through the annotation;
//! - `metrics`: `/metrics`, `/healthz`, `/readyz`; `manifest`: `--zpa-manifest`.

pub mod allow;
pub mod args;
pub mod deadline;
mod forward;
pub mod hsd;
mod hsd_scale;
pub mod manifest;
pub mod metrics;
pub mod readiness;
pub mod route;
pub mod scale;

use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::SignedDuration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use args::{ProxyArgs, ProxyConfig};

use crate::client::RequestStats;
use crate::error::{Error, Result, kube_error};
use metrics::ProxyMetrics;
use readiness::Readiness;
use route::{Dialer, Route};
use scale::{Activity, ScaleView, Scaler};

/// Logs the failures of a background loop without flooding: the first one, then at most one
/// every 30 s, and a line when it works again.
pub(crate) struct ErrorLog {
    what: &'static str,
    last_logged: Option<Instant>,
    suppressed: u64,
}

impl ErrorLog {
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            last_logged: None,
            suppressed: 0,
        }
    }

    pub fn failed(&mut self, error: &dyn std::fmt::Display) {
        if self
            .last_logged
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(30))
        {
            tracing::warn!(%error, repeated = self.suppressed, "{} failed", self.what);
            self.last_logged = Some(Instant::now());
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
            tracing::debug!(%error, "{} failed", self.what);
        }
    }

    pub fn recovered(&mut self) {
        if self.last_logged.take().is_some() {
            tracing::info!("{}: working again", self.what);
        }
        self.suppressed = 0;
    }
}

/// Re-watch backoff: short, so that the caches are back within seconds of an API server's
/// return (the default grows to 30 s during an outage, which would delay waking the app after it).
pub(crate) fn watch_backoff() -> kube::runtime::watcher::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(3))
        .with_jitter()
        .without_max_times()
        .into()
}

/// The Deployment to scale: `--deployment`, or the one Deployment `-l` selects.
async fn find_deployment(
    api: &Api<Deployment>,
    config: &ProxyConfig,
    namespace: &str,
) -> Result<String> {
    if let (Some(name), None) = (&config.deployment, &config.selector) {
        return match api.get_opt(name).await.map_err(kube_error(
            "reading the Deployment",
            "get",
            "deployments.apps",
            Some(namespace),
        ))? {
            Some(_) => Ok(name.clone()),
            None => Err(Error::NotFound {
                what: format!("Deployment {namespace}/{name}"),
            }),
        };
    }
    let mut params = ListParams::default();
    if let Some(selector) = &config.selector {
        params = params.labels(selector);
    }
    if let Some(name) = &config.deployment {
        params = params.fields(&format!("metadata.name={name}"));
    }
    let found = api.list_metadata(&params).await.map_err(kube_error(
        "listing Deployments",
        "list",
        "deployments.apps",
        Some(namespace),
    ))?;
    let names: Vec<String> = found
        .items
        .into_iter()
        .filter_map(|d| d.metadata.name)
        .collect();
    match names.as_slice() {
        [name] => Ok(name.clone()),
        [] => Err(Error::NotFound {
            what: format!(
                "a Deployment matching {} in namespace {namespace}",
                config.selector.as_deref().unwrap_or_default()
            ),
        }),
        many => Err(Error::Invalid(format!(
            "the selector matches {} Deployments in namespace {namespace} ({}): narrow it or use --deployment",
            many.len(),
            many.join(", ")
        ))),
    }
}

/// Raises the open-file limit to its hard limit, as Go programs (ZPA) do at start: each held or
/// forwarded connection takes one or two descriptors.
fn raise_open_file_limit() {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0
                && limit.rlim_cur < limit.rlim_max
            {
                limit.rlim_cur = limit.rlim_max;
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    tracing::debug!("could not raise the open-file limit");
                }
            }
        }
    }
}

async fn bind(flag: &str, address: &args::ListenAddress) -> Result<tokio::net::TcpListener> {
    let candidates = address
        .resolve()
        .await
        .map_err(|e| Error::Invalid(format!("{flag} {address}: {e}")))?;
    metrics::bind(&candidates)
        .await
        .map_err(|e| Error::Invalid(format!("cannot listen on {address} ({flag}): {e}")))
}

/// What a mode starts: the route, and what to tell the user it serves.
struct Mode {
    route: Route,
    serves: String,
}

/// Runs the proxy until `shutdown`, then stops accepting and drains open connections for up to
/// `--drain-timeout`.
pub async fn run(
    client: Client,
    stats: Arc<RequestStats>,
    namespace: String,
    config: ProxyConfig,
    shutdown: CancellationToken,
) -> Result<()> {
    raise_open_file_limit();
    let metrics = Arc::new(ProxyMetrics::new(stats));
    let (readiness_sender, readiness) = watch::channel(Readiness::default());
    let readiness_sender = Arc::new(readiness_sender);
    let (view_sender, view) = watch::channel(ScaleView::default());
    let activity = Arc::new(Activity::new(metrics.clone()));
    // The background tasks outlive `shutdown`: held connections still need wakes and readiness
    // while draining.
    let stop = CancellationToken::new();

    // Reads first, so that a missing object fails before anything listens.
    let hsd_target = match &config.hsd {
        Some(name) => Some(hsd::resolve(&client, &namespace, name, config.port).await?),
        None => None,
    };
    // HSD mode's caches: the HSD, its child and its pods, filled by the watches below; a wake
    // plans from them.
    let (hsd_caches, hsd_cache_writers) = hsd_scale::caches();
    let (mode, scaler_target, ttl, scaled_name) = match &hsd_target {
        Some(target) => (
            Mode {
                route: Route::Hsd(hsd::HsdRoute::new(
                    target.clone(),
                    config.when_all_busy,
                    readiness_sender.clone(),
                    metrics.clone(),
                )),
                serves: match target.sleep_after {
                    Some(after) => format!(
                        "HotStandbyDeployment {namespace}/{} (idle-only routing, --when-all-busy={}; sleeps after {})",
                        target.name,
                        config.when_all_busy.flag(),
                        args::format_duration(after)
                    ),
                    None => format!(
                        "HotStandbyDeployment {namespace}/{} (idle-only routing, --when-all-busy={}; no spec.scaleToZero: it never sleeps)",
                        target.name,
                        config.when_all_busy.flag(),
                    ),
                },
            },
            target.sleep_after.map(|_| {
                scale::ScaleTarget::Hsd(hsd_scale::HsdScaleTarget {
                    client: client.clone(),
                    api: Api::namespaced_with(
                        client.clone(),
                        &namespace,
                        &crate::observe::hsd_resource(),
                    ),
                    namespace: namespace.clone(),
                    caches: hsd_caches.clone(),
                })
            }),
            target.sleep_after.unwrap_or(config.ttl),
            target.name.clone(),
        ),
        None => {
            let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
            let name = find_deployment(&deployments, &config, &namespace).await?;
            let endpoints = config.endpoints.clone().unwrap_or_else(|| name.clone());
            let route = Route::target(&config.target).map_err(Error::Invalid)?;
            let serves = format!(
                "Deployment {namespace}/{name} (readiness of {endpoints}, forwarding to {route})"
            );
            tokio::spawn(scale::watch_deployment(
                deployments.clone(),
                name.clone(),
                view_sender.clone(),
                metrics.clone(),
                deadline::guard(config.ttl),
                stop.clone(),
            ));
            tokio::spawn({
                let (client, namespace, sender, metrics, stop) = (
                    client.clone(),
                    namespace.clone(),
                    readiness_sender.clone(),
                    metrics.clone(),
                    stop.clone(),
                );
                async move { readiness::run(client, namespace, endpoints, &sender, metrics, stop).await }
            });
            (
                Mode { route, serves },
                Some(scale::ScaleTarget::Deployment(deployments)),
                config.ttl,
                name,
            )
        }
    };
    let guard = deadline::guard(ttl);
    let listener = bind("--address", &config.address).await?;
    let admin_listener = bind("--admin-address", &config.admin_address).await?;
    let bound = listener.local_addr()?;
    let admin_bound = admin_listener.local_addr()?;
    metrics.set_bound();
    let admin = metrics::serve(admin_listener, metrics.clone(), stop.clone());
    eprintln!("serving /metrics, /healthz and /readyz on {admin_bound}");
    eprintln!("proxy listening on {bound} for {}", mode.serves);

    if let Some(target) = &hsd_target {
        let hsd_scale::HsdCacheWriters { hsd, child, pods } = hsd_cache_writers;
        tokio::spawn(hsd_scale::watch(
            (hsd, child),
            client.clone(),
            namespace.clone(),
            target.name.clone(),
            target.sleep_after.is_some(),
            view_sender.clone(),
            metrics.clone(),
            guard,
            stop.clone(),
        ));
        let pod_api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        let config =
            kube::runtime::watcher::Config::default().labels(&hsd::pod_selector(&target.name));
        let (sender, metrics, stop, busy_key) = (
            readiness_sender.clone(),
            metrics.clone(),
            stop.clone(),
            target.busy_key.clone(),
        );
        tokio::spawn(async move {
            readiness::follow(pod_api, config, pods, &sender, &metrics, &stop, |pods| {
                hsd::readiness_of(pods, &busy_key)
            })
            .await
        });
    }
    if let Some(target) = scaler_target {
        let scaler = Scaler {
            name: scaled_name,
            target,
            timing: deadline::Timing {
                ttl: SignedDuration::try_from(ttl).unwrap_or(SignedDuration::MAX),
                wake_replicas: config.wake_replicas,
            },
            guard,
            activity: activity.clone(),
            sender: view_sender,
            metrics: metrics.clone(),
        };
        tokio::spawn(scaler.run(stop.clone()));
    }
    {
        let (mut view, mut readiness, metrics) = (view.clone(), readiness.clone(), metrics.clone());
        tokio::spawn(async move {
            if view.wait_for(|v| v.synced).await.is_ok()
                && readiness.wait_for(|r| r.synced).await.is_ok()
            {
                metrics.set_synced();
                tracing::info!("caches synced: ready");
            }
        });
    }
    let route = mode.route;

    let shared = Arc::new(forward::Shared {
        dialer: Dialer {
            route,
            allow: config.allow.clone(),
            connect_timeout: config.connect_timeout,
            metrics: metrics.clone(),
        },
        activity: activity.clone(),
        view,
        readiness,
        metrics: metrics.clone(),
        max_wait: config.max_wait,
        max_held: config.max_held,
        turnstile: (hsd_target.is_some() && config.when_all_busy == hsd::WhenAllBusy::Hold)
            .then(|| tokio::sync::Mutex::new(())),
    });
    forward::accept_loop(listener, shared, shutdown).await;

    metrics.set_draining();
    eprintln!(
        "stopped accepting; draining {} open connections for up to {}",
        activity.open_count(),
        args::format_duration(config.drain_timeout)
    );
    let drained = activity
        .wait_idle(tokio::time::Instant::now() + config.drain_timeout)
        .await;
    if drained {
        eprintln!("drained");
    } else {
        eprintln!(
            "drain timeout: closing {} connections",
            activity.open_count()
        );
    }
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), admin).await;
    Ok(())
}
