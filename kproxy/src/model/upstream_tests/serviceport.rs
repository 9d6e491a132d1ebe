//! pkg/proxy/serviceport.go: what `newBaseServiceInfo` takes from a Service port and how
//! `UsesClusterEndpoints`/`UsesLocalEndpoints` and the proxiers apply it to ClusterIP
//! traffic. serviceport.go has no test file of its own; each case names the function whose
//! behaviour it pins down.

use super::{Case, TCP, UDP, check, fe, node};
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
            want: vec![fe("172.30.1.1", 80, TCP).eps(&["10.0.1.1:8080"]).drop()],
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
            want: vec![both()],
            problems: vec![],
        },
    ]);
}
