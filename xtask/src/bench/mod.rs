//! `cargo xtask bench`: kproxy against kube-proxy, every mode at every scale in one run,
//! repetitions interleaved (A B A B …) so machine noise hits all modes alike. The headline is
//! [`real`]: the real kube-proxy (iptables and nftables modes) and kproxy reading a real API
//! server. Then a smoke run against netfilter rules generated the way kube-proxy writes them
//! ([`rules`], no API server), and external traffic (a NodePort with a remote backend, see
//! [`external`]). Results go to `target/bench/` as JSON, markdown and charts.

mod bed;
mod cluster;
mod external;
mod load;
mod modes;
mod prog_cost;
mod real;
mod report;
mod rules;
mod server;
mod targets;
mod xdp;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use kproxy_testbed::require_privileges;

use self::{
    bed::BenchBed,
    cluster::{Cluster, Family},
    external::ExtMode,
    load::{LoadConfig, Pick},
    modes::Mode,
    real::RealMode,
    report::{AgentUsage, Cell, Placement, Programming, Report, Sample, Skipped},
};
use crate::{build_ebpf, cargo, deps, run_checked, target_dir};

#[derive(clap::Args, Default)]
pub struct Options {
    /// A smoke run for CI: 10 and 100 services, one short repetition, debug agent build.
    #[arg(long)]
    pub quick: bool,
    /// Numbers of ClusterIP services to measure, comma separated (default 10,1000,10000; the
    /// real-kube-proxy section 10,1000,10000,30000).
    #[arg(long, value_delimiter = ',')]
    pub services: Option<Vec<usize>>,
    /// Modes to measure, comma separated (default: all of kproxy-tc, kproxy-xdp,
    /// iptables-legacy, iptables-nft, nftables, ipvs; the external section has no ipvs and
    /// adds bare-xdp-forward; the real section's are kproxy-tc, kproxy-xdp,
    /// kube-proxy-iptables, kube-proxy-nftables, kube-proxy-ipvs, and direct: no Service and
    /// no proxy, the client connecting to the backends). Each section measures the modes it
    /// knows.
    #[arg(long, value_delimiter = ',')]
    pub modes: Option<Vec<String>>,
    /// Run only the external-traffic section (NodePort with a remote backend, UDP forwarding).
    #[arg(long, conflicts_with = "skip_external")]
    pub external_only: bool,
    /// Skip the external-traffic section.
    #[arg(long)]
    pub skip_external: bool,
    /// Run only the real-kube-proxy section (no generated rules, no external traffic).
    #[arg(long, conflicts_with_all = ["external_only", "skip_real"])]
    pub real_only: bool,
    /// Skip the real-kube-proxy section.
    #[arg(long)]
    pub skip_real: bool,
    /// Numbers of IPv6 ClusterIP services the real section's IPv6 row measures, comma
    /// separated (default 10,10000; quick 10).
    #[arg(long, value_delimiter = ',')]
    pub ipv6_services: Option<Vec<usize>>,
    /// Skip the real section's IPv6 row.
    #[arg(long, conflicts_with = "ipv6_only")]
    pub skip_ipv6: bool,
    /// Run only the real section's IPv6 row (no IPv4 scales, no other section).
    #[arg(long, conflicts_with_all = ["external_only", "skip_real"])]
    pub ipv6_only: bool,
    /// Skip the generated-rules smoke section (ClusterIP against generated netfilter rules).
    #[arg(long)]
    pub skip_generated: bool,
    /// Numbers of IPv6 Services at which the datapath's time per packet is also measured,
    /// comma separated (default 10,10000,100000; quick none). IPv4's scales are the
    /// generated section's; the test bed's IPv4 VIPs end at 65,534, so 100,000 is IPv6's.
    #[arg(long, value_delimiter = ',')]
    pub prog_cost_ipv6_services: Option<Vec<usize>>,
    /// UDP flows the external section's sender cycles through (default 256).
    #[arg(long)]
    pub udp_flows: Option<usize>,
    /// Endpoint changes per second of the real section's sustained churn, each to another
    /// Service, written for 10 s (quick: 100 per second for 2 s); 0 skips it.
    #[arg(long)]
    pub sustained_churn_rate: Option<u32>,
    /// How long the sustained churn lasts, in seconds (default 10; quick 2).
    #[arg(long)]
    pub sustained_churn_seconds: Option<u32>,
    /// External section: have node1 resolve its LAN neighbours (node2, the client) before
    /// measuring, as a node that has talked to its peers would. Off by default, so what a
    /// freshly built node does is what the report shows; the report says when it was on.
    #[arg(long)]
    pub warm_neighbours: bool,
    /// Repetitions of every measurement (default 3, quick 1).
    #[arg(long)]
    pub repetitions: Option<usize>,
    /// Seconds of load per measurement (default 5, quick 1).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Connections kept in flight by the load generator (default 32).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Where the results go (default target/bench).
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// The run's settings once defaults are applied.
struct Plan {
    quick: bool,
    /// ClusterIP scales; empty with --external-only.
    scales: Vec<usize>,
    /// The IPv6 scales of the time per packet.
    prog_cost_ipv6: Vec<usize>,
    modes: Vec<Mode>,
    /// None with --skip-external.
    external: Option<external::Plan>,
    /// None with --skip-real.
    real: Option<real::Plan>,
    repetitions: usize,
    duration: Duration,
    concurrency: usize,
    output: PathBuf,
}

impl Plan {
    fn from(opts: &Options) -> Result<Self> {
        let (mut modes, ext_modes, real_modes): (Vec<Mode>, Vec<ExtMode>, Vec<RealMode>) =
            match &opts.modes {
                Some(names) => {
                    for n in names {
                        if Mode::parse(n).is_none()
                            && ExtMode::parse(n).is_none()
                            && RealMode::parse(n).is_none()
                            && n != real::DIRECT
                        {
                            bail!("unknown mode {n:?}");
                        }
                    }
                    (
                        names.iter().filter_map(|n| Mode::parse(n)).collect(),
                        names.iter().filter_map(|n| ExtMode::parse(n)).collect(),
                        names.iter().filter_map(|n| RealMode::parse(n)).collect(),
                    )
                }
                // The quick run leaves kproxy's XDP variant to the full one (time).
                None => (
                    Mode::ALL.to_vec(),
                    ExtMode::ALL.to_vec(),
                    RealMode::ALL
                        .into_iter()
                        .filter(|m| !(opts.quick && *m == RealMode::KproxyXdp))
                        .collect(),
                ),
            };
        let default_scales = if opts.quick {
            vec![10, 100]
        } else {
            vec![10, 1_000, 10_000]
        };
        let mut scales = opts.services.clone().unwrap_or(default_scales);
        if scales.iter().any(|&n| n == 0 || n > 60_000) {
            bail!("--services: each scale must be between 1 and 60000");
        }
        if opts.external_only {
            scales.clear();
            modes.clear();
        }
        if opts.real_only || opts.ipv6_only || opts.skip_generated {
            modes.clear();
        }
        let seconds = opts.duration.unwrap_or(if opts.quick { 1.0 } else { 5.0 });
        let duration = Duration::from_secs_f64(seconds.max(0.2));
        let repetitions = opts
            .repetitions
            .unwrap_or(if opts.quick { 1 } else { 3 })
            .max(1);
        let concurrency = opts.concurrency.unwrap_or(32).max(1);
        let udp_flows = opts.udp_flows.unwrap_or(256);
        if !(1..=50_000).contains(&udp_flows) {
            bail!("--udp-flows must be between 1 and 50000");
        }
        let (real_scales, ipv6_scales) = real_scales(opts)?;
        let direct = opts
            .modes
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == real::DIRECT));
        let real = (!opts.skip_real && !opts.external_only && (direct || !real_modes.is_empty()))
            .then(|| {
                real::Plan::new(real_modes, direct, real_scales, ipv6_scales, opts.quick)
                    .with_sustained(opts.sustained_churn_rate, opts.sustained_churn_seconds)
            });
        let external =
            (!opts.skip_external && !opts.real_only && !opts.ipv6_only && !ext_modes.is_empty())
                .then(|| external::Plan {
                    modes: ext_modes,
                    repetitions,
                    duration,
                    warmup: warmup(duration),
                    concurrency,
                    udp_flows,
                    warm_neighbours: opts.warm_neighbours,
                });
        let prog_cost_ipv6 = prog_cost_ipv6_scales(opts)?;
        Ok(Self {
            quick: opts.quick,
            scales,
            prog_cost_ipv6,
            modes,
            external,
            real,
            repetitions,
            duration,
            concurrency,
            output: opts
                .output
                .clone()
                .unwrap_or_else(|| target_dir().join("bench")),
        })
    }
}

