//! The agent's Prometheus metrics (`kproxy_*`). Each metric is registered once here; the
//! agent updates them as it syncs.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchErrorLabels {
    pub resource: String,
    /// `forbidden` (the role lacks a verb), `gone` (a watch start refused with 410, answered
    /// with a relist) or `other`.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabel {
    pub operation: String,
}

pub struct Metrics {
    /// Problems found in input or while writing the datapath, by kind (counted when first seen).
    pub problems_total: Family<KindLabel, Counter>,
    /// Problems present right now, by kind.
    pub problems: Family<KindLabel, Gauge>,
    pub syncs_total: Counter,
    pub sync_duration_seconds: Histogram,
    /// From an EndpointSlice's last-change-trigger-time to the sync that programmed it.
    pub network_programming_duration_seconds: Histogram,
    /// kproxy's own part of it: from the arrival of the first API event of a batch to the
    /// datapath written (syncs that changed the datapath only).
    pub event_to_datapath_seconds: Histogram,
    /// Failed list/watch calls by resource and reason (each is retried with backoff).
    pub watch_errors_total: Family<WatchErrorLabels, Counter>,
    pub map_ops_total: Counter,
    pub services_programmed: Gauge,
    pub endpoints_programmed: Gauge,
    pub conntrack_flows: Gauge,
    pub conntrack_capacity: Gauge,
    pub conntrack_expired_total: Counter,
    /// Interfaces kproxy's programs run on.
    pub attached_interfaces: Gauge,
    /// Failures to attach to an interface or to detach from it, by operation.
    pub attach_errors_total: Family<OperationLabel, Counter>,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            problems_total: Family::default(),
            problems: Family::default(),
            syncs_total: Counter::default(),
            sync_duration_seconds: Histogram::new([
                0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
            ]),
            // kube-proxy's buckets start at 250 ms; kproxy programs in milliseconds, so
            // finer ones below that, the same range above.
            network_programming_duration_seconds: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
                60.0, 120.0, 300.0,
            ]),
            event_to_datapath_seconds: Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
            ]),
            watch_errors_total: Family::default(),
            map_ops_total: Counter::default(),
            services_programmed: Gauge::default(),
            endpoints_programmed: Gauge::default(),
            conntrack_flows: Gauge::default(),
            conntrack_capacity: Gauge::default(),
            conntrack_expired_total: Counter::default(),
            attached_interfaces: Gauge::default(),
            attach_errors_total: Family::default(),
        };
        registry.register(
            "problems",
            "Problems found in input or the datapath, by kind",
            m.problems_total.clone(),
        );
        registry.register(
            "current_problems",
            "Problems present now, by kind",
            m.problems.clone(),
        );
        registry.register("syncs", "Datapath syncs", m.syncs_total.clone());
        registry.register(
            "sync_duration_seconds",
            "Time to compute and write one sync",
            m.sync_duration_seconds.clone(),
        );
        registry.register(
            "network_programming_duration_seconds",
            "Time from an EndpointSlice change (its last-change-trigger-time) to the datapath",
            m.network_programming_duration_seconds.clone(),
        );
        registry.register(
            "event_to_datapath_seconds",
            "Time from an API event's arrival in kproxy to the datapath written",
            m.event_to_datapath_seconds.clone(),
        );
        registry.register(
            "watch_errors",
            "Failed Kubernetes API list/watch calls, by resource and reason (retried with backoff)",
            m.watch_errors_total.clone(),
        );
        registry.register(
            "map_operations",
            "BPF map writes and deletes",
            m.map_ops_total.clone(),
        );
        registry.register(
            "services_programmed",
            "Service ports (frontends) in the datapath",
            m.services_programmed.clone(),
        );
        registry.register(
            "endpoints_programmed",
            "Backends in the datapath",
            m.endpoints_programmed.clone(),
        );
        registry.register(
            "conntrack_flows",
            "Flows in the conntrack table at the last collection",
            m.conntrack_flows.clone(),
        );
        registry.register(
            "conntrack_expired",
            "Conntrack entries removed after their timeout",
            m.conntrack_expired_total.clone(),
        );
        registry.register(
            "attached_interfaces",
            "Interfaces kproxy's programs are attached to",
            m.attached_interfaces.clone(),
        );
        registry.register(
            "attach_errors",
            "Failures to attach kproxy to an interface or to detach it, by operation",
            m.attach_errors_total.clone(),
        );
        m
    }
}

/// A count as a gauge value.
pub fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
