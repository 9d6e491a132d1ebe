//! Maglev consistent hashing in the real programs (BPF_PROG_TEST_RUN): a new flow of a
//! Maglev service port goes where the agent's table and the shared flow hash say, on every
//! node alike, again after its conntrack entry is lost, and few flows move when a backend
//! goes.

mod support;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
};

use aya::maps::{HashMap, MapData};
use kproxy::{
    dataplane::load::MapSizes,
    model::{Desired, Protocol, maglev},
};
use kproxy_common::{
    addr::In6Addr,
    maglev::{MaglevChunk, MaglevKey, flow_hash},
    names,
    stats::Counter,
};
use kproxy_testbed::require_privileges;
use support::{
    datapath::{
        B1_6, B2_6, B3_6, CLIENT, CLIENT6, LoadedDatapath, SIZES, VIP, VIP6, flow_key, frontend,
    },
    packets::{SYN, dst, dst6, tcp_frame, tcp6_frame},
};

/// The datapath, with a conntrack table that holds every flow of `clients`.
fn load() -> LoadedDatapath {
    LoadedDatapath::load_with(&MapSizes {
        conntrack: 8192,
        ..SIZES
    })
}

/// How many of `got` differ from `want` (each the backend of one client), and the first.
fn differences(
    got: &[Ipv4Addr],
    want: &[Ipv4Addr],
) -> (usize, Option<(usize, Ipv4Addr, Ipv4Addr)>) {
    assert_eq!(got.len(), want.len());
    let mut differ = got
        .iter()
        .zip(want)
        .enumerate()
        .filter(|(_, (g, w))| g != w);
    let first = differ.next().map(|(i, (g, w))| (i, *g, *w));
    (usize::from(first.is_some()) + differ.count(), first)
}

/// Backends 198.18.2.2 … of the tests, port 8080.
fn backends(n: u8) -> Vec<(Ipv4Addr, u16)> {
    (0..n)
        .map(|i| (Ipv4Addr::new(198, 18, 2 + i, 2), 8080))
        .collect()
}

/// VIP:80/TCP over `backends`, a cluster IP using Maglev (as `--maglev-scope all` makes
/// it; external frontends would also be masqueraded, which needs the node's routes).
fn maglev_service(backends: &[(Ipv4Addr, u16)]) -> Desired {
    let (key, mut f) = frontend(VIP, 80, Protocol::Tcp, backends, None);
    f.maglev = true;
    [(key, f)].into_iter().collect()
}

/// Clients: 64 addresses × 32 ports.
fn clients() -> Vec<(Ipv4Addr, u16)> {
    (0..64u32)
        .flat_map(|a| (0..32u16).map(move |p| (Ipv4Addr::from(u32::from(CLIENT) + a), 40_000 + p)))
        .collect()
}

/// The backend each client's SYN to VIP:80 is sent to.
fn chosen(dp: &LoadedDatapath, clients: &[(Ipv4Addr, u16)]) -> Vec<Ipv4Addr> {
    clients
        .iter()
        .map(|c| {
            let backend = dst(&dp.tc(&tcp_frame(*c, (VIP, 80), SYN, b"")).1).0;
            assert_ne!(backend, VIP, "{c:?}: translated");
            backend
        })
        .collect()
}

/// Forgets every flow, as a lost conntrack table (or another node) would.
fn forget_flows(dp: &LoadedDatapath) {
    let mut fwd = dp.ct_forward();
    let mut rev = dp.ct_reply();
    let keys: Vec<_> = fwd.keys().filter_map(Result::ok).collect();
    for k in keys {
        let _ = fwd.remove(&k);
    }
    let keys: Vec<_> = rev.keys().filter_map(Result::ok).collect();
    for k in keys {
        let _ = rev.remove(&k);
    }
}

#[test]
fn a_flow_gets_the_backend_the_agents_table_names_on_every_node_and_after_losing_its_entry() {
    if !require_privileges(
        "a_flow_gets_the_backend_the_agents_table_names_on_every_node_and_after_losing_its_entry",
    ) {
        return;
    }
    let five = backends(5);
    let clients = clients();
    let mut node_a = load();
    node_a.program(&maglev_service(&five));
    let first = chosen(&node_a, &clients);

    // What the agent's table and the shared hash predict, computed here on their own.
    let addrs: Vec<SocketAddr> = five
        .iter()
        .map(|(a, p)| SocketAddr::from((*a, *p)))
        .collect();
    let table = maglev::table(&addrs, maglev::DEFAULT_TABLE_SIZE).expect("a table");
    let predicted: Vec<Ipv4Addr> = clients
        .iter()
        .map(|c| {
            let key = flow_key(*c, (VIP, 80), Protocol::Tcp);
            let hash = flow_hash(key.saddr, key.daddr, key.sport, key.dport, key.proto);
            five[table[(hash % maglev::DEFAULT_TABLE_SIZE) as usize] as usize].0
        })
        .collect();
    assert_eq!(
        differences(&first, &predicted),
        (0, None),
        "the table the agent built, read as the hash says"
    );
    let mut spread: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
    for b in &first {
        *spread.entry(*b).or_default() += 1;
    }
    assert_eq!(spread.len(), 5, "every backend gets flows: {spread:?}");
    assert_eq!(node_a.counter(Counter::MaglevFallback), 0);

    forget_flows(&node_a);
    assert_eq!(
        differences(&chosen(&node_a, &clients), &first),
        (0, None),
        "the same after losing conntrack"
    );

    // Another node: its own maps, backend ids and service port id of its own (another
    // service programmed first), the backends listed in another order.
    let mut node_b = load();
    let (other_key, other) = frontend(
        Ipv4Addr::new(198, 19, 0, 99),
        443,
        Protocol::Tcp,
        &backends(3),
        None,
    );
    node_b.program(&[(other_key, other.clone())].into_iter().collect());
    let mut reversed = five.clone();
    reversed.reverse();
    let mut both = maglev_service(&reversed);
    both.insert(other_key, other);
    node_b.program(&both);
    assert_ne!(
        node_a.svc_ids(),
        node_b.svc_ids(),
        "ids differ between the nodes"
    );
    assert_eq!(
        differences(&chosen(&node_b, &clients), &first),
        (0, None),
        "another node picks alike"
    );
}

