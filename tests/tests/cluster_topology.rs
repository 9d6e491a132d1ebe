//! Topology-aware routing as the real EndpointSlice controller writes it: a second Node in
//! another zone, pods bound to either node, Services with `trafficDistribution`; the hints in
//! the slices are the controller's, and kproxy (on the node in zone-a) follows them the way
//! kube-proxy does, falling back to every endpoint when none is meant for it.

mod support;

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use kproxy_testbed::{TopologyOptions, require_privileges};
use serde_json::{Value, json};
use support::cluster::{ClusterBed, NODE, ZONE, node, service};

const FOLLOW: Duration = Duration::from_secs(10);
/// The other node: another machine of the cluster, in another zone.
const OTHER_NODE: &str = "node-b";
const OTHER_ZONE: &str = "zone-b";

fn pod_on(cluster: &ClusterBed, name: &str, labels: &Value, node: &str, ip: Ipv4Addr) {
    cluster
        .plane
        .ready_pod("default", name, labels, node, IpAddr::V4(ip))
        .unwrap_or_else(|e| panic!("pod {name}: {e:#}"));
}

/// The hints the controller wrote into `service`'s slices, per endpoint address.
fn hints(cluster: &ClusterBed, service: &str) -> Vec<(String, Value)> {
    let slices = cluster.slices(&format!("kubernetes.io/service-name={service}"));
    let mut hints: Vec<(String, Value)> = slices
        .iter()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .map(|e| {
            (
                e["addresses"][0].as_str().unwrap_or("").to_owned(),
                e["hints"].clone(),
            )
        })
        .collect();
    hints.sort_by(|a, b| a.0.cmp(&b.0));
    hints
}

#[test]
fn traffic_distribution_follows_the_controllers_hints() {
    if !require_privileges("traffic_distribution_follows_the_controllers_hints") {
        return;
    }
    let cluster = ClusterBed::new(TopologyOptions::default());
    cluster.apply(&node(OTHER_NODE, OTHER_ZONE, &json!({})));
    let _agent = cluster.start_agent(&[]);
    let b = cluster.backends();

    // PreferClose: one endpoint in this node's zone, two in the other.
    let web = json!({"app": "web"});
    cluster.apply(&service(
        "web",
        &web,
        &json!({"trafficDistribution": "PreferClose"}),
    ));
    pod_on(&cluster, "web-a", &web, NODE, b[0]);
    pod_on(&cluster, "web-b0", &web, OTHER_NODE, b[1]);
    pod_on(&cluster, "web-b1", &web, OTHER_NODE, b[2]);
    let web_frontend = format!("{}:80/TCP", cluster.cluster_ip("web"));
    cluster.wait_for_backends(&web_frontend, &ClusterBed::at(&b[..1]), FOLLOW);
    let zone = |z: &str| json!({"forZones": [{"name": z}]});
    assert_eq!(
        hints(&cluster, "web"),
        vec![
            (b[0].to_string(), zone(ZONE)),
            (b[1].to_string(), zone(OTHER_ZONE)),
            (b[2].to_string(), zone(OTHER_ZONE)),
        ],
        "the controller's hints"
    );

    // The zone's only endpoint fails its readiness probe: nothing is meant for this zone,
    // so every ready endpoint serves.
    cluster.set_ready("web-a", b[0], false);
    cluster.wait_for_backends(&web_frontend, &ClusterBed::at(&b[1..]), FOLLOW);
    cluster.set_ready("web-a", b[0], true);
    cluster.wait_for_backends(&web_frontend, &ClusterBed::at(&b[..1]), FOLLOW);

    // PreferSameNode: the endpoint on this node only, though another shares the zone.
    let local = json!({"app": "local"});
    cluster.apply(&service(
        "local",
        &local,
        &json!({"trafficDistribution": "PreferSameNode"}),
    ));
    pod_on(&cluster, "local-here", &local, NODE, b[0]);
    pod_on(&cluster, "local-there", &local, OTHER_NODE, b[1]);
    let local_frontend = format!("{}:80/TCP", cluster.cluster_ip("local"));
    cluster.wait_for_backends(&local_frontend, &ClusterBed::at(&b[..1]), FOLLOW);
    let for_node = hints(&cluster, "local");
    assert_eq!(
        for_node[0].1["forNodes"],
        json!([{"name": NODE}]),
        "{for_node:?}"
    );

    // Without trafficDistribution the hints go, and so does the preference.
    cluster.apply(&service("web", &web, &json!({})));
    cluster.wait_for_backends(&web_frontend, &ClusterBed::at(&b), FOLLOW);
    assert!(
        hints(&cluster, "web").iter().all(|(_, h)| h.is_null()),
        "hints removed: {:?}",
        hints(&cluster, "web")
    );
}
