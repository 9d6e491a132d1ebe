//! `KP_FREE_PORTS`: the ports no NodePort uses, one bit each, kept in step with the NodePort
//! entries of `KP_SERVICES` and `KP_SERVICES6` so that a packet to any other port skips the
//! NodePort lookup. The map is shared by both families: a port is free only while no
//! NodePort of either family has it.
//!
//! The datapath trusts a set bit only, so the order of writes is what makes it safe: a bit
//! is cleared before a NodePort entry on its port is written, and set only after the port's
//! last NodePort entry is deleted (see `free_port_bit`).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use aya::maps::{Array, MapData};
use kproxy_common::lb::{FREE_PORT_WORDS, free_port_bit};

use crate::{model::FrontendKey, wire};

/// The NodePort entries of both families by port (network byte order, as the datapath
/// indexes the map): a port is taken while any entry has it.
type NodePortKeys = BTreeMap<u16, BTreeSet<FrontendKey>>;

/// Word `word` of `KP_FREE_PORTS` when `nodeports` are the NodePort entries.
fn free_word(nodeports: &NodePortKeys, word: u32) -> u64 {
    let first = u16::try_from(word * 64).unwrap_or(u16::MAX);
    let last = first.saturating_add(63);
    let mut free = u64::MAX;
    for (&port, _) in nodeports.range(first..=last) {
        free &= !free_port_bit(port).1;
    }
    free
}

/// The pinned `KP_FREE_PORTS`, what it holds, and the NodePort entries it was written for.
pub struct FreePorts {
    map: Array<MapData, u64>,
    nodeports: NodePortKeys,
    written: Vec<u64>,
}

impl FreePorts {
    /// Takes over `map`, writing it for the frontend entries `services` (of both families)
    /// the services maps hold.
    pub fn track(
        mut map: Array<MapData, u64>,
        services: impl IntoIterator<Item = FrontendKey>,
    ) -> Result<Self> {
        let mut nodeports = NodePortKeys::new();
        for key in services {
            add(&mut nodeports, &key);
        }
        let mut written = Vec::with_capacity(FREE_PORT_WORDS as usize);
        for word in 0..FREE_PORT_WORDS {
            let free = free_word(&nodeports, word);
            map.set(word, free, 0).context("KP_FREE_PORTS")?;
            written.push(free);
        }
        Ok(Self {
            map,
            nodeports,
            written,
        })
    }

    /// To be called before frontend entry `key` is written: a NodePort's port is no longer
    /// free.
    pub fn before_put(&mut self, key: &FrontendKey) -> Result<()> {
        if add(&mut self.nodeports, key) {
            self.write_word_of(key)?;
        }
        Ok(())
    }

    /// To be called after entry `key` is deleted: its port is free if it was its last
    /// NodePort entry of either family.
    pub fn after_delete(&mut self, key: &FrontendKey) -> Result<()> {
        if remove(&mut self.nodeports, key) {
            self.write_word_of(key)?;
        }
        Ok(())
    }

    fn write_word_of(&mut self, key: &FrontendKey) -> Result<()> {
        let (word, _) = free_port_bit(wire::port_to_wire(key.port));
        let free = free_word(&self.nodeports, word);
        let slot = &mut self.written[word as usize];
        if *slot != free {
            self.map.set(word, free, 0).context("KP_FREE_PORTS")?;
            *slot = free;
        }
        Ok(())
    }
}

/// Counts `key` if it is a NodePort; whether it is one.
fn add(nodeports: &mut NodePortKeys, key: &FrontendKey) -> bool {
    if !key.is_node_port() {
        return false;
    }
    nodeports
        .entry(wire::port_to_wire(key.port))
        .or_default()
        .insert(*key);
    true
}

