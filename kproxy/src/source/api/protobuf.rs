//! Lists in Kubernetes' protobuf encoding. The API server encodes a list of 10,000 Services
//! several times faster as protobuf than as JSON (once, by hand, against the bench's real
//! kube-apiserver: 66 ms against 505 ms in one page), and the agent decodes it without a JSON
//! tree per object; at a start, the lists are most of the wait before the first sync. So
//! Services and EndpointSlices are listed as protobuf (as client-go's informers list them)
//! and converted here into the `k8s-openapi` types the rest of the agent reads; watches stay
//! JSON (one object per event).
//!
//! A list's items are cut out of the body as it arrives (`list_reader`) and each is decoded
//! here when the watcher hands it on. Decoded whole, two pages per kind (the one handed on
//! and the next, prefetched) were held while the agent built its first state: at 100,000
//! Services, with Services written as their slices come, the start's peak was 205.6 MiB,
//! and 190–192 MiB with items decoded as they go (the bench, 2026-12-06). An item that does
//! not decode is reported by its name, as one in a JSON list is (see `decoded`), and the
//! others go on.
//!
//! The conversion carries every field kproxy reads, and the whole spec and status of both
//! kinds, so nothing a later change starts reading is silently missing; what it leaves out
//! (managed fields, a Service's selector and status conditions, an endpoint's target
//! reference) no part of kproxy needs.

use std::{collections::BTreeMap, sync::Arc};

use bytes::Bytes;
use k8s_openapi::{
    api::{
        core::v1::{
            ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Node, PortStatus, Service,
            ServicePort, ServiceSpec, ServiceStatus, SessionAffinityConfig,
        },
        discovery::v1::{
            Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForNode,
            ForZone,
        },
    },
    apimachinery::pkg::{
        apis::meta::v1::{ObjectMeta, OwnerReference, Time},
        util::intstr::IntOrString,
    },
    chrono::DateTime,
};
use k8s_pb::{
    api::{core::v1 as pb_core, discovery::v1 as pb_discovery},
    apimachinery::pkg::{apis::meta::v1 as pb_meta, util::intstr as pb_intstr},
};
use prost::Message;

use super::decoded::{Decoded, Invalid};

/// What the API server's protobuf responses start with, before the `runtime.Unknown` that
/// wraps the object.
pub(super) const MAGIC: &[u8] = b"k8s\0";

/// The media type asked for: protobuf, or JSON from a server (or a resource) without it.
pub const ACCEPT: &str = "application/vnd.kubernetes.protobuf, application/json";

/// Whether a response of `content_type` is protobuf.
pub fn is_protobuf(content_type: &str) -> bool {
    content_type.starts_with("application/vnd.kubernetes.protobuf")
}

/// A protobuf response not as the API server writes them.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("a protobuf response without the k8s magic prefix")]
    NoMagic,
    #[error("a protobuf response without a body")]
    NoBody,
    #[error("a protobuf list of a kind listed as JSON")]
    NotAsked,
    #[error("a protobuf response cut short")]
    Truncated,
    #[error("a protobuf field of wire type {0}")]
    WireType(u64),
    #[error("a protobuf varint longer than 10 bytes")]
    Varint,
    #[error("protobuf: {0}")]
    Prost(#[from] prost::DecodeError),
}

/// `runtime.Unknown` with only the field read: the wrapped object, still encoded. Decoded
/// from a `Bytes` body, the field is a slice of it, not a copy.
#[derive(Clone, PartialEq, Message)]
struct Envelope {
    #[prost(bytes = "bytes", optional, tag = "2")]
    raw: Option<Bytes>,
}

/// Any object with only its metadata read: what names one that does not decode whole.
#[derive(Clone, PartialEq, Message)]
struct MetadataOnly {
    #[prost(message, optional, tag = "1")]
    metadata: Option<pb_meta::ObjectMeta>,
}

/// The object a protobuf response carries, still encoded (a slice of `body`).
fn unwrap(body: &Bytes) -> Result<Bytes, DecodeError> {
    if !body.starts_with(MAGIC) {
        return Err(DecodeError::NoMagic);
    }
    Envelope::decode(body.slice(MAGIC.len()..))?
        .raw
        .ok_or(DecodeError::NoBody)
}

