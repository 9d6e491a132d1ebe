//! The two ways a program touches packet bytes: an skb under TC, a frame under XDP.
//!
//! The service logic is written once against `Packet`; each attach point implements reads,
//! the NAT rewrite and "send this frame back" in its own way. TC uses the kernel's checksum
//! helpers because only they know whether an skb is CHECKSUM_PARTIAL (a veth from a local
//! socket hands over packets whose L4 checksum holds just the pseudo-header sum; a port change
//! must then leave it alone). XDP frames come from a NIC with complete checksums, so XDP
//! updates both checksums incrementally itself.

use core::mem::size_of;

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_INGRESS, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, bpf_fib_lookup},
    helpers::{
        bpf_fib_lookup as fib_lookup_helper, bpf_redirect, bpf_skb_change_tail, bpf_xdp_adjust_tail,
    },
    programs::{TcContext, XdpContext},
};

use kproxy_common::addr::In6Addr;

use crate::{
    csum,
    maps::{KP_TAIL_TC, KP_TAIL_XDP},
    parse::{IP_CSUM_OFF, IPV4_HLEN, L3_OFF, TCP_HLEN, UDP_HLEN},
    parse6::IPV6_HLEN,
};

/// `bpf_l4_csum_replace` flag (kernel 6.16): the packet is IPv6, whose address changes the
/// L4 checksum's own change balances in a CHECKSUM_COMPLETE sum (IPv4's header checksum
/// does that there); without it the helper corrupts `skb->csum` of such packets.
const BPF_F_IPV6: u64 = 1 << 7;

/// Offset of `side`'s address in the IPv6 header.
#[inline(always)]
const fn addr6_offset(side: Side) -> usize {
    if matches!(side, Side::Source) {
        L3_OFF + 8
    } else {
        L3_OFF + 24
    }
}

/// Which end of a packet a rewrite changes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The source: reverse NAT of a backend's reply.
    Source,
    /// The destination: DNAT of a client's packet.
    Destination,
}

/// One address (and port) rewrite of a translated packet, in either family's addresses.
pub struct NatRewrite<A> {
    pub side: Side,
    pub old_addr: A,
    pub new_addr: A,
    pub old_port: u16,
    pub new_port: u16,
    /// The other end's address and port: they change too when the flow is masqueraded
    /// (SNAT to a node address) or its client port was taken towards the backend; equal
    /// old and new values leave them alone.
    pub peer: Peer<A>,
    /// Offset of the L4 header; `None` for a later fragment, which has none.
    pub l4_off: Option<usize>,
    /// UDP (a zero checksum means "none" and stays zero) rather than TCP.
    pub udp: bool,
}

impl<A> NatRewrite<A> {
    /// Offset of the address within the IPv4 header.
    #[inline(always)]
    fn addr_in_ip(&self) -> usize {
        if self.side == Side::Source { 12 } else { 16 }
    }

    /// Offset of the other end's address within the IPv4 header.
    #[inline(always)]
    fn peer_addr_in_ip(&self) -> usize {
        28 - self.addr_in_ip()
    }

    /// Offset of the port within the L4 header.
    #[inline(always)]
    fn port_in_l4(&self) -> usize {
        if self.side == Side::Source { 0 } else { 2 }
    }

    /// Offset of the other end's port within the L4 header.
    #[inline(always)]
    fn peer_port_in_l4(&self) -> usize {
        2 - self.port_in_l4()
    }

    /// Offset of the checksum within the L4 header.
    #[inline(always)]
    fn csum_in_l4(&self) -> usize {
        if self.udp { UDP_CSUM } else { TCP_CSUM }
    }
}

/// The other end of a rewrite (see `NatRewrite::peer`).
#[derive(Clone, Copy)]
pub struct Peer<A> {
    pub old_addr: A,
    pub new_addr: A,
    pub old_port: u16,
    pub new_port: u16,
}

impl<A: PartialEq> Peer<A> {
    #[inline(always)]
    fn addr_changes(&self) -> bool {
        self.old_addr != self.new_addr
    }

