//! `KP_FILTER` and `KP_CLIENTS` on hand-built packets (BPF_PROG_TEST_RUN): a packet from an
//! endpoint the agent never wrote, or to a client no flow came from, skips the reply
//! lookup; one from a backend that is gone does not; a filter found empty (maps of an agent
//! that had none) is seeded from the maps and conntrack before anything depends on it, and
//! the client bitmap from conntrack once the programs that set its bits are attached.

mod support;

use std::net::Ipv4Addr;

use aya::maps::{Array, MapData};
use kproxy::dataplane::client_filter::{self, ClientFilter};
use kproxy::model::Protocol;
use kproxy_common::{
    ct::CtEntry,
    filter::{CLIENTS_READY, FILTER_ENTRIES, backend_bit, client_bit, frontend_bit},
    names,
};
use kproxy_testbed::require_privileges;
use support::{
    datapath::{
        B1, B2, B3, CLIENT, LoadedDatapath, TCX_NEXT, VIP, flow_key, frontend, loaded,
        three_backends,
    },
    packets::{ACK, SYN, SYN_ACK, dst, tcp_frame},
};

const C: (Ipv4Addr, u16) = (CLIENT, 40_000);
const SVC: (Ipv4Addr, u16) = (VIP, 80);
/// An endpoint no Service ever had: a pod talking to the client directly.
const STRANGER: (Ipv4Addr, u16) = (Ipv4Addr::new(198, 18, 2, 9), 9090);

fn filter_map(dp: &LoadedDatapath) -> Array<MapData, u64> {
    dp.map(names::MAP_FILTER)
}

fn is_set(dp: &LoadedDatapath, (entry, bit): (u32, u64)) -> bool {
    filter_map(dp).get(&entry, 0).expect("a filter word") & bit != 0
}

fn client_set(dp: &LoadedDatapath, client: Ipv4Addr) -> bool {
    let (entry, bit) = client_bit(u32::from(client).to_be());
    let map: Array<MapData, u64> = dp.map(names::MAP_CLIENTS);
    map.get(&entry, 0).expect("a client word") & bit != 0
}

fn clients_ready(dp: &LoadedDatapath) -> bool {
    let map: Array<MapData, u64> = dp.map(names::MAP_CLIENTS);
    map.get(&CLIENTS_READY, 0).expect("the ready word") != 0
}

/// A second client, on the client's subnet, that opens no flow unless a test says so.
const C2: (Ipv4Addr, u16) = (Ipv4Addr::new(198, 18, 1, 3), 41_000);

fn wire((addr, port): (Ipv4Addr, u16)) -> (u32, u16) {
    (u32::from(addr).to_be(), port.to_be())
}

fn backend_of(endpoint: (Ipv4Addr, u16)) -> (u32, u64) {
    let (addr, port) = wire(endpoint);
    backend_bit(addr, port)
}

/// Opens a TCP flow C → VIP and returns the backend it got.
fn open_tcp(dp: &LoadedDatapath) -> (Ipv4Addr, u16) {
    let (verdict, out) = dp.tc(&tcp_frame(C, SVC, SYN, b""));
    assert_eq!(verdict, TCX_NEXT);
    let backend = dst(&out);
    dp.tc(&tcp_frame(backend, C, SYN_ACK, b""));
    backend
}

/// Opens a TCP flow C → VIP: the backend it got, and the flow's reply entry.
fn open_with_reply(dp: &LoadedDatapath) -> ((Ipv4Addr, u16), CtEntry) {
    let backend = open_tcp(dp);
    let reply = dp
        .ct_reply()
        .get(&flow_key(backend, C, Protocol::Tcp), 0)
        .expect("the flow's reply entry");
    (backend, reply)
}

/// A reply entry for `from` → C as a flow to SVC would have left it.
fn plant_reply(dp: &LoadedDatapath, from: (Ipv4Addr, u16), like: &CtEntry) {
    dp.ct_reply()
        .insert(flow_key(from, C, Protocol::Tcp), like, 0)
        .expect("a reply entry");
}

