//! `kproxy explain SRC DST:PORT/PROTO`: what kproxy does with a connection from SRC to DST.
//! The agent says which frontends DST matches, the Service behind each and why its endpoints
//! are the ones used (policy, topology, readiness); the pinned maps say what happens now:
//! where a new flow would go (affinity, then each CPU's round-robin turn, or for a Maglev
//! frontend the backend its table gives the flow) and the flows SRC already has there.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use ipnet::IpNet;
use kproxy_common::{
    addr::In6Addr,
    ct::{AffinityKeyOf, CtEntryOf, FlowKeyOf},
    maglev::{HashedAddr, flow_hash},
};

use crate::{
    dataplane::maps::{FlowMaps, ServiceMaps, monotonic_ns},
    http::agent_api::{self, FrontendExplanation},
    model::{Endpoint, Protocol},
    sync::maglev_backend_ids,
    wire::{self, WireAddr},
};

/// The client: an address, or an address and port (one flow), of either family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Client {
    pub addr: IpAddr,
    pub port: Option<u16>,
}

impl std::str::FromStr for Client {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(addr) = s.parse::<IpAddr>() {
            return Ok(Self { addr, port: None });
        }
        s.parse::<SocketAddr>()
            .map(|a| Self {
                addr: a.ip(),
                port: Some(a.port()),
            })
            .map_err(|_| {
                format!("{s:?} is not an address or address:port ([address]:port for IPv6)")
            })
    }
}

/// `DST:PORT/PROTO` (`/TCP` when left out); an IPv6 `DST` in brackets: `[2001:db8::1]:80`.
pub fn parse_target(s: &str) -> Result<(SocketAddr, Protocol), String> {
    let (addr, proto) = s.split_once('/').unwrap_or((s, "TCP"));
    let proto = match proto.to_ascii_uppercase().as_str() {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        other => return Err(format!("protocol {other:?}: TCP or UDP")),
    };
    let addr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an address:port ([address]:port for IPv6)"))?;
    Ok((addr, proto))
}

/// What the maps say about a frontend right now, for one client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Runtime {
    /// The round-robin counters of the frontend's service port, one per CPU (none if not
    /// read).
    pub turns: Vec<u64>,
    /// The client's affinity entry: its backend id and how long ago it was last used.
    pub affinity: Option<(u32, Duration)>,
    /// The client's flows to the frontend: (client port, backend id, idle for).
    pub flows: Vec<(u16, u32, Duration)>,
    /// For a frontend that uses Maglev: where its table sends the client's flow.
    pub maglev: Option<MaglevPick>,
}

/// Where a Maglev frontend's table sends one flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaglevPick {
    pub table_size: u32,
    /// The backend and the table entry the flow's hash picks; `None` without the client's
    /// port (every port hashes elsewhere).
    pub pick: Option<(String, u32)>,
}

/// The datapath's flow hash (`kproxy_common::maglev`) of a flow from `client` at `port` to
/// `dst`, if both addresses are of family `A`.
fn hash_of<A: WireAddr + HashedAddr>(
    (client, port, dst, proto): (IpAddr, u16, SocketAddr, Protocol),
) -> Option<u32> {
    Some(flow_hash(
        A::from_ip(client)?,
        A::from_ip(dst.ip())?,
        wire::port_to_wire(port),
        wire::port_to_wire(dst.port()),
        proto.number(),
    ))
}

