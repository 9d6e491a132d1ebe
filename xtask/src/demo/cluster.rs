//! `cargo xtask demo --cluster`: kproxy the way a cluster runs it. The real control plane
//! (etcd, kube-apiserver, kube-controller-manager of the pinned release) starts in the demo
//! node's namespace, kproxy reads it with its own service account's token, and sample
//! Services and pods are created through the API; `kubectl` of the same release shows them.
//! There is no kubelet: the demo marks pods Ready (and not Ready) itself, as tests do.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    io::IsTerminal,
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use kproxy_testbed::{
    BpfFs, LoggedProcess, Topology, TopologyOptions,
    kubernetes::{
        self, ControlPlane,
        kproxy_access::{node, service},
        objects::running_status,
        pki,
    },
    tcp_request, tcp_server,
};
use serde_json::{Value, json};

use super::{TIMEOUT, print_histogram};

const NODE: &str = "demo-node";
const POD_PORT: u16 = 8080;

pub fn run(kproxy: &Path) -> Result<()> {
    crate::kubernetes::ensure()?;
    let topo = Topology::build(TopologyOptions::default())?;
    let backends: Vec<Ipv4Addr> = (0..3).map(|i| topo.backend_addr(i)).collect();
    let mut servers = Vec::new();
    for (ns, addr) in topo.backends.iter().zip(&backends) {
        servers.push(tcp_server(ns, SocketAddrV4::new(*addr, POD_PORT))?);
    }
    let bpffs = BpfFs::new()?;
    let pin_dir = bpffs.pin_path("kproxy");
    let work = tempfile::Builder::new()
        .prefix("kpt-demo-cluster-")
        .tempdir()?;

    println!("\n== kproxy in a cluster ==");
    println!(
        "starting etcd, kube-apiserver and kube-controller-manager {} in namespace {}",
        kubernetes::RELEASE,
        topo.node.name()
    );
    let started = Instant::now();
    let plane = ControlPlane::start(
        &topo.node,
        &work.path().join("kubernetes"),
        topo.client_gateway(),
    )?;
    println!("control plane ready in {:.1?}", started.elapsed());
    let kproxy_kubeconfig = plane.install_kproxy(
        &node(NODE, "zone-a", &json!({})),
        &work.path().join("kproxy.kubeconfig"),
    )?;
    println!(
        "applied deploy/kproxy.yaml (ServiceAccount, ClusterRole, binding, ConfigMap) and Node {NODE}"
    );
    let agent = start_agent(&topo, kproxy, &kproxy_kubeconfig, &pin_dir, work.path())?;

    let web = json!({"app": "web"});
    plane.apply(&service("web", &web, POD_PORT, &json!({})))?;
    plane.apply(&service(
        "web-sticky",
        &web,
        POD_PORT,
        &json!({"sessionAffinity": "ClientIP"}),
    ))?;
    for (i, ip) in backends.iter().enumerate() {
        plane.ready_pod("default", &format!("web-{i}"), &web, NODE, IpAddr::V4(*ip))?;
    }
    let kubectl = Kubectl::new(&topo, &plane)?;
    println!("\ncreated Services web and web-sticky and three Ready pods behind them");
    let vip = cluster_ip(&plane, "web")?;
    let sticky = cluster_ip(&plane, "web-sticky")?;
    wait_for_backends(&topo, vip, 3)?;
    kubectl.show(&["get", "services,endpointslices,pods", "-o", "wide"])?;

    spread(&topo, vip, "web: 30 new connections, round-robin");
    spread(
        &topo,
        sticky,
        "web-sticky: 30 connections, ClientIP affinity",
    );

    // The kubelet's readiness probe fails on web-2: the EndpointSlice controller marks its
    // endpoint not ready and kproxy stops choosing it.
    let changed = Instant::now();
    plane.set_pod_status(
        "default",
        "web-2",
        running_status(IpAddr::V4(backends[2]), false),
    )?;
    wait_for_backends(&topo, vip, 2)?;
    println!(
        "\npod web-2 not Ready: out of web's backends {:.0?} after its status changed",
        changed.elapsed()
    );
    spread(&topo, vip, "web: 30 new connections");

    super::print_services(&topo.node, kproxy, &pin_dir)?;

    if std::io::stdin().is_terminal() {
        println!("\nThe cluster keeps running. In another terminal, as root:");
        println!("  {}", kubectl.command_line(&["get", "pods,services"]));
        println!(
            "  ip netns exec {} curl http://{vip}/   # through kproxy",
            topo.client.name()
        );
        println!("kproxy's log: {}", agent.log_path().display());
        println!("Press Enter to tear everything down.");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
    }

    drop(agent);
    let out = std::process::Command::new(kproxy)
        .args(["cleanup", "--pin-dir"])
        .arg(&pin_dir)
        .output()?;
    println!(
        "\nagent stopped; {}",
        String::from_utf8_lossy(&out.stdout).trim()
    );
    drop(plane);
    drop(servers);
    drop(topo);
    println!("control plane stopped, namespaces removed. Done.");
    Ok(())
}

