//! The API objects of the real section: the same N selectorless ClusterIP Services with one
//! hand-written EndpointSlice each as the generated-rules section uses (VIPs moved past the
//! addresses the API server and the selector Services below take), created concurrently as a
//! deployment tool would; and two selector Services whose pods the bench marks Ready itself
//! (there is no kubelet), so the real EndpointSlice controller writes their slices, with
//! `endpoints.kubernetes.io/last-change-trigger-time`.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use k8s_openapi::chrono::{DateTime, SecondsFormat};
use serde_json::{Value, json};

use super::super::{
    bed::BenchBed,
    cluster::{self, BACKEND_PORT, CHANGED_PORT, Cluster, Family, SERVICE_PORT},
    modes::NODE_NAME,
};
use super::plane::Plane;

/// `vip(0)` (198.19.0.1) is the `kubernetes` Service's; the selector Services take the next
/// ones; the N bench Services start here.
pub const FIRST_BENCH_VIP: usize = 16;
/// Requests in flight while creating the objects: enough to keep the API server and etcd
/// busy on two cores without queueing in the API server's own limits (400).
const IN_FLIGHT: usize = 48;
/// The label that keeps the EndpointSlice controller's hands off the hand-written slices.
const MANAGED_BY: &str = "bench.kproxy.dev";
const SELECTOR_NAMESPACE: &str = "default";

/// The selector Services' pod addresses: the backends' IPv4 ones (the selector Services are
/// IPv4 whatever the bench Services' family).
pub fn selector_pod_ips() -> Vec<IpAddr> {
    BenchBed::backend_addresses(Family::Ipv4)
}

/// A selector Service with its pods, one per backend it names.
pub struct Selector {
    pub name: &'static str,
    pub vip: Ipv4Addr,
    pub target_port: u16,
}

/// One pod's readiness flipped again and again: the churn whose programming latency the
/// proxies' histograms measure. Its pods are on the three backends' BACKEND_PORT servers.
pub const CHURN: Selector = Selector {
    name: "bench-churn",
    vip: Ipv4Addr::new(198, 19, 0, 2),
    target_port: BACKEND_PORT,
};
/// A pod turning Ready on the CHANGED_PORT server, which no other endpoint uses: the first
/// connection it answers shows the change reached the datapath (the independent probe).
pub const PROBE: Selector = Selector {
    name: "bench-probe",
    vip: Ipv4Addr::new(198, 19, 0, 3),
    target_port: CHANGED_PORT,
};

impl Selector {
    pub fn frontend(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.vip.into(), SERVICE_PORT)
    }

    pub fn pod(&self, i: usize) -> String {
        format!("{}-{i}", self.name)
    }

    fn service(&self) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": self.name, "namespace": SELECTOR_NAMESPACE},
            "spec": {
                "clusterIP": self.vip.to_string(),
                "selector": {"app": self.name},
                "ports": [{
                    "name": "http", "port": SERVICE_PORT,
                    "targetPort": self.target_port, "protocol": "TCP",
                }],
            },
        })
    }

    /// Sets pod `i` Running at `ip`, Ready or not, as a kubelet reports it. The Ready
    /// condition's lastTransitionTime is the EndpointSlice controller's trigger time; the
    /// API keeps it in whole seconds, so it is `at` rounded down (see [`super::churn`]).
    pub fn set_ready(
        &self,
        plane: &Plane,
        i: usize,
        ip: IpAddr,
        ready: bool,
        at: SystemTime,
    ) -> Result<()> {
        plane
            .cp
            .set_pod_status(SELECTOR_NAMESPACE, &self.pod(i), pod_status(ip, ready, at))
    }
}

