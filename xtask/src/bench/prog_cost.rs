//! The datapath's own cost per packet, apart from everything around it: kproxy's TC ingress
//! and XDP programs run by `BPF_PROG_TEST_RUN` on frames from the client to the last
//! Service, one frame per run, at every scale of the generated section. The kernel times
//! each run around the program alone (`duration`), so what the figures hold is the program:
//! its parsing, map lookups, conntrack and rewrite, not the stack or the load generator.
//!
//! Three paths: a **new flow** (a SYN from a source port not seen before: frontend lookup,
//! backend choice, two conntrack entries created), an **established** one (an ACK of a
//! flow created once before: the conntrack hit), and **not a service** (an ACK straight to
//! a backend's address: what every packet of a connection that socket-level load
//! balancing pointed at its backend costs the program, which finds no frontend, no reply
//! entry and no VIP). Each run gets a fresh copy of its frame
//! (a repeat count would run the program again on the frame it already translated). The
//! same timing of a program that only returns is the floor every figure includes.

use std::{
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    path::Path,
};

use anyhow::{Context, Result, bail};
use etherparse::PacketBuilder;

use super::{
    bed::BenchBed,
    cluster::{Cluster, Family},
    modes::{self, Mode},
    report::ProgCost,
    xdp::{self, BPF_PROG_TEST_RUN, bpf, put_u32, put_u64},
};

/// Runs per path and repetition; the median of their times is the repetition's figure.
const RUNS: u32 = 4_000;
/// Source ports of the new flows start here; the warm-up's and the established flow's are
/// below.
const FIRST_PORT: u16 = 20_000;
/// Runs before the measured ones.
const WARM_UP: u32 = 1_000;
const WARM_UP_PORTS: u16 = 1_000;

/// The programs measured and how each is found among the agent's pinned links.
#[derive(Clone, Copy)]
enum Program {
    TcIngress,
    Xdp,
}

impl Program {
    fn name(self) -> &'static str {
        match self {
            Program::TcIngress => "tc-ingress",
            Program::Xdp => "xdp",
        }
    }

    /// The mode whose agent attaches this program to the client's link.
    fn mode(self) -> Mode {
        match self {
            Program::TcIngress => Mode::KproxyTc,
            Program::Xdp => Mode::KproxyXdp,
        }
    }
}

/// The scales measured, by family: IPv4 Services at the generated section's scales, IPv6
/// ones at their own (the test bed's IPv4 VIP range holds 65,534 Services, its IPv6 one
/// a million, so the largest scale is IPv6's).
pub struct Scales<'a> {
    pub ipv4: &'a [usize],
    pub ipv6: &'a [usize],
}

/// Measures both programs at every scale, `repetitions` times each (agents interleaved).
pub fn measure(
    agent: &Path,
    scales: &Scales<'_>,
    repetitions: usize,
    ct_max: u32,
) -> Result<Vec<ProgCost>> {
    let mut out = Vec::new();
    let runs = (scales.ipv4.iter().map(|&n| (Family::Ipv4, n)))
        .chain(scales.ipv6.iter().map(|&n| (Family::Ipv6, n)));
    for (family, services) in runs {
        eprintln!(
            "bench: datapath time per packet, {services} {} services",
            family.kubernetes_name()
        );
        measure_scale(agent, family, services, repetitions, ct_max, &mut out)?;
    }
    Ok(out)
}

fn measure_scale(
    agent: &Path,
    family: Family,
    services: usize,
    repetitions: usize,
    ct_max: u32,
    out: &mut Vec<ProgCost>,
) -> Result<()> {
    let cluster =
        Cluster::with_first_vip(services, &BenchBed::backend_addresses(family), family, 0);
    for _ in 0..repetitions {
        for program in [Program::TcIngress, Program::Xdp] {
            let bed = BenchBed::for_family(family)?;
            let (running, _) = modes::start(program.mode(), &bed, &cluster, agent, ct_max)?;
            let measured = measure_program(&bed, program, family, cluster.target());
            running.stop()?;
            for (path, ns) in measured? {
                cost_in(out, program.name(), family, path, services)
                    .ns
                    .push(ns);
            }
        }
    }
    Ok(())
}

