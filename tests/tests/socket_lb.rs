//! Socket-level load balancing end to end: the agent's cgroup programs attached to a cgroup
//! of the test's own, real clients started in it (processes: a cgroup holds processes), the
//! who-am-I servers on the backends. A connect or UDP send to a Service goes straight to a
//! backend, chosen as the packet path would; the application sees the VIP; nothing is
//! translated per packet.

mod support;

use std::{
    collections::BTreeMap,
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    time::Duration,
};

use aya::maps::MapData;
use kproxy_common::{
    filter::{CLIENTS_READY, client_bit},
    names,
    sock::{SockRev, SockRevKey},
};
use kproxy_testbed::{
    TopologyOptions, require_privileges, tcp_request,
    topology::{vip, vip6},
};
use support::{
    agent::{Agent, Bed, TCP_PORT, UDP_PORT, clients_on_one_cpu},
    cgroup::{Seen, TestCgroup},
    manifests::{documents, service, slice, slice6},
};

const TIMEOUT: Duration = Duration::from_secs(2);

/// `web` (TCP 80 → 8080, ClientIP affinity if asked), `dns` (UDP 53 → 5353) on all
/// backends, and `empty` (TCP 80, no endpoints).
fn services(bed: &Bed, affinity: Option<u32>) -> String {
    services_with_dns_on(bed, affinity, &bed.backends())
}

/// `services`, with `dns` on `dns_backends` only.
fn services_with_dns_on(bed: &Bed, affinity: Option<u32>, dns_backends: &[Ipv4Addr]) -> String {
    let backends = bed.backends();
    documents(&[
        service("web", vip(10), &[("http", 80, "TCP")], affinity),
        slice("web-1", "web", &[("http", TCP_PORT, "TCP")], &backends),
        service("dns", vip(53), &[("dns", 53, "UDP")], None),
        slice("dns-1", "dns", &[("dns", UDP_PORT, "UDP")], dns_backends),
        service("empty", vip(20), &[("http", 80, "TCP")], None),
    ])
}

fn web() -> SocketAddr {
    SocketAddrV4::new(vip(10), 80).into()
}

fn dns() -> SocketAddr {
    SocketAddrV4::new(vip(53), 53).into()
}

fn by_backend(seen: &[Seen<SocketAddrV4>]) -> BTreeMap<Ipv4Addr, usize> {
    let mut counts = BTreeMap::new();
    for s in seen {
        *counts.entry(*s.reply.backend.ip()).or_insert(0) += 1;
    }
    counts
}

fn counter(bed: &Bed, name: &str) -> u64 {
    bed.view().expect("reading the datapath").counters[name]
}

/// `counter` once it has stopped moving (the same in two reads 200 ms apart).
fn settled_counter(bed: &Bed, name: &str) -> u64 {
    let mut last = counter(bed, name);
    support::agent::wait_until(name, Duration::from_secs(5), || {
        std::thread::sleep(Duration::from_millis(200));
        let now = counter(bed, name);
        let settled = (now == last).then_some(now);
        last = now;
        settled
    })
}

fn start(bed: &Bed, cgroup: &TestCgroup, mode: &str) -> Agent {
    Agent::start(
        bed,
        &["--socket-lb", mode, "--cgroup-root", &cgroup.agent_arg()],
    )
}

