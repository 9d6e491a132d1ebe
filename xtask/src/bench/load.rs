//! The benchmark's load generator: from inside the client namespace it keeps a fixed number of
//! short TCP connections in flight (connect, one request line, one reply line, close) for a
//! fixed time, and measures the rate of new connections and their connect+request latency,
//! and the machine's CPU time over the measured window (`cpu_busy_seconds`). With a rate, the
//! connections start on a fixed schedule instead of as fast as they can.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use hdrhistogram::Histogram;
use kproxy_testbed::Netns;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What each connection sends; the who-am-I servers answer any line.
const REQUEST: &[u8] = b"who\n";
/// Longest reply line accepted (`backend=<ip:port> peer=<ip:port>\n` is about 50 bytes).
const MAX_REPLY: usize = 256;
/// Latencies above this (µs) are clamped; no connection outlives the timeout anyway.
const MAX_LATENCY_US: u64 = 60_000_000;
/// After a failed connection a worker pauses this long, so a target that refuses at once does
/// not turn the client into a busy loop starving the servers and the node of CPU.
const ERROR_BACKOFF: Duration = Duration::from_millis(1);
/// Grace on top of the planned run before the generator gives up on its own workers.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How each connection chooses its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Targets in turn, shared by all workers: an even spread.
    RoundRobin,
    /// A uniformly random target per connection.
    Random,
}

/// How the client ends each connection once it has the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// A normal close (FIN) by the client first: the client keeps the TIME_WAIT, whose port
    /// tcp_tw_reuse recycles after a second, and conntrack sees a complete TCP exchange, as
    /// with real clients. One client address to one VIP:port then tops out near 30k/s: connect
    /// takes the ~32k even ports first, each reusable one second after its close.
    Fin,
    /// SO_LINGER 0, i.e. an RST: no TIME_WAIT and two packets fewer per connection (~20% more
    /// connections/s here), but conntrack entries end in CLOSE instead of TIME_WAIT and the
    /// servers see resets: only for when Fin cannot reach the rate wanted.
    Reset,
}

/// What load to generate.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Where connections go (a Service VIP:port, or backends directly).
    pub targets: Vec<SocketAddr>,
    /// How each connection picks one of `targets`.
    pub pick: Pick,
    /// Connections kept in flight at all times.
    pub concurrency: usize,
    /// How long the measurement lasts, after the warm-up.
    pub duration: Duration,
    /// Load before the measurement (caches, conntrack, ARP, TCP state warm up); not counted.
    pub warmup: Duration,
    /// The longest a connection may take from connect to reply; longer ones count as errors.
    pub timeout: Duration,
    /// How connections are closed.
    pub close: Close,
    /// Runtime threads of the client: 1 is a single-threaded runtime.
    pub threads: usize,
    /// Connections started per second, on a fixed schedule shared by the workers (warm-up
    /// included); `None`: each worker starts its next connection as soon as one ends.
    pub rate: Option<f64>,
    /// A process whose CPU time (with its children's) is kept apart from the machine's
    /// (the proxy: its control-plane work is not a connection's cost).
    pub apart: Option<u32>,
}

impl LoadConfig {
    /// The defaults used by the benchmark, against `targets`.
    pub fn new(targets: Vec<SocketAddr>) -> LoadConfig {
        LoadConfig {
            targets,
            pick: Pick::RoundRobin,
            concurrency: 32,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            // Above the 1 s SYN retransmission: one lost SYN shows as a latency outlier rather
            // than an error.
            timeout: Duration::from_secs(2),
            close: Close::Fin,
            // Measured on 2 cores: a second client thread adds ~10-20% when the machine is
            // otherwise idle (the client can use the core the node's softirqs leave free).
            threads: 2,
            rate: None,
            apart: None,
        }
    }

    fn validate(&self) -> Result<()> {
        ensure!(!self.targets.is_empty(), "load generator: no targets");
        ensure!(
            self.concurrency > 0,
            "load generator: concurrency must be > 0"
        );
        ensure!(self.threads > 0, "load generator: threads must be > 0");
        ensure!(
            !self.duration.is_zero(),
            "load generator: duration must be > 0"
        );
        ensure!(
            !self.timeout.is_zero(),
            "load generator: timeout must be > 0"
        );
        Ok(())
    }
}

