//! The agent's hold on the allocator: what glibc keeps resident after the agent has freed
//! it. At 100,000 Services the first view leaves tens of megabytes of freed pages in the
//! middle of the heap (list pages decoded and dropped between the objects the model keeps),
//! where glibc neither reuses them soon nor gives them back by itself: it returns only the
//! top of the heap.

use std::time::Instant;

/// Blocks of a mebibyte or more come from their own mappings and go back to the kernel
/// when freed. glibc starts there too (at 128 KiB) but raises the threshold to the size of
/// each mapped block freed, up to 32 MiB: after the first drift check, its snapshot's
/// vectors (several megabytes each at 100,000 Services) came from the heap, which kept the
/// pages after they were freed; every later transient (the next check, a scrape) then
/// added to the agent's resident memory. Fixed (at 128 KiB, by glibc's tunable, by hand),
/// the peak of a 100,000-Service benchmark run fell from 281 to 265 MiB.
pub fn return_large_blocks_at_once() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallopt only sets an allocator parameter; called before the runtime
        // starts any thread.
        if unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20) } != 1 {
            tracing::warn!(
                "glibc refused the mmap threshold; freed large blocks may stay resident"
            );
        }
    }
}

/// Gives the kernel back every whole free page of the heap (glibc's `malloc_trim`, which
/// unlike the automatic trim also releases free pages below the top). Called after work
/// that frees much at once (a part of the first view, a large sync, a drift check): the
/// pages come back only as allocations reach them again.
pub fn return_free_pages(after: &str) {
    #[cfg(target_env = "gnu")]
    {
        let started = Instant::now();
        // SAFETY: malloc_trim takes the allocator's locks like any allocation.
        let released = unsafe { libc::malloc_trim(0) } == 1;
        tracing::debug!(
            after,
            released,
            took_us = started.elapsed().as_micros(),
            "free heap pages returned to the kernel"
        );
    }
    #[cfg(not(target_env = "gnu"))]
    let _ = (after, Instant::now);
}

/// What the agent's process has cost so far: its CPU time (all threads, user and system) and
/// the pages it faulted in. Logged when it becomes ready: a start's cost in CPU is steadier
/// than its duration, which the rest of the node's load moves.
#[derive(Clone, Copy, Debug, Default)]
pub struct Spent {
    pub cpu_ms: u64,
    pub minor_faults: u64,
}

impl Spent {
    pub fn so_far() -> Self {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage writes the struct it is given, for this process.
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } != 0 {
            return Self::default();
        }
        // SAFETY: zeroed and then written by the kernel: every field is an integer.
        let usage = unsafe { usage.assume_init() };
        let ms = |t: libc::timeval| {
            u64::try_from(t.tv_sec).unwrap_or(0) * 1000
                + u64::try_from(t.tv_usec).unwrap_or(0) / 1000
        };
        Self {
            cpu_ms: ms(usage.ru_utime) + ms(usage.ru_stime),
            minor_faults: u64::try_from(usage.ru_minflt).unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Spent;

    #[test]
    fn spent_counts_this_process_cpu_and_faults() {
        let before = Spent::so_far();
        // Fresh pages, each written once: each is a minor fault (no huge pages for a
        // mapping this size unless asked for).
        let pages = 1024;
        let mut memory = vec![0u8; pages * 4096];
        for page in memory.chunks_mut(4096) {
            page[0] = 1;
        }
        std::hint::black_box(&memory);
        let faulted = Spent::so_far();
        assert!(
            faulted.minor_faults >= before.minor_faults + pages as u64 / 2,
            "{before:?} then {faulted:?} after writing {pages} fresh pages"
        );
        // Spin until the CPU time moves (the clock's resolution is a tick at most).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut x = 0u64;
        while Spent::so_far().cpu_ms < faulted.cpu_ms + 20 {
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            assert!(
                std::time::Instant::now() < deadline,
                "5 s of spinning counted no 20 ms of CPU: {faulted:?}, {:?}",
                Spent::so_far()
            );
        }
    }
}
