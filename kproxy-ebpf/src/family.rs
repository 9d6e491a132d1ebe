//! The two address families behind one interface: the service logic (`lb`, `conntrack`,
//! `frontend`, `policy`) is written once, generic over a `Family`, and compiled twice. Each
//! family brings its maps, its parser, its header rewrites and the packets it answers with;
//! IPv4 compiles exactly as before, and IPv6 runs in programs of its own (see lib.rs).

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::bpf_fib_lookup,
    maps::{HashMap, LruHashMap, lpm_trie::Key},
};
use kproxy_common::{
    addr::{In6Addr, IpAddress},
    ct::{AffinityKeyOf, AffinityValue, CtEntryOf, FlowKeyOf, FragKey, FragKey6, FragPorts},
    lb::{
        BackendOf, SOURCE_RANGE_ID_BITS, ServiceKeyOf, ServiceValue, SourceRangeKey,
        SourceRangeKey6,
    },
    maglev::HashedAddr,
};

use crate::{
    icmp, icmp_err, icmp6,
    lb::Action,
    maps::{
        KP_AFFINITY, KP_AFFINITY6, KP_BACKENDS, KP_BACKENDS6, KP_CT_FWD, KP_CT_FWD6, KP_CT_REV,
        KP_CT_REV6, KP_FRAGS, KP_FRAGS6, KP_LOCAL_CIDRS, KP_LOCAL_CIDRS6, KP_NODE_ADDRS,
        KP_NODE_ADDRS6, KP_NODEPORT_LIST, KP_SERVICES, KP_SERVICES6, KP_SOURCE_RANGES,
        KP_SOURCE_RANGES6, KP_VIPS, KP_VIPS6,
    },
    packet::{NatRewrite, Packet},
    parse::{self, Flow, Parsed},
    parse6, reset, route,
    scratch::{KP_STAGE6, StageState},
};

