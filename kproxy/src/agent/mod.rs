//! `kproxy run`: load and attach the datapath, then keep it in step with the cluster (the
//! Kubernetes API or a manifests path).

mod drift_schedule;
mod explain;
mod input;
mod unsliced;

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    ops::Bound,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};
use drift_schedule::DriftSchedule;
use input::{Input, Wakeup};
use kproxy_common::{
    config::{CFG_F_LOCALHOST_NODEPORTS, Config},
    names,
};
use prometheus_client::registry::Registry;
use tokio::{sync::mpsc, task::JoinHandle};
use unsliced::Unsliced;

use crate::{
    dataplane::{
        ahead::{self, LinkedAhead},
        client_filter,
        links::{
            LinkMetrics, LinkWatcher,
            select::{IfacePattern, IfacePatterns, PodInterfaces, Selection},
        },
        load::{self, MapSizes, PinnedState},
        maps::{FlowMaps, ServiceMaps, monotonic_ns},
        node_addrs::{NodeAddrs, NodePortAddresses},
        socket_lb::{self, LoadTimeConstants, SocketLbConfig},
        stale_sockets::{self, Swept},
    },
    healthcheck::{self, HealthCheckMetrics, HealthCheckServers},
    http::{
        Health,
        agent_api::{AgentRequest, FRONTEND_PAGE, FrontendName, FrontendPage, VerifyReport},
    },
    memory,
    metrics::{
        KindLabel, Metrics,
        datapath::{BackendLabels, DatapathCollector, FrontendLabels, Names},
        gauge, kube_proxy,
        process::ThreadTime,
    },
    model::{
        Change, ClusterState, Desired, Frontend, FrontendKey, FrontendKind, LbPolicy,
        LocalDetection, NodeInfo, Scope,
        local_traffic::{LOCAL_CONFIG_FLAGS, LocalConfig},
    },
    problem::{Problem, ProblemKind},
    source::files::ManifestSource,
    sync::{
        Datapath, Programmed, SyncReport,
        gc::{GcPass, Generation, LivenessBuilder, ProgrammedLiveness, Taken},
    },
};

/// Where the agent reads Services, EndpointSlices and its Node from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A manifest file or directory, watched.
    Manifests(PathBuf),
    /// The Kubernetes API, through a kubeconfig or the in-cluster configuration.
    Api(crate::source::api::ApiAccess),
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
    /// An address that cannot be bound fails the start (else: logged, retried).
    pub bind_hard_fail: bool,
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
    pub pin_dir: PathBuf,
    pub sizes: MapSizes,
    /// `--socket-lb` and `--cgroup-root`.
    pub socket_lb: SocketLbConfig,
    /// `--lb-algorithm` and `--maglev-scope`.
    pub lb: LbPolicy,
    /// Conntrack timeouts (`KP_CONFIG`; its flags come from the fields below).
    pub conntrack: Config,
    /// `--nodeport-addresses`.
    pub nodeport_addresses: NodePortAddresses,
    /// `--detect-local-mode` and what it needs.
    pub local_detection: LocalDetection,
    /// `--masquerade-all`.
    pub masquerade_all: bool,
    /// `--bind-address`: this node's primary IP of its family, instead of the Node's.
    pub primary_ip: Option<std::net::IpAddr>,
    /// `--metrics-per-backend`: per-backend series on `/metrics`.
    pub metrics_per_backend: bool,
    /// `--oom-score-adj`, applied to the agent's own process at start.
    pub oom_score_adj: Option<i32>,
    /// How often the service maps are compared with what the agent programmed (and
    /// repaired); `None`: only when asked (`kproxy verify`).
    pub drift_check_period: Option<Duration>,
    /// `--iptables-localhost-nodeports`: NodePorts on 127.0.0.1 too.
    pub localhost_nodeports: bool,
    /// How often expired conntrack entries are deleted.
    pub gc_interval: Duration,
    /// How often the manifests are re-read even without a file event (a safety net; the
    /// API source relies on its watches).
    pub resync_interval: Duration,
    /// Changes arrive in bursts (an editor truncates, writes, chmods; a rollout updates many
    /// EndpointSlices): what arrives within this long is taken as one sync (see `Pace`).
    pub debounce: Duration,
}

impl AgentConfig {
    /// The model of the cluster this configuration asks for, before any object arrives.
    fn cluster_state(&self) -> ClusterState {
        ClusterState::for_node(&self.node_name, self.primary_ip).with_lb_policy(self.lb)
    }
}

/// After a sync that could not write everything (a full map), the failed frontends are tried
/// again without waiting for a change in the cluster (room may have been made meanwhile, or
/// by the same sync: service port ids freed by a sync are reused from the next one on), with
/// the delay doubling up to `RETRY_MAX` while they keep failing.
const RETRY_FIRST: Duration = Duration::from_secs(1);

/// Frontends taken per step of a conntrack collection's view of what is programmed; changes
/// are synced between steps. At 100,000 Services (a manifests start, by hand, the debug
/// log's `longest_step_us`) the longest step held the agent's thread 3.9-8.1 ms, the view
/// taken at once 30-39 ms (steps of 10,000: 6-8.6 ms).
const LIVENESS_STEP: usize = 5_000;

/// The metrics' names are rebuilt at most this often (each rebuild relabels every series).
const NAMES_EVERY: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_mins(1);

/// Frontends a sync adds, changes or removes from which the heap's free pages are given
/// back after it (see `memory`).
const LARGE_SYNC: usize = 1000;

struct Agent {
    config: AgentConfig,
    /// The node's own addresses in the datapath, refreshed with each collection and when
    /// the Node changes.
    node_addrs: NodeAddrs,
    /// The Node the node-dependent datapath state (NodePort addresses, local-traffic
    /// detection) was last written for; `None` before the first sync.
    node_applied: Option<NodeInfo>,
    cluster: ClusterState,
    services: ServiceMaps,
    flows: FlowMaps,
    /// The flow maps conntrack collection works on, on a thread of its own so a pass over
    /// hundreds of thousands of flows never holds up a sync; `None` while a pass runs.
    collector: Option<FlowMaps>,
    /// Advanced by every change to what is programmed: a pass started before it does not
    /// delete anything for being gone (see `gc::Liveness::current`).
    generation: Generation,
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
    /// The syncs of a first view written while it is still listed (see
    /// `first_complete_view`), logged as one sync when the view is complete.
    first_view: Option<SyncTally>,
    /// Frontends came or went since the metrics last learned their names.
    names_stale: bool,
    /// When they were last rebuilt (`None`: never).
    names_at: Option<Instant>,
    /// The `KP_RETIRED` stamp the last sweep for stale UDP sockets started from.
    sockets_swept_through: u64,
}

