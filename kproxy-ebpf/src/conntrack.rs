//! Connection tracking: the two entries of a flow, how packets update them, and how a new
//! flow is created so that concurrent CPUs converge on one entry.
//!
//! Map values are never written through pointers: a pointer into a preallocated (LRU) map
//! value may be recycled for another flow by an eviction on another CPU at any moment. Every
//! read copies the value out at once; every write is a whole-value map update (`BPF_EXIST` to
//! refresh, `BPF_NOEXIST` to create), which the kernel applies atomically.

use aya_ebpf::{
    bindings::{BPF_EXIST, BPF_NOEXIST},
    helpers::bpf_ktime_get_coarse_ns,
    maps::{HashMap, LruHashMap},
};
use kproxy_common::{
    addr::IpAddress,
    config::{Config, IPPROTO_TCP},
    ct::{
        CT_F_FIN_FWD, CT_F_FIN_REV, CT_F_RST, CT_F_SEEN_REPLY, CT_REFRESH_NS, CtEntryOf, FlowKeyOf,
        FlowState, forward_entry, forward_key, holder, is_reply_of, reply_entry, reply_key,
    },
    stats::Counter,
};

use crate::{
    family::{CtEntryF, Family, FlowKeyF, called},
    filter, frontend,
    maps::KP_CONFIG,
    parse::{TCP_FIN, TCP_RST},
    stats,
};

mod staged;

const EEXIST: i32 = 17;
const ENOENT: i32 = 2;

/// The two conntrack maps of a family: the forward one is an LRU, the reply one a plain hash
/// (see maps.rs).
pub trait CtMap<A> {
    /// A copy of the entry at `key` (see the module comment).
    fn lookup(&self, key: &FlowKeyOf<A>) -> Option<CtEntryOf<A>>;
    /// Copies the entry at `key` into `dst`; false (and `dst` untouched) if there is none.
    fn lookup_into(&self, key: &FlowKeyOf<A>, dst: &mut CtEntryOf<A>) -> bool;
    /// Whether `key` has an entry.
    fn contains(&self, key: &FlowKeyOf<A>) -> bool;
    fn update(&self, key: &FlowKeyOf<A>, entry: &CtEntryOf<A>, flags: u32) -> Result<(), i32>;
    fn delete(&self, key: &FlowKeyOf<A>);
}

macro_rules! ct_map {
    ($map:ident) => {
        impl<A: IpAddress> CtMap<A> for $map<FlowKeyOf<A>, CtEntryOf<A>> {
            #[inline(always)]
            fn lookup(&self, key: &FlowKeyOf<A>) -> Option<CtEntryOf<A>> {
                // SAFETY: copied at once; see the module comment.
                unsafe { self.get(key) }.copied()
            }

            #[inline(always)]
            fn lookup_into(&self, key: &FlowKeyOf<A>, dst: &mut CtEntryOf<A>) -> bool {
                match self.get_ptr(key) {
                    Some(found) => {
                        // SAFETY: copied at once (see the module comment); a map value and
                        // `dst` never overlap (a plain assignment compiles to a `memmove`
                        // call, a byte loop in BPF).
                        unsafe { core::ptr::copy_nonoverlapping(found, dst, 1) };
                        true
                    }
                    None => false,
                }
            }

            #[inline(always)]
            fn contains(&self, key: &FlowKeyOf<A>) -> bool {
                self.get_ptr(key).is_some()
            }

            #[inline(always)]
            fn update(
                &self,
                key: &FlowKeyOf<A>,
                entry: &CtEntryOf<A>,
                flags: u32,
            ) -> Result<(), i32> {
                self.insert(key, entry, u64::from(flags))
            }

            #[inline(always)]
            fn delete(&self, key: &FlowKeyOf<A>) {
                let _ = self.remove(key);
            }
        }
    };
}

ct_map!(HashMap);
ct_map!(LruHashMap);

