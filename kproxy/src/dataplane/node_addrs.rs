//! `KP_NODE_ADDRS`: the node's own IPv4 addresses, so the egress program can tell a backend
//! on the node itself (a hostNetwork endpoint) from one it has no route to, and which of
//! them NodePorts answer on (`--nodeport-addresses`). Read from the interfaces of the
//! agent's network namespace, and refreshed, since addresses come and go.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    path::Path,
};

use anyhow::{Context, Result};
use aya::maps::{Array, HashMap, Map, MapData};
use ipnet::IpNet;
use kproxy_common::{
    iface::{NODE_ADDR_F_LOCAL, NODE_ADDR_F_NODEPORT, NODEPORT_LIST_MAX, NodePortList},
    names,
};

use super::load::map_pin_path;
use crate::{
    model::{NodeInfo, addr::parse_cidr_sloppy},
    wire,
};

/// `--nodeport-addresses`: which of the node's addresses NodePorts answer on, as kube-proxy
/// reads the flag (pkg/proxy/util/nodeport_addresses.go).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// Unset: every address of the node.
    #[default]
    All,
    /// `primary`: the node's primary IP (its first InternalIP, else ExternalIP, of the
    /// family), as the Node object says.
    Primary,
    /// Addresses in these CIDRs. When none is of a family, every address of that family
    /// (kube-proxy falls back to the zero CIDR).
    Cidrs(Vec<IpNet>),
}

impl NodePortAddresses {
    /// Reads the flag's values: empty, `primary` alone, or CIDRs (validated as kube-proxy
    /// validates `nodePortAddresses`).
    pub fn parse(values: &[String]) -> Result<Self, String> {
        let values: Vec<&str> = values
            .iter()
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .collect();
        match values.as_slice() {
            [] => Ok(Self::All),
            ["primary"] => Ok(Self::Primary),
            _ if values.contains(&"primary") => {
                Err("--nodeport-addresses: can't use both 'primary' and CIDRs".into())
            }
            _ => values
                .iter()
                .map(|v| {
                    parse_cidr_sloppy(v).ok_or_else(|| {
                        format!("--nodeport-addresses: {v:?} must be a valid CIDR or 'primary'")
                    })
                })
                .collect::<Result<_, _>>()
                .map(Self::Cidrs),
        }
    }
}

/// What `KP_NODE_ADDRS` should hold for the node's `local` IPv4 addresses: every one is
/// `NODE_ADDR_F_LOCAL`; those `which` selects are also `NODE_ADDR_F_NODEPORT`. Loopback
/// addresses take NodePorts only with `localhost` (kube-proxy's iptables mode and its
/// `--iptables-localhost-nodeports`, on by default there), and then only when `which` covers
/// them (unset, or a CIDR holding them; never `primary`). `node` is `None` until the agent
/// has read the cluster: `primary` then keeps what `previous` said of each address, so a
/// restart does not stop NodePorts meanwhile.
pub fn select(
    local: &BTreeSet<Ipv4Addr>,
    which: &NodePortAddresses,
    localhost: bool,
    node: Option<&NodeInfo>,
    previous: &BTreeMap<Ipv4Addr, u32>,
) -> BTreeMap<Ipv4Addr, u32> {
    let v4_cidrs: Vec<&IpNet> = match which {
        NodePortAddresses::Cidrs(cidrs) => cidrs.iter().filter(|c| c.addr().is_ipv4()).collect(),
        _ => Vec::new(),
    };
    let primary = node.and_then(|n| n.primary_ip(false));
    local
        .iter()
        .map(|&addr| {
            let takes_node_ports = (localhost || !addr.is_loopback())
                && match which {
                    NodePortAddresses::All => true,
                    NodePortAddresses::Primary if addr.is_loopback() => false,
                    NodePortAddresses::Primary => match node {
                        Some(_) => primary == Some(IpAddr::V4(addr)),
                        None => previous
                            .get(&addr)
                            .is_some_and(|f| f & NODE_ADDR_F_NODEPORT != 0),
                    },
                    NodePortAddresses::Cidrs(_) => {
                        v4_cidrs.is_empty()
                            || v4_cidrs.iter().any(|c| c.contains(&IpAddr::V4(addr)))
                    }
                };
            let flags = if takes_node_ports {
                NODE_ADDR_F_LOCAL | NODE_ADDR_F_NODEPORT
            } else {
                NODE_ADDR_F_LOCAL
            };
            (addr, flags)
        })
        .collect()
}

