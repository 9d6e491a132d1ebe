//! Bounds-checked header parsing: Ethernet + IPv4 + TCP/UDP into a flow tuple, and enough of
//! everything else (VLAN tags, other IP protocols, malformed headers) to know whether it was
//! addressed to a VIP. IPv6 has its own parser (`parse6`) into the same types.

use core::mem::size_of;

use kproxy_common::{
    config::{IPPROTO_TCP, IPPROTO_UDP},
    ct::FlowKeyOf,
};

use crate::packet::Packet;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// Offset of the IPv4 header (no VLAN tags: the programs sit on untagged links).
pub const L3_OFF: usize = ETH_HLEN;
pub const IP_CSUM_OFF: usize = L3_OFF + 10;
pub const IPV4_HLEN: usize = 20;
pub const IPPROTO_ICMP: u8 = 1;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

const IP_MF: u16 = 0x2000;
pub const IP_OFFSET_MASK: u16 = 0x1fff;

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

/// Minimum L4 header bytes inside the datagram: the whole fixed TCP header (a rewrite must
/// find its checksum, at 16, inside the datagram rather than in link padding), the UDP header.
pub const TCP_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;

/// Where a packet's datagram sits among fragments.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// A whole datagram.
    None,
    /// The first fragment: it carries the L4 header, more fragments follow.
    First,
    /// A later fragment: no L4 header, ports must come from the fragment table.
    Later,
}

/// A parsed TCP/UDP packet of either family.
#[derive(Clone, Copy)]
pub struct Flow<A> {
    /// The tuple as it appears in the packet (ports are 0 in a `Fragment::Later`).
    pub key: FlowKeyOf<A>,
    pub l4_off: usize,
    /// TCP flags byte, 0 for UDP and for later fragments.
    pub tcp_flags: u8,
    pub fragment: Fragment,
    /// The datagram's identification for the fragment table: IPv4's 16-bit IP ID, or the
    /// IPv6 Fragment header's 32-bit one (network byte order).
    pub frag_id: u32,
}