    #[inline(always)]
    const fn port_changes(&self) -> bool {
        self.old_port != self.new_port
    }
}

const TCP_CSUM: usize = 16;
const UDP_CSUM: usize = 6;

pub trait Packet {
    /// Makes the first `len` bytes readable; false if the packet is shorter.
    fn ensure(&mut self, len: usize) -> bool;
    /// Copies a `T` from `off`, if the packet holds it.
    fn read<T: Copy>(&self, off: usize) -> Option<T>;
    /// Copies a `T` from `off` into `dst`, byte by byte, if the packet holds it. For wide
    /// fields (IPv6 addresses): read as a value, a field's bytes are gathered in registers
    /// that BPF, with its few, spills to the stack; copied, each byte goes straight to its
    /// place.
    fn read_into<T: Copy>(&self, off: usize, dst: &mut T) -> bool;
    /// Length of the whole packet in bytes.
    fn len(&self) -> u32;
    /// Rewrites an address and port, keeping IP and L4 checksums right.
    fn rewrite(&mut self, rw: &NatRewrite<u32>) -> Result<(), ()>;
    /// `rewrite` for IPv6: no IP header checksum, the addresses enter the L4 checksum
    /// through its pseudo-header.
    fn rewrite6(&mut self, rw: &NatRewrite<In6Addr>) -> Result<(), ()>;
    /// Rewrites the outer IPv6 source or destination address of an ICMPv6 packet whose
    /// checksum (at `csum_off`) covers it through the pseudo-header.
    fn set_ip6_addr(
        &mut self,
        side: Side,
        old: &In6Addr,
        new: &In6Addr,
        csum_off: usize,
    ) -> Result<(), ()>;
    /// Rewrites the outer IPv4 source or destination address and the IP header checksum
    /// (nothing else: for ICMP, whose checksum has no pseudo-header).
    fn set_ip_addr(&mut self, side: Side, old: u32, new: u32) -> Result<(), ()>;
    /// Replaces the 16-bit word `old` at `off` by `new` and folds the change into the
    /// checksum at `csum_off`, which covers the word as plain data (no pseudo-header).
    fn patch16(&mut self, off: usize, old: u16, new: u16, csum_off: usize) -> Result<(), ()>;
    /// `patch16` for a 32-bit word.
    fn patch32(&mut self, off: usize, old: u32, new: u32, csum_off: usize) -> Result<(), ()>;
    /// `patch16` for an IPv6 address.
    fn patch_addr6(
        &mut self,
        off: usize,
        old: &In6Addr,
        new: &In6Addr,
        csum_off: usize,
    ) -> Result<(), ()>;
    /// Replaces the packet with `frame` and sends it back where it came from.
    fn send_back<const N: usize>(&mut self, frame: &[u8; N]) -> Result<(), ()>;
    /// Whether service packets must be left to a later hook (`kproxy_xdp_defer`).
    fn must_defer(&self) -> bool;
    /// The interface the program runs on.
    fn ifindex(&self) -> u32;
    /// The interface the packet entered the node through; 0 if the node sent it.
    fn ingress_ifindex(&self) -> u32;
    /// `bpf_fib_lookup` for this packet's context; returns the helper's result.
    fn fib_lookup(&self, params: &mut bpf_fib_lookup, flags: u32) -> i64;
    /// Tail-calls the program at `index` of this attach type's tail-call map; returns only
    /// if there is none.
    fn tail_call(&self, index: u32);
}

/// Offset of `side`'s address in the IPv4 header.
#[inline(always)]
const fn addr_offset(side: Side) -> usize {
    if matches!(side, Side::Source) {
        L3_OFF + 12
    } else {
        L3_OFF + 16
    }
}

