//! The real section's results (raw values, one per repetition) and its markdown tables: the
//! benchmark's headline, kproxy against kube-proxy itself fed by a real API server.

use std::collections::BTreeMap;
use std::fmt::Write as _; // `write!` into a String cannot fail

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
    /// What could not be measured, and why.
    pub notes: Vec<String>,
}

/// One scale's control plane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scale {
    pub services: usize,
    /// Creating the Services and EndpointSlices through the API, seconds.
    pub create_s: f64,
    /// Objects created (Services + EndpointSlices).
    pub objects: usize,
}

/// One proxy at one scale: every value list has one entry per repetition (the probe's has
/// every round of every repetition).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ProxyCell {
    pub mode: String,
    pub services: usize,
    /// Process start until every sampled Service answered (probe-based), ms.
    pub programmed_ms: Vec<f64>,
    /// The proxy's own account of its first full programming, ms.
    pub first_sync_ms: Vec<f64>,
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
}

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
            "- {} services: {} objects created through the API in {:.1} s.",
            scale.services, scale.objects, scale.create_s
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
    out += "\n#### New connections (real kube-proxy)\n\n";
    out += &connections_table(&real.cells, REAL_BASELINE, modes);
    out += &programming_table(real);
    out += &churn_table(real);
    out += &resources_table(real);
    if !real.notes.is_empty() {
        out += "Notes:\n\n";
        for note in &real.notes {
            let _ = writeln!(out, "- {note}");
        }
        out += "\n";
    }
    out
}

fn rows(real: &Real) -> Vec<&ProxyCell> {
    let mut rows: Vec<&ProxyCell> = real.proxies.iter().collect();
    rows.sort_by_key(|p| p.services);
    rows
}

fn ms(values: &[f64]) -> String {
    opt(Stat::of(values).map(|s| fmt_stat(s, fmt_num)))
}

fn programming_table(real: &Real) -> String {
    let mut out = String::from(
        "#### Full programming from nothing (real kube-proxy)\n\n\
         From the proxy process's start until every sampled Service answers a connection (the \
         last created, the first, and 62 between; the same probe for every mode), and the \
         proxy's own account of its first full sync (kproxy's log, kube-proxy's \
         `kubeproxy_sync_full_proxy_rules_duration_seconds`). Milliseconds.\n\n\
         | mode | services | start → all answer ms (min–max) | proxy's own first sync ms |\n\
         |---|---:|---:|---:|\n",
    );
    for p in rows(real) {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            p.mode,
            p.services,
            ms(&p.programmed_ms),
            ms(&p.first_sync_ms)
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

fn resources_table(real: &Real) -> String {
    let mut out = String::from(
        "#### Proxy resources (real kube-proxy)\n\n\
         Over the whole run of a repetition (programming, load, churn, probe): the proxy's \
         peak resident memory (VmHWM), its CPU time, and the CPU time of the processes it \
         ran (kube-proxy's iptables-restore/nft).\n\n\
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
