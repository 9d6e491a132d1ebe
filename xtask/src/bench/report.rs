//! The benchmark's results model and its report: `results.json`, a markdown summary and a chart.
//!
//! The model keeps every raw sample (one per repetition) so the JSON can be re-rendered or
//! re-analysed later; medians and min–max ranges are computed only when presenting.

use std::collections::BTreeSet;
use std::fmt::Write as _; // `write!` into a String cannot fail, hence the `let _ =`s
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context as _, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use super::real::report::{self as real_report, Real};

/// The mode the others are compared with: the kube-proxy default most clusters still run.
pub const BASELINE_MODE: &str = "iptables-legacy";

/// The TTF the chart's text is drawn with (Debian package fonts-dejavu-core). Loading one file
/// ourselves keeps the chart independent of fontconfig and of whatever fonts a machine has.
pub const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// One repetition of one cell: a load run of `duration_s` seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// New connections (connect + request + response + close) completed per second.
    pub rate: f64,
    /// Median connect+request latency, microseconds.
    pub p50_us: u64,
    /// 99th percentile connect+request latency, microseconds.
    pub p99_us: u64,
    /// The slowest connection's connect+request latency, microseconds (a retried SYN shows
    /// as a second or more); 0 in data from before it was recorded.
    #[serde(default)]
    pub max_us: u64,
    /// Connections that failed (refused, reset, timed out).
    pub errors: u64,
}

/// Median, minimum and maximum of a set of repetitions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    /// The statistics of `values`, ignoring non-finite ones; `None` when nothing is left.
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let (&min, &max) = (sorted.first()?, sorted.last()?);
        let mid = sorted.len() / 2;
        let median = if sorted.len().is_multiple_of(2) {
            f64::midpoint(sorted[mid - 1], sorted[mid])
        } else {
            sorted[mid]
        };
        Some(Self { median, min, max })
    }
}

/// Which service the load generator connects to. With rule lists that are walked linearly
/// (iptables) the last service is the worst case; a random one is the average case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    Last,
    Random,
}

impl Placement {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Last => "last",
            Self::Random => "random",
        }
    }
}

/// One mode at one scale and placement, with one sample per repetition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    pub mode: String,
    /// Number of `ClusterIP` services programmed.
    pub services: usize,
    pub placement: Placement,
    pub samples: Vec<Sample>,
}

impl Cell {
    pub fn rate(&self) -> Option<Stat> {
        self.stat(|s| s.rate)
    }

    pub fn p50(&self) -> Option<Stat> {
        self.stat(|s| count(s.p50_us))
    }

    pub fn p99(&self) -> Option<Stat> {
        self.stat(|s| count(s.p99_us))
    }

    /// Failed connections over all repetitions.
    pub fn errors(&self) -> u64 {
        self.samples.iter().map(|s| s.errors).sum()
    }

    fn stat(&self, field: impl Fn(&Sample) -> f64) -> Option<Stat> {
        Stat::of(&self.samples.iter().map(field).collect::<Vec<_>>())
    }
}

/// How long a mode takes to program its dataplane, one value per repetition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Programming {
    pub mode: String,
    pub services: usize,
    /// Programming all `services` from nothing, milliseconds.
    pub full_sync_ms: Vec<f64>,
    /// Adding one service on top of `services`, until it answers, milliseconds.
    pub one_change_ms: Vec<f64>,
    /// The agent's own measure of that one change (event seen to maps written), milliseconds;
    /// empty for modes without an agent of ours.
    #[serde(default)]
    pub agent_change_ms: Vec<f64>,
}

/// The kproxy agent's resource use while holding `services` services.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentUsage {
    pub services: usize,
    pub peak_rss_mib: f64,
    pub cpu_seconds: f64,
}

/// The datapath program's own time per packet at one scale (`BPF_PROG_TEST_RUN`, see
/// `prog_cost`): one median of many runs per repetition, ns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgCost {
    /// `tc-ingress` or `xdp`.
    pub program: String,
    /// The Services' and frames' family, `IPv4` or `IPv6` (runs before the IPv6 rows were
    /// all IPv4).
    #[serde(default = "ipv4_name")]
    pub family: String,
    /// `new flow`, `established`, or the floor (an empty program).
    pub path: String,
    pub services: usize,
    pub ns: Vec<f64>,
}

fn ipv4_name() -> String {
    "IPv4".into()
}

/// What the XDP program costs packets: packets per second, one value per repetition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct XdpCost {
    /// No XDP program attached.
    pub bare: Vec<f64>,
    /// kproxy's XDP program attached, packets to no service (the cost every packet pays).
    pub kproxy: Vec<f64>,
    /// kproxy's XDP program attached, packets to a service (translated); empty if not measured.
    #[serde(default)]
    pub service: Vec<f64>,
}

/// One repetition of the UDP flood of the external section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UdpSample {
    /// Packets per second that left the external client (the offered load).
    pub sent_pps: f64,
    /// Packets per second that reached the backends' interfaces (the forwarding rate).
    pub delivered_pps: f64,
}

/// One repetition of node1's own forwarding rate: the flood's frames injected at node1's NIC
/// with `BPF_PROG_TEST_RUN` live frames (no sender in the bed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node1Sample {
    /// Frames injected per second of the test run with node1's switch port off the bridge,
    /// so that nothing downstream works within the run: node1's forwarding rate.
    pub pps: f64,
    /// Frames of that run.
    #[serde(default)]
    pub isolated_frames: Option<u64>,
    /// Frames of the run with the bed connected.
    pub frames: u64,
    /// In the isolated run, the packets node1's switch port received (what node1 sent out).
    #[serde(default)]
    pub left_node1: Option<u64>,
    /// Frames per second of the run with the bed connected, whose frames the bridge, node2
    /// and the pods processed (within the run, on the same CPU).
    #[serde(default)]
    pub with_delivery_pps: Option<f64>,
    /// Packets the backends' interfaces received meanwhile (and 100 ms after).
    pub delivered: u64,
    /// Of those, what had arrived by the time the test run returned.
    #[serde(default)]
    pub delivered_at_return: Option<u64>,
    /// Packets node1's XDP program sent by XDP_TX/redirect meanwhile (kproxy's counters;
    /// none for kube-proxy's rules).
    #[serde(default)]
    pub xdp_tx: Option<u64>,
    pub elapsed_s: f64,
}

/// One mode of the external section, one sample per repetition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExternalCell {
    pub mode: String,
    /// New TCP connections from the external client to the NodePort (to the backends
    /// directly for the bare forwarder).
    pub connections: Vec<Sample>,
    pub udp: Vec<UdpSample>,
    /// Node1's own forwarding rate (live frames); absent in older reports.
    #[serde(default)]
    pub node1: Vec<Node1Sample>,
}

impl ExternalCell {
    /// Node1's forwarding rate (live frames), packets/s.
    pub fn node1_pps(&self) -> Option<Stat> {
        Stat::of(&self.node1.iter().map(|s| s.pps).collect::<Vec<_>>())
    }

    pub fn rate(&self) -> Option<Stat> {
        Stat::of(&self.connections.iter().map(|s| s.rate).collect::<Vec<_>>())
    }

    pub fn p99(&self) -> Option<Stat> {
        Stat::of(
            &self
                .connections
                .iter()
                .map(|s| count(s.p99_us))
                .collect::<Vec<_>>(),
        )
    }

    pub fn delivered(&self) -> Option<Stat> {
        Stat::of(&self.udp.iter().map(|s| s.delivered_pps).collect::<Vec<_>>())
    }

    pub fn sent(&self) -> Option<Stat> {
        Stat::of(&self.udp.iter().map(|s| s.sent_pps).collect::<Vec<_>>())
    }

    /// Failed connections over all repetitions.
    pub fn errors(&self) -> u64 {
        self.connections.iter().map(|s| s.errors).sum()
    }
}

