//! `kproxy cleanup --kube-proxy-leftovers` against what the real kube-proxy (v1.37.2, from the
//! test bed's Kubernetes cache) writes, in a bed's node namespace with the real control plane
//! and a few Services (ClusterIP with an endpoint and without, NodePort, externalTrafficPolicy
//! Local). kube-proxy runs in its iptables mode on the nf_tables backend (what `iptables` is
//! on these machines: `iptables --version` says `nf_tables`), then in its nftables mode, then
//! in its iptables mode again on the legacy backend (`iptables` pointed at iptables-legacy
//! through its PATH). Each time it is stopped and the cleanup runs: nothing of kube-proxy's is
//! left but what its own cleanup leaves too (kubelet's KUBE-FIREWALL, which kube-proxy also
//! writes), everything of others stays (rules in every table, a chain named like
//! kube-proxy's, an nftables table, an ip set), and a second run finds nothing.
//!
//! kube-proxy's IPVS mode cannot run on this kernel (no IPVS), so its ip sets are made by
//! hand; its `kube-ipvs0` dummy cannot be (no dummy driver either): a veth of that name shows
//! that an interface which is not kube-proxy's dummy stays.

mod support;

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Output, Stdio},
    time::Duration,
};

use kproxy_testbed::{
    LoggedProcess, Netns, Topology, TopologyOptions, kube_proxy, kubernetes::pki,
    require_privileges,
};
use serde_json::json;
use support::{
    agent::{kproxy_bin, wait_until},
    cluster::{ClusterBed, NODE, service},
};

/// The comment of every rule of the test's own.
const SENTINEL: &str = "kproxy-test-sentinel";
/// The test's nftables table.
const SENTINEL_TABLE: &str = "kproxy-sentinel";
/// A chain of someone else's named like kube-proxy's (kube-router names its chains
/// KUBE-ROUTER-*).
const FOREIGN_CHAIN: &str = "KUBE-ROUTER-SENTINEL";
/// An ip set of someone else's named like kube-proxy's (kube-router's KUBE-DST-*).
const FOREIGN_SET: &str = "KUBE-DST-SENTINEL";
/// Two of kube-proxy's IPVS-mode sets: an IPv4 one and its IPv6 twin.
const KUBE_PROXY_SETS: [(&str, &str); 2] =
    [("KUBE-CLUSTER-IP", "inet"), ("KUBE-6-CLUSTER-IP", "inet6")];
/// kubelet's chain, which kube-proxy's iptables mode writes too and its cleanup leaves.
const KUBELET_CHAIN: &str = "KUBE-FIREWALL";
const IPVS_DUMMY: &str = "kube-ipvs0";
/// Every iptables backend of both families, by the name of its `-save`/`-restore` programs.
const IPTABLES: [&str; 4] = [
    "iptables-nft",
    "ip6tables-nft",
    "iptables-legacy",
    "ip6tables-legacy",
];
/// The Services kube-proxy programs, by name; each shows in its rules (comments, chain names).
const SERVICES: [&str; 4] = ["web", "empty", "nodeport", "local"];
/// A cold kube-proxy's first full sync on two busy cores.
const PROGRAMMED: Duration = Duration::from_mins(2);

/// How kube-proxy writes its state in one round.
#[derive(Clone, Copy, Debug)]
enum Writer {
    IptablesNft,
    Nftables,
    IptablesLegacy,
}

impl Writer {
    fn mode(self) -> &'static str {
        match self {
            Writer::IptablesNft | Writer::IptablesLegacy => "iptables",
            Writer::Nftables => "nftables",
        }
    }

    /// The state this writer puts kube-proxy's rules into.
    fn state(self, ns: &Netns) -> String {
        match self {
            Writer::IptablesNft => save(ns, "iptables-nft") + &save(ns, "ip6tables-nft"),
            Writer::IptablesLegacy => save(ns, "iptables-legacy") + &save(ns, "ip6tables-legacy"),
            Writer::Nftables => text(ns, "nft", &["list", "ruleset"]),
        }
    }
}

