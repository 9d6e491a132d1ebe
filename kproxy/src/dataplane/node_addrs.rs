//! `KP_NODE_ADDRS` and `KP_NODE_ADDRS6`: the node's own addresses of each family, so the
//! egress program can tell a backend on the node itself (a hostNetwork endpoint) from one it
//! has no route to, and which of them NodePorts answer on (`--nodeport-addresses`). Read
//! from the interfaces of the agent's network namespace, and refreshed, since addresses come
//! and go. Both families are selected by the same rules, each against its own CIDRs and its
//! own primary IP, as kube-proxy's proxier of each family does. An object without the IPv6
//! datapath has no `KP_NODE_ADDRS6`: the node's addresses are then its IPv4 ones only, as
//! nothing would serve IPv6 NodePorts on the others.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::{Context, Result};
use aya::maps::{Array, HashMap, Map, MapData};
use ipnet::IpNet;
use kproxy_common::{
    addr::In6Addr,
    iface::{NODE_ADDR_F_LOCAL, NODE_ADDR_F_NODEPORT, NODEPORT_LIST_MAX, NodePortList},
    names,
};

use super::load::{map_pin_path, pinned_together};
use crate::{
    model::{NodeInfo, addr::parse_cidr_sloppy},
    wire::{self, WireAddr},
};

/// `--nodeport-addresses`: which of the node's addresses NodePorts answer on, as kube-proxy
/// reads the flag (pkg/proxy/util/nodeport_addresses.go).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// Unset: every address of the node.
    #[default]
    All,
    /// `primary`: the node's primary IP of each family (its first InternalIP, else
    /// ExternalIP, of the family), as the Node object says.
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

/// Whether loopback address `addr` may take NodePorts when localhost NodePorts are on: only
/// IPv4's (kube-proxy's localhost NodePorts rely on `route_localnet`, which IPv6 lacks).
fn loopback_may_take_node_ports(addr: IpAddr) -> bool {
    addr.is_ipv4()
}

