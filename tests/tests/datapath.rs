//! The datapath on hand-built packets (BPF_PROG_TEST_RUN): the real TC and XDP programs,
//! maps programmed by the agent's sync, and exact bytes out, checksums included.

mod support;

use std::{collections::BTreeSet, net::Ipv4Addr};

use kproxy::{
    dataplane::load::MapSizes,
    model::{Desired, Protocol, WhenEmpty},
    sync::{Datapath, MapOp},
};
use kproxy_common::{
    ct::{CtEntry, FlowState},
    names,
    stats::Counter,
};
use kproxy_testbed::{cpu, require_privileges};
use support::{
    datapath::{
        B1, B2, B3, CLIENT, LoadedDatapath, OTHER_CLIENT, SIZES, TC_ACT_REDIRECT, TC_ACT_SHOT,
        TCX_NEXT, VIP, XDP_DROP, XDP_PASS, XDP_TX, flow_key, frontend, loaded, three_backends,
    },
    packets::{
        ACK, CLIENT_MAC, FIN_ACK, NODE_MAC, RST, SYN, SYN_ACK, assert_checksums, dst, src,
        tcp_frame, udp_frame, without_udp_checksum,
    },
};

/// Instructions the kernel's verifier may walk per program. Verification is most of an
/// agent's start (the time to full programming counts it); a loop whose body the verifier
/// walks once per iteration (the new-flow port search, before it was made cheap) more than
/// doubles it. 140k-146k for the TC and XDP programs on kernel 6.18 with Maglev; the
/// backend ids a service value holds itself (`lb::INLINE_SLOTS`) added 3% to the IPv4
/// ingress program (146,424 to 150,922), the price of a hash lookup less per new flow and
/// 300,000 map entries less at 100,000 Services.
const VERIFIER_BUDGET: u32 = 155_000;

#[test]
fn every_program_verifies_within_the_instruction_budget() {
    if !require_privileges("every_program_verifies_within_the_instruction_budget") {
        return;
    }
    let mut dp = LoadedDatapath::load();
    // The socket programs are loaded only with --socket-lb: here, by hand.
    for name in names::SOCKET_PROGRAMS {
        let loaded = match dp.ebpf.program_mut(name).expect("program in object") {
            aya::programs::Program::CgroupSockAddr(program) => program.load(),
            aya::programs::Program::CgroupSock(program) => program.load(),
            other => panic!(
                "{name} is not a cgroup socket program: {:?}",
                other.prog_type()
            ),
        };
        loaded.unwrap_or_else(|e| panic!("the kernel rejected {name}: {e:#}"));
    }
    for name in names::PROGRAMS
        .into_iter()
        .chain(names::LAZY_PROGRAMS)
        .chain(names::SOCKET_PROGRAMS)
    {
        let walked = dp
            .ebpf
            .program(name)
            .expect("program in object")
            .info()
            .expect("program info")
            .verified_instruction_count()
            .expect("the kernel reports verified instructions");
        eprintln!("{name}: {walked} instructions verified");
        assert!(
            walked <= VERIFIER_BUDGET,
            "{name}: the verifier walked {walked} instructions, over the budget of {VERIFIER_BUDGET}"
        );
    }
}

#[test]
fn dnat_rewrites_the_destination_with_exact_checksums() {
    if !require_privileges("dnat_rewrites_the_destination_with_exact_checksums") {
        return;
    }
    let dp = loaded(&three_backends(Protocol::Tcp, None));
    for (flags, payload) in [(SYN, &b""[..]), (ACK, &b"GET / HTTP/1.1\r\n\r\n"[..])] {
        let input = tcp_frame((CLIENT, 40_000), (VIP, 80), flags, payload);
        let (verdict, out) = dp.tc(&input);
        assert_eq!(
            verdict, TCX_NEXT,
            "translated packets continue down the tcx chain"
        );
        // etherparse computes every checksum from scratch: byte equality means exact checksums.
        assert_eq!(out, tcp_frame((CLIENT, 40_000), (B1, 8080), flags, payload));
    }
    let input = udp_frame((CLIENT, 5353), (VIP, 80), b"query");
    let dp = loaded(&three_backends(Protocol::Udp, None));
    let (verdict, out) = dp.tc(&input);
    assert_eq!(verdict, TCX_NEXT);
    assert_eq!(out, udp_frame((CLIENT, 5353), (B1, 8080), b"query"));
    assert_eq!(dp.counter(Counter::ServicePackets), 1);
    assert_eq!(dp.counter(Counter::NewFlows), 1);
}

#[test]
fn xdp_program_translates_like_tc() {
    if !require_privileges("xdp_program_translates_like_tc") {
        return;
    }
    let dp = loaded(&three_backends(Protocol::Tcp, None));
    let (verdict, out) = dp.xdp(&tcp_frame((CLIENT, 40_000), (VIP, 80), SYN, b""));
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(out, tcp_frame((CLIENT, 40_000), (B1, 8080), SYN, b""));
    let (verdict, out) = dp.xdp(&tcp_frame((B1, 8080), (CLIENT, 40_000), SYN_ACK, b""));
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(out, tcp_frame((VIP, 80), (CLIENT, 40_000), SYN_ACK, b""));

    let dp = loaded(&three_backends(Protocol::Udp, None));
    let (_, out) = dp.xdp(&without_udp_checksum(udp_frame(
        (CLIENT, 5353),
        (VIP, 80),
        b"q",
    )));
    assert_eq!(
        out,
        without_udp_checksum(udp_frame((CLIENT, 5353), (B1, 8080), b"q")),
        "zero stays zero"
    );
    let (_, out) = dp.xdp(&udp_frame((CLIENT, 5354), (VIP, 80), b"q"));
    assert_eq!(out, udp_frame((CLIENT, 5354), (B2, 8080), b"q"));
}

