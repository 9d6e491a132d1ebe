//! `KP_FILTER`: two bitmaps that let a packet which concerns no Service skip the hash
//! lookups it would otherwise miss in. A frontend lookup (`KP_SERVICES`, `KP_VIPS`) is
//! keyed by the destination, a reply lookup (`KP_CT_REV`) by the source; a packet that
//! needs neither (a socket-LB'd connection, pod-to-pod traffic) missed in both, and each
//! miss read a bucket of a table far larger than the cache: on the test bed, two thirds of
//! the TC program's time per such packet (see README, "Socket-level load balancing").
//!
//! One bit per hash of the key, in an array the verifier inlines: a clear bit proves the
//! lookup would miss, a set bit proves nothing (another key may share it). The agent sets
//! a key's bit before it writes the entry (frontends: their address; backends: their
//! address and port, which every reply entry of a flow to them has as its source) and
//! never clears one while it runs, so a bit is set whenever the entry or a reply entry made
//! from it may exist: a backend that is gone can still have flows whose replies need
//! translating. A word is rewritten whole, but its other bits keep their value in every
//! byte, so a torn read cannot clear one.

use crate::addr::IpAddress;

/// log2 of each bitmap's bits: 2^20 bits (128 KiB) keep 100,000 frontend addresses or
/// 300,000 backend endpoints at under a third of the bits set.
pub const FILTER_BITS_LOG2: u32 = 20;

/// 64-bit words of each bitmap.
pub const FILTER_WORDS: u32 = 1 << (FILTER_BITS_LOG2 - 6);

/// Which bitmap of `KP_FILTER`: its first word.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u32)]
pub enum Filter {
    /// Addresses of frontends (not NodePorts, which answer on the node's addresses).
    Frontends = 0,
    /// Backend endpoints: address and port.
    Backends = FILTER_WORDS,
}

/// Entries of `KP_FILTER`: both bitmaps.
pub const FILTER_ENTRIES: u32 = 2 * FILTER_WORDS;

/// The bit of `folded` (a key folded into 32 bits): the top bits of a multiplicative hash,
/// which spreads neighbouring addresses (a Service CIDR, a node's pod range) evenly.
#[inline(always)]
const fn bit_of(folded: u32) -> u32 {
    folded.wrapping_mul(0x9E37_79B1) >> (32 - FILTER_BITS_LOG2)
}

/// `KP_FILTER`'s entry and bit of frontend address `addr` (as map keys hold it).
#[inline(always)]
pub fn frontend_bit<A: IpAddress>(addr: A) -> (u32, u64) {
    place(Filter::Frontends, bit_of(addr.fold()))
}

/// `KP_FILTER`'s entry and bit of backend endpoint `addr`:`port` (both as map keys hold
/// them: network byte order).
#[inline(always)]
pub fn backend_bit<A: IpAddress>(addr: A, port: u16) -> (u32, u64) {
    let folded = addr.fold() ^ u32::from(port).wrapping_mul(0x85EB_CA6B);
    place(Filter::Backends, bit_of(folded))
}

/// `KP_CLIENTS`: one bit per hash of the destination address of every reply entry the
/// programs create (the client, or the address a flow was masqueraded to), and a last
/// entry, `CLIENTS_READY`, non-zero once the bits cover every reply entry. A reply lookup
/// is skipped only when both the backend's bit (`KP_FILTER`) and the client's are clear
/// while the map is ready: the replies of a socket-LB'd connection, whose client never
/// had a flow through the packet path, then cost two array reads instead of a hash lookup
/// that misses (a cache miss in a table of the conntrack's size).
///
/// The programs set a client's bit (an atomic OR, only when clear) before they insert a
/// reply entry, so a reply, which comes after its flow's first packet was sent on, finds
/// it set. The agent never writes a word whole, as it does `KP_FILTER`'s: it ORs bits in
/// through a shared mapping (the map is `BPF_F_MMAPABLE`), atomically beside the programs.
/// At start it clears `CLIENTS_READY` before attaching its programs (those of an agent
/// without this map, or a downgrade, made entries without bits), sets the bit of every
/// reply entry's destination once its programs are attached, and then marks the map
/// ready. Bits are never cleared while the map lives: a set bit only costs the lookup.
pub const CLIENT_WORDS: u32 = FILTER_WORDS;

/// The entry of `KP_CLIENTS` that says its bits are complete (non-zero).
pub const CLIENTS_READY: u32 = CLIENT_WORDS;

/// Entries of `KP_CLIENTS`: the bitmap and `CLIENTS_READY`.
pub const CLIENT_ENTRIES: u32 = CLIENT_WORDS + 1;

/// `KP_CLIENTS`'s entry and bit of a reply entry's destination `addr` (as map keys hold
/// it).
#[inline(always)]
pub fn client_bit<A: IpAddress>(addr: A) -> (u32, u64) {
    let bit = bit_of(addr.fold() ^ 0x5bd1_e995);
    (bit / 64, 1 << (bit % 64))
}

#[inline(always)]
const fn place(filter: Filter, bit: u32) -> (u32, u64) {
    (filter as u32 + bit / 64, 1 << (bit % 64))
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    #[test]
    fn bits_fall_in_their_own_bitmap() {
        for addr in [0u32, 1, 0xC612_0001, u32::MAX] {
            for port in [0u16, 80, 0x901F, u16::MAX] {
                let (word, bit) = frontend_bit(addr);
                assert!(word < FILTER_WORDS && bit.is_power_of_two());
                let (word, bit) = backend_bit(addr, port);
                assert!((FILTER_WORDS..FILTER_ENTRIES).contains(&word) && bit.is_power_of_two());
                let (word, bit) = client_bit(addr);
                assert!(word < CLIENTS_READY && bit.is_power_of_two());
            }
        }
    }

    #[test]
    fn a_service_range_spreads_over_the_bitmap() {
        // 10,000 consecutive addresses (a ClusterIP range) take nearly 10,000 bits: the
        // filter's worth rests on few keys sharing a bit.
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..10_000u32 {
            seen.insert(frontend_bit((0xC613_0000u32 + i).to_be()));
        }
        assert!(seen.len() > 9_900, "{} distinct bits", seen.len());
    }
}
