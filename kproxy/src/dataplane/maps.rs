//! Typed access to the pinned maps: writing service state, reading it back, counters, and
//! conntrack garbage collection. Opened from the pins, so the agent, `kproxy services` and
//! tests all read the same objects the same way.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use aya::maps::{
    Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues,
    lpm_trie::Key,
};
use ipnet::Ipv4Net;
use kproxy_common::{
    config::Config,
    ct::{AffinityKey, AffinityValue, CtEntry, FlowKey},
    lb::{Backend, ServiceKey, ServiceValue, SlotKey, SourceRangeKey},
    meta::Meta,
    names,
    stats::{BackendStats, GlobalStats, ServiceStats},
};

use super::{
    batch::{self, Walk},
    free_ports::FreePorts,
    load::map_pin_path,
};
use crate::{
    sync::{
        Datapath, DatapathSnapshot, MapOp,
        gc::{self, AffinityTable, FlowTable, GcStats, Liveness},
    },
    wire,
};

fn open(pin_dir: &Path, name: &str) -> Result<Map> {
    let path = map_pin_path(pin_dir, name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    Map::from_map_data(data).with_context(|| format!("map {name}"))
}

macro_rules! open_typed {
    ($pin_dir:expr, $name:expr) => {
        open($pin_dir, $name)?
            .try_into()
            .with_context(|| format!("map {} has an unexpected type", $name))?
    };
}

/// Deleting an absent key is fine: every delete is idempotent.
fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

fn possible_cpus() -> Result<usize> {
    aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))
}

/// The maps that describe services.
pub struct ServiceMaps {
    /// The same maps again, untyped, for batch writes.
    raw: RawServiceMaps,
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    slots: HashMap<MapData, SlotKey, u32>,
    backends: HashMap<MapData, u32, Backend>,
    vips: HashMap<MapData, u32, u32>,
    source_ranges: LpmTrie<MapData, SourceRangeKey, u8>,
    meta: Array<MapData, Meta>,
    rr: Array<MapData, u64>,
    svc_stats: PerCpuArray<MapData, ServiceStats>,
    be_stats: PerCpuHashMap<MapData, u32, BackendStats>,
    retired: Array<MapData, u64>,
    /// `KP_FREE_PORTS`, taken over by the first write (see `track_free_ports`).
    free_ports: Option<FreePorts>,
    pin_dir: PathBuf,
    cpus: usize,
}

impl ServiceMaps {
    pub fn open(pin_dir: &Path) -> Result<Self> {
        let raw = |name: &str| {
            let path = map_pin_path(pin_dir, name);
            MapData::from_pin(&path)
                .with_context(|| format!("opening pinned map {}", path.display()))
        };
        Ok(Self {
            raw: RawServiceMaps {
                services: raw(names::MAP_SERVICES)?,
                slots: raw(names::MAP_SLOTS)?,
                backends: raw(names::MAP_BACKENDS)?,
                vips: raw(names::MAP_VIPS)?,
            },
            services: open_typed!(pin_dir, names::MAP_SERVICES),
            slots: open_typed!(pin_dir, names::MAP_SLOTS),
            backends: open_typed!(pin_dir, names::MAP_BACKENDS),
            vips: open_typed!(pin_dir, names::MAP_VIPS),
            source_ranges: open_typed!(pin_dir, names::MAP_SOURCE_RANGES),
            meta: open_typed!(pin_dir, names::MAP_META),
            rr: open_typed!(pin_dir, names::MAP_RR),
            svc_stats: open_typed!(pin_dir, names::MAP_SVC_STATS),
            be_stats: open_typed!(pin_dir, names::MAP_BE_STATS),
            retired: open_typed!(pin_dir, names::MAP_RETIRED),
            free_ports: None,
            pin_dir: pin_dir.to_owned(),
            cpus: possible_cpus()?,
        })
    }

    /// Everything the service maps hold.
    pub fn snapshot(&self) -> Result<DatapathSnapshot> {
        // Batch walks: the drift check reads every entry once a minute, and at 10,000
        // Services entry-by-entry reads took 0.6 s of the agent's loop.
        const CHUNK: usize = 4096;
        let vips: Vec<(u32, u32)> = batch::all(&self.raw.vips, CHUNK).context("KP_VIPS")?;
        Ok(DatapathSnapshot {
            services: batch::all(&self.raw.services, CHUNK).context("KP_SERVICES")?,
            slots: batch::all(&self.raw.slots, CHUNK).context("KP_SLOTS")?,
            backends: batch::all(&self.raw.backends, CHUNK).context("KP_BACKENDS")?,
            vips: vips.into_iter().map(|(addr, _)| addr).collect(),
            source_ranges: self
                .source_ranges
                .keys()
                .map(|k| k.map(|k| (k.prefix_len(), k.data())))
                .collect::<Result<_, _>>()?,
            backend_ids_reserved: self.meta.get(&0, 0)?.backend_ids_reserved,
        })
    }

