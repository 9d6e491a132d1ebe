//! The performance targets, checked against a report: PASS or MISS, with the values.

use super::real::report::{ProxyCell, Real};
use super::report::{
    Cell, EXTERNAL_CEILING, EXTERNAL_CONN_BASELINE, EXTERNAL_UDP_BASELINE, ExternalCell, Placement,
    Report, Stat, Target,
};

const KPROXY: &str = "kproxy-tc";

fn median_rate(report: &Report, mode: &str, services: usize) -> Option<f64> {
    let cell = report
        .cells
        .iter()
        .find(|c| c.mode == mode && c.services == services && c.placement == Placement::Last)?;
    Some(cell.rate()?.median)
}

fn median_p99(report: &Report, mode: &str, services: usize) -> Option<f64> {
    let cell = report
        .cells
        .iter()
        .find(|c| c.mode == mode && c.services == services && c.placement == Placement::Last)?;
    Some(cell.p99()?.median)
}

/// `kproxy / other >= wanted` for the new-connection rate at `services`.
fn ratio_target(report: &Report, services: usize, other: &str, wanted: f64) -> Option<Target> {
    let ours = median_rate(report, KPROXY, services)?;
    let theirs = median_rate(report, other, services)?;
    let ratio = ours / theirs;
    Some(Target {
        name: format!("{services} services, target last: kproxy vs {other} (new connections/s)"),
        wanted: format!(">= {wanted:.2}x"),
        measured: format!("{ratio:.2}x ({ours:.0} vs {theirs:.0}/s)"),
        pass: ratio >= wanted,
        not_measured: false,
    })
}

/// Every target the report has the data for; the real section's are listed even where it
/// has no figure (as not measured).
pub fn evaluate(report: &Report) -> Vec<Target> {
    let mut targets = report.real.as_ref().map(real_targets).unwrap_or_default();
    let mut generated = cluster_ip_targets(report);
    if report.real.is_some() {
        for t in &mut generated {
            t.name = format!("generated rules (smoke): {}", t.name);
        }
    }
    targets.extend(generated);
    targets.extend(external_targets(report));
    targets
}

/// The scale the real section's targets are stated for.
const REAL_SCALE: usize = 10_000;
const IPTABLES: &str = "kube-proxy-iptables";
const NFTABLES: &str = "kube-proxy-nftables";
/// kproxy with socket-level load balancing (issue 12's targets).
const KPROXY_SOCK: &str = "kproxy-sock";
const DIRECT: &str = super::real::DIRECT;

/// A target from its figure: `Some((text, met))`, or `None` when the run has none.
fn judged(name: String, wanted: &str, figure: Option<(String, bool)>) -> Target {
    let not_measured = figure.is_none();
    let (measured, pass) = figure.unwrap_or_else(|| ("not measured".into(), false));
    Target {
        name,
        wanted: wanted.into(),
        measured,
        pass,
        not_measured,
    }
}

/// The ratio of overheads `ours` to `theirs`, when the measure resolved them. An overhead
/// below zero (a mode that costs less than no proxy at all), or none for theirs, is the
/// measure's noise, not a result: a ratio of it would read like one.
fn overhead_ratio(ours: f64, theirs: f64) -> Option<f64> {
    (ours >= 0.0 && theirs > 0.0).then(|| ours / theirs)
}

/// Whether overhead `ours` is within `wanted` × `theirs`; noise (see `overhead_ratio`)
/// passes nothing.
fn overhead_within(ours: f64, theirs: f64, wanted: f64) -> bool {
    overhead_ratio(ours, theirs).is_some_and(|ratio| ratio <= wanted)
}

/// How overheads `ours` and `theirs` (µs of CPU per connection over `over`) are shown: their
/// ratio, or that the measure did not resolve them (see `overhead_ratio`).
fn overhead_shown(ours: f64, theirs: f64, over: &str) -> String {
    let figures = format!("{ours:.1} vs {theirs:.1} µs of CPU per connection over {over}");
    match overhead_ratio(ours, theirs) {
        Some(ratio) => format!("{ratio:.2}x ({figures})"),
        None => format!("not conclusive ({figures})"),
    }
}

/// The real section's figures at one scale.
struct Figures<'a> {
    real: &'a Real,
    at: usize,
}