/// A kind whose lists may be read as protobuf.
pub trait FromProtobuf: Sized {
    /// Whether lists ask for protobuf (else JSON only).
    const LISTED_AS_PROTOBUF: bool = true;

    /// Decodes one item of a list.
    fn decode(item: Bytes) -> Result<Self, DecodeError>;
}

/// One item of a list (see `list_reader`): the object, or its name and why it does not
/// decode.
pub fn item<K: FromProtobuf>(encoded: Bytes) -> Decoded<K> {
    match K::decode(encoded.clone()) {
        Ok(object) => Decoded::Valid(Arc::new(object)),
        Err(e) => {
            let named = MetadataOnly::decode(encoded)
                .ok()
                .and_then(|m| m.metadata)
                .unwrap_or_default();
            Decoded::Invalid(Box::new(Invalid {
                metadata: ObjectMeta {
                    name: named.name,
                    namespace: named.namespace,
                    ..ObjectMeta::default()
                },
                error: e.to_string(),
            }))
        }
    }
}

/// The agent's own Node is one object, read whole: listed as JSON.
impl FromProtobuf for Node {
    const LISTED_AS_PROTOBUF: bool = false;

    fn decode(_: Bytes) -> Result<Self, DecodeError> {
        Err(DecodeError::NotAsked)
    }
}

impl FromProtobuf for Service {
    fn decode(item: Bytes) -> Result<Self, DecodeError> {
        Ok(service(pb_core::Service::decode(item)?))
    }
}

impl FromProtobuf for EndpointSlice {
    fn decode(item: Bytes) -> Result<Self, DecodeError> {
        Ok(slice(pb_discovery::EndpointSlice::decode(item)?))
    }
}

/// The error a protobuf response carries (`metav1.Status`): its code, reason and message.
pub fn status(body: &Bytes) -> Result<(u16, String, String), DecodeError> {
    let status = pb_meta::Status::decode(unwrap(body)?)?;
    Ok((
        status
            .code
            .and_then(|c| u16::try_from(c).ok())
            .unwrap_or_default(),
        status.reason.unwrap_or_default(),
        status.message.unwrap_or_default(),
    ))
}

fn time(t: pb_meta::Time) -> Option<Time> {
    DateTime::from_timestamp(
        t.seconds.unwrap_or_default(),
        t.nanos
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or_default(),
    )
    .map(Time)
}

/// `None` for an empty map, as JSON decoding leaves an absent one.
fn map(m: BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    (!m.is_empty()).then_some(m)
}

/// `None` for an empty list, as JSON decoding leaves an absent one.
fn non_empty<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

fn meta(m: pb_meta::ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: m.name,
        generate_name: m.generate_name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        generation: m.generation,
        creation_timestamp: m.creation_timestamp.and_then(time),
        deletion_timestamp: m.deletion_timestamp.and_then(time),
        deletion_grace_period_seconds: m.deletion_grace_period_seconds,
        labels: map(m.labels),
        annotations: map(m.annotations),
        owner_references: non_empty(
            m.owner_references
                .into_iter()
                .map(|o| OwnerReference {
                    api_version: o.api_version.unwrap_or_default(),
                    kind: o.kind.unwrap_or_default(),
                    name: o.name.unwrap_or_default(),
                    uid: o.uid.unwrap_or_default(),
                    controller: o.controller,
                    block_owner_deletion: o.block_owner_deletion,
                })
                .collect(),
        ),
        finalizers: non_empty(m.finalizers),
        ..ObjectMeta::default()
    }
}

fn int_or_string(v: pb_intstr::IntOrString) -> IntOrString {
    // Type 1 is a string; 0 (or none) an integer.
    if v.r#type == Some(1) {
        IntOrString::String(v.str_val.unwrap_or_default())
    } else {
        IntOrString::Int(v.int_val.unwrap_or_default())
    }
}

fn service(s: pb_core::Service) -> Service {
    Service {
        metadata: meta(s.metadata.unwrap_or_default()),
        spec: s.spec.map(service_spec),
        status: s.status.map(|st| ServiceStatus {
            load_balancer: st.load_balancer.map(|lb| LoadBalancerStatus {
                ingress: non_empty(lb.ingress.into_iter().map(ingress).collect()),
            }),
            conditions: None,
        }),
    }
}

