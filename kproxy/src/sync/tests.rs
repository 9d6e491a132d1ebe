//! Sync tests against the in-memory datapath: only differences are written, backend sets
//! switch atomically, failures roll back, restarts recover.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr},
};

use kproxy_common::lb::INLINE_SLOTS;

use super::{EntryCounts, MapOp, Programmed, fake::FakeDatapath, fake::View};
use crate::{
    model::{
        Desired, Endpoint, Frontend, FrontendKey, FrontendKind, Protocol, ServicePortName,
        WhenEmpty,
    },
    problem::ProblemKind,
};

pub(super) fn key(last: u8, port: u16) -> FrontendKey {
    FrontendKey::new(Ipv4Addr::new(198, 19, 0, last).into(), port, Protocol::Tcp)
}

pub(super) fn ep(host: u8) -> Endpoint {
    Endpoint {
        addr: Ipv4Addr::new(198, 18, host, 2).into(),
        port: 8080,
    }
}

pub(super) fn frontend(name: &str, endpoints: &[u8], affinity: Option<u32>) -> Frontend {
    Frontend {
        service: ServicePortName::new("default", name, "http"),
        affinity_timeout_s: affinity,
        endpoints: endpoints.iter().map(|h| ep(*h)).collect(),
        standby: Vec::new(),
        when_empty: WhenEmpty::Reject,
        kind: FrontendKind::ClusterIp,
        external_local: false,
        source_ranges: Vec::new(),
        maglev: false,
    }
}

/// `frontend` whose `used` endpoints take new connections and the `listed_only` ones are
/// listed too (not ready, terminating).
fn frontend_with(name: &str, used: &[u8], listed_only: &[u8]) -> Frontend {
    let mut f = frontend(name, used, None);
    f.standby = listed_only.iter().map(|h| ep(*h)).collect();
    f.standby.sort();
    f
}

pub(super) fn desired(entries: &[(FrontendKey, Frontend)]) -> Desired {
    entries.iter().cloned().collect()
}

/// What `desired` looks like to packets, for comparison with `FakeDatapath::view`.
pub(super) fn expected_view(desired: &Desired) -> View {
    desired
        .iter()
        .map(|(k, f)| (*k, Ok((f.endpoints.clone(), f.affinity_timeout_s))))
        .collect()
}

pub(super) fn kinds(ops: &[MapOp]) -> Vec<&'static str> {
    ops.iter()
        .map(|op| match op {
            MapOp::PutBackend { .. } => "PutBackend",
            MapOp::SetBackendActive { active: true, .. } => "Activate",
            MapOp::SetBackendActive { active: false, .. } => "Deactivate",
            MapOp::DeleteBackend { .. } => "DeleteBackend",
            MapOp::PutVip { .. } => "PutVip",
            MapOp::DeleteVip { .. } => "DeleteVip",
            MapOp::ReserveBackendIds { .. } => "Reserve",
            MapOp::PutSlot { .. } => "PutSlot",
            MapOp::DeleteSlot { .. } => "DeleteSlot",
            MapOp::PutMaglevTable { .. } => "PutMaglev",
            MapOp::DeleteMaglevTable { .. } => "DeleteMaglev",
            MapOp::ResetServiceCounters { .. } => "Reset",
            MapOp::PutService { .. } => "PutService",
            MapOp::DeleteService { .. } => "DeleteService",
            MapOp::PutSourceRange { .. } => "PutSourceRange",
            MapOp::DeleteSourceRange { .. } => "DeleteSourceRange",
        })
        .collect()
}

/// The counts `programmed` kept as it changed are those of a count over all it holds.
fn assert_counted(programmed: &Programmed) {
    assert_eq!(
        programmed.counts(),
        EntryCounts::of(programmed.frontends()),
        "the counts kept by each change"
    );
}

