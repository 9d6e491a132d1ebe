//! ICMPv6 for IPv6 services: "port unreachable" for new connections to a service port
//! without endpoints (what ip6tables' REJECT sends for kube-proxy), and ICMPv6 errors about
//! translated flows, translated inside and out as `icmp_err` does for IPv4. Packet Too Big
//! matters most: IPv6 routers never fragment, so without it path-MTU discovery through a
//! ClusterIP fails and large transfers stall.
//!
//! Neighbour discovery, echo and every other informational message pass untouched (a VIP is
//! not a host: kube-proxy does not answer pings to it either; echo to one is counted).
//!
//! Only the common layout is handled: no extension headers before the outer ICMPv6 header
//! or the quoted transport header, the quote holding at least the 8 bytes of ports.

use kproxy_common::{
    addr::{In6Addr, IpAddress},
    config::{IPPROTO_TCP, IPPROTO_UDP},
    ct::{CtEntryOf, FlowKeyOf},
    stats::Counter,
};

use crate::{
    conntrack::CtMap,
    csum,
    family::{Family, V6},
    lb::Action,
    packet::{Packet, Side},
    parse::{ETH_HLEN, EthHdr, L3_OFF},
    parse6::{IPPROTO_ICMPV6, IPV6_HLEN},
    reset::{pseudo_header6, write_ipv6_header},
    scratch, stats, vip,
};

const OUTER_L4: usize = L3_OFF + IPV6_HLEN;
const ICMP_HLEN: usize = 8;
const ICMP_CSUM: usize = OUTER_L4 + 2;
const INNER_IP: usize = OUTER_L4 + ICMP_HLEN;
const INNER_SADDR: usize = INNER_IP + 8;
const INNER_DADDR: usize = INNER_IP + 24;
const INNER_L4: usize = INNER_IP + IPV6_HLEN;
const INNER_SPORT: usize = INNER_L4;
const INNER_DPORT: usize = INNER_L4 + 2;
const INNER_UDP_CSUM: usize = INNER_L4 + 6;
const INNER_TCP_CSUM: usize = INNER_L4 + 16;
/// Everything up to the quoted ports and UDP checksum.
const MIN_LEN: usize = INNER_L4 + 8;

const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PKT_TOOBIG: u8 = 2;
const ICMPV6_TIME_EXCEED: u8 = 3;
const ICMPV6_PARAMPROB: u8 = 4;
const ICMPV6_PORT_UNREACH: u8 = 4;

/// RFC 4443 quotes "as much of the invoking packet as possible"; the header and the ports
/// are what the client's stack needs to find the socket (`icmpv6_notify`).
const QUOTE_LEN: usize = IPV6_HLEN + 8;
pub const REJECT6_FRAME_LEN: usize = OUTER_L4 + ICMP_HLEN + QUOTE_LEN;

/// Builds the "port unreachable" frame answering the packet in `pkt` (tuple `key`, its
/// transport header at `l4_off`). Packets with extension headers are not rejected (their
/// quote would need the headers in between): the caller drops them, counted.
#[inline(always)]
pub fn port_unreachable<P: Packet>(
    pkt: &P,
    key: &FlowKeyOf<In6Addr>,
    l4_off: usize,
) -> Option<&'static [u8; REJECT6_FRAME_LEN]> {
    const ICMP_LEN: usize = ICMP_HLEN + QUOTE_LEN;
    if l4_off != OUTER_L4 {
        return None;
    }
    let eth = pkt.read::<EthHdr>(0)?;
    let quote = pkt.read::<[u8; QUOTE_LEN]>(L3_OFF)?;

    let f = scratch::frame::<REJECT6_FRAME_LEN>()?;
    f[0..6].copy_from_slice(&eth.src);
    f[6..12].copy_from_slice(&eth.dst);
    f[12..14].copy_from_slice(&eth.proto.to_ne_bytes());
    // From the address the client tried to reach, to the client.
    write_ipv6_header(
        &mut f[L3_OFF..OUTER_L4],
        ICMP_LEN as u16,
        IPPROTO_ICMPV6,
        (key.daddr, key.saddr),
    );
    f[OUTER_L4] = ICMPV6_DEST_UNREACH;
    f[OUTER_L4 + 1] = ICMPV6_PORT_UNREACH;
    f[OUTER_L4 + ICMP_HLEN..].copy_from_slice(&quote);
    let sum = pseudo_header6(key.daddr, key.saddr, ICMP_LEN as u32, IPPROTO_ICMPV6)
        + csum::sum_slice(&f[OUTER_L4..]);
    f[ICMP_CSUM..ICMP_CSUM + 2].copy_from_slice(&(!csum::fold(sum)).to_ne_bytes());
    Some(f)
}

