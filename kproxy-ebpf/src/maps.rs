//! Every map of the datapath, one comment each. Sizes here are defaults; the agent may resize
//! them at load time. Control-plane maps use `BPF_F_NO_PREALLOC` so an element replaced or
//! deleted by the agent is freed after an RCU grace period: a packet that looked it up keeps
//! reading the old value, never a recycled one.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, ProgramArray},
};
use kproxy_common::{
    addr::In6Addr,
    config::Config,
    ct::{
        AffinityKey, AffinityKey6, AffinityValue, CtEntry, CtEntry6, FlowKey, FlowKey6, FragKey,
        FragKey6, FragPorts,
    },
    filter::{CLIENT_ENTRIES, FILTER_ENTRIES},
    iface::NodePortList,
    lb::{
        Backend, Backend6, FREE_PORT_WORDS, ServiceKey, ServiceKey6, ServiceValue, SlotKey,
        SourceRangeKey, SourceRangeKey6,
    },
    maglev::{MaglevChunk, MaglevKey},
    meta::Meta,
    names::TAIL_SLOTS,
    sock::{
        SockAffinityKey, SockFlow, SockFlowKey, SockFlowKey6, SockRev, SockRev6, SockRevKey,
        SockRevKey6,
    },
    stats::{BackendStats, GlobalStats, ServiceStats},
};

const NO_PREALLOC: u32 = BPF_F_NO_PREALLOC;

/// Service frontends: (VIP, port, protocol) → service port id, backend count, active bank.
#[map]
pub static KP_SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::pinned(65_536, NO_PREALLOC);

/// Backend slots of each service port, two banks per service port: (id, bank|index) → backend id.
#[map]
pub static KP_SLOTS: HashMap<SlotKey, u32> = HashMap::pinned(524_288, NO_PREALLOC);

/// Backends: backend id → endpoint address and port.
#[map]
pub static KP_BACKENDS: HashMap<u32, Backend> = HashMap::pinned(262_144, NO_PREALLOC);

/// Round-robin position of each service port, one per CPU: a counter shared by every CPU
/// would be one cache line bouncing between them at every new flow. A plain array with a
/// region per CPU (`per_cpu::index`; the agent sizes it), not a per-CPU array: the kernel
/// allocates a per-CPU array's copies entry by entry, 60 ms for 65,536 entries at every
/// start. The agent starts each service port's counters at a random slot, one further on
/// each CPU.
#[map]
pub static KP_RR: Array<u64> = Array::pinned(65_536, 0);

/// Maglev tables of the service ports that use them (`SVC_F_MAGLEV`), a table of each bank
/// cut into 4 KiB chunks: (id, table size, bank, chunk) → backend ids. Not preallocated:
/// its size caps the tables (`--maglev-max-services`), only those written take memory.
#[map]
pub static KP_MAGLEV: HashMap<MaglevKey, MaglevChunk> = HashMap::pinned(32_768, NO_PREALLOC);

/// Conntrack, client side: client→VIP tuple → chosen backend and flow state. An LRU: under
/// pressure the kernel evicts old entries; an evicted one is rebuilt from `KP_CT_REV` by the
/// flow's next reply.
#[map]
pub static KP_CT_FWD: LruHashMap<FlowKey, CtEntry> = LruHashMap::pinned(262_144, 0);

/// Conntrack, backend side: backend→client reply tuple → VIP:port to restore, flow state.
/// A plain (preallocated) hash, never evicted by the kernel: a reply must never leave with
/// the backend's address because its entry was evicted, so only the agent deletes entries,
/// once their flow timed out (dropping unanswered ones first when the table fills, as
/// netfilter's early drop does). When it is full, new flows are dropped (`drop_ct_insert`).
#[map]
pub static KP_CT_REV: HashMap<FlowKey, CtEntry> = HashMap::pinned(262_144, 0);

/// ClientIP session affinity: (service port id, client address) → backend id, last use.
#[map]
pub static KP_AFFINITY: LruHashMap<AffinityKey, AffinityValue> = LruHashMap::pinned(65_536, 0);

/// Global per-CPU counters (packets, new flows, drops by reason).
#[map]
pub static KP_STATS: PerCpuArray<GlobalStats> = PerCpuArray::pinned(1, 0);

/// Per-CPU counters of each service port: a region per CPU, indexed by service port id
/// (`per_cpu::index`, as `KP_RR`).
#[map]
pub static KP_SVC_STATS: Array<ServiceStats> = Array::pinned(65_536, 0);

