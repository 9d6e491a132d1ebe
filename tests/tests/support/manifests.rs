//! Kubernetes manifests for tests, written the way an operator would write them.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

/// A service port: (name, port, protocol).
pub type Port<'a> = (&'a str, u16, &'a str);

pub fn service(
    name: &str,
    vip: impl Into<IpAddr>,
    ports: &[Port],
    affinity_timeout: Option<u32>,
) -> String {
    let addressing = match vip.into() {
        IpAddr::V4(vip) => format!("  clusterIP: {vip}\n"),
        IpAddr::V6(vip) => {
            format!("  clusterIP: {vip}\n  clusterIPs: [\"{vip}\"]\n  ipFamilies: [IPv6]\n")
        }
    };
    service_spec(name, &addressing, ports, affinity_timeout)
}

/// A dual-stack Service (`RequireDualStack`): a cluster IP of each family, IPv4 first.
pub fn dual_stack_service(
    name: &str,
    vips: (Ipv4Addr, Ipv6Addr),
    ports: &[Port],
    affinity_timeout: Option<u32>,
) -> String {
    let (v4, v6) = vips;
    service_spec(
        name,
        &format!(
            "  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n  clusterIP: {v4}\n  clusterIPs: [\"{v4}\", \"{v6}\"]\n"
        ),
        ports,
        affinity_timeout,
    )
}

/// A ClusterIP Service whose spec starts with `addressing` (its cluster IP lines).
fn service_spec(
    name: &str,
    addressing: &str,
    ports: &[Port],
    affinity_timeout: Option<u32>,
) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  type: ClusterIP\n{addressing}  ports:\n"
    );
    for (port_name, port, proto) in ports {
        let _ = write!(
            y,
            "  - name: {port_name}\n    port: {port}\n    protocol: {proto}\n    targetPort: {port_name}\n"
        );
    }
    if let Some(t) = affinity_timeout {
        let _ = write!(
            y,
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: {t}\n"
        );
    }
    y
}

/// An EndpointSlice of `service` whose endpoints listen on `ports` (name, port, protocol).
pub fn slice(name: &str, service: &str, ports: &[Port], addrs: &[Ipv4Addr]) -> String {
    slice_of(name, service, "IPv4", ports, addrs)
}

/// `slice` of IPv6 endpoints.
pub fn slice6(name: &str, service: &str, ports: &[Port], addrs: &[Ipv6Addr]) -> String {
    slice_of(name, service, "IPv6", ports, addrs)
}

fn slice_of<A: std::fmt::Display>(
    name: &str,
    service: &str,
    address_type: &str,
    ports: &[Port],
    addrs: &[A],
) -> String {
    let mut y = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: default\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: {address_type}\nports:\n"
    );
    for (port_name, port, proto) in ports {
        let _ = write!(
            y,
            "- name: {port_name}\n  port: {port}\n  protocol: {proto}\n"
        );
    }
    y.push_str("endpoints:\n");
    if addrs.is_empty() {
        y = y.replace("endpoints:\n", "endpoints: []\n");
    }
    for a in addrs {
        let _ = write!(
            y,
            "- addresses: [\"{a}\"]\n  conditions:\n    ready: true\n"
        );
    }
    y
}

/// An endpoint's conditions in a slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conditions {
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

pub const READY: Conditions = Conditions {
    ready: true,
    serving: true,
    terminating: false,
};
pub const NOT_READY: Conditions = Conditions {
    ready: false,
    serving: false,
    terminating: false,
};
/// Terminating, still finishing its work (kube-proxy uses it only when nothing is ready).
pub const TERMINATING: Conditions = Conditions {
    ready: false,
    serving: true,
    terminating: true,
};

/// `slice` with each endpoint's conditions given.
pub fn slice_with(
    name: &str,
    service: &str,
    ports: &[Port],
    endpoints: &[(Ipv4Addr, Conditions)],
) -> String {
    let addrs: Vec<Ipv4Addr> = endpoints.iter().map(|(a, _)| *a).collect();
    let mut y = slice(name, service, ports, &addrs);
    for (addr, c) in endpoints {
        y = y.replace(
            &format!("- addresses: [\"{addr}\"]\n  conditions:\n    ready: true\n"),
            &format!(
                "- addresses: [\"{addr}\"]\n  conditions:\n    ready: {}\n    serving: {}\n    terminating: {}\n",
                c.ready, c.serving, c.terminating
            ),
        );
    }
    y
}

/// Joins documents into one multi-document YAML file.
pub fn documents(docs: &[String]) -> String {
    docs.join("---\n")
}
