//! kproxy, the agent: turns Services and EndpointSlices into BPF map entries for the
//! datapath in `kproxy-ebpf`. Data flows one way: `source` → `model` → `sync` → `dataplane`.

pub mod agent;
pub mod bpf_object;
pub mod cli;
pub mod cmd;
pub mod dataplane;
pub mod healthcheck;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod problem;
pub mod source;
pub mod sync;
pub mod wire;
