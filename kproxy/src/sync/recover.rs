//! Rebuilding the programmed state from the maps a previous agent left pinned, so a restart
//! writes only what changed while it was away, and the datapath keeps serving meanwhile.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
};

use ipnet::IpNet;
use itertools::EitherOrBoth;
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
    model::{Endpoint, FrontendKey, dense::Densify, maglev::DEFAULT_TABLE_SIZE},
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
    pub fn of<A: WireAddr>(backend: &BackendOf<A>) -> Self {
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

    /// The VIPs of both families (in address order once sorted).
    pub fn vips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        (self.vips.iter().map(|a| a.to_ip())).chain(self.vips6.iter().map(|a| a.to_ip()))
    }
}

impl DatapathSnapshot {
    /// Sorts what [`Index`] looks up: backends by id (each family), slots by service port
    /// id and slot, VIPs by address. In place: an index holding sorted copies held 8 MB
    /// more at 100,000 Services whenever the maps are read whole (a restart, a drift
    /// check that found a difference). Sorting what is sorted already is one pass.
    pub fn sort(&mut self) {
        self.backends.sort_unstable_by_key(by_id);
        self.backends6.sort_unstable_by_key(by_id);
        self.slots.sort_unstable_by_key(slot_order);
        self.vips.sort_unstable_by_key(|a| a.to_ip());
        self.vips6.sort_unstable_by_key(|a| a.to_ip());
    }

    fn is_sorted(&self) -> bool {
        self.backends.is_sorted_by_key(by_id)
            && self.backends6.is_sorted_by_key(by_id)
            && self.slots.is_sorted_by_key(slot_order)
            && self.vips.is_sorted_by_key(|a| a.to_ip())
            && self.vips6.is_sorted_by_key(|a| a.to_ip())
    }
}

/// The order [`DatapathSnapshot::sort`] gives backends.
fn by_id<V>((id, _): &(u32, V)) -> u32 {
    *id
}

/// The order [`DatapathSnapshot::sort`] gives slots: a bank's contiguous, in index order.
fn slot_order((key, id): &(SlotKey, u32)) -> (u32, u32, u32) {
    (key.svc_id, key.slot, *id)
}

/// A sorted snapshot's backends and slots, for lookups by id. A drift check reads 100,000
/// frontends this way every period: maps of maps (a B-tree per bank, a hash entry per
/// backend) made that check the agent's peak memory.
pub(super) struct Index<'a> {
    snapshot: &'a DatapathSnapshot,
    /// (service port id, backend id) of every backend, sorted.
    by_service: Vec<(u32, u32)>,
}

/// Where a backend entry is: below `snapshot.backends.len()` an IPv4 entry, above an IPv6
/// one.
type At = usize;

impl<'a> Index<'a> {
    /// `snapshot` (sorted: [`DatapathSnapshot::sort`]) indexed. An id is in one family's map
    /// only; of one found in both, the IPv4 entry is read and the other is deleted
    /// (`cleanup`).
    pub(super) fn new(snapshot: &'a DatapathSnapshot, cleanup: &mut Vec<MapOp>) -> Self {
        debug_assert!(snapshot.is_sorted(), "an index needs a sorted snapshot");
        let mut index = Self {
            snapshot,
            by_service: Vec::new(),
        };
        for (id, at) in index.entries() {
            if at >= snapshot.backends.len() && index.v4_position(id).is_some() {
                cleanup.push(MapOp::DeleteBackend {
                    id,
                    endpoint: index.listed_at(at).endpoint,
                });
            }
        }
        let mut by_service = Vec::with_capacity(index.positions());
        by_service.extend(index.backends().map(|(id, listed)| (listed.svc_id, id)));
        by_service.sort_unstable();
        index.by_service = by_service;
        index
    }

