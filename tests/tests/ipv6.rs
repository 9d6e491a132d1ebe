//! IPv6 and dual-stack Services end to end: the agent binary in a dual-stack node namespace
//! (TESTBED.md: 2001:db8::/32), real TCP and UDP clients and servers over IPv6, traffic
//! through the kernel's TC hooks.

mod support;

use std::{
    collections::BTreeMap,
    io::ErrorKind,
    net::{Ipv6Addr, SocketAddrV4, SocketAddrV6},
    time::{Duration, Instant},
};

use kproxy_testbed::{
    TcpSession, TopologyOptions, UdpSession, require_privileges, tcp_request,
    topology::{vip, vip6},
    udp_request,
};
use support::{
    agent::{Agent, Bed, TCP_PORT, UDP_PORT, assert_spread_per_cpu, clients_on_one_cpu},
    manifests::{documents, dual_stack_service, service, slice, slice6},
};

const TIMEOUT: Duration = Duration::from_secs(2);

fn dual_stack_bed() -> Bed {
    Bed::new(TopologyOptions {
        ipv6: true,
        ..TopologyOptions::default()
    })
}

fn v6(addr: Ipv6Addr, port: u16) -> SocketAddrV6 {
    SocketAddrV6::new(addr, port, 0, 0)
}

/// `web6` (TCP 80 → 8080) and `dns6` (UDP 53 → 5353) on the IPv6 addresses of `backends`.
fn web_and_dns6(backends: &[Ipv6Addr], affinity: Option<u32>) -> String {
    documents(&[
        service("web6", vip6(10), &[("http", 80, "TCP")], affinity),
        slice6("web6-1", "web6", &[("http", TCP_PORT, "TCP")], backends),
        service("dns6", vip6(53), &[("dns", 53, "UDP")], None),
        slice6("dns6-1", "dns6", &[("dns", UDP_PORT, "UDP")], backends),
    ])
}

/// Which backends `n` new connections from the client to `target` reached.
fn backend_counts(bed: &Bed, target: SocketAddrV6, n: usize) -> BTreeMap<Ipv6Addr, usize> {
    let mut counts = BTreeMap::new();
    for i in 0..n {
        let reply = tcp_request(&bed.topo.client, target, TIMEOUT)
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(
            *reply.peer.ip(),
            bed.topo.client_addr6(),
            "the backend sees the client's own address"
        );
        *counts.entry(*reply.backend.ip()).or_insert(0) += 1;
    }
    counts
}

#[test]
fn ipv6_round_robin_spreads_connections_and_udp_replies_come_from_the_vip() {
    if !require_privileges("ipv6_round_robin_spreads_connections_and_udp_replies_come_from_the_vip")
    {
        return;
    }
    let bed = dual_stack_bed();
    bed.write("apps.yaml", &web_and_dns6(&bed.backends6(), None));
    let _agent = Agent::start(&bed, &[]);
    clients_on_one_cpu();
    let counts = backend_counts(&bed, v6(vip6(10), 80), 60);
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|&n| n == 20), "{counts:?}");

    // A connected socket accepts only datagrams from the VIP itself.
    let session = UdpSession::connect(&bed.topo.client, v6(vip6(53), 53), TIMEOUT).expect("udp");
    for _ in 0..3 {
        let reply = session.request().expect("a reply from the VIP");
        assert_eq!(*reply.peer.ip(), bed.topo.client_addr6());
        assert_eq!(reply.backend.port(), UDP_PORT);
    }
}

#[test]
fn ipv6_client_ip_affinity_keeps_a_client_on_one_backend() {
    if !require_privileges("ipv6_client_ip_affinity_keeps_a_client_on_one_backend") {
        return;
    }
    let bed = dual_stack_bed();
    bed.write("apps.yaml", &web_and_dns6(&bed.backends6(), Some(600)));
    let _agent = Agent::start(&bed, &[]);
    let counts = backend_counts(&bed, v6(vip6(10), 80), 20);
    assert_eq!(counts.len(), 1, "{counts:?}");
}