#[test]
fn reverse_nat_restores_the_vip_on_replies() {
    if !require_privileges("reverse_nat_restores_the_vip_on_replies") {
        return;
    }
    let dp = loaded(&three_backends(Protocol::Tcp, None));
    dp.tc(&tcp_frame((CLIENT, 40_000), (VIP, 80), SYN, b""));
    for (flags, payload) in [(SYN_ACK, &b""[..]), (ACK, &b"HTTP/1.1 200 OK\r\n"[..])] {
        let (verdict, out) = dp.tc(&tcp_frame((B1, 8080), (CLIENT, 40_000), flags, payload));
        assert_eq!(verdict, TCX_NEXT);
        assert_eq!(out, tcp_frame((VIP, 80), (CLIENT, 40_000), flags, payload));
    }
    assert_eq!(dp.counter(Counter::ReplyPackets), 2);
    // A reply to a client port the flow does not use is not ours.
    let stray = tcp_frame((B1, 8080), (CLIENT, 40_001), ACK, b"");
    assert_eq!(dp.tc(&stray), (TCX_NEXT, stray));
}

#[test]
fn udp_without_checksum_keeps_it_zero() {
    if !require_privileges("udp_without_checksum_keeps_it_zero") {
        return;
    }
    let dp = loaded(&three_backends(Protocol::Udp, None));
    let (_, out) = dp.tc(&without_udp_checksum(udp_frame(
        (CLIENT, 5353),
        (VIP, 80),
        b"query",
    )));
    assert_eq!(
        out,
        without_udp_checksum(udp_frame((CLIENT, 5353), (B1, 8080), b"query"))
    );
    let (_, reply) = dp.tc(&without_udp_checksum(udp_frame(
        (B1, 8080),
        (CLIENT, 5353),
        b"answer",
    )));
    assert_eq!(
        reply,
        without_udp_checksum(udp_frame((VIP, 80), (CLIENT, 5353), b"answer"))
    );
}

#[test]
fn conntrack_keeps_each_flow_on_its_backend_and_new_flows_go_round_robin() {
    if !require_privileges("conntrack_keeps_each_flow_on_its_backend_and_new_flows_go_round_robin")
    {
        return;
    }
    let dp = loaded(&three_backends(Protocol::Tcp, None));
    let backend_of =
        |port: u16, flags| dst(&dp.tc(&tcp_frame((CLIENT, port), (VIP, 80), flags, b"x")).1).0;
    let first: Vec<Ipv4Addr> = (0..4).map(|i| backend_of(41_000 + i, SYN)).collect();
    assert_eq!(first, [B1, B2, B3, B1], "new flows take backends in turn");
    for _ in 0..5 {
        for i in 0..4 {
            assert_eq!(
                backend_of(41_000 + i, ACK),
                first[usize::from(i)],
                "later packets stick to the flow's backend"
            );
        }
    }
    assert_eq!(dp.counter(Counter::NewFlows), 4);
}

/// `KP_RR`, as the agent writes it: every service port id holds a random start before it is
/// first handed out, a new one each time it is freed, and each CPU's counter starts one slot
/// further on than the CPU before it.
#[test]
fn each_service_port_starts_round_robin_at_a_random_slot_one_further_on_each_cpu() {
    if !require_privileges(
        "each_service_port_starts_round_robin_at_a_random_slot_one_further_on_each_cpu",
    ) {
        return;
    }
    let mut dp = LoadedDatapath::load();
    let cpus = aya::util::nr_cpus().expect("possible CPUs");
    let start_of = |dp: &LoadedDatapath, svc_id: u32| -> u64 {
        let turns = dp.maps.round_robin_turns(svc_id).expect("KP_RR");
        let start = turns[0];
        assert!(start < 1 << 32, "{svc_id}: {turns:?} could wrap");
        let want: Vec<u64> = (start..).take(cpus).collect();
        assert_eq!(turns, want, "{svc_id}: one slot further on each CPU");
        start
    };
    // A fresh KP_RR: every id has its own start, so the first slots of 64 service ports over
    // three backends are all three.
    let fresh: Vec<u64> = (0..SIZES.services).map(|id| start_of(&dp, id)).collect();
    let first_slots: BTreeSet<u64> = fresh.iter().map(|start| start % 3).collect();
    assert_eq!(first_slots.len(), 3, "{fresh:?}");

    // Written by the agent's own sync (not `dp.program`, which puts tests at slot 0): a
    // new service port takes its id's start, and its first flow on this CPU goes there.
    let report = dp
        .programmed
        .sync(&three_backends(Protocol::Tcp, None), &mut dp.maps);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let svc_id = *dp.svc_ids().first().expect("one service port");
    assert_eq!(start_of(&dp, svc_id), fresh[svc_id as usize]);
    let first_turn = fresh[svc_id as usize] + dp.cpu as u64;
    let (_, out) = dp.tc(&tcp_frame((CLIENT, 40_000), (VIP, 80), SYN, b""));
    assert_eq!(dst(&out).0, [B1, B2, B3][(first_turn % 3) as usize]);

    // Freed (ResetServiceCounters): a new random start, ready for the id's next use.
    let report = dp.programmed.sync(&Desired::default(), &mut dp.maps);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_ne!(start_of(&dp, svc_id), fresh[svc_id as usize]);
}

