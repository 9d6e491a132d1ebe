//! `kproxy cleanup --kube-proxy-leftovers`: removes what kube-proxy, in any of its modes,
//! leaves on a node once it is stopped, as `kube-proxy --cleanup` does (v1.37: the
//! `CleanupLeftovers` of pkg/proxy/iptables, nftables and ipvs), and nothing else; kproxy's
//! own pinned state is not touched. It works in the network namespace it runs in: the
//! node's, for a host-network init container.
//!
//! Every program it drives is looked for first, so a missing one changes nothing. Then every
//! part runs even when another fails (as kube-proxy's cleanup does), each line of what was
//! removed is printed as it goes, and the run fails at the end naming every failure. A second
//! run finds nothing and succeeds.

mod ipset;
mod iptables;
mod iptables_plan;
mod iptables_save;
mod ipvs;
mod link;
mod nftables;
mod tools;

use std::path::Path;

use anyhow::{Result, bail};

use self::{iptables::Family, tools::Needed};

/// What a run removed and where it failed; what it does is printed as it goes.
#[derive(Default)]
pub struct Outcome {
    removed: usize,
    errors: Vec<anyhow::Error>,
}

impl Outcome {
    fn removed(&mut self, count: usize, what: &str) {
        self.removed += count;
        println!("{what}");
    }

    fn failed(&mut self, error: anyhow::Error) {
        self.errors.push(error);
    }

    fn finish(self) -> Result<()> {
        if self.removed == 0 {
            println!("kube-proxy leftovers: none found, nothing removed");
        } else {
            println!("kube-proxy leftovers: removed {} objects", self.removed);
        }
        if !self.errors.is_empty() {
            let failures: Vec<String> = self.errors.iter().map(|e| format!("{e:#}")).collect();
            bail!(
                "{} parts of kube-proxy's state could not be removed:\n{}",
                failures.len(),
                failures.join("\n")
            );
        }
        Ok(())
    }
}

/// Prints what was found (or not) where nothing was removed.
fn note(what: &str) {
    println!("{what}");
}

/// Without IPv6 in the kernel there are no ip6tables rules, and its tools would fail.
fn ipv6_on() -> bool {
    Path::new("/proc/sys/net/ipv6").exists()
}

pub fn run() -> Result<()> {
    let families: Vec<Family> = Family::ALL
        .into_iter()
        .filter(|f| *f == Family::V4 || ipv6_on())
        .collect();
    let mut missing = Vec::new();
    let mut backends = Vec::new();
    for family in families {
        match iptables::backends(family) {
            Ok(found) => backends.extend(found),
            Err(absent) => missing.extend(absent),
        }
    }
    let mut needed = vec![Needed::new("nft", "nftables")];
    if ipset::in_kernel() {
        needed.push(Needed::new("ipset", "ipset"));
    }
    if ipvs::in_kernel() {
        needed.push(Needed::new("ipvsadm", "ipvsadm"));
    }
    missing.extend(tools::missing(needed));
    tools::require_all(&missing)?;

    let mut outcome = Outcome::default();
    if !ipv6_on() {
        note("ip6tables: no IPv6 in this kernel");
    }
    for backend in &backends {
        iptables::clean(backend, &mut outcome);
    }
    nftables::clean(&mut outcome);
    ipvs::clean(&mut outcome);
    // After the iptables chains: a set a rule still matches on cannot be destroyed.
    ipset::clean(&mut outcome);
    outcome.finish()
}
