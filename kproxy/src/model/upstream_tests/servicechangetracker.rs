//! pkg/proxy/servicechangetracker_test.go: which Services become which service ports
//! (TestServiceToServiceMap), and the service map across adds, updates and deletes. Upstream
//! checks each port's ClusterIP, port, protocol, external IPs, load-balancer VIPs and source
//! ranges; kproxy has a frontend for each (its NodePorts too, which upstream does not
//! compare). Health-check NodePorts are in healthcheck.rs.
//!
//! kproxy divergences kept: a `nodePort` on a ClusterIP Service is reported and ignored
//! (the API server refuses it; kube-proxy would serve it); `ipMode` is read as with the
//! LoadBalancerIPMode feature gate on (GA), so the "feature gate disabled" cases that still
//! capture `Proxy` ingresses do not apply; an address that is both an external IP and a
//! load-balancer IP is captured by the external-IP rule, which comes first in iptables mode
//! (nftables mode would also apply the load balancer's source ranges to it).
//!
//! Upstream runs one ServiceChangeTracker per IP family; "service with ipv6 clusterIP under
//! ipv4 mode, service should be filtered" means the IPv4 proxier ignores it while the IPv6
//! one serves it. kproxy serves both families, so such a Service gets its IPv6 frontend and
//! no IPv4 one.
//!
//! Left out: TestServiceCacheLeaks (the tracker's internal change map), health-check
//! NodePort counts.

use super::{Case, Op, Step, TCP, UDP, check, ext, fe, lb, node, np, run_steps};
use crate::{model::fixtures::service, problem::ProblemKind};

const CLUSTER_IPV4: &str = "10.0.0.1";
const EXTERNAL_IPV4: &str = "8.8.8.8";
const SOURCE_RANGE_IPV4: &str = "0.0.0.0/1";
const CLUSTER_IPV6: &str = "2001:db8:85a3:0:0:8a2e:370:7334";
const EXTERNAL_IPV6: &str = "2001:db8:85a3:0:0:8a2e:370:7335";
const SOURCE_RANGE_IPV6: &str = "2001:db8::/32";

