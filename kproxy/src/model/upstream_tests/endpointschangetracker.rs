//! pkg/proxy/endpointschangetracker_test.go (TestUpdateEndpointsMap, TestEndpointSliceUpdate,
//! TestCheckoutChanges): EndpointSlices added, updated and deleted one sync at a time, checked
//! through the frontends the expected endpoints maps imply (see `MapServices` in mod.rs). The
//! same TestUpdateEndpointsMap cases also exist in nftables/ and iptables/proxier_test.go.
//!
//! Left out: TestGetLocalEndpointIPs and the `expectedLocalEndpoints` of TestUpdateEndpointsMap
//! (local ready endpoints for the health-check NodePort, not modelled),
//! `expectedConntrackCleanupRequired` (conntrack flushing), TestLastChangeTriggerTime
//! (latency metrics).

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{
    MapServices, Op, PortEndpoints, TCP, Transition, UDP, check_transition, generate_slice,
    generate_slice_with_offset, info, node, observed, spn,
};
use crate::model::{ClusterState, fixtures::slice};

/// `testHostname` of the upstream tests.
const HOST: &str = "test-hostname";

/// `makeTestEndpointSlice(ns, svc, n, ...)`: slice `<svc>-<n>` with these endpoints (no
/// conditions; `true` marks one on this node) and UDP ports.
fn eps(
    ns: &str,
    svc: &str,
    n: u32,
    endpoints: &[(&str, bool)],
    ports: &[(&str, i32)],
) -> EndpointSlice {
    let mut b = slice(ns, &format!("{svc}-{n}"), svc);
    for (name, port) in ports {
        b = b.port(name, *port, "UDP");
    }
    for (addr, local) in endpoints {
        b = b.endpoint(addr, None);
        if *local {
            b = b.node(HOST);
        }
    }
    b.build()
}

/// One unnamed-port endpoint 1.1.1.1 with these conditions.
fn unnamed_port_with(ready: bool, serving: bool, terminating: bool) -> EndpointSlice {
    slice("ns1", "ep1-1", "ep1")
        .port("", 11, "UDP")
        .endpoint("1.1.1.1", None)
        .conditions(Some(ready), Some(serving), Some(terminating))
        .build()
}

fn update_case(t: &Transition) {
    let services =
        MapServices::from_maps(&[t.previous_map.as_deref().unwrap_or_default(), &t.expected]);
    check_transition(HOST, &services, t);
}