/// What a sync did; or the syncs of a first view written in parts, so far.
#[derive(Debug, Default)]
struct SyncTally {
    syncs: u32,
    added: usize,
    map_ops: usize,
    elapsed: Duration,
    model: Duration,
    write: Duration,
}

/// When the agent's loop woke for a change, and what its thread had had of the CPU then.
#[derive(Clone, Copy, Debug)]
struct Seen {
    at: Instant,
    thread: Option<ThreadTime>,
}

impl Seen {
    fn now() -> Self {
        Self {
            at: Instant::now(),
            thread: ThreadTime::now(),
        }
    }

    /// At `at`, without the thread's account then.
    fn at(at: Instant) -> Self {
        Self { at, thread: None }
    }

    /// What the thread has had since (see `ThreadTime`).
    fn thread_since(self) -> Option<ThreadTime> {
        Some(ThreadTime::now()?.since(self.thread?))
    }
}

impl SyncTally {
    fn add(&mut self, other: &SyncTally) {
        self.syncs += other.syncs;
        self.added += other.added;
        self.map_ops += other.map_ops;
        self.elapsed += other.elapsed;
        self.model += other.model;
        self.write += other.write;
    }
}

/// Runs until `shutdown` resolves. The datapath stays attached afterwards.
pub async fn run(
    config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let started = Instant::now();
    adjust_oom_score(config.oom_score_adj);
    let (registry, metrics, health_check_metrics) = registry(&config);
    let health = Arc::new(Health::new(config.http.healthz_timeout));
    // The first programming is a change waiting from the start.
    health.queued(started);
    let mut drift_requests = serve_http(&config.http, &health, registry).await?;
    // aya's loader before any list: its BTF parse is freed before they come (`load::loader`).
    let loader = loader(&config)?;
    // The input next: the API lists while the kernel verifies the programs (most of a
    // start), the watches' first answers waiting in their channel.
    let mut input = open_input(&config, &metrics).await?;
    let (pin_dir, sizes) = (config.pin_dir.clone(), config.sizes);
    let xdp = !config.xdp_ifaces.is_empty();
    let (unverified, pinned) =
        tokio::task::spawn_blocking(move || load::open_maps_with(loader, &pin_dir, &sizes))
            .await
            .context("creating the maps")??;
    tracing::info!(
        ?pinned,
        took_ms = started.elapsed().as_millis(),
        "maps in place"
    );
    // The kernel verifies the programs on threads of its own while the first view of the
    // cluster is listed and written into the maps: the programs are attached only after
    // that, so they never serve a half-written state either way.
    let mut verifying = tokio::task::spawn_blocking(move || {
        let verified = unverified.verify(xdp);
        tracing::info!(
            took_ms = started.elapsed().as_millis(),
            ok = verified.is_ok(),
            "programs verified"
        );
        verified
    });
    let linking = link_ahead(&config);
    let (node_addrs, flows) = open_node_config(&config)?;
    let (services, programmed) = open_service_maps(&config)?;
    metrics
        .conntrack_capacity
        .set(i64::from(config.sizes.conntrack));
    metrics.map_capacities(&pinned_filling_maps(&config));
    let mut agent = Agent {
        cluster: config.cluster_state(),
        node_addrs,
        node_applied: None,
        config,
        services,
        flows,
        collector: None,
        generation: Generation::default(),
        programmed,
        metrics,
        health,
        reported: BTreeSet::new(),
        conntrack_nearly_full: false,
        retry: None,
        first_view: None,
        names_stale: false,
        names_at: None,
        sockets_swept_through: 0,
    };
    tokio::pin!(shutdown);

    // Nothing is served from a partial view: a half-listed cluster would look like services
    // without endpoints, and their traffic would be rejected. Maps no attached program reads
    // (fresh ones, or replacements of another layout's; links made ahead pass everything)
    // are written while the view is listed and attached once it is complete; adopted ones
    // are written only then.
    let early = pinned != PinnedState::Adopted;
    let Some(initial) = first_complete_view(&mut input, &mut agent, early, &mut shutdown).await
    else {
        tracing::info!("stopped before the first sync");
        return Ok(());
    };
    tracing::info!(
        took_ms = started.elapsed().as_millis(),
        "first complete view of the cluster"
    );
    agent.sync(&input, initial, Some(Seen::at(started)));
    let ebpf = tokio::select! {
        () = &mut shutdown => {
            tracing::info!("stopped while the kernel verified the programs");
            return Ok(());
        }
        verified = &mut verifying => verified.context("verifying the programs")??,
    };
    // healthCheckNodePorts listen where kube-proxy's do: on every address, or on the
    // NodePort addresses when --nodeport-addresses narrows them (as found at start).
    let mut health_checks = HealthCheckServers::new(
        health_check_bind_addresses(&agent),
        Arc::clone(&agent.health),
        health_check_metrics,
    );
    agent.sync_health_checks(&mut health_checks).await;
    // Program first, attach second: once attached, the datapath serves current state.
    let links = attach(ebpf, &mut agent, linked_ahead(linking).await?)?;
    // Interfaces come and go on their own schedule; the watcher stops with the agent.
    let _links = AbortOnDrop(tokio::spawn(links.run()));
    log_ready(&agent.config.pin_dir, started);
    serve(
        &mut agent,
        &mut input,
        &mut health_checks,
        &mut drift_requests,
        shutdown,
    )
    .await?;
    tracing::info!(
        "stopping; the datapath stays attached and keeps serving the last state \
         (`kproxy cleanup` removes it)"
    );
    Ok(())
}

/// aya's loader (`load::loader`), with the object's load-time constants for `config`.
fn loader(config: &AgentConfig) -> Result<aya::EbpfLoader<'static>> {
    let mut loader = load::loader();
    LoadTimeConstants::for_mode(config.socket_lb.mode)?.apply(&mut loader);
    Ok(loader)
}

/// `/metrics`' registry: kproxy's metrics (the datapath's read from `config.pin_dir` at each
/// scrape), kube-proxy's, the process's.
fn registry(config: &AgentConfig) -> (Registry, Metrics, HealthCheckMetrics) {
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let health_check_metrics = HealthCheckMetrics::new(registry.sub_registry_with_prefix("kproxy"));
    registry
        .sub_registry_with_prefix("kproxy")
        .register_collector(Box::new(DatapathCollector::new(
            config.pin_dir.clone(),
            metrics.frontend_names.clone(),
        )));
    (registry, metrics, health_check_metrics)
}

