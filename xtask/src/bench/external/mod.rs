//! The external-traffic section of `cargo xtask bench`: a client outside the cluster reaches a
//! NodePort on node1 whose endpoints are all on node2 (externalTrafficPolicy Cluster, so node1
//! masquerades and the replies come back through it), on the LAN test bed. For every mode:
//! new TCP connections/s, and UDP packets/s forwarded (see [`udp`]). Besides kproxy (XDP on
//! the NIC, or TC) and kube-proxy's rules, `bare-xdp-forward` is the ceiling: kproxy's XDP
//! forwarding without the service lookup and translation, with the client sending to the
//! backends directly along the same path. Repetitions are interleaved across modes and every
//! mode gets a fresh bed, as in the ClusterIP section.

mod bed;
mod forwarder;
pub mod live;
mod udp;

use std::{ffi::OsString, fmt::Write as _, os::fd::AsFd, path::Path, time::Duration};

use anyhow::{Result, bail};
use kproxy_common::stats::{COUNTER_SLOTS, Counter};
use kproxy_testbed::LanNode;

use self::{
    bed::{ExtBed, REMOTE_BACKENDS},
    forwarder::BareForwarder,
    udp::Flood,
};
use super::{
    CT_MAX,
    load::{self, LoadConfig},
    modes::{self, Running},
    report::{External, ExternalCell, Node1Sample, Sample, UdpSample},
    rules, xdp,
};

/// What the external section compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtMode {
    KproxyXdp,
    KproxyTc,
    IptablesLegacy,
    IptablesNft,
    Nftables,
    BareXdpForward,
}

impl ExtMode {
    pub const ALL: [ExtMode; 6] = [
        ExtMode::KproxyXdp,
        ExtMode::KproxyTc,
        ExtMode::IptablesLegacy,
        ExtMode::IptablesNft,
        ExtMode::Nftables,
        ExtMode::BareXdpForward,
    ];

    /// The same names as the ClusterIP section's modes, plus the ceiling's.
    pub const fn name(self) -> &'static str {
        match self {
            ExtMode::KproxyXdp => "kproxy-xdp",
            ExtMode::KproxyTc => "kproxy-tc",
            ExtMode::IptablesLegacy => "iptables-legacy",
            ExtMode::IptablesNft => "iptables-nft",
            ExtMode::Nftables => "nftables",
            ExtMode::BareXdpForward => "bare-xdp-forward",
        }
    }

    pub fn parse(name: &str) -> Option<ExtMode> {
        ExtMode::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Whether an XDP program on node1's NIC should forward (nearly) every packet itself.
    fn forwards_in_xdp(self) -> bool {
        matches!(self, ExtMode::KproxyXdp | ExtMode::BareXdpForward)
    }
}

/// The section's settings.
pub struct Plan {
    pub modes: Vec<ExtMode>,
    pub repetitions: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub concurrency: usize,
    pub udp_flows: usize,
    /// Resolve node1's LAN neighbours before measuring (see [`ExtBed::warm_neighbours`]).
    pub warm_neighbours: bool,
}