fn service_spec(s: pb_core::ServiceSpec) -> ServiceSpec {
    ServiceSpec {
        ports: non_empty(
            s.ports
                .into_iter()
                .map(|p| ServicePort {
                    name: p.name,
                    protocol: p.protocol,
                    app_protocol: p.app_protocol,
                    port: p.port.unwrap_or_default(),
                    target_port: p.target_port.map(int_or_string),
                    node_port: p.node_port,
                })
                .collect(),
        ),
        cluster_ip: s.cluster_ip,
        cluster_ips: non_empty(s.cluster_ips),
        type_: s.r#type,
        external_ips: non_empty(s.external_ips),
        session_affinity: s.session_affinity,
        load_balancer_ip: s.load_balancer_ip,
        load_balancer_source_ranges: non_empty(s.load_balancer_source_ranges),
        external_name: s.external_name,
        external_traffic_policy: s.external_traffic_policy,
        health_check_node_port: s.health_check_node_port,
        publish_not_ready_addresses: s.publish_not_ready_addresses,
        session_affinity_config: s.session_affinity_config.map(|c| SessionAffinityConfig {
            client_ip: c.client_ip.map(|ip| ClientIPConfig {
                timeout_seconds: ip.timeout_seconds,
            }),
        }),
        ip_families: non_empty(s.ip_families),
        ip_family_policy: s.ip_family_policy,
        allocate_load_balancer_node_ports: s.allocate_load_balancer_node_ports,
        load_balancer_class: s.load_balancer_class,
        internal_traffic_policy: s.internal_traffic_policy,
        traffic_distribution: s.traffic_distribution,
        selector: None,
    }
}

fn ingress(i: pb_core::LoadBalancerIngress) -> LoadBalancerIngress {
    LoadBalancerIngress {
        ip: i.ip,
        hostname: i.hostname,
        ip_mode: i.ip_mode,
        ports: non_empty(
            i.ports
                .into_iter()
                .map(|p| PortStatus {
                    port: p.port.unwrap_or_default(),
                    protocol: p.protocol.unwrap_or_default(),
                    error: p.error,
                })
                .collect(),
        ),
    }
}

fn slice(s: pb_discovery::EndpointSlice) -> EndpointSlice {
    EndpointSlice {
        metadata: meta(s.metadata.unwrap_or_default()),
        address_type: s.address_type.unwrap_or_default(),
        endpoints: s.endpoints.into_iter().map(endpoint).collect(),
        ports: non_empty(
            s.ports
                .into_iter()
                .map(|p| EndpointPort {
                    name: p.name,
                    protocol: p.protocol,
                    port: p.port,
                    app_protocol: p.app_protocol,
                })
                .collect(),
        ),
    }
}

fn endpoint(e: pb_discovery::Endpoint) -> Endpoint {
    Endpoint {
        addresses: e.addresses,
        conditions: e.conditions.map(|c| EndpointConditions {
            ready: c.ready,
            serving: c.serving,
            terminating: c.terminating,
        }),
        hostname: e.hostname,
        node_name: e.node_name,
        zone: e.zone,
        hints: e.hints.map(|h| EndpointHints {
            for_zones: non_empty(
                h.for_zones
                    .into_iter()
                    .map(|z| ForZone {
                        name: z.name.unwrap_or_default(),
                    })
                    .collect(),
            ),
            for_nodes: non_empty(
                h.for_nodes
                    .into_iter()
                    .map(|n| ForNode {
                        name: n.name.unwrap_or_default(),
                    })
                    .collect(),
            ),
        }),
        deprecated_topology: None,
        target_ref: None,
    }
}

#[cfg(test)]
mod tests {
    use k8s_pb::apimachinery::pkg::runtime::Unknown;
    use serde_json::json;

    use super::{
        super::list_reader::{ListReader, Piece},
        *,
    };

    /// `message` as the API server sends it: the magic, then a `runtime.Unknown` around it.
    fn response(message: &impl Message) -> Bytes {
        let unknown = Unknown {
            raw: Some(message.encode_to_vec()),
            content_type: Some("application/vnd.kubernetes.protobuf".into()),
            ..Unknown::default()
        };
        [MAGIC, unknown.encode_to_vec().as_slice()].concat().into()
    }

    /// A whole list response read as the watcher reads one (see `list_reader`): its
    /// version, its next page's token and its items, decoded.
    struct Listed<K> {
        resource_version: Option<String>,
        continue_token: Option<String>,
        items: Vec<Decoded<K>>,
    }

