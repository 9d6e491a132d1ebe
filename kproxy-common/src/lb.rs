//! Service lookup types: frontends (VIP:port/protocol), backend slots, backends.
//!
//! Addresses and ports are stored in network byte order, exactly as they appear in packets,
//! so the datapath compares and copies them without swapping bytes.
//!
//! A service's backend set changes atomically. A service port with at most `INLINE_SLOTS`
//! backends holds their ids in its service value; a larger one has its slots in `KP_SLOTS`,
//! in two banks: the agent writes the new set into the inactive bank and then flips
//! `ServiceValue::bank` and `count`. Either way one map update publishes the set (a hash map
//! update replaces the whole value, readers see old or new, never a mix).

use core::mem::size_of;

use crate::addr::In6Addr;

/// One service port as clients address it, in either family.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKeyOf<A> {
    /// Virtual address (network byte order).
    pub addr: A,
    /// Service port (network byte order).
    pub port: u16,
    /// IP protocol number (`IPPROTO_TCP`, `IPPROTO_UDP`).
    pub proto: u8,
    /// `SCOPE_*`: which clients this entry serves.
    pub scope: u8,
}

/// Key of `KP_SERVICES`.
pub type ServiceKey = ServiceKeyOf<u32>;
/// Key of `KP_SERVICES6`: the IPv6 frontends, whose values are `ServiceValue`s like the
/// IPv4 ones (service port ids, slots and counters are shared by both families).
pub type ServiceKey6 = ServiceKeyOf<In6Addr>;

/// `ServiceKey::addr` of a NodePort: the frontend answers on every node address marked
/// `NODE_ADDR_F_NODEPORT` in `KP_NODE_ADDRS` (0.0.0.0 is never a VIP). IPv6 NodePorts use
/// `::` the same way (`IpAddress::UNSPECIFIED`).
pub const NODEPORT_ADDR: u32 = 0;

/// `KP_FREE_PORTS` words: one bit per port, 64 to a word.
pub const FREE_PORT_WORDS: u32 = 65_536 / 64;

/// `KP_FREE_PORTS`'s word and bit of a port as `ServiceKey::port` has it (network byte
/// order, used as it is). A set bit says no NodePort entry has this port, in any protocol or
/// scope: a packet to it need not look one up. A clear bit only says one may: the map
/// starts cleared, and the agent clears a bit before it writes a NodePort entry on its port
/// and sets it only after the port's last one is gone, so every reader that skips a lookup
/// is right to. A word is rewritten whole, but its other bits keep their value in every
/// byte, so a torn read cannot flip them.
#[inline(always)]
pub const fn free_port_bit(port: u16) -> (u32, u64) {
    ((port / 64) as u32, 1 << (port % 64))
}

/// The frontend as every client reaches it.
pub const SCOPE_ALL: u8 = 0;
/// The same frontend for clients on this node (its pods, as local-traffic detection says,
/// and the node itself) when the `SCOPE_ALL` entry has `SVC_F_EXT_LOCAL`: kube-proxy sends
/// their traffic to an externalTrafficPolicy Local Service cluster-wide.
pub const SCOPE_INTERNAL: u8 = 1;

/// Value of `KP_SERVICES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceValue {
    /// Service port id: index into `KP_RR` and `KP_SVC_STATS`, first half of `SlotKey`.
    pub id: u32,
    /// Number of backends taking new connections (slots `0..count`, in `inline` or in the
    /// active bank); 0 means "reject (or with `SVC_F_DROP_EMPTY`, drop) new connections".
    pub count: u16,
    /// `SVC_F_*` bits.
    pub flags: u8,
    /// Active slot bank (0 or 1): of `KP_SLOTS` and of the Maglev table.
    pub bank: u8,
    /// ClientIP session affinity timeout in seconds (used with `SVC_F_AFFINITY`).
    pub affinity_timeout_s: u32,
    /// The backend ids of slots `0..count` when `count <= INLINE_SLOTS` (zero beyond
    /// `count`); unused, zero, when the slots are in `KP_SLOTS`.
    pub inline: [u32; INLINE_SLOTS],
}

/// Slots a service value holds itself. Most Services have a few endpoints: at 100,000
/// Services of three, `KP_SLOTS` entries were 300,000 of the 800,000 entries a start
/// writes, each a kernel allocation (0.7 µs, `docs/htab-insert-cost.py`), and every new flow
/// looked one up.
pub const INLINE_SLOTS: usize = 4;

