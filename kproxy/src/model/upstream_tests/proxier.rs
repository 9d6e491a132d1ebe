//! pkg/proxy/nftables/proxier_test.go: kube-proxy's packet-flow and rule tests. A
//! packet-flow expectation "pod to ClusterIP → a:80, b:80" is the frontend's endpoint set,
//! "REJECT" a frontend without endpoints that rejects, "DROP" one that drops; a ClusterIP
//! port that is not a frontend (the "REJECT" for other ports of a ClusterIP) is the absence
//! of that frontend. External flows (to a NodePort, external IP or load-balancer IP) are
//! those frontends: "external to LB → a:80" is the `Scope::All` entry, "pod/node to LB" the
//! same entry under externalTrafficPolicy Cluster, and the `Scope::Internal` entry under
//! Local (kube-proxy's short-circuit of local traffic); "blocked external to LB → DROP" is
//! the frontend's source ranges. Whether a flow is masqueraded is the datapath's (from the
//! frontend's kind and flags, `--masquerade-all` and local-traffic detection), not checked
//! here. The node is `test-node`, as upstream; where its IP matters, 192.168.0.2.
//!
//! The stored iptables/proxier_test.go is a 2017 version without these tests; its newer
//! packet-flow tests are the same as nftables' (TestInternalTrafficPolicy,
//! TestTerminatingEndpointsTrafficPolicyLocal/Cluster, ...), ported here once.
//!
//! Left out: TestUpdateEndpointsMap (the same cases as endpointschangetracker_test.go, see
//! endpointschangetracker.rs and healthcheck.rs), TestHealthCheckNodePortWhenTerminating (in
//! healthcheck.rs), TestNodePorts' choice of NodePort addresses (`--nodeport-addresses`,
//! dataplane/node_addrs.rs), chain-name and ServiceCIDR tests (nftables internals).
//!
//! kproxy divergence kept: SCTP service ports are reported (ProblemKind::InvalidService) and
//! skipped, where kube-proxy serves them; the datapath balances TCP and UDP only.

use super::{Case, Op, Step, TCP, UDP, check, ext, fe, lb, node, node_with_ip, np, np6, run_steps};
use crate::{
    model::fixtures::{SliceBuilder, service, slice},
    problem::ProblemKind,
};

const NODE: &str = "test-node";

/// `makeTestEndpointSlice(ns, name, 1, ...)` with one TCP port.
fn eps(ns: &str, svc: &str, port_name: &str, port: i32) -> SliceBuilder {
    slice(ns, &format!("{svc}-1"), svc).port(port_name, port, "TCP")
}

