//! Connection tracking: the two entries of a flow, their state bits and timestamps.

use core::sync::atomic::{AtomicU32, Ordering};

use aya_ebpf::helpers::bpf_ktime_get_ns;
use kproxy_common::{
    config::{Config, IPPROTO_TCP},
    ct::{CT_F_FIN_FWD, CT_F_FIN_REV, CT_F_RST, CT_F_SEEN_REPLY, CT_REFRESH_NS, CtEntry, FlowKey},
    stats::Counter,
};

use crate::{
    maps::{KP_CONFIG, KP_CT_FWD, KP_CT_REV},
    parse::{TCP_FIN, TCP_RST},
    stats,
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
        dport: if entry.alt_port != 0 {
            entry.alt_port
        } else {
            fwd.sport
        },
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
        sport: if entry.alt_port != 0 {
            entry.alt_port
        } else {
            rev.dport
        },
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
        alt_port: if entry.alt_port != 0 { fwd.sport } else { 0 },
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

/// Source ports handed out when a client's own is taken towards a backend (Linux's default
/// ephemeral range).
const ALT_PORT_MIN: u32 = 32_768;
const ALT_PORT_SPAN: u32 = 28_232;
const ALT_PORT_TRIES: u32 = 8;

/// Whether the backend-side tuple `rkey` belongs to a live flow other than `fwd`. Two flows
/// from one client port to two VIPs that pick the same backend would otherwise look like one
/// connection to that backend (netfilter remaps the source port in that case as well).
#[inline(always)]
fn tuple_taken(rkey: &FlowKey, fwd: &FlowKey, cfg: &Config, now: u64) -> bool {
    // SAFETY: copied out at once.
    let Some(other) = (unsafe { KP_CT_REV.get(rkey) }).copied() else {
        return false;
    };
    let client_port = if other.alt_port != 0 {
        other.alt_port
    } else {
        rkey.dport
    };
    let same_flow =
        other.nat_addr == fwd.daddr && other.nat_port == fwd.dport && client_port == fwd.sport;
    let finished =
        cfg.expired(fwd.proto, &other, now) || (fwd.proto == IPPROTO_TCP && other.tcp_closing());
    !finished && !same_flow
}

/// Creates both entries of a new flow from `fwd` (client→VIP) to backend `addr:port`.
/// Returns the source port the flow uses towards the backend if it had to change it.
#[inline(always)]
pub fn create(
    fwd: &FlowKey,
    backend_id: u32,
    svc_id: u32,
    addr: u32,
    port: u16,
    tcp_flags: u8,
    now: u64,
) -> Result<u16, Counter> {
    let mut forward = CtEntry {
        last_seen_ns: now,
        backend_id,
        svc_id,
        nat_addr: addr,
        nat_port: port,
        alt_port: 0,
        flags: state_bits(Dir::Forward, tcp_flags),
        _pad2: 0,
    };
    let cfg = config();
    let mut rkey = reply_key(fwd, &forward);
    if tuple_taken(&rkey, fwd, &cfg, now) {
        let seed = (fwd.saddr
            ^ fwd.daddr.rotate_left(11)
            ^ (u32::from(fwd.sport) << 16)
            ^ u32::from(fwd.dport)
            ^ now as u32)
            .wrapping_mul(0x9e37_79b1);
        let mut chosen = 0u16;
        for i in 0..ALT_PORT_TRIES {
            let candidate = ((ALT_PORT_MIN
                + (seed.wrapping_add(i.wrapping_mul(7_919)) >> 8) % ALT_PORT_SPAN)
                as u16)
                .to_be();
            rkey.dport = candidate;
            if !tuple_taken(&rkey, fwd, &cfg, now) {
                chosen = candidate;
                break;
            }
        }
        if chosen == 0 {
            return Err(Counter::DropNoPort);
        }
        stats::count(Counter::PortRemapped);
        forward.alt_port = chosen;
    }
    KP_CT_REV
        .insert(rkey, reply_entry(fwd, &forward), 0)
        .map_err(|_| Counter::DropCtInsert)?;
    KP_CT_FWD
        .insert(fwd, forward, 0)
        .map_err(|_| Counter::DropCtInsert)?;
    Ok(forward.alt_port)
}