/// CLOCK_MONOTONIC_COARSE: the last tick's time, read without the clock source (reading
/// the TSC cost a tenth of a forwarded packet's time). Flow and affinity ages are kept in
/// seconds; a tick's lag (a few ms) is far below every timeout.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// The agent's settings, or the defaults before it wrote them.
#[inline(always)]
pub fn config() -> Config {
    match KP_CONFIG.get(0) {
        Some(c) if c.initialized != 0 => *c,
        _ => Config::DEFAULT,
    }
}

/// Direction of a packet within its flow.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Client → service.
    Forward,
    /// Backend → client.
    Reply,
}

/// State bits a packet of direction `dir` with `tcp_flags` sets in its own entry.
#[inline(always)]
pub fn state_bits(dir: Dir, tcp_flags: u8) -> u32 {
    let mut bits = if dir == Dir::Reply {
        CT_F_SEEN_REPLY
    } else {
        0
    };
    if tcp_flags & TCP_FIN != 0 {
        bits |= if dir == Dir::Forward {
            CT_F_FIN_FWD
        } else {
            CT_F_FIN_REV
        };
    }
    if tcp_flags & TCP_RST != 0 {
        bits |= CT_F_RST;
    }
    bits
}

/// A copy of the entry at `key`, or `CtEntry::ZERO` (no `Option`: see `FlowState::of`).
#[inline(always)]
pub fn lookup_or_zero<A: IpAddress>(map: &impl CtMap<A>, key: &FlowKeyOf<A>) -> CtEntryOf<A> {
    match map.lookup(key) {
        Some(entry) => entry,
        None => CtEntryOf::ZERO,
    }
}

called! {
    /// [`record_in`] the conntrack map of direction `dir`.
    pub fn record<F: Family>(
        key: &FlowKeyF<F>,
        entry: &CtEntryF<F>,
        dir: Dir,
        tcp_flags: u8,
        now: u64,
    ) -> () => record_here
}

#[inline(always)]
fn record_here<F: Family>(
    key: &FlowKeyF<F>,
    entry: &CtEntryF<F>,
    dir: Dir,
    tcp_flags: u8,
    now: u64,
) {
    if dir == Dir::Forward {
        record_in(F::ct_fwd(), key, entry, (dir, tcp_flags), now, || {});
    } else {
        // A reply entry put back is a new one to the client bitmap too.
        let mark = || filter::mark_client::<F>(key.daddr);
        record_in(F::ct_rev(), key, entry, (dir, tcp_flags), now, mark);
    }
}

/// Records a packet of direction `dir` in its own entry `entry` at `key` of `map`: the state
/// bits it adds, and the time at most once per `CT_REFRESH_NS` or with new bits (a FIN or RST
/// is stamped when it passed: see `FIN_CLOSE_QUIET_NS`). The write replaces the
/// whole value; if another CPU replaced it at the same moment and the new bits did not
/// survive, they are written once more. An entry evicted or deleted meanwhile is put back,
/// `before_insert` called first.
#[inline(always)]
fn record_in<A: IpAddress>(
    map: &impl CtMap<A>,
    key: &FlowKeyOf<A>,
    entry: &CtEntryOf<A>,
    (dir, tcp_flags): (Dir, u8),
    now: u64,
    before_insert: impl Fn(),
) {
    let bits = state_bits(dir, tcp_flags) & !entry.flags;
    let refresh = bits != 0 || now.saturating_sub(entry.last_seen_ns) > CT_REFRESH_NS;
    if bits == 0 && !refresh {
        return;
    }
    let mut updated = *entry;
    updated.flags |= bits;
    if refresh {
        updated.last_seen_ns = now;
    }
    for _ in 0..2 {
        match map.update(key, &updated, BPF_EXIST) {
            Ok(()) => {}
            Err(e) if e == -ENOENT => {
                before_insert();
                let _ = map.update(key, &updated, BPF_NOEXIST);
                return;
            }
            Err(_) => return,
        }
        if bits == 0 {
            return;
        }
        match map.lookup(key) {
            Some(now_there) if now_there.flags & bits != bits => {
                updated = now_there;
                updated.flags |= bits;
            }
            _ => return,
        }
    }
}

