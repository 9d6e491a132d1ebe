//! Runtime settings the agent writes into `KP_CONFIG` (a one-element array).

use core::mem::size_of;

use crate::ct::{CT_REFRESH_NS, FlowState};

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
    /// an unanswered SYN is retried by the client anyway), close (10 s) and UDP (30 s
    /// unreplied, 120 s "stream"), and kube-proxy's established timeout (24 h, the value
    /// kube-proxy gives the kernel's table that carries its NAT): a connection idle for hours
    /// keeps its backend as it would behind kube-proxy. (Closed flows go after the close
    /// timeout, so idle-but-open ones are what this holds.)
    pub const DEFAULT: Self = Self {
        initialized: 1,
        flags: 0,
        tcp_syn_timeout_ns: 60 * SEC,
        tcp_established_timeout_ns: 24 * 3600 * SEC,
        tcp_close_timeout_ns: 10 * SEC,
        udp_timeout_ns: 30 * SEC,
        udp_stream_timeout_ns: 120 * SEC,
    };

    /// These settings with every timeout at least `CT_REFRESH_NS`, as the datapath takes
    /// them: a flow refreshed within the last `CT_REFRESH_NS` has then not timed out, which
    /// its fast path relies on (see `conntrack::fresh` in the eBPF crate).
    #[must_use]
    pub const fn with_minimum_timeouts(self) -> Self {
        const fn at_least_refresh(ns: u64) -> u64 {
            if ns < CT_REFRESH_NS {
                CT_REFRESH_NS
            } else {
                ns
            }
        }
        Self {
            tcp_syn_timeout_ns: at_least_refresh(self.tcp_syn_timeout_ns),
            tcp_established_timeout_ns: at_least_refresh(self.tcp_established_timeout_ns),
            tcp_close_timeout_ns: at_least_refresh(self.tcp_close_timeout_ns),
            udp_timeout_ns: at_least_refresh(self.udp_timeout_ns),
            udp_stream_timeout_ns: at_least_refresh(self.udp_stream_timeout_ns),
            ..self
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_under_the_refresh_interval_are_raised_to_it_and_others_kept() {
        let asked = Config {
            tcp_syn_timeout_ns: 0,
            tcp_close_timeout_ns: CT_REFRESH_NS - 1,
            udp_timeout_ns: CT_REFRESH_NS,
            ..Config::DEFAULT
        };
        let taken = asked.with_minimum_timeouts();
        assert_eq!(taken.tcp_syn_timeout_ns, CT_REFRESH_NS);
        assert_eq!(taken.tcp_close_timeout_ns, CT_REFRESH_NS);
        assert_eq!(taken.udp_timeout_ns, CT_REFRESH_NS);
        assert_eq!(
            taken.tcp_established_timeout_ns,
            Config::DEFAULT.tcp_established_timeout_ns
        );
        assert_eq!(
            taken.udp_stream_timeout_ns,
            Config::DEFAULT.udp_stream_timeout_ns
        );
        assert_eq!(Config::DEFAULT.with_minimum_timeouts(), Config::DEFAULT);
    }
}
