//! pkg/proxy/endpointslicecache_test.go (TestEndpointsMapFromESC, TestEndpointInfoByServicePort)
//! and the deduplication rule of endpointslicecache.go `addEndpoints`, checked through the
//! frontends the expected endpoints maps imply (see `MapServices` in mod.rs).
//!
//! Left out: TestEsDataChanged (whether the cache sees a changed slice as a change; kproxy
//! recomputes the service and the sync layer diffs the result).

use super::{
    MapServices, PortEndpoints, TCP, check_map, generate_slice, generate_slice_with_offset, info,
    spn,
};
use crate::model::fixtures::slice;

fn svc1(ports: &[&'static str]) -> MapServices {
    MapServices(vec![(
        "ns1",
        "svc1",
        ports.iter().map(|p| (*p, TCP)).collect(),
    )])
}

struct MapCase {
    name: &'static str,
    hostname: &'static str,
    slices: Vec<k8s_openapi::api::discovery::v1::EndpointSlice>,
    ports: &'static [&'static str],
    expected: Vec<PortEndpoints>,
}

fn run(cases: Vec<MapCase>) {
    for c in cases {
        check_map(c.name, c.hostname, &svc1(c.ports), &c.slices, &c.expected);
    }
}

#[test]
#[expect(clippy::too_many_lines, reason = "one table of upstream cases")]
fn endpoints_map_from_esc() {
    let p80 = Some(80);
    let p443 = Some(443);
    run(vec![
        MapCase {
            name: "endpointslicecache_test.go TestEndpointsMapFromESC/1 slice, 2 hosts, ports 80,443",
            hostname: "host1",
            slices: vec![generate_slice(
                "svc1",
                "ns1",
                1,
                3,
                999,
                999,
                &["host1", "host2"],
                &[p80, p443],
            )],
            ports: &["port-0", "port-1"],
            expected: vec![
                spn(
                    "ns1",
                    "svc1",
                    "port-0",
                    TCP,
                    vec![
                        info("10.0.1.1:80", false),
                        info("10.0.1.2:80", true),
                        info("10.0.1.3:80", false),
                    ],
                ),
                spn(
                    "ns1",
                    "svc1",
                    "port-1",
                    TCP,
                    vec![
                        info("10.0.1.1:443", false),
                        info("10.0.1.2:443", true),
                        info("10.0.1.3:443", false),
                    ],
                ),
            ],
        },
        MapCase {
            name: "endpointslicecache_test.go TestEndpointsMapFromESC/2 slices, same port",
            hostname: "",
            slices: vec![
                generate_slice("svc1", "ns1", 1, 3, 999, 999, &[], &[p80]),
                generate_slice("svc1", "ns1", 2, 3, 999, 999, &[], &[p80]),
            ],
            ports: &["port-0"],
            expected: vec![spn(
                "ns1",
                "svc1",
                "port-0",
                TCP,
                vec![
                    info("10.0.1.1:80", false),
                    info("10.0.1.2:80", false),
                    info("10.0.1.3:80", false),
                    info("10.0.2.1:80", false),
                    info("10.0.2.2:80", false),
                    info("10.0.2.3:80", false),
                ],
            )],
        },
        MapCase {
            // Both slices are named svc1-1: the second replaces the first.
            name: "endpointslicecache_test.go TestEndpointsMapFromESC/2 overlapping slices, same port",
            hostname: "",
            slices: vec![
                generate_slice("svc1", "ns1", 1, 3, 999, 999, &[], &[p80]),
                generate_slice("svc1", "ns1", 1, 4, 999, 999, &[], &[p80]),
            ],
            ports: &["port-0"],
            expected: vec![spn(
                "ns1",
                "svc1",
                "port-0",
                TCP,
                vec![
                    info("10.0.1.1:80", false),
                    info("10.0.1.2:80", false),
                    info("10.0.1.3:80", false),
                    info("10.0.1.4:80", false),
                ],
            )],
        },
        MapCase {
            name: "endpointslicecache_test.go TestEndpointsMapFromESC/2 slices, overlapping endpoints, some endpoints unready in 1 or both",
            hostname: "",
            slices: vec![
                generate_slice("svc1", "ns1", 1, 10, 3, 999, &[], &[p80]),
                generate_slice("svc1", "ns1", 1, 10, 6, 999, &[], &[p80]),
            ],
            ports: &["port-0"],
            expected: vec![spn(
                "ns1",
                "svc1",
                "port-0",
                TCP,
                vec![
                    info("10.0.1.10:80", false),
                    info("10.0.1.1:80", false),
                    info("10.0.1.2:80", false),
                    info("10.0.1.3:80", false),
                    info("10.0.1.4:80", false),
                    info("10.0.1.5:80", false),
                    info("10.0.1.6:80", false).unready(),
                    info("10.0.1.7:80", false),
                    info("10.0.1.8:80", false),
                    info("10.0.1.9:80", false),
                ],
            )],
        },
        MapCase {
            name: "endpointslicecache_test.go TestEndpointsMapFromESC/2 slices, overlapping endpoints, some endpoints unready and some endpoints terminating",
            hostname: "",
            slices: vec![
                generate_slice("svc1", "ns1", 1, 10, 3, 5, &[], &[p80]),
                generate_slice("svc1", "ns1", 1, 10, 6, 5, &[], &[p80]),
            ],
            ports: &["port-0"],
            expected: vec![spn(
                "ns1",
                "svc1",
                "port-0",
                TCP,
                vec![
                    info("10.0.1.10:80", false).serving_terminating(),
                    info("10.0.1.1:80", false),
                    info("10.0.1.2:80", false),
                    info("10.0.1.3:80", false),
                    info("10.0.1.4:80", false),
                    info("10.0.1.5:80", false).serving_terminating(),
                    info("10.0.1.6:80", false).unready(),
                    info("10.0.1.7:80", false),
                    info("10.0.1.8:80", false),
                    info("10.0.1.9:80", false),
                ],
            )],
        },
        MapCase {
            name: "endpointslicecache_test.go TestEndpointsMapFromESC/2 slices, overlapping endpoints, all unready",
            hostname: "",
            slices: vec![
                generate_slice("svc1", "ns1", 1, 10, 1, 999, &[], &[p80]),
                generate_slice("svc1", "ns1", 1, 10, 1, 999, &[], &[p80]),
            ],
            ports: &["port-0"],
            expected: vec![spn(
                "ns1",
                "svc1",
                "port-0",
                TCP,
                ENDPOINTS_10_0_1
                    .iter()
                    .map(|e| info(e, false).unready())
                    .collect(),
            )],
        },
        MapCase {
            // Only ns1/svc1 has a Service: slices of ns1/svc2 and ns2/svc1 are not its.
            name: "endpointslicecache_test.go TestEndpointsMapFromESC/3 slices with different services and namespaces",
            hostname: "",
            slices: vec![
                generate_slice("svc1", "ns1", 1, 3, 999, 999, &[], &[p80]),
                generate_slice("svc2", "ns1", 2, 3, 999, 999, &[], &[p80]),
                generate_slice("svc1", "ns2", 3, 3, 999, 999, &[], &[p80]),
            ],
            ports: &["port-0"],
            expected: vec![spn(
                "ns1",
                "svc1",
                "port-0",
                TCP,
                vec![
                    info("10.0.1.1:80", false),
                    info("10.0.1.2:80", false),
                    info("10.0.1.3:80", false),
                ],
            )],
        },
        MapCase {
            name: "endpointslicecache_test.go TestEndpointsMapFromESC/Nil port should not break anything",
            hostname: "host1",
            slices: vec![generate_slice(
                "svc1",
                "ns1",
                1,
                3,
                999,
                999,
                &["host1", "host2"],
                &[None],
            )],
            ports: &["port-0"],
            expected: vec![],
        },
        MapCase {
            name: "endpointslicecache_test.go TestEndpointsMapFromESC/Different endpoints with duplicate IPs should not be filtered",
            hostname: "host1",
            slices: duplicate_ips(),
            ports: &["port-0"],
            expected: vec![duplicate_ips_expected()],
        },
        MapCase {
            name: "endpointslicecache_test.go TestEndpointInfoByServicePort/simple use case with 3 endpoints",
            hostname: "host1",
            slices: vec![generate_slice(
                "svc1",
                "ns1",
                1,
                3,
                999,
                999,
                &["host1", "host2"],
                &[p80],
            )],
            ports: &["port-0"],
            expected: vec![spn(
                "ns1",
                "svc1",
                "port-0",
                TCP,
                vec![
                    info("10.0.1.1:80", false),
                    info("10.0.1.2:80", true),
                    info("10.0.1.3:80", false),
                ],
            )],
        },
        MapCase {
            name: "endpointslicecache_test.go TestEndpointInfoByServicePort/4 different slices with duplicate IPs",
            hostname: "host1",
            slices: duplicate_ips(),
            ports: &["port-0"],
            expected: vec![duplicate_ips_expected()],
        },
    ]);
}

