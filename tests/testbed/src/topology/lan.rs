//! A real node on a LAN: an external client and two nodes on one switched segment, node1 (where
//! kproxy runs, XDP on its NIC) with local pods, node2 with remote pods, routed like a flat
//! cluster network. For NodePort, load-balancer, external-IP and XDP forwarding tests.
//!
//! ```text
//!                 [lan]  bridge br0, no addresses; ports p-ext, p-node1, p-node2
//!   [ext]    eth0 198.18.9.2/24 ──────┤
//!   [node1]  nic0 198.18.9.1/24 ──────┤   kproxy: XDP on nic0, TC on kpod*
//!   [node2]  nic0 198.18.9.3/24 ──────┘
//!
//!   node1 pods, 198.18.20.0/24: local backends .2 to .99, local clients .100 to .149,
//!                               pods added after the build .150 to .254
//!   node2 pods, 198.18.21.0/24: remote backends .2 to .99, pods added later .150 to .254
//!   [pod]  eth0 198.18.2x.N/32 ──veth── kpodN [node]  198.18.2x.1/32 on every kpod*,
//!          198.18.2x.1 dev eth0 (on-link)            198.18.2x.N/32 dev kpodN
//!          default via 198.18.2x.1
//!   node1: 198.18.21.0/24 via 198.18.9.3      node2: 198.18.20.0/24 via 198.18.9.1
//!   ext:   198.19.0.0/16 via 198.18.9.1       (Service VIPs, LB IPs and external IPs)
//! ```
//!
//! Choices, and why:
//! - Pod links are wired as the CNI `ptp` plugin (and Calico, Cilium) do: a /32 per pod, a host
//!   route per pod on its node, and the node's gateway address on every pod-side veth. A node
//!   then owns one pod CIDR (what `--cluster-cidr` and a Node's podCIDR describe), the other
//!   node's CIDR is one route via its NIC address, and all pod-side interfaces of a node share
//!   the name prefix `kpod` (for `--attach 'kpod*'`). The two pod CIDRs make 198.18.20.0/23.
//! - No default route in ext, the nodes or the switch, so nothing can leave the bed. Pods have
//!   one, via their node, as real pods do; it ends there (net unreachable from the node).
//! - The external client reaches only the LAN and, through node1, 198.19.0.0/16, as behind a
//!   router or load balancer that sends LB and external IPs to node1. Pod addresses are
//!   unreachable from it (the connect fails at once) unless `ext_pod_routes` adds a route to
//!   each node's pod CIDR via that node. Pod traffic to ext is routed, not masqueraded (there
//!   is no CNI SNAT), so ext can answer pods only with those routes.
//! - The switch is a plain L2 bridge: no address, STP and multicast snooping off, IPv6 off in
//!   its namespace so that it sends nothing of its own.
//! - The switch ports of the nodes run an XDP program that passes every frame: XDP_TX on a
//!   veth puts frames on its peer's receive ring, but the kernel (`veth_xdp_flush`, through
//!   6.18 at least) schedules the peer to read that ring only when the peer has an XDP program
//!   of its own; GRO gives the peer a ring but nothing wakes it. With the pass-through, what
//!   XDP on a node's NIC sends back with XDP_TX goes out onto the LAN. (A side effect the
//!   kernel adds: the NIC loses software GSO, so the node's stack sends MTU-sized segments.)
//! - XDP on a veth sees the partial checksums a transmitter with checksum offload leaves.
//!   `lan_tx_checksum_offload: false` turns offload off on every LAN transmitter towards a
//!   node's NIC (ext's eth0, node2's NIC, and the switch ports, which complete checksums of the
//!   frames they forward), so XDP on node1's NIC sees complete checksums, as from a real NIC.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::RangeInclusive;
use std::os::fd::OwnedFd;
use std::sync::Mutex;

use anyhow::{Context, Result, ensure};

use super::{BED_SYSCTLS, CLIENT_SYSCTLS, LEAF_IFACE, ROUTER_SYSCTLS, Topology, new_prefix};
use crate::bpfsys;
use crate::netns::Netns;
use crate::servers::{ServerHandle, tcp_server, udp_server};

