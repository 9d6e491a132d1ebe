//! IP address parsing the way Kubernetes does it.
//!
//! Kubernetes parses addresses with `netutils.ParseIPSloppy`, which accepts IPv4 octets with
//! leading zeros and reads them as *decimal* (`010.001.002.003` is 10.1.2.3), for
//! compatibility with objects stored before Go 1.17 rejected them. Rust's parser rejects such
//! strings, so IPv4 is parsed here by hand; IPv6 uses the standard parser.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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

#[cfg(test)]
mod tests {
    use super::*;

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