const ENDPOINTS_10_0_1: [&str; 10] = [
    "10.0.1.1:80",
    "10.0.1.2:80",
    "10.0.1.3:80",
    "10.0.1.4:80",
    "10.0.1.5:80",
    "10.0.1.6:80",
    "10.0.1.7:80",
    "10.0.1.8:80",
    "10.0.1.9:80",
    "10.0.1.10:80",
];

/// Two slices listing the same IPs with different port numbers for port-0.
fn duplicate_ips() -> Vec<k8s_openapi::api::discovery::v1::EndpointSlice> {
    vec![
        generate_slice_with_offset(
            "svc1",
            "ns1",
            1,
            1,
            2,
            999,
            999,
            &["host1", "host2"],
            &[Some(80)],
        ),
        generate_slice_with_offset(
            "svc1",
            "ns1",
            2,
            1,
            2,
            999,
            999,
            &["host1", "host2"],
            &[Some(8080)],
        ),
    ]
}

fn duplicate_ips_expected() -> PortEndpoints {
    spn(
        "ns1",
        "svc1",
        "port-0",
        TCP,
        vec![
            info("10.0.1.1:80", false),
            info("10.0.1.1:8080", false),
            info("10.0.1.2:80", true),
            info("10.0.1.2:8080", true),
        ],
    )
}

