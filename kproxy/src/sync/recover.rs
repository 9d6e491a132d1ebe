//! Rebuilding the programmed state from the maps a previous agent left pinned, so a restart
//! writes only what changed while it was away, and the datapath keeps serving meanwhile.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::{IpAddr, Ipv4Addr},
};

use ipnet::Ipv4Net;
use kproxy_common::lb::{
    Backend, SLOT_BANK_SHIFT, ServiceKey, ServiceValue, SlotKey, SourceRangeKey,
};

use super::{IdPool, MapOp, Programmed, ProgrammedFrontend};
use crate::wire;

/// The contents of the service maps.
#[derive(Clone, Debug, Default)]
pub struct DatapathSnapshot {
    pub services: Vec<(ServiceKey, ServiceValue)>,
    pub slots: Vec<(SlotKey, u32)>,
    pub backends: Vec<(u32, Backend)>,
    /// `KP_VIPS` keys (wire format).
    pub vips: Vec<u32>,
    /// `KP_SOURCE_RANGES` keys with their prefix lengths.
    pub source_ranges: Vec<(u32, SourceRangeKey)>,
    /// `Meta::backend_ids_reserved`: no id below it may be handed out again.
    pub backend_ids_reserved: u32,
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
    /// The state `snapshot` describes, and the ops that clear what no service references
    /// (inactive banks, orphaned slots and backends, entries the agent cannot read) and
    /// bring `KP_VIPS` in step.
    pub fn recover(snapshot: &DatapathSnapshot, max_services: u32) -> (Self, Vec<MapOp>) {
        let backends: HashMap<u32, Backend> = snapshot.backends.iter().copied().collect();
        let banks = banks(&snapshot.slots);
        // Source ranges of each service port id (entries the agent cannot read are left:
        // it never writes such keys, so it cannot name them to delete them either).
        let mut ranges: HashMap<u32, Vec<Ipv4Net>> = HashMap::new();
        for (len, key) in &snapshot.source_ranges {
            if let Some((svc_id, range)) = wire::source_range(*len, key) {
                ranges.entry(svc_id).or_default().push(range);
            }
        }
        // Backends of each service port id, whatever their role.
        let mut by_service: HashMap<u32, Vec<u32>> = HashMap::new();
        for (id, b) in &snapshot.backends {
            by_service.entry(b.svc_id).or_default().push(*id);
        }

        let mut cleanup = Vec::new();
        let mut frontends = BTreeMap::new();
        let mut used_ids = HashSet::new();
        let mut live_backends = HashSet::new();
        for (skey, value) in &snapshot.services {
            let key = match wire::frontend_key(skey) {
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
                recover_frontend(value, banks.get(&value.id), &backends, &by_service);
            frontend.source_ranges = ranges.remove(&value.id).unwrap_or_default();
            frontend.source_ranges.sort_unstable();
            frontend.source_ranges.dedup();
            live_backends.extend(frontend.backend_ids());
            frontends.insert(key, frontend);
        }

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
        for (id, _) in &snapshot.backends {
            if !live_backends.contains(id) {
                cleanup.push(MapOp::DeleteBackend { id: *id });
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
        let pinned_vips: BTreeSet<Ipv4Addr> = snapshot
            .vips
            .iter()
            .map(|a| wire::addr_from_wire(*a))
            .collect();
        cleanup.extend(
            vips.keys()
                .filter(|a| !pinned_vips.contains(a))
                .map(|&addr| MapOp::PutVip { addr }),
        );
        cleanup.extend(
            pinned_vips
                .iter()
                .filter(|a| !vips.contains_key(a))
                .map(|&addr| MapOp::DeleteVip { addr }),
        );

        // Ids below the reservation may name flows in conntrack: never hand them out again.
        let reserved = snapshot.backend_ids_reserved.max(1);
        let highest = snapshot.backends.iter().map(|(id, _)| *id).max();
        let next_backend_id = highest.map_or(reserved, |max| reserved.max(max.saturating_add(1)));
        let svc_ids = IdPool::with_used(max_services, frontends.values().map(|f| f.svc_id));
        // Freed ids have their counters zeroed when freed; a previous agent may have stopped
        // in between, so zero the free ones below the highest id in use.
        cleanup.extend(
            svc_ids
                .free_ids()
                .map(|svc_id| MapOp::ResetServiceCounters { svc_id }),
        );
        let programmed = Self {
            svc_ids,
            frontends,
            next_backend_id,
            backend_ids_reserved: reserved,
            vips,
            retry: BTreeSet::new(),
        };
        (programmed, cleanup)
    }
}

/// How many frontends use each IPv4 VIP.
fn vip_counts(addrs: impl Iterator<Item = IpAddr>) -> BTreeMap<Ipv4Addr, u32> {
    let mut counts = BTreeMap::new();
    for addr in addrs {
        if let IpAddr::V4(a) = addr {
            *counts.entry(a).or_insert(0) += 1;
        }
    }
    counts
}

/// One published frontend as the maps hold it: the backends of its active bank take new
/// connections, the other backends of its service port id are only listed. Anything
/// inconsistent (a slot or backend missing, a role flag that does not match) marks it for a
/// complete rewrite by the next sync.
fn recover_frontend(
    value: &ServiceValue,
    banks: Option<&[BTreeMap<u32, u32>; 2]>,
    backends: &HashMap<u32, Backend>,
    by_service: &HashMap<u32, Vec<u32>>,
) -> ProgrammedFrontend {
    let active_bank = usize::from(value.bank & 1);
    let mut complete = true;
    let mut active = Vec::new();
    for index in 0..u32::from(value.count) {
        match banks
            .and_then(|b| b[active_bank].get(&index))
            .and_then(|id| Some((*id, backends.get(id)?)))
        {
            Some((id, backend)) => {
                complete &= backend.is_active() && backend.svc_id == value.id;
                active.push((wire::endpoint(backend), id));
            }
            None => complete = false,
        }
    }
    let in_slots: HashSet<u32> = active.iter().map(|(_, id)| *id).collect();
    let mut standby: Vec<(crate::model::Endpoint, u32)> = by_service
        .get(&value.id)
        .into_iter()
        .flatten()
        .filter(|id| !in_slots.contains(id))
        .filter_map(|id| {
            let backend = backends.get(id)?;
            complete &= !backend.is_active();
            Some((wire::endpoint(backend), *id))
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