/// Whether forward entry `entry` (`CtEntry::ZERO` if none) alone says its flow is live for
/// a packet that is a SYN or not (`syn`): refreshed within the last second and not ending
/// (see `existing`). Not timed out either: every timeout is at least `CT_REFRESH_NS`
/// (`Config::with_minimum_timeouts`, the only way the agent writes them).
#[inline(always)]
pub fn fresh<A>(entry: &CtEntryOf<A>, syn: bool, now: u64) -> bool {
    entry.backend_id != 0
        && !syn
        && now.saturating_sub(entry.last_seen_ns) <= CT_REFRESH_NS
        && entry.flags & (CT_F_FIN_FWD | CT_F_RST) == 0
}

called! {
    pub fn existing<F: Family>(
        fwd: &FlowKeyF<F>,
        entry: &CtEntryF<F>,
        syn: bool,
        now: u64,
        state: &mut FlowState,
    ) -> bool => existing_here
}

/// Whether the flow of forward entry `entry` at `fwd` (`CtEntry::ZERO` if none) exists,
/// its state then in `state`. Rebuilds a reply entry the agent's collection deleted while the
/// forward one lived on (early drop racing a packet that refreshed the flow). A flow whose
/// reply entry cannot be rebuilt (another flow holds its backend-side tuple now, or the table
/// is full) is no flow: it is forgotten, so that its packets are never sent to the backend
/// with replies that would be translated for someone else, or not at all.
///
/// The reply entry is looked at only when its answer can matter: for a SYN (a finished flow
/// is reopened), once the forward entry is due for its refresh (at most once a second per
/// flow, and always before anything can time out), and once the client has ended or reset
/// the flow. Otherwise (nearly every packet of a live flow) the forward entry alone says the
/// flow is live, and one hash lookup per packet is saved. Nothing is missed meanwhile: a
/// reply entry never goes before its forward entry (the agent's collection deletes the
/// forward one first and keeps both if it changed; a reopened flow rewrites its reply
/// entry, see `claim`), and a finished flow whose tuple a new flow takes loses its forward
/// entry with it. The check on refresh stays as the safety net for anything else.
#[inline(always)]
fn existing_here<F: Family>(
    fwd: &FlowKeyF<F>,
    entry: &CtEntryF<F>,
    syn: bool,
    now: u64,
    state: &mut FlowState,
) -> bool {
    if entry.backend_id == 0 {
        return false;
    }
    if fresh(entry, syn, now) {
        *state = FlowState::of(entry, &CtEntryF::<F>::ZERO);
        return true;
    }
    if F::STAGED {
        return staged::existing_reply_side::<F>(fwd, entry, state);
    }
    let rkey = reply_key(fwd, entry);
    let mut rev = lookup_or_zero(F::ct_rev(), &rkey);
    if !is_reply_of(&rkey, &rev, fwd) {
        rev = CtEntryF::<F>::ZERO;
        if insert_rev::<F>(&rkey, &reply_entry(fwd, entry)).is_ok() {
            stats::count(Counter::CtReplyRestored);
        } else if !is_reply_of(&rkey, &lookup_or_zero(F::ct_rev(), &rkey), fwd) {
            // Not rebuilt by another CPU handling this flow at the same moment either.
            remove_stale::<F>(fwd, entry);
            return false;
        }
    }
    *state = FlowState::of(entry, &rev);
    true
}

called! {
    pub fn existing_reply<F: Family>(
        rev: &FlowKeyF<F>,
        now: u64,
        entry: &mut CtEntryF<F>,
    ) -> bool => existing_reply_here
}

