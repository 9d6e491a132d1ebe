//! `KP_FILTER` on the agent's side: the bits of every frontend address and backend endpoint
//! it writes, set before the entry (see `kproxy_common::filter` for what the datapath skips
//! on a clear bit).
//!
//! Bits are never cleared while the map lives. A backend that is gone may still have flows
//! whose replies need translating, and which it has is known only to a walk of conntrack;
//! the price is a filter that fills with every address ever served, which is bounded by
//! the Service and pod ranges and reported (`kproxy_datapath_filter_bits`). A map found
//! empty (new, or the first agent that has it) is seeded from what the service maps and the
//! reply entries of conntrack already hold before any program reads it.

use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::MapData;
use kproxy_common::{
    addr::In6Addr,
    ct::{CtEntryOf, FlowKeyOf},
    filter::{FILTER_ENTRIES, FILTER_WORDS, Filter, backend_bit, frontend_bit},
    names,
};

use super::{
    batch,
    load::map_pin_path,
    maps::{WALK_CHUNK, raw},
};
use crate::{sync::MapOp, wire};

/// The bit of `KP_FILTER` an op's entry needs set before it is written, if any.
pub fn bit_of(op: &MapOp) -> Option<(u32, u64)> {
    if op.is_ipv6() {
        bit_in::<In6Addr>(op)
    } else {
        bit_in::<u32>(op)
    }
}

fn bit_in<A: wire::WireAddr>(op: &MapOp) -> Option<(u32, u64)> {
    if let Some(b) = op.backend_entry() {
        let stored = wire::backend::<A>(&b.endpoint, b.svc_id, b.active)?;
        return Some(backend_bit(stored.addr, stored.port));
    }
    match op {
        // A NodePort answers on the node's addresses, which the filter does not guard.
        MapOp::PutService { key, .. } if !key.is_node_port() => {
            Some(frontend_bit(wire::service_key::<A>(key)?.addr))
        }
        MapOp::PutVip { addr } => Some(frontend_bit(A::from_ip(*addr)?)),
        _ => None,
    }
}

/// The pinned `KP_FILTER` and what it holds.
pub struct AddrFilter {
    map: MapData,
    words: Vec<u64>,
}

impl AddrFilter {
    /// Takes over the map pinned in `pin_dir`, adding the bits `seed` gives (what the
    /// service maps hold); a map found empty also gets the sources of every reply entry of
    /// conntrack.
    pub fn track(pin_dir: &Path, seed: impl IntoIterator<Item = (u32, u64)>) -> Result<Self> {
        let map = raw(pin_dir, names::MAP_FILTER)?;
        let mut words = vec![0u64; FILTER_ENTRIES as usize];
        let held: Vec<(u32, u64)> = batch::all(&map, WALK_CHUNK).context(names::MAP_FILTER)?;
        for (entry, word) in held {
            if let Some(w) = words.get_mut(entry as usize) {
                *w = word;
            }
        }
        let mut filter = Self { map, words };
        let mut bits: Vec<(u32, u64)> = seed.into_iter().collect();
        if filter.words.iter().all(|&w| w == 0) {
            reply_sources::<u32>(pin_dir, names::MAP_CT_REV, &mut bits)?;
            if map_pin_path(pin_dir, names::MAP_CT_REV6).exists() {
                reply_sources::<In6Addr>(pin_dir, names::MAP_CT_REV6, &mut bits)?;
            }
        }
        filter.mark(bits)?;
        Ok(filter)
    }

    /// Sets `bits`, writing the words that change: to be called before the entries they
    /// stand for are written.
    pub fn mark(&mut self, bits: impl IntoIterator<Item = (u32, u64)>) -> Result<()> {
        // The words as they will be, kept apart until the map holds them: a word the kernel
        // did not take keeps its old value here too, so a later mark writes it again whole.
        let mut pending: std::collections::BTreeMap<u32, u64> = std::collections::BTreeMap::new();
        for (entry, bit) in bits {
            let Some(&held) = self.words.get(entry as usize) else {
                continue;
            };
            let word = pending.entry(entry).or_insert(held);
            *word |= bit;
        }
        pending.retain(|&entry, word| *word != self.words[entry as usize]);
        if pending.is_empty() {
            return Ok(());
        }
        let (entries, values): (Vec<u32>, Vec<u64>) = pending.into_iter().unzip();
        let (done, error) = batch::update(&self.map, &entries, &values);
        for (&entry, &word) in entries.iter().zip(&values).take(done) {
            self.words[entry as usize] = word;
        }
        match error {
            None => Ok(()),
            Some(e) => Err(anyhow::Error::from(e).context(names::MAP_FILTER)),
        }
    }

    /// How many bits of `filter` are set.
    pub fn bits_set(&self, filter: Filter) -> u32 {
        let first = filter as usize;
        self.words[first..first + FILTER_WORDS as usize]
            .iter()
            .map(|w| w.count_ones())
            .sum()
    }
}

/// Adds the backend bit of the source of every entry of the reply conntrack map `name`.
fn reply_sources<A: wire::WireAddr>(
    pin_dir: &Path,
    name: &str,
    bits: &mut Vec<(u32, u64)>,
) -> Result<()>
where
    FlowKeyOf<A>: aya::Pod,
    CtEntryOf<A>: aya::Pod,
{
    reply_keys::<A>(pin_dir, name, |key| {
        bits.push(backend_bit(key.saddr, key.sport));
    })
}

/// Calls `f` with the key of every entry of reply map `name` (family `A`).
pub(super) fn reply_keys<A: wire::WireAddr>(
    pin_dir: &Path,
    name: &str,
    mut f: impl FnMut(&FlowKeyOf<A>),
) -> Result<()>
where
    FlowKeyOf<A>: aya::Pod,
    CtEntryOf<A>: aya::Pod,
{
    let map = raw(pin_dir, name)?;
    batch::for_each(&map, WALK_CHUNK, |key: &FlowKeyOf<A>, _: &CtEntryOf<A>| {
        f(key);
        true
    })
    .context(name.to_owned())
}