/// The real section's IPv4 and IPv6 scales. The IPv4 row also measures 30,000 services by
/// default (the generated smoke section stops at 10,000).
fn real_scales(opts: &Options) -> Result<(Vec<usize>, Vec<usize>)> {
    let ipv4 = if opts.ipv6_only {
        Vec::new()
    } else {
        opts.services.clone().unwrap_or(if opts.quick {
            vec![10, 100]
        } else {
            vec![10, 1_000, 10_000, 30_000]
        })
    };
    let ipv6 = if opts.skip_ipv6 {
        Vec::new()
    } else {
        opts.ipv6_services.clone().unwrap_or(if opts.quick {
            vec![10]
        } else {
            vec![10, 10_000]
        })
    };
    for (flag, scales, family) in [
        ("--services", &ipv4, Family::Ipv4),
        ("--ipv6-services", &ipv6, Family::Ipv6),
    ] {
        let max = family.max_services() - real::objects::FIRST_BENCH_VIP;
        if scales.iter().any(|&n| n == 0 || n > max) {
            bail!(
                "{flag}: each scale must be between 1 and {max} (the {} VIPs the test bed's \
                 service range holds past the API server's own)",
                family.kubernetes_name()
            );
        }
    }
    Ok((ipv4, ipv6))
}

/// The IPv6 scales of the datapath's time per packet.
fn prog_cost_ipv6_scales(opts: &Options) -> Result<Vec<usize>> {
    let scales = opts
        .prog_cost_ipv6_services
        .clone()
        .unwrap_or(if opts.quick {
            Vec::new()
        } else {
            vec![10, 10_000, 100_000]
        });
    let max = Family::Ipv6.max_services();
    if scales.iter().any(|&n| n == 0 || n > max) {
        bail!("--prog-cost-ipv6-services: each scale must be between 1 and {max}");
    }
    Ok(scales)
}

