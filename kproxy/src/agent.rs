//! `kproxy run`: load and attach the datapath, then keep it in step with the manifests.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use kproxy_common::config::Config;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;

use crate::{
    dataplane::{
        attach::{self, Attached},
        load::{self, MapSizes},
        maps::{FlowMaps, ServiceMaps, monotonic_ns},
    },
    metrics::{KindLabel, Metrics, gauge},
    model::ClusterState,
    problem::Problem,
    source::{files::ManifestSource, watch},
    sync::{Datapath, Programmed},
};

/// Everything `kproxy run` needs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub manifests: PathBuf,
    pub node_name: String,
    pub tc_ifaces: Vec<String>,
    pub xdp_ifaces: Vec<String>,
    pub pin_dir: PathBuf,
    pub sizes: MapSizes,
    pub conntrack: Config,
    /// How often expired conntrack entries are deleted.
    pub gc_interval: Duration,
    /// How often the manifests are re-read even without a file event (a safety net).
    pub resync_interval: Duration,
}

/// File events arrive in bursts (an editor truncates, writes, chmods): wait this long after
/// the first one before reading, short enough not to matter next to the sync itself.
const DEBOUNCE: Duration = Duration::from_millis(2);

struct Agent {
    config: AgentConfig,
    source: ManifestSource,
    cluster: ClusterState,
    services: ServiceMaps,
    flows: FlowMaps,
    programmed: Programmed,
    metrics: Metrics,
    /// Problems reported by the last sync, so each is logged once, not on every resync.
    reported: BTreeSet<String>,
    /// The last garbage collection found the conntrack table over 90% full.
    conntrack_nearly_full: bool,
}

/// Runs until `shutdown` resolves. The datapath stays attached afterwards.
pub async fn run(
    config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let mut registry = Registry::with_prefix("kproxy");
    let metrics = Metrics::new(&mut registry);

    let mut ebpf = load::load(&config.pin_dir, &config.sizes)?;
    let mut flows = FlowMaps::open(&config.pin_dir)?;
    flows.write_config(&config.conntrack)?;
    let mut services = ServiceMaps::open(&config.pin_dir)?;
    let (programmed, cleanup) = Programmed::recover(&services.snapshot()?, config.sizes.services);
    if !programmed.frontends().is_empty() {
        tracing::info!(
            frontends = programmed.frontends().len(),
            "recovered the datapath left by a previous agent"
        );
    }
    for op in &cleanup {
        services
            .apply(op)
            .with_context(|| format!("cleaning up {op:?}"))?;
    }
    metrics
        .conntrack_capacity
        .set(i64::from(config.sizes.conntrack));
    let mut agent = Agent {
        source: ManifestSource::new(&config.manifests),
        cluster: ClusterState::default(),
        config,
        services,
        flows,
        programmed,
        metrics,
        reported: BTreeSet::new(),
        conntrack_nearly_full: false,
    };
    // Program first, attach second: once attached, the datapath serves current state.
    agent.sync(None);
    for (iface, hook, how) in attach::attach_all(
        &mut ebpf,
        &agent.config.pin_dir,
        &agent.config.tc_ifaces,
        &agent.config.xdp_ifaces,
    )? {
        match how {
            Attached::New => tracing::info!(%iface, ?hook, "attached"),
            Attached::Replaced => {
                tracing::info!(%iface, ?hook, "replaced the program of the existing link");
            }
        }
    }

    let (tx, mut rx) = mpsc::unbounded_channel();
    let _watch = watch::watch(&agent.config.manifests, tx)?;
    let mut gc = tokio::time::interval(agent.config.gc_interval);
    let mut resync = tokio::time::interval(agent.config.resync_interval);
    gc.tick().await;
    resync.tick().await;
    tokio::pin!(shutdown);
    tracing::info!(pin_dir = %agent.config.pin_dir.display(), "ready");
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(()) = rx.recv() => {
                let seen = Instant::now();
                tokio::time::sleep(DEBOUNCE).await;
                while rx.try_recv().is_ok() {}
                agent.sync(Some(seen));
            }
            _ = resync.tick() => agent.sync(None),
            _ = gc.tick() => agent.collect_garbage(),
        }
    }
    tracing::info!(
        "stopping; the datapath stays attached and keeps serving the last state \
         (`kproxy cleanup` removes it)"
    );
    Ok(())
}

