//! Node1's own forwarding rate, without the bed's sender: `BPF_PROG_TEST_RUN` with live
//! frames (see [`xdp::live_frames_n`]) injects the flood's frames at node1's NIC as if the
//! client had sent them, and what the XDP program returns really happens (XDP_TX leaves by
//! the NIC, XDP_PASS goes up node1's stack, synchronously), so frames over elapsed time is
//! what node1 forwards per second. Within the run the bridge, node2 and the pods also
//! process the forwarded frames, in softirqs on the same CPU (the backends have them all when
//! the run returns), so a second run takes node1's switch port off the bridge: what node1
//! sends then ends at the port, and that run's rate is node1's own.
//!
//! The kernel recycles live frames' pages without copying the frame into them again, so a
//! program that translates a frame would see its own output the next time round. Every frame
//! therefore first goes through a small restoring program: it writes the flood's headers back
//! (with a random source port out of the flood's flows, and its UDP checksum), then tail-calls
//! the mode's program: kproxy's `kproxy_xdp`, the bare forwarder, or an XDP_PASS program for
//! the modes that work in the stack. Every mode pays the same for it.

use std::{
    net::SocketAddrV4,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use etherparse::PacketBuilder;
use kproxy_testbed::{
    LanNode,
    topology::{LEAF_IFACE, lan::BRIDGE},
};

use super::{
    super::xdp,
    bed::{self, ExtBed},
};
use crate::bench::report::Node1Sample;

/// Ethernet + IPv4 + UDP headers, rewritten on every frame.
const HEADERS: usize = 42;
/// Payload bytes: a 60-byte frame, as the flood sends.
const PAYLOAD: usize = 18;
/// The first source port of the flows, as the flood's.
const FIRST_SOURCE_PORT: u16 = 10_000;
/// Frames of the first (unmeasured) run, which also sizes the measured one.
const WARMUP_FRAMES: u32 = 100_000;
/// The measured run lasts at least this long.
const MIN_MEASURED: Duration = Duration::from_millis(300);
const MAX_FRAMES: u32 = 20_000_000;
/// Measured runs of node1 alone per repetition, of which the median counts: a run lasts a
/// few hundred milliseconds, and on a shared VM one run in a few is off by 10% or more.
pub const ISOLATED_RUNS: usize = 5;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_TYPE_PROG_ARRAY: u32 = 3;
const BPF_FUNC_GET_PRANDOM_U32: i32 = 7;
const BPF_FUNC_TAIL_CALL: i32 = 12;

/// What the frames look like.
pub struct Frames {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: std::net::Ipv4Addr,
    pub dst: SocketAddrV4,
    pub flows: usize,
}

impl Frames {
    /// The frame with source port `FIRST_SOURCE_PORT` and a zero UDP checksum.
    fn template(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        PacketBuilder::ethernet2(self.src_mac, self.dst_mac)
            .ipv4(self.src.octets(), self.dst.ip().octets(), 64)
            .udp(FIRST_SOURCE_PORT, self.dst.port())
            .write(&mut out, &[0u8; PAYLOAD])?;
        ensure!(out.len() == HEADERS + PAYLOAD, "unexpected frame length");
        out[40..42].fill(0);
        Ok(out)
    }

    /// The one's complement sum (in native 16-bit words, so the program can add the source
    /// port as it stores it) of the UDP pseudo-header and datagram without source port and
    /// checksum.
    fn partial_checksum(frame: &[u8]) -> u32 {
        let udp = &frame[34..];
        let mut bytes = Vec::with_capacity(12 + udp.len());
        bytes.extend_from_slice(&frame[26..34]); // source and destination addresses
        bytes.extend_from_slice(&[0, 17]);
        bytes.extend_from_slice(&frame[38..40]); // UDP length
        bytes.extend_from_slice(&[0, 0]); // source port, added per frame
        bytes.extend_from_slice(&udp[2..6]); // destination port, length
        bytes.extend_from_slice(&[0, 0]); // checksum
        bytes.extend_from_slice(&udp[8..]);
        let mut sum: u32 = bytes
            .chunks(2)
            .map(|w| u32::from(u16::from_ne_bytes([w[0], *w.get(1).unwrap_or(&0)])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum
    }
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    let mut b = [0u8; 8];
    b[0] = code;
    b[1] = dst | (src << 4);
    b[2..4].copy_from_slice(&off.to_le_bytes());
    b[4..8].copy_from_slice(&imm.to_le_bytes());
    u64::from_le_bytes(b)
}

/// `dst = imm` over two instructions (with `src` 1 the immediate is a map's fd).
fn ld_imm64(dst: u8, src: u8, imm: u64) -> [u64; 2] {
    #[allow(clippy::cast_possible_truncation)]
    let (lo, hi) = (imm as u32, (imm >> 32) as u32);
    [
        insn(0x18, dst, src, 0, lo.cast_signed()),
        insn(0, 0, 0, 0, hi.cast_signed()),
    ]
}

/// The restoring program (see the module's text); tail-calls slot 0 of `prog_array`.
fn restoring_program(frames: &Frames, prog_array: BorrowedFd<'_>) -> Result<OwnedFd> {
    let template = frames.template()?;
    let partial = i32::try_from(Frames::partial_checksum(&template))?;
    let flows = i32::try_from(frames.flows.clamp(1, 50_000))?;
    let mut p: Vec<u64> = vec![
        insn(0xbf, 6, 1, 0, 0), // r6 = ctx
        insn(0x61, 7, 6, 0, 0), // r7 = data
        insn(0x61, 8, 6, 4, 0), // r8 = data_end
        insn(0xbf, 2, 7, 0, 0), // r2 = r7
        insn(0x07, 2, 0, 0, i32::try_from(HEADERS)?),
    ];
    let bounds_check = p.len();
    p.push(0); // if r2 > r8 goto abort (patched)
    // Ethernet, IPv4 and the UDP destination port and length: bytes 0..40.
    for (i, chunk) in template[..40].chunks(8).enumerate() {
        let v = u64::from_ne_bytes(chunk.try_into()?);
        p.extend(ld_imm64(1, 0, v));
        p.push(insn(0x7b, 7, 1, i16::try_from(i * 8)?, 0)); // *(u64 *)(r7 + 8i) = r1
    }
    p.extend([
        insn(0x85, 0, 0, 0, BPF_FUNC_GET_PRANDOM_U32),
        insn(0x97, 0, 0, 0, flows),                        // r0 %= flows
        insn(0x07, 0, 0, 0, i32::from(FIRST_SOURCE_PORT)), // r0 += first port
        insn(0xdc, 0, 0, 0, 16),                           // r0 = htobe16(r0)
        insn(0x6b, 7, 0, 34, 0),                           // UDP source port = r0
        insn(0xb7, 1, 0, 0, partial),                      // r1 = partial sum
        insn(0x0f, 1, 0, 0, 0),                            // r1 += r0
        insn(0xbf, 2, 1, 0, 0),                            // fold twice
        insn(0x77, 2, 0, 0, 16),
        insn(0x57, 1, 0, 0, 0xffff),
        insn(0x0f, 1, 2, 0, 0),
        insn(0xbf, 2, 1, 0, 0),
        insn(0x77, 2, 0, 0, 16),
        insn(0x57, 1, 0, 0, 0xffff),
        insn(0x0f, 1, 2, 0, 0),
        insn(0xa7, 1, 0, 0, 0xffff), // r1 = ~r1 (16 bits)
        insn(0x55, 1, 0, 1, 0),      // if r1 != 0 skip
        insn(0xb7, 1, 0, 0, 0xffff), // a zero checksum is sent as 0xffff
        insn(0x6b, 7, 1, 40, 0),     // UDP checksum = r1
        insn(0xbf, 1, 6, 0, 0),      // r1 = ctx
    ]);
    p.extend(ld_imm64(
        2,
        1,
        u64::from(prog_array.as_raw_fd().unsigned_abs()),
    ));
    p.extend([
        insn(0xb7, 3, 0, 0, 0), // r3 = 0
        insn(0x85, 0, 0, 0, BPF_FUNC_TAIL_CALL),
    ]);
    let abort = p.len();
    p[bounds_check] = insn(0x2d, 2, 8, i16::try_from(abort - bounds_check - 1)?, 0);
    p.extend([insn(0xb7, 0, 0, 0, 0), insn(0x95, 0, 0, 0, 0)]); // return XDP_ABORTED

    load_xdp(&p, b"bench_restore")
}

/// Loads XDP program `insns` named `name` (up to 15 bytes), with the verifier's log in the
/// error.
fn load_xdp(p: &[u64], name: &[u8]) -> Result<OwnedFd> {
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = [0u8; 128];
    xdp::put_u32(&mut attr, 0, xdp::BPF_PROG_TYPE_XDP);
    xdp::put_u32(&mut attr, 4, u32::try_from(p.len())?);
    xdp::put_u64(&mut attr, 8, p.as_ptr() as u64);
    xdp::put_u64(&mut attr, 16, license.as_ptr() as u64);
    xdp::put_u32(&mut attr, 24, 1);
    xdp::put_u32(&mut attr, 28, u32::try_from(log.len())?);
    xdp::put_u64(&mut attr, 32, log.as_mut_ptr() as u64);
    attr[48..48 + name.len().min(15)].copy_from_slice(&name[..name.len().min(15)]);
    xdp::put_u32(&mut attr, 68, xdp::BPF_XDP);
    match xdp::bpf(xdp::BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => xdp::owned(fd),
        Err(e) => {
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            bail!(
                "loading the XDP program {}: {e}: {}",
                String::from_utf8_lossy(name),
                String::from_utf8_lossy(&log[..end])
            )
        }
    }
}

/// The harness's own cost: the restoring program and an XDP_DROP program (`r0 = 1; exit`)
/// on the frames of the isolated run's size, packets/s. What every mode's node1 pps
/// includes on top of node1's forwarding.
pub fn floor(bed: &ExtBed, frames: &Frames) -> Result<f64> {
    let drop = load_xdp(
        &[insn(0xb7, 0, 0, 0, 1), insn(0x95, 0, 0, 0, 0)],
        b"bench_drop",
    )?;
    let array = prog_array(drop.as_fd())?;
    let prog = restoring_program(frames, array.as_fd())?;
    let frame = frames.template()?;
    let ifindex = bed.node().link_index(bed.topo.nic_iface())?;
    let run = |n: u32| -> Result<f64> {
        let prog = prog.try_clone()?;
        let frame = frame.clone();
        match bed
            .node()
            .run(move || xdp::live_frames_n(prog.as_fd(), &frame, ifindex, n))?
        {
            Ok(pps) => Ok(pps),
            Err(e) => bail!("{e:#}"),
        }
    };
    let warm = run(WARMUP_FRAMES)?;
    // Precision loss only matters far beyond MAX_FRAMES.
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let n = ((warm * MIN_MEASURED.as_secs_f64() * 1.5) as u64)
        .clamp(u64::from(WARMUP_FRAMES), u64::from(MAX_FRAMES)) as u32;
    run(n)
}

/// A one-slot program array holding `target`.
fn prog_array(target: BorrowedFd<'_>) -> Result<OwnedFd> {
    let mut attr = [0u8; 128];
    xdp::put_u32(&mut attr, 0, BPF_MAP_TYPE_PROG_ARRAY);
    xdp::put_u32(&mut attr, 4, 4);
    xdp::put_u32(&mut attr, 8, 4);
    xdp::put_u32(&mut attr, 12, 1);
    let map = xdp::owned(xdp::bpf(BPF_MAP_CREATE, &mut attr).context("creating a program array")?)?;
    let key = 0u32;
    let value = target.as_raw_fd().unsigned_abs();
    let mut attr = [0u8; 128];
    xdp::put_u32(&mut attr, 0, map.as_raw_fd().unsigned_abs());
    xdp::put_u64(&mut attr, 8, (&raw const key) as u64);
    xdp::put_u64(&mut attr, 16, (&raw const value) as u64);
    xdp::bpf(BPF_MAP_UPDATE_ELEM, &mut attr)
        .context("putting the mode's XDP program in the program array")?;
    Ok(map)
}

/// Injects `frames` at node1's NIC, running `target` on them (after the restoring program):
/// a warm-up run, then one of at least [`MIN_MEASURED`] counting what reached the backends'
/// interfaces (during it, and 100 ms after it, for frames in flight), then the same with
/// node1 cut off from the switch: node1's own rate.
pub fn measure(bed: &ExtBed, frames: &Frames, target: BorrowedFd<'_>) -> Result<Node1Sample> {
    let array = prog_array(target)?;
    let prog = restoring_program(frames, array.as_fd())?;
    let frame = frames.template()?;
    let node = bed.node();
    let ifindex = node.link_index(bed.topo.nic_iface())?;
    let run = |n: u32| -> Result<f64> {
        let prog = prog.try_clone()?;
        let frame = frame.clone();
        match node.run(move || xdp::live_frames_n(prog.as_fd(), &frame, ifindex, n))? {
            Ok(pps) => Ok(pps),
            Err(e) => bail!("{e:#}"),
        }
    };
    // Frames for at least MIN_MEASURED at `pps`, with a margin.
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let size = |pps: f64| {
        ((pps * MIN_MEASURED.as_secs_f64() * 1.5) as u64)
            .clamp(u64::from(WARMUP_FRAMES), u64::from(MAX_FRAMES)) as u32
    };
    let n = size(run(WARMUP_FRAMES)?);
    std::thread::sleep(Duration::from_millis(100));
    let before = bed.delivered()?;
    let started = Instant::now();
    let pps = run(n)?;
    let elapsed = started.elapsed();
    // What had arrived when the test run returned: the downstream hops' work done within
    // the timed run (on the injecting CPU, in its softirqs) shows here.
    let at_return = bed.delivered()?.saturating_sub(before);
    std::thread::sleep(Duration::from_millis(100));
    let delivered = bed.delivered()?.saturating_sub(before);
    // Node1 alone: its switch port taken off the bridge, what node1 sends ends there (the
    // port's namespace has no address: its stack drops the frames at once), so the bridge,
    // node2 and the pods do nothing within the run. The port's receive counter shows what
    // node1 sent.
    let port = LanNode::Node1.switch_port();
    let lan = &bed.topo.lan;
    lan.ip(&["link", "set", port, "nomaster"])?;
    let isolated = (|| -> Result<(f64, u64, u64)> {
        let rx = || Ok::<_, anyhow::Error>(bed::iface_packets(lan, port)?.rx);
        let n = size(run(WARMUP_FRAMES)?);
        let mut rates = Vec::with_capacity(ISOLATED_RUNS);
        let mut left = 0;
        for _ in 0..ISOLATED_RUNS {
            std::thread::sleep(Duration::from_millis(100));
            let rx0 = rx()?;
            rates.push(run(n)?);
            std::thread::sleep(Duration::from_millis(100));
            left += rx()?.saturating_sub(rx0);
        }
        rates.sort_by(f64::total_cmp);
        let frames = u64::from(n) * ISOLATED_RUNS as u64;
        Ok((rates[ISOLATED_RUNS / 2], frames, left))
    })();
    lan.ip(&["link", "set", port, "master", BRIDGE])?;
    let (isolated_pps, isolated_frames, left_node1) = isolated?;
    Ok(Node1Sample {
        pps: isolated_pps,
        isolated_frames: Some(isolated_frames),
        frames: u64::from(n),
        left_node1: Some(left_node1),
        with_delivery_pps: Some(pps),
        delivered,
        delivered_at_return: Some(at_return),
        xdp_tx: None,
        elapsed_s: elapsed.as_secs_f64(),
    })
}

/// The frames of the flood to `dst`, from the external client to node1's NIC.
pub fn frames(bed: &ExtBed, dst: SocketAddrV4, flows: usize) -> Result<Frames> {
    Ok(Frames {
        src_mac: bed.topo.ext.mac(LEAF_IFACE)?,
        dst_mac: bed.node().mac(bed.topo.nic_iface())?,
        src: bed.topo.ext_addr(),
        dst,
        flows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_checksum_plus_port_is_the_udp_checksum() {
        let f = Frames {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src: std::net::Ipv4Addr::new(198, 18, 0, 9),
            dst: SocketAddrV4::new(std::net::Ipv4Addr::new(198, 18, 0, 1), 30_053),
            flows: 256,
        };
        let template = f.template().unwrap();
        let port = FIRST_SOURCE_PORT + 7;
        let mut want = Vec::new();
        PacketBuilder::ethernet2(f.src_mac, f.dst_mac)
            .ipv4(f.src.octets(), f.dst.ip().octets(), 64)
            .udp(port, f.dst.port())
            .write(&mut want, &[0u8; PAYLOAD])
            .unwrap();
        // What the program computes.
        let mut sum =
            Frames::partial_checksum(&template) + u32::from(u16::from_ne_bytes(port.to_be_bytes()));
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        let mut csum = !sum & 0xffff;
        if csum == 0 {
            csum = 0xffff;
        }
        #[allow(clippy::cast_possible_truncation)]
        let got = (csum as u16).to_ne_bytes();
        assert_eq!(got, want[40..42]);
    }
}
