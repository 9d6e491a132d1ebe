//! The Kubernetes API as a source: kube-runtime watchers (list, then watch, relisting after
//! `410 Gone`, with backoff) on Services, EndpointSlices and this node's Node, each feeding a
//! reflector store through a `Mirror` that hands the agent only what changed.
//!
//! The watches filter like kube-proxy's informers, on the server: Services and
//! EndpointSlices without `service.kubernetes.io/service-proxy-name` (owned by another
//! proxy) or `service.kubernetes.io/headless`, Services whose `spec.clusterIP` is not
//! `None`, and the one Node named like this node.

mod decoded;
mod mirror;

use std::path::Path;

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::mpsc;

pub use decoded::Decoded;
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
}

pub type ApiMessage = std::result::Result<ApiUpdate, WatchError>;

/// A client from `kubeconfig`, or from the in-cluster service account without one.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None => Config::incluster().context(
            "no --kubeconfig and not running in a pod (in-cluster configuration missing); \
             pass --kubeconfig or --manifests",
        )?,
    };
    Client::try_from(config).context("building the Kubernetes client")
}

/// Starts the three watches; their updates and errors arrive on `tx` until it is closed.
pub fn start(client: &Client, node_name: &str, tx: &mpsc::UnboundedSender<ApiMessage>) {
    let labels = label_selector();
    tokio::spawn(watch(
        Resource::Services,
        Api::<Decoded<Service>>::all(client.clone()),
        watcher::Config::default()
            .labels(&labels)
            .fields(SERVICE_FIELD_SELECTOR),
        tx.clone(),
    ));
    tokio::spawn(watch(
        Resource::EndpointSlices,
        Api::<Decoded<EndpointSlice>>::all(client.clone()),
        watcher::Config::default().labels(&labels),
        tx.clone(),
    ));
    tokio::spawn(watch(
        Resource::Node,
        Api::<Decoded<Node>>::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={node_name}")),
        tx.clone(),
    ));
}

async fn watch<K: Watched>(
    resource: Resource,
    api: Api<Decoded<K>>,
    config: watcher::Config,
    tx: mpsc::UnboundedSender<ApiMessage>,
) {
    let mut mirror = Mirror::<K>::default();
    let events = watcher(api, config)
        .default_backoff()
        .modify(Decoded::<K>::strip);
    futures::pin_mut!(events);
    while let Some(event) = events.next().await {
        let message = match event {
            Ok(event) => {
                let listed = matches!(event, watcher::Event::InitDone);
                let changes = mirror.apply(&event);
                let problems = mirror.take_problems();
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
            Err(e) => Err(WatchError {
                resource,
                message: e.to_string(),
            }),
        };
        if tx.send(message).is_err() {
            return;
        }
    }
}