/// One rewrite of the quoted packet (see `icmp_err::QuoteRewrite`), its addresses by
/// reference: they live in scratch memory (see `handle`).
struct QuoteRewrite<'a> {
    addr_off: usize,
    old_addr: &'a In6Addr,
    new_addr: &'a In6Addr,
    port_off: usize,
    old_port: u16,
    new_port: u16,
    /// `(offset, old, new)` of the other port, when the flow's client port was remapped.
    other_port: Option<(usize, u16, u16)>,
    /// `(offset, old, new)` of the other address, when the flow is masqueraded.
    other_addr: Option<(usize, &'a In6Addr, &'a In6Addr)>,
}

/// An ICMPv6 packet (`daddr` its destination, its header at `l4_off`).
///
/// The addresses it works with (the outer pair, the quoted tuple, the flow's entry) are
/// kept in this CPU's stage state (ICMPv6 has a stage of its own, see `lb::Stage`) and
/// passed by reference: on the stack, with IPv6's wide
/// addresses, they took more than a program has.
#[inline(always)]
pub fn handle<P: Packet>(pkt: &mut P, daddr: In6Addr, l4_off: usize) -> Action {
    let Some(icmp_type) = pkt.read::<u8>(l4_off) else {
        return Action::Pass;
    };
    if !matches!(
        icmp_type,
        ICMPV6_DEST_UNREACH | ICMPV6_PKT_TOOBIG | ICMPV6_TIME_EXCEED | ICMPV6_PARAMPROB
    ) {
        // Informational (echo, neighbour discovery, MLD): never about a flow.
        return vip::pass_if_vip::<V6>(Some(daddr), Counter::VipUnsupportedProtocol);
    }
    if l4_off != OUTER_L4 || !pkt.ensure(MIN_LEN) {
        return vip::pass_if_vip::<V6>(Some(daddr), Counter::VipIcmpNoFlow);
    }
    let Some(payload_len) = pkt.read::<u16>(L3_OFF + 4) else {
        return Action::Pass;
    };
    let end = OUTER_L4 + usize::from(u16::from_be(payload_len));
    // The quote ends with the datagram: bytes after it are link padding, never ports.
    if end < MIN_LEN {
        return vip::pass_if_vip::<V6>(Some(daddr), Counter::VipIcmpNoFlow);
    }
    let (Some(nexthdr), Some(ports)) =
        (pkt.read::<u8>(INNER_IP + 6), pkt.read::<[u16; 2]>(INNER_L4))
    else {
        return Action::Pass;
    };
    if nexthdr != IPPROTO_TCP && nexthdr != IPPROTO_UDP {
        return vip::pass_if_vip::<V6>(Some(daddr), Counter::VipIcmpNoFlow);
    }
    let Some(state) = V6::stage_state() else {
        return Action::Pass;
    };
    // SAFETY: this CPU's scratch memory; nothing else uses it while this packet is handled.
    let (outer, answer, entry) = unsafe {
        (
            &mut (*state).icmp_outer,
            &mut (*state).icmp_answer,
            &mut (*state).icmp_entry,
        )
    };
    // The outer pair, and the quoted packet's tuple reversed: the tuple of the packet that
    // answered it. Copied in place (see `Packet::read_into`).
    answer.sport = ports[1];
    answer.dport = ports[0];
    answer.proto = nexthdr;
    if !pkt.read_into(L3_OFF + 8, &mut outer.saddr)
        || !pkt.read_into(L3_OFF + 24, &mut outer.daddr)
        || !pkt.read_into(INNER_SADDR, &mut answer.daddr)
        || !pkt.read_into(INNER_DADDR, &mut answer.saddr)
    {
        return Action::Pass;
    }
    let udp = nexthdr == IPPROTO_UDP;
    if vip::is_vip::<V6>(daddr) {
        towards_backend(pkt, outer, answer, entry, (udp, end))
    } else {
        towards_client(pkt, outer, answer, entry, (udp, end))
    }
}

/// An error about a reply kproxy translated: the quote is VIP:port → client, `answer` the
/// flow's forward key. The outer destination (the VIP) becomes the backend, like the
/// quote's source. `entry` is where the flow's entry is read to; `quote` is whether it is
/// UDP and where the datagram ends.
#[inline(always)]
fn towards_backend<P: Packet>(
    pkt: &mut P,
    outer: &FlowKeyOf<In6Addr>,
    answer: &FlowKeyOf<In6Addr>,
    entry: &mut CtEntryOf<In6Addr>,
    (udp, end): (bool, usize),
) -> Action {
    if !V6::ct_fwd().lookup_into(answer, entry) {
        stats::count(Counter::VipIcmpNoFlow);
        return Action::Pass;
    }
    let rw = QuoteRewrite {
        addr_off: INNER_SADDR,
        old_addr: &answer.daddr,
        new_addr: &entry.nat_addr,
        port_off: INNER_SPORT,
        old_port: answer.dport,
        new_port: entry.nat_port,
        other_port: (entry.alt_port != 0).then_some((INNER_DPORT, answer.sport, entry.alt_port)),
        other_addr: (!entry.alt_addr.is_unspecified()).then_some((
            INNER_DADDR,
            &answer.saddr,
            &entry.alt_addr,
        )),
    };
    let outer_dst = Some((&outer.daddr, &entry.nat_addr));
    translate(pkt, &rw, None, outer_dst, udp, end, Action::Dnat)
}