#[test]
fn an_ipv6_service_without_endpoints_refuses_connections() {
    if !require_privileges("an_ipv6_service_without_endpoints_refuses_connections") {
        return;
    }
    let bed = dual_stack_bed();
    bed.write("apps.yaml", &web_and_dns6(&[], None));
    let _agent = Agent::start(&bed, &[]);
    let started = Instant::now();
    let err = tcp_request(&bed.topo.client, v6(vip6(10), 80), TIMEOUT)
        .expect_err("no endpoints: refused");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    // By the first SYN's reject, or the retransmitted one's (a second later): on this bed the
    // reject reaches the client within its own connect() call, while the socket is locked,
    // and Linux then keeps the error for later (`TcpExtLockDroppedIcmps`) whoever sent it;
    // the IPv4 test's first SYN waits for ARP instead, and is refused at once.
    assert!(
        started.elapsed() < Duration::from_millis(1_500),
        "refused after {:?}",
        started.elapsed()
    );
    let session = UdpSession::connect(&bed.topo.client, v6(vip6(53), 53), TIMEOUT).expect("udp");
    let err = session.request().expect_err("no endpoints: refused");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    let view = bed.view().expect("datapath");
    assert!(view.counters["rejected"] >= 2, "{:?}", view.counters);
}

#[test]
fn ipv6_endpoint_changes_apply_live() {
    if !require_privileges("ipv6_endpoint_changes_apply_live") {
        return;
    }
    let bed = dual_stack_bed();
    let backends = bed.backends6();
    bed.write("apps.yaml", &web_and_dns6(&backends, None));
    let _agent = Agent::start(&bed, &[]);
    clients_on_one_cpu();
    assert_eq!(backend_counts(&bed, v6(vip6(10), 80), 6).len(), 3);
    bed.write("apps.yaml", &web_and_dns6(&backends[..1], None));
    let frontend = format!("[{}]:80/TCP", vip6(10));
    let target = [format!("[{}]:{TCP_PORT}", backends[0])];
    support::agent::wait_until("the endpoint removed", TIMEOUT, || {
        let view = bed.view()?;
        let svc = view.services.iter().find(|s| s.frontend == frontend)?;
        let got: Vec<String> = svc.backends.iter().map(|b| b.address.clone()).collect();
        (got == target).then_some(())
    });
    let counts = backend_counts(&bed, v6(vip6(10), 80), 6);
    assert_eq!(counts.keys().copied().collect::<Vec<_>>(), [backends[0]]);
}

#[test]
fn a_dual_stack_service_is_reached_over_both_families_from_one_client() {
    if !require_privileges("a_dual_stack_service_is_reached_over_both_families_from_one_client") {
        return;
    }
    let bed = dual_stack_bed();
    let port = [("http", 80, "TCP")];
    let endpoints = [("http", TCP_PORT, "TCP")];
    bed.write(
        "apps.yaml",
        &documents(&[
            dual_stack_service("web", (vip(10), vip6(10)), &port, None),
            slice("web-v4", "web", &endpoints, &bed.backends()),
            slice6("web-v6", "web", &endpoints, &bed.backends6()),
        ]),
    );
    let _agent = Agent::start(&bed, &[]);
    let over_v4 =
        tcp_request(&bed.topo.client, SocketAddrV4::new(vip(10), 80), TIMEOUT).expect("over IPv4");
    assert!(bed.backends().contains(over_v4.backend.ip()));
    assert_eq!(*over_v4.peer.ip(), bed.topo.client_addr());
    let over_v6 = tcp_request(&bed.topo.client, v6(vip6(10), 80), TIMEOUT).expect("over IPv6");
    assert!(bed.backends6().contains(over_v6.backend.ip()));
    assert_eq!(*over_v6.peer.ip(), bed.topo.client_addr6());
}

#[test]
fn ipv6_path_mtu_discovery_through_a_clusterip_completes() {
    if !require_privileges("ipv6_path_mtu_discovery_through_a_clusterip_completes") {
        return;
    }
    let bed = dual_stack_bed();
    bed.write("apps.yaml", &web_and_dns6(&bed.backends6()[..1], None));
    // The path to the backend is narrower than both ends (1280, IPv6's minimum, against the
    // links' 1500): only the node's Packet Too Big can tell the client, and IPv6 routers never
    // fragment.
    let subnet = bed.topo.backend_subnet6(0);
    bed.topo
        .node
        // Metric 256: the kernel's own route for the link's subnet, replaced in place.
        .ip(&[
            "-6", "route", "replace", &subnet, "dev", "kb1", "metric", "256", "mtu", "lock", "1280",
        ])
        .expect("narrow route");
    let _agent = Agent::start(&bed, &[]);
    let mut session =
        TcpSession::connect(&bed.topo.client, v6(vip6(10), 80), Duration::from_secs(5))
            .expect("connect");
    let started = Instant::now();
    let reply = session
        .request_large(32 * 1024)
        .expect("a 32 KiB request passes once the client learned the path MTU");
    assert_eq!(*reply.backend.ip(), bed.topo.backend_addr6(0));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    let view = bed.view().expect("datapath");
    assert!(
        view.counters["icmp_error_translated"] > 0,
        "the node's Packet Too Big was translated"
    );
}

