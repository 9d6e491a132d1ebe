//! The agent binary running inside a test bed's node namespace, with the bed around it:
//! topology, who-am-I servers on every backend, a private bpffs and a manifests directory
//! (the agent's home, shared by the reference bed here and the LAN bed in `lan.rs`).

use std::{
    ffi::OsString,
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6},
    path::{Path, PathBuf},
    process::ExitStatus,
    time::{Duration, Instant},
};

use kproxy::cmd::services::{DatapathView, collect};
use kproxy_testbed::{
    BpfFs, LoggedProcess, Netns, ServerHandle, Topology, TopologyOptions, tcp_server, udp_server,
};

pub const TCP_PORT: u16 = 8080;
pub const UDP_PORT: u16 = 5353;

/// The agent binary, rebuilt by cargo whenever these tests are built.
pub fn kproxy_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kproxy-under-test"))
}

/// Runs `kproxy cleanup --pin-dir pin_dir` and checks that it succeeded.
pub fn kproxy_cleanup(pin_dir: &Path) {
    let out = std::process::Command::new(kproxy_bin())
        .arg("cleanup")
        .arg("--pin-dir")
        .arg(pin_dir)
        .output()
        .expect("kproxy cleanup");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Keeps the test's thread, and the clients it starts from now on, on one CPU. kproxy's round
/// robin counts per CPU, so new connections go round the backends in an exact order only
/// when they are made from one CPU: a test that counts on that (an exact spread, every
/// backend among as many connections as there are backends, the next connection on the next
/// backend) calls this once its agent runs (an agent started later runs on that CPU only).
pub fn clients_on_one_cpu() {
    kproxy_testbed::cpu::stay_on_this_cpu().expect("keeping the clients on one CPU");
}

/// Checks a round-robin spread of `total` new connections over `backends` backends whose
/// first packets met the programs on more than one CPU: every backend chosen, and no two
/// counts further apart than there are CPUs (each CPU's turns are exact on its own). An XDP
/// program on a veth runs in the veth's NAPI poll, which may run on another CPU than the
/// sender's, so pinning the clients does not pin the datapath there.
pub fn assert_spread_per_cpu(counts: &[usize], backends: usize, total: usize) {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    assert_eq!(counts.len(), backends, "every backend chosen: {counts:?}");
    assert_eq!(counts.iter().sum::<usize>(), total, "{counts:?}");
    let (min, max) = (
        counts.iter().min().copied().unwrap_or(0),
        counts.iter().max().copied().unwrap_or(0),
    );
    assert!(min > 0 && max - min <= cpus, "{counts:?} over {cpus} CPUs");
}

/// Polls `f` every 20 ms until it returns `Some`, or panics after `timeout` naming `what`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What an agent keeps beside its node: a private bpffs for its pins and a temp dir holding
/// `manifests/` (which it watches) and its logs. Every bed has one.
pub struct AgentHome {
    pub bpffs: BpfFs,
    /// Temp dir holding `manifests/` (watched by the agent) and the agent's log.
    pub dir: tempfile::TempDir,
}

impl AgentHome {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("kpt-e2e-")
            .tempdir()
            .expect("temp dir");
        std::fs::create_dir(dir.path().join("manifests")).expect("manifests dir");
        Self {
            bpffs: BpfFs::new().expect("private bpffs"),
            dir,
        }
    }

    pub fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    pub fn pin_dir(&self) -> PathBuf {
        self.bpffs.pin_path("kproxy")
    }

    /// Writes a manifest file atomically (temp file + rename), as config management does.
    pub fn write(&self, file: &str, yaml: &str) {
        let tmp = self.dir.path().join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).expect("writing manifest");
        std::fs::rename(&tmp, self.manifests().join(file)).expect("renaming manifest");
    }

    pub fn remove(&self, file: &str) {
        std::fs::remove_file(self.manifests().join(file)).expect("removing manifest");
    }

    /// What the datapath holds now (read from the pinned maps).
    pub fn view(&self) -> Option<DatapathView> {
        collect(&self.pin_dir()).ok()
    }

    /// Waits until frontend `frontend` (`VIP:port/PROTO`) has exactly `backends`.
    pub fn wait_for_backends(
        &self,
        frontend: &str,
        backends: &[SocketAddrV4],
        timeout: Duration,
    ) -> Duration {
        let started = Instant::now();
        let mut want: Vec<String> = backends.iter().map(ToString::to_string).collect();
        want.sort();
        wait_until(&format!("{frontend} -> {want:?}"), timeout, || {
            let view = self.view()?;
            let svc = view.services.iter().find(|s| s.frontend == frontend)?;
            let mut got: Vec<String> = svc.backends.iter().map(|b| b.address.clone()).collect();
            got.sort();
            (got == want).then_some(())
        });
        started.elapsed()
    }
}

impl Default for AgentHome {
    fn default() -> Self {
        Self::new()
    }
}