/// Each node's interface on the LAN.
pub const NIC_IFACE: &str = "nic0";
/// The start of the name of every pod-side interface of a node: `kpod<N>` for the pod `.N`.
pub const POD_IFACE_PREFIX: &str = "kpod";
/// The switch in the `lan` namespace.
pub const BRIDGE: &str = "br0";
/// Both nodes' pod CIDRs.
pub const CLUSTER_CIDR: &str = "198.18.20.0/23";
/// Service VIPs, LB IPs and external IPs: ext sends them to node1.
pub const VIP_CIDR: &str = "198.19.0.0/16";
/// Third octet of the LAN: 198.18.9.0/24.
const LAN_SUBNET: u8 = 9;
/// The external client's host number on the LAN.
const EXT_HOST: u8 = 2;
/// Host numbers in a pod CIDR by role.
const BACKEND_HOSTS: RangeInclusive<u8> = 2..=99;
const CLIENT_HOSTS: RangeInclusive<u8> = 100..=149;
const LATE_HOSTS: RangeInclusive<u8> = 150..=254;
/// Backends per node (local or remote).
pub const MAX_NODE_BACKENDS: usize = 98;
/// Client pods on node1.
pub const MAX_LOCAL_CLIENTS: usize = 50;

/// One of the two nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LanNode {
    /// Where kproxy runs; its pods are the local ones.
    Node1,
    /// Holds the remote pods.
    Node2,
}

impl LanNode {
    pub const ALL: [LanNode; 2] = [LanNode::Node1, LanNode::Node2];

    /// Its name, as a Kubernetes Node (and the end of its namespace's name).
    pub fn name(self) -> &'static str {
        match self {
            LanNode::Node1 => "node1",
            LanNode::Node2 => "node2",
        }
    }

    /// Its NIC's address on the LAN: 198.18.9.1 for node1, 198.18.9.3 for node2.
    pub fn nic_addr(self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, LAN_SUBNET, self.lan_host())
    }

    /// Its pod CIDR: 198.18.20.0/24 for node1, 198.18.21.0/24 for node2.
    pub fn pod_cidr(self) -> &'static str {
        match self {
            LanNode::Node1 => "198.18.20.0/24",
            LanNode::Node2 => "198.18.21.0/24",
        }
    }

    /// The address it has on every pod-side interface, its pods' gateway: 198.18.2x.1.
    pub fn pod_gateway(self) -> Ipv4Addr {
        self.pod_addr(1)
    }

    /// Its port on the switch (in the `lan` namespace), the peer of its NIC, with the
    /// pass-through XDP program that lets XDP_TX on the NIC work.
    pub fn switch_port(self) -> &'static str {
        match self {
            LanNode::Node1 => "p-node1",
            LanNode::Node2 => "p-node2",
        }
    }

    /// The other node.
    pub fn other(self) -> LanNode {
        match self {
            LanNode::Node1 => LanNode::Node2,
            LanNode::Node2 => LanNode::Node1,
        }
    }

    fn lan_host(self) -> u8 {
        match self {
            LanNode::Node1 => 1,
            LanNode::Node2 => 3,
        }
    }

    fn pod_addr(self, host: u8) -> Ipv4Addr {
        let subnet = match self {
            LanNode::Node1 => 20,
            LanNode::Node2 => 21,
        };
        Ipv4Addr::new(198, 18, subnet, host)
    }

    fn index(self) -> usize {
        match self {
            LanNode::Node1 => 0,
            LanNode::Node2 => 1,
        }
    }
}

/// A pod: a namespace whose `eth0` is linked to a node's `kpod<N>`. Dropping it deletes the
/// namespace's name; the kernel then removes both ends of its link and the node's route to it,
/// shortly after nothing holds the namespace any more (stop its servers first).
#[derive(Debug)]
pub struct Pod {
    pub ns: Netns,
    node: LanNode,
    /// The last octet of its address.
    host: u8,
}

impl Pod {
    /// Creates the namespace (not yet linked to its node).
    fn create(prefix: &str, node: LanNode, tag: &str, host: u8) -> Result<Pod> {
        let short = match node {
            LanNode::Node1 => "n1",
            LanNode::Node2 => "n2",
        };
        let ns = Netns::create(&format!("{prefix}-{short}-{tag}"))?;
        ns.sysctls(BED_SYSCTLS)?;
        // Any pod may play a client (one created while the agent runs, say).
        ns.sysctls(CLIENT_SYSCTLS)?;
        Ok(Pod { ns, node, host })
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.node.pod_addr(self.host)
    }

    /// The node it runs on.
    pub fn node(&self) -> LanNode {
        self.node
    }

