//! Conntrack under pressure, on hand-built packets (BPF_PROG_TEST_RUN): entries evicted
//! alone, flows without state mid-stream, a full table, two CPUs creating one flow, and
//! what flows do when their endpoint stops being used or leaves its slices.

mod support;

use std::net::Ipv4Addr;

use etherparse::{SlicedPacket, TransportSlice};
use kproxy::dataplane::load::MapSizes;
use kproxy::model::{Desired, Protocol};
use kproxy_common::{
    config::Config,
    ct::{AffinityKey, AffinityValue, CtEntry},
    names,
    stats::Counter,
};
use kproxy_testbed::require_privileges;
use support::{
    datapath::{
        B1, B2, B3, CLIENT, LoadedDatapath, SIZES, TC_ACT_REDIRECT, TC_ACT_SHOT, TCX_NEXT, VIP,
        XDP_TX, flow_key, frontend, frontend_listing, loaded, three_backends,
    },
    packets::{ACK, SYN, SYN_ACK, assert_checksums, dst, tcp_frame, udp_frame},
};

const C: (Ipv4Addr, u16) = (CLIENT, 40_000);
const SVC: (Ipv4Addr, u16) = (VIP, 80);

/// Opens a TCP flow C → VIP and returns the backend it got.
fn open_tcp(dp: &LoadedDatapath, client: (Ipv4Addr, u16)) -> (Ipv4Addr, u16) {
    let (verdict, out) = dp.tc(&tcp_frame(client, SVC, SYN, b""));
    assert_eq!(verdict, TCX_NEXT);
    let backend = dst(&out);
    dp.tc(&tcp_frame(backend, client, SYN_ACK, b""));
    backend
}

#[test]
fn a_reply_whose_forward_entry_was_evicted_is_translated_and_rebuilds_it() {
    if !require_privileges("a_reply_whose_forward_entry_was_evicted_is_translated_and_rebuilds_it")
    {
        return;
    }
    let dp = loaded(&three_backends(Protocol::Tcp, None));
    let backend = open_tcp(&dp, C);
    // The LRU evicts the forward entry alone.
    dp.ct_forward()
        .remove(&flow_key(C, SVC, Protocol::Tcp))
        .expect("forward entry");
    let reply = tcp_frame(backend, C, ACK, b"data");
    let (verdict, out) = dp.tc(&reply);
    assert_eq!(verdict, TCX_NEXT);
    assert_eq!(
        out,
        tcp_frame(SVC, C, ACK, b"data"),
        "never leaves with the backend's address"
    );
    assert_eq!(dp.counter(Counter::CtForwardRestored), 1);
    let restored = dp
        .flow(C, SVC, Protocol::Tcp)
        .expect("rebuilt from the reply entry");
    assert_eq!(restored.nat_port, backend.1.to_be());
    // The client's next packet follows the flow, not round-robin.
    assert_eq!(dst(&dp.tc(&tcp_frame(C, SVC, ACK, b"more")).1), backend);
    assert_eq!(dp.counter(Counter::NewFlows), 1);
}

#[test]
fn a_forward_packet_whose_reply_entry_is_missing_rebuilds_it() {
    if !require_privileges("a_forward_packet_whose_reply_entry_is_missing_rebuilds_it") {
        return;
    }
    let dp = loaded(&three_backends(Protocol::Tcp, None));
    let backend = open_tcp(&dp, C);
    let reply_key = flow_key(backend, C, Protocol::Tcp);
    dp.ct_reply().remove(&reply_key).expect("reply entry");
    // A live flow's packets look at the reply entry when the flow is due for its
    // once-a-second refresh (every packet in between trusts the forward entry).
    assert_eq!(dst(&dp.tc(&tcp_frame(C, SVC, ACK, b"")).1), backend);
    assert_eq!(dp.counter(Counter::CtReplyRestored), 0, "not looked at yet");
    let fkey = flow_key(C, SVC, Protocol::Tcp);
    let mut fwd = dp.ct_forward();
    let mut entry = fwd.get(&fkey, 0).expect("flow");
    entry.last_seen_ns -= 2_000_000_000;
    fwd.insert(fkey, entry, 0).expect("age");
    assert_eq!(dst(&dp.tc(&tcp_frame(C, SVC, ACK, b"")).1), backend);
    assert_eq!(dp.counter(Counter::CtReplyRestored), 1);
    assert!(dp.ct_reply().get(&reply_key, 0).is_ok(), "rebuilt");
    let (_, out) = dp.tc(&tcp_frame(backend, C, ACK, b"x"));
    assert_eq!(out, tcp_frame(SVC, C, ACK, b"x"));
}