/// Syncs `from` then `to`, and checks that after every single op of the second sync each
/// frontend resolves completely to its old or its new backend set.
fn transition(from: &Desired, to: &Desired) -> (Vec<MapOp>, FakeDatapath) {
    let mut dp = FakeDatapath::recording();
    let mut programmed = Programmed::new(64);
    let first = programmed.sync(from, &mut dp);
    assert!(first.problems.is_empty(), "{:?}", first.problems);
    assert_eq!(dp.view(), expected_view(from));
    assert_counted(&programmed);
    let before = dp.log.len();
    dp.views = Some(Vec::new());
    let report = programmed.sync(to, &mut dp);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let (old_view, new_view) = (expected_view(from), expected_view(to));
    for (step, view) in dp.views.as_ref().expect("recording").iter().enumerate() {
        for (k, seen) in view {
            let ok = old_view.get(k) == Some(seen) || new_view.get(k) == Some(seen);
            assert!(
                ok,
                "after op {step} {k} resolves to {seen:?}: neither old nor new set"
            );
        }
    }
    assert_eq!(dp.view(), new_view);
    assert_counted(&programmed);
    assert!(
        programmed.holds(&dp.snapshot()).expect("a snapshot walks"),
        "the drift check's walk finds the maps as recorded"
    );
    let ops = dp.log[before..].to_vec();
    (ops, dp)
}

#[test]
fn table_of_transitions_writes_only_differences_and_switches_atomically() {
    for (name, from, to, want) in transition_cases() {
        let (ops, _) = transition(&from, &to);
        assert_eq!(kinds(&ops), want, "case: {name}");
    }
}

#[test]
fn role_changes_switch_backends_on_before_the_flip_and_off_after_it() {
    let web = key(10, 80);
    let cases: Vec<(&str, Desired, Desired, Vec<&str>)> = vec![
        (
            "an endpoint stops being ready: switched off after the flip, kept listed",
            desired(&[(web, frontend("web", &[2, 3], None))]),
            desired(&[(web, frontend_with("web", &[2], &[3]))]),
            vec!["PutService", "Deactivate"],
        ),
        (
            "a listed endpoint becomes ready: switched on before the flip",
            desired(&[(web, frontend_with("web", &[2], &[3]))]),
            desired(&[(web, frontend("web", &[2, 3], None))]),
            vec!["Activate", "PutService"],
        ),
        (
            "a listed-only endpoint leaves its slice: deleted, nothing else changes but the bank",
            desired(&[(web, frontend_with("web", &[2], &[3]))]),
            desired(&[(web, frontend("web", &[2], None))]),
            vec!["PutService", "DeleteBackend"],
        ),
        (
            "a new endpoint appears not ready: created listed-only",
            desired(&[(web, frontend("web", &[2], None))]),
            desired(&[(web, frontend_with("web", &[2], &[4]))]),
            vec!["PutBackend", "PutService"],
        ),
    ];
    for (name, from, to, want) in cases {
        let (ops, _) = transition(&from, &to);
        assert_eq!(kinds(&ops), want, "case: {name}");
    }
}