/// What `KP_NODE_ADDRS` and `KP_NODE_ADDRS6` should hold for the node's `local` addresses
/// (of both families): every one is `NODE_ADDR_F_LOCAL`; those `which` selects are also
/// `NODE_ADDR_F_NODEPORT`. Each address is judged in its own family: against the CIDRs of
/// its family, or the primary IP of its family. Loopback addresses take NodePorts only with
/// `localhost` (kube-proxy's iptables mode and its `--iptables-localhost-nodeports`, on by
/// default there), only IPv4's, and then only when `which` covers them (unset, or a CIDR
/// holding them; never `primary`). `node` is `None` until the agent has read the cluster:
/// `primary` then keeps what `previous` said of each address, so a restart does not stop
/// NodePorts meanwhile.
pub fn select(
    local: &BTreeSet<IpAddr>,
    which: &NodePortAddresses,
    localhost: bool,
    node: Option<&NodeInfo>,
    previous: &BTreeMap<IpAddr, u32>,
) -> BTreeMap<IpAddr, u32> {
    local
        .iter()
        .map(|&addr| {
            let loopback_ok =
                !addr.is_loopback() || (localhost && loopback_may_take_node_ports(addr));
            let takes_node_ports = loopback_ok
                && match which {
                    NodePortAddresses::All => true,
                    NodePortAddresses::Primary if addr.is_loopback() => false,
                    NodePortAddresses::Primary => match node {
                        Some(n) => n.primary_ip(addr.is_ipv6()) == Some(addr),
                        None => previous
                            .get(&addr)
                            .is_some_and(|f| f & NODE_ADDR_F_NODEPORT != 0),
                    },
                    NodePortAddresses::Cidrs(cidrs) => {
                        let mut of_family = cidrs
                            .iter()
                            .filter(|c| c.addr().is_ipv6() == addr.is_ipv6())
                            .peekable();
                        of_family.peek().is_none() || of_family.any(|c| c.contains(&addr))
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
fn node_ports(flagged: &BTreeMap<IpAddr, u32>) -> BTreeSet<IpAddr> {
    flagged
        .iter()
        .filter(|(_, f)| *f & NODE_ADDR_F_NODEPORT != 0)
        .map(|(a, _)| *a)
        .collect()
}

/// Whether an interface address is one of the node's own addresses as far as the datapath
/// goes: an IPv6 link-local address is not (it is only reachable on its link, and kube-proxy
/// takes no NodePorts on it).
fn is_node_address(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(_) => true,
        IpAddr::V6(a) => !a.is_unicast_link_local() && !a.is_multicast(),
    }
}

/// The addresses of both families of every interface in the calling thread's network
/// namespace, but IPv6 link-local ones.
pub fn local_addresses() -> Result<BTreeSet<IpAddr>> {
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
        cursor = entry.ifa_next;
        if entry.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr is not null and points at a sockaddr whose family says its type.
        let family = i32::from(unsafe { (*entry.ifa_addr).sa_family });
        let addr = match family {
            libc::AF_INET => {
                // SAFETY: an AF_INET address is a sockaddr_in; read unaligned, as the cast
                // is to a more strictly aligned type.
                let sin = unsafe { entry.ifa_addr.cast::<libc::sockaddr_in>().read_unaligned() };
                IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
            }
            libc::AF_INET6 => {
                // SAFETY: an AF_INET6 address is a sockaddr_in6; read unaligned, as above.
                let sin6 = unsafe { entry.ifa_addr.cast::<libc::sockaddr_in6>().read_unaligned() };
                IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))
            }
            _ => continue,
        };
        if is_node_address(addr) {
            addrs.insert(addr);
        }
    }
    // SAFETY: the list getifaddrs allocated, freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(addrs)
}

/// `KP_NODEPORT_LIST` for NodePort addresses `node_ports`, of which those `is_frontend`
/// says are also frontends' own addresses. More addresses than it holds: no list at all
/// (the datapath's general path serves them all alike). IPv4 only: the IPv6 datapath always
/// takes the general path. Asked per NodePort address (a handful), not given the set of all
/// frontend addresses, which at 100,000 Services took longer to build than a sync.
pub fn nodeport_list(
    node_ports: &BTreeSet<Ipv4Addr>,
    is_frontend: impl Fn(Ipv4Addr) -> bool,
) -> NodePortList {
    let mut list = NodePortList::default();
    if node_ports.len() > NODEPORT_LIST_MAX {
        return list;
    }
    for (i, addr) in node_ports.iter().enumerate() {
        list.addrs[i] = wire::addr_to_wire(*addr);
        if is_frontend(*addr) {
            list.exact_mask |= 1 << i;
        }
    }
    list.count = u32::try_from(node_ports.len()).unwrap_or(0);
    list
}

fn open_map(pin_dir: &Path, name: &str) -> Result<Map> {
    let path = map_pin_path(pin_dir, name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    Map::from_map_data(data).with_context(|| format!("map {name}"))
}

/// The entries of one family's node address map, read back.
fn entries<A: WireAddr>(
    map: &HashMap<MapData, A, u32>,
) -> impl Iterator<Item = (IpAddr, u32)> + '_ {
    map.iter()
        .filter_map(Result::ok)
        .map(|(addr, flags)| (addr.to_ip(), flags))
}

/// The pinned `KP_NODE_ADDRS` and `KP_NODE_ADDRS6` and what they hold, with
/// `KP_NODEPORT_LIST`.
pub struct NodeAddrs {
    map: HashMap<MapData, u32, u32>,
    /// `None` when the object has no IPv6 maps.
    map6: Option<HashMap<MapData, In6Addr, u32>>,
    written: BTreeMap<IpAddr, u32>,
    list: Array<MapData, NodePortList>,
    list_written: NodePortList,
    /// Loopback addresses may take NodePorts (see `select`).
    localhost_node_ports: bool,
}

impl NodeAddrs {
    pub fn open(pin_dir: &Path) -> Result<Self> {
        let map: HashMap<MapData, u32, u32> =
            open_map(pin_dir, names::MAP_NODE_ADDRS)?.try_into()?;
        let map6: Option<HashMap<MapData, In6Addr, u32>> =
            if pinned_together(pin_dir, &[names::MAP_NODE_ADDRS6])? {
                Some(open_map(pin_dir, names::MAP_NODE_ADDRS6)?.try_into()?)
            } else {
                None
            };
        let written = entries(&map).chain(map6.iter().flat_map(entries)).collect();
        let list: Array<MapData, NodePortList> =
            open_map(pin_dir, names::MAP_NODEPORT_LIST)?.try_into()?;
        let list_written = list.get(&0, 0).context("KP_NODEPORT_LIST")?;
        Ok(Self {
            map,
            map6,
            written,
            list,
            list_written,
            localhost_node_ports: false,
        })
    }

    /// Writes `KP_NODEPORT_LIST` for the current IPv4 NodePort addresses, of which those
    /// `is_frontend` says are also frontends' own addresses, if it changed.
    pub fn write_list(&mut self, is_frontend: impl Fn(Ipv4Addr) -> bool) -> Result<()> {
        let node_ports: BTreeSet<Ipv4Addr> = self
            .node_port_addresses()
            .into_iter()
            .filter_map(|a| match a {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            })
            .collect();
        let list = nodeport_list(&node_ports, is_frontend);
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

    /// Makes the maps hold exactly the namespace's current addresses, flagged as `select`
    /// says; true if they changed.
    pub fn refresh(&mut self, which: &NodePortAddresses, node: Option<&NodeInfo>) -> Result<bool> {
        let mut local = local_addresses()?;
        if self.map6.is_none() {
            local.retain(IpAddr::is_ipv4);
        }
        let now = select(
            &local,
            which,
            self.localhost_node_ports,
            node,
            &self.written,
        );
        let mut changed = false;
        let gone: Vec<IpAddr> = self
            .written
            .keys()
            .filter(|a| !now.contains_key(a))
            .copied()
            .collect();
        for addr in gone {
            self.write(addr, None)?;
            changed = true;
        }
        for (&addr, &flags) in &now {
            if self.written.get(&addr) != Some(&flags) {
                self.write(addr, Some(flags))?;
                changed = true;
            }
        }
        self.written = now;
        Ok(changed)
    }

    /// Sets `addr`'s flags in its family's map, or removes it (`None`). Only addresses of
    /// a family the maps exist for are selected (see `refresh`).
    fn write(&mut self, addr: IpAddr, flags: Option<u32>) -> Result<()> {
        let name = wire::map_name_of(addr, names::MAP_NODE_ADDRS, names::MAP_NODE_ADDRS6);
        match (addr, flags, self.map6.as_mut()) {
            (IpAddr::V4(a), Some(flags), _) => self.map.insert(wire::addr_to_wire(a), flags, 0),
            (IpAddr::V4(a), None, _) => self.map.remove(&wire::addr_to_wire(a)),
            (IpAddr::V6(a), Some(flags), Some(map6)) => map6.insert(In6Addr::from(a), flags, 0),
            (IpAddr::V6(a), None, Some(map6)) => map6.remove(&In6Addr::from(a)),
            (IpAddr::V6(_), _, None) => {
                anyhow::bail!("{name}: the loaded eBPF object has no IPv6 maps")
            }
        }
        .context(name)
    }

    /// Every address of the node, of both families (IPv4 only without `KP_NODE_ADDRS6`).
    pub fn addresses(&self) -> BTreeSet<IpAddr> {
        self.written.keys().copied().collect()
    }

    /// The addresses NodePorts answer on, of both families (IPv4 only without
    /// `KP_NODE_ADDRS6`).
    pub fn node_port_addresses(&self) -> BTreeSet<IpAddr> {
        node_ports(&self.written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter()
            .map(|a| a.parse().expect("test address"))
            .collect()
    }

    fn v4_addrs(list: &[&str]) -> BTreeSet<Ipv4Addr> {
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

    /// (case, flag, node's addresses (`None`: not read yet), previous NodePort addresses,
    /// NodePort addresses)
    type Case<'a> = (
        &'a str,
        NodePortAddresses,
        Option<&'a [&'a str]>,
        &'a [&'a str],
        Vec<&'a str>,
    );

    /// The node's addresses in the selection tests: loopback, global and ULA ones of both
    /// families.
    fn local() -> BTreeSet<IpAddr> {
        addrs(&[
            "127.0.0.1",
            "192.168.0.2",
            "192.168.1.2",
            "10.0.0.5",
            "::1",
            "2001:db8::2",
            "2001:db8:1::2",
            "fd00::5",
        ])
    }

    /// `with` and every IPv6 address of `local()` but loopback.
    fn with_every_v6(with: &[&'static str]) -> Vec<&'static str> {
        let every_v6 = ["2001:db8::2", "2001:db8:1::2", "fd00::5"];
        with.iter().copied().chain(every_v6).collect()
    }

    /// Selects from `local()` as each case says, and checks every local address is in the
    /// maps and the case's NodePort addresses take NodePorts.
    fn check_selections(cases: Vec<Case<'_>>) {
        let local = local();
        for (name, which, node_addrs, previous, want) in cases {
            let info = node_addrs.map(node);
            let previous: BTreeMap<IpAddr, u32> = addrs(previous)
                .into_iter()
                .map(|a| (a, NODE_ADDR_F_LOCAL | NODE_ADDR_F_NODEPORT))
                .collect();
            let got = select(&local, &which, false, info.as_ref(), &previous);
            assert_eq!(
                got.keys().copied().collect::<BTreeSet<_>>(),
                local,
                "{name}: every local address is in the maps"
            );
            assert!(
                got.values().all(|f| f & NODE_ADDR_F_LOCAL != 0),
                "{name}: all local"
            );
            assert_eq!(node_ports(&got), addrs(&want), "{name}");
        }
    }

    #[test]
    fn nodeport_address_cidrs_select_in_each_family_as_kube_proxy_does() {
        check_selections(vec![
            (
                "unset: every address but loopback, of both families",
                flag(&[]),
                Some(&[]),
                &[],
                with_every_v6(&["10.0.0.5", "192.168.0.2", "192.168.1.2"]),
            ),
            (
                "CIDRs of both families (TestNodePorts, multiple nodeport-addresses)",
                flag(&["192.168.0.0/24", "192.168.1.0/24", "2001:db8::/64"]),
                Some(&[]),
                &[],
                vec!["192.168.0.2", "192.168.1.2", "2001:db8::2"],
            ),
            (
                "one IPv4 /32: no IPv6 CIDR, so every IPv6 address",
                flag(&["192.168.0.2/32"]),
                Some(&[]),
                &[],
                with_every_v6(&["192.168.0.2"]),
            ),
            (
                "only an IPv6 CIDR: no IPv4 CIDR, so every IPv4 address",
                flag(&["2001:db8::/64"]),
                Some(&[]),
                &[],
                vec!["10.0.0.5", "192.168.0.2", "192.168.1.2", "2001:db8::2"],
            ),
            (
                "a ULA CIDR selects the ULA address",
                flag(&["fd00::/8", "10.0.0.0/8"]),
                Some(&[]),
                &[],
                vec!["10.0.0.5", "fd00::5"],
            ),
            (
                "0.0.0.0/0 and ::/0 match all, but loopback takes no NodePorts",
                flag(&["0.0.0.0/0", "::/0"]),
                Some(&[]),
                &[],
                with_every_v6(&["10.0.0.5", "192.168.0.2", "192.168.1.2"]),
            ),
            (
                "127.0.0.0/8 and ::1/128: none (no localhost NodePorts)",
                flag(&["127.0.0.0/8", "::1/128"]),
                Some(&[]),
                &[],
                vec![],
            ),
        ]);
    }

    #[test]
    fn primary_selects_the_nodes_primary_ip_of_each_family() {
        check_selections(vec![
            (
                "the Node's first InternalIP of each family",
                flag(&["primary"]),
                Some(&["2001:db8:1::2", "192.168.1.2", "2001:db8::2", "192.168.0.2"]),
                &[],
                vec!["192.168.1.2", "2001:db8:1::2"],
            ),
            (
                "a primary IP of one family only",
                flag(&["primary"]),
                Some(&["2001:db8::2"]),
                &[],
                vec!["2001:db8::2"],
            ),
            (
                "primary IPs that are not the node's addresses: none",
                flag(&["primary"]),
                Some(&["203.0.113.9", "2001:db8:9::9"]),
                &[],
                vec![],
            ),
            (
                "no Node address: none",
                flag(&["primary"]),
                Some(&[]),
                &["192.168.0.2", "2001:db8::2"],
                vec![],
            ),
            (
                "before the Node is read: what the maps said, of addresses still there",
                flag(&["primary"]),
                None,
                &["192.168.0.2", "10.9.9.9", "2001:db8:1::2", "2001:db8:9::9"],
                vec!["192.168.0.2", "2001:db8:1::2"],
            ),
        ]);
    }

    #[test]
    fn loopback_takes_node_ports_only_in_ipv4_with_localhost_node_ports_and_a_flag_covering_it() {
        let local = addrs(&["127.0.0.1", "192.168.0.2", "::1", "2001:db8::2"]);
        let cases: [(&str, NodePortAddresses, bool, &[&str]); 6] = [
            (
                "unset",
                flag(&[]),
                true,
                &["127.0.0.1", "192.168.0.2", "2001:db8::2"],
            ),
            (
                "unset, localhost off",
                flag(&[]),
                false,
                &["192.168.0.2", "2001:db8::2"],
            ),
            (
                "IPv4 loopback CIDR",
                flag(&["127.0.0.0/8"]),
                true,
                &["127.0.0.1", "2001:db8::2"],
            ),
            (
                "IPv6 loopback CIDR: never in IPv6",
                flag(&["::1/128"]),
                true,
                &["127.0.0.1", "192.168.0.2"],
            ),
            (
                "other CIDR",
                flag(&["192.168.0.0/16"]),
                true,
                &["192.168.0.2", "2001:db8::2"],
            ),
            ("primary", flag(&["primary"]), true, &[]),
        ];
        for (name, which, localhost, want) in cases {
            let got = select(&local, &which, localhost, None, &BTreeMap::new());
            assert_eq!(node_ports(&got), addrs(want), "{name}");
        }
    }

    #[test]
    fn ipv6_link_local_addresses_are_not_the_nodes() {
        // (address, one of the node's)
        let cases = [
            ("198.18.9.1", true),
            ("169.254.1.1", true),
            ("2001:db8::1", true),
            ("fd00:10::1", true),
            ("::1", true),
            ("fe80::1", false),
            ("fe80::abcd:1", false),
            ("ff02::1", false),
        ];
        for (addr, want) in cases {
            let addr: IpAddr = addr.parse().expect("test address");
            assert_eq!(is_node_address(addr), want, "{addr}");
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
            let frontends = v4_addrs(frontends);
            let list = nodeport_list(&v4_addrs(node_ports), |a| frontends.contains(&a));
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