#[test]
fn the_xdp_program_serves_ipv6_on_a_nic() {
    if !require_privileges("the_xdp_program_serves_ipv6_on_a_nic") {
        return;
    }
    // As `clusterip.rs`'s test: complete checksums from the client's link, XDP on it.
    let bed = Bed::new(TopologyOptions {
        ipv6: true,
        client_tx_checksum_offload: false,
        ..TopologyOptions::default()
    });
    bed.write("apps.yaml", &web_and_dns6(&bed.backends6(), None));
    let backend_links: Vec<String> = (0..3).map(|i| bed.topo.backend_iface(i)).collect();
    let _agent = Agent::start_with(
        &bed,
        &[
            "--attach",
            &backend_links.join(","),
            "--xdp",
            bed.topo.client_iface(),
        ],
        &[],
    );
    let counts = backend_counts(&bed, v6(vip6(10), 80), 30);
    assert_spread_per_cpu(&counts.values().copied().collect::<Vec<_>>(), 3, 30);
    udp_request(&bed.topo.client, v6(vip6(53), 53), TIMEOUT).expect("udp through xdp");
    let counters = bed.view().expect("datapath").counters;
    assert_eq!(counters["xdp_deferred_to_tc"], 0, "{counters:?}");
    // Translated in XDP, and routed there by an IPv6 FIB lookup: the backends' links are not
    // marked for redirects, so the stack sends the packets on.
    assert!(counters["xdp_pass_other_interface"] > 0, "{counters:?}");
}

#[test]
fn node_processes_reach_ipv6_services_through_egress() {
    if !require_privileges("node_processes_reach_ipv6_services_through_egress") {
        return;
    }
    let bed = dual_stack_bed();
    bed.write("apps.yaml", &web_and_dns6(&bed.backends6(), None));
    bed.write(
        "empty.yaml",
        &documents(&[service("empty6", vip6(20), &[("http", 80, "TCP")], None)]),
    );
    let _agent = Agent::start(&bed, &[]);
    clients_on_one_cpu();
    // Host processes reach VIPs through the node's routes (via the client's link, standing in
    // for a default gateway): the egress program translates them before they leave.
    bed.topo
        .node
        .ip(&[
            "-6",
            "route",
            "add",
            "2001:db8:ffff::/64",
            "via",
            "2001:db8:1::2",
            "dev",
            "kc",
        ])
        .expect("VIP route");
    let node = &bed.topo.node;
    bed.forget_backend_neighbours();
    let mut counts = BTreeMap::new();
    for _ in 0..30 {
        let reply = tcp_request(node, v6(vip6(10), 80), TIMEOUT).expect("node-local request");
        assert_eq!(
            *reply.peer.ip(),
            "2001:db8:1::1".parse::<Ipv6Addr>().expect("address"),
            "the node's own source address"
        );
        *counts.entry(*reply.backend.ip()).or_insert(0) += 1;
    }
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        [10, 10, 10],
        "{counts:?}"
    );
    // The first SYN to each backend waited for neighbour discovery: none was lost.
    assert_eq!(bed.node_tcp_retransmissions(), 0, "SYNs were retransmitted");
    udp_request(node, v6(vip6(53), 53), TIMEOUT).expect("node-local UDP");
    let err = tcp_request(node, v6(vip6(20), 80), TIMEOUT).expect_err("no endpoints");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
}

