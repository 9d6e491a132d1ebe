//! Network programming latency under steady endpoint churn: one pod of the churn Service
//! flips its readiness every [`PERIOD`] for a window, and each proxy's own histograms
//! (end to end from the EndpointSlice's last-change-trigger-time, and its own part) are
//! read before and after; their difference is the window's.
//!
//! Why the flips are aligned to the wall clock: the EndpointSlice controller takes a pod's
//! trigger time from its Ready condition's `lastTransitionTime`, which the API stores in
//! whole seconds, and it writes the annotation only when that time moved forward since
//! its last sync. So in each second only the first flip carries a trigger time, rounded
//! down to the second: a flip at x.4 s would be measured 400 ms late by every proxy. The
//! first flip of each second is therefore made [`OFFSET`] after the second starts; the
//! others (every `PERIOD`, as churn) reach the proxies without the annotation and count in
//! their work, not in the histograms. The end-to-end figures thus overstate by at most
//! `OFFSET` plus the status write, and there is one end-to-end observation per second.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use super::{
    super::bed::BenchBed, metrics::Histogram, objects::CHURN, plane::Plane, proxy::RunningProxy,
};

/// Time between readiness flips (8 per second: an even number, so each second ends Ready).
pub const PERIOD: Duration = Duration::from_millis(125);
/// How far into a second its first, annotated flip is made.
pub const OFFSET: Duration = Duration::from_millis(2);
/// After the last flip, time for the last change to be programmed and recorded (kube-proxy
/// syncs at most once a second by default).
const SETTLE: Duration = Duration::from_millis(2_500);

/// What the proxy's histograms recorded within one churn window.
pub struct Window {
    pub end_to_end: Option<Histogram>,
    pub own: Option<Histogram>,
    /// Readiness flips made, and of them those carrying a trigger time.
    pub flips: usize,
    pub annotated: usize,
}

/// Flips the churn pod for `seconds` whole seconds and returns the histograms' differences.
pub fn run(
    plane: &Plane,
    bed: &BenchBed,
    proxy: &mut RunningProxy,
    seconds: u32,
) -> Result<Window> {
    let ip = *super::objects::selector_pod_ips()
        .first()
        .context("no backends")?;
    let (e2e_before, own_before) = proxy.histograms(bed)?;
    let per_second = u32::try_from(Duration::from_secs(1).as_nanos() / PERIOD.as_nanos())
        .unwrap_or(1)
        .max(1);
    let first_second = next_second(SystemTime::now());
    let mut ready = true;
    let mut flips = 0;
    for second in 0..seconds {
        for j in 0..per_second {
            let at = first_second + Duration::from_secs(u64::from(second)) + OFFSET + PERIOD * j;
            sleep_until(at);
            ready = !ready;
            CHURN.set_ready(plane, 0, ip, ready, SystemTime::now())?;
            flips += 1;
        }
        proxy.check_running()?;
    }
    if !ready {
        CHURN.set_ready(plane, 0, ip, true, SystemTime::now())?;
    }
    std::thread::sleep(SETTLE);
    let (e2e_after, own_after) = proxy.histograms(bed)?;
    Ok(Window {
        end_to_end: e2e_after.map(|h| h.since(e2e_before.as_ref())),
        own: own_after.map(|h| h.since(own_before.as_ref())),
        flips,
        annotated: usize::try_from(seconds).unwrap_or(usize::MAX),
    })
}

/// The start of the second after `now`, leaving at least half a second to get ready.
fn next_second(now: SystemTime) -> SystemTime {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut next = Duration::from_secs(since.as_secs() + 1);
    if next.saturating_sub(since) < Duration::from_millis(500) {
        next += Duration::from_secs(1);
    }
    UNIX_EPOCH + next
}

fn sleep_until(at: SystemTime) {
    if let Ok(wait) = at.duration_since(SystemTime::now()) {
        std::thread::sleep(wait);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churn_starts_on_a_whole_second_with_time_to_spare() {
        let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
        assert_eq!(next_second(at(10_100)), at(11_000));
        assert_eq!(next_second(at(10_700)), at(12_000));
        assert_eq!(next_second(at(10_000)), at(11_000));
    }
}
