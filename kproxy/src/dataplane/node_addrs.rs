//! `KP_NODE_ADDRS`: the node's own IPv4 addresses, so the egress program can tell a backend
//! on the node itself (a hostNetwork endpoint) from one it has no route to. Read from the
//! interfaces of the agent's network namespace, and refreshed, since addresses come and go.

use std::{collections::BTreeSet, net::Ipv4Addr, path::Path};

use anyhow::{Context, Result};
use aya::maps::{HashMap, Map, MapData};
use kproxy_common::names;

use super::load::map_pin_path;
use crate::wire;

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

/// The pinned `KP_NODE_ADDRS` and what it holds.
pub struct NodeAddrs {
    map: HashMap<MapData, u32, u32>,
    written: BTreeSet<Ipv4Addr>,
}

impl NodeAddrs {
    pub fn open(pin_dir: &Path) -> Result<Self> {
        let path = map_pin_path(pin_dir, names::MAP_NODE_ADDRS);
        let data = MapData::from_pin(&path)
            .with_context(|| format!("opening pinned map {}", path.display()))?;
        let map: HashMap<MapData, u32, u32> = Map::from_map_data(data)?.try_into()?;
        let written = map
            .keys()
            .filter_map(Result::ok)
            .map(wire::addr_from_wire)
            .collect();
        Ok(Self { map, written })
    }

    /// Makes the map hold exactly the namespace's current addresses; true if it changed.
    pub fn refresh(&mut self) -> Result<bool> {
        let now = local_ipv4_addresses()?;
        let mut changed = false;
        for gone in self.written.difference(&now) {
            self.map
                .remove(&wire::addr_to_wire(*gone))
                .context("KP_NODE_ADDRS")?;
            changed = true;
        }
        for new in now.difference(&self.written) {
            self.map
                .insert(wire::addr_to_wire(*new), 1, 0)
                .context("KP_NODE_ADDRS")?;
            changed = true;
        }
        self.written = now;
        Ok(changed)
    }

    pub fn addresses(&self) -> &BTreeSet<Ipv4Addr> {
        &self.written
    }
}