#[test]
fn an_ipv6_nodeport_serves_clients_on_the_node_address() {
    if !require_privileges("an_ipv6_nodeport_serves_clients_on_the_node_address") {
        return;
    }
    let bed = dual_stack_bed();
    let nodeport = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: np6\n  namespace: default\nspec:\n  type: NodePort\n  ipFamilies: [IPv6]\n  clusterIP: {vip}\n  clusterIPs: [\"{vip}\"]\n  ports:\n  - name: http\n    port: 80\n    nodePort: 30080\n    protocol: TCP\n    targetPort: http\n",
        vip = vip6(30)
    );
    bed.write(
        "apps.yaml",
        &documents(&[
            nodeport,
            slice6(
                "np6-1",
                "np6",
                &[("http", TCP_PORT, "TCP")],
                &bed.backends6(),
            ),
        ]),
    );
    let _agent = Agent::start(&bed, &[]);
    clients_on_one_cpu();
    let node_addr: Ipv6Addr = "2001:db8:1::1".parse().expect("address");
    let mut counts = BTreeMap::new();
    for i in 0..30 {
        let reply = tcp_request(&bed.topo.client, v6(node_addr, 30080), TIMEOUT)
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        *counts.entry(*reply.backend.ip()).or_insert(0) += 1;
    }
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        [10, 10, 10],
        "{counts:?}"
    );
}

#[test]
fn ipv6_masquerade_all_and_hairpin_give_backends_a_node_address() {
    if !require_privileges("ipv6_masquerade_all_and_hairpin_give_backends_a_node_address") {
        return;
    }
    let bed = dual_stack_bed();
    bed.write("apps.yaml", &web_and_dns6(&bed.backends6(), None));
    let agent = Agent::start(&bed, &[]);
    clients_on_one_cpu();
    // Hairpin: a backend whose connection to its own Service lands on itself sees it come
    // from the node (its address on the backend's link), not from itself.
    let own = bed.topo.backend_addr6(0);
    let node_side: Ipv6Addr = "2001:db8:2::1".parse().expect("address");
    let mut peers = BTreeMap::new();
    for i in 0..3 {
        let reply = tcp_request(&bed.topo.backends[0], v6(vip6(10), 80), TIMEOUT)
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        let expected_peer = if *reply.backend.ip() == own {
            node_side
        } else {
            own
        };
        assert_eq!(*reply.peer.ip(), expected_peer, "{reply:?}");
        *peers.entry(*reply.backend.ip()).or_insert(0) += 1;
    }
    assert_eq!(peers.len(), 3, "round-robin reached itself too: {peers:?}");
    drop(agent);

    // --masquerade-all: every client is masqueraded to the node's address towards the backend.
    let _agent = Agent::start(&bed, &["--masquerade-all"]);
    for i in 0..3 {
        let reply = tcp_request(&bed.topo.client, v6(vip6(10), 80), TIMEOUT)
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        let backend = *reply.backend.ip();
        let index = bed
            .backends6()
            .iter()
            .position(|b| *b == backend)
            .expect("a backend");
        let node_towards_backend: Ipv6Addr = format!("2001:db8:{:x}::1", index + 2)
            .parse()
            .expect("address");
        assert_eq!(*reply.peer.ip(), node_towards_backend, "{reply:?}");
    }
    let counters = bed.view().expect("datapath").counters;
    assert!(counters["masqueraded"] >= 3, "{counters:?}");
}

#[test]
fn ipv6_external_and_load_balancer_ips_are_served() {
    if !require_privileges("ipv6_external_and_load_balancer_ips_are_served") {
        return;
    }
    let bed = dual_stack_bed();
    let (external, balancer) = (vip6(99), vip6(100));
    let lb = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: lb6\n  namespace: default\nspec:\n  type: LoadBalancer\n  ipFamilies: [IPv6]\n  clusterIP: {vip}\n  clusterIPs: [\"{vip}\"]\n  externalIPs: [\"{external}\"]\n  ports:\n  - name: http\n    port: 80\n    nodePort: 30081\n    protocol: TCP\n    targetPort: http\nstatus:\n  loadBalancer:\n    ingress:\n    - ip: \"{balancer}\"\n",
        vip = vip6(31)
    );
    bed.write(
        "apps.yaml",
        &documents(&[
            lb,
            slice6(
                "lb6-1",
                "lb6",
                &[("http", TCP_PORT, "TCP")],
                &bed.backends6(),
            ),
        ]),
    );
    let _agent = Agent::start(&bed, &[]);
    clients_on_one_cpu();
    for addr in [external, balancer, vip6(31)] {
        let mut backends = BTreeMap::new();
        for i in 0..6 {
            let reply = tcp_request(&bed.topo.client, v6(addr, 80), TIMEOUT)
                .unwrap_or_else(|e| panic!("{addr}, request {i}: {e}"));
            *backends.entry(*reply.backend.ip()).or_insert(0) += 1;
        }
        assert_eq!(backends.len(), 3, "{addr}: {backends:?}");
    }
}
