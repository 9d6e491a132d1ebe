//! Which traffic comes from this node's pods (kube-proxy's `--detect-local-mode`,
//! pkg/proxy/util/localdetector.go and cmd/kube-proxy/app/server_linux.go
//! `getLocalDetectors`): cluster-IP traffic from elsewhere is masqueraded, and pod traffic
//! to an externalTrafficPolicy Local frontend short-circuits to all endpoints. Without a
//! detector neither happens.

use ipnet::IpNet;
use kproxy_common::config::{CFG_F_LOCAL_BY_CIDR, CFG_F_LOCAL_BY_IFACE, CFG_F_MASQUERADE_ALL};

use super::{NodeInfo, addr::parse_cidr_sloppy};

/// How local traffic is told apart, with what it needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum LocalDetection {
    /// No detection (kube-proxy's no-op detector).
    #[default]
    None,
    /// Sources in the cluster's pod CIDRs (`--cluster-cidr`) are local.
    ClusterCidr(Vec<IpNet>),
    /// Sources in this node's `spec.podCIDRs` are local.
    NodeCidr,
    /// Packets entering through an interface whose name starts with this are local.
    InterfaceNamePrefix(String),
    /// Packets entering through this bridge are local.
    BridgeInterface(String),
}

impl LocalDetection {
    /// kube-proxy's flags: `--detect-local-mode` (unset means ClusterCIDR, which without a
    /// `--cluster-cidr` detects nothing), `--cluster-cidr` (comma-separated, one per
    /// family), `--pod-interface-name-prefix`, `--pod-bridge-interface`; validated as
    /// kube-proxy validates them.
    pub fn from_flags(
        mode: Option<&str>,
        cluster_cidrs: &[String],
        interface_name_prefix: Option<&str>,
        bridge_interface: Option<&str>,
    ) -> Result<Self, String> {
        let non_empty = |v: Option<&str>, flag: &str, mode: &str| -> Result<String, String> {
            match v.map(str::trim) {
                Some(v) if !v.is_empty() => Ok(v.to_owned()),
                _ => Err(format!(
                    "--detect-local-mode={mode} needs {flag} (it must not be empty)"
                )),
            }
        };
        match mode.map_or("", str::trim) {
            "" | "ClusterCIDR" => {
                let cidrs: Vec<&str> = cluster_cidrs
                    .iter()
                    .map(|c| c.trim())
                    .filter(|c| !c.is_empty())
                    .collect();
                if cidrs.is_empty() {
                    return Ok(Self::None);
                }
                if cidrs.len() > 2 {
                    return Err(format!(
                        "--cluster-cidr {}: must be a single CIDR or a dual-stack pair of CIDRs",
                        cidrs.join(",")
                    ));
                }
                let parsed: Vec<IpNet> = cidrs
                    .iter()
                    .map(|c| {
                        parse_cidr_sloppy(c).ok_or_else(|| {
                            format!("--cluster-cidr {c:?}: must be a valid CIDR block")
                        })
                    })
                    .collect::<Result<_, _>>()?;
                if let [a, b] = parsed.as_slice()
                    && a.addr().is_ipv4() == b.addr().is_ipv4()
                {
                    return Err(format!(
                        "--cluster-cidr {}: two CIDRs must be a dual-stack pair (one IPv4, one IPv6)",
                        cidrs.join(",")
                    ));
                }
                Ok(Self::ClusterCidr(parsed))
            }
            "NodeCIDR" => Ok(Self::NodeCidr),
            "InterfaceNamePrefix" => Ok(Self::InterfaceNamePrefix(non_empty(
                interface_name_prefix,
                "--pod-interface-name-prefix",
                "InterfaceNamePrefix",
            )?)),
            "BridgeInterface" => Ok(Self::BridgeInterface(non_empty(
                bridge_interface,
                "--pod-bridge-interface",
                "BridgeInterface",
            )?)),
            other => Err(format!(
                "--detect-local-mode {other:?}: must be one of ClusterCIDR, NodeCIDR, \
                 BridgeInterface, InterfaceNamePrefix"
            )),
        }
    }

    /// The pod CIDRs whose sources are local, at most one per family (`KP_LOCAL_CIDRS`,
    /// `KP_LOCAL_CIDRS6`): kube-proxy's detector of each family uses the first CIDR of that
    /// family, of `--cluster-cidr` or of the node's `spec.podCIDRs`. Empty when detection
    /// is not by address or has no CIDR.
    pub fn local_cidrs(&self, node: &NodeInfo) -> Vec<IpNet> {
        let first_of_each_family = |cidrs: &[IpNet]| -> Vec<IpNet> {
            [false, true]
                .into_iter()
                .filter_map(|v6| cidrs.iter().find(|c| c.addr().is_ipv6() == v6).copied())
                .collect()
        };
        match self {
            Self::ClusterCidr(cidrs) => first_of_each_family(cidrs),
            Self::NodeCidr => first_of_each_family(&node.pod_cidrs),
            _ => Vec::new(),
        }
    }