/// Sets the agent's own OOM score adjustment, as kube-proxy does (-999 by default: the
/// node's proxy is the last thing to kill). Failing is not fatal, as in kube-proxy: the
/// agent works the same, only less protected.
fn adjust_oom_score(score: Option<i32>) {
    let Some(score) = score else {
        return;
    };
    match std::fs::write("/proc/self/oom_score_adj", score.to_string()) {
        Ok(()) => tracing::debug!(score, "oom_score_adj set"),
        Err(e) => tracing::info!(score, error = %e, "cannot set oom_score_adj"),
    }
}

/// The agent's input: the manifests, or the API's watches (their lists start at once).
async fn open_input(config: &AgentConfig, metrics: &Metrics) -> Result<Input> {
    Ok(match &config.source {
        Source::Manifests(path) => Input::manifests(
            ManifestSource::new(path).with_node(&config.node_name),
            path,
            config.resync_interval,
        )?,
        Source::Api(access) => Input::api(access, &config.node_name, &metrics.rest_client).await?,
    })
}

/// The agent's life once ready: syncs on changes, retries, conntrack collection beside them.
async fn serve(
    agent: &mut Agent,
    input: &mut Input,
    health_checks: &mut HealthCheckServers,
    agent_requests: &mut mpsc::Receiver<AgentRequest>,
    mut shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<()> {
    // Without a period (0) the drift check runs only when asked.
    let mut drift = DriftSchedule::new(agent.config.drift_check_period);
    let mut gc = tokio::time::interval(agent.config.gc_interval);
    // A pass that outlasts the interval is followed by one a whole interval later, not by
    // the ticks it missed in a burst.
    gc.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    gc.tick().await;
    let mut liveness: Option<LivenessBuilder> = None;
    let mut longest_step = Duration::ZERO;
    let mut collection: Option<JoinHandle<Collected>> = None;
    let mut sweep: Option<JoinHandle<Result<Swept>>> = None;
    let mut last_sync: Option<Instant> = None;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            wakeup = input.wait() => {
                let Some(wakeup) = wakeup else {
                    anyhow::bail!("the input stopped");
                };
                let seen = Seen::now();
                drift.changed(seen.at.into());
                agent.health.queued(seen.at);
                let pause = input.pace().pause(agent.config.debounce, last_sync, seen.at);
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
                last_sync = Some(Instant::now());
                let changes = input.take(wakeup, &agent.metrics);
                agent.sync(input, changes, Some(seen));
                agent.sync_health_checks(health_checks).await;
            }
            _ = gc.tick(), if collection.is_none() && liveness.is_none() => {
                liveness = Some(agent.start_liveness());
            }
            () = std::future::ready(()), if liveness.is_some() => {
                let builder = liveness.take().expect("guarded by the condition");
                let step = Instant::now();
                let taken = builder.step(&agent.programmed, LIVENESS_STEP);
                longest_step = longest_step.max(step.elapsed());
                match taken {
                    Taken::Whole(live) => {
                        // How long the agent's thread was held at once (see `LIVENESS_STEP`).
                        tracing::debug!(
                            longest_step_us = longest_step.as_micros(),
                            "conntrack collection: what is programmed taken"
                        );
                        longest_step = Duration::ZERO;
                        collection = agent.start_collection(live);
                    }
                    Taken::Partly(builder) => liveness = Some(builder),
                }
            }
            done = async { collection.as_mut().expect("guarded by the condition").await },
                if collection.is_some() =>
            {
                collection = None;
                agent.collection_done(done);
            }
            () = std::future::ready(()), if sweep.is_none() && agent.sweep_due() => {
                sweep = Some(agent.start_sweep());
            }
            done = async { sweep.as_mut().expect("guarded by the condition").await },
                if sweep.is_some() =>
            {
                sweep = None;
                agent.sweep_done(done);
            }
            () = retry_sleep(agent.retry), if agent.retry.is_some() => {
                agent.sync(input, Vec::new(), None);
                agent.sync_health_checks(health_checks).await;
            }
            () = tokio::time::sleep_until(agent.names_due().into()),
                if agent.names_stale && input.synced() =>
            {
                agent.name_frontends();
            }
            () = drift.due() => {
                drift.ran();
                agent.check_drift(input);
            }
            Some(request) = agent_requests.recv() => match request {
                AgentRequest::Verify(reply) => {
                    let _ = reply.send(agent.check_drift(input));
                }
                AgentRequest::Frontends { after, reply } => {
                    let _ = reply.send(agent.frontend_page(after));
                }
                AgentRequest::Explain { dst, proto, reply } => {
                    let _ = reply.send(agent.explain(dst, proto));
                }
            },
        }
    }
    Ok(())
}

/// A drift check that could not read the maps (of `frontends` programmed).
fn unreadable_maps(frontends: usize, e: &anyhow::Error) -> VerifyReport {
    tracing::error!(
        error = format!("{e:#}"),
        "drift check: cannot read the maps"
    );
    VerifyReport {
        frontends,
        error: Some(format!("{e:#}")),
        ..VerifyReport::default()
    }
}

/// What the pinned maps hold, as the previous agent left it, with inconsistencies cleaned.
fn recover_programmed(services: &mut ServiceMaps, sizes: &MapSizes) -> Result<Programmed> {
    services.track_free_ports()?;
    let mut held = services.snapshot()?;
    services.track_filter(&held)?;
    let (programmed, cleanup) =
        Programmed::recover_for(&mut held, sizes.services, sizes.maglev_table_size);
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
    Ok(programmed)
}

/// Opens the service maps and recovers what a previous agent programmed into them.
fn open_service_maps(config: &AgentConfig) -> Result<(ServiceMaps, Programmed)> {
    let mut services = ServiceMaps::open(&config.pin_dir)?;
    if !services.serves_ipv6() {
        tracing::warn!(
            "the eBPF object has no IPv6 maps: serving IPv4 only (IPv6 frontends are \
             modelled, not programmed)"
        );
    }
    let programmed = recover_programmed(&mut services, &config.sizes)?;
    Ok((services, programmed))
}

/// The maps that fill with the cluster and its traffic that the loaded object has, with
/// their capacities: one without the IPv6 datapath pins no IPv6 maps.
fn pinned_filling_maps(config: &AgentConfig) -> Vec<(&'static str, u32)> {
    config
        .sizes
        .filling_maps()
        .into_iter()
        .filter(|(name, _)| load::map_pin_path(&config.pin_dir, name).exists())
        .collect()
}

/// Where healthCheckNodePorts listen: kube-proxy binds them on its NodePort addresses (of
/// both families), or on every address when they are not narrowed.
fn health_check_bind_addresses(agent: &Agent) -> Vec<std::net::IpAddr> {
    match agent.config.nodeport_addresses {
        NodePortAddresses::All => healthcheck::ALL_ADDRESSES.to_vec(),
        _ => agent.node_addrs.node_port_addresses().into_iter().collect(),
    }
}

