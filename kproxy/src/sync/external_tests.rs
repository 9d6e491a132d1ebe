//! Sync of NodePort, external IP and load-balancer frontends: their service values carry the
//! frontend's flags, scopes become keys, NodePorts have no VIP, and loadBalancerSourceRanges
//! (`KP_SOURCE_RANGES`) are in place before a value that needs them is published and gone
//! only after nothing published needs them, across failures and restarts.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

use super::{Datapath, MapOp, Programmed, ServiceSettings, fake::FakeDatapath};
use crate::{
    model::{
        Desired, Endpoint, Frontend, FrontendKey, FrontendKind, Protocol, Scope, ServicePortName,
        WhenEmpty,
    },
    problem::ProblemKind,
};

const TCP: Protocol = Protocol::Tcp;

fn ep(host: u8) -> Endpoint {
    Endpoint {
        addr: Ipv4Addr::new(198, 18, host, 2).into(),
        port: 8080,
    }
}

fn lb_ip() -> IpAddr {
    Ipv4Addr::new(192, 0, 2, 10).into()
}

fn frontend(kind: FrontendKind, endpoints: &[u8]) -> Frontend {
    let endpoints: Vec<Endpoint> = endpoints.iter().map(|h| ep(*h)).collect();
    Frontend {
        service: ServicePortName::new("default", "web", "http"),
        kind,
        affinity_timeout_s: None,
        standby: Vec::new(),
        endpoints,
        when_empty: WhenEmpty::Reject,
        external_local: false,
        source_ranges: Vec::new(),
        maglev: false,
    }
}

fn with_ranges(mut f: Frontend, ranges: &[&str]) -> Frontend {
    f.source_ranges = ranges
        .iter()
        .map(|r| r.parse::<IpNet>().expect("test range"))
        .collect();
    f
}

fn net(s: &str) -> IpNet {
    s.parse().expect("test range")
}

fn lb_key() -> FrontendKey {
    FrontendKey::new(lb_ip(), 80, TCP)
}

/// An externalTrafficPolicy Local frontend: its node-local entry and its internal one.
fn local_pair(key: FrontendKey, kind: FrontendKind, here: &[u8], all: &[u8]) -> Desired {
    let mut local = frontend(kind, here);
    local.external_local = true;
    local.when_empty = WhenEmpty::Drop;
    [
        (key, local),
        (key.with_scope(Scope::Internal), frontend(kind, all)),
    ]
    .into_iter()
    .collect()
}

fn settings(dp: &FakeDatapath, key: &FrontendKey) -> ServiceSettings {
    dp.services
        .get(key)
        .unwrap_or_else(|| panic!("{key} not published"))
        .settings
}

#[test]
fn service_values_carry_each_frontends_flags() {
    let node_port = FrontendKey::node_port(false, 30080, TCP);
    let mut want = local_pair(node_port, FrontendKind::NodePort, &[2], &[2, 3]);
    want.insert(
        lb_key(),
        with_ranges(
            frontend(FrontendKind::LoadBalancer, &[2, 3]),
            &["203.0.113.0/25"],
        ),
    );
    want.insert(
        FrontendKey::new(Ipv4Addr::new(198, 19, 0, 10).into(), 80, TCP),
        frontend(FrontendKind::ClusterIp, &[2, 3]),
    );
    let mut dp = FakeDatapath::default();
    let report = Programmed::new(16).sync(&want, &mut dp);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    // (key, external, external_local, source ranges, when empty)
    let cases = [
        (node_port, true, true, false, WhenEmpty::Drop),
        (
            node_port.with_scope(Scope::Internal),
            true,
            false,
            false,
            WhenEmpty::Reject,
        ),
        (lb_key(), true, false, true, WhenEmpty::Reject),
        (
            FrontendKey::new(Ipv4Addr::new(198, 19, 0, 10).into(), 80, TCP),
            false,
            false,
            false,
            WhenEmpty::Reject,
        ),
    ];
    for (key, external, external_local, source_ranges, when_empty) in cases {
        assert_eq!(
            settings(&dp, &key),
            ServiceSettings {
                affinity_timeout_s: None,
                when_empty,
                external,
                external_local,
                source_ranges,
                maglev: false,
            },
            "{key}"
        );
    }
    // Two entries of one frontend are two service ports with their own ids and backends.
    let (all, internal) = (
        dp.services[&node_port],
        dp.services[&node_port.with_scope(Scope::Internal)],
    );
    assert_ne!(all.svc_id, internal.svc_id);
    let view = dp.view();
    assert_eq!(view[&node_port], Ok((vec![ep(2)], None)));
    assert_eq!(
        view[&node_port.with_scope(Scope::Internal)],
        Ok((vec![ep(2), ep(3)], None))
    );
    assert_eq!(
        dp.ranges_of(dp.services[&lb_key()].svc_id),
        vec![net("203.0.113.0/25")]
    );
}

