//! Attaching the programs through pinned BPF links. A pinned link keeps its program attached
//! after the agent exits, so traffic keeps flowing through restarts and upgrades; the next
//! agent swaps its freshly loaded program into the same link with one `BPF_LINK_UPDATE`,
//! atomically, without a moment where no program runs.

use std::{
    collections::HashSet,
    ffi::CString,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
    },
};
use kproxy_common::{
    iface::{IFACE_F_INGRESS, IFACE_F_XDP_DEFER},
    names,
};

use super::veth::{self, Checksums};

/// The loopback device. kproxy's TC ingress program always runs there: replies of backends
/// on the node's own addresses (hostNetwork endpoints) to clients on the node come back
/// through it and need their VIP restored.
pub const LOOPBACK: &str = "lo";

/// Where a program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    TcIngress,
    TcEgress,
    Xdp,
}

impl Hook {
    const fn label(self) -> &'static str {
        match self {
            Self::TcIngress => "tc-ingress",
            Self::TcEgress => "tc-egress",
            Self::Xdp => "xdp",
        }
    }
}

/// What attaching did on one interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// A new link was created and pinned.
    New,
    /// The program in an existing pinned link was replaced.
    Replaced,
}

pub fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

fn ifindex(iface: &str) -> Result<u32> {
    super::ethtool::index(iface).with_context(|| format!("interface {iface:?} not found"))
}

/// The pin of a link names hook, ifindex and interface: an interface that was deleted and
/// created again gets a new ifindex, hence a new link, and the dead one is swept.
fn link_pin(pin_dir: &Path, hook: Hook, iface: &str) -> Result<PathBuf> {
    Ok(links_dir(pin_dir).join(format!("{}-{}-{iface}", hook.label(), ifindex(iface)?)))
}

/// Attaches the TC programs to the ingress and egress of `tc`, the XDP program to `xdp`, the
/// TC ingress program to `lo` and to every XDP interface that may see partial checksums
/// (see `veth`), and detaches kproxy from interfaces no longer listed.
pub fn attach_all(
    ebpf: &mut Ebpf,
    pin_dir: &Path,
    tc: &[String],
    xdp: &[String],
) -> Result<Vec<(String, Hook, Attached)>> {
    std::fs::create_dir_all(links_dir(pin_dir))?;
    let mut wanted = HashSet::new();
    let mut done = Vec::new();
    let mut flags: Vec<(String, u32)> = Vec::new();
    let mut attach = |iface: &str, hook: Hook, ebpf: &mut Ebpf| -> Result<()> {
        let pin = link_pin(pin_dir, hook, iface)?;
        let how = match hook {
            Hook::TcIngress | Hook::TcEgress => {
                let (program, attach_type) = if hook == Hook::TcIngress {
                    (names::PROG_TC_INGRESS, TcAttachType::Ingress)
                } else {
                    (names::PROG_TC_EGRESS, TcAttachType::Egress)
                };
                let prog: &mut SchedClassifier = ebpf
                    .program_mut(program)
                    .with_context(|| format!("{program} missing"))?
                    .try_into()?;
                attach_tc(prog, iface, attach_type, &pin)
            }
            Hook::Xdp => {
                let prog: &mut Xdp = ebpf
                    .program_mut(names::PROG_XDP)
                    .context("xdp program missing")?
                    .try_into()?;
                attach_xdp(prog, iface, &pin)
            }
        }
        .with_context(|| format!("attaching {} to {iface}", hook.label()))?;
        wanted.insert(pin);
        done.push((iface.to_owned(), hook, how));
        Ok(())
    };
    for iface in tc {
        attach(iface, Hook::TcIngress, ebpf)?;
        attach(iface, Hook::TcEgress, ebpf)?;
        flags.push((iface.clone(), IFACE_F_INGRESS));
    }
    for iface in xdp {
        let mut f = IFACE_F_INGRESS;
        match veth::checksums(iface) {
            Checksums::Complete => {}
            Checksums::CompleteFromPeer(peer) => {
                tracing::info!(%iface, %peer, "veth peer sends complete checksums: XDP translates");
            }
            Checksums::MaybePartial(why) => {
                tracing::warn!(
                    %iface,
                    %why,
                    "XDP cannot see partial checksums on this veth: service packets are left \
                     to the TC program, attached to its ingress too"
                );
                f |= IFACE_F_XDP_DEFER;
                if !tc.contains(iface) {
                    attach(iface, Hook::TcIngress, ebpf)?;
                }
            }
        }
        attach(iface, Hook::Xdp, ebpf)?;
        flags.push((iface.clone(), f));
    }
    if !tc.iter().chain(xdp).any(|i| i == LOOPBACK) {
        attach(LOOPBACK, Hook::TcIngress, ebpf)?;
        flags.push((LOOPBACK.to_owned(), IFACE_F_INGRESS));
    }
    accept_local_on_loopback()?;
    record_interfaces(pin_dir, &flags)?;
    for entry in std::fs::read_dir(links_dir(pin_dir))? {
        let path = entry?.path();
        if !wanted.contains(&path) {
            tracing::info!(link = %path.display(), "detaching from an interface no longer served");
            std::fs::remove_file(&path)?;
        }
    }
    Ok(done)
}

/// Lets the loopback device receive packets from the node's own addresses through routing.
/// The egress program delivers a packet DNATed to a local backend through lo's ingress; with
/// a local source address the kernel drops it as martian unless `accept_local` is set there
/// (normal loopback traffic never goes through that check, so nothing else changes).
fn accept_local_on_loopback() -> Result<()> {
    let path = "/proc/sys/net/ipv4/conf/lo/accept_local";
    if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(path, "1")
        .with_context(|| format!("setting {path} (for node-local backends)"))?;
    tracing::info!("set net.ipv4.conf.lo.accept_local=1 so the node reaches its own backends");
    Ok(())
}

