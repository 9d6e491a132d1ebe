//! The agent's Prometheus metrics: kproxy's own (`kproxy_*`), kube-proxy's ([`kube_proxy`],
//! `kubeproxy_*`) and the standard process metrics ([`process`], `process_*`). Each metric is registered once here; the agent updates
//! them as it syncs.

pub mod datapath;
pub mod kube_proxy;
pub mod process;

use kproxy_common::names;

use crate::{
    problem::ProblemKind,
    source::api::rest_metrics::RestClientMetrics,
    sync::{EntryCounts, gc::GcPass},
};

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
pub struct MapLabel {
    pub map: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FilterLabel {
    pub filter: &'static str,
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
    /// Connected UDP sockets destroyed because socket-level load balancing had pointed them
    /// at a backend no longer in use.
    pub stale_udp_sockets_destroyed_total: Counter,
    /// 1 once every watch listed the cluster (the first complete view), 0 before.
    pub cluster_view_synced: Gauge,
    /// Entries of the maps that fill with the cluster and its traffic, as the agent last
    /// counted them (service maps at each sync, conntrack at each collection), and their
    /// capacities: a map that fills fails the frontends or flows that do not fit.
    pub map_entries: Family<MapLabel, Gauge>,
    pub map_capacity: Family<MapLabel, Gauge>,
    /// Bits set in each bitmap of `KP_FILTER`.
    pub filter_bits: Family<FilterLabel, Gauge>,
    /// Drift checks run (periodic and `kproxy verify`).
    pub datapath_checks_total: Counter,
    /// Differences found between the service maps and what the agent programmed (each
    /// repaired), and those the last check found.
    pub datapath_drift_total: Counter,
    pub datapath_drift: Gauge,
    /// Interfaces kproxy's programs run on.
    pub attached_interfaces: Gauge,
    /// Failures to attach to an interface or to detach from it, by operation.
    pub attach_errors_total: Family<OperationLabel, Counter>,
    /// kube-proxy's metrics, for what kproxy does the same way.
    pub kube_proxy: kube_proxy::KubeProxyMetrics,
    /// client-go's request metrics, for the Kubernetes client.
    pub rest_client: RestClientMetrics,
    /// Which frontend each service port id stands for, for the datapath's per-frontend
    /// series ([`datapath::DatapathCollector`]).
    pub frontend_names: datapath::FrontendNames,
}

impl Metrics {
    /// Registers kproxy's metrics under `kproxy_` and kube-proxy's under `kubeproxy_` in
    /// `root` (a registry without a prefix: `/metrics` serves it).
    pub fn new(root: &mut Registry) -> Self {
        root.register_collector(Box::new(process::ProcessCollector));
        let rest_client = RestClientMetrics::new(root);
        let kube_proxy =
            kube_proxy::KubeProxyMetrics::new(root.sub_registry_with_prefix("kubeproxy"));
        let registry = root.sub_registry_with_prefix("kproxy");
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
            stale_udp_sockets_destroyed_total: Counter::default(),
            cluster_view_synced: Gauge::default(),
            map_entries: Family::default(),
            filter_bits: Family::default(),
            map_capacity: Family::default(),
            datapath_checks_total: Counter::default(),
            datapath_drift_total: Counter::default(),
            datapath_drift: Gauge::default(),
            attached_interfaces: Gauge::default(),
            attach_errors_total: Family::default(),
            kube_proxy,
            rest_client,
            frontend_names: datapath::FrontendNames::default(),
        };
        m.register(registry);
        m.zero_error_series();
        m
    }
}

impl Metrics {
    /// The maps' fill, and what the datapath's filter holds.
    fn register_maps(&self, registry: &mut Registry) {
        registry.register(
            "map_entries",
            "Entries of a BPF map as the agent last counted them (service maps at each sync, \
             conntrack at each collection)",
            self.map_entries.clone(),
        );
        registry.register(
            "map_capacity",
            "Capacity of a BPF map (--max-services, --max-backends, --ct-max, \
             --max-affinities)",
            self.map_capacity.clone(),
        );
        registry.register(
            "datapath_filter_bits",
            "Bits set in each address bitmap (of 1,048,576): frontend addresses and backend \
             endpoints ever written (KP_FILTER), destinations of reply entries ever made \
             (KP_CLIENTS, \"clients\"). A packet whose address has a clear bit skips a hash \
             lookup; the more bits are set, the fewer do",
            self.filter_bits.clone(),
        );
    }

