//! Why a frontend uses the endpoints it uses: the same inputs the choice was made from
//! (`ClusterState::choose` through `topology::categorize`), described endpoint by endpoint,
//! for `kproxy explain`.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{ClusterState, FrontendKey, FrontendKind, ObjectKey, ServiceSpec};
use crate::model::{
    Endpoint,
    endpoints::{self, Family},
    topology::{self, Locality, TopologyMode},
};

/// One endpoint the frontend's Service lists, and whether (and why not) new flows may go
/// there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainedEndpoint {
    pub endpoint: String,
    pub used: bool,
    /// Why it is not used, or why it is used although it is not ready.
    pub why: Option<String>,
}

/// How a frontend's endpoints were chosen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointChoice {
    /// `Cluster` (every node's endpoints) or `Local` (this node's), and which setting says so.
    pub policy: String,
    /// How topology hints narrowed the choice.
    pub topology: String,
    pub endpoints: Vec<ExplainedEndpoint>,
}

impl ClusterState {
    /// Whether the Service behind frontend `key` has internalTrafficPolicy Local (`None`:
    /// no Service serves it).
    pub fn internal_local(&self, key: &FrontendKey) -> Option<bool> {
        Some(self.owner_spec(key)?.1.internal_local)
    }

    /// The Service that serves frontend `key`, and what it asks for.
    fn owner_spec(&self, key: &FrontendKey) -> Option<(&ObjectKey, &ServiceSpec)> {
        let (service, kept) = self.services.get_key_value(self.holder(key)?)?;
        Some((service, kept.spec.as_ref()?))
    }

