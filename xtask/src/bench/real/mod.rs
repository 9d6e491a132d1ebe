//! The benchmark's headline: kproxy against the real kube-proxy (v1.37.2, iptables and
//! nftables modes), both fed by a real API server holding the same objects.
//!
//! Per scale: one control plane ([`plane`]) and its objects ([`objects`]), created once;
//! then, repetitions interleaved across modes (A B A B), a fresh bench bed linked to it, the
//! proxy started in the bed's node namespace, and measured: full programming from nothing
//! ([`probe::all_answer`]), new connections/s and latency (the generated section's load),
//! network programming latency under churn ([`churn`]) and by an independent probe
//! ([`probe::new_endpoint`]), and the proxy's memory and CPU over all of it.
//!
//! Then the IPv6 row: the same at its own scales with single-stack IPv6 Services (a
//! dual-stack API server, a dual-stack bed, servers and client on IPv6), which kube-proxy
//! serves with its IPv6 proxier (ip6tables rules, or the `ip6` nftables table) beside the
//! IPv4 one. Churn and the probe stay with the IPv4 row: their selector Services are IPv4.

mod churn;
mod metrics;
pub mod objects;
mod plane;
mod probe;
mod proxy;
pub mod report;
mod sustained;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use kproxy_testbed::{cgroup::Cgroup, kubernetes, kubernetes::lists_alone::ListsAlone};

use self::{
    plane::Plane,
    proxy::Proxy,
    report::{CpuCell, ProxyCell, Real, Scale},
};
use super::{
    Plan as BenchPlan,
    bed::BenchBed,
    cell_in,
    cluster::Family,
    measure,
    modes::ProcessUsage,
    report::{Placement, Skipped},
};

pub use proxy::Proxy as RealMode;

/// Scrapes of `/metrics` timed after the loads (the median is reported).
const SCRAPES: usize = 5;

/// Sampled Services besides the first and the last, probed for "every Service answers".
const SAMPLE: usize = 62;

/// The bed's ceiling, measured beside the proxies: the client connects to the three
/// backends in turn, with no Service and no proxy in between.
pub const DIRECT: &str = "direct";

/// The section's own settings.
pub struct Plan {
    pub modes: Vec<Proxy>,
    /// Measure [`DIRECT`] too.
    pub direct: bool,
    /// Scales of IPv4 Services.
    pub scales: Vec<usize>,
    /// Scales of IPv6 Services (the IPv6 row); empty skips it.
    pub ipv6_scales: Vec<usize>,
    pub churn_seconds: u32,
    pub probe_rounds: usize,
    /// Sustained churn (kproxy modes): changes per second, and for how long.
    pub sustained_rate: u32,
    pub sustained_seconds: u32,
}

impl Plan {
    pub fn new(
        modes: Vec<Proxy>,
        direct: bool,
        scales: Vec<usize>,
        ipv6_scales: Vec<usize>,
        quick: bool,
    ) -> Plan {
        Plan {
            modes,
            direct,
            scales,
            ipv6_scales,
            churn_seconds: if quick { 3 } else { 15 },
            probe_rounds: if quick { 2 } else { 5 },
            sustained_rate: if quick { 100 } else { 1_000 },
            sustained_seconds: if quick { 2 } else { 10 },
        }
    }

    /// This plan with `rate` changes per second of sustained churn (0: none) for `seconds`,
    /// each when given.
    #[must_use]
    pub fn with_sustained(mut self, rate: Option<u32>, seconds: Option<u32>) -> Plan {
        if let Some(rate) = rate {
            self.sustained_rate = rate;
        }
        if let Some(seconds) = seconds {
            self.sustained_seconds = seconds;
        }
        self
    }
}

