//! The datapath under fuzzing: the real object loaded on a private bpffs and programmed with
//! services that reach every branch (balanced TCP and UDP, ClientIP affinity on a backend
//! shared with another VIP, ports without endpoints, endpoints all elsewhere), moved between
//! endpoint sets so that flows lose their backends, and run one frame at a time with every
//! counter read around each run.

use std::{collections::HashSet, net::Ipv4Addr};

use aya::maps::{HashMap, MapData, PerCpuArray};
use kproxy::model::{Desired, Protocol, WhenEmpty};
use kproxy_common::{
    ct::{CtEntry, FlowKey, FragKey, FragPorts, forward_key},
    names,
    stats::{COUNTER_SLOTS, GlobalStats},
};

use crate::support::datapath::{B1, B2, B3, LoadedDatapath, SIZES, frontend, frontend_listing};

/// TCP 80 over B1, B2, B3 (port 8080); UDP 53 over B1, B2 (port 5353).
pub const VIP_BALANCED: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
/// ClientIP affinity: TCP 80 over B1, B3 (B1:8080 shared with `VIP_BALANCED`, so one client
/// port to both VIPs needs a remapped source port); UDP 53 to B3.
pub const VIP_AFFINITY: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 20);
/// TCP 80 to B1:8080 alone: a client port it shares with a flow of `VIP_BALANCED` on B1
/// must be remapped.
pub const VIP_SHARED: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 50);
/// TCP 80 and UDP 53 without endpoints: rejected.
pub const VIP_EMPTY: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 30);
/// TCP 80 whose endpoints are all on other nodes (traffic policy Local): dropped.
pub const VIP_LOCAL: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 40);
/// In the VIP range, but no service uses it.
pub const NOT_A_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 99);
pub const BACKENDS: [Ipv4Addr; 3] = [B1, B2, B3];

/// The three programs a frame goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    TcIngress,
    Xdp,
    TcEgress,
}

impl Hook {
    pub const ALL: [Hook; 3] = [Hook::TcIngress, Hook::Xdp, Hook::TcEgress];

    pub fn program(self) -> &'static str {
        match self {
            Hook::TcIngress => names::PROG_TC_INGRESS,
            Hook::Xdp => names::PROG_XDP,
            Hook::TcEgress => names::PROG_TC_EGRESS,
        }
    }
}

/// How many endpoint sets the lab moves through (see `Lab::desired`).
pub const PHASES: usize = 3;

pub struct Lab {
    pub dp: LoadedDatapath,
    stats: PerCpuArray<MapData, GlobalStats>,
    ct_fwd: HashMap<MapData, FlowKey, CtEntry>,
    ct_rev: HashMap<MapData, FlowKey, CtEntry>,
    frags: HashMap<MapData, FragKey, FragPorts>,
    phase: usize,
    vips: HashSet<[u8; 4]>,
    backends: HashSet<[u8; 4]>,
}

impl Lab {
    /// The datapath loaded and programmed with the first endpoint set.
    pub fn new() -> Self {
        let mut dp = LoadedDatapath::load_with(&kproxy::dataplane::load::MapSizes {
            conntrack: 16_384,
            ..SIZES
        });
        dp.program(&Self::desired(0));
        let mut vips = HashSet::new();
        let mut backends = HashSet::new();
        for phase in 0..PHASES {
            for (key, f) in &Self::desired(phase) {
                if let std::net::IpAddr::V4(vip) = key.addr {
                    vips.insert(vip.octets());
                }
                for e in f.endpoints.iter().chain(&f.standby) {
                    if let std::net::IpAddr::V4(addr) = e.addr {
                        backends.insert(addr.octets());
                    }
                }
            }
        }
        Self {
            stats: dp.map(names::MAP_STATS),
            ct_fwd: dp.map(names::MAP_CT_FWD),
            ct_rev: dp.map(names::MAP_CT_REV),
            frags: dp.map(names::MAP_FRAGS),
            dp,
            phase: 0,
            vips,
            backends,
        }
    }

    /// The services of endpoint set `phase`: 0 and 2 are the same services (2 with XDP
    /// deferring to TC), 1 removes B1 from `VIP_BALANCED`:80 (its TCP flows are reset) and
    /// makes some endpoints listed but not ready (UDP flows and affinities move).
    pub fn desired(phase: usize) -> Desired {
        let web = [(B1, 8080), (B2, 8080), (B3, 8080)];
        let dns = [(B1, 5353), (B2, 5353)];
        let (local_key, mut local) = frontend(VIP_LOCAL, 80, Protocol::Tcp, &[], None);
        local.when_empty = WhenEmpty::Drop;
        let common = [
            frontend(VIP_AFFINITY, 53, Protocol::Udp, &[(B3, 5353)], Some(60)),
            frontend(VIP_SHARED, 80, Protocol::Tcp, &[(B1, 8080)], None),
            frontend(VIP_EMPTY, 80, Protocol::Tcp, &[], None),
            frontend(VIP_EMPTY, 53, Protocol::Udp, &[], None),
            (local_key, local),
        ];
        let moving = if phase % PHASES == 1 {
            [
                frontend(VIP_BALANCED, 80, Protocol::Tcp, &web[1..], None),
                frontend_listing(VIP_BALANCED, 53, Protocol::Udp, &dns[..1], &dns[1..]),
                {
                    let (key, mut f) = frontend_listing(
                        VIP_AFFINITY,
                        80,
                        Protocol::Tcp,
                        &[(B3, 8080)],
                        &[(B1, 8080)],
                    );
                    f.affinity_timeout_s = Some(60);
                    (key, f)
                },
            ]
        } else {
            [
                frontend(VIP_BALANCED, 80, Protocol::Tcp, &web, None),
                frontend(VIP_BALANCED, 53, Protocol::Udp, &dns, None),
                frontend(
                    VIP_AFFINITY,
                    80,
                    Protocol::Tcp,
                    &[(B1, 8080), (B3, 8080)],
                    Some(60),
                ),
            ]
        };
        common.into_iter().chain(moving).collect()
    }