#[test]
#[expect(clippy::too_many_lines, reason = "one table of upstream cases")]
fn packet_flows_to_cluster_ips() {
    check(vec![
        Case {
            name: "nftables/proxier_test.go TestOverallNFTablesRules (ClusterIP part)",
            node: node(NODE),
            services: vec![
                service("ns1", "svc1", "172.30.0.41")
                    .port("p80", 80, "TCP")
                    .build(),
                service("ns2", "svc2", "172.30.0.42")
                    .type_("LoadBalancer")
                    .external_traffic_policy("Local")
                    .port("p80", 80, "TCP")
                    .node_port(3001)
                    .load_balancer_ingress(&["1.2.3.4"])
                    .external_ips(&["192.168.99.22"])
                    .health_check_node_port(30000)
                    .build(),
                service("ns3", "svc3", "172.30.0.43")
                    .type_("NodePort")
                    .port("p80", 80, "TCP")
                    .node_port(3003)
                    .build(),
                service("ns4", "svc4", "172.30.0.44")
                    .type_("NodePort")
                    .external_ips(&["192.168.99.33"])
                    .port("p80", 80, "TCP")
                    .target_port(80)
                    .build(),
                service("ns5", "svc5", "172.30.0.45")
                    .type_("LoadBalancer")
                    .external_traffic_policy("Cluster")
                    .port("p80", 80, "TCP")
                    .node_port(3002)
                    .load_balancer_ingress(&["5.6.7.8"])
                    .health_check_node_port(30000)
                    .load_balancer_source_ranges(&[" 203.0.113.0/25"])
                    .client_ip_affinity(Some(10800))
                    .build(),
                service("ns6", "svc6", "172.30.0.46")
                    .type_("ClusterIP")
                    .port("p80", 80, "TCP")
                    .target_port(80)
                    .build(),
            ],
            slices: vec![
                eps("ns1", "svc1", "p80", 80)
                    .endpoint("10.180.0.1", None)
                    .build(),
                // Not local (no nodeName): eTP Local ignores it for external traffic, but
                // ClusterIP traffic uses it.
                eps("ns2", "svc2", "p80", 80)
                    .endpoint("10.180.0.2", None)
                    .build(),
                eps("ns3", "svc3", "p80", 80)
                    .endpoint("10.180.0.3", None)
                    .build(),
                eps("ns4", "svc4", "p80", 80)
                    .endpoint("10.180.0.4", None)
                    .endpoint("10.180.0.5", None)
                    .node(NODE)
                    .build(),
                eps("ns5", "svc5", "p80", 80)
                    .endpoint("10.180.0.3", None)
                    .build(),
            ],
            want: vec![
                fe("172.30.0.41", 80, TCP).eps(&["10.180.0.1:80"]),
                fe("172.30.0.42", 80, TCP).eps(&["10.180.0.2:80"]),
                // svc2, eTP Local without local endpoints: external traffic is dropped
                // ("no-endpoint-services { 1.2.3.4 . tcp . 80 : drop }", and the NodePort and
                // external IP alike), pod and node traffic short-circuits to all endpoints.
                ext("192.168.99.22", 80, TCP).drop().local(),
                ext("192.168.99.22", 80, TCP)
                    .internal()
                    .eps(&["10.180.0.2:80"]),
                lb("1.2.3.4", 80, TCP).drop().local(),
                lb("1.2.3.4", 80, TCP).internal().eps(&["10.180.0.2:80"]),
                np(3001, TCP).drop().local(),
                np(3001, TCP).internal().eps(&["10.180.0.2:80"]),
                fe("172.30.0.43", 80, TCP).eps(&["10.180.0.3:80"]),
                np(3003, TCP).eps(&["10.180.0.3:80"]),
                fe("172.30.0.44", 80, TCP).eps(&["10.180.0.4:80", "10.180.0.5:80"]),
                // svc4's port has no nodePort: its external IP only.
                ext("192.168.99.33", 80, TCP).eps(&["10.180.0.4:80", "10.180.0.5:80"]),
                fe("172.30.0.45", 80, TCP)
                    .eps(&["10.180.0.3:80"])
                    .affinity(10800),
                // "firewall-ips { 5.6.7.8 . tcp . 80 }": ip saddr != { 203.0.113.0/25 } drop
                lb("5.6.7.8", 80, TCP)
                    .eps(&["10.180.0.3:80"])
                    .affinity(10800)
                    .ranges(&["203.0.113.0/25"]),
                np(3002, TCP).eps(&["10.180.0.3:80"]).affinity(10800),
                // "no-endpoint-services ... goto reject-chain"
                fe("172.30.0.46", 80, TCP),
            ],
            problems: vec![],
        },
        Case {
            name: "nftables/proxier_test.go TestNoEndpointsReject/pod to cluster IP with no endpoints",
            node: node(NODE),
            services: vec![
                service("ns1", "svc1", "172.30.0.41")
                    .type_("LoadBalancer")
                    .external_ips(&["192.168.99.11"])
                    .port("p80", 80, "TCP")
                    .node_port(3001)
                    .load_balancer_ingress(&["1.2.3.4"])
                    .build(),
            ],
            slices: vec![],
            // pod and external clients alike: REJECT on every frontend.
            want: vec![
                fe("172.30.0.41", 80, TCP),
                ext("192.168.99.11", 80, TCP),
                lb("1.2.3.4", 80, TCP),
                np(3001, TCP),
            ],
            problems: vec![],
        },
        Case {
            name: "nftables/proxier_test.go TestClusterIPGeneral",
            node: node(NODE),
            services: vec![
                service("ns1", "svc1", "172.30.0.41")
                    .port("http", 80, "TCP")
                    .build(),
                service("ns2", "svc2", "172.30.0.42")
                    .port("http", 80, "TCP")
                    .port("https", 443, "TCP")
                    .target_port(8443)
                    .port("dns-udp", 53, "UDP")
                    .port("dns-tcp", 53, "TCP")
                    .target_port(5353)
                    .port("dns-sctp", 53, "SCTP")
                    .build(),
            ],
            slices: vec![
                eps("ns1", "svc1", "http", 80)
                    .endpoint("10.180.0.1", None)
                    .node(NODE)
                    .build(),
                eps("ns2", "svc2", "http", 80)
                    .port("https", 8443, "TCP")
                    .port("dns-udp", 53, "UDP")
                    .port("dns-tcp", 5353, "TCP")
                    .port("dns-sctp", 53, "SCTP")
                    .endpoint("10.180.0.1", None)
                    .node(NODE)
                    .endpoint("10.180.2.1", None)
                    .node("node2")
                    .build(),
            ],
            want: vec![
                // simple clusterIP (hairpin is a masquerade question)
                fe("172.30.0.41", 80, TCP).eps(&["10.180.0.1:80"]),
                // clusterIP with multiple endpoints
                fe("172.30.0.42", 80, TCP).eps(&["10.180.0.1:80", "10.180.2.1:80"]),
                // clusterIP with TargetPort: the slice port, 8443
                fe("172.30.0.42", 443, TCP).eps(&["10.180.0.1:8443", "10.180.2.1:8443"]),
                // TCP, UDP (and SCTP) on the same port
                fe("172.30.0.42", 53, TCP).eps(&["10.180.0.1:5353", "10.180.2.1:5353"]),
                fe("172.30.0.42", 53, UDP).eps(&["10.180.0.1:53", "10.180.2.1:53"]),
                // "TCP-only port does not match UDP traffic" and "svc1 does not accept
                // svc2's ports": no frontend 172.30.0.42:80/UDP nor 172.30.0.41:443.
            ],
            // dns-sctp: kproxy does not balance SCTP (kube-proxy does).
            problems: vec![ProblemKind::InvalidService],
        },
        Case {
            name: "nftables/proxier_test.go TestLoadBalancer",
            node: node_with_ip(NODE, "192.168.0.2"),
            services: vec![
                service("ns1", "svc1", "172.30.0.41")
                    .type_("LoadBalancer")
                    .port("p80", 80, "TCP")
                    .node_port(3001)
                    .load_balancer_ingress(&["1.2.3.4", "5.6.7.8"])
                    .load_balancer_source_ranges(&["192.168.0.0/24", " 203.0.113.0/25"])
                    .build(),
            ],
            slices: vec![
                eps("ns1", "svc1", "p80", 80)
                    .endpoint("10.180.0.1", None)
                    .build(),
            ],
            want: vec![
                fe("172.30.0.41", 80, TCP).eps(&["10.180.0.1:80"]),
                // "accepted/blocked external to LB1/LB2", "pod to LB (blocked)", "node to LB
                // (allowed)": the ranges; "same node to LB, SNATted to LB (implicitly
                // allowed)": 192.168.0.0/24 holds the node IP, so the LB IPs are sources too.
                lb("1.2.3.4", 80, TCP).eps(&["10.180.0.1:80"]).ranges(&[
                    "192.168.0.0/24",
                    "203.0.113.0/25",
                    "1.2.3.4",
                    "5.6.7.8",
                ]),
                lb("5.6.7.8", 80, TCP).eps(&["10.180.0.1:80"]).ranges(&[
                    "192.168.0.0/24",
                    "203.0.113.0/25",
                    "1.2.3.4",
                    "5.6.7.8",
                ]),
                // "nodePort bypasses LoadBalancerSourceRanges"
                np(3001, TCP).eps(&["10.180.0.1:80"]),
            ],
            problems: vec![],
        },
        Case {
            name: "nftables/proxier_test.go TestNodePorts/ipv4 and ipv4, multiple nodeport-addresses: pod to cluster IP",
            node: node(NODE),
            services: vec![
                service("ns1", "svc1", "172.30.0.41")
                    .type_("NodePort")
                    .port("p80", 80, "TCP")
                    .node_port(3001)
                    .build(),
            ],
            slices: vec![
                eps("ns1", "svc1", "p80", 80)
                    .endpoint("10.180.0.1", None)
                    .endpoint("10.180.2.1", None)
                    .node(NODE)
                    .build(),
            ],
            want: vec![
                fe("172.30.0.41", 80, TCP).eps(&["10.180.0.1:80", "10.180.2.1:80"]),
                // "external to nodePort", "node to nodePort"
                np(3001, TCP).eps(&["10.180.0.1:80", "10.180.2.1:80"]),
            ],
            problems: vec![],
        },
        Case {
            name: "nftables/proxier_test.go TestNodePorts/ipv6 and ipv6, multiple nodeport-addresses: pod to cluster IP",
            node: node(NODE),
            services: vec![
                service("ns1", "svc1", "fd00:172:30::41")
                    .type_("NodePort")
                    .port("p80", 80, "TCP")
                    .node_port(3001)
                    .build(),
            ],
            slices: vec![
                eps("ns1", "svc1", "p80", 80)
                    .address_type("IPv6")
                    .endpoint("fd00:10:180::1", None)
                    .endpoint("fd00:10:180::2:1", None)
                    .node(NODE)
                    .build(),
            ],
            want: vec![
                fe("fd00:172:30::41", 80, TCP)
                    .eps(&["[fd00:10:180::1]:80", "[fd00:10:180::2:1]:80"]),
                np6(3001, TCP).eps(&["[fd00:10:180::1]:80", "[fd00:10:180::2:1]:80"]),
            ],
            problems: vec![],
        },
        Case {
            name: "nftables/proxier_test.go TestExternalTrafficPolicyLocal",
            node: node(NODE),
            services: vec![etp_service("Local")],
            slices: vec![etp_slice()],
            want: vec![
                // "pod to cluster IP hits both endpoints"
                fe("172.30.0.41", 80, TCP).eps(&["10.180.0.1:80", "10.180.2.1:80"]),
                // "external to external IP/LB IP/NodePort hits only local endpoint";
                // "pod to external IP/LB IP/NodePort hits both endpoints".
                ext("192.168.99.11", 80, TCP)
                    .eps(&["10.180.2.1:80"])
                    .drop()
                    .local(),
                ext("192.168.99.11", 80, TCP)
                    .internal()
                    .eps(&["10.180.0.1:80", "10.180.2.1:80"]),
                lb("1.2.3.4", 80, TCP)
                    .eps(&["10.180.2.1:80"])
                    .drop()
                    .local(),
                lb("1.2.3.4", 80, TCP)
                    .internal()
                    .eps(&["10.180.0.1:80", "10.180.2.1:80"]),
                np(3001, TCP).eps(&["10.180.2.1:80"]).drop().local(),
                np(3001, TCP)
                    .internal()
                    .eps(&["10.180.0.1:80", "10.180.2.1:80"]),
            ],
            problems: vec![],
        },
        Case {
            name: "nftables/proxier_test.go TestExternalTrafficPolicyCluster",
            node: node(NODE),
            services: vec![etp_service("Cluster")],
            slices: vec![etp_slice()],
            // Every flow, pod or external, to any address: both endpoints.
            want: vec![
                fe("172.30.0.41", 80, TCP).eps(&["10.180.0.1:80", "10.180.2.1:80"]),
                ext("192.168.99.11", 80, TCP).eps(&["10.180.0.1:80", "10.180.2.1:80"]),
                lb("1.2.3.4", 80, TCP).eps(&["10.180.0.1:80", "10.180.2.1:80"]),
                np(3001, TCP).eps(&["10.180.0.1:80", "10.180.2.1:80"]),
            ],
            problems: vec![],
        },
        Case {
            // The four sub-cases (base, no LocalTrafficDetector, masqueradeAll, both) differ
            // in masquerading and in whether pods short-circuit (the datapath's, from the
            // configuration); the frontends are the same in all of them.
            name: "nftables/proxier_test.go TestInternalExternalMasquerade",
            node: node(NODE),
            services: vec![
                service("ns1", "svc1", "172.30.0.41")
                    .type_("LoadBalancer")
                    .port("p80", 80, "TCP")
                    .node_port(3001)
                    .health_check_node_port(30001)
                    .load_balancer_ingress(&["1.2.3.4"])
                    .build(),
                service("ns2", "svc2", "172.30.0.42")
                    .type_("LoadBalancer")
                    .port("p80", 80, "TCP")
                    .node_port(3002)
                    .health_check_node_port(30002)
                    .external_traffic_policy("Local")
                    .load_balancer_ingress(&["5.6.7.8"])
                    .build(),
                service("ns3", "svc3", "172.30.0.43")
                    .type_("LoadBalancer")
                    .port("p80", 80, "TCP")
                    .node_port(3003)
                    .health_check_node_port(30003)
                    .internal_traffic_policy("Local")
                    .load_balancer_ingress(&["9.10.11.12"])
                    .build(),
            ],
            slices: ["1", "2", "3"]
                .iter()
                .map(|n| {
                    eps(&format!("ns{n}"), &format!("svc{n}"), "p80", 80)
                        .endpoint(&format!("10.180.0.{n}"), None)
                        .node(NODE)
                        .endpoint(&format!("10.180.1.{n}"), None)
                        .node("remote")
                        .build()
                })
                .collect(),
            want: vec![
                // pod/node/external to ClusterIP, NodePort, LB
                fe("172.30.0.41", 80, TCP).eps(&["10.180.0.1:80", "10.180.1.1:80"]),
                lb("1.2.3.4", 80, TCP).eps(&["10.180.0.1:80", "10.180.1.1:80"]),
                np(3001, TCP).eps(&["10.180.0.1:80", "10.180.1.1:80"]),
                // "externalTrafficPolicy does not apply to ClusterIP traffic"
                fe("172.30.0.42", 80, TCP).eps(&["10.180.0.2:80", "10.180.1.2:80"]),
                // "external to NodePort/LB with eTP:Local": only the local endpoint;
                // "pod/node to NodePort/LB with eTP:Local": short-circuited to both.
                lb("5.6.7.8", 80, TCP)
                    .eps(&["10.180.0.2:80"])
                    .drop()
                    .local(),
                lb("5.6.7.8", 80, TCP)
                    .internal()
                    .eps(&["10.180.0.2:80", "10.180.1.2:80"]),
                np(3002, TCP).eps(&["10.180.0.2:80"]).drop().local(),
                np(3002, TCP)
                    .internal()
                    .eps(&["10.180.0.2:80", "10.180.1.2:80"]),
                // "internalTrafficPolicy applies; only the local endpoint is selected"
                fe("172.30.0.43", 80, TCP).eps(&["10.180.0.3:80"]).drop(),
                // "internalTrafficPolicy does not apply to NodePort/LoadBalancer traffic"
                lb("9.10.11.12", 80, TCP).eps(&["10.180.0.3:80", "10.180.1.3:80"]),
                np(3003, TCP).eps(&["10.180.0.3:80", "10.180.1.3:80"]),
            ],
            problems: vec![],
        },
        Case {
            name: "nftables/proxier_test.go TestBadIPs",
            node: node(NODE),
            services: vec![
                service("ns1", "svc1", "172.30.0.041")
                    .type_("LoadBalancer")
                    .port("p80", 80, "TCP")
                    .node_port(3001)
                    .load_balancer_ingress(&["1.2.3.004"])
                    .external_ips(&["192.168.099.022"])
                    .load_balancer_source_ranges(&["203.0.113.000/025"])
                    .build(),
            ],
            slices: vec![
                eps("ns1", "svc1", "p80", 80)
                    .endpoint("10.180.00.001", None)
                    .build(),
            ],
            // Every address and CIDR read as Kubernetes reads it (ParseIPSloppy).
            want: vec![
                fe("172.30.0.41", 80, TCP).eps(&["10.180.0.1:80"]),
                ext("192.168.99.22", 80, TCP).eps(&["10.180.0.1:80"]),
                lb("1.2.3.4", 80, TCP)
                    .eps(&["10.180.0.1:80"])
                    .ranges(&["203.0.113.0/25"]),
                np(3001, TCP).eps(&["10.180.0.1:80"]),
            ],
            problems: vec![],
        },
        Case {
            name: "nftables/proxier_test.go TestLoadBalancerIngressRouteTypeProxy",
            node: node(NODE),
            services: [
                ("svc1", "10.20.30.41", "1.2.3.4", Some("Proxy")),
                ("svc2", "10.20.30.42", "1.2.3.5", Some("VIP")),
                ("svc3", "10.20.30.43", "1.2.3.6", None),
            ]
            .into_iter()
            .enumerate()
            .map(|(i, (name, ip, lb_ip, mode))| {
                service("ns1", name, ip)
                    .type_("LoadBalancer")
                    .port("p80", 80, "TCP")
                    .node_port(3001 + i32::try_from(i).expect("small"))
                    .load_balancer_ingress_with(&[(Some(lb_ip), None, mode)])
                    .build()
            })
            .collect(),
            slices: vec![],
            // "ipMode Proxy": no rule for the LB IP; "ipMode VIP", "ipMode nil": one.
            want: vec![
                fe("10.20.30.41", 80, TCP),
                np(3001, TCP),
                fe("10.20.30.42", 80, TCP),
                lb("1.2.3.5", 80, TCP),
                np(3002, TCP),
                fe("10.20.30.43", 80, TCP),
                lb("1.2.3.6", 80, TCP),
                np(3003, TCP),
            ],
            problems: vec![],
        },
    ]);
}

