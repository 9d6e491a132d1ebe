//! The real section's results (raw values, one per repetition) and its markdown tables: the
//! benchmark's headline, kproxy against kube-proxy itself fed by a real API server.

use std::collections::BTreeMap;
use std::fmt::Write as _; // `write!` into a String cannot fail

use kproxy_testbed::kubernetes::lists_alone::ListsAlone;
use serde::{Deserialize, Serialize};

use super::super::report::{Cell, Stat, connections_table, fmt_num, fmt_stat, opt};

/// The mode the real section's ratios are taken against.
pub const REAL_BASELINE: &str = "kube-proxy-iptables";

/// Everything the real section measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Real {
    /// The Kubernetes release kube-proxy and the control plane were built from.
    pub kubernetes_release: String,
    /// `iptables --version` on the machine (kube-proxy's iptables mode uses this binary).
    pub iptables_version: String,
    pub scales: Vec<Scale>,
    /// New connections, as the generated section's cells, with this section's mode names.
    pub cells: Vec<Cell>,
    pub proxies: Vec<ProxyCell>,
    pub churn_seconds: u32,
    pub churn_period_ms: f64,
    pub probe_rounds: usize,
    /// Sustained churn: endpoint changes per second asked for, and for how long.
    #[serde(default)]
    pub sustained_rate: u32,
    #[serde(default)]
    pub sustained_seconds: u32,
    /// What could not be measured, and why.
    pub notes: Vec<String>,
    /// CPU per connection at a fixed offered rate, per mode and scale (`direct` included).
    #[serde(default)]
    pub cpu: Vec<CpuCell>,
    /// The clock the machine's CPU time was read from (`load::cpu_clock`); empty in runs
    /// before it was recorded, which read `/proc/stat`.
    #[serde(default)]
    pub cpu_clock: String,
    /// The IPv6 row: the same measurements with single-stack IPv6 Services (no churn or
    /// probe: those change IPv4 selector Services, measured above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Box<Real>>,
}

/// One scale's control plane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scale {
    pub services: usize,
    /// Creating (or storing) the Services and EndpointSlices until served, seconds.
    pub create_s: f64,
    /// Objects created (Services + EndpointSlices), or stored (with the IPAddresses).
    pub objects: usize,
    /// Written into etcd rather than created through the API (runs before this was
    /// possible created them).
    #[serde(default)]
    pub stored: bool,
    /// The API server's lists alone, before any proxy starts: every Service and slice
    /// listed at once as a proxy's first lists ask, a few rounds (runs before this was
    /// measured have none).
    #[serde(default)]
    pub lists_alone: Vec<ListsAlone>,
}

#[cfg(test)]
impl ProxyCell {
    /// A cell at 10,000 Services with only its rates and `direct`'s beside them.
    pub fn beside_only(mode: &str, rates: &[f64], direct: &[f64]) -> Self {
        Self {
            mode: mode.into(),
            services: 10_000,
            rate_last: rates.to_vec(),
            direct_beside: direct.to_vec(),
            ..Self::default()
        }
    }
}

impl ProxyCell {
    /// Per repetition, the mode's rate over `direct`'s measured beside it.
    pub fn beside_ratios(&self) -> Vec<f64> {
        self.rate_last
            .iter()
            .zip(&self.direct_beside)
            .filter(|(_, d)| **d > 0.0)
            .map(|(r, d)| r / d)
            .collect()
    }
}

impl Scale {
    /// The lists alone, for the report: "" when not measured.
    fn lists_alone_text(&self) -> String {
        let (Some(ms), Some(cpu)) = (
            Stat::of(&self.lists_alone.iter().map(|l| l.ms).collect::<Vec<_>>()),
            Stat::of(
                &self
                    .lists_alone
                    .iter()
                    .map(|l| l.apiserver_cpu_s)
                    .collect::<Vec<_>>(),
            ),
        ) else {
            return String::new();
        };
        format!(
            " The API server lists every Service and slice at once, as a proxy's first lists \
             ask (protobuf, resourceVersion 0), with nothing else reading, in {} ms \
             (median of {}, {}–{}), using {:.2} CPU-seconds of its own ({:.2}–{:.2}): the \
             floor under any proxy's start.",
            fmt_num(ms.median),
            self.lists_alone.len(),
            fmt_num(ms.min),
            fmt_num(ms.max),
            cpu.median,
            cpu.min,
            cpu.max
        )
    }