/// (what, before, after, the map operations between them)
#[expect(clippy::too_many_lines, reason = "one table of cases")]
fn transition_cases() -> Vec<(&'static str, Desired, Desired, Vec<&'static str>)> {
    let web = key(10, 80);
    let api = key(11, 80);
    // More endpoints than a service value holds itself: their slots are in `KP_SLOTS`.
    let many = [2, 3, 4, 5, 6];
    let fewer = [2, 3, 4, 5, 7];
    vec![
        (
            "new frontend: ids reserved, backends, counters, then publish with its slots",
            desired(&[]),
            desired(&[(web, frontend("web", &[2, 3, 4], None))]),
            vec![
                "Reserve",
                "PutBackend",
                "PutBackend",
                "PutBackend",
                "PutService",
                "PutVip",
            ],
        ),
        (
            "new frontend with as many endpoints as the value holds: no slots either",
            desired(&[]),
            desired(&[(web, frontend("web", &many[..INLINE_SLOTS], None))]),
            [
                &["Reserve"][..],
                &["PutBackend"; INLINE_SLOTS],
                &["PutService", "PutVip"],
            ]
            .concat(),
        ),
        (
            "new frontend with many endpoints: its slots in the map before it is published",
            desired(&[]),
            desired(&[(web, frontend("web", &many, None))]),
            [
                &["Reserve"][..],
                &["PutBackend"; 5],
                &["PutSlot"; 5],
                &["PutService", "PutVip"],
            ]
            .concat(),
        ),
        (
            "no change: nothing written",
            desired(&[(web, frontend("web", &[2, 3, 4], None))]),
            desired(&[(web, frontend("web", &[2, 3, 4], None))]),
            vec![],
        ),
        (
            "renamed service, same frontend: nothing written",
            desired(&[(web, frontend("web", &[2, 3], None))]),
            desired(&[(web, frontend("www", &[2, 3], None))]),
            vec![],
        ),
        (
            "one endpoint removed: flip, then delete it",
            desired(&[(web, frontend("web", &[2, 3, 4], None))]),
            desired(&[(web, frontend("web", &[2, 3], None))]),
            vec!["PutService", "DeleteBackend"],
        ),
        (
            "one of many endpoints replaced: new backend, other bank, flip, old one last",
            desired(&[(web, frontend("web", &many, None))]),
            desired(&[(web, frontend("web", &fewer, None))]),
            [
                &["PutBackend"][..],
                &["PutSlot"; 5],
                &["PutService", "DeleteBackend"],
            ]
            .concat(),
        ),
        (
            "many endpoints down to few: the value holds them, the bank it flips to is emptied",
            desired(&[(web, frontend("web", &many, None))]),
            desired(&[(web, frontend("web", &[2, 3], None))]),
            [&["PutService"][..], &["DeleteBackend"; 3]].concat(),
        ),
        (
            "few endpoints up to many: slots written in the other bank before the flip",
            desired(&[(web, frontend("web", &[2, 3], None))]),
            desired(&[(web, frontend("web", &many, None))]),
            [&["PutBackend"; 3][..], &["PutSlot"; 5], &["PutService"]].concat(),
        ),
        (
            "endpoints replaced: new backend first, flip, old one last",
            desired(&[(web, frontend("web", &[2, 3, 4], None))]),
            desired(&[(web, frontend("web", &[2, 4, 5], None))]),
            vec!["PutBackend", "PutService", "DeleteBackend"],
        ),
        (
            "affinity turned on: only the service value",
            desired(&[(web, frontend("web", &[2], None))]),
            desired(&[(web, frontend("web", &[2], Some(10_800)))]),
            vec!["PutService"],
        ),
        (
            "last endpoint gone: published with count 0 (reject)",
            desired(&[(web, frontend("web", &[2], None))]),
            desired(&[(web, frontend("web", &[], None))]),
            vec!["PutService", "DeleteBackend"],
        ),
        (
            "frontend removed: unpublished first, then backends",
            desired(&[
                (web, frontend("web", &[2, 3], None)),
                (api, frontend("api", &[4], None)),
            ]),
            desired(&[(api, frontend("api", &[4], None))]),
            vec![
                "DeleteService",
                "DeleteBackend",
                "DeleteBackend",
                "Reset",
                "DeleteVip",
            ],
        ),
        (
            "frontend with many endpoints removed: unpublished first, then slots and backends",
            desired(&[(web, frontend("web", &many, None))]),
            desired(&[]),
            [
                &["DeleteService"][..],
                &["DeleteSlot"; 5],
                &["DeleteBackend"; 5],
                &["Reset", "DeleteVip"],
            ]
            .concat(),
        ),
    ]
}

#[test]
fn repeated_updates_leave_no_stale_slots() {
    let web = key(10, 80);
    let mut dp = FakeDatapath::default();
    let mut programmed = Programmed::new(8);
    let sets: [&[u8]; 8] = [
        &[2, 3, 4, 5, 6, 7],
        &[2],
        &[3, 4, 5, 6, 7],
        &[3, 4, 5, 6, 7, 8, 9],
        &[],
        &[6, 7, 8, 9, 10],
        &[6, 7, 8, 9, 10, 11],
        &[6],
    ];
    for endpoints in sets {
        let report = programmed.sync(
            &desired(&[(web, frontend("web", endpoints, None))]),
            &mut dp,
        );
        assert!(report.problems.is_empty());
        let f = &programmed.frontends()[&web];
        let present = |bank: u8| dp.slots.keys().filter(|(_, b, _)| *b == bank).count();
        let in_slots = if endpoints.len() > INLINE_SLOTS {
            endpoints.len()
        } else {
            0
        };
        assert_eq!(
            present(f.bank),
            in_slots,
            "active bank holds exactly the set, unless the value holds it"
        );
        let inactive = 1 - f.bank;
        assert!(present(inactive) <= f.bank_len[usize::from(inactive)] as usize);
        assert_eq!(
            dp.backends.len(),
            endpoints.len(),
            "removed backends are deleted"
        );
    }
    programmed.sync(&Desired::new(), &mut dp);
    assert!(dp.services.is_empty() && dp.slots.is_empty() && dp.backends.is_empty());
}

