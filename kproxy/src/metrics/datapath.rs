//! The datapath's own counters on `/metrics`, summed over CPUs at each scrape. The global
//! counters of `KP_STATS`: every drop as `kproxy_datapath_drops_total{reason}`, everything
//! else the programs count (translations, new flows, pass-throughs of packets meant for a
//! Service, XDP's hand-offs) as `kproxy_datapath_events_total{event}`, under the names
//! `kproxy services` prints. And per frontend (a service port on one address), from
//! `KP_SVC_STATS`: `kproxy_service_packets_total`, `_bytes_total`, `_new_flows_total` and
//! `_refused_total`, labelled with the Service's `namespace`, `name`, `port` (name) and
//! `protocol`, and the `frontend` (address:port/protocol). With `--metrics-per-backend`, per
//! backend of each frontend too, from `KP_BE_STATS`: `kproxy_backend_packets_total`,
//! `_bytes_total` and `_new_flows_total`, with the frontend's labels and the `backend`
//! (address:port).

use std::{
    fmt::Write as _,
    path::PathBuf,
    sync::{Arc, RwLock},
};

use kproxy_common::stats::{BackendStats, Counter, GlobalStats, ServiceStats};
use prometheus_client::{
    collector::Collector,
    encoding::{
        DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelSetEncoder,
        LabelValueEncoder,
    },
    metrics::{MetricType, counter::ConstCounter},
};

use crate::{
    dataplane::maps::{backends_stats, global_stats, services_stats},
    model::{Endpoint, FrontendKey, ServicePortName},
};

/// The labels of one frontend's series: the Service's `namespace`, `name`, `port` (name)
/// and `protocol`, and the `frontend`. Kept as the service port's name and the frontend's
/// key, written out at each scrape: held as text, 100,000 frontends' labels took 6 MB more
/// (and as much again while they are rebuilt).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct FrontendLabels {
    pub service: ServicePortName,
    pub frontend: FrontendKey,
}

impl FrontendLabels {
    pub fn new(key: &FrontendKey, service: &ServicePortName) -> Self {
        Self {
            service: service.clone(),
            frontend: *key,
        }
    }
}

impl EncodeLabelSet for FrontendLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let service = &self.service;
        [
            ("namespace", service.namespace()),
            ("name", service.name()),
            ("port", &*service.port),
            ("protocol", self.frontend.proto.as_str()),
        ]
        .encode(encoder)?;
        [("frontend", Written(self.frontend))].encode(encoder)
    }
}

/// The labels of one backend's series: its frontend's, and the `backend`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct BackendLabels {
    pub frontend: FrontendLabels,
    pub backend: Endpoint,
}

impl BackendLabels {
    pub fn new(frontend: &FrontendLabels, backend: Endpoint) -> Self {
        Self {
            frontend: frontend.clone(),
            backend,
        }
    }
}

impl EncodeLabelSet for BackendLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        self.frontend.encode(encoder)?;
        [("backend", Written(self.backend))].encode(encoder)
    }
}

/// A label value written as its `Display` says, when the series is encoded.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct Written<T>(pub T);

impl<T: std::fmt::Display> EncodeLabelValue for Written<T> {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        write!(encoder, "{}", self.0)
    }
}

/// Which frontend each service port id stands for (and, with per-backend series, which
/// backend each backend id): written by the agent as they change, read at each scrape.
#[derive(Clone, Debug, Default)]
pub struct FrontendNames(Arc<RwLock<Arc<Names>>>);

/// Service port ids and backend ids with the labels of their series.
#[derive(Debug, Default)]
pub struct Names {
    pub frontends: Vec<(u32, FrontendLabels)>,
    pub backends: Vec<(u32, BackendLabels)>,
}