/// Runs the section: every repetition measures every mode in turn.
pub fn run(plan: &Plan, agent: &Path, object: &Path) -> Result<External> {
    let mut external = External {
        remote_backends: REMOTE_BACKENDS,
        udp_flows: plan.udp_flows,
        warm_neighbours: plan.warm_neighbours,
        cells: Vec::new(),
        live_floor_pps: Vec::new(),
        notes: Vec::new(),
    };
    for rep in 0..plan.repetitions {
        for &mode in &plan.modes {
            eprintln!(
                "bench: external, {}, repetition {}/{}",
                mode.name(),
                rep + 1,
                plan.repetitions
            );
            let bed = ExtBed::new()?;
            let running = start(mode, &bed, agent, object)?;
            if plan.warm_neighbours {
                bed.warm_neighbours()?;
            }
            let tcp_before = running.counters(&bed)?;
            let (connections, conn_note) = measure_connections(plan, &bed, mode)?;
            external.notes.extend(conn_note);
            let before = running.counters(&bed)?;
            external.notes.extend(check_tcp_errors(
                mode,
                &connections,
                tcp_before.zip(before).as_ref(),
            ));
            let udp = udp::measure(&bed, &flood(plan, &bed, mode))?;
            let after = running.counters(&bed)?;
            eprintln!(
                "bench:   udp {:.0} packets/s delivered of {:.0}/s sent",
                udp.delivered_pps, udp.sent_pps
            );
            let counters = before.zip(after);
            external
                .notes
                .extend(check_udp(mode, &udp, plan.duration, counters.as_ref()));
            let node1 = measure_node1(plan, &bed, mode, &running)?;
            eprintln!(
                "bench:   node1 (live frames) {:.0} packets/s alone ({:?} of {:?} frames left \
                 it), {:.0?} packets/s with the bed: {} of {} frames reached the backends ({:?} \
                 by the test run's return), XDP_TX {:?}, {:.2} s",
                node1.pps,
                node1.left_node1,
                node1.isolated_frames,
                node1.with_delivery_pps,
                node1.delivered,
                node1.frames,
                node1.delivered_at_return,
                node1.xdp_tx,
                node1.elapsed_s
            );
            external.notes.extend(check_node1(mode, &node1));
            if mode == plan.modes[0] {
                let dst = flood(plan, &bed, mode).targets[0];
                let floor = live::floor(&bed, &live::frames(&bed, dst, plan.udp_flows)?)?;
                eprintln!("bench:   live-frames harness alone {floor:.0} packets/s");
                external.live_floor_pps.push(floor);
            }
            running.stop()?;
            let cell = cell(&mut external, mode);
            cell.connections.push(connections);
            cell.udp.push(udp);
            cell.node1.push(node1);
        }
    }
    Ok(external)
}

fn cell(external: &mut External, mode: ExtMode) -> &mut ExternalCell {
    let at = external.cells.iter().position(|c| c.mode == mode.name());
    let at = at.unwrap_or_else(|| {
        external.cells.push(ExternalCell {
            mode: mode.name().into(),
            connections: Vec::new(),
            udp: Vec::new(),
            node1: Vec::new(),
        });
        external.cells.len() - 1
    });
    &mut external.cells[at]
}

/// A mode set up on a bed.
enum ExtRunning {
    Agent(Running),
    Rules,
    Bare(BareForwarder),
}

impl ExtRunning {
    /// kproxy's (or the bare forwarder's) global counters, from the maps pinned in the bed;
    /// `None` for kube-proxy's rules.
    fn counters(&self, bed: &ExtBed) -> Result<Option<[u64; COUNTER_SLOTS]>> {
        match self {
            ExtRunning::Agent(_) | ExtRunning::Bare(_) => Ok(Some(xdp::counters(&bed.pin_dir())?)),
            ExtRunning::Rules => Ok(None),
        }
    }

    fn stop(self) -> Result<()> {
        match self {
            ExtRunning::Agent(running) => running.stop(),
            ExtRunning::Rules => Ok(()),
            // Dropping it detaches the program.
            ExtRunning::Bare(forwarder) => {
                drop(forwarder);
                Ok(())
            }
        }
    }
}

