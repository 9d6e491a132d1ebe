//! The reference topology of TESTBED.md: a node namespace routing between a client, N backends
//! and optionally an external host, each on its own veth link, all inside namespaces.
//!
//! ```text
//!   [client ns]  198.18.1.2 ──veth── 198.18.1.1 kc  ┐
//!   [backend1]   198.18.2.2 ──veth── 198.18.2.1 kb1 ├─ [node ns]  ip_forward=1
//!   [backend2]   198.18.3.2 ──veth── 198.18.3.1 kb2 │
//!   [external]   198.18.9.2 ──veth── 198.18.9.1 kx  ┘  (optional)
//!   Service VIPs: 198.19.0.0/16, never assigned to an interface.
//! ```
//!
//! With `ipv6`, every link is dual-stack: 2001:db8:<subnet>::1 on the node's side and ::2 on
//! the leaf's (/64 each, the subnet as the third group, in hex: `2001:db8:1::2` for the
//! client), and IPv6 Service VIPs come from 2001:db8:ffff::/64 ([`vip6`]).
//!
//! Pod clients can be added to a built topology while an agent runs, each on a link of its
//! own whose node side is called `kpc<n>` ([`Topology::add_pod_client`]): interfaces that
//! appear, vanish and come back, as pods' veths do.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Result, ensure};

use crate::netns::{self, Netns};

/// The start of every namespace name of the bed, followed by `<pid>-`.
pub(crate) const PREFIX: &str = "kpt-";
/// The leaf side of every link is called this inside its namespace.
pub const LEAF_IFACE: &str = "eth0";
/// Third octet of the subnets of the client and external links; backends take the others.
const CLIENT_SUBNET: u8 = 1;
const EXTERNAL_SUBNET: u8 = 9;
/// Backends use 198.18.2.0/24 upwards, skipping the external subnet, up to 198.18.254.0/24.
pub const MAX_BACKENDS: usize = 252;
/// The node-side interface of pod client `n` is `kpc<n>`: a pattern `kpc*` selects them all
/// and nothing else of the bed.
pub const POD_CLIENT_IFACE_PREFIX: &str = "kpc";
/// Pod client `n` lives on 198.18.(200 + n).0/24, above the subnets of all but the largest
/// beds (see [`Topology::add_pod_client`]).
const POD_CLIENT_SUBNETS: u8 = 200;
/// How long a new link of a pod client may take to become operational.
const LINK_UP_TIMEOUT: Duration = Duration::from_secs(2);
/// At most this many pod clients (`n` from 1).
pub const MAX_POD_CLIENTS: u8 = 50;

/// Distinguishes the topologies of one process (tests build them on parallel threads).
static SEQ: AtomicU32 = AtomicU32::new(0);

/// Sysctls of every namespace with addresses.
pub(crate) const BED_SYSCTLS: &[(&str, &str)] = &[
    // Strict reverse-path filtering (inherited from the root namespace) would drop some of the
    // rewritten flows under test; the bed routes everything anyway.
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.default.rp_filter", "0"),
    // ICMP errors are part of what tests observe (port and net unreachable); rate limiting
    // them would turn quick failures into timeouts under load.
    ("net.ipv4.icmp_ratemask", "0"),
    // High connection rates reuse TIME_WAIT ports.
    ("net.ipv4.tcp_tw_reuse", "1"),
];

/// Sysctls of a namespace that routes between others (a node).
pub(crate) const ROUTER_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.ip_forward", "1"),
    // A hairpinned flow must not teach leaves a shortcut around the node.
    ("net.ipv4.conf.all.send_redirects", "0"),
    ("net.ipv4.conf.default.send_redirects", "0"),
];

/// Sysctls of every namespace of a dual-stack topology: addresses usable at once (no
/// duplicate address detection: the bed's addresses are unique by construction).
const IPV6_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
];

/// And of its node.
const IPV6_ROUTER_SYSCTLS: &[(&str, &str)] = &[("net.ipv6.conf.all.forwarding", "1")];

/// Sysctls of a namespace that opens many connections (a client).
pub(crate) const CLIENT_SYSCTLS: &[(&str, &str)] =
    &[("net.ipv4.ip_local_port_range", "1024 65535")];

