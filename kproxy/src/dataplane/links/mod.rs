//! Keeps kproxy attached to the interfaces `--attach`/`--xdp` select while pods come and
//! go: a full dump of the namespace's interfaces at start and every `RESYNC`, and rtnetlink
//! notifications in between, so a new interface gets the programs within milliseconds and a
//! vanished one leaves no pinned link or `KP_IFACES` entry behind.

pub mod netlink;
pub mod select;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    time::Duration,
};

use anyhow::{Context, Result};
use aya::Ebpf;
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};

use self::{
    netlink::{LinkEvent, LinkEvents},
    select::{Leaving, Link, Role, Selection},
};
use super::{
    ahead::LinkedAhead,
    attach::{AttachError, Attached, Hook, Hooks, Served},
};
use crate::metrics::{OperationLabel, gauge};

/// How often the whole list of interfaces is read again, whatever the notifications said: a
/// safety net for lost notifications, and when interfaces that failed are tried again.
pub const RESYNC: Duration = Duration::from_secs(10);

/// After the notification socket fails (not an overflow), wait this long before reading it
/// again; the resyncs go on meanwhile.
const SOCKET_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// The metrics the watcher keeps.
#[derive(Clone, Debug, Default)]
pub struct LinkMetrics {
    /// Interfaces kproxy runs on now.
    pub attached: Gauge,
    /// Failures to attach to an interface or to detach from it, by operation.
    pub errors: Family<OperationLabel, Counter>,
}

/// One interface kproxy serves.
#[derive(Clone, Debug)]
struct Entry {
    name: String,
    role: Role,
    hooks: Vec<(Hook, Attached)>,
}

/// Watches the interfaces of the agent's network namespace and attaches or detaches.
pub struct LinkWatcher {
    hooks: Hooks,
    selection: Selection,
    events: LinkEvents,
    /// The namespace's interfaces as last seen, index → name.
    links: BTreeMap<u32, String>,
    /// What kproxy serves, by index.
    served: BTreeMap<u32, Entry>,
    /// Interfaces whose attachment failed, left alone until the next resync.
    held_back: BTreeSet<Link>,
    metrics: LinkMetrics,
}

impl LinkWatcher {
    /// Subscribes to link notifications, then attaches to every selected interface there is
    /// (adopting the pinned links of a previous agent) and removes what a previous agent
    /// left for interfaces that are gone or no longer selected. Interfaces that fail are
    /// logged and counted; only a failure to list the interfaces at all is an error.
    pub fn start(
        ebpf: Ebpf,
        pin_dir: &Path,
        selection: Selection,
        metrics: LinkMetrics,
        ahead: LinkedAhead,
    ) -> Result<Self> {
        // Exported at zero from the start, so a rate over them needs no first failure.
        for operation in ["attach", "detach"] {
            let _ = metrics.errors.get_or_create(&OperationLabel {
                operation: operation.into(),
            });
        }
        // Subscribed before the first dump, so no change between the two is missed.
        let events = LinkEvents::subscribe().context("subscribing to link notifications")?;
        let mut watcher = Self {
            hooks: Hooks::new(ebpf, pin_dir, ahead)?,
            selection,
            events,
            links: BTreeMap::new(),
            served: BTreeMap::new(),
            held_back: BTreeSet::new(),
            metrics,
        };
        watcher.resync()?;
        let names: Vec<&str> = watcher.links.values().map(String::as_str).collect();
        for pattern in watcher.selection.unmatched(&names) {
            tracing::warn!(
                %pattern,
                "no interface matches; kproxy attaches as soon as one appears"
            );
        }
        Ok(watcher)
    }

