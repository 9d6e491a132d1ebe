//! The datapath loaded into the kernel for BPF_PROG_TEST_RUN tests: the real object, maps
//! pinned on a private bpffs and programmed through the agent's own sync code.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::{
    Ebpf,
    maps::{Array, MapData},
    programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use kproxy::{
    dataplane::{
        load::{self, MapSizes},
        maps::{FlowMaps, ServiceMaps, global_stats},
    },
    model::{
        Desired, Endpoint, Frontend, FrontendKey, FrontendKind, Protocol, ServicePortName,
        WhenEmpty,
    },
    sync::Programmed,
};
use kproxy_common::{
    config::Config,
    ct::{CtEntry, FlowKey, FragKey, FragPorts},
    names,
    stats::Counter,
};
use kproxy_testbed::{BpfFs, cpu};

/// Packet tests name the backend each new flow gets, so they take round robin out of
/// chance: the thread that runs the programs stays on one CPU (the round robin counts per
/// CPU), and every service port they program starts at its first slot on every CPU, where the
/// agent starts it at a random one (tests of their own check that: `round_robin` in
/// datapath.rs).
pub struct LoadedDatapath {
    pub ebpf: Ebpf,
    pub maps: ServiceMaps,
    pub flows: FlowMaps,
    pub programmed: Programmed,
    pub bpffs: BpfFs,
    /// The CPU the test's thread stays on: every program it runs runs there.
    pub cpu: usize,
}

/// Verdicts as the programs return them.
pub const TCX_NEXT: i32 = -1;
pub const TC_ACT_SHOT: i32 = 2;
pub const TC_ACT_REDIRECT: i32 = 7;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// The addresses of the packet tests (TESTBED.md's reference topology).
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
pub const OTHER_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 3);
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
pub const B1: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
pub const B2: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 2);
pub const B3: Ipv4Addr = Ipv4Addr::new(198, 18, 4, 2);

/// The IPv6 addresses of the packet tests (TESTBED.md: 2001:db8::/32).
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
pub const OTHER_CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 3);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x10);
pub const B1_6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 2);
pub const B2_6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 2);
pub const B3_6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 4, 0, 0, 0, 0, 2);

/// VIP6:80 of `proto` balanced over B1_6, B2_6 and B3_6 (port 8080).
pub fn three_backends6(proto: Protocol, affinity: Option<u32>) -> Desired {
    [frontend(
        VIP6,
        80,
        proto,
        &[(B1_6, 8080), (B2_6, 8080), (B3_6, 8080)],
        affinity,
    )]
    .into_iter()
    .collect()
}

/// VIP:80 of `proto` balanced over B1, B2 and B3 (port 8080).
pub fn three_backends(proto: Protocol, affinity: Option<u32>) -> Desired {
    [frontend(
        VIP,
        80,
        proto,
        &[(B1, 8080), (B2, 8080), (B3, 8080)],
        affinity,
    )]
    .into_iter()
    .collect()
}

/// The datapath loaded and programmed with `desired`.
pub fn loaded(desired: &Desired) -> LoadedDatapath {
    let mut dp = LoadedDatapath::load();
    dp.program(desired);
    dp
}

pub const SIZES: MapSizes = MapSizes {
    services: 64,
    backends: 256,
    conntrack: 1024,
    affinity: 256,
    sockets: 1,
    maglev_tables: 16,
    maglev_table_size: kproxy::model::maglev::DEFAULT_TABLE_SIZE,
};

impl LoadedDatapath {
    pub fn load() -> Self {
        Self::load_with(&SIZES)
    }

    /// Loads the datapath with map capacities `sizes`.
    pub fn load_with(sizes: &MapSizes) -> Self {
        let cpu = cpu::stay_on_this_cpu().expect("keeping the test on one CPU");
        let bpffs = BpfFs::new().expect("mounting a private bpffs");
        let pin_dir = bpffs.pin_path("kproxy");
        let (mut ebpf, _) = load::load(&pin_dir, sizes).expect("loading the eBPF object");
        // The agent loads these when an interface needs them; tests run them directly.
        for name in names::LAZY_PROGRAMS {
            let xdp: &mut Xdp = ebpf
                .program_mut(name)
                .expect("lazy program in object")
                .try_into()
                .expect("an XDP program");
            // The IPv6 one is loaded already: installed in its tail-call map with the rest.
            if xdp.fd().is_err() {
                xdp.load().expect("loading a lazily loaded program");
            }
        }
        let mut flows = FlowMaps::open(&pin_dir).expect("flow maps");
        flows.write_config(&Config::DEFAULT).expect("config");
        // As the agent does once its programs are attached: the reply lookups trust the
        // client bitmap from here on, in every test of the programs.
        kproxy::dataplane::client_filter::ClientFilter::seed(&pin_dir).expect("KP_CLIENTS");
        Self {
            ebpf,
            maps: ServiceMaps::open(&pin_dir).expect("service maps"),
            flows,
            programmed: Programmed::new(sizes.services),
            bpffs,
            cpu,
        }
    }