/// A pod's status with its Ready condition changed at `at` (whole seconds, as the API stores it).
pub fn pod_status(ip: IpAddr, ready: bool, at: SystemTime) -> Value {
    let ready = if ready { "True" } else { "False" };
    let since = rfc3339_seconds(at);
    json!({
        "phase": "Running",
        "podIP": ip.to_string(),
        "podIPs": [{"ip": ip.to_string()}],
        "conditions": [
            {"type": "Ready", "status": ready, "lastTransitionTime": since},
            {"type": "ContainersReady", "status": ready, "lastTransitionTime": since},
        ],
    })
}

/// `at` in RFC 3339, UTC, rounded down to the second.
pub fn rfc3339_seconds(at: SystemTime) -> String {
    let secs = at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Creates the bench Services and their slices, the selector Services and their pods
/// (churn pods Ready on every backend, the probe's pod not Ready); returns how long the
/// bench Services and slices took to create.
pub fn create(plane: &Plane, cluster: &Cluster) -> Result<Duration> {
    let backends = selector_pod_ips();
    plane.cp.apply(&json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": cluster::NAMESPACE},
    }))?;
    let mut objects = Vec::with_capacity(cluster.len() * 2);
    for (service, slice) in cluster.services.iter().zip(&cluster.slices) {
        objects.push(cluster::with_type(service, "v1", "Service")?);
        let mut slice = cluster::with_type(slice, "discovery.k8s.io/v1", "EndpointSlice")?;
        slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] = MANAGED_BY.into();
        objects.push(slice);
    }
    let started = Instant::now();
    apply_concurrently(plane, &objects)?;
    let took = started.elapsed();

    let now = SystemTime::now();
    for selector in [&CHURN, &PROBE] {
        plane.cp.apply(&selector.service())?;
    }
    for (i, ip) in backends.iter().enumerate() {
        let pod = kproxy_testbed::kubernetes::objects::pod(
            SELECTOR_NAMESPACE,
            &CHURN.pod(i),
            &json!({"app": CHURN.name}),
            NODE_NAME,
        );
        plane.cp.apply(&pod)?;
        CHURN.set_ready(plane, i, *ip, true, now)?;
    }
    let last = *backends.last().context("no backends")?;
    plane.cp.apply(&kproxy_testbed::kubernetes::objects::pod(
        SELECTOR_NAMESPACE,
        &PROBE.pod(0),
        &json!({"app": PROBE.name}),
        NODE_NAME,
    ))?;
    PROBE.set_ready(plane, 0, last, false, now)?;
    Ok(took)
}

/// Applies `objects` with [`IN_FLIGHT`] requests at a time: that many threads share the
/// control plane's client, each taking the next object until none is left.
fn apply_concurrently(plane: &Plane, objects: &[Value]) -> Result<()> {
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..IN_FLIGHT.min(objects.len()))
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    while let Some(object) = objects.get(next.fetch_add(1, Ordering::Relaxed)) {
                        plane.cp.apply(object)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for worker in workers {
            worker
                .join()
                .map_err(|_| anyhow::anyhow!("an object-creating thread panicked"))??;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_times_are_whole_seconds_in_utc() {
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_999);
        assert_eq!(rfc3339_seconds(at), "2023-11-14T22:13:20Z");
        let status = pod_status(Ipv4Addr::new(198, 18, 2, 2).into(), false, at);
        assert_eq!(status["conditions"][0]["status"], "False");
        assert_eq!(
            status["conditions"][0]["lastTransitionTime"],
            "2023-11-14T22:13:20Z"
        );
    }

    #[test]
    fn bench_vips_start_past_the_selector_services() {
        let backends = [Family::Ipv4.backend(0)];
        let cluster = Cluster::with_first_vip(2, &backends, Family::Ipv4, FIRST_BENCH_VIP);
        let IpAddr::V4(first) = cluster.frontend(0).ip() else {
            panic!("an IPv4 cluster's frontend is IPv6");
        };
        assert!(u32::from(first) > u32::from(PROBE.vip));
        assert_eq!(first, Ipv4Addr::new(198, 19, 0, 17));
    }
}
