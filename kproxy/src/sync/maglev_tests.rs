//! Maglev tables in the sync: written with the slots of the bank they serve and before the
//! value that reads them, deleted once nothing reads them, rebuilt by a restart that finds
//! one missing or of another size.

use super::{
    MapOp, Programmed,
    fake::FakeDatapath,
    tests::{desired, ep, expected_view, frontend, key, kinds},
};
use crate::model::{Desired, Frontend, maglev};

/// A small prime: tables of a few entries keep the tests readable.
const M: u32 = 13;

fn maglev_frontend(endpoints: &[u8]) -> Frontend {
    Frontend {
        maglev: true,
        ..frontend("web", endpoints, None)
    }
}

fn programmed() -> Programmed {
    Programmed::new(16).with_maglev_table_size(M)
}

/// The table `dp` holds for the frontend at `key(1, 80)`, as endpoints.
fn table(dp: &FakeDatapath) -> Vec<crate::model::Endpoint> {
    let svc = dp.services[&key(1, 80)];
    dp.maglev[&(svc.svc_id, svc.bank, M)]
        .iter()
        .map(|id| dp.backends[id])
        .collect()
}

/// What `model::maglev::table` builds for `hosts`, as endpoints.
fn built(hosts: &[u8]) -> Vec<crate::model::Endpoint> {
    let eps: Vec<_> = hosts.iter().map(|h| ep(*h)).collect();
    let addrs: Vec<std::net::SocketAddr> = eps
        .iter()
        .map(|e| std::net::SocketAddr::new(e.addr, e.port))
        .collect();
    maglev::table(&addrs, M)
        .expect("a table")
        .into_iter()
        .map(|i| eps[i as usize])
        .collect()
}

fn sync(p: &mut Programmed, dp: &mut FakeDatapath, want: &Desired) {
    let report = p.sync(want, dp);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(dp.view(), expected_view(want), "what packets see");
    assert!(
        p.holds(&dp.snapshot()).expect("a snapshot walks"),
        "the drift check's walk finds the maps as recorded"
    );
}

#[test]
fn a_maglev_frontend_gets_its_table_before_it_is_published() {
    let mut p = programmed();
    let mut dp = FakeDatapath::recording();
    let want = desired(&[(key(1, 80), maglev_frontend(&[1, 2, 3]))]);
    sync(&mut p, &mut dp, &want);
    let ops = kinds(&dp.log);
    let table_at = ops.iter().position(|k| *k == "PutMaglev").expect("a table");
    let publish_at = ops
        .iter()
        .position(|k| *k == "PutService")
        .expect("published");
    assert!(table_at < publish_at, "{ops:?}");
    assert_eq!(table(&dp), built(&[1, 2, 3]));
    // Every view along the way was whole: the recording fake checks that a published
    // Maglev frontend's active bank has a table naming only that bank's backends.
    for view in dp.views.as_ref().expect("recording") {
        assert!(view.values().all(Result::is_ok), "{view:?}");
    }
}

#[test]
fn a_backend_change_writes_the_other_bank_then_drops_the_old_table() {
    let mut p = programmed();
    let mut dp = FakeDatapath::recording();
    sync(
        &mut p,
        &mut dp,
        &desired(&[(key(1, 80), maglev_frontend(&[1, 2, 3]))]),
    );
    let before = dp.services[&key(1, 80)];
    dp.log.clear();
    sync(
        &mut p,
        &mut dp,
        &desired(&[(key(1, 80), maglev_frontend(&[1, 2]))]),
    );
    let after = dp.services[&key(1, 80)];
    assert_ne!(before.bank, after.bank, "published in the other bank");
    assert_eq!(table(&dp), built(&[1, 2]));
    assert_eq!(
        dp.maglev.keys().copied().collect::<Vec<_>>(),
        [(after.svc_id, after.bank, M)],
        "the old bank's table is gone"
    );
    let ops = kinds(&dp.log);
    let publish_at = ops
        .iter()
        .position(|k| *k == "PutService")
        .expect("published");
    let delete_at = ops
        .iter()
        .position(|k| *k == "DeleteMaglev")
        .expect("old table");
    assert!(publish_at < delete_at, "deleted after the flip: {ops:?}");
    for view in dp.views.as_ref().expect("recording") {
        assert!(view.values().all(Result::is_ok), "{view:?}");
    }
}

#[test]
fn turning_maglev_on_and_off_writes_and_drops_the_table_around_the_publish() {
    // (before, after, ops of the change)
    let cases: [(bool, bool, &[&str]); 3] = [
        (false, true, &["PutMaglev", "PutService"]),
        (true, false, &["PutService", "DeleteMaglev"]),
        (true, true, &[]),
    ];
    for (before, after, ops) in cases {
        let mut p = programmed();
        let mut dp = FakeDatapath::default();
        let with = |on: bool| {
            desired(&[(
                key(1, 80),
                Frontend {
                    maglev: on,
                    ..frontend("web", &[1, 2, 3], None)
                },
            )])
        };
        sync(&mut p, &mut dp, &with(before));
        dp.log.clear();
        sync(&mut p, &mut dp, &with(after));
        assert_eq!(kinds(&dp.log), ops, "{before} → {after}");
        assert_eq!(!dp.maglev.is_empty(), after, "{before} → {after}");
    }
}

