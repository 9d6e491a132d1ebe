//! Fluent builders of Services and EndpointSlices for tests.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        core::v1::{ClientIPConfig, Service, ServicePort, ServiceSpec, SessionAffinityConfig},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
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

    pub fn build(self) -> Service {
        self.0
    }
}

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