#[test]
fn kept_endpoints_keep_their_backend_ids() {
    let web = key(10, 80);
    let mut dp = FakeDatapath::default();
    let mut programmed = Programmed::new(8);
    programmed.sync(&desired(&[(web, frontend("web", &[2, 3], None))]), &mut dp);
    let id_of = |p: &Programmed, host: u8| {
        p.frontends()[&web]
            .backends
            .iter()
            .find(|(e, _)| *e == ep(host))
            .map(|(_, id)| *id)
    };
    let before = id_of(&programmed, 3);
    programmed.sync(&desired(&[(web, frontend("web", &[3, 4], None))]), &mut dp);
    assert_eq!(
        id_of(&programmed, 3),
        before,
        "conntrack entries of kept endpoints stay valid"
    );
    assert!(
        id_of(&programmed, 4) > before,
        "new ids are never reused ones"
    );
}

#[test]
fn full_map_fails_one_frontend_cleanly_and_retries_later() {
    let (web, api) = (key(10, 80), key(11, 80));
    let want = desired(&[
        (web, frontend("web", &[2, 3], None)),
        (api, frontend("api", &[4, 5, 6], None)),
    ]);
    let mut dp = FakeDatapath {
        max_backends: Some(4),
        ..FakeDatapath::default()
    };
    let mut programmed = Programmed::new(8);
    let report = programmed.sync(&want, &mut dp);
    assert_eq!(report.added, 1);
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    let problem = &report.problems[0];
    assert_eq!(problem.kind, ProblemKind::Datapath);
    assert!(
        problem
            .object
            .as_deref()
            .is_some_and(|o| o.contains("default/api")),
        "{problem}"
    );
    assert!(problem.message.contains("full"), "{problem}");
    // The failed frontend left nothing behind; the other one is served (its two backends
    // in its service value, no slots).
    assert_eq!(dp.backends.len(), 2);
    assert!(dp.slots.is_empty());
    assert_eq!(
        dp.view(),
        expected_view(&desired(&[(web, frontend("web", &[2, 3], None))]))
    );
    assert_counted(&programmed);
    assert_eq!(programmed.counts().frontends.total(), 1);

    dp.max_backends = None;
    // Nothing changed in the cluster, but the failed frontend is retried.
    let retry = programmed.sync_keys(&want, std::collections::BTreeSet::new(), &mut dp);
    assert!(retry.problems.is_empty());
    assert_eq!((retry.added, retry.updated), (1, 0));
    assert_eq!(dp.view(), expected_view(&want));
    assert_counted(&programmed);
}

#[test]
fn out_of_service_ids_is_reported_and_others_still_apply() {
    let mut dp = FakeDatapath::default();
    let mut programmed = Programmed::new(1);
    let report = programmed.sync(
        &desired(&[
            (key(10, 80), frontend("a", &[2], None)),
            (key(11, 80), frontend("b", &[3], None)),
        ]),
        &mut dp,
    );
    assert_eq!(report.added, 1);
    assert_eq!(report.problems.len(), 1);
    assert!(
        report.problems[0]
            .message
            .contains("no free service port id")
    );
}