    /// Follows notifications, with a full resync every `RESYNC`, until the task is dropped.
    pub async fn run(mut self) {
        let mut resync = tokio::time::interval_at(tokio::time::Instant::now() + RESYNC, RESYNC);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                notifications = self.events.next() => match notifications {
                    Ok(n) if n.lost => {
                        tracing::warn!("link notifications were lost; reading all interfaces again");
                        self.resync_logged();
                    }
                    Ok(n) => {
                        self.apply(n.events);
                        self.reconcile();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading link notifications failed");
                        tokio::time::sleep(SOCKET_ERROR_PAUSE).await;
                    }
                },
                _ = resync.tick() => self.resync_logged(),
            }
        }
    }

    /// The interfaces kproxy serves now (what `/metrics` counts), for logs and tests.
    pub fn served(&self) -> impl Iterator<Item = (Link, Role)> + '_ {
        self.served
            .iter()
            .map(|(index, e)| (Link::new(*index, e.name.clone()), e.role))
    }

    fn resync_logged(&mut self) {
        if let Err(e) = self.resync() {
            tracing::warn!(error = %format!("{e:#}"), "reading the interfaces failed");
        }
    }

    /// Reads every interface, retries those that failed, attaches and detaches what differs,
    /// and sweeps pins and map entries that belong to nothing served.
    fn resync(&mut self) -> Result<()> {
        self.links = netlink::dump().context("listing the interfaces")?;
        self.held_back.clear();
        self.reconcile();
        let served: Vec<(Link, &[(Hook, Attached)])> = self
            .served
            .iter()
            .map(|(index, e)| (Link::new(*index, e.name.clone()), e.hooks.as_slice()))
            .collect();
        let (pins, entries) = self
            .hooks
            .sweep(served.iter().map(|(l, h)| (l, *h)))
            .context("sweeping pinned links and KP_IFACES")?;
        if pins + entries > 0 {
            tracing::info!(
                pins,
                entries,
                "removed links and interface entries of interfaces no longer served"
            );
        }
        Ok(())
    }

    fn apply(&mut self, events: Vec<LinkEvent>) {
        for event in events {
            match event {
                LinkEvent::Present(link) => {
                    self.links.insert(link.index, link.name);
                }
                LinkEvent::Gone(index) => {
                    self.links.remove(&index);
                }
            }
        }
    }

    /// Attaches and detaches until what is served matches the selected interfaces.
    fn reconcile(&mut self) {
        let served: BTreeMap<u32, (String, Role)> = self
            .served
            .iter()
            .map(|(index, e)| (*index, (e.name.clone(), e.role)))
            .collect();
        let plan = select::plan(&self.links, &served, &self.held_back, &self.selection);
        for (link, leaving) in plan.detach {
            self.detach(&link, leaving);
        }
        for (link, role) in plan.attach {
            self.attach(link, role);
        }
        self.metrics.attached.set(gauge(self.served.len()));
    }

    fn attach(&mut self, link: Link, role: Role) {
        let started = std::time::Instant::now();
        match self.hooks.attach(&link, role) {
            Ok(Served { hooks, flags }) => {
                let took_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                let names: Vec<&str> = hooks.iter().map(|(h, _)| h.label()).collect();
                let adopted = hooks.iter().any(|(_, how)| *how == Attached::Replaced);
                tracing::info!(
                    iface = %link.name,
                    index = link.index,
                    hooks = %names.join(","),
                    pod = role.pod,
                    flags,
                    took_us,
                    "{}",
                    if adopted {
                        "attached: replaced the program of the existing pinned links"
                    } else {
                        "attached"
                    }
                );
                self.served.insert(
                    link.index,
                    Entry {
                        name: link.name,
                        role,
                        hooks,
                    },
                );
            }
            // Nothing was attempted; the notification of its removal is on its way.
            Err(AttachError::Gone(link)) => {
                tracing::debug!(iface = %link.name, index = link.index, "gone before it was attached");
            }
            Err(AttachError::Failed(e)) => {
                tracing::warn!(
                    iface = %link.name,
                    index = link.index,
                    error = %format!("{e:#}"),
                    "attaching failed; trying again at the next resync"
                );
                self.count_error("attach");
                self.held_back.insert(link);
            }
        }
    }

    fn detach(&mut self, link: &Link, leaving: Leaving) {
        let Some(entry) = self.served.remove(&link.index) else {
            return;
        };
        match self.hooks.detach(link, &entry.hooks) {
            Ok(()) => tracing::info!(
                iface = %link.name,
                index = link.index,
                reason = leaving.label(),
                "detached"
            ),
            Err(e) => {
                // Forgotten anyway: the next resync sweeps what is left.
                tracing::warn!(
                    iface = %link.name,
                    index = link.index,
                    reason = leaving.label(),
                    error = %format!("{e:#}"),
                    "detaching failed"
                );
                self.count_error("detach");
            }
        }
    }

    fn count_error(&self, operation: &str) {
        self.metrics
            .errors
            .get_or_create(&OperationLabel {
                operation: operation.into(),
            })
            .inc();
    }
}
