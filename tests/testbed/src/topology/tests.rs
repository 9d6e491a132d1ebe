//! Checks of the reference topology itself: routing through the node, the who-am-I servers and
//! clients, failures that must be quick, and cleanup.

use std::io::ErrorKind;
use std::net::{SocketAddrV4, SocketAddrV6};
use std::time::{Duration, Instant};

use super::*;
use crate::privileges::require_privileges;
use crate::servers::{TcpSession, UdpSession, tcp_request, tcp_server, udp_request, udp_server};

const TIMEOUT: Duration = Duration::from_secs(2);

/// Namespaces of this process whose name starts with `prefix`.
pub(super) fn namespaces_named(prefix: &str) -> Vec<String> {
    let prefix = format!("{prefix}-");
    netns::list_names()
        .unwrap()
        .into_iter()
        .filter(|name| name.starts_with(&prefix))
        .collect()
}

#[test]
fn client_reaches_backends_through_the_node() {
    if !require_privileges("topology::client_reaches_backends_through_the_node") {
        return;
    }
    let topo = Topology::build(TopologyOptions {
        backends: 2,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(namespaces_named(&topo.prefix).len(), 4);
    assert_eq!(topo.node_ifaces(), ["kc", "kb1", "kb2"]);
    assert_eq!(topo.client_addr(), Ipv4Addr::new(198, 18, 1, 2));
    assert_eq!(topo.backend_addr(1), Ipv4Addr::new(198, 18, 3, 2));
    assert_eq!(topo.node.read_sysctl("net.ipv4.ip_forward").unwrap(), "1");
    assert!(topo.client.tx_checksum(LEAF_IFACE).unwrap());
    assert!(topo.node.link_index("kb2").unwrap() > 0);

    let mut servers = Vec::new();
    for (i, ns) in topo.backends.iter().enumerate() {
        let addr = topo.backend_addr(i);
        servers.push(tcp_server(ns, SocketAddrV4::new(addr, 8080)).unwrap());
        servers.push(udp_server(ns, SocketAddrV4::new(addr, 8081)).unwrap());
    }

    for i in 0..topo.backends.len() {
        let tcp = SocketAddrV4::new(topo.backend_addr(i), 8080);
        let reply = tcp_request(&topo.client, tcp, TIMEOUT).unwrap();
        assert_eq!(reply.backend, tcp);
        // Routed, not masqueraded: the backend sees the client's own address.
        assert_eq!(*reply.peer.ip(), topo.client_addr());

        let udp = SocketAddrV4::new(topo.backend_addr(i), 8081);
        let reply = udp_request(&topo.client, udp, TIMEOUT).unwrap();
        assert_eq!(reply.backend, udp);
        assert_eq!(*reply.peer.ip(), topo.client_addr());
    }
    assert_eq!(servers[0].accepted(), 1);
    assert_eq!(servers[1].requests(), 1);

    // One connection, many requests, one backend and one source port throughout.
    let target = SocketAddrV4::new(topo.backend_addr(0), 8080);
    let mut session = TcpSession::connect(&topo.client, target, TIMEOUT).unwrap();
    let first = session.request().unwrap();
    assert_eq!(first.peer, session.local_addr().unwrap());
    for _ in 0..5 {
        assert_eq!(session.request().unwrap(), first);
    }
    assert_eq!(servers[0].accepted(), 2);
    let udp_session = UdpSession::connect(
        &topo.client,
        SocketAddrV4::new(topo.backend_addr(1), 8081),
        TIMEOUT,
    )
    .unwrap();
    let first = udp_session.request().unwrap();
    assert_eq!(first.peer, udp_session.local_addr().unwrap());
    assert_eq!(udp_session.request().unwrap(), first);

    // A port without a server is refused, and the error says so.
    let closed = SocketAddrV4::new(topo.backend_addr(0), 9);
    let err = tcp_request(&topo.client, closed, TIMEOUT).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    let err = udp_request(&topo.client, closed, TIMEOUT).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");

    // The session stays usable after other traffic.
    assert_eq!(session.request().unwrap().backend, target);
}

#[test]
fn unassigned_vip_fails_fast_inside_the_bed() {
    if !require_privileges("topology::unassigned_vip_fails_fast_inside_the_bed") {
        return;
    }
    let topo = Topology::build(TopologyOptions {
        backends: 1,
        ..Default::default()
    })
    .unwrap();
    let target = SocketAddrV4::new(vip(1), 80);
    assert_eq!(target.to_string(), "198.19.0.1:80");

    // The node has no route to the VIP and answers ICMP net unreachable, which fails the
    // connect (TCP) or the receive (UDP, thanks to IP_RECVERR) long before the timeout.
    let start = Instant::now();
    let err = tcp_request(&topo.client, target, TIMEOUT).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NetworkUnreachable, "{err}");
    let err = udp_request(&topo.client, target, TIMEOUT).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NetworkUnreachable, "{err}");
    assert!(start.elapsed() < TIMEOUT, "took {:?}", start.elapsed());
}

