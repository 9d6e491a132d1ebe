//! Endpoints of a service port, read from its EndpointSlices (joined to their Service by the
//! `kubernetes.io/service-name` label, see `cluster`) the way kube-proxy's endpointslicecache
//! does: a service port takes the slice port with the same name and protocol (the DNAT port
//! is that slice port's number, never the Service's `targetPort`), and an endpoint
//! contributes its first address.

use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr, sync::Arc};

use k8s_openapi::api::discovery::v1::{Endpoint as SliceEndpoint, EndpointSlice};

use super::{
    Endpoint, Protocol,
    addr::{parse_ip_sloppy, unusable_endpoint},
    intern, object_name,
    service::PortSpec,
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

    pub fn address_type(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }
}

/// What kproxy keeps of an EndpointSlice: what endpoint selection and health checks read,
/// parsed once when the slice arrives. The API object, with its metadata, strings and
/// options, is several times this size, and at tens of thousands of Services the slices are
/// a large share of the agent's memory.
#[derive(Debug, PartialEq)]
pub struct SliceInfo {
    /// `addressType`; `None` for FQDN and unknown types, which feed no frontend.
    family: Option<Family>,
    /// The ports kube-proxy can match: named (an unnamed port is named ""; one without a
    /// name is ignored, as kube-proxy does), of a protocol it knows.
    ports: Box<[SlicePort]>,
    /// The endpoints whose first address is usable in the slice's family.
    endpoints: Box<[ListedEndpoint]>,
}

#[derive(Debug, PartialEq)]
struct SlicePort {
    /// Interned: one copy for every slice's `http`.
    name: Arc<str>,
    proto: Protocol,
    /// As written (`None` when missing; checked when used, as kube-proxy does).
    number: Option<i32>,
}

#[derive(Debug, PartialEq)]
struct ListedEndpoint {
    addr: IpAddr,
    /// nil `ready` counts as true, nil `serving` as true, nil `terminating` as false
    /// (pkg/proxy/endpointslicecache.go).
    ready: bool,
    serving: bool,
    terminating: bool,
    /// Interned: a node's name is repeated by every endpoint on it.
    node_name: Option<Arc<str>>,
    /// Topology hints, when the slice gives any (most do not: none costs one word).
    hints: Option<Box<Hints>>,
}

/// `hints.forZones` and `hints.forNodes` names.
#[derive(Debug, PartialEq)]
struct Hints {
    zones: Box<[String]>,
    nodes: Box<[String]>,
}

