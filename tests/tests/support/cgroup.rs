//! A cgroup v2 directory of a test's own for socket-level load balancing: the agent attaches
//! its cgroup programs there (`--cgroup-root`), and only the client processes the test starts
//! in it have their sockets served, so tests running side by side never see each other's
//! programs.

use std::{
    ffi::CString,
    io::ErrorKind,
    net::SocketAddr,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use kproxy::dataplane::socket_lb;
use kproxy_testbed::{FamilyAddr, Netns, Reply};

/// The client binary, built by cargo with these tests.
pub fn socket_client_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kproxy-socket-client"))
}

/// One answer the client printed: the server's reply and the peer the application saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen<A> {
    pub reply: Reply<A>,
    /// getpeername of the socket, or the source of the datagram received.
    pub seen: SocketAddr,
}

pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    /// A fresh cgroup under the machine's cgroup v2 root.
    pub fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let root = socket_lb::cgroup_root().expect("a cgroup v2 hierarchy");
        let path = root.join(format!(
            "kpt-sock-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `--cgroup-root` for the agent.
    pub fn agent_arg(&self) -> String {
        self.path.display().to_string()
    }

    /// The socket client in `ns` and this cgroup, running `mode` against `target`.
    pub fn spawn_client(&self, ns: &Netns, mode: &str, target: SocketAddr, count: usize) -> Child {
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(self.path.join("cgroup.procs"))
            .expect("opening cgroup.procs");
        let mut cmd: Command = ns.command(socket_client_bin());
        cmd.args([mode, &target.to_string(), &count.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let zero = CString::new("0").expect("a C string");
        // SAFETY: write(2) on a descriptor opened above, with a buffer made before the fork:
        // async-signal-safe, no allocation.
        unsafe {
            cmd.pre_exec(move || {
                let fd = procs.as_raw_fd();
                if libc::write(fd, zero.as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn().expect("starting the socket client")
    }

    /// Runs `count` requests of `mode` from `ns` in this cgroup; the answers, or the
    /// client's error kind.
    pub fn requests<A: FamilyAddr>(
        &self,
        ns: &Netns,
        mode: &str,
        target: SocketAddr,
        count: usize,
    ) -> Result<Vec<Seen<A>>, ErrorKind> {
        let out = self
            .spawn_client(ns, mode, target, count)
            .wait_with_output()
            .expect("running the socket client");
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(
                error_kind(&stderr).unwrap_or_else(|| panic!("the socket client failed: {stderr}"))
            );
        }
        Ok(parse_lines(&String::from_utf8_lossy(&out.stdout)))
    }
}

impl Default for TestCgroup {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Its clients have exited; the kernel may take a moment to let the directory go.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("cannot remove cgroup {}", self.path.display());
    }
}

/// The answers in the client's output.
pub fn parse_lines<A: FamilyAddr>(stdout: &str) -> Vec<Seen<A>> {
    stdout
        .lines()
        .map(|line| {
            let (answer, seen) = line
                .split_once("\tseen=")
                .unwrap_or_else(|| panic!("not a client line: {line:?}"));
            Seen {
                reply: Reply::parse(answer).expect("a who-am-I answer"),
                seen: seen.parse().expect("an address"),
            }
        })
        .collect()
}

/// The `ErrorKind` a failed client reported (`error=Kind ...`).
pub fn error_kind(stderr: &str) -> Option<ErrorKind> {
    let kind = stderr.strip_prefix("error=")?.split_whitespace().next()?;
    Some(match kind {
        "ConnectionRefused" => ErrorKind::ConnectionRefused,
        "TimedOut" | "WouldBlock" => ErrorKind::TimedOut,
        "NetworkUnreachable" => ErrorKind::NetworkUnreachable,
        "HostUnreachable" => ErrorKind::HostUnreachable,
        "ConnectionReset" => ErrorKind::ConnectionReset,
        _ => ErrorKind::Other,
    })
}
