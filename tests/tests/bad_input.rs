//! The corpus of bad input end to end: every kernel map full in turn (tiny maps, real
//! programs on hand-built packets), and the agent binary fed bad manifests and bad API
//! objects. Each bad object is reported naming it, counted by kind in `/metrics`, and
//! skipped; everything else keeps being served; nothing crashes.

mod support;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use kproxy::{
    dataplane::load::MapSizes,
    model::{Desired, Protocol},
    problem::ProblemKind,
};
use kproxy_testbed::{
    TopologyOptions, apiserver::FakeApiServer, require_privileges, tcp_request, topology::vip,
};
use serde_json::{Value, json};
use support::{
    agent::{Agent, Bed, TCP_PORT, wait_until},
    datapath::{LoadedDatapath, frontend},
    http::{get, sample},
    manifests::{documents, service, slice},
    objects::{self, Ep},
    packets::{SYN, dst, tcp_frame},
};

const CONVERGE: Duration = Duration::from_secs(3);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);

/// `VIP:80/TCP` of `vip(n)`.
fn fe(n: u16) -> String {
    format!("{}:80/TCP", vip(n))
}

fn at(addrs: &[Ipv4Addr]) -> Vec<SocketAddrV4> {
    addrs
        .iter()
        .map(|a| SocketAddrV4::new(*a, TCP_PORT))
        .collect()
}

/// `kproxy_current_problems` by kind, as `/metrics` shows them now.
fn current_problems(bed: &Bed) -> BTreeMap<String, f64> {
    let (_, metrics) = get(
        &bed.topo.node,
        "127.0.0.1:10249".parse().expect("address"),
        "/metrics",
    )
    .expect("/metrics");
    let kinds = [
        ProblemKind::Read,
        ProblemKind::Parse,
        ProblemKind::UnknownKind,
        ProblemKind::InvalidService,
        ProblemKind::InvalidEndpoint,
        ProblemKind::OrphanSlice,
        ProblemKind::Conflict,
        ProblemKind::Datapath,
    ];
    kinds
        .iter()
        .filter_map(|k| {
            let label = k.label();
            let now = sample(
                &metrics,
                &format!("kproxy_current_problems{{kind=\"{label}\"}}"),
            )?;
            let total = sample(
                &metrics,
                &format!("kproxy_problems_total{{kind=\"{label}\"}}"),
            );
            assert!(
                total.is_some_and(|t| t >= now),
                "{label}: every current problem was counted: {metrics}"
            );
            (now > 0.0).then(|| (label.to_owned(), now))
        })
        .collect()
}

fn kinds(list: &[(&str, f64)]) -> BTreeMap<String, f64> {
    list.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect()
}

