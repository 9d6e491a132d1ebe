//! Connected UDP sockets pointed at a backend that no longer takes new connections (gone
//! from its EndpointSlices, or terminating): socket-level load balancing's version of the
//! stale UDP flows kube-proxy clears from conntrack. A connected socket keeps its backend's
//! address for its whole life, and no hook runs on its sends, so the agent destroys it
//! (`SOCK_DESTROY`, as `ss -K` does): its owner gets `ECONNABORTED` and connects again, to
//! a backend in use. TCP connections are left alone, as kube-proxy leaves established TCP
//! flows.
//!
//! Only sockets kproxy pointed at the backend are touched: they are found by the cookies
//! `KP_SOCK_UDP` holds for it (the connected UDP sockets the programs pointed anywhere), in
//! the agent's network namespace and every namespace under `--netns-dir` (where the
//! container runtime keeps pods' namespaces).

use std::{collections::BTreeMap, fs::File, net::IpAddr, os::fd::AsRawFd, path::Path};

use anyhow::{Context, Result};
use aya::maps::{HashMap, Map, MapData};
use kproxy_common::{
    addr::In6Addr,
    config::IPPROTO_UDP,
    lb::BackendOf,
    names,
    sock::{SockRevKeyOf, SockRevOf},
};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
    message::SockDiagDestroy,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

use super::{batch, load::map_pin_path};

/// A socket to look for: its cookie (as `sock_diag` gives it) and its destination.
type Wanted = BTreeMap<[u8; 8], (IpAddr, u16)>;

/// What a sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Sockets pointed at a backend no longer in use, by their cookies.
    pub candidates: usize,
    /// Of those, connected UDP sockets found and destroyed.
    pub destroyed: usize,
}

/// Destroys the connected UDP sockets kproxy pointed at backends that no longer take new
/// connections, in this namespace and those under `netns_dir`; their `KP_SOCK_UDP` and
/// `KP_SOCK_REV` entries go too.
pub fn sweep(pin_dir: &Path, netns_dir: &Path) -> Result<Swept> {
    let mut wanted = Wanted::new();
    let stale4 = stale_entries::<u32>(pin_dir, FamilyNames::V4, &mut wanted)?;
    let stale6 = stale_entries::<In6Addr>(pin_dir, FamilyNames::V6, &mut wanted)?;
    let mut swept = Swept {
        candidates: wanted.len(),
        destroyed: 0,
    };
    if wanted.is_empty() {
        return Ok(swept);
    }
    swept.destroyed += destroy_here(&wanted)?;
    if let Ok(entries) = std::fs::read_dir(netns_dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            match destroy_in(&path, &wanted) {
                Ok(n) => swept.destroyed += n,
                Err(e) => {
                    tracing::debug!(netns = %path.display(), error = %format!("{e:#}"), "cannot look for stale UDP sockets there");
                }
            }
        }
    }
    forget::<u32>(pin_dir, FamilyNames::V4, &stale4)?;
    forget::<In6Addr>(pin_dir, FamilyNames::V6, &stale6)?;
    Ok(swept)
}

/// One family's maps.
#[derive(Clone, Copy)]
struct FamilyNames {
    backends: &'static str,
    rev: &'static str,
    udp: &'static str,
}

impl FamilyNames {
    const V4: Self = Self {
        backends: names::MAP_BACKENDS,
        rev: names::MAP_SOCK_REV,
        udp: names::MAP_SOCK_UDP,
    };
    const V6: Self = Self {
        backends: names::MAP_BACKENDS6,
        rev: names::MAP_SOCK_REV6,
        udp: names::MAP_SOCK_UDP6,
    };
}

/// An address as the maps hold it.
trait MapAddr: Copy + Ord + aya::Pod {
    fn ip(self) -> IpAddr;
}

impl MapAddr for u32 {
    fn ip(self) -> IpAddr {
        IpAddr::from(self.to_ne_bytes())
    }
}

impl MapAddr for In6Addr {
    fn ip(self) -> IpAddr {
        let mut octets = [0u8; 16];
        for (chunk, word) in octets.chunks_exact_mut(4).zip(self.0) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        IpAddr::from(octets)
    }
}

fn open(pin_dir: &Path, name: &str) -> Result<Option<Map>> {
    let path = map_pin_path(pin_dir, name);
    if !path.exists() {
        return Ok(None);
    }
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    Ok(Some(Map::from_map_data(data)?))
}

/// The connected UDP sockets of one family (`KP_SOCK_UDP`) pointed at a backend that no
/// longer takes new connections, gone or inactive (backend ids are never reused, so the id
/// says it exactly); they are added to `wanted`.
fn stale_entries<A: MapAddr>(
    pin_dir: &Path,
    maps: FamilyNames,
    wanted: &mut Wanted,
) -> Result<Vec<SockRevKeyOf<A>>>
where
    BackendOf<A>: aya::Pod,
    SockRevKeyOf<A>: aya::Pod,
{
    let path = map_pin_path(pin_dir, maps.udp);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let udp = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let sockets: Vec<(SockRevKeyOf<A>, u32)> = batch::all(&udp, WALK_CHUNK).context(maps.udp)?;
    if sockets.is_empty() {
        return Ok(Vec::new());
    }
    let Some(backends) = open(pin_dir, maps.backends)? else {
        return Ok(Vec::new());
    };
    let backends: HashMap<MapData, u32, BackendOf<A>> = HashMap::try_from(backends)?;
    let mut stale = Vec::new();
    for (key, backend_id) in sockets {
        if backends.get(&backend_id, 0).is_ok_and(|b| b.is_active()) {
            continue;
        }
        let mut cookie = [0u8; 8];
        cookie[..4].copy_from_slice(&key.cookie[0].to_ne_bytes());
        cookie[4..].copy_from_slice(&key.cookie[1].to_ne_bytes());
        wanted.insert(cookie, (key.addr.ip(), u16::from_be(key.port)));
        stale.push(key);
    }
    Ok(stale)
}