#[inline(always)]
fn fib_lookup_in(ctx: &impl EbpfContext, params: &mut bpf_fib_lookup, flags: u32) -> i64 {
    // SAFETY: params lives on the caller's stack for the call; the size is its own.
    unsafe {
        fib_lookup_helper(
            ctx.as_ptr(),
            params,
            size_of::<bpf_fib_lookup>() as i32,
            flags,
        )
    }
}

/// A packet's start and end from the context fields `data` and `data_end`, read where they
/// are used (volatile: a copy kept in a register was spilled with a 32-bit store, or moved
/// with a 32-bit move, LLVM knowing the fields are 32 bits wide, which the verifier refuses
/// for a packet pointer).
///
/// # Safety
/// Both point into the context the kernel passed to this program.
#[inline(always)]
unsafe fn bounds(data: *const u32, data_end: *const u32) -> (usize, usize) {
    // SAFETY: the caller's promise.
    unsafe {
        (
            core::ptr::read_volatile(data) as usize,
            core::ptr::read_volatile(data_end) as usize,
        )
    }
}

#[inline(always)]
fn read_into_at<T: Copy>(start: usize, end: usize, off: usize, dst: &mut T) -> bool {
    if start + off + size_of::<T>() > end || off > MAX_FRAME_OFF {
        return false;
    }
    // SAFETY: the range [start + off, start + off + size_of::<T>()) lies inside the packet,
    // and `dst` is a distinct, writable T.
    unsafe {
        core::ptr::copy_nonoverlapping(
            (start + off) as *const u8,
            core::ptr::from_mut(dst).cast::<u8>(),
            size_of::<T>(),
        );
    }
    true
}

#[inline(always)]
fn read_at<T: Copy>(start: usize, end: usize, off: usize) -> Option<T> {
    if start + off + size_of::<T>() > end || off > MAX_FRAME_OFF {
        return None;
    }
    // SAFETY: the range [start + off, start + off + size_of::<T>()) lies inside the packet.
    Some(unsafe { ((start + off) as *const T).read_unaligned() })
}

/// A packet seen by a TC (tcx) classifier.
pub struct TcPacket<'a> {
    pub ctx: &'a TcContext,
    /// Attached to egress: "back where it came from" is the local stack, not the wire.
    pub egress: bool,
}