    /// `KP_META` as the pinned state says.
    pub fn meta(&self) -> Result<Meta> {
        Ok(self.meta.get(&0, 0)?)
    }

    /// Per-service-port counters summed over CPUs.
    pub fn service_stats(&self, svc_id: u32) -> Result<ServiceStats> {
        Ok(summed(&self.svc_stats.get(&svc_id, 0)?))
    }

    /// The round-robin counter of service port `svc_id`: the next new flow without affinity
    /// takes slot `turn % count`.
    pub fn round_robin_turn(&self, svc_id: u32) -> Result<u64> {
        Ok(self.rr.get(&svc_id, 0)?)
    }

    /// Per-backend counters summed over CPUs (zero if the backend has none).
    pub fn backend_stats(&self, backend_id: u32) -> BackendStats {
        self.be_stats.get(&backend_id, 0).map_or_else(
            |_| BackendStats::default(),
            |per_cpu| backend_sum(backend_id, per_cpu.iter()),
        )
    }

    fn zeroed<T: aya::Pod + Default>(&self) -> Result<PerCpuValues<T>> {
        Ok(PerCpuValues::try_from(vec![T::default(); self.cpus])?)
    }

    /// Writes `KP_FREE_PORTS` for the NodePorts `KP_SERVICES` holds and keeps it in step
    /// with this handle's writes from now on. Every write does this first; the agent does it
    /// at start, so that a map it finds cleared (new, or from an older agent) speeds up
    /// without waiting for a change. Reading handles (`kproxy services`) never write it.
    pub fn track_free_ports(&mut self) -> Result<()> {
        self.free_ports().map(|_| ())
    }

    fn free_ports(&mut self) -> Result<&mut FreePorts> {
        if self.free_ports.is_none() {
            let keys = self.services.keys().collect::<Result<Vec<_>, _>>()?;
            let map = open_typed!(&self.pin_dir, names::MAP_FREE_PORTS);
            self.free_ports = Some(FreePorts::track(map, &keys)?);
        }
        Ok(self.free_ports.as_mut().expect("just set"))
    }
}

struct RawServiceMaps {
    services: MapData,
    slots: MapData,
    backends: MapData,
    vips: MapData,
}

/// Writes that a batch can carry: runs of these become one syscall each.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BatchKind {
    Backend,
    Slot,
    Service,
}

fn batch_kind(op: &MapOp) -> Option<BatchKind> {
    match op {
        MapOp::PutBackend { .. } | MapOp::SetBackendActive { .. } => Some(BatchKind::Backend),
        MapOp::PutSlot { .. } => Some(BatchKind::Slot),
        MapOp::PutService { .. } => Some(BatchKind::Service),
        _ => None,
    }
}

/// One result per entry of a batch that wrote `len` entries, resuming after failed ones.
fn write_in_batches(
    len: usize,
    mut write: impl FnMut(usize) -> (usize, Option<std::io::Error>),
    name: &str,
) -> Vec<Result<()>> {
    let mut results = Vec::with_capacity(len);
    let mut start = 0;
    while start < len {
        let (done, error) = write(start);
        results.extend((0..done).map(|_| Ok(())));
        start += done;
        if let Some(e) = error {
            results.push(Err(anyhow::Error::from(e).context(name.to_owned())));
            start += 1;
        }
    }
    results
}

/// The datapath serves IPv4 only so far; sync never hands it IPv6 (see `sync`), so this is
/// the error for a broken invariant, not for input.
fn not_ipv4() -> anyhow::Error {
    anyhow::anyhow!("the datapath does not serve IPv6 yet")
}

