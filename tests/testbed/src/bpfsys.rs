//! The few raw `bpf(2)` calls the test bed makes itself: a tiny map to probe for BPF rights,
//! pinning it to check a bpffs, and tiny XDP programs attached through BPF links (the LAN
//! topology's pass-through on switch ports). Everything else about BPF belongs to kproxy.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// Commands, map and program types and attach types from `linux/bpf.h`.
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_LOAD: libc::c_long = 5;
#[cfg(test)]
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
/// XDP verdicts.
pub(crate) const XDP_PASS: i32 = 2;
#[cfg(test)]
pub(crate) const XDP_TX: i32 = 3;
/// Opcodes of the instructions the bed's programs use.
pub(crate) const MOV_K: u8 = 0xb7;
pub(crate) const EXIT: u8 = 0x95;

/// `struct bpf_insn`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Insn {
    pub code: u8,
    /// dst_reg in the low nibble, src_reg in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    pub(crate) fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn {
            code,
            regs: (src << 4) | dst,
            off,
            imm,
        }
    }
}

/// The leading members of `union bpf_attr` for `BPF_MAP_CREATE`; the kernel treats the members
/// a shorter attribute leaves out as zero.
#[repr(C)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// The leading members of `union bpf_attr` for `BPF_PROG_LOAD`.
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The members of `union bpf_attr` for `BPF_LINK_CREATE` of an XDP link.
#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

/// The members of `union bpf_attr` for `BPF_OBJ_PIN`.
#[cfg(test)]
#[repr(C)]
struct ObjPinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// Creates a one-element array map of `u32` to `u32`.
pub(crate) fn create_array_map() -> io::Result<OwnedFd> {
    let attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        map_flags: 0,
    };
    // SAFETY: attr is a valid, initialised prefix of bpf_attr and its size is passed along.
    let fd = unsafe { bpf(BPF_MAP_CREATE, (&raw const attr).cast(), size_of_val(&attr)) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    owned(fd)
}

/// Loads the XDP program `insns` named `name` (at most 15 characters); the error carries the
/// verifier's log.
pub(crate) fn load_xdp(name: &str, insns: &[Insn]) -> io::Result<OwnedFd> {
    let mut prog_name = [0u8; 16];
    if name.len() >= prog_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("program name {name:?} is too long"),
        ));
    }
    prog_name[..name.len()].copy_from_slice(name.as_bytes());
    let mut log = vec![0u8; 1 << 16];
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: u32::try_from(insns.len()).map_err(io::Error::other)?,
        insns: insns.as_ptr() as u64,
        license: c"GPL".as_ptr() as u64,
        log_level: 1,
        log_size: u32::try_from(log.len()).map_err(io::Error::other)?,
        log_buf: log.as_mut_ptr() as u64,
        kern_version: 0,
        prog_flags: 0,
        prog_name,
        prog_ifindex: 0,
        expected_attach_type: BPF_XDP,
    };
    // SAFETY: attr is a valid prefix of bpf_attr whose pointers (instructions, license, log)
    // outlive the call, and the log's size is the one given.
    let fd = unsafe { bpf(BPF_PROG_LOAD, (&raw const attr).cast(), size_of_val(&attr)) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        return Err(io::Error::new(
            e.kind(),
            format!(
                "loading XDP program {name}: {e}\n{}",
                String::from_utf8_lossy(&log[..end])
            ),
        ));
    }
    owned(fd)
}

/// An XDP program that passes every frame to the stack.
pub(crate) fn load_xdp_pass() -> io::Result<OwnedFd> {
    load_xdp(
        "kpt_xdp_pass",
        &[
            Insn::new(MOV_K, 0, 0, 0, XDP_PASS),
            Insn::new(EXIT, 0, 0, 0, 0),
        ],
    )
}

/// Attaches XDP program `prog` to interface `ifindex` of the calling thread's network
/// namespace, in the driver's (native) mode where it has one, as veth does. Closing the
/// returned link detaches it.
pub(crate) fn attach_xdp(prog: &OwnedFd, ifindex: u32) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;

    let attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd().unsigned_abs(),
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags: 0,
    };
    // SAFETY: attr is a valid prefix of bpf_attr for this command.
    let fd = unsafe {
        bpf(
            BPF_LINK_CREATE,
            (&raw const attr).cast(),
            size_of_val(&attr),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    owned(fd)
}

/// Takes ownership of a descriptor `bpf(2)` just returned.
fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = libc::c_int::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: fd is a descriptor just returned by the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Pins the BPF object `fd` at `path`, which must be inside a bpffs.
#[cfg(test)]
pub(crate) fn pin(fd: &OwnedFd, path: &std::path::Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;

    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let attr = ObjPinAttr {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd().unsigned_abs(),
        file_flags: 0,
    };
    // SAFETY: attr is valid and points to a NUL-terminated path that outlives the call.
    if unsafe { bpf(BPF_OBJ_PIN, (&raw const attr).cast(), size_of_val(&attr)) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// # Safety
/// `attr` must point to `size` readable bytes forming a valid attribute for `cmd`.
unsafe fn bpf(cmd: libc::c_long, attr: *const libc::c_void, size: usize) -> libc::c_long {
    // SAFETY: guaranteed by the caller.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size) }
}
