//! Making sure the pin directory lives on a BPF filesystem.

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

const BPF_FS_MAGIC: libc::__fsword_t = 0xcafe_4a11;

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own; `c` is a valid C string.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &raw mut st) == 0 && st.f_type == BPF_FS_MAGIC
    }
}

/// Creates `pin_dir`, mounting a bpffs on its parent first if that is not one already
/// (the default `/sys/fs/bpf/kproxy` then gets the usual `/sys/fs/bpf` mount).
pub fn ensure_pin_dir(pin_dir: &Path) -> Result<()> {
    let parent: PathBuf = pin_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .context("the pin directory needs a parent directory")?
        .to_path_buf();
    if !is_bpffs(&parent) && !is_bpffs(pin_dir) {
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        let target = CString::new(parent.as_os_str().as_bytes())?;
        // SAFETY: plain mount(2) with valid C strings.
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
            bail!(
                "mounting bpffs on {}: {} (kproxy needs root or CAP_SYS_ADMIN)",
                parent.display(),
                std::io::Error::last_os_error()
            );
        }
        tracing::info!(path = %parent.display(), "mounted bpffs");
    }
    std::fs::create_dir_all(pin_dir).with_context(|| format!("creating {}", pin_dir.display()))?;
    if !is_bpffs(pin_dir) {
        bail!("{} is not on a BPF filesystem", pin_dir.display());
    }
    Ok(())
}