/// Where an agent runs: its node's namespace, its home and its node's name.
#[derive(Clone, Copy)]
pub struct Site<'a> {
    pub node: &'a Netns,
    pub home: &'a AgentHome,
    pub node_name: &'a str,
}

/// The reference topology with the agent's home; `bed.write(..)`, `bed.pin_dir()`,
/// `bed.view()` and the others are the home's.
pub struct Bed {
    pub topo: Topology,
    pub home: AgentHome,
    _servers: Vec<ServerHandle>,
}

impl std::ops::Deref for Bed {
    type Target = AgentHome;

    fn deref(&self) -> &AgentHome {
        &self.home
    }
}

impl Bed {
    /// The reference topology with TCP (8080) and UDP (5353) who-am-I servers on each backend
    /// (on both of its addresses in a dual-stack topology).
    pub fn new(opts: TopologyOptions) -> Self {
        let topo = Topology::build(opts).expect("building the test bed");
        let mut servers = Vec::new();
        for (i, ns) in topo.backends.iter().enumerate() {
            let addr = topo.backend_addr(i);
            servers.push(tcp_server(ns, SocketAddrV4::new(addr, TCP_PORT)).expect("tcp server"));
            servers.push(udp_server(ns, SocketAddrV4::new(addr, UDP_PORT)).expect("udp server"));
            if topo.ipv6 {
                let addr = topo.backend_addr6(i);
                let tcp = SocketAddrV6::new(addr, TCP_PORT, 0, 0);
                let udp = SocketAddrV6::new(addr, UDP_PORT, 0, 0);
                servers.push(tcp_server(ns, tcp).expect("tcp server"));
                servers.push(udp_server(ns, udp).expect("udp server"));
            }
        }
        Self {
            topo,
            home: AgentHome::new(),
            _servers: servers,
        }
    }

    pub fn backends(&self) -> Vec<Ipv4Addr> {
        (0..self.topo.backends.len())
            .map(|i| self.topo.backend_addr(i))
            .collect()
    }

    /// The backends' IPv6 addresses (a dual-stack bed's).
    pub fn backends6(&self) -> Vec<Ipv6Addr> {
        (0..self.topo.backends.len())
            .map(|i| self.topo.backend_addr6(i))
            .collect()
    }

    /// Empties the node's neighbour tables (both families) on the backends' links, so the
    /// next packets to the backends wait for neighbour resolution: a packet the datapath
    /// redirects must then be sent by the route to the backend when the neighbour answers,
    /// not by the route it had before translation (see `route::reroute` in kproxy-ebpf).
    pub fn forget_backend_neighbours(&self) {
        for i in 0..self.topo.backends.len() {
            let link = self.topo.backend_iface(i);
            for family in ["-4", "-6"] {
                self.topo
                    .node
                    .ip(&[family, "neigh", "flush", "dev", &link])
                    .expect("flushing the node's neighbours");
            }
        }
    }

    /// Routes the VIPs (198.19.0.0/16) from the node through the client's link, standing in
    /// for a default gateway: the node's own processes then reach Services the way a
    /// node without a route of its own to them does.
    pub fn route_vips_from_node(&self) {
        self.topo
            .node
            .ip(&[
                "route",
                "add",
                "198.19.0.0/16",
                "via",
                "198.18.1.2",
                "dev",
                "kc",
            ])
            .expect("VIP route");
    }

    /// TCP segments the node has retransmitted so far (`TcpRetransSegs`, both families):
    /// none when no packet of the node's own connections was lost.
    pub fn node_tcp_retransmissions(&self) -> u64 {
        let out = self
            .topo
            .node
            .command("nstat")
            .args(["-asz", "TcpRetransSegs"])
            .output()
            .expect("running nstat");
        assert!(out.status.success(), "nstat: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("TcpRetransSegs"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("TcpRetransSegs in nstat's output")
    }

    /// The bed's node, named `node`.
    pub fn site(&self) -> Site<'_> {
        Site {
            node: &self.topo.node,
            home: &self.home,
            node_name: "node",
        }
    }
}

pub struct Agent {
    process: Option<LoggedProcess>,
}

/// Where a started agent reads the cluster from.
enum Input<'a> {
    /// The bed's manifests directory.
    Manifests,
    /// The Kubernetes API, through this kubeconfig.
    Api(&'a Path),
}

impl Agent {
    /// Starts `kproxy run` in the node namespace with TC on every node link, plus `extra`
    /// arguments, and waits until its programs are attached.
    pub fn start(bed: &Bed, extra: &[&str]) -> Self {
        let ifaces = bed.topo.node_ifaces().join(",");
        Self::start_with(bed, &["--attach", &ifaces], extra)
    }

    /// Like `start`, without waiting: the agent may be anywhere in its start.
    pub fn spawn_starting(bed: &Bed, extra: &[&str]) -> Self {
        let ifaces = bed.topo.node_ifaces().join(",");
        Self::spawn(
            bed.site(),
            &Input::Manifests,
            &bed.pin_dir(),
            &["--attach", &ifaces],
            extra,
            &[],
        )
    }