#[test]
fn tcp_mid_stream_without_a_flow_is_dropped_not_given_a_backend() {
    if !require_privileges("tcp_mid_stream_without_a_flow_is_dropped_not_given_a_backend") {
        return;
    }
    let dp = loaded(&three_backends(Protocol::Tcp, None));
    // Never seen (or forgotten): conntrack INVALID, as kube-proxy drops it.
    let ack = tcp_frame(C, SVC, ACK, b"data");
    assert_eq!(dp.tc(&ack), (TC_ACT_SHOT, ack.clone()));
    assert_eq!(dp.xdp(&ack).0, 1, "XDP_DROP");
    // A flow that timed out is no flow either (timeouts of a second; the flow is aged to
    // the boot of the machine).
    let mut dp = dp;
    dp.flows
        .write_config(&Config {
            tcp_established_timeout_ns: 1_000_000_000,
            ..Config::DEFAULT
        })
        .expect("config");
    let backend = open_tcp(&dp, (CLIENT, 40_001));
    let key = flow_key((CLIENT, 40_001), SVC, Protocol::Tcp);
    let mut fwd = dp.ct_forward();
    let mut entry = fwd.get(&key, 0).expect("flow");
    entry.last_seen_ns = 1; // seen at boot: long expired
    fwd.insert(key, entry, 0).expect("age the flow");
    let mut rev = dp.ct_reply();
    let rkey = flow_key(backend, (CLIENT, 40_001), Protocol::Tcp);
    let mut reply = rev.get(&rkey, 0).expect("reply entry");
    reply.last_seen_ns = 1;
    rev.insert(rkey, reply, 0).expect("age the reply entry");
    assert_eq!(
        dp.tc(&tcp_frame((CLIENT, 40_001), SVC, ACK, b"")).0,
        TC_ACT_SHOT
    );
    assert_eq!(dp.counter(Counter::DropCtInvalid), 3);
    assert_eq!(dp.counter(Counter::NewFlows), 1, "only the SYN made a flow");
    // A SYN still opens a new flow.
    assert_eq!(dp.tc(&tcp_frame(C, SVC, SYN, b"")).0, TCX_NEXT);
}

#[test]
fn a_full_reply_table_drops_new_flows_and_keeps_established_ones() {
    if !require_privileges("a_full_reply_table_drops_new_flows_and_keeps_established_ones") {
        return;
    }
    let sizes = MapSizes {
        conntrack: 64,
        ..SIZES
    };
    let mut dp = LoadedDatapath::load_with(&sizes);
    dp.program(&three_backends(Protocol::Tcp, None));
    let backend = open_tcp(&dp, C);
    // Fill the reply table with flows of other clients.
    let mut port = 1u16;
    while dp.tc(&tcp_frame((CLIENT, port), SVC, SYN, b"")).0 == TCX_NEXT {
        port += 1;
        assert!(port < 1_000, "the table never filled");
    }
    assert_eq!(
        dp.counter(Counter::DropCtInsert),
        1,
        "the flow that found it full"
    );
    let replies = dp.ct_reply().keys().count();
    assert_eq!(replies, 64, "full, and nothing was evicted");
    // The established flow goes on both ways.
    assert_eq!(dst(&dp.tc(&tcp_frame(C, SVC, ACK, b"")).1), backend);
    assert_eq!(
        dp.tc(&tcp_frame(backend, C, ACK, b"")).1,
        tcp_frame(SVC, C, ACK, b"")
    );
}