/// Each CPU advances a round-robin counter of its own (no cache line shared by all CPUs):
/// flows made on one CPU go round in turn whatever the other CPUs do.
#[test]
fn each_cpu_keeps_a_round_robin_counter_of_its_own() {
    if !require_privileges("each_cpu_keeps_a_round_robin_counter_of_its_own") {
        return;
    }
    let allowed = cpu::allowed_cpus().expect("allowed CPUs");
    let [a, b, ..] = allowed[..] else {
        eprintln!("SKIPPED each_cpu_keeps_a_round_robin_counter_of_its_own: one CPU only");
        return;
    };
    let dp = loaded(&three_backends(Protocol::Tcp, None));
    let svc_id = *dp.svc_ids().first().expect("one service port");
    let flows_on = |cpu: usize, ports: std::ops::Range<u16>| -> Vec<Ipv4Addr> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    cpu::pin_thread_to(cpu).expect("pinning");
                    ports
                        .map(|port| {
                            dst(&dp.tc(&tcp_frame((CLIENT, port), (VIP, 80), SYN, b"")).1).0
                        })
                        .collect()
                })
                .join()
                .expect("flows")
        })
    };
    assert_eq!(flows_on(a, 41_000..41_004), [B1, B2, B3, B1]);
    assert_eq!(
        flows_on(b, 42_000..42_002),
        [B1, B2],
        "CPU {b} starts at its own first turn, not where CPU {a} is"
    );
    assert_eq!(
        flows_on(a, 41_004..41_005),
        [B2],
        "CPU {a} goes on where it was"
    );
    let mut want = vec![0; aya::util::nr_cpus().expect("possible CPUs")];
    want[a] = 5;
    want[b] = 2;
    assert_eq!(dp.maps.round_robin_turns(svc_id).expect("KP_RR"), want);
}

/// `KP_BE_STATS`: each flow's first packet counts a new flow for its backend, every packet
/// towards it a packet and its bytes; a per-CPU copy that names another backend (an element
/// the hash handed on while a program held it) is never counted into.
#[test]
fn per_backend_counters_count_packets_and_never_into_an_element_handed_on() {
    use aya::maps::{HashMap, MapData, PerCpuHashMap, PerCpuValues};
    use kproxy_common::{lb::Backend, stats::BackendStats};
    if !require_privileges("per_backend_counters_count_packets_and_never_into_an_element_handed_on")
    {
        return;
    }
    let dp = loaded(&three_backends(Protocol::Tcp, None));
    let stats = || -> PerCpuHashMap<MapData, u32, BackendStats> { dp.map(names::MAP_BE_STATS) };
    let c = (CLIENT, 43_000);
    let frames = [
        tcp_frame(c, (VIP, 80), SYN, b""),
        tcp_frame(c, (VIP, 80), ACK, b"hello"),
        tcp_frame(c, (VIP, 80), ACK, b"world!"),
    ];
    for frame in &frames {
        assert_eq!(dst(&dp.tc(frame).1).0, B1);
    }
    let b1 = dp
        .flow(c, (VIP, 80), Protocol::Tcp)
        .expect("the flow")
        .backend_id;
    let per_cpu = stats().get(&b1, 0).expect("B1's counters");
    let sum = kproxy::dataplane::maps::backend_sum(b1, per_cpu.iter());
    let bytes: usize = frames.iter().map(Vec::len).sum();
    assert_eq!(
        (sum.new_flows, sum.packets, sum.bytes),
        (1, 3, bytes as u64),
        "{per_cpu:?}"
    );

    // B2's element, as if the hash had handed it to backend 999 while a program held it.
    let backends: HashMap<MapData, u32, Backend> = dp.map(names::MAP_BACKENDS);
    let b2 = backends
        .iter()
        .map(|e| e.expect("backend"))
        .find(|(_, b)| b.addr == u32::from(B2).to_be())
        .expect("B2")
        .0;
    let foreign = BackendStats {
        backend_id: 999,
        ..BackendStats::default()
    };
    let cpus = aya::util::nr_cpus().expect("CPUs");
    stats()
        .insert(
            b2,
            PerCpuValues::try_from(vec![foreign; cpus]).expect("values"),
            0,
        )
        .expect("handing the element on");
    let c2 = (CLIENT, 43_001);
    assert_eq!(dst(&dp.tc(&tcp_frame(c2, (VIP, 80), SYN, b"")).1).0, B2);
    assert_eq!(dst(&dp.tc(&tcp_frame(c2, (VIP, 80), ACK, b"x")).1).0, B2);
    let per_cpu = stats().get(&b2, 0).expect("the element");
    assert!(
        per_cpu.iter().all(|s| *s == foreign),
        "nothing counted into copies naming another backend: {per_cpu:?}"
    );
}

#[test]
fn a_new_syn_on_a_finished_flow_starts_a_new_flow() {
    if !require_privileges("a_new_syn_on_a_finished_flow_starts_a_new_flow") {
        return;
    }
    let dp = loaded(&three_backends(Protocol::Tcp, None));
    let c = (CLIENT, 42_000);
    assert_eq!(dst(&dp.tc(&tcp_frame(c, (VIP, 80), SYN, b"")).1).0, B1);
    dp.tc(&tcp_frame((B1, 8080), c, SYN_ACK, b""));
    dp.tc(&tcp_frame(c, (VIP, 80), FIN_ACK, b""));
    dp.tc(&tcp_frame((B1, 8080), c, FIN_ACK, b""));
    // A SYN retransmitted inside a live flow keeps its backend; after both FINs it is new.
    assert_eq!(
        dst(&dp.tc(&tcp_frame(c, (VIP, 80), SYN, b"")).1).0,
        B2,
        "port reuse picks afresh"
    );
    assert_eq!(dp.counter(Counter::CtReopened), 1);
    // RST ends a flow as well.
    dp.tc(&tcp_frame((B2, 8080), c, RST, b""));
    assert_eq!(dst(&dp.tc(&tcp_frame(c, (VIP, 80), SYN, b"")).1).0, B3);
}

