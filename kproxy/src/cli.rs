//! The command line: `kproxy run`, `kproxy services`, `kproxy cleanup`.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};
use kproxy_common::config::Config;

use crate::{
    agent::{self, AgentConfig, HttpConfig, Source},
    cmd,
    dataplane::{links::select::IfacePattern, load::MapSizes, node_addrs::NodePortAddresses},
    model::LocalDetection,
};

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/kproxy";

#[derive(Parser)]
#[command(
    name = "kproxy",
    version,
    about = "eBPF Service load balancer for Kubernetes (kube-proxy replacement)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the datapath, attach it, and keep it in step with the cluster (or manifests).
    Run(Box<RunArgs>),
    /// Print what the datapath holds: frontends, backends and counters, from the pinned maps.
    Services(ServicesArgs),
    /// Detach kproxy from every interface and remove its pinned maps.
    Cleanup(PinDirArg),
}

#[derive(Args)]
struct PinDirArg {
    /// Directory (on bpffs) where maps and links are pinned.
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
}

#[derive(Args)]
struct ServicesArgs {
    #[command(flatten)]
    pin: PinDirArg,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct RunArgs {
    /// Read v1 Services, discovery.k8s.io/v1 EndpointSlices and this node's v1 Node from a
    /// YAML/JSON file or a directory of them instead of the Kubernetes API. Watched: changes
    /// apply live.
    #[arg(long, conflicts_with = "kubeconfig")]
    manifests: Option<PathBuf>,
    /// Kubeconfig to reach the API server with; without it (and without --manifests), the
    /// in-cluster service account.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// This node's name.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Where `/healthz` and `/readyz` are served ("" turns them off).
    #[arg(long, default_value = "0.0.0.0:10256", value_parser = optional_addr)]
    healthz_bind_address: OptionalAddr,
    /// Where `/metrics` is served ("" turns it off).
    #[arg(long, default_value = "127.0.0.1:10249", value_parser = optional_addr)]
    metrics_bind_address: OptionalAddr,
    /// `/healthz` fails once a change has waited this long (seconds) without being
    /// programmed.
    #[arg(long, default_value_t = 60)]
    healthz_timeout: u64,
    /// Interfaces that get the TC programs (the node's links, pod-facing veths): names or
    /// patterns with `*` and `?` (`eth0,veth*,cali*,lxc*`), comma-separated or repeated.
    /// Interfaces that appear later are attached as they come.
    #[arg(long, value_delimiter = ',', required = true, value_parser = IfacePattern::parse)]
    attach: Vec<IfacePattern>,
    /// Interfaces (NICs) that get the XDP program on ingress: names or patterns, like
    /// `--attach`.
    #[arg(long, value_delimiter = ',', value_parser = IfacePattern::parse)]
    xdp: Vec<IfacePattern>,
    #[command(flatten)]
    pin: PinDirArg,
    /// Capacity of the conntrack table (flows, per direction).
    #[arg(long, default_value_t = MapSizes::default().conntrack)]
    ct_max: u32,
    /// Capacity of the services map (service ports).
    #[arg(long, default_value_t = MapSizes::default().services)]
    max_services: u32,
    /// Capacity of the backends map (endpoints across all service ports).
    #[arg(long, default_value_t = MapSizes::default().backends)]
    max_backends: u32,
    /// Capacity of the ClientIP affinity table.
    #[arg(long, default_value_t = MapSizes::default().affinity)]
    max_affinities: u32,
    /// Idle timeout of established TCP flows, seconds (every conntrack timeout is at least
    /// 1: flows are refreshed once a second).
    #[arg(long, default_value_t = Config::DEFAULT.tcp_established_timeout_ns / 1_000_000_000, value_parser = timeout_seconds())]
    ct_tcp_established_timeout: u64,
    /// Timeout of TCP flows after FIN in both directions or RST, seconds.
    #[arg(long, default_value_t = Config::DEFAULT.tcp_close_timeout_ns / 1_000_000_000, value_parser = timeout_seconds())]
    ct_tcp_close_timeout: u64,
    /// Timeout of TCP flows that have not seen a reply, seconds.
    #[arg(long, default_value_t = Config::DEFAULT.tcp_syn_timeout_ns / 1_000_000_000, value_parser = timeout_seconds())]
    ct_tcp_syn_timeout: u64,
    /// Idle timeout of UDP flows without replies, seconds.
    #[arg(long, default_value_t = Config::DEFAULT.udp_timeout_ns / 1_000_000_000, value_parser = timeout_seconds())]
    ct_udp_timeout: u64,
    /// Idle timeout of UDP flows with replies, seconds.
    #[arg(long, default_value_t = Config::DEFAULT.udp_stream_timeout_ns / 1_000_000_000, value_parser = timeout_seconds())]
    ct_udp_stream_timeout: u64,
    /// Seconds between conntrack garbage collections.
    #[arg(long, default_value_t = 10)]
    ct_gc_interval: u64,
    /// Which node addresses NodePorts answer on: CIDRs (comma-separated; a family without
    /// one takes every address of that family), or `primary` (the node's primary IP from
    /// its Node object). Default: every address of the node.
    #[arg(long, value_delimiter = ',')]
    nodeport_addresses: Vec<String>,
    /// The cluster's pod CIDRs (comma-separated, at most one per family): traffic from them
    /// is local with --detect-local-mode ClusterCIDR (the default mode when this is set).
    #[arg(long, value_delimiter = ',')]
    cluster_cidr: Vec<String>,
    /// How traffic from this node's pods is recognised: ClusterCIDR (--cluster-cidr),
    /// NodeCIDR (the Node's spec.podCIDRs), InterfaceNamePrefix
    /// (--pod-interface-name-prefix) or BridgeInterface (--pod-bridge-interface).
    /// Default: ClusterCIDR, which without --cluster-cidr recognises none.
    #[arg(long)]
    detect_local_mode: Option<String>,
    /// Interfaces whose name starts with this face pods (--detect-local-mode
    /// InterfaceNamePrefix).
    #[arg(long)]
    pod_interface_name_prefix: Option<String>,
    /// The bridge pods are behind (--detect-local-mode BridgeInterface).
    #[arg(long)]
    pod_bridge_interface: Option<String>,
    /// Masquerade every new flow to a cluster IP (SNAT to a node address).
    #[arg(long, num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    masquerade_all: bool,
    /// NodePorts answer on 127.0.0.1 too, for the node's own clients, when
    /// --nodeport-addresses covers it (kube-proxy iptables mode's default; sets
    /// net.ipv4.conf.all.route_localnet=1 and drops loopback-addressed packets arriving
    /// elsewhere than lo).
    #[arg(long, num_args = 0..=1, default_value_t = true, default_missing_value = "true")]
    iptables_localhost_nodeports: bool,
}

/// A socket address, or none (the flag given as "").
type OptionalAddr = Option<SocketAddr>;

fn optional_addr(s: &str) -> Result<OptionalAddr, String> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|e| format!("{s:?} is not an address:port ({e})"))
}