/// A fresh `kpt-<pid>-<seq>`, the start of all namespace names of one topology.
pub(crate) fn new_prefix() -> String {
    format!(
        "{PREFIX}{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// What to build.
#[derive(Debug, Clone, Copy)]
pub struct TopologyOptions {
    /// Number of backend namespaces (at most [`MAX_BACKENDS`]).
    pub backends: usize,
    /// Whether to add the external namespace on 198.18.9.0/24 (the node's "NIC" link).
    pub external: bool,
    /// Whether the client's veth may send packets with partial checksums. XDP programs on the
    /// node see such packets as they are, so XDP tests turn this off to get complete ones.
    pub client_tx_checksum_offload: bool,
    /// Whether every link is dual-stack (see the module comment).
    pub ipv6: bool,
}

impl Default for TopologyOptions {
    fn default() -> Self {
        TopologyOptions {
            backends: 3,
            external: false,
            client_tx_checksum_offload: true,
            ipv6: false,
        }
    }
}

/// A built topology; dropping it deletes every namespace (and with them the links).
///
/// Fields drop in order: leaves first, the node last.
#[derive(Debug)]
pub struct Topology {
    /// `kpt-<pid>-<seq>`, the start of all namespace names of this topology.
    pub prefix: String,
    pub client: Netns,
    pub backends: Vec<Netns>,
    pub external: Option<Netns>,
    pub node: Netns,
    /// Whether the links are dual-stack.
    pub ipv6: bool,
}

impl Topology {
    /// Sweeps leftovers of dead runs, then builds the namespaces, links, addresses and routes.
    pub fn build(opts: TopologyOptions) -> Result<Topology> {
        ensure!(
            (1..=MAX_BACKENDS).contains(&opts.backends),
            "between 1 and {MAX_BACKENDS} backends, not {}",
            opts.backends
        );
        Topology::sweep_leftovers();
        let prefix = new_prefix();
        // Each namespace is owned as soon as it exists, so a failure part way deletes them all.
        let node = Netns::create(&format!("{prefix}-node"))?;
        let client = Netns::create(&format!("{prefix}-client"))?;
        let backends = (1..=opts.backends)
            .map(|i| Netns::create(&format!("{prefix}-b{i}")))
            .collect::<Result<Vec<_>>>()?;
        let external = if opts.external {
            Some(Netns::create(&format!("{prefix}-ext"))?)
        } else {
            None
        };
        let topo = Topology {
            prefix,
            client,
            backends,
            external,
            node,
            ipv6: opts.ipv6,
        };
        topo.configure(&opts)?;
        Ok(topo)
    }

    fn configure(&self, opts: &TopologyOptions) -> Result<()> {
        // Sysctls first: `default` values apply to the interfaces created afterwards.
        for ns in self.all() {
            ns.sysctls(BED_SYSCTLS)?;
        }
        self.node.sysctls(ROUTER_SYSCTLS)?;
        self.client.sysctls(CLIENT_SYSCTLS)?;
        if self.ipv6 {
            for ns in self.all() {
                ns.sysctls(IPV6_SYSCTLS)?;
            }
            self.node.sysctls(IPV6_ROUTER_SYSCTLS)?;
        }

        // Links are created from the node, the leaf end going straight into its namespace: no
        // link ever exists in the root namespace, not even for a moment.
        let mut node_script = Vec::new();
        for link in self.links() {
            node_script.extend(link.node_side());
        }
        // No default route in the node: traffic to an address nobody has dies here, answered
        // with ICMP net unreachable, instead of leaving the bed.
        self.node.ip_batch(&node_script)?;

        for link in self.links() {
            link.leaf.ip_batch(&link.leaf_side())?;
        }

        if !opts.client_tx_checksum_offload {
            self.client.set_tx_checksum(LEAF_IFACE, false)?;
        }
        Ok(())
    }

    /// Deletes every namespace named `kpt-<pid>-...` whose process is gone.
    pub fn sweep_leftovers() {
        let Ok(names) = netns::list_names() else {
            return;
        };
        for name in names {
            let Some(pid) = owner_pid(&name) else {
                continue;
            };
            if pid != std::process::id()
                && !crate::pid_alive(pid)
                && let Err(e) = netns::delete_by_name(&name)
            {
                eprintln!("test bed: could not delete leftover netns {name}: {e:#}");
            }
        }
    }

    pub fn client_addr(&self) -> Ipv4Addr {
        leaf_addr(CLIENT_SUBNET)
    }

    /// The client's IPv6 address (a dual-stack topology's).
    pub fn client_addr6(&self) -> Ipv6Addr {
        leaf_addr6(CLIENT_SUBNET)
    }

    /// The IPv6 address of backend `i` (0-based; a dual-stack topology's).
    pub fn backend_addr6(&self, i: usize) -> Ipv6Addr {
        leaf_addr6(self.backend_subnet(i))
    }

    /// The IPv6 subnet of backend `i`'s link, as `ip` takes it.
    pub fn backend_subnet6(&self, i: usize) -> String {
        let subnet = self.backend_subnet(i);
        format!("2001:db8:{subnet:x}::/64")
    }

    /// The node's address on the client link, the client's default gateway.
    pub fn client_gateway(&self) -> Ipv4Addr {
        node_addr(CLIENT_SUBNET)
    }

    /// The node-side interface of the client link.
    pub fn client_iface(&self) -> &'static str {
        "kc"
    }

    /// The address of backend `i` (0-based).
    pub fn backend_addr(&self, i: usize) -> Ipv4Addr {
        leaf_addr(self.backend_subnet(i))
    }

    /// The node's address on the link of backend `i` (0-based).
    pub fn backend_gateway(&self, i: usize) -> Ipv4Addr {
        node_addr(self.backend_subnet(i))
    }

    /// The node-side interface of backend `i` (0-based): `kb1` for backend 0.
    pub fn backend_iface(&self, i: usize) -> String {
        assert!(i < self.backends.len(), "no backend {i}");
        format!("kb{}", i + 1)
    }

    /// The address of the external host (whether or not it was built).
    pub fn external_addr(&self) -> Ipv4Addr {
        leaf_addr(EXTERNAL_SUBNET)
    }

    /// The node's address on the external link: it plays the node's NIC address.
    pub fn node_external_addr(&self) -> Ipv4Addr {
        node_addr(EXTERNAL_SUBNET)
    }

    /// The node-side interface of the external link.
    pub fn external_iface(&self) -> &'static str {
        "kx"
    }

    /// The external namespace; panics when the topology was built without one.
    pub fn external(&self) -> &Netns {
        self.external
            .as_ref()
            .expect("topology built without `external: true`")
    }

    /// Adds pod client `n` (1 to [`MAX_POD_CLIENTS`]): a namespace `<prefix>-pc<n>` linked to
    /// the node through `kpc<n>`, set up like the client (sysctls, address, default route
    /// through the node). Its subnet must not be a backend's: beds with more than 197
    /// backends have none to spare.
    pub fn add_pod_client(&self, n: u8) -> Result<PodClient> {
        ensure!(
            (1..=MAX_POD_CLIENTS).contains(&n),
            "pod clients are numbered 1 to {MAX_POD_CLIENTS}, not {n}"
        );
        let subnet = POD_CLIENT_SUBNETS + n;
        ensure!(
            (0..self.backends.len()).all(|i| backend_subnet(i) != subnet),
            "198.18.{subnet}.0/24 of pod client {n} belongs to a backend"
        );
        let ns = Netns::create(&format!("{}-pc{n}", self.prefix))?;
        ns.sysctls(BED_SYSCTLS)?;
        ns.sysctls(&[("net.ipv4.ip_local_port_range", "1024 65535")])?;
        let client = PodClient {
            ns,
            node_iface: format!("{POD_CLIENT_IFACE_PREFIX}{n}"),
            subnet,
        };
        client.create_link(&self.node)?;
        Ok(client)
    }

    /// All node-side interfaces: `kc`, `kb1`..`kbN`, then `kx` when there is an external link.
    pub fn node_ifaces(&self) -> Vec<String> {
        self.links().map(|link| link.node_iface).collect()
    }

    /// Every namespace of the topology, the node first.
    pub fn all(&self) -> impl Iterator<Item = &Netns> {
        std::iter::once(&self.node)
            .chain(std::iter::once(&self.client))
            .chain(&self.backends)
            .chain(&self.external)
    }

    fn backend_subnet(&self, i: usize) -> u8 {
        assert!(i < self.backends.len(), "no backend {i}");
        backend_subnet(i)
    }

    fn links(&self) -> impl Iterator<Item = Link<'_>> {
        let client = Link::new(&self.client, self.client_iface().into(), CLIENT_SUBNET);
        let backends = self
            .backends
            .iter()
            .enumerate()
            .map(|(i, ns)| Link::new(ns, self.backend_iface(i), backend_subnet(i)));
        let external = self
            .external
            .iter()
            .map(|ns| Link::new(ns, self.external_iface().into(), EXTERNAL_SUBNET));
        let ipv6 = self.ipv6;
        std::iter::once(client)
            .chain(backends)
            .chain(external)
            .map(move |link| Link { ipv6, ..link })
    }
}

