//! The command line: `kproxy run`, `kproxy services`, `kproxy cleanup`.

mod duration;
mod kube_proxy_config;
mod kube_proxy_flags;

use std::{net::SocketAddr, num::NonZeroU32, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};
use kproxy_common::config::Config;

use self::duration::GoDuration;
use crate::{
    agent::{self, AgentConfig, HttpConfig, Source},
    cmd,
    dataplane::{
        links::select::IfacePattern,
        load::MapSizes,
        node_addrs::NodePortAddresses,
        socket_lb::{self, SocketLbConfig, SocketLbMode},
    },
    model::{
        LbAlgorithm, LbPolicy, LocalDetection, MaglevScope,
        maglev::{DEFAULT_TABLE_SIZE, is_prime},
    },
    source::api::ApiAccess,
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
    /// Print what the datapath holds: frontends, backends and counters, from the pinned
    /// maps, each frontend with its Service as the running agent names it.
    Services(ServicesArgs),
    /// What kproxy does with a connection from SRC (an address, or address:port for one
    /// flow) to DST:PORT/PROTO: the frontends it meets, the Service behind each, which
    /// endpoints are used and why, where a new flow would go, and the flows SRC has there.
    Explain(ExplainArgs),
    /// Ask the running agent to compare the service maps with what it programmed now:
    /// prints every difference (each repaired); exit status 1 if there were any.
    Verify(VerifyArgs),
    /// Detach kproxy from every interface and remove its pinned maps; or, with
    /// --kube-proxy-leftovers, remove what kube-proxy left on this node instead.
    Cleanup(CleanupArgs),
}

#[derive(Args)]
struct CleanupArgs {
    #[command(flatten)]
    pin: PinDirArg,
    /// Remove only what kube-proxy (iptables, nftables or IPVS mode) leaves on this node once
    /// it is stopped, as `kube-proxy --cleanup` does: its iptables and ip6tables chains and
    /// the jumps to them (in both the nf_tables and the legacy backend), its nftables tables
    /// `ip kube-proxy` and `ip6 kube-proxy`, its IPVS virtual servers (only when its
    /// `kube-ipvs0` dummy is there), that interface, and its ip sets. Other rules, kubelet's
    /// chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY) and kproxy's own pinned state are left
    /// alone. Run it once per node when switching from kube-proxy, e.g. as an init container
    /// on the host network before kproxy starts. Needs the programs of the Debian packages
    /// iptables and nftables, ipset if the kernel has ip sets and ipvsadm if it has IPVS; a
    /// missing one changes nothing. A second run finds nothing and succeeds.
    #[arg(long, conflicts_with = "pin_dir")]
    kube_proxy_leftovers: bool,
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
    /// The agent's metrics address (its --metrics-bind-address), where it names each
    /// frontend's Service; without an answer the frontends are shown unnamed.
    #[arg(long, default_value = "127.0.0.1:10249")]
    metrics_address: SocketAddr,
}

