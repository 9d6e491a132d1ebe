//! Building frames (with etherparse, checksums computed in full) and checking frames the
//! datapath wrote: field access by offset and exact checksum verification.

use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{
    Icmpv6Type, IpHeaders, Ipv6Extensions, Ipv6Header, PacketBuilder, PacketBuilderStep,
};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// TCP flags for `tcp_frame`.
#[derive(Clone, Copy, Default)]
pub struct Flags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
}

pub const SYN: Flags = Flags {
    syn: true,
    ack: false,
    fin: false,
    rst: false,
};
pub const SYN_ACK: Flags = Flags {
    syn: true,
    ack: true,
    fin: false,
    rst: false,
};
pub const ACK: Flags = Flags {
    syn: false,
    ack: true,
    fin: false,
    rst: false,
};
pub const FIN_ACK: Flags = Flags {
    syn: false,
    ack: true,
    fin: true,
    rst: false,
};
pub const RST: Flags = Flags {
    syn: false,
    ack: false,
    fin: false,
    rst: true,
};

pub fn tcp_frame(
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    flags: Flags,
    payload: &[u8],
) -> Vec<u8> {
    tcp_over(
        PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC).ipv4(src.0.octets(), dst.0.octets(), 64),
        (src.1, dst.1),
        flags,
        payload,
    )
}

pub fn udp_frame(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC)
        .ipv4(src.0.octets(), dst.0.octets(), 64)
        .udp(src.1, dst.1)
        .write(&mut out, payload)
        .expect("building a UDP frame");
    out
}

/// A TCP segment in an IPv6 frame, from `src` to `dst`.
pub fn tcp6_frame(
    src: (Ipv6Addr, u16),
    dst: (Ipv6Addr, u16),
    flags: Flags,
    payload: &[u8],
) -> Vec<u8> {
    tcp_over(
        PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC).ipv6(src.0.octets(), dst.0.octets(), 64),
        (src.1, dst.1),
        flags,
        payload,
    )
}

/// `tcp6_frame` with `extensions` between the IPv6 header and the TCP one.
pub fn tcp6_frame_with(
    extensions: Ipv6Extensions,
    src: (Ipv6Addr, u16),
    dst: (Ipv6Addr, u16),
    flags: Flags,
    payload: &[u8],
) -> Vec<u8> {
    let ip = Ipv6Header {
        hop_limit: 64,
        source: src.0.octets(),
        destination: dst.0.octets(),
        ..Default::default()
    };
    tcp_over(
        PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC).ip(IpHeaders::Ipv6(ip, extensions)),
        (src.1, dst.1),
        flags,
        payload,
    )
}

fn tcp_over(
    ip: PacketBuilderStep<IpHeaders>,
    (sport, dport): (u16, u16),
    flags: Flags,
    payload: &[u8],
) -> Vec<u8> {
    let mut b = ip.tcp(sport, dport, 1000, 64_000);
    if flags.syn {
        b = b.syn();
    }
    if flags.ack {
        b = b.ack(2000);
    }
    if flags.fin {
        b = b.fin();
    }
    if flags.rst {
        b = b.rst();
    }
    let mut out = Vec::new();
    b.write(&mut out, payload).expect("building a TCP frame");
    out
}

/// A UDP datagram in an IPv6 frame, from `src` to `dst`.
pub fn udp6_frame(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC)
        .ipv6(src.0.octets(), dst.0.octets(), 64)
        .udp(src.1, dst.1)
        .write(&mut out, payload)
        .expect("building a UDP frame");
    out
}

/// An ICMPv6 message of `icmp_type` from `src` to `dst` (the MACs as `tcp6_frame`'s, or
/// swapped with `towards_client`), carrying `payload`.
pub fn icmp6_frame(
    towards_client: bool,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    icmp_type: Icmpv6Type,
    payload: &[u8],
) -> Vec<u8> {
    let (from, to) = if towards_client {
        (NODE_MAC, CLIENT_MAC)
    } else {
        (CLIENT_MAC, NODE_MAC)
    };
    let mut out = Vec::new();
    PacketBuilder::ethernet2(from, to)
        .ipv6(src.octets(), dst.octets(), 64)
        .icmpv6(icmp_type)
        .write(&mut out, payload)
        .expect("building an ICMPv6 frame");
    out
}