#[test]
fn cleanup_removes_what_the_real_kube_proxy_leaves_and_nothing_else() {
    if !require_privileges("cleanup_removes_what_the_real_kube_proxy_leaves_and_nothing_else") {
        return;
    }
    let cluster = ClusterBed::new(TopologyOptions::default());
    let b = cluster.backends();
    let app = json!({"app": "web"});
    cluster.apply(&service("web", &app, &json!({})));
    cluster.apply(&service("empty", &json!({"app": "none"}), &json!({})));
    cluster.apply(&service("nodeport", &app, &json!({"type": "NodePort"})));
    cluster.apply(&service(
        "local",
        &app,
        &json!({"type": "NodePort", "externalTrafficPolicy": "Local"}),
    ));
    cluster.ready_pod("web-0", &app, b[0]);

    let node = &cluster.topo.node;
    add_others_state(node);
    let others = others_state(node);
    let legacy_path = legacy_iptables_path(&cluster.dir.path().join("legacy-bin"));
    for writer in [
        Writer::IptablesNft,
        Writer::Nftables,
        Writer::IptablesLegacy,
    ] {
        let path = match writer {
            Writer::IptablesLegacy => legacy_path.clone(),
            _ => std::env::var_os("PATH").unwrap_or_default(),
        };
        let written = run_kube_proxy(&cluster, writer, &path);
        let first = cleanup(node);
        let first_out = stdout(&first);
        assert!(
            first.status.success(),
            "{writer:?}: the cleanup failed: {}",
            shown(&first)
        );
        expect_reported(&first_out, &written, writer);
        let left = kube_proxy_lines(node);
        assert!(
            left.is_empty(),
            "{writer:?}: kube-proxy's state left:\n{}\ncleanup said:\n{first_out}",
            left.join("\n")
        );
        assert_eq!(
            others_state(node),
            others,
            "{writer:?}: others' state after the cleanup"
        );
        assert!(
            !set_names(node)
                .iter()
                .any(|s| KUBE_PROXY_SETS.iter().any(|(k, _)| k == s)),
            "{writer:?}: kube-proxy's ip sets left"
        );

        let second = cleanup(node);
        assert!(
            second.status.success(),
            "{writer:?}: the second cleanup failed: {}",
            shown(&second)
        );
        assert!(
            stdout(&second).contains("kube-proxy leftovers: none found, nothing removed"),
            "{writer:?}: the second cleanup found something:\n{}",
            stdout(&second)
        );
        assert_eq!(
            others_state(node),
            others,
            "{writer:?}: others' state after a second run"
        );
    }
}

/// Starts kube-proxy as `writer` with `path`, waits until every Service is in its rules,
/// stops it, and returns the whole netfilter state it left.
fn run_kube_proxy(cluster: &ClusterBed, writer: Writer, path: &OsString) -> Vec<(String, String)> {
    let node = &cluster.topo.node;
    let log = cluster
        .dir
        .path()
        .join(format!("kube-proxy-{writer:?}.log"));
    let path = path.to_str().expect("PATH is UTF-8");
    let mut process = kube_proxy::start(
        node,
        writer.mode(),
        &cluster.plane.kubeconfig(pki::KUBE_PROXY),
        NODE,
        &[("PATH", path)],
        &log,
    )
    .unwrap_or_else(|e| panic!("starting kube-proxy: {e:#}"));
    wait_until(
        &format!("kube-proxy's {writer:?} rules"),
        PROGRAMMED,
        || {
            check_running(&mut process);
            let state = writer.state(node);
            SERVICES
                .iter()
                .all(|s| state.contains(&format!("default/{s}")))
                .then_some(())
        },
    );
    process
        .terminate(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("stopping kube-proxy: {e:#}"));
    let state = netfilter_state(node);
    assert!(
        !kube_proxy_lines(node).is_empty(),
        "{writer:?}: kube-proxy wrote nothing the test recognises:\n{}",
        shown_state(&state)
    );
    state
}

fn check_running(process: &mut LoggedProcess) {
    if let Err(e) = process.check_running() {
        panic!("kube-proxy exited: {e:#}");
    }
}

/// The cleanup reported each backend and nftables table kube-proxy had written to.
fn expect_reported(out: &str, written: &[(String, String)], writer: Writer) {
    for (source, state) in written {
        let backend = source.trim_end_matches("-save");
        if IPTABLES.contains(&backend) && state.contains(":KUBE-SERVICES ") {
            let line = format!("{backend} nat: deleted");
            assert!(out.contains(&line), "{writer:?}: no `{line}` in:\n{out}");
        }
        for family in ["ip", "ip6"] {
            if state.contains(&format!("table {family} kube-proxy {{")) {
                let line = format!("nftables: deleted table {family} kube-proxy");
                assert!(out.contains(&line), "{writer:?}: no `{line}` in:\n{out}");
            }
        }
    }
    assert!(
        out.contains("kube-proxy leftovers: removed "),
        "{writer:?}: {out}"
    );
    assert!(
        out.contains(&format!("IPVS: {IPVS_DUMMY} left alone: a veth interface")),
        "{writer:?}: {out}"
    );
    if !Path::new("/proc/net/ip_vs").exists() {
        assert!(
            out.contains("IPVS: not in this kernel"),
            "{writer:?}: {out}"
        );
    }
}