/// The program's median time per run on each path, and the floor's.
fn measure_program(
    bed: &BenchBed,
    program: Program,
    family: Family,
    target: SocketAddr,
) -> Result<Vec<(&'static str, f64)>> {
    let node = &bed.topo.node;
    let iface = bed.topo.client_iface();
    let ifindex = node.link_index(iface)?;
    let frames = Frames {
        src_mac: bed.topo.client.mac("eth0")?,
        dst_mac: node.mac(iface)?,
        client: match family {
            Family::Ipv4 => bed.topo.client_addr().into(),
            Family::Ipv6 => bed.topo.client_addr6().into(),
        },
        target,
    };
    let to_backend = Frames {
        target: SocketAddr::new(
            BenchBed::backend_addresses(family)[0],
            super::cluster::BACKEND_PORT,
        ),
        ..frames
    }
    .ack(FIRST_PORT - WARM_UP_PORTS - 2)?;
    let prog = pinned_program(&bed.pin_dir(), program, iface)?;
    let floor = match program {
        Program::Xdp => xdp::load_bare_pass()?,
        Program::TcIngress => load_bare_tc()?,
    };
    // Warm-up, not counted: the program's code and maps into the caches, the new-flow path
    // included (source ports below the measured ones), and the established flow created.
    let established_port = FIRST_PORT - WARM_UP_PORTS - 1;
    let mut warm = (0..WARM_UP)
        .map(|i| frames.syn(FIRST_PORT - WARM_UP_PORTS + u16::try_from(i)?))
        .collect::<Result<Vec<_>>>()?;
    warm.push(frames.syn(established_port)?);
    let ack = frames.ack(established_port)?;
    let syns = (0..RUNS)
        .map(|i| frames.syn(FIRST_PORT + u16::try_from(i)?))
        .collect::<Result<Vec<_>>>()?;
    let (prog, floor) = (prog.try_clone()?, floor.try_clone()?);
    // The paths take turns run by run: this machine's speed drifts over seconds, and taking
    // turns gives every path the same share of each phase.
    let times = node.run(move || -> Result<[Vec<u32>; 4]> {
        pin_to_cpu(MEASURING_CPU)?;
        for frame in &warm {
            test_run(prog.as_fd(), program, frame, ifindex)?;
        }
        let mut times: [Vec<u32>; 4] = Default::default();
        for syn in &syns {
            times[0].push(test_run(prog.as_fd(), program, syn, ifindex)?);
            times[1].push(test_run(prog.as_fd(), program, &ack, ifindex)?);
            times[2].push(test_run(prog.as_fd(), program, &to_backend, ifindex)?);
            times[3].push(test_run(floor.as_fd(), program, &ack, ifindex)?);
        }
        Ok(times)
    })??;
    let [new_flow, established, not_a_service, floor] = times.map(median);
    Ok(vec![
        ("new flow", new_flow),
        ("established", established),
        ("not a service", not_a_service),
        ("floor (empty program)", floor),
    ])
}

/// The frames of the measurement: the client's, as its link delivers them to the node.
#[derive(Clone, Copy)]
struct Frames {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    client: IpAddr,
    target: SocketAddr,
}

impl Frames {
    fn syn(&self, port: u16) -> Result<Vec<u8>> {
        self.tcp(port, true)
    }

    fn ack(&self, port: u16) -> Result<Vec<u8>> {
        self.tcp(port, false)
    }

    fn tcp(&self, port: u16, syn: bool) -> Result<Vec<u8>> {
        let link = PacketBuilder::ethernet2(self.src_mac, self.dst_mac);
        let ip = match (self.client, self.target.ip()) {
            (IpAddr::V4(client), IpAddr::V4(target)) => {
                link.ipv4(client.octets(), target.octets(), 64)
            }
            (IpAddr::V6(client), IpAddr::V6(target)) => {
                link.ipv6(client.octets(), target.octets(), 64)
            }
            _ => bail!(
                "client {} and target {} of two families",
                self.client,
                self.target
            ),
        };
        let builder = ip.tcp(port, self.target.port(), 1, 64_240);
        let builder = if syn { builder.syn() } else { builder.ack(1) };
        let mut out = Vec::new();
        builder.write(&mut out, &[])?;
        Ok(out)
    }
}

/// The program of `program`'s kind the agent attached to `iface`, through its
/// pinned link (`<hook>-<ifindex>-<name>` under `links/`).
fn pinned_program(pin_dir: &Path, program: Program, iface: &str) -> Result<OwnedFd> {
    let prefix = match program {
        Program::TcIngress => "tc-ingress-",
        Program::Xdp => "xdp-",
    };
    let suffix = format!("-{iface}");
    xdp::pinned_program(pin_dir, |name| {
        name.starts_with(prefix) && name.ends_with(&suffix)
    })
}

/// A TC program that only returns TC_ACT_OK: the floor.
fn load_bare_tc() -> Result<OwnedFd> {
    const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
    xdp::load_returning(BPF_PROG_TYPE_SCHED_CLS, 0, 0, "bare_tc")
}

