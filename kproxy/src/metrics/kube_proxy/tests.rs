#![expect(
    clippy::float_cmp,
    reason = "the values compared are counts, whole seconds and bucket bounds: exact in f64"
)]

use std::time::{Duration, SystemTime};

use prometheus_client::registry::Registry;
use prometheus_parse::{Scrape, Value};

use super::{Changes, KubeProxyMetrics, network_programming_bounds};

/// The registry as `/metrics` serves it, parsed by a Prometheus text-format parser.
fn scrape(registry: &Registry) -> Scrape {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("encoding");
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("a scrape Prometheus parses")
}

/// The one sample named `name`, which must carry `ip_family="IPv4"` if `labelled`.
fn sample<'a>(scrape: &'a Scrape, name: &str, labelled: bool) -> &'a Value {
    let found: Vec<_> = scrape.samples.iter().filter(|s| s.metric == name).collect();
    assert_eq!(found.len(), 1, "{name}: {found:?}");
    if labelled {
        assert_eq!(found[0].labels.get("ip_family"), Some("IPv4"), "{name}");
    }
    &found[0].value
}

fn scalar(scrape: &Scrape, name: &str, labelled: bool) -> f64 {
    match sample(scrape, name, labelled) {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("{name} is not a scalar: {other:?}"),
    }
}

/// Upper bounds and cumulative counts of histogram `name`.
fn histogram(scrape: &Scrape, name: &str) -> Vec<(f64, f64)> {
    match sample(scrape, name, true) {
        Value::Histogram(buckets) => buckets.iter().map(|b| (b.less_than, b.count)).collect(),
        other => panic!("{name} is not a histogram: {other:?}"),
    }
}

fn setup() -> (Registry, KubeProxyMetrics) {
    let mut registry = Registry::default();
    let metrics = KubeProxyMetrics::new(registry.sub_registry_with_prefix("kubeproxy"));
    (registry, metrics)
}

const CHANGES: Changes = Changes {
    services: 2,
    endpoint_slices: 3,
};

fn queued_at() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_007)
}

#[test]
fn queued_changes_are_pending_until_a_sync() {
    let (registry, metrics) = setup();
    metrics.queued(CHANGES, queued_at());
    let before = scrape(&registry);
    assert_eq!(
        scalar(
            &before,
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
            false
        ),
        3.0
    );
    assert_eq!(
        scalar(
            &before,
            "kubeproxy_sync_proxy_rules_service_changes_pending",
            false
        ),
        2.0
    );
    assert_eq!(
        scalar(
            &before,
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            true
        ),
        1_800_000_007.0
    );
    assert_eq!(
        scalar(
            &before,
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            true
        ),
        0.0,
        "no sync yet"
    );
}

#[test]
fn a_scrape_carries_kube_proxys_names_labels_and_buckets() {
    let (registry, metrics) = setup();
    metrics.queued(CHANGES, queued_at());
    let changes = CHANGES;
    let later = queued_at() + Duration::from_secs(1);
    metrics.synced(changes, Duration::from_millis(3), true, true, later);
    metrics.synced(
        changes,
        Duration::from_millis(20),
        false,
        false,
        later + Duration::from_secs(5),
    );
    metrics.network_programming(Duration::from_millis(300));
    let after = scrape(&registry);

    let sync = histogram(&after, "kubeproxy_sync_proxy_rules_duration_seconds");
    let bounds: Vec<f64> = sync.iter().map(|(le, _)| *le).collect();
    let mut expected: Vec<f64> = (0..15).map(|i| 0.001 * f64::from(1u32 << i)).collect();
    expected.push(f64::INFINITY);
    assert_eq!(bounds, expected, "ExponentialBuckets(0.001, 2, 15)");
    assert_eq!(sync.last().map(|(_, c)| *c), Some(2.0), "both syncs");
    let full = histogram(&after, "kubeproxy_sync_full_proxy_rules_duration_seconds");
    assert_eq!(full.last().map(|(_, c)| *c), Some(1.0));
    assert_eq!(full[1], (0.002, 0.0), "3 ms is above 2 ms");
    assert_eq!(full[2], (0.004, 1.0));
    let partial = histogram(
        &after,
        "kubeproxy_sync_partial_proxy_rules_duration_seconds",
    );
    assert_eq!(partial.last().map(|(_, c)| *c), Some(1.0));

    let npl = histogram(&after, "kubeproxy_network_programming_duration_seconds");
    let bounds: Vec<f64> = npl.iter().map(|(le, _)| *le).collect();
    assert_eq!(bounds.len(), 2 + 59 + 12 + 7 + 1);
    assert_eq!(bounds[..3], [0.25, 0.5, 1.0]);
    assert_eq!(bounds[bounds.len() - 2], 300.0);
    assert_eq!(npl[0], (0.25, 0.0));
    assert_eq!(npl[1], (0.5, 1.0), "300 ms");

    assert_eq!(
        scalar(
            &after,
            "kubeproxy_sync_proxy_rules_endpoint_changes_total",
            false
        ),
        6.0
    );
    assert_eq!(
        scalar(
            &after,
            "kubeproxy_sync_proxy_rules_service_changes_total",
            false
        ),
        4.0
    );
    assert_eq!(
        scalar(
            &after,
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
            false
        ),
        0.0,
        "synced"
    );
    assert_eq!(
        scalar(
            &after,
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            true
        ),
        1_800_000_008.0,
        "stamped by the sync that succeeded, not by the one that left problems"
    );
}

#[test]
fn network_programming_bounds_are_ascending_and_distinct() {
    let bounds: Vec<f64> = network_programming_bounds().collect();
    assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{bounds:?}");
    assert_eq!(bounds[61], 60.0);
    assert_eq!(bounds[72], 115.0);
    assert_eq!(bounds[73], 120.0);
}
