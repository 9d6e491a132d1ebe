//! Whether XDP on an interface may see partial checksums.
//!
//! A veth hands its peer's packets to XDP as they are; when the peer transmits with checksum
//! offload on (the default), a packet from a local socket carries only a partial L4 checksum
//! (CHECKSUM_PARTIAL), which XDP cannot tell from a complete one. Rewriting it as complete
//! corrupts it. Real NICs deliver complete checksums. So on a veth, kproxy's XDP program
//! translates only if the peer is found and sends complete checksums; otherwise it leaves
//! service packets to the TC program on the same interface (`IFACE_F_XDP_DEFER`).

use std::{
    collections::HashSet,
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use super::ethtool;

/// What XDP on `iface` may see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Checksums {
    /// Not a veth: complete checksums, as a NIC delivers them.
    Complete,
    /// A veth whose peer was found with transmit checksum offload off.
    CompleteFromPeer(String),
    /// A veth whose peer offloads checksums, or could not be found.
    MaybePartial(String),
}

/// Checks `iface` (in the calling thread's namespace).
pub fn checksums(iface: &str) -> Checksums {
    if ethtool::driver(iface).ok().as_deref() != Some("veth") {
        return Checksums::Complete;
    }
    let Ok(Some(peer)) = ethtool::stat(iface, "peer_ifindex") else {
        return Checksums::MaybePartial("its peer's index is unknown".into());
    };
    let Ok(own) = ethtool::index(iface) else {
        return Checksums::MaybePartial(format!("{iface} vanished"));
    };
    let peer = u32::try_from(peer).unwrap_or(0);
    match find_peer(peer, own) {
        Some((name, false)) => Checksums::CompleteFromPeer(name),
        Some((name, true)) => {
            Checksums::MaybePartial(format!("its peer {name} transmits with checksum offload"))
        }
        None => Checksums::MaybePartial("its peer was not found in any network namespace".into()),
    }
}

/// Looks for veth `peer_index` pointing back at `own_index` in this namespace and every
/// other one a process or `ip netns` holds; returns its name and whether it offloads. Interface
/// indexes repeat across namespaces, so a pair that only matches by coincidence is possible:
/// unless exactly one candidate matches, the peer counts as not found.
fn find_peer(peer_index: u32, own_index: u32) -> Option<(String, bool)> {
    let mut found = Vec::new();
    // The peer in this very namespace (both ends here); never the interface itself.
    if peer_index != own_index {
        found.extend(peer_here(peer_index, own_index));
    }
    let own = std::fs::metadata("/proc/self/ns/net").ok()?.ino();
    let mut seen = HashSet::from([own]);
    for path in namespace_paths() {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !seen.insert(meta.ino()) {
            continue;
        }
        let Ok(file) = File::open(&path) else {
            continue;
        };
        let there = std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns on a valid namespace descriptor changes only this thread.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return None;
                }
                peer_here(peer_index, own_index)
            })
            .join()
            .ok()
            .flatten()
        });
        found.extend(there);
    }
    if found.len() == 1 { found.pop() } else { None }
}

/// The veth `peer_index` of this namespace, if it is `own_index`'s peer.
fn peer_here(peer_index: u32, own_index: u32) -> Option<(String, bool)> {
    let name = ethtool::name(peer_index)?;
    if ethtool::driver(&name).ok()? != "veth"
        || ethtool::stat(&name, "peer_ifindex").ok()?? != u64::from(own_index)
    {
        return None;
    }
    Some((name.clone(), ethtool::tx_checksum(&name).ok()?))
}

/// Network namespaces others hold: bind mounts of `ip netns` and those of running processes.
fn namespace_paths() -> Vec<PathBuf> {
    let mut paths = Vec::new();
    for dir in ["/run/netns", "/var/run/netns"] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            paths.extend(entries.filter_map(|e| Some(e.ok()?.path())));
        }
    }
    if let Ok(entries) = std::fs::read_dir("/proc") {
        paths.extend(entries.filter_map(|e| {
            let e = e.ok()?;
            e.file_name().to_str()?.parse::<u32>().ok()?;
            Some(Path::new("/proc").join(e.file_name()).join("ns/net"))
        }));
    }
    paths
}
