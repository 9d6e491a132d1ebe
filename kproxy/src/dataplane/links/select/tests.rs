//! Patterns, roles and plans, from names and indexes alone.

use std::collections::{BTreeMap, BTreeSet};

use super::*;

fn pattern(text: &str) -> IfacePattern {
    IfacePattern::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn patterns(texts: &[&str]) -> IfacePatterns {
    IfacePatterns(texts.iter().map(|t| pattern(t)).collect())
}

#[test]
fn literal_names_match_only_themselves() {
    let eth0 = pattern("eth0");
    assert!(eth0.is_literal());
    assert!(eth0.matches("eth0"));
    for other in ["eth", "eth00", "eth1", "Eth0", "xeth0", ""] {
        assert!(!eth0.matches(other), "{other}");
    }
}

#[test]
fn star_matches_any_run_including_none() {
    let veth = pattern("veth*");
    assert!(!veth.is_literal());
    for name in ["veth", "veth0", "veth1a2b3c4d", "vethvethveth"] {
        assert!(veth.matches(name), "{name}");
    }
    for name in ["vet", "xveth0", "eth0", "Veth0"] {
        assert!(!veth.matches(name), "{name}");
    }
    assert!(pattern("*").matches("lo"));
    assert!(pattern("*").matches("eth0"));
    assert!(pattern("*0").matches("eth0"));
    assert!(!pattern("*0").matches("eth1"));
    assert!(pattern("*th*").matches("eth0"));
    assert!(pattern("e*0").matches("e0"));
    assert!(pattern("**").matches(""));
}

#[test]
fn star_backtracks_past_false_starts() {
    // The first `b` after `a*` is not the right one: the star must take more.
    assert!(pattern("a*bc").matches("abxbc"));
    assert!(pattern("a*b*c").matches("aXbYbZc"));
    assert!(!pattern("a*bc").matches("abxbd"));
    assert!(pattern("*ab").matches("aaab"));
    assert!(!pattern("*ab").matches("aaba"));
    assert!(pattern("k*c*1").matches("kpc1c1"));
}

#[test]
fn question_mark_matches_exactly_one_character() {
    let p = pattern("eth?");
    assert!(p.matches("eth0"));
    assert!(p.matches("ethX"));
    assert!(!p.matches("eth"));
    assert!(!p.matches("eth10"));
    assert!(pattern("?*").matches("a"));
    assert!(!pattern("?*").matches(""));
    assert!(pattern("v?th*").matches("veth0"));
    // Characters, not bytes.
    assert!(pattern("é?").matches("éa"));
    assert!(pattern("?").matches("é"));
}

#[test]
fn bad_names_are_refused_with_the_reason() {
    for (text, why) in [
        ("", "empty"),
        ("eth 0", "cannot contain"),
        ("a/b", "cannot contain"),
        ("eth0:1", "cannot contain"),
        ("abcdefghijklmnop", "at most 15"),
        ("abcdefghijklmnop*", "at most 15"),
    ] {
        let err = IfacePattern::parse(text).expect_err(text);
        assert!(err.contains(why), "{text:?}: {err}");
    }
    // Fifteen characters fit, and wildcards may stand for nothing.
    assert!(IfacePattern::parse("abcdefghijklmno").is_ok());
    assert!(IfacePattern::parse("abcdefghijklmno*").is_ok());
    assert!(IfacePattern::parse("abcdefghijklmn?").is_ok());
}

#[test]
fn any_of_several_patterns() {
    let p = patterns(&["eth0", "veth*", "cali*", "lxc*"]);
    for name in ["eth0", "veth12", "cali3f", "lxc_health"] {
        assert!(p.matches(name), "{name}");
    }
    for name in ["eth1", "lo", "docker0", "cilium_host"] {
        assert!(!p.matches(name), "{name}");
    }
    assert!(!IfacePatterns::default().matches("eth0"));
}

fn selection(tc: &[&str], xdp: &[&str]) -> Selection {
    Selection {
        tc: patterns(tc),
        xdp: patterns(xdp),
        pod: None,
    }
}

const TC: Role = Role {
    tc: Tc::IngressEgress,
    xdp: false,
    pod: false,
};
const LO: Role = Role {
    tc: Tc::Ingress,
    xdp: false,
    pod: false,
};

#[test]
fn roles_follow_the_patterns_and_lo_always_gets_ingress() {
    let s = selection(&["eth0", "veth*"], &["eth1"]);
    assert_eq!(s.role("eth0"), Some(TC));
    assert_eq!(s.role("veth9"), Some(TC));
    assert_eq!(
        s.role("eth1"),
        Some(Role {
            tc: Tc::Off,
            xdp: true,
            pod: false
        })
    );
    assert_eq!(s.role("lo"), Some(LO));
    assert_eq!(s.role("docker0"), None);

    // Selected by both: TC on ingress and egress, and XDP.
    let both = selection(&["eth*"], &["eth1"]);
    assert_eq!(
        both.role("eth1"),
        Some(Role {
            tc: Tc::IngressEgress,
            xdp: true,
            pod: false
        })
    );
    // `lo` named by a pattern gets what the pattern says, as when named explicitly.
    assert_eq!(selection(&["*"], &[]).role("lo"), Some(TC));
    assert_eq!(
        selection(&[], &["lo"]).role("lo"),
        Some(Role {
            tc: Tc::Off,
            xdp: true,
            pod: false
        })
    );
}

#[test]
fn pod_interfaces_are_marked_only_where_kproxy_runs() {
    let mut s = selection(&["eth0", "veth*", "cbr0"], &[]);
    s.pod = Some(PodInterfaces::name_prefix("veth"));
    assert_eq!(s.role("veth1"), Some(Role { pod: true, ..TC }));
    assert_eq!(s.role("eth0"), Some(TC));
    // A matching interface that no pattern selects gets nothing at all.
    s.tc = patterns(&["eth0"]);
    assert_eq!(s.role("veth1"), None);

    let mut bridged = selection(&["eth0", "cbr0"], &[]);
    bridged.pod = Some(PodInterfaces::bridge("cbr0"));
    assert_eq!(bridged.role("cbr0"), Some(Role { pod: true, ..TC }));
    assert_eq!(bridged.role("cbr00"), None);
    assert_eq!(bridged.role("eth0"), Some(TC));
    assert_eq!(bridged.role("lo"), Some(LO));
}

#[test]
fn unmatched_patterns_are_named() {
    let s = selection(&["eth0", "veth*", "cali*"], &["eno1"]);
    let unmatched: Vec<&str> = s
        .unmatched(&["lo", "eth0", "veth1"])
        .into_iter()
        .map(IfacePattern::as_str)
        .collect();
    assert_eq!(unmatched, ["cali*", "eno1"]);
}

fn links(list: &[(u32, &str)]) -> BTreeMap<u32, String> {
    list.iter().map(|(i, n)| (*i, (*n).to_owned())).collect()
}

fn served(list: &[(u32, &str, Role)]) -> BTreeMap<u32, (String, Role)> {
    list.iter()
        .map(|(i, n, r)| (*i, ((*n).to_owned(), *r)))
        .collect()
}

fn attach(list: &[(u32, &str, Role)]) -> Vec<(Link, Role)> {
    list.iter()
        .map(|(i, n, r)| (Link::new(*i, *n), *r))
        .collect()
}

#[test]
fn a_first_plan_attaches_every_selected_interface() {
    let s = selection(&["eth0", "veth*"], &[]);
    let now = links(&[
        (1, "lo"),
        (2, "eth0"),
        (3, "docker0"),
        (7, "veth1"),
        (9, "veth2"),
    ]);
    let plan = plan(&now, &BTreeMap::new(), &BTreeSet::new(), &s);
    assert!(plan.detach.is_empty());
    assert_eq!(
        plan.attach,
        attach(&[
            (1, "lo", LO),
            (2, "eth0", TC),
            (7, "veth1", TC),
            (9, "veth2", TC)
        ])
    );
}

#[test]
fn nothing_to_do_when_everything_selected_is_served() {
    let s = selection(&["veth*"], &[]);
    let now = links(&[(1, "lo"), (3, "eth0"), (7, "veth1")]);
    let done = served(&[(1, "lo", LO), (7, "veth1", TC)]);
    assert!(plan(&now, &done, &BTreeSet::new(), &s).is_empty());
}

#[test]
fn new_interfaces_are_attached_and_vanished_ones_detached() {
    let s = selection(&["veth*"], &[]);
    let done = served(&[(1, "lo", LO), (7, "veth1", TC), (8, "veth2", TC)]);
    let now = links(&[(1, "lo"), (8, "veth2"), (12, "veth3"), (13, "other")]);
    let plan = plan(&now, &done, &BTreeSet::new(), &s);
    assert_eq!(plan.detach, [(Link::new(7, "veth1"), Leaving::Vanished)]);
    assert_eq!(plan.attach, attach(&[(12, "veth3", TC)]));
}

#[test]
fn an_interface_recreated_under_its_name_is_attached_again() {
    let s = selection(&["veth*"], &[]);
    let done = served(&[(1, "lo", LO), (7, "veth1", TC)]);
    // Deleted and created again: same name, new index.
    let now = links(&[(1, "lo"), (15, "veth1")]);
    let plan = plan(&now, &done, &BTreeSet::new(), &s);
    assert_eq!(plan.detach, [(Link::new(7, "veth1"), Leaving::Vanished)]);
    assert_eq!(plan.attach, attach(&[(15, "veth1", TC)]));
}

#[test]
fn a_renamed_interface_leaves_under_its_old_name() {
    let s = selection(&["veth*", "cali*"], &[]);
    let done = served(&[(7, "veth1", TC), (8, "veth2", TC)]);
    // veth1 becomes cali1 (still selected), veth2 becomes tmp2 (no longer selected).
    let now = links(&[(7, "cali1"), (8, "tmp2")]);
    let plan = plan(&now, &done, &BTreeSet::new(), &s);
    assert_eq!(
        plan.detach,
        [
            (Link::new(7, "veth1"), Leaving::Renamed),
            (Link::new(8, "veth2"), Leaving::Renamed)
        ]
    );
    assert_eq!(plan.attach, attach(&[(7, "cali1", TC)]));
}

#[test]
fn a_changed_role_detaches_and_attaches_again() {
    // The pod matcher is fixed for the agent's life, but a plan must not keep a stale role.
    let mut s = selection(&["veth*"], &[]);
    s.pod = Some(PodInterfaces::name_prefix("veth"));
    let done = served(&[(7, "veth1", TC)]);
    let now = links(&[(7, "veth1")]);
    let plan = plan(&now, &done, &BTreeSet::new(), &s);
    assert_eq!(plan.detach, [(Link::new(7, "veth1"), Leaving::Unselected)]);
    assert_eq!(
        plan.attach,
        attach(&[(7, "veth1", Role { pod: true, ..TC })])
    );

    let unselected = selection(&["eth*"], &[]);
    let plan = super::plan(&now, &done, &BTreeSet::new(), &unselected);
    assert_eq!(plan.detach, [(Link::new(7, "veth1"), Leaving::Unselected)]);
    assert!(plan.attach.is_empty());
}

#[test]
fn failed_interfaces_wait_until_they_are_released() {
    let s = selection(&["veth*"], &[]);
    let now = links(&[(7, "veth1"), (8, "veth2")]);
    let held: BTreeSet<Link> = [Link::new(7, "veth1")].into();
    let plan1 = plan(&now, &BTreeMap::new(), &held, &s);
    assert_eq!(plan1.attach, attach(&[(8, "veth2", TC)]));
    // Held back by index and name: the same name on a new index is another interface.
    let recreated = links(&[(9, "veth1")]);
    let plan2 = plan(&recreated, &BTreeMap::new(), &held, &s);
    assert_eq!(plan2.attach, attach(&[(9, "veth1", TC)]));
}
