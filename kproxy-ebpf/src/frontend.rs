//! Which frontend a destination is: its own `VIP:port` entry, else the NodePort entry when
//! the address is one NodePorts answer on. Kube-proxy's rules match the same way (exact
//! destinations, then KUBE-NODEPORTS for local addresses).

use kproxy_common::{
    iface::{NODEPORT_LIST_MAX, NodePortList},
    lb::{NODEPORT_ADDR, SCOPE_ALL, ServiceKey, ServiceValue},
};

use crate::{
    maps::{KP_NODEPORT_LIST, KP_SERVICES},
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

/// The frontend `addr:port` (`proto`) reaches, with the key it was found under.
#[inline(always)]
pub fn find(addr: u32, port: u16, proto: u8) -> Option<(ServiceKey, ServiceValue)> {
    let mut key = ServiceKey {
        addr,
        port,
        proto,
        scope: SCOPE_ALL,
    };
    // A listed NodePort address: the NodePort entry first, one hash lookup for a NodePort
    // packet instead of three. The address's own entries are still looked at on a miss, in
    // case the list lags behind a frontend just added on it.
    if let Some(list) = KP_NODEPORT_LIST.get(0)
        && listed_without_exact(list, addr)
    {
        key.addr = NODEPORT_ADDR;
        if let Some(svc) = get(&key) {
            return Some((key, svc));
        }
        key.addr = addr;
        return get(&key).map(|svc| (key, svc));
    }
    if let Some(svc) = get(&key) {
        return Some((key, svc));
    }
    if !policy::is_nodeport_addr(addr) {
        return None;
    }
    key.addr = NODEPORT_ADDR;
    get(&key).map(|svc| (key, svc))
}
