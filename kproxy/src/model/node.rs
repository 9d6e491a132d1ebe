//! The node kproxy runs on, as far as Service semantics care: its name (endpoint
//! `nodeName`, `forNodes` hints), its zone (`forZones` hints) and its addresses.

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::api::core::v1::Node;

use super::addr::parse_ip_sloppy;

/// The label kube-proxy reads the node's zone from.
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `InternalIP` and `ExternalIP` addresses from the Node's status, in its order.
    pub addresses: Vec<IpAddr>,
}

impl NodeInfo {
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Self::default()
        }
    }

    /// What kproxy uses of a Node object. Addresses it cannot read are left out.
    pub fn from_node(node: &Node) -> Self {
        let addresses = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
            .filter_map(|a| parse_ip_sloppy(&a.address))
            .collect();
        Self {
            name: node.metadata.name.clone().unwrap_or_default(),
            labels: node.metadata.labels.clone().unwrap_or_default(),
            addresses,
        }
    }

    /// The node's zone ("" when it has none).
    pub fn zone(&self) -> &str {
        self.labels.get(LABEL_ZONE).map_or("", String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};

    use super::*;

    #[test]
    fn reads_name_zone_and_usable_addresses() {
        let node = Node {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("node-a".into()),
                labels: Some(BTreeMap::from([(LABEL_ZONE.into(), "zone-1".into())])),
                ..Default::default()
            },
            status: Some(NodeStatus {
                addresses: Some(
                    [
                        ("Hostname", "node-a"),
                        ("InternalIP", "198.18.0.2"),
                        ("ExternalIP", "2001:db8::2"),
                        ("InternalIP", "not-an-address"),
                    ]
                    .map(|(t, a)| NodeAddress {
                        type_: t.into(),
                        address: a.into(),
                    })
                    .into(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        };
        let info = NodeInfo::from_node(&node);
        assert_eq!(info.name, "node-a");
        assert_eq!(info.zone(), "zone-1");
        assert_eq!(
            info.addresses,
            vec![
                "198.18.0.2".parse::<IpAddr>().expect("address"),
                "2001:db8::2".parse().expect("address"),
            ]
        );
        assert_eq!(NodeInfo::named("x").zone(), "");
    }
}
