//! Runtime settings the agent writes into `KP_CONFIG` (a one-element array).

use core::mem::size_of;

use crate::ct::FlowState;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// `--masquerade-all`: every new flow to a cluster IP is masqueraded.
pub const CFG_F_MASQUERADE_ALL: u32 = 1 << 0;
/// Local-traffic detection by source address: sources in `KP_LOCAL_CIDRS` are this
/// node's pods (`--detect-local-mode` ClusterCIDR or NodeCIDR).
pub const CFG_F_LOCAL_BY_CIDR: u32 = 1 << 1;
/// Local-traffic detection by interface: packets entering through an interface marked
/// `IFACE_F_POD` come from pods (InterfaceNamePrefix or BridgeInterface).
pub const CFG_F_LOCAL_BY_IFACE: u32 = 1 << 2;

/// NodePorts answer on the loopback address (kube-proxy iptables mode's localhost
/// NodePorts; the agent sets `route_localnet`): packets to 127.0.0.0/8 arriving on any
/// interface but `lo` are dropped, as kube-proxy's rule against CVE-2020-8558 drops them.
pub const CFG_F_LOCALHOST_NODEPORTS: u32 = 1 << 3;

const SEC: u64 = 1_000_000_000;

/// Conntrack timeouts. Until the agent writes the map, `initialized` is 0 and the datapath
/// uses `Config::DEFAULT`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub initialized: u32,
    /// `CFG_F_*` bits.
    pub flags: u32,
    /// TCP flow that has not seen a reply yet.
    pub tcp_syn_timeout_ns: u64,
    /// TCP flow that has seen a reply and is not closing.
    pub tcp_established_timeout_ns: u64,
    /// TCP flow after RST or FIN in both directions.
    pub tcp_close_timeout_ns: u64,
    /// UDP flow without a reply yet.
    pub udp_timeout_ns: u64,
    /// UDP flow that has seen replies.
    pub udp_stream_timeout_ns: u64,
}

impl Config {
    /// Linux conntrack's defaults for TCP SYN_SENT (120 s is its value; 60 s as Cilium, since
    /// an unanswered SYN is retried by the client anyway), established (6 h as Cilium, below
    /// kube-proxy's 24 h sysctl because stale entries pin backends), close (10 s), and its UDP
    /// values (30 s unreplied, 120 s "stream").
    pub const DEFAULT: Self = Self {
        initialized: 1,
        flags: 0,
        tcp_syn_timeout_ns: 60 * SEC,
        tcp_established_timeout_ns: 6 * 3600 * SEC,
        tcp_close_timeout_ns: 10 * SEC,
        udp_timeout_ns: 30 * SEC,
        udp_stream_timeout_ns: 120 * SEC,
    };

    /// How long a flow of protocol `proto` in `state` lives without traffic.
    #[inline(always)]
    pub const fn timeout_ns(&self, proto: u8, state: &FlowState) -> u64 {
        if proto == IPPROTO_TCP {
            if state.tcp_closing() {
                self.tcp_close_timeout_ns
            } else if state.replied() {
                self.tcp_established_timeout_ns
            } else {
                self.tcp_syn_timeout_ns
            }
        } else if state.replied() {
            self.udp_stream_timeout_ns
        } else {
            self.udp_timeout_ns
        }
    }

    /// Whether some local-traffic detection is configured. Without one, kube-proxy never
    /// masquerades cluster-IP traffic for coming from outside the cluster (it cannot tell).
    #[inline(always)]
    pub const fn detects_local(&self) -> bool {
        self.flags & (CFG_F_LOCAL_BY_CIDR | CFG_F_LOCAL_BY_IFACE) != 0
    }

    /// Whether a flow in `state` has outlived its timeout at `now_ns`.
    #[inline(always)]
    pub const fn expired(&self, proto: u8, state: &FlowState, now_ns: u64) -> bool {
        now_ns.saturating_sub(state.last_seen_ns) > self.timeout_ns(proto, state)
    }
}

const _: () = assert!(size_of::<Config>() == 48);
