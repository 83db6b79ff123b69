//! Client configuration like kubectl's (kubeconfig first, in-cluster as fallback) and one tower
//! layer under every request: it counts requests (`--stats`), bounds them (`--request-timeout`),
//! logs them at `-v 6`, gates writes (a watcher that lost its lease writes nothing), and applies
//! the command's write policy to every write (`--dry-run=server`, `--field-manager`). Doing the
//! last at the transport means no write path can forget it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kube::client::ClientBuilder;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::error::{Error, Result};

/// Where the client configuration comes from, and what every write of the client carries.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    pub writes: WritePolicy,
}

/// What every write (anything but GET/HEAD) of a client carries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WritePolicy {
    /// `dryRun=All`: the API server validates and admits each write, and persists none
    /// (`--dry-run=server`).
    pub server_dry_run: bool,
}

/// Settings of the whole command line that every client of the process follows, watchers'
/// included (kubectl's global `--request-timeout` and a command's `--field-manager`).
#[derive(Clone, Debug, Default)]
pub struct ProcessDefaults {
    /// `None`: [`REQUEST_TIMEOUT`]; `Some(ZERO)`: no bound.
    pub request_timeout: Option<Duration>,
    /// Replaces the product's field manager ([`crate::execute::FIELD_MANAGER`] or
    /// `kubectl-hsd-mark`) in every write.
    pub field_manager: Option<String>,
}

static PROCESS_DEFAULTS: std::sync::OnceLock<ProcessDefaults> = std::sync::OnceLock::new();

/// Sets the [`ProcessDefaults`]; the first call wins (the command line sets them once).
pub fn set_process_defaults(defaults: ProcessDefaults) {
    let _ = PROCESS_DEFAULTS.set(defaults);
}

/// The field manager the product's writes go out under: `--field-manager`, or
/// [`crate::execute::FIELD_MANAGER`].
pub fn product_field_manager() -> String {
    process_defaults()
        .field_manager
        .unwrap_or_else(|| crate::execute::FIELD_MANAGER.to_string())
}

fn process_defaults() -> ProcessDefaults {
    PROCESS_DEFAULTS.get().cloned().unwrap_or_default()
}

/// kubectl's `--request-timeout`: a bare number is seconds (`0`: no bound), else a duration
/// such as `30s` or `1m`.
pub fn parse_request_timeout(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("{e}: give a duration with a unit (1s, 2m, 3h), or 0 for no timeout"))
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
    let config = load_config_from(options, &kube_options).await?;
    crate::error::set_api_server(&config.cluster_url.to_string());
    Ok(config)
}