/// Entries per `BPF_MAP_LOOKUP_BATCH` of the walk.
const WALK_CHUNK: usize = 4_096;

/// Deletes `keys` from the maps of `maps` that hold them (`KP_SOCK_UDP`, `KP_SOCK_REV`).
fn forget<A: MapAddr>(pin_dir: &Path, maps: FamilyNames, keys: &[SockRevKeyOf<A>]) -> Result<()>
where
    SockRevKeyOf<A>: aya::Pod,
    SockRevOf<A>: aya::Pod,
{
    if keys.is_empty() {
        return Ok(());
    }
    // Already evicted, or forgotten by an earlier sweep: nothing to do for those.
    if let Some(map) = open(pin_dir, maps.udp)? {
        let mut udp: HashMap<MapData, SockRevKeyOf<A>, u32> = HashMap::try_from(map)?;
        for key in keys {
            let _ = udp.remove(key);
        }
    }
    if let Some(map) = open(pin_dir, maps.rev)? {
        let mut rev: HashMap<MapData, SockRevKeyOf<A>, SockRevOf<A>> = HashMap::try_from(map)?;
        for key in keys {
            let _ = rev.remove(key);
        }
    }
    Ok(())
}

/// [`destroy_here`] in the network namespace at `path`, on a thread of its own.
fn destroy_in(path: &Path, wanted: &Wanted) -> Result<usize> {
    let netns = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns on a valid namespace descriptor changes only this thread.
                if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error()).context("setns");
                }
                destroy_here(wanted)
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the namespace's thread panicked"))?
    })
}

/// Destroys the connected UDP sockets of this thread's network namespace that `wanted`
/// names; how many.
fn destroy_here(wanted: &Wanted) -> Result<usize> {
    let mut destroyed = 0;
    for family in [AF_INET, AF_INET6] {
        for id in connected_udp(family)? {
            let Some(&(addr, port)) = wanted.get(&id.cookie) else {
                continue;
            };
            if id.destination_address != addr || id.destination_port != port {
                continue;
            }
            match destroy(family, id) {
                Ok(()) => destroyed += 1,
                // Closed meanwhile.
                Err(e) => {
                    tracing::debug!(error = %format!("{e:#}"), "a stale UDP socket could not be destroyed");
                }
            }
        }
    }
    Ok(destroyed)
}

fn request(family: u8, id: SocketId) -> SockDiagMessage {
    SockDiagMessage::InetRequest(InetRequest {
        family,
        protocol: IPPROTO_UDP,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::ESTABLISHED,
        socket_id: id,
    })
}

fn diag_socket() -> Result<Socket> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).context("a sock_diag socket")?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    Ok(socket)
}

/// The connected (ESTABLISHED) UDP sockets of `family` in this namespace.
fn connected_udp(family: u8) -> Result<Vec<SocketId>> {
    let socket = diag_socket()?;
    let id = if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut message = NetlinkMessage::new(header, request(family, id).into());
    message.finalize();
    let mut buf = vec![0; message.buffer_len()];
    message.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let mut found = Vec::new();
    let mut reply = Vec::with_capacity(64 * 1024);
    loop {
        reply.clear();
        socket.recv(&mut reply, 0)?;
        let mut at = 0;
        while at < reply.len() {
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(&reply[at..])
                .context("a sock_diag reply")?;
            let len = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                    found.push(response.header.socket_id);
                }
                NetlinkPayload::Done(_) => return Ok(found),
                NetlinkPayload::Error(e) => return Err(anyhow::anyhow!("sock_diag dump: {e:?}")),
                _ => {}
            }
            if len == 0 {
                break;
            }
            at += len;
        }
    }
}

/// `SOCK_DESTROY` of the UDP socket `id` (cookie included).
fn destroy(family: u8, id: SocketId) -> Result<()> {
    let socket = diag_socket()?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut message = NetlinkMessage::new(
        header,
        NetlinkPayload::InnerMessage(SockDiagDestroy::new(request(family, id))),
    );
    message.finalize();
    let mut buf = vec![0; message.buffer_len()];
    message.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let mut reply = Vec::with_capacity(4096);
    socket.recv(&mut reply, 0)?;
    match NetlinkMessage::<SockDiagDestroy>::deserialize(&reply)
        .context("the SOCK_DESTROY reply")?
        .payload
    {
        NetlinkPayload::Error(e) if e.code.is_some() => Err(anyhow::anyhow!("SOCK_DESTROY: {e:?}")),
        _ => Ok(()),
    }
}