/// A reopened port's old tuple (towards its earlier backend) is left by its flow: its reply
/// entry carries that flow's closed state, so the tuple goes to another flow once quiet,
/// and the collection removes it after the close timeout, not the established one (hours).
#[test]
fn a_reopened_port_leaves_its_old_tuple_closed_and_free_once_quiet() {
    if !require_privileges("a_reopened_port_leaves_its_old_tuple_closed_and_free_once_quiet") {
        return;
    }
    let vip2 = Ipv4Addr::new(198, 19, 0, 20);
    let desired: Desired = [
        frontend(
            VIP,
            80,
            Protocol::Tcp,
            &[(B1, 8080), (B2, 8080), (B3, 8080)],
            None,
        ),
        frontend(vip2, 80, Protocol::Tcp, &[(B1, 8080)], None),
    ]
    .into_iter()
    .collect();
    let dp = loaded(&desired);
    let c = (CLIENT, 42_000);
    assert_eq!(dst(&dp.tc(&tcp_frame(c, (VIP, 80), SYN, b"")).1).0, B1);
    dp.tc(&tcp_frame((B1, 8080), c, SYN_ACK, b""));
    dp.tc(&tcp_frame(c, (VIP, 80), FIN_ACK, b""));
    dp.tc(&tcp_frame((B1, 8080), c, FIN_ACK, b""));
    assert_eq!(dst(&dp.tc(&tcp_frame(c, (VIP, 80), SYN, b"")).1).0, B2);
    assert_eq!(dp.counter(Counter::CtReopened), 1);
    // The tuple towards B1 is no flow's any more; its reply entry says the flow closed.
    let old = flow_key((B1, 8080), c, Protocol::Tcp);
    let mut replies = dp.ct_reply();
    let mut left = replies
        .get(&old, 0)
        .expect("the old reply entry stays for late replies");
    let closed = FlowState::of(&left, &CtEntry::ZERO);
    assert!(closed.tcp_closing(), "flags {:#x}", left.flags);
    // Within a second of its last FIN the backend may still be in LAST_ACK: the same port
    // through the second VIP, on B1, gets another source port.
    let (_, out) = dp.tc(&tcp_frame(c, (vip2, 80), SYN, b""));
    assert_ne!(src(&out), c);
    assert_eq!(dp.counter(Counter::PortRemapped), 1);
    // A second later (the entry aged, that flow forgotten), a new flow of the same port
    // through the second VIP gets the client's own port: the reopened flow towards B2 does
    // not keep the tuple towards B1 held.
    left.last_seen_ns -= 2_000_000_000;
    replies.insert(old, left, 0).expect("aging the entry");
    let remapped_flow = flow_key(c, (vip2, 80), Protocol::Tcp);
    dp.ct_forward()
        .remove(&remapped_flow)
        .expect("forgetting the remapped flow");
    let (_, out) = dp.tc(&tcp_frame(c, (vip2, 80), SYN, b""));
    assert_eq!(out, tcp_frame(c, (B1, 8080), SYN, b""));
    assert_eq!(dp.counter(Counter::PortRemapped), 1);
}

/// A connection on a reused client port that lands on the backend of an earlier, finished
/// one finds that flow's reply entry: it is written afresh, not shared with the old FIN and
/// RST bits (which would make the new flow look finished).
#[test]
fn a_reopened_flow_on_its_old_backend_starts_with_a_fresh_reply_entry() {
    if !require_privileges("a_reopened_flow_on_its_old_backend_starts_with_a_fresh_reply_entry") {
        return;
    }
    let dp = loaded(&three_backends(Protocol::Tcp, None));
    let c = (CLIENT, 42_001);
    for backend in [B1, B2, B3] {
        assert_eq!(dst(&dp.tc(&tcp_frame(c, (VIP, 80), SYN, b"")).1).0, backend);
        dp.tc(&tcp_frame((backend, 8080), c, SYN_ACK, b""));
        dp.tc(&tcp_frame(c, (VIP, 80), FIN_ACK, b""));
        dp.tc(&tcp_frame((backend, 8080), c, FIN_ACK, b""));
    }
    // Round-robin is back at B1, whose reply entry from the first connection is still there.
    assert_eq!(dst(&dp.tc(&tcp_frame(c, (VIP, 80), SYN, b"")).1).0, B1);
    let rev = dp
        .ct_reply()
        .get(&flow_key((B1, 8080), c, Protocol::Tcp), 0)
        .expect("the reply entry");
    assert_eq!(
        rev.flags, 0,
        "no FIN, RST or reply seen yet in this connection"
    );
}

#[test]
fn client_ip_affinity_sends_a_client_to_one_backend() {
    if !require_privileges("client_ip_affinity_sends_a_client_to_one_backend") {
        return;
    }
    let dp = loaded(&three_backends(Protocol::Tcp, Some(60)));
    let backends: Vec<Ipv4Addr> = (0..6)
        .map(|i| {
            dst(&dp
                .tc(&tcp_frame((CLIENT, 43_000 + i), (VIP, 80), SYN, b""))
                .1)
            .0
        })
        .collect();
    assert_eq!(
        backends, [B1; 6],
        "every new flow of the client goes to its first backend"
    );
    let other = dst(&dp
        .tc(&tcp_frame((OTHER_CLIENT, 43_000), (VIP, 80), SYN, b""))
        .1)
    .0;
    assert_eq!(other, B2, "another client gets the next backend");
    assert_eq!(dp.counter(Counter::AffinityHits), 5);
}