impl MaglevPick {
    /// The pick of the table of `table_size` entries over `backends` (as the agent lists
    /// them: endpoint and backend id) for `client`'s flow to `dst` over `proto`, computed
    /// as the agent builds the table and the datapath hashes the flow.
    pub fn of(
        backends: &[(String, u32)],
        table_size: u32,
        client: Client,
        dst: SocketAddr,
        proto: Protocol,
    ) -> Self {
        let pick = client.port.and_then(|port| {
            let listed: Vec<(Endpoint, u32)> = backends
                .iter()
                .map(|(e, id)| {
                    let addr: SocketAddr = e.parse().ok()?;
                    Some((
                        Endpoint {
                            addr: addr.ip(),
                            port: addr.port(),
                        },
                        *id,
                    ))
                })
                .collect::<Option<_>>()?;
            let ids = maglev_backend_ids(&listed, table_size).ok()?;
            let flow = (client.addr, port, dst, proto);
            let hash = hash_of::<u32>(flow).or_else(|| hash_of::<In6Addr>(flow))?;
            let entry = hash % table_size;
            let id = *ids.get(usize::try_from(entry).ok()?)?;
            let (endpoint, _) = backends.iter().find(|(_, b)| *b == id)?;
            Some((endpoint.clone(), entry))
        });
        Self { table_size, pick }
    }

    fn describe(&self, count: usize) -> String {
        match &self.pick {
            Some((endpoint, entry)) => format!(
                "goes to {endpoint} (Maglev: the flow's hash picks entry {entry} of {}, on \
                 every node alike)",
                self.table_size
            ),
            None => format!(
                "goes to the one of {count} backends that the Maglev hash of its addresses and \
                 ports picks from a table of {} entries (give the client's port, SRC:PORT, to \
                 see which)",
                self.table_size
            ),
        }
    }
}

/// Where a new connection from `client` would go, and why.
pub fn new_flow(fe: &FrontendExplanation, client: IpAddr, now: &Runtime) -> String {
    let Some(programmed) = &fe.programmed else {
        return "not programmed: the agent could not write it (see its problems)".to_owned();
    };
    let ranges: Vec<IpNet> = fe
        .source_ranges
        .iter()
        .filter_map(|r| r.parse().ok())
        .collect();
    if !fe.source_ranges.is_empty() && !ranges.iter().any(|r| r.contains(&client)) {
        return format!(
            "dropped: {client} is not in loadBalancerSourceRanges ({})",
            fe.source_ranges.join(", ")
        );
    }
    let backends = &programmed.backends;
    if backends.is_empty() {
        return if fe.rejects_when_empty {
            "refused: ICMP port unreachable, the Service has no endpoints".to_owned()
        } else {
            "dropped: endpoints exist, but none this traffic policy may use".to_owned()
        };
    }
    if let (Some(timeout), Some((id, idle))) = (fe.affinity_timeout_s, now.affinity)
        && idle <= Duration::from_secs(u64::from(timeout))
        && let Some((endpoint, _)) = backends.iter().find(|(_, b)| *b == id)
    {
        return format!(
            "goes to {endpoint} (ClientIP affinity: {client} went there {}s ago, timeout {timeout}s)",
            idle.as_secs()
        );
    }
    let count = backends.len();
    if let Some(maglev) = &now.maglev {
        return maglev.describe(count);
    }
    if now.turns.is_empty() {
        return format!("goes to one of {count} backends (round robin)");
    }
    // Each CPU has a counter of its own: where a connection goes depends on the CPU.
    let mut cpus_by_slot: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (cpu, turn) in now.turns.iter().enumerate() {
        let slot = usize::try_from(turn % count as u64).unwrap_or(0);
        cpus_by_slot.entry(slot).or_default().push(cpu);
    }
    let choices: Vec<String> = cpus_by_slot
        .iter()
        .map(|(slot, cpus)| {
            let cpus: Vec<String> = cpus.iter().map(ToString::to_string).collect();
            let cpus = match cpus.as_slice() {
                [one] => format!("CPU {one}"),
                many => format!("CPUs {}", many.join(", ")),
            };
            format!("{} (slot {slot} of {count}) on {cpus}", backends[*slot].0)
        })
        .collect();
    format!(
        "goes to {} (round robin, a counter per CPU: the next turn of the CPU its first \
         packet or connect runs on; a connection from another client may take it first)",
        choices.join("; ")
    )
}

