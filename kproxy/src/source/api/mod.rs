//! The Kubernetes API as a source: list+watch streams (`list_watch`: lists in protobuf where
//! the kind allows, watches from the list's version, relisting after `410 Gone`, with
//! backoff) on Services, EndpointSlices and this node's Node, each feeding a `Mirror` that
//! hands the agent only what changed, converted into what the model keeps.
//!
//! The watches filter like kube-proxy's informers, on the server: Services and
//! EndpointSlices without `service.kubernetes.io/service-proxy-name` (owned by another
//! proxy) or `service.kubernetes.io/headless`, Services whose `spec.clusterIP` is not
//! `None`, and the one Node named like this node.

mod decoded;
mod failure;
mod list_reader;
mod list_watch;
mod mirror;
mod protobuf;
pub mod rest_metrics;

use std::{
    num::NonZeroU32,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::mpsc;

pub use decoded::Decoded;
pub use failure::Failure;
/// `--api-list-page-size`'s default.
pub use list_watch::PAGE_SIZE as DEFAULT_LIST_PAGE_SIZE;
use list_watch::{Selectors, list_watch};
pub use mirror::{Mirror, Watched};

use crate::{
    model::{Change, LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME},
    problem::Problem,
};

/// The resources the API source watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    Services,
    EndpointSlices,
    Node,
}

impl Resource {
    pub const ALL: [Resource; 3] = [Self::Services, Self::EndpointSlices, Self::Node];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Services => "services",
            Self::EndpointSlices => "endpointslices",
            Self::Node => "nodes",
        }
    }

    /// The resource's API group ("" is the core group).
    pub const fn group(self) -> &'static str {
        match self {
            Self::Services | Self::Node => "",
            Self::EndpointSlices => "discovery.k8s.io",
        }
    }
}

/// What the agent's service account must be allowed: (API group, resource, verbs). The
/// ClusterRole in `deploy/` grants exactly this; a test keeps the two in step.
pub const REQUIRED_ACCESS: &[(&str, &str, &[&str])] = &[
    ("", "services", &["list", "watch"]),
    ("", "nodes", &["list", "watch"]),
    ("discovery.k8s.io", "endpointslices", &["list", "watch"]),
];

/// The label selector of kube-proxy's informers (Services and EndpointSlices).
pub fn label_selector() -> String {
    format!("!{LABEL_SERVICE_PROXY_NAME},!{LABEL_HEADLESS}")
}

/// The field selector of kube-proxy's Service informer: headless Services are DNS only.
pub const SERVICE_FIELD_SELECTOR: &str = "spec.clusterIP!=None";

/// One batch of changes from a watch.
#[derive(Debug)]
pub struct ApiUpdate {
    pub resource: Resource,
    pub changes: Vec<Change>,
    /// This batch completes a list: the resource's cache holds the whole (filtered) set.
    pub listed: bool,
    /// The resource's objects that are not valid for their type, when that changed: each is
    /// reported and handed out as absent until it is fixed or deleted.
    pub problems: Option<Vec<Problem>>,
}

/// A watch that failed (it is retried with backoff).
#[derive(Debug)]
pub struct WatchError {
    pub resource: Resource,
    pub message: String,
    pub failure: Failure,
}

pub type ApiMessage = std::result::Result<ApiUpdate, WatchError>;

/// Every (resource, reason) label pair a watch error can have, so the metric can show each
/// at zero before the first error.
pub fn watch_error_labels() -> impl Iterator<Item = (&'static str, &'static str)> {
    Resource::ALL.into_iter().flat_map(|resource| {
        failure::Failure::REASONS
            .into_iter()
            .map(move |reason| (resource.name(), reason))
    })
}

/// How the agent reaches the API server (kube-proxy's `--kubeconfig` and `--master`), and
/// how it reads the lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiAccess {
    /// Without one, the in-cluster service account.
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The API server's URL, overriding the kubeconfig's (or the in-cluster one).
    pub master: Option<String>,
    /// Objects per list page (see `list_watch::PAGE_SIZE`).
    pub list_page_size: NonZeroU32,
}

/// A client from `access`'s kubeconfig, or from the in-cluster service account without one,
/// its requests counted in `metrics`.
pub async fn client(
    access: &ApiAccess,
    metrics: &rest_metrics::RestClientMetrics,
) -> Result<Client> {
    let mut config = match access.kubeconfig.as_deref() {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None => match (Config::incluster(), &access.master) {
            (Ok(config), _) => config,
            // kube-proxy's `--master` alone: that URL, without credentials.
            (Err(_), Some(master)) => Config::new(parse_master(master)?),
            (Err(e), None) => {
                return Err(anyhow::Error::new(e).context(
                    "no --kubeconfig and not running in a pod (in-cluster configuration \
                     missing); pass --kubeconfig or --manifests",
                ));
            }
        },
    };
    if let Some(master) = &access.master {
        config.cluster_url = parse_master(master)?;
    }
    let host = config
        .cluster_url
        .authority()
        .map_or_else(String::new, ToString::to_string);
    let builder =
        kube::client::ClientBuilder::try_from(config).context("building the Kubernetes client")?;
    Ok(builder.with_layer(&metrics.layer(&host)).build())
}

