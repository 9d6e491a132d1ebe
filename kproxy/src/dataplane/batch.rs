//! Map commands aya 0.14 does not offer for hash maps: `BPF_MAP_UPDATE_BATCH` (many entries
//! in one syscall, for syncs that program thousands of services at once, and for filling a
//! whole per-CPU array),
//! `BPF_MAP_LOOKUP_BATCH` (a walk in chunks, for conntrack collection over hundreds of
//! thousands of flows) and `BPF_MAP_LOOKUP_AND_DELETE_ELEM` (delete an entry and learn what it
//! held, in one step).

use std::os::fd::{AsFd, AsRawFd};

use aya::{Pod, maps::MapData};

use super::bpfsys::{ATTR_WORDS, bpf_attr};

const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// Deletes `key` and returns the value it held; `None` if there was no such key.
pub fn lookup_and_delete<K: Pod, V: Pod>(map: &MapData, key: &K) -> std::io::Result<Option<V>> {
    let mut value = std::mem::MaybeUninit::<V>::zeroed();
    // union bpf_attr, element: map_fd (u32, padded), key, value (u64 each), flags (u64).
    let mut attr = [0u64; ATTR_WORDS];
    attr[0] = u64::from(map.fd().as_fd().as_raw_fd().unsigned_abs());
    attr[1] = std::ptr::from_ref(key) as u64;
    attr[2] = value.as_mut_ptr() as u64;
    // The attr points at a key and a value buffer that live for the call.
    match bpf_attr(BPF_MAP_LOOKUP_AND_DELETE_ELEM, &mut attr) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    // SAFETY: the kernel wrote a whole value; any bit pattern is a valid `Pod`.
    Ok(Some(unsafe { value.assume_init() }))
}

/// Writes `keys[i] → values[i]`; returns how many were written before an error, and the
/// error if one stopped it (the entry at that index was not written).
pub fn update<K: Pod + Sync, V: Pod + Sync>(
    map: &MapData,
    keys: &[K],
    values: &[V],
) -> (usize, Option<std::io::Error>) {
    assert_eq!(keys.len(), values.len(), "one value per key");
    update_entries(map, keys, values)
}

/// Batches of at least this many entries are written by two threads, half each. (On a
/// machine with one CPU the two take turns: a thread more per few thousand entries.)
const SPLIT_FROM: usize = 2048;

/// `BPF_MAP_UPDATE_BATCH` of `keys`, their values laid out in `values` as the map expects
/// them (the same number per key). A long batch of distinct keys is written in two halves
/// at once, on two CPUs: the kernel's hash maps take concurrent updates (a lock per
/// bucket), and at a 100,000-Service start the kernel's updates of 800,000 entries were
/// most of the map writes' time, with the other CPU idle. Keys written twice keep their
/// order: such a batch is written by one thread.
fn update_entries<K: Pod + Sync, V: Pod + Sync>(
    map: &MapData,
    keys: &[K],
    values: &[V],
) -> (usize, Option<std::io::Error>) {
    if keys.len() < SPLIT_FROM || !distinct(keys) {
        return update_serially(map, keys, values);
    }
    let half = keys.len() / 2;
    let (first_keys, second_keys) = keys.split_at(half);
    let (first_values, second_values) = values.split_at(half * (values.len() / keys.len()));
    let (first, second) = std::thread::scope(|scope| {
        // No thread to be had (a limit on threads): the second half after the first.
        let second = std::thread::Builder::new()
            .name("map-writer".into())
            .spawn_scoped(scope, || update_serially(map, second_keys, second_values));
        let first = update_serially(map, first_keys, first_values);
        let second = match second {
            Ok(thread) => thread.join().unwrap_or_else(|_| {
                (
                    0,
                    Some(std::io::Error::other("the map writer thread panicked")),
                )
            }),
            Err(_) => update_serially(map, second_keys, second_values),
        };
        (first, second)
    });
    match first {
        // As one call would say: written up to the first failed entry (entries after it
        // may be written too; the caller writes them again, which changes nothing).
        (done, Some(e)) => (done, Some(e)),
        (_, None) => (half + second.0, second.1),
    }
}

/// Whether no key of `keys` is there twice.
fn distinct<K: Pod>(keys: &[K]) -> bool {
    let mut seen = std::collections::HashSet::with_capacity_and_hasher(
        keys.len(),
        foldhash::fast::RandomState::default(),
    );
    keys.iter().all(|key| {
        // SAFETY: a `Pod` is plain bytes (no padding), readable as such for its size.
        let bytes = unsafe {
            std::slice::from_raw_parts(std::ptr::from_ref(key).cast::<u8>(), size_of::<K>())
        };
        seen.insert(bytes)
    })
}

