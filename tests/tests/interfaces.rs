//! Interfaces that come and go while the agent runs: a pod's veth, selected by an `--attach`
//! pattern, gets the programs as it appears; when it vanishes its pinned links and
//! `KP_IFACES` entry go; recreated under the same name (a new index) it is attached again.
//! And interfaces that lead to pods are marked `IFACE_F_POD`.

mod support;

use std::{
    net::SocketAddrV4,
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use aya::maps::{HashMap, Map, MapData};
use kproxy::dataplane::{
    ahead::{self, LinkedAhead, PASS_PROGRAM_NAME},
    links::{
        LinkMetrics, LinkWatcher,
        select::{IfacePattern, IfacePatterns, PodInterfaces, Selection},
    },
    load::{self, MapSizes},
};
use kproxy_common::{
    iface::{IFACE_F_INGRESS, IFACE_F_POD},
    names::MAP_IFACES,
};
use kproxy_testbed::{Netns, TopologyOptions, require_privileges, tcp_request, topology::vip};
use support::{
    agent::{Agent, Bed, TCP_PORT},
    http::{get, sample},
    links::{LinkProgram, link_programs},
    manifests::{documents, service, slice},
};

/// How long one request of a client waiting for a path to appear may take.
const ATTEMPT: Duration = Duration::from_millis(200);
/// A new interface is served within a second of its creation (counted from before the bed
/// creates it, so its own `ip` commands and the wait for the link to come up are included).
const DEADLINE: Duration = Duration::from_secs(1);

/// Polls `target` from `ns` until a request gets an answer; panics if no request sent
/// within `DEADLINE` of `since` is answered. Returns when the first answer came, measured
/// from `since`.
fn reachable_within_deadline(
    ns: &Netns,
    target: SocketAddrV4,
    since: Instant,
    what: &str,
) -> Duration {
    let mut last_error = None;
    while since.elapsed() < DEADLINE {
        match tcp_request(ns, target, ATTEMPT) {
            Ok(reply) => {
                assert_eq!(reply.backend.port(), TCP_PORT);
                return since.elapsed();
            }
            Err(e) => last_error = Some(e),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{what}: no answer from {target} within {DEADLINE:?}; last error: {last_error:?}");
}

/// `KP_IFACES` as the agent left it: ifindex → flags.
fn iface_flags(pin_dir: &Path) -> std::collections::HashMap<u32, u32> {
    let data = MapData::from_pin(pin_dir.join(MAP_IFACES)).expect("pinned KP_IFACES");
    let map: HashMap<MapData, u32, u32> = Map::from_map_data(data)
        .expect("KP_IFACES")
        .try_into()
        .expect("a hash map of u32");
    map.iter()
        .map(|entry| entry.expect("KP_IFACES entry"))
        .collect()
}

/// The pinned links of interface `index` (file names under `<pin_dir>/links`).
fn pins_of(pin_dir: &Path, index: u32) -> Vec<String> {
    let infix = format!("-{index}-");
    let mut pins: Vec<String> = std::fs::read_dir(pin_dir.join("links"))
        .expect("links dir")
        .map(|e| {
            e.expect("links entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.contains(&infix))
        .collect();
    pins.sort();
    pins
}

/// kpc1, with index `index`, has the TC programs on ingress and egress through pinned links,
/// and its `KP_IFACES` entry says so.
fn assert_kpc1_served(pin_dir: &Path, index: u32) {
    let flags = iface_flags(pin_dir);
    assert_eq!(flags.get(&index), Some(&IFACE_F_INGRESS), "{flags:?}");
    assert_eq!(
        pins_of(pin_dir, index),
        [
            format!("tc-egress-{index}-kpc1"),
            format!("tc-ingress-{index}-kpc1")
        ]
    );
}

/// The agent's `/metrics`.
fn metrics(bed: &Bed) -> String {
    let addr = "127.0.0.1:10249".parse().expect("address");
    let (status, body) = get(&bed.topo.node, addr, "/metrics").expect("/metrics");
    assert_eq!(status, 200);
    body
}

/// When the agent logged that it attached to interface `index` (its log lines start with a
/// UTC RFC 3339 time).
fn attached_at(log: &str, index: u32) -> Option<SystemTime> {
    let needle = format!(" attached iface=kpc1 index={index} ");
    let line = log.lines().find(|l| l.contains(&needle))?;
    let stamp = line.split_whitespace().next()?;
    let at = k8s_openapi::chrono::DateTime::parse_from_rfc3339(stamp).ok()?;
    Some(SystemTime::from(at))
}

#[test]
fn a_pod_created_after_the_agent_reaches_a_clusterip_through_its_new_veth() {
    if !require_privileges("a_pod_created_after_the_agent_reaches_a_clusterip_through_its_new_veth")
    {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    let backends = bed.backends();
    bed.write(
        "apps.yaml",
        &documents(&[
            service("web", vip(10), &[("http", 80, "TCP")], None),
            slice("web-1", "web", &[("http", TCP_PORT, "TCP")], &backends),
        ]),
    );
    // Only pods' veths get the programs (and lo, always): not the backends' links, not the
    // bed's first client link `kc`. The node has no route to the VIP range, so a packet to a
    // VIP that no ingress program translated dies at the node; no egress hook can help.
    let agent = Agent::start_with(&bed, &["--attach", "kpc*"], &[]);
    let target = SocketAddrV4::new(vip(10), 80);
    let unserved = tcp_request(&bed.topo.client, target, ATTEMPT)
        .expect_err("a client on an interface no pattern selects cannot reach the VIP");
    eprintln!("from the unserved client link: {unserved}");
    let pin_dir = bed.pin_dir();
    assert_eq!(
        iface_flags(&pin_dir).len(),
        1,
        "only lo is served before the pod exists"
    );

    let (created, created_wall) = (Instant::now(), SystemTime::now());
    let pod = bed.topo.add_pod_client(1).expect("adding a pod client");
    let first = reachable_within_deadline(&pod.ns, target, created, "the new pod");
    let reply = tcp_request(&pod.ns, target, ATTEMPT).expect("a second request");
    assert_eq!(
        *reply.peer.ip(),
        pod.addr(),
        "the backend sees the pod's address"
    );
    let index = bed.topo.node.link_index(&pod.node_iface).expect("kpc1");
    assert_kpc1_served(&pin_dir, index);
    assert_eq!(
        sample(&metrics(&bed), "kproxy_attached_interfaces"),
        Some(2.0)
    );

    // The pod's sandbox is recreated: same interface name, new index.
    let (recreated, recreated_wall) = (Instant::now(), SystemTime::now());
    pod.recreate_link(&bed.topo.node)
        .expect("recreating the veth");
    let again = reachable_within_deadline(&pod.ns, target, recreated, "the recreated pod");
    let new_index = bed.topo.node.link_index(&pod.node_iface).expect("kpc1");
    assert_ne!(new_index, index, "a recreated interface has a new index");
    // The old interface's links and entry are gone (removed right after its deletion was
    // notified, which came before the new interface's creation).
    assert_eq!(pins_of(&pin_dir, index), Vec::<String>::new());
    assert!(!iface_flags(&pin_dir).contains_key(&index));
    assert_kpc1_served(&pin_dir, new_index);

    // The pod goes away for good: nothing of it is left. The kernel dismantles the deleted
    // namespace, and with it the veth, in the background; the clock starts when it is gone.
    drop(pod);
    support::agent::wait_until(
        "kpc1 deleted with its namespace",
        Duration::from_secs(5),
        || bed.topo.node.link_index("kpc1").is_err().then_some(()),
    );
    support::agent::wait_until("the deleted veth swept", Duration::from_secs(1), || {
        (pins_of(&pin_dir, new_index).is_empty() && !iface_flags(&pin_dir).contains_key(&new_index))
            .then_some(())
    });
    let metrics = metrics(&bed);
    assert_eq!(sample(&metrics, "kproxy_attached_interfaces"), Some(1.0));
    for operation in ["attach", "detach"] {
        let errors = format!("kproxy_attach_errors_total{{operation=\"{operation}\"}}");
        assert_eq!(sample(&metrics, &errors), Some(0.0), "{metrics}");
    }
    let log = agent.log_text();
    assert_eq!(
        log.matches(" attached ").count(),
        3,
        "lo and kpc1 twice:\n{log}"
    );
    assert_eq!(log.matches(" detached ").count(), 2, "kpc1 twice:\n{log}");
    let attached = |index: u32, since: SystemTime| {
        attached_at(&log, index)
            .and_then(|at| at.duration_since(since).ok())
            .unwrap_or_else(|| panic!("no attachment of index {index} logged:\n{log}"))
    };
    eprintln!(
        "kpc1 attached {:?} after its creation began, reached the ClusterIP after {first:?}; \
         recreated: attached after {:?}, reached after {again:?}",
        attached(index, created_wall),
        attached(new_index, recreated_wall),
    );
    for line in log.lines().filter(|l| l.contains("tached iface=kpc1")) {
        eprintln!("{line}");
    }
}

/// Interfaces that lead to pods (kube-proxy's InterfaceNamePrefix) are marked in
/// `KP_IFACES`, those that do not are not, and interfaces kproxy does not serve get no
/// entry even when they match. The watcher runs in this process, in the node namespace,
/// with the pod matcher the agent's local-traffic detection hands it.
#[test]
fn served_interfaces_that_lead_to_pods_are_marked() {
    if !require_privileges("served_interfaces_that_lead_to_pods_are_marked") {
        return;
    }
    let bed = Bed::new(TopologyOptions {
        backends: 1,
        ..TopologyOptions::default()
    });
    let pod = bed.topo.add_pod_client(1).expect("pod client 1");
    let other_pod = bed.topo.add_pod_client(2).expect("pod client 2");
    let pin_dir = bed.pin_dir();
    let in_node = pin_dir.clone();
    let served = bed
        .topo
        .node
        .run(move || {
            in_runtime(async {
                let ebpf = load_small(&in_node);
                let selection = Selection {
                    // kpc2 is a pod interface kproxy is not told to serve.
                    tc: IfacePatterns(vec![
                        IfacePattern::parse("kc").expect("pattern"),
                        IfacePattern::parse("kpc1").expect("pattern"),
                    ]),
                    xdp: IfacePatterns::default(),
                    pod: Some(PodInterfaces::name_prefix("kpc")),
                };
                let metrics = LinkMetrics::default();
                let watcher = LinkWatcher::start(
                    ebpf,
                    &in_node,
                    selection,
                    metrics.clone(),
                    LinkedAhead::default(),
                )
                .expect("starting the watcher");
                assert_eq!(metrics.attached.get(), 3);
                let mut served: Vec<(String, bool)> = watcher
                    .served()
                    .map(|(link, role)| (link.name, role.pod))
                    .collect();
                served.sort();
                served
            })
        })
        .expect("in the node namespace");
    assert_eq!(
        served,
        [
            ("kc".to_owned(), false),
            ("kpc1".to_owned(), true),
            ("lo".to_owned(), false)
        ]
    );
    let node = &bed.topo.node;
    let index = |name: &str| node.link_index(name).expect(name);
    let flags = iface_flags(&pin_dir);
    assert_eq!(
        flags.get(&index(&pod.node_iface)),
        Some(&(IFACE_F_INGRESS | IFACE_F_POD))
    );
    assert_eq!(flags.get(&index("kc")), Some(&IFACE_F_INGRESS));
    assert_eq!(flags.get(&index("lo")), Some(&IFACE_F_INGRESS));
    assert_eq!(flags.get(&index(&other_pod.node_iface)), None);
    assert_eq!(flags.len(), 3, "{flags:?}");
}

/// One interface that cannot be attached (something else holds the path of its link's pin)
/// is logged with its name and counted; the agent starts anyway and serves the others.
#[test]
fn an_interface_that_cannot_be_attached_holds_up_no_other() {
    if !require_privileges("an_interface_that_cannot_be_attached_holds_up_no_other") {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    let backends = bed.backends();
    bed.write(
        "apps.yaml",
        &documents(&[
            service("web", vip(10), &[("http", 80, "TCP")], None),
            slice("web-1", "web", &[("http", TCP_PORT, "TCP")], &backends),
        ]),
    );
    let broken = bed.topo.add_pod_client(1).expect("pod client 1");
    let fine = bed.topo.add_pod_client(2).expect("pod client 2");
    let index = bed.topo.node.link_index(&broken.node_iface).expect("kpc1");
    let pin_dir = bed.pin_dir();
    let blocker = pin_dir.join(format!("links/tc-ingress-{index}-kpc1"));
    std::fs::create_dir_all(&blocker).expect("a directory where kpc1's link would be pinned");

    let mut agent = Agent::start_with(&bed, &["--attach", "kpc*"], &[]);
    let target = SocketAddrV4::new(vip(10), 80);
    let reply = tcp_request(&fine.ns, target, ATTEMPT).expect("the other pod is served");
    assert_eq!(*reply.peer.ip(), fine.addr());
    tcp_request(&broken.ns, target, ATTEMPT).expect_err("kpc1 is not served");
    let flags = iface_flags(&pin_dir);
    assert!(!flags.contains_key(&index), "{flags:?}");
    assert_eq!(
        pins_of(&pin_dir, index),
        [format!("tc-ingress-{index}-kpc1")],
        "only the blocking directory, nothing half attached"
    );
    let metrics = metrics(&bed);
    assert_eq!(
        sample(&metrics, "kproxy_attached_interfaces"),
        Some(2.0),
        "lo and kpc2"
    );
    // At least once: at start; again at each resync, every 10 seconds.
    assert!(
        sample(&metrics, "kproxy_attach_errors_total{operation=\"attach\"}")
            .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    let log = agent.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("attaching failed") && l.contains("iface=kpc1")),
        "{log}"
    );
    assert!(
        !log.contains("undoing a failed attachment"),
        "the failed attempt was undone cleanly:\n{log}"
    );
    agent.assert_running();
    std::fs::remove_dir(&blocker).expect("removing the blocker");
}

/// The datapath loaded with small maps, pinned under `pin_dir`.
fn load_small(pin_dir: &Path) -> aya::Ebpf {
    let sizes = MapSizes {
        services: 16,
        backends: 16,
        conntrack: 1024,
        affinity: 16,
        ..MapSizes::default()
    };
    load::load(pin_dir, &sizes).expect("loading the datapath").0
}

/// Runs `work` to completion on a runtime of the calling thread (the link watcher needs one).
fn in_runtime<T>(work: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(work)
}

/// At a start the TC links are made ahead with a program that passes every packet on
/// (traffic flows as if nothing were attached), and attaching after the first sync swaps
/// kproxy's programs into those same links: nothing is served before it, and the links'
/// creation (an RCU grace period each) is out of the way by then.
#[test]
fn links_made_ahead_pass_everything_until_kproxy_is_swapped_in() {
    if !require_privileges("links_made_ahead_pass_everything_until_kproxy_is_swapped_in") {
        return;
    }
    let bed = Bed::new(TopologyOptions {
        backends: 1,
        ..TopologyOptions::default()
    });
    let pin_dir = bed.pin_dir();
    let in_node = pin_dir.clone();
    let kc = bed.topo.node.link_index("kc").expect("kc");
    let selection = Selection {
        tc: IfacePatterns(vec![IfacePattern::parse("kc").expect("pattern")]),
        ..Selection::default()
    };
    let (ebpf, ahead) = bed
        .topo
        .node
        .run({
            let selection = selection.clone();
            move || {
                let ebpf = load_small(&in_node);
                let ahead = ahead::link_ahead(&in_node, &selection).expect("links made ahead");
                (ebpf, ahead)
            }
        })
        .expect("in the node namespace");
    assert_eq!(ahead.len(), 3, "kc's two hooks and lo's ingress");
    let before = link_programs(&pin_dir);
    let links: Vec<&str> = before.iter().map(|l| l.link.as_str()).collect();
    let mut want = [
        format!("tc-egress-{kc}-kc"),
        format!("tc-ingress-{kc}-kc"),
        "tc-ingress-1-lo".to_owned(),
    ];
    want.sort();
    assert_eq!(links, want);
    for link in &before {
        assert_eq!(link.prog_name, PASS_PROGRAM_NAME, "{link:?}");
    }
    // Through kc's hooks both ways, untouched.
    let backend = bed.topo.backend_addr(0);
    let reply = tcp_request(
        &bed.topo.client,
        SocketAddrV4::new(backend, TCP_PORT),
        ATTEMPT,
    )
    .expect("the client reaches the backend through the pass program");
    assert_eq!(*reply.backend.ip(), backend);

    let metrics = LinkMetrics::default();
    let in_node = pin_dir.clone();
    let mut served = bed
        .topo
        .node
        .run(move || {
            in_runtime(async move {
                let watcher = LinkWatcher::start(ebpf, &in_node, selection, metrics, ahead)
                    .expect("starting the watcher");
                watcher
                    .served()
                    .map(|(link, _)| link.name)
                    .collect::<Vec<_>>()
            })
        })
        .expect("in the node namespace");
    served.sort();
    assert_eq!(served, ["kc", "lo"]);
    let after = link_programs(&pin_dir);
    let link_ids = |links: &[LinkProgram]| -> Vec<(String, u32)> {
        links.iter().map(|l| (l.link.clone(), l.link_id)).collect()
    };
    assert_eq!(
        link_ids(&after),
        link_ids(&before),
        "the links made ahead are kept"
    );
    for link in &after {
        assert!(
            link.prog_name.starts_with("kproxy_tc"),
            "kproxy's program runs there now: {link:?}"
        );
    }
}
