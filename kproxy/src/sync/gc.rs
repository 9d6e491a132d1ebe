//! Conntrack and affinity garbage collection: which entries go, and deleting them without
//! racing the datapath.
//!
//! The datapath already ignores what timed out; collection frees the space, and sweeps what
//! no longer means anything: flows and affinities of deleted services. Flows whose endpoint
//! is gone are kept until they time out, so that the client's next packet still finds them
//! and is answered with a RST (see the datapath's `Known::Reset`).
//!
//! `KP_CT_REV` is never evicted by the kernel (a reply must not leak untranslated), so when it
//! fills up, collection makes room the way netfilter's early drop does: flows that never saw
//! a reply go first, oldest first, down to `EARLY_DROP_TARGET`.
//!
//! A scan and the deletes it decides on are not atomic: between them a CPU may refresh an
//! entry or create a new flow under the same key. So an entry is deleted only if it still
//! holds exactly what was judged, and one deleted in a race is put back at once.
//!
//! A pass runs on a thread of its own, beside the agent's syncs (a pass over hundreds of
//! thousands of flows takes a while, and a sync must not wait for it), so what it knows of
//! the programmed services can fall behind; see [`Liveness::current`].
//!
//! Each family has its own conntrack and affinity maps (`KP_CT_FWD6`, ...), collected the
//! same way by the same code: the tables are generic over the address type.