    /// Waits until the agent logs a line containing `needle`.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        self.process
            .as_mut()
            .expect("agent running")
            .wait_for(needle, timeout)
            .unwrap_or_else(|e| panic!("kproxy never logged {needle:?}: {e:#}"));
    }

    pub fn start_with(bed: &Bed, attach: &[&str], extra: &[&str]) -> Self {
        Self::start_pinned(bed, &bed.pin_dir(), attach, extra)
    }

    /// Like `start_with`, pinning under `pin_dir` instead of the bed's private bpffs.
    pub fn start_pinned(bed: &Bed, pin_dir: &Path, attach: &[&str], extra: &[&str]) -> Self {
        let mut agent = Self::spawn(bed.site(), &Input::Manifests, pin_dir, attach, extra, &[]);
        agent.wait_ready();
        agent
    }

    /// Starts `kproxy run` at `site` reading its home's manifests, with `args` (`--attach`
    /// and the rest), and waits until it is ready.
    pub fn start_at(site: Site<'_>, args: &[&str]) -> Self {
        let mut agent = Self::spawn(
            site,
            &Input::Manifests,
            &site.home.pin_dir(),
            args,
            &[],
            &[],
        );
        agent.wait_ready();
        agent
    }

    /// Like `start`, with `env` added to the agent's environment.
    pub fn start_env(bed: &Bed, env: &[(&str, &str)], extra: &[&str]) -> Self {
        let ifaces = bed.topo.node_ifaces().join(",");
        let mut agent = Self::spawn(
            bed.site(),
            &Input::Manifests,
            &bed.pin_dir(),
            &["--attach", &ifaces],
            extra,
            env,
        );
        agent.wait_ready();
        agent
    }

    /// Starts `kproxy run` reading the Kubernetes API through `kubeconfig`, TC on every node
    /// link, without waiting for it to be ready (see `wait_ready`).
    pub fn spawn_api(bed: &Bed, kubeconfig: &Path, extra: &[&str]) -> Self {
        let ifaces = bed.topo.node_ifaces().join(",");
        Self::spawn(
            bed.site(),
            &Input::Api(kubeconfig),
            &bed.pin_dir(),
            &["--attach", &ifaces],
            extra,
            &[],
        )
    }

    fn spawn(
        site: Site<'_>,
        input: &Input<'_>,
        pin_dir: &Path,
        attach: &[&str],
        extra: &[&str],
        env_extra: &[(&str, &str)],
    ) -> Self {
        let home = site.home;
        // One log per agent run, so a restarted agent's readiness is its own.
        let runs = std::fs::read_dir(home.dir.path()).map_or(0, |d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("agent-"))
            })
            .count()
        });
        let log = home.dir.path().join(format!("agent-{runs}.log"));
        let mut args: Vec<OsString> = vec!["run".into()];
        match input {
            Input::Manifests => args.extend(["--manifests".into(), home.manifests().into()]),
            Input::Api(kubeconfig) => args.extend(["--kubeconfig".into(), kubeconfig.into()]),
        }
        args.extend(["--node-name", site.node_name, "--pin-dir"].map(OsString::from));
        args.push(pin_dir.into());
        args.extend(attach.iter().chain(extra).map(OsString::from));
        // The caller's variables last, so they win.
        let mut env = vec![("KPROXY_LOG", "info"), ("NO_COLOR", "1")];
        env.extend_from_slice(env_extra);
        let process = LoggedProcess::spawn(site.node, &kproxy_bin(), &args, &env, &log)
            .expect("starting kproxy");
        Self {
            process: Some(process),
        }
    }

    /// Waits until the agent has programmed the datapath and attached its programs.
    pub fn wait_ready(&mut self) {
        self.process
            .as_mut()
            .expect("agent running")
            .wait_for(" ready", Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("kproxy did not become ready: {e:#}"));
    }

    fn process(&self) -> &LoggedProcess {
        self.process.as_ref().expect("agent running")
    }

    pub fn log_text(&self) -> String {
        self.process().log_text()
    }

    /// Whether the agent has exited (its status and log then in the message).
    pub fn exit_message(&mut self) -> Option<String> {
        let process = self.process.as_mut()?;
        process.check_running().err().map(|e| format!("{e:#}"))
    }

    pub fn assert_running(&mut self) {
        if let Some(p) = self.process.as_mut() {
            p.check_running().unwrap_or_else(|e| panic!("{e:#}"));
        }
    }

    /// SIGKILL (`kill -9`), then waits for the exit status.
    pub fn kill(mut self) -> ExitStatus {
        let process = self.process.take().expect("agent running");
        process.kill().unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// SIGTERM, then waits for the exit status.
    pub fn stop(mut self) -> ExitStatus {
        let process = self.process.take().expect("agent running");
        process
            .terminate(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{e:#}"))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(process) = self.process.take()
            && std::thread::panicking()
        {
            eprintln!("--- kproxy log ---\n{}", process.log_text());
        }
    }
}
