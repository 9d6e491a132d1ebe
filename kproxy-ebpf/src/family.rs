//! An address family behind one interface: the service logic (`lb`, `conntrack`,
//! `frontend`, `policy`) is written once, generic over a `Family`, which brings its maps, its
//! parser, its header rewrites and the packets it answers with. IPv4 is the one family the
//! programs serve today; IPv6 is on its way (docs/design/ipv6-datapath.md).

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::bpf_fib_lookup,
    maps::{HashMap, LruHashMap, lpm_trie::Key},
};
use kproxy_common::{
    addr::IpAddress,
    ct::{AffinityKeyOf, AffinityValue, CtEntryOf, FlowKeyOf, FragKey, FragPorts},
    lb::{BackendOf, SOURCE_RANGE_ID_BITS, ServiceKeyOf, ServiceValue, SourceRangeKey},
};

use crate::{
    icmp, icmp_err,
    lb::Action,
    maps::{
        KP_AFFINITY, KP_BACKENDS, KP_CT_FWD, KP_CT_REV, KP_FRAGS, KP_LOCAL_CIDRS, KP_NODE_ADDRS,
        KP_NODEPORT_LIST, KP_SERVICES, KP_SOURCE_RANGES, KP_VIPS,
    },
    packet::{NatRewrite, Packet},
    parse::{self, Flow, Parsed},
    reset, route,
};

pub type FlowKeyF<F> = FlowKeyOf<<F as Family>::Addr>;
pub type CtEntryF<F> = CtEntryOf<<F as Family>::Addr>;
pub type FlowF<F> = Flow<<F as Family>::Addr>;

/// One address family of the datapath.
pub trait Family {
    type Addr: IpAddress + 'static;
    type FragKey: 'static;

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
    /// The address folded into 32 bits, to seed a pseudo-random choice.
    fn fold(addr: Self::Addr) -> u32;

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

impl Family for V4 {
    type Addr = u32;
    type FragKey = FragKey;
    const ICMP_PROTO: u8 = parse::IPPROTO_ICMP;

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
    fn fold(addr: u32) -> u32 {
        addr
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
