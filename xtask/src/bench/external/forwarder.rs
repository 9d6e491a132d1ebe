//! The external section's ceiling: `kproxy_xdp_forward_only` on node1's NIC, kproxy's own XDP
//! forwarding (FIB lookup, TTL, MACs, XDP_TX) without looking for services or flows. The
//! client then sends to the backends' addresses directly, along the same path a NodePort's
//! traffic takes (ext → node1's NIC → XDP_TX → node2 → pod, and back through node1).

use std::{
    os::fd::{AsFd, OwnedFd},
    path::Path,
};

use anyhow::{Context, Result};
use aya::{Ebpf, EbpfLoader, programs::Xdp};
use kproxy_common::names;
use kproxy_testbed::Netns;

use super::super::xdp;

/// Maps the program does not use but the object declares with room for a node's worth of
/// flows: kept small, as nothing writes them.
const UNUSED_PREALLOCATED_MAPS: [&str; 5] = [
    names::MAP_CT_FWD,
    names::MAP_CT_REV,
    names::MAP_AFFINITY,
    names::MAP_SVC_STATS,
    names::MAP_RR,
];

/// The forwarder attached; dropping it detaches it.
pub struct BareForwarder {
    // The link first: it detaches before the program and its maps go.
    _link: OwnedFd,
    ebpf: Ebpf,
}

impl BareForwarder {
    /// The attached program, for running it on live frames.
    pub fn program(&self) -> Result<OwnedFd> {
        let program: &Xdp = self
            .ebpf
            .program(names::PROG_XDP_FORWARD_ONLY)
            .context("the forwarder's program is gone")?
            .try_into()?;
        Ok(program.fd()?.as_fd().try_clone_to_owned()?)
    }

    /// Loads the program from `object` (its maps pinned under `pin_dir`, where
    /// [`xdp::counters`] reads them) and attaches it to `iface` in `node`.
    pub fn attach(object: &Path, pin_dir: &Path, node: &Netns, iface: &str) -> Result<Self> {
        std::fs::create_dir_all(pin_dir)
            .with_context(|| format!("creating {}", pin_dir.display()))?;
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(pin_dir);
        for name in UNUSED_PREALLOCATED_MAPS {
            loader.map_max_entries(name, 1024);
        }
        let mut ebpf = loader
            .load_file(object)
            .with_context(|| format!("loading {}", object.display()))?;
        let program: &mut Xdp = ebpf
            .program_mut(names::PROG_XDP_FORWARD_ONLY)
            .with_context(|| format!("{} is not in the object", names::PROG_XDP_FORWARD_ONLY))?
            .try_into()?;
        program
            .load()
            .with_context(|| format!("the kernel rejected {}", names::PROG_XDP_FORWARD_ONLY))?;
        let fd = program.fd()?.as_fd().try_clone_to_owned()?;
        let ifindex = node.link_index(iface)?;
        let link = node.run(move || xdp::attach_xdp(fd.as_fd(), ifindex))??;
        Ok(Self { _link: link, ebpf })
    }
}
