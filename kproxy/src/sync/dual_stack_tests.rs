//! Dual-stack Services through the model, the planner and the in-memory datapath: each
//! family's frontends go into that family's maps with that family's endpoints, VIPs and
//! source ranges; service port ids and backend ids are shared; a restart and the drift check
//! read both families back.

use std::net::IpAddr;

use ipnet::IpNet;
use kproxy_common::addr::In6Addr;

use super::{Datapath, MapOp, Programmed, fake::FakeDatapath};
use crate::{
    model::{
        Desired, Endpoint, FrontendKey, Protocol, Scope, WhenEmpty, desired_state,
        fixtures::{service, slice},
    },
    wire,
};

pub(super) const TCP: Protocol = Protocol::Tcp;

pub(super) fn addr(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn net(s: &str) -> IpNet {
    s.parse().expect("test range")
}

pub(super) fn key(vip: &str, port: u16) -> FrontendKey {
    FrontendKey::new(addr(vip), port, TCP)
}

pub(super) fn ep(address: &str) -> Endpoint {
    Endpoint {
        addr: addr(address),
        port: 8080,
    }
}

/// web: a dual-stack LoadBalancer Service with a NodePort, an IPv4 and an IPv6 ingress IP,
/// loadBalancerSourceRanges `ranges`, and endpoints `v4` and `v6` (no slice for a family
/// without any).
pub(super) fn web(ranges: &[&str], v4: &[&str], v6: &[&str]) -> Desired {
    let svc = service("default", "web", "198.19.0.10")
        .cluster_ips(&["198.19.0.10", "2001:db8:19::10"])
        .type_("LoadBalancer")
        .port("http", 80, "TCP")
        .node_port(30080)
        .load_balancer_ingress(&["192.0.2.10", "2001:db8:2::10"])
        .load_balancer_source_ranges(ranges)
        .build();
    let mut slices = Vec::new();
    for (name, family, endpoints) in [("web-v4", "IPv4", v4), ("web-v6", "IPv6", v6)] {
        if endpoints.is_empty() {
            continue;
        }
        let mut s = slice("default", name, "web")
            .address_type(family)
            .port("http", 8080, "TCP");
        for e in endpoints {
            s = s.endpoint(e, Some(true));
        }
        slices.push(s.build());
    }
    let (desired, problems) = desired_state(&[svc], &slices);
    assert!(problems.is_empty(), "{problems:?}");
    desired
}

pub(super) const V4: [&str; 2] = ["198.18.2.2", "198.18.3.2"];
pub(super) const V6: [&str; 2] = ["2001:db8:18::2", "2001:db8:18::3"];

fn synced(desired: &Desired) -> (Programmed, FakeDatapath) {
    let mut dp = FakeDatapath::default();
    let mut programmed = Programmed::new(64);
    let report = programmed.sync(desired, &mut dp);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    (programmed, dp)
}

#[test]
fn each_family_s_frontends_get_that_family_s_endpoints_in_that_family_s_maps() {
    let want = web(&[], &V4, &V6);
    let (programmed, dp) = synced(&want);
    // (frontend, its endpoints)
    let v4_eps: Vec<Endpoint> = V4.iter().map(|a| ep(a)).collect();
    let v6_eps: Vec<Endpoint> = V6.iter().map(|a| ep(a)).collect();
    let cases = [
        (key("198.19.0.10", 80), &v4_eps),
        (key("192.0.2.10", 80), &v4_eps),
        (FrontendKey::node_port(false, 30080, TCP), &v4_eps),
        (key("2001:db8:19::10", 80), &v6_eps),
        (key("2001:db8:2::10", 80), &v6_eps),
        (FrontendKey::node_port(true, 30080, TCP), &v6_eps),
    ];
    let view = dp.view();
    assert_eq!(view.len(), cases.len(), "{view:#?}");
    for (frontend, endpoints) in cases {
        assert_eq!(
            view[&frontend],
            Ok((endpoints.clone(), None)),
            "{frontend}: resolved through its family's maps"
        );
    }
    // The maps as the kernel holds them: every entry in its family's map.
    let snapshot = dp.snapshot();
    let keys = |entries: Vec<Option<FrontendKey>>| -> Vec<bool> {
        entries
            .into_iter()
            .map(|k| k.expect("readable").addr.is_ipv6())
            .collect()
    };
    assert_eq!(
        keys(
            snapshot
                .services
                .iter()
                .map(|(k, _)| wire::frontend_key(k))
                .collect()
        ),
        [false; 3]
    );
    assert_eq!(
        keys(
            snapshot
                .services6
                .iter()
                .map(|(k, _)| wire::frontend_key(k))
                .collect()
        ),
        [true; 3]
    );
    assert_eq!((snapshot.backends.len(), snapshot.backends6.len()), (6, 6));
    assert!(
        snapshot
            .backends6
            .iter()
            .all(|(_, b)| wire::endpoint(b).addr.is_ipv6())
    );
    // Ids are shared: no service port id or backend id is used twice across the families.
    let mut svc_ids: Vec<u32> = programmed.frontends().values().map(|f| f.svc_id).collect();
    svc_ids.sort_unstable();
    svc_ids.dedup();
    assert_eq!(svc_ids.len(), 6);
    let mut backend_ids: Vec<u32> = snapshot
        .backends
        .iter()
        .map(|(id, _)| *id)
        .chain(snapshot.backends6.iter().map(|(id, _)| *id))
        .collect();
    backend_ids.sort_unstable();
    backend_ids.dedup();
    assert_eq!(backend_ids.len(), 12);
    let counts = programmed.counts();
    assert_eq!((counts.frontends.v4, counts.frontends.v6), (3, 3));
    assert_eq!((counts.backends.v4, counts.backends.v6), (6, 6));
}

#[test]
fn a_family_without_endpoints_rejects_while_the_other_serves() {
    // Endpoints only in IPv4: the IPv6 frontends reject new connections, as kube-proxy's
    // IPv6 proxier does for a Service without IPv6 endpoints.
    let (_, dp) = synced(&web(&[], &V4, &[]));
    for (frontend, count) in [
        (key("198.19.0.10", 80), 2),
        (key("2001:db8:19::10", 80), 0),
        (FrontendKey::node_port(false, 30080, TCP), 2),
        (FrontendKey::node_port(true, 30080, TCP), 0),
    ] {
        let svc = dp.services[&frontend];
        assert_eq!(svc.count, count, "{frontend}");
        assert_eq!(svc.settings.when_empty, WhenEmpty::Reject, "{frontend}");
    }
    assert!(dp.backends.values().all(|e| e.addr.is_ipv4()));
}

#[test]
fn vips_are_counted_per_address_in_each_family() {
    let (mut programmed, mut dp) = synced(&web(&[], &V4, &V6));
    let vips = |dp: &FakeDatapath| -> Vec<IpAddr> { dp.vips.iter().copied().collect() };
    assert_eq!(
        vips(&dp),
        [
            addr("192.0.2.10"),
            addr("198.19.0.10"),
            addr("2001:db8:2::10"),
            addr("2001:db8:19::10"),
        ],
        "the cluster and ingress IPs of both families; NodePorts have none"
    );
    let snapshot = dp.snapshot();
    assert_eq!((snapshot.vips.len(), snapshot.vips6.len()), (2, 2));
    // The IPv6 cluster IP loses its only frontend: only its VIP goes.
    let mut want = web(&[], &V4, &V6);
    want.remove(&key("2001:db8:19::10", 80));
    programmed.sync(&want, &mut dp);
    assert_eq!(
        vips(&dp),
        [
            addr("192.0.2.10"),
            addr("198.19.0.10"),
            addr("2001:db8:2::10"),
        ]
    );
    assert!(dp.log.contains(&MapOp::DeleteVip {
        addr: addr("2001:db8:19::10")
    }));
}

#[test]
fn source_ranges_restrict_each_family_by_its_own_ranges() {
    let lb4 = key("192.0.2.10", 80);
    let lb6 = key("2001:db8:2::10", 80);
    // (loadBalancerSourceRanges, IPv4 frontend's ranges, IPv6 frontend's ranges)
    let cases: [(&[&str], &[&str], &[&str]); 4] = [
        (&[], &[], &[]),
        (
            &["203.0.113.0/24", "2001:db8:77::/48"],
            &["203.0.113.0/24"],
            &["2001:db8:77::/48"],
        ),
        (&["203.0.113.0/24"], &["203.0.113.0/24"], &[]),
        (&["2001:db8:77::/48"], &[], &["2001:db8:77::/48"]),
    ];
    for (ranges, want4, want6) in cases {
        let (_, dp) = synced(&web(ranges, &V4, &V6));
        for (frontend, want) in [(lb4, want4), (lb6, want6)] {
            let svc = dp.services[&frontend];
            let want: Vec<IpNet> = want.iter().map(|r| net(r)).collect();
            assert_eq!(dp.ranges_of(svc.svc_id), want, "{ranges:?}: {frontend}");
            assert_eq!(
                svc.settings.source_ranges,
                !want.is_empty(),
                "{ranges:?}: {frontend} is restricted only by ranges of its family"
            );
        }
        let snapshot = dp.snapshot();
        assert_eq!(
            (snapshot.source_ranges.len(), snapshot.source_ranges6.len()),
            (want4.len(), want6.len()),
            "{ranges:?}: each range in its family's map"
        );
    }
}

#[test]
fn a_restart_recovers_both_families_and_writes_nothing_new() {
    let want = web(&["203.0.113.0/24", "2001:db8:77::/48"], &V4, &V6);
    let (programmed, mut dp) = synced(&want);
    let (mut recovered, cleanup) = Programmed::recover(&mut dp.snapshot(), 64);
    assert_eq!(cleanup, Vec::new());
    assert_eq!(
        recovered.frontends().keys().collect::<Vec<_>>(),
        programmed.frontends().keys().collect::<Vec<_>>()
    );
    for (key, f) in recovered.frontends() {
        let meant = &programmed.frontends()[key];
        assert_eq!(
            (&f.backends, &f.source_ranges, f.svc_id, f.needs_rewrite),
            (&meant.backends, &meant.source_ranges, meant.svc_id, false),
            "{key}"
        );
    }
    assert_eq!(recovered.vips, programmed.vips);
    let before = dp.log.len();
    let report = recovered.sync(&want, &mut dp);
    assert_eq!(dp.log.len(), before, "nothing rewritten: {report:?}");
}

#[test]
fn recovery_cleans_each_family_s_leftovers_through_that_family_s_maps() {
    let want = web(&[], &V4, &V6);
    let (_, mut dp) = synced(&want);
    // Left by a crash: an unlisted IPv6 backend, an IPv6 VIP and source range nobody uses,
    // and one id in both families' maps (written behind the agent's back).
    dp.backends.insert(900, ep("2001:db8:18::9"));
    dp.backend_roles.insert(900, (42, false));
    dp.vips.insert(addr("2001:db8:99::1"));
    dp.source_ranges.insert((50, net("2001:db8:66::/48")));
    let v6_id = dp.snapshot().backends6[0].0;
    let mut snapshot = dp.snapshot();
    snapshot.backends.push((
        v6_id,
        wire::backend::<u32>(&ep("198.18.9.9"), 1, false).expect("IPv4"),
    ));
    let (_, cleanup) = Programmed::recover(&mut snapshot, 64);
    for op in [
        MapOp::DeleteBackend {
            id: 900,
            endpoint: ep("2001:db8:18::9"),
        },
        MapOp::DeleteVip {
            addr: addr("2001:db8:99::1"),
        },
        MapOp::DeleteSourceRange {
            svc_id: 50,
            range: net("2001:db8:66::/48"),
        },
    ] {
        assert!(cleanup.contains(&op), "{op:?} in {cleanup:#?}");
    }
    // The IPv4 entry of the id found in both maps is read as its backend; its IPv6 frontend
    // is then inconsistent (a backend of the other family) and rewritten by the next sync.
    let (recovered, _) = Programmed::recover(&mut snapshot, 64);
    assert!(
        recovered
            .frontends()
            .values()
            .any(|f| f.needs_rewrite && f.backend_ids().any(|id| id == v6_id))
    );
    assert!(cleanup.iter().any(|op| matches!(
        op,
        MapOp::DeleteBackend { id, endpoint } if *id == v6_id && endpoint.addr.is_ipv6()
    )));

    let (mut recovered, cleanup) = Programmed::recover(&mut dp.snapshot(), 64);
    for op in &cleanup {
        dp.apply(op).expect("the fake never fails deletes");
    }
    assert!(!dp.backends.contains_key(&900));
    assert!(!dp.vips.contains(&addr("2001:db8:99::1")));
    recovered.sync(&want, &mut dp);
    assert_eq!(recovered.check(&mut dp.snapshot(), 64).drift, Vec::new());
    assert!(recovered.holds(&dp.snapshot()).expect("a snapshot walks"));
}

#[test]
fn a_delete_through_the_other_family_s_map_finds_nothing() {
    let mut dp = FakeDatapath::default();
    dp.apply(&MapOp::ReserveBackendIds { up_to: 10 })
        .expect("fake");
    dp.apply(&MapOp::PutBackend {
        id: 1,
        endpoint: ep("2001:db8:18::2"),
        svc_id: 0,
        active: true,
    })
    .expect("fake");
    dp.apply(&MapOp::DeleteBackend {
        id: 1,
        endpoint: ep("198.18.2.2"),
    })
    .expect("fake");
    assert!(dp.backends.contains_key(&1), "KP_BACKENDS had no id 1");
    dp.apply(&MapOp::DeleteBackend {
        id: 1,
        endpoint: ep("2001:db8:18::2"),
    })
    .expect("fake");
    assert!(dp.backends.is_empty());
}

#[test]
fn the_drift_check_finds_and_repairs_an_ipv6_frontend() {
    let want = web(&[], &V4, &V6);
    let (mut programmed, mut dp) = synced(&want);
    let v6 = key("2001:db8:19::10", 80);
    let svc = dp.services[&v6];
    let id = svc.slot(&dp.slots, 0).expect("a backend");
    dp.backends.insert(id, ep("2001:db8:18::9"));
    let check = programmed.check(&mut dp.snapshot(), 64);
    let found: Vec<String> = check.drift.iter().map(ToString::to_string).collect();
    assert!(
        found
            .iter()
            .any(|d| d.starts_with("[2001:db8:19::10]:80/TCP: backends: programmed")),
        "{found:#?}"
    );
    for op in programmed.repair(check) {
        dp.apply(&op).expect("the fake never fails");
    }
    programmed.sync(&want, &mut dp);
    assert_eq!(programmed.check(&mut dp.snapshot(), 64).drift, Vec::new());
    assert!(programmed.holds(&dp.snapshot()).expect("a snapshot walks"));
    assert_eq!(
        dp.view()[&v6],
        Ok((V6.iter().map(|a| ep(a)).collect(), None))
    );
    // Scopes stay per family: an IPv6 internal entry is its own frontend.
    assert!(!dp.services.contains_key(&v6.with_scope(Scope::Internal)));
    assert_eq!(
        wire::service_key::<In6Addr>(&v6).map(|k| k.scope),
        Some(kproxy_common::lb::SCOPE_ALL)
    );
}
