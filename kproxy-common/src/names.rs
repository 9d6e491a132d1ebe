//! Names of the programs and maps in the eBPF object. The linker exports exactly these symbols
//! and the agent looks them up by the same constants, so a rename cannot drift between the two.

/// TC classifier for the ingress of the interfaces kproxy serves.
pub const PROG_TC_INGRESS: &str = "kproxy_tc_ingress";
/// TC classifier for their egress: traffic the node itself routes towards a VIP (host
/// processes, or pods behind interfaces kproxy does not serve) and replies routed out.
pub const PROG_TC_EGRESS: &str = "kproxy_tc_egress";
/// XDP program for a NIC's ingress: the same service logic as the TC programs.
pub const PROG_XDP: &str = "kproxy_xdp";
/// The XDP program for an interface that may hand XDP partial checksums (a veth whose peer
/// offloads them): it leaves every service packet to the TC program on the same interface.
/// A program of its own, so that `kproxy_xdp` never looks the interface up per packet.
pub const PROG_XDP_DEFER: &str = "kproxy_xdp_defer";
/// The IPv6 halves of the programs above: each IPv4 program hands an IPv6 packet on to its
/// IPv6 counterpart with a tail call (through `KP_TAIL_TC` / `KP_TAIL_XDP`), so each is
/// verified on its own and IPv4 packets pay nothing for the other family.
pub const PROG_TC_INGRESS6: &str = "kproxy_tc_ingress6";
pub const PROG_TC_EGRESS6: &str = "kproxy_tc_egress6";
pub const PROG_XDP6: &str = "kproxy_xdp6";
pub const PROG_XDP_DEFER6: &str = "kproxy_xdp_defer6";
/// The benchmark's ceiling (never attached by the agent): forwarding without translation.
pub const PROG_XDP_FORWARD_ONLY: &str = "kproxy_xdp_forward_only";

pub const MAP_SERVICES: &str = "KP_SERVICES";
pub const MAP_SLOTS: &str = "KP_SLOTS";
pub const MAP_BACKENDS: &str = "KP_BACKENDS";
pub const MAP_RR: &str = "KP_RR";
/// Maglev tables (`maglev::MaglevKey` → `maglev::MaglevChunk`), of the service ports that
/// pick backends by Maglev hashing.
pub const MAP_MAGLEV: &str = "KP_MAGLEV";
pub const MAP_CT_FWD: &str = "KP_CT_FWD";
pub const MAP_CT_REV: &str = "KP_CT_REV";
pub const MAP_AFFINITY: &str = "KP_AFFINITY";
pub const MAP_STATS: &str = "KP_STATS";
pub const MAP_SVC_STATS: &str = "KP_SVC_STATS";
pub const MAP_BE_STATS: &str = "KP_BE_STATS";
pub const MAP_CONFIG: &str = "KP_CONFIG";
pub const MAP_FRAGS: &str = "KP_FRAGS";
pub const MAP_IFACES: &str = "KP_IFACES";
pub const MAP_VIPS: &str = "KP_VIPS";
pub const MAP_META: &str = "KP_META";
pub const MAP_NODE_ADDRS: &str = "KP_NODE_ADDRS";
pub const MAP_SOURCE_RANGES: &str = "KP_SOURCE_RANGES";
pub const MAP_LOCAL_CIDRS: &str = "KP_LOCAL_CIDRS";
pub const MAP_NODEPORT_LIST: &str = "KP_NODEPORT_LIST";
pub const MAP_RETIRED: &str = "KP_RETIRED";
pub const MAP_FREE_PORTS: &str = "KP_FREE_PORTS";
pub const MAP_FILTER: &str = "KP_FILTER";
pub const MAP_CLIENTS: &str = "KP_CLIENTS";
pub const MAP_SERVICES6: &str = "KP_SERVICES6";
pub const MAP_BACKENDS6: &str = "KP_BACKENDS6";
pub const MAP_CT_FWD6: &str = "KP_CT_FWD6";
pub const MAP_CT_REV6: &str = "KP_CT_REV6";
pub const MAP_AFFINITY6: &str = "KP_AFFINITY6";
pub const MAP_FRAGS6: &str = "KP_FRAGS6";
pub const MAP_VIPS6: &str = "KP_VIPS6";
pub const MAP_NODE_ADDRS6: &str = "KP_NODE_ADDRS6";
pub const MAP_SOURCE_RANGES6: &str = "KP_SOURCE_RANGES6";
pub const MAP_LOCAL_CIDRS6: &str = "KP_LOCAL_CIDRS6";
pub const MAP_TAIL_TC: &str = "KP_TAIL_TC";
pub const MAP_TAIL_XDP: &str = "KP_TAIL_XDP";
/// Per-CPU scratch memory (not pinned: nothing in it outlives a packet): frames sent back,
/// and what one IPv6 stage hands the next (see `lb::Stage` in the eBPF crate).
pub const MAP_SCRATCH: &str = "KP_SCRATCH";
pub const MAP_SOCK_REV: &str = "KP_SOCK_REV";
pub const MAP_SOCK_REV6: &str = "KP_SOCK_REV6";
pub const MAP_SOCK_FLOWS: &str = "KP_SOCK_FLOWS";
pub const MAP_SOCK_FLOWS6: &str = "KP_SOCK_FLOWS6";
pub const MAP_SOCK_AFFINITY: &str = "KP_SOCK_AFFINITY";
pub const MAP_SOCK_UDP: &str = "KP_SOCK_UDP";
pub const MAP_SOCK_UDP6: &str = "KP_SOCK_UDP6";
pub const MAP_STAGE6: &str = "KP_STAGE6";

