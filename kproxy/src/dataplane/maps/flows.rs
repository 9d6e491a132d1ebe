//! Conntrack, affinity and configuration: the flow maps of both families (`KP_CT_FWD`,
//! `KP_CT_REV`, `KP_AFFINITY` and their IPv6 twins), collected by one generic pass
//! (`sync::gc`), and the local-traffic CIDRs of each family. An object without the IPv6
//! datapath has none of the IPv6 maps: they then read as empty, and are never written
//! or collected.

use std::path::Path;

use anyhow::{Context, Result};
use aya::{
    Pod,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, lpm_trie::Key},
};
use ipnet::IpNet;
use kproxy_common::{
    addr::In6Addr,
    config::Config,
    ct::{
        AffinityKey, AffinityKey6, AffinityKeyOf, AffinityValue, CtEntry, CtEntry6, CtEntryOf,
        FlowKey, FlowKey6, FlowKeyOf,
    },
    names,
};

use super::{batch, ignore_missing, open, open_typed};
use crate::{
    dataplane::{
        Walk,
        load::{map_pin_path, pinned_together},
    },
    sync::gc::{self, AffinityTable, FlowTable, GcPass, Liveness},
    wire::{self, WireAddr},
};

/// Conntrack, affinity and configuration.
pub struct FlowMaps {
    v4: FamilyFlows<u32>,
    /// `None` when the object has no IPv6 maps.
    v6: Option<FamilyFlows<In6Addr>>,
    config: Array<MapData, Config>,
}

/// One family's conntrack, affinity and local CIDR maps.
struct FamilyFlows<A> {
    ct_fwd: CtMap<A>,
    ct_rev: CtMap<A>,
    affinity: HashMap<MapData, AffinityKeyOf<A>, AffinityValue>,
    local_cidrs: LpmTrie<MapData, A, u8>,
}

/// One conntrack map, typed, with the raw handle for batch walks and lookup-and-delete.
struct CtMap<A> {
    map: HashMap<MapData, FlowKeyOf<A>, CtEntryOf<A>>,
    raw: MapData,
    /// A walk's buffers, kept from chunk to chunk and pass to pass.
    keys: Vec<FlowKeyOf<A>>,
    values: Vec<CtEntryOf<A>>,
}