/// What a run measured; only connections started after the warm-up count.
#[derive(Debug, Clone)]
pub struct LoadResult {
    /// Connections that got their reply.
    pub connections: u64,
    /// Connections that failed (refused, reset, timed out, ...).
    pub errors: u64,
    /// `errors` by cause: `refused`, `reset`, `timeout`, `no-port`, `eof`, `bad-reply`, `other`.
    pub error_kinds: BTreeMap<String, u64>,
    /// The measured time (the configured duration).
    pub elapsed: Duration,
    /// Microseconds from the start of connect to the reply line received.
    pub latency: Histogram<u64>,
    /// Successful connections per answering backend (`ip:port` as the backend reported it).
    pub per_backend: BTreeMap<String, u64>,
    /// The machine's CPU time over the measured window, all CPUs (`cpu_busy_seconds`), less
    /// the `apart` process's, seconds; `None` if it could not be read.
    pub cpu_busy_s: Option<f64>,
    /// The `apart` process's CPU time over the window (with its children's), seconds.
    pub apart_cpu_s: Option<f64>,
}

impl LoadResult {
    /// Successful connections per second.
    pub fn rate(&self) -> f64 {
        // Precision loss only beyond 2^52 connections.
        #[allow(clippy::cast_precision_loss)]
        let connections = self.connections as f64;
        connections / self.elapsed.as_secs_f64()
    }

    pub fn p50_us(&self) -> u64 {
        self.latency.value_at_quantile(0.5)
    }

    pub fn p99_us(&self) -> u64 {
        self.latency.value_at_quantile(0.99)
    }

    pub fn max_us(&self) -> u64 {
        self.latency.max()
    }
}

impl fmt::Display for LoadResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} connections in {:.1} s = {:.0}/s, latency p50 {} µs p99 {} µs max {} µs, {} errors",
            self.connections,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.p50_us(),
            self.p99_us(),
            self.max_us(),
            self.errors
        )?;
        if !self.error_kinds.is_empty() {
            write!(f, " {:?}", self.error_kinds)?;
        }
        Ok(())
    }
}

/// Generates the load of `cfg` from inside `ns` and returns what it measured.
///
/// The runtime is built on a thread that entered `ns` (its worker threads inherit the
/// namespace), so every client socket is made there. The call is bounded: it returns after
/// `warmup + duration` plus at most one connection timeout.
pub fn run(ns: &Netns, cfg: &LoadConfig) -> Result<LoadResult> {
    cfg.validate()?;
    let cfg = cfg.clone();
    ns.run(move || run_here(cfg))?
        .with_context(|| format!("generating load in netns {}", ns.name()))
}

/// Runs the load from the current thread's namespace.
fn run_here(cfg: LoadConfig) -> Result<LoadResult> {
    let runtime = build_runtime(cfg.threads)?;
    let measured = cfg.duration;
    let limit = cfg.warmup + cfg.duration + cfg.timeout + STOP_GRACE;
    let apart = cfg.apart;
    let (tally, cpu) = runtime.block_on(async move {
        tokio::time::timeout(limit, generate(Arc::new(Plan::new(cfg)), apart))
            .await
            .context("load generator workers did not stop in time")
    })??;
    let mut result = tally.into_result(measured);
    if let Some(cpu) = cpu {
        result.cpu_busy_s = Some(cpu.machine - cpu.apart);
        result.apart_cpu_s = apart.map(|_| cpu.apart);
    }
    Ok(result)
}

/// CPU time, seconds: the machine's (all CPUs) and one process's (with its children).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuReading {
    pub machine: f64,
    pub apart: f64,
}

impl std::ops::Sub for CpuReading {
    type Output = CpuReading;

    fn sub(self, before: CpuReading) -> CpuReading {
        CpuReading {
            machine: self.machine - before.machine,
            apart: self.apart - before.apart,
        }
    }
}

