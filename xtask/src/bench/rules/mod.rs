//! The rules kube-proxy's iptables and nftables modes would write for a set of ClusterIP and
//! NodePort services, built from the same Services and EndpointSlices kproxy reads, so the
//! benchmark can compare kproxy with both kube-proxy modes on identical input.
//!
//! Everything here follows kube-proxy's sources: the reading of Services and EndpointSlices
//! (pkg/proxy/serviceport.go, pkg/proxy/endpointslicecache.go), the chain names
//! (pkg/proxy/iptables/proxier.go, pkg/proxy/nftables/proxier.go) and the rules themselves (the
//! same two files, `syncProxyRules`). kube-proxy runs here with its defaults: masquerade bit 14,
//! no `--masquerade-all`, NodePorts on all addresses, and no local-traffic detector unless
//! [`ProxyConfig::cluster_cidr`] is set.
//!
//! Not modelled: `externalTrafficPolicy: Local` (its KUBE-SVL/`local-` chains and health
//! checks; [`service_ports`] gives such services no node port, the benchmark has none),
//! external and load-balancer IPs, session affinity, and the nfacct counters kube-proxy adds
//! to two iptables rules on kernels with nfacct (a NodePort rule matching only 127.0.0.0/8
//! and the INVALID drop); those need counter objects created over netlink first.

/// Appends a formatted line to a `String`; writing to a `String` cannot fail.
macro_rules! emit {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}

pub mod iptables;
pub mod nftables;
#[cfg(test)]
mod tests;

use std::{
    borrow::Cow,
    cmp::Ordering,
    collections::HashMap,
    fmt,
    io::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
};

use k8s_openapi::api::{
    core::v1::{Service, ServicePort, ServiceSpec},
    discovery::v1::{Endpoint, EndpointSlice},
};
use sha2::{Digest, Sha256};

// The benchmark's entry points; `iptables::iptables_restore_with` and
// `nftables::nftables_script_with` take a non-default [`ProxyConfig`].
pub use iptables::iptables_restore;
pub use nftables::nftables_script;

/// Label joining an EndpointSlice to its Service (discovery.LabelServiceName).
const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Objects with this label belong to another proxy; kube-proxy's informers filter them out
/// (cmd/kube-proxy/app/server.go, `noProxyName`).
const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// EndpointSlices of headless services, also filtered out by kube-proxy's informer.
const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";

/// Transport protocol of a service port (kube-proxy also proxies SCTP; the benchmark does not).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// The lower-case name kube-proxy uses in chain names, hashes and matches.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    /// A Kubernetes protocol field; the API defaults an absent protocol to TCP.
    fn from_k8s(protocol: Option<&str>) -> Option<Self> {
        match protocol.unwrap_or("TCP") {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            _ => None,
        }
    }
}

/// One service port (its ClusterIP and, if any, its NodePort) with its ready endpoints, as
/// kube-proxy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortRules {
    pub namespace: String,
    pub name: String,
    /// The Service port's name, "" when unnamed.
    pub port_name: String,
    pub protocol: Proto,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    /// The NodePort of a NodePort or LoadBalancer service with externalTrafficPolicy
    /// Cluster (the only policy generated here).
    pub node_port: Option<u16>,
    /// Ready endpoints. Any order: the rule generators use kube-proxy's order (see
    /// [`ServicePortRules::ordered_endpoints`]).
    pub endpoints: Vec<SocketAddrV4>,
}

impl ServicePortRules {
    /// kube-proxy's `ServicePortName.String()` (pkg/proxy/types.go): `ns/name:port`, or
    /// `ns/name` for an unnamed port. It is hashed into chain names and used in comments.
    pub fn service_port_name(&self) -> String {
        if self.port_name.is_empty() {
            format!("{}/{}", self.namespace, self.name)
        } else {
            format!("{}/{}:{}", self.namespace, self.name, self.port_name)
        }
    }

    /// The endpoints deduplicated and in the order kube-proxy dispatches to them: sorted by
    /// their `ip:port` *string* (`byEndpoint` in pkg/proxy/endpointslicecache.go), so
    /// 10.0.0.10 comes before 10.0.0.9.
    pub fn ordered_endpoints(&self) -> Cow<'_, [SocketAddrV4]> {
        let in_order = self
            .endpoints
            .windows(2)
            .all(|w| endpoint_order(&w[0], &w[1]) == Ordering::Less);
        if in_order {
            return Cow::Borrowed(&self.endpoints);
        }
        let mut sorted = self.endpoints.clone();
        sorted.sort_by(endpoint_order);
        sorted.dedup();
        Cow::Owned(sorted)
    }
}

