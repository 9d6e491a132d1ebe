//! pkg/proxy/serviceport.go: what `newBaseServiceInfo` takes from a Service port and how
//! `UsesClusterEndpoints`/`UsesLocalEndpoints` and the proxiers apply it to ClusterIP
//! traffic. serviceport.go has no test file of its own; each case names the function whose
//! behaviour it pins down.

use super::{Case, TCP, UDP, check, ext, fe, lb, node, node_with_ip, np};
use crate::model::fixtures::{service, slice};

const NODE: &str = "test-node";

fn two_endpoints() -> k8s_openapi::api::discovery::v1::EndpointSlice {
    slice("ns1", "svc1-1", "svc1")
        .port("p80", 8080, "TCP")
        .endpoint("10.0.1.1", None)
        .node(NODE)
        .endpoint("10.0.1.2", None)
        .node("other-node")
        .build()
}

#[test]
#[expect(clippy::too_many_lines, reason = "one table of cases")]
fn base_service_info() {
    let svc = || service("ns1", "svc1", "172.30.1.1").port("p80", 80, "TCP");
    let both = || fe("172.30.1.1", 80, TCP).eps(&["10.0.1.1:8080", "10.0.1.2:8080"]);
    check(vec![
        Case {
            name: "serviceport.go newBaseServiceInfo/sessionAffinity ClientIP: stickyMaxAgeSeconds is clientIP.timeoutSeconds",
            node: node(NODE),
            services: vec![svc().client_ip_affinity(Some(60)).build()],
            slices: vec![two_endpoints()],
            want: vec![both().affinity(60)],
            problems: vec![],
        },
        Case {
            // The API server defaults timeoutSeconds to 10800 (3h); without it kproxy uses
            // the same default.
            name: "serviceport.go newBaseServiceInfo/sessionAffinity ClientIP with the default timeout",
            node: node(NODE),
            services: vec![svc().client_ip_affinity(None).build()],
            slices: vec![two_endpoints()],
            want: vec![both().affinity(10800)],
            problems: vec![],
        },
        Case {
            name: "serviceport.go newBaseServiceInfo/sessionAffinity None: no stickiness",
            node: node(NODE),
            services: vec![svc().build()],
            slices: vec![two_endpoints()],
            want: vec![both()],
            problems: vec![],
        },
        Case {
            name: "serviceport.go newBaseServiceInfo/port and protocol key the service port; targetPort is not the DNAT port",
            node: node(NODE),
            services: vec![
                service("ns1", "svc1", "172.30.1.1")
                    .port("p80", 80, "TCP")
                    .target_port(9999)
                    .port("p80-udp", 80, "UDP")
                    .build(),
            ],
            slices: vec![
                slice("ns1", "svc1-1", "svc1")
                    .port("p80", 8080, "TCP")
                    .port("p80-udp", 8081, "UDP")
                    .endpoint("10.0.1.1", None)
                    .build(),
            ],
            want: vec![
                fe("172.30.1.1", 80, TCP).eps(&["10.0.1.1:8080"]),
                fe("172.30.1.1", 80, UDP).eps(&["10.0.1.1:8081"]),
            ],
            problems: vec![],
        },
        Case {
            name: "serviceport.go newBaseServiceInfo/clusterIP is parsed with ParseIPSloppy",
            node: node(NODE),
            services: vec![
                service("ns1", "svc1", "172.030.001.001")
                    .port("p80", 80, "TCP")
                    .build(),
            ],
            slices: vec![two_endpoints()],
            want: vec![both()],
            problems: vec![],
        },
        Case {
            name: "serviceport.go InternalPolicyLocal/internalTrafficPolicy Local: ClusterIP traffic to local endpoints only",
            node: node(NODE),
            services: vec![svc().internal_traffic_policy("Local").build()],
            slices: vec![two_endpoints()],
            want: vec![fe("172.30.1.1", 80, TCP).eps(&["10.0.1.1:8080"]).drop()],
            problems: vec![],
        },
        Case {
            name: "serviceport.go InternalPolicyLocal/internalTrafficPolicy Cluster is the default",
            node: node(NODE),
            services: vec![svc().internal_traffic_policy("Cluster").build()],
            slices: vec![two_endpoints()],
            want: vec![both()],
            problems: vec![],
        },
        Case {
            // UsesClusterEndpoints is true (externally accessible), but the ClusterIP still
            // takes the Local endpoints.
            name: "serviceport.go UsesClusterEndpoints/iTP Local on a NodePort service: ClusterIP still local only",
            node: node(NODE),
            services: vec![
                svc()
                    .type_("NodePort")
                    .node_port(30080)
                    .internal_traffic_policy("Local")
                    .build(),
            ],
            slices: vec![two_endpoints()],
            want: vec![
                fe("172.30.1.1", 80, TCP).eps(&["10.0.1.1:8080"]).drop(),
                // External traffic follows the external policy, Cluster.
                np(30080, TCP).eps(&["10.0.1.1:8080", "10.0.1.2:8080"]),
            ],
            problems: vec![],
        },
        Case {
            name: "serviceport.go ExternalPolicyLocal/externalTrafficPolicy Local does not apply to ClusterIP traffic",
            node: node(NODE),
            services: vec![
                svc()
                    .type_("LoadBalancer")
                    .node_port(30080)
                    .external_traffic_policy("Local")
                    .health_check_node_port(30000)
                    .load_balancer_ingress(&["1.2.3.4"])
                    .build(),
            ],
            slices: vec![two_endpoints()],
            want: vec![
                both(),
                // External clients: this node's endpoints; this node's clients: all.
                lb("1.2.3.4", 80, TCP)
                    .eps(&["10.0.1.1:8080"])
                    .drop()
                    .local(),
                lb("1.2.3.4", 80, TCP)
                    .internal()
                    .eps(&["10.0.1.1:8080", "10.0.1.2:8080"]),
                np(30080, TCP).eps(&["10.0.1.1:8080"]).drop().local(),
                np(30080, TCP)
                    .internal()
                    .eps(&["10.0.1.1:8080", "10.0.1.2:8080"]),
            ],
            problems: vec![],
        },
    ]);
}