/// Defines `$name`, which runs `$here` inlined for families that fit, or as a BPF function
/// of its own for `STAGED` ones: inlined into a stage, the large steps (a rewrite with its
/// checksum helpers, a reject frame) were copied into every path that reaches them, each
/// copy with spill slots of its own, past the stack a program has. At most five arguments
/// (BPF's argument registers) and a result that fits a register.
macro_rules! called {
    ($(#[$doc:meta])* $vis:vis fn $name:ident<F: Family $(, $g:ident: $b:path)*>($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty => $here:ident) => {
        $(#[$doc])*
        #[inline(always)]
        $vis fn $name<F: Family $(, $g: $b)*>($($arg: $ty),*) -> $ret {
            #[inline(never)]
            fn call<F: Family $(, $g: $b)*>($($arg: $ty),*) -> $ret {
                $here::<F $(, $g)*>($($arg),*)
            }
            if F::STAGED {
                call::<F $(, $g)*>($($arg),*)
            } else {
                $here::<F $(, $g)*>($($arg),*)
            }
        }
    };
}
pub(crate) use called;

pub type FlowKeyF<F> = FlowKeyOf<<F as Family>::Addr>;
pub type CtEntryF<F> = CtEntryOf<<F as Family>::Addr>;
pub type FlowF<F> = Flow<<F as Family>::Addr>;

/// One address family of the datapath.
pub trait Family {
    type Addr: IpAddress + HashedAddr + 'static;
    type FragKey: 'static;
    /// The packet path runs in stages, each a program of its own reached by a tail call
    /// (see `lb::Stage`): with IPv6's wider keys and entries, one program's stack would
    /// pass the 512 bytes BPF allows. IPv4's fits in one program (and verifies faster so).
    const STAGED: bool;

    /// This CPU's state handed from stage to stage (only for `STAGED` families).
    fn stage_state() -> Option<*mut StageState<Self::Addr>>;

    fn services() -> &'static HashMap<ServiceKeyOf<Self::Addr>, ServiceValue>;
    fn backends() -> &'static HashMap<u32, BackendOf<Self::Addr>>;
    fn ct_fwd() -> &'static LruHashMap<FlowKeyF<Self>, CtEntryF<Self>>;
    fn ct_rev() -> &'static HashMap<FlowKeyF<Self>, CtEntryF<Self>>;
    fn affinity() -> &'static LruHashMap<AffinityKeyOf<Self::Addr>, AffinityValue>;
    fn frags() -> &'static LruHashMap<Self::FragKey, FragPorts>;
    fn vips() -> &'static HashMap<Self::Addr, u32>;
    fn node_addrs() -> &'static HashMap<Self::Addr, u32>;

    /// The fragment table's key for a fragment of `flow`.
    fn frag_key(flow: &FlowF<Self>) -> Self::FragKey;
    /// Whether `addr` is in the pod network (`KP_LOCAL_CIDRS`).
    fn in_local_cidr(addr: Self::Addr) -> bool;
    /// Whether `KP_SOURCE_RANGES` lets `addr` reach service port `svc_id`.
    fn source_allowed(svc_id: u32, addr: Self::Addr) -> bool;
    /// Whether `KP_NODEPORT_LIST` lists `addr` with no frontend of its own (see `frontend`).
    fn listed_nodeport_only(addr: Self::Addr) -> bool;

    fn parse<P: Packet>(pkt: &mut P) -> Parsed<Self::Addr>;
    /// Rewrites an address and port of a packet, keeping its checksums right.
    fn rewrite<P: Packet>(pkt: &mut P, rw: &NatRewrite<Self::Addr>) -> Result<(), ()>;
    /// An ICMP packet (`daddr` its destination, its header at `l4_off`): an error about a
    /// translated flow is translated too.
    fn icmp<P: Packet>(pkt: &mut P, daddr: Self::Addr, l4_off: usize) -> Action;
    /// The family's ICMP protocol number.
    const ICMP_PROTO: u8;
    /// Answers a new connection to a service port without endpoints: ICMP port unreachable.
    fn send_reject<P: Packet>(pkt: &mut P, flow: &FlowF<Self>) -> Result<(), ()>;
    /// Answers a packet of a TCP flow whose endpoint is gone with a RST.
    fn send_reset<P: Packet>(pkt: &mut P, flow: &FlowF<Self>) -> Result<(), ()>;
    /// Whether a packet to `daddr` is one only `lo` may carry (see `policy`).
    fn is_loopback(daddr: Self::Addr) -> bool;
    /// A FIB lookup request from `src` to `dst` as if received on `ifindex`, built in `slot`.
    fn fib_request(
        slot: &mut MaybeUninit<bpf_fib_lookup>,
        ifindex: u32,
        src: Self::Addr,
        dst: Self::Addr,
    ) -> &mut bpf_fib_lookup;
    /// The source a `BPF_FIB_LOOKUP_SRC` lookup chose.
    fn fib_src(params: &bpf_fib_lookup) -> Self::Addr;
    /// A translated packet's source and destination, read back from its header.
    fn addresses<P: Packet>(pkt: &P) -> Option<(Self::Addr, Self::Addr)>;
}

/// IPv4.
pub struct V4;
/// IPv6.
pub struct V6;

impl Family for V4 {
    type Addr = u32;
    type FragKey = FragKey;
    const ICMP_PROTO: u8 = parse::IPPROTO_ICMP;
    const STAGED: bool = false;

    #[inline(always)]
    fn stage_state() -> Option<*mut StageState<u32>> {
        None
    }

    #[inline(always)]
    fn services() -> &'static HashMap<ServiceKeyOf<u32>, ServiceValue> {
        &KP_SERVICES
    }
    #[inline(always)]
    fn backends() -> &'static HashMap<u32, BackendOf<u32>> {
        &KP_BACKENDS
    }
    #[inline(always)]
    fn ct_fwd() -> &'static LruHashMap<FlowKeyOf<u32>, CtEntryOf<u32>> {
        &KP_CT_FWD
    }
    #[inline(always)]
    fn ct_rev() -> &'static HashMap<FlowKeyOf<u32>, CtEntryOf<u32>> {
        &KP_CT_REV
    }
    #[inline(always)]
    fn affinity() -> &'static LruHashMap<AffinityKeyOf<u32>, AffinityValue> {
        &KP_AFFINITY
    }
    #[inline(always)]
    fn frags() -> &'static LruHashMap<FragKey, FragPorts> {
        &KP_FRAGS
    }
    #[inline(always)]
    fn vips() -> &'static HashMap<u32, u32> {
        &KP_VIPS
    }
    #[inline(always)]
    fn node_addrs() -> &'static HashMap<u32, u32> {
        &KP_NODE_ADDRS
    }

    #[inline(always)]
    fn frag_key(flow: &Flow<u32>) -> FragKey {
        FragKey {
            saddr: flow.key.saddr,
            daddr: flow.key.daddr,
            id: flow.frag_id as u16,
            proto: flow.key.proto,
            _pad: 0,
        }
    }
    #[inline(always)]
    fn in_local_cidr(addr: u32) -> bool {
        KP_LOCAL_CIDRS.get(Key::new(32, addr)).is_some()
    }
    #[inline(always)]
    fn source_allowed(svc_id: u32, addr: u32) -> bool {
        let key = Key::new(
            SOURCE_RANGE_ID_BITS + 32,
            SourceRangeKey {
                svc_id_be: svc_id.to_be(),
                addr,
            },
        );
        KP_SOURCE_RANGES.get(&key).is_some()
    }
    #[inline(always)]
    fn listed_nodeport_only(addr: u32) -> bool {
        KP_NODEPORT_LIST
            .get(0)
            .is_some_and(|list| crate::frontend::listed_without_exact(list, addr))
    }
    #[inline(always)]
    fn parse<P: Packet>(pkt: &mut P) -> Parsed<u32> {
        parse::parse(pkt)
    }
    #[inline(always)]
    fn rewrite<P: Packet>(pkt: &mut P, rw: &NatRewrite<u32>) -> Result<(), ()> {
        pkt.rewrite(rw)
    }
    #[inline(always)]
    fn icmp<P: Packet>(pkt: &mut P, daddr: u32, l4_off: usize) -> Action {
        icmp_err::handle(pkt, daddr, l4_off)
    }
    #[inline(always)]
    fn send_reject<P: Packet>(pkt: &mut P, flow: &Flow<u32>) -> Result<(), ()> {
        let frame = icmp::port_unreachable(pkt, &flow.key, flow.l4_off).ok_or(())?;
        pkt.send_back(&frame)
    }
    #[inline(always)]
    fn send_reset<P: Packet>(pkt: &mut P, flow: &Flow<u32>) -> Result<(), ()> {
        let frame = reset::tcp_reset(pkt, flow).ok_or(())?;
        pkt.send_back(&frame)
    }
    #[inline(always)]
    fn is_loopback(daddr: u32) -> bool {
        // 127.0.0.0/8: the first byte on the wire.
        daddr.to_ne_bytes()[0] == 127
    }
    #[inline(always)]
    fn fib_request(
        slot: &mut MaybeUninit<bpf_fib_lookup>,
        ifindex: u32,
        src: u32,
        dst: u32,
    ) -> &mut bpf_fib_lookup {
        route::ipv4_request(slot, ifindex, src, dst)
    }
    #[inline(always)]
    fn fib_src(params: &bpf_fib_lookup) -> u32 {
        // SAFETY: a lookup of this family fills this member.
        unsafe { params.__bindgen_anon_3.ipv4_src }
    }
    #[inline(always)]
    fn addresses<P: Packet>(pkt: &P) -> Option<(u32, u32)> {
        let ip = pkt.read::<parse::Ipv4Hdr>(parse::L3_OFF)?;
        Some((ip.saddr, ip.daddr))
    }
}