#[test]
fn node_ports_have_no_vip_and_external_addresses_do() {
    let node_port = FrontendKey::node_port(false, 30080, TCP);
    let mut want = local_pair(lb_key(), FrontendKind::LoadBalancer, &[2], &[2, 3]);
    want.insert(node_port, frontend(FrontendKind::NodePort, &[2]));
    let mut dp = FakeDatapath::default();
    let mut programmed = Programmed::new(16);
    programmed.sync(&want, &mut dp);
    assert_eq!(
        dp.vips.iter().copied().collect::<Vec<_>>(),
        [lb_ip()],
        "the load-balancer IP is a VIP (once for its two entries), 0.0.0.0 is not"
    );
    // One entry of the address goes, the other keeps it a VIP.
    want.remove(&lb_key().with_scope(Scope::Internal));
    programmed.sync(&want, &mut dp);
    assert!(dp.vips.contains(&lb_ip()));
    want.remove(&lb_key());
    programmed.sync(&want, &mut dp);
    assert!(dp.vips.is_empty());
    // A restart counts the same way.
    let (recovered, cleanup) = Programmed::recover(&mut dp.snapshot(), 16);
    assert!(cleanup.iter().all(|op| !matches!(op, MapOp::PutVip { .. })));
    assert!(recovered.vips.is_empty());
}

/// Position of the first op matching `f` in `ops`.
fn at(ops: &[MapOp], f: impl Fn(&MapOp) -> bool) -> usize {
    ops.iter()
        .position(f)
        .unwrap_or_else(|| panic!("no such op in {ops:#?}"))
}

fn is_put_range(range: &str) -> impl Fn(&MapOp) -> bool {
    let range = net(range);
    move |op| matches!(op, MapOp::PutSourceRange { range: r, .. } if *r == range)
}

fn is_delete_range(range: &str) -> impl Fn(&MapOp) -> bool {
    let range = net(range);
    move |op| matches!(op, MapOp::DeleteSourceRange { range: r, .. } if *r == range)
}

fn is_publish(source_ranges: bool) -> impl Fn(&MapOp) -> bool {
    move |op| matches!(op, MapOp::PutService { settings, .. } if settings.source_ranges == source_ranges)
}

/// Syncs `from`, then `to`, returning the ops of the second sync.
fn ops_between(from: &Desired, to: &Desired) -> (Vec<MapOp>, FakeDatapath) {
    let mut dp = FakeDatapath::default();
    let mut programmed = Programmed::new(16);
    let first = programmed.sync(from, &mut dp);
    assert!(first.problems.is_empty(), "{:?}", first.problems);
    let before = dp.log.len();
    let report = programmed.sync(to, &mut dp);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    (dp.log[before..].to_vec(), dp)
}

