//! Counters: global per-CPU counters indexed by `Counter`, per-service-port and per-backend
//! per-CPU counters. The agent sums the per-CPU values when it reads them.

use core::mem::size_of;

/// Declares `Counter` with, for each counter, its stable snake_case name and, for drops,
/// the drop reason, so the list is written once.
macro_rules! counters {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal $(, drop $reason:literal)?; )*) => {
        /// Index into `GlobalStats::counters`. Every drop has its own reason, and every way a
        /// packet addressed to a service VIP can leave untranslated has its own counter.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter {
            $( $(#[$doc])* $variant, )*
        }

        impl Counter {
            pub const ALL: &'static [Counter] = &[$( Counter::$variant, )*];

            /// Stable snake_case name (metrics label, CLI output).
            pub const fn name(self) -> &'static str {
                match self {
                    $( Counter::$variant => $name, )*
                }
            }

            /// The drop reason this counter stands for, if it counts drops.
            pub const fn drop_reason(self) -> Option<&'static str> {
                match self {
                    $( Counter::$variant => counters!(@reason $($reason)?), )*
                }
            }
        }
    };
    (@reason $reason:literal) => { Some($reason) };
    (@reason) => { None };
}

counters! {
    /// Packets the programs looked at.
    Packets = "packets";
    /// Packets to a service frontend that were translated (DNAT).
    ServicePackets = "service_packets";
    /// Backend replies translated back (reverse NAT).
    ReplyPackets = "reply_packets";
    /// New flows that were given a backend.
    NewFlows = "new_flows";
    /// New flows that reused their client's ClientIP affinity.
    AffinityHits = "affinity_hits";
    /// A SYN on a finished TCP flow started a new flow (client port reuse).
    CtReopened = "ct_reopened";
    /// New connections rejected with ICMP port unreachable (no endpoints).
    Rejected = "rejected";
    /// Conntrack insert failed: the flow was dropped.
    DropCtInsert = "drop_ct_insert", drop "ct_insert";
    /// A backend slot the service value promised was missing (inconsistent maps).
    DropNoSlot = "drop_no_slot", drop "no_slot";
    /// A slot named a backend id that no longer exists.
    DropNoBackend = "drop_no_backend", drop "no_backend";
    /// Rewriting headers or checksums failed.
    DropNat = "drop_nat", drop "nat";
    /// Building the ICMP reject failed (the SYN/datagram was dropped instead).
    DropReject = "drop_reject", drop "reject_failed";
    /// A later fragment to a VIP whose first fragment was not seen (out of order, or lost):
    /// without the first one's ports it cannot be translated.
    DropFragment = "drop_fragment", drop "fragment";
    /// After DNAT on egress, no route (or no usable neighbour) to the backend.
    DropNoRoute = "drop_no_route", drop "no_route";
    /// A new flow's tuple towards its backend was taken and no free source port was found.
    DropNoPort = "drop_no_port", drop "no_port";
    /// A new flow's client port was taken towards its backend: it got another source port.
    PortRemapped = "port_remapped";
    /// New connection to a service whose endpoints are all elsewhere than this node may
    /// use (traffic policy Local): dropped, as kube-proxy does, not rejected.
    DropNoLocalEndpoint = "drop_no_local_endpoint", drop "no_local_endpoint";
    /// A TCP packet other than a SYN to a service, with no live flow (conntrack INVALID):
    /// dropped, as kube-proxy's `--ctstate INVALID -j DROP`, never given a fresh backend
    /// mid-stream.
    DropCtInvalid = "drop_ct_invalid", drop "ct_invalid";
    /// A TCP packet of a flow whose endpoint left every EndpointSlice: answered with a RST
    /// so the client fails at once instead of retransmitting into the void.
    ResetBackendGone = "reset_backend_gone";
    /// Building or sending that RST failed (the packet was dropped instead).
    DropReset = "drop_reset", drop "reset_failed";
    /// A flow whose endpoint stopped taking new connections (UDP) or is gone (a SYN)
    /// moved to a backend in use.
    FlowRebalanced = "flow_rebalanced";
    /// A flow's reply entry was missing (evicted alone) and was rebuilt from its forward one.
    CtReplyRestored = "ct_reply_restored";
    /// A flow's forward entry was missing (evicted alone) and was rebuilt from its reply one.
    CtForwardRestored = "ct_forward_restored";
    /// Two CPUs created the same flow at once; the loser followed the winner's entry.
    CtCreateRaced = "ct_create_raced";
    /// ICMP errors about a translated flow, translated (outer and quoted headers).
    IcmpErrorTranslated = "icmp_error_translated";
    /// Translating such an ICMP error failed: it was dropped.
    DropIcmpError = "drop_icmp_error", drop "icmp_error";
    /// An ICMP error addressed to a VIP that matches no flow: passes untranslated.
    VipIcmpNoFlow = "vip_icmp_no_flow";
    /// A packet to a VIP on a port/protocol no service has: passes untranslated (as with
    /// kube-proxy's iptables mode; it dies where nothing owns the VIP).
    VipNoServicePort = "vip_no_service_port";
    /// A packet to a VIP of an IP protocol kproxy does not balance (ICMP echo, SCTP, ...):
    /// passes untranslated.
    VipUnsupportedProtocol = "vip_unsupported_protocol";
    /// An 802.1Q/802.1ad tagged frame carrying IPv4 to a VIP: kproxy serves untagged links
    /// and passes it untranslated.
    VipVlanTagged = "vip_vlan_tagged";
    /// A TCP/UDP packet to a VIP whose headers are cut short or malformed: dropped.
    DropTruncated = "drop_truncated", drop "truncated";
    /// XDP left a service packet to the TC program on the same interface, because the
    /// interface may deliver partial checksums XDP cannot see (a veth with offload).
    XdpDeferred = "xdp_deferred_to_tc";
    /// A later IPv4 fragment, not to a VIP, whose first fragment was not seen (yet): passed
    /// as it is. Among them may be replies of a backend whose first fragment comes later,
    /// which cannot be translated without it (fragments to a VIP are dropped instead).
    FragmentUntracked = "fragment_untracked";
    /// A new flow from a source loadBalancerSourceRanges does not allow: dropped.
    DropSourceRange = "drop_source_range", drop "source_range";
    /// New flows masqueraded to a node address (traffic policy, masquerade-all, traffic
    /// from outside the pod network, hairpin).
    Masqueraded = "masqueraded";
    /// A new flow to masquerade, but no route (hence no node address) towards its backend:
    /// dropped.
    DropMasqNoAddr = "drop_masq_no_addr", drop "masquerade_no_address";
    /// A TCP/UDP packet to 127.0.0.0/8 that arrived on another interface than `lo` while
    /// localhost NodePorts are on: dropped (route_localnet would deliver it otherwise).
    DropMartianLocalhost = "drop_martian_localhost", drop "martian_localhost";
    /// XDP translated a packet and sent it back out of the NIC it came in on (XDP_TX).
    XdpTx = "xdp_tx";
    /// XDP translated a packet and sent it out of another interface (XDP_REDIRECT).
    XdpRedirect = "xdp_redirect";
    /// XDP translated a packet for this node (a local backend, a reply to a local client):
    /// the stack delivers it.
    XdpPassLocal = "xdp_pass_local";
    /// XDP translated a packet whose next hop's MAC is not known yet: the stack resolves
    /// it and forwards the packet.
    XdpPassNoNeigh = "xdp_pass_no_neighbour";
    /// XDP translated a packet it has no usable route for (none, forwarding off, too big
    /// for the next link): the stack forwards it or answers as it always does.
    XdpPassNoRoute = "xdp_pass_no_route";
    /// XDP translated a packet whose TTL runs out here: the stack answers "time exceeded".
    XdpPassTtl = "xdp_pass_ttl";
    /// XDP translated a packet that leaves through an interface XDP cannot redirect to:
    /// the stack forwards it.
    XdpPassOtherInterface = "xdp_pass_other_interface";
    /// An IPv6 packet to a VIP whose extension headers kproxy could not walk to the
    /// transport header (more than four, or Authentication/ESP): passes untranslated.
    VipExtensionHeaders = "vip_ipv6_extension_headers";
    /// An IPv6 packet the IPv4 program could not hand on to the IPv6 one (its tail call
    /// failed: the agent has not installed it): passes untouched.
    Ipv6NotHandedOn = "ipv6_not_handed_on";
    /// An IPv6 packet whose next step (a program of its own) the agent has not installed:
    /// dropped.
    DropStageMissing = "drop_stage_missing", drop "stage_missing";
    /// Socket-level load balancing: a connect (TCP or UDP) to a frontend pointed at a
    /// backend, once, at the socket; its packets are never translated.
    SockConnects = "socket_lb_connects";
    /// An unconnected UDP datagram to a frontend pointed at its flow's backend at the socket.
    SockDatagrams = "socket_lb_datagrams";
    /// getpeername or a received datagram showed the application the frontend rather than
    /// the backend its socket was pointed at.
    SockReversed = "socket_lb_reversed";
    /// A connect or datagram to a frontend without endpoints this client may use: left to
    /// the packet path, which rejects or drops it as kube-proxy does.
    SockLeftNoEndpoints = "socket_lb_left_no_endpoints";
    /// A connect or datagram to a frontend with loadBalancerSourceRanges: left to the packet
    /// path, which sees the source address the ranges are about.
    SockLeftSourceRanges = "socket_lb_left_source_ranges";
    /// A connect or datagram from a pod's namespace while socket-level load balancing serves
    /// the node's only (`--socket-lb host-only`): left to the packet path.
    SockLeftPod = "socket_lb_left_pod";
    /// A connect or datagram whose backend could not be chosen or remembered (maps out of
    /// step, or full): left to the packet path, which counts its own reason if it fails too.
    SockLeftError = "socket_lb_left_error";
    /// A new flow of a Maglev service port whose table this program could not read (not
    /// written yet, being replaced, or built for another table size): it took the next
    /// backend in turn instead.
    MaglevFallback = "maglev_fallback";
    /// A socket pointed at a backend was released (closed), and its entries with it.
    SockReleased = "socket_lb_released";
}

