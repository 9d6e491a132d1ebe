//! Collection against in-memory tables, including the races with the datapath. Each test
//! runs for both families (`for_both_families!`): one generic collection serves the IPv4
//! and the IPv6 maps, and these tests say it collects both alike.

use std::{
    collections::{BTreeMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::Result;
use kproxy_common::{
    config::{Config, IPPROTO_TCP, IPPROTO_UDP},
    ct::{
        AffinityKeyOf, AffinityValue, CT_F_FIN_FWD, CT_F_FIN_REV, CT_F_SEEN_REPLY, CtEntryOf,
        FlowKeyOf, reply_key,
    },
};

use super::{
    AffinityTable, FlowTable, GcPass, GcStats, Generation, Liveness, ProgrammedLiveness, Verdict,
    Walk, collect, delete_if_unchanged, judge,
};
use crate::{sync::Programmed, wire::WireAddr};

/// Instantiates each generic test `name::<A>()` once per family, as `ipv4::name` and
/// `ipv6::name`.
macro_rules! for_both_families {
    ($($name:ident),* $(,)?) => {
        mod ipv4 {
            $( #[test] fn $name() { super::$name::<u32>() } )*
        }
        mod ipv6 {
            $( #[test] fn $name() { super::$name::<kproxy_common::addr::In6Addr>() } )*
        }
    };
}

for_both_families!(
    table_of_verdicts,
    flows_of_gone_backends_stay_until_they_time_out_so_their_clients_get_a_reset,
    a_pass_deletes_both_entries_of_dead_flows_and_sweeps_deleted_services,
    a_pass_the_agent_overtook_deletes_nothing_for_being_gone_until_the_next,
    a_flow_recreated_after_the_scan_is_not_deleted,
    a_flow_refreshed_between_check_and_delete_is_put_back,
    orphaned_reply_entries_go_only_once_timed_out,
    a_nearly_full_reply_table_drops_unanswered_flows_oldest_first,
    early_drop_never_leaves_a_forward_entry_without_its_reply_entry,
    masqueraded_flows_find_their_reply_entries,
    node_port_flows_are_live_on_node_port_addresses,
);

const SEC: u64 = 1_000_000_000;
const NOW: u64 = 1_000_000 * SEC;
const CAPACITY: usize = 1_000;
const VIP: [u8; 4] = [198, 19, 0, 10];
const OTHER_VIP: [u8; 4] = [198, 19, 0, 11];
const BACKEND: [u8; 4] = [198, 18, 2, 2];
const CLIENT: [u8; 4] = [198, 18, 1, 2];

/// The address of family `A` a test calls `host`: the IPv4 address, or for IPv6 the same
/// four bytes at the end of 2001:db8::/96.
fn ip<A: WireAddr>(host: [u8; 4]) -> IpAddr {
    if A::IPV6 {
        let mut octets = Ipv6Addr::new(0x2001, 0x0db8, 0, 0, 0, 0, 0, 0).octets();
        octets[12..].copy_from_slice(&host);
        IpAddr::V6(Ipv6Addr::from(octets))
    } else {
        IpAddr::V4(Ipv4Addr::from(host))
    }
}

/// `ip`, as the maps store it.
fn at<A: WireAddr>(host: [u8; 4]) -> A {
    A::from_ip(ip::<A>(host)).expect("an address of the family")
}

struct Table<A> {
    live: BTreeMap<FlowKeyOf<A>, CtEntryOf<A>>,
    /// What a walk hands out, when it should differ from `live` (a walk that is out of date
    /// by the time collection deletes).
    scanned: Option<Vec<(FlowKeyOf<A>, CtEntryOf<A>)>>,
    /// The rest of the walk in progress.
    walking: Vec<(FlowKeyOf<A>, CtEntryOf<A>)>,
    /// Replaces the entry between `get` and `take` (a CPU refreshing it in that window).
    refresh_before_take: Option<CtEntryOf<A>>,
}

// By hand: derived, it would ask `A: Default`, which no address needs to be.
impl<A> Default for Table<A> {
    fn default() -> Self {
        Self {
            live: BTreeMap::new(),
            scanned: None,
            walking: Vec::new(),
            refresh_before_take: None,
        }
    }
}

/// Entries per chunk of the in-memory walk: small, so passes cross chunk boundaries.
const TEST_CHUNK: usize = 2;

impl<A: WireAddr> FlowTable<A> for Table<A> {
    fn next_chunk(
        &mut self,
        walk: &mut Walk,
        chunk: &mut Vec<(FlowKeyOf<A>, CtEntryOf<A>)>,
    ) -> Result<()> {
        if *walk == Walk::Start {
            self.walking = self
                .scanned
                .clone()
                .unwrap_or_else(|| self.live.iter().map(|(k, v)| (*k, *v)).collect());
            self.walking.reverse();
        }
        chunk.clear();
        while chunk.len() < TEST_CHUNK {
            let Some(next) = self.walking.pop() else {
                break;
            };
            chunk.push(next);
        }
        *walk = if self.walking.is_empty() {
            Walk::End
        } else {
            Walk::At(0)
        };
        Ok(())
    }
    fn get(&self, key: &FlowKeyOf<A>) -> Result<Option<CtEntryOf<A>>> {
        Ok(self.live.get(key).copied())
    }
    fn take(&mut self, key: &FlowKeyOf<A>) -> Result<Option<CtEntryOf<A>>> {
        if let Some(fresh) = self.refresh_before_take.take() {
            self.live.insert(*key, fresh);
        }
        Ok(self.live.remove(key))
    }
    fn put_back(&mut self, key: &FlowKeyOf<A>, entry: &CtEntryOf<A>) -> Result<()> {
        self.live.entry(*key).or_insert(*entry);
        Ok(())
    }
}

struct Affinities<A>(BTreeMap<(u32, A), AffinityValue>);

impl<A> Default for Affinities<A> {
    fn default() -> Self {
        Self(BTreeMap::new())
    }
}

impl<A: WireAddr> AffinityTable<A> for Affinities<A> {
    fn entries(&self) -> Result<Vec<(AffinityKeyOf<A>, AffinityValue)>> {
        Ok(self
            .0
            .iter()
            .map(|(&(svc_id, client), v)| (AffinityKeyOf { svc_id, client }, *v))
            .collect())
    }
    fn remove_if_unchanged(
        &mut self,
        key: &AffinityKeyOf<A>,
        judged: &AffinityValue,
    ) -> Result<bool> {
        let k = (key.svc_id, key.client);
        if self.0.get(&k) == Some(judged) {
            self.0.remove(&k);
            return Ok(true);
        }
        Ok(false)
    }
}

struct Live {
    vips: HashSet<IpAddr>,
    backends: HashSet<u32>,
    /// False: the agent programmed more since this was taken.
    current: bool,
}

impl Liveness for Live {
    fn frontend_exists(&self, vip: IpAddr, _port: u16, _proto: u8) -> bool {
        self.vips.contains(&vip)
    }
    fn backend_exists(&self, id: u32) -> bool {
        self.backends.contains(&id)
    }
    fn current(&self) -> bool {
        self.current
    }
}

/// Frontend `VIP` and backend 7 are served.
fn live<A: WireAddr>() -> Live {
    Live {
        vips: [ip::<A>(VIP)].into(),
        backends: [7].into(),
        current: true,
    }
}

fn fwd_key<A: WireAddr>(vip: [u8; 4], sport: u16, proto: u8) -> FlowKeyOf<A> {
    FlowKeyOf::new(at(CLIENT), at(vip), sport, 80u16.to_be(), proto)
}

fn entry<A: WireAddr>(nat_addr: A, nat_port: u16, flags: u32, idle_s: u64) -> CtEntryOf<A> {
    CtEntryOf {
        last_seen_ns: NOW - idle_s * SEC,
        backend_id: 7,
        svc_id: 1,
        nat_addr,
        nat_port,
        alt_port: 0,
        flags,
        alt_addr: A::UNSPECIFIED,
    }
}

/// A flow's forward and reply entry.
type Flow<A> = ((FlowKeyOf<A>, CtEntryOf<A>), (FlowKeyOf<A>, CtEntryOf<A>));

/// A flow's two entries, `idle_s` seconds without traffic, with `fwd_flags`/`rev_flags`.
fn flow<A: WireAddr>(
    vip: [u8; 4],
    sport: u16,
    proto: u8,
    fwd_flags: u32,
    rev_flags: u32,
    idle_s: u64,
) -> Flow<A> {
    let key = fwd_key(vip, sport, proto);
    let fwd = entry(at(BACKEND), 8080u16.to_be(), fwd_flags, idle_s);
    let rkey = reply_key(&key, &fwd);
    let rev = entry(at(vip), 80u16.to_be(), rev_flags, idle_s);
    ((key, fwd), (rkey, rev))
}

fn table_of_verdicts<A: WireAddr>() {
    let cfg = Config::DEFAULT;
    let l = live::<A>();
    let cases = [
        (
            "established TCP, idle 1 h",
            IPPROTO_TCP,
            0,
            CT_F_SEEN_REPLY,
            3600,
            VIP,
            Verdict::Keep,
        ),
        (
            "established TCP, idle 25 h (past the 24 h default)",
            IPPROTO_TCP,
            0,
            CT_F_SEEN_REPLY,
            25 * 3600,
            VIP,
            Verdict::Expired,
        ),
        (
            "unanswered SYN, idle 61 s",
            IPPROTO_TCP,
            0,
            0,
            61,
            VIP,
            Verdict::Expired,
        ),
        (
            "FIN both ways, idle 5 s",
            IPPROTO_TCP,
            CT_F_FIN_FWD,
            CT_F_FIN_REV | CT_F_SEEN_REPLY,
            5,
            VIP,
            Verdict::Keep,
        ),
        (
            "FIN both ways (one per entry), idle 11 s",
            IPPROTO_TCP,
            CT_F_FIN_FWD,
            CT_F_FIN_REV | CT_F_SEEN_REPLY,
            11,
            VIP,
            Verdict::Expired,
        ),
        (
            "FIN one way only, idle 11 s",
            IPPROTO_TCP,
            CT_F_FIN_FWD,
            CT_F_SEEN_REPLY,
            11,
            VIP,
            Verdict::Keep,
        ),
        (
            "UDP stream, idle 100 s",
            IPPROTO_UDP,
            0,
            CT_F_SEEN_REPLY,
            100,
            VIP,
            Verdict::Keep,
        ),
        (
            "UDP unanswered, idle 31 s",
            IPPROTO_UDP,
            0,
            0,
            31,
            VIP,
            Verdict::Expired,
        ),
        (
            "service deleted, fresh flow",
            IPPROTO_TCP,
            0,
            CT_F_SEEN_REPLY,
            0,
            OTHER_VIP,
            Verdict::ServiceGone,
        ),
    ];
    for (what, proto, fwd_flags, rev_flags, idle, vip, want) in cases {
        let ((k, f), (_, r)) = flow::<A>(vip, 40_000, proto, fwd_flags, rev_flags, idle);
        assert_eq!(judge(&cfg, NOW, &l, &k, &f, Some(&r)), want, "{what}");
    }
}

fn flows_of_gone_backends_stay_until_they_time_out_so_their_clients_get_a_reset<A: WireAddr>() {
    let ((k, f), (rk, r)) = flow::<A>(VIP, 40_000, IPPROTO_TCP, 0, CT_F_SEEN_REPLY, 60);
    let mut fwd = Table::default();
    fwd.live.insert(k, f);
    let mut rev = Table::default();
    rev.live.insert(rk, r);
    let l = Live {
        vips: [ip::<A>(VIP)].into(),
        backends: HashSet::new(),
        current: true,
    };
    let stats = collect_now(&l, &mut fwd, &mut rev, &mut Affinities::default());
    assert_eq!(stats.expired + stats.service_gone, 0);
    assert_eq!((fwd.live.len(), rev.live.len()), (1, 1));
}

/// One pass with the default configuration at `NOW`, in tables of `CAPACITY`.
fn collect_now<A: WireAddr>(
    l: &Live,
    fwd: &mut Table<A>,
    rev: &mut Table<A>,
    affinities: &mut Affinities<A>,
) -> GcStats {
    collect(&Config::DEFAULT, NOW, l, fwd, rev, affinities, CAPACITY).expect("collect")
}

/// Three established flows: one idle for 25 hours (timed out), one live, one to a frontend
/// `live()` does not serve.
fn dead_live_and_gone_flows<A: WireAddr>() -> (Table<A>, Table<A>) {
    let mut fwd = Table::default();
    let mut rev = Table::default();
    for (sport, vip, idle) in [(1, VIP, 25 * 3600), (2, VIP, 10), (3, OTHER_VIP, 0)] {
        let ((k, f), (rk, r)) = flow(vip, sport, IPPROTO_TCP, 0, CT_F_SEEN_REPLY, idle);
        fwd.live.insert(k, f);
        rev.live.insert(rk, r);
    }
    (fwd, rev)
}

fn a_pass_deletes_both_entries_of_dead_flows_and_sweeps_deleted_services<A: WireAddr>() {
    let (mut fwd, mut rev) = dead_live_and_gone_flows::<A>();
    let client = at::<A>(CLIENT);
    let mut affinities = Affinities::default();
    let aff = |backend_id, idle_s: u64| AffinityValue {
        last_seen_ns: NOW - idle_s * SEC,
        backend_id,
        _pad: 0,
    };
    affinities.0.insert((1, client), aff(7, 10));
    affinities.0.insert((2, client), aff(99, 10)); // backend gone (its service deleted)
    affinities.0.insert((3, client), aff(7, 2 * 86_400));
    let stats = collect(
        &Config::DEFAULT,
        NOW,
        &live::<A>(),
        &mut fwd,
        &mut rev,
        &mut affinities,
        CAPACITY,
    )
    .expect("collect");
    assert_eq!(
        stats,
        GcStats {
            flows: 3,
            replies: 1,
            expired: 1,
            service_gone: 1,
            orphans: 0,
            early_dropped: 0,
            raced: 0,
            affinities_expired: 2,
            affinities: 1,
        }
    );
    assert_eq!(fwd.live.keys().map(|k| k.sport).collect::<Vec<_>>(), [2]);
    assert_eq!(rev.live.len(), 1, "the live flow's reply entry stays");
    assert_eq!(
        affinities.0.keys().copied().collect::<Vec<_>>(),
        [(1, client)]
    );
}

fn a_pass_the_agent_overtook_deletes_nothing_for_being_gone_until_the_next<A: WireAddr>() {
    // The same tables as above, judged by a liveness the agent has since moved past: a
    // frontend or backend it does not know may have been programmed after it was taken.
    let tables = || {
        let (fwd, mut rev) = dead_live_and_gone_flows::<A>();
        // A reply entry whose forward entry was evicted, to the unknown frontend.
        let ((_, _), (rk, r)) = flow(OTHER_VIP, 4, IPPROTO_TCP, 0, CT_F_SEEN_REPLY, 0);
        rev.live.insert(rk, r);
        let mut affinities = Affinities::default();
        affinities.0.insert(
            (2, at(CLIENT)),
            AffinityValue {
                last_seen_ns: NOW - 10 * SEC,
                backend_id: 99,
                _pad: 0,
            },
        );
        (fwd, rev, affinities)
    };
    let pass = |current| {
        let (mut fwd, mut rev, mut affinities) = tables();
        let l = Live {
            current,
            ..live::<A>()
        };
        let stats = collect_now(&l, &mut fwd, &mut rev, &mut affinities);
        // (expired, service gone, orphans, affinities expired), then what is left in the
        // forward, reply and affinity tables.
        (
            [
                stats.expired,
                stats.service_gone,
                stats.orphans,
                stats.affinities_expired,
            ],
            [fwd.live.len(), rev.live.len(), affinities.0.len()],
        )
    };
    assert_eq!(
        pass(false),
        ([1, 0, 0, 0], [2, 3, 1]),
        "only what timed out goes"
    );
    assert_eq!(
        pass(true),
        ([1, 1, 1, 1], [1, 1, 0]),
        "a current pass sweeps the gone frontend's flows and the gone backend's affinity"
    );
}

#[test]
fn the_agent_programming_more_makes_a_taken_liveness_stale() {
    let generation = Generation::default();
    let programmed = Programmed::new(16);
    let live = ProgrammedLiveness::new(&programmed, [], &generation);
    assert!(live.current());
    generation.advance();
    assert!(!live.current());
    assert!(ProgrammedLiveness::new(&programmed, [], &generation).current());
}

/// Taken a few frontends at a time, the liveness is the one taken at once; a sync between
/// two steps leaves it not current, so the frontends it changed behind the cursor are never
/// judged gone.
#[test]
fn a_liveness_taken_in_steps_is_the_whole_or_not_current() {
    use crate::{
        model::{FrontendKey, FrontendKind, Protocol},
        sync::{
            fake::FakeDatapath,
            gc::{LivenessBuilder, Taken},
        },
    };

    let keys: Vec<_> = (1..=25u8)
        .map(|n| {
            (
                FrontendKey::new(ip::<u32>([10, 0, 0, n]), 80, Protocol::Tcp),
                FrontendKind::ClusterIp,
            )
        })
        .collect();
    let generation = Generation::default();
    let mut dp = FakeDatapath::default();
    let mut programmed = Programmed::new(64);
    programmed.sync(&web_frontends(&keys), &mut dp);
    let backend = *dp.backends.keys().next().expect("a backend");

    // (frontends a step, steps until whole)
    for (step, steps) in [(1, 25), (7, 4), (25, 1), (100, 1)] {
        let mut builder = LivenessBuilder::start(&programmed, [], &generation);
        let mut taken = 0;
        let live = loop {
            taken += 1;
            match builder.step(&programmed, step) {
                Taken::Whole(live) => break live,
                Taken::Partly(more) => builder = more,
            }
        };
        assert_eq!(taken, steps, "steps of {step}");
        assert!(live.current());
        for n in 1..=25u8 {
            assert!(
                live.frontend_exists(ip::<u32>([10, 0, 0, n]), 80u16.to_be(), IPPROTO_TCP),
                "10.0.0.{n} in steps of {step}"
            );
        }
        assert!(!live.frontend_exists(ip::<u32>([10, 0, 0, 26]), 80u16.to_be(), IPPROTO_TCP));
        assert!(live.backend_exists(backend));
    }

    // A frontend programmed between two steps, ahead of the cursor or behind it: the
    // generation moved, so nothing the result lacks is judged gone.
    let Taken::Partly(builder) =
        LivenessBuilder::start(&programmed, [], &generation).step(&programmed, 10)
    else {
        panic!("10 of 25 frontends is a part");
    };
    let mut more = keys.clone();
    more.push((
        FrontendKey::new(ip::<u32>([10, 0, 0, 0]), 80, Protocol::Tcp),
        FrontendKind::ClusterIp,
    ));
    programmed.sync(&web_frontends(&more), &mut dp);
    generation.advance();
    let Taken::Whole(live) = builder.step(&programmed, usize::MAX) else {
        panic!("no limit takes the rest");
    };
    assert!(!live.frontend_exists(ip::<u32>([10, 0, 0, 0]), 80u16.to_be(), IPPROTO_TCP));
    assert!(!live.current(), "a sync between the steps makes it stale");
}

fn a_flow_recreated_after_the_scan_is_not_deleted<A: WireAddr>() {
    // The scan saw an expired flow; before the delete, a new SYN re-created it (same key,
    // fresh entry). Collection must leave the new flow alone.
    let ((k, stale), (rk, r)) = flow::<A>(VIP, 40_000, IPPROTO_UDP, 0, 0, 120);
    let fresh = entry(at(BACKEND), 8080u16.to_be(), 0, 0);
    let mut fwd = Table {
        scanned: Some(vec![(k, stale)]),
        ..Table::default()
    };
    fwd.live.insert(k, fresh);
    let mut rev = Table::default();
    rev.live.insert(rk, r);
    let stats = collect(
        &Config::DEFAULT,
        NOW,
        &live::<A>(),
        &mut fwd,
        &mut rev,
        &mut Affinities::default(),
        CAPACITY,
    )
    .expect("collect");
    assert_eq!(stats.raced, 1);
    assert_eq!(fwd.live.get(&k), Some(&fresh));
    assert!(rev.live.contains_key(&rk), "its reply entry stays too");
}

fn a_flow_refreshed_between_check_and_delete_is_put_back<A: WireAddr>() {
    let ((k, stale), _) = flow::<A>(VIP, 40_000, IPPROTO_UDP, 0, 0, 120);
    let fresh = entry(at(BACKEND), 8080u16.to_be(), 0, 0);
    let mut table = Table {
        refresh_before_take: Some(fresh),
        ..Table::default()
    };
    table.live.insert(k, stale);
    assert!(!delete_if_unchanged(&mut table, &k, &stale).expect("delete"));
    assert_eq!(table.live.get(&k), Some(&fresh), "restored at once");
    // Without the race it is deleted.
    assert!(delete_if_unchanged(&mut table, &k, &fresh).expect("delete"));
    assert!(table.live.is_empty());
}

fn orphaned_reply_entries_go_only_once_timed_out<A: WireAddr>() {
    let mut rev = Table::<A>::default();
    let (_, (stale_key, stale_reply)) = flow(VIP, 1, IPPROTO_UDP, 0, 0, 40);
    let (_, (fresh_key, fresh_reply)) = flow(VIP, 2, IPPROTO_UDP, 0, 0, 5);
    rev.live.insert(stale_key, stale_reply);
    rev.live.insert(fresh_key, fresh_reply);
    let stats = collect(
        &Config::DEFAULT,
        NOW,
        &live::<A>(),
        &mut Table::default(),
        &mut rev,
        &mut Affinities::default(),
        CAPACITY,
    )
    .expect("collect");
    assert_eq!(stats.orphans, 1);
    assert_eq!(rev.live.keys().copied().collect::<Vec<_>>(), [fresh_key]);
}

/// One pass over `fwd` and `rev` with a reply table of 100 entries.
fn collect_in_reply_table_of_100<A: WireAddr>(fwd: &mut Table<A>, rev: &mut Table<A>) -> GcStats {
    collect(
        &Config::DEFAULT,
        NOW,
        &live::<A>(),
        fwd,
        rev,
        &mut Affinities::default(),
        100,
    )
    .expect("collect")
}

fn a_nearly_full_reply_table_drops_unanswered_flows_oldest_first<A: WireAddr>() {
    // 95 of 100 reply entries used: 10 answered flows, 85 unanswered SYNs of various ages.
    let mut fwd = Table::<A>::default();
    let mut rev = Table::default();
    for sport in 0..95u16 {
        let answered = sport < 10;
        let idle = if answered { 50 } else { u64::from(sport) % 50 };
        let rev_flags = if answered { CT_F_SEEN_REPLY } else { 0 };
        let ((k, f), (rk, r)) = flow(VIP, sport + 1, IPPROTO_TCP, 0, rev_flags, idle);
        fwd.live.insert(k, f);
        rev.live.insert(rk, r);
    }
    let stats = collect_in_reply_table_of_100(&mut fwd, &mut rev);
    assert_eq!(stats.early_dropped, 15, "down to 80% of the capacity");
    assert_eq!((fwd.live.len(), rev.live.len()), (80, 80));
    let answered_left = rev
        .live
        .values()
        .filter(|r| r.flags & CT_F_SEEN_REPLY != 0)
        .count();
    assert_eq!(
        answered_left, 10,
        "established flows are never dropped early"
    );
    let oldest_left = rev
        .live
        .values()
        .filter(|r| r.flags & CT_F_SEEN_REPLY == 0)
        .map(|r| NOW - r.last_seen_ns)
        .max()
        .expect("some left");
    assert!(
        oldest_left <= 46 * SEC,
        "the oldest went first ({oldest_left} ns idle left)"
    );
}

/// Early drop takes a flow's forward entry first and keeps both entries of a flow a packet
/// refreshed meanwhile: the datapath trusts a live forward entry to have its reply entry.
fn early_drop_never_leaves_a_forward_entry_without_its_reply_entry<A: WireAddr>() {
    let mut fwd = Table::<A>::default();
    let mut rev = Table::default();
    for sport in 0..95u16 {
        let ((k, f), (rk, r)) = flow(VIP, sport + 1, IPPROTO_TCP, 0, 0, 40);
        fwd.live.insert(k, f);
        rev.live.insert(rk, r);
    }
    // Every unanswered flow is a candidate; the one the datapath refreshes between the scan
    // and the delete is the first taken.
    let mut fresh = *fwd.live.values().next().expect("a flow");
    fresh.last_seen_ns = NOW;
    fwd.refresh_before_take = Some(fresh);
    let stats = collect_in_reply_table_of_100(&mut fwd, &mut rev);
    assert!(stats.raced >= 1, "the refreshed flow was skipped");
    for (k, f) in &fwd.live {
        let rkey = reply_key(k, f);
        assert!(
            rev.live.contains_key(&rkey),
            "a forward entry kept its reply entry"
        );
    }
    assert_eq!(fwd.live.len(), rev.live.len());
}

/// A masqueraded flow (source address and port rewritten towards its backend) is found by
/// its reply entry like any other: it is no orphan while live, and both its entries go
/// once it times out.
fn masqueraded_flows_find_their_reply_entries<A: WireAddr>() {
    let key = fwd_key::<A>(VIP, 40_000, IPPROTO_TCP);
    let masqueraded = |idle_s| {
        let mut fwd = entry(at(BACKEND), 8080u16.to_be(), 0, idle_s);
        fwd.alt_addr = at([198, 18, 9, 1]);
        fwd.alt_port = 41_000u16.to_be();
        let rkey = reply_key(&key, &fwd);
        let mut rev = entry(at(VIP), 80u16.to_be(), CT_F_SEEN_REPLY, idle_s);
        rev.alt_addr = key.saddr;
        rev.alt_port = key.sport;
        (fwd, rkey, rev)
    };
    // (idle seconds, flows left, reply entries left)
    for (idle_s, left) in [(10, 1), (25 * 3600, 0)] {
        let (fwd_entry, rkey, rev_entry) = masqueraded(idle_s);
        assert_eq!(
            rkey.daddr,
            at([198, 18, 9, 1]),
            "the reply goes to the node address"
        );
        let mut fwd = Table::default();
        fwd.live.insert(key, fwd_entry);
        let mut rev = Table::default();
        rev.live.insert(rkey, rev_entry);
        let stats = collect_now(&live::<A>(), &mut fwd, &mut rev, &mut Affinities::default());
        assert_eq!(stats.orphans, 0, "idle {idle_s}s");
        assert_eq!(
            (fwd.live.len(), rev.live.len()),
            (left, left),
            "idle {idle_s}s"
        );
    }
}

#[test]
fn a_pass_adds_up_both_families() {
    let v4 = GcStats {
        flows: 3,
        replies: 2,
        expired: 1,
        affinities: 4,
        ..GcStats::default()
    };
    let v6 = GcStats {
        flows: 5,
        replies: 5,
        service_gone: 2,
        raced: 1,
        ..GcStats::default()
    };
    assert_eq!(
        GcPass { v4, v6 }.total(),
        GcStats {
            flows: 8,
            replies: 7,
            expired: 1,
            service_gone: 2,
            raced: 1,
            affinities: 4,
            ..GcStats::default()
        }
    );
}

/// `desired` with one frontend named web per key, each with one endpoint at `backend` (of
/// its key's family).
fn web_frontends(
    keys: &[(crate::model::FrontendKey, crate::model::FrontendKind)],
) -> crate::model::Desired {
    use crate::model::{Endpoint, fixtures};

    keys.iter()
        .map(|&(key, kind)| {
            let backend = if key.addr.is_ipv6() {
                ip::<kproxy_common::addr::In6Addr>(BACKEND)
            } else {
                ip::<u32>(BACKEND)
            };
            let endpoint = Endpoint {
                addr: backend,
                port: 8080,
            };
            (key, fixtures::frontend("web", kind, vec![endpoint]))
        })
        .collect()
}

/// What collection is told about programmed frontends: a NodePort flow's address is one of
/// the node's NodePort addresses while the NodePort's key is the unspecified address, and
/// an externalTrafficPolicy Local frontend's two entries are one frontend.
fn node_port_flows_are_live_on_node_port_addresses<A: WireAddr>() {
    use crate::{
        model::{FrontendKey, FrontendKind, Protocol, Scope},
        sync::fake::FakeDatapath,
    };

    let port = |p: u16| p.to_be();
    let node_port = FrontendKey::node_port(A::IPV6, 30080, Protocol::Tcp);
    let lb = FrontendKey::new(ip::<A>([192, 0, 2, 10]), 80, Protocol::Tcp);
    let cluster_ip = FrontendKey::new(ip::<A>(VIP), 80, Protocol::Tcp);
    let mut desired = web_frontends(&[
        (cluster_ip, FrontendKind::ClusterIp),
        (node_port, FrontendKind::NodePort),
        (
            node_port.with_scope(Scope::Internal),
            FrontendKind::NodePort,
        ),
        (lb.with_scope(Scope::Internal), FrontendKind::LoadBalancer),
    ]);
    let mut dp = FakeDatapath::default();
    let mut programmed = Programmed::new(16);
    programmed.sync(&desired, &mut dp);
    let node_ports = [ip::<A>([192, 168, 0, 2])];
    let live = ProgrammedLiveness::new(&programmed, node_ports, &Generation::default());
    // (flow's VIP, port, protocol, live)
    let cases = [
        (ip::<A>(VIP), 80, IPPROTO_TCP, true),
        (ip::<A>(VIP), 81, IPPROTO_TCP, false),
        (ip::<A>(VIP), 80, IPPROTO_UDP, false),
        // The NodePort, reached on a node address that takes NodePorts...
        (ip::<A>([192, 168, 0, 2]), 30080, IPPROTO_TCP, true),
        // ...not on another address, port or protocol, nor as the unspecified address.
        (ip::<A>([192, 168, 0, 3]), 30080, IPPROTO_TCP, false),
        (ip::<A>([192, 168, 0, 2]), 30081, IPPROTO_TCP, false),
        (ip::<A>([192, 168, 0, 2]), 30080, IPPROTO_UDP, false),
        (A::UNSPECIFIED.to_ip(), 30080, IPPROTO_TCP, false),
        // A frontend whose only entry is the internal one is still a frontend.
        (ip::<A>([192, 0, 2, 10]), 80, IPPROTO_TCP, true),
    ];
    for (vip, p, proto, want) in cases {
        assert_eq!(
            live.frontend_exists(vip, port(p), proto),
            want,
            "{vip}:{p}/{proto}"
        );
    }

    // A flow to the NodePort survives collection; once the NodePort is gone, it is swept.
    let key = FlowKeyOf::new(
        at::<A>(CLIENT),
        at([192, 168, 0, 2]),
        40_000u16.to_be(),
        port(30080),
        IPPROTO_TCP,
    );
    let fwd = entry(at(BACKEND), 8080u16.to_be(), CT_F_SEEN_REPLY, 10);
    let cfg = Config::DEFAULT;
    assert_eq!(judge(&cfg, NOW, &live, &key, &fwd, None), Verdict::Keep);
    desired.remove(&node_port);
    desired.remove(&node_port.with_scope(Scope::Internal));
    programmed.sync(&desired, &mut dp);
    let live = ProgrammedLiveness::new(&programmed, node_ports, &Generation::default());
    assert_eq!(
        judge(&cfg, NOW, &live, &key, &fwd, None),
        Verdict::ServiceGone
    );
    assert!(live.backend_exists(dp.backends.keys().copied().next().expect("a backend")));
}

/// NodePorts programmed (of IPv6?), and (address, whether they are live there).
type NodePortCase<'a> = (&'a [bool], [(IpAddr, bool); 2]);

/// A NodePort answers on the NodePort addresses of its own family only: kube-proxy's
/// proxier of each family serves its own NodePorts.
#[test]
fn a_node_port_is_live_on_its_own_familys_node_port_addresses_only() {
    use crate::{
        model::{FrontendKey, FrontendKind, Protocol},
        sync::fake::FakeDatapath,
    };

    let v4: IpAddr = "192.168.0.2".parse().expect("address");
    let v6: IpAddr = "2001:db8::2".parse().expect("address");
    let cases: [NodePortCase<'_>; 3] = [
        (&[false], [(v4, true), (v6, false)]),
        (&[true], [(v4, false), (v6, true)]),
        (&[false, true], [(v4, true), (v6, true)]),
    ];
    for (families, want) in cases {
        let keys: Vec<_> = families
            .iter()
            .map(|&v6| {
                (
                    FrontendKey::node_port(v6, 30080, Protocol::Tcp),
                    FrontendKind::NodePort,
                )
            })
            .collect();
        let mut programmed = Programmed::new(16);
        programmed.sync(&web_frontends(&keys), &mut FakeDatapath::default());
        let live = ProgrammedLiveness::new(&programmed, [v4, v6], &Generation::default());
        for (addr, live_there) in want {
            assert_eq!(
                live.frontend_exists(addr, 30080u16.to_be(), IPPROTO_TCP),
                live_there,
                "NodePorts {families:?} on {addr}"
            );
        }
    }
}
