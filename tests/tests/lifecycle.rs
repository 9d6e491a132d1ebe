//! End to end, what established flows do while endpoints change (readiness flaps,
//! termination, removal), and the paths that need more than DNAT: backends on the node's
//! own address, path MTU discovery through a ClusterIP, XDP on a veth with offloads.

mod support;

use std::{
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use kproxy::dataplane::maps::FlowMaps;
use kproxy_testbed::{
    TcpSession, TopologyOptions, UdpSession, require_privileges, tcp_request, tcp_server,
    topology::vip,
};
use support::{
    agent::{Agent, Bed, TCP_PORT, UDP_PORT},
    manifests::{Conditions, NOT_READY, READY, TERMINATING, documents, service, slice, slice_with},
};

const TIMEOUT: Duration = Duration::from_secs(2);

/// `web` (TCP) and `dns` (UDP) with each backend's conditions; `None` leaves it out.
fn apps(bed: &Bed, conditions: &[Option<Conditions>]) -> String {
    let listed: Vec<(Ipv4Addr, Conditions)> = bed
        .backends()
        .into_iter()
        .zip(conditions)
        .filter_map(|(addr, c)| Some((addr, (*c)?)))
        .collect();
    documents(&[
        service("web", vip(10), &[("http", 80, "TCP")], None),
        slice_with("web-1", "web", &[("http", TCP_PORT, "TCP")], &listed),
        service("dns", vip(53), &[("dns", 53, "UDP")], None),
        slice_with("dns-1", "dns", &[("dns", UDP_PORT, "UDP")], &listed),
    ])
}

fn taking(bed: &Bed, conditions: &[Option<Conditions>], port: u16) -> Vec<SocketAddrV4> {
    bed.backends()
        .into_iter()
        .zip(conditions)
        .filter(|(_, c)| c.is_some_and(|c| c.ready))
        .map(|(a, _)| SocketAddrV4::new(a, port))
        .collect()
}

/// Writes `conditions` and waits until the datapath serves exactly the ready ones.
fn set(bed: &Bed, conditions: &[Option<Conditions>]) {
    bed.write("apps.yaml", &apps(bed, conditions));
    bed.wait_for_backends(
        "198.19.0.10:80/TCP",
        &taking(bed, conditions, TCP_PORT),
        TIMEOUT,
    );
    bed.wait_for_backends(
        "198.19.0.53:53/UDP",
        &taking(bed, conditions, UDP_PORT),
        TIMEOUT,
    );
}

/// The position among the bed's backends of `addr`.
fn index_of(bed: &Bed, addr: Ipv4Addr) -> usize {
    bed.backends()
        .iter()
        .position(|a| *a == addr)
        .expect("a backend")
}

#[test]
fn a_readiness_flap_or_termination_never_resets_an_established_connection() {
    if !require_privileges("a_readiness_flap_or_termination_never_resets_an_established_connection")
    {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    bed.write("apps.yaml", &apps(&bed, &[Some(READY); 3]));
    let _agent = Agent::start(&bed, &[]);
    let target = SocketAddrV4::new(vip(10), 80);
    let mut session = TcpSession::connect(&bed.topo.client, target, TIMEOUT).expect("connect");
    let first = *session.request().expect("request").backend.ip();
    let i = index_of(&bed, first);
    for (what, state) in [
        ("not ready", NOT_READY),
        ("terminating but serving", TERMINATING),
        ("ready again", READY),
    ] {
        let mut conditions = [Some(READY); 3];
        conditions[i] = Some(state);
        set(&bed, &conditions);
        let reply = session
            .request()
            .unwrap_or_else(|e| panic!("{what}: the established connection broke: {e}"));
        assert_eq!(*reply.backend.ip(), first, "{what}: it keeps its endpoint");
        let view = bed.view().expect("datapath");
        let web = view
            .services
            .iter()
            .find(|s| s.frontend == "198.19.0.10:80/TCP")
            .expect("web");
        let listed_only: Vec<&str> = web.listed_only.iter().map(|b| b.address.as_str()).collect();
        let first_addr = SocketAddrV4::new(first, TCP_PORT).to_string();
        assert_eq!(
            listed_only.contains(&first_addr.as_str()),
            !state.ready,
            "{what}: `kproxy services` shows it as listed only: {listed_only:?}"
        );
        if !state.ready {
            for _ in 0..6 {
                let new = tcp_request(&bed.topo.client, target, TIMEOUT).expect("new connection");
                assert_ne!(*new.backend.ip(), first, "{what}: no new connections to it");
            }
        }
    }
}

#[test]
fn connections_to_an_endpoint_gone_from_its_slices_are_reset_at_once() {
    if !require_privileges("connections_to_an_endpoint_gone_from_its_slices_are_reset_at_once") {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    bed.write("apps.yaml", &apps(&bed, &[Some(READY); 3]));
    let _agent = Agent::start(&bed, &[]);
    let target = SocketAddrV4::new(vip(10), 80);
    let mut session = TcpSession::connect(&bed.topo.client, target, TIMEOUT).expect("connect");
    let first = *session.request().expect("request").backend.ip();
    let mut conditions = [Some(READY); 3];
    conditions[index_of(&bed, first)] = None;
    set(&bed, &conditions);
    let asked = Instant::now();
    let err = session.request().expect_err("the endpoint is gone");
    let took = asked.elapsed();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    assert!(
        took < Duration::from_secs(1),
        "reset after {took:?}, not a timeout"
    );
    // Never handed to another backend mid-stream; new connections work.
    let new = tcp_request(&bed.topo.client, target, TIMEOUT).expect("new connection");
    assert_ne!(*new.backend.ip(), first);
}

#[test]
fn udp_flows_move_off_an_endpoint_that_stops_being_used() {
    if !require_privileges("udp_flows_move_off_an_endpoint_that_stops_being_used") {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    bed.write("apps.yaml", &apps(&bed, &[Some(READY); 3]));
    let _agent = Agent::start(&bed, &[]);
    let session = UdpSession::connect(&bed.topo.client, SocketAddrV4::new(vip(53), 53), TIMEOUT)
        .expect("udp socket");
    let first = *session.request().expect("request").backend.ip();
    assert_eq!(
        *session.request().expect("again").backend.ip(),
        first,
        "sticky"
    );
    // Still listed, no longer ready: kube-proxy clears the UDP flows of endpoints it stops
    // using, so they do not black-hole; here the next datagram moves.
    let mut conditions = [Some(READY); 3];
    conditions[index_of(&bed, first)] = Some(NOT_READY);
    set(&bed, &conditions);
    let moved = *session.request().expect("answered").backend.ip();
    assert_ne!(moved, first, "the flow moved to an endpoint in use");
    assert_eq!(
        *session.request().expect("again").backend.ip(),
        moved,
        "and stays there"
    );
}

#[test]
fn the_node_reaches_a_backend_on_its_own_address() {
    if !require_privileges("the_node_reaches_a_backend_on_its_own_address") {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    // A hostNetwork endpoint: a server on the node's own address.
    let node_addr = bed.topo.client_gateway();
    let _server = tcp_server(&bed.topo.node, SocketAddrV4::new(node_addr, 9090)).expect("server");
    bed.write(
        "host.yaml",
        &documents(&[
            service("host", vip(30), &[("http", 80, "TCP")], None),
            slice("host-1", "host", &[("http", 9090, "TCP")], &[node_addr]),
        ]),
    );
    let _agent = Agent::start(&bed, &[]);
    bed.route_vips_from_node();
    let target = SocketAddrV4::new(vip(30), 80);
    for (who, ns) in [
        ("the node itself", &bed.topo.node),
        ("a client", &bed.topo.client),
    ] {
        let reply = tcp_request(ns, target, TIMEOUT).unwrap_or_else(|e| panic!("{who}: {e}"));
        assert_eq!(reply.backend, SocketAddrV4::new(node_addr, 9090), "{who}");
    }
}

#[test]
fn path_mtu_discovery_through_a_clusterip_completes() {
    if !require_privileges("path_mtu_discovery_through_a_clusterip_completes") {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    bed.write("apps.yaml", &apps(&bed, &[Some(READY), None, None]));
    // The path to the backend is narrower than both ends: their MSS says 1460, the node's
    // route says 1280. Only ICMP "fragmentation needed" can tell the client.
    bed.topo
        .node
        .ip(&[
            "route",
            "replace",
            "198.18.2.0/24",
            "dev",
            "kb1",
            "src",
            "198.18.2.1",
            "mtu",
            "lock",
            "1280",
        ])
        .expect("narrow route");
    let _agent = Agent::start(&bed, &[]);
    let target = SocketAddrV4::new(vip(10), 80);
    let mut session =
        TcpSession::connect(&bed.topo.client, target, Duration::from_secs(5)).expect("connect");
    let started = Instant::now();
    let reply = session
        .request_large(32 * 1024)
        .expect("a 32 KiB request passes once the client learned the path MTU");
    assert_eq!(*reply.backend.ip(), bed.topo.backend_addr(0));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    let view = bed.view().expect("datapath");
    assert!(
        view.counters["icmp_error_translated"] > 0,
        "the node's fragmentation-needed errors were translated"
    );
}

#[test]
fn xdp_on_a_veth_with_checksum_offload_leaves_service_packets_to_tc() {
    if !require_privileges("xdp_on_a_veth_with_checksum_offload_leaves_service_packets_to_tc") {
        return;
    }
    // The client's veth hands over partial checksums (the default). Without offload XDP
    // translates itself: see clusterip.rs, `the_xdp_program_serves_a_nic`.
    let bed = Bed::new(TopologyOptions::default());
    bed.write("apps.yaml", &apps(&bed, &[Some(READY); 3]));
    let backend_links: Vec<String> = (0..3).map(|i| bed.topo.backend_iface(i)).collect();
    let agent = Agent::start_with(
        &bed,
        &[
            "--attach",
            &backend_links.join(","),
            "--xdp",
            bed.topo.client_iface(),
        ],
        &[],
    );
    for _ in 0..10 {
        tcp_request(&bed.topo.client, SocketAddrV4::new(vip(10), 80), TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let counters = bed.view().expect("datapath").counters;
    assert!(
        counters["xdp_deferred_to_tc"] > 0,
        "TC translated: {counters:?}"
    );
    assert!(
        agent
            .log_text()
            .contains("XDP cannot see partial checksums")
    );
}

#[test]
fn conntrack_and_affinity_of_a_deleted_service_are_swept() {
    if !require_privileges("conntrack_and_affinity_of_a_deleted_service_are_swept") {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    let backends = bed.backends();
    let web = documents(&[
        service("web", vip(10), &[("http", 80, "TCP")], Some(600)),
        slice("web-1", "web", &[("http", TCP_PORT, "TCP")], &backends),
    ]);
    let other = documents(&[
        service("other", vip(11), &[("http", 80, "TCP")], None),
        slice("other-1", "other", &[("http", TCP_PORT, "TCP")], &backends),
    ]);
    bed.write("web.yaml", &web);
    bed.write("other.yaml", &other);
    let _agent = Agent::start(&bed, &["--ct-gc-interval", "1"]);
    // An established connection to each (not timed out, not closed) and an affinity.
    let _web_session =
        TcpSession::connect(&bed.topo.client, SocketAddrV4::new(vip(10), 80), TIMEOUT)
            .expect("web");
    let mut other_session =
        TcpSession::connect(&bed.topo.client, SocketAddrV4::new(vip(11), 80), TIMEOUT)
            .expect("other");
    other_session.request().expect("other request");
    let flows = FlowMaps::open(&bed.pin_dir()).expect("flow maps");
    let vip_of = |addr: Ipv4Addr| u32::from_ne_bytes(addr.octets());
    let count = |addr: Ipv4Addr| {
        flows
            .flows()
            .expect("flows")
            .iter()
            .filter(|(k, _)| k.daddr == vip_of(addr))
            .count()
    };
    assert_eq!((count(vip(10)), count(vip(11))), (1, 1));
    assert_eq!(flows.affinities().expect("affinities").len(), 1);

    bed.remove("web.yaml");
    support::agent::wait_until(
        "web's flows and affinity swept",
        Duration::from_secs(5),
        || (count(vip(10)) == 0 && flows.affinities().ok()?.is_empty()).then_some(()),
    );
    assert_eq!(count(vip(11)), 1, "the other service's flow stays");
    other_session.request().expect("and still works");
}