/// The external section: a NodePort on one node with its endpoints on another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct External {
    /// Endpoints of each service, all on the other node.
    pub remote_backends: usize,
    /// UDP flows the flood cycles through.
    pub udp_flows: usize,
    /// Node1 resolved its LAN neighbours before each measurement (`--warm-neighbours`).
    #[serde(default)]
    pub warm_neighbours: bool,
    pub cells: Vec<ExternalCell>,
    /// The live-frames harness alone (restoring program, XDP_DROP), packets/s, one per
    /// repetition: the cost every node1 pps includes.
    #[serde(default)]
    pub live_floor_pps: Vec<f64>,
    /// What the datapath counters showed when a mode did not forward as expected.
    pub notes: Vec<String>,
}

/// One of the project's performance targets and whether this run met it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub name: String,
    pub wanted: String,
    pub measured: String,
    pub pass: bool,
    /// The run has no figure for it: reported as not measured, never as met.
    #[serde(default)]
    pub not_measured: bool,
}

/// A mode that could not run on this machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub mode: String,
    pub reason: String,
}

/// What the numbers were measured on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub kernel: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    /// When the run started, as the harness chose to write it (e.g. RFC 3339).
    pub date: String,
}

/// Everything one `cargo xtask bench` run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub machine: Machine,
    /// A short run (fewer repetitions or services): indicative only.
    pub quick: bool,
    pub repetitions: usize,
    /// Length of one load run, seconds.
    pub duration_s: f64,
    pub cells: Vec<Cell>,
    pub programming: Vec<Programming>,
    pub agent: Vec<AgentUsage>,
    pub xdp: Option<XdpCost>,
    /// The programs' own time per packet by scale; empty in reports from before it existed.
    #[serde(default)]
    pub prog_cost: Vec<ProgCost>,
    /// Absent in reports from before the section existed.
    #[serde(default)]
    pub external: Option<External>,
    /// kproxy against the real kube-proxy fed by a real API server (the headline); absent
    /// in reports from before the section existed or with `--skip-real`.
    #[serde(default)]
    pub real: Option<Real>,
    pub targets: Vec<Target>,
    pub skipped: Vec<Skipped>,
}

/// Where [`write_all`] put the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub json: PathBuf,
    pub markdown: PathBuf,
    pub chart: PathBuf,
    /// The real section's chart, when it ran.
    pub chart_real: Option<PathBuf>,
    /// The real section's CPU overheads, when it measured them beside `direct`.
    pub chart_cpu: Option<PathBuf>,
}

impl Paths {
    /// The files, as a line says them: "a, b and c".
    pub fn written(&self) -> String {
        let mut files: Vec<String> = [&self.json, &self.markdown, &self.chart]
            .into_iter()
            .chain(self.chart_real.iter())
            .chain(self.chart_cpu.iter())
            .map(|p| p.display().to_string())
            .collect();
        let last = files.pop().unwrap_or_default();
        format!("{} and {last}", files.join(", "))
    }
}

/// Writes `results.json`, `results.md` and `chart.png` into `dir` (created if missing).
pub fn write_all(report: &Report, dir: &Path) -> anyhow::Result<Paths> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let paths = Paths {
        json: dir.join("results.json"),
        markdown: dir.join("results.md"),
        chart: dir.join("chart.png"),
        chart_real: report
            .real
            .as_ref()
            .filter(|r| !r.cells.is_empty())
            .map(|_| dir.join("chart-real.png")),
        chart_cpu: report
            .real
            .as_ref()
            .filter(|r| !cpu_overhead_bars(r).is_empty())
            .map(|_| dir.join("chart-cpu.png")),
    };
    // The JSON goes first: it holds the raw data, so it survives a failing chart.
    let json = serde_json::to_string_pretty(report)? + "\n";
    write(&paths.json, &json)?;
    write(&paths.markdown, &markdown(report))?;
    chart(report, &paths.chart)?;
    if let (Some(real), Some(path)) = (&report.real, &paths.chart_real) {
        // The same panels, drawn from the real section's cells alone.
        let projected = Report {
            cells: real.cells.clone(),
            programming: Vec::new(),
            external: None,
            real: None,
            ..report.clone()
        };
        chart_titled(&projected, path, Some("real kube-proxy"))?;
    }
    if let (Some(real), Some(path)) = (&report.real, &paths.chart_cpu) {
        cpu_chart(report, real, path)?;
    }
    Ok(paths)
}

/// Each mode's CPU per connection over `direct` measured beside it, µs: medians over the
/// pairs of windows with min–max, the scale named when the run measured several.
fn cpu_overhead_bars(real: &super::real::report::Real) -> Vec<Bar> {
    let scales: std::collections::BTreeSet<usize> = real.cpu.iter().map(|c| c.services).collect();
    // Each mode in the colour it has in the real section's chart (drawn from its cells).
    let modes = first_seen(real.cells.iter().map(|c| c.mode.as_str()).collect());
    real.cpu
        .iter()
        .filter_map(|c| {
            Some(Bar {
                label: if scales.len() > 1 {
                    format!("{} ({})", c.mode, c.services)
                } else {
                    c.mode.clone()
                },
                color: COLORS[mode_rank(&modes, &c.mode) % COLORS.len()],
                stat: Stat::of(&c.overhead_beside_us)?,
            })
        })
        .collect()
}