#[test]
fn the_filter_holds_what_the_agent_wrote_and_gates_the_reply_lookup() {
    if !require_privileges("the_filter_holds_what_the_agent_wrote_and_gates_the_reply_lookup") {
        return;
    }
    let mut dp = loaded(&three_backends(Protocol::Tcp, None));
    assert!(is_set(&dp, frontend_bit(u32::from(VIP).to_be())));
    for b in [B1, B2, B3] {
        assert!(is_set(&dp, backend_of((b, 8080))), "{b}");
    }
    assert!(!is_set(&dp, backend_of(STRANGER)));
    assert!(!is_set(&dp, frontend_bit(u32::from(CLIENT).to_be())));

    let (_, reply) = open_with_reply(&dp);
    // A reply entry under an endpoint the agent never wrote is not even looked at: the
    // packet leaves as it came. (Entries are only ever made for backends; this one is
    // planted to show the lookup is skipped.)
    plant_reply(&dp, STRANGER, &reply);
    let from_stranger = tcp_frame(STRANGER, C, ACK, b"x");
    assert_eq!(dp.tc(&from_stranger), (TCX_NEXT, from_stranger.clone()));
    // Once a Service has the endpoint, its bit is set before its backend entry is written,
    // and the same entry translates.
    dp.program(
        &[frontend(
            VIP,
            80,
            Protocol::Tcp,
            &[(B1, 8080), (B2, 8080), (B3, 8080), STRANGER],
            None,
        )]
        .into_iter()
        .collect(),
    );
    assert!(is_set(&dp, backend_of(STRANGER)));
    assert_eq!(dp.tc(&from_stranger).1, tcp_frame(SVC, C, ACK, b"x"));
}

#[test]
fn a_backend_that_is_gone_keeps_its_bit_and_its_replies_translated() {
    if !require_privileges("a_backend_that_is_gone_keeps_its_bit_and_its_replies_translated") {
        return;
    }
    let mut dp = loaded(&three_backends(Protocol::Tcp, None));
    let backend = open_tcp(&dp);
    let others: Vec<(Ipv4Addr, u16)> = [B1, B2, B3]
        .into_iter()
        .map(|b| (b, 8080))
        .filter(|&e| e != backend)
        .collect();
    dp.program(
        &[frontend(VIP, 80, Protocol::Tcp, &others, None)]
            .into_iter()
            .collect(),
    );
    // Its flow's replies still come (the client has not sent since, so nothing reset
    // it): they must reach the client from the VIP, so its bit stays.
    assert!(is_set(&dp, backend_of(backend)));
    assert_eq!(
        dp.tc(&tcp_frame(backend, C, ACK, b"late")).1,
        tcp_frame(SVC, C, ACK, b"late")
    );
}

#[test]
fn a_filter_found_empty_is_seeded_from_the_maps_and_conntrack() {
    if !require_privileges("a_filter_found_empty_is_seeded_from_the_maps_and_conntrack") {
        return;
    }
    let dp = loaded(&three_backends(Protocol::Tcp, None));
    let (backend, reply) = open_with_reply(&dp);
    // A flow left to an endpoint no map has any more, as an older agent could leave one.
    plant_reply(&dp, STRANGER, &reply);
    // The maps as an agent without the filter leaves them: every bit clear.
    let mut map = filter_map(&dp);
    for entry in 0..FILTER_ENTRIES {
        map.set(entry, 0, 0).expect("clearing the filter");
    }
    assert!(!is_set(&dp, frontend_bit(u32::from(VIP).to_be())));

    // What the agent does at start, before its programs read the map.
    let pin_dir = dp.bpffs.pin_path("kproxy");
    let mut maps = kproxy::dataplane::maps::ServiceMaps::open(&pin_dir).expect("service maps");
    let held = maps.snapshot().expect("snapshot");
    maps.track_filter(&held).expect("seeding the filter");

    assert!(is_set(&dp, frontend_bit(u32::from(VIP).to_be())));
    for b in [B1, B2, B3] {
        assert!(is_set(&dp, backend_of((b, 8080))), "{b}");
    }
    assert!(is_set(&dp, backend_of(STRANGER)), "from conntrack");
    assert_eq!(maps.filter_bits(), Some((1, 4)));
    // Served as before: the flow, a new one, and the replies of both endpoints.
    assert_eq!(dst(&dp.tc(&tcp_frame(C, SVC, ACK, b"")).1), backend);
    assert_eq!(
        dp.tc(&tcp_frame(STRANGER, C, ACK, b"x")).1,
        tcp_frame(SVC, C, ACK, b"x")
    );
}

