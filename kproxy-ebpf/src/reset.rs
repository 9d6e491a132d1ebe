//! TCP RST for a packet of a flow whose endpoint left every EndpointSlice, so the client
//! fails at once instead of retransmitting to an endpoint that is gone (and is never handed
//! to another backend mid-stream, which would answer with a RST anyway, later).

use kproxy_common::addr::In6Addr;

use crate::{
    csum,
    packet::Packet,
    parse::{
        ETH_HLEN, EthHdr, Flow, IPV4_HLEN, Ipv4Flow, Ipv4Hdr, L3_OFF, TCP_ACK, TCP_FIN, TCP_SYN,
    },
    parse6::IPV6_HLEN,
    scratch,
};

const TCP_HLEN: usize = 20;
const TCP_OFF: usize = ETH_HLEN + IPV4_HLEN;
pub const RESET_FRAME_LEN: usize = TCP_OFF + TCP_HLEN;
const TCP6_OFF: usize = ETH_HLEN + IPV6_HLEN;
pub const RESET6_FRAME_LEN: usize = TCP6_OFF + TCP_HLEN;
const TCP_RST: u8 = 0x04;
const IPPROTO_TCP: u8 = 6;

/// The fields of the offending segment a RST is built from.
#[repr(C)]
#[derive(Clone, Copy)]
struct TcpSeq {
    seq: u32,
    ack: u32,
    data_off: u8,
    flags: u8,
}

/// The RST's sequence number, acknowledgement and flags for the segment whose header is at
/// `l4_off` in a datagram ending at `end`. RFC 793 "Reset Generation": if the segment has an
/// ACK the RST takes its sequence number from it, otherwise it has sequence number 0 and
/// acknowledges the segment.
#[inline(always)]
fn answer<P: Packet>(pkt: &P, l4_off: usize, end: usize) -> Option<(u32, u32, u8)> {
    let tcp = pkt.read::<TcpSeq>(l4_off + 4)?;
    let tcp_hlen = usize::from(tcp.data_off >> 4) * 4;
    let segment = end.saturating_sub(l4_off + tcp_hlen) as u32
        + u32::from(tcp.flags & TCP_SYN != 0)
        + u32::from(tcp.flags & TCP_FIN != 0);
    Some(if tcp.flags & TCP_ACK != 0 {
        (tcp.ack, 0u32, TCP_RST)
    } else {
        (
            0u32,
            u32::from_be(tcp.seq).wrapping_add(segment).to_be(),
            TCP_RST | TCP_ACK,
        )
    })
}

/// Fills in the Ethernet header of a frame sent back where `eth` came from.
#[inline(always)]
fn swap_ethernet(f: &mut [u8], eth: &EthHdr) {
    f[0..6].copy_from_slice(&eth.src);
    f[6..12].copy_from_slice(&eth.dst);
    f[12..14].copy_from_slice(&eth.proto.to_ne_bytes());
}

/// Fills in the TCP header at `t` (its checksum still zero) from `VIP:port` back to the
/// client of `ports` (the offending segment's source and destination ports).
#[inline(always)]
fn tcp_header(t: &mut [u8], ports: (u16, u16), (seq, ack, flags): (u32, u32, u8)) {
    t[0..2].copy_from_slice(&ports.1.to_ne_bytes());
    t[2..4].copy_from_slice(&ports.0.to_ne_bytes());
    t[4..8].copy_from_slice(&seq.to_ne_bytes());
    t[8..12].copy_from_slice(&ack.to_ne_bytes());
    t[12] = (TCP_HLEN as u8 / 4) << 4;
    t[13] = flags;
}