impl RunArgs {
    /// The agent's configuration; `Err` says which flags do not go together.
    fn into_config(self) -> Result<AgentConfig, String> {
        const NS: u64 = 1_000_000_000;
        let local_detection = LocalDetection::from_flags(
            self.detect_local_mode.as_deref(),
            &self.cluster_cidr,
            self.pod_interface_name_prefix.as_deref(),
            self.pod_bridge_interface.as_deref(),
        )?;
        let nodeport_addresses = NodePortAddresses::parse(&self.nodeport_addresses)?;
        Ok(AgentConfig {
            source: match self.manifests {
                Some(path) => Source::Manifests(path),
                None => Source::Api {
                    kubeconfig: self.kubeconfig,
                },
            },
            node_name: self.node_name,
            http: HttpConfig {
                healthz: self.healthz_bind_address,
                metrics: self.metrics_bind_address,
                healthz_timeout: Duration::from_secs(self.healthz_timeout),
            },
            tc_ifaces: self.attach,
            xdp_ifaces: self.xdp,
            pin_dir: self.pin.pin_dir,
            sizes: MapSizes {
                services: self.max_services,
                backends: self.max_backends,
                conntrack: self.ct_max,
                affinity: self.max_affinities,
            },
            conntrack: Config {
                tcp_syn_timeout_ns: self.ct_tcp_syn_timeout * NS,
                tcp_established_timeout_ns: self.ct_tcp_established_timeout * NS,
                tcp_close_timeout_ns: self.ct_tcp_close_timeout * NS,
                udp_timeout_ns: self.ct_udp_timeout * NS,
                udp_stream_timeout_ns: self.ct_udp_stream_timeout * NS,
                ..Config::DEFAULT
            },
            gc_interval: Duration::from_secs(self.ct_gc_interval.max(1)),
            resync_interval: Duration::from_secs(30),
            nodeport_addresses,
            local_detection,
            masquerade_all: self.masquerade_all,
            localhost_nodeports: self.iptables_localhost_nodeports,
        })
    }
}

