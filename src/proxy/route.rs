//! Where a new connection goes, and the one dial function every route uses. ZPA mode sends
//! every connection to `--target` (usually the Service); another mode can choose a pod per
//! connection from the ready endpoints by adding a `Route` variant. Whatever the route, every
//! address is checked against `--allow-dial-cidr` (and `HSD_DIAL_ALLOW_CIDRS`, the limit of every
//! dial of the process) before any connection attempt.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::allow::AllowList;
use super::args::split_host_port;
use super::hsd::{Claim, HsdRoute};
use super::metrics::{DialFailure, ProxyMetrics};
use super::readiness::Readiness;

/// How long a resolved target name is reused before it is looked up again. A failed dial
/// forgets it at once.
const RESOLVE_TTL: Duration = Duration::from_secs(5);

/// The routing decision of a mode.
pub enum Route {
    /// Every connection to one `host:port`, once any endpoint is ready (ZPA mode).
    Target(TargetRoute),
    /// Each connection to a pod of an HSD that it claims (HSD mode).
    Hsd(HsdRoute),
}

/// A dialled connection, with the pod claim it holds (HSD mode) until it closes.
pub struct Upstream {
    pub stream: TcpStream,
    pub claim: Option<Claim>,
}

pub struct TargetRoute {
    host: String,
    port: u16,
    /// The target when it is an IP address: nothing to resolve.
    literal: Option<Arc<[SocketAddr]>>,
    resolved: std::sync::Mutex<Option<(Instant, Arc<[SocketAddr]>)>>,
}

impl Route {
    pub fn target(target: &str) -> Result<Self, String> {
        let (host, port) = split_host_port(target)?;
        Ok(Route::Target(TargetRoute {
            host: host.to_string(),
            port,
            literal: host
                .parse::<IpAddr>()
                .ok()
                .map(|ip| Arc::from([SocketAddr::new(ip, port)])),
            resolved: std::sync::Mutex::new(None),
        }))
    }

    /// Whether a new connection has somewhere to go.
    pub fn ready(&self, readiness: &Readiness) -> bool {
        match self {
            Route::Target(_) => readiness.ready > 0,
            Route::Hsd(route) => route.available(readiness),
        }
    }

    /// The addresses to try for one connection, in order, and the claim they carry.
    async fn destinations(
        &self,
        readiness: &Readiness,
    ) -> Result<(Arc<[SocketAddr]>, Option<Claim>), DialFailure> {
        match self {
            Route::Target(target) => Ok((target.resolve().await?, None)),
            Route::Hsd(route) => match route.claim(readiness) {
                Some((address, claim)) => Ok((Arc::from([address]), Some(claim))),
                None => Err(DialFailure::NoFreePod),
            },
        }
    }

    /// Forgets what a failed dial may have been misled by.
    fn forget(&self) {
        match self {
            Route::Target(target) => {
                *target.resolved.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
            Route::Hsd(_) => {}
        }
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Route::Target(target) if target.host.contains(':') => {
                write!(f, "[{}]:{}", target.host, target.port)
            }
            Route::Target(target) => write!(f, "{}:{}", target.host, target.port),
            Route::Hsd(route) => route.fmt(f),
        }
    }
}

impl TargetRoute {
    async fn resolve(&self) -> Result<Arc<[SocketAddr]>, DialFailure> {
        if let Some(literal) = &self.literal {
            return Ok(literal.clone());
        }
        if let Some((at, addresses)) = &*self.resolved.lock().unwrap_or_else(|e| e.into_inner())
            && at.elapsed() < RESOLVE_TTL
        {
            return Ok(addresses.clone());
        }
        let addresses: Arc<[SocketAddr]> =
            match tokio::net::lookup_host((self.host.as_str(), self.port)).await {
                Ok(found) => found.collect(),
                Err(error) => {
                    tracing::debug!(host = %self.host, %error, "cannot resolve the target");
                    return Err(DialFailure::Resolve);
                }
            };
        if addresses.is_empty() {
            return Err(DialFailure::Resolve);
        }
        *self.resolved.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), addresses.clone()));
        Ok(addresses)
    }
}

