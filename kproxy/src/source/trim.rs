//! What the agent keeps of the objects it reads, from either source: only what Service
//! semantics read (the Service's spec and load-balancer status; the Node's labels,
//! addresses and pod CIDRs), in allocations of the size they need.
//!
//! At tens of thousands of Services this is a large share of the agent's memory: server-side
//! bookkeeping (managed fields, the last-applied annotation) is often bigger than the object,
//! and deserialized lists keep the spare capacity of their growth (room for four ports when
//! a Service has one).

use k8s_openapi::{
    api::{
        core::v1::{Node, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

/// The annotation the EndpointSlice controller stamps with the time of the change that
/// triggered an update; network-programming latency is measured from it.
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

fn trim_meta(meta: &mut ObjectMeta, keep_annotation: Option<&str>) {
    meta.managed_fields = None;
    meta.owner_references = None;
    meta.finalizers = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|k, _| Some(k.as_str()) == keep_annotation);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

pub fn trim_service(svc: &mut Service) {
    trim_meta(&mut svc.metadata, None);
    // Of the status, only load-balancer ingress addresses (and their ipMode) matter.
    if let Some(status) = svc.status.as_mut() {
        status.conditions = None;
        if let Some(ingress) = status
            .load_balancer
            .as_mut()
            .and_then(|lb| lb.ingress.as_mut())
        {
            ingress.shrink_to_fit();
            for i in ingress {
                i.ports = None;
            }
        }
    }
    if let Some(spec) = svc.spec.as_mut() {
        // The selector is the EndpointSlice controller's business, not the proxy's.
        spec.selector = None;
        for list in [
            &mut spec.cluster_ips,
            &mut spec.external_ips,
            &mut spec.ip_families,
            &mut spec.load_balancer_source_ranges,
        ]
        .into_iter()
        .flatten()
        {
            list.shrink_to_fit();
        }
        if let Some(ports) = spec.ports.as_mut() {
            ports.shrink_to_fit();
        }
    }
}

pub fn trim_slice(slice: &mut EndpointSlice) {
    trim_meta(&mut slice.metadata, Some(TRIGGER_TIME_ANNOTATION));
    slice.endpoints.shrink_to_fit();
    for ep in &mut slice.endpoints {
        ep.addresses.shrink_to_fit();
        // Which pod an endpoint is: not needed to balance to it.
        ep.target_ref = None;
        ep.deprecated_topology = None;
    }
    if let Some(ports) = slice.ports.as_mut() {
        ports.shrink_to_fit();
    }
}

pub fn trim_node(node: &mut Node) {
    trim_meta(&mut node.metadata, None);
    // Of the spec only the pod CIDRs (local-traffic detection by NodeCIDR) and the
    // autoscaler's to-be-deleted taint (health) are read, of the status only the addresses.
    node.spec = node
        .spec
        .take()
        .map(|spec| k8s_openapi::api::core::v1::NodeSpec {
            pod_cidr: spec.pod_cidr,
            pod_cidrs: spec.pod_cidrs,
            taints: spec
                .taints
                .map(|taints| -> Vec<_> {
                    taints
                        .into_iter()
                        .filter(|t| t.key == crate::model::TAINT_TO_BE_DELETED)
                        .collect()
                })
                .filter(|kept| !kept.is_empty()),
            ..Default::default()
        });
    if let Some(status) = node.status.as_mut() {
        *status = k8s_openapi::api::core::v1::NodeStatus {
            addresses: status.addresses.take(),
            ..Default::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::{
        api::{
            core::v1::{NodeAddress, NodeStatus, ServicePort, ServiceSpec},
            discovery::v1::Endpoint,
        },
        apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry,
    };

    use super::*;

    fn meta_with_bookkeeping() -> ObjectMeta {
        ObjectMeta {
            name: Some("x".into()),
            annotations: Some(BTreeMap::from([
                (
                    TRIGGER_TIME_ANNOTATION.into(),
                    "2026-11-22T07:00:00Z".into(),
                ),
                (
                    "kubectl.kubernetes.io/last-applied-configuration".into(),
                    "{...}".into(),
                ),
            ])),
            managed_fields: Some(vec![ManagedFieldsEntry::default()]),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn slices_keep_endpoints_ports_and_the_trigger_time_only() {
        let mut endpoints = Vec::with_capacity(16);
        endpoints.push(Endpoint {
            addresses: vec!["198.18.2.2".into()],
            node_name: Some("node-a".into()),
            target_ref: Some(k8s_openapi::api::core::v1::ObjectReference::default()),
            ..Endpoint::default()
        });
        let mut slice = EndpointSlice {
            metadata: meta_with_bookkeeping(),
            endpoints,
            ..EndpointSlice::default()
        };
        trim_slice(&mut slice);
        assert_eq!(slice.endpoints.capacity(), 1);
        assert_eq!(slice.endpoints[0].addresses, vec!["198.18.2.2".to_owned()]);
        assert_eq!(slice.endpoints[0].node_name.as_deref(), Some("node-a"));
        assert_eq!(slice.endpoints[0].target_ref, None);
        assert_eq!(slice.metadata.managed_fields, None);
        let annotations = slice.metadata.annotations.expect("trigger time kept");
        assert_eq!(
            annotations.keys().collect::<Vec<_>>(),
            [TRIGGER_TIME_ANNOTATION]
        );
    }

    #[test]
    fn services_keep_their_spec_but_not_selector_conditions_or_annotations() {
        let mut ports = Vec::with_capacity(8);
        ports.push(ServicePort {
            port: 80,
            ..ServicePort::default()
        });
        let mut svc = Service {
            metadata: meta_with_bookkeeping(),
            spec: Some(ServiceSpec {
                cluster_ip: Some("198.19.0.10".into()),
                selector: Some(BTreeMap::from([("app".into(), "web".into())])),
                ports: Some(ports),
                ..ServiceSpec::default()
            }),
            status: Some(k8s_openapi::api::core::v1::ServiceStatus {
                conditions: Some(Vec::with_capacity(1)),
                ..Default::default()
            }),
        };
        trim_service(&mut svc);
        let spec = svc.spec.expect("spec kept");
        assert_eq!(spec.cluster_ip.as_deref(), Some("198.19.0.10"));
        assert_eq!(spec.ports.as_ref().map(Vec::capacity), Some(1));
        assert_eq!(spec.selector, None);
        assert!(svc.status.is_some_and(|s| s.conditions.is_none()));
        assert_eq!(svc.metadata.annotations, None);
        assert_eq!(svc.metadata.name.as_deref(), Some("x"));
    }

    #[test]
    fn nodes_keep_name_labels_addresses_pod_cidrs_and_the_to_be_deleted_taint() {
        let mut node = Node {
            metadata: ObjectMeta {
                labels: Some(BTreeMap::from([("zone".into(), "a".into())])),
                ..meta_with_bookkeeping()
            },
            spec: Some(k8s_openapi::api::core::v1::NodeSpec {
                pod_cidr: Some("10.244.1.0/24".into()),
                pod_cidrs: Some(vec!["10.244.1.0/24".into()]),
                provider_id: Some("cloud://node-a".into()),
                taints: Some(
                    [
                        "node.kubernetes.io/unschedulable",
                        crate::model::TAINT_TO_BE_DELETED,
                    ]
                    .map(|key| k8s_openapi::api::core::v1::Taint {
                        key: key.into(),
                        effect: "NoSchedule".into(),
                        ..Default::default()
                    })
                    .into(),
                ),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(vec![NodeAddress {
                    type_: "InternalIP".into(),
                    address: "198.18.0.2".into(),
                }]),
                phase: Some("Running".into()),
                ..NodeStatus::default()
            }),
        };
        trim_node(&mut node);
        let spec = node.spec.expect("pod CIDRs kept");
        assert_eq!(spec.pod_cidr.as_deref(), Some("10.244.1.0/24"));
        assert_eq!(spec.pod_cidrs, Some(vec!["10.244.1.0/24".to_owned()]));
        assert_eq!(spec.provider_id, None);
        let taints: Vec<String> = spec
            .taints
            .unwrap_or_default()
            .into_iter()
            .map(|t| t.key)
            .collect();
        assert_eq!(taints, [crate::model::TAINT_TO_BE_DELETED]);
        let status = node.status.expect("status");
        assert_eq!(status.phase, None);
        assert_eq!(status.addresses.map(|a| a.len()), Some(1));
        assert!(node.metadata.labels.is_some());
        assert_eq!(node.metadata.annotations, None);
    }

    #[test]
    fn services_keep_what_their_external_frontends_read() {
        use k8s_openapi::api::core::v1::{
            LoadBalancerIngress, LoadBalancerStatus, PortStatus, ServiceStatus,
        };
        let mut ingress = Vec::with_capacity(4);
        ingress.push(LoadBalancerIngress {
            ip: Some("192.0.2.10".into()),
            ip_mode: Some("VIP".into()),
            ports: Some(vec![PortStatus::default()]),
            ..LoadBalancerIngress::default()
        });
        let mut svc = Service {
            metadata: meta_with_bookkeeping(),
            spec: Some(ServiceSpec {
                type_: Some("LoadBalancer".into()),
                external_ips: Some(vec!["192.0.2.11".into()]),
                external_traffic_policy: Some("Local".into()),
                health_check_node_port: Some(30000),
                load_balancer_source_ranges: Some(vec!["203.0.113.0/25".into()]),
                allocate_load_balancer_node_ports: Some(false),
                ports: Some(vec![ServicePort {
                    port: 80,
                    node_port: Some(30080),
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(ingress),
                }),
                conditions: Some(Vec::new()),
            }),
        };
        let before = svc.spec.clone();
        trim_service(&mut svc);
        assert_eq!(svc.spec, before, "the spec is kept whole but the selector");
        let ingress = svc
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|lb| lb.ingress)
            .expect("ingress kept");
        assert_eq!(ingress.capacity(), 1);
        assert_eq!(ingress[0].ip.as_deref(), Some("192.0.2.10"));
        assert_eq!(ingress[0].ip_mode.as_deref(), Some("VIP"));
        assert_eq!(ingress[0].ports, None);
    }
}
