//! The cluster as the agent knows it, updated one object at a time. A change recomputes the
//! frontends of the services it touches and nothing else, so the cost of a sync follows what
//! changed, not the size of the cluster.
//!
//! Two Services may claim one frontend (VIP, port, protocol): the API server never allocates
//! one cluster IP twice, but manifests, restored backups or externally set IPs can. The
//! Service that serves a frontend keeps it for as long as it claims it; a newcomer is
//! reported and waits, and takes the frontend over only once it is freed (its holder is
//! deleted or stops claiming it). Services that ask in the same batch of changes (at startup,
//! after a restart or a relist, or arriving together) are served in rank order: the older
//! `creationTimestamp` first, objects without one after those with one, then
//! namespace/name. So the outcome is deterministic for a given set of objects whatever the
//! order they arrive in, and a restart keeps the holder whenever the holder is the older
//! object (always, in a cluster where the newcomer was created later).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kproxy_common::lb::MAX_BACKENDS_PER_SERVICE;

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};

use super::{
    Desired, Frontend, FrontendKey, LABEL_HEADLESS, LABEL_SERVICE_NAME, LABEL_SERVICE_PROXY_NAME,
    NodeInfo, ServicePortName, WhenEmpty,
    endpoints::{self, Family, slice_problems},
    object_name,
    service::ServiceSpec,
    topology::{Locality, categorize},
};
use crate::problem::{Problem, ProblemKind};

/// `(namespace, name)` of an object. Shared strings: a key is cloned into several indexes,
/// which at tens of thousands of objects would otherwise be megabytes of copies.
pub type ObjectKey = (Arc<str>, Arc<str>);

/// The key of an object as kube-proxy names it (a missing namespace is `default`).
pub fn object_key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjectKey {
    (
        meta.namespace.as_deref().unwrap_or("default").into(),
        meta.name.as_deref().unwrap_or_default().into(),
    )
}

/// One object added, changed (`Some`) or deleted (`None`).
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    Service(ObjectKey, Option<Arc<Service>>),
    Slice(ObjectKey, Option<Arc<EndpointSlice>>),
    /// The agent's own Node (deleted: only its name is known).
    Node(Option<Arc<Node>>),
}

/// The Service an EndpointSlice feeds, unless kube-proxy would ignore the slice.
fn slice_owner(slice: &EndpointSlice) -> Option<ObjectKey> {
    let labels = slice.metadata.labels.as_ref()?;
    if labels.contains_key(LABEL_HEADLESS) || labels.contains_key(LABEL_SERVICE_PROXY_NAME) {
        return None;
    }
    let service = labels.get(LABEL_SERVICE_NAME)?;
    Some((object_key(&slice.metadata).0, service.as_str().into()))
}

/// Which of several services asking in one batch for the same free frontend gets it: the
/// lowest rank (see the module documentation). Deleted services come first: what they free
/// is then up for grabs in rank order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    Gone,
    Created(Time),
    Undated,
}

fn rank_of(services: &BTreeMap<ObjectKey, Arc<Service>>, key: &ObjectKey) -> Rank {
    match services.get(key) {
        None => Rank::Gone,
        Some(svc) => svc
            .metadata
            .creation_timestamp
            .clone()
            .map_or(Rank::Undated, Rank::Created),
    }
}

/// Services to recompute, in rank order.
#[derive(Default)]
struct Queue(BTreeSet<(Rank, ObjectKey)>);

impl Queue {
    fn push(&mut self, services: &BTreeMap<ObjectKey, Arc<Service>>, key: ObjectKey) {
        self.0.insert((rank_of(services, &key), key));
    }

    fn pop(&mut self) -> Option<ObjectKey> {
        self.0.pop_first().map(|(_, key)| key)
    }
}

#[derive(Default)]
pub struct ClusterState {
    /// Shared with the source that produced them: one copy of each object in the agent.
    services: BTreeMap<ObjectKey, Arc<Service>>,
    slices: HashMap<ObjectKey, Arc<EndpointSlice>>,
    /// Service → the slices labelled for it.
    slices_of: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    /// Slice → the service it is indexed under.
    slice_owner: HashMap<ObjectKey, ObjectKey>,
    /// Frontends each service serves.
    owned: HashMap<ObjectKey, Vec<FrontendKey>>,
    owner: HashMap<FrontendKey, ObjectKey>,
    /// Services that want a frontend another service serves: they get it when it is freed.
    waiting: HashMap<FrontendKey, BTreeSet<ObjectKey>>,
    desired: Desired,
    /// Problems found computing each service.
    problems: HashMap<ObjectKey, Vec<Problem>>,
    /// Problems of each EndpointSlice on its own (addresses, ports, address type).
    slice_problems: HashMap<ObjectKey, Vec<Problem>>,
    /// Slices labelled for a Service that does not exist, with that Service.
    orphans: BTreeMap<ObjectKey, ObjectKey>,
    /// The node this agent runs on: which endpoints are local, which zone it is in.
    node: NodeInfo,
}

