//! The ip sets of kube-proxy's IPVS mode, destroyed by name as kube-proxy v1.37's
//! `CleanupLeftovers` does (`ipsetInfo`, pkg/proxy/ipvs/proxier.go), plus their IPv6 twins
//! (`KUBE-6-...`, which kube-proxy's own cleanup misses). Only these names: other KUBE-* sets
//! belong to others (kube-router's network policies name theirs `KUBE-SRC-...`,
//! `KUBE-DST-...`). Run after the iptables cleanup: a set a rule still matches on cannot be
//! destroyed.

use std::path::Path;

use super::{Outcome, note, tools};

/// `ipsetInfo`'s names (pkg/proxy/ipvs/ipset.go).
const SETS: &[&str] = &[
    "KUBE-LOOP-BACK",
    "KUBE-CLUSTER-IP",
    "KUBE-EXTERNAL-IP",
    "KUBE-EXTERNAL-IP-LOCAL",
    "KUBE-LOAD-BALANCER",
    "KUBE-LOAD-BALANCER-FW",
    "KUBE-LOAD-BALANCER-LOCAL",
    "KUBE-LOAD-BALANCER-SOURCE-IP",
    "KUBE-LOAD-BALANCER-SOURCE-CIDR",
    "KUBE-NODE-PORT-TCP",
    "KUBE-NODE-PORT-LOCAL-TCP",
    "KUBE-NODE-PORT-UDP",
    "KUBE-NODE-PORT-LOCAL-UDP",
    "KUBE-NODE-PORT-SCTP-HASH",
    "KUBE-NODE-PORT-LOCAL-SCTP-HASH",
    "KUBE-HEALTH-CHECK-NODE-PORT",
    "KUBE-IPVS-IPS",
];
/// The longest name an ip set may have; kube-proxy cuts its IPv6 names to it.
const MAX_NAME: usize = 31;
/// Present when the kernel has ip sets (loaded or built in); without them there are none.
pub const KERNEL_MODULE: &str = "/sys/module/ip_set";

/// Whether the kernel can hold ip sets, so the `ipset` tool is needed.
pub fn in_kernel() -> bool {
    Path::new(KERNEL_MODULE).exists()
}

/// Whether `name` is one of kube-proxy's sets: an IPVS set or its IPv6 twin (`NewIPSet`
/// renames `KUBE-X` to `KUBE-6-X`, cut to 31 characters).
pub fn is_kube_proxy_set(name: &str) -> bool {
    SETS.iter().any(|set| {
        let v6 = set.replacen("KUBE-", "KUBE-6-", 1);
        name == *set || name == &v6[..v6.len().min(MAX_NAME)]
    })
}

pub fn clean(outcome: &mut Outcome) {
    if !in_kernel() {
        note("ipset: no ip sets in this kernel");
        return;
    }
    let sets: Vec<String> = match tools::output("ipset", &["list", "-n"]) {
        Ok(listed) => listed
            .lines()
            .map(str::trim)
            .filter(|name| is_kube_proxy_set(name))
            .map(str::to_owned)
            .collect(),
        Err(e) => return outcome.failed(e.context("ipset: listing the sets")),
    };
    if sets.is_empty() {
        note("ipset: no sets of kube-proxy's");
        return;
    }
    let mut destroyed = Vec::new();
    for set in sets {
        match tools::output("ipset", &["destroy", &set]) {
            Ok(_) => destroyed.push(set),
            Err(e) => outcome.failed(e.context(format!("ipset: set {set}"))),
        }
    }
    if !destroyed.is_empty() {
        outcome.removed(
            destroyed.len(),
            &format!("ipset: destroyed {}", destroyed.join(", ")),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_proxys_sets_and_their_ipv6_twins_and_no_others() {
        for ours in [
            "KUBE-CLUSTER-IP",
            "KUBE-6-CLUSTER-IP",
            "KUBE-NODE-PORT-LOCAL-SCTP-HASH",
            // KUBE-6-LOAD-BALANCER-SOURCE-CIDR is 32 characters: cut as kube-proxy cuts it.
            "KUBE-6-LOAD-BALANCER-SOURCE-CID",
        ] {
            assert!(is_kube_proxy_set(ours), "{ours}");
        }
        for theirs in [
            "KUBE-SRC-ABCDEF",
            "KUBE-DST-ABCDEF",
            "KUBE-6-LOAD-BALANCER-SOURCE-CIDR",
            "KUBE-CLUSTER-IP-2",
            "cali40all-ipam-pools",
            "",
        ] {
            assert!(!is_kube_proxy_set(theirs), "{theirs}");
        }
    }
}