#[test]
fn restart_recovers_state_and_writes_nothing_new() {
    let want = desired(&[
        (key(10, 80), frontend("web", &[2, 3, 4], Some(60))),
        (key(11, 53), frontend("dns", &[], None)),
    ]);
    let mut dp = FakeDatapath::default();
    let mut first = Programmed::new(16);
    first.sync(&want, &mut dp);
    // Two generations of updates leave an inactive bank behind.
    let mut second_want = want.clone();
    second_want.insert(key(10, 80), frontend("web", &[2, 3], Some(60)));
    first.sync(&second_want, &mut dp);

    let (mut recovered, cleanup) = Programmed::recover(&mut dp.snapshot(), 16);
    // Counted on recovery (slots aside: the inactive bank's are cleaned up below).
    let (found, had) = (recovered.counts(), first.counts());
    assert_eq!(
        (found.frontends, found.backends),
        (had.frontends, had.backends)
    );
    assert!(
        cleanup
            .iter()
            .all(|op| matches!(op, MapOp::DeleteSlot { bank: 0, .. })),
        "only the inactive bank is cleaned: {cleanup:?}"
    );
    for op in &cleanup {
        super::Datapath::apply(&mut dp, op).expect("fake never fails deletes");
    }
    let before = dp.log.len();
    let report = recovered.sync(&second_want, &mut dp);
    assert_eq!(
        dp.log.len(),
        before,
        "nothing rewritten after a restart: {report:?}"
    );
    assert_eq!(dp.view(), expected_view(&second_want));

    // New ids after recovery never collide with recovered ones.
    let mut third = second_want.clone();
    third.insert(key(12, 80), frontend("new", &[9], None));
    recovered.sync(&third, &mut dp);
    assert_eq!(dp.view(), expected_view(&third));
    let ids: std::collections::BTreeSet<u32> = dp.services.values().map(|s| s.svc_id).collect();
    assert_eq!(ids.len(), 3, "service port ids are unique");
}

/// The kernel lists hash maps in hash order; recovery and the drift check sort the
/// snapshot in place before they look anything up.
#[test]
fn maps_listed_in_any_order_are_read_the_same() {
    let want = desired(&[
        (key(10, 80), frontend("web", &[2, 3, 4, 8, 9], Some(60))),
        (key(11, 53), frontend("dns", &[5, 6], None)),
        (key(12, 80), frontend("api", &[7], None)),
    ]);
    let mut dp = FakeDatapath::default();
    let mut programmed = Programmed::new(16);
    programmed.sync(&want, &mut dp);
    // An inactive bank, a stray backend and a stray VIP: cleanup has something to say.
    let mut changed = want.clone();
    changed.insert(key(10, 80), frontend("web", &[2, 4, 8, 9, 10], Some(60)));
    programmed.sync(&changed, &mut dp);
    dp.backends.insert(999, ep(9));
    dp.backend_roles.insert(999, (42, false));
    dp.vips.insert(Ipv4Addr::new(198, 19, 0, 99).into());

    let in_order = dp.snapshot();
    let mut scrambled = in_order.clone();
    scrambled.services.reverse();
    scrambled.backends.reverse();
    scrambled.slots.reverse();
    scrambled.vips.reverse();
    assert_ne!(
        format!("{:?}", in_order.backends),
        format!("{:?}", scrambled.backends)
    );

    let (from_order, mut order_cleanup) = Programmed::recover(&mut in_order.clone(), 16);
    let (from_scrambled, mut scrambled_cleanup) = Programmed::recover(&mut scrambled.clone(), 16);
    assert_eq!(from_order.frontends(), from_scrambled.frontends());
    // What was programmed, read back (the service names are not in the maps).
    for (key, held) in from_order.frontends() {
        assert_eq!(held.backends, programmed.frontends()[key].backends, "{key}");
    }
    assert_eq!(from_order.frontends().len(), programmed.frontends().len());
    let sort = |ops: &mut Vec<MapOp>| ops.sort_by_key(|op| format!("{op:?}"));
    sort(&mut order_cleanup);
    sort(&mut scrambled_cleanup);
    assert_eq!(order_cleanup, scrambled_cleanup);
    assert!(order_cleanup.contains(&MapOp::DeleteBackend {
        id: 999,
        endpoint: ep(9)
    }));
    assert!(order_cleanup.contains(&MapOp::DeleteVip {
        addr: Ipv4Addr::new(198, 19, 0, 99).into()
    }));
    assert!(
        order_cleanup
            .iter()
            .any(|op| matches!(op, MapOp::DeleteSlot { .. })),
        "the inactive bank is cleaned: {order_cleanup:?}"
    );

    // The record holds; only the strays differ, whichever order the maps list them in.
    let drift = |snapshot: &mut super::DatapathSnapshot| {
        let mut drift: Vec<String> = (programmed.check(snapshot, 16).drift.iter())
            .map(ToString::to_string)
            .collect();
        drift.sort();
        drift
    };
    let found = drift(&mut in_order.clone());
    assert!(!found.is_empty(), "the strays are drift");
    assert_eq!(found, drift(&mut scrambled));
}

