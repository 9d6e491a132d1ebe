//! `kproxy run`: load and attach the datapath, then keep it in step with the cluster (the
//! Kubernetes API or a manifests path).

mod input;

use std::{
    collections::{BTreeSet, HashSet},
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};
use input::{Input, Wakeup};
use kproxy_common::{config::Config, lb::ServiceKey};
use prometheus_client::registry::Registry;

use crate::{
    dataplane::{
        links::{
            LinkMetrics, LinkWatcher,
            select::{IfacePattern, IfacePatterns, PodInterfaces, Selection},
        },
        load::{self, MapSizes},
        maps::{FlowMaps, ServiceMaps, monotonic_ns},
        node_addrs::NodeAddrs,
    },
    http::Health,
    metrics::{KindLabel, Metrics, gauge},
    model::{Change, ClusterState, NodeInfo},
    problem::{Problem, ProblemKind},
    source::{files::ManifestSource, trim::TRIGGER_TIME_ANNOTATION},
    sync::{
        Datapath, Programmed,
        gc::{GcStats, Liveness},
    },
    wire,
};

/// Where the agent reads Services, EndpointSlices and its Node from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A manifest file or directory, watched.
    Manifests(PathBuf),
    /// The Kubernetes API, through `kubeconfig` or the in-cluster configuration.
    Api { kubeconfig: Option<PathBuf> },
}

/// The agent's HTTP endpoints; `None` turns one off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// `/healthz` and `/readyz`.
    pub healthz: Option<SocketAddr>,
    /// `/metrics`.
    pub metrics: Option<SocketAddr>,
    /// `/healthz` fails once a change has waited this long without being programmed.
    pub healthz_timeout: Duration,
}

/// Everything `kproxy run` needs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub source: Source,
    pub node_name: String,
    pub http: HttpConfig,
    /// Interfaces (names or patterns) that get the TC programs, as they come and go.
    pub tc_ifaces: Vec<IfacePattern>,
    /// Interfaces (names or patterns) that get the XDP program.
    pub xdp_ifaces: Vec<IfacePattern>,
    /// Which served interfaces lead to pods (`IFACE_F_POD`), for local-traffic detection
    /// by interface; `None` marks none.
    pub pod_interfaces: Option<PodInterfaces>,
    pub pin_dir: PathBuf,
    pub sizes: MapSizes,
    pub conntrack: Config,
    /// How often expired conntrack entries are deleted.
    pub gc_interval: Duration,
    /// How often the manifests are re-read even without a file event (a safety net; the
    /// API source relies on its watches).
    pub resync_interval: Duration,
}

/// Changes arrive in bursts (an editor truncates, writes, chmods; a rollout updates many
/// EndpointSlices): wait this long after the first one and take everything that arrived by
/// then as one sync. Short enough not to matter next to the sync itself.
const DEBOUNCE: Duration = Duration::from_millis(2);

/// After a sync that could not write everything (a full map), the failed frontends are tried
/// again without waiting for a change in the cluster (room may have been made meanwhile, or
/// by the same sync: service port ids freed by a sync are reused from the next one on), with
/// the delay doubling up to `RETRY_MAX` while they keep failing.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_mins(1);

struct Agent {
    config: AgentConfig,
    /// The node's own addresses in the datapath, refreshed with each collection.
    node_addrs: NodeAddrs,
    cluster: ClusterState,
    services: ServiceMaps,
    flows: FlowMaps,
    programmed: Programmed,
    metrics: Metrics,
    health: Arc<Health>,
    /// Problems reported by the last sync, so each is logged once, not on every resync.
    reported: BTreeSet<String>,
    /// The last garbage collection found the conntrack table over 90% full.
    conntrack_nearly_full: bool,
    /// When to sync again because the last sync left frontends unwritten, and the delay
    /// after that one.
    retry: Option<(Instant, Duration)>,
}

