//! NodePorts, load-balancer IPs, traffic policies and masquerade on hand-built packets
//! (BPF_PROG_TEST_RUN), run inside a test bed node namespace so FIB lookups see real routes
//! and neighbours. The XDP program runs as if the node's NIC (`kx`, with the program
//! attached) received each frame: it translates, masquerades and forwards with XDP_TX, or
//! hands the packet to the stack, every decision counted.

mod support;

use std::net::Ipv4Addr;

use aya::maps::{Array, HashMap, MapData, lpm_trie::Key, lpm_trie::LpmTrie};
use aya::programs::{Xdp, XdpMode};
use kproxy::model::{Desired, Frontend, FrontendKey, FrontendKind, Protocol, Scope, WhenEmpty};
use kproxy_common::{
    config::{CFG_F_LOCAL_BY_CIDR, CFG_F_LOCALHOST_NODEPORTS, Config},
    iface::{
        IFACE_F_INGRESS, IFACE_F_XDP_REDIRECT, NODE_ADDR_F_LOCAL, NODE_ADDR_F_NODEPORT,
        NodePortList,
    },
    lb::free_port_bit,
    names,
    stats::Counter,
};
use kproxy_testbed::{Topology, TopologyOptions, require_privileges};
use support::{
    datapath::{
        LoadedDatapath, TC_ACT_REDIRECT, TCX_NEXT, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX,
        frontend,
    },
    packets::{ACK, SYN, SYN_ACK, assert_checksums, dst, src, tcp_frame},
};

/// The node's NIC address (the test bed's external link) and the router behind it, which
/// leads to the far clients and to the other node's pods.
const NIC: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 1);
const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 2);
const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x09, 0x02];
/// A far external client, and one outside the load balancer's source ranges.
const EXT: Ipv4Addr = Ipv4Addr::new(198, 18, 77, 7);
const EXT_OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 77, 100);
/// A pod on another node (routed through the NIC) and one on this node (behind `kb1`).
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(198, 18, 50, 2);
const LOCAL_POD: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
const LOCAL_POD_GW: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
/// A pod on a third node, reached through the client link, which plays a second NIC that
/// takes redirected frames.
const THIRD_NODE_POD: Ipv4Addr = Ipv4Addr::new(198, 18, 60, 2);
/// This node's pod on the client link, inside the pod network of local-traffic detection.
const CLIENT_POD: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
const LB_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 5, 5);
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);

const ANY: Ipv4Addr = Ipv4Addr::UNSPECIFIED;

fn external(
    kind: FrontendKind,
    addr: Ipv4Addr,
    port: u16,
    endpoints: &[(Ipv4Addr, u16)],
) -> (FrontendKey, Frontend) {
    let (key, mut f) = frontend(addr, port, Protocol::Tcp, endpoints, None);
    f.kind = kind;
    (key, f)
}

/// The two entries of an externalTrafficPolicy Local NodePort: node-local endpoints for
/// external clients, cluster-wide ones for this node's own.
fn local_policy_nodeport(
    port: u16,
    local: &[(Ipv4Addr, u16)],
    cluster: &[(Ipv4Addr, u16)],
) -> [(FrontendKey, Frontend); 2] {
    let (key, mut all) = external(FrontendKind::NodePort, ANY, port, local);
    all.external_local = true;
    if local.is_empty() {
        all.when_empty = WhenEmpty::Drop;
    }
    let (mut internal_key, internal) = external(FrontendKind::NodePort, ANY, port, cluster);
    internal_key.scope = Scope::Internal;
    [(key, all), (internal_key, internal)]
}