use std::{
    collections::HashSet,
    net::IpAddr,
    ops::{AddAssign, Bound},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::Result;
use kproxy_common::{
    config::Config,
    ct::{
        AffinityKeyOf, AffinityValue, CT_F_SEEN_REPLY, CtEntryOf, FlowKeyOf, FlowState,
        forward_key, is_reply_of, reply_key,
    },
};

use super::Programmed;
pub use crate::dataplane::Walk;
use crate::model::{FrontendKey, KeySet};
use crate::wire::{self, WireAddr};

/// One conntrack map (of the family of addresses `A`) as collection sees it.
pub trait FlowTable<A> {
    /// The next entries of a walk (replacing `chunk`'s), moving `walk` on; `Walk::End` once
    /// every entry was handed out. The walk may be interleaved with deletes.
    fn next_chunk(
        &mut self,
        walk: &mut Walk,
        chunk: &mut Vec<(FlowKeyOf<A>, CtEntryOf<A>)>,
    ) -> Result<()>;
    /// The entry at `key` now.
    fn get(&self, key: &FlowKeyOf<A>) -> Result<Option<CtEntryOf<A>>>;
    /// Removes the entry at `key` and returns what it held, in one step.
    fn take(&mut self, key: &FlowKeyOf<A>) -> Result<Option<CtEntryOf<A>>>;
    /// Inserts `entry` at `key` unless something is there already.
    fn put_back(&mut self, key: &FlowKeyOf<A>, entry: &CtEntryOf<A>) -> Result<()>;
}

/// One affinity map (of the family of addresses `A`) as collection sees it.
pub trait AffinityTable<A> {
    fn entries(&self) -> Result<Vec<(AffinityKeyOf<A>, AffinityValue)>>;
    /// Deletes `key` if it still holds `judged`.
    fn remove_if_unchanged(
        &mut self,
        key: &AffinityKeyOf<A>,
        judged: &AffinityValue,
    ) -> Result<bool>;
}

/// What collection knows about the programmed services.
pub trait Liveness {
    /// Whether a frontend `VIP:port/proto` (the address a flow's forward key was sent to,
    /// the port in wire format) is served.
    fn frontend_exists(&self, vip: IpAddr, port: u16, proto: u8) -> bool;
    /// Whether backend id `id` is still listed by its service port.
    fn backend_exists(&self, id: u32) -> bool;
    /// Whether the answers above are still the agent's: a pass runs beside the agent's syncs,
    /// and a frontend or backend programmed after the pass began is unknown to it. While
    /// not current, nothing is deleted for being gone (timeouts still apply); the next pass
    /// sweeps it.
    fn current(&self) -> bool;
}

/// Counts the agent's changes to what is programmed, so a pass running beside the agent can
/// tell whether its [`ProgrammedLiveness`] is still current.
#[derive(Clone, Debug, Default)]
pub struct Generation(Arc<AtomicU64>);

impl Generation {
    /// Called after every change to the programmed frontends, backends or NodePort addresses.
    pub fn advance(&self) {
        self.0.fetch_add(1, Ordering::Release);
    }

    fn now(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// `Liveness` of what the agent programmed, as of one generation. A flow's forward key names
/// the address the client sent to: a frontend's VIP, or for a NodePort one of the node's
/// NodePort addresses of the NodePort's family (the frontend's own key is the unspecified
/// address). Both entries of an externalTrafficPolicy Local frontend are one frontend here.
pub struct ProgrammedLiveness {
    /// `(VIP, port, protocol)` of every programmed frontend with a VIP, the port in wire
    /// format.
    frontends: KeySet<(IpAddr, u16, u8)>,
    /// `(port, protocol, IPv6)` of every programmed NodePort, the port in wire format.
    node_ports: KeySet<(u16, u8, bool)>,
    /// The node's addresses NodePorts answer on.
    node_port_addrs: HashSet<IpAddr>,
    backends: KeySet<u32>,
    generation: Generation,
    /// The generation this was taken at.
    taken_at: u64,
}

impl ProgrammedLiveness {
    /// The liveness of everything programmed now, taken at once.
    pub fn new(
        programmed: &Programmed,
        node_port_addrs: impl IntoIterator<Item = IpAddr>,
        generation: &Generation,
    ) -> Self {
        match LivenessBuilder::start(programmed, node_port_addrs, generation)
            .step(programmed, usize::MAX)
        {
            Taken::Whole(live) => live,
            Taken::Partly(_) => unreachable!("a step without a limit takes every frontend"),
        }
    }
}

/// A [`ProgrammedLiveness`] taken a few frontends at a time, between the agent's syncs: at
/// 100,000 Services the whole took 30-39 ms of the agent's thread (about 70 ms with SipHash
/// sets grown as they filled, which `perf` showed as a stall of the syncs in a churn of
/// endpoint changes), and the changes that arrived meanwhile waited for it.
///
/// The frontends are taken in key order from where the last step stopped. A sync between
/// two steps advances the generation, so the result is not current and nothing is deleted
/// for being gone by the pass that uses it: what the syncs changed behind the cursor cannot
/// be mistaken for gone.
pub struct LivenessBuilder {
    live: ProgrammedLiveness,
    /// The last frontend taken; `None` before the first step.
    after: Option<FrontendKey>,
}

impl LivenessBuilder {
    /// Starts taking `programmed` at the generation `generation` is at now.
    pub fn start(
        programmed: &Programmed,
        node_port_addrs: impl IntoIterator<Item = IpAddr>,
        generation: &Generation,
    ) -> Self {
        let counts = programmed.counts();
        // Sized at once (grown by doubling they rehashed every entry several times) and
        // hashed with foldhash.
        let live = ProgrammedLiveness {
            frontends: KeySet::with_capacity_and_hasher(
                counts.frontends.total(),
                foldhash::fast::RandomState::default(),
            ),
            node_ports: KeySet::default(),
            node_port_addrs: node_port_addrs.into_iter().collect(),
            backends: KeySet::with_capacity_and_hasher(
                counts.backends.total(),
                foldhash::fast::RandomState::default(),
            ),
            generation: generation.clone(),
            taken_at: generation.now(),
        };
        Self { live, after: None }
    }

    /// Takes up to `frontends` more frontends of `programmed`, with their backends.
    pub fn step(mut self, programmed: &Programmed, frontends: usize) -> Taken {
        let mut rest = match self.after {
            Some(after) => programmed
                .frontends()
                .range((Bound::Excluded(after), Bound::Unbounded)),
            None => programmed.frontends().range(..),
        };
        let live = &mut self.live;
        for (key, frontend) in rest.by_ref().take(frontends) {
            let (port, proto) = (wire::port_to_wire(key.port), key.proto.number());
            if key.is_node_port() {
                live.node_ports.insert((port, proto, key.addr.is_ipv6()));
            } else {
                live.frontends.insert((key.addr, port, proto));
            }
            live.backends.extend(frontend.backend_ids());
            self.after = Some(*key);
        }
        if rest.next().is_some() {
            Taken::Partly(self)
        } else {
            Taken::Whole(self.live)
        }
    }
}

/// What a step of a [`LivenessBuilder`] leaves: the liveness once every frontend is taken
/// (never a part of it, which would tell the frontends not taken yet gone), else the builder.
pub enum Taken {
    Whole(ProgrammedLiveness),
    Partly(LivenessBuilder),
}

impl Liveness for ProgrammedLiveness {
    fn frontend_exists(&self, vip: IpAddr, port: u16, proto: u8) -> bool {
        self.frontends.contains(&(vip, port, proto))
            || (self.node_ports.contains(&(port, proto, vip.is_ipv6()))
                && self.node_port_addrs.contains(&vip))
    }

    fn backend_exists(&self, id: u32) -> bool {
        self.backends.contains(&id)
    }

    fn current(&self) -> bool {
        self.generation.now() == self.taken_at
    }
}

/// What one collection pass did in one family's maps (or, added up, in both).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Flows (forward entries) found: what fills `KP_CT_FWD` (`KP_CT_FWD6`).
    pub flows: usize,
    /// Reply entries left after the pass: what fills `KP_CT_REV` (`KP_CT_REV6`).
    pub replies: usize,
    /// Flows deleted because they timed out.
    pub expired: usize,
    /// Flows deleted because their service is gone.
    pub service_gone: usize,
    /// Reply entries without a forward entry, deleted once timed out.
    pub orphans: usize,
    /// Unanswered flows deleted early because the reply table was nearly full.
    pub early_dropped: usize,
    /// Deletes skipped because the datapath changed the entry meanwhile.
    pub raced: usize,
    pub affinities_expired: usize,
    /// Affinity entries left after the pass: what fills `KP_AFFINITY` (`KP_AFFINITY6`).
    pub affinities: usize,
}

impl AddAssign for GcStats {
    fn add_assign(&mut self, other: Self) {
        self.flows += other.flows;
        self.replies += other.replies;
        self.expired += other.expired;
        self.service_gone += other.service_gone;
        self.orphans += other.orphans;
        self.early_dropped += other.early_dropped;
        self.raced += other.raced;
        self.affinities_expired += other.affinities_expired;
        self.affinities += other.affinities;
    }
}

/// What one collection pass did, in each family's maps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcPass {
    pub v4: GcStats,
    pub v6: GcStats,
}

impl GcPass {
    /// Both families together.
    pub fn total(&self) -> GcStats {
        let mut total = self.v4;
        total += self.v6;
        total
    }
}

/// Why a flow goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    Expired,
    ServiceGone,
}