/// Runs until `shutdown` resolves. The datapath stays attached afterwards.
pub async fn run(
    config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let started = Instant::now();
    let mut registry = Registry::with_prefix("kproxy");
    let metrics = Metrics::new(&mut registry);
    let health = Arc::new(Health::new(config.http.healthz_timeout));
    // The first programming is a change waiting from the start.
    health.queued(started);
    serve_http(&config.http, &health, registry).await?;

    let (ebpf, pinned) = load::load(&config.pin_dir, &config.sizes)?;
    tracing::info!(?pinned, "datapath loaded");
    let mut node_addrs = NodeAddrs::open(&config.pin_dir)?;
    node_addrs.refresh()?;
    tracing::info!(addresses = ?node_addrs.addresses(), "node addresses");
    let mut flows = FlowMaps::open(&config.pin_dir)?;
    flows.write_config(&config.conntrack)?;
    let mut services = ServiceMaps::open(&config.pin_dir)?;
    let (programmed, cleanup) = Programmed::recover(&services.snapshot()?, config.sizes.services);
    if !programmed.frontends().is_empty() {
        tracing::info!(
            frontends = programmed.frontends().len(),
            "recovered the datapath left by a previous agent; it keeps serving until the first sync"
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

    let mut input = match &config.source {
        Source::Manifests(path) => Input::manifests(
            ManifestSource::new(path).with_node(&config.node_name),
            path,
            config.resync_interval,
        )?,
        Source::Api { kubeconfig } => Input::api(kubeconfig.as_deref(), &config.node_name).await?,
    };
    let mut cluster = ClusterState::default();
    cluster.set_node(NodeInfo::named(&config.node_name));
    let mut agent = Agent {
        cluster,
        node_addrs,
        config,
        services,
        flows,
        programmed,
        metrics,
        health,
        reported: BTreeSet::new(),
        conntrack_nearly_full: false,
        retry: None,
    };
    tokio::pin!(shutdown);

    // Nothing is programmed from a partial view: a half-listed cluster would look like
    // services without endpoints, and their traffic would be rejected.
    let Some(initial) = first_complete_view(&mut input, &agent.metrics, &mut shutdown).await else {
        tracing::info!("stopped before the first sync");
        return Ok(());
    };
    agent.sync(&input, initial, Some(started));
    // Program first, attach second: once attached, the datapath serves current state.
    let links = watch_links(ebpf, &agent.config, &agent.metrics)?;
    // Interfaces come and go on their own schedule; the watcher stops with the agent.
    let _links = AbortOnDrop(tokio::spawn(links.run()));

    let mut gc = tokio::time::interval(agent.config.gc_interval);
    gc.tick().await;
    tracing::info!(pin_dir = %agent.config.pin_dir.display(), "ready");
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            wakeup = input.wait() => {
                let Some(wakeup) = wakeup else {
                    anyhow::bail!("the input stopped");
                };
                let seen = Instant::now();
                agent.health.queued(seen);
                tokio::time::sleep(DEBOUNCE).await;
                let changes = input.take(wakeup, &agent.metrics);
                agent.sync(&input, changes, Some(seen));
            }
            _ = gc.tick() => agent.collect_garbage(),
            () = retry_sleep(agent.retry), if agent.retry.is_some() => {
                agent.sync(&input, Vec::new(), None);
            }
        }
    }
    tracing::info!(
        "stopping; the datapath stays attached and keeps serving the last state \
         (`kproxy cleanup` removes it)"
    );
    Ok(())
}

/// Attaches to the interfaces `config` selects now; the watcher returned follows them.
fn watch_links(ebpf: aya::Ebpf, config: &AgentConfig, metrics: &Metrics) -> Result<LinkWatcher> {
    let selection = Selection {
        tc: IfacePatterns(config.tc_ifaces.clone()),
        xdp: IfacePatterns(config.xdp_ifaces.clone()),
        pod: config.pod_interfaces.clone(),
    };
    let metrics = LinkMetrics {
        attached: metrics.attached_interfaces.clone(),
        errors: metrics.attach_errors_total.clone(),
    };
    LinkWatcher::start(ebpf, &config.pin_dir, selection, metrics)
}

