//! Health-check NodePorts (pkg/proxy/healthcheck/service_health.go): which Services get one
//! (`ServicePortMap.HealthCheckNodePorts`, from `NeedsHealthCheck`: type LoadBalancer with
//! externalTrafficPolicy Local) and what each reports
//! (`EndpointsMap.LocalReadyEndpoints`: this node's ready endpoint IPs across the Service's
//! ports), through `ClusterState::health_checks`.
//!
//! Upstream's endpoints-map cases have no Services (kube-proxy keeps endpoints of any
//! Service); here each namespace/name they mention gets an externalTrafficPolicy Local
//! LoadBalancer Service with a health-check NodePort, and a Service upstream expects no
//! count for reports 0 (what the health server answers for it: 503).

use std::collections::BTreeMap;

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use super::{Op, node};
use crate::model::{
    Change, ClusterState, ServiceHealth,
    fixtures::{ServiceBuilder, service, slice},
};

const HOST: &str = "test-node";

/// One health check: `(port, namespace/name, local endpoints)`.
type Check = (u16, String, usize);

/// The health checks.
fn checks(state: &ClusterState) -> Vec<Check> {
    state
        .health_checks()
        .into_iter()
        .map(
            |(
                port,
                ServiceHealth {
                    namespace,
                    name,
                    local_endpoints,
                },
            )| (port, format!("{namespace}/{name}"), local_endpoints),
        )
        .collect()
}

fn apply(state: &mut ClusterState, ops: Vec<Op>) {
    state.apply(ops.into_iter().map(Op::change));
}

/// An externalTrafficPolicy Local LoadBalancer with health-check NodePort `hc`.
fn local_lb(ns: &str, name: &str, ip: &str, hc: i32) -> ServiceBuilder {
    service(ns, name, ip)
        .type_("LoadBalancer")
        .external_traffic_policy("Local")
        .health_check_node_port(hc)
        .load_balancer_ingress(&["1.2.3.4"])
}

#[test]
fn which_services_get_a_health_check_node_port() {
    let ports = |svc: ServiceBuilder| svc.port("p1", 1234, "UDP").node_port(30061);
    // (case, Service, health checks)
    let cases: Vec<(&str, Service, Vec<Check>)> = vec![
        (
            "servicechangetracker_test.go TestServiceToServiceMap/load balancer service with only local traffic policy",
            ports(local_lb(
                "ns1",
                "only-local-load-balancer",
                "172.16.55.12",
                345,
            ))
            .build(),
            vec![(345, "ns1/only-local-load-balancer".into(), 0)],
        ),
        (
            "servicechangetracker_test.go TestServiceToServiceMap/load balancer service (Cluster policy): none",
            ports(
                service("ns1", "load-balancer", "172.16.55.11")
                    .type_("LoadBalancer")
                    .health_check_node_port(345),
            )
            .build(),
            vec![],
        ),
        (
            "service/util.go NeedsHealthCheck/a NodePort Service with the Local policy: none",
            ports(
                service("ns1", "node-port", "172.16.55.10")
                    .type_("NodePort")
                    .external_traffic_policy("Local")
                    .health_check_node_port(345),
            )
            .build(),
            vec![],
        ),
        (
            "servicechangetracker_test.go TestServiceMapUpdateHeadless: none",
            service("ns2", "headless", "None")
                .port("rpc", 1234, "UDP")
                .type_("LoadBalancer")
                .external_traffic_policy("Local")
                .health_check_node_port(345)
                .build(),
            vec![],
        ),
        (
            "servicechangetracker.go serviceToServiceMap/a Service without ports has no service ports, so no health check",
            local_lb("ns1", "no-ports", "172.16.55.13", 345).build(),
            vec![],
        ),
        (
            "servicechangetracker_test.go TestUpdateServiceTypeExternalName: none",
            service("ns2", "external-name", "172.16.55.4")
                .type_("ExternalName")
                .port("blah", 1235, "UDP")
                .build(),
            vec![],
        ),
    ];
    for (name, svc, want) in cases {
        let mut state = ClusterState::default();
        state.set_node(node(HOST));
        apply(&mut state, vec![Op::Service(svc)]);
        assert_eq!(checks(&state), want, "case {name}");
    }
}

