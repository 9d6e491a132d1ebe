//! The service maps' entries, walked a chunk at a time. The drift check reads them against
//! the agent's record without holding them: at 100,000 Services, a snapshot of every entry
//! with its index held 21 MB for the moment of each check, the agent's peak.

use std::net::IpAddr;

use anyhow::Result;
use ipnet::IpNet;
use kproxy_common::{
    lb::{ServiceValue, SlotKey},
    maglev::MaglevKey,
};

use super::{DatapathSnapshot, Listed};
use crate::model::FrontendKey;

/// Walks of each service map, both families. Each call hands every entry to `each` in
/// turn, in no particular order, until `each` says to stop (`false`).
pub trait MapWalk {
    /// The frontends (`None`: a key the agent cannot read).
    fn frontends(
        &self,
        each: &mut dyn FnMut(Option<FrontendKey>, &ServiceValue) -> bool,
    ) -> Result<()>;
    fn slots(&self, each: &mut dyn FnMut(&SlotKey, u32) -> bool) -> Result<()>;
    fn backends(&self, each: &mut dyn FnMut(u32, Listed) -> bool) -> Result<()>;
    fn vips(&self, each: &mut dyn FnMut(IpAddr) -> bool) -> Result<()>;
    /// The source ranges the agent can read, with their service port ids.
    fn source_ranges(&self, each: &mut dyn FnMut(u32, IpNet) -> bool) -> Result<()>;
    fn maglev(&self, each: &mut dyn FnMut(&MaglevKey) -> bool) -> Result<()>;
}

/// Hands `entries` to `each` until it says to stop.
fn walk<T>(entries: impl IntoIterator<Item = T>, mut each: impl FnMut(T) -> bool) {
    for entry in entries {
        if !each(entry) {
            break;
        }
    }
}

impl MapWalk for DatapathSnapshot {
    fn frontends(
        &self,
        each: &mut dyn FnMut(Option<FrontendKey>, &ServiceValue) -> bool,
    ) -> Result<()> {
        walk(DatapathSnapshot::frontends(self), |(key, value)| {
            each(key, value)
        });
        Ok(())
    }

    fn slots(&self, each: &mut dyn FnMut(&SlotKey, u32) -> bool) -> Result<()> {
        walk(&self.slots, |(key, id)| each(key, *id));
        Ok(())
    }

    fn backends(&self, each: &mut dyn FnMut(u32, Listed) -> bool) -> Result<()> {
        walk(DatapathSnapshot::backends(self), |(id, listed)| {
            each(id, listed)
        });
        Ok(())
    }

    fn vips(&self, each: &mut dyn FnMut(IpAddr) -> bool) -> Result<()> {
        walk(DatapathSnapshot::vips(self), each);
        Ok(())
    }

    fn source_ranges(&self, each: &mut dyn FnMut(u32, IpNet) -> bool) -> Result<()> {
        walk(DatapathSnapshot::source_ranges(self), |(svc_id, range)| {
            each(svc_id, range)
        });
        Ok(())
    }

    fn maglev(&self, each: &mut dyn FnMut(&MaglevKey) -> bool) -> Result<()> {
        walk(&self.maglev, each);
        Ok(())
    }
}
