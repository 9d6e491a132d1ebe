//! Interface facts and settings through `SIOCETHTOOL` and friends on a throwaway socket.
//! They act on the network namespace of the calling thread.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// Commands from `linux/ethtool.h` (absent from the libc crate).
const ETHTOOL_GDRVINFO: u32 = 0x03;
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;

/// `struct ethtool_value`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ethtool_drvinfo` (only `driver` is read).
#[repr(C)]
struct DrvInfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// The index of `name` (like `if_nametoindex`, with the reason when it fails).
pub fn index(name: &str) -> io::Result<u32> {
    let c_name = CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: c_name is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(index)
}

/// The name of interface `index`, if it exists in this namespace.
pub fn name(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has room for IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    let bytes: Vec<u8> = buf
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| c.to_ne_bytes()[0])
        .collect();
    String::from_utf8(bytes).ok()
}

/// The hardware address of `name`.
pub fn hwaddr(name: &str) -> io::Result<[u8; 6]> {
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

/// The driver of `name` ("veth", "virtio_net", ...).
pub fn driver(name: &str) -> io::Result<String> {
    // SAFETY: all-zero bytes are a valid drvinfo.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    ethtool_raw(name, (&raw mut info).cast())?;
    let len = info.driver.iter().position(|b| *b == 0).unwrap_or(32);
    Ok(String::from_utf8_lossy(&info.driver[..len]).into_owned())
}

/// Whether transmit checksum offload of `name` is on.
pub fn tx_checksum(name: &str) -> io::Result<bool> {
    Ok(ethtool_value(name, ETHTOOL_GTXCSUM, 0)? != 0)
}

/// Turns transmit checksum offload of `name` on or off (`ethtool -K <if> tx on|off`).
pub fn set_tx_checksum(name: &str, on: bool) -> io::Result<()> {
    ethtool_value(name, ETHTOOL_STXCSUM, u32::from(on)).map(|_| ())
}

/// Runs one `SIOCETHTOOL` command that takes or returns a `struct ethtool_value`.
fn ethtool_value(name: &str, cmd: u32, data: u32) -> io::Result<u32> {
    let mut value = EthtoolValue { cmd, data };
    ethtool_raw(name, (&raw mut value).cast())?;
    Ok(value.data)
}

/// `SIOCETHTOOL` on `name` with the command structure at `data`.
fn ethtool_raw(name: &str, data: *mut libc::c_char) -> io::Result<()> {
    let mut req = request(name)?;
    req.ifr_ifru.ifru_data = data;
    ioctl(libc::SIOCETHTOOL, &mut req)
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
    // SAFETY: req is a valid ifreq whose ifru_data, if set, points to a live command buffer
    // of the size its command implies.
    if unsafe { libc::ioctl(sock.as_raw_fd(), request as _, std::ptr::from_mut(req)) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