    /// Programs `desired` through the agent's sync; the service ports it adds start their
    /// round robin at their first slot (see `LoadedDatapath`).
    pub fn program(&mut self, desired: &Desired) {
        let before = self.svc_ids();
        let report = self.programmed.sync(desired, &mut self.maps);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        for svc_id in self.svc_ids().difference(&before) {
            let cpus = aya::util::nr_cpus().expect("possible CPUs");
            self.set_round_robin(*svc_id, &vec![0; cpus]);
        }
    }

    /// The service port ids programmed.
    pub fn svc_ids(&self) -> BTreeSet<u32> {
        self.programmed
            .frontends()
            .values()
            .map(|f| f.svc_id)
            .collect()
    }

    /// Sets the round-robin counters of service port `svc_id`, one per possible CPU.
    pub fn set_round_robin(&self, svc_id: u32, turns: &[u64]) {
        let mut rr: Array<MapData, u64> = self.map(names::MAP_RR);
        // A region per CPU, each `--max-services` long (see `dataplane::maps::per_cpu`).
        let stride = rr.len() / u32::try_from(turns.len()).expect("CPUs");
        for (cpu, turn) in (0..).zip(turns) {
            rr.set(cpu * stride + svc_id, turn, 0)
                .expect("writing KP_RR");
        }
    }

    fn run(&self, name: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        self.try_run(name, frame).expect("BPF_PROG_TEST_RUN")
    }

    /// Runs program `name` on `frame` with BPF_PROG_TEST_RUN: its return value and the frame
    /// as it leaves, or the kernel's refusal (frames shorter than an Ethernet header).
    pub fn try_run(&self, name: &str, frame: &[u8]) -> Result<(u32, Vec<u8>), ProgramError> {
        self.try_run_in(name, frame, None)
    }