    /// The node-side interface of its link: `kpod<N>` for the pod at `.N`.
    pub fn node_iface(&self) -> String {
        format!("{POD_IFACE_PREFIX}{}", self.host)
    }

    /// Starts the TCP and UDP who-am-I servers on its address, ports `tcp` and `udp`.
    pub fn serve(&self, tcp: u16, udp: u16) -> Result<Vec<ServerHandle>> {
        Ok(vec![
            tcp_server(&self.ns, SocketAddrV4::new(self.addr(), tcp))?,
            udp_server(&self.ns, SocketAddrV4::new(self.addr(), udp))?,
        ])
    }
}

/// What to build.
#[derive(Debug, Clone, Copy)]
pub struct LanOptions {
    /// Backend pods on node1 (at most [`MAX_NODE_BACKENDS`]).
    pub local_backends: usize,
    /// Backend pods on node2 (at most [`MAX_NODE_BACKENDS`]).
    pub remote_backends: usize,
    /// Client pods on node1 (at most [`MAX_LOCAL_CLIENTS`]).
    pub local_clients: usize,
    /// Whether LAN transmitters towards a node's NIC (ext, node2's NIC, the switch ports) may
    /// send partial checksums. XDP on node1's NIC sees them as they are, so XDP tests turn
    /// this off.
    pub lan_tx_checksum_offload: bool,
    /// Whether ext has routes to the pod CIDRs (each via its node); without them a pod
    /// address is unreachable from ext.
    pub ext_pod_routes: bool,
}

impl Default for LanOptions {
    fn default() -> Self {
        LanOptions {
            local_backends: 2,
            remote_backends: 2,
            local_clients: 1,
            lan_tx_checksum_offload: true,
            ext_pod_routes: false,
        }
    }
}

/// A built LAN topology; dropping it deletes its namespaces (pods added with
/// [`LanTopology::add_pod`] are owned by the caller and go with their [`Pod`]).
///
/// Fields drop in order: pods first, the switch last.
#[derive(Debug)]
pub struct LanTopology {
    /// `kpt-<pid>-<seq>`, the start of all namespace names of this topology.
    pub prefix: String,
    pub local_backends: Vec<Pod>,
    pub local_clients: Vec<Pod>,
    pub remote_backends: Vec<Pod>,
    /// The external client.
    pub ext: Netns,
    pub node1: Netns,
    pub node2: Netns,
    /// BPF links of the pass-through XDP programs on the nodes' switch ports, held for their
    /// drop: closing them detaches the programs.
    switch_xdp: Vec<OwnedFd>,
    /// The switch.
    pub lan: Netns,
    /// The host number the next pod added to each node gets.
    next_late: Mutex<[u8; 2]>,
}

impl LanTopology {
    /// Sweeps leftovers of dead runs, then builds the namespaces, the switch, links, addresses
    /// and routes.
    pub fn build(opts: LanOptions) -> Result<LanTopology> {
        ensure!(
            opts.local_backends <= MAX_NODE_BACKENDS && opts.remote_backends <= MAX_NODE_BACKENDS,
            "at most {MAX_NODE_BACKENDS} backends per node, not {} and {}",
            opts.local_backends,
            opts.remote_backends
        );
        ensure!(
            opts.local_clients <= MAX_LOCAL_CLIENTS,
            "at most {MAX_LOCAL_CLIENTS} local clients, not {}",
            opts.local_clients
        );
        Topology::sweep_leftovers();
        let prefix = new_prefix();
        // Each namespace is owned as soon as it exists, so a failure part way deletes them all.
        let lan = Netns::create(&format!("{prefix}-lan"))?;
        let node1 = Netns::create(&format!("{prefix}-node1"))?;
        let node2 = Netns::create(&format!("{prefix}-node2"))?;
        let ext = Netns::create(&format!("{prefix}-ext"))?;
        let pods = |node: LanNode, role: &str, hosts: RangeInclusive<u8>, n: usize| {
            hosts
                .take(n)
                .enumerate()
                .map(|(i, host)| Pod::create(&prefix, node, &format!("{role}{i}"), host))
                .collect::<Result<Vec<_>>>()
        };
        let local_backends = pods(LanNode::Node1, "b", BACKEND_HOSTS, opts.local_backends)?;
        let local_clients = pods(LanNode::Node1, "c", CLIENT_HOSTS, opts.local_clients)?;
        let remote_backends = pods(LanNode::Node2, "b", BACKEND_HOSTS, opts.remote_backends)?;
        let mut topo = LanTopology {
            prefix,
            local_backends,
            local_clients,
            remote_backends,
            ext,
            node1,
            node2,
            switch_xdp: Vec::new(),
            lan,
            next_late: Mutex::new([*LATE_HOSTS.start(); 2]),
        };
        topo.switch_xdp = topo.configure(&opts)?;
        Ok(topo)
    }

