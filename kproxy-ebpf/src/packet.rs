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
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::{bpf_redirect, bpf_skb_change_tail, bpf_xdp_adjust_tail},
    programs::{TcContext, XdpContext},
};

use crate::{csum, icmp::REJECT_FRAME_LEN, parse::IP_CSUM_OFF};

/// One address (and port) rewrite of a translated packet.
pub struct NatRewrite {
    /// Offset of the IPv4 address to replace (source or destination).
    pub addr_off: usize,
    pub old_addr: u32,
    pub new_addr: u32,
    /// Offset of the port to replace; `None` for a later fragment, which has no L4 header.
    pub port_off: Option<usize>,
    pub old_port: u16,
    pub new_port: u16,
    /// Offset of the L4 checksum field.
    pub l4_csum_off: usize,
    /// UDP: a zero checksum means "none" and must stay zero.
    pub udp: bool,
}

pub trait Packet {
    /// Makes the first `len` bytes readable; false if the packet is shorter.
    fn ensure(&mut self, len: usize) -> bool;
    /// Copies a `T` from `off`, if the packet holds it.
    fn read<T: Copy>(&self, off: usize) -> Option<T>;
    /// Length of the whole packet in bytes.
    fn len(&self) -> u32;
    /// Rewrites an address and port, keeping IP and L4 checksums right.
    fn rewrite(&mut self, rw: &NatRewrite) -> Result<(), ()>;
    /// Replaces the packet with `frame` and sends it back where it came from.
    fn send_back(&mut self, frame: &[u8; REJECT_FRAME_LEN]) -> Result<(), ()>;
}

#[inline(always)]
fn read_at<T: Copy>(start: usize, end: usize, off: usize) -> Option<T> {
    if start + off + size_of::<T>() > end {
        return None;
    }
    // SAFETY: the range [start + off, start + off + size_of::<T>()) lies inside the packet.
    Some(unsafe { ((start + off) as *const T).read_unaligned() })
}

/// A packet seen by a TC (tcx) classifier.
pub struct TcPacket<'a> {
    pub ctx: &'a TcContext,
}

impl Packet for TcPacket<'_> {
    #[inline(always)]
    fn ensure(&mut self, len: usize) -> bool {
        if self.ctx.data() + len <= self.ctx.data_end() {
            return true;
        }
        // Headers beyond the linear area (rare: GRO'd or fragmented skbs); pulling may copy.
        if (self.ctx.len() as usize) < len || self.ctx.pull_data(len as u32).is_err() {
            return false;
        }
        self.ctx.data() + len <= self.ctx.data_end()
    }

    #[inline(always)]
    fn read<T: Copy>(&self, off: usize) -> Option<T> {
        read_at(self.ctx.data(), self.ctx.data_end(), off)
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        self.ctx.len()
    }

    #[inline(always)]
    fn rewrite(&mut self, rw: &NatRewrite) -> Result<(), ()> {
        let mangled = if rw.udp {
            u64::from(BPF_F_MARK_MANGLED_0)
        } else {
            0
        };
        if let Some(port_off) = rw.port_off {
            // The address is part of the L4 pseudo-header; the port is L4 payload proper.
            self.ctx
                .l4_csum_replace(
                    rw.l4_csum_off,
                    u64::from(rw.old_addr),
                    u64::from(rw.new_addr),
                    u64::from(BPF_F_PSEUDO_HDR) | mangled | 4,
                )
                .map_err(|_| ())?;
            self.ctx
                .l4_csum_replace(
                    rw.l4_csum_off,
                    u64::from(rw.old_port),
                    u64::from(rw.new_port),
                    mangled | 2,
                )
                .map_err(|_| ())?;
            self.ctx.store(port_off, &rw.new_port, 0).map_err(|_| ())?;
        }
        self.ctx
            .l3_csum_replace(
                IP_CSUM_OFF,
                u64::from(rw.old_addr),
                u64::from(rw.new_addr),
                4,
            )
            .map_err(|_| ())?;
        self.ctx.store(rw.addr_off, &rw.new_addr, 0).map_err(|_| ())
    }

    #[inline(always)]
    fn send_back(&mut self, frame: &[u8; REJECT_FRAME_LEN]) -> Result<(), ()> {
        let skb = self.ctx.skb.skb;
        // SAFETY: `skb` is the context pointer the kernel passed to this program.
        let ifindex = unsafe { (*skb).ifindex };
        // SAFETY: helper call on the program's own skb.
        if unsafe { bpf_skb_change_tail(skb, REJECT_FRAME_LEN as u32, 0) } != 0 {
            return Err(());
        }
        self.ctx.store(0, frame, 0).map_err(|_| ())?;
        // SAFETY: plain helper call; the verdict TC_ACT_REDIRECT carries it out.
        unsafe { bpf_redirect(ifindex, 0) };
        Ok(())
    }
}

/// A frame seen by an XDP program.
pub struct XdpPacket<'a> {
    pub ctx: &'a XdpContext,
}

impl XdpPacket<'_> {
    #[inline(always)]
    fn ptr_mut<T>(&self, off: usize) -> Result<*mut T, ()> {
        let start = self.ctx.data();
        if start + off + size_of::<T>() > self.ctx.data_end() {
            return Err(());
        }
        Ok((start + off) as *mut T)
    }
}

impl Packet for XdpPacket<'_> {
    #[inline(always)]
    fn ensure(&mut self, len: usize) -> bool {
        self.ctx.data() + len <= self.ctx.data_end()
    }

    #[inline(always)]
    fn read<T: Copy>(&self, off: usize) -> Option<T> {
        read_at(self.ctx.data(), self.ctx.data_end(), off)
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        (self.ctx.data_end() - self.ctx.data()) as u32
    }

    #[inline(always)]
    fn rewrite(&mut self, rw: &NatRewrite) -> Result<(), ()> {
        let ip_csum = self.ptr_mut::<u16>(IP_CSUM_OFF)?;
        let addr = self.ptr_mut::<u32>(rw.addr_off)?;
        // SAFETY: both pointers were bounds-checked against the frame just above.
        unsafe {
            ip_csum.write_unaligned(csum::replace4(
                ip_csum.read_unaligned(),
                rw.old_addr,
                rw.new_addr,
            ));
            addr.write_unaligned(rw.new_addr);
        }
        if let Some(port_off) = rw.port_off {
            let l4_csum = self.ptr_mut::<u16>(rw.l4_csum_off)?;
            let port = self.ptr_mut::<u16>(port_off)?;
            // SAFETY: bounds-checked above.
            unsafe {
                let old = l4_csum.read_unaligned();
                if !(rw.udp && old == 0) {
                    let mut new = csum::replace4(old, rw.old_addr, rw.new_addr);
                    new = csum::replace2(new, rw.old_port, rw.new_port);
                    if rw.udp && new == 0 {
                        new = 0xffff;
                    }
                    l4_csum.write_unaligned(new);
                }
                port.write_unaligned(rw.new_port);
            }
        }
        Ok(())
    }

    #[inline(always)]
    fn send_back(&mut self, frame: &[u8; REJECT_FRAME_LEN]) -> Result<(), ()> {
        let delta = REJECT_FRAME_LEN as i32 - self.len() as i32;
        // SAFETY: helper call on the program's own context.
        if unsafe { bpf_xdp_adjust_tail(self.ctx.ctx, delta) } != 0 {
            return Err(());
        }
        let out = self.ptr_mut::<[u8; REJECT_FRAME_LEN]>(0)?;
        // SAFETY: bounds-checked just above (after the resize).
        unsafe { out.write_unaligned(*frame) };
        Ok(())
    }
}