/// The source of an IPv6 frame without extension headers: address and port.
pub fn src6(frame: &[u8]) -> (Ipv6Addr, u16) {
    (
        addr6(&frame[22..38]),
        u16::from_be_bytes([frame[54], frame[55]]),
    )
}

/// Its destination.
pub fn dst6(frame: &[u8]) -> (Ipv6Addr, u16) {
    (
        addr6(&frame[38..54]),
        u16::from_be_bytes([frame[56], frame[57]]),
    )
}

fn addr6(bytes: &[u8]) -> Ipv6Addr {
    Ipv6Addr::from(<[u8; 16]>::try_from(bytes).expect("16 bytes"))
}

/// Sets the UDP checksum field of `frame` to 0 ("no checksum").
pub fn without_udp_checksum(mut frame: Vec<u8>) -> Vec<u8> {
    frame[40] = 0;
    frame[41] = 0;
    frame
}

fn ihl(frame: &[u8]) -> usize {
    usize::from(frame[14] & 0x0f) * 4
}

pub fn src(frame: &[u8]) -> (Ipv4Addr, u16) {
    let l4 = 14 + ihl(frame);
    (
        Ipv4Addr::new(frame[26], frame[27], frame[28], frame[29]),
        u16::from_be_bytes([frame[l4], frame[l4 + 1]]),
    )
}

pub fn dst(frame: &[u8]) -> (Ipv4Addr, u16) {
    let l4 = 14 + ihl(frame);
    (
        Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33]),
        u16::from_be_bytes([frame[l4 + 2], frame[l4 + 3]]),
    )
}

fn ones_sum(bytes: &[u8]) -> u32 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// Checks the IPv4 header checksum and the TCP/UDP/ICMP checksum of `frame` in full.
pub fn assert_checksums(frame: &[u8]) {
    let ip_len = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    let hl = ihl(frame);
    assert_eq!(
        ones_sum(&frame[14..14 + hl]),
        0xffff,
        "IPv4 header checksum"
    );
    let l4 = &frame[14 + hl..14 + ip_len];
    match frame[23] {
        1 => assert_eq!(ones_sum(l4), 0xffff, "ICMP checksum"),
        proto @ (6 | 17) => {
            if proto == 17 && l4[6] == 0 && l4[7] == 0 {
                return; // UDP without checksum
            }
            let mut pseudo = Vec::from(&frame[26..34]);
            pseudo.extend_from_slice(&[0, proto]);
            pseudo.extend_from_slice(&u16::try_from(l4.len()).expect("small frame").to_be_bytes());
            pseudo.extend_from_slice(l4);
            assert_eq!(ones_sum(&pseudo), 0xffff, "L4 checksum (protocol {proto})");
        }
        other => panic!("unexpected IP protocol {other}"),
    }
}

/// An ICMP error `kind` from `src` to `dst` quoting the first `quote_len` bytes of the IPv4
/// packet in `offending` (an Ethernet frame), checksums computed in full.
pub fn icmp_error(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    kind: etherparse::Icmpv4Type,
    offending: &[u8],
    quote_len: usize,
) -> Vec<u8> {
    let quote = &offending[14..14 + quote_len];
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .icmpv4(kind)
        .write(&mut out, quote)
        .expect("building an ICMP error");
    out
}

/// "Fragmentation needed" with a next-hop MTU of 1280 (path MTU discovery).
pub const FRAG_NEEDED: etherparse::Icmpv4Type = etherparse::Icmpv4Type::DestinationUnreachable(
    etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1280 },
);

/// "Port unreachable".
pub const PORT_UNREACHABLE: etherparse::Icmpv4Type =
    etherparse::Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::Port);