    /// Configures everything; returns the links of the switch ports' XDP programs.
    fn configure(&self, opts: &LanOptions) -> Result<Vec<OwnedFd>> {
        // Sysctls first: `default` values apply to the interfaces created afterwards.
        for ns in [&self.node1, &self.node2, &self.ext] {
            ns.sysctls(BED_SYSCTLS)?;
        }
        for node in LanNode::ALL {
            self.node(node).sysctls(ROUTER_SYSCTLS)?;
        }
        self.ext.sysctls(CLIENT_SYSCTLS)?;
        if std::path::Path::new("/proc/sys/net/ipv6").exists() {
            self.lan.sysctls(&[
                ("net.ipv6.conf.all.disable_ipv6", "1"),
                ("net.ipv6.conf.default.disable_ipv6", "1"),
            ])?;
        }

        // The switch and its ports, created in the lan namespace with their peers going
        // straight into the others: no link ever exists in the root namespace.
        let ports = [
            ("p-ext", &self.ext, LEAF_IFACE),
            (LanNode::Node1.switch_port(), &self.node1, NIC_IFACE),
            (LanNode::Node2.switch_port(), &self.node2, NIC_IFACE),
        ];
        let mut switch = vec![
            format!("link add {BRIDGE} type bridge stp_state 0 mcast_snooping 0"),
            format!("link set {BRIDGE} up"),
        ];
        for (port, ns, iface) in ports {
            switch.extend([
                format!(
                    "link add {port} type veth peer name {iface} netns {}",
                    ns.name()
                ),
                format!("link set {port} master {BRIDGE}"),
                format!("link set {port} up"),
            ]);
        }
        self.lan.ip_batch(&switch)?;
        if !opts.lan_tx_checksum_offload {
            for (port, _, _) in ports {
                self.lan.set_tx_checksum(port, false)?;
            }
        }
        let pass = bpfsys::load_xdp_pass().context("loading the switch ports' XDP program")?;
        let mut switch_xdp = Vec::new();
        for node in LanNode::ALL {
            let port = node.switch_port();
            let index = self.lan.link_index(port)?;
            let prog = pass.try_clone()?;
            let link = self
                .lan
                .run(move || bpfsys::attach_xdp(&prog, index))?
                .with_context(|| format!("attaching XDP to the switch port {port}"))?;
            switch_xdp.push(link);
        }

        let lan_addr = |host| Ipv4Addr::new(198, 18, LAN_SUBNET, host);
        let mut ext = vec![
            format!("addr add {}/24 dev {LEAF_IFACE}", lan_addr(EXT_HOST)),
            format!("link set {LEAF_IFACE} up"),
            format!("route add {VIP_CIDR} via {}", LanNode::Node1.nic_addr()),
        ];
        if opts.ext_pod_routes {
            for node in LanNode::ALL {
                ext.push(format!(
                    "route add {} via {}",
                    node.pod_cidr(),
                    node.nic_addr()
                ));
            }
        }
        self.ext.ip_batch(&ext)?;
        for node in LanNode::ALL {
            // No default route: traffic to an address nobody has dies in the node, answered
            // with ICMP net unreachable.
            self.node(node).ip_batch(&[
                format!("addr add {}/24 dev {NIC_IFACE}", node.nic_addr()),
                format!("link set {NIC_IFACE} up"),
                format!(
                    "route add {} via {}",
                    node.other().pod_cidr(),
                    node.other().nic_addr()
                ),
            ])?;
        }
        if !opts.lan_tx_checksum_offload {
            self.ext.set_tx_checksum(LEAF_IFACE, false)?;
            self.node2.set_tx_checksum(NIC_IFACE, false)?;
        }

        for pod in self.pods() {
            self.add_pod_link(pod)?;
        }
        Ok(switch_xdp)
    }