/// Writes the entries `entry` makes of `ops` into `map`, in as few syscalls as it can. One
/// result per op, in order; an op `entry` cannot turn into an entry fails on its own.
fn write_batch<K: aya::Pod, V: aya::Pod>(
    map: &MapData,
    name: &str,
    ops: &[&MapOp],
    entry: impl Fn(&MapOp) -> Option<(K, V)>,
) -> Vec<Result<()>> {
    let entries: Vec<Option<(K, V)>> = ops.iter().map(|op| entry(op)).collect();
    let (keys, values): (Vec<K>, Vec<V>) = entries.iter().flatten().copied().unzip();
    let mut written = write_in_batches(
        keys.len(),
        |at| batch::update(map, &keys[at..], &values[at..]),
        name,
    )
    .into_iter();
    entries
        .iter()
        .map(|e| match e {
            Some(_) => written
                .next()
                .unwrap_or_else(|| Err(anyhow::anyhow!("{name}: batch result missing"))),
            None => Err(not_ipv4()),
        })
        .collect()
}

impl ServiceMaps {
    fn put_batch(&mut self, kind: BatchKind, ops: &[&MapOp]) -> Vec<Result<()>> {
        match kind {
            BatchKind::Backend => write_batch(&self.raw.backends, "KP_BACKENDS", ops, |op| {
                let b = op.backend_entry()?;
                Some((b.id, wire::backend(&b.endpoint, b.svc_id, b.active)?))
            }),
            BatchKind::Slot => write_batch(&self.raw.slots, "KP_SLOTS", ops, |op| match op {
                MapOp::PutSlot {
                    svc_id,
                    bank,
                    index,
                    backend_id,
                } => Some((SlotKey::new(*svc_id, *bank, *index), *backend_id)),
                _ => None,
            }),
            BatchKind::Service => {
                if let Err(e) = self.ports_taken(ops) {
                    return ops.iter().map(|_| Err(anyhow::anyhow!("{e:#}"))).collect();
                }
                write_batch(&self.raw.services, "KP_SERVICES", ops, |op| match op {
                    MapOp::PutService {
                        key,
                        svc_id,
                        count,
                        bank,
                        settings,
                    } => Some((
                        wire::service_key(key)?,
                        wire::service_value(*svc_id, *count, *bank, settings),
                    )),
                    _ => None,
                })
            }
        }
    }
}

/// Whether `op` removes a frontend or a backend, or stops a backend taking new connections.
fn retires(op: &MapOp) -> bool {
    matches!(
        op,
        MapOp::DeleteBackend { .. } | MapOp::DeleteService { .. }
    ) || op.backend_entry().is_some_and(|b| !b.active)
}

impl ServiceMaps {
    /// Tells the datapath (`KP_RETIRED`) that a frontend or backend was just retired: every
    /// flow looks at both again at its next packet, rather than trusting its last refresh.
    /// Written after the service maps, so a flow refreshed in between has seen the change.
    fn stamp_retired(&mut self) -> Result<()> {
        self.retired.set(0, monotonic_ns(), 0).context("KP_RETIRED")
    }

    /// Clears the `KP_FREE_PORTS` bits of the NodePort entries `ops` put, before they are
    /// written.
    fn ports_taken(&mut self, ops: &[&MapOp]) -> Result<()> {
        for op in ops {
            if let MapOp::PutService { key, .. } = op
                && let Some(key) = wire::service_key(key)
            {
                self.free_ports()?.before_put(&key)?;
            }
        }
        Ok(())
    }
}

impl Datapath for ServiceMaps {
    fn apply_batch(&mut self, ops: &[&MapOp]) -> Vec<Result<()>> {
        let mut results = self.apply_batch_unstamped(ops);
        if ops.iter().any(|op| retires(op))
            && let Err(e) = self.stamp_retired()
        {
            // The writes stand, but flows could keep a retired frontend or backend up to a
            // second longer: report it on the ops that retired one.
            for (op, result) in ops.iter().zip(results.iter_mut()) {
                if retires(op) && result.is_ok() {
                    *result = Err(anyhow::anyhow!("{e:#}"));
                }
            }
        }
        results
    }

    fn apply(&mut self, op: &MapOp) -> Result<()> {
        self.apply_unstamped(op)?;
        if retires(op) {
            self.stamp_retired()?;
        }
        Ok(())
    }
}

impl ServiceMaps {
    fn apply_batch_unstamped(&mut self, ops: &[&MapOp]) -> Vec<Result<()>> {
        let mut results = Vec::with_capacity(ops.len());
        let mut i = 0;
        while i < ops.len() {
            let Some(kind) = batch_kind(ops[i]) else {
                results.push(self.apply_unstamped(ops[i]));
                i += 1;
                continue;
            };
            let end = ops[i..]
                .iter()
                .position(|op| batch_kind(op) != Some(kind))
                .map_or(ops.len(), |n| i + n);
            results.extend(self.put_batch(kind, &ops[i..end]));
            i = end;
        }
        results
    }