impl Packet for TcPacket<'_> {
    #[inline(always)]
    fn must_defer(&self) -> bool {
        Self::DEFERS
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the context pointer the kernel passed to this program.
        unsafe { (*self.ctx.skb.skb).ifindex }
    }

    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        // On ingress this is the interface itself (the stack sets it before TC runs): read
        // the same way on both hooks, as the IPv6 stages learn their hook only at run time,
        // and a context field chosen at run time is a modified context pointer to the
        // verifier.
        // SAFETY: as above.
        unsafe { (*self.ctx.skb.skb).ingress_ifindex }
    }

    #[inline(always)]
    fn tail_call(&self, index: u32) {
        // SAFETY: a tail call replaces this program; nothing of it runs afterwards.
        unsafe { KP_TAIL_TC.tail_call(self.ctx, index) };
    }

    #[inline(always)]
    fn fib_lookup(&self, params: &mut bpf_fib_lookup, flags: u32) -> i64 {
        fib_lookup_in(self.ctx, params, flags)
    }

    #[inline(always)]
    fn ensure(&mut self, len: usize) -> bool {
        let (start, end) = self.bounds();
        if start + len <= end {
            return true;
        }
        // Headers beyond the linear area (rare: GRO'd or fragmented skbs); pulling may copy.
        if (self.ctx.len() as usize) < len || self.ctx.pull_data(len as u32).is_err() {
            return false;
        }
        let (start, end) = self.bounds();
        start + len <= end
    }

    #[inline(always)]
    fn read<T: Copy>(&self, off: usize) -> Option<T> {
        let (start, end) = self.bounds();
        read_at(start, end, off)
    }

    #[inline(always)]
    fn read_into<T: Copy>(&self, off: usize, dst: &mut T) -> bool {
        let (start, end) = self.bounds();
        read_into_at(start, end, off, dst)
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        self.ctx.len()
    }

    #[inline(always)]
    fn rewrite(&mut self, rw: &NatRewrite<u32>) -> Result<(), ()> {
        let mangled = if rw.udp {
            u64::from(BPF_F_MARK_MANGLED_0)
        } else {
            0
        };
        if let Some(l4_off) = rw.l4_off {
            let csum_off = l4_off + rw.csum_in_l4();
            // The address is part of the L4 pseudo-header; the port is L4 payload proper.
            self.ctx
                .l4_csum_replace(
                    csum_off,
                    u64::from(rw.old_addr),
                    u64::from(rw.new_addr),
                    u64::from(BPF_F_PSEUDO_HDR) | mangled | 4,
                )
                .map_err(|_| ())?;
            self.ctx
                .l4_csum_replace(
                    csum_off,
                    u64::from(rw.old_port),
                    u64::from(rw.new_port),
                    mangled | 2,
                )
                .map_err(|_| ())?;
            self.ctx
                .store(l4_off + rw.port_in_l4(), &rw.new_port, 0)
                .map_err(|_| ())?;
            let peer = &rw.peer;
            if peer.addr_changes() {
                self.ctx
                    .l4_csum_replace(
                        csum_off,
                        u64::from(peer.old_addr),
                        u64::from(peer.new_addr),
                        u64::from(BPF_F_PSEUDO_HDR) | mangled | 4,
                    )
                    .map_err(|_| ())?;
            }
            if peer.port_changes() {
                self.ctx
                    .l4_csum_replace(
                        csum_off,
                        u64::from(peer.old_port),
                        u64::from(peer.new_port),
                        mangled | 2,
                    )
                    .map_err(|_| ())?;
                self.ctx
                    .store(l4_off + rw.peer_port_in_l4(), &peer.new_port, 0)
                    .map_err(|_| ())?;
            }
        }
        if rw.peer.addr_changes() {
            self.ctx
                .l3_csum_replace(
                    IP_CSUM_OFF,
                    u64::from(rw.peer.old_addr),
                    u64::from(rw.peer.new_addr),
                    4,
                )
                .map_err(|_| ())?;
            self.ctx
                .store(L3_OFF + rw.peer_addr_in_ip(), &rw.peer.new_addr, 0)
                .map_err(|_| ())?;
        }
        self.ctx
            .l3_csum_replace(
                IP_CSUM_OFF,
                u64::from(rw.old_addr),
                u64::from(rw.new_addr),
                4,
            )
            .map_err(|_| ())?;
        self.ctx
            .store(L3_OFF + rw.addr_in_ip(), &rw.new_addr, 0)
            .map_err(|_| ())
    }

    #[inline(always)]
    fn set_ip_addr(&mut self, side: Side, old: u32, new: u32) -> Result<(), ()> {
        self.ctx
            .l3_csum_replace(IP_CSUM_OFF, u64::from(old), u64::from(new), 4)
            .map_err(|_| ())?;
        self.ctx.store(addr_offset(side), &new, 0).map_err(|_| ())
    }

    #[inline(always)]
    fn rewrite6(&mut self, rw: &NatRewrite<In6Addr>) -> Result<(), ()> {
        let mangled = if rw.udp {
            u64::from(BPF_F_MARK_MANGLED_0)
        } else {
            0
        };
        let peer = &rw.peer;
        if let Some(l4_off) = rw.l4_off {
            let csum_off = l4_off + rw.csum_in_l4();
            // Both addresses enter through the pseudo-header, in one change.
            let mut addrs = csum::Update::CHANGES.addr(rw.old_addr, rw.new_addr);
            if peer.addr_changes() {
                addrs = addrs.addr(peer.old_addr, peer.new_addr);
            }
            self.pseudo_header_changed(csum_off, addrs, mangled)?;
            self.ctx
                .l4_csum_replace(
                    csum_off,
                    u64::from(rw.old_port),
                    u64::from(rw.new_port),
                    mangled | 2,
                )
                .map_err(|_| ())?;
            self.ctx
                .store(l4_off + rw.port_in_l4(), &rw.new_port, 0)
                .map_err(|_| ())?;
            if peer.port_changes() {
                self.ctx
                    .l4_csum_replace(
                        csum_off,
                        u64::from(peer.old_port),
                        u64::from(peer.new_port),
                        mangled | 2,
                    )
                    .map_err(|_| ())?;
                self.ctx
                    .store(l4_off + rw.peer_port_in_l4(), &peer.new_port, 0)
                    .map_err(|_| ())?;
            }
        }
        let (addr_side, peer_side) = if rw.side == Side::Source {
            (Side::Source, Side::Destination)
        } else {
            (Side::Destination, Side::Source)
        };
        if peer.addr_changes() {
            self.ctx
                .store(addr6_offset(peer_side), &peer.new_addr, 0)
                .map_err(|_| ())?;
        }
        self.ctx
            .store(addr6_offset(addr_side), &rw.new_addr, 0)
            .map_err(|_| ())
    }

    #[inline(always)]
    fn set_ip6_addr(
        &mut self,
        side: Side,
        old: &In6Addr,
        new: &In6Addr,
        csum_off: usize,
    ) -> Result<(), ()> {
        self.pseudo_header_changed(csum_off, csum::Update::CHANGES.addr(*old, *new), 0)?;
        self.ctx.store(addr6_offset(side), new, 0).map_err(|_| ())
    }

    #[inline(always)]
    fn patch16(&mut self, off: usize, old: u16, new: u16, csum_off: usize) -> Result<(), ()> {
        self.ctx
            .l4_csum_replace(csum_off, u64::from(old), u64::from(new), 2)
            .map_err(|_| ())?;
        self.ctx.store(off, &new, 0).map_err(|_| ())
    }

    #[inline(always)]
    fn patch32(&mut self, off: usize, old: u32, new: u32, csum_off: usize) -> Result<(), ()> {
        self.ctx
            .l4_csum_replace(csum_off, u64::from(old), u64::from(new), 4)
            .map_err(|_| ())?;
        self.ctx.store(off, &new, 0).map_err(|_| ())
    }

    #[inline(always)]
    fn patch_addr6(
        &mut self,
        off: usize,
        old: &In6Addr,
        new: &In6Addr,
        csum_off: usize,
    ) -> Result<(), ()> {
        // Size 0: the change, precomputed; plain data, not a pseudo-header.
        let diff = csum::Update::CHANGES.addr(*old, *new).diff();
        self.ctx
            .l4_csum_replace(csum_off, 0, u64::from(diff), 0)
            .map_err(|_| ())?;
        self.ctx.store(off, new, 0).map_err(|_| ())
    }

    #[inline(always)]
    fn send_back<const N: usize>(&mut self, frame: &[u8; N]) -> Result<(), ()> {
        let skb = self.ctx.skb.skb;
        // SAFETY: `skb` is the context pointer the kernel passed to this program.
        let ifindex = unsafe { (*skb).ifindex };
        // SAFETY: helper call on the program's own skb.
        if unsafe { bpf_skb_change_tail(skb, N as u32, 0) } != 0 {
            return Err(());
        }
        self.ctx.store(0, frame, 0).map_err(|_| ())?;
        let flags = if self.egress {
            u64::from(BPF_F_INGRESS)
        } else {
            0
        };
        // SAFETY: plain helper call; the verdict TC_ACT_REDIRECT carries it out.
        unsafe { bpf_redirect(ifindex, flags) };
        Ok(())
    }
}

