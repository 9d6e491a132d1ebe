//! The IPv6 datapath on hand-built packets (BPF_PROG_TEST_RUN): the real programs (the IPv4
//! entry points hand IPv6 frames on to the IPv6 programs and their stages by tail calls, as
//! the agent installs them), maps programmed by the agent's sync, and exact bytes out,
//! compared with frames etherparse builds with every checksum computed afresh.

mod support;

use std::net::Ipv6Addr;

use aya::maps::{HashMap, MapData};
use aya::programs::{Xdp, XdpMode};
use etherparse::{
    IcmpEchoHeader, Icmpv6Type, IpAuthHeader, IpFragOffset, IpHeaders, IpNumber, Ipv6Extensions,
    Ipv6FragmentHeader, Ipv6Header, Ipv6RawExtHeader, PacketBuilder, icmpv6::DestUnreachableCode,
};
use kproxy::model::{Desired, FrontendKey, FrontendKind, Protocol};
use kproxy_common::{
    addr::In6Addr,
    config::{CFG_F_LOCAL_BY_CIDR, Config},
    iface::{IFACE_F_INGRESS, IFACE_F_XDP_REDIRECT, NODE_ADDR_F_LOCAL, NODE_ADDR_F_NODEPORT},
    names,
    stats::Counter,
};
use kproxy_testbed::{Topology, TopologyOptions, require_privileges};
use support::{
    datapath::{
        B1, B1_6, B2_6, B3_6, CLIENT, CLIENT6, LoadedDatapath, OTHER_CLIENT6, TC_ACT_REDIRECT,
        TC_ACT_SHOT, TCX_NEXT, VIP, VIP6, XDP_PASS, XDP_REDIRECT, XDP_TX, frontend, loaded,
        three_backends6,
    },
    packets::{
        ACK, CLIENT_MAC, NODE_MAC, SYN, SYN_ACK, dst6, icmp6_frame, tcp_frame, tcp6_frame,
        tcp6_frame_with, udp6_frame,
    },
};

/// Where the IPv6 header starts in a frame.
const L3: usize = 14;

#[test]
fn ipv6_dnat_and_reverse_nat_have_exact_checksums() {
    if !require_privileges("ipv6_dnat_and_reverse_nat_have_exact_checksums") {
        return;
    }
    let dp = loaded(&three_backends6(Protocol::Tcp, None));
    // The SYN takes every stage (a new flow: decided, created, translated); the next packet
    // is served by the first IPv6 program from its forward entry alone.
    for (flags, payload) in [(SYN, &b""[..]), (ACK, &b"GET / HTTP/1.1\r\n\r\n"[..])] {
        let (verdict, out) = dp.tc(&tcp6_frame((CLIENT6, 40_000), (VIP6, 80), flags, payload));
        assert_eq!(verdict, TCX_NEXT);
        assert_eq!(
            out,
            tcp6_frame((CLIENT6, 40_000), (B1_6, 8080), flags, payload)
        );
    }
    for (flags, payload) in [(SYN_ACK, &b""[..]), (ACK, &b"HTTP/1.1 200 OK\r\n"[..])] {
        let (verdict, out) = dp.tc(&tcp6_frame((B1_6, 8080), (CLIENT6, 40_000), flags, payload));
        assert_eq!(verdict, TCX_NEXT);
        assert_eq!(
            out,
            tcp6_frame((VIP6, 80), (CLIENT6, 40_000), flags, payload)
        );
    }
    assert_eq!(dp.counter(Counter::NewFlows), 1);
    assert_eq!(dp.counter(Counter::ServicePackets), 2);
    assert_eq!(dp.counter(Counter::ReplyPackets), 2);
    assert_eq!(dp.counter(Counter::Ipv6NotHandedOn), 0);

    // UDP: the checksum is mandatory in IPv6, and the reply comes from the VIP.
    let dp = loaded(&three_backends6(Protocol::Udp, None));
    let (verdict, out) = dp.tc(&udp6_frame((CLIENT6, 5353), (VIP6, 80), b"query"));
    assert_eq!(verdict, TCX_NEXT);
    assert_eq!(out, udp6_frame((CLIENT6, 5353), (B1_6, 8080), b"query"));
    let (_, out) = dp.tc(&udp6_frame((B1_6, 8080), (CLIENT6, 5353), b"answer"));
    assert_eq!(out, udp6_frame((VIP6, 80), (CLIENT6, 5353), b"answer"));
}