/// Waits until `/metrics` counts exactly `want` current problems by kind.
fn wait_for_problems(bed: &Bed, want: &[(&str, f64)]) {
    let want = kinds(want);
    let mut last = BTreeMap::new();
    let started = Instant::now();
    while started.elapsed() < CONVERGE {
        last = current_problems(bed);
        if last == want {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("current problems {last:?}, wanted {want:?}");
}

/// Waits until the agent's log has a line containing every one of `parts`.
fn wait_for_log_line(agent: &Agent, parts: &[&str]) {
    wait_until(&format!("a log line with {parts:?}"), CONVERGE, || {
        agent
            .log_text()
            .lines()
            .any(|l| parts.iter().all(|p| l.contains(p)))
            .then_some(())
    });
}

// --- Every kernel map full in turn --------------------------------------------------------

const B: [Ipv4Addr; 8] = [
    Ipv4Addr::new(198, 18, 2, 2),
    Ipv4Addr::new(198, 18, 3, 2),
    Ipv4Addr::new(198, 18, 4, 2),
    Ipv4Addr::new(198, 18, 5, 2),
    Ipv4Addr::new(198, 18, 6, 2),
    Ipv4Addr::new(198, 18, 7, 2),
    Ipv4Addr::new(198, 18, 8, 2),
    Ipv4Addr::new(198, 18, 9, 2),
];

/// Frontends `(vip(n), endpoints)`, TCP port 80 to 8080.
fn want(entries: &[(u16, &[Ipv4Addr])]) -> Desired {
    entries
        .iter()
        .map(|(n, eps)| {
            let eps: Vec<(Ipv4Addr, u16)> = eps.iter().map(|a| (*a, TCP_PORT)).collect();
            frontend(vip(*n), 80, Protocol::Tcp, &eps, None)
        })
        .collect()
}

struct MapCase {
    name: &'static str,
    sizes: MapSizes,
    /// Programmed one after the other before the sync that does not fit.
    steps: Vec<Desired>,
    last: Desired,
    failing: &'static str,
    says: &'static str,
    /// What each frontend serves afterwards (`None`: not a service, packets pass untouched).
    served: Vec<(u16, Option<&'static [Ipv4Addr]>)>,
}

fn tiny(services: u32, backends: u32) -> MapSizes {
    MapSizes {
        services,
        backends,
        conntrack: 64,
        affinity: 16,
        ..MapSizes::default()
    }
}

#[test]
fn every_kernel_map_full_in_turn_fails_one_frontend_and_the_rest_is_served() {
    if !require_privileges(
        "every_kernel_map_full_in_turn_fails_one_frontend_and_the_rest_is_served",
    ) {
        return;
    }
    let cases = vec![
        MapCase {
            // KP_SERVICES and its per-id arrays have --max-services entries: ids run out first.
            name: "service port ids (the size of KP_SERVICES) used up",
            sizes: tiny(2, 16),
            steps: vec![want(&[(1, &B[..2]), (2, &B[2..3])])],
            last: want(&[(1, &B[..2]), (2, &B[2..3]), (3, &B[3..4])]),
            failing: "Service default/svc-198.19.0.3-80",
            says: "no free service port id",
            served: vec![(1, Some(&B[..2])), (2, Some(&B[2..3])), (3, None)],
        },
        MapCase {
            name: "KP_BACKENDS full: a new frontend is not programmed",
            sizes: tiny(8, 4),
            steps: vec![want(&[(1, &B[..2])])],
            last: want(&[(1, &B[..2]), (2, &B[2..5])]),
            failing: "Service default/svc-198.19.0.2-80",
            says: "KP_BACKENDS is full (raise --max-backends)",
            served: vec![(1, Some(&B[..2])), (2, None)],
        },
        MapCase {
            name: "KP_BACKENDS full: an update keeps the backends it had",
            sizes: tiny(8, 4),
            steps: vec![want(&[(1, &B[..2]), (2, &B[2..3])])],
            last: want(&[(1, &B[..2]), (2, &B[2..5])]),
            failing: "Service default/svc-198.19.0.2-80",
            says: "KP_BACKENDS is full",
            served: vec![(1, Some(&B[..2])), (2, Some(&B[2..3]))],
        },
        MapCase {
            // KP_SLOTS holds two banks' worth (2 x --max-backends) for the frontends of more
            // backends than a service value holds: an inactive bank that keeps a frontend's
            // former set can fill it before KP_BACKENDS is. 1 leaves six slots in its
            // inactive bank when its value takes its one backend; 2 takes six more, and its
            // next five would go into its other bank: 17 of 14.
            name: "KP_SLOTS full: an update keeps the backends it had",
            sizes: tiny(8, 7),
            steps: vec![
                want(&[(1, &B[..7])]),
                want(&[(1, &B[..6])]),
                want(&[(1, &B[..1])]),
                want(&[(1, &B[..1]), (2, &B[1..7])]),
            ],
            last: want(&[(1, &B[..1]), (2, &B[1..6])]),
            failing: "Service default/svc-198.19.0.2-80",
            says: "KP_SLOTS is full (raise --max-backends)",
            served: vec![(1, Some(&B[..1])), (2, Some(&B[1..7]))],
        },
    ];
    for case in cases {
        let name = case.name;
        let mut dp = LoadedDatapath::load_with(&case.sizes);
        for step in &case.steps {
            dp.program(step);
        }
        let report = dp.programmed.sync(&case.last, &mut dp.maps);
        let [problem] = report.problems.as_slice() else {
            panic!("case {name}: one problem, got {:#?}", report.problems);
        };
        assert_eq!(
            problem.kind,
            ProblemKind::Datapath,
            "case {name}: {problem}"
        );
        assert_eq!(
            problem.object.as_deref(),
            Some(case.failing),
            "case {name}: {problem}"
        );
        assert!(
            problem.message.contains(case.says),
            "case {name}: {problem}"
        );

        // What packets see: served frontends DNAT to their (old) backends; one that was
        // never programmed is no service at all.
        for (n, backends) in &case.served {
            for port in 40_000..40_008 {
                let frame = tcp_frame((CLIENT, port), (vip(*n), 80), SYN, b"");
                let (_, out) = dp.tc(&frame);
                let (to, to_port) = dst(&out);
                match backends {
                    Some(backends) => {
                        assert!(
                            backends.contains(&to) && to_port == TCP_PORT,
                            "case {name}: {} reached {to}:{to_port}",
                            vip(*n)
                        );
                    }
                    None => assert_eq!(out, frame, "case {name}: {} is no service", vip(*n)),
                }
            }
        }
        // Nothing half-written: every slot of the maps is one a frontend uses.
        let view =
            kproxy::cmd::services::collect(&dp.bpffs.pin_path("kproxy")).expect("reading the maps");
        for svc in &view.services {
            assert!(
                svc.backends.iter().all(|b| !b.address.is_empty()),
                "case {name}: {svc:?}"
            );
        }
    }
}

// --- The agent on bad manifests -----------------------------------------------------------

/// `n` endpoint addresses nothing answers, in the bed's range (198.18.16.0 on).
fn many(n: usize) -> Vec<Ipv4Addr> {
    (0..n)
        .map(|i| {
            Ipv4Addr::from(
                u32::from(Ipv4Addr::new(198, 18, 16, 0)) + u32::try_from(i).expect("small"),
            )
        })
        .collect()
}

/// Services with ports kproxy cannot serve, beside one it can, and its slice with bad
/// endpoints and a bad port beside good ones.
fn bad_ports_and_endpoints(good: Ipv4Addr) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: ports, namespace: default}}
spec:
  clusterIP: {vip}
  ports:
  - {{name: zero, port: 0, protocol: TCP}}
  - {{name: big, port: 65536, protocol: TCP}}
  - {{name: negative, port: -1, protocol: TCP}}
  - {{name: icmp, port: 7, protocol: ICMP}}
  - {{name: http, port: 80, protocol: TCP}}
  - {{name: http-again, port: 80, protocol: TCP}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: ports-1
  namespace: default
  labels: {{kubernetes.io/service-name: ports}}
addressType: IPv4
ports:
- {{name: http, port: {TCP_PORT}, protocol: TCP}}
- {{name: zero, port: 0, protocol: TCP}}
endpoints:
- addresses: [\"0.0.0.0\"]
- addresses: [\"2001:db8::2\"]
- addresses: [\"198.18.2.999\"]
- addresses: [\"{good}\"]
",
        vip = vip(30)
    )
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, step by step")]
fn bad_manifests_are_reported_by_name_counted_and_skipped() {
    if !require_privileges("bad_manifests_are_reported_by_name_counted_and_skipped") {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    let b = bed.backends();
    let http = [("http", 80, "TCP")];
    let eps = [("http", TCP_PORT, "TCP")];
    bed.write(
        "apps.yaml",
        &documents(&[
            service("web", vip(10), &http, None),
            slice("web-1", "web", &eps, &b),
            service("holder", vip(40), &http, None),
            slice("holder-1", "holder", &eps, &b[..1]),
        ]),
    );
    bed.write(
        "bad-vips.yaml",
        &documents(&[
            service("zero", Ipv4Addr::UNSPECIFIED, &http, None),
            service(
                "mdns",
                Ipv4Addr::new(224, 0, 0, 251),
                &[("mdns", 5353, "UDP")],
                None,
            ),
            service("badip", vip(41), &http, None).replace("198.19.0.41", "198.19.0.300"),
        ]),
    );
    bed.write("bad-ports.yaml", &bad_ports_and_endpoints(b[0]));
    bed.write("ghost.yaml", &slice("ghost-1", "ghost", &eps, &b[..1]));
    bed.write(
        "typed.yaml",
        &service("typed", vip(60), &http, None).replace("port: 80", "port: eighty"),
    );
    let big: Vec<Ep> = many(10_000).into_iter().map(Ep::ready).collect();
    bed.write(
        "big.json",
        &objects::list(&[
            objects::service("big", vip(50), &json!({})),
            objects::slice("big-1", "big", TCP_PORT, &big),
        ]),
    );

    let started = Instant::now();
    let mut agent = Agent::start(&bed, &[]);
    eprintln!(
        "ready in {:?} with a 10,000-endpoint slice",
        started.elapsed()
    );
    let mut served: Vec<String> = bed
        .view()
        .expect("datapath")
        .services
        .iter()
        .map(|s| format!("{} {}", s.frontend, s.backends.len()))
        .collect();
    served.sort();
    assert_eq!(
        served,
        [
            format!("{} 3", fe(10)),
            format!("{} 1", fe(30)),
            format!("{} 1", fe(40)),
            format!("{} 10000", fe(50)),
        ],
        "the good services, the good port of a bad service, its good endpoint, all 10,000"
    );
    tcp_request(&bed.topo.client, SocketAddrV4::new(vip(30), 80), CONVERGE)
        .expect("the good port of a service with bad ones is served");
    wait_for_problems(
        &bed,
        &[
            ("invalid_service", 8.0),
            ("invalid_endpoint", 2.0),
            ("orphan_slice", 1.0),
            ("parse", 1.0),
        ],
    );
    for (object, says) in [
        ("Service default/zero", "is the unspecified address"),
        ("Service default/mdns", "is a multicast address"),
        (
            "Service default/badip",
            "invalid cluster IP \"198.19.0.300\"",
        ),
        (
            "Service default/ports",
            "port \"big\": invalid port number 65536",
        ),
        (
            "Service default/ports",
            "port \"http-again\": 80/TCP is already port \"http\"",
        ),
        ("Service default/ports", "unknown protocol \"ICMP\""),
        ("EndpointSlice default/ports-1", "3 endpoints skipped"),
        (
            "EndpointSlice default/ports-1",
            "port \"zero\": invalid port number 0",
        ),
        (
            "EndpointSlice default/ghost-1",
            "Service default/ghost, which does not exist",
        ),
        ("Service default/typed", "invalid Service"),
    ] {
        wait_for_log_line(&agent, &[object, says]);
    }

    // A newcomer on a served VIP and port waits; the holder keeps serving.
    bed.write(
        "newcomer.yaml",
        &documents(&[
            service("newcomer", vip(40), &http, None),
            slice("newcomer-1", "newcomer", &eps, &b[1..2]),
        ]),
    );
    wait_for_log_line(
        &agent,
        &[
            "Service default/newcomer",
            "already served for Service default/holder",
            "(conflict)",
        ],
    );
    let reply = tcp_request(&bed.topo.client, SocketAddrV4::new(vip(40), 80), CONVERGE)
        .expect("the holder serves");
    assert_eq!(*reply.backend.ip(), b[0], "not taken over");
    // The holder goes: the newcomer takes the frontend over.
    bed.write(
        "apps.yaml",
        &documents(&[
            service("web", vip(10), &http, None),
            slice("web-1", "web", &eps, &b),
        ]),
    );
    bed.wait_for_backends(&fe(40), &at(&b[1..2]), CONVERGE);
    // The holder comes back: now it is the newcomer, and waits.
    bed.write(
        "holder.yaml",
        &documents(&[
            service("holder", vip(40), &http, None),
            slice("holder-1", "holder", &eps, &b[..1]),
        ]),
    );
    wait_for_log_line(
        &agent,
        &[
            "Service default/holder",
            "already served for Service default/newcomer",
        ],
    );
    bed.wait_for_backends(&fe(40), &at(&b[1..2]), CONVERGE);

    // Fixing a document makes its service appear; nothing else moved, nothing stopped.
    bed.write("typed.yaml", &service("typed", vip(60), &http, None));
    wait_until("the fixed service", CONVERGE, || {
        bed.view()?
            .services
            .iter()
            .any(|s| s.frontend == fe(60))
            .then_some(())
    });
    wait_for_problems(
        &bed,
        &[
            ("invalid_service", 8.0),
            ("invalid_endpoint", 2.0),
            ("orphan_slice", 1.0),
            ("conflict", 1.0),
        ],
    );
    bed.wait_for_backends(&fe(10), &at(&b), CONVERGE);
    agent.assert_running();
}

#[test]
fn full_maps_are_reported_and_retried_through_the_agent() {
    if !require_privileges("full_maps_are_reported_and_retried_through_the_agent") {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    let b = bed.backends();
    let http = [("http", 80, "TCP")];
    let eps = [("http", TCP_PORT, "TCP")];
    let svc = |name: &str, n: u16, addrs: &[Ipv4Addr]| {
        documents(&[
            service(name, vip(n), &http, None),
            slice(&format!("{name}-1"), name, &eps, addrs),
        ])
    };
    bed.write("a.yaml", &svc("a", 1, &b[..2]));
    bed.write("b.yaml", &svc("b", 2, &b[2..3]));
    bed.write("c.yaml", &svc("c", 3, &b[..1]));
    let mut agent = Agent::start(
        &bed,
        &[
            "--max-services",
            "3",
            "--max-backends",
            "6",
            "--healthz-timeout",
            "1",
        ],
    );
    let status = |path: &str| {
        let addr = "127.0.0.1:10256".parse().expect("address");
        get(&bed.topo.node, addr, path)
            .map(|(status, _)| status)
            .ok()
    };
    bed.wait_for_backends(&fe(2), &at(&b[2..3]), CONVERGE);

    // KP_BACKENDS: b grows by three endpoints, one more than there is room for.
    let more = [
        b[2],
        Ipv4Addr::new(198, 18, 20, 1),
        Ipv4Addr::new(198, 18, 20, 2),
        Ipv4Addr::new(198, 18, 20, 3),
    ];
    bed.write("b.yaml", &svc("b", 2, &more));
    wait_for_log_line(
        &agent,
        &[
            "Service default/b:http",
            "KP_BACKENDS is full (raise --max-backends)",
            "(datapath)",
        ],
    );
    wait_for_problems(&bed, &[("datapath", 1.0)]);
    // The change that failed stays pending: once it has waited --healthz-timeout, /healthz
    // (as kube-proxy's when its rules fail to apply) and /readyz say so; /livez too.
    wait_until("/healthz failing", CONVERGE, || {
        (status("/healthz") == Some(503)).then_some(())
    });
    assert_eq!(status("/readyz"), Some(503));
    assert_eq!(status("/livez"), Some(503));
    let reply = tcp_request(&bed.topo.client, SocketAddrV4::new(vip(2), 80), CONVERGE)
        .expect("b keeps serving its old backends");
    assert_eq!(*reply.backend.ip(), b[2]);
    for (n, addrs) in [(1, &b[..2]), (3, &b[..1])] {
        bed.wait_for_backends(&fe(n), &at(addrs), CONVERGE);
    }
    bed.write("b.yaml", &svc("b", 2, &b[2..3]));
    wait_for_problems(&bed, &[]);
    wait_until("/healthz healthy again", CONVERGE, || {
        (status("/healthz") == Some(200)).then_some(())
    });
    assert_eq!(status("/readyz"), Some(200));

    // Service port ids: c goes and d comes in one change (c.yaml replaced by d). c's id is free only from the next
    // sync on, so d fails once and is retried without waiting for the 30 s resync.
    bed.write("c.yaml", &svc("d", 4, &b[1..2]));
    let started = Instant::now();
    bed.wait_for_backends(&fe(4), &at(&b[1..2]), Duration::from_secs(5));
    eprintln!("d served after {:?}", started.elapsed());
    wait_for_log_line(
        &agent,
        &[
            "Service default/d:http",
            "no free service port id",
            "(datapath)",
        ],
    );
    wait_for_log_line(&agent, &["resolved", "Service default/d:http"]);
    wait_for_problems(&bed, &[]);
    agent.assert_running();
}

// --- The agent on bad API objects ----------------------------------------------------------

fn created(mut object: Value, at: &str) -> Value {
    object["metadata"]["creationTimestamp"] = json!(at);
    object
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, step by step")]
fn bad_api_objects_are_reported_by_name_counted_and_skipped() {
    if !require_privileges("bad_api_objects_are_reported_by_name_counted_and_skipped") {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    let api = FakeApiServer::start_in(&bed.topo.node).expect("fake API server");
    let kubeconfig = api.write_kubeconfig(bed.dir.path()).expect("kubeconfig");
    let b = bed.backends();
    api.apply(objects::node("node", "zone-a"));
    api.apply(objects::service("web", vip(10), &json!({})));
    api.apply(objects::slice(
        "web-1",
        "web",
        TCP_PORT,
        &[Ep::ready(b[0]), Ep::ready(b[1])],
    ));
    // Not valid for their types: a real API server refuses them, this one serves them.
    let mut bad_port = objects::service("bad-port", vip(20), &json!({}));
    bad_port["spec"]["ports"][0]["port"] = json!("eighty");
    api.apply(bad_port);
    let mut bad_slice = objects::slice("web-bad", "web", TCP_PORT, &[Ep::ready(b[2])]);
    bad_slice["endpoints"][0]["addresses"] = json!("198.18.4.2");
    api.apply(bad_slice);
    api.apply(objects::service("zero", Ipv4Addr::UNSPECIFIED, &json!({})));
    // Two services on one VIP and port in the first list: the older one serves, though the
    // other sorts first by name.
    api.apply(created(
        objects::service("zeta", vip(40), &json!({})),
        "2026-01-01T00:00:00Z",
    ));
    api.apply(objects::slice(
        "zeta-1",
        "zeta",
        TCP_PORT,
        &[Ep::ready(b[0])],
    ));
    api.apply(created(
        objects::service("alpha", vip(40), &json!({})),
        "2026-06-01T00:00:00Z",
    ));
    api.apply(objects::slice(
        "alpha-1",
        "alpha",
        TCP_PORT,
        &[Ep::ready(b[1])],
    ));

    // Before: one bad item failed the whole list, retried forever; never ready.
    let mut agent = Agent::spawn_api(&bed, &kubeconfig, &[]);
    agent.wait_ready();
    bed.wait_for_backends(&fe(10), &at(&b[..2]), CONVERGE);
    bed.wait_for_backends(&fe(40), &at(&b[..1]), CONVERGE);
    wait_for_problems(
        &bed,
        &[("parse", 2.0), ("invalid_service", 1.0), ("conflict", 1.0)],
    );
    for (object, says) in [
        ("Service default/bad-port", "not a valid Service"),
        ("EndpointSlice default/web-bad", "not a valid EndpointSlice"),
        ("Service default/zero", "unspecified"),
        (
            "Service default/alpha",
            "already served for Service default/zeta",
        ),
    ] {
        wait_for_log_line(&agent, &[object, says]);
    }
    tcp_request(&bed.topo.client, SocketAddrV4::new(vip(10), 80), CONVERGE)
        .expect("served beside the bad objects");

    // Through watch events: a bad object arrives, is reported, and is fixed.
    let mut late = objects::service("late", vip(30), &json!({}));
    late["spec"]["ports"] = json!(80);
    api.apply(late);
    wait_for_log_line(&agent, &["Service default/late", "not a valid Service"]);
    wait_for_problems(
        &bed,
        &[("parse", 3.0), ("invalid_service", 1.0), ("conflict", 1.0)],
    );
    api.apply(objects::service("late", vip(30), &json!({})));
    wait_until("the fixed service", CONVERGE, || {
        bed.view()?
            .services
            .iter()
            .any(|s| s.frontend == fe(30))
            .then_some(())
    });
    wait_for_problems(
        &bed,
        &[("parse", 2.0), ("invalid_service", 1.0), ("conflict", 1.0)],
    );

    // The holder is deleted: the other takes over. It comes back: it waits.
    assert!(api.delete("Service", Some("default"), "zeta"));
    bed.wait_for_backends(&fe(40), &at(&b[1..2]), CONVERGE);
    api.apply(created(
        objects::service("zeta", vip(40), &json!({})),
        "2026-01-01T00:00:00Z",
    ));
    wait_for_log_line(
        &agent,
        &[
            "Service default/zeta",
            "already served for Service default/alpha",
        ],
    );
    // A relist (410 Gone) changes nothing: the holder keeps the frontend.
    api.expire();
    api.apply(objects::service("after-relist", vip(50), &json!({})));
    wait_until("the relist", CONVERGE, || {
        bed.view()?
            .services
            .iter()
            .any(|s| s.frontend == fe(50))
            .then_some(())
    });
    bed.wait_for_backends(&fe(40), &at(&b[1..2]), CONVERGE);
    let reply = tcp_request(&bed.topo.client, SocketAddrV4::new(vip(40), 80), CONVERGE)
        .expect("the holder serves");
    assert_eq!(*reply.backend.ip(), b[1]);
    agent.assert_running();
}
