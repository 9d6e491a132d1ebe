//! The XDP fast path: a packet XDP translated (a client's packet to a NodePort, load-balancer
//! or external IP, or a backend's reply) is forwarded from the NIC itself when the route
//! says it leaves the node again, as the kernel's forwarding would (TTL or hop limit
//! decremented, MACs of the next hop), without entering the node's stack. Everything else
//! goes up the stack translated, where routing finishes the job, each kind of hand-over
//! counted.

use core::mem::{MaybeUninit, size_of};

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup, xdp_action,
    },
    helpers::bpf_redirect,
};
use kproxy_common::{addr::In6Addr, iface::IFACE_F_XDP_REDIRECT, stats::Counter};

use crate::{
    csum,
    family::{Family, V4, V6},
    maps::KP_IFACES,
    packet::{Packet, XdpPacket},
    parse::{IPV4_HLEN, L3_OFF},
    parse6::IPV6_HLEN,
    route, stats,
};

/// Offset of the TTL (and, after it, the protocol) in the IPv4 header.
const TTL_OFF: usize = 8;
const CSUM_OFF: usize = 10;
/// Offset of the hop limit in the IPv6 header.
const HOP_LIMIT_OFF: usize = 7;

/// What forwarding needs of a family's header.
pub trait Forwarding: Family {
    /// Bytes of the fixed header.
    const HLEN: usize;
    /// The FIB request for the packet whose header `ip` is (bounds-checked for `HLEN`), its
    /// addresses `saddr` → `daddr`, and its TTL or hop limit.
    ///
    /// # Safety
    /// `ip` points at `HLEN` readable bytes.
    unsafe fn request(
        slot: &mut MaybeUninit<bpf_fib_lookup>,
        ip: *mut u8,
        ingress: u32,
        addrs: (Self::Addr, Self::Addr),
    ) -> (&mut bpf_fib_lookup, u8);
    /// Decrements the TTL or hop limit (and fixes the header checksum, if there is one).
    ///
    /// # Safety
    /// `ip` points at `HLEN` writable bytes.
    unsafe fn decrement(ip: *mut u8);
    /// The source and destination as the rewrite left them, if it says.
    fn rewritten(pkt: &XdpPacket) -> Option<(Self::Addr, Self::Addr)>;
}

impl Forwarding for V4 {
    const HLEN: usize = IPV4_HLEN;

    #[inline(always)]
    unsafe fn request(
        slot: &mut MaybeUninit<bpf_fib_lookup>,
        ip: *mut u8,
        ingress: u32,
        (saddr, daddr): (u32, u32),
    ) -> (&mut bpf_fib_lookup, u8) {
        // SAFETY: inside the checked IPv4 header (the caller's promise).
        let (ttl, tos, tot_len) = unsafe {
            (
                *ip.add(TTL_OFF),
                *ip.add(1),
                u16::from_be(ip.add(2).cast::<u16>().read_unaligned()),
            )
        };
        let params = route::ipv4_request(slot, ingress, saddr, daddr);
        params.__bindgen_anon_2.tos = tos;
        params.__bindgen_anon_1.tot_len = tot_len;
        (params, ttl)
    }

    #[inline(always)]
    unsafe fn decrement(ip: *mut u8) {
        // SAFETY: inside the checked header; the TTL/protocol word is 2-aligned in it.
        unsafe {
            let word = ip.add(TTL_OFF).cast::<u16>();
            let old = word.read_unaligned();
            *ip.add(TTL_OFF) -= 1;
            let new = word.read_unaligned();
            let check = ip.add(CSUM_OFF).cast::<u16>();
            check.write_unaligned(csum::replace2(check.read_unaligned(), old, new));
        }
    }

    #[inline(always)]
    fn rewritten(pkt: &XdpPacket) -> Option<(u32, u32)> {
        (pkt.rewritten.1 != 0).then_some(pkt.rewritten)
    }
}

impl Forwarding for V6 {
    const HLEN: usize = IPV6_HLEN;