/// Makes the TC links on a thread of its own, with a program that passes everything
/// (`dataplane::ahead`), so that attaching after the first sync only swaps kproxy's in.
fn link_ahead(config: &AgentConfig) -> JoinHandle<Result<LinkedAhead>> {
    let (pin_dir, selection) = (config.pin_dir.clone(), selection(config));
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let ahead = ahead::link_ahead(&pin_dir, &selection)?;
        tracing::info!(
            links = ahead.len(),
            took_ms = started.elapsed().as_millis(),
            "links made ahead"
        );
        Ok(ahead)
    })
}

/// The links [`link_ahead`] made; none if it failed (attaching then makes them).
async fn linked_ahead(linking: JoinHandle<Result<LinkedAhead>>) -> Result<LinkedAhead> {
    match linking.await.context("making links ahead")? {
        Ok(ahead) => Ok(ahead),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "no links made ahead; attaching makes them");
            Ok(LinkedAhead::default())
        }
    }
}

/// Attaches the socket programs as `--socket-lb` says, and the packet programs to the
/// interfaces `config` selects now; the watcher returned follows those.
fn attach(mut ebpf: aya::Ebpf, agent: &mut Agent, ahead: LinkedAhead) -> Result<LinkWatcher> {
    let config = &agent.config;
    // The reply lookups stop trusting the client bitmap until it covers the entries of the
    // programs replaced, which may not have set its bits (see `client_filter`).
    client_filter::unready(&config.pin_dir)?;
    socket_lb::apply(&mut ebpf, &config.pin_dir, &config.socket_lb)
        .context("socket-level load balancing (--socket-lb)")?;
    let links = watch_links(ebpf, config, &agent.metrics, ahead)?;
    agent.services.seed_clients().context(names::MAP_CLIENTS)?;
    agent.publish_client_bits();
    Ok(links)
}

/// Attaches to the interfaces `config` selects now; the watcher returned follows them.
fn watch_links(
    ebpf: aya::Ebpf,
    config: &AgentConfig,
    metrics: &Metrics,
    ahead: LinkedAhead,
) -> Result<LinkWatcher> {
    let metrics = LinkMetrics {
        attached: metrics.attached_interfaces.clone(),
        errors: metrics.attach_errors_total.clone(),
    };
    LinkWatcher::start(ebpf, &config.pin_dir, selection(config), metrics, ahead)
}

/// The interfaces `config` has kproxy serve.
fn selection(config: &AgentConfig) -> Selection {
    Selection {
        tc: IfacePatterns(config.tc_ifaces.clone()),
        xdp: IfacePatterns(config.xdp_ifaces.clone()),
        // Served interfaces leading to pods get IFACE_F_POD (local-traffic detection by
        // interface).
        pod: config.local_detection.by_interface().then(|| {
            let detection = config.local_detection.clone();
            PodInterfaces::new(move |name| detection.pod_interface(name))
        }),
    }
}

/// Stops a task when dropped, however `run` returns.
struct AbortOnDrop(JoinHandle<()>);

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

/// Starts the HTTP endpoints that are turned on. The metrics server also takes `POST
/// /verify`; its requests arrive on the returned receiver.
async fn serve_http(
    http: &HttpConfig,
    health: &Arc<Health>,
    registry: Registry,
) -> Result<mpsc::Receiver<AgentRequest>> {
    let (verify_requests, verify_rx) = mpsc::channel(4);
    if let Some(addr) = http.healthz {
        crate::http::serve(
            addr,
            crate::http::health_routes(health.clone()),
            "healthz",
            http.bind_hard_fail,
        )
        .await?;
    }
    if let Some(addr) = http.metrics {
        let routes = crate::http::metrics_routes(Arc::new(registry))
            .merge(crate::http::agent_api::routes(verify_requests));
        crate::http::serve(addr, routes, "metrics", http.bind_hard_fail).await?;
    }
    Ok(verify_rx)
}

/// Says the agent serves, with what its start took: its duration, and the CPU time (all its
/// threads, the verifier's included) and page faults, which the rest of the node's load
/// moves less than the duration.
fn log_ready(pin_dir: &std::path::Path, started: Instant) {
    let spent = crate::metrics::process::Spent::so_far();
    tracing::info!(
        pin_dir = %pin_dir.display(),
        took_ms = started.elapsed().as_millis(),
        cpu_ms = spent.cpu_ms,
        minor_faults = spent.minor_faults,
        peak_rss_kib = spent.peak_rss_kib,
        "ready"
    );
}