impl FrontendNames {
    pub fn set(&self, names: Names) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(names);
    }

    fn get(&self) -> Arc<Names> {
        Arc::clone(
            &self
                .0
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabel {
    event: &'static str,
}

/// Reads the pinned maps under `pin_dir` at each scrape: nothing before the agent created
/// them, and whatever maps are pinned there now (an upgrade may replace them).
#[derive(Debug)]
pub struct DatapathCollector {
    pin_dir: PathBuf,
    names: FrontendNames,
}

impl DatapathCollector {
    pub fn new(pin_dir: PathBuf, names: FrontendNames) -> Self {
        Self { pin_dir, names }
    }
}

impl Collector for DatapathCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Before the maps exist, or while they are replaced: nothing to show.
        let Ok(stats) = global_stats(&self.pin_dir) else {
            return Ok(());
        };
        encode_counters(&stats, &mut encoder)?;
        let names = self.names.get();
        let ids: Vec<u32> = names.frontends.iter().map(|(id, _)| *id).collect();
        let Ok(per_service) = services_stats(&self.pin_dir, &ids) else {
            return Ok(());
        };
        let series: Vec<(&FrontendLabels, ServiceStats)> = names
            .frontends
            .iter()
            .map(|(_, labels)| labels)
            .zip(per_service)
            .collect();
        encode_services(&series, &mut encoder)?;
        if names.backends.is_empty() {
            return Ok(());
        }
        let ids: Vec<u32> = names.backends.iter().map(|(id, _)| *id).collect();
        let Ok(per_backend) = backends_stats(&self.pin_dir, &ids) else {
            return Ok(());
        };
        let series: Vec<(&BackendLabels, BackendStats)> = names
            .backends
            .iter()
            .map(|(_, labels)| labels)
            .zip(per_backend)
            .collect();
        encode_backends(&series, &mut encoder)
    }
}

/// Writes each frontend's counters, one family per counter.
fn encode_services(
    series: &[(&FrontendLabels, ServiceStats)],
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let families: [Family<ServiceStats>; 4] = [
        (
            "service_packets",
            "Packets to the frontend the datapath translated",
            |s| s.packets,
        ),
        (
            "service_bytes",
            "Bytes of the packets to the frontend the datapath translated",
            |s| s.bytes,
        ),
        (
            "service_new_flows",
            "New flows to the frontend given a backend",
            |s| s.new_flows,
        ),
        (
            "service_refused",
            "New connections to the frontend refused (rejected, or dropped under traffic \
             policy Local) for want of endpoints",
            |s| s.rejected,
        ),
    ];
    encode_families(series, &families, encoder)
}

/// Writes each backend's counters, one family per counter.
fn encode_backends(
    series: &[(&BackendLabels, BackendStats)],
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let families: [Family<BackendStats>; 3] = [
        (
            "backend_packets",
            "Packets of the frontend translated towards the backend",
            |s| s.packets,
        ),
        (
            "backend_bytes",
            "Bytes of the packets translated towards the backend",
            |s| s.bytes,
        ),
        (
            "backend_new_flows",
            "New flows of the frontend given the backend",
            |s| s.new_flows,
        ),
    ];
    encode_families(series, &families, encoder)
}

/// A counter family: its name, help, and the counter it reads from the stats `S`.
type Family<S> = (&'static str, &'static str, fn(&S) -> u64);

/// Writes one counter family per `(name, help, field)` of `families`, a series per labels.
fn encode_families<L: EncodeLabelSet + std::fmt::Debug, S>(
    series: &[(&L, S)],
    families: &[Family<S>],
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    for (name, help, value) in families {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, stats) in series {
            ConstCounter::new(value(stats)).encode(family.encode_family(*labels)?)?;
        }
    }
    Ok(())
}