/// Forgets `key` if it is a NodePort; whether it is one.
fn remove(nodeports: &mut NodePortKeys, key: &FrontendKey) -> bool {
    if !key.is_node_port() {
        return false;
    }
    let port = wire::port_to_wire(key.port);
    if let Some(keys) = nodeports.get_mut(&port) {
        keys.remove(key);
        if keys.is_empty() {
            nodeports.remove(&port);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::model::{Protocol, Scope};

    /// A frontend entry: port, protocol, scope, and its address (`None`: a NodePort of the
    /// family of `v6`).
    type Entry = (u16, Protocol, Scope, bool, Option<&'static str>);

    fn key(&(port, proto, scope, v6, addr): &Entry) -> FrontendKey {
        match addr {
            Some(addr) => FrontendKey::new(addr.parse::<IpAddr>().expect("address"), port, proto),
            None => FrontendKey::node_port(v6, port, proto),
        }
        .with_scope(scope)
    }

    fn keys(entries: &[Entry]) -> NodePortKeys {
        let mut nodeports = NodePortKeys::new();
        for entry in entries {
            add(&mut nodeports, &key(entry));
        }
        nodeports
    }

    const TCP: Protocol = Protocol::Tcp;
    const UDP: Protocol = Protocol::Udp;
    const ALL: Scope = Scope::All;

    #[test]
    fn a_port_is_free_while_no_nodeport_entry_of_any_protocol_scope_or_family_has_it() {
        let cases: &[(&str, &[Entry], u16, bool)] = &[
            ("no NodePorts", &[], 30080, true),
            (
                "a TCP NodePort",
                &[(30080, TCP, ALL, false, None)],
                30080,
                false,
            ),
            (
                "a UDP NodePort",
                &[(30080, UDP, ALL, false, None)],
                30080,
                false,
            ),
            (
                "only its internal scope",
                &[(30080, TCP, Scope::Internal, false, None)],
                30080,
                false,
            ),
            (
                "an IPv6 NodePort",
                &[(30080, TCP, ALL, true, None)],
                30080,
                false,
            ),
            (
                "a VIP on the port, of either family, is no NodePort",
                &[
                    (30080, TCP, ALL, false, Some("198.19.0.10")),
                    (30080, TCP, ALL, true, Some("2001:db8::10")),
                ],
                30080,
                true,
            ),
            (
                "another port in the same word",
                &[(30081, TCP, ALL, false, None)],
                30080,
                true,
            ),
            (
                "the word's first port",
                &[(0x7500, TCP, ALL, false, None)],
                0x7500,
                false,
            ),
            (
                "the highest port",
                &[(65535, TCP, ALL, true, None)],
                65535,
                false,
            ),
            ("port zero", &[(0, UDP, ALL, false, None)], 0, false),
        ];
        for &(what, entries, port, free) in cases {
            let nodeports = keys(entries);
            let (word, bit) = free_port_bit(port.to_be());
            assert_eq!(
                free_word(&nodeports, word) & bit != 0,
                free,
                "{what}: port {port}"
            );
        }
    }

    #[test]
    fn a_word_clears_exactly_the_bits_of_its_nodeports() {
        let nodeports = keys(&[
            (30080, TCP, ALL, false, None),
            (30080, UDP, ALL, false, None),
            (30080, TCP, ALL, true, None),
            (30090, TCP, ALL, true, None),
        ]);
        let mut cleared = 0;
        for word in 0..FREE_PORT_WORDS {
            cleared += free_word(&nodeports, word).count_zeros();
        }
        assert_eq!(
            cleared, 2,
            "two distinct ports, whatever their protocols and families"
        );
    }

    #[test]
    fn a_port_both_families_use_stays_taken_until_the_last_of_them_goes() {
        let v4 = key(&(30080, TCP, ALL, false, None));
        let v6 = key(&(30080, TCP, ALL, true, None));
        let (word, bit) = free_port_bit(30080u16.to_be());
        let free = |nodeports: &NodePortKeys| free_word(nodeports, word) & bit != 0;
        let mut nodeports = NodePortKeys::new();
        assert!(add(&mut nodeports, &v4) && add(&mut nodeports, &v6));
        assert!(remove(&mut nodeports, &v6));
        assert!(!free(&nodeports), "the IPv4 NodePort still has it");
        assert!(remove(&mut nodeports, &v4));
        assert!(free(&nodeports), "no NodePort of either family has it");
        let vip = key(&(30080, TCP, ALL, true, Some("2001:db8::10")));
        assert!(!add(&mut nodeports, &vip) && !remove(&mut nodeports, &vip));
        assert!(nodeports.is_empty());
    }
}
