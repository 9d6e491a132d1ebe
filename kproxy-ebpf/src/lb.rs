//! Service load balancing: frontend lookup, backend choice (affinity, round-robin), DNAT of
//! client packets and reverse NAT of backend replies.

use core::sync::atomic::{AtomicU64, Ordering};

use kproxy_common::{
    config::IPPROTO_UDP,
    ct::{AffinityKey, AffinityValue, FragKey, FragPorts},
    lb::{Backend, SVC_F_AFFINITY, SVC_F_DROP_EMPTY, ServiceKey, ServiceValue, SlotKey},
    stats::Counter,
};

use crate::{
    conntrack::{self, Dir},
    icmp::{self, REJECT_FRAME_LEN},
    maps::{
        KP_AFFINITY, KP_BACKENDS, KP_CT_FWD, KP_CT_REV, KP_FRAGS, KP_RR, KP_SERVICES, KP_SLOTS,
    },
    packet::{NatRewrite, Packet, Side},
    parse::{self, Fragment, Ipv4Flow, Parsed},
    stats,
};

/// What the program does with a packet.
pub enum Action {
    /// Not service traffic: untouched.
    Pass,
    /// Destination translated to a backend: `(saddr, daddr)` of the packet now.
    Dnat(u32, u32),
    /// A backend's reply with the VIP restored as its source.
    ReverseNat,
    /// Replaced by an ICMP reject that goes back out where the packet came in.
    Rejected,
    /// Dropped for the counted reason.
    Drop,
}

const NS_PER_SEC: u64 = 1_000_000_000;

/// Entry point of the service logic for one packet.
#[inline(always)]
pub fn handle<P: Packet>(pkt: &mut P) -> Action {
    stats::count(Counter::Packets);
    let mut flow = match parse::parse(pkt) {
        Parsed::Ipv4(flow) => flow,
        Parsed::Other | Parsed::Truncated => return Action::Pass,
    };
    if !track_fragment(&mut flow) {
        return Action::Pass;
    }
    let svc_key = ServiceKey {
        addr: flow.key.daddr,
        port: flow.key.dport,
        proto: flow.key.proto,
        _pad: 0,
    };
    // SAFETY: the value is copied out at once; NO_PREALLOC keeps it intact until then.
    match unsafe { KP_SERVICES.get(svc_key) } {
        Some(svc) => {
            let svc = *svc;
            match to_service(pkt, &flow, &svc) {
                Ok(action) => action,
                Err(reason) => {
                    stats::count(reason);
                    Action::Drop
                }
            }
        }
        None => from_backend(pkt, &flow),
    }
}

/// Fills in the ports of a later fragment from its first fragment, and records the ports of a
/// first fragment. False when a later fragment's ports are unknown (it passes untouched).
#[inline(always)]
fn track_fragment(flow: &mut Ipv4Flow) -> bool {
    if flow.fragment == Fragment::None {
        return true;
    }
    let key = FragKey {
        saddr: flow.key.saddr,
        daddr: flow.key.daddr,
        id: flow.ip_id,
        proto: flow.key.proto,
        _pad: 0,
    };
    if flow.fragment == Fragment::First {
        let ports = FragPorts {
            sport: flow.key.sport,
            dport: flow.key.dport,
        };
        let _ = KP_FRAGS.insert(key, ports, 0);
        return true;
    }
    // SAFETY: copied out at once.
    match unsafe { KP_FRAGS.get(key) } {
        Some(ports) => {
            flow.key.sport = ports.sport;
            flow.key.dport = ports.dport;
            true
        }
        None => false,
    }
}

/// A packet addressed to a service frontend: find or create its flow, then DNAT.
#[inline(always)]
fn to_service<P: Packet>(
    pkt: &mut P,
    flow: &Ipv4Flow,
    svc: &ServiceValue,
) -> Result<Action, Counter> {
    let now = conntrack::now_ns();
    let (backend, alt_port) = match established_backend(flow, svc, now) {
        Some(found) => found,
        None => {
            if !flow.has_l4_header() {
                return Err(Counter::DropFragment);
            }
            if svc.count == 0 {
                stats::count_refused(svc.id);
                if svc.flags & SVC_F_DROP_EMPTY != 0 {
                    return Err(Counter::DropNoLocalEndpoint);
                }
                return reject(pkt, flow);
            }
            let (id, backend) = select_backend(svc, flow.key.saddr, now)?;
            let alt_port = conntrack::create(
                &flow.key,
                id,
                svc.id,
                backend.addr,
                backend.port,
                flow.tcp_flags,
                now,
            )?;
            stats::count_new_flow(svc.id, id);
            (backend, alt_port)
        }
    };
    pkt.rewrite(&NatRewrite {
        side: Side::Destination,
        old_addr: flow.key.daddr,
        new_addr: backend.addr,
        old_port: flow.key.dport,
        new_port: backend.port,
        peer_port: (alt_port != 0).then_some((flow.key.sport, alt_port)),
        l4_off: flow.has_l4_header().then_some(flow.l4_off),
        udp: flow.key.proto == IPPROTO_UDP,
    })
    .map_err(|()| Counter::DropNat)?;
    stats::count(Counter::ServicePackets);
    stats::count_service_packet(svc.id, pkt.len());
    Ok(Action::Dnat(flow.key.saddr, backend.addr))
}

