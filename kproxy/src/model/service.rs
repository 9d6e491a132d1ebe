//! What kube-proxy takes from a Service (pkg/proxy/serviceport.go `newBaseServiceInfo`,
//! pkg/api/v1/service/util.go): whether to serve it at all, its cluster IPs (both families),
//! its ports and NodePorts, its external IPs and load-balancer IPs, its session affinity, its
//! traffic policies, its loadBalancerSourceRanges and its health-check NodePort.

use std::{net::IpAddr, sync::Arc};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Service, ServicePort};

use super::{
    LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME, LbAlgorithm, ObjectKey, Protocol,
    addr::{parse_cidr_sloppy, parse_ip_sloppy, unusable_vip},
    intern,
    lb_policy::ANNOTATION_LB_ALGORITHM,
    object_name,
};
use crate::problem::{Problem, ProblemKind};

/// kube-proxy's default for `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;
/// The API server's upper bound for that field (1 day).
const MAX_AFFINITY_TIMEOUT_S: i32 = 86_400;

#[derive(Debug, PartialEq)]
pub(crate) struct PortSpec {
    /// Port name ("" when unnamed): the key that joins EndpointSlice ports. Shared with
    /// every frontend of the port (and the programmed state), as are the Service's names.
    pub name: Arc<str>,
    pub port: u16,
    pub proto: Protocol,
    /// `nodePort` of a NodePort or LoadBalancer Service (none when unset, as with
    /// `allocateLoadBalancerNodePorts: false`).
    pub node_port: Option<u16>,
}

#[derive(Debug, PartialEq)]
pub(crate) struct ServiceSpec {
    /// The Service's key, shared with the model's indexes.
    pub key: ObjectKey,
    // Boxed slices rather than vectors, here and below: fixed once read, a word less each,
    // and the kept Service fits an allocation 48 bytes smaller.
    pub cluster_ips: Box<[IpAddr]>,
    pub ports: Box<[PortSpec]>,
    pub affinity_timeout_s: Option<u32>,
    /// `internalTrafficPolicy: Local`: ClusterIP traffic only to this node's endpoints.
    pub internal_local: bool,
    /// `spec.externalIPs` that can be served, both families, in order, each once.
    pub external_ips: Box<[IpAddr]>,
    /// `status.loadBalancer.ingress[].ip` of VIP-mode ingresses (`ipMode` unset or `VIP`;
    /// kube-proxy leaves `Proxy` ones to the load balancer), both families, each once.
    pub load_balancer_ips: Box<[IpAddr]>,
    /// `spec.loadBalancerSourceRanges` that could be read (trimmed, as kube-proxy does),
    /// both families.
    pub source_ranges: Box<[IpNet]>,
    /// Source ranges were given but none could be read: the load-balancer IPs are left
    /// unserved rather than open to every source.
    pub source_ranges_unreadable: bool,
    /// kube-proxy's `ExternalPolicyLocal`: externally accessible (type NodePort or
    /// LoadBalancer, or ClusterIP with external IPs) and `externalTrafficPolicy: Local`.
    pub external_local: bool,
    /// `healthCheckNodePort` of a Service that needs one (`NeedsHealthCheck`: type
    /// LoadBalancer with the Local external policy).
    pub health_check_node_port: Option<u16>,
    /// The algorithm its `kproxy.io/lb-algorithm` annotation asks for; `None`: the node's
    /// (`--lb-algorithm`), also when the annotation names no algorithm.
    pub lb_algorithm: Option<LbAlgorithm>,
}

/// What a Service's `type` gives it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Type {
    ClusterIp,
    NodePort,
    LoadBalancer,
}

impl Type {
    /// `type` as the API server defaults it (unset is ClusterIP); an unknown value is
    /// served as ClusterIP and reported.
    fn of(field: Option<&str>, problems: &mut Vec<String>) -> Self {
        match field.unwrap_or("") {
            "" | "ClusterIP" => Self::ClusterIp,
            "NodePort" => Self::NodePort,
            "LoadBalancer" => Self::LoadBalancer,
            other => {
                problems.push(format!(
                    "unknown type {other:?}; served as ClusterIP (no NodePorts)"
                ));
                Self::ClusterIp
            }
        }
    }