impl ServiceValue {
    /// Whether the value holds its slots itself (`inline`) rather than in `KP_SLOTS`.
    #[inline(always)]
    pub const fn slots_inline(&self) -> bool {
        slots_inline(self.count as usize)
    }

    /// The backend id in slot `index` when the value holds its slots itself (`None` past
    /// `count`); `None` when they are in `KP_SLOTS`.
    #[inline(always)]
    pub fn inline_slot(&self, index: u32) -> Option<u32> {
        if !self.slots_inline() || index >= u32::from(self.count) {
            return None;
        }
        Some(self.inline_id(index))
    }

    /// The id in `inline[index]` (0 for an index past them), picked by arithmetic alone.
    /// For the BPF verifier: an index into the array is an offset it must bound, which makes
    /// it track the count the index came from exactly, and a branch per slot is a path
    /// each; either way the paths after a new flow's choice were walked again for each
    /// (over 150,000 instructions for the IPv4 program instead of 137,000).
    #[inline(always)]
    pub fn inline_id(&self, index: u32) -> u32 {
        let mut id = 0;
        let mut k = 0u32;
        while (k as usize) < INLINE_SLOTS {
            // 1 when `index == k`, else 0: `index ^ k` is 0 only then, and 0 - 1 alone
            // sets the top bit (both are far below 2^31).
            let hit = (index ^ k).wrapping_sub(1) >> 31;
            id |= self.inline[k as usize] & 0u32.wrapping_sub(hit);
            k += 1;
        }
        id
    }
}

/// Whether a service port with `count` backends has them in its service value.
#[inline(always)]
pub const fn slots_inline(count: usize) -> bool {
    count <= INLINE_SLOTS
}

/// The `inline` field of a service value whose backends are `ids` (all zero when there are
/// more than `INLINE_SLOTS` of them: they go to `KP_SLOTS`).
pub fn inline_slots(ids: impl ExactSizeIterator<Item = u32>) -> [u32; INLINE_SLOTS] {
    let mut inline = [0; INLINE_SLOTS];
    if slots_inline(ids.len()) {
        for (slot, id) in inline.iter_mut().zip(ids) {
            *slot = id;
        }
    }
    inline
}

/// ClientIP session affinity is on for this service port.
pub const SVC_F_AFFINITY: u8 = 1 << 0;
/// With no backends, drop new connections silently instead of rejecting them: the service
/// has endpoints, just none this node may use (kube-proxy's DROP for traffic policy Local).
pub const SVC_F_DROP_EMPTY: u8 = 1 << 1;
/// A NodePort, load-balancer IP or external IP (not a cluster IP): new flows are
/// masqueraded to a node address unless the frontend has `SVC_F_EXT_LOCAL` (kube-proxy's
/// externalTrafficPolicy Cluster), and `--masquerade-all` / local-traffic detection do not
/// apply to it.
pub const SVC_F_EXTERNAL: u8 = 1 << 2;
/// externalTrafficPolicy Local: external clients keep their address and get this entry's
/// (node-local) backends; clients on this node get the `SCOPE_INTERNAL` entry of the same
/// frontend instead.
pub const SVC_F_EXT_LOCAL: u8 = 1 << 3;
/// loadBalancerSourceRanges: new flows only from sources `KP_SOURCE_RANGES` lists for this
/// service port id; others are dropped (`drop_source_range`).
pub const SVC_F_SOURCE_RANGES: u8 = 1 << 4;
/// New flows pick their backend from the service port's Maglev table (`KP_MAGLEV`, of the
/// active bank) by a hash of the flow, rather than in turn: the same flow gets the same
/// backend on every node and after its conntrack entry is lost.
pub const SVC_F_MAGLEV: u8 = 1 << 5;

/// Key of `KP_SLOTS`: the n-th backend of a service port in one bank.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotKey {
    pub svc_id: u32,
    /// `bank << SLOT_BANK_SHIFT | index`.
    pub slot: u32,
}

pub const SLOT_BANK_SHIFT: u32 = 16;
/// `ServiceValue::count` is a u16; the bank bit sits above the index.
pub const MAX_BACKENDS_PER_SERVICE: u32 = u16::MAX as u32;

impl SlotKey {
    #[inline(always)]
    pub const fn new(svc_id: u32, bank: u8, index: u32) -> Self {
        Self {
            svc_id,
            slot: ((bank as u32) << SLOT_BANK_SHIFT) | index,
        }
    }
}

