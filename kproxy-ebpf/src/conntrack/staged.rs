//! [`create`](super::create) and the reply-side check of [`existing`](super::existing) for a
//! staged family (IPv6): the same steps, with the entries and keys in per-CPU scratch memory
//! instead of the stack. With IPv6's 40-byte keys
//! and 56-byte entries, the stack copies and the spills around every helper call took more
//! than the 512 bytes a program has; IPv4 keeps the plain shape, which the verifier walks
//! in a fraction of the instructions this one costs it.
//!
//! Everything here is reached through raw pointers, each read where it is used: as
//! references, LLVM may read all their fields once, up front, and keep them across every
//! helper call, which BPF's few callee-saved registers turn into spills.

use aya_ebpf::bindings::{BPF_EXIST, BPF_NOEXIST};
use kproxy_common::{
    addr::IpAddress,
    config::{Config, IPPROTO_TCP},
    ct::{CtEntryOf, FlowState, holds, is_reply_of, reply_entry, reply_key},
    stats::Counter,
};

use super::{
    ALT_PORT_MIN, ALT_PORT_RECLAIMS, ALT_PORT_SPAN, ALT_PORT_STRIDE, ALT_PORT_TRIES, Claim, CtMap,
    Dir, NewFlow, finished, insert_reply, insert_rev, release, remove_stale, shadows_frontend,
    state_bits, tcp_closed,
};
use crate::{
    family::{CtEntryF, Family, FlowKeyF},
    frontend,
    maps::KP_CONFIG,
    scratch::CtScratch,
    stats,
};

/// [`super::create`] with its entries in `ct`: the forward entry in effect is left in
/// `ct.forward`.
///
/// # Safety
/// `ct` is this CPU's `CtScratch` (nothing else uses it while this runs); `fwd` and `new`
/// are valid for the call and do not point into it.
#[inline(always)]
pub unsafe fn create<F: Family>(
    fwd: *const FlowKeyF<F>,
    new: *const NewFlow<F::Addr>,
    tcp_flags: u8,
    now: u64,
    ct: *mut CtScratch<F::Addr>,
) -> Result<(), Counter> {
    // SAFETY (whole body): the caller's promise.
    unsafe {
        let forward = &raw mut (*ct).forward;
        let rev = &raw mut (*ct).rev;
        let rkey = &raw mut (*ct).rkey;
        *forward = CtEntryOf {
            last_seen_ns: now,
            backend_id: (*new).backend_id,
            svc_id: (*new).svc_id,
            nat_addr: (*new).addr,
            nat_port: (*new).port,
            alt_port: 0,
            flags: state_bits(Dir::Forward, tcp_flags),
            alt_addr: (*new).masq_addr,
        };
        *rkey = reply_key(&*fwd, &*forward);
        *rev = reply_entry(&*fwd, &*forward);
        let mut claimed = if shadows_frontend::<F>(&*rkey) {
            Claim::Taken
        } else {
            claim_own::<F>(rkey, rev, fwd, config_in(ct), now)
        };
        if claimed == Claim::Full {
            return Err(Counter::DropCtInsert);
        }
        if claimed == Claim::Taken {
            claimed = claim_alternative::<F>(fwd, rkey, rev, now);
            match claimed {
                Claim::Taken => return Err(Counter::DropNoPort),
                Claim::Full => return Err(Counter::DropCtInsert),
                Claim::Mine | Claim::Shared => {}
            }
            (*forward).alt_port = (*rkey).dport;
            stats::count(Counter::PortRemapped);
        }
        if F::ct_fwd().update(&*fwd, &*forward, BPF_NOEXIST).is_ok() {
            return Ok(());
        }
        // Another CPU created this flow first: follow its entry, and give back the tuple
        // this CPU claimed if the winner uses another one.
        let winner = forward;
        if !F::ct_fwd().lookup_into(&*fwd, &mut *winner) {
            *winner = CtEntryOf::ZERO;
        }
        if claimed == Claim::Mine && !holds(&*fwd, &*winner, &*rkey) {
            F::ct_rev().delete(&*rkey);
        }
        if (*winner).backend_id == 0 {
            return Err(Counter::DropCtInsert);
        }
        stats::count(Counter::CtCreateRaced);
        Ok(())
    }
}