#[test]
fn health_checks_follow_service_changes() {
    let v1 = || {
        service("ns1", "svc1", "172.16.55.4")
            .type_("ClusterIP")
            .port("p1", 1234, "UDP")
            .port("p2", 1235, "TCP")
            .build()
    };
    let v2 = || {
        local_lb("ns1", "svc1", "172.16.55.4", 345)
            .port("p1", 1234, "UDP")
            .node_port(4321)
            .port("p2", 1235, "TCP")
            .node_port(5321)
            .build()
    };
    let test = "servicechangetracker_test.go TestBuildServiceMapServiceUpdate";
    let mut state = ClusterState::default();
    state.set_node(node(HOST));
    apply(&mut state, vec![Op::Service(v1())]);
    assert_eq!(checks(&state), vec![], "{test}: add");
    apply(&mut state, vec![Op::Service(v2())]);
    let one = vec![(345, "ns1/svc1".to_owned(), 0)];
    assert_eq!(
        checks(&state),
        one,
        "{test}: change service to load-balancer"
    );
    apply(&mut state, vec![Op::Service(v2())]);
    assert_eq!(checks(&state), one, "{test}: no change");
    apply(&mut state, vec![Op::Service(v1())]);
    assert_eq!(checks(&state), vec![], "{test}: and back to ClusterIP");

    let test = "servicechangetracker_test.go TestBuildServiceMapAddRemove";
    apply(
        &mut state,
        vec![
            Op::Service(v2()),
            Op::Service(
                service("ns2", "cluster-ip", "172.16.55.5")
                    .port("p1", 1234, "UDP")
                    .build(),
            ),
        ],
    );
    assert_eq!(checks(&state), one, "{test}: the only-local one gets added");
    apply(&mut state, vec![Op::DeleteService("ns1", "svc1")]);
    assert_eq!(checks(&state), vec![], "{test}: removed");
}

/// `makeTestEndpointSlice(ns, name, n)` with UDP ports and endpoints `(ip, on this node)`.
fn eps(
    ns: &str,
    name: &str,
    n: u32,
    endpoints: &[(&str, bool)],
    ports: &[(&str, i32)],
) -> EndpointSlice {
    let mut b = slice(ns, &format!("{name}-{n}"), name);
    for (port, number) in ports {
        b = b.port(port, *number, "UDP");
    }
    for (ip, local) in endpoints {
        b = b.endpoint(ip, None);
        if *local {
            b = b.node(HOST);
        }
    }
    b.build()
}