/// One `BPF_MAP_UPDATE_BATCH` call.
fn update_serially<K: Pod, V: Pod>(
    map: &MapData,
    keys: &[K],
    values: &[V],
) -> (usize, Option<std::io::Error>) {
    if keys.is_empty() {
        return (0, None);
    }
    let Ok(count) = u32::try_from(keys.len()) else {
        return (0, Some(std::io::Error::other("batch too large")));
    };
    // union bpf_attr, batch: in_batch, out_batch, keys, values (u64 each), count, map_fd
    // (u32 each), elem_flags, flags (u64 each).
    let mut attr = [0u64; ATTR_WORDS];
    attr[2] = keys.as_ptr() as u64;
    attr[3] = values.as_ptr() as u64;
    attr[4] = u64::from(count) | (u64::from(map.fd().as_fd().as_raw_fd().unsigned_abs()) << 32);
    // The attr points at `count` keys and values that live for the call.
    let result = bpf_attr(BPF_MAP_UPDATE_BATCH, &mut attr);
    // The kernel writes back how many entries it processed.
    let done = usize::try_from(attr[4] & 0xffff_ffff).unwrap_or(0);
    match result {
        Err(e) => (done, Some(e)),
        Ok(_) => (keys.len(), None),
    }
}

/// Where a walk of a hash map has got to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Walk {
    #[default]
    Start,
    /// The kernel's position (a bucket index for hash maps) to go on from.
    At(u64),
    End,
}

/// Replaces `keys` and `values` with the next entries of a walk of a hash map (up to their
/// capacity, at least one bucket's worth) and moves `walk` on. A walk goes bucket by bucket,
/// so entries deleted behind it do not disturb it (unlike `get_next_key`, which starts over
/// when its key is gone); entries added meanwhile may or may not be seen.
pub fn lookup<K: Pod, V: Pod>(
    map: &MapData,
    walk: &mut Walk,
    keys: &mut Vec<K>,
    values: &mut Vec<V>,
) -> std::io::Result<()> {
    keys.clear();
    values.clear();
    let from = match *walk {
        Walk::Start => None,
        Walk::At(at) => Some(at),
        Walk::End => return Ok(()),
    };
    let capacity = keys.capacity().min(values.capacity()).max(1);
    keys.reserve(capacity);
    values.reserve(capacity);
    let Ok(count) = u32::try_from(capacity) else {
        return Err(std::io::Error::other("batch too large"));
    };
    // The position tokens: wide enough for any map type's (hash maps use a u32).
    let mut in_batch = from.unwrap_or(0);
    let mut out_batch = 0u64;
    // union bpf_attr, batch: in_batch, out_batch, keys, values (u64 each), count, map_fd
    // (u32 each), elem_flags, flags (u64 each).
    let mut attr = [0u64; ATTR_WORDS];
    attr[0] = if from.is_some() {
        std::ptr::from_mut(&mut in_batch) as u64
    } else {
        0
    };
    attr[1] = std::ptr::from_mut(&mut out_batch) as u64;
    attr[2] = keys.as_mut_ptr() as u64;
    attr[3] = values.as_mut_ptr() as u64;
    attr[4] = u64::from(count) | (u64::from(map.fd().as_fd().as_raw_fd().unsigned_abs()) << 32);
    // The attr points at buffers of `count` keys and values and at the two position tokens,
    // all of which live for the call.
    let result = bpf_attr(BPF_MAP_LOOKUP_BATCH, &mut attr);
    // The kernel writes back how many entries it copied (also with ENOENT, the walk's end).
    let copied = usize::try_from(attr[4] & 0xffff_ffff)
        .unwrap_or(0)
        .min(capacity);
    match result {
        Ok(_) => *walk = Walk::At(out_batch),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => *walk = Walk::End,
        Err(e) => return Err(e),
    }
    // SAFETY: the kernel wrote `copied` whole keys and values; any bit pattern is a `Pod`.
    unsafe {
        keys.set_len(copied);
        values.set_len(copied);
    }
    Ok(())
}

/// Every entry of a hash map, read `chunk` entries per syscall: tens of thousands of
/// entries in a few dozen calls, where `get_next_key` and a lookup cost two calls each.
pub fn all<K: Pod, V: Pod>(map: &MapData, chunk: usize) -> std::io::Result<Vec<(K, V)>> {
    let mut walk = Walk::Start;
    let mut keys = Vec::with_capacity(chunk);
    let mut values = Vec::with_capacity(chunk);
    let mut entries = Vec::new();
    while walk != Walk::End {
        lookup(map, &mut walk, &mut keys, &mut values)?;
        // Grown by a quarter rather than doubled: a drift check reads 300,000 backends at
        // the largest scale, and doubling left up to as much again unused.
        if entries.capacity() - entries.len() < keys.len() {
            entries.reserve_exact(keys.len().max(entries.len() / 4));
        }
        entries.extend(keys.iter().copied().zip(values.iter().copied()));
    }
    Ok(entries)
}

/// Hands every entry of a hash map to `each`, read `chunk` entries per syscall, until
/// `each` says to stop (`false`): a walk that holds one chunk, not the map.
pub fn for_each<K: Pod, V: Pod>(
    map: &MapData,
    chunk: usize,
    mut each: impl FnMut(&K, &V) -> bool,
) -> std::io::Result<()> {
    let mut walk = Walk::Start;
    let mut keys = Vec::with_capacity(chunk);
    let mut values = Vec::with_capacity(chunk);
    while walk != Walk::End {
        lookup(map, &mut walk, &mut keys, &mut values)?;
        for (key, value) in keys.iter().zip(&values) {
            if !each(key, value) {
                return Ok(());
            }
        }
    }
    Ok(())
}
