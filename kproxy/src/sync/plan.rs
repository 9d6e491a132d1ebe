//! The programmed state and the sync that moves it to a desired state.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
};

use ipnet::IpNet;
use kproxy_common::{
    lb::{MAX_BACKENDS_PER_SERVICE, inline_slots, slots_inline},
    meta::BACKEND_ID_CHUNK,
};

use super::{
    Datapath, IdPool, MapOp, ServiceSettings,
    execute::{Outcome, Planned, execute},
    source_ranges,
};
use crate::{
    model::{
        Desired, Endpoint, Frontend, FrontendKey, Scope, ServicePortName,
        dense::Densify,
        maglev::{self, DEFAULT_TABLE_SIZE},
    },
    problem::{Problem, ProblemKind, datapath_error},
};

/// What the datapath holds for one frontend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgrammedFrontend {
    /// The service port, when known (not after a restart until the first sync).
    pub service: Option<ServicePortName>,
    pub svc_id: u32,
    /// Active slot bank.
    pub bank: u8,
    /// Number of slots present in each bank of `KP_SLOTS` (none in the active bank when the
    /// service value holds the backends itself, see `lb::slots_inline`).
    pub bank_len: [u32; 2],
    /// What its service value says besides its backends.
    pub settings: ServiceSettings,
    /// Its source range entries (of its own family), sorted.
    pub source_ranges: Vec<IpNet>,
    /// Backends taking new connections, in slot order, with their ids.
    pub backends: Vec<(Endpoint, u32)>,
    /// Backends that are only listed (not ready, terminating, for other nodes), sorted, with
    /// their ids: established TCP flows keep them.
    pub standby: Vec<(Endpoint, u32)>,
    /// Recovered from maps that were inconsistent: rewrite it whatever the desired state.
    pub needs_rewrite: bool,
}

impl ProgrammedFrontend {
    fn endpoints(&self) -> impl Iterator<Item = Endpoint> + '_ {
        self.backends.iter().map(|(ep, _)| *ep)
    }

    fn standby_endpoints(&self) -> impl Iterator<Item = Endpoint> + '_ {
        self.standby.iter().map(|(ep, _)| *ep)
    }

    /// `KP_SLOTS` entries of its active bank: none when its service value holds its
    /// backends itself (or it has none).
    pub fn active_slots(&self) -> u32 {
        self.bank_len[usize::from(self.bank & 1)]
    }

    /// Every backend id the frontend holds.
    pub fn backend_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.backends.iter().chain(&self.standby).map(|(_, id)| *id)
    }
}

/// Everything programmed, plus id bookkeeping.
#[derive(Clone, Debug)]
pub struct Programmed {
    pub(super) frontends: BTreeMap<FrontendKey, ProgrammedFrontend>,
    /// What `frontends` holds, counted as it changes: a count over all of them at every
    /// sync cost a pass over 100,000 frontends for each one-endpoint change.
    pub(super) counts: EntryCounts,
    pub(super) svc_ids: IdPool,
    /// Backend ids are never reused while the pinned maps live (across restarts: see
    /// `backend_ids_reserved`), so a conntrack or affinity entry naming a deleted backend can
    /// never be mistaken for a new one.
    pub(super) next_backend_id: u32,
    /// Ids below this are reserved in `KP_META`; allocating beyond it reserves the next chunk
    /// first.
    pub(super) backend_ids_reserved: u32,
    /// VIPs in use (both families) → number of frontends using each.
    pub(super) vips: BTreeMap<IpAddr, u32>,
    /// Frontends whose last change failed: part of the next sync whatever changes.
    pub(super) retry: BTreeSet<FrontendKey>,
    /// Entries of each Maglev table (the programs' `KP_MAGLEV_TABLE_SIZE`).
    pub(super) maglev_table_size: u32,
    /// Rebuild `frontends` and `vips` with full nodes after large syncs (see `dense`).
    pub(super) frontends_density: Densify,
    pub(super) vips_density: Densify,
}

/// What one sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub added: usize,
    pub updated: usize,
    pub removed: usize,
    /// Map operations written.
    pub ops: usize,
    /// IPv6 frontends among those looked at that a datapath without IPv6 maps cannot
    /// serve: modelled, but not programmed.
    pub ipv6_not_served: usize,
    pub problems: Vec<Problem>,
}

impl SyncReport {
    pub fn changed(&self) -> bool {
        self.added + self.updated + self.removed > 0
    }
}

/// What the chunks of a sync leave for its end.
#[derive(Default)]
struct AfterSync {
    /// Service port ids freed (released at the end: never reused within the sync).
    freed: Vec<u32>,
    /// VIPs gaining (+1) or losing (-1) a frontend.
    vip_deltas: Vec<(FrontendKey, i32)>,
}

/// Frontends of a sync planned and written together: removals, or frontends wanted.
#[derive(Clone, Copy)]
enum Chunk<'a> {
    Removals(&'a [FrontendKey]),
    Wanted(&'a [(&'a FrontendKey, &'a Frontend)]),
}

impl Chunk<'_> {
    fn len(&self) -> usize {
        match self {
            Chunk::Removals(keys) => keys.len(),
            Chunk::Wanted(wanted) => wanted.len(),
        }
    }
}

