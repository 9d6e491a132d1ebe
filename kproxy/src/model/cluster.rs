//! The cluster as the agent knows it, updated one object at a time. A change recomputes the
//! frontends of the services it touches and nothing else, so the cost of a sync follows what
//! changed, not the size of the cluster.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};

use super::{
    Desired, Frontend, FrontendKey, LABEL_HEADLESS, LABEL_SERVICE_NAME, LABEL_SERVICE_PROXY_NAME,
    NodeInfo, ServicePortName, WhenEmpty,
    endpoints::{self, Family},
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
    /// Problems found computing each service (its slices' problems included).
    problems: HashMap<ObjectKey, Vec<Problem>>,
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
    fn recompute_all(&mut self, mut dirty: BTreeSet<ObjectKey>) -> BTreeSet<FrontendKey> {
        let mut changed = BTreeSet::new();
        // In name order, as `desired_state` resolves conflicts; freeing or taking a frontend
        // may put other services back on the list.
        while let Some(key) = dirty.pop_first() {
            self.recompute(&key, &mut dirty, &mut changed);
        }
        changed
    }

    /// Every current problem, sorted.
    pub fn problems(&self) -> Vec<Problem> {
        let mut all: Vec<Problem> = self.problems.values().flatten().cloned().collect();
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
                    match service {
                        Some(svc) => self.services.insert(key.clone(), svc),
                        None => self.services.remove(&key),
                    };
                    dirty.insert(key);
                }
                Change::Slice(key, slice) => {
                    if let Some(old) = self.slice_owner.remove(&key) {
                        if let Some(set) = self.slices_of.get_mut(&old) {
                            set.remove(&key);
                        }
                        dirty.insert(old);
                    }
                    match slice {
                        Some(slice) => {
                            if let Some(owner) = slice_owner(&slice) {
                                self.slices_of
                                    .entry(owner.clone())
                                    .or_default()
                                    .insert(key.clone());
                                self.slice_owner.insert(key.clone(), owner.clone());
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

    fn release(
        &mut self,
        service: &ObjectKey,
        dirty: &mut BTreeSet<ObjectKey>,
        changed: &mut BTreeSet<FrontendKey>,
    ) {
        for key in self.owned.remove(service).unwrap_or_default() {
            self.owner.remove(&key);
            self.desired.remove(&key);
            changed.insert(key);
            for waiter in self.waiting.remove(&key).unwrap_or_default() {
                if &waiter != service {
                    dirty.insert(waiter);
                }
            }
        }
        for waiters in self.waiting.values_mut() {
            waiters.remove(service);
        }
    }

    fn recompute(
        &mut self,
        service: &ObjectKey,
        dirty: &mut BTreeSet<ObjectKey>,
        changed: &mut BTreeSet<FrontendKey>,
    ) {
        self.release(service, dirty, changed);
        self.problems.remove(service);
        let Some(svc) = self.services.get(service).cloned() else {
            return;
        };
        let mut problems = Vec::new();
        let frontends = self.frontends_of(service, &svc, &mut problems);
        let mut owned = Vec::new();
        for (key, frontend) in frontends {
            match self.owner.get(&key) {
                // Served for a service that sorts first: it keeps the frontend.
                Some(other) if other < service => {
                    problems.push(
                        Problem::new(
                            ProblemKind::Conflict,
                            format!(
                                "{key} is already served for {}; this port is skipped",
                                other_name(other, &self.desired, &key)
                            ),
                        )
                        .object(object_name("Service", &svc.metadata)),
                    );
                    self.waiting.entry(key).or_default().insert(service.clone());
                    continue;
                }
                // Served for a service that sorts after this one: it loses the frontend and
                // is recomputed (to report the conflict and wait for the frontend).
                Some(other) => {
                    let other = other.clone();
                    if let Some(list) = self.owned.get_mut(&other) {
                        list.retain(|k| k != &key);
                    }
                    dirty.insert(other);
                    // Their conflict reports name the owner, which just changed.
                    dirty.extend(self.waiting.get(&key).into_iter().flatten().cloned());
                }
                None => {}
            }
            self.owner.insert(key, service.clone());
            self.desired.insert(key, frontend);
            changed.insert(key);
            owned.push(key);
        }
        self.owned.insert(service.clone(), owned);
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
                let infos = endpoints::endpoints_for(
                    &slices,
                    port,
                    Family::of(addr),
                    &self.node.name,
                    problems,
                );
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

/// The service port name serving `key` (for messages).
fn other_name(other: &ObjectKey, desired: &Desired, key: &FrontendKey) -> String {
    desired.get(key).map_or_else(
        || format!("{}/{}", other.0, other.1),
        |f| f.service.to_string(),
    )
}