/// Per-CPU counters of each backend, created by its first new flow, deleted by the agent
/// with the backend.
#[map]
pub static KP_BE_STATS: PerCpuHashMap<u32, BackendStats> =
    PerCpuHashMap::pinned(262_144, NO_PREALLOC);

/// Conntrack timeouts written by the agent (one element).
#[map]
pub static KP_CONFIG: Array<Config> = Array::pinned(1, 0);

/// Ports of fragmented datagrams, recorded from the first fragment for the later ones.
#[map]
pub static KP_FRAGS: LruHashMap<FragKey, FragPorts> = LruHashMap::pinned(8_192, 0);

/// Interfaces kproxy serves, by ifindex → `IFACE_F_*` (see kproxy_common::iface).
#[map]
pub static KP_IFACES: HashMap<u32, u32> = HashMap::pinned(1_024, NO_PREALLOC);

/// Every address some frontend uses as its VIP → number of such frontends. Only read on
/// the way out of the datapath, to count VIP traffic that leaves untranslated.
#[map]
pub static KP_VIPS: HashMap<u32, u32> = HashMap::pinned(65_536, NO_PREALLOC);

/// The node's own IPv4 addresses → `NODE_ADDR_F_*`: a backend there is reached through the
/// loopback device from egress, not routed out; traffic from there is the node's own; the
/// NodePorts answer on those marked for them.
#[map]
pub static KP_NODE_ADDRS: HashMap<u32, u32> = HashMap::pinned(1_024, NO_PREALLOC);

/// loadBalancerSourceRanges of the frontends with `SVC_F_SOURCE_RANGES`: (service port id,
/// source prefix) → 1.
#[map]
pub static KP_SOURCE_RANGES: LpmTrie<SourceRangeKey, u8> = LpmTrie::pinned(16_384, NO_PREALLOC);

/// Local-traffic detection by address (`CFG_F_LOCAL_BY_CIDR`): the pod network, as
/// `--cluster-cidr` or the node's podCIDRs say → 1.
#[map]
pub static KP_LOCAL_CIDRS: LpmTrie<u32, u8> = LpmTrie::pinned(64, NO_PREALLOC);

/// The NodePort addresses as a short list (see `NodePortList`), written by the agent.
#[map]
pub static KP_NODEPORT_LIST: Array<NodePortList> = Array::pinned(1, 0);

/// When the agent last removed a frontend or a backend, or stopped a backend taking new
/// connections (CLOCK_MONOTONIC ns): a flow refreshed since then needs no look at its
/// frontend or backend until its next refresh (see `lb::known_flow`).
#[map]
pub static KP_RETIRED: Array<u64> = Array::pinned(1, 0);

/// Ports no NodePort uses, one bit each (see `free_port_bit`), written by the agent.
#[map]
pub static KP_FREE_PORTS: Array<u64> = Array::pinned(FREE_PORT_WORDS, 0);

/// Bitmaps of the frontend addresses and backend endpoints the agent ever wrote (see
/// `kproxy_common::filter`): a clear bit skips a lookup that would miss.
#[map]
pub static KP_FILTER: Array<u64> = Array::pinned(FILTER_ENTRIES, 0);

/// The bitmap of the destinations of reply entries the programs created, and whether it is
/// complete (see `kproxy_common::filter::CLIENT_WORDS`). Mmapable: the agent ORs bits in
/// beside the programs, never rewriting a word.
#[map]
pub static KP_CLIENTS: Array<u64> = Array::pinned(CLIENT_ENTRIES, BPF_F_MMAPABLE);

/// What the pinned state is: layout version and reserved backend ids. Written by the agent,
/// never read by the programs; it lives here so it is pinned with the maps it describes.
#[map]
pub static KP_META: Array<Meta> = Array::pinned(1, 0);

// --- IPv6 ---------------------------------------------------------------------------------
// The same roles for the other family, in maps of their own so that IPv4 keys keep their
// size. Service port ids (`KP_SLOTS`, `KP_RR`, counters) and backend ids are shared: an id
// lives in one family's maps only.

/// IPv6 frontends: (VIP, port, protocol, scope) → the same `ServiceValue` as IPv4's.
#[map]
pub static KP_SERVICES6: HashMap<ServiceKey6, ServiceValue> = HashMap::pinned(65_536, NO_PREALLOC);

/// IPv6 backends: backend id → endpoint address and port.
#[map]
pub static KP_BACKENDS6: HashMap<u32, Backend6> = HashMap::pinned(262_144, NO_PREALLOC);

