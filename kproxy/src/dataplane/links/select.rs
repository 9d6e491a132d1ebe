//! Which interfaces kproxy serves and how, decided from names alone: `--attach`/`--xdp`
//! patterns, the pod-interface matcher, and the plan that turns the namespace's current
//! interfaces and what is attached now into attachments and detachments. Nothing here
//! touches the kernel.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    sync::Arc,
};

use super::super::attach::LOOPBACK;

/// The longest interface name Linux accepts (`IFNAMSIZ` - 1).
const IFNAME_MAX: usize = 15;

/// An interface name, or a shell-style pattern of names: `*` stands for any run of
/// characters (none included), `?` for exactly one. `veth*` selects `veth0a1b`, `cali*`
/// Calico's pod interfaces, `lxc*` Cilium's; `eth0` only `eth0`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfacePattern(String);

impl IfacePattern {
    /// Checks `text` as a name or pattern (clap's value parser for `--attach`/`--xdp`).
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("an empty interface name".into());
        }
        if let Some(c) = text
            .chars()
            .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "{text:?}: interface names cannot contain {c:?} (patterns use * and ?)"
            ));
        }
        let pattern = Self(text.to_owned());
        // Wildcards may stand for nothing, so only the literal characters must fit.
        let literal = text.chars().filter(|c| *c != '*').count();
        if literal > IFNAME_MAX {
            return Err(format!(
                "{text:?} can never match: interface names have at most {IFNAME_MAX} characters"
            ));
        }
        Ok(pattern)
    }

    /// Whether `name` is selected.
    pub fn matches(&self, name: &str) -> bool {
        let pattern: Vec<char> = self.0.chars().collect();
        let name: Vec<char> = name.chars().collect();
        wildcard_match(&pattern, &name)
    }

    /// Whether the pattern names one interface (no wildcard).
    pub fn is_literal(&self) -> bool {
        !self.0.contains(['*', '?'])
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IfacePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `*` and `?` matching, greedy with one backtrack point (the last `*`): linear in practice,
/// `O(pattern × name)` at worst, with names of at most 15 characters.
fn wildcard_match(pattern: &[char], name: &[char]) -> bool {
    let (mut p, mut n) = (0, 0);
    // Where the last `*` was and the position in `name` it has swallowed up to.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(c) if *c == '?' || *c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                // Let the last `*` take one more character and try again after it.
                Some((sp, sn)) => {
                    star = Some((sp, sn + 1));
                    p = sp + 1;
                    n = sn + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

/// Any of several patterns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IfacePatterns(pub Vec<IfacePattern>);

impl IfacePatterns {
    pub fn matches(&self, name: &str) -> bool {
        self.0.iter().any(|p| p.matches(name))
    }
}

/// Which interfaces lead to the node's pods, for local-traffic detection by interface
/// (kube-proxy's `--detect-local-mode`): kproxy marks the interfaces it serves that match
/// with `IFACE_F_POD`.
///
/// - InterfaceNamePrefix (`--pod-interface-name-prefix veth`): [`PodInterfaces::name_prefix`];
///   packets from a pod enter the node through its own veth, which kproxy serves when
///   `--attach` selects it (e.g. `--attach 'veth*'`).
/// - BridgeInterface (`--pod-bridge-interface cbr0`): [`PodInterfaces::bridge`]. kube-proxy
///   matches packets whose input interface is the bridge. Here the same holds: pods on a
///   bridge hand their packets to the node through the bridge device (their veths are only
///   its ports, and the stack sees the bridge as the input interface), so the bridge itself
///   must be selected by `--attach` (e.g. `--attach eth0,cbr0`); it then gets the TC
///   programs and `IFACE_F_POD`.
#[derive(Clone)]
pub struct PodInterfaces(Arc<dyn Fn(&str) -> bool + Send + Sync>);

impl PodInterfaces {
    /// Any matcher of interface names.
    pub fn new(matches: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        Self(Arc::new(matches))
    }

    /// Interfaces whose name starts with `prefix` (InterfaceNamePrefix).
    pub fn name_prefix(prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        Self::new(move |name| name.starts_with(&prefix))
    }

    /// The bridge named `bridge` (BridgeInterface).
    pub fn bridge(bridge: impl Into<String>) -> Self {
        let bridge = bridge.into();
        Self::new(move |name| name == bridge)
    }

    pub fn matches(&self, name: &str) -> bool {
        (self.0)(name)
    }
}

impl fmt::Debug for PodInterfaces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PodInterfaces(..)")
    }
}

/// Which of kproxy's TC programs an interface gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tc {
    Off,
    /// Ingress only: `lo`, for the replies of backends on the node's own addresses.
    Ingress,
    /// Ingress and egress: the interfaces `--attach` selects.
    IngressEgress,
}

