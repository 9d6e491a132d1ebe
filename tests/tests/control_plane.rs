//! kproxy against the real Kubernetes control plane (etcd, kube-apiserver with TLS, RBAC and
//! the Node authorizer, kube-controller-manager's EndpointSlice controllers): Services created
//! as a user creates them, pods marked Ready and terminating as a kubelet would, the
//! EndpointSlices written by the real controller, kproxy reading them with its own service
//! account's token, and real connections through the datapath.

mod support;

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::atomic::{AtomicBool, Ordering},
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

    // The steps were measured twice: end to end from the controller's trigger time (the
    // Ready condition's transition: deletions do not move it), and kproxy's own part from
    // the event's arrival, which is a part of the whole.
    let mean = |name: &str| {
        let count = metric(&cluster, &format!("{name}_count"));
        assert!(count >= 5.0, "{name}: {count} observations of 16 steps");
        metric(&cluster, &format!("{name}_sum")) / count
    };
    let end_to_end = mean("kproxy_network_programming_duration_seconds");
    let own = mean("kproxy_event_to_datapath_seconds");
    eprintln!("network programming: {end_to_end:.4} s on average, kproxy's part {own:.4} s");
    assert!(own <= end_to_end, "{own} s of {end_to_end} s");
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

    // ExternalName: a DNS alias, no proxying (the API server releases the ClusterIP).
    cluster.apply(&json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"type": "ExternalName", "externalName": "web.example.invalid"},
    }));
    wait_frontends("ExternalName: no frontend", &|f| f.is_empty());
    // And back: a new ClusterIP, served again.
    cluster.apply(&service("web", &app, &json!({"type": "ClusterIP"})));
    let vip = cluster.cluster_ip("web");
    wait_frontends("a ClusterIP again", &|f| f == [format!("{vip}:80/TCP")]);
    served_by(&cluster, vip, &b);
}

/// Raises the flag when dropped, also while unwinding.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// kproxy's user as the API server sees it.
const KPROXY_USER: &str = "system:serviceaccount:kube-system:kproxy";

