//! Which frontend a destination is: its own `VIP:port` entry, else the NodePort entry when
//! the address is one NodePorts answer on and a NodePort may use the port. Kube-proxy's
//! rules match the same way (exact destinations, then KUBE-NODEPORTS for local addresses).

use kproxy_common::{
    addr::IpAddress,
    iface::{NODEPORT_LIST_MAX, NodePortList},
    lb::{SCOPE_ALL, ServiceKeyOf, ServiceValue, free_port_bit},
};

use crate::{family::Family, filter, maps::KP_FREE_PORTS, policy};

type ServiceKey<F> = ServiceKeyOf<<F as Family>::Addr>;

/// The entry at `key`, in the map: copy it at once (the map is NO_PREALLOC, so the value
/// stays intact until then).
#[inline(always)]
fn get<F: Family>(key: &ServiceKey<F>) -> Option<&'static ServiceValue> {
    // SAFETY: a value of the map, which outlives the program; callers copy it at once.
    unsafe { F::services().get(key) }
}

/// Whether `addr` is a listed NodePort address no frontend uses as its own: its NodePort
/// entry, if any, is the only match (see `NodePortList`).
#[inline(always)]
pub fn listed_without_exact(list: &NodePortList, addr: u32) -> bool {
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
pub struct Dest<F: Family> {
    key: ServiceKey<F>,
    /// A listed NodePort address that no frontend uses as its own.
    nodeport_addr_only: bool,
    /// The port may be a NodePort's.
    nodeport_port: bool,
}

impl<F: Family> Dest<F> {
    #[inline(always)]
    pub fn of(addr: F::Addr, port: u16, proto: u8) -> Self {
        Self {
            key: ServiceKeyOf {
                addr,
                port,
                proto,
                scope: SCOPE_ALL,
            },
            nodeport_addr_only: F::listed_nodeport_only(addr),
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
    pub fn find(&self) -> Option<(ServiceKey<F>, ServiceValue)> {
        self.find_entry().map(|(key, svc)| (key, *svc))
    }

    /// [`Dest::find`]'s entry in the map, to be copied at once where it is kept (a stage
    /// with no stack for a copy of its own copies it into its stage state).
    #[inline(always)]
    pub fn find_entry(&self) -> Option<(ServiceKey<F>, &'static ServiceValue)> {
        // One key, changed in place: the IPv6 programs have no stack for copies.
        let mut key = self.key;
        if self.nodeport_addr_only {
            // A listed NodePort address: the NodePort entry first, one hash lookup for a
            // NodePort packet instead of three. The address's own entries are still looked
            // at on a miss, in case the list lags behind a frontend just added on it.
            if self.nodeport_port {
                key.addr = F::Addr::UNSPECIFIED;
                if let Some(svc) = get::<F>(&key) {
                    return Some((key, svc));
                }
                key.addr = self.key.addr;
            }
            if !filter::may_be_frontend::<F>(key.addr) {
                return None;
            }
            return get::<F>(&key).map(|svc| (key, svc));
        }
        // The destination's own entry, looked up only if `KP_FILTER` says a frontend may
        // have its address.
        if filter::may_be_frontend::<F>(key.addr)
            && let Some(svc) = get::<F>(&key)
        {
            return Some((key, svc));
        }
        if !self.nodeport_port || !policy::is_nodeport_addr::<F>(key.addr) {
            return None;
        }
        // NodePorts are keyed by the unspecified address (`NODEPORT_ADDR` for IPv4).
        key.addr = F::Addr::UNSPECIFIED;
        get::<F>(&key).map(|svc| (key, svc))
    }
}

/// The frontend `addr:port` (`proto`) reaches, with the key it was found under.
#[inline(always)]
pub fn find<F: Family>(
    addr: F::Addr,
    port: u16,
    proto: u8,
) -> Option<(ServiceKey<F>, ServiceValue)> {
    Dest::<F>::of(addr, port, proto).find()
}

/// Whether `addr:port` (`proto`) reaches a frontend: [`find`]'s answer, asked without the
/// NodePort address list. For the loop over a new flow's candidate ports: the list's own
/// loop inside it multiplied the paths the kernel's verifier walks, for a shortcut that
/// only saves a hash lookup on a rare path.
#[inline(always)]
pub fn reached_without_list<F: Family>(addr: F::Addr, port: u16, proto: u8) -> bool {
    Dest::<F> {
        key: ServiceKeyOf {
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