fn desired() -> Desired {
    let mut lb = external(FrontendKind::LoadBalancer, LB_IP, 80, &[(REMOTE_POD, 8080)]);
    lb.1.source_ranges = vec!["198.18.77.0/28".parse().expect("cidr")];
    let mut all: Desired = [
        external(FrontendKind::NodePort, ANY, 30_080, &[(REMOTE_POD, 8080)]),
        external(FrontendKind::NodePort, ANY, 30_090, &[(LOCAL_POD, 8080)]),
        external(
            FrontendKind::NodePort,
            ANY,
            30_091,
            &[(THIRD_NODE_POD, 8080)],
        ),
        lb,
        frontend(CLUSTER_IP, 80, Protocol::Tcp, &[(LOCAL_POD, 8080)], None),
        // An external IP on the node's own address, on the port of a NodePort: its own
        // entry comes first, as kube-proxy's rules match it before KUBE-NODEPORTS.
        external(FrontendKind::ExternalIp, NIC, 30_093, &[(REMOTE_POD, 8080)]),
        external(FrontendKind::NodePort, ANY, 30_093, &[(LOCAL_POD, 8080)]),
    ]
    .into_iter()
    .collect();
    all.extend(local_policy_nodeport(
        30_081,
        &[(LOCAL_POD, 8080)],
        &[(LOCAL_POD, 8080), (REMOTE_POD, 8080)],
    ));
    all.extend(local_policy_nodeport(30_082, &[], &[(REMOTE_POD, 8080)]));
    all
}

/// What each case saw: verdict and frame out.
type Out = (u32, Vec<u8>);

struct Seen {
    nodeport_remote: Out,
    nodeport_remote_reply: Out,
    client_port_is_nodeport: Out,
    client_port_is_nodeport_reply: Out,
    nodeport_local: Out,
    nodeport_other_nic: Out,
    local_policy_external: Out,
    local_policy_pod: (i32, Vec<u8>),
    local_policy_none_here: Out,
    lb_allowed: Out,
    lb_outside: Out,
    not_a_nodeport_address: Out,
    cluster_ip_off_cluster: (i32, Vec<u8>),
    cluster_ip_pod: (i32, Vec<u8>),
    hairpin: (i32, Vec<u8>),
    hairpin_reply: (i32, Vec<u8>),
    forward_only: Out,
    localhost_nodeport: (i32, Vec<u8>),
    localhost_reply: Out,
    localhost_from_outside: Out,
    exact_before_nodeport: Out,
    counters: Vec<(Counter, u64)>,
    kx_mac: [u8; 6],
}

/// A live NodePort flow's next packet, then what removing its NodePort and adding it back
/// does (seen after `Seen`, whose counters stop before).
struct NodePortChanges {
    live: Out,
    /// A packet of the flow of `nodeport_other_nic` once its NodePort is gone.
    removed: Out,
    /// `KP_FREE_PORTS` then says of 30080 and of the removed port whether they are free.
    free_after_removal: [bool; 2],
    /// A new connection once the NodePort is back.
    readded: Out,
}

/// The node's interfaces the cases use.
#[derive(Clone, Copy)]
struct Ifaces {
    kx: u32,
    kc: u32,
    kb1: u32,
    kx_mac: [u8; 6],
}

fn node_addr(dp: &LoadedDatapath, addr: Ipv4Addr, flags: u32) {
    let mut map: HashMap<MapData, u32, u32> = dp.map(names::MAP_NODE_ADDRS);
    map.insert(u32::from_ne_bytes(addr.octets()), flags, 0)
        .expect("KP_NODE_ADDRS");
}

/// `KP_NODEPORT_LIST` as the agent writes it: the NIC's address, marked if a frontend uses
/// it as its own (`exact`).
fn nodeport_list(dp: &LoadedDatapath, exact: bool) {
    let mut list: Array<MapData, NodePortList> = dp.map(names::MAP_NODEPORT_LIST);
    let mut value = NodePortList {
        count: 1,
        exact_mask: u32::from(exact),
        ..NodePortList::default()
    };
    value.addrs[0] = u32::from_ne_bytes(NIC.octets());
    list.set(0, value, 0).expect("KP_NODEPORT_LIST");
}

