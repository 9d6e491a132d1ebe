//! One family's service maps: `KP_SERVICES`, `KP_BACKENDS`, `KP_VIPS` and
//! `KP_SOURCE_RANGES`, or their IPv6 twins. Service port ids and backend ids are shared by
//! the two families, and so are the maps indexed by them (slots, counters): `ServiceMaps`
//! holds those once, and one of these per family.

use std::{net::IpAddr, path::Path};

use anyhow::{Context, Result};
use aya::{
    Pod,
    maps::{HashMap, LpmTrie, MapData, lpm_trie::Key},
};
use ipnet::IpNet;
use kproxy_common::{
    lb::{BackendOf, ServiceKeyOf, ServiceValue},
    names,
};

use super::{WALK_CHUNK, batch, ignore_missing, open, open_typed, raw, write_batch};
use crate::{
    dataplane::load::pinned_together,
    model::FrontendKey,
    sync::{BackendEntry, Listed, MapOp},
    wire::{self, WireAddr},
};

/// The names of one family's maps.
struct Names {
    services: &'static str,
    backends: &'static str,
    vips: &'static str,
    source_ranges: &'static str,
}

impl Names {
    fn of<A: WireAddr>() -> Self {
        Self {
            services: wire::map_name::<A>(names::MAP_SERVICES, names::MAP_SERVICES6),
            backends: wire::map_name::<A>(names::MAP_BACKENDS, names::MAP_BACKENDS6),
            vips: wire::map_name::<A>(names::MAP_VIPS, names::MAP_VIPS6),
            source_ranges: wire::map_name::<A>(names::MAP_SOURCE_RANGES, names::MAP_SOURCE_RANGES6),
        }
    }

    fn all(&self) -> [&'static str; 4] {
        [self.services, self.backends, self.vips, self.source_ranges]
    }
}

/// The service maps of the family of addresses `A`.
pub(super) struct FamilyMaps<A: WireAddr> {
    names: Names,
    /// `services`, `backends` and `vips` again, untyped, for batch writes and walks.
    services_raw: MapData,
    backends_raw: MapData,
    vips_raw: MapData,
    services: HashMap<MapData, ServiceKeyOf<A>, ServiceValue>,
    backends: HashMap<MapData, u32, BackendOf<A>>,
    vips: HashMap<MapData, A, u32>,
    source_ranges: LpmTrie<MapData, A::RangeKey, u8>,
}

/// A write that dispatch sent to the other family's maps: a broken invariant, not input.
fn other_family(name: &str) -> anyhow::Error {
    anyhow::anyhow!("{name}: an entry of the other address family")
}