/// Collects changes until the input has a complete view of the cluster; returns those not
/// written yet. With `early`, each batch is written as it arrives: converting and writing a
/// large cluster then overlaps its listing. A Service waits for a slice of its own while
/// the EndpointSlices are being listed, though: one written before its slice is written
/// twice, first without endpoints (at 100,000 Services that doubled the first sync); and
/// waiting for the whole slice list instead left every Service to be written after it
/// (1.4–1.7 s at 100,000, after the lists). `None` if `shutdown` came first.
async fn first_complete_view(
    input: &mut Input,
    agent: &mut Agent,
    early: bool,
    shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Option<Vec<Change>> {
    let mut changes = match input {
        Input::Manifests { .. } => input.take(Wakeup::Resync, &agent.metrics),
        Input::Api { .. } => Vec::new(),
    };
    if early {
        agent.first_view = Some(SyncTally::default());
    }
    // Past --healthz-timeout without a complete view, the agent says why once: a restart
    // would not help (the API server is unreachable, or the role lacks a verb), and the
    // datapath a previous agent pinned keeps serving meanwhile.
    let overdue = tokio::time::sleep(agent.config.http.healthz_timeout);
    tokio::pin!(overdue);
    let mut said = false;
    let mut unsliced = Unsliced::default();
    while !input.synced() {
        if early {
            let ready = if input.slices_listed() {
                let mut ready = unsliced.release();
                ready.append(&mut changes);
                ready
            } else {
                unsliced.sort(&agent.cluster, std::mem::take(&mut changes))
            };
            if !ready.is_empty() {
                agent.sync(input, ready, None);
            }
        }
        tokio::select! {
            () = &mut *shutdown => return None,
            wakeup = input.wait() => {
                let wakeup = wakeup?;
                changes.extend(input.take(wakeup, &agent.metrics));
            }
            () = &mut overdue, if !said => {
                said = true;
                tracing::warn!(
                    waited_s = agent.config.http.healthz_timeout.as_secs(),
                    "no complete view of the cluster yet (see the watch errors): not ready, \
                     /healthz failing, /livez alive (a restart would not help); whatever \
                     datapath a previous agent left keeps serving its last state"
                );
            }
        }
    }
    agent.metrics.cluster_view_synced.set(1);
    // What waits goes first: anything in `changes` came after it.
    let mut rest = unsliced.release();
    rest.append(&mut changes);
    Some(rest)
}

impl Agent {
    /// Brings the healthCheckNodePort servers in step with the services; a port that could
    /// not be listened on is tried again with the next retry.
    async fn sync_health_checks(&mut self, servers: &mut HealthCheckServers) {
        servers.sync(&self.cluster.health_checks()).await;
        if self.retry.is_none() && servers.failing().next().is_some() {
            self.retry = Some((Instant::now() + RETRY_FIRST, RETRY_FIRST));
        }
    }

    /// The Service behind each frontend of the desired state, for `kproxy services`: a
    /// JSON list of `FrontendName`s, each written as it is made: a list of them made first
    /// held every name twice, as values and as text, while the answer was written (at
    /// 100,000 frontends, a moment in the agent's peak memory).
    fn frontend_page(&self, after: Option<FrontendKey>) -> FrontendPage {
        frontend_page(self.cluster.desired(), after, |key, frontend| {
            self.frontend_name(key, frontend)
        })
    }

    /// The Service behind `frontend` (of `key`).
    fn frontend_name(&self, key: &FrontendKey, frontend: &Frontend) -> FrontendName {
        FrontendName {
            frontend: key.with_scope(Scope::All).to_string(),
            scope: match key.scope {
                Scope::All => "all",
                Scope::Internal => "internal",
            }
            .into(),
            service: frontend.service.key.to_string(),
            port: frontend.service.port.to_string(),
            kind: match frontend.kind {
                FrontendKind::ClusterIp => "ClusterIP",
                FrontendKind::NodePort => "NodePort",
                FrontendKind::ExternalIp => "ExternalIP",
                FrontendKind::LoadBalancer => "LoadBalancer",
            }
            .into(),
            internal_traffic_policy: self
                .cluster
                .internal_local(key)
                .map(|local| if local { "Local" } else { "Cluster" }.into()),
            external_traffic_policy: frontend.kind.is_external().then(|| {
                let local = frontend.external_local || key.scope == Scope::Internal;
                if local { "Local" } else { "Cluster" }.into()
            }),
        }
    }

    /// Compares the service maps with what the agent programmed; logs and counts every
    /// difference, and repairs them (see `sync::verify`).
    fn check_drift(&mut self, input: &Input) -> VerifyReport {
        let started = Instant::now();
        let frontends = self.programmed.frontends().len();
        self.metrics.datapath_checks_total.inc();
        // The usual answer, found walking the maps a chunk at a time; only a difference
        // has them read whole and recovered to say what it is.
        match self.programmed.holds(&self.services) {
            Ok(true) => {
                tracing::debug!(
                    frontends,
                    took_ms = started.elapsed().as_millis(),
                    "drift check: the maps hold what was programmed"
                );
                self.metrics.datapath_drift.set(0);
                return VerifyReport {
                    frontends,
                    ..VerifyReport::default()
                };
            }
            Ok(false) => {}
            Err(e) => return unreadable_maps(frontends, &e),
        }
        let mut snapshot = match self.services.snapshot() {
            Ok(snapshot) => snapshot,
            Err(e) => return unreadable_maps(frontends, &e),
        };
        let check = self
            .programmed
            .check_whole(&mut snapshot, self.config.sizes.services);
        drop(snapshot);
        memory::return_free_pages("drift check");
        let drift: Vec<String> = check.drift.iter().map(ToString::to_string).collect();
        self.metrics.datapath_drift.set(gauge(drift.len()));
        if drift.is_empty() {
            // The walk is stricter than the comparison (it expects each entry exactly as
            // a sync writes it): seen here, it cost a whole read for nothing.
            tracing::info!(
                frontends,
                took_ms = started.elapsed().as_millis(),
                "drift check: the maps hold what was programmed (found reading them whole)"
            );
            return VerifyReport {
                frontends,
                ..VerifyReport::default()
            };
        }
        self.metrics.datapath_drift_total.inc_by(drift.len() as u64);
        for difference in &drift {
            tracing::warn!(%difference, "drift check: the maps differ from what was programmed");
        }
        let mut error = None;
        for op in self.programmed.repair(check) {
            if let Err(e) = self.services.apply(&op) {
                error = Some(format!("repairing with {op:?}: {e:#}"));
            }
        }
        // The drifted frontends are due: this sync writes what they lack.
        self.sync(input, Vec::new(), None);
        tracing::info!(differences = drift.len(), "drift check: repaired");
        VerifyReport {
            frontends,
            drift,
            error,
        }
    }

    /// Applies `changes` to the cluster model, recomputes the services they touch and writes
    /// the differences. `seen` is when the first of them arrived.
    fn sync(&mut self, input: &Input, changes: Vec<Change>, seen: Option<Seen>) {
        let started = Instant::now();
        // kube-proxy's view: the changes were queued when their first event arrived; a
        // whole view (the first, written in parts), a retry or a resync is a full sync.
        let counted = change_counts(&changes);
        let wall = SystemTime::now();
        self.metrics.kube_proxy.queued(
            counted,
            wall - seen.map_or(Duration::ZERO, |s| s.at.elapsed()),
        );
        let full = self.first_view.is_some() || self.node_applied.is_none() || changes.is_empty();
        let triggers: Vec<SystemTime> = changes.iter().filter_map(trigger_time).collect();
        let keys = self.cluster.apply(changes);
        let model_done = Instant::now();
        let report = self
            .programmed
            .sync_keys(self.cluster.desired(), keys, &mut self.services);
        let node_changed = self.node_applied.as_ref() != Some(self.cluster.node());
        if node_changed {
            self.apply_node();
        }
        if node_changed || report.changed() {
            self.generation.advance();
        }
        // Without a Node object (manifests that define none) the node is not leaving.
        self.health.set_node_eligible(!self.cluster.node().leaving);
        if report.changed() || self.node_applied.is_none() {
            self.write_nodeport_list();
        }
        let elapsed = started.elapsed();
        let since_event = seen.map(|s| s.at.elapsed());
        let thread = seen.and_then(Seen::thread_since);
        let (model, write) = (model_done - started, model_done.elapsed());

        let now = SystemTime::now();
        for trigger in triggers {
            if let Ok(latency) = now.duration_since(trigger) {
                tracing::debug!(
                    trigger = %k8s_openapi::chrono::DateTime::<k8s_openapi::chrono::Utc>::from(trigger)
                        .to_rfc3339_opts(k8s_openapi::chrono::SecondsFormat::Micros, true),
                    latency_ms = latency.as_secs_f64() * 1e3,
                    since_event_ms = since_event.map(|d| d.as_secs_f64() * 1e3),
                    "network programming latency observed"
                );
                self.metrics
                    .network_programming_duration_seconds
                    .observe(latency.as_secs_f64());
                self.metrics.kube_proxy.network_programming(latency);
            }
        }
        // Problems are those of a complete view: while the first lists arrive, a slice
        // whose Service is on a page not read yet looks orphaned, and at 100,000 Services
        // reporting (formatting every problem at each part) cost more than the sync itself.
        if input.synced() {
            let problems: Vec<Problem> = input
                .problems()
                .into_iter()
                .chain(self.cluster.problems())
                .chain(report.problems.iter().cloned())
                .map(|p| input.locate(p))
                .collect();
            self.report_problems(&problems);
        }
        let unwritten = report
            .problems
            .iter()
            .any(|p| p.kind == ProblemKind::Datapath);
        if unwritten {
            self.health.partly_programmed(input.synced(), started);
        } else {
            self.health.programmed(input.synced());
        }
        self.retry = unwritten.then(|| {
            let delay = self
                .retry
                .map_or(RETRY_FIRST, |(_, last)| (last * 2).min(RETRY_MAX));
            (Instant::now() + delay, delay)
        });

        // Named once the view is complete, not after each part of the first one: each
        // naming relabels every frontend. Per-backend series change with every endpoint
        // change: those are renamed at most once a second (see `serve`).
        self.names_stale |= report.added + report.removed > 0
            || (self.config.metrics_per_backend && report.updated > 0);
        if self.names_stale && input.synced() && self.names_due() <= Instant::now() {
            self.name_frontends();
        }
        self.metrics.syncs_total.inc();
        self.metrics
            .sync_duration_seconds
            .observe(elapsed.as_secs_f64());
        self.metrics
            .kube_proxy
            .synced(counted, elapsed, full, !unwritten, SystemTime::now());
        self.metrics.map_ops_total.inc_by(report.ops as u64);
        self.publish_counts();
        let this = SyncTally {
            syncs: 1,
            added: report.added,
            map_ops: report.ops,
            elapsed,
            model,
            write,
        };
        let first_view = self.first_view.is_some();
        self.log_sync(&report, this, (since_event, thread), input.synced());
        // Each part of the first view frees the list pages it was read from, between what
        // the model keeps; a large change frees its plan. Routine syncs free little.
        if first_view || report.added + report.updated + report.removed >= LARGE_SYNC {
            memory::return_free_pages("sync");
        }
    }

    /// Sets the metrics of what the maps hold.
    fn publish_counts(&self) {
        let counts = self.programmed.counts();
        self.metrics
            .services_programmed
            .set(gauge(counts.frontends.total()));
        self.metrics
            .endpoints_programmed
            .set(gauge(counts.taking_connections));
        self.metrics.service_map_entries(&counts);
        if let Some(bits) = self.services.filter_bits() {
            self.metrics.filter_bits(bits);
        }
    }

    /// Sets the metric of `KP_CLIENTS`' bits, which the programs set as flows come: read at
    /// start and with each conntrack collection, not at every sync.
    fn publish_client_bits(&self) {
        if let Some(bits) = self.services.client_bits() {
            self.metrics.client_bits(bits);
        }
    }

    /// When the metrics' names may be rebuilt next.
    fn names_due(&self) -> Instant {
        self.names_at
            .map_or_else(Instant::now, |at| at + NAMES_EVERY)
    }

    /// Tells the metrics which frontend each service port id stands for.
    fn name_frontends(&mut self) {
        // Sized at once: grown by doubling, 100,000 frontends' names held a third more.
        let mut names = Names {
            frontends: Vec::with_capacity(self.programmed.frontends().len()),
            ..Names::default()
        };
        for (key, f) in self.programmed.frontends() {
            let Some(service) = f.service.as_ref() else {
                continue;
            };
            let labels = FrontendLabels::new(key, service);
            if self.config.metrics_per_backend {
                names.backends.extend(
                    f.backends
                        .iter()
                        .chain(&f.standby)
                        .map(|(endpoint, id)| (*id, BackendLabels::new(&labels, *endpoint))),
                );
            }
            names.frontends.push((f.svc_id, labels));
        }
        self.metrics.frontend_names.set(names);
        self.names_stale = false;
        self.names_at = Some(Instant::now());
    }

    /// Logs a sync that changed the datapath (and observes its latency). The syncs of a
    /// first view written in parts are logged once, as the one sync they replace, when the
    /// view is `complete`.
    fn log_sync(
        &mut self,
        report: &SyncReport,
        this: SyncTally,
        (since_event, thread): (Option<Duration>, Option<ThreadTime>),
        complete: bool,
    ) {
        let whole = match self.first_view.take() {
            Some(mut part) => {
                part.add(&this);
                if !complete {
                    self.first_view = Some(part);
                    return;
                }
                part
            }
            None if report.changed() => this,
            None => return,
        };
        if let Some(since_event) = since_event {
            self.metrics
                .event_to_datapath_seconds
                .observe(since_event.as_secs_f64());
        }
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        tracing::info!(
            added = whole.added,
            updated = report.updated,
            removed = report.removed,
            map_ops = whole.map_ops,
            frontends = self.programmed.frontends().len(),
            ipv6_not_programmed = report.ipv6_not_served,
            elapsed_us = micros(whole.elapsed),
            model_us = micros(whole.model),
            write_us = micros(whole.write),
            since_event_us = since_event.map(micros),
            // Of that span, the agent's thread ran and waited for a CPU (preempted):
            ran_us = thread.map(|t| t.ran_ns / 1000),
            runnable_us = thread.map(|t| t.runnable_ns / 1000),
            parts = whole.syncs,
            "synced"
        );
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
        // Every kind is set, to zero when none is present: a scrape never sees a kind
        // missing half-way through, nor a resolved kind linger.
        for kind in ProblemKind::ALL {
            let present = problems.iter().filter(|p| p.kind == kind).count();
            self.metrics
                .problems
                .get_or_create(&KindLabel {
                    kind: kind.label().into(),
                })
                .set(gauge(present));
        }
        self.reported = current;
    }

    /// Writes what depends on the Node: which addresses take NodePorts, and local-traffic
    /// detection by the Node's pod CIDRs.
    fn apply_node(&mut self) {
        let node = self.cluster.node().clone();
        self.refresh_node_addrs(Some(&node));
        if let Err(e) =
            write_local_config(&mut self.flows, &self.config, Some(&node), &self.node_addrs)
        {
            tracing::warn!(error = %format!("{e:#}"), "writing local-traffic detection failed");
            return;
        }
        self.node_applied = Some(node);
        self.write_nodeport_list();
    }

    /// Brings `KP_NODE_ADDRS` in step with the node's addresses (`node`: the Node, once
    /// read).
    fn refresh_node_addrs(&mut self, node: Option<&NodeInfo>) {
        match self
            .node_addrs
            .refresh(&self.config.nodeport_addresses, node)
        {
            Ok(true) => {
                self.generation.advance();
                tracing::info!(
                    addresses = ?self.node_addrs.addresses(),
                    node_ports = ?self.node_addrs.node_port_addresses(),
                    "node addresses changed"
                );
                self.write_nodeport_list();
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "reading the node's addresses failed");
            }
        }
    }

    /// Keeps `KP_NODEPORT_LIST` (IPv4 only) in step with the NodePort addresses and the
    /// frontends programmed on any of them.
    fn write_nodeport_list(&mut self) {
        let programmed = &self.programmed;
        if let Err(e) = self
            .node_addrs
            .write_list(|addr| programmed.has_vip(addr.into()))
        {
            tracing::warn!(error = %format!("{e:#}"), "writing the NodePort address list failed");
        }
    }

    /// Whether backends were retired since the last sweep for stale UDP sockets, which
    /// socket-level load balancing needs.
    fn sweep_due(&self) -> bool {
        self.config.socket_lb.mode.is_on()
            && self.services.last_retired_ns() > self.sockets_swept_through
    }

    /// Starts a sweep for connected UDP sockets pointed at backends no longer in use (see
    /// `stale_sockets`), on a blocking thread.
    fn start_sweep(&mut self) -> JoinHandle<Result<Swept>> {
        self.sockets_swept_through = self.services.last_retired_ns();
        let pin_dir = self.config.pin_dir.clone();
        let netns_dir = self.config.socket_lb.netns_dir.clone();
        tokio::task::spawn_blocking(move || stale_sockets::sweep(&pin_dir, &netns_dir))
    }

    fn sweep_done(&mut self, done: Result<Result<Swept>, tokio::task::JoinError>) {
        match done {
            Ok(Ok(swept)) => {
                self.metrics
                    .stale_udp_sockets_destroyed_total
                    .inc_by(swept.destroyed as u64);
                if swept.candidates > 0 {
                    tracing::info!(
                        sockets = swept.candidates,
                        destroyed = swept.destroyed,
                        "sockets pointed at backends no longer in use: connected UDP ones destroyed"
                    );
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "the sweep for stale UDP sockets failed");
            }
            Err(e) => tracing::warn!(error = %e, "the sweep for stale UDP sockets panicked"),
        }
    }

    /// Starts taking what is programmed now, for a conntrack collection pass to judge
    /// against (see `LivenessBuilder`; `serve` takes it a step at a time between syncs).
    fn start_liveness(&mut self) -> LivenessBuilder {
        let node = self.node_applied.clone();
        self.refresh_node_addrs(node.as_ref());
        LivenessBuilder::start(
            &self.programmed,
            self.node_addrs.node_port_addresses(),
            &self.generation,
        )
    }

    /// Starts a conntrack collection pass on a blocking thread, judging against `live`.
    fn start_collection(&mut self, live: ProgrammedLiveness) -> Option<JoinHandle<Collected>> {
        let mut maps = match self.collector.take() {
            Some(maps) => maps,
            None => match FlowMaps::open(&self.config.pin_dir) {
                Ok(maps) => maps,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "opening the conntrack maps for collection failed");
                    return None;
                }
            },
        };
        let conntrack = self.config.conntrack;
        let capacity = self.config.sizes.conntrack as usize;
        Some(tokio::task::spawn_blocking(move || {
            let stats = maps.collect_garbage(&conntrack, &live, monotonic_ns(), capacity);
            (maps, stats)
        }))
    }

    fn collection_done(&mut self, done: Result<Collected, tokio::task::JoinError>) {
        let stats = match done {
            Ok((maps, stats)) => {
                self.collector = Some(maps);
                stats
            }
            // The maps went with the thread; the next pass opens them again.
            Err(e) => Err(anyhow::anyhow!("the collection thread failed: {e}")),
        };
        match stats {
            Ok(pass) => {
                let total = pass.total();
                self.metrics.conntrack_flows.set(gauge(total.flows));
                self.metrics.flow_map_entries(&pass);
                self.publish_client_bits();
                // When a reply table is full, new flows of its family are dropped (and
                // unanswered ones are dropped early to make room). Say so while it is close
                // to happening.
                let capacity = u64::from(self.config.sizes.conntrack);
                let replies = pass.v4.replies.max(pass.v6.replies);
                let nearly_full = replies as u64 * 10 >= capacity * 9;
                if nearly_full && !self.conntrack_nearly_full {
                    tracing::warn!(
                        replies_ipv4 = pass.v4.replies,
                        replies_ipv6 = pass.v6.replies,
                        capacity,
                        "conntrack table over 90% full; raise --ct-max"
                    );
                }
                self.conntrack_nearly_full = nearly_full;
                self.metrics.conntrack_expired_total.inc_by(
                    (total.expired + total.service_gone + total.orphans + total.early_dropped)
                        as u64,
                );
                if pass != GcPass::default() {
                    tracing::debug!(ipv4 = ?pass.v4, ipv6 = ?pass.v6, "conntrack garbage collected");
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "conntrack garbage collection failed");
            }
        }
    }
}

