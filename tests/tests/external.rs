//! NodePorts, load-balancer and external IPs, traffic policies, masquerade and hairpin end to
//! end: the agent binary on node1 of the LAN bed (XDP on its NIC, TC on its pods' links),
//! real TCP and UDP clients in ext, in pods and on node1 itself, who-am-I servers in pods on
//! both nodes that say who served and which source they saw.

mod support;

use std::{
    collections::BTreeSet,
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    time::{Duration, Instant},
};

use kproxy_testbed::{
    LanNode, LanOptions, Netns, Reply, require_privileges, tcp_request,
    topology::{lan::POD_IFACE_PREFIX, vip},
    udp_request,
};
use serde_json::{Value, json};
use support::{
    agent::{TCP_PORT, UDP_PORT, clients_on_one_cpu, wait_until},
    http::get,
    lan::{LanBed, NODE1, NODE2},
    objects::{Ep, list, service, slice_ports},
};

/// Bounds every request that must be answered.
const TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client waits for an answer that must not come (a drop).
const DROPPED: Duration = Duration::from_millis(500);
/// Node1's NIC address: NodePorts answer there.
const NIC1: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 1);
/// Node1's address on every link to its pods: flows masqueraded towards its pods come from it.
const POD_SIDE1: Ipv4Addr = Ipv4Addr::new(198, 18, 20, 1);
/// The first test's load-balancer IPs (ipMode VIP, Proxy, and one with source ranges) and
/// external IP.
const LB_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 3, 1);
const PROXY_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 3, 2);
const RANGED_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 3, 3);
const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 2, 1);
/// The endpoints' ports: `http` (TCP) and `dns` (UDP).
const ENDPOINT_PORTS: &[(&str, u16, &str)] = &[("http", TCP_PORT, "TCP"), ("dns", UDP_PORT, "UDP")];

/// The LAN options of these tests: LAN transmitters complete their checksums, as a real
/// NIC's sender does, so XDP on node1's NIC translates itself.
fn lan(local_backends: usize, remote_backends: usize, local_clients: usize) -> LanOptions {
    LanOptions {
        local_backends,
        remote_backends,
        local_clients,
        lan_tx_checksum_offload: false,
        ext_pod_routes: false,
    }
}

// --- Objects ---------------------------------------------------------------------------------

/// A Service `name` on cluster IP `vip` of type `kind` with ports `http` 80/TCP and `dns` 53/UDP
/// (node ports `node_ports` when given); `spec` is merged in.
fn svc(
    name: &str,
    vip: Ipv4Addr,
    kind: &str,
    node_ports: Option<(u16, u16)>,
    spec: &Value,
) -> Value {
    let mut http = json!({"name": "http", "port": 80, "protocol": "TCP"});
    let mut dns = json!({"name": "dns", "port": 53, "protocol": "UDP"});
    if let Some((tcp, udp)) = node_ports {
        http["nodePort"] = json!(tcp);
        dns["nodePort"] = json!(udp);
    }
    let mut spec_all = json!({"type": kind, "ports": [http, dns]});
    if let (Some(all), Some(extra)) = (spec_all.as_object_mut(), spec.as_object()) {
        all.extend(extra.clone());
    }
    service(name, vip, &spec_all)
}

/// `service` with `status.loadBalancer.ingress` set to `ingress` (IP, ipMode).
fn with_ingress(mut service: Value, ingress: &[(Ipv4Addr, Option<&str>)]) -> Value {
    let ingress: Vec<Value> = ingress
        .iter()
        .map(|(ip, mode)| match mode {
            Some(mode) => json!({"ip": ip.to_string(), "ipMode": mode}),
            None => json!({"ip": ip.to_string()}),
        })
        .collect();
    service["status"] = json!({"loadBalancer": {"ingress": ingress}});
    service
}