fn etp_service(policy: &str) -> k8s_openapi::api::core::v1::Service {
    service("ns1", "svc1", "172.30.0.41")
        .type_("LoadBalancer")
        .external_traffic_policy(policy)
        .external_ips(&["192.168.99.11"])
        .port("p80", 80, "TCP")
        .node_port(3001)
        .target_port(80)
        .health_check_node_port(30000)
        .load_balancer_ingress(&["1.2.3.4"])
        .build()
}

fn etp_slice() -> k8s_openapi::api::discovery::v1::EndpointSlice {
    eps("ns1", "svc1", "p80", 80)
        .endpoint("10.180.0.1", None)
        .endpoint("10.180.2.1", None)
        .node(NODE)
        .build()
}

/// (sub-case, internalTrafficPolicy, endpoints as (ip, nodeName), ClusterIP frontend).
type PolicyCase<'a> = (
    &'a str,
    Option<&'a str>,
    [(&'a str, &'a str); 3],
    super::Want,
);

/// TestInternalTrafficPolicy: each case, then "endpoints deleted" (REJECT).
#[test]
fn internal_traffic_policy() {
    let cases: [PolicyCase<'_>; 4] = [
        (
            "internalTrafficPolicy is cluster",
            Some("Cluster"),
            [
                ("10.0.1.1", NODE),
                ("10.0.1.2", "node1"),
                ("10.0.1.3", "node2"),
            ],
            // pod to ClusterIP hits all endpoints
            fe("172.30.1.1", 80, TCP).eps(&["10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80"]),
        ),
        (
            "internalTrafficPolicy is local and there is one local endpoint",
            Some("Local"),
            [
                ("10.0.1.1", NODE),
                ("10.0.1.2", "node1"),
                ("10.0.1.3", "node2"),
            ],
            fe("172.30.1.1", 80, TCP).eps(&["10.0.1.1:80"]).drop(),
        ),
        (
            "internalTrafficPolicy is local and there are multiple local endpoints",
            Some("Local"),
            [
                ("10.0.1.1", NODE),
                ("10.0.1.2", NODE),
                ("10.0.1.3", "node2"),
            ],
            fe("172.30.1.1", 80, TCP)
                .eps(&["10.0.1.1:80", "10.0.1.2:80"])
                .drop(),
        ),
        (
            "internalTrafficPolicy is local and there are no local endpoints",
            Some("Local"),
            [
                ("10.0.1.1", "node0"),
                ("10.0.1.2", "node1"),
                ("10.0.1.3", "node2"),
            ],
            // no endpoints: DROP
            fe("172.30.1.1", 80, TCP).drop(),
        ),
    ];
    for (name, policy, endpoints, want) in cases {
        let mut svc = service("ns1", "svc1", "172.30.1.1").port("", 80, "TCP");
        if let Some(policy) = policy {
            svc = svc.internal_traffic_policy(policy);
        }
        let mut s = eps("ns1", "svc1", "", 80);
        for (ip, node_name) in endpoints {
            s = s.endpoint(ip, Some(true)).node(node_name);
        }
        run_steps(
            &format!("nftables/proxier_test.go TestInternalTrafficPolicy/{name}"),
            node(NODE),
            vec![
                Step {
                    name: "endpoints added",
                    ops: vec![Op::Service(svc.build()), Op::Slice(s.build())],
                    want: vec![want],
                },
                Step {
                    name: "endpoints deleted",
                    ops: vec![Op::DeleteSlice("ns1", "svc1-1")],
                    // no endpoints anywhere: REJECT, whatever the policy
                    want: vec![fe("172.30.1.1", 80, TCP)],
                },
            ],
        );
    }
}

