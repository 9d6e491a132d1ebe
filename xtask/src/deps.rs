//! System packages the tasks need, installed with apt-get when missing (CI starts from a
//! fresh Debian machine; nothing may be installed by hand).

use std::process::Command;

use anyhow::{Context, Result};

use crate::run_checked;

/// (a command on PATH, or an absolute path of a file, that must exist; the Debian package
/// providing it)
pub type Requirement = (&'static str, &'static str);

/// What the tests and the demo need.
pub const TEST_TOOLS: &[Requirement] = &[
    ("ip", "iproute2"),
    // The control plane's certificates (kproxy_testbed::kubernetes::pki).
    ("openssl", "openssl"),
    // `kproxy cleanup --kube-proxy-leftovers` drives these, and its test reads the state the
    // real kube-proxy writes with them (tests/tests/kube_proxy_leftovers.rs): iptables brings
    // the nf_tables and legacy save/restore programs of both families.
    ("iptables-nft-save", "iptables"),
    ("iptables-legacy-save", "iptables"),
    ("nft", "nftables"),
    ("ipset", "ipset"),
];

fn have(command: &str) -> bool {
    if command.starts_with('/') {
        return std::path::Path::new(command).exists();
    }
    Command::new("sh")
        .args(["-c", &format!("command -v {command}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Installs the packages of missing commands.
pub fn ensure(requirements: &[Requirement]) -> Result<()> {
    let missing: Vec<&str> = requirements
        .iter()
        .filter(|(cmd, _)| !have(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    let apt = |args: &[&str]| {
        run_checked(
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
        .context("apt-get (kproxy's tasks need root on Debian or Ubuntu)")
    };
    apt(&["update", "-q"])?;
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(missing);
    apt(&install)
}
