//! Typed access to the pinned maps: writing service state, reading it back, counters, and
//! conntrack garbage collection. Opened from the pins, so the agent, `kproxy services` and
//! tests all read the same objects the same way.
//!
//! Each address family has service, backend, VIP and source range maps of its own
//! (`family`); what service port ids and backend ids index (slots, counters) is shared.
//! An object built without the IPv6 datapath pins no IPv6 maps: the handles then serve
//! IPv4 only, read the IPv6 maps as empty and never write them.

mod family;
mod flows;
mod per_cpu;
mod round_robin;
mod walk;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap};
use family::FamilyMaps;
pub use flows::FlowMaps;
use kproxy_common::{
    addr::In6Addr,
    lb::SlotKey,
    maglev::{self, MAGLEV_CHUNK, MaglevChunk, MaglevKey},
    meta::Meta,
    names,
    stats::{BackendStats, GlobalStats, ServiceStats},
};
use per_cpu::Regions;
pub use round_robin::seed as seed_round_robin;

use super::{
    addr_filter::{self, AddrFilter},
    batch,
    client_filter::ClientFilter,
    free_ports::FreePorts,
    load::map_pin_path,
};
use crate::{
    sync::{Datapath, DatapathSnapshot, MapOp, maglev_backend_ids},
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
use open_typed;

/// Deleting an absent key is fine: every delete is idempotent.
fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// Entries read per syscall by a walk: the drift check reads every entry once a minute, and
/// at 10,000 Services entry-by-entry reads took 0.6 s of the agent's loop.
pub(super) const WALK_CHUNK: usize = 4096;

/// The pinned map `name`, untyped (for batch writes and walks).
pub(super) fn raw(pin_dir: &Path, name: &str) -> Result<MapData> {
    let path = map_pin_path(pin_dir, name);
    MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))
}

fn possible_cpus() -> Result<usize> {
    aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))
}

/// Calls `$method` of each family's maps with that family's share of `ops`, one result per
/// op in order (see `by_family_batches`); ops of a family the object has no maps for fail.
macro_rules! family_batches {
    ($self:ident, $ops:expr, $method:ident) => {
        by_family_batches(
            $ops,
            |ops| $self.v4.$method(ops),
            |ops| match &$self.v6 {
                Some(v6) => v6.$method(ops),
                None => without_ipv6_maps(ops),
            },
        )
    };
}

/// Runs `$body` with `$maps` bound to the service maps of `$addr`'s family: one body,
/// compiled for each family's map types. Fails for an IPv6 address when the IPv6 maps are
/// absent.
macro_rules! by_family {
    ($self:ident, $addr:expr, $maps:ident => $body:expr) => {
        if $addr.is_ipv6() {
            match $self.v6.as_mut() {
                Some($maps) => $body,
                None => Err(no_ipv6_maps()),
            }
        } else {
            let $maps = &mut $self.v4;
            $body
        }
    };
}

/// A write meant for an IPv6 map of a datapath that has none: the planner does not plan
/// such writes (see `Datapath::serves_ipv6`), so this only reports a broken invariant.
fn no_ipv6_maps() -> anyhow::Error {
    anyhow::anyhow!("the loaded eBPF object has no IPv6 maps")
}

/// The maps that describe services.
pub struct ServiceMaps {
    v4: FamilyMaps<u32>,
    /// `None` when the object has no IPv6 maps.
    v6: Option<FamilyMaps<In6Addr>>,
    /// `slots` again, untyped, for batch writes and walks.
    slots_raw: MapData,
    slots: HashMap<MapData, SlotKey, u32>,
    meta: Array<MapData, Meta>,
    rr: Array<MapData, u64>,
    maglev: HashMap<MapData, MaglevKey, MaglevChunk>,
    svc_stats: Array<MapData, ServiceStats>,
    /// Where `rr`'s and `svc_stats`' element of each CPU lies.
    regions: Regions,
    be_stats: PerCpuHashMap<MapData, u32, BackendStats>,
    retired: Array<MapData, u64>,
    /// What `retired` holds: read once at open, then kept with every stamp written, so
    /// asking for it costs no syscall.
    retired_ns: u64,
    /// `KP_FREE_PORTS`, taken over by the first write (see `track_free_ports`).
    free_ports: Option<FreePorts>,
    /// `KP_FILTER`, taken over by the first write (see `track_filter`).
    filter: Option<AddrFilter>,
    /// `KP_CLIENTS`, once seeded (see `seed_clients`).
    clients: Option<ClientFilter>,
    pin_dir: PathBuf,
}