    /// Whether detection depends on the Node object (its pod CIDRs).
    pub fn needs_node(&self) -> bool {
        matches!(self, Self::NodeCidr)
    }

    /// Whether detection is by interface: interfaces `pod_interface` accepts are marked
    /// `IFACE_F_POD` (by whoever watches interfaces).
    pub fn by_interface(&self) -> bool {
        matches!(
            self,
            Self::InterfaceNamePrefix(_) | Self::BridgeInterface(_)
        )
    }

    /// Whether packets entering through interface `name` come from this node's pods:
    /// kube-proxy's `-i <prefix>+` (InterfaceNamePrefix) or `-i <bridge>` (BridgeInterface).
    pub fn pod_interface(&self, name: &str) -> bool {
        match self {
            Self::InterfaceNamePrefix(prefix) => name.starts_with(prefix.as_str()),
            Self::BridgeInterface(bridge) => name == bridge,
            _ => false,
        }
    }
}

/// What the datapath's configuration says about local traffic: the `CFG_F_*` flags of
/// `KP_CONFIG` kproxy sets from its flags, and `KP_LOCAL_CIDRS` and `KP_LOCAL_CIDRS6`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalConfig {
    /// `CFG_F_MASQUERADE_ALL`, `CFG_F_LOCAL_BY_CIDR`, `CFG_F_LOCAL_BY_IFACE`.
    pub flags: u32,
    /// The local CIDRs of both families.
    pub cidrs: Vec<IpNet>,
}

impl LocalConfig {
    /// This configuration for a datapath without IPv6 maps: its IPv4 CIDRs only, and
    /// detection by address only if one is left (as `LocalDetection::datapath_config`
    /// sets it for a detector without a CIDR).
    #[must_use]
    pub fn ipv4_only(mut self) -> Self {
        self.cidrs.retain(|c| c.addr().is_ipv4());
        if self.cidrs.is_empty() {
            self.flags &= !CFG_F_LOCAL_BY_CIDR;
        }
        self
    }
}

/// The `KP_CONFIG` flags `LocalConfig` owns.
pub const LOCAL_CONFIG_FLAGS: u32 =
    CFG_F_MASQUERADE_ALL | CFG_F_LOCAL_BY_CIDR | CFG_F_LOCAL_BY_IFACE;

impl LocalDetection {
    /// The datapath configuration for this detection and `--masquerade-all` on `node`.
    /// Detection by address is on only with a CIDR to match (kube-proxy's detector is a
    /// no-op without one). `node` is `None` until the agent has read the cluster: NodeCIDR
    /// detection then keeps what `current` (the pinned maps) says, so a restart does not
    /// switch it off meanwhile.
    pub fn datapath_config(
        &self,
        masquerade_all: bool,
        node: Option<&NodeInfo>,
        current: &LocalConfig,
    ) -> LocalConfig {
        let cidrs = match node {
            None if self.needs_node() => current.cidrs.clone(),
            None => self.local_cidrs(&NodeInfo::default()),
            Some(node) => self.local_cidrs(node),
        };
        let mut flags = 0;
        if masquerade_all {
            flags |= CFG_F_MASQUERADE_ALL;
        }
        if !cidrs.is_empty() {
            flags |= CFG_F_LOCAL_BY_CIDR;
        }
        if self.by_interface() {
            flags |= CFG_F_LOCAL_BY_IFACE;
        }
        LocalConfig { flags, cidrs }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(
        mode: Option<&str>,
        cidrs: &str,
        prefix: Option<&str>,
        bridge: Option<&str>,
    ) -> Result<LocalDetection, String> {
        let cidrs: Vec<String> = cidrs.split(',').map(str::to_owned).collect();
        LocalDetection::from_flags(mode, &cidrs, prefix, bridge)
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("test cidr")
    }

    /// (mode, --cluster-cidr, prefix, bridge, detection or a part of the error)
    type FlagCase<'a> = (
        Option<&'a str>,
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
        Result<LocalDetection, &'a str>,
    );