#[test]
fn recovery_repairs_inconsistent_maps() {
    let web = key(10, 80);
    let want = desired(&[(web, frontend("web", &[2, 3], None))]);
    let mut dp = FakeDatapath::default();
    Programmed::new(8).sync(&want, &mut dp);
    // A crash left an orphan backend, a slot of an unknown service, and a missing backend.
    dp.backends.insert(999, ep(9));
    dp.backend_roles.insert(999, (42, false));
    dp.slots.insert((7, 0, 0), 999);
    let first_id = *dp.backends.keys().next().expect("programmed backends");
    dp.backends.remove(&first_id);

    let (mut recovered, cleanup) = Programmed::recover(&mut dp.snapshot(), 8);
    assert!(cleanup.contains(&MapOp::DeleteBackend {
        id: 999,
        endpoint: ep(9)
    }));
    assert!(cleanup.contains(&MapOp::DeleteSlot {
        svc_id: 7,
        bank: 0,
        index: 0
    }));
    for op in &cleanup {
        super::Datapath::apply(&mut dp, op).expect("fake never fails deletes");
    }
    assert!(
        dp.view()[&web].is_err(),
        "the broken frontend is visible as broken"
    );
    recovered.sync(&want, &mut dp);
    assert_eq!(dp.view(), expected_view(&want), "a sync repairs it");
}

#[test]
fn freed_service_ids_start_from_zeroed_counters() {
    let (a, b, c) = (key(10, 80), key(11, 80), key(12, 80));
    let mut dp = FakeDatapath::default();
    let mut programmed = Programmed::new(8);
    let all = desired(&[
        (a, frontend("a", &[2], None)),
        (b, frontend("b", &[3], None)),
        (c, frontend("c", &[4], None)),
    ]);
    programmed.sync(&all, &mut dp);
    assert!(
        dp.counters_reset.is_empty(),
        "fresh maps are zero: nothing to reset"
    );
    let without_b = desired(&[
        (a, frontend("a", &[2], None)),
        (c, frontend("c", &[4], None)),
    ]);
    programmed.sync(&without_b, &mut dp);
    assert_eq!(dp.counters_reset, [1], "b's id is zeroed when freed");
    // A restarted agent cannot know whether that happened: it zeroes free ids itself.
    let (_, cleanup) = Programmed::recover(&mut dp.snapshot(), 8);
    assert!(
        cleanup.contains(&MapOp::ResetServiceCounters { svc_id: 1 }),
        "{cleanup:?}"
    );
}

#[test]
fn many_changes_in_one_sync_stay_atomic_and_never_share_ids() {
    let (a, b, c) = (key(10, 80), key(11, 80), key(12, 80));
    let from = desired(&[
        (a, frontend("a", &[2, 3], None)),
        (b, frontend("b", &[4], None)),
    ]);
    let to = desired(&[
        (b, frontend("b", &[5], None)),
        (c, frontend("c", &[6, 7, 8, 9, 10], None)),
    ]);
    let (ops, dp) = transition(&from, &to);
    // In waves: unpublish, clear, create backends, fill slots, publish, clean up.
    let kinds = kinds(&ops);
    let first = |k: &str| kinds.iter().position(|x| *x == k).expect("present");
    let last = |k: &str| kinds.iter().rposition(|x| *x == k).expect("present");
    assert_eq!(first("DeleteService"), 0);
    assert!(last("DeleteService") < first("PutBackend"));
    assert!(last("PutBackend") < first("PutSlot"));
    assert!(last("PutSlot") < first("PutService"));
    let a_id = 0;
    assert_ne!(
        dp.services[&c].svc_id, a_id,
        "a freed id is not reused in the same sync"
    );
}

