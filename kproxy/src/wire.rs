//! Conversions between the agent's model types and the datapath's map types, which hold
//! addresses and ports in network byte order exactly as packets carry them.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use kproxy_common::lb::{
    BE_F_ACTIVE, Backend, SCOPE_ALL, SCOPE_INTERNAL, SOURCE_RANGE_ID_BITS, SVC_F_AFFINITY,
    SVC_F_DROP_EMPTY, SVC_F_EXT_LOCAL, SVC_F_EXTERNAL, SVC_F_SOURCE_RANGES, ServiceKey,
    ServiceValue, SourceRangeKey,
};

use crate::{
    model::{Endpoint, FrontendKey, Protocol, Scope, WhenEmpty},
    sync::ServiceSettings,
};

/// An IPv4 address as the datapath stores it (the packet's bytes read as a native u32).
pub fn addr_to_wire(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

pub fn addr_from_wire(addr: u32) -> Ipv4Addr {
    Ipv4Addr::from(addr.to_ne_bytes())
}

pub fn port_to_wire(port: u16) -> u16 {
    port.to_be()
}

pub fn port_from_wire(port: u16) -> u16 {
    u16::from_be(port)
}

/// The map key of a frontend; `None` for IPv6, which the datapath does not serve yet. A
/// NodePort's unspecified address is `NODEPORT_ADDR` (0).
pub fn service_key(key: &FrontendKey) -> Option<ServiceKey> {
    let IpAddr::V4(addr) = key.addr else {
        return None;
    };
    Some(ServiceKey {
        addr: addr_to_wire(addr),
        port: port_to_wire(key.port),
        proto: key.proto.number(),
        scope: match key.scope {
            Scope::All => SCOPE_ALL,
            Scope::Internal => SCOPE_INTERNAL,
        },
    })
}

/// `None` for a protocol or scope the agent never writes.
pub fn frontend_key(key: &ServiceKey) -> Option<FrontendKey> {
    Some(FrontendKey {
        addr: IpAddr::V4(addr_from_wire(key.addr)),
        port: port_from_wire(key.port),
        proto: Protocol::from_number(key.proto)?,
        scope: match key.scope {
            SCOPE_ALL => Scope::All,
            SCOPE_INTERNAL => Scope::Internal,
            _ => return None,
        },
    })
}

pub fn service_value(
    svc_id: u32,
    count: u16,
    bank: u8,
    settings: &ServiceSettings,
) -> ServiceValue {
    let mut flags = 0;
    if settings.affinity_timeout_s.is_some() {
        flags |= SVC_F_AFFINITY;
    }
    if settings.when_empty == WhenEmpty::Drop {
        flags |= SVC_F_DROP_EMPTY;
    }
    if settings.external {
        flags |= SVC_F_EXTERNAL;
    }
    if settings.external_local {
        flags |= SVC_F_EXT_LOCAL;
    }
    if settings.source_ranges {
        flags |= SVC_F_SOURCE_RANGES;
    }
    ServiceValue {
        id: svc_id,
        count,
        flags,
        bank,
        affinity_timeout_s: settings.affinity_timeout_s.unwrap_or(0),
    }
}

/// What a service value says besides its backends.
pub fn settings_of(value: &ServiceValue) -> ServiceSettings {
    ServiceSettings {
        affinity_timeout_s: (value.flags & SVC_F_AFFINITY != 0).then_some(value.affinity_timeout_s),
        when_empty: if value.flags & SVC_F_DROP_EMPTY == 0 {
            WhenEmpty::Reject
        } else {
            WhenEmpty::Drop
        },
        external: value.flags & SVC_F_EXTERNAL != 0,
        external_local: value.flags & SVC_F_EXT_LOCAL != 0,
        source_ranges: value.flags & SVC_F_SOURCE_RANGES != 0,
    }
}

/// The `KP_SOURCE_RANGES` key of source range `range` of service port `svc_id`, with its
/// prefix length (the id is always matched whole).
pub fn source_range_key(svc_id: u32, range: Ipv4Net) -> (u32, SourceRangeKey) {
    (
        SOURCE_RANGE_ID_BITS + u32::from(range.prefix_len()),
        SourceRangeKey {
            svc_id_be: svc_id.to_be(),
            addr: addr_to_wire(range.network()),
        },
    )
}

/// The service port id and source range a `KP_SOURCE_RANGES` key names; `None` for a
/// prefix length the agent never writes.
pub fn source_range(prefix_len: u32, key: &SourceRangeKey) -> Option<(u32, Ipv4Net)> {
    let len = prefix_len.checked_sub(SOURCE_RANGE_ID_BITS)?;
    let net = Ipv4Net::new(addr_from_wire(key.addr), u8::try_from(len).ok()?).ok()?;
    // The trie ignores bits beyond the prefix; the agent writes networks.
    (net.network() == net.addr()).then_some((u32::from_be(key.svc_id_be), net))
}

/// The map value of a backend of service port `svc_id` that takes new connections when
/// `active`; `None` for IPv6.
pub fn backend(endpoint: &Endpoint, svc_id: u32, active: bool) -> Option<Backend> {
    let IpAddr::V4(addr) = endpoint.addr else {
        return None;
    };
    Some(Backend {
        addr: addr_to_wire(addr),
        port: port_to_wire(endpoint.port),
        flags: if active { BE_F_ACTIVE } else { 0 },
        _pad: 0,
        svc_id,
    })
}

pub fn endpoint(backend: &Backend) -> Endpoint {
    Endpoint {
        addr: IpAddr::V4(addr_from_wire(backend.addr)),
        port: port_from_wire(backend.port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_packet_byte_order() {
        let key = FrontendKey::new(Ipv4Addr::new(198, 19, 0, 10).into(), 80, Protocol::Udp);
        let wire = service_key(&key).expect("IPv4");
        assert_eq!(wire.addr.to_ne_bytes(), [198, 19, 0, 10]);
        assert_eq!(wire.port.to_ne_bytes(), [0, 80]);
        assert_eq!(wire.proto, 17);
        assert_eq!(wire.scope, SCOPE_ALL);
        assert_eq!(frontend_key(&wire), Some(key));
        let ep = Endpoint {
            addr: Ipv4Addr::new(198, 18, 2, 2).into(),
            port: 8080,
        };
        let wire_backend = backend(&ep, 7, true).expect("IPv4");
        assert_eq!(endpoint(&wire_backend), ep);
        assert!(wire_backend.is_active());
        assert!(!backend(&ep, 7, false).expect("IPv4").is_active());
        let v6 = FrontendKey {
            addr: "2001:db8::1".parse().expect("address"),
            ..key
        };
        assert_eq!(service_key(&v6), None, "the datapath is IPv4 only for now");
    }

    #[test]
    fn node_ports_and_scopes_have_their_wire_keys() {
        let node_port = FrontendKey::node_port(false, 30080, Protocol::Tcp);
        let wire = service_key(&node_port).expect("IPv4");
        assert_eq!(wire.addr, kproxy_common::lb::NODEPORT_ADDR);
        assert_eq!(wire.port, 30080u16.to_be());
        assert_eq!(frontend_key(&wire), Some(node_port));
        let internal = node_port.with_scope(Scope::Internal);
        let wire = service_key(&internal).expect("IPv4");
        assert_eq!(wire.scope, SCOPE_INTERNAL);
        assert_eq!(frontend_key(&wire), Some(internal));
        assert_eq!(
            frontend_key(&ServiceKey { scope: 7, ..wire }),
            None,
            "a scope the agent never writes"
        );
        assert_eq!(
            service_key(&FrontendKey::node_port(true, 30080, Protocol::Tcp)),
            None
        );
    }

    #[test]
    fn settings_become_flags_and_back() {
        let all = ServiceSettings {
            affinity_timeout_s: Some(60),
            when_empty: WhenEmpty::Drop,
            external: true,
            external_local: true,
            source_ranges: true,
        };
        // Each setting alone, then all of them: (settings, flags).
        let cases = [
            (ServiceSettings::default(), 0),
            (
                ServiceSettings {
                    affinity_timeout_s: Some(60),
                    ..ServiceSettings::default()
                },
                SVC_F_AFFINITY,
            ),
            (
                ServiceSettings {
                    when_empty: WhenEmpty::Drop,
                    ..ServiceSettings::default()
                },
                SVC_F_DROP_EMPTY,
            ),
            (
                ServiceSettings {
                    external: true,
                    ..ServiceSettings::default()
                },
                SVC_F_EXTERNAL,
            ),
            (
                ServiceSettings {
                    external_local: true,
                    ..ServiceSettings::default()
                },
                SVC_F_EXT_LOCAL,
            ),
            (
                ServiceSettings {
                    source_ranges: true,
                    ..ServiceSettings::default()
                },
                SVC_F_SOURCE_RANGES,
            ),
            (
                all,
                SVC_F_AFFINITY
                    | SVC_F_DROP_EMPTY
                    | SVC_F_EXTERNAL
                    | SVC_F_EXT_LOCAL
                    | SVC_F_SOURCE_RANGES,
            ),
        ];
        for (settings, flags) in cases {
            let value = service_value(7, 3, 1, &settings);
            assert_eq!(value.flags, flags, "{settings:?}");
            assert_eq!((value.id, value.count, value.bank), (7, 3, 1));
            assert_eq!(settings_of(&value), settings);
        }
        assert_eq!(service_value(7, 3, 1, &all).affinity_timeout_s, 60);
    }

    #[test]
    fn source_range_keys_match_the_id_whole_then_the_prefix() {
        let range: Ipv4Net = "203.0.113.0/25".parse().expect("cidr");
        let (len, key) = source_range_key(0x0102_0304, range);
        assert_eq!(len, 32 + 25);
        // The id first, big-endian, then the address as packets carry it: the trie compares
        // bytes from the start of the key.
        let bytes: Vec<u8> = key
            .svc_id_be
            .to_ne_bytes()
            .into_iter()
            .chain(key.addr.to_ne_bytes())
            .collect();
        assert_eq!(bytes, [1, 2, 3, 4, 203, 0, 113, 0]);
        assert_eq!(source_range(len, &key), Some((0x0102_0304, range)));
        assert_eq!(source_range(31, &key), None, "shorter than the id");
        assert_eq!(source_range(65, &key), None, "longer than an address");
        let host_bits = SourceRangeKey {
            addr: addr_to_wire(Ipv4Addr::new(203, 0, 113, 1)),
            ..key
        };
        assert_eq!(source_range(len, &host_bits), None);
    }
}
