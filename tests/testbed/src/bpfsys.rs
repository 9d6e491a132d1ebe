//! The few raw `bpf(2)` calls the test bed makes itself: a tiny map to probe for BPF rights, and
//! pinning it to check a bpffs. Everything else about BPF belongs to kproxy, not to the bed.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// Commands and map types from `linux/bpf.h`.
const BPF_MAP_CREATE: libc::c_long = 0;
#[cfg(test)]
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_MAP_TYPE_ARRAY: u32 = 2;

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
    let fd = libc::c_int::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: fd is the map descriptor just returned, owned by nobody else.
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
