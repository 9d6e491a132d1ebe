//! Which endpoints serve real connections, end to end: the agent reads Services,
//! EndpointSlices and its Node from manifests and must choose endpoints exactly as
//! kube-proxy does (terminating fallback, internalTrafficPolicy Local, topology hints).

mod support;

use std::{
    collections::BTreeSet,
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use kproxy_testbed::{TopologyOptions, require_privileges, tcp_request, topology::vip};
use serde_json::json;
use support::{
    agent::{Agent, Bed, TCP_PORT, clients_on_one_cpu},
    objects::{Ep, list, node, service, slice},
};

const TIMEOUT: Duration = Duration::from_secs(2);
/// The agent's node name (see `Agent::start`).
const THIS_NODE: &str = "node";

/// The backends that answer `n` connections to the web VIP.
fn serving_backends(bed: &Bed, n: usize) -> BTreeSet<Ipv4Addr> {
    (0..n)
        .map(|i| {
            let reply = tcp_request(&bed.topo.client, SocketAddrV4::new(vip(10), 80), TIMEOUT)
                .unwrap_or_else(|e| panic!("request {i}: {e}"));
            *reply.backend.ip()
        })
        .collect()
}

/// Writes the `web` Service (with `spec` merged in) and its one slice with `endpoints`.
fn write_web(bed: &Bed, spec: &serde_json::Value, endpoints: &[Ep]) {
    bed.write(
        "apps.json",
        &list(&[
            service("web", vip(10), spec),
            slice("web-1", "web", TCP_PORT, endpoints),
        ]),
    );
}

fn web_frontend() -> &'static str {
    "198.19.0.10:80/TCP"
}

fn with_port(addrs: &[Ipv4Addr]) -> Vec<SocketAddrV4> {
    addrs
        .iter()
        .map(|a| SocketAddrV4::new(*a, TCP_PORT))
        .collect()
}

#[test]
fn terminating_endpoints_serve_only_when_no_ready_endpoint_is_left() {
    if !require_privileges("terminating_endpoints_serve_only_when_no_ready_endpoint_is_left") {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    let b = bed.backends();
    let web = json!({});
    write_web(
        &bed,
        &web,
        &[
            Ep::terminating(b[0]),
            Ep::terminating(b[1]),
            Ep::ready(b[2]),
        ],
    );
    let _agent = Agent::start(&bed, &[]);
    clients_on_one_cpu();
    assert_eq!(
        serving_backends(&bed, 12),
        BTreeSet::from([b[2]]),
        "the ready endpoint takes all new connections while it exists"
    );

    // The last ready pod goes away: the terminating ones that still serve take over
    // instead of the service rejecting connections.
    write_web(&bed, &web, &[Ep::terminating(b[0]), Ep::terminating(b[1])]);
    bed.wait_for_backends(web_frontend(), &with_port(&b[..2]), TIMEOUT);
    assert_eq!(serving_backends(&bed, 12), BTreeSet::from([b[0], b[1]]));
}

#[test]
fn internal_traffic_policy_local_drops_when_endpoints_are_only_elsewhere() {
    if !require_privileges("internal_traffic_policy_local_drops_when_endpoints_are_only_elsewhere")
    {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    let b = bed.backends();
    let web = json!({"internalTrafficPolicy": "Local"});
    write_web(
        &bed,
        &web,
        &[
            Ep::ready(b[0]).on_node("node-b"),
            Ep::ready(b[1]).on_node("node-c"),
        ],
    );
    let agent = Agent::start(&bed, &[]);

    // Endpoints exist, none on this node: the SYN is dropped, so the client times out
    // rather than being refused.
    let started = Instant::now();
    let err = tcp_request(
        &bed.topo.client,
        SocketAddrV4::new(vip(10), 80),
        Duration::from_millis(700),
    )
    .expect_err("no local endpoint");
    assert!(
        matches!(err.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock),
        "dropped, not rejected: {err}"
    );
    assert!(started.elapsed() >= Duration::from_millis(600));
    let view = bed.view().expect("datapath");
    assert!(
        view.counters["drop_no_local_endpoint"] >= 1,
        "{:?}",
        view.counters
    );
    assert_eq!(view.counters["rejected"], 0);

    // An endpoint on this node appears: it alone serves.
    write_web(
        &bed,
        &web,
        &[
            Ep::ready(b[0]).on_node("node-b"),
            Ep::ready(b[1]).on_node("node-c"),
            Ep::ready(b[2]).on_node(THIS_NODE),
        ],
    );
    bed.wait_for_backends(web_frontend(), &with_port(&b[2..]), TIMEOUT);
    assert_eq!(serving_backends(&bed, 9), BTreeSet::from([b[2]]));
    drop(agent);
}

#[test]
fn topology_hints_follow_the_zone_of_this_node() {
    if !require_privileges("topology_hints_follow_the_zone_of_this_node") {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    let b = bed.backends();
    let apps = |node_zone: &str| {
        list(&[
            node(THIS_NODE, node_zone),
            service(
                "web",
                vip(10),
                &json!({"trafficDistribution": "PreferClose"}),
            ),
            slice(
                "web-1",
                "web",
                TCP_PORT,
                &[
                    Ep::ready(b[0]).hinted_for("zone-a"),
                    Ep::ready(b[1]).hinted_for("zone-b"),
                    Ep::ready(b[2]).hinted_for("zone-b"),
                ],
            ),
        ])
    };
    bed.write("apps.json", &apps("zone-a"));
    let _agent = Agent::start(&bed, &[]);
    clients_on_one_cpu();
    assert_eq!(
        serving_backends(&bed, 9),
        BTreeSet::from([b[0]]),
        "only the endpoint hinted for this node's zone"
    );

    // The node's zone label changes: the other zone's endpoints take over.
    bed.write("apps.json", &apps("zone-b"));
    bed.wait_for_backends(web_frontend(), &with_port(&b[1..]), TIMEOUT);
    assert_eq!(serving_backends(&bed, 12), BTreeSet::from([b[1], b[2]]));

    // A zone no endpoint is hinted for: hints are ignored and every endpoint serves.
    bed.write("apps.json", &apps("zone-c"));
    bed.wait_for_backends(web_frontend(), &with_port(&b), TIMEOUT);
    assert_eq!(
        serving_backends(&bed, 12),
        BTreeSet::from([b[0], b[1], b[2]])
    );
}