/// The machine's CPU time so far and that of process `apart` (0 without one).
pub fn cpu_reading(apart: Option<u32>) -> Option<CpuReading> {
    let apart = match apart {
        Some(pid) => {
            let usage = super::modes::ProcessUsage::of(pid)?;
            usage.cpu_seconds + usage.children_cpu_seconds
        }
        None => 0.0,
    };
    Some(CpuReading {
        machine: cpu_busy_seconds()?,
        apart,
    })
}

/// The machine's CPU time so far, all CPUs, seconds, from [`cpu_clock`].
///
/// Not `/proc/stat`'s busy fields: with tick-based accounting (this kernel's) each busy tick
/// (4 ms at 250 Hz) is charged whole to what ran at that instant, and a paced load wakes at
/// the same points of every millisecond (tokio's timer), so the ticks fall at one phase of
/// its bursts for a whole window, a phase that changes from run to run. Read side by side
/// over the same paced windows of the bench (2026-12-06, 10 Services, 25,000 connections
/// each), the ticks said 1.91 s where the scheduler said 2.52 s, and 3.34 s against 2.81 s:
/// errors of -24% to +19%, tens of µs per connection, where the overheads compared are a
/// few µs. Over six 5-second windows of 5,000 connections/s by hand, the ticks read
/// 2.16-3.02 s, the scheduler 2.94-3.02 s and the CPUs' time less their idle time
/// 3.02-3.10 s (the difference: interrupts that woke an idle CPU, which the scheduler
/// charges to no task).
pub fn cpu_busy_seconds() -> Option<f64> {
    (chosen_clock().0)()
}

/// Which clock [`cpu_busy_seconds`] reads on this machine, as the report says it.
pub fn cpu_clock() -> &'static str {
    chosen_clock().1
}

/// The scheduler's clock where it is readable, else `/proc/uptime`'s; chosen once, so that
/// the two readings of a window never come from two clocks.
fn chosen_clock() -> (Clock, &'static str) {
    static CHOSEN: std::sync::OnceLock<(Clock, &'static str)> = std::sync::OnceLock::new();
    *CHOSEN.get_or_init(|| {
        if scheduler_busy_seconds().is_some() {
            (scheduler_busy_seconds, SCHEDULER_CLOCK)
        } else {
            (awake_seconds, AWAKE_CLOCK)
        }
    })
}

/// A reading of the machine's CPU time so far, seconds.
type Clock = fn() -> Option<f64>;

pub const SCHEDULER_CLOCK: &str = "the scheduler's clock (every task's run time to the \
    nanosecond: the root cpuacct group's usage)";
pub const AWAKE_CLOCK: &str = "`/proc/uptime` (the CPUs' time less their idle time, to 10 ms)";
/// What runs before the clock was recorded read: `/proc/stat`'s busy fields.
pub const TICKED_CLOCK: &str = "`/proc/stat` (tick-sampled: each busy tick charged whole)";

/// Every task's CPU time as the scheduler charged it, seconds: the root `cpuacct` group's
/// usage (nanoseconds; cgroup v1, where the root group counts every task). Interrupt and
/// softirq work counts where it ran on a task (without `IRQ_TIME_ACCOUNTING`, this kernel's
/// case, it is charged to the task it interrupted), not where it woke an idle CPU.
fn scheduler_busy_seconds() -> Option<f64> {
    let usage = std::fs::read_to_string("/sys/fs/cgroup/cpuacct/cpuacct.usage").ok()?;
    let ns: u64 = usage.trim().parse().ok()?;
    #[allow(clippy::cast_precision_loss)]
    Some(ns as f64 / 1e9)
}

/// The CPUs' time since boot less their idle time, seconds, from `/proc/uptime` (whose idle
/// time, with a tickless idle, is measured rather than sampled), to 10 ms.
fn awake_seconds() -> Option<f64> {
    let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
    let mut fields = uptime.split_whitespace().map(str::parse::<f64>);
    let (up, idle) = (fields.next()?.ok()?, fields.next()?.ok()?);
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    #[allow(clippy::cast_precision_loss)]
    Some(up * cpus as f64 - idle)
}

fn build_runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    builder
        .enable_io()
        .enable_time()
        .build()
        .context("building the load generator runtime")
}