    /// How the objects came to be, for the report.
    fn origin(&self) -> &'static str {
        if self.stored {
            "written into etcd (Services, their IPAddress records, EndpointSlices) and served \
             by the API server"
        } else {
            "created through the API"
        }
    }
}

/// One proxy at one scale: every value list has one entry per repetition (the probe's has
/// every round of every repetition).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ProxyCell {
    pub mode: String,
    pub services: usize,
    /// Per repetition: this mode's new connections/s to the last Service, and `direct`'s
    /// on an idle bed of its own, the mean of a load right before and one right after it
    /// (the ceiling at that moment).
    #[serde(default)]
    pub rate_last: Vec<f64>,
    #[serde(default)]
    pub direct_beside: Vec<f64>,
    /// Process start until every sampled Service answered (probe-based), ms.
    pub programmed_ms: Vec<f64>,
    /// The proxy's own account of its first full programming, ms.
    pub first_sync_ms: Vec<f64>,
    /// kproxy's CPU time (all its threads, the verifier's included) from its start until
    /// ready, as it logged it, ms.
    #[serde(default)]
    pub start_cpu_ms: Vec<f64>,
    /// kproxy's peak resident memory (VmHWM) when it said it was ready, MiB: the start's
    /// part of `peak_rss_mib`.
    #[serde(default)]
    pub ready_peak_rss_mib: Vec<f64>,
    /// Under churn: end-to-end network programming latency (the proxy's histogram), ms.
    pub npl_p50_ms: Vec<f64>,
    pub npl_p99_ms: Vec<f64>,
    /// Upper bound of the histogram bucket holding the p99: what it knows for sure, ms.
    #[serde(default)]
    pub npl_p99_bucket_ms: Vec<f64>,
    pub npl_observations: Vec<f64>,
    /// A quantile fell above the histogram's last finite bucket (the value is that bound).
    pub npl_above: bool,
    /// Under churn: the proxy's own part (kproxy: API event to datapath; kube-proxy: one
    /// rules sync), ms.
    pub own_p50_ms: Vec<f64>,
    pub own_p99_ms: Vec<f64>,
    pub own_observations: Vec<f64>,
    pub own_meaning: String,
    /// Independent probe: pod status written until the new endpoint answers, ms.
    pub probe_ms: Vec<f64>,
    pub peak_rss_mib: Vec<f64>,
    pub cpu_s: Vec<f64>,
    /// CPU of the processes it ran (kube-proxy's iptables-restore and nft).
    pub children_cpu_s: Vec<f64>,
    /// kproxy only, per repetition: its datapath counters that are not zero after the loads
    /// (drops and pass-throughs by reason among them).
    #[serde(default)]
    pub datapath_counters: Vec<BTreeMap<String, u64>>,
    /// Per repetition, after the loads: the median time of a `/metrics` scrape (ms) and its
    /// size (bytes).
    #[serde(default)]
    pub scrape_ms: Vec<f64>,
    #[serde(default)]
    pub scrape_bytes: Vec<f64>,
    /// Sustained churn (kproxy): the changes per second written, and per repetition the
    /// end-to-end network programming latency of those changes and the proxy's own part.
    #[serde(default)]
    pub sustained_per_s: Vec<f64>,
    #[serde(default)]
    pub sustained_observations: Vec<f64>,
    #[serde(default)]
    pub sustained_npl_p50_ms: Vec<f64>,
    #[serde(default)]
    pub sustained_npl_p99_ms: Vec<f64>,
    #[serde(default)]
    pub sustained_own_p99_ms: Vec<f64>,
}