/// The node as the agent would set it up: `kc` a second NIC that takes redirected frames,
/// NodePorts on the NIC's address (listed in `KP_NODEPORT_LIST` too, without frontends of
/// its own: until the last case, which adds one), the pod network for local-traffic
/// detection.
fn configure(dp: &mut LoadedDatapath, kc: u32) {
    // `kc` plays a second NIC: XDP may redirect frames to it.
    let mut ifaces_map: HashMap<MapData, u32, u32> = dp.map(names::MAP_IFACES);
    ifaces_map
        .insert(kc, IFACE_F_INGRESS | IFACE_F_XDP_REDIRECT, 0)
        .expect("KP_IFACES");
    // NodePorts answer on the NIC address only; the pod link's address is the node's too.
    node_addr(dp, NIC, NODE_ADDR_F_LOCAL | NODE_ADDR_F_NODEPORT);
    node_addr(
        dp,
        Ipv4Addr::LOCALHOST,
        NODE_ADDR_F_LOCAL | NODE_ADDR_F_NODEPORT,
    );
    node_addr(dp, LOCAL_POD_GW, NODE_ADDR_F_LOCAL);
    nodeport_list(dp, false);
    // The pod network is 198.18.1.0/24 and 198.18.2.0/24 (ClusterCIDR detection).
    let mut cidrs: LpmTrie<MapData, u32, u8> = dp.map(names::MAP_LOCAL_CIDRS);
    for net in [[198, 18, 1, 0], [198, 18, 2, 0]] {
        cidrs
            .insert(&Key::new(24, u32::from_ne_bytes(net)), 1, 0)
            .expect("KP_LOCAL_CIDRS");
    }
    dp.flows
        .write_config(&Config {
            flags: CFG_F_LOCAL_BY_CIDR | CFG_F_LOCALHOST_NODEPORTS,
            ..Config::DEFAULT
        })
        .expect("config");
}