#[test]
fn listed_endpoints_keep_their_ids_through_every_role_change() {
    let web = key(10, 80);
    let mut dp = FakeDatapath::default();
    let mut programmed = Programmed::new(8);
    let id_of = |p: &Programmed, host: u8| {
        let f = &p.frontends()[&web];
        f.backends
            .iter()
            .chain(&f.standby)
            .find(|(e, _)| *e == ep(host))
            .map(|(_, id)| *id)
    };
    programmed.sync(&desired(&[(web, frontend("web", &[2, 3], None))]), &mut dp);
    let id = id_of(&programmed, 3).expect("programmed");
    for (used, listed_only, active) in [
        (&[2][..], &[3][..], false),
        (&[2, 3], &[], true),
        (&[], &[2, 3], false),
        (&[3], &[2], true),
    ] {
        programmed.sync(
            &desired(&[(web, frontend_with("web", used, listed_only))]),
            &mut dp,
        );
        assert_eq!(
            id_of(&programmed, 3),
            Some(id),
            "flows keep their backend id"
        );
        assert_eq!(
            dp.backend_roles[&id],
            (programmed.frontends()[&web].svc_id, active)
        );
        assert_eq!(
            dp.view()[&web].as_ref().map(|(eps, _)| eps.clone()),
            Ok(used.iter().map(|h| ep(*h)).collect()),
            "only used endpoints take new connections"
        );
    }
}

#[test]
fn backend_ids_are_never_reused_across_a_restart() {
    // Ids of endpoints deleted before a restart may still be named by conntrack and affinity
    // entries: a restarted agent must not hand them out again.
    let web = key(10, 80);
    let mut dp = FakeDatapath::default();
    let mut programmed = Programmed::new(8);
    programmed.sync(
        &desired(&[(web, frontend("web", &[2, 3, 4], None))]),
        &mut dp,
    );
    let handed_out: Vec<u32> = dp.backends.keys().copied().collect();
    programmed.sync(&desired(&[(web, frontend("web", &[2], None))]), &mut dp);
    assert_eq!(dp.backends.len(), 1, "the others were deleted");

    let (mut restarted, cleanup) = Programmed::recover(&mut dp.snapshot(), 8);
    for op in &cleanup {
        super::Datapath::apply(&mut dp, op).expect("fake");
    }
    restarted.sync(
        &desired(&[(web, frontend("web", &[2, 5, 6], None))]),
        &mut dp,
    );
    let new_ids: Vec<u32> = dp
        .backends
        .keys()
        .copied()
        .filter(|id| !handed_out.contains(id))
        .collect();
    assert_eq!(new_ids.len(), 2);
    assert!(
        new_ids
            .iter()
            .all(|id| *id > *handed_out.iter().max().expect("ids")),
        "new ids {new_ids:?} reuse none of {handed_out:?}"
    );
}

#[test]
fn ids_are_reserved_before_they_are_written_and_a_failed_reservation_writes_nothing() {
    let web = key(10, 80);
    let mut dp = FakeDatapath {
        fail_reservation: true,
        ..FakeDatapath::default()
    };
    let mut programmed = Programmed::new(8);
    let want = desired(&[(web, frontend("web", &[2, 3], None))]);
    let report = programmed.sync(&want, &mut dp);
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(
        report.problems[0].message.contains("KP_META"),
        "{}",
        report.problems[0]
    );
    assert!(
        dp.services.is_empty() && dp.backends.is_empty(),
        "nothing written"
    );
    dp.fail_reservation = false;
    // Retried by the next sync even though nothing changed; the fake asserts every written
    // id is below the reservation.
    let retry = programmed.sync_keys(&want, std::collections::BTreeSet::new(), &mut dp);
    assert!(retry.problems.is_empty(), "{:?}", retry.problems);
    assert_eq!(dp.view(), expected_view(&want));
}

#[test]
fn vips_are_counted_once_per_address() {
    let (http, https) = (key(10, 80), key(10, 443));
    let mut dp = FakeDatapath::default();
    let mut programmed = Programmed::new(8);
    let vip: IpAddr = Ipv4Addr::new(198, 19, 0, 10).into();
    programmed.sync(
        &desired(&[
            (http, frontend("web", &[2], None)),
            (https, frontend("web", &[2], None)),
        ]),
        &mut dp,
    );
    assert_eq!(dp.vips, [vip].into());
    programmed.sync(&desired(&[(https, frontend("web", &[2], None))]), &mut dp);
    assert_eq!(dp.vips, [vip].into(), "still used by the other port");
    let (recovered, cleanup) = Programmed::recover(&mut dp.snapshot(), 8);
    assert!(
        cleanup
            .iter()
            .all(|op| !matches!(op, MapOp::PutVip { .. } | MapOp::DeleteVip { .. }))
    );
    let mut recovered = recovered;
    recovered.sync(&Desired::new(), &mut dp);
    assert!(dp.vips.is_empty());
}