/// Whether `rev` (a backend→client tuple) has a reply entry, then copied into `entry`.
/// Rebuilds a forward entry the LRU evicted alone, unless the flow is over.
#[inline(always)]
fn existing_reply_here<F: Family>(rev: &FlowKeyF<F>, now: u64, entry: &mut CtEntryF<F>) -> bool {
    // A reply comes from the backend its flow was sent to, to the flow's client (or the
    // address it was masqueraded to).
    if !filter::may_be_backend::<F>(rev.saddr, rev.sport) || !filter::may_be_client::<F>(rev.daddr)
    {
        return false;
    }
    let Some(found) = F::ct_rev().lookup(rev) else {
        return false;
    };
    *entry = found;
    let fkey = forward_key(rev, entry);
    if !F::ct_fwd().contains(&fkey)
        && !config().expired(rev.proto, &FlowState::of(entry, &CtEntryF::<F>::ZERO), now)
        && F::ct_fwd()
            .update(&fkey, &forward_entry(rev, entry), BPF_NOEXIST)
            .is_ok()
    {
        stats::count(Counter::CtForwardRestored);
    }
    true
}

called! {
    pub fn retire<F: Family>(fwd: &FlowKeyF<F>, stale: &CtEntryF<F>) -> () => retire_here
}

/// [`remove_stale`] for a flow a new one replaces at the same forward key (a reopened port,
/// an expired or rebalanced flow), whose reply entry stays until its own timeout so late
/// replies still translate: that entry first takes on the forward entry's state bits and
/// time, so its own state is the whole flow's. Otherwise a reopened TCP flow's old tuple
/// would keep only the backend's FIN, count as established for the established timeout
/// (hours), and hold that tuple from other flows all that time.
#[inline(always)]
fn retire_here<F: Family>(fwd: &FlowKeyF<F>, stale: &CtEntryF<F>) {
    let rkey = reply_key(fwd, stale);
    // One copy, changed in place (each copy of an IPv6 entry is stack a stage lacks).
    let mut rev = CtEntryF::<F>::ZERO;
    if F::ct_rev().lookup_into(&rkey, &mut rev) && is_reply_of(&rkey, &rev, fwd) {
        rev.last_seen_ns = FlowState::of(&rev, stale).last_seen_ns;
        rev.flags |= stale.flags;
        let _ = F::ct_rev().update(&rkey, &rev, BPF_EXIST);
    }
    remove_stale::<F>(fwd, stale);
}

/// Removes the forward entry of `fwd` if it still is `stale` (another CPU may have replaced
/// it with a fresh flow since it was read), so a new flow can take its place.
#[inline(always)]
pub fn remove_stale<F: Family>(fwd: &FlowKeyF<F>, stale: &CtEntryF<F>) {
    // The two fields are read at once, like a copy of the entry would be (without one).
    // SAFETY: a pointer to a live map value, read right away.
    let still_stale = F::ct_fwd().get_ptr(fwd).is_some_and(|now_there| unsafe {
        (*now_there).backend_id == stale.backend_id
            && (*now_there).last_seen_ns == stale.last_seen_ns
    });
    if still_stale {
        F::ct_fwd().delete(fwd);
    }
}

/// [`create`] for a staged family (see `conntrack::staged`): the forward entry in effect is
/// left in this CPU's stage state, and a pointer to it returned.
#[inline(always)]
pub fn create_staged<F: Family>(
    fwd: &FlowKeyF<F>,
    new: &NewFlow<F::Addr>,
    tcp_flags: u8,
    now: u64,
) -> Result<*const CtEntryF<F>, Counter> {
    let state = F::stage_state().ok_or(Counter::DropCtInsert)?;
    // SAFETY: this CPU's stage state, its conntrack scratch used by nothing else meanwhile;
    // `fwd` and `new` are the caller's references, outside it.
    unsafe {
        let ct = &raw mut (*state).ct;
        staged::create::<F>(fwd, new, tcp_flags, now, ct)?;
        Ok(&raw const (*ct).forward)
    }
}