/// `--master` as a URL (`https://10.0.0.1:6443`; a bare `host:port` is taken as https).
fn parse_master(master: &str) -> Result<http::Uri> {
    let text = if master.contains("://") {
        master.to_owned()
    } else {
        format!("https://{master}")
    };
    text.parse()
        .with_context(|| format!("--master {master:?} is not a URL"))
}

/// Starts the three watches, listing `page_size` objects a page; their updates and errors
/// arrive on `tx` until it is closed.
pub fn start(
    client: &Client,
    node_name: &str,
    page_size: NonZeroU32,
    tx: &mpsc::UnboundedSender<ApiMessage>,
) {
    let labels = Some(label_selector());
    tokio::spawn(watch::<Service>(
        Resource::Services,
        client.clone(),
        Selectors {
            labels: labels.clone(),
            fields: Some(SERVICE_FIELD_SELECTOR.to_owned()),
            page_size,
        },
        tx.clone(),
    ));
    tokio::spawn(watch::<EndpointSlice>(
        Resource::EndpointSlices,
        client.clone(),
        Selectors {
            labels,
            fields: None,
            page_size,
        },
        tx.clone(),
    ));
    tokio::spawn(watch::<Node>(
        Resource::Node,
        client.clone(),
        Selectors {
            labels: None,
            fields: Some(format!("metadata.name={node_name}")),
            page_size,
        },
        tx.clone(),
    ));
}

async fn watch<K: Watched>(
    resource: Resource,
    client: Client,
    selectors: Selectors,
    tx: mpsc::UnboundedSender<ApiMessage>,
) {
    // One mirror across watcher restarts: a relist is diffed against what was known.
    let mut mirror = Mirror::<K>::default();
    let mut restarts = Restarts::default();
    // The first list's objects, handed out as they arrive (see `Mirror::apply`), go to the
    // agent a batch at a time rather than in one message each: a fifth of a page, so the
    // agent models and writes one part while the rest of the page is decoded and the next
    // one read.
    let batch_size = usize::try_from(selectors.page_size.get() / 5)
        .unwrap_or(usize::MAX)
        .max(1);
    let mut batch: Vec<Change> = Vec::new();
    let mut listed_before = false;
    loop {
        let events =
            list_watch::<K>(client.clone(), selectors.clone(), listed_before).default_backoff();
        // A restart follows a watch refused after a complete list: its list is a relist.
        listed_before = true;
        futures::pin_mut!(events);
        let mut restart = false;
        while let Some(event) = events.next().await {
            let message = match event {
                Ok(event) => {
                    let listed = matches!(event, watcher::Event::InitDone);
                    let listing = matches!(event, watcher::Event::InitApply(_));
                    batch.extend(mirror.apply(&event));
                    let problems = mirror.take_problems();
                    if listing && problems.is_none() && batch.len() < batch_size {
                        continue;
                    }
                    let changes = std::mem::take(&mut batch);
                    if changes.is_empty() && !listed && problems.is_none() {
                        continue;
                    }
                    Ok(ApiUpdate {
                        resource,
                        changes,
                        listed,
                        problems,
                    })
                }
                Err(e) => {
                    let failure = Failure::of(&e);
                    restart = failure == Failure::GoneAtWatchStart;
                    Err(WatchError {
                        resource,
                        message: e.to_string(),
                        failure,
                    })
                }
            };
            if tx.send(message).is_err() {
                return;
            }
            if restart {
                break;
            }
        }
        if !restart {
            return;
        }
        tokio::time::sleep(restarts.next_delay(Instant::now())).await;
    }
}

/// Paces watcher restarts (relists): the first at once, as client-go relists; a server that
/// keeps refusing watch starts gets them ever more slowly, never a busy loop of lists.
#[derive(Debug, Default)]
struct Restarts {
    last: Option<Instant>,
    delay: Duration,
}

impl Restarts {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(10);
    /// A restart this long after the previous one starts the pacing over.
    const CALM: Duration = Duration::from_mins(1);

    fn next_delay(&mut self, now: Instant) -> Duration {
        let calm = self.last.is_none_or(|last| now - last >= Self::CALM);
        self.delay = if calm {
            Duration::ZERO
        } else {
            (self.delay * 2).clamp(Self::FIRST, Self::MAX)
        };
        self.last = Some(now + self.delay);
        self.delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_are_immediate_when_rare_and_back_off_when_repeated() {
        let mut restarts = Restarts::default();
        let t0 = Instant::now();
        let delays: Vec<Duration> = (0..9)
            .map(|i| restarts.next_delay(t0 + Duration::from_millis(i)))
            .collect();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(
            delays,
            [0, 100, 200, 400, 800, 1600, 3200, 6400, 10_000].map(ms)
        );
        // After a calm minute, at once again.
        let later = t0 + Duration::from_mins(3);
        assert_eq!(restarts.next_delay(later), Duration::ZERO);
        assert_eq!(restarts.next_delay(later), ms(100));
    }
}