/// The CPU overheads (see [`cpu_overhead_bars`]) as bars, in a chart of their own.
fn cpu_chart(report: &Report, real: &super::real::report::Real, path: &Path) -> anyhow::Result<()> {
    ensure_font()?;
    let root = BitMapBackend::new(path, (CHART_SIZE.0, CPU_CHART_HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let m = &report.machine;
    let root = root.titled(
        &format!(
            "kproxy benchmark: CPU per connection over no proxy, real kube-proxy — {} CPUs, \
             Linux {}, {}",
            m.cpus, m.kernel, m.date
        ),
        (FONT, 20),
    )?;
    let offered = real.cpu.first().map_or(0.0, |c| c.offered);
    bar_panel(
        &root,
        &format!(
            "CPU µs per connection over direct measured beside, at {} new connections/s",
            fmt_count(offered)
        ),
        "µs per connection",
        &cpu_overhead_bars(real),
    )?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn write(path: &Path, contents: &str) -> anyhow::Result<()> {
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Markdown
// ---------------------------------------------------------------------------------------------

/// The report as a self-contained markdown section.
pub fn markdown(report: &Report) -> String {
    let mut out = String::from("## Benchmark results\n\n");
    out += &machine_line(report);
    let real_cells: Vec<&str> = report
        .real
        .iter()
        .flat_map(|r| {
            let ipv6 = r.ipv6.iter().flat_map(|v| v.cells.iter());
            r.cells.iter().chain(ipv6).map(|c| c.mode.as_str())
        })
        .collect();
    out += &real_report::markdown(report.real.as_ref(), &first_seen(real_cells));
    if report.real.is_some() && !report.cells.is_empty() {
        out += "### Generated rules (smoke)\n\nThe tables below compare kproxy with netfilter \
                rules the bench generates the way kube-proxy writes them (no kube-proxy \
                process, no API server): a quick check of the datapaths alone. The real \
                kube-proxy tables above are the benchmark's result.\n\n";
    }
    out += &connections_section(report);
    out += &programming_section(report);
    out += &agent_section(report);
    out += &xdp_section(report);
    out += &prog_cost_section(&report.prog_cost);
    out += &external_section(report);
    out += &targets_section(report);
    out += &skipped_section(report);
    out
}

fn machine_line(report: &Report) -> String {
    let m = &report.machine;
    let mut line = format!(
        "Machine: Linux {}, {} CPUs ({}), {:.1} GiB memory. Run {}: {} repetitions of {} s per \
         cell, modes interleaved; medians with min–max over the repetitions.\n\n",
        cell_text(&m.kernel),
        m.cpus,
        cell_text(&m.cpu_model),
        m.memory_gib,
        cell_text(&m.date),
        report.repetitions,
        fmt_num(report.duration_s),
    );
    if report.quick {
        line +=
            "**Quick run**: fewer repetitions and services, the numbers are indicative only.\n\n";
    }
    line
}

fn connections_section(report: &Report) -> String {
    if report.cells.is_empty() && (report.external.is_some() || report.real.is_some()) {
        // A run of another section alone.
        return String::new();
    }
    let heading = if report.real.is_some() {
        "### New connections (generated rules, smoke)\n\n"
    } else {
        "### New connections\n\n"
    };
    let mut out = String::from(heading);
    if report.cells.is_empty() {
        return out + "No connection measurements.\n\n";
    }
    out += &connections_table(&report.cells, BASELINE_MODE, &mode_order(report));
    out
}

/// The new-connections table of `cells`, ratios against `baseline` at the same scale and
/// placement, rows grouped by scale, placement, then `modes`' order.
pub(super) fn connections_table(cells: &[Cell], baseline: &str, modes: &[&str]) -> String {
    if cells.is_empty() {
        return "No connection measurements.\n\n".into();
    }
    let mut out = format!(
        "New connections per second through a ClusterIP and connect+request latency (µs). \
         \"last\" targets the last service programmed (worst case for linear rule lists), \
         \"random\" a random one. × {baseline}: ratio of medians at the same scale and \
         placement (conn/s: higher is better; p99: lower is better).\n\n\
         | mode | services | placement | conn/s (min–max) | × {baseline} | p50 µs \
         | p99 µs (min–max) | p99 × {baseline} | errors |\n\
         |---|---:|---|---:|---:|---:|---:|---:|---:|\n"
    );
    let mut sorted: Vec<&Cell> = cells.iter().collect();
    sorted.sort_by_key(|c| (c.services, c.placement, mode_rank(modes, &c.mode)));
    for cell in sorted {
        let base = cells.iter().find(|c| {
            c.mode == baseline && c.services == cell.services && c.placement == cell.placement
        });
        out += &connections_row(base, cell);
    }
    out + "\n"
}

fn connections_row(baseline: Option<&Cell>, cell: &Cell) -> String {
    let ratio = |field: fn(&Cell) -> Option<Stat>| {
        let base = baseline.and_then(field)?;
        Some(fmt_ratio(field(cell)?.median / base.median))
    };
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
        cell_text(&cell.mode),
        cell.services,
        cell.placement.as_str(),
        opt(cell.rate().map(|s| fmt_stat(s, fmt_count))),
        opt(ratio(Cell::rate)),
        opt(cell.p50().map(|s| fmt_count(s.median))),
        opt(cell.p99().map(|s| fmt_stat(s, fmt_count))),
        opt(ratio(Cell::p99)),
        cell.errors(),
    )
}

/// Names in the order first seen, once each.
fn first_seen(names: Vec<&str>) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for name in names {
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

fn programming_section(report: &Report) -> String {
    if report.programming.is_empty() {
        return String::new();
    }
    let with_agent = report
        .programming
        .iter()
        .any(|p| !p.agent_change_ms.is_empty());
    let heading = if report.real.is_some() {
        "Programming time (generated rules, smoke)"
    } else {
        "Programming time"
    };
    let mut out = format!(
        "### {heading}\n\nMilliseconds to program all services from nothing (full sync) \
         and to replace one endpoint of the target service until the datapath has it (one change: file written to map updated; agent-side: from the file event the agent sees). × {BASELINE_MODE}: ratio \
         of one-change medians, lower is better.\n\n"
    );
    out += "| mode | services | full sync ms (min–max) | one change ms (min–max) |";
    out += if with_agent { " agent-side ms |" } else { "" };
    let _ = write!(out, " one change × {BASELINE_MODE} |\n|---|---:|---:|---:|");
    out += if with_agent { "---:|" } else { "" };
    out += "---:|\n";
    let modes = mode_order(report);
    let mut rows: Vec<&Programming> = report.programming.iter().collect();
    rows.sort_by_key(|p| (p.services, mode_rank(&modes, &p.mode)));
    for row in rows {
        out += &programming_row(report, row, with_agent);
    }
    out + "\n"
}

fn programming_row(report: &Report, row: &Programming, with_agent: bool) -> String {
    let change = Stat::of(&row.one_change_ms);
    let ratio = report
        .programming
        .iter()
        .find(|p| p.mode == BASELINE_MODE && p.services == row.services)
        .and_then(|base| {
            Some(fmt_ratio(
                change?.median / Stat::of(&base.one_change_ms)?.median,
            ))
        });
    let mut line = format!(
        "| {} | {} | {} | {} |",
        cell_text(&row.mode),
        row.services,
        opt(Stat::of(&row.full_sync_ms).map(|s| fmt_stat(s, fmt_num))),
        opt(change.map(|s| fmt_stat(s, fmt_num))),
    );
    if with_agent {
        let agent = Stat::of(&row.agent_change_ms).map(|s| fmt_stat(s, fmt_num));
        let _ = write!(line, " {} |", opt(agent));
    }
    let _ = writeln!(line, " {} |", opt(ratio));
    line
}

fn agent_section(report: &Report) -> String {
    if report.agent.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "### kproxy agent resources\n\n| services | peak RSS MiB | CPU s |\n|---:|---:|---:|\n",
    );
    let mut rows: Vec<&AgentUsage> = report.agent.iter().collect();
    rows.sort_by_key(|a| a.services);
    for a in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            a.services,
            fmt_num(a.peak_rss_mib),
            fmt_num(a.cpu_seconds)
        );
    }
    out + "\n"
}

/// The path that times the timing itself: an empty program (see `prog_cost`).
const FLOOR_PATH: &str = "floor (empty program)";

/// The programs' own time per packet by scale. This machine's speed drifts over seconds,
/// and every path moves with the floor measured in turns with it, so the figures are also
/// given in floors, and compared across scales in floors.
fn prog_cost_section(costs: &[ProgCost]) -> String {
    if costs.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "### Datapath time per packet (BPF_PROG_TEST_RUN)\n\n\
         kproxy's programs run by the kernel on frames from the client to the last Service, \
         one frame per run, timed by the kernel around the program alone: a new flow (a SYN \
         from a new source port: frontend, backend choice, conntrack entries created), \
         an established one (an ACK of a known flow) and one not for a service (an ACK \
         straight to a backend's address, as every packet of a connection socket-level load \
         balancing pointed at its backend looks), taking turns run by run with an empty \
         program (the floor, which every figure includes). Medians of 4,000 runs of each per \
         repetition; the median and range over repetitions. The machine's speed drifts over \
         seconds and every path moves with its floor, so \"in floors\" (ns over the floor's \
         ns in the same runs) is the figure to compare across scales; × smallest compares it \
         with the same program and path at the smallest scale.\n\n\
         | program | family | path | services | ns/packet (min–max) | in floors | × smallest |\n\
         |---|---|---|---:|---:|---:|---:|\n",
    );
    let median = |c: &ProgCost| Stat::of(&c.ns).map(|s| s.median);
    let in_floors = |c: &ProgCost| {
        let floor = costs.iter().find(|f| {
            f.program == c.program
                && f.family == c.family
                && f.services == c.services
                && f.path == FLOOR_PATH
        })?;
        Some(median(c)? / median(floor)?)
    };
    let mut sorted: Vec<&ProgCost> = costs.iter().collect();
    sorted.sort_by(|a, b| {
        (&a.program, &a.family, &a.path, a.services)
            .cmp(&(&b.program, &b.family, &b.path, b.services))
    });
    for cost in sorted {
        let smallest = costs
            .iter()
            .filter(|c| c.program == cost.program && c.family == cost.family && c.path == cost.path)
            .min_by_key(|c| c.services);
        let ratio = (cost.path != FLOOR_PATH)
            .then(|| Some(in_floors(cost)? / in_floors(smallest?)?))
            .flatten()
            .map(fmt_ratio);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            cost.program,
            cost.family,
            cost.path,
            cost.services,
            opt(Stat::of(&cost.ns).map(|s| fmt_stat(s, fmt_num))),
            opt(in_floors(cost).map(|r| format!("{r:.2}"))),
            opt(ratio),
        );
    }
    out + "\n"
}

