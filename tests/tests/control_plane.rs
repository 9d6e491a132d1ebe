//! kproxy against the real Kubernetes control plane (etcd, kube-apiserver with TLS, RBAC and
//! the Node authorizer, kube-controller-manager's EndpointSlice controllers): Services created
//! as a user creates them, pods marked Ready and terminating as a kubelet would, the
//! EndpointSlices written by the real controller, kproxy reading them with its own service
//! account's token, and real connections through the datapath.

mod support;

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::{Duration, Instant},
};

use kproxy_testbed::{TopologyOptions, require_privileges, tcp_request};
use serde_json::{Value, json};
use support::{
    agent::wait_until,
    cluster::{ClusterBed, NODE, ZONE, node, service},
    http::get,
};

/// From a pod's status change to the datapath: the controller, the watch and kproxy. They
/// take milliseconds; the margin is for a loaded two-core machine.
const FOLLOW: Duration = Duration::from_secs(10);
const HEALTH_ADDR: &str = "127.0.0.1:10256";
/// The `kubernetes` Service: the first address of the Service range, to the API server.
const KUBERNETES_FRONTEND: &str = "198.19.0.1:443/TCP";

/// Waits until `frontend` has exactly `backends` and returns how long that took.
fn follows(cluster: &ClusterBed, frontend: &str, backends: &[Ipv4Addr]) -> Duration {
    cluster.wait_for_backends(frontend, &ClusterBed::at(backends), FOLLOW)
}

/// A connection to `vip:80` from the client is served by one of `backends`.
fn served_by(cluster: &ClusterBed, vip: Ipv4Addr, backends: &[Ipv4Addr]) {
    let reply = tcp_request(
        &cluster.topo.client,
        SocketAddrV4::new(vip, 80),
        Duration::from_secs(2),
    )
    .unwrap_or_else(|e| panic!("connecting to {vip}:80: {e}"));
    assert!(
        backends.contains(reply.backend.ip()),
        "served by {reply:?}, expected one of {backends:?}"
    );
}

#[test]
fn a_deployment_scales_and_rolls_and_the_datapath_follows() {
    if !require_privileges("a_deployment_scales_and_rolls_and_the_datapath_follows") {
        return;
    }
    let cluster = ClusterBed::new(TopologyOptions {
        backends: 6,
        ..TopologyOptions::default()
    });
    let _agent = cluster.start_agent(&[]);
    let b = cluster.backends();
    let app = json!({"app": "web"});
    cluster.apply(&service("web", &app, &json!({})));
    let vip = cluster.cluster_ip("web");
    let frontend = format!("{vip}:80/TCP");
    let mut slowest = Duration::ZERO;
    let mut step = |what: &str, backends: &[Ipv4Addr]| {
        let took = follows(&cluster, &frontend, backends);
        eprintln!("{what}: the datapath followed in {took:?}");
        slowest = slowest.max(took);
        if !backends.is_empty() {
            served_by(&cluster, vip, backends);
        }
    };

    // Version 1: three replicas.
    let v1 = |i: usize| format!("web-v1-{i}");
    for (i, addr) in b[..3].iter().enumerate() {
        cluster.ready_pod(&v1(i), &app, *addr);
    }
    step("3 replicas ready", &b[..3]);

    // Scaled down to two: the pod terminates (its endpoint is terminating, still serving,
    // so not chosen while others are ready), then the kubelet confirms it stopped.
    cluster.delete_pod(&v1(2), false);
    step("one replica terminating", &b[..2]);
    cluster.delete_pod(&v1(2), true);
    step("and gone", &b[..2]);

    // Scaled up again; a new pod is not Ready at first (its readiness probe has not passed).
    cluster
        .plane
        .apply(&kproxy_testbed::kubernetes::objects::pod(
            "default",
            &v1(2),
            &app,
            NODE,
        ))
        .expect("pod");
    cluster.set_ready(&v1(2), b[2], false);
    step("a new replica not ready yet", &b[..2]);
    cluster.set_ready(&v1(2), b[2], true);
    step("and ready", &b[..3]);

    // A rolling update to version 2 (backends 3..6), one pod at a time: surge one, then
    // retire one.
    let v2 = |i: usize| format!("web-v2-{i}");
    for i in 0..3 {
        cluster.ready_pod(&v2(i), &app, b[3 + i]);
        let mut now: Vec<Ipv4Addr> = b[i..3].to_vec();
        now.extend(&b[3..=3 + i]);
        step(&format!("v2 pod {i} ready"), &now);
        cluster.delete_pod(&v1(i), false);
        now.retain(|a| *a != b[i]);
        step(&format!("v1 pod {i} terminating"), &now);
        cluster.delete_pod(&v1(i), true);
        step(&format!("v1 pod {i} gone"), &now);
    }

    // Scaled to zero: every endpoint terminating but still serving, which kube-proxy falls
    // back to (connections keep working while the pods drain)...
    for i in 0..3 {
        cluster.delete_pod(&v2(i), false);
    }
    step("all replicas terminating, still serving", &b[3..]);
    // ...until their readiness fails: nothing serves.
    for i in 0..3 {
        cluster.set_ready(&v2(i), b[3 + i], false);
    }
    step("no replica serving", &[]);
    assert!(
        slowest < FOLLOW,
        "the datapath followed every step (slowest {slowest:?})"
    );
}

