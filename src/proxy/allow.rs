//! `--allow-dial-cidr`: the address ranges the proxy may dial. Every resolved address of a
//! destination is checked before any connection attempt; one outside the list is never dialled.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An IPv4 or IPv6 network, `10.0.0.0/8` or `fd00::/8`. A bare address is a /32 or /128.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn new(address: IpAddr, prefix: u8) -> Result<Self, String> {
        let bits = match address {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        if prefix > bits {
            return Err(format!("prefix /{prefix} is longer than {bits} bits"));
        }
        // An IPv4-mapped IPv6 network (::ffff:10.0.0.0/104) is the IPv4 network it maps.
        let (address, prefix) = match address {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix - 96),
                None => (address, prefix),
            },
            _ => (address, prefix),
        };
        let network = match address {
            IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) & mask_v4(prefix)).into()),
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & mask_v6(prefix)).into()),
        };
        Ok(Self { network, prefix })
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.network, canonical(address)) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => {
                u32::from(ip) & mask_v4(self.prefix) == u32::from(network)
            }
            (IpAddr::V6(network), IpAddr::V6(ip)) => {
                u128::from(ip) & mask_v6(self.prefix) == u128::from(network)
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:127.0.0.1`) are their IPv4 address: a socket may report
/// either form for the same destination.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn mask_v4(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

fn mask_v6(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix.min(128)))
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("{text:?} is not a CIDR such as 127.0.0.0/8 or fd00::/8"))?;
        let prefix = match prefix {
            Some(prefix) => prefix
                .parse::<u8>()
                .map_err(|_| format!("{text:?}: the prefix length must be a number"))?,
            None if address.is_ipv4() => 32,
            None => 128,
        };
        Self::new(address, prefix).map_err(|e| format!("{text:?}: {e}"))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The ranges a dial may go to. Empty means anywhere (no `--allow-dial-cidr` given).
#[derive(Clone, Debug, Default)]
pub struct AllowList(Vec<Cidr>);

impl AllowList {
    pub fn new(cidrs: Vec<Cidr>) -> Self {
        Self(cidrs)
    }

    pub fn allows(&self, address: IpAddr) -> bool {
        self.0.is_empty() || self.0.iter().any(|cidr| cidr.contains(address))
    }

    pub fn is_restricted(&self) -> bool {
        !self.0.is_empty()
    }
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return write!(f, "anywhere");
        }
        let list: Vec<String> = self.0.iter().map(Cidr::to_string).collect();
        write!(f, "{}", list.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn parses_and_checks_ipv4_and_ipv6() {
        let loopback: Cidr = "127.0.0.0/8".parse().unwrap();
        assert!(loopback.contains(ip("127.0.0.1")));
        assert!(loopback.contains(ip("127.255.255.255")));
        assert!(!loopback.contains(ip("128.0.0.1")));
        assert!(!loopback.contains(ip("192.0.2.10")));
        assert!(!loopback.contains(ip("::1")));
        // The IPv4-mapped form of an address is that address.
        assert!(loopback.contains(ip("::ffff:127.0.0.1")));
        assert!(!loopback.contains(ip("::ffff:192.0.2.1")));

        let ula: Cidr = "fd00::/8".parse().unwrap();
        assert!(ula.contains(ip("fd12::1")));
        assert!(!ula.contains(ip("fe80::1")));
        assert!(!ula.contains(ip("10.0.0.1")));

        let single: Cidr = "10.1.2.3".parse().unwrap();
        assert_eq!(single.to_string(), "10.1.2.3/32");
        assert!(single.contains(ip("10.1.2.3")) && !single.contains(ip("10.1.2.4")));
        let everything: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(everything.contains(ip("203.0.113.7")));
        // Host bits are dropped, as Go's net.ParseCIDR does.
        assert_eq!(
            "10.9.8.7/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        let mapped: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(mapped.to_string(), "10.0.0.0/8");
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        for bad in [
            "",
            "/",
            "127.0.0.0/33",
            "::/129",
            "127.0.0.0/x",
            "127.0.0.0/-1",
            "localhost/8",
            "1.2.3/8",
            "127.0.0.0/8/8",
            "127.0.0.0/300",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn an_empty_list_allows_everything_and_a_list_only_its_ranges() {
        assert!(AllowList::default().allows(ip("192.0.2.1")));
        let list = AllowList::new(vec![
            "127.0.0.0/8".parse().unwrap(),
            "fd00::/8".parse().unwrap(),
        ]);
        assert!(list.allows(ip("127.0.0.1")));
        assert!(list.allows(ip("fd00::5")));
        assert!(!list.allows(ip("192.0.2.1")));
        assert!(!list.allows(ip("198.18.0.1")));
        assert_eq!(list.to_string(), "127.0.0.0/8, fd00::/8");
    }

    proptest! {
        #[test]
        fn an_ipv4_network_contains_exactly_the_addresses_sharing_its_prefix(
            address: u32, other: u32, prefix in 0u8..=32
        ) {
            let cidr = Cidr::new(IpAddr::V4(Ipv4Addr::from(address)), prefix).unwrap();
            prop_assert!(cidr.contains(IpAddr::V4(Ipv4Addr::from(address))));
            let same_prefix = prefix == 0 || (address ^ other) >> (32 - u32::from(prefix)) == 0;
            prop_assert_eq!(cidr.contains(IpAddr::V4(Ipv4Addr::from(other))), same_prefix);
            // Its text form parses back to the same network.
            prop_assert_eq!(cidr.to_string().parse::<Cidr>().unwrap(), cidr);
        }

        #[test]
        fn an_ipv6_network_contains_exactly_the_addresses_sharing_its_prefix(
            address: u128, other: u128, prefix in 0u8..=128
        ) {
            let address = Ipv6Addr::from(address);
            // Mapped IPv4 addresses are checked as IPv4: keep to plain IPv6 here.
            prop_assume!(address.to_ipv4_mapped().is_none());
            let other = Ipv6Addr::from(other);
            prop_assume!(other.to_ipv4_mapped().is_none());
            let cidr = Cidr::new(IpAddr::V6(address), prefix).unwrap();
            prop_assert!(cidr.contains(IpAddr::V6(address)));
            let same_prefix = prefix == 0
                || (u128::from(address) ^ u128::from(other)) >> (128 - u32::from(prefix)) == 0;
            prop_assert_eq!(cidr.contains(IpAddr::V6(other)), same_prefix);
        }

        #[test]
        fn any_text_parses_or_fails_without_panicking(text in ".{0,40}") {
            let _ = text.parse::<Cidr>();
        }
    }
}