/// Dials what the route chooses, within the allow-list and the connect timeout.
pub struct Dialer {
    pub route: Route,
    pub allow: AllowList,
    pub connect_timeout: Duration,
    pub metrics: Arc<ProxyMetrics>,
}

static WARNED_NOT_ALLOWED: AtomicBool = AtomicBool::new(false);

impl Dialer {
    /// One attempt: each destination in turn until one connects. Every failure is counted.
    /// `NotAllowed` means no destination was inside the allow-list (nothing was dialled).
    pub async fn dial(&self, readiness: &Readiness) -> Result<Upstream, DialFailure> {
        let (destinations, claim) = match self.route.destinations(readiness).await {
            Ok(destinations) => destinations,
            Err(failure) => {
                self.metrics.dial_failed(failure);
                return Err(failure);
            }
        };
        let mut failure = DialFailure::NotAllowed;
        for destination in destinations.iter() {
            // --allow-dial-cidr, and the process-wide HSD_DIAL_ALLOW_CIDRS the probes honour too.
            if !self.allow.allows(destination.ip())
                || !crate::observe::probe::may_dial(destination.ip())
            {
                self.metrics.dial_failed(DialFailure::NotAllowed);
                if !WARNED_NOT_ALLOWED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        %destination,
                        allowed = %self.allow,
                        "not dialling a destination outside --allow-dial-cidr (counted in hsd_proxy_dial_errors_total)"
                    );
                }
                continue;
            }
            let attempt =
                tokio::time::timeout(self.connect_timeout, TcpStream::connect(destination));
            failure = match attempt.await {
                Ok(Ok(stream)) => return Ok(Upstream { stream, claim }),
                Ok(Err(error)) => match error.kind() {
                    std::io::ErrorKind::ConnectionRefused => DialFailure::Refused,
                    std::io::ErrorKind::TimedOut => DialFailure::Timeout,
                    _ => DialFailure::Other,
                },
                Err(_) => DialFailure::Timeout,
            };
            self.metrics.dial_failed(failure);
        }
        if failure != DialFailure::NotAllowed {
            self.route.forget();
        }
        Err(failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dialer(target: &str, allow: &[&str]) -> Dialer {
        Dialer {
            route: Route::target(target).unwrap(),
            allow: AllowList::new(allow.iter().map(|c| c.parse().unwrap()).collect()),
            connect_timeout: Duration::from_secs(1),
            metrics: Arc::new(ProxyMetrics::new(Default::default())),
        }
    }

    #[tokio::test]
    async fn a_destination_outside_the_allow_list_is_never_dialled() {
        // TEST-NET: if this were dialled, the attempt would time out, not fail at once.
        let dialer = dialer("192.0.2.1:80", &["127.0.0.0/8"]);
        let started = Instant::now();
        assert_eq!(
            dialer.dial(&Readiness::default()).await.err(),
            Some(DialFailure::NotAllowed)
        );
        assert!(started.elapsed() < Duration::from_millis(100));
        assert!(
            dialer
                .metrics
                .encode()
                .contains("hsd_proxy_dial_errors_total{reason=\"not_allowed\"} 1")
        );
    }

    #[tokio::test]
    async fn dials_an_allowed_listener_and_counts_a_refusal() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let dialer = dialer(&format!("127.0.0.1:{port}"), &["127.0.0.0/8"]);
        assert!(dialer.dial(&Readiness::default()).await.is_ok());
        drop(listener);
        assert_eq!(
            dialer.dial(&Readiness::default()).await.err(),
            Some(DialFailure::Refused)
        );
        // A name resolves first; each resolved address is checked.
        let named = self::dialer(&format!("localhost:{port}"), &["10.0.0.0/8"]);
        assert_eq!(
            named.dial(&Readiness::default()).await.err(),
            Some(DialFailure::NotAllowed)
        );
    }

    #[test]
    fn routes_print_their_target() {
        assert_eq!(Route::target("myapp:80").unwrap().to_string(), "myapp:80");
        assert_eq!(Route::target("[::1]:80").unwrap().to_string(), "[::1]:80");
        assert!(Route::target("myapp").is_err());
    }
}
