//! The API objects of the real section: the same N selectorless ClusterIP Services with one
//! hand-written EndpointSlice each as the generated-rules section uses (VIPs moved past the
//! addresses the API server and the selector Services below take), stored straight into etcd
//! with the IPAddress objects that record their ClusterIPs (see [`create`] for why); and two
//! selector Services whose pods the bench marks Ready itself
//! (there is no kubelet), so the real EndpointSlice controller writes their slices, with
//! `endpoints.kubernetes.io/last-change-trigger-time`.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use k8s_openapi::{
    api::{core::v1::Service, discovery::v1::EndpointSlice},
    chrono::{DateTime, SecondsFormat},
};
use kproxy_testbed::kubernetes::storage::Stored;
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

/// Stores the bench Services, their IPAddress records and their slices straight into etcd
/// (`kproxy_testbed::kubernetes::storage`: creating them through the API costs the API
/// server O(N²)) and waits until the API server serves every one; then creates the selector
/// Services and their pods through the API (churn pods Ready on every backend, the probe's
/// pod not Ready). Returns how long the bench objects took to be stored and served.
pub fn create(plane: &Plane, cluster: &Cluster) -> Result<Duration> {
    let backends = selector_pod_ips();
    plane.cp.apply(&json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": cluster::NAMESPACE},
    }))?;
    let stored = stored_objects(cluster, SystemTime::now())?;
    let started = Instant::now();
    plane.store(&stored, STORED_PER_SERVICE)?;
    wait_until_served(plane, cluster.len())?;
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
    wait_for_churn_endpoints(plane, backends.len())?;
    Ok(took)
}

/// Waits until the EndpointSlice controller has written the churn Service's slice with its
/// `n` pods, so every proxy starts with it there: with tens of thousands of Services just
/// stored, the controller's first pass over them holds it back for tens of seconds, which a
/// proxy's "every Service answers" would otherwise count as its own.
fn wait_for_churn_endpoints(plane: &Plane, n: usize) -> Result<()> {
    let started = Instant::now();
    loop {
        let endpoints = plane.cp.endpoint_count(SELECTOR_NAMESPACE, CHURN.name)?;
        if endpoints >= n {
            return Ok(());
        }
        if started.elapsed() > SERVED_TIMEOUT {
            bail!(
                "the EndpointSlice controller wrote {endpoints} of the churn Service's {n} \
                 endpoints in {SERVED_TIMEOUT:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Objects stored per bench Service: the Service, its IPAddress record, its slice.
pub const STORED_PER_SERVICE: usize = 3;

/// The bench Services as the API server's create would have stored them (with the defaults
/// it fills in), each with the IPAddress object recording its ClusterIP and its slice,
/// created at `at`.
fn stored_objects(cluster: &Cluster, at: SystemTime) -> Result<Vec<Stored>> {
    let created = rfc3339_seconds(at);
    let recorded = rfc3339_seconds(at + IP_ADDRESS_GRACE);
    // Unique within the cluster, as uids must be; the kind in the first group.
    let uid = |kind: u32, i: usize| format!("{kind:08x}-0000-4000-8000-{i:012x}");
    let mut stored = Vec::with_capacity(cluster.len() * STORED_PER_SERVICE);
    for (i, (service, slice)) in cluster.services.iter().zip(&cluster.slices).enumerate() {
        let mut service = cluster::with_type(service, "v1", "Service")?;
        service["spec"]["sessionAffinity"] = "None".into();
        service["spec"]["internalTrafficPolicy"] = "Cluster".into();
        service["status"] = json!({"loadBalancer": {}});
        stored.push(Stored::ip_address(&service, &uid(1, i), &recorded)?);
        stored.push(Stored::new(service, &uid(2, i), &created)?);
        let mut slice = cluster::with_type(slice, "discovery.k8s.io/v1", "EndpointSlice")?;
        slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] = MANAGED_BY.into();
        stored.push(Stored::new(slice, &uid(3, i), &created)?);
    }
    Ok(stored)
}

/// How far past the bench objects' creation their IPAddress records are stamped. The API
/// server's repair loop deletes a record whose Service its own informer has not seen once
/// the record is 60 s old, and the Service's next pass writes it again. With 300,000 objects
/// stored over about a minute and those informers catching up after, records stamped with
/// the storing's start were deleted as leaked by the thousand and written again, at
/// 10/s while the proxies started and for minutes after (12,714 repair errors in the API
/// server's log of one 100,000-Service run, at 9a2e724): load on the API server the
/// proxies' lists competed with. Stamped later, a record is past its grace only once every
/// Service has long been seen.
const IP_ADDRESS_GRACE: Duration = Duration::from_mins(10);

/// Waits until the API server lists all `n` bench Services and slices (its watch of etcd
/// brings them in) and its watch cache of each kind has caught up with them, so a proxy's
/// first list is not held up by the cache still decoding what was stored.
fn wait_until_served(plane: &Plane, n: usize) -> Result<()> {
    let started = Instant::now();
    let n = n as u64;
    let wait = |what: &dyn Fn() -> Result<bool>, describe: &dyn Fn() -> String| loop {
        if what()? {
            return Ok(());
        }
        if started.elapsed() > SERVED_TIMEOUT {
            bail!("{} after {SERVED_TIMEOUT:?}", describe());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let (services, slices) = (
        || plane.cp.count::<Service>(cluster::NAMESPACE),
        || plane.cp.count::<EndpointSlice>(cluster::NAMESPACE),
    );
    wait(&|| Ok(services()?.0 == n && slices()?.0 == n), &|| {
        format!("the API server does not list the {n} Services and slices stored")
    })?;
    let (_, version) = slices()?;
    wait(
        &|| {
            Ok(plane.cp.cached::<Service>(cluster::NAMESPACE, &version)
                && plane
                    .cp
                    .cached::<EndpointSlice>(cluster::NAMESPACE, &version))
        },
        &|| format!("the API server's watch cache has not reached resourceVersion {version}"),
    )
}

/// How long the API server may take to serve what was stored.
const SERVED_TIMEOUT: Duration = Duration::from_mins(5);

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