/// Early drop starts above this share of `KP_CT_REV`'s capacity (percent)...
pub const EARLY_DROP_ABOVE: usize = 90;
/// ...and stops at this one.
pub const EARLY_DROP_TARGET: usize = 80;

/// The longest ClientIP affinity timeout Kubernetes allows: one day.
const MAX_AFFINITY_NS: u64 = 86_400 * 1_000_000_000;

/// Judges one flow from its forward key and entry and its reply entry, if any.
pub fn judge<A: WireAddr>(
    cfg: &Config,
    now_ns: u64,
    live: &impl Liveness,
    fwd_key: &FlowKeyOf<A>,
    fwd: &CtEntryOf<A>,
    rev: Option<&CtEntryOf<A>>,
) -> Verdict {
    if service_gone(live, fwd_key.daddr, fwd_key.dport, fwd_key.proto) {
        return Verdict::ServiceGone;
    }
    if cfg.expired(
        fwd_key.proto,
        &FlowState::of(fwd, rev.unwrap_or(&CtEntryOf::ZERO)),
        now_ns,
    ) {
        return Verdict::Expired;
    }
    Verdict::Keep
}

/// Deletes `key` from `table` if it still holds `judged`; puts back what a racing CPU wrote.
/// Returns whether it deleted.
pub fn delete_if_unchanged<A: WireAddr>(
    table: &mut impl FlowTable<A>,
    key: &FlowKeyOf<A>,
    judged: &CtEntryOf<A>,
) -> Result<bool> {
    if table.get(key)?.as_ref() != Some(judged) {
        return Ok(false);
    }
    match table.take(key)? {
        Some(taken) if taken == *judged => Ok(true),
        Some(taken) => {
            // Refreshed or re-created between the check and the delete: restore it.
            table.put_back(key, &taken)?;
            Ok(false)
        }
        None => Ok(false),
    }
}

/// Entries fetched per chunk of a walk: memory stays bounded at any table size (a pass over
/// hundreds of thousands of flows once held them all at the same time).
pub const CHUNK: usize = 4096;

