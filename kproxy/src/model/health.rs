//! What kube-proxy's service health server answers on each health-check NodePort
//! (pkg/proxy/healthcheck/service_health.go): externalTrafficPolicy Local LoadBalancer
//! Services tell their load balancer whether this node has endpoints for them.
//!
//! The count is `EndpointsMap.LocalReadyEndpoints` (pkg/proxy/endpointschangetracker.go):
//! the distinct IPs of this node's *ready* endpoints over every port the Service's
//! EndpointSlices list. Serving-but-terminating endpoints still take traffic (see
//! `topology`), but are not counted, so the load balancer stops sending new connections to
//! a node whose endpoints are all terminating.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use super::{
    ObjectKey, Protocol,
    endpoints::{self, Family, SliceInfo},
    service::PortSpec,
};

/// What one health-check NodePort reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceHealth {
    pub namespace: String,
    pub name: String,
    /// This node's ready endpoints (distinct IPs): the server answers 200 when there are
    /// some, 503 when there are none.
    pub local_endpoints: usize,
}

/// The distinct IPs of `node`'s ready endpoints of `family` in `slices`, over every
/// (port name, protocol) the slices list; duplicates across slices are resolved as for
/// frontends (`endpoints::endpoints_for`).
pub(super) fn local_ready_endpoints(slices: &[&SliceInfo], family: Family, node: &str) -> usize {
    // kube-proxy counts SCTP ports too; kproxy reads no SCTP endpoints, so an endpoint
    // listed only for SCTP ports is not counted.
    let ports: BTreeSet<(String, Protocol)> = endpoints::listed_ports(slices, family)
        .into_iter()
        .collect();
    let mut ips: BTreeSet<IpAddr> = BTreeSet::new();
    for (name, proto) in ports {
        let port = PortSpec {
            name: name.into(),
            port: 0,
            proto,
            node_port: None,
        };
        ips.extend(
            endpoints::endpoints_for(slices, &port, family, node)
                .into_iter()
                .filter(|e| e.local && e.ready)
                .map(|e| e.endpoint.addr),
        );
    }
    ips.len()
}

/// A Service that asks for a health-check NodePort another Service has.
pub(super) struct HealthConflict {
    pub namespace: String,
    pub name: String,
    pub port: u16,
    /// `namespace/name` of the Service that has the port.
    pub holder: String,
}

/// Health checks by port: when two Services ask for one port (the API server allocates
/// each once; manifests can repeat one), the first by namespace/name gets it, as the others'
/// listeners would fail to bind. Returns the winners and the losers.
pub(super) fn by_port<'a>(
    claims: impl Iterator<Item = (&'a ObjectKey, u16, usize)>,
) -> (BTreeMap<u16, ServiceHealth>, Vec<HealthConflict>) {
    let mut sorted: Vec<_> = claims.collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut ports: BTreeMap<u16, ServiceHealth> = BTreeMap::new();
    let mut losers = Vec::new();
    for (key, port, local_endpoints) in sorted {
        let (namespace, name) = key.parts();
        if let Some(holder) = ports.get(&port) {
            losers.push(HealthConflict {
                namespace: namespace.to_string(),
                name: name.to_string(),
                port,
                holder: format!("{}/{}", holder.namespace, holder.name),
            });
            continue;
        }
        ports.insert(
            port,
            ServiceHealth {
                namespace: namespace.to_string(),
                name: name.to_string(),
                local_endpoints,
            },
        );
    }
    (ports, losers)
}