    fn apply_unstamped(&mut self, op: &MapOp) -> Result<()> {
        match op {
            MapOp::PutBackend { .. } | MapOp::SetBackendActive { .. } => {
                let b = op.backend_entry().expect("a backend write");
                let value = wire::backend(&b.endpoint, b.svc_id, b.active).ok_or_else(not_ipv4)?;
                self.backends
                    .insert(b.id, value, 0)
                    .context("KP_BACKENDS")?;
            }
            MapOp::PutVip { addr } => {
                self.vips
                    .insert(wire::addr_to_wire(*addr), 1, 0)
                    .context("KP_VIPS")?;
            }
            MapOp::DeleteVip { addr } => {
                ignore_missing(self.vips.remove(&wire::addr_to_wire(*addr))).context("KP_VIPS")?;
            }
            MapOp::ReserveBackendIds { up_to } => {
                let mut meta = self.meta.get(&0, 0).context("KP_META")?;
                meta.backend_ids_reserved = *up_to;
                self.meta.set(0, meta, 0).context("KP_META")?;
            }
            MapOp::DeleteBackend { id } => {
                ignore_missing(self.backends.remove(id)).context("KP_BACKENDS")?;
                ignore_missing(self.be_stats.remove(id)).context("KP_BE_STATS")?;
            }
            MapOp::PutSlot {
                svc_id,
                bank,
                index,
                backend_id,
            } => self
                .slots
                .insert(SlotKey::new(*svc_id, *bank, *index), backend_id, 0)
                .context("KP_SLOTS")?,
            MapOp::DeleteSlot {
                svc_id,
                bank,
                index,
            } => {
                ignore_missing(self.slots.remove(&SlotKey::new(*svc_id, *bank, *index)))
                    .context("KP_SLOTS")?;
            }
            MapOp::ResetServiceCounters { svc_id } => {
                self.rr.set(*svc_id, 0, 0).context("KP_RR")?;
                let zero = self.zeroed::<ServiceStats>()?;
                self.svc_stats
                    .set(*svc_id, zero, 0)
                    .context("KP_SVC_STATS")?;
            }
            MapOp::PutService {
                key,
                svc_id,
                count,
                bank,
                settings,
            } => {
                let key = wire::service_key(key).ok_or_else(not_ipv4)?;
                self.free_ports()?.before_put(&key)?;
                self.services
                    .insert(
                        key,
                        wire::service_value(*svc_id, *count, *bank, settings),
                        0,
                    )
                    .context("KP_SERVICES")?;
            }
            MapOp::PutSourceRange { svc_id, range } => {
                let (len, key) = wire::source_range_key(*svc_id, *range);
                self.source_ranges
                    .insert(&Key::new(len, key), 1, 0)
                    .context("KP_SOURCE_RANGES")?;
            }
            MapOp::DeleteSourceRange { svc_id, range } => {
                let (len, key) = wire::source_range_key(*svc_id, *range);
                ignore_missing(self.source_ranges.remove(&Key::new(len, key)))
                    .context("KP_SOURCE_RANGES")?;
            }
            MapOp::DeleteService { key } => {
                let key = wire::service_key(key).ok_or_else(not_ipv4)?;
                ignore_missing(self.services.remove(&key)).context("KP_SERVICES")?;
                self.free_ports()?.after_delete(&key)?;
            }
        }
        Ok(())
    }
}

/// Current CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Conntrack, affinity and configuration.
pub struct FlowMaps {
    ct_fwd: CtMap,
    ct_rev: CtMap,
    affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    config: Array<MapData, Config>,
    local_cidrs: LpmTrie<MapData, u32, u8>,
}

/// One conntrack map, typed, with the raw handle for batch walks and lookup-and-delete.
struct CtMap {
    map: HashMap<MapData, FlowKey, CtEntry>,
    raw: MapData,
    /// A walk's buffers, kept from chunk to chunk and pass to pass.
    keys: Vec<FlowKey>,
    values: Vec<CtEntry>,
}

