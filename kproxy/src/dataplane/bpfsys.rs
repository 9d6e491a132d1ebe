//! `bpf(2)` commands aya does not offer, made with a plain syscall.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;

/// `bpf(cmd, attr)` with a zeroed, 128-byte `union bpf_attr` whose first words are `words`;
/// returns what the kernel returns (a new descriptor, for commands that make one).
pub fn bpf(cmd: libc::c_long, words: &[u64]) -> std::io::Result<i64> {
    let mut attr = [0u64; ATTR_WORDS];
    attr[..words.len()].copy_from_slice(words);
    bpf_attr(cmd, &mut attr)
}

/// Words of the `union bpf_attr` passed: 128 bytes, more than any command here uses (the
/// kernel requires what it does not know to be zero).
pub const ATTR_WORDS: usize = 16;

/// `bpf(cmd, attr)` on the caller's attr, which the kernel may write back into (batch
/// commands return how many entries they processed there).
pub fn bpf_attr(cmd: libc::c_long, attr: &mut [u64; ATTR_WORDS]) -> std::io::Result<i64> {
    // SAFETY: bpf(2) reads and writes `size_of_val(attr)` bytes of a properly sized attr
    // union; any pointers in it belong to the caller, who keeps them alive for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A descriptor as an attr word.
pub fn fd_word(fd: BorrowedFd<'_>) -> u64 {
    u64::from(fd.as_raw_fd().unsigned_abs())
}

/// The descriptor a command returned, owned.
pub fn owned_fd(fd: i64) -> io::Result<OwnedFd> {
    let fd = i32::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: a descriptor the kernel just made for this process, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// Pins `object` at `path` on a bpffs.
pub fn pin(object: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let path = c_path(path)?;
    // obj_pin: pathname (a pointer), then bpf_fd and file_flags.
    bpf(BPF_OBJ_PIN, &[path.as_ptr() as u64, fd_word(object)]).map(drop)
}

/// Opens the object pinned at `path`.
pub fn open_pinned(path: &Path) -> io::Result<OwnedFd> {
    let path = c_path(path)?;
    owned_fd(bpf(BPF_OBJ_GET, &[path.as_ptr() as u64])?)
}
