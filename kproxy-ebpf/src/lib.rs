//! kproxy's datapath: the same service load balancer behind a TC (tcx) classifier and an XDP
//! program. Entry points are thin: they wrap the context and map the outcome to a verdict.
#![no_std]
#![expect(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    clippy::cast_ptr_alignment,
    reason = "packet offsets and lengths are far below every target width, checked conversions \
              would add panic paths the verifier rejects, and packet pointers are only used with \
              read_unaligned/write_unaligned"
)]

mod conntrack;
mod csum;
mod family;
mod forward;
mod frontend;
mod icmp;
mod icmp_err;
mod lb;
mod maps;
mod packet;
mod parse;
mod policy;
mod reset;
mod route;
mod stats;
mod vip;

use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

use kproxy_common::iface::IFACE_F_INGRESS;

use crate::{
    family::{Family, V4},
    forward::Forwarding,
    lb::Action,
    packet::{Packet, TcPacket, XdpPacket},
};

// --- Upgrade testing only -------------------------------------------------------------------
// `cargo xtask build-ebpf` also builds `kproxy-variant.bpf.o` with KPROXY_EBPF_VARIANT set: its
// programs carry one extra stack store, so their bytecode (and kernel tag) differs while the
// maps stay identical. The restart test upgrades to it over pinned state. In the real object
// the constant is false and the store compiles away.
const UPGRADE_TEST_VARIANT: bool = option_env!("KPROXY_EBPF_VARIANT").is_some();

#[inline(always)]
fn upgrade_test_marker() {
    if UPGRADE_TEST_VARIANT {
        let mut marker = 0u32;
        // SAFETY: a volatile store to a local: kept by the compiler, harmless to the program.
        unsafe { core::ptr::write_volatile(&raw mut marker, 1) };
    }
}
// ---------------------------------------------------------------------------------------------

/// TC classifier for the ingress of the interfaces kproxy serves.
///
/// Untouched and translated packets return `TC_ACT_UNSPEC` (tcx "next"), so programs after
/// this one in the tcx chain still see them; the kernel routes translated packets as usual.
#[classifier]
#[expect(clippy::needless_pass_by_value, reason = "aya's program signature")]
pub fn kproxy_tc_ingress(ctx: TcContext) -> i32 {
    upgrade_test_marker();
    let mut pkt = TcPacket {
        ctx: &ctx,
        egress: false,
    };
    tc_ingress::<V4>(&mut pkt)
}

#[inline(always)]
fn tc_ingress<F: Family>(pkt: &mut TcPacket) -> i32 {
    match lb::handle::<F, _>(pkt) {
        // The node's own connection to one of its addresses (a NodePort) came back in
        // through the loopback device; once DNATed it is routed from here, like traffic the
        // egress program translates.
        Action::Dnat
            if pkt.ifindex() == route::LOOPBACK_IFINDEX && route::sent_by_node::<F>(pkt) =>
        {
            route::reroute::<F>(pkt)
        }
        Action::Pass | Action::Dnat | Action::ReverseNat => TC_ACT_UNSPEC,
        Action::SentBack => TC_ACT_REDIRECT,
        Action::Drop => TC_ACT_SHOT,
    }
}

/// TC classifier for their egress: packets the node routed towards a VIP get DNATed here and
/// routed again for their backend; rejects go back up to the local stack.
#[classifier]
#[expect(clippy::needless_pass_by_value, reason = "aya's program signature")]
pub fn kproxy_tc_egress(ctx: TcContext) -> i32 {
    upgrade_test_marker();
    if forwarded_from_served_interface(&ctx) {
        return TC_ACT_UNSPEC;
    }
    let mut pkt = TcPacket {
        ctx: &ctx,
        egress: true,
    };
    tc_egress::<V4>(&mut pkt)
}

/// Forwarded from an interface kproxy already handles on ingress: nothing left to do.
#[inline(always)]
fn forwarded_from_served_interface(ctx: &TcContext) -> bool {
    // SAFETY: the context pointer the kernel passed to this program.
    let from = unsafe { (*ctx.skb.skb).ingress_ifindex };
    // SAFETY: copied out at once.
    from != 0 && unsafe { maps::KP_IFACES.get(from) }.is_some_and(|f| f & IFACE_F_INGRESS != 0)
}

#[inline(always)]
fn tc_egress<F: Family>(pkt: &mut TcPacket) -> i32 {
    match lb::handle::<F, _>(pkt) {
        Action::Pass | Action::ReverseNat => TC_ACT_UNSPEC,
        Action::Dnat => route::reroute::<F>(pkt),
        Action::SentBack => TC_ACT_REDIRECT,
        Action::Drop => TC_ACT_SHOT,
    }
}

/// XDP program for a NIC's ingress.
#[xdp]
#[expect(clippy::needless_pass_by_value, reason = "aya's program signature")]
pub fn kproxy_xdp(ctx: XdpContext) -> u32 {
    xdp_ingress::<V4>(&ctx, false)
}

/// XDP program for an interface that may hand XDP partial checksums: service packets go on
/// to the TC program (see `names::PROG_XDP_DEFER`).
#[xdp]
#[expect(clippy::needless_pass_by_value, reason = "aya's program signature")]
pub fn kproxy_xdp_defer(ctx: XdpContext) -> u32 {
    xdp_ingress::<V4>(&ctx, true)
}

#[inline(always)]
fn xdp_ingress<F: Forwarding>(ctx: &XdpContext, defers: bool) -> u32 {
    upgrade_test_marker();
    let mut pkt = XdpPacket::new(ctx, defers);
    match lb::handle::<F, _>(&mut pkt) {
        Action::Dnat | Action::ReverseNat => forward::forward::<F>(&pkt),
        Action::Pass => xdp_action::XDP_PASS,
        Action::SentBack => xdp_action::XDP_TX,
        Action::Drop => xdp_action::XDP_DROP,
    }
}

/// The benchmark's ceiling, never attached by the agent: forwards every IPv4 packet the way
/// the fast path forwards a translated one (FIB lookup, TTL, MACs, XDP_TX/XDP_REDIRECT),
/// without looking for services or flows, so `cargo xtask bench` can show what the
/// translation itself costs.
#[xdp]
#[expect(clippy::needless_pass_by_value, reason = "aya's program signature")]
pub fn kproxy_xdp_forward_only(ctx: XdpContext) -> u32 {
    let pkt = XdpPacket::new(&ctx, false);
    if parse::is_ipv4_frame(&pkt) {
        forward::forward::<V4>(&pkt)
    } else {
        xdp_action::XDP_PASS
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable path to here; this only satisfies `no_std`.
    loop {}
}