#[test]
#[expect(clippy::too_many_lines, reason = "one table of upstream cases")]
fn update_endpoints_map() {
    let unnamed_port = || eps("ns1", "ep1", 1, &[("1.1.1.1", false)], &[("", 11)]);
    let unnamed_port_local = || eps("ns1", "ep1", 1, &[("1.1.1.1", true)], &[("", 11)]);
    let named_port_local = || eps("ns1", "ep1", 1, &[("1.1.1.1", true)], &[("p11", 11)]);
    let named_port = || eps("ns1", "ep1", 1, &[("1.1.1.1", false)], &[("p11", 11)]);
    let named_ports_local_no_local = || {
        eps(
            "ns1",
            "ep1",
            1,
            &[("1.1.1.1", false), ("1.1.1.2", true)],
            &[("p11", 11), ("p12", 12)],
        )
    };
    let multiple_s1 = || eps("ns1", "ep1", 1, &[("1.1.1.1", false)], &[("p11", 11)]);
    let multiple_s2 = || eps("ns1", "ep1", 2, &[("1.1.1.2", false)], &[("p12", 12)]);
    let multiple_ports_local_s1 = || {
        eps(
            "ns1",
            "ep1",
            1,
            &[("1.1.1.1", true)],
            &[("p11", 11), ("p12", 12)],
        )
    };
    let multiple_ports_local_s2 = || eps("ns1", "ep1", 2, &[("1.1.1.3", false)], &[("p13", 13)]);
    let ips_ports1_s1 = || {
        eps(
            "ns1",
            "ep1",
            1,
            &[("1.1.1.1", false), ("1.1.1.2", true)],
            &[("p11", 11), ("p12", 12)],
        )
    };
    let ips_ports1_s2 = || {
        eps(
            "ns1",
            "ep1",
            2,
            &[("1.1.1.3", false), ("1.1.1.4", true)],
            &[("p13", 13), ("p14", 14)],
        )
    };
    let ips_ports2 = || {
        eps(
            "ns2",
            "ep2",
            1,
            &[("2.2.2.1", false), ("2.2.2.2", true)],
            &[("p21", 21), ("p22", 22)],
        )
    };
    let no_change_ips_ports = || {
        vec![
            spn(
                "ns1",
                "ep1",
                "p11",
                UDP,
                vec![info("1.1.1.1:11", false), info("1.1.1.2:11", true)],
            ),
            spn(
                "ns1",
                "ep1",
                "p12",
                UDP,
                vec![info("1.1.1.1:12", false), info("1.1.1.2:12", true)],
            ),
            spn(
                "ns1",
                "ep1",
                "p13",
                UDP,
                vec![info("1.1.1.3:13", false), info("1.1.1.4:13", true)],
            ),
            spn(
                "ns1",
                "ep1",
                "p14",
                UDP,
                vec![info("1.1.1.3:14", false), info("1.1.1.4:14", true)],
            ),
            spn(
                "ns2",
                "ep2",
                "p21",
                UDP,
                vec![info("2.2.2.1:21", false), info("2.2.2.2:21", true)],
            ),
            spn(
                "ns2",
                "ep2",
                "p22",
                UDP,
                vec![info("2.2.2.1:22", false), info("2.2.2.2:22", true)],
            ),
        ]
    };
    let cases = vec![
        Transition {
            name: "endpointschangetracker_test.go TestUpdateEndpointsMap/empty",
            previous: vec![],
            current: vec![],
            previous_map: Some(vec![]),
            expected: vec![],
        },
        Transition {
            name: "endpointschangetracker_test.go TestUpdateEndpointsMap/no change, unnamed port",
            previous: vec![Some(unnamed_port())],
            current: vec![Some(unnamed_port())],
            previous_map: Some(vec![spn(
                "ns1",
                "ep1",
                "",
                UDP,
                vec![info("1.1.1.1:11", false)],
            )]),
            expected: vec![spn("ns1", "ep1", "", UDP, vec![info("1.1.1.1:11", false)])],
        },
        Transition {
            name: "endpointschangetracker_test.go TestUpdateEndpointsMap/no change, named port, local",
            previous: vec![Some(named_port_local())],
            current: vec![Some(named_port_local())],
            previous_map: Some(vec![spn(
                "ns1",
                "ep1",
                "p11",
                UDP,
                vec![info("1.1.1.1:11", true)],
            )]),
            expected: vec![spn(
                "ns1",
                "ep1",
                "p11",
                UDP,
                vec![info("1.1.1.1:11", true)],
            )],
        },
        Transition {
            name: "endpointschangetracker_test.go TestUpdateEndpointsMap/no change, multiple slices",
            previous: vec![Some(multiple_s1()), Some(multiple_s2())],
            current: vec![Some(multiple_s1()), Some(multiple_s2())],
            previous_map: Some(vec![
                spn("ns1", "ep1", "p11", UDP, vec![info("1.1.1.1:11", false)]),
                spn("ns1", "ep1", "p12", UDP, vec![info("1.1.1.2:12", false)]),
            ]),
            expected: vec![
                spn("ns1", "ep1", "p11", UDP, vec![info("1.1.1.1:11", false)]),
                spn("ns1", "ep1", "p12", UDP, vec![info("1.1.1.2:12", false)]),
            ],
        },
        Transition {
            name: "endpointschangetracker_test.go TestUpdateEndpointsMap/no change, multiple slices, multiple ports, local",
            previous: vec![
                Some(multiple_ports_local_s1()),
                Some(multiple_ports_local_s2()),
            ],
            current: vec![
                Some(multiple_ports_local_s1()),
                Some(multiple_ports_local_s2()),
            ],
            previous_map: Some(vec![
                spn("ns1", "ep1", "p11", UDP, vec![info("1.1.1.1:11", true)]),
                spn("ns1", "ep1", "p12", UDP, vec![info("1.1.1.1:12", true)]),
                spn("ns1", "ep1", "p13", UDP, vec![info("1.1.1.3:13", false)]),
            ]),
            expected: vec![
                spn("ns1", "ep1", "p11", UDP, vec![info("1.1.1.1:11", true)]),
                spn("ns1", "ep1", "p12", UDP, vec![info("1.1.1.1:12", true)]),
                spn("ns1", "ep1", "p13", UDP, vec![info("1.1.1.3:13", false)]),
            ],
        },
        Transition {
            name: "endpointschangetracker_test.go TestUpdateEndpointsMap/no change, multiple services, slices, IPs, and ports",
            previous: vec![
                Some(ips_ports1_s1()),
                Some(ips_ports1_s2()),
                Some(ips_ports2()),
            ],
            current: vec![
                Some(ips_ports1_s1()),
                Some(ips_ports1_s2()),
                Some(ips_ports2()),
            ],
            previous_map: Some(no_change_ips_ports()),
            expected: no_change_ips_ports(),
        },
        Transition {
            name: "endpointschangetracker_test.go TestUpdateEndpointsMap/add an EndpointSlice",
            previous: vec![None],
            current: vec![Some(unnamed_port_local())],
            previous_map: Some(vec![]),
            expected: vec![spn("ns1", "ep1", "", UDP, vec![info("1.1.1.1:11", true)])],
        },
        Transition {
            name: "endpointschangetracker_test.go TestUpdateEndpointsMap/remove an EndpointSlice",
            previous: vec![Some(unnamed_port_local())],
            current: vec![None],
            previous_map: Some(vec![spn(
                "ns1",
                "ep1",
                "",
                UDP,
                vec![info("1.1.1.1:11", true)],
            )]),
            expected: vec![],
        },
        Transition {
            name: "endpointschangetracker_test.go TestUpdateEndpointsMap/add an IP and port",
            previous: vec![Some(named_port())],
            current: vec![Some(named_ports_local_no_local())],
            previous_map: Some(vec![spn(
                "ns1",
                "ep1",
                "p11",
                UDP,
                vec![info("1.1.1.1:11", false)],
            )]),
            expected: vec![
                spn(
                    "ns1",
                    "ep1",
                    "p11",
                    UDP,
                    vec![info("1.1.1.1:11", false), info("1.1.1.2:11", true)],
                ),
                spn(
                    "ns1",
                    "ep1",
                    "p12",
                    UDP,
                    vec![info("1.1.1.1:12", false), info("1.1.1.2:12", true)],
                ),
            ],
        },
        Transition {
            name: "endpointschangetracker_test.go TestUpdateEndpointsMap/remove an IP and port",
            previous: vec![Some(named_ports_local_no_local())],
            current: vec![Some(named_port())],
            previous_map: Some(vec![
                spn(
                    "ns1",
                    "ep1",
                    "p11",
                    UDP,
                    vec![info("1.1.1.1:11", false), info("1.1.1.2:11", true)],
                ),
                spn(
                    "ns1",
                    "ep1",
                    "p12",
                    UDP,
                    vec![info("1.1.1.1:12", false), info("1.1.1.2:12", true)],
                ),
            ]),
            expected: vec![spn(
                "ns1",
                "ep1",
                "p11",
                UDP,
                vec![info("1.1.1.1:11", false)],
            )],
        },
        Transition {
            name: "endpointschangetracker_test.go TestUpdateEndpointsMap/add a slice to an endpoint",
            previous: vec![Some(named_port()), None],
            current: vec![
                Some(eps("ns1", "ep1", 1, &[("1.1.1.1", false)], &[("p11", 11)])),
                Some(eps("ns1", "ep1", 2, &[("1.1.1.2", true)], &[("p12", 12)])),
            ],
            previous_map: Some(vec![spn(
                "ns1",
                "ep1",
                "p11",
                UDP,
                vec![info("1.1.1.1:11", false)],
            )]),
            expected: vec![
                spn("ns1", "ep1", "p11", UDP, vec![info("1.1.1.1:11", false)]),
                spn("ns1", "ep1", "p12", UDP, vec![info("1.1.1.2:12", true)]),
            ],
        },
        Transition {
            name: "endpointschangetracker_test.go TestUpdateEndpointsMap/remove a slice from an endpoint",
            previous: vec![Some(multiple_s1()), Some(multiple_s2())],
            current: vec![Some(named_port()), None],
            previous_map: Some(vec![
                spn("ns1", "ep1", "p11", UDP, vec![info("1.1.1.1:11", false)]),
                spn("ns1", "ep1", "p12", UDP, vec![info("1.1.1.2:12", false)]),
            ]),
            expected: vec![spn(
                "ns1",
                "ep1",
                "p11",
                UDP,
                vec![info("1.1.1.1:11", false)],
            )],
        },
        Transition {
            name: "endpointschangetracker_test.go TestUpdateEndpointsMap/rename a port",
            previous: vec![Some(named_port())],
            current: vec![Some(eps(
                "ns1",
                "ep1",
                1,
                &[("1.1.1.1", false)],
                &[("p11-2", 11)],
            ))],
            previous_map: Some(vec![spn(
                "ns1",
                "ep1",
                "p11",
                UDP,
                vec![info("1.1.1.1:11", false)],
            )]),
            expected: vec![spn(
                "ns1",
                "ep1",
                "p11-2",
                UDP,
                vec![info("1.1.1.1:11", false)],
            )],
        },
        Transition {
            name: "endpointschangetracker_test.go TestUpdateEndpointsMap/renumber a port",
            previous: vec![Some(named_port())],
            current: vec![Some(eps(
                "ns1",
                "ep1",
                1,
                &[("1.1.1.1", false)],
                &[("p11", 22)],
            ))],
            previous_map: Some(vec![spn(
                "ns1",
                "ep1",
                "p11",
                UDP,
                vec![info("1.1.1.1:11", false)],
            )]),
            expected: vec![spn(
                "ns1",
                "ep1",
                "p11",
                UDP,
                vec![info("1.1.1.1:22", false)],
            )],
        },
        Transition {
            name: "endpointschangetracker_test.go TestUpdateEndpointsMap/complex add and remove",
            previous: vec![
                Some(eps("ns1", "ep1", 1, &[("1.1.1.1", false)], &[("p11", 11)])),
                None,
                Some(eps(
                    "ns2",
                    "ep2",
                    1,
                    &[("2.2.2.2", true), ("2.2.2.22", true)],
                    &[("p22", 22)],
                )),
                Some(eps("ns2", "ep2", 2, &[("2.2.2.3", true)], &[("p23", 23)])),
                None,
                None,
                Some(eps(
                    "ns4",
                    "ep4",
                    1,
                    &[("4.4.4.4", true), ("4.4.4.5", true)],
                    &[("p44", 44)],
                )),
                Some(eps("ns4", "ep4", 2, &[("4.4.4.6", true)], &[("p45", 45)])),
            ],
            current: vec![
                Some(eps(
                    "ns1",
                    "ep1",
                    1,
                    &[("1.1.1.1", false), ("1.1.1.11", false)],
                    &[("p11", 11)],
                )),
                Some(eps(
                    "ns1",
                    "ep1",
                    2,
                    &[("1.1.1.2", false)],
                    &[("p12", 12), ("p122", 122)],
                )),
                None,
                None,
                Some(eps("ns3", "ep3", 1, &[("3.3.3.3", false)], &[("p33", 33)])),
                None,
                Some(eps("ns4", "ep4", 1, &[("4.4.4.4", true)], &[("p44", 44)])),
                None,
            ],
            previous_map: Some(vec![
                spn("ns1", "ep1", "p11", UDP, vec![info("1.1.1.1:11", false)]),
                spn(
                    "ns2",
                    "ep2",
                    "p22",
                    UDP,
                    vec![info("2.2.2.22:22", true), info("2.2.2.2:22", true)],
                ),
                spn("ns2", "ep2", "p23", UDP, vec![info("2.2.2.3:23", true)]),
                spn(
                    "ns4",
                    "ep4",
                    "p44",
                    UDP,
                    vec![info("4.4.4.4:44", true), info("4.4.4.5:44", true)],
                ),
                spn("ns4", "ep4", "p45", UDP, vec![info("4.4.4.6:45", true)]),
            ]),
            expected: vec![
                spn(
                    "ns1",
                    "ep1",
                    "p11",
                    UDP,
                    vec![info("1.1.1.11:11", false), info("1.1.1.1:11", false)],
                ),
                spn("ns1", "ep1", "p12", UDP, vec![info("1.1.1.2:12", false)]),
                spn("ns1", "ep1", "p122", UDP, vec![info("1.1.1.2:122", false)]),
                spn("ns3", "ep3", "p33", UDP, vec![info("3.3.3.3:33", false)]),
                spn("ns4", "ep4", "p44", UDP, vec![info("4.4.4.4:44", true)]),
            ],
        },
        Transition {
            name: "endpointschangetracker_test.go TestUpdateEndpointsMap/change from 0 endpoint address to 1 unnamed port",
            previous: vec![Some(slice("ns1", "ep1-1", "ep1").build())],
            current: vec![Some(unnamed_port())],
            previous_map: Some(vec![]),
            expected: vec![spn("ns1", "ep1", "", UDP, vec![info("1.1.1.1:11", false)])],
        },
        Transition {
            name: "endpointschangetracker_test.go TestUpdateEndpointsMap/change from ready to terminating pod",
            previous: vec![Some(unnamed_port_with(true, true, false))],
            current: vec![Some(unnamed_port_with(false, true, true))],
            previous_map: Some(vec![spn(
                "ns1",
                "ep1",
                "",
                UDP,
                vec![info("1.1.1.1:11", false)],
            )]),
            expected: vec![spn(
                "ns1",
                "ep1",
                "",
                UDP,
                vec![info("1.1.1.1:11", false).serving_terminating()],
            )],
        },
        Transition {
            name: "endpointschangetracker_test.go TestUpdateEndpointsMap/change from terminating to empty pod",
            previous: vec![Some(unnamed_port_with(false, true, true))],
            current: vec![Some(slice("ns1", "ep1-1", "ep1").build())],
            previous_map: Some(vec![spn(
                "ns1",
                "ep1",
                "",
                UDP,
                vec![info("1.1.1.1:11", false).serving_terminating()],
            )]),
            expected: vec![],
        },
    ];
    for case in cases {
        update_case(&case);
    }
}

