//! IPv6 parsing: Ethernet + IPv6 + extension headers + TCP/UDP into a flow tuple.
//!
//! Extension headers (hop-by-hop, routing, destination options, fragment) are walked, at most
//! `MAX_EXT_HEADERS` of them and 256 bytes together, to find the transport header. Anything else before it
//! (Authentication or ESP headers, more headers than that, a header cut short) leaves the
//! packet `Unparsed`: counted and passed when it is for a VIP, never translated with a wrong
//! offset.

use kproxy_common::{
    addr::In6Addr,
    config::{IPPROTO_TCP, IPPROTO_UDP},
    ct::FlowKeyOf,
};

use crate::{
    packet::Packet,
    parse::{ETH_HLEN, ETH_P_IPV6, EthHdr, Fragment, L3_OFF, Parsed, transport},
};

pub const IPV6_HLEN: usize = 40;
pub const IPPROTO_ICMPV6: u8 = 58;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_DEST: u8 = 60;
/// Authentication header: its transport header follows it, but kproxy does not walk it (a
/// translated packet would fail the AH check anyway).
const NEXTHDR_AUTH: u8 = 51;
/// Extension headers walked before giving up: a hop-by-hop, a routing, a fragment and a
/// destination options header, the most a sender puts before the transport header in
/// practice (Cilium's datapath walks as many).
const MAX_EXT_HEADERS: usize = 4;
/// The farthest a transport header may start: extension headers longer than 256 bytes
/// together leave a packet `Unparsed`. Keeps every offset into the packet small enough for
/// the verifier to bound when it is read back from memory (`packet::MAX_FRAME_OFF`).
pub const MAX_L4_OFF: usize = L3_OFF + IPV6_HLEN + 256;
/// Fragment header: offset in 8-byte units in the upper 13 bits, M flag in the lowest.
const FRAG_OFFSET_MASK: u16 = 0xfff8;
const FRAG_MF: u16 = 0x0001;

/// The fixed IPv6 header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6Hdr {
    /// Version (4 bits), traffic class, flow label.
    pub vtc_flow: u32,
    pub payload_len: u16,
    pub nexthdr: u8,
    pub hop_limit: u8,
    pub saddr: In6Addr,
    pub daddr: In6Addr,
}

/// The IPv6 Fragment header.
#[repr(C)]
#[derive(Clone, Copy)]
struct FragHdr {
    nexthdr: u8,
    _reserved: u8,
    /// Offset and M flag (network byte order).
    frag_off: u16,
    id: u32,
}

/// Where the transport header is: the protocol after the last extension header walked, its
/// offset, and the fragment the packet is.
struct Transport {
    proto: u8,
    l4_off: usize,
    fragment: Fragment,
    frag_id: u32,
    /// Stopped before the transport header (see the module comment).
    unparsed: bool,
}

/// Parses Ethernet, IPv6, its extension headers and the TCP/UDP ports.
#[inline(always)]
pub fn parse6<P: Packet>(pkt: &mut P) -> Parsed<In6Addr> {
    if !pkt.ensure(ETH_HLEN + IPV6_HLEN) {
        return Parsed::NotIp;
    }
    let Some(eth) = pkt.read::<EthHdr>(0) else {
        return Parsed::NotIp;
    };
    if eth.proto != ETH_P_IPV6.to_be() {
        return Parsed::NotIp;
    }
    let Some(ip) = pkt.read::<Ipv6Hdr>(L3_OFF) else {
        return Parsed::NotIp;
    };
    let payload = usize::from(u16::from_be(ip.payload_len));
    let frame_len = pkt.len() as usize;
    // BIG TCP: a GSO packet over 64 KiB says 0 and means "the rest of the frame".
    let payload = if payload == 0 && frame_len > L3_OFF + IPV6_HLEN + 0xffff {
        frame_len - L3_OFF - IPV6_HLEN
    } else {
        payload
    };
    let end = L3_OFF + IPV6_HLEN + payload;
    let sane = u32::from_be(ip.vtc_flow) >> 28 == 6 && end <= frame_len;
    let t = walk_extension_headers(pkt, ip.nexthdr, end);
    if t.unparsed {
        return Parsed::Unparsed(ip.daddr);
    }
    if t.proto != IPPROTO_TCP && t.proto != IPPROTO_UDP {
        let has_header = sane && t.fragment != Fragment::Later;
        return Parsed::Other {
            daddr: ip.daddr,
            proto: t.proto,
            l4_off: if has_header { t.l4_off } else { 0 },
        };
    }
    if !sane {
        return Parsed::Malformed(ip.daddr);
    }
    transport(
        pkt,
        FlowKeyOf::new(ip.saddr, ip.daddr, 0, 0, t.proto),
        t.l4_off,
        end,
        t.fragment,
        t.frag_id,
    )
}

/// Walks the extension headers that follow the fixed header (`nexthdr` its Next Header) in a
/// datagram ending at `end`.
#[inline(always)]
fn walk_extension_headers<P: Packet>(pkt: &mut P, nexthdr: u8, end: usize) -> Transport {
    let mut t = Transport {
        proto: nexthdr,
        l4_off: L3_OFF + IPV6_HLEN,
        fragment: Fragment::None,
        frag_id: 0,
        unparsed: false,
    };
    for _ in 0..MAX_EXT_HEADERS {
        match t.proto {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                // Next Header, then the length in 8-byte units beyond the first 8.
                let Some(hdr) = read_within::<[u8; 2], P>(pkt, t.l4_off, end) else {
                    t.unparsed = true;
                    return t;
                };
                t.proto = hdr[0];
                t.l4_off += (usize::from(hdr[1]) + 1) * 8;
                if t.l4_off > MAX_L4_OFF {
                    t.unparsed = true;
                    return t;
                }
            }
            NEXTHDR_FRAGMENT => {
                let Some(frag) = read_within::<FragHdr, P>(pkt, t.l4_off, end) else {
                    t.unparsed = true;
                    return t;
                };
                let off = u16::from_be(frag.frag_off);
                t.frag_id = frag.id;
                t.fragment = if off & FRAG_OFFSET_MASK != 0 {
                    Fragment::Later
                } else if off & FRAG_MF != 0 {
                    Fragment::First
                } else {
                    // An atomic fragment (RFC 6946): a whole packet.
                    Fragment::None
                };
                t.proto = frag.nexthdr;
                t.l4_off += 8;
                if t.fragment == Fragment::Later {
                    // What follows is payload; its protocol is the Fragment header's.
                    return t;
                }
            }
            NEXTHDR_AUTH => {
                t.unparsed = true;
                return t;
            }
            _ => return t,
        }
    }
    t.unparsed = is_extension_header(t.proto) || t.proto == NEXTHDR_AUTH;
    t
}

/// Whether `proto` is an extension header kproxy walks.
#[inline(always)]
const fn is_extension_header(proto: u8) -> bool {
    matches!(
        proto,
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_FRAGMENT
    )
}

/// A `T` at `off` if it lies inside the datagram (which ends at `end`) and the packet.
#[inline(always)]
fn read_within<T: Copy, P: Packet>(pkt: &mut P, off: usize, end: usize) -> Option<T> {
    let len = off + core::mem::size_of::<T>();
    if len > end || !pkt.ensure(len) {
        return None;
    }
    pkt.read::<T>(off)
}