/// Frontends planned and applied at a time (see `Programmed::sync_keys`).
pub(super) const SYNC_CHUNK: usize = 2048;

/// What a planned change is, for the bookkeeping after it is applied.
enum Kind {
    Removed {
        svc_id: u32,
        service: Option<ServicePortName>,
    },
    Changed {
        after: Box<ProgrammedFrontend>,
        new_svc_id: Option<u32>,
    },
}

/// Map operations for one frontend change, with what to do if they fail halfway.
struct Change {
    ops: Vec<MapOp>,
    /// The state once every op succeeded.
    after: Option<ProgrammedFrontend>,
    /// Ids allocated for this change, released if it fails.
    new_svc_id: Option<u32>,
}

/// Entries of the service maps, as the programmed state mirrors them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryCounts {
    /// `KP_SERVICES` and `KP_SERVICES6`.
    pub frontends: ByFamily,
    /// Backends taking new connections, across all frontends.
    pub taking_connections: usize,
    /// `KP_BACKENDS` and `KP_BACKENDS6`: those and the ones only listed.
    pub backends: ByFamily,
    /// `KP_SLOTS` (shared by both families), both banks.
    pub slots: usize,
}

impl EntryCounts {
    /// All of `frontends`, counted in one pass.
    pub(super) fn of<'a>(
        frontends: impl IntoIterator<Item = (&'a FrontendKey, &'a ProgrammedFrontend)>,
    ) -> Self {
        let mut counts = Self::default();
        for (key, f) in frontends {
            counts.add(key, f);
        }
        counts
    }

    // A frontend's backends are of its own family (the model pairs each frontend with its
    // family's endpoints).
    fn add(&mut self, key: &FrontendKey, f: &ProgrammedFrontend) {
        let v6 = key.addr.is_ipv6();
        self.frontends.add(v6, 1);
        self.taking_connections += f.backends.len();
        self.backends.add(v6, f.backends.len() + f.standby.len());
        self.slots += f.bank_len.iter().map(|&n| n as usize).sum::<usize>();
    }

    fn remove(&mut self, key: &FrontendKey, f: &ProgrammedFrontend) {
        let v6 = key.addr.is_ipv6();
        self.frontends.remove(v6, 1);
        self.taking_connections -= f.backends.len();
        self.backends.remove(v6, f.backends.len() + f.standby.len());
        self.slots -= f.bank_len.iter().map(|&n| n as usize).sum::<usize>();
    }
}

/// A count in each family's map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ByFamily {
    pub v4: usize,
    pub v6: usize,
}

impl ByFamily {
    fn add(&mut self, v6: bool, n: usize) {
        if v6 {
            self.v6 += n;
        } else {
            self.v4 += n;
        }
    }

    fn remove(&mut self, v6: bool, n: usize) {
        if v6 {
            self.v6 -= n;
        } else {
            self.v4 -= n;
        }
    }

    pub fn total(&self) -> usize {
        self.v4 + self.v6
    }
}

impl Programmed {
    /// Nothing programmed; service port ids below `max_services`.
    pub fn new(max_services: u32) -> Self {
        Self {
            frontends: BTreeMap::new(),
            counts: EntryCounts::default(),
            svc_ids: IdPool::new(max_services),
            next_backend_id: 1,
            backend_ids_reserved: 1,
            vips: BTreeMap::new(),
            retry: BTreeSet::new(),
            maglev_table_size: DEFAULT_TABLE_SIZE,
            frontends_density: Densify::default(),
            vips_density: Densify::default(),
        }
    }

    /// Entries of each Maglev table it writes.
    pub fn maglev_table_size(&self) -> u32 {
        self.maglev_table_size
    }

    /// This state, for programs whose Maglev tables have `size` entries.
    #[must_use]
    pub fn with_maglev_table_size(mut self, size: u32) -> Self {
        self.maglev_table_size = size;
        self
    }

    pub fn frontends(&self) -> &BTreeMap<FrontendKey, ProgrammedFrontend> {
        &self.frontends
    }

    /// What the service maps hold.
    pub fn counts(&self) -> EntryCounts {
        self.counts
    }

    /// Whether `addr` is a frontend's own address (a VIP: not a NodePort's).
    pub fn has_vip(&self, addr: IpAddr) -> bool {
        self.vips.contains_key(&addr)
    }

    /// Removes frontend `key`, uncounting it.
    fn take_frontend(&mut self, key: &FrontendKey) -> Option<ProgrammedFrontend> {
        let old = self.frontends.remove(key)?;
        self.counts.remove(key, &old);
        Some(old)
    }

    /// Sets frontend `key` to `frontend`, counting it in place of what it replaces.
    fn put_frontend(&mut self, key: FrontendKey, frontend: ProgrammedFrontend) {
        self.counts.add(&key, &frontend);
        match self.frontends.insert(key, frontend) {
            Some(old) => self.counts.remove(&key, &old),
            None => self.frontends_density.inserted(),
        }
    }

