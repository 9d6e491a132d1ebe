//! pkg/proxy/topology_test.go (TestCategorizeEndpoints) end to end: the same endpoints as
//! EndpointSlices, the policies as Service fields, the node's zone as its label, through
//! `desired_state_on`. (model/topology/tests.rs checks `categorize` itself on the same
//! cases.) The ClusterIP frontend takes the Cluster endpoints, or the Local ones with
//! internalTrafficPolicy Local; "onlyRemoteEndpoints" is a frontend that drops. An
//! externally accessible `serviceInfo` (`nodePort: 8080`) also has its NodePort checked:
//! `clusterEndpoints`, or under externalTrafficPolicy Local `localEndpoints` for external
//! clients and `clusterEndpoints` for this node's (see `External`).
//!
//! Plus topology.go's `topologyModeFromHints` (PreferSameNode / PreferSameZone hints) and
//! the fact that it reads the hints only, not the Service's `trafficDistribution` or the
//! topology annotations.
//!
//! Upstream endpoints are `BaseEndpointInfo`s: an endpoint written there as `ready: true`
//! is a slice endpoint with ready and serving true, `ready: false` one with both false.

use super::{Case, TCP, check, fe, node, node_in_zone, np};
use crate::{
    model::{
        NodeInfo,
        fixtures::{ServiceBuilder, SliceBuilder, service, slice},
    },
    problem::ProblemKind,
};

const NODE: &str = "test-node";

/// One upstream endpoint: (ip, ready, serving, terminating, local, zone hints).
type Ep = (
    &'static str,
    bool,
    bool,
    bool,
    bool,
    &'static [&'static str],
);

const fn ready(ip: &'static str, local: bool, zones: &'static [&'static str]) -> Ep {
    (ip, true, true, false, local, zones)
}

const fn unready(ip: &'static str, local: bool, zones: &'static [&'static str]) -> Ep {
    (ip, false, false, false, local, zones)
}

const fn terminating(ip: &'static str, local: bool) -> Ep {
    (ip, false, true, true, local, &[])
}

fn endpoints(eps: &[Ep]) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    let mut s: SliceBuilder = slice("ns1", "svc1-1", "svc1").port("", 80, "TCP");
    for (ip, r, sv, t, local, zones) in eps {
        s = s
            .endpoint(ip, None)
            .conditions(Some(*r), Some(*sv), Some(*t))
            .node(if *local { NODE } else { "remote-node" });
        if !zones.is_empty() {
            s = s.for_zones(zones);
        }
    }
    s.build()
}

/// The upstream `serviceInfo`: internal/external policy Local, externally accessible
/// (`nodePort: 8080`).
fn svc(internal_local: bool, external_local: bool, node_port: bool) -> ServiceBuilder {
    let mut b = service("ns1", "svc1", "172.30.1.1").port("", 80, "TCP");
    if node_port {
        b = b.type_("NodePort").node_port(8080);
    }
    if internal_local {
        b = b.internal_traffic_policy("Local");
    }
    if external_local {
        b = b.external_traffic_policy("Local");
    }
    b
}

struct Categorize {
    name: &'static str,
    node: NodeInfo,
    service: ServiceBuilder,
    endpoints: Vec<Ep>,
    /// The ClusterIP endpoints.
    want: &'static [&'static str],
    /// internalTrafficPolicy Local and endpoints only elsewhere: DROP.
    drop: bool,
    /// The NodePort 8080 of an externally accessible `serviceInfo`.
    external: External,
}

/// What the NodePort of a case gets: kube-proxy's EXT chain sends external traffic to the
/// external policy's endpoints (`clusterEndpoints`, or `localEndpoints` under the Local
/// policy, where traffic from the node's own pods and the node short-circuits to
/// `clusterEndpoints`: the `Scope::Internal` entry).
enum External {
    /// Not externally accessible (no `nodePort`).
    None,
    /// externalTrafficPolicy Cluster: `clusterEndpoints`.
    Cluster(&'static [&'static str]),
    /// externalTrafficPolicy Local: `localEndpoints` and `clusterEndpoints`; `drop`: some
    /// endpoint exists somewhere (`hasAnyEndpoints`), so an empty local set drops.
    Local {
        local: &'static [&'static str],
        cluster: &'static [&'static str],
        drop: bool,
    },
}

