//! Connection tracking and session affinity types.
//!
//! Each translated flow has two entries: `KP_CT_FWD` keyed by the client's tuple towards the
//! VIP, and `KP_CT_REV` keyed by the backend's reply tuple, which holds the VIP to restore.
//! Each entry is written only by packets of its own direction (its state bits, its last-seen
//! time, refreshed at most once per `CT_REFRESH_NS`); the flow's state is what both say
//! together (`FlowState`). One writer per entry means two CPUs handling the two directions
//! never overwrite each other's bits. Either entry can be rebuilt from the other, so the LRU
//! evicting one of them alone loses nothing.

use core::mem::size_of;

use crate::addr::{In6Addr, IpAddress};

/// A flow as seen in one packet (network byte order), of either family.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKeyOf<A> {
    pub saddr: A,
    pub daddr: A,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    // Two fields rather than `[u8; 3]`: zeroing a 3-byte array compiles to a call of a
    // byte-by-byte memset in BPF, on every packet.
    _pad0: u8,
    _pad1: u16,
}

/// Key of `KP_CT_FWD` and `KP_CT_REV`.
pub type FlowKey = FlowKeyOf<u32>;
/// Key of `KP_CT_FWD6` and `KP_CT_REV6`.
pub type FlowKey6 = FlowKeyOf<In6Addr>;

impl<A: Copy> FlowKeyOf<A> {
    #[inline(always)]
    pub const fn new(saddr: A, daddr: A, sport: u16, dport: u16, proto: u8) -> Self {
        Self {
            saddr,
            daddr,
            sport,
            dport,
            proto,
            _pad0: 0,
            _pad1: 0,
        }
    }
}

/// Value of the conntrack maps of either family.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtEntryOf<A> {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of this direction's last refresh.
    pub last_seen_ns: u64,
    /// The chosen backend id (both entries).
    pub backend_id: u32,
    /// Service port id, for per-service counters.
    pub svc_id: u32,
    /// Forward: backend address. Reverse: the VIP written back as source.
    pub nat_addr: A,
    /// Forward: backend port. Reverse: the service port written back as source port.
    pub nat_port: u16,
    /// Forward: the source port the flow uses towards its backend when the client's own
    /// port is taken there by another flow (two VIPs, one backend), 0 if it is not. Reverse:
    /// the client's own port, written back in replies, 0 if unchanged.
    pub alt_port: u16,
    /// `CT_F_*` bits seen by this direction's packets.
    pub flags: u32,
    /// Forward: the source address the flow uses towards its backend when it is
    /// masqueraded (SNAT to a node address), 0 if the client's own. Reverse: the client's
    /// own address, written back as destination in replies, 0 if unchanged.
    pub alt_addr: A,
}

/// Value of `KP_CT_FWD` and `KP_CT_REV`.
pub type CtEntry = CtEntryOf<u32>;
/// Value of `KP_CT_FWD6` and `KP_CT_REV6`.
pub type CtEntry6 = CtEntryOf<In6Addr>;

impl<A: IpAddress> CtEntryOf<A> {
    /// No entry: its bits and time add nothing to a flow's state.
    pub const ZERO: Self = Self {
        last_seen_ns: 0,
        backend_id: 0,
        svc_id: 0,
        nat_addr: A::UNSPECIFIED,
        nat_port: 0,
        alt_port: 0,
        flags: 0,
        alt_addr: A::UNSPECIFIED,
    };
}

/// A reply from the backend has been seen (reverse entry).
pub const CT_F_SEEN_REPLY: u32 = 1 << 0;
/// The client sent FIN (forward entry).
pub const CT_F_FIN_FWD: u32 = 1 << 1;
/// The backend sent FIN (reverse entry).
pub const CT_F_FIN_REV: u32 = 1 << 2;
/// This direction sent RST, or kproxy reset the flow (its backend is gone).
pub const CT_F_RST: u32 = 1 << 3;

/// Entries are refreshed at most this often, so established flows do not write to shared
/// memory on every packet.
pub const CT_REFRESH_NS: u64 = 1_000_000_000;

/// What a flow's two entries say together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowState {
    /// Union of both entries' `CT_F_*` bits.
    pub flags: u32,
    /// The later of both entries' last-seen times.
    pub last_seen_ns: u64,
}

impl FlowState {
    /// No flow's state: to fill in.
    pub const ZERO: Self = Self {
        flags: 0,
        last_seen_ns: 0,
    };