/// Sets `mode` up on node1 of `bed`.
fn start(mode: ExtMode, bed: &ExtBed, agent: &Path, object: &Path) -> Result<ExtRunning> {
    let (services, slices) = bed::objects(&bed.topo.remote_backend_addrs());
    let nic = bed.topo.nic_iface();
    match mode {
        ExtMode::KproxyXdp | ExtMode::KproxyTc => {
            bed::write_manifests(bed, &services, &slices)?;
            let pods = format!("{}*", bed.topo.pod_iface_prefix());
            let mut args: Vec<OsString> = vec!["run".into(), "--manifests".into()];
            args.push(bed.manifests().into());
            args.extend(["--node-name", LanNode::Node1.name(), "--pin-dir"].map(OsString::from));
            args.push(bed.pin_dir().into());
            args.extend(["--ct-max".into(), CT_MAX.to_string().into()]);
            if mode == ExtMode::KproxyXdp {
                // XDP on the NIC does both directions; TC only on the pod links (none here).
                args.extend(["--xdp", nic, "--attach", pods.as_str()].map(OsString::from));
            } else {
                args.extend(["--attach".into(), format!("{nic},{pods}").into()]);
            }
            let log = bed.dir.path().join("agent.log");
            let (process, _) = modes::spawn_agent(bed.node(), agent, &args, &log)?;
            Ok(ExtRunning::Agent(Running::with_agent(process)))
        }
        ExtMode::IptablesLegacy | ExtMode::IptablesNft => {
            let ports = rules::service_ports(&services, &slices);
            let tool = if mode == ExtMode::IptablesLegacy {
                "iptables-legacy-restore"
            } else {
                "iptables-nft-restore"
            };
            modes::feed(bed.node(), tool, &[], &rules::iptables_restore(&ports))?;
            Ok(ExtRunning::Rules)
        }
        ExtMode::Nftables => {
            let ports = rules::service_ports(&services, &slices);
            let script = rules::nftables_script(&ports);
            modes::feed(bed.node(), "nft", &["-f", "-"], &script)?;
            Ok(ExtRunning::Rules)
        }
        ExtMode::BareXdpForward => {
            route_through_node1(bed)?;
            let forwarder = BareForwarder::attach(object, &bed.pin_dir(), bed.node(), nic)?;
            Ok(ExtRunning::Bare(forwarder))
        }
    }
}

/// For the bare forwarder, the NodePort's path without the NodePort: the client reaches
/// node2's pods through node1 (as it reaches the NodePort), and node2 sends their replies to
/// the client through node1 (as masquerade makes them go), where XDP forwards both.
fn route_through_node1(bed: &ExtBed) -> Result<()> {
    let node1 = LanNode::Node1.nic_addr().to_string();
    bed.topo
        .ext
        .ip(&["route", "add", LanNode::Node2.pod_cidr(), "via", &node1])?;
    bed.topo.node2.ip(&[
        "route",
        "add",
        &format!("{}/32", bed.topo.ext_addr()),
        "via",
        &node1,
    ])
}

/// New TCP connections from the client: to the NodePort, or to the backends in turn for the
/// bare forwarder. A run without a single connection is a finding about the mode: it comes
/// with a note.
fn measure_connections(
    plan: &Plan,
    bed: &ExtBed,
    mode: ExtMode,
) -> Result<(Sample, Option<String>)> {
    let targets = if mode == ExtMode::BareXdpForward {
        bed.backends().0
    } else {
        vec![bed::node_ports().0]
    };
    let mut cfg = LoadConfig::new(targets.into_iter().map(Into::into).collect());
    cfg.duration = plan.duration;
    cfg.warmup = plan.warmup;
    cfg.concurrency = plan.concurrency;
    let accepted_before = bed.accepted();
    let result = load::run(&bed.topo.ext, &cfg)?;
    let accepted = bed.accepted() - accepted_before;
    if accepted < result.connections {
        bail!(
            "the load generator counted {} connections but the servers accepted {accepted}",
            result.connections
        );
    }
    eprintln!("bench:   tcp {result} spread {:?}", result.per_backend);
    let note = (result.connections == 0).then(|| {
        let note = format!(
            "{}: no new TCP connection succeeded in {:.1} s ({} failed within it: {:?}; \
             connections still waiting at the end, up to the {:.0} s timeout, count as neither)",
            mode.name(),
            plan.duration.as_secs_f64(),
            result.errors,
            result.error_kinds,
            cfg.timeout.as_secs_f64()
        );
        eprintln!("bench:   NOTE {note}");
        note
    });
    let sample = Sample {
        rate: result.rate(),
        p50_us: result.p50_us(),
        p99_us: result.p99_us(),
        max_us: result.max_us(),
        errors: result.errors,
    };
    Ok((sample, note))
}