    /// Adds a pod to `node` after the build (say, a client that appears while the agent runs),
    /// linked and routed like the others, at the next free address from `.150` on.
    pub fn add_pod(&self, node: LanNode) -> Result<Pod> {
        let host = {
            let mut next = self
                .next_late
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let host = next[node.index()];
            ensure!(
                LATE_HOSTS.contains(&host),
                "no addresses left for new pods on {}",
                node.name()
            );
            next[node.index()] += 1;
            host
        };
        let pod = Pod::create(&self.prefix, node, &format!("p{host}"), host)?;
        self.add_pod_link(&pod)?;
        Ok(pod)
    }

    /// Deletes the link of `pod` (both ends, and the node's route to it); the pod's
    /// namespace stays. [`LanTopology::add_pod_link`] makes it again.
    pub fn remove_pod_link(&self, pod: &Pod) -> Result<()> {
        self.node(pod.node)
            .ip(&["link", "del", pod.node_iface().as_str()])
    }

    /// Creates the link of `pod` to its node (veth `kpod<N>` to the pod's `eth0`), its
    /// addresses and its routes: at build time, for added pods, or after
    /// [`LanTopology::remove_pod_link`].
    pub fn add_pod_link(&self, pod: &Pod) -> Result<()> {
        let iface = pod.node_iface();
        let gateway = pod.node.pod_gateway();
        let addr = pod.addr();
        self.node(pod.node).ip_batch(&[
            format!(
                "link add {iface} type veth peer name {LEAF_IFACE} netns {}",
                pod.ns.name()
            ),
            format!("addr add {gateway}/32 dev {iface}"),
            format!("link set {iface} up"),
            format!("route add {addr}/32 dev {iface}"),
        ])?;
        pod.ns.ip_batch(&[
            format!("addr add {addr}/32 dev {LEAF_IFACE}"),
            format!("link set {LEAF_IFACE} up"),
            format!("route add {gateway} dev {LEAF_IFACE} scope link"),
            format!("route add default via {gateway} dev {LEAF_IFACE}"),
        ])
    }

    /// The namespace of `node`.
    pub fn node(&self, node: LanNode) -> &Netns {
        match node {
            LanNode::Node1 => &self.node1,
            LanNode::Node2 => &self.node2,
        }
    }

    /// The external client's address on the LAN: 198.18.9.2.
    pub fn ext_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, LAN_SUBNET, EXT_HOST)
    }

    /// Each node's interface on the LAN (for node1, what kproxy's `--xdp` names).
    pub fn nic_iface(&self) -> &'static str {
        NIC_IFACE
    }

    /// The start of the name every pod-side interface of a node has (`--attach 'kpod*'`).
    pub fn pod_iface_prefix(&self) -> &'static str {
        POD_IFACE_PREFIX
    }

    /// Node1's pod-side interfaces of the pods built with the topology: local backends, then
    /// local clients.
    pub fn node1_pod_ifaces(&self) -> Vec<String> {
        self.local_backends
            .iter()
            .chain(&self.local_clients)
            .map(Pod::node_iface)
            .collect()
    }

    /// Both nodes' pod CIDRs in one: 198.18.20.0/23 (for `--cluster-cidr`).
    pub fn cluster_cidr(&self) -> &'static str {
        CLUSTER_CIDR
    }

    pub fn local_backend_addrs(&self) -> Vec<Ipv4Addr> {
        self.local_backends.iter().map(Pod::addr).collect()
    }

    pub fn remote_backend_addrs(&self) -> Vec<Ipv4Addr> {
        self.remote_backends.iter().map(Pod::addr).collect()
    }

    /// Every backend pod: local ones, then remote ones.
    pub fn backends(&self) -> impl Iterator<Item = &Pod> {
        self.local_backends.iter().chain(&self.remote_backends)
    }

    /// Starts the TCP and UDP who-am-I servers on every backend pod (ports `tcp`, `udp`).
    pub fn serve_backends(&self, tcp: u16, udp: u16) -> Result<Vec<ServerHandle>> {
        let mut servers = Vec::new();
        for pod in self.backends() {
            servers.extend(pod.serve(tcp, udp)?);
        }
        Ok(servers)
    }

    /// Every pod built with the topology (not those added later).
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.local_backends
            .iter()
            .chain(&self.local_clients)
            .chain(&self.remote_backends)
    }

    /// Every namespace of the topology (not those of pods added later), node1 first.
    pub fn all(&self) -> impl Iterator<Item = &Netns> {
        [&self.node1, &self.node2, &self.ext, &self.lan]
            .into_iter()
            .chain(self.pods().map(|pod| &pod.ns))
    }
}

#[cfg(test)]
mod tests;
