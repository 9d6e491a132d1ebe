//! kube-proxy's traffic policies for a new flow: which entry of a frontend serves the client
//! (externalTrafficPolicy Local sends the node's own clients cluster-wide), whether the
//! client may use it at all (loadBalancerSourceRanges), and whether the flow is masqueraded
//! to a node address. Decided once per flow; conntrack remembers the outcome.

use kproxy_common::{
    config::{
        CFG_F_LOCAL_BY_CIDR, CFG_F_LOCAL_BY_IFACE, CFG_F_LOCALHOST_NODEPORTS, CFG_F_MASQUERADE_ALL,
        Config,
    },
    iface::{IFACE_F_POD, NODE_ADDR_F_LOCAL, NODE_ADDR_F_NODEPORT},
    lb::{
        SCOPE_INTERNAL, SVC_F_EXT_LOCAL, SVC_F_EXTERNAL, SVC_F_SOURCE_RANGES, ServiceKeyOf,
        ServiceValue,
    },
};

use crate::{conntrack, family::Family, maps::KP_IFACES, packet::Packet, route::LOOPBACK_IFINDEX};

/// The `NODE_ADDR_F_*` bits of `addr`, 0 if it is not the node's.
#[inline(always)]
pub fn node_addr_flags<F: Family>(addr: F::Addr) -> u32 {
    // SAFETY: copied out at once.
    unsafe { F::node_addrs().get(addr) }.copied().unwrap_or(0)
}

/// Whether a packet to `daddr` is one only `lo` may carry while localhost NodePorts make the
/// kernel accept loopback destinations everywhere (`route_localnet`).
#[inline(always)]
pub fn martian_localhost<F: Family, P: Packet>(pkt: &P, daddr: F::Addr) -> bool {
    F::is_loopback(daddr)
        && pkt.ifindex() != LOOPBACK_IFINDEX
        && conntrack::config().flags & CFG_F_LOCALHOST_NODEPORTS != 0
}

/// Whether NodePorts answer on `addr`.
#[inline(always)]
pub fn is_nodeport_addr<F: Family>(addr: F::Addr) -> bool {
    node_addr_flags::<F>(addr) & NODE_ADDR_F_NODEPORT != 0
}

/// Who a new flow's client is, as kube-proxy's rules tell: `--src-type LOCAL` (the node
/// itself) and its local-traffic detector (the node's pods).
#[derive(Clone, Copy)]
pub struct Client {
    pub node: bool,
    pub pod: bool,
}

impl Client {
    #[inline(always)]
    pub fn of<F: Family, P: Packet>(pkt: &P, saddr: F::Addr, cfg: &Config) -> Self {
        let pod = (cfg.flags & CFG_F_LOCAL_BY_CIDR != 0 && F::in_local_cidr(saddr))
            || (cfg.flags & CFG_F_LOCAL_BY_IFACE != 0
                // SAFETY: copied out at once.
                && unsafe { KP_IFACES.get(pkt.ingress_ifindex()) }
                    .is_some_and(|f| f & IFACE_F_POD != 0));
        Self {
            node: node_addr_flags::<F>(saddr) & NODE_ADDR_F_LOCAL != 0,
            pod,
        }
    }
}

/// Whether loadBalancerSourceRanges let source `saddr` reach frontend `svc` (always, for a
/// frontend without them).
#[inline(always)]
pub fn source_allowed<F: Family>(svc: &ServiceValue, saddr: F::Addr) -> bool {
    svc.flags & SVC_F_SOURCE_RANGES == 0 || F::source_allowed(svc.id, saddr)
}

/// Turns `svc`, the value of frontend `key`, into the entry that serves `client`, in place,
/// and says whether its new flow is masqueraded (before hairpin, which depends on the
/// backend chosen). The source ranges are checked before (`source_allowed`).
#[inline(always)]
pub fn serve<F: Family>(
    key: &ServiceKeyOf<F::Addr>,
    svc: &mut ServiceValue,
    client: Client,
    cfg: &Config,
) -> bool {
    if svc.flags & SVC_F_EXTERNAL == 0 {
        // A cluster IP: masqueraded when everything is, or when the detector says the
        // client is not a pod of the cluster (without a detector, never).
        return cfg.flags & CFG_F_MASQUERADE_ALL != 0 || (cfg.detects_local() && !client.pod);
    }
    if svc.flags & SVC_F_EXT_LOCAL == 0 {
        // externalTrafficPolicy Cluster: always masqueraded, so replies from a backend on
        // another node come back through this one.
        return true;
    }
    if client.pod || client.node {
        // Local policy, but the client is on this node: cluster-wide, as kube-proxy's
        // "pod traffic for external destinations" and "route LOCAL traffic to service
        // cluster-wide" rules do; the node itself is masqueraded, pods keep their address.
        let internal = ServiceKeyOf {
            scope: SCOPE_INTERNAL,
            ..*key
        };
        // Without it (the policy is switching to Cluster, whose entry the agent removes
        // while it clears SVC_F_EXT_LOCAL), the frontend's own entry serves.
        // SAFETY: copied out at once (NO_PREALLOC map).
        if let Some(cluster) = unsafe { F::services().get(internal) } {
            *svc = *cluster;
        }
        return client.node;
    }
    // An external client keeps its address; the entry holds node-local backends only.
    false
}
