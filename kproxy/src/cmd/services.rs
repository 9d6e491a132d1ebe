//! `kproxy services`: what the datapath holds, read back from the pinned maps.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::Result;
use kproxy_common::{lb::SLOT_BANK_SHIFT, stats::Counter};
use serde::Serialize;

use crate::{
    dataplane::maps::{ServiceMaps, global_stats},
    wire,
};

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct BackendView {
    pub id: u32,
    pub address: String,
    pub new_flows: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ServiceView {
    /// `VIP:port/PROTO`
    pub frontend: String,
    pub id: u32,
    pub affinity_timeout_s: Option<u32>,
    /// Backends taking new connections, in slot order.
    pub backends: Vec<BackendView>,
    /// Endpoints still listed (not ready, terminating, elsewhere): their established TCP
    /// flows go on, nothing new goes there.
    pub listed_only: Vec<BackendView>,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub rejected: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct DatapathView {
    pub services: Vec<ServiceView>,
    /// Global counters by name.
    pub counters: BTreeMap<&'static str, u64>,
}

/// Reads frontends, their active backends and all counters from the pins under `pin_dir`.
pub fn collect(pin_dir: &Path) -> Result<DatapathView> {
    let maps = ServiceMaps::open(pin_dir)?;
    let snap = maps.snapshot()?;
    let backends: BTreeMap<u32, _> = snap.backends.iter().copied().collect();
    let slots: BTreeMap<(u32, u32), u32> = snap
        .slots
        .iter()
        .map(|(k, id)| ((k.svc_id, k.slot), *id))
        .collect();
    let mut services = Vec::new();
    for (key, value) in &snap.services {
        let Some(frontend) = wire::frontend_key(key) else {
            continue;
        };
        let bank = u32::from(value.bank) << SLOT_BANK_SHIFT;
        let view = |id: u32, b: &kproxy_common::lb::Backend| BackendView {
            id,
            address: wire::endpoint(b).to_string(),
            new_flows: maps.backend_stats(id).new_flows,
        };
        let active: Vec<BackendView> = (0..u32::from(value.count))
            .filter_map(|i| slots.get(&(value.id, bank | i)))
            .filter_map(|id| backends.get(id).map(|b| view(*id, b)))
            .collect();
        let listed_only = backends
            .iter()
            .filter(|(id, b)| b.svc_id == value.id && active.iter().all(|a| a.id != **id))
            .map(|(id, b)| view(*id, b))
            .collect();
        let stats = maps.service_stats(value.id).unwrap_or_default();
        services.push(ServiceView {
            frontend: frontend.to_string(),
            id: value.id,
            affinity_timeout_s: wire::affinity_of(value),
            backends: active,
            listed_only,
            packets: stats.packets,
            bytes: stats.bytes,
            new_flows: stats.new_flows,
            rejected: stats.rejected,
        });
    }
    services.sort_by(|a, b| a.frontend.cmp(&b.frontend));
    let global = global_stats(pin_dir)?;
    let counters = Counter::ALL
        .iter()
        .map(|c| (c.name(), global.counters[*c as usize]))
        .collect();
    Ok(DatapathView { services, counters })
}

pub fn render(view: &DatapathView) -> String {
    let mut out = String::new();
    for s in &view.services {
        let affinity = s
            .affinity_timeout_s
            .map_or_else(|| "none".to_owned(), |t| format!("ClientIP {t}s"));
        let _ = writeln!(
            out,
            "{:<24} id={:<5} backends={:<3} affinity={:<14} packets={} bytes={} new_flows={} rejected={}",
            s.frontend,
            s.id,
            s.backends.len(),
            affinity,
            s.packets,
            s.bytes,
            s.new_flows,
            s.rejected
        );
        for b in &s.backends {
            let _ = writeln!(
                out,
                "    -> {:<21} id={:<6} new_flows={}",
                b.address, b.id, b.new_flows
            );
        }
        for b in &s.listed_only {
            let _ = writeln!(
                out,
                "    .. {:<21} id={:<6} new_flows={} (listed only: keeps its TCP flows, takes no new ones)",
                b.address, b.id, b.new_flows
            );
        }
    }
    let _ = writeln!(out, "datapath counters:");
    let width = view.counters.keys().map(|k| k.len()).max().unwrap_or(0);
    for (name, value) in &view.counters {
        let _ = writeln!(out, "    {name:<width$} {value}");
    }
    out
}

pub fn print(pin_dir: &Path, json: bool) -> Result<()> {
    let view = collect(pin_dir)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print!("{}", render(&view));
    }
    Ok(())
}
