//! What `memory::return_free_pages` gives back, measured in a test binary of its own (one
//! thread, one arena): a heap left with freed blocks between the ones still in use, as a
//! first view leaves it (list pages decoded, converted and dropped between what the model
//! keeps), stays resident until the free pages are returned.

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages in statm");
    // SAFETY: sysconf only reads a constant of the system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).expect("page size")
}

#[test]
fn freed_pages_between_kept_blocks_go_back_to_the_kernel() {
    const BLOCK: usize = 512;
    const BLOCKS: usize = 128 * 1024; // 64 MiB of small blocks, in the heap
    let mut blocks: Vec<Box<[u8]>> = (0..BLOCKS)
        .map(|i| vec![u8::try_from(i % 251).expect("small"); BLOCK].into_boxed_slice())
        .collect();
    // Keep one block in 64: every page of the heap but a few is free, and no free stretch
    // reaches the top of the heap, which glibc would trim by itself.
    let mut kept = Vec::with_capacity(BLOCKS / 64);
    for (i, block) in blocks.drain(..).enumerate() {
        if i % 64 == 0 {
            kept.push(block);
        }
    }
    let before = resident_bytes();
    kproxy::memory::return_free_pages("test");
    let after = resident_bytes();
    assert!(
        before - after.min(before) > 40 << 20,
        "freed pages stay resident: {} MiB before, {} MiB after",
        before >> 20,
        after >> 20
    );
    // What was kept is intact.
    assert!(
        kept.iter()
            .enumerate()
            .all(|(i, b)| b.iter().all(|&x| usize::from(x) == (i * 64) % 251))
    );
}