#[test]
fn ipv6_xdp_translates_like_tc() {
    if !require_privileges("ipv6_xdp_translates_like_tc") {
        return;
    }
    let dp = loaded(&three_backends6(Protocol::Tcp, None));
    let (verdict, out) = dp.xdp(&tcp6_frame((CLIENT6, 40_000), (VIP6, 80), SYN, b""));
    assert_eq!(
        verdict, XDP_PASS,
        "no route in the test's namespace: passed"
    );
    assert_eq!(out, tcp6_frame((CLIENT6, 40_000), (B1_6, 8080), SYN, b""));
    let (_, out) = dp.xdp(&tcp6_frame((CLIENT6, 40_000), (VIP6, 80), ACK, b"data"));
    assert_eq!(
        out,
        tcp6_frame((CLIENT6, 40_000), (B1_6, 8080), ACK, b"data")
    );
    let (_, out) = dp.xdp(&tcp6_frame((B1_6, 8080), (CLIENT6, 40_000), SYN_ACK, b""));
    assert_eq!(out, tcp6_frame((VIP6, 80), (CLIENT6, 40_000), SYN_ACK, b""));

    let dp = loaded(&three_backends6(Protocol::Udp, None));
    let (_, out) = dp.xdp(&udp6_frame((CLIENT6, 5353), (VIP6, 80), b"q"));
    assert_eq!(out, udp6_frame((CLIENT6, 5353), (B1_6, 8080), b"q"));
}

#[test]
fn ipv6_new_flows_go_round_robin_and_keep_their_backend() {
    if !require_privileges("ipv6_new_flows_go_round_robin_and_keep_their_backend") {
        return;
    }
    let dp = loaded(&three_backends6(Protocol::Tcp, None));
    let backends = [B1_6, B2_6, B3_6];
    for (i, port) in (41_000..41_006).enumerate() {
        let (_, out) = dp.tc(&tcp6_frame((CLIENT6, port), (VIP6, 80), SYN, b""));
        assert_eq!(dst6(&out), (backends[i % 3], 8080), "flow from port {port}");
    }
    // Each flow stays where it was sent.
    for (i, port) in (41_000..41_006).enumerate().rev() {
        let (_, out) = dp.tc(&tcp6_frame((CLIENT6, port), (VIP6, 80), ACK, b"x"));
        assert_eq!(dst6(&out), (backends[i % 3], 8080), "flow from port {port}");
    }
    assert_eq!(dp.counter(Counter::NewFlows), 6);
}

#[test]
fn ipv6_client_ip_affinity_keeps_a_client_on_one_backend() {
    if !require_privileges("ipv6_client_ip_affinity_keeps_a_client_on_one_backend") {
        return;
    }
    let dp = loaded(&three_backends6(Protocol::Tcp, Some(10_800)));
    let first = dst6(
        &dp.tc(&tcp6_frame((CLIENT6, 42_000), (VIP6, 80), SYN, b""))
            .1,
    );
    for port in 42_001..42_005 {
        let (_, out) = dp.tc(&tcp6_frame((CLIENT6, port), (VIP6, 80), SYN, b""));
        assert_eq!(dst6(&out), first, "new flows of the same client");
    }
    // Another client is balanced on its own: round-robin's next turn.
    let (_, out) = dp.tc(&tcp6_frame((OTHER_CLIENT6, 42_000), (VIP6, 80), SYN, b""));
    assert_ne!(dst6(&out), first);
    assert_eq!(dp.counter(Counter::AffinityHits), 4);
}