#[test]
fn connects_go_straight_to_a_backend_round_robin_and_see_the_vip() {
    if !require_privileges("connects_go_straight_to_a_backend_round_robin_and_see_the_vip") {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    bed.write("apps.yaml", &services(&bed, None));
    let cgroup = TestCgroup::new();
    let _agent = start(&bed, &cgroup, "all");
    clients_on_one_cpu();
    let client = &bed.topo.client;

    let seen = cgroup
        .requests::<SocketAddrV4>(client, "tcp", web(), 30)
        .expect("TCP through the socket");
    assert_eq!(
        by_backend(&seen).values().copied().collect::<Vec<_>>(),
        [10, 10, 10],
        "round-robin over the three backends: {seen:?}"
    );
    for s in &seen {
        assert_eq!(
            s.seen,
            web(),
            "getpeername shows the VIP, not {}",
            s.reply.backend
        );
        assert_eq!(
            *s.reply.peer.ip(),
            bed.topo.client_addr(),
            "the client's own address"
        );
        assert_eq!(s.reply.backend.port(), TCP_PORT);
    }
    assert_eq!(counter(&bed, "socket_lb_connects"), 30);
    assert_eq!(
        counter(&bed, "service_packets"),
        0,
        "no packet of those connections was translated"
    );
    let view = bed.view().expect("datapath");
    let web_view = view
        .services
        .iter()
        .find(|s| s.frontend == "198.19.0.10:80/TCP")
        .expect("web frontend");
    assert_eq!(
        web_view.new_flows, 30,
        "the frontend counts its socket connects"
    );

    // Connected UDP sockets: a backend each, round-robin; the peer is the VIP.
    let seen = cgroup
        .requests::<SocketAddrV4>(client, "udp", dns(), 30)
        .expect("connected UDP");
    assert_eq!(
        by_backend(&seen).values().copied().collect::<Vec<_>>(),
        [10, 10, 10],
        "{seen:?}"
    );
    assert!(seen.iter().all(|s| s.seen == dns()), "{seen:?}");

    // One unconnected socket: its datagrams to the VIP are one flow, kept on one backend
    // as conntrack keeps it; every reply comes from the VIP.
    let seen = cgroup
        .requests::<SocketAddrV4>(client, "udp-sendto", dns(), 10)
        .expect("unconnected UDP");
    assert_eq!(
        by_backend(&seen).len(),
        1,
        "one flow, one backend: {seen:?}"
    );
    assert!(seen.iter().all(|s| s.seen == dns()), "{seen:?}");
    assert_eq!(counter(&bed, "socket_lb_datagrams"), 10);
    assert_eq!(counter(&bed, "service_packets"), 0);

    // A Service without endpoints is left to the packet path, whose reject the client sees.
    let err = cgroup
        .requests::<SocketAddrV4>(client, "tcp", SocketAddrV4::new(vip(20), 80).into(), 1)
        .expect_err("no endpoints");
    assert_eq!(err, ErrorKind::ConnectionRefused);
    assert_eq!(counter(&bed, "socket_lb_left_no_endpoints"), 1);
    assert_eq!(counter(&bed, "rejected"), 1);

    // None of those connections made a reply entry: the client's replies skip the lookup
    // (its bit in KP_CLIENTS is clear, and the agent made the bitmap ready at start).
    let (ready, bit) = client_bitmap(&bed, bed.topo.client_addr());
    assert!(ready && !bit, "ready {ready}, the client's bit {bit}");

    // A client outside the cgroup goes through the packet path as before.
    let reply = tcp_request(client, SocketAddrV4::new(vip(10), 80), TIMEOUT).expect("packet path");
    assert_eq!(*reply.peer.ip(), bed.topo.client_addr());
    assert!(counter(&bed, "service_packets") > 0);
    assert_eq!(
        client_bitmap(&bed, bed.topo.client_addr()),
        (true, true),
        "its flow's reply entry set the client's bit first"
    );
    assert_eq!(counter(&bed, "socket_lb_connects"), 30 + 30);
}

#[test]
fn client_ip_affinity_holds_on_the_socket_path() {
    if !require_privileges("client_ip_affinity_holds_on_the_socket_path") {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    bed.write("apps.yaml", &services(&bed, Some(60)));
    let cgroup = TestCgroup::new();
    let _agent = start(&bed, &cgroup, "all");
    let seen = cgroup
        .requests::<SocketAddrV4>(&bed.topo.client, "tcp", web(), 20)
        .expect("TCP through the socket");
    assert_eq!(
        by_backend(&seen).len(),
        1,
        "one backend for the client: {seen:?}"
    );
    assert_eq!(counter(&bed, "affinity_hits"), 19);
}

#[test]
fn host_only_serves_the_node_and_leaves_pods_to_the_packet_path() {
    if !require_privileges("host_only_serves_the_node_and_leaves_pods_to_the_packet_path") {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    bed.write("apps.yaml", &services(&bed, None));
    let cgroup = TestCgroup::new();
    let agent = start(&bed, &cgroup, "host-only");
    clients_on_one_cpu();
    // The client namespace stands for a pod: its connects are the packet path's.
    let seen = cgroup
        .requests::<SocketAddrV4>(&bed.topo.client, "tcp", web(), 6)
        .expect("pod traffic through the packet path");
    assert_eq!(by_backend(&seen).len(), 3, "{seen:?}");
    assert!(seen.iter().all(|s| s.seen == web()));
    assert_eq!(counter(&bed, "socket_lb_left_pod"), 6);
    assert_eq!(counter(&bed, "socket_lb_connects"), 0);
    // The connections' last packets (the client's final ACKs) leave after the client has:
    // counted once they have all passed.
    let translated = settled_counter(&bed, "service_packets");
    assert!(translated > 0, "the pod's packets were translated");

    // The node's own sockets are served at the socket. The node reaches VIPs through the
    // client's link (standing in for a default gateway), which socket-level load balancing
    // never uses: the connect already names the backend.
    bed.route_vips_from_node();
    let seen = cgroup
        .requests::<SocketAddrV4>(&bed.topo.node, "tcp", web(), 6)
        .expect("node traffic through the socket");
    assert_eq!(by_backend(&seen).len(), 3, "{seen:?}");
    assert!(seen.iter().all(|s| s.seen == web()));
    assert_eq!(counter(&bed, "socket_lb_connects"), 6);
    assert_eq!(counter(&bed, "service_packets"), translated);
    drop(agent);

    // Turned off, the programs leave the cgroup: the node's connects go through the packet
    // path again.
    let _agent = start(&bed, &cgroup, "off");
    assert!(
        !bed.pin_dir().join("cgroup-links").exists(),
        "the cgroup links are gone"
    );
    cgroup
        .requests::<SocketAddrV4>(&bed.topo.node, "tcp", web(), 3)
        .expect("node traffic through the packet path");
    assert_eq!(counter(&bed, "socket_lb_connects"), 6);
    assert!(counter(&bed, "service_packets") > translated);
}

/// `bpf_attach_type` values of the hooks these tests query.
const BPF_CGROUP_INET4_CONNECT: u32 = 10;
const BPF_CGROUP_INET_SOCK_RELEASE: u32 = 34;

/// Programs attached to `cgroup` for `attach_type` (`BPF_PROG_QUERY`).
fn programs_attached(cgroup: &TestCgroup, attach_type: u32) -> u32 {
    const BPF_PROG_QUERY: libc::c_long = 16;
    let dir = std::fs::File::open(cgroup.path()).expect("opening the cgroup");
    // union bpf_attr's query: target_fd, attach_type, query_flags, attach_flags (u32 each),
    // prog_ids (u64), prog_cnt (u32): with no prog_ids buffer the kernel only counts.
    let mut attr = [0u32; 32];
    attr[0] = u32::try_from(std::os::fd::AsRawFd::as_raw_fd(&dir)).expect("an fd");
    attr[1] = attach_type;
    // SAFETY: bpf(2) with an attr buffer we own, larger than the query needs.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    assert_eq!(rc, 0, "BPF_PROG_QUERY: {}", std::io::Error::last_os_error());
    attr[6]
}

fn connect4_programs(cgroup: &TestCgroup) -> u32 {
    programs_attached(cgroup, BPF_CGROUP_INET4_CONNECT)
}

/// `KP_CLIENTS` through its pin: whether it is ready, and whether `client`'s bit is set.
fn client_bitmap(bed: &Bed, client: Ipv4Addr) -> (bool, bool) {
    let path = kproxy::dataplane::load::map_pin_path(&bed.pin_dir(), names::MAP_CLIENTS);
    let map = aya::maps::Map::from_map_data(MapData::from_pin(&path).expect("pinned map"))
        .expect("a map");
    let words: aya::maps::Array<_, u64> = map.try_into().expect("an array of words");
    let (entry, bit) = client_bit(u32::from(client).to_be());
    let word = |i| words.get(&i, 0).expect("a word");
    (word(CLIENTS_READY) != 0, word(entry) & bit != 0)
}

/// Entries of the IPv4 table `name` (`KP_SOCK_REV`, values `SockRev`, or `KP_SOCK_UDP`,
/// values `u32`; both keyed by socket and backend), counted through its pin.
fn socket_entries<V: aya::Pod>(bed: &Bed, name: &str) -> usize {
    let path = kproxy::dataplane::load::map_pin_path(&bed.pin_dir(), name);
    let map = aya::maps::Map::from_map_data(MapData::from_pin(&path).expect("pinned map"))
        .expect("a map");
    let table: aya::maps::HashMap<_, SockRevKey, V> = map
        .try_into()
        .expect("an LRU hash keyed by socket and backend");
    table
        .keys()
        .collect::<Result<Vec<_>, _>>()
        .expect("its keys")
        .len()
}

#[test]
fn sockets_are_served_while_the_agent_restarts_and_its_programs_are_swapped_in_place() {
    if !require_privileges(
        "sockets_are_served_while_the_agent_restarts_and_its_programs_are_swapped_in_place",
    ) {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    bed.write("apps.yaml", &services(&bed, None));
    let cgroup = TestCgroup::new();
    let agent = start(&bed, &cgroup, "all");
    clients_on_one_cpu();
    assert_eq!(connect4_programs(&cgroup), 1);
    cgroup
        .requests::<SocketAddrV4>(&bed.topo.client, "tcp", web(), 3)
        .expect("before the restart");
    // A socket connected before the restart keeps its frontend (its entry is in a map the
    // next agent adopts).
    let mut held = HeldSocket::spawn(&cgroup, &bed.topo.client, dns());
    let first = support::cgroup::parse_line::<SocketAddrV4>(&held.ask());
    assert_eq!(first.seen, dns());
    assert!(agent.stop().success());
    // No agent: the pinned links keep the programs attached.
    let seen = cgroup
        .requests::<SocketAddrV4>(&bed.topo.client, "tcp", web(), 3)
        .expect("while no agent runs");
    assert!(seen.iter().all(|s| s.seen == web()));
    assert_eq!(counter(&bed, "socket_lb_connects"), 7);
    let _agent = start(&bed, &cgroup, "all");
    assert_eq!(
        connect4_programs(&cgroup),
        1,
        "the new agent's program replaced the old one in its link"
    );
    let seen = cgroup
        .requests::<SocketAddrV4>(&bed.topo.client, "tcp", web(), 3)
        .expect("after the restart");
    assert_eq!(by_backend(&seen).len(), 3, "{seen:?}");
    assert_eq!(counter(&bed, "socket_lb_connects"), 10);
    let later = support::cgroup::parse_line::<SocketAddrV4>(&held.ask());
    assert_eq!(
        (later.seen, later.reply.backend),
        (dns(), first.reply.backend),
        "the socket connected before the restart still sees the VIP"
    );
    held.close();
}

#[test]
fn a_connected_udp_socket_whose_backend_goes_is_destroyed_and_connects_again_to_a_live_one() {
    if !require_privileges(
        "a_connected_udp_socket_whose_backend_goes_is_destroyed_and_connects_again_to_a_live_one",
    ) {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    bed.write("apps.yaml", &services(&bed, None));
    let cgroup = TestCgroup::new();
    let agent = start(&bed, &cgroup, "all");
    let mut held = HeldSocket::spawn(&cgroup, &bed.topo.client, dns());
    let first = support::cgroup::parse_line::<SocketAddrV4>(&held.ask());
    assert_eq!(first.seen, dns());
    let gone = *first.reply.backend.ip();

    // The backend leaves the Service's endpoints.
    let kept: Vec<Ipv4Addr> = bed.backends().into_iter().filter(|b| *b != gone).collect();
    bed.write("apps.yaml", &services_with_dns_on(&bed, None, &kept));
    let mut lines = Vec::new();
    let started = std::time::Instant::now();
    let moved = loop {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the socket never moved off {gone}: {lines:?}\n{}",
            agent.log_text()
        );
        let line = held.ask();
        lines.push(line.clone());
        if line.starts_with("error=") {
            continue;
        }
        let seen = support::cgroup::parse_line::<SocketAddrV4>(&line);
        if *seen.reply.backend.ip() != gone {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(moved.seen, dns(), "the new socket sees the VIP too");
    assert!(
        lines.iter().any(|l| l.starts_with("error=")),
        "the old socket was destroyed, and its owner told: {lines:?}"
    );
    assert!(
        agent.log_text().contains("destroyed=1"),
        "{}",
        agent.log_text()
    );
    held.close();
}

/// A `udp-hold` client: one connected UDP socket, kept open, a request on it per `ask`.
struct HeldSocket {
    client: std::process::Child,
    requests: std::process::ChildStdin,
    answers: std::io::BufReader<std::process::ChildStdout>,
}

impl HeldSocket {
    fn spawn(cgroup: &TestCgroup, ns: &kproxy_testbed::Netns, target: SocketAddr) -> Self {
        let mut client = cgroup.spawn_client(ns, "udp-hold", target, 1);
        let requests = client.stdin.take().expect("the client's stdin");
        let answers = std::io::BufReader::new(client.stdout.take().expect("the client's stdout"));
        Self {
            client,
            requests,
            answers,
        }
    }

    /// The answer line (or `error=KIND`) of one request.
    fn ask(&mut self) -> String {
        std::io::Write::write_all(&mut self.requests, b"\n").expect("asking");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut self.answers, &mut line).expect("an answer");
        line
    }

    /// Closes the socket: the client ends when its stdin does.
    fn close(self) {
        let Self {
            mut client,
            requests,
            ..
        } = self;
        drop(requests);
        assert!(client.wait().expect("the client ends").success());
    }
}

#[test]
fn closed_sockets_take_their_entries_with_them_and_a_live_one_keeps_its_own() {
    if !require_privileges(
        "closed_sockets_take_their_entries_with_them_and_a_live_one_keeps_its_own",
    ) {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    bed.write("apps.yaml", &services(&bed, None));
    let cgroup = TestCgroup::new();
    // Tables of 64 entries against 500 sockets: were closed sockets left to the LRU, the
    // held socket's entry would be evicted long before the end, and its peer would show
    // the backend.
    let _agent = Agent::start(
        &bed,
        &[
            "--socket-lb",
            "all",
            "--cgroup-root",
            &cgroup.agent_arg(),
            "--socket-lb-max",
            "64",
        ],
    );
    assert_eq!(programs_attached(&cgroup, BPF_CGROUP_INET_SOCK_RELEASE), 1);
    let client = &bed.topo.client;
    let mut held = HeldSocket::spawn(&cgroup, client, dns());
    let first = support::cgroup::parse_line::<SocketAddrV4>(&held.ask());
    assert_eq!(first.seen, dns());

    let seen = cgroup
        .requests::<SocketAddrV4>(client, "tcp", web(), 400)
        .expect("TCP through the socket");
    assert!(seen.iter().all(|s| s.seen == web()), "{seen:?}");
    let seen = cgroup
        .requests::<SocketAddrV4>(client, "udp", dns(), 100)
        .expect("connected UDP");
    assert!(seen.iter().all(|s| s.seen == dns()), "{seen:?}");
    let later = support::cgroup::parse_line::<SocketAddrV4>(&held.ask());
    assert_eq!(later.seen, dns(), "the held socket still sees the VIP");
    assert_eq!(
        later.reply.backend, first.reply.backend,
        "and keeps its backend"
    );
    assert_eq!(counter(&bed, "socket_lb_connects"), 501);
    assert_eq!(
        counter(&bed, "socket_lb_released"),
        500,
        "every closed socket took its entry"
    );
    assert_eq!(
        socket_entries::<SockRev>(&bed, names::MAP_SOCK_REV),
        1,
        "the held socket's entry alone"
    );
    assert_eq!(socket_entries::<u32>(&bed, names::MAP_SOCK_UDP), 1);

    held.close();
    assert_eq!(counter(&bed, "socket_lb_released"), 501);
    assert_eq!(socket_entries::<SockRev>(&bed, names::MAP_SOCK_REV), 0);
    assert_eq!(socket_entries::<u32>(&bed, names::MAP_SOCK_UDP), 0);
}

#[test]
fn ipv6_connects_and_datagrams_go_straight_to_a_backend_and_see_the_vip() {
    if !require_privileges("ipv6_connects_and_datagrams_go_straight_to_a_backend_and_see_the_vip") {
        return;
    }
    let bed = Bed::new(TopologyOptions {
        ipv6: true,
        ..TopologyOptions::default()
    });
    let backends = bed.backends6();
    bed.write(
        "apps6.yaml",
        &documents(&[
            service("web6", vip6(10), &[("http", 80, "TCP")], None),
            slice6("web6-1", "web6", &[("http", TCP_PORT, "TCP")], &backends),
            service("dns6", vip6(53), &[("dns", 53, "UDP")], None),
            slice6("dns6-1", "dns6", &[("dns", UDP_PORT, "UDP")], &backends),
        ]),
    );
    let cgroup = TestCgroup::new();
    let _agent = start(&bed, &cgroup, "all");
    clients_on_one_cpu();
    let web6: SocketAddr = SocketAddrV6::new(vip6(10), 80, 0, 0).into();
    let dns6: SocketAddr = SocketAddrV6::new(vip6(53), 53, 0, 0).into();
    let client = &bed.topo.client;

    let seen = cgroup
        .requests::<SocketAddrV6>(client, "tcp", web6, 30)
        .expect("TCP over IPv6 through the socket");
    let mut counts = BTreeMap::new();
    for s in &seen {
        assert_eq!(s.seen, web6, "getpeername shows the VIP");
        assert_eq!(*s.reply.peer.ip(), bed.topo.client_addr6());
        *counts.entry(*s.reply.backend.ip()).or_insert(0) += 1;
    }
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        [10, 10, 10],
        "{counts:?}"
    );
    let seen = cgroup
        .requests::<SocketAddrV6>(client, "udp-sendto", dns6, 5)
        .expect("unconnected UDP over IPv6");
    assert!(seen.iter().all(|s| s.seen == dns6), "{seen:?}");
    assert_eq!(counter(&bed, "socket_lb_connects"), 30);
    assert_eq!(
        counter(&bed, "socket_lb_released"),
        30,
        "each closed IPv6 connection took its entry (the unconnected socket has none)"
    );
    assert_eq!(counter(&bed, "socket_lb_datagrams"), 5);
    assert_eq!(counter(&bed, "service_packets"), 0);
}

#[test]
fn a_dual_stack_socket_reaching_an_ipv4_vip_is_served_as_ipv4_and_sees_the_mapped_vip() {
    if !require_privileges(
        "a_dual_stack_socket_reaching_an_ipv4_vip_is_served_as_ipv4_and_sees_the_mapped_vip",
    ) {
        return;
    }
    let bed = Bed::new(TopologyOptions {
        ipv6: true,
        ..TopologyOptions::default()
    });
    bed.write("apps.yaml", &services(&bed, None));
    let cgroup = TestCgroup::new();
    let _agent = start(&bed, &cgroup, "all");
    clients_on_one_cpu();
    // What Java or Node.js do with an IPv4 address on their IPv6 sockets.
    let mapped: SocketAddr = SocketAddrV6::new(vip(10).to_ipv6_mapped(), 80, 0, 0).into();
    let seen = cgroup
        .requests::<SocketAddrV4>(&bed.topo.client, "tcp", mapped, 6)
        .expect("TCP from a dual-stack socket");
    assert_eq!(by_backend(&seen).len(), 3, "{seen:?}");
    assert!(
        seen.iter().all(|s| s.seen == mapped),
        "getpeername shows the mapped VIP: {seen:?}"
    );
    let dns_mapped: SocketAddr = SocketAddrV6::new(vip(53).to_ipv6_mapped(), 53, 0, 0).into();
    let seen = cgroup
        .requests::<SocketAddrV4>(&bed.topo.client, "udp-sendto", dns_mapped, 3)
        .expect("unconnected UDP from a dual-stack socket");
    assert!(seen.iter().all(|s| s.seen == dns_mapped), "{seen:?}");
    assert_eq!(counter(&bed, "socket_lb_connects"), 6);
    assert_eq!(
        counter(&bed, "socket_lb_released"),
        6,
        "a dual-stack socket's entry is the IPv4 one, and goes with it"
    );
    assert_eq!(counter(&bed, "socket_lb_datagrams"), 3);
    assert_eq!(counter(&bed, "service_packets"), 0);
}

#[test]
fn cleanup_detaches_the_socket_programs_too() {
    if !require_privileges("cleanup_detaches_the_socket_programs_too") {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    bed.write("apps.yaml", &services(&bed, None));
    let cgroup = TestCgroup::new();
    let agent = start(&bed, &cgroup, "all");
    assert!(agent.stop().success());
    assert_eq!(
        connect4_programs(&cgroup),
        1,
        "left attached for the next agent"
    );
    assert_eq!(programs_attached(&cgroup, BPF_CGROUP_INET_SOCK_RELEASE), 1);
    support::agent::kproxy_cleanup(&bed.pin_dir());
    assert_eq!(connect4_programs(&cgroup), 0, "detached at once");
    assert_eq!(programs_attached(&cgroup, BPF_CGROUP_INET_SOCK_RELEASE), 0);
    assert!(!bed.pin_dir().exists(), "pins removed");
    // The connect is the application's own again: to the VIP, which nothing serves now.
    let err = cgroup
        .requests::<SocketAddrV4>(&bed.topo.client, "tcp", web(), 1)
        .expect_err("no datapath any more");
    assert_eq!(err, ErrorKind::NetworkUnreachable);
}