/// Runs the section at every scale of `plan`; modes that cannot run here are listed in
/// `skipped`.
pub fn run(
    bench: &BenchPlan,
    plan: &Plan,
    agent: &Path,
    ct_max: u32,
    skipped: &mut Vec<Skipped>,
    checkpoint: &dyn Fn(&Real, &[Skipped]) -> Result<()>,
) -> Result<Real> {
    kubernetes_ready()?;
    let mut real = Real {
        kubernetes_release: kubernetes::RELEASE.into(),
        iptables_version: iptables_version(),
        churn_seconds: plan.churn_seconds,
        churn_period_ms: churn::PERIOD.as_secs_f64() * 1e3,
        probe_rounds: plan.probe_rounds,
        sustained_rate: plan.sustained_rate,
        sustained_seconds: plan.sustained_seconds,
        cpu_clock: super::load::cpu_clock().into(),
        ..Real::default()
    };
    let modes: Vec<Proxy> = plan
        .modes
        .iter()
        .copied()
        .filter(|m| match m.unavailable() {
            Some(reason) => {
                eprintln!("bench: real section: skipping {}: {reason}", m.name());
                skipped.push(Skipped {
                    mode: m.name().into(),
                    reason,
                });
                false
            }
            None => true,
        })
        .collect();
    if !modes.iter().any(|m| m.is_kproxy()) || !modes.iter().any(|m| !m.is_kproxy()) {
        real.notes
            .push("kproxy and kube-proxy did not both run: no comparison".into());
    }
    let logs = bench.output.join("real-logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let skipped_modes: &[Skipped] = skipped;
    // After every mode's repetition: a long run cut short keeps what it measured.
    let save = |real: &Real| checkpoint(real, skipped_modes);
    let runs = plan
        .scales
        .iter()
        .map(|&n| (Family::Ipv4, n))
        .chain(plan.ipv6_scales.iter().map(|&n| (Family::Ipv6, n)));
    for (family, services) in runs {
        let at = ScalePoint { family, services };
        measure_scale(
            bench, plan, &modes, at, agent, ct_max, &logs, &mut real, &save,
        )?;
    }
    if modes.iter().any(|m| m.is_kproxy())
        && real
            .proxies
            .iter()
            .filter(|p| p.mode.starts_with("kproxy"))
            .all(|p| p.own_observations.is_empty())
    {
        real.notes.push(
            "kproxy exposed no `kproxy_event_to_datapath_seconds`: its own part under churn \
             is not measured"
                .into(),
        );
    }
    Ok(real)
}

/// The Kubernetes programs, built into the cache if missing (as `cargo xtask test` does),
/// and the tools kube-proxy runs. (It deletes conntrack entries through netlink, not the
/// `conntrack` tool, and fresh beds need no flushing, so that tool is not needed.)
/// Rounds of the API server's lists alone per scale.
const LISTS_ALONE_ROUNDS: usize = 3;

/// The API server's lists with nothing else reading them (`ControlPlane::lists_alone`),
/// the controllers paused as while a proxy starts: the floor under a proxy's start.
fn lists_alone(plane: &Plane) -> Result<Vec<ListsAlone>> {
    let _paused = plane.cp.pause_controllers()?;
    (0..LISTS_ALONE_ROUNDS)
        .map(|_| {
            let round = plane
                .cp
                .lists_alone()
                .context("the API server's lists alone")?;
            eprintln!(
                "bench:   lists alone: {:.0} ms (Services {:.0}, slices {:.0}), {} bytes, \
                 API server {:.2} CPU s",
                round.ms, round.services_ms, round.slices_ms, round.bytes, round.apiserver_cpu_s
            );
            Ok(round)
        })
        .collect()
}

fn kubernetes_ready() -> Result<()> {
    crate::deps::ensure(&[("iptables", "iptables"), ("nft", "nftables")])?;
    crate::kubernetes::ensure().map(drop)
}

fn iptables_version() -> String {
    std::process::Command::new("iptables")
        .arg("--version")
        .output()
        .map_or_else(
            |e| format!("iptables --version failed: {e}"),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        )
}

/// One cluster the section measures: `services` Services of `family`.
#[derive(Clone, Copy)]
struct ScalePoint {
    family: Family,
    services: usize,
}

impl ScalePoint {
    /// Where this point's results go: the section itself for IPv4, its IPv6 row for IPv6.
    fn results(self, real: &mut Real) -> &mut Real {
        match self.family {
            Family::Ipv4 => real,
            Family::Ipv6 => real.ipv6.get_or_insert_with(|| {
                // The plan's figures too: its tables describe the runs by them (a row
                // without them said "0 endpoint changes per second asked for").
                Box::new(Real {
                    kubernetes_release: real.kubernetes_release.clone(),
                    iptables_version: real.iptables_version.clone(),
                    churn_seconds: real.churn_seconds,
                    churn_period_ms: real.churn_period_ms,
                    probe_rounds: real.probe_rounds,
                    sustained_rate: real.sustained_rate,
                    sustained_seconds: real.sustained_seconds,
                    cpu_clock: real.cpu_clock.clone(),
                    ..Real::default()
                })
            }),
        }
    }

    /// How the progress lines and file names say it: "10000" or "10000 IPv6".
    fn label(self) -> String {
        match self.family {
            Family::Ipv4 => self.services.to_string(),
            Family::Ipv6 => format!("{} IPv6", self.services),
        }
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "the run's settings, passed down once per scale"
)]
fn measure_scale(
    bench: &BenchPlan,
    plan: &Plan,
    modes: &[Proxy],
    at: ScalePoint,
    agent: &Path,
    ct_max: u32,
    logs: &Path,
    real: &mut Real,
    save: &dyn Fn(&Real) -> Result<()>,
) -> Result<()> {
    let ScalePoint { family, services } = at;
    let label = at.label();
    let file_label = label.replace(' ', "-");
    let dir = bench
        .output
        .join(format!("real-control-plane-{file_label}"));
    // A previous run's data would be a different cluster.
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("bench: real section, {label} services: starting the control plane");
    let plane = Plane::start(&dir)?;
    let backends = BenchBed::backend_addresses(family);
    let cluster = super::cluster::Cluster::with_first_vip(
        services,
        &backends,
        family,
        objects::FIRST_BENCH_VIP,
    );
    let created =
        objects::create(&plane, &cluster).with_context(|| format!("storing {label} services"))?;
    let stored = services * objects::STORED_PER_SERVICE;
    eprintln!(
        "bench:   {stored} objects stored and served in {:.1} s",
        created.as_secs_f64()
    );
    let lists_alone = lists_alone(&plane)?;
    at.results(real).scales.push(Scale {
        services,
        create_s: created.as_secs_f64(),
        objects: stored,
        stored: true,
        lists_alone,
    });
    let frontends = cluster.all_frontends();
    let mut targets = probe::sample(&frontends, SAMPLE);
    // IPv4 whatever the Services' family: every bed is IPv4 too.
    targets.push(objects::CHURN.frontend());
    // Modes that failed at this scale (a proxy that cannot program every Service in time):
    // said in the report, and not tried again; the others go on.
    let mut failed: Vec<Proxy> = Vec::new();
    // The ceiling measured right after each mode's load, beside it (see `beside_table`).
    let beside = plan
        .direct
        .then(|| BenchBed::for_family(family))
        .transpose()?;
    for rep in 0..bench.repetitions {
        if plan.direct {
            eprintln!(
                "bench: real section, {label} services, {DIRECT} (no proxy), repetition {}/{}",
                rep + 1,
                bench.repetitions
            );
            record_direct(bench, &plane, at, at.results(real))?;
        }
        for &mode in modes {
            if failed.contains(&mode) {
                continue;
            }
            eprintln!(
                "bench: real section, {label} services, {}, repetition {}/{}",
                mode.name(),
                rep + 1,
                bench.repetitions
            );
            let log = logs.join(format!("{file_label}-{}-{rep}.log", mode.name()));
            let run = Run {
                family,
                bench,
                plan,
                plane: &plane,
                beside: beside.as_ref(),
                agent,
                ct_max,
                targets: &targets,
                frontends: &frontends,
                log: &log,
            };
            if let Err(e) = run.measure(mode, services, at.results(real)) {
                eprintln!(
                    "bench: {} at {label} services failed: {e:#}\nthe proxy's log ({}) ends \
                     with:\n{}\n{}",
                    mode.name(),
                    log.display(),
                    tail(&log, 30),
                    plane.log_tails(15)
                );
                at.results(real).notes.push(format!(
                    "{} at {label} services, repetition {}: {e:#}; not measured further at \
                     this scale",
                    mode.name(),
                    rep + 1
                ));
                failed.push(mode);
            }
            save(real)?;
        }
    }
    drop(plane);
    // The logs stay; etcd's data (hundreds of MB at the largest scales) does not.
    let _ = std::fs::remove_dir_all(dir.join("etcd"));
    Ok(())
}

/// One mode's repetition at one scale.
struct Run<'a> {
    /// The Services' family: the bed's, the load's and the probes'.
    family: Family,
    bench: &'a BenchPlan,
    plan: &'a Plan,
    plane: &'a Plane,
    /// The bed [`DIRECT`] is measured on beside each mode (`None` without `direct`).
    beside: Option<&'a BenchBed>,
    agent: &'a Path,
    ct_max: u32,
    targets: &'a [SocketAddr],
    frontends: &'a [SocketAddr],
    log: &'a PathBuf,
}