#[test]
fn a_reply_to_a_client_no_flow_came_from_skips_the_lookup_until_one_does() {
    if !require_privileges("a_reply_to_a_client_no_flow_came_from_skips_the_lookup_until_one_does")
    {
        return;
    }
    let dp = loaded(&three_backends(Protocol::Tcp, None));
    assert!(clients_ready(&dp), "seeded as the agent seeds it");
    let (backend, reply) = open_with_reply(&dp);
    assert!(
        client_set(&dp, C.0),
        "the flow's client, set before its reply entry"
    );
    assert!(!client_set(&dp, C2.0));
    // A reply entry towards C2, planted to show the lookup is skipped (only a flow from C2
    // makes one): the backend's bit is set, the client's is not, so the packet leaves as
    // it came, as a socket-LB'd connection's replies do.
    dp.ct_reply()
        .insert(flow_key(backend, C2, Protocol::Tcp), reply, 0)
        .expect("a reply entry");
    let to_c2 = tcp_frame(backend, C2, ACK, b"x");
    assert_eq!(dp.tc(&to_c2), (TCX_NEXT, to_c2.clone()));
    // A flow from C2 sets its bit before its reply entry: its replies are translated.
    let (verdict, out) = dp.tc(&tcp_frame(C2, SVC, SYN, b""));
    assert_eq!(verdict, TCX_NEXT);
    assert!(client_set(&dp, C2.0));
    let its_backend = dst(&out);
    assert_eq!(
        dp.tc(&tcp_frame(its_backend, C2, SYN_ACK, b"")).1,
        tcp_frame(SVC, C2, SYN_ACK, b"")
    );
}

#[test]
fn reply_entries_made_before_the_bitmap_are_looked_up_and_then_covered_by_the_seed() {
    if !require_privileges(
        "reply_entries_made_before_the_bitmap_are_looked_up_and_then_covered_by_the_seed",
    ) {
        return;
    }
    let dp = loaded(&three_backends(Protocol::Tcp, None));
    let (backend, reply) = open_with_reply(&dp);
    // As programs of an agent without the bitmap leave conntrack: an entry towards C2 with
    // no bit. A new agent clears the ready word before attaching its programs...
    let pin_dir = dp.bpffs.pin_path("kproxy");
    client_filter::unready(&pin_dir).expect("unready");
    dp.ct_reply()
        .insert(flow_key(backend, C2, Protocol::Tcp), reply, 0)
        .expect("a reply entry");
    assert!(!client_set(&dp, C2.0));
    // ...so until the bitmap is complete every reply is looked up, and translated.
    let to_c2 = tcp_frame(backend, C2, ACK, b"x");
    assert_eq!(dp.tc(&to_c2).1, tcp_frame(SVC, C2, ACK, b"x"));
    // Its seed, once its programs are attached, sets the bit of every entry's destination.
    let clients = ClientFilter::seed(&pin_dir).expect("seeding");
    assert!(clients_ready(&dp));
    assert!(client_set(&dp, C2.0) && client_set(&dp, C.0));
    assert_eq!(clients.bits_set(), 2);
    assert_eq!(dp.tc(&to_c2).1, tcp_frame(SVC, C2, ACK, b"x"));
}