#[test]
#[expect(clippy::too_many_lines, reason = "one table of upstream cases")]
fn service_to_service_map() {
    let lb_service = |name: &str| {
        service("ns1", name, "172.16.55.11")
            .type_("LoadBalancer")
            .port("port3", 8675, "UDP")
            .node_port(30061)
            .target_port(7000)
            .port("port4", 8676, "UDP")
            .node_port(30062)
            .target_port(7001)
            .load_balancer_ingress(&["10.1.2.4"])
            .build()
    };
    let lb_ports = || {
        vec![
            fe("172.16.55.11", 8675, UDP),
            fe("172.16.55.11", 8676, UDP),
            lb("10.1.2.4", 8675, UDP),
            lb("10.1.2.4", 8676, UDP),
            np(30061, UDP),
            np(30062, UDP),
        ]
    };
    let lb_with_mode = |mode: &str| {
        service("ns1", "load-balancer", "172.16.55.11")
            .type_("LoadBalancer")
            .port("port3", 8675, "UDP")
            .node_port(30061)
            .target_port(7000)
            .port("port4", 8676, "UDP")
            .node_port(30062)
            .target_port(7001)
            .load_balancer_ingress_with(&[(Some("10.1.2.4"), None, Some(mode))])
            .build()
    };
    let test_port = |name: &str, cluster_ip: &str| {
        service("test", name, cluster_ip)
            .port("testPort", 12345, "TCP")
            .load_balancer_ingress(&[EXTERNAL_IPV4, EXTERNAL_IPV6])
    };
    check(vec![
        Case {
            name: "servicechangetracker_test.go TestServiceToServiceMap/nothing",
            ..Case::default()
        },
        Case {
            name: "servicechangetracker_test.go TestServiceToServiceMap/headless service",
            services: vec![
                service("ns2", "headless", "None")
                    .type_("ClusterIP")
                    .port("rpc", 1234, "UDP")
                    .build(),
            ],
            ..Case::default()
        },
        Case {
            name: "servicechangetracker_test.go TestServiceToServiceMap/headless sctp service",
            // kube-proxy skips it before looking at its ports: no SCTP problem either.
            services: vec![
                service("ns2", "headless", "None")
                    .type_("ClusterIP")
                    .port("sip", 7777, "SCTP")
                    .build(),
            ],
            ..Case::default()
        },
        Case {
            name: "servicechangetracker_test.go TestServiceToServiceMap/headless service without port",
            services: vec![
                service("ns2", "headless-without-port", "None")
                    .type_("ClusterIP")
                    .build(),
            ],
            ..Case::default()
        },
        Case {
            name: "servicechangetracker_test.go TestServiceToServiceMap/cluster ip service",
            services: vec![
                service("ns2", "cluster-ip", "172.16.55.4")
                    .type_("ClusterIP")
                    .port("p1", 1234, "UDP")
                    .node_port(4321)
                    .port("p2", 1235, "UDP")
                    .node_port(5321)
                    .build(),
            ],
            want: vec![fe("172.16.55.4", 1234, UDP), fe("172.16.55.4", 1235, UDP)],
            // nodePort on type ClusterIP: the API server refuses it.
            problems: vec![ProblemKind::InvalidService; 2],
            ..Case::default()
        },
        Case {
            name: "servicechangetracker_test.go TestServiceToServiceMap/nodeport service",
            services: vec![
                service("ns2", "node-port", "172.16.55.10")
                    .type_("NodePort")
                    .port("port1", 345, "UDP")
                    .node_port(678)
                    .port("port2", 344, "TCP")
                    .node_port(677)
                    .build(),
            ],
            want: vec![
                fe("172.16.55.10", 345, UDP),
                fe("172.16.55.10", 344, TCP),
                np(678, UDP),
                np(677, TCP),
            ],
            ..Case::default()
        },
        Case {
            name: "servicechangetracker_test.go TestServiceToServiceMap/load balancer service",
            services: vec![lb_service("load-balancer")],
            want: lb_ports(),
            ..Case::default()
        },
        Case {
            name: "servicechangetracker_test.go TestServiceToServiceMap/load balancer service ipMode VIP feature gate enabled",
            services: vec![lb_with_mode("VIP")],
            want: lb_ports(),
            ..Case::default()
        },
        Case {
            // The load balancer proxies to the NodePort itself: its IP is not captured.
            name: "servicechangetracker_test.go TestServiceToServiceMap/load balancer service ipMode Proxy feature gate enabled",
            services: vec![lb_with_mode("Proxy")],
            want: vec![
                fe("172.16.55.11", 8675, UDP),
                fe("172.16.55.11", 8676, UDP),
                np(30061, UDP),
                np(30062, UDP),
            ],
            ..Case::default()
        },
        Case {
            name: "servicechangetracker_test.go TestServiceToServiceMap/load balancer service with only local traffic policy",
            services: vec![
                service("ns1", "only-local-load-balancer", "172.16.55.12")
                    .type_("LoadBalancer")
                    .port("portx", 8677, "UDP")
                    .node_port(30063)
                    .target_port(7002)
                    .port("porty", 8678, "UDP")
                    .node_port(30064)
                    .target_port(7003)
                    .load_balancer_ingress(&["10.1.2.3"])
                    .external_traffic_policy("Local")
                    .health_check_node_port(345)
                    .build(),
            ],
            // No endpoints anywhere: every entry rejects.
            want: vec![
                fe("172.16.55.12", 8677, UDP),
                fe("172.16.55.12", 8678, UDP),
                lb("10.1.2.3", 8677, UDP).local(),
                lb("10.1.2.3", 8677, UDP).internal(),
                lb("10.1.2.3", 8678, UDP).local(),
                lb("10.1.2.3", 8678, UDP).internal(),
                np(30063, UDP).local(),
                np(30063, UDP).internal(),
                np(30064, UDP).local(),
                np(30064, UDP).internal(),
            ],
            ..Case::default()
        },
        Case {
            name: "servicechangetracker_test.go TestServiceToServiceMap/external name service",
            services: vec![
                service("ns2", "external-name", "172.16.55.4")
                    .type_("ExternalName")
                    .port("portz", 1235, "UDP")
                    .node_port(5321)
                    .build(),
            ],
            ..Case::default()
        },
        Case {
            name: "servicechangetracker_test.go TestServiceToServiceMap/service with ipv6 clusterIP under ipv4 mode, service should be filtered",
            services: vec![test_port("invalidIPv6InIPV4Mode", CLUSTER_IPV6).build()],
            want: vec![fe(CLUSTER_IPV6, 12345, TCP), lb(EXTERNAL_IPV6, 12345, TCP)],
            ..Case::default()
        },
        Case {
            name: "servicechangetracker_test.go TestServiceToServiceMap/service with ipv4 clusterIP under ipv6 mode, service should be filtered",
            services: vec![test_port("invalidIPv4InIPV6Mode", CLUSTER_IPV4).build()],
            want: vec![fe(CLUSTER_IPV4, 12345, TCP), lb(EXTERNAL_IPV4, 12345, TCP)],
            ..Case::default()
        },
        Case {
            name: "servicechangetracker_test.go TestServiceToServiceMap/service with ipv4 configurations under ipv4 mode",
            services: vec![
                test_port("validIPv4", CLUSTER_IPV4)
                    .external_ips(&[EXTERNAL_IPV4])
                    .load_balancer_source_ranges(&[SOURCE_RANGE_IPV4])
                    .build(),
            ],
            // The external IP is also the load-balancer IP: the external-IP rule captures
            // it first.
            want: vec![fe(CLUSTER_IPV4, 12345, TCP), ext(EXTERNAL_IPV4, 12345, TCP)],
            ..Case::default()
        },
        Case {
            name: "servicechangetracker_test.go TestServiceToServiceMap/service with ipv6 configurations under ipv6 mode",
            services: vec![
                test_port("validIPv6", CLUSTER_IPV6)
                    .external_ips(&[EXTERNAL_IPV6])
                    .load_balancer_source_ranges(&[SOURCE_RANGE_IPV6])
                    .build(),
            ],
            want: vec![fe(CLUSTER_IPV6, 12345, TCP), ext(EXTERNAL_IPV6, 12345, TCP)],
            ..Case::default()
        },
        Case {
            name: "servicechangetracker_test.go TestServiceToServiceMap/service with both ipv4 and ipv6 configurations under ipv4 mode, ipv6 fields should be filtered",
            services: vec![
                test_port("filterIPv6InIPV4Mode", CLUSTER_IPV4)
                    .external_ips(&[EXTERNAL_IPV4, EXTERNAL_IPV6])
                    .load_balancer_source_ranges(&[SOURCE_RANGE_IPV4, SOURCE_RANGE_IPV6])
                    .build(),
            ],
            want: vec![fe(CLUSTER_IPV4, 12345, TCP), ext(EXTERNAL_IPV4, 12345, TCP)],
            ..Case::default()
        },
        Case {
            name: "servicechangetracker_test.go TestServiceToServiceMap/service with both ipv4 and ipv6 configurations under ipv6 mode, ipv4 fields should be filtered",
            services: vec![
                test_port("filterIPv4InIPV6Mode", CLUSTER_IPV6)
                    .external_ips(&[EXTERNAL_IPV4, EXTERNAL_IPV6])
                    .load_balancer_source_ranges(&[SOURCE_RANGE_IPV4, SOURCE_RANGE_IPV6])
                    .build(),
            ],
            want: vec![fe(CLUSTER_IPV6, 12345, TCP), ext(EXTERNAL_IPV6, 12345, TCP)],
            ..Case::default()
        },
        Case {
            name: "servicechangetracker_test.go TestServiceToServiceMap/service with extra space in LoadBalancerSourceRanges",
            services: vec![
                service("test", "extra-space", CLUSTER_IPV4)
                    .port("testPort", 12345, "TCP")
                    .load_balancer_source_ranges(&[" 10.1.2.0/28"])
                    .build(),
            ],
            want: vec![fe(CLUSTER_IPV4, 12345, TCP)],
            ..Case::default()
        },
        Case {
            name: "servicechangetracker_test.go TestServiceMapUpdateHeadless",
            services: vec![
                service("ns2", "headless", "None")
                    .type_("ClusterIP")
                    .port("rpc", 1234, "UDP")
                    .build(),
                service("ns2", "headless-without-port", "None")
                    .type_("ClusterIP")
                    .build(),
            ],
            ..Case::default()
        },
        Case {
            name: "servicechangetracker_test.go TestUpdateServiceTypeExternalName",
            services: vec![
                service("ns2", "external-name", "172.16.55.4")
                    .type_("ExternalName")
                    .port("blah", 1235, "UDP")
                    .node_port(5321)
                    .build(),
            ],
            ..Case::default()
        },
    ]);
}

