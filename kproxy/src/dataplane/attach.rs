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
    maps::MapData,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
    },
};
use kproxy_common::{
    iface::{IFACE_F_INGRESS, IFACE_F_POD, IFACE_F_XDP_DEFER, IFACE_F_XDP_REDIRECT},
    names,
};

use super::{
    ahead::LinkedAhead,
    links::select::{Link, Role, Tc},
    veth::{self, Checksums},
};

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
    pub const fn label(self) -> &'static str {
        match self {
            Self::TcIngress => "tc-ingress",
            Self::TcEgress => "tc-egress",
            Self::Xdp => "xdp",
        }
    }
}

/// What attaching did on one hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// A new link was created and pinned.
    New,
    /// The program in an existing pinned link was replaced.
    Replaced,
}

/// What kproxy runs on one interface now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    /// Each hook, in the order attached, and how.
    pub hooks: Vec<(Hook, Attached)>,
    /// Its `KP_IFACES` value.
    pub flags: u32,
}

/// Why an interface did not get kproxy's programs.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The interface was gone (or its name belonged to another index) before anything was
    /// attached: nothing to undo, and the notification of its removal follows.
    #[error("interface {0} is gone")]
    Gone(Link),
    /// Attaching failed; whatever was attached to it for this attempt is removed again.
    #[error("{0:#}")]
    Failed(anyhow::Error),
}

pub fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

/// The pin of a link names hook, ifindex and interface: an interface that was deleted and
/// created again gets a new ifindex, hence a new link, and the dead one is swept.
pub(super) fn link_pin(pin_dir: &Path, hook: Hook, link: &Link) -> PathBuf {
    links_dir(pin_dir).join(format!("{}-{}-{}", hook.label(), link.index, link.name))
}

/// Whether `link`'s name still belongs to its index. TC programs are attached by name (aya
/// resolves it), so this is checked before and after attaching: an interface deleted and
/// created again in between must not end up with a pin named after the old one.
fn still_there(link: &Link) -> bool {
    super::ethtool::index(&link.name).is_ok_and(|index| index == link.index)
}

/// Attaches kproxy's programs to one interface at a time through pinned links, detaches
/// them, and keeps `KP_IFACES` in step.
pub struct Hooks {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    ifaces: aya::maps::HashMap<MapData, u32, u32>,
    /// Links made at the start, holding the pass program until kproxy's is swapped in.
    ahead: LinkedAhead,
}

impl Hooks {
    /// Takes the loaded object; its maps are already pinned under `pin_dir`, and `ahead`
    /// are the links made for it there at the start.
    pub fn new(ebpf: Ebpf, pin_dir: &Path, ahead: LinkedAhead) -> Result<Self> {
        std::fs::create_dir_all(links_dir(pin_dir))?;
        accept_local_on_loopback()?;
        let path = super::load::map_pin_path(pin_dir, names::MAP_IFACES);
        let ifaces = aya::maps::Map::from_map_data(MapData::from_pin(&path)?)?.try_into()?;
        Ok(Self {
            ebpf,
            pin_dir: pin_dir.to_owned(),
            ifaces,
            ahead,
        })
    }

    /// Attaches what `role` asks for to `link`, adopting links a previous agent pinned, then
    /// records the interface in `KP_IFACES`. On failure nothing of this attempt stays.
    pub fn attach(&mut self, link: &Link, role: Role) -> Result<Served, AttachError> {
        if !still_there(link) {
            return Err(AttachError::Gone(link.clone()));
        }
        let mut hooks = Vec::new();
        let result = self.attach_hooks(link, role, &mut hooks);
        let result = result.and_then(|served| {
            if still_there(link) {
                Ok(served)
            } else {
                Err(anyhow::anyhow!(
                    "{} vanished while being attached",
                    link.name
                ))
            }
        });
        result.map_err(|e| {
            // Undo: a half-served interface would confuse the egress program (IFACE_F_INGRESS
            // without an ingress program) or run XDP without its TC fallback.
            if let Err(undo) = self.detach(link, &hooks) {
                tracing::warn!(iface = %link.name, error = %format!("{undo:#}"), "undoing a failed attachment");
            }
            AttachError::Failed(e)
        })
    }