/// One mode at one scale under the same fixed offered rate of new connections (below every
/// mode's saturation): the machine's CPU time per connection, one value per window (one per
/// repetition, or one per pair with `direct` beside it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct CpuCell {
    pub mode: String,
    pub services: usize,
    /// Connections offered per second.
    pub offered: f64,
    /// Connections completed per second.
    pub achieved: Vec<f64>,
    /// The machine's CPU time over the window (all CPUs) less the proxy process's, less the
    /// rest's rate at rest just before (the control plane, the bench itself), per
    /// connection, µs.
    pub cpu_us: Vec<f64>,
    /// Connect+request latency at that rate, µs.
    pub p99_us: Vec<f64>,
    /// The proxy process's own CPU over the window (with the processes it ran; not in
    /// `cpu_us`) per connection, µs.
    #[serde(default)]
    pub proxy_us: Vec<f64>,
    /// Per pair of windows: `cpu_us` less `direct`'s measured the same way right before or
    /// after it, on an idle bed beside (the ceiling's CPU per connection at that moment), µs.
    #[serde(default)]
    pub overhead_beside_us: Vec<f64>,
}

/// The CPU table: per mode, CPU per connection, the proxy's overhead over `direct`, and
/// that overhead against kube-proxy's nftables mode's.
fn cpu_table(real: &Real) -> String {
    if real.cpu.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "#### CPU per connection at a fixed rate (real kube-proxy)\n\n\
         Every mode gets the same offered rate of new connections to the last Service (direct: \
         to the backends in turn), below every mode's saturation; the machine's CPU time over \
         the measured window (all CPUs, from {}) less the proxy process's own, \
         less the rate the rest burned at rest in the second before (the control plane, \
         the bench), divided by the connections completed: what moving the connections \
         costs, in the kernel's stack and datapath and in client and servers. Overhead: \
         the mode's figure less direct's, the datapath's cost. The proxy process's own CPU \
         over the window (its control-plane work: syncs, collections, kube-proxy's rule \
         runs) stands apart, per connection. Overhead beside: per pair of windows, the \
         mode's figure less direct's measured the same way right before or after it, on an \
         idle bed beside the mode's (see the table above); {} pairs per repetition, \
         the mode's window and direct's first in turn (runs before 2026-12-06: one pair, \
         the mode's first). Medians over all windows (pairs) with min–max.\n\n\
         | mode | services | offered /s | achieved /s | CPU µs per connection | overhead µs \
         | overhead × nftables' | overhead beside µs | proxy process µs | p99 µs |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        if real.cpu_clock.is_empty() {
            super::super::load::TICKED_CLOCK
        } else {
            &real.cpu_clock
        },
        super::PACED_ROUNDS
    );

    let median = |mode: &str, services: usize| {
        real.cpu
            .iter()
            .find(|c| c.mode == mode && c.services == services)
            .and_then(|c| Stat::of(&c.cpu_us))
            .map(|s| s.median)
    };
    let mut cells: Vec<&CpuCell> = real.cpu.iter().collect();
    cells.sort_by_key(|c| c.services);
    for c in cells {
        let direct = median(super::DIRECT, c.services);
        let overhead = |mode: &str| Some(median(mode, c.services)? - direct?);
        let own = (c.mode != super::DIRECT)
            .then(|| overhead(&c.mode))
            .flatten();
        let nftables = overhead(NFTABLES);
        let ratio = match (own, nftables) {
            (Some(own), Some(theirs)) if theirs > 0.0 && c.mode != NFTABLES => {
                format!("{:.2}×", own / theirs)
            }
            _ => "–".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {ratio} | {} | {} | {} |",
            c.mode,
            c.services,
            fmt_num(c.offered),
            ms(&c.achieved),
            ms(&c.cpu_us),
            opt(own.map(fmt_num)),
            ms(&c.overhead_beside_us),
            ms(&c.proxy_us),
            ms(&c.p99_us),
        );
    }
    out + "
"
}

