//! `kproxy services`: what the datapath holds, read back from the pinned maps, with the
//! Service behind each frontend as the running agent names it (the maps hold ids only).

use std::{collections::BTreeMap, fmt::Write as _, net::SocketAddr, path::Path};

use anyhow::Result;
use kproxy_common::{lb::SLOT_BANK_SHIFT, stats::Counter};
use serde::Serialize;

use crate::{
    dataplane::maps::{ServiceMaps, global_stats},
    http::agent_api::{self, FrontendName},
    model::{Scope, WhenEmpty},
    sync::Listed,
    wire,
};

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct BackendView {
    pub id: u32,
    pub address: String,
    pub new_flows: u64,
    /// Packets translated towards it, and their bytes.
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ServiceView {
    /// `VIP:port/PROTO` (`[VIP]:port/PROTO` for IPv6), `*:port/PROTO` for a NodePort
    /// (every NodePort address; `[*]:port/PROTO` for an IPv6 one).
    pub frontend: String,
    /// `all`, or `internal`: the entry of an externalTrafficPolicy Local frontend for
    /// clients on this node.
    pub scope: &'static str,
    pub id: u32,
    /// The Service (`namespace/name`), its port's name, what the frontend is of it and its
    /// externalTrafficPolicy, as the agent names them (absent when it did not answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<FrontendName>,
    pub affinity_timeout_s: Option<u32>,
    /// What new connections get without backends: `reject` or `drop`.
    pub when_empty: &'static str,
    /// A NodePort, external IP or load-balancer IP.
    pub external: bool,
    /// externalTrafficPolicy Local: external clients get this node's endpoints only.
    pub external_local: bool,
    /// loadBalancerSourceRanges in force (empty: any source).
    pub source_ranges: Vec<String>,
    /// New flows pick their backend by Maglev hashing rather than in turn.
    pub maglev: bool,
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
    let backends: BTreeMap<u32, Listed> = snap.backends().collect();
    // Each service port's backends, found once: looking through all of them for every
    // frontend took minutes at 100,000 Services.
    let mut backends_of: BTreeMap<u32, Vec<(u32, &Listed)>> = BTreeMap::new();
    for (id, b) in &backends {
        backends_of.entry(b.svc_id).or_default().push((*id, b));
    }
    let slots: BTreeMap<(u32, u32), u32> = snap
        .slots
        .iter()
        .map(|(k, id)| ((k.svc_id, k.slot), *id))
        .collect();
    let mut ranges: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for (svc_id, range) in snap.source_ranges() {
        ranges.entry(svc_id).or_default().push(range.to_string());
    }
    let mut services = Vec::new();
    for (frontend, value) in snap.frontends() {
        let Some(frontend) = frontend else {
            continue;
        };
        let settings = wire::settings_of(value);
        let bank = u32::from(value.bank) << SLOT_BANK_SHIFT;
        let view = |id: u32, b: &Listed| {
            let stats = maps.backend_stats(id);
            BackendView {
                id,
                address: b.endpoint.to_string(),
                new_flows: stats.new_flows,
                packets: stats.packets,
                bytes: stats.bytes,
            }
        };
        let active: Vec<BackendView> = (0..u32::from(value.count))
            .filter_map(|i| {
                if value.slots_inline() {
                    value.inline_slot(i)
                } else {
                    slots.get(&(value.id, bank | i)).copied()
                }
            })
            .filter_map(|id| backends.get(&id).map(|b| view(id, b)))
            .collect();
        let listed_only = backends_of
            .get(&value.id)
            .into_iter()
            .flatten()
            .filter(|(id, _)| active.iter().all(|a| a.id != *id))
            .map(|&(id, b)| view(id, b))
            .collect();
        let stats = maps.service_stats(value.id).unwrap_or_default();
        services.push(ServiceView {
            frontend: frontend.with_scope(Scope::All).to_string(),
            scope: match frontend.scope {
                Scope::All => "all",
                Scope::Internal => "internal",
            },
            id: value.id,
            service: None,
            affinity_timeout_s: settings.affinity_timeout_s,
            when_empty: match settings.when_empty {
                WhenEmpty::Reject => "reject",
                WhenEmpty::Drop => "drop",
            },
            external: settings.external,
            external_local: settings.external_local,
            source_ranges: if settings.source_ranges {
                ranges.get(&value.id).cloned().unwrap_or_default()
            } else {
                Vec::new()
            },
            maglev: settings.maglev,
            backends: active,
            listed_only,
            packets: stats.packets,
            bytes: stats.bytes,
            new_flows: stats.new_flows,
            rejected: stats.rejected,
        });
    }
    services.sort_by(|a, b| (&a.frontend, a.scope).cmp(&(&b.frontend, b.scope)));
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
        let frontend = if s.scope == "all" {
            s.frontend.clone()
        } else {
            format!("{} ({})", s.frontend, s.scope)
        };
        let mut flags = Vec::new();
        if s.external {
            flags.push("external");
        }
        if s.external_local {
            flags.push("external-local");
        }
        if !s.source_ranges.is_empty() {
            flags.push("source-ranges");
        }
        if s.when_empty == "drop" {
            flags.push("drop-when-empty");
        }
        if s.maglev {
            flags.push("maglev");
        }
        let flags = if flags.is_empty() {
            String::new()
        } else {
            format!(" [{}]", flags.join(","))
        };
        let _ = writeln!(
            out,
            "{frontend:<24} id={:<5} backends={:<3} affinity={:<14} packets={} bytes={} new_flows={} rejected={}{flags}",
            s.id,
            s.backends.len(),
            affinity,
            s.packets,
            s.bytes,
            s.new_flows,
            s.rejected
        );
        if let Some(name) = &s.service {
            let port = if name.port.is_empty() {
                String::new()
            } else {
                format!(" port {}", name.port)
            };
            let policy: String = [
                ("internalTrafficPolicy", &name.internal_traffic_policy),
                ("externalTrafficPolicy", &name.external_traffic_policy),
            ]
            .iter()
            .filter_map(|(field, value)| Some(format!(", {field} {}", value.as_ref()?)))
            .collect();
            let _ = writeln!(
                out,
                "    service {}{port} ({}{policy})",
                name.service, name.kind
            );
        }
        if !s.source_ranges.is_empty() {
            let _ = writeln!(out, "    from {}", s.source_ranges.join(", "));
        }
        for b in &s.backends {
            let _ = writeln!(
                out,
                "    -> {:<21} id={:<6} new_flows={} packets={} bytes={}",
                b.address, b.id, b.new_flows, b.packets, b.bytes
            );
        }
        for b in &s.listed_only {
            let _ = writeln!(
                out,
                "    .. {:<21} id={:<6} new_flows={} packets={} bytes={} (listed only: keeps its TCP flows, takes no new ones)",
                b.address, b.id, b.new_flows, b.packets, b.bytes
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

/// Attaches each frontend's Service from `names` (the agent's answer).
pub fn name(view: &mut DatapathView, names: Vec<FrontendName>) {
    let mut by_frontend: BTreeMap<(String, String), FrontendName> = names
        .into_iter()
        .map(|n| ((n.frontend.clone(), n.scope.to_string()), n))
        .collect();
    for s in &mut view.services {
        s.service = by_frontend.remove(&(s.frontend.clone(), s.scope.to_owned()));
    }
}

pub fn print(pin_dir: &Path, json: bool, agent: SocketAddr) -> Result<()> {
    let mut view = collect(pin_dir)?;
    let names = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            rt.block_on(async {
                tokio::time::timeout(
                    std::time::Duration::from_secs(2),
                    agent_api::frontend_names(agent),
                )
                .await
                .map_err(|_| anyhow::anyhow!("the agent at {agent} did not answer in 2 s"))?
            })
        });
    match names {
        Ok(names) => name(&mut view, names),
        Err(e) => eprintln!("Service names not shown: {e:#}"),
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print!("{}", render(&view));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(frontend: &str, scope: &'static str) -> ServiceView {
        ServiceView {
            frontend: frontend.into(),
            scope,
            id: 3,
            service: None,
            affinity_timeout_s: None,
            when_empty: "reject",
            external: false,
            external_local: false,
            source_ranges: Vec::new(),
            maglev: false,
            backends: vec![BackendView {
                id: 9,
                address: "198.18.2.2:8080".into(),
                new_flows: 4,
                packets: 9,
                bytes: 900,
            }],
            listed_only: Vec::new(),
            packets: 1,
            bytes: 2,
            new_flows: 3,
            rejected: 0,
        }
    }

    #[test]
    fn node_ports_scopes_and_flags_are_readable() {
        let local = ServiceView {
            external: true,
            external_local: true,
            when_empty: "drop",
            ..view("*:30080/TCP", "all")
        };
        let internal = ServiceView {
            external: true,
            ..view("*:30080/TCP", "internal")
        };
        let firewalled = ServiceView {
            external: true,
            maglev: true,
            source_ranges: vec!["203.0.113.0/25".into()],
            ..view("1.2.3.4:80/TCP", "all")
        };
        let text = render(&DatapathView {
            services: vec![
                view("198.19.0.10:80/TCP", "all"),
                local,
                internal,
                firewalled,
            ],
            counters: BTreeMap::new(),
        });
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("198.19.0.10:80/TCP "), "{text}");
        assert!(!lines[0].contains('['), "a ClusterIP has no flags: {text}");
        assert!(lines[2].starts_with("*:30080/TCP "), "{text}");
        assert!(
            lines[2].ends_with("[external,external-local,drop-when-empty]"),
            "{text}"
        );
        assert!(lines[4].starts_with("*:30080/TCP (internal) "), "{text}");
        assert!(lines[4].ends_with("[external]"), "{text}");
        assert!(
            lines[6].ends_with("[external,source-ranges,maglev]"),
            "{text}"
        );
        assert_eq!(lines[7], "    from 203.0.113.0/25", "{text}");
    }

    #[test]
    fn frontends_are_named_by_the_agents_answer() {
        let mut datapath = DatapathView {
            services: vec![
                view("198.19.0.10:80/TCP", "all"),
                view("*:30080/TCP", "all"),
                view("*:30080/TCP", "internal"),
                view("198.19.0.99:80/TCP", "all"),
            ],
            counters: BTreeMap::new(),
        };
        let named = |frontend: &str,
                     scope: &'static str,
                     kind: &'static str,
                     policy: Option<&'static str>| FrontendName {
            frontend: frontend.into(),
            scope: scope.into(),
            service: "shop/web".into(),
            port: "http".into(),
            kind: kind.into(),
            internal_traffic_policy: Some("Cluster".into()),
            external_traffic_policy: policy.map(Into::into),
        };
        name(
            &mut datapath,
            vec![
                named("198.19.0.10:80/TCP", "all", "ClusterIP", None),
                named("*:30080/TCP", "all", "NodePort", Some("Local")),
                named("*:30080/TCP", "internal", "NodePort", Some("Local")),
            ],
        );
        let text = render(&datapath);
        let services: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("    service "))
            .collect();
        assert_eq!(
            services,
            [
                "    service shop/web port http (ClusterIP, internalTrafficPolicy Cluster)",
                "    service shop/web port http (NodePort, internalTrafficPolicy Cluster, externalTrafficPolicy Local)",
                "    service shop/web port http (NodePort, internalTrafficPolicy Cluster, externalTrafficPolicy Local)",
            ],
            "{text}"
        );
        assert!(
            datapath.services[3].service.is_none(),
            "unknown to the agent"
        );
    }
}
