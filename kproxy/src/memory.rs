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
    set_allocator(
        libc::M_MMAP_THRESHOLD,
        1 << 20,
        "glibc refused the mmap threshold; freed large blocks may stay resident",
    );
}

/// At most two heaps (glibc's arenas): the loop's thread and the runtime's worker each
/// keep one, and the blocking threads (a conntrack collection every 10 s, the socket sweep,
/// the verifier's) share them instead of each growing a heap of its own, whose freed pages
/// glibc keeps resident apart from the others. At 100,000 Services, alternated on one bed
/// with glibc's default (up to 16 arenas on two CPUs), a run's peak was 185.7-193.4 MiB
/// against 190.8-198.1 MiB, the start within the bed's spread (README, "Where the peak lies").
pub fn share_two_arenas() {
    #[cfg(target_env = "gnu")]
    set_allocator(
        libc::M_ARENA_MAX,
        2,
        "glibc refused the arena limit; each thread may keep a heap",
    );
}

/// Sets glibc's allocator parameter `param` to `value`, saying `refused` if it will not.
/// Called before the runtime starts any thread.
#[cfg(target_env = "gnu")]
fn set_allocator(param: libc::c_int, value: libc::c_int, refused: &str) {
    // SAFETY: mallopt only sets an allocator parameter.
    if unsafe { libc::mallopt(param, value) } != 1 {
        tracing::warn!("{refused}");
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
