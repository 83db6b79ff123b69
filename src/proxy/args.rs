//! `kubectl hsd proxy` flags. ZPA's flags keep their names, defaults and syntax (Go durations
//! such as `1h30m`, `host:port` or `:port` addresses); the new ones bound what ZPA left open.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use clap::Args;

use super::allow::{AllowList, Cidr};

#[derive(Clone, Debug, Args)]
pub struct ProxyArgs {
    /// Address to accept connections on (ZPA: --address). `:PORT` means every interface.
    #[arg(long, default_value = "localhost:3000", value_name = "HOST:PORT")]
    pub address: String,
    /// Address of /healthz, /readyz and /metrics (ZPA: --admin-address).
    #[arg(long, default_value = "localhost:8080", value_name = "HOST:PORT")]
    pub admin_address: String,
    /// The Deployment to scale.
    #[arg(long, value_name = "NAME", required_unless_present_any = ["selector", "hsd"])]
    pub deployment: Option<String>,
    /// Label selector of the Deployment to scale (it must match exactly one).
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// The Service whose endpoints tell when the app is ready: EndpointSlices labelled
    /// kubernetes.io/service-name=NAME (or the Endpoints NAME). Default: the Deployment's name.
    #[arg(long, value_name = "NAME")]
    pub endpoints: Option<String>,
    /// Where connections are forwarded, usually the Service: `myapp:80`.
    #[arg(long, value_name = "HOST:PORT", required_unless_present = "hsd")]
    pub target: Option<String>,
    /// HSD mode: send each new connection straight to an idle pod of this HotStandbyDeployment
    /// (one with no connection through this proxy), and wake it from spec.scaleToZero.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["deployment", "selector", "endpoints", "target", "wake_replicas", "ttl"])]
    pub hsd: Option<String>,
    /// HSD mode: the pods' port (default: the pod template's first containerPort).
    #[arg(long, value_name = "PORT", requires = "hsd", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// HSD mode: when no idle pod is free, hold the connection until one is, or send it to the
    /// ready pod with the fewest connections through this proxy.
    /// [default: hold]
    #[arg(long, value_enum, requires = "hsd", value_name = "POLICY")]
    pub when_all_busy: Option<super::hsd::WhenAllBusy>,
    /// Scale the Deployment to zero after this long without connections.
    #[arg(long, default_value = "1h", value_parser = parse_duration, value_name = "DURATION")]
    pub ttl: Duration,
    /// How long a connection is held while the app wakes up or refuses connections.
    #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    pub max_wait: Duration,
    /// Timeout of one connection attempt to the target.
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub connect_timeout: Duration,
    /// Connections held at once; more are refused at once (and counted).
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub max_held: usize,
    /// Replicas to scale to when a connection arrives while the Deployment is at zero.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..), value_name = "N")]
    pub wake_replicas: i32,
    /// On SIGTERM: stop accepting, then give open connections this long to finish.
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub drain_timeout: Duration,
    /// Dial only addresses in this range (repeatable). Every resolved address of the target is
    /// checked; one outside is never dialled and counts as a dial error.
    #[arg(long = "allow-dial-cidr", value_parser = parse_cidr, value_name = "CIDR")]
    pub allow_dial_cidr: Vec<Cidr>,
    /// Print the proxy's Deployment, Service and least-privilege RBAC (to replace ZPA's) instead
    /// of running it. The other flags become the container's arguments.
    #[arg(long, conflicts_with = "hsd")]
    pub zpa_manifest: bool,
    /// With --zpa-manifest: the name of the proxy's objects (default: DEPLOYMENT-proxy).
    #[arg(long, requires = "zpa_manifest", value_name = "NAME")]
    pub name: Option<String>,
    /// With --zpa-manifest: the image (default: this version's kubectl-hsd image).
    #[arg(long, requires = "zpa_manifest", value_name = "IMAGE")]
    pub image: Option<String>,
    /// With --zpa-manifest: proxy replicas (they share the scale-down deadline).
    #[arg(long, default_value_t = 2, requires = "zpa_manifest", value_parser = clap::value_parser!(i32).range(1..), value_name = "N")]
    pub proxy_replicas: i32,
}

fn parse_cidr(text: &str) -> Result<Cidr, String> {
    text.parse()
}

/// The longest duration any flag takes: deadlines stay far inside the time range.
const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A duration in Go's syntax (`300ms`, `1.5h`, `2h45m`, `0`), as ZPA's flags take them, or in
/// humantime's (`1h 30m`, `2days`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let parsed = parse_go_duration(trimmed)
        .or_else(|go_error| humantime::parse_duration(trimmed).map_err(|_| go_error))?;
    if parsed > MAX_DURATION {
        return Err(format!("{text:?} is longer than 10 years"));
    }
    Ok(parsed)
}

fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let invalid = || {
        format!("invalid duration {text:?}: use a number and a unit, such as 90s, 5m, 1h or 1h30m")
    };
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.starts_with('-') {
        return Err(format!("invalid duration {text:?}: must not be negative"));
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3600 * 1_000_000_000,
            _ => return Err(invalid()),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return Err(invalid());
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| invalid())?
        };
        let mut value = whole.checked_mul(unit_nanos).ok_or_else(invalid)?;
        // Fractions to nanosecond precision, like Go.
        let mut scale = unit_nanos;
        for digit in fraction.chars().take(18) {
            scale /= 10;
            value += u128::from(digit.to_digit(10).ok_or_else(invalid)?) * scale;
        }
        total_nanos = total_nanos.checked_add(value).ok_or_else(invalid)?;
        if total_nanos > MAX_DURATION.as_nanos() {
            return Err(format!("{text:?} is longer than 10 years"));
        }
        rest = after;
    }
    let seconds = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| invalid())?;
    Ok(Duration::new(seconds, (total_nanos % 1_000_000_000) as u32))
}

/// A duration as Go prints it, without zero parts: `1h30m`, `5m`, `1.5s`, `250ms`.
pub fn format_duration(duration: Duration) -> String {
    if duration.is_zero() {
        return "0s".into();
    }
    if duration.subsec_nanos() != 0 && duration.as_secs() == 0 {
        let millis = duration.as_nanos() as f64 / 1e6;
        return format!("{}ms", trim_float(millis));
    }
    let total = duration.as_secs();
    let (hours, minutes, seconds) = (total / 3600, total / 60 % 60, total % 60);
    let mut text = String::new();
    if hours > 0 {
        text.push_str(&format!("{hours}h"));
    }
    if minutes > 0 {
        text.push_str(&format!("{minutes}m"));
    }
    if seconds > 0 || duration.subsec_nanos() > 0 {
        let seconds = seconds as f64 + f64::from(duration.subsec_nanos()) / 1e9;
        text.push_str(&format!("{}s", trim_float(seconds)));
    }
    text
}

fn trim_float(value: f64) -> String {
    let text = format!("{value:.9}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A listen address as ZPA (Go's net.Listen) takes it: `host:port`, `[v6]:port`, or `:port`
/// for every interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenAddress {
    /// `None`: every interface.
    pub host: Option<String>,
    pub port: u16,
}

impl std::str::FromStr for ListenAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (host, port) = split_host_port(text)?;
        Ok(Self {
            host: (!host.is_empty()).then(|| host.to_string()),
            port,
        })
    }
}

impl std::fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.host {
            Some(host) if host.contains(':') => write!(f, "[{host}]:{}", self.port),
            Some(host) => write!(f, "{host}:{}", self.port),
            None => write!(f, ":{}", self.port),
        }
    }
}

/// `host:port` with the brackets of an IPv6 host removed.
pub fn split_host_port(text: &str) -> Result<(&str, u16), String> {
    let text = text.trim();
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?} is not HOST:PORT"))?;
    let host = match host.strip_prefix('[') {
        Some(inner) => inner
            .strip_suffix(']')
            .ok_or_else(|| format!("{text:?}: unbalanced [ in the host"))?,
        None if host.contains(':') => {
            return Err(format!(
                "{text:?}: write an IPv6 host in brackets, [::1]:PORT"
            ));
        }
        None => host,
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{text:?}: the port must be a number from 0 to 65535"))?;
    Ok((host, port))
}

impl ListenAddress {
    /// The socket addresses to try binding, in order. A host name resolves to its first IPv4
    /// address if it has one (Go does the same); no host means every interface (IPv6 and IPv4
    /// where the system allows, else IPv4).
    pub async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        let Some(host) = &self.host else {
            return Ok(vec![
                SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), self.port),
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), self.port),
            ]);
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        let mut resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), self.port))
            .await?
            .collect();
        resolved.sort_by_key(|addr| !addr.is_ipv4());
        resolved.truncate(1);
        if resolved.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{host} has no address"),
            ));
        }
        Ok(resolved)
    }
}

/// Everything the proxy needs to run, validated.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub address: ListenAddress,
    pub admin_address: ListenAddress,
    pub deployment: Option<String>,
    pub selector: Option<String>,
    pub endpoints: Option<String>,
    /// ZPA mode's `--target` (empty in HSD mode).
    pub target: String,
    pub hsd: Option<String>,
    pub port: Option<u16>,
    pub when_all_busy: super::hsd::WhenAllBusy,
    pub ttl: Duration,
    pub max_wait: Duration,
    pub connect_timeout: Duration,
    pub max_held: usize,
    pub wake_replicas: i32,
    pub drain_timeout: Duration,
    pub allow: AllowList,
}