/// What kproxy runs on one interface. XDP interfaces may get the TC ingress program as well,
/// decided when attaching (see `veth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Role {
    pub tc: Tc,
    pub xdp: bool,
    /// Marked `IFACE_F_POD`.
    pub pod: bool,
}

/// The interfaces kproxy serves: `--attach` (TC) and `--xdp` patterns, and which of them
/// lead to pods.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub tc: IfacePatterns,
    pub xdp: IfacePatterns,
    pub pod: Option<PodInterfaces>,
}

impl Selection {
    /// What kproxy runs on the interface called `name`, if anything. `lo` always gets the TC
    /// ingress program (unless a pattern selects it for more).
    pub fn role(&self, name: &str) -> Option<Role> {
        let xdp = self.xdp.matches(name);
        let tc = if self.tc.matches(name) {
            Tc::IngressEgress
        } else if name == LOOPBACK && !xdp {
            Tc::Ingress
        } else {
            Tc::Off
        };
        if tc == Tc::Off && !xdp {
            return None;
        }
        let pod = self.pod.as_ref().is_some_and(|p| p.matches(name));
        Some(Role { tc, xdp, pod })
    }

    /// Patterns of `--attach` and `--xdp` that match none of `names` (worth a warning at
    /// start: a typo, or interfaces that do not exist yet).
    pub fn unmatched<'a>(&'a self, names: &[&str]) -> Vec<&'a IfacePattern> {
        self.tc
            .0
            .iter()
            .chain(&self.xdp.0)
            .filter(|p| !names.iter().any(|n| p.matches(n)))
            .collect()
    }
}

/// An interface of the node's network namespace: its index and its name. A deleted and
/// recreated interface has a new index, so it is another `Link`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Link {
    pub index: u32,
    pub name: String,
}

impl Link {
    pub fn new(index: u32, name: impl Into<String>) -> Self {
        Self {
            index,
            name: name.into(),
        }
    }
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (index {})", self.name, self.index)
    }
}

/// Why kproxy leaves an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leaving {
    /// Deleted, or moved to another network namespace.
    Vanished,
    /// Its index now has another name; the new name is decided on its own.
    Renamed,
    /// Still there, but no longer selected.
    Unselected,
}

impl Leaving {
    pub const fn label(self) -> &'static str {
        match self {
            Self::Vanished => "vanished",
            Self::Renamed => "renamed",
            Self::Unselected => "no longer selected",
        }
    }
}

/// What to change so that kproxy serves exactly the selected interfaces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Done first: a renamed interface leaves under its old name before it is attached under
    /// its new one.
    pub detach: Vec<(Link, Leaving)>,
    pub attach: Vec<(Link, Role)>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.detach.is_empty() && self.attach.is_empty()
    }
}

/// Compares the namespace's interfaces (`links`, index → name) with what is served now
/// (`served`, index → name and role). `held_back` are interfaces whose last attachment
/// failed: they are not tried again until the caller clears them (at the next resync).
pub fn plan(
    links: &BTreeMap<u32, String>,
    served: &BTreeMap<u32, (String, Role)>,
    held_back: &BTreeSet<Link>,
    selection: &Selection,
) -> Plan {
    let mut plan = Plan::default();
    for (&index, (name, role)) in served {
        let leaving = match links.get(&index) {
            None => Some(Leaving::Vanished),
            Some(now) if now != name => Some(Leaving::Renamed),
            Some(_) if selection.role(name) != Some(*role) => Some(Leaving::Unselected),
            Some(_) => None,
        };
        if let Some(leaving) = leaving {
            plan.detach.push((Link::new(index, name.clone()), leaving));
        }
    }
    for (&index, name) in links {
        let kept = served.get(&index).is_some_and(|(served_name, role)| {
            served_name == name && selection.role(name) == Some(*role)
        });
        if kept {
            continue;
        }
        let link = Link::new(index, name.clone());
        if held_back.contains(&link) {
            continue;
        }
        if let Some(role) = selection.role(name) {
            plan.attach.push((link, role));
        }
    }
    plan
}

#[cfg(test)]
mod tests;
