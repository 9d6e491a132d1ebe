//! Reads of `KP_FILTER`: whether a frontend or reply lookup can find anything at all (see
//! `kproxy_common::filter`). An array lookup, inlined by the verifier, against the hash
//! lookup it saves.

use core::sync::atomic::{AtomicU64, Ordering};

use kproxy_common::filter::{CLIENTS_READY, backend_bit, client_bit, frontend_bit};

use crate::{
    family::Family,
    maps::{KP_CLIENTS, KP_FILTER},
};

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

/// Whether a reply entry may have `addr` as its destination: its bit is set, or the bitmap
/// is not complete yet (see `kproxy_common::filter::CLIENT_WORDS`).
#[inline(always)]
pub fn may_be_client<F: Family>(addr: F::Addr) -> bool {
    let (entry, bit) = client_bit(addr);
    KP_CLIENTS.get(entry).is_none_or(|word| word & bit != 0)
        || KP_CLIENTS
            .get(CLIENTS_READY)
            .is_none_or(|ready| *ready == 0)
}

/// Sets the bit of reply-entry destination `addr`, before the entry is inserted. An atomic
/// OR, taken only when the bit is clear: set, its word is only read, and stays shared in
/// every CPU's cache.
#[inline(always)]
pub fn mark_client<F: Family>(addr: F::Addr) {
    let (entry, bit) = client_bit(addr);
    let Some(word) = KP_CLIENTS.get_ptr_mut(entry) else {
        return;
    };
    // SAFETY: an array element: 8-byte aligned, never freed while the map lives; the agent
    // writes the map only by atomic ORs as well.
    unsafe {
        if *word & bit == 0 {
            AtomicU64::from_ptr(word).fetch_or(bit, Ordering::SeqCst);
        }
    }
}