/// Writes `stats` as the two families.
fn encode_counters(
    stats: &GlobalStats,
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let value = |c: Counter| stats.counters[c as usize];
    {
        let mut drops = encoder.encode_descriptor(
            "datapath_drops",
            "Packets the datapath dropped, by reason",
            None,
            MetricType::Counter,
        )?;
        for &counter in Counter::ALL {
            if let Some(reason) = counter.drop_reason() {
                ConstCounter::new(value(counter))
                    .encode(drops.encode_family(&ReasonLabel { reason })?)?;
            }
        }
    }
    let mut events = encoder.encode_descriptor(
        "datapath_events",
        "What the datapath counted besides drops: translations, new flows, and every way a \
         packet meant for a Service was passed on untranslated",
        None,
        MetricType::Counter,
    )?;
    for &counter in Counter::ALL {
        if counter.drop_reason().is_none() {
            ConstCounter::new(value(counter)).encode(events.encode_family(&EventLabel {
                event: counter.name(),
            })?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use kproxy_common::stats::COUNTER_SLOTS;
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::model::Protocol;

    /// A collector over fixed counters, to see the exposition without a datapath (the
    /// end-to-end tests scrape a real one).
    #[derive(Debug)]
    struct Fixed(GlobalStats);

    impl Collector for Fixed {
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            encode_counters(&self.0, &mut encoder)
        }
    }

    #[test]
    fn every_counter_is_exposed_once_drops_by_reason() {
        let mut stats = GlobalStats {
            counters: [0; COUNTER_SLOTS],
        };
        stats.counters[Counter::DropNoPort as usize] = 7;
        stats.counters[Counter::NewFlows as usize] = 11;
        stats.counters[Counter::XdpPassNoNeigh as usize] = 3;
        let mut registry = Registry::with_prefix("kproxy");
        registry.register_collector(Box::new(Fixed(stats)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encoding");
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .expect("parses");
        let value = |metric: &str, label: &str, name: &str| -> Vec<f64> {
            scrape
                .samples
                .iter()
                .filter(|s| s.metric == metric && s.labels.get(label) == Some(name))
                .filter_map(|s| match s.value {
                    prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => {
                        Some(v)
                    }
                    _ => None,
                })
                .collect()
        };
        assert_eq!(
            value("kproxy_datapath_drops_total", "reason", "no_port"),
            [7.0]
        );
        assert_eq!(
            value("kproxy_datapath_events_total", "event", "new_flows"),
            [11.0]
        );
        assert_eq!(
            value(
                "kproxy_datapath_events_total",
                "event",
                "xdp_pass_no_neighbour"
            ),
            [3.0]
        );
        let series = scrape
            .samples
            .iter()
            .filter(|s| s.metric.starts_with("kproxy_datapath_"))
            .count();
        assert_eq!(series, Counter::ALL.len(), "each counter once:\n{text}");
    }

    #[test]
    fn each_frontend_has_its_counters_under_its_service_s_name() {
        #[derive(Debug)]
        struct Services(Vec<(FrontendLabels, ServiceStats)>);
        impl Collector for Services {
            fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
                let series: Vec<_> = self.0.iter().map(|(l, s)| (l, *s)).collect();
                encode_services(&series, &mut encoder)
            }
        }
        // The frontend label is the key's text, written at the scrape.
        let labels = |name: &str, addr: &str, port| {
            let key = FrontendKey::new(addr.parse().expect("an address"), port, Protocol::Tcp);
            let service = ServicePortName::new("shop", name, "http");
            FrontendLabels::new(&key, &service)
        };
        let stats = |packets| ServiceStats {
            packets,
            bytes: packets * 100,
            new_flows: 1,
            rejected: 0,
        };
        let mut registry = Registry::with_prefix("kproxy");
        registry.register_collector(Box::new(Services(vec![
            (labels("web", "10.0.0.1", 80), stats(5)),
            (labels("web", "0.0.0.0", 30080), stats(7)),
        ])));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encoding");
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .expect("parses");
        let packets: Vec<(String, f64)> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == "kproxy_service_packets_total")
            .map(|s| {
                assert_eq!(s.labels.get("namespace"), Some("shop"));
                assert_eq!(s.labels.get("name"), Some("web"));
                assert_eq!(s.labels.get("port"), Some("http"));
                assert_eq!(s.labels.get("protocol"), Some("TCP"));
                let value = match s.value {
                    prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
                    _ => f64::NAN,
                };
                (
                    s.labels.get("frontend").unwrap_or_default().to_owned(),
                    value,
                )
            })
            .collect();
        assert_eq!(
            packets,
            [
                ("10.0.0.1:80/TCP".to_owned(), 5.0),
                ("*:30080/TCP".to_owned(), 7.0)
            ],
            "{text}"
        );
        for family in ["bytes", "new_flows", "refused"] {
            let name = format!("kproxy_service_{family}_total");
            let count = scrape.samples.iter().filter(|s| s.metric == name).count();
            assert_eq!(count, 2, "{name}");
        }
    }
}
