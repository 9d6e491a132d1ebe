//! The command line: `kproxy run`, `kproxy services`, `kproxy cleanup`.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};
use kproxy_common::config::Config;

use crate::{
    agent::{self, AgentConfig},
    cmd,
    dataplane::load::MapSizes,
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
    /// Load the datapath, attach it, and keep it in step with the manifests.
    Run(RunArgs),
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
    /// A YAML/JSON file or a directory of them with v1 Services and discovery.k8s.io/v1
    /// EndpointSlices. Watched: changes apply live.
    #[arg(long)]
    manifests: PathBuf,
    /// This node's name.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Interfaces that get the TC program on ingress (pod-facing veths, the node's links).
    #[arg(long, value_delimiter = ',', required = true)]
    attach: Vec<String>,
    /// Interfaces (NICs) that get the XDP program on ingress.
    #[arg(long, value_delimiter = ',')]
    xdp: Vec<String>,
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
    /// Idle timeout of established TCP flows, seconds.
    #[arg(long, default_value_t = Config::DEFAULT.tcp_established_timeout_ns / 1_000_000_000)]
    ct_tcp_established_timeout: u64,
    /// Timeout of TCP flows after FIN in both directions or RST, seconds.
    #[arg(long, default_value_t = Config::DEFAULT.tcp_close_timeout_ns / 1_000_000_000)]
    ct_tcp_close_timeout: u64,
    /// Timeout of TCP flows that have not seen a reply, seconds.
    #[arg(long, default_value_t = Config::DEFAULT.tcp_syn_timeout_ns / 1_000_000_000)]
    ct_tcp_syn_timeout: u64,
    /// Idle timeout of UDP flows without replies, seconds.
    #[arg(long, default_value_t = Config::DEFAULT.udp_timeout_ns / 1_000_000_000)]
    ct_udp_timeout: u64,
    /// Idle timeout of UDP flows with replies, seconds.
    #[arg(long, default_value_t = Config::DEFAULT.udp_stream_timeout_ns / 1_000_000_000)]
    ct_udp_stream_timeout: u64,
    /// Seconds between conntrack garbage collections.
    #[arg(long, default_value_t = 10)]
    ct_gc_interval: u64,
}

impl RunArgs {
    fn into_config(self) -> AgentConfig {
        const NS: u64 = 1_000_000_000;
        AgentConfig {
            manifests: self.manifests,
            node_name: self.node_name,
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
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn termination() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
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
        Command::Run(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(agent::run(args.into_config(), termination()))),
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
