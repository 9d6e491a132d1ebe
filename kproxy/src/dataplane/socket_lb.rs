//! Socket-level load balancing's side of the agent: its load-time constants, the cgroup v2
//! directory its programs attach to, and their pinned links.
//!
//! The cgroup programs attach through BPF links pinned under `<pin dir>/cgroup-links`, like
//! the interfaces' (see `attach`): they outlive the agent, and the next one swaps its
//! programs into them with `BPF_LINK_UPDATE`. With `--socket-lb off` the links are
//! detached, and everything goes through the packet path again.

use std::{
    ffi::CString,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd},
        unix::{ffi::OsStrExt, fs::MetadataExt},
    },
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSock, CgroupSockAddr, Program, ProgramError, ProgramFd,
        links::FdLink,
    },
};
use kproxy_common::names;

use super::{attach, bpfsys};

/// Which sockets get socket-level load balancing (`--socket-lb`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SocketLbMode {
    /// Every socket under the cgroup root: the node's and its pods'.
    All,
    /// The node's own sockets (its network namespace) only: pods keep seeing the VIP on the
    /// wire, for service meshes that must.
    HostOnly,
    /// None: every connection goes through the packet path.
    #[default]
    Off,
}

impl SocketLbMode {
    pub const fn is_on(self) -> bool {
        !matches!(self, Self::Off)
    }
}

/// `--socket-lb` and `--cgroup-root`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketLbConfig {
    pub mode: SocketLbMode,
    /// The cgroup v2 directory whose sockets (and its descendants') are served; `None`: the
    /// machine's cgroup v2 root, found or mounted (`cgroup_root`).
    pub cgroup: Option<PathBuf>,
    /// Where the pods' network namespaces are (bind mounts, as the container runtime
    /// keeps them), searched for connected UDP sockets pointed at a backend no longer in
    /// use (see `stale_sockets`).
    pub netns_dir: PathBuf,
}

/// `--netns-dir`'s default: where containerd, CRI-O and `ip netns` keep namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// The object's load-time constants (`names::GLOBALS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadTimeConstants {
    /// The cookie of the network namespace the agent runs in: the node's.
    pub host_netns: u64,
    /// Non-zero: socket-level load balancing serves pods' namespaces too.
    pub sock_lb_pods: u32,
}

impl LoadTimeConstants {
    /// The constants for `mode`, in the agent's own namespace (none needed while it is off:
    /// the socket programs are not attached then).
    pub fn for_mode(mode: SocketLbMode) -> Result<Self> {
        if !mode.is_on() {
            return Ok(Self::default());
        }
        Ok(Self {
            host_netns: own_netns_cookie()?,
            sock_lb_pods: u32::from(mode == SocketLbMode::All),
        })
    }

    /// Sets them on `loader`. The loader borrows the values for its whole life, which for
    /// the agent's is the process's: they are leaked, a dozen bytes once per start.
    pub fn apply(self, loader: &mut EbpfLoader<'static>) {
        let this: &'static Self = Box::leak(Box::new(self));
        loader.override_global(names::GLOBAL_HOST_NETNS, &this.host_netns, true);
        loader.override_global(names::GLOBAL_SOCK_LB_PODS, &this.sock_lb_pods, true);
    }
}