    fn list<K: FromProtobuf>(body: &Bytes) -> Result<Listed<K>, DecodeError> {
        let mut reader = ListReader::default();
        reader.push(body);
        let mut listed = Listed {
            resource_version: None,
            continue_token: None,
            items: Vec::new(),
        };
        while let Some(piece) = reader.next()? {
            match piece {
                Piece::Meta {
                    resource_version,
                    continue_token,
                } => {
                    listed.resource_version = resource_version;
                    listed.continue_token = continue_token;
                }
                Piece::Item(bytes) => listed.items.push(item(bytes)),
            }
        }
        reader.finish()?;
        Ok(listed)
    }

    /// Any `*List` message with its items given already encoded (a message field and a
    /// bytes field are the same on the wire).
    #[derive(Clone, PartialEq, Message)]
    struct EncodedList {
        #[prost(message, optional, tag = "1")]
        metadata: Option<pb_meta::ListMeta>,
        #[prost(bytes = "bytes", repeated, tag = "2")]
        items: Vec<Bytes>,
    }

    /// The valid objects of a page, in order; panics on an invalid one.
    fn valid<K: FromProtobuf + Clone>(page: Listed<K>) -> Vec<K> {
        page.items
            .into_iter()
            .map(|item| match item {
                Decoded::Valid(object) => K::clone(&object),
                Decoded::Invalid(invalid) => panic!("invalid item: {}", invalid.error),
            })
            .collect()
    }

