//! Reads of `KP_FILTER`: whether a frontend or reply lookup can find anything at all (see
//! `kproxy_common::filter`). An array lookup, inlined by the verifier, against the hash
//! lookup it saves.

use kproxy_common::filter::{backend_bit, frontend_bit};

use crate::{family::Family, maps::KP_FILTER};

/// Whether `(entry, bit)` is set; an entry the map cannot give says "maybe".
#[inline(always)]
fn maybe((entry, bit): (u32, u64)) -> bool {
    KP_FILTER.get(entry).is_none_or(|word| word & bit != 0)
}

/// Whether some frontend may have `addr` as its own address (a VIP).
#[inline(always)]
pub fn may_be_frontend<F: Family>(addr: F::Addr) -> bool {
    maybe(frontend_bit(addr))
}

/// Whether `addr`:`port` may be a backend some flow was sent to: only then can a packet
/// from it be a reply to translate.
#[inline(always)]
pub fn may_be_backend<F: Family>(addr: F::Addr, port: u16) -> bool {
    maybe(backend_bit(addr, port))
}