fn run_cases(ifaces: Ifaces) -> (Seen, NodePortChanges) {
    let Ifaces {
        kx,
        kc,
        kb1,
        kx_mac,
    } = ifaces;
    let mut dp = LoadedDatapath::load();
    dp.program(&desired());
    // The XDP program on the NIC: the kernel runs test frames "received" there only then.
    let xdp: &mut Xdp = dp
        .ebpf
        .program_mut(names::PROG_XDP)
        .expect("xdp")
        .try_into()
        .expect("xdp type");
    xdp.attach("kx", XdpMode::default())
        .expect("attach XDP to kx");
    // The benchmark's ceiling, loaded (never attached) to run it on the same frames.
    let ceiling: &mut Xdp = dp
        .ebpf
        .program_mut(names::PROG_XDP_FORWARD_ONLY)
        .expect("forward-only program")
        .try_into()
        .expect("xdp type");
    ceiling.load().expect("load the forward-only program");
    configure(&mut dp, kc);

    let nic = |frame: Vec<u8>| dp.xdp_received_on(names::PROG_XDP, kx, &frame);
    let tc_on = |ifindex: u32, frame: Vec<u8>| dp.tc_received_on(ifindex, &frame);
    let syn = |from: (Ipv4Addr, u16), to: (Ipv4Addr, u16)| tcp_frame(from, to, SYN, b"");
    // A client whose own port is the NodePort: masqueraded with that port kept, the
    // backend's replies to NIC:30080 would be taken for new connections to the NodePort.
    let client_port_is_nodeport = nic(syn((EXT, 30_080), (NIC, 30_080)));
    let given_port = src(&client_port_is_nodeport.1).1;
    let client_port_is_nodeport_reply = nic(tcp_frame(
        (REMOTE_POD, 8080),
        (NIC, given_port),
        SYN_ACK,
        b"",
    ));
    let seen = Seen {
        client_port_is_nodeport,
        client_port_is_nodeport_reply,
        nodeport_remote: nic(syn((EXT, 40_000), (NIC, 30_080))),
        nodeport_remote_reply: nic(tcp_frame((REMOTE_POD, 8080), (NIC, 40_000), SYN_ACK, b"")),
        nodeport_local: nic(syn((EXT, 40_001), (NIC, 30_090))),
        nodeport_other_nic: nic(syn((EXT, 40_012), (NIC, 30_091))),
        local_policy_external: nic(syn((EXT, 40_002), (NIC, 30_081))),
        local_policy_pod: tc_on(kc, syn((CLIENT_POD, 40_003), (NIC, 30_081))),
        local_policy_none_here: nic(syn((EXT, 40_004), (NIC, 30_082))),
        lb_allowed: nic(syn((EXT, 40_005), (LB_IP, 80))),
        lb_outside: nic(syn((EXT_OUTSIDE, 40_006), (LB_IP, 80))),
        not_a_nodeport_address: nic(syn((EXT, 40_007), (LOCAL_POD_GW, 30_080))),
        cluster_ip_off_cluster: tc_on(kx, syn((EXT, 40_008), (CLUSTER_IP, 80))),
        cluster_ip_pod: tc_on(kc, syn((CLIENT_POD, 40_009), (CLUSTER_IP, 80))),
        hairpin: tc_on(kb1, syn((LOCAL_POD, 40_010), (CLUSTER_IP, 80))),
        hairpin_reply: tc_on(
            kb1,
            tcp_frame((LOCAL_POD, 8080), (LOCAL_POD_GW, 40_010), SYN_ACK, b""),
        ),
        forward_only: dp.xdp_received_on(
            names::PROG_XDP_FORWARD_ONLY,
            kx,
            &syn((EXT, 40_011), (REMOTE_POD, 8080)),
        ),
        // The node's own client on 127.0.0.1 (test runs default to `lo`), its reply, and
        // a loopback destination arriving on the NIC.
        localhost_nodeport: dp.tc(&syn(
            (Ipv4Addr::LOCALHOST, 40_020),
            (Ipv4Addr::LOCALHOST, 30_080),
        )),
        localhost_reply: nic(tcp_frame((REMOTE_POD, 8080), (NIC, 40_020), SYN_ACK, b"")),
        localhost_from_outside: nic(syn((EXT, 40_021), (Ipv4Addr::LOCALHOST, 30_080))),
        exact_before_nodeport: {
            nodeport_list(&dp, true);
            nic(syn((EXT, 40_022), (NIC, 30_093)))
        },
        counters: [
            Counter::Masqueraded,
            Counter::PortRemapped,
            Counter::XdpTx,
            Counter::XdpRedirect,
            Counter::XdpPassOtherInterface,
            Counter::DropNoLocalEndpoint,
            Counter::DropSourceRange,
            Counter::DropMartianLocalhost,
        ]
        .into_iter()
        .map(|c| (c, dp.counter(c)))
        .collect(),
        kx_mac,
    };
    (seen, nodeport_changes(&mut dp, kx))
}

fn nodeport_changes(dp: &mut LoadedDatapath, kx: u32) -> NodePortChanges {
    let nic = |dp: &LoadedDatapath, frame: Vec<u8>| dp.xdp_received_on(names::PROG_XDP, kx, &frame);
    let live = nic(dp, tcp_frame((EXT, 40_000), (NIC, 30_080), ACK, b"data"));
    let mut without = desired();
    without.retain(|key, _| key.port != 30_091);
    dp.program(&without);
    let removed = nic(dp, tcp_frame((EXT, 40_012), (NIC, 30_091), ACK, b"late"));
    let free_ports: Array<MapData, u64> = dp.map(names::MAP_FREE_PORTS);
    let free_after_removal = [30_080u16, 30_091].map(|port| {
        let (word, bit) = free_port_bit(port.to_be());
        free_ports.get(&word, 0).expect("KP_FREE_PORTS") & bit != 0
    });
    dp.program(&desired());
    let readded = nic(dp, tcp_frame((EXT, 40_013), (NIC, 30_091), SYN, b""));
    NodePortChanges {
        live,
        removed,
        free_after_removal,
        readded,
    }
}