#[test]
fn a_reply_entry_another_cpu_is_creating_is_shared_not_remapped() {
    if !require_privileges("a_reply_entry_another_cpu_is_creating_is_shared_not_remapped") {
        return;
    }
    let dp = loaded(&three_backends(Protocol::Tcp, None));
    // Another CPU, creating the same flow towards B1, inserted its reply entry first.
    let rkey = flow_key((B1, 8080), C, Protocol::Tcp);
    let theirs = CtEntry {
        last_seen_ns: 1,
        backend_id: 1,
        svc_id: 0,
        nat_addr: u32::from_ne_bytes(VIP.octets()),
        nat_port: 80u16.to_be(),
        alt_port: 0,
        flags: 0,
        alt_addr: 0,
    };
    dp.ct_reply().insert(rkey, theirs, 0).expect("reply entry");
    let (_, out) = dp.tc(&tcp_frame(C, SVC, SYN, b""));
    assert_eq!(
        out,
        tcp_frame(C, (B1, 8080), SYN, b""),
        "same tuple, no remap"
    );
    assert_eq!(dp.counter(Counter::PortRemapped), 0);
    assert_eq!(
        dp.ct_reply().keys().count(),
        1,
        "one reply entry for one flow"
    );
}

#[test]
fn flows_created_on_two_cpus_at_once_converge_on_one_entry() {
    if !require_privileges("flows_created_on_two_cpus_at_once_converge_on_one_entry") {
        return;
    }
    let mut dp = LoadedDatapath::load_with(&MapSizes {
        conntrack: 8192,
        ..SIZES
    });
    dp.program(&three_backends(Protocol::Udp, None));
    let ports: Vec<u16> = (10_000..12_000).collect();
    // Both threads send the first datagram of the same 2000 flows, each flow released to
    // both at the same moment.
    let start = std::sync::Barrier::new(2);
    let outputs: Vec<Vec<(u16, (Ipv4Addr, u16))>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    ports
                        .iter()
                        .map(|p| {
                            let frame = udp_frame((CLIENT, *p), SVC, b"q");
                            start.wait();
                            let (_, out) = dp.tc(&frame);
                            (*p, dst(&out))
                        })
                        .collect()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("worker"))
            .collect()
    });
    let fwd = dp.ct_forward();
    let rev = dp.ct_reply();
    for sent in &outputs {
        for (port, backend) in sent {
            let entry = fwd
                .get(&flow_key((CLIENT, *port), SVC, Protocol::Udp), 0)
                .expect("one entry per flow");
            assert_eq!(
                (entry.nat_addr, entry.nat_port),
                (u32::from_ne_bytes(backend.0.octets()), backend.1.to_be()),
                "flow {port}: every packet went where the flow's entry says"
            );
        }
    }
    assert_eq!(fwd.keys().count(), ports.len());
    assert_eq!(
        rev.keys().count(),
        ports.len(),
        "no reply entry left behind by a CPU that lost the race"
    );
    eprintln!(
        "creation races seen: {} (of {} flows created twice at once)",
        dp.counter(Counter::CtCreateRaced),
        ports.len()
    );
}

