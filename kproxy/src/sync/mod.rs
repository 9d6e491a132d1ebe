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
mod walk;

pub use ids::IdPool;
pub use plan::{ByFamily, EntryCounts, Programmed, ProgrammedFrontend, SyncReport};
pub use recover::{DatapathSnapshot, Listed};
pub use verify::{Check, Drift};
pub use walk::MapWalk;

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use ipnet::IpNet;
use kproxy_common::lb::INLINE_SLOTS;

use crate::model::{Endpoint, Frontend, FrontendKey, WhenEmpty, maglev};

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
    /// New connections only from the source ranges of its family (`SVC_F_SOURCE_RANGES`).
    pub source_ranges: bool,
    /// New flows pick their backend from its Maglev table (`SVC_F_MAGLEV`).
    pub maglev: bool,
}

impl ServiceSettings {
    pub fn of(key: &FrontendKey, frontend: &Frontend) -> Self {
        Self {
            affinity_timeout_s: frontend.affinity_timeout_s,
            when_empty: frontend.when_empty,
            external: frontend.kind.is_external(),
            external_local: frontend.external_local,
            source_ranges: !source_ranges(key, frontend).is_empty(),
            maglev: frontend.maglev,
        }
    }
}

/// The source ranges of `frontend` (of `key`) of its own family, sorted and unique: an IPv6
/// frontend's are the Service's IPv6 loadBalancerSourceRanges, an IPv4 one's the IPv4 ones
/// (kube-proxy's proxier of each family reads those of its family). A frontend whose
/// Service lists ranges of the other family only accepts every source, as kube-proxy's does.
pub fn source_ranges(key: &FrontendKey, frontend: &Frontend) -> Vec<IpNet> {
    let mut ranges: Vec<IpNet> = frontend
        .source_ranges
        .iter()
        .filter(|r| r.addr().is_ipv6() == key.addr.is_ipv6())
        .copied()
        .collect();
    ranges.sort_unstable();
    ranges.dedup();
    ranges
}

/// The Maglev table of `table_size` entries for `backends` (with their ids): the backend id
/// of each entry. Fails only if the size is no prime or not larger than the backend count.
pub fn maglev_backend_ids(
    backends: &[(Endpoint, u32)],
    table_size: u32,
) -> Result<Vec<u32>, maglev::MaglevError> {
    let addrs: Vec<SocketAddr> = backends
        .iter()
        .map(|(ep, _)| SocketAddr::new(ep.addr, ep.port))
        .collect();
    Ok(maglev::table(&addrs, table_size)?
        .into_iter()
        .map(|i| backends[i as usize].1)
        .collect())
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
    /// naming it are reset on their next packet, UDP flows move. `endpoint` is the one it
    /// was written for: its family says which backends map holds the id.
    DeleteBackend {
        id: u32,
        endpoint: Endpoint,
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
    /// Writes service port `svc_id`'s Maglev table of `table_size` entries for `bank`
    /// (`KP_MAGLEV`), built from `backends` (with their ids) when it is written, so that a
    /// sync holds one table at a time rather than every table it plans. Written before the
    /// service value that reads it is published, as slots are.
    PutMaglevTable {
        svc_id: u32,
        bank: u8,
        table_size: u32,
        backends: Arc<[(Endpoint, u32)]>,
    },
    /// Deletes the table of `table_size` entries of `svc_id` in `bank`, once no published
    /// service value reads it.
    DeleteMaglevTable {
        svc_id: u32,
        bank: u8,
        table_size: u32,
    },
    /// Readies a freed service port id for its next use: its round robin restarts at a random
    /// slot (one further on each CPU) and its counters from zero.
    ResetServiceCounters {
        svc_id: u32,
    },
    /// Publishes a frontend: one map update, atomic for the datapath. `inline`: the ids of
    /// its `count` backends when the value holds them itself (`lb::slots_inline`), else zero
    /// (they are in `bank` of `KP_SLOTS`).
    PutService {
        key: FrontendKey,
        svc_id: u32,
        count: u16,
        bank: u8,
        inline: [u32; INLINE_SLOTS],
        settings: ServiceSettings,
    },
    DeleteService {
        key: FrontendKey,
    },
    /// Lets new connections from `range` reach service port `svc_id` (`KP_SOURCE_RANGES`,
    /// or `KP_SOURCE_RANGES6` for an IPv6 range; used while its service value has
    /// `SVC_F_SOURCE_RANGES`). Written before the service value that needs it is published.
    PutSourceRange {
        svc_id: u32,
        range: IpNet,
    },
    /// Deleted once no published service value needs it.
    DeleteSourceRange {
        svc_id: u32,
        range: IpNet,
    },
    /// Some frontend uses `addr` as its VIP (`KP_VIPS` or `KP_VIPS6`: the datapath counts
    /// VIP traffic it leaves untranslated).
    PutVip {
        addr: IpAddr,
    },
    DeleteVip {
        addr: IpAddr,
    },
    /// Persists that backend ids below `up_to` may be in use, before any of them is written,
    /// so a restarted agent (even after `kill -9`) never hands one out again.
    ReserveBackendIds {
        up_to: u32,
    },
}

/// The `KP_BACKENDS` (`KP_BACKENDS6`) entry a backend write makes.
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

    /// The address whose family says which maps `op` writes (those of IPv4 or IPv6);
    /// `None` for the maps both families share (slots, counters, `KP_META`).
    pub fn family_addr(&self) -> Option<IpAddr> {
        match self {
            MapOp::PutBackend { endpoint, .. }
            | MapOp::SetBackendActive { endpoint, .. }
            | MapOp::DeleteBackend { endpoint, .. } => Some(endpoint.addr),
            MapOp::PutService { key, .. } | MapOp::DeleteService { key } => Some(key.addr),
            MapOp::PutSourceRange { range, .. } | MapOp::DeleteSourceRange { range, .. } => {
                Some(range.addr())
            }
            MapOp::PutVip { addr } | MapOp::DeleteVip { addr } => Some(*addr),
            MapOp::PutSlot { .. }
            | MapOp::DeleteSlot { .. }
            | MapOp::PutMaglevTable { .. }
            | MapOp::DeleteMaglevTable { .. }
            | MapOp::ResetServiceCounters { .. }
            | MapOp::ReserveBackendIds { .. } => None,
        }
    }

    /// Whether `op` only removes an entry: done once nothing holds it, even when the map
    /// it would be in does not exist.
    pub fn is_delete(&self) -> bool {
        matches!(
            self,
            MapOp::DeleteBackend { .. }
                | MapOp::DeleteSlot { .. }
                | MapOp::DeleteMaglevTable { .. }
                | MapOp::DeleteService { .. }
                | MapOp::DeleteSourceRange { .. }
                | MapOp::DeleteVip { .. }
        )
    }

    /// Whether `op` goes to an IPv6 map.
    pub fn is_ipv6(&self) -> bool {
        self.family_addr().is_some_and(|a| a.is_ipv6())
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

    /// Whether the datapath has the IPv6 maps (and so programs to read them). One built
    /// without them serves IPv4 only: IPv6 frontends are then modelled but not programmed.
    fn serves_ipv6(&self) -> bool {
        true
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

#[cfg(test)]
mod maglev_tests;

#[cfg(test)]
mod dual_stack_tests;

#[cfg(test)]
mod without_ipv6_tests;
