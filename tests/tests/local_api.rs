//! The agent's local API and the commands on it: the drift check (service map entries
//! changed behind the agent's back are found, named, counted and repaired, by `kproxy
//! verify` and by the periodic check), `kproxy services` naming Services, `kproxy explain`.

mod support;

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    process::Output,
    time::Duration,
};

use aya::maps::{HashMap, Map, MapData};
use kproxy_common::{lb::Backend, names};
use kproxy_testbed::{TopologyOptions, require_privileges, tcp_request, topology::vip};
use support::{
    agent::{Agent, Bed, TCP_PORT, kproxy_bin, wait_until},
    http::get,
    manifests::{documents, service, slice},
};

const METRICS: &str = "127.0.0.1:20249";
const FRONTEND: &str = "198.19.0.10:80/TCP";

fn web(bed: &Bed) -> String {
    documents(&[
        service("web", vip(10), &[("http", 80, "TCP")], None),
        slice(
            "web-1",
            "web",
            &[("http", TCP_PORT, "TCP")],
            &bed.backends(),
        ),
    ])
}

fn backends_map(pin_dir: &Path) -> HashMap<MapData, u32, Backend> {
    let data = MapData::from_pin(pin_dir.join(names::MAP_BACKENDS)).expect("pinned KP_BACKENDS");
    Map::from_map_data(data)
        .expect("KP_BACKENDS")
        .try_into()
        .expect("a hash map of backends")
}

/// Points every backend of the pinned maps at `addr`, as a stray `bpftool map update` would.
fn corrupt_backends(pin_dir: &Path, addr: Ipv4Addr) {
    let mut map = backends_map(pin_dir);
    let entries: Vec<(u32, Backend)> = map.iter().map(|e| e.expect("entry")).collect();
    assert!(!entries.is_empty());
    for (id, mut backend) in entries {
        backend.addr = u32::from(addr).to_be();
        map.insert(id, backend, 0).expect("rewriting a backend");
    }
}

fn verify(bed: &Bed) -> Output {
    bed.topo
        .node
        .command(kproxy_bin())
        .args(["verify", "--metrics-address", METRICS])
        .output()
        .expect("running kproxy verify")
}

fn want(bed: &Bed) -> Vec<SocketAddrV4> {
    bed.backends()
        .iter()
        .map(|a| SocketAddrV4::new(*a, TCP_PORT))
        .collect()
}

fn served_by_its_backends(bed: &Bed) {
    let backends = bed.backends();
    for _ in 0..6 {
        let reply = tcp_request(
            &bed.topo.client,
            SocketAddrV4::new(vip(10), 80),
            Duration::from_secs(2),
        )
        .expect("served");
        assert!(backends.contains(reply.backend.ip()), "{reply:?}");
    }
}

fn metric(bed: &Bed, name: &str) -> u64 {
    let (_, body) =
        get(&bed.topo.node, METRICS.parse().expect("addr"), "/metrics").expect("metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} in {body}"))
}

#[test]
fn kproxy_verify_names_repairs_and_counts_a_corrupted_backend() {
    if !require_privileges("kproxy_verify_names_repairs_and_counts_a_corrupted_backend") {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    bed.write("apps.yaml", &web(&bed));
    let _agent = Agent::start(
        &bed,
        &[
            "--metrics-bind-address",
            METRICS,
            "--drift-check-period",
            "0",
        ],
    );
    bed.wait_for_backends(FRONTEND, &want(&bed), Duration::from_secs(2));

    // `kproxy services` names the frontend's Service from the agent's answer.
    let listing = bed
        .topo
        .node
        .command(kproxy_bin())
        .args(["services", "--metrics-address", METRICS, "--pin-dir"])
        .arg(bed.pin_dir())
        .output()
        .expect("running kproxy services");
    let text = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.status.success()
            && text.contains(
                "    service default/web port http (ClusterIP, internalTrafficPolicy Cluster)"
            ),
        "{text}{}",
        String::from_utf8_lossy(&listing.stderr)
    );

    let clean = verify(&bed);
    let text = String::from_utf8_lossy(&clean.stdout);
    assert!(clean.status.success(), "{text}");
    assert!(
        text.contains("1 frontends checked, 0 differences"),
        "{text}"
    );

    corrupt_backends(&bed.pin_dir(), Ipv4Addr::new(198, 18, 99, 99));
    let found = verify(&bed);
    let text = String::from_utf8_lossy(&found.stdout);
    assert_eq!(found.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("drift: {FRONTEND}: backends: programmed ["))
            && text.contains("the maps hold [198.18.99.99:8080"),
        "{text}"
    );
    assert!(text.contains("differences, repaired"), "{text}");
    assert!(metric(&bed, "kproxy_datapath_drift_total") >= 1);
    assert_eq!(metric(&bed, "kproxy_datapath_checks_total"), 2);

    bed.wait_for_backends(FRONTEND, &want(&bed), Duration::from_secs(2));
    served_by_its_backends(&bed);
    let again = verify(&bed);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
}