/// Writes what kproxy does on each interface into `KP_IFACES` (see `kproxy_common::iface`).
fn record_interfaces(pin_dir: &Path, ifaces: &[(String, u32)]) -> Result<()> {
    let path = super::load::map_pin_path(pin_dir, names::MAP_IFACES);
    let mut map: aya::maps::HashMap<aya::maps::MapData, u32, u32> =
        aya::maps::Map::from_map_data(aya::maps::MapData::from_pin(&path)?)?.try_into()?;
    let mut wanted = std::collections::HashMap::new();
    for (iface, flags) in ifaces {
        *wanted.entry(ifindex(iface)?).or_insert(0) |= *flags;
    }
    let stale: Vec<u32> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|i| !wanted.contains_key(i))
        .collect();
    for index in stale {
        map.remove(&index)?;
    }
    for (index, flags) in wanted {
        map.insert(index, flags, 0)?;
    }
    Ok(())
}

/// Opens the link pinned at `pin`, if any; an unusable pin is removed.
fn pinned_link(pin: &Path) -> Option<FdLink> {
    if !pin.exists() {
        return None;
    }
    match PinnedLink::from_pin(pin) {
        Ok(link) => Some(link.into()),
        Err(e) => {
            tracing::warn!(pin = %pin.display(), error = %e, "removing an unusable pinned link");
            let _ = std::fs::remove_file(pin);
            None
        }
    }
}

/// Attaches `prog` through the link pinned at `pin`: swaps the program of an existing link
/// (`replace`), or creates and pins a new one (`attach`) when there is none or it is unusable.
fn attach_pinned<P>(
    prog: &mut P,
    iface: &str,
    pin: &Path,
    replace: impl FnOnce(&mut P, FdLink) -> Result<()>,
    attach: impl FnOnce(&mut P) -> Result<FdLink>,
) -> Result<Attached> {
    if let Some(link) = pinned_link(pin) {
        match replace(prog, link) {
            Ok(()) => return Ok(Attached::Replaced),
            Err(e) => {
                tracing::warn!(%iface, pin = %pin.display(), error = %format!("{e:#}"), "pinned link unusable; attaching anew");
                std::fs::remove_file(pin)?;
            }
        }
    }
    attach(prog)?.pin(pin)?;
    Ok(Attached::New)
}

fn attach_tc(
    prog: &mut SchedClassifier,
    iface: &str,
    attach_type: TcAttachType,
    pin: &Path,
) -> Result<Attached> {
    attach_pinned(
        prog,
        iface,
        pin,
        |prog, link| {
            prog.attach_to_link(SchedClassifierLink::try_from(link)?)?;
            Ok(())
        },
        |prog| {
            // Appended to the tcx chain: kproxy returns "next" for what it does not translate.
            let order = TcAttachOptions::TcxOrder(LinkOrder::default());
            let id = prog.attach_with_options(iface, attach_type, order)?;
            Ok(prog.take_link(id)?.try_into()?)
        },
    )
}

fn attach_xdp(prog: &mut Xdp, iface: &str, pin: &Path) -> Result<Attached> {
    attach_pinned(
        prog,
        iface,
        pin,
        |prog, link| {
            prog.attach_to_link(XdpLink::try_from(link)?)?;
            Ok(())
        },
        |prog| {
            let id = prog.attach(iface, XdpMode::default())?;
            prog.take_link(id)?
                .try_into()
                .context("XDP attached without a BPF link (kernel too old to pin it)")
        },
    )
}

/// Detaches the link pinned at `pin` now, whoever else holds it, then unpins it.
///
/// Unpinning alone releases the link only once the last reference goes, after an RCU grace
/// period; `BPF_LINK_DETACH` makes `kproxy cleanup` synchronous.
fn detach_pinned_link(pin: &Path) -> Result<()> {
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    let path = CString::new(pin.as_os_str().as_encoded_bytes())?;
    // attr.pathname is a u64 holding the pointer.
    let fd = super::bpfsys::bpf(BPF_OBJ_GET, &[path.as_ptr() as u64])
        .with_context(|| format!("opening {}", pin.display()))?;
    let fd = i32::try_from(fd).context("BPF_OBJ_GET returned an out-of-range fd")?;
    let detached = super::bpfsys::bpf(BPF_LINK_DETACH, &[u64::from(fd.unsigned_abs())]);
    // SAFETY: `fd` came from BPF_OBJ_GET above and is closed once.
    unsafe { libc::close(fd) };
    detached.with_context(|| format!("detaching {}", pin.display()))?;
    std::fs::remove_file(pin)?;
    Ok(())
}

/// Removes every pin under `pin_dir`: links first (detached at once), then maps.
pub fn remove_all(pin_dir: &Path) -> Result<usize> {
    let mut removed = 0;
    let links = links_dir(pin_dir);
    if links.is_dir() {
        for entry in std::fs::read_dir(&links)? {
            detach_pinned_link(&entry?.path())?;
            removed += 1;
        }
        std::fs::remove_dir(&links)?;
    }
    if pin_dir.is_dir() {
        for entry in std::fs::read_dir(pin_dir)? {
            let path = entry?.path();
            if path.is_file() || !path.is_dir() {
                std::fs::remove_file(&path)?;
                removed += 1;
            }
        }
        std::fs::remove_dir(pin_dir)?;
    }
    Ok(removed)
}
