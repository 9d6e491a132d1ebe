//! Which frontend a destination is: its own `VIP:port` entry, else the NodePort entry when
//! the address is one NodePorts answer on and a NodePort may use the port. Kube-proxy's
//! rules match the same way (exact destinations, then KUBE-NODEPORTS for local addresses).

use kproxy_common::{
    iface::{NODEPORT_LIST_MAX, NodePortList},
    lb::{NODEPORT_ADDR, SCOPE_ALL, ServiceKey, ServiceValue, free_port_bit},
};

use crate::{
    maps::{KP_FREE_PORTS, KP_NODEPORT_LIST, KP_SERVICES},
    policy,
};

/// A copy of the entry at `key`.
#[inline(always)]
fn get(key: &ServiceKey) -> Option<ServiceValue> {
    // SAFETY: copied at once; KP_SERVICES is NO_PREALLOC, so the value stays intact until then.
    unsafe { KP_SERVICES.get(key) }.copied()
}

/// Whether `addr` is a listed NodePort address no frontend uses as its own: its NodePort
/// entry, if any, is the only match (see `NodePortList`).
#[inline(always)]
fn listed_without_exact(list: &NodePortList, addr: u32) -> bool {
    let mut i = 0;
    while i < NODEPORT_LIST_MAX {
        if (i as u32) < list.count && list.addrs[i] == addr {
            return list.exact_mask & (1 << i) == 0;
        }
        i += 1;
    }
    false
}

/// Whether a NodePort may use `port` (network byte order): its `KP_FREE_PORTS` bit is not
/// set (see `free_port_bit`).
#[inline(always)]
fn may_be_nodeport(port: u16) -> bool {
    let (word, bit) = free_port_bit(port);
    KP_FREE_PORTS.get(word).is_none_or(|free| free & bit == 0)
}

/// A packet's destination, with what the two arrays say about it before any hash lookup.
#[derive(Clone, Copy)]
pub struct Dest {
    key: ServiceKey,
    /// A listed NodePort address that no frontend uses as its own.
    nodeport_addr_only: bool,
    /// The port may be a NodePort's.
    nodeport_port: bool,
}

impl Dest {
    #[inline(always)]
    pub fn of(addr: u32, port: u16, proto: u8) -> Self {
        Self {
            key: ServiceKey {
                addr,
                port,
                proto,
                scope: SCOPE_ALL,
            },
            nodeport_addr_only: KP_NODEPORT_LIST
                .get(0)
                .is_some_and(|list| listed_without_exact(list, addr)),
            nodeport_port: may_be_nodeport(port),
        }
    }

    /// Whether the only frontend this destination can reach is a NodePort: a packet to it is
    /// nearly always a NodePort flow's.
    #[inline(always)]
    pub fn is_nodeport(&self) -> bool {
        self.nodeport_addr_only && self.nodeport_port
    }

    /// The frontend this destination reaches, with the key it was found under.
    #[inline(always)]
    pub fn find(&self) -> Option<(ServiceKey, ServiceValue)> {
        let mut key = self.key;
        if self.nodeport_addr_only {
            // A listed NodePort address: the NodePort entry first, one hash lookup for a
            // NodePort packet instead of three. The address's own entries are still looked
            // at on a miss, in case the list lags behind a frontend just added on it.
            if self.nodeport_port {
                key.addr = NODEPORT_ADDR;
                if let Some(svc) = get(&key) {
                    return Some((key, svc));
                }
                key.addr = self.key.addr;
            }
            return get(&key).map(|svc| (key, svc));
        }
        if let Some(svc) = get(&key) {
            return Some((key, svc));
        }
        if !self.nodeport_port || !policy::is_nodeport_addr(key.addr) {
            return None;
        }
        key.addr = NODEPORT_ADDR;
        get(&key).map(|svc| (key, svc))
    }
}

/// The frontend `addr:port` (`proto`) reaches, with the key it was found under.
#[inline(always)]
pub fn find(addr: u32, port: u16, proto: u8) -> Option<(ServiceKey, ServiceValue)> {
    Dest::of(addr, port, proto).find()
}

/// Whether `addr:port` (`proto`) reaches a frontend: [`find`]'s answer, asked without the
/// NodePort address list. For the loop over a new flow's candidate ports: the list's own
/// loop inside it multiplied the paths the kernel's verifier walks, for a shortcut that
/// only saves a hash lookup on a rare path.
#[inline(always)]
pub fn reached_without_list(addr: u32, port: u16, proto: u8) -> bool {
    Dest {
        key: ServiceKey {
            addr,
            port,
            proto,
            scope: SCOPE_ALL,
        },
        nodeport_addr_only: false,
        nodeport_port: may_be_nodeport(port),
    }
    .find()
    .is_some()
}