/// A client namespace added to a built topology, as a pod that starts while the agent runs:
///
/// ```text
///   [<prefix>-pc<n>]  198.18.(200+n).2 eth0 ──veth── 198.18.(200+n).1 kpc<n>  [node ns]
/// ```
///
/// Dropping it deletes its namespace, and with it both ends of the veth.
#[derive(Debug)]
pub struct PodClient {
    pub ns: Netns,
    /// The node-side interface, `kpc<n>`.
    pub node_iface: String,
    subnet: u8,
}

impl PodClient {
    /// The client's address.
    pub fn addr(&self) -> Ipv4Addr {
        leaf_addr(self.subnet)
    }

    /// Deletes the veth (from the node's side; the client's end goes with it) and creates it
    /// again with the same names, addresses and routes, as when a pod's sandbox is recreated:
    /// the node's interface keeps its name and gets a new index.
    pub fn recreate_link(&self, node: &Netns) -> Result<()> {
        node.ip(&["link", "del", &self.node_iface])?;
        self.create_link(node)
    }

    fn create_link(&self, node: &Netns) -> Result<()> {
        let link = Link::new(&self.ns, self.node_iface.clone(), self.subnet);
        node.ip_batch(&link.node_side())?;
        self.ns.ip_batch(&link.leaf_side())?;
        // As a pod starts only once its network is set up, wait until the link carries
        // packets (see `wait_link_operational`).
        node.wait_link_operational(&self.node_iface, LINK_UP_TIMEOUT)?;
        self.ns.wait_link_operational(LEAF_IFACE, LINK_UP_TIMEOUT)
    }
}