impl Agent {
    /// Reads what changed in the manifests, recomputes the services it touches and writes
    /// the differences. `seen` is when the file event that triggered it arrived.
    fn sync(&mut self, seen: Option<Instant>) {
        let started = Instant::now();
        let changes = self.source.refresh();
        let read_done = Instant::now();
        let keys = self.cluster.apply(changes);
        let model_done = Instant::now();
        let report = self
            .programmed
            .sync_keys(self.cluster.desired(), &keys, &mut self.services);
        let elapsed = started.elapsed();
        let (read, model, write) = (
            read_done - started,
            model_done - read_done,
            model_done.elapsed(),
        );

        let problems: Vec<Problem> = self
            .source
            .problems()
            .into_iter()
            .chain(self.cluster.problems())
            .chain(report.problems.iter().cloned())
            .map(|p| self.source.locate(p))
            .collect();
        self.report_problems(&problems);

        self.metrics.syncs_total.inc();
        self.metrics
            .sync_duration_seconds
            .observe(elapsed.as_secs_f64());
        self.metrics.map_ops_total.inc_by(report.ops as u64);
        self.metrics
            .services_programmed
            .set(gauge(self.programmed.frontends().len()));
        self.metrics
            .endpoints_programmed
            .set(gauge(self.programmed.backend_count()));
        if report.changed() {
            let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
            tracing::info!(
                added = report.added,
                updated = report.updated,
                removed = report.removed,
                map_ops = report.ops,
                frontends = self.programmed.frontends().len(),
                elapsed_us = micros(elapsed),
                read_us = micros(read),
                model_us = micros(model),
                write_us = micros(write),
                since_event_us = seen.map(|s| micros(s.elapsed())),
                "synced"
            );
        }
    }

    /// Logs problems the first time they appear, and updates the problem metrics.
    fn report_problems(&mut self, problems: &[Problem]) {
        let current: BTreeSet<String> = problems.iter().map(ToString::to_string).collect();
        for p in problems {
            let text = p.to_string();
            if !self.reported.contains(&text) {
                tracing::warn!("{text}");
                self.metrics
                    .problems_total
                    .get_or_create(&KindLabel {
                        kind: p.kind.label().into(),
                    })
                    .inc();
            }
        }
        for gone in self.reported.difference(&current) {
            tracing::info!("resolved: {gone}");
        }
        self.metrics.problems.clear();
        for p in problems {
            self.metrics
                .problems
                .get_or_create(&KindLabel {
                    kind: p.kind.label().into(),
                })
                .inc();
        }
        self.reported = current;
    }

    fn collect_garbage(&mut self) {
        let live: std::collections::HashSet<u32> = self
            .programmed
            .frontends()
            .values()
            .flat_map(|f| f.backends.iter().map(|(_, id)| *id))
            .collect();
        match self.flows.collect_garbage(
            &self.config.conntrack,
            |id| live.contains(&id),
            monotonic_ns(),
        ) {
            Ok(stats) => {
                self.metrics.conntrack_flows.set(gauge(stats.flows));
                // The conntrack maps are LRU: when full, the oldest flows are evicted silently
                // by the kernel. Say so while it is close to happening.
                let capacity = u64::from(self.config.sizes.conntrack);
                let nearly_full = stats.flows as u64 * 10 >= capacity * 9;
                if nearly_full && !self.conntrack_nearly_full {
                    tracing::warn!(
                        flows = stats.flows,
                        capacity,
                        "conntrack table over 90% full; raise --ct-max"
                    );
                }
                self.conntrack_nearly_full = nearly_full;
                self.metrics
                    .conntrack_expired_total
                    .inc_by(stats.expired as u64);
                if stats.expired > 0 {
                    tracing::debug!(?stats, "conntrack garbage collected");
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "conntrack garbage collection failed");
            }
        }
    }
}