#[test]
fn build_service_map_add_remove() {
    let services = vec![
        service("ns2", "cluster-ip", "172.16.55.4")
            .type_("ClusterIP")
            .port("port1", 1234, "UDP")
            .node_port(4321)
            .port("port2", 1235, "UDP")
            .node_port(5321)
            .build(),
        service("ns2", "node-port", "172.16.55.10")
            .type_("NodePort")
            .port("port1", 345, "UDP")
            .node_port(678)
            .port("port2", 344, "TCP")
            .node_port(677)
            .build(),
        service("ns1", "load-balancer", "172.16.55.11")
            .type_("LoadBalancer")
            .port("foobar", 8675, "UDP")
            .node_port(30061)
            .target_port(7000)
            .port("baz", 8676, "UDP")
            .node_port(30062)
            .target_port(7001)
            .load_balancer_ingress(&["10.1.2.4"])
            .build(),
        service("ns1", "only-local-load-balancer", "172.16.55.12")
            .type_("LoadBalancer")
            .port("foobar2", 8677, "UDP")
            .node_port(30063)
            .target_port(7002)
            .port("baz", 8678, "UDP")
            .node_port(30064)
            .target_port(7003)
            .load_balancer_ingress(&["10.1.2.3"])
            .external_traffic_policy("Local")
            .health_check_node_port(345)
            .build(),
    ];
    run_steps(
        "servicechangetracker_test.go TestBuildServiceMapAddRemove",
        node("test-hostname"),
        vec![
            Step {
                name: "add: 8 service ports",
                ops: services.into_iter().map(Op::Service).collect(),
                want: vec![
                    fe("172.16.55.4", 1234, UDP),
                    fe("172.16.55.4", 1235, UDP),
                    fe("172.16.55.10", 345, UDP),
                    fe("172.16.55.10", 344, TCP),
                    np(678, UDP),
                    np(677, TCP),
                    fe("172.16.55.11", 8675, UDP),
                    fe("172.16.55.11", 8676, UDP),
                    lb("10.1.2.4", 8675, UDP),
                    lb("10.1.2.4", 8676, UDP),
                    np(30061, UDP),
                    np(30062, UDP),
                    fe("172.16.55.12", 8677, UDP),
                    fe("172.16.55.12", 8678, UDP),
                    lb("10.1.2.3", 8677, UDP).local(),
                    lb("10.1.2.3", 8677, UDP).internal(),
                    lb("10.1.2.3", 8678, UDP).local(),
                    lb("10.1.2.3", 8678, UDP).internal(),
                    np(30063, UDP).local(),
                    np(30063, UDP).internal(),
                    np(30064, UDP).local(),
                    np(30064, UDP).internal(),
                ],
            },
            Step {
                // oneService: services[0] without its first port (and the remaining one
                // renamed p2); the other three deleted.
                name: "remove some stuff: 1 service port",
                ops: vec![
                    Op::Service(
                        service("ns2", "cluster-ip", "172.16.55.4")
                            .type_("ClusterIP")
                            .port("p2", 1235, "UDP")
                            .node_port(5321)
                            .build(),
                    ),
                    Op::DeleteService("ns2", "node-port"),
                    Op::DeleteService("ns1", "load-balancer"),
                    Op::DeleteService("ns1", "only-local-load-balancer"),
                ],
                want: vec![fe("172.16.55.4", 1235, UDP)],
            },
        ],
    );
}