/// Source ports handed out when a client's own is taken towards a backend: 1024–29999, below
/// Linux's default ephemeral range (32768–60999) and the default NodePort range. Clients take
/// their own ports from the ephemeral range, so there the tuples towards a busy backend are
/// held by the clients' own flows too, and a candidate could meet a client's direct
/// connection to the backend, which the datapath does not see.
const ALT_PORT_MIN: u32 = 1_024;
const ALT_PORT_SPAN: u32 = 28_976;
const ALT_PORT_TRIES: u32 = 16;
/// Candidates that may also take over a closed flow's tuple ([`claim_free`]); the others
/// are taken only if free: an insert costs the verifier a fraction of a reclaim.
const ALT_PORT_RECLAIMS: u32 = 8;
/// Between successive candidates: a sixteenth of the span, prime.
const ALT_PORT_STRIDE: u32 = 1_811;

/// How long after its last FIN a TCP flow closed by a FIN each way keeps its backend-side
/// tuple from other flows. The backend's socket waits in LAST_ACK until the client's last
/// ACK reaches it, and answers a SYN on the same tuple meanwhile with a challenge ACK: the
/// client resets and sends its SYN again a second later. (netfilter gives such a tuple up
/// only once that ACK passed, in its TIME_WAIT.) A reset flow's tuple is free at once.
const FIN_CLOSE_QUIET_NS: u64 = 1_000_000_000;

/// Whether the flow that holds backend-side tuple `rkey` (its reply entry `other`, its
/// forward entry `other_fwd` as [`holder`] gives it) is over, so its tuple may be given to
/// a new flow.
#[inline(always)]
fn finished<A>(
    rkey: &FlowKeyOf<A>,
    other: &CtEntryOf<A>,
    other_fwd: &CtEntryOf<A>,
    cfg: &Config,
    now: u64,
) -> bool {
    let state = FlowState::of(other, other_fwd);
    cfg.expired(rkey.proto, &state, now) || (rkey.proto == IPPROTO_TCP && tcp_closed(&state, now))
}

/// Whether a TCP flow is over on the backend's side too: reset, or closed by a FIN each
/// way at least `FIN_CLOSE_QUIET_NS` ago.
#[inline(always)]
fn tcp_closed(state: &FlowState, now: u64) -> bool {
    state.tcp_reset()
        || (state.tcp_closing() && now.saturating_sub(state.last_seen_ns) >= FIN_CLOSE_QUIET_NS)
}

/// How claiming a backend-side tuple ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// This CPU inserted the reply entry.
    Mine,
    /// The same flow's reply entry was already there (another CPU creating it).
    Shared,
    /// Another live flow holds the tuple.
    Taken,
    /// `KP_CT_REV` is full.
    Full,
}

/// Inserts reply entry `rev` at `rkey` unless a live flow other than `fwd` holds it.
#[inline(always)]
fn claim<F: Family>(
    rkey: &FlowKeyF<F>,
    rev: &CtEntryF<F>,
    fwd: &FlowKeyF<F>,
    cfg: &Config,
    now: u64,
) -> Claim {
    for _ in 0..2 {
        if let Some(done) = insert_reply::<F>(rkey, rev) {
            return done;
        }
        let Some(other) = F::ct_rev().lookup(rkey) else {
            continue; // deleted meanwhile: try again
        };
        if is_reply_of(rkey, &other, fwd) {
            // This flow's own entry: another CPU's creating it, or the leftover of the
            // client port's finished connection. Written afresh either way: a leftover's
            // FIN and RST bits are not this connection's, and the agent's collection, which
            // deletes only entries it finds unchanged, must not take it for the old one.
            let _ = F::ct_rev().update(rkey, rev, BPF_EXIST);
            return Claim::Shared;
        }
        let other_key = forward_key(rkey, &other);
        let other_fwd = holder(&other_key, &lookup_or_zero(F::ct_fwd(), &other_key), rkey);
        if !finished(rkey, &other, &other_fwd, cfg, now) {
            return Claim::Taken;
        }
        release::<F>(rkey, &other_key, &other_fwd);
    }
    Claim::Taken
}