impl CtMap {
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

impl FlowTable for CtMap {
    fn next_chunk(&mut self, walk: &mut Walk, chunk: &mut Vec<(FlowKey, CtEntry)>) -> Result<()> {
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

    fn get(&self, key: &FlowKey) -> Result<Option<CtEntry>> {
        match self.map.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn take(&mut self, key: &FlowKey) -> Result<Option<CtEntry>> {
        Ok(batch::lookup_and_delete(&self.raw, key)?)
    }

    fn put_back(&mut self, key: &FlowKey, entry: &CtEntry) -> Result<()> {
        const BPF_NOEXIST: u64 = 1;
        match self.map.insert(key, entry, BPF_NOEXIST) {
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {
                Ok(())
            }
            other => Ok(other?),
        }
    }
}

impl AffinityTable for HashMap<MapData, AffinityKey, AffinityValue> {
    fn entries(&self) -> Result<Vec<(AffinityKey, AffinityValue)>> {
        Ok(self.iter().filter_map(Result::ok).collect())
    }

    fn remove_if_unchanged(&mut self, key: &AffinityKey, judged: &AffinityValue) -> Result<bool> {
        // A new connection that set the affinity again since the scan keeps it.
        if self.get(key, 0).ok().as_ref() != Some(judged) {
            return Ok(false);
        }
        ignore_missing(self.remove(key))?;
        Ok(true)
    }
}

impl FlowMaps {
    pub fn open(pin_dir: &Path) -> Result<Self> {
        Ok(Self {
            ct_fwd: CtMap::open(pin_dir, names::MAP_CT_FWD)?,
            ct_rev: CtMap::open(pin_dir, names::MAP_CT_REV)?,
            affinity: open_typed!(pin_dir, names::MAP_AFFINITY),
            config: open_typed!(pin_dir, names::MAP_CONFIG),
            local_cidrs: open_typed!(pin_dir, names::MAP_LOCAL_CIDRS),
        })
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

    /// The pod CIDRs `KP_LOCAL_CIDRS` holds (entries the agent cannot read are left out).
    pub fn local_cidrs(&self) -> Result<Vec<Ipv4Net>> {
        let mut cidrs = Vec::new();
        for key in self.local_cidrs.keys() {
            let key = key.context("KP_LOCAL_CIDRS")?;
            if let Some(net) = u8::try_from(key.prefix_len())
                .ok()
                .and_then(|len| Ipv4Net::new(wire::addr_from_wire(key.data()), len).ok())
            {
                cidrs.push(net);
            }
        }
        Ok(cidrs)
    }

    /// Adds `cidr` to `KP_LOCAL_CIDRS`.
    pub fn put_local_cidr(&mut self, cidr: Ipv4Net) -> Result<()> {
        self.local_cidrs
            .insert(
                &Key::new(
                    u32::from(cidr.prefix_len()),
                    wire::addr_to_wire(cidr.network()),
                ),
                1,
                0,
            )
            .context("KP_LOCAL_CIDRS")
    }

    /// Removes `cidr` from `KP_LOCAL_CIDRS`.
    pub fn delete_local_cidr(&mut self, cidr: Ipv4Net) -> Result<()> {
        let key = Key::new(
            u32::from(cidr.prefix_len()),
            wire::addr_to_wire(cidr.network()),
        );
        ignore_missing(self.local_cidrs.remove(&key)).context("KP_LOCAL_CIDRS")
    }

    /// Forward conntrack entries (one per flow).
    pub fn flows(&self) -> Result<Vec<(FlowKey, CtEntry)>> {
        Ok(self.ct_fwd.map.iter().collect::<Result<_, _>>()?)
    }

    /// The affinity entry of `key`, if there is one.
    pub fn affinity(&self, key: &AffinityKey) -> Result<Option<AffinityValue>> {
        match self.affinity.get(key, 0) {
            Ok(value) => Ok(Some(value)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Affinity entries.
    pub fn affinities(&self) -> Result<Vec<(AffinityKey, AffinityValue)>> {
        Ok(self.affinity.iter().collect::<Result<_, _>>()?)
    }

    /// One collection pass (see `sync::gc`); `capacity` is the size of each conntrack map.
    /// Entries the conntrack walk buffers have room for, the larger map's: one chunk, however
    /// many flows the tables hold.
    pub fn walk_capacity(&self) -> usize {
        [&self.ct_fwd, &self.ct_rev]
            .iter()
            .map(|m| m.keys.capacity().max(m.values.capacity()))
            .max()
            .unwrap_or(0)
    }

    pub fn collect_garbage(
        &mut self,
        config: &Config,
        live: &impl Liveness,
        now_ns: u64,
        capacity: usize,
    ) -> Result<GcStats> {
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

/// Per-service-port counters summed over CPUs, for each of `ids` in order (zero for an id
/// the map cannot answer).
pub fn services_stats(pin_dir: &Path, ids: &[u32]) -> Result<Vec<ServiceStats>> {
    let stats: PerCpuArray<MapData, ServiceStats> = open_typed!(pin_dir, names::MAP_SVC_STATS);
    Ok(ids
        .iter()
        .map(|id| {
            stats
                .get(id, 0)
                .map_or_else(|_| ServiceStats::default(), |per_cpu| summed(&per_cpu))
        })
        .collect())
}

/// A backend's per-CPU counters summed: the copies that name it (see `BackendStats`).
pub fn backend_sum<'a>(
    backend_id: u32,
    per_cpu: impl Iterator<Item = &'a BackendStats>,
) -> BackendStats {
    per_cpu.filter(|s| s.backend_id == backend_id).fold(
        BackendStats {
            backend_id,
            ..BackendStats::default()
        },
        |mut sum, s| {
            sum.new_flows += s.new_flows;
            sum.packets += s.packets;
            sum.bytes += s.bytes;
            sum
        },
    )
}

/// One service port's per-CPU counters, summed.
fn summed(per_cpu: &PerCpuValues<ServiceStats>) -> ServiceStats {
    per_cpu.iter().fold(ServiceStats::default(), |mut sum, s| {
        sum.packets += s.packets;
        sum.bytes += s.bytes;
        sum.new_flows += s.new_flows;
        sum.rejected += s.rejected;
        sum
    })
}

/// The per-CPU counters of backends `ids` summed (zero for one without any).
pub fn backends_stats(pin_dir: &Path, ids: &[u32]) -> Result<Vec<BackendStats>> {
    let stats: PerCpuHashMap<MapData, u32, BackendStats> =
        open_typed!(pin_dir, names::MAP_BE_STATS);
    Ok(ids
        .iter()
        .map(|id| {
            stats.get(id, 0).map_or_else(
                |_| BackendStats::default(),
                |per_cpu| backend_sum(*id, per_cpu.iter()),
            )
        })
        .collect())
}

/// Global datapath counters summed over CPUs.
pub fn global_stats(pin_dir: &Path) -> Result<GlobalStats> {
    let stats: PerCpuArray<MapData, GlobalStats> = open_typed!(pin_dir, names::MAP_STATS);
    let per_cpu = stats.get(&0, 0)?;
    let mut sum = GlobalStats {
        counters: [0; kproxy_common::stats::COUNTER_SLOTS],
    };
    for cpu in per_cpu.iter() {
        for (total, c) in sum.counters.iter_mut().zip(cpu.counters) {
            *total += c;
        }
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::{
        model::{Endpoint, FrontendKey, Protocol},
        sync::ServiceSettings,
    };

    #[test]
    fn removing_a_frontend_or_backend_or_deactivating_a_backend_retires_flows() {
        let endpoint = Endpoint {
            addr: IpAddr::V4(Ipv4Addr::new(198, 18, 2, 2)),
            port: 8080,
        };
        let key = FrontendKey::node_port(false, 30_080, Protocol::Tcp);
        let backend = |active| MapOp::PutBackend {
            id: 1,
            endpoint,
            svc_id: 1,
            active,
        };
        let switched = |active| MapOp::SetBackendActive {
            id: 1,
            endpoint,
            svc_id: 1,
            active,
        };
        let cases = [
            ("frontend removed", MapOp::DeleteService { key }, true),
            ("backend removed", MapOp::DeleteBackend { id: 1 }, true),
            ("backend written standing by", backend(false), true),
            ("backend switched to standing by", switched(false), true),
            ("backend written taking connections", backend(true), false),
            (
                "backend switched to taking connections",
                switched(true),
                false,
            ),
            (
                "frontend written",
                MapOp::PutService {
                    key,
                    svc_id: 1,
                    count: 1,
                    bank: 0,
                    settings: ServiceSettings::default(),
                },
                false,
            ),
            (
                "slot written",
                MapOp::PutSlot {
                    svc_id: 1,
                    bank: 0,
                    index: 0,
                    backend_id: 1,
                },
                false,
            ),
        ];
        for (what, op, retired) in cases {
            assert_eq!(retires(&op), retired, "{what}");
        }
    }
}