    /// Every backend entry of both families, by id (an id found in both twice, the IPv4
    /// entry first).
    fn entries(&self) -> impl Iterator<Item = (u32, At)> + '_ {
        let v4 = self.snapshot.backends.iter().map(|(id, _)| *id).zip(0..);
        let v6 =
            (self.snapshot.backends6.iter().map(|(id, _)| *id)).zip(self.snapshot.backends.len()..);
        itertools::merge(v4, v6)
    }

    fn v4_position(&self, id: u32) -> Option<At> {
        self.snapshot
            .backends
            .binary_search_by_key(&id, |(id, _)| *id)
            .ok()
    }

    /// Where the entry read for `id` is (the IPv4 one of an id found twice).
    fn position(&self, id: u32) -> Option<At> {
        self.v4_position(id).or_else(|| {
            let at = (self.snapshot.backends6)
                .binary_search_by_key(&id, |(id, _)| *id)
                .ok()?;
            Some(self.snapshot.backends.len() + at)
        })
    }

    /// Positions, one past the last.
    fn positions(&self) -> usize {
        self.snapshot.backends.len() + self.snapshot.backends6.len()
    }

    fn listed_at(&self, at: At) -> Listed {
        match self.snapshot.backends.get(at) {
            Some((_, backend)) => Listed::of(backend),
            None => Listed::of(&self.snapshot.backends6[at - self.snapshot.backends.len()].1),
        }
    }

    /// The backend of `id`, if any.
    fn backend(&self, id: u32) -> Option<Listed> {
        Some(self.listed_at(self.position(id)?))
    }

    /// The highest backend id present.
    fn highest_backend_id(&self) -> Option<u32> {
        let v4 = self.snapshot.backends.last().map(|(id, _)| *id);
        v4.max(self.snapshot.backends6.last().map(|(id, _)| *id))
    }

    /// Every backend with its id and position, by id (the one read of an id found twice).
    fn read_backends(&self) -> impl Iterator<Item = (u32, At, Listed)> + '_ {
        let v4 = self.snapshot.backends.len();
        self.entries()
            .filter(move |&(id, at)| at < v4 || self.v4_position(id).is_none())
            .map(|(id, at)| (id, at, self.listed_at(at)))
    }

    /// Every backend, with its id (the one read of an id found twice).
    fn backends(&self) -> impl Iterator<Item = (u32, Listed)> + '_ {
        self.read_backends().map(|(id, _, listed)| (id, listed))
    }

    /// The slots of `svc_id`'s `bank`, as (index, backend id) in index order.
    fn bank(
        &self,
        svc_id: u32,
        bank: u8,
    ) -> impl DoubleEndedIterator<Item = (u32, u32)> + Clone + '_ {
        let first = (u32::from(bank & 1)) << SLOT_BANK_SHIFT;
        let last = first | ((1 << SLOT_BANK_SHIFT) - 1);
        let slots = &self.snapshot.slots;
        let from = slots.partition_point(|(key, _)| (key.svc_id, key.slot) < (svc_id, first));
        let to = slots.partition_point(|(key, _)| (key.svc_id, key.slot) <= (svc_id, last));
        slots[from..to]
            .iter()
            .map(move |(key, id)| (key.slot & ((1 << SLOT_BANK_SHIFT) - 1), *id))
    }

    /// The ids of `svc_id`'s backends, whatever their role.
    fn of_service(&self, svc_id: u32) -> impl Iterator<Item = u32> + '_ {
        let from = self.by_service.partition_point(|&(s, _)| s < svc_id);
        self.by_service[from..]
            .iter()
            .take_while(move |&&(s, _)| s == svc_id)
            .map(|&(_, id)| id)
    }
}

impl Programmed {
    /// The state `snapshot` describes (both families), and the ops that clear what no
    /// service references (inactive banks, orphaned slots and backends, entries the agent
    /// cannot read) and bring the VIP maps in step.
    pub fn recover(snapshot: &mut DatapathSnapshot, max_services: u32) -> (Self, Vec<MapOp>) {
        Self::recover_for(snapshot, max_services, DEFAULT_TABLE_SIZE)
    }

    /// [`Programmed::recover`] for programs whose Maglev tables have `maglev_table_size`
    /// entries: a Maglev frontend whose active bank lacks a whole table of that size is
    /// rewritten by the next sync, and tables of other sizes, other banks or unknown
    /// service ports are deleted.
    pub fn recover_for(
        snapshot: &mut DatapathSnapshot,
        max_services: u32,
        maglev_table_size: u32,
    ) -> (Self, Vec<MapOp>) {
        snapshot.sort();
        let snapshot = &*snapshot;
        let mut cleanup = Vec::new();
        let index = Index::new(snapshot, &mut cleanup);
        let mut reader = FrontendReader::new(&index, max_services, maglev_table_size);
        // Collected at once (sorted, then built with full nodes): the maps list frontends in
        // hash order, and inserting them one by one left the nodes three-quarters full.
        let frontends: BTreeMap<FrontendKey, ProgrammedFrontend> = snapshot
            .frontends()
            .filter_map(|(key, value)| reader.read(key, value, &mut cleanup))
            .collect();
        let (mut ranges, tables) = reader.finish();
        stray_entries(
            &index,
            frontends.iter(),
            &mut ranges,
            &tables,
            maglev_table_size,
            &mut cleanup,
        );
        let vips = vip_counts(frontends.keys());
        cleanup.extend(vip_ops(&vips, snapshot.vips()));

        // Ids below the reservation may name flows in conntrack: never hand them out again.
        let reserved = snapshot.backend_ids_reserved.max(1);
        let highest = index.highest_backend_id();
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
            frontends_density: Densify::default(),
            vips_density: Densify::default(),
        };
        (programmed, cleanup)
    }
}