#[test]
fn non_service_traffic_passes_untouched() {
    if !require_privileges("non_service_traffic_passes_untouched") {
        return;
    }
    let dp = loaded(&three_backends(Protocol::Tcp, None));
    let other_ip = Ipv4Addr::new(198, 19, 0, 11);
    // (frame, counter it must bump because it was meant for a VIP, if any)
    let mut frames = vec![
        (tcp_frame((CLIENT, 40_000), (B1, 8080), SYN, b""), None), // straight to a pod
        (
            tcp_frame((CLIENT, 40_000), (VIP, 81), SYN, b""),
            Some(Counter::VipNoServicePort),
        ), // VIP, other port
        (
            udp_frame((CLIENT, 40_000), (VIP, 80), b"not tcp"),
            Some(Counter::VipNoServicePort),
        ), // VIP, other protocol
        (tcp_frame((CLIENT, 40_000), (other_ip, 80), SYN, b""), None), // another IP
        (
            tcp_frame((CLIENT, 40_000), (other_ip, 80), SYN, b"")[..40].to_vec(),
            None,
        ), // truncated, not for a VIP
    ];
    let mut arp = vec![0u8; 42];
    arp[..6].copy_from_slice(&[0xff; 6]);
    arp[6..12].copy_from_slice(&CLIENT_MAC);
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    frames.push((arp, None));
    let mut v6 = vec![0u8; 74];
    v6[..6].copy_from_slice(&NODE_MAC);
    v6[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    frames.push((v6, None));
    for (frame, counter) in &frames {
        let before = counter.map(|c| dp.counter(c));
        assert_eq!(dp.tc(frame), (TCX_NEXT, frame.clone()));
        assert_eq!(dp.xdp(frame), (XDP_PASS, frame.clone()));
        if let (Some(c), Some(before)) = (counter, before) {
            assert_eq!(dp.counter(*c), before + 2, "{} counted", c.name());
        }
    }
    assert_eq!(dp.counter(Counter::ServicePackets), 0);
    assert_eq!(dp.counter(Counter::Packets), 14);
    // Cut short and addressed to a VIP: nothing could serve it, and it must not leave
    // untranslated; dropped and counted.
    let truncated = tcp_frame((CLIENT, 40_000), (VIP, 80), SYN, b"")[..40].to_vec();
    assert_eq!(dp.tc(&truncated).0, TC_ACT_SHOT);
    assert_eq!(dp.xdp(&truncated).0, XDP_DROP);
    assert_eq!(dp.counter(Counter::DropTruncated), 2);
}

/// Checks an ICMP port unreachable answering `original` (client → VIP).
fn assert_port_unreachable(reply: &[u8], original: &[u8]) {
    assert_eq!(
        reply.len(),
        70,
        "eth + IPv4 + ICMP + quoted header and 8 bytes"
    );
    assert_eq!(&reply[..6], &original[6..12], "back to the sender's MAC");
    assert_eq!(&reply[6..12], &original[..6]);
    assert_eq!(reply[23], 1, "ICMP");
    assert_eq!(src(reply).0, dst(original).0, "from the VIP");
    assert_eq!(dst(reply).0, src(original).0, "to the client");
    assert_eq!(
        (reply[34], reply[35]),
        (3, 3),
        "destination unreachable, port unreachable"
    );
    assert_eq!(
        &reply[42..70],
        &original[14..42],
        "quotes the original IP header and 8 bytes"
    );
    assert_checksums(reply);
}

#[test]
fn no_endpoints_rejects_with_icmp_port_unreachable() {
    if !require_privileges("no_endpoints_rejects_with_icmp_port_unreachable") {
        return;
    }
    let desired: Desired = [
        frontend(VIP, 80, Protocol::Tcp, &[], None),
        frontend(VIP, 53, Protocol::Udp, &[], None),
    ]
    .into_iter()
    .collect();
    let dp = loaded(&desired);
    let syn = tcp_frame((CLIENT, 40_000), (VIP, 80), SYN, b"");
    let (verdict, reply) = dp.tc(&syn);
    assert_eq!(
        verdict, TC_ACT_REDIRECT,
        "sent back out of the interface it came in on"
    );
    assert_port_unreachable(&reply, &syn);
    let datagram = udp_frame((CLIENT, 5353), (VIP, 53), b"some longer query payload");
    let (verdict, reply) = dp.tc(&datagram);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_port_unreachable(&reply, &datagram);
    let (verdict, reply) = dp.xdp(&syn);
    assert_eq!(verdict, XDP_TX);
    assert_port_unreachable(&reply, &syn);
    assert_eq!(dp.counter(Counter::Rejected), 3);
    assert_eq!(dp.counter(Counter::NewFlows), 0);
}

#[test]
fn no_usable_endpoints_under_local_policy_drops_silently() {
    if !require_privileges("no_usable_endpoints_under_local_policy_drops_silently") {
        return;
    }
    let (key, mut local_only) = frontend(VIP, 80, Protocol::Tcp, &[], None);
    local_only.when_empty = WhenEmpty::Drop;
    let dp = loaded(&[(key, local_only)].into_iter().collect());
    let syn = tcp_frame((CLIENT, 40_000), (VIP, 80), SYN, b"");
    let (verdict, out) = dp.tc(&syn);
    assert_eq!(verdict, TC_ACT_SHOT, "dropped, not answered");
    assert_eq!(out, syn, "the packet is not rewritten into a reject");
    let (verdict, _) = dp.xdp(&syn);
    assert_eq!(verdict, XDP_DROP);
    assert_eq!(dp.counter(Counter::DropNoLocalEndpoint), 2);
    assert_eq!(dp.counter(Counter::Rejected), 0);
    assert_eq!(dp.counter(Counter::NewFlows), 0);
}

#[test]
fn a_removed_backends_udp_flows_move_to_a_live_one() {
    if !require_privileges("a_removed_backends_udp_flows_move_to_a_live_one") {
        return;
    }
    let mut dp = loaded(&three_backends(Protocol::Udp, None));
    let c = (CLIENT, 44_000);
    assert_eq!(dst(&dp.tc(&udp_frame(c, (VIP, 80), b"q")).1).0, B1);
    let remaining: Desired = [frontend(
        VIP,
        80,
        Protocol::Udp,
        &[(B2, 8080), (B3, 8080)],
        None,
    )]
    .into_iter()
    .collect();
    dp.program(&remaining);
    let moved = dst(&dp.tc(&udp_frame(c, (VIP, 80), b"q")).1).0;
    assert!(
        [B2, B3].contains(&moved),
        "the flow was re-balanced onto a live backend, not {moved}"
    );
    assert_eq!(dp.counter(Counter::FlowRebalanced), 1);
}

/// Splits a UDP datagram frame into two IPv4 fragments at `split` bytes of L4 data.
fn fragment(frame: &[u8], split: usize) -> (Vec<u8>, Vec<u8>) {
    assert_eq!(split % 8, 0);
    let l4 = &frame[34..];
    let header = &frame[..34];
    let mut first = header.to_vec();
    first.extend_from_slice(&l4[..split]);
    let mut later = header.to_vec();
    later.extend_from_slice(&l4[split..]);
    for (part, (offset, more)) in [(&mut first, (0, true)), (&mut later, (split / 8, false))] {
        let total = u16::try_from(part.len() - 14).expect("small");
        part[16..18].copy_from_slice(&total.to_be_bytes());
        let flags = u16::try_from(offset).expect("small") | if more { 0x2000 } else { 0 };
        part[20..22].copy_from_slice(&flags.to_be_bytes());
        part[18..20].copy_from_slice(&0x1234u16.to_be_bytes());
        part[24..26].copy_from_slice(&[0, 0]);
        let sum = part[14..34]
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum::<u32>();
        let folded =
            u16::try_from((sum & 0xffff) + (sum >> 16)).expect("20 header bytes fold once");
        part[24..26].copy_from_slice(&(!folded).to_be_bytes());
    }
    (first, later)
}

#[test]
fn later_fragments_follow_their_first_fragment() {
    if !require_privileges("later_fragments_follow_their_first_fragment") {
        return;
    }
    let dp = loaded(&three_backends(Protocol::Udp, None));
    let payload = [7u8; 40];
    let (first, later) = fragment(&udp_frame((CLIENT, 5353), (VIP, 80), &payload), 24);
    let (want_first, want_later) = fragment(&udp_frame((CLIENT, 5353), (B1, 8080), &payload), 24);
    assert_eq!(
        dp.tc(&first).1,
        want_first,
        "first fragment: addresses, ports, L4 checksum"
    );
    assert_eq!(
        dp.tc(&later).1,
        want_later,
        "later fragment: address and IP checksum only"
    );
    // A later fragment to a VIP whose first fragment never came (lost, or out of order)
    // cannot be translated and must not leave untranslated: dropped and counted.
    let (_, orphan) = fragment(&udp_frame((OTHER_CLIENT, 5353), (VIP, 80), &payload), 24);
    assert_eq!(dp.tc(&orphan).0, TC_ACT_SHOT);
    assert_eq!(dp.counter(Counter::DropFragment), 1);
    // Fragments of traffic that is not kproxy's pass, and leave nothing in the table.
    let other = Ipv4Addr::new(198, 19, 0, 99);
    let (first, later) = fragment(&udp_frame((OTHER_CLIENT, 5353), (other, 80), &payload), 24);
    assert_eq!(dp.tc(&first), (TCX_NEXT, first));
    assert_eq!(dp.tc(&later), (TCX_NEXT, later));
    assert_eq!(
        dp.fragments_tracked(),
        1,
        "only the service datagram's first fragment"
    );
}

/// VIP:80 and a second VIP (returned) with the same single backend, B1:8080: one client
/// port to both VIPs would be one and the same connection for the backend.
fn two_vips_on_b1() -> (LoadedDatapath, Ipv4Addr) {
    two_vips_on_b1_with(&SIZES)
}

/// [`two_vips_on_b1`] with map capacities `sizes`.
fn two_vips_on_b1_with(sizes: &MapSizes) -> (LoadedDatapath, Ipv4Addr) {
    let vip2 = Ipv4Addr::new(198, 19, 0, 20);
    let desired: Desired = [
        frontend(VIP, 80, Protocol::Tcp, &[(B1, 8080)], None),
        frontend(vip2, 80, Protocol::Tcp, &[(B1, 8080)], None),
    ]
    .into_iter()
    .collect();
    let mut dp = LoadedDatapath::load_with(sizes);
    dp.program(&desired);
    (dp, vip2)
}

#[test]
fn a_client_port_taken_towards_a_backend_is_remapped_and_restored() {
    if !require_privileges("a_client_port_taken_towards_a_backend_is_remapped_and_restored") {
        return;
    }
    let (dp, vip2) = two_vips_on_b1();
    let c = (CLIENT, 45_000);
    assert_eq!(
        dp.tc(&tcp_frame(c, (VIP, 80), SYN, b"")).1,
        tcp_frame(c, (B1, 8080), SYN, b"")
    );
    let (_, second) = dp.tc(&tcp_frame(c, (vip2, 80), SYN, b""));
    let remapped = src(&second).1;
    assert_ne!(remapped, c.1, "the second flow got another source port");
    assert!(
        (1_024..30_000).contains(&remapped),
        "{remapped}: below the ephemeral range clients take their own ports from"
    );
    assert_eq!(
        second,
        tcp_frame((CLIENT, remapped), (B1, 8080), SYN, b""),
        "exact checksums"
    );
    assert_eq!(dp.counter(Counter::PortRemapped), 1);
    // Its packets keep the remapped port; replies get the client's own port back.
    assert_eq!(
        dp.tc(&tcp_frame(c, (vip2, 80), ACK, b"x")).1,
        tcp_frame((CLIENT, remapped), (B1, 8080), ACK, b"x")
    );
    let reply = dp
        .tc(&tcp_frame((B1, 8080), (CLIENT, remapped), SYN_ACK, b""))
        .1;
    assert_eq!(reply, tcp_frame((vip2, 80), c, SYN_ACK, b""));
    let (_, reply) = dp.xdp(&tcp_frame((B1, 8080), (CLIENT, remapped), ACK, b"y"));
    assert_eq!(
        reply,
        tcp_frame((vip2, 80), c, ACK, b"y"),
        "the XDP path restores it too"
    );
    // The first flow is untouched.
    assert_eq!(
        dp.tc(&tcp_frame((B1, 8080), c, SYN_ACK, b"")).1,
        tcp_frame((VIP, 80), c, SYN_ACK, b"")
    );
}

#[test]
fn a_client_holding_every_ephemeral_port_towards_a_backend_still_gets_alternative_ports() {
    if !require_privileges(
        "a_client_holding_every_ephemeral_port_towards_a_backend_still_gets_alternative_ports",
    ) {
        return;
    }
    // A flow from every port of Linux's ephemeral range (32768-60999) through VIP to B1: the
    // client's own flows hold each of those tuples towards B1, as a busy client reusing its
    // ports through many VIPs nearly does. The same ports through the second VIP, on the
    // same backend, each need another source port, and must find one.
    let (dp, vip2) = two_vips_on_b1_with(&MapSizes {
        conntrack: 65_536,
        ..SIZES
    });
    for port in 32_768..=60_999 {
        let (action, _) = dp.tc(&tcp_frame((CLIENT, port), (VIP, 80), SYN, b""));
        assert_eq!(action, TCX_NEXT, "port {port}");
    }
    let retried: Vec<u16> = (32_768..=60_999).step_by(29).collect();
    let mut remapped = std::collections::BTreeSet::new();
    for &port in &retried {
        let (action, out) = dp.tc(&tcp_frame((CLIENT, port), (vip2, 80), SYN, b""));
        assert_eq!(action, TCX_NEXT, "port {port} got no alternative port");
        assert_eq!(dst(&out), (B1, 8080));
        let (addr, alt) = src(&out);
        assert_eq!(addr, CLIENT);
        assert!(
            (1_024..30_000).contains(&alt),
            "port {port} remapped to {alt}"
        );
        remapped.insert(alt);
    }
    assert_eq!(remapped.len(), retried.len(), "each its own tuple");
    assert_eq!(dp.counter(Counter::DropNoPort), 0);
    assert_eq!(
        dp.counter(Counter::PortRemapped),
        u64::try_from(retried.len()).expect("small")
    );
}

#[test]
fn a_tuple_closed_by_fins_goes_to_another_flow_only_once_the_backend_has_closed() {
    if !require_privileges(
        "a_tuple_closed_by_fins_goes_to_another_flow_only_once_the_backend_has_closed",
    ) {
        return;
    }
    let (dp, vip2) = two_vips_on_b1();
    // A connection closed by a FIN each way: B1's socket waits in LAST_ACK for the client's
    // last ACK, and would answer a SYN on the same tuple with a challenge ACK (the client
    // then resets and retries a second later). The same client port towards the other VIP,
    // on the same backend, gets another source port.
    let c = (CLIENT, 45_000);
    dp.tc(&tcp_frame(c, (VIP, 80), SYN, b""));
    dp.tc(&tcp_frame((B1, 8080), c, SYN_ACK, b""));
    dp.tc(&tcp_frame(c, (VIP, 80), FIN_ACK, b""));
    dp.tc(&tcp_frame((B1, 8080), c, FIN_ACK, b""));
    let (_, out) = dp.tc(&tcp_frame(c, (vip2, 80), SYN, b""));
    assert_eq!(dst(&out), (B1, 8080));
    assert_ne!(
        src(&out),
        c,
        "a tuple the backend may not have closed yet is not reused"
    );
    assert_eq!(dp.counter(Counter::PortRemapped), 1);
    // A reset connection's tuple is free at once: the backend's socket is gone.
    let c = (CLIENT, 45_001);
    dp.tc(&tcp_frame(c, (VIP, 80), SYN, b""));
    dp.tc(&tcp_frame((B1, 8080), c, SYN_ACK, b""));
    dp.tc(&tcp_frame(c, (VIP, 80), RST, b""));
    assert_eq!(
        dp.tc(&tcp_frame(c, (vip2, 80), SYN, b"")).1,
        tcp_frame(c, (B1, 8080), SYN, b"")
    );
    assert_eq!(dp.counter(Counter::PortRemapped), 1);
}

/// `count` frontends 198.19.x.y:80, each with one backend of its own (198.18.100+x.y:8080):
/// a sync of them writes batches of `count` backends, services and VIPs, long enough to be
/// written by two threads at once (each service value holds its backend: no slots).
fn one_backend_each(count: u16) -> Desired {
    backends_each(count, 80, 1)
}

/// `count` frontends 198.19.x.y:`port`, each with `per` backends of its own
/// (198.18.100+x.y, ports 8080 on).
fn backends_each(count: u16, port: u16, per: u16) -> Desired {
    (0..count)
        .map(|i| {
            let [hi, lo] = i.to_be_bytes();
            let backend = Ipv4Addr::new(198, 18, 100 + hi, lo);
            let backends: Vec<(Ipv4Addr, u16)> = (0..per).map(|n| (backend, 8080 + n)).collect();
            frontend(
                Ipv4Addr::new(198, 19, hi, lo),
                port,
                Protocol::Tcp,
                &backends,
                None,
            )
        })
        .collect()
}

/// A sync of thousands of frontends (each batch written in two halves at once) leaves the
/// maps holding exactly the record, and serves the first and the last frontend.
#[test]
fn thousands_of_frontends_in_one_sync_are_written_whole() {
    if !require_privileges("thousands_of_frontends_in_one_sync_are_written_whole") {
        return;
    }
    let sizes = MapSizes {
        services: 4096,
        backends: 8192,
        ..SIZES
    };
    let mut dp = LoadedDatapath::load_with(&sizes);
    // And 500 of them with a second port of five backends, more than a service value
    // holds: 2,500 slots.
    let mut desired = one_backend_each(3000);
    desired.extend(backends_each(500, 81, 5));
    dp.program(&desired);
    assert_eq!(dp.programmed.frontends().len(), 3500);
    let mut snapshot = dp.maps.snapshot().expect("reading the maps");
    assert_eq!(snapshot.backends.len(), 5500);
    assert_eq!(snapshot.slots.len(), 2500);
    assert_eq!(snapshot.services.len(), 3500);
    assert_eq!(snapshot.vips.len(), 3000);
    let check = dp.programmed.check(&mut snapshot, sizes.services);
    assert!(check.drift.is_empty(), "{:?}", check.drift);
    // The drift check's walk of the maps themselves says the same; and no once an entry
    // goes behind the agent's back.
    assert!(dp.programmed.holds(&dp.maps).expect("walking the maps"));
    let (_, frontend) = dp.programmed.frontends().iter().next().expect("a frontend");
    let &(endpoint, id) = frontend.backends.first().expect("a backend");
    let lost = MapOp::DeleteBackend { id, endpoint };
    Datapath::apply(&mut dp.maps, &lost).expect("deleting a backend");
    assert!(!dp.programmed.holds(&dp.maps).expect("walking the maps"));
    let mut snapshot = dp.maps.snapshot().expect("reading the maps");
    let check = dp.programmed.check(&mut snapshot, sizes.services);
    assert!(!check.drift.is_empty());
    for op in dp.programmed.repair(check) {
        Datapath::apply(&mut dp.maps, &op).expect("repairing");
    }
    dp.program(&desired);
    assert!(dp.programmed.holds(&dp.maps).expect("walking the maps"));
    for (vip, backend) in [
        (Ipv4Addr::new(198, 19, 0, 0), Ipv4Addr::new(198, 18, 100, 0)),
        (
            Ipv4Addr::new(198, 19, 11, 183),
            Ipv4Addr::new(198, 18, 111, 183),
        ),
    ] {
        let (_, out) = dp.tc(&tcp_frame((CLIENT, 40_000), (vip, 80), SYN, b""));
        assert_eq!(dst(&out), (backend, 8080), "{vip}");
    }
    // The last port of five backends, through its slots: each in turn (on one CPU, whose
    // counter it is).
    let vip = Ipv4Addr::new(198, 19, 1, 243);
    let cpu = cpu::allowed_cpus().expect("allowed CPUs")[0];
    let mut reached: Vec<u16> = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                cpu::pin_thread_to(cpu).expect("pinning");
                (0..5)
                    .map(|n| {
                        let frame = tcp_frame((CLIENT, 41_000 + n), (vip, 81), SYN, b"");
                        let (to, port) = dst(&dp.tc(&frame).1);
                        assert_eq!(to, Ipv4Addr::new(198, 18, 101, 243), "{vip}");
                        port
                    })
                    .collect()
            })
            .join()
            .expect("the pinned thread")
    });
    reached.sort_unstable();
    assert_eq!(reached, [8080, 8081, 8082, 8083, 8084]);
}