#[test]
fn a_dual_stack_topology_routes_ipv6_too() {
    if !require_privileges("topology::a_dual_stack_topology_routes_ipv6_too") {
        return;
    }
    let topo = Topology::build(TopologyOptions {
        backends: 2,
        ipv6: true,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        topo.client_addr6(),
        "2001:db8:1::2".parse::<Ipv6Addr>().unwrap()
    );
    assert_eq!(
        topo.backend_addr6(1),
        "2001:db8:3::2".parse::<Ipv6Addr>().unwrap()
    );
    let mut servers = Vec::new();
    for (i, ns) in topo.backends.iter().enumerate() {
        let addr = topo.backend_addr6(i);
        servers.push(tcp_server(ns, SocketAddrV6::new(addr, 8080, 0, 0)).unwrap());
        servers.push(udp_server(ns, SocketAddrV6::new(addr, 8081, 0, 0)).unwrap());
    }
    for i in 0..topo.backends.len() {
        let tcp = SocketAddrV6::new(topo.backend_addr6(i), 8080, 0, 0);
        let reply = tcp_request(&topo.client, tcp, TIMEOUT).unwrap();
        assert_eq!(reply.backend, tcp);
        assert_eq!(*reply.peer.ip(), topo.client_addr6());
        let udp = SocketAddrV6::new(topo.backend_addr6(i), 8081, 0, 0);
        let reply = udp_request(&topo.client, udp, TIMEOUT).unwrap();
        assert_eq!(reply.backend, udp);
    }
    // IPv4 still works beside it.
    let tcp = SocketAddrV4::new(topo.backend_addr(0), 8080);
    let _v4 = tcp_server(&topo.backends[0], tcp).unwrap();
    assert_eq!(
        tcp_request(&topo.client, tcp, TIMEOUT).unwrap().backend,
        tcp
    );
}

#[test]
fn external_link_and_complete_client_checksums() {
    if !require_privileges("topology::external_link_and_complete_client_checksums") {
        return;
    }
    let topo = Topology::build(TopologyOptions {
        backends: 1,
        external: true,
        client_tx_checksum_offload: false,
        ipv6: false,
    })
    .unwrap();
    assert_eq!(topo.node_ifaces(), ["kc", "kb1", "kx"]);
    assert!(!topo.client.tx_checksum(LEAF_IFACE).unwrap());
    assert_eq!(
        topo.client
            .read_sysctl("net.ipv4.ip_local_port_range")
            .unwrap(),
        "1024\t65535"
    );

    let addr = SocketAddrV4::new(topo.backend_addr(0), 8080);
    let _server = tcp_server(&topo.backends[0], addr).unwrap();
    let reply = tcp_request(topo.external(), addr, TIMEOUT).unwrap();
    assert_eq!(*reply.peer.ip(), topo.external_addr());
    // Checksums the client computes itself are still right.
    let reply = tcp_request(&topo.client, addr, TIMEOUT).unwrap();
    assert_eq!(*reply.peer.ip(), topo.client_addr());
}

#[test]
fn drop_deletes_every_namespace() {
    if !require_privileges("topology::drop_deletes_every_namespace") {
        return;
    }
    let topo = Topology::build(TopologyOptions {
        backends: 2,
        external: true,
        ..Default::default()
    })
    .unwrap();
    let prefix = topo.prefix.clone();
    assert_eq!(namespaces_named(&prefix).len(), 5);
    // A server still running in a backend must not keep the names alive.
    let _server = tcp_server(
        &topo.backends[0],
        SocketAddrV4::new(topo.backend_addr(0), 8080),
    )
    .unwrap();
    drop(topo);
    assert_eq!(namespaces_named(&prefix), Vec::<String>::new());
}

#[test]
fn sweep_deletes_namespaces_of_dead_processes_only() {
    if !require_privileges("topology::sweep_deletes_namespaces_of_dead_processes_only") {
        return;
    }
    // A process that has exited leaves a pid that names no process (until it is reused).
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let leftover = Netns::create(&format!("{PREFIX}{dead}-0-node")).unwrap();
    let ours = Netns::create(&format!("{PREFIX}{}-sweep-node", std::process::id())).unwrap();

    Topology::sweep_leftovers();
    assert!(!leftover.path().exists());
    assert!(ours.path().exists());
}

#[test]
fn addresses_follow_the_plan() {
    assert_eq!(backend_subnet(0), 2);
    assert_eq!(backend_subnet(6), 8);
    // 198.18.9.0/24 belongs to the external link.
    assert_eq!(backend_subnet(7), 10);
    assert_eq!(backend_subnet(MAX_BACKENDS - 1), 254);
    assert_eq!(vip(0x0102), Ipv4Addr::new(198, 19, 1, 2));
    assert_eq!(owner_pid("kpt-1234-7-client"), Some(1234));
    assert_eq!(owner_pid("kpt-x-7-client"), None);
    assert_eq!(owner_pid("other-1234-7"), None);
}

#[test]
fn pod_clients_come_and_go_while_the_topology_lives() {
    if !require_privileges("topology::pod_clients_come_and_go_while_the_topology_lives") {
        return;
    }
    let topo = Topology::build(TopologyOptions {
        backends: 1,
        ..Default::default()
    })
    .unwrap();
    let backend = SocketAddrV4::new(topo.backend_addr(0), 8080);
    let _server = tcp_server(&topo.backends[0], backend).unwrap();
    assert!(topo.add_pod_client(0).is_err());
    assert!(topo.add_pod_client(MAX_POD_CLIENTS + 1).is_err());

    let pod = topo.add_pod_client(3).unwrap();
    assert_eq!(pod.node_iface, "kpc3");
    assert_eq!(pod.addr(), Ipv4Addr::new(198, 18, 203, 2));
    assert!(pod.ns.name().starts_with(&topo.prefix));
    // Usable at once: the link is operational when the call returns.
    let reply = tcp_request(&pod.ns, backend, TIMEOUT).unwrap();
    assert_eq!(*reply.peer.ip(), pod.addr());

    let index = topo.node.link_index("kpc3").unwrap();
    pod.recreate_link(&topo.node).unwrap();
    assert_ne!(topo.node.link_index("kpc3").unwrap(), index);
    assert_eq!(
        tcp_request(&pod.ns, backend, TIMEOUT).unwrap().backend,
        backend
    );

    let name = pod.ns.name().to_owned();
    drop(pod);
    assert!(!netns::list_names().unwrap().contains(&name));
    // The kernel dismantles a deleted namespace in the background; the veth goes with it.
    let deleted = Instant::now();
    while topo.node.link_index("kpc3").is_ok() {
        assert!(
            deleted.elapsed() < Duration::from_secs(5),
            "kpc3 still there"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
