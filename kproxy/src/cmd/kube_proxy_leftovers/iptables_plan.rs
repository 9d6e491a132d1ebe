//! What of an iptables table is kube-proxy's, and the `iptables-restore --noflush` input
//! that removes it: the chains its iptables mode writes and the ones its IPVS mode adds, and
//! the jumps it put into the built-in chains, as kube-proxy v1.37's `CleanupLeftovers` finds
//! them (pkg/proxy/iptables/cleanup.go, pkg/proxy/ipvs/cleanup.go).
//!
//! Like kube-proxy's cleanup, this leaves kubelet's chains alone: `KUBE-FIREWALL` (which
//! kube-proxy also writes, as a duplicate of kubelet's), `KUBE-KUBELET-CANARY`,
//! `KUBE-MARK-DROP`. Any other rule stays as it is.

use std::fmt::Write as _;

use anyhow::{Result, bail};

use super::iptables_save::{Rule, SavedTable};

/// kube-proxy's chains with fixed names, by table: its iptables mode's
/// (pkg/proxy/iptables/proxier.go) and its IPVS mode's (pkg/proxy/ipvs/proxier.go).
const NAT_CHAINS: &[&str] = &[
    "KUBE-SERVICES",
    "KUBE-NODEPORTS",
    "KUBE-POSTROUTING",
    "KUBE-MARK-MASQ",
    "KUBE-PROXY-CANARY",
    // IPVS mode.
    "KUBE-NODE-PORT",
    "KUBE-LOAD-BALANCER",
];
const FILTER_CHAINS: &[&str] = &[
    "KUBE-SERVICES",
    "KUBE-EXTERNAL-SERVICES",
    "KUBE-FORWARD",
    "KUBE-NODEPORTS",
    "KUBE-PROXY-FIREWALL",
    "KUBE-PROXY-CANARY",
    // IPVS mode.
    "KUBE-NODE-PORT",
    "KUBE-SOURCE-RANGES-FIREWALL",
    "KUBE-IPVS-FILTER",
    "KUBE-IPVS-OUT-FILTER",
];
/// Only the canary that tells kube-proxy a table was flushed.
const MANGLE_CHAINS: &[&str] = &["KUBE-PROXY-CANARY"];
/// The per-Service and per-endpoint chains of the iptables mode, all in the nat table
/// (`isServiceChainName`).
const SERVICE_CHAIN_PREFIXES: &[&str] = &[
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-SEP-",
    "KUBE-FW-",
    "KUBE-EXT-",
];
/// Where kube-proxy puts its jumps; a jump from anywhere else is not kube-proxy's.
const BUILT_IN_CHAINS: &[&str] = &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

fn is_kube_proxy_chain(table: &str, chain: &str) -> bool {
    match table {
        "nat" => {
            NAT_CHAINS.contains(&chain)
                || SERVICE_CHAIN_PREFIXES.iter().any(|p| chain.starts_with(p))
        }
        "filter" => FILTER_CHAINS.contains(&chain),
        "mangle" => MANGLE_CHAINS.contains(&chain),
        _ => false,
    }
}

/// What to remove from one table.
#[derive(Debug, PartialEq, Eq)]
pub struct TableCleanup {
    pub table: String,
    /// kube-proxy's rules in built-in chains that jump to its chains.
    pub jumps: Vec<Rule>,
    /// kube-proxy's chains, flushed and deleted.
    pub chains: Vec<String>,
}

/// What to remove from `table`; `None` when nothing of kube-proxy's is there. Fails, before
/// anything changes, when a rule that is not kube-proxy's jumps to one of its chains: the
/// chain could not be deleted, and that rule is not ours to remove.
pub fn plan(table: &SavedTable) -> Result<Option<TableCleanup>> {
    let chains: Vec<String> = table
        .chains
        .iter()
        .filter(|c| is_kube_proxy_chain(&table.name, c))
        .cloned()
        .collect();
    if chains.is_empty() {
        return Ok(None);
    }
    let mut jumps = Vec::new();
    for rule in &table.rules {
        let into_ours = rule.target.as_ref().is_some_and(|t| chains.contains(t));
        if !into_ours || chains.contains(&rule.chain) {
            continue;
        }
        if !BUILT_IN_CHAINS.contains(&rule.chain.as_str()) {
            bail!(
                "table {}: `-A {} {}` is not kube-proxy's rule but jumps to its chain; remove or \
                 change it and run the cleanup again (nothing was changed in this table)",
                table.name,
                rule.chain,
                rule.spec
            );
        }
        jumps.push(rule.clone());
    }
    Ok(Some(TableCleanup {
        table: table.name.clone(),
        jumps,
        chains,
    }))
}

impl TableCleanup {
    /// `iptables-restore --noflush` input: declaring a chain flushes it, then the jumps go and
    /// the chains are deleted, in one transaction.
    pub fn restore_input(&self) -> String {
        let mut lines = vec![format!("*{}", self.table)];
        lines.extend(self.chains.iter().map(|c| format!(":{c} - [0:0]")));
        lines.extend(
            self.jumps
                .iter()
                .map(|r| format!("-D {} {}", r.chain, r.spec)),
        );
        lines.extend(self.chains.iter().map(|c| format!("-X {c}")));
        lines.push("COMMIT".into());
        lines.join("\n") + "\n"
    }

    pub fn count(&self) -> usize {
        self.jumps.len() + self.chains.len()
    }

    /// One line for the operator: the chains (the fixed ones by name, the per-Service ones
    /// by count: a large cluster has tens of thousands) and the jumps to them.
    pub fn describe(&self) -> String {
        let mut text = format!("{}: deleted {}", self.table, self.chains_described());
        if !self.jumps.is_empty() {
            let jumps: Vec<String> = self
                .jumps
                .iter()
                .map(|r| format!("{} -> {}", r.chain, r.target.as_deref().unwrap_or("?")))
                .collect();
            let noun = if jumps.len() == 1 { "jump" } else { "jumps" };
            let _ = write!(
                text,
                " and {} {noun} from built-in chains ({})",
                jumps.len(),
                jumps.join(", ")
            );
        }
        text
    }

    fn chains_described(&self) -> String {
        if let [only] = &self.chains[..] {
            return format!("chain {only}");
        }
        let (per_service, named): (Vec<&String>, Vec<&String>) = self
            .chains
            .iter()
            .partition(|c| SERVICE_CHAIN_PREFIXES.iter().any(|p| c.starts_with(p)));
        let mut shown: Vec<String> = named.into_iter().cloned().collect();
        if !per_service.is_empty() {
            shown.push(format!(
                "{} per-Service chains KUBE-SVC-/SVL-/SEP-/FW-/EXT-*",
                per_service.len()
            ));
        }
        format!("{} chains ({})", self.chains.len(), shown.join(", "))
    }
}

#[cfg(test)]
mod tests;
