//! The agent reading the Kubernetes API: a fake API server in the node namespace speaks the
//! real list/watch wire format, and the tests check the datapath maps (and real connections)
//! after watch events, bookmarks, dropped watches and `410 Gone` relists; that nothing is
//! programmed from half-synced caches; and that a storm of EndpointSlice updates is coalesced.

mod support;

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use kproxy::dataplane::ahead::PASS_PROGRAM_NAME;
use kproxy_testbed::{
    TopologyOptions, apiserver::FakeApiServer, require_privileges, tcp_request, topology::vip,
};
use serde_json::{Value, json};
use support::{
    agent::{Agent, Bed, TCP_PORT, wait_until},
    http::{get, sample},
    links::link_programs,
    objects::{Ep, node, service, slice},
};

const CONVERGE: Duration = Duration::from_secs(3);
const WATCH_OPEN: Duration = Duration::from_secs(5);

fn frontend(n: u16) -> String {
    format!("{}:80/TCP", vip(n))
}

fn at(addrs: &[Ipv4Addr]) -> Vec<SocketAddrV4> {
    addrs
        .iter()
        .map(|a| SocketAddrV4::new(*a, TCP_PORT))
        .collect()
}

fn frontends(bed: &Bed) -> Vec<String> {
    let mut names: Vec<String> = bed
        .view()
        .map(|v| v.services.into_iter().map(|s| s.frontend).collect())
        .unwrap_or_default();
    names.sort();
    names
}

fn labelled(mut object: Value, key: &str, value: &str) -> Value {
    object["metadata"]["labels"][key] = json!(value);
    object
}

/// LIST (not watch) requests made for `resource` so far.
fn lists(api: &FakeApiServer, resource: &str) -> usize {
    list_requests(api, resource).len()
}

/// The list requests of `resource` so far, in order, with their queries.
fn list_requests(api: &FakeApiServer, resource: &str) -> Vec<String> {
    api.requests()
        .into_iter()
        .filter(|r| r.contains(&format!("/{resource}")) && !r.contains("watch=true"))
        .collect()
}

struct ApiBed {
    bed: Bed,
    api: FakeApiServer,
    kubeconfig: std::path::PathBuf,
}

impl ApiBed {
    fn new() -> Self {
        let bed = Bed::new(TopologyOptions::default());
        let api = FakeApiServer::start_in(&bed.topo.node).expect("fake API server");
        let kubeconfig = api.write_kubeconfig(bed.dir.path()).expect("kubeconfig");
        Self {
            bed,
            api,
            kubeconfig,
        }
    }

