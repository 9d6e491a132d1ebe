//! The node kproxy runs on, as far as Service semantics care: its name (endpoint
//! `nodeName`, `forNodes` hints), its zone (`forZones` hints), its addresses (its primary IP
//! for `--nodeport-addresses primary` and loadBalancerSourceRanges) and its pod CIDRs
//! (`--detect-local-mode NodeCIDR`).

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;

use super::addr::{parse_cidr_sloppy, parse_ip_sloppy};

/// The label kube-proxy reads the node's zone from.
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
/// The taint the Cluster Autoscaler puts on a node it is about to delete; kube-proxy's
/// `/healthz` fails on such a node (pkg/proxy/healthcheck/proxy_health.go).
pub const TAINT_TO_BE_DELETED: &str = "ToBeDeletedByClusterAutoscaler";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `InternalIP` addresses from the Node's status, then `ExternalIP` ones, each in the
    /// Node's order (kube-proxy's `GetNodeHostIPs` order).
    pub addresses: Vec<IpAddr>,
    /// `spec.podCIDRs` (or `spec.podCIDR` when that list is empty), in order.
    pub pod_cidrs: Vec<IpNet>,
    /// The node is going away: being deleted (`deletionTimestamp`) or tainted
    /// [`TAINT_TO_BE_DELETED`]. kube-proxy's `/healthz` then answers 503 ("not eligible"),
    /// so load balancers drain the node before it goes.
    pub leaving: bool,
}

