//! Desired state versus what the datapath holds: plans the map operations that turn one into
//! the other, applies them through a `Datapath`, and keeps track of what is programmed.
//!
//! Only differences are written. A service port's backend set changes atomically: the new set
//! goes into the inactive slot bank, then one `PutService` flips bank and count.

mod execute;
pub mod gc;
mod ids;
mod plan;
mod recover;
mod verify;

pub use ids::IdPool;
pub use plan::{Programmed, ProgrammedFrontend, SyncReport};
pub use recover::DatapathSnapshot;
pub use verify::{Check, Drift};

use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};

use crate::model::{Endpoint, Frontend, FrontendKey, WhenEmpty};

/// What a frontend's service value says besides its backends (its `SVC_F_*` flags and the
/// affinity timeout).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceSettings {
    /// ClientIP session affinity timeout, when affinity is on.
    pub affinity_timeout_s: Option<u32>,
    pub when_empty: WhenEmpty,
    /// A NodePort, external IP or load-balancer IP (`SVC_F_EXTERNAL`).
    pub external: bool,
    /// The node-local entry of an externalTrafficPolicy Local frontend (`SVC_F_EXT_LOCAL`).
    pub external_local: bool,
    /// New connections only from `KP_SOURCE_RANGES` (`SVC_F_SOURCE_RANGES`).
    pub source_ranges: bool,
}

impl ServiceSettings {
    pub fn of(frontend: &Frontend) -> Self {
        Self {
            affinity_timeout_s: frontend.affinity_timeout_s,
            when_empty: frontend.when_empty,
            external: frontend.kind.is_external(),
            external_local: frontend.external_local,
            source_ranges: !source_ranges_v4(frontend).is_empty(),
        }
    }
}

/// The IPv4 source ranges of `frontend` (the datapath serves IPv4), sorted and unique.
pub fn source_ranges_v4(frontend: &Frontend) -> Vec<Ipv4Net> {
    let mut ranges: Vec<Ipv4Net> = frontend
        .source_ranges
        .iter()
        .filter_map(|r| match r {
            IpNet::V4(net) => Some(*net),
            IpNet::V6(_) => None,
        })
        .collect();
    ranges.sort_unstable();
    ranges.dedup();
    ranges
}

/// One write to the datapath's service maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapOp {
    /// Creates backend `id` of service port `svc_id`; `active`: it takes new connections
    /// (it is in the active slot bank), otherwise it is only listed.
    PutBackend {
        id: u32,
        endpoint: Endpoint,
        svc_id: u32,
        active: bool,
    },
    /// Switches an existing backend between taking new connections and only being listed.
    SetBackendActive {
        id: u32,
        endpoint: Endpoint,
        svc_id: u32,
        active: bool,
    },
    /// Deletes backend `id` (and its counters): its endpoint is listed no more. TCP flows
    /// naming it are reset on their next packet, UDP flows move.
    DeleteBackend {
        id: u32,
    },
    PutSlot {
        svc_id: u32,
        bank: u8,
        index: u32,
        backend_id: u32,
    },
    DeleteSlot {
        svc_id: u32,
        bank: u8,
        index: u32,
    },
    /// Zeroes the round-robin position and counters of a newly used service port id.
    ResetServiceCounters {
        svc_id: u32,
    },
    /// Publishes a frontend: one map update, atomic for the datapath.
    PutService {
        key: FrontendKey,
        svc_id: u32,
        count: u16,
        bank: u8,
        settings: ServiceSettings,
    },
    DeleteService {
        key: FrontendKey,
    },
    /// Lets new connections from `range` reach service port `svc_id` (`KP_SOURCE_RANGES`;
    /// used while its service value has `SVC_F_SOURCE_RANGES`). Written before the service
    /// value that needs it is published.
    PutSourceRange {
        svc_id: u32,
        range: Ipv4Net,
    },
    /// Deleted once no published service value needs it.
    DeleteSourceRange {
        svc_id: u32,
        range: Ipv4Net,
    },
    /// Some frontend uses `addr` as its VIP (the datapath counts VIP traffic it leaves
    /// untranslated).
    PutVip {
        addr: Ipv4Addr,
    },
    DeleteVip {
        addr: Ipv4Addr,
    },
    /// Persists that backend ids below `up_to` may be in use, before any of them is written,
    /// so a restarted agent (even after `kill -9`) never hands one out again.
    ReserveBackendIds {
        up_to: u32,
    },
}

/// The `KP_BACKENDS` entry a backend write makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendEntry {
    pub id: u32,
    pub endpoint: Endpoint,
    pub svc_id: u32,
    pub active: bool,
}

impl MapOp {
    /// What a `PutBackend` or `SetBackendActive` writes into `KP_BACKENDS` (the two differ
    /// only in how a failed change undoes them).
    pub fn backend_entry(&self) -> Option<BackendEntry> {
        match *self {
            MapOp::PutBackend {
                id,
                endpoint,
                svc_id,
                active,
            }
            | MapOp::SetBackendActive {
                id,
                endpoint,
                svc_id,
                active,
            } => Some(BackendEntry {
                id,
                endpoint,
                svc_id,
                active,
            }),
            _ => None,
        }
    }
}

/// Where map operations go: the kernel's maps, or a model of them in tests.
pub trait Datapath {
    /// Applies one operation. Deleting something absent is not an error.
    fn apply(&mut self, op: &MapOp) -> anyhow::Result<()>;

    /// Applies independent operations, in order; one result per operation. A datapath that
    /// can write many entries in one call overrides this.
    fn apply_batch(&mut self, ops: &[&MapOp]) -> Vec<anyhow::Result<()>> {
        ops.iter().map(|op| self.apply(op)).collect()
    }
}

#[cfg(test)]
pub mod fake;

#[cfg(test)]
mod full_map_tests;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod external_tests;