    fn spawn_agent(&self) -> Agent {
        Agent::spawn_api(&self.bed, &self.kubeconfig, &[])
    }
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, step by step")]
fn the_datapath_follows_the_api_through_events_relists_and_dropped_watches() {
    if !require_privileges(
        "the_datapath_follows_the_api_through_events_relists_and_dropped_watches",
    ) {
        return;
    }
    let api_bed = ApiBed::new();
    let (bed, api) = (&api_bed.bed, &api_bed.api);
    let b = bed.backends();
    api.apply(node("node", "zone-a"));
    api.apply(service("web", vip(10), &json!({})));
    api.apply(slice(
        "web-1",
        "web",
        TCP_PORT,
        &[Ep::ready(b[0]), Ep::ready(b[1])],
    ));
    // Filtered on the server, like kube-proxy's informers: another proxy's Service, and a
    // headless one with its slice.
    api.apply(labelled(
        service("other-proxy", vip(20), &json!({})),
        "service.kubernetes.io/service-proxy-name",
        "someone-else",
    ));
    api.apply(service("headless", vip(21), &json!({"clusterIP": "None"})));
    api.apply(labelled(
        slice("headless-1", "headless", TCP_PORT, &[Ep::ready(b[2])]),
        "service.kubernetes.io/headless",
        "",
    ));
    // Hints for zones: which backend serves depends on the Node's zone label.
    api.apply(service(
        "zonal",
        vip(12),
        &json!({"trafficDistribution": "PreferClose"}),
    ));
    api.apply(slice(
        "zonal-1",
        "zonal",
        TCP_PORT,
        &[
            Ep::ready(b[0]).hinted_for("zone-a"),
            Ep::ready(b[1]).hinted_for("zone-b"),
        ],
    ));

    // The EndpointSlice list hangs: Services and the Node are known, their endpoints are not.
    // Serving now would reject every connection to services that have endpoints. (The
    // fresh maps may be written meanwhile: no program reads them before it is attached.)
    api.hold_lists("endpointslices");
    let mut agent = api_bed.spawn_agent();
    api.wait_for_watches("services", 1, WATCH_OPEN)
        .expect("services watched");
    api.wait_for_watches("nodes", 1, WATCH_OPEN)
        .expect("node watched");
    std::thread::sleep(Duration::from_millis(300));
    let (status, metrics) = get(
        &bed.topo.node,
        "127.0.0.1:10249".parse().expect("addr"),
        "/metrics",
    )
    .expect("/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.lines().any(|l| l == "kproxy_attached_interfaces 0"),
        "nothing served from half-synced caches: {metrics}"
    );
    let (status, _) = get(
        &bed.topo.node,
        "127.0.0.1:10256".parse().expect("addr"),
        "/readyz",
    )
    .expect("/readyz");
    assert_eq!(status, 503, "not ready before every cache synced");
    // The links are made meanwhile, with a program that passes everything on: the client
    // still reaches a backend straight, and nothing is translated.
    wait_until("the links made ahead", WATCH_OPEN, || {
        agent.log_text().contains("links made ahead").then_some(())
    });
    let ahead = link_programs(&bed.pin_dir());
    assert!(
        !ahead.is_empty() && ahead.iter().all(|l| l.prog_name == PASS_PROGRAM_NAME),
        "{ahead:?}"
    );
    let direct = tcp_request(
        &bed.topo.client,
        SocketAddrV4::new(b[0], TCP_PORT),
        CONVERGE,
    )
    .expect("a backend reached straight through the links made ahead");
    assert_eq!(*direct.backend.ip(), b[0]);
    api.release_lists("endpointslices");
    agent.wait_ready();
    let served = link_programs(&bed.pin_dir());
    assert_eq!(
        served.iter().map(|l| l.link_id).collect::<Vec<_>>(),
        ahead.iter().map(|l| l.link_id).collect::<Vec<_>>(),
        "kproxy's programs swapped into the links made ahead"
    );
    assert!(
        served.iter().all(|l| l.prog_name.starts_with("kproxy_tc")),
        "{served:?}"
    );
    assert!(
        !agent.log_text().contains("replaced the program"),
        "a first start attaches, it replaces no program of a previous agent's"
    );
    assert_eq!(
        frontends(bed),
        vec![frontend(10), frontend(12)],
        "filtered objects are absent"
    );
    bed.wait_for_backends(&frontend(10), &at(&b[..2]), CONVERGE);
    bed.wait_for_backends(&frontend(12), &at(&b[..1]), CONVERGE);
    let requests = api.requests();
    for (resource, selector) in [
        (
            "services",
            "labelSelector=%21service.kubernetes.io%2Fservice-proxy-name%2C%21service.kubernetes.io%2Fheadless",
        ),
        ("services", "fieldSelector=spec.clusterIP%21%3DNone"),
        (
            "endpointslices",
            "labelSelector=%21service.kubernetes.io%2Fservice-proxy-name%2C%21service.kubernetes.io%2Fheadless",
        ),
        ("nodes", "fieldSelector=metadata.name%3Dnode"),
    ] {
        assert!(
            requests
                .iter()
                .any(|r| r.contains(resource) && r.contains(selector)),
            "{resource} listed with {selector}: {requests:#?}"
        );
    }
    let reply = tcp_request(&bed.topo.client, SocketAddrV4::new(vip(10), 80), CONVERGE)
        .expect("a connection through the API-programmed datapath");
    assert!(b[..2].contains(reply.backend.ip()));

    // ADDED, MODIFIED, DELETED.
    api.apply(service("api", vip(11), &json!({})));
    api.apply(slice("api-1", "api", TCP_PORT, &[Ep::ready(b[2])]));
    bed.wait_for_backends(&frontend(11), &at(&b[2..]), CONVERGE);
    api.apply(slice("web-1", "web", TCP_PORT, &[Ep::ready(b[2])]));
    bed.wait_for_backends(&frontend(10), &at(&b[2..]), CONVERGE);
    assert!(api.delete("Service", Some("default"), "api"));
    wait_until("api's frontend removed", CONVERGE, || {
        (!frontends(bed).contains(&frontend(11))).then_some(())
    });

    // The Node changes zone: the hints now pick the other backend.
    api.apply(node("node", "zone-b"));
    bed.wait_for_backends(&frontend(12), &at(&b[1..2]), CONVERGE);

    // Bookmarks move the watches' resourceVersion on; later events still arrive.
    api.bookmark();
    api.apply(slice("web-1", "web", TCP_PORT, &[Ep::ready(b[0])]));
    bed.wait_for_backends(&frontend(10), &at(&b[..1]), CONVERGE);

    // Dropped watch connections: changes made while the agent is not watching arrive when
    // it resumes from its last resourceVersion, without a relist.
    let lists_before = lists(api, "endpointslices");
    api.drop_watches();
    api.apply(slice("web-1", "web", TCP_PORT, &[Ep::ready(b[1])]));
    bed.wait_for_backends(&frontend(10), &at(&b[1..2]), CONVERGE);
    assert_eq!(
        lists(api, "endpointslices"),
        lists_before,
        "resumed, not relisted"
    );

    // 410 Gone: the history is gone, the agent must relist, and what changed meanwhile
    // (an update and a deletion) converges.
    let lists_before = lists(api, "endpointslices");
    api.expire();
    api.apply(slice(
        "web-1",
        "web",
        TCP_PORT,
        &[Ep::ready(b[0]), Ep::ready(b[2])],
    ));
    assert!(api.delete("Service", Some("default"), "zonal"));
    bed.wait_for_backends(&frontend(10), &at(&[b[0], b[2]]), CONVERGE);
    wait_until("zonal's frontend removed", CONVERGE, || {
        (!frontends(bed).contains(&frontend(12))).then_some(())
    });
    assert!(
        lists(api, "endpointslices") > lists_before,
        "relisted after 410 Gone"
    );
    agent.assert_running();
    let reply = tcp_request(&bed.topo.client, SocketAddrV4::new(vip(10), 80), CONVERGE)
        .expect("a connection after the relist");
    assert!([b[0], b[2]].contains(reply.backend.ip()));

    // The watches drop and their restart is refused with HTTP 410 (no ERROR event to
    // relist on): kproxy must relist by itself, as client-go does, and converge.
    // (A Service change first: the EndpointSlice watch's resourceVersion falls behind.)
    api.apply(service("api", vip(11), &json!({})));
    wait_until("api's frontend back", CONVERGE, || {
        frontends(bed).contains(&frontend(11)).then_some(())
    });
    let lists_before = lists(api, "endpointslices");
    api.expire_at_watch_start();
    api.apply(slice("web-1", "web", TCP_PORT, &[Ep::ready(b[1])]));
    bed.wait_for_backends(&frontend(10), &at(&b[1..2]), CONVERGE);
    assert!(
        lists(api, "endpointslices") > lists_before,
        "relisted after a refused watch start"
    );
    // The first list takes whatever version the API server holds (resourceVersion 0, from
    // its watch cache); the relists, after an ERROR event or a refused watch start, ask for
    // the latest: never older than what the watch had already seen.
    let slice_lists = list_requests(api, "endpointslices");
    assert!(
        slice_lists[0].contains("resourceVersion=0"),
        "{slice_lists:?}"
    );
    assert!(
        slice_lists.len() >= 3
            && slice_lists[1..]
                .iter()
                .all(|r| !r.contains("resourceVersion=")),
        "{slice_lists:?}"
    );
    let (_, metrics) = get(
        &bed.topo.node,
        "127.0.0.1:10249".parse().expect("addr"),
        "/metrics",
    )
    .expect("/metrics");
    let gone = sample(
        &metrics,
        r#"kproxy_watch_errors_total{resource="endpointslices",reason="gone"}"#,
    );
    assert!(gone.is_some_and(|n| n >= 1.0), "{metrics}");
    assert!(
        agent
            .log_text()
            .contains("the watch cannot resume (its history was compacted); relisting"),
        "{}",
        agent.log_text()
    );
}

#[test]
fn a_storm_of_1000_endpoint_slice_updates_is_coalesced() {
    if !require_privileges("a_storm_of_1000_endpoint_slice_updates_is_coalesced") {
        return;
    }
    let bed = ApiBed::new();
    let b = bed.bed.backends();
    bed.api.apply(service("web", vip(10), &json!({})));
    bed.api
        .apply(slice("web-1", "web", TCP_PORT, &[Ep::ready(b[0])]));
    let mut agent = bed.spawn_agent();
    agent.wait_ready();
    let metrics_addr: SocketAddr = "127.0.0.1:10249".parse().expect("addr");
    let syncs = || {
        let (_, metrics) = get(&bed.bed.topo.node, metrics_addr, "/metrics").expect("/metrics");
        sample(&metrics, "kproxy_syncs_total").expect("syncs counter")
    };
    let before = syncs();

    // 1,000 updates as fast as the API server can send them (a rollout of a big
    // deployment), ending on backends 1 and 2.
    let updates: Vec<Value> = (0..1000)
        .map(|i| {
            let eps: Vec<Ep> = match i {
                999 => vec![Ep::ready(b[1]), Ep::ready(b[2])],
                _ => vec![Ep::ready(b[i % 3])],
            };
            slice("web-1", "web", TCP_PORT, &eps)
        })
        .collect();
    bed.api.apply_all(updates);
    bed.bed
        .wait_for_backends(&frontend(10), &at(&b[1..]), CONVERGE);
    let syncs_used = syncs() - before;
    eprintln!("1000 EndpointSlice updates took {syncs_used} syncs");
    assert!(
        (1.0..=100.0).contains(&syncs_used),
        "1000 updates coalesced into {syncs_used} syncs"
    );
    agent.assert_running();
}

#[test]
fn an_api_server_unreachable_at_start_leaves_the_agent_alive_and_not_ready() {
    if !require_privileges(
        "an_api_server_unreachable_at_start_leaves_the_agent_alive_and_not_ready",
    ) {
        return;
    }
    // Nothing listens on the discard port of the node namespace's loopback: every list is
    // refused. (A real API server cannot be made unreachable at a chosen moment more simply.)
    let bed = Bed::new(TopologyOptions::default());
    let kubeconfig = bed.dir.path().join("unreachable.kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\n\
         clusters:\n- name: gone\n  cluster:\n    server: http://127.0.0.1:9\n\
         users:\n- name: gone\n  user: {}\n\
         contexts:\n- name: gone\n  context:\n    cluster: gone\n    user: gone\n\
         current-context: gone\n",
    )
    .expect("kubeconfig");
    let mut agent = Agent::spawn_api(&bed, &kubeconfig, &["--healthz-timeout", "1"]);
    agent.wait_for_log(
        "no complete view of the cluster yet",
        Duration::from_secs(10),
    );
    let status = |path: &str| {
        let addr = "127.0.0.1:10256".parse().expect("address");
        get(&bed.topo.node, addr, path)
            .map(|(status, _)| status)
            .ok()
    };
    assert_eq!(status("/livez"), Some(200), "alive: no restart loop");
    assert_eq!(status("/healthz"), Some(503));
    assert_eq!(status("/readyz"), Some(503));
    let addr = "127.0.0.1:10249".parse().expect("address");
    let (_, metrics) = get(&bed.topo.node, addr, "/metrics").expect("/metrics");
    assert_eq!(sample(&metrics, "kproxy_cluster_view_synced"), Some(0.0));
    let refused = sample(
        &metrics,
        r#"kproxy_watch_errors_total{resource="services",reason="other"}"#,
    );
    assert!(refused.is_some_and(|n| n >= 1.0), "{metrics}");
    agent.assert_running();
}