/// KP_BACKENDS filling up in the middle of a batch written in two halves: exactly the
/// frontends whose backend found no room fail (reported, rolled back, retried), every
/// other one is programmed, and the maps hold exactly the record.
#[test]
fn a_map_filling_up_within_a_split_batch_fails_exactly_what_does_not_fit() {
    if !require_privileges("a_map_filling_up_within_a_split_batch_fails_exactly_what_does_not_fit")
    {
        return;
    }
    let sizes = MapSizes {
        services: 4096,
        backends: 2500,
        ..SIZES
    };
    let mut dp = LoadedDatapath::load_with(&sizes);
    let report = dp.programmed.sync(&one_backend_each(3000), &mut dp.maps);
    assert_eq!(report.problems.len(), 500, "{:?}", &report.problems[..3]);
    assert!(
        report
            .problems
            .iter()
            .all(|p| p.message.contains("KP_BACKENDS is full")),
        "{:?}",
        report
            .problems
            .iter()
            .find(|p| !p.message.contains("KP_BACKENDS is full"))
    );
    assert_eq!(dp.programmed.frontends().len(), 2500);
    let mut snapshot = dp.maps.snapshot().expect("reading the maps");
    assert_eq!(snapshot.backends.len(), 2500);
    assert_eq!(snapshot.services.len(), 2500);
    let check = dp.programmed.check(&mut snapshot, sizes.services);
    assert!(check.drift.is_empty(), "{:?}", check.drift);
    assert!(dp.programmed.holds(&dp.maps).expect("walking the maps"));
}
