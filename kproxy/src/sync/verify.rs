//! Drift: what the service maps hold against what the agent programmed into them. Anything
//! may have changed them behind the agent's back (a person with bpftool, another program
//! sharing the pins, a bug). The check walks each map against the record first
//! (`Programmed::holds`, the usual answer: nothing differs); when something does, it reads
//! them the way a restarted agent does (`Programmed::recover`) and compares the result with
//! the agent's own record, frontend by frontend, to say what. The repair is the restart's: the agent takes the maps' state as what is
//! programmed (every frontend found inconsistent marked for a full rewrite), deletes what
//! no frontend references, and syncs the drifted frontends against the desired state — so
//! only what differs is written, and a service's backend set still switches atomically.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    fmt,
};

use super::{DatapathSnapshot, MapOp, Programmed, ProgrammedFrontend};
use crate::model::FrontendKey;

/// One difference between the maps and the agent's record.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Drift {
    /// The frontend it concerns (`None`: an entry no frontend references).
    pub frontend: Option<String>,
    pub what: String,
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.frontend {
            Some(frontend) => write!(f, "{frontend}: {}", self.what),
            None => f.write_str(&self.what),
        }
    }
}

/// A check's result: the differences, and what the repair needs.
pub struct Check {
    pub drift: Vec<Drift>,
    /// The maps' state, when it differs from the record (`None`: nothing to repair).
    found: Option<Programmed>,
    cleanup: Vec<MapOp>,
    drifted: BTreeSet<FrontendKey>,
}

impl Programmed {
    /// Compares this record with `snapshot` (the service maps as they are now; sorted
    /// for lookups on the way).
    pub fn check(&self, snapshot: &mut DatapathSnapshot, max_services: u32) -> Check {
        // A snapshot's walks cannot fail.
        if self.holds(snapshot).unwrap_or(false) {
            return Check {
                drift: Vec::new(),
                found: None,
                cleanup: Vec::new(),
                drifted: BTreeSet::new(),
            };
        }
        self.check_whole(snapshot, max_services)
    }

    /// The active bank and bank lengths of each service port id whose slots `cleanup`
    /// deletes (only those: the check runs every period, over every frontend).
    fn banks(&self, cleanup: &[MapOp]) -> HashMap<u32, (u8, [u32; 2])> {
        let wanted: HashSet<u32> = cleanup
            .iter()
            .filter_map(|op| match op {
                MapOp::DeleteSlot { svc_id, .. } => Some(*svc_id),
                _ => None,
            })
            .collect();
        if wanted.is_empty() {
            return HashMap::new();
        }
        self.frontends
            .values()
            .filter(|f| wanted.contains(&f.svc_id))
            .map(|f| (f.svc_id, (f.bank, f.bank_len)))
            .collect()
    }

    /// [`Programmed::check`] through a whole recovery of the maps' state, compared with
    /// this record frontend by frontend: what differs, once [`Programmed::holds`] has
    /// said something does.
    pub fn check_whole(&self, snapshot: &mut DatapathSnapshot, max_services: u32) -> Check {
        let (found, cleanup) = Self::recover_for(snapshot, max_services, self.maglev_table_size);
        let mut drift = Vec::new();
        let mut drifted = BTreeSet::new();
        let keys: BTreeSet<&FrontendKey> = self
            .frontends
            .keys()
            .chain(found.frontends.keys())
            .collect();
        for key in keys {
            let what = match (self.frontends.get(key), found.frontends.get(key)) {
                (Some(_), None) => vec!["programmed, missing from the maps".to_owned()],
                (None, Some(_)) => vec!["in the maps, never programmed".to_owned()],
                (Some(meant), Some(held)) => differences(meant, held),
                (None, None) => Vec::new(),
            };
            if !what.is_empty() {
                drifted.insert(*key);
            }
            drift.extend(what.into_iter().map(|what| Drift {
                frontend: Some(key.to_string()),
                what,
            }));
        }
        // Entries nothing references (a backend no frontend lists, a slot of an unknown
        // service, a VIP no frontend uses or one missing). Not drift: the inactive bank a
        // frontend keeps after a switch, and the counter resets of free ids that recovery
        // does as a precaution. The repair applies all of it, as a restart does.
        let banks = self.banks(&cleanup);
        drift.extend(
            cleanup
                .iter()
                .filter(|op| !expected(&banks, op))
                .map(|op| Drift {
                    frontend: None,
                    what: format!("stray entry: {op:?}"),
                }),
        );
        Check {
            drift,
            found: Some(found),
            cleanup,
            drifted,
        }
    }