/// Load before each measurement, not counted: a fifth of it, at most a second.
fn warmup(duration: Duration) -> Duration {
    duration.mul_f64(0.2).min(Duration::from_secs(1))
}

/// Packages the benchmark needs on top of the tests'.
const BENCH_TOOLS: &[deps::Requirement] = &[
    ("iptables-legacy-restore", "iptables"),
    ("nft", "nftables"),
    (report::FONT_PATH, "fonts-dejavu-core"),
    ("trafgen", "netsniff-ng"),
];

pub fn run(opts: &Options) -> Result<()> {
    if !require_privileges("cargo xtask bench") {
        bail!("the benchmark needs root: it builds network namespaces and loads BPF programs");
    }
    let plan = Plan::from(opts)?;
    if cfg!(debug_assertions) && !plan.quick {
        return reexec_optimised();
    }
    deps::ensure(deps::TEST_TOOLS)?;
    deps::ensure(BENCH_TOOLS)?;
    let object = build_ebpf::run(&build_ebpf::Options::default())?;
    let agent = build_agent(plan.quick)?;

    let mut report = Report {
        machine: machine(),
        quick: plan.quick,
        repetitions: plan.repetitions,
        duration_s: plan.duration.as_secs_f64(),
        cells: Vec::new(),
        programming: Vec::new(),
        agent: Vec::new(),
        xdp: None,
        prog_cost: Vec::new(),
        external: None,
        real: None,
        targets: Vec::new(),
        skipped: Vec::new(),
    };
    let modes: Vec<Mode> = plan
        .modes
        .iter()
        .copied()
        .filter(|m| match m.unavailable() {
            Some(reason) => {
                eprintln!("bench: skipping {}: {reason}", m.name());
                report.skipped.push(Skipped {
                    mode: m.name().into(),
                    reason,
                });
                false
            }
            None => true,
        })
        .collect();

    if let Some(real_plan) = &plan.real {
        // The real section's largest scales take many minutes each: the report is written
        // after every proxy run, so a run cut short keeps what it measured.
        let mut skipped = report.skipped.clone();
        let before = report.clone();
        let checkpoint = |real: &real::report::Real, skipped: &[Skipped]| -> Result<()> {
            let mut partial = before.clone();
            partial.real = Some(real.clone());
            partial.skipped = skipped.to_vec();
            partial.targets = targets::evaluate(&partial);
            report::write_all(&partial, &plan.output).map(drop)
        };
        report.real = Some(real::run(
            &plan,
            real_plan,
            &agent,
            CT_MAX,
            &mut skipped,
            &checkpoint,
        )?);
        report.skipped = skipped;
    }
    if !modes.is_empty() {
        for &services in &plan.scales {
            measure_scale(&plan, &modes, services, &agent, &mut report)?;
        }
    }
    if !plan.scales.is_empty() && modes.contains(&Mode::KproxyXdp) {
        report.xdp = Some(xdp::measure(
            &agent,
            if plan.quick { 1 } else { plan.repetitions },
        )?);
    }
    if modes
        .iter()
        .any(|m| matches!(m, Mode::KproxyTc | Mode::KproxyXdp))
    {
        let scales = prog_cost::Scales {
            ipv4: &plan.scales,
            ipv6: &plan.prog_cost_ipv6,
        };
        report.prog_cost = prog_cost::measure(&agent, &scales, plan.repetitions, CT_MAX)?;
    }
    if let Some(ext) = &plan.external {
        report.external = Some(external::run(ext, &agent, &object)?);
    }
    report.targets = targets::evaluate(&report);
    let paths = report::write_all(&report, &plan.output)?;
    println!("{}", report::markdown(&report));
    println!("bench: wrote {}", paths.written());
    Ok(())
}

