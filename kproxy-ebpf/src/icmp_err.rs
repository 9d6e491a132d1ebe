//! ICMP errors about translated flows, translated as netfilter's NAT translates them
//! (`nf_nat_icmp_reply_translation`): the quoted packet inside gets the addresses and ports
//! its sender knows, the outer header the address the receiver expects. Without this, path
//! MTU discovery and "unreachable" errors for flows through a ClusterIP never reach the
//! socket that caused them.
//!
//! Two directions:
//! - towards the client: an error about a packet kproxy DNATed (client → backend), sent to
//!   the client by a router on the way or the backend's host. The quote becomes
//!   client → VIP:port; the outer source becomes the VIP.
//! - towards the backend: an error about a reply kproxy translated (VIP → client), sent to
//!   the VIP by the client's side. The quote becomes backend → client; the outer destination
//!   becomes the backend (and the packet is routed there like any DNATed one).
//!
//! Only the common layout is handled: outer and quoted IPv4 headers without options, the
//! quote holding at least the 8 bytes of ports RFC 792 guarantees.

use kproxy_common::{
    config::{IPPROTO_TCP, IPPROTO_UDP},
    ct::FlowKey,
    stats::Counter,
};

use crate::{
    conntrack::CtMap,
    csum,
    family::V4,
    lb::Action,
    maps::{KP_CT_FWD, KP_CT_REV},
    packet::{Packet, Side},
    parse::{IP_OFFSET_MASK, IPV4_HLEN, Ipv4Hdr, L3_OFF},
    stats, vip,
};

const OUTER_L4: usize = L3_OFF + IPV4_HLEN;
const ICMP_CSUM: usize = OUTER_L4 + 2;
const INNER_IP: usize = OUTER_L4 + 8;
const INNER_IP_CSUM: usize = INNER_IP + 10;
const INNER_SADDR: usize = INNER_IP + 12;
const INNER_DADDR: usize = INNER_IP + 16;
const INNER_L4: usize = INNER_IP + IPV4_HLEN;
const INNER_SPORT: usize = INNER_L4;
const INNER_DPORT: usize = INNER_L4 + 2;
const INNER_UDP_CSUM: usize = INNER_L4 + 6;
const INNER_TCP_CSUM: usize = INNER_L4 + 16;
/// Everything up to the quoted ports and UDP checksum.
const MIN_LEN: usize = INNER_L4 + 8;

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_SOURCE_QUENCH: u8 = 4;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;

/// One rewrite of the quoted packet: an address, a port, and maybe the other port.
struct QuoteRewrite {
    addr_off: usize,
    old_addr: u32,
    new_addr: u32,
    port_off: usize,
    old_port: u16,
    new_port: u16,
    /// `(offset, old, new)` of the other port, when the flow's client port was remapped.
    other_port: Option<(usize, u16, u16)>,
    /// `(offset, old, new)` of the other address, when the flow is masqueraded.
    other_addr: Option<(usize, u32, u32)>,
}

/// An ICMP packet (`daddr` its destination, its header at `l4_off`).
#[inline(always)]
pub fn handle<P: Packet>(pkt: &mut P, daddr: u32, l4_off: usize) -> Action {
    if l4_off != OUTER_L4 || !pkt.ensure(MIN_LEN) {
        return vip::pass_if_vip::<V4>(Some(daddr), Counter::VipUnsupportedProtocol);
    }
    let Some(outer) = pkt.read::<Ipv4Hdr>(L3_OFF) else {
        return Action::Pass;
    };
    let tot_len = usize::from(u16::from_be(outer.tot_len));
    // The quote ends with the datagram: bytes after it are link padding, never ports.
    if L3_OFF + tot_len < MIN_LEN {
        return vip::pass_if_vip::<V4>(Some(daddr), Counter::VipUnsupportedProtocol);
    }
    let Some(icmp_type) = pkt.read::<u8>(OUTER_L4) else {
        return Action::Pass;
    };
    if !matches!(
        icmp_type,
        ICMP_DEST_UNREACH | ICMP_SOURCE_QUENCH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM
    ) {
        // Echo and the like: kube-proxy does not answer pings to ClusterIPs either.
        return vip::pass_if_vip::<V4>(Some(daddr), Counter::VipUnsupportedProtocol);
    }
    // One read at a time: a tuple of `Option`s would hold undefined bytes for the verifier.
    let Some(inner) = pkt.read::<Ipv4Hdr>(INNER_IP) else {
        return Action::Pass;
    };
    let Some(ports) = pkt.read::<[u16; 2]>(INNER_L4) else {
        return Action::Pass;
    };
    let quotes_ports = inner.ver_ihl == 0x45
        && (inner.proto == IPPROTO_TCP || inner.proto == IPPROTO_UDP)
        && u16::from_be(inner.frag_off) & IP_OFFSET_MASK == 0;
    if !quotes_ports {
        return vip::pass_if_vip::<V4>(Some(daddr), Counter::VipIcmpNoFlow);
    }
    // The quoted packet, reversed: the tuple of the packet that answered it.
    let answer = FlowKey::new(inner.daddr, inner.saddr, ports[1], ports[0], inner.proto);
    if vip::is_vip::<V4>(daddr) {
        towards_backend(pkt, &outer, &inner, &answer, tot_len)
    } else {
        towards_client(pkt, &outer, &inner, &answer, tot_len)
    }
}

