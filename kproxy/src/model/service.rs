//! What kube-proxy takes from a Service: whether to serve it at all, its cluster IPs (both
//! families), its ports, its session affinity and its internal traffic policy.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Service, ServicePort};

use super::{
    LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME, Protocol,
    addr::{parse_ip_sloppy, unusable_vip},
    object_name,
};
use crate::problem::{Problem, ProblemKind};

/// kube-proxy's default for `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;
/// The API server's upper bound for that field (1 day).
const MAX_AFFINITY_TIMEOUT_S: i32 = 86_400;

pub(super) struct PortSpec {
    /// Port name ("" when unnamed): the key that joins EndpointSlice ports.
    pub name: String,
    pub port: u16,
    pub proto: Protocol,
}

pub(super) struct ServiceSpec {
    pub namespace: String,
    pub name: String,
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<PortSpec>,
    pub affinity_timeout_s: Option<u32>,
    /// `internalTrafficPolicy: Local`: ClusterIP traffic only to this node's endpoints.
    pub internal_local: bool,
}

impl ServiceSpec {
    /// The parts of `svc` the datapath serves, or `None` when kube-proxy would skip it.
    pub fn from_service(svc: &Service, problems: &mut Vec<Problem>) -> Option<Self> {
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
        let Some(name) = svc.metadata.name.clone() else {
            report(problems, "metadata.name is missing; service skipped".into());
            return None;
        };
        let namespace = svc
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());

        // clusterIPs (dual-stack) when present, else clusterIP.
        let listed: Vec<&str> = match &spec.cluster_ips {
            Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
            _ => vec![primary],
        };
        let mut messages = Vec::new();
        let cluster_ips = cluster_ips(&listed, &mut messages);
        let ports = cluster_ips
            .is_some()
            .then(|| ports(spec.ports.as_deref().unwrap_or_default(), &mut messages));
        for message in messages {
            report(problems, message);
        }
        let (cluster_ips, ports) = (cluster_ips?, ports?);

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
            namespace,
            name,
            cluster_ips,
            ports,
            affinity_timeout_s,
            internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
        })
    }
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
    Some(cluster_ips)
}

/// The ports the datapath can serve; the others are skipped and go to `problems`.
fn ports(listed: &[ServicePort], problems: &mut Vec<String>) -> Vec<PortSpec> {
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
        ports.push(PortSpec { name, port, proto });
    }
    ports
}