/// What `newBaseServiceInfo` takes for traffic from outside the cluster, and how
/// pkg/api/v1/service/util.go (`ExternallyAccessible`, `ExternalPolicyLocal`) and the
/// proxiers' external rules apply it.
#[test]
#[expect(clippy::too_many_lines, reason = "one table of cases")]
fn external_service_info() {
    let svc = || service("ns1", "svc1", "172.30.1.1").port("p80", 80, "TCP");
    let both = || fe("172.30.1.1", 80, TCP).eps(&["10.0.1.1:8080", "10.0.1.2:8080"]);
    let all = ["10.0.1.1:8080", "10.0.1.2:8080"];
    let here = ["10.0.1.1:8080"];
    check(vec![
        Case {
            name: "util.go ExternallyAccessible/a ClusterIP Service with externalIPs is externally accessible: eTP Local applies to them",
            node: node(NODE),
            services: vec![
                svc()
                    .external_ips(&["192.168.99.11"])
                    .external_traffic_policy("Local")
                    .build(),
            ],
            slices: vec![two_endpoints()],
            want: vec![
                both(),
                ext("192.168.99.11", 80, TCP).eps(&here).drop().local(),
                ext("192.168.99.11", 80, TCP).internal().eps(&all),
            ],
            problems: vec![],
        },
        Case {
            name: "util.go ExternalPolicyLocal/eTP Local on a NodePort Service applies to its NodePort only, not its ClusterIP",
            node: node(NODE),
            services: vec![
                svc()
                    .type_("NodePort")
                    .node_port(30080)
                    .external_traffic_policy("Local")
                    .build(),
            ],
            slices: vec![two_endpoints()],
            want: vec![
                both(),
                np(30080, TCP).eps(&here).drop().local(),
                np(30080, TCP).internal().eps(&all),
            ],
            problems: vec![],
        },
        Case {
            name: "serviceport.go newBaseServiceInfo/only VIP-mode load-balancer ingresses are captured (ipMode unset or VIP; Proxy and hostname-only ones are not)",
            node: node(NODE),
            services: vec![
                svc()
                    .type_("LoadBalancer")
                    .load_balancer_ingress_with(&[
                        (Some("1.2.3.4"), None, None),
                        (Some("5.6.7.8"), None, Some("VIP")),
                        (Some("9.10.11.12"), None, Some("Proxy")),
                        (None, Some("lb.example.com"), None),
                    ])
                    .allocate_load_balancer_node_ports(false)
                    .build(),
            ],
            slices: vec![two_endpoints()],
            // allocateLoadBalancerNodePorts: false: no nodePort, no NodePort frontend.
            want: vec![
                both(),
                lb("1.2.3.4", 80, TCP).eps(&all),
                lb("5.6.7.8", 80, TCP).eps(&all),
            ],
            problems: vec![],
        },
        Case {
            name: "serviceport.go newBaseServiceInfo/externalIPs, load-balancer IPs and source ranges are filtered to each family",
            node: node(NODE),
            services: vec![
                svc()
                    .cluster_ips(&["172.30.1.1", "fd00:172:30::1"])
                    .type_("LoadBalancer")
                    .external_ips(&["192.168.99.11", "2001:db8::11"])
                    .load_balancer_ingress(&["1.2.3.4", "2001:db8::1:4"])
                    .load_balancer_source_ranges(&["203.0.113.0/25", "2001:db8:1::/48"])
                    .build(),
            ],
            slices: vec![
                two_endpoints(),
                slice("ns1", "svc1-2", "svc1")
                    .address_type("IPv6")
                    .port("p80", 8080, "TCP")
                    .endpoint("fd00:10::1", None)
                    .build(),
            ],
            want: vec![
                both(),
                ext("192.168.99.11", 80, TCP).eps(&all),
                lb("1.2.3.4", 80, TCP).eps(&all).ranges(&["203.0.113.0/25"]),
                fe("fd00:172:30::1", 80, TCP).eps(&["[fd00:10::1]:8080"]),
                ext("2001:db8::11", 80, TCP).eps(&["[fd00:10::1]:8080"]),
                lb("2001:db8::1:4", 80, TCP)
                    .eps(&["[fd00:10::1]:8080"])
                    .ranges(&["2001:db8:1::/48"]),
            ],
            problems: vec![],
        },
        Case {
            name: "serviceport.go newBaseServiceInfo/source ranges of the other family only: this family is not restricted",
            node: node(NODE),
            services: vec![
                svc()
                    .type_("LoadBalancer")
                    .load_balancer_ingress(&["1.2.3.4"])
                    .load_balancer_source_ranges(&["2001:db8:1::/48"])
                    .build(),
            ],
            slices: vec![two_endpoints()],
            want: vec![both(), lb("1.2.3.4", 80, TCP).eps(&all)],
            problems: vec![],
        },
        Case {
            name: "serviceport.go newBaseServiceInfo/loadBalancerSourceRanges are trimmed and read sloppily (leading zeros)",
            node: node(NODE),
            services: vec![
                svc()
                    .type_("LoadBalancer")
                    .load_balancer_ingress(&["1.2.3.4"])
                    .load_balancer_source_ranges(&[" 203.0.113.000/025 ", "10.1.2.3/24"])
                    .build(),
            ],
            slices: vec![two_endpoints()],
            want: vec![
                both(),
                lb("1.2.3.4", 80, TCP)
                    .eps(&all)
                    .ranges(&["203.0.113.0/25", "10.1.2.0/24"]),
            ],
            problems: vec![],
        },
        Case {
            // Source ranges do not restrict the NodePort or external IPs of the Service.
            name: "iptables/proxier.go allowFromNode/a source range holding the node's IP also admits the load-balancer IPs as sources",
            node: node_with_ip(NODE, "192.168.0.2"),
            services: vec![
                svc()
                    .type_("LoadBalancer")
                    .node_port(30080)
                    .external_ips(&["192.168.99.11"])
                    .load_balancer_ingress(&["1.2.3.4", "5.6.7.8"])
                    .load_balancer_source_ranges(&["192.168.0.0/24", "203.0.113.0/25"])
                    .build(),
            ],
            slices: vec![two_endpoints()],
            want: vec![
                both(),
                ext("192.168.99.11", 80, TCP).eps(&all),
                lb("1.2.3.4", 80, TCP).eps(&all).ranges(&[
                    "192.168.0.0/24",
                    "203.0.113.0/25",
                    "1.2.3.4",
                    "5.6.7.8",
                ]),
                lb("5.6.7.8", 80, TCP).eps(&all).ranges(&[
                    "192.168.0.0/24",
                    "203.0.113.0/25",
                    "1.2.3.4",
                    "5.6.7.8",
                ]),
                np(30080, TCP).eps(&all),
            ],
            problems: vec![],
        },
        Case {
            name: "iptables/proxier.go allowFromNode/no range holds the node's IP: only the ranges",
            node: node_with_ip(NODE, "192.168.0.2"),
            services: vec![
                svc()
                    .type_("LoadBalancer")
                    .load_balancer_ingress(&["1.2.3.4"])
                    .load_balancer_source_ranges(&["203.0.113.0/25"])
                    .build(),
            ],
            slices: vec![two_endpoints()],
            want: vec![
                both(),
                lb("1.2.3.4", 80, TCP).eps(&all).ranges(&["203.0.113.0/25"]),
            ],
            problems: vec![],
        },
        Case {
            // Without a node IP kube-proxy uses 127.0.0.1 as its node IP.
            name: "iptables/proxier.go allowFromNode/unknown node IP: 0.0.0.0/0 holds the loopback node IP",
            node: node(NODE),
            services: vec![
                svc()
                    .type_("LoadBalancer")
                    .load_balancer_ingress(&["1.2.3.4"])
                    .load_balancer_source_ranges(&["0.0.0.0/0"])
                    .external_traffic_policy("Local")
                    .health_check_node_port(30000)
                    .build(),
            ],
            slices: vec![two_endpoints()],
            want: vec![
                both(),
                lb("1.2.3.4", 80, TCP)
                    .eps(&here)
                    .drop()
                    .local()
                    .ranges(&["0.0.0.0/0", "1.2.3.4"]),
                // The firewall applies to the node's own clients too.
                lb("1.2.3.4", 80, TCP)
                    .internal()
                    .eps(&all)
                    .ranges(&["0.0.0.0/0", "1.2.3.4"]),
            ],
            problems: vec![],
        },
        Case {
            // kube-proxy's rules match the cluster IP first, then external IPs, then
            // load-balancer IPs: an address listed twice is captured by the first.
            name: "iptables/proxier.go syncProxyRules/one address as cluster IP, external IP and load-balancer IP: the first rule wins",
            node: node(NODE),
            services: vec![
                svc()
                    .type_("LoadBalancer")
                    .external_ips(&["172.30.1.1", "1.2.3.4"])
                    .load_balancer_ingress(&["1.2.3.4", "5.6.7.8"])
                    .load_balancer_source_ranges(&["203.0.113.0/25"])
                    .build(),
            ],
            slices: vec![two_endpoints()],
            want: vec![
                both(),
                ext("1.2.3.4", 80, TCP).eps(&all),
                lb("5.6.7.8", 80, TCP).eps(&all).ranges(&["203.0.113.0/25"]),
            ],
            problems: vec![],
        },
    ]);
}
