//! The `iptables-save` format, read: tables, the chains each declares and its rules, with the
//! target each rule jumps to.

use anyhow::Result;

/// One table of `iptables-save` output.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SavedTable {
    pub name: String,
    /// Every chain declared, built-in and user-defined, in order.
    pub chains: Vec<String>,
    pub rules: Vec<Rule>,
}

/// One `-A CHAIN SPEC` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub chain: String,
    /// The rule after `-A CHAIN `, as saved (and as `-D CHAIN SPEC` takes it back).
    pub spec: String,
    /// The chain or target of its `-j`/`-g`, if any.
    pub target: Option<String>,
}

/// Reads `iptables-save` output (comments and counters ignored).
pub fn parse(text: &str) -> Result<Vec<SavedTable>> {
    let mut tables: Vec<SavedTable> = Vec::new();
    let mut open = false;
    for (number, line) in text.lines().enumerate() {
        let line = line.trim_end();
        let misplaced = || anyhow::anyhow!("iptables-save line {}: `{line}`", number + 1);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('*') {
            tables.push(SavedTable {
                name: name.to_owned(),
                ..SavedTable::default()
            });
            open = true;
            continue;
        }
        let table = tables.last_mut().filter(|_| open).ok_or_else(misplaced)?;
        if line == "COMMIT" {
            open = false;
        } else if let Some(declaration) = line.strip_prefix(':') {
            let name = declaration
                .split_whitespace()
                .next()
                .ok_or_else(misplaced)?;
            table.chains.push(name.to_owned());
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let (chain, spec) = rule.split_once(' ').unwrap_or((rule, ""));
            table.rules.push(Rule {
                chain: chain.to_owned(),
                spec: spec.to_owned(),
                target: jump_target(spec),
            });
        } else {
            return Err(misplaced());
        }
    }
    Ok(tables)
}

/// The target of a rule's `-j`/`-g`. The words are split as iptables-save quotes them, so a
/// comment mentioning `-j X` is not taken for a jump.
fn jump_target(spec: &str) -> Option<String> {
    let words = words(spec);
    words
        .iter()
        .position(|w| matches!(w.as_str(), "-j" | "--jump" | "-g" | "--goto"))
        .and_then(|at| words.get(at + 1).cloned())
}

/// The words of a rule as a shell would split them, which is how iptables-save quotes
/// (double quotes, a backslash escaping a quote or itself inside them); an unbalanced quote
/// gives no words, so no jump.
fn words(spec: &str) -> Vec<String> {
    shlex::split(spec).unwrap_or_default()
}

#[cfg(test)]
mod tests;