impl ServiceMaps {
    pub fn open(pin_dir: &Path) -> Result<Self> {
        let path = map_pin_path(pin_dir, names::MAP_SLOTS);
        // The service maps first: a missing pin directory is named by its first.
        let (v4, v6) = (
            FamilyMaps::open(pin_dir)?,
            FamilyMaps::open_if_pinned(pin_dir)?,
        );
        let rr: Array<MapData, u64> = open_typed!(pin_dir, names::MAP_RR);
        let regions = Regions::new(rr.len(), possible_cpus()?).context(names::MAP_RR)?;
        let mut maps = Self {
            v4,
            v6,
            slots_raw: MapData::from_pin(&path)
                .with_context(|| format!("opening pinned map {}", path.display()))?,
            slots: open_typed!(pin_dir, names::MAP_SLOTS),
            meta: open_typed!(pin_dir, names::MAP_META),
            rr,
            maglev: open_typed!(pin_dir, names::MAP_MAGLEV),
            svc_stats: open_typed!(pin_dir, names::MAP_SVC_STATS),
            regions,
            be_stats: open_typed!(pin_dir, names::MAP_BE_STATS),
            retired: open_typed!(pin_dir, names::MAP_RETIRED),
            retired_ns: 0,
            free_ports: None,
            filter: None,
            clients: None,
            pin_dir: pin_dir.to_owned(),
        };
        maps.retired_ns = maps.retired.get(&0, 0).unwrap_or(0);
        Ok(maps)
    }

    /// Everything the service maps of both families hold (absent IPv6 maps hold nothing).
    pub fn snapshot(&self) -> Result<DatapathSnapshot> {
        let mut snapshot = DatapathSnapshot {
            services: self.v4.services()?,
            slots: batch::all(&self.slots_raw, WALK_CHUNK).context("KP_SLOTS")?,
            backends: self.v4.backends()?,
            vips: self.v4.vips()?,
            source_ranges: self.v4.source_ranges()?,
            backend_ids_reserved: self.meta.get(&0, 0)?.backend_ids_reserved,
            maglev: self
                .maglev
                .keys()
                .collect::<Result<_, _>>()
                .context("KP_MAGLEV")?,
            ..DatapathSnapshot::default()
        };
        if let Some(v6) = &self.v6 {
            snapshot.services6 = v6.services()?;
            snapshot.backends6 = v6.backends()?;
            snapshot.vips6 = v6.vips()?;
            snapshot.source_ranges6 = v6.source_ranges()?;
        }
        Ok(snapshot)
    }

    /// Whether the object has the IPv6 service maps.
    pub fn serves_ipv6(&self) -> bool {
        self.v6.is_some()
    }

    /// `KP_META` as the pinned state says.
    pub fn meta(&self) -> Result<Meta> {
        Ok(self.meta.get(&0, 0)?)
    }

    /// Per-service-port counters summed over CPUs.
    pub fn service_stats(&self, svc_id: u32) -> Result<ServiceStats> {
        Ok(summed(&self.regions.read(&self.svc_stats, svc_id)?))
    }

    /// The round-robin counters of service port `svc_id`, one per possible CPU (the kernel's
    /// order): the next new flow without affinity that CPU `n` handles takes slot
    /// `turns[n] % count`.
    pub fn round_robin_turns(&self, svc_id: u32) -> Result<Vec<u64>> {
        Ok(self.regions.read(&self.rr, svc_id)?)
    }

    /// Per-backend counters summed over CPUs (zero if the backend has none).
    pub fn backend_stats(&self, backend_id: u32) -> BackendStats {
        self.be_stats.get(&backend_id, 0).map_or_else(
            |_| BackendStats::default(),
            |per_cpu| backend_sum(backend_id, per_cpu.iter()),
        )
    }

    /// Writes `KP_FREE_PORTS` for the NodePorts `KP_SERVICES` and `KP_SERVICES6` hold and
    /// keeps it in step with this handle's writes from now on. Every write does this first;
    /// the agent does it at start, so that a map it finds cleared (new, or from an older
    /// agent) speeds up without waiting for a change. Reading handles (`kproxy services`)
    /// never write it.
    pub fn track_free_ports(&mut self) -> Result<()> {
        self.free_ports().map(|_| ())
    }

