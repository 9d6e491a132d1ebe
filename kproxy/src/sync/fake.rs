//! An in-memory model of the service maps for tests: applies `MapOp`s with map capacities,
//! and resolves frontends the way the datapath does so tests can check what packets see.
//!
//! Each family's maps are separate, as in the kernel: an entry lives in the map of its
//! address's family (a frontend's, an endpoint's, a VIP's, a range's), a capacity bounds
//! each family's map on its own, a delete through the other family's map finds nothing, and
//! a packet to a frontend only finds backends in its own family's map.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use ipnet::IpNet;
use kproxy_common::{
    addr::In6Addr,
    lb::{BackendOf, INLINE_SLOTS, ServiceKeyOf, ServiceValue, SlotKey, slots_inline},
    maglev::{self, MaglevKey},
};

use super::{BackendEntry, Datapath, DatapathSnapshot, MapOp, ServiceSettings};
use crate::{
    model::{Endpoint, FrontendKey},
    wire::{self, WireAddr},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FakeService {
    pub svc_id: u32,
    pub count: u16,
    pub bank: u8,
    /// The backend ids the value holds itself (see `lb::slots_inline`).
    pub inline: [u32; INLINE_SLOTS],
    pub settings: ServiceSettings,
}

impl FakeService {
    /// The backend id in slot `index`, wherever the datapath would read it.
    pub fn slot(&self, slots: &BTreeMap<(u32, u8, u32), u32>, index: u32) -> Option<u32> {
        if slots_inline(usize::from(self.count)) {
            return self.inline.get(index as usize).copied();
        }
        slots.get(&(self.svc_id, self.bank, index)).copied()
    }
}

/// What a packet to a frontend would find.
pub type View = BTreeMap<FrontendKey, Result<(Vec<Endpoint>, Option<u32>), String>>;

#[derive(Default)]
pub struct FakeDatapath {
    pub services: BTreeMap<FrontendKey, FakeService>,
    pub slots: BTreeMap<(u32, u8, u32), u32>,
    /// `KP_BACKENDS` and `KP_BACKENDS6`, told apart by the endpoint's family.
    pub backends: BTreeMap<u32, Endpoint>,
    /// Service port id and "takes new connections" of each backend.
    pub backend_roles: BTreeMap<u32, (u32, bool)>,
    /// `KP_VIPS` and `KP_VIPS6`.
    pub vips: BTreeSet<IpAddr>,
    /// `KP_SOURCE_RANGES` and `KP_SOURCE_RANGES6`: (service port id, range).
    pub source_ranges: BTreeSet<(u32, IpNet)>,
    /// `KP_MAGLEV`: the table of each (service port id, bank, table size).
    pub maglev: BTreeMap<(u32, u8, u32), Arc<[u32]>>,
    /// `KP_MAGLEV`'s capacity in tables (unbounded when unset).
    pub max_maglev_tables: Option<usize>,
    /// `KP_META`'s backend id reservation.
    pub backend_ids_reserved: u32,
    /// Fails `ReserveBackendIds` (a KP_META write error).
    pub fail_reservation: bool,
    pub counters_reset: Vec<u32>,
    pub log: Vec<MapOp>,
    /// Map capacities, each family's map on its own (unbounded when unset). A write beyond
    /// one fails as the kernel's does: `E2BIG`, in the map's name.
    pub max_services: Option<usize>,
    pub max_slots: Option<usize>,
    pub max_backends: Option<usize>,
    pub max_source_ranges: Option<usize>,
    /// The view after every applied op, when recording.
    pub views: Option<Vec<View>>,
    /// A datapath built without the IPv6 maps: writes to them fail, deletes find nothing.
    pub without_ipv6_maps: bool,
}

impl FakeDatapath {
    pub fn recording() -> Self {
        Self {
            views: Some(Vec::new()),
            ..Self::default()
        }
    }

    /// A datapath whose object has no IPv6 maps (see `Datapath::serves_ipv6`).
    pub fn without_ipv6() -> Self {
        Self {
            without_ipv6_maps: true,
            ..Self::default()
        }
    }

    /// Resolves every published frontend through its active bank.
    pub fn view(&self) -> View {
        self.services
            .iter()
            .map(|(key, svc)| {
                let resolved: Result<Vec<Endpoint>, String> = (0..u32::from(svc.count))
                    .map(|index| {
                        let id = svc.slot(&self.slots, index).ok_or_else(|| {
                            format!("{key}: slot {index} of bank {} missing", svc.bank)
                        })?;
                        self.backends
                            .get(&id)
                            .copied()
                            .filter(|ep| same_family(ep.addr, key.addr))
                            .ok_or_else(|| format!("{key}: backend {id} missing"))
                    })
                    .collect();
                let resolved = resolved.and_then(|eps| {
                    self.check_maglev(key, svc)?;
                    Ok(eps)
                });
                (
                    *key,
                    resolved.map(|eps| (eps, svc.settings.affinity_timeout_s)),
                )
            })
            .collect()
    }

    /// A Maglev frontend with backends has a table in its active bank, and the table names
    /// only backends of that bank.
    fn check_maglev(&self, key: &FrontendKey, svc: &FakeService) -> Result<(), String> {
        if !svc.settings.maglev || svc.count == 0 {
            return Ok(());
        }
        let in_bank: BTreeSet<u32> = (0..u32::from(svc.count))
            .filter_map(|index| svc.slot(&self.slots, index))
            .collect();
        let mut tables = self
            .maglev
            .range((svc.svc_id, svc.bank, 0)..=(svc.svc_id, svc.bank, u32::MAX));
        let Some((_, table)) = tables.next() else {
            return Err(format!("{key}: no Maglev table in bank {}", svc.bank));
        };
        match table.iter().find(|id| !in_bank.contains(id)) {
            Some(id) => Err(format!(
                "{key}: Maglev table of bank {} names backend {id}, not in the bank",
                svc.bank
            )),
            None => Ok(()),
        }
    }

    /// The source ranges both families' maps hold for service port `svc_id`.
    pub fn ranges_of(&self, svc_id: u32) -> Vec<IpNet> {
        self.source_ranges
            .iter()
            .filter(|(id, _)| *id == svc_id)
            .map(|(_, range)| *range)
            .collect()
    }

    pub fn snapshot(&self) -> DatapathSnapshot {
        DatapathSnapshot {
            services: self.services_of(),
            services6: self.services_of(),
            slots: self
                .slots
                .iter()
                .map(|(&(svc_id, bank, index), &id)| (SlotKey::new(svc_id, bank, index), id))
                .collect(),
            backends: self.backends_of(),
            backends6: self.backends_of(),
            vips: self.vips.iter().filter_map(|a| u32::from_ip(*a)).collect(),
            vips6: self
                .vips
                .iter()
                .filter_map(|a| In6Addr::from_ip(*a))
                .collect(),
            source_ranges: self.ranges_in::<u32>(),
            source_ranges6: self.ranges_in::<In6Addr>(),
            backend_ids_reserved: self.backend_ids_reserved,
            maglev: self
                .maglev
                .keys()
                .flat_map(|&(svc_id, bank, size)| {
                    (0..maglev::chunks(size)).map(move |chunk| {
                        MaglevKey::new(svc_id, size, bank, chunk.try_into().expect("u16 chunks"))
                    })
                })
                .collect(),
        }
    }

    /// Family `A`'s services map.
    fn services_of<A: WireAddr>(&self) -> Vec<(ServiceKeyOf<A>, ServiceValue)> {
        self.services
            .iter()
            .filter_map(|(k, s)| {
                Some((
                    wire::service_key::<A>(k)?,
                    wire::service_value(s.svc_id, s.count, s.bank, s.inline, &s.settings),
                ))
            })
            .collect()
    }

    /// Family `A`'s backends map.
    fn backends_of<A: WireAddr>(&self) -> Vec<(u32, BackendOf<A>)> {
        self.backends
            .iter()
            .filter_map(|(id, ep)| {
                let (svc_id, active) = self.backend_roles[id];
                Some((*id, wire::backend::<A>(ep, svc_id, active)?))
            })
            .collect()
    }

    /// Family `A`'s source ranges map.
    fn ranges_in<A: WireAddr>(&self) -> Vec<(u32, A::RangeKey)> {
        self.source_ranges
            .iter()
            .filter_map(|&(svc_id, range)| wire::source_range_key::<A>(svc_id, range))
            .collect()
    }
}

/// Whether two addresses are of one family (their entries in one family's maps).
fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv6() == b.is_ipv6()
}