impl ClusterState {
    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// Sets this node's name and labels; if its name or zone changed, every service is
    /// recomputed (locality and hints depend on them). Returns the frontends that may have
    /// changed.
    pub fn set_node(&mut self, node: NodeInfo) -> BTreeSet<FrontendKey> {
        let mut dirty = BTreeSet::new();
        self.replace_node(node, &mut dirty);
        self.recompute_all(dirty)
    }

    /// Takes `node`; if its name or zone changed every service goes into `dirty`.
    fn replace_node(&mut self, node: NodeInfo, dirty: &mut BTreeSet<ObjectKey>) {
        let relevant = |n: &NodeInfo| (n.name.clone(), n.zone().to_owned());
        if relevant(&node) != relevant(&self.node) {
            dirty.extend(self.services.keys().cloned());
        }
        self.node = node;
    }

    /// Recomputes the `dirty` services, and those their changes affect.
    fn recompute_all(&mut self, dirty: BTreeSet<ObjectKey>) -> BTreeSet<FrontendKey> {
        let mut changed = BTreeSet::new();
        let mut queue = Queue::default();
        for key in dirty {
            queue.push(&self.services, key);
        }
        // In rank order, so services asking for one free frontend in the same batch get it
        // in rank order; freeing a frontend queues the services waiting for it. This ends:
        // a service is queued again only when a frontend it waits for is freed, and a
        // frontend is freed only by a service that changed or went away.
        while let Some(key) = queue.pop() {
            self.recompute(&key, &mut queue, &mut changed);
        }
        changed
    }

    /// Every current problem, sorted.
    pub fn problems(&self) -> Vec<Problem> {
        let orphans = self.orphans.iter().map(|(slice, service)| {
            Problem::new(
                ProblemKind::OrphanSlice,
                format!(
                    "labelled for Service {}/{}, which does not exist; its endpoints are used once it does",
                    service.0, service.1
                ),
            )
            .object(format!("EndpointSlice {}/{}", slice.0, slice.1))
        });
        let mut all: Vec<Problem> = self
            .problems
            .values()
            .chain(self.slice_problems.values())
            .flatten()
            .cloned()
            .chain(orphans)
            .collect();
        all.sort_by(|a, b| (&a.object, &a.message).cmp(&(&b.object, &b.message)));
        all.dedup();
        all
    }

    /// Applies `changes` and returns the frontends whose desired state may have changed.
    pub fn apply(&mut self, updates: impl IntoIterator<Item = Change>) -> BTreeSet<FrontendKey> {
        let mut dirty = BTreeSet::new();
        let mut node = None;
        for item in updates {
            match item {
                Change::Node(update) => {
                    node = Some(match update {
                        Some(n) => NodeInfo::from_node(&n),
                        None => NodeInfo::named(&self.node.name),
                    });
                }
                Change::Service(key, service) => {
                    let exists = service.is_some();
                    match service {
                        Some(svc) => self.services.insert(key.clone(), svc),
                        None => self.services.remove(&key),
                    };
                    // Its slices are orphans exactly while it does not exist.
                    for slice in self.slices_of.get(&key).into_iter().flatten() {
                        if exists {
                            self.orphans.remove(slice);
                        } else {
                            self.orphans.insert(slice.clone(), key.clone());
                        }
                    }
                    dirty.insert(key);
                }
                Change::Slice(key, slice) => {
                    if let Some(old) = self.slice_owner.remove(&key) {
                        if let Some(set) = self.slices_of.get_mut(&old) {
                            set.remove(&key);
                            if set.is_empty() {
                                self.slices_of.remove(&old);
                            }
                        }
                        dirty.insert(old);
                    }
                    self.orphans.remove(&key);
                    self.slice_problems.remove(&key);
                    match slice {
                        Some(slice) => {
                            if let Some(owner) = slice_owner(&slice) {
                                self.slices_of
                                    .entry(owner.clone())
                                    .or_default()
                                    .insert(key.clone());
                                self.slice_owner.insert(key.clone(), owner.clone());
                                if !self.services.contains_key(&owner) {
                                    self.orphans.insert(key.clone(), owner.clone());
                                }
                                let problems = slice_problems(&slice);
                                if !problems.is_empty() {
                                    self.slice_problems.insert(key.clone(), problems);
                                }
                                dirty.insert(owner);
                            }
                            self.slices.insert(key, slice);
                        }
                        None => {
                            self.slices.remove(&key);
                        }
                    }
                }
            }
        }
        if let Some(node) = node {
            self.replace_node(node, &mut dirty);
        }
        self.recompute_all(dirty)
    }