    /// Seeds `KP_FILTER` from what the maps hold and keeps it ahead of this handle's writes
    /// from now on (see `addr_filter`). Every write does this first; the agent does it at
    /// start, before its programs read the map. Reading handles never write it.
    pub fn track_filter(&mut self, held: &DatapathSnapshot) -> Result<()> {
        if self.filter.is_none() {
            self.filter = Some(AddrFilter::track(&self.pin_dir, filter_seed(held))?);
        }
        Ok(())
    }

    /// `KP_FILTER`'s bits set: (frontend addresses, backend endpoints); `None` before the
    /// handle tracks it.
    pub fn filter_bits(&self) -> Option<(u32, u32)> {
        use kproxy_common::filter::Filter;
        let f = self.filter.as_ref()?;
        Some((f.bits_set(Filter::Frontends), f.bits_set(Filter::Backends)))
    }

    /// Seeds `KP_CLIENTS` from conntrack and marks it ready: once the programs that set its
    /// bits are attached (see `client_filter`).
    pub fn seed_clients(&mut self) -> Result<()> {
        self.clients = Some(ClientFilter::seed(&self.pin_dir)?);
        Ok(())
    }

    /// `KP_CLIENTS`'s bits set; `None` before it is seeded.
    pub fn client_bits(&self) -> Option<u32> {
        self.clients.as_ref().map(ClientFilter::bits_set)
    }

    fn filter(&mut self) -> Result<&mut AddrFilter> {
        if self.filter.is_none() {
            let held = self.snapshot()?;
            self.track_filter(&held)?;
        }
        Ok(self.filter.as_mut().expect("just set"))
    }

    /// Sets the `KP_FILTER` bits the entries of `ops` need, before they are written.
    fn mark_filter<'a>(&mut self, ops: impl IntoIterator<Item = &'a MapOp>) -> Result<()> {
        let bits: Vec<(u32, u64)> = ops.into_iter().filter_map(addr_filter::bit_of).collect();
        if bits.is_empty() {
            return Ok(());
        }
        self.filter()?.mark(bits)
    }

    fn free_ports(&mut self) -> Result<&mut FreePorts> {
        if self.free_ports.is_none() {
            let mut keys = self.v4.frontend_keys()?;
            if let Some(v6) = &self.v6 {
                keys.extend(v6.frontend_keys()?);
            }
            let map = open_typed!(&self.pin_dir, names::MAP_FREE_PORTS);
            self.free_ports = Some(FreePorts::track(map, keys)?);
        }
        Ok(self.free_ports.as_mut().expect("just set"))
    }
}

/// The `KP_FILTER` bits of everything the service maps hold.
fn filter_seed(held: &DatapathSnapshot) -> Vec<(u32, u64)> {
    use kproxy_common::{
        addr::IpAddress,
        filter::{backend_bit, frontend_bit},
    };
    let frontends = held
        .services
        .iter()
        .map(|(key, _)| key.addr)
        .chain(held.vips.iter().copied())
        .filter(|addr| !addr.is_unspecified())
        .map(frontend_bit);
    let frontends6 = held
        .services6
        .iter()
        .map(|(key, _)| key.addr)
        .chain(held.vips6.iter().copied())
        .filter(|addr| !addr.is_unspecified())
        .map(frontend_bit);
    let backends = held
        .backends
        .iter()
        .map(|(_, b)| backend_bit(b.addr, b.port));
    let backends6 = held
        .backends6
        .iter()
        .map(|(_, b)| backend_bit(b.addr, b.port));
    frontends
        .chain(frontends6)
        .chain(backends)
        .chain(backends6)
        .collect()
}

/// Writes that a batch can carry: runs of these become one syscall each (per family).
#[derive(Clone, Copy, PartialEq, Eq)]
enum BatchKind {
    Backend,
    Slot,
    Service,
    Vip,
}

fn batch_kind(op: &MapOp) -> Option<BatchKind> {
    match op {
        MapOp::PutBackend { .. } | MapOp::SetBackendActive { .. } => Some(BatchKind::Backend),
        MapOp::PutSlot { .. } => Some(BatchKind::Slot),
        MapOp::PutService { .. } => Some(BatchKind::Service),
        MapOp::PutVip { .. } => Some(BatchKind::Vip),
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

/// Writes the entries `entry` makes of `ops` into `map`, in as few syscalls as it can. One
/// result per op, in order; an op `entry` cannot turn into an entry of this map fails on
/// its own.
fn write_batch<K: aya::Pod + Sync, V: aya::Pod + Sync>(
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
            None => Err(anyhow::anyhow!("{name}: not an entry of this map")),
        })
        .collect()
}

