//! Bounds-checked header parsing: Ethernet + IPv4 + TCP/UDP into a flow tuple.

use core::mem::size_of;

use kproxy_common::{
    config::{IPPROTO_TCP, IPPROTO_UDP},
    ct::FlowKey,
};

use crate::packet::Packet;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
/// Offset of the IPv4 header (no VLAN tags: the programs sit on untagged links).
pub const L3_OFF: usize = ETH_HLEN;
pub const IP_CSUM_OFF: usize = L3_OFF + 10;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

const IP_MF: u16 = 0x2000;
const IP_OFFSET_MASK: u16 = 0x1fff;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub ver_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub saddr: u32,
    pub daddr: u32,
}

/// Minimum L4 header bytes read: ports for both, up to the flags byte for TCP.
const TCP_READ_LEN: usize = 14;
const UDP_HLEN: usize = 8;

/// Where a packet's IPv4 datagram sits among fragments.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// A whole datagram.
    None,
    /// The first fragment: it carries the L4 header, more fragments follow.
    First,
    /// A later fragment: no L4 header, ports must come from the fragment table.
    Later,
}

/// A parsed IPv4 TCP/UDP packet.
#[derive(Clone, Copy)]
pub struct Ipv4Flow {
    /// The tuple as it appears in the packet (ports are 0 in a `Fragment::Later`).
    pub key: FlowKey,
    pub l4_off: usize,
    /// TCP flags byte, 0 for UDP and for later fragments.
    pub tcp_flags: u8,
    pub fragment: Fragment,
    /// IP identification, for the fragment table.
    pub ip_id: u16,
}

impl Ipv4Flow {
    #[inline(always)]
    pub fn has_l4_header(&self) -> bool {
        self.fragment != Fragment::Later
    }

    #[inline(always)]
    pub fn is_tcp(&self) -> bool {
        self.key.proto == IPPROTO_TCP
    }

    /// A SYN without ACK: a client opening a connection.
    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }
}

/// What the parser found.
pub enum Parsed {
    /// Not IPv4 TCP/UDP: never ours, passes untouched.
    Other,
    /// IPv4 TCP/UDP whose headers are cut short.
    Truncated,
    Ipv4(Ipv4Flow),
}

/// Parses Ethernet, IPv4 and the TCP/UDP ports.
#[inline(always)]
pub fn parse<P: Packet>(pkt: &mut P) -> Parsed {
    if !pkt.ensure(ETH_HLEN + size_of::<Ipv4Hdr>()) {
        return Parsed::Other;
    }
    let Some(eth) = pkt.read::<EthHdr>(0) else {
        return Parsed::Other;
    };
    if eth.proto != ETH_P_IP.to_be() {
        return Parsed::Other;
    }
    let Some(ip) = pkt.read::<Ipv4Hdr>(L3_OFF) else {
        return Parsed::Other;
    };
    if ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP {
        return Parsed::Other;
    }
    let ihl = usize::from(ip.ver_ihl & 0x0f) * 4;
    if ip.ver_ihl >> 4 != 4 || ihl < size_of::<Ipv4Hdr>() {
        return Parsed::Truncated;
    }
    let frag = u16::from_be(ip.frag_off);
    let fragment = if frag & IP_OFFSET_MASK != 0 {
        Fragment::Later
    } else if frag & IP_MF != 0 {
        Fragment::First
    } else {
        Fragment::None
    };
    let l4_off = L3_OFF + ihl;
    let mut key = FlowKey {
        saddr: ip.saddr,
        daddr: ip.daddr,
        sport: 0,
        dport: 0,
        proto: ip.proto,
        _pad: [0; 3],
    };
    let mut tcp_flags = 0;
    if fragment != Fragment::Later {
        let need = if ip.proto == IPPROTO_TCP {
            TCP_READ_LEN
        } else {
            UDP_HLEN
        };
        if !pkt.ensure(l4_off + need) {
            return Parsed::Truncated;
        }
        let Some(ports) = pkt.read::<[u16; 2]>(l4_off) else {
            return Parsed::Truncated;
        };
        key.sport = ports[0];
        key.dport = ports[1];
        if ip.proto == IPPROTO_TCP {
            let Some(flags) = pkt.read::<u8>(l4_off + 13) else {
                return Parsed::Truncated;
            };
            tcp_flags = flags;
        }
    }
    Parsed::Ipv4(Ipv4Flow {
        key,
        l4_off,
        tcp_flags,
        fragment,
        ip_id: ip.id,
    })
}