/// `KP_TAIL_TC` indices.
pub const TAIL_TC_INGRESS6: u32 = 0;
pub const TAIL_TC_EGRESS6: u32 = 1;
/// `KP_TAIL_XDP` indices.
pub const TAIL_XDP6: u32 = 0;
pub const TAIL_XDP_DEFER6: u32 = 1;
/// The later steps of the IPv6 path, at the same index in both maps (see `lb::Stage`).
pub const TAIL_STAGE_FLOW: u32 = 2;
pub const TAIL_STAGE_DECIDE: u32 = 3;
pub const TAIL_STAGE_CREATE: u32 = 4;
pub const TAIL_STAGE_ICMP: u32 = 5;
/// Entries of each tail-call map.
pub const TAIL_SLOTS: u32 = 6;

pub const PROG_TC6_FLOW: &str = "kproxy_tc6_flow";
pub const PROG_TC6_DECIDE: &str = "kproxy_tc6_decide";
pub const PROG_TC6_CREATE: &str = "kproxy_tc6_create";
pub const PROG_TC6_ICMP: &str = "kproxy_tc6_icmp";
pub const PROG_XDP6_FLOW: &str = "kproxy_xdp6_flow";
pub const PROG_XDP6_DECIDE: &str = "kproxy_xdp6_decide";
pub const PROG_XDP6_CREATE: &str = "kproxy_xdp6_create";
pub const PROG_XDP6_ICMP: &str = "kproxy_xdp6_icmp";

/// The programs the agent loads at start and attaches (the XDP one only when it has XDP
/// interfaces; otherwise at its first XDP attach).
pub const PROGRAMS: [&str; 14] = [
    PROG_TC_INGRESS,
    PROG_TC_EGRESS,
    PROG_XDP,
    PROG_TC_INGRESS6,
    PROG_TC_EGRESS6,
    PROG_XDP6,
    PROG_TC6_FLOW,
    PROG_TC6_DECIDE,
    PROG_TC6_CREATE,
    PROG_TC6_ICMP,
    PROG_XDP6_FLOW,
    PROG_XDP6_DECIDE,
    PROG_XDP6_CREATE,
    PROG_XDP6_ICMP,
];
/// Programs the agent loads only when an interface needs them.
pub const LAZY_PROGRAMS: [&str; 2] = [PROG_XDP_DEFER, PROG_XDP_DEFER6];