#[test]
fn a_sync_larger_than_a_chunk_is_whole_and_never_reuses_an_id_it_freed() {
    let n = super::plan::SYNC_CHUNK + 10;
    let n32 = u32::try_from(n).expect("small");
    let key_at = |i: usize, port| {
        let i = u32::try_from(i).expect("small");
        let addr = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + i);
        FrontendKey::new(addr.into(), port, Protocol::Tcp)
    };
    let old: Desired = (0..n)
        .map(|i| (key_at(i, 80), frontend("old", &[2, 3], None)))
        .collect();
    let new: Desired = (0..n)
        .map(|i| (key_at(i, 81), frontend("new", &[4], None)))
        .collect();
    let mut dp = FakeDatapath::default();
    let mut programmed = Programmed::new(2 * n32);

    let first = programmed.sync(&old, &mut dp);
    assert!(first.problems.is_empty(), "{:?}", first.problems);
    assert_eq!(first.added, n);
    assert_eq!(dp.view(), expected_view(&old));
    let old_ids: HashSet<u32> = dp.services.values().map(|s| s.svc_id).collect();
    assert_eq!(old_ids.len(), n, "one id per frontend");

    // Every frontend replaced in one sync: removals and additions span several chunks.
    let second = programmed.sync(&new, &mut dp);
    assert!(second.problems.is_empty(), "{:?}", second.problems);
    assert_eq!((second.added, second.removed), (n, n));
    assert_eq!(dp.view(), expected_view(&new));
    assert!(
        dp.services.values().all(|s| !old_ids.contains(&s.svc_id)),
        "an id freed by a sync is not handed out again by the same sync"
    );
    // Each VIP lost its port-80 frontend and gained a port-81 one: it stays served.
    assert_eq!(dp.vips.len(), n);
    assert_counted(&programmed);
    assert_eq!(programmed.counts().frontends.v4, n);
    assert_eq!(programmed.counts().backends.v4, n);
}

#[test]
fn chunks_planned_beside_their_writing_reach_the_datapath_in_order_and_fail_alone() {
    // Three chunks: planned on this thread while the one before is written on another.
    let n = 2 * super::plan::SYNC_CHUNK + 10;
    let key_at = |i: usize| {
        let i = u32::try_from(i).expect("small");
        let addr = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + i);
        FrontendKey::new(addr.into(), 80, Protocol::Tcp)
    };
    let want: Desired = (0..n)
        .map(|i| (key_at(i), frontend("web", &[2, 3], None)))
        .collect();
    let mut dp = FakeDatapath {
        max_services: Some(n - 3),
        ..FakeDatapath::default()
    };
    let mut programmed = Programmed::new(u32::try_from(2 * n).expect("small"));

    let report = programmed.sync(&want, &mut dp);
    assert_eq!(report.added, n - 3);
    let failed: Vec<&str> = report.problems.iter().map(|p| p.message.as_str()).collect();
    assert_eq!(failed.len(), 3, "{failed:?}");
    assert!(
        failed.iter().all(|m| m.contains("KP_SERVICES is full")),
        "{failed:?}"
    );
    let published: Vec<FrontendKey> = dp
        .log
        .iter()
        .filter_map(|op| match op {
            MapOp::PutService { key, .. } => Some(*key),
            _ => None,
        })
        .collect();
    let in_order: Vec<FrontendKey> = want.keys().copied().collect();
    assert_eq!(
        published,
        in_order[..n - 3],
        "published once each, chunk after chunk, in the sync's order, until the map was full"
    );
    let served: Vec<FrontendKey> = dp.services.keys().copied().collect();
    assert_eq!(served, published, "the last three did not fit");
    assert_eq!(dp.backends.len(), 2 * (n - 3), "failed changes rolled back");
    assert_counted(&programmed);

    // Room again: the retry writes the three, and only them.
    dp.max_services = None;
    let retry = programmed.sync_keys(&want, std::collections::BTreeSet::new(), &mut dp);
    assert!(retry.problems.is_empty(), "{:?}", retry.problems);
    assert_eq!(retry.added, 3);
    assert_eq!(dp.view(), expected_view(&want));
}