    /// How the endpoints of frontend `key` were chosen; `None` when no Service serves it.
    pub fn explain(&self, key: &FrontendKey) -> Option<EndpointChoice> {
        let frontend = self.desired.get(key)?;
        let (service, spec) = self.owner_spec(key)?;
        let family = if key.addr.is_ipv6() {
            Family::V6
        } else {
            Family::V4
        };
        let port = spec
            .ports
            .iter()
            .find(|p| p.name == frontend.service.port && p.proto == key.proto)?;
        let slices = self.slice_infos(service);
        let infos = endpoints::endpoints_for(&slices, port, family, &self.node.name);
        let here = Locality {
            node: &self.node.name,
            zone: self.node.zone(),
        };
        let internal = frontend.kind == FrontendKind::ClusterIp;
        let local_policy = frontend.external_local || (internal && spec.internal_local);
        let policy = match (local_policy, internal) {
            (true, true) => "Local (internalTrafficPolicy: this node's endpoints)",
            (true, false) => "Local (externalTrafficPolicy: this node's endpoints)",
            (false, true) => "Cluster (internalTrafficPolicy: every node's endpoints)",
            (false, false) => "Cluster (externalTrafficPolicy: every node's endpoints)",
        };
        let mode = topology::topology_mode(&infos, &here);
        let fallback = topology::fell_back(&infos, local_policy, mode, &here);
        let used: BTreeSet<Endpoint> = frontend.endpoints.iter().copied().collect();
        let topology = match (local_policy, mode) {
            (true, _) => "not applied (traffic policy Local)".to_owned(),
            (false, TopologyMode::Any) => "no hints applied".to_owned(),
            (false, TopologyMode::SameNode) => {
                format!("endpoints hinted for this node ({}) only", here.node)
            }
            (false, TopologyMode::SameZone) => {
                format!("endpoints hinted for this node's zone ({}) only", here.zone)
            }
        };
        let endpoints = infos
            .iter()
            .map(|info| {
                let is_used = used.contains(&info.endpoint);
                ExplainedEndpoint {
                    endpoint: info.endpoint.to_string(),
                    used: is_used,
                    why: topology::why_unused(info, is_used, local_policy, fallback, mode, &here),
                }
            })
            .collect();
        Some(EndpointChoice {
            policy: policy.to_owned(),
            topology,
            endpoints,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        Change, LABEL_ZONE, NodeInfo, Protocol,
        fixtures::{SliceBuilder, service, slice},
    };

    /// Each endpoint's verdict for frontend `key` of `svc` with the endpoints of `slice`, on
    /// node-a in zone-1.
    fn verdicts(
        svc: &k8s_openapi::api::core::v1::Service,
        slice: SliceBuilder,
        key: FrontendKey,
    ) -> (EndpointChoice, Vec<String>) {
        let mut node = NodeInfo::named("node-a");
        node.labels.insert(LABEL_ZONE.into(), "zone-1".into());
        let mut state = ClusterState::default();
        state.set_node(node);
        state.apply([Change::service(svc), Change::slice(&slice.build())]);
        let choice = state.explain(&key).expect("a frontend");
        let lines = choice
            .endpoints
            .iter()
            .map(|e| format!("{} {}", e.endpoint, e.why.as_deref().unwrap_or("used")))
            .collect();
        (choice, lines)
    }

    fn web() -> SliceBuilder {
        slice("default", "web-1", "web").port("http", 8080, "TCP")
    }

    const VIP: &str = "198.19.0.10";

    fn key(addr: &str) -> FrontendKey {
        FrontendKey::new(addr.parse().expect("ip"), 80, Protocol::Tcp)
    }

    #[test]
    fn each_endpoint_says_why_it_is_used_or_not() {
        let cluster_ip = service("default", "web", VIP)
            .port("http", 80, "TCP")
            .build();
        let (choice, lines) = verdicts(
            &cluster_ip,
            web()
                .endpoint("198.18.1.2", Some(true))
                .endpoint("198.18.2.2", Some(false))
                .endpoint("198.18.3.2", None)
                .serving_terminating(),
            key(VIP),
        );
        assert!(choice.policy.starts_with("Cluster"), "{choice:?}");
        assert_eq!(choice.topology, "no hints applied");
        assert_eq!(
            lines,
            [
                "198.18.1.2:8080 used",
                "198.18.2.2:8080 not used: not ready",
                "198.18.3.2:8080 not used: terminating (ready endpoints exist, so terminating ones take no new flows)",
            ]
        );

        // No ready endpoint: the terminating one serves, and says so.
        let (_, lines) = verdicts(
            &cluster_ip,
            web().endpoint("198.18.3.2", None).serving_terminating(),
            key(VIP),
        );
        assert_eq!(
            lines,
            ["198.18.3.2:8080 used: serving while terminating (no ready endpoint to use)"]
        );

        // Topology hints: only the endpoint hinted for zone-1.
        let (choice, lines) = verdicts(
            &cluster_ip,
            web()
                .endpoint("198.18.1.2", Some(true))
                .for_zones(&["zone-1"])
                .endpoint("198.18.2.2", Some(true))
                .for_zones(&["zone-2"]),
            key(VIP),
        );
        assert_eq!(
            choice.topology,
            "endpoints hinted for this node's zone (zone-1) only"
        );
        assert_eq!(
            lines,
            [
                "198.18.1.2:8080 used",
                "198.18.2.2:8080 not used: hinted for other zones than \"zone-1\"",
            ]
        );

        // internalTrafficPolicy Local: this node's endpoints only.
        let local = service("default", "web", VIP)
            .port("http", 80, "TCP")
            .internal_traffic_policy("Local")
            .build();
        let (choice, lines) = verdicts(
            &local,
            web()
                .endpoint("198.18.1.2", Some(true))
                .node("node-a")
                .endpoint("198.18.2.2", Some(true))
                .node("node-b"),
            key(VIP),
        );
        assert!(
            choice.policy.starts_with("Local (internalTrafficPolicy"),
            "{choice:?}"
        );
        assert_eq!(
            lines,
            [
                "198.18.1.2:8080 used",
                "198.18.2.2:8080 not used: on another node (traffic policy Local: this node's endpoints only)",
            ]
        );
    }

    #[test]
    fn an_external_local_frontend_and_its_internal_entry_explain_their_own_sets() {
        let lb = service("default", "web", VIP)
            .type_("LoadBalancer")
            .port("http", 80, "TCP")
            .node_port(30_080)
            .external_traffic_policy("Local")
            .load_balancer_ingress(&["198.19.9.1"])
            .build();
        let endpoints = web()
            .endpoint("198.18.1.2", Some(true))
            .node("node-a")
            .endpoint("198.18.2.2", Some(true))
            .node("node-b");
        let (choice, lines) = verdicts(&lb, endpoints.clone(), key("198.19.9.1"));
        assert!(
            choice.policy.starts_with("Local (externalTrafficPolicy"),
            "{choice:?}"
        );
        assert_eq!(
            lines[1],
            "198.18.2.2:8080 not used: on another node (traffic policy Local: this node's endpoints only)"
        );
        let (choice, lines) = verdicts(
            &lb,
            endpoints,
            key("198.19.9.1").with_scope(crate::model::Scope::Internal),
        );
        assert!(
            choice.policy.starts_with("Cluster (externalTrafficPolicy"),
            "{choice:?}"
        );
        assert_eq!(lines, ["198.18.1.2:8080 used", "198.18.2.2:8080 used"]);
    }
}