/// Conditions of one endpoint in the terminating-endpoints tests: (ip, ready, serving,
/// terminating, node).
type Ep = (&'static str, bool, bool, bool, &'static str);

/// One terminating-endpoints case: (name, endpoints, "pod to clusterIP" output, "external to
/// LB" output, whether an empty external output drops rather than rejects).
type TerminatingCase<'a> = (&'a str, Vec<Ep>, Vec<&'a str>, Vec<&'a str>, bool);

fn terminating_case(test: &str, etp: &str, cases: Vec<TerminatingCase<'_>>) {
    let local = etp == "Local";
    for (name, endpoints, cluster_ip_output, external_output, external_drop) in cases {
        let svc = service("ns1", "svc1", "172.30.1.1")
            .type_("LoadBalancer")
            .external_traffic_policy(etp)
            .port("", 80, "TCP")
            .target_port(80)
            .health_check_node_port(30000)
            .load_balancer_ingress(&["1.2.3.4"])
            .build();
        let mut s = eps("ns1", "svc1", "", 80);
        for (ip, ready, serving, terminating, node_name) in endpoints {
            s = s
                .endpoint(ip, None)
                .conditions(Some(ready), Some(serving), Some(terminating))
                .node(node_name);
        }
        run_steps(
            &format!("nftables/proxier_test.go {test}/{name}"),
            node(NODE),
            vec![
                Step {
                    name: "pod to clusterIP, external to LB",
                    ops: vec![Op::Service(svc), Op::Slice(s.build())],
                    want: if local {
                        let mut external = lb("1.2.3.4", 80, TCP).eps(&external_output).local();
                        if external_drop {
                            external = external.drop();
                        }
                        vec![
                            fe("172.30.1.1", 80, TCP).eps(&cluster_ip_output),
                            external,
                            // Pods and the node short-circuit to the cluster-wide endpoints.
                            lb("1.2.3.4", 80, TCP).internal().eps(&cluster_ip_output),
                        ]
                    } else {
                        vec![
                            fe("172.30.1.1", 80, TCP).eps(&cluster_ip_output),
                            lb("1.2.3.4", 80, TCP).eps(&external_output),
                        ]
                    },
                },
                Step {
                    name: "pod to clusterIP, external to LB after endpoints deleted",
                    ops: vec![Op::DeleteSlice("ns1", "svc1-1")],
                    // REJECT everywhere
                    want: if local {
                        vec![
                            fe("172.30.1.1", 80, TCP),
                            lb("1.2.3.4", 80, TCP).local(),
                            lb("1.2.3.4", 80, TCP).internal(),
                        ]
                    } else {
                        vec![fe("172.30.1.1", 80, TCP), lb("1.2.3.4", 80, TCP)]
                    },
                },
            ],
        );
    }
}