    /// Moves to the next endpoint set.
    pub fn next_phase(&mut self) {
        self.phase = (self.phase + 1) % PHASES;
        self.dp.program(&Self::desired(self.phase));
    }

    /// The program `hook` runs in this phase: in phase 2 XDP is the deferring program, which
    /// leaves service packets to TC as on a veth whose peer sends partial checksums.
    pub fn program(&self, hook: Hook) -> &'static str {
        if hook == Hook::Xdp && self.phase == 2 {
            names::PROG_XDP_DEFER
        } else {
            hook.program()
        }
    }

    pub fn phase(&self) -> usize {
        self.phase
    }

    /// Deletes every `nth` forward entry alone (what the LRU's eviction leaves: a reply entry
    /// whose forward entry the next reply rebuilds) and, separately, every `nth` whole flow
    /// by its reply entry, forward entry first, as the agent's collection does (a reply
    /// entry never goes before its forward entry: the datapath trusts a live forward entry
    /// to have one). The entries are taken in key order, not the maps' own: a hash map's
    /// order follows the hash seed the kernel draws for each map, and a seed's campaign must
    /// evict the same flows on every run.
    pub fn evict_one_side(&mut self, nth: usize) {
        let mut keys: Vec<FlowKey> = self.ct_fwd.keys().filter_map(Result::ok).collect();
        keys.sort_unstable();
        for k in keys.into_iter().step_by(nth) {
            let _ = self.ct_fwd.remove(&k);
        }
        let mut replies: Vec<(FlowKey, CtEntry)> =
            self.ct_rev.iter().filter_map(Result::ok).collect();
        replies.sort_unstable_by_key(|(k, _)| *k);
        let replies: Vec<(FlowKey, CtEntry)> = replies.into_iter().skip(1).step_by(nth).collect();
        for (k, rev) in replies {
            let _ = self.ct_fwd.remove(&forward_key(&k, &rev));
            let _ = self.ct_rev.remove(&k);
        }
    }

    /// Forgets every flow, as the agent's collection would once they expire: keeps the
    /// reply table from filling up over a long run.
    pub fn flush_conntrack(&mut self) {
        let keys: Vec<FlowKey> = self.ct_fwd.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = self.ct_fwd.remove(&k);
        }
        let keys: Vec<FlowKey> = self.ct_rev.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = self.ct_rev.remove(&k);
        }
    }

    /// Every global counter, summed over the CPUs.
    pub fn counters(&self) -> [u64; COUNTER_SLOTS] {
        let per_cpu = self.stats.get(&0, 0).expect("KP_STATS");
        let mut sum = [0u64; COUNTER_SLOTS];
        for cpu in per_cpu.iter() {
            for (total, c) in sum.iter_mut().zip(cpu.counters) {
                *total += c;
            }
        }
        sum
    }

    /// Runs `hook` on `frame`: its raw return value and the frame as it leaves, or `None`
    /// if the kernel refused to run it (frames shorter than an Ethernet header).
    pub fn run(&self, hook: Hook, frame: &[u8]) -> Option<(u32, Vec<u8>)> {
        self.dp.try_run(self.program(hook), frame).ok()
    }

    pub fn is_vip(&self, addr: [u8; 4]) -> bool {
        self.vips.contains(&addr)
    }

    pub fn is_backend(&self, addr: [u8; 4]) -> bool {
        self.backends.contains(&addr)
    }

    pub fn forward_entry(&self, key: &FlowKey) -> Option<CtEntry> {
        self.ct_fwd.get(key, 0).ok()
    }

    pub fn reply_entry(&self, key: &FlowKey) -> Option<CtEntry> {
        self.ct_rev.get(key, 0).ok()
    }

    pub fn remove_reply_entry(&mut self, key: &FlowKey) {
        self.ct_rev.remove(key).expect("a KP_CT_REV entry");
    }

    pub fn fragment_ports(&self, key: &FragKey) -> Option<FragPorts> {
        self.frags.get(key, 0).ok()
    }
}

/// A conntrack key from addresses and ports as they sit in a packet.
pub fn flow_key(
    saddr: [u8; 4],
    daddr: [u8; 4],
    sport: [u8; 2],
    dport: [u8; 2],
    proto: u8,
) -> FlowKey {
    FlowKey::new(
        u32::from_ne_bytes(saddr),
        u32::from_ne_bytes(daddr),
        u16::from_ne_bytes(sport),
        u16::from_ne_bytes(dport),
        proto,
    )
}

/// An address or port of a map entry as it sits in a packet.
pub fn addr_bytes(addr: u32) -> [u8; 4] {
    addr.to_ne_bytes()
}

pub fn port_bytes(port: u16) -> [u8; 2] {
    port.to_ne_bytes()
}