    /// `try_run` with the program's context (`struct __sk_buff` or `struct xdp_md`) given.
    fn try_run_in(
        &self,
        name: &str,
        frame: &[u8],
        ctx_in: Option<&[u8]>,
    ) -> Result<(u32, Vec<u8>), ProgramError> {
        let mut out = vec![0u8; frame.len() + 512];
        let result = {
            let prog = self.ebpf.program(name).expect("program in object");
            let opts = TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in,
                ..TestRunOptions::default()
            };
            if [
                names::PROG_XDP,
                names::PROG_XDP_DEFER,
                names::PROG_XDP_FORWARD_ONLY,
            ]
            .contains(&name)
            {
                <&Xdp>::try_from(prog)
                    .expect("xdp program")
                    .test_run(opts)?
            } else {
                <&SchedClassifier>::try_from(prog)
                    .expect("tc program")
                    .test_run(opts)?
            }
        };
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }

    /// Runs the TC classifier on `frame`: its verdict and the frame as it leaves.
    pub fn tc(&self, frame: &[u8]) -> (i32, Vec<u8>) {
        let (ret, out) = self.run(names::PROG_TC_INGRESS, frame);
        (i32::from_ne_bytes(ret.to_ne_bytes()), out)
    }

    /// Runs the TC egress classifier on `frame` (in the calling thread's network namespace:
    /// its FIB lookups see that namespace's routes).
    pub fn tc_egress(&self, frame: &[u8]) -> (i32, Vec<u8>) {
        let (ret, out) = self.run(names::PROG_TC_EGRESS, frame);
        (i32::from_ne_bytes(ret.to_ne_bytes()), out)
    }

    /// Runs the XDP program on `frame`.
    pub fn xdp(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run(names::PROG_XDP, frame)
    }

    /// Runs the TC ingress classifier on `frame` as if interface `ifindex` of the calling
    /// thread's network namespace received it (default: the loopback device).
    pub fn tc_received_on(&self, ifindex: u32, frame: &[u8]) -> (i32, Vec<u8>) {
        // struct __sk_buff up to `ifindex` (offset 40); the kernel zero-fills the rest.
        let mut ctx = [0u8; 44];
        ctx[40..].copy_from_slice(&ifindex.to_ne_bytes());
        let (ret, out) = self
            .try_run_in(names::PROG_TC_INGRESS, frame, Some(&ctx))
            .expect("BPF_PROG_TEST_RUN");
        (i32::from_ne_bytes(ret.to_ne_bytes()), out)
    }

    /// Runs XDP program `name` on `frame` as if interface `ifindex` of the calling thread's
    /// network namespace received it (its FIB lookups start there). The kernel accepts only
    /// an interface whose receive queue is registered for XDP, i.e. one with an XDP program
    /// attached.
    pub fn xdp_received_on(&self, name: &str, ifindex: u32, frame: &[u8]) -> (u32, Vec<u8>) {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex.
        let len = u32::try_from(frame.len()).expect("frame size");
        let ctx: Vec<u8> = [0, len, 0, ifindex, 0, 0]
            .iter()
            .flat_map(|v: &u32| v.to_ne_bytes())
            .collect();
        self.try_run_in(name, frame, Some(&ctx))
            .expect("BPF_PROG_TEST_RUN")
    }

    /// Entries in the fragment table.
    pub fn fragments_tracked(&self) -> usize {
        let map: aya::maps::HashMap<MapData, FragKey, FragPorts> = self.map(names::MAP_FRAGS);
        map.keys().count()
    }

    /// A pinned map of the loaded datapath, typed.
    pub fn map<T>(&self, name: &str) -> T
    where
        T: TryFrom<aya::maps::Map>,
        <T as TryFrom<aya::maps::Map>>::Error: std::fmt::Debug,
    {
        let path = self.bpffs.pin_path("kproxy").join(name);
        let data = MapData::from_pin(&path).expect("pinned map");
        aya::maps::Map::from_map_data(data)
            .expect("map")
            .try_into()
            .expect("map type")
    }

    /// `KP_CT_FWD` (an LRU).
    pub fn ct_forward(&self) -> aya::maps::HashMap<MapData, FlowKey, CtEntry> {
        self.map(names::MAP_CT_FWD)
    }

    /// `KP_CT_REV`.
    pub fn ct_reply(&self) -> aya::maps::HashMap<MapData, FlowKey, CtEntry> {
        self.map(names::MAP_CT_REV)
    }

    /// The forward entry of the flow `client` → `vip` (TCP/UDP per `proto`).
    pub fn flow(
        &self,
        client: (Ipv4Addr, u16),
        vip: (Ipv4Addr, u16),
        proto: Protocol,
    ) -> Option<CtEntry> {
        self.ct_forward().get(&flow_key(client, vip, proto), 0).ok()
    }

    pub fn counter(&self, counter: Counter) -> u64 {
        let pin_dir = self.bpffs.pin_path("kproxy");
        global_stats(&pin_dir).expect("stats").counters[counter as usize]
    }
}

pub fn frontend<A: Into<IpAddr> + Copy>(
    addr: A,
    port: u16,
    proto: Protocol,
    endpoints: &[(A, u16)],
    affinity: Option<u32>,
) -> (FrontendKey, Frontend) {
    let addr: IpAddr = addr.into();
    (
        FrontendKey::new(addr, port, proto),
        Frontend {
            service: ServicePortName::new("default", &format!("svc-{addr}-{port}"), ""),
            affinity_timeout_s: affinity,
            endpoints: endpoints
                .iter()
                .map(|(addr, port)| Endpoint {
                    addr: (*addr).into(),
                    port: *port,
                })
                .collect(),
            standby: Vec::new(),
            when_empty: WhenEmpty::Reject,
            kind: FrontendKind::ClusterIp,
            external_local: false,
            source_ranges: Vec::new(),
            maglev: false,
        },
    )
}

/// The conntrack key of a packet `src` → `dst` (what the datapath uses).
pub fn flow_key(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), proto: Protocol) -> FlowKey {
    FlowKey::new(
        u32::from_ne_bytes(src.0.octets()),
        u32::from_ne_bytes(dst.0.octets()),
        src.1.to_be(),
        dst.1.to_be(),
        proto.number(),
    )
}

/// `frontend` whose endpoints `listed_only` are listed too but take no new connections (not
/// ready, terminating).
pub fn frontend_listing(
    addr: Ipv4Addr,
    port: u16,
    proto: Protocol,
    endpoints: &[(Ipv4Addr, u16)],
    listed_only: &[(Ipv4Addr, u16)],
) -> (FrontendKey, Frontend) {
    let (key, mut f) = frontend(addr, port, proto, endpoints, None);
    f.standby = listed_only
        .iter()
        .map(|(addr, port)| Endpoint {
            addr: (*addr).into(),
            port: *port,
        })
        .collect();
    f.standby.sort();
    (key, f)
}
