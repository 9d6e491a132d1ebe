//! Whether the maps hold exactly the agent's record, read map by map against indexes of
//! the record: the usual answer of the periodic drift check (yes), found without a copy of
//! the maps.

use anyhow::Result;
use kproxy_common::{
    lb::{SLOT_BANK_SHIFT, ServiceValue, SlotKey, inline_slots},
    maglev,
};

use super::super::{Listed, MapWalk, Programmed, ProgrammedFrontend};
use crate::wire;

impl Programmed {
    /// Whether `maps` hold exactly this record: every entry one that syncing the record
    /// would have written, and as many entries in each map as the record explains (keys
    /// are unique, so nothing is missing either). Walks each map once against indexes of
    /// the record, a word per frontend: at 100,000 Services, reading the
    /// maps whole for this held 21 MB for each check, the agent's peak memory. Anything
    /// it does not expect is a no, and [`Programmed::check`] then says what differs.
    pub fn holds(&self, maps: &dyn MapWalk) -> Result<bool> {
        let record = Record::of(self);
        let mut tally = Tally::default();
        maps.frontends(&mut |key, value| {
            let meant = key.and_then(|key| self.frontends.get(&key));
            tally.count(meant.is_some_and(|meant| publishes(meant, value)))
        })?;
        if !tally.exactly(self.frontends.len()) {
            return Ok(false);
        }
        let mut tally = Tally::default();
        maps.slots(&mut |key, backend_id| tally.count(record.explains_slot(key, backend_id)))?;
        if !tally.exactly(record.slots) {
            return Ok(false);
        }
        let mut tally = Tally::default();
        maps.backends(&mut |id, listed| tally.count(record.explains_backend(id, &listed)))?;
        if !tally.exactly(record.backends) {
            return Ok(false);
        }
        let mut tally = Tally::default();
        maps.vips(&mut |addr| tally.count(self.vips.contains_key(&addr)))?;
        if !tally.exactly(self.vips.len()) {
            return Ok(false);
        }
        let mut tally = Tally::default();
        maps.source_ranges(&mut |svc_id, range| {
            let meant = record.frontend(svc_id);
            tally.count(meant.is_some_and(|meant| meant.source_ranges.contains(&range)))
        })?;
        if !tally.exactly(record.source_ranges) {
            return Ok(false);
        }
        let (table_size, chunks) = (
            self.maglev_table_size,
            maglev::chunks(self.maglev_table_size),
        );
        let mut tally = Tally::default();
        maps.maglev(&mut |key| {
            tally.count(
                key.table_size == table_size
                    && u32::from(key.chunk) < chunks
                    && (record.frontend(key.svc_id))
                        .is_some_and(|meant| has_table(meant) && meant.bank == key.bank),
            )
        })?;
        Ok(tally.exactly(record.maglev_tables * chunks as usize))
    }
}

/// The entries of one map, counted while each is one the record explains.
#[derive(Default)]
struct Tally {
    seen: usize,
    unexplained: bool,
}

impl Tally {
    /// Counts an entry; says to stop the walk (`false`) at the first one not `explained`.
    fn count(&mut self, explained: bool) -> bool {
        self.seen += 1;
        self.unexplained |= !explained;
        explained
    }

    /// Whether every entry was explained, and there were `expected` of them.
    fn exactly(&self, expected: usize) -> bool {
        !self.unexplained && self.seen == expected
    }
}

/// Whether `value` is what the record's frontend publishes: its id, bank, backend count
/// and settings, and the backends it holds itself (or, when it holds none, a bank with as
/// many slots).
fn publishes(meant: &ProgrammedFrontend, value: &ServiceValue) -> bool {
    let ids = meant.backends.iter().map(|(_, id)| *id);
    value.id == meant.svc_id
        && value.bank == meant.bank
        && usize::from(value.count) == meant.backends.len()
        && value.inline == inline_slots(ids)
        && (value.slots_inline() || meant.active_slots() as usize >= meant.backends.len())
        && wire::settings_of(value) == meant.settings
}

/// A Maglev frontend with backends has a table in its active bank (see `plan`).
fn has_table(meant: &ProgrammedFrontend) -> bool {
    meant.settings.maglev && !meant.backends.is_empty()
}

/// The record indexed by service port id, with the number of entries it explains in the
/// maps that are not keyed by frontend.
struct Record<'a> {
    /// The frontend of each service port id (ids are dense, below `--max-services`).
    by_svc_id: Vec<Option<&'a ProgrammedFrontend>>,
    backends: usize,
    slots: usize,
    source_ranges: usize,
    maglev_tables: usize,
}

impl<'a> Record<'a> {
    fn of(programmed: &'a Programmed) -> Self {
        let frontends = programmed.frontends.values();
        let ids = frontends.clone().map(|f| f.svc_id as usize + 1).max();
        let mut record = Self {
            by_svc_id: vec![None; ids.unwrap_or(0)],
            backends: 0,
            slots: 0,
            source_ranges: 0,
            maglev_tables: 0,
        };
        for f in frontends {
            record.by_svc_id[f.svc_id as usize] = Some(f);
            record.backends += f.backends.len() + f.standby.len();
            record.slots += f.bank_len.iter().map(|&n| n as usize).sum::<usize>();
            record.source_ranges += f.source_ranges.len();
            record.maglev_tables += usize::from(has_table(f));
        }
        record
    }

    fn frontend(&self, svc_id: u32) -> Option<&'a ProgrammedFrontend> {
        *self.by_svc_id.get(svc_id as usize)?
    }

    /// Whether a frontend has slot `key`, holding `backend_id` in its active bank: there
    /// the slots hold its backends in order; the other bank's what it held before the
    /// last change (overwritten by the next one).
    fn explains_slot(&self, key: &SlotKey, backend_id: u32) -> bool {
        let bank = key.slot >> SLOT_BANK_SHIFT;
        let index = key.slot & ((1 << SLOT_BANK_SHIFT) - 1);
        bank < 2
            && self.frontend(key.svc_id).is_some_and(|meant| {
                let active = u32::from(meant.bank) == bank;
                let wanted = meant.backends.get(index as usize).map(|&(_, id)| id);
                index < meant.bank_len[bank as usize]
                    && (!active || wanted.is_none_or(|id| id == backend_id))
            })
    }

    /// Whether the frontend `listed` names lists backend `id` as it is, in the role it
    /// has (looked up by that frontend: its lists are short).
    fn explains_backend(&self, id: u32, listed: &Listed) -> bool {
        self.frontend(listed.svc_id).is_some_and(|meant| {
            let list = if listed.active {
                &meant.backends
            } else {
                &meant.standby
            };
            list.contains(&(listed.endpoint, id))
        })
    }
}