impl TcPacket<'_> {
    #[inline(always)]
    fn bounds(&self) -> (usize, usize) {
        let skb = self.ctx.skb.skb;
        // SAFETY: the context pointer the kernel passed to this program.
        unsafe { bounds(&raw const (*skb).data, &raw const (*skb).data_end) }
    }

    /// TC programs see the skb's checksum state through the kernel's helpers.
    const DEFERS: bool = false;

    /// Folds IPv6 pseudo-header `changes` into the L4 checksum at `csum_off`.
    #[inline(always)]
    fn pseudo_header_changed(
        &self,
        csum_off: usize,
        changes: csum::Update,
        mangled: u64,
    ) -> Result<(), ()> {
        let flags = u64::from(BPF_F_PSEUDO_HDR) | mangled;
        let diff = u64::from(changes.diff());
        // Size 0: `diff` is the precomputed change. Kernels before 6.16 refuse BPF_F_IPV6;
        // there the helper's CHECKSUM_COMPLETE adjustment cannot be avoided.
        self.ctx
            .l4_csum_replace(csum_off, 0, diff, flags | BPF_F_IPV6)
            .or_else(|_| self.ctx.l4_csum_replace(csum_off, 0, diff, flags))
            .map_err(|_| ())
    }
}

/// A frame seen by an XDP program.
pub struct XdpPacket<'a> {
    pub ctx: &'a XdpContext,
    /// Service packets are left to TC (`kproxy_xdp_defer`); a constant of each program.
    pub defers: bool,
    /// The IPv4 source and destination a rewrite left in the packet (0, 0 before any), so
    /// that forwarding need not read them back byte by byte.
    pub rewritten: (u32, u32),
    /// The frame's length, read once: a service packet's length never changes (the frames
    /// sent back are not counted by it).
    len: u32,
}