/// An IPv4 prefix such as 10.244.0.0/16.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// The kube-proxy settings that change the ClusterIP rules. The default is kube-proxy started
/// without `--cluster-cidr` and without ServiceCIDR objects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyConfig {
    /// `--cluster-cidr` (with the default `--detect-local-mode=ClusterCIDR`): adds the rule
    /// that masquerades off-cluster traffic to a ClusterIP. Without it kube-proxy's local
    /// detector is a no-op and the rule is not written.
    pub cluster_cidr: Option<Ipv4Cidr>,
    /// The cluster's ServiceCIDRs (nftables mode only): adds the rule dropping traffic to
    /// unallocated ClusterIPs.
    pub service_cidrs: Vec<Ipv4Cidr>,
}

/// Reads services with an IPv4 ClusterIP (TCP/UDP ports, with their NodePorts) and their
/// EndpointSlices (joined by the `kubernetes.io/service-name` label, ports matched by name and
/// protocol, ready endpoints — an absent `ready` means ready —, first address of each
/// endpoint, deduplicated); skips headless and ExternalName services. Service ports come out
/// in input order.
pub fn service_ports(services: &[Service], slices: &[EndpointSlice]) -> Vec<ServicePortRules> {
    let slices_by_service = index_slices(slices);
    let mut out = Vec::new();
    for service in services {
        let Some((namespace, name, spec, cluster_ip)) = proxied_service(service) else {
            continue;
        };
        let service_slices = slices_by_service
            .get(&(namespace, name))
            .map_or(&[][..], Vec::as_slice);
        // kube-proxy reads `nodePort` whatever the type (the API only allows it on NodePort
        // and LoadBalancer services). eTP Local is not generated (see the module doc).
        let cluster_policy = spec.external_traffic_policy.as_deref() != Some("Local");
        for port in spec.ports.as_deref().unwrap_or_default() {
            let Some((port_name, protocol, number)) = read_port(port) else {
                continue;
            };
            let node_port = port
                .node_port
                .and_then(|n| u16::try_from(n).ok())
                .filter(|&n| n != 0 && cluster_policy);
            out.push(ServicePortRules {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                port_name: port_name.to_owned(),
                protocol,
                cluster_ip,
                port: number,
                node_port,
                endpoints: ready_endpoints(service_slices, port_name, protocol),
            });
        }
    }
    out
}

/// A namespace as kube-proxy keys it; an object read from a manifest may omit it.
fn namespace_of(namespace: Option<&String>) -> &str {
    namespace.map_or("default", String::as_str)
}

/// The proxied IPv4 slices of each service, keyed by (namespace, service name).
fn index_slices(slices: &[EndpointSlice]) -> HashMap<(&str, &str), Vec<&EndpointSlice>> {
    let mut index: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for slice in slices {
        let labels = slice.metadata.labels.as_ref();
        let Some(service) = labels.and_then(|l| l.get(LABEL_SERVICE_NAME)) else {
            continue;
        };
        let foreign = labels.is_some_and(|l| {
            l.contains_key(LABEL_SERVICE_PROXY_NAME) || l.contains_key(LABEL_HEADLESS)
        });
        // The IPv4 proxier only reads IPv4 slices (EndpointsChangeTracker filters by family).
        if foreign || service.is_empty() || slice.address_type != "IPv4" {
            continue;
        }
        let namespace = namespace_of(slice.metadata.namespace.as_ref());
        index.entry((namespace, service)).or_default().push(slice);
    }
    index
}

/// Namespace, name, spec and IPv4 cluster IP of a service kube-proxy proxies, or `None` when
/// it skips it: another proxy's, ExternalName, headless or without IPv4 cluster IP
/// (`ShouldSkipService` in pkg/proxy/util/utils.go, `GetClusterIPByFamily`).
fn proxied_service(service: &Service) -> Option<(&str, &str, &ServiceSpec, Ipv4Addr)> {
    let labels = service.metadata.labels.as_ref();
    if labels.is_some_and(|l| l.contains_key(LABEL_SERVICE_PROXY_NAME)) {
        return None;
    }
    let spec = service.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let cluster_ip = cluster_ipv4(spec)?;
    let name = service.metadata.name.as_deref()?;
    let namespace = namespace_of(service.metadata.namespace.as_ref());
    Some((namespace, name, spec, cluster_ip))
}

/// The service's IPv4 cluster IP: the first IPv4 entry of `clusterIPs` (dual-stack), else
/// `clusterIP`; none for headless ("None") or unallocated ("") services.
fn cluster_ipv4(spec: &ServiceSpec) -> Option<Ipv4Addr> {
    let primary = spec.cluster_ip.as_deref().unwrap_or("");
    if primary.is_empty() || primary == "None" {
        return None;
    }
    match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips.iter().find_map(|ip| ip.parse().ok()),
        _ => primary.parse().ok(),
    }
}