/// Inserts reply entry `rev` at `rkey` if none is there (`BPF_NOEXIST`), its destination's
/// `KP_CLIENTS` bit set first: every new reply entry is made here.
#[inline(always)]
pub fn insert_rev<F: Family>(rkey: &FlowKeyF<F>, rev: &CtEntryF<F>) -> Result<(), i32> {
    filter::mark_client::<F>(rkey.daddr);
    F::ct_rev().update(rkey, rev, BPF_NOEXIST)
}

/// Inserts reply entry `rev` at `rkey` if none is there: `Mine`, or `Full`; `None` if the
/// tuple is held.
#[inline(always)]
fn insert_reply<F: Family>(rkey: &FlowKeyF<F>, rev: &CtEntryF<F>) -> Option<Claim> {
    match insert_rev::<F>(rkey, rev) {
        Ok(()) => Some(Claim::Mine),
        Err(e) if e == -EEXIST => None,
        Err(_) => Some(Claim::Full),
    }
}

/// Makes room at `rkey`, held by a finished flow (forward key `other_key`, forward entry
/// `other_fwd` as [`holder`] gives it). Its forward entry goes too (if it still uses this
/// tuple): late packets of the finished flow must not reach the backend on a tuple that is
/// now another flow's (see `existing`).
#[inline(always)]
fn release<F: Family>(rkey: &FlowKeyF<F>, other_key: &FlowKeyF<F>, other_fwd: &CtEntryF<F>) {
    if other_fwd.backend_id != 0 {
        remove_stale::<F>(other_key, other_fwd);
    }
    F::ct_rev().delete(rkey);
}

/// Inserts reply entry `rev` at `rkey` unless a flow holds it that is not a closed TCP
/// connection (see `tcp_closed`), whose tuple it takes over. For the alternative ports of a
/// new flow, where reclaiming matters: a client that reuses its ports quickly towards one
/// backend through several VIPs sends most new flows there, and closed flows hold their
/// tuples for the close timeout. A lighter [`claim`]: no retry, and a flow that is merely
/// idle past its timeout is left to the collection; `claim`'s whole logic inside the loop
/// over candidates multiplied the paths the kernel's verifier walks by the candidates tried
/// (egress 347k instructions walked, against 129k with this one when the loop had 8 tries).
#[inline(always)]
fn claim_free<F: Family>(rkey: &FlowKeyF<F>, rev: &CtEntryF<F>, now: u64) -> Claim {
    if let Some(done) = insert_reply::<F>(rkey, rev) {
        return done;
    }
    if rkey.proto != IPPROTO_TCP {
        return Claim::Taken;
    }
    let Some(other) = F::ct_rev().lookup(rkey) else {
        return Claim::Taken;
    };
    let other_key = forward_key(rkey, &other);
    let other_fwd = holder(&other_key, &lookup_or_zero(F::ct_fwd(), &other_key), rkey);
    if !tcp_closed(&FlowState::of(&other, &other_fwd), now) {
        return Claim::Taken;
    }
    release::<F>(rkey, &other_key, &other_fwd);
    insert_reply::<F>(rkey, rev).unwrap_or(Claim::Taken)
}

/// Whether replies on backend-side tuple `rkey` would be taken for packets to a frontend:
/// a client port equal to a NodePort, masqueraded to a node address (or the node's own
/// client), makes the backend answer to `node:nodePort`. Those replies would be balanced as
/// new connections instead of translated back (netfilter matches its conntrack first; the
/// datapath looks up frontends first, so such a tuple is never handed out).
#[inline(always)]
fn shadows_frontend<F: Family>(rkey: &FlowKeyF<F>) -> bool {
    frontend::find::<F>(rkey.daddr, rkey.dport, rkey.proto).is_some()
}