/// Registers for SIGTERM and SIGINT at once, and resolves on the first of them. Registered
/// before anything else runs: a signal that arrives before the agent first waits for one (a
/// pod deleted while it starts) still stops it cleanly instead of killing it.
fn termination() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use anyhow::Context as _;
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Checks a `kproxy run` command line (without the program name) the way `kproxy` would
/// parse it, e.g. the arguments of a DaemonSet manifest. `Err` carries clap's message.
pub fn check_run_args<I: IntoIterator<Item = String>>(args: I) -> Result<(), String> {
    let command_line = ["kproxy".to_owned(), "run".to_owned()]
        .into_iter()
        .chain(args);
    match Cli::try_parse_from(command_line) {
        Ok(Cli {
            command: Command::Run(args),
        }) => args.into_config().map(|_| ()),
        Ok(_) => Err("not a `kproxy run` command line".into()),
        Err(e) => Err(e.to_string()),
    }
}

pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KPROXY_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::Run(args) => match (*args).into_config() {
            Ok(config) => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(async { agent::run(config, termination()?).await })),
            Err(e) => Err(anyhow::anyhow!(e)),
        },
        Command::Services(args) => cmd::services::print(&args.pin.pin_dir, args.json),
        Command::Cleanup(args) => cmd::cleanup::run(&args.pin_dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Conntrack timeouts in whole seconds, at least one: a flow refreshed within the last
/// second has not timed out, which the datapath's fast path relies on.
fn timeout_seconds() -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(1..)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &[&str]) -> Result<AgentConfig, String> {
        let args = ["kproxy", "run", "--node-name", "n", "--attach", "eth0"]
            .into_iter()
            .chain(extra.iter().copied());
        match Cli::try_parse_from(args)
            .map_err(|e| e.to_string())?
            .command
        {
            Command::Run(args) => args.into_config(),
            _ => Err("not run".into()),
        }
    }

    #[test]
    fn kube_proxy_flags_become_the_agent_configuration() {
        let c = config(&[]).expect("defaults");
        assert_eq!(c.nodeport_addresses, NodePortAddresses::All);
        assert_eq!(c.local_detection, LocalDetection::None);
        assert!(!c.masquerade_all);

        let c = config(&[
            "--cluster-cidr",
            "10.244.0.0/16,fd00:10:244::/56",
            "--nodeport-addresses",
            "192.168.0.0/24,2001:db8::/64",
            "--masquerade-all",
        ])
        .expect("valid");
        assert_eq!(
            c.local_detection,
            LocalDetection::ClusterCidr(vec![
                "10.244.0.0/16".parse().expect("cidr"),
                "fd00:10:244::/56".parse().expect("cidr"),
            ])
        );
        assert_eq!(
            c.nodeport_addresses,
            NodePortAddresses::Cidrs(vec![
                "192.168.0.0/24".parse().expect("cidr"),
                "2001:db8::/64".parse().expect("cidr"),
            ])
        );
        assert!(c.masquerade_all);

        let c = config(&[
            "--detect-local-mode=InterfaceNamePrefix",
            "--pod-interface-name-prefix=veth",
            "--nodeport-addresses=primary",
            "--masquerade-all=false",
        ])
        .expect("valid");
        assert_eq!(
            c.local_detection,
            LocalDetection::InterfaceNamePrefix("veth".into())
        );
        assert_eq!(c.nodeport_addresses, NodePortAddresses::Primary);
        assert!(!c.masquerade_all);
        assert!(
            config(&["--masquerade-all=true"])
                .expect("valid")
                .masquerade_all
        );

        let c = config(&["--detect-local-mode", "NodeCIDR"]).expect("valid");
        assert_eq!(c.local_detection, LocalDetection::NodeCidr);
    }

    #[test]
    fn flags_that_do_not_go_together_are_refused_with_a_clear_error() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--detect-local-mode", "InterfaceNamePrefix"],
                "needs --pod-interface-name-prefix",
            ),
            (
                &["--detect-local-mode", "BridgeInterface"],
                "needs --pod-bridge-interface",
            ),
            (&["--detect-local-mode", "Magic"], "must be one of"),
            (
                &["--cluster-cidr", "10.0.0.0/8,10.1.0.0/16"],
                "dual-stack pair",
            ),
            (&["--cluster-cidr", "ten/8"], "valid CIDR"),
            (
                &["--nodeport-addresses", "primary,10.0.0.0/8"],
                "both 'primary' and CIDRs",
            ),
            (&["--nodeport-addresses", "10.0.0.1"], "valid CIDR"),
        ];
        for (args, part) in cases {
            let err = config(args).expect_err("refused");
            assert!(err.contains(part), "{args:?}: {err}");
            let line = ["--node-name", "n", "--attach", "eth0"]
                .iter()
                .chain(args.iter())
                .map(|a| (*a).to_owned());
            assert!(
                check_run_args(line).is_err(),
                "{args:?}: check_run_args too"
            );
        }
    }

    fn run_args(args: &[&str]) -> Result<RunArgs, String> {
        let line = ["kproxy", "run", "--node-name", "n"].iter().chain(args);
        match Cli::try_parse_from(line) {
            Ok(Cli {
                command: Command::Run(args),
            }) => Ok(*args),
            Ok(_) => Err("not run".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn texts(patterns: &[IfacePattern]) -> Vec<&str> {
        patterns.iter().map(IfacePattern::as_str).collect()
    }

    #[test]
    fn attach_and_xdp_take_names_and_patterns_comma_separated_or_repeated() {
        let args = run_args(&[
            "--attach",
            "eth0,veth*",
            "--attach",
            "cali*,lxc*",
            "--xdp",
            "eno?",
        ])
        .unwrap();
        assert_eq!(texts(&args.attach), ["eth0", "veth*", "cali*", "lxc*"]);
        assert_eq!(texts(&args.xdp), ["eno?"]);
    }

    #[test]
    fn impossible_interface_names_are_refused_at_the_command_line() {
        let err = run_args(&["--attach", "eth0,eth 1"])
            .map(|_| ())
            .unwrap_err();
        assert!(err.contains("cannot contain"), "{err}");
        let err = run_args(&["--attach", "eth0,"]).map(|_| ()).unwrap_err();
        assert!(err.contains("empty"), "{err}");
        assert!(run_args(&[]).is_err(), "--attach is required");
    }

    #[test]
    fn conntrack_timeouts_are_whole_seconds_from_one() {
        let err = run_args(&["--attach", "eth0", "--ct-udp-timeout", "0"])
            .map(|_| ())
            .unwrap_err();
        assert!(err.contains("0 is not in 1.."), "{err}");
        assert!(run_args(&["--attach", "eth0", "--ct-udp-timeout", "1"]).is_ok());
    }
}