    fn register(&self, registry: &mut Registry) {
        self.register_drift_checks(registry);
        self.register_maps(registry);
        registry.register(
            "problems",
            "Problems found in input or the datapath, by kind",
            self.problems_total.clone(),
        );
        registry.register(
            "current_problems",
            "Problems present now, by kind",
            self.problems.clone(),
        );
        registry.register("syncs", "Datapath syncs", self.syncs_total.clone());
        registry.register(
            "sync_duration_seconds",
            "Time to compute and write one sync",
            self.sync_duration_seconds.clone(),
        );
        registry.register(
            "network_programming_duration_seconds",
            "Time from an EndpointSlice change (its last-change-trigger-time) to the datapath",
            self.network_programming_duration_seconds.clone(),
        );
        registry.register(
            "event_to_datapath_seconds",
            "Time from an API event's arrival in kproxy to the datapath written",
            self.event_to_datapath_seconds.clone(),
        );
        registry.register(
            "watch_errors",
            "Failed Kubernetes API list/watch calls, by resource and reason (retried with backoff)",
            self.watch_errors_total.clone(),
        );
        registry.register(
            "map_operations",
            "BPF map writes and deletes",
            self.map_ops_total.clone(),
        );
        registry.register(
            "services_programmed",
            "Service ports (frontends) in the datapath",
            self.services_programmed.clone(),
        );
        registry.register(
            "endpoints_programmed",
            "Backends in the datapath",
            self.endpoints_programmed.clone(),
        );
        registry.register(
            "conntrack_flows",
            "Flows in the conntrack table at the last collection",
            self.conntrack_flows.clone(),
        );
        registry.register(
            "conntrack_capacity",
            "Capacity of the conntrack table (flows per direction, --ct-max)",
            self.conntrack_capacity.clone(),
        );
        registry.register(
            "conntrack_expired",
            "Conntrack entries removed after their timeout",
            self.conntrack_expired_total.clone(),
        );
        registry.register(
            "socket_lb_stale_udp_sockets_destroyed",
            "Connected UDP sockets destroyed because socket-level load balancing had pointed \
             them at a backend no longer in use (their owners connect again, to one in use)",
            self.stale_udp_sockets_destroyed_total.clone(),
        );
        registry.register(
            "cluster_view_synced",
            "1 once every watch has listed the cluster (the first complete view); 0 while \
             the agent waits for it (API server unreachable, a role missing a verb)",
            self.cluster_view_synced.clone(),
        );
        registry.register(
            "attached_interfaces",
            "Interfaces kproxy's programs are attached to",
            self.attached_interfaces.clone(),
        );
        registry.register(
            "attach_errors",
            "Failures to attach kproxy to an interface or to detach it, by operation",
            self.attach_errors_total.clone(),
        );
    }

    fn register_drift_checks(&self, registry: &mut Registry) {
        registry.register(
            "datapath_checks",
            "Drift checks of the service maps against what the agent programmed",
            self.datapath_checks_total.clone(),
        );
        registry.register(
            "datapath_drift",
            "Differences between the service maps and what the agent programmed found by \
             drift checks, each repaired",
            self.datapath_drift_total.clone(),
        );
        registry.register(
            "datapath_drift_last",
            "Differences the last drift check found",
            self.datapath_drift.clone(),
        );
    }

    /// Problem kinds and watch errors show at zero from the start: a rate or an alert over
    /// them needs no first occurrence, and a dashboard finds the series.
    fn zero_error_series(&self) {
        for kind in ProblemKind::ALL {
            let label = KindLabel {
                kind: kind.label().into(),
            };
            let _ = self.problems_total.get_or_create(&label);
            let _ = self.problems.get_or_create(&label);
        }
        for (resource, reason) in crate::source::api::watch_error_labels() {
            let _ = self.watch_errors_total.get_or_create(&WatchErrorLabels {
                resource: resource.into(),
                reason: reason.into(),
            });
        }
    }
}

impl Metrics {
    /// Sets `map`'s entry count, if `map_capacities` named it: a map the datapath does not
    /// have (the IPv6 ones of an object without them) has no series, rather than one that
    /// says it is empty.
    pub fn map_entries(&self, map: &'static str, entries: usize) {
        if let Some(series) = self.map_entries.get(&MapLabel { map }) {
            series.set(gauge(entries));
        }
    }

