//! Cutting a stopped process's connections to the API server.
//!
//! Why: a controller stopped with SIGSTOP keeps its watches open but reads none of them. The
//! API server goes on sending it every event until the HTTP/2 stream's window (4 MiB, as
//! client-go opens it) is spent; from then on each event of that resource waits, for every
//! watcher of it, until the API server gives up on the stopped one (up to 100 ms, its
//! dispatch budget) and ends its watch. In the benchmark's sustained churn (1,000
//! EndpointSlice changes a second, the controller manager stopped) that came about nine
//! seconds in, after about 4 MB sent to the controller manager: a proxy's watch then
//! received nothing for about 100 ms, while a packet capture of the control plane's
//! namespace showed etcd's events reaching the API server every 10 ms and `perf` the
//! machine mostly idle.
//! A stopped process with no connection holds no watch; continued, it connects again and
//! resumes its watches as after any broken connection.

use std::process::Output;

use anyhow::{Context, Result, bail};

use super::control_plane::APISERVER_PORT;
use crate::Netns;

/// Aborts every established TCP connection process `pid` holds to the API server in `ns`
/// (the kernel's SOCK_DESTROY, through `ss -K`, which resets it); returns how many.
pub fn cut_api_connections(ns: &Netns, pid: u32) -> Result<usize> {
    let held = connections_of(&list_api_connections(ns)?, pid);
    for (local, peer) in &held {
        let out = ss(
            ns,
            &[
                "-K",
                "-t",
                "-n",
                "-H",
                "state",
                "established",
                "src",
                local,
                "dst",
                peer,
            ],
        )?;
        if !out.status.success() {
            bail!(
                "ss -K {local} -> {peer}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    let left = connections_of(&list_api_connections(ns)?, pid);
    if !left.is_empty() {
        bail!(
            "process {pid} still holds {} connection(s) to the API server after ss -K \
             (a kernel without CONFIG_INET_DIAG_DESTROY?): {left:?}",
            left.len()
        );
    }
    Ok(held.len())
}

/// `ss`'s lines for the established TCP connections to the API server's port in `ns`, with
/// their processes.
fn list_api_connections(ns: &Netns) -> Result<String> {
    let port_filter = format!("dport = :{APISERVER_PORT}");
    let out = ss(
        ns,
        &["-t", "-n", "-p", "-H", "state", "established", &port_filter],
    )?;
    if !out.status.success() {
        bail!(
            "ss listing connections to the API server: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).context("ss printed something other than UTF-8")
}

fn ss(ns: &Netns, args: &[&str]) -> Result<Output> {
    ns.command("ss")
        .args(args)
        .output()
        .context("running ss (iproute2)")
}

/// The `(local, peer)` addresses of the connections in `listing` (lines of `ss -tnpH state
/// established`: receive and send queues, local and peer address, processes) that belong to
/// process `pid`.
fn connections_of(listing: &str, pid: u32) -> Vec<(String, String)> {
    let owner = format!("pid={pid},");
    listing
        .lines()
        .filter(|line| line.contains(&owner))
        .filter_map(|line| {
            let mut fields = line.split_whitespace().skip(2);
            Some((fields.next()?.to_owned(), fields.next()?.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_process_s_own_connections_are_picked() {
        let listing = "\
0      0          127.0.0.1:60636       127.0.0.1:6443  users:((\"kube-controller\",pid=4242,fd=9))
0      0              [::1]:44406           [::1]:6443  users:((\"kube-controller\",pid=4242,fd=12),(\"kube-controller\",pid=4242,fd=13))
0      0          127.0.0.1:60640       127.0.0.1:6443  users:((\"kube-apiserver\",pid=42,fd=30))
0      0       198.18.199.1:43878    198.18.199.2:6443  users:((\"kproxy\",pid=42420,fd=7))
";
        assert_eq!(
            connections_of(listing, 4242),
            vec![
                ("127.0.0.1:60636".to_owned(), "127.0.0.1:6443".to_owned()),
                ("[::1]:44406".to_owned(), "[::1]:6443".to_owned()),
            ]
        );
        // pid=42 is a prefix of 4242 and 42420: matched whole, never by prefix.
        assert_eq!(
            connections_of(listing, 42),
            vec![("127.0.0.1:60640".to_owned(), "127.0.0.1:6443".to_owned())]
        );
        assert!(connections_of(listing, 7).is_empty());
        assert!(connections_of("", 4242).is_empty());
    }
}
