//! kube-proxy's Service semantics as pure functions: Services and EndpointSlices in, the
//! frontends the datapath must serve out. Nothing here touches the kernel, so every rule is
//! covered by table-driven unit tests.

pub mod addr;
pub mod cluster;
pub mod dense;
mod endpoints;
mod health;
mod intern;
pub mod kept;
pub mod lb_policy;
pub mod local_traffic;
pub mod maglev;
mod node;
mod object_key;
mod service;
pub mod topology;

pub use cluster::{
    Change, ClusterState, EndpointChoice, ExplainedEndpoint, KeyMap, KeySet, ObjectKey, object_key,
};
pub use health::ServiceHealth;
pub use kept::{KeptService, KeptSlice};
pub use lb_policy::{LbAlgorithm, LbPolicy, MaglevScope};
pub use local_traffic::LocalDetection;
pub use node::{LABEL_ZONE, NodeInfo, TAINT_TO_BE_DELETED};

use std::{collections::BTreeMap, fmt, net::IpAddr, sync::Arc};

use ipnet::IpNet;

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use crate::problem::Problem;

/// L4 protocols the datapath balances.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
        }
    }

    pub const fn from_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(Self::Tcp),
            17 => Some(Self::Udp),
            _ => None,
        }
    }

    /// A Kubernetes `protocol` field (absent means TCP).
    pub fn parse(field: Option<&str>) -> Result<Self, String> {
        match field.unwrap_or("TCP") {
            "TCP" => Ok(Self::Tcp),
            "UDP" => Ok(Self::Udp),
            "SCTP" => Err("protocol SCTP is not supported by kproxy yet".into()),
            other => Err(format!("unknown protocol {other:?}")),
        }
    }
}

impl Protocol {
    /// The Kubernetes spelling: `TCP`, `UDP`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which clients a frontend entry serves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Every client.
    #[default]
    All,
    /// Clients on this node (its pods and the node itself) of an externalTrafficPolicy Local
    /// frontend, whose `All` entry has node-local endpoints only: kube-proxy sends their
    /// traffic to the cluster-wide endpoints (its "short-circuit" of the EXT chain).
    Internal,
}

/// A service port as clients address it: VIP, port, protocol, and which clients the entry
/// serves. A NodePort's address is the unspecified address of its family (`0.0.0.0`, `::`):
/// it answers on the node's NodePort addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Protocol,
    pub scope: Scope,
}

impl FrontendKey {
    /// The entry every client uses.
    pub const fn new(addr: IpAddr, port: u16, proto: Protocol) -> Self {
        Self {
            addr,
            port,
            proto,
            scope: Scope::All,
        }
    }

    /// NodePort `port` of `family`'s addresses.
    pub fn node_port(v6: bool, port: u16, proto: Protocol) -> Self {
        let addr = if v6 {
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
        };
        Self::new(addr, port, proto)
    }

    /// Whether this is a NodePort (no VIP of its own).
    pub fn is_node_port(&self) -> bool {
        self.addr.is_unspecified()
    }

    /// The same frontend for `scope`.
    #[must_use]
    pub const fn with_scope(self, scope: Scope) -> Self {
        Self { scope, ..self }
    }
}

impl fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            IpAddr::V4(a) if a.is_unspecified() => write!(f, "*:{}/{}", self.port, self.proto),
            IpAddr::V6(a) if a.is_unspecified() => {
                write!(f, "[*]:{}/{}", self.port, self.proto)
            }
            IpAddr::V4(a) => write!(f, "{a}:{}/{}", self.port, self.proto),
            IpAddr::V6(a) => write!(f, "[{a}]:{}/{}", self.port, self.proto),
        }?;
        if self.scope == Scope::Internal {
            f.write_str(" (internal)")?;
        }
        Ok(())
    }
}

/// How clients reach a frontend (kube-proxy's ClusterIP, NodePort, external IP and
/// load-balancer IP rules).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrontendKind {
    #[default]
    ClusterIp,
    NodePort,
    ExternalIp,
    LoadBalancer,
}

impl FrontendKind {
    /// NodePort, external IP and load-balancer frontends: external traffic, subject to
    /// externalTrafficPolicy and masqueraded under the Cluster policy.
    pub const fn is_external(self) -> bool {
        !matches!(self, Self::ClusterIp)
    }
}

