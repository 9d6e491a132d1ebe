//! The state a previous agent left pinned: adopted when its layout version is this build's,
//! replaced as a whole otherwise (never read with a new meaning), a map of another shape
//! replaced alone, and backend ids that are never handed out again after a restart, whatever
//! the previous agent had deleted.

mod support;

use kproxy::{
    dataplane::{
        load::{self, PinnedState},
        maps::ServiceMaps,
    },
    model::{Desired, Protocol},
    sync::{Datapath, Programmed},
};
use kproxy_common::{
    meta::{LAYOUT_VERSION, Meta},
    names,
};
use kproxy_testbed::require_privileges;
use support::{
    datapath::{B1, B2, B3, CLIENT, SIZES, TCX_NEXT, VIP, frontend, loaded, three_backends},
    packets::{ACK, SYN, dst, tcp_frame},
};

#[test]
fn pinned_state_of_this_layout_is_adopted_and_of_any_other_replaced() {
    if !require_privileges("pinned_state_of_this_layout_is_adopted_and_of_any_other_replaced") {
        return;
    }
    let dp = loaded(&three_backends(Protocol::Tcp, None));
    dp.tc(&tcp_frame((CLIENT, 40_000), (VIP, 80), SYN, b""));
    let pin_dir = dp.bpffs.pin_path("kproxy");
    let flows = || dp.ct_forward().keys().count();
    // Opened anew each time: after a replacement the pins name new maps.
    let services = || {
        ServiceMaps::open(&pin_dir)
            .expect("maps")
            .snapshot()
            .expect("snapshot")
            .services
            .len()
    };
    assert_eq!((flows(), services()), (1, 1));

    // A restart of the same build: everything adopted, flows included.
    let (_, state) = load::load(&pin_dir, &SIZES).expect("load");
    assert_eq!(state, PinnedState::Adopted);
    assert_eq!((flows(), services()), (1, 1));

    // State written by another layout version: replaced, not reinterpreted.
    let meta_map = || -> aya::maps::Array<aya::maps::MapData, Meta> { dp.map(names::MAP_META) };
    let mut meta = meta_map().get(&0, 0).expect("meta");
    meta.layout_version = LAYOUT_VERSION + 1;
    meta_map()
        .set(0, meta, 0)
        .expect("an older or newer layout");
    let (_, state) = load::load(&pin_dir, &SIZES).expect("load");
    assert_eq!(
        state,
        PinnedState::Replaced(format!(
            "layout version {} (this kproxy: {LAYOUT_VERSION})",
            LAYOUT_VERSION + 1
        ))
    );
    assert_eq!(
        (flows(), services()),
        (0, 0),
        "fresh maps under the same pins"
    );
    assert!(meta_map().get(&0, 0).expect("meta").is_current());

    // State of a kproxy from before layout versions (no KP_META at all): replaced too.
    dp.tc(&tcp_frame((CLIENT, 40_001), (VIP, 80), SYN, b""));
    std::fs::remove_file(pin_dir.join(names::MAP_META)).expect("unpin KP_META");
    let (_, state) = load::load(&pin_dir, &SIZES).expect("load");
    assert!(
        matches!(&state, PinnedState::Replaced(why) if why.contains("no KP_META")),
        "{state:?}"
    );
    assert!(meta_map().get(&0, 0).expect("meta").is_current());
}

/// An upgrade from the builds whose round-robin counter was one `Array` element per service
/// port, shared by all CPUs, or a per-CPU array: the same layout version, so everything is
/// adopted (flows survive) but `KP_RR`, whose map type or size changed and which is
/// replaced alone, every service port starting at a random slot again.
#[test]
fn an_upgrade_over_the_shared_round_robin_counter_keeps_flows_and_replaces_only_it() {
    if !require_privileges(
        "an_upgrade_over_the_shared_round_robin_counter_keeps_flows_and_replaces_only_it",
    ) {
        return;
    }
    upgrade_replaces_only_round_robin(|rr_pin| {
        let mut previous: aya::maps::Array<aya::maps::MapData, u64> =
            aya::maps::Array::create(SIZES.services, 0).expect("the previous build's KP_RR");
        previous.set(0, 7, 0).expect("a turn");
        previous.pin(rr_pin).expect("pin it");
    });
}

#[test]
fn an_upgrade_over_the_per_cpu_round_robin_array_keeps_flows_and_replaces_only_it() {
    if !require_privileges(
        "an_upgrade_over_the_per_cpu_round_robin_array_keeps_flows_and_replaces_only_it",
    ) {
        return;
    }
    upgrade_replaces_only_round_robin(|rr_pin| {
        let previous: aya::maps::PerCpuArray<aya::maps::MapData, u64> =
            aya::maps::PerCpuArray::create(SIZES.services, 0).expect("the previous build's KP_RR");
        previous.pin(rr_pin).expect("pin it");
    });
}