#[test]
fn source_ranges_are_in_place_before_the_value_that_needs_them_and_go_after() {
    let lb = |ranges: &[&str]| -> Desired {
        [(
            lb_key(),
            with_ranges(frontend(FrontendKind::LoadBalancer, &[2]), ranges),
        )]
        .into_iter()
        .collect()
    };
    let none = Desired::new();

    // A new restricted frontend: its ranges, then its value.
    let (ops, dp) = ops_between(&none, &lb(&["203.0.113.0/25", "198.51.100.7/32"]));
    let publish = at(&ops, is_publish(true));
    assert!(at(&ops, is_put_range("203.0.113.0/25")) < publish);
    assert!(at(&ops, is_put_range("198.51.100.7/32")) < publish);
    assert_eq!(dp.source_ranges.len(), 2);

    // Ranges changed: the new one before the value is rewritten, the old one after.
    let (ops, dp) = ops_between(
        &lb(&["203.0.113.0/25", "198.51.100.7/32"]),
        &lb(&["203.0.113.0/25", "10.0.0.0/8"]),
    );
    let publish = at(&ops, is_publish(true));
    assert!(at(&ops, is_put_range("10.0.0.0/8")) < publish);
    assert!(at(&ops, is_delete_range("198.51.100.7/32")) > publish);
    assert!(
        !ops.iter().any(is_put_range("203.0.113.0/25")),
        "a range that stays is not rewritten: {ops:#?}"
    );
    let id = dp.services[&lb_key()].svc_id;
    assert_eq!(
        dp.ranges_of(id),
        vec![net("10.0.0.0/8"), net("203.0.113.0/25")]
    );

    // Restriction lifted: the value without the flag first, then its ranges go.
    let (ops, dp) = ops_between(&lb(&["203.0.113.0/25"]), &lb(&[]));
    assert!(at(&ops, is_publish(false)) < at(&ops, is_delete_range("203.0.113.0/25")));
    assert!(dp.source_ranges.is_empty());

    // Frontend removed: unpublished first, then its ranges.
    let (ops, dp) = ops_between(&lb(&["203.0.113.0/25"]), &none);
    let unpublish = at(&ops, |op| matches!(op, MapOp::DeleteService { .. }));
    assert!(unpublish < at(&ops, is_delete_range("203.0.113.0/25")));
    assert!(dp.source_ranges.is_empty());

    // IPv6 ranges of an IPv4 frontend are not the datapath's business: no flag, no entry.
    let (ops, dp) = ops_between(&none, &lb(&["2001:db8::/32"]));
    assert!(ops.iter().any(is_publish(false)));
    assert!(dp.source_ranges.is_empty());

    // Nothing changed: nothing written.
    let (ops, _) = ops_between(&lb(&["203.0.113.0/25"]), &lb(&["203.0.113.0/25"]));
    assert!(ops.is_empty(), "{ops:#?}");
}

#[test]
fn a_change_that_fails_before_publishing_takes_its_ranges_back() {
    let restricted: Desired = [(
        lb_key(),
        with_ranges(
            frontend(FrontendKind::LoadBalancer, &[2]),
            &["203.0.113.0/25", "198.51.100.0/24"],
        ),
    )]
    .into_iter()
    .collect();

    // KP_SERVICES full: the ranges written for it are deleted again.
    let mut dp = FakeDatapath {
        max_services: Some(0),
        ..FakeDatapath::default()
    };
    let mut programmed = Programmed::new(16);
    let report = programmed.sync(&restricted, &mut dp);
    assert_eq!(
        report.problems.iter().map(|p| p.kind).collect::<Vec<_>>(),
        [ProblemKind::Datapath]
    );
    assert!(dp.services.is_empty());
    assert!(dp.source_ranges.is_empty(), "{:?}", dp.source_ranges);
    // Room made: the retry programs it whole.
    dp.max_services = None;
    let report = programmed.sync(&restricted, &mut dp);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(dp.source_ranges.len(), 2);

    // KP_SOURCE_RANGES full: nothing published, nothing half-written, reported with the map.
    let mut dp = FakeDatapath {
        max_source_ranges: Some(1),
        ..FakeDatapath::default()
    };
    let report = Programmed::new(16).sync(&restricted, &mut dp);
    assert_eq!(report.problems.len(), 1);
    assert!(
        report.problems[0].message.contains("KP_SOURCE_RANGES"),
        "{}",
        report.problems[0]
    );
    assert!(dp.services.is_empty());
    assert!(dp.source_ranges.is_empty());
}