/// Splits `ops` by the family of their `MapOp::family_addr`, writes each part with `v4`
/// and `v6`, and returns one result per op in the order of `ops`.
fn by_family_batches<'a>(
    ops: &[&'a MapOp],
    v4: impl FnOnce(&[&'a MapOp]) -> Vec<Result<()>>,
    v6: impl FnOnce(&[&'a MapOp]) -> Vec<Result<()>>,
) -> Vec<Result<()>> {
    let is_v6: Vec<bool> = ops.iter().map(|op| op.is_ipv6()).collect();
    let part = |want: bool| -> Vec<&'a MapOp> {
        ops.iter()
            .zip(&is_v6)
            .filter(|(_, v6)| **v6 == want)
            .map(|(op, _)| *op)
            .collect()
    };
    let (mut v4, mut v6) = (v4(&part(false)).into_iter(), v6(&part(true)).into_iter());
    is_v6
        .iter()
        .map(|&v6_op| {
            let next = if v6_op { v6.next() } else { v4.next() };
            next.unwrap_or_else(|| Err(anyhow::anyhow!("batch result missing")))
        })
        .collect()
}

/// One failure per op of a batch for IPv6 maps the object does not have.
fn without_ipv6_maps(ops: &[&MapOp]) -> Vec<Result<()>> {
    ops.iter().map(|_| Err(no_ipv6_maps())).collect()
}

impl ServiceMaps {
    fn put_batch(&mut self, kind: BatchKind, ops: &[&MapOp]) -> Vec<Result<()>> {
        if let Err(e) = self.mark_filter(ops.iter().copied()) {
            // An entry the datapath's filter would hide is not written.
            return ops.iter().map(|_| Err(anyhow::anyhow!("{e:#}"))).collect();
        }
        match kind {
            BatchKind::Backend => family_batches!(self, ops, put_backends),
            BatchKind::Slot => write_batch(&self.slots_raw, "KP_SLOTS", ops, |op| match op {
                MapOp::PutSlot {
                    svc_id,
                    bank,
                    index,
                    backend_id,
                } => Some((SlotKey::new(*svc_id, *bank, *index), *backend_id)),
                _ => None,
            }),
            BatchKind::Vip => family_batches!(self, ops, put_vips),
            BatchKind::Service => {
                if let Err(e) = self.ports_taken(ops) {
                    return ops.iter().map(|_| Err(anyhow::anyhow!("{e:#}"))).collect();
                }
                family_batches!(self, ops, put_services)
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
        let now = monotonic_ns();
        self.retired.set(0, now, 0).context("KP_RETIRED")?;
        self.retired_ns = now;
        Ok(())
    }

    /// When a frontend or backend was last retired (`KP_RETIRED`; 0 if never, or unreadable
    /// at open).
    pub fn last_retired_ns(&self) -> u64 {
        self.retired_ns
    }

    /// Clears the `KP_FREE_PORTS` bits of the NodePort entries `ops` put, before they are
    /// written.
    fn ports_taken(&mut self, ops: &[&MapOp]) -> Result<()> {
        for op in ops {
            if let MapOp::PutService { key, .. } = op {
                self.free_ports()?.before_put(key)?;
            }
        }
        Ok(())
    }
}

impl Datapath for ServiceMaps {
    fn serves_ipv6(&self) -> bool {
        ServiceMaps::serves_ipv6(self)
    }

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
        if self.v6.is_none() && op.is_ipv6() && op.is_delete() {
            // Nothing to delete from a map that does not exist.
            return Ok(());
        }
        self.mark_filter([op])?;
        match op {
            MapOp::PutBackend { .. } | MapOp::SetBackendActive { .. } => {
                let b = op.backend_entry().expect("a backend write");
                by_family!(self, b.endpoint.addr, maps => maps.put_backend(&b))?;
            }
            MapOp::PutVip { addr } => by_family!(self, addr, maps => maps.put_vip(*addr))?,
            MapOp::DeleteVip { addr } => by_family!(self, addr, maps => maps.delete_vip(*addr))?,
            MapOp::ReserveBackendIds { up_to } => {
                let mut meta = self.meta.get(&0, 0).context("KP_META")?;
                meta.backend_ids_reserved = *up_to;
                self.meta.set(0, meta, 0).context("KP_META")?;
            }
            MapOp::DeleteBackend { id, endpoint } => {
                by_family!(self, endpoint.addr, maps => maps.delete_backend(*id))?;
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
            MapOp::PutMaglevTable {
                svc_id,
                bank,
                table_size,
                backends,
            } => {
                let table_size = *table_size;
                let backend_ids = maglev_backend_ids(backends, table_size)?;
                for (chunk, ids) in (0u16..).zip(backend_ids.chunks(MAGLEV_CHUNK as usize)) {
                    // The last chunk's tail lies beyond the table: zeros, never read.
                    let mut value = MaglevChunk {
                        backend_ids: [0; MAGLEV_CHUNK as usize],
                    };
                    value.backend_ids[..ids.len()].copy_from_slice(ids);
                    let key = MaglevKey::new(*svc_id, table_size, *bank, chunk);
                    self.maglev.insert(key, value, 0).context("KP_MAGLEV")?;
                }
            }
            MapOp::DeleteMaglevTable {
                svc_id,
                bank,
                table_size,
            } => {
                for chunk in 0..maglev::chunks(*table_size) {
                    let chunk = u16::try_from(chunk).context("a Maglev table's chunk")?;
                    let key = MaglevKey::new(*svc_id, *table_size, *bank, chunk);
                    ignore_missing(self.maglev.remove(&key)).context("KP_MAGLEV")?;
                }
            }
            MapOp::ResetServiceCounters { svc_id } => {
                let starts = round_robin::random_starts(self.regions.cpus());
                for (index, start) in self.regions.indexes(*svc_id).zip(starts) {
                    self.rr.set(index, start, 0).context("KP_RR")?;
                    self.svc_stats
                        .set(index, ServiceStats::default(), 0)
                        .context("KP_SVC_STATS")?;
                }
            }
            MapOp::PutService {
                key,
                svc_id,
                count,
                bank,
                inline,
                settings,
            } => {
                self.free_ports()?.before_put(key)?;
                let value = wire::service_value(*svc_id, *count, *bank, *inline, settings);
                by_family!(self, key.addr, maps => maps.put_service(key, value))?;
            }
            MapOp::PutSourceRange { svc_id, range } => {
                by_family!(self, range.addr(), maps => maps.put_source_range(*svc_id, *range))?;
            }
            MapOp::DeleteSourceRange { svc_id, range } => {
                by_family!(self, range.addr(), maps => maps.delete_source_range(*svc_id, *range))?;
            }
            MapOp::DeleteService { key } => {
                by_family!(self, key.addr, maps => maps.delete_service(key))?;
                self.free_ports()?.after_delete(key)?;
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

/// Per-service-port counters summed over CPUs, for each of `ids` in order (zero for an id
/// the map cannot answer).
pub fn services_stats(pin_dir: &Path, ids: &[u32]) -> Result<Vec<ServiceStats>> {
    let path = map_pin_path(pin_dir, names::MAP_SVC_STATS);
    let map = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    let regions = Regions::of(&map)?;
    // Read whole, a chunk per syscall (every CPU's element of every id), and summed per id:
    // a lookup per element would be 200,000 syscalls a scrape at 100,000 Services.
    let mut sums = vec![ServiceStats::default(); regions.stride() as usize];
    batch::for_each(&map, WALK_CHUNK, |index: &u32, stats: &ServiceStats| {
        if let Some(sum) = sums.get_mut(regions.service_of(*index) as usize) {
            add(sum, stats);
        }
        true
    })
    .context(names::MAP_SVC_STATS)?;
    Ok(ids
        .iter()
        .map(|id| sums.get(*id as usize).copied().unwrap_or_default())
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
fn summed(per_cpu: &[ServiceStats]) -> ServiceStats {
    per_cpu.iter().fold(ServiceStats::default(), |mut sum, s| {
        add(&mut sum, s);
        sum
    })
}

fn add(sum: &mut ServiceStats, s: &ServiceStats) {
    sum.packets += s.packets;
    sum.bytes += s.bytes;
    sum.new_flows += s.new_flows;
    sum.rejected += s.rejected;
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
            (
                "backend removed",
                MapOp::DeleteBackend { id: 1, endpoint },
                true,
            ),
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
                    inline: [1, 0, 0, 0],
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