    /// The state of a flow whose entries are `a` and `b` (`CtEntry::ZERO` for a missing one).
    ///
    /// Not an `Option`: in the datapath an absent `Option<CtEntry>` carries undefined bytes
    /// that LLVM may spill to the stack, which the verifier rejects as an uninitialised read.
    #[inline(always)]
    pub fn of<A>(a: &CtEntryOf<A>, b: &CtEntryOf<A>) -> Self {
        Self {
            flags: a.flags | b.flags,
            last_seen_ns: if a.last_seen_ns > b.last_seen_ns {
                a.last_seen_ns
            } else {
                b.last_seen_ns
            },
        }
    }

    /// The TCP connection was reset (by either side, or by kproxy).
    #[inline(always)]
    pub const fn tcp_reset(&self) -> bool {
        self.flags & CT_F_RST != 0
    }

    /// The TCP connection is over (RST, or FIN in both directions).
    #[inline(always)]
    pub const fn tcp_closing(&self) -> bool {
        self.flags & CT_F_RST != 0
            || self.flags & (CT_F_FIN_FWD | CT_F_FIN_REV) == (CT_F_FIN_FWD | CT_F_FIN_REV)
    }

    #[inline(always)]
    pub const fn replied(&self) -> bool {
        self.flags & CT_F_SEEN_REPLY != 0
    }
}

// How a flow's two entries find each other. The datapath and the agent's collection use the
// same functions, so they can never disagree about which entries form a flow.

/// The port the client uses towards the backend: its own, or the one kproxy gave it.
#[inline(always)]
const fn backend_side_port<A>(fwd: &FlowKeyOf<A>, entry: &CtEntryOf<A>) -> u16 {
    if entry.alt_port != 0 {
        entry.alt_port
    } else {
        fwd.sport
    }
}

/// The address the client uses towards the backend: its own, or the node address it is
/// masqueraded to.
#[inline(always)]
fn backend_side_addr<A: IpAddress>(fwd: &FlowKeyOf<A>, entry: &CtEntryOf<A>) -> A {
    if entry.alt_addr.is_unspecified() {
        fwd.saddr
    } else {
        entry.alt_addr
    }
}

/// Key of the reply entry of a forward entry (`fwd` is the client→VIP tuple).
#[inline(always)]
pub fn reply_key<A: IpAddress>(fwd: &FlowKeyOf<A>, entry: &CtEntryOf<A>) -> FlowKeyOf<A> {
    FlowKeyOf::new(
        entry.nat_addr,
        backend_side_addr(fwd, entry),
        entry.nat_port,
        backend_side_port(fwd, entry),
        fwd.proto,
    )
}

/// Key of the forward entry of a reply entry (`rev` is the backend→client tuple).
#[inline(always)]
pub fn forward_key<A: IpAddress>(rev: &FlowKeyOf<A>, entry: &CtEntryOf<A>) -> FlowKeyOf<A> {
    FlowKeyOf::new(
        if entry.alt_addr.is_unspecified() {
            rev.daddr
        } else {
            entry.alt_addr
        },
        entry.nat_addr,
        if entry.alt_port != 0 {
            entry.alt_port
        } else {
            rev.dport
        },
        entry.nat_port,
        rev.proto,
    )
}

/// The reply entry that belongs to forward entry `entry` of `fwd`, as if no reply had been
/// seen yet.
#[inline(always)]
pub fn reply_entry<A: IpAddress>(fwd: &FlowKeyOf<A>, entry: &CtEntryOf<A>) -> CtEntryOf<A> {
    CtEntryOf {
        nat_addr: fwd.daddr,
        nat_port: fwd.dport,
        alt_port: if entry.alt_port != 0 { fwd.sport } else { 0 },
        alt_addr: if entry.alt_addr.is_unspecified() {
            A::UNSPECIFIED
        } else {
            fwd.saddr
        },
        flags: 0,
        ..*entry
    }
}

/// The forward entry that belongs to reply entry `entry` of `rev`.
#[inline(always)]
pub fn forward_entry<A: IpAddress>(rev: &FlowKeyOf<A>, entry: &CtEntryOf<A>) -> CtEntryOf<A> {
    CtEntryOf {
        nat_addr: rev.saddr,
        nat_port: rev.sport,
        alt_port: if entry.alt_port != 0 { rev.dport } else { 0 },
        alt_addr: if entry.alt_addr.is_unspecified() {
            A::UNSPECIFIED
        } else {
            rev.daddr
        },
        flags: 0,
        ..*entry
    }
}

