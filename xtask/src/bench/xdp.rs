//! The XDP program's cost per packet, measured with live frames: `BPF_PROG_TEST_RUN` with
//! `BPF_F_TEST_XDP_LIVE_FRAMES` runs a program on generated frames as if the client-facing
//! link had received them, and what the program returns (XDP_PASS) really happens: the frames
//! go up the node's stack. Packets per second with kproxy's program versus a bare XDP_PASS
//! program show what kproxy adds to traffic that is not for a service; frames to a service
//! show the translated path.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::Path,
    time::Instant,
};

use anyhow::{Context, Result, bail};
use aya::programs::links::PinnedLink;
use etherparse::PacketBuilder;
use kproxy_common::{
    names,
    stats::{COUNTER_SLOTS, Counter, GlobalStats},
};
use kproxy_testbed::Netns;

use super::{
    bed::BenchBed,
    cluster::{self, Cluster},
    modes::{self, Mode},
    report::XdpCost,
};

/// Frames per measurement: long enough (tenths of a second) to be stable.
const FRAMES: u32 = 2_000_000;
const BATCH: u32 = 64;

pub(super) const BPF_PROG_LOAD: libc::c_long = 5;
pub(super) const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_LINK_CREATE: libc::c_long = 28;
pub(super) const BPF_PROG_TYPE_XDP: u32 = 6;
pub(super) const BPF_XDP: u32 = 37;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

pub(super) fn bpf(cmd: libc::c_long, attr: &mut [u8]) -> std::io::Result<i64> {
    // SAFETY: bpf(2) reads and writes at most `attr.len()` bytes of the union we own.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

pub(super) fn put_u32(attr: &mut [u8], at: usize, v: u32) {
    attr[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

pub(super) fn put_u64(attr: &mut [u8], at: usize, v: u64) {
    attr[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

pub(super) fn owned(fd: i64) -> Result<OwnedFd> {
    let fd = i32::try_from(fd).context("fd out of range")?;
    // SAFETY: a descriptor the kernel just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The baseline: an XDP program that only returns XDP_PASS.
pub(super) fn load_bare_pass() -> Result<OwnedFd> {
    load_returning(BPF_PROG_TYPE_XDP, BPF_XDP, 2, "bare_pass")
}

/// A program of `prog_type` (expected to attach as `attach_type`) that only returns `r0`
/// (`r0 = value; exit`), named `name` (at most 15 bytes).
pub(super) fn load_returning(
    prog_type: u32,
    attach_type: u32,
    r0: u32,
    name: &str,
) -> Result<OwnedFd> {
    let insns: [u64; 2] = [(u64::from(r0) << 32) | 0xb7, 0x95];
    let license = c"GPL";
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, prog_type);
    put_u32(&mut attr, 4, 2);
    put_u64(&mut attr, 8, insns.as_ptr() as u64);
    put_u64(&mut attr, 16, license.as_ptr() as u64);
    attr[48..48 + name.len().min(15)].copy_from_slice(&name.as_bytes()[..name.len().min(15)]);
    put_u32(&mut attr, 68, attach_type);
    owned(bpf(BPF_PROG_LOAD, &mut attr).with_context(|| format!("loading {name}"))?)
}

/// kproxy's XDP program, through the link the agent pinned for it.
pub(super) fn kproxy_program(pin_dir: &Path) -> Result<OwnedFd> {
    pinned_program(pin_dir, |name| name.starts_with("xdp-"))
}

/// The program of the first link pinned under `pin_dir/links` whose name `wanted` accepts
/// (`<hook>-<ifindex>-<interface>`).
pub(super) fn pinned_program(pin_dir: &Path, wanted: impl Fn(&str) -> bool) -> Result<OwnedFd> {
    let links = pin_dir.join("links");
    let pin = std::fs::read_dir(&links)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().is_some_and(|n| wanted(&n.to_string_lossy())))
        .with_context(|| format!("no such pinned link under {}", links.display()))?;
    let link = aya::programs::links::FdLink::from(PinnedLink::from_pin(&pin)?);
    let id = link.info()?.program_id();
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, id);
    owned(bpf(BPF_PROG_GET_FD_BY_ID, &mut attr).context("opening kproxy's XDP program")?)
}

/// Runs `prog` on `FRAMES` copies of `frame` as received on `ifindex`; packets per second.
fn live_frames(prog: BorrowedFd<'_>, frame: &[u8], ifindex: u32) -> Result<f64> {
    live_frames_n(prog, frame, ifindex, FRAMES)
}

/// Runs `prog` on `frames` copies of `frame` as received on `ifindex` (in the calling
/// thread's namespace); packets per second.
pub(super) fn live_frames_n(
    prog: BorrowedFd<'_>,
    frame: &[u8],
    ifindex: u32,
    frames: u32,
) -> Result<f64> {
    let len = u32::try_from(frame.len())?;
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
    let ctx: [u32; 6] = [0, len, 0, ifindex, 0, 0];
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, prog.as_raw_fd().unsigned_abs());
    put_u32(&mut attr, 8, len);
    put_u64(&mut attr, 16, frame.as_ptr() as u64);
    put_u32(&mut attr, 32, frames);
    put_u32(&mut attr, 40, u32::try_from(std::mem::size_of_val(&ctx))?);
    put_u64(&mut attr, 48, ctx.as_ptr() as u64);
    put_u32(&mut attr, 64, BPF_F_TEST_XDP_LIVE_FRAMES);
    put_u32(&mut attr, 72, BATCH);
    let started = Instant::now();
    bpf(BPF_PROG_TEST_RUN, &mut attr).context("BPF_PROG_TEST_RUN with live frames")?;
    Ok(f64::from(frames) / started.elapsed().as_secs_f64())
}

/// A UDP service for the translated path. Its endpoints have no listener, so each frame
/// ends at a backend (its ICMP replies are rate-limited) instead of starting a conversation.
const UDP_SERVICE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 19, 200, 1), 53);