fn xdp_section(report: &Report) -> String {
    let Some(xdp) = &report.xdp else {
        return String::new();
    };
    let bare = Stat::of(&xdp.bare);
    let mut out = String::from(
        "### XDP cost\n\nPackets per second through the client-facing link's XDP hook. The first \
         two rows are live frames (BPF_PROG_TEST_RUN) to the node's own address, with a bare \
         XDP_PASS program and with kproxy's: what kproxy costs traffic that is not for a \
         service. The last row is a UDP flow to a service sent by trafgen, translated and \
         forwarded (bounded by the sender, not comparable with the others).\n\n\
         | traffic | packets/s (min–max) | × bare XDP_PASS |\n|---|---:|---:|\n",
    );
    let rows = [
        ("bare XDP_PASS program", &xdp.bare, true),
        ("kproxy XDP, packets to no service", &xdp.kproxy, true),
        (
            "kproxy XDP, a flow to a service (trafgen)",
            &xdp.service,
            false,
        ),
    ];
    for (label, values, comparable) in rows {
        let Some(stat) = Stat::of(values) else {
            continue;
        };
        let ratio = bare
            .filter(|_| comparable)
            .map(|b| fmt_ratio(stat.median / b.median));
        let _ = writeln!(
            out,
            "| {label} | {} | {} |",
            fmt_stat(stat, fmt_count),
            opt(ratio)
        );
    }
    out + "\n"
}

/// The modes the external section's ratios are taken against.
pub const EXTERNAL_CONN_BASELINE: &str = "nftables";
pub const EXTERNAL_UDP_BASELINE: &str = BASELINE_MODE;
pub const EXTERNAL_CEILING: &str = "bare-xdp-forward";

fn external_section(report: &Report) -> String {
    let Some(ext) = &report.external else {
        return String::new();
    };
    let mut out = format!(
        "### External traffic: NodePort with a remote backend\n\n\
         An external client on the nodes' LAN reaches a NodePort on node1 whose {} endpoints \
         are all on node2 (externalTrafficPolicy Cluster: node1 masquerades, replies come \
         back through it; kproxy-xdp does both directions in XDP on node1's NIC). \
         {EXTERNAL_CEILING} is the ceiling: kproxy's XDP forwarding (FIB lookup, XDP_TX) \
         without service lookup or translation, the client sending to the pods directly \
         along the same path. New connections as in the ClusterIP table. UDP: trafgen in \
         the client sends 60-byte datagrams over {} flows as fast as one CPU can; \
         delivered = packets the backends' interfaces received per second, sent = packets \
         the client's interface sent. Ratios are of medians. On this bed every hop (sender, \
         switch, both nodes, pod) works on the sending CPU, so per-packet times add up and the \
         rates' ratios understate node1's: \"ns/pkt over {EXTERNAL_CEILING}\" \
         (1/rate − 1/rate of {EXTERNAL_CEILING}) is what node1's datapath adds per packet to \
         plain XDP forwarding.{}\n\n\
         | mode | conn/s (min–max) | × {EXTERNAL_CONN_BASELINE} | p99 µs | errors \
         | UDP end-to-end delivered pps (min–max) | × {EXTERNAL_UDP_BASELINE} | × {EXTERNAL_CEILING} \
         | ns/pkt over {EXTERNAL_CEILING} | UDP sent pps |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        ext.remote_backends,
        ext.udp_flows,
        if ext.warm_neighbours {
            " **Neighbours warmed** (`--warm-neighbours`): node1 resolved node2's and the \
             client's addresses before each measurement."
        } else {
            ""
        }
    );
    let find = |mode: &str| ext.cells.iter().find(|c| c.mode == mode);
    let ratio = |cell: &ExternalCell, base: &str, field: fn(&ExternalCell) -> Option<Stat>| {
        let base = field(find(base)?)?;
        Some(fmt_ratio(field(cell)?.median / base.median))
    };
    // Nanoseconds per packet more than the ceiling, from the two medians; none for a mode
    // that forwarded (next to) nothing, whose rate says nothing about a cost per packet.
    let forwarded = |cell: &ExternalCell| {
        let delivered = cell.delivered()?.median;
        (delivered >= 0.01 * cell.sent()?.median && delivered > 0.0).then_some(delivered)
    };
    let extra_ns = |cell: &ExternalCell| {
        let ours = forwarded(cell)?;
        let ceiling = forwarded(find(EXTERNAL_CEILING)?)?;
        Some(format!("{:.0}", 1e9 / ours - 1e9 / ceiling))
    };
    for cell in &ext.cells {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            cell_text(&cell.mode),
            opt(cell.rate().map(|s| fmt_stat(s, fmt_count))),
            opt(ratio(cell, EXTERNAL_CONN_BASELINE, ExternalCell::rate)),
            opt(cell.p99().map(|s| fmt_count(s.median))),
            cell.errors(),
            opt(cell.delivered().map(|s| fmt_stat(s, fmt_count))),
            opt(ratio(cell, EXTERNAL_UDP_BASELINE, ExternalCell::delivered)),
            opt(ratio(cell, EXTERNAL_CEILING, ExternalCell::delivered)),
            opt(extra_ns(cell)),
            opt(cell.sent().map(|s| fmt_count(s.median))),
        );
    }
    out += "\n";
    out += &node1_table(ext);
    if !ext.notes.is_empty() {
        out += "Datapath notes:\n\n";
        for note in &ext.notes {
            let _ = writeln!(out, "- {}", cell_text(note));
        }
        out += "\n";
    }
    out
}

/// The external section's second table: node1's own forwarding rate (live frames).
fn node1_table(ext: &External) -> String {
    if ext.cells.iter().all(|c| c.node1.is_empty()) {
        return String::new();
    }
    let floor = Stat::of(&ext.live_floor_pps);
    let mut out = format!(
        "#### node1 forwarding pps (live frames)\n\n\
         The same 60-byte UDP frames (client's MAC and address to node1's NIC, the NodePort; \
         a backend directly for {EXTERNAL_CEILING}; source port random over the {} flows) \
         injected at node1's NIC with `BPF_PROG_TEST_RUN` in live-frames mode, no sender in \
         the bed: pps = frames / elapsed. The XDP program run on them is kproxy's for \
         kproxy-xdp, the bare forwarder for {EXTERNAL_CEILING}, and an XDP_PASS program for \
         the others, whose frames go up node1's stack (netfilter, kproxy's TC program); a \
         small program in front of each writes the frame's headers back first (the kernel \
         reuses translated frames), the same cost for all. Per repetition: **node1 pps**, the \
         median of {} runs of the same frames with node1's switch port taken off the \
         bridge, so what node1 forwards ends at the port (\"left node1\" = share of the \
         frames the port received); and \"pps with the bed\", one run with the port \
         connected, where the bridge, node2 and the pods process the forwarded frames within the timed run on the same CPU (\"at return\" = \
         share the backends had received when the run returned; delivered = share they \
         received in all). Targets use node1 pps.{}\n\n\
         | mode | node1 pps (min–max) | × {EXTERNAL_UDP_BASELINE} | × {EXTERNAL_CEILING} \
         | ns/pkt over {EXTERNAL_CEILING} | ns/pkt net of harness | left node1 \
         | pps with the bed | delivered | at return | frames/run |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        ext.udp_flows,
        super::external::live::ISOLATED_RUNS,
        floor.map_or_else(String::new, |f| format!(
            " The harness alone (restoring program and XDP_DROP, nothing forwarded) runs \
             {} frames/s ({:.0} ns each), a cost every node1 pps includes and that compresses \
             their ratios; \"ns/pkt net of harness\" is 1/(node1 pps) minus that.",
            fmt_count(f.median),
            1e9 / f.median
        ))
    );
    let find = |mode: &str| ext.cells.iter().find(|c| c.mode == mode);
    let median = |cell: &ExternalCell| cell.node1_pps().map(|s| s.median);
    let ratio =
        |cell: &ExternalCell, base: &str| Some(fmt_ratio(median(cell)? / median(find(base)?)?));
    let extra_ns = |cell: &ExternalCell| {
        let ceiling = median(find(EXTERNAL_CEILING)?)?;
        Some(format!("{:.0}", 1e9 / median(cell)? - 1e9 / ceiling))
    };
    let share = |n: fn(&Node1Sample) -> Option<u64>,
                 of: fn(&Node1Sample) -> Option<u64>,
                 cell: &ExternalCell| {
        let frames: Option<u64> = cell.node1.iter().map(of).sum();
        let frames = frames?;
        let got: Option<u64> = cell.node1.iter().map(n).sum();
        let got = got?;
        (frames > 0).then(|| format!("{:.1}%", u64_f64(got) * 100.0 / u64_f64(frames)))
    };
    let with_bed = |cell: &ExternalCell| {
        let v: Option<Vec<f64>> = cell.node1.iter().map(|s| s.with_delivery_pps).collect();
        Stat::of(&v?)
    };
    for cell in ext.cells.iter().filter(|c| !c.node1.is_empty()) {
        let frames = cell.node1.iter().map(|s| s.frames).max().unwrap_or(0);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            cell_text(&cell.mode),
            opt(cell.node1_pps().map(|s| fmt_stat(s, fmt_count))),
            opt(ratio(cell, EXTERNAL_UDP_BASELINE)),
            opt(ratio(cell, EXTERNAL_CEILING)),
            opt(extra_ns(cell)),
            opt(floor.and_then(|f| Some(format!("{:.0}", 1e9 / median(cell)? - 1e9 / f.median)))),
            opt(share(|s| s.left_node1, |s| s.isolated_frames, cell)),
            opt(with_bed(cell).map(|s| fmt_stat(s, fmt_count))),
            opt(share(|s| Some(s.delivered), |s| Some(s.frames), cell)),
            opt(share(|s| s.delivered_at_return, |s| Some(s.frames), cell)),
            fmt_count(u64_f64(frames)),
        );
    }
    out += "\n";
    out
}

