//! Hitless restart, proven under load: while a client keeps opening TCP connections, pinging
//! on long-lived ones and streaming UDP requests through ClusterIP VIPs, the agent is killed
//! and started again (same manifests, then changed ones) and upgraded to other programs over
//! the same pinned state. Not one connection may fail, no established flow may reset or stall
//! over 100 ms, and no UDP reply may be lost.

mod support;

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    ops::Range,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use kproxy::dataplane::load::TEST_OBJECT_ENV;
use kproxy_testbed::{
    LoadConfig, LoadReport, LoadRun, TopologyOptions,
    load::{self, ms, secs},
    require_privileges,
    topology::vip,
};
use support::{
    agent::{Agent, Bed, TCP_PORT, UDP_PORT},
    links::{LinkProgram, link_programs},
    manifests::{documents, service, slice},
};

/// The longest an established session may go without a successful exchange.
const MAX_STALL: Duration = Duration::from_millis(100);
/// Load between two phases (and before the first and after the last).
const BETWEEN: Duration = Duration::from_millis(400);
/// The load ends by itself after this, whatever happens to the test.
const LOAD_LIMIT: Duration = Duration::from_secs(45);
/// Restarts in phase 1.
const KILLS: usize = 3;
/// How long the agent may take to program and attach (it is ready in well under a second).
const READY: Duration = Duration::from_secs(10);

/// `web` (TCP, under load), `dns` (UDP, under load) and `other` (TCP, not under load) on the
/// bed's backends. `changed` adds a Service `extra` and moves `other` to other endpoints; the
/// two Services under load stay exactly as they are.
fn manifests(bed: &Bed, changed: bool) -> String {
    let all = bed.backends();
    let mut docs = vec![
        service("web", vip(10), &[("http", 80, "TCP")], None),
        slice("web-1", "web", &[("http", TCP_PORT, "TCP")], &all),
        service("dns", vip(53), &[("dns", 53, "UDP")], None),
        slice("dns-1", "dns", &[("dns", UDP_PORT, "UDP")], &all),
        service("other", vip(20), &[("http", 80, "TCP")], None),
    ];
    if changed {
        docs.push(slice(
            "other-1",
            "other",
            &[("http", TCP_PORT, "TCP")],
            &all[1..],
        ));
        docs.push(service("extra", vip(30), &[("http", 80, "TCP")], None));
        docs.push(slice(
            "extra-1",
            "extra",
            &[("http", TCP_PORT, "TCP")],
            &all,
        ));
    } else {
        docs.push(slice(
            "other-1",
            "other",
            &[("http", TCP_PORT, "TCP")],
            &all[..2],
        ));
    }
    documents(&docs)
}

/// The upgrade-test variant built by `cargo xtask build-ebpf` (see tests/build.rs).
fn variant_object() -> PathBuf {
    let path = PathBuf::from(env!("KPROXY_VARIANT_BPF_OBJECT"));
    assert!(
        path.is_file(),
        "the upgrade-test variant of the eBPF object is missing at {}; build it with \
         `cargo xtask build-ebpf`",
        path.display()
    );
    path
}

fn endpoints(addrs: &[Ipv4Addr]) -> Vec<SocketAddrV4> {
    addrs
        .iter()
        .map(|a| SocketAddrV4::new(*a, TCP_PORT))
        .collect()
}

/// One step of the test and the window of the load it covers.
struct Phase {
    name: String,
    window: Range<Duration>,
    /// From stopping the old agent to the new one being ready, for each restart of the phase:
    /// the time no agent ran (a deliberate `BETWEEN` included for kills).
    agent_down: Vec<Duration>,
}

/// Lets the load run for `d`, and checks that it still runs (a test that outlived the load
/// would prove nothing about its later phases).
fn load_for(run: &LoadRun, d: Duration) {
    std::thread::sleep(d);
    assert!(
        run.running(),
        "the load ran out ({LOAD_LIMIT:?}) before the test was done"
    );
}

/// Asserts that every link is the same link as before, now running a newly loaded program,
/// whose tag equals the old one's or not, as `same_tag` says.
fn assert_programs_replaced(before: &[LinkProgram], after: &[LinkProgram], same_tag: bool) {
    assert_eq!(
        before
            .iter()
            .map(|l| (&l.link, l.link_id))
            .collect::<Vec<_>>(),
        after
            .iter()
            .map(|l| (&l.link, l.link_id))
            .collect::<Vec<_>>(),
        "the same pinned links, updated in place"
    );
    for (old, new) in before.iter().zip(after) {
        assert_ne!(old.prog_id, new.prog_id, "a newly loaded program: {new}");
        assert_eq!(old.prog_name, new.prog_name);
        assert_eq!(
            old.tag == new.tag,
            same_tag,
            "{}: tag {} before, {} after",
            new.link,
            old.tag_hex(),
            new.tag_hex()
        );
    }
}

fn tags(links: &[LinkProgram]) -> String {
    let mut by_prog: Vec<String> = links
        .iter()
        .map(|l| format!("{} {}", l.prog_name, l.tag_hex()))
        .collect();
    by_prog.sort();
    by_prog.dedup();
    by_prog.join(", ")
}

