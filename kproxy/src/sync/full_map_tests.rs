//! Every service map full in turn (and the service port ids used up): the frontend that does
//! not fit is reported naming its Service and the map, nothing is left half-written, what
//! was served before stays served exactly as it was, and once there is room the next sync
//! programs it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use super::{Programmed, fake::FakeDatapath};
use crate::{
    model::{
        Desired, Endpoint, Frontend, FrontendKey, FrontendKind, Protocol, ServicePortName,
        WhenEmpty,
    },
    problem::ProblemKind,
};

fn key(last: u8) -> FrontendKey {
    FrontendKey::new(Ipv4Addr::new(198, 19, 0, last).into(), 80, Protocol::Tcp)
}

fn frontend(name: &str, hosts: &[u8]) -> Frontend {
    let endpoints: Vec<Endpoint> = hosts
        .iter()
        .map(|h| Endpoint {
            addr: Ipv4Addr::new(198, 18, *h, 2).into(),
            port: 8080,
        })
        .collect();
    Frontend {
        service: ServicePortName::new("default", name, "http"),
        affinity_timeout_s: None,
        standby: Vec::new(),
        endpoints,
        when_empty: WhenEmpty::Reject,
        kind: FrontendKind::ClusterIp,
        external_local: false,
        source_ranges: Vec::new(),
        maglev: false,
    }
}

/// Frontends `(last octet of the VIP, name, endpoint hosts)`.
fn desired(entries: &[(u8, &str, &[u8])]) -> Desired {
    entries
        .iter()
        .map(|(last, name, hosts)| (key(*last), frontend(name, hosts)))
        .collect()
}

/// What packets to each programmed frontend resolve to: `(VIP last octet, endpoint hosts)`.
fn served(dp: &FakeDatapath) -> Vec<(u8, Vec<u8>)> {
    hosts_of(dp.view().into_iter().map(|(k, resolved)| {
        let (endpoints, _) = resolved.unwrap_or_else(|e| panic!("{k} half-written: {e}"));
        (k, endpoints)
    }))
}

/// `(VIP last octet, endpoint hosts)` of frontends.
fn hosts_of(frontends: impl Iterator<Item = (FrontendKey, Vec<Endpoint>)>) -> Vec<(u8, Vec<u8>)> {
    let octets = |a: std::net::IpAddr| match a {
        std::net::IpAddr::V4(a) => a.octets(),
        std::net::IpAddr::V6(_) => panic!("IPv4 only"),
    };
    frontends
        .map(|(k, endpoints)| {
            let hosts = endpoints.iter().map(|e| octets(e.addr)[2]).collect();
            (octets(k.addr)[3], hosts)
        })
        .collect()
}

struct Case {
    name: &'static str,
    /// Service port ids (the size of KP_SERVICES and its per-id arrays).
    ids: u32,
    /// The fake's map capacities, applied after `before` is programmed.
    max_services: Option<usize>,
    max_backends: Option<usize>,
    max_slots: Option<usize>,
    before: Desired,
    after: Desired,
    /// The frontend that does not fit, and what the problem says about the map.
    failing: &'static str,
    says: &'static str,
    /// What is served once `after` is synced (the failing frontend as it was, or absent).
    served: Vec<(u8, Vec<u8>)>,
}