fn flood(plan: &Plan, bed: &ExtBed, mode: ExtMode) -> Flood {
    let targets = if mode == ExtMode::BareXdpForward {
        bed.backends().1
    } else {
        vec![bed::node_ports().1]
    };
    Flood {
        targets,
        flows: plan.udp_flows,
        warmup: plan.warmup,
        duration: plan.duration,
    }
}

/// Node1's own forwarding rate for `mode` (see [`live`]): the flood's frames (to a backend
/// directly for the bare forwarder) injected at node1's NIC, run through kproxy's XDP
/// program, the bare forwarder, or an XDP_PASS program that hands them to node1's stack
/// (netfilter, kproxy's TC program).
fn measure_node1(
    plan: &Plan,
    bed: &ExtBed,
    mode: ExtMode,
    running: &ExtRunning,
) -> Result<Node1Sample> {
    let dst = flood(plan, bed, mode).targets[0];
    let frames = live::frames(bed, dst, plan.udp_flows)?;
    let target = match running {
        ExtRunning::Agent(_) if mode == ExtMode::KproxyXdp => xdp::kproxy_program(&bed.pin_dir())?,
        ExtRunning::Bare(forwarder) => forwarder.program()?,
        ExtRunning::Agent(_) | ExtRunning::Rules => xdp::load_bare_pass()?,
    };
    let before = running.counters(bed)?;
    let mut sample = live::measure(bed, &frames, target.as_fd())?;
    let after = running.counters(bed)?;
    if let (Some(before), Some(after)) = (before, after) {
        let tx = Counter::XdpTx as usize;
        sample.xdp_tx = Some(after[tx].saturating_sub(before[tx]));
    }
    Ok(sample)
}

/// A note when the backends received less than 90% of the frames injected at node1, when
/// less than 90% left node1 in the isolated run, or when a mode that forwards in XDP sent
/// less than 90% by XDP_TX.
fn check_node1(mode: ExtMode, sample: &Node1Sample) -> Option<String> {
    // Counts far below 2^52.
    #[allow(clippy::cast_precision_loss)]
    let share = sample.delivered as f64 / sample.frames as f64;
    // Counts far below 2^52.
    #[allow(clippy::cast_precision_loss)]
    let short_tx = mode.forwards_in_xdp()
        && sample
            .xdp_tx
            .is_some_and(|tx| (tx as f64) < 0.9 * sample.frames as f64);
    #[allow(clippy::cast_precision_loss)]
    let short_left = sample
        .left_node1
        .zip(sample.isolated_frames)
        .is_some_and(|(n, frames)| (n as f64) < 0.9 * frames as f64);
    (share < 0.9 || short_tx || short_left).then(|| {
        let note = format!(
            "{}: of {} frames injected at node1's NIC (live frames, {:.0} pps), the backends \
             received {} ({:.1}%); node1's XDP_TX counter: {}; with node1 cut off from the \
             switch, {} of {} left node1",
            mode.name(),
            sample.frames,
            sample.with_delivery_pps.unwrap_or(f64::NAN),
            sample.delivered,
            share * 100.0,
            sample
                .xdp_tx
                .map_or_else(|| "none (no kproxy program)".into(), |n| n.to_string()),
            sample
                .left_node1
                .map_or_else(|| "?".into(), |n| n.to_string()),
            sample
                .isolated_frames
                .map_or_else(|| "?".into(), |n| n.to_string())
        );
        eprintln!("bench:   NOTE {note}");
        note
    })
}