/// Room for counters added later without changing the map's value size.
pub const COUNTER_SLOTS: usize = 64;

const _: () = assert!(Counter::ALL.len() <= COUNTER_SLOTS);

/// Value of `KP_STATS` (a one-element per-CPU array): one cache-friendly block per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GlobalStats {
    pub counters: [u64; COUNTER_SLOTS],
}

/// Value of `KP_SVC_STATS` (per-CPU array indexed by service port id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceStats {
    /// Packets to the frontend, translated.
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// New connections refused (rejected, or dropped under traffic policy Local) because
    /// the service port had no endpoints to use.
    pub rejected: u64,
}

/// Value of `KP_BE_STATS` (per-CPU hash keyed by backend id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// The backend these counters are of, as this CPU's copy was first written (0: not yet
    /// on this CPU). The hash may hand a deleted backend's element to another backend while
    /// a program still holds a pointer to it; the program counts only into a copy that names
    /// its backend (see the eBPF crate's `stats::backend`).
    pub backend_id: u32,
    pub _pad: u32,
    /// New flows sent to this backend (what round-robin and affinity decided).
    pub new_flows: u64,
    /// Packets of its flows translated towards it, and their bytes.
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(size_of::<GlobalStats>() == 8 * COUNTER_SLOTS);
const _: () = assert!(size_of::<ServiceStats>() == 32);
const _: () = assert!(size_of::<BackendStats>() == 32);
