//! Rebuilding the programmed state from the maps a previous agent left pinned, so a restart
//! writes only what changed while it was away, and the datapath keeps serving meanwhile.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, hash_map::Entry},
    net::IpAddr,
};

use ipnet::IpNet;
use kproxy_common::{
    addr::In6Addr,
    lb::{
        Backend, Backend6, BackendOf, SLOT_BANK_SHIFT, ServiceKey, ServiceKey6, ServiceKeyOf,
        ServiceValue, SlotKey, SourceRangeKey, SourceRangeKey6,
    },
    maglev::{self, MaglevKey},
};

use super::{EntryCounts, IdPool, MapOp, Programmed, ProgrammedFrontend};
use crate::{
    model::{Endpoint, FrontendKey, maglev::DEFAULT_TABLE_SIZE},
    wire::{self, WireAddr},
};

/// The contents of the service maps, both families'. Service port ids (`KP_SLOTS`) and
/// backend ids are shared by the two: an id is in one family's maps only.
#[derive(Clone, Debug, Default)]
pub struct DatapathSnapshot {
    pub services: Vec<(ServiceKey, ServiceValue)>,
    pub services6: Vec<(ServiceKey6, ServiceValue)>,
    pub slots: Vec<(SlotKey, u32)>,
    pub backends: Vec<(u32, Backend)>,
    pub backends6: Vec<(u32, Backend6)>,
    /// `KP_VIPS` keys (wire format).
    pub vips: Vec<u32>,
    /// `KP_VIPS6` keys.
    pub vips6: Vec<In6Addr>,
    /// `KP_SOURCE_RANGES` keys with their prefix lengths.
    pub source_ranges: Vec<(u32, SourceRangeKey)>,
    /// `KP_SOURCE_RANGES6` keys with their prefix lengths.
    pub source_ranges6: Vec<(u32, SourceRangeKey6)>,
    /// `Meta::backend_ids_reserved`: no id below it may be handed out again.
    pub backend_ids_reserved: u32,
    /// `KP_MAGLEV` keys (the tables' chunks; their contents are not read).
    pub maglev: Vec<MaglevKey>,
}

/// A `KP_BACKENDS` or `KP_BACKENDS6` entry, whichever family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listed {
    pub endpoint: Endpoint,
    pub svc_id: u32,
    pub active: bool,
}

impl Listed {
    fn of<A: WireAddr>(backend: &BackendOf<A>) -> Self {
        Self {
            endpoint: wire::endpoint(backend),
            svc_id: backend.svc_id,
            active: backend.is_active(),
        }
    }
}

impl DatapathSnapshot {
    /// Every frontend entry of both families (`None`: a key the agent cannot read).
    pub fn frontends(&self) -> impl Iterator<Item = (Option<FrontendKey>, &ServiceValue)> {
        fn of<A: WireAddr>(
            entries: &[(ServiceKeyOf<A>, ServiceValue)],
        ) -> impl Iterator<Item = (Option<FrontendKey>, &ServiceValue)> {
            entries.iter().map(|(k, v)| (wire::frontend_key(k), v))
        }
        of(&self.services).chain(of(&self.services6))
    }

    /// Every backend entry of both families, with its id.
    pub fn backends(&self) -> impl Iterator<Item = (u32, Listed)> + '_ {
        fn of<A: WireAddr>(entries: &[(u32, BackendOf<A>)]) -> impl Iterator<Item = (u32, Listed)> {
            entries.iter().map(|(id, b)| (*id, Listed::of(b)))
        }
        of(&self.backends).chain(of(&self.backends6))
    }

    /// Every source range entry the agent can read, of both families: (service port id,
    /// range).
    pub fn source_ranges(&self) -> impl Iterator<Item = (u32, IpNet)> + '_ {
        fn of<A: WireAddr>(entries: &[(u32, A::RangeKey)]) -> impl Iterator<Item = (u32, IpNet)> {
            entries
                .iter()
                .filter_map(|(len, key)| wire::source_range::<A>(*len, key))
        }
        of::<u32>(&self.source_ranges).chain(of::<In6Addr>(&self.source_ranges6))
    }

    /// The VIPs of both families.
    pub fn vips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        (self.vips.iter().map(|a| a.to_ip())).chain(self.vips6.iter().map(|a| a.to_ip()))
    }
}

/// svc_id → bank → index → backend id
type Banks = HashMap<u32, [BTreeMap<u32, u32>; 2]>;

fn banks(slots: &[(SlotKey, u32)]) -> Banks {
    let mut banks: Banks = HashMap::new();
    for (key, id) in slots {
        let bank = usize::from(key.slot >> SLOT_BANK_SHIFT != 0);
        let index = key.slot & ((1 << SLOT_BANK_SHIFT) - 1);
        banks.entry(key.svc_id).or_default()[bank].insert(index, *id);
    }
    banks
}

