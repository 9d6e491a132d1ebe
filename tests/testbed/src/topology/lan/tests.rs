//! Checks of the LAN topology itself: routing between the external client, the nodes and the
//! pods of both nodes, what ext cannot reach, pods added and relinked after the build, XDP_TX
//! on node1's NIC out through the switch with complete checksums, and cleanup.

mod xdp_echo;

use std::io::ErrorKind;
use std::net::{SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use super::*;
use crate::privileges::require_privileges;
use crate::servers::{tcp_request, udp_request};
use crate::topology::tests::namespaces_named;
use crate::topology::vip;

const TIMEOUT: Duration = Duration::from_secs(2);
const TCP: u16 = 8080;
const UDP: u16 = 5353;
/// The port the XDP echo answers on (nothing listens there).
const ECHO: u16 = 7;

/// `ip <args>` in `ns`: its output.
fn ip_output(ns: &Netns, args: &[&str]) -> String {
    let out = ns.command("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?} in {}: {out:?}",
        ns.name()
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A TCP and a UDP request from `from` reach the servers on `to`, which see `from_addr`.
fn assert_reaches(from: &Netns, from_addr: Ipv4Addr, to: Ipv4Addr) {
    for (target, udp) in [
        (SocketAddrV4::new(to, TCP), false),
        (SocketAddrV4::new(to, UDP), true),
    ] {
        let reply = if udp {
            udp_request(from, target, TIMEOUT)
        } else {
            tcp_request(from, target, TIMEOUT)
        }
        .unwrap_or_else(|e| panic!("{} -> {target}: {e}", from.name()));
        assert_eq!(reply.backend, target);
        // Routed, not masqueraded.
        assert_eq!(*reply.peer.ip(), from_addr, "{} -> {target}", from.name());
    }
}

/// A TCP connection from `from` to `to` fails at once with "network unreachable".
fn assert_unreachable(from: &Netns, to: Ipv4Addr) {
    let start = Instant::now();
    let err = tcp_request(from, SocketAddrV4::new(to, TCP), TIMEOUT).unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::NetworkUnreachable,
        "{} -> {to}: {err}",
        from.name()
    );
    assert!(start.elapsed() < TIMEOUT, "took {:?}", start.elapsed());
}

#[test]
fn nodes_and_pods_route_across_the_lan() {
    if !require_privileges("lan::nodes_and_pods_route_across_the_lan") {
        return;
    }
    let topo = LanTopology::build(LanOptions::default()).unwrap();
    assert_eq!(namespaces_named(&topo.prefix).len(), 9);
    assert_eq!(topo.node1_pod_ifaces(), ["kpod2", "kpod3", "kpod100"]);
    assert!(
        topo.node1_pod_ifaces()
            .iter()
            .all(|i| i.starts_with(topo.pod_iface_prefix()))
    );
    assert_eq!(
        topo.local_backend_addrs(),
        [Ipv4Addr::new(198, 18, 20, 2), Ipv4Addr::new(198, 18, 20, 3)]
    );
    assert_eq!(
        topo.remote_backend_addrs(),
        [Ipv4Addr::new(198, 18, 21, 2), Ipv4Addr::new(198, 18, 21, 3)]
    );
    let client = &topo.local_clients[0];
    assert_eq!(client.addr(), Ipv4Addr::new(198, 18, 20, 100));
    assert!(topo.node1.link_index(topo.nic_iface()).unwrap() > 0);
    assert!(topo.node1.link_index("kpod100").unwrap() > 0);
    assert!(topo.node2.link_index("kpod3").unwrap() > 0);
    for node in LanNode::ALL {
        assert_eq!(
            topo.node(node).read_sysctl("net.ipv4.ip_forward").unwrap(),
            "1"
        );
        // The switch port of each node runs the pass-through that XDP_TX needs.
        let port = ip_output(&topo.lan, &["-d", "link", "show", node.switch_port()]);
        assert!(port.contains("prog/xdp"), "{port}");
    }
    // Offload stays as the kernel has it unless asked otherwise.
    assert!(topo.ext.tx_checksum(LEAF_IFACE).unwrap());
    // Nothing can leave the bed: no default route but the pods' (which ends at a node), and
    // the switch has no address.
    for ns in [&topo.ext, &topo.node1, &topo.node2, &topo.lan] {
        assert_eq!(ip_output(ns, &["-4", "route", "show", "default"]), "");
        assert_eq!(ip_output(ns, &["-6", "route", "show", "default"]), "");
    }
    let lan_addrs = ip_output(&topo.lan, &["-o", "addr", "show"]);
    assert_eq!(lan_addrs.lines().count(), 1, "{lan_addrs}");
    assert!(lan_addrs.contains("127.0.0.1"), "{lan_addrs}");

    let _backends = topo.serve_backends(TCP, UDP).unwrap();
    let mut nics = Vec::new();
    for node in LanNode::ALL {
        let ns = topo.node(node);
        nics.push(tcp_server(ns, SocketAddrV4::new(node.nic_addr(), TCP)).unwrap());
        nics.push(udp_server(ns, SocketAddrV4::new(node.nic_addr(), UDP)).unwrap());
    }

    // The external client reaches both nodes over the switch.
    for node in LanNode::ALL {
        assert_reaches(&topo.ext, topo.ext_addr(), node.nic_addr());
    }
    // Pods reach pods on their node and on the other one, in both directions.
    for backend in topo.backends() {
        assert_reaches(&client.ns, client.addr(), backend.addr());
    }
    let (local, remote) = (&topo.local_backends[0], &topo.remote_backends[0]);
    assert_reaches(&remote.ns, remote.addr(), local.addr());
    assert_reaches(&local.ns, local.addr(), remote.addr());
    assert_reaches(&local.ns, local.addr(), topo.local_backends[1].addr());
    assert_reaches(&remote.ns, remote.addr(), topo.remote_backends[1].addr());
    // A pod reaches its own node and the other node's NIC.
    assert_reaches(&local.ns, local.addr(), LanNode::Node1.nic_addr());
    assert_reaches(&local.ns, local.addr(), LanNode::Node2.nic_addr());

    // Ext has no route to pods: the connect fails in ext itself.
    assert_unreachable(&topo.ext, local.addr());
    assert_unreachable(&topo.ext, remote.addr());
    // VIPs go to node1, which has no route for them (until kproxy takes them) and answers
    // net unreachable; so do nodes for addresses nobody has.
    assert_unreachable(&topo.ext, vip(1));
    assert_unreachable(&client.ns, vip(1));
    assert_unreachable(&client.ns, Ipv4Addr::new(198, 18, 77, 1));
}

#[test]
fn ext_pod_routes_reach_pods_directly() {
    if !require_privileges("lan::ext_pod_routes_reach_pods_directly") {
        return;
    }
    let topo = LanTopology::build(LanOptions {
        local_backends: 1,
        remote_backends: 1,
        local_clients: 0,
        ext_pod_routes: true,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(namespaces_named(&topo.prefix).len(), 6);
    assert_eq!(topo.node1_pod_ifaces(), ["kpod2"]);
    let _backends = topo.serve_backends(TCP, UDP).unwrap();
    for backend in topo.backends() {
        assert_reaches(&topo.ext, topo.ext_addr(), backend.addr());
    }
    // And pods reach ext, which can answer them now.
    let _ext = tcp_server(&topo.ext, SocketAddrV4::new(topo.ext_addr(), TCP)).unwrap();
    let _ext_udp = udp_server(&topo.ext, SocketAddrV4::new(topo.ext_addr(), UDP)).unwrap();
    for backend in topo.backends() {
        assert_reaches(&backend.ns, backend.addr(), topo.ext_addr());
    }
}

#[test]
fn pods_added_later_come_and_go() {
    if !require_privileges("lan::pods_added_later_come_and_go") {
        return;
    }
    let topo = LanTopology::build(LanOptions {
        local_backends: 0,
        remote_backends: 1,
        local_clients: 1,
        ..Default::default()
    })
    .unwrap();
    let client = &topo.local_clients[0];
    let remote = &topo.remote_backends[0];

    let pod = topo.add_pod(LanNode::Node1).unwrap();
    assert_eq!(pod.addr(), Ipv4Addr::new(198, 18, 20, 150));
    assert_eq!(pod.node(), LanNode::Node1);
    assert_eq!(pod.node_iface(), "kpod150");
    assert!(pod.node_iface().starts_with(topo.pod_iface_prefix()));
    assert_eq!(namespaces_named(&topo.prefix).len(), 7);
    let servers = pod.serve(TCP, UDP).unwrap();
    assert_reaches(&client.ns, client.addr(), pod.addr());
    assert_reaches(&remote.ns, remote.addr(), pod.addr());
    // A new pod is a client too.
    let _remote_servers = remote.serve(TCP, UDP).unwrap();
    assert_reaches(&pod.ns, pod.addr(), remote.addr());

    let other = topo.add_pod(LanNode::Node2).unwrap();
    assert_eq!(other.addr(), Ipv4Addr::new(198, 18, 21, 150));
    let _other_servers = other.serve(TCP, UDP).unwrap();
    assert_reaches(&client.ns, client.addr(), other.addr());

    // Without its link the pod is gone from node1's routes; its servers keep their sockets.
    topo.remove_pod_link(&pod).unwrap();
    assert!(topo.node1.link_index("kpod150").is_err());
    assert!(pod.ns.link_index(LEAF_IFACE).is_err());
    assert_unreachable(&client.ns, pod.addr());
    assert!(topo.remove_pod_link(&pod).is_err());
    // Linked again, it is reachable again, through a new interface.
    topo.add_pod_link(&pod).unwrap();
    assert!(topo.node1.link_index("kpod150").unwrap() > 0);
    assert_reaches(&client.ns, client.addr(), pod.addr());
    assert!(topo.add_pod_link(&pod).is_err(), "the link exists already");

    // Deleting the pod (with the servers that hold its namespace) removes its link.
    let name = pod.ns.name().to_owned();
    drop(servers);
    drop(pod);
    assert!(!namespaces_named(&topo.prefix).contains(&name));
    let deadline = Instant::now() + TIMEOUT;
    while topo.node1.link_index("kpod150").is_ok() {
        assert!(Instant::now() < deadline, "kpod150 outlived its pod");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_unreachable(&client.ns, Ipv4Addr::new(198, 18, 20, 150));
    // Addresses are not reused within a topology.
    let next = topo.add_pod(LanNode::Node1).unwrap();
    assert_eq!(next.addr(), Ipv4Addr::new(198, 18, 20, 151));
}

#[test]
fn drop_deletes_every_namespace() {
    if !require_privileges("lan::drop_deletes_every_namespace") {
        return;
    }
    let topo = LanTopology::build(LanOptions::default()).unwrap();
    let prefix = topo.prefix.clone();
    assert_eq!(namespaces_named(&prefix).len(), 9);
    assert_eq!(topo.all().count(), 9);
    let late = topo.add_pod(LanNode::Node2).unwrap();
    assert_eq!(namespaces_named(&prefix).len(), 10);
    // A server still running in a pod must not keep the names alive.
    let _servers = topo.local_backends[0].serve(TCP, UDP).unwrap();
    drop(topo);
    // An added pod belongs to the caller.
    assert_eq!(namespaces_named(&prefix), [late.ns.name()]);
    drop(late);
    assert_eq!(namespaces_named(&prefix), Vec::<String>::new());
}

#[test]
fn xdp_tx_on_node1_nic_goes_out_through_the_switch() {
    if !require_privileges("lan::xdp_tx_on_node1_nic_goes_out_through_the_switch") {
        return;
    }
    let topo = LanTopology::build(LanOptions {
        local_backends: 0,
        remote_backends: 0,
        local_clients: 0,
        lan_tx_checksum_offload: false,
        ext_pod_routes: false,
    })
    .unwrap();
    assert!(!topo.ext.tx_checksum(LEAF_IFACE).unwrap());
    assert!(!topo.node2.tx_checksum(NIC_IFACE).unwrap());
    for port in ["p-ext", "p-node1", "p-node2"] {
        assert!(!topo.lan.tx_checksum(port).unwrap(), "{port}");
    }
    // What kproxy's XDP setup looks at: the peer of node1's NIC.
    assert!(!topo.lan.tx_checksum(LanNode::Node1.switch_port()).unwrap());

    let target = SocketAddrV4::new(LanNode::Node1.nic_addr(), ECHO);
    let ext_addr = topo.ext_addr();
    let echo = move || {
        let socket = UdpSocket::bind(SocketAddrV4::new(ext_addr, 0))?;
        socket.connect(target)?;
        socket.set_read_timeout(Some(TIMEOUT))?;
        socket.send(b"through the switch and back")?;
        let mut buf = [0u8; 64];
        let n = socket.recv(&mut buf)?;
        Ok::<_, std::io::Error>(buf[..n].to_vec())
    };
    // Nothing listens on node1's port 7: the stack says so.
    let err = topo.ext.run(echo).unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");

    let prog = xdp_echo::load_udp_echo(ECHO).unwrap_or_else(|e| panic!("{e}"));
    let ifindex = topo.node1.link_index(NIC_IFACE).unwrap();
    let _link = topo
        .node1
        .run(move || crate::bpfsys::attach_xdp(&prog, ifindex))
        .unwrap()
        .unwrap();
    // XDP on nic0 now sends the datagram back out (XDP_TX): the switch port takes the frame,
    // the bridge forwards it to ext, whose stack accepts its (untouched) checksum.
    let reply = topo.ext.run(echo).unwrap().expect("the XDP echo");
    assert_eq!(reply, b"through the switch and back");
    // Other traffic passes: the stack still answers on other ports.
    let err = topo
        .ext
        .run(move || {
            let socket = UdpSocket::bind(SocketAddrV4::new(ext_addr, 0))?;
            socket.connect(SocketAddrV4::new(*target.ip(), ECHO + 1))?;
            socket.set_read_timeout(Some(TIMEOUT))?;
            socket.send(b"x")?;
            socket.recv(&mut [0u8; 8])
        })
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
}

#[test]
fn lan_addresses_follow_the_plan() {
    assert_eq!(LanNode::Node1.nic_addr(), Ipv4Addr::new(198, 18, 9, 1));
    assert_eq!(LanNode::Node2.nic_addr(), Ipv4Addr::new(198, 18, 9, 3));
    assert_eq!(LanNode::Node1.pod_gateway(), Ipv4Addr::new(198, 18, 20, 1));
    assert_eq!(LanNode::Node2.pod_gateway(), Ipv4Addr::new(198, 18, 21, 1));
    assert_eq!(LanNode::Node1.other(), LanNode::Node2);
    assert_eq!(LanNode::Node2.name(), "node2");
    // The cluster CIDR is exactly the two pod CIDRs, and holds nothing else of the bed.
    let within = |addr: Ipv4Addr, cidr: &str| {
        let (net, len) = cidr.split_once('/').unwrap();
        let net: Ipv4Addr = net.parse().unwrap();
        let mask = u32::MAX << (32 - len.parse::<u32>().unwrap());
        u32::from(addr) & mask == u32::from(net) & mask
    };
    for node in LanNode::ALL {
        for host in [1, 2, 99, 100, 150, 254] {
            let addr = node.pod_addr(host);
            assert!(within(addr, node.pod_cidr()), "{addr}");
            assert!(within(addr, CLUSTER_CIDR), "{addr}");
            assert!(!within(addr, node.other().pod_cidr()), "{addr}");
        }
        assert!(!within(node.nic_addr(), CLUSTER_CIDR));
    }
    assert!(!within(vip(1), CLUSTER_CIDR));
    assert!(within(vip(0xffff), VIP_CIDR));
    // Every range of the bed is in 198.18.0.0/15.
    for cidr in [CLUSTER_CIDR, VIP_CIDR, "198.18.9.0/24"] {
        let net: Ipv4Addr = cidr.split_once('/').unwrap().0.parse().unwrap();
        assert!(within(net, "198.18.0.0/15"), "{cidr}");
    }
    // Roles do not overlap, and fit the limits.
    assert!(BACKEND_HOSTS.end() < CLIENT_HOSTS.start());
    assert!(CLIENT_HOSTS.end() < LATE_HOSTS.start());
    assert_eq!(BACKEND_HOSTS.len(), MAX_NODE_BACKENDS);
    assert_eq!(CLIENT_HOSTS.len(), MAX_LOCAL_CLIENTS);
    assert!(
        LanTopology::build(LanOptions {
            local_backends: MAX_NODE_BACKENDS + 1,
            ..Default::default()
        })
        .is_err()
    );
}
