//! Fluent builders of Services and EndpointSlices for tests, and a plain frontend.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        core::v1::{
            ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Service, ServicePort,
            ServiceSpec, ServiceStatus, SessionAffinityConfig,
        },
        discovery::v1::{
            Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForNode,
            ForZone,
        },
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};

use super::LABEL_SERVICE_NAME;

fn add_label(meta: &mut ObjectMeta, key: &str, value: &str) {
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(key.into(), value.into());
}

fn meta(namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(namespace.into()),
        name: Some(name.into()),
        ..ObjectMeta::default()
    }
}

pub struct ServiceBuilder(Service);

/// A ClusterIP Service without ports; add them with `.port(...)`.
pub fn service(namespace: &str, name: &str, cluster_ip: &str) -> ServiceBuilder {
    ServiceBuilder(Service {
        metadata: meta(namespace, name),
        spec: Some(ServiceSpec {
            cluster_ip: Some(cluster_ip.into()),
            type_: Some("ClusterIP".into()),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

impl ServiceBuilder {
    fn spec(&mut self) -> &mut ServiceSpec {
        self.0.spec.as_mut().expect("builder always has a spec")
    }

    pub fn port(mut self, name: &str, port: i32, protocol: &str) -> Self {
        self.spec()
            .ports
            .get_or_insert_with(Vec::new)
            .push(ServicePort {
                name: (!name.is_empty()).then(|| name.into()),
                port,
                protocol: Some(protocol.into()),
                target_port: Some(IntOrString::String("named-target".into())),
                ..ServicePort::default()
            });
        self
    }

    pub fn cluster_ips(mut self, ips: &[&str]) -> Self {
        self.spec().cluster_ips = Some(ips.iter().map(|s| (*s).into()).collect());
        self
    }

    pub fn type_(mut self, type_: &str) -> Self {
        self.spec().type_ = Some(type_.into());
        self
    }

    /// `sessionAffinity: ClientIP`, with `timeoutSeconds` when given.
    pub fn client_ip_affinity(mut self, timeout_seconds: Option<i32>) -> Self {
        let spec = self.spec();
        spec.session_affinity = Some("ClientIP".into());
        spec.session_affinity_config = timeout_seconds.map(|t| SessionAffinityConfig {
            client_ip: Some(ClientIPConfig {
                timeout_seconds: Some(t),
            }),
        });
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        add_label(&mut self.0.metadata, key, value);
        self
    }

    /// Sets `nodePort` on the last port added.
    pub fn node_port(mut self, node_port: i32) -> Self {
        self.last_port().node_port = Some(node_port);
        self
    }

    /// Sets a numeric `targetPort` on the last port added (kube-proxy never uses it: the
    /// DNAT port comes from the EndpointSlice).
    pub fn target_port(mut self, target_port: i32) -> Self {
        self.last_port().target_port = Some(IntOrString::Int(target_port));
        self
    }

    fn last_port(&mut self) -> &mut ServicePort {
        self.spec()
            .ports
            .as_mut()
            .and_then(|p| p.last_mut())
            .expect("add a port first")
    }

    /// No `clusterIP` field at all.
    pub fn without_cluster_ip(mut self) -> Self {
        self.spec().cluster_ip = None;
        self
    }

    pub fn ip_families(mut self, families: &[&str]) -> Self {
        self.spec().ip_families = Some(families.iter().map(|s| (*s).into()).collect());
        self
    }

    /// `internalTrafficPolicy` (`Cluster` or `Local`).
    pub fn internal_traffic_policy(mut self, policy: &str) -> Self {
        self.spec().internal_traffic_policy = Some(policy.into());
        self
    }

    /// `externalTrafficPolicy` (`Cluster` or `Local`).
    pub fn external_traffic_policy(mut self, policy: &str) -> Self {
        self.spec().external_traffic_policy = Some(policy.into());
        self
    }

    /// `trafficDistribution` (`PreferClose`, `PreferSameZone`, `PreferSameNode`).
    pub fn traffic_distribution(mut self, distribution: &str) -> Self {
        self.spec().traffic_distribution = Some(distribution.into());
        self
    }

    pub fn external_ips(mut self, ips: &[&str]) -> Self {
        self.spec().external_ips = Some(ips.iter().map(|s| (*s).into()).collect());
        self
    }

    pub fn health_check_node_port(mut self, port: i32) -> Self {
        self.spec().health_check_node_port = Some(port);
        self
    }

    pub fn load_balancer_source_ranges(mut self, ranges: &[&str]) -> Self {
        self.spec().load_balancer_source_ranges =
            Some(ranges.iter().map(|s| (*s).into()).collect());
        self
    }

    /// `status.loadBalancer.ingress` IPs.
    pub fn load_balancer_ingress(mut self, ips: &[&str]) -> Self {
        self.0.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(
                    ips.iter()
                        .map(|ip| LoadBalancerIngress {
                            ip: Some((*ip).into()),
                            ..LoadBalancerIngress::default()
                        })
                        .collect(),
                ),
            }),
            ..ServiceStatus::default()
        });
        self
    }

    /// `status.loadBalancer.ingress` entries as `(ip, hostname, ipMode)`.
    pub fn load_balancer_ingress_with(
        mut self,
        ingress: &[(Option<&str>, Option<&str>, Option<&str>)],
    ) -> Self {
        self.0.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(
                    ingress
                        .iter()
                        .map(|(ip, hostname, mode)| LoadBalancerIngress {
                            ip: ip.map(Into::into),
                            hostname: hostname.map(Into::into),
                            ip_mode: mode.map(Into::into),
                            ..LoadBalancerIngress::default()
                        })
                        .collect(),
                ),
            }),
            ..ServiceStatus::default()
        });
        self
    }

    /// `allocateLoadBalancerNodePorts`.
    pub fn allocate_load_balancer_node_ports(mut self, allocate: bool) -> Self {
        self.spec().allocate_load_balancer_node_ports = Some(allocate);
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.0
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(key.into(), value.into());
        self
    }

    pub fn build(self) -> Service {
        self.0
    }
}