    /// Writes every difference between what is programmed and `desired` into `dp`.
    pub fn sync(&mut self, desired: &Desired, dp: &mut (impl Datapath + Send)) -> SyncReport {
        let keys: BTreeSet<FrontendKey> = self
            .frontends
            .keys()
            .chain(desired.keys())
            .copied()
            .collect();
        self.sync_keys(desired, keys, dp)
    }

    /// Writes the differences for the frontends `keys` (those that may have changed) into
    /// `dp`: the cost follows the change, not the number of services.
    ///
    /// Removals go first (they free ids and map space), then updates and additions. A change
    /// that fails is rolled back, reported, and retried by the next sync.
    pub fn sync_keys(
        &mut self,
        desired: &Desired,
        mut keys: BTreeSet<FrontendKey>,
        dp: &mut (impl Datapath + Send),
    ) -> SyncReport {
        let mut report = SyncReport::default();
        keys.append(&mut self.retry);
        if !dp.serves_ipv6() {
            // Left as they are: neither written nor retried (nor ids reserved for them)
            // until an agent starts with a datapath that has the IPv6 maps.
            let before = keys.len();
            keys.retain(|k| !(k.addr.is_ipv6() && desired.contains_key(k)));
            report.ipv6_not_served = before - keys.len();
        }
        if let Err(problem) = self.reserve_backend_ids(desired, &keys, dp) {
            // Nothing is written with ids a restarted agent could hand out again.
            report.problems.push(problem);
            self.retry = keys;
            return report;
        }

        // Removals first (they free map space), then this node's clients' entries, then
        // those that send such clients to them (`SVC_F_EXT_LOCAL`): each in chunks, planned
        // (ids are allocated here) and then applied at once. Chunks bound what a sync of
        // everything (a start, a relist) holds at a time: its plans are the size of the
        // cluster, and batches of a few thousand entries per syscall are as fast as larger.
        let removed: Vec<FrontendKey> = keys
            .iter()
            .filter(|k| !desired.contains_key(k) && self.frontends.contains_key(k))
            .copied()
            .collect();
        let wanted: Vec<(&FrontendKey, &Frontend)> = keys
            .iter()
            .filter(|k| k.scope == Scope::Internal)
            .chain(keys.iter().filter(|k| k.scope == Scope::All))
            .filter_map(|k| Some((k, desired.get(k)?)))
            .collect();
        let chunks: Vec<Chunk> = removed
            .chunks(SYNC_CHUNK)
            .map(Chunk::Removals)
            .chain(wanted.chunks(SYNC_CHUNK).map(Chunk::Wanted))
            .collect();
        let mut ending = AfterSync::default();
        self.write_chunks(dp, chunks, &mut report, &mut ending);
        // Only now: ids freed by this sync are not handed out to changes of the same sync.
        for id in ending.freed {
            self.svc_ids.release(id);
        }
        self.update_vips(&ending.vip_deltas, dp, &mut report);
        self.frontends_density.settle(&mut self.frontends);
        self.vips_density.settle(&mut self.vips);
        report
    }

    /// Plans and writes `chunks` in order. With more than one, each is planned here while
    /// the one before it is written by a thread of its own (`map-writer`): at a start, the
    /// kernel's map updates were a third of the agent's loop, which planned nothing
    /// meanwhile, and after the lists ended the other CPU sat idle. The chunks reach the
    /// datapath one after another, in order, as they would from this thread; planning one
    /// never depends on how the one before fared (their keys differ, and no id freed in a
    /// sync is handed out again in it).
    fn write_chunks(
        &mut self,
        dp: &mut (impl Datapath + Send),
        chunks: Vec<Chunk>,
        report: &mut SyncReport,
        ending: &mut AfterSync,
    ) {
        let dp = std::sync::Mutex::new(dp);
        let write = |planned: &[Planned]| {
            let mut dp = dp.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            execute(&mut **dp, planned)
        };
        let several = chunks.len() > 1;
        std::thread::scope(|scope| {
            let (to_writer, to_write) = std::sync::mpsc::sync_channel::<Vec<Planned>>(1);
            let (from_writer, written) = std::sync::mpsc::channel();
            // No writer for one chunk (every routine sync), nor when no thread is to be had
            // (a limit on threads): the chunks are then written here, one after another.
            let writer = several
                .then(|| {
                    std::thread::Builder::new()
                        .name("map-writer".into())
                        .spawn_scoped(scope, move || {
                            for planned in to_write {
                                let outcomes = write(&planned);
                                if from_writer.send((planned, outcomes)).is_err() {
                                    return;
                                }
                            }
                        })
                        .ok()
                })
                .flatten();
            // The bookkeeping of the chunk the writer has, done once it is written.
            let mut in_flight = None;
            for chunk in chunks {
                let (planned, kinds) = self.plan_chunk(chunk, report);
                if writer.is_none() {
                    let outcomes = write(&planned);
                    self.settle(&planned, kinds, outcomes, report, ending);
                    continue;
                }
                to_writer
                    .send(planned)
                    .expect("the map writer takes chunks until it is dropped");
                // This chunk is written while the next is planned; the one before is done.
                if let Some(kinds) = in_flight.replace(kinds) {
                    let (planned, outcomes) = written.recv().expect("the map writer answers");
                    self.settle(&planned, kinds, outcomes, report, ending);
                }
            }
            drop(to_writer);
            if let Some(kinds) = in_flight {
                let (planned, outcomes) = written.recv().expect("the map writer answers");
                self.settle(&planned, kinds, outcomes, report, ending);
            }
        });
    }