/// Stops a task when dropped, however `run` returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sleeps until the retry is due (never, without one).
async fn retry_sleep(retry: Option<(Instant, Duration)>) {
    match retry {
        Some((at, _)) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Starts the HTTP endpoints that are turned on.
async fn serve_http(http: &HttpConfig, health: &Arc<Health>, registry: Registry) -> Result<()> {
    if let Some(addr) = http.healthz {
        crate::http::serve(addr, crate::http::health_routes(health.clone()), "healthz").await?;
    }
    if let Some(addr) = http.metrics {
        crate::http::serve(
            addr,
            crate::http::metrics_routes(Arc::new(registry)),
            "metrics",
        )
        .await?;
    }
    Ok(())
}

/// Collects changes until the input has a complete view of the cluster. `None` if
/// `shutdown` came first.
async fn first_complete_view(
    input: &mut Input,
    metrics: &Metrics,
    shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Option<Vec<Change>> {
    let mut changes = match input {
        Input::Manifests { .. } => input.take(Wakeup::Resync, metrics),
        Input::Api { .. } => Vec::new(),
    };
    while !input.synced() {
        tokio::select! {
            () = &mut *shutdown => return None,
            wakeup = input.wait() => {
                let wakeup = wakeup?;
                changes.extend(input.take(wakeup, metrics));
            }
        }
    }
    Some(changes)
}

impl Agent {
    /// Applies `changes` to the cluster model, recomputes the services they touch and writes
    /// the differences. `seen` is when the first of them arrived.
    fn sync(&mut self, input: &Input, changes: Vec<Change>, seen: Option<Instant>) {
        let started = Instant::now();
        let triggers: Vec<SystemTime> = changes.iter().filter_map(trigger_time).collect();
        let keys = self.cluster.apply(changes);
        let model_done = Instant::now();
        let report = self
            .programmed
            .sync_keys(self.cluster.desired(), &keys, &mut self.services);
        let elapsed = started.elapsed();
        let (model, write) = (model_done - started, model_done.elapsed());
        self.health.programmed(input.synced());

        let now = SystemTime::now();
        for trigger in triggers {
            if let Ok(latency) = now.duration_since(trigger) {
                self.metrics
                    .network_programming_duration_seconds
                    .observe(latency.as_secs_f64());
            }
        }
        let problems: Vec<Problem> = input
            .problems()
            .into_iter()
            .chain(self.cluster.problems())
            .chain(report.problems.iter().cloned())
            .map(|p| input.locate(p))
            .collect();
        self.report_problems(&problems);
        let unwritten = report
            .problems
            .iter()
            .any(|p| p.kind == ProblemKind::Datapath);
        self.retry = unwritten.then(|| {
            let delay = self
                .retry
                .map_or(RETRY_FIRST, |(_, last)| (last * 2).min(RETRY_MAX));
            (Instant::now() + delay, delay)
        });

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
                ipv6_not_programmed = report.ipv6_skipped,
                elapsed_us = micros(elapsed),
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
        match self.node_addrs.refresh() {
            Ok(true) => {
                tracing::info!(addresses = ?self.node_addrs.addresses(), "node addresses changed");
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "reading the node's addresses failed");
            }
        }
        let live = Live::of(&self.programmed);
        match self.flows.collect_garbage(
            &self.config.conntrack,
            &live,
            monotonic_ns(),
            self.config.sizes.conntrack as usize,
        ) {
            Ok(stats) => {
                self.metrics.conntrack_flows.set(gauge(stats.flows));
                // When the reply table is full, new flows are dropped (and unanswered ones
                // are dropped early to make room). Say so while it is close to happening.
                let capacity = u64::from(self.config.sizes.conntrack);
                let nearly_full = stats.replies as u64 * 10 >= capacity * 9;
                if nearly_full && !self.conntrack_nearly_full {
                    tracing::warn!(
                        replies = stats.replies,
                        capacity,
                        "conntrack table over 90% full; raise --ct-max"
                    );
                }
                self.conntrack_nearly_full = nearly_full;
                self.metrics.conntrack_expired_total.inc_by(
                    (stats.expired + stats.service_gone + stats.orphans + stats.early_dropped)
                        as u64,
                );
                if stats != GcStats::default() {
                    tracing::debug!(?stats, "conntrack garbage collected");
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "conntrack garbage collection failed");
            }
        }
    }
}

/// What garbage collection asks about the programmed services.
struct Live {
    frontends: HashSet<ServiceKey>,
    backends: HashSet<u32>,
}

impl Live {
    fn of(programmed: &Programmed) -> Self {
        Self {
            frontends: programmed
                .frontends()
                .keys()
                .filter_map(wire::service_key)
                .collect(),
            backends: programmed.backend_ids(),
        }
    }
}

impl Liveness for Live {
    fn frontend_exists(&self, vip: u32, port: u16, proto: u8) -> bool {
        self.frontends.contains(&ServiceKey {
            addr: vip,
            port,
            proto,
            scope: 0,
        })
    }

    fn backend_exists(&self, id: u32) -> bool {
        self.backends.contains(&id)
    }
}

/// When the change an EndpointSlice update carries was triggered (its
/// `endpoints.kubernetes.io/last-change-trigger-time`), for the programming latency.
fn trigger_time(change: &Change) -> Option<SystemTime> {
    let Change::Slice(_, Some(slice)) = change else {
        return None;
    };
    let stamp = slice
        .metadata
        .annotations
        .as_ref()?
        .get(TRIGGER_TIME_ANNOTATION)?;
    let time = k8s_openapi::chrono::DateTime::parse_from_rfc3339(stamp).ok()?;
    Some(SystemTime::from(time))
}
