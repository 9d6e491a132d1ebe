//! A private bpffs for one test run, mounted on a temporary directory outside `/sys`, so pins
//! never collide with other tests or a running agent and stay visible to every process of the
//! run (`ip netns exec` remounts `/sys`, which would hide `/sys/fs/bpf`).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tempfile::TempDir;

/// The start of the mount point names, followed by `<pid>-`, so leftovers can be swept.
const PREFIX: &str = "kpt-bpffs-";

/// A bpffs mounted on a temporary directory; unmounted and removed when dropped.
#[derive(Debug)]
pub struct BpfFs {
    dir: TempDir,
}

impl BpfFs {
    /// Sweeps mounts left by dead runs, then mounts a fresh bpffs.
    pub fn new() -> Result<BpfFs> {
        sweep_leftovers();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{}-", std::process::id()))
            .tempdir()
            .context("creating the bpffs mount point")?;
        mount(dir.path()).with_context(|| format!("mounting bpffs on {}", dir.path().display()))?;
        Ok(BpfFs { dir })
    }

    /// The root of the bpffs; pin below it.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A path for a pin named `name` directly under the root.
    pub fn pin_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        // Detached, so a pin still open somewhere cannot keep the mount busy; the TempDir then
        // removes the now empty directory.
        let _ = unmount(self.dir.path());
    }
}

fn mount(dir: &Path) -> io::Result<()> {
    let target = c_path(dir)?;
    // SAFETY: all strings are NUL-terminated and outlive the call; no data argument.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn unmount(dir: &Path) -> io::Result<()> {
    let target = c_path(dir)?;
    // SAFETY: target is NUL-terminated and outlives the call.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// Unmounts and removes bpffs mount points of this bed whose process is gone.
fn sweep_leftovers() {
    for dir in bpffs_mounts() {
        let Some(pid) = owner_pid(&dir) else { continue };
        if pid != std::process::id() && !crate::pid_alive(pid) {
            let _ = unmount(&dir);
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

/// Mount points of bpffs mounts named like ours, from `/proc/self/mountinfo`.
fn bpffs_mounts() -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|line| {
            // "<id> <parent> <dev> <root> <mount point> <options> [tags...] - <type> ..."
            let (before, after) = line.split_once(" - ")?;
            if after.split(' ').next()? != "bpf" {
                return None;
            }
            let mount_point = before.split(' ').nth(4)?;
            let dir = PathBuf::from(unescape(mount_point));
            owner_pid(&dir).map(|_| dir)
        })
        .collect()
}

/// The pid in a mount point named `kpt-bpffs-<pid>-<random>`.
fn owner_pid(dir: &Path) -> Option<u32> {
    let name = dir.file_name()?.to_str()?;
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

/// Undoes mountinfo's octal escapes (`\040` for a space and so on).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(digits) = bytes.get(i + 1..i + 4)
            && let Ok(digits) = std::str::from_utf8(digits)
            && let Ok(byte) = u8::from_str_radix(digits, 8)
        {
            out.push(byte);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpfsys;
    use crate::netns::Netns;
    use crate::privileges::require_privileges;

    /// `BPF_FS_MAGIC` from `linux/magic.h`.
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

    fn fs_type(path: &Path) -> i64 {
        let c = c_path(path).unwrap();
        // SAFETY: statfs is plain data; c is NUL-terminated.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statfs(c.as_ptr(), &raw mut st) }, 0);
        st.f_type as i64
    }

    #[test]
    fn mounts_pins_and_unmounts() {
        if !require_privileges("bpffs::mounts_pins_and_unmounts") {
            return;
        }
        let fs = BpfFs::new().unwrap();
        let root = fs.path().to_owned();
        assert_eq!(fs_type(&root), BPF_FS_MAGIC);
        assert!(bpffs_mounts().contains(&root));

        let map = bpfsys::create_array_map().unwrap();
        let pin = fs.pin_path("probe_map");
        bpfsys::pin(&map, &pin).unwrap();
        assert!(pin.exists());

        // The pin is visible to a process under `ip netns exec`, which remounts /sys.
        let ns = Netns::create(&format!("kpt-{}-bpffs", std::process::id())).unwrap();
        let status = std::process::Command::new("ip")
            .args(["netns", "exec", ns.name(), "test", "-e"])
            .arg(&pin)
            .status()
            .unwrap();
        assert!(status.success());

        drop(fs);
        assert!(!root.exists());
        assert!(!bpffs_mounts().contains(&root));
    }

    #[test]
    fn parses_mount_point_names() {
        assert_eq!(owner_pid(Path::new("/tmp/kpt-bpffs-123-abcDEF")), Some(123));
        assert_eq!(owner_pid(Path::new("/tmp/other-123-abc")), None);
        assert_eq!(unescape(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape(r"/tmp/plain\"), r"/tmp/plain\");
    }
}