#[test]
fn the_periodic_check_repairs_a_deleted_frontend() {
    if !require_privileges("the_periodic_check_repairs_a_deleted_frontend") {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    bed.write("apps.yaml", &web(&bed));
    let mut agent = Agent::start(
        &bed,
        &[
            "--metrics-bind-address",
            METRICS,
            "--drift-check-period",
            "1s",
        ],
    );
    bed.wait_for_backends(FRONTEND, &want(&bed), Duration::from_secs(2));

    // The frontend's service entry deleted behind the agent's back: the VIP stops being
    // served until the check puts it back.
    let data = MapData::from_pin(bed.pin_dir().join(names::MAP_SERVICES)).expect("KP_SERVICES");
    let mut services: HashMap<
        MapData,
        kproxy_common::lb::ServiceKey,
        kproxy_common::lb::ServiceValue,
    > = Map::from_map_data(data)
        .expect("KP_SERVICES")
        .try_into()
        .expect("a hash map of services");
    let keys: Vec<_> = services.keys().map(|k| k.expect("key")).collect();
    assert_eq!(keys.len(), 1);
    services.remove(&keys[0]).expect("deleting the frontend");
    wait_until("the frontend back", Duration::from_secs(5), || {
        bed.view()
            .is_some_and(|v| v.services.iter().any(|s| s.frontend == FRONTEND))
            .then_some(())
    });
    bed.wait_for_backends(FRONTEND, &want(&bed), Duration::from_secs(2));
    served_by_its_backends(&bed);
    agent.assert_running();
    let log = agent.log_text();
    assert!(
        log.contains("programmed, missing from the maps") && log.contains("drift check: repaired"),
        "{log}"
    );
}

/// The affinity map's one entry, counted by the next collection (`--ct-gc-interval 1`).
fn affinity_fill_is_counted(bed: &Bed) {
    wait_until(
        "KP_AFFINITY's entry counted",
        Duration::from_secs(3),
        || {
            let (_, body) = get(&bed.topo.node, METRICS.parse().expect("addr"), "/metrics").ok()?;
            body.lines()
                .any(|l| l == r#"kproxy_map_entries{map="KP_AFFINITY"} 1"#)
                .then_some(())
        },
    );
}

#[test]
fn kproxy_explain_tells_where_a_clients_connections_go_and_why() {
    if !require_privileges("kproxy_explain_tells_where_a_clients_connections_go_and_why") {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    bed.write(
        "apps.yaml",
        &documents(&[
            service("web", vip(10), &[("http", 80, "TCP")], Some(60)),
            slice(
                "web-1",
                "web",
                &[("http", TCP_PORT, "TCP")],
                &bed.backends(),
            ),
        ]),
    );
    let _agent = Agent::start(
        &bed,
        &["--metrics-bind-address", METRICS, "--ct-gc-interval", "1"],
    );
    bed.wait_for_backends(FRONTEND, &want(&bed), Duration::from_secs(2));
    let client = bed.topo.client_addr().to_string();
    let explain = |dst: &str| {
        let out = bed
            .topo
            .node
            .command(kproxy_bin())
            .args([
                "explain",
                &client,
                dst,
                "--metrics-address",
                METRICS,
                "--pin-dir",
            ])
            .arg(bed.pin_dir())
            .output()
            .expect("running kproxy explain");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    let text = explain(FRONTEND);
    assert!(
        text.contains(
            "198.19.0.10:80/TCP: Service default/web port http (ClusterIP), for every client"
        ),
        "{text}"
    );
    for backend in bed.backends() {
        assert!(text.contains(&format!("{backend}:{TCP_PORT}")), "{text}");
    }
    assert!(
        text.contains("endpoints: Cluster (internalTrafficPolicy"),
        "{text}"
    );
    assert!(
        text.contains(&format!("a new connection from {client}: goes to ")),
        "{text}"
    );
    assert!(
        text.contains(" of 3) on CPU")
            && text.contains("(round robin, a counter per CPU: the next turn of the CPU"),
        "{text}"
    );
    assert!(
        text.contains(&format!("no flow from {client} to it now")),
        "{text}"
    );

    // One connection: affinity now holds the client, and its flow is listed.
    let reply = tcp_request(
        &bed.topo.client,
        SocketAddrV4::new(vip(10), 80),
        Duration::from_secs(2),
    )
    .expect("served");
    let text = explain(FRONTEND);
    assert!(
        text.contains(&format!(
            "a new connection from {client}: goes to {} (ClientIP affinity: {client} went there",
            reply.backend
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("goes to {} (idle", reply.backend))
            && text.contains(&format!("flow {client}:")),
        "{text}"
    );

    affinity_fill_is_counted(&bed);

    let text = explain("198.19.0.99:80/TCP");
    assert!(text.contains("no Service frontend here"), "{text}");
}