impl<'a> XdpPacket<'a> {
    #[inline(always)]
    pub fn new(ctx: &'a XdpContext, defers: bool) -> Self {
        let mut pkt = Self {
            ctx,
            defers,
            rewritten: (0, 0),
            len: 0,
        };
        let (start, end) = pkt.bounds();
        pkt.len = (end - start) as u32;
        pkt
    }
}

/// Past the largest offset into a frame the datapath reads or writes at (an IPv6 transport
/// header after the extension headers walked, `parse6::MAX_L4_OFF`).
const MAX_FRAME_OFF: usize = 511;
const _: () = assert!(crate::parse6::MAX_L4_OFF + TCP_HLEN <= MAX_FRAME_OFF);

impl XdpPacket<'_> {
    #[inline(always)]
    pub fn bounds(&self) -> (usize, usize) {
        let md = self.ctx.ctx;
        // SAFETY: the context pointer the kernel passed to this program.
        unsafe { bounds(&raw const (*md).data, &raw const (*md).data_end) }
    }

    #[inline(always)]
    fn ptr_mut<T>(&self, off: usize) -> Result<*mut T, ()> {
        let (start, end) = self.bounds();
        // An offset read back from memory (a staged family's flow, see `lb::Stage`) has no
        // bounds the verifier knows of; a frame is never longer than this anyway.
        if off > MAX_FRAME_OFF || start + off + size_of::<T>() > end {
            return Err(());
        }
        Ok((start + off) as *mut T)
    }

    /// The L4 half of `rewrite`: port and checksum inside a `LEN`-byte header at `l4_off`.
    #[inline(always)]
    fn rewrite_l4<A: csum::Words + PartialEq, const LEN: usize, const CSUM: usize>(
        &self,
        l4_off: usize,
        rw: &NatRewrite<A>,
    ) -> Result<(), ()> {
        let l4 = self.ptr_mut::<[u8; LEN]>(l4_off)?.cast::<u8>();
        // SAFETY: the whole L4 header was bounds-checked above; CSUM + 2 <= LEN.
        unsafe {
            let csum = l4.add(CSUM).cast::<u16>();
            let old = csum.read_unaligned();
            if !(rw.udp && old == 0) {
                let peer = &rw.peer;
                let mut update = csum::Update::of(old)
                    .addr(rw.old_addr, rw.new_addr)
                    .word2(rw.old_port, rw.new_port);
                if peer.addr_changes() {
                    update = update.addr(peer.old_addr, peer.new_addr);
                }
                if peer.port_changes() {
                    update = update.word2(peer.old_port, peer.new_port);
                }
                let mut new = update.check();
                if rw.udp && new == 0 {
                    new = 0xffff;
                }
                csum.write_unaligned(new);
            }
            l4.add(rw.port_in_l4())
                .cast::<u16>()
                .write_unaligned(rw.new_port);
            if rw.peer.port_changes() {
                l4.add(rw.peer_port_in_l4())
                    .cast::<u16>()
                    .write_unaligned(rw.peer.new_port);
            }
        }
        Ok(())
    }
}

