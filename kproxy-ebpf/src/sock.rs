//! Socket-level load balancing (cgroup `connect`, `sendmsg`, `recvmsg`, `getpeername`
//! hooks): a connect (TCP or UDP) or an unconnected UDP datagram to a service frontend is
//! pointed at its backend once, at the socket, so its packets are never translated and need
//! no conntrack entry. getpeername and received datagrams show the application the frontend,
//! as behind NAT.
//!
//! The backend is chosen by the packet path's own decision (`policy::serve`, `lb::refusal`,
//! `lb::select_backend`), with the socket's network namespace as the affinity owner. What a
//! socket cannot decide alike is left untouched to the packet path, counted: frontends with
//! loadBalancerSourceRanges (the source address is not known at connect time), frontends
//! without endpoints (the packet path's reject or drop is what the client must see), and,
//! with `--socket-lb host-only`, sockets of pods.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_EXIST, bpf_sock, bpf_sock_addr},
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    maps::LruHashMap,
    programs::{SockAddrContext, SockContext},
};
use kproxy_common::{
    addr::In6Addr,
    config::{IPPROTO_TCP, IPPROTO_UDP},
    ct::{AffinityValue, CT_REFRESH_NS},
    lb::{BackendOf, SVC_F_SOURCE_RANGES, ServiceKeyOf, ServiceValue},
    sock::{
        SOCK_FLOW_F_REPLIED, SockAffinityKey, SockFlow, SockFlowKeyOf, SockRevKeyOf, SockRevOf,
        cookie_words,
    },
    stats::Counter,
};

use crate::{
    conntrack,
    family::{Family, V4, V6},
    filter, frontend,
    lb::{self, AffinityOwner},
    maps::{
        KP_SOCK_AFFINITY, KP_SOCK_FLOWS, KP_SOCK_FLOWS6, KP_SOCK_REV, KP_SOCK_REV6, KP_SOCK_UDP,
        KP_SOCK_UDP6,
    },
    policy, stats,
};

/// Load-time constant (`names::GLOBAL_HOST_NETNS`): the cookie of the network namespace the
/// agent runs in, the node's. The agent writes it into the object before loading it, so the
/// kernel's verifier sees it as a constant.
#[unsafe(no_mangle)]
static KP_HOST_NETNS: u64 = 0;

/// Load-time constant (`names::GLOBAL_SOCK_LB_PODS`): non-zero when sockets of every network
/// namespace are served (`--socket-lb all`), zero when only the node's are (`host-only`).
#[unsafe(no_mangle)]
static KP_SOCK_LB_PODS: u32 = 0;

/// What a hook needs of its family beyond the packet path's.
pub trait SockFamily: Family {
    fn rev() -> &'static LruHashMap<SockRevKeyOf<Self::Addr>, SockRevOf<Self::Addr>>;
    fn flows() -> &'static LruHashMap<SockFlowKeyOf<Self::Addr>, SockFlow>;
    fn udp_connected() -> &'static LruHashMap<SockRevKeyOf<Self::Addr>, u32>;
}

/// Where a hook's context holds the address the application gave, and its family: IPv4
/// (`user_ip4`), IPv6 (`user_ip6`), or IPv4 mapped into IPv6 (`::ffff:a.b.c.d` in
/// `user_ip6`, a dual-stack socket reaching an IPv4 address), which is served as IPv4.
pub trait UserAddr {
    type F: SockFamily;
    /// The address and port (network byte order).
    fn get(sa: *const bpf_sock_addr) -> (<Self::F as Family>::Addr, u16);
    /// Replaces them.
    fn set(sa: *mut bpf_sock_addr, addr: <Self::F as Family>::Addr, port: u16);
}

pub struct Ip4;
pub struct Ip6;
pub struct Mapped4;

/// The third word of an IPv4-mapped IPv6 address (`::ffff:0:0/96`), as it lies in memory.
const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// One word of `user_ip6`, read with a 4-byte access (the kernel checks the size of every
/// context access).
#[inline(always)]
fn user_ip6_word(sa: *const bpf_sock_addr, i: usize) -> u32 {
    // SAFETY: the context the kernel passed; a 4-byte read of a readable field.
    unsafe { core::ptr::read_volatile(&raw const (*sa).user_ip6[i]) }
}

#[inline(always)]
fn set_user_ip6(sa: *mut bpf_sock_addr, words: [u32; 4]) {
    let mut i = 0;
    while i < 4 {
        // SAFETY: the context the kernel passed; a 4-byte write of a writable field.
        unsafe { core::ptr::write_volatile(&raw mut (*sa).user_ip6[i], words[i]) };
        i += 1;
    }
}

