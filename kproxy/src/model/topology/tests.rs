//! kube-proxy's TestCategorizeEndpoints (pkg/proxy/topology_test.go), case by case, for the
//! rules of the current topology.go: hints apply whenever every ready endpoint has them
//! (annotations no longer gate them), terminating endpoints are always a fallback
//! (ProxyTerminatingEndpoints is GA), and node hints select PreferSameNode.

use std::{collections::BTreeSet, net::Ipv4Addr};

use super::{EndpointInfo, Locality, TopologyMode, categorize, topology_mode};
use crate::model::Endpoint;

/// `10.x.y.z:80` style endpoints from the upstream tests, in our test range.
fn ep(last: u8) -> Endpoint {
    Endpoint {
        addr: Ipv4Addr::new(198, 18, 1, last).into(),
        port: 80,
    }
}

struct E {
    last: u8,
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
    zones: &'static [&'static str],
    nodes: &'static [&'static str],
}

const fn ready(last: u8) -> E {
    E {
        last,
        ready: true,
        serving: true,
        terminating: false,
        local: false,
        zones: &[],
        nodes: &[],
    }
}

impl E {
    const fn zones(mut self, zones: &'static [&'static str]) -> Self {
        self.zones = zones;
        self
    }
    const fn nodes(mut self, nodes: &'static [&'static str]) -> Self {
        self.nodes = nodes;
        self
    }
    const fn local(mut self) -> Self {
        self.local = true;
        self
    }
    const fn unready(mut self) -> Self {
        self.ready = false;
        self.serving = false;
        self
    }
    const fn terminating(mut self) -> Self {
        self.ready = false;
        self.serving = true;
        self.terminating = true;
        self
    }
    fn info(&self) -> EndpointInfo {
        EndpointInfo {
            endpoint: ep(self.last),
            ready: self.ready,
            serving: self.serving,
            terminating: self.terminating,
            local: self.local,
            zone_hints: self.zones.iter().map(|s| (*s).to_owned()).collect(),
            node_hints: self.nodes.iter().map(|s| (*s).to_owned()).collect(),
        }
    }
}

struct Case {
    /// The upstream case name (TestCategorizeEndpoints), adapted where noted.
    name: &'static str,
    zone: &'static str,
    local_policy: bool,
    endpoints: Vec<E>,
    cluster: Option<&'static [u8]>,
    local: Option<&'static [u8]>,
    has_any: bool,
}

fn set(list: &[u8]) -> BTreeSet<Endpoint> {
    list.iter().map(|l| ep(*l)).collect()
}