impl Packet for XdpPacket<'_> {
    #[inline(always)]
    fn must_defer(&self) -> bool {
        self.defers
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        self.ctx.ingress_ifindex() as u32
    }

    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        self.ifindex()
    }

    #[inline(always)]
    fn tail_call(&self, index: u32) {
        // SAFETY: a tail call replaces this program; nothing of it runs afterwards.
        unsafe { KP_TAIL_XDP.tail_call(self.ctx, index) };
    }

    #[inline(always)]
    fn fib_lookup(&self, params: &mut bpf_fib_lookup, flags: u32) -> i64 {
        fib_lookup_in(self.ctx, params, flags)
    }

    #[inline(always)]
    fn ensure(&mut self, len: usize) -> bool {
        let (start, end) = self.bounds();
        start + len <= end
    }

    #[inline(always)]
    fn read<T: Copy>(&self, off: usize) -> Option<T> {
        let (start, end) = self.bounds();
        read_at(start, end, off)
    }

    #[inline(always)]
    fn read_into<T: Copy>(&self, off: usize, dst: &mut T) -> bool {
        let (start, end) = self.bounds();
        read_into_at(start, end, off, dst)
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        self.len
    }

    #[inline(always)]
    fn rewrite(&mut self, rw: &NatRewrite<u32>) -> Result<(), ()> {
        // Every access goes through a pointer to a whole header checked once, at a constant
        // offset from it: the verifier tracks the checked range on that pointer only.
        let ip = self.ptr_mut::<[u8; IPV4_HLEN]>(L3_OFF)?.cast::<u8>();
        // SAFETY: the 20-byte IPv4 header was bounds-checked above.
        unsafe {
            let csum = ip.add(IP_CSUM_OFF - L3_OFF).cast::<u16>();
            let mut update =
                csum::Update::of(csum.read_unaligned()).word4(rw.old_addr, rw.new_addr);
            if rw.peer.addr_changes() {
                update = update.word4(rw.peer.old_addr, rw.peer.new_addr);
                ip.add(rw.peer_addr_in_ip())
                    .cast::<u32>()
                    .write_unaligned(rw.peer.new_addr);
            }
            csum.write_unaligned(update.check());
            ip.add(rw.addr_in_ip())
                .cast::<u32>()
                .write_unaligned(rw.new_addr);
        }
        self.rewritten = if rw.side == Side::Destination {
            (rw.peer.new_addr, rw.new_addr)
        } else {
            (rw.new_addr, rw.peer.new_addr)
        };
        match rw.l4_off {
            None => Ok(()),
            Some(l4_off) if rw.udp => self.rewrite_l4::<u32, UDP_HLEN, UDP_CSUM>(l4_off, rw),
            Some(l4_off) => self.rewrite_l4::<u32, TCP_HLEN, TCP_CSUM>(l4_off, rw),
        }
    }

    #[inline(always)]
    fn rewrite6(&mut self, rw: &NatRewrite<In6Addr>) -> Result<(), ()> {
        let ip = self.ptr_mut::<[u8; IPV6_HLEN]>(L3_OFF)?.cast::<u8>();
        let (addr_off, peer_off) = if rw.side == Side::Source {
            (8, 24)
        } else {
            (24, 8)
        };
        // SAFETY: the 40-byte IPv6 header was bounds-checked above.
        unsafe {
            if rw.peer.addr_changes() {
                ip.add(peer_off)
                    .cast::<In6Addr>()
                    .write_unaligned(rw.peer.new_addr);
            }
            ip.add(addr_off)
                .cast::<In6Addr>()
                .write_unaligned(rw.new_addr);
        }
        match rw.l4_off {
            None => Ok(()),
            Some(l4_off) if rw.udp => self.rewrite_l4::<In6Addr, UDP_HLEN, UDP_CSUM>(l4_off, rw),
            Some(l4_off) => self.rewrite_l4::<In6Addr, TCP_HLEN, TCP_CSUM>(l4_off, rw),
        }
    }

    #[inline(always)]
    fn set_ip6_addr(
        &mut self,
        side: Side,
        old: &In6Addr,
        new: &In6Addr,
        csum_off: usize,
    ) -> Result<(), ()> {
        // XDP computes the checksum itself: a pseudo-header word is a word like any other.
        self.patch_addr6(addr6_offset(side), old, new, csum_off)
    }

    #[inline(always)]
    fn set_ip_addr(&mut self, side: Side, old: u32, new: u32) -> Result<(), ()> {
        let ip = self.ptr_mut::<[u8; IPV4_HLEN]>(L3_OFF)?.cast::<u8>();
        // SAFETY: the 20-byte IPv4 header was bounds-checked above.
        unsafe {
            let csum = ip.add(IP_CSUM_OFF - L3_OFF).cast::<u16>();
            csum.write_unaligned(csum::replace4(csum.read_unaligned(), old, new));
            ip.add(addr_offset(side) - L3_OFF)
                .cast::<u32>()
                .write_unaligned(new);
        }
        Ok(())
    }

    #[inline(always)]
    fn patch16(&mut self, off: usize, old: u16, new: u16, csum_off: usize) -> Result<(), ()> {
        let word = self.ptr_mut::<u16>(off)?;
        let csum = self.ptr_mut::<u16>(csum_off)?;
        // SAFETY: both bounds-checked above.
        unsafe {
            csum.write_unaligned(csum::replace2(csum.read_unaligned(), old, new));
            word.write_unaligned(new);
        }
        Ok(())
    }

    #[inline(always)]
    fn patch32(&mut self, off: usize, old: u32, new: u32, csum_off: usize) -> Result<(), ()> {
        let word = self.ptr_mut::<u32>(off)?;
        let csum = self.ptr_mut::<u16>(csum_off)?;
        // SAFETY: both bounds-checked above.
        unsafe {
            csum.write_unaligned(csum::replace4(csum.read_unaligned(), old, new));
            word.write_unaligned(new);
        }
        Ok(())
    }

    #[inline(always)]
    fn patch_addr6(
        &mut self,
        off: usize,
        old: &In6Addr,
        new: &In6Addr,
        csum_off: usize,
    ) -> Result<(), ()> {
        let addr = self.ptr_mut::<In6Addr>(off)?;
        let csum = self.ptr_mut::<u16>(csum_off)?;
        // SAFETY: both bounds-checked above; `new` is copied byte by byte (see `read_into`).
        unsafe {
            csum.write_unaligned(
                csum::Update::of(csum.read_unaligned())
                    .addr(*old, *new)
                    .check(),
            );
            core::ptr::copy_nonoverlapping(
                core::ptr::from_ref(new).cast::<u8>(),
                addr.cast::<u8>(),
                size_of::<In6Addr>(),
            );
        }
        Ok(())
    }

    #[inline(always)]
    fn send_back<const N: usize>(&mut self, frame: &[u8; N]) -> Result<(), ()> {
        let delta = N as i32 - self.len() as i32;
        // SAFETY: helper call on the program's own context.
        if unsafe { bpf_xdp_adjust_tail(self.ctx.ctx, delta) } != 0 {
            return Err(());
        }
        let out = self.ptr_mut::<[u8; N]>(0)?;
        // SAFETY: bounds-checked just above (after the resize).
        unsafe { out.write_unaligned(*frame) };
        Ok(())
    }
}