    /// Takes the maps' state found by `check` as what is programmed, keeping this record's
    /// service names and id reservations, with the drifted frontends due in the next sync.
    /// Returns the map operations that clear what no frontend references (recovery's
    /// cleanup); the caller applies them, then syncs.
    pub fn repair(&mut self, check: Check) -> Vec<MapOp> {
        let Check {
            found,
            cleanup,
            drifted,
            ..
        } = check;
        let Some(mut found) = found else {
            return Vec::new();
        };
        for (key, frontend) in &mut found.frontends {
            if let Some(meant) = self.frontends.get(key) {
                frontend.service.clone_from(&meant.service);
            }
        }
        // Backend ids are never handed out twice: keep the higher of both counters.
        found.next_backend_id = found.next_backend_id.max(self.next_backend_id);
        found.backend_ids_reserved = found.backend_ids_reserved.max(self.backend_ids_reserved);
        found.retry = std::mem::take(&mut self.retry);
        found.retry.extend(drifted);
        *self = found;
        cleanup
    }
}

/// Whether the record explains `op`, a cleanup that recovery plans, as state it keeps:
/// `banks` holds each programmed service port id's active bank and bank lengths.
fn expected(banks: &HashMap<u32, (u8, [u32; 2])>, op: &MapOp) -> bool {
    match op {
        MapOp::ResetServiceCounters { .. } => true,
        MapOp::DeleteSlot {
            svc_id,
            bank,
            index,
        } => banks
            .get(svc_id)
            .is_some_and(|(active, len)| active != bank && *index < len[usize::from(*bank & 1)]),
        _ => false,
    }
}

/// How the maps' `held` state of a frontend differs from the `meant` one.
fn differences(meant: &ProgrammedFrontend, held: &ProgrammedFrontend) -> Vec<String> {
    let mut what = Vec::new();
    if held.needs_rewrite {
        what.push("its entries are inconsistent (a slot, a backend or a role)".to_owned());
    }
    // Compared as values; only a difference is written out (the check compares every
    // frontend every period).
    let mut differ = |field: &str, same: bool, show: &dyn Fn(&ProgrammedFrontend) -> String| {
        if !same {
            what.push(format!(
                "{field}: programmed {}, the maps hold {}",
                show(meant),
                show(held)
            ));
        }
    };
    differ("service port id", meant.svc_id == held.svc_id, &|f| {
        f.svc_id.to_string()
    });
    differ("active bank", meant.bank == held.bank, &|f| {
        f.bank.to_string()
    });
    differ("settings", meant.settings == held.settings, &|f| {
        format!("{:?}", f.settings)
    });
    differ(
        "source ranges",
        meant.source_ranges == held.source_ranges,
        &|f| format!("{:?}", f.source_ranges),
    );
    differ("backends", meant.backends == held.backends, &|f| {
        listing(&f.backends)
    });
    differ(
        "listed-only backends",
        meant.standby == held.standby,
        &|f| listing(&f.standby),
    );
    what
}

/// `[198.18.1.2:8080 (id 7), ...]`
fn listing(backends: &[(crate::model::Endpoint, u32)]) -> String {
    let items: Vec<String> = backends
        .iter()
        .map(|(endpoint, id)| format!("{endpoint} (id {id})"))
        .collect();
    format!("[{}]", items.join(", "))
}

mod holds;
#[cfg(test)]
mod tests;
