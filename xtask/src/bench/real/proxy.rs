//! The proxies of the real section, each started in a fresh bed's node namespace and reading
//! the same API server: kproxy (TC, or XDP on the client-facing link) with its own
//! service account's token, as the DaemonSet runs it, and kube-proxy v1.37.2 in its iptables
//! or nftables mode with the `system:kube-proxy` certificate, as kubeadm runs it, with
//! nothing changed but what keeps it inside the bed (see `kproxy_testbed::kube_proxy::args`).

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use kproxy_testbed::{LoggedProcess, kubernetes};

use super::{
    super::{
        bed::BenchBed,
        modes::{self, FirstSync, Mode, NODE_NAME, ProcessUsage},
    },
    metrics::{self, Histogram},
    plane::Plane,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proxy {
    KproxyTc,
    KproxyXdp,
    /// kproxy with socket-level load balancing for every socket of the bench's cgroup, the
    /// load generator's among them (TC for what sockets do not cover).
    KproxySock,
    KubeProxyIptables,
    KubeProxyNftables,
    KubeProxyIpvs,
}

/// The histograms a proxy keeps of its programming: end to end (from the EndpointSlice's
/// last-change-trigger-time) and its own part.
pub struct Histograms {
    pub end_to_end: &'static str,
    pub own: &'static str,
    /// What "own" means for this proxy, for the report.
    pub own_meaning: &'static str,
}

const KPROXY_HISTOGRAMS: Histograms = Histograms {
    end_to_end: "kproxy_network_programming_duration_seconds",
    own: "kproxy_event_to_datapath_seconds",
    own_meaning: "API event's arrival to the datapath written",
};
const KUBE_PROXY_HISTOGRAMS: Histograms = Histograms {
    end_to_end: "kubeproxy_network_programming_duration_seconds",
    own: "kubeproxy_sync_proxy_rules_duration_seconds",
    own_meaning: "one sync of the rules (iptables-restore / nft run)",
};
/// kube-proxy's full syncs: the first one programs everything.
const KUBE_PROXY_FULL_SYNC: &str = "kubeproxy_sync_full_proxy_rules_duration_seconds";

impl Proxy {
    pub const ALL: [Proxy; 6] = [
        Proxy::KproxyTc,
        Proxy::KproxyXdp,
        Proxy::KproxySock,
        Proxy::KubeProxyIptables,
        Proxy::KubeProxyNftables,
        Proxy::KubeProxyIpvs,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Proxy::KproxyTc => "kproxy-tc",
            Proxy::KproxyXdp => "kproxy-xdp",
            Proxy::KproxySock => "kproxy-sock",
            Proxy::KubeProxyIptables => "kube-proxy-iptables",
            Proxy::KubeProxyNftables => "kube-proxy-nftables",
            Proxy::KubeProxyIpvs => "kube-proxy-ipvs",
        }
    }

    pub fn parse(name: &str) -> Option<Proxy> {
        Proxy::ALL.into_iter().find(|p| p.name() == name)
    }

    pub fn is_kproxy(self) -> bool {
        matches!(self, Proxy::KproxyTc | Proxy::KproxyXdp | Proxy::KproxySock)
    }

    /// Why this proxy cannot run here, if it cannot.
    pub fn unavailable(self) -> Option<String> {
        match self {
            Proxy::KubeProxyIpvs => Mode::Ipvs.unavailable(),
            _ => None,
        }
    }

    pub fn histograms(self) -> &'static Histograms {
        if self.is_kproxy() {
            &KPROXY_HISTOGRAMS
        } else {
            &KUBE_PROXY_HISTOGRAMS
        }
    }
}

/// Environment variable with extra `kproxy run` flags for the real bench's kproxy modes.
pub const EXTRA_ARGS_VAR: &str = "KPROXY_BENCH_EXTRA_ARGS";

/// Environment variable with a command the real bench's kproxy modes run the agent under.
pub const WRAPPER_VAR: &str = "KPROXY_BENCH_AGENT_WRAPPER";

/// A proxy running in a bed; dropping it kills the process.
pub struct RunningProxy {
    pub proxy: Proxy,
    process: LoggedProcess,
    /// Just before the process was started: where "full programming" is timed from.
    pub started: Instant,
}