/// Whether an IPv6 hook's address is an IPv4-mapped one.
#[inline(always)]
pub fn is_v4_mapped(ctx: &SockAddrContext) -> bool {
    let sa = ctx.sock_addr;
    user_ip6_word(sa, 0) == 0 && user_ip6_word(sa, 1) == 0 && user_ip6_word(sa, 2) == V4_MAPPED_WORD
}

impl UserAddr for Ip4 {
    type F = V4;
    #[inline(always)]
    fn get(sa: *const bpf_sock_addr) -> (u32, u16) {
        // SAFETY: as `user_port`.
        let addr = unsafe { core::ptr::read_volatile(&raw const (*sa).user_ip4) };
        (addr, user_port(sa))
    }
    #[inline(always)]
    fn set(sa: *mut bpf_sock_addr, addr: u32, port: u16) {
        // SAFETY: as `set_user_port`.
        unsafe { core::ptr::write_volatile(&raw mut (*sa).user_ip4, addr) };
        set_user_port(sa, port);
    }
}

impl UserAddr for Ip6 {
    type F = V6;
    #[inline(always)]
    fn get(sa: *const bpf_sock_addr) -> (In6Addr, u16) {
        let word = |i| user_ip6_word(sa, i);
        (In6Addr([word(0), word(1), word(2), word(3)]), user_port(sa))
    }
    #[inline(always)]
    fn set(sa: *mut bpf_sock_addr, addr: In6Addr, port: u16) {
        set_user_ip6(sa, addr.0);
        set_user_port(sa, port);
    }
}

impl UserAddr for Mapped4 {
    type F = V4;
    #[inline(always)]
    fn get(sa: *const bpf_sock_addr) -> (u32, u16) {
        (user_ip6_word(sa, 3), user_port(sa))
    }
    #[inline(always)]
    fn set(sa: *mut bpf_sock_addr, addr: u32, port: u16) {
        set_user_ip6(sa, [0, 0, V4_MAPPED_WORD, addr]);
        set_user_port(sa, port);
    }
}

/// `user_port` holds the port in network byte order in its first two bytes.
#[inline(always)]
fn user_port(sa: *const bpf_sock_addr) -> u16 {
    // SAFETY: the context the kernel passed; a 4-byte read of a readable field.
    unsafe { core::ptr::read_volatile(&raw const (*sa).user_port) as u16 }
}

#[inline(always)]
fn set_user_port(sa: *mut bpf_sock_addr, port: u16) {
    // SAFETY: the context the kernel passed; a 4-byte write of a writable field.
    unsafe { core::ptr::write_volatile(&raw mut (*sa).user_port, u32::from(port)) };
}

impl SockFamily for V4 {
    #[inline(always)]
    fn rev() -> &'static LruHashMap<SockRevKeyOf<u32>, SockRevOf<u32>> {
        &KP_SOCK_REV
    }
    #[inline(always)]
    fn flows() -> &'static LruHashMap<SockFlowKeyOf<u32>, SockFlow> {
        &KP_SOCK_FLOWS
    }
    #[inline(always)]
    fn udp_connected() -> &'static LruHashMap<SockRevKeyOf<u32>, u32> {
        &KP_SOCK_UDP
    }
}

impl SockFamily for V6 {
    #[inline(always)]
    fn rev() -> &'static LruHashMap<SockRevKeyOf<In6Addr>, SockRevOf<In6Addr>> {
        &KP_SOCK_REV6
    }
    #[inline(always)]
    fn flows() -> &'static LruHashMap<SockFlowKeyOf<In6Addr>, SockFlow> {
        &KP_SOCK_FLOWS6
    }
    #[inline(always)]
    fn udp_connected() -> &'static LruHashMap<SockRevKeyOf<In6Addr>, u32> {
        &KP_SOCK_UDP6
    }
}

/// A socket's network namespace as the owner of its ClientIP affinities.
struct Netns(u64);

impl AffinityOwner for Netns {
    #[inline(always)]
    fn affinity(&self, svc_id: u32) -> Option<AffinityValue> {
        // SAFETY: copied out at once.
        unsafe { KP_SOCK_AFFINITY.get(affinity_key(svc_id, self.0)) }.copied()
    }

    #[inline(always)]
    fn remember(&self, svc_id: u32, backend_id: u32, now: u64) {
        let value = lb::affinity_value(backend_id, now);
        let _ = KP_SOCK_AFFINITY.insert(affinity_key(svc_id, self.0), value, 0);
    }
}

