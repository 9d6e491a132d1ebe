//! What `model::dense::Densify` saves, measured: a test binary of its own, whose allocator
//! counts the bytes live and their peak, so the B-tree's nodes can be weighed before and
//! after a rebuild (and the rebuild's own cost with them).

use std::{
    alloc::{GlobalAlloc, Layout, System},
    collections::BTreeMap,
    sync::atomic::{AtomicUsize, Ordering},
};

use kproxy::model::dense::Densify;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; only sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: the caller's layout, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: allocated above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// Shaped like a programmed frontend: a 24-byte key, a value of 152 bytes.
type Value = [u64; 19];

#[test]
fn a_map_filled_in_order_is_packed_without_a_second_copy() {
    const ENTRIES: usize = 100_000;
    let before = live();
    let mut map: BTreeMap<(u64, u64, u64), Value> = BTreeMap::new();
    let mut densify = Densify::default();
    for n in 0..ENTRIES as u64 {
        map.insert((n, 0, 0), [n; 19]);
        densify.inserted();
    }
    let filled = live() - before;
    PEAK.store(live(), Ordering::Relaxed);

    assert!(
        densify.settle(&mut map),
        "100,000 insertions call for a rebuild"
    );

    let packed = live() - before;
    let rebuilding = PEAK.load(Ordering::Relaxed) - before;
    let entry = std::mem::size_of::<((u64, u64, u64), Value)>();
    let raw = entry * ENTRIES;
    // In-order insertion leaves nodes a little over half full; a rebuild fills them.
    assert!(
        filled > raw * 17 / 10,
        "filled one by one: {filled} bytes for {raw} of entries"
    );
    assert!(
        packed < raw * 11 / 10,
        "rebuilt: {packed} bytes for {raw} of entries (was {filled})"
    );
    // Old nodes are freed as the new ones are built: never both trees, nor a copy of
    // the entries beside the old tree.
    assert!(
        rebuilding < filled + raw / 10,
        "the rebuild peaked at {rebuilding} bytes, the map held {filled}"
    );
    assert_eq!(map.len(), ENTRIES);
    assert!(
        map.iter()
            .zip(0..)
            .all(|((key, value), n)| *key == (n, 0, 0) && *value == [n; 19]),
        "every entry kept, in order"
    );
}