/// The whole RST frame answering the TCP packet in `pkt`, from the VIP the client
/// addressed.
#[inline(always)]
pub fn tcp_reset<P: Packet>(pkt: &P, flow: &Ipv4Flow) -> Option<[u8; RESET_FRAME_LEN]> {
    let eth = pkt.read::<EthHdr>(0)?;
    let ip = pkt.read::<Ipv4Hdr>(L3_OFF)?;
    let numbers = answer(
        pkt,
        flow.l4_off,
        L3_OFF + usize::from(u16::from_be(ip.tot_len)),
    )?;

    let mut f = [0u8; RESET_FRAME_LEN];
    swap_ethernet(&mut f, &eth);
    let ipb = &mut f[L3_OFF..TCP_OFF];
    ipb[0] = 0x45;
    ipb[2..4].copy_from_slice(&((IPV4_HLEN + TCP_HLEN) as u16).to_be_bytes());
    ipb[6] = 0x40; // don't fragment
    ipb[8] = 64;
    ipb[9] = IPPROTO_TCP;
    // From the VIP:port the client addressed, to the client.
    ipb[12..16].copy_from_slice(&flow.key.daddr.to_ne_bytes());
    ipb[16..20].copy_from_slice(&flow.key.saddr.to_ne_bytes());
    let mut ip_hdr = [0u8; IPV4_HLEN];
    ip_hdr.copy_from_slice(ipb);
    let ip_csum = !csum::fold(csum::sum_words(&ip_hdr));
    f[L3_OFF + 10..L3_OFF + 12].copy_from_slice(&ip_csum.to_ne_bytes());

    tcp_header(&mut f[TCP_OFF..], (flow.key.sport, flow.key.dport), numbers);
    // Checksum over the pseudo-header (addresses, protocol, length) and the header.
    let mut pseudo = [0u8; 12 + TCP_HLEN];
    pseudo[0..4].copy_from_slice(&flow.key.daddr.to_ne_bytes());
    pseudo[4..8].copy_from_slice(&flow.key.saddr.to_ne_bytes());
    pseudo[9] = IPPROTO_TCP;
    pseudo[10..12].copy_from_slice(&(TCP_HLEN as u16).to_be_bytes());
    pseudo[12..].copy_from_slice(&f[TCP_OFF..]);
    let tcp_csum = !csum::fold(csum::sum_words(&pseudo));
    f[TCP_OFF + 16..TCP_OFF + 18].copy_from_slice(&tcp_csum.to_ne_bytes());
    Some(f)
}

/// [`tcp_reset`] for IPv6.
#[inline(always)]
pub fn tcp_reset6<P: Packet>(
    pkt: &P,
    flow: &Flow<In6Addr>,
) -> Option<&'static [u8; RESET6_FRAME_LEN]> {
    let eth = pkt.read::<EthHdr>(0)?;
    let payload_len = pkt.read::<u16>(L3_OFF + 4)?;
    let end = L3_OFF + IPV6_HLEN + usize::from(u16::from_be(payload_len));
    let numbers = answer(pkt, flow.l4_off, end)?;

    let f = scratch::frame::<RESET6_FRAME_LEN>()?;
    swap_ethernet(f, &eth);
    write_ipv6_header(
        &mut f[L3_OFF..TCP6_OFF],
        TCP_HLEN as u16,
        IPPROTO_TCP,
        (flow.key.daddr, flow.key.saddr),
    );
    tcp_header(
        &mut f[TCP6_OFF..],
        (flow.key.sport, flow.key.dport),
        numbers,
    );
    let sum = pseudo_header6(flow.key.daddr, flow.key.saddr, TCP_HLEN as u32, IPPROTO_TCP)
        + csum::sum_slice(&f[TCP6_OFF..]);
    f[TCP6_OFF + 16..TCP6_OFF + 18].copy_from_slice(&(!csum::fold(sum)).to_ne_bytes());
    Some(f)
}

/// Writes a 40-byte IPv6 header (no extension headers, hop limit 64) into `ip`.
#[inline(always)]
pub fn write_ipv6_header(
    ip: &mut [u8],
    payload_len: u16,
    nexthdr: u8,
    (src, dst): (In6Addr, In6Addr),
) {
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&payload_len.to_be_bytes());
    ip[6] = nexthdr;
    ip[7] = 64;
    ip[8..24].copy_from_slice(&src.octets());
    ip[24..40].copy_from_slice(&dst.octets());
}

/// The sum of an IPv6 pseudo-header (RFC 8200 8.1), to add to the upper-layer packet's.
#[inline(always)]
pub fn pseudo_header6(src: In6Addr, dst: In6Addr, len: u32, nexthdr: u8) -> u64 {
    let mut sum = 0u64;
    let mut i = 0;
    while i < 4 {
        sum += u64::from(src.0[i] >> 16) + u64::from(src.0[i] & 0xffff);
        sum += u64::from(dst.0[i] >> 16) + u64::from(dst.0[i] & 0xffff);
        i += 1;
    }
    // Length and next header as big-endian 32-bit words, summed as stored.
    let len = len.to_be();
    let next = u32::from(nexthdr).to_be();
    sum + u64::from(len >> 16)
        + u64::from(len & 0xffff)
        + u64::from(next >> 16)
        + u64::from(next & 0xffff)
}
