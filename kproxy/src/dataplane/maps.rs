//! Typed access to the pinned maps: writing service state, reading it back, counters, and
//! conntrack garbage collection. Opened from the pins, so the agent, `kproxy services` and
//! tests all read the same objects the same way.

use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues};
use kproxy_common::{
    config::Config,
    ct::{AffinityKey, AffinityValue, CtEntry, FlowKey},
    lb::{Backend, ServiceKey, ServiceValue, SlotKey},
    names,
    stats::{BackendStats, GlobalStats, ServiceStats},
};

use super::{batch, load::map_pin_path};
use crate::{
    sync::{Datapath, DatapathSnapshot, MapOp},
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
    rr: Array<MapData, u64>,
    svc_stats: PerCpuArray<MapData, ServiceStats>,
    be_stats: PerCpuHashMap<MapData, u32, BackendStats>,
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
            },
            services: open_typed!(pin_dir, names::MAP_SERVICES),
            slots: open_typed!(pin_dir, names::MAP_SLOTS),
            backends: open_typed!(pin_dir, names::MAP_BACKENDS),
            rr: open_typed!(pin_dir, names::MAP_RR),
            svc_stats: open_typed!(pin_dir, names::MAP_SVC_STATS),
            be_stats: open_typed!(pin_dir, names::MAP_BE_STATS),
            cpus: possible_cpus()?,
        })
    }

    /// Everything the service maps hold.
    pub fn snapshot(&self) -> Result<DatapathSnapshot> {
        Ok(DatapathSnapshot {
            services: self.services.iter().collect::<Result<_, _>>()?,
            slots: self.slots.iter().collect::<Result<_, _>>()?,
            backends: self.backends.iter().collect::<Result<_, _>>()?,
        })
    }

    /// Per-service-port counters summed over CPUs.
    pub fn service_stats(&self, svc_id: u32) -> Result<ServiceStats> {
        let per_cpu = self.svc_stats.get(&svc_id, 0)?;
        Ok(per_cpu.iter().fold(ServiceStats::default(), |mut sum, s| {
            sum.packets += s.packets;
            sum.bytes += s.bytes;
            sum.new_flows += s.new_flows;
            sum.rejected += s.rejected;
            sum
        }))
    }

    /// Per-backend counters summed over CPUs (zero if the backend has none).
    pub fn backend_stats(&self, backend_id: u32) -> BackendStats {
        self.be_stats.get(&backend_id, 0).map_or_else(
            |_| BackendStats::default(),
            |per_cpu| BackendStats {
                new_flows: per_cpu.iter().map(|s| s.new_flows).sum(),
            },
        )
    }

    fn zeroed<T: aya::Pod + Default>(&self) -> Result<PerCpuValues<T>> {
        Ok(PerCpuValues::try_from(vec![T::default(); self.cpus])?)
    }
}

struct RawServiceMaps {
    services: MapData,
    slots: MapData,
    backends: MapData,
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
        MapOp::PutBackend { .. } => Some(BatchKind::Backend),
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
    fn put_batch(&self, kind: BatchKind, ops: &[&MapOp]) -> Vec<Result<()>> {
        match kind {
            BatchKind::Backend => {
                write_batch(&self.raw.backends, "KP_BACKENDS", ops, |op| match op {
                    MapOp::PutBackend { id, endpoint } => Some((*id, wire::backend(endpoint)?)),
                    _ => None,
                })
            }
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
                write_batch(&self.raw.services, "KP_SERVICES", ops, |op| match op {
                    MapOp::PutService {
                        key,
                        svc_id,
                        count,
                        bank,
                        affinity_timeout_s,
                        when_empty,
                    } => Some((
                        wire::service_key(key)?,
                        wire::service_value(
                            *svc_id,
                            *count,
                            *bank,
                            *affinity_timeout_s,
                            *when_empty,
                        ),
                    )),
                    _ => None,
                })
            }
        }
    }
}

impl Datapath for ServiceMaps {
    fn apply_batch(&mut self, ops: &[&MapOp]) -> Vec<Result<()>> {
        let mut results = Vec::with_capacity(ops.len());
        let mut i = 0;
        while i < ops.len() {
            let Some(kind) = batch_kind(ops[i]) else {
                results.push(self.apply(ops[i]));
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

    fn apply(&mut self, op: &MapOp) -> Result<()> {
        match op {
            MapOp::PutBackend { id, endpoint } => {
                self.backends
                    .insert(id, wire::backend(endpoint).ok_or_else(not_ipv4)?, 0)
                    .context("KP_BACKENDS")?;
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
                affinity_timeout_s,
                when_empty,
            } => self
                .services
                .insert(
                    wire::service_key(key).ok_or_else(not_ipv4)?,
                    wire::service_value(*svc_id, *count, *bank, *affinity_timeout_s, *when_empty),
                    0,
                )
                .context("KP_SERVICES")?,
            MapOp::DeleteService { key } => {
                let key = wire::service_key(key).ok_or_else(not_ipv4)?;
                ignore_missing(self.services.remove(&key)).context("KP_SERVICES")?;
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
    ct_fwd: HashMap<MapData, FlowKey, CtEntry>,
    ct_rev: HashMap<MapData, FlowKey, CtEntry>,
    affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    config: Array<MapData, Config>,
}

/// What one garbage collection pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    pub flows: usize,
    pub expired: usize,
    pub affinities_expired: usize,
}

impl FlowMaps {
    pub fn open(pin_dir: &Path) -> Result<Self> {
        Ok(Self {
            ct_fwd: open_typed!(pin_dir, names::MAP_CT_FWD),
            ct_rev: open_typed!(pin_dir, names::MAP_CT_REV),
            affinity: open_typed!(pin_dir, names::MAP_AFFINITY),
            config: open_typed!(pin_dir, names::MAP_CONFIG),
        })
    }

    pub fn write_config(&mut self, config: &Config) -> Result<()> {
        self.config.set(0, config, 0).context("KP_CONFIG")?;
        Ok(())
    }

    /// Forward conntrack entries (one per flow).
    pub fn flows(&self) -> Result<Vec<(FlowKey, CtEntry)>> {
        Ok(self.ct_fwd.iter().collect::<Result<_, _>>()?)
    }

    /// Deletes conntrack entries past their timeout (the datapath already ignores them; this
    /// frees their space) and affinities older than `max_affinity_s` or naming a backend that
    /// is gone.
    pub fn collect_garbage(
        &mut self,
        config: &Config,
        backend_exists: impl Fn(u32) -> bool,
        now_ns: u64,
    ) -> Result<GcStats> {
        let mut stats = GcStats::default();
        for map in [&mut self.ct_fwd, &mut self.ct_rev] {
            // Keys first, deletes after: deleting while walking restarts the walk.
            let mut expired = Vec::new();
            for item in map.iter() {
                let (key, entry) = item?;
                stats.flows += 1;
                if config.expired(key.proto, &entry, now_ns) {
                    expired.push(key);
                }
            }
            for key in &expired {
                ignore_missing(map.remove(key))?;
            }
            stats.expired += expired.len();
        }
        stats.flows /= 2;
        let mut stale = Vec::new();
        for item in &self.affinity {
            let (key, value) = item?;
            // The longest affinity timeout Kubernetes allows is one day.
            let too_old = now_ns.saturating_sub(value.last_seen_ns) > 86_400 * 1_000_000_000;
            if too_old || !backend_exists(value.backend_id) {
                stale.push(key);
            }
        }
        for key in &stale {
            ignore_missing(self.affinity.remove(key))?;
        }
        stats.affinities_expired = stale.len();
        Ok(stats)
    }
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