impl Run<'_> {
    /// The saturating loads (to the last Service, to random ones), recorded in `real`; the
    /// first one's rate and `direct`'s measured right after it beside, if it is.
    fn loads(
        &self,
        mode: Proxy,
        services: usize,
        bed: &BenchBed,
        proxy: Option<u32>,
        real: &mut Real,
    ) -> Result<Option<(f64, f64)>> {
        let last = *self.frontends.last().context("no services")?;
        let mut paired = None;
        for placement in [Placement::Last, Placement::Random] {
            // Right before and right after the mode's load: each load leaves its closed
            // connections' TIME_WAIT sockets behind for the next, so the ceiling is the
            // mean of one that follows the mode's and one the mode's follows.
            let before = (placement == Placement::Last)
                .then(|| {
                    self.beside
                        .map(|b| direct_load(self.bench, b, (self.plane, proxy)))
                })
                .flatten()
                .transpose()?;
            quiet(self.plane, proxy)?;
            let sample = measure(self.bench, bed, last, self.frontends, placement)?;
            if let (Some(before), Some(beside)) = (before, self.beside) {
                let after = direct_load(self.bench, beside, (self.plane, proxy))?;
                let direct = f64::midpoint(before.rate, after.rate);
                eprintln!(
                    "bench:   {DIRECT} beside it: {:.0}/s before, {:.0}/s after ({}: {:.0}/s)",
                    before.rate,
                    after.rate,
                    mode.name(),
                    sample.rate
                );
                paired = Some((sample.rate, direct));
            }
            cell_in(&mut real.cells, mode.name(), services, placement)
                .samples
                .push(sample);
        }
        Ok(paired)
    }

    /// The CPU per connection at the fixed rate to `target` on `bed`, recorded in `real`;
    /// with a bed beside, [`PACED_ROUNDS`] times, each beside a window of `direct`'s, first
    /// the mode's then the ceiling's and the other way round in the next (see
    /// `PACED_ROUNDS`).
    fn paced(
        &self,
        mode: Proxy,
        services: usize,
        (bed, target): (&BenchBed, SocketAddr),
        proxy: Option<u32>,
        real: &mut Real,
    ) -> Result<()> {
        let ours = || measure_paced(self.bench, bed, vec![target], proxy, self.plane);
        let Some(beside) = self.beside else {
            let paced = ours()?;
            record_paced(real, mode.name(), services, paced);
            return Ok(());
        };
        // The same window for the ceiling, the proxy idle beside it.
        let ceiling = || {
            measure_paced(
                self.bench,
                beside,
                direct_targets(beside),
                proxy,
                self.plane,
            )
        };
        for round in 0..PACED_ROUNDS {
            let (paced, direct) = if round % 2 == 0 {
                let paced = ours()?;
                (paced, ceiling()?)
            } else {
                let direct = ceiling()?;
                (ours()?, direct)
            };
            record_paced(real, mode.name(), services, paced);
            if let (Some(ours), Some(ceiling)) = (paced.cpu_us, direct.cpu_us) {
                cpu_cell(real, mode.name(), services)
                    .overhead_beside_us
                    .push(ours - ceiling);
            }
        }
        Ok(())
    }

    /// Measures `mode` and records it in `real` (the section, or its IPv6 row).
    fn measure(&self, mode: Proxy, services: usize, real: &mut Real) -> Result<()> {
        let bed = BenchBed::for_family(self.family)?;
        self.plane.link(&bed)?;
        reset_selector_pods(self.plane)?;
        // The controllers rest while the proxy programs and the loads run (see
        // `pause_controllers`), and work again for churn and the probe, which need them.
        let paused = self.plane.cp.pause_controllers()?;
        // Every proxy starts on a machine at rest, the API server and etcd running: after
        // the lists alone (or the mode before) the API server went on collecting its
        // garbage for seconds, on the CPUs the start needs (at 100,000 Services it was
        // still taking most of both when kproxy's start began, 2026-12-07).
        let _ = settled(None);
        let _ = std::fs::remove_file(self.log);
        // kproxy-sock serves the sockets of a cgroup of the bench's own, which this process
        // (its load generator, its probes) joins for the run.
        let cgroup = (mode == Proxy::KproxySock)
            .then(|| Cgroup::create("kproxy-bench"))
            .transpose()?;
        let _inside = cgroup.as_ref().map(Cgroup::enter).transpose()?;
        let mut proxy = proxy::start(
            mode,
            &bed,
            self.plane,
            (self.agent, self.ct_max, services),
            cgroup.as_ref().map(Cgroup::path),
            self.log,
        )?;
        // Generous: kube-proxy's iptables mode takes 3.5 minutes for 10,000 services here,
        // and its time grows faster than the number of services.
        let timeout = Duration::from_mins(2) + Duration::from_millis(40) * count(services);
        let programmed = probe::all_answer(&bed, &mut proxy, self.targets.to_vec(), timeout)?;
        let (first_sync, start) = proxy.first_sync_ms(&bed)?;
        eprintln!(
            "bench:   every sampled service answers {:.0} ms after start (own first sync: {})",
            programmed.as_secs_f64() * 1e3,
            first_sync.map_or("-".into(), |ms| format!("{ms:.1} ms"))
        );
        let last = *self.frontends.last().context("no services")?;
        let paired = self.loads(mode, services, &bed, proxy.pid(), real)?;
        self.paced(mode, services, (&bed, last), proxy.pid(), real)?;
        let counters = mode
            .is_kproxy()
            .then(|| datapath_counters(self.agent, &bed));
        let (scrape_ms, scrape_bytes) = metrics::scrape_cost(&bed.topo.node, SCRAPES)?;
        eprintln!("bench:   a /metrics scrape: {scrape_ms:.1} ms, {scrape_bytes} bytes");
        // Written straight into etcd, the controllers still paused: the changes and the
        // proxy's work are all there is.
        let sustained = (mode.is_kproxy() && self.plan.sustained_rate > 0)
            .then(|| {
                sustained::run(
                    self.plane,
                    &bed,
                    &mut proxy,
                    self.plan.sustained_rate,
                    self.plan.sustained_seconds,
                )
            })
            .transpose()?;
        if let Some(s) = &sustained {
            eprintln!(
                "bench:   sustained churn: {} changes at {:.0}/s",
                s.changes, s.per_second
            );
        }
        drop(paused);
        // Churn and the probe change IPv4 selector Services, in either row: the beds are
        // dual-stack, and what they measure is a change served beside this row's Services.
        let window = churn::run(self.plane, &bed, &mut proxy, self.plan.churn_seconds)?;
        let probes = probe::new_endpoint(self.plane, &bed, &mut proxy, self.plan.probe_rounds)?;
        eprintln!(
            "bench:   churn: {} flips, {} annotated; probe: {probes:.1?} ms",
            window.flips, window.annotated
        );
        let usage = proxy.usage();
        proxy.stop()?;

        let cell = proxy_cell(real, mode, services);
        if let Some((rate, direct)) = paired {
            cell.rate_last.push(rate);
            cell.direct_beside.push(direct);
        }
        cell.programmed_ms.push(programmed.as_secs_f64() * 1e3);
        cell.first_sync_ms.extend(first_sync);
        cell.start_cpu_ms
            .extend(start.as_ref().and_then(|s| s.cpu_ms));
        cell.ready_peak_rss_mib
            .extend(start.and_then(|s| s.ready_peak_mib));
        record_window(cell, &window);
        if let Some(s) = &sustained {
            record_sustained(cell, s);
        }
        cell.probe_ms.extend(probes);
        cell.datapath_counters.extend(counters);
        cell.scrape_ms.push(scrape_ms);
        cell.scrape_bytes
            .push(f64::from(u32::try_from(scrape_bytes).unwrap_or(u32::MAX)));
        if let Some(ProcessUsage {
            peak_rss_mib,
            cpu_seconds,
            children_cpu_seconds,
        }) = usage
        {
            cell.peak_rss_mib.push(peak_rss_mib);
            cell.cpu_s.push(cpu_seconds);
            cell.children_cpu_s.push(children_cpu_seconds);
        }
        Ok(())
    }
}

