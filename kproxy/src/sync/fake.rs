//! An in-memory model of the service maps for tests: applies `MapOp`s with map capacities,
//! and resolves frontends the way the datapath does so tests can check what packets see.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use ipnet::Ipv4Net;
use kproxy_common::lb::SlotKey;

use super::{Datapath, DatapathSnapshot, MapOp, ServiceSettings};
use crate::{
    model::{Endpoint, FrontendKey},
    wire,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FakeService {
    pub svc_id: u32,
    pub count: u16,
    pub bank: u8,
    pub settings: ServiceSettings,
}

/// What a packet to a frontend would find.
pub type View = BTreeMap<FrontendKey, Result<(Vec<Endpoint>, Option<u32>), String>>;

#[derive(Default)]
pub struct FakeDatapath {
    pub services: BTreeMap<FrontendKey, FakeService>,
    pub slots: BTreeMap<(u32, u8, u32), u32>,
    pub backends: BTreeMap<u32, Endpoint>,
    /// Service port id and "takes new connections" of each backend.
    pub backend_roles: BTreeMap<u32, (u32, bool)>,
    pub vips: BTreeSet<Ipv4Addr>,
    /// `KP_SOURCE_RANGES`: (service port id, range).
    pub source_ranges: BTreeSet<(u32, Ipv4Net)>,
    /// `KP_META`'s backend id reservation.
    pub backend_ids_reserved: u32,
    /// Fails `ReserveBackendIds` (a KP_META write error).
    pub fail_reservation: bool,
    pub counters_reset: Vec<u32>,
    pub log: Vec<MapOp>,
    /// Map capacities (unbounded when unset). A write beyond one fails as the kernel's
    /// does: `E2BIG`, in the map's name.
    pub max_services: Option<usize>,
    pub max_slots: Option<usize>,
    pub max_backends: Option<usize>,
    pub max_source_ranges: Option<usize>,
    /// The view after every applied op, when recording.
    pub views: Option<Vec<View>>,
}

impl FakeDatapath {
    pub fn recording() -> Self {
        Self {
            views: Some(Vec::new()),
            ..Self::default()
        }
    }

    /// Resolves every published frontend through its active bank.
    pub fn view(&self) -> View {
        self.services
            .iter()
            .map(|(key, svc)| {
                let resolved: Result<Vec<Endpoint>, String> =
                    (0..u32::from(svc.count))
                        .map(|index| {
                            let id = self.slots.get(&(svc.svc_id, svc.bank, index)).ok_or_else(
                                || format!("{key}: slot {index} of bank {} missing", svc.bank),
                            )?;
                            self.backends
                                .get(id)
                                .copied()
                                .ok_or_else(|| format!("{key}: backend {id} missing"))
                        })
                        .collect();
                (
                    *key,
                    resolved.map(|eps| (eps, svc.settings.affinity_timeout_s)),
                )
            })
            .collect()
    }

    /// The source ranges `KP_SOURCE_RANGES` holds for service port `svc_id`.
    pub fn ranges_of(&self, svc_id: u32) -> Vec<Ipv4Net> {
        self.source_ranges
            .iter()
            .filter(|(id, _)| *id == svc_id)
            .map(|(_, range)| *range)
            .collect()
    }

    pub fn snapshot(&self) -> DatapathSnapshot {
        DatapathSnapshot {
            services: self
                .services
                .iter()
                .map(|(k, s)| {
                    (
                        wire::service_key(k).expect("the planner programs IPv4 only"),
                        wire::service_value(s.svc_id, s.count, s.bank, &s.settings),
                    )
                })
                .collect(),
            slots: self
                .slots
                .iter()
                .map(|(&(svc_id, bank, index), &id)| (SlotKey::new(svc_id, bank, index), id))
                .collect(),
            backends: self
                .backends
                .iter()
                .map(|(id, ep)| {
                    let (svc_id, active) = self.backend_roles[id];
                    (
                        *id,
                        wire::backend(ep, svc_id, active).expect("the planner programs IPv4 only"),
                    )
                })
                .collect(),
            vips: self.vips.iter().map(|a| wire::addr_to_wire(*a)).collect(),
            source_ranges: self
                .source_ranges
                .iter()
                .map(|&(svc_id, range)| wire::source_range_key(svc_id, range))
                .collect(),
            backend_ids_reserved: self.backend_ids_reserved,
        }
    }
}

impl Datapath for FakeDatapath {
    fn apply(&mut self, op: &MapOp) -> anyhow::Result<()> {
        match op {
            MapOp::PutBackend { .. } | MapOp::SetBackendActive { .. } => {
                let b = op.backend_entry().expect("a backend write");
                full(&self.backends, &b.id, self.max_backends, "KP_BACKENDS")?;
                assert!(
                    b.id < self.backend_ids_reserved,
                    "backend id {} written before it was reserved (below {})",
                    b.id,
                    self.backend_ids_reserved
                );
                self.backends.insert(b.id, b.endpoint);
                self.backend_roles.insert(b.id, (b.svc_id, b.active));
            }
            MapOp::DeleteBackend { id } => {
                self.backends.remove(id);
                self.backend_roles.remove(id);
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
                full(&self.slots, &slot, self.max_slots, "KP_SLOTS")?;
                self.slots.insert(slot, *backend_id);
            }
            MapOp::DeleteSlot {
                svc_id,
                bank,
                index,
            } => {
                self.slots.remove(&(*svc_id, *bank, *index));
            }
            MapOp::ResetServiceCounters { svc_id } => self.counters_reset.push(*svc_id),
            MapOp::PutService {
                key,
                svc_id,
                count,
                bank,
                settings,
            } => {
                full(&self.services, key, self.max_services, "KP_SERVICES")?;
                self.services.insert(
                    *key,
                    FakeService {
                        svc_id: *svc_id,
                        count: *count,
                        bank: *bank,
                        settings: *settings,
                    },
                );
            }
            MapOp::PutSourceRange { svc_id, range } => {
                let entry = (*svc_id, *range);
                if !self.source_ranges.contains(&entry)
                    && self.source_ranges.len() >= self.max_source_ranges.unwrap_or(usize::MAX)
                {
                    return Err(anyhow::Error::from(std::io::Error::from_raw_os_error(
                        libc::ENOSPC,
                    ))
                    .context("KP_SOURCE_RANGES"));
                }
                self.source_ranges.insert(entry);
            }
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

/// Fails like a full kernel hash map when `key` is new and `map` holds `max` entries.
fn full<K: Ord, V>(
    map: &BTreeMap<K, V>,
    key: &K,
    max: Option<usize>,
    name: &'static str,
) -> anyhow::Result<()> {
    if !map.contains_key(key) && map.len() >= max.unwrap_or(usize::MAX) {
        return Err(
            anyhow::Error::from(std::io::Error::from_raw_os_error(libc::E2BIG)).context(name),
        );
    }
    Ok(())
}