/// Value of `KP_BACKENDS` and `KP_BACKENDS6` (key: backend id, a `u32` never reused, see
/// `meta::Meta`, and shared by both families: an id is in one of the two maps).
/// A backend id names one endpoint *of one service port*, so "the id still exists" also means
/// "the endpoint is still listed for that service port" when conntrack or affinity refer to it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendOf<A> {
    /// Endpoint address (network byte order).
    pub addr: A,
    /// Endpoint port (network byte order).
    pub port: u16,
    /// `BE_F_*` bits.
    pub flags: u8,
    pub _pad: u8,
    /// The service port id the backend belongs to: lets a restarted agent tell which
    /// frontend a backend that is listed but not in use (no slot names it) belongs to.
    pub svc_id: u32,
}

/// The backend takes new connections: it is in its service port's active slot bank.
/// Without it the endpoint is still listed (not ready, terminating, or not for this node):
/// established TCP flows keep it, UDP flows and affinities move to an active one, as
/// kube-proxy's conntrack cleanup moves UDP flows off endpoints it stopped using.
pub const BE_F_ACTIVE: u8 = 1 << 0;

/// Value of `KP_BACKENDS`.
pub type Backend = BackendOf<u32>;
/// Value of `KP_BACKENDS6`.
pub type Backend6 = BackendOf<In6Addr>;

impl<A> BackendOf<A> {
    #[inline(always)]
    pub const fn is_active(&self) -> bool {
        self.flags & BE_F_ACTIVE != 0
    }
}

/// Key of `KP_SOURCE_RANGES` (an LPM trie): the service port id is always matched whole,
/// so a key's prefix length is `32 + ` the CIDR's.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceRangeKey {
    /// Service port id (big-endian, so the trie compares it byte by byte like the address).
    pub svc_id_be: u32,
    /// Source address (network byte order).
    pub addr: u32,
}

/// Key of `KP_SOURCE_RANGES6`: `SourceRangeKey` for IPv6 sources (prefix length `32 + ` the
/// CIDR's).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceRangeKey6 {
    pub svc_id_be: u32,
    pub addr: In6Addr,
}

/// Prefix length of `SourceRangeKey::svc_id_be`.
pub const SOURCE_RANGE_ID_BITS: u32 = 32;

const _: () = assert!(size_of::<ServiceKey>() == 8);
const _: () = assert!(size_of::<SourceRangeKey>() == 8);
const _: () = assert!(size_of::<ServiceValue>() == 12 + 4 * INLINE_SLOTS);
const _: () = assert!(size_of::<SlotKey>() == 8);
const _: () = assert!(size_of::<Backend>() == 12);
const _: () = assert!(size_of::<ServiceKey6>() == 20);
const _: () = assert!(size_of::<Backend6>() == 24);
const _: () = assert!(size_of::<SourceRangeKey6>() == 20);

#[cfg(test)]
mod tests {
    use super::*;

    fn value(count: u16, inline: [u32; INLINE_SLOTS]) -> ServiceValue {
        ServiceValue {
            id: 1,
            count,
            flags: 0,
            bank: 0,
            affinity_timeout_s: 0,
            inline,
        }
    }

    #[test]
    fn a_value_holds_up_to_four_backends_and_names_each_at_its_slot() {
        let ids = [11, 12, 13, 14, 15];
        for count in 0..=ids.len() {
            let inline = inline_slots(ids[..count].iter().copied());
            let v = value(u16::try_from(count).expect("small"), inline);
            let held = count <= INLINE_SLOTS;
            assert_eq!(v.slots_inline(), held, "{count} backends");
            for index in 0..=u32::try_from(INLINE_SLOTS).expect("small") {
                let want = (held && (index as usize) < count).then(|| ids[index as usize]);
                assert_eq!(v.inline_slot(index), want, "{count} backends, slot {index}");
            }
            if !held {
                assert_eq!(inline, [0; INLINE_SLOTS], "{count} backends go to KP_SLOTS");
            }
        }
    }

    #[test]
    fn the_arithmetic_pick_is_the_indexed_one() {
        let v = value(4, [0xdead_beef, 1, u32::MAX, 0x8000_0000]);
        for index in 0..4u32 {
            assert_eq!(v.inline_id(index), v.inline[index as usize], "slot {index}");
        }
        assert_eq!(v.inline_id(4), 0, "past the slots");
    }
}
