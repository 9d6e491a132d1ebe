//! Sustained endpoint churn: `rate` endpoint changes per second, each to another bench
//! Service's EndpointSlice, written straight into etcd (the API server's watch of etcd
//! serves each one to the proxy as the update of that slice) and each stamped with its own
//! `endpoints.kubernetes.io/last-change-trigger-time` at the moment it is written. The
//! proxy's network programming latency histogram then holds one observation per change,
//! from that stamp to the change being served.
//!
//! Why not through the EndpointSlice controller: it writes at most one trigger time per
//! Service and second (see `churn`), and its own pace, not the proxy's, would set the rate.
//! Why etcd rather than the API: on this two-core bed the API server's update path (and the
//! bench writing through it) would take the CPU the proxy needs; writing to etcd leaves the
//! API server only what it does for every proxy anyway, serving the watch.
//!
//! The changes go round the Services in passes (two over half as many Services as changes,
//! more over a smaller cluster): odd passes make the first endpoint of each
//! Service not ready, even ones ready again, and the passes are even in number, so the
//! cluster ends as it began.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, ensure};
use k8s_openapi::chrono::{DateTime, SecondsFormat, Utc};
use kproxy_testbed::kubernetes::storage::Stored;
use serde_json::Value;

use super::{
    super::{bed::BenchBed, cluster},
    metrics::Histogram,
    plane::Plane,
    proxy::RunningProxy,
};

/// Changes are written in a transaction every `TICK`: `rate / 100` per transaction.
const TICK: Duration = Duration::from_millis(10);
/// After the last change, time for it to be served and recorded.
const SETTLE: Duration = Duration::from_millis(2_500);

/// What the proxy's histograms recorded over one sustained window.
pub struct Sustained {
    /// Changes written, and the rate they were written at (changes over the time it took).
    pub changes: usize,
    pub per_second: f64,
    pub end_to_end: Option<Histogram>,
    pub own: Option<Histogram>,
}

/// Makes `rate` endpoint changes per second for `seconds` and returns what the proxy's
/// histograms recorded meanwhile.
pub fn run(
    plane: &Plane,
    bed: &BenchBed,
    proxy: &mut RunningProxy,
    rate: u32,
    seconds: u32,
) -> Result<Sustained> {
    let changes = usize::try_from(rate * seconds)?;
    let prefix = format!("/registry/endpointslices/{}/", cluster::NAMESPACE);
    let mut slices = plane.stored(&prefix, changes.div_ceil(2))?;
    ensure!(
        !slices.is_empty(),
        "no bench EndpointSlices stored under {prefix}"
    );
    let services = slices.len();
    let total = services * changes.div_ceil(services).next_multiple_of(2);
    // One transaction cannot put a key twice: at most one change per Service in a tick.
    let per_tick = usize::try_from(rate.div_ceil(100))?.clamp(1, services);
    let (e2e_before, own_before) = proxy.histograms(bed)?;
    let started = Instant::now();
    let mut made = 0;
    let mut batch: Vec<usize> = Vec::with_capacity(per_tick);
    while made < total {
        let tick = u32::try_from(made / per_tick)?;
        if let Some(wait) = (started + TICK * tick).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let stamp = rfc3339_nanos(SystemTime::now());
        batch.clear();
        for n in made..(made + per_tick).min(total) {
            let i = n % services;
            let ready = (n / services) % 2 == 1;
            set_first_endpoint(slices[i].object_mut(), ready, &stamp)?;
            batch.push(i);
        }
        let writes: Vec<&Stored> = batch.iter().map(|&i| &slices[i]).collect();
        plane.overwrite(&writes)?;
        made += batch.len();
        if made % (per_tick * 100) == 0 {
            proxy.check_running()?;
        }
    }
    let took = started.elapsed();
    std::thread::sleep(SETTLE);
    let (e2e_after, own_after) = proxy.histograms(bed)?;
    Ok(Sustained {
        changes: made,
        per_second: f64::from(u32::try_from(made)?) / took.as_secs_f64(),
        end_to_end: e2e_after.map(|h| h.since(e2e_before.as_ref())),
        own: own_after.map(|h| h.since(own_before.as_ref())),
    })
}

/// Sets the first endpoint of a stored slice ready (and serving) or not, stamped `stamp`.
fn set_first_endpoint(slice: &mut Value, ready: bool, stamp: &str) -> Result<()> {
    let conditions = slice["endpoints"]
        .get_mut(0)
        .context("a bench slice without endpoints")?
        .as_object_mut()
        .context("an endpoint that is no object")?
        .entry("conditions")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    conditions["ready"] = ready.into();
    conditions["serving"] = ready.into();
    slice["metadata"]["annotations"][TRIGGER_TIME] = stamp.into();
    Ok(())
}

/// The annotation network programming latency is measured from (as the EndpointSlice
/// controller writes it).
const TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// `at` in RFC 3339 with nanoseconds, in UTC.
fn rfc3339_nanos(at: SystemTime) -> String {
    DateTime::<Utc>::from(at).to_rfc3339_opts(SecondsFormat::Nanos, true)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_change_flips_the_first_endpoint_and_stamps_the_slice() {
        let mut slice = json!({
            "metadata": {"name": "s", "labels": {"a": "b"}},
            "endpoints": [{"addresses": ["198.18.2.2"], "conditions": {"ready": true}},
                          {"addresses": ["198.18.3.2"]}],
        });
        set_first_endpoint(&mut slice, false, "2026-12-05T10:00:00.123456789Z").unwrap();
        assert_eq!(
            slice["endpoints"][0]["conditions"],
            json!({"ready": false, "serving": false})
        );
        assert_eq!(slice["endpoints"][1], json!({"addresses": ["198.18.3.2"]}));
        assert_eq!(
            slice["metadata"]["annotations"][TRIGGER_TIME],
            "2026-12-05T10:00:00.123456789Z"
        );
        assert_eq!(slice["metadata"]["labels"]["a"], "b");
        let at = std::time::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        assert_eq!(rfc3339_nanos(at), "2023-11-14T22:13:20.123456789Z");
    }
}
