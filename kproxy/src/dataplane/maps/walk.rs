//! The drift check's walks of the pinned maps (see `sync::MapWalk`): a chunk of entries
//! at a time, never the whole map.

use std::net::IpAddr;

use anyhow::{Context, Result};
use ipnet::IpNet;
use kproxy_common::{
    lb::{BackendOf, ServiceKeyOf, ServiceValue, SlotKey},
    maglev::MaglevKey,
};

use super::{FamilyMaps, ServiceMaps, WALK_CHUNK, batch};
use crate::{
    model::FrontendKey,
    sync::{Listed, MapWalk},
    wire::WireAddr,
};

impl ServiceMaps {
    /// Walks a map of each family in turn, while `walk` says to go on.
    fn both_families(&self, mut walk: impl FnMut(&dyn FamilyWalk) -> Result<bool>) -> Result<()> {
        if walk(&self.v4)?
            && let Some(v6) = &self.v6
        {
            walk(v6)?;
        }
        Ok(())
    }
}

/// One family's walks, whichever family.
trait FamilyWalk {
    fn services(
        &self,
        each: &mut dyn FnMut(Option<FrontendKey>, &ServiceValue) -> bool,
    ) -> Result<bool>;
    fn backends(&self, each: &mut dyn FnMut(u32, Listed) -> bool) -> Result<bool>;
    fn vips(&self, each: &mut dyn FnMut(IpAddr) -> bool) -> Result<bool>;
    fn source_ranges(&self, each: &mut dyn FnMut(u32, IpNet) -> bool) -> Result<bool>;
}

impl<A: WireAddr> FamilyWalk for FamilyMaps<A>
where
    ServiceKeyOf<A>: aya::Pod,
    BackendOf<A>: aya::Pod,
{
    fn services(
        &self,
        each: &mut dyn FnMut(Option<FrontendKey>, &ServiceValue) -> bool,
    ) -> Result<bool> {
        self.walk_services(each)
    }

    fn backends(&self, each: &mut dyn FnMut(u32, Listed) -> bool) -> Result<bool> {
        self.walk_backends(each)
    }

    fn vips(&self, each: &mut dyn FnMut(IpAddr) -> bool) -> Result<bool> {
        self.walk_vips(each)
    }

    fn source_ranges(&self, each: &mut dyn FnMut(u32, IpNet) -> bool) -> Result<bool> {
        self.walk_source_ranges(each)
    }
}

impl MapWalk for ServiceMaps {
    fn frontends(
        &self,
        each: &mut dyn FnMut(Option<FrontendKey>, &ServiceValue) -> bool,
    ) -> Result<()> {
        self.both_families(|family| family.services(each))
    }

    fn slots(&self, each: &mut dyn FnMut(&SlotKey, u32) -> bool) -> Result<()> {
        batch::for_each(&self.slots_raw, WALK_CHUNK, |key: &SlotKey, id: &u32| {
            each(key, *id)
        })
        .context("KP_SLOTS")
    }

    fn backends(&self, each: &mut dyn FnMut(u32, Listed) -> bool) -> Result<()> {
        self.both_families(|family| family.backends(each))
    }

    fn vips(&self, each: &mut dyn FnMut(IpAddr) -> bool) -> Result<()> {
        self.both_families(|family| family.vips(each))
    }

    fn source_ranges(&self, each: &mut dyn FnMut(u32, IpNet) -> bool) -> Result<()> {
        self.both_families(|family| family.source_ranges(each))
    }

    fn maglev(&self, each: &mut dyn FnMut(&MaglevKey) -> bool) -> Result<()> {
        for key in self.maglev.keys() {
            if !each(&key.context("KP_MAGLEV")?) {
                break;
            }
        }
        Ok(())
    }
}