fn write_udp_service(bed: &BenchBed) -> Result<()> {
    let endpoints: Vec<serde_json::Value> = bed
        .backends()
        .iter()
        .map(|b| serde_json::json!({"addresses": [b.to_string()]}))
        .collect();
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "udp", "namespace": cluster::NAMESPACE},
         "spec": {"clusterIP": UDP_SERVICE.ip().to_string(),
                  "ports": [{"name": "dns", "port": UDP_SERVICE.port(), "protocol": "UDP"}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "udp-1", "namespace": cluster::NAMESPACE,
                      "labels": {"kubernetes.io/service-name": "udp"}},
         "addressType": "IPv4",
         "ports": [{"name": "dns", "port": 5353, "protocol": "UDP"}],
         "endpoints": endpoints},
    ]});
    std::fs::write(bed.manifests().join("udp.json"), serde_json::to_vec(&list)?)?;
    Ok(())
}

fn udp_frame(src: SocketAddrV4, dst: SocketAddrV4, dst_mac: [u8; 6]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([0x02, 0, 0, 0, 0, 0x01], dst_mac)
        .ipv4(src.ip().octets(), dst.ip().octets(), 64)
        .udp(src.port(), dst.port())
        .write(&mut out, &[0u8; 18])?;
    Ok(out)
}

/// Measures on a bed running kproxy with XDP on the client link: frames from the client to
/// the node's own address (not a service: XDP passes them and the stack drops them, as it
/// would any stray packet) and frames to a service (translated and forwarded).
pub fn measure(agent: &Path, repetitions: usize) -> Result<XdpCost> {
    let bed = BenchBed::new()?;
    let cluster = Cluster::new(10, &bed.backends());
    write_udp_service(&bed)?;
    let (running, _) = modes::start(Mode::KproxyXdp, &bed, &cluster, agent, 1 << 16)?;
    let node = &bed.topo.node;
    let ifindex = node.link_index(bed.topo.client_iface())?;
    let mac = node.mac(bed.topo.client_iface())?;
    let client = SocketAddrV4::new(bed.topo.client_addr(), 40_000);
    let stray = udp_frame(client, SocketAddrV4::new(bed.topo.client_gateway(), 9), mac)?;
    let kproxy = kproxy_program(&bed.pin_dir())?;
    let bare = load_bare_pass()?;
    let mut cost = XdpCost {
        bare: Vec::new(),
        kproxy: Vec::new(),
        service: Vec::new(),
    };
    let pin_dir = bed.pin_dir();
    for _ in 0..repetitions {
        cost.bare.push(in_netns(node, &bare, &stray, ifindex)?);
        cost.kproxy.push(in_netns(node, &kproxy, &stray, ifindex)?);
        cost.service.push(service_pps(&bed, mac, &pin_dir)?);
    }
    running.stop()?;
    Ok(cost)
}