/// Each mode against `direct` measured right after its load, repetition by repetition.
fn beside_table(real: &Real) -> String {
    let mut cells: Vec<&ProxyCell> = real
        .proxies
        .iter()
        .filter(|p| !p.beside_ratios().is_empty())
        .collect();
    if cells.is_empty() {
        return String::new();
    }
    cells.sort_by_key(|p| p.services);
    let mut out = String::from(
        "#### Against the ceiling measured beside (real kube-proxy)\n\n\
         Right before and right after each mode's load to the last Service, `direct` runs \
         the same load on a bed of its own that stands idle beside the mode's; the mean of \
         the two is the ceiling at that moment (each load leaves its closed connections' \
         TIME_WAIT sockets to the one after it). Per repetition, the mode's new \
         connections/s over that; medians over repetitions with \
         min–max. The `direct` row above is measured minutes away from most modes, over \
         which the machine can drift by more than what is compared.\n\n\
         | mode | services | × direct beside | new conn/s, last | direct beside |\n\
         |---|---:|---:|---:|---:|\n",
    );
    for p in cells {
        let ratios = Stat::of(&p.beside_ratios());
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            p.mode,
            p.services,
            ratios.map_or("–".into(), |r| format!(
                "{:.2}× ({:.2}–{:.2})",
                r.median, r.min, r.max
            )),
            ms(&p.rate_last),
            ms(&p.direct_beside),
        );
    }
    out + "\n"
}

/// kube-proxy's nftables mode, what the CPU overhead is compared with.
pub const NFTABLES: &str = "kube-proxy-nftables";

/// The section as markdown; empty when it did not run.
pub fn markdown(real: Option<&Real>, modes: &[&str]) -> String {
    let Some(real) = real else {
        return String::new();
    };
    let mut out = format!(
        "### Real kube-proxy {} (headline)\n\n\
         kproxy against kube-proxy itself, in its iptables mode (`{}`) and nftables mode, \
         each on a fresh bed, all reading the same real API server (etcd, kube-apiserver, \
         kube-controller-manager {0}) holding N selectorless ClusterIP Services with one \
         EndpointSlice of three ready endpoints each, plus selector Services whose pods the \
         bench marks Ready so the real EndpointSlice controller writes their slices.\n\n",
        real.kubernetes_release, real.iptables_version
    );
    for scale in &real.scales {
        let _ = writeln!(
            out,
            "- {} services: {} objects {} in {:.1} s.{}",
            scale.services,
            scale.objects,
            scale.origin(),
            scale.create_s,
            scale.lists_alone_text()
        );
    }
    if real.cells.iter().any(|c| c.mode == super::DIRECT) {
        let _ = writeln!(
            out,
            "\n`{}` is the bed's ceiling: the same client connecting to the three backends in \
             turn, with no Service and no proxy (its rows stand under \"last\"). Through a \
             ClusterIP every connection of the client goes to one address and port, so a \
             proxy that translates packets also meets the client's port reuse (near 30k/s \
             here, see the load generator); direct connections spread over three.",
            super::DIRECT
        );
    }
    if !real.scales.is_empty() {
        out += "\n#### New connections (real kube-proxy)\n\n";
        out += &connections_table(&real.cells, REAL_BASELINE, modes);
        out += &programming_table(real, "real kube-proxy");
        out += &beside_table(real);
        out += &cpu_table(real);
        out += &churn_table(real);
        out += &sustained_table(real);
        out += &resources_table(real, "real kube-proxy");
    }
    out += &notes(real);
    if let Some(ipv6) = &real.ipv6 {
        out += &ipv6_markdown(ipv6, modes);
    }
    out
}

