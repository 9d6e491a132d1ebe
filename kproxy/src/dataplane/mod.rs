//! The only code that touches the kernel: bpffs, loading the eBPF object, attaching
//! programs, and reading and writing maps.

mod addr_filter;
pub mod ahead;
pub mod attach;
mod batch;
pub mod bpffs;
pub mod bpfsys;
pub mod client_filter;
pub mod ethtool;
mod free_ports;
pub mod links;
pub mod load;
pub mod maps;
pub mod node_addrs;
pub mod rtnl;
pub mod socket_lb;
pub mod stale_sockets;
pub mod veth;

pub use batch::Walk;

/// kproxy's eBPF object, built by `cargo xtask build-ebpf` and embedded at compile time.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("KPROXY_BPF_OBJECT"));