/// `(verb, resource)` of kproxy's audited requests received at or after `since` (RFC 3339).
fn kproxy_requests(cluster: &ClusterBed, since: &str) -> Vec<(String, String)> {
    cluster
        .plane
        .audit_events(KPROXY_USER)
        .expect("audit log")
        .iter()
        .filter(|e| e["requestReceivedTimestamp"].as_str() >= Some(since))
        .map(|e| {
            (
                e["verb"].as_str().unwrap_or("").to_owned(),
                e["objectRef"]["resource"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn rfc3339_now() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S.%6NZ"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// One sample of kproxy's `/metrics`, which must be there.
fn metric(cluster: &ClusterBed, name: &str) -> f64 {
    cluster
        .metric(name)
        .unwrap_or_else(|| panic!("{name} in kproxy's metrics"))
}

fn map_operations(cluster: &ClusterBed) -> f64 {
    metric(cluster, "kproxy_map_operations_total")
}

#[test]
#[expect(clippy::too_many_lines, reason = "one outage, step by step")]
fn the_api_server_restarts_and_etcd_compacts_while_traffic_flows() {
    if !require_privileges("the_api_server_restarts_and_etcd_compacts_while_traffic_flows") {
        return;
    }
    let cluster = ClusterBed::new(TopologyOptions::default());
    let agent = cluster.start_agent(&[]);
    let b = cluster.backends();
    // Thirty services on three shared pods (a full reprogram would write well over a
    // hundred entries), and a probe service whose change shows the watches resumed.
    let web = json!({"app": "web"});
    for i in 0..30 {
        cluster.apply(&service(&format!("web-{i}"), &web, &json!({})));
    }
    for (i, addr) in b.iter().enumerate() {
        cluster.ready_pod(&format!("web-{i}"), &web, *addr);
    }
    let probe = json!({"app": "probe"});
    cluster.apply(&service("probe", &probe, &json!({})));
    cluster.ready_pod("probe-0", &probe, b[0]);
    let probe_frontend = format!("{}:80/TCP", cluster.cluster_ip("probe"));
    follows(&cluster, &probe_frontend, &b[..1]);
    // The EndpointSlice controller converges service by service: wait for all of them, so
    // the outage below starts from a settled datapath.
    for i in 0..30 {
        let vip = cluster.cluster_ip(&format!("web-{i}"));
        follows(&cluster, &format!("{vip}:80/TCP"), &b);
    }
    let vip = cluster.cluster_ip("web-0");

    let stop = AtomicBool::new(false);
    let (served, failed) = std::thread::scope(|scope| {
        // A failing step below must still end the traffic thread, or the scope never ends.
        let stop_traffic = StopOnDrop(&stop);
        // Connections to a ClusterIP every 10 ms through the whole outage.
        let client = &cluster.topo.client;
        let traffic = scope.spawn(|| {
            let (mut served, mut failed) = (0_u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match tcp_request(client, SocketAddrV4::new(vip, 80), Duration::from_secs(1)) {
                    Ok(_) => served += 1,
                    Err(e) => failed.push(e.to_string()),
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (served, failed)
        });
        let ops_before = map_operations(&cluster);
        // Other writes move etcd's revision past the last event kproxy saw.
        for i in 0..5 {
            cluster.apply(&json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "unrelated", "namespace": "default"},
                "data": {"n": i.to_string()},
            }));
        }
        cluster
            .plane
            .stop_apiserver()
            .expect("stopping the API server");
        std::thread::sleep(Duration::from_secs(1));
        // The history kproxy's watches would resume from is compacted away: they get
        // `410 Gone` and must relist.
        let compacted = cluster
            .plane
            .compact_etcd(&cluster.bed.topo.node)
            .expect("compacting etcd");
        eprintln!("etcd compacted at revision {compacted}");
        let restarted = rfc3339_now();
        let node = &cluster.bed.topo.node;
        cluster
            .plane
            .start_apiserver(node)
            .expect("restarting the API server");
        let started = Instant::now();

        // A change after the restart reaches the datapath (the watches are back), and the
        // relist wrote only that change, not everything again.
        cluster.ready_pod("probe-1", &probe, b[1]);
        cluster.wait_for_backends(
            &probe_frontend,
            &ClusterBed::at(&b[..2]),
            Duration::from_mins(1),
        );
        eprintln!("watching again {:?} after the restart", started.elapsed());
        // Services and the Node last changed before the ConfigMap writes: their resource
        // versions are compacted away, the API server answers `410 Gone` and kproxy lists
        // them again. (The EndpointSlice watch usually resumes: the stopping API server
        // rewrote the `kubernetes` slice, moving that watch past the compaction.)
        wait_until(
            "services and the node relisted",
            Duration::from_mins(1),
            || {
                let log = agent.log_text();
                ["services", "nodes"]
                    .iter()
                    .all(|r| log.contains(&format!("watch recovered resource=\"{r}\"")))
                    .then_some(())
            },
        );
        let requests = kproxy_requests(&cluster, &restarted);
        for resource in ["services", "nodes"] {
            assert!(
                requests.contains(&("list".into(), resource.into())),
                "kproxy relisted {resource} after the compaction: {requests:?}"
            );
        }
        for resource in ["services", "endpointslices", "nodes"] {
            assert!(
                requests.contains(&("watch".into(), resource.into())),
                "kproxy watches {resource} again: {requests:?}"
            );
        }
        let ops = map_operations(&cluster) - ops_before;
        assert!(
            ops <= 10.0,
            "the relists wrote {ops} map entries: only the probe's new backend changed"
        );
        drop(stop_traffic);
        traffic.join().expect("traffic thread")
    });
    eprintln!(
        "{served} connections served during the outage, {} failed",
        failed.len()
    );
    assert!(served > 50, "traffic flowed: {served}");
    assert!(failed.is_empty(), "connections failed: {failed:?}");
    assert!(agent.log_text().contains(" ready"), "kproxy kept running");
}

/// Lists, whole and in pages. The first lists ask for resourceVersion 0, as client-go's
/// informers do: the API server answers each from its watch cache in one response, whatever
/// the limit, and the first view, served once every list is complete, holds every Service
/// with every endpoint. A relist (after `410 Gone`) is a consistent read, which the API
/// server pages: with `--api-list-page-size 3`, the eleven Services (the `kubernetes` one
/// besides ten of the test's) come in four pages (protobuf, each item handed on as its page
/// arrives), and the view is whole again after it.
#[test]
fn lists_longer_than_a_page_arrive_whole() {
    if !require_privileges("lists_longer_than_a_page_arrive_whole") {
        return;
    }
    let cluster = ClusterBed::new(TopologyOptions::default());
    let b = cluster.backends();
    let app = json!({"app": "paged"});
    let names: Vec<String> = (0..10).map(|i| format!("paged-{i}")).collect();
    for name in &names {
        cluster.apply(&service(name, &app, &json!({})));
    }
    for (i, addr) in b.iter().enumerate() {
        cluster.ready_pod(&format!("paged-{i}"), &app, *addr);
    }
    // Every slice complete before kproxy starts, so its first lists hold them.
    wait_until("the controller's slices", FOLLOW, || {
        let slices = cluster.slices("kubernetes.io/service-name");
        names
            .iter()
            .all(|name| {
                slices.iter().any(|s| {
                    s["metadata"]["labels"]["kubernetes.io/service-name"] == name.as_str()
                        && s["endpoints"].as_array().map_or(0, Vec::len) == b.len()
                })
            })
            .then_some(())
    });
    let started = rfc3339_now();
    let agent = cluster.start_agent(&["--api-list-page-size", "3"]);
    // Ready means the first view was complete and written: nothing to wait for.
    let view = cluster.view().expect("kproxy's view");
    let mut want: Vec<String> = ClusterBed::at(&b).iter().map(ToString::to_string).collect();
    want.sort();
    for name in &names {
        let frontend = format!("{}:80/TCP", cluster.cluster_ip(name));
        let service = view
            .services
            .iter()
            .find(|s| s.frontend == frontend)
            .unwrap_or_else(|| panic!("{name} ({frontend}) served at the start"));
        let mut got: Vec<String> = service.backends.iter().map(|b| b.address.clone()).collect();
        got.sort();
        assert_eq!(got, want, "{name}'s backends at the start");
    }
    served_by(&cluster, cluster.cluster_ip("paged-9"), &b);
    for resource in ["services", "endpointslices"] {
        let lists = kproxy_lists(&cluster, &started, resource);
        assert_eq!(lists.len(), 1, "{resource} listed whole: {lists:?}");
        assert!(
            lists[0].contains("resourceVersion=0"),
            "{resource} listed from the watch cache: {lists:?}"
        );
    }

    // A relist: other writes move etcd past the Services' last change, the API server
    // restarts with that history compacted away, and the Service watch gets `410 Gone`.
    for i in 0..5 {
        cluster.apply(&json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "unrelated", "namespace": "default"},
            "data": {"n": i.to_string()},
        }));
    }
    let plane = &cluster.plane;
    plane.stop_apiserver().expect("stopping the API server");
    plane
        .compact_etcd(&cluster.bed.topo.node)
        .expect("compacting etcd");
    let restarted = rfc3339_now();
    plane
        .start_apiserver(&cluster.bed.topo.node)
        .expect("restarting the API server");
    wait_until("the services relisted", Duration::from_mins(1), || {
        agent
            .log_text()
            .contains("watch recovered resource=\"services\"")
            .then_some(())
    });
    let pages = kproxy_lists(&cluster, &restarted, "services");
    assert!(
        pages.len() >= 4 && pages.iter().skip(1).all(|uri| uri.contains("continue=")),
        "services relisted in pages of 3: {pages:?}"
    );
    let view = cluster.view().expect("kproxy's view after the relist");
    for name in &names {
        let frontend = format!("{}:80/TCP", cluster.cluster_ip(name));
        assert!(
            view.services.iter().any(|s| s.frontend == frontend),
            "{name} ({frontend}) served after the relist"
        );
    }
    served_by(&cluster, cluster.cluster_ip("paged-0"), &b);
}

/// The URIs of kproxy's list requests of `resource` since `since`, in order.
fn kproxy_lists(cluster: &ClusterBed, since: &str, resource: &str) -> Vec<String> {
    cluster
        .plane
        .audit_events(KPROXY_USER)
        .expect("audit log")
        .iter()
        .filter(|e| {
            e["requestReceivedTimestamp"].as_str() >= Some(since)
                && e["verb"] == "list"
                && e["objectRef"]["resource"] == resource
        })
        .filter_map(|e| e["requestURI"].as_str().map(str::to_owned))
        .collect()
}