/// The run as the workers see it: fixed instants and a shared target picker.
struct Plan {
    targets: Vec<SocketAddr>,
    pick: Pick,
    close: Close,
    timeout: Duration,
    concurrency: usize,
    /// Connections started from here on are measured.
    measure_from: Instant,
    /// No connection starts from here on.
    stop_at: Instant,
    next: AtomicUsize,
    /// The schedule's start and rate, if paced.
    paced: Option<(Instant, f64)>,
    /// The next scheduled start, as a count from the schedule's start.
    tickets: AtomicU64,
}

impl Plan {
    fn new(cfg: LoadConfig) -> Plan {
        let now = Instant::now();
        let measure_from = now + cfg.warmup;
        Plan {
            targets: cfg.targets,
            pick: cfg.pick,
            close: cfg.close,
            timeout: cfg.timeout,
            concurrency: cfg.concurrency,
            measure_from,
            stop_at: measure_from + cfg.duration,
            next: AtomicUsize::new(0),
            paced: cfg.rate.map(|rate| (now, rate)),
            tickets: AtomicU64::new(0),
        }
    }

    /// When a paced worker's next connection is due (now, unpaced).
    fn next_start(&self) -> Option<Instant> {
        let (start, rate) = self.paced?;
        let n = self.tickets.fetch_add(1, Ordering::Relaxed);
        #[allow(clippy::cast_precision_loss)]
        Some(start + Duration::from_secs_f64(n as f64 / rate))
    }

    fn target(&self, rng: &mut Rng) -> SocketAddr {
        let i = match self.pick {
            Pick::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed),
            Pick::Random => rng.below(self.targets.len()),
        };
        self.targets[i % self.targets.len()]
    }
}

/// Starts `concurrency` workers and merges what they counted; with the machine's CPU time
/// over the measured window.
async fn generate(plan: Arc<Plan>, apart: Option<u32>) -> Result<(Tally, Option<CpuReading>)> {
    let window = (plan.measure_from, plan.stop_at);
    let cpu = tokio::spawn(async move {
        tokio::time::sleep_until(window.0.into()).await;
        let before = cpu_reading(apart);
        tokio::time::sleep_until(window.1.into()).await;
        Some(cpu_reading(apart)? - before?)
    });
    let mut workers = tokio::task::JoinSet::new();
    for id in 0..plan.concurrency {
        workers.spawn(worker(plan.clone(), id));
    }
    let mut total = Tally::new()?;
    while let Some(tally) = workers.join_next().await {
        total.merge(&tally.context("a load generator worker failed")??)?;
    }
    Ok((total, cpu.await.ok().flatten()))
}

/// One connection after the other until the plan's end.
async fn worker(plan: Arc<Plan>, id: usize) -> Result<Tally> {
    let mut tally = Tally::new()?;
    let mut rng = Rng::seeded(id);
    loop {
        if let Some(due) = plan.next_start() {
            if due >= plan.stop_at {
                return Ok(tally);
            }
            tokio::time::sleep_until(due.into()).await;
        }
        let start = Instant::now();
        if start >= plan.stop_at {
            return Ok(tally);
        }
        let target = plan.target(&mut rng);
        let outcome = tokio::time::timeout(plan.timeout, connect_once(target, plan.close))
            .await
            .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()));
        let measured = start >= plan.measure_from;
        match outcome {
            Ok(reply) if measured => tally.success(reply.backend, reply.at - start),
            Ok(_) => {}
            Err(e) => {
                if measured {
                    tally.error(error_kind(&e));
                }
                tokio::time::sleep(ERROR_BACKOFF).await;
            }
        }
    }
}

/// A reply and when it was complete.
struct Reply {
    backend: SocketAddr,
    at: Instant,
}

