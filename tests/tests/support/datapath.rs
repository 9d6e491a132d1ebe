//! The datapath loaded into the kernel for BPF_PROG_TEST_RUN tests: the real object, maps
//! pinned on a private bpffs and programmed through the agent's own sync code.

use std::net::Ipv4Addr;

use aya::{
    Ebpf,
    programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use kproxy::{
    dataplane::{
        load::{self, MapSizes},
        maps::{FlowMaps, ServiceMaps, global_stats},
    },
    model::{Desired, Endpoint, Frontend, FrontendKey, Protocol, ServicePortName, WhenEmpty},
    sync::Programmed,
};
use kproxy_common::{config::Config, names, stats::Counter};
use kproxy_testbed::BpfFs;

pub struct LoadedDatapath {
    pub ebpf: Ebpf,
    pub maps: ServiceMaps,
    pub flows: FlowMaps,
    pub programmed: Programmed,
    pub bpffs: BpfFs,
}

pub const SIZES: MapSizes = MapSizes {
    services: 64,
    backends: 256,
    conntrack: 1024,
    affinity: 256,
};

impl LoadedDatapath {
    pub fn load() -> Self {
        Self::load_sized(&SIZES)
    }

    /// The datapath with maps of `sizes` (tiny ones, to fill them).
    pub fn load_sized(sizes: &MapSizes) -> Self {
        let bpffs = BpfFs::new().expect("mounting a private bpffs");
        let pin_dir = bpffs.pin_path("kproxy");
        let ebpf = load::load(&pin_dir, sizes).expect("loading the eBPF object");
        let mut flows = FlowMaps::open(&pin_dir).expect("flow maps");
        flows.write_config(&Config::DEFAULT).expect("config");
        Self {
            ebpf,
            maps: ServiceMaps::open(&pin_dir).expect("service maps"),
            flows,
            programmed: Programmed::new(sizes.services),
            bpffs,
        }
    }

    pub fn program(&mut self, desired: &Desired) {
        let report = self.programmed.sync(desired, &mut self.maps);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }

    fn run(&self, name: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; 512];
        let result = {
            let prog = self.ebpf.program(name).expect("program in object");
            let opts = TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            };
            let run: Result<_, ProgramError> = if name == names::PROG_TC_INGRESS {
                <&SchedClassifier>::try_from(prog)
                    .expect("tc program")
                    .test_run(opts)
            } else {
                <&Xdp>::try_from(prog).expect("xdp program").test_run(opts)
            };
            run.expect("BPF_PROG_TEST_RUN")
        };
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    /// Runs the TC classifier on `frame`: its verdict and the frame as it leaves.
    pub fn tc(&self, frame: &[u8]) -> (i32, Vec<u8>) {
        let (ret, out) = self.run(names::PROG_TC_INGRESS, frame);
        (i32::from_ne_bytes(ret.to_ne_bytes()), out)
    }

    /// Runs the XDP program on `frame`.
    pub fn xdp(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run(names::PROG_XDP, frame)
    }

    pub fn counter(&self, counter: Counter) -> u64 {
        let pin_dir = self.bpffs.pin_path("kproxy");
        global_stats(&pin_dir).expect("stats").counters[counter as usize]
    }
}

pub fn frontend(
    addr: Ipv4Addr,
    port: u16,
    proto: Protocol,
    endpoints: &[(Ipv4Addr, u16)],
    affinity: Option<u32>,
) -> (FrontendKey, Frontend) {
    (
        FrontendKey {
            addr: addr.into(),
            port,
            proto,
        },
        Frontend {
            service: ServicePortName {
                namespace: "default".into(),
                name: format!("svc-{addr}-{port}"),
                port: String::new(),
            },
            affinity_timeout_s: affinity,
            endpoints: endpoints
                .iter()
                .map(|(addr, port)| Endpoint {
                    addr: (*addr).into(),
                    port: *port,
                })
                .collect(),
            when_empty: WhenEmpty::Reject,
        },
    )
}