#[test]
fn terminating_endpoints_traffic_policy_local() {
    // externalTrafficPolicy Local: ClusterIP traffic still uses cluster-wide endpoints.
    terminating_case(
        "TestTerminatingEndpointsTrafficPolicyLocal",
        "Local",
        vec![
            (
                "ready endpoints exist",
                vec![
                    ("10.0.1.1", true, true, false, NODE),
                    ("10.0.1.2", true, true, false, NODE),
                    ("10.0.1.3", false, true, true, NODE),
                    ("10.0.1.4", false, false, true, NODE),
                    ("10.0.1.5", true, true, false, "node-1"),
                ],
                vec!["10.0.1.1:80", "10.0.1.2:80", "10.0.1.5:80"],
                vec!["10.0.1.1:80", "10.0.1.2:80"],
                true,
            ),
            (
                "only terminating endpoints exist",
                vec![
                    ("10.0.1.2", false, true, true, NODE),
                    ("10.0.1.3", false, true, true, NODE),
                    ("10.0.1.4", false, false, true, NODE),
                    ("10.0.1.5", true, true, false, "node-1"),
                ],
                vec!["10.0.1.5:80"],
                vec!["10.0.1.2:80", "10.0.1.3:80"],
                true,
            ),
            (
                // "external to LB, no locally-usable endpoints": DROP
                "terminating endpoints on remote node",
                vec![("10.0.1.5", false, true, true, "node-1")],
                vec!["10.0.1.5:80"],
                vec![],
                true,
            ),
            (
                // "external to LB, no usable endpoints": REJECT
                "no usable endpoints on any node",
                vec![
                    ("10.0.1.5", false, false, true, NODE),
                    ("10.0.1.5", false, false, true, "node-1"),
                ],
                vec![],
                vec![],
                false,
            ),
        ],
    );
}

#[test]
fn terminating_endpoints_traffic_policy_cluster() {
    terminating_case(
        "TestTerminatingEndpointsTrafficPolicyCluster",
        "Cluster",
        vec![
            (
                "ready endpoints exist",
                vec![
                    ("10.0.1.1", true, true, false, NODE),
                    ("10.0.1.2", true, true, false, NODE),
                    ("10.0.1.3", false, true, true, "another-node"),
                    ("10.0.1.4", false, false, true, "another-node"),
                    ("10.0.1.5", true, true, false, "another-node"),
                ],
                vec!["10.0.1.1:80", "10.0.1.2:80", "10.0.1.5:80"],
                vec!["10.0.1.1:80", "10.0.1.2:80", "10.0.1.5:80"],
                false,
            ),
            (
                "only terminating endpoints exist",
                vec![
                    ("10.0.1.2", false, true, true, NODE),
                    ("10.0.1.3", false, true, true, NODE),
                    ("10.0.1.4", false, false, true, "another-node"),
                    ("10.0.1.5", false, true, true, "another-node"),
                ],
                vec!["10.0.1.2:80", "10.0.1.3:80", "10.0.1.5:80"],
                vec!["10.0.1.2:80", "10.0.1.3:80", "10.0.1.5:80"],
                false,
            ),
            (
                "terminating endpoints on remote node",
                vec![("10.0.1.5", false, true, true, "node-1")],
                vec!["10.0.1.5:80"],
                vec!["10.0.1.5:80"],
                false,
            ),
            (
                "no usable endpoints on any node",
                vec![
                    ("10.0.1.5", false, false, true, NODE),
                    ("10.0.1.5", false, false, true, "node-1"),
                ],
                vec![],
                vec![],
                false,
            ),
        ],
    );
}

/// (name, internalTrafficPolicy, externalTrafficPolicy, endpoints, frontends).
type MetricCase<'a> = (
    &'static str,
    Option<&'a str>,
    Option<&'a str>,
    &'a [(&'a str, &'a str)],
    Vec<super::Want>,
);

