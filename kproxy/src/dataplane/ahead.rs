//! TC links made ahead of kproxy's programs, at a start.
//!
//! Creating a tcx link waits for an RCU grace period with the RTNL lock held: 6-25 ms per
//! hook on the benchmark machine, one interface after another, 120-140 ms for five
//! interfaces. Swapping the program of an existing link (`BPF_LINK_UPDATE`) takes
//! microseconds. So while the cluster is listed and the kernel verifies kproxy's programs,
//! every selected interface without a pinned link gets its links with a program of two
//! instructions that hands each packet on (`TCX_NEXT`, as if nothing were attached), and the
//! attachment after the first sync only swaps kproxy's programs in: the links' creation
//! leaves the start's critical path, and nothing is served before the first complete view.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    ffi::CString,
    os::fd::{FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use super::{
    attach::{Hook, link_pin, links_dir},
    bpfsys,
    links::{
        netlink,
        select::{self, Selection, Tc},
    },
};

/// The name the kernel shows for the program of a link made ahead (`bpftool net`).
pub const PASS_PROGRAM_NAME: &str = "kproxy_pending";

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u64 = 3;
const BPF_TCX_INGRESS: u64 = 46;
const BPF_TCX_EGRESS: u64 = 47;
/// Appended after the programs already on the hook, as kproxy's own are (aya's default
/// `LinkOrder`).
const BPF_F_AFTER: u64 = 1 << 4;

/// `r0 = -1` (TCX_NEXT: the next program, or the stack, decides), `exit`.
const PASS_PROGRAM: [u64; 2] = [0xffff_ffff_0000_00b7, 0x95];

/// The pins of the links made ahead: an attachment that finds one of them creates nothing,
/// but it attaches kproxy there for the first time all the same.
#[derive(Debug, Default)]
pub struct LinkedAhead {
    pins: HashSet<PathBuf>,
}

impl LinkedAhead {
    /// Whether `pin` is a link made ahead (and not yet claimed): each is claimed once.
    pub fn claim(&mut self, pin: &Path) -> bool {
        self.pins.remove(pin)
    }

    pub fn len(&self) -> usize {
        self.pins.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pins.is_empty()
    }
}

/// Gives each interface `selection` picks for TC programs, and that has no pinned link of
/// its own yet, pinned links holding the pass program. Interfaces that come later, or fail
/// here, are attached the usual way.
pub fn link_ahead(pin_dir: &Path, selection: &Selection) -> Result<LinkedAhead> {
    let links = netlink::dump().context("listing the interfaces")?;
    let plan = select::plan(&links, &BTreeMap::new(), &BTreeSet::new(), selection);
    let mut ahead = LinkedAhead::default();
    let hooks: Vec<_> = plan
        .attach
        .iter()
        .flat_map(|(link, role)| {
            let hooks: &[Hook] = match role.tc {
                Tc::Off => &[],
                Tc::Ingress => &[Hook::TcIngress],
                Tc::IngressEgress => &[Hook::TcIngress, Hook::TcEgress],
            };
            hooks.iter().map(move |hook| (link, *hook))
        })
        .filter(|(link, hook)| !link_pin(pin_dir, *hook, link).exists())
        .collect();
    if hooks.is_empty() {
        return Ok(ahead);
    }
    std::fs::create_dir_all(links_dir(pin_dir))?;
    let program = load_pass_program()?;
    for (link, hook) in hooks {
        let pin = link_pin(pin_dir, hook, link);
        match create_and_pin(&program, link.index, hook, &pin) {
            Ok(()) => {
                ahead.pins.insert(pin);
            }
            Err(e) => tracing::debug!(
                iface = %link.name,
                hook = hook.label(),
                error = %format!("{e:#}"),
                "no link made ahead; the attachment makes it"
            ),
        }
    }
    Ok(ahead)
}

/// Loads the pass program; its descriptor closes when dropped (the links hold it meanwhile).
fn load_pass_program() -> Result<OwnedFd> {
    let license = c"GPL";
    let mut name = [0u8; 16];
    name[..PASS_PROGRAM_NAME.len()].copy_from_slice(PASS_PROGRAM_NAME.as_bytes());
    let fd = bpfsys::bpf(
        BPF_PROG_LOAD,
        &[
            BPF_PROG_TYPE_SCHED_CLS | ((PASS_PROGRAM.len() as u64) << 32),
            PASS_PROGRAM.as_ptr() as u64,
            license.as_ptr() as u64,
            0, // log_level, log_size
            0, // log_buf
            0, // kern_version, prog_flags
            u64::from_le_bytes(name[..8].try_into().expect("8 bytes")),
            u64::from_le_bytes(name[8..].try_into().expect("8 bytes")),
        ],
    )
    .context("loading the pass program")?;
    Ok(owned(fd))
}

/// Creates a tcx link of `program` on interface `ifindex` at `hook` and pins it at `pin`.
fn create_and_pin(program: &OwnedFd, ifindex: u32, hook: Hook, pin: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let attach_type = match hook {
        Hook::TcIngress => BPF_TCX_INGRESS,
        Hook::TcEgress => BPF_TCX_EGRESS,
        Hook::Xdp => anyhow::bail!("no XDP link is made ahead"),
    };
    let prog_fd = u64::from(program.as_raw_fd().unsigned_abs());
    let link = bpfsys::bpf(
        BPF_LINK_CREATE,
        &[
            prog_fd | (u64::from(ifindex) << 32),
            attach_type | (BPF_F_AFTER << 32),
        ],
    )
    .context("creating the link")?;
    let link = owned(link);
    let path = CString::new(pin.as_os_str().as_encoded_bytes())?;
    bpfsys::bpf(
        BPF_OBJ_PIN,
        &[
            path.as_ptr() as u64,
            u64::from(link.as_raw_fd().unsigned_abs()),
        ],
    )
    .with_context(|| format!("pinning {}", pin.display()))?;
    Ok(())
}

/// Takes ownership of a descriptor `bpf(2)` returned.
fn owned(fd: i64) -> OwnedFd {
    let fd = i32::try_from(fd).expect("bpf(2) returns descriptors that fit an int");
    // SAFETY: a new descriptor the kernel just returned, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_made_ahead_are_claimed_once() {
        let mut ahead = LinkedAhead::default();
        ahead
            .pins
            .insert(PathBuf::from("/p/links/tc-ingress-3-eth0"));
        assert!(!ahead.claim(Path::new("/p/links/tc-egress-3-eth0")));
        assert!(ahead.claim(Path::new("/p/links/tc-ingress-3-eth0")));
        assert!(!ahead.claim(Path::new("/p/links/tc-ingress-3-eth0")));
        assert!(ahead.is_empty());
    }
}