/// One connection: connect, send the request line, read the reply line, close.
///
/// Dropping the stream closes it: the client closes first (the servers wait for it), so the
/// TIME_WAIT stays on the client, where tcp_tw_reuse recycles it.
async fn connect_once(target: SocketAddr, close: Close) -> io::Result<Reply> {
    let mut stream = TcpStream::connect(target).await?;
    if close == Close::Reset {
        stream.set_zero_linger()?;
    }
    stream.write_all(REQUEST).await?;
    let mut buf = [0u8; MAX_REPLY];
    let line = read_line(&mut stream, &mut buf).await?;
    let at = Instant::now();
    Ok(Reply {
        backend: parse_backend(line)?,
        at,
    })
}

/// Reads until the first newline; the line without it.
async fn read_line<'a>(stream: &mut TcpStream, buf: &'a mut [u8]) -> io::Result<&'a [u8]> {
    let mut len = 0;
    loop {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if let Some(end) = buf[len..len + n].iter().position(|&b| b == b'\n') {
            return Ok(&buf[..len + end]);
        }
        len += n;
        if len == buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "reply line too long",
            ));
        }
    }
}

/// The `backend=<ip:port>` field of a who-am-I reply.
fn parse_backend(line: &[u8]) -> io::Result<SocketAddr> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "not a who-am-I reply");
    let line = std::str::from_utf8(line).map_err(|_| bad())?;
    line.split_whitespace()
        .find_map(|field| field.strip_prefix("backend="))
        .and_then(|addr| addr.parse().ok())
        .ok_or_else(bad)
}

/// The `error_kinds` key of a failed connection.
fn error_kind(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "refused",
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => "reset",
        io::ErrorKind::TimedOut => "timeout",
        // EADDRNOTAVAIL on connect: no free local port for this destination.
        io::ErrorKind::AddrNotAvailable => "no-port",
        io::ErrorKind::UnexpectedEof => "eof",
        io::ErrorKind::InvalidData => "bad-reply",
        _ => "other",
    }
}

/// What one worker (or all of them, merged) counted.
struct Tally {
    latency: Histogram<u64>,
    connections: u64,
    errors: BTreeMap<&'static str, u64>,
    backends: HashMap<SocketAddr, u64>,
}

impl Tally {
    fn new() -> Result<Tally> {
        Ok(Tally {
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .context("creating a latency histogram")?,
            connections: 0,
            errors: BTreeMap::new(),
            backends: HashMap::new(),
        })
    }

    fn success(&mut self, backend: SocketAddr, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency.saturating_record(us.clamp(1, MAX_LATENCY_US));
        self.connections += 1;
        *self.backends.entry(backend).or_default() += 1;
    }

    fn error(&mut self, kind: &'static str) {
        *self.errors.entry(kind).or_default() += 1;
    }

    fn merge(&mut self, other: &Tally) -> Result<()> {
        self.latency
            .add(&other.latency)
            .context("merging latency histograms")?;
        self.connections += other.connections;
        for (kind, n) in &other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        for (backend, n) in &other.backends {
            *self.backends.entry(*backend).or_default() += n;
        }
        Ok(())
    }

    fn into_result(self, elapsed: Duration) -> LoadResult {
        LoadResult {
            connections: self.connections,
            errors: self.errors.values().sum(),
            error_kinds: self
                .errors
                .into_iter()
                .map(|(kind, n)| (kind.to_owned(), n))
                .collect(),
            elapsed,
            latency: self.latency,
            per_backend: self
                .backends
                .into_iter()
                .map(|(backend, n)| (backend.to_string(), n))
                .collect(),
            cpu_busy_s: None,
            apart_cpu_s: None,
        }
    }
}

/// xorshift64*: random enough to spread connections, and no dependency for it.
struct Rng(u64);