    fn attach_hooks(
        &mut self,
        link: &Link,
        role: Role,
        hooks: &mut Vec<(Hook, Attached)>,
    ) -> Result<Served> {
        let mut flags = IFACE_F_INGRESS;
        if role.pod {
            // Known as a pod's before its first packet meets a program: the flows of that
            // packet would otherwise be masqueraded as coming from outside the cluster, and
            // stay so until they end.
            self.record(link, IFACE_F_POD)?;
            flags |= IFACE_F_POD;
        }
        // Before the first packet the programs hand over with a local source.
        if accept_local(&link.name)? {
            tracing::debug!(iface = %link.name, "set accept_local");
        }
        match role.tc {
            Tc::Off => {}
            Tc::Ingress => hooks.push((
                Hook::TcIngress,
                self.attach_classifier(link, TcAttachType::Ingress)?,
            )),
            Tc::IngressEgress => {
                hooks.push((
                    Hook::TcIngress,
                    self.attach_classifier(link, TcAttachType::Ingress)?,
                ));
                hooks.push((
                    Hook::TcEgress,
                    self.attach_classifier(link, TcAttachType::Egress)?,
                ));
            }
        }
        if role.xdp {
            match veth::checksums(&link.name) {
                // A NIC's driver transmits frames XDP redirects to it (XDP runs there); a
                // veth would need an XDP program on its peer, so the stack forwards to those.
                Checksums::Complete => flags |= IFACE_F_XDP_REDIRECT,
                Checksums::CompleteFromPeer(peer) => {
                    tracing::info!(iface = %link.name, %peer, "veth peer sends complete checksums: XDP translates");
                }
                Checksums::MaybePartial(why) => {
                    tracing::warn!(
                        iface = %link.name,
                        %why,
                        "XDP cannot see partial checksums on this veth: service packets are left \
                         to the TC program, attached to its ingress too"
                    );
                    flags |= IFACE_F_XDP_DEFER;
                    // Before the XDP program that defers to it.
                    if role.tc == Tc::Off {
                        hooks.push((
                            Hook::TcIngress,
                            self.attach_classifier(link, TcAttachType::Ingress)?,
                        ));
                    }
                }
            }
            let program = if flags & IFACE_F_XDP_DEFER != 0 {
                names::PROG_XDP_DEFER
            } else {
                names::PROG_XDP
            };
            hooks.push((Hook::Xdp, self.attach_xdp_program(link, program)?));
        }
        // Recorded once the programs run: IFACE_F_INGRESS makes the egress program of other
        // interfaces skip what this one forwards, which is right only once its ingress
        // program handles it.
        self.record(link, flags)?;
        Ok(Served {
            hooks: hooks.clone(),
            flags,
        })
    }

    /// Attaches the TC program for `attach_type` (ingress or egress) to `link`.
    fn attach_classifier(&mut self, link: &Link, attach_type: TcAttachType) -> Result<Attached> {
        let (hook, program) = if attach_type == TcAttachType::Ingress {
            (Hook::TcIngress, names::PROG_TC_INGRESS)
        } else {
            (Hook::TcEgress, names::PROG_TC_EGRESS)
        };
        let pin = link_pin(&self.pin_dir, hook, link);
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(program)
            .with_context(|| format!("{program} missing"))?
            .try_into()?;
        let attached = attach_tc(prog, &link.name, attach_type, &pin)
            .with_context(|| format!("attaching {} to {}", hook.label(), link.name))?;
        // A link made ahead held the pass program: kproxy runs there for the first time.
        Ok(if self.ahead.claim(&pin) {
            Attached::New
        } else {
            attached
        })
    }

