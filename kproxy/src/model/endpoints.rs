//! Endpoints of a service port, read from its EndpointSlices (joined to their Service by the
//! `kubernetes.io/service-name` label, see `cluster`) the way kube-proxy's endpointslicecache
//! does: a service port takes the slice port with the same name and protocol (the DNAT port
//! is that slice port's number, never the Service's `targetPort`), and an endpoint
//! contributes its first address.

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::api::discovery::v1::{Endpoint as SliceEndpoint, EndpointSlice};

use super::{
    Endpoint, Protocol, addr::parse_ip_sloppy, object_name, service::PortSpec,
    topology::EndpointInfo,
};
use crate::problem::{Problem, ProblemKind};

/// The address family of a frontend, which selects the slices that feed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: IpAddr) -> Self {
        if addr.is_ipv4() { Self::V4 } else { Self::V6 }
    }

    fn address_type(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }
}

/// What one slice says about one endpoint.
fn endpoint_info(ep: &SliceEndpoint, endpoint: Endpoint, node: &str) -> EndpointInfo {
    let conditions = ep.conditions.as_ref();
    let hints = ep.hints.as_ref();
    EndpointInfo {
        endpoint,
        ready: conditions.and_then(|c| c.ready).unwrap_or(true),
        serving: conditions.and_then(|c| c.serving).unwrap_or(true),
        terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
        local: !node.is_empty() && ep.node_name.as_deref() == Some(node),
        zone_hints: hints
            .and_then(|h| h.for_zones.as_ref())
            .into_iter()
            .flatten()
            .map(|z| z.name.clone())
            .collect(),
        node_hints: hints
            .and_then(|h| h.for_nodes.as_ref())
            .into_iter()
            .flatten()
            .map(|n| n.name.clone())
            .collect(),
    }
}

/// Between two slices listing the same endpoint address, which copy counts. kube-proxy's
/// endpointslicecache.go `addEndpoints` lets a non-terminating copy replace whatever is there
/// and never lets a terminating one replace another: when the pod network reuses the IP of a
/// terminating pod, the new pod wins even while it is not ready yet (so traffic does not fall
/// back to the old pod's "serving" state through an IP that now belongs to someone else).
/// Between copies upstream leaves to slice order (Go map order, so undefined), kproxy picks
/// deterministically: the ready one, then the serving one, then the local one.
fn better(new: &EndpointInfo, old: &EndpointInfo) -> bool {
    let rank = |e: &EndpointInfo| (!e.terminating, e.ready, e.serving, e.local);
    rank(new) > rank(old)
}

/// The endpoints of `port` of `family` across `slices`, deduplicated, sorted, with their
/// conditions, node and hints (`node` is this node's name).
pub(super) fn endpoints_for(
    slices: &[&EndpointSlice],
    port: &PortSpec,
    family: Family,
    node: &str,
    problems: &mut Vec<Problem>,
) -> Vec<EndpointInfo> {
    let mut found: BTreeMap<Endpoint, EndpointInfo> = BTreeMap::new();
    for slice in slices {
        if slice.address_type != family.address_type() {
            continue; // the other family's slices feed its own frontends; FQDN ones none
        }
        let object = || object_name("EndpointSlice", &slice.metadata);
        let Some(number) = slice_port(slice, port, problems) else {
            continue;
        };
        let Some(number) = u16::try_from(number).ok().filter(|&n| n != 0) else {
            problems.push(
                Problem::new(
                    ProblemKind::InvalidEndpoint,
                    format!(
                        "port {:?}: invalid port number {number}; port skipped",
                        port.name
                    ),
                )
                .object(object()),
            );
            continue;
        };
        for ep in &slice.endpoints {
            // kube-proxy uses the first address of an endpoint only.
            let Some(first) = ep.addresses.first() else {
                continue;
            };
            let Some(addr) = parse_ip_sloppy(first).filter(|a| Family::of(*a) == family) else {
                problems.push(
                    Problem::new(
                        ProblemKind::InvalidEndpoint,
                        format!(
                            "invalid {} endpoint address {first:?}; endpoint skipped",
                            family.address_type()
                        ),
                    )
                    .object(object()),
                );
                continue;
            };
            let info = endpoint_info(ep, Endpoint { addr, port: number }, node);
            match found.get(&info.endpoint) {
                Some(old) if !better(&info, old) => {}
                _ => {
                    found.insert(info.endpoint, info);
                }
            }
        }
    }
    found.into_values().collect()
}

/// The number of the slice port matching `port` by name and protocol, if any. A slice port
/// without a name is ignored, as kube-proxy does (an unnamed port is named "").
fn slice_port(slice: &EndpointSlice, port: &PortSpec, problems: &mut Vec<Problem>) -> Option<i32> {
    slice.ports.as_deref().unwrap_or_default().iter().find_map(|p| {
        let Some(name) = p.name.as_deref() else {
            problems.push(
                Problem::new(
                    ProblemKind::InvalidEndpoint,
                    "a port without a name is ignored (kube-proxy does too); name an unnamed port \"\"",
                )
                .object(object_name("EndpointSlice", &slice.metadata)),
            );
            return None;
        };
        let same_proto = Protocol::parse(p.protocol.as_deref()).is_ok_and(|proto| proto == port.proto);
        (name == port.name && same_proto).then_some(p.port?)
    })
}
