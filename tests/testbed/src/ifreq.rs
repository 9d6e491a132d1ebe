//! Interface queries and settings through `ioctl`s on a throwaway socket. They act on the
//! network namespace of the calling thread, so callers run them through `Netns::run`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `ETHTOOL_GTXCSUM` / `ETHTOOL_STXCSUM` from `linux/ethtool.h` (absent from the libc crate).
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;

/// `struct ethtool_value` from `linux/ethtool.h`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// The index of `name` (like `if_nametoindex`, with the reason when it fails).
pub(crate) fn index(name: &str) -> io::Result<u32> {
    let c_name = CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: c_name is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(index)
}

/// The hardware address of `name`.
pub(crate) fn hwaddr(name: &str) -> io::Result<[u8; 6]> {
    let mut req = request(name)?;
    ioctl(libc::SIOCGIFHWADDR, &mut req)?;
    // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (byte, value) in mac.iter_mut().zip(data) {
        *byte = value.to_ne_bytes()[0];
    }
    Ok(mac)
}

/// Whether transmit checksum offload of `name` is on.
pub(crate) fn tx_checksum(name: &str) -> io::Result<bool> {
    Ok(ethtool(name, ETHTOOL_GTXCSUM, 0)? != 0)
}

/// Turns transmit checksum offload of `name` on or off.
pub(crate) fn set_tx_checksum(name: &str, on: bool) -> io::Result<()> {
    ethtool(name, ETHTOOL_STXCSUM, u32::from(on)).map(|_| ())
}

/// Runs one `SIOCETHTOOL` command that takes or returns a `struct ethtool_value`.
fn ethtool(name: &str, cmd: u32, data: u32) -> io::Result<u32> {
    let mut value = EthtoolValue { cmd, data };
    let mut req = request(name)?;
    req.ifr_ifru.ifru_data = (&raw mut value).cast();
    ioctl(libc::SIOCETHTOOL, &mut req)?;
    Ok(value.data)
}

/// An `ifreq` naming `name`, the rest zeroed.
fn request(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    // SAFETY: ifreq is plain data for which all-zero bytes are valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = libc::c_char::from_ne_bytes([byte]);
    }
    Ok(req)
}

fn ioctl(request: libc::c_ulong, req: &mut libc::ifreq) -> io::Result<()> {
    // Any socket of the namespace serves for interface ioctls.
    // SAFETY: plain socket creation; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: req is a valid ifreq (and its ifru_data, if set, points to a live ethtool_value).
    if unsafe { libc::ioctl(sock.as_raw_fd(), request as _, std::ptr::from_mut(req)) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