/// A note when connections failed in a mode whose datapath counts what it drops: the
/// counters that moved during the TCP run, as evidence of where.
fn check_tcp_errors(
    mode: ExtMode,
    connections: &Sample,
    counters: Option<&([u64; COUNTER_SLOTS], [u64; COUNTER_SLOTS])>,
) -> Option<String> {
    let (before, after) = counters?;
    if connections.errors == 0 {
        return None;
    }
    let mut note = format!(
        "{}: {} connections failed; node1's datapath counted during the TCP run:",
        mode.name(),
        connections.errors
    );
    for c in Counter::ALL {
        let n = after[*c as usize].saturating_sub(before[*c as usize]);
        // Drops, hand-overs to the stack, and conntrack's repairs and port remaps: the
        // trail of a flow that lost its entries.
        let relevant = c.drop_reason().is_some()
            || c.name().starts_with("xdp_pass")
            || c.name().starts_with("ct_")
            || matches!(c, Counter::PortRemapped | Counter::FlowRebalanced);
        if n > 0 && relevant {
            let _ = write!(note, " {}={n}", c.name());
        }
    }
    eprintln!("bench:   NOTE {note}");
    Some(note)
}

/// A note when (almost) no datagram reached the backends, or, for kproxy and the bare
/// forwarder, when their counters show drops (from 0.1%) or (for the modes that forward in
/// XDP) fewer packets leaving node1 by XDP_TX than reached the backends, i.e. the stack
/// forwarded part of the flood. The counters go into the note as evidence.
fn check_udp(
    mode: ExtMode,
    udp: &UdpSample,
    duration: Duration,
    counters: Option<&([u64; COUNTER_SLOTS], [u64; COUNTER_SLOTS])>,
) -> Option<String> {
    let delivered_in_window = udp.delivered_pps * duration.as_secs_f64();
    let mut note = String::new();
    // The backends' interfaces also count the odd packet of their own links (IPv6 neighbour
    // discovery, say): under 1% of what was sent is nothing forwarded.
    if udp.delivered_pps < 0.01 * udp.sent_pps {
        let _ = write!(
            note,
            "{}: almost none of the UDP packets sent ({:.0}/s) reached the backends \
             ({:.0}/s);",
            mode.name(),
            udp.sent_pps,
            udp.delivered_pps
        );
    }
    if let Some((before, after)) = counters {
        let delta = |c: Counter| after[c as usize].saturating_sub(before[c as usize]);
        let xdp_tx = delta(Counter::XdpTx);
        let drops: u64 = Counter::ALL
            .iter()
            .filter(|c| c.drop_reason().is_some())
            .map(|c| delta(*c))
            .sum();
        // The counters span warm-up, measurement and stop, so they should exceed what the
        // backends received in the measured window. Precision loss only beyond 2^52.
        #[allow(clippy::cast_precision_loss)]
        let short = mode.forwards_in_xdp() && (xdp_tx as f64) < 0.9 * delivered_in_window;
        // A stray packet of the TCP run's last connections (a late FIN, say) may be dropped
        // as INVALID meanwhile; drops matter from one in a thousand packets.
        let dropping = drops * 1000 > delta(Counter::Packets);
        if short || dropping || !note.is_empty() {
            if note.is_empty() {
                let _ = write!(note, "{}:", mode.name());
            }
            let _ = write!(
                note,
                " during the UDP flood node1's datapath counted XDP_TX {xdp_tx} and {drops} \
                 drops, ~{delivered_in_window:.0} packets reached the backends in the measured \
                 {:.1} s; counters:",
                duration.as_secs_f64()
            );
            for c in Counter::ALL {
                let n = delta(*c);
                if n > 0 {
                    let _ = write!(note, " {}={n}", c.name());
                }
            }
        }
    }
    if note.is_empty() {
        return None;
    }
    eprintln!("bench:   NOTE {note}");
    Some(note)
}