#[test]
fn healthz_fails_while_the_node_is_leaving() {
    if !require_privileges("healthz_fails_while_the_node_is_leaving") {
        return;
    }
    let cluster = ClusterBed::new(TopologyOptions::default());
    let _agent = cluster.start_agent(&[]);
    let addr: SocketAddr = HEALTH_ADDR.parse().expect("address");
    let health = |path: &str| get(&cluster.topo.node, addr, path).expect("health endpoint");
    let wait_health = |what: &str, want: u16, eligible: bool| {
        wait_until(what, FOLLOW, || {
            let (status, body) = health("/healthz");
            let parsed: Value = serde_json::from_str(&body).ok()?;
            (status == want && parsed["nodeEligible"] == json!(eligible)).then_some(())
        });
        let (live, _) = health("/livez");
        assert_eq!(live, 200, "{what}: /livez does not look at the node");
    };
    wait_health("healthy on a plain node", 200, true);

    // The Cluster Autoscaler's taint before it deletes a node.
    let tainted = json!({"spec": {"taints": [
        {"key": "ToBeDeletedByClusterAutoscaler", "value": "1700000000", "effect": "NoSchedule"},
    ]}});
    cluster.apply(&node(NODE, ZONE, &tainted));
    wait_health("503 once tainted for deletion", 503, false);
    cluster.apply(&node(NODE, ZONE, &json!({})));
    wait_health("healthy once the taint is gone", 200, true);

    // Being deleted (a finalizer holds the object with its deletionTimestamp).
    let held = json!({"metadata": {"finalizers": ["kproxy.test/hold"]}});
    cluster.apply(&node(NODE, ZONE, &held));
    cluster
        .plane
        .delete("v1", "Node", None, NODE, None)
        .expect("deleting the node");
    wait_health("503 while the node is being deleted", 503, false);
    // Let the node go, so the control plane shuts down clean.
    cluster.apply(&node(NODE, ZONE, &json!({"metadata": {"finalizers": []}})));
}

#[test]
fn a_service_changes_type_and_its_frontends_follow() {
    if !require_privileges("a_service_changes_type_and_its_frontends_follow") {
        return;
    }
    let cluster = ClusterBed::new(TopologyOptions::default());
    let _agent = cluster.start_agent(&[]);
    let b = cluster.backends();
    let app = json!({"app": "web"});
    cluster.apply(&service("web", &app, &json!({})));
    for (i, addr) in b.iter().enumerate() {
        cluster.ready_pod(&format!("web-{i}"), &app, *addr);
    }
    let vip = cluster.cluster_ip("web");
    follows(&cluster, &format!("{vip}:80/TCP"), &b);
    let frontends = || -> Vec<String> {
        let mut names: Vec<String> = cluster
            .view()
            .map(|v| v.services.into_iter().map(|s| s.frontend).collect())
            .unwrap_or_default();
        names.retain(|n| n != KUBERNETES_FRONTEND);
        names.sort();
        names
    };
    let wait_frontends = |what: &str, want: &dyn Fn(&[String]) -> bool| {
        let started = Instant::now();
        wait_until(what, FOLLOW, || want(&frontends()).then_some(()));
        eprintln!("{what}: {:?}", started.elapsed());
    };

    // NodePort: the API server allocates the port; the ClusterIP stays.
    cluster.apply(&service("web", &app, &json!({"type": "NodePort"})));
    let node_port = wait_until("a nodePort", FOLLOW, || {
        let svc = cluster
            .plane
            .get("v1", "Service", Some("default"), "web")
            .ok()??;
        svc["spec"]["ports"][0]["nodePort"].as_u64()
    });
    let node_port_frontend = format!("*:{node_port}/TCP");
    wait_frontends("NodePort frontend added", &|f| {
        f.contains(&node_port_frontend) && f.contains(&format!("{vip}:80/TCP"))
    });

    // LoadBalancer: a cloud controller would write the ingress address to the status.
    let lb_ip = "198.18.100.10";
    cluster.apply(&service("web", &app, &json!({"type": "LoadBalancer"})));
    cluster
        .plane
        .apply_status(&json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "default"},
            "status": {"loadBalancer": {"ingress": [{"ip": lb_ip}]}},
        }))
        .expect("load-balancer status");
    wait_frontends("load-balancer frontend added", &|f| {
        f.contains(&format!("{lb_ip}:80/TCP")) && f.contains(&node_port_frontend)
    });

    // Back to ClusterIP: the NodePort and the load-balancer address go.
    cluster.apply(&service("web", &app, &json!({"type": "ClusterIP"})));
    wait_frontends("back to the ClusterIP alone", &|f| {
        f == [format!("{vip}:80/TCP")]
    });
    served_by(&cluster, vip, &b);
}