    #[inline(always)]
    unsafe fn request(
        slot: &mut MaybeUninit<bpf_fib_lookup>,
        ip: *mut u8,
        ingress: u32,
        (saddr, daddr): (In6Addr, In6Addr),
    ) -> (&mut bpf_fib_lookup, u8) {
        // SAFETY: inside the checked IPv6 header (the caller's promise).
        let (flow, payload, hop_limit) = unsafe {
            (
                ip.cast::<u32>().read_unaligned(),
                u16::from_be(ip.add(4).cast::<u16>().read_unaligned()),
                *ip.add(HOP_LIMIT_OFF),
            )
        };
        let params = route::ipv6_request(slot, ingress, saddr, daddr);
        // Traffic class and flow label, without the version.
        params.__bindgen_anon_2.flowinfo = flow & 0x0fff_ffff_u32.to_be();
        params.__bindgen_anon_1.tot_len = payload.saturating_add(IPV6_HLEN as u16);
        (params, hop_limit)
    }

    #[inline(always)]
    unsafe fn decrement(ip: *mut u8) {
        // SAFETY: inside the checked header. IPv6 has no header checksum.
        unsafe { *ip.add(HOP_LIMIT_OFF) -= 1 };
    }

    #[inline(always)]
    fn rewritten(_pkt: &XdpPacket) -> Option<(In6Addr, In6Addr)> {
        None
    }
}

/// Where a translated packet goes: the XDP verdict.
#[inline(always)]
pub fn forward<F: Forwarding>(pkt: &XdpPacket) -> u32 {
    let ctx = pkt.ctx;
    let start = ctx.data();
    if start + L3_OFF + F::HLEN > ctx.data_end() {
        return pass(Counter::XdpPassNoRoute);
    }
    let eth = start as *mut u8;
    // SAFETY: the Ethernet and IP headers were bounds-checked above.
    let ip = unsafe { eth.add(L3_OFF) };
    let Some(addrs) = F::rewritten(pkt).or_else(|| F::addresses(pkt)) else {
        return pass(Counter::XdpPassNoRoute);
    };
    let ingress = pkt.ifindex();
    let mut slot = MaybeUninit::uninit();
    // SAFETY: `ip` has `HLEN` bytes (checked above).
    let (params, ttl) = unsafe { F::request(&mut slot, ip, ingress, addrs) };
    if ttl <= 1 {
        // The stack answers with "time exceeded".
        return pass(Counter::XdpPassTtl);
    }
    let rc = pkt.fib_lookup(params, 0) as u32;
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => {}
        // A backend on this node, or a reply to a client on it.
        BPF_FIB_LKUP_RET_NOT_FWDED => return pass(Counter::XdpPassLocal),
        // The next hop's MAC is unknown: the stack resolves it (ARP, neighbour discovery)
        // and sends the packet.
        BPF_FIB_LKUP_RET_NO_NEIGH => return pass(Counter::XdpPassNoNeigh),
        // No route, forwarding off, too big for the next link (the stack fragments or
        // answers "fragmentation needed" / "packet too big"): the stack does what it always
        // does.
        _ => return pass(Counter::XdpPassNoRoute),
    }
    let out = params.ifindex;
    // SAFETY: copied out at once (looked up only for another interface than this one).
    if out != ingress && unsafe { KP_IFACES.get(out) }.is_none_or(|f| f & IFACE_F_XDP_REDIRECT == 0)
    {
        // Only interfaces that take redirected frames (kproxy's XDP runs there) are sent
        // to directly; the stack forwards to the others.
        return pass(Counter::XdpPassOtherInterface);
    }
    // SAFETY: inside the checked headers.
    unsafe {
        F::decrement(ip);
        eth.cast::<[u8; 6]>().write_unaligned(params.dmac);
        eth.add(6).cast::<[u8; 6]>().write_unaligned(params.smac);
    }
    if out == ingress {
        stats::count(Counter::XdpTx);
        return xdp_action::XDP_TX;
    }
    stats::count(Counter::XdpRedirect);
    // SAFETY: helper call; its return value is the verdict (XDP_REDIRECT).
    unsafe { bpf_redirect(out, 0) as u32 }
}

#[inline(always)]
fn pass(why: Counter) -> u32 {
    stats::count(why);
    xdp_action::XDP_PASS
}

const _: () = assert!(size_of::<bpf_fib_lookup>() == 64);