/// The addresses of `flagged` (as `select` returns them) that take NodePorts.
fn node_ports(flagged: &BTreeMap<Ipv4Addr, u32>) -> BTreeSet<Ipv4Addr> {
    flagged
        .iter()
        .filter(|(_, f)| *f & NODE_ADDR_F_NODEPORT != 0)
        .map(|(a, _)| *a)
        .collect()
}

/// The IPv4 addresses of every interface in the calling thread's network namespace.
pub fn local_ipv4_addresses() -> Result<BTreeSet<Ipv4Addr>> {
    let mut addrs = BTreeSet::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates the list and stores it in `list`.
    if unsafe { libc::getifaddrs(&raw mut list) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getifaddrs");
    }
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: a node of the list getifaddrs returned; freed only below.
        let entry = unsafe { &*cursor };
        // SAFETY: ifa_addr is null or points at a sockaddr whose family says its type.
        if !entry.ifa_addr.is_null()
            && i32::from(unsafe { (*entry.ifa_addr).sa_family }) == libc::AF_INET
        {
            // SAFETY: an AF_INET address is a sockaddr_in; read unaligned, as the cast is
            // to a more strictly aligned type.
            let sin = unsafe { entry.ifa_addr.cast::<libc::sockaddr_in>().read_unaligned() };
            addrs.insert(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
        }
        cursor = entry.ifa_next;
    }
    // SAFETY: the list getifaddrs allocated, freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(addrs)
}

/// `KP_NODEPORT_LIST` for NodePort addresses `node_ports`, of which `frontend_addrs` are
/// also frontends' own addresses. More addresses than it holds: no list at all (the
/// datapath's general path serves them all alike).
pub fn nodeport_list(
    node_ports: &BTreeSet<Ipv4Addr>,
    frontend_addrs: &BTreeSet<Ipv4Addr>,
) -> NodePortList {
    let mut list = NodePortList::default();
    if node_ports.len() > NODEPORT_LIST_MAX {
        return list;
    }
    for (i, addr) in node_ports.iter().enumerate() {
        list.addrs[i] = wire::addr_to_wire(*addr);
        if frontend_addrs.contains(addr) {
            list.exact_mask |= 1 << i;
        }
    }
    list.count = u32::try_from(node_ports.len()).unwrap_or(0);
    list
}

/// The pinned `KP_NODE_ADDRS` and what it holds, with `KP_NODEPORT_LIST`.
pub struct NodeAddrs {
    map: HashMap<MapData, u32, u32>,
    written: BTreeMap<Ipv4Addr, u32>,
    list: Array<MapData, NodePortList>,
    list_written: NodePortList,
    /// Loopback addresses may take NodePorts (see `select`).
    localhost_node_ports: bool,
}

impl NodeAddrs {
    pub fn open(pin_dir: &Path) -> Result<Self> {
        let path = map_pin_path(pin_dir, names::MAP_NODE_ADDRS);
        let data = MapData::from_pin(&path)
            .with_context(|| format!("opening pinned map {}", path.display()))?;
        let map: HashMap<MapData, u32, u32> = Map::from_map_data(data)?.try_into()?;
        let written = map
            .iter()
            .filter_map(Result::ok)
            .map(|(addr, flags)| (wire::addr_from_wire(addr), flags))
            .collect();
        let path = map_pin_path(pin_dir, names::MAP_NODEPORT_LIST);
        let data = MapData::from_pin(&path)
            .with_context(|| format!("opening pinned map {}", path.display()))?;
        let list: Array<MapData, NodePortList> = Map::from_map_data(data)?.try_into()?;
        let list_written = list.get(&0, 0).context("KP_NODEPORT_LIST")?;
        Ok(Self {
            map,
            written,
            list,
            list_written,
            localhost_node_ports: false,
        })
    }

    /// Writes `KP_NODEPORT_LIST` for the current NodePort addresses and the frontends' own
    /// addresses `frontend_addrs`, if it changed.
    pub fn write_list(&mut self, frontend_addrs: &BTreeSet<Ipv4Addr>) -> Result<()> {
        let list = nodeport_list(&self.node_port_addresses(), frontend_addrs);
        if list != self.list_written {
            self.list.set(0, list, 0).context("KP_NODEPORT_LIST")?;
            self.list_written = list;
        }
        Ok(())
    }

    /// Lets loopback addresses take NodePorts from the next refresh on (see `select`).
    pub fn set_localhost_node_ports(&mut self, on: bool) {
        self.localhost_node_ports = on;
    }

    /// Whether a loopback address takes NodePorts now.
    pub fn localhost_node_ports(&self) -> bool {
        self.written
            .iter()
            .any(|(a, f)| a.is_loopback() && f & NODE_ADDR_F_NODEPORT != 0)
    }