impl NodeInfo {
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Self::default()
        }
    }

    /// What kproxy uses of a Node object. Addresses and CIDRs it cannot read are left out.
    pub fn from_node(node: &Node) -> Self {
        let listed = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let of_type = |t: &'static str| {
            listed
                .iter()
                .filter(move |a| a.type_ == t)
                .filter_map(|a| parse_ip_sloppy(&a.address))
        };
        let addresses = of_type("InternalIP").chain(of_type("ExternalIP")).collect();
        let spec = node.spec.as_ref();
        let pod_cidrs = match spec.and_then(|s| s.pod_cidrs.as_ref()) {
            Some(list) if !list.is_empty() => list.iter().map(String::as_str).collect(),
            _ => spec
                .and_then(|s| s.pod_cidr.as_deref())
                .into_iter()
                .collect::<Vec<&str>>(),
        };
        let tainted = spec
            .and_then(|s| s.taints.as_deref())
            .unwrap_or_default()
            .iter()
            .any(|t| t.key == TAINT_TO_BE_DELETED);
        Self {
            name: node.metadata.name.clone().unwrap_or_default(),
            labels: node.metadata.labels.clone().unwrap_or_default(),
            leaving: tainted || node.metadata.deletion_timestamp.is_some(),
            addresses,
            pod_cidrs: pod_cidrs
                .into_iter()
                .filter_map(|c| parse_cidr_sloppy(c.trim()))
                .collect(),
        }
    }

    /// The node's zone ("" when it has none).
    pub fn zone(&self) -> &str {
        self.labels.get(LABEL_ZONE).map_or("", String::as_str)
    }

    /// The node's primary IP of a family (IPv6 when `v6`): its first `InternalIP` of that
    /// family, else its first `ExternalIP` (kube-proxy's `GetNodeHostIPs`).
    pub fn primary_ip(&self, v6: bool) -> Option<IpAddr> {
        self.addresses.iter().copied().find(|a| a.is_ipv6() == v6)
    }

    /// Makes `ip` the primary IP of its family (kube-proxy's `--bind-address`).
    pub fn make_primary(&mut self, ip: IpAddr) {
        self.addresses.retain(|&a| a != ip);
        self.addresses.insert(0, ip);
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};

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

    fn node_with(addresses: &[(&str, &str)], spec: Option<NodeSpec>) -> Node {
        Node {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("node-a".into()),
                ..Default::default()
            },
            spec,
            status: Some(NodeStatus {
                addresses: Some(
                    addresses
                        .iter()
                        .map(|(t, a)| NodeAddress {
                            type_: (*t).into(),
                            address: (*a).into(),
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn primary_ips_are_the_first_internal_ip_of_each_family_then_external() {
        // (addresses in the Node's order, primary IPv4, primary IPv6)
        type Case<'a> = (&'a [(&'a str, &'a str)], Option<&'a str>, Option<&'a str>);
        let cases: &[Case<'_>] = &[
            (&[], None, None),
            (
                &[("ExternalIP", "203.0.113.2"), ("InternalIP", "198.18.0.2")],
                Some("198.18.0.2"),
                None,
            ),
            (
                &[
                    ("InternalIP", "2001:db8::2"),
                    ("InternalIP", "198.18.0.2"),
                    ("InternalIP", "198.18.0.3"),
                ],
                Some("198.18.0.2"),
                Some("2001:db8::2"),
            ),
            (
                &[("ExternalIP", "203.0.113.2"), ("Hostname", "198.18.0.9")],
                Some("203.0.113.2"),
                None,
            ),
            (
                &[("InternalIP", "bad"), ("ExternalIP", "2001:db8::9")],
                None,
                Some("2001:db8::9"),
            ),
        ];
        for (addresses, v4, v6) in cases {
            let info = NodeInfo::from_node(&node_with(addresses, None));
            let text = |a: Option<IpAddr>| a.map(|a| a.to_string());
            assert_eq!(
                text(info.primary_ip(false)).as_deref(),
                *v4,
                "{addresses:?}"
            );
            assert_eq!(text(info.primary_ip(true)).as_deref(), *v6, "{addresses:?}");
        }
    }

    #[test]
    fn pod_cidrs_come_from_pod_cidrs_else_pod_cidr() {
        // (podCIDR, podCIDRs, what is read)
        type Case<'a> = (Option<&'a str>, Option<&'a [&'a str]>, &'a [&'a str]);
        let cases: &[Case<'_>] = &[
            (None, None, &[]),
            (Some("10.244.1.0/24"), None, &["10.244.1.0/24"]),
            (Some("10.244.1.0/24"), Some(&[]), &["10.244.1.0/24"]),
            (
                Some("10.244.1.0/24"),
                Some(&["10.244.1.0/24", "fd00:10:244:1::/64"]),
                &["10.244.1.0/24", "fd00:10:244:1::/64"],
            ),
            // Unreadable ones are left out; host bits are cleared as ParseCIDR does.
            (
                None,
                Some(&["nonsense", "10.244.2.7/24"]),
                &["10.244.2.0/24"],
            ),
        ];
        for (pod_cidr, pod_cidrs, want) in cases {
            let spec = NodeSpec {
                pod_cidr: pod_cidr.map(Into::into),
                pod_cidrs: pod_cidrs.map(|l| l.iter().map(|c| (*c).to_owned()).collect()),
                ..NodeSpec::default()
            };
            let info = NodeInfo::from_node(&node_with(&[], Some(spec)));
            let got: Vec<String> = info.pod_cidrs.iter().map(ToString::to_string).collect();
            assert_eq!(got, *want, "{pod_cidr:?} {pod_cidrs:?}");
        }
    }

    #[test]
    fn a_node_being_deleted_or_tainted_for_deletion_is_leaving() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        // (deletionTimestamp set, taint keys, leaving)
        let cases: &[(bool, &[&str], bool)] = &[
            (false, &[], false),
            (false, &["node.kubernetes.io/unschedulable"], false),
            (
                false,
                &["node.kubernetes.io/unschedulable", TAINT_TO_BE_DELETED],
                true,
            ),
            (true, &[], true),
            (true, &[TAINT_TO_BE_DELETED], true),
        ];
        for (deleting, taints, leaving) in cases {
            let spec = NodeSpec {
                taints: Some(
                    taints
                        .iter()
                        .map(|key| k8s_openapi::api::core::v1::Taint {
                            key: (*key).to_owned(),
                            effect: "NoSchedule".into(),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..NodeSpec::default()
            };
            let mut node = node_with(&[], Some(spec));
            if *deleting {
                node.metadata.deletion_timestamp =
                    Some(Time(k8s_openapi::chrono::DateTime::UNIX_EPOCH));
            }
            assert_eq!(
                NodeInfo::from_node(&node).leaving,
                *leaving,
                "deleting {deleting}, taints {taints:?}"
            );
        }
    }
}