impl SliceInfo {
    pub fn of(slice: &EndpointSlice) -> Self {
        let family = match slice.address_type.as_str() {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
        };
        let ports = slice
            .ports
            .as_deref()
            .unwrap_or_default()
            .iter()
            .filter_map(|p| {
                Some(SlicePort {
                    name: intern::port_name(p.name.as_deref()?),
                    proto: Protocol::parse(p.protocol.as_deref()).ok()?,
                    number: p.port,
                })
            })
            .collect();
        let endpoints = family
            .map(|family| {
                slice
                    .endpoints
                    .iter()
                    .filter_map(|ep| listed_endpoint(ep, family))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            family,
            ports,
            endpoints,
        }
    }

    /// The number of the slice port matching `port` by name and protocol, if any (a slice
    /// port without a number is passed over).
    fn port(&self, port: &PortSpec) -> Option<i32> {
        self.ports
            .iter()
            .find_map(|p| (*p.name == *port.name && p.proto == port.proto).then_some(p.number?))
    }
}

fn listed_endpoint(ep: &SliceEndpoint, family: Family) -> Option<ListedEndpoint> {
    let conditions = ep.conditions.as_ref();
    let hints = ep.hints.as_ref();
    Some(ListedEndpoint {
        addr: first_address(ep, family)?,
        ready: conditions.and_then(|c| c.ready).unwrap_or(true),
        serving: conditions.and_then(|c| c.serving).unwrap_or(true),
        terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
        node_name: ep.node_name.as_deref().map(intern::node_name),
        hints: hints.map(|h| {
            Box::new(Hints {
                zones: h
                    .for_zones
                    .iter()
                    .flatten()
                    .map(|z| z.name.clone())
                    .collect(),
                nodes: h
                    .for_nodes
                    .iter()
                    .flatten()
                    .map(|n| n.name.clone())
                    .collect(),
            })
        }),
    })
}

/// What one slice says about one endpoint, on slice port `port`.
fn endpoint_info(ep: &ListedEndpoint, port: u16, node: &str) -> EndpointInfo {
    EndpointInfo {
        endpoint: Endpoint {
            addr: ep.addr,
            port,
        },
        ready: ep.ready,
        serving: ep.serving,
        terminating: ep.terminating,
        local: !node.is_empty() && ep.node_name.as_deref() == Some(node),
        zone_hints: ep.hints.iter().flat_map(|h| &h.zones).cloned().collect(),
        node_hints: ep.hints.iter().flat_map(|h| &h.nodes).cloned().collect(),
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
/// conditions, node and hints (`node` is this node's name). What a slice holds that cannot
/// be used (see `slice_problems`, which reports it once per slice) is skipped here.
pub(super) fn endpoints_for(
    slices: &[&SliceInfo],
    port: &PortSpec,
    family: Family,
    node: &str,
) -> Vec<EndpointInfo> {
    let mut found: BTreeMap<Endpoint, EndpointInfo> = BTreeMap::new();
    for slice in slices {
        if slice.family != Some(family) {
            continue; // the other family's slices feed its own frontends; FQDN ones none
        }
        let Some(number) = slice.port(port).and_then(port_number) else {
            continue;
        };
        for ep in &slice.endpoints {
            let info = endpoint_info(ep, number, node);
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

/// The (port name, protocol) pairs `slices` of `family` list.
pub(super) fn listed_ports(slices: &[&SliceInfo], family: Family) -> Vec<(String, Protocol)> {
    slices
        .iter()
        .filter(|s| s.family == Some(family))
        .flat_map(|s| &s.ports)
        .map(|p| (p.name.to_string(), p.proto))
        .collect()
}

/// A slice port's number as the datapath takes it, if it is one (1..=65535).
fn port_number(number: i32) -> Option<u16> {
    u16::try_from(number).ok().filter(|&n| n != 0)
}

/// The address an endpoint contributes (kube-proxy uses the first one only), if it is a
/// usable address of `family`.
fn first_address(ep: &SliceEndpoint, family: Family) -> Option<IpAddr> {
    let addr = parse_ip_sloppy(ep.addresses.first()?)?;
    (Family::of(addr) == family && unusable_endpoint(addr).is_none()).then_some(addr)
}

/// Why an endpoint's first address cannot be used in a slice of `family`, if it cannot.
fn address_problem(ep: &SliceEndpoint, family: Family) -> Option<String> {
    let first = ep.addresses.first()?;
    let Some(addr) = parse_ip_sloppy(first) else {
        return Some(format!("{first:?} is not an IP address"));
    };
    if Family::of(addr) != family {
        return Some(format!(
            "{first:?} is not an {} address",
            family.address_type()
        ));
    }
    unusable_endpoint(addr).map(|why| format!("{first:?} is {why}"))
}

/// How many skipped endpoints a problem names; the rest are counted. A slice of 10,000 bad
/// addresses is one problem of bounded size, not 10,000 log lines.
const EXAMPLES: usize = 3;

/// What is wrong with one EndpointSlice on its own, reported once for the slice whatever
/// the number of service ports it feeds: an address type kproxy does not know, ports that
/// cannot be matched or used, endpoints whose address cannot be balanced to (each of these
/// is skipped; the rest of the slice is used).
pub(super) fn slice_problems(slice: &EndpointSlice) -> Vec<Problem> {
    let object = || object_name("EndpointSlice", &slice.metadata);
    let problem =
        |message: String| Problem::new(ProblemKind::InvalidEndpoint, message).object(object());
    let family = match slice.address_type.as_str() {
        "IPv4" => Family::V4,
        "IPv6" => Family::V6,
        // Domain names: kube-proxy does not use FQDN slices, and neither does kproxy.
        "FQDN" => return Vec::new(),
        other => {
            return vec![problem(format!(
                "addressType {other:?} is not IPv4, IPv6 or FQDN; slice ignored"
            ))];
        }
    };
    let mut problems = Vec::new();
    for p in slice.ports.as_deref().unwrap_or_default() {
        match (&p.name, p.port) {
            (None, _) => problems.push(problem(
                "a port without a name is ignored (kube-proxy does too); name an unnamed port \"\""
                    .into(),
            )),
            (Some(name), Some(number)) if port_number(number).is_none() => {
                problems.push(problem(format!(
                    "port {name:?}: invalid port number {number} (1..=65535); port skipped"
                )));
            }
            _ => {}
        }
    }
    let bad: Vec<String> = slice
        .endpoints
        .iter()
        .filter_map(|ep| address_problem(ep, family))
        .collect();
    if !bad.is_empty() {
        let mut message = if bad.len() == 1 {
            "endpoint skipped: ".to_owned()
        } else {
            format!("{} endpoints skipped: ", bad.len())
        };
        message.push_str(&bad[..bad.len().min(EXAMPLES)].join(", "));
        if bad.len() > EXAMPLES {
            let _ = write!(message, ", and {} more", bad.len() - EXAMPLES);
        }
        problems.push(problem(message));
    }
    problems
}