async fn load_config_from(
    options: &ClientOptions,
    kube_options: &KubeConfigOptions,
) -> Result<Config> {
    if let Some(path) = &options.kubeconfig {
        let kubeconfig = Kubeconfig::read_from(path)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        return Config::from_custom_kubeconfig(kubeconfig, kube_options)
            .await
            .map_err(|e| Error::Config(e.to_string()));
    }
    match Config::from_kubeconfig(kube_options).await {
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

/// Longest wait for the answer to a request that is not a watch, unless `--request-timeout`
/// says otherwise.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Bounds every request but watches (which are long by design): a request stuck on a
/// connection that died with an API server restart fails and is retried instead of hanging.
#[derive(Clone)]
pub struct RequestTimeout<S> {
    inner: S,
    /// Zero: no bound.
    timeout: Duration,
    hooks: ClientHooks,
    writes: WritePolicy,
    field_manager: Option<String>,
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

    fn call(&mut self, mut request: http::Request<kube::client::Body>) -> Self::Future {
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
            if let Err(error) = apply_write_policy(
                &mut request,
                self.writes.server_dry_run,
                self.field_manager.as_deref(),
            ) {
                return Box::pin(async move { Err(error) });
            }
        }
        let path = request.uri().path().to_string();
        let uri = request.uri().clone();
        let sent = std::time::Instant::now();
        let on_success = self.hooks.on_success.clone();
        let response = self.inner.call(request);
        let timeout = self.timeout;
        Box::pin(async move {
            let result = if watch || timeout.is_zero() {
                response.await.map_err(Into::into)
            } else {
                match tokio::time::timeout(timeout, response).await {
                    Ok(result) => result.map_err(Into::into),
                    Err(_) => Err(format!(
                        "no answer from the API server within {}",
                        humantime::format_duration(timeout)
                    )
                    .into()),
                }
            };
            if let (Ok(answer), Some(observe)) = (&result, &on_success)
                && answer.status().is_success()
            {
                observe(&method, &path, sent);
            }
            // kubectl's -v 6: one line per request.
            match &result {
                Ok(answer) => tracing::debug!(
                    target: HTTP_LOG_TARGET,
                    "{method} {}{uri} {} in {} milliseconds",
                    crate::error::api_server(),
                    answer.status(),
                    sent.elapsed().as_millis()
                ),
                Err(error) => tracing::debug!(
                    target: HTTP_LOG_TARGET,
                    "{method} {}{uri} failed after {} milliseconds: {error}",
                    crate::error::api_server(),
                    sent.elapsed().as_millis()
                ),
            }
            result
        })
    }
}

/// The log target of the one-line-per-request log (`-v 6`).
pub const HTTP_LOG_TARGET: &str = "kubectl_hsd::http";

/// Field managers the product writes under, which `--field-manager` replaces.
const PRODUCT_FIELD_MANAGERS: [&str; 2] = [
    crate::execute::FIELD_MANAGER,
    crate::cli::mark::MARK_FIELD_MANAGER,
];

/// Adds `dryRun=All` and sets the field manager on a write's query string.
fn apply_write_policy(
    request: &mut http::Request<kube::client::Body>,
    server_dry_run: bool,
    field_manager: Option<&str>,
) -> std::result::Result<(), tower::BoxError> {
    if !server_dry_run && field_manager.is_none() {
        return Ok(());
    }
    let uri = request.uri();
    let mut pairs: Vec<(String, String)> = uri
        .query()
        .map(|query| {
            form_urlencoded_pairs(query)
                .filter(|(key, _)| !(server_dry_run && key == "dryRun"))
                .collect()
        })
        .unwrap_or_default();
    if let Some(manager) = field_manager {
        match pairs.iter_mut().find(|(key, _)| key == "fieldManager") {
            Some((_, value)) if PRODUCT_FIELD_MANAGERS.contains(&value.as_str()) => {
                *value = manager.to_string()
            }
            Some(_) => {}
            None => pairs.push(("fieldManager".into(), manager.to_string())),
        }
    }
    if server_dry_run {
        pairs.push(("dryRun".into(), "All".into()));
    }
    let query = pairs
        .iter()
        .map(|(key, value)| format!("{}={}", encode_query(key), encode_query(value)))
        .collect::<Vec<_>>()
        .join("&");
    let path_and_query = format!("{}?{query}", uri.path());
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse()?);
    *request.uri_mut() = http::Uri::from_parts(parts)?;
    Ok(())
}

/// `key=value` pairs of a query string, percent-decoded.
fn form_urlencoded_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode_query(key), decode_query(value))
    })
}