fn zone_a() -> NodeInfo {
    node_in_zone(NODE, "zone-a")
}

/// The full case name of a TestCategorizeEndpoints sub-case.
macro_rules! upstream {
    ($case:literal) => {
        concat!("topology_test.go TestCategorizeEndpoints/", $case)
    };
}

#[test]
#[expect(clippy::too_many_lines, reason = "one table of upstream cases")]
fn categorize_endpoints_end_to_end() {
    let four_zoned = || {
        vec![
            ready("10.1.2.3", false, &["zone-a"]),
            ready("10.1.2.4", false, &["zone-b"]),
            ready("10.1.2.5", false, &["zone-c"]),
            ready("10.1.2.6", false, &["zone-a"]),
        ]
    };
    let local_zoned = || {
        vec![
            ready("10.1.2.3", true, &["zone-a"]),
            ready("10.1.2.4", true, &["zone-b"]),
            ready("10.1.2.5", false, &["zone-c"]),
            ready("10.1.2.6", false, &["zone-a"]),
        ]
    };
    let one_local = || vec![ready("10.0.0.0", true, &[]), ready("10.0.0.1", false, &[])];
    let two_remote = || vec![ready("10.0.0.0", false, &[]), ready("10.0.0.1", false, &[])];
    let cases = vec![
        Categorize {
            name: upstream!(
                "should use topology since all endpoints have hints, node has a zone label and and there are endpoints for the node's zone"
            ),
            node: zone_a(),
            service: svc(false, false, false),
            endpoints: four_zoned(),
            want: &["10.1.2.3:80", "10.1.2.6:80"],
            drop: false,
            external: External::None,
        },
        Categorize {
            name: upstream!("externalTrafficPolicy: Local, topology ignored for Local endpoints"),
            node: zone_a(),
            service: svc(false, true, true),
            endpoints: local_zoned(),
            want: &["10.1.2.3:80", "10.1.2.6:80"],
            drop: false,
            external: External::Local {
                local: &["10.1.2.3:80", "10.1.2.4:80"],
                cluster: &["10.1.2.3:80", "10.1.2.6:80"],
                drop: true,
            },
        },
        Categorize {
            name: upstream!("internalTrafficPolicy: Local, topology ignored for Local endpoints"),
            node: zone_a(),
            service: svc(true, false, true),
            endpoints: local_zoned(),
            want: &["10.1.2.3:80", "10.1.2.4:80"],
            drop: true,
            external: External::Cluster(&["10.1.2.3:80", "10.1.2.6:80"]),
        },
        Categorize {
            name: upstream!("empty node labels"),
            node: node(NODE),
            service: svc(false, false, false),
            endpoints: vec![ready("10.1.2.3", false, &["zone-a"])],
            want: &["10.1.2.3:80"],
            drop: false,
            external: External::None,
        },
        Categorize {
            name: upstream!("empty zone label"),
            node: node_in_zone(NODE, ""),
            service: svc(false, false, false),
            endpoints: vec![ready("10.1.2.3", false, &["zone-a"])],
            want: &["10.1.2.3:80"],
            drop: false,
            external: External::None,
        },
        Categorize {
            name: upstream!("node in different zone, no endpoint filtering"),
            node: node_in_zone(NODE, "zone-b"),
            service: svc(false, false, false),
            endpoints: vec![ready("10.1.2.3", false, &["zone-a"])],
            want: &["10.1.2.3:80"],
            drop: false,
            external: External::None,
        },
        Categorize {
            name: upstream!("unready endpoint"),
            node: zone_a(),
            service: svc(false, false, false),
            endpoints: vec![
                ready("10.1.2.3", false, &["zone-a"]),
                ready("10.1.2.4", false, &["zone-b"]),
                ready("10.1.2.5", false, &["zone-c"]),
                unready("10.1.2.6", false, &["zone-a"]),
            ],
            want: &["10.1.2.3:80"],
            drop: false,
            external: External::None,
        },
        Categorize {
            name: upstream!("only unready endpoints in same zone (should not filter)"),
            node: zone_a(),
            service: svc(false, false, false),
            endpoints: vec![
                unready("10.1.2.3", false, &["zone-a"]),
                ready("10.1.2.4", false, &["zone-b"]),
                ready("10.1.2.5", false, &["zone-c"]),
                unready("10.1.2.6", false, &["zone-a"]),
            ],
            want: &["10.1.2.4:80", "10.1.2.5:80"],
            drop: false,
            external: External::None,
        },
        Categorize {
            name: upstream!("missing hints, no filtering applied"),
            node: zone_a(),
            service: svc(false, false, false),
            endpoints: vec![
                ready("10.1.2.3", false, &["zone-a"]),
                ready("10.1.2.4", false, &["zone-b"]),
                ready("10.1.2.5", false, &[]),
                ready("10.1.2.6", false, &["zone-a"]),
            ],
            want: &["10.1.2.3:80", "10.1.2.4:80", "10.1.2.5:80", "10.1.2.6:80"],
            drop: false,
            external: External::None,
        },
        Categorize {
            name: upstream!(
                "multiple hints per endpoint, filtering includes any endpoint with zone included"
            ),
            node: node_in_zone(NODE, "zone-c"),
            service: svc(false, false, false),
            endpoints: vec![
                ready("10.1.2.3", false, &["zone-a", "zone-b", "zone-c"]),
                ready("10.1.2.4", false, &["zone-b", "zone-c"]),
                ready("10.1.2.5", false, &["zone-b", "zone-d"]),
                ready("10.1.2.6", false, &["zone-c"]),
            ],
            want: &["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"],
            drop: false,
            external: External::None,
        },
        Categorize {
            name: upstream!("conflicting topology and localness require merging allEndpoints"),
            node: zone_a(),
            service: svc(false, true, true),
            endpoints: vec![
                ready("10.0.0.0", true, &["zone-a"]),
                ready("10.0.0.1", true, &["zone-b"]),
                ready("10.0.0.2", false, &["zone-a"]),
                ready("10.0.0.3", false, &["zone-b"]),
            ],
            want: &["10.0.0.0:80", "10.0.0.2:80"],
            drop: false,
            external: External::Local {
                local: &["10.0.0.0:80", "10.0.0.1:80"],
                cluster: &["10.0.0.0:80", "10.0.0.2:80"],
                drop: true,
            },
        },
        Categorize {
            name: upstream!("internalTrafficPolicy: Local, with empty endpoints"),
            node: node(NODE),
            service: svc(true, false, false),
            endpoints: vec![],
            want: &[],
            drop: false,
            external: External::None,
        },
        Categorize {
            name: upstream!("internalTrafficPolicy: Local, but all endpoints are remote"),
            node: node(NODE),
            service: svc(true, false, false),
            endpoints: two_remote(),
            want: &[],
            drop: true,
            external: External::None,
        },
        Categorize {
            name: upstream!("internalTrafficPolicy: Local, all endpoints are local"),
            node: node(NODE),
            service: svc(true, false, false),
            endpoints: vec![ready("10.0.0.0", true, &[]), ready("10.0.0.1", true, &[])],
            want: &["10.0.0.0:80", "10.0.0.1:80"],
            drop: true,
            external: External::None,
        },
        Categorize {
            name: upstream!("internalTrafficPolicy: Local, some endpoints are local"),
            node: node(NODE),
            service: svc(true, false, false),
            endpoints: one_local(),
            want: &["10.0.0.0:80"],
            drop: true,
            external: External::None,
        },
        Categorize {
            name: upstream!("Cluster traffic policy, endpoints not Ready"),
            node: node(NODE),
            service: svc(false, false, false),
            endpoints: vec![
                unready("10.0.0.0", false, &[]),
                unready("10.0.0.1", false, &[]),
            ],
            want: &[],
            drop: false,
            external: External::None,
        },
        Categorize {
            name: upstream!("Cluster traffic policy, some endpoints are Ready"),
            node: node(NODE),
            service: svc(false, false, false),
            endpoints: vec![
                unready("10.0.0.0", false, &[]),
                ready("10.0.0.1", false, &[]),
            ],
            want: &["10.0.0.1:80"],
            drop: false,
            external: External::None,
        },
        Categorize {
            name: upstream!("Cluster traffic policy, all endpoints are terminating"),
            node: node(NODE),
            service: svc(false, false, false),
            endpoints: vec![
                terminating("10.0.0.0", true),
                terminating("10.0.0.1", false),
            ],
            want: &["10.0.0.0:80", "10.0.0.1:80"],
            drop: false,
            external: External::None,
        },
        Categorize {
            name: upstream!("iTP: Local, eTP: Cluster, some endpoints local"),
            node: node(NODE),
            service: svc(true, false, true),
            endpoints: one_local(),
            want: &["10.0.0.0:80"],
            drop: true,
            external: External::Cluster(&["10.0.0.0:80", "10.0.0.1:80"]),
        },
        Categorize {
            name: upstream!("iTP: Cluster, eTP: Local, some endpoints local"),
            node: node(NODE),
            service: svc(false, true, true),
            endpoints: one_local(),
            want: &["10.0.0.0:80", "10.0.0.1:80"],
            drop: false,
            external: External::Local {
                local: &["10.0.0.0:80"],
                cluster: &["10.0.0.0:80", "10.0.0.1:80"],
                drop: true,
            },
        },
        Categorize {
            name: upstream!("iTP: Local, eTP: Local, some endpoints local"),
            node: node(NODE),
            service: svc(true, true, true),
            endpoints: one_local(),
            want: &["10.0.0.0:80"],
            drop: true,
            external: External::Local {
                local: &["10.0.0.0:80"],
                cluster: &["10.0.0.0:80", "10.0.0.1:80"],
                drop: true,
            },
        },
        Categorize {
            name: upstream!("iTP: Local, eTP: Local, all endpoints remote"),
            node: node(NODE),
            service: svc(true, true, true),
            endpoints: two_remote(),
            want: &[],
            drop: true,
            external: External::Local {
                local: &[],
                cluster: &["10.0.0.0:80", "10.0.0.1:80"],
                drop: true,
            },
        },
        Categorize {
            name: upstream!("iTP: Local, eTP: Local, all endpoints remote and terminating"),
            node: node(NODE),
            service: svc(true, true, true),
            endpoints: vec![
                terminating("10.0.0.0", false),
                terminating("10.0.0.1", false),
            ],
            want: &[],
            drop: true,
            external: External::Local {
                local: &[],
                cluster: &["10.0.0.0:80", "10.0.0.1:80"],
                drop: true,
            },
        },
        Categorize {
            name: upstream!("iTP: Cluster, eTP: Local, with terminating endpoints"),
            node: node(NODE),
            service: svc(false, true, true),
            endpoints: vec![
                ready("10.0.0.0", false, &[]),
                unready("10.0.0.1", true, &[]),
                terminating("10.0.0.2", true),
                terminating("10.0.0.3", false),
            ],
            want: &["10.0.0.0:80"],
            drop: false,
            external: External::Local {
                local: &["10.0.0.2:80"],
                cluster: &["10.0.0.0:80"],
                drop: true,
            },
        },
        Categorize {
            name: upstream!("externalTrafficPolicy ignored if not externally accessible"),
            node: node(NODE),
            service: svc(false, true, false),
            endpoints: vec![ready("10.0.0.0", false, &[]), ready("10.0.0.1", true, &[])],
            want: &["10.0.0.0:80", "10.0.0.1:80"],
            drop: false,
            external: External::None,
        },
        Categorize {
            name: upstream!("no cluster endpoints for iTP:Local internal-only service"),
            node: node(NODE),
            service: svc(true, false, false),
            endpoints: vec![ready("10.0.0.0", false, &[]), ready("10.0.0.1", true, &[])],
            want: &["10.0.0.1:80"],
            drop: true,
            external: External::None,
        },
    ];
    let mut all = Vec::new();
    for c in cases {
        let mut want = fe("172.30.1.1", 80, TCP).eps(c.want);
        if c.drop {
            want = want.drop();
        }
        let mut wants = vec![want];
        match c.external {
            External::None => {}
            External::Cluster(cluster) => wants.push(np(8080, TCP).eps(cluster)),
            External::Local {
                local,
                cluster,
                drop,
            } => {
                let mut all_entry = np(8080, TCP).eps(local).local();
                if drop {
                    all_entry = all_entry.drop();
                }
                wants.push(all_entry);
                wants.push(np(8080, TCP).internal().eps(cluster));
            }
        }
        all.push(Case {
            name: c.name,
            node: c.node,
            services: vec![c.service.build()],
            slices: vec![endpoints(&c.endpoints)],
            want: wants,
            problems: Vec::<ProblemKind>::new(),
        });
    }
    check(all);
}