    #[expect(
        clippy::unnecessary_wraps,
        reason = "protobuf fields are optional strings"
    )]
    fn s(v: &str) -> Option<String> {
        Some(v.to_owned())
    }

    fn pb_meta(name: &str) -> pb_meta::ObjectMeta {
        pb_meta::ObjectMeta {
            name: s(name),
            namespace: s("shop"),
            uid: s("u-1"),
            resource_version: s("42"),
            generation: Some(3),
            creation_timestamp: Some(pb_meta::Time {
                seconds: Some(1_700_000_000),
                nanos: Some(0),
            }),
            labels: [("kubernetes.io/service-name".into(), "web".into())].into(),
            annotations: [(
                "endpoints.kubernetes.io/last-change-trigger-time".into(),
                "2026-12-03T20:00:00Z".into(),
            )]
            .into(),
            owner_references: vec![pb_meta::OwnerReference {
                api_version: s("v1"),
                kind: s("Service"),
                name: s("web"),
                uid: s("u-0"),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }],
            ..pb_meta::ObjectMeta::default()
        }
    }

    fn json_meta(name: &str) -> serde_json::Value {
        json!({
            "name": name, "namespace": "shop", "uid": "u-1", "resourceVersion": "42",
            "generation": 3, "creationTimestamp": "2023-11-14T22:13:20Z",
            "labels": {"kubernetes.io/service-name": "web"},
            "annotations": {
                "endpoints.kubernetes.io/last-change-trigger-time": "2026-12-03T20:00:00Z"
            },
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "Service", "name": "web", "uid": "u-0",
                "controller": true, "blockOwnerDeletion": true
            }],
        })
    }

    /// A Service with every field the conversion carries set.
    fn pb_service() -> pb_core::Service {
        pb_core::Service {
            metadata: Some(pb_meta("web")),
            spec: Some(pb_core::ServiceSpec {
                ports: vec![
                    pb_core::ServicePort {
                        name: s("http"),
                        protocol: s("TCP"),
                        app_protocol: s("http"),
                        port: Some(80),
                        target_port: Some(pb_intstr::IntOrString {
                            r#type: Some(1),
                            str_val: s("web"),
                            ..Default::default()
                        }),
                        node_port: Some(30080),
                    },
                    pb_core::ServicePort {
                        protocol: s("UDP"),
                        port: Some(53),
                        target_port: Some(pb_intstr::IntOrString {
                            r#type: Some(0),
                            int_val: Some(5353),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ],
                cluster_ip: s("198.19.0.10"),
                cluster_ips: vec!["198.19.0.10".into()],
                r#type: s("LoadBalancer"),
                external_ips: vec!["198.18.9.9".into()],
                session_affinity: s("ClientIP"),
                load_balancer_ip: s("198.18.9.8"),
                load_balancer_source_ranges: vec!["198.18.0.0/16".into()],
                external_traffic_policy: s("Local"),
                health_check_node_port: Some(31000),
                publish_not_ready_addresses: Some(false),
                session_affinity_config: Some(pb_core::SessionAffinityConfig {
                    client_ip: Some(pb_core::ClientIpConfig {
                        timeout_seconds: Some(600),
                    }),
                }),
                ip_families: vec!["IPv4".into()],
                ip_family_policy: s("SingleStack"),
                allocate_load_balancer_node_ports: Some(true),
                load_balancer_class: s("example.com/lb"),
                internal_traffic_policy: s("Cluster"),
                traffic_distribution: s("PreferClose"),
                ..Default::default()
            }),
            status: Some(pb_core::ServiceStatus {
                load_balancer: Some(pb_core::LoadBalancerStatus {
                    ingress: vec![pb_core::LoadBalancerIngress {
                        ip: s("198.18.9.7"),
                        ip_mode: s("VIP"),
                        ports: vec![pb_core::PortStatus {
                            port: Some(80),
                            protocol: s("TCP"),
                            error: None,
                        }],
                        ..Default::default()
                    }],
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_protobuf_service_list_reads_as_its_json_does() {
        let pb_list = pb_core::ServiceList {
            metadata: Some(pb_meta::ListMeta {
                resource_version: s("77"),
                r#continue: s("next-page"),
                ..Default::default()
            }),
            items: vec![pb_service()],
        };
        let page = list::<Service>(&response(&pb_list)).expect("decodes");
        assert_eq!(page.resource_version.as_deref(), Some("77"));
        assert_eq!(page.continue_token.as_deref(), Some("next-page"));
        let from_json: Service = serde_json::from_value(json!({
            "metadata": json_meta("web"),
            "spec": {
                "ports": [
                    {"name": "http", "protocol": "TCP", "appProtocol": "http", "port": 80,
                     "targetPort": "web", "nodePort": 30080},
                    {"protocol": "UDP", "port": 53, "targetPort": 5353},
                ],
                "clusterIP": "198.19.0.10", "clusterIPs": ["198.19.0.10"],
                "type": "LoadBalancer", "externalIPs": ["198.18.9.9"],
                "sessionAffinity": "ClientIP", "loadBalancerIP": "198.18.9.8",
                "loadBalancerSourceRanges": ["198.18.0.0/16"],
                "externalTrafficPolicy": "Local", "healthCheckNodePort": 31000,
                "publishNotReadyAddresses": false,
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}},
                "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                "allocateLoadBalancerNodePorts": true, "loadBalancerClass": "example.com/lb",
                "internalTrafficPolicy": "Cluster", "trafficDistribution": "PreferClose",
            },
            "status": {"loadBalancer": {"ingress": [
                {"ip": "198.18.9.7", "ipMode": "VIP",
                 "ports": [{"port": 80, "protocol": "TCP"}]},
            ]}},
        }))
        .expect("valid JSON Service");
        assert_eq!(valid(page), [from_json]);
    }

    #[test]
    fn a_protobuf_endpoint_slice_list_reads_as_its_json_does() {
        let pb = pb_discovery::EndpointSlice {
            metadata: Some(pb_meta("web-abc")),
            address_type: s("IPv4"),
            endpoints: vec![
                pb_discovery::Endpoint {
                    addresses: vec!["198.18.2.2".into()],
                    conditions: Some(pb_discovery::EndpointConditions {
                        ready: Some(true),
                        serving: Some(true),
                        terminating: Some(false),
                    }),
                    hostname: s("web-0"),
                    node_name: s("node-a"),
                    zone: s("zone-a"),
                    hints: Some(pb_discovery::EndpointHints {
                        for_zones: vec![pb_discovery::ForZone { name: s("zone-a") }],
                        for_nodes: vec![pb_discovery::ForNode { name: s("node-a") }],
                    }),
                    ..Default::default()
                },
                pb_discovery::Endpoint {
                    addresses: vec!["198.18.3.2".into()],
                    conditions: Some(pb_discovery::EndpointConditions {
                        ready: Some(false),
                        serving: Some(true),
                        terminating: Some(true),
                    }),
                    ..Default::default()
                },
            ],
            ports: vec![pb_discovery::EndpointPort {
                name: s("http"),
                protocol: s("TCP"),
                port: Some(8080),
                app_protocol: s("http"),
            }],
        };
        let pb_list = pb_discovery::EndpointSliceList {
            metadata: Some(pb_meta::ListMeta {
                resource_version: s("78"),
                // The last page: an empty token.
                r#continue: s(""),
                ..Default::default()
            }),
            items: vec![pb],
        };
        let page = list::<EndpointSlice>(&response(&pb_list)).expect("decodes");
        assert_eq!(page.resource_version.as_deref(), Some("78"));
        assert_eq!(page.continue_token, None);
        let from_json: EndpointSlice = serde_json::from_value(json!({
            "metadata": json_meta("web-abc"),
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["198.18.2.2"],
                 "conditions": {"ready": true, "serving": true, "terminating": false},
                 "hostname": "web-0", "nodeName": "node-a", "zone": "zone-a",
                 "hints": {"forZones": [{"name": "zone-a"}], "forNodes": [{"name": "node-a"}]}},
                {"addresses": ["198.18.3.2"],
                 "conditions": {"ready": false, "serving": true, "terminating": true}},
            ],
            "ports": [{"name": "http", "protocol": "TCP", "port": 8080, "appProtocol": "http"}],
        }))
        .expect("valid JSON EndpointSlice");
        assert_eq!(valid(page), [from_json]);
    }

    #[test]
    fn a_refusal_reads_as_its_code_reason_and_message() {
        let refusal = pb_meta::Status {
            status: s("Failure"),
            message: s("services is forbidden"),
            reason: s("Forbidden"),
            code: Some(403),
            ..Default::default()
        };
        assert_eq!(
            status(&response(&refusal)).expect("decodes"),
            (403, "Forbidden".into(), "services is forbidden".into())
        );
    }

    #[test]
    fn responses_not_as_the_api_server_writes_them_are_errors() {
        let body = |bytes: &[u8]| Bytes::copy_from_slice(bytes);
        assert!(matches!(
            status(&body(b"{\"code\": 403}")),
            Err(DecodeError::NoMagic)
        ));
        assert!(matches!(
            status(&body(&[MAGIC, &[0xff, 0xff]].concat())),
            Err(DecodeError::Prost(_))
        ));
        let empty = body(&[MAGIC, Unknown::default().encode_to_vec().as_slice()].concat());
        assert!(matches!(status(&empty), Err(DecodeError::NoBody)));
        assert!(matches!(
            Node::decode(Bytes::new()),
            Err(DecodeError::NotAsked)
        ));
        // A list cut short (see `list_reader` for the rest).
        assert!(matches!(
            list::<Service>(&body(&[MAGIC, &[0xff, 0xff]].concat())),
            Err(DecodeError::Truncated)
        ));
    }

    /// An item that does not decode is named and skipped; the items around it decode.
    #[test]
    fn a_bad_item_is_named_and_the_rest_of_its_page_decodes() {
        let good = |name: &str| {
            let mut service = pb_service();
            service.metadata = Some(pb_meta(name));
            Bytes::from(service.encode_to_vec())
        };
        // Its metadata, then a spec (field 2) with a varint where a message belongs.
        let bad = MetadataOnly {
            metadata: Some(pb_meta("broken")),
        };
        let bad = Bytes::from([bad.encode_to_vec().as_slice(), &[0x10, 0x01]].concat());
        let body = response(&EncodedList {
            metadata: Some(pb_meta::ListMeta {
                resource_version: s("79"),
                ..Default::default()
            }),
            items: vec![good("before"), bad, good("after")],
        });
        let page = list::<Service>(&body).expect("the list decodes");
        let items: Vec<_> = page
            .items
            .into_iter()
            .map(|item| match item {
                Decoded::Valid(object) => Ok(object.metadata.name.clone().unwrap_or_default()),
                Decoded::Invalid(invalid) => Err((
                    invalid.metadata.namespace.clone().unwrap_or_default(),
                    invalid.metadata.name.clone().unwrap_or_default(),
                    invalid.error.contains("wire type"),
                )),
            })
            .collect();
        assert_eq!(
            items,
            [
                Ok("before".to_owned()),
                Err(("shop".to_owned(), "broken".to_owned(), true)),
                Ok("after".to_owned()),
            ]
        );
    }
}