/// The IPv6 row: its scales, connections, programming and resources.
fn ipv6_markdown(ipv6: &Real, modes: &[&str]) -> String {
    let mut out = String::from(
        "#### IPv6 (real kube-proxy)\n\n\
         The same measurements with single-stack IPv6 Services (`ipFamilies: [IPv6]`, VIPs \
         in 2001:db8:ffff::/108 of a dual-stack API server) and IPv6 EndpointSlices, on a \
         dual-stack bed where client and servers speak IPv6: kube-proxy serves them with \
         its IPv6 proxier (ip6tables rules in iptables mode, the `ip6` table in nftables \
         mode), kproxy with its IPv6 programs. Churn and the probe run here too, on their \
         IPv4 selector Services (the bed is dual-stack): what they measure is how a change \
         is served with this many IPv6 Services programmed.\n\n",
    );
    for scale in &ipv6.scales {
        let _ = writeln!(
            out,
            "- {} IPv6 services: {} objects {} in {:.1} s.{}",
            scale.services,
            scale.objects,
            scale.origin(),
            scale.create_s,
            scale.lists_alone_text()
        );
    }
    out += "\n##### New connections over IPv6 (real kube-proxy)\n\n";
    out += &connections_table(&ipv6.cells, REAL_BASELINE, modes);
    out += &programming_table(ipv6, "real kube-proxy, IPv6");
    out += &sustained_table(ipv6);
    out += &resources_table(ipv6, "real kube-proxy, IPv6");
    out + &notes(ipv6)
}

fn notes(real: &Real) -> String {
    if real.notes.is_empty() {
        return String::new();
    }
    let mut out = String::from("Notes:\n\n");
    for note in &real.notes {
        let _ = writeln!(out, "- {note}");
    }
    out + "\n"
}

fn rows(real: &Real) -> Vec<&ProxyCell> {
    let mut rows: Vec<&ProxyCell> = real.proxies.iter().collect();
    rows.sort_by_key(|p| p.services);
    rows
}

fn ms(values: &[f64]) -> String {
    opt(Stat::of(values).map(|s| fmt_stat(s, fmt_num)))
}

fn programming_table(real: &Real, section: &str) -> String {
    let mut out = format!(
        "#### Full programming from nothing ({section})\n\n\
         From the proxy process's start until every sampled Service answers a connection (the \
         last created, the first, and 62 between; the same probe for every mode), and the \
         proxy's own account of its first full sync (kproxy's log, kube-proxy's \
         `kubeproxy_sync_full_proxy_rules_duration_seconds`), and kproxy's CPU time \
         (all its threads) from its start until ready, as it logged it. Milliseconds.\n\n\
         | mode | services | start → all answer ms (min–max) | proxy's own first sync ms | CPU to ready ms |\n\
         |---|---:|---:|---:|---:|\n",
    );
    for p in rows(real) {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            p.mode,
            p.services,
            ms(&p.programmed_ms),
            ms(&p.first_sync_ms),
            ms(&p.start_cpu_ms)
        );
    }
    out + "\n"
}

/// Sustained churn, where measured (kproxy's modes).
fn sustained_table(real: &Real) -> String {
    let measured: Vec<&ProxyCell> = rows(real)
        .into_iter()
        .filter(|p| !p.sustained_per_s.is_empty())
        .collect();
    if measured.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "#### Network programming latency under sustained endpoint churn\n\n\
         {} endpoint changes per second asked for, for {} s, each to another Service's \
         EndpointSlice (two passes over half as many Services as changes, more over a \
         smaller cluster: one endpoint made not ready, then ready again in the next pass), \
         written straight into etcd in a transaction every 10 ms, each stamped with its own \
         last-change-trigger-time as it is written; the API server serves them to the \
         proxy's watch. End to end: kproxy's histogram from that stamp to the change in \
         the datapath, one observation per change; own part: from the watch event's \
         arrival. Milliseconds; medians over repetitions with min–max.\n\n\
         | mode | services | changes/s written | e2e p50 | e2e p99 | e2e obs. | own p99 |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
        real.sustained_rate, real.sustained_seconds
    );
    for p in measured {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            p.mode,
            p.services,
            opt(Stat::of(&p.sustained_per_s).map(|s| fmt_num(s.median))),
            ms(&p.sustained_npl_p50_ms),
            ms(&p.sustained_npl_p99_ms),
            opt(Stat::of(&p.sustained_observations).map(|s| fmt_num(s.median))),
            ms(&p.sustained_own_p99_ms),
        );
    }
    out + "\n"
}