/// The figures as a Markdown table (for the README), then the details behind any failure.
fn figures(report: &LoadReport, phases: &[Phase], upgrade: &(String, String)) -> String {
    let mut out = table(report, phases);
    out.push_str(&details(report, upgrade));
    out
}

/// The load, and a Markdown table of its figures per phase.
fn table(report: &LoadReport, phases: &[Phase]) -> String {
    let c = &report.config;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Load: {} new TCP connections/s to {}, {} sessions pinging every {} on it, {} UDP \
         requests/s to {} on one flow; a failure is no answer within {}.\n",
        c.connection_rate,
        c.tcp,
        c.sessions,
        ms(c.ping_interval),
        c.udp_rate,
        c.udp,
        ms(c.timeout)
    );
    out.push_str(
        "| phase | load window | no agent for | new TCP ok | failed | slowest | session exchanges \
         | resets/errors | max gap | UDP sent | lost |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let rows = phases
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                report.figures(p.window.clone()),
                &p.agent_down[..],
            )
        })
        .chain(std::iter::once(("whole run", report.total(), &[][..])));
    for (name, f, down) in rows {
        let _ = writeln!(
            out,
            "| {name} | {}–{} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            secs(f.window.start),
            secs(f.window.end),
            if down.is_empty() {
                "–".to_owned()
            } else {
                down.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", ")
            },
            f.connections_ok,
            f.connections_failed,
            ms(f.connect_max),
            f.exchanges,
            f.session_failures,
            ms(f.max_gap),
            f.udp_sent,
            f.udp_lost + f.udp_failures,
        );
    }
    out
}

/// Balance, programs, the generator's own lag, the longest gaps, and every failure.
fn details(report: &LoadReport, upgrade: &(String, String)) -> String {
    let mut out = String::new();
    let total = report.total();
    let spread: Vec<String> = total
        .backends
        .iter()
        .map(|(b, n)| format!("{b} {n}"))
        .collect();
    let _ = writeln!(out, "\nNew connections per backend: {}.", spread.join(", "));
    let _ = writeln!(
        out,
        "Programs before the upgrade: {}; after: {}.",
        upgrade.0, upgrade.1
    );
    let _ = writeln!(
        out,
        "The load generator's own timers fired at most {} late.",
        ms(report.max_lag)
    );
    let longest: Vec<String> = report
        .stalls(Duration::ZERO)
        .iter()
        .take(3)
        .map(|e| {
            format!(
                "{} (session {} at {}, rtt {})",
                ms(e.gap),
                e.session,
                secs(e.at),
                ms(e.rtt)
            )
        })
        .collect();
    let _ = writeln!(out, "Longest session gaps: {}.", longest.join(", "));
    for f in report.failed_connections() {
        let _ = writeln!(out, "FAILED connection {f}");
    }
    for f in report.session_failures.iter().chain(&report.udp_failures) {
        let _ = writeln!(out, "FAILED {f}");
    }
    for e in report.stalls(MAX_STALL) {
        let _ = writeln!(
            out,
            "STALL of {} on session {}, ending at {} (rtt {})",
            ms(e.gap),
            e.session,
            secs(e.at),
            ms(e.rtt)
        );
    }
    for at in report.lost_datagrams() {
        let _ = writeln!(
            out,
            "LOST the reply to the UDP request sent at {}",
            secs(at)
        );
    }
    out
}

/// (1) `KILLS` times: kill -9, a moment without any agent, the same agent again.
fn kill_and_restart(bed: &Bed, run: &LoadRun, mut agent: Agent) -> (Agent, Phase) {
    let begun = run.elapsed();
    let mut agent_down = Vec::new();
    for _ in 0..KILLS {
        let links = link_programs(&bed.pin_dir());
        assert!(!links.is_empty(), "the agent pinned its links");
        let down = Instant::now();
        let status = agent.kill();
        assert!(!status.success(), "killed: {status}");
        load_for(run, BETWEEN);
        agent = Agent::start(bed, &[]);
        agent_down.push(down.elapsed());
        let log = agent.log_text();
        assert!(log.contains("recovered the datapath"), "{log}");
        assert!(log.contains("replaced the program"), "{log}");
        assert_programs_replaced(&links, &link_programs(&bed.pin_dir()), true);
        load_for(run, BETWEEN);
    }
    let phase = Phase {
        name: format!("1. kill -9, restart (×{KILLS})"),
        window: begun..run.elapsed(),
        agent_down,
    };
    (agent, phase)
}

/// (2) kill -9, Services changed meanwhile (not those under load), restart.
fn kill_change_and_restart(bed: &Bed, run: &LoadRun, agent: Agent) -> (Agent, Phase) {
    let begun = run.elapsed();
    let down = Instant::now();
    agent.kill();
    bed.write("apps.yaml", &manifests(bed, true));
    load_for(run, BETWEEN);
    let agent = Agent::start(bed, &[]);
    let agent_down = vec![down.elapsed()];
    let backends = bed.backends();
    bed.wait_for_backends("198.19.0.30:80/TCP", &endpoints(&backends), READY);
    bed.wait_for_backends("198.19.0.20:80/TCP", &endpoints(&backends[1..]), READY);
    bed.wait_for_backends("198.19.0.10:80/TCP", &endpoints(&backends), READY);
    load_for(run, BETWEEN);
    let phase = Phase {
        name: "2. kill -9, restart with changed Services".to_owned(),
        window: begun..run.elapsed(),
        agent_down,
    };
    (agent, phase)
}