/// The backend of the flow `flow` belongs to (and the source port it uses there if it had
/// to change it), if the flow is live and its backend still belongs to the service. Updates
/// the flow's state and times.
#[inline(always)]
fn established_backend(flow: &Ipv4Flow, svc: &ServiceValue, now: u64) -> Option<(Backend, u16)> {
    let entry_ptr = KP_CT_FWD.get_ptr_mut(flow.key)?;
    // SAFETY: valid map value; copied so later reads see one consistent snapshot.
    let entry = unsafe { *entry_ptr };
    if flow.is_tcp() && flow.is_syn() && entry.tcp_closing() {
        // The client reuses the port of a finished connection: a new flow.
        stats::count(Counter::CtReopened);
        return None;
    }
    if conntrack::config().expired(flow.key.proto, &entry, now) {
        return None;
    }
    // SAFETY: copied out at once.
    let backend = unsafe { *KP_BACKENDS.get(entry.backend_id)? };
    let refreshed = conntrack::update(
        entry_ptr,
        &entry,
        &flow.key,
        Dir::Forward,
        flow.tcp_flags,
        now,
    );
    if refreshed && svc.flags & SVC_F_AFFINITY != 0 {
        // Traffic keeps the client's affinity alive, not only new connections.
        let key = AffinityKey {
            svc_id: svc.id,
            client: flow.key.saddr,
        };
        if let Some(a) = KP_AFFINITY.get_ptr_mut(key) {
            // SAFETY: valid map value pointer.
            unsafe { (*a).last_seen_ns = now };
        }
    }
    Some((backend, entry.alt_port))
}

/// Chooses the backend of a new flow from client `client`: its ClientIP affinity if that is
/// still valid, otherwise the next one round-robin.
#[inline(always)]
fn select_backend(svc: &ServiceValue, client: u32, now: u64) -> Result<(u32, Backend), Counter> {
    let affinity = svc.flags & SVC_F_AFFINITY != 0;
    let akey = AffinityKey {
        svc_id: svc.id,
        client,
    };
    if affinity {
        // SAFETY: copied out at once.
        if let Some(a) = unsafe { KP_AFFINITY.get(akey) }.copied() {
            let timeout = u64::from(svc.affinity_timeout_s) * NS_PER_SEC;
            if now.saturating_sub(a.last_seen_ns) <= timeout {
                // SAFETY: copied out at once.
                if let Some(b) = unsafe { KP_BACKENDS.get(a.backend_id) }.copied() {
                    stats::count(Counter::AffinityHits);
                    remember_affinity(&akey, a.backend_id, now);
                    return Ok((a.backend_id, b));
                }
            }
        }
    }
    let rr = KP_RR.get_ptr_mut(svc.id).ok_or(Counter::DropNoSlot)?;
    // SeqCst, not Relaxed: LLVM's BPF backend lowers a *monotonic* atomicrmw add to the
    // non-fetching `lock +=` even when the old value is used, which silently returns garbage.
    // SAFETY: an Array element is 8-byte aligned and lives as long as the map.
    let turn = unsafe { AtomicU64::from_ptr(rr) }.fetch_add(1, Ordering::SeqCst);
    let index = (turn % u64::from(svc.count)) as u32;
    // SAFETY: copied out at once.
    let id = unsafe { KP_SLOTS.get(SlotKey::new(svc.id, svc.bank, index)) }
        .copied()
        .ok_or(Counter::DropNoSlot)?;
    // SAFETY: copied out at once.
    let backend = unsafe { KP_BACKENDS.get(id) }
        .copied()
        .ok_or(Counter::DropNoBackend)?;
    if affinity {
        remember_affinity(&akey, id, now);
    }
    Ok((id, backend))
}

#[inline(always)]
fn remember_affinity(key: &AffinityKey, backend_id: u32, now: u64) {
    let value = AffinityValue {
        last_seen_ns: now,
        backend_id,
        _pad: 0,
    };
    let _ = KP_AFFINITY.insert(key, value, 0);
}

/// No endpoints: answer with ICMP port unreachable, as kube-proxy's REJECT rule does.
#[inline(always)]
fn reject<P: Packet>(pkt: &mut P, flow: &Ipv4Flow) -> Result<Action, Counter> {
    let frame: [u8; REJECT_FRAME_LEN] =
        icmp::port_unreachable(pkt, &flow.key, flow.l4_off).ok_or(Counter::DropReject)?;
    pkt.send_back(&frame).map_err(|()| Counter::DropReject)?;
    stats::count(Counter::Rejected);
    Ok(Action::Rejected)
}

/// A packet not addressed to a service: a backend's reply to translate back, or not ours.
#[inline(always)]
fn from_backend<P: Packet>(pkt: &mut P, flow: &Ipv4Flow) -> Action {
    let Some(entry_ptr) = KP_CT_REV.get_ptr_mut(flow.key) else {
        return Action::Pass;
    };
    // SAFETY: valid map value, copied.
    let entry = unsafe { *entry_ptr };
    let now = conntrack::now_ns();
    if conntrack::config().expired(flow.key.proto, &entry, now) {
        return Action::Pass;
    }
    conntrack::update(
        entry_ptr,
        &entry,
        &flow.key,
        Dir::Reply,
        flow.tcp_flags,
        now,
    );
    let rewrite = NatRewrite {
        side: Side::Source,
        old_addr: flow.key.saddr,
        new_addr: entry.nat_addr,
        old_port: flow.key.sport,
        new_port: entry.nat_port,
        peer_port: (entry.alt_port != 0).then_some((flow.key.dport, entry.alt_port)),
        l4_off: flow.has_l4_header().then_some(flow.l4_off),
        udp: flow.key.proto == IPPROTO_UDP,
    };
    if pkt.rewrite(&rewrite).is_err() {
        stats::count(Counter::DropNat);
        return Action::Drop;
    }
    stats::count(Counter::ReplyPackets);
    Action::ReverseNat
}