#[test]
#[expect(clippy::too_many_lines, reason = "one table of cases")]
fn every_map_full_in_turn_fails_one_frontend_cleanly() {
    let cases = vec![
        Case {
            name: "service port ids used up: a new frontend is not programmed",
            ids: 2,
            max_services: None,
            max_backends: None,
            max_slots: None,
            before: desired(&[(1, "a", &[2]), (2, "b", &[3])]),
            after: desired(&[(1, "a", &[2]), (2, "b", &[3]), (3, "c", &[4])]),
            failing: "Service default/c:http",
            says: "no free service port id",
            served: vec![(1, vec![2]), (2, vec![3])],
        },
        Case {
            name: "KP_SERVICES full: a new frontend is not programmed",
            ids: 64,
            max_services: Some(2),
            max_backends: None,
            max_slots: None,
            before: desired(&[(1, "a", &[2]), (2, "b", &[3])]),
            after: desired(&[(1, "a", &[2]), (2, "b", &[3]), (3, "c", &[4])]),
            failing: "Service default/c:http",
            says: "KP_SERVICES is full (raise --max-services)",
            served: vec![(1, vec![2]), (2, vec![3])],
        },
        Case {
            name: "KP_BACKENDS full: a new frontend is not programmed",
            ids: 64,
            max_services: None,
            max_backends: Some(4),
            max_slots: None,
            before: desired(&[(1, "a", &[2, 3])]),
            after: desired(&[(1, "a", &[2, 3]), (2, "b", &[4, 5, 6])]),
            failing: "Service default/b:http",
            says: "KP_BACKENDS is full (raise --max-backends)",
            served: vec![(1, vec![2, 3])],
        },
        Case {
            name: "KP_BACKENDS full: an update keeps the backends it had",
            ids: 64,
            max_services: None,
            max_backends: Some(4),
            max_slots: None,
            before: desired(&[(1, "a", &[2, 3]), (2, "b", &[4])]),
            after: desired(&[(1, "a", &[2, 3]), (2, "b", &[4, 5, 6])]),
            failing: "Service default/b:http",
            says: "KP_BACKENDS is full",
            served: vec![(1, vec![2, 3]), (2, vec![4])],
        },
        Case {
            name: "KP_SLOTS full: a new frontend is not programmed",
            ids: 64,
            max_services: None,
            max_backends: None,
            max_slots: Some(7),
            before: desired(&[(1, "a", &[2, 3, 4, 5, 6])]),
            after: desired(&[(1, "a", &[2, 3, 4, 5, 6]), (2, "b", &[7, 8, 9, 10, 11])]),
            failing: "Service default/b:http",
            says: "KP_SLOTS is full (raise --max-backends)",
            served: vec![(1, vec![2, 3, 4, 5, 6])],
        },
        Case {
            name: "KP_SLOTS full: an update (into the other bank) keeps the set it had",
            ids: 64,
            max_services: None,
            max_backends: None,
            max_slots: Some(8),
            before: desired(&[(1, "a", &[2, 3, 4, 5, 6]), (2, "b", &[7])]),
            after: desired(&[(1, "a", &[2, 3, 4, 5, 6]), (2, "b", &[8, 9, 10, 11, 12])]),
            failing: "Service default/b:http",
            says: "KP_SLOTS is full",
            served: vec![(1, vec![2, 3, 4, 5, 6]), (2, vec![7])],
        },
    ];
    for case in cases {
        let name = case.name;
        let mut dp = FakeDatapath::default();
        let mut programmed = Programmed::new(case.ids);
        let first = programmed.sync(&case.before, &mut dp);
        assert!(
            first.problems.is_empty(),
            "case {name}: {:?}",
            first.problems
        );
        dp.max_services = case.max_services;
        dp.max_backends = case.max_backends;
        dp.max_slots = case.max_slots;

        let report = programmed.sync(&case.after, &mut dp);
        let [problem] = report.problems.as_slice() else {
            panic!("case {name}: one problem, got {:#?}", report.problems);
        };
        assert_eq!(
            problem.kind,
            ProblemKind::Datapath,
            "case {name}: {problem}"
        );
        assert_eq!(
            problem.object.as_deref(),
            Some(case.failing),
            "case {name}: {problem}"
        );
        assert!(
            problem.message.contains(case.says),
            "case {name}: {problem}"
        );
        assert_eq!(
            served(&dp),
            case.served,
            "case {name}: served after the failure"
        );
        // What the slots and the service values that hold their backends name.
        let in_values = dp.services.values().flat_map(|svc| {
            (0..u32::from(svc.count)).filter_map(|index| svc.slot(&BTreeMap::new(), index))
        });
        let referenced: BTreeSet<u32> = dp.slots.values().copied().chain(in_values).collect();
        let present: BTreeSet<u32> = dp.backends.keys().copied().collect();
        assert_eq!(
            referenced, present,
            "case {name}: no orphaned backends or slots"
        );

        // Still full: the next sync tries again, and fails the same way, touching nothing.
        let again = programmed.sync_keys(&case.after, BTreeSet::new(), &mut dp);
        assert_eq!(again.problems.len(), 1, "case {name}: retried");
        assert_eq!(served(&dp), case.served, "case {name}");

        // Room again: the next sync programs it, with no change in the cluster.
        dp.max_services = None;
        dp.max_backends = None;
        dp.max_slots = None;
        let healed = if case.ids < 64 {
            // Ids are the agent's own pool: a restart with a larger --max-services.
            let (mut restarted, cleanup) = Programmed::recover(&mut dp.snapshot(), 64);
            for op in &cleanup {
                super::Datapath::apply(&mut dp, op).expect("fake deletes never fail");
            }
            restarted.sync(&case.after, &mut dp)
        } else {
            programmed.sync_keys(&case.after, BTreeSet::new(), &mut dp)
        };
        assert!(
            healed.problems.is_empty(),
            "case {name}: {:?}",
            healed.problems
        );
        let want = hosts_of(case.after.iter().map(|(k, f)| (*k, f.endpoints.clone())));
        assert_eq!(served(&dp), want, "case {name}: healed");
    }
}

/// Removing a frontend makes room for one that did not fit, within the sync that removes it
/// (map space) or the next one (service port ids are not reused within a sync).
#[test]
fn room_made_by_a_removal_is_used() {
    let mut dp = FakeDatapath {
        max_backends: Some(2),
        ..FakeDatapath::default()
    };
    let mut programmed = Programmed::new(2);
    let report = programmed.sync(&desired(&[(1, "a", &[2, 3]), (2, "b", &[4])]), &mut dp);
    assert_eq!(
        report.problems.len(),
        1,
        "b does not fit: {:?}",
        report.problems
    );
    let report = programmed.sync(&desired(&[(2, "b", &[4])]), &mut dp);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(served(&dp), [(2, vec![4])]);
}

/// A frontend with 10,000 endpoints (one full-size slice ten times over, or a slice beyond
/// the API's limit from manifests) is one change of 20,001 map writes, all of them made.
/// (Executing it used to cost 10,000² steps; how long syncs take is the benchmark's to
/// measure, not a unit test's.)
#[test]
fn a_frontend_with_10000_endpoints_is_written_whole() {
    let hosts: Vec<Endpoint> = (0..10_000u32)
        .map(|i| Endpoint {
            addr: Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 16, 0)) + i).into(),
            port: 8080,
        })
        .collect();
    let mut big = frontend("big", &[]);
    big.endpoints = hosts;
    let want: Desired = [(key(1), big), (key(2), frontend("small", &[2]))]
        .into_iter()
        .collect();
    let mut dp = FakeDatapath::default();
    let mut programmed = Programmed::new(8);
    let report = programmed.sync(&want, &mut dp);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    // Backends of both, the big one's slots (the small one's service value holds its
    // backend), two publishes, two VIPs, one id reservation (not counted).
    assert_eq!(report.ops, 2 * 10_000 + 1 + 2 + 2);
    assert_eq!(
        dp.view()[&key(1)].as_ref().map(|(eps, _)| eps.len()),
        Ok(10_000)
    );
}
