//! A named network namespace owned by a test: created with `ip netns add`, deleted on drop, with
//! ways to configure it and to run code, threads and processes inside it.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::ifreq;

/// Where iproute2 keeps the bind mounts that give namespaces their names.
pub const NETNS_DIR: &str = "/run/netns";

/// `ip netns add` makes `/run/netns` a shared mount point the first time it runs; two of them
/// racing can stack mounts, so namespaces of this process are created one at a time.
static CREATE_LOCK: Mutex<()> = Mutex::new(());

/// A network namespace known by name under `/run/netns`, deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace `name`; it is an error if it already exists.
    pub fn create(name: &str) -> Result<Netns> {
        {
            let _serial = CREATE_LOCK
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            run_ip(&["netns", "add", name])?;
        }
        let ns = Netns {
            name: name.to_owned(),
        };
        // A fresh namespace has even `lo` down; 127.0.0.1 is expected to work everywhere.
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace file, for APIs that want a path or a descriptor of the namespace.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// Runs `ip -n <name> <args...>`.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run_ip(&full)
    }

    /// Runs several `ip` commands (one per line, without the leading `ip`) in one process,
    /// which is much quicker than one process per command when building a topology.
    pub fn ip_batch(&self, lines: &[String]) -> Result<()> {
        let mut child = Command::new("ip")
            .args(["-n", &self.name, "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning ip -batch")?;
        let script = lines.join("\n") + "\n";
        // A write error (ip quit early) matters less than ip's own complaint, read below.
        let written = child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(script.as_bytes());
        let out = child.wait_with_output().context("waiting for ip -batch")?;
        if !out.status.success() {
            bail!(
                "ip -n {} -batch failed ({}): {}\nscript:\n{script}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        written.context("writing to ip -batch")?;
        Ok(())
    }

    /// Sets a sysctl of this namespace (`key` in dotted form, e.g. `net.ipv4.ip_forward`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.sysctls(&[(key, value)])
    }

    /// Sets several sysctls of this namespace, in order.
    ///
    /// `/proc/sys/net` shows the namespace of the thread that opens it, so the writes happen on
    /// a thread that entered the namespace; no process is spawned.
    pub fn sysctls(&self, settings: &[(&str, &str)]) -> Result<()> {
        let settings: Vec<(PathBuf, String)> = settings
            .iter()
            .map(|(key, value)| (sysctl_path(key), (*value).to_owned()))
            .collect();
        self.run(move || -> Result<()> {
            for (path, value) in settings {
                std::fs::write(&path, value)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        })?
        .with_context(|| format!("setting sysctls in netns {}", self.name))
    }

    /// Reads a sysctl of this namespace, trimmed.
    pub fn read_sysctl(&self, key: &str) -> Result<String> {
        let path = sysctl_path(key);
        let shown = path.clone();
        let value = self
            .run(move || std::fs::read_to_string(&path))?
            .with_context(|| format!("reading {} in netns {}", shown.display(), self.name))?;
        Ok(value.trim().to_owned())
    }

    /// Runs `f` on a fresh thread that has entered this namespace, and returns its result.
    ///
    /// Sockets keep the namespace they were created in, so a listener or client socket made
    /// here can be used from any thread afterwards. A panic in `f` is passed on to the caller.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let name = self.name.clone();
        match self.spawn(&format!("netns-{name}"), f)?.join() {
            Ok(result) => result.with_context(|| format!("entering netns {name}")),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Starts `f` on a new thread named `thread` that has entered this namespace, and returns
    /// at once; joining the handle gives `f`'s result, or the error of entering the namespace.
    ///
    /// For work that runs alongside the caller (a load generator, say). Threads `f` spawns
    /// start in this namespace too: a new thread inherits the namespaces of its creator.
    pub fn spawn<T: Send + 'static>(
        &self,
        thread: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<JoinHandle<io::Result<T>>> {
        // Opened here so a missing namespace is reported as this call's error, with its name.
        let file = self.open()?;
        std::thread::Builder::new()
            .name(thread.to_owned())
            .spawn(move || -> io::Result<T> {
                // SAFETY: setns on a valid namespace descriptor changes only this thread.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                drop(file);
                Ok(f())
            })
            .context("spawning a thread")
    }

    /// A command whose child process runs inside this namespace.
    ///
    /// The child calls `setns` itself before `exec`; unlike `ip netns exec` nothing is
    /// remounted, so the child sees the same `/sys` and bpffs mounts as the test.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let file = File::open(self.path());
        // SAFETY: the closure only makes the setns syscall, which is async-signal-safe, and
        // builds an io::Error from an errno value, which does not allocate.
        unsafe {
            cmd.pre_exec(move || match &file {
                Ok(file) => {
                    if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                }
                // The namespace could not be opened: make spawn() fail with that error.
                Err(e) => Err(io::Error::from_raw_os_error(
                    e.raw_os_error().unwrap_or(libc::ENOENT),
                )),
            });
        }
        cmd
    }

    /// The interface index of `ifname` inside this namespace.
    pub fn link_index(&self, ifname: &str) -> Result<u32> {
        let name = ifname.to_owned();
        self.run(move || ifreq::index(&name))?
            .with_context(|| format!("index of {ifname} in netns {}", self.name))
    }

    /// Waits until `ifname` in this namespace is operational: up with a carrier, and its
    /// transmit queue activated. The kernel does the last two asynchronously after `link set
    /// up` (its linkwatch work, which waits for the RTNL lock): until then the interface
    /// drops what it sends, e.g. a first ARP request, which is retried only a second later.
    pub fn wait_link_operational(&self, ifname: &str, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            let out = self
                .command("ip")
                .args(["-o", "link", "show", "dev", ifname])
                .output()
                .with_context(|| format!("running ip link show {ifname}"))?;
            let line = String::from_utf8_lossy(&out.stdout);
            if out.status.success() && line.contains(" state UP ") && !line.contains(" qdisc noop ")
            {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!(
                    "{ifname} in netns {} not operational after {timeout:?}: {}",
                    self.name,
                    line.trim()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The MAC address of `ifname` inside this namespace.
    pub fn mac(&self, ifname: &str) -> Result<[u8; 6]> {
        let name = ifname.to_owned();
        self.run(move || ifreq::hwaddr(&name))?
            .with_context(|| format!("MAC of {ifname} in netns {}", self.name))
    }

    /// Turns transmit checksum offload of `ifname` on or off (what `ethtool -K <if> tx off`
    /// does; no ethtool binary is needed).
    ///
    /// With offload on, a veth hands over packets whose checksum is only partial; XDP programs
    /// on the receiving side then see (and must fix up) incomplete checksums.
    pub fn set_tx_checksum(&self, ifname: &str, on: bool) -> Result<()> {
        let name = ifname.to_owned();
        self.run(move || ifreq::set_tx_checksum(&name, on))?
            .with_context(|| format!("tx checksum offload of {ifname} in netns {}", self.name))
    }

    /// Whether transmit checksum offload of `ifname` is on.
    pub fn tx_checksum(&self, ifname: &str) -> Result<bool> {
        let name = ifname.to_owned();
        self.run(move || ifreq::tx_checksum(&name))?
            .with_context(|| format!("tx checksum offload of {ifname} in netns {}", self.name))
    }

    fn open(&self) -> Result<File> {
        File::open(self.path()).with_context(|| format!("opening netns {}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Errors are ignored: drop may run during a panic, and a leftover is swept later.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Deletes the namespace `name` that this process does not own (a leftover of a dead run).
pub(crate) fn delete_by_name(name: &str) -> Result<()> {
    run_ip(&["netns", "del", name])
}

/// Names of all named network namespaces.
pub(crate) fn list_names() -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        // No namespace was ever created on this machine.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).context(format!("listing {NETNS_DIR}")),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {NETNS_DIR}"))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

fn sysctl_path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

fn run_ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privileges::require_privileges;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Names unique to this process and test, so parallel tests never collide.
    fn test_name(tag: &str) -> String {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        format!(
            "kpt-{}-n{}-{tag}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        )
    }

    #[test]
    fn namespace_lives_until_drop() {
        if !require_privileges("netns::namespace_lives_until_drop") {
            return;
        }
        let ns = Netns::create(&test_name("life")).unwrap();
        let path = ns.path();
        assert!(path.exists());
        assert!(list_names().unwrap().contains(&ns.name().to_owned()));
        drop(ns);
        assert!(!path.exists());
    }

    #[test]
    fn run_sysctl_and_command_see_the_namespace() {
        if !require_privileges("netns::run_sysctl_and_command_see_the_namespace") {
            return;
        }
        let ns = Netns::create(&test_name("run")).unwrap();
        // A veth pair: the kernel may lack the dummy driver, veth is needed by the bed anyway.
        ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"])
            .unwrap();

        // Only the namespace has v0 (the root namespace never gets one from us).
        let index = ns.link_index("v0").unwrap();
        assert!(index > 1);
        assert!(ns.link_index("no-such-if").is_err());
        assert_eq!(ns.mac("lo").unwrap(), [0; 6]);
        assert_ne!(ns.mac("v0").unwrap(), [0; 6]);

        ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
        assert_eq!(ns.read_sysctl("net.ipv4.ip_forward").unwrap(), "1");
        ns.sysctl("net.ipv4.ip_local_port_range", "1024 65000")
            .unwrap();
        assert_eq!(
            ns.read_sysctl("net.ipv4.ip_local_port_range").unwrap(),
            "1024\t65000"
        );

        let out = ns
            .command("ip")
            .args(["-o", "link", "show", "v0"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("v0"));

        ns.ip_batch(&[
            "link set v0 up".into(),
            "addr add 198.18.77.1/24 dev v0".into(),
        ])
        .unwrap();
        assert!(
            ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v2"])
                .is_err()
        );
    }

    #[test]
    fn command_fails_for_a_deleted_namespace() {
        if !require_privileges("netns::command_fails_for_a_deleted_namespace") {
            return;
        }
        let ns = Netns::create(&test_name("gone")).unwrap();
        let name = ns.name().to_owned();
        drop(ns);
        let ghost = Netns { name };
        assert!(ghost.command("true").status().is_err());
        assert!(ghost.run(|| ()).is_err());
        // Dropping the ghost runs `ip netns del` on a missing name, which must be harmless.
    }
}