#[test]
fn ipv6_service_without_endpoints_answers_port_unreachable() {
    if !require_privileges("ipv6_service_without_endpoints_answers_port_unreachable") {
        return;
    }
    let empty: Desired = [frontend(VIP6, 80, Protocol::Tcp, &[], None)]
        .into_iter()
        .collect();
    let dp = loaded(&empty);
    let syn = tcp6_frame((CLIENT6, 40_000), (VIP6, 80), SYN, b"");
    let (verdict, out) = dp.tc(&syn);
    assert_eq!(verdict, TC_ACT_REDIRECT, "sent back where it came from");
    // What ip6tables' REJECT sends: from the address the client tried, quoting the
    // header and the first 8 bytes of the segment.
    let expected = icmp6_frame(
        true,
        VIP6,
        CLIENT6,
        Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Port),
        &syn[L3..L3 + 48],
    );
    assert_eq!(out, expected);
    assert_eq!(dp.counter(Counter::Rejected), 1);

    let (verdict, out) = dp.xdp(&syn);
    assert_eq!(verdict, XDP_TX);
    assert_eq!(out, expected);
}

#[test]
fn ipv6_extension_headers_are_walked_and_what_cannot_be_is_passed() {
    if !require_privileges("ipv6_extension_headers_are_walked_and_what_cannot_be_is_passed") {
        return;
    }
    let dp = loaded(&three_backends6(Protocol::Tcp, None));
    let options = |len: usize| {
        Ipv6RawExtHeader::new_raw(IpNumber::TCP, &vec![0; len]).expect("an options header")
    };
    // Hop-by-hop and destination options before the TCP header: translated in place.
    let walked = Ipv6Extensions {
        hop_by_hop_options: Some(options(6)),
        destination_options: Some(options(14)),
        ..Default::default()
    };
    for flags in [SYN, ACK] {
        let (verdict, out) = dp.tc(&tcp6_frame_with(
            walked.clone(),
            (CLIENT6, 40_000),
            (VIP6, 80),
            flags,
            b"",
        ));
        assert_eq!(verdict, TCX_NEXT);
        assert_eq!(
            out,
            tcp6_frame_with(walked.clone(), (CLIENT6, 40_000), (B1_6, 8080), flags, b"")
        );
    }
    // An Authentication header is not walked: passed untouched, counted.
    let auth = Ipv6Extensions {
        auth: Some(IpAuthHeader::new(IpNumber::TCP, 1, 1, &[0; 4]).expect("an AH header")),
        ..Default::default()
    };
    let unparsed = tcp6_frame_with(auth, (CLIENT6, 40_001), (VIP6, 80), SYN, b"");
    assert_eq!(dp.tc(&unparsed), (TCX_NEXT, unparsed.clone()));
    assert_eq!(dp.counter(Counter::VipExtensionHeaders), 1);
    // So are headers longer than the walk's window (256 bytes together).
    let long = Ipv6Extensions {
        hop_by_hop_options: Some(options(262)),
        destination_options: Some(options(6)),
        ..Default::default()
    };
    let unparsed = tcp6_frame_with(long, (CLIENT6, 40_002), (VIP6, 80), SYN, b"");
    assert_eq!(dp.tc(&unparsed), (TCX_NEXT, unparsed.clone()));
    assert_eq!(dp.counter(Counter::VipExtensionHeaders), 2);
    assert_eq!(dp.counter(Counter::NewFlows), 1);
}