    /// The operations of `chunk`'s changes, with what each is for the bookkeeping; ids are
    /// allocated here. A change that cannot be planned is reported and retried.
    fn plan_chunk(
        &mut self,
        chunk: Chunk,
        report: &mut SyncReport,
    ) -> (Vec<Planned>, Vec<(FrontendKey, Kind)>) {
        let mut planned = Vec::with_capacity(chunk.len());
        let mut kinds = Vec::with_capacity(chunk.len());
        match chunk {
            Chunk::Removals(keys) => {
                for key in keys {
                    let old = self.take_frontend(key).expect("filtered above");
                    planned.push(Planned {
                        ops: remove_ops(key, &old, self.maglev_table_size),
                        removal: true,
                    });
                    kinds.push((
                        *key,
                        Kind::Removed {
                            svc_id: old.svc_id,
                            service: old.service,
                        },
                    ));
                }
            }
            Chunk::Wanted(wanted) => {
                for &(key, frontend) in wanted {
                    let change = match self.frontends.get(key) {
                        Some(old) => update_change(
                            &mut self.next_backend_id,
                            self.maglev_table_size,
                            key,
                            old,
                            frontend,
                        ),
                        None => match self.add_change(key, frontend) {
                            Ok(change) => change,
                            Err(problem) => {
                                report.problems.push(problem);
                                self.retry.insert(*key);
                                continue;
                            }
                        },
                    };
                    let Some(change) =
                        change_or_rename(change, self.frontends.get_mut(key), frontend)
                    else {
                        continue;
                    };
                    planned.push(Planned {
                        ops: change.ops,
                        removal: false,
                    });
                    kinds.push((
                        *key,
                        Kind::Changed {
                            after: Box::new(change.after.expect("a change always has a result")),
                            new_svc_id: change.new_svc_id,
                        },
                    ));
                }
            }
        }
        (planned, kinds)
    }

    /// The bookkeeping after `planned` changes (of `kinds`) were applied with `outcomes`:
    /// what is programmed now and what is retried; the ids freed and the VIPs' changes go to
    /// `ending`.
    fn settle(
        &mut self,
        planned: &[Planned],
        kinds: Vec<(FrontendKey, Kind)>,
        outcomes: Vec<Outcome>,
        report: &mut SyncReport,
        ending: &mut AfterSync,
    ) {
        for ((p, (key, kind)), outcome) in planned.iter().zip(kinds).zip(outcomes) {
            report.ops += p.ops.len();
            let service = match &kind {
                Kind::Removed { service, .. } => service.clone(),
                Kind::Changed { after, .. } => after.service.clone(),
            };
            match (&outcome, kind) {
                (Outcome::Failed(e), Kind::Changed { new_svc_id, .. }) => {
                    report
                        .problems
                        .push(datapath_problem(service.as_ref(), &key, e));
                    ending.freed.extend(new_svc_id);
                    self.retry.insert(key);
                }
                (outcome, Kind::Removed { svc_id, .. }) => {
                    if let Outcome::CleanupFailed(e) | Outcome::Failed(e) = outcome {
                        report
                            .problems
                            .push(datapath_problem(service.as_ref(), &key, e));
                    }
                    ending.freed.push(svc_id);
                    ending.vip_deltas.push((key, -1));
                    report.removed += 1;
                }
                (outcome, Kind::Changed { after, new_svc_id }) => {
                    if let Outcome::CleanupFailed(e) = outcome {
                        report
                            .problems
                            .push(datapath_problem(service.as_ref(), &key, e));
                    }
                    if new_svc_id.is_some() {
                        ending.vip_deltas.push((key, 1));
                        report.added += 1;
                    } else {
                        report.updated += 1;
                    }
                    self.put_frontend(key, *after);
                }
            }
        }
    }