    /// NodePort and LoadBalancer Services have NodePorts; the API server refuses `nodePort`
    /// on any other type.
    fn has_node_ports(self) -> bool {
        self != Self::ClusterIp
    }
}

impl ServiceSpec {
    /// The parts of `svc` the datapath serves, or `None` when kube-proxy would skip it.
    /// `key` is the Service's `object_key`: the spec shares its names.
    pub fn from_service(
        key: &ObjectKey,
        svc: &Service,
        problems: &mut Vec<Problem>,
    ) -> Option<Self> {
        let object = || object_name("Service", &svc.metadata);
        let report = |problems: &mut Vec<Problem>, msg: String| {
            problems.push(Problem::new(ProblemKind::InvalidService, msg).object(object()));
        };
        // kube-proxy watches Services and EndpointSlices through one informer factory whose
        // label selector is `!service.kubernetes.io/service-proxy-name,
        // !service.kubernetes.io/headless` (cmd/kube-proxy/app/server.go): a Service with
        // either label never reaches it, not only a slice.
        let labels = svc.metadata.labels.as_ref();
        if labels.is_some_and(|l| {
            l.contains_key(LABEL_SERVICE_PROXY_NAME) || l.contains_key(LABEL_HEADLESS)
        }) {
            return None;
        }
        let spec = svc.spec.as_ref()?;
        // ShouldSkipService: ExternalName services are DNS only; headless ones have no VIP.
        if spec.type_.as_deref() == Some("ExternalName") {
            return None;
        }
        let primary = spec.cluster_ip.as_deref().unwrap_or("");
        if primary.is_empty() || primary == "None" {
            return None;
        }
        if svc.metadata.name.is_none() {
            report(problems, "metadata.name is missing; service skipped".into());
            return None;
        }

        // clusterIPs (dual-stack) when present, else clusterIP.
        let listed: Vec<&str> = match &spec.cluster_ips {
            Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
            _ => vec![primary],
        };
        let mut messages = Vec::new();
        let cluster_ips = cluster_ips(&listed, &mut messages);
        let type_ = Type::of(spec.type_.as_deref(), &mut messages);
        let lb_algorithm = lb_algorithm(svc, &mut messages);
        let ports = cluster_ips.is_some().then(|| {
            ports(
                spec.ports.as_deref().unwrap_or_default(),
                type_,
                &mut messages,
            )
        });
        let reach = cluster_ips
            .is_some()
            .then(|| Reach::of(svc, type_, &mut messages));
        for message in messages {
            report(problems, message);
        }
        let (cluster_ips, ports, reach) = (cluster_ips?, ports?, reach?);

        let affinity_timeout_s = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            let configured = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match configured {
                None => DEFAULT_AFFINITY_TIMEOUT_S,
                Some(t) if (1..=MAX_AFFINITY_TIMEOUT_S).contains(&t) => t.unsigned_abs(),
                Some(t) => {
                    report(
                        problems,
                        format!(
                            "sessionAffinityConfig.clientIP.timeoutSeconds {t} is outside 1..=86400; \
                             using the default {DEFAULT_AFFINITY_TIMEOUT_S}"
                        ),
                    );
                    DEFAULT_AFFINITY_TIMEOUT_S
                }
            }
        });

        Some(Self {
            key: key.clone(),
            cluster_ips: cluster_ips.into(),
            ports: ports.into(),
            affinity_timeout_s,
            internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            external_ips: reach.external_ips.into(),
            load_balancer_ips: reach.load_balancer_ips.into(),
            source_ranges: reach.source_ranges.into(),
            source_ranges_unreadable: reach.source_ranges_unreadable,
            external_local: reach.external_local,
            health_check_node_port: reach.health_check_node_port,
            lb_algorithm,
        })
    }
}

/// The algorithm `svc`'s annotation names. An unknown value goes to `problems` and is
/// ignored: the Service is still served, with the node's algorithm, since a typo in an
/// optional tuning knob is no reason to take a Service down.
fn lb_algorithm(svc: &Service, problems: &mut Vec<String>) -> Option<LbAlgorithm> {
    let value = svc
        .metadata
        .annotations
        .as_ref()?
        .get(ANNOTATION_LB_ALGORITHM)?;
    let algorithm = LbAlgorithm::from_annotation(value);
    if algorithm.is_none() {
        problems.push(format!(
            "annotation {ANNOTATION_LB_ALGORITHM}: unknown value {value:?} (round-robin or \
             maglev); ignored, the node's --lb-algorithm applies"
        ));
    }
    algorithm
}