    /// Recomputes `service`: the frontends it asks for and can have (free, or its own), the
    /// frontends it no longer asks for (freed, and the services waiting for them queued),
    /// and its problems.
    fn recompute(
        &mut self,
        service: &ObjectKey,
        queue: &mut Queue,
        changed: &mut BTreeSet<FrontendKey>,
    ) {
        self.problems.remove(service);
        let mut problems = Vec::new();
        let wanted = match self.services.get(service).cloned() {
            Some(svc) => self.frontends_of(service, &svc, &mut problems),
            None => Vec::new(),
        };
        let wanted_keys: HashSet<FrontendKey> = wanted.iter().map(|(k, _)| *k).collect();
        for key in self.owned.remove(service).unwrap_or_default() {
            if wanted_keys.contains(&key) {
                continue;
            }
            self.owner.remove(&key);
            self.desired.remove(&key);
            changed.insert(key);
            for waiter in self.waiting.remove(&key).unwrap_or_default() {
                queue.push(&self.services, waiter);
            }
        }
        // It waits again below for what it still wants and cannot have.
        self.waiting.retain(|_, waiters| {
            waiters.remove(service);
            !waiters.is_empty()
        });
        let mut owned = Vec::new();
        for (key, frontend) in wanted {
            if let Some(holder) = self.owner.get(&key).filter(|h| *h != service) {
                problems.push(
                    Problem::new(
                        ProblemKind::Conflict,
                        format!(
                            "port {:?}: {key} is already served for Service {}/{}, which keeps it; \
                             this port is skipped until that service stops claiming it",
                            frontend.service.port, holder.0, holder.1
                        ),
                    )
                    .object(format!("Service {}/{}", service.0, service.1)),
                );
                self.waiting.entry(key).or_default().insert(service.clone());
                continue;
            }
            self.owner.insert(key, service.clone());
            if self.desired.get(&key) != Some(&frontend) {
                self.desired.insert(key, frontend);
                changed.insert(key);
            }
            owned.push(key);
        }
        if !owned.is_empty() {
            self.owned.insert(service.clone(), owned);
        }
        if !problems.is_empty() {
            self.problems.insert(service.clone(), problems);
        }
    }

    /// The frontends `svc` asks for, with its endpoints from its slices.
    fn frontends_of(
        &self,
        key: &ObjectKey,
        svc: &Service,
        problems: &mut Vec<Problem>,
    ) -> Vec<(FrontendKey, Frontend)> {
        let Some(spec) = ServiceSpec::from_service(svc, problems) else {
            return Vec::new();
        };
        let slices: Vec<&EndpointSlice> = self
            .slices_of
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.get(k).map(AsRef::as_ref))
            .collect();
        let here = Locality {
            node: &self.node.name,
            zone: self.node.zone(),
        };
        let mut out = Vec::new();
        for port in &spec.ports {
            let service = ServicePortName {
                namespace: spec.namespace.clone(),
                name: spec.name.clone(),
                port: port.name.clone(),
            };
            for &addr in &spec.cluster_ips {
                let infos =
                    endpoints::endpoints_for(&slices, port, Family::of(addr), &self.node.name);
                // ClusterIP traffic uses the cluster-wide endpoints, or with
                // internalTrafficPolicy Local this node's only.
                let picked = categorize(&infos, !spec.internal_local, spec.internal_local, &here);
                let (endpoints, when_empty) = if spec.internal_local {
                    let when_empty = if picked.has_any {
                        WhenEmpty::Drop
                    } else {
                        WhenEmpty::Reject
                    };
                    (picked.local.unwrap_or_default(), when_empty)
                } else {
                    (picked.cluster.unwrap_or_default(), WhenEmpty::Reject)
                };
                let key = FrontendKey {
                    addr,
                    port: port.port,
                    proto: port.proto,
                };
                let endpoints = capped(endpoints, &key, svc, &port.name, problems);
                out.push((
                    key,
                    Frontend {
                        service: service.clone(),
                        affinity_timeout_s: spec.affinity_timeout_s,
                        endpoints,
                        listed: infos.iter().map(|i| i.endpoint).collect(),
                        when_empty,
                    },
                ));
            }
        }
        out
    }
}

/// The datapath balances over at most `MAX_BACKENDS_PER_SERVICE` backends per frontend
/// (its count is 16 bits). Kubernetes caps a slice at 1,000 endpoints but not a Service's
/// slices; beyond the limit the first endpoints in address order are used, and it is said.
fn capped(
    mut endpoints: Vec<super::Endpoint>,
    key: &FrontendKey,
    svc: &Service,
    port: &str,
    problems: &mut Vec<Problem>,
) -> Vec<super::Endpoint> {
    let max = MAX_BACKENDS_PER_SERVICE as usize;
    if endpoints.len() > max {
        problems.push(
            Problem::new(
                ProblemKind::Datapath,
                format!(
                    "port {port:?}: {key} has {} endpoints, more than the {max} the datapath \
                     balances over; the first {max} by address are used",
                    endpoints.len()
                ),
            )
            .object(object_name("Service", &svc.metadata)),
        );
        endpoints.truncate(max);
    }
    endpoints
}