/// endpointslicecache.go `addEndpoints`: "there maybe also be two *different* Endpoints
/// [...] that point to the same IP, if the pod network reuses the IP from a terminating pod
/// before the Pod object is fully deleted. In this case we want to prefer the running pod
/// over the terminating one." A non-terminating endpoint replaces a terminating one with the
/// same IP, whatever the slice order; a terminating one never replaces another.
#[test]
fn same_ip_in_two_slices_prefers_the_non_terminating_endpoint() {
    let old_pod = |name: &str| {
        slice("ns1", name, "svc1")
            .port("port-0", 80, "TCP")
            .endpoint("10.0.1.1", None)
            .serving_terminating()
            .node("host2")
    };
    let new_pod = |name: &str, ready: bool| {
        slice("ns1", name, "svc1")
            .port("port-0", 80, "TCP")
            .endpoint("10.0.1.1", None)
            .conditions(Some(ready), Some(ready), Some(false))
            .node("host1")
    };
    for (order, new_first) in [
        ("old pod's slice first", false),
        ("new pod's slice first", true),
    ] {
        for ready in [true, false] {
            let old = old_pod(if new_first { "svc1-b" } else { "svc1-a" }).build();
            let new = new_pod(if new_first { "svc1-a" } else { "svc1-b" }, ready).build();
            let slices = if new_first {
                vec![new, old]
            } else {
                vec![old, new]
            };
            let new_info = if ready {
                info("10.0.1.1:80", true)
            } else {
                info("10.0.1.1:80", true).unready()
            };
            let name = format!(
                "endpointslicecache.go addEndpoints/IP reused while the old pod terminates, new pod {}, {order}",
                if ready { "ready" } else { "not ready yet" }
            );
            check_map(
                &name,
                "host1",
                &svc1(&["port-0"]),
                &slices,
                &[spn("ns1", "svc1", "port-0", TCP, vec![new_info])],
            );
        }
    }
}

/// endpointslicecache.go `endpointInfoByServicePort` / `addEndpoints`: what is skipped.
#[test]
fn skipped_ports_and_endpoints() {
    use super::{Case, check, fe, node};
    use crate::{model::fixtures::service, problem::ProblemKind};

    let svc = || {
        service("ns1", "svc1", "172.30.1.1")
            .port("p80", 80, "TCP")
            .build()
    };
    let base = || slice("ns1", "svc1-1", "svc1");
    check(vec![
        Case {
            // "Ignoring port with nil name"; kproxy also reports it.
            name: "endpointslicecache.go endpointInfoByServicePort/port with nil name is ignored",
            node: node("host1"),
            services: vec![
                service("ns1", "svc1", "172.30.1.1")
                    .port("", 80, "TCP")
                    .build(),
            ],
            slices: vec![
                base()
                    .port_raw(None, Some(8080), "TCP")
                    .endpoint("10.0.1.1", None)
                    .build(),
            ],
            want: vec![fe("172.30.1.1", 80, super::TCP)],
            problems: vec![ProblemKind::InvalidEndpoint],
        },
        Case {
            // "Ignoring invalid endpoint port" (nil); kproxy reports port 0.
            name: "endpointslicecache.go endpointInfoByServicePort/port with nil or zero number is ignored",
            node: node("host1"),
            services: vec![
                service("ns1", "svc1", "172.30.1.1")
                    .port("p80", 80, "TCP")
                    .port("p81", 81, "TCP")
                    .build(),
            ],
            slices: vec![
                base()
                    .port_raw(Some("p80"), None, "TCP")
                    .port_raw(Some("p81"), Some(0), "TCP")
                    .endpoint("10.0.1.1", None)
                    .build(),
            ],
            want: vec![
                fe("172.30.1.1", 80, super::TCP),
                fe("172.30.1.1", 81, super::TCP),
            ],
            problems: vec![ProblemKind::InvalidEndpoint],
        },
        Case {
            name: "endpointslicecache.go addEndpoints/endpoint with empty address is ignored; only the first address is used",
            node: node("host1"),
            services: vec![svc()],
            slices: vec![
                base()
                    .port("p80", 8080, "TCP")
                    .endpoint_addresses(&[])
                    .endpoint_addresses(&["10.0.1.1", "10.0.1.2"])
                    .build(),
            ],
            want: vec![fe("172.30.1.1", 80, super::TCP).eps(&["10.0.1.1:8080"])],
            problems: vec![],
        },
        Case {
            name: "endpointslicecache.go addEndpoints/the endpoint IP is read with ParseIPSloppy",
            node: node("host1"),
            services: vec![svc()],
            slices: vec![
                base()
                    .port("p80", 8080, "TCP")
                    .endpoint("010.000.001.001", None)
                    .build(),
            ],
            want: vec![fe("172.30.1.1", 80, super::TCP).eps(&["10.0.1.1:8080"])],
            problems: vec![],
        },
    ]);
}
