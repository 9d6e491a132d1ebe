//! ClusterIP end to end: the agent binary in a node namespace, real TCP and UDP clients and
//! servers in their own namespaces, traffic through the kernel's TC and XDP hooks.

mod support;

use std::{
    collections::BTreeMap,
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use kproxy_testbed::{
    TcpSession, TopologyOptions, UdpSession, cpu, require_privileges, tcp_request, topology::vip,
    udp_request,
};
use support::{
    agent::{
        Agent, Bed, TCP_PORT, UDP_PORT, assert_spread_per_cpu, clients_on_one_cpu, wait_until,
    },
    manifests::{documents, service, slice},
};

const TIMEOUT: Duration = Duration::from_secs(2);

/// `web` (TCP 80 → 8080) and `dns` (UDP 53 → 5353) on all backends of the bed.
fn web_and_dns(bed: &Bed, web_vip: Ipv4Addr, affinity: Option<u32>) -> String {
    let backends = bed.backends();
    documents(&[
        service("web", web_vip, &[("http", 80, "TCP")], affinity),
        slice("web-1", "web", &[("http", TCP_PORT, "TCP")], &backends),
        service("dns", vip(53), &[("dns", 53, "UDP")], None),
        slice("dns-1", "dns", &[("dns", UDP_PORT, "UDP")], &backends),
    ])
}

fn backend_counts(bed: &Bed, target: SocketAddrV4, n: usize) -> BTreeMap<Ipv4Addr, usize> {
    let mut counts = BTreeMap::new();
    for i in 0..n {
        let reply = tcp_request(&bed.topo.client, target, TIMEOUT)
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(
            *reply.peer.ip(),
            bed.topo.client_addr(),
            "the backend sees the client's own address"
        );
        assert_eq!(reply.backend.port(), TCP_PORT);
        *counts.entry(*reply.backend.ip()).or_insert(0) += 1;
    }
    counts
}

#[test]
fn round_robin_spreads_300_connections_and_keeps_the_client_address() {
    if !require_privileges("round_robin_spreads_300_connections_and_keeps_the_client_address") {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    bed.write("apps.yaml", &web_and_dns(&bed, vip(10), None));
    let _agent = Agent::start(&bed, &[]);
    clients_on_one_cpu();
    let counts = backend_counts(&bed, SocketAddrV4::new(vip(10), 80), 300);
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        [100, 100, 100],
        "one CPU's counter goes round the three backends: {counts:?}"
    );
    let view = bed.view().expect("reading the datapath");
    let web = view
        .services
        .iter()
        .find(|s| s.frontend == "198.19.0.10:80/TCP")
        .expect("web frontend");
    assert_eq!(
        web.new_flows, 300,
        "the datapath counted every new connection"
    );
    assert_eq!(web.backends.iter().map(|b| b.new_flows).sum::<u64>(), 300);
    // Traffic that is not for a service passes untouched: straight to a pod works.
    let direct = SocketAddrV4::new(bed.topo.backend_addr(1), TCP_PORT);
    let reply = tcp_request(&bed.topo.client, direct, TIMEOUT).expect("direct request");
    assert_eq!(reply.backend, direct);
}

/// Every CPU has a round-robin counter of its own, starting at a slot of its own: connections
/// made from all CPUs at once still spread evenly, and reach every backend.
#[test]
fn round_robin_spreads_300_connections_from_clients_on_every_cpu() {
    if !require_privileges("round_robin_spreads_300_connections_from_clients_on_every_cpu") {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    bed.write("apps.yaml", &web_and_dns(&bed, vip(10), None));
    let _agent = Agent::start(&bed, &[]);
    let cpus = cpu::allowed_cpus().expect("allowed CPUs");
    let target = SocketAddrV4::new(vip(10), 80);
    let per_cpu: Vec<BTreeMap<Ipv4Addr, usize>> = std::thread::scope(|scope| {
        let clients: Vec<_> = cpus
            .iter()
            .enumerate()
            .map(|(i, &cpu)| {
                // 300 in all: the first CPUs make one more when they do not divide it.
                let n = 300 / cpus.len() + usize::from(i < 300 % cpus.len());
                let bed = &bed;
                scope.spawn(move || {
                    cpu::pin_thread_to(cpu).expect("pinning a client");
                    backend_counts(bed, target, n)
                })
            })
            .collect();
        clients
            .into_iter()
            .map(|c| c.join().expect("client"))
            .collect()
    });
    eprintln!("backends by client CPU {cpus:?}: {per_cpu:?}");
    let mut counts = BTreeMap::new();
    for (backend, n) in per_cpu.iter().flatten() {
        *counts.entry(*backend).or_insert(0) += n;
    }
    assert_eq!(counts.values().sum::<usize>(), 300);
    assert_eq!(counts.len(), 3, "every backend chosen: {counts:?}");
    let (max, min) = (counts.values().max(), counts.values().min());
    let (max, min) = (*max.expect("counts"), *min.expect("counts"));
    assert!(
        max * 4 <= min * 5,
        "max/min {max}/{min} > 1.25 over {} CPUs: {counts:?} ({per_cpu:?})",
        cpus.len()
    );
}

#[test]
fn udp_replies_come_from_the_vip() {
    if !require_privileges("udp_replies_come_from_the_vip") {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    bed.write("apps.yaml", &web_and_dns(&bed, vip(10), None));
    let _agent = Agent::start(&bed, &[]);
    clients_on_one_cpu();
    let target = SocketAddrV4::new(vip(53), 53);
    let mut seen = BTreeMap::new();
    for _ in 0..30 {
        // A connected UDP socket only accepts datagrams from the address it is connected to.
        let session = UdpSession::connect(&bed.topo.client, target, TIMEOUT).expect("udp socket");
        let first = session.request().expect("reply from the VIP");
        assert_eq!(
            session.request().expect("second datagram").backend,
            first.backend,
            "a UDP flow keeps its backend"
        );
        assert_eq!(*first.peer.ip(), bed.topo.client_addr());
        *seen.entry(first.backend).or_insert(0) += 1;
    }
    assert_eq!(
        seen.values().copied().collect::<Vec<_>>(),
        [10, 10, 10],
        "{seen:?}"
    );
}

#[test]
fn client_ip_affinity_keeps_a_client_on_one_backend() {
    if !require_privileges("client_ip_affinity_keeps_a_client_on_one_backend") {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    bed.write("apps.yaml", &web_and_dns(&bed, vip(10), Some(600)));
    let _agent = Agent::start(&bed, &[]);
    let counts = backend_counts(&bed, SocketAddrV4::new(vip(10), 80), 40);
    assert_eq!(
        counts.len(),
        1,
        "all 40 connections on one backend: {counts:?}"
    );
}

#[test]
fn client_ip_affinity_expires_after_its_timeout_without_traffic() {
    if !require_privileges("client_ip_affinity_expires_after_its_timeout_without_traffic") {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    bed.write("apps.yaml", &web_and_dns(&bed, vip(10), Some(2)));
    let _agent = Agent::start(&bed, &[]);
    // On one CPU, the connection after the affinity expired takes the turn after the first's.
    clients_on_one_cpu();
    let target = SocketAddrV4::new(vip(10), 80);
    let request = || {
        tcp_request(&bed.topo.client, target, TIMEOUT)
            .expect("request")
            .backend
    };
    let first = request();
    assert_eq!(request(), first);
    // New connections keep the affinity alive past its timeout (each one refreshes it, as
    // kube-proxy's `recent --set` on new connections does)...
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(800));
        assert_eq!(
            request(),
            first,
            "a new connection within the timeout refreshes it"
        );
    }
    // ...traffic on an established connection does not: kube-proxy's rules see new
    // connections only.
    let mut session = TcpSession::connect(&bed.topo.client, target, TIMEOUT).expect("connect");
    for _ in 0..8 {
        assert_eq!(
            session.request().expect("keep-alive request").backend,
            first,
            "the connection itself stays on its backend"
        );
        std::thread::sleep(Duration::from_millis(400));
    }
    drop(session);
    // 3.2 s after the last new connection the 2 s affinity is gone: the next connection
    // chooses afresh (round-robin moves on).
    let after = request();
    assert_ne!(after, first, "the affinity expired");
    assert_eq!(request(), after, "and a new one started");
}

#[test]
fn a_service_without_endpoints_refuses_connections_at_once() {
    if !require_privileges("a_service_without_endpoints_refuses_connections_at_once") {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    bed.write(
        "empty.yaml",
        &documents(&[
            service(
                "empty",
                vip(20),
                &[("http", 80, "TCP"), ("dns", 53, "UDP")],
                None,
            ),
            slice("empty-1", "empty", &[("http", TCP_PORT, "TCP")], &[]),
        ]),
    );
    let _agent = Agent::start(&bed, &[]);
    let started = Instant::now();
    let err = tcp_request(
        &bed.topo.client,
        SocketAddrV4::new(vip(20), 80),
        Duration::from_secs(3),
    )
    .expect_err("no endpoints");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused after {:?}",
        started.elapsed()
    );
    let err = udp_request(
        &bed.topo.client,
        SocketAddrV4::new(vip(20), 53),
        Duration::from_secs(3),
    )
    .expect_err("no endpoints");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    let view = bed.view().expect("datapath");
    assert_eq!(view.counters["rejected"], 2);
}

#[test]
fn removing_an_endpoint_applies_live() {
    if !require_privileges("removing_an_endpoint_applies_live") {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    bed.write("apps.yaml", &web_and_dns(&bed, vip(10), None));
    let _agent = Agent::start(&bed, &[]);
    let all = bed.backends();
    let remaining = &all[..2];
    bed.write(
        "apps.yaml",
        &documents(&[
            service("web", vip(10), &[("http", 80, "TCP")], None),
            slice("web-1", "web", &[("http", TCP_PORT, "TCP")], remaining),
        ]),
    );
    let want: Vec<SocketAddrV4> = remaining
        .iter()
        .map(|a| SocketAddrV4::new(*a, TCP_PORT))
        .collect();
    let took = bed.wait_for_backends("198.19.0.10:80/TCP", &want, Duration::from_secs(1));
    eprintln!("endpoint removal applied after {took:?}");
    let counts = backend_counts(&bed, SocketAddrV4::new(vip(10), 80), 30);
    assert!(
        !counts.contains_key(&all[2]),
        "the removed backend got connections: {counts:?}"
    );
    assert_eq!(counts.len(), 2);
    assert!(
        bed.view()
            .expect("datapath")
            .services
            .iter()
            .all(|s| s.frontend != "198.19.0.53:53/UDP"),
        "the dns service was deleted from the manifest, so from the datapath"
    );
}

#[test]
fn an_established_connection_survives_unrelated_updates() {
    if !require_privileges("an_established_connection_survives_unrelated_updates") {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    bed.write("apps.yaml", &web_and_dns(&bed, vip(10), None));
    let _agent = Agent::start(&bed, &[]);
    let mut session =
        TcpSession::connect(&bed.topo.client, SocketAddrV4::new(vip(10), 80), TIMEOUT)
            .expect("connect");
    let backend = session.request().expect("first request").backend;
    let all = bed.backends();
    let other = |addrs: &[Ipv4Addr]| {
        documents(&[
            service("other", vip(30), &[("http", 80, "TCP")], None),
            slice("other-1", "other", &[("http", TCP_PORT, "TCP")], addrs),
        ])
    };
    let updates = [other(&all), other(&all[1..]), other(&[]), String::new()];
    for (i, update) in updates.iter().enumerate() {
        if update.is_empty() {
            bed.remove("other.yaml");
            wait_until("other to go", Duration::from_secs(1), || {
                bed.view()?
                    .services
                    .iter()
                    .all(|s| !s.frontend.starts_with("198.19.0.30"))
                    .then_some(())
            });
        } else {
            bed.write("other.yaml", update);
            wait_until("other to be programmed", Duration::from_secs(1), || {
                bed.view()?
                    .services
                    .iter()
                    .any(|s| s.frontend.starts_with("198.19.0.30"))
                    .then_some(())
            });
        }
        let reply = session
            .request()
            .unwrap_or_else(|e| panic!("request after update {i}: {e}"));
        assert_eq!(
            reply.backend, backend,
            "the connection stays on its backend"
        );
    }
}

#[test]
fn sigterm_while_the_agent_starts_stops_it_cleanly() {
    if !require_privileges("sigterm_while_the_agent_starts_stops_it_cleanly") {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    bed.write("apps.yaml", &web_and_dns(&bed, vip(10), None));
    // Just after its first log line (before the maps exist), once the first view of the
    // cluster is in (the maps are being written, the kernel is verifying the programs), and
    // just after it reports ready (before it first waits for anything): a pod deleted at any
    // of these moments.
    for moment in ["serving healthz", "first complete view", " ready"] {
        let mut agent = Agent::spawn_starting(&bed, &[]);
        agent.wait_for_log(moment, Duration::from_secs(10));
        let status = agent.stop();
        assert!(
            status.success(),
            "SIGTERM after {moment:?} ends the agent cleanly: {status}"
        );
    }
}

#[test]
fn traffic_keeps_flowing_while_the_agent_restarts() {
    if !require_privileges("traffic_keeps_flowing_while_the_agent_restarts") {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    bed.write("apps.yaml", &web_and_dns(&bed, vip(10), None));
    let agent = Agent::start(&bed, &[]);
    clients_on_one_cpu();
    let target = SocketAddrV4::new(vip(10), 80);
    let mut session = TcpSession::connect(&bed.topo.client, target, TIMEOUT).expect("connect");
    let backend = session.request().expect("request").backend;

    let status = agent.stop();
    assert!(status.success(), "SIGTERM ends the agent cleanly: {status}");
    assert_eq!(
        session
            .request()
            .expect("established flow with the agent gone")
            .backend,
        backend
    );
    let counts = backend_counts(&bed, target, 6);
    assert_eq!(
        counts.len(),
        3,
        "new connections still balanced while no agent runs: {counts:?}"
    );

    let agent = Agent::start(&bed, &[]);
    assert!(
        agent.log_text().contains("recovered the datapath"),
        "{}",
        agent.log_text()
    );
    assert!(
        agent.log_text().contains("replaced the program"),
        "{}",
        agent.log_text()
    );
    assert_eq!(
        session
            .request()
            .expect("established flow after the restart")
            .backend,
        backend
    );
    let view = bed.view().expect("datapath");
    let web = view
        .services
        .iter()
        .find(|s| s.frontend == "198.19.0.10:80/TCP")
        .expect("web");
    assert_eq!(web.new_flows, 1 + 6, "counters survive the restart");
    assert_eq!(backend_counts(&bed, target, 3).len(), 3);
}

#[test]
fn bad_manifests_are_reported_and_the_rest_is_served() {
    if !require_privileges("bad_manifests_are_reported_and_the_rest_is_served") {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    bed.write(
        "broken.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: broken\n",
    );
    bed.write("apps.yaml", &web_and_dns(&bed, vip(10), None));
    bed.write(
        "invalid.yaml",
        &documents(&[
            service(
                "badip",
                Ipv4Addr::new(198, 19, 0, 40),
                &[("http", 80, "TCP")],
                None,
            )
            .replace("198.19.0.40", "198.19.0.400"),
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: app}\n".to_owned(),
        ]),
    );
    let mut agent = Agent::start(&bed, &[]);
    clients_on_one_cpu();
    let counts = backend_counts(&bed, SocketAddrV4::new(vip(10), 80), 6);
    assert_eq!(counts.len(), 3);
    let log = agent.log_text();
    for needle in [
        "broken.yaml:1",
        "not valid YAML",
        "Service default/badip",
        "invalid.yaml:1",
        "invalid cluster IP",
        "apps/v1 Deployment",
    ] {
        assert!(log.contains(needle), "the log names {needle:?}:\n{log}");
    }
    // Fixing the file makes the service appear; the agent never stopped.
    bed.write(
        "broken.yaml",
        &service("broken", vip(41), &[("http", 80, "TCP")], None),
    );
    wait_until("the fixed service", Duration::from_secs(1), || {
        bed.view()?
            .services
            .iter()
            .any(|s| s.frontend == "198.19.0.41:80/TCP")
            .then_some(())
    });
    agent.assert_running();
}

#[test]
fn finished_flows_leave_the_conntrack_table() {
    if !require_privileges("finished_flows_leave_the_conntrack_table") {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    bed.write("apps.yaml", &web_and_dns(&bed, vip(10), None));
    let _agent = Agent::start(
        &bed,
        &[
            "--ct-tcp-close-timeout",
            "1",
            "--ct-udp-stream-timeout",
            "1",
            "--ct-gc-interval",
            "1",
        ],
    );
    backend_counts(&bed, SocketAddrV4::new(vip(10), 80), 20);
    udp_request(&bed.topo.client, SocketAddrV4::new(vip(53), 53), TIMEOUT).expect("udp");
    let flows = || {
        kproxy::dataplane::maps::FlowMaps::open(&bed.pin_dir())
            .ok()?
            .flows()
            .ok()
    };
    let during = flows().expect("conntrack").len();
    assert!(
        during >= 20,
        "finished flows are still tracked for their close timeout: {during}"
    );
    wait_until("conntrack to empty", Duration::from_secs(5), || {
        flows()?.is_empty().then_some(())
    });
}

#[test]
fn the_xdp_program_serves_a_nic() {
    if !require_privileges("the_xdp_program_serves_a_nic") {
        return;
    }
    // XDP sees frames as a NIC delivers them, with complete checksums: the client's link
    // must not hand over CHECKSUM_PARTIAL packets as a veth with offload would.
    let bed = Bed::new(TopologyOptions {
        client_tx_checksum_offload: false,
        ..TopologyOptions::default()
    });
    bed.write("apps.yaml", &web_and_dns(&bed, vip(10), None));
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
    let counts = backend_counts(&bed, SocketAddrV4::new(vip(10), 80), 30);
    assert_spread_per_cpu(&counts.values().copied().collect::<Vec<_>>(), 3, 30);
    udp_request(&bed.topo.client, SocketAddrV4::new(vip(53), 53), TIMEOUT)
        .expect("udp through xdp");
    let err = tcp_request(&bed.topo.client, SocketAddrV4::new(vip(99), 80), TIMEOUT)
        .expect_err("not a service");
    assert_eq!(
        err.kind(),
        ErrorKind::NetworkUnreachable,
        "non-service traffic passes and dies in the bed: {err}"
    );
    let counters = bed.view().expect("datapath").counters;
    assert_eq!(
        counters["xdp_deferred_to_tc"], 0,
        "the veth's peer sends complete checksums: XDP translated ({counters:?})"
    );
}

#[test]
fn clients_on_the_node_itself_reach_services_through_egress() {
    if !require_privileges("clients_on_the_node_itself_reach_services_through_egress") {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    bed.write("apps.yaml", &web_and_dns(&bed, vip(10), None));
    bed.write(
        "empty.yaml",
        &documents(&[service("empty", vip(20), &[("http", 80, "TCP")], None)]),
    );
    let _agent = Agent::start(&bed, &[]);
    clients_on_one_cpu();
    // Host processes reach VIPs through the node's routes (here via the client's link, standing
    // in for a default gateway): the egress program translates them before they leave.
    bed.route_vips_from_node();
    let node = &bed.topo.node;
    bed.forget_backend_neighbours();
    let mut counts = BTreeMap::new();
    for _ in 0..30 {
        let reply =
            tcp_request(node, SocketAddrV4::new(vip(10), 80), TIMEOUT).expect("node-local request");
        assert_eq!(
            *reply.peer.ip(),
            Ipv4Addr::new(198, 18, 1, 1),
            "the node's own source address"
        );
        *counts.entry(*reply.backend.ip()).or_insert(0) += 1;
    }
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        [10, 10, 10],
        "{counts:?}"
    );
    // The first SYN to each backend waited for ARP: none was lost.
    assert_eq!(bed.node_tcp_retransmissions(), 0, "SYNs were retransmitted");
    udp_request(node, SocketAddrV4::new(vip(53), 53), TIMEOUT).expect("node-local UDP");
    let err = tcp_request(node, SocketAddrV4::new(vip(20), 80), TIMEOUT).expect_err("no endpoints");
    assert_eq!(
        err.kind(),
        ErrorKind::ConnectionRefused,
        "the reject reaches the local socket: {err}"
    );
}

/// Unmounts what the agent mounted, even if the test fails half-way.
struct Unmount(std::ffi::CString);

impl Drop for Unmount {
    fn drop(&mut self) {
        // SAFETY: umount2 of the mount the agent made for this test.
        unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
    }
}

#[test]
fn the_agent_mounts_a_bpffs_for_its_pins_when_there_is_none() {
    if !require_privileges("the_agent_mounts_a_bpffs_for_its_pins_when_there_is_none") {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    bed.write("apps.yaml", &web_and_dns(&bed, vip(10), None));
    let plain = bed.dir.path().join("fs");
    std::fs::create_dir(&plain).expect("plain directory");
    let pin_dir = plain.join("kproxy");
    let _unmount =
        Unmount(std::ffi::CString::new(plain.as_os_str().as_encoded_bytes()).expect("path"));
    let ifaces = bed.topo.node_ifaces().join(",");
    let agent = Agent::start_pinned(&bed, &pin_dir, &["--attach", &ifaces], &[]);
    let is_bpffs = |path: &std::path::Path| {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: statfs into a zeroed struct we own.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        (unsafe { libc::statfs(c.as_ptr(), &raw mut st) } == 0) && st.f_type == 0xcafe_4a11
    };
    assert!(
        is_bpffs(&plain),
        "kproxy mounted a bpffs on the pin dir's parent"
    );
    assert!(pin_dir.join("KP_SERVICES").exists());
    tcp_request(&bed.topo.client, SocketAddrV4::new(vip(10), 80), TIMEOUT).expect("served");
    assert!(agent.stop().success());
    support::agent::kproxy_cleanup(&pin_dir);
}

#[test]
fn cleanup_detaches_everything() {
    if !require_privileges("cleanup_detaches_everything") {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    bed.write("apps.yaml", &web_and_dns(&bed, vip(10), None));
    let agent = Agent::start(&bed, &[]);
    assert!(agent.stop().success());
    tcp_request(&bed.topo.client, SocketAddrV4::new(vip(10), 80), TIMEOUT)
        .expect("served after the agent stopped");
    support::agent::kproxy_cleanup(&bed.pin_dir());
    assert!(!bed.pin_dir().exists(), "pins removed");
    let err = tcp_request(&bed.topo.client, SocketAddrV4::new(vip(10), 80), TIMEOUT)
        .expect_err("no datapath any more");
    assert_eq!(err.kind(), ErrorKind::NetworkUnreachable, "{err}");
}