fn svc1_ports() -> MapServices {
    MapServices(vec![(
        "ns1",
        "svc1",
        vec![("port-0", TCP), ("port-1", TCP)],
    )])
}

fn three_endpoints_two_hosts() -> EndpointSlice {
    generate_slice(
        "svc1",
        "ns1",
        1,
        3,
        999,
        999,
        &["host1", "host2"],
        &[Some(80), Some(443)],
    )
}

/// Both ports of svc1 with the same endpoints (10.0.1.x:80 and :443).
fn both_ports(infos: &[(&str, bool, (bool, bool, bool))]) -> Vec<PortEndpoints> {
    ["port-0", "port-1"]
        .into_iter()
        .zip([80, 443])
        .map(|(port, number)| {
            spn(
                "ns1",
                "svc1",
                port,
                TCP,
                infos
                    .iter()
                    .map(|(ip, local, (r, s, t))| {
                        info(&format!("{ip}:{number}"), *local).cond(*r, *s, *t)
                    })
                    .collect(),
            )
        })
        .collect()
}

const READY: (bool, bool, bool) = (true, true, false);
const UNREADY: (bool, bool, bool) = (false, false, false);

/// Upstream expects no change: the update leaves the frontends as the starting slices made
/// them.
fn check_no_change(name: &str, starting: Vec<EndpointSlice>, op: Op) {
    let mut state = ClusterState::default();
    state.set_node(node("host1"));
    let services = svc1_ports().build(false);
    state.apply(services.into_iter().map(|s| Op::Service(s).change()));
    state.apply(starting.into_iter().map(|s| Op::Slice(s).change()));
    let before = observed(state.desired());
    assert!(
        before.iter().all(|w| !w.endpoints.is_empty()),
        "case {name}: the starting slices give endpoints"
    );
    state.apply([op.change()]);
    assert_eq!(observed(state.desired()), before, "case {name}");
}