/// The agent's settings where they already are in memory (its element), or else the
/// defaults written into `ct`: no copy on the stack.
///
/// # Safety
/// As [`create`]'s.
#[inline(always)]
unsafe fn config_in<A>(ct: *mut CtScratch<A>) -> *const Config {
    match KP_CONFIG.get_ptr(0) {
        // SAFETY: a map element, read at once.
        Some(c) if unsafe { (*c).initialized } != 0 => c,
        _ => {
            // SAFETY: the caller's promise.
            unsafe {
                (*ct).config = Config::DEFAULT;
                &raw const (*ct).config
            }
        }
    }
}

/// [`super::claim`] as a BPF function of its own, its places in `CtScratch`.
#[inline(never)]
fn claim_own<F: Family>(
    rkey: *const FlowKeyF<F>,
    rev: *const CtEntryF<F>,
    fwd: *const FlowKeyF<F>,
    cfg: *const Config,
    now: u64,
) -> Claim {
    let Some(state) = F::stage_state() else {
        return Claim::Taken;
    };
    // SAFETY: this function's own fields of this CPU's scratch memory (see `CtScratch`);
    // the caller's pointers are valid for the call.
    unsafe {
        let ct = &raw mut (*state).ct;
        let (other, other_key, other_fwd) = (
            &raw mut (*ct).other,
            &raw mut (*ct).other_key,
            &raw mut (*ct).other_fwd,
        );
        for _ in 0..2 {
            if let Some(done) = insert_reply::<F>(&*rkey, &*rev) {
                return done;
            }
            if !F::ct_rev().lookup_into(&*rkey, &mut *other) {
                continue; // deleted meanwhile: try again
            }
            if is_reply_of(&*rkey, &*other, &*fwd) {
                // This flow's own entry (see `super::claim`): written afresh.
                let _ = F::ct_rev().update(&*rkey, &*rev, BPF_EXIST);
                return Claim::Shared;
            }
            holding_flow::<F>(rkey, other, other_key, other_fwd);
            if !finished(&*rkey, &*other, &*other_fwd, &*cfg, now) {
                return Claim::Taken;
            }
            release::<F>(&*rkey, &*other_key, &*other_fwd);
        }
    }
    Claim::Taken
}

/// Fills in the forward key of reply entry `other` at `rkey`, and that key's forward entry
/// if it is `other`'s flow (see `holder`), else `CtEntry::ZERO`.
///
/// # Safety
/// All four valid, the last two writable and distinct from the others.
#[inline(always)]
unsafe fn holding_flow<F: Family>(
    rkey: *const FlowKeyF<F>,
    other: *const CtEntryF<F>,
    other_key: *mut FlowKeyF<F>,
    other_fwd: *mut CtEntryF<F>,
) {
    // SAFETY: the caller's promise.
    unsafe {
        *other_key = kproxy_common::ct::forward_key(&*rkey, &*other);
        if !F::ct_fwd().lookup_into(&*other_key, &mut *other_fwd)
            || !holds(&*other_key, &*other_fwd, &*rkey)
        {
            *other_fwd = CtEntryOf::ZERO;
        }
    }
}