#[test]
fn restart_recovers_scopes_flags_and_source_ranges() {
    let node_port = FrontendKey::node_port(false, 30080, TCP);
    let mut want = local_pair(node_port, FrontendKind::NodePort, &[2], &[2, 3]);
    want.extend(local_pair(
        lb_key(),
        FrontendKind::LoadBalancer,
        &[2],
        &[2, 3],
    ));
    for scope in [Scope::All, Scope::Internal] {
        let f = want.get_mut(&lb_key().with_scope(scope)).expect("lb");
        *f = with_ranges(f.clone(), &["203.0.113.0/25", "192.0.2.10/32"]);
    }
    let mut dp = FakeDatapath::default();
    Programmed::new(16).sync(&want, &mut dp);
    // A leftover of a service port id nothing uses any more.
    dp.apply(&MapOp::PutSourceRange {
        svc_id: 15,
        range: net("10.0.0.0/8"),
    })
    .expect("fake");

    let (mut recovered, cleanup) = Programmed::recover(&mut dp.snapshot(), 16);
    assert_eq!(
        cleanup,
        [MapOp::DeleteSourceRange {
            svc_id: 15,
            range: net("10.0.0.0/8")
        }]
    );
    for op in &cleanup {
        dp.apply(op).expect("fake");
    }
    let keys: Vec<FrontendKey> = recovered.frontends().keys().copied().collect();
    assert_eq!(keys, want.keys().copied().collect::<Vec<_>>());
    for (key, f) in recovered.frontends() {
        assert_eq!(f.settings, dp.services[key].settings, "{key}");
    }
    let before = dp.log.len();
    let report = recovered.sync(&want, &mut dp);
    assert_eq!(dp.log.len(), before, "nothing rewritten: {report:?}");

    // The next agent wants the ranges gone: the recovered ones are deleted after the value.
    let mut open = want.clone();
    for scope in [Scope::All, Scope::Internal] {
        open.get_mut(&lb_key().with_scope(scope))
            .expect("lb")
            .source_ranges
            .clear();
    }
    let before = dp.log.len();
    recovered.sync(&open, &mut dp);
    let ops = &dp.log[before..];
    assert!(at(ops, is_publish(false)) < at(ops, is_delete_range("203.0.113.0/25")));
    assert!(dp.source_ranges.is_empty());
}

#[test]
fn a_recovered_entry_of_an_unknown_scope_is_no_frontend() {
    let mut dp = FakeDatapath::default();
    Programmed::new(16).sync(
        &[(lb_key(), frontend(FrontendKind::LoadBalancer, &[2]))]
            .into_iter()
            .collect(),
        &mut dp,
    );
    let mut snapshot = dp.snapshot();
    // A scope this agent does not know (a newer layout would bump the version; a stray
    // entry must not be read as another scope).
    let mut stray = snapshot.services[0];
    stray.0.scope = 9;
    snapshot.services.push(stray);
    let (programmed, _) = Programmed::recover(&mut snapshot, 16);
    assert_eq!(
        programmed.frontends().keys().copied().collect::<Vec<_>>(),
        [lb_key()]
    );
}

#[test]
fn an_internal_entry_is_published_before_the_entry_that_sends_clients_to_it() {
    let node_port = FrontendKey::node_port(false, 30080, TCP);
    let cluster: Desired = [(node_port, frontend(FrontendKind::NodePort, &[2, 3]))]
        .into_iter()
        .collect();
    let local = local_pair(node_port, FrontendKind::NodePort, &[2], &[2, 3]);
    let (ops, _) = ops_between(&cluster, &local);
    let internal = at(
        &ops,
        |op| matches!(op, MapOp::PutService { key, .. } if key.scope == Scope::Internal),
    );
    let all = at(&ops, |op| {
        matches!(op, MapOp::PutService { key, settings, .. }
            if key.scope == Scope::All && settings.external_local)
    });
    assert!(internal < all, "{ops:#?}");
}