fn churn_table(real: &Real) -> String {
    let mut out = format!(
        "#### Network programming latency under endpoint churn (real kube-proxy)\n\n\
         One pod's readiness flipped every {:.0} ms for {} s; p50/p99 from each proxy's own \
         histograms over that window (PromQL-style interpolation within buckets; \
         kube-proxy's end-to-end buckets are 0.25 s, 0.5 s, 1 s, …, so its figures are \
         coarse: \"p99 ≤\" is the upper bound of the bucket holding the p99, all a \
         histogram knows for sure; the probe column is the precise figure). End to end: from the EndpointSlice's last-change-trigger-time (one \
         annotated change per second, see the bench's churn module). Own part: kproxy from \
         the API event's arrival to the datapath written; kube-proxy one rules sync. \
         Independent probe: a pod turns Ready on a server no other endpoint uses, timed \
         from the status write to the first connection it answers ({} rounds per \
         repetition, each after a quiet second). Milliseconds; medians over repetitions \
         with min–max.\n\n\
         | mode | services | e2e p50 | e2e p99 | e2e p99 ≤ | e2e obs. | own p50 | own p99 \
         | own obs. | probe median (min–max) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        real.churn_period_ms, real.churn_seconds, real.probe_rounds
    );
    for p in rows(real) {
        let above = if p.npl_above { " (>)" } else { "" };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {}{above} | {} | {} | {} | {} | {} | {} |",
            p.mode,
            p.services,
            ms(&p.npl_p50_ms),
            ms(&p.npl_p99_ms),
            opt(Stat::of(&p.npl_p99_bucket_ms).map(|s| fmt_num(s.max))),
            opt(Stat::of(&p.npl_observations).map(|s| fmt_num(s.median))),
            ms(&p.own_p50_ms),
            ms(&p.own_p99_ms),
            opt(Stat::of(&p.own_observations).map(|s| fmt_num(s.median))),
            ms(&p.probe_ms),
        );
    }
    out + "\n"
}

fn resources_table(real: &Real, section: &str) -> String {
    let mut out = format!(
        "#### Proxy resources ({section})\n\n\
         Over the whole run of a repetition (programming, load; churn and probe in the IPv4 \
         row): the proxy's peak resident memory (VmHWM), its CPU time, and the CPU time of \
         the processes it ran (kube-proxy's iptables-restore/nft).\n\n\
         | mode | services | peak RSS MiB (min–max) | CPU s | children CPU s |\n\
         |---|---:|---:|---:|---:|\n",
    );
    for p in rows(real) {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            p.mode,
            p.services,
            ms(&p.peak_rss_mib),
            ms(&p.cpu_s),
            ms(&p.children_cpu_s)
        );
    }
    out + "\n"
}

#[cfg(test)]
mod tests {
    use super::super::super::report::{Placement, Sample};
    use super::*;

    fn cell(mode: &str, services: usize, rate: f64) -> Cell {
        Cell {
            mode: mode.into(),
            services,
            placement: Placement::Last,
            samples: vec![Sample {
                rate,
                p50_us: 500,
                p99_us: 2_000,
                max_us: 3_000,
                errors: 0,
            }],
        }
    }

    /// A run of the IPv6 row alone (`--ipv6-only`): kproxy at twice kube-proxy's rate.
    fn ipv6_only() -> Real {
        let ipv6 = Real {
            scales: vec![Scale {
                services: 10_000,
                create_s: 60.0,
                stored: false,
                objects: 20_000,
                lists_alone: [(300.0, 0.25), (100.0, 0.5), (200.0, 0.75)]
                    .map(|(ms, apiserver_cpu_s)| ListsAlone {
                        ms,
                        services_ms: ms / 2.0,
                        slices_ms: ms,
                        bytes: 1_000,
                        apiserver_cpu_s,
                    })
                    .to_vec(),
            }],
            cells: vec![
                cell("kproxy-tc", 10_000, 20_000.0),
                cell(REAL_BASELINE, 10_000, 10_000.0),
            ],
            proxies: vec![ProxyCell {
                mode: "kproxy-tc".into(),
                services: 10_000,
                programmed_ms: vec![1_234.0],
                peak_rss_mib: vec![45.0],
                ..ProxyCell::default()
            }],
            ..Real::default()
        };
        Real {
            kubernetes_release: "v1.37.2".into(),
            ipv6: Some(Box::new(ipv6)),
            ..Real::default()
        }
    }

