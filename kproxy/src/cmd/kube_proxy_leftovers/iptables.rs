//! kube-proxy's iptables and ip6tables state removed from every backend installed (nf_tables
//! and legacy): each table read with `iptables-save`, and what of it is kube-proxy's
//! ([`super::iptables_plan`]) removed with one `iptables-restore --noflush` transaction, so a
//! table is cleaned whole or not at all.

use std::path::Path;

use super::{
    Outcome, iptables_plan, iptables_save, note,
    tools::{self, Needed},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    fn command(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    /// Present once the kernel's legacy xtables core is there (loaded or built in): without
    /// it no legacy table can hold a rule, so its tools are not run.
    fn legacy_tables(self) -> &'static str {
        match self {
            Family::V4 => "/proc/net/ip_tables_names",
            Family::V6 => "/proc/net/ip6_tables_names",
        }
    }
}

/// One pair of save/restore programs: a backend of one family.
#[derive(Clone, Debug)]
pub struct Backend {
    save: String,
    restore: String,
}

impl Backend {
    fn named(name: &str) -> Self {
        Self {
            save: format!("{name}-save"),
            restore: format!("{name}-restore"),
        }
    }

    /// The backend's name as the output shows it (`iptables-nft`, `ip6tables-legacy`, ...).
    pub fn label(&self) -> &str {
        self.save.strip_suffix("-save").unwrap_or(&self.save)
    }
}

/// The backends of `family` to clean: both the nf_tables one and the legacy one where their
/// tools are installed (kube-proxy's image picks either, whatever this image's `iptables`
/// is), else the plain `iptables-save`/`-restore`. `Err` lists what is missing.
pub fn backends(family: Family) -> std::result::Result<Vec<Backend>, Vec<Needed>> {
    let name = family.command();
    let mut found = Vec::new();
    for variant in ["nft", "legacy"] {
        let backend = Backend::named(&format!("{name}-{variant}"));
        let installed =
            tools::find(&backend.save).is_some() && tools::find(&backend.restore).is_some();
        if installed && (variant == "nft" || Path::new(family.legacy_tables()).exists()) {
            found.push(backend);
        }
    }
    if found.is_empty() {
        let plain = Backend::named(name);
        let missing = tools::missing([
            Needed::new(&plain.save, "iptables"),
            Needed::new(&plain.restore, "iptables"),
        ]);
        if !missing.is_empty() {
            return Err(missing);
        }
        found.push(plain);
    }
    Ok(found)
}

/// Removes kube-proxy's chains and jumps from every table `backend` has.
pub fn clean(backend: &Backend, outcome: &mut Outcome) {
    let label = backend.label();
    let saved = match tools::output(&backend.save, &[]).and_then(|text| iptables_save::parse(&text))
    {
        Ok(tables) => tables,
        Err(e) => return outcome.failed(e.context(format!("{label}: reading the rules"))),
    };
    let mut found = false;
    for table in &saved {
        let cleanup = match iptables_plan::plan(table) {
            Ok(None) => continue,
            Ok(Some(cleanup)) => cleanup,
            Err(e) => {
                found = true;
                outcome.failed(e.context(label.to_owned()));
                continue;
            }
        };
        found = true;
        // -w 5: wait for the xtables lock as kube-proxy does (iptables-nft ignores it).
        let restored = tools::feed(
            &backend.restore,
            &["--noflush", "-w", "5"],
            &cleanup.restore_input(),
        );
        match restored {
            Ok(_) => outcome.removed(cleanup.count(), &format!("{label} {}", cleanup.describe())),
            Err(e) => outcome.failed(e.context(format!("{label} table {}", table.name))),
        }
    }
    if !found {
        note(&format!("{label}: no chains of kube-proxy's"));
    }
}