    /// Attaches XDP program `program` (one of the object's XDP programs, loaded now if it is
    /// one the agent loads only when needed).
    fn attach_xdp_program(&mut self, link: &Link, program: &str) -> Result<Attached> {
        let pin = link_pin(&self.pin_dir, Hook::Xdp, link);
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(program)
            .with_context(|| format!("{program} missing"))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load()
                .with_context(|| format!("the kernel rejected program {program}"))?;
        }
        // Its IPv6 counterparts, before it sees a packet.
        super::load::install_ipv6(&mut self.ebpf, true)?;
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(program)
            .with_context(|| format!("{program} missing"))?
            .try_into()?;
        attach_xdp(prog, link, &pin)
            .with_context(|| format!("attaching {program} to {}", link.name))
    }

    fn record(&mut self, link: &Link, flags: u32) -> Result<()> {
        self.ifaces
            .insert(link.index, flags, 0)
            .with_context(|| format!("recording {} in {}", link.name, names::MAP_IFACES))
    }

    /// Takes kproxy off `link`: unpins the links of `hooks` (the kernel already detached
    /// them if the interface is gone) and removes its `KP_IFACES` entry. XDP goes first, as
    /// its deferral to TC lives in the entry; TC last, as the egress program of other
    /// interfaces trusts IFACE_F_INGRESS only while the ingress program runs.
    pub fn detach(&mut self, link: &Link, hooks: &[(Hook, Attached)]) -> Result<()> {
        let mut first_error = None;
        let mut unpin = |hook: Hook| {
            let pin = link_pin(&self.pin_dir, hook, link);
            match std::fs::remove_file(&pin) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    first_error.get_or_insert(
                        anyhow::Error::new(e).context(format!("unpinning {}", pin.display())),
                    );
                }
                _ => {}
            }
        };
        if hooks.iter().any(|(h, _)| *h == Hook::Xdp) {
            unpin(Hook::Xdp);
        }
        let entry = match self.ifaces.remove(&link.index) {
            Ok(()) => None,
            // Never recorded (an attempt that failed early).
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                None
            }
            Err(e) => Some(anyhow::Error::new(e).context(format!(
                "removing {} from {}",
                link.name,
                names::MAP_IFACES
            ))),
        };
        for (hook, _) in hooks {
            if *hook != Hook::Xdp {
                unpin(*hook);
            }
        }
        match first_error.or(entry) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Removes the pinned links and `KP_IFACES` entries that belong to no interface of
    /// `served`: those of interfaces that vanished while no agent watched, or that a
    /// previous agent served and this one does not. Returns how many of each.
    pub fn sweep<'a>(
        &mut self,
        served: impl IntoIterator<Item = (&'a Link, &'a [(Hook, Attached)])>,
    ) -> Result<(usize, usize)> {
        let mut pins = HashSet::new();
        let mut indexes = HashSet::new();
        for (link, hooks) in served {
            indexes.insert(link.index);
            pins.extend(
                hooks
                    .iter()
                    .map(|(hook, _)| link_pin(&self.pin_dir, *hook, link)),
            );
        }
        let mut unpinned = 0;
        for entry in std::fs::read_dir(links_dir(&self.pin_dir))? {
            let path = entry?.path();
            if pins.contains(&path) {
                continue;
            }
            // Something that is not a link (a directory someone made there) is left alone:
            // it must not stop the sweep, nor the agent.
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(link = %path.display(), "detached from an interface no longer served");
                    unpinned += 1;
                }
                Err(e) => {
                    tracing::warn!(pin = %path.display(), error = %e, "cannot remove a stale pin");
                }
            }
        }
        let stale: Vec<u32> = self
            .ifaces
            .keys()
            .filter_map(Result::ok)
            .filter(|i| !indexes.contains(i))
            .collect();
        for index in &stale {
            self.ifaces.remove(index)?;
        }
        Ok((unpinned, stale.len()))
    }
}

/// Lets the loopback device receive packets from the node's own addresses through routing.
/// The egress program delivers a packet DNATed to a local backend through lo's ingress; with
/// a local source address the kernel drops it as martian unless `accept_local` is set there
/// (normal loopback traffic never goes through that check, so nothing else changes).
fn accept_local_on_loopback() -> Result<()> {
    if accept_local(LOOPBACK)? {
        tracing::info!("set net.ipv4.conf.lo.accept_local=1 so the node reaches its own backends");
    }
    Ok(())
}

/// Sets `net.ipv4.conf.<iface>.accept_local=1`; true if it was not set before.
///
/// Every interface kproxy serves on ingress needs it: kproxy masquerades a new flow and
/// restores a reply's source (a NodePort's address) before the stack routes the packet, so
/// what it hands to the stack may carry one of the node's own addresses as its source (a
/// flow masqueraded towards a backend on this node, a reply from such a backend to an
/// external client, a packet XDP leaves to the stack to resolve the next hop's MAC). The
/// kernel's input routing drops those as martian sources unless the interface they came in
/// on accepts local sources. (kube-proxy's SNAT runs after routing and never meets the
/// check.) Strict reverse-path filtering (`rp_filter=1`) on such an interface still rejects
/// them; loose (2) and off (0) do not. kproxy leaves `rp_filter` as the node has it.
fn accept_local(iface: &str) -> Result<bool> {
    let path = format!("/proc/sys/net/ipv4/conf/{iface}/accept_local");
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "1") {
        return Ok(false);
    }
    std::fs::write(&path, "1").with_context(|| format!("setting {path}"))?;
    Ok(true)
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

fn attach_xdp(prog: &mut Xdp, link: &Link, pin: &Path) -> Result<Attached> {
    attach_pinned(
        prog,
        &link.name,
        pin,
        |prog, link| {
            prog.attach_to_link(XdpLink::try_from(link)?)?;
            Ok(())
        },
        |prog| {
            let id = prog.attach_to_if_index(link.index, XdpMode::default())?;
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
pub fn detach_pinned_link(pin: &Path) -> Result<()> {
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
    let mut removed = super::socket_lb::detach_all(pin_dir)?;
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