/// (case, the slices at its end, namespace/name → count)
type MapCase<'a> = (&'a str, Vec<EndpointSlice>, Vec<(&'a str, usize)>);

/// nftables/proxier_test.go TestUpdateEndpointsMap's `expectedLocalEndpoints`: the slices
/// of each case's final state give these counts (namespace/name → local ready IPs).
#[test]
#[expect(clippy::too_many_lines, reason = "one table of upstream cases")]
fn local_ready_endpoints_of_the_endpoints_map_cases() {
    let named_port_local = || eps("ns1", "ep1", 1, &[("10.1.1.1", true)], &[("p11", 11)]);
    let named_port = || eps("ns1", "ep1", 1, &[("10.1.1.1", false)], &[("p11", 11)]);
    let cases: Vec<MapCase<'_>> = vec![
        ("nothing", vec![], vec![]),
        (
            "no change, named port, local",
            vec![named_port_local()],
            vec![("ns1/ep1", 1)],
        ),
        (
            "no change, multiple subsets",
            vec![
                named_port(),
                eps("ns1", "ep1", 2, &[("10.1.1.2", false)], &[("p12", 12)]),
            ],
            vec![],
        ),
        (
            // One IP on two ports counts once.
            "no change, multiple subsets, multiple ports, local",
            vec![
                eps(
                    "ns1",
                    "ep1",
                    1,
                    &[("10.1.1.1", true)],
                    &[("p11", 11), ("p12", 12)],
                ),
                eps("ns1", "ep1", 2, &[("10.1.1.3", false)], &[("p13", 13)]),
            ],
            vec![("ns1/ep1", 1)],
        ),
        (
            "no change, multiple endpoints, subsets, IPs, and ports",
            vec![
                eps(
                    "ns1",
                    "ep1",
                    1,
                    &[("10.1.1.1", false), ("10.1.1.2", true)],
                    &[("p11", 11), ("p12", 12)],
                ),
                eps(
                    "ns1",
                    "ep1",
                    2,
                    &[("10.1.1.3", false), ("10.1.1.4", true)],
                    &[("p13", 13), ("p14", 14)],
                ),
                eps(
                    "ns2",
                    "ep2",
                    1,
                    &[("10.2.2.1", false), ("10.2.2.2", true)],
                    &[("p21", 21), ("p22", 22)],
                ),
            ],
            vec![("ns1/ep1", 2), ("ns2/ep2", 1)],
        ),
        (
            "add an Endpoints",
            vec![named_port_local()],
            vec![("ns1/ep1", 1)],
        ),
        ("remove an Endpoints", vec![], vec![]),
        (
            "add an IP and port",
            vec![eps(
                "ns1",
                "ep1",
                1,
                &[("10.1.1.1", false), ("10.1.1.2", true)],
                &[("p11", 11), ("p12", 12)],
            )],
            vec![("ns1/ep1", 1)],
        ),
        ("remove an IP and port", vec![named_port()], vec![]),
        (
            "add a subset",
            vec![
                named_port(),
                eps("ns1", "ep1", 2, &[("10.1.1.2", true)], &[("p12", 12)]),
            ],
            vec![("ns1/ep1", 1)],
        ),
        ("remove a subset", vec![named_port()], vec![]),
        (
            "rename a port",
            vec![eps(
                "ns1",
                "ep1",
                1,
                &[("10.1.1.1", false)],
                &[("p11-2", 11)],
            )],
            vec![],
        ),
        (
            "complex add and remove",
            vec![
                eps(
                    "ns1",
                    "ep1",
                    1,
                    &[("10.1.1.1", false), ("10.1.1.11", false)],
                    &[("p11", 11)],
                ),
                eps(
                    "ns1",
                    "ep1",
                    2,
                    &[("10.1.1.2", false)],
                    &[("p12", 12), ("p122", 122)],
                ),
                eps("ns3", "ep3", 1, &[("10.3.3.3", false)], &[("p33", 33)]),
                eps("ns4", "ep4", 1, &[("10.4.4.4", true)], &[("p44", 44)]),
            ],
            vec![("ns4/ep4", 1)],
        ),
    ];
    // One health-checked Service per namespace/name upstream mentions.
    let services = [
        ("ns1", "ep1", 30001),
        ("ns2", "ep2", 30002),
        ("ns3", "ep3", 30003),
        ("ns4", "ep4", 30004),
    ];
    for (name, slices, want) in cases {
        let mut state = ClusterState::default();
        state.set_node(node(HOST));
        apply(
            &mut state,
            services
                .iter()
                .enumerate()
                .map(|(i, (ns, svc, hc))| {
                    Op::Service(
                        local_lb(ns, svc, &format!("172.30.{}.1", i + 1), *hc)
                            .port("p11", 11, "UDP")
                            .build(),
                    )
                })
                .collect(),
        );
        state.apply(slices.into_iter().map(|s| Change::slice(&s)));
        let want: BTreeMap<&str, usize> = want.into_iter().collect();
        let got = checks(&state);
        assert_eq!(got.len(), services.len(), "case {name}: {got:?}");
        for (port, svc, count) in got {
            assert_eq!(
                count,
                want.get(svc.as_str()).copied().unwrap_or(0),
                "nftables/proxier_test.go TestUpdateEndpointsMap/{name}: {svc} on {port}"
            );
        }
    }
}