fn u64_f64(n: u64) -> f64 {
    // Counts far below 2^52.
    #[allow(clippy::cast_precision_loss)]
    let n = n as f64;
    n
}

fn targets_section(report: &Report) -> String {
    if report.targets.is_empty() {
        return String::new();
    }
    let met = report.targets.iter().filter(|t| t.pass).count();
    let unmeasured = report.targets.iter().filter(|t| t.not_measured).count();
    let mut out = format!(
        "### Targets\n\n{met} of {} targets met ({unmeasured} not measured).\n\n| target | wanted | measured | result |\n\
         |---|---|---|---|\n",
        report.targets.len()
    );
    for t in &report.targets {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            cell_text(&t.name),
            cell_text(&t.wanted),
            cell_text(&t.measured),
            match (t.not_measured, t.pass) {
                (true, _) => "not measured",
                (false, true) => "PASS",
                (false, false) => "**MISS**",
            }
        );
    }
    out + "\n"
}

fn skipped_section(report: &Report) -> String {
    if report.skipped.is_empty() {
        return String::new();
    }
    let mut out = String::from("### Skipped modes\n\n");
    for s in &report.skipped {
        let _ = writeln!(
            out,
            "- **{}**: {}",
            cell_text(&s.mode),
            cell_text(&s.reason)
        );
    }
    out + "\n"
}

/// Modes in the order the harness first reported them, so tables and chart agree (and a
/// mode has one colour in every panel).
fn mode_order(report: &Report) -> Vec<&str> {
    let names = report.cells.iter().map(|c| c.mode.as_str());
    let external = report.external.iter().flat_map(|e| &e.cells);
    first_seen(
        names
            .chain(report.programming.iter().map(|p| p.mode.as_str()))
            .chain(external.map(|c| c.mode.as_str()))
            .collect(),
    )
}

fn mode_rank(modes: &[&str], mode: &str) -> usize {
    modes.iter().position(|m| *m == mode).unwrap_or(modes.len())
}