impl Rng {
    fn seeded(id: usize) -> Rng {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        // The odd multiplier spreads worker ids over the state; `| 1` keeps it non-zero.
        Rng((id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(nanos) | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32;
        // x < 2^32, so both conversions are lossless on 64-bit and the modulo bias is tiny.
        usize::try_from(x).unwrap_or(0) % n
    }
}

#[cfg(test)]
mod tests {
    use super::super::server;
    use super::*;
    use kproxy_testbed::{Topology, TopologyOptions, require_privileges};

    #[test]
    fn parses_the_backend_of_a_reply() {
        assert_eq!(
            parse_backend(b"backend=198.18.2.2:8080 peer=198.18.1.2:40000").unwrap(),
            "198.18.2.2:8080".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            parse_backend(b"backend=198.18.3.2:80").unwrap(),
            "198.18.3.2:80".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            parse_backend(b"backend=[2001:db8:2::2]:8080 peer=[2001:db8:1::2]:40000").unwrap(),
            "[2001:db8:2::2]:8080".parse::<SocketAddr>().unwrap()
        );
        for bad in [&b""[..], b"hello", b"backend=nope", b"\xff"] {
            let err = parse_backend(bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        }
    }

    #[test]
    fn random_pick_covers_all_targets() {
        let mut rng = Rng::seeded(7);
        let mut seen = [0u32; 3];
        for _ in 0..3000 {
            seen[rng.below(3)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 800), "{seen:?}");
    }

    #[test]
    fn invalid_configs_are_rejected() {
        let target = "198.18.2.2:8080".parse().unwrap();
        assert!(LoadConfig::new(vec![]).validate().is_err());
        let zero = LoadConfig {
            concurrency: 0,
            ..LoadConfig::new(vec![target])
        };
        assert!(zero.validate().is_err());
        assert!(LoadConfig::new(vec![target]).validate().is_ok());
    }

    /// Env knobs for trying other loads by hand: `BENCH_LOAD_CONCURRENCY`, `BENCH_LOAD_SECS`,
    /// `BENCH_LOAD_THREADS`, `BENCH_LOAD_RESET=1`.
    fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    #[test]
    fn loads_three_backends_directly() {
        if !require_privileges("bench::load::loads_three_backends_directly") {
            return;
        }
        let topo = Topology::build(TopologyOptions {
            backends: 3,
            ..TopologyOptions::default()
        })
        .unwrap();
        let targets: Vec<_> = (0..3)
            .map(|i| SocketAddr::new(topo.backend_addr(i).into(), 8080))
            .collect();
        let servers: Vec<_> = topo
            .backends
            .iter()
            .zip(&targets)
            .map(|(ns, addr)| server::start(ns, *addr).unwrap())
            .collect();
        let defaults = LoadConfig::new(targets.clone());
        let cfg = LoadConfig {
            concurrency: env_or("BENCH_LOAD_CONCURRENCY", 32),
            duration: Duration::from_secs_f64(env_or("BENCH_LOAD_SECS", 2.0)),
            warmup: Duration::from_millis(200),
            threads: env_or("BENCH_LOAD_THREADS", defaults.threads),
            close: if env_or("BENCH_LOAD_RESET", 0) == 1 {
                Close::Reset
            } else {
                Close::Fin
            },
            ..defaults
        };
        let started = Instant::now();
        let result = run(&topo.client, &cfg).unwrap();
        let took = started.elapsed();
        println!(
            "concurrency {} threads {} close {:?}: {result}\nper backend: {:?}",
            cfg.concurrency, cfg.threads, cfg.close, result.per_backend
        );

        assert!(took < cfg.warmup + cfg.duration + cfg.timeout + STOP_GRACE);
        assert_eq!(result.errors, 0, "{result}");
        assert!(result.rate() > 1000.0, "{result}");
        assert!(result.p50_us() <= result.p99_us());
        assert_eq!(result.latency.len(), result.connections);
        assert_eq!(
            result.per_backend.keys().cloned().collect::<Vec<_>>(),
            targets.iter().map(ToString::to_string).collect::<Vec<_>>()
        );
        assert_eq!(result.per_backend.values().sum::<u64>(), result.connections);
        // Round-robin spreads evenly, up to the connections in flight at the end.
        let min = *result.per_backend.values().min().unwrap();
        let max = *result.per_backend.values().max().unwrap();
        assert!(max - min <= 2 * cfg.concurrency as u64, "{result:?}");

        // Servers saw at least every measured connection (plus the warm-up's) and stop quickly.
        let accepted: u64 = servers.iter().map(server::BenchServer::accepted).sum();
        assert!(accepted >= result.connections);
        let stopping = Instant::now();
        drop(servers);
        assert!(stopping.elapsed() < Duration::from_secs(1));
    }

    /// This thread's CPU time so far.
    fn thread_cpu() -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec the call writes.
        assert_eq!(
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) },
            0
        );
        Duration::new(ts.tv_sec.unsigned_abs(), u32::try_from(ts.tv_nsec).unwrap())
    }