/// Starts `proxy` on `bed`'s node, logging to `log`; returns at once (the caller probes).
/// `cgroup`: where `kproxy-sock` attaches its socket programs.
pub fn start(
    proxy: Proxy,
    bed: &BenchBed,
    plane: &Plane,
    (agent_bin, ct_max, services): (&Path, u32, usize),
    cgroup: Option<&Path>,
    log: &Path,
) -> Result<RunningProxy> {
    let (program, args, env): (_, Vec<OsString>, &[(&str, &str)]) = match proxy {
        Proxy::KproxyTc | Proxy::KproxyXdp | Proxy::KproxySock => {
            let mut args: Vec<OsString> = vec![
                "run".into(),
                "--kubeconfig".into(),
                plane.kproxy_kubeconfig.clone().into(),
            ];
            args.extend(modes::kproxy_node_args(
                bed,
                proxy == Proxy::KproxyXdp,
                ct_max,
                services,
            ));
            if proxy == Proxy::KproxySock {
                let cgroup = cgroup.context("kproxy-sock needs the bench's cgroup")?;
                args.extend(["--socket-lb".into(), "all".into(), "--cgroup-root".into()]);
                args.push(cgroup.into());
            }
            // Extra agent flags for an experiment (`--metrics-per-backend`, say), recorded
            // in the log; the published runs use none.
            if let Ok(extra) = std::env::var(EXTRA_ARGS_VAR) {
                eprintln!("bench: kproxy with {EXTRA_ARGS_VAR}={extra:?}");
                args.extend(extra.split_whitespace().map(OsString::from));
            }
            // A profiler around the agent for an experiment (`heaptrack -o FILE`, `perf
            // record -g -o FILE --`): its figures are then the wrapper's, said in the log.
            // The bench stops the wrapper; one that does not pass SIGTERM on to the agent
            // (heaptrack's script) leaves the agent running, to be killed by hand.
            match std::env::var(WRAPPER_VAR) {
                Ok(wrapper) if !wrapper.trim().is_empty() => {
                    eprintln!("bench: kproxy under {WRAPPER_VAR}={wrapper:?}");
                    let mut words = wrapper.split_whitespace().map(OsString::from);
                    let program = words.next().context("an empty wrapper")?;
                    let mut command: Vec<OsString> = words.collect();
                    command.push(agent_bin.into());
                    command.extend(args);
                    (PathBuf::from(program), command, &[("NO_COLOR", "1")])
                }
                _ => (agent_bin.to_path_buf(), args, &[("NO_COLOR", "1")]),
            }
        }
        Proxy::KubeProxyIptables | Proxy::KubeProxyNftables => (
            kubernetes::program("kube-proxy")?,
            kube_proxy_args(proxy, &plane.kube_proxy_kubeconfig),
            &[],
        ),
        Proxy::KubeProxyIpvs => bail!("{}", proxy.unavailable().unwrap_or_default()),
    };
    let started = Instant::now();
    let process = LoggedProcess::spawn(&bed.topo.node, &program, &args, env, log)?;
    Ok(RunningProxy {
        proxy,
        process,
        started,
    })
}

/// kube-proxy's command line as the test bed runs it (`kproxy_testbed::kube_proxy::args`:
/// as kubeadm configures it, with what keeps it inside the bed).
fn kube_proxy_args(proxy: Proxy, kubeconfig: &Path) -> Vec<OsString> {
    let mode = match proxy {
        Proxy::KubeProxyNftables => "nftables",
        _ => "iptables",
    };
    kproxy_testbed::kube_proxy::args(mode, kubeconfig, NODE_NAME)
}

impl RunningProxy {
    /// Fails with the log's tail if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        self.process.check_running()
    }

    /// The proxy's own account of its first, complete programming (ms): kproxy's first
    /// " synced " log line, kube-proxy's full-sync histogram (it has only the first full
    /// sync for an hour; with more the mean is reported).
    /// With kproxy, also the CPU its start took (ms) and its peak memory by then.
    pub fn first_sync_ms(&mut self, bed: &BenchBed) -> Result<(Option<f64>, Option<FirstSync>)> {
        if self.proxy.is_kproxy() {
            let first = modes::first_sync(&mut self.process, Duration::from_mins(1))?;
            return Ok((Some(first.ms), Some(first)));
        }
        let text = metrics::scrape(&bed.topo.node)?;
        let mean = Histogram::parse(&text, KUBE_PROXY_FULL_SYNC)
            .filter(|h| h.count > 0.0)
            .map(|h| h.sum / h.count * 1e3);
        Ok((mean, None))
    }

    /// Both programming histograms now.
    pub fn histograms(&self, bed: &BenchBed) -> Result<(Option<Histogram>, Option<Histogram>)> {
        let text = metrics::scrape(&bed.topo.node)?;
        let names = self.proxy.histograms();
        Ok((
            Histogram::parse(&text, names.end_to_end),
            Histogram::parse(&text, names.own),
        ))
    }

    pub fn usage(&self) -> Option<ProcessUsage> {
        ProcessUsage::of(self.process.pid()?)
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// SIGTERM; kproxy must exit cleanly, kube-proxy's status is its own business.
    pub fn stop(self) -> Result<()> {
        let status = self.process.terminate(Duration::from_secs(10))?;
        if self.proxy.is_kproxy() && !status.success() {
            bail!("kproxy exited with {status}");
        }
        Ok(())
    }
}
