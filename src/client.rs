//! Client configuration like kubectl's (kubeconfig first, in-cluster as fallback) and a request
//! counter, so that `--stats` reports the API requests a pass really made.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kube::client::ClientBuilder;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::error::{Error, Result};

/// Where the client configuration comes from.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
}

/// Requests made through one client, by kind.
#[derive(Debug, Default)]
pub struct RequestStats {
    reads: AtomicU64,
    writes: AtomicU64,
}

impl RequestStats {
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
    pub fn total(&self) -> u64 {
        self.reads() + self.writes()
    }
    fn record(&self, method: &http::Method) {
        let counter = if method == http::Method::GET || method == http::Method::HEAD {
            &self.reads
        } else {
            &self.writes
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Loads the configuration: `--kubeconfig`, else `KUBECONFIG` (several paths merged) or
/// `~/.kube/config`, else the in-cluster service account.
pub async fn load_config(options: &ClientOptions) -> Result<Config> {
    let kube_options = KubeConfigOptions {
        context: options.context.clone(),
        ..Default::default()
    };
    if let Some(path) = &options.kubeconfig {
        let kubeconfig = Kubeconfig::read_from(path)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        return Config::from_custom_kubeconfig(kubeconfig, &kube_options)
            .await
            .map_err(|e| Error::Config(e.to_string()));
    }
    match Config::from_kubeconfig(&kube_options).await {
        Ok(config) => Ok(config),
        // An explicit context only makes sense with a kubeconfig.
        Err(e) if options.context.is_some() => Err(Error::Config(e.to_string())),
        Err(kubeconfig_error) => Config::incluster().map_err(|in_cluster_error| {
            Error::Config(format!(
                "no kubeconfig ({kubeconfig_error}) and not in a cluster ({in_cluster_error}): pass --kubeconfig or set KUBECONFIG"
            ))
        }),
    }
}

/// Longest wait for the answer to a request that is not a watch.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Bounds every request but watches (which are long by design): a request stuck on a
/// connection that died with an API server restart fails and is retried instead of hanging.
#[derive(Clone)]
pub struct RequestTimeout<S> {
    inner: S,
    timeout: Duration,
    hooks: ClientHooks,
}

impl<S, B> tower::Service<http::Request<kube::client::Body>> for RequestTimeout<S>
where
    S: tower::Service<http::Request<kube::client::Body>, Response = http::Response<B>>,
    S::Error: Into<tower::BoxError>,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = tower::BoxError;
    type Future =
        futures::future::BoxFuture<'static, std::result::Result<S::Response, tower::BoxError>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::result::Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<kube::client::Body>) -> Self::Future {
        let watch = request.uri().query().is_some_and(|query| {
            query
                .split('&')
                .any(|pair| pair == "watch=true" || pair == "watch=1")
        });
        let method = request.method().clone();
        let is_write = method != http::Method::GET && method != http::Method::HEAD;
        if is_write {
            let allowed = self.hooks.write_gate.as_ref().is_none_or(|gate| gate());
            if let Some(tell) = &self.hooks.on_write {
                tell(allowed);
            }
            if !allowed {
                return Box::pin(async { Err(WRITE_REFUSED.into()) });
            }
        }
        let path = request.uri().path().to_string();
        let sent = std::time::Instant::now();
        let on_success = self.hooks.on_success.clone();
        let response = self.inner.call(request);
        let timeout = self.timeout;
        Box::pin(async move {
            let result = if watch {
                response.await.map_err(Into::into)
            } else {
                match tokio::time::timeout(timeout, response).await {
                    Ok(result) => result.map_err(Into::into),
                    Err(_) => Err(format!(
                        "no answer from the API server within {}s",
                        timeout.as_secs()
                    )
                    .into()),
                }
            };
            if let (Ok(answer), Some(observe)) = (&result, &on_success)
                && answer.status().is_success()
            {
                observe(&method, &path, sent);
            }
            result
        })
    }
}

/// Builds a client whose requests are counted in the returned stats.
pub fn counted_client(config: Config) -> Result<(Client, Arc<RequestStats>)> {
    client_with(config, ClientHooks::default())
}

/// Decides, just before a request is sent, whether a write may go out.
pub type WriteGate = Arc<dyn Fn() -> bool + Send + Sync>;
/// Told of every request that got a 2xx answer: (method, path, when it was sent).
pub type AnswerObserver = Arc<dyn Fn(&http::Method, &str, std::time::Instant) + Send + Sync>;

/// Optional behaviour of a client beyond counting and bounding requests.
#[derive(Clone, Default)]
pub struct ClientHooks {
    /// Writes (anything but GET/HEAD) are refused, without being sent, while this says no:
    /// a watcher that is leader in name only must write nothing.
    pub write_gate: Option<WriteGate>,
    /// Sees every successful request (the lease client records its renewals with it).
    pub on_success: Option<AnswerObserver>,
    /// Told of every write: `true` when it is sent, `false` when the gate refused it.
    pub on_write: Option<Arc<dyn Fn(bool) + Send + Sync>>,
}

/// Builds a client with the request counter, the request timeout and `hooks`.
pub fn client_with(config: Config, hooks: ClientHooks) -> Result<(Client, Arc<RequestStats>)> {
    let stats = Arc::new(RequestStats::default());
    let counter = stats.clone();
    let builder = ClientBuilder::try_from(config).map_err(|e| Error::Config(e.to_string()))?;
    let client = builder
        .with_layer(&tower::layer::layer_fn(move |inner| RequestTimeout {
            inner,
            timeout: REQUEST_TIMEOUT,
            hooks: hooks.clone(),
        }))
        .with_layer(&tower::util::MapRequestLayer::new(
            move |request: http::Request<kube::client::Body>| {
                counter.record(request.method());
                request
            },
        ))
        .build();
    Ok((client, stats))
}

/// The error of a write refused by a [`WriteGate`].
pub const WRITE_REFUSED: &str =
    "write refused: this process does not hold the lease (it was not renewed in time)";

/// A client from the options, with its request counter.
pub async fn connect(options: &ClientOptions) -> Result<(Client, Arc<RequestStats>, String)> {
    let config = load_config(options).await?;
    let default_namespace = config.default_namespace.clone();
    let (client, stats) = counted_client(config)?;
    Ok((client, stats, default_namespace))
}

/// Installs ring as the process-wide rustls provider: kube uses it, and no other provider is
/// compiled in. Safe to call more than once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