/// One run of `prog` on `frame` as received on `ifindex` (of the calling thread's
/// namespace); the kernel's time for it, ns.
fn test_run(prog: BorrowedFd<'_>, program: Program, frame: &[u8], ifindex: u32) -> Result<u32> {
    let len = u32::try_from(frame.len())?;
    let mut out = vec![0u8; frame.len() + 256];
    // struct xdp_md (data, data_end, data_meta, ingress_ifindex, ...) or struct __sk_buff
    // (len, pkt_type, mark, queue_mapping, protocol, vlan_present, vlan_tci, vlan_proto,
    // priority, ingress_ifindex, ifindex, ...): the interface the frame came in on.
    let mut ctx = [0u32; 48];
    let ctx_len = match program {
        Program::Xdp => {
            ctx[..4].copy_from_slice(&[0, len, 0, ifindex]);
            6
        }
        Program::TcIngress => {
            ctx[9] = ifindex;
            ctx[10] = ifindex;
            48
        }
    };
    let mut attr = [0u8; 80];
    put_u32(&mut attr, 0, prog.as_raw_fd().unsigned_abs());
    put_u32(&mut attr, 8, len);
    put_u32(&mut attr, 12, u32::try_from(out.len())?);
    put_u64(&mut attr, 16, frame.as_ptr() as u64);
    put_u64(&mut attr, 24, out.as_mut_ptr() as u64);
    put_u32(&mut attr, 32, 1);
    put_u32(&mut attr, 40, ctx_len * 4);
    put_u64(&mut attr, 48, ctx.as_ptr() as u64);
    bpf(BPF_PROG_TEST_RUN, &mut attr).context("BPF_PROG_TEST_RUN")?;
    Ok(u32::from_ne_bytes(attr[36..40].try_into()?))
}

/// The CPU every run is made on: the two CPUs of a VM can differ by half in speed at a
/// given moment (one shares its host core, or takes the interrupts), so runs that land on
/// either would put two speeds into one figure.
const MEASURING_CPU: usize = 1;

/// Keeps the calling thread on `cpu` (or on CPU 0 if there is no such CPU).
fn pin_to_cpu(cpu: usize) -> Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let cpu = if cpu < cpus { cpu } else { 0 };
    Ok(kproxy_testbed::cpu::pin_thread_to(cpu)?)
}

fn median(mut times: Vec<u32>) -> f64 {
    times.sort_unstable();
    times
        .get(times.len() / 2)
        .copied()
        .map_or(f64::NAN, f64::from)
}

fn cost_in<'a>(
    costs: &'a mut Vec<ProgCost>,
    program: &str,
    family: Family,
    path: &str,
    services: usize,
) -> &'a mut ProgCost {
    let family = family.kubernetes_name();
    super::entry(
        costs,
        |c| c.program == program && c.family == family && c.path == path && c.services == services,
        || ProgCost {
            program: program.into(),
            family: family.into(),
            path: path.into(),
            services,
            ns: Vec::new(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_a_syn_and_an_ack_to_the_target_in_its_family() {
        let families = [
            ("198.18.1.2", "198.19.0.10:80", false),
            ("2001:db8:1::2", "[2001:db8:ffff::1:86a0]:80", true),
        ];
        for (client, target, ipv6) in families {
            let frames = Frames {
                src_mac: [2, 0, 0, 0, 0, 1],
                dst_mac: [2, 0, 0, 0, 0, 2],
                client: client.parse().unwrap(),
                target: target.parse().unwrap(),
            };
            for (frame, syn) in [
                (frames.syn(20_000).unwrap(), true),
                (frames.ack(20_000).unwrap(), false),
            ] {
                let packet = etherparse::SlicedPacket::from_ethernet(&frame).unwrap();
                let destination: IpAddr = match &packet.net {
                    Some(etherparse::NetSlice::Ipv4(ip)) if !ipv6 => {
                        ip.header().destination_addr().into()
                    }
                    Some(etherparse::NetSlice::Ipv6(ip)) if ipv6 => {
                        ip.header().destination_addr().into()
                    }
                    _ => panic!("{target}: a frame of the wrong family"),
                };
                assert_eq!(destination, frames.target.ip());
                let Some(etherparse::TransportSlice::Tcp(tcp)) = packet.transport else {
                    panic!("not TCP");
                };
                assert_eq!((tcp.source_port(), tcp.destination_port()), (20_000, 80));
                assert_eq!((tcp.syn(), tcp.ack()), (syn, !syn));
            }
        }
        let mixed = Frames {
            src_mac: [0; 6],
            dst_mac: [0; 6],
            client: "198.18.1.2".parse().unwrap(),
            target: "[2001:db8:ffff::1]:80".parse().unwrap(),
        };
        assert!(mixed.syn(1).is_err());
        assert!((median(vec![5, 1, 9, 3, 7]) - 5.0).abs() < f64::EPSILON);
    }
}