/// An error about a packet kproxy DNATed: the quote is client → backend, `answer` the
/// flow's reply key. The outer source (whoever sent the error) becomes the VIP, as
/// netfilter does; a masqueraded flow's error goes on to the client. Arguments as
/// [`towards_backend`]'s.
#[inline(always)]
fn towards_client<P: Packet>(
    pkt: &mut P,
    outer: &FlowKeyOf<In6Addr>,
    answer: &FlowKeyOf<In6Addr>,
    entry: &mut CtEntryOf<In6Addr>,
    (udp, end): (bool, usize),
) -> Action {
    if !V6::ct_rev().lookup_into(answer, entry) {
        return Action::Pass; // not about a translated flow
    }
    let masqueraded = !entry.alt_addr.is_unspecified();
    let rw = QuoteRewrite {
        addr_off: INNER_DADDR,
        old_addr: &answer.saddr,
        new_addr: &entry.nat_addr,
        port_off: INNER_DPORT,
        old_port: answer.sport,
        new_port: entry.nat_port,
        other_port: (entry.alt_port != 0).then_some((INNER_SPORT, answer.dport, entry.alt_port)),
        other_addr: masqueraded.then_some((INNER_SADDR, &answer.daddr, &entry.alt_addr)),
    };
    let outer_src = Some((&outer.saddr, &entry.nat_addr));
    let outer_dst = masqueraded.then_some((&outer.daddr, &entry.alt_addr));
    translate(pkt, &rw, outer_src, outer_dst, udp, end, Action::ReverseNat)
}

/// Applies `rw` to the quote, then gives the outer source and destination their new
/// addresses (`(old, new)` where given); `done` is the action once translated.
#[inline(always)]
fn translate<P: Packet>(
    pkt: &mut P,
    rw: &QuoteRewrite,
    outer_src: Option<(&In6Addr, &In6Addr)>,
    outer_dst: Option<(&In6Addr, &In6Addr)>,
    udp: bool,
    end: usize,
    done: Action,
) -> Action {
    if pkt.must_defer() {
        stats::count(Counter::XdpDeferred);
        return Action::Pass;
    }
    if rewrite_quote(pkt, rw, udp, end).is_err()
        || outer_src
            .is_some_and(|(old, new)| pkt.set_ip6_addr(Side::Source, old, new, ICMP_CSUM).is_err())
        || outer_dst.is_some_and(|(old, new)| {
            pkt.set_ip6_addr(Side::Destination, old, new, ICMP_CSUM)
                .is_err()
        })
    {
        stats::count(Counter::DropIcmpError);
        return Action::Drop;
    }
    stats::count(Counter::IcmpErrorTranslated);
    done
}

/// Rewrites the quoted packet: address(es), port(s), and the quoted L4 checksum when the
/// quote holds it; every change folded into the ICMPv6 checksum.
#[inline(always)]
fn rewrite_quote<P: Packet>(
    pkt: &mut P,
    rw: &QuoteRewrite,
    udp: bool,
    end: usize,
) -> Result<(), ()> {
    // The quoted L4 checksum's change is computed from the rewrite alone: done first.
    let csum_off = if udp { INNER_UDP_CSUM } else { INNER_TCP_CSUM };
    // A quote cut before the L4 checksum leaves nothing to fix (netfilter does the same).
    if end >= csum_off + 2
        && pkt.ensure(csum_off + 2)
        && let Some(old) = pkt.read::<u16>(csum_off)
        && !(udp && old == 0)
    {
        let mut update = csum::Update::of(old)
            .addr(*rw.old_addr, *rw.new_addr)
            .word2(rw.old_port, rw.new_port);
        if let Some((_, old_port, new_port)) = rw.other_port {
            update = update.word2(old_port, new_port);
        }
        if let Some((_, old_addr, new_addr)) = rw.other_addr {
            update = update.addr(*old_addr, *new_addr);
        }
        let mut new = update.check();
        if udp && new == 0 {
            new = 0xffff;
        }
        pkt.patch16(csum_off, old, new, ICMP_CSUM)?;
    }
    pkt.patch_addr6(rw.addr_off, rw.old_addr, rw.new_addr, ICMP_CSUM)?;
    if let Some((off, old, new)) = rw.other_addr {
        pkt.patch_addr6(off, old, new, ICMP_CSUM)?;
    }
    pkt.patch16(rw.port_off, rw.old_port, rw.new_port, ICMP_CSUM)?;
    if let Some((off, old, new)) = rw.other_port {
        pkt.patch16(off, old, new, ICMP_CSUM)?;
    }
    Ok(())
}

const _: () = assert!(REJECT6_FRAME_LEN == ETH_HLEN + IPV6_HLEN + ICMP_HLEN + QUOTE_LEN);