    /// Makes sure every backend id this sync may allocate for `keys` is reserved in the
    /// datapath (`KP_META`) before any of them is written.
    fn reserve_backend_ids(
        &mut self,
        desired: &Desired,
        keys: &BTreeSet<FrontendKey>,
        dp: &mut impl Datapath,
    ) -> Result<(), Problem> {
        // At most one new id per endpoint a frontend does not hold an id for yet.
        let most: u64 = keys
            .iter()
            .filter_map(|k| Some((desired.get(k)?, self.frontends.get(k))))
            .map(|(want, have)| {
                // A new frontend: at most one per endpoint it lists (no sets to build for
                // each of the 100,000 frontends of a start).
                let Some(have) = have else {
                    return (want.standby.len() + want.endpoints.len()) as u64;
                };
                let held: HashSet<Endpoint> =
                    have.endpoints().chain(have.standby_endpoints()).collect();
                let wanted: HashSet<&Endpoint> =
                    want.standby.iter().chain(&want.endpoints).collect();
                wanted.into_iter().filter(|ep| !held.contains(ep)).count() as u64
            })
            .sum();
        let needed = u64::from(self.next_backend_id) + most;
        if needed <= u64::from(self.backend_ids_reserved) {
            return Ok(());
        }
        let up_to = u32::try_from(needed + u64::from(BACKEND_ID_CHUNK)).unwrap_or(u32::MAX);
        dp.apply(&MapOp::ReserveBackendIds { up_to }).map_err(|e| {
            Problem::new(
                ProblemKind::Datapath,
                format!("reserving backend ids in KP_META failed: {e:#}; nothing programmed"),
            )
        })?;
        self.backend_ids_reserved = up_to;
        Ok(())
    }

    /// Brings the VIP maps (`KP_VIPS`, `KP_VIPS6`) in step with frontends added (`+1`) and
    /// removed (`-1`).
    fn update_vips(
        &mut self,
        deltas: &[(FrontendKey, i32)],
        dp: &mut impl Datapath,
        report: &mut SyncReport,
    ) {
        // Written a chunk at a time: a first sync puts a VIP for nearly every frontend, and
        // one syscall each took 0.13 s of CPU at 100,000 Services (all in one batch, their
        // ops and entries held 7 MB more at the agent's peak).
        let mut pending = Vec::with_capacity(deltas.len().min(VIP_CHUNK));
        for (key, delta) in deltas {
            // A NodePort has no VIP: it answers on the node's addresses.
            if key.is_node_port() {
                continue;
            }
            let addr = key.addr;
            let before = self.vips.get(&addr).copied().unwrap_or(0);
            let after = before.saturating_add_signed(*delta);
            let op = match (before, after) {
                (0, 1..) => Some(MapOp::PutVip { addr }),
                (1.., 0) => Some(MapOp::DeleteVip { addr }),
                _ => None,
            };
            if after == 0 {
                self.vips.remove(&addr);
            } else if self.vips.insert(addr, after).is_none() {
                self.vips_density.inserted();
            }
            if let Some(op) = op {
                pending.push((key, op));
                if pending.len() == VIP_CHUNK {
                    write_vips(&mut pending, dp, report);
                }
            }
        }
        write_vips(&mut pending, dp, report);
    }

    fn add_change(&mut self, key: &FrontendKey, frontend: &Frontend) -> Result<Change, Problem> {
        let svc_id = self.svc_ids.allocate().ok_or_else(|| {
            Problem::new(
                ProblemKind::Datapath,
                format!(
                    "{key}: no free service port id (the services map is full); not programmed"
                ),
            )
            .object(format!("Service {}", frontend.service))
        })?;
        let active = capped(&frontend.endpoints);
        let backends: Vec<(Endpoint, u32)> = active
            .iter()
            .map(|ep| (*ep, allocate_backend_id(&mut self.next_backend_id)))
            .collect();
        let standby: Vec<(Endpoint, u32)> = standby_of(frontend, active)
            .into_iter()
            .map(|ep| (ep, allocate_backend_id(&mut self.next_backend_id)))
            .collect();
        let put = |(endpoint, id): &(Endpoint, u32), active: bool| MapOp::PutBackend {
            id: *id,
            endpoint: *endpoint,
            svc_id,
            active,
        };
        let source_ranges = source_ranges(key, frontend);
        let (put_ranges, _) = range_ops(svc_id, &[], &source_ranges);
        let slots = slot_ops(svc_id, 0, &backends, 0);
        let table = frontend
            .maglev
            .then(|| maglev_table(svc_id, 0, &backends, self.maglev_table_size))
            .flatten();
        // Sized exactly: a sync of everything holds the ops of thousands of frontends.
        let mut ops: Vec<MapOp> =
            Vec::with_capacity(backends.len() + standby.len() + put_ranges.len() + slots.len() + 2);
        ops.extend(backends.iter().map(|b| put(b, true)));
        ops.extend(standby.iter().map(|b| put(b, false)));
        ops.extend(put_ranges);
        ops.extend(slots);
        ops.extend(table);
        ops.push(put_service(key, svc_id, 0, &backends, frontend));
        Ok(Change {
            ops,
            after: Some(ProgrammedFrontend {
                service: Some(frontend.service.clone()),
                svc_id,
                bank: 0,
                bank_len: [slot_count(&backends), 0],
                settings: ServiceSettings::of(key, frontend),
                source_ranges,
                backends,
                standby,
                needs_rewrite: false,
            }),
            new_svc_id: Some(svc_id),
        })
    }
}