#[inline(always)]
fn affinity_key(svc_id: u32, netns_cookie: u64) -> SockAffinityKey {
    SockAffinityKey {
        svc_id,
        _pad: 0,
        netns_cookie,
    }
}

/// The socket behind the hook's context.
struct Sock {
    sa: *mut bpf_sock_addr,
    cookie: [u32; 2],
    proto: u8,
}

impl Sock {
    #[inline(always)]
    fn of(ctx: &SockAddrContext) -> Self {
        let sa = ctx.sock_addr;
        // SAFETY: the context the kernel passed; helpers this program type may call.
        let (cookie, proto) = unsafe {
            (
                bpf_get_socket_cookie(ctx.as_ptr()),
                core::ptr::read_volatile(&raw const (*sa).protocol) as u8,
            )
        };
        Self {
            sa,
            cookie: cookie_words(cookie),
            proto,
        }
    }

    /// The key of this socket's reverse entry for backend `addr:port`.
    #[inline(always)]
    fn rev_key<A: Copy>(&self, addr: A, port: u16) -> SockRevKeyOf<A> {
        SockRevKeyOf {
            addr,
            port,
            _pad: 0,
            cookie: self.cookie,
        }
    }
}

/// A frontend found for a socket: its key and value.
type Found<F> = (ServiceKeyOf<<F as Family>::Addr>, ServiceValue);

/// The client a socket of `ctx` is, as the traffic policies see it, with its namespace;
/// `None` when its namespace is a pod's and only the node's are served.
#[inline(always)]
fn client_of(ctx: &SockAddrContext) -> Option<(policy::Client, u64)> {
    // SAFETY: a helper this program type may call.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // SAFETY: globals the agent sets before loading (read volatile, so the compiler does
    // not fold the zero of the source; the verifier knows the value it was given).
    let (host, pods) = unsafe {
        (
            core::ptr::read_volatile(&raw const KP_HOST_NETNS),
            core::ptr::read_volatile(&raw const KP_SOCK_LB_PODS),
        )
    };
    let node = netns == host;
    if !node && pods == 0 {
        return None;
    }
    // Every namespace but the node's is a pod's: local-traffic detection would say so.
    Some((policy::Client { node, pod: !node }, netns))
}

/// The backend of a new flow of `client` (namespace `netns`) to the frontend `found`, by the
/// packet path's decision; the counter of why it is left to the packet path otherwise.
#[inline(always)]
fn choose<F: Family>(
    (key, svc): &Found<F>,
    client: policy::Client,
    netns: u64,
    now: u64,
) -> Result<(u32, ServiceValue, BackendOf<F::Addr>), Counter> {
    if svc.flags & SVC_F_SOURCE_RANGES != 0 {
        return Err(Counter::SockLeftSourceRanges);
    }
    let mut svc = *svc;
    policy::serve::<F>(key, &mut svc, client, &conntrack::config());
    if lb::refusal(&svc).is_some() {
        return Err(Counter::SockLeftNoEndpoints);
    }
    let (id, backend) = lb::select_backend::<F, _>(&svc, &Netns(netns), now, None)
        .map_err(|_| Counter::SockLeftError)?;
    Ok((id, svc, backend))
}

/// Points the socket at `backend` in place of the frontend `addr:port` it addressed, and
/// remembers the frontend for getpeername and replies. Nothing changes if it cannot be
/// remembered.
#[inline(always)]
fn point_at<U: UserAddr>(
    sock: &Sock,
    (addr, port): (<U::F as Family>::Addr, u16),
    svc_id: u32,
    backend: &BackendOf<<U::F as Family>::Addr>,
) -> Result<(), Counter> {
    let frontend = SockRevOf {
        addr,
        port,
        _pad: 0,
        svc_id,
    };
    U::F::rev()
        .insert(sock.rev_key(backend.addr, backend.port), frontend, 0)
        .map_err(|_| Counter::SockLeftError)?;
    U::set(sock.sa, backend.addr, backend.port);
    Ok(())
}

