//! Maglev consistent hashing in the datapath: a service port's table (`KP_MAGLEV`) maps a
//! hash of the flow to a backend id. The agent builds the table from the backends' addresses
//! alone (`kproxy::model::maglev`), and the hash reads the packet alone, so every node picks
//! the same backend for a flow, and picks it again after the flow's conntrack entry is lost.

use core::mem::size_of;

use crate::{addr::In6Addr, ct::FlowKeyOf};

/// Entries per `KP_MAGLEV` value: a table of M entries is cut into `chunks(M)` values,
/// so its map needs no value size per table size, and a 4 KiB value is one page.
pub const MAGLEV_CHUNK: u32 = 1024;

/// Values a table of `table_size` entries takes.
#[inline(always)]
pub const fn chunks(table_size: u32) -> u32 {
    table_size.div_ceil(MAGLEV_CHUNK)
}

/// Key of `KP_MAGLEV`: one chunk of a service port's table in one slot bank (the table is
/// written to the inactive bank with the slots, and published with them).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MaglevKey {
    pub svc_id: u32,
    /// The table's size M. Part of the key: programs loaded with another M never read a
    /// table built for this one (they fall back to round robin until theirs is written).
    pub table_size: u32,
    pub chunk: u16,
    pub bank: u8,
    pub _pad: u8,
}

impl MaglevKey {
    #[inline(always)]
    pub const fn new(svc_id: u32, table_size: u32, bank: u8, chunk: u16) -> Self {
        Self {
            svc_id,
            table_size,
            chunk,
            bank,
            _pad: 0,
        }
    }
}

/// Value of `KP_MAGLEV`: backend ids of `MAGLEV_CHUNK` consecutive entries (the last chunk
/// of a table is filled up with its first entries again, never read).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevChunk {
    pub backend_ids: [u32; MAGLEV_CHUNK as usize],
}

/// An address as the flow hash reads it: its 32-bit words in host order.
pub trait HashedAddr: Copy {
    fn hash_into(self, h: u32) -> u32;
}

impl HashedAddr for u32 {
    /// An IPv4 address in network byte order, as packets and map keys hold it.
    #[inline(always)]
    fn hash_into(self, h: u32) -> u32 {
        mix(h, u32::from_be(self))
    }
}

impl HashedAddr for In6Addr {
    #[inline(always)]
    fn hash_into(self, h: u32) -> u32 {
        let h = mix(h, u32::from_be(self.0[0]));
        let h = mix(h, u32::from_be(self.0[1]));
        let h = mix(h, u32::from_be(self.0[2]));
        mix(h, u32::from_be(self.0[3]))
    }
}

/// Fixed seed: the hash must be the same on every node and in every release.
const SEED: u32 = 0x6b70_6d67;

/// One MurmurHash3 round (x86_32).
#[inline(always)]
const fn mix(h: u32, word: u32) -> u32 {
    let k = word
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

/// MurmurHash3's finaliser: every input bit reaches every output bit.
#[inline(always)]
const fn finish(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The hash of a flow by its addresses and ports (network byte order, as in the packet) and
/// protocol: which table entry picks its backend is `flow_hash(..) % M`.
#[inline(always)]
pub fn flow_hash<A: HashedAddr>(saddr: A, daddr: A, sport: u16, dport: u16, proto: u8) -> u32 {
    let h = daddr.hash_into(saddr.hash_into(SEED));
    let ports = (u32::from(u16::from_be(sport)) << 16) | u32::from(u16::from_be(dport));
    finish(mix(mix(h, ports), u32::from(proto)))
}

impl<A: HashedAddr> FlowKeyOf<A> {
    /// `flow_hash` of this flow (a client's key: towards the frontend).
    #[inline(always)]
    pub fn maglev_hash(&self) -> u32 {
        flow_hash(self.saddr, self.daddr, self.sport, self.dport, self.proto)
    }
}

const _: () = assert!(size_of::<MaglevKey>() == 12);
const _: () = assert!(size_of::<MaglevChunk>() == 4096);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_fixed_across_builds_and_nodes() {
        // Values computed once: a change here moves every Maglev flow of a mixed-version
        // cluster to another backend.
        let v4 = flow_hash(
            u32::from_be_bytes([198, 18, 0, 1]).to_be(),
            u32::from_be_bytes([198, 19, 0, 10]).to_be(),
            40_000u16.to_be(),
            80u16.to_be(),
            6,
        );
        let v6 = flow_hash(
            In6Addr::from_octets([0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
            In6Addr::from_octets([0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]),
            40_000u16.to_be(),
            80u16.to_be(),
            17,
        );
        assert_eq!((v4, v6), (3_359_517_401, 2_680_421_589));
    }

    #[test]
    fn every_field_changes_the_hash() {
        let base = (1u32.to_be(), 2u32.to_be(), 3u16.to_be(), 4u16.to_be(), 6u8);
        let h = |(s, d, sp, dp, p): (u32, u32, u16, u16, u8)| flow_hash(s, d, sp, dp, p);
        let of = h(base);
        assert_ne!(of, h((5u32.to_be(), base.1, base.2, base.3, base.4)));
        assert_ne!(of, h((base.0, 5u32.to_be(), base.2, base.3, base.4)));
        assert_ne!(of, h((base.0, base.1, 5u16.to_be(), base.3, base.4)));
        assert_ne!(of, h((base.0, base.1, base.2, 5u16.to_be(), base.4)));
        assert_ne!(of, h((base.0, base.1, base.2, base.3, 17)));
        // Source and destination are not interchangeable.
        assert_ne!(of, h((base.1, base.0, base.2, base.3, base.4)));
    }

    #[test]
    fn a_table_of_m_entries_takes_enough_chunks() {
        assert_eq!(chunks(16_381), 16);
        assert_eq!(chunks(1024), 1);
        assert_eq!(chunks(1031), 2);
        assert_eq!(chunks(65_521), 64);
    }
}