#[test]
fn ipv6_packet_too_big_about_a_translated_flow_is_translated_inside_and_out() {
    if !require_privileges(
        "ipv6_packet_too_big_about_a_translated_flow_is_translated_inside_and_out",
    ) {
        return;
    }
    let dp = loaded(&three_backends6(Protocol::Tcp, None));
    dp.tc(&tcp6_frame((CLIENT6, 40_000), (VIP6, 80), SYN, b""));
    // A router on the way to the backend found the client's segment too big for its link.
    let router = Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 1);
    let sent = tcp6_frame((CLIENT6, 40_000), (B1_6, 8080), ACK, &[7; 64]);
    let error = icmp6_frame(
        false,
        router,
        CLIENT6,
        Icmpv6Type::PacketTooBig { mtu: 1280 },
        &sent[L3..],
    );
    let (verdict, out) = dp.tc(&error);
    assert_eq!(verdict, TCX_NEXT);
    // The client must see it about the segment it sent, to the VIP, and from the VIP (as
    // netfilter translates it), so that its stack finds the socket and lowers the MTU.
    let as_sent = tcp6_frame((CLIENT6, 40_000), (VIP6, 80), ACK, &[7; 64]);
    let expected = icmp6_frame(
        false,
        VIP6,
        CLIENT6,
        Icmpv6Type::PacketTooBig { mtu: 1280 },
        &as_sent[L3..],
    );
    assert_eq!(out, expected);
    assert_eq!(dp.counter(Counter::IcmpErrorTranslated), 1);

    // The other way: the client's side reports a reply it could not take (port
    // unreachable, about VIP:80 → client); it goes on to the backend, about the reply the
    // backend sent.
    let reply = tcp6_frame((VIP6, 80), (CLIENT6, 40_000), ACK, b"late");
    let unreachable = Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Port);
    let error = icmp6_frame(false, CLIENT6, VIP6, unreachable, &reply[L3..]);
    let (verdict, out) = dp.tc(&error);
    assert_eq!(verdict, TCX_NEXT);
    let as_sent = tcp6_frame((B1_6, 8080), (CLIENT6, 40_000), ACK, b"late");
    assert_eq!(
        out,
        icmp6_frame(false, CLIENT6, B1_6, unreachable, &as_sent[L3..])
    );
    assert_eq!(dp.counter(Counter::IcmpErrorTranslated), 2);

    // One about no flow of kproxy's is left alone.
    let stranger = tcp6_frame((CLIENT6, 40_123), (B1_6, 8080), ACK, &[7; 64]);
    let unrelated = icmp6_frame(
        false,
        router,
        CLIENT6,
        Icmpv6Type::PacketTooBig { mtu: 1280 },
        &stranger[L3..],
    );
    assert_eq!(dp.tc(&unrelated), (TCX_NEXT, unrelated.clone()));
}

#[test]
fn ipv6_neighbour_discovery_and_echo_pass_untouched() {
    if !require_privileges("ipv6_neighbour_discovery_and_echo_pass_untouched") {
        return;
    }
    let dp = loaded(&three_backends6(Protocol::Tcp, None));
    let solicited_node = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 0x10);
    let solicitation = icmp6_frame(
        false,
        CLIENT6,
        solicited_node,
        Icmpv6Type::Unknown {
            type_u8: 135,
            code_u8: 0,
            bytes5to8: [0; 4],
        },
        &VIP6.octets(),
    );
    assert_eq!(dp.tc(&solicitation), (TCX_NEXT, solicitation.clone()));
    assert_eq!(dp.xdp(&solicitation), (XDP_PASS, solicitation.clone()));
    let echo = icmp6_frame(
        false,
        CLIENT6,
        VIP6,
        Icmpv6Type::EchoRequest(IcmpEchoHeader { id: 1, seq: 1 }),
        b"ping",
    );
    assert_eq!(dp.tc(&echo), (TCX_NEXT, echo.clone()));
}