/// `KP_CT_FWD` for IPv6 flows.
#[map]
pub static KP_CT_FWD6: LruHashMap<FlowKey6, CtEntry6> = LruHashMap::pinned(262_144, 0);

/// `KP_CT_REV` for IPv6 flows (never evicted by the kernel, like `KP_CT_REV`).
#[map]
pub static KP_CT_REV6: HashMap<FlowKey6, CtEntry6> = HashMap::pinned(262_144, 0);

/// `KP_AFFINITY` for IPv6 clients.
#[map]
pub static KP_AFFINITY6: LruHashMap<AffinityKey6, AffinityValue> = LruHashMap::pinned(65_536, 0);

/// `KP_FRAGS` for IPv6 (keyed by the Fragment header's identification).
#[map]
pub static KP_FRAGS6: LruHashMap<FragKey6, FragPorts> = LruHashMap::pinned(8_192, 0);

/// `KP_VIPS` for IPv6 VIPs.
#[map]
pub static KP_VIPS6: HashMap<In6Addr, u32> = HashMap::pinned(65_536, NO_PREALLOC);

/// `KP_NODE_ADDRS` for the node's IPv6 addresses.
#[map]
pub static KP_NODE_ADDRS6: HashMap<In6Addr, u32> = HashMap::pinned(1_024, NO_PREALLOC);

/// `KP_SOURCE_RANGES` for IPv6 sources.
#[map]
pub static KP_SOURCE_RANGES6: LpmTrie<SourceRangeKey6, u8> = LpmTrie::pinned(16_384, NO_PREALLOC);

/// `KP_LOCAL_CIDRS` for the IPv6 pod network.
#[map]
pub static KP_LOCAL_CIDRS6: LpmTrie<In6Addr, u8> = LpmTrie::pinned(64, NO_PREALLOC);

/// The IPv6 TC programs, by `names::TAIL_TC_*`, written by the agent once they are loaded.
/// Pinned: the entries then outlive the agent, and a restarted one replaces them in place.
#[map]
pub static KP_TAIL_TC: ProgramArray = ProgramArray::pinned(TAIL_SLOTS, 0);

/// The IPv6 XDP programs, by `names::TAIL_XDP*` (a program array serves one program type).
#[map]
pub static KP_TAIL_XDP: ProgramArray = ProgramArray::pinned(TAIL_SLOTS, 0);

// --- Socket-level load balancing (see `sock`) ---------------------------------------------
// LRUs: an entry belongs to a socket that may close at any time without telling; the least
// used go first when the table is full. Losing one only shows the backend instead of the
// frontend to getpeername, or starts a new UDP flow.

/// (backend, socket) → the frontend the socket addressed.
#[map]
pub static KP_SOCK_REV: LruHashMap<SockRevKey, SockRev> = LruHashMap::pinned(262_144, 0);

/// `KP_SOCK_REV` for IPv6 sockets.
#[map]
pub static KP_SOCK_REV6: LruHashMap<SockRevKey6, SockRev6> = LruHashMap::pinned(262_144, 0);

/// (frontend, unconnected UDP socket) → its flow's backend and last use.
#[map]
pub static KP_SOCK_FLOWS: LruHashMap<SockFlowKey, SockFlow> = LruHashMap::pinned(65_536, 0);

/// `KP_SOCK_FLOWS` for IPv6 sockets.
#[map]
pub static KP_SOCK_FLOWS6: LruHashMap<SockFlowKey6, SockFlow> = LruHashMap::pinned(65_536, 0);

/// Connected UDP sockets pointed at a backend: (backend, socket) → backend id. The agent
/// looks here for sockets whose backend stopped taking new connections (see
/// `stale_sockets` in the agent), without walking every socket of `KP_SOCK_REV`.
#[map]
pub static KP_SOCK_UDP: LruHashMap<SockRevKey, u32> = LruHashMap::pinned(65_536, 0);

/// `KP_SOCK_UDP` for IPv6 sockets.
#[map]
pub static KP_SOCK_UDP6: LruHashMap<SockRevKey6, u32> = LruHashMap::pinned(65_536, 0);

/// ClientIP affinity of the socket path: (service port id, network namespace) → backend id,
/// last use.
#[map]
pub static KP_SOCK_AFFINITY: LruHashMap<SockAffinityKey, AffinityValue> =
    LruHashMap::pinned(65_536, 0);
