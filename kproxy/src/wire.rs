//! Conversions between the agent's model types and the datapath's map types, which hold
//! addresses and ports in network byte order exactly as packets carry them.

use std::net::{IpAddr, Ipv4Addr};

use kproxy_common::lb::{
    BE_F_ACTIVE, Backend, SVC_F_AFFINITY, SVC_F_DROP_EMPTY, ServiceKey, ServiceValue,
};

use crate::model::{Endpoint, FrontendKey, Protocol, WhenEmpty};

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

/// The map key of a frontend; `None` for IPv6, which the datapath does not serve yet.
pub fn service_key(key: &FrontendKey) -> Option<ServiceKey> {
    let IpAddr::V4(addr) = key.addr else {
        return None;
    };
    Some(ServiceKey {
        addr: addr_to_wire(addr),
        port: port_to_wire(key.port),
        proto: key.proto.number(),
        scope: 0,
    })
}

/// `None` for a protocol the agent never writes.
pub fn frontend_key(key: &ServiceKey) -> Option<FrontendKey> {
    Some(FrontendKey {
        addr: IpAddr::V4(addr_from_wire(key.addr)),
        port: port_from_wire(key.port),
        proto: Protocol::from_number(key.proto)?,
    })
}

pub fn service_value(
    svc_id: u32,
    count: u16,
    bank: u8,
    affinity_timeout_s: Option<u32>,
    when_empty: WhenEmpty,
) -> ServiceValue {
    let mut flags = 0;
    if affinity_timeout_s.is_some() {
        flags |= SVC_F_AFFINITY;
    }
    if when_empty == WhenEmpty::Drop {
        flags |= SVC_F_DROP_EMPTY;
    }
    ServiceValue {
        id: svc_id,
        count,
        flags,
        bank,
        affinity_timeout_s: affinity_timeout_s.unwrap_or(0),
    }
}

/// The affinity timeout a service value carries, if affinity is on.
pub fn affinity_of(value: &ServiceValue) -> Option<u32> {
    (value.flags & SVC_F_AFFINITY != 0).then_some(value.affinity_timeout_s)
}

/// What a service value says new connections get while it has no backends.
pub fn when_empty_of(value: &ServiceValue) -> WhenEmpty {
    if value.flags & SVC_F_DROP_EMPTY == 0 {
        WhenEmpty::Reject
    } else {
        WhenEmpty::Drop
    }
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
        let key = FrontendKey {
            addr: Ipv4Addr::new(198, 19, 0, 10).into(),
            port: 80,
            proto: Protocol::Udp,
        };
        let wire = service_key(&key).expect("IPv4");
        assert_eq!(wire.addr.to_ne_bytes(), [198, 19, 0, 10]);
        assert_eq!(wire.port.to_ne_bytes(), [0, 80]);
        assert_eq!(wire.proto, 17);
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
        let value = service_value(7, 3, 1, Some(60), WhenEmpty::Drop);
        assert_eq!(affinity_of(&value), Some(60));
        assert_eq!(when_empty_of(&value), WhenEmpty::Drop);
        let plain = service_value(7, 3, 1, None, WhenEmpty::Reject);
        assert_eq!(affinity_of(&plain), None);
        assert_eq!(when_empty_of(&plain), WhenEmpty::Reject);
    }
}