/// An endpoint with zone and node hints, as the EndpointSlice controller writes them for
/// trafficDistribution PreferSameNode.
fn hinted(s: SliceBuilder, ip: &str, zones: &[&str], nodes: &[&str]) -> SliceBuilder {
    let mut s = s.endpoint(ip, Some(true));
    if !zones.is_empty() {
        s = s.for_zones(zones);
    }
    if !nodes.is_empty() {
        s = s.for_nodes(nodes);
    }
    s
}

#[test]
#[expect(clippy::too_many_lines, reason = "one table of cases")]
fn topology_mode_from_hints_end_to_end() {
    let base = || slice("ns1", "svc1-1", "svc1").port("", 80, "TCP");
    let same_node = || {
        let s = hinted(base(), "10.1.2.3", &["zone-a"], &[NODE]);
        let s = hinted(s, "10.1.2.4", &["zone-a"], &["node-b"]);
        hinted(s, "10.1.2.5", &["zone-b"], &["node-c"])
    };
    let svc = |distribution: Option<&str>| {
        let mut b = service("ns1", "svc1", "172.30.1.1").port("", 80, "TCP");
        if let Some(d) = distribution {
            b = b.traffic_distribution(d);
        }
        b.build()
    };
    let all3 = || fe("172.30.1.1", 80, TCP).eps(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.5:80"]);
    let zone_a_eps = || fe("172.30.1.1", 80, TCP).eps(&["10.1.2.3:80", "10.1.2.4:80"]);
    check(vec![
        Case {
            name: "topology.go topologyModeFromHints/PreferSameNode: every ready endpoint has node hints and one is for this node",
            node: zone_a(),
            services: vec![svc(Some("PreferSameNode"))],
            slices: vec![same_node().build()],
            want: vec![fe("172.30.1.1", 80, TCP).eps(&["10.1.2.3:80"])],
            ..Case::default()
        },
        Case {
            name: "topology.go topologyModeFromHints/PreferSameNode: no node hint for this node falls back to same-zone",
            node: node_in_zone("node-x", "zone-a"),
            services: vec![svc(Some("PreferSameNode"))],
            slices: vec![same_node().build()],
            want: vec![zone_a_eps()],
            ..Case::default()
        },
        Case {
            name: "topology.go topologyModeFromHints/PreferSameNode: an endpoint missing node hints falls back to same-zone",
            node: zone_a(),
            services: vec![svc(Some("PreferSameNode"))],
            slices: vec![
                hinted(
                    hinted(base(), "10.1.2.3", &["zone-a"], &[NODE]),
                    "10.1.2.4",
                    &["zone-a"],
                    &[],
                )
                .build(),
            ],
            want: vec![zone_a_eps()],
            ..Case::default()
        },
        Case {
            // Only ready endpoints' hints count: an unready one without hints does not
            // turn PreferSameNode off.
            name: "topology.go topologyModeFromHints/PreferSameNode: unready endpoints are not consulted",
            node: zone_a(),
            services: vec![svc(Some("PreferSameNode"))],
            slices: vec![
                same_node()
                    .endpoint("10.1.2.6", Some(false))
                    .conditions(Some(false), Some(false), Some(false))
                    .build(),
            ],
            want: vec![fe("172.30.1.1", 80, TCP).eps(&["10.1.2.3:80"])],
            ..Case::default()
        },
        Case {
            name: "topology.go topologyModeFromHints/node hints without zone hints and none for this node: no filtering",
            node: zone_a(),
            services: vec![svc(Some("PreferSameNode"))],
            slices: vec![
                hinted(
                    hinted(base(), "10.1.2.3", &[], &["node-b"]),
                    "10.1.2.4",
                    &[],
                    &["node-c"],
                )
                .build(),
            ],
            want: vec![zone_a_eps()],
            ..Case::default()
        },
        Case {
            // The hints decide, not the Service field: the same slices give the same
            // frontend without trafficDistribution.
            name: "topology.go topologyModeFromHints/PreferSameNode hints apply without trafficDistribution on the Service",
            node: zone_a(),
            services: vec![svc(None)],
            slices: vec![same_node().build()],
            want: vec![fe("172.30.1.1", 80, TCP).eps(&["10.1.2.3:80"])],
            ..Case::default()
        },
        Case {
            name: "topology.go topologyModeFromHints/PreferSameZone: zone hints for this zone",
            node: zone_a(),
            services: vec![svc(Some("PreferSameZone"))],
            slices: vec![
                hinted(
                    hinted(
                        hinted(base(), "10.1.2.3", &["zone-a"], &[]),
                        "10.1.2.4",
                        &["zone-a"],
                        &[],
                    ),
                    "10.1.2.5",
                    &["zone-b"],
                    &[],
                )
                .build(),
            ],
            want: vec![zone_a_eps()],
            ..Case::default()
        },
        Case {
            name: "topology.go topologyModeFromHints/PreferClose without hints in the slices: no filtering",
            node: zone_a(),
            services: vec![svc(Some("PreferClose"))],
            slices: vec![
                base()
                    .endpoint("10.1.2.3", Some(true))
                    .zone("zone-a")
                    .endpoint("10.1.2.4", Some(true))
                    .zone("zone-a")
                    .endpoint("10.1.2.5", Some(true))
                    .zone("zone-b")
                    .build(),
            ],
            want: vec![all3()],
            ..Case::default()
        },
        Case {
            // canUseTopology once required the topology-mode annotation; the current
            // topology.go reads hints only.
            name: "topology.go topologyModeFromHints/topology-mode annotation without hints: no filtering",
            node: zone_a(),
            services: vec![
                service("ns1", "svc1", "172.30.1.1")
                    .annotation("service.kubernetes.io/topology-mode", "Auto")
                    .port("", 80, "TCP")
                    .build(),
            ],
            slices: vec![
                base()
                    .endpoint("10.1.2.3", Some(true))
                    .endpoint("10.1.2.4", Some(true))
                    .endpoint("10.1.2.5", Some(true))
                    .build(),
            ],
            want: vec![all3()],
            ..Case::default()
        },
        Case {
            // "When falling back to terminating endpoints, we do NOT consider topology."
            name: "topology.go CategorizeEndpoints/serving-terminating fallback ignores hints",
            node: zone_a(),
            services: vec![svc(Some("PreferClose"))],
            slices: vec![
                base()
                    .endpoint("10.1.2.3", None)
                    .serving_terminating()
                    .for_zones(&["zone-a"])
                    .endpoint("10.1.2.4", None)
                    .serving_terminating()
                    .for_zones(&["zone-b"])
                    .build(),
            ],
            want: vec![fe("172.30.1.1", 80, TCP).eps(&["10.1.2.3:80", "10.1.2.4:80"])],
            ..Case::default()
        },
        Case {
            name: "topology.go CategorizeEndpoints/internalTrafficPolicy Local ignores node hints",
            node: zone_a(),
            services: vec![
                service("ns1", "svc1", "172.30.1.1")
                    .internal_traffic_policy("Local")
                    .traffic_distribution("PreferSameNode")
                    .port("", 80, "TCP")
                    .build(),
            ],
            slices: vec![
                hinted(
                    hinted(base(), "10.1.2.3", &["zone-a"], &["node-b"]).node(NODE),
                    "10.1.2.4",
                    &["zone-a"],
                    &[NODE],
                )
                .node("node-b")
                .build(),
            ],
            want: vec![fe("172.30.1.1", 80, TCP).eps(&["10.1.2.3:80"]).drop()],
            ..Case::default()
        },
    ]);
}
