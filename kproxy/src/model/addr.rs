//! IP address parsing the way Kubernetes does it.
//!
//! Kubernetes parses addresses with `netutils.ParseIPSloppy`, which accepts IPv4 octets with
//! leading zeros and reads them as *decimal* (`010.001.002.003` is 10.1.2.3), for
//! compatibility with objects stored before Go 1.17 rejected them. Rust's parser rejects such
//! strings, so IPv4 is parsed here by hand; IPv6 uses the standard parser.
//!
//! An address that parses is not necessarily one traffic can be balanced to or from: see
//! `unusable_vip` and `unusable_endpoint`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Parses an IP address as Kubernetes reads it.
pub fn parse_ip_sloppy(s: &str) -> Option<IpAddr> {
    if s.contains(':') {
        return s.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    parse_ipv4_sloppy(s).map(IpAddr::V4)
}

/// Four dot-separated decimal octets, leading zeros allowed.
pub fn parse_ipv4_sloppy(s: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = s.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    parts.next().is_none().then_some(Ipv4Addr::from(octets))
}

/// Parses a CIDR as Kubernetes reads it (`netutils.ParseCIDRSloppy`): an address as
/// `parse_ip_sloppy` reads it, `/`, a decimal prefix length (leading zeros allowed) no longer
/// than the address. Host bits are cleared, as Go's `ParseCIDR` returns the network.
pub fn parse_cidr_sloppy(s: &str) -> Option<IpNet> {
    let (addr, len) = s.split_once('/')?;
    let addr = parse_ip_sloppy(addr)?;
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let len: u8 = len.parse().ok()?;
    IpNet::new(addr, len).ok().map(|net| net.trunc())
}

/// Why `addr` cannot be a Service VIP, if it cannot: traffic to it is not unicast traffic to
/// one destination (unspecified, multicast, limited broadcast), or never reaches an interface
/// kproxy is attached to (loopback). The API server allocates cluster IPs from the service
/// CIDR, so only hand-written manifests hit this; serving such a VIP would capture traffic
/// that is not for a Service (mDNS on 224.0.0.251:5353, DHCP broadcasts).
pub fn unusable_vip(addr: IpAddr) -> Option<&'static str> {
    if addr.is_unspecified() {
        return Some("the unspecified address");
    }
    if addr.is_loopback() {
        return Some("a loopback address");
    }
    if addr.is_multicast() {
        return Some("a multicast address");
    }
    match addr {
        IpAddr::V4(a) if a.is_broadcast() => Some("the broadcast address"),
        _ => None,
    }
}

/// Why `addr` cannot be an endpoint, if it cannot. Kubernetes' own validation of endpoint
/// addresses (`ValidateEndpointIP`) rejects unspecified, loopback, link-local and link-local
/// multicast addresses, because a proxy would send traffic to the node itself or nowhere;
/// kproxy rejects those and any other multicast or broadcast address, which cannot be a
/// connection's destination either. The API server refuses such slices, so only manifests
/// (or a server with other rules) get here.
pub fn unusable_endpoint(addr: IpAddr) -> Option<&'static str> {
    let link_local = match addr {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => a.is_unicast_link_local(),
    };
    if link_local {
        return Some("a link-local address");
    }
    unusable_vip(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_addresses_are_neither_vips_nor_endpoints() {
        // (address, as a VIP, as an endpoint): None when usable.
        let cases: &[(&str, Option<&str>, Option<&str>)] = &[
            ("198.19.0.10", None, None),
            ("2001:db8::10", None, None),
            ("0.0.0.0", Some("unspecified"), Some("unspecified")),
            ("::", Some("unspecified"), Some("unspecified")),
            ("127.0.0.1", Some("loopback"), Some("loopback")),
            ("::1", Some("loopback"), Some("loopback")),
            ("224.0.0.251", Some("multicast"), Some("multicast")),
            ("239.1.2.3", Some("multicast"), Some("multicast")),
            ("ff02::1", Some("multicast"), Some("multicast")),
            ("255.255.255.255", Some("broadcast"), Some("broadcast")),
            // Link-local VIPs are allowed (node-local caches use them); endpoints are not.
            ("169.254.20.10", None, Some("link-local")),
            ("fe80::1", None, Some("link-local")),
        ];
        for (input, vip, endpoint) in cases {
            let addr = parse_ip_sloppy(input).expect("test address");
            let says = |got: Option<&str>, want: Option<&str>| match (got, want) {
                (None, None) => true,
                (Some(got), Some(want)) => got.contains(want),
                _ => false,
            };
            assert!(
                says(unusable_vip(addr), *vip),
                "{input} as a VIP: {:?}",
                unusable_vip(addr)
            );
            assert!(
                says(unusable_endpoint(addr), *endpoint),
                "{input} as an endpoint: {:?}",
                unusable_endpoint(addr)
            );
        }
    }

    #[test]
    fn reads_cidrs_like_kubernetes() {
        let cases: &[(&str, Option<&str>)] = &[
            ("203.0.113.0/25", Some("203.0.113.0/25")),
            // ParseCIDRSloppy: leading zeros are decimal, in the address and the length.
            ("203.0.113.000/025", Some("203.0.113.0/25")),
            // The network is returned: host bits cleared.
            ("10.1.2.3/24", Some("10.1.2.0/24")),
            ("0.0.0.0/0", Some("0.0.0.0/0")),
            ("198.18.0.1/32", Some("198.18.0.1/32")),
            ("2001:db8::1/32", Some("2001:db8::/32")),
            ("::/0", Some("::/0")),
            ("10.0.0.0/33", None),
            ("2001:db8::/129", None),
            ("10.0.0.0", None),
            ("10.0.0.0/", None),
            ("10.0.0.0/-1", None),
            ("10.0.0.0/2a", None),
            ("10.0.0.0/0024", Some("10.0.0.0/24")),
            ("10.0.0.0/256", None),
            ("10.0.0/8", None),
            (" 10.0.0.0/8", None),
            ("", None),
        ];
        for (input, want) in cases {
            let got = parse_cidr_sloppy(input).map(|n| n.to_string());
            assert_eq!(got.as_deref(), *want, "parsing {input:?}");
        }
    }

    #[test]
    fn reads_addresses_like_kubernetes() {
        let cases: &[(&str, Option<&str>)] = &[
            ("198.18.0.1", Some("198.18.0.1")),
            // Leading zeros are decimal, not octal (ParseIPSloppy).
            ("010.001.002.003", Some("10.1.2.3")),
            ("198.018.000.010", Some("198.18.0.10")),
            ("0.0.0.0", Some("0.0.0.0")),
            ("2001:db8::1", Some("2001:db8::1")),
            ("256.1.1.1", None),
            ("1.2.3", None),
            ("1.2.3.4.5", None),
            ("1.2.3.", None),
            ("1.2.3.0004", None),
            ("a.b.c.d", None),
            (" 1.2.3.4", None),
            ("", None),
            ("None", None),
            ("2001:db8::zz", None),
        ];
        for (input, want) in cases {
            let got = parse_ip_sloppy(input).map(|a| a.to_string());
            assert_eq!(got.as_deref(), *want, "parsing {input:?}");
        }
    }
}