impl ProxyArgs {
    /// Checks what clap cannot: the addresses, and durations that make sense together.
    pub fn config(&self) -> Result<ProxyConfig, String> {
        let address: ListenAddress = self
            .address
            .parse()
            .map_err(|e| format!("--address: {e}"))?;
        let admin_address: ListenAddress = self
            .admin_address
            .parse()
            .map_err(|e| format!("--admin-address: {e}"))?;
        // clap drops `requires` when the required flag conflicts with one given.
        if self.hsd.is_none() && (self.port.is_some() || self.when_all_busy.is_some()) {
            return Err("--port and --when-all-busy need --hsd".into());
        }
        let target = self.target.as_deref().unwrap_or_default();
        if self.hsd.is_none() {
            let (target_host, target_port) =
                split_host_port(target).map_err(|e| format!("--target: {e}"))?;
            if target_host.is_empty() || target_port == 0 {
                return Err(format!(
                    "--target {target:?}: give the host and a port, such as myapp:80"
                ));
            }
        }
        if self.ttl < Duration::from_secs(1) {
            return Err("--ttl must be at least 1s".into());
        }
        if self.connect_timeout.is_zero() {
            return Err("--connect-timeout must be more than 0".into());
        }
        for (flag, name) in [
            ("--deployment", &self.deployment),
            ("--endpoints", &self.endpoints),
            ("--hsd", &self.hsd),
        ] {
            if let Some(name) = name
                && !is_dns_name(name)
            {
                return Err(format!("{flag} {name:?} is not a valid object name"));
            }
        }
        Ok(ProxyConfig {
            address,
            admin_address,
            deployment: self.deployment.clone(),
            selector: self.selector.clone(),
            endpoints: self.endpoints.clone(),
            target: target.trim().to_string(),
            hsd: self.hsd.clone(),
            port: self.port,
            when_all_busy: self.when_all_busy.unwrap_or_default(),
            ttl: self.ttl,
            max_wait: self.max_wait,
            connect_timeout: self.connect_timeout,
            max_held: self.max_held,
            wake_replicas: self.wake_replicas,
            drain_timeout: self.drain_timeout,
            allow: AllowList::new(self.allow_dial_cidr.clone()),
        })
    }
}

/// A DNS subdomain name (RFC 1123), as Deployment and Service names are.
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn go_durations_parse_as_zpa_takes_them() {
        let secs = Duration::from_secs;
        for (text, want) in [
            ("1h", secs(3600)),
            ("30m", secs(1800)),
            ("1h30m", secs(5400)),
            ("2h45m10s", secs(9910)),
            ("90s", secs(90)),
            ("1.5h", secs(5400)),
            ("300ms", Duration::from_millis(300)),
            ("1us", Duration::from_micros(1)),
            ("1µs", Duration::from_micros(1)),
            ("10ns", Duration::from_nanos(10)),
            (".5s", Duration::from_millis(500)),
            ("0", Duration::ZERO),
            ("+5s", secs(5)),
            // humantime's syntax is accepted too.
            ("1h 30m", secs(5400)),
            ("2days", secs(2 * 86400)),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
        for bad in [
            "",
            "1",
            "h",
            "1x",
            "-1h",
            "1.2.3s",
            ".s",
            "1h-5m",
            "99999999999999999999h",
            "87601h1h",
            "11y",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn durations_print_in_go_syntax() {
        for (duration, text) in [
            (Duration::from_secs(3600), "1h"),
            (Duration::from_secs(5400), "1h30m"),
            (Duration::from_secs(300), "5m"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::ZERO, "0s"),
        ] {
            assert_eq!(format_duration(duration), text);
            assert_eq!(parse_duration(text), Ok(duration));
        }
    }

    #[test]
    fn listen_addresses_take_go_forms() {
        let parse = |t: &str| t.parse::<ListenAddress>();
        assert_eq!(
            parse("localhost:3000"),
            Ok(ListenAddress {
                host: Some("localhost".into()),
                port: 3000
            })
        );
        assert_eq!(parse(":80").unwrap().host, None);
        assert_eq!(parse("[::1]:8080").unwrap().host.as_deref(), Some("::1"));
        assert_eq!(parse("[::1]:8080").unwrap().to_string(), "[::1]:8080");
        assert_eq!(parse("0.0.0.0:0").unwrap().port, 0);
        for bad in [
            "3000",
            "localhost",
            "::1:80",
            "[::1:80",
            "host:http",
            "host:70000",
            "",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn listen_addresses_resolve_without_the_network() {
        let any = ":9"
            .parse::<ListenAddress>()
            .unwrap()
            .resolve()
            .await
            .unwrap();
        assert!(any.iter().all(|a| a.ip().is_unspecified() && a.port() == 9));
        let literal = "127.0.0.1:0"
            .parse::<ListenAddress>()
            .unwrap()
            .resolve()
            .await
            .unwrap();
        assert_eq!(literal, vec!["127.0.0.1:0".parse().unwrap()]);
    }

    #[test]
    fn object_names_are_checked() {
        assert!(is_dns_name("myapp") && is_dns_name("my-app.v2"));
        for bad in ["", "MyApp", "-app", "app-", "a/b", "a..b", &"x".repeat(64)] {
            assert!(!is_dns_name(bad), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn any_duration_text_parses_or_fails_without_panicking(text in ".{0,32}") {
            let _ = parse_duration(&text);
        }

        #[test]
        fn whole_millisecond_durations_round_trip(millis in 0u64..10 * 365 * 24 * 3600 * 1000) {
            let duration = Duration::from_millis(millis);
            prop_assert_eq!(parse_duration(&format_duration(duration)), Ok(duration));
        }

        #[test]
        fn any_address_text_parses_or_fails_without_panicking(text in ".{0,40}") {
            let _ = text.parse::<ListenAddress>();
        }
    }
}
