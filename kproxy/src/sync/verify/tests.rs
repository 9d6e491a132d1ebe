//! The drift check against the in-memory datapath: a record in step finds nothing (also with
//! the inactive bank a switch leaves), each kind of corruption is found and named, and the
//! repair brings the maps back to the desired state, after which nothing is found.

use super::super::{
    Datapath, Programmed,
    fake::FakeDatapath,
    tests::{desired, ep, expected_view, frontend, key},
};
use crate::model::Desired;

const MAX_SERVICES: u32 = 16;

/// web (more endpoints than a service value holds, two generations: an inactive bank is
/// left), dns (no endpoints) and api (its two backends in its service value), programmed.
fn programmed() -> (Programmed, FakeDatapath, Desired) {
    let first = desired(&[
        (key(10, 80), frontend("web", &[2, 3, 4, 5, 6, 7], Some(60))),
        (key(11, 53), frontend("dns", &[], None)),
        (key(12, 80), frontend("api", &[8, 9], None)),
    ]);
    let want = desired(&[
        (key(10, 80), frontend("web", &[2, 3, 4, 5, 6], Some(60))),
        (key(11, 53), frontend("dns", &[], None)),
        (key(12, 80), frontend("api", &[8, 9], None)),
    ]);
    let mut dp = FakeDatapath::default();
    let mut programmed = Programmed::new(MAX_SERVICES);
    programmed.sync(&first, &mut dp);
    programmed.sync(&want, &mut dp);
    (programmed, dp, want)
}

fn web_backend_ids(dp: &FakeDatapath) -> Vec<u32> {
    let svc = dp.services[&key(10, 80)];
    (0..u32::from(svc.count))
        .map(|i| svc.slot(&dp.slots, i).expect("a slot"))
        .collect()
}

#[test]
fn a_record_in_step_with_the_maps_finds_no_drift() {
    let (programmed, dp, _) = programmed();
    let check = programmed.check(&mut dp.snapshot(), MAX_SERVICES);
    assert_eq!(check.drift, Vec::new());
    // The quick reading agrees with the whole recovery, which finds nothing either.
    assert!(programmed.holds(&dp.snapshot()).expect("a snapshot walks"));
    assert_eq!(
        programmed
            .check_whole(&mut dp.snapshot(), MAX_SERVICES)
            .drift,
        Vec::new()
    );
}

/// A corruption of the maps: what it is, what it does, the start of the drift it shows as.
type Corruption = (&'static str, Box<dyn Fn(&mut FakeDatapath)>, &'static str);

fn corruptions() -> Vec<Corruption> {
    vec![
        (
            "a backend's address rewritten",
            Box::new(|dp| {
                let id = web_backend_ids(dp)[0];
                dp.backends.insert(id, ep(9));
            }),
            "198.19.0.10:80/TCP: backends: programmed [198.18.2.2:8080",
        ),
        (
            "a frontend deleted",
            Box::new(|dp| {
                dp.services.remove(&key(11, 53));
            }),
            "198.19.0.11:53/TCP: programmed, missing from the maps",
        ),
        (
            "a frontend nobody programmed",
            Box::new(|dp| {
                let mut svc = dp.services[&key(11, 53)];
                svc.svc_id = 9;
                dp.services.insert(key(13, 80), svc);
            }),
            "198.19.0.13:80/TCP: in the maps, never programmed",
        ),
        (
            "affinity switched off",
            Box::new(|dp| {
                dp.services
                    .get_mut(&key(10, 80))
                    .expect("web")
                    .settings
                    .affinity_timeout_s = None;
            }),
            "198.19.0.10:80/TCP: settings: programmed",
        ),
        (
            "a slot deleted",
            Box::new(|dp| {
                let svc = dp.services[&key(10, 80)];
                dp.slots.remove(&(svc.svc_id, svc.bank, 1));
            }),
            "198.19.0.10:80/TCP: its entries are inconsistent",
        ),
        (
            "a backend id in a service value rewritten",
            Box::new(|dp| {
                let api = dp.services.get_mut(&key(12, 80)).expect("api");
                api.inline[1] = 999;
            }),
            "198.19.0.12:80/TCP: its entries are inconsistent",
        ),
        (
            "a slot beside a service value that holds its backends",
            Box::new(|dp| {
                let api = dp.services[&key(12, 80)];
                dp.slots.insert((api.svc_id, api.bank, 0), api.inline[0]);
            }),
            "stray entry: DeleteSlot",
        ),
        (
            "an orphan backend",
            Box::new(|dp| {
                dp.backends.insert(999, ep(7));
                dp.backend_roles.insert(999, (7, false));
            }),
            "stray entry: DeleteBackend { id: 999, endpoint",
        ),
        (
            "a VIP deleted",
            Box::new(|dp| {
                dp.vips.remove(&key(10, 80).addr);
            }),
            "stray entry: PutVip { addr: 198.19.0.10 }",
        ),
        (
            "a VIP nobody uses",
            Box::new(|dp| {
                dp.vips.insert(key(14, 80).addr);
            }),
            "stray entry: DeleteVip { addr: 198.19.0.14 }",
        ),
        (
            "a slot of a service port id nobody uses",
            Box::new(|dp| {
                let id = web_backend_ids(dp)[0];
                dp.slots.insert((9, 0, 0), id);
            }),
            "stray entry: DeleteSlot { svc_id: 9, bank: 0, index: 0 }",
        ),
        (
            "a source range of a service port id nobody uses",
            Box::new(|dp| {
                dp.source_ranges
                    .insert((9, "198.18.0.0/16".parse().expect("a range")));
            }),
            "stray entry: DeleteSourceRange { svc_id: 9",
        ),
    ]
}

#[test]
fn every_corruption_is_found_named_and_repaired() {
    for (name, corrupt, expected) in corruptions() {
        let (mut programmed, mut dp, want) = programmed();
        corrupt(&mut dp);
        // The quick reading sees a difference, and the check names the whole recovery's.
        assert!(
            !programmed.holds(&dp.snapshot()).expect("a snapshot walks"),
            "{name}"
        );
        let check = programmed.check(&mut dp.snapshot(), MAX_SERVICES);
        assert_eq!(
            check.drift,
            programmed
                .check_whole(&mut dp.snapshot(), MAX_SERVICES)
                .drift,
            "{name}"
        );
        let found: Vec<String> = check.drift.iter().map(ToString::to_string).collect();
        assert!(
            found.iter().any(|d| d.starts_with(expected)),
            "{name}: {found:#?}"
        );
        for op in programmed.repair(check) {
            dp.apply(&op).expect("the fake never fails");
        }
        programmed.sync(&want, &mut dp);
        assert_eq!(dp.view(), expected_view(&want), "{name}: repaired");
        let again = programmed.check(&mut dp.snapshot(), MAX_SERVICES);
        assert_eq!(
            again.drift,
            Vec::new(),
            "{name}: nothing left after the repair"
        );
        assert!(
            programmed.holds(&dp.snapshot()).expect("a snapshot walks"),
            "{name}: the walk agrees once repaired"
        );
        if name == "a frontend nobody programmed" {
            assert!(!dp.services.contains_key(&key(13, 80)), "unpublished");
        }
    }
}