/// TestNoEndpointsMetric counts service ports whose internal traffic has "no local
/// endpoints" (kube-proxy's DROP rule for ClusterIP traffic) and those whose external
/// traffic has none (its DROP rule for NodePort traffic from outside): here, the ClusterIP
/// frontend and the NodePort's `Scope::All` entry, dropping without endpoints to use.
///
/// kproxy divergence: upstream gives every case's Service `nodePort: 123`, also when it
/// stays type ClusterIP (the internalTrafficPolicy-only cases); the API server refuses
/// that, kproxy reports it and serves no NodePort there.
#[test]
#[expect(clippy::too_many_lines, reason = "one table of upstream cases")]
fn no_endpoints_metric() {
    let three = [
        ("10.0.1.1", NODE),
        ("10.0.1.2", "node1"),
        ("10.0.1.3", "node2"),
    ];
    let remote = [
        ("10.0.1.1", "node0"),
        ("10.0.1.2", "node1"),
        ("10.0.1.3", "node2"),
    ];
    let all = ["10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80"];
    let cases: Vec<MetricCase<'_>> = vec![
        (
            // internal metric 0, external 0
            "nftables/proxier_test.go TestNoEndpointsMetric/internalTrafficPolicy is set and there are local endpoints",
            Some("Local"),
            None,
            &three,
            vec![fe("172.30.1.1", 80, TCP).eps(&["10.0.1.1:80"]).drop()],
        ),
        (
            // internal 0, external 0
            "nftables/proxier_test.go TestNoEndpointsMetric/externalTrafficPolicy is set and there are local endpoints",
            None,
            Some("Local"),
            &three,
            vec![
                fe("172.30.1.1", 80, TCP).eps(&all),
                np(123, TCP).eps(&["10.0.1.1:80"]).drop().local(),
                np(123, TCP).internal().eps(&all),
            ],
        ),
        (
            // internal 0, external 0
            "nftables/proxier_test.go TestNoEndpointsMetric/both policies are set and there are local endpoints",
            Some("Local"),
            Some("Local"),
            &three,
            vec![
                fe("172.30.1.1", 80, TCP).eps(&["10.0.1.1:80"]).drop(),
                np(123, TCP).eps(&["10.0.1.1:80"]).drop().local(),
                np(123, TCP).internal().eps(&all),
            ],
        ),
        (
            // internal "no local endpoints" metric 1, external 0
            "nftables/proxier_test.go TestNoEndpointsMetric/internalTrafficPolicy is set and there are no local endpoints",
            Some("Local"),
            None,
            &remote,
            vec![fe("172.30.1.1", 80, TCP).drop()],
        ),
        (
            // internal 0, external 1
            "nftables/proxier_test.go TestNoEndpointsMetric/externalTrafficPolicy is set and there are no local endpoints",
            None,
            Some("Local"),
            &remote,
            vec![
                fe("172.30.1.1", 80, TCP).eps(&all),
                np(123, TCP).drop().local(),
                np(123, TCP).internal().eps(&all),
            ],
        ),
        (
            // internal 1, external 1
            "nftables/proxier_test.go TestNoEndpointsMetric/both policies are set and there are no local endpoints",
            Some("Local"),
            Some("Local"),
            &remote,
            vec![
                fe("172.30.1.1", 80, TCP).drop(),
                np(123, TCP).drop().local(),
                np(123, TCP).internal().eps(&all),
            ],
        ),
        (
            // internal 0, external 0: no endpoints at all is REJECT, not "no local endpoints"
            "nftables/proxier_test.go TestNoEndpointsMetric/both policies are set and there are no endpoints at all",
            Some("Local"),
            Some("Local"),
            &[],
            vec![
                fe("172.30.1.1", 80, TCP),
                np(123, TCP).local(),
                np(123, TCP).internal(),
            ],
        ),
    ];
    check(
        cases
            .into_iter()
            .map(|(name, itp, etp, endpoints, want)| {
                let mut svc = service("ns1", "svc1", "172.30.1.1")
                    .port("", 80, "TCP")
                    .node_port(123);
                if let Some(itp) = itp {
                    svc = svc.internal_traffic_policy(itp);
                }
                if let Some(etp) = etp {
                    svc = svc.type_("NodePort").external_traffic_policy(etp);
                }
                let mut s = eps("ns1", "svc1", "", 80);
                for (ip, node_name) in endpoints {
                    s = s.endpoint(ip, Some(true)).node(node_name);
                }
                Case {
                    name,
                    node: node(NODE),
                    services: vec![svc.build()],
                    slices: vec![s.build()],
                    want,
                    // nodePort on a ClusterIP Service
                    problems: if etp.is_none() {
                        vec![ProblemKind::InvalidService]
                    } else {
                        vec![]
                    },
                }
            })
            .collect(),
    );
}