/// Reads what the pinned maps hold for `fe` and `client`.
fn runtime(
    pin_dir: &Path,
    fe: &FrontendExplanation,
    (dst, proto): (SocketAddr, Protocol),
    client: Client,
) -> Result<Runtime> {
    let Some(programmed) = &fe.programmed else {
        return Ok(Runtime::default());
    };
    let maglev = fe
        .maglev_table_size
        .map(|size| MaglevPick::of(&programmed.backends, size, client, dst, proto));
    let services = ServiceMaps::open(pin_dir)?;
    let flows = FlowMaps::open(pin_dir)?;
    let now = monotonic_ns();
    let ago = |seen: u64| Duration::from_nanos(now.saturating_sub(seen));
    let svc_id = programmed.svc_id;
    let (affinity, mine) = match client.addr {
        IpAddr::V4(a) => {
            let key = AffinityKeyOf {
                svc_id,
                client: wire::addr_to_wire(a),
            };
            (
                flows.affinity(&key)?,
                flows_of(flows.flows()?, &key, client, dst),
            )
        }
        IpAddr::V6(a) => {
            let key = AffinityKeyOf {
                svc_id,
                client: In6Addr::from(a),
            };
            (
                flows.affinity6(&key)?,
                flows_of(flows.flows6()?, &key, client, dst),
            )
        }
    };
    Ok(Runtime {
        turns: services.round_robin_turns(svc_id)?,
        affinity: affinity.map(|a| (a.backend_id, ago(a.last_seen_ns))),
        flows: mine
            .into_iter()
            .map(|(port, id, seen)| (port, id, ago(seen)))
            .collect(),
        maglev,
    })
}

/// The flows among `flows` (forward entries of one family) from `key`'s client to `key`'s
/// service port at `dst`'s port, from `client`'s port if it names one: (client port,
/// backend id, last seen), sorted.
fn flows_of<A: WireAddr>(
    flows: Vec<(FlowKeyOf<A>, CtEntryOf<A>)>,
    key: &AffinityKeyOf<A>,
    client: Client,
    dst: SocketAddr,
) -> Vec<(u16, u32, u64)> {
    let dport = wire::port_to_wire(dst.port());
    let mut mine: Vec<(u16, u32, u64)> = flows
        .into_iter()
        .filter(|(k, e)| {
            k.saddr == key.client
                && k.dport == dport
                && e.svc_id == key.svc_id
                && client.port.is_none_or(|p| k.sport == wire::port_to_wire(p))
        })
        .map(|(k, e)| (wire::port_from_wire(k.sport), e.backend_id, e.last_seen_ns))
        .collect();
    mine.sort_unstable();
    mine
}

/// The explanation as text.
pub fn render(fe: &FrontendExplanation, client: Client, now: &Runtime) -> String {
    let mut out = String::new();
    let name = &fe.name;
    let port = if name.port.is_empty() {
        String::new()
    } else {
        format!(" port {}", name.port)
    };
    let scope = if name.scope == "internal" {
        " (internal)"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "{}{scope}: Service {}{port} ({}), for {}",
        name.frontend, name.service, name.kind, fe.applies_to
    );
    if let Some(choice) = &fe.choice {
        let _ = writeln!(
            out,
            "  endpoints: {}; topology: {}",
            choice.policy, choice.topology
        );
        for e in &choice.endpoints {
            let verdict = e.why.clone().unwrap_or_else(|| "used".to_owned());
            let _ = writeln!(out, "    {:<21} {verdict}", e.endpoint);
        }
    }
    if let Some(timeout) = fe.affinity_timeout_s {
        let _ = writeln!(out, "  sessionAffinity: ClientIP, {timeout}s");
    }
    let _ = writeln!(
        out,
        "  a new connection from {}: {}",
        client.addr,
        new_flow(fe, client.addr, now)
    );
    let backend_of = |id: u32| {
        fe.programmed
            .iter()
            .flat_map(|p| &p.backends)
            .find(|(_, b)| *b == id)
            .map_or_else(
                || format!("backend id {id} (no longer listed)"),
                |(e, _)| e.clone(),
            )
    };
    if now.flows.is_empty() {
        let _ = writeln!(out, "  no flow from {} to it now", client.addr);
    }
    for (port, id, idle) in &now.flows {
        let _ = writeln!(
            out,
            "  flow {} goes to {} (idle {}s)",
            SocketAddr::new(client.addr, *port),
            backend_of(*id),
            idle.as_secs()
        );
    }
    out
}

