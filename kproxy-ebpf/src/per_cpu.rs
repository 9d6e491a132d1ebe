//! Per-service-port values kept once per CPU in a plain array: a region of
//! `KP_MAX_SERVICES` elements for each CPU, so each CPU writes only its own cache lines (as
//! with a per-CPU array, which the kernel is far slower to create: see `maps::KP_RR`).

use aya_ebpf::helpers::bpf_get_smp_processor_id;

/// Load-time constant (`names::GLOBAL_MAX_SERVICES`): the agent's `--max-services`, above
/// every service port id, the length of each CPU's region.
#[unsafe(no_mangle)]
static KP_MAX_SERVICES: u32 = 65_536;

/// This CPU's element for service port `svc_id`. The agent hands out ids below
/// `KP_MAX_SERVICES` only; past the last CPU's region the lookup fails. (No branch for the
/// range: each one here is paid by the verifier at every counter of every path.)
#[inline(always)]
pub fn index(svc_id: u32) -> u32 {
    // SAFETY: a global of the object, read as the verifier sees it: a constant.
    let stride = unsafe { core::ptr::read_volatile(&raw const KP_MAX_SERVICES) };
    // SAFETY: a helper without arguments; programs do not migrate while they run.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    cpu.wrapping_mul(stride).wrapping_add(svc_id)
}