    #[test]
    fn flags_are_read_and_validated_like_kube_proxy() {
        // (mode, --cluster-cidr, prefix, bridge, detection or a part of the error)
        let cases: Vec<FlagCase<'_>> = vec![
            (None, "", None, None, Ok(LocalDetection::None)),
            (
                None,
                "10.244.0.0/16",
                None,
                None,
                Ok(LocalDetection::ClusterCidr(vec![net("10.244.0.0/16")])),
            ),
            (
                Some("ClusterCIDR"),
                "10.244.0.0/16,fd00:10:244::/56",
                None,
                None,
                Ok(LocalDetection::ClusterCidr(vec![
                    net("10.244.0.0/16"),
                    net("fd00:10:244::/56"),
                ])),
            ),
            (
                Some("ClusterCIDR"),
                "",
                None,
                None,
                Ok(LocalDetection::None),
            ),
            (
                Some("ClusterCIDR"),
                "10.244.0.0/16,10.245.0.0/16",
                None,
                None,
                Err("dual-stack pair"),
            ),
            (
                Some("ClusterCIDR"),
                "10.0.0.0/8,fd00::/8,10.1.0.0/16",
                None,
                None,
                Err("single CIDR or a dual-stack pair"),
            ),
            (None, "10.244.0.0", None, None, Err("valid CIDR")),
            // Another mode ignores --cluster-cidr.
            (
                Some("NodeCIDR"),
                "nonsense",
                None,
                None,
                Ok(LocalDetection::NodeCidr),
            ),
            (
                Some("InterfaceNamePrefix"),
                "",
                Some("veth"),
                None,
                Ok(LocalDetection::InterfaceNamePrefix("veth".into())),
            ),
            (
                Some("InterfaceNamePrefix"),
                "",
                None,
                None,
                Err("needs --pod-interface-name-prefix"),
            ),
            (
                Some("InterfaceNamePrefix"),
                "",
                Some(""),
                Some("cni0"),
                Err("needs --pod-interface-name-prefix"),
            ),
            (
                Some("BridgeInterface"),
                "",
                None,
                Some("cni0"),
                Ok(LocalDetection::BridgeInterface("cni0".into())),
            ),
            (
                Some("BridgeInterface"),
                "",
                Some("veth"),
                None,
                Err("needs --pod-bridge-interface"),
            ),
            (Some("clustercidr"), "", None, None, Err("must be one of")),
        ];
        for (mode, cidrs, prefix, bridge, want) in cases {
            let got = flags(mode, cidrs, prefix, bridge);
            match (&got, &want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{mode:?} {cidrs:?}"),
                (Err(got), Err(part)) => {
                    assert!(got.contains(part), "{mode:?} {cidrs:?}: {got}");
                }
                _ => panic!("{mode:?} {cidrs:?}: got {got:?}, wanted {want:?}"),
            }
        }
    }

    #[test]
    fn local_cidrs_are_the_first_cidr_of_each_family_of_the_cluster_or_the_node() {
        let mut node = NodeInfo::named("node-a");
        node.pod_cidrs = vec![
            net("fd00:10:244:1::/64"),
            net("10.244.1.0/24"),
            net("10.250.1.0/24"),
            net("fd00:10:250:1::/64"),
        ];
        let cases = [
            (
                LocalDetection::ClusterCidr(vec![net("fd00::/56"), net("10.244.0.0/16")]),
                vec![net("10.244.0.0/16"), net("fd00::/56")],
            ),
            (
                LocalDetection::ClusterCidr(vec![net("fd00::/56")]),
                vec![net("fd00::/56")],
            ),
            (
                LocalDetection::ClusterCidr(vec![net("10.244.0.0/16")]),
                vec![net("10.244.0.0/16")],
            ),
            (
                LocalDetection::NodeCidr,
                vec![net("10.244.1.0/24"), net("fd00:10:244:1::/64")],
            ),
            (LocalDetection::InterfaceNamePrefix("veth".into()), vec![]),
            (LocalDetection::None, vec![]),
        ];
        for (detection, want) in cases {
            assert_eq!(detection.local_cidrs(&node), want, "{detection:?}");
        }
        assert_eq!(
            LocalDetection::NodeCidr.local_cidrs(&NodeInfo::named("no-cidrs")),
            vec![],
            "a Node without podCIDRs detects nothing"
        );
        assert!(LocalDetection::NodeCidr.needs_node());
        assert!(!LocalDetection::ClusterCidr(vec![]).needs_node());
    }

    #[test]
    fn pod_interfaces_are_matched_by_prefix_or_by_name() {
        let prefix = LocalDetection::InterfaceNamePrefix("veth".into());
        let bridge = LocalDetection::BridgeInterface("cni0".into());
        // (interface, by prefix, by bridge)
        let cases = [
            ("veth1234", true, false),
            ("veth", true, false),
            ("eth0", false, false),
            ("cni0", false, true),
            ("cni01", false, false),
            ("xveth", false, false),
        ];
        for (name, by_prefix, by_bridge) in cases {
            assert_eq!(prefix.pod_interface(name), by_prefix, "{name}");
            assert_eq!(bridge.pod_interface(name), by_bridge, "{name}");
            assert!(!LocalDetection::NodeCidr.pod_interface(name));
            assert!(!LocalDetection::None.pod_interface(name));
        }
        assert!(prefix.by_interface() && bridge.by_interface());
        assert!(!LocalDetection::NodeCidr.by_interface());
    }

    #[test]
    fn datapath_config_follows_the_detection_the_node_and_masquerade_all() {
        let mut node = NodeInfo::named("node-a");
        node.pod_cidrs = vec![net("10.244.1.0/24")];
        let pinned = LocalConfig {
            flags: CFG_F_LOCAL_BY_CIDR,
            cidrs: vec![net("10.244.9.0/24")],
        };
        let cluster = LocalDetection::ClusterCidr(vec![net("10.244.0.0/16")]);
        let dual_stack =
            LocalDetection::ClusterCidr(vec![net("fd00:10:244::/56"), net("10.244.0.0/16")]);
        let prefix = LocalDetection::InterfaceNamePrefix("veth".into());
        // (detection, masquerade-all, node read, config)
        let cases = [
            (&LocalDetection::None, false, true, 0, vec![]),
            (
                &LocalDetection::None,
                true,
                true,
                CFG_F_MASQUERADE_ALL,
                vec![],
            ),
            (
                &cluster,
                false,
                false,
                CFG_F_LOCAL_BY_CIDR,
                vec![net("10.244.0.0/16")],
            ),
            (
                &cluster,
                true,
                true,
                CFG_F_LOCAL_BY_CIDR | CFG_F_MASQUERADE_ALL,
                vec![net("10.244.0.0/16")],
            ),
            (
                &LocalDetection::NodeCidr,
                false,
                true,
                CFG_F_LOCAL_BY_CIDR,
                vec![net("10.244.1.0/24")],
            ),
            // Before the Node is read: what is pinned stays.
            (
                &LocalDetection::NodeCidr,
                false,
                false,
                CFG_F_LOCAL_BY_CIDR,
                vec![net("10.244.9.0/24")],
            ),
            (
                &dual_stack,
                false,
                true,
                CFG_F_LOCAL_BY_CIDR,
                vec![net("10.244.0.0/16"), net("fd00:10:244::/56")],
            ),
            (&prefix, false, false, CFG_F_LOCAL_BY_IFACE, vec![]),
            (
                &LocalDetection::BridgeInterface("cni0".into()),
                true,
                true,
                CFG_F_LOCAL_BY_IFACE | CFG_F_MASQUERADE_ALL,
                vec![],
            ),
        ];
        for (detection, masquerade_all, node_read, flags, cidrs) in cases {
            let got =
                detection.datapath_config(masquerade_all, node_read.then_some(&node), &pinned);
            assert_eq!(
                got,
                LocalConfig { flags, cidrs },
                "{detection:?} masquerade_all={masquerade_all} node={node_read}"
            );
            assert_eq!(got.flags & !LOCAL_CONFIG_FLAGS, 0);
        }
        // A Node without podCIDRs: NodeCIDR detects nothing (and says so by its flags).
        assert_eq!(
            LocalDetection::NodeCidr.datapath_config(false, Some(&NodeInfo::named("x")), &pinned),
            LocalConfig::default()
        );
    }

    #[test]
    fn a_datapath_without_ipv6_maps_detects_by_its_ipv4_cidr_only() {
        let config = |flags, cidrs: &[&str]| LocalConfig {
            flags,
            cidrs: cidrs.iter().map(|c| net(c)).collect(),
        };
        let by_cidr = CFG_F_LOCAL_BY_CIDR | CFG_F_MASQUERADE_ALL;
        // (case, configuration, for an IPv4-only datapath)
        let cases = [
            (
                "dual-stack CIDRs: the IPv4 one stays",
                config(by_cidr, &["10.244.0.0/16", "fd00:10:244::/56"]),
                config(by_cidr, &["10.244.0.0/16"]),
            ),
            (
                "an IPv6 CIDR only: no detection by address",
                config(by_cidr, &["fd00:10:244::/56"]),
                config(CFG_F_MASQUERADE_ALL, &[]),
            ),
            (
                "by interface: unchanged",
                config(CFG_F_LOCAL_BY_IFACE, &[]),
                config(CFG_F_LOCAL_BY_IFACE, &[]),
            ),
        ];
        for (case, dual_stack, want) in cases {
            assert_eq!(dual_stack.ipv4_only(), want, "{case}");
        }
    }
}