/// The listed endpoints of `frontend` that do not take new connections, sorted: its
/// standby ones and those of its endpoints beyond `active` (a prefix of them, see `capped`).
fn standby_of(frontend: &Frontend, active: &[Endpoint]) -> Vec<Endpoint> {
    let mut standby: Vec<Endpoint> = frontend
        .standby
        .iter()
        .chain(&frontend.endpoints[active.len()..])
        .copied()
        .collect();
    standby.sort_unstable();
    standby
}

/// Ids of new backends: never reused while the maps live; 0 is never used.
fn allocate_backend_id(next: &mut u32) -> u32 {
    let id = *next;
    *next = next.checked_add(1).unwrap_or(1);
    id
}

fn update_change(
    next_backend_id: &mut u32,
    maglev_table_size: u32,
    key: &FrontendKey,
    old: &ProgrammedFrontend,
    frontend: &Frontend,
) -> Change {
    let active = capped(&frontend.endpoints);
    let standby = standby_of(frontend, active);
    let same_backends = !old.needs_rewrite
        && old.endpoints().eq(active.iter().copied())
        && old.standby_endpoints().eq(standby.iter().copied());
    if same_backends {
        return settings_change(key, old, frontend, maglev_table_size);
    }

    // Endpoints that stay listed keep their ids, so their flows and affinities survive;
    // those that change role are switched (taking connections before the new bank is
    // published, no longer taking them after).
    let kept: HashMap<Endpoint, (u32, bool)> = old
        .backends
        .iter()
        .map(|(ep, id)| (*ep, (*id, true)))
        .chain(old.standby.iter().map(|(ep, id)| (*ep, (*id, false))))
        .collect();
    let svc_id = old.svc_id;
    let mut ops = Vec::new();
    let mut deactivate = Vec::new();
    let mut assign = |ep: &Endpoint, active: bool, ops: &mut Vec<MapOp>| -> (Endpoint, u32) {
        let endpoint = *ep;
        match kept.get(ep) {
            Some(&(id, was_active)) => {
                if was_active != active || old.needs_rewrite {
                    let op = MapOp::SetBackendActive {
                        id,
                        endpoint,
                        svc_id,
                        active,
                    };
                    if active {
                        ops.push(op);
                    } else {
                        deactivate.push(op);
                    }
                }
                (endpoint, id)
            }
            None => {
                let id = allocate_backend_id(next_backend_id);
                ops.push(MapOp::PutBackend {
                    id,
                    endpoint,
                    svc_id,
                    active,
                });
                (endpoint, id)
            }
        }
    };
    let backends: Vec<(Endpoint, u32)> =
        active.iter().map(|ep| assign(ep, true, &mut ops)).collect();
    let standby: Vec<(Endpoint, u32)> = standby
        .iter()
        .map(|ep| assign(ep, false, &mut ops))
        .collect();
    let source_ranges = source_ranges(key, frontend);
    let (put_ranges, delete_ranges) = range_ops(svc_id, &old.source_ranges, &source_ranges);
    ops.extend(put_ranges);
    let bank = 1 - old.bank;
    ops.extend(slot_ops(
        svc_id,
        bank,
        &backends,
        old.bank_len[usize::from(bank)],
    ));
    let (put_table, drop_table) = maglev_switch(old, frontend, bank, &backends, maglev_table_size);
    ops.extend(put_table);
    ops.push(put_service(key, svc_id, bank, &backends, frontend));
    ops.extend(drop_table);
    ops.extend(delete_ranges);
    ops.append(&mut deactivate);
    let mut bank_len = old.bank_len;
    bank_len[usize::from(bank)] = slot_count(&backends);
    ops.extend(empty_left_bank(old, &mut bank_len));
    let listed: HashSet<Endpoint> = backends.iter().chain(&standby).map(|(ep, _)| *ep).collect();
    ops.extend(
        old.backends
            .iter()
            .chain(&old.standby)
            .filter(|(ep, _)| !listed.contains(ep))
            .map(|(endpoint, id)| MapOp::DeleteBackend {
                id: *id,
                endpoint: *endpoint,
            }),
    );
    Change {
        ops,
        after: Some(ProgrammedFrontend {
            service: Some(frontend.service.clone()),
            svc_id,
            bank,
            bank_len,
            settings: ServiceSettings::of(key, frontend),
            source_ranges,
            backends,
            standby,
            needs_rewrite: false,
        }),
        new_svc_id: None,
    }
}

/// Recovered inconsistent (`needs_rewrite`), `old`'s active bank may have holes (a slot
/// lost): once the rewrite is published in the other bank, it is emptied, so that what an
/// inactive bank holds is always a whole run of slots (as `bank_len` counts them). No ops
/// for a consistent one.
fn empty_left_bank(old: &ProgrammedFrontend, bank_len: &mut [u32; 2]) -> Vec<MapOp> {
    if !old.needs_rewrite {
        return Vec::new();
    }
    let left = usize::from(old.bank & 1);
    let ops = (0..bank_len[left])
        .map(|index| MapOp::DeleteSlot {
            svc_id: old.svc_id,
            bank: old.bank,
            index,
        })
        .collect();
    bank_len[left] = 0;
    ops
}