#[derive(Args)]
struct ExplainArgs {
    /// The client: an address, or address:port for one flow (`[ADDRESS]:PORT` for IPv6).
    src: cmd::explain::Client,
    /// The destination: `ADDRESS:PORT/TCP` or `/UDP` (TCP when left out), `[ADDRESS]:PORT`
    /// for IPv6.
    dst: String,
    #[command(flatten)]
    pin: PinDirArg,
    /// The agent's metrics address (its --metrics-bind-address), where it answers.
    #[arg(long, default_value = "127.0.0.1:10249")]
    metrics_address: SocketAddr,
    /// Print the agent's part as JSON too.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct VerifyArgs {
    /// The agent's metrics address (its --metrics-bind-address), where it takes the request.
    #[arg(long, default_value = "127.0.0.1:10249")]
    metrics_address: SocketAddr,
    /// Print the agent's JSON report instead of lines.
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
    /// The API server's URL (`https://host:port`), overriding the kubeconfig's.
    #[arg(long, conflicts_with = "manifests")]
    master: Option<String>,
    /// Objects per page of the lists of Services and EndpointSlices (at a start and at a
    /// relist). Fewer, larger pages list a large cluster sooner; smaller ones ask less
    /// memory of the API server and of the agent at once (which holds about two pages of
    /// each kind, encoded).
    #[arg(long, value_name = "N", default_value_t = crate::source::api::DEFAULT_LIST_PAGE_SIZE, conflicts_with = "manifests")]
    api_list_page_size: NonZeroU32,
    /// kube-proxy's `--config`: a KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1)
    /// file. Its settings take the place of kube-proxy's flags, which may then not be given
    /// as well (kube-proxy would silently ignore them); kproxy's own flags still apply.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// This node's name (`--hostname-override`, kube-proxy's name for it, also works).
    #[arg(long, env = "NODE_NAME", alias = "hostname-override")]
    node_name: String,
    /// Where `/healthz`, `/livez` and `/readyz` are served: IP:port, or an IP for port 10256
    /// ("" turns them off).
    #[arg(long, default_value = "0.0.0.0:10256", value_parser = |s: &str| optional_addr(s, HEALTHZ_PORT))]
    healthz_bind_address: OptionalAddr,
    /// Where `/metrics` is served: IP:port, or an IP for port 10249 ("" turns it off).
    #[arg(long, default_value = "127.0.0.1:10249", value_parser = |s: &str| optional_addr(s, METRICS_PORT))]
    metrics_bind_address: OptionalAddr,
    /// A health or metrics address that cannot be bound stops the agent (without it: logged
    /// and retried every 5 s while the datapath is served).
    #[arg(long, num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    bind_address_hard_fail: bool,
    /// kube-proxy's override of the node's primary IP (of its family; the other family's
    /// comes from the Node): what `--nodeport-addresses primary` and loadBalancerSourceRanges
    /// take as the node's IP. 0.0.0.0 or :: (the default): the Node's.
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: std::net::IpAddr,
    /// The agent's oom_score_adj (-1000..=1000; kube-proxy's default -999).
    #[arg(long, default_value_t = -999, allow_negative_numbers = true, value_parser = clap::value_parser!(i32).range(-1000..=1000))]
    oom_score_adj: i32,
    /// Log verbosity as kube-proxy's `-v`: 0-1 info, 2-4 debug for kproxy, 5 and up trace
    /// (KPROXY_LOG, a tracing filter, wins when set).
    #[arg(short = 'v', long = "v", default_value_t = 0)]
    verbosity: u8,
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
    /// How new flows pick their backend when their Service's `kproxy.io/lb-algorithm`
    /// annotation does not say: in turn, as kube-proxy balances, or by Maglev consistent
    /// hashing of the flow, so that every node picks the same backend for it (a flow that
    /// ECMP or a load balancer moves to another node keeps its backend).
    #[arg(long, value_enum, default_value_t = LbAlgorithm::RoundRobin)]
    lb_algorithm: LbAlgorithm,
    /// Which frontends use Maglev when it is chosen (by --lb-algorithm or a Service's
    /// annotation): those whose traffic may arrive at any node, or cluster IPs too.
    #[arg(long, value_enum, default_value_t = MaglevScope::External)]
    maglev_scope: MaglevScope,
    /// Entries of each Maglev table: a prime from 1021 to 65521. A larger table spreads
    /// flows more evenly over many backends; each service port's table takes 4 bytes an
    /// entry.
    #[arg(long, default_value_t = DEFAULT_TABLE_SIZE, value_parser = maglev_table_size)]
    maglev_table_size: u32,
    /// How many service ports can have a Maglev table at a time (capacity of the table
    /// map, in tables).
    #[arg(long, default_value_t = MapSizes::default().maglev_tables, value_parser = clap::value_parser!(u32).range(1..))]
    maglev_max_services: u32,
    /// Socket-level load balancing: connects and UDP sends to a Service are pointed at the
    /// backend once, at the socket, and their packets are never translated. `all`: every
    /// socket under --cgroup-root; `host-only`: the node's own (pods keep the VIP on the
    /// wire, as service meshes need); `off`: the packet path serves everything.
    #[arg(long, value_enum, default_value_t = SocketLbMode::Off)]
    socket_lb: SocketLbMode,
    /// The cgroup v2 directory whose sockets socket-level load balancing serves (with its
    /// descendants). Default: the machine's cgroup v2 root (/sys/fs/cgroup, or
    /// /sys/fs/cgroup/unified, or mounted at /run/kproxy/cgroupv2).
    #[arg(long)]
    cgroup_root: Option<PathBuf>,
    /// Where the container runtime keeps pods' network namespaces: searched, with the
    /// node's, for connected UDP sockets that socket-level load balancing pointed at a
    /// backend no longer in use, which are destroyed so their owners connect again.
    #[arg(long, default_value = socket_lb::NETNS_DIR)]
    netns_dir: PathBuf,
    /// Capacity of each socket-level load balancing table (sockets pointed at a backend,
    /// unconnected UDP flows, affinities).
    #[arg(long, default_value_t = MapSizes::SOCKETS_DEFAULT)]
    socket_lb_max: u32,
    /// Idle timeout of established TCP flows in kproxy's conntrack table, a Go duration
    /// (`24h0m0s`) or seconds; 0 keeps the default. kube-proxy's flag sets the kernel's
    /// table, which carries its NAT; kproxy's datapath NATs with its own table, which this
    /// sets instead (the kernel's is left alone). Was --ct-tcp-established-timeout.
    #[arg(long, alias = "ct-tcp-established-timeout", default_value_t = default_timeout(Config::DEFAULT.tcp_established_timeout_ns))]
    conntrack_tcp_timeout_established: GoDuration,
    /// Timeout of TCP flows after FIN in both directions or RST (Go duration or seconds; 0
    /// keeps the default).
    #[arg(long, default_value_t = default_timeout(Config::DEFAULT.tcp_close_timeout_ns))]
    ct_tcp_close_timeout: GoDuration,
    /// Timeout of TCP flows that have not seen a reply (Go duration or seconds; 0 keeps the
    /// default).
    #[arg(long, default_value_t = default_timeout(Config::DEFAULT.tcp_syn_timeout_ns))]
    ct_tcp_syn_timeout: GoDuration,
    /// Idle timeout of UDP flows without replies (kube-proxy's UNREPLIED; Go duration or
    /// seconds). 0, kube-proxy's default ("leave as-is"), keeps the kernel's default, 30s.
    /// Was --ct-udp-timeout.
    #[arg(long, alias = "ct-udp-timeout", default_value = "0s")]
    conntrack_udp_timeout: GoDuration,
    /// Idle timeout of UDP flows with replies (kube-proxy's ASSURED; Go duration or
    /// seconds). 0, kube-proxy's default, keeps the kernel's default, 2m0s. Was
    /// --ct-udp-stream-timeout.
    #[arg(long, alias = "ct-udp-stream-timeout", default_value = "0s")]
    conntrack_udp_timeout_stream: GoDuration,
    /// Seconds between conntrack garbage collections.
    #[arg(long, default_value_t = 10)]
    ct_gc_interval: u64,
    /// A change from the API is written at once unless a sync began less than this many
    /// milliseconds before: then the agent waits out the rest and writes everything that
    /// arrived by then as one sync (a rollout's storm). After a file event of --manifests
    /// it always waits this long (an editor's save is several writes).
    #[arg(long, default_value_t = 2)]
    sync_debounce_ms: u64,
    /// Per-backend series on /metrics (`kproxy_backend_packets_total`, `_bytes_total`,
    /// `_new_flows_total`): three series per backend of every frontend, so off by default.
    #[arg(long)]
    metrics_per_backend: bool,
    /// How often the service maps are compared with what the agent programmed, every
    /// difference logged, counted and repaired (Go duration or seconds; 0: only when asked
    /// by `kproxy verify`).
    #[arg(long, default_value = "1m0s")]
    drift_check_period: GoDuration,
    /// Seconds between re-reads of --manifests even without a file event (a safety net).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    manifests_resync_period: u64,
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

/// The Maglev table sizes kproxy takes: from 1021, the largest prime that fits one
/// 1024-entry chunk of the datapath's table map (a smaller table would take as much memory
/// and spread flows less evenly), to 65521, the largest prime below 2^16 (64 chunks, 256 KiB
/// a table).
const MAGLEV_TABLE_SIZES: std::ops::RangeInclusive<u32> = 1021..=65_521;

/// `--maglev-table-size`: Maglev needs a prime size, so that each backend's permutation
/// of the table visits every entry.
fn maglev_table_size(s: &str) -> Result<u32, String> {
    let refused = || {
        format!(
            "{s:?}: the Maglev table size must be a prime from {} to {}, e.g. \
             {DEFAULT_TABLE_SIZE} or 65521",
            MAGLEV_TABLE_SIZES.start(),
            MAGLEV_TABLE_SIZES.end()
        )
    };
    let size: u32 = s.parse().map_err(|_| refused())?;
    if MAGLEV_TABLE_SIZES.contains(&size) && is_prime(size) {
        Ok(size)
    } else {
        Err(refused())
    }
}

/// A socket address, or none (the flag given as "").
type OptionalAddr = Option<SocketAddr>;

const HEALTHZ_PORT: u16 = 10256;
const METRICS_PORT: u16 = 10249;

/// An address:port, an address alone (kube-proxy then appends the server's usual `port`),
/// or "" for none.
fn optional_addr(s: &str, port: u16) -> Result<OptionalAddr, String> {
    if s.is_empty() {
        return Ok(None);
    }
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(Some(SocketAddr::new(ip, port)));
    }
    s.parse()
        .map(Some)
        .map_err(|e| format!("{s:?} is not an address:port ({e})"))
}