/// kproxy's datapath counters that are not zero after the load (`kproxy services`), logged
/// and returned for the report: every packet of a connection that failed or waited was
/// dropped or passed for a counted reason, and the data say which. Empty if they could not
/// be read (said in the log).
fn datapath_counters(agent: &Path, bed: &BenchBed) -> BTreeMap<String, u64> {
    let output = bed
        .topo
        .node
        .command(agent)
        .arg("services")
        .arg("--pin-dir")
        .arg(bed.pin_dir())
        .output();
    let text = match output {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        Ok(out) => {
            eprintln!(
                "bench:   kproxy services failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return BTreeMap::new();
        }
        Err(e) => {
            eprintln!("bench:   kproxy services failed: {e}");
            return BTreeMap::new();
        }
    };
    let counters: BTreeMap<String, u64> = text
        .lines()
        .skip_while(|l| !l.starts_with("datapath counters:"))
        .skip(1)
        .filter_map(|l| {
            let (name, value) = l.trim().rsplit_once(' ')?;
            let value: u64 = value.parse().ok()?;
            (value != 0).then(|| (name.trim().to_owned(), value))
        })
        .collect();
    let shown: Vec<String> = counters.iter().map(|(n, v)| format!("{n}={v}")).collect();
    eprintln!("bench:   datapath counters: {}", shown.join(" "));
    counters
}

/// Measures [`DIRECT`] on a fresh bed at scale `at`, recorded in `real`.
fn record_direct(bench: &BenchPlan, plane: &Plane, at: ScalePoint, real: &mut Real) -> Result<()> {
    let (sample, paced) = {
        let _paused = plane.cp.pause_controllers()?;
        measure_direct(bench, at.family, plane)?
    };
    record_paced(real, DIRECT, at.services, paced);
    cell_in(&mut real.cells, DIRECT, at.services, Placement::Last)
        .samples
        .push(sample);
    Ok(())
}

/// New connections from the client of a fresh bed straight to its backends' servers, in
/// turn, in `family`: what the bed does without any Service translation; then the same at
/// the fixed rate.
fn measure_direct(
    bench: &BenchPlan,
    family: Family,
    plane: &Plane,
) -> Result<(super::report::Sample, Paced)> {
    let bed = BenchBed::for_family(family)?;
    let sample = direct_load(bench, &bed, (plane, None))?;
    Ok((
        sample,
        measure_paced(bench, &bed, direct_targets(&bed), None, plane)?,
    ))
}

/// The backends' servers, which [`DIRECT`] connects to in turn.
fn direct_targets(bed: &BenchBed) -> Vec<SocketAddr> {
    bed.backends()
        .into_iter()
        .map(|b| SocketAddr::new(b, super::cluster::BACKEND_PORT))
        .collect()
}

/// New connections from `bed`'s client straight to its backends, as fast as they go.
/// Starts once the machine is quiet (see `quiet`).
fn direct_load(
    bench: &BenchPlan,
    bed: &BenchBed,
    (plane, proxy): (&Plane, Option<u32>),
) -> Result<super::report::Sample> {
    quiet(plane, proxy)?;
    let mut cfg = super::load::LoadConfig::new(direct_targets(bed));
    cfg.duration = bench.duration;
    cfg.warmup = super::warmup(bench.duration);
    cfg.concurrency = bench.concurrency;
    super::measure_with(bed, &cfg, "backends")
}

/// New connections offered per second when the CPU per connection is measured: below every
/// mode's saturation on the benchmark machine (kube-proxy's iptables mode serves about
/// 7,500/s at 10,000 IPv6 Services), the same for all.
pub const PACED_RATE: f64 = 5_000.0;

/// Pairs of paced windows per repetition, a mode's and `direct`'s beside it, in alternating
/// order (the mode's first, then the ceiling's first, ...). The machine's pace drifts by a
/// few percent over minutes (`direct`'s CPU per connection read 91.9 and 97.7 µs in two
/// windows of one repetition, 2026-12-06), as much as the few µs compared: each pair is a
/// difference taken within seconds, the alternation cancels a steady drift across two
/// pairs, and the median over all pairs is the figure.
const PACED_ROUNDS: usize = 3;

/// What a paced run measured.
#[derive(Clone, Copy)]
pub struct Paced {
    achieved: f64,
    cpu_us: Option<f64>,
    /// The proxy process's own CPU (with the processes it ran) per connection, µs.
    proxy_us: Option<f64>,
    p99_us: f64,
}

/// [`PACED_RATE`] new connections per second to `targets` (in turn) from the bed's client.
/// The CPU per connection is the machine's less the proxy process's (`proxy`: its
/// control-plane work is no connection's cost; reported apart), less the rate the rest
/// burns at rest, measured over a second before the load. The API server and etcd are
/// paused for both (see `ControlPlane::pause_servers`): their own work (timers, lease
/// renewals, the controllers' leftovers in the watch cache) is no connection's cost either,
/// and it comes and goes between the second at rest and the load.
fn measure_paced(
    bench: &BenchPlan,
    bed: &BenchBed,
    targets: Vec<SocketAddr>,
    proxy: Option<u32>,
    plane: &Plane,
) -> Result<Paced> {
    let _quiet = plane.cp.pause_servers()?;
    let at_rest = settled(proxy);
    let mut cfg = super::load::LoadConfig::new(targets);
    cfg.duration = bench.duration;
    cfg.warmup = super::warmup(bench.duration);
    cfg.concurrency = bench.concurrency;
    cfg.rate = Some(PACED_RATE);
    cfg.apart = proxy;
    let result = super::load::run(&bed.topo.client, &cfg)?;
    let window = cfg.duration.as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let connections = result.connections as f64;
    let cpu_us = result.cpu_busy_s.zip(at_rest).map(|(busy, rest)| {
        (busy - (rest.machine - rest.apart) * window).max(0.0) / connections * 1e6
    });
    let proxy_us = result.apart_cpu_s.map(|s| s / connections * 1e6);
    eprintln!(
        "bench:   paced {result}; CPU per connection {}, the proxy's own {}",
        cpu_us.map_or("-".into(), |us| format!("{us:.1} µs")),
        proxy_us.map_or("-".into(), |us| format!("{us:.1} µs"))
    );
    #[allow(clippy::cast_precision_loss)]
    Ok(Paced {
        achieved: result.rate(),
        cpu_us,
        proxy_us,
        p99_us: result.p99_us() as f64,
    })
}

/// Waits until the machine is quiet (see `settled`; the API server and etcd paused
/// meanwhile, the proxy `proxy` left aside), for a saturating load to start on: the kernel
/// tears the previous bed's namespaces down in its own workers for seconds after it is
/// gone, and a load that shared the CPUs with that would be charged for it.
fn quiet(plane: &Plane, proxy: Option<u32>) -> Result<()> {
    let _paused = plane.cp.pause_servers()?;
    let _ = settled(proxy);
    Ok(())
}

/// Busy CPU (all CPUs, beyond the proxy's own) below which a second counts as quiet.
const QUIET: f64 = 0.05;
/// How long the machine may take to quiet down before a paced window or a proxy's start.
const SETTLE_MAX: Duration = Duration::from_secs(30);

/// The CPU time the machine burns over a second at rest, read once any work of the runs
/// before has died down (the kernel tears a bed's namespaces down, with the sockets of the
/// loads before, in its own workers after the bed is gone): a second taken while that work
/// ran would be subtracted from a window it no longer burdens. Seconds are read until two
/// in a row are quiet, for at most `SETTLE_MAX`; the last one is the rate at rest, and the
/// log says how long it took (two seconds, in every paced window of the runs so far).
fn settled(proxy: Option<u32>) -> Option<super::load::CpuReading> {
    use super::load::cpu_reading;
    let started = Instant::now();
    let mut quiet_seconds = 0;
    let mut last = cpu_reading(proxy)?;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = cpu_reading(proxy)?;
        let second = now - last;
        last = now;
        quiet_seconds = if second.machine - second.apart < QUIET {
            quiet_seconds + 1
        } else {
            0
        };
        if quiet_seconds >= 2 || started.elapsed() >= SETTLE_MAX {
            eprintln!(
                "bench:   at rest after {:.0} s: {:.3} CPU s/s ({})",
                started.elapsed().as_secs_f64(),
                second.machine - second.apart,
                if quiet_seconds >= 2 {
                    "quiet"
                } else {
                    "never quiet"
                }
            );
            return Some(second);
        }
    }
}