#[test]
fn a_dual_stack_service_is_served_in_both_families_each_with_its_own_endpoints() {
    if !require_privileges(
        "a_dual_stack_service_is_served_in_both_families_each_with_its_own_endpoints",
    ) {
        return;
    }
    let both: Desired = [
        frontend(VIP, 80, Protocol::Tcp, &[(B1, 8080)], None),
        frontend(VIP6, 80, Protocol::Tcp, &[(B1_6, 8080)], None),
    ]
    .into_iter()
    .collect();
    let dp = loaded(&both);
    let (_, out) = dp.tc(&tcp_frame((CLIENT, 40_000), (VIP, 80), SYN, b""));
    assert_eq!(out, tcp_frame((CLIENT, 40_000), (B1, 8080), SYN, b""));
    let (_, out) = dp.tc(&tcp6_frame((CLIENT6, 40_000), (VIP6, 80), SYN, b""));
    assert_eq!(out, tcp6_frame((CLIENT6, 40_000), (B1_6, 8080), SYN, b""));

    // Endpoints in one family only: the other family's VIP rejects, as kube-proxy's does.
    let one_family: Desired = [
        frontend(VIP, 80, Protocol::Tcp, &[(B1, 8080)], None),
        frontend(VIP6, 80, Protocol::Tcp, &[], None),
    ]
    .into_iter()
    .collect();
    let dp = loaded(&one_family);
    let (_, out) = dp.tc(&tcp_frame((CLIENT, 40_000), (VIP, 80), SYN, b""));
    assert_eq!(out, tcp_frame((CLIENT, 40_000), (B1, 8080), SYN, b""));
    let (verdict, _) = dp.tc(&tcp6_frame((CLIENT6, 40_000), (VIP6, 80), SYN, b""));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(dp.counter(Counter::Rejected), 1);
}

#[test]
fn ipv6_the_deferring_xdp_program_leaves_service_packets_and_icmp_to_tc() {
    if !require_privileges("ipv6_the_deferring_xdp_program_leaves_service_packets_and_icmp_to_tc") {
        return;
    }
    let dp = loaded(&three_backends6(Protocol::Tcp, None));
    let defer = |frame: &[u8]| {
        dp.try_run(names::PROG_XDP_DEFER, frame)
            .expect("BPF_PROG_TEST_RUN")
    };
    let syn = tcp6_frame((CLIENT6, 40_000), (VIP6, 80), SYN, b"");
    assert_eq!(defer(&syn), (XDP_PASS, syn.clone()));
    // TC then translates it.
    let (_, out) = dp.tc(&syn);
    assert_eq!(out, tcp6_frame((CLIENT6, 40_000), (B1_6, 8080), SYN, b""));
    let sent = tcp6_frame((CLIENT6, 40_000), (B1_6, 8080), ACK, &[7; 64]);
    let error = icmp6_frame(
        false,
        Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 1),
        CLIENT6,
        Icmpv6Type::PacketTooBig { mtu: 1280 },
        &sent[L3..],
    );
    assert_eq!(defer(&error), (XDP_PASS, error.clone()));
    assert_eq!(dp.counter(Counter::XdpDeferred), 2);
    assert_eq!(dp.counter(Counter::IcmpErrorTranslated), 0);
}

/// The two fragments of `datagram` (a UDP header and payload) from `src` to `dst`: the first
/// 24 bytes (the UDP header and 16 bytes) and the rest, with Fragment header id `id`.
fn udp6_fragments(src: Ipv6Addr, dst: Ipv6Addr, datagram: &[u8], id: u32) -> [Vec<u8>; 2] {
    let fragment = |offset_units: u16, more: bool, bytes: &[u8]| {
        let ip = Ipv6Header {
            hop_limit: 64,
            source: src.octets(),
            destination: dst.octets(),
            ..Default::default()
        };
        let exts = Ipv6Extensions {
            fragment: Some(Ipv6FragmentHeader::new(
                IpNumber::UDP,
                IpFragOffset::try_new(offset_units).expect("offset"),
                more,
                id,
            )),
            ..Default::default()
        };
        let mut out = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC)
            .ip(IpHeaders::Ipv6(ip, exts))
            .write(&mut out, IpNumber::UDP, bytes)
            .expect("building a fragment");
        out
    };
    [
        fragment(0, true, &datagram[..24]),
        fragment(3, false, &datagram[24..]),
    ]
}