impl FakeDatapath {
    /// Writes backend `b` into its endpoint's family's map.
    fn put_backend(&mut self, b: &BackendEntry) -> anyhow::Result<()> {
        let family = b.endpoint.addr;
        if let Some(held) = self.backends.get(&b.id) {
            assert!(
                same_family(held.addr, family),
                "backend id {} written in both families' maps ({held}, {})",
                b.id,
                b.endpoint
            );
        }
        full(
            &self.backends,
            &b.id,
            |_, ep| same_family(ep.addr, family),
            self.max_backends,
            wire::map_name_of(family, "KP_BACKENDS", "KP_BACKENDS6"),
        )?;
        assert!(
            b.id < self.backend_ids_reserved,
            "backend id {} written before it was reserved (below {})",
            b.id,
            self.backend_ids_reserved
        );
        self.backends.insert(b.id, b.endpoint);
        self.backend_roles.insert(b.id, (b.svc_id, b.active));
        Ok(())
    }

    /// Writes the Maglev table `op` (a `PutMaglevTable`) builds, which fails as the kernel's
    /// map does when full (`E2BIG`).
    fn put_maglev_table(&mut self, op: &MapOp) -> anyhow::Result<()> {
        let MapOp::PutMaglevTable {
            svc_id,
            bank,
            table_size,
            backends,
        } = op
        else {
            anyhow::bail!("{op:?} writes no Maglev table");
        };
        let backend_ids: Arc<[u32]> = super::maglev_backend_ids(backends, *table_size)?.into();
        let table = (*svc_id, *bank, *table_size);
        if let Some(max) = self.max_maglev_tables
            && !self.maglev.contains_key(&table)
            && self.maglev.len() >= max
        {
            return Err(
                anyhow::Error::from(std::io::Error::from_raw_os_error(libc::E2BIG))
                    .context("KP_MAGLEV"),
            );
        }
        self.maglev.insert(table, backend_ids);
        Ok(())
    }