/// Maglev tables present: (service port id, table size, bank) → chunks.
type Tables = HashMap<(u32, u32, u8), u32>;

/// Source ranges of each service port id.
type Ranges = HashMap<u32, Vec<IpNet>>;

/// Reads the published frontends of an indexed snapshot one at a time, so that a caller
/// can compare each with its own record without holding all of them.
pub(super) struct FrontendReader<'i, 'a> {
    index: &'i Index<'a>,
    max_services: u32,
    maglev_table_size: u32,
    /// Source ranges not claimed by a frontend read so far (entries the agent cannot read
    /// are left: it never writes such keys, so it cannot name them to delete them either).
    ranges: Ranges,
    tables: Tables,
    used_ids: HashSet<u32>,
}

impl<'i, 'a> FrontendReader<'i, 'a> {
    pub(super) fn new(index: &'i Index<'a>, max_services: u32, maglev_table_size: u32) -> Self {
        let mut ranges: Ranges = HashMap::new();
        for (svc_id, range) in index.snapshot.source_ranges() {
            ranges.entry(svc_id).or_default().push(range);
        }
        let mut tables: Tables = HashMap::new();
        for key in &index.snapshot.maglev {
            *tables
                .entry((key.svc_id, key.table_size, key.bank))
                .or_default() += 1;
        }
        Self {
            index,
            max_services,
            maglev_table_size,
            ranges,
            tables,
            used_ids: HashSet::new(),
        }
    }

    /// The frontend of one service entry (`key` `None`: a key the agent cannot read).
    /// Unreadable, out of range, or a second service with the same id: `None`, and the
    /// entry is unpublished (`cleanup`); the next sync programs it again from scratch if
    /// it is still wanted.
    pub(super) fn read(
        &mut self,
        key: Option<FrontendKey>,
        value: &ServiceValue,
        cleanup: &mut Vec<MapOp>,
    ) -> Option<(FrontendKey, ProgrammedFrontend)> {
        let key = key?;
        if !(self.used_ids.insert(value.id) && value.id < self.max_services) {
            cleanup.push(MapOp::DeleteService { key });
            return None;
        }
        let mut frontend = recover_frontend(&key, value, self.index);
        frontend.source_ranges = self.ranges.remove(&value.id).unwrap_or_default();
        frontend.source_ranges.sort_unstable();
        frontend.source_ranges.dedup();
        // A Maglev frontend whose active bank lacks a whole table is rewritten.
        if frontend.settings.maglev && !frontend.backends.is_empty() {
            let table = (frontend.svc_id, self.maglev_table_size, frontend.bank);
            if self.tables.get(&table) != Some(&maglev::chunks(self.maglev_table_size)) {
                frontend.needs_rewrite = true;
            }
        }
        Some((key, frontend))
    }

    /// The source ranges no frontend read claimed, and the Maglev tables present.
    pub(super) fn finish(self) -> (Ranges, Tables) {
        (self.ranges, self.tables)
    }
}

/// The ops that delete what `frontends` (the frontends the maps hold) do not reference:
/// slots of inactive banks and of unknown service ports, backends no frontend lists, the
/// source ranges left in `ranges`, and Maglev tables of other sizes, other banks or
/// unknown service ports.
pub(super) fn stray_entries<'f>(
    index: &Index,
    frontends: impl Iterator<Item = (&'f FrontendKey, &'f ProgrammedFrontend)>,
    ranges: &mut Ranges,
    tables: &Tables,
    maglev_table_size: u32,
    cleanup: &mut Vec<MapOp>,
) {
    // The active bank of each service port id whose slots are in `KP_SLOTS`.
    let mut active_banks: HashMap<u32, u8> = HashMap::new();
    // Marks, by position in the snapshot, of the backends some frontend lists.
    let mut live = vec![false; index.positions()];
    let mut tables_in_use = HashSet::new();
    for (_, frontend) in frontends {
        if frontend.active_slots() > 0 {
            active_banks.insert(frontend.svc_id, frontend.bank);
        }
        for id in frontend.backend_ids() {
            if let Some(at) = index.position(id) {
                live[at] = true;
            }
        }
        if frontend.settings.maglev && !frontend.backends.is_empty() {
            tables_in_use.insert((frontend.svc_id, maglev_table_size, frontend.bank));
        }
    }
    let mut unused_tables: Vec<(u32, u32, u8)> = tables
        .keys()
        .filter(|table| !tables_in_use.contains(*table))
        .copied()
        .collect();
    unused_tables.sort_unstable();
    cleanup.extend(unused_tables.into_iter().map(|(svc_id, table_size, bank)| {
        MapOp::DeleteMaglevTable {
            svc_id,
            bank,
            table_size,
        }
    }));
    for (key, _) in &index.snapshot.slots {
        let bank = u8::from(key.slot >> SLOT_BANK_SHIFT != 0);
        let slot_index = key.slot & ((1 << SLOT_BANK_SHIFT) - 1);
        if active_banks.get(&key.svc_id) != Some(&bank) {
            cleanup.push(MapOp::DeleteSlot {
                svc_id: key.svc_id,
                bank,
                index: slot_index,
            });
        }
    }
    for (id, at, listed) in index.read_backends() {
        if !live[at] {
            cleanup.push(MapOp::DeleteBackend {
                id,
                endpoint: listed.endpoint,
            });
        }
    }
    // Ranges of service port ids no frontend uses.
    for (svc_id, list) in ranges.drain() {
        cleanup.extend(
            list.into_iter()
                .map(|range| MapOp::DeleteSourceRange { svc_id, range }),
        );
    }
}