/// One pass over the two conntrack maps and the affinity map of one family; `rev_capacity`
/// is the size of its reply map (`KP_CT_REV`, `KP_CT_REV6`).
///
/// The tables are walked in chunks, each entry judged as it comes and looked up in the other
/// table by key: a pass holds one chunk and the unanswered flows (candidates for early drop),
/// never a copy of the tables.
pub fn collect<A: WireAddr>(
    cfg: &Config,
    now_ns: u64,
    live: &impl Liveness,
    fwd_table: &mut impl FlowTable<A>,
    rev_table: &mut impl FlowTable<A>,
    affinity: &mut impl AffinityTable<A>,
    rev_capacity: usize,
) -> Result<GcStats> {
    let mut stats = GcStats::default();
    let mut unanswered = Vec::new();
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut walk = Walk::Start;
    while walk != Walk::End {
        fwd_table.next_chunk(&mut walk, &mut chunk)?;
        for (key, entry) in &chunk {
            stats.flows += 1;
            let rkey = reply_key(key, entry);
            let rev = rev_table.get(&rkey)?.filter(|r| is_reply_of(&rkey, r, key));
            let verdict = judge(cfg, now_ns, live, key, entry, rev.as_ref());
            if verdict == Verdict::Keep {
                if let Some(rev) = rev
                    && rev.flags & CT_F_SEEN_REPLY == 0
                {
                    unanswered.push((*key, *entry, rkey, rev));
                }
                continue;
            }
            if !delete_if_unchanged(fwd_table, key, entry)? {
                stats.raced += 1;
                continue;
            }
            if let Some(rev) = rev {
                delete_if_unchanged(rev_table, &rkey, &rev)?;
            }
            match verdict {
                Verdict::Expired => stats.expired += 1,
                Verdict::ServiceGone => stats.service_gone += 1,
                Verdict::Keep => {}
            }
        }
    }
    // Reply entries no forward entry claims (their forward entry evicted alone, or their flow
    // moved to another backend): the datapath may still translate late replies with them, so
    // they go only once timed out by their own clock, or when their service is gone.
    let mut left = 0;
    walk = Walk::Start;
    while walk != Walk::End {
        rev_table.next_chunk(&mut walk, &mut chunk)?;
        for (rkey, rev) in &chunk {
            let fkey = forward_key(rkey, rev);
            let claimed = fwd_table.get(&fkey)?.is_some_and(|fwd| {
                reply_key(&fkey, &fwd) == *rkey && is_reply_of(rkey, rev, &fkey)
            });
            if !claimed {
                let gone = service_gone(live, fkey.daddr, fkey.dport, fkey.proto)
                    || cfg.expired(rkey.proto, &FlowState::of(rev, &CtEntryOf::ZERO), now_ns);
                if gone && delete_if_unchanged(rev_table, rkey, rev)? {
                    stats.orphans += 1;
                    continue;
                }
            }
            left += 1;
        }
    }
    if left * 100 > rev_capacity * EARLY_DROP_ABOVE {
        unanswered.sort_by_key(|(_, fwd, _, rev)| FlowState::of(fwd, rev).last_seen_ns);
        for (key, fwd, rkey, rev) in unanswered {
            if left * 100 <= rev_capacity * EARLY_DROP_TARGET {
                break;
            }
            // Forward entry first, as everywhere: the datapath trusts a live forward entry
            // to have its reply entry. A flow refreshed meanwhile keeps both.
            if !delete_if_unchanged(fwd_table, &key, &fwd)? {
                stats.raced += 1;
                continue;
            }
            if delete_if_unchanged(rev_table, &rkey, &rev)? {
                stats.early_dropped += 1;
                left -= 1;
            }
        }
    }
    stats.replies = left;
    for (key, value) in affinity.entries()? {
        let too_old = now_ns.saturating_sub(value.last_seen_ns) > MAX_AFFINITY_NS;
        let backend_gone = !live.backend_exists(value.backend_id) && live.current();
        if (too_old || backend_gone) && affinity.remove_if_unchanged(&key, &value)? {
            stats.affinities_expired += 1;
        } else {
            stats.affinities += 1;
        }
    }
    Ok(stats)
}

/// Whether the frontend a flow was sent to is no longer served, as far as `live` can tell.
fn service_gone<A: WireAddr>(live: &impl Liveness, vip: A, port: u16, proto: u8) -> bool {
    !live.frontend_exists(vip.to_ip(), port, proto) && live.current()
}

#[cfg(test)]
mod tests;