    /// Sets the capacity of every filling map the datapath has, and its entries at zero
    /// until counted.
    pub fn map_capacities(&self, capacities: &[(&'static str, u32)]) {
        for &(map, capacity) in capacities {
            self.map_capacity
                .get_or_create(&MapLabel { map })
                .set(i64::from(capacity));
            let _ = self.map_entries.get_or_create(&MapLabel { map });
        }
    }

    /// The service maps' entries, of both families, as the programmed state counts them.
    pub fn service_map_entries(&self, counts: &EntryCounts) {
        self.map_entries(names::MAP_SERVICES, counts.frontends.v4);
        self.map_entries(names::MAP_SERVICES6, counts.frontends.v6);
        self.map_entries(names::MAP_BACKENDS, counts.backends.v4);
        self.map_entries(names::MAP_BACKENDS6, counts.backends.v6);
        self.map_entries(names::MAP_SLOTS, counts.slots);
    }

    /// The bits set in `KP_FILTER`'s bitmaps: frontend addresses, backend endpoints.
    pub fn filter_bits(&self, (frontends, backends): (u32, u32)) {
        for (filter, bits) in [("frontends", frontends), ("backends", backends)] {
            self.filter_bits
                .get_or_create(&FilterLabel { filter })
                .set(i64::from(bits));
        }
    }

    /// The bits set in `KP_CLIENTS`, the destinations of reply entries.
    pub fn client_bits(&self, bits: u32) {
        self.filter_bits
            .get_or_create(&FilterLabel { filter: "clients" })
            .set(i64::from(bits));
    }

    /// The conntrack and affinity maps' entries, of both families, after collection `pass`.
    pub fn flow_map_entries(&self, pass: &GcPass) {
        for (stats, fwd, rev, affinity) in [
            (
                &pass.v4,
                names::MAP_CT_FWD,
                names::MAP_CT_REV,
                names::MAP_AFFINITY,
            ),
            (
                &pass.v6,
                names::MAP_CT_FWD6,
                names::MAP_CT_REV6,
                names::MAP_AFFINITY6,
            ),
        ] {
            self.map_entries(fwd, stats.flows);
            self.map_entries(rev, stats.replies);
            self.map_entries(affinity, stats.affinities);
        }
    }
}

/// A count as a gauge value.
pub fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        dataplane::load::MapSizes,
        sync::{ByFamily, gc::GcStats},
    };

    fn metrics() -> Metrics {
        Metrics::new(&mut Registry::default())
    }

    /// Counts the agent would report: each map's differs from the others'.
    fn counted(m: &Metrics) {
        m.service_map_entries(&EntryCounts {
            frontends: ByFamily { v4: 3, v6: 2 },
            taking_connections: 9,
            backends: ByFamily { v4: 6, v6: 4 },
            slots: 20,
        });
        let stats = |flows, replies, affinities| GcStats {
            flows,
            replies,
            affinities,
            ..GcStats::default()
        };
        m.flow_map_entries(&GcPass {
            v4: stats(10, 9, 1),
            v6: stats(5, 4, 2),
        });
    }

    #[test]
    fn each_map_the_datapath_has_reports_its_own_fill_level_and_an_absent_map_none() {
        let sizes = MapSizes {
            services: 100,
            backends: 200,
            conntrack: 1_000,
            affinity: 50,
            ..MapSizes::default()
        };
        // (map, its capacity, its entries as counted)
        let v4 = [
            (names::MAP_SERVICES, 100, 3),
            (names::MAP_BACKENDS, 200, 6),
            (names::MAP_SLOTS, 400, 20),
            (names::MAP_CT_FWD, 1_000, 10),
            (names::MAP_CT_REV, 1_000, 9),
            (names::MAP_AFFINITY, 50, 1),
        ];
        let v6 = [
            (names::MAP_SERVICES6, 100, 2),
            (names::MAP_BACKENDS6, 200, 4),
            (names::MAP_CT_FWD6, 1_000, 5),
            (names::MAP_CT_REV6, 1_000, 4),
            (names::MAP_AFFINITY6, 50, 2),
        ];
        // (datapath, whether it has the IPv6 maps)
        for (datapath, ipv6) in [("dual-stack", true), ("IPv4 only", false)] {
            let m = metrics();
            let present: Vec<(&'static str, u32)> = sizes
                .filling_maps()
                .into_iter()
                .filter(|(map, _)| ipv6 || !v6.iter().any(|(twin, ..)| twin == map))
                .collect();
            m.map_capacities(&present);
            counted(&m);
            let series = |family: &Family<MapLabel, Gauge>, map| {
                family.get(&MapLabel { map }).map(|g| g.get())
            };
            for (map, capacity, entries) in v4 {
                assert_eq!(
                    series(&m.map_capacity, map),
                    Some(capacity),
                    "{datapath}: {map}"
                );
                assert_eq!(
                    series(&m.map_entries, map),
                    Some(entries),
                    "{datapath}: {map}"
                );
            }
            for (map, capacity, entries) in v6 {
                let (capacity, entries) = if ipv6 {
                    (Some(capacity), Some(entries))
                } else {
                    (None, None)
                };
                assert_eq!(series(&m.map_capacity, map), capacity, "{datapath}: {map}");
                assert_eq!(series(&m.map_entries, map), entries, "{datapath}: {map}");
            }
        }
    }
}