/// The load generator and servers run in this process: in a debug build they, not the
/// datapaths, would be the bottleneck. A full run therefore re-runs itself from a release
/// build of xtask (the quick smoke run does not need real numbers).
fn reexec_optimised() -> Result<()> {
    use std::os::unix::process::CommandExt;
    run_checked(cargo().args(["build", "--release", "--package", "xtask"]))?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let err = std::process::Command::new(target_dir().join("release").join("xtask"))
        .args(args)
        .exec();
    Err(err).context("running the release build of xtask")
}

/// The agent binary: release for real numbers, debug for the quick smoke run (faster build).
fn build_agent(quick: bool) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "--package", "kproxy"]);
    if !quick {
        cmd.arg("--release");
    }
    run_checked(&mut cmd)?;
    Ok(target_dir()
        .join(if quick { "debug" } else { "release" })
        .join("kproxy"))
}

/// kproxy's conntrack sized for the rate: closed flows stay 10 s, and 50k connections/s is
/// more than this machine reaches.
const CT_MAX: u32 = 1 << 20;

fn measure_scale(
    plan: &Plan,
    modes: &[Mode],
    services: usize,
    agent: &std::path::Path,
    report: &mut Report,
) -> Result<()> {
    let backends = BenchBed::backend_addresses(Family::Ipv4);
    let cluster = Cluster::new(services, &backends);
    for rep in 0..plan.repetitions {
        for &mode in modes {
            eprintln!(
                "bench: {services} services, {}, repetition {}/{}",
                mode.name(),
                rep + 1,
                plan.repetitions
            );
            let bed = BenchBed::new()?;
            let (mut running, setup) = modes::start(mode, &bed, &cluster, agent, CT_MAX)?;
            programming(report, mode, services)
                .full_sync_ms
                .push(setup.full_sync_ms);
            let frontends = cluster.all_frontends();
            for placement in [Placement::Last, Placement::Random] {
                let sample = measure(plan, &bed, cluster.target(), &frontends, placement)?;
                cell_in(&mut report.cells, mode.name(), services, placement)
                    .samples
                    .push(sample);
            }
            if let Some(change) = running.change_one_endpoint(&bed, &cluster)? {
                let p = programming(report, mode, services);
                p.one_change_ms.push(change.file_to_map_ms);
                p.agent_change_ms.extend(change.agent_ms);
            }
            if let Some((rss, cpu)) = running.agent_usage() {
                record_usage(report, services, rss, cpu);
            }
            running.stop()?;
        }
    }
    Ok(())
}