/// Every iptables backend's rules, nftables' ruleset, the ip sets and the interfaces, each
/// as (the command that shows it, its output).
fn netfilter_state(ns: &Netns) -> Vec<(String, String)> {
    let mut state: Vec<(String, String)> = IPTABLES
        .iter()
        .map(|backend| (format!("{backend}-save"), save(ns, backend)))
        .collect();
    for (program, args) in [
        ("nft", &["list", "ruleset"][..]),
        ("ipset", &["list", "-n"]),
        ("ip", &["-o", "link", "show"]),
    ] {
        state.push((
            format!("{program} {}", args.join(" ")),
            text(ns, program, args),
        ));
    }
    state
}

fn shown_state(state: &[(String, String)]) -> String {
    state
        .iter()
        .map(|(source, text)| format!("== {source}:\n{text}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The lines of the netfilter state that are kube-proxy's: naming a KUBE- chain or set, or
/// kube-proxy's nftables tables; kubelet's chain and the test's own are not.
fn kube_proxy_lines(ns: &Netns) -> Vec<String> {
    netfilter_state(ns)
        .iter()
        .flat_map(|(_, text)| text.lines())
        .filter(|l| l.contains("KUBE-") || l.contains("kube-proxy"))
        .filter(|l| {
            ![KUBELET_CHAIN, FOREIGN_CHAIN, FOREIGN_SET]
                .iter()
                .any(|n| l.contains(n))
        })
        .map(str::to_owned)
        .collect()
}

/// What the test makes as someone else would: in every iptables backend, rules with
/// [`SENTINEL`] in the built-in chains kube-proxy uses and a [`FOREIGN_CHAIN`] jumped to; an
/// nftables table; ip sets, kube-proxy's and another's; an interface named kube-ipvs0 that
/// is not a dummy.
fn add_others_state(ns: &Netns) {
    for backend in IPTABLES {
        let addr = if backend.starts_with("ip6") {
            "2001:db8:250::1/128"
        } else {
            "198.18.250.1/32"
        };
        let rule = format!("-s {addr} -m comment --comment {SENTINEL}");
        let script = format!(
            "*nat\n-A PREROUTING {rule} -j RETURN\n-A OUTPUT {rule} -j RETURN\n\
             -A POSTROUTING {rule} -j RETURN\nCOMMIT\n\
             *filter\n:{FOREIGN_CHAIN} - [0:0]\n-A {FOREIGN_CHAIN} {rule} -j RETURN\n\
             -A INPUT {rule} -j {FOREIGN_CHAIN}\n-A FORWARD {rule} -j ACCEPT\n\
             -A OUTPUT {rule} -j ACCEPT\nCOMMIT\n\
             *mangle\n-A PREROUTING {rule} -j RETURN\nCOMMIT\n"
        );
        feed(ns, &format!("{backend}-restore"), &["--noflush"], &script);
    }
    let table = format!(
        "table ip {SENTINEL_TABLE} {{\n chain input {{\n  type filter hook input priority 0; \
         policy accept;\n  ip saddr 198.18.250.1 counter accept comment \"{SENTINEL}\"\n }}\n}}\n"
    );
    feed(ns, "nft", &["-f", "-"], &table);
    for (set, family) in KUBE_PROXY_SETS {
        text(
            ns,
            "ipset",
            &["create", set, "hash:ip,port", "family", family],
        );
    }
    text(ns, "ipset", &["create", FOREIGN_SET, "hash:ip"]);
    ns.ip(&[
        "link",
        "add",
        IPVS_DUMMY,
        "type",
        "veth",
        "peer",
        "name",
        "kpt-ipvs-peer",
    ])
    .expect("a veth named kube-ipvs0");
}

/// What of [`add_others_state`] shows now: the test's rules and chain in each backend, its
/// nftables table, the other's ip set, the kube-ipvs0 veth.
fn others_state(ns: &Netns) -> Vec<String> {
    let mut lines: Vec<String> = IPTABLES
        .iter()
        .flat_map(|backend| {
            save(ns, backend)
                .lines()
                .filter(|l| l.contains(SENTINEL) || l.contains(FOREIGN_CHAIN))
                .map(|l| format!("{backend}: {l}"))
                .collect::<Vec<_>>()
        })
        .collect();
    lines.extend(
        text(ns, "nft", &["list", "table", "ip", SENTINEL_TABLE])
            .lines()
            .map(str::to_owned),
    );
    lines.extend(set_names(ns).into_iter().filter(|s| s == FOREIGN_SET));
    lines.extend(
        text(ns, "ip", &["-o", "link", "show", IPVS_DUMMY])
            .split_whitespace()
            .nth(1)
            .map(str::to_owned),
    );
    lines
}

fn set_names(ns: &Netns) -> Vec<String> {
    text(ns, "ipset", &["list", "-n"])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A directory where `iptables`, `ip6tables` and their `-save`/`-restore` are the legacy
/// backend's programs, first in a PATH that is otherwise the test's: kube-proxy then writes
/// legacy tables, as it does in an image whose iptables wrapper chose legacy.
fn legacy_iptables_path(dir: &Path) -> OsString {
    std::fs::create_dir_all(dir).expect("the legacy iptables directory");
    for family in ["iptables", "ip6tables"] {
        for suffix in ["", "-save", "-restore"] {
            let target = find_program(&format!("{family}-legacy{suffix}"));
            std::os::unix::fs::symlink(target, dir.join(format!("{family}{suffix}")))
                .expect("a symlink to the legacy iptables");
        }
    }
    let mut path = OsString::from(dir);
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    path
}

fn find_program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed (cargo xtask test installs iptables)"))
}

/// `kproxy cleanup --kube-proxy-leftovers` in `ns`, with the test's PATH.
fn cleanup(ns: &Netns) -> Output {
    ns.command(kproxy_bin())
        .args(["cleanup", "--kube-proxy-leftovers"])
        .env("NO_COLOR", "1")
        .output()
        .expect("running kproxy cleanup")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn shown(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout(out),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn save(ns: &Netns, backend: &str) -> String {
    text(ns, &format!("{backend}-save"), &[])
}

/// Runs `program args` in `ns`; its standard output, or a panic with its error.
fn text(ns: &Netns, program: &str, args: &[&str]) -> String {
    let out = ns
        .command(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", shown(&out));
    stdout(&out)
}

/// Runs `program args` in `ns` with `input` on its standard input.
fn feed(ns: &Netns, program: &str, args: &[&str], input: &str) {
    use std::io::Write;
    let mut child = ns
        .command(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.as_bytes())
        .expect("writing the input");
    let out = child.wait_with_output().expect("waiting for it");
    assert!(
        out.status.success(),
        "{program} {args:?} <<\n{input}\n{}",
        shown(&out)
    );
}

/// A missing program is named with its package, and nothing is changed: kube-proxy-like state
/// the iptables programs that are there could remove stays.
#[test]
fn a_missing_program_stops_the_cleanup_before_it_changes_anything() {
    if !require_privileges("a_missing_program_stops_the_cleanup_before_it_changes_anything") {
        return;
    }
    Topology::sweep_leftovers();
    let ns = Netns::create(&format!("kpt-{}-kpl", std::process::id())).expect("a namespace");
    let state = "*nat\n:KUBE-SERVICES - [0:0]\n\
                 -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
                 COMMIT\n";
    feed(&ns, "iptables-nft-restore", &["--noflush"], state);
    let before = save(&ns, "iptables-nft");

    // Every program but nft.
    let dir = tempfile::tempdir().expect("a temp dir");
    for backend in IPTABLES {
        for suffix in ["-save", "-restore"] {
            let name = format!("{backend}{suffix}");
            std::os::unix::fs::symlink(find_program(&name), dir.path().join(&name))
                .expect("a symlink");
        }
    }
    std::os::unix::fs::symlink(find_program("ipset"), dir.path().join("ipset")).expect("a symlink");
    let out = ns
        .command(kproxy_bin())
        .args(["cleanup", "--kube-proxy-leftovers"])
        .env("PATH", dir.path())
        .output()
        .expect("running kproxy cleanup");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", shown(&out));
    assert!(
        stderr.contains("nft (Debian package nftables)") && stderr.contains("nothing was changed"),
        "{}",
        shown(&out)
    );
    assert!(
        !stderr.contains("iptables"),
        "only nft is missing: {}",
        shown(&out)
    );
    assert_eq!(
        strip_dates(&save(&ns, "iptables-nft")),
        strip_dates(&before),
        "the iptables state after a refused cleanup"
    );
}

/// iptables-save output without its `# Generated`/`# Completed` comment lines (they carry
/// the time).
fn strip_dates(saved: &str) -> String {
    saved
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}
