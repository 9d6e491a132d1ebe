//! Whether XDP on an interface may see partial checksums.
//!
//! A veth hands its peer's packets to XDP as they are; when the peer transmits with checksum
//! offload on (the default), a packet from a local socket carries only a partial L4 checksum
//! (CHECKSUM_PARTIAL), which XDP cannot tell from a complete one. Rewriting it as complete
//! corrupts it. Real NICs deliver complete checksums. So on a veth, kproxy's XDP program
//! translates only if the peer is found and sends complete checksums; otherwise it leaves
//! service packets to the TC program on the same interface (`IFACE_F_XDP_DEFER`).
//!
//! The peer is found exactly: rtnetlink names its index and, when it lives in another network
//! namespace, that namespace's id as this one knows it (`IFLA_LINK_NETNSID`); the namespaces
//! processes and `ip netns` hold are then asked for their id until one matches.

use std::{
    fs::File,
    io,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use netlink_packet_core::NLM_F_REQUEST;
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage},
    nsid::{NsidAttribute, NsidMessage},
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
    let peer = ethtool::index(iface).and_then(peer_of);
    match peer {
        Ok((peer_index, nsid)) => match find_peer(peer_index, nsid) {
            Some((name, false)) => Checksums::CompleteFromPeer(name),
            Some((name, true)) => {
                Checksums::MaybePartial(format!("its peer {name} transmits with checksum offload"))
            }
            None => Checksums::MaybePartial("its peer's network namespace was not found".into()),
        },
        Err(e) => Checksums::MaybePartial(format!("its peer is unknown: {e}")),
    }
}

/// The peer of veth `index`: its index, and the id of its namespace if not this one.
fn peer_of(index: u32) -> io::Result<(u32, Option<i32>)> {
    let mut request = LinkMessage::default();
    request.header.index = index;
    let RouteNetlinkMessage::NewLink(link) = ask(RouteNetlinkMessage::GetLink(request))? else {
        return Err(io::Error::other("unexpected reply to RTM_GETLINK"));
    };
    let mut peer = None;
    let mut nsid = None;
    for attribute in &link.attributes {
        match attribute {
            LinkAttribute::Link(i) => peer = Some(*i),
            LinkAttribute::LinkNetNsId(id) => nsid = Some(*id),
            _ => {}
        }
    }
    let peer = peer.ok_or_else(|| io::Error::other("no IFLA_LINK"))?;
    Ok((peer, nsid))
}

/// The id this namespace gives the namespace `ns` refers to (-1: none given yet).
fn nsid_of(ns: &File) -> io::Result<i32> {
    let mut request = NsidMessage::default();
    let fd = u32::try_from(ns.as_raw_fd()).map_err(io::Error::other)?;
    request.attributes.push(NsidAttribute::Fd(fd));
    let RouteNetlinkMessage::NewNsId(reply) = ask(RouteNetlinkMessage::GetNsId(request))? else {
        return Err(io::Error::other("unexpected reply to RTM_GETNSID"));
    };
    Ok(reply
        .attributes
        .iter()
        .find_map(|a| match a {
            NsidAttribute::Id(id) => Some(*id),
            _ => None,
        })
        .unwrap_or(-1))
}

/// One request on a route netlink socket and its reply.
fn ask(message: RouteNetlinkMessage) -> io::Result<RouteNetlinkMessage> {
    super::rtnl::request(message, NLM_F_REQUEST)?
        .ok_or_else(|| io::Error::other("netlink: no answer"))
}

/// Finds veth `peer_index` in the namespace with id `nsid` (this one when `None`); returns
/// its name and whether it offloads checksums.
fn find_peer(peer_index: u32, nsid: Option<i32>) -> Option<(String, bool)> {
    let Some(nsid) = nsid else {
        return peer_here(peer_index);
    };
    let file = namespace_paths()
        .into_iter()
        .filter_map(|path| File::open(path).ok())
        .find(|ns| nsid_of(ns).is_ok_and(|id| id == nsid))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on a valid namespace descriptor changes only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return None;
            }
            peer_here(peer_index)
        })
        .join()
        .ok()
        .flatten()
    })
}

/// The name of interface `index` of this namespace and whether it offloads checksums.
fn peer_here(index: u32) -> Option<(String, bool)> {
    let name = ethtool::name(index)?;
    let offloads = ethtool::tx_checksum(&name).ok()?;
    Some((name, offloads))
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
