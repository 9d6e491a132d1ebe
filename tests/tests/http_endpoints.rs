//! The agent's HTTP endpoints as an operator's probes and Prometheus see them: `/healthz`,
//! `/readyz` and `/metrics`, on kube-proxy's ports, movable and switchable off.

mod support;

use std::{
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use kproxy_testbed::{TopologyOptions, require_privileges, tcp_request, topology::vip};
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
    let _agent = Agent::start(&bed, &["--metrics-per-backend"]);
    let node = &bed.topo.node;

    let (status, body) = get(node, addr("127.0.0.1:10256"), "/healthz").expect("/healthz");
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).expect("JSON health report");
    assert!(health["lastUpdated"].is_string(), "{health}");
    let (status, _) = get(node, addr("127.0.0.1:10256"), "/readyz").expect("/readyz");
    assert_eq!(status, 200, "ready after the first sync");

    // One connection through the datapath, for its counters.
    let target = SocketAddrV4::new(vip(10), 80);
    tcp_request(&bed.topo.client, target, Duration::from_secs(2)).expect("a connection");
    let (status, metrics) = get(node, addr("127.0.0.1:10249"), "/metrics").expect("/metrics");
    assert_eq!(status, 200);
    // The datapath's own counters, summed over CPUs: the connection's translations, and
    // every drop reason at zero.
    let event = |name: &str| {
        sample(
            &metrics,
            &format!(r#"kproxy_datapath_events_total{{event="{name}"}}"#),
        )
    };
    assert_eq!(event("new_flows"), Some(1.0), "{metrics}");
    assert!(
        event("service_packets").is_some_and(|n| n >= 3.0),
        "SYN, request, ACKs"
    );
    assert!(event("reply_packets").is_some_and(|n| n >= 2.0));
    assert_eq!(
        sample(&metrics, r#"kproxy_datapath_drops_total{reason="no_port"}"#),
        Some(0.0)
    );
    // And per frontend, named after its Service.
    let web = format!(
        r#"{{namespace="default",name="web",port="http",protocol="TCP",frontend="{target}/TCP"}}"#
    );
    assert_eq!(
        sample(&metrics, &format!("kproxy_service_new_flows_total{web}")),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        sample(&metrics, &format!("kproxy_service_bytes_total{web}")).is_some_and(|b| b > 100.0)
    );
    per_backend_series(&metrics, target, &b[..2]);
    assert_eq!(
        sample(&metrics, "kproxy_services_programmed"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "kproxy_endpoints_programmed"), Some(2.0));
    assert_eq!(sample(&metrics, "kproxy_cluster_view_synced"), Some(1.0));
    map_fill(&metrics);
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
    kube_proxy_and_process_metrics(&metrics, sum);
    dashboard_queries_exist(&metrics);

    a_new_backends_series_appear(&bed, target);

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

/// A backend's series of `family` as an integer (`None`: no such series).
fn backend_sample(
    metrics: &str,
    family: &str,
    target: SocketAddrV4,
    backend: Ipv4Addr,
) -> Option<u64> {
    let series = format!(
        r#"{family}{{namespace="default",name="web",port="http",protocol="TCP",frontend="{target}/TCP",backend="{backend}:{TCP_PORT}"}} "#
    );
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
}

/// Per backend (`--metrics-per-backend`): the one connection's flow and packets on the
/// backend it got, nothing on the other.
fn per_backend_series(metrics: &str, target: SocketAddrV4, backends: &[Ipv4Addr]) {
    let of = |family: &str| -> Vec<u64> {
        backends
            .iter()
            .map(|b| backend_sample(metrics, family, target, *b).unwrap_or(u64::MAX))
            .collect()
    };
    let flows = of("kproxy_backend_new_flows_total");
    assert!(flows == [1, 0] || flows == [0, 1], "{flows:?}\n{metrics}");
    let used = usize::from(flows[1] == 1);
    let packets = of("kproxy_backend_packets_total");
    assert!(packets[used] >= 3 && packets[1 - used] == 0, "{packets:?}");
    assert!(of("kproxy_backend_bytes_total")[used] > 100);
}

/// An endpoint added to `web`: its series appear (names are rebuilt at most once a second).
fn a_new_backends_series_appear(bed: &Bed, target: SocketAddrV4) {
    let b = bed.backends();
    bed.write(
        "apps.json",
        &list(&[
            service("web", vip(10), &json!({})),
            slice(
                "web-1",
                "web",
                TCP_PORT,
                &[Ep::ready(b[0]), Ep::ready(b[1]), Ep::ready(b[2])],
            ),
        ]),
    );
    let node = &bed.topo.node;
    wait_until("the new backend's series", Duration::from_secs(3), || {
        let (_, m) = get(node, addr("127.0.0.1:10249"), "/metrics").ok()?;
        backend_sample(&m, "kproxy_backend_new_flows_total", target, b[2])
    });
}

/// Map fill against capacity: `web`'s one service port and two backends.
fn map_fill(metrics: &str) {
    let map = |metric: &str, name: &str| sample(metrics, &format!(r#"{metric}{{map="{name}"}}"#));
    assert_eq!(map("kproxy_map_entries", "KP_SERVICES"), Some(1.0));
    assert_eq!(map("kproxy_map_entries", "KP_BACKENDS"), Some(2.0));
    for name in [
        "KP_SERVICES",
        "KP_BACKENDS",
        "KP_SLOTS",
        "KP_CT_FWD",
        "KP_CT_REV",
        "KP_AFFINITY",
    ] {
        assert!(
            map("kproxy_map_capacity", name).is_some_and(|c| c >= 64.0),
            "{name}: {metrics}"
        );
    }
}

/// Every metric the Grafana dashboard in deploy/ queries is one the agent exports (a family
/// without series yet shows as its `# TYPE` line). This agent reads manifests, so it makes
/// no API requests: `rest_client_*` is checked against the real API server in
/// cluster_access.
fn dashboard_queries_exist(metrics: &str) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/kproxy-dashboard.json"
    );
    let text = std::fs::read_to_string(path).expect("the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "a dashboard worth the name");
    let mut checked = 0;
    for target in panels
        .iter()
        .flat_map(|p| p["targets"].as_array().expect("targets"))
    {
        let expr = target["expr"].as_str().expect("expr");
        let names = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|t| {
                ["kproxy_", "kubeproxy_", "process_"]
                    .iter()
                    .any(|p| t.starts_with(p))
            });
        for name in names {
            let family = name
                .strip_suffix("_bucket")
                .or_else(|| name.strip_suffix("_total"))
                .unwrap_or(name);
            let exported = metrics.lines().any(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                    || l.strip_prefix("# TYPE ")
                        .and_then(|rest| rest.strip_prefix(family))
                        .is_some_and(|rest| rest.starts_with(' '))
            });
            assert!(
                exported,
                "the dashboard queries {name} ({expr}), which /metrics lacks"
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "{checked} metric references checked");
}

/// kube-proxy's metrics under its names (`npl_sum`: kproxy's own network programming
/// latency sum, which kube-proxy's must equal), and the standard process metrics.
fn kube_proxy_and_process_metrics(metrics: &str, npl_sum: Option<f64>) {
    // The same under kube-proxy's names, for dashboards built on kube-proxy.
    let ipv4 = |name: &str| sample(metrics, &format!(r#"{name}{{ip_family="IPv4"}}"#));
    assert_eq!(
        ipv4("kubeproxy_network_programming_duration_seconds_sum"),
        npl_sum,
        "{metrics}"
    );
    assert!(ipv4("kubeproxy_sync_proxy_rules_duration_seconds_count").is_some_and(|n| n >= 1.0));
    assert!(
        ipv4("kubeproxy_sync_full_proxy_rules_duration_seconds_count").is_some_and(|n| n >= 1.0),
        "the first sync is a full one"
    );
    let unix_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    for stamp in [
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
        "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
    ] {
        let at = ipv4(stamp);
        assert!(
            at.is_some_and(|t| (unix_now - 60.0..=unix_now).contains(&t)),
            "{stamp}: {at:?}"
        );
    }
    assert!(
        sample(metrics, "kubeproxy_sync_proxy_rules_endpoint_changes_total")
            .is_some_and(|n| n >= 1.0)
    );
    assert!(
        sample(metrics, "kubeproxy_sync_proxy_rules_service_changes_total")
            .is_some_and(|n| n >= 1.0)
    );
    assert_eq!(
        sample(
            metrics,
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending"
        ),
        Some(0.0)
    );
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

/// kube-proxy's `--bind-address-hard-fail`: without it (its default) a taken metrics port
/// is logged and retried while the datapath and health are served; with it, the start fails.
#[test]
fn a_taken_port_is_retried_unless_bind_address_hard_fail() {
    if !require_privileges("a_taken_port_is_retried_unless_bind_address_hard_fail") {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    bed.write("apps.json", &list(&[service("web", vip(10), &json!({}))]));
    let node = &bed.topo.node;
    let metrics = addr("127.0.0.1:20249");
    let hold = || {
        node.run(move || std::net::TcpListener::bind(metrics))
            .expect("in the node namespace")
            .expect("holding the metrics port")
    };
    let args = [
        "--healthz-bind-address",
        "127.0.0.1:20256",
        "--metrics-bind-address",
        "127.0.0.1:20249",
    ];

    let holder = hold();
    let mut agent = Agent::start(&bed, &args);
    let log = agent.log_text();
    assert!(log.contains("cannot serve metrics yet"), "{log}");
    let (status, _) = get(node, addr("127.0.0.1:20256"), "/healthz").expect("health served");
    assert_eq!(status, 200);
    drop(holder);
    let status = wait_until(
        "metrics served once the port is free",
        Duration::from_secs(15),
        || {
            get(node, metrics, "/metrics")
                .ok()
                .map(|(status, _)| status)
        },
    );
    assert_eq!(status, 200);
    agent.assert_running();
    agent.stop();

    let _held = hold();
    let mut args = args.to_vec();
    args.push("--bind-address-hard-fail");
    let mut agent = Agent::spawn_starting(&bed, &args);
    let message = wait_until("kproxy stops", Duration::from_secs(10), || {
        agent.exit_message()
    });
    assert!(
        message.contains("binding the metrics address 127.0.0.1:20249")
            && message.contains("--bind-address-hard-fail"),
        "{message}"
    );
}

/// The file the real kube-proxy writes (`--write-config-to`, its defaults), edited as an
/// operator would, runs kproxy: `--config` reads kube-proxy's own format.
#[test]
fn kube_proxys_own_configuration_file_runs_the_agent() {
    if !require_privileges("kube_proxys_own_configuration_file_runs_the_agent") {
        return;
    }
    let bed = Bed::new(TopologyOptions::default());
    bed.write("apps.json", &list(&[service("web", vip(10), &json!({}))]));
    let written = bed.home.dir.path().join("kube-proxy-defaults.yaml");
    let kube_proxy = kproxy_testbed::kubernetes::program("kube-proxy").expect("kube-proxy built");
    let out = std::process::Command::new(kube_proxy)
        .arg(format!("--write-config-to={}", written.display()))
        .output()
        .expect("running kube-proxy");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&written).expect("kube-proxy's file");
    assert!(text.contains("healthzBindAddress: 0.0.0.0:10256"), "{text}");
    let edited = text
        .replace(
            "healthzBindAddress: 0.0.0.0:10256",
            "healthzBindAddress: 127.0.0.1:20356",
        )
        .replace(
            "metricsBindAddress: 127.0.0.1:10249",
            "metricsBindAddress: 127.0.0.1:20349",
        );
    let config = bed.home.dir.path().join("kube-proxy.yaml");
    std::fs::write(&config, edited).expect("writing");

    let agent = Agent::start(&bed, &["--config", &config.display().to_string()]);
    let log = agent.log_text();
    assert!(log.contains("mode ignored"), "the file's one note: {log}");
    let node = &bed.topo.node;
    let (status, _) = get(node, addr("127.0.0.1:20356"), "/readyz").expect("the file's address");
    assert_eq!(status, 200);
    let (status, body) = get(node, addr("127.0.0.1:20349"), "/metrics").expect("metrics");
    assert_eq!(status, 200);
    assert!(body.contains("kubeproxy_sync_proxy_rules_duration_seconds"));
    let err = get(node, addr("127.0.0.1:10256"), "/readyz").expect_err("not the default");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
}