    /// Makes the map hold exactly the namespace's current addresses, flagged as `select`
    /// says; true if it changed.
    pub fn refresh(&mut self, which: &NodePortAddresses, node: Option<&NodeInfo>) -> Result<bool> {
        let now = select(
            &local_ipv4_addresses()?,
            which,
            self.localhost_node_ports,
            node,
            &self.written,
        );
        let mut changed = false;
        for gone in self.written.keys().filter(|a| !now.contains_key(a)) {
            self.map
                .remove(&wire::addr_to_wire(*gone))
                .context("KP_NODE_ADDRS")?;
            changed = true;
        }
        for (addr, flags) in &now {
            if self.written.get(addr) != Some(flags) {
                self.map
                    .insert(wire::addr_to_wire(*addr), flags, 0)
                    .context("KP_NODE_ADDRS")?;
                changed = true;
            }
        }
        self.written = now;
        Ok(changed)
    }

    /// Every address of the node.
    pub fn addresses(&self) -> BTreeSet<Ipv4Addr> {
        self.written.keys().copied().collect()
    }

    /// The addresses NodePorts answer on.
    pub fn node_port_addresses(&self) -> BTreeSet<Ipv4Addr> {
        node_ports(&self.written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> BTreeSet<Ipv4Addr> {
        list.iter()
            .map(|a| a.parse().expect("test address"))
            .collect()
    }

    fn node(internal: &[&str]) -> NodeInfo {
        let mut node = NodeInfo::named("node-a");
        node.addresses = internal
            .iter()
            .map(|a| a.parse().expect("test address"))
            .collect();
        node
    }

    fn flag(values: &[&str]) -> NodePortAddresses {
        NodePortAddresses::parse(&values.iter().map(|v| (*v).to_owned()).collect::<Vec<_>>())
            .expect("valid flag")
    }

    /// (flag, node's addresses (`None`: not read yet), previous NodePort addresses, NodePort
    /// addresses)
    type Case<'a> = (
        NodePortAddresses,
        Option<&'a [&'a str]>,
        &'a [&'a str],
        &'a [&'a str],
    );

    #[test]
    fn nodeport_addresses_select_the_node_addresses_kube_proxy_would() {
        let local = addrs(&["127.0.0.1", "192.168.0.2", "192.168.1.2", "10.0.0.5"]);
        let cases: Vec<(&str, Case<'_>)> = vec![
            (
                "unset: every address but loopback",
                (
                    flag(&[]),
                    Some(&[]),
                    &[],
                    &["10.0.0.5", "192.168.0.2", "192.168.1.2"],
                ),
            ),
            (
                "CIDRs (TestNodePorts ipv4, multiple nodeport-addresses): the IPv6 one is ignored",
                (
                    flag(&["192.168.0.0/24", "192.168.1.0/24", "2001:db8::/64"]),
                    Some(&[]),
                    &[],
                    &["192.168.0.2", "192.168.1.2"],
                ),
            ),
            (
                "one /32 (TestNodePorts ipv4: the secondary node IP ignores NodePorts)",
                (flag(&["192.168.0.2/32"]), Some(&[]), &[], &["192.168.0.2"]),
            ),
            (
                "only IPv6 CIDRs: no IPv4 CIDR, so every IPv4 address",
                (
                    flag(&["2001:db8::/64"]),
                    Some(&[]),
                    &[],
                    &["10.0.0.5", "192.168.0.2", "192.168.1.2"],
                ),
            ),
            (
                "0.0.0.0/0 matches all, but loopback takes no NodePorts",
                (
                    flag(&["0.0.0.0/0"]),
                    Some(&[]),
                    &[],
                    &["10.0.0.5", "192.168.0.2", "192.168.1.2"],
                ),
            ),
            (
                "127.0.0.0/8 alone: none (no localhost NodePorts)",
                (flag(&["127.0.0.0/8"]), Some(&[]), &[], &[]),
            ),
            (
                "primary: the Node's first InternalIP",
                (
                    flag(&["primary"]),
                    Some(&["2001:db8::2", "192.168.1.2", "192.168.0.2"]),
                    &[],
                    &["192.168.1.2"],
                ),
            ),
            (
                "primary that is not one of the node's addresses: none",
                (flag(&["primary"]), Some(&["203.0.113.9"]), &[], &[]),
            ),
            (
                "primary without a Node address: none",
                (flag(&["primary"]), Some(&[]), &["192.168.0.2"], &[]),
            ),
            (
                "primary before the Node is read: what the map said, of addresses still there",
                (
                    flag(&["primary"]),
                    None,
                    &["192.168.0.2", "10.9.9.9"],
                    &["192.168.0.2"],
                ),
            ),
        ];
        for (name, (which, node_addrs, previous, want)) in cases {
            let info = node_addrs.map(node);
            let previous: BTreeMap<Ipv4Addr, u32> = addrs(previous)
                .into_iter()
                .map(|a| (a, NODE_ADDR_F_LOCAL | NODE_ADDR_F_NODEPORT))
                .collect();
            let got = select(&local, &which, false, info.as_ref(), &previous);
            assert_eq!(
                got.keys().copied().collect::<BTreeSet<_>>(),
                local,
                "{name}: every local address is in the map"
            );
            assert!(
                got.values().all(|f| f & NODE_ADDR_F_LOCAL != 0),
                "{name}: all local"
            );
            assert_eq!(node_ports(&got), addrs(want), "{name}");
        }
    }

    #[test]
    fn loopback_takes_node_ports_only_with_localhost_node_ports_and_a_flag_covering_it() {
        let local = addrs(&["127.0.0.1", "192.168.0.2"]);
        let cases: [(&str, NodePortAddresses, bool, &[&str]); 5] = [
            ("unset", flag(&[]), true, &["127.0.0.1", "192.168.0.2"]),
            ("unset, localhost off", flag(&[]), false, &["192.168.0.2"]),
            (
                "loopback CIDR",
                flag(&["127.0.0.0/8"]),
                true,
                &["127.0.0.1"],
            ),
            (
                "other CIDR",
                flag(&["192.168.0.0/16"]),
                true,
                &["192.168.0.2"],
            ),
            ("primary", flag(&["primary"]), true, &[]),
        ];
        for (name, which, localhost, want) in cases {
            let got = select(&local, &which, localhost, None, &BTreeMap::new());
            assert_eq!(node_ports(&got), addrs(want), "{name}");
        }
    }

    #[test]
    fn the_flag_is_validated_like_kube_proxy_does() {
        let parse = |values: &[&str]| {
            NodePortAddresses::parse(&values.iter().map(|v| (*v).to_owned()).collect::<Vec<_>>())
        };
        assert_eq!(parse(&[]), Ok(NodePortAddresses::All));
        assert_eq!(parse(&[""]), Ok(NodePortAddresses::All));
        assert_eq!(parse(&["primary"]), Ok(NodePortAddresses::Primary));
        assert_eq!(
            parse(&["10.0.0.0/8", " 2001:db8::/64"]),
            Ok(NodePortAddresses::Cidrs(vec![
                "10.0.0.0/8".parse().expect("cidr"),
                "2001:db8::/64".parse().expect("cidr"),
            ]))
        );
        let err = parse(&["primary", "10.0.0.0/8"]).expect_err("mixed");
        assert!(err.contains("both 'primary' and CIDRs"), "{err}");
        let err = parse(&["10.0.0.1"]).expect_err("no length");
        assert!(err.contains("valid CIDR"), "{err}");
    }

    /// (case, NodePort addresses, frontends' own addresses, listed, exact mask)
    type ListCase<'a> = (&'a str, &'a [&'a str], &'a [&'a str], &'a [&'a str], u32);

    #[test]
    fn the_nodeport_list_holds_up_to_eight_addresses_and_marks_frontend_addresses() {
        let many: Vec<String> = (1..=9).map(|i| format!("198.18.9.{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let cases: [ListCase; 4] = [
            ("none", &[], &[], &[], 0),
            (
                "two, no frontend on them",
                &["198.18.9.1", "127.0.0.1"],
                &["198.19.0.10"],
                &["127.0.0.1", "198.18.9.1"],
                0,
            ),
            (
                "an external IP on the second",
                &["198.18.9.1", "127.0.0.1"],
                &["198.18.9.1"],
                &["127.0.0.1", "198.18.9.1"],
                0b10,
            ),
            ("nine: no list", &many, &[], &[], 0),
        ];
        for (name, node_ports, frontends, listed, mask) in cases {
            let list = nodeport_list(&addrs(node_ports), &addrs(frontends));
            let want: Vec<u32> = listed
                .iter()
                .map(|a| wire::addr_to_wire(a.parse().expect("test address")))
                .collect();
            assert_eq!(list.count as usize, want.len(), "{name}");
            assert_eq!(&list.addrs[..want.len()], want.as_slice(), "{name}");
            assert!(list.addrs[want.len()..].iter().all(|a| *a == 0), "{name}");
            assert_eq!(list.exact_mask, mask, "{name}");
        }
    }
}