/// Where each IPv6 program goes: (program, tail-call map, index).
pub const TAIL_CALLS: [(&str, &str, u32); 12] = [
    (PROG_TC_INGRESS6, MAP_TAIL_TC, TAIL_TC_INGRESS6),
    (PROG_TC_EGRESS6, MAP_TAIL_TC, TAIL_TC_EGRESS6),
    (PROG_TC6_FLOW, MAP_TAIL_TC, TAIL_STAGE_FLOW),
    (PROG_TC6_DECIDE, MAP_TAIL_TC, TAIL_STAGE_DECIDE),
    (PROG_TC6_CREATE, MAP_TAIL_TC, TAIL_STAGE_CREATE),
    (PROG_TC6_ICMP, MAP_TAIL_TC, TAIL_STAGE_ICMP),
    (PROG_XDP6, MAP_TAIL_XDP, TAIL_XDP6),
    (PROG_XDP_DEFER6, MAP_TAIL_XDP, TAIL_XDP_DEFER6),
    (PROG_XDP6_FLOW, MAP_TAIL_XDP, TAIL_STAGE_FLOW),
    (PROG_XDP6_DECIDE, MAP_TAIL_XDP, TAIL_STAGE_DECIDE),
    (PROG_XDP6_CREATE, MAP_TAIL_XDP, TAIL_STAGE_CREATE),
    (PROG_XDP6_ICMP, MAP_TAIL_XDP, TAIL_STAGE_ICMP),
];
/// Socket-level load balancing's cgroup programs (`--socket-lb`), loaded and attached only
/// when it is on.
pub const PROG_SOCK_CONNECT4: &str = "kproxy_sock_connect4";
pub const PROG_SOCK_CONNECT6: &str = "kproxy_sock_connect6";
pub const PROG_SOCK_SENDMSG4: &str = "kproxy_sock_sendmsg4";
pub const PROG_SOCK_SENDMSG6: &str = "kproxy_sock_sendmsg6";
pub const PROG_SOCK_RECVMSG4: &str = "kproxy_sock_recvmsg4";
pub const PROG_SOCK_RECVMSG6: &str = "kproxy_sock_recvmsg6";
pub const PROG_SOCK_GETPEERNAME4: &str = "kproxy_sock_getpeername4";
pub const PROG_SOCK_GETPEERNAME6: &str = "kproxy_sock_getpeername6";
/// `cgroup/sock_release` (a cgroup socket program, not a socket-address one): a released
/// socket's entries go with it.
pub const PROG_SOCK_RELEASE: &str = "kproxy_sock_release";
pub const SOCKET_PROGRAMS: [&str; 9] = [
    PROG_SOCK_CONNECT4,
    PROG_SOCK_CONNECT6,
    PROG_SOCK_SENDMSG4,
    PROG_SOCK_SENDMSG6,
    PROG_SOCK_RECVMSG4,
    PROG_SOCK_RECVMSG6,
    PROG_SOCK_GETPEERNAME4,
    PROG_SOCK_GETPEERNAME6,
    PROG_SOCK_RELEASE,
];

/// Load-time constants: globals of the object the agent sets before loading it, which the
/// verifier then sees as constants. The node's network namespace (its cookie, `u64`).
pub const GLOBAL_HOST_NETNS: &str = "KP_HOST_NETNS";
/// Non-zero when socket-level load balancing serves pods' sockets too (`u32`).
pub const GLOBAL_SOCK_LB_PODS: &str = "KP_SOCK_LB_PODS";
/// The size M of every Maglev table (`u32`, a prime): the agent's `--maglev-table-size`.
pub const GLOBAL_MAGLEV_TABLE_SIZE: &str = "KP_MAGLEV_TABLE_SIZE";
/// The agent's `--max-services` (`u32`): above every service port id, and the length of
/// each CPU's region of `KP_RR` and `KP_SVC_STATS`.
pub const GLOBAL_MAX_SERVICES: &str = "KP_MAX_SERVICES";
pub const GLOBALS: [&str; 4] = [
    GLOBAL_HOST_NETNS,
    GLOBAL_SOCK_LB_PODS,
    GLOBAL_MAGLEV_TABLE_SIZE,
    GLOBAL_MAX_SERVICES,
];

/// Programs in the object for the benchmark only.
pub const BENCH_PROGRAMS: [&str; 1] = [PROG_XDP_FORWARD_ONLY];

pub const MAPS: [&str; 45] = [
    MAP_SERVICES,
    MAP_SLOTS,
    MAP_BACKENDS,
    MAP_RR,
    MAP_MAGLEV,
    MAP_CT_FWD,
    MAP_CT_REV,
    MAP_AFFINITY,
    MAP_STATS,
    MAP_SVC_STATS,
    MAP_BE_STATS,
    MAP_CONFIG,
    MAP_FRAGS,
    MAP_IFACES,
    MAP_VIPS,
    MAP_META,
    MAP_NODE_ADDRS,
    MAP_SOURCE_RANGES,
    MAP_LOCAL_CIDRS,
    MAP_NODEPORT_LIST,
    MAP_RETIRED,
    MAP_FREE_PORTS,
    MAP_FILTER,
    MAP_CLIENTS,
    MAP_SERVICES6,
    MAP_BACKENDS6,
    MAP_CT_FWD6,
    MAP_CT_REV6,
    MAP_AFFINITY6,
    MAP_FRAGS6,
    MAP_VIPS6,
    MAP_NODE_ADDRS6,
    MAP_SOURCE_RANGES6,
    MAP_LOCAL_CIDRS6,
    MAP_TAIL_TC,
    MAP_TAIL_XDP,
    MAP_SCRATCH,
    MAP_STAGE6,
    MAP_SOCK_REV,
    MAP_SOCK_REV6,
    MAP_SOCK_FLOWS,
    MAP_SOCK_FLOWS6,
    MAP_SOCK_AFFINITY,
    MAP_SOCK_UDP,
    MAP_SOCK_UDP6,
];
