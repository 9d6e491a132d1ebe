//! kube-proxy's traffic policies for a new flow: which entry of a frontend serves the client
//! (externalTrafficPolicy Local sends the node's own clients cluster-wide), whether the
//! client may use it at all (loadBalancerSourceRanges), and whether the flow is masqueraded
//! to a node address. Decided once per flow; conntrack remembers the outcome.

use aya_ebpf::maps::lpm_trie::Key;
use kproxy_common::{
    config::{
        CFG_F_LOCAL_BY_CIDR, CFG_F_LOCAL_BY_IFACE, CFG_F_LOCALHOST_NODEPORTS, CFG_F_MASQUERADE_ALL,
        Config,
    },
    iface::{IFACE_F_POD, NODE_ADDR_F_LOCAL, NODE_ADDR_F_NODEPORT},
    lb::{
        SCOPE_INTERNAL, SOURCE_RANGE_ID_BITS, SVC_F_EXT_LOCAL, SVC_F_EXTERNAL, SVC_F_SOURCE_RANGES,
        ServiceKey, ServiceValue, SourceRangeKey,
    },
    stats::Counter,
};

use crate::{
    conntrack,
    maps::{KP_IFACES, KP_LOCAL_CIDRS, KP_NODE_ADDRS, KP_SERVICES, KP_SOURCE_RANGES},
    packet::Packet,
    route::LOOPBACK_IFINDEX,
};

/// The `NODE_ADDR_F_*` bits of `addr`, 0 if it is not the node's.
#[inline(always)]
pub fn node_addr_flags(addr: u32) -> u32 {
    // SAFETY: copied out at once.
    unsafe { KP_NODE_ADDRS.get(addr) }.copied().unwrap_or(0)
}

/// Whether a packet to `daddr` is one only `lo` may carry while localhost NodePorts make the
/// kernel accept loopback destinations everywhere (`route_localnet`).
#[inline(always)]
pub fn martian_localhost<P: Packet>(pkt: &P, daddr: u32) -> bool {
    // 127.0.0.0/8: the first byte on the wire.
    daddr.to_ne_bytes()[0] == 127
        && pkt.ifindex() != LOOPBACK_IFINDEX
        && conntrack::config().flags & CFG_F_LOCALHOST_NODEPORTS != 0
}

/// Whether NodePorts answer on `addr`.
#[inline(always)]
pub fn is_nodeport_addr(addr: u32) -> bool {
    node_addr_flags(addr) & NODE_ADDR_F_NODEPORT != 0
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
    pub fn of<P: Packet>(pkt: &P, saddr: u32, cfg: &Config) -> Self {
        let pod = (cfg.flags & CFG_F_LOCAL_BY_CIDR != 0
            && KP_LOCAL_CIDRS.get(Key::new(32, saddr)).is_some())
            || (cfg.flags & CFG_F_LOCAL_BY_IFACE != 0
                // SAFETY: copied out at once.
                && unsafe { KP_IFACES.get(pkt.ingress_ifindex()) }
                    .is_some_and(|f| f & IFACE_F_POD != 0));
        Self {
            node: node_addr_flags(saddr) & NODE_ADDR_F_LOCAL != 0,
            pod,
        }
    }
}

/// The entry of frontend `key` (found as `svc`) that serves `client`, and whether its new
/// flow is masqueraded (before hairpin, which depends on the backend chosen).
#[inline(always)]
pub fn serve(
    key: &ServiceKey,
    svc: &ServiceValue,
    client: Client,
    saddr: u32,
    cfg: &Config,
) -> Result<(ServiceValue, bool), Counter> {
    if svc.flags & SVC_F_SOURCE_RANGES != 0 && !source_allowed(svc.id, saddr) {
        return Err(Counter::DropSourceRange);
    }
    if svc.flags & SVC_F_EXTERNAL == 0 {
        // A cluster IP: masqueraded when everything is, or when the detector says the
        // client is not a pod of the cluster (without a detector, never).
        let masquerade =
            cfg.flags & CFG_F_MASQUERADE_ALL != 0 || (cfg.detects_local() && !client.pod);
        return Ok((*svc, masquerade));
    }
    if svc.flags & SVC_F_EXT_LOCAL == 0 {
        // externalTrafficPolicy Cluster: always masqueraded, so replies from a backend on
        // another node come back through this one.
        return Ok((*svc, true));
    }
    if client.pod || client.node {
        // Local policy, but the client is on this node: cluster-wide, as kube-proxy's
        // "pod traffic for external destinations" and "route LOCAL traffic to service
        // cluster-wide" rules do; the node itself is masqueraded, pods keep their address.
        let internal = ServiceKey {
            scope: SCOPE_INTERNAL,
            ..*key
        };
        // Without it (the policy is switching to Cluster, whose entry the agent removes
        // while it clears SVC_F_EXT_LOCAL), the frontend's own entry serves.
        // SAFETY: copied out at once (NO_PREALLOC map).
        let cluster = unsafe { KP_SERVICES.get(internal) }
            .copied()
            .unwrap_or(*svc);
        return Ok((cluster, client.node));
    }
    // An external client keeps its address; the entry holds node-local backends only.
    Ok((*svc, false))
}

#[inline(always)]
fn source_allowed(svc_id: u32, saddr: u32) -> bool {
    let key = Key::new(
        SOURCE_RANGE_ID_BITS + 32,
        SourceRangeKey {
            svc_id_be: svc_id.to_be(),
            addr: saddr,
        },
    );
    KP_SOURCE_RANGES.get(&key).is_some()
}