#[test]
#[expect(clippy::too_many_lines, reason = "one table of upstream cases")]
fn endpoint_slice_update() {
    let mut fqdn = generate_slice(
        "svc1",
        "ns1",
        2,
        5,
        999,
        999,
        &["host1"],
        &[Some(80), Some(443)],
    );
    fqdn.address_type = "FQDN".into();
    check_no_change(
        "endpointschangetracker_test.go TestEndpointSliceUpdate/add the same slice that already exists",
        vec![three_endpoints_two_hosts()],
        Op::Slice(three_endpoints_two_hosts()),
    );
    check_no_change(
        "endpointschangetracker_test.go TestEndpointSliceUpdate/add an FQDN slice (invalid address type)",
        vec![three_endpoints_two_hosts()],
        Op::Slice(fqdn),
    );
    check_no_change(
        "endpointschangetracker_test.go TestEndpointSliceUpdate/remove a slice that doesn't even exist in current state",
        vec![
            generate_slice(
                "svc1",
                "ns1",
                1,
                5,
                999,
                999,
                &["host1"],
                &[Some(80), Some(443)],
            ),
            generate_slice(
                "svc1",
                "ns1",
                2,
                2,
                999,
                999,
                &["host1"],
                &[Some(80), Some(443)],
            ),
        ],
        Op::DeleteSlice("ns1", "svc1-3"),
    );

    let cases = vec![
        Transition {
            name: "endpointschangetracker_test.go TestEndpointSliceUpdate/add a simple slice that doesn't already exist",
            previous: vec![None],
            current: vec![Some(three_endpoints_two_hosts())],
            previous_map: Some(vec![]),
            expected: both_ports(&[
                ("10.0.1.1", false, READY),
                ("10.0.1.2", true, READY),
                ("10.0.1.3", false, READY),
            ]),
        },
        Transition {
            name: "endpointschangetracker_test.go TestEndpointSliceUpdate/add a slice that overlaps with existing state",
            previous: vec![
                Some(three_endpoints_two_hosts()),
                Some(generate_slice(
                    "svc1",
                    "ns1",
                    2,
                    2,
                    999,
                    999,
                    &["host1", "host2"],
                    &[Some(80), Some(443)],
                )),
            ],
            current: vec![
                Some(generate_slice(
                    "svc1",
                    "ns1",
                    1,
                    5,
                    999,
                    999,
                    &["host1"],
                    &[Some(80), Some(443)],
                )),
                Some(generate_slice(
                    "svc1",
                    "ns1",
                    2,
                    2,
                    999,
                    999,
                    &["host1", "host2"],
                    &[Some(80), Some(443)],
                )),
            ],
            previous_map: None,
            expected: both_ports(&[
                ("10.0.1.1", true, READY),
                ("10.0.1.2", true, READY),
                ("10.0.1.3", true, READY),
                ("10.0.1.4", true, READY),
                ("10.0.1.5", true, READY),
                ("10.0.2.1", false, READY),
                ("10.0.2.2", true, READY),
            ]),
        },
        Transition {
            // The new slice svc1-3 lists 10.0.1.1-5 on host1 for port-0 only; 10.0.1.1 and
            // 10.0.1.3 also appear in svc1-1 on host2: for port-0 the local copy wins.
            name: "endpointschangetracker_test.go TestEndpointSliceUpdate/add a slice that overlaps with existing state and partial ports",
            previous: vec![
                Some(three_endpoints_two_hosts()),
                Some(generate_slice(
                    "svc1",
                    "ns1",
                    2,
                    2,
                    999,
                    999,
                    &["host1", "host2"],
                    &[Some(80), Some(443)],
                )),
                None,
            ],
            current: vec![
                Some(three_endpoints_two_hosts()),
                Some(generate_slice(
                    "svc1",
                    "ns1",
                    2,
                    2,
                    999,
                    999,
                    &["host1", "host2"],
                    &[Some(80), Some(443)],
                )),
                Some(generate_slice_with_offset(
                    "svc1",
                    "ns1",
                    3,
                    1,
                    5,
                    999,
                    999,
                    &["host1"],
                    &[Some(80)],
                )),
            ],
            previous_map: None,
            expected: vec![
                spn(
                    "ns1",
                    "svc1",
                    "port-0",
                    TCP,
                    vec![
                        info("10.0.1.1:80", true),
                        info("10.0.1.2:80", true),
                        info("10.0.1.3:80", true),
                        info("10.0.1.4:80", true),
                        info("10.0.1.5:80", true),
                        info("10.0.2.1:80", false),
                        info("10.0.2.2:80", true),
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
                        info("10.0.2.1:443", false),
                        info("10.0.2.2:443", true),
                    ],
                ),
            ],
        },
        Transition {
            name: "endpointschangetracker_test.go TestEndpointSliceUpdate/remove a slice that overlaps with existing state",
            previous: vec![
                Some(three_endpoints_two_hosts()),
                Some(generate_slice(
                    "svc1",
                    "ns1",
                    2,
                    2,
                    999,
                    999,
                    &["host1", "host2"],
                    &[Some(80), Some(443)],
                )),
            ],
            current: vec![
                None,
                Some(generate_slice(
                    "svc1",
                    "ns1",
                    2,
                    2,
                    999,
                    999,
                    &["host1", "host2"],
                    &[Some(80), Some(443)],
                )),
            ],
            previous_map: None,
            expected: both_ports(&[("10.0.2.1", false, READY), ("10.0.2.2", true, READY)]),
        },
        Transition {
            name: "endpointschangetracker_test.go TestEndpointSliceUpdate/transition all endpoints to unready state",
            previous: vec![Some(three_endpoints_two_hosts())],
            current: vec![Some(generate_slice(
                "svc1",
                "ns1",
                1,
                3,
                1,
                999,
                &["host1"],
                &[Some(80), Some(443)],
            ))],
            previous_map: None,
            expected: both_ports(&[
                ("10.0.1.1", true, UNREADY),
                ("10.0.1.2", true, UNREADY),
                ("10.0.1.3", true, UNREADY),
            ]),
        },
        Transition {
            name: "endpointschangetracker_test.go TestEndpointSliceUpdate/transition all endpoints to ready state",
            previous: vec![Some(generate_slice(
                "svc1",
                "ns1",
                1,
                2,
                1,
                999,
                &["host1", "host2"],
                &[Some(80), Some(443)],
            ))],
            current: vec![Some(generate_slice(
                "svc1",
                "ns1",
                1,
                2,
                999,
                999,
                &["host1"],
                &[Some(80), Some(443)],
            ))],
            previous_map: None,
            expected: both_ports(&[("10.0.1.1", true, READY), ("10.0.1.2", true, READY)]),
        },
    ];
    for case in cases {
        check_transition("host1", &svc1_ports(), &case);
    }

    // Two more cases whose slices differ only in their unready/terminating moduli.

    for (name, unready_mod, terminating_mod, new_unready_mod, expected) in [
        (
            "endpointschangetracker_test.go TestEndpointSliceUpdate/transition some endpoints to ready state",
            2,
            999,
            3,
            both_ports(&[
                ("10.0.1.1", true, READY),
                ("10.0.1.2", true, READY),
                ("10.0.1.3", true, UNREADY),
                ("10.0.2.1", true, READY),
                ("10.0.2.2", true, UNREADY),
            ]),
        ),
        (
            "endpointschangetracker_test.go TestEndpointSliceUpdate/transition some endpoints to terminating state",
            2,
            2,
            3,
            both_ports(&[
                ("10.0.1.1", true, READY),
                ("10.0.1.2", true, (false, true, true)),
                ("10.0.1.3", true, UNREADY),
                ("10.0.2.1", true, READY),
                ("10.0.2.2", true, (false, false, true)),
            ]),
        ),
    ] {
        let slice_2 = || {
            generate_slice(
                "svc1",
                "ns1",
                2,
                2,
                unready_mod,
                terminating_mod,
                &["host1"],
                &[Some(80), Some(443)],
            )
        };
        check_transition(
            "host1",
            &svc1_ports(),
            &Transition {
                name,
                previous: vec![
                    Some(generate_slice(
                        "svc1",
                        "ns1",
                        1,
                        3,
                        unready_mod,
                        terminating_mod,
                        &["host1"],
                        &[Some(80), Some(443)],
                    )),
                    Some(slice_2()),
                ],
                current: vec![
                    Some(generate_slice(
                        "svc1",
                        "ns1",
                        1,
                        3,
                        new_unready_mod,
                        terminating_mod,
                        &["host1"],
                        &[Some(80), Some(443)],
                    )),
                    Some(slice_2()),
                ],
                previous_map: None,
                expected,
            },
        );
    }
}

