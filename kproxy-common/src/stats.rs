//! Counters: global per-CPU counters indexed by `Counter`, per-service-port and per-backend
//! per-CPU counters. The agent sums the per-CPU values when it reads them.

use core::mem::size_of;

/// Index into `GlobalStats::counters`. Every drop has its own reason.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Packets the programs looked at.
    Packets = 0,
    /// Packets to a service frontend that were translated (DNAT).
    ServicePackets,
    /// Backend replies translated back (reverse NAT).
    ReplyPackets,
    /// New flows that were given a backend.
    NewFlows,
    /// New flows that reused their client's ClientIP affinity.
    AffinityHits,
    /// A SYN on a finished TCP flow started a new flow (client port reuse).
    CtReopened,
    /// New connections rejected with ICMP port unreachable (no endpoints).
    Rejected,
    /// Conntrack insert failed: the flow was dropped.
    DropCtInsert,
    /// A backend slot the service value promised was missing (inconsistent maps).
    DropNoSlot,
    /// A slot named a backend id that no longer exists.
    DropNoBackend,
    /// Rewriting headers or checksums failed.
    DropNat,
    /// Building the ICMP reject failed (the SYN/datagram was dropped instead).
    DropReject,
    /// Fragment of a datagram to a service: cannot be translated without its L4 header.
    DropFragment,
    /// After DNAT on egress, no route (or no usable neighbour) to the backend.
    DropNoRoute,
    /// A new flow's tuple towards its backend was taken and no free source port was found.
    DropNoPort,
    /// A new flow's client port was taken towards its backend: it got another source port.
    PortRemapped,
    /// New connection to a service whose endpoints are all elsewhere than this node may
    /// use (traffic policy Local): dropped, as kube-proxy does, not rejected.
    DropNoLocalEndpoint,
}

/// Room for counters added later without changing the map's value size.
pub const COUNTER_SLOTS: usize = 32;

impl Counter {
    pub const ALL: [Counter; 17] = [
        Counter::Packets,
        Counter::ServicePackets,
        Counter::ReplyPackets,
        Counter::NewFlows,
        Counter::AffinityHits,
        Counter::CtReopened,
        Counter::Rejected,
        Counter::DropCtInsert,
        Counter::DropNoSlot,
        Counter::DropNoBackend,
        Counter::DropNat,
        Counter::DropReject,
        Counter::DropFragment,
        Counter::DropNoRoute,
        Counter::DropNoPort,
        Counter::PortRemapped,
        Counter::DropNoLocalEndpoint,
    ];

    /// Stable snake_case name (metrics label, CLI output).
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Packets => "packets",
            Counter::ServicePackets => "service_packets",
            Counter::ReplyPackets => "reply_packets",
            Counter::NewFlows => "new_flows",
            Counter::AffinityHits => "affinity_hits",
            Counter::CtReopened => "ct_reopened",
            Counter::Rejected => "rejected",
            Counter::DropCtInsert => "drop_ct_insert",
            Counter::DropNoSlot => "drop_no_slot",
            Counter::DropNoBackend => "drop_no_backend",
            Counter::DropNat => "drop_nat",
            Counter::DropReject => "drop_reject",
            Counter::DropFragment => "drop_fragment",
            Counter::DropNoRoute => "drop_no_route",
            Counter::DropNoPort => "drop_no_port",
            Counter::PortRemapped => "port_remapped",
            Counter::DropNoLocalEndpoint => "drop_no_local_endpoint",
        }
    }

    /// The drop reason this counter stands for, if it counts drops.
    pub const fn drop_reason(self) -> Option<&'static str> {
        match self {
            Counter::DropCtInsert => Some("ct_insert"),
            Counter::DropNoSlot => Some("no_slot"),
            Counter::DropNoBackend => Some("no_backend"),
            Counter::DropNat => Some("nat"),
            Counter::DropReject => Some("reject_failed"),
            Counter::DropFragment => Some("fragment"),
            Counter::DropNoRoute => Some("no_route"),
            Counter::DropNoPort => Some("no_port"),
            Counter::DropNoLocalEndpoint => Some("no_local_endpoint"),
            _ => None,
        }
    }
}

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
    /// New flows sent to this backend (what round-robin and affinity decided).
    pub new_flows: u64,
}

const _: () = assert!(size_of::<GlobalStats>() == 8 * COUNTER_SLOTS);
const _: () = assert!(size_of::<ServiceStats>() == 32);
const _: () = assert!(size_of::<BackendStats>() == 8);