/// A collection pass's flow maps (returned for the next pass) and what it did.
type Collected = (FlowMaps, Result<GcPass>);

/// Opens `KP_NODE_ADDRS` and the flow maps, and writes the node's addresses and the
/// configuration. Until the cluster is read, what depends on the Node stays as the pinned
/// state says (NodePorts on `primary`, NodeCIDR detection).
fn open_node_config(config: &AgentConfig) -> Result<(NodeAddrs, FlowMaps)> {
    let mut node_addrs = NodeAddrs::open(&config.pin_dir)?;
    node_addrs.set_localhost_node_ports(config.localhost_nodeports);
    node_addrs.refresh(&config.nodeport_addresses, None)?;
    tracing::info!(
        addresses = ?node_addrs.addresses(),
        node_ports = ?node_addrs.node_port_addresses(),
        "node addresses"
    );
    let mut flows = FlowMaps::open(&config.pin_dir)?;
    write_local_config(&mut flows, config, None, &node_addrs)?;
    Ok((node_addrs, flows))
}

/// Writes `KP_CONFIG` (timeouts and the local-traffic flags) and the local CIDRs of both
/// families (`KP_LOCAL_CIDRS`, `KP_LOCAL_CIDRS6`, when the object has it) for `node`
/// (`None`: not read yet, see `LocalDetection::datapath_config`). CIDRs the new configuration adds are written before
/// the flags, those it drops after, so the datapath never detects by an empty set.
fn write_local_config(
    flows: &mut FlowMaps,
    config: &AgentConfig,
    node: Option<&NodeInfo>,
    node_addrs: &NodeAddrs,
) -> Result<()> {
    let pinned = flows.config()?;
    let current = LocalConfig {
        flags: if pinned.initialized == 0 {
            0
        } else {
            pinned.flags & LOCAL_CONFIG_FLAGS
        },
        cidrs: flows.local_cidrs()?,
    };
    let mut want = config
        .local_detection
        .datapath_config(config.masquerade_all, node, &current);
    if !flows.serves_ipv6() {
        want = want.ipv4_only();
    }
    for cidr in want.cidrs.iter().filter(|c| !current.cidrs.contains(c)) {
        flows.put_local_cidr(*cidr)?;
    }
    let localhost = node_addrs.localhost_node_ports();
    if localhost {
        allow_loopback_destinations()?;
    }
    flows.write_config(&Config {
        flags: want.flags
            | if localhost {
                CFG_F_LOCALHOST_NODEPORTS
            } else {
                0
            },
        ..config.conntrack
    })?;
    for cidr in current.cidrs.iter().filter(|c| !want.cidrs.contains(c)) {
        flows.delete_local_cidr(*cidr)?;
    }
    if want != current {
        tracing::info!(
            detection = ?config.local_detection,
            masquerade_all = config.masquerade_all,
            local_cidrs = ?want.cidrs,
            "local-traffic configuration written"
        );
    }
    Ok(())
}

