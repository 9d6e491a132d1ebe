//! Which frontend a destination is: its own `VIP:port` entry, else the NodePort wildcard
//! when the address is one NodePorts answer on.

use kproxy_common::lb::{NODEPORT_ADDR, SCOPE_ALL, ServiceKey, ServiceValue};

use crate::{maps::KP_SERVICES, policy};

/// The frontend `addr:port` (`proto`) reaches, with the key it was found under.
#[inline(always)]
pub fn find(addr: u32, port: u16, proto: u8) -> Option<(ServiceKey, ServiceValue)> {
    let mut key = ServiceKey {
        addr,
        port,
        proto,
        scope: SCOPE_ALL,
    };
    // SAFETY: copied at once; KP_SERVICES is NO_PREALLOC, so the value stays intact until then.
    if let Some(svc) = unsafe { KP_SERVICES.get(key) }.copied() {
        return Some((key, svc));
    }
    if !policy::is_nodeport_addr(addr) {
        return None;
    }
    key.addr = NODEPORT_ADDR;
    // SAFETY: as above.
    unsafe { KP_SERVICES.get(key) }
        .copied()
        .map(|svc| (key, svc))
}
