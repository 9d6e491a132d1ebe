//! kproxy against the real Kubernetes control plane (etcd, kube-apiserver with TLS, RBAC and
//! the Node authorizer, kube-controller-manager's EndpointSlice controllers): Services created
//! as a user creates them, pods marked Ready and terminating as a kubelet would, the
//! EndpointSlices written by the real controller, kproxy reading them with its own service
//! account's token, and real connections through the datapath.

mod support;

use std::time::Duration;

use kproxy_testbed::{TopologyOptions, require_privileges, tcp_request};
use serde_json::json;
use support::cluster::{ClusterBed, service};

/// From a pod's status change to the datapath: the controller, the watch and kproxy.
const FOLLOW: Duration = Duration::from_secs(10);

#[test]
fn pods_become_backends_through_the_real_endpointslice_controller() {
    if !require_privileges("pods_become_backends_through_the_real_endpointslice_controller") {
        return;
    }
    let cluster = ClusterBed::new(TopologyOptions::default());
    let _agent = cluster.start_agent(&[]);
    let b = cluster.backends();
    let app = json!({"app": "web"});
    cluster.apply(&service("web", &app, &json!({})));
    let vip = cluster.cluster_ip("web");
    let frontend = format!("{vip}:80/TCP");
    for (i, addr) in b.iter().enumerate() {
        cluster.ready_pod(&format!("web-{i}"), &app, *addr);
    }
    let took = cluster.wait_for_backends(&frontend, &ClusterBed::at(&b), FOLLOW);
    eprintln!("three ready pods reached the datapath in {took:?}");
    let reply = tcp_request(
        &cluster.topo.client,
        std::net::SocketAddrV4::new(vip, 80),
        Duration::from_secs(2),
    )
    .expect("a connection to the ClusterIP");
    assert!(b.contains(reply.backend.ip()), "served by {reply:?}");
}
