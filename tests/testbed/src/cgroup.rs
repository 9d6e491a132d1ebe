//! A cgroup v2 directory of a test's (or the bench's) own, for kproxy's socket-level load
//! balancing: the agent attaches its cgroup programs there (`--cgroup-root`), so only the
//! processes put in it have their sockets served, and tests running side by side never see
//! each other's programs. Removed on drop, which detaches whatever was attached to it.

use std::{
    ffi::CString,
    fs::File,
    io::Write,
    os::{fd::AsRawFd, unix::ffi::OsStrExt},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{Context, Result};

const CGROUP2_SUPER_MAGIC: libc::__fsword_t = 0x6367_7270;

fn is_cgroup2(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own; `c` is a valid C string.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &raw mut st) == 0 && st.f_type == CGROUP2_SUPER_MAGIC
    }
}

/// The machine's cgroup v2 root: `/sys/fs/cgroup` (unified) or `/sys/fs/cgroup/unified`
/// (hybrid).
pub fn root() -> Result<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| is_cgroup2(p))
        .context("no cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified")
}

pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// A fresh cgroup `<prefix>-<pid>-<n>` under the cgroup v2 root.
    pub fn create(prefix: &str) -> Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = root()?.join(format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&path)
            .with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes `cmd`'s child join this cgroup before it runs its program.
    pub fn put_child(&self, cmd: &mut Command) -> Result<()> {
        use std::os::unix::process::CommandExt;
        let procs = self.procs()?;
        // SAFETY: write(2) on a descriptor opened before the fork, from a static buffer:
        // async-signal-safe, no allocation.
        unsafe {
            cmd.pre_exec(move || {
                if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }

    /// Moves this whole process (every thread) into the cgroup until the guard is dropped,
    /// which moves it back to the root.
    pub fn enter(&self) -> Result<Entered> {
        let pid = std::process::id().to_string();
        let home = own_cgroup()?;
        self.procs()?
            .write_all(pid.as_bytes())
            .with_context(|| format!("moving this process into {}", self.path.display()))?;
        Ok(Entered { pid, home })
    }

    fn procs(&self) -> Result<File> {
        let path = self.path.join("cgroup.procs");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Its processes have exited or left; the kernel may take a moment to let it go.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("cannot remove cgroup {}", self.path.display());
    }
}

/// This process's cgroup v2 directory, from `/proc/self/cgroup`'s `0::` line.
fn own_cgroup() -> Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup")?;
    let relative = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .context("no cgroup v2 line in /proc/self/cgroup")?;
    Ok(root()?.join(relative.trim_start_matches('/')))
}

/// This process inside a [`Cgroup`] (see [`Cgroup::enter`]).
pub struct Entered {
    pid: String,
    /// Where it was before, and goes back to.
    home: PathBuf,
}

impl Drop for Entered {
    fn drop(&mut self) {
        let path = self.home.join("cgroup.procs");
        let back = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut procs| procs.write_all(self.pid.as_bytes()));
        if let Err(e) = back {
            eprintln!(
                "cannot move this process back to {}: {e}",
                self.home.display()
            );
        }
    }
}