#[test]
fn ipv6_fragments_of_a_translated_datagram_follow_the_first_one() {
    if !require_privileges("ipv6_fragments_of_a_translated_datagram_follow_the_first_one") {
        return;
    }
    let dp = loaded(&three_backends6(Protocol::Udp, None));
    let payload = [5u8; 40];
    // The datagram as the client sends it and as the backend must get it, each with its own
    // checksum (in the first fragment, over the whole datagram).
    let sent = udp6_frame((CLIENT6, 5353), (VIP6, 80), &payload);
    let translated = udp6_frame((CLIENT6, 5353), (B1_6, 8080), &payload);
    let [first, later] = udp6_fragments(CLIENT6, VIP6, &sent[L3 + 40..], 7);
    let [first_out, later_out] = udp6_fragments(CLIENT6, B1_6, &translated[L3 + 40..], 7);
    assert_eq!(dp.tc(&first), (TCX_NEXT, first_out));
    // A later fragment has no ports: the first fragment's are remembered for it.
    assert_eq!(dp.tc(&later), (TCX_NEXT, later_out));
    assert_eq!(dp.counter(Counter::NewFlows), 1);
    // One whose first fragment was not seen (another id) is dropped, counted.
    let [_, stray] = udp6_fragments(CLIENT6, VIP6, &sent[L3 + 40..], 8);
    assert_eq!(dp.tc(&stray).0, TC_ACT_SHOT);
    assert_eq!(dp.counter(Counter::DropFragment), 1);
}

/// The node's NIC (the bed's external link) and the router behind it, in IPv6.
const NIC6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 1);
const ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 2);
const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x09, 0x02];
/// A far client (through the router), a pod on another node (through the router too), and
/// one on a third node reached through the client link, which plays a second NIC.
const EXT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 7);
const REMOTE_POD6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x50, 0, 0, 0, 0, 2);
const THIRD_NODE_POD6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x60, 0, 0, 0, 0, 2);

/// The bed of `ipv6_nodeports_are_forwarded_from_the_nic_by_xdp`: routes and permanent
/// neighbours in the node, so FIB lookups resolve at once. Its interfaces' indices and the
/// NIC's MAC.
fn external_bed6() -> (Topology, (u32, u32, [u8; 6])) {
    let topo = Topology::build(TopologyOptions {
        backends: 1,
        external: true,
        ipv6: true,
        ..TopologyOptions::default()
    })
    .expect("test bed");
    let router = ROUTER6.to_string();
    for route in ["2001:db8:77::/64", "2001:db8:50::/64"] {
        topo.node
            .ip(&["-6", "route", "add", route, "via", &router, "dev", "kx"])
            .expect("route");
    }
    topo.node
        .ip(&[
            "-6",
            "route",
            "add",
            "2001:db8:60::/64",
            "via",
            "2001:db8:1::2",
            "dev",
            "kc",
        ])
        .expect("route");
    let router_mac = ROUTER_MAC.map(|b| format!("{b:02x}")).join(":");
    for (addr, mac, dev) in [
        (router.as_str(), router_mac.as_str(), "kx"),
        ("2001:db8:1::2", "02:00:00:00:01:02", "kc"),
    ] {
        topo.node
            .ip(&[
                "-6",
                "neigh",
                "replace",
                addr,
                "lladdr",
                mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ])
            .expect("neighbour");
    }
    let index = |name: &str| topo.node.link_index(name).expect("index");
    let ifaces = (index("kx"), index("kc"), topo.node.mac("kx").expect("mac"));
    (topo, ifaces)
}