/// The slice of Service `name`: its endpoints with the nodes they run on.
fn endpoints(name: &str, eps: &[(Ipv4Addr, &'static str)]) -> Value {
    let eps: Vec<Ep> = eps
        .iter()
        .map(|(addr, node)| Ep::ready(*addr).on_node(node))
        .collect();
    slice_ports(&format!("{name}-1"), name, ENDPOINT_PORTS, &eps)
}

// --- Clients ---------------------------------------------------------------------------------

fn http_at(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

/// One TCP request from `from` to `target`; panics with the datapath's state if unanswered.
fn tcp(bed: &LanBed, from: &Netns, target: SocketAddrV4) -> Reply {
    tcp_request(from, target, TIMEOUT)
        .unwrap_or_else(|e| panic!("TCP {} -> {target}: {e}\n{}", from.name(), bed.services()))
}

/// One UDP request from `from` to `target` on a connected socket, so only a reply whose
/// source is `target` itself counts.
fn udp(bed: &LanBed, from: &Netns, target: SocketAddrV4) -> Reply {
    udp_request(from, target, TIMEOUT)
        .unwrap_or_else(|e| panic!("UDP {} -> {target}: {e}\n{}", from.name(), bed.services()))
}

/// `n` TCP and `n` UDP requests from `from` to `ip` (ports `tcp_port` and `udp_port`): every
/// one answered by one of `backends` (all of which serve some), each seeing the source
/// `peer(backend)` says.
#[track_caller]
fn served_by(
    bed: &LanBed,
    from: &Netns,
    (ip, tcp_port, udp_port): (Ipv4Addr, u16, u16),
    n: usize,
    backends: &[Ipv4Addr],
    peer: impl Fn(Ipv4Addr) -> Ipv4Addr,
) {
    for (udp_proto, port, backend_port) in [(false, tcp_port, TCP_PORT), (true, udp_port, UDP_PORT)]
    {
        let target = SocketAddrV4::new(ip, port);
        let mut seen = BTreeSet::new();
        for _ in 0..n {
            let reply = if udp_proto {
                udp(bed, from, target)
            } else {
                tcp(bed, from, target)
            };
            let backend = *reply.backend.ip();
            assert!(
                backends.contains(&backend) && reply.backend.port() == backend_port,
                "{} -> {target} served by {}, not one of {backends:?}",
                from.name(),
                reply.backend
            );
            assert_eq!(
                *reply.peer.ip(),
                peer(backend),
                "{} -> {target} ({}): the source {backend} saw",
                from.name(),
                if udp_proto { "UDP" } else { "TCP" }
            );
            seen.insert(backend);
        }
        let all: BTreeSet<Ipv4Addr> = backends.iter().copied().collect();
        assert_eq!(
            seen,
            all,
            "{} -> {target}: every backend serves",
            from.name()
        );
    }
}

/// A TCP connection and a UDP request from `from` to `target` get no answer at all within
/// `DROPPED` (no refusal, no unreachable: dropped), and `counter` counts the drops.
#[track_caller]
fn dropped(
    bed: &LanBed,
    from: &Netns,
    (ip, tcp_port, udp_port): (Ipv4Addr, u16, u16),
    counter: &str,
) {
    let before = bed.counters()[counter];
    let started = Instant::now();
    let err = tcp_request(from, SocketAddrV4::new(ip, tcp_port), DROPPED)
        .expect_err("a TCP connection that must be dropped");
    assert_eq!(
        err.kind(),
        ErrorKind::TimedOut,
        "{ip}:{tcp_port}/TCP: {err}"
    );
    let err = udp_request(from, SocketAddrV4::new(ip, udp_port), DROPPED)
        .expect_err("a UDP request that must be dropped");
    assert_eq!(
        err.kind(),
        ErrorKind::TimedOut,
        "{ip}:{udp_port}/UDP: {err}"
    );
    assert!(
        started.elapsed() < 4 * DROPPED,
        "took {:?}",
        started.elapsed()
    );
    let after = bed.counters()[counter];
    assert!(
        after >= before + 2,
        "{counter} counted the SYN and the datagram: {before} -> {after}\n{}",
        bed.services()
    );
}

/// The health check's answer on node1's NIC address: status and JSON body.
fn health_check(bed: &LanBed, port: u16) -> (u16, Value) {
    let (status, body) = get(&bed.topo.ext, SocketAddr::from((NIC1, port)), "/")
        .unwrap_or_else(|e| panic!("GET {NIC1}:{port}: {e}"));
    let body = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{NIC1}:{port}: not JSON ({e}): {body:?}"));
    (status, body)
}

/// Polls the health check of Service `local` on `port` from ext until it answers `status`
/// with kube-proxy's body for `local_endpoints`; panics with the last answer after 5 s.
#[track_caller]
fn wait_for_health(bed: &LanBed, port: u16, status: u16, local_endpoints: u64) {
    let want = (
        status,
        json!({
            "service": {"namespace": "default", "name": "local"},
            "localEndpoints": local_endpoints,
            "serviceProxyHealthy": true,
        }),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = health_check(bed, port);
        if answer == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "health check {NIC1}:{port}: wanted {want:?}, still {answer:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One datagram from `from` to `target` on an unconnected socket: where the answer came
/// from, and what it says.
fn udp_answer_from(from: &Netns, target: SocketAddrV4) -> (SocketAddr, Reply) {
    let socket = from
        .run(|| UdpSocket::bind("0.0.0.0:0"))
        .expect("in the namespace")
        .expect("a UDP socket");
    socket.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    socket.send_to(b"hello\n", target).expect("sending");
    let mut buf = [0u8; 512];
    let (n, source) = socket
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("no answer to {target}: {e}"));
    let reply = Reply::parse(&String::from_utf8_lossy(&buf[..n])).expect("a who-am-I answer");
    (source, reply)
}

/// The first test's Services: NodePorts with a backend on node2 (`np-remote`) and on node1
/// (`np-local`), a LoadBalancer with an external IP and two ingress IPs, one of ipMode Proxy
/// (`lb`), and the endpoints of `ranged` (see `ranged`).
fn nodeports_and_load_balancers(local: &[Ipv4Addr], remote: &[Ipv4Addr]) -> String {
    list(&[
        svc(
            "np-remote",
            vip(11),
            "NodePort",
            Some((30_080, 30_053)),
            &json!({}),
        ),
        endpoints("np-remote", &[(remote[0], NODE2)]),
        svc(
            "np-local",
            vip(12),
            "NodePort",
            Some((30_081, 30_054)),
            &json!({}),
        ),
        endpoints("np-local", &[(local[0], NODE1)]),
        with_ingress(
            svc(
                "lb",
                vip(13),
                "LoadBalancer",
                Some((30_082, 30_055)),
                &json!({"externalIPs": [EXTERNAL_IP.to_string()]}),
            ),
            &[(LB_IP, Some("VIP")), (PROXY_IP, Some("Proxy"))],
        ),
        endpoints("lb", &[(remote[0], NODE2), (remote[1], NODE2)]),
        endpoints("ranged", &[(remote[1], NODE2)]),
    ])
}

/// LoadBalancer `ranged` on `RANGED_IP`, for sources in `range` only.
fn ranged(range: &str) -> Value {
    with_ingress(
        svc(
            "ranged",
            vip(14),
            "LoadBalancer",
            Some((30_083, 30_056)),
            &json!({"loadBalancerSourceRanges": [range]}),
        ),
        &[(RANGED_IP, None)],
    )
}

/// Where a flow node1 masquerades towards `backend` comes from: the source of node1's route
/// towards it, its NIC address towards node2's pods, its pod-side address towards its own.
fn masqueraded_towards(backend: Ipv4Addr) -> Ipv4Addr {
    if backend.octets()[..3] == POD_SIDE1.octets()[..3] {
        POD_SIDE1
    } else {
        NIC1
    }
}

// --- Tests -----------------------------------------------------------------------------------

/// NodePorts with a remote and a local backend, a load-balancer IP and an external IP,
/// `ipMode: Proxy` left alone, loadBalancerSourceRanges: all from ext, externalTrafficPolicy
/// Cluster (masqueraded to node1's address of the route towards the backend).
#[test]
fn nodeports_and_load_balancer_ips_serve_external_clients() {
    if !require_privileges("nodeports_and_load_balancer_ips_serve_external_clients") {
        return;
    }
    let bed = LanBed::new(lan(1, 2, 0));
    assert_eq!(
        (NIC1, POD_SIDE1),
        (LanNode::Node1.nic_addr(), LanNode::Node1.pod_gateway())
    );
    let local = bed.topo.local_backend_addrs();
    let remote = bed.topo.remote_backend_addrs();
    bed.write("apps.json", &nodeports_and_load_balancers(&local, &remote));
    bed.write("ranged.json", &ranged("198.18.77.0/24").to_string());
    let _agent = bed.start_agent(&[]);
    clients_on_one_cpu();
    let ext = &bed.topo.ext;

    // 1 and 10: a NodePort on node1's NIC address with its backend on node2, TCP and UDP:
    // forwarded from the NIC itself (XDP_TX), there and back.
    let before = bed.counters();
    served_by(
        &bed,
        ext,
        (NIC1, 30_080, 30_053),
        3,
        &[remote[0]],
        masqueraded_towards,
    );
    let after = bed.counters();
    let moved = |name: &str| after[name] - before[name];
    assert!(
        moved("xdp_tx") >= 2 * 3 * 2,
        "requests and replies of 3 TCP and 3 UDP flows went out with XDP_TX: {:?}\n{}",
        after,
        bed.services()
    );
    assert!(moved("masqueraded") >= 6, "{after:?}");
    // 10: the UDP answers come from the NodePort the client sent to.
    let target = SocketAddrV4::new(NIC1, 30_053);
    let (source, reply) = udp_answer_from(ext, target);
    assert_eq!(source, SocketAddr::V4(target), "{reply}");
    assert_eq!(reply.backend, SocketAddrV4::new(remote[0], UDP_PORT));
    assert_eq!(*reply.peer.ip(), NIC1);
    // A NodePort with its backend on node1.
    served_by(
        &bed,
        ext,
        (NIC1, 30_081, 30_054),
        3,
        &[local[0]],
        masqueraded_towards,
    );

    // 2: the load-balancer IP and the external IP, balanced over both backends.
    for ip in [LB_IP, EXTERNAL_IP] {
        served_by(&bed, ext, (ip, 80, 53), 4, &remote, masqueraded_towards);
    }
    // An ingress IP of ipMode Proxy belongs to the load balancer: kproxy does not take it,
    // node1 routes it like any address it has no route for.
    let view = bed.view().expect("datapath");
    assert!(
        !view
            .services
            .iter()
            .any(|s| s.frontend.starts_with(&format!("{PROXY_IP}:"))),
        "{}",
        bed.services()
    );
    let err = tcp_request(ext, http_at(PROXY_IP, 80), TIMEOUT).expect_err("not served");
    assert_eq!(err.kind(), ErrorKind::NetworkUnreachable, "{err}");
    let err = udp_request(ext, http_at(PROXY_IP, 53), TIMEOUT).expect_err("not served");
    assert_eq!(err.kind(), ErrorKind::NetworkUnreachable, "{err}");

    // 5: loadBalancerSourceRanges that leave ext out: its LB IP drops ext's flows, its
    // NodePort (not restricted by them) still serves.
    dropped(&bed, ext, (RANGED_IP, 80, 53), "drop_source_range");
    served_by(
        &bed,
        ext,
        (NIC1, 30_083, 30_056),
        1,
        &[remote[1]],
        masqueraded_towards,
    );
    // ext's range: served.
    bed.write("ranged.json", &ranged("198.18.9.0/24").to_string());
    wait_until("ext's source range", TIMEOUT, || {
        let view = bed.view()?;
        view.services
            .iter()
            .any(|s| {
                s.frontend == format!("{RANGED_IP}:80/TCP") && s.source_ranges == ["198.18.9.0/24"]
            })
            .then_some(())
    });
    served_by(
        &bed,
        ext,
        (RANGED_IP, 80, 53),
        1,
        &[remote[1]],
        masqueraded_towards,
    );
}

/// externalTrafficPolicy Local: external clients keep their address and get node1's
/// endpoints only, or are dropped when node1 has none; node1's pods go cluster-wide; the
/// health-check NodePort tells a load balancer whether node1 has local endpoints.
#[test]
fn external_traffic_policy_local_and_its_health_check() {
    if !require_privileges("external_traffic_policy_local_and_its_health_check") {
        return;
    }
    let bed = LanBed::new(lan(1, 1, 1));
    let (local, remote) = (
        bed.topo.local_backends[0].addr(),
        bed.topo.remote_backends[0].addr(),
    );
    let lb_ip = Ipv4Addr::new(198, 19, 4, 1);
    let hc_port = 31_090;
    let local_service = || {
        with_ingress(
            svc(
                "local",
                vip(21),
                "LoadBalancer",
                Some((30_090, 30_091)),
                &json!({"externalTrafficPolicy": "Local", "healthCheckNodePort": hc_port}),
            ),
            &[(lb_ip, None)],
        )
    };
    let both = [(local, NODE1), (remote, NODE2)];
    bed.write(
        "local.json",
        &list(&[local_service(), endpoints("local", &both)]),
    );
    bed.write(
        "none-here.json",
        &list(&[
            svc(
                "none-here",
                vip(22),
                "NodePort",
                Some((30_092, 30_093)),
                &json!({"externalTrafficPolicy": "Local"}),
            ),
            endpoints("none-here", &[(remote, NODE2)]),
        ]),
    );
    let _agent = bed.start_agent(&[]);
    clients_on_one_cpu();
    let ext = &bed.topo.ext;
    let client = &bed.topo.local_clients[0];
    let ext_addr = bed.topo.ext_addr();

    // 3: ext keeps its address and gets node1's endpoint, on the NodePort and the LB IP.
    for ip in [NIC1, lb_ip] {
        let (tcp_port, udp_port) = if ip == NIC1 {
            (30_090, 30_091)
        } else {
            (80, 53)
        };
        served_by(&bed, ext, (ip, tcp_port, udp_port), 3, &[local], |_| {
            ext_addr
        });
    }
    // node1's pod goes cluster-wide and keeps its address too.
    served_by(
        &bed,
        &client.ns,
        (NIC1, 30_090, 30_091),
        4,
        &[local, remote],
        |_| client.addr(),
    );
    // No endpoint on node1: ext is dropped; node1's pod still reaches node2's endpoint.
    dropped(&bed, ext, (NIC1, 30_092, 30_093), "drop_no_local_endpoint");
    served_by(
        &bed,
        &client.ns,
        (NIC1, 30_092, 30_093),
        2,
        &[remote],
        |_| client.addr(),
    );

    // 4: the health check follows node1's endpoints.
    wait_for_health(&bed, hc_port, 200, 1);
    bed.write(
        "local.json",
        &list(&[local_service(), endpoints("local", &[(remote, NODE2)])]),
    );
    wait_for_health(&bed, hc_port, 503, 0);
    // Meanwhile external traffic to the LB IP has nowhere to go on node1.
    dropped(&bed, ext, (lb_ip, 80, 53), "drop_no_local_endpoint");
    bed.write(
        "local.json",
        &list(&[local_service(), endpoints("local", &both)]),
    );
    wait_for_health(&bed, hc_port, 200, 1);
    served_by(&bed, ext, (lb_ip, 80, 53), 1, &[local], |_| ext_addr);
}

/// Hairpin, masquerade of traffic from outside the cluster to a cluster IP, and node1's own
/// clients reaching cluster IPs, its own NodePort, LB IPs and external IPs.
#[test]
fn masquerade_hairpin_and_the_node_itself() {
    if !require_privileges("masquerade_hairpin_and_the_node_itself") {
        return;
    }
    let bed = LanBed::new(lan(2, 1, 1));
    let (alone, local) = (
        bed.topo.local_backends[0].addr(),
        bed.topo.local_backends[1].addr(),
    );
    let remote = bed.topo.remote_backends[0].addr();
    let (lb_ip, external_ip) = (Ipv4Addr::new(198, 19, 5, 1), Ipv4Addr::new(198, 19, 6, 1));
    let spread = [(local, NODE1), (remote, NODE2)];
    bed.write(
        "apps.json",
        &list(&[
            svc("alone", vip(31), "ClusterIP", None, &json!({})),
            endpoints("alone", &[(alone, NODE1)]),
            svc("web", vip(32), "ClusterIP", None, &json!({})),
            endpoints("web", &spread),
            svc(
                "np",
                vip(33),
                "NodePort",
                Some((30_100, 30_101)),
                &json!({}),
            ),
            endpoints("np", &spread),
            with_ingress(
                svc(
                    "lb",
                    vip(34),
                    "LoadBalancer",
                    Some((30_102, 30_103)),
                    &json!({"externalIPs": [external_ip.to_string()]}),
                ),
                &[(lb_ip, None)],
            ),
            endpoints("lb", &spread),
        ]),
    );
    let _agent = bed.start_agent(&[]);
    clients_on_one_cpu();

    // 6: the only backend of a cluster IP reaches itself through it, and sees node1's
    // address, not its own.
    let pod = &bed.topo.local_backends[0];
    served_by(&bed, &pod.ns, (vip(31), 80, 53), 2, &[alone], |_| POD_SIDE1);

    // 7: from outside the cluster CIDR, a cluster IP routed to node1 is masqueraded; a pod
    // keeps its address.
    served_by(
        &bed,
        &bed.topo.ext,
        (vip(32), 80, 53),
        4,
        &[local, remote],
        masqueraded_towards,
    );
    let client = &bed.topo.local_clients[0];
    served_by(
        &bed,
        &client.ns,
        (vip(32), 80, 53),
        4,
        &[local, remote],
        |_| client.addr(),
    );

    // 8: clients on node1 itself. Cluster, LB and external IPs leave through an attached
    // interface (a pod link stands in for the default gateway; its egress program
    // translates); node1's own NodePort, on its NIC address or 127.0.0.1, goes through lo.
    bed.node1()
        .ip(&[
            "route",
            "add",
            "198.19.0.0/16",
            "via",
            &client.addr().to_string(),
            "dev",
            &client.node_iface(),
        ])
        .expect("VIP route on node1");
    let node1_addrs = [NIC1, POD_SIDE1];
    let node1 = bed.node1();
    for target in [
        (vip(32), 80, 53),
        (NIC1, 30_100, 30_101),
        // kube-proxy iptables mode's localhost NodePorts (on by default).
        (Ipv4Addr::LOCALHOST, 30_100, 30_101),
        (lb_ip, 80, 53),
        (external_ip, 80, 53),
    ] {
        for_each_backend_from_node1(&bed, node1, target, &[local, remote], &node1_addrs);
    }
}

/// Node1's requests to `target` are answered by every one of `backends`, each seeing one
/// of node1's addresses.
#[track_caller]
fn for_each_backend_from_node1(
    bed: &LanBed,
    node1: &Netns,
    target: (Ipv4Addr, u16, u16),
    backends: &[Ipv4Addr],
    node1_addrs: &[Ipv4Addr],
) {
    for udp_proto in [false, true] {
        let port = if udp_proto { target.2 } else { target.1 };
        let to = SocketAddrV4::new(target.0, port);
        let mut seen = BTreeSet::new();
        for _ in 0..4 {
            let reply = if udp_proto {
                udp(bed, node1, to)
            } else {
                tcp(bed, node1, to)
            };
            assert!(
                node1_addrs.contains(reply.peer.ip()),
                "node1 -> {to}: {} saw {}",
                reply.backend,
                reply.peer
            );
            seen.insert(*reply.backend.ip());
        }
        let all: BTreeSet<Ipv4Addr> = backends.iter().copied().collect();
        assert_eq!(seen, all, "node1 -> {to}: every backend serves");
    }
}

/// 9: a pod whose link appears after the agent started reaches a cluster IP through it,
/// as a pod of the cluster (its address kept: the cluster CIDR says it is local), and
/// hairpins through its own Service.
#[test]
fn a_pod_that_appears_later_is_served_as_a_local_pod() {
    if !require_privileges("a_pod_that_appears_later_is_served_as_a_local_pod") {
        return;
    }
    pod_that_appears_later(&[]);
}

/// The same with local traffic told by interface: the new pod's link is marked a pod's as
/// it is attached, or its flows would be masqueraded.
#[test]
fn a_pod_that_appears_later_is_local_by_its_interface() {
    if !require_privileges("a_pod_that_appears_later_is_local_by_its_interface") {
        return;
    }
    pod_that_appears_later(&[
        "--detect-local-mode",
        "InterfaceNamePrefix",
        "--pod-interface-name-prefix",
        POD_IFACE_PREFIX,
    ]);
}

fn pod_that_appears_later(agent_flags: &[&str]) {
    let bed = LanBed::new(lan(0, 1, 0));
    let remote = bed.topo.remote_backends[0].addr();
    bed.write(
        "web.json",
        &list(&[
            svc("web", vip(41), "ClusterIP", None, &json!({})),
            endpoints("web", &[(remote, NODE2)]),
        ]),
    );
    let _agent = bed.start_agent(agent_flags);
    // ext, no pod, is masqueraded whichever way local traffic is told.
    served_by(&bed, &bed.topo.ext, (vip(41), 80, 53), 1, &[remote], |_| {
        NIC1
    });

    let created = Instant::now();
    let pod = bed
        .topo
        .add_pod(LanNode::Node1)
        .expect("a new pod on node1");
    let _servers = pod
        .serve(TCP_PORT, UDP_PORT)
        .expect("the new pod's servers");
    bed.write(
        "self.json",
        &list(&[
            svc("self", vip(42), "ClusterIP", None, &json!({})),
            endpoints("self", &[(pod.addr(), NODE1)]),
        ]),
    );
    // Attached within moments of its creation (until then node1 answers "net unreachable").
    let first = wait_until("the new pod's first answer", TIMEOUT, || {
        tcp_request(&pod.ns, http_at(vip(41), 80), Duration::from_millis(200)).ok()
    });
    eprintln!(
        "{} answered {:?} after the pod's creation began",
        first.backend,
        created.elapsed()
    );
    // Its very first flow is already known as a pod's (the interface is marked before a
    // program sees its packets).
    assert_eq!(
        *first.peer.ip(),
        pod.addr(),
        "the new pod's first flow was masqueraded"
    );
    served_by(&bed, &pod.ns, (vip(41), 80, 53), 2, &[remote], |_| {
        pod.addr()
    });
    bed.wait_for(
        &format!("{}:80/TCP", vip(42)),
        &[SocketAddrV4::new(pod.addr(), TCP_PORT)],
    );
    served_by(&bed, &pod.ns, (vip(42), 80, 53), 2, &[pod.addr()], |_| {
        POD_SIDE1
    });
}

/// `--lb-algorithm maglev`: every external flow to a load-balancer IP goes to the backend
/// that the Maglev table of its backends and the flow's hash name — what every node running
/// kproxy computes alike — through XDP on node1's NIC and the agent's own flags, model and
/// sync. (The same flow on another node, after a lost conntrack entry, and the share that
/// moves when a backend goes: tests/tests/maglev.rs.)
#[test]
fn maglev_sends_external_flows_where_every_node_would() {
    use kproxy::model::maglev::{DEFAULT_TABLE_SIZE, table};
    use kproxy_common::maglev::flow_hash;
    use kproxy_testbed::TcpSession;

    if !require_privileges("maglev_sends_external_flows_where_every_node_would") {
        return;
    }
    let bed = LanBed::new(lan(0, 3, 0));
    let remote = bed.topo.remote_backend_addrs();
    let objects = list(&[
        with_ingress(
            svc(
                "mag",
                vip(14),
                "LoadBalancer",
                Some((30_090, 30_091)),
                &json!({}),
            ),
            &[(LB_IP, Some("VIP"))],
        ),
        endpoints(
            "mag",
            &remote.iter().map(|a| (*a, NODE2)).collect::<Vec<_>>(),
        ),
    ]);
    bed.write("apps.json", &objects);
    let _agent = bed.start_agent(&["--lb-algorithm", "maglev"]);
    let ext = &bed.topo.ext;
    let target = SocketAddrV4::new(LB_IP, 80);
    wait_until("the load-balancer IP served", TIMEOUT, || {
        tcp_request(ext, target, TIMEOUT).ok()
    });

    let backends: Vec<SocketAddr> = remote
        .iter()
        .map(|a| SocketAddr::from((*a, TCP_PORT)))
        .collect();
    let entries = table(&backends, DEFAULT_TABLE_SIZE).expect("a table");
    let before = bed.counters();
    let mut seen = BTreeSet::new();
    let mut last = None;
    for _ in 0..24 {
        let mut session = TcpSession::connect(ext, target, TIMEOUT)
            .unwrap_or_else(|e| panic!("TCP ext -> {target}: {e}\n{}", bed.services()));
        let client = session.local_addr().expect("the client's address");
        let reply = session.request().expect("answered");
        let hash = flow_hash(
            u32::from_ne_bytes(client.ip().octets()),
            u32::from_ne_bytes(LB_IP.octets()),
            client.port().to_be(),
            80u16.to_be(),
            6,
        );
        let want = backends[entries[(hash % DEFAULT_TABLE_SIZE) as usize] as usize];
        assert_eq!(
            SocketAddr::V4(reply.backend),
            want,
            "ext {client} -> {target}\n{}",
            bed.services()
        );
        seen.insert(reply.backend);
        last = Some((client, reply.backend));
    }
    // `kproxy explain` names the same backend for the last flow, from the agent's table.
    let (client, backend) = last.expect("24 flows");
    let out = bed
        .node1()
        .command(support::agent::kproxy_bin())
        .args([
            "explain",
            &client.to_string(),
            &format!("{target}/TCP"),
            "--pin-dir",
        ])
        .arg(bed.site().home.pin_dir())
        .output()
        .expect("running kproxy explain");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains(&format!(
                "goes to {backend} (Maglev: the flow's hash picks entry"
            )),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(seen.len() >= 2, "24 flows spread: {seen:?}");
    let listing = bed.services();
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with(&format!("{target}/TCP ")) && l.ends_with("[external,maglev]")),
        "kproxy services shows the load-balancer IP's algorithm:\n{listing}"
    );
    let after = bed.counters();
    assert_eq!(
        after["maglev_fallback"], before["maglev_fallback"],
        "every table read"
    );
}