/// Lets the kernel take packets to 127.0.0.0/8 that arrive translated from elsewhere than
/// `lo` (the replies of the node's own localhost NodePort connections), as kube-proxy does
/// for its localhost NodePorts; the datapath drops every other such packet.
fn allow_loopback_destinations() -> Result<()> {
    const SYSCTL: &str = "/proc/sys/net/ipv4/conf/all/route_localnet";
    if std::fs::read_to_string(SYSCTL).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(SYSCTL, "1").with_context(|| format!("setting {SYSCTL}"))?;
    tracing::info!("set net.ipv4.conf.all.route_localnet=1 for localhost NodePorts");
    Ok(())
}

/// When the change an EndpointSlice update carries was triggered (its
/// `endpoints.kubernetes.io/last-change-trigger-time`), for the programming latency.
/// How many Service and EndpointSlice changes `changes` holds, as kube-proxy counts them.
fn change_counts(changes: &[Change]) -> kube_proxy::Changes {
    let mut counts = kube_proxy::Changes::default();
    for change in changes {
        match change {
            Change::Service(..) => counts.services += 1,
            Change::Slice(..) => counts.endpoint_slices += 1,
            Change::Node(_) => {}
        }
    }
    counts
}

fn trigger_time(change: &Change) -> Option<SystemTime> {
    let Change::Slice(_, Some(slice)) = change else {
        return None;
    };
    slice.trigger_time
}