impl fmt::Display for FrontendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ClusterIp => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::ExternalIp => "ExternalIP",
            Self::LoadBalancer => "LoadBalancer",
        })
    }
}

/// A backend: endpoint address and the port traffic is translated to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        std::net::SocketAddr::new(self.addr, self.port).fmt(f)
    }
}

/// Names a service port the way kube-proxy does (`namespace/name:port-name`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePortName {
    /// The Service: its key, shared with the model's indexes.
    pub key: ObjectKey,
    pub port: Arc<str>,
}

impl ServicePortName {
    pub fn new(namespace: &str, name: &str, port: &str) -> Self {
        Self {
            key: ObjectKey::new(namespace, name),
            port: port.into(),
        }
    }

    pub fn namespace(&self) -> &str {
        self.key.namespace()
    }

    pub fn name(&self) -> &str {
        self.key.name()
    }
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.key)?;
        if !self.port.is_empty() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

/// What new connections get when a frontend has no endpoints to use (kube-proxy: REJECT when
/// the service has no endpoints anywhere, DROP when it has some but none usable here, e.g.
/// internalTrafficPolicy Local with endpoints on other nodes only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WhenEmpty {
    #[default]
    Reject,
    Drop,
}

/// What the datapath must do for one frontend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    pub service: ServicePortName,
    pub kind: FrontendKind,
    /// ClientIP session affinity timeout, when affinity is on.
    pub affinity_timeout_s: Option<u32>,
    /// Backends for new connections, sorted and unique.
    pub endpoints: Vec<Endpoint>,
    /// The other endpoints the service port's EndpointSlices list, in any condition and on
    /// any node (not ready, terminating, another node's under a Local policy), sorted and
    /// unique, none of them in `endpoints`. Established TCP flows keep an endpoint while it
    /// is in either list, as kube-proxy leaves their conntrack entries alone; once it is in
    /// neither, its flows are reset. Usually empty, and then it allocates nothing: a copy
    /// of `endpoints` here held 6 MB at 100,000 Services (heaptrack: 12 MB for both).
    pub standby: Vec<Endpoint>,
    /// What happens to new connections while `endpoints` is empty.
    pub when_empty: WhenEmpty,
    /// The `Scope::All` entry of an externalTrafficPolicy Local frontend: `endpoints` are
    /// this node's, external clients keep their address, and clients on this node use the
    /// `Scope::Internal` entry of the same frontend.
    pub external_local: bool,
    /// loadBalancerSourceRanges of a load-balancer frontend (of its address family), with
    /// the load-balancer IPs themselves when a range holds the node's IP (kube-proxy's
    /// `allowFromNode`): new connections from elsewhere are dropped. Empty: no restriction.
    pub source_ranges: Vec<IpNet>,
    /// New flows pick their backend by Maglev consistent hashing of the flow rather than in
    /// turn (see `maglev`): the same flow gets the same backend on every node.
    pub maglev: bool,
}

/// Everything the datapath must serve.
pub type Desired = BTreeMap<FrontendKey, Frontend>;

/// Labels whose presence tells kube-proxy to leave an object alone: its informers for
/// Services and EndpointSlices alike select
/// `!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless`.
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// The label that ties an EndpointSlice to its Service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

/// `Kind namespace/name` of an object, for problem reports.
pub fn object_name(
    kind: &str,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> String {
    format!(
        "{kind} {}/{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or("<unnamed>")
    )
}

/// Computes the frontends for `services` and `slices` from scratch, with the problems found
/// on the way, on a node without name or labels. Objects with problems are skipped (the
/// whole Service, one port, or one endpoint, whichever the problem concerns); everything
/// else is served.
pub fn desired_state(services: &[Service], slices: &[EndpointSlice]) -> (Desired, Vec<Problem>) {
    desired_state_on(&NodeInfo::default(), services, slices)
}

/// `desired_state` on `node`.
pub fn desired_state_on(
    node: &NodeInfo,
    services: &[Service],
    slices: &[EndpointSlice],
) -> (Desired, Vec<Problem>) {
    let mut state = ClusterState::default();
    state.set_node(node.clone());
    let changes = services
        .iter()
        .map(Change::service)
        .chain(slices.iter().map(Change::slice));
    state.apply(changes);
    (state.desired().clone(), state.problems())
}

#[cfg(test)]
mod bad_input;

#[cfg(test)]
pub mod fixtures;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod upstream_tests;
