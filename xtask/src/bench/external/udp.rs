//! UDP forwarding rate: trafgen in the external client sends minimum-size datagrams over many
//! flows, as fast as it can, for a fixed time; what the backends' interfaces received in that
//! time is the rate the path forwarded, what the client's interface sent is the offered load.
//! Interface counters cost the measured path nothing, and nothing reads the datagrams (the
//! backends' sinks drop them at the socket).

use std::{
    fmt::Write as _,
    net::SocketAddrV4,
    os::unix::process::CommandExt,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use kproxy_testbed::topology::LEAF_IFACE;

use super::bed::ExtBed;
use crate::bench::report::UdpSample;

/// The first source port of the flows; flow `i` comes from `FIRST_SOURCE_PORT + i`.
const FIRST_SOURCE_PORT: u16 = 10_000;
/// Payload bytes: Ethernet + IPv4 + UDP + 18 = 60, the smallest Ethernet frame.
const PAYLOAD: usize = 18;
/// How long trafgen gets to stop after SIGINT.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// What to send.
#[derive(Debug, Clone)]
pub struct Flood {
    /// Destinations, sent to in turn (trafgen's round robin over its packets).
    pub targets: Vec<SocketAddrV4>,
    /// Flows in all: each target gets an equal share of source ports.
    pub flows: usize,
    /// Sending before the counters are read (ARP, conntrack and flow tables fill).
    pub warmup: Duration,
    pub duration: Duration,
}

/// trafgen's configuration for `flood`: one packet per target, its source port counting
/// through the target's share of the flows (`dinc`, which trafgen follows with the UDP
/// checksum), to node1's NIC, the client's next hop for both NodePorts and pods.
fn trafgen_config(bed: &ExtBed, flood: &Flood, node_mac: [u8; 6]) -> Result<String> {
    ensure!(!flood.targets.is_empty(), "UDP flood without targets");
    let per_target = (flood.flows / flood.targets.len()).max(1);
    let last = u16::try_from(per_target - 1)
        .ok()
        .and_then(|n| FIRST_SOURCE_PORT.checked_add(n))
        .context("too many UDP flows")?;
    let mac = node_mac.map(|b| format!("{b:02x}")).join(":");
    let mut conf = String::new();
    for target in &flood.targets {
        let _ = writeln!(
            conf,
            "{{ eth(da={mac}), ipv4(saddr={}, daddr={}, ttl=64), \
             udp(sp=dinc({FIRST_SOURCE_PORT}, {last}), dp={}), fill(0x00, {PAYLOAD}) }}",
            bed.topo.ext_addr(),
            target.ip(),
            target.port()
        );
    }
    Ok(conf)
}

/// Sends `flood` from the external client and counts what arrives at the backends.
pub fn measure(bed: &ExtBed, flood: &Flood) -> Result<UdpSample> {
    let node_mac = bed.node().mac(bed.topo.nic_iface())?;
    let conf_path = bed.dir.path().join("trafgen.cfg");
    std::fs::write(&conf_path, trafgen_config(bed, flood, node_mac)?)?;
    // One worker (one CPU) sends; --no-sock-mem and --notouch-irq leave the machine's socket
    // memory and IRQ settings alone. trafgen forks its worker: its own process group lets
    // SIGINT reach both, as ^C would.
    let child = bed
        .topo
        .ext
        .command("trafgen")
        .args(["--dev", LEAF_IFACE, "--cpus", "1", "--no-sock-mem"])
        .args(["--notouch-irq", "--no-cpu-stats", "--num", "0", "--conf"])
        .arg(&conf_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .context("starting trafgen")?;
    let sender = Sender(Some(child));
    std::thread::sleep(flood.warmup);
    let (sent0, delivered0) = (bed.sent()?, bed.delivered()?);
    let started = Instant::now();
    std::thread::sleep(flood.duration);
    let (sent1, delivered1) = (bed.sent()?, bed.delivered()?);
    let elapsed = started.elapsed().as_secs_f64();
    sender.stop()?;
    let rate = |n: u64| {
        // Counts of one run stay far below 2^52.
        #[allow(clippy::cast_precision_loss)]
        let n = n as f64;
        n / elapsed
    };
    let sample = UdpSample {
        sent_pps: rate(sent1.saturating_sub(sent0)),
        delivered_pps: rate(delivered1.saturating_sub(delivered0)),
    };
    // Nothing sent is the harness's failure; nothing delivered is a finding about the mode
    // (its caller notes it with the datapath's counters).
    if sent1 == sent0 {
        bail!("trafgen sent nothing from {}", bed.topo.ext.name());
    }
    Ok(sample)
}

/// trafgen running in its own process group (it and its worker); stopped with SIGINT (its
/// normal end), killed if it does not stop.
struct Sender(Option<Child>);

impl Sender {
    fn stop(mut self) -> Result<()> {
        let Some(mut child) = self.0.take() else {
            return Ok(());
        };
        signal_group(&child, libc::SIGINT);
        let started = Instant::now();
        while child.try_wait()?.is_none() {
            if started.elapsed() > STOP_TIMEOUT {
                signal_group(&child, libc::SIGKILL);
                child.wait()?;
                bail!("trafgen did not stop on SIGINT");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = child.wait_with_output()?;
        // SIGINT is how trafgen is meant to stop; anything else is a failure.
        if !out.status.success() {
            bail!(
                "trafgen failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        // An early return left it running: it must not outlive the measurement.
        if let Some(mut child) = self.0.take() {
            signal_group(&child, libc::SIGKILL);
            let _ = child.wait();
        }
    }
}

/// Sends `signal` to the process group `child` leads (it was spawned with `process_group(0)`,
/// so the group's id is its pid and holds only it and what it forked).
fn signal_group(child: &Child, signal: libc::c_int) {
    if let Ok(pgid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on the process group of our own child, not yet waited for.
        unsafe { libc::kill(-pgid, signal) };
    }
}
