//! Conversions between the agent's model types and the datapath's map types, which hold
//! addresses and ports in network byte order exactly as packets carry them. Each family has
//! maps of its own (`KP_SERVICES`, `KP_SERVICES6`, ...) whose types differ only in their
//! address; the conversions are generic over it ([`WireAddr`]), so both families take the
//! same path.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;
use kproxy_common::{
    addr::{In6Addr, IpAddress},
    lb::{
        BE_F_ACTIVE, BackendOf, INLINE_SLOTS, SCOPE_ALL, SCOPE_INTERNAL, SOURCE_RANGE_ID_BITS,
        SVC_F_AFFINITY, SVC_F_DROP_EMPTY, SVC_F_EXT_LOCAL, SVC_F_EXTERNAL, SVC_F_MAGLEV,
        SVC_F_SOURCE_RANGES, ServiceKeyOf, ServiceValue, SourceRangeKey, SourceRangeKey6,
    },
};

use crate::{
    model::{Endpoint, FrontendKey, Protocol, Scope, WhenEmpty},
    sync::ServiceSettings,
};

/// An address of one family as the maps store it: IPv4 as a `u32`, IPv6 as an [`In6Addr`].
pub trait WireAddr: IpAddress + aya::Pod + Send + Sync + 'static {
    /// The family of the `KP_*6` maps.
    const IPV6: bool;
    /// The family's `KP_SOURCE_RANGES` key (the id, then the address).
    type RangeKey: aya::Pod + fmt::Debug + PartialEq + Send + Sync;

    /// The stored form of `addr`; `None` for an address of the other family.
    fn from_ip(addr: IpAddr) -> Option<Self>;
    fn to_ip(self) -> IpAddr;
    fn range_key(svc_id_be: u32, addr: Self) -> Self::RangeKey;
    /// The big-endian service port id and the address of a source range key.
    fn range_key_parts(key: &Self::RangeKey) -> (u32, Self);
}

impl WireAddr for u32 {
    const IPV6: bool = false;
    type RangeKey = SourceRangeKey;

    fn from_ip(addr: IpAddr) -> Option<Self> {
        match addr {
            IpAddr::V4(a) => Some(addr_to_wire(a)),
            IpAddr::V6(_) => None,
        }
    }

    fn to_ip(self) -> IpAddr {
        IpAddr::V4(addr_from_wire(self))
    }

    fn range_key(svc_id_be: u32, addr: Self) -> SourceRangeKey {
        SourceRangeKey { svc_id_be, addr }
    }

    fn range_key_parts(key: &SourceRangeKey) -> (u32, Self) {
        (key.svc_id_be, key.addr)
    }
}

impl WireAddr for In6Addr {
    const IPV6: bool = true;
    type RangeKey = SourceRangeKey6;

    fn from_ip(addr: IpAddr) -> Option<Self> {
        match addr {
            IpAddr::V4(_) => None,
            IpAddr::V6(a) => Some(Self::from(a)),
        }
    }

    fn to_ip(self) -> IpAddr {
        IpAddr::V6(Ipv6Addr::from(self))
    }

    fn range_key(svc_id_be: u32, addr: Self) -> SourceRangeKey6 {
        SourceRangeKey6 { svc_id_be, addr }
    }

    fn range_key_parts(key: &SourceRangeKey6) -> (u32, Self) {
        (key.svc_id_be, key.addr)
    }
}

/// The map name of family `A`: `v4`'s, or `v6`'s twin.
pub fn map_name<A: WireAddr>(v4: &'static str, v6: &'static str) -> &'static str {
    if A::IPV6 { v6 } else { v4 }
}

/// The map name of `addr`'s family: `v4`, or its IPv6 twin `v6`.
pub fn map_name_of(addr: IpAddr, v4: &'static str, v6: &'static str) -> &'static str {
    if addr.is_ipv6() { v6 } else { v4 }
}

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

/// The map key of a frontend in its family's services map; `None` for a frontend of the
/// other family. A NodePort's unspecified address is the family's unspecified address
/// (`NODEPORT_ADDR`, `::`).
pub fn service_key<A: WireAddr>(key: &FrontendKey) -> Option<ServiceKeyOf<A>> {
    Some(ServiceKeyOf {
        addr: A::from_ip(key.addr)?,
        port: port_to_wire(key.port),
        proto: key.proto.number(),
        scope: match key.scope {
            Scope::All => SCOPE_ALL,
            Scope::Internal => SCOPE_INTERNAL,
        },
    })
}

/// `None` for a protocol or scope the agent never writes.
pub fn frontend_key<A: WireAddr>(key: &ServiceKeyOf<A>) -> Option<FrontendKey> {
    Some(FrontendKey {
        addr: key.addr.to_ip(),
        port: port_from_wire(key.port),
        proto: Protocol::from_number(key.proto)?,
        scope: match key.scope {
            SCOPE_ALL => Scope::All,
            SCOPE_INTERNAL => Scope::Internal,
            _ => return None,
        },
    })
}

