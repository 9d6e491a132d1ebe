//! The standard process metrics every Kubernetes component exports (client_golang's process
//! collector, as kube-proxy has them): CPU time, resident and virtual memory, open and
//! maximum file descriptors, start time. Read from `/proc/self` at each scrape.

use procfs::process::{LimitValue, Process};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

/// What one scrape reads of this process.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProcessSample {
    pub cpu_seconds: f64,
    pub resident_bytes: f64,
    pub virtual_bytes: f64,
    pub open_fds: f64,
    /// The soft limit; `None` when unlimited (the metric is then left out).
    pub max_fds: Option<f64>,
    pub start_time_seconds: f64,
}

impl ProcessSample {
    /// This process, now.
    pub fn read() -> procfs::ProcResult<Self> {
        let me = Process::myself()?;
        let stat = me.stat()?;
        let ticks = float(procfs::ticks_per_second());
        let max_fds = match me.limits()?.max_open_files.soft_limit {
            LimitValue::Value(n) => Some(float(n)),
            LimitValue::Unlimited => None,
        };
        Ok(Self {
            cpu_seconds: float(stat.utime + stat.stime) / ticks,
            resident_bytes: float(stat.rss * procfs::page_size()),
            virtual_bytes: float(stat.vsize),
            open_fds: float(u64::try_from(me.fd_count()?).unwrap_or(u64::MAX)),
            max_fds,
            start_time_seconds: float(procfs::boot_time_secs()?) + float(stat.starttime) / ticks,
        })
    }
}

/// What this process has cost so far: its CPU time (all threads, user and system), the
/// pages it faulted in and its peak resident memory. Logged when the agent becomes ready:
/// a start's cost in CPU is steadier than its duration, which the rest of the node's load
/// moves, and its peak tells the start's share of the process's.
#[derive(Clone, Copy, Debug, Default)]
pub struct Spent {
    pub cpu_ms: u64,
    pub minor_faults: u64,
    /// `VmHWM`; 0 if unknown.
    pub peak_rss_kib: u64,
}

impl Spent {
    /// This process, now; nothing (zeros) if /proc cannot be read.
    pub fn so_far() -> Self {
        let Ok(me) = Process::myself() else {
            return Self::default();
        };
        let Ok(stat) = me.stat() else {
            return Self::default();
        };
        Self {
            cpu_ms: (stat.utime + stat.stime) * 1000 / procfs::ticks_per_second().max(1),
            minor_faults: stat.minflt,
            peak_rss_kib: me.status().ok().and_then(|s| s.vmhwm).unwrap_or(0),
        }
    }
}

/// What the calling thread has had of the CPU: the time it ran (its CPU clock) and the time
/// it waited, runnable, for a CPU (the scheduler's `/proc/thread-self/schedstat`, which
/// adds each wait when the thread is scheduled in). Read around a sync, it tells a sync
/// that computed for long from one that was preempted or blocked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadTime {
    pub ran_ns: u64,
    pub runnable_ns: u64,
}

impl ThreadTime {
    /// The calling thread, now; `None` where the kernel keeps no such account.
    pub fn now() -> Option<Self> {
        let waits = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
        // schedstat's first field, the time run, is brought up to date only when the
        // thread is scheduled out: the thread's clock counts the current slice too.
        let ran = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        let ran_ns =
            u64::try_from(ran.tv_sec).ok()? * 1_000_000_000 + u64::try_from(ran.tv_nsec).ok()?;
        Some(Self {
            ran_ns,
            runnable_ns: runnable_ns(&waits)?,
        })
    }

    /// What the thread had between `earlier` and `self`.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            ran_ns: self.ran_ns.saturating_sub(earlier.ran_ns),
            runnable_ns: self.runnable_ns.saturating_sub(earlier.runnable_ns),
        }
    }
}

/// The time waited on a run queue, of `schedstat`'s text (time run, time waited, slices).
fn runnable_ns(schedstat: &str) -> Option<u64> {
    schedstat.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// `n` as a metric value: counts, bytes and ticks far below 2^52, where f64 is exact.
#[expect(
    clippy::cast_precision_loss,
    reason = "process counters and sizes stay far below 2^52"
)]
fn float(n: u64) -> f64 {
    n as f64
}

