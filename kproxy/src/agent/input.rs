//! Where the agent's changes come from, behind one interface: a manifests path (file events
//! plus a periodic re-read as a safety net) or the Kubernetes API (watch updates).
//!
//! Both work in two steps so the agent's loop stays cancel-safe: `wait` only waits for the
//! first sign of a change; `take`, called after the source's pause (`Pace`), collects
//! everything that has arrived by then into one batch of changes, so a burst becomes one
//! sync.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use anyhow::Result;
use tokio::{sync::mpsc, time::Interval};

use crate::{
    metrics::{Metrics, WatchErrorLabels},
    model::Change,
    problem::Problem,
    source::{
        api::{self, ApiMessage, Failure, Resource, WatchError},
        files::ManifestSource,
        watch,
    },
};

/// How long the agent waits, once a change has arrived, before taking what has arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    /// Always the debounce: a file event may be the first of an editor's several writes,
    /// the file not whole yet.
    AfterFirst,
    /// As kube-proxy's minimum sync period: at once after a quiet spell, otherwise until
    /// the debounce has passed since the last sync began. A watch event is a whole object;
    /// a wait after each would add itself (2-3 ms on the runtime's 1 ms timer) to every
    /// change while a storm's syncs are bounded all the same.
    SinceLastSync,
}

impl Pace {
    /// The wait for a change seen at `now`, the last sync having begun at `last_sync`.
    pub fn pause(self, debounce: Duration, last_sync: Option<Instant>, now: Instant) -> Duration {
        match self {
            Self::AfterFirst => debounce,
            Self::SinceLastSync => last_sync.map_or(Duration::ZERO, |last| {
                (last + debounce).saturating_duration_since(now)
            }),
        }
    }
}

pub enum Input {
    Manifests {
        source: Box<ManifestSource>,
        events: mpsc::UnboundedReceiver<()>,
        resync: Interval,
        /// Keeps the file watch alive.
        _watch: watch::ManifestWatch,
    },
    Api {
        updates: mpsc::UnboundedReceiver<ApiMessage>,
        /// Resources whose cache has not completed a list yet.
        unsynced: BTreeSet<Resource>,
        /// The last error of each resource's watch, so each is logged once.
        errors: BTreeMap<Resource, String>,
        /// Objects of each resource that are not valid for their type.
        invalid: BTreeMap<Resource, Vec<Problem>>,
    },
}

/// What woke the agent up.
pub enum Wakeup {
    FileEvent,
    Resync,
    Api(ApiMessage),
}

impl Input {
    pub fn manifests(
        source: ManifestSource,
        path: &std::path::Path,
        resync: Duration,
    ) -> Result<Self> {
        let (tx, events) = mpsc::unbounded_channel();
        let watch = watch::watch(path, tx)?;
        let mut resync = tokio::time::interval(resync);
        resync.reset();
        Ok(Self::Manifests {
            source: Box::new(source),
            events,
            resync,
            _watch: watch,
        })
    }

    pub async fn api(
        access: &api::ApiAccess,
        node_name: &str,
        metrics: &api::rest_metrics::RestClientMetrics,
    ) -> Result<Self> {
        let client = api::client(access, metrics).await?;
        let (tx, updates) = mpsc::unbounded_channel();
        api::start(&client, node_name, access.list_page_size, &tx);
        Ok(Self::Api {
            updates,
            unsynced: Resource::ALL.into_iter().collect(),
            errors: BTreeMap::new(),
            invalid: BTreeMap::new(),
        })
    }

    /// Waits for the next sign of a change. Cancel-safe. `None`: the input has ended.
    pub async fn wait(&mut self) -> Option<Wakeup> {
        match self {
            Self::Manifests { events, resync, .. } => tokio::select! {
                event = events.recv() => event.map(|()| Wakeup::FileEvent),
                _ = resync.tick() => Some(Wakeup::Resync),
            },
            Self::Api { updates, .. } => updates.recv().await.map(Wakeup::Api),
        }
    }

    /// How the source's changes are paced into syncs.
    pub fn pace(&self) -> Pace {
        match self {
            Self::Manifests { .. } => Pace::AfterFirst,
            Self::Api { .. } => Pace::SinceLastSync,
        }
    }