/// `connect` of a TCP or UDP socket.
#[inline(always)]
pub fn connect<U: UserAddr>(ctx: &SockAddrContext) {
    let sock = Sock::of(ctx);
    if sock.proto != IPPROTO_TCP && sock.proto != IPPROTO_UDP {
        return;
    }
    let dest = U::get(sock.sa);
    let Some(found) = frontend::find::<U::F>(dest.0, dest.1, sock.proto) else {
        return;
    };
    let Some((client, netns)) = client_of(ctx) else {
        stats::count(Counter::SockLeftPod);
        return;
    };
    let now = conntrack::now_ns();
    let served = choose::<U::F>(&found, client, netns, now).and_then(|(id, svc, backend)| {
        point_at::<U>(&sock, dest, svc.id, &backend).map(|()| (id, svc, backend))
    });
    match served {
        Ok((backend_id, svc, backend)) => {
            if sock.proto == IPPROTO_UDP {
                // Found by the agent if the backend stops taking connections: a connected
                // UDP socket keeps it for life otherwise. Lost (evicted) only under
                // pressure, when the socket then keeps its backend as a TCP one would.
                let key = sock.rev_key(backend.addr, backend.port);
                let _ = U::F::udp_connected().insert(key, backend_id, 0);
            }
            stats::count_new_flow(svc.id, backend_id);
            stats::count(Counter::SockConnects);
        }
        Err(why) => stats::count(why),
    }
}

/// `sendmsg` of an unconnected UDP socket: each datagram to a frontend goes to its flow's
/// backend, the flow living as conntrack's UDP entry would (its timeouts, moved off a
/// backend that stops taking new connections).
#[inline(always)]
pub fn sendmsg<U: UserAddr>(ctx: &SockAddrContext) {
    let sock = Sock::of(ctx);
    if sock.proto != IPPROTO_UDP {
        return;
    }
    let dest = U::get(sock.sa);
    let Some(found) = frontend::find::<U::F>(dest.0, dest.1, sock.proto) else {
        return;
    };
    let Some((client, netns)) = client_of(ctx) else {
        stats::count(Counter::SockLeftPod);
        return;
    };
    let now = conntrack::now_ns();
    let key = SockFlowKeyOf {
        addr: dest.0,
        port: dest.1,
        proto: sock.proto,
        _pad: 0,
        cookie: sock.cookie,
    };
    if let Some(backend) = live_flow::<U::F>(&key, now) {
        // The frontend is remembered already; the flow's time is refreshed.
        U::set(sock.sa, backend.addr, backend.port);
        stats::count(Counter::SockDatagrams);
        return;
    }
    let served = choose::<U::F>(&found, client, netns, now).and_then(|(id, svc, backend)| {
        let flow = SockFlow {
            last_seen_ns: now,
            backend_id: id,
            flags: 0,
        };
        U::F::flows()
            .insert(key, flow, 0)
            .map_err(|_| Counter::SockLeftError)?;
        point_at::<U>(&sock, dest, svc.id, &backend).map(|()| (id, svc))
    });
    match served {
        Ok((backend_id, svc)) => {
            stats::count_new_flow(svc.id, backend_id);
            stats::count(Counter::SockDatagrams);
        }
        Err(why) => stats::count(why),
    }
}

/// The backend of the live flow `key`, its last use refreshed: `None` when there is none,
/// it timed out, or its backend no longer takes new connections (counted as rebalanced).
#[inline(always)]
fn live_flow<F: SockFamily>(key: &SockFlowKeyOf<F::Addr>, now: u64) -> Option<BackendOf<F::Addr>> {
    // SAFETY: copied out at once.
    let flow = unsafe { F::flows().get(key) }.copied()?;
    let cfg = conntrack::config();
    let timeout = if flow.flags & SOCK_FLOW_F_REPLIED != 0 {
        cfg.udp_stream_timeout_ns
    } else {
        cfg.udp_timeout_ns
    };
    if now.saturating_sub(flow.last_seen_ns) > timeout {
        return None;
    }
    // SAFETY: copied out at once.
    match unsafe { F::backends().get(flow.backend_id) }.copied() {
        Some(backend) if backend.is_active() => {
            refresh::<F>(key, flow, 0, now);
            Some(backend)
        }
        _ => {
            stats::count(Counter::FlowRebalanced);
            None
        }
    }
}

/// Writes `flow` back with `flags` added and seen at `now`, when that changes its flags or
/// its last use is older than `CT_REFRESH_NS` (every timeout is at least that). The whole
/// value is replaced by a map update, never written through a pointer: an LRU may hand the
/// element to another flow at any moment.
#[inline(always)]
fn refresh<F: SockFamily>(key: &SockFlowKeyOf<F::Addr>, flow: SockFlow, flags: u32, now: u64) {
    if flow.flags & flags == flags && now.saturating_sub(flow.last_seen_ns) < CT_REFRESH_NS {
        return;
    }
    let fresh = SockFlow {
        last_seen_ns: now,
        flags: flow.flags | flags,
        ..flow
    };
    // Only an existing flow: one evicted meanwhile is not brought back.
    let _ = F::flows().insert(key, fresh, BPF_EXIST.into());
}