    #[test]
    fn each_clock_counts_the_cpu_a_thread_burns_and_no_more_than_the_cpus_have() {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let clocks: [(&str, Clock); 2] = [
            ("scheduler", scheduler_busy_seconds),
            ("awake", awake_seconds),
        ];
        for (name, clock) in clocks {
            let Some(before) = clock() else {
                eprintln!("{name}: not readable here");
                continue;
            };
            let started = (Instant::now(), thread_cpu());
            while thread_cpu().saturating_sub(started.1) < Duration::from_millis(300) {
                std::hint::spin_loop();
            }
            let busy = clock().expect("readable a moment ago") - before;
            let wall = started.0.elapsed().as_secs_f64();
            #[allow(clippy::cast_precision_loss)]
            let most = wall * cpus as f64 + 0.03;
            // 10 ms of resolution per reading at most (`/proc/uptime`).
            assert!(
                (0.28..=most).contains(&busy),
                "{name}: {busy} s busy while this thread burned 0.3 s of CPU in {wall} s"
            );
        }
        assert!(cpu_busy_seconds().is_some());
    }

    #[test]
    fn a_paced_load_keeps_its_rate_and_measures_the_machine_cpu() {
        if !require_privileges(
            "bench::load::a_paced_load_keeps_its_rate_and_measures_the_machine_cpu",
        ) {
            return;
        }
        let topo = Topology::build(TopologyOptions {
            backends: 1,
            ..TopologyOptions::default()
        })
        .unwrap();
        let target = SocketAddr::new(topo.backend_addr(0).into(), 8080);
        let _server = server::start(&topo.backends[0], target).unwrap();
        let cfg = LoadConfig {
            duration: Duration::from_secs(1),
            warmup: Duration::from_millis(200),
            rate: Some(500.0),
            ..LoadConfig::new(vec![target])
        };
        let result = run(&topo.client, &cfg).unwrap();
        assert_eq!(result.errors, 0, "{result}");
        // The schedule, not the machine's speed, sets the rate: 500 connections start in the
        // measured second (give or take those in flight at its edges).
        assert!((450.0..=550.0).contains(&result.rate()), "{result}");
        let busy = result.cpu_busy_s.expect("the CPU time read");
        assert!(
            busy > 0.0 && busy < 2.0 * 1.5,
            "{busy} s of CPU over a 1 s window on 2 CPUs"
        );
    }

    #[test]
    fn counts_refused_connections_as_errors() {
        if !require_privileges("bench::load::counts_refused_connections_as_errors") {
            return;
        }
        let topo = Topology::build(TopologyOptions {
            backends: 1,
            ..TopologyOptions::default()
        })
        .unwrap();
        // Nothing listens on the backend: every connection is refused, none hangs. The timeout
        // leaves room for a first neighbour resolution on the fresh veths, which retries only
        // after a second when its first request is lost (seen in CI as a lone `timeout`).
        let cfg = LoadConfig {
            concurrency: 4,
            duration: Duration::from_millis(300),
            warmup: Duration::ZERO,
            timeout: Duration::from_secs(3),
            ..LoadConfig::new(vec![SocketAddr::new(topo.backend_addr(0).into(), 8080)])
        };
        let result = run(&topo.client, &cfg).unwrap();
        assert_eq!(result.connections, 0);
        assert!(result.errors > 0);
        assert_eq!(result.error_kinds.keys().collect::<Vec<_>>(), ["refused"]);
    }
}