    /// Writes `range` of `svc_id` into its family's trie, which fails as the kernel's does
    /// when full (`ENOSPC`).
    fn put_source_range(&mut self, svc_id: u32, range: IpNet) -> anyhow::Result<()> {
        let entry = (svc_id, range);
        let in_family = || {
            self.source_ranges
                .iter()
                .filter(|(_, r)| same_family(r.addr(), range.addr()))
                .count()
        };
        if let Some(max) = self.max_source_ranges
            && !self.source_ranges.contains(&entry)
            && in_family() >= max
        {
            return Err(
                anyhow::Error::from(std::io::Error::from_raw_os_error(libc::ENOSPC)).context(
                    wire::map_name_of(range.addr(), "KP_SOURCE_RANGES", "KP_SOURCE_RANGES6"),
                ),
            );
        }
        self.source_ranges.insert(entry);
        Ok(())
    }
}

impl Datapath for FakeDatapath {
    fn serves_ipv6(&self) -> bool {
        !self.without_ipv6_maps
    }

    fn apply(&mut self, op: &MapOp) -> anyhow::Result<()> {
        // A delete goes on: with no IPv6 map, no IPv6 entry exists to find.
        if self.without_ipv6_maps && op.is_ipv6() && !op.is_delete() {
            anyhow::bail!("{op:?}: the datapath has no IPv6 maps");
        }
        match op {
            MapOp::PutBackend { .. } | MapOp::SetBackendActive { .. } => {
                self.put_backend(&op.backend_entry().expect("a backend write"))?;
            }
            MapOp::DeleteBackend { id, endpoint } => {
                // Through the map of `endpoint`'s family: the other family's entry stays.
                if self
                    .backends
                    .get(id)
                    .is_some_and(|held| same_family(held.addr, endpoint.addr))
                {
                    self.backends.remove(id);
                    self.backend_roles.remove(id);
                }
            }
            MapOp::PutVip { addr } => {
                self.vips.insert(*addr);
            }
            MapOp::DeleteVip { addr } => {
                self.vips.remove(addr);
            }
            MapOp::ReserveBackendIds { up_to } => {
                if self.fail_reservation {
                    anyhow::bail!("KP_META: write failed (EPERM)");
                }
                self.backend_ids_reserved = *up_to;
            }
            MapOp::PutSlot {
                svc_id,
                bank,
                index,
                backend_id,
            } => {
                let slot = (*svc_id, *bank, *index);
                full(&self.slots, &slot, |_, _| true, self.max_slots, "KP_SLOTS")?;
                self.slots.insert(slot, *backend_id);
            }
            MapOp::DeleteSlot {
                svc_id,
                bank,
                index,
            } => {
                self.slots.remove(&(*svc_id, *bank, *index));
            }
            MapOp::PutMaglevTable { .. } => self.put_maglev_table(op)?,
            MapOp::DeleteMaglevTable {
                svc_id,
                bank,
                table_size,
            } => {
                self.maglev.remove(&(*svc_id, *bank, *table_size));
            }
            MapOp::ResetServiceCounters { svc_id } => self.counters_reset.push(*svc_id),
            MapOp::PutService {
                key,
                svc_id,
                count,
                bank,
                inline,
                settings,
            } => {
                full(
                    &self.services,
                    key,
                    |k, _| same_family(k.addr, key.addr),
                    self.max_services,
                    wire::map_name_of(key.addr, "KP_SERVICES", "KP_SERVICES6"),
                )?;
                self.services.insert(
                    *key,
                    FakeService {
                        svc_id: *svc_id,
                        count: *count,
                        bank: *bank,
                        inline: *inline,
                        settings: *settings,
                    },
                );
            }
            MapOp::PutSourceRange { svc_id, range } => self.put_source_range(*svc_id, *range)?,
            MapOp::DeleteSourceRange { svc_id, range } => {
                self.source_ranges.remove(&(*svc_id, *range));
            }
            MapOp::DeleteService { key } => {
                self.services.remove(key);
            }
        }
        self.log.push(op.clone());
        let view = self.views.is_some().then(|| self.view());
        if let (Some(view), Some(views)) = (view, self.views.as_mut()) {
            views.push(view);
        }
        Ok(())
    }
}

/// Fails like a full kernel hash map when `key` is new and the map it goes to holds `max`
/// entries: those of `map` that `in_map` says are in it.
fn full<K: Ord, V>(
    map: &BTreeMap<K, V>,
    key: &K,
    in_map: impl Fn(&K, &V) -> bool,
    max: Option<usize>,
    name: &'static str,
) -> anyhow::Result<()> {
    if let Some(max) = max
        && !map.contains_key(key)
        && map.iter().filter(|(k, v)| in_map(k, v)).count() >= max
    {
        return Err(
            anyhow::Error::from(std::io::Error::from_raw_os_error(libc::E2BIG)).context(name),
        );
    }
    Ok(())
}