/// The backends stay: at most the service value and its source ranges change (affinity,
/// what happens when empty, the external flags, the ranges). New ranges are written before
/// the value that needs them is published; ranges no longer needed go after.
fn settings_change(
    key: &FrontendKey,
    old: &ProgrammedFrontend,
    frontend: &Frontend,
    maglev_table_size: u32,
) -> Change {
    let settings = ServiceSettings::of(key, frontend);
    let source_ranges = source_ranges(key, frontend);
    if old.settings == settings && old.source_ranges == source_ranges {
        return Change {
            ops: Vec::new(),
            after: None,
            new_svc_id: None,
        };
    }
    let mut after = old.clone();
    after.settings = settings;
    after.service = Some(frontend.service.clone());
    let (put_ranges, delete_ranges) = range_ops(old.svc_id, &old.source_ranges, &source_ranges);
    after.source_ranges = source_ranges;
    let mut ops = put_ranges;
    // Maglev turned on: the table of the bank in use is written before the value that reads
    // it; turned off, it goes after.
    if settings.maglev && !old.settings.maglev {
        ops.extend(maglev_table(
            old.svc_id,
            old.bank,
            &old.backends,
            maglev_table_size,
        ));
    }
    // Rewritten even when only the ranges change: a change is applied around its publish.
    ops.push(put_service(
        key,
        old.svc_id,
        old.bank,
        &old.backends,
        frontend,
    ));
    if old.settings.maglev && !settings.maglev {
        ops.push(MapOp::DeleteMaglevTable {
            svc_id: old.svc_id,
            bank: old.bank,
            table_size: maglev_table_size,
        });
    }
    ops.extend(delete_ranges);
    Change {
        ops,
        after: Some(after),
        new_svc_id: None,
    }
}

/// The source range writes that turn `old` into `new` for service port `svc_id`: puts
/// (before publishing) and deletes (after). Both lists are sorted.
fn range_ops(svc_id: u32, old: &[IpNet], new: &[IpNet]) -> (Vec<MapOp>, Vec<MapOp>) {
    let puts = new
        .iter()
        .filter(|r| old.binary_search(r).is_err())
        .map(|&range| MapOp::PutSourceRange { svc_id, range })
        .collect();
    let deletes = old
        .iter()
        .filter(|r| new.binary_search(r).is_err())
        .map(|&range| MapOp::DeleteSourceRange { svc_id, range })
        .collect();
    (puts, deletes)
}

/// A change with no ops only refreshes the remembered service name.
fn change_or_rename(
    change: Change,
    current: Option<&mut ProgrammedFrontend>,
    frontend: &Frontend,
) -> Option<Change> {
    if change.ops.is_empty() {
        if let Some(current) = current {
            current.service = Some(frontend.service.clone());
        }
        return None;
    }
    Some(change)
}

/// `KP_SLOTS` entries a (capped) backend list fills in its bank: none when the service value
/// holds them itself.
fn slot_count(backends: &[(Endpoint, u32)]) -> u32 {
    if slots_inline(backends.len()) {
        return 0;
    }
    u32::try_from(backends.len()).expect("backend lists are capped to MAX_BACKENDS_PER_SERVICE")
}

/// The datapath's count is a u16; more endpoints than that are not programmed.
fn capped(endpoints: &[Endpoint]) -> &[Endpoint] {
    &endpoints[..endpoints.len().min(MAX_BACKENDS_PER_SERVICE as usize)]
}

/// Publishes `frontend`'s settings with `backends` (in the value itself when they are few,
/// else in `bank`).
fn put_service(
    key: &FrontendKey,
    svc_id: u32,
    bank: u8,
    backends: &[(Endpoint, u32)],
    frontend: &Frontend,
) -> MapOp {
    MapOp::PutService {
        key: *key,
        svc_id,
        count: u16::try_from(backends.len()).unwrap_or(u16::MAX),
        bank,
        inline: inline_slots(backends.iter().map(|(_, id)| *id)),
        settings: ServiceSettings::of(key, frontend),
    }
}

/// Writes `backends` into `bank` (nothing when the service value holds them) and deletes
/// what that bank held beyond them.
fn slot_ops(
    svc_id: u32,
    bank: u8,
    backends: &[(Endpoint, u32)],
    bank_len_before: u32,
) -> Vec<MapOp> {
    let n = slot_count(backends);
    let mut ops: Vec<MapOp> = backends[..n as usize]
        .iter()
        .zip(0..)
        .map(|((_, id), index)| MapOp::PutSlot {
            svc_id,
            bank,
            index,
            backend_id: *id,
        })
        .collect();
    ops.extend((n..bank_len_before).map(|index| MapOp::DeleteSlot {
        svc_id,
        bank,
        index,
    }));
    ops
}

