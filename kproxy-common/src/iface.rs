//! `KP_IFACES`: what kproxy does on each interface it serves (key: ifindex, value: `IFACE_F_*`).

/// kproxy runs on this interface's ingress (TC or XDP): packets forwarded from it were
/// handled there, so the egress program lets them through without a second look.
pub const IFACE_F_INGRESS: u32 = 1 << 0;
/// The interface may hand XDP frames whose L4 checksum is only partial (a veth whose peer
/// transmits with checksum offload): XDP cannot tell, so it runs `kproxy_xdp_defer`, which
/// leaves service packets to the TC program attached to the same interface, whose kernel
/// helpers know the difference. Recorded for operators; the programs do not read it.
pub const IFACE_F_XDP_DEFER: u32 = 1 << 1;
/// Local-traffic detection by interface (kube-proxy's `--detect-local-mode`
/// InterfaceNamePrefix or BridgeInterface): packets that enter the node here come from its
/// pods.
pub const IFACE_F_POD: u32 = 1 << 2;

/// XDP may send frames out of this interface with XDP_REDIRECT: kproxy's XDP program runs
/// on it and its driver transmits redirected frames (not a veth, whose peer would need an
/// XDP program of its own). Other interfaces get forwarded packets through the stack.
pub const IFACE_F_XDP_REDIRECT: u32 = 1 << 3;

/// `KP_NODE_ADDRS` value bits. The address is one of the node's own (always set).
pub const NODE_ADDR_F_LOCAL: u32 = 1 << 0;
/// NodePorts answer on this address (`--nodeport-addresses`).
pub const NODE_ADDR_F_NODEPORT: u32 = 1 << 1;

/// How many NodePort addresses `KP_NODEPORT_LIST` holds.
pub const NODEPORT_LIST_MAX: usize = 8;

/// `KP_NODEPORT_LIST` (one element): the addresses NodePorts answer on, where the datapath
/// finds them without a hash lookup, so a packet to one looks up the NodePort entry first.
/// Only a shortcut: an address not listed (more than `NODEPORT_LIST_MAX`, or one the agent
/// has not written yet) takes the general path (its own frontends, then `KP_NODE_ADDRS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NodePortList {
    /// Valid entries of `addrs` (0: no shortcut).
    pub count: u32,
    /// Bit `i`: `addrs[i]` is also a frontend's own address (an external or load-balancer
    /// IP), whose exact entries come before NodePorts, as in kube-proxy's rules.
    pub exact_mask: u32,
    /// Network byte order.
    pub addrs: [u32; NODEPORT_LIST_MAX],
}
