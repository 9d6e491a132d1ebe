//! Connection tracking: the two entries of a flow, their state bits and timestamps.

use core::sync::atomic::{AtomicU32, Ordering};

use aya_ebpf::helpers::bpf_ktime_get_ns;
use kproxy_common::{
    config::Config,
    ct::{CT_F_FIN_FWD, CT_F_FIN_REV, CT_F_RST, CT_F_SEEN_REPLY, CT_REFRESH_NS, CtEntry, FlowKey},
};

use crate::{
    maps::{KP_CONFIG, KP_CT_FWD, KP_CT_REV},
    parse::{TCP_FIN, TCP_RST},
};

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
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

/// State bits a packet with `tcp_flags` adds to its flow.
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

/// Key of the reply entry of a forward entry (`fwd` is the client→VIP tuple).
#[inline(always)]
pub fn reply_key(fwd: &FlowKey, entry: &CtEntry) -> FlowKey {
    FlowKey {
        saddr: entry.nat_addr,
        daddr: fwd.saddr,
        sport: entry.nat_port,
        dport: fwd.sport,
        proto: fwd.proto,
        _pad: [0; 3],
    }
}

/// Key of the forward entry of a reply entry (`rev` is the backend→client tuple).
#[inline(always)]
pub fn forward_key(rev: &FlowKey, entry: &CtEntry) -> FlowKey {
    FlowKey {
        saddr: rev.daddr,
        daddr: entry.nat_addr,
        sport: rev.dport,
        dport: entry.nat_port,
        proto: rev.proto,
        _pad: [0; 3],
    }
}

/// Sets state bits on a live entry (concurrent CPUs may add bits at the same time).
#[inline(always)]
pub fn add_flags(entry: *mut CtEntry, bits: u32) {
    // SAFETY: `entry` points into a map value that stays valid for this program run; the
    // field is 4-byte aligned.
    unsafe { AtomicU32::from_ptr(&raw mut (*entry).flags).fetch_or(bits, Ordering::Relaxed) };
}

/// Sets `bits` and/or refreshes the other entry of the flow; false if it is gone.
#[inline(always)]
fn touch_peer(peer: Option<*mut CtEntry>, bits: u32, now: u64, refresh: bool) -> bool {
    let Some(p) = peer else {
        return false;
    };
    if bits != 0 {
        add_flags(p, bits);
    }
    if refresh {
        // SAFETY: valid map value pointer; a racing store of a similar time is harmless.
        unsafe { (*p).last_seen_ns = now };
    }
    true
}

/// The reply entry that belongs to forward entry `entry` of `fwd`.
#[inline(always)]
fn reply_entry(fwd: &FlowKey, entry: &CtEntry) -> CtEntry {
    CtEntry {
        nat_addr: fwd.daddr,
        nat_port: fwd.dport,
        ..*entry
    }
}

/// Bookkeeping for a packet of an existing flow: new state bits, and the last-seen time of
/// both entries at most once per `CT_REFRESH_NS`. Returns whether a refresh happened.
#[inline(always)]
pub fn update(
    entry_ptr: *mut CtEntry,
    entry: &CtEntry,
    key: &FlowKey,
    dir: Dir,
    tcp_flags: u8,
    now: u64,
) -> bool {
    let bits = state_bits(dir, tcp_flags) & !entry.flags;
    let refresh = now.saturating_sub(entry.last_seen_ns) > CT_REFRESH_NS;
    if bits == 0 && !refresh {
        return false;
    }
    if bits != 0 {
        add_flags(entry_ptr, bits);
    }
    if refresh {
        // SAFETY: valid map value pointer.
        unsafe { (*entry_ptr).last_seen_ns = now };
    }
    match dir {
        Dir::Forward => {
            let rkey = reply_key(key, entry);
            if !touch_peer(KP_CT_REV.get_ptr_mut(rkey), bits, now, refresh) {
                // The LRU evicted the reply side alone: restore it, or replies would reach
                // the client untranslated.
                let mut reply = reply_entry(key, entry);
                reply.flags |= bits;
                reply.last_seen_ns = now;
                let _ = KP_CT_REV.insert(rkey, reply, 0);
            }
        }
        Dir::Reply => {
            touch_peer(
                KP_CT_FWD.get_ptr_mut(forward_key(key, entry)),
                bits,
                now,
                refresh,
            );
        }
    }
    refresh
}

/// Creates both entries of a new flow from `fwd` (client→VIP) to backend `addr:port`.
#[inline(always)]
pub fn create(
    fwd: &FlowKey,
    backend_id: u32,
    svc_id: u32,
    addr: u32,
    port: u16,
    tcp_flags: u8,
    now: u64,
) -> Result<(), ()> {
    let flags = state_bits(Dir::Forward, tcp_flags);
    let forward = CtEntry {
        last_seen_ns: now,
        backend_id,
        svc_id,
        nat_addr: addr,
        nat_port: port,
        _pad: 0,
        flags,
        _pad2: 0,
    };
    KP_CT_REV
        .insert(reply_key(fwd, &forward), reply_entry(fwd, &forward), 0)
        .map_err(|_| ())?;
    KP_CT_FWD.insert(fwd, forward, 0).map_err(|_| ())
}