impl RunArgs {
    /// The agent's configuration; `Err` says which flags do not go together.
    fn into_config(self) -> Result<AgentConfig, String> {
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
                None => Source::Api(ApiAccess {
                    kubeconfig: self.kubeconfig,
                    master: self.master,
                    list_page_size: self.api_list_page_size,
                }),
            },
            node_name: self.node_name,
            http: HttpConfig {
                healthz: self.healthz_bind_address,
                metrics: self.metrics_bind_address,
                healthz_timeout: Duration::from_secs(self.healthz_timeout),
                bind_hard_fail: self.bind_address_hard_fail,
            },
            tc_ifaces: self.attach,
            xdp_ifaces: self.xdp,
            pin_dir: self.pin.pin_dir,
            sizes: MapSizes {
                services: self.max_services,
                backends: self.max_backends,
                conntrack: self.ct_max,
                affinity: self.max_affinities,
                sockets: if self.socket_lb.is_on() {
                    self.socket_lb_max
                } else {
                    1
                },
                maglev_tables: self.maglev_max_services,
                maglev_table_size: self.maglev_table_size,
            },
            lb: LbPolicy {
                algorithm: self.lb_algorithm,
                maglev_scope: self.maglev_scope,
            },
            socket_lb: SocketLbConfig {
                mode: self.socket_lb,
                cgroup: self.cgroup_root,
                netns_dir: self.netns_dir,
            },
            conntrack: Config {
                tcp_syn_timeout_ns: timeout_ns(
                    self.ct_tcp_syn_timeout,
                    Config::DEFAULT.tcp_syn_timeout_ns,
                ),
                tcp_established_timeout_ns: timeout_ns(
                    self.conntrack_tcp_timeout_established,
                    Config::DEFAULT.tcp_established_timeout_ns,
                ),
                tcp_close_timeout_ns: timeout_ns(
                    self.ct_tcp_close_timeout,
                    Config::DEFAULT.tcp_close_timeout_ns,
                ),
                udp_timeout_ns: timeout_ns(
                    self.conntrack_udp_timeout,
                    Config::DEFAULT.udp_timeout_ns,
                ),
                udp_stream_timeout_ns: timeout_ns(
                    self.conntrack_udp_timeout_stream,
                    Config::DEFAULT.udp_stream_timeout_ns,
                ),
                ..Config::DEFAULT
            },
            gc_interval: Duration::from_secs(self.ct_gc_interval.max(1)),
            resync_interval: Duration::from_secs(self.manifests_resync_period),
            debounce: Duration::from_millis(self.sync_debounce_ms),
            nodeport_addresses,
            local_detection,
            masquerade_all: self.masquerade_all,
            primary_ip: Some(self.bind_address).filter(|ip| !ip.is_unspecified()),
            oom_score_adj: Some(self.oom_score_adj),
            metrics_per_backend: self.metrics_per_backend,
            drift_check_period: Some(self.drift_check_period.0).filter(|d| !d.is_zero()),
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

/// kube-proxy's flags among `kproxy run`'s (by their canonical names): with `--config` the
/// file sets them, and kube-proxy ignores them on its command line; kproxy refuses them
/// there instead. `--hostname-override` (`--node-name`) and `-v` are the exceptions, as in
/// kube-proxy: the command line's win over the file's.
const SET_BY_CONFIG_FILE: &[&str] = &[
    "kubeconfig",
    "master",
    "bind-address",
    "healthz-bind-address",
    "metrics-bind-address",
    "bind-address-hard-fail",
    "masquerade-all",
    "iptables-localhost-nodeports",
    "detect-local-mode",
    "pod-bridge-interface",
    "pod-interface-name-prefix",
    "cluster-cidr",
    "nodeport-addresses",
    "oom-score-adj",
    "conntrack-tcp-timeout-established",
    "conntrack-udp-timeout",
    "conntrack-udp-timeout-stream",
];

/// A `kproxy run` command line (without the program name and subcommand) made into its
/// arguments: kube-proxy's inapplicable flags refused, its ignored ones taken out (notes),
/// `--config`'s file read in. `Err` carries the message (clap's for a bad command line).
fn parse_run(args: &[String]) -> Result<(RunArgs, Vec<String>), String> {
    let (config_file, args) = take_config_flag(args)?;
    let kube_proxy_flags::Prepared {
        mut args,
        mut notes,
    } = kube_proxy_flags::prepare(&args)?;
    if let Some(path) = config_file {
        let from_file = kube_proxy_config::load(&path)?;
        let given: Vec<String> = canonical_flags(&args).into_iter().flatten().collect();
        refuse_flags_the_file_governs(&given, &path)?;
        // The command line's node name and verbosity win over the file's.
        let file_names = canonical_flags(&from_file.args);
        let file_args = from_file
            .args
            .into_iter()
            .zip(file_names)
            .filter(|(_, name)| name.as_ref().is_none_or(|name| !given.contains(name)))
            .map(|(arg, _)| arg);
        args = file_args.chain(args).collect();
        notes.extend(from_file.notes);
    }
    let command_line = ["kproxy".to_owned(), "run".to_owned()]
        .into_iter()
        .chain(args);
    match Cli::try_parse_from(command_line) {
        Ok(Cli {
            command: Command::Run(run),
        }) => Ok((*run, notes)),
        Ok(_) => Err("not a `kproxy run` command line".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// `--config FILE` / `--config=FILE` taken out of `args`.
fn take_config_flag(args: &[String]) -> Result<(Option<PathBuf>, Vec<String>), String> {
    let mut file = None;
    let mut rest = Vec::with_capacity(args.len());
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let value = match arg.strip_prefix("--config") {
            Some("") => iter.next().cloned().ok_or("--config needs a file")?,
            Some(inline) if inline.starts_with('=') => inline[1..].to_owned(),
            _ => {
                rest.push(arg.clone());
                continue;
            }
        };
        if file.replace(PathBuf::from(value)).is_some() {
            return Err("--config given twice".into());
        }
    }
    Ok((file, rest))
}

/// `Err` naming the first of kube-proxy's flags among `given` (canonical names) beside
/// `--config`.
fn refuse_flags_the_file_governs(given: &[String], path: &std::path::Path) -> Result<(), String> {
    match given
        .iter()
        .find(|name| SET_BY_CONFIG_FILE.contains(&name.as_str()))
    {
        Some(name) => Err(format!(
            "--{name} is kube-proxy's, and --config {} is given: kube-proxy would ignore the \
             flag, so kproxy refuses it; set it in the file instead",
            path.display()
        )),
        None => Ok(()),
    }
}

/// For each of `args`, the canonical long name of the `kproxy run` flag it names (aliases
/// resolved), if it names one.
fn canonical_flags(args: &[String]) -> Vec<Option<String>> {
    use clap::CommandFactory as _;
    let cli = Cli::command();
    let Some(run) = cli.find_subcommand("run") else {
        return vec![None; args.len()];
    };
    let canonical = |arg: &str| {
        let flag = arg.strip_prefix("--")?;
        let name = flag.split_once('=').map_or(flag, |(name, _)| name);
        run.get_arguments()
            .find(|a| {
                a.get_long() == Some(name)
                    || a.get_all_aliases().is_some_and(|al| al.contains(&name))
            })
            .and_then(|a| a.get_long())
            .map(str::to_owned)
    };
    args.iter().map(|a| canonical(a)).collect()
}

/// Checks a `kproxy run` command line (without the program name) the way `kproxy` would
/// parse it, e.g. the arguments of a DaemonSet manifest. `Err` carries the message.
pub fn check_run_args<I: IntoIterator<Item = String>>(args: I) -> Result<(), String> {
    let args: Vec<String> = args.into_iter().collect();
    parse_run(&args).and_then(|(run, _)| run.into_config().map(|_| ()))
}

/// The log filter: KPROXY_LOG when set, else kube-proxy's `-v` level.
fn log_filter(verbosity: u8) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env("KPROXY_LOG").unwrap_or_else(|_| {
        match verbosity {
            0..=1 => "info",
            2..=4 => "info,kproxy=debug",
            _ => "info,kproxy=trace",
        }
        .into()
    })
}

pub fn main() -> ExitCode {
    let command_line: Vec<String> = std::env::args().collect();
    let command = if command_line.get(1).map(String::as_str) == Some("run") {
        match parse_run(&command_line[2..]) {
            Ok((run, notes)) => Ok((Command::Run(Box::new(run)), notes)),
            Err(e) => Err(e),
        }
    } else {
        Ok((Cli::parse().command, Vec::new()))
    };
    let (command, notes) = match command {
        Ok(parsed) => parsed,
        Err(e) => {
            // Before logging is set up (its level is among the flags).
            eprintln!("{}", e.trim_end());
            return ExitCode::from(2);
        }
    };
    let verbosity = match &command {
        Command::Run(run) => run.verbosity,
        _ => 0,
    };
    tracing_subscriber::fmt()
        .with_env_filter(log_filter(verbosity))
        .with_writer(std::io::stderr)
        .init();
    for note in notes {
        tracing::info!("{note}");
    }
    let result = match command {
        Command::Run(args) => match (*args).into_config() {
            Ok(config) => {
                crate::memory::return_large_blocks_at_once();
                crate::memory::share_two_arenas();
                // One worker beside the agent's loop: the watches read and decode the lists
                // there while the loop models and writes what came before. At 100,000
                // Services the lists end 0.4-0.9 s sooner and the start came 0.25-0.47 s
                // sooner, alternated with the single thread on one bed (README, "100,000
                // Services").
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .map_err(anyhow::Error::from)
                    // Boxed: the agent's future holds all its state (both families' maps), too
                    // much to move around on the stack.
                    .and_then(|rt| {
                        rt.block_on(async { Box::pin(agent::run(config, termination()?)).await })
                    })
            }
            Err(e) => Err(anyhow::anyhow!(e)),
        },
        Command::Services(args) => {
            cmd::services::print(&args.pin.pin_dir, args.json, args.metrics_address)
        }
        Command::Verify(args) => return verify(&args),
        Command::Explain(args) => cmd::explain::run(
            args.src,
            &args.dst,
            args.metrics_address,
            &args.pin.pin_dir,
            args.json,
        )
        .map(|_| ()),
        Command::Cleanup(args) if args.kube_proxy_leftovers => cmd::kube_proxy_leftovers::run(),
        Command::Cleanup(args) => cmd::cleanup::run(&args.pin.pin_dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `kproxy verify`: 0 when the maps held what was programmed, 1 when they did not (the
/// differences printed, and repaired by the agent) or the check failed.
fn verify(args: &VerifyArgs) -> ExitCode {
    let report = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(crate::http::agent_api::verify_now(args.metrics_address)));
    let report = match report {
        Ok(report) => report,
        Err(e) => {
            tracing::error!("{e:#}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        for difference in &report.drift {
            println!("drift: {difference}");
        }
        if let Some(error) = &report.error {
            println!("error: {error}");
        }
        println!(
            "{} frontends checked, {} differences{}",
            report.frontends,
            report.drift.len(),
            if report.drift.is_empty() {
                ""
            } else {
                ", repaired"
            }
        );
    }
    if report.drift.is_empty() && report.error.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A conntrack timeout's default as its flag shows it.
fn default_timeout(ns: u64) -> GoDuration {
    GoDuration(Duration::from_nanos(ns))
}

/// A conntrack timeout flag's value in nanoseconds: 0 keeps the default (kube-proxy's "leave
/// as-is"); below a second the datapath raises it to one (`Config::with_minimum_timeouts`).
fn timeout_ns(flag: GoDuration, default_ns: u64) -> u64 {
    if flag.0.is_zero() {
        default_ns
    } else {
        u64::try_from(flag.0.as_nanos()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|a| (*a).to_owned()).collect()
    }

    fn config(extra: &[&str]) -> Result<AgentConfig, String> {
        let mut args = strings(&["--node-name", "n", "--attach", "eth0"]);
        args.extend(strings(extra));
        parse_run(&args).and_then(|(run, _)| run.into_config())
    }

    #[test]
    fn a_kube_proxy_command_line_carries_over_or_is_refused_with_a_reason() {
        let (run, notes) = parse_run(&strings(&[
            "--hostname-override",
            "node-7",
            "--attach",
            "eth0",
            "--proxy-mode",
            "iptables",
            "--kube-api-qps=50",
            "--master=https://198.18.0.1:6443",
            "--bind-address=198.18.0.7",
            "--bind-address-hard-fail",
            "--healthz-bind-address=0.0.0.0",
            "--metrics-bind-address",
            "198.18.0.7:9000",
            "--oom-score-adj=-500",
            "--v=2",
        ]))
        .expect("kube-proxy's names");
        assert_eq!(notes.len(), 2, "--proxy-mode and --kube-api-qps: {notes:?}");
        let c = run.into_config().expect("valid");
        assert_eq!(c.node_name, "node-7", "--hostname-override names the node");
        let Source::Api(access) = &c.source else {
            panic!("the API source");
        };
        assert_eq!(access.master.as_deref(), Some("https://198.18.0.1:6443"));
        assert_eq!(c.primary_ip, Some("198.18.0.7".parse().expect("ip")));
        assert!(c.http.bind_hard_fail);
        assert_eq!(
            c.http.healthz,
            Some("0.0.0.0:10256".parse().expect("addr")),
            "an address alone gets kube-proxy's port"
        );
        assert_eq!(
            c.http.metrics,
            Some("198.18.0.7:9000".parse().expect("addr"))
        );
        assert_eq!(c.oom_score_adj, Some(-500));

        let defaults = config_of(&[]);
        assert_eq!(defaults.primary_ip, None, "0.0.0.0: the Node's");
        assert!(!defaults.http.bind_hard_fail, "kube-proxy's default");
        assert_eq!(defaults.oom_score_adj, Some(-999), "kube-proxy's default");
        assert!(config(&["--oom-score-adj=-1001"]).is_err());
        assert!(config(&["--bind-address=node"]).is_err());
        assert!(
            config(&["--master=x", "--manifests=/m"]).is_err(),
            "manifests need no API"
        );

        let err = check_run_args(strings(&[
            "--node-name",
            "n",
            "--attach",
            "eth0",
            "--ipvs-scheduler",
            "rr",
        ]))
        .expect_err("no IPVS");
        assert!(err.contains("does not apply to kproxy"), "{err}");
        let err = config(&["--conntrack-tcp-timeout-close-wait=1h0m0s"]).expect_err("refused");
        assert!(err.contains("half-closed"), "{err}");
    }

    fn config_of(extra: &[&str]) -> AgentConfig {
        config(extra).expect("valid")
    }

    /// A KubeProxyConfiguration file in a temporary directory.
    fn config_file(body: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(
            file.path(),
            format!(
                "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n{body}"
            ),
        )
        .expect("writing");
        file
    }

    #[test]
    fn a_config_file_sets_kube_proxys_flags_and_the_command_line_may_not_set_them_too() {
        let file = config_file(
            "hostnameOverride: from-file\nclusterCIDR: 10.244.0.0/16\nmode: nftables\n\
             conntrack: {udpTimeout: 1m}\nmetricsBindAddress: 0.0.0.0:10249\n",
        );
        let path = file.path().display().to_string();
        let run = |extra: &[&str]| {
            let mut args = strings(&["--attach", "eth0", "--config", &path]);
            args.extend(strings(extra));
            parse_run(&args).and_then(|(run, notes)| Ok((run.into_config()?, notes)))
        };
        let (c, notes) = run(&[]).expect("valid");
        assert_eq!(c.node_name, "from-file");
        assert_eq!(
            c.local_detection,
            LocalDetection::ClusterCidr(vec!["10.244.0.0/16".parse().expect("cidr")])
        );
        assert_eq!(c.conntrack.udp_timeout_ns, 60_000_000_000);
        assert_eq!(c.http.metrics, Some("0.0.0.0:10249".parse().expect("addr")));
        assert_eq!(notes.len(), 1, "{notes:?}");

        let (c, _) = run(&["--hostname-override", "from-flag", "--ct-max=1000"])
            .expect("the node name and kproxy's own flags beside --config");
        assert_eq!(
            c.node_name, "from-flag",
            "the command line's node name wins"
        );
        assert_eq!(c.sizes.conntrack, 1000);

        for flag in [
            "--cluster-cidr=10.0.0.0/8",
            "--masquerade-all",
            "--ct-udp-timeout=5",
        ] {
            let err = run(&[flag]).map(|_| ()).expect_err(flag);
            assert!(err.contains("set it in the file"), "{flag}: {err}");
        }
        let err = parse_run(&strings(&[
            "--attach",
            "eth0",
            "--config=/nonexistent.yaml",
        ]))
        .map(|_| ())
        .expect_err("missing file");
        assert!(err.contains("/nonexistent.yaml"), "{err}");
        let err = run(&["--config", &path]).map(|_| ()).expect_err("twice");
        assert!(err.contains("twice"), "{err}");
        let bad = config_file("clusterCidr: 10.0.0.0/8\n");
        let err = parse_run(&strings(&[
            "--attach",
            "eth0",
            "--node-name=n",
            &format!("--config={}", bad.path().display()),
        ]))
        .map(|_| ())
        .expect_err("unknown field");
        assert!(
            err.contains("clusterCidr") && err.contains(&bad.path().display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn socket_level_load_balancing_is_off_by_default_and_sized_when_on() {
        let off = config(&["--manifests", "/m"]).expect("valid flags");
        assert_eq!(off.socket_lb.mode, SocketLbMode::Off);
        assert_eq!(off.sizes.sockets, 1, "its tables take one entry while off");
        let on = config(&[
            "--manifests",
            "/m",
            "--socket-lb",
            "host-only",
            "--cgroup-root",
            "/sys/fs/cgroup/kube",
        ])
        .expect("valid flags");
        assert_eq!(on.socket_lb.mode, SocketLbMode::HostOnly);
        assert_eq!(
            on.socket_lb.cgroup.as_deref(),
            Some(std::path::Path::new("/sys/fs/cgroup/kube"))
        );
        assert_eq!(
            on.socket_lb.netns_dir,
            std::path::Path::new(socket_lb::NETNS_DIR)
        );
        assert_eq!(on.sizes.sockets, MapSizes::SOCKETS_DEFAULT);
        assert!(config(&["--manifests", "/m", "--socket-lb", "pods"]).is_err());
    }

    #[test]
    fn load_balancing_defaults_to_round_robin_with_maglev_ready_for_annotated_services() {
        let c = config(&[]).expect("defaults");
        assert_eq!(c.lb, LbPolicy::default());
        assert_eq!(c.lb.algorithm, LbAlgorithm::RoundRobin);
        assert_eq!(c.lb.maglev_scope, MaglevScope::External);
        assert_eq!(c.sizes.maglev_table_size, 16_381);
        assert_eq!(c.sizes.maglev_tables, 1024);
    }

    #[test]
    fn load_balancing_flags_set_the_policy_and_the_maglev_maps() {
        let c = config(&[
            "--lb-algorithm",
            "maglev",
            "--maglev-scope=all",
            "--maglev-table-size",
            "65521",
            "--maglev-max-services=4096",
        ])
        .expect("valid");
        assert_eq!(
            c.lb,
            LbPolicy {
                algorithm: LbAlgorithm::Maglev,
                maglev_scope: MaglevScope::All,
            }
        );
        assert_eq!(c.sizes.maglev_table_size, 65_521);
        assert_eq!(c.sizes.maglev_tables, 4096);
        let c =
            config(&["--lb-algorithm=round-robin", "--maglev-scope", "external"]).expect("valid");
        assert_eq!(c.lb.algorithm, LbAlgorithm::RoundRobin);
        assert_eq!(c.lb.maglev_scope, MaglevScope::External);
        for size in ["1021", "16381", "65521"] {
            let c = config(&["--maglev-table-size", size]).expect(size);
            assert_eq!(c.sizes.maglev_table_size.to_string(), size);
        }
    }

    #[test]
    fn bad_load_balancing_flags_are_refused_with_a_reason() {
        let prime = "must be a prime from 1021 to 65521, e.g. 16381 or 65521";
        let cases: &[(&[&str], &str)] = &[
            (&["--maglev-table-size", "16384"], prime),
            (&["--maglev-table-size=1019"], prime),
            (&["--maglev-table-size=65537"], prime),
            (&["--maglev-table-size=0"], prime),
            (&["--maglev-table-size=big"], prime),
            (&["--maglev-table-size=-7"], prime),
            (
                &["--lb-algorithm=random"],
                "possible values: round-robin, maglev",
            ),
            (&["--lb-algorithm=Maglev"], "possible values"),
            (
                &["--maglev-scope=cluster"],
                "possible values: external, all",
            ),
            (&["--maglev-max-services=0"], "0 is not in 1.."),
        ];
        for (args, part) in cases {
            let err = config(args).map(|_| ()).expect_err("refused");
            assert!(err.contains(part), "{args:?}: {err}");
        }
    }

    #[test]
    fn sync_timings_are_settings() {
        let c = config(&[]).expect("defaults");
        assert_eq!(c.debounce, Duration::from_millis(2));
        assert_eq!(c.resync_interval, Duration::from_secs(30));
        let c =
            config(&["--sync-debounce-ms", "50", "--manifests-resync-period", "5"]).expect("valid");
        assert_eq!(c.debounce, Duration::from_millis(50));
        assert_eq!(c.resync_interval, Duration::from_secs(5));
        assert!(
            config(&["--manifests-resync-period", "0"]).is_err(),
            "never zero"
        );
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
    fn conntrack_timeouts_take_kube_proxy_names_go_durations_and_the_old_seconds() {
        let c = config(&[]).expect("defaults");
        assert_eq!(
            c.conntrack,
            Config::DEFAULT,
            "kube-proxy's 0 keeps the defaults"
        );
        assert_eq!(
            c.conntrack.tcp_established_timeout_ns,
            24 * 3_600 * 1_000_000_000
        );
        let c = config(&[
            "--conntrack-tcp-timeout-established=1h30m0s",
            "--conntrack-udp-timeout",
            "45s",
            "--conntrack-udp-timeout-stream=3m",
            "--ct-tcp-close-timeout",
            "5",
            "--ct-tcp-syn-timeout=0",
        ])
        .expect("valid");
        let s = |secs: u64| secs * 1_000_000_000;
        assert_eq!(c.conntrack.tcp_established_timeout_ns, s(5_400));
        assert_eq!(c.conntrack.udp_timeout_ns, s(45));
        assert_eq!(c.conntrack.udp_stream_timeout_ns, s(180));
        assert_eq!(c.conntrack.tcp_close_timeout_ns, s(5), "bare seconds");
        assert_eq!(
            c.conntrack.tcp_syn_timeout_ns,
            Config::DEFAULT.tcp_syn_timeout_ns,
            "0 keeps the default"
        );
        let old = config(&["--ct-tcp-established-timeout", "60", "--ct-udp-timeout=7"])
            .expect("kproxy's older names");
        assert_eq!(old.conntrack.tcp_established_timeout_ns, s(60));
        assert_eq!(old.conntrack.udp_timeout_ns, s(7));
        let err = run_args(&["--attach", "eth0", "--ct-udp-timeout=-1s"])
            .map(|_| ())
            .unwrap_err();
        assert!(err.contains("negative"), "{err}");
        let err = run_args(&["--attach", "eth0", "--conntrack-udp-timeout", "soon"])
            .map(|_| ())
            .unwrap_err();
        assert!(err.contains("not a duration"), "{err}");
    }
}