// The map types are `Pod` once their address type is fixed (`kproxy_common`'s `pod!`), which
// the bounds say for a generic `A`.
impl<A: WireAddr> FamilyMaps<A>
where
    ServiceKeyOf<A>: Pod,
    BackendOf<A>: Pod,
{
    /// The family's maps, when the loaded object has them (it pins all or none).
    pub(super) fn open_if_pinned(pin_dir: &Path) -> Result<Option<Self>> {
        if pinned_together(pin_dir, &Names::of::<A>().all())? {
            Self::open(pin_dir).map(Some)
        } else {
            Ok(None)
        }
    }

    pub(super) fn open(pin_dir: &Path) -> Result<Self> {
        let names = Names::of::<A>();
        Ok(Self {
            services_raw: raw(pin_dir, names.services)?,
            backends_raw: raw(pin_dir, names.backends)?,
            vips_raw: raw(pin_dir, names.vips)?,
            services: open_typed!(pin_dir, names.services),
            backends: open_typed!(pin_dir, names.backends),
            vips: open_typed!(pin_dir, names.vips),
            source_ranges: open_typed!(pin_dir, names.source_ranges),
            names,
        })
    }

    /// Walks the frontends (see `sync::MapWalk`).
    pub(super) fn walk_services(
        &self,
        each: &mut dyn FnMut(Option<FrontendKey>, &ServiceValue) -> bool,
    ) -> Result<bool> {
        let mut go_on = true;
        batch::for_each(
            &self.services_raw,
            WALK_CHUNK,
            |key: &ServiceKeyOf<A>, value| {
                go_on = each(wire::frontend_key(key), value);
                go_on
            },
        )
        .context(self.names.services)?;
        Ok(go_on)
    }

    pub(super) fn walk_backends(&self, each: &mut dyn FnMut(u32, Listed) -> bool) -> Result<bool> {
        let mut go_on = true;
        batch::for_each(
            &self.backends_raw,
            WALK_CHUNK,
            |id: &u32, backend: &BackendOf<A>| {
                go_on = each(*id, Listed::of(backend));
                go_on
            },
        )
        .context(self.names.backends)?;
        Ok(go_on)
    }

    pub(super) fn walk_vips(&self, each: &mut dyn FnMut(IpAddr) -> bool) -> Result<bool> {
        let mut go_on = true;
        batch::for_each(&self.vips_raw, WALK_CHUNK, |addr: &A, _: &u32| {
            go_on = each(addr.to_ip());
            go_on
        })
        .context(self.names.vips)?;
        Ok(go_on)
    }

    pub(super) fn walk_source_ranges(
        &self,
        each: &mut dyn FnMut(u32, IpNet) -> bool,
    ) -> Result<bool> {
        for key in self.source_ranges.keys() {
            let key = key.context(self.names.source_ranges)?;
            if let Some((svc_id, range)) = wire::source_range::<A>(key.prefix_len(), &key.data())
                && !each(svc_id, range)
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    pub(super) fn services(&self) -> Result<Vec<(ServiceKeyOf<A>, ServiceValue)>> {
        batch::all(&self.services_raw, WALK_CHUNK).context(self.names.services)
    }

    pub(super) fn backends(&self) -> Result<Vec<(u32, BackendOf<A>)>> {
        batch::all(&self.backends_raw, WALK_CHUNK).context(self.names.backends)
    }

    pub(super) fn vips(&self) -> Result<Vec<A>> {
        let vips: Vec<(A, u32)> =
            batch::all(&self.vips_raw, WALK_CHUNK).context(self.names.vips)?;
        Ok(vips.into_iter().map(|(addr, _)| addr).collect())
    }

    /// The source range keys with their prefix lengths.
    pub(super) fn source_ranges(&self) -> Result<Vec<(u32, A::RangeKey)>> {
        self.source_ranges
            .keys()
            .map(|k| k.map(|k| (k.prefix_len(), k.data())))
            .collect::<Result<_, _>>()
            .context(self.names.source_ranges)
    }

    /// The frontends the services map holds (entries the agent cannot read left out).
    pub(super) fn frontend_keys(&self) -> Result<Vec<FrontendKey>> {
        let mut keys = Vec::new();
        for key in self.services.keys() {
            keys.extend(wire::frontend_key(&key.context(self.names.services)?));
        }
        Ok(keys)
    }

    /// Writes the `PutBackend`/`SetBackendActive` ops `ops`, all of this family, in as few
    /// syscalls as it can; one result per op.
    pub(super) fn put_backends(&self, ops: &[&MapOp]) -> Vec<Result<()>> {
        write_batch(&self.backends_raw, self.names.backends, ops, |op| {
            let b = op.backend_entry()?;
            Some((b.id, wire::backend::<A>(&b.endpoint, b.svc_id, b.active)?))
        })
    }

    /// Writes the `PutService` ops `ops`, all of this family; one result per op.
    pub(super) fn put_services(&self, ops: &[&MapOp]) -> Vec<Result<()>> {
        write_batch(
            &self.services_raw,
            self.names.services,
            ops,
            |op| match op {
                MapOp::PutService {
                    key,
                    svc_id,
                    count,
                    bank,
                    inline,
                    settings,
                } => Some((
                    wire::service_key::<A>(key)?,
                    wire::service_value(*svc_id, *count, *bank, *inline, settings),
                )),
                _ => None,
            },
        )
    }

    /// Writes the `PutVip` ops `ops`, all of this family, in as few syscalls as it can; one
    /// result per op. A first sync puts a VIP for nearly every Service: one syscall each
    /// took 0.13 s of CPU at 100,000 of them.
    pub(super) fn put_vips(&self, ops: &[&MapOp]) -> Vec<Result<()>> {
        write_batch(&self.vips_raw, self.names.vips, ops, |op| match op {
            MapOp::PutVip { addr } => Some((A::from_ip(*addr)?, 1u32)),
            _ => None,
        })
    }

    pub(super) fn put_backend(&mut self, b: &BackendEntry) -> Result<()> {
        let value = wire::backend::<A>(&b.endpoint, b.svc_id, b.active)
            .ok_or_else(|| other_family(self.names.backends))?;
        self.backends
            .insert(b.id, value, 0)
            .context(self.names.backends)
    }

    pub(super) fn delete_backend(&mut self, id: u32) -> Result<()> {
        ignore_missing(self.backends.remove(&id)).context(self.names.backends)
    }

    pub(super) fn put_service(&mut self, key: &FrontendKey, value: ServiceValue) -> Result<()> {
        let key = wire::service_key::<A>(key).ok_or_else(|| other_family(self.names.services))?;
        self.services
            .insert(key, value, 0)
            .context(self.names.services)
    }

    pub(super) fn delete_service(&mut self, key: &FrontendKey) -> Result<()> {
        let key = wire::service_key::<A>(key).ok_or_else(|| other_family(self.names.services))?;
        ignore_missing(self.services.remove(&key)).context(self.names.services)
    }

    pub(super) fn put_vip(&mut self, addr: IpAddr) -> Result<()> {
        let addr = A::from_ip(addr).ok_or_else(|| other_family(self.names.vips))?;
        self.vips.insert(addr, 1, 0).context(self.names.vips)
    }

    pub(super) fn delete_vip(&mut self, addr: IpAddr) -> Result<()> {
        let addr = A::from_ip(addr).ok_or_else(|| other_family(self.names.vips))?;
        ignore_missing(self.vips.remove(&addr)).context(self.names.vips)
    }

    pub(super) fn put_source_range(&mut self, svc_id: u32, range: IpNet) -> Result<()> {
        let key = self.range_key(svc_id, range)?;
        self.source_ranges
            .insert(&key, 1, 0)
            .context(self.names.source_ranges)
    }

    pub(super) fn delete_source_range(&mut self, svc_id: u32, range: IpNet) -> Result<()> {
        let key = self.range_key(svc_id, range)?;
        ignore_missing(self.source_ranges.remove(&key)).context(self.names.source_ranges)
    }

    fn range_key(&self, svc_id: u32, range: IpNet) -> Result<Key<A::RangeKey>> {
        let (len, key) = wire::source_range_key::<A>(svc_id, range)
            .ok_or_else(|| other_family(self.names.source_ranges))?;
        Ok(Key::new(len, key))
    }
}