    #[test]
    fn the_ipv6_row_has_its_own_tables_and_ratios() {
        let text = markdown(Some(&ipv6_only()), &["kproxy-tc", REAL_BASELINE]);
        assert!(text.contains("#### IPv6 (real kube-proxy)"), "{text}");
        assert!(
            text.contains("- 10000 IPv6 services: 20000 objects"),
            "{text}"
        );
        assert!(
            text.contains(
                "with nothing else reading, in 200 ms (median of 3, 100–300), using 0.50 \
                 CPU-seconds of its own (0.25–0.75)"
            ),
            "{text}"
        );
        assert!(
            text.contains("| kproxy-tc | 10000 | last | 20,000 (20,000–20,000) | 2.00× |"),
            "{text}"
        );
        assert!(text.contains("Full programming from nothing (real kube-proxy, IPv6)"));
        assert!(
            text.contains("| kproxy-tc | 10000 | 1,234 (1,234–1,234) |"),
            "{text}"
        );
        // No IPv4 scale ran: no IPv4 tables, and no churn table for IPv6.
        assert!(
            !text.contains("#### New connections (real kube-proxy)"),
            "{text}"
        );
        assert!(!text.contains("endpoint churn"), "{text}");
    }

    #[test]
    fn sustained_churn_gets_a_table_where_it_was_measured() {
        let mut real = ipv6_only();
        let ipv6 = real.ipv6.as_mut().expect("the IPv6 row");
        ipv6.sustained_rate = 1_000;
        ipv6.sustained_seconds = 10;
        ipv6.proxies[0].sustained_per_s = vec![1_001.0];
        ipv6.proxies[0].sustained_observations = vec![10_000.0];
        ipv6.proxies[0].sustained_npl_p50_ms = vec![7.3];
        ipv6.proxies[0].sustained_npl_p99_ms = vec![15.6];
        ipv6.proxies[0].sustained_own_p99_ms = vec![5.0];
        let text = markdown(Some(&real), &["kproxy-tc", REAL_BASELINE]);
        assert!(
            text.contains("1000 endpoint changes per second asked for, for 10 s"),
            "{text}"
        );
        assert!(
            text.contains(
                "| kproxy-tc | 10000 | 1,001 | 7.30 (7.30–7.30) | 15.6 (15.6–15.6) | 10,000 | \
                 5.00 (5.00–5.00) |"
            ),
            "{text}"
        );
        let without = markdown(Some(&ipv6_only()), &["kproxy-tc", REAL_BASELINE]);
        assert!(!without.contains("sustained endpoint churn"), "{without}");
    }

