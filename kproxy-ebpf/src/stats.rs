//! Per-CPU counters. No locks and no shared cache lines: each CPU bumps its own copy and the
//! agent sums them when it reads.

use aya_ebpf::bindings::BPF_NOEXIST;
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
    match KP_BE_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU value of this CPU.
        Some(b) => unsafe { (*b).new_flows += 1 },
        // The first flow of a backend creates its counters (this CPU's copy starts at 1, the
        // others at 0), which spares the agent a map write per backend. If another CPU
        // creates them at the same moment, this one count is lost.
        None => {
            let _ = KP_BE_STATS.insert(
                backend_id,
                BackendStats { new_flows: 1 },
                u64::from(BPF_NOEXIST),
            );
        }
    }
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