impl Family for V6 {
    type Addr = In6Addr;
    type FragKey = FragKey6;
    const ICMP_PROTO: u8 = parse6::IPPROTO_ICMPV6;
    const STAGED: bool = true;

    #[inline(always)]
    fn stage_state() -> Option<*mut StageState<In6Addr>> {
        KP_STAGE6.get_ptr_mut(0)
    }

    #[inline(always)]
    fn services() -> &'static HashMap<ServiceKeyOf<In6Addr>, ServiceValue> {
        &KP_SERVICES6
    }
    #[inline(always)]
    fn backends() -> &'static HashMap<u32, BackendOf<In6Addr>> {
        &KP_BACKENDS6
    }
    #[inline(always)]
    fn ct_fwd() -> &'static LruHashMap<FlowKeyOf<In6Addr>, CtEntryOf<In6Addr>> {
        &KP_CT_FWD6
    }
    #[inline(always)]
    fn ct_rev() -> &'static HashMap<FlowKeyOf<In6Addr>, CtEntryOf<In6Addr>> {
        &KP_CT_REV6
    }
    #[inline(always)]
    fn affinity() -> &'static LruHashMap<AffinityKeyOf<In6Addr>, AffinityValue> {
        &KP_AFFINITY6
    }
    #[inline(always)]
    fn frags() -> &'static LruHashMap<FragKey6, FragPorts> {
        &KP_FRAGS6
    }
    #[inline(always)]
    fn vips() -> &'static HashMap<In6Addr, u32> {
        &KP_VIPS6
    }
    #[inline(always)]
    fn node_addrs() -> &'static HashMap<In6Addr, u32> {
        &KP_NODE_ADDRS6
    }

    #[inline(always)]
    fn frag_key(flow: &Flow<In6Addr>) -> FragKey6 {
        FragKey6 {
            saddr: flow.key.saddr,
            daddr: flow.key.daddr,
            id: flow.frag_id,
            proto: flow.key.proto,
            _pad0: 0,
            _pad1: 0,
        }
    }
    #[inline(always)]
    fn in_local_cidr(addr: In6Addr) -> bool {
        KP_LOCAL_CIDRS6.get(Key::new(128, addr)).is_some()
    }
    #[inline(always)]
    fn source_allowed(svc_id: u32, addr: In6Addr) -> bool {
        let key = Key::new(
            SOURCE_RANGE_ID_BITS + 128,
            SourceRangeKey6 {
                svc_id_be: svc_id.to_be(),
                addr,
            },
        );
        KP_SOURCE_RANGES6.get(&key).is_some()
    }
    #[inline(always)]
    fn listed_nodeport_only(_addr: In6Addr) -> bool {
        // The list is IPv4's shortcut; IPv6 NodePorts take the general path.
        false
    }
    #[inline(always)]
    fn parse<P: Packet>(pkt: &mut P) -> Parsed<In6Addr> {
        parse6::parse6(pkt)
    }
    #[inline(always)]
    fn rewrite<P: Packet>(pkt: &mut P, rw: &NatRewrite<In6Addr>) -> Result<(), ()> {
        pkt.rewrite6(rw)
    }
    #[inline(always)]
    fn icmp<P: Packet>(pkt: &mut P, daddr: In6Addr, l4_off: usize) -> Action {
        icmp6::handle(pkt, daddr, l4_off)
    }
    #[inline(always)]
    fn send_reject<P: Packet>(pkt: &mut P, flow: &Flow<In6Addr>) -> Result<(), ()> {
        let frame = icmp6::port_unreachable(pkt, &flow.key, flow.l4_off).ok_or(())?;
        pkt.send_back(frame)
    }
    #[inline(always)]
    fn send_reset<P: Packet>(pkt: &mut P, flow: &Flow<In6Addr>) -> Result<(), ()> {
        let frame = reset::tcp_reset6(pkt, flow).ok_or(())?;
        pkt.send_back(frame)
    }
    #[inline(always)]
    fn is_loopback(_daddr: In6Addr) -> bool {
        // `route_localnet` is IPv4's: IPv6 NodePorts never answer on ::1, and the kernel
        // drops ::1 from the wire itself.
        false
    }
    #[inline(always)]
    fn fib_request(
        slot: &mut MaybeUninit<bpf_fib_lookup>,
        ifindex: u32,
        src: In6Addr,
        dst: In6Addr,
    ) -> &mut bpf_fib_lookup {
        route::ipv6_request(slot, ifindex, src, dst)
    }
    #[inline(always)]
    fn fib_src(params: &bpf_fib_lookup) -> In6Addr {
        // SAFETY: a lookup of this family fills this member.
        In6Addr(unsafe { params.__bindgen_anon_3.ipv6_src })
    }
    #[inline(always)]
    fn addresses<P: Packet>(pkt: &P) -> Option<(In6Addr, In6Addr)> {
        let ip = pkt.read::<parse6::Ipv6Hdr>(parse::L3_OFF)?;
        Some((ip.saddr, ip.daddr))
    }
}
