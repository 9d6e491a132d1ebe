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

pub use ids::IdPool;
pub use plan::{Programmed, ProgrammedFrontend, SyncReport};
pub use recover::DatapathSnapshot;

use std::net::Ipv4Addr;

use crate::model::{Endpoint, FrontendKey, WhenEmpty};

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
        affinity_timeout_s: Option<u32>,
        when_empty: WhenEmpty,
    },
    DeleteService {
        key: FrontendKey,
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
