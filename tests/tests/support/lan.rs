//! The LAN bed: `LanTopology` (ext, node1, node2, pods on both) with the agent's home, the
//! who-am-I servers on every backend pod, and the agent on node1 as a node of a cluster runs
//! it: XDP on its NIC, TC on its pods' links (`kpod*`, followed as pods come and go), the
//! cluster's pod CIDR for local-traffic detection.

use std::{collections::BTreeMap, net::SocketAddrV4, ops::Deref, time::Duration};

use kproxy::cmd::services::render;
use kproxy_testbed::{LanOptions, LanTopology, Netns, ServerHandle};

use super::agent::{Agent, AgentHome, Site, TCP_PORT, UDP_PORT};

/// The node kproxy runs on, as `--node-name` and the endpoints' `nodeName` say.
pub const NODE1: &str = "node1";
/// The other node, whose pods are remote endpoints.
pub const NODE2: &str = "node2";

pub struct LanBed {
    pub topo: LanTopology,
    pub home: AgentHome,
    _servers: Vec<ServerHandle>,
}

impl Deref for LanBed {
    type Target = AgentHome;

    fn deref(&self) -> &AgentHome {
        &self.home
    }
}

impl LanBed {
    /// The LAN topology with TCP (8080) and UDP (5353) who-am-I servers on every backend pod.
    pub fn new(opts: LanOptions) -> Self {
        let topo = LanTopology::build(opts).expect("building the LAN test bed");
        let servers = topo
            .serve_backends(TCP_PORT, UDP_PORT)
            .expect("who-am-I servers on the backends");
        Self {
            topo,
            home: AgentHome::new(),
            _servers: servers,
        }
    }

    /// Node1, where the agent runs.
    pub fn site(&self) -> Site<'_> {
        Site {
            node: &self.topo.node1,
            home: &self.home,
            node_name: NODE1,
        }
    }

    pub fn node1(&self) -> &Netns {
        &self.topo.node1
    }

    /// Starts `kproxy run` on node1 with XDP on its NIC, TC on every pod link (`kpod*`) and
    /// the cluster CIDR, plus `extra`; waits until it is ready.
    pub fn start_agent(&self, extra: &[&str]) -> Agent {
        let pods = format!("{}*", self.topo.pod_iface_prefix());
        let mut args = vec![
            "--xdp",
            self.topo.nic_iface(),
            "--attach",
            &pods,
            "--cluster-cidr",
            self.topo.cluster_cidr(),
        ];
        args.extend_from_slice(extra);
        Agent::start_at(self.site(), &args)
    }

    /// The datapath's global counters by name.
    pub fn counters(&self) -> BTreeMap<&'static str, u64> {
        self.view().expect("reading the pinned maps").counters
    }

    /// What `kproxy services` prints: frontends, backends and counters.
    pub fn services(&self) -> String {
        self.view()
            .map_or_else(|| "(no datapath)".to_owned(), |view| render(&view))
    }

    /// Waits until the datapath serves `frontend` (`VIP:port/PROTO`) with exactly `backends`.
    pub fn wait_for(&self, frontend: &str, backends: &[SocketAddrV4]) {
        self.wait_for_backends(frontend, backends, Duration::from_secs(5));
    }
}
