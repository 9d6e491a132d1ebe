//! Which program each of the agent's pinned links runs, asked of the kernel: `BPF_OBJ_GET` on
//! the link's pin, `BPF_OBJ_GET_INFO_BY_FD` for its program id, then the program's own info
//! (id, tag, name). The tag is a hash of the program's instructions: another tag means other
//! bytecode, a new id with the same tag the same bytecode loaded again.

use std::{
    ffi::CString,
    fmt::{self, Write as _},
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

use kproxy::dataplane::bpfsys::bpf;

/// Commands of `bpf(2)` (linux/bpf.h).
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// A pinned link and the program attached through it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkProgram {
    /// The pin's file name (`<hook>-<ifindex>-<iface>`).
    pub link: String,
    pub link_id: u32,
    pub prog_id: u32,
    pub tag: [u8; 8],
    pub prog_name: String,
}

impl LinkProgram {
    pub fn tag_hex(&self) -> String {
        self.tag.iter().fold(String::new(), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
    }
}

impl fmt::Display for LinkProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (link {}): prog {} {} tag {}",
            self.link,
            self.link_id,
            self.prog_id,
            self.prog_name,
            self.tag_hex()
        )
    }
}

/// Every link pinned under `<pin_dir>/links`, sorted by pin name.
pub fn link_programs(pin_dir: &Path) -> Vec<LinkProgram> {
    let dir = pin_dir.join("links");
    let mut links: Vec<LinkProgram> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("links dir entry").path();
            link_program(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .collect();
    links.sort_by(|a, b| a.link.cmp(&b.link));
    links
}

fn link_program(pin: &Path) -> io::Result<LinkProgram> {
    let link = obj_get(pin)?;
    // struct bpf_link_info starts with: type, id, prog_id (u32 each).
    let mut link_info = [0u32; 4];
    info_by_fd(&link, bytes_of_mut(&mut link_info))?;
    let prog = prog_fd_by_id(link_info[2])?;
    // struct bpf_prog_info: type u32, id u32, tag [u8; 8] at 8, ..., name [u8; 16] at 64.
    let mut prog_info = [0u64; 10];
    let bytes = bytes_of_mut(&mut prog_info);
    info_by_fd(&prog, bytes)?;
    let id = u32::from_ne_bytes(bytes[4..8].try_into().expect("4 bytes"));
    let tag: [u8; 8] = bytes[8..16].try_into().expect("8 bytes");
    let name = &bytes[64..80];
    let name = String::from_utf8_lossy(&name[..name.iter().position(|&b| b == 0).unwrap_or(16)])
        .into_owned();
    Ok(LinkProgram {
        link: pin
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        link_id: link_info[1],
        prog_id: id,
        tag,
        prog_name: name,
    })
}

fn bytes_of_mut<T: Copy>(words: &mut [T]) -> &mut [u8] {
    // SAFETY: plain integers have no padding or invalid bit patterns; same memory, same length.
    unsafe {
        std::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), std::mem::size_of_val(words))
    }
}

fn owned_fd(fd: i64) -> io::Result<OwnedFd> {
    let fd = i32::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: a descriptor bpf(2) just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn obj_get(pin: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(pin.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // attr: pathname (u64), bpf_fd, file_flags.
    owned_fd(bpf(BPF_OBJ_GET, &[path.as_ptr() as u64])?)
}

fn prog_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    // attr: prog_id (u32), next_id, open_flags.
    owned_fd(bpf(BPF_PROG_GET_FD_BY_ID, &[u64::from(id)])?)
}

fn info_by_fd(fd: &OwnedFd, info: &mut [u8]) -> io::Result<()> {
    // attr: bpf_fd (u32), info_len (u32), info (u64 pointer); on little-endian x86_64 and
    // aarch64 the first u32 member is the low half of the first word.
    let len = u32::try_from(info.len()).map_err(io::Error::other)?;
    let fd_and_len = u64::from(fd.as_raw_fd().unsigned_abs()) | (u64::from(len) << 32);
    bpf(
        BPF_OBJ_GET_INFO_BY_FD,
        &[fd_and_len, info.as_mut_ptr() as u64],
    )?;
    Ok(())
}