#[test]
fn an_ipv6_flow_gets_the_backend_the_agents_table_names() {
    if !require_privileges("an_ipv6_flow_gets_the_backend_the_agents_table_names") {
        return;
    }
    let three = [(B1_6, 8080), (B2_6, 8080), (B3_6, 8080)];
    let (key, mut f) = frontend(VIP6, 80, Protocol::Tcp, &three, None);
    f.maglev = true;
    let mut dp = load();
    dp.program(&[(key, f)].into_iter().collect());
    let addrs: Vec<SocketAddr> = three
        .iter()
        .map(|(a, p)| SocketAddr::from((*a, *p)))
        .collect();
    let table = maglev::table(&addrs, maglev::DEFAULT_TABLE_SIZE).expect("a table");
    let mut spread: BTreeMap<Ipv6Addr, usize> = BTreeMap::new();
    for port in 40_000..40_300u16 {
        let (_, out) = dp.tc(&tcp6_frame((CLIENT6, port), (VIP6, 80), SYN, b""));
        let got = dst6(&out).0;
        let hash = flow_hash(
            In6Addr::from(CLIENT6),
            In6Addr::from(VIP6),
            port.to_be(),
            80u16.to_be(),
            Protocol::Tcp.number(),
        );
        let want = three[table[(hash % maglev::DEFAULT_TABLE_SIZE) as usize] as usize].0;
        assert_eq!(got, want, "[{CLIENT6}]:{port}");
        *spread.entry(got).or_default() += 1;
    }
    assert_eq!(spread.len(), 3, "every backend gets flows: {spread:?}");
    assert_eq!(dp.counter(Counter::MaglevFallback), 0);
}

#[test]
fn removing_one_of_ten_backends_moves_its_flows_and_about_a_tenth_of_the_others_at_most() {
    if !require_privileges(
        "removing_one_of_ten_backends_moves_its_flows_and_about_a_tenth_of_the_others_at_most",
    ) {
        return;
    }
    let ten = backends(10);
    let clients = clients();
    let mut dp = load();
    dp.program(&maglev_service(&ten));
    let before = chosen(&dp, &clients);
    let gone = ten[3].0;
    let nine: Vec<_> = ten.iter().copied().filter(|(a, _)| *a != gone).collect();
    dp.program(&maglev_service(&nine));
    forget_flows(&dp);
    let after = chosen(&dp, &clients);

    let (on_gone, others): (Vec<_>, Vec<_>) =
        before.iter().zip(&after).partition(|(b, _)| **b == gone);
    assert!(
        on_gone.iter().all(|(_, a)| **a != gone),
        "its flows all moved"
    );
    let moved_others = others.iter().filter(|(b, a)| b != a).count();
    let moved = on_gone.len() + moved_others;
    // In flows per 10,000.
    let share = moved * 10_000 / clients.len();
    let others_share = moved_others * 10_000 / others.len();
    println!(
        "maglev: removing 1 of 10 backends moved {moved} of {} flows ({share} in 10,000): {} \
         of the removed backend's, {moved_others} of the others' ({others_share} in 10,000)",
        clients.len(),
        on_gone.len(),
    );
    // Round robin would move about nine in ten (every slot after the removed one shifts).
    // Maglev moves the removed backend's tenth and a sliver of the rest.
    assert!(share < 1_500, "{share} in 10,000");
    assert!(others_share < 300, "{others_share} in 10,000");
    assert_eq!(dp.counter(Counter::MaglevFallback), 0);
}

#[test]
fn a_flow_whose_table_is_missing_takes_the_next_backend_in_turn_counted() {
    if !require_privileges("a_flow_whose_table_is_missing_takes_the_next_backend_in_turn_counted") {
        return;
    }
    let three = backends(3);
    let mut dp = load();
    dp.program(&maglev_service(&three));
    let mut tables: HashMap<MapData, MaglevKey, MaglevChunk> = dp.map(names::MAP_MAGLEV);
    let keys: Vec<MaglevKey> = tables.keys().filter_map(Result::ok).collect();
    assert_eq!(keys.len(), 16, "one table of 16,381 entries in 16 chunks");
    for k in keys {
        tables.remove(&k).expect("deleting a chunk");
    }
    let got = chosen(&dp, &clients()[..6]);
    let want: Vec<Ipv4Addr> = three.iter().chain(&three).map(|(a, _)| *a).collect();
    assert_eq!(got, want, "in turn, from the first slot");
    assert_eq!(dp.counter(Counter::MaglevFallback), 6);
}