/// A new flow's forward entry, from `fwd` (client→VIP) to backend `backend_id` at
/// `addr:port`.
#[derive(Clone, Copy)]
pub struct NewFlow<A> {
    pub backend_id: u32,
    pub svc_id: u32,
    pub addr: A,
    pub port: u16,
    /// The node address the flow is masqueraded to, unspecified if it is not.
    pub masq_addr: A,
}

/// Creates both entries of a new flow and returns the forward entry in effect: this CPU's,
/// or, if another CPU created the same flow at the same moment, that one (the packet then
/// follows it, so both CPUs send the flow to one backend).
///
/// The backend-side tuple is claimed first, with an insert that fails if it exists: that
/// insert is the check that the tuple is free, so two flows can never claim it at once.
#[inline(always)]
pub fn create<F: Family>(
    fwd: &FlowKeyF<F>,
    new: &NewFlow<F::Addr>,
    tcp_flags: u8,
    now: u64,
) -> Result<CtEntryF<F>, Counter> {
    let cfg = config();
    let mut forward = CtEntryOf {
        last_seen_ns: now,
        backend_id: new.backend_id,
        svc_id: new.svc_id,
        nat_addr: new.addr,
        nat_port: new.port,
        alt_port: 0,
        flags: state_bits(Dir::Forward, tcp_flags),
        alt_addr: new.masq_addr,
    };
    let mut rkey = reply_key(fwd, &forward);
    let mut claimed = if shadows_frontend::<F>(&rkey) {
        Claim::Taken
    } else {
        claim::<F>(&rkey, &reply_entry(fwd, &forward), fwd, &cfg, now)
    };
    if claimed == Claim::Full {
        return Err(Counter::DropCtInsert);
    }
    if claimed == Claim::Taken {
        let seed = (fwd.saddr.fold()
            ^ fwd.daddr.fold().rotate_left(11)
            ^ (u32::from(fwd.sport) << 16)
            ^ u32::from(fwd.dport)
            ^ now as u32)
            .wrapping_mul(0x9e37_79b1);
        // Every candidate has the same reply entry: it records the client's own port.
        let rev = CtEntryOf {
            alt_port: fwd.sport,
            ..reply_entry(fwd, &forward)
        };
        // Candidates spread evenly over the range from a pseudo-random start: held tuples
        // come in runs (ports handed out in sequence), which neighbouring candidates would
        // all meet.
        let first = (seed >> 8) % ALT_PORT_SPAN;
        for i in 0..ALT_PORT_TRIES {
            let offset = (first + i * ALT_PORT_STRIDE) % ALT_PORT_SPAN;
            rkey.dport = ((ALT_PORT_MIN + offset) as u16).to_be();
            if frontend::reached_without_list::<F>(rkey.daddr, rkey.dport, rkey.proto) {
                continue;
            }
            claimed = if i < ALT_PORT_RECLAIMS {
                claim_free::<F>(&rkey, &rev, now)
            } else {
                insert_reply::<F>(&rkey, &rev).unwrap_or(Claim::Taken)
            };
            if claimed != Claim::Taken {
                break;
            }
        }
        match claimed {
            Claim::Taken => return Err(Counter::DropNoPort),
            Claim::Full => return Err(Counter::DropCtInsert),
            Claim::Mine | Claim::Shared => {}
        }
        forward.alt_port = rkey.dport;
        stats::count(Counter::PortRemapped);
    }
    if F::ct_fwd().update(fwd, &forward, BPF_NOEXIST).is_ok() {
        return Ok(forward);
    }
    // Another CPU created this flow first: follow its entry, and give back the tuple this CPU
    // claimed if the winner uses another one.
    let winner = lookup_or_zero(F::ct_fwd(), fwd);
    if claimed == Claim::Mine && reply_key(fwd, &winner) != rkey {
        F::ct_rev().delete(&rkey);
    }
    if winner.backend_id == 0 {
        return Err(Counter::DropCtInsert);
    }
    stats::count(Counter::CtCreateRaced);
    Ok(winner)
}
