//! `KP_CLIENTS` on the agent's side (see `kproxy_common::filter::CLIENT_WORDS`): the
//! programs set a client's bit before each reply entry they insert; the agent covers the
//! reply entries made before its programs were attached, then lets the programs trust the
//! bitmap.
//!
//! The programs OR bits in at any moment, so the agent never writes a bitmap word through
//! the map: it maps the array into its memory (`BPF_F_MMAPABLE`) and ORs its bits in
//! atomically, as the programs do. Only `CLIENTS_READY`, which no program writes, is
//! written through the map.

use std::{
    os::fd::{AsFd, AsRawFd},
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{Context, Result, bail};
use aya::maps::{Array, MapData};
use kproxy_common::{
    addr::In6Addr,
    ct::{CtEntryOf, FlowKeyOf},
    filter::{CLIENT_ENTRIES, CLIENT_WORDS, CLIENTS_READY, client_bit},
    names,
};

use super::{addr_filter, load::map_pin_path, maps::raw};
use crate::wire;

/// Makes the programs look up every reply again until [`seed`] has run: called at start,
/// before this agent's programs replace those running (which, if of an agent without the
/// bitmap, inserted reply entries without setting bits).
pub fn unready(pin_dir: &Path) -> Result<()> {
    set_ready(pin_dir, false)
}

/// The bitmap, mapped into the agent's memory.
pub struct ClientFilter(SharedWords);

impl ClientFilter {
    /// Sets the bit of every reply entry's destination in conntrack, then marks the
    /// bitmap ready: called once this agent's programs are attached, which set the bits of
    /// the entries they insert themselves.
    pub fn seed(pin_dir: &Path) -> Result<Self> {
        let words = SharedWords::map(pin_dir)?;
        destinations::<u32>(pin_dir, names::MAP_CT_REV, &words)?;
        if map_pin_path(pin_dir, names::MAP_CT_REV6).exists() {
            destinations::<In6Addr>(pin_dir, names::MAP_CT_REV6, &words)?;
        }
        set_ready(pin_dir, true)?;
        Ok(Self(words))
    }

    /// The bits set now (the programs add bits as flows come).
    pub fn bits_set(&self) -> u32 {
        self.0.bits_set()
    }
}

fn set_ready(pin_dir: &Path, ready: bool) -> Result<()> {
    let mut map: Array<MapData, u64> =
        Array::try_from(aya::maps::Map::Array(raw(pin_dir, names::MAP_CLIENTS)?))
            .context(names::MAP_CLIENTS)?;
    map.set(CLIENTS_READY, u64::from(ready), 0)
        .context(names::MAP_CLIENTS)
}

/// Sets the bit of the destination of every entry of reply map `name` (family `A`).
fn destinations<A: wire::WireAddr>(pin_dir: &Path, name: &str, words: &SharedWords) -> Result<()>
where
    FlowKeyOf<A>: aya::Pod,
    CtEntryOf<A>: aya::Pod,
{
    addr_filter::reply_keys::<A>(pin_dir, name, |key| words.or(client_bit(key.daddr)))
}

/// The bitmap's words, mapped from the pinned array: shared with the programs.
struct SharedWords {
    base: *mut u64,
    len: usize,
}

impl SharedWords {
    fn map(pin_dir: &Path) -> Result<Self> {
        let data = raw(pin_dir, names::MAP_CLIENTS)?;
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .context("the page size")?;
        let len = (CLIENT_ENTRIES as usize * size_of::<u64>()).div_ceil(page) * page;
        // SAFETY: a shared mapping of the array's values (the kernel checks the length
        // against the array and refuses one not created mmapable); unmapped on drop. The
        // descriptor may close once mapped.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            bail!(
                "mapping {} into memory: {}",
                names::MAP_CLIENTS,
                std::io::Error::last_os_error()
            );
        }
        Ok(Self {
            base: base.cast(),
            len,
        })
    }

    fn word(&self, entry: u32) -> Option<&AtomicU64> {
        (entry < CLIENT_WORDS).then(|| {
            // SAFETY: within the mapping (entry < CLIENT_ENTRIES), 8-byte aligned (page
            // start, 8-byte elements), and only ever accessed atomically, here as by the
            // programs.
            unsafe { AtomicU64::from_ptr(self.base.add(entry as usize)) }
        })
    }

    fn or(&self, (entry, bit): (u32, u64)) {
        if let Some(word) = self.word(entry)
            && word.load(Ordering::Relaxed) & bit == 0
        {
            word.fetch_or(bit, Ordering::SeqCst);
        }
    }

    fn bits_set(&self) -> u32 {
        (0..CLIENT_WORDS)
            .filter_map(|entry| self.word(entry))
            .map(|word| word.load(Ordering::Relaxed).count_ones())
            .sum()
    }
}

// SAFETY: the mapping is the process's, valid until dropped, and every access to it is
// atomic (see `word`).
unsafe impl Send for SharedWords {}
// SAFETY: as `Send`.
unsafe impl Sync for SharedWords {}

impl Drop for SharedWords {
    fn drop(&mut self) {
        // SAFETY: the mapping `map` made, unmapped once.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}
