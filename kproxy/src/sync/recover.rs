//! Rebuilding the programmed state from the maps a previous agent left pinned, so a restart
//! writes only what changed while it was away, and the datapath keeps serving meanwhile.

use std::collections::{BTreeMap, HashMap, HashSet};

use kproxy_common::lb::{Backend, SLOT_BANK_SHIFT, ServiceKey, ServiceValue, SlotKey};

use super::{IdPool, MapOp, Programmed, ProgrammedFrontend};
use crate::wire;

/// The contents of the service maps.
#[derive(Clone, Debug, Default)]
pub struct DatapathSnapshot {
    pub services: Vec<(ServiceKey, ServiceValue)>,
    pub slots: Vec<(SlotKey, u32)>,
    pub backends: Vec<(u32, Backend)>,
}

impl Programmed {
    /// The state `snapshot` describes, and the ops that clear what no service references
    /// (inactive banks, orphaned slots and backends, entries the agent cannot read).
    pub fn recover(snapshot: &DatapathSnapshot, max_services: u32) -> (Self, Vec<MapOp>) {
        let backends: HashMap<u32, Backend> = snapshot.backends.iter().copied().collect();
        // svc_id → bank → index → backend id
        let mut slots: HashMap<u32, [BTreeMap<u32, u32>; 2]> = HashMap::new();
        for (key, id) in &snapshot.slots {
            let bank = usize::from(key.slot >> SLOT_BANK_SHIFT != 0);
            let index = key.slot & ((1 << SLOT_BANK_SHIFT) - 1);
            slots.entry(key.svc_id).or_default()[bank].insert(index, *id);
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
            let banks = slots.get(&value.id);
            let active = usize::from(value.bank & 1);
            let mut programmed = Vec::new();
            let mut complete = true;
            for index in 0..u32::from(value.count) {
                match banks
                    .and_then(|b| b[active].get(&index))
                    .and_then(|id| Some((*id, backends.get(id)?)))
                {
                    Some((id, backend)) => programmed.push((wire::endpoint(backend), id)),
                    None => complete = false,
                }
            }
            live_backends.extend(programmed.iter().map(|(_, id)| *id));
            let mut bank_len = [0u32; 2];
            bank_len[active] = banks
                .and_then(|b| b[active].keys().last())
                .map_or(0, |i| i + 1);
            frontends.insert(
                key,
                ProgrammedFrontend {
                    service: None,
                    svc_id: value.id,
                    bank: value.bank & 1,
                    bank_len,
                    affinity_timeout_s: wire::affinity_of(value),
                    when_empty: wire::when_empty_of(value),
                    backends: programmed,
                    needs_rewrite: !complete,
                },
            );
        }

        // Inactive banks and slots of unknown services go; so do unreferenced backends.
        for (key, _) in &snapshot.slots {
            let bank = u8::from(key.slot >> SLOT_BANK_SHIFT != 0);
            let index = key.slot & ((1 << SLOT_BANK_SHIFT) - 1);
            let active = frontends
                .values()
                .any(|f| f.svc_id == key.svc_id && f.bank == bank);
            if !active {
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

        let next_backend_id = snapshot
            .backends
            .iter()
            .map(|(id, _)| *id)
            .max()
            .map_or(1, |max| max.saturating_add(1));
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
            retry: std::collections::BTreeSet::new(),
        };
        (programmed, cleanup)
    }
}
