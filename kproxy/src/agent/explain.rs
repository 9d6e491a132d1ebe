//! The agent's half of `kproxy explain`: which frontends a destination matches, the Service
//! behind each, how its endpoints were chosen, and what is programmed for it. The runtime
//! half (round-robin position, affinity, conntrack) the command reads from the pinned maps.

use std::net::SocketAddr;

use super::Agent;
use crate::{
    http::agent_api::{FrontendExplanation, ProgrammedBackends},
    model::{FrontendKey, Protocol, Scope},
};

impl Agent {
    /// The frontends packets to `dst` (`proto`) meet: its address's, both scopes, and a
    /// NodePort of its family when `dst` is one of this node's NodePort addresses.
    pub(super) fn explain(&self, dst: SocketAddr, proto: Protocol) -> Vec<FrontendExplanation> {
        let exact = FrontendKey::new(dst.ip(), dst.port(), proto);
        let mut keys = vec![exact, exact.with_scope(Scope::Internal)];
        if self.node_addrs.node_port_addresses().contains(&dst.ip()) {
            let node_port = FrontendKey::node_port(dst.is_ipv6(), dst.port(), proto);
            keys.extend([node_port, node_port.with_scope(Scope::Internal)]);
        }
        keys.iter()
            .filter_map(|key| {
                let frontend = self.cluster.desired().get(key)?;
                let applies_to = match (key.scope, frontend.external_local) {
                    (Scope::Internal, _) => "clients on this node (pods and the node itself)",
                    (Scope::All, true) => "clients elsewhere (externalTrafficPolicy Local)",
                    (Scope::All, false) => "every client",
                };
                Some(FrontendExplanation {
                    name: self.frontend_name(key, frontend),
                    applies_to: applies_to.to_owned(),
                    affinity_timeout_s: frontend.affinity_timeout_s,
                    rejects_when_empty: frontend.when_empty == crate::model::WhenEmpty::Reject,
                    source_ranges: frontend
                        .source_ranges
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                    choice: self.cluster.explain(key),
                    programmed: self
                        .programmed
                        .frontends()
                        .get(key)
                        .map(|p| ProgrammedBackends {
                            svc_id: p.svc_id,
                            backends: p
                                .backends
                                .iter()
                                .map(|(endpoint, id)| (endpoint.to_string(), *id))
                                .collect(),
                        }),
                    maglev_table_size: self
                        .programmed
                        .frontends()
                        .get(key)
                        .filter(|p| p.settings.maglev)
                        .map(|_| self.programmed.maglev_table_size()),
                })
            })
            .collect()
    }
}