fn record_paced(real: &mut Real, mode: &str, services: usize, paced: Paced) {
    let cell = cpu_cell(real, mode, services);
    cell.achieved.push(paced.achieved);
    cell.cpu_us.extend(paced.cpu_us);
    cell.proxy_us.extend(paced.proxy_us);
    cell.p99_us.push(paced.p99_us);
}

fn cpu_cell<'a>(real: &'a mut Real, mode: &str, services: usize) -> &'a mut CpuCell {
    super::entry(
        &mut real.cpu,
        |c| c.mode == mode && c.services == services,
        || CpuCell {
            mode: mode.into(),
            services,
            offered: PACED_RATE,
            ..CpuCell::default()
        },
    )
}

/// The churn pod Ready on the first backend, the probe's pod not Ready: each run starts
/// from the same cluster.
fn reset_selector_pods(plane: &Plane) -> Result<()> {
    let now = std::time::SystemTime::now();
    let backends = objects::selector_pod_ips();
    objects::CHURN.set_ready(plane, 0, backends[0], true, now)?;
    let last = *backends.last().context("no backends")?;
    objects::PROBE.set_ready(plane, 0, last, false, now)
}

fn record_window(cell: &mut ProxyCell, window: &churn::Window) {
    let ms = |q: Option<metrics::Quantile>| q.map(|q| q.seconds * 1e3);
    if let Some(h) = &window.end_to_end {
        cell.npl_observations.push(h.count);
        cell.npl_p50_ms.extend(ms(h.quantile(0.5)));
        let p99 = h.quantile(0.99);
        cell.npl_above |= p99.is_some_and(|q| q.above);
        cell.npl_p99_ms.extend(ms(p99));
        cell.npl_p99_bucket_ms.extend(p99.map(|q| q.bucket * 1e3));
    }
    if let Some(h) = &window.own {
        cell.own_observations.push(h.count);
        cell.own_p50_ms.extend(ms(h.quantile(0.5)));
        cell.own_p99_ms.extend(ms(h.quantile(0.99)));
    }
}