// The map types are `Pod` once their address type is fixed (`kproxy_common`'s `pod!`), which
// the bounds say for a generic `A`.
impl<A: WireAddr> FamilyFlows<A>
where
    FlowKeyOf<A>: Pod,
    CtEntryOf<A>: Pod,
    AffinityKeyOf<A>: Pod,
{
    /// The names of the family's maps: conntrack both ways, affinity, local CIDRs.
    fn names() -> [&'static str; 4] {
        let name = wire::map_name::<A>;
        [
            name(names::MAP_CT_FWD, names::MAP_CT_FWD6),
            name(names::MAP_CT_REV, names::MAP_CT_REV6),
            name(names::MAP_AFFINITY, names::MAP_AFFINITY6),
            name(names::MAP_LOCAL_CIDRS, names::MAP_LOCAL_CIDRS6),
        ]
    }

    fn open(pin_dir: &Path) -> Result<Self> {
        let [ct_fwd, ct_rev, affinity, local_cidrs] = Self::names();
        Ok(Self {
            ct_fwd: CtMap::open(pin_dir, ct_fwd)?,
            ct_rev: CtMap::open(pin_dir, ct_rev)?,
            affinity: open_typed!(pin_dir, affinity),
            local_cidrs: open_typed!(pin_dir, local_cidrs),
        })
    }

    /// The family's maps, when the loaded object has them (it pins all or none).
    fn open_if_pinned(pin_dir: &Path) -> Result<Option<Self>> {
        if pinned_together(pin_dir, &Self::names())? {
            Self::open(pin_dir).map(Some)
        } else {
            Ok(None)
        }
    }

    fn local_cidrs_name() -> &'static str {
        wire::map_name::<A>(names::MAP_LOCAL_CIDRS, names::MAP_LOCAL_CIDRS6)
    }

    /// The CIDRs of the local CIDR trie (entries the agent cannot read are left out).
    fn local_cidrs(&self) -> Result<Vec<IpNet>> {
        let mut cidrs = Vec::new();
        for key in self.local_cidrs.keys() {
            let key = key.context(Self::local_cidrs_name())?;
            if let Some(net) = u8::try_from(key.prefix_len())
                .ok()
                .and_then(|len| IpNet::new(key.data().to_ip(), len).ok())
            {
                cidrs.push(net);
            }
        }
        Ok(cidrs)
    }

    fn put_local_cidr(&mut self, cidr: IpNet) -> Result<()> {
        let key = cidr_key(cidr).ok_or_else(|| other_family(Self::local_cidrs_name()))?;
        self.local_cidrs
            .insert(&key, 1, 0)
            .context(Self::local_cidrs_name())
    }

    fn delete_local_cidr(&mut self, cidr: IpNet) -> Result<()> {
        let key = cidr_key(cidr).ok_or_else(|| other_family(Self::local_cidrs_name()))?;
        ignore_missing(self.local_cidrs.remove(&key)).context(Self::local_cidrs_name())
    }

    /// Forward conntrack entries (one per flow).
    fn flows(&self) -> Result<Vec<(FlowKeyOf<A>, CtEntryOf<A>)>> {
        Ok(self.ct_fwd.map.iter().collect::<Result<_, _>>()?)
    }

    fn affinity(&self, key: &AffinityKeyOf<A>) -> Result<Option<AffinityValue>> {
        match self.affinity.get(key, 0) {
            Ok(value) => Ok(Some(value)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn affinities(&self) -> Result<Vec<(AffinityKeyOf<A>, AffinityValue)>> {
        Ok(self.affinity.iter().collect::<Result<_, _>>()?)
    }

    /// Entries the conntrack walk buffers have room for.
    fn walk_capacity(&self) -> usize {
        [&self.ct_fwd, &self.ct_rev]
            .iter()
            .map(|m| m.keys.capacity().max(m.values.capacity()))
            .max()
            .unwrap_or(0)
    }

    fn collect_garbage(
        &mut self,
        config: &Config,
        live: &impl Liveness,
        now_ns: u64,
        capacity: usize,
    ) -> Result<gc::GcStats> {
        gc::collect(
            config,
            now_ns,
            live,
            &mut self.ct_fwd,
            &mut self.ct_rev,
            &mut self.affinity,
            capacity,
        )
    }
}

impl<A: WireAddr> CtMap<A>
where
    FlowKeyOf<A>: Pod,
    CtEntryOf<A>: Pod,
{
    fn open(pin_dir: &Path, name: &str) -> Result<Self> {
        let path = map_pin_path(pin_dir, name);
        Ok(Self {
            map: open_typed!(pin_dir, name),
            raw: MapData::from_pin(&path)
                .with_context(|| format!("opening pinned map {}", path.display()))?,
            keys: Vec::new(),
            values: Vec::new(),
        })
    }
}

impl<A: WireAddr> FlowTable<A> for CtMap<A>
where
    FlowKeyOf<A>: Pod,
    CtEntryOf<A>: Pod,
{
    fn next_chunk(
        &mut self,
        walk: &mut Walk,
        chunk: &mut Vec<(FlowKeyOf<A>, CtEntryOf<A>)>,
    ) -> Result<()> {
        // `lookup` fills the buffers to their capacity: room for one chunk, made on empty
        // buffers (reserving on the previous chunk's entries would double the batch at
        // every call, until a walk held the whole table).
        self.keys.clear();
        self.values.clear();
        self.keys.reserve(gc::CHUNK);
        self.values.reserve(gc::CHUNK);
        batch::lookup(&self.raw, walk, &mut self.keys, &mut self.values)?;
        chunk.clear();
        chunk.extend(self.keys.iter().copied().zip(self.values.iter().copied()));
        Ok(())
    }

    fn get(&self, key: &FlowKeyOf<A>) -> Result<Option<CtEntryOf<A>>> {
        match self.map.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn take(&mut self, key: &FlowKeyOf<A>) -> Result<Option<CtEntryOf<A>>> {
        Ok(batch::lookup_and_delete(&self.raw, key)?)
    }

    fn put_back(&mut self, key: &FlowKeyOf<A>, entry: &CtEntryOf<A>) -> Result<()> {
        const BPF_NOEXIST: u64 = 1;
        match self.map.insert(key, entry, BPF_NOEXIST) {
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {
                Ok(())
            }
            other => Ok(other?),
        }
    }
}

impl<A: WireAddr> AffinityTable<A> for HashMap<MapData, AffinityKeyOf<A>, AffinityValue>
where
    AffinityKeyOf<A>: Pod,
{
    fn entries(&self) -> Result<Vec<(AffinityKeyOf<A>, AffinityValue)>> {
        Ok(self.iter().filter_map(Result::ok).collect())
    }

    fn remove_if_unchanged(
        &mut self,
        key: &AffinityKeyOf<A>,
        judged: &AffinityValue,
    ) -> Result<bool> {
        // A new connection that set the affinity again since the scan keeps it.
        if self.get(key, 0).ok().as_ref() != Some(judged) {
            return Ok(false);
        }
        ignore_missing(self.remove(key))?;
        Ok(true)
    }
}

/// A local CIDR's key in its family's trie (`KP_LOCAL_CIDRS`, `KP_LOCAL_CIDRS6`).
fn cidr_key<A: WireAddr>(cidr: IpNet) -> Option<Key<A>> {
    Some(Key::new(
        u32::from(cidr.prefix_len()),
        A::from_ip(cidr.network())?,
    ))
}

/// A write that dispatch sent to the other family's maps: a broken invariant, not input.
fn other_family(name: &str) -> anyhow::Error {
    anyhow::anyhow!("{name}: an entry of the other address family")
}

impl FlowMaps {
    pub fn open(pin_dir: &Path) -> Result<Self> {
        Ok(Self {
            v4: FamilyFlows::open(pin_dir)?,
            v6: FamilyFlows::open_if_pinned(pin_dir)?,
            config: open_typed!(pin_dir, names::MAP_CONFIG),
        })
    }

    /// Whether the object has the IPv6 flow maps (conntrack, affinity, local CIDRs).
    pub fn serves_ipv6(&self) -> bool {
        self.v6.is_some()
    }

    pub fn write_config(&mut self, config: &Config) -> Result<()> {
        self.config
            .set(0, config.with_minimum_timeouts(), 0)
            .context("KP_CONFIG")?;
        Ok(())
    }

    /// `KP_CONFIG` as the datapath reads it (`initialized` 0: never written).
    pub fn config(&self) -> Result<Config> {
        self.config.get(&0, 0).context("KP_CONFIG")
    }

    /// The pod CIDRs `KP_LOCAL_CIDRS` and `KP_LOCAL_CIDRS6` hold (entries the agent cannot
    /// read are left out).
    pub fn local_cidrs(&self) -> Result<Vec<IpNet>> {
        let mut cidrs = self.v4.local_cidrs()?;
        if let Some(v6) = &self.v6 {
            cidrs.extend(v6.local_cidrs()?);
        }
        Ok(cidrs)
    }

    /// Adds `cidr` to its family's local CIDRs; an IPv6 one fails without the IPv6 maps
    /// (see `serves_ipv6`).
    pub fn put_local_cidr(&mut self, cidr: IpNet) -> Result<()> {
        match cidr {
            IpNet::V4(_) => self.v4.put_local_cidr(cidr),
            IpNet::V6(_) => self
                .v6
                .as_mut()
                .with_context(|| format!("{cidr}: the loaded eBPF object has no IPv6 maps"))?
                .put_local_cidr(cidr),
        }
    }

    /// Removes `cidr` from its family's local CIDRs (nothing to remove from an absent map).
    pub fn delete_local_cidr(&mut self, cidr: IpNet) -> Result<()> {
        match (cidr, self.v6.as_mut()) {
            (IpNet::V4(_), _) => self.v4.delete_local_cidr(cidr),
            (IpNet::V6(_), Some(v6)) => v6.delete_local_cidr(cidr),
            (IpNet::V6(_), None) => Ok(()),
        }
    }

    /// IPv4 forward conntrack entries (one per flow).
    pub fn flows(&self) -> Result<Vec<(FlowKey, CtEntry)>> {
        self.v4.flows()
    }

    /// IPv6 forward conntrack entries (one per flow; none without the IPv6 maps).
    pub fn flows6(&self) -> Result<Vec<(FlowKey6, CtEntry6)>> {
        self.v6.as_ref().map_or(Ok(Vec::new()), FamilyFlows::flows)
    }

    /// The IPv4 affinity entry of `key`, if there is one.
    pub fn affinity(&self, key: &AffinityKey) -> Result<Option<AffinityValue>> {
        self.v4.affinity(key)
    }

    /// The IPv6 affinity entry of `key`, if there is one.
    pub fn affinity6(&self, key: &AffinityKey6) -> Result<Option<AffinityValue>> {
        self.v6.as_ref().map_or(Ok(None), |v6| v6.affinity(key))
    }

    /// IPv4 affinity entries.
    pub fn affinities(&self) -> Result<Vec<(AffinityKey, AffinityValue)>> {
        self.v4.affinities()
    }

    /// Entries the conntrack walk buffers have room for, the largest map's: one chunk,
    /// however many flows the tables hold.
    pub fn walk_capacity(&self) -> usize {
        let v6 = self.v6.as_ref().map_or(0, FamilyFlows::walk_capacity);
        self.v4.walk_capacity().max(v6)
    }

    /// One collection pass over each family's maps (see `sync::gc`); `capacity` is the size
    /// of each conntrack map. Absent IPv6 maps hold nothing to collect.
    pub fn collect_garbage(
        &mut self,
        config: &Config,
        live: &impl Liveness,
        now_ns: u64,
        capacity: usize,
    ) -> Result<GcPass> {
        let v4 = self.v4.collect_garbage(config, live, now_ns, capacity)?;
        let v6 = match &mut self.v6 {
            Some(v6) => v6.collect_garbage(config, live, now_ns, capacity)?,
            None => gc::GcStats::default(),
        };
        Ok(GcPass { v4, v6 })
    }
}