/// The value that publishes service port `svc_id` with `count` backends in `bank` (their ids
/// `inline` when it holds them itself, see `lb::inline_slots`) and `settings`.
pub fn service_value(
    svc_id: u32,
    count: u16,
    bank: u8,
    inline: [u32; INLINE_SLOTS],
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
    if settings.maglev {
        flags |= SVC_F_MAGLEV;
    }
    ServiceValue {
        id: svc_id,
        count,
        flags,
        bank,
        affinity_timeout_s: settings.affinity_timeout_s.unwrap_or(0),
        inline,
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
        maglev: value.flags & SVC_F_MAGLEV != 0,
    }
}

/// The `KP_SOURCE_RANGES` (`KP_SOURCE_RANGES6`) key of source range `range` of service port
/// `svc_id`, with its prefix length (the id is always matched whole); `None` for a range of
/// the other family.
pub fn source_range_key<A: WireAddr>(svc_id: u32, range: IpNet) -> Option<(u32, A::RangeKey)> {
    Some((
        SOURCE_RANGE_ID_BITS + u32::from(range.prefix_len()),
        A::range_key(svc_id.to_be(), A::from_ip(range.network())?),
    ))
}

/// The service port id and source range a source range key names; `None` for a prefix
/// length the agent never writes.
pub fn source_range<A: WireAddr>(prefix_len: u32, key: &A::RangeKey) -> Option<(u32, IpNet)> {
    let len = prefix_len.checked_sub(SOURCE_RANGE_ID_BITS)?;
    let (svc_id_be, addr) = A::range_key_parts(key);
    let net = IpNet::new(addr.to_ip(), u8::try_from(len).ok()?).ok()?;
    // The trie ignores bits beyond the prefix; the agent writes networks.
    (net.network() == net.addr()).then_some((u32::from_be(svc_id_be), net))
}

/// The map value of a backend of service port `svc_id` that takes new connections when
/// `active`, in its family's backends map; `None` for an endpoint of the other family.
pub fn backend<A: WireAddr>(
    endpoint: &Endpoint,
    svc_id: u32,
    active: bool,
) -> Option<BackendOf<A>> {
    Some(BackendOf {
        addr: A::from_ip(endpoint.addr)?,
        port: port_to_wire(endpoint.port),
        flags: if active { BE_F_ACTIVE } else { 0 },
        _pad: 0,
        svc_id,
    })
}