/// Packets per second through the UDP service, sent by trafgen from the client: live frames
/// cannot measure this path, because the kernel recycles their pages without resetting them,
/// so after its first pass every frame is already translated.
fn service_pps(bed: &BenchBed, mac: [u8; 6], pin_dir: &Path) -> Result<f64> {
    let mac = mac.map(|b| format!("{b:02x}")).join(":");
    let conf = format!(
        "{{ eth(da={mac}), ipv4(saddr={}, daddr={}), udp(sp=40000, dp={}), fill(0x00, 18) }}\n",
        bed.topo.client_addr(),
        UDP_SERVICE.ip(),
        UDP_SERVICE.port()
    );
    let conf_path = bed.dir.path().join("trafgen.cfg");
    std::fs::write(&conf_path, conf)?;
    // trafgen's last flush of its TX ring can find the veth busy (EAGAIN), seen once in a
    // CI run: that attempt is not a measurement, and the next one starts afresh.
    let mut attempts = 0;
    let (before, started) = loop {
        attempts += 1;
        let before = counters(pin_dir)?;
        let started = Instant::now();
        // --no-sock-mem: leave the (global) socket memory sysctls alone.
        let out = bed
            .topo
            .client
            .command("trafgen")
            .args(["--dev", "eth0", "--cpus", "1", "--no-sock-mem", "--num"])
            .arg(FRAMES.to_string())
            .arg("--conf")
            .arg(&conf_path)
            .output()
            .context("running trafgen")?;
        if out.status.success() {
            break (before, started);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        if attempts < 3 && stderr.contains("Resource temporarily unavailable") {
            eprintln!(
                "bench:   trafgen's ring was busy ({}); again",
                stderr.trim()
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
            continue;
        }
        bail!("trafgen failed: {stderr}");
    };
    // Frames still in flight when trafgen returns are counted a moment later.
    std::thread::sleep(std::time::Duration::from_millis(100));
    let elapsed = started.elapsed().as_secs_f64() - 0.1;
    let after = counters(pin_dir)?;
    let delta = |c: Counter| after[c as usize] - before[c as usize];
    let translated = delta(Counter::ServicePackets);
    // Most frames must have been translated, or the number means nothing.
    if translated * 10 < u64::from(FRAMES) * 9 {
        let seen: Vec<String> = Counter::ALL
            .iter()
            .filter(|c| delta(**c) > 0)
            .map(|c| format!("{}={}", c.name(), delta(*c)))
            .collect();
        bail!(
            "only {translated} of {FRAMES} service frames were translated: {}",
            seen.join(" ")
        );
    }
    Ok(f64::from(u32::try_from(translated)?) / elapsed)
}

/// Attaches XDP program `prog` to interface `ifindex` of the calling thread's namespace
/// through a BPF link (native mode where the driver has one, as veth does); closing the link
/// detaches it.
pub(super) fn attach_xdp(prog: BorrowedFd<'_>, ifindex: u32) -> Result<OwnedFd> {
    // union bpf_attr for BPF_LINK_CREATE: prog_fd, target_ifindex, attach_type, flags.
    let mut attr = [0u8; 64];
    put_u32(&mut attr, 0, prog.as_raw_fd().unsigned_abs());
    put_u32(&mut attr, 4, ifindex);
    put_u32(&mut attr, 8, BPF_XDP);
    owned(bpf(BPF_LINK_CREATE, &mut attr).context("attaching an XDP program (BPF_LINK_CREATE)")?)
}

/// kproxy's global counters (the pinned `KP_STATS` under `pin_dir`), summed over CPUs.
pub(super) fn counters(pin_dir: &Path) -> Result<[u64; COUNTER_SLOTS]> {
    let map = aya::maps::Map::from_map_data(aya::maps::MapData::from_pin(
        pin_dir.join(names::MAP_STATS),
    )?)?;
    let stats: aya::maps::PerCpuArray<aya::maps::MapData, GlobalStats> = map.try_into()?;
    let mut sum = [0u64; COUNTER_SLOTS];
    for cpu in stats.get(&0, 0)?.iter() {
        for (total, n) in sum.iter_mut().zip(cpu.counters) {
            *total += n;
        }
    }
    Ok(sum)
}

/// Live frames are injected into the device of that index in the caller's namespace.
fn in_netns(ns: &Netns, prog: &OwnedFd, frame: &[u8], ifindex: u32) -> Result<f64> {
    let prog = prog.try_clone()?;
    let frame = frame.to_vec();
    match ns.run(move || live_frames(prog.as_fd(), &frame, ifindex))? {
        Ok(pps) => Ok(pps),
        Err(e) => bail!("{e:#}"),
    }
}
