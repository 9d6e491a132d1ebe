//! kube-proxy's own metrics (`kubeproxy_*`), under its names, label sets and bucket layouts
//! (kubernetes `pkg/proxy/metrics`), for what kproxy does the same way: an operator who
//! replaces kube-proxy keeps the dashboards and alerts built on them. kproxy's finer-grained
//! metrics stay `kproxy_*` beside them.
//!
//! What a "sync" is here: one write of the datapath from a batch of API changes (kube-proxy's
//! `syncProxyRules`). The first one after a start (the whole cluster) and the periodic
//! retries and resyncs are "full", the others "partial", as kube-proxy counts its own.

use std::{
    sync::atomic::AtomicU64,
    time::{Duration, SystemTime},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// kube-proxy's `ip_family` label. kproxy writes both families in one sync (kube-proxy has a
/// proxier per family, each with its own series); its series carry `IPv4`, as a
/// single-stack kube-proxy's do, so one sync is counted once.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IpFamily {
    pub ip_family: &'static str,
}

const IPV4: IpFamily = IpFamily { ip_family: "IPv4" };

type Buckets = fn() -> Histogram;

/// `ExponentialBuckets(0.001, 2, 15)`: 1 ms to 16.384 s, kube-proxy's sync buckets.
fn sync_buckets() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 15,
    ))
}

/// kube-proxy's network programming buckets: 0.25 s and 0.5 s, then every second to 59 s,
/// every 5 s to 115 s, every 30 s to 5 min.
fn network_programming_buckets() -> Histogram {
    Histogram::new(network_programming_bounds())
}

fn network_programming_bounds() -> impl Iterator<Item = f64> {
    let quarter = (1..=2).map(|i| 0.25 * f64::from(i));
    let seconds = (1..=59).map(f64::from);
    let fives = (0..12).map(|i| 60.0 + 5.0 * f64::from(i));
    let halves = (0..7).map(|i| 120.0 + 30.0 * f64::from(i));
    quarter.chain(seconds).chain(fives).chain(halves)
}

/// What changed in one sync, as kube-proxy's change trackers count it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub services: u64,
    pub endpoint_slices: u64,
}

pub struct KubeProxyMetrics {
    sync_duration: Family<IpFamily, Histogram, Buckets>,
    sync_full_duration: Family<IpFamily, Histogram, Buckets>,
    sync_partial_duration: Family<IpFamily, Histogram, Buckets>,
    last_sync: Family<IpFamily, Gauge<f64, AtomicU64>>,
    last_queued: Family<IpFamily, Gauge<f64, AtomicU64>>,
    network_programming: Family<IpFamily, Histogram, Buckets>,
    endpoint_changes_pending: Gauge,
    endpoint_changes_total: Counter,
    service_changes_pending: Gauge,
    service_changes_total: Counter,
}

impl KubeProxyMetrics {
    /// Registers the metrics in `registry`, which is to have the prefix `kubeproxy`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            sync_duration: Family::new_with_constructor(sync_buckets),
            sync_full_duration: Family::new_with_constructor(sync_buckets),
            sync_partial_duration: Family::new_with_constructor(sync_buckets),
            last_sync: Family::default(),
            last_queued: Family::default(),
            network_programming: Family::new_with_constructor(network_programming_buckets),
            endpoint_changes_pending: Gauge::default(),
            endpoint_changes_total: Counter::default(),
            service_changes_pending: Gauge::default(),
            service_changes_total: Counter::default(),
        };
        // Every labelled series exists from the start, as kube-proxy's do once it syncs.
        let _ = m.sync_duration.get_or_create(&IPV4);
        let _ = m.sync_full_duration.get_or_create(&IPV4);
        let _ = m.sync_partial_duration.get_or_create(&IPV4);
        let _ = m.last_sync.get_or_create(&IPV4);
        let _ = m.last_queued.get_or_create(&IPV4);
        let _ = m.network_programming.get_or_create(&IPV4);
        registry.register(
            "sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            m.sync_duration.clone(),
        );
        registry.register(
            "sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
            m.sync_full_duration.clone(),
        );
        registry.register(
            "sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
            m.sync_partial_duration.clone(),
        );
        registry.register(
            "sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            m.last_sync.clone(),
        );
        registry.register(
            "sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
            m.last_queued.clone(),
        );
        registry.register(
            "network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            m.network_programming.clone(),
        );
        registry.register(
            "sync_proxy_rules_endpoint_changes_pending",
            "Pending proxy rules Endpoint changes",
            m.endpoint_changes_pending.clone(),
        );
        registry.register(
            "sync_proxy_rules_endpoint_changes",
            "Cumulative proxy rules Endpoint changes",
            m.endpoint_changes_total.clone(),
        );
        registry.register(
            "sync_proxy_rules_service_changes_pending",
            "Pending proxy rules Service changes",
            m.service_changes_pending.clone(),
        );
        registry.register(
            "sync_proxy_rules_service_changes",
            "Cumulative proxy rules Service changes",
            m.service_changes_total.clone(),
        );
        m
    }

    /// Changes arrived (`at`, wall-clock) and wait for the next sync.
    pub fn queued(&self, changes: Changes, at: SystemTime) {
        self.endpoint_changes_pending
            .inc_by(gauge(changes.endpoint_slices));
        self.service_changes_pending.inc_by(gauge(changes.services));
        self.last_queued.get_or_create(&IPV4).set(unix_seconds(at));
    }

    /// A sync of `changes` that took `took`; `full` for the first, retries and resyncs;
    /// `succeeded` when the datapath took everything (kube-proxy stamps its last-sync time
    /// only then). The changes are no longer pending.
    pub fn synced(
        &self,
        changes: Changes,
        took: Duration,
        full: bool,
        succeeded: bool,
        at: SystemTime,
    ) {
        let seconds = took.as_secs_f64();
        self.sync_duration.get_or_create(&IPV4).observe(seconds);
        let kind = if full {
            &self.sync_full_duration
        } else {
            &self.sync_partial_duration
        };
        kind.get_or_create(&IPV4).observe(seconds);
        self.endpoint_changes_total.inc_by(changes.endpoint_slices);
        self.service_changes_total.inc_by(changes.services);
        self.endpoint_changes_pending.set(0);
        self.service_changes_pending.set(0);
        if succeeded {
            self.last_sync.get_or_create(&IPV4).set(unix_seconds(at));
        }
    }

    /// One EndpointSlice's network programming latency (its last-change-trigger-time to
    /// the datapath written).
    pub fn network_programming(&self, latency: Duration) {
        self.network_programming
            .get_or_create(&IPV4)
            .observe(latency.as_secs_f64());
    }
}

fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
