//! Per-CPU counters. No locks and no shared cache lines: each CPU bumps its own copy and the
//! agent sums them when it reads.

use kproxy_common::stats::{BackendStats, Counter};

use crate::{
    maps::{KP_BE_STATS, KP_STATS, KP_SVC_STATS},
    per_cpu,
};

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
    if let Some(s) = KP_SVC_STATS.get_ptr_mut(per_cpu::index(svc_id)) {
        // SAFETY: this CPU's element.
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
    if let Some(s) = KP_SVC_STATS.get_ptr_mut(per_cpu::index(svc_id)) {
        // SAFETY: this CPU's element.
        unsafe { (*s).new_flows += 1 };
    }
    backend(backend_id);
}

/// A packet of `bytes` translated towards backend `backend_id`. Its element exists from the
/// flow's first packet on (`count_new_flow`); a flow older than its backend's counters (the
/// map was full) goes uncounted rather than make every packet try an insert.
#[inline(always)]
pub fn count_backend_packet(backend_id: u32, bytes: u32) {
    if let Some(s) = KP_BE_STATS.get_ptr_mut(backend_id) {
        // SAFETY: this CPU's copy; see `backend` for the element handed on.
        unsafe {
            let owner = (*s).backend_id;
            if owner == backend_id || owner == 0 {
                (*s).backend_id = backend_id;
                (*s).packets += 1;
                (*s).bytes += u64::from(bytes);
            }
        }
    }
}

/// Counts a new flow on this CPU for backend `backend_id`.
///
/// The agent deletes a backend's element with the backend, and the hash may hand the freed
/// element to another key at once, even while a program holds a pointer to it. So a copy is
/// counted into only while it names this backend: the first count on a CPU claims it (copies
/// of CPUs that never counted are zero), and a copy naming another backend is one the
/// element was handed on with. What is left is the few instructions between the check and
/// the increment: a backend deleted and another created in that instant on another CPU gets
/// at most this one count. No lock is taken and no cache line is shared: the copy is this
/// CPU's.
#[inline(always)]
fn backend(backend_id: u32) {
    match KP_BE_STATS.get_ptr_mut(backend_id) {
        Some(s) => {
            // SAFETY: this CPU's copy; programs do not migrate while running.
            unsafe {
                let owner = (*s).backend_id;
                if owner == backend_id || owner == 0 {
                    (*s).backend_id = backend_id;
                    (*s).new_flows += 1;
                }
            }
        }
        None => {
            // The backend's first flow: the update writes this CPU's copy and zeroes the
            // others'; a CPU that updates an element another created meanwhile writes its
            // own copy in place.
            let _ = KP_BE_STATS.insert(
                backend_id,
                BackendStats {
                    backend_id,
                    _pad: 0,
                    new_flows: 1,
                    packets: 0,
                    bytes: 0,
                },
                0,
            );
        }
    }
}

/// A new connection to service port `svc_id` was refused: rejected, or dropped (the caller
/// counts the drop).
#[inline(always)]
pub fn count_refused(svc_id: u32) {
    if let Some(s) = KP_SVC_STATS.get_ptr_mut(per_cpu::index(svc_id)) {
        // SAFETY: this CPU's element.
        unsafe { (*s).rejected += 1 };
    }
}
