//! ICMP "port unreachable" for new connections to a service port without endpoints: what
//! kube-proxy's `REJECT` rule sends, so clients fail at once with "connection refused"
//! (TCP) or ECONNREFUSED on a connected UDP socket, instead of timing out.

use kproxy_common::ct::FlowKey;

use crate::{
    csum,
    packet::Packet,
    parse::{ETH_HLEN, EthHdr, L3_OFF},
};

const IP_HLEN: usize = 20;
const ICMP_HLEN: usize = 8;
/// RFC 792: the offending datagram's IP header and the first 64 bits of its data.
const QUOTE_LEN: usize = IP_HLEN + 8;
const ICMP_OFF: usize = ETH_HLEN + IP_HLEN;
pub const REJECT_FRAME_LEN: usize = ICMP_OFF + ICMP_HLEN + QUOTE_LEN;

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;
const IPPROTO_ICMP: u8 = 1;

/// Builds the whole reply frame for the packet in `pkt` (whose tuple is `key`).
/// Only plain 20-byte IPv4 headers are quoted; packets with IP options are not rejected.
#[inline(always)]
pub fn port_unreachable<P: Packet>(
    pkt: &P,
    key: &FlowKey,
    l4_off: usize,
) -> Option<[u8; REJECT_FRAME_LEN]> {
    if l4_off != L3_OFF + IP_HLEN {
        return None;
    }
    let eth = pkt.read::<EthHdr>(0)?;
    let quote = pkt.read::<[u8; QUOTE_LEN]>(L3_OFF)?;

    let mut f = [0u8; REJECT_FRAME_LEN];
    f[0..6].copy_from_slice(&eth.src);
    f[6..12].copy_from_slice(&eth.dst);
    f[12..14].copy_from_slice(&eth.proto.to_ne_bytes());

    let ip = &mut f[L3_OFF..ICMP_OFF];
    ip[0] = 0x45;
    ip[1] = 0xc0; // precedence "internetwork control", as Linux marks ICMP errors
    ip[2..4].copy_from_slice(&((IP_HLEN + ICMP_HLEN + QUOTE_LEN) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = IPPROTO_ICMP;
    // From the address the client tried to reach, to the client.
    ip[12..16].copy_from_slice(&key.daddr.to_ne_bytes());
    ip[16..20].copy_from_slice(&key.saddr.to_ne_bytes());
    let mut ip_hdr = [0u8; IP_HLEN];
    ip_hdr.copy_from_slice(ip);
    let ip_csum = !csum::fold(csum::sum_words(&ip_hdr));
    f[L3_OFF + 10..L3_OFF + 12].copy_from_slice(&ip_csum.to_ne_bytes());

    f[ICMP_OFF] = ICMP_DEST_UNREACH;
    f[ICMP_OFF + 1] = ICMP_PORT_UNREACH;
    f[ICMP_OFF + ICMP_HLEN..].copy_from_slice(&quote);
    let mut icmp = [0u8; ICMP_HLEN + QUOTE_LEN];
    icmp.copy_from_slice(&f[ICMP_OFF..]);
    let icmp_csum = !csum::fold(csum::sum_words(&icmp));
    f[ICMP_OFF + 2..ICMP_OFF + 4].copy_from_slice(&icmp_csum.to_ne_bytes());
    Some(f)
}