/// (3, 4) An upgrade (or a rollback): the agent stops as a rollout stops it (SIGTERM), and
/// one loading `object` (the embedded object when `None`) starts over the same pins.
/// Returns the programs attached before and after.
fn replace_programs(
    bed: &Bed,
    run: &LoadRun,
    agent: Agent,
    object: Option<&Path>,
    name: &str,
) -> (Agent, Phase, [Vec<LinkProgram>; 2]) {
    let begun = run.elapsed();
    let before = link_programs(&bed.pin_dir());
    let down = Instant::now();
    let status = agent.stop();
    assert!(status.success(), "SIGTERM ends the agent cleanly: {status}");
    let object = object.map(|o| o.to_string_lossy().into_owned());
    let env: Vec<(&str, &str)> = object
        .iter()
        .map(|o| (TEST_OBJECT_ENV, o.as_str()))
        .collect();
    let agent = Agent::start_env(bed, &env, &[]);
    let agent_down = vec![down.elapsed()];
    let log = agent.log_text();
    assert_eq!(
        log.contains(TEST_OBJECT_ENV),
        object.is_some(),
        "the agent says whether it loads another object than its own: {log}"
    );
    assert!(log.contains("replaced the program"), "{log}");
    let after = link_programs(&bed.pin_dir());
    assert_programs_replaced(&before, &after, false);
    load_for(run, BETWEEN);
    let phase = Phase {
        name: name.to_owned(),
        window: begun..run.elapsed(),
        agent_down,
    };
    (agent, phase, [before, after])
}

#[test]
fn restarts_and_an_upgrade_under_load_lose_nothing() {
    if !require_privileges("restarts_and_an_upgrade_under_load_lose_nothing") {
        return;
    }
    let variant = variant_object();
    let bed = Bed::new(TopologyOptions::default());
    bed.write("apps.yaml", &manifests(&bed, false));
    let agent = Agent::start(&bed, &[]);
    let web = SocketAddrV4::new(vip(10), 80);
    let dns = SocketAddrV4::new(vip(53), 53);

    let run = load::start(
        &bed.topo.client,
        LoadConfig {
            max_duration: LOAD_LIMIT,
            ..LoadConfig::new(web, dns)
        },
    )
    .expect("starting the load");
    load_for(&run, BETWEEN);
    let mut phases = vec![Phase {
        name: "0. before (agent running)".to_owned(),
        window: Duration::ZERO..run.elapsed(),
        agent_down: Vec::new(),
    }];
    let (agent, phase) = kill_and_restart(&bed, &run, agent);
    phases.push(phase);
    let (agent, phase) = kill_change_and_restart(&bed, &run, agent);
    phases.push(phase);
    let (agent, phase, [before, after]) = replace_programs(
        &bed,
        &run,
        agent,
        Some(&variant),
        "3. upgrade to other programs (SIGTERM, start)",
    );
    phases.push(phase);
    // Not asked for by the upgrade itself, but a rollout can be undone: back to the embedded
    // programs, whose tags are those from before the upgrade again.
    let (mut agent, phase, [_, rolled_back]) = replace_programs(
        &bed,
        &run,
        agent,
        None,
        "4. roll back to the embedded programs",
    );
    assert_eq!(
        tags(&rolled_back),
        tags(&before),
        "the original programs again"
    );
    phases.push(phase);

    let report = run.finish().expect("load report");
    agent.assert_running();
    let text = figures(&report, &phases, &(tags(&before), tags(&after)));
    eprintln!(
        "\n=============== restart under load: figures ===============\n{text}\
         ===========================================================\n{}",
        report.summary()
    );
    for link in &after {
        eprintln!("after the upgrade: {link}");
    }

    assert!(report.stopped_early, "the load ran through every phase");
    for phase in &phases {
        let f = report.figures(phase.window.clone());
        assert!(
            f.connections_ok > 0 && f.exchanges > 0 && f.udp_sent > 0,
            "the load ran in {}: {f}",
            phase.name
        );
    }
    let total = report.total();
    assert_eq!(
        total.backends.len(),
        3,
        "balanced over all backends: {total}"
    );
    assert!(
        report.failed_connections().is_empty(),
        "no new connection fails:\n{text}"
    );
    assert!(
        report.session_failures.is_empty(),
        "no established session resets or errs:\n{text}"
    );
    assert!(
        total.max_gap <= MAX_STALL,
        "no established session stalls over {MAX_STALL:?}:\n{text}"
    );
    assert!(
        report.lost_datagrams().is_empty(),
        "no UDP reply is lost:\n{text}"
    );
    assert!(report.udp_failures.is_empty(), "no UDP error:\n{text}");
}