impl Figures<'_> {
    /// The median of `field` of `mode`'s "last" cell at `services`.
    fn median(&self, mode: &str, services: usize, field: fn(&Cell) -> Option<Stat>) -> Option<f64> {
        let cell =
            self.real.cells.iter().find(|c| {
                c.mode == mode && c.services == services && c.placement == Placement::Last
            })?;
        Some(field(cell)?.median)
    }

    /// The median over repetitions of `field` of `mode` at the scale.
    fn stat(&self, mode: &str, field: fn(&ProxyCell) -> &Vec<f64>) -> Option<f64> {
        let proxy = self
            .real
            .proxies
            .iter()
            .find(|p| p.mode == mode && p.services == self.at)?;
        Some(Stat::of(field(proxy))?.median)
    }

    /// kube-proxy's figures, to show beside kproxy's.
    fn beside(&self, field: fn(&ProxyCell) -> &Vec<f64>, unit: &str) -> String {
        [IPTABLES, NFTABLES]
            .iter()
            .map(|m| {
                self.stat(m, field)
                    .map_or(format!("{m}: -"), |v| format!("{m}: {v:.1}{unit}"))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn rate_ratio(&self, other: &str, wanted: f64) -> Option<(String, bool)> {
        self.rate_ratio_of(KPROXY, other, wanted)
    }

    /// `ours`' new connections/s against `other`'s at the scale ("last").
    fn rate_ratio_of(&self, ours: &str, other: &str, wanted: f64) -> Option<(String, bool)> {
        let ours = self.median(ours, self.at, Cell::rate)?;
        let theirs = self.median(other, self.at, Cell::rate)?;
        let ratio = ours / theirs;
        Some((
            format!("{ratio:.2}x ({ours:.0} vs {theirs:.0}/s)"),
            ratio >= wanted,
        ))
    }

    /// `mode`'s new connections/s over `direct`'s measured beside it, per repetition.
    fn over_ceiling(&self, mode: &str) -> Option<(Stat, usize)> {
        let proxy = self
            .real
            .proxies
            .iter()
            .find(|p| p.mode == mode && p.services == self.at)?;
        let ratios = proxy.beside_ratios();
        Some((Stat::of(&ratios)?, ratios.len()))
    }

    /// `ours`' new connections/s against `direct`'s measured beside it (the median of the
    /// repetitions' ratios); the medians' ratio for a run without.
    fn ceiling_ratio(&self, ours: &str, wanted: f64) -> Option<(String, bool)> {
        let Some((ratios, n)) = self.over_ceiling(ours) else {
            return self.rate_ratio_of(ours, DIRECT, wanted);
        };
        Some((
            format!(
                "{:.2}x of {DIRECT} measured beside ({:.2}-{:.2} over {n} repetitions)",
                ratios.median, ratios.min, ratios.max
            ),
            ratios.median >= wanted,
        ))
    }

    /// `ours`' new connections/s against `other`'s, each taken over `direct` measured
    /// beside it; the medians' ratio for a run without.
    fn ratio_through_ceiling(
        &self,
        ours: &str,
        other: &str,
        wanted: f64,
    ) -> Option<(String, bool)> {
        let (Some((a, _)), Some((b, _))) = (self.over_ceiling(ours), self.over_ceiling(other))
        else {
            return self.rate_ratio_of(ours, other, wanted);
        };
        let ratio = a.median / b.median;
        Some((
            format!(
                "{ratio:.2}x ({:.2}x and {:.2}x of {DIRECT} measured beside)",
                a.median, b.median
            ),
            ratio >= wanted,
        ))
    }

    /// The median CPU per connection of `mode` at the fixed rate, µs.
    fn cpu_us(&self, mode: &str) -> Option<f64> {
        let cell = self
            .real
            .cpu
            .iter()
            .find(|c| c.mode == mode && c.services == self.at)?;
        Some(Stat::of(&cell.cpu_us)?.median)
    }

    /// The median of `mode`'s CPU per connection over `direct`'s measured beside it, µs.
    fn overhead_beside(&self, mode: &str) -> Option<f64> {
        let cell = self
            .real
            .cpu
            .iter()
            .find(|c| c.mode == mode && c.services == self.at)?;
        Some(Stat::of(&cell.overhead_beside_us)?.median)
    }

    /// `ours`' CPU overhead per connection (over direct) against nftables': each over
    /// `direct` measured beside it where the run has that, else over the `direct` row.
    fn cpu_overhead_ratio(&self, ours: &str, wanted: f64) -> Option<(String, bool)> {
        if let (Some(ours), Some(theirs)) =
            (self.overhead_beside(ours), self.overhead_beside(NFTABLES))
        {
            return Some((
                overhead_shown(ours, theirs, &format!("{DIRECT} measured beside")),
                overhead_within(ours, theirs, wanted),
            ));
        }
        let direct = self.cpu_us(DIRECT)?;
        let ours = self.cpu_us(ours)? - direct;
        let theirs = self.cpu_us(NFTABLES)? - direct;
        Some((
            overhead_shown(ours, theirs, DIRECT),
            overhead_within(ours, theirs, wanted),
        ))
    }

    fn p99_growth(&self, small: usize) -> Option<(String, bool)> {
        if small == self.at {
            return None;
        }
        let large = self.median(KPROXY, self.at, Cell::p99)?;
        let base = self.median(KPROXY, small, Cell::p99)?;
        Some((
            format!("{:.2}x ({large:.0} vs {base:.0} us)", large / base),
            large <= 1.1 * base,
        ))
    }

    fn at_most(&self, field: fn(&ProxyCell) -> &Vec<f64>, limit_ms: f64) -> Option<(String, bool)> {
        let ours = self.stat(KPROXY, field)?;
        Some((
            format!("{ours:.1} ms ({})", self.beside(field, " ms")),
            ours <= limit_ms,
        ))
    }

    /// kproxy's peak RSS against the smaller of kube-proxy's.
    fn rss(&self) -> Option<(String, bool)> {
        let ours = self.stat(KPROXY, |p| &p.peak_rss_mib)?;
        let theirs = [IPTABLES, NFTABLES]
            .iter()
            .filter_map(|m| self.stat(m, |p| &p.peak_rss_mib))
            .reduce(f64::min)?;
        Some((
            format!(
                "{:.2}x of the smaller ({ours:.1} MiB; {})",
                ours / theirs,
                self.beside(|p| &p.peak_rss_mib, " MiB")
            ),
            ours <= 0.25 * theirs,
        ))
    }
}

/// The targets against the real kube-proxy, at 10,000 services (or, in a run
/// without that scale, the largest one measured, which the name says).
fn real_targets(real: &Real) -> Vec<Target> {
    let scales: Vec<usize> = real.scales.iter().map(|s| s.services).collect();
    let at = if scales.contains(&REAL_SCALE) {
        REAL_SCALE
    } else {
        scales.iter().copied().max().unwrap_or(REAL_SCALE)
    };
    let small = scales.iter().copied().min().unwrap_or(at);
    let scale = if at == REAL_SCALE {
        format!("{at} services")
    } else {
        format!("{at} services (stated for {REAL_SCALE}, not measured there)")
    };
    let f = Figures { real, at };
    vec![
        judged(
            format!("real: {scale}, target last: kproxy vs {IPTABLES} (new connections/s)"),
            ">= 3.00x",
            f.rate_ratio(IPTABLES, 3.0),
        ),
        judged(
            format!("real: {scale}, target last: kproxy vs {NFTABLES} (new connections/s)"),
            ">= 1.00x",
            f.rate_ratio(NFTABLES, 1.0),
        ),
        judged(
            format!("real: {scale}, target last: {KPROXY_SOCK} vs {DIRECT} (new connections/s)"),
            ">= 0.95x",
            f.ceiling_ratio(KPROXY_SOCK, 0.95),
        ),
        judged(
            format!("real: {scale}, target last: {KPROXY_SOCK} vs {NFTABLES} (new connections/s)"),
            ">= 1.20x",
            f.ratio_through_ceiling(KPROXY_SOCK, NFTABLES, 1.2),
        ),
        judged(
            format!(
                "real: {KPROXY_SOCK}'s CPU overhead per connection vs {NFTABLES}'s, at a fixed \
                 rate ({scale})"
            ),
            "<= 0.20x",
            f.cpu_overhead_ratio(KPROXY_SOCK, 0.2),
        ),
        judged(
            format!("real: kproxy p99 connect+request at {scale} vs at {small}"),
            "<= 1.10x",
            f.p99_growth(small),
        ),
        judged(
            format!("real: network programming latency p99 under churn, end to end ({scale})"),
            "<= 100 ms",
            f.at_most(|p| &p.npl_p99_ms, 100.0),
        ),
        judged(
            format!(
                "real: network programming latency p99 under churn, the proxy's own part ({scale})"
            ),
            "<= 10 ms",
            f.at_most(|p| &p.own_p99_ms, 10.0),
        ),
        judged(
            format!(
                "real: full programming from nothing, start to every service answering ({scale})"
            ),
            "<= 500 ms",
            f.at_most(|p| &p.programmed_ms, 500.0),
        ),
        judged(
            format!("real: kproxy peak RSS vs kube-proxy's ({scale})"),
            "<= 0.25x",
            f.rss(),
        ),
    ]
}

/// The ClusterIP section's targets. The issue states them for 10 and 10,000 services; a run
/// with other scales checks its smallest and largest instead.
fn cluster_ip_targets(report: &Report) -> Vec<Target> {
    let scales: Vec<usize> = report.cells.iter().map(|c| c.services).collect();
    let (Some(&small), Some(&large)) = (scales.iter().min(), scales.iter().max()) else {
        return Vec::new();
    };
    let mut targets: Vec<Target> = [
        ratio_target(report, large, "iptables-legacy", 2.0),
        ratio_target(report, large, "nftables", 1.0),
    ]
    .into_iter()
    .flatten()
    .collect();
    if small == large {
        // One scale only: the small-scale and growth targets need two.
        return with_absolute_targets(report, large, targets);
    }
    targets.extend(
        [
            ratio_target(report, small, "iptables-legacy", 0.95),
            ratio_target(report, small, "nftables", 0.95),
        ]
        .into_iter()
        .flatten(),
    );
    if let (Some(at_large), Some(at_small)) = (
        median_p99(report, KPROXY, large),
        median_p99(report, KPROXY, small),
    ) {
        targets.push(Target {
            name: format!("kproxy p99 connect+request at {large} services vs at {small}"),
            wanted: "<= 1.20x".into(),
            measured: format!(
                "{:.2}x ({at_large:.0} vs {at_small:.0} us)",
                at_large / at_small
            ),
            pass: at_large <= 1.2 * at_small,
            not_measured: false,
        });
    }
    with_absolute_targets(report, large, targets)
}

/// Programming, memory and XDP targets (they need one scale only).
fn with_absolute_targets(report: &Report, large: usize, mut targets: Vec<Target>) -> Vec<Target> {
    if let Some(p) = report
        .programming
        .iter()
        .find(|p| p.mode == KPROXY && p.services == large)
    {
        if let Some(full) = Stat::of(&p.full_sync_ms) {
            targets.push(Target {
                name: format!("programming {large} services x 3 endpoints from nothing"),
                wanted: "<= 500 ms".into(),
                measured: format!("{:.1} ms", full.median),
                pass: full.median <= 500.0,
                not_measured: false,
            });
        }
        if let Some(change) = Stat::of(&p.agent_change_ms) {
            targets.push(Target {
                name: format!(
                    "one-endpoint change served after the agent sees it ({large} services)"
                ),
                wanted: "<= 10 ms".into(),
                measured: format!(
                    "{:.2} ms (file to map: {})",
                    change.median,
                    Stat::of(&p.one_change_ms)
                        .map_or("-".into(), |s| format!("{:.2} ms", s.median))
                ),
                pass: change.median <= 10.0,
                not_measured: false,
            });
        }
    }
    if let Some(usage) = report.agent.iter().find(|a| a.services == large) {
        targets.push(Target {
            name: format!("agent peak RSS at {large} services"),
            wanted: "<= 100 MiB".into(),
            measured: format!("{:.1} MiB", usage.peak_rss_mib),
            pass: usage.peak_rss_mib <= 100.0,
            not_measured: false,
        });
    }
    if let Some(xdp) = &report.xdp
        && let (Some(bare), Some(kproxy)) = (Stat::of(&xdp.bare), Stat::of(&xdp.kproxy))
    {
        let ratio = kproxy.median / bare.median;
        targets.push(Target {
            name: "XDP on non-service traffic vs a bare XDP_PASS program (packets/s)".into(),
            wanted: ">= 0.90x".into(),
            measured: format!(
                "{ratio:.2}x ({:.0} vs {:.0} pps)",
                kproxy.median, bare.median
            ),
            pass: ratio >= 0.9,
            not_measured: false,
        });
    }
    targets
}

/// The mode the external targets are about: kproxy with XDP on the NIC, its setup for
/// traffic from outside.
const EXTERNAL_KPROXY: &str = "kproxy-xdp";

/// Issue 8's targets for external traffic: node1's own UDP forwarding rate (live frames at its
/// NIC; the end-to-end rate through the bed is bounded by the bed's sender) at least 3x
/// kube-proxy's iptables mode and 0.8x the bare XDP forwarder, new connections/s to the NodePort at least
/// nftables'.
fn external_targets(report: &Report) -> Vec<Target> {
    let Some(ext) = &report.external else {
        return Vec::new();
    };
    let median = |mode: &str, field: fn(&ExternalCell) -> Option<Stat>| {
        let cell = ext.cells.iter().find(|c| c.mode == mode)?;
        Some(field(cell)?.median)
    };
    let ratio = |other: &str,
                 field: fn(&ExternalCell) -> Option<Stat>,
                 what: &str,
                 unit: &str,
                 wanted: f64| {
        let ours = median(EXTERNAL_KPROXY, field)?;
        let theirs = median(other, field)?;
        let ratio = ours / theirs;
        Some(Target {
            name: format!("external: {EXTERNAL_KPROXY} vs {other} ({what})"),
            wanted: format!(">= {wanted:.2}x"),
            measured: format!("{ratio:.2}x ({ours:.0} vs {theirs:.0}{unit})"),
            pass: ratio >= wanted,
            not_measured: false,
        })
    };
    [
        ratio(
            EXTERNAL_UDP_BASELINE,
            ExternalCell::node1_pps,
            "node1 forwarding pps (live frames)",
            " pps",
            3.0,
        ),
        ratio(
            EXTERNAL_CEILING,
            ExternalCell::node1_pps,
            "node1 forwarding pps (live frames)",
            " pps",
            0.8,
        ),
        ratio(
            EXTERNAL_CONN_BASELINE,
            ExternalCell::rate,
            "new connections/s to a NodePort, remote backend",
            "/s",
            1.0,
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

#[cfg(test)]
mod tests {
    use super::super::report::{External, Node1Sample, Sample, UdpSample};
    use super::*;

    fn cell(mode: &str, rate: f64, pps: f64) -> ExternalCell {
        ExternalCell {
            mode: mode.into(),
            connections: vec![Sample {
                rate,
                p50_us: 100,
                p99_us: 400,
                max_us: 900,
                errors: 0,
            }],
            udp: vec![UdpSample {
                sent_pps: 2.0 * pps,
                delivered_pps: pps,
            }],
            node1: vec![Node1Sample {
                pps,
                isolated_frames: Some(1_000_000),
                frames: 1_000_000,
                left_node1: Some(1_000_000),
                with_delivery_pps: Some(pps / 2.0),
                delivered: 1_000_000,
                delivered_at_return: Some(900_000),
                xdp_tx: None,
                elapsed_s: 0.5,
            }],
        }
    }

    fn cpu(mode: &str, cpu_us: &[f64], beside: &[f64]) -> super::super::real::report::CpuCell {
        super::super::real::report::CpuCell {
            mode: mode.into(),
            services: 10_000,
            offered: 5_000.0,
            achieved: vec![5_000.0],
            cpu_us: cpu_us.to_vec(),
            p99_us: vec![900.0],
            proxy_us: Vec::new(),
            overhead_beside_us: beside.to_vec(),
        }
    }

    #[test]
    fn socket_lb_is_judged_against_the_ceiling_measured_beside_it() {
        let proxy = ProxyCell::beside_only;
        let real = Real {
            scales: vec![super::super::real::report::Scale {
                services: 10_000,
                create_s: 1.0,
                objects: 20_000,
                stored: true,
                lists_alone: Vec::new(),
            }],
            proxies: vec![
                proxy(KPROXY_SOCK, &[19_400.0, 29_100.0], &[20_000.0, 30_000.0]),
                proxy(NFTABLES, &[16_000.0, 24_000.0], &[20_000.0, 30_000.0]),
            ],
            cpu: vec![
                cpu(DIRECT, &[90.0], &[]),
                // Over the direct row kproxy-sock would cost more than nftables; over direct
                // measured beside each, a tenth.
                cpu(KPROXY_SOCK, &[120.0], &[3.0]),
                cpu(NFTABLES, &[110.0], &[30.0]),
            ],
            ..Real::default()
        };
        let targets = real_targets(&real);
        let find = |what: &str| {
            targets
                .iter()
                .find(|t| t.name.contains(what))
                .unwrap_or_else(|| panic!("{what}: {targets:?}"))
        };
        let direct = find("kproxy-sock vs direct");
        assert!(direct.pass, "{direct:?}");
        assert_eq!(
            direct.measured,
            "0.97x of direct measured beside (0.97-0.97 over 2 repetitions)"
        );
        let nftables = find("kproxy-sock vs kube-proxy-nftables");
        assert!(nftables.pass, "{nftables:?}");
        assert_eq!(
            nftables.measured,
            "1.21x (0.97x and 0.80x of direct measured beside)"
        );
        assert!(!overhead_within(-16.0, 4.0, 0.2), "noise passes nothing");
        assert_eq!(
            overhead_shown(-6.0, -19.2, "direct"),
            "not conclusive (-6.0 vs -19.2 µs of CPU per connection over direct)",
            "no ratio of two negative overheads"
        );
        assert_eq!(
            overhead_shown(3.0, 0.0, "direct"),
            "not conclusive (3.0 vs 0.0 µs of CPU per connection over direct)"
        );
        let cpu = find("CPU overhead");
        assert!(cpu.pass, "{cpu:?}");
        assert_eq!(
            cpu.measured,
            "0.10x (3.0 vs 30.0 µs of CPU per connection over direct measured beside)"
        );
    }

    #[test]
    fn external_targets_compare_kproxy_xdp() {
        let ext = External {
            remote_backends: 3,
            udp_flows: 256,
            warm_neighbours: false,
            cells: vec![
                cell("kproxy-xdp", 15_000.0, 900_000.0),
                cell("kproxy-tc", 30_000.0, 10.0),
                cell("iptables-legacy", 14_000.0, 310_000.0),
                cell("nftables", 16_000.0, 300_000.0),
                cell("bare-xdp-forward", 17_000.0, 1_000_000.0),
            ],
            live_floor_pps: vec![],
            notes: vec![],
        };
        let targets = external_targets(&Report {
            external: Some(ext),
            ..empty_report()
        });
        let got: Vec<(&str, &str, bool)> = targets
            .iter()
            .map(|t| (t.name.as_str(), t.measured.as_str(), t.pass))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "external: kproxy-xdp vs iptables-legacy (node1 forwarding pps (live frames))",
                    "2.90x (900000 vs 310000 pps)",
                    false
                ),
                (
                    "external: kproxy-xdp vs bare-xdp-forward (node1 forwarding pps (live frames))",
                    "0.90x (900000 vs 1000000 pps)",
                    true
                ),
                (
                    "external: kproxy-xdp vs nftables (new connections/s to a NodePort, remote backend)",
                    "0.94x (15000 vs 16000/s)",
                    false
                ),
            ]
        );
        // Nothing to compare without the section.
        assert!(external_targets(&empty_report()).is_empty());
    }

    fn empty_report() -> Report {
        Report {
            machine: super::super::report::Machine {
                kernel: String::new(),
                cpus: 2,
                cpu_model: String::new(),
                memory_gib: 1.0,
                date: String::new(),
            },
            quick: true,
            repetitions: 1,
            duration_s: 1.0,
            cells: vec![],
            programming: vec![],
            agent: vec![],
            xdp: None,
            prog_cost: Vec::new(),
            external: None,
            real: None,
            targets: vec![],
            skipped: vec![],
        }
    }
}