/// `kproxy explain`; `Ok(false)` when no frontend matched.
pub fn run(
    client: Client,
    target: &str,
    agent: SocketAddr,
    pin_dir: &Path,
    json: bool,
) -> Result<bool> {
    let (dst, proto) = parse_target(target).map_err(anyhow::Error::msg)?;
    if dst.is_ipv6() != client.addr.is_ipv6() {
        bail!(
            "{} and {dst} are of different address families: no connection goes from one to the other",
            client.addr
        );
    }
    let frontends = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(agent_api::explain(agent, dst, proto))
        .context("asking the agent")?;
    if frontends.is_empty() {
        println!(
            "{dst}/{proto}: no Service frontend here; kproxy passes such packets on untouched"
        );
        return Ok(false);
    }
    for fe in &frontends {
        let now = runtime(pin_dir, fe, (dst, proto), client)?;
        if json {
            println!("{}", serde_json::to_string_pretty(fe)?);
        }
        print!("{}", render(fe, client, &now));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::agent_api::{FrontendName, ProgrammedBackends};

    fn frontend(backends: &[&str], affinity: Option<u32>, ranges: &[&str]) -> FrontendExplanation {
        FrontendExplanation {
            name: FrontendName {
                frontend: "198.19.0.10:80/TCP".into(),
                scope: "all".into(),
                service: "default/web".into(),
                port: "http".into(),
                kind: "LoadBalancer".into(),
                internal_traffic_policy: Some("Cluster".into()),
                external_traffic_policy: Some("Cluster".into()),
            },
            applies_to: "every client".into(),
            affinity_timeout_s: affinity,
            rejects_when_empty: true,
            source_ranges: ranges.iter().map(|r| (*r).to_owned()).collect(),
            choice: None,
            programmed: Some(ProgrammedBackends {
                svc_id: 3,
                backends: backends
                    .iter()
                    .zip(10..)
                    .map(|(b, id)| ((*b).to_owned(), id))
                    .collect(),
            }),
            maglev_table_size: None,
        }
    }

    #[test]
    fn a_maglev_frontend_names_the_backend_its_table_gives_the_flow() {
        let three = ["198.18.1.2:8080", "198.18.2.2:8080", "198.18.3.2:8080"];
        let backends: Vec<(String, u32)> = three
            .iter()
            .zip(10..)
            .map(|(b, id)| ((*b).to_owned(), id))
            .collect();
        let dst: SocketAddr = "198.19.0.10:80".parse().expect("dst");
        let client = |port| Client {
            addr: "198.18.0.2".parse().expect("ip"),
            port,
        };
        // What the datapath computes: the shared hash of the flow, the agent's table.
        let addrs: Vec<SocketAddr> = three.iter().map(|b| b.parse().expect("ep")).collect();
        let table = crate::model::maglev::table(&addrs, 13).expect("a table");
        let hash = flow_hash(
            wire::addr_to_wire("198.18.0.2".parse().expect("ip")),
            wire::addr_to_wire("198.19.0.10".parse().expect("ip")),
            wire::port_to_wire(40_000),
            wire::port_to_wire(80),
            6,
        );
        let entry = hash % 13;
        let want = three[table[entry as usize] as usize];

        let pick = MaglevPick::of(&backends, 13, client(Some(40_000)), dst, Protocol::Tcp);
        assert_eq!(pick.pick, Some((want.to_owned(), entry)));
        let now = Runtime {
            turns: vec![0],
            maglev: Some(pick),
            ..Runtime::default()
        };
        let mut fe = frontend(&three, None, &[]);
        fe.maglev_table_size = Some(13);
        assert_eq!(
            new_flow(&fe, client(None).addr, &now),
            format!(
                "goes to {want} (Maglev: the flow's hash picks entry {entry} of 13, on every \
                 node alike)"
            )
        );
        let unknown = Runtime {
            maglev: Some(MaglevPick::of(
                &backends,
                13,
                client(None),
                dst,
                Protocol::Tcp,
            )),
            ..Runtime::default()
        };
        assert!(
            new_flow(&fe, client(None).addr, &unknown)
                .contains("the Maglev hash of its addresses and ports picks from a table of 13"),
            "{}",
            new_flow(&fe, client(None).addr, &unknown)
        );
    }

    #[test]
    fn a_new_flow_goes_where_the_datapath_would_send_it() {
        let client: IpAddr = "198.18.0.2".parse().expect("ip");
        let three = ["198.18.1.2:8080", "198.18.2.2:8080", "198.18.3.2:8080"];
        let at = |turns: &[u64]| Runtime {
            turns: turns.to_vec(),
            ..Runtime::default()
        };
        let held = |id, secs| Runtime {
            turns: vec![0],
            affinity: Some((id, Duration::from_secs(secs))),
            ..Runtime::default()
        };
        let cases: &[(&str, FrontendExplanation, Runtime, &str)] = &[
            (
                "round robin",
                frontend(&three, None, &[]),
                at(&[7]),
                "goes to 198.18.2.2:8080 (slot 1 of 3) on CPU 0 (round robin, a counter per CPU: \
                 the next turn of the CPU its first packet or connect runs on",
            ),
            (
                "round robin on four CPUs, two of them at the same slot",
                frontend(&three, None, &[]),
                at(&[7, 8, 10, 12]),
                "goes to 198.18.1.2:8080 (slot 0 of 3) on CPU 3; 198.18.2.2:8080 (slot 1 of 3) on \
                 CPUs 0, 2; 198.18.3.2:8080 (slot 2 of 3) on CPU 1 (round robin",
            ),
            (
                "counters not read",
                frontend(&three, None, &[]),
                at(&[]),
                "goes to one of 3 backends (round robin)",
            ),
            (
                "affinity held",
                frontend(&three, Some(60), &[]),
                held(12, 5),
                "goes to 198.18.3.2:8080 (ClientIP affinity: 198.18.0.2 went there 5s ago, timeout 60s)",
            ),
            (
                "affinity expired",
                frontend(&three, Some(60), &[]),
                held(12, 61),
                "goes to 198.18.1.2:8080 (slot 0 of 3) on CPU 0 (round robin",
            ),
            (
                "affinity to a backend gone",
                frontend(&three, Some(60), &[]),
                held(99, 1),
                "goes to 198.18.1.2:8080 (slot 0 of 3) on CPU 0 (round robin",
            ),
            (
                "no endpoints",
                frontend(&[], None, &[]),
                at(&[0]),
                "refused: ICMP port unreachable",
            ),
            (
                "outside the source ranges",
                frontend(&three, None, &["203.0.113.0/24"]),
                at(&[0]),
                "dropped: 198.18.0.2 is not in loadBalancerSourceRanges (203.0.113.0/24)",
            ),
            (
                "inside the source ranges",
                frontend(&three, None, &["198.18.0.0/24"]),
                at(&[0]),
                "goes to 198.18.1.2:8080",
            ),
        ];
        for (name, fe, now, want) in cases {
            let got = new_flow(fe, client, now);
            assert!(got.starts_with(want), "{name}: {got}");
        }
        let mut dropped = frontend(&[], None, &[]);
        dropped.rejects_when_empty = false;
        assert!(new_flow(&dropped, client, &at(&[0])).starts_with("dropped: endpoints exist"));
        dropped.programmed = None;
        assert!(new_flow(&dropped, client, &at(&[0])).starts_with("not programmed"));
    }

    #[test]
    fn an_ipv6_client_meets_the_ipv6_source_ranges() {
        let client: IpAddr = "2001:db8:1::2".parse().expect("ip");
        let two = ["[2001:db8:2::2]:8080", "[2001:db8:3::2]:8080"];
        let at = |turns: &[u64]| Runtime {
            turns: turns.to_vec(),
            ..Runtime::default()
        };
        // (case, loadBalancerSourceRanges of the IPv6 frontend, verdict)
        let cases: &[(&str, &[&str], &str)] = &[
            (
                "no ranges",
                &[],
                "goes to [2001:db8:3::2]:8080 (slot 1 of 2) on CPU 0 (round robin",
            ),
            (
                "inside",
                &["2001:db8:1::/48"],
                "goes to [2001:db8:3::2]:8080 (slot 1 of 2) on CPU 0 (round robin",
            ),
            (
                "outside",
                &["2001:db8:9::/48"],
                "dropped: 2001:db8:1::2 is not in loadBalancerSourceRanges (2001:db8:9::/48)",
            ),
        ];
        for (name, ranges, want) in cases {
            let got = new_flow(&frontend(&two, None, ranges), client, &at(&[3]));
            assert!(got.starts_with(want), "{name}: {got}");
        }
    }

    #[test]
    fn flows_are_shown_with_the_clients_address_and_port() {
        let client = Client {
            addr: "2001:db8:1::2".parse().expect("ip"),
            port: None,
        };
        let now = Runtime {
            turns: vec![0],
            flows: vec![(40_000, 10, Duration::from_secs(3))],
            ..Runtime::default()
        };
        let text = render(
            &frontend(&["[2001:db8:2::2]:8080"], None, &[]),
            client,
            &now,
        );
        assert!(
            text.contains("  flow [2001:db8:1::2]:40000 goes to [2001:db8:2::2]:8080 (idle 3s)"),
            "{text}"
        );
    }

    #[test]
    fn clients_and_targets_are_read_as_written() {
        assert_eq!(
            "198.18.0.2".parse::<Client>(),
            Ok(Client {
                addr: "198.18.0.2".parse().expect("ip"),
                port: None
            })
        );
        assert_eq!(
            "198.18.0.2:40000".parse::<Client>(),
            Ok(Client {
                addr: "198.18.0.2".parse().expect("ip"),
                port: Some(40_000)
            })
        );
        assert_eq!(
            "2001:db8::2".parse::<Client>(),
            Ok(Client {
                addr: "2001:db8::2".parse().expect("ip"),
                port: None
            })
        );
        assert_eq!(
            "[2001:db8::2]:40000".parse::<Client>(),
            Ok(Client {
                addr: "2001:db8::2".parse().expect("ip"),
                port: Some(40_000)
            })
        );
        assert!("client".parse::<Client>().is_err());
        assert!("2001:db8::2:40000:x".parse::<Client>().is_err());
        assert_eq!(
            parse_target("198.19.0.10:53/udp"),
            Ok(("198.19.0.10:53".parse().expect("addr"), Protocol::Udp))
        );
        assert_eq!(
            parse_target("198.19.0.10:80"),
            Ok(("198.19.0.10:80".parse().expect("addr"), Protocol::Tcp))
        );
        assert_eq!(
            parse_target("[2001:db8::10]:53/udp"),
            Ok(("[2001:db8::10]:53".parse().expect("addr"), Protocol::Udp))
        );
        assert_eq!(
            parse_target("[2001:db8::10]:80"),
            Ok(("[2001:db8::10]:80".parse().expect("addr"), Protocol::Tcp))
        );
        assert!(
            parse_target("2001:db8::10:80/TCP").is_err(),
            "an IPv6 address takes brackets before its port"
        );
        assert!(parse_target("198.19.0.10:80/SCTP").is_err());
        assert!(parse_target("198.19.0.10/TCP").is_err());
    }
}