/// The test bed's node with a router on its NIC's link leading to far clients and to the
/// other node's pods.
fn bed() -> (Topology, Ifaces) {
    let topo = Topology::build(TopologyOptions {
        backends: 1,
        external: true,
        ..TopologyOptions::default()
    })
    .expect("test bed");
    let router = ROUTER.to_string();
    for route in ["198.18.77.0/24", "198.18.50.0/24"] {
        topo.node
            .ip(&["route", "add", route, "via", &router, "dev", "kx"])
            .expect("route");
    }
    topo.node
        .ip(&[
            "route",
            "add",
            "198.18.60.0/24",
            "via",
            "198.18.1.2",
            "dev",
            "kc",
        ])
        .expect("route");
    // Next hops with known MACs, so lookups resolve at once: the router, and this node's
    // pod (whose link takes no redirected frames).
    let router_mac = ROUTER_MAC.map(|b| format!("{b:02x}")).join(":");
    let pod = LOCAL_POD.to_string();
    let neighbours = [
        (router.as_str(), router_mac.as_str(), "kx"),
        (pod.as_str(), "02:00:00:00:02:02", "kb1"),
        ("198.18.1.2", "02:00:00:00:01:02", "kc"),
    ];
    for (addr, mac, dev) in neighbours {
        topo.node
            .ip(&[
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
    let ifaces = Ifaces {
        kx: index("kx"),
        kc: index("kc"),
        kb1: index("kb1"),
        kx_mac: topo.node.mac("kx").expect("mac"),
    };
    (topo, ifaces)
}

#[test]
fn external_traffic_is_translated_masqueraded_and_forwarded_as_kube_proxy_would() {
    if !require_privileges("external_traffic_is_translated_masqueraded_and_forwarded") {
        return;
    }
    let (topo, ifaces) = bed();
    let (seen, changes) = topo
        .node
        .run(move || run_cases(ifaces))
        .expect("in the node namespace");
    assert_forwarding(&seen);
    assert_policies(&seen);
    assert_nodeport_changes(&changes);
}

/// A live flow's packets on the fast path (forward entry before frontend), and NodePorts
/// that go and come back.
fn assert_nodeport_changes(changes: &NodePortChanges) {
    let (verdict, frame) = &changes.live;
    assert_eq!(*verdict, XDP_TX);
    assert_eq!(dst(frame), (REMOTE_POD, 8080), "the flow's backend");
    assert_eq!(src(frame), (NIC, 40_000), "masqueraded as its first packet");
    assert_checksums(frame);
    // Its frontend gone, the flow's next packet is no service's: untranslated.
    let (verdict, frame) = &changes.removed;
    assert_eq!(*verdict, XDP_PASS);
    assert_eq!(
        dst(frame),
        (NIC, 30_091),
        "not sent to the removed NodePort's backend"
    );
    assert_eq!(src(frame), (EXT, 40_012));
    assert_eq!(
        changes.free_after_removal,
        [false, true],
        "30080 still a NodePort's; 30091 free once its last entry is gone"
    );
    // Back again: its port is not free any more, new connections reach it.
    let (verdict, frame) = &changes.readded;
    assert_eq!(*verdict, XDP_REDIRECT);
    assert_eq!(dst(frame), (THIRD_NODE_POD, 8080));
    assert_checksums(frame);
}

impl Seen {
    fn counter(&self, c: Counter) -> u64 {
        self.counters
            .iter()
            .find(|(k, _)| *k == c)
            .map(|(_, v)| *v)
            .expect("counter read")
    }
}

/// NodePorts and the XDP fast path's decisions.
fn assert_forwarding(seen: &Seen) {
    let counter = |c| seen.counter(c);

    // A NodePort whose backend is on another node: DNAT, masquerade to the NIC's address
    // (the route's source towards the pod), sent back out of the NIC to the router.
    let (verdict, frame) = &seen.nodeport_remote;
    assert_eq!(*verdict, XDP_TX, "forwarded from the NIC itself");
    assert_eq!(dst(frame), (REMOTE_POD, 8080));
    assert_eq!(src(frame), (NIC, 40_000), "masqueraded, client port kept");
    assert_eq!(frame[14 + 8], 63, "TTL decremented like forwarding does");
    assert_eq!(&frame[..6], &ROUTER_MAC, "to the next hop");
    assert_eq!(&frame[6..12], &seen.kx_mac, "from the NIC");
    assert_checksums(frame);
    // Its reply: back to the client from the NodePort, again straight out of the NIC.
    let (verdict, frame) = &seen.nodeport_remote_reply;
    assert_eq!(*verdict, XDP_TX);
    assert_eq!(src(frame), (NIC, 30_080), "the NodePort the client reached");
    assert_eq!(
        dst(frame),
        (EXT, 40_000),
        "the client's own address restored"
    );
    assert_checksums(frame);

    // A client port equal to the NodePort is not kept: the backend would answer to the
    // NodePort itself. Its replies find their flow.
    let (verdict, frame) = &seen.client_port_is_nodeport;
    assert_eq!(*verdict, XDP_TX);
    assert_eq!(dst(frame), (REMOTE_POD, 8080));
    let (masq_addr, given_port) = src(frame);
    assert_eq!(masq_addr, NIC, "masqueraded");
    assert_ne!(
        given_port, 30_080,
        "the NodePort is never a masqueraded port"
    );
    assert_eq!(counter(Counter::PortRemapped), 1);
    assert_checksums(frame);
    let (verdict, frame) = &seen.client_port_is_nodeport_reply;
    assert_eq!(
        *verdict, XDP_TX,
        "translated back, not balanced as a new connection"
    );
    assert_eq!(src(frame), (NIC, 30_080));
    assert_eq!(dst(frame), (EXT, 30_080), "the client's own port restored");
    assert_checksums(frame);

    // A NodePort whose backend is on this node: translated, then up the stack (the pod's
    // veth takes no redirected frames).
    let (verdict, frame) = &seen.nodeport_local;
    assert_eq!(*verdict, XDP_PASS);
    assert_eq!(dst(frame), (LOCAL_POD, 8080));
    assert_eq!(
        src(frame).0,
        LOCAL_POD_GW,
        "masqueraded to the address of the pod's link"
    );
    assert_checksums(frame);

    // Towards another NIC that takes redirected frames: XDP_REDIRECT.
    let (verdict, frame) = &seen.nodeport_other_nic;
    assert_eq!(*verdict, XDP_REDIRECT);
    assert_eq!(dst(frame), (THIRD_NODE_POD, 8080));
    assert_eq!(
        &frame[..6],
        &[0x02, 0, 0, 0, 0x01, 0x02],
        "to that link's next hop"
    );
    assert_checksums(frame);

    // The benchmark's ceiling forwards the same way, without translating.
    let (verdict, frame) = &seen.forward_only;
    assert_eq!(*verdict, XDP_TX);
    assert_eq!(src(frame), (EXT, 40_011));
    assert_eq!(dst(frame), (REMOTE_POD, 8080));
    assert_eq!(frame[14 + 8], 63);
    assert_eq!(&frame[..6], &ROUTER_MAC);
    assert_checksums(frame);

    assert_eq!(counter(Counter::XdpTx), 7, "six translated, one plain");
    assert_eq!(counter(Counter::XdpRedirect), 1);
    assert_eq!(
        counter(Counter::XdpPassOtherInterface),
        2,
        "the two translated for this node's pod"
    );
}

/// Traffic policies, source ranges, masquerade and hairpin.
fn assert_policies(seen: &Seen) {
    let counter = |c| seen.counter(c);
    // externalTrafficPolicy Local: external clients keep their address and get a local
    // endpoint; this node's pods go cluster-wide without masquerade; with no local endpoint
    // external traffic is dropped.
    let (verdict, frame) = &seen.local_policy_external;
    assert_eq!(*verdict, XDP_PASS);
    assert_eq!(dst(frame), (LOCAL_POD, 8080));
    assert_eq!(src(frame), (EXT, 40_002), "the client's address preserved");
    let (verdict, frame) = &seen.local_policy_pod;
    assert_eq!(*verdict, TCX_NEXT);
    assert_eq!(src(frame), (CLIENT_POD, 40_003), "a pod is not masqueraded");
    assert!(
        [(LOCAL_POD, 8080), (REMOTE_POD, 8080)].contains(&dst(frame)),
        "a cluster-wide endpoint"
    );
    assert_eq!(seen.local_policy_none_here.0, XDP_DROP);
    assert_eq!(counter(Counter::DropNoLocalEndpoint), 1);

    // loadBalancerSourceRanges.
    assert_eq!(seen.lb_allowed.0, XDP_TX);
    assert_eq!(dst(&seen.lb_allowed.1), (REMOTE_POD, 8080));
    assert_eq!(seen.lb_outside.0, XDP_DROP);
    assert_eq!(dst(&seen.lb_outside.1), (LB_IP, 80), "dropped untranslated");
    assert_eq!(counter(Counter::DropSourceRange), 1);

    // NodePorts answer only on the addresses marked for them.
    let (verdict, frame) = &seen.not_a_nodeport_address;
    assert_eq!(*verdict, XDP_PASS);
    assert_eq!(dst(frame), (LOCAL_POD_GW, 30_080), "left alone");

    // A cluster IP from outside the pod network is masqueraded; from a pod it is not.
    let (verdict, frame) = &seen.cluster_ip_off_cluster;
    assert_eq!(*verdict, TCX_NEXT);
    assert_eq!(dst(frame), (LOCAL_POD, 8080));
    assert_eq!(src(frame).0, LOCAL_POD_GW, "masqueraded");
    assert_checksums(frame);
    let (_, frame) = &seen.cluster_ip_pod;
    assert_eq!(src(frame), (CLIENT_POD, 40_009), "a pod keeps its address");

    // Hairpin: a pod landing on itself talks to the node's address, and its reply comes
    // back from the cluster IP.
    let (_, frame) = &seen.hairpin;
    assert_eq!(dst(frame), (LOCAL_POD, 8080));
    assert_eq!(src(frame), (LOCAL_POD_GW, 40_010));
    assert_checksums(frame);
    let (verdict, frame) = &seen.hairpin_reply;
    assert_eq!(*verdict, TCX_NEXT);
    assert_eq!(src(frame), (CLUSTER_IP, 80));
    assert_eq!(dst(frame), (LOCAL_POD, 40_010));
    assert_checksums(frame);

    // Localhost NodePorts (kube-proxy iptables mode): masqueraded to the address of the
    // route towards the backend and routed out; the reply gets 127.0.0.1 back and goes up
    // the stack; a loopback destination from outside is dropped.
    let (verdict, frame) = &seen.localhost_nodeport;
    assert_eq!(
        *verdict, TC_ACT_REDIRECT,
        "routed from lo towards the backend"
    );
    assert_eq!(dst(frame), (REMOTE_POD, 8080));
    assert_eq!(src(frame), (NIC, 40_020));
    assert_checksums(frame);
    let (verdict, frame) = &seen.localhost_reply;
    assert_eq!(*verdict, XDP_PASS);
    assert_eq!(src(frame), (Ipv4Addr::LOCALHOST, 30_080));
    assert_eq!(dst(frame), (Ipv4Addr::LOCALHOST, 40_020));
    assert_checksums(frame);
    assert_eq!(seen.localhost_from_outside.0, XDP_DROP);
    assert_eq!(counter(Counter::DropMartianLocalhost), 1);

    // An external IP on the node's address wins over a NodePort on the same port.
    let (verdict, frame) = &seen.exact_before_nodeport;
    assert_eq!(*verdict, XDP_TX);
    assert_eq!(dst(frame), (REMOTE_POD, 8080), "the external IP's endpoint");

    // Masqueraded: NodePorts (remote, client port = NodePort, local, third node,
    // localhost), LB, cluster IP off-cluster, hairpin, external IP.
    assert_eq!(counter(Counter::Masqueraded), 9);
}
