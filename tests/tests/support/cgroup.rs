//! Clients of the who-am-I servers as processes of their own inside a test's cgroup
//! (`kproxy_testbed::cgroup`), for the socket-level load balancing tests: kproxy's cgroup
//! programs serve only sockets of that cgroup, and a cgroup holds processes, not threads.

use std::{
    io::ErrorKind,
    net::SocketAddr,
    ops::Deref,
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use kproxy_testbed::{FamilyAddr, Netns, Reply, cgroup::Cgroup};

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

/// A cgroup of the test's own, with its clients.
pub struct TestCgroup(Cgroup);

impl Deref for TestCgroup {
    type Target = Cgroup;

    fn deref(&self) -> &Cgroup {
        &self.0
    }
}

impl TestCgroup {
    pub fn new() -> Self {
        Self(Cgroup::create("kpt-sock").expect("a cgroup of the test's own"))
    }

    /// `--cgroup-root` for the agent.
    pub fn agent_arg(&self) -> String {
        self.path().display().to_string()
    }

    /// The socket client in `ns` and this cgroup, running `mode` against `target`.
    pub fn spawn_client(&self, ns: &Netns, mode: &str, target: SocketAddr, count: usize) -> Child {
        let mut cmd: Command = ns.command(socket_client_bin());
        cmd.args([mode, &target.to_string(), &count.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.put_child(&mut cmd).expect("the client's cgroup");
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

/// The answers in the client's output.
pub fn parse_lines<A: FamilyAddr>(stdout: &str) -> Vec<Seen<A>> {
    stdout.lines().map(parse_line).collect()
}

/// One answer line of the client.
pub fn parse_line<A: FamilyAddr>(line: &str) -> Seen<A> {
    let (answer, seen) = line
        .trim_end()
        .split_once("\tseen=")
        .unwrap_or_else(|| panic!("not a client line: {line:?}"));
    Seen {
        reply: Reply::parse(answer).expect("a who-am-I answer"),
        seen: seen.parse().expect("an address"),
    }
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
        "ConnectionAborted" => ErrorKind::ConnectionAborted,
        _ => ErrorKind::Other,
    })
}
