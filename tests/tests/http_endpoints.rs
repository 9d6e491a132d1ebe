//! The agent's HTTP endpoints as an operator's probes and Prometheus see them: `/healthz`,
//! `/readyz` and `/metrics`, on kube-proxy's ports, movable and switchable off.

mod support;

use std::{io::ErrorKind, net::SocketAddr, time::Duration};

use kproxy_testbed::{TopologyOptions, require_privileges, topology::vip};
use serde_json::json;
use support::{
    agent::{Agent, Bed, TCP_PORT, wait_until},
    http::{get, sample},
    objects::{Ep, list, service, slice},
};

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

/// An RFC 3339 timestamp `seconds` before now, as the EndpointSlice controller writes it.
fn rfc3339_ago(seconds: i64) -> String {
    use k8s_openapi::chrono::{SecondsFormat, TimeDelta, Utc};
    (Utc::now() - TimeDelta::seconds(seconds)).to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[test]
fn health_readiness_and_metrics_are_served() {
    if !require_privileges("health_readiness_and_metrics_are_served") {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    let b = bed.backends();
    let mut web_slice = slice(
        "web-1",
        "web",
        TCP_PORT,
        &[Ep::ready(b[0]), Ep::ready(b[1])],
    );
    web_slice["metadata"]["annotations"] = json!({
        "endpoints.kubernetes.io/last-change-trigger-time": rfc3339_ago(3),
    });
    bed.write(
        "apps.json",
        &list(&[service("web", vip(10), &json!({})), web_slice]),
    );
    let _agent = Agent::start(&bed, &[]);
    let node = &bed.topo.node;

    let (status, body) = get(node, addr("127.0.0.1:10256"), "/healthz").expect("/healthz");
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).expect("JSON health report");
    assert!(health["lastUpdated"].is_string(), "{health}");
    let (status, _) = get(node, addr("127.0.0.1:10256"), "/readyz").expect("/readyz");
    assert_eq!(status, 200, "ready after the first sync");

    let (status, metrics) = get(node, addr("127.0.0.1:10249"), "/metrics").expect("/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        sample(&metrics, "kproxy_services_programmed"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "kproxy_endpoints_programmed"), Some(2.0));
    assert!(sample(&metrics, "kproxy_syncs_total").is_some_and(|n| n >= 1.0));
    assert!(sample(&metrics, "kproxy_sync_duration_seconds_count").is_some_and(|n| n >= 1.0));
    // Programmed about three seconds after the (pretended) change that triggered it.
    let count = sample(
        &metrics,
        "kproxy_network_programming_duration_seconds_count",
    );
    let sum = sample(&metrics, "kproxy_network_programming_duration_seconds_sum");
    assert_eq!(count, Some(1.0), "{metrics}");
    assert!(
        sum.is_some_and(|s| (2.0..10.0).contains(&s)),
        "latency {sum:?} s"
    );

    // A bad object is counted by kind, and the rest keeps working.
    bed.write(
        "broken.yaml",
        "apiVersion: v1\nkind: Service\nspec: [not, a, map]\n",
    );
    let metrics = wait_until(
        "the parse problem in the metrics",
        Duration::from_secs(3),
        || {
            let (_, m) = get(node, addr("127.0.0.1:10249"), "/metrics").ok()?;
            sample(&m, r#"kproxy_current_problems{kind="parse"}"#).map(|_| m)
        },
    );
    assert_eq!(sample(&metrics, "kproxy_services_programmed"), Some(1.0));
}

#[test]
fn endpoints_move_and_switch_off_with_their_flags() {
    if !require_privileges("endpoints_move_and_switch_off_with_their_flags") {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    bed.write("apps.json", &list(&[service("web", vip(10), &json!({}))]));
    let _agent = Agent::start(
        &bed,
        &[
            "--healthz-bind-address",
            "127.0.0.1:20256",
            "--metrics-bind-address",
            "",
        ],
    );
    let node = &bed.topo.node;
    let (status, _) = get(node, addr("127.0.0.1:20256"), "/readyz").expect("moved /readyz");
    assert_eq!(status, 200);
    let (status, _) = get(node, addr("127.0.0.1:20256"), "/livez").expect("/livez");
    assert_eq!(status, 200);
    for off in ["127.0.0.1:10256", "127.0.0.1:10249"] {
        let err = get(node, addr(off), "/metrics").expect_err("nothing listens there");
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{off}: {err}");
    }
}
