//! The kproxy test bed: network namespaces, the reference topology, a private bpffs and
//! who-am-I servers, so tests and benches send real packets without touching the machine's
//! root network namespace (see shared/TESTBED.md for the rules).

pub mod apiserver;
pub mod bpffs;
mod bpfsys;
pub mod cgroup;
pub mod cpu;
pub mod http;
// The agent's own interface ioctls, shared by source: the test bed cannot depend on the agent
// crate (xtask builds with the test bed before the eBPF object the agent embeds exists).
#[path = "../../../kproxy/src/dataplane/ethtool.rs"]
#[expect(
    dead_code,
    reason = "the test bed needs only some of the agent's ioctls"
)]
mod ifreq;
pub mod kube_proxy;
pub mod kubernetes;
pub mod load;
pub mod netns;
pub mod privileges;
pub mod process;
pub mod python_tool;
pub mod servers;
pub mod topology;

pub use apiserver::FakeApiServer;
pub use bpffs::BpfFs;
pub use load::{LoadConfig, LoadReport, LoadRun};
pub use netns::Netns;
pub use privileges::require_privileges;
pub use process::LoggedProcess;
pub use servers::{
    FamilyAddr, Reply, SeqReply, ServerHandle, TcpSession, UdpSession, tcp_request, tcp_server,
    udp_request, udp_server,
};
pub use topology::lan::{LanNode, LanOptions, LanTopology, Pod};
pub use topology::{PodClient, Topology, TopologyOptions};

/// Whether a process id still names a live process; leftovers of dead runs are swept by it.
pub(crate) fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}
