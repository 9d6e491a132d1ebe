//! Endpoints of a service port, read from its EndpointSlices (joined to their Service by the
//! `kubernetes.io/service-name` label, see `cluster`) the way kube-proxy's endpointslicecache
//! does: a service port takes the slice port with the same name and protocol (the DNAT port
//! is that slice port's number, never the Service's `targetPort`), and an endpoint
//! contributes its first address.

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::api::discovery::v1::{Endpoint as SliceEndpoint, EndpointSlice};

use super::{Endpoint, Protocol, addr::parse_ip_sloppy, object_name, service::PortSpec};
use crate::problem::{Problem, ProblemKind};

/// kube-proxy reads a nil `ready` as true.
fn is_ready(ep: &SliceEndpoint) -> bool {
    ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)
}

/// Ready IPv4 endpoints of `port` across `slices`, sorted and deduplicated.
pub(super) fn endpoints_for(
    slices: &[&EndpointSlice],
    port: &PortSpec,
    problems: &mut Vec<Problem>,
) -> Vec<Endpoint> {
    // Address → ready; an endpoint listed by several slices is ready if any slice says so.
    let mut found: BTreeMap<Endpoint, bool> = BTreeMap::new();
    for slice in slices {
        if slice.address_type != "IPv4" {
            continue; // IPv6 slices feed the IPv6 datapath; FQDN slices are not proxied.
        }
        let object = || object_name("EndpointSlice", &slice.metadata);
        let Some(number) = slice_port(slice, port) else {
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
            let Some(first) = ep.addresses.first() else {
                continue;
            };
            let Some(IpAddr::V4(addr)) = parse_ip_sloppy(first) else {
                problems.push(
                    Problem::new(
                        ProblemKind::InvalidEndpoint,
                        format!("invalid IPv4 endpoint address {first:?}; endpoint skipped"),
                    )
                    .object(object()),
                );
                continue;
            };
            *found.entry(Endpoint { addr, port: number }).or_default() |= is_ready(ep);
        }
    }
    found
        .into_iter()
        .filter_map(|(ep, ready)| ready.then_some(ep))
        .collect()
}

/// The number of the slice port matching `port` by name and protocol, if any.
fn slice_port(slice: &EndpointSlice, port: &PortSpec) -> Option<i32> {
    slice
        .ports
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find_map(|p| {
            let same_name = p.name.as_deref().unwrap_or("") == port.name;
            let same_proto =
                Protocol::parse(p.protocol.as_deref()).is_ok_and(|proto| proto == port.proto);
            (same_name && same_proto).then_some(p.port?)
        })
}