/// Registered without a prefix: the names are the standard ones.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // A scrape that cannot read /proc leaves these out rather than fail the others.
        let Ok(sample) = ProcessSample::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(sample.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                Some(sample.resident_bytes),
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                Some(sample.virtual_bytes),
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                Some(sample.open_fds),
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                sample.max_fds,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                Some(sample.start_time_seconds),
            ),
        ];
        for (name, help, value) in gauges {
            let Some(value) = value else { continue };
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;

    #[test]
    fn a_scrape_carries_this_process_s_standard_metrics() {
        // The kernel counts CPU time in clock ticks: a test run alone may not have used one.
        spin_until(|| Spent::so_far().cpu_ms > 0);
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ProcessCollector));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encoding");
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .expect("a scrape Prometheus parses");
        let value = |name: &str| {
            let found = scrape.samples.iter().find(|s| s.metric == name);
            match found.map(|s| &s.value) {
                Some(
                    prometheus_parse::Value::Counter(v)
                    | prometheus_parse::Value::Gauge(v)
                    | prometheus_parse::Value::Untyped(v),
                ) => *v,
                other => panic!("{name}: {other:?}\n{text}"),
            }
        };
        // This test process: some CPU used, some memory resident, a few descriptors open,
        // started within the last hour.
        assert!(value("process_cpu_seconds_total") > 0.0);
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
        assert!(value("process_open_fds") >= 3.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        let started = value("process_start_time_seconds");
        assert!(
            (now - 3600.0..=now + 1.0).contains(&started),
            "{started} vs {now}"
        );
    }

    #[test]
    fn spent_counts_this_process_cpu_and_faults() {
        let before = Spent::so_far();
        // Fresh pages, each written once: each is a minor fault (no huge pages for a
        // mapping this size unless asked for).
        let pages = 1024;
        let mut memory = vec![0u8; pages * 4096];
        for page in memory.chunks_mut(4096) {
            page[0] = 1;
        }
        std::hint::black_box(&memory);
        let faulted = Spent::so_far();
        // Those pages are resident now: the peak holds at least them.
        assert!(
            faulted.peak_rss_kib >= pages as u64 * 4,
            "{faulted:?} with {pages} pages written"
        );
        assert!(
            faulted.minor_faults >= before.minor_faults + pages as u64 / 2,
            "{before:?} then {faulted:?} after writing {pages} fresh pages"
        );
        // Spin until the CPU time moves (the clock's resolution is a tick at most).
        spin_until(|| Spent::so_far().cpu_ms >= faulted.cpu_ms + 20);
    }

    /// Computes until `done`; fails after 5 s.
    fn spin_until(done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut x = 0u64;
        while !done() {
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            assert!(
                std::time::Instant::now() < deadline,
                "5 s of spinning did not do it: {:?}",
                Spent::so_far()
            );
        }
    }

    #[test]
    fn schedstat_s_second_field_is_the_time_waited() {
        assert_eq!(runnable_ns("338133459 304568 75\n"), Some(304_568));
        assert_eq!(runnable_ns("12\n"), None);
        assert_eq!(runnable_ns("1 x 2"), None);
    }

    #[test]
    fn thread_time_counts_this_thread_s_running_not_its_sleep() {
        let before = ThreadTime::now().expect("the kernel keeps schedstat");
        std::thread::sleep(std::time::Duration::from_millis(30));
        let slept = ThreadTime::now().expect("readable").since(before);
        assert!(
            slept.ran_ns < 20_000_000,
            "30 ms asleep counted as running: {slept:?}"
        );
        let spun = std::time::Instant::now();
        let mut x = 0u64;
        while spun.elapsed() < std::time::Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
        }
        let busy = ThreadTime::now().expect("readable").since(before);
        // Ran or waited for a CPU: on a busy machine part of the spin is spent waiting.
        assert!(
            busy.ran_ns + busy.runnable_ns >= 25_000_000,
            "30 ms of spinning neither ran nor waited: {busy:?}"
        );
        assert!(busy.ran_ns > slept.ran_ns, "{slept:?} then {busy:?}");
    }
}