impl Programmed {
    /// The state `snapshot` describes (both families), and the ops that clear what no
    /// service references (inactive banks, orphaned slots and backends, entries the agent
    /// cannot read) and bring the VIP maps in step.
    pub fn recover(snapshot: &DatapathSnapshot, max_services: u32) -> (Self, Vec<MapOp>) {
        Self::recover_for(snapshot, max_services, DEFAULT_TABLE_SIZE)
    }

    /// [`Programmed::recover`] for programs whose Maglev tables have `maglev_table_size`
    /// entries: a Maglev frontend whose active bank lacks a whole table of that size is
    /// rewritten by the next sync, and tables of other sizes, other banks or unknown
    /// service ports are deleted.
    pub fn recover_for(
        snapshot: &DatapathSnapshot,
        max_services: u32,
        maglev_table_size: u32,
    ) -> (Self, Vec<MapOp>) {
        let mut cleanup = Vec::new();
        let backends = backends_by_id(snapshot, &mut cleanup);
        let banks = banks(&snapshot.slots);
        // Source ranges of each service port id (entries the agent cannot read are left:
        // it never writes such keys, so it cannot name them to delete them either).
        let mut ranges: HashMap<u32, Vec<IpNet>> = HashMap::new();
        for (svc_id, range) in snapshot.source_ranges() {
            ranges.entry(svc_id).or_default().push(range);
        }
        // Backends of each service port id, whatever their role.
        let mut by_service: HashMap<u32, Vec<u32>> = HashMap::new();
        for (id, b) in &backends {
            by_service.entry(b.svc_id).or_default().push(*id);
        }

        let mut frontends = BTreeMap::new();
        let mut used_ids = HashSet::new();
        let mut live_backends = HashSet::new();
        for (key, value) in snapshot.frontends() {
            let key = match key {
                Some(key) if used_ids.insert(value.id) && value.id < max_services => key,
                // Unreadable, out of range, or a second service with the same id: unpublish
                // it; the next sync programs it again from scratch if it is still wanted.
                Some(key) => {
                    cleanup.push(MapOp::DeleteService { key });
                    continue;
                }
                None => continue,
            };
            let mut frontend =
                recover_frontend(&key, value, banks.get(&value.id), &backends, &by_service);
            frontend.source_ranges = ranges.remove(&value.id).unwrap_or_default();
            frontend.source_ranges.sort_unstable();
            frontend.source_ranges.dedup();
            live_backends.extend(frontend.backend_ids());
            frontends.insert(key, frontend);
        }

        recover_maglev_tables(
            &mut frontends,
            &snapshot.maglev,
            maglev_table_size,
            &mut cleanup,
        );

        // Inactive banks and slots of unknown services go; so do unlisted backends.
        let active_banks: HashMap<u32, u8> =
            frontends.values().map(|f| (f.svc_id, f.bank)).collect();
        for (key, _) in &snapshot.slots {
            let bank = u8::from(key.slot >> SLOT_BANK_SHIFT != 0);
            let index = key.slot & ((1 << SLOT_BANK_SHIFT) - 1);
            if active_banks.get(&key.svc_id) != Some(&bank) {
                cleanup.push(MapOp::DeleteSlot {
                    svc_id: key.svc_id,
                    bank,
                    index,
                });
            }
        }
        for (id, listed) in snapshot.backends() {
            if !live_backends.contains(&id) && backends.get(&id) == Some(&listed) {
                cleanup.push(MapOp::DeleteBackend {
                    id,
                    endpoint: listed.endpoint,
                });
            }
        }

        // Ranges of service port ids no frontend uses.
        for (svc_id, list) in ranges {
            cleanup.extend(
                list.into_iter()
                    .map(|range| MapOp::DeleteSourceRange { svc_id, range }),
            );
        }

        let vips = vip_counts(
            frontends
                .keys()
                .filter(|k| !k.is_node_port())
                .map(|k| k.addr),
        );
        cleanup.extend(vip_ops(&vips, &snapshot.vips().collect()));

        // Ids below the reservation may name flows in conntrack: never hand them out again.
        let reserved = snapshot.backend_ids_reserved.max(1);
        let highest = backends.keys().copied().max();
        let next_backend_id = highest.map_or(reserved, |max| reserved.max(max.saturating_add(1)));
        let svc_ids = IdPool::with_used(max_services, frontends.values().map(|f| f.svc_id));
        // Freed ids have their counters reset when freed; a previous agent may have stopped
        // in between, so reset the free ones below the highest id in use.
        cleanup.extend(
            svc_ids
                .free_ids()
                .map(|svc_id| MapOp::ResetServiceCounters { svc_id }),
        );
        let programmed = Self {
            svc_ids,
            counts: EntryCounts::of(&frontends),
            frontends,
            next_backend_id,
            backend_ids_reserved: reserved,
            vips,
            retry: BTreeSet::new(),
            maglev_table_size,
        };
        (programmed, cleanup)
    }
}