/// The writes that make the VIP maps (`pinned`) hold exactly the VIPs of `counts`.
pub(super) fn vip_ops(
    counts: &BTreeMap<IpAddr, u32>,
    pinned: impl Iterator<Item = IpAddr>,
) -> Vec<MapOp> {
    // Both in address order: merged, rather than the pinned ones collected into a set
    // (100,000 VIPs: 2 MB for every drift check). The missing ones first.
    let (mut ops, mut unused) = (Vec::new(), Vec::new());
    for both in itertools::merge_join_by(counts.keys(), pinned, |counted, pinned| {
        (*counted).cmp(pinned)
    }) {
        match both {
            EitherOrBoth::Left(&addr) => ops.push(MapOp::PutVip { addr }),
            EitherOrBoth::Right(addr) => unused.push(MapOp::DeleteVip { addr }),
            EitherOrBoth::Both(..) => {}
        }
    }
    ops.append(&mut unused);
    ops
}

/// How many frontends use each VIP (NodePorts have none of their own).
pub(super) fn vip_counts<'a>(keys: impl Iterator<Item = &'a FrontendKey>) -> BTreeMap<IpAddr, u32> {
    let mut addrs: Vec<IpAddr> = keys.filter(|k| !k.is_node_port()).map(|k| k.addr).collect();
    addrs.sort_unstable();
    // Counted in runs and collected at once: a map with full nodes (see `model::dense`).
    let mut counts: Vec<(IpAddr, u32)> = Vec::new();
    for addr in addrs {
        match counts.last_mut() {
            Some((last, count)) if *last == addr => *count += 1,
            _ => counts.push((addr, 1)),
        }
    }
    counts.into_iter().collect()
}

/// One published frontend (`key`) as the maps hold it: the backends of its active bank take
/// new connections, the other backends of its service port id are only listed. Anything
/// inconsistent (a slot or backend missing, a role flag that does not match, a backend of
/// the other family) marks it for a complete rewrite by the next sync.
fn recover_frontend(key: &FrontendKey, value: &ServiceValue, index: &Index) -> ProgrammedFrontend {
    let of_family = |b: &Listed| b.endpoint.addr.is_ipv6() == key.addr.is_ipv6();
    let active_bank = value.bank & 1;
    let mut complete = true;
    let mut active = Vec::new();
    let bank = index.bank(value.id, active_bank);
    // A value that holds its backends itself uses no slots: those of its active bank are
    // strays, deleted by the cleanup (see `stray_entries`), as the other bank's are.
    let mut bank_len = [0u32; 2];
    if !value.slots_inline() {
        bank_len[usize::from(active_bank)] = bank.clone().next_back().map_or(0, |(at, _)| at + 1);
    }
    // Slots come in index order, each index once: the one wanted is next, or missing.
    let mut slots = bank.peekable();
    for wanted in 0..u32::from(value.count) {
        let id = if value.slots_inline() {
            value.inline_slot(wanted)
        } else {
            slots.next_if(|&(at, _)| at == wanted).map(|(_, id)| id)
        };
        match id.and_then(|id| Some((id, index.backend(id)?))) {
            Some((id, backend)) => {
                complete &= backend.active && backend.svc_id == value.id && of_family(&backend);
                active.push((backend.endpoint, id));
            }
            None => complete = false,
        }
    }
    let mut in_slots: Vec<u32> = active.iter().map(|(_, id)| *id).collect();
    in_slots.sort_unstable();
    let mut standby: Vec<(Endpoint, u32)> = index
        .of_service(value.id)
        .filter(|id| in_slots.binary_search(id).is_err())
        .filter_map(|id| {
            let backend = index.backend(id)?;
            complete &= !backend.active && of_family(&backend);
            Some((backend.endpoint, id))
        })
        .collect();
    standby.sort_unstable();
    ProgrammedFrontend {
        service: None,
        svc_id: value.id,
        bank: active_bank,
        bank_len,
        settings: wire::settings_of(value),
        source_ranges: Vec::new(),
        backends: active,
        standby,
        needs_rewrite: !complete,
    }
}