#[derive(Clone)]
pub struct SliceBuilder(EndpointSlice);

/// An IPv4 EndpointSlice of `service`, without ports or endpoints.
pub fn slice(namespace: &str, name: &str, service: &str) -> SliceBuilder {
    let mut metadata = meta(namespace, name);
    metadata.labels = Some(BTreeMap::from([(
        LABEL_SERVICE_NAME.into(),
        service.into(),
    )]));
    SliceBuilder(EndpointSlice {
        address_type: "IPv4".into(),
        endpoints: Vec::new(),
        metadata,
        ports: None,
    })
}

impl SliceBuilder {
    pub fn address_type(mut self, t: &str) -> Self {
        self.0.address_type = t.into();
        self
    }

    pub fn port(mut self, name: &str, port: i32, protocol: &str) -> Self {
        self.0
            .ports
            .get_or_insert_with(Vec::new)
            .push(EndpointPort {
                name: Some(name.into()),
                port: Some(port),
                protocol: Some(protocol.into()),
                app_protocol: None,
            });
        self
    }

    /// An endpoint with `ready` (None leaves the condition unset).
    pub fn endpoint(mut self, address: &str, ready: Option<bool>) -> Self {
        self.0.endpoints.push(Endpoint {
            addresses: vec![address.into()],
            conditions: Some(EndpointConditions {
                ready,
                serving: None,
                terminating: None,
            }),
            ..Endpoint::default()
        });
        self
    }

    /// A port with every field optional, as the API allows.
    pub fn port_raw(mut self, name: Option<&str>, port: Option<i32>, protocol: &str) -> Self {
        self.0
            .ports
            .get_or_insert_with(Vec::new)
            .push(EndpointPort {
                name: name.map(Into::into),
                port,
                protocol: Some(protocol.into()),
                app_protocol: None,
            });
        self
    }

    /// An endpoint with the given addresses (possibly none) and no conditions.
    pub fn endpoint_addresses(mut self, addresses: &[&str]) -> Self {
        self.0.endpoints.push(Endpoint {
            addresses: addresses.iter().map(|a| (*a).into()).collect(),
            ..Endpoint::default()
        });
        self
    }

    fn last(&mut self) -> &mut Endpoint {
        self.0.endpoints.last_mut().expect("add an endpoint first")
    }

    /// Sets all three conditions of the last endpoint (`None` leaves one unset).
    pub fn conditions(
        mut self,
        ready: Option<bool>,
        serving: Option<bool>,
        terminating: Option<bool>,
    ) -> Self {
        self.last().conditions = Some(EndpointConditions {
            ready,
            serving,
            terminating,
        });
        self
    }

    /// The last endpoint is ready: false, serving: true, terminating: true.
    pub fn serving_terminating(self) -> Self {
        self.conditions(Some(false), Some(true), Some(true))
    }

    /// `nodeName` of the last endpoint.
    pub fn node(mut self, node: &str) -> Self {
        self.last().node_name = Some(node.into());
        self
    }

    /// `zone` of the last endpoint.
    pub fn zone(mut self, zone: &str) -> Self {
        self.last().zone = Some(zone.into());
        self
    }

    /// `hints.forZones` of the last endpoint.
    pub fn for_zones(mut self, zones: &[&str]) -> Self {
        let hints = self.last().hints.get_or_insert_with(EndpointHints::default);
        hints.for_zones = Some(
            zones
                .iter()
                .map(|z| ForZone { name: (*z).into() })
                .collect(),
        );
        self
    }

    /// `hints.forNodes` of the last endpoint (trafficDistribution PreferSameNode).
    pub fn for_nodes(mut self, nodes: &[&str]) -> Self {
        let hints = self.last().hints.get_or_insert_with(EndpointHints::default);
        hints.for_nodes = Some(
            nodes
                .iter()
                .map(|n| ForNode { name: (*n).into() })
                .collect(),
        );
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        add_label(&mut self.0.metadata, key, value);
        self
    }

    pub fn without_service_label(mut self) -> Self {
        self.0.metadata.labels = None;
        self
    }

    pub fn build(self) -> EndpointSlice {
        self.0
    }
}

/// A `kind` frontend of Service `default/name`'s unnamed port whose `endpoints` take new
/// connections, with nothing else set.
pub fn frontend(
    name: &str,
    kind: super::FrontendKind,
    endpoints: Vec<super::Endpoint>,
) -> super::Frontend {
    super::Frontend {
        service: super::ServicePortName::new("default", name, ""),
        kind,
        affinity_timeout_s: None,
        endpoints,
        standby: Vec::new(),
        when_empty: super::WhenEmpty::Reject,
        external_local: false,
        source_ranges: Vec::new(),
        maglev: false,
    }
}