#[test]
fn a_not_ready_endpoint_keeps_its_tcp_flows_and_loses_its_udp_flows() {
    if !require_privileges("a_not_ready_endpoint_keeps_its_tcp_flows_and_loses_its_udp_flows") {
        return;
    }
    let all = [(B1, 8080), (B2, 8080), (B3, 8080)];
    let both: Desired = [
        frontend(VIP, 80, Protocol::Tcp, &all, None),
        frontend(VIP, 80, Protocol::Udp, &all, None),
    ]
    .into_iter()
    .collect();
    let mut dp = loaded(&both);
    assert_eq!(open_tcp(&dp, C), (B1, 8080));
    assert_eq!(dst(&dp.tc(&udp_frame(C, SVC, b"q")).1), (B1, 8080));
    // B1 stops being ready (still listed, e.g. terminating or failing its probe).
    let b1_not_ready: Desired = [
        frontend_listing(VIP, 80, Protocol::Tcp, &all[1..], &all[..1]),
        frontend_listing(VIP, 80, Protocol::Udp, &all[1..], &all[..1]),
    ]
    .into_iter()
    .collect();
    dp.program(&b1_not_ready);
    assert_eq!(
        dst(&dp.tc(&tcp_frame(C, SVC, ACK, b"")).1),
        (B1, 8080),
        "a readiness flap never breaks an established connection"
    );
    let udp = dst(&dp.tc(&udp_frame(C, SVC, b"q")).1);
    assert!(
        [(B2, 8080), (B3, 8080)].contains(&udp),
        "UDP moved, to {udp:?}"
    );
    assert_eq!(dp.counter(Counter::FlowRebalanced), 1);
    for port in 1..=4 {
        let new = dst(&dp.tc(&tcp_frame((CLIENT, port), SVC, SYN, b"")).1);
        assert_ne!(new.0, B1, "no new connection to a not ready endpoint");
    }
}

#[test]
fn tcp_flows_of_an_endpoint_gone_from_every_slice_are_reset() {
    if !require_privileges("tcp_flows_of_an_endpoint_gone_from_every_slice_are_reset") {
        return;
    }
    let mut dp = loaded(&three_backends(Protocol::Tcp, None));
    assert_eq!(open_tcp(&dp, C), (B1, 8080));
    dp.program(
        &[frontend(
            VIP,
            80,
            Protocol::Tcp,
            &[(B2, 8080), (B3, 8080)],
            None,
        )]
        .into_iter()
        .collect(),
    );
    let ack = tcp_frame(C, SVC, ACK, b"more data");
    for (verdict, out) in [dp.tc(&ack), {
        let (v, out) = dp.xdp(&ack);
        (if v == XDP_TX { TC_ACT_REDIRECT } else { -2 }, out)
    }] {
        assert_eq!(verdict, TC_ACT_REDIRECT, "answered where it came from");
        assert_checksums(&out);
        let rst = SlicedPacket::from_ethernet(&out).expect("a frame");
        let Some(etherparse::NetSlice::Ipv4(ip)) = rst.net else {
            panic!("IPv4")
        };
        assert_eq!(ip.header().source_addr(), VIP);
        assert_eq!(ip.header().destination_addr(), CLIENT);
        let Some(TransportSlice::Tcp(tcp)) = rst.transport else {
            panic!("TCP")
        };
        assert!(tcp.rst(), "a reset");
        assert_eq!((tcp.source_port(), tcp.destination_port()), (80, C.1));
        assert_eq!(
            tcp.sequence_number(),
            2000,
            "the ACK the client sent (RFC 793)"
        );
        assert_eq!(&out[..6], &ack[6..12], "to the client's MAC");
    }
    assert_eq!(dp.counter(Counter::ResetBackendGone), 2);
    // A new connection from the same port goes to a live backend.
    let syn = dst(&dp.tc(&tcp_frame(C, SVC, SYN, b"")).1);
    assert_ne!(syn.0, B1);
}