pub fn endpoint<A: WireAddr>(backend: &BackendOf<A>) -> Endpoint {
    Endpoint {
        addr: backend.addr.to_ip(),
        port: port_from_wire(backend.port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_packet_byte_order() {
        let key = FrontendKey::new(Ipv4Addr::new(198, 19, 0, 10).into(), 80, Protocol::Udp);
        let wire = service_key::<u32>(&key).expect("IPv4");
        assert_eq!(wire.addr.to_ne_bytes(), [198, 19, 0, 10]);
        assert_eq!(wire.port.to_ne_bytes(), [0, 80]);
        assert_eq!(wire.proto, 17);
        assert_eq!(wire.scope, SCOPE_ALL);
        assert_eq!(frontend_key(&wire), Some(key));
        let v6 = FrontendKey::new("2001:db8::a".parse().expect("address"), 80, Protocol::Udp);
        let wire6 = service_key::<In6Addr>(&v6).expect("IPv6");
        assert_eq!(
            wire6.addr.octets(),
            [
                0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a
            ]
        );
        assert_eq!(wire6.port.to_ne_bytes(), [0, 80]);
        assert_eq!(frontend_key(&wire6), Some(v6));
        // Each family's key only in its own map.
        assert_eq!(service_key::<u32>(&v6), None);
        assert_eq!(service_key::<In6Addr>(&key), None);
    }

    #[test]
    fn backends_of_each_family_round_trip_in_their_own_map() {
        let v4 = Endpoint {
            addr: Ipv4Addr::new(198, 18, 2, 2).into(),
            port: 8080,
        };
        let v6 = Endpoint {
            addr: "2001:db8::2:2".parse().expect("address"),
            port: 8080,
        };
        let b4 = backend::<u32>(&v4, 7, true).expect("IPv4");
        assert_eq!((endpoint(&b4), b4.svc_id, b4.is_active()), (v4, 7, true));
        assert_eq!(b4.port.to_ne_bytes(), [0x1f, 0x90]);
        let b6 = backend::<In6Addr>(&v6, 7, false).expect("IPv6");
        assert_eq!((endpoint(&b6), b6.svc_id, b6.is_active()), (v6, 7, false));
        assert_eq!(backend::<u32>(&v6, 7, true), None);
        assert_eq!(backend::<In6Addr>(&v4, 7, true), None);
    }

    #[test]
    fn node_ports_and_scopes_have_their_wire_keys() {
        for v6 in [false, true] {
            let node_port = FrontendKey::node_port(v6, 30080, Protocol::Tcp);
            node_port_and_scopes_round_trip::<u32>(&node_port, !v6);
            node_port_and_scopes_round_trip::<In6Addr>(&node_port, v6);
        }
    }

    /// A NodePort's key in family `A`'s map (`of_family`: the NodePort is of that family):
    /// the unspecified address, each scope, and no scope the agent never writes.
    fn node_port_and_scopes_round_trip<A: WireAddr>(node_port: &FrontendKey, of_family: bool) {
        let Some(wire) = service_key::<A>(node_port) else {
            assert!(!of_family, "{node_port}");
            return;
        };
        assert!(of_family, "{node_port}");
        assert!(wire.addr.is_unspecified());
        assert_eq!(wire.port, 30080u16.to_be());
        assert_eq!(frontend_key(&wire), Some(*node_port));
        let internal = node_port.with_scope(Scope::Internal);
        let wire = service_key::<A>(&internal).expect("same family");
        assert_eq!(wire.scope, SCOPE_INTERNAL);
        assert_eq!(frontend_key(&wire), Some(internal));
        assert_eq!(
            frontend_key(&ServiceKeyOf { scope: 7, ..wire }),
            None,
            "a scope the agent never writes"
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
            maglev: true,
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
                ServiceSettings {
                    maglev: true,
                    ..ServiceSettings::default()
                },
                SVC_F_MAGLEV,
            ),
            (
                all,
                SVC_F_AFFINITY
                    | SVC_F_DROP_EMPTY
                    | SVC_F_EXTERNAL
                    | SVC_F_EXT_LOCAL
                    | SVC_F_SOURCE_RANGES
                    | SVC_F_MAGLEV,
            ),
        ];
        for (settings, flags) in cases {
            let value = service_value(7, 3, 1, [4, 5, 6, 0], &settings);
            assert_eq!(value.flags, flags, "{settings:?}");
            assert_eq!((value.id, value.count, value.bank), (7, 3, 1));
            assert_eq!(value.inline, [4, 5, 6, 0]);
            assert_eq!(settings_of(&value), settings);
        }
        assert_eq!(
            service_value(7, 3, 1, [0; INLINE_SLOTS], &all).affinity_timeout_s,
            60
        );
    }

    #[test]
    fn source_range_keys_match_the_id_whole_then_the_prefix() {
        let range: IpNet = "203.0.113.0/25".parse().expect("cidr");
        let (len, key) = source_range_key::<u32>(0x0102_0304, range).expect("IPv4");
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
        assert_eq!(source_range::<u32>(len, &key), Some((0x0102_0304, range)));
        assert_eq!(source_range::<u32>(31, &key), None, "shorter than the id");
        assert_eq!(
            source_range::<u32>(65, &key),
            None,
            "longer than an address"
        );
        let host_bits = SourceRangeKey {
            addr: addr_to_wire(Ipv4Addr::new(203, 0, 113, 1)),
            ..key
        };
        assert_eq!(source_range::<u32>(len, &host_bits), None);
        assert_eq!(source_range_key::<In6Addr>(1, range), None, "an IPv4 range");
    }

    #[test]
    fn ipv6_source_range_keys_are_the_id_then_sixteen_address_bytes() {
        let range: IpNet = "2001:db8:7::/48".parse().expect("cidr");
        let (len, key) = source_range_key::<In6Addr>(0x0102_0304, range).expect("IPv6");
        assert_eq!(len, 32 + 48);
        let bytes: Vec<u8> = key
            .svc_id_be
            .to_ne_bytes()
            .into_iter()
            .chain(key.addr.octets())
            .collect();
        assert_eq!(
            bytes[..10],
            [1, 2, 3, 4, 0x20, 0x01, 0x0d, 0xb8, 0, 7],
            "{bytes:?}"
        );
        assert!(bytes[10..].iter().all(|b| *b == 0));
        assert_eq!(
            source_range::<In6Addr>(len, &key),
            Some((0x0102_0304, range))
        );
        assert_eq!(
            source_range::<In6Addr>(32 + 129, &key),
            None,
            "longer than an address"
        );
        let host_bits = SourceRangeKey6 {
            addr: In6Addr::from("2001:db8:7::1".parse::<Ipv6Addr>().expect("address")),
            ..key
        };
        assert_eq!(source_range::<In6Addr>(len, &host_bits), None);
        assert_eq!(source_range_key::<u32>(1, range), None, "an IPv6 range");
    }
}