#[test]
fn health_check_node_port_when_terminating() {
    let test = "nftables/proxier_test.go TestHealthCheckNodePortWhenTerminating";
    let svc = local_lb("ns1", "svc1", "172.30.1.1", 30000)
        .port("", 80, "TCP")
        .build();
    let ready = slice("ns1", "svc1-1", "svc1")
        .port("", 80, "TCP")
        .endpoint("10.0.1.1", Some(true))
        .node(HOST)
        .endpoint("10.0.1.2", Some(true))
        .node(HOST)
        .endpoint("10.0.1.3", Some(true))
        .node(HOST)
        // not ready endpoints should be ignored
        .endpoint("10.0.1.4", Some(false))
        .node(HOST)
        .build();
    let terminating = slice("ns1", "svc1-1", "svc1")
        .port("", 80, "TCP")
        .endpoint("10.0.1.1", None)
        .conditions(Some(false), Some(true), Some(false))
        .node(HOST)
        .endpoint("10.0.1.2", None)
        .serving_terminating()
        .node(HOST)
        .endpoint("10.0.1.3", None)
        .serving_terminating()
        .node(HOST)
        .endpoint("10.0.1.4", None)
        .conditions(Some(false), Some(false), Some(true))
        .node(HOST)
        .build();
    let mut state = ClusterState::default();
    state.set_node(node(HOST));
    apply(&mut state, vec![Op::Service(svc), Op::Slice(ready)]);
    assert_eq!(
        checks(&state),
        vec![(30000, "ns1/svc1".to_owned(), 3)],
        "{test}: three local ready endpoints"
    );
    apply(&mut state, vec![Op::Slice(terminating)]);
    // Serving-terminating endpoints still take the Service's traffic, but the health check
    // fails so the load balancer stops sending new connections here.
    assert_eq!(
        checks(&state),
        vec![(30000, "ns1/svc1".to_owned(), 0)],
        "{test}: all terminating"
    );
    let local = state
        .desired()
        .iter()
        .find(|(k, f)| k.addr.to_string() == "1.2.3.4" && f.external_local)
        .map(|(_, f)| f.endpoints.len());
    assert_eq!(
        local,
        Some(2),
        "{test}: the LB still serves the terminating ones"
    );
}

/// kproxy's own cases: only this node's ready endpoints, counted once per IP, of the IPv4
/// slices of a dual-stack Service (kproxy serves IPv4), in every slice of the Service.
#[test]
fn local_ready_endpoints_are_distinct_ipv4_addresses_on_this_node() {
    let svc = local_lb("ns1", "svc1", "172.30.1.1", 30000)
        .cluster_ips(&["172.30.1.1", "fd00::1"])
        .port("http", 80, "TCP")
        .port("dns", 53, "UDP")
        .build();
    let slices = vec![
        slice("ns1", "svc1-1", "svc1")
            .port("http", 8080, "TCP")
            .port("dns", 5353, "UDP")
            .endpoint("10.0.1.1", None)
            .node(HOST)
            .endpoint("10.0.1.2", None)
            .node("other")
            .build(),
        // The same IP in another slice, on a port the Service does not have: still one.
        slice("ns1", "svc1-2", "svc1")
            .port("metrics", 9090, "TCP")
            .endpoint("10.0.1.1", None)
            .node(HOST)
            .endpoint("10.0.1.3", None)
            .node(HOST)
            .build(),
        slice("ns1", "svc1-3", "svc1")
            .address_type("IPv6")
            .port("http", 8080, "TCP")
            .endpoint("fd00:10::1", None)
            .node(HOST)
            .endpoint("fd00:10::2", None)
            .node(HOST)
            .endpoint("fd00:10::3", None)
            .node(HOST)
            .build(),
    ];
    let mut state = ClusterState::default();
    state.set_node(node(HOST));
    apply(
        &mut state,
        std::iter::once(Op::Service(svc))
            .chain(slices.into_iter().map(Op::Slice))
            .collect(),
    );
    assert_eq!(checks(&state), vec![(30000, "ns1/svc1".to_owned(), 2)]);
    // Another node: none of these are local.
    state.set_node(node("elsewhere"));
    assert_eq!(checks(&state), vec![(30000, "ns1/svc1".to_owned(), 0)]);
}