/// Loads over state whose `KP_RR` `pin_previous` pins: the flow of before goes on, and new
/// flows start at this CPU's fresh random turn.
fn upgrade_replaces_only_round_robin(pin_previous: impl FnOnce(&std::path::Path)) {
    let mut dp = loaded(&three_backends(Protocol::Tcp, None));
    let (_, out) = dp.tc(&tcp_frame((CLIENT, 40_000), (VIP, 80), SYN, b""));
    let backend = dst(&out);
    let pin_dir = dp.bpffs.pin_path("kproxy");
    let rr_pin = pin_dir.join(names::MAP_RR);
    std::fs::remove_file(&rr_pin).expect("unpin KP_RR");
    pin_previous(&rr_pin);

    let (ebpf, state) = load::load(&pin_dir, &SIZES).expect("load");
    assert_eq!(state, PinnedState::Adopted);
    let info = aya::maps::MapInfo::from_pin(&rr_pin).expect("KP_RR");
    let cpus = aya::util::nr_cpus().expect("possible CPUs");
    assert_eq!(info.map_type().expect("type"), aya::maps::MapType::Array);
    assert_eq!(
        info.max_entries(),
        SIZES.services * u32::try_from(cpus).expect("CPUs"),
        "a region of --max-services counters per CPU"
    );
    let maps = ServiceMaps::open(&pin_dir).expect("maps");
    assert_eq!(maps.snapshot().expect("snapshot").services.len(), 1);
    let turns = maps.round_robin_turns(0).expect("KP_RR");
    let want: Vec<u64> = (turns[0]..).take(cpus).collect();
    assert_eq!(turns, want, "a random start, one further on each CPU");

    // The upgraded programs carry on the flow, and start new ones at this CPU's turn.
    dp.ebpf = ebpf;
    let (verdict, out) = dp.tc(&tcp_frame((CLIENT, 40_000), (VIP, 80), ACK, b"x"));
    assert_eq!(verdict, TCX_NEXT);
    assert_eq!(
        out,
        tcp_frame((CLIENT, 40_000), backend, ACK, b"x"),
        "the flow kept"
    );
    let (verdict, out) = dp.tc(&tcp_frame((CLIENT, 40_001), (VIP, 80), SYN, b""));
    assert_eq!(verdict, TCX_NEXT);
    let slot = usize::try_from(turns[dp.cpu] % 3).expect("a slot");
    assert_eq!(dst(&out), ([B1, B2, B3][slot], 8080));
    assert_eq!(dp.ct_forward().keys().count(), 2);
}

#[test]
fn backend_ids_deleted_before_a_restart_are_never_handed_out_again() {
    if !require_privileges("backend_ids_deleted_before_a_restart_are_never_handed_out_again") {
        return;
    }
    let mut dp = loaded(&three_backends(Protocol::Tcp, None));
    let ids = |dp: &support::datapath::LoadedDatapath| -> Vec<u32> {
        dp.maps
            .snapshot()
            .expect("snapshot")
            .backends
            .iter()
            .map(|(id, _)| *id)
            .collect()
    };
    let first = ids(&dp);
    let reserved = dp.maps.meta().expect("meta").backend_ids_reserved;
    assert!(
        first.iter().all(|id| *id < reserved),
        "written ids {first:?} are below the reservation {reserved}"
    );
    // B2 and B3 leave; their ids may live on in conntrack and affinity entries.
    let only_b1: Desired = [frontend(VIP, 80, Protocol::Tcp, &[(B1, 8080)], None)]
        .into_iter()
        .collect();
    dp.program(&only_b1);

    // kill -9: a new agent knows only what the pinned maps say.
    let mut snapshot = dp.maps.snapshot().expect("snapshot");
    let (mut restarted, cleanup) = Programmed::recover(&mut snapshot, SIZES.services);
    for op in &cleanup {
        dp.maps.apply(op).expect("cleanup");
    }
    let back: Desired = [frontend(
        VIP,
        80,
        Protocol::Tcp,
        &[(B1, 8080), (B2, 8080), (B3, 8080)],
        None,
    )]
    .into_iter()
    .collect();
    let report = restarted.sync(&back, &mut dp.maps);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let new: Vec<u32> = ids(&dp)
        .into_iter()
        .filter(|id| !first.contains(id))
        .collect();
    assert_eq!(new.len(), 2, "B2 and B3 came back with new ids");
    assert!(
        new.iter().all(|id| *id >= reserved),
        "{new:?} reuse ids handed out before the restart (reserved below {reserved})"
    );
}