fn decode_query(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn encode_query(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
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
    client_with_policy(config, hooks, WritePolicy::default())
}

/// [`client_with`], and every write carries `writes`.
pub fn client_with_policy(
    config: Config,
    hooks: ClientHooks,
    writes: WritePolicy,
) -> Result<(Client, Arc<RequestStats>)> {
    let stats = Arc::new(RequestStats::default());
    let counter = stats.clone();
    let defaults = process_defaults();
    let timeout = defaults.request_timeout.unwrap_or(REQUEST_TIMEOUT);
    let field_manager = defaults.field_manager;
    let builder = base_builder(config)?;
    let client = builder
        .with_layer(&tower::layer::layer_fn(move |inner| RequestTimeout {
            inner,
            timeout,
            hooks: hooks.clone(),
            writes: writes.clone(),
            field_manager: field_manager.clone(),
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

/// kube's service stack (`ClientBuilder::try_from`), boxed.
type BaseService = tower::util::BoxService<
    http::Request<kube::client::Body>,
    http::Response<Box<kube::client::DynBody>>,
    tower::BoxError,
>;

/// kube's client stack with `TCP_NODELAY` on every connection to the API server.
///
/// kube 5 leaves Nagle's algorithm on (kube-rs/kube#2056): a request written in two segments
/// waits for the API server's delayed ACK of the first. On this project's control plane an
/// EndpointSlice apply made right after a pod watch took 48 to 68 ms this way, and 5 to 9 ms
/// with `TCP_NODELAY`, as Go's clients (kubectl, client-go) always set it. The stack is kube's
/// own (`make_generic_builder`, which is private) minus its tracing spans: base URI, retries of
/// 429/503/504 when the config asks for them, auth, extra headers, timeouts. Through a proxy
/// (`proxy-url` in the kubeconfig) kube's builder is used unchanged.
fn base_builder(config: Config) -> Result<ClientBuilder<BaseService>> {
    use kube::client::ConfigExt;
    use tower::ServiceExt;
    if config.proxy_url.is_some() {
        return ClientBuilder::try_from(config).map_err(|e| Error::Config(e.to_string()));
    }
    let config_error = |e: kube::Error| Error::Config(e.to_string());
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let https = config
        .rustls_https_connector_with_connector(http)
        .map_err(config_error)?;
    let mut connector = hyper_timeout::TimeoutConnector::new(https);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    let hyper: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector);
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.default_retry.then(|| {
            tower::retry::RetryLayer::new(kube::client::retry::RetryPolicy::server_retry())
        }))
        .option_layer(config.auth_layer().map_err(config_error)?)
        .layer(config.extra_headers_layer().map_err(config_error)?)
        .map_err(tower::BoxError::from)
        .service(hyper)
        .map_response(|response| {
            response.map(|body| {
                Box::new(http_body_util::BodyExt::map_err(
                    body,
                    tower::BoxError::from,
                )) as Box<kube::client::DynBody>
            })
        })
        .boxed();
    Ok(ClientBuilder::new(service, config.default_namespace))
}

/// A client of kube's stack with `TCP_NODELAY` and nothing of this tool's layers: what the
/// benchmark's floors use, so that they talk to the API server as the product does.
pub fn nodelay_client(config: Config) -> Result<Client> {
    Ok(base_builder(config)?.build())
}

/// The error of a write refused by a [`WriteGate`].
pub const WRITE_REFUSED: &str =
    "write refused: this process does not hold the lease (it was not renewed in time)";

/// A client from the options, with its request counter.
pub async fn connect(options: &ClientOptions) -> Result<(Client, Arc<RequestStats>, String)> {
    let config = load_config(options).await?;
    let default_namespace = config.default_namespace.clone();
    let (client, stats) =
        client_with_policy(config, ClientHooks::default(), options.writes.clone())?;
    Ok((client, stats, default_namespace))
}

/// Limits glibc's malloc to one arena (musl has none to limit). By default each thread that
/// allocates may get an arena of its own, and a watcher's caches, filled by whichever worker
/// polled the watch, end up spread over several half-empty heaps: at 20,000 pods one arena kept
/// RSS 18 MB lower (`MALLOC_ARENA_MAX=1`, 102 against 120 MB), with the thread caches still
/// serving the small allocations without a lock. Called before the runtime's threads start.
/// glibc's own `MALLOC_ARENA_MAX` in the environment wins: an operator can trade memory back.
pub fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable; no allocation is in flight on another thread yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Installs ring as the process-wide rustls provider: kube uses it, and no other provider is
/// compiled in. Safe to call more than once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    /// The `TCP_NODELAY` option of this process's socket whose local address is `local`.
    fn nodelay_of_local(local: SocketAddr) -> Option<bool> {
        for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
            let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let mut address: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            let mut length = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            // SAFETY: getsockname writes at most `length` bytes into `address`; a descriptor
            // that is not a socket (or was closed meanwhile) makes it fail, and it is skipped.
            let named =
                unsafe { libc::getsockname(fd, (&raw mut address).cast(), &raw mut length) };
            if named != 0
                || i32::from(address.sin_family) != libc::AF_INET
                || u16::from_be(address.sin_port) != local.port()
            {
                continue;
            }
            let mut value: libc::c_int = 0;
            let mut size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: as above, for one c_int.
            let read = unsafe {
                libc::getsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_NODELAY,
                    (&raw mut value).cast(),
                    &raw mut size,
                )
            };
            return (read == 0).then_some(value != 0);
        }
        None
    }

    /// Sends one request through `client` to a listener of this test, and reads the option off
    /// the client's end of the connection it accepts.
    async fn nodelay_of(client: Client, listener: &tokio::net::TcpListener) -> bool {
        let request = tokio::spawn(async move {
            let request = http::Request::get("/version").body(Vec::new()).unwrap();
            client.request_text(request).await
        });
        let (mut server_end, peer) = listener.accept().await.expect("the client connects");
        // The option is set once the connect completes on the client's side, before its first
        // write: with the request's first bytes here, it is set.
        let mut first = [0u8; 1];
        tokio::io::AsyncReadExt::read_exact(&mut server_end, &mut first)
            .await
            .expect("the request arrives");
        let nodelay = nodelay_of_local(peer).expect("the client's socket is in /proc/self/fd");
        drop(server_end);
        let _ = request.await;
        nodelay
    }

    #[tokio::test]
    async fn the_api_client_connects_with_tcp_nodelay() {
        install_crypto_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url: http::Uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let (product, _) = counted_client(Config::new(url.clone())).unwrap();
        assert!(nodelay_of(product, &listener).await, "the product's client");
        let floor = nodelay_client(Config::new(url.clone())).unwrap();
        assert!(nodelay_of(floor, &listener).await, "the benchmark's client");
        // The check sees the difference: kube's own stack leaves Nagle on.
        let kube_default = Client::try_from(Config::new(url)).unwrap();
        assert!(
            !nodelay_of(kube_default, &listener).await,
            "kube's default client"
        );
    }
}