/// `getpeername`, and `recvmsg` of a UDP socket: a backend the socket was pointed at is shown
/// as the frontend the application addressed; a datagram from it marks its flow replied.
#[inline(always)]
pub fn reverse<U: UserAddr>(ctx: &SockAddrContext, received: bool) {
    let sock = Sock::of(ctx);
    let (addr, port) = U::get(sock.sa);
    // SAFETY: copied out at once.
    let Some(frontend) = (unsafe { U::F::rev().get(sock.rev_key(addr, port)) }).copied() else {
        return;
    };
    U::set(sock.sa, frontend.addr, frontend.port);
    stats::count(Counter::SockReversed);
    if received {
        let key = SockFlowKeyOf {
            addr: frontend.addr,
            port: frontend.port,
            proto: sock.proto,
            _pad: 0,
            cookie: sock.cookie,
        };
        // SAFETY: copied out at once.
        if let Some(flow) = unsafe { U::F::flows().get(key) }.copied() {
            refresh::<U::F>(&key, flow, SOCK_FLOW_F_REPLIED, conntrack::now_ns());
        }
    }
}

/// `AF_INET` and `AF_INET6`, as `bpf_sock.family` holds them.
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

/// One word of a released socket's peer address (`dst_ip6`), read with a 4-byte access.
#[inline(always)]
fn peer_ip6_word(sk: *const bpf_sock, i: usize) -> u32 {
    // SAFETY: the context the kernel passed; a 4-byte read of a readable field.
    unsafe { core::ptr::read_volatile(&raw const (*sk).dst_ip6[i]) }
}

/// `sock_release`: a socket that was pointed at a backend takes its reverse entry (and a
/// connected UDP socket its `KP_SOCK_UDP` entry) with it. The tables then hold live sockets
/// only: however many connections a node makes and closes, none evicts a live socket's
/// entry (whose getpeername would then show the backend), and a connect inserts into a
/// table that is not full (an LRU insert into a full one evicts first). The entry is found
/// by the socket's peer, the backend it was pointed at; an unconnected UDP socket has none,
/// and its entries (one per frontend it sent to) are left to the LRU.
#[inline(always)]
pub fn release(ctx: &SockContext) {
    let sk = ctx.sock;
    // SAFETY: the context the kernel passed; reads of readable fields (the port a 2-byte
    // one, its own size).
    let (family, proto, port) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*sk).family),
            core::ptr::read_volatile(&raw const (*sk).protocol),
            core::ptr::read_volatile(&raw const (*sk).dst_port),
        )
    };
    if port == 0 || (proto != u32::from(IPPROTO_TCP) && proto != u32::from(IPPROTO_UDP)) {
        return;
    }
    let udp = proto == u32::from(IPPROTO_UDP);
    if family == AF_INET {
        // SAFETY: as above, a 4-byte read.
        let addr = unsafe { core::ptr::read_volatile(&raw const (*sk).dst_ip4) };
        forget::<V4>(ctx, addr, port, udp);
    } else if family == AF_INET6 {
        let word = |i| peer_ip6_word(sk, i);
        if word(0) == 0 && word(1) == 0 && word(2) == V4_MAPPED_WORD {
            // A dual-stack socket that reached an IPv4 frontend: served, and remembered,
            // as IPv4 (`Mapped4`).
            forget::<V4>(ctx, word(3), port, udp);
        } else {
            forget::<V6>(
                ctx,
                In6Addr([word(0), word(1), word(2), word(3)]),
                port,
                udp,
            );
        }
    }
}

/// Deletes the entries of the socket of `ctx` for its peer `addr`:`port`. A peer whose
/// filter bit is clear was never a backend (the agent sets the bit before any program can
/// choose it), so the sockets of everything else on the node cost an array read, not a hash
/// lookup.
#[inline(always)]
fn forget<F: SockFamily>(ctx: &SockContext, addr: F::Addr, port: u16, udp: bool) {
    if !filter::may_be_backend::<F>(addr, port) {
        return;
    }
    // SAFETY: a helper this program type may call.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockRevKeyOf {
        addr,
        port,
        _pad: 0,
        cookie: cookie_words(cookie),
    };
    if F::rev().remove(key).is_ok() {
        stats::count(Counter::SockReleased);
        if udp {
            let _ = F::udp_connected().remove(key);
        }
    }
}
