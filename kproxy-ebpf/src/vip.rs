//! Packets addressed to a VIP that the datapath leaves untranslated: each way this can
//! happen has its own counter, so nothing meant for a service disappears without a trace.

use kproxy_common::stats::Counter;

use crate::{lb::Action, maps::KP_VIPS, stats};

/// Whether some frontend uses `addr` as its VIP.
#[inline(always)]
pub fn is_vip(addr: u32) -> bool {
    // SAFETY: only tested for presence.
    unsafe { KP_VIPS.get(addr) }.is_some()
}

/// Passes the packet; counts `why` if it was addressed to a VIP.
#[inline(always)]
pub fn pass_if_vip(daddr: Option<u32>, why: Counter) -> Action {
    if daddr.is_some_and(is_vip) {
        stats::count(why);
    }
    Action::Pass
}

/// Drops the packet for reason `why` if it was addressed to a VIP (nothing could serve it
/// and it must not leave untranslated); passes anything else.
#[inline(always)]
pub fn drop_if_vip(daddr: Option<u32>, why: Counter) -> Action {
    if daddr.is_some_and(is_vip) {
        stats::count(why);
        return Action::Drop;
    }
    Action::Pass
}