fn record_sustained(cell: &mut ProxyCell, s: &sustained::Sustained) {
    let ms = |q: Option<metrics::Quantile>| q.map(|q| q.seconds * 1e3);
    cell.sustained_per_s.push(s.per_second);
    if let Some(h) = &s.end_to_end {
        cell.sustained_observations.push(h.count);
        cell.sustained_npl_p50_ms.extend(ms(h.quantile(0.5)));
        cell.sustained_npl_p99_ms.extend(ms(h.quantile(0.99)));
    }
    if let Some(h) = &s.own {
        cell.sustained_own_p99_ms.extend(ms(h.quantile(0.99)));
    }
}

fn proxy_cell(real: &mut Real, mode: Proxy, services: usize) -> &mut ProxyCell {
    super::entry(
        &mut real.proxies,
        |p| p.mode == mode.name() && p.services == services,
        || ProxyCell {
            mode: mode.name().into(),
            services,
            own_meaning: mode.histograms().own_meaning.into(),
            ..ProxyCell::default()
        },
    )
}

/// The last `lines` of a log file.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ipv6_row_describes_its_runs_by_the_plans_figures() {
        let mut real = Real {
            churn_seconds: 20,
            probe_rounds: 5,
            sustained_rate: 1_000,
            sustained_seconds: 10,
            ..Real::default()
        };
        let at = ScalePoint {
            family: Family::Ipv6,
            services: 100_000,
        };
        let row = at.results(&mut real);
        assert_eq!(
            (
                row.churn_seconds,
                row.probe_rounds,
                row.sustained_rate,
                row.sustained_seconds
            ),
            (20, 5, 1_000, 10)
        );
    }
}
