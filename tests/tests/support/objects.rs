//! Kubernetes objects as JSON, for tests that need more than `manifests.rs` writes: endpoint
//! conditions, node names, topology hints, traffic policies, Nodes. JSON files hold one
//! document, so several objects go into a `v1 List`.

use std::net::Ipv4Addr;

use serde_json::{Value, json};

/// A ClusterIP Service `name` on `vip` with one TCP port `http` 80; `spec` is merged in.
pub fn service(name: &str, vip: Ipv4Addr, spec: &Value) -> Value {
    let mut svc = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": vip.to_string(),
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
        },
    });
    if let (Some(base), Some(extra)) = (svc["spec"].as_object_mut(), spec.as_object()) {
        base.extend(extra.clone());
    }
    svc
}

/// One endpoint of a slice: address plus whatever else it carries.
#[derive(Clone, Debug)]
pub struct Ep {
    pub addr: Ipv4Addr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node: Option<&'static str>,
    pub zone_hint: Option<&'static str>,
}

impl Ep {
    pub fn ready(addr: Ipv4Addr) -> Self {
        Self {
            addr,
            ready: true,
            serving: true,
            terminating: false,
            node: None,
            zone_hint: None,
        }
    }

    /// Shutting down but still serving (a pod in its termination grace period).
    pub fn terminating(addr: Ipv4Addr) -> Self {
        Self {
            ready: false,
            terminating: true,
            ..Self::ready(addr)
        }
    }

    pub fn on_node(self, node: &'static str) -> Self {
        Self {
            node: Some(node),
            ..self
        }
    }

    pub fn hinted_for(self, zone: &'static str) -> Self {
        Self {
            zone_hint: Some(zone),
            ..self
        }
    }

    fn to_json(&self) -> Value {
        let mut ep = json!({
            "addresses": [self.addr.to_string()],
            "conditions": {
                "ready": self.ready,
                "serving": self.serving,
                "terminating": self.terminating,
            },
        });
        if let Some(node) = self.node {
            ep["nodeName"] = json!(node);
        }
        if let Some(zone) = self.zone_hint {
            ep["hints"] = json!({"forZones": [{"name": zone}]});
        }
        ep
    }
}

/// An EndpointSlice of `service` with port `http` on `port`.
pub fn slice(name: &str, service: &str, port: u16, endpoints: &[Ep]) -> Value {
    slice_ports(name, service, &[("http", port, "TCP")], endpoints)
}

/// An EndpointSlice of `service` whose endpoints listen on `ports` (name, port, protocol).
pub fn slice_ports(
    name: &str,
    service: &str,
    ports: &[(&str, u16, &str)],
    endpoints: &[Ep],
) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(name, port, protocol)| json!({"name": name, "port": port, "protocol": protocol}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": endpoints.iter().map(Ep::to_json).collect::<Vec<_>>(),
    })
}

/// A Node `name` in `zone`.
pub fn node(name: &str, zone: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}},
    })
}

/// Objects as one `v1 List` document.
pub fn list(items: &[Value]) -> String {
    json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}