    #[test]
    fn each_mode_is_taken_over_the_ceiling_measured_beside_it_repetition_by_repetition() {
        let proxy = ProxyCell::beside_only;
        let real = Real {
            scales: vec![Scale {
                services: 10_000,
                create_s: 60.0,
                stored: true,
                objects: 20_000,
                lists_alone: Vec::new(),
            }],
            // The machine drifts: a median over the repetitions of each would say 0.80×,
            // the ratios taken at one moment say 0.96×.
            proxies: vec![
                proxy(
                    "kproxy-sock",
                    &[24_000.0, 14_400.0, 19_200.0],
                    &[25_000.0, 15_000.0, 20_000.0],
                ),
                proxy(NFTABLES, &[12_000.0], &[15_000.0]),
                proxy("kproxy-tc", &[], &[]),
            ],
            ..Real::default()
        };
        assert_eq!(real.proxies[0].beside_ratios(), vec![0.96, 0.96, 0.96]);
        let text = markdown(Some(&real), &["kproxy-sock", NFTABLES]);
        assert!(
            text.contains(
                "| kproxy-sock | 10000 | 0.96× (0.96–0.96) | 19,200 (14,400–24,000) | \
                 20,000 (15,000–25,000) |"
            ),
            "{text}"
        );
        assert!(
            text.contains("| kube-proxy-nftables | 10000 | 0.80× (0.80–0.80) |"),
            "{text}"
        );
        // A mode without the measure has no row.
        let table = text
            .split("#### Against the ceiling measured beside")
            .nth(1)
            .and_then(|t| t.split("\n\n").nth(2))
            .expect("the table");
        assert_eq!(table.lines().count(), 4, "{table}");
        assert!(!table.contains("kproxy-tc"), "{table}");
        let without = markdown(Some(&Real::default()), &["kproxy-sock"]);
        assert!(!without.contains("measured beside"), "{without}");
    }

    #[test]
    fn the_cpu_table_gives_each_proxy_its_overhead_over_direct_and_against_nftables() {
        let cpu = |mode: &str, us: f64| CpuCell {
            mode: mode.into(),
            services: 10_000,
            offered: 5_000.0,
            achieved: vec![4_990.0],
            cpu_us: vec![us],
            p99_us: vec![1_500.0],
            proxy_us: Vec::new(),
            overhead_beside_us: if mode == "kproxy-sock" {
                vec![3.0, 1.0]
            } else {
                Vec::new()
            },
        };
        let real = Real {
            scales: vec![Scale {
                services: 10_000,
                create_s: 60.0,
                stored: false,
                objects: 20_000,
                lists_alone: Vec::new(),
            }],
            cpu: vec![
                cpu(super::super::DIRECT, 100.0),
                cpu("kproxy-sock", 102.0),
                cpu(NFTABLES, 120.0),
            ],
            ..Real::default()
        };
        let text = markdown(Some(&real), &["kproxy-sock", NFTABLES]);
        assert!(
            text.contains("#### CPU per connection at a fixed rate"),
            "{text}"
        );
        assert!(
            text.contains("| kproxy-sock | 10000 | 5,000 | 4,990 (4,990–4,990) | 102 (102–102) | 2.00 | 0.10× | 2.00 (1.00–3.00) | – |"),
            "{text}"
        );
        assert!(
            text.contains(
                "| direct | 10000 | 5,000 | 4,990 (4,990–4,990) | 100 (100–100) | – | – | – |"
            ),
            "{text}"
        );
        // Data from before the clock was recorded read /proc/stat, and the text says so.
        assert!(
            text.contains(super::super::super::load::TICKED_CLOCK),
            "{text}"
        );
        let clocked = Real {
            cpu_clock: super::super::super::load::SCHEDULER_CLOCK.into(),
            ..real
        };
        let text = markdown(Some(&clocked), &["kproxy-sock", NFTABLES]);
        assert!(
            text.contains(&format!(
                "(all CPUs, from {})",
                super::super::super::load::SCHEDULER_CLOCK
            )),
            "{text}"
        );
        // Older data, without the table's figures, still loads.
        let mut older = serde_json::to_value(Real::default()).unwrap();
        older.as_object_mut().unwrap().remove("cpu");
        assert!(
            serde_json::from_value::<Real>(older)
                .unwrap()
                .cpu
                .is_empty()
        );
    }

    #[test]
    fn the_ipv6_row_round_trips_and_older_data_loads_without_it() {
        let real = ipv6_only();
        let json = serde_json::to_string(&real).unwrap();
        assert_eq!(serde_json::from_str::<Real>(&json).unwrap(), real);
        let older = serde_json::to_value(Real::default()).unwrap();
        assert!(older.get("ipv6").is_none());
        assert_eq!(serde_json::from_value::<Real>(older).unwrap().ipv6, None);
    }
}