/// Free text made safe inside a table cell: a `|` would split it, a newline would end the row.
fn cell_text(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

pub(super) fn opt(value: Option<String>) -> String {
    value.unwrap_or_else(|| "–".to_owned())
}

pub(super) fn fmt_stat(stat: Stat, fmt: fn(f64) -> String) -> String {
    format!("{} ({}–{})", fmt(stat.median), fmt(stat.min), fmt(stat.max))
}

fn fmt_ratio(ratio: f64) -> String {
    if ratio.is_finite() {
        format!("{ratio:.2}×")
    } else {
        "–".to_owned()
    }
}

/// A rounded count with thousands separators: 12345.6 -> "12,346".
fn fmt_count(value: f64) -> String {
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if value.round() < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}

/// A measurement with about three significant digits, no more than the runs can support.
pub(super) fn fmt_num(value: f64) -> String {
    match value.abs() {
        v if v >= 100.0 => fmt_count(value),
        v if v >= 10.0 => format!("{value:.1}"),
        _ => format!("{value:.2}"),
    }
}

/// Counts (microseconds, connections) as plotted and tabulated. They stay far below 2^52, where
/// f64 would start losing precision.
#[allow(clippy::cast_precision_loss)]
fn count(value: u64) -> f64 {
    value as f64
}

// ---------------------------------------------------------------------------------------------
// Chart
// ---------------------------------------------------------------------------------------------

const CHART_SIZE: (u32, u32) = (1200, 500);
const LEGEND_HEIGHT: u32 = 56;
/// The external section's two rows of bars, and the title's strip when they are drawn alone.
const EXTERNAL_HEIGHT: u32 = 640;
/// The CPU overheads' chart: one row of bars under a title.
const CPU_CHART_HEIGHT: u32 = 400;
const TITLE_HEIGHT: u32 = 40;
const FONT: &str = "sans-serif";

/// Distinct colours (matplotlib's tab10), one per mode in [`mode_order`].
const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One point of a chart line: a cell's statistics at one scale.
struct Point {
    services: f64,
    rate: Stat,
    p99: Stat,
}

/// One line of the chart: one mode at one placement, one point per scale.
struct Line {
    mode: String,
    placement: Placement,
    color: RGBColor,
    /// By increasing number of services.
    points: Vec<Point>,
}

/// What one panel plots.
struct Metric {
    caption: &'static str,
    y_desc: &'static str,
    value: fn(&Point) -> Stat,
}

const RATE: Metric = Metric {
    caption: "New connections per second",
    y_desc: "connections/s",
    value: |p| p.rate,
};

const P99: Metric = Metric {
    caption: "p99 connect+request latency (µs)",
    y_desc: "µs",
    value: |p| p.p99,
};

/// Draws the chart: new connections/s (left) and p99 latency (right) against the number of
/// services on a log axis. "last" placement is solid with markers and min–max bars; "random"
/// placement, when measured, is dashed in the same colour with hollow triangles.
///
/// With an external section, rows of bars follow: new connections/s to the NodePort, UDP
/// packets/s delivered end to end through the bed, and node1's forwarding pps with live
/// frames when measured (medians, min–max whiskers). A run of that section alone
/// draws only those.
pub fn chart(report: &Report, path: &Path) -> anyhow::Result<()> {
    chart_titled(report, path, None)
}

/// [`chart`] with `what` (if any) naming the ClusterIP panels' subject in the title.
fn chart_titled(report: &Report, path: &Path, what: Option<&str>) -> anyhow::Result<()> {
    ensure_font()?;
    let external = report.external.as_ref().filter(|e| !e.cells.is_empty());
    let cluster_ip = !report.cells.is_empty() || external.is_none();
    let height = match (cluster_ip, external.is_some()) {
        (true, true) => CHART_SIZE.1 + EXTERNAL_HEIGHT,
        (false, true) => EXTERNAL_HEIGHT + TITLE_HEIGHT,
        _ => CHART_SIZE.1,
    };
    let root = BitMapBackend::new(path, (CHART_SIZE.0, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(&chart_title(report, cluster_ip, what), (FONT, 22))?;
    let (top, bottom) = match (cluster_ip, external.is_some()) {
        (true, true) => {
            let at = root.dim_in_pixel().1.saturating_sub(EXTERNAL_HEIGHT);
            let (top, bottom) = root.split_vertically(at);
            (Some(top), Some(bottom))
        }
        (true, false) => (Some(root.clone()), None),
        (false, _) => (None, Some(root.clone())),
    };
    if let Some(top) = top {
        let lines = chart_lines(report);
        let x_range = services_range(report);
        let (plots, legend) = top.split_vertically(top.dim_in_pixel().1 - LEGEND_HEIGHT);
        let (left, right) = plots.split_horizontally(CHART_SIZE.0 / 2);
        panel(&left, &RATE, &lines, &x_range)?;
        panel(&right, &P99, &lines, &x_range)?;
        draw_legend(&legend, &lines)?;
    }
    if let (Some(ext), Some(bottom)) = (external, bottom) {
        let modes = mode_order(report);
        let color = |mode: &str| COLORS[mode_rank(&modes, mode) % COLORS.len()];
        let bars = |field: fn(&ExternalCell) -> Option<Stat>| -> Vec<Bar> {
            ext.cells
                .iter()
                .filter_map(|c| {
                    Some(Bar {
                        label: c.mode.clone(),
                        color: color(&c.mode),
                        stat: field(c)?,
                    })
                })
                .collect()
        };
        // One above the other: side by side the modes' names would not fit under the bars.
        let node1 = bars(ExternalCell::node1_pps);
        let rows = if node1.is_empty() { 2 } else { 3 };
        let (upper, lower) = bottom.split_vertically(bottom.dim_in_pixel().1 / rows);
        let (lower, lowest) = if node1.is_empty() {
            (lower, None)
        } else {
            let (a, b) = lower.split_vertically(lower.dim_in_pixel().1 / 2);
            (a, Some(b))
        };
        let warmed = if ext.warm_neighbours {
            " (neighbours warmed)"
        } else {
            ""
        };
        bar_panel(
            &upper,
            &format!("External: new connections/s to a NodePort{warmed}"),
            "connections/s",
            &bars(ExternalCell::rate),
        )?;
        bar_panel(
            &lower,
            &format!("External: UDP packets/s end to end through the bed{warmed}"),
            "packets/s",
            &bars(ExternalCell::delivered),
        )?;
        if let Some(lowest) = lowest {
            bar_panel(
                &lowest,
                &format!("External: node1 forwarding pps (live frames){warmed}"),
                "packets/s",
                &node1,
            )?;
        }
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// One bar of a bar panel: a mode's median with its min–max.
struct Bar {
    label: String,
    color: RGBColor,
    stat: Stat,
}

/// Bars side by side, one per mode, labelled below, with min–max whiskers.
fn bar_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    caption: &str,
    y_desc: &str,
    bars: &[Bar],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let y_max = bars.iter().map(|b| b.stat.max).fold(0.0_f64, f64::max);
    let y_max = if y_max > 0.0 { y_max * 1.12 } else { 1.0 };
    // A difference (an overhead over a ceiling) can fall below zero.
    let y_min = bars.iter().map(|b| b.stat.min).fold(0.0_f64, f64::min) * 1.12;
    let n = u32::try_from(bars.len()).unwrap_or(u32::MAX);
    // An integer range includes its end: 0..n-1 makes n segments.
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 18))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(84)
        .build_cartesian_2d((0..n.saturating_sub(1)).into_segmented(), y_min..y_max)?;
    let label = |v: &SegmentValue<u32>| match v {
        SegmentValue::CenterOf(i) => bars
            .get(*i as usize)
            .map_or_else(String::new, |b| b.label.clone()),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(bars.len())
        .y_desc(y_desc)
        .x_label_formatter(&label)
        .y_label_formatter(&|v| fmt_axis(*v))
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 14))
        .light_line_style(TRANSPARENT)
        .draw()?;
    for (i, bar) in (0..n).zip(bars) {
        let s = bar.stat;
        let mut rect = Rectangle::new(
            [
                (SegmentValue::Exact(i), 0.0),
                (SegmentValue::Exact(i + 1), s.median),
            ],
            bar.color.filled(),
        );
        rect.set_margin(0, 0, 14, 14);
        chart.draw_series(std::iter::once(rect))?;
        let whisker = PathElement::new(
            vec![
                (SegmentValue::CenterOf(i), s.min),
                (SegmentValue::CenterOf(i), s.max),
            ],
            BLACK.stroke_width(2),
        );
        chart.draw_series(std::iter::once(whisker))?;
    }
    Ok(())
}

/// Registers the TTF with plotters once per process. plotters wants `'static` bytes, so the
/// file is leaked: one font, once.
fn ensure_font() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let bytes = fs::read(FONT_PATH).map_err(|e| {
                format!(
                    "chart font {FONT_PATH} is not readable ({e}); install the Debian package \
                     fonts-dejavu-core"
                )
            })?;
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font(FONT, FontStyle::Normal, bytes)
                .map_err(|_| format!("chart font {FONT_PATH} is not a usable TrueType font"))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

fn chart_title(report: &Report, cluster_ip: bool, subject: Option<&str>) -> String {
    let m = &report.machine;
    let quick = if report.quick { ", quick run" } else { "" };
    let what = match (cluster_ip, report.external.is_some(), subject) {
        (true, false, Some(subject)) => format!("ClusterIP services, {subject}"),
        (true, true, _) => "ClusterIP services and external traffic".into(),
        (false, true, _) => "external traffic".into(),
        _ => "ClusterIP services".into(),
    };
    format!(
        "kproxy benchmark: {what} — {} CPUs, Linux {}, {}{quick}",
        m.cpus, m.kernel, m.date
    )
}

fn chart_lines(report: &Report) -> Vec<Line> {
    let modes = mode_order(report);
    let mut lines = Vec::new();
    for (i, mode) in modes.iter().enumerate() {
        for placement in [Placement::Last, Placement::Random] {
            let mut points: Vec<Point> = report
                .cells
                .iter()
                .filter(|c| c.mode == *mode && c.placement == placement && c.services > 0)
                .filter_map(|c| {
                    let services = count(c.services as u64);
                    Some(Point {
                        services,
                        rate: c.rate()?,
                        p99: c.p99()?,
                    })
                })
                .collect();
            points.sort_by(|a, b| a.services.total_cmp(&b.services));
            if !points.is_empty() {
                let color = COLORS[i % COLORS.len()];
                let mode = (*mode).to_owned();
                lines.push(Line {
                    mode,
                    placement,
                    color,
                    points,
                });
            }
        }
    }
    lines
}

/// The scales measured, and the log-axis range around them with some room on both sides.
struct ServicesRange {
    ticks: Vec<f64>,
    lo: f64,
    hi: f64,
}

fn services_range(report: &Report) -> ServicesRange {
    let scales: BTreeSet<u64> = report.cells.iter().map(|c| c.services as u64).collect();
    let ticks: Vec<f64> = scales.into_iter().filter(|&n| n > 0).map(count).collect();
    let lo = ticks.first().copied().unwrap_or(1.0);
    let hi = ticks.last().copied().unwrap_or(10.0).max(lo * 10.0);
    ServicesRange {
        ticks,
        lo: lo / 1.6,
        hi: hi * 1.6,
    }
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    metric: &Metric,
    lines: &[Line],
    x: &ServicesRange,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let y_max = lines
        .iter()
        .flat_map(|l| &l.points)
        .map(|p| (metric.value)(p).max)
        .fold(0.0_f64, f64::max);
    // Headroom above the highest bar; a flat 0..1 when there is nothing to show.
    let y_max = if y_max > 0.0 { y_max * 1.12 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(metric.caption, (FONT, 18))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(84)
        .build_cartesian_2d(
            (x.lo..x.hi).log_scale().with_key_points(x.ticks.clone()),
            0.0..y_max,
        )?;
    chart
        .configure_mesh()
        .x_desc("ClusterIP services (log scale)")
        .y_desc(metric.y_desc)
        .x_label_formatter(&|v| fmt_count(*v))
        .y_label_formatter(&|v| fmt_axis(*v))
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .light_line_style(TRANSPARENT)
        .draw()?;
    for line in lines {
        let points: Vec<(f64, f64)> = line
            .points
            .iter()
            .map(|p| (p.services, (metric.value)(p).median))
            .collect();
        let style = line.color.stroke_width(2);
        if line.placement == Placement::Last {
            chart.draw_series(LineSeries::new(points, style).point_size(4))?;
            let bars = line.points.iter().map(|p| {
                let s = (metric.value)(p);
                PathElement::new(vec![(p.services, s.min), (p.services, s.max)], style)
            });
            chart.draw_series(bars)?;
        } else {
            let markers = points.iter().map(|&p| TriangleMarker::new(p, 6, style));
            chart.draw_series(markers)?;
            chart.draw_series(DashedLineSeries::new(points, 8, 6, style))?;
        }
    }
    Ok(())
}

/// Axis labels: grouped digits, millions shortened so the label area stays narrow.
fn fmt_axis(value: f64) -> String {
    if value.abs() >= 1e6 {
        format!("{:.1}M", value / 1e6)
    } else {
        fmt_count(value)
    }
}

/// The legend sits in its own strip under the panels so it can never hide a line; entries flow
/// left to right and wrap onto a second row when the modes' names are long.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    lines: &[Line],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    const ROW: i32 = 24;
    const SWATCH: i32 = 28;
    let font = TextStyle::from((FONT, 15).into_font());
    let width = i32::try_from(area.dim_in_pixel().0).unwrap_or(i32::MAX);
    let (mut x, mut y) = (60, 14);
    let mut next = |w: i32| {
        if x + w > width - 20 {
            (x, y) = (60, y + ROW);
        }
        let at = (x, y);
        x += w + 28;
        at
    };
    let mut entries: Vec<(&str, RGBColor)> = Vec::new();
    for line in lines {
        if !entries.iter().any(|(mode, _)| *mode == line.mode) {
            entries.push((&line.mode, line.color));
        }
    }
    for (label, color) in entries {
        let text_w = i32::try_from(area.estimate_text_size(label, &font)?.0).unwrap_or(100);
        let (x, y) = next(SWATCH + 6 + text_w);
        let style = color.stroke_width(2);
        area.draw(&PathElement::new(vec![(x, y), (x + SWATCH, y)], style))?;
        area.draw(&Circle::new((x + SWATCH / 2, y), 4, style))?;
        area.draw(&Text::new(label, (x + SWATCH + 6, y - 8), font.clone()))?;
    }
    if lines.iter().any(|l| l.placement == Placement::Random) {
        let note = "solid: last service (bars: min–max); dashed: random service";
        let text_w = i32::try_from(area.estimate_text_size(note, &font)?.0).unwrap_or(400);
        let (x, y) = next(text_w);
        area.draw(&Text::new(note, (x, y - 8), font.color(&BLACK.mix(0.6))))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rate: f64, p99_us: u64) -> Sample {
        Sample {
            rate,
            p50_us: p99_us / 4,
            p99_us,
            max_us: p99_us * 2,
            errors: 0,
        }
    }

    /// Two modes x three scales x two samples, both placements for the baseline.
    fn fake_report() -> Report {
        // (services, conn/s, p99 µs): kproxy flat, the baseline slowing with the rule count.
        let table = [
            (
                "kproxy-tc",
                [
                    (10, 20000.0, 300),
                    (1000, 20000.0, 300),
                    (10000, 20000.0, 310),
                ],
            ),
            (
                BASELINE_MODE,
                [
                    (10, 19800.0, 303),
                    (1000, 10000.0, 600),
                    (10000, 1818.0, 3300),
                ],
            ),
        ];
        let mut cells = Vec::new();
        for (mode, rows) in table {
            for (services, rate, p99) in rows {
                let samples = vec![sample(rate * 0.95, p99), sample(rate * 1.05, p99 + 20)];
                cells.push(Cell {
                    mode: mode.into(),
                    services,
                    placement: Placement::Last,
                    samples,
                });
            }
        }
        cells.push(Cell {
            mode: BASELINE_MODE.into(),
            services: 1000,
            placement: Placement::Random,
            samples: vec![sample(15000.0, 500)],
        });
        Report {
            machine: Machine {
                kernel: "6.12.0".into(),
                cpus: 2,
                cpu_model: "Test CPU".into(),
                memory_gib: 23.4,
                date: "2026-01-02T03:04:05Z".into(),
            },
            quick: true,
            repetitions: 2,
            duration_s: 5.0,
            cells,
            programming: vec![
                Programming {
                    mode: "kproxy-tc".into(),
                    services: 1000,
                    full_sync_ms: vec![40.0, 60.0],
                    one_change_ms: vec![2.0, 4.0],
                    agent_change_ms: vec![0.5, 0.7],
                },
                Programming {
                    mode: BASELINE_MODE.into(),
                    services: 1000,
                    full_sync_ms: vec![900.0, 1100.0],
                    one_change_ms: vec![30.0, 30.0],
                    agent_change_ms: vec![],
                },
            ],
            agent: vec![AgentUsage {
                services: 1000,
                peak_rss_mib: 31.5,
                cpu_seconds: 1.25,
            }],
            xdp: Some(XdpCost {
                bare: vec![1_000_000.0, 1_200_000.0],
                kproxy: vec![990_000.0],
                service: vec![],
            }),
            prog_cost: fake_prog_cost(),
            external: Some(fake_external()),
            real: None,
            targets: vec![
                Target {
                    name: "10k services conn/s".into(),
                    wanted: "≥ 2× iptables-legacy".into(),
                    measured: "11.00×".into(),
                    pass: true,
                    not_measured: false,
                },
                Target {
                    name: "agent RSS".into(),
                    wanted: "< 10 MiB".into(),
                    measured: "31.5 MiB".into(),
                    pass: false,
                    not_measured: false,
                },
            ],
            skipped: vec![Skipped {
                mode: "ipvs".into(),
                reason: "no ip_vs | module".into(),
            }],
        }
    }

    /// Three modes, two repetitions each: (mode, conn/s, delivered pps).
    /// XDP's new flows at two scales, 10% apart, and floors 10% apart: the same in floors;
    /// IPv6's at its own two scales, compared with IPv6's smallest only.
    fn fake_prog_cost() -> Vec<ProgCost> {
        [
            ("IPv4", "new flow", 10, 400.0),
            ("IPv4", "new flow", 1000, 440.0),
            ("IPv4", FLOOR_PATH, 10, 50.0),
            ("IPv4", FLOOR_PATH, 1000, 55.0),
            ("IPv6", "new flow", 10, 500.0),
            ("IPv6", "new flow", 100_000, 550.0),
            ("IPv6", FLOOR_PATH, 10, 50.0),
            ("IPv6", FLOOR_PATH, 100_000, 50.0),
        ]
        .map(|(family, path, services, ns)| ProgCost {
            program: "xdp".into(),
            family: family.into(),
            path: path.into(),
            services,
            ns: vec![ns - 10.0, ns + 10.0],
        })
        .to_vec()
    }

    fn fake_external() -> External {
        let cells = [
            ("kproxy-xdp", 16_000.0, 900_000.0),
            ("nftables", 15_000.0, 330_000.0),
            (BASELINE_MODE, 14_000.0, 300_000.0),
            ("bare-xdp-forward", 17_000.0, 1_000_000.0),
            // A mode that forwards nothing: its interfaces still count a few packets.
            ("kproxy-tc", 0.0, 10.0),
        ]
        .into_iter()
        .map(|(mode, rate, pps)| ExternalCell {
            mode: mode.into(),
            connections: vec![sample(rate * 0.95, 400), sample(rate * 1.05, 420)],
            udp: vec![
                UdpSample {
                    sent_pps: 1_200_000.0,
                    delivered_pps: pps - pps / 10.0,
                },
                UdpSample {
                    sent_pps: 1_300_000.0,
                    delivered_pps: pps + pps / 10.0,
                },
            ],
            node1: vec![Node1Sample {
                pps: 2.0 * pps,
                isolated_frames: Some(1_000_000),
                frames: 1_000_000,
                left_node1: Some(1_000_000),
                with_delivery_pps: Some(pps),
                delivered: 1_000_000,
                delivered_at_return: Some(500_000),
                xdp_tx: None,
                elapsed_s: 0.5,
            }],
        })
        .collect();
        External {
            remote_backends: 3,
            udp_flows: 256,
            warm_neighbours: false,
            cells,
            live_floor_pps: vec![10_000_000.0],
            notes: vec!["kproxy-xdp: xdp_tx=1 | 2".into()],
        }
    }

    #[test]
    fn markdown_has_the_external_section() {
        let md = markdown(&fake_report());
        assert!(
            md.contains("### External traffic: NodePort with a remote backend"),
            "{md}"
        );
        // conn/s 16,000 (15,200–16,800) is 1.07× nftables' 15,000; delivered 900,000
        // (810,000–990,000) is 3.00× iptables-legacy's and 0.90× the bare forwarder's.
        assert!(
            md.contains(
                "| kproxy-xdp | 16,000 (15,200–16,800) | 1.07× | 410 | 0 | 900,000 (810,000–990,000) | 3.00× | 0.90× | 111 | 1,250,000 |"
            ),
            "{md}"
        );
        assert!(md.contains("| bare-xdp-forward | 17,000 (16,150–17,850) | 1.13× |"));
        // No cost per packet for what forwarded nothing.
        assert!(
            md.contains("| kproxy-tc | 0 (0–0) | 0.00× | 410 | 0 | 10 (9–11) | 0.00× | 0.00× | – | 1,250,000 |"),
            "{md}"
        );
        assert!(md.contains("- kproxy-xdp: xdp_tx=1 \\| 2"), "{md}");
        assert!(
            md.contains(
                "| kproxy-xdp | 1,800,000 (1,800,000–1,800,000) | 3.00× | 0.90× | 56 | 456 | 100.0% \
                 | 900,000 (900,000–900,000) | 100.0% | 50.0% | 1,000,000 |"
            ),
            "{md}"
        );
    }

    #[test]
    fn reports_without_the_external_section_still_load() {
        let mut value = serde_json::to_value(fake_report()).expect("serialize");
        value
            .as_object_mut()
            .expect("object")
            .remove("external")
            .expect("external");
        let back: Report = serde_json::from_value(value).expect("deserialize");
        assert_eq!(back.external, None);
    }

    #[test]
    fn chart_of_the_external_section_alone() {
        let mut report = fake_report();
        report.cells.clear();
        report.programming.clear();
        let md = markdown(&report);
        assert!(!md.contains("### New connections"));
        let dir = std::env::temp_dir().join(format!("kproxy-report-ext-{}", std::process::id()));
        let paths = write_all(&report, &dir).expect("write_all");
        let png = fs::read(&paths.chart).expect("chart");
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn stat_median_min_max() {
        let s = Stat::of(&[3.0, 1.0, 2.0, f64::NAN]).expect("values");
        assert!(close(s.median, 2.0) && close(s.min, 1.0) && close(s.max, 3.0));
        let even = Stat::of(&[4.0, 1.0, 2.0, 3.0]).expect("values");
        assert!(close(even.median, 2.5));
        assert!(Stat::of(&[]).is_none());
    }

    #[test]
    fn markdown_has_rows_ratios_and_verdicts() {
        let md = markdown(&fake_report());
        // kproxy at 10k services: median 20,000 (19,000–21,000), 11× the baseline's 1,818.
        assert!(
            md.contains("| kproxy-tc | 10000 | last | 20,000 (19,000–21,000) | 11.00× |"),
            "{md}"
        );
        assert!(md.contains("| iptables-legacy | 10000 | last | 1,818 (1,727–1,909) | 1.00× |"));
        assert!(md.contains("| iptables-legacy | 1000 | random | 15,000 (15,000–15,000) |"));
        assert!(md.contains(
            "| kproxy-tc | 1000 | 50.0 (40.0–60.0) | 3.00 (2.00–4.00) | 0.60 (0.50–0.70) | 0.10× |"
        ));
        assert!(md.contains("| 1000 | 31.5 | 1.25 |"));
        assert!(
            md.contains(
                "| kproxy XDP, packets to no service | 990,000 (990,000–990,000) | 0.90× |"
            )
        );
        assert!(!md.contains("packets to a service"));
        for row in [
            "| xdp | IPv4 | new flow | 10 | 400 (390–410) | 8.00 | 1.00× |",
            "| xdp | IPv4 | new flow | 1000 | 440 (430–450) | 8.00 | 1.00× |",
            "| xdp | IPv4 | floor (empty program) | 1000 | 55.0 (45.0–65.0) | 1.00 | – |",
            "| xdp | IPv6 | new flow | 10 | 500 (490–510) | 10.00 | 1.00× |",
            "| xdp | IPv6 | new flow | 100000 | 550 (540–560) | 11.00 | 1.10× |",
        ] {
            assert!(md.contains(row), "{row} in {md}");
        }
        assert!(md.contains("| 10k services conn/s | ≥ 2× iptables-legacy | 11.00× | PASS |"));
        assert!(md.contains("| agent RSS | < 10 MiB | 31.5 MiB | **MISS** |"));
        assert!(md.contains("1 of 2 targets met"));
        assert!(md.contains("- **ipvs**: no ip_vs \\| module"));
        assert!(md.contains("Quick run"));
    }

    #[test]
    fn json_round_trips() {
        let report = fake_report();
        let json = serde_json::to_string_pretty(&report).expect("serialize");
        assert!(json.contains("\"placement\": \"last\""));
        let back: Report = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, report);
    }

    #[test]
    fn write_all_writes_json_markdown_and_png() {
        let dir = std::env::temp_dir().join(format!("kproxy-report-test-{}", std::process::id()));
        let paths = write_all(&fake_report(), &dir).expect("write_all");
        let png = fs::read(&paths.chart).expect("chart");
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
        let json = fs::read_to_string(&paths.json).expect("json");
        let back: Report = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, fake_report());
        let md = fs::read_to_string(&paths.markdown).expect("markdown");
        assert!(md.starts_with("## Benchmark results"));
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn cpu_overheads_get_a_chart_of_their_own_below_zero_too() {
        use super::super::real::report::{CpuCell, Real};
        let cell = |mode: &str, beside: Vec<f64>| CpuCell {
            mode: mode.into(),
            services: 10_000,
            offered: 5_000.0,
            overhead_beside_us: beside,
            ..CpuCell::default()
        };
        let dir =
            std::env::temp_dir().join(format!("kproxy-cpu-chart-test-{}", std::process::id()));
        let mut report = fake_report();
        report.real = Some(Real {
            cpu: vec![
                cell("direct", Vec::new()),
                cell("kproxy-sock", vec![2.9, 2.3, -2.7]),
                cell("kube-proxy-nftables", vec![13.3, 12.4, 5.9]),
            ],
            ..Real::default()
        });
        let real = report.real.as_ref().unwrap();
        let bars = cpu_overhead_bars(real);
        let shown: Vec<(&str, f64, f64)> = bars
            .iter()
            .map(|b| (b.label.as_str(), b.stat.min, b.stat.median))
            .collect();
        // direct is the ceiling the others are measured against: no bar of its own.
        assert_eq!(
            shown,
            [
                ("kproxy-sock", -2.7, 2.3),
                ("kube-proxy-nftables", 5.9, 12.4)
            ]
        );
        let paths = write_all(&report, &dir).expect("write_all");
        let png = fs::read(paths.chart_cpu.expect("a CPU chart")).expect("written");
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
        fs::remove_dir_all(&dir).expect("cleanup");
        // Without overheads measured beside direct, no chart.
        assert!(write_all(&fake_report(), &dir).unwrap().chart_cpu.is_none());
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn counts_are_grouped() {
        assert_eq!(fmt_count(0.4), "0");
        assert_eq!(fmt_count(999.6), "1,000");
        assert_eq!(fmt_count(1_234_567.0), "1,234,567");
        assert_eq!(fmt_axis(45_000.0), "45,000");
        assert_eq!(fmt_axis(2_500_000.0), "2.5M");
    }
}