/// The alternative-port search of [`super::create`]: claims another backend-side tuple
/// for the flow of `fwd` than its own, `rkey`, whose port it changes to the one claimed;
/// `rev` is the reply entry to insert.
///
/// # Safety
/// As [`create`]'s: pointers into this CPU's scratch memory and the caller's key.
#[inline(always)]
unsafe fn claim_alternative<F: Family>(
    fwd: *const FlowKeyF<F>,
    rkey: *mut FlowKeyF<F>,
    rev: *mut CtEntryF<F>,
    now: u64,
) -> Claim {
    // SAFETY (whole body): the caller's promise.
    unsafe {
        let seed = ((*fwd).saddr.fold()
            ^ (*fwd).daddr.fold().rotate_left(11)
            ^ (u32::from((*fwd).sport) << 16)
            ^ u32::from((*fwd).dport)
            ^ now as u32)
            .wrapping_mul(0x9e37_79b1);
        // Every candidate has the same reply entry: it records the client's own port.
        (*rev).alt_port = (*fwd).sport;
        let first = (seed >> 8) % ALT_PORT_SPAN;
        let mut claimed = Claim::Taken;
        for i in 0..ALT_PORT_TRIES {
            let offset = (first + i * ALT_PORT_STRIDE) % ALT_PORT_SPAN;
            (*rkey).dport = ((ALT_PORT_MIN + offset) as u16).to_be();
            if frontend::reached_without_list::<F>((*rkey).daddr, (*rkey).dport, (*rkey).proto) {
                continue;
            }
            claimed = if i < ALT_PORT_RECLAIMS {
                claim_free::<F>(rkey, rev, now)
            } else {
                insert_reply::<F>(&*rkey, &*rev).unwrap_or(Claim::Taken)
            };
            if claimed != Claim::Taken {
                break;
            }
        }
        claimed
    }
}

/// [`super::claim_free`] as a BPF function of its own (inlined, each of the unrolled tries
/// kept its own spill slots), its places in `CtScratch`.
#[inline(never)]
fn claim_free<F: Family>(rkey: *const FlowKeyF<F>, rev: *const CtEntryF<F>, now: u64) -> Claim {
    // SAFETY: the caller's pointers are valid for the call; the scratch fields are this
    // function's own (see `CtScratch`).
    unsafe {
        if let Some(done) = insert_reply::<F>(&*rkey, &*rev) {
            return done;
        }
        if (*rkey).proto != IPPROTO_TCP {
            return Claim::Taken;
        }
        let Some(state) = F::stage_state() else {
            return Claim::Taken;
        };
        let ct = &raw mut (*state).ct;
        let (other, other_key, other_fwd) = (
            &raw mut (*ct).other,
            &raw mut (*ct).other_key,
            &raw mut (*ct).other_fwd,
        );
        if !F::ct_rev().lookup_into(&*rkey, &mut *other) {
            return Claim::Taken;
        }
        holding_flow::<F>(rkey, other, other_key, other_fwd);
        if !tcp_closed(&FlowState::of(&*other, &*other_fwd), now) {
            return Claim::Taken;
        }
        release::<F>(&*rkey, &*other_key, &*other_fwd);
        insert_reply::<F>(&*rkey, &*rev).unwrap_or(Claim::Taken)
    }
}

/// The reply-side half of [`super::existing`] (the flow of forward entry `entry` at `fwd` is
/// not plainly fresh): its reply key and entry in this CPU's conntrack scratch (the `Flow`
/// stage creates nothing, so it is free).
#[inline(always)]
pub fn existing_reply_side<F: Family>(
    fwd: &FlowKeyF<F>,
    entry: &CtEntryF<F>,
    state: &mut FlowState,
) -> bool {
    let Some(shared) = F::stage_state() else {
        return false;
    };
    // SAFETY: this CPU's stage state; the caller's references point outside its `ct`.
    unsafe {
        let ct = &raw mut (*shared).ct;
        let (rkey, rev) = (&raw mut (*ct).rkey, &raw mut (*ct).rev);
        *rkey = reply_key(fwd, entry);
        if !F::ct_rev().lookup_into(&*rkey, &mut *rev) || !is_reply_of(&*rkey, &*rev, fwd) {
            *rev = CtEntryOf::ZERO;
            let restored = &raw mut (*ct).forward;
            *restored = reply_entry(fwd, entry);
            let key: &FlowKeyF<F> = &*rkey;
            if insert_rev::<F>(key, &*restored).is_ok() {
                stats::count(Counter::CtReplyRestored);
            } else if !F::ct_rev()
                .get_ptr(key)
                .is_some_and(|now_there| is_reply_of(key, &*now_there, fwd))
            {
                // Not rebuilt by another CPU handling this flow at the same moment either.
                remove_stale::<F>(fwd, entry);
                return false;
            }
        }
        *state = FlowState::of(entry, &*rev);
    }
    true
}