/// `SO_NETNS_COOKIE` (Linux 5.14): the calling thread's network namespace's cookie, the
/// number `bpf_get_netns_cookie` gives programs for sockets in it.
pub fn own_netns_cookie() -> Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: socket(2) with constant arguments; the descriptor is owned at once.
    let socket = unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            bail!(
                "a socket to read the network namespace's cookie: {}",
                std::io::Error::last_os_error()
            );
        }
        <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
    };
    let mut cookie = 0u64;
    let mut len: libc::socklen_t = 8;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`, which we own.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        bail!(
            "reading the network namespace's cookie (SO_NETNS_COOKIE, Linux 5.14): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(cookie)
}

const CGROUP2_SUPER_MAGIC: libc::__fsword_t = 0x6367_7270;

/// Whether `path` is on a cgroup v2 filesystem.
pub fn is_cgroup2(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own; `c` is a valid C string.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &raw mut st) == 0 && st.f_type == CGROUP2_SUPER_MAGIC
    }
}

/// Where kproxy mounts cgroup v2 when the machine has it nowhere (as Cilium does under
/// `/run/cilium/cgroupv2`).
pub const OWN_CGROUP2_MOUNT: &str = "/run/kproxy/cgroupv2";

/// The machine's cgroup v2 root: `/sys/fs/cgroup` (unified hierarchy), else
/// `/sys/fs/cgroup/unified` (hybrid), else a cgroup2 mount of kproxy's own.
pub fn cgroup_root() -> Result<PathBuf> {
    for candidate in [
        "/sys/fs/cgroup",
        "/sys/fs/cgroup/unified",
        OWN_CGROUP2_MOUNT,
    ] {
        if is_cgroup2(Path::new(candidate)) {
            return Ok(candidate.into());
        }
    }
    std::fs::create_dir_all(OWN_CGROUP2_MOUNT)
        .with_context(|| format!("creating {OWN_CGROUP2_MOUNT}"))?;
    let target = CString::new(OWN_CGROUP2_MOUNT)?;
    // SAFETY: plain mount(2) with valid C strings.
    let rc = unsafe {
        libc::mount(
            c"cgroup2".as_ptr(),
            target.as_ptr(),
            c"cgroup2".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!(
            "mounting cgroup2 on {OWN_CGROUP2_MOUNT}: {} (socket-level load balancing needs \
             cgroup v2)",
            std::io::Error::last_os_error()
        );
    }
    tracing::info!(path = OWN_CGROUP2_MOUNT, "mounted cgroup2");
    Ok(OWN_CGROUP2_MOUNT.into())
}

/// Where the cgroup programs' links are pinned.
pub fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("cgroup-links")
}

/// Attaches the socket programs to the cgroup `config` names, or detaches them when it is
/// off. Returns the cgroup attached to.
pub fn apply(ebpf: &mut Ebpf, pin_dir: &Path, config: &SocketLbConfig) -> Result<Option<PathBuf>> {
    let dir = links_dir(pin_dir);
    if !config.mode.is_on() {
        let removed = detach_all(pin_dir)?;
        if removed > 0 {
            tracing::info!(links = removed, "socket-level load balancing off: detached");
        }
        return Ok(None);
    }
    let cgroup_path = match &config.cgroup {
        Some(path) => path.clone(),
        None => cgroup_root()?,
    };
    if !is_cgroup2(&cgroup_path) {
        bail!(
            "--cgroup-root {} is not a cgroup v2 directory",
            cgroup_path.display()
        );
    }
    let cgroup = std::fs::File::open(&cgroup_path)
        .with_context(|| format!("opening cgroup {}", cgroup_path.display()))?;
    let cgroup_id = cgroup.metadata()?.ino();
    std::fs::create_dir_all(&dir)?;
    for name in names::SOCKET_PROGRAMS {
        let pin = dir.join(name);
        match ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the object"))?
        {
            Program::CgroupSockAddr(program) => attach_to(program, name, &pin, &cgroup, cgroup_id),
            Program::CgroupSock(program) => attach_to(program, name, &pin, &cgroup, cgroup_id),
            _ => bail!("program {name} is not a cgroup socket program"),
        }
        .with_context(|| format!("{name} on {}", cgroup_path.display()))?;
    }
    tracing::info!(mode = ?config.mode, cgroup = %cgroup_path.display(), "socket-level load balancing attached");
    Ok(Some(cgroup_path))
}

/// What attaching needs of a cgroup program, alike for socket-address programs (connect,
/// sendmsg, ...) and socket programs (release).
trait CgroupProgram {
    fn load_program(&mut self) -> Result<(), ProgramError>;
    fn program_fd(&self) -> Result<&ProgramFd, ProgramError>;
    /// Attaches to `cgroup` through a link, which is handed over (to be pinned).
    fn attach_link(&mut self, cgroup: BorrowedFd<'_>) -> Result<FdLink>;
}

macro_rules! cgroup_program {
    ($($program:ty),*) => { $(
        impl CgroupProgram for $program {
            fn load_program(&mut self) -> Result<(), ProgramError> {
                self.load()
            }
            fn program_fd(&self) -> Result<&ProgramFd, ProgramError> {
                self.fd()
            }
            fn attach_link(&mut self, cgroup: BorrowedFd<'_>) -> Result<FdLink> {
                // A link takes no attach flags (the kernel refuses any): cgroup links
                // always sit beside other programs, as BPF_F_ALLOW_MULTI would.
                let id = self.attach(cgroup, CgroupAttachMode::Single)?;
                Ok(self.take_link(id)?.try_into()?)
            }
        }
    )* };
}

cgroup_program!(CgroupSockAddr, CgroupSock);

/// Loads `program` and puts it in the link pinned at `pin`: swapped into the link there if
/// that link is this cgroup's, else in a new link, pinned.
fn attach_to(
    program: &mut impl CgroupProgram,
    name: &str,
    pin: &Path,
    cgroup: &std::fs::File,
    cgroup_id: u64,
) -> Result<()> {
    program
        .load_program()
        .with_context(|| format!("the kernel rejected program {name}"))?;
    if pin.exists() {
        match replace_program(pin, program.program_fd()?, cgroup_id) {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::info!(pin = %pin.display(), reason = %format!("{e:#}"), "attaching anew");
                attach::detach_pinned_link(pin)?;
            }
        }
    }
    let link = program.attach_link(cgroup.as_fd())?;
    link.pin(pin)
        .with_context(|| format!("pinning {}", pin.display()))?;
    Ok(())
}

/// Detaches and unpins every cgroup link under `pin_dir`; how many there were.
pub fn detach_all(pin_dir: &Path) -> Result<usize> {
    let dir = links_dir(pin_dir);
    if !dir.is_dir() {
        return Ok(0);
    }
    let mut removed = 0;
    for entry in std::fs::read_dir(&dir)? {
        attach::detach_pinned_link(&entry?.path())?;
        removed += 1;
    }
    std::fs::remove_dir(&dir)?;
    Ok(removed)
}

/// Swaps `program` into the link pinned at `pin`, if that link is attached to cgroup
/// `cgroup_id` (a link of another cgroup, from an agent run with another `--cgroup-root`,
/// is an error: the caller replaces it).
fn replace_program(pin: &Path, program: &ProgramFd, cgroup_id: u64) -> Result<()> {
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_UPDATE: libc::c_long = 20;
    let path = CString::new(pin.as_os_str().as_bytes())?;
    let fd = bpfsys::bpf(BPF_OBJ_GET, &[path.as_ptr() as u64])
        .with_context(|| format!("opening {}", pin.display()))?;
    let link = i32::try_from(fd).context("BPF_OBJ_GET returned an out-of-range fd")?;
    // SAFETY: a descriptor BPF_OBJ_GET just made, owned (and closed) here alone.
    let link = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(link) };
    let attached_to = link_cgroup_id(&link)?;
    if attached_to != cgroup_id {
        bail!("the pinned link is attached to another cgroup (id {attached_to})");
    }
    let prog = program.as_fd().as_raw_fd();
    // attr.link_update: link_fd, new_prog_fd (u32 each), flags, old_prog_fd.
    let word = u64::from(link.as_raw_fd().unsigned_abs()) | (u64::from(prog.unsigned_abs()) << 32);
    bpfsys::bpf(BPF_LINK_UPDATE, &[word, 0]).context("BPF_LINK_UPDATE")?;
    Ok(())
}

/// The cgroup a cgroup link is attached to (`bpf_link_info.cgroup.cgroup_id`).
fn link_cgroup_id(link: &impl AsRawFd) -> Result<u64> {
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    // struct bpf_link_info: type, id, prog_id (u32 each), then the union at byte 16, whose
    // `cgroup` member starts with the cgroup id.
    let mut info = [0u64; 8];
    let len = size_of_val(&info) as u64;
    let word = u64::from(link.as_raw_fd().unsigned_abs()) | (len << 32);
    bpfsys::bpf(BPF_OBJ_GET_INFO_BY_FD, &[word, info.as_mut_ptr() as u64])
        .context("BPF_OBJ_GET_INFO_BY_FD")?;
    Ok(info[2])
}
