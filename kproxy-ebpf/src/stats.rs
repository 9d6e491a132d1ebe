//! Per-CPU counters. No locks and no shared cache lines: each CPU bumps its own copy and the
//! agent sums them when it reads.

use kproxy_common::stats::{BackendStats, Counter};

use crate::maps::{KP_BE_STATS, KP_STATS, KP_SVC_STATS};

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(stats) = KP_STATS.get_ptr_mut(0) {
        // SAFETY: per-CPU value of this CPU; programs do not migrate while running.
        unsafe { (*stats).counters[counter as usize] += 1 };
    }
}

/// A translated packet of service port `svc_id`.
#[inline(always)]
pub fn count_service_packet(svc_id: u32, bytes: u32) {
    if let Some(s) = KP_SVC_STATS.get_ptr_mut(svc_id) {
        // SAFETY: per-CPU value of this CPU.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += u64::from(bytes);
        }
    }
}

/// A new flow of service port `svc_id` went to backend `backend_id`.
#[inline(always)]
pub fn count_new_flow(svc_id: u32, backend_id: u32) {
    count(Counter::NewFlows);
    if let Some(s) = KP_SVC_STATS.get_ptr_mut(svc_id) {
        // SAFETY: per-CPU value of this CPU.
        unsafe { (*s).new_flows += 1 };
    }
    // Per-backend counters live in a hash whose elements the agent deletes with their backend
    // and the kernel may hand out again at once: never write through a pointer into one. A
    // per-CPU hash update from a program writes this CPU's copy of the element in place under
    // the bucket lock, so read-increment-update loses nothing (no other CPU writes this copy).
    // SAFETY: copied out at once.
    let counted = unsafe { KP_BE_STATS.get(backend_id) }.map_or(0, |b| b.new_flows);
    let _ = KP_BE_STATS.insert(
        backend_id,
        BackendStats {
            new_flows: counted + 1,
        },
        0,
    );
}

/// A new connection to service port `svc_id` was refused: rejected, or dropped (the caller
/// counts the drop).
#[inline(always)]
pub fn count_refused(svc_id: u32) {
    if let Some(s) = KP_SVC_STATS.get_ptr_mut(svc_id) {
        // SAFETY: per-CPU value of this CPU.
        unsafe { (*s).rejected += 1 };
    }
}
