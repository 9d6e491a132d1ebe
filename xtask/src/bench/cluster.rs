//! The benchmark's cluster: N ClusterIP services with three endpoints each, as Kubernetes
//! objects. kproxy reads them as JSON manifests; the netfilter modes get rules generated from
//! the very same objects.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::Path,
};

use anyhow::{Context, Result};
use k8s_openapi::{
    api::{
        core::v1::{Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};

pub const NAMESPACE: &str = "bench";
pub const SERVICE_PORT: u16 = 80;
pub const BACKEND_PORT: u16 = 8080;
/// Where the endpoint that a "one-endpoint change" adds listens (on the last backend).
pub const CHANGED_PORT: u16 = 8081;
/// Services per manifest file: big clusters are rarely one file, and one huge document would
/// make the agent's peak memory about JSON parsing rather than about its state.
const SERVICES_PER_FILE: usize = 200;

/// The address family of a cluster's Services and endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    /// As Kubernetes spells it (`ipFamilies`, an EndpointSlice's `addressType`).
    pub const fn kubernetes_name(self) -> &'static str {
        match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        }
    }

    /// The VIP of service `i` (0-based), never assigned to an interface: 198.19.0.1
    /// upwards, or 2001:db8:ffff::1 upwards (`topology::vip6`).
    pub fn vip(self, i: usize) -> IpAddr {
        match self {
            Family::Ipv4 => kproxy_testbed::topology::vip(
                u16::try_from(i + 1).expect("IPv4 VIPs end at 65,535 (198.19.0.0/16)"),
            )
            .into(),
            Family::Ipv6 => kproxy_testbed::topology::vip6(
                u32::try_from(i + 1)
                    .ok()
                    .filter(|&n| n < 1 << 20)
                    .expect("IPv6 VIPs end at 2^20 (a /108)"),
            )
            .into(),
        }
    }

    /// How many services of this family the bench can give a VIP of its own (the first
    /// [`super::real::objects::FIRST_BENCH_VIP`] are the API server's and the selector Services').
    pub const fn max_services(self) -> usize {
        match self {
            Family::Ipv4 => u16::MAX as usize - 1,
            Family::Ipv6 => (1 << 20) - 2,
        }
    }

    /// Backend `i`'s address in this family, the same in every bed.
    pub fn backend(self, i: usize) -> IpAddr {
        match self {
            Family::Ipv4 => kproxy_testbed::topology::backend_address(i).into(),
            Family::Ipv6 => kproxy_testbed::topology::backend_address6(i).into(),
        }
    }
}

fn service_name(i: usize) -> String {
    format!("svc-{i:05}")
}