#[test]
fn affinity_is_refreshed_by_new_connections_not_by_traffic() {
    if !require_privileges("affinity_is_refreshed_by_new_connections_not_by_traffic") {
        return;
    }
    let dp = loaded(&three_backends(Protocol::Tcp, Some(60)));
    open_tcp(&dp, C);
    let affinity: aya::maps::HashMap<aya::maps::MapData, AffinityKey, AffinityValue> =
        dp.map(names::MAP_AFFINITY);
    let key = *affinity
        .keys()
        .next()
        .expect("an affinity")
        .as_ref()
        .expect("key");
    let set_at = affinity.get(&key, 0).expect("affinity").last_seen_ns;
    // Make the flow due for its once-a-second refresh, then send traffic on it.
    let fkey = flow_key(C, SVC, Protocol::Tcp);
    let mut fwd = dp.ct_forward();
    let mut entry = fwd.get(&fkey, 0).expect("flow");
    entry.last_seen_ns -= 2_000_000_000;
    fwd.insert(fkey, entry, 0).expect("age");
    dp.tc(&tcp_frame(C, SVC, ACK, b""));
    assert!(
        fwd.get(&fkey, 0).expect("flow").last_seen_ns > entry.last_seen_ns,
        "the flow itself was refreshed"
    );
    assert_eq!(
        affinity.get(&key, 0).expect("affinity").last_seen_ns,
        set_at,
        "traffic on an established connection leaves the affinity alone"
    );
    // Aged (the datapath's clock moves by ticks), then a new connection refreshes it.
    let mut aged = affinity.get(&key, 0).expect("affinity");
    aged.last_seen_ns -= 1_000_000_000;
    let mut affinity_rw: aya::maps::HashMap<aya::maps::MapData, AffinityKey, AffinityValue> =
        dp.map(names::MAP_AFFINITY);
    affinity_rw.insert(key, aged, 0).expect("age the affinity");
    dp.tc(&tcp_frame((CLIENT, 40_001), SVC, SYN, b""));
    assert!(
        affinity.get(&key, 0).expect("affinity").last_seen_ns > aged.last_seen_ns,
        "a new connection refreshes it"
    );
    assert_eq!(dp.counter(Counter::AffinityHits), 1);
}

#[test]
fn collection_walks_tables_larger_than_a_chunk_and_keeps_or_expires_every_flow() {
    if !require_privileges(
        "collection_walks_tables_larger_than_a_chunk_and_keeps_or_expires_every_flow",
    ) {
        return;
    }
    // More flows than one chunk of the walk holds, so a pass crosses chunk (and bucket)
    // boundaries while it deletes behind itself.
    let flows = kproxy::sync::gc::CHUNK * 2 + 100;
    let sizes = MapSizes {
        conntrack: 32_768,
        ..SIZES
    };
    let mut dp = LoadedDatapath::load_with(&sizes);
    dp.program(&three_backends(Protocol::Tcp, None));
    for i in 0..flows {
        let client = (
            Ipv4Addr::from(u32::from(CLIENT) + u32::try_from(i / 50_000).expect("small")),
            u16::try_from(1_000 + i % 50_000).expect("port"),
        );
        open_tcp(&dp, client);
    }
    let count =
        |dp: &LoadedDatapath| (dp.ct_forward().keys().count(), dp.ct_reply().keys().count());
    assert_eq!(count(&dp), (flows, flows));
    let live = kproxy::sync::gc::ProgrammedLiveness::new(
        &dp.programmed,
        [],
        &kproxy::sync::gc::Generation::default(),
    );
    let capacity = sizes.conntrack as usize;
    let now = kproxy::dataplane::maps::monotonic_ns();

    // Now: every flow is established and fresh, so a pass sees each and deletes none.
    let stats = dp
        .flows
        .collect_garbage(&Config::DEFAULT, &live, now, capacity)
        .expect("collect")
        .v4;
    assert_eq!((stats.flows, stats.replies), (flows, flows), "{stats:?}");
    assert_eq!(stats.expired + stats.orphans + stats.service_gone, 0);
    assert_eq!(count(&dp), (flows, flows));
    assert!(
        dp.flows.walk_capacity() <= kproxy::sync::gc::CHUNK,
        "a walk holds one chunk at a time, not the table ({} entries)",
        dp.flows.walk_capacity()
    );

    // Two days on, every flow has timed out: one pass deletes both entries of each.
    let later = now + 2 * 86_400 * 1_000_000_000;
    let stats = dp
        .flows
        .collect_garbage(&Config::DEFAULT, &live, later, capacity)
        .expect("collect")
        .v4;
    assert_eq!(
        (stats.flows, stats.expired, stats.replies),
        (flows, flows, 0),
        "{stats:?}"
    );
    assert_eq!(count(&dp), (0, 0));
}