/// The Maglev writes of a change of `old`'s backends to `backends`, published in `bank`:
/// the new bank's table (before the publish) and the deletion of the old bank's (after).
/// The bank left behind keeps its slots, which the next change overwrites, but not its
/// table: 64 KiB each.
fn maglev_switch(
    old: &ProgrammedFrontend,
    frontend: &Frontend,
    bank: u8,
    backends: &[(Endpoint, u32)],
    table_size: u32,
) -> (Option<MapOp>, Option<MapOp>) {
    let put = frontend
        .maglev
        .then(|| maglev_table(old.svc_id, bank, backends, table_size))
        .flatten();
    let drop = (old.settings.maglev || frontend.maglev).then_some(MapOp::DeleteMaglevTable {
        svc_id: old.svc_id,
        bank: old.bank,
        table_size,
    });
    (put, drop)
}

/// The write of the Maglev table of `backends` (in slot order, with their ids) for `bank`
/// of service port `svc_id`; `None` without backends (nothing to pick: the datapath rejects
/// or drops first) or with at least as many backends as entries (logged: the datapath then
/// takes backends in turn, counting `maglev_fallback`).
fn maglev_table(
    svc_id: u32,
    bank: u8,
    backends: &[(Endpoint, u32)],
    table_size: u32,
) -> Option<MapOp> {
    if backends.is_empty() {
        return None;
    }
    if let Err(e) = maglev::check_size(table_size, backends.len()) {
        tracing::warn!(svc_id, error = %e, "no Maglev table: new flows take backends in turn");
        return None;
    }
    Some(MapOp::PutMaglevTable {
        svc_id,
        bank,
        table_size,
        backends: backends.into(),
    })
}

/// Unpublishes the frontend first, then removes what it referenced.
fn remove_ops(key: &FrontendKey, old: &ProgrammedFrontend, maglev_table_size: u32) -> Vec<MapOp> {
    let mut ops = vec![MapOp::DeleteService { key: *key }];
    if old.settings.maglev {
        ops.extend((0..2u8).map(|bank| MapOp::DeleteMaglevTable {
            svc_id: old.svc_id,
            bank,
            table_size: maglev_table_size,
        }));
    }
    for bank in 0..2u8 {
        ops.extend(
            (0..old.bank_len[usize::from(bank)]).map(|index| MapOp::DeleteSlot {
                svc_id: old.svc_id,
                bank,
                index,
            }),
        );
    }
    ops.extend(
        old.backends
            .iter()
            .chain(&old.standby)
            .map(|&(endpoint, id)| MapOp::DeleteBackend { id, endpoint }),
    );
    ops.extend(
        old.source_ranges
            .iter()
            .map(|&range| MapOp::DeleteSourceRange {
                svc_id: old.svc_id,
                range,
            }),
    );
    ops.push(MapOp::ResetServiceCounters { svc_id: old.svc_id });
    ops
}

/// VIP writes per batch (see `Programmed::update_vips`).
const VIP_CHUNK: usize = 4096;

/// Writes the VIP ops `pending` (each with the frontend that made it) in one batch, reports
/// those that failed, and empties it.
fn write_vips(
    pending: &mut Vec<(&FrontendKey, MapOp)>,
    dp: &mut impl Datapath,
    report: &mut SyncReport,
) {
    if pending.is_empty() {
        return;
    }
    report.ops += pending.len();
    let ops: Vec<&MapOp> = pending.iter().map(|(_, op)| op).collect();
    for ((key, _), result) in pending.iter().zip(dp.apply_batch(&ops)) {
        if let Err(e) = result {
            report.problems.push(Problem::new(
                ProblemKind::Datapath,
                format!("{key}: writing the VIPs map failed: {e:#}"),
            ));
        }
    }
    pending.clear();
}

fn datapath_problem(
    service: Option<&ServicePortName>,
    key: &FrontendKey,
    e: &anyhow::Error,
) -> Problem {
    let problem = Problem::new(
        ProblemKind::Datapath,
        format!("{key}: writing the datapath failed: {}", datapath_error(e)),
    );
    match service {
        Some(s) => problem.object(format!("Service {s}")),
        None => problem,
    }
}

#[cfg(test)]
mod standby_tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::model::{FrontendKind, fixtures};

    #[test]
    fn endpoints_beyond_the_cap_wait_on_standby_with_the_listed_ones_in_order() {
        let max = MAX_BACKENDS_PER_SERVICE;
        let ep = |n: u32, port| Endpoint {
            addr: IpAddr::V4(Ipv4Addr::from(0xC612_0000 + n)),
            port,
        };
        let endpoints: Vec<Endpoint> = (0..max + 2).map(|n| ep(n, 80)).collect();
        let mut frontend = fixtures::frontend("web", FrontendKind::ClusterIp, endpoints);
        // Listed only: one that sorts among the capped endpoints, one after them all.
        frontend.standby = vec![ep(3, 79), ep(max + 5, 80)];
        let active = capped(&frontend.endpoints);
        assert_eq!(active.len(), max as usize);
        assert_eq!(
            standby_of(&frontend, active),
            [ep(3, 79), ep(max, 80), ep(max + 1, 80), ep(max + 5, 80)]
        );
        // Under the cap: the standby ones only.
        frontend.endpoints.truncate(2);
        let active = capped(&frontend.endpoints);
        assert_eq!(standby_of(&frontend, active), [ep(3, 79), ep(max + 5, 80)]);
    }
}
