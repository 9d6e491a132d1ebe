//! The egress program on hand-built packets (BPF_PROG_TEST_RUN), run inside the test bed's
//! node namespace so its FIB lookups see real routes and neighbours: DNAT of packets the
//! node sends towards a VIP, and where they go next.

mod support;

use std::net::Ipv4Addr;

use kproxy::dataplane::{
    ethtool,
    node_addrs::{NodeAddrs, NodePortAddresses},
};
use kproxy::model::{Desired, Protocol};
use kproxy_common::stats::Counter;
use kproxy_testbed::{Topology, TopologyOptions, require_privileges};
use support::{
    datapath::{LoadedDatapath, TC_ACT_REDIRECT, TC_ACT_SHOT, frontend},
    packets::{SYN, assert_checksums, dst, src, tcp_frame},
};

/// The node's own address on the client link (where a host process's packets come from).
const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
const UNROUTED: Ipv4Addr = Ipv4Addr::new(198, 18, 77, 2);
const REMOTE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x02];

fn vip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, 0, n)
}

#[test]
fn egress_dnat_goes_where_the_backend_is() {
    if !require_privileges("egress_dnat_goes_where_the_backend_is") {
        return;
    }
    let topo = Topology::build(TopologyOptions {
        backends: 1,
        ..TopologyOptions::default()
    })
    .expect("test bed");
    // The backend's MAC is known (a neighbour entry), so the lookup resolves it at once.
    topo.node
        .ip(&[
            "neigh",
            "replace",
            "198.18.2.2",
            "lladdr",
            "02:00:00:00:02:02",
            "dev",
            "kb1",
            "nud",
            "permanent",
        ])
        .expect("neighbour");
    let kb1_mac = topo.node.mac("kb1").expect("mac");
    let kb1_index = topo.node.link_index("kb1").expect("index");
    let results = topo
        .node
        .run(move || {
            let mut dp = LoadedDatapath::load();
            let desired: Desired = [
                frontend(vip(10), 80, Protocol::Tcp, &[(REMOTE, 8080)], None),
                frontend(vip(11), 80, Protocol::Tcp, &[(NODE, 8080)], None),
                frontend(vip(12), 80, Protocol::Tcp, &[(UNROUTED, 8080)], None),
            ]
            .into_iter()
            .collect();
            dp.program(&desired);
            let pin_dir = dp.bpffs.pin_path("kproxy");
            NodeAddrs::open(&pin_dir)
                .expect("node addresses")
                .refresh(&NodePortAddresses::All, None)
                .expect("refresh");
            let send = |n: u8| dp.tc_egress(&tcp_frame((NODE, 40_000), (vip(n), 80), SYN, b""));
            let out = [send(10), send(11), send(12)];
            (out, dp.counter(Counter::DropNoRoute), ethtool::index("lo"))
        })
        .expect("in the node namespace");
    let ([remote, local, unrouted], no_route, lo) = results;

    let (verdict, frame) = remote;
    assert_eq!(verdict, TC_ACT_REDIRECT, "sent out of the backend's link");
    assert_eq!(dst(&frame), (REMOTE, 8080));
    assert_eq!(src(&frame), (NODE, 40_000));
    assert_eq!(&frame[..6], &REMOTE_MAC, "to the backend's MAC");
    assert_eq!(&frame[6..12], &kb1_mac, "from the link's MAC");
    assert_checksums(&frame);
    assert_ne!(kb1_index, lo.expect("lo"));

    let (verdict, frame) = local;
    assert_eq!(
        verdict, TC_ACT_REDIRECT,
        "a backend on the node's own address goes back up through lo, not dropped"
    );
    assert_eq!(dst(&frame), (NODE, 8080));
    assert_eq!(&frame[..12], &[0; 12], "loopback's all-zero MACs");
    assert_checksums(&frame);

    let (verdict, frame) = unrouted;
    assert_eq!(verdict, TC_ACT_SHOT, "no route: dropped, and counted");
    assert_eq!(
        dst(&frame),
        (UNROUTED, 8080),
        "translated before the lookup"
    );
    assert_eq!(no_route, 1);
}