/// The page of `/frontends` after `after`: the names of up to `FRONTEND_PAGE` frontends of
/// `desired`, in order, as `name` gives them.
fn frontend_page(
    desired: &Desired,
    after: Option<FrontendKey>,
    name: impl Fn(&FrontendKey, &Frontend) -> FrontendName,
) -> FrontendPage {
    let from = after.map_or(Bound::Unbounded, Bound::Excluded);
    let mut frontends = desired.range((from, Bound::Unbounded)).peekable();
    let mut json = Vec::new();
    let mut last = None;
    for (key, frontend) in frontends.by_ref().take(FRONTEND_PAGE) {
        if !json.is_empty() {
            json.push(b',');
        }
        // Strings and options of them: nothing JSON cannot say.
        if let Err(e) = serde_json::to_writer(&mut json, &name(key, frontend)) {
            tracing::error!(error = %e, frontend = %key, "writing a frontend's name");
        }
        last = Some(*key);
    }
    FrontendPage {
        json: String::from_utf8(json).unwrap_or_default(),
        next: frontends.peek().and(last),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::model::{Protocol, fixtures};

    fn desired(count: u32) -> Desired {
        (0..count)
            .map(|n| {
                let key = FrontendKey::new(
                    IpAddr::V4(Ipv4Addr::from(0xC613_0000 + n)),
                    80,
                    Protocol::Tcp,
                );
                let frontend =
                    fixtures::frontend(&format!("web-{n}"), FrontendKind::ClusterIp, Vec::new());
                (key, frontend)
            })
            .collect()
    }

    fn name(key: &FrontendKey, frontend: &Frontend) -> FrontendName {
        FrontendName {
            frontend: key.to_string(),
            scope: "all".into(),
            service: frontend.service.name().to_string(),
            port: String::new(),
            kind: "ClusterIP".into(),
            internal_traffic_policy: None,
            external_traffic_policy: None,
        }
    }

    /// Every page of `desired`, asked as `/frontends` asks them: (names, next) of each.
    fn pages(desired: &Desired) -> Vec<(Vec<FrontendName>, Option<FrontendKey>)> {
        let mut pages = Vec::new();
        let mut after = None;
        loop {
            let page = frontend_page(desired, after, name);
            let names: Vec<FrontendName> =
                serde_json::from_str(&format!("[{}]", page.json)).expect("a page of JSON objects");
            let next = page.next;
            pages.push((names, next));
            match next {
                Some(key) => after = Some(key),
                None => return pages,
            }
        }
    }

    #[test]
    fn frontends_are_named_a_page_at_a_time_each_once_in_order() {
        // (case, frontends, sizes of the pages)
        let cases: [(&str, u32, &[usize]); 4] = [
            ("none", 0, &[0]),
            ("fewer than a page", 3, &[3]),
            ("exactly a page", 2_000, &[2_000]),
            ("two pages and one more", 4_001, &[2_000, 2_000, 1]),
        ];
        for (case, count, sizes) in cases {
            let desired = desired(count);
            let pages = pages(&desired);
            let got: Vec<usize> = pages.iter().map(|(names, _)| names.len()).collect();
            assert_eq!(got, sizes, "{case}: page sizes");
            let listed: Vec<String> = pages
                .iter()
                .flat_map(|(names, _)| names.iter().map(|n| n.frontend.clone()))
                .collect();
            let all: Vec<String> = desired.keys().map(ToString::to_string).collect();
            assert_eq!(listed, all, "{case}: every frontend once, in order");
            for (names, next) in &pages {
                // A page says where the next starts only while frontends follow it.
                let last = names.last().map(|n| n.frontend.clone());
                if let Some(next) = next {
                    assert_eq!(Some(next.to_string()), last, "{case}");
                }
            }
        }
    }
}
