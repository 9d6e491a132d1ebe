//! `cargo xtask demo`: the main job on an embedded default. Builds a small "cluster" of
//! network namespaces, runs the agent on the sample manifests of `deploy/examples/`, sends
//! real traffic through the Services and shows where it went, then removes everything.
//! `--cluster` runs it against a real control plane instead ([`cluster`]).

mod cluster;

use std::{
    collections::BTreeMap,
    ffi::OsString,
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use kproxy_testbed::{
    BpfFs, LoggedProcess, Topology, TopologyOptions, require_privileges, tcp_request, tcp_server,
    udp_request, udp_server,
};

use crate::{build_ebpf, cargo, deps, run_checked, target_dir, workspace_root};

/// `kproxy services`, run in the node's namespace, where the agent's metrics address names
/// each frontend's Service.
fn print_services(node: &kproxy_testbed::Netns, kproxy: &Path, pin_dir: &Path) -> Result<()> {
    println!("\n$ kproxy services --pin-dir {}", pin_dir.display());
    let out = node
        .command(kproxy)
        .arg("services")
        .arg("--pin-dir")
        .arg(pin_dir)
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    Ok(())
}

const TIMEOUT: Duration = Duration::from_secs(2);

fn build_agent() -> Result<PathBuf> {
    run_checked(cargo().args(["build", "--package", "kproxy"]))?;
    Ok(target_dir().join("debug").join("kproxy"))
}

#[derive(clap::Args, Default)]
pub struct Options {
    /// Run against a real control plane (etcd, kube-apiserver, kube-controller-manager,
    /// built on first use), with Services and pods created through the API and kubectl to
    /// look at them; waits for Enter before tearing down when run from a terminal.
    #[arg(long)]
    pub cluster: bool,
}

pub fn run(opts: &Options) -> Result<()> {
    if !require_privileges("cargo xtask demo") {
        bail!("the demo needs root: it creates network namespaces and loads BPF programs");
    }
    deps::ensure(deps::TEST_TOOLS)?;
    build_ebpf::run(&build_ebpf::Options::default())?;
    let kproxy = build_agent()?;
    if opts.cluster {
        return cluster::run(&kproxy);
    }

    let topo = Topology::build(TopologyOptions::default())?;
    let backends: Vec<Ipv4Addr> = (0..3).map(|i| topo.backend_addr(i)).collect();
    let mut servers = Vec::new();
    for (ns, addr) in topo.backends.iter().zip(&backends) {
        servers.push(tcp_server(ns, SocketAddrV4::new(*addr, 8080))?);
        servers.push(udp_server(ns, SocketAddrV4::new(*addr, 5353))?);
    }
    let bpffs = BpfFs::new()?;
    let pin_dir = bpffs.pin_path("kproxy");
    let work = tempfile::Builder::new().prefix("kpt-demo-").tempdir()?;
    let manifests = copy_examples(work.path())?;

    println!("\n== kproxy demo ==");
    println!(
        "node namespace {} with links {}",
        topo.node.name(),
        topo.node_ifaces().join(", ")
    );
    let list: Vec<String> = backends.iter().map(ToString::to_string).collect();
    println!(
        "client {}   backends {}",
        topo.client_addr(),
        list.join(", ")
    );
    println!(
        "manifests: {} (copied from deploy/examples)\n",
        manifests.display()
    );

    let agent = start_agent(
        &topo,
        &kproxy,
        &manifests,
        &pin_dir,
        &work.path().join("agent.log"),
    )?;
    show_round_robin(&topo)?;
    show_affinity(&topo)?;
    show_reject_and_udp(&topo)?;

    print_services(&topo.node, &kproxy, &pin_dir)?;

    drop(agent);
    let out = Command::new(&kproxy)
        .arg("cleanup")
        .arg("--pin-dir")
        .arg(&pin_dir)
        .output()?;
    println!(
        "\nagent stopped; {}",
        String::from_utf8_lossy(&out.stdout).trim()
    );
    drop(servers);
    drop(topo);
    println!("namespaces removed. Done.");
    Ok(())
}

/// Copies deploy/examples into `work/manifests`, the directory the agent watches.
fn copy_examples(work: &Path) -> Result<PathBuf> {
    let manifests = work.join("manifests");
    std::fs::create_dir(&manifests)?;
    for entry in std::fs::read_dir(workspace_root().join("deploy/examples"))? {
        let path = entry?.path();
        std::fs::copy(
            &path,
            manifests.join(path.file_name().context("file name")?),
        )?;
    }
    Ok(manifests)
}

fn start_agent(
    topo: &Topology,
    kproxy: &Path,
    manifests: &Path,
    pin_dir: &Path,
    log: &Path,
) -> Result<LoggedProcess> {
    let ifaces = topo.node_ifaces().join(",");
    let mut args: Vec<OsString> = vec!["run".into(), "--manifests".into(), manifests.into()];
    args.extend(["--node-name", "demo-node", "--attach", &ifaces, "--pin-dir"].map(OsString::from));
    args.push(pin_dir.into());
    let mut agent = LoggedProcess::spawn(&topo.node, kproxy, &args, &[("NO_COLOR", "1")], log)?;
    agent.wait_for(" ready", Duration::from_secs(15))?;
    println!("kproxy is running (log: {}):", log.display());
    for line in agent.log_text().lines() {
        println!("  | {line}");
    }
    Ok(agent)
}

fn print_histogram(counts: &BTreeMap<SocketAddrV4, usize>) {
    for (backend, n) in counts {
        println!("  {backend:<18} {:<30} {n}", "#".repeat(*n));
    }
}

fn show_round_robin(topo: &Topology) -> Result<()> {
    let web = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 10), 80);
    let mut spread = BTreeMap::new();
    let mut source_kept = true;
    for _ in 0..30 {
        let reply = tcp_request(&topo.client, web, TIMEOUT).context("request to web")?;
        source_kept &= *reply.peer.ip() == topo.client_addr();
        *spread.entry(reply.backend).or_default() += 1;
    }
    println!("\nweb {web}: 30 new TCP connections, round-robin");
    print_histogram(&spread);
    if source_kept {
        println!(
            "  every backend saw the client's own address {} (no SNAT)",
            topo.client_addr()
        );
    }
    Ok(())
}

fn show_affinity(topo: &Topology) -> Result<()> {
    let sticky = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 11), 80);
    let mut counts = BTreeMap::new();
    for _ in 0..10 {
        *counts
            .entry(tcp_request(&topo.client, sticky, TIMEOUT)?.backend)
            .or_default() += 1;
    }
    println!("\nsticky {sticky}: ClientIP session affinity, 10 connections");
    print_histogram(&counts);
    Ok(())
}

fn show_reject_and_udp(topo: &Topology) -> Result<()> {
    let down = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 12), 80);
    let started = Instant::now();
    match tcp_request(&topo.client, down, TIMEOUT) {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            println!(
                "\ndown {down}: no endpoints -> connection refused after {:.1?}",
                started.elapsed()
            );
        }
        other => bail!("down {down}: expected the connection refused, got {other:?}"),
    }
    let dns = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 53), 53);
    let reply = udp_request(&topo.client, dns, TIMEOUT).context("udp request")?;
    println!(
        "\ndns {dns}/UDP: the reply came from the VIP (a connected socket accepted it), served by {}",
        reply.backend
    );
    Ok(())
}
