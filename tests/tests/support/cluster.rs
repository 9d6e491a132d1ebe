//! The reference bed with a real control plane in its node namespace (etcd, kube-apiserver,
//! kube-controller-manager of the pinned release; see kproxy_testbed::kubernetes), kproxy's
//! RBAC from `deploy/kproxy.yaml` applied, the bed's Node registered, and kproxy started with a
//! token of its own service account, as the DaemonSet runs it.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    time::Duration,
};

use kproxy_testbed::{
    TopologyOptions,
    kubernetes::{ControlPlane, kproxy_access, objects::running_status},
};
use serde_json::{Value, json};

use super::agent::{Agent, Bed, TCP_PORT, wait_until};

pub use kproxy_testbed::kubernetes::kproxy_access::node;
/// The bed's only node; pods are bound to it.
pub const NODE: &str = "node";
pub const ZONE: &str = "zone-a";

pub struct ClusterBed {
    pub bed: Bed,
    pub plane: ControlPlane,
    /// kproxy's kubeconfig: its service account's token, nothing more.
    pub kubeconfig: PathBuf,
}

impl ClusterBed {
    /// The bed with a ready control plane, kproxy's RBAC and the Node; kproxy not started.
    pub fn new(opts: TopologyOptions) -> Self {
        let bed = Bed::new(opts);
        let plane = ControlPlane::start(
            &bed.topo.node,
            &bed.dir.path().join("kubernetes"),
            bed.topo.client_gateway(),
        )
        .unwrap_or_else(|e| panic!("starting the control plane: {e:#}"));
        let kubeconfig = plane
            .install_kproxy(
                &node(NODE, ZONE, &json!({})),
                &bed.dir.path().join("kproxy.kubeconfig"),
            )
            .unwrap_or_else(|e| panic!("installing kproxy's access: {e:#}"));
        Self {
            bed,
            plane,
            kubeconfig,
        }
    }

    /// Starts kproxy with its service account's token and waits until it is ready.
    pub fn start_agent(&self, extra: &[&str]) -> Agent {
        let mut agent = Agent::spawn_api(&self.bed, &self.kubeconfig, extra);
        agent.wait_ready();
        agent
    }

    /// Creates pod `name` with `labels` on the node, Running and Ready at `ip`.
    pub fn ready_pod(&self, name: &str, labels: &Value, ip: Ipv4Addr) {
        self.plane
            .ready_pod("default", name, labels, NODE, IpAddr::V4(ip))
            .unwrap_or_else(|e| panic!("pod {name}: {e:#}"));
    }

    /// Applies `object`, panicking with the API server's reason if it refuses.
    pub fn apply(&self, object: &Value) {
        self.plane.apply(object).unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// The ClusterIP the API server allocated to Service `default/name`.
    pub fn cluster_ip(&self, name: &str) -> Ipv4Addr {
        wait_until(
            &format!("a ClusterIP for {name}"),
            Duration::from_secs(5),
            || {
                let svc = self
                    .plane
                    .get("v1", "Service", Some("default"), name)
                    .ok()??;
                svc["spec"]["clusterIP"].as_str()?.parse().ok()
            },
        )
    }

    /// The EndpointSlices of namespace `default` whose labels match `selector`.
    pub fn slices(&self, selector: &str) -> Vec<Value> {
        self.plane
            .list("discovery.k8s.io/v1", "EndpointSlice", "default", selector)
            .unwrap_or_else(|e| panic!("listing slices {selector}: {e:#}"))
    }

    /// Deletes pod `name`: `force` as a kubelet does once its containers stopped, otherwise
    /// the pod stays terminating for its grace period.
    pub fn delete_pod(&self, name: &str, force: bool) {
        self.plane
            .delete("v1", "Pod", Some("default"), name, force.then_some(0))
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Sets pod `name` Running at `ip`, Ready or not (the kubelet's readiness probe).
    pub fn set_ready(&self, name: &str, ip: Ipv4Addr, ready: bool) {
        self.plane
            .set_pod_status("default", name, running_status(IpAddr::V4(ip), ready))
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// One sample of kproxy's `/metrics` (`name` with its labels, as exposed), if present.
    pub fn metric(&self, name: &str) -> Option<f64> {
        super::http::sample(&self.metrics(), name)
    }

    /// kproxy's `/metrics`, as text.
    pub fn metrics(&self) -> String {
        let addr = "127.0.0.1:10249".parse().expect("address");
        let (_, metrics) = super::http::get(&self.topo.node, addr, "/metrics").expect("/metrics");
        metrics
    }

    /// The backends' who-am-I servers as a frontend's backends.
    pub fn at(addrs: &[Ipv4Addr]) -> Vec<SocketAddrV4> {
        addrs
            .iter()
            .map(|a| SocketAddrV4::new(*a, TCP_PORT))
            .collect()
    }
}

impl std::ops::Deref for ClusterBed {
    type Target = Bed;

    fn deref(&self) -> &Bed {
        &self.bed
    }
}

/// A selector Service `name` (ClusterIP allocated by the API server) on port 80 to the
/// who-am-I servers' port; `spec` is merged in.
pub fn service(name: &str, selector: &Value, spec: &Value) -> Value {
    kproxy_access::service(name, selector, TCP_PORT, spec)
}