fn start_agent(
    topo: &Topology,
    kproxy: &Path,
    kubeconfig: &Path,
    pin_dir: &Path,
    work: &Path,
) -> Result<LoggedProcess> {
    let ifaces = topo.node_ifaces().join(",");
    let mut args: Vec<OsString> = vec!["run".into(), "--kubeconfig".into(), kubeconfig.into()];
    args.extend(["--node-name", NODE, "--attach", &ifaces, "--pin-dir"].map(OsString::from));
    args.push(pin_dir.into());
    let log = work.join("kproxy.log");
    let mut agent = LoggedProcess::spawn(&topo.node, kproxy, &args, &[("NO_COLOR", "1")], &log)?;
    agent.wait_for(" ready", Duration::from_secs(30))?;
    println!(
        "kproxy is running with its service account's token (log: {})",
        log.display()
    );
    Ok(agent)
}

fn cluster_ip(plane: &ControlPlane, name: &str) -> Result<Ipv4Addr> {
    let svc: Value = plane
        .get("v1", "Service", Some("default"), name)?
        .with_context(|| format!("Service {name}"))?;
    svc["spec"]["clusterIP"]
        .as_str()
        .and_then(|ip| ip.parse().ok())
        .with_context(|| format!("Service {name} has no ClusterIP"))
}

/// Waits until connections to `vip` reach exactly `n` distinct backends.
fn wait_for_backends(topo: &Topology, vip: Ipv4Addr, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = connect_many(topo, vip, 12);
        if seen.len() == n {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("{vip} reached {} backends, not {n}: {seen:?}", seen.len());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn connect_many(topo: &Topology, vip: Ipv4Addr, count: usize) -> BTreeMap<SocketAddrV4, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..count {
        if let Ok(reply) = tcp_request(&topo.client, SocketAddrV4::new(vip, 80), TIMEOUT) {
            *seen.entry(reply.backend).or_default() += 1;
        }
    }
    seen
}

fn spread(topo: &Topology, vip: Ipv4Addr, what: &str) {
    println!("\n{what} ({vip}:80)");
    print_histogram(&connect_many(topo, vip, 30));
}

/// kubectl of the same release, as the cluster's admin, run in the node's namespace (where
/// the API server listens).
struct Kubectl<'a> {
    topo: &'a Topology,
    program: PathBuf,
    kubeconfig: PathBuf,
}

impl<'a> Kubectl<'a> {
    fn new(topo: &'a Topology, plane: &ControlPlane) -> Result<Self> {
        Ok(Self {
            topo,
            program: kubernetes::program("kubectl")?,
            kubeconfig: plane.kubeconfig(pki::ADMIN),
        })
    }

    fn command_line(&self, args: &[&str]) -> String {
        format!(
            "ip netns exec {} {} --kubeconfig {} {}",
            self.topo.node.name(),
            self.program.display(),
            self.kubeconfig.display(),
            args.join(" ")
        )
    }

    fn show(&self, args: &[&str]) -> Result<()> {
        println!("\n$ kubectl {}", args.join(" "));
        let out = self
            .topo
            .node
            .command(&self.program)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .context("running kubectl")?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    }
}