/// How a Service is reached from outside the cluster.
struct Reach {
    external_ips: Vec<IpAddr>,
    load_balancer_ips: Vec<IpAddr>,
    source_ranges: Vec<IpNet>,
    source_ranges_unreadable: bool,
    external_local: bool,
    health_check_node_port: Option<u16>,
}

impl Reach {
    fn of(svc: &Service, type_: Type, problems: &mut Vec<String>) -> Self {
        let spec = svc.spec.as_ref();
        let listed_external_ips = spec
            .and_then(|s| s.external_ips.as_deref())
            .unwrap_or_default();
        let mut external_ips = Vec::new();
        for ip in listed_external_ips {
            if let Some(addr) = usable_ip(ip, "externalIPs", problems)
                && !external_ips.contains(&addr)
            {
                external_ips.push(addr);
            }
        }

        let mut load_balancer_ips = Vec::new();
        let ingresses = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_deref())
            .unwrap_or_default();
        for ingress in ingresses {
            // Hostname-only ingresses have no IP for kube-proxy to program.
            let Some(ip) = ingress.ip.as_deref().filter(|ip| !ip.is_empty()) else {
                continue;
            };
            // kube-proxy's IsVIPMode: unset or VIP. `Proxy` load balancers deliver to the
            // NodePort themselves, so kube-proxy does not capture their IP.
            match ingress.ip_mode.as_deref() {
                None | Some("VIP") => {}
                Some("Proxy") => continue,
                Some(other) => {
                    problems.push(format!(
                        "status.loadBalancer.ingress {ip}: unknown ipMode {other:?} (VIP or Proxy); skipped"
                    ));
                    continue;
                }
            }
            if let Some(addr) = usable_ip(ip, "status.loadBalancer.ingress", problems)
                && !load_balancer_ips.contains(&addr)
            {
                load_balancer_ips.push(addr);
            }
        }

        let listed_ranges = spec
            .and_then(|s| s.load_balancer_source_ranges.as_deref())
            .unwrap_or_default();
        let mut source_ranges = Vec::new();
        for range in listed_ranges {
            // The API server's validation lets whitespace through; kube-proxy trims it.
            match parse_cidr_sloppy(range.trim()) {
                Some(net) => source_ranges.push(net),
                None => problems.push(format!(
                    "loadBalancerSourceRanges: {range:?} is not a CIDR; skipped"
                )),
            }
        }
        let source_ranges_unreadable = !listed_ranges.is_empty() && source_ranges.is_empty();
        if source_ranges_unreadable && !load_balancer_ips.is_empty() {
            problems.push(
                "no loadBalancerSourceRanges entry is a CIDR; the load-balancer IPs are not \
                 served (rather than open to every source) until one is"
                    .into(),
            );
        }

        // apiservice.ExternallyAccessible and ExternalPolicyLocal.
        let externally_accessible = type_ != Type::ClusterIp || !listed_external_ips.is_empty();
        let external_local = externally_accessible
            && spec.and_then(|s| s.external_traffic_policy.as_deref()) == Some("Local");
        // apiservice.NeedsHealthCheck.
        let health_check_node_port = (type_ == Type::LoadBalancer && external_local)
            .then(|| {
                match spec.and_then(|s| s.health_check_node_port).unwrap_or(0) {
                    0 => {
                        problems.push(
                            "externalTrafficPolicy Local LoadBalancer without a \
                             healthCheckNodePort; no health check is served for it"
                                .into(),
                        );
                        None
                    }
                    n => u16::try_from(n).ok().or_else(|| {
                        problems.push(format!(
                            "invalid healthCheckNodePort {n} (1..=65535); no health check is served for it"
                        ));
                        None
                    }),
                }
            })
            .flatten();
        Self {
            external_ips,
            load_balancer_ips,
            source_ranges,
            source_ranges_unreadable,
            external_local,
            health_check_node_port,
        }
    }
}