/// One load run from the client: to `last` only, or to a random one of `all` per connection.
fn measure(
    plan: &Plan,
    bed: &BenchBed,
    last: SocketAddr,
    all: &[SocketAddr],
    placement: Placement,
) -> Result<Sample> {
    let mut cfg = match placement {
        Placement::Last => LoadConfig::new(vec![last]),
        Placement::Random => {
            let mut cfg = LoadConfig::new(all.to_vec());
            cfg.pick = Pick::Random;
            cfg
        }
    };
    cfg.duration = plan.duration;
    cfg.warmup = warmup(plan.duration);
    cfg.concurrency = plan.concurrency;
    measure_with(bed, &cfg, placement.as_str())
}

/// Runs `cfg`'s load from the bed's client; `label` names it in the progress line.
fn measure_with(bed: &BenchBed, cfg: &LoadConfig, label: &str) -> Result<Sample> {
    let accepted_before = bed.accepted();
    let result = load::run(&bed.topo.client, cfg)?;
    // Every connection counted must have reached one of the backends' servers.
    let accepted = bed.accepted() - accepted_before;
    if accepted < result.connections {
        bail!(
            "the load generator counted {} connections but the servers accepted {accepted}",
            result.connections
        );
    }
    eprintln!("bench:   {label} {result} spread {:?}", result.per_backend);
    Ok(Sample {
        rate: result.rate(),
        p50_us: result.p50_us(),
        p99_us: result.p99_us(),
        max_us: result.max_us(),
        errors: result.errors,
    })
}

/// The cell of `mode` at `services` and `placement` in `cells`, added if missing.
fn cell_in<'a>(
    cells: &'a mut Vec<Cell>,
    mode: &str,
    services: usize,
    placement: Placement,
) -> &'a mut Cell {
    entry(
        cells,
        |c| c.mode == mode && c.services == services && c.placement == placement,
        || Cell {
            mode: mode.into(),
            services,
            placement,
            samples: Vec::new(),
        },
    )
}

/// The first of `items` that `matches`, or else `new()` appended: a report's row, added
/// the first time a measurement goes into it.
fn entry<T>(items: &mut Vec<T>, matches: impl Fn(&T) -> bool, new: impl FnOnce() -> T) -> &mut T {
    let at = match items.iter().position(matches) {
        Some(at) => at,
        None => {
            items.push(new());
            items.len() - 1
        }
    };
    &mut items[at]
}

fn programming(report: &mut Report, mode: Mode, services: usize) -> &mut Programming {
    entry(
        &mut report.programming,
        |p| p.mode == mode.name() && p.services == services,
        || Programming {
            mode: mode.name().into(),
            services,
            full_sync_ms: Vec::new(),
            one_change_ms: Vec::new(),
            agent_change_ms: Vec::new(),
        },
    )
}

/// Keeps the worst (highest) usage seen per scale.
fn record_usage(report: &mut Report, services: usize, rss: f64, cpu: f64) {
    match report.agent.iter_mut().find(|a| a.services == services) {
        Some(a) => {
            a.peak_rss_mib = a.peak_rss_mib.max(rss);
            a.cpu_seconds = a.cpu_seconds.max(cpu);
        }
        None => report.agent.push(AgentUsage {
            services,
            peak_rss_mib: rss,
            cpu_seconds: cpu,
        }),
    }
}

/// What the numbers were measured on.
fn machine() -> report::Machine {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let meminfo = read("/proc/meminfo");
    let mem_kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    report::Machine {
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        cpus: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        cpu_model: cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".into(), |(_, m)| m.trim().to_owned()),
        memory_gib: mem_kib / (1024.0 * 1024.0),
        date,
    }
}
