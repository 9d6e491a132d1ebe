//! A datapath built without the IPv6 maps (an eBPF object whose IPv6 programs are not in
//! yet): dual-stack Services are programmed in IPv4 only, their IPv6 frontends counted as
//! not served, and a restart with an object that has the maps programs them as usual.

use std::collections::BTreeSet;

use super::{
    Datapath, MapOp, Programmed,
    dual_stack_tests::{TCP, V4, V6, addr, ep, key, web},
    fake::FakeDatapath,
};
use crate::model::{Endpoint, FrontendKey};

/// The frontends of `web` in each family.
fn frontends(ipv6: bool) -> Vec<FrontendKey> {
    if ipv6 {
        vec![
            key("2001:db8:19::10", 80),
            key("2001:db8:2::10", 80),
            FrontendKey::node_port(true, 30080, TCP),
        ]
    } else {
        vec![
            key("198.19.0.10", 80),
            key("192.0.2.10", 80),
            FrontendKey::node_port(false, 30080, TCP),
        ]
    }
}

fn endpoints(addrs: &[&str]) -> Vec<Endpoint> {
    addrs.iter().map(|a| ep(a)).collect()
}

const RANGES: [&str; 2] = ["203.0.113.0/24", "2001:db8:77::/48"];

#[test]
fn a_dual_stack_service_is_programmed_in_the_families_the_datapath_serves() {
    let want = web(&RANGES, &V4, &V6);
    // (datapath, its programmed families (IPv4, IPv6), IPv6 frontends not served)
    let cases = [
        ("with IPv6 maps", FakeDatapath::default(), (3, 3), 0),
        ("without IPv6 maps", FakeDatapath::without_ipv6(), (3, 0), 3),
    ];
    for (datapath, mut dp, (v4, v6), not_served) in cases {
        let mut programmed = Programmed::new(64);
        let report = programmed.sync(&want, &mut dp);
        assert!(
            report.problems.is_empty(),
            "{datapath}: {:?}",
            report.problems
        );
        assert_eq!(report.added, v4 + v6, "{datapath}");
        assert_eq!(report.ipv6_not_served, not_served, "{datapath}");
        let counts = programmed.counts();
        assert_eq!(
            (counts.frontends.v4, counts.frontends.v6),
            (v4, v6),
            "{datapath}"
        );

        // What packets find: each served frontend with its family's endpoints.
        let view = dp.view();
        let mut served: Vec<(FrontendKey, Vec<Endpoint>)> = frontends(false)
            .into_iter()
            .map(|k| (k, endpoints(&V4)))
            .collect();
        if dp.serves_ipv6() {
            served.extend(frontends(true).into_iter().map(|k| (k, endpoints(&V6))));
        }
        assert_eq!(view.len(), served.len(), "{datapath}: {view:#?}");
        for (frontend, eps) in served {
            assert_eq!(view[&frontend], Ok((eps, None)), "{datapath}: {frontend}");
        }
        let snapshot = dp.snapshot();
        let v6_entries = (
            snapshot.services6.len(),
            snapshot.backends6.len(),
            snapshot.vips6.len(),
            snapshot.source_ranges6.len(),
        );
        let want_v6_entries = if dp.serves_ipv6() {
            (3, 6, 2, 1)
        } else {
            (0, 0, 0, 0)
        };
        assert_eq!(v6_entries, want_v6_entries, "{datapath}: the IPv6 maps");
        assert_eq!(
            dp.log.iter().any(MapOp::is_ipv6),
            dp.serves_ipv6(),
            "{datapath}: IPv6 maps written only when they exist"
        );

        // Nothing changed: nothing written, the IPv6 frontends still counted, no drift
        // (absent IPv6 maps read as empty, as the record says).
        let written = dp.log.len();
        let again = programmed.sync(&want, &mut dp);
        assert_eq!(dp.log.len(), written, "{datapath}: {again:?}");
        assert_eq!(again.ipv6_not_served, not_served, "{datapath}");
        assert_eq!(
            programmed.check(&mut dp.snapshot(), 64).drift,
            Vec::new(),
            "{datapath}"
        );
    }
}

#[test]
fn a_restart_with_the_ipv6_maps_programs_the_ipv6_frontends() {
    let want = web(&RANGES, &V4, &V6);
    let mut dp = FakeDatapath::without_ipv6();
    Programmed::new(64).sync(&want, &mut dp);
    // The next agent's object has the IPv6 maps (new, so empty); the IPv4 ones are kept.
    dp.without_ipv6_maps = false;
    let (mut recovered, cleanup) = Programmed::recover(&mut dp.snapshot(), 64);
    assert_eq!(cleanup, Vec::new());
    let report = recovered.sync(&want, &mut dp);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(
        (report.added, report.updated),
        (3, 0),
        "only the IPv6 frontends"
    );
    assert_eq!(report.ipv6_not_served, 0);
    let view = dp.view();
    for frontend in frontends(true) {
        assert_eq!(view[&frontend], Ok((endpoints(&V6), None)), "{frontend}");
    }
    let vips: BTreeSet<_> = dp.vips.iter().copied().collect();
    assert!(vips.contains(&addr("2001:db8:19::10")), "{vips:?}");
    assert_eq!(recovered.check(&mut dp.snapshot(), 64).drift, Vec::new());
    assert!(recovered.holds(&dp.snapshot()).expect("a snapshot walks"));
}

#[test]
fn without_the_ipv6_maps_writes_to_them_fail_and_deletes_find_nothing() {
    let mut dp = FakeDatapath::without_ipv6();
    let v6 = addr("2001:db8:19::10");
    // (op, accepted)
    let cases = [
        (MapOp::PutVip { addr: v6 }, false),
        (MapOp::DeleteVip { addr: v6 }, true),
        (
            MapOp::PutSourceRange {
                svc_id: 1,
                range: "2001:db8:77::/48".parse().expect("range"),
            },
            false,
        ),
        (
            MapOp::DeleteService {
                key: key("2001:db8:19::10", 80),
            },
            true,
        ),
        (
            MapOp::PutVip {
                addr: addr("198.19.0.10"),
            },
            true,
        ),
    ];
    for (op, accepted) in cases {
        assert_eq!(dp.apply(&op).is_ok(), accepted, "{op:?}");
    }
    assert!(dp.vips.iter().all(std::net::IpAddr::is_ipv4));
}
