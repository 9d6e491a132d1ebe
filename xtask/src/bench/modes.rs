//! The datapaths the benchmark compares, each set up from nothing on a fresh bed: kproxy
//! (TC, and XDP on the client-facing link) and kube-proxy's rules for iptables (legacy and
//! nft backends), nftables and IPVS.

use std::{
    ffi::OsString,
    io::Write,
    net::SocketAddr,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use aya::maps::{HashMap, MapData};
use kproxy_common::{
    lb::{ServiceKey, ServiceValue},
    names,
};
use kproxy_testbed::{LoggedProcess, Netns};

use super::{
    bed::BenchBed,
    cluster::{self, CHANGED_PORT, Cluster},
    rules,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    KproxyTc,
    KproxyXdp,
    IptablesLegacy,
    IptablesNft,
    Nftables,
    Ipvs,
}

impl Mode {
    pub const ALL: [Mode; 6] = [
        Mode::KproxyTc,
        Mode::KproxyXdp,
        Mode::IptablesLegacy,
        Mode::IptablesNft,
        Mode::Nftables,
        Mode::Ipvs,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Mode::KproxyTc => "kproxy-tc",
            Mode::KproxyXdp => "kproxy-xdp",
            Mode::IptablesLegacy => "iptables-legacy",
            Mode::IptablesNft => "iptables-nft",
            Mode::Nftables => "nftables",
            Mode::Ipvs => "ipvs",
        }
    }

    pub fn parse(name: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Why this mode cannot run on this machine, if it cannot.
    pub fn unavailable(self) -> Option<String> {
        match self {
            Mode::Ipvs if !Path::new("/proc/net/ip_vs").exists() => {
                Some("the kernel has no IPVS (CONFIG_IP_VS is not set), so kube-proxy's ipvs mode cannot run".into())
            }
            _ => None,
        }
    }
}

/// What setting a mode up measured.
pub struct Setup {
    /// From nothing to every service programmed.
    pub full_sync_ms: f64,
}

/// What a one-endpoint change measured (kproxy only).
pub struct ChangeTiming {
    /// From the manifest file's rename to the new backend being in the datapath's maps.
    pub file_to_map_ms: f64,
    /// The agent's own account: from the file event to the maps written.
    pub agent_ms: Option<f64>,
}

/// A mode set up on a bed; dropping it leaves cleanup to the bed (its namespaces go).
pub struct Running {
    agent: Option<LoggedProcess>,
}

/// Sets `mode` up on `bed` for `cluster`.
pub fn start(
    mode: Mode,
    bed: &BenchBed,
    cluster: &Cluster,
    agent_bin: &Path,
    ct_max: u32,
) -> Result<(Running, Setup)> {
    match mode {
        Mode::KproxyTc | Mode::KproxyXdp => start_kproxy(mode, bed, cluster, agent_bin, ct_max),
        Mode::IptablesLegacy | Mode::IptablesNft => {
            let ports = rules::service_ports(&cluster.services, &cluster.slices);
            let tool = if mode == Mode::IptablesLegacy {
                "iptables-legacy-restore"
            } else {
                "iptables-nft-restore"
            };
            let ms = feed(&bed.topo.node, tool, &[], &rules::iptables_restore(&ports))?;
            Ok((Running { agent: None }, Setup { full_sync_ms: ms }))
        }
        Mode::Nftables => {
            let ports = rules::service_ports(&cluster.services, &cluster.slices);
            let ms = feed(
                &bed.topo.node,
                "nft",
                &["-f", "-"],
                &rules::nftables_script(&ports),
            )?;
            Ok((Running { agent: None }, Setup { full_sync_ms: ms }))
        }
        Mode::Ipvs => bail!("{}", mode.unavailable().unwrap_or_default()),
    }
}

/// Runs `tool args` in `ns` (a node) with `input` on stdin; returns its wall time in ms.
pub fn feed(ns: &Netns, tool: &str, args: &[&str], input: &str) -> Result<f64> {
    let started = Instant::now();
    let mut child = ns
        .command(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {tool}"))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{tool} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(started.elapsed().as_secs_f64() * 1e3)
}

fn start_kproxy(
    mode: Mode,
    bed: &BenchBed,
    cluster: &Cluster,
    agent_bin: &Path,
    ct_max: u32,
) -> Result<(Running, Setup)> {
    cluster.write_manifests(&bed.manifests())?;
    let mut args: Vec<OsString> = vec!["run".into(), "--manifests".into(), bed.manifests().into()];
    args.extend(kproxy_node_args(
        bed,
        mode == Mode::KproxyXdp,
        ct_max,
        cluster.len(),
    ));
    let log = bed.dir.path().join("agent.log");
    let (agent, full_sync_ms) = spawn_agent(&bed.topo.node, agent_bin, &args, &log)?;
    Ok((Running::with_agent(agent), Setup { full_sync_ms }))
}

/// kproxy's arguments for the bench node: its name, pins, conntrack size and the links it
/// attaches to. With `xdp`, XDP on the client-facing link (the "NIC") and TC on the backend
/// links; otherwise TC everywhere.
pub fn kproxy_node_args(bed: &BenchBed, xdp: bool, ct_max: u32, services: usize) -> Vec<OsString> {
    let links = bed.topo.node_ifaces();
    let mut args: Vec<OsString> = ["--node-name", NODE_NAME, "--pin-dir"]
        .map(OsString::from)
        .to_vec();
    args.push(bed.pin_dir().into());
    args.extend(["--ct-max".into(), ct_max.to_string().into()]);
    args.extend(map_size_args(services));
    if xdp {
        let backend_links: Vec<&str> = links
            .iter()
            .filter(|l| *l != bed.topo.client_iface())
            .map(String::as_str)
            .collect();
        args.extend([
            "--attach".into(),
            backend_links.join(",").into(),
            "--xdp".into(),
            bed.topo.client_iface().into(),
        ]);
    } else {
        args.extend(["--attach".into(), links.join(",").into()]);
    }
    args
}

/// The map sizes an operator would give kproxy for `services` single-port Services with
/// three endpoints each, as flags, when its defaults (65,536 service ports, 262,144
/// backends) are too small: powers of two with room for the API server's and the selector
/// Services. None below the defaults, so the smaller scales run kproxy as shipped.
fn map_size_args(services: usize) -> Vec<OsString> {
    const ROOM: usize = 1024;
    let mut args = Vec::new();
    let service_ports = (services + ROOM).next_power_of_two();
    if service_ports > 65_536 {
        args.extend(["--max-services".into(), service_ports.to_string().into()]);
    }
    let backends = (3 * services + ROOM).next_power_of_two();
    if backends > 262_144 {
        args.extend(["--max-backends".into(), backends.to_string().into()]);
    }
    args
}

/// Starts `kproxy args` in `ns`, logging to `log`, and waits until it has programmed its
/// first complete view and says it is ready; returns it with the first sync's duration (ms).
pub fn spawn_agent(
    ns: &Netns,
    agent_bin: &Path,
    args: &[OsString],
    log: &Path,
) -> Result<(LoggedProcess, f64)> {
    let mut agent = LoggedProcess::spawn(ns, agent_bin, args, &[("NO_COLOR", "1")], log)?;
    let full_sync_ms = first_sync(&mut agent, Duration::from_mins(1))?.ms;
    Ok((agent, full_sync_ms))
}

/// A started agent's first complete programming, as it logged it.
pub struct FirstSync {
    /// The first sync's duration, ms.
    pub ms: f64,
    /// The agent's CPU time (all its threads) from its start until it was ready, ms: a
    /// start's cost, steadier than its duration, which the rest of the machine moves.
    pub cpu_ms: Option<f64>,
    /// Its peak resident memory by then (VmHWM), MiB: the start's share of the run's peak.
    pub ready_peak_mib: Option<f64>,
}

/// Waits until a started agent has programmed its first complete view and says it is ready;
/// returns that first sync's duration and the CPU the start took, as the agent logged them.
pub fn first_sync(agent: &mut LoggedProcess, timeout: Duration) -> Result<FirstSync> {
    let synced = agent.wait_for(" synced ", timeout)?;
    let ready = agent.wait_for(" ready", Duration::from_secs(30))?;
    let fields = synced
        .split_once("synced")
        .map_or(synced.as_str(), |(_, rest)| rest);
    eprintln!("bench:   agent first sync: {}", fields.trim());
    let cpu_ms = log_field_us(&ready, "cpu_ms");
    let ready_peak_mib = log_field_us(&ready, "peak_rss_kib").map(|kib| kib / 1024.0);
    if let (Some(cpu_ms), Some(faults)) = (cpu_ms, log_field_us(&ready, "minor_faults")) {
        eprintln!(
            "bench:   agent ready: {cpu_ms:.0} ms of CPU, {faults:.0} minor page faults, \
             peak RSS {} MiB",
            ready_peak_mib.map_or("-".into(), |mib| format!("{mib:.1}"))
        );
    }
    Ok(FirstSync {
        ms: log_field_us(&synced, "elapsed_us").context("the first sync's elapsed_us")? / 1e3,
        cpu_ms,
        ready_peak_mib,
    })
}

/// A `key=123` field of a log line, as a float.
fn log_field_us(line: &str, key: &str) -> Option<f64> {
    let start = line.find(&format!("{key}="))? + key.len() + 1;
    line[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

impl Running {
    /// A mode whose only process is `agent`, stopped by [`Running::stop`].
    pub fn with_agent(agent: LoggedProcess) -> Running {
        Running { agent: Some(agent) }
    }

    /// Replaces one endpoint of the target service (the last backend's 8080 by its 8081) in
    /// the manifests and measures how long until the datapath has it.
    pub fn change_one_endpoint(
        &mut self,
        bed: &BenchBed,
        cluster: &Cluster,
    ) -> Result<Option<ChangeTiming>> {
        let Some(agent) = self.agent.as_mut() else {
            return Ok(None);
        };
        let backends = bed.backends();
        let (last, kept) = backends.split_last().context("backends")?;
        let kept: Vec<SocketAddr> = kept
            .iter()
            .map(|b| SocketAddr::new(*b, cluster::BACKEND_PORT))
            .collect();
        let moved = [SocketAddr::new(*last, CHANGED_PORT)];
        // The target's frontend in the services map: the change is live for the datapath
        // the moment its value (bank and count) is replaced.
        let map_path = bed.pin_dir().join(names::MAP_SERVICES);
        let services: HashMap<MapData, ServiceKey, ServiceValue> = HashMap::try_from(
            aya::maps::Map::from_map_data(MapData::from_pin(&map_path)?)?,
        )?;
        let SocketAddr::V4(target) = cluster.target() else {
            bail!("the generated section's services are IPv4");
        };
        let key = ServiceKey {
            addr: u32::from_ne_bytes(target.ip().octets()),
            port: target.port().to_be(),
            proto: 6,
            scope: 0,
        };
        let before = services
            .get(&key, 0)
            .context("the target service is not programmed")?;

        let started = Instant::now();
        cluster.write_target(&bed.manifests(), &[&kept, &moved])?;
        while services.get(&key, 0).ok() == Some(before) {
            if started.elapsed() > Duration::from_secs(5) {
                bail!("the changed endpoint never reached the datapath");
            }
            std::thread::sleep(Duration::from_micros(20));
        }
        let file_to_map_ms = started.elapsed().as_secs_f64() * 1e3;
        let synced = agent.wait_for(" synced ", Duration::from_secs(5))?;
        Ok(Some(ChangeTiming {
            file_to_map_ms,
            agent_ms: log_field_us(&synced, "since_event_us").map(|us| us / 1e3),
        }))
    }

    /// The agent's peak resident memory (MiB) and CPU time (s) so far.
    pub fn agent_usage(&self) -> Option<(f64, f64)> {
        let usage = ProcessUsage::of(self.agent.as_ref()?.pid()?)?;
        Some((usage.peak_rss_mib, usage.cpu_seconds))
    }

    pub fn stop(mut self) -> Result<()> {
        if let Some(agent) = self.agent.take() {
            let status = agent.terminate(Duration::from_secs(10))?;
            if !status.success() {
                bail!("kproxy exited with {status}");
            }
        }
        Ok(())
    }
}

/// The node's name in every bench bed.
pub const NODE_NAME: &str = "bench-node";

/// A process's resource use so far, from `/proc`.
#[derive(Debug, Clone, Copy)]
pub struct ProcessUsage {
    /// Peak resident memory (VmHWM), MiB.
    pub peak_rss_mib: f64,
    /// User and system CPU time of the process itself, seconds.
    pub cpu_seconds: f64,
    /// CPU time of its children it has waited for (kube-proxy's iptables-restore, nft).
    pub children_cpu_seconds: f64,
}

impl ProcessUsage {
    pub fn of(pid: u32) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let hwm_kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        let (cpu_seconds, children_cpu_seconds) = kproxy_testbed::process::cpu_seconds(pid)?;
        Some(Self {
            peak_rss_mib: hwm_kib / 1024.0,
            cpu_seconds,
            children_cpu_seconds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::log_field_us;

    #[test]
    fn reads_numbers_from_log_lines() {
        let line = "2026-11-22T05:51:49Z  INFO kproxy::agent: synced added=3 elapsed_us=1266 since_event_us=2840";
        assert_eq!(log_field_us(line, "elapsed_us"), Some(1266.0));
        assert_eq!(log_field_us(line, "since_event_us"), Some(2840.0));
        assert_eq!(log_field_us(line, "missing"), None);
    }
}
