//! kube-proxy's nftables mode: its tables `ip kube-proxy` and `ip6 kube-proxy`, each
//! deleted whole, as kube-proxy v1.37's `CleanupLeftovers` does
//! (pkg/proxy/nftables/cleanup.go). Every other table stays, among them iptables-nft's and a
//! `kube-proxy` table of another family, which kube-proxy never makes.

use super::{Outcome, note, tools};

/// kube-proxy's table name (`kubeProxyTable`).
const TABLE: &str = "kube-proxy";
/// The families kube-proxy makes its table in.
const FAMILIES: &[&str] = &["ip", "ip6"];

/// The families of kube-proxy's tables in `nft list tables` output (`table ip kube-proxy`).
pub fn kube_proxy_tables(listed: &str) -> Vec<String> {
    listed
        .lines()
        .filter_map(
            |line| match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["table", family, TABLE] if FAMILIES.contains(&family) => Some(family.to_owned()),
                _ => None,
            },
        )
        .collect()
}

pub fn clean(outcome: &mut Outcome) {
    let families = match tools::output("nft", &["list", "tables"]) {
        Ok(listed) => kube_proxy_tables(&listed),
        Err(e) => return outcome.failed(e.context("nftables: listing the tables")),
    };
    if families.is_empty() {
        note("nftables: no table ip/ip6 kube-proxy");
    }
    for family in families {
        match tools::output("nft", &["delete", "table", &family, TABLE]) {
            Ok(_) => outcome.removed(1, &format!("nftables: deleted table {family} {TABLE}")),
            Err(e) => outcome.failed(e.context(format!("nftables: table {family} {TABLE}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_ip_and_ip6_kube_proxy_tables_are_kube_proxys() {
        let listed = "table ip nat\ntable ip filter\ntable ip kube-proxy\ntable inet kube-proxy\n\
                      table ip6 kube-proxy\ntable ip kube-proxy-sentinel\ntable ip6 nat\n";
        assert_eq!(kube_proxy_tables(listed), ["ip", "ip6"]);
        assert!(kube_proxy_tables("").is_empty());
    }
}