#[test]
#[expect(clippy::too_many_lines, reason = "one upstream scenario")]
fn sync_proxy_rules_repeated() {
    let svc = |ns: &str, name: &str, ip: &str, port_name: &str, port: i32| {
        service(ns, name, ip)
            .type_("ClusterIP")
            .port(port_name, port, "TCP")
            .build()
    };
    let eps3 = |ips: &[&str]| {
        let mut s = eps("ns3", "svc3", "p80", 80);
        for ip in ips {
            s = s.endpoint_addresses(&[ip]);
        }
        s.build()
    };
    let svc1 = || fe("172.30.0.41", 80, TCP).eps(&["10.0.1.1:80"]);
    let svc2 = || fe("172.30.0.42", 8080, TCP).eps(&["10.0.2.1:8080"]);
    let svc4 = || fe("172.30.0.44", 80, TCP).eps(&["10.0.4.1:80"]);
    run_steps(
        "nftables/proxier_test.go TestSyncProxyRulesRepeated",
        node(NODE),
        vec![
            Step {
                name: "create initial state",
                ops: vec![
                    Op::Service(svc("ns1", "svc1", "172.30.0.41", "p80", 80)),
                    Op::Service(svc("ns2", "svc2", "172.30.0.42", "p8080", 8080)),
                    Op::Slice(
                        eps("ns1", "svc1", "p80", 80)
                            .endpoint_addresses(&["10.0.1.1"])
                            .build(),
                    ),
                    Op::Slice(
                        eps("ns2", "svc2", "p8080", 8080)
                            .endpoint_addresses(&["10.0.2.1"])
                            .build(),
                    ),
                ],
                want: vec![svc1(), svc2()],
            },
            Step {
                name: "add a new service and its endpoints",
                ops: vec![
                    Op::Service(svc("ns3", "svc3", "172.30.0.43", "p80", 80)),
                    Op::Slice(eps3(&["10.0.3.1"])),
                ],
                want: vec![
                    svc1(),
                    svc2(),
                    fe("172.30.0.43", 80, TCP).eps(&["10.0.3.1:80"]),
                ],
            },
            Step {
                name: "delete a service",
                ops: vec![Op::DeleteService("ns2", "svc2")],
                want: vec![svc1(), fe("172.30.0.43", 80, TCP).eps(&["10.0.3.1:80"])],
            },
            Step {
                name: "add a service, sync, then add its endpoints (1: no endpoints yet)",
                ops: vec![Op::Service(svc("ns4", "svc4", "172.30.0.44", "p80", 80))],
                want: vec![
                    svc1(),
                    fe("172.30.0.43", 80, TCP).eps(&["10.0.3.1:80"]),
                    // no-endpoint-services ... goto reject-chain
                    fe("172.30.0.44", 80, TCP),
                ],
            },
            Step {
                name: "add a service, sync, then add its endpoints (2: endpoints)",
                ops: vec![Op::Slice(
                    eps("ns4", "svc4", "p80", 80)
                        .endpoint_addresses(&["10.0.4.1"])
                        .build(),
                )],
                want: vec![
                    svc1(),
                    fe("172.30.0.43", 80, TCP).eps(&["10.0.3.1:80"]),
                    svc4(),
                ],
            },
            Step {
                name: "change an endpoint of an existing service",
                ops: vec![Op::Slice(eps3(&["10.0.3.2"]))],
                want: vec![
                    svc1(),
                    fe("172.30.0.43", 80, TCP).eps(&["10.0.3.2:80"]),
                    svc4(),
                ],
            },
            Step {
                name: "add an endpoint to a service",
                ops: vec![Op::Slice(eps3(&["10.0.3.2", "10.0.3.3"]))],
                want: vec![
                    svc1(),
                    fe("172.30.0.43", 80, TCP).eps(&["10.0.3.2:80", "10.0.3.3:80"]),
                    svc4(),
                ],
            },
            Step {
                name: "empty a service's endpoints",
                ops: vec![Op::Slice(eps3(&[]))],
                want: vec![svc1(), fe("172.30.0.43", 80, TCP), svc4()],
            },
            Step {
                name: "restore endpoints to non-empty immediately",
                ops: vec![Op::Slice(eps3(&["10.0.3.2", "10.0.3.3"]))],
                want: vec![
                    svc1(),
                    fe("172.30.0.43", 80, TCP).eps(&["10.0.3.2:80", "10.0.3.3:80"]),
                    svc4(),
                ],
            },
            Step {
                name: "empty a service's endpoints and restore it after stale chains age (1)",
                ops: vec![Op::Slice(eps3(&[]))],
                want: vec![svc1(), fe("172.30.0.43", 80, TCP), svc4()],
            },
            Step {
                name: "empty a service's endpoints and restore it after stale chains age (2)",
                ops: vec![Op::Slice(eps3(&["10.0.3.2", "10.0.3.3"]))],
                want: vec![
                    svc1(),
                    fe("172.30.0.43", 80, TCP).eps(&["10.0.3.2:80", "10.0.3.3:80"]),
                    svc4(),
                ],
            },
            Step {
                name: "sync with no new changes",
                ops: vec![],
                want: vec![
                    svc1(),
                    fe("172.30.0.43", 80, TCP).eps(&["10.0.3.2:80", "10.0.3.3:80"]),
                    svc4(),
                ],
            },
        ],
    );
}

