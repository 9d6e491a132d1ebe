//! Routing again after DNAT on egress. A packet the node sends towards a VIP was routed for
//! the VIP (say, out of the default route); once its destination is a backend it may belong
//! on another interface and always needs the backend's (or its gateway's) MAC address, or,
//! when the backend is the node itself (a hostNetwork endpoint), it must go back up the
//! node's own stack.

use core::mem::{MaybeUninit, size_of};

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_F_INGRESS, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_NOT_FWDED,
        BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC, bpf_fib_lookup,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh},
};
use kproxy_common::{
    addr::{In6Addr, IpAddress},
    stats::Counter,
};

use crate::{
    family::Family,
    packet::{Packet, TcPacket},
    stats,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// The loopback device's ifindex, the same in every network namespace.
pub const LOOPBACK_IFINDEX: u32 = 1;

/// Zeroes `slot` (a plain C struct whose size is a multiple of 4, all zeroes valid) word by
/// word where it lives. `zeroed()`, or zeroes moved into place, compile to a call of the
/// byte-by-byte `memset` BPF programs carry: 64 rounds of its loop for a FIB request, on
/// every forwarded packet.
#[inline(always)]
fn zero_in_place<T>(slot: &mut MaybeUninit<T>) -> &mut T {
    const { assert!(size_of::<T>().is_multiple_of(4)) };
    let words = slot.as_mut_ptr().cast::<u32>();
    let mut i = 0;
    while i < size_of::<T>() / 4 {
        // SAFETY: inside `slot`; volatile so that LLVM keeps word stores rather than folding
        // them into a memset.
        unsafe { words.add(i).write_volatile(0) };
        i += 1;
    }
    // SAFETY: every byte was written, and all zeroes is a valid T (see above).
    unsafe { slot.assume_init_mut() }
}

/// A FIB lookup of IPv4 `src` → `dst` as if received on `ifindex`, built in `slot`.
#[inline(always)]
pub fn ipv4_request(
    slot: &mut MaybeUninit<bpf_fib_lookup>,
    ifindex: u32,
    src: u32,
    dst: u32,
) -> &mut bpf_fib_lookup {
    let params = zero_in_place(slot);
    params.family = AF_INET;
    params.ifindex = ifindex;
    params.__bindgen_anon_3.ipv4_src = src;
    params.__bindgen_anon_4.ipv4_dst = dst;
    params
}

/// An IPv6 FIB lookup of `src` → `dst` as if received on `ifindex`, built in `slot`.
#[inline(always)]
pub fn ipv6_request(
    slot: &mut MaybeUninit<bpf_fib_lookup>,
    ifindex: u32,
    src: In6Addr,
    dst: In6Addr,
) -> &mut bpf_fib_lookup {
    let params = zero_in_place(slot);
    params.family = AF_INET6;
    params.ifindex = ifindex;
    params.__bindgen_anon_3.ipv6_src = src.0;
    params.__bindgen_anon_4.ipv6_dst = dst.0;
    params
}

/// Sends the DNATed packet where the routing table says, with the right MACs. Returns the TC
/// verdict.
#[inline(always)]
pub fn reroute<F: Family>(pkt: &TcPacket) -> i32 {
    let ctx = pkt.ctx;
    // The addresses as rewritten (the header was checked and written just before).
    let Some((saddr, daddr)) = F::addresses(pkt) else {
        stats::count(Counter::DropNoRoute);
        return TC_ACT_SHOT;
    };
    // SAFETY: the context pointer the kernel passed to this program.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let mut slot = MaybeUninit::uninit();
    let params = F::fib_request(&mut slot, ifindex, saddr, daddr);
    // Looked up as if received on this interface (as forwarding would): an output lookup would
    // pin the route to this very interface.
    // SAFETY: params lives on the stack for the call; the size is its own.
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            core::ptr::from_mut(params),
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {
            let mut macs = [0u8; 12];
            macs[..6].copy_from_slice(&params.dmac);
            macs[6..].copy_from_slice(&params.smac);
            if ctx.store(0, &macs, 0).is_err() {
                stats::count(Counter::DropNoRoute);
                return TC_ACT_SHOT;
            }
            if params.ifindex == ifindex {
                return TC_ACT_UNSPEC;
            }
            // SAFETY: helper call; TC_ACT_REDIRECT carries it out.
            unsafe { bpf_redirect(params.ifindex, 0) };
            TC_ACT_REDIRECT
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => {
            // The route is known but the next hop's MAC is not: let the neighbour subsystem
            // resolve it (ARP, neighbour discovery) and send the packet. No next hop is
            // passed: the kernel then routes the packet itself and gives it that route, so
            // it waits for resolution on the route it will take. Given a next hop, a packet
            // the node sent itself (egress) keeps the route it was sent by, the VIP's, and
            // when the neighbour answers the kernel sends what waited by that route's next
            // hop: out of the VIP's interface to a host that is not the backend. The first
            // SYN of a node's connection to each backend not yet resolved was lost that way
            // (the node-process tests in clusterip.rs and ipv6.rs count retransmissions).
            // SAFETY: helper call; without parameters (null, length 0) the kernel looks the
            // route up; TC_ACT_REDIRECT carries it out.
            unsafe { bpf_redirect_neigh(params.ifindex, core::ptr::null_mut(), 0, 0) };
            TC_ACT_REDIRECT
        }
        // Not forwarded: no route, or a local address. A backend on one of the node's own
        // addresses (a hostNetwork endpoint) is delivered through the loopback device's
        // ingress, as the kernel delivers its own local traffic; its all-zero MAC makes the
        // frame "for this host". (The agent sets accept_local on lo, or the kernel would drop
        // a frame received with a local source address; replies come back through lo, where
        // kproxy's ingress program translates them.)
        // SAFETY: only tested for presence.
        BPF_FIB_LKUP_RET_NOT_FWDED if unsafe { F::node_addrs().get(daddr) }.is_some() => {
            if ctx.store(0, &[0u8; 12], 0).is_err() {
                stats::count(Counter::DropNoRoute);
                return TC_ACT_SHOT;
            }
            // SAFETY: helper call; TC_ACT_REDIRECT carries it out.
            unsafe { bpf_redirect(LOOPBACK_IFINDEX, u64::from(BPF_F_INGRESS)) };
            TC_ACT_REDIRECT
        }
        _ => {
            stats::count(Counter::DropNoRoute);
            TC_ACT_SHOT
        }
    }
}

/// Whether the packet's (translated) source is one of the node's addresses.
#[inline(always)]
pub fn sent_by_node<F: Family>(pkt: &TcPacket) -> bool {
    // SAFETY: only tested for presence.
    F::addresses(pkt).is_some_and(|(saddr, _)| unsafe { F::node_addrs().get(saddr) }.is_some())
}

/// `BPF_FIB_LOOKUP_SKIP_NEIGH` and `BPF_FIB_LOOKUP_SRC` (kernel 6.2 and 6.8; not in the
/// bindings this crate uses).
const FIB_LOOKUP_SKIP_NEIGH: u32 = 1 << 2;
const FIB_LOOKUP_SRC: u32 = 1 << 4;

/// The node address a flow to `backend` is masqueraded to: the source the kernel would
/// pick for the route towards the backend, as iptables' MASQUERADE does with the address
/// of the interface the packet leaves through. A backend on the node itself is reached
/// from its own address. `None` if there is no route.
#[inline(always)]
pub fn masquerade_addr<F: Family, P: Packet>(
    pkt: &P,
    client: F::Addr,
    backend: F::Addr,
) -> Option<F::Addr> {
    // SAFETY: copied out at once.
    if unsafe { F::node_addrs().get(backend) }.is_some() {
        return Some(backend);
    }
    let mut slot = MaybeUninit::uninit();
    let params = F::fib_request(&mut slot, pkt.ifindex(), client, backend);
    let rc = pkt.fib_lookup(params, FIB_LOOKUP_SKIP_NEIGH | FIB_LOOKUP_SRC);
    if rc as u32 != BPF_FIB_LKUP_RET_SUCCESS {
        return None;
    }
    let src = F::fib_src(params);
    (!src.is_unspecified()).then_some(src)
}