impl<A> Flow<A> {
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

/// What a parser found, in its family's addresses.
pub enum Parsed<A> {
    /// Not this family at all (ARP, the other family, runts): never ours, passes untouched.
    NotIp,
    /// An 802.1Q/802.1ad tagged frame; the destination of the IPv4 packet inside, if any.
    Vlan(Option<A>),
    /// Another protocol than TCP/UDP (ICMP, SCTP, ...): destination, protocol and where its
    /// header starts (0 for a later fragment or a malformed header).
    Other {
        daddr: A,
        proto: u8,
        l4_off: usize,
    },
    /// TCP/UDP whose headers are cut short or contradict themselves (lengths).
    Malformed(A),
    /// IPv6 whose extension headers could not be walked to the transport header (too many,
    /// or of a kind kproxy does not read): never translated.
    Unparsed(A),
    Flow(Flow<A>),
}

/// An IPv4 flow.
pub type Ipv4Flow = Flow<u32>;

/// Whether the frame is untagged IPv4 with a whole IPv4 header.
#[inline(always)]
pub fn is_ipv4_frame<P: Packet>(pkt: &P) -> bool {
    pkt.read::<EthHdr>(0)
        .is_some_and(|eth| eth.proto == ETH_P_IP.to_be())
        && pkt
            .read::<Ipv4Hdr>(L3_OFF)
            .is_some_and(|ip| ip.ver_ihl == 0x45)
}

/// Whether the frame is untagged IPv6 (handed on to the IPv6 programs).
#[inline(always)]
pub fn is_ipv6_frame<P: Packet>(pkt: &P) -> bool {
    pkt.read::<EthHdr>(0)
        .is_some_and(|eth| eth.proto == ETH_P_IPV6.to_be())
}

/// Parses Ethernet, IPv4 and the TCP/UDP ports.
#[inline(always)]
pub fn parse<P: Packet>(pkt: &mut P) -> Parsed<u32> {
    if !pkt.ensure(ETH_HLEN + size_of::<Ipv4Hdr>()) {
        return Parsed::NotIp;
    }
    let Some(eth) = pkt.read::<EthHdr>(0) else {
        return Parsed::NotIp;
    };
    if eth.proto == ETH_P_8021Q.to_be() || eth.proto == ETH_P_8021AD.to_be() {
        return Parsed::Vlan(vlan_inner_daddr(pkt));
    }
    if eth.proto != ETH_P_IP.to_be() {
        return Parsed::NotIp;
    }
    let Some(ip) = pkt.read::<Ipv4Hdr>(L3_OFF) else {
        return Parsed::NotIp;
    };
    let ihl = usize::from(ip.ver_ihl & 0x0f) * 4;
    let tot_len = usize::from(u16::from_be(ip.tot_len));
    let frame_len = pkt.len() as usize;
    // BIG TCP: a GSO packet over 64 KiB says 0 and means "the rest of the frame".
    let tot_len = if tot_len == 0 && frame_len > L3_OFF + 0xffff {
        frame_len - L3_OFF
    } else {
        tot_len
    };
    // A header that contradicts itself, or a datagram longer than the frame.
    let sane =
        ip.ver_ihl >> 4 == 4 && ihl >= IPV4_HLEN && tot_len >= ihl && L3_OFF + tot_len <= frame_len;
    let frag = u16::from_be(ip.frag_off);
    let fragment = if frag & IP_OFFSET_MASK != 0 {
        Fragment::Later
    } else if frag & IP_MF != 0 {
        Fragment::First
    } else {
        Fragment::None
    };
    let l4_off = L3_OFF + ihl;
    if ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP {
        let has_header = sane && fragment != Fragment::Later;
        return Parsed::Other {
            daddr: ip.daddr,
            proto: ip.proto,
            l4_off: if has_header { l4_off } else { 0 },
        };
    }
    if !sane {
        return Parsed::Malformed(ip.daddr);
    }
    transport(
        pkt,
        FlowKeyOf::new(ip.saddr, ip.daddr, 0, 0, ip.proto),
        l4_off,
        L3_OFF + tot_len,
        fragment,
        u32::from(ip.id),
    )
}

/// Reads the ports (and TCP flags) of the TCP/UDP header at `l4_off` of a datagram that
/// ends at `end`, into `key` (whose addresses and protocol are set).
#[inline(always)]
pub fn transport<A: Copy, P: Packet>(
    pkt: &mut P,
    mut key: FlowKeyOf<A>,
    l4_off: usize,
    end: usize,
    fragment: Fragment,
    frag_id: u32,
) -> Parsed<A> {
    let mut tcp_flags = 0;
    if fragment != Fragment::Later {
        let need = if key.proto == IPPROTO_TCP {
            TCP_HLEN
        } else {
            UDP_HLEN
        };
        if l4_off + need > end || !pkt.ensure(l4_off + need) {
            return Parsed::Malformed(key.daddr);
        }
        let Some(ports) = pkt.read::<[u16; 2]>(l4_off) else {
            return Parsed::Malformed(key.daddr);
        };
        key.sport = ports[0];
        key.dport = ports[1];
        if key.proto == IPPROTO_TCP {
            let Some(flags) = pkt.read::<u8>(l4_off + 13) else {
                return Parsed::Malformed(key.daddr);
            };
            tcp_flags = flags;
        }
    }
    Parsed::Flow(Flow {
        key,
        l4_off,
        tcp_flags,
        fragment,
        frag_id,
    })
}

/// The IPv4 destination inside a frame with one VLAN tag, or two (QinQ: 802.1ad outside,
/// 802.1Q inside), if it carries IPv4.
#[inline(always)]
fn vlan_inner_daddr<P: Packet>(pkt: &mut P) -> Option<u32> {
    const TAG_LEN: usize = 4;
    if !pkt.ensure(ETH_HLEN + TAG_LEN + IPV4_HLEN) {
        return None;
    }
    let inner_proto = pkt.read::<u16>(ETH_HLEN + 2)?;
    if inner_proto == ETH_P_IP.to_be() {
        return pkt.read::<u32>(ETH_HLEN + TAG_LEN + 16);
    }
    // Constant offsets for each depth: a variable one loses the verifier's packet bounds.
    if inner_proto != ETH_P_8021Q.to_be() && inner_proto != ETH_P_8021AD.to_be() {
        return None;
    }
    if !pkt.ensure(ETH_HLEN + 2 * TAG_LEN + IPV4_HLEN)
        || pkt.read::<u16>(ETH_HLEN + TAG_LEN + 2)? != ETH_P_IP.to_be()
    {
        return None;
    }
    pkt.read::<u32>(ETH_HLEN + 2 * TAG_LEN + 16)
}