#[test]
#[expect(clippy::too_many_lines, reason = "one table of upstream cases")]
fn checkout_changes() {
    let svc = || {
        MapServices(vec![(
            "ns1",
            "svc1",
            vec![("port-0", TCP), ("port-1", TCP)],
        )])
    };
    let cases = vec![
        Transition {
            name: "endpointschangetracker_test.go TestCheckoutChanges/empty slices",
            previous: vec![],
            current: vec![],
            previous_map: Some(vec![]),
            expected: vec![],
        },
        Transition {
            name: "endpointschangetracker_test.go TestCheckoutChanges/adding initial slice",
            previous: vec![None],
            current: vec![Some(generate_slice(
                "svc1",
                "ns1",
                1,
                3,
                3,
                2,
                &["host1"],
                &[Some(80)],
            ))],
            previous_map: Some(vec![]),
            expected: vec![spn(
                "ns1",
                "svc1",
                "port-0",
                TCP,
                vec![
                    info("10.0.1.1:80", false),
                    info("10.0.1.2:80", false).serving_terminating(),
                    info("10.0.1.3:80", false).unready(),
                ],
            )],
        },
        Transition {
            name: "endpointschangetracker_test.go TestCheckoutChanges/removing port in update",
            previous: vec![Some(generate_slice(
                "svc1",
                "ns1",
                1,
                3,
                3,
                999,
                &["host1"],
                &[Some(80), Some(443)],
            ))],
            current: vec![Some(generate_slice(
                "svc1",
                "ns1",
                1,
                3,
                3,
                999,
                &["host1"],
                &[Some(80)],
            ))],
            previous_map: Some(vec![
                spn(
                    "ns1",
                    "svc1",
                    "port-0",
                    TCP,
                    vec![
                        info("10.0.1.1:80", false),
                        info("10.0.1.2:80", false),
                        info("10.0.1.3:80", false).unready(),
                    ],
                ),
                spn(
                    "ns1",
                    "svc1",
                    "port-1",
                    TCP,
                    vec![
                        info("10.0.1.1:443", false),
                        info("10.0.1.2:443", false),
                        info("10.0.1.3:443", false).unready(),
                    ],
                ),
            ]),
            expected: vec![spn(
                "ns1",
                "svc1",
                "port-0",
                TCP,
                vec![
                    info("10.0.1.1:80", false),
                    info("10.0.1.2:80", false),
                    info("10.0.1.3:80", false).unready(),
                ],
            )],
        },
    ];
    // The change tracker was made with hostname "": nothing is local.
    for case in cases {
        check_transition("", &svc(), &case);
    }
}