/// One veth link between the node and a leaf namespace.
struct Link<'a> {
    leaf: &'a Netns,
    node_iface: String,
    subnet: u8,
    node_addr: Ipv4Addr,
    leaf_addr: Ipv4Addr,
    /// Whether the link is dual-stack.
    ipv6: bool,
}

impl<'a> Link<'a> {
    /// `ip` commands (run in the node) that create the link, its leaf end going straight into
    /// the leaf's namespace, and address the node's end.
    fn node_side(&self) -> Vec<String> {
        let mut script = vec![
            format!(
                "link add {} type veth peer name {LEAF_IFACE} netns {}",
                self.node_iface,
                self.leaf.name()
            ),
            format!("addr add {}/24 dev {}", self.node_addr, self.node_iface),
        ];
        if self.ipv6 {
            script.push(format!(
                "addr add {}/64 dev {} nodad",
                node_addr6(self.subnet),
                self.node_iface
            ));
        }
        script.push(format!("link set {} up", self.node_iface));
        script
    }

    /// `ip` commands (run in the leaf) that address its end and route through the node.
    fn leaf_side(&self) -> Vec<String> {
        let mut script = vec![
            format!("addr add {}/24 dev {LEAF_IFACE}", self.leaf_addr),
            format!("link set {LEAF_IFACE} up"),
            format!("route add default via {}", self.node_addr),
        ];
        if self.ipv6 {
            script.splice(
                1..1,
                [format!(
                    "addr add {}/64 dev {LEAF_IFACE} nodad",
                    leaf_addr6(self.subnet)
                )],
            );
            script.push(format!("route add ::/0 via {}", node_addr6(self.subnet)));
        }
        script
    }

    fn new(leaf: &'a Netns, node_iface: String, subnet: u8) -> Link<'a> {
        Link {
            leaf,
            node_iface,
            subnet,
            node_addr: node_addr(subnet),
            leaf_addr: leaf_addr(subnet),
            ipv6: false,
        }
    }
}

/// A Service VIP: 198.19.0.0/16 plus `n`, an address no interface ever has.
pub fn vip(n: u16) -> Ipv4Addr {
    let [hi, lo] = n.to_be_bytes();
    Ipv4Addr::new(198, 19, hi, lo)
}

/// An IPv6 Service VIP: 2001:db8:ffff::/64 plus `n`, an address no interface ever has.
/// Wider than IPv4's 16 bits: the API server's IPv6 service range is a /108 (the widest it
/// takes), so the benchmark's 100,000 Services fit in IPv6 where 198.19.0.0/16 holds 65,534.
pub fn vip6(n: u32) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 0)) | u128::from(n))
}

/// Third octet of backend `i`'s subnet: 2, 3, ... skipping the external subnet.
/// The address backend `i` (0-based) gets in any topology: known before one is built.
pub fn backend_address(i: usize) -> Ipv4Addr {
    leaf_addr(backend_subnet(i))
}

/// The IPv6 address backend `i` (0-based) gets in any dual-stack topology.
pub fn backend_address6(i: usize) -> Ipv6Addr {
    leaf_addr6(backend_subnet(i))
}

fn backend_subnet(i: usize) -> u8 {
    let subnet = i + usize::from(CLIENT_SUBNET) + 1;
    let subnet = if subnet >= usize::from(EXTERNAL_SUBNET) {
        subnet + 1
    } else {
        subnet
    };
    u8::try_from(subnet).expect("at most MAX_BACKENDS backends")
}

fn node_addr(subnet: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, subnet, 1)
}

fn leaf_addr(subnet: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, subnet, 2)
}

fn node_addr6(subnet: u8) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, u16::from(subnet), 0, 0, 0, 0, 1)
}

fn leaf_addr6(subnet: u8) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, u16::from(subnet), 0, 0, 0, 0, 2)
}

/// The pid in a namespace name `kpt-<pid>-...`.
fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

pub mod lan;

#[cfg(test)]
mod tests;