/// Name, protocol and number of a TCP or UDP service port.
fn read_port(port: &ServicePort) -> Option<(&str, Proto, u16)> {
    let protocol = Proto::from_k8s(port.protocol.as_deref())?;
    let number = u16::try_from(port.port).ok().filter(|&n| n != 0)?;
    Some((port.name.as_deref().unwrap_or(""), protocol, number))
}

/// The ready endpoints of one service port across the service's slices, in kube-proxy's
/// order (pkg/proxy/endpointslicecache.go: `endpointInfoByServicePort`, `addEndpoints`).
fn ready_endpoints(
    slices: &[&EndpointSlice],
    port_name: &str,
    protocol: Proto,
) -> Vec<SocketAddrV4> {
    // ip:port -> ready. An endpoint listed by two slices (while it moves between them) is
    // ready if either says so.
    let mut found: HashMap<SocketAddrV4, bool> = HashMap::new();
    for slice in slices {
        let Some(number) = slice_port(slice, port_name, protocol) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            // Only the first address counts; kube-proxy ignores the others.
            let Some(Ok(ip)) = endpoint.addresses.first().map(|a| a.parse::<Ipv4Addr>()) else {
                continue;
            };
            *found.entry(SocketAddrV4::new(ip, number)).or_default() |= is_ready(endpoint);
        }
    }
    let mut ready: Vec<SocketAddrV4> = found
        .into_iter()
        .filter_map(|(addr, ready)| ready.then_some(addr))
        .collect();
    ready.sort_by(endpoint_order);
    ready
}

/// The number of the slice port with this name and protocol. kube-proxy matches service and
/// slice ports by name and protocol and DNATs to the slice port's number; it ignores ports
/// without a number or with number 0.
fn slice_port(slice: &EndpointSlice, port_name: &str, protocol: Proto) -> Option<u16> {
    slice
        .ports
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|p| {
            p.name.as_deref().unwrap_or("") == port_name
                && Proto::from_k8s(p.protocol.as_deref()) == Some(protocol)
        })
        .and_then(|p| u16::try_from(p.port?).ok())
        .filter(|&n| n != 0)
}

/// kube-proxy reads an absent `ready` condition as ready.
fn is_ready(endpoint: &Endpoint) -> bool {
    endpoint
        .conditions
        .as_ref()
        .and_then(|c| c.ready)
        .unwrap_or(true)
}

/// kube-proxy's endpoint order: by the `ip:port` string, compared bytewise.
fn endpoint_order(a: &SocketAddrV4, b: &SocketAddrV4) -> Ordering {
    let (a_buf, a_len) = endpoint_text(a);
    let (b_buf, b_len) = endpoint_text(b);
    a_buf[..a_len].cmp(&b_buf[..b_len])
}

/// `ip:port` formatted on the stack (at most "255.255.255.255:65535", 21 bytes), so sorting
/// thousands of endpoints allocates nothing.
fn endpoint_text(addr: &SocketAddrV4) -> ([u8; 21], usize) {
    let mut buf = [0u8; 21];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    // Cannot fail: the buffer fits the longest possible text.
    let _ = write!(cursor, "{addr}");
    let len = usize::try_from(cursor.position()).unwrap_or(21);
    (buf, len)
}

/// The first `chars` characters of the standard base32 encoding of sha256(`parts` joined),
/// the hash kube-proxy puts in its chain names (`portProtoHash`, `hashAndTruncate`).
fn hash_prefix(parts: &[&str], chars: usize) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
    }
    base32_prefix(&hasher.finalize(), chars)
}

/// The first `chars` characters of RFC 4648 base32 (Go's `base32.StdEncoding`) of `bytes`.
fn base32_prefix(bytes: &[u8], chars: usize) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(chars);
    // Bits not yet encoded, most significant first; never more than 12 of them.
    let mut pending: usize = 0;
    let mut bits = 0;
    for &byte in bytes {
        pending = (pending << 8) | usize::from(byte);
        bits += 8;
        while bits >= 5 {
            if out.len() == chars {
                return out;
            }
            bits -= 5;
            out.push(char::from(ALPHABET[(pending >> bits) & 31]));
        }
        pending &= (1 << bits) - 1;
    }
    // A last partial group is padded with zero bits.
    if bits > 0 && out.len() < chars {
        out.push(char::from(ALPHABET[(pending << (5 - bits)) & 31]));
    }
    out
}
