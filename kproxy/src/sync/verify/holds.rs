//! Whether the maps hold exactly the agent's record, read map by map against indexes of
//! the record: the usual answer of the periodic drift check (yes), found without a copy of
//! the maps.

use anyhow::Result;
use kproxy_common::{
    lb::{SLOT_BANK_SHIFT, ServiceValue},
    maglev,
};

use super::super::{MapWalk, Programmed, ProgrammedFrontend};
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
        let mut ok = true;
        let mut seen = 0;
        maps.frontends(&mut |key, value| {
            let meant = key.and_then(|key| self.frontends.get(&key));
            ok = meant.is_some_and(|meant| publishes(meant, value));
            seen += 1;
            ok
        })?;
        if !(ok && seen == self.frontends.len()) {
            return Ok(false);
        }
        seen = 0;
        maps.slots(&mut |key, backend_id| {
            let bank = key.slot >> SLOT_BANK_SHIFT;
            let index = key.slot & ((1 << SLOT_BANK_SHIFT) - 1);
            ok = bank < 2
                && record.frontend(key.svc_id).is_some_and(|meant| {
                    // The active bank's slots hold its backends in order; the other bank's
                    // what it held before the last change (overwritten by the next one).
                    let active = u32::from(meant.bank) == bank;
                    let wanted = meant.backends.get(index as usize).map(|&(_, id)| id);
                    index < meant.bank_len[bank as usize]
                        && (!active || wanted.is_none_or(|id| id == backend_id))
                });
            seen += 1;
            ok
        })?;
        if !(ok && seen == record.slots) {
            return Ok(false);
        }
        seen = 0;
        maps.backends(&mut |id, listed| {
            // Looked up by the service port id it names: the frontend's lists are short.
            ok = record.frontend(listed.svc_id).is_some_and(|meant| {
                let list = if listed.active {
                    &meant.backends
                } else {
                    &meant.standby
                };
                list.contains(&(listed.endpoint, id))
            });
            seen += 1;
            ok
        })?;
        if !(ok && seen == record.backends) {
            return Ok(false);
        }
        seen = 0;
        maps.vips(&mut |addr| {
            ok = self.vips.contains_key(&addr);
            seen += 1;
            ok
        })?;
        if !(ok && seen == self.vips.len()) {
            return Ok(false);
        }
        seen = 0;
        maps.source_ranges(&mut |svc_id, range| {
            ok =
                (record.frontend(svc_id)).is_some_and(|meant| meant.source_ranges.contains(&range));
            seen += 1;
            ok
        })?;
        if !(ok && seen == record.source_ranges) {
            return Ok(false);
        }
        seen = 0;
        let table_size = self.maglev_table_size;
        let chunks = maglev::chunks(table_size);
        maps.maglev(&mut |key| {
            ok = key.table_size == table_size
                && u32::from(key.chunk) < chunks
                && (record.frontend(key.svc_id))
                    .is_some_and(|meant| has_table(meant) && meant.bank == key.bank);
            seen += 1;
            ok
        })?;
        Ok(ok && seen == record.maglev_tables * chunks as usize)
    }
}

/// Whether `value` is what the record's frontend publishes: its id, bank, backend count
/// and settings.
fn publishes(meant: &ProgrammedFrontend, value: &ServiceValue) -> bool {
    value.id == meant.svc_id
        && value.bank == meant.bank
        && usize::from(value.count) == meant.backends.len()
        && meant.bank_len[usize::from(meant.bank & 1)] as usize >= meant.backends.len()
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
}