/// Service `i` with its ClusterIP at `ip`, single-stack in `ip`'s family.
pub fn service_at(i: usize, ip: IpAddr) -> Service {
    let family = family_of(ip);
    Service {
        metadata: ObjectMeta {
            name: Some(service_name(i)),
            namespace: Some(NAMESPACE.into()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some(ip.to_string()),
            cluster_ips: Some(vec![ip.to_string()]),
            ip_families: Some(vec![family.kubernetes_name().into()]),
            ip_family_policy: Some("SingleStack".into()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: i32::from(SERVICE_PORT),
                protocol: Some("TCP".into()),
                target_port: Some(IntOrString::String("http".into())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn family_of(ip: IpAddr) -> Family {
    if ip.is_ipv6() {
        Family::Ipv6
    } else {
        Family::Ipv4
    }
}

/// Service `i`'s slice of `endpoints`, all of one family (IPv4 if there are none).
pub fn slice(i: usize, endpoints: &[SocketAddr]) -> EndpointSlice {
    // One slice per endpoint port: EndpointSlices carry a single port list for all endpoints.
    let port = endpoints.first().map_or(BACKEND_PORT, SocketAddr::port);
    let family = endpoints
        .first()
        .map_or(Family::Ipv4, |ep| family_of(ep.ip()));
    EndpointSlice {
        address_type: family.kubernetes_name().into(),
        endpoints: endpoints
            .iter()
            .map(|ep| Endpoint {
                addresses: vec![ep.ip().to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                ..Endpoint::default()
            })
            .collect(),
        metadata: ObjectMeta {
            name: Some(format!("{}-{port}", service_name(i))),
            namespace: Some(NAMESPACE.into()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/service-name".into(),
                service_name(i),
            )])),
            ..ObjectMeta::default()
        },
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(i32::from(port)),
            protocol: Some("TCP".into()),
            app_protocol: None,
        }]),
    }
}

/// `n` services of one family, each with the three backends as endpoints. The last one is
/// "the target".
pub struct Cluster {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    family: Family,
    /// Service `i` has the VIP `family.vip(first_vip + i)`.
    first_vip: usize,
}

impl Cluster {
    /// IPv4 services on `backends`.
    pub fn new(n: usize, backends: &[IpAddr]) -> Self {
        Self::with_first_vip(n, backends, Family::Ipv4, 0)
    }

    /// `family`'s services on `backends` (of that family) with VIPs from
    /// `family.vip(first_vip)` on: an API server keeps the first addresses of the range for
    /// its own `kubernetes` Service and others.
    pub fn with_first_vip(n: usize, backends: &[IpAddr], family: Family, first_vip: usize) -> Self {
        assert!(
            backends.iter().all(|b| family_of(*b) == family),
            "backends of another family than the {family:?} services"
        );
        let endpoints: Vec<SocketAddr> = backends
            .iter()
            .map(|b| SocketAddr::new(*b, BACKEND_PORT))
            .collect();
        Self {
            services: (0..n)
                .map(|i| service_at(i, family.vip(first_vip + i)))
                .collect(),
            slices: (0..n).map(|i| slice(i, &endpoints)).collect(),
            family,
            first_vip,
        }
    }

    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// The frontend of service `i`.
    pub fn frontend(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.family.vip(self.first_vip + i), SERVICE_PORT)
    }

    /// The service the load goes to in the "last" placement: last in every rule list.
    pub fn target(&self) -> SocketAddr {
        self.frontend(self.len() - 1)
    }

    pub fn all_frontends(&self) -> Vec<SocketAddr> {
        (0..self.len()).map(|i| self.frontend(i)).collect()
    }

    /// Writes the objects as JSON `v1` Lists, `SERVICES_PER_FILE` services per file; the
    /// target service's slice goes alone into `target.json`, the file a change rewrites.
    pub fn write_manifests(&self, dir: &Path) -> Result<()> {
        let last = self.len() - 1;
        for (chunk, services) in self.services.chunks(SERVICES_PER_FILE).enumerate() {
            let first = chunk * SERVICES_PER_FILE;
            let mut items: Vec<serde_json::Value> = Vec::with_capacity(services.len() * 2);
            for (i, svc) in services.iter().enumerate() {
                items.push(with_type(svc, "v1", "Service")?);
                if first + i != last {
                    items.push(with_type(
                        &self.slices[first + i],
                        "discovery.k8s.io/v1",
                        "EndpointSlice",
                    )?);
                }
            }
            write_list(&dir.join(format!("services-{chunk:03}.json")), &items)?;
        }
        let endpoints: Vec<SocketAddr> = self.slices[last]
            .endpoints
            .iter()
            .filter_map(|e| {
                Some(SocketAddr::new(
                    e.addresses.first()?.parse().ok()?,
                    BACKEND_PORT,
                ))
            })
            .collect();
        self.write_target(dir, &[&endpoints])
    }

    /// Writes `target.json` with one slice of the target service per endpoint group (a slice
    /// has one port list, so endpoints on other ports need their own slice), atomically by
    /// rename as config management does.
    pub fn write_target(&self, dir: &Path, groups: &[&[SocketAddr]]) -> Result<()> {
        let i = self.len() - 1;
        let items = groups
            .iter()
            .map(|endpoints| {
                with_type(&slice(i, endpoints), "discovery.k8s.io/v1", "EndpointSlice")
            })
            .collect::<Result<Vec<_>>>()?;
        let tmp = dir.join(".target.json.tmp");
        write_list(&tmp, &items)?;
        std::fs::rename(&tmp, dir.join("target.json")).context("renaming target.json")
    }
}

pub(super) fn with_type<T: serde::Serialize>(
    object: &T,
    api_version: &str,
    kind: &str,
) -> Result<serde_json::Value> {
    let mut value = serde_json::to_value(object)?;
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), api_version.into());
        map.insert("kind".into(), kind.into());
    }
    Ok(value)
}

pub(super) fn write_list(path: &Path, items: &[serde_json::Value]) -> Result<()> {
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    std::fs::write(path, serde_json::to_vec(&list)?)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn vips_count_up_from_198_19_0_1() {
        let vip = |i| Family::Ipv4.vip(i);
        assert_eq!(vip(0), Ipv4Addr::new(198, 19, 0, 1));
        assert_eq!(vip(254), Ipv4Addr::new(198, 19, 0, 255));
        assert_eq!(vip(9_999), Ipv4Addr::new(198, 19, 39, 16));
        assert_eq!(
            Family::Ipv6.vip(9_999),
            "2001:db8:ffff::2710".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn ipv6_services_are_single_stack_ipv6_with_ipv6_slices() {
        let backends = [Family::Ipv6.backend(0), Family::Ipv6.backend(1)];
        let cluster = Cluster::with_first_vip(3, &backends, Family::Ipv6, 16);
        let spec = cluster.services[2].spec.as_ref().unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("2001:db8:ffff::13"));
        assert_eq!(spec.ip_families.as_deref(), Some(&["IPv6".to_owned()][..]));
        assert_eq!(spec.ip_family_policy.as_deref(), Some("SingleStack"));
        assert_eq!(cluster.slices[2].address_type, "IPv6");
        assert_eq!(
            cluster.slices[2].endpoints[1].addresses,
            ["2001:db8:3::2".to_owned()]
        );
        assert_eq!(
            cluster.target(),
            "[2001:db8:ffff::13]:80".parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn manifests_split_into_files_with_the_target_slice_alone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cluster = Cluster::new(450, &[Ipv4Addr::new(198, 18, 2, 2).into()]);
        cluster.write_manifests(dir.path()).expect("write");
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "services-000.json",
                "services-001.json",
                "services-002.json",
                "target.json"
            ]
        );
        let text = std::fs::read_to_string(dir.path().join("services-002.json")).expect("read");
        let list: serde_json::Value = serde_json::from_str(&text).expect("json");
        // 50 services, 49 slices (the target's slice is in target.json).
        assert_eq!(list["items"].as_array().expect("items").len(), 99);
    }
}