#[test]
fn a_removed_maglev_frontend_leaves_no_table_and_an_empty_one_has_none() {
    let mut p = programmed();
    let mut dp = FakeDatapath::default();
    sync(
        &mut p,
        &mut dp,
        &desired(&[(key(1, 80), maglev_frontend(&[1, 2]))]),
    );
    sync(
        &mut p,
        &mut dp,
        &desired(&[(key(1, 80), maglev_frontend(&[]))]),
    );
    assert!(dp.maglev.is_empty(), "no backends, no table");
    sync(
        &mut p,
        &mut dp,
        &desired(&[(key(1, 80), maglev_frontend(&[3]))]),
    );
    assert_eq!(table(&dp), built(&[3]));
    sync(&mut p, &mut dp, &Desired::new());
    assert!(dp.maglev.is_empty(), "removed with its frontend");
}

#[test]
fn a_failed_table_write_rolls_the_change_back_and_is_retried() {
    let mut p = programmed();
    let mut dp = FakeDatapath {
        max_maglev_tables: Some(1),
        ..FakeDatapath::default()
    };
    let one = desired(&[(key(1, 80), maglev_frontend(&[1, 2]))]);
    sync(&mut p, &mut dp, &one);
    let mut two = one.clone();
    two.insert(key(2, 80), maglev_frontend(&[3, 4]));
    let report = p.sync(&two, &mut dp);
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(
        report.problems[0].message.contains("KP_MAGLEV"),
        "{:?}",
        report.problems
    );
    assert!(!dp.services.contains_key(&key(2, 80)), "never published");
    assert_eq!(dp.view(), expected_view(&one), "the first one serves on");
    dp.max_maglev_tables = None;
    sync(&mut p, &mut dp, &two);
}

#[test]
fn a_restart_keeps_whole_tables_and_rewrites_missing_or_foreign_ones() {
    let want = desired(&[
        (key(1, 80), maglev_frontend(&[1, 2, 3])),
        (key(2, 80), maglev_frontend(&[4, 5])),
    ]);
    let mut p = programmed();
    let mut dp = FakeDatapath::default();
    sync(&mut p, &mut dp, &want);

    // Unchanged: nothing to clean up, nothing rewritten.
    let (mut restarted, cleanup) = Programmed::recover_for(&mut dp.snapshot(), 16, M);
    assert!(
        cleanup
            .iter()
            .all(|op| !matches!(op, MapOp::DeleteMaglevTable { .. }))
    );
    dp.log.clear();
    sync(&mut restarted, &mut dp, &want);
    assert!(dp.log.is_empty(), "{:?}", kinds(&dp.log));

    // One table lost, and a stray one of another size: the first is rewritten (in the
    // other bank, published atomically), the stray deleted.
    let lost = dp.services[&key(2, 80)];
    dp.maglev.remove(&(lost.svc_id, lost.bank, M));
    dp.maglev
        .insert((lost.svc_id, lost.bank, 17), vec![0; 17].into());
    let (mut restarted, cleanup) = Programmed::recover_for(&mut dp.snapshot(), 16, M);
    assert_eq!(
        cleanup
            .iter()
            .filter(|op| matches!(op, MapOp::DeleteMaglevTable { .. }))
            .collect::<Vec<_>>(),
        [&MapOp::DeleteMaglevTable {
            svc_id: lost.svc_id,
            bank: lost.bank,
            table_size: 17
        }]
    );
    assert!(restarted.frontends()[&key(2, 80)].needs_rewrite);
    assert!(!restarted.frontends()[&key(1, 80)].needs_rewrite);
    for op in &cleanup {
        super::Datapath::apply(&mut dp, op).expect("cleanup");
    }
    sync(&mut restarted, &mut dp, &want);
    let svc = dp.services[&key(2, 80)];
    assert_ne!(svc.bank, lost.bank, "rewritten in the other bank");
    assert_eq!(dp.maglev.len(), 2, "{:?}", dp.maglev.keys());

    // Restarted with another table size: every table is rebuilt at the new size.
    let (mut resized, cleanup) = Programmed::recover_for(&mut dp.snapshot(), 16, 11);
    assert!(resized.frontends().values().all(|f| f.needs_rewrite));
    for op in &cleanup {
        super::Datapath::apply(&mut dp, op).expect("cleanup");
    }
    let report = resized.sync(&want, &mut dp);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(
        dp.maglev.keys().all(|&(_, _, size)| size == 11),
        "{:?}",
        dp.maglev.keys()
    );
    assert_eq!(dp.maglev.len(), 2);
}
