//! Packets addressed to a VIP that the datapath leaves untranslated: each way this can
//! happen has its own counter, so nothing meant for a service disappears without a trace.

use kproxy_common::stats::Counter;

use crate::{family::Family, lb::Action, stats};

/// Whether some frontend uses `addr` as its VIP.
#[inline(always)]
pub fn is_vip<F: Family>(addr: F::Addr) -> bool {
    // SAFETY: only tested for presence.
    unsafe { F::vips().get(addr) }.is_some()
}

/// Passes the packet; counts `why` if it was addressed to a VIP.
#[inline(always)]
pub fn pass_if_vip<F: Family>(daddr: Option<F::Addr>, why: Counter) -> Action {
    if daddr.is_some_and(is_vip::<F>) {
        stats::count(why);
    }
    Action::Pass
}

/// Drops the packet for reason `why` if it was addressed to a VIP (nothing could serve it
/// and it must not leave untranslated); passes anything else.
#[inline(always)]
pub fn drop_if_vip<F: Family>(daddr: Option<F::Addr>, why: Counter) -> Action {
    if daddr.is_some_and(is_vip::<F>) {
        stats::count(why);
        return Action::Drop;
    }
    Action::Pass
}