/// The forward entry `fwd` found at `fkey`, the forward key of reply entry `rkey`, if it is
/// that reply entry's flow; `CtEntry::ZERO` if there is none or it has moved on to another
/// tuple (its client port reopened towards another backend, or the flow rebalanced). The
/// reply entry's flow is then over on the client's side, and its state is the reply entry's
/// own: a newer flow's state must not keep the old tuple held.
#[inline(always)]
pub fn holder<A: IpAddress>(
    fkey: &FlowKeyOf<A>,
    fwd: &CtEntryOf<A>,
    rkey: &FlowKeyOf<A>,
) -> CtEntryOf<A> {
    if holds(fkey, fwd, rkey) {
        *fwd
    } else {
        CtEntryOf::ZERO
    }
}

/// Whether forward entry `fwd` at `fkey` is a flow whose backend-side tuple is `rkey`
/// ([`holder`]'s test, without building the reply key).
#[inline(always)]
pub fn holds<A: IpAddress>(fkey: &FlowKeyOf<A>, fwd: &CtEntryOf<A>, rkey: &FlowKeyOf<A>) -> bool {
    fwd.backend_id != 0
        && fwd.nat_addr == rkey.saddr
        && backend_side_addr(fkey, fwd) == rkey.daddr
        && fwd.nat_port == rkey.sport
        && backend_side_port(fkey, fwd) == rkey.dport
        && fkey.proto == rkey.proto
}

/// Whether reply entry `rev` at `rkey` is the reply side of the forward flow `fwd`.
#[inline(always)]
pub fn is_reply_of<A: IpAddress>(
    rkey: &FlowKeyOf<A>,
    rev: &CtEntryOf<A>,
    fwd: &FlowKeyOf<A>,
) -> bool {
    let client_port = if rev.alt_port != 0 {
        rev.alt_port
    } else {
        rkey.dport
    };
    let client_addr = if rev.alt_addr.is_unspecified() {
        rkey.daddr
    } else {
        rev.alt_addr
    };
    rev.nat_addr == fwd.daddr
        && rev.nat_port == fwd.dport
        && client_addr == fwd.saddr
        && client_port == fwd.sport
}

/// ClientIP session affinity per service port and client address, of either family.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKeyOf<A> {
    pub svc_id: u32,
    pub client: A,
}

/// Key of `KP_AFFINITY`.
pub type AffinityKey = AffinityKeyOf<u32>;
/// Key of `KP_AFFINITY6`.
pub type AffinityKey6 = AffinityKeyOf<In6Addr>;

/// Value of `KP_AFFINITY`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AffinityValue {
    pub last_seen_ns: u64,
    pub backend_id: u32,
    pub _pad: u32,
}

/// Key of `KP_FRAGS`: one fragmented IPv4 datagram.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub saddr: u32,
    pub daddr: u32,
    /// IP identification (network byte order).
    pub id: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Key of `KP_FRAGS6`: one fragmented IPv6 packet (its Fragment header's identification).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragKey6 {
    pub saddr: In6Addr,
    pub daddr: In6Addr,
    /// Fragment header identification (network byte order).
    pub id: u32,
    pub proto: u8,
    pub _pad0: u8,
    pub _pad1: u16,
}

/// Value of `KP_FRAGS` and `KP_FRAGS6`: the ports the first fragment carried, so later fragments (which have no
/// L4 header) are translated like the first one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragPorts {
    pub sport: u16,
    pub dport: u16,
}

const _: () = assert!(size_of::<FlowKey>() == 16);
const _: () = assert!(size_of::<FragKey>() == 12);
const _: () = assert!(size_of::<FragPorts>() == 4);
const _: () = assert!(size_of::<CtEntry>() == 32);
const _: () = assert!(size_of::<AffinityKey>() == 8);
const _: () = assert!(size_of::<AffinityValue>() == 16);
const _: () = assert!(size_of::<FlowKey6>() == 40);
const _: () = assert!(size_of::<CtEntry6>() == 56);
const _: () = assert!(size_of::<AffinityKey6>() == 20);
const _: () = assert!(size_of::<FragKey6>() == 40);
