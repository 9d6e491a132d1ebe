//! The performance targets, checked against a report: PASS or MISS, with the values.

use super::report::{Placement, Report, Stat, Target};

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
    })
}

/// Every target the report has the data for. The issue states them for 10 and 10,000
/// services; a run with other scales checks its smallest and largest instead.
pub fn evaluate(report: &Report) -> Vec<Target> {
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
            });
        }
    }
    if let Some(usage) = report.agent.iter().find(|a| a.services == large) {
        targets.push(Target {
            name: format!("agent peak RSS at {large} services"),
            wanted: "<= 100 MiB".into(),
            measured: format!("{:.1} MiB", usage.peak_rss_mib),
            pass: usage.peak_rss_mib <= 100.0,
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
        });
    }
    targets
}