#[test]
fn ipv6_nodeports_are_forwarded_from_the_nic_by_xdp() {
    if !require_privileges("ipv6_nodeports_are_forwarded_from_the_nic_by_xdp") {
        return;
    }
    let (topo, (kx, kc, kx_mac)) = external_bed6();
    let outcomes = topo
        .node
        .run(move || {
            let nodeport = |port: u16, backend: Ipv6Addr| {
                let (_, mut f) = frontend(
                    Ipv6Addr::UNSPECIFIED,
                    port,
                    Protocol::Tcp,
                    &[(backend, 8080)],
                    None,
                );
                f.kind = FrontendKind::NodePort;
                (FrontendKey::node_port(true, port, Protocol::Tcp), f)
            };
            let mut dp = LoadedDatapath::load();
            dp.program(
                &[
                    nodeport(30_080, REMOTE_POD6),
                    nodeport(30_091, THIRD_NODE_POD6),
                ]
                .into_iter()
                .collect(),
            );
            let xdp: &mut Xdp = dp
                .ebpf
                .program_mut(names::PROG_XDP)
                .expect("xdp")
                .try_into()
                .expect("xdp type");
            xdp.attach("kx", XdpMode::default())
                .expect("attach XDP to kx");
            // `kc` takes redirected frames; NodePorts answer on the NIC's address; clients
            // outside the (empty) pod network are masqueraded, as kube-proxy does.
            let mut ifaces: HashMap<MapData, u32, u32> = dp.map(names::MAP_IFACES);
            ifaces
                .insert(kc, IFACE_F_INGRESS | IFACE_F_XDP_REDIRECT, 0)
                .expect("KP_IFACES");
            let mut node_addrs: HashMap<MapData, In6Addr, u32> = dp.map(names::MAP_NODE_ADDRS6);
            node_addrs
                .insert(
                    In6Addr::from(NIC6),
                    NODE_ADDR_F_LOCAL | NODE_ADDR_F_NODEPORT,
                    0,
                )
                .expect("KP_NODE_ADDRS6");
            dp.flows
                .write_config(&Config {
                    flags: CFG_F_LOCAL_BY_CIDR,
                    ..Config::DEFAULT
                })
                .expect("config");
            let nic = |frame: Vec<u8>| dp.xdp_received_on(names::PROG_XDP, kx, &frame);
            [
                nic(tcp6_frame((EXT6, 40_000), (NIC6, 30_080), SYN, b"")),
                nic(tcp6_frame(
                    (REMOTE_POD6, 8080),
                    (NIC6, 40_000),
                    SYN_ACK,
                    b"",
                )),
                nic(tcp6_frame((EXT6, 40_001), (NIC6, 30_091), SYN, b"")),
            ]
        })
        .expect("in the node namespace");
    // To a pod on another node: DNAT, masquerade to the NIC's address, hop limit decremented,
    // and straight back out of the NIC to the router.
    let (verdict, frame) = &outcomes[0];
    assert_eq!(*verdict, XDP_TX);
    let mut expected = tcp6_frame((NIC6, 40_000), (REMOTE_POD6, 8080), SYN, b"");
    expected[..6].copy_from_slice(&ROUTER_MAC);
    expected[6..12].copy_from_slice(&kx_mac);
    expected[L3 + 7] = 63;
    assert_eq!(frame, &expected);
    // Its reply, back to the client from the NodePort the same way.
    let (verdict, frame) = &outcomes[1];
    assert_eq!(*verdict, XDP_TX);
    let mut expected = tcp6_frame((NIC6, 30_080), (EXT6, 40_000), SYN_ACK, b"");
    expected[..6].copy_from_slice(&ROUTER_MAC);
    expected[6..12].copy_from_slice(&kx_mac);
    expected[L3 + 7] = 63;
    assert_eq!(frame, &expected);
    // Towards another NIC that takes redirected frames: XDP_REDIRECT.
    let (verdict, frame) = &outcomes[2];
    assert_eq!(*verdict, XDP_REDIRECT);
    assert_eq!(dst6(frame), (THIRD_NODE_POD6, 8080));
}