/// An external or load-balancer IP that can be a VIP; what is wrong goes to `problems`.
fn usable_ip(ip: &str, field: &str, problems: &mut Vec<String>) -> Option<IpAddr> {
    let Some(addr) = parse_ip_sloppy(ip) else {
        problems.push(format!("{field}: {ip:?} is not an IP address; skipped"));
        return None;
    };
    if let Some(why) = unusable_vip(addr) {
        problems.push(format!(
            "{field}: {ip} is {why}, not a Service VIP; skipped"
        ));
        return None;
    }
    Some(addr)
}

/// The VIPs of `listed` cluster IPs, or `None` when one cannot be served (the service is
/// skipped). What is wrong goes to `problems`.
fn cluster_ips(listed: &[&str], problems: &mut Vec<String>) -> Option<Vec<IpAddr>> {
    let mut cluster_ips: Vec<IpAddr> = Vec::new();
    for ip in listed {
        let Some(addr) = parse_ip_sloppy(ip) else {
            problems.push(format!("invalid cluster IP {ip:?}; service skipped"));
            return None;
        };
        if let Some(why) = unusable_vip(addr) {
            problems.push(format!(
                "cluster IP {ip:?} is {why}, not a Service VIP; service skipped"
            ));
            return None;
        }
        // The API server refuses this; served once, the second entry changes nothing.
        if cluster_ips.contains(&addr) {
            problems.push(format!(
                "clusterIPs lists {addr} more than once; served once"
            ));
            continue;
        }
        cluster_ips.push(addr);
    }
    cluster_ips.shrink_to_fit();
    Some(cluster_ips)
}

/// The ports the datapath can serve; the others are skipped and go to `problems`.
fn ports(listed: &[ServicePort], type_: Type, problems: &mut Vec<String>) -> Vec<PortSpec> {
    let mut ports: Vec<PortSpec> = Vec::new();
    for p in listed {
        let name = p.name.clone().unwrap_or_default();
        let proto = match Protocol::parse(p.protocol.as_deref()) {
            Ok(proto) => proto,
            Err(e) => {
                problems.push(format!("port {name:?}: {e}; port skipped"));
                continue;
            }
        };
        let Some(port) = u16::try_from(p.port).ok().filter(|&n| n != 0) else {
            problems.push(format!(
                "port {name:?}: invalid port number {} (1..=65535); port skipped",
                p.port
            ));
            continue;
        };
        // Two ports of one Service on the same number and protocol would be one frontend
        // claimed twice (the API server refuses it); the first one listed keeps it.
        if let Some(first) = ports.iter().find(|q| q.port == port && q.proto == proto) {
            problems.push(format!(
                "port {name:?}: {port}/{proto} is already port {:?} of this service; port skipped",
                first.name
            ));
            continue;
        }
        let node_port = node_port(p, &name, proto, type_, &ports, problems);
        ports.push(PortSpec {
            name: intern::port_name(&name),
            port,
            proto,
            node_port,
        });
    }
    // Kept for the Service's lifetime: no spare capacity from growing.
    ports.shrink_to_fit();
    ports
}

/// The NodePort of port `p` (named `name`), if it has a usable one; `earlier` are the ports
/// of the Service before it.
fn node_port(
    p: &ServicePort,
    name: &str,
    proto: Protocol,
    type_: Type,
    earlier: &[PortSpec],
    problems: &mut Vec<String>,
) -> Option<u16> {
    let number = p.node_port.filter(|&n| n != 0)?;
    if !type_.has_node_ports() {
        problems.push(format!(
            "port {name:?}: nodePort {number} on a Service that is neither NodePort nor \
             LoadBalancer (the API server refuses it); ignored"
        ));
        return None;
    }
    let Some(node_port) = u16::try_from(number).ok() else {
        problems.push(format!(
            "port {name:?}: invalid nodePort {number} (1..=65535); NodePort skipped"
        ));
        return None;
    };
    if let Some(first) = earlier
        .iter()
        .find(|q| q.node_port == Some(node_port) && q.proto == proto)
    {
        problems.push(format!(
            "port {name:?}: nodePort {node_port}/{proto} is already the NodePort of port {:?}; \
             NodePort skipped",
            first.name
        ));
        return None;
    }
    Some(node_port)
}
