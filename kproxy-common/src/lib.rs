//! Types shared by kproxy's eBPF programs and its agent: object names, map keys and values,
//! counter indices. Every map type is `#[repr(C)]` with explicit padding and a size assertion,
//! so both sides agree byte for byte (the eBPF crate is compiled for the host target first, see
//! `xtask/src/build_ebpf.rs`, which makes the layouts identical by construction).
#![no_std]

pub mod addr;
pub mod config;
pub mod ct;
pub mod filter;
pub mod iface;
pub mod lb;
pub mod maglev;
pub mod meta;
pub mod names;
pub mod sock;
pub mod stats;

#[cfg(feature = "user")]
mod pod {
    //! `aya::Pod` lets the agent use these types as map keys and values.
    use crate::{addr, config, ct, iface, lb, maglev, meta, sock, stats};

    macro_rules! pod {
        ($($t:ty),* $(,)?) => { $(
            // SAFETY: every type here is `#[repr(C)]`, `Copy`, made of integers only, with
            // explicit padding fields, so any bit pattern is valid and there are no holes.
            unsafe impl aya::Pod for $t {}
        )* };
    }

    pod!(
        addr::In6Addr,
        iface::NodePortList,
        lb::ServiceKey,
        lb::ServiceValue,
        lb::SourceRangeKey,
        lb::SlotKey,
        lb::Backend,
        lb::ServiceKey6,
        lb::SourceRangeKey6,
        lb::Backend6,
        maglev::MaglevKey,
        maglev::MaglevChunk,
        meta::Meta,
        ct::FlowKey,
        ct::CtEntry,
        ct::AffinityKey,
        ct::AffinityValue,
        ct::FragKey,
        ct::FragPorts,
        ct::FlowKey6,
        ct::CtEntry6,
        ct::AffinityKey6,
        ct::FragKey6,
        stats::ServiceStats,
        stats::BackendStats,
        stats::GlobalStats,
        config::Config,
        sock::SockRevKey,
        sock::SockRevKey6,
        sock::SockRev,
        sock::SockRev6,
        sock::SockFlowKey,
        sock::SockFlowKey6,
        sock::SockFlow,
        sock::SockAffinityKey,
    );
}
