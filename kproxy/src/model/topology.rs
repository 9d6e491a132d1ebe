//! Which endpoints serve a service port on this node, as kube-proxy's `CategorizeEndpoints`
//! (pkg/proxy/topology.go) decides: Ready endpoints, falling back to serving-and-terminating
//! ones (separately for cluster-wide and for node-local traffic), narrowed by topology hints.

use std::collections::BTreeSet;

use super::Endpoint;

/// One endpoint of a service port with what kube-proxy knows about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    pub endpoint: Endpoint,
    /// nil `ready` counts as true, nil `serving` as true, nil `terminating` as false
    /// (pkg/proxy/endpointslicecache.go).
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// Runs on this node (`nodeName` is this node's name).
    pub local: bool,
    /// `hints.forZones` names.
    pub zone_hints: BTreeSet<String>,
    /// `hints.forNodes` names (trafficDistribution PreferSameNode).
    pub node_hints: BTreeSet<String>,
}

impl EndpointInfo {
    fn serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }
}

/// Where this node is, for topology hints.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Locality<'a> {
    pub node: &'a str,
    /// The node's `topology.kubernetes.io/zone` label ("" when unset).
    pub zone: &'a str,
}

/// How hints narrow the cluster-wide endpoints (topologyModeFromHints).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopologyMode {
    /// No narrowing: every usable endpoint.
    Any,
    /// Endpoints hinted for this node (trafficDistribution PreferSameNode).
    SameNode,
    /// Endpoints hinted for this node's zone (topology-aware routing, PreferClose,
    /// PreferSameZone).
    SameZone,
}

/// kube-proxy's choice of topology mode: node hints if every ready endpoint has some and one
/// names this node; else zone hints if every ready endpoint has some and one names this
/// node's zone; else none.
pub fn topology_mode(endpoints: &[EndpointInfo], here: &Locality<'_>) -> TopologyMode {
    let ready: Vec<&EndpointInfo> = endpoints.iter().filter(|e| e.ready).collect();
    if ready.is_empty() {
        return TopologyMode::Any;
    }
    let all_node_hints = ready.iter().all(|e| !e.node_hints.is_empty());
    if all_node_hints && ready.iter().any(|e| e.node_hints.contains(here.node)) {
        return TopologyMode::SameNode;
    }
    let all_zone_hints = ready.iter().all(|e| !e.zone_hints.is_empty());
    if all_zone_hints && ready.iter().any(|e| e.zone_hints.contains(here.zone)) {
        return TopologyMode::SameZone;
    }
    TopologyMode::Any
}

fn available(e: &EndpointInfo, mode: TopologyMode, here: &Locality<'_>) -> bool {
    match mode {
        TopologyMode::Any => true,
        TopologyMode::SameNode => e.node_hints.contains(here.node),
        TopologyMode::SameZone => e.zone_hints.contains(here.zone),
    }
}

/// The endpoints a service port uses on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Categorized {
    /// For traffic under the Cluster policy (`None` when the service does not use it).
    pub cluster: Option<Vec<Endpoint>>,
    /// For traffic under the Local policy (`None` when the service does not use it).
    pub local: Option<Vec<Endpoint>>,
    /// Some endpoint anywhere in the cluster could serve (decides drop versus reject).
    pub has_any: bool,
}

fn pick(endpoints: &[EndpointInfo], keep: impl Fn(&EndpointInfo) -> bool) -> Vec<Endpoint> {
    endpoints
        .iter()
        .filter(|e| keep(e))
        .map(|e| e.endpoint)
        .collect()
}

/// kube-proxy's `CategorizeEndpoints` for a service that uses cluster-wide endpoints,
/// node-local ones, or both.
pub fn categorize(
    endpoints: &[EndpointInfo],
    uses_cluster: bool,
    uses_local: bool,
    here: &Locality<'_>,
) -> Categorized {
    let mut out = Categorized {
        cluster: None,
        local: None,
        has_any: false,
    };
    if endpoints.is_empty() {
        out.cluster = uses_cluster.then(Vec::new);
        out.local = uses_local.then(Vec::new);
        return out;
    }
    if uses_cluster {
        let mode = topology_mode(endpoints, here);
        let mut cluster = pick(endpoints, |e| e.ready && available(e, mode, here));
        // No ready endpoint anywhere (hints were already ignored if none was ready for this
        // topology): fall back to the ones still serving while terminating.
        if cluster.is_empty() {
            cluster = pick(endpoints, EndpointInfo::serving_terminating);
        }
        out.has_any = !cluster.is_empty();
        out.cluster = Some(cluster);
    }
    if uses_local {
        out.has_any |= endpoints.iter().any(|e| e.ready || e.serving_terminating());
        let local = if endpoints.iter().any(|e| e.local && e.ready) {
            pick(endpoints, |e| e.local && e.ready)
        } else {
            pick(endpoints, |e| e.local && e.serving_terminating())
        };
        out.local = Some(local);
    }
    out
}

/// Why `e` is not among the endpoints a frontend uses, as `categorize` decided (`None`: it
/// is used). `local_policy`: the frontend uses the node-local set; `fallback`: that set
/// fell back to serving-and-terminating endpoints for want of ready ones.
pub fn why_unused(
    e: &EndpointInfo,
    used: bool,
    local_policy: bool,
    fallback: bool,
    mode: TopologyMode,
    here: &Locality<'_>,
) -> Option<String> {
    if used {
        return fallback
            .then(|| "used: serving while terminating (no ready endpoint to use)".to_owned());
    }
    let why = if local_policy && !e.local {
        "on another node (traffic policy Local: this node's endpoints only)".to_owned()
    } else if !e.ready && e.serving_terminating() {
        "terminating (ready endpoints exist, so terminating ones take no new flows)".to_owned()
    } else if !e.ready {
        "not ready".to_owned()
    } else if !local_policy && !available(e, mode, here) {
        match mode {
            TopologyMode::SameNode => format!("hinted for other nodes than {}", here.node),
            _ => format!("hinted for other zones than {:?}", here.zone),
        }
    } else {
        "over the per-service backend limit".to_owned()
    };
    Some(format!("not used: {why}"))
}

/// Whether the set a frontend uses fell back to serving-and-terminating endpoints: no
/// endpoint of it was ready (and, cluster-wide, available under the topology mode).
pub fn fell_back(
    endpoints: &[EndpointInfo],
    local_policy: bool,
    mode: TopologyMode,
    here: &Locality<'_>,
) -> bool {
    if local_policy {
        !endpoints.iter().any(|e| e.local && e.ready)
    } else {
        !endpoints
            .iter()
            .any(|e| e.ready && available(e, mode, here))
    }
}

#[cfg(test)]
mod tests;
