//! `KP_FREE_PORTS`: the ports no NodePort uses, one bit each, kept in step with the NodePort
//! entries of `KP_SERVICES` so that a packet to any other port skips the NodePort lookup.
//!
//! The datapath trusts a set bit only, so the order of writes is what makes it safe: a bit
//! is cleared before a NodePort entry on its port is written, and set only after the port's
//! last NodePort entry is deleted (see `free_port_bit`).

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use aya::maps::{Array, MapData};
use kproxy_common::lb::{FREE_PORT_WORDS, NODEPORT_ADDR, ServiceKey, free_port_bit};

/// The NodePort entries' `(port, protocol, scope)`, ports in network byte order as the
/// datapath indexes them.
type NodePortKeys = BTreeSet<(u16, u8, u8)>;

fn nodeport_key(key: &ServiceKey) -> Option<(u16, u8, u8)> {
    (key.addr == NODEPORT_ADDR).then_some((key.port, key.proto, key.scope))
}

/// Word `word` of `KP_FREE_PORTS` when `nodeports` are the NodePort entries.
pub fn free_word(nodeports: &NodePortKeys, word: u32) -> u64 {
    let first = u16::try_from(word * 64).unwrap_or(u16::MAX);
    let last = first.saturating_add(63);
    let mut free = u64::MAX;
    for &(port, _, _) in nodeports.range((first, 0, 0)..=(last, u8::MAX, u8::MAX)) {
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
    /// Takes over `map`, writing it for the `KP_SERVICES` keys `services` holds.
    pub fn track(mut map: Array<MapData, u64>, services: &[ServiceKey]) -> Result<Self> {
        let nodeports: NodePortKeys = services.iter().filter_map(nodeport_key).collect();
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

    /// To be called before NodePort entry `key` is written: its port is no longer free.
    pub fn before_put(&mut self, key: &ServiceKey) -> Result<()> {
        let Some(nodeport) = nodeport_key(key) else {
            return Ok(());
        };
        self.nodeports.insert(nodeport);
        self.write_word_of(key.port)
    }

    /// To be called after entry `key` is deleted: its port is free if it was its last.
    pub fn after_delete(&mut self, key: &ServiceKey) -> Result<()> {
        let Some(nodeport) = nodeport_key(key) else {
            return Ok(());
        };
        self.nodeports.remove(&nodeport);
        self.write_word_of(key.port)
    }

    fn write_word_of(&mut self, port: u16) -> Result<()> {
        let (word, _) = free_port_bit(port);
        let free = free_word(&self.nodeports, word);
        let slot = &mut self.written[word as usize];
        if *slot != free {
            self.map.set(word, free, 0).context("KP_FREE_PORTS")?;
            *slot = free;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A NodePort entry's port (host order), protocol and scope.
    type Entry = (u16, u8, u8);

    fn keys(entries: &[Entry]) -> NodePortKeys {
        entries
            .iter()
            .map(|&(port, proto, scope)| (port.to_be(), proto, scope))
            .collect()
    }

    #[test]
    fn a_port_is_free_while_no_nodeport_entry_of_any_protocol_or_scope_has_it() {
        let cases: &[(&str, &[Entry], u16, bool)] = &[
            ("no NodePorts", &[], 30080, true),
            ("a TCP NodePort", &[(30080, 6, 0)], 30080, false),
            ("a UDP NodePort", &[(30080, 17, 0)], 30080, false),
            ("only its internal scope", &[(30080, 6, 1)], 30080, false),
            (
                "another port in the same word",
                &[(30081, 6, 0)],
                30080,
                true,
            ),
            ("the word's first port", &[(0x7500, 6, 0)], 0x7500, false),
            ("the highest port", &[(65535, 6, 0)], 65535, false),
            ("port zero", &[(0, 17, 0)], 0, false),
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
        let nodeports = keys(&[(30080, 6, 0), (30080, 17, 0), (30090, 6, 0)]);
        let mut cleared = 0;
        for word in 0..FREE_PORT_WORDS {
            cleared += free_word(&nodeports, word).count_zeros();
        }
        assert_eq!(cleared, 2, "two distinct ports, whatever their protocols");
    }

    #[test]
    fn only_nodeport_entries_count() {
        let vip = ServiceKey {
            addr: u32::from_ne_bytes([198, 18, 0, 10]),
            port: 80u16.to_be(),
            proto: 6,
            scope: 0,
        };
        assert_eq!(nodeport_key(&vip), None);
        let node_port = ServiceKey {
            addr: NODEPORT_ADDR,
            ..vip
        };
        assert_eq!(nodeport_key(&node_port), Some((80u16.to_be(), 6, 0)));
    }
}