#[test]
fn sync_proxy_rules_startup() {
    // Upstream starts from stale nftables state; kproxy's model starts from the objects.
    check(vec![Case {
        name: "nftables/proxier_test.go TestSyncProxyRulesStartup",
        node: node(NODE),
        services: vec![
            service("ns1", "svc1", "172.30.0.41")
                .type_("ClusterIP")
                .port("p80", 80, "TCP")
                .build(),
            service("ns2", "svc2", "172.30.0.42")
                .type_("ClusterIP")
                .port("p8080", 8080, "TCP")
                .build(),
            service("ns3", "svc3", "172.30.0.43")
                .type_("ClusterIP")
                .port("p80", 80, "TCP")
                .build(),
        ],
        slices: vec![
            eps("ns1", "svc1", "p80", 80)
                .endpoint_addresses(&["10.0.1.1"])
                .endpoint_addresses(&["10.0.1.2"])
                .build(),
            eps("ns2", "svc2", "p8080", 8080)
                .endpoint_addresses(&["10.0.2.1"])
                .build(),
        ],
        want: vec![
            fe("172.30.0.41", 80, TCP).eps(&["10.0.1.1:80", "10.0.1.2:80"]),
            fe("172.30.0.42", 8080, TCP).eps(&["10.0.2.1:8080"]),
            fe("172.30.0.43", 80, TCP),
        ],
        problems: vec![],
    }]);
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "four upstream tests of one service set"
)]
fn build_service_map() {
    let services = || {
        vec![
            service("somewhere-else", "cluster-ip", "172.30.55.4")
                .type_("ClusterIP")
                .port("something", 1234, "UDP")
                .node_port(4321)
                .port("somethingelse", 1235, "UDP")
                .node_port(5321)
                .port("sctpport", 1236, "SCTP")
                .node_port(6321)
                .build(),
            service("somewhere-else", "node-port", "172.30.55.10")
                .type_("NodePort")
                .port("blahblah", 345, "UDP")
                .node_port(678)
                .port("moreblahblah", 344, "TCP")
                .node_port(677)
                .port("muchmoreblah", 343, "SCTP")
                .node_port(676)
                .build(),
            service("somewhere", "load-balancer", "172.30.55.11")
                .type_("LoadBalancer")
                .port("foobar", 8675, "UDP")
                .node_port(30061)
                .port("baz", 8676, "UDP")
                .node_port(30062)
                .load_balancer_ingress(&["1.2.3.4"])
                .build(),
            service("somewhere", "only-local-load-balancer", "172.30.55.12")
                .type_("LoadBalancer")
                .port("foobar2", 8677, "UDP")
                .node_port(30063)
                .port("baz", 8678, "UDP")
                .node_port(30064)
                .load_balancer_ingress(&["5.6.7.8"])
                .external_traffic_policy("Local")
                .health_check_node_port(345)
                .build(),
        ]
    };
    let eight = vec![
        fe("172.30.55.4", 1234, UDP),
        fe("172.30.55.4", 1235, UDP),
        fe("172.30.55.10", 345, UDP),
        fe("172.30.55.10", 344, TCP),
        np(678, UDP),
        np(677, TCP),
        fe("172.30.55.11", 8675, UDP),
        fe("172.30.55.11", 8676, UDP),
        lb("1.2.3.4", 8675, UDP),
        lb("1.2.3.4", 8676, UDP),
        np(30061, UDP),
        np(30062, UDP),
        fe("172.30.55.12", 8677, UDP),
        fe("172.30.55.12", 8678, UDP),
        lb("5.6.7.8", 8677, UDP).local(),
        lb("5.6.7.8", 8677, UDP).internal(),
        lb("5.6.7.8", 8678, UDP).local(),
        lb("5.6.7.8", 8678, UDP).internal(),
        np(30063, UDP).local(),
        np(30063, UDP).internal(),
        np(30064, UDP).local(),
        np(30064, UDP).internal(),
    ];
    // Upstream's service map has 10 ports; kproxy serves 8 and reports the 2 SCTP ones, and
    // the nodePorts of the ClusterIP Service (the API server refuses them).
    check(vec![
        Case {
            name: "nftables/proxier_test.go TestBuildServiceMapAddRemove (services added)",
            node: node(NODE),
            services: services(),
            slices: vec![],
            want: eight.clone(),
            problems: vec![ProblemKind::InvalidService; 4],
        },
        Case {
            name: "nftables/proxier_test.go TestBuildServiceMapServiceHeadless",
            node: node(NODE),
            services: vec![
                service("somewhere-else", "headless", "None")
                    .type_("ClusterIP")
                    .port("rpc", 1234, "UDP")
                    .build(),
                service("somewhere-else", "headless-without-port", "None")
                    .type_("ClusterIP")
                    .build(),
            ],
            slices: vec![],
            want: vec![],
            problems: vec![],
        },
        Case {
            name: "nftables/proxier_test.go TestBuildServiceMapServiceTypeExternalName",
            node: node(NODE),
            services: vec![
                service("somewhere-else", "external-name", "172.30.55.4")
                    .type_("ExternalName")
                    .port("blah", 1235, "UDP")
                    .node_port(5321)
                    .build(),
            ],
            slices: vec![],
            want: vec![],
            problems: vec![],
        },
    ]);
    run_steps(
        "nftables/proxier_test.go TestBuildServiceMapAddRemove",
        node(NODE),
        vec![
            Step {
                name: "add services",
                ops: services().into_iter().map(Op::Service).collect(),
                want: eight,
            },
            Step {
                name: "remove the first port of cluster-ip and delete the other services",
                ops: vec![
                    Op::Service(
                        service("somewhere-else", "cluster-ip", "172.30.55.4")
                            .type_("ClusterIP")
                            .port("somethingelse", 1235, "UDP")
                            .node_port(5321)
                            .build(),
                    ),
                    Op::DeleteService("somewhere-else", "node-port"),
                    Op::DeleteService("somewhere", "load-balancer"),
                    Op::DeleteService("somewhere", "only-local-load-balancer"),
                ],
                want: vec![fe("172.30.55.4", 1235, UDP)],
            },
        ],
    );

    let v1 = || {
        service("somewhere", "some-service", "172.30.55.4")
            .type_("ClusterIP")
            .port("something", 1234, "UDP")
            .node_port(4321)
            .port("somethingelse", 1235, "TCP")
            .node_port(5321)
            .build()
    };
    let v2 = || {
        service("somewhere", "some-service", "172.30.55.4")
            .type_("LoadBalancer")
            .port("something", 1234, "UDP")
            .node_port(4321)
            .target_port(7002)
            .port("somethingelse", 1235, "TCP")
            .node_port(5321)
            .target_port(7003)
            .load_balancer_ingress(&["1.2.3.4"])
            .external_traffic_policy("Local")
            .health_check_node_port(345)
            .build()
    };
    let two = || vec![fe("172.30.55.4", 1234, UDP), fe("172.30.55.4", 1235, TCP)];
    let load_balancer = || {
        let mut want = two();
        want.extend([
            lb("1.2.3.4", 1234, UDP).local(),
            lb("1.2.3.4", 1234, UDP).internal(),
            lb("1.2.3.4", 1235, TCP).local(),
            lb("1.2.3.4", 1235, TCP).internal(),
            np(4321, UDP).local(),
            np(4321, UDP).internal(),
            np(5321, TCP).local(),
            np(5321, TCP).internal(),
        ]);
        want
    };
    run_steps(
        "nftables/proxier_test.go TestBuildServiceMapServiceUpdate",
        node(NODE),
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

/// pkg/proxy/ipvs/proxier_test.go's external-IP cases (the ipvs proxier takes the same
/// service and endpoint maps): a virtual server per external IP of the proxier's family,
/// with the external policy's endpoints.
///
/// kproxy divergence kept: 127.0.0.1 as an external IP (which the ipvs proxier binds) is
/// reported and skipped, as every loopback VIP is.
#[test]
fn ipvs_external_ips() {
    let external_ips = ["50.60.70.81", "2012::51", "127.0.0.1"];
    check(vec![
        Case {
            name: "ipvs/proxier_test.go TestExternalIPsNoEndpoint",
            node: node(NODE),
            services: vec![
                service("ns1", "svc1", "10.20.30.41")
                    .external_ips(&["50.60.70.81"])
                    .port("p80", 80, "TCP")
                    .target_port(80)
                    .build(),
            ],
            slices: vec![],
            // Two virtual servers, the external one without destinations.
            want: vec![fe("10.20.30.41", 80, TCP), ext("50.60.70.81", 80, TCP)],
            problems: vec![],
        },
        Case {
            name: "ipvs/proxier_test.go TestOnlyLocalExternalIPs",
            node: node(NODE),
            services: vec![
                service("ns1", "svc1", "10.20.30.41")
                    .type_("NodePort")
                    .external_ips(&external_ips)
                    .port("p80", 80, "TCP")
                    .target_port(80)
                    .external_traffic_policy("Local")
                    .build(),
            ],
            slices: vec![
                eps("ns1", "svc1", "p80", 80)
                    .endpoint("10.180.0.1", None)
                    .node(NODE)
                    .endpoint("10.180.1.1", None)
                    .node("other-node")
                    .build(),
            ],
            // "Expect only 1 local endpoint" for the external IP; the IPv6 one is the IPv6
            // proxier's (no IPv6 cluster IP here); no nodePort, no NodePort.
            want: vec![
                fe("10.20.30.41", 80, TCP).eps(&["10.180.0.1:80", "10.180.1.1:80"]),
                ext("50.60.70.81", 80, TCP)
                    .eps(&["10.180.0.1:80"])
                    .drop()
                    .local(),
                ext("50.60.70.81", 80, TCP)
                    .internal()
                    .eps(&["10.180.0.1:80", "10.180.1.1:80"]),
            ],
            problems: vec![ProblemKind::InvalidService],
        },
    ]);
}