    /// Everything that has changed: from `first` and whatever arrived since.
    pub fn take(&mut self, first: Wakeup, metrics: &Metrics) -> Vec<Change> {
        match self {
            Self::Manifests { source, events, .. } => {
                while events.try_recv().is_ok() {}
                source.refresh()
            }
            Self::Api {
                updates,
                unsynced,
                errors,
                invalid,
            } => {
                let mut changes = Vec::new();
                let mut next = match first {
                    Wakeup::Api(message) => Some(message),
                    Wakeup::FileEvent | Wakeup::Resync => None,
                };
                while let Some(message) = next.take().or_else(|| updates.try_recv().ok()) {
                    match message {
                        Ok(update) => {
                            if update.listed {
                                unsynced.remove(&update.resource);
                            }
                            if errors.remove(&update.resource).is_some() {
                                tracing::info!(
                                    resource = update.resource.name(),
                                    "watch recovered"
                                );
                            }
                            if let Some(problems) = update.problems {
                                invalid.insert(update.resource, problems);
                            }
                            changes.extend(update.changes);
                        }
                        Err(e) => {
                            metrics
                                .watch_errors_total
                                .get_or_create(&WatchErrorLabels {
                                    resource: e.resource.name().into(),
                                    reason: e.failure.reason().into(),
                                })
                                .inc();
                            if errors.get(&e.resource) != Some(&e.message) {
                                report_watch_error(&e);
                                errors.insert(e.resource, e.message);
                            }
                        }
                    }
                }
                changes
            }
        }
    }

    /// Whether the agent has a complete view: the manifests are always complete once read;
    /// the API once every watch has listed.
    pub fn synced(&self) -> bool {
        match self {
            Self::Manifests { .. } => true,
            Self::Api { unsynced, .. } => unsynced.is_empty(),
        }
    }

    /// Whether every EndpointSlice has been listed (the manifests are always complete).
    pub fn slices_listed(&self) -> bool {
        match self {
            Self::Manifests { .. } => true,
            Self::Api { unsynced, .. } => !unsynced.contains(&Resource::EndpointSlices),
        }
    }

    /// Problems of the input itself (unreadable or invalid manifests, API objects that are
    /// not valid for their type).
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            Self::Manifests { source, .. } => source.problems(),
            Self::Api { invalid, .. } => invalid.values().flatten().cloned().collect(),
        }
    }

    /// Adds where an object was defined to a problem about it, when the input knows.
    pub fn locate(&self, problem: Problem) -> Problem {
        match self {
            Self::Manifests { source, .. } => source.locate(problem),
            Self::Api { .. } => problem,
        }
    }
}

/// Logs a failed list or watch (once per distinct message): a refused permission as an
/// error that says what to grant, the rest as warnings, since they are retried and heal.
fn report_watch_error(e: &WatchError) {
    let resource = e.resource.name();
    match e.failure {
        Failure::Forbidden { verb } => {
            let group = match e.resource.group() {
                "" => "the core API group".to_owned(),
                group => format!("API group {group}"),
            };
            tracing::error!(
                resource,
                verb,
                error = %e.message,
                "kproxy may not {verb} {resource} ({group}): its ClusterRole must grant \
                 list and watch on services, nodes and discovery.k8s.io endpointslices, as \
                 deploy/kproxy.yaml's does; retrying with backoff, and until it is allowed \
                 changes to {resource} do not reach the datapath"
            );
        }
        Failure::GoneAtWatchStart => tracing::warn!(
            resource,
            error = %e.message,
            "the watch cannot resume (its history was compacted); relisting"
        ),
        Failure::Other => tracing::warn!(
            resource,
            error = %e.message,
            "list/watch failed; retrying with backoff"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_is_the_debounce_after_a_file_event_and_what_is_left_of_it_after_a_sync() {
        let debounce = Duration::from_millis(2);
        let start = Instant::now();
        let us = Duration::from_micros;
        // The change is seen 100 ms after `start`; the last sync began at `start` plus
        // the offset given.
        let now = start + us(100_000);
        let cases = [
            (Pace::AfterFirst, None, us(2000)),
            (Pace::AfterFirst, Some(us(40_000)), us(2000)),
            (Pace::AfterFirst, Some(us(100_000)), us(2000)),
            // The first change ever, and one after a quiet spell: at once.
            (Pace::SinceLastSync, None, Duration::ZERO),
            (Pace::SinceLastSync, Some(us(40_000)), Duration::ZERO),
            (Pace::SinceLastSync, Some(us(98_000)), Duration::ZERO),
            // In a storm: until the debounce has passed since the last sync began.
            (Pace::SinceLastSync, Some(us(99_500)), us(1500)),
            (Pace::SinceLastSync, Some(us(100_000)), us(2000)),
        ];
        for (pace, last_sync, want) in cases {
            let last_sync = last_sync.map(|offset| start + offset);
            assert_eq!(
                pace.pause(debounce, last_sync, now),
                want,
                "{pace:?} {last_sync:?}"
            );
        }
    }
}