#[test]
#[expect(clippy::too_many_lines, reason = "one table of upstream cases")]
fn categorizes_endpoints_like_kube_proxy() {
    let cases = vec![
        Case {
            name: "normal endpoint filtering (hints for this zone)",
            zone: "zone-a",
            local_policy: false,
            endpoints: vec![
                ready(3).zones(&["zone-a"]),
                ready(4).zones(&["zone-b"]),
                ready(5).zones(&["zone-c"]),
                ready(6).zones(&["zone-a"]),
            ],
            cluster: Some(&[3, 6]),
            local: None,
            has_any: true,
        },
        Case {
            name: "empty node labels",
            zone: "",
            local_policy: false,
            endpoints: vec![ready(3).zones(&["zone-a"])],
            cluster: Some(&[3]),
            local: None,
            has_any: true,
        },
        Case {
            name: "node in different zone, no endpoint filtering",
            zone: "zone-b",
            local_policy: false,
            endpoints: vec![ready(3).zones(&["zone-a"])],
            cluster: Some(&[3]),
            local: None,
            has_any: true,
        },
        Case {
            name: "unready endpoint",
            zone: "zone-a",
            local_policy: false,
            endpoints: vec![
                ready(3).zones(&["zone-a"]),
                ready(4).zones(&["zone-b"]),
                ready(5).zones(&["zone-c"]),
                ready(6).zones(&["zone-a"]).unready(),
            ],
            cluster: Some(&[3]),
            local: None,
            has_any: true,
        },
        Case {
            name: "only unready endpoints in same zone (should not filter)",
            zone: "zone-a",
            local_policy: false,
            endpoints: vec![
                ready(3).zones(&["zone-a"]).unready(),
                ready(4).zones(&["zone-b"]),
                ready(5).zones(&["zone-c"]),
                ready(6).zones(&["zone-a"]).unready(),
            ],
            cluster: Some(&[4, 5]),
            local: None,
            has_any: true,
        },
        Case {
            name: "missing hints, no filtering applied",
            zone: "zone-a",
            local_policy: false,
            endpoints: vec![
                ready(3).zones(&["zone-a"]),
                ready(4).zones(&["zone-b"]),
                ready(5),
                ready(6).zones(&["zone-a"]),
            ],
            cluster: Some(&[3, 4, 5, 6]),
            local: None,
            has_any: true,
        },
        Case {
            name: "multiple hints per endpoint, filtering includes any endpoint with zone included",
            zone: "zone-c",
            local_policy: false,
            endpoints: vec![
                ready(3).zones(&["zone-a", "zone-b", "zone-c"]),
                ready(4).zones(&["zone-b", "zone-c"]),
                ready(5).zones(&["zone-b", "zone-d"]),
                ready(6).zones(&["zone-c"]),
            ],
            cluster: Some(&[3, 4, 6]),
            local: None,
            has_any: true,
        },
        Case {
            name: "internalTrafficPolicy: Local, topology ignored for Local endpoints",
            zone: "zone-a",
            local_policy: true,
            endpoints: vec![
                ready(3).zones(&["zone-a"]).local(),
                ready(4).zones(&["zone-b"]).local(),
                ready(5).zones(&["zone-c"]),
                ready(6).zones(&["zone-a"]),
            ],
            cluster: None,
            local: Some(&[3, 4]),
            has_any: true,
        },
        Case {
            name: "internalTrafficPolicy: Local, with empty endpoints",
            zone: "",
            local_policy: true,
            endpoints: vec![],
            cluster: None,
            local: Some(&[]),
            has_any: false,
        },
        Case {
            name: "internalTrafficPolicy: Local, but all endpoints are remote",
            zone: "",
            local_policy: true,
            endpoints: vec![ready(0), ready(1)],
            cluster: None,
            local: Some(&[]),
            has_any: true,
        },
        Case {
            name: "internalTrafficPolicy: Local, all endpoints are local",
            zone: "",
            local_policy: true,
            endpoints: vec![ready(0).local(), ready(1).local()],
            cluster: None,
            local: Some(&[0, 1]),
            has_any: true,
        },
        Case {
            name: "internalTrafficPolicy: Local, some endpoints are local",
            zone: "",
            local_policy: true,
            endpoints: vec![ready(0).local(), ready(1)],
            cluster: None,
            local: Some(&[0]),
            has_any: true,
        },
        Case {
            name: "Cluster traffic policy, endpoints not Ready",
            zone: "",
            local_policy: false,
            endpoints: vec![ready(0).unready(), ready(1).unready()],
            cluster: Some(&[]),
            local: None,
            has_any: false,
        },
        Case {
            name: "Cluster traffic policy, some endpoints are Ready",
            zone: "",
            local_policy: false,
            endpoints: vec![ready(0).unready(), ready(1)],
            cluster: Some(&[1]),
            local: None,
            has_any: true,
        },
        Case {
            name: "Cluster traffic policy, PTE enabled, all endpoints are terminating",
            zone: "",
            local_policy: false,
            endpoints: vec![ready(0).terminating().local(), ready(1).terminating()],
            cluster: Some(&[0, 1]),
            local: None,
            has_any: true,
        },
        Case {
            name: "iTP: Local, PTE enabled, all endpoints remote and terminating (adapted: internal only)",
            zone: "",
            local_policy: true,
            endpoints: vec![ready(0).terminating(), ready(1).terminating()],
            cluster: None,
            local: Some(&[]),
            has_any: true,
        },
        Case {
            name: "iTP: Local, local terminating endpoint used when no local one is ready (adapted)",
            zone: "",
            local_policy: true,
            endpoints: vec![
                ready(0),
                ready(1).unready().local(),
                ready(2).terminating().local(),
                ready(3).terminating(),
            ],
            cluster: None,
            local: Some(&[2]),
            has_any: true,
        },
        Case {
            name: "no cluster endpoints for iTP:Local internal-only service",
            zone: "",
            local_policy: true,
            endpoints: vec![ready(0), ready(1).local()],
            cluster: None,
            local: Some(&[1]),
            has_any: true,
        },
        Case {
            name: "PreferSameNode: node hints for this node (topology.go, node hints)",
            zone: "zone-a",
            local_policy: false,
            endpoints: vec![
                ready(3).zones(&["zone-a"]).nodes(&["node-1"]),
                ready(4).zones(&["zone-a"]).nodes(&["node-2"]),
            ],
            cluster: Some(&[3]),
            local: None,
            has_any: true,
        },
        Case {
            name: "PreferSameNode: no hint for this node falls back to zone hints",
            zone: "zone-a",
            local_policy: false,
            endpoints: vec![
                ready(3).zones(&["zone-a"]).nodes(&["node-2"]),
                ready(4).zones(&["zone-b"]).nodes(&["node-3"]),
            ],
            cluster: Some(&[3]),
            local: None,
            has_any: true,
        },
        Case {
            name: "terminating endpoints are a fallback even with hints",
            zone: "zone-a",
            local_policy: false,
            endpoints: vec![
                ready(3).zones(&["zone-a"]).terminating(),
                ready(4).zones(&["zone-b"]).unready(),
            ],
            cluster: Some(&[3]),
            local: None,
            has_any: true,
        },
    ];
    for case in cases {
        let here = Locality {
            node: "node-1",
            zone: case.zone,
        };
        let infos: Vec<EndpointInfo> = case.endpoints.iter().map(E::info).collect();
        let got = categorize(&infos, !case.local_policy, case.local_policy, &here);
        let as_set = |v: &Option<Vec<Endpoint>>| {
            v.as_ref()
                .map(|v| v.iter().copied().collect::<BTreeSet<_>>())
        };
        assert_eq!(
            as_set(&got.cluster),
            case.cluster.map(set),
            "case: {} (cluster)",
            case.name
        );
        assert_eq!(
            as_set(&got.local),
            case.local.map(set),
            "case: {} (local)",
            case.name
        );
        assert_eq!(got.has_any, case.has_any, "case: {} (has_any)", case.name);
    }
}

#[test]
fn topology_mode_needs_hints_on_every_ready_endpoint() {
    let here = Locality {
        node: "node-1",
        zone: "zone-a",
    };
    let hinted = [
        ready(1).zones(&["zone-a"]).info(),
        ready(2).zones(&["zone-b"]).info(),
    ];
    assert_eq!(topology_mode(&hinted, &here), TopologyMode::SameZone);
    let one_missing = [ready(1).zones(&["zone-a"]).info(), ready(2).info()];
    assert_eq!(topology_mode(&one_missing, &here), TopologyMode::Any);
    // An unready endpoint without hints does not count.
    let unready_missing = [
        ready(1).zones(&["zone-a"]).info(),
        ready(2).unready().info(),
    ];
    assert_eq!(
        topology_mode(&unready_missing, &here),
        TopologyMode::SameZone
    );
    let none_ready = [ready(1).zones(&["zone-a"]).unready().info()];
    assert_eq!(topology_mode(&none_ready, &here), TopologyMode::Any);
}