/// An error about a reply kproxy translated: the quote is VIP:port → client, `answer` the
/// client's tuple towards the VIP, i.e. the flow's forward key.
#[inline(always)]
fn towards_backend<P: Packet>(
    pkt: &mut P,
    outer: &Ipv4Hdr,
    inner: &Ipv4Hdr,
    answer: &FlowKey,
    tot_len: usize,
) -> Action {
    let Some(fwd) = KP_CT_FWD.lookup(answer) else {
        stats::count(Counter::VipIcmpNoFlow);
        return Action::Pass;
    };
    let rw = QuoteRewrite {
        addr_off: INNER_SADDR,
        old_addr: inner.saddr,
        new_addr: fwd.nat_addr,
        port_off: INNER_SPORT,
        old_port: answer.dport,
        new_port: fwd.nat_port,
        other_port: (fwd.alt_port != 0).then_some((INNER_DPORT, answer.sport, fwd.alt_port)),
        other_addr: (fwd.alt_addr != 0).then_some((INNER_DADDR, inner.daddr, fwd.alt_addr)),
    };
    // The outer destination (the VIP) becomes the backend, like the quote's source.
    translate(
        pkt,
        inner,
        &rw,
        (Side::Destination, outer.daddr),
        None,
        tot_len,
        Action::Dnat,
    )
}

/// An error about a packet kproxy DNATed: the quote is client → backend, `answer` the
/// backend's reply tuple, i.e. the flow's reply key.
#[inline(always)]
fn towards_client<P: Packet>(
    pkt: &mut P,
    outer: &Ipv4Hdr,
    inner: &Ipv4Hdr,
    answer: &FlowKey,
    tot_len: usize,
) -> Action {
    let Some(rev) = KP_CT_REV.lookup(answer) else {
        return Action::Pass; // not about a translated flow
    };
    let rw = QuoteRewrite {
        addr_off: INNER_DADDR,
        old_addr: inner.daddr,
        new_addr: rev.nat_addr,
        port_off: INNER_DPORT,
        old_port: answer.sport,
        new_port: rev.nat_port,
        other_port: (rev.alt_port != 0).then_some((INNER_SPORT, answer.dport, rev.alt_port)),
        other_addr: (rev.alt_addr != 0).then_some((INNER_SADDR, inner.saddr, rev.alt_addr)),
    };
    // The outer source (whoever sent the error) becomes the VIP, as netfilter does. A
    // masqueraded flow's error is addressed to the node address it was masqueraded to: it
    // goes on to the client, like the quote's source.
    translate(
        pkt,
        inner,
        &rw,
        (Side::Source, outer.saddr),
        (rev.alt_addr != 0).then_some((outer.daddr, rev.alt_addr)),
        tot_len,
        Action::ReverseNat,
    )
}

/// Applies `rw` to the quote and gives the outer address on `outer.0` (now `outer.1`) the
/// quote's new address, and the outer destination `(old, new)` in `outer_daddr` if given;
/// `done` is the action once translated.
#[inline(always)]
fn translate<P: Packet>(
    pkt: &mut P,
    inner: &Ipv4Hdr,
    rw: &QuoteRewrite,
    outer: (Side, u32),
    outer_daddr: Option<(u32, u32)>,
    tot_len: usize,
    done: Action,
) -> Action {
    if pkt.must_defer() {
        stats::count(Counter::XdpDeferred);
        return Action::Pass;
    }
    if rewrite_quote(pkt, inner, rw, tot_len).is_err()
        || pkt.set_ip_addr(outer.0, outer.1, rw.new_addr).is_err()
        || outer_daddr
            .is_some_and(|(old, new)| pkt.set_ip_addr(Side::Destination, old, new).is_err())
    {
        stats::count(Counter::DropIcmpError);
        return Action::Drop;
    }
    stats::count(Counter::IcmpErrorTranslated);
    done
}

/// Rewrites the quoted packet: address (with the quoted IP header checksum), port(s), and
/// the quoted L4 checksum when the quote holds it; every change folded into the ICMP
/// checksum.
#[inline(always)]
fn rewrite_quote<P: Packet>(
    pkt: &mut P,
    inner: &Ipv4Hdr,
    rw: &QuoteRewrite,
    tot_len: usize,
) -> Result<(), ()> {
    pkt.patch32(rw.addr_off, rw.old_addr, rw.new_addr, ICMP_CSUM)?;
    let mut ip_csum = csum::replace4(inner.check, rw.old_addr, rw.new_addr);
    if let Some((off, old, new)) = rw.other_addr {
        pkt.patch32(off, old, new, ICMP_CSUM)?;
        ip_csum = csum::replace4(ip_csum, old, new);
    }
    pkt.patch16(INNER_IP_CSUM, inner.check, ip_csum, ICMP_CSUM)?;
    pkt.patch16(rw.port_off, rw.old_port, rw.new_port, ICMP_CSUM)?;
    if let Some((off, old, new)) = rw.other_port {
        pkt.patch16(off, old, new, ICMP_CSUM)?;
    }
    let udp = inner.proto == IPPROTO_UDP;
    let csum_off = if udp { INNER_UDP_CSUM } else { INNER_TCP_CSUM };
    // A quote cut before the L4 checksum leaves nothing to fix (netfilter does the same).
    if L3_OFF + tot_len < csum_off + 2 || !pkt.ensure(csum_off + 2) {
        return Ok(());
    }
    let Some(old) = pkt.read::<u16>(csum_off) else {
        return Ok(());
    };
    if udp && old == 0 {
        return Ok(()); // no checksum, and it stays that way
    }
    let mut new = csum::replace4(old, rw.old_addr, rw.new_addr);
    new = csum::replace2(new, rw.old_port, rw.new_port);
    if let Some((_, old_port, new_port)) = rw.other_port {
        new = csum::replace2(new, old_port, new_port);
    }
    if let Some((_, old_addr, new_addr)) = rw.other_addr {
        new = csum::replace4(new, old_addr, new_addr);
    }
    if udp && new == 0 {
        new = 0xffff;
    }
    pkt.patch16(csum_off, old, new, ICMP_CSUM)
}