/// Marks the Maglev frontends of `frontends` whose active bank lacks a whole table of
/// `table_size` entries for a rewrite, and deletes every other table (`cleanup`).
fn recover_maglev_tables(
    frontends: &mut BTreeMap<FrontendKey, ProgrammedFrontend>,
    chunks: &[MaglevKey],
    table_size: u32,
    cleanup: &mut Vec<MapOp>,
) {
    // (service port id, table size, bank) → chunks present.
    let mut tables: HashMap<(u32, u32, u8), u32> = HashMap::new();
    for key in chunks {
        *tables
            .entry((key.svc_id, key.table_size, key.bank))
            .or_default() += 1;
    }
    let mut in_use = HashSet::new();
    for frontend in frontends.values_mut() {
        if !frontend.settings.maglev || frontend.backends.is_empty() {
            continue;
        }
        let table = (frontend.svc_id, table_size, frontend.bank);
        if tables.get(&table) != Some(&maglev::chunks(table_size)) {
            frontend.needs_rewrite = true;
        }
        in_use.insert(table);
    }
    let mut unused: Vec<(u32, u32, u8)> = tables
        .into_keys()
        .filter(|table| !in_use.contains(table))
        .collect();
    unused.sort_unstable();
    cleanup.extend(
        unused
            .into_iter()
            .map(|(svc_id, table_size, bank)| MapOp::DeleteMaglevTable {
                svc_id,
                bank,
                table_size,
            }),
    );
}

/// The backends of both families by id. An id is in one family's map only; of one found in
/// both, the IPv4 entry is read and the other is deleted (`cleanup`).
fn backends_by_id(snapshot: &DatapathSnapshot, cleanup: &mut Vec<MapOp>) -> HashMap<u32, Listed> {
    let mut backends: HashMap<u32, Listed> = HashMap::new();
    for (id, listed) in snapshot.backends() {
        match backends.entry(id) {
            Entry::Occupied(_) => cleanup.push(MapOp::DeleteBackend {
                id,
                endpoint: listed.endpoint,
            }),
            Entry::Vacant(slot) => {
                slot.insert(listed);
            }
        }
    }
    backends
}

/// The writes that make the VIP maps (`pinned`) hold exactly the VIPs of `counts`.
fn vip_ops(counts: &BTreeMap<IpAddr, u32>, pinned: &BTreeSet<IpAddr>) -> Vec<MapOp> {
    let missing = counts
        .keys()
        .filter(|a| !pinned.contains(a))
        .map(|&addr| MapOp::PutVip { addr });
    let unused = pinned
        .iter()
        .filter(|a| !counts.contains_key(a))
        .map(|&addr| MapOp::DeleteVip { addr });
    missing.chain(unused).collect()
}

/// How many frontends use each VIP.
fn vip_counts(addrs: impl Iterator<Item = IpAddr>) -> BTreeMap<IpAddr, u32> {
    let mut counts = BTreeMap::new();
    for addr in addrs {
        *counts.entry(addr).or_insert(0) += 1;
    }
    counts
}

/// One published frontend (`key`) as the maps hold it: the backends of its active bank take
/// new connections, the other backends of its service port id are only listed. Anything
/// inconsistent (a slot or backend missing, a role flag that does not match, a backend of
/// the other family) marks it for a complete rewrite by the next sync.
fn recover_frontend(
    key: &FrontendKey,
    value: &ServiceValue,
    banks: Option<&[BTreeMap<u32, u32>; 2]>,
    backends: &HashMap<u32, Listed>,
    by_service: &HashMap<u32, Vec<u32>>,
) -> ProgrammedFrontend {
    let of_family = |b: &Listed| b.endpoint.addr.is_ipv6() == key.addr.is_ipv6();
    let active_bank = usize::from(value.bank & 1);
    let mut complete = true;
    let mut active = Vec::new();
    for index in 0..u32::from(value.count) {
        match banks
            .and_then(|b| b[active_bank].get(&index))
            .and_then(|id| Some((*id, backends.get(id)?)))
        {
            Some((id, backend)) => {
                complete &= backend.active && backend.svc_id == value.id && of_family(backend);
                active.push((backend.endpoint, id));
            }
            None => complete = false,
        }
    }
    let in_slots: HashSet<u32> = active.iter().map(|(_, id)| *id).collect();
    let mut standby: Vec<(Endpoint, u32)> = by_service
        .get(&value.id)
        .into_iter()
        .flatten()
        .filter(|id| !in_slots.contains(id))
        .filter_map(|id| {
            let backend = backends.get(id)?;
            complete &= !backend.active && of_family(backend);
            Some((backend.endpoint, *id))
        })
        .collect();
    standby.sort_unstable();
    let mut bank_len = [0u32; 2];
    bank_len[active_bank] = banks
        .and_then(|b| b[active_bank].keys().last())
        .map_or(0, |i| i + 1);
    ProgrammedFrontend {
        service: None,
        svc_id: value.id,
        bank: value.bank & 1,
        bank_len,
        settings: wire::settings_of(value),
        source_ranges: Vec::new(),
        backends: active,
        standby,
        needs_rewrite: !complete,
    }
}