#[test]
fn build_service_map_service_update() {
    let v1 = || {
        service("ns1", "svc1", "172.16.55.4")
            .type_("ClusterIP")
            .port("p1", 1234, "UDP")
            .node_port(4321)
            .port("p2", 1235, "TCP")
            .node_port(5321)
            .build()
    };
    let v2 = || {
        service("ns1", "svc1", "172.16.55.4")
            .type_("LoadBalancer")
            .port("p1", 1234, "UDP")
            .node_port(4321)
            .target_port(7002)
            .port("p2", 1235, "TCP")
            .node_port(5321)
            .target_port(7003)
            .load_balancer_ingress(&["10.1.2.3"])
            .external_traffic_policy("Local")
            .health_check_node_port(345)
            .build()
    };
    let two = || vec![fe("172.16.55.4", 1234, UDP), fe("172.16.55.4", 1235, TCP)];
    let load_balancer = || {
        let mut want = two();
        want.extend([
            lb("10.1.2.3", 1234, UDP).local(),
            lb("10.1.2.3", 1234, UDP).internal(),
            lb("10.1.2.3", 1235, TCP).local(),
            lb("10.1.2.3", 1235, TCP).internal(),
            np(4321, UDP).local(),
            np(4321, UDP).internal(),
            np(5321, TCP).local(),
            np(5321, TCP).internal(),
        ]);
        want
    };
    run_steps(
        "servicechangetracker_test.go TestBuildServiceMapServiceUpdate",
        node("test-hostname"),
        vec![
            Step {
                name: "add",
                ops: vec![Op::Service(v1())],
                want: two(),
            },
            Step {
                name: "change service to load-balancer",
                ops: vec![Op::Service(v2())],
                want: load_balancer(),
            },
            Step {
                name: "no change",
                ops: vec![Op::Service(v2())],
                want: load_balancer(),
            },
            Step {
                name: "and back to ClusterIP",
                ops: vec![Op::Service(v1())],
                want: two(),
            },
        ],
    );
}
