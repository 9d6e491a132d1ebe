//! The cluster as the agent knows it, updated one object at a time. A change recomputes the
//! frontends of the services it touches and nothing else, so the cost of a sync follows what
//! changed, not the size of the cluster.
//!
//! Two Services may claim one frontend (VIP, port, protocol; a NodePort; an external or
//! load-balancer IP): the API server never allocates one cluster IP or NodePort twice, but
//! manifests, restored backups or externally set IPs can. (The `Scope::Internal` entry of an
//! externalTrafficPolicy Local frontend goes with the frontend: its holder has it.) The
//! Service that serves a frontend keeps it for as long as it claims it; a newcomer is
//! reported and waits, and takes the frontend over only once it is freed (its holder is
//! deleted or stops claiming it). Services that ask in the same batch of changes (at startup,
//! after a restart or a relist, or arriving together) are served in rank order: the older
//! `creationTimestamp` first, objects without one after those with one, then
//! namespace/name. So the outcome is deterministic for a given set of objects whatever the
//! order they arrive in, and a restart keeps the holder whenever the holder is the older
//! object (always, in a cluster where the newcomer was created later).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use ipnet::IpNet;
use smallvec::SmallVec;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kproxy_common::lb::MAX_BACKENDS_PER_SERVICE;

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};

use super::{
    Desired, Endpoint, Frontend, FrontendKey, FrontendKind, LbPolicy, NodeInfo, Scope,
    ServiceHealth, ServicePortName, WhenEmpty,
    dense::Densify,
    endpoints::{self, Family, SliceInfo},
    health,
    kept::{KeptService, KeptSlice},
    service::{PortSpec, ServiceSpec},
    topology::{Locality, categorize},
};
use crate::problem::{Problem, ProblemKind};

pub use super::object_key::{ObjectKey, object_key};

/// A hash map of the model's keys (namespace/name strings, frontends). foldhash rather than
/// std's SipHash: hashing namespace/name strings with SipHash was a ninth of the model's
/// time at a 100,000-Service start (perf). foldhash is seeded per process, and the keys are
/// what the API server accepted, not what any client may send.
pub type KeyMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// The set of [`KeyMap`].
pub type KeySet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// One object added, changed (`Some`) or deleted (`None`), as the model keeps it: sources
/// convert what they read with `Change::service` and `Change::slice` at once, so the API
/// objects themselves are never held longer than it takes to read them.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    Service(ObjectKey, Option<Arc<KeptService>>),
    Slice(ObjectKey, Option<Arc<KeptSlice>>),
    /// The agent's own Node (deleted: only its name is known).
    Node(Option<Arc<Node>>),
}

impl Change {
    /// `svc` added or changed.
    pub fn service(svc: &Service) -> Self {
        Self::service_of(object_key(&svc.metadata), svc)
    }

    /// `svc`, known by `key` (its [`object_key`]), added or changed.
    pub fn service_of(key: ObjectKey, svc: &Service) -> Self {
        let kept = KeptService::of(&key, svc);
        Self::Service(key, Some(Arc::new(kept)))
    }

    /// `slice` added or changed.
    pub fn slice(slice: &EndpointSlice) -> Self {
        Self::slice_of(object_key(&slice.metadata), slice)
    }

    /// `slice`, known by `key` (its [`object_key`]), added or changed.
    pub fn slice_of(key: ObjectKey, slice: &EndpointSlice) -> Self {
        Self::Slice(key, Some(Arc::new(KeptSlice::of(slice))))
    }
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

fn rank_of(services: &KeyMap<ObjectKey, Arc<KeptService>>, key: &ObjectKey) -> Rank {
    match services.get(key) {
        None => Rank::Gone,
        Some(svc) => svc.created.clone().map_or(Rank::Undated, Rank::Created),
    }
}

/// Services to recompute, in rank order.
struct Queue(BTreeSet<(Rank, ObjectKey)>);

impl Queue {
    /// The queue of `keys`, built at once: a sort and a bulk build of the tree rather than
    /// one insertion each (at a 100,000-Service start the insertions were over a quarter of
    /// the model's time).
    fn of(services: &KeyMap<ObjectKey, Arc<KeptService>>, keys: KeySet<ObjectKey>) -> Self {
        Self(
            keys.into_iter()
                .map(|key| (rank_of(services, &key), key))
                .collect(),
        )
    }

    fn push(&mut self, services: &KeyMap<ObjectKey, Arc<KeptService>>, key: ObjectKey) {
        self.0.insert((rank_of(services, &key), key));
    }

    fn pop(&mut self) -> Option<ObjectKey> {
        self.0.pop_first().map(|(_, key)| key)
    }
}

#[derive(Default)]
pub struct ClusterState {
    services: KeyMap<ObjectKey, Arc<KeptService>>,
    slices: KeyMap<ObjectKey, Arc<KeptSlice>>,
    /// Service → the slices labelled for it, sorted. A sorted list rather than a set: most
    /// services have one slice, and a one-element BTreeSet allocates a node for eleven
    /// (megabytes at tens of thousands of services); held inline, that one slice allocates
    /// nothing at all (2.7 MB less at 100,000 Services than a one-element Vec).
    slices_of: KeyMap<ObjectKey, SmallVec<[ObjectKey; 1]>>,
    /// Frontends each service serves; inline when it is one, as for most.
    owned: KeyMap<ObjectKey, SmallVec<[FrontendKey; 1]>>,
    /// Services that want a frontend another service serves: they get it when it is freed.
    waiting: KeyMap<FrontendKey, BTreeSet<ObjectKey>>,
    desired: Desired,
    /// Rebuilds `desired` with full nodes after large changes (see `dense`).
    desired_density: Densify,
    /// Problems found computing each service.
    problems: KeyMap<ObjectKey, Vec<Problem>>,
    /// Problems of each EndpointSlice on its own (addresses, ports, address type).
    slice_problems: KeyMap<ObjectKey, Vec<Problem>>,
    /// Slices labelled for a Service that does not exist, with that Service.
    orphans: BTreeMap<ObjectKey, ObjectKey>,
    /// The node this agent runs on: which endpoints are local, which zone it is in.
    node: NodeInfo,
    /// `--bind-address`: the primary IP of its family whatever the Node says.
    primary_ip: Option<IpAddr>,
    /// Health-check NodePort and local ready endpoints of each Service that has one.
    health: KeyMap<ObjectKey, (u16, usize)>,
    /// `--lb-algorithm` and `--maglev-scope`: which frontends use Maglev.
    lb: LbPolicy,
}

/// The endpoints of one service port of one family, by traffic policy.
struct Chosen {
    /// Cluster-wide (topology applied).
    cluster: Vec<Endpoint>,
    /// This node's.
    local: Vec<Endpoint>,
    /// What the Local policy's frontends do while `local` is empty.
    local_when_empty: WhenEmpty,
    /// Every endpoint listed, in any condition.
    listed: Vec<Endpoint>,
}

/// What one Service asks for.
struct Computed {
    frontends: Vec<(FrontendKey, Frontend)>,
    /// Its health-check NodePort and this node's ready endpoints for it.
    health: Option<(u16, usize)>,
}

impl ClusterState {
    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// Whether a slice labelled for `service` is known (whether or not the Service is).
    pub fn has_slices(&self, service: &ObjectKey) -> bool {
        self.slices_of.contains_key(service)
    }

    /// The node as last set.
    pub fn node(&self) -> &NodeInfo {
        &self.node
    }

    /// What kube-proxy's service health server serves: for each health-check NodePort of an
    /// externalTrafficPolicy Local LoadBalancer Service, the Service and this node's ready
    /// endpoints for it (see `health`). A port two Services ask for goes to the first by
    /// namespace/name (the other is reported by `problems`).
    pub fn health_checks(&self) -> BTreeMap<u16, ServiceHealth> {
        self.health_by_port().0
    }

    fn health_by_port(&self) -> (BTreeMap<u16, ServiceHealth>, Vec<health::HealthConflict>) {
        health::by_port(
            self.health
                .iter()
                .map(|(key, &(port, local))| (key, port, local)),
        )
    }

    /// Sets this node's name and labels; if its name or zone changed, every service is
    /// recomputed (locality and hints depend on them). Returns the frontends that may have
    /// changed.
    pub fn set_node(&mut self, node: NodeInfo) -> BTreeSet<FrontendKey> {
        let mut dirty = KeySet::default();
        self.replace_node(node, &mut dirty);
        self.recompute_all(dirty)
    }

    /// An empty state whose node's primary IP of `ip`'s family is `ip` (kube-proxy's
    /// `--bind-address`), whatever its Node object lists.
    pub fn with_primary_ip(ip: Option<IpAddr>) -> Self {
        Self {
            primary_ip: ip,
            ..Self::default()
        }
    }

    /// An empty state for the node named `name` (known by name only until its Node object
    /// comes), with `primary_ip` as in `with_primary_ip`.
    pub fn for_node(name: &str, primary_ip: Option<IpAddr>) -> Self {
        let mut state = Self::with_primary_ip(primary_ip);
        state.set_node(NodeInfo::named(name));
        state
    }

    /// The state with `lb` deciding which frontends use Maglev. For a state without
    /// Services yet: those already computed keep the choice they were computed with.
    #[must_use]
    pub fn with_lb_policy(mut self, lb: LbPolicy) -> Self {
        debug_assert!(
            self.services.is_empty(),
            "set the policy before any Service"
        );
        self.lb = lb;
        self
    }

    /// Takes `node`; if its name, zone or primary IPs changed every service goes into
    /// `dirty` (locality, hints and source ranges depend on them).
    fn replace_node(&mut self, mut node: NodeInfo, dirty: &mut KeySet<ObjectKey>) {
        if let Some(ip) = self.primary_ip {
            node.make_primary(ip);
        }
        let relevant = |n: &NodeInfo| {
            (
                n.name.clone(),
                n.zone().to_owned(),
                n.primary_ip(false),
                n.primary_ip(true),
            )
        };
        if relevant(&node) != relevant(&self.node) {
            dirty.extend(self.services.keys().cloned());
        }
        self.node = node;
    }

    /// Recomputes the `dirty` services, and those their changes affect.
    fn recompute_all(&mut self, dirty: KeySet<ObjectKey>) -> BTreeSet<FrontendKey> {
        let mut changed = BTreeSet::new();
        let mut queue = Queue::of(&self.services, dirty);
        // In rank order, so services asking for one free frontend in the same batch get it
        // in rank order; freeing a frontend queues the services waiting for it. This ends:
        // a service is queued again only when a frontend it waits for is freed, and a
        // frontend is freed only by a service that changed or went away.
        while let Some(key) = queue.pop() {
            self.recompute(&key, &mut queue, &mut changed);
        }
        self.desired_density.settle(&mut self.desired);
        changed
    }

    /// Every current problem, sorted.
    pub fn problems(&self) -> Vec<Problem> {
        let orphans = self.orphans.iter().map(|(slice, service)| {
            Problem::new(
                ProblemKind::OrphanSlice,
                format!(
                    "labelled for Service {service}, which does not exist; its endpoints are used once it does"
                ),
            )
            .object(format!("EndpointSlice {slice}"))
        });
        let health_conflicts = self.health_by_port().1.into_iter().map(|c| {
            Problem::new(
                ProblemKind::Conflict,
                format!(
                    "healthCheckNodePort {} is already served for Service {}; \
                             no health check for this service until that one stops using it",
                    c.port, c.holder
                ),
            )
            .object(format!("Service {}/{}", c.namespace, c.name))
        });
        let mut all: Vec<Problem> = self
            .problems
            .values()
            .chain(self.slice_problems.values())
            .flatten()
            .cloned()
            .chain(orphans)
            .chain(health_conflicts)
            .collect();
        all.sort_by(|a, b| (&a.object, &a.message).cmp(&(&b.object, &b.message)));
        all.dedup();
        all
    }

    /// Applies `changes` and returns the frontends whose desired state may have changed.
    pub fn apply(&mut self, updates: impl IntoIterator<Item = Change>) -> BTreeSet<FrontendKey> {
        let mut dirty = KeySet::default();
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
                    // The service it was indexed under: its kept form names it.
                    let indexed = self.slices.get(&key).and_then(|s| s.owner.clone());
                    if let Some(old) = indexed {
                        if let Some(set) = self.slices_of.get_mut(&old) {
                            if let Ok(at) = set.binary_search(&key) {
                                set.remove(at);
                            }
                            if set.is_empty() {
                                self.slices_of.remove(&old);
                            }
                        }
                        dirty.insert(old);
                    }
                    self.orphans.remove(&key);
                    self.slice_problems.remove(&key);
                    match slice {
                        Some(mut slice) => {
                            self.share_owner_key(&mut slice);
                            if let Some(owner) = &slice.owner {
                                let set = self.slices_of.entry(owner.clone()).or_default();
                                if let Err(at) = set.binary_search(&key) {
                                    set.insert(at, key.clone());
                                }
                                if !self.services.contains_key(owner) {
                                    self.orphans.insert(key.clone(), owner.clone());
                                }
                                if !slice.problems.is_empty() {
                                    self.slice_problems
                                        .insert(key.clone(), slice.problems.to_vec());
                                }
                                dirty.insert(owner.clone());
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

    /// Points `slice`'s owner at the key the model already holds for that Service, if any:
    /// the slice's own copy would be one allocation more per slice.
    fn share_owner_key(&self, slice: &mut Arc<KeptSlice>) {
        let Some(kept) = Arc::get_mut(slice) else {
            return;
        };
        let Some(owner) = kept.owner.as_ref() else {
            return;
        };
        let held = (self.services.get_key_value(owner).map(|(key, _)| key))
            .or_else(|| self.slices_of.get_key_value(owner).map(|(key, _)| key));
        if let Some(held) = held {
            kept.owner = Some(held.clone());
        }
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
        let computed = match self.services.get(service) {
            Some(svc) => self.frontends_of(service, svc, &mut problems),
            None => Computed {
                frontends: Vec::new(),
                health: None,
            },
        };
        match computed.health {
            Some(health) => self.health.insert(service.clone(), health),
            None => self.health.remove(service),
        };
        let wanted = computed.frontends;
        for key in self.owned.remove(service).unwrap_or_default() {
            // A service has a few frontends: a scan, not a set.
            if wanted.iter().any(|(wanted, _)| *wanted == key) {
                continue;
            }
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
        let mut owned = SmallVec::new();
        for (key, frontend) in wanted {
            // Whoever serves a frontend to every client also serves its entry for clients
            // on this node (`Scope::Internal`, listed right after it), never anyone else.
            let claimed = key.with_scope(Scope::All);
            let other_holder = self
                .holder(&claimed)
                .filter(|holder| *holder != service)
                .map(ToString::to_string);
            if let Some(holder) = other_holder {
                if key.scope == Scope::Internal {
                    continue;
                }
                problems.push(
                    Problem::new(
                        ProblemKind::Conflict,
                        format!(
                            "port {:?}: {key} is already served for Service {holder}, which keeps \
                             it; this port is skipped until that service stops claiming it",
                            frontend.service.port
                        ),
                    )
                    .object(format!("Service {service}")),
                );
                self.waiting.entry(key).or_default().insert(service.clone());
                continue;
            }
            if self.desired.get(&key) != Some(&frontend) {
                if self.desired.insert(key, frontend).is_none() {
                    self.desired_density.inserted();
                }
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

    /// The Service serving frontend `key`: its frontend there names it. A map of owners
    /// beside the frontends held the same at 7 MB per 100,000 of them.
    fn holder(&self, key: &FrontendKey) -> Option<&ObjectKey> {
        self.desired.get(key).map(|f| &f.service.key)
    }

    /// What the slices labelled for `service` say.
    fn slice_infos(&self, service: &ObjectKey) -> Vec<&SliceInfo> {
        self.slices_of
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.get(k).map(|s| &s.info))
            .collect()
    }

    /// The frontends `svc` asks for, with its endpoints from its slices, and its health
    /// check.
    fn frontends_of(
        &self,
        service: &ObjectKey,
        svc: &KeptService,
        problems: &mut Vec<Problem>,
    ) -> Computed {
        problems.extend(svc.problems.iter().cloned());
        let Some(spec) = &svc.spec else {
            return Computed {
                frontends: Vec::new(),
                health: None,
            };
        };
        let slices = self.slice_infos(service);
        let mut out = Vec::new();
        for port in &spec.ports {
            for &cluster_ip in &spec.cluster_ips {
                self.port_frontends(spec, port, cluster_ip, &slices, &mut out);
            }
        }
        for (key, frontend) in &mut out {
            let endpoints = std::mem::take(&mut frontend.endpoints);
            frontend.endpoints = capped(endpoints, key, service, &frontend.service.port, problems);
        }
        // One proxier per family answers health checks in kube-proxy; kproxy answers a
        // port once for both families, with a dual-stack Service's IPv4 endpoints.
        let family = if spec.cluster_ips.iter().any(IpAddr::is_ipv4) {
            Family::V4
        } else {
            Family::V6
        };
        let health = spec
            .health_check_node_port
            .filter(|_| svc.has_ports)
            .map(|port| {
                (
                    port,
                    health::local_ready_endpoints(&slices, family, &self.node.name),
                )
            });
        Computed {
            frontends: out,
            health,
        }
    }

    /// The frontends of `port` of the family of `cluster_ip`: the cluster IP, then the
    /// external IPs, load-balancer IPs and NodePort in the order of kube-proxy's rules (the
    /// first of two with one address wins), each external one twice under the Local
    /// external policy (`Scope::All` with this node's endpoints, `Scope::Internal` with the
    /// cluster-wide ones).
    fn port_frontends(
        &self,
        spec: &ServiceSpec,
        port: &PortSpec,
        cluster_ip: IpAddr,
        slices: &[&SliceInfo],
        out: &mut Vec<(FrontendKey, Frontend)>,
    ) {
        let family = Family::of(cluster_ip);
        let v6 = family == Family::V6;
        let here = Locality {
            node: &self.node.name,
            zone: self.node.zone(),
        };
        let service = ServicePortName {
            key: spec.key.clone(),
            port: port.name.clone(),
        };
        let of_family = |ips: &[IpAddr]| -> Vec<IpAddr> {
            ips.iter().copied().filter(|a| a.is_ipv6() == v6).collect()
        };
        let external_ips = of_family(&spec.external_ips);
        let load_balancer_ips = of_family(&spec.load_balancer_ips);
        // serviceport.go: ExternallyAccessible.
        let accessible =
            port.node_port.is_some() || !external_ips.is_empty() || !load_balancer_ips.is_empty();
        let Chosen {
            cluster,
            local,
            local_when_empty,
            listed,
        } = self.choose(spec, port, family, accessible, slices, &here);
        let frontend =
            |kind, endpoints: &[Endpoint], when_empty, external_local, ranges| Frontend {
                service: service.clone(),
                kind,
                affinity_timeout_s: spec.affinity_timeout_s,
                endpoints: endpoints.to_vec(),
                standby: standby_of(&listed, endpoints),
                when_empty,
                external_local,
                source_ranges: ranges,
                maglev: self.lb.maglev(spec.lb_algorithm, kind),
            };

        // ClusterIP traffic uses the cluster-wide endpoints, or with internalTrafficPolicy
        // Local this node's only.
        let (endpoints, when_empty) = if spec.internal_local {
            (&local, local_when_empty)
        } else {
            (&cluster, WhenEmpty::Reject)
        };
        let first = out.len();
        out.push((
            FrontendKey::new(cluster_ip, port.port, port.proto),
            frontend(
                FrontendKind::ClusterIp,
                endpoints,
                when_empty,
                false,
                Vec::new(),
            ),
        ));

        let at = |a: &IpAddr, kind| (FrontendKey::new(*a, port.port, port.proto), kind);
        let mut external: Vec<(FrontendKey, FrontendKind)> = external_ips
            .iter()
            .map(|a| at(a, FrontendKind::ExternalIp))
            .collect();
        if !spec.source_ranges_unreadable {
            external.extend(
                load_balancer_ips
                    .iter()
                    .map(|a| at(a, FrontendKind::LoadBalancer)),
            );
        }
        external.extend(port.node_port.map(|n| {
            (
                FrontendKey::node_port(v6, n, port.proto),
                FrontendKind::NodePort,
            )
        }));
        for (key, kind) in external {
            if out[first..].iter().any(|(k, _)| *k == key) {
                continue; // an earlier rule of this Service captures it
            }
            let ranges = if kind == FrontendKind::LoadBalancer {
                self.source_ranges(spec, v6, &load_balancer_ips)
            } else {
                Vec::new()
            };
            if spec.external_local {
                out.push((
                    key,
                    frontend(kind, &local, local_when_empty, true, ranges.clone()),
                ));
                out.push((
                    key.with_scope(Scope::Internal),
                    frontend(kind, &cluster, WhenEmpty::Reject, false, ranges),
                ));
            } else {
                out.push((
                    key,
                    frontend(kind, &cluster, WhenEmpty::Reject, false, ranges),
                ));
            }
        }
    }

    /// The endpoints of `port` of `family` each traffic policy uses (kube-proxy's
    /// `CategorizeEndpoints` for what the port uses: `UsesClusterEndpoints`,
    /// `UsesLocalEndpoints`), and every endpoint listed.
    fn choose(
        &self,
        spec: &ServiceSpec,
        port: &PortSpec,
        family: Family,
        accessible: bool,
        slices: &[&SliceInfo],
        here: &Locality<'_>,
    ) -> Chosen {
        let infos = endpoints::endpoints_for(slices, port, family, &self.node.name);
        let uses_cluster = !spec.internal_local || accessible;
        let uses_local = spec.internal_local || (spec.external_local && accessible);
        let picked = categorize(&infos, uses_cluster, uses_local, here);
        Chosen {
            cluster: picked.cluster.unwrap_or_default(),
            local: picked.local.unwrap_or_default(),
            // No endpoint anywhere: REJECT; some, but none this policy may use: DROP.
            local_when_empty: if picked.has_any {
                WhenEmpty::Drop
            } else {
                WhenEmpty::Reject
            },
            listed: infos.iter().map(|i| i.endpoint).collect(),
        }
    }

    /// The sources a load-balancer frontend of the `v6` family accepts: the Service's
    /// loadBalancerSourceRanges of that family (none: every source), plus the
    /// load-balancer IPs themselves when a range holds the node's IP, since a node
    /// connecting to its own load-balancer IP may do so from that IP (kube-proxy's
    /// `allowFromNode`; without a known node IP kube-proxy uses the loopback address).
    fn source_ranges(&self, spec: &ServiceSpec, v6: bool, lb_ips: &[IpAddr]) -> Vec<IpNet> {
        let mut ranges: Vec<IpNet> = spec
            .source_ranges
            .iter()
            .copied()
            .filter(|r| matches!(r, IpNet::V6(_)) == v6)
            .collect();
        if ranges.is_empty() {
            return ranges;
        }
        let node_ip = self.node.primary_ip(v6).unwrap_or(if v6 {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        } else {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        });
        if ranges.iter().any(|r| r.contains(&node_ip)) {
            ranges.extend(lb_ips.iter().map(|&ip| IpNet::from(ip)));
        }
        ranges.sort_unstable();
        ranges.dedup();
        ranges
    }
}

/// The datapath balances over at most `MAX_BACKENDS_PER_SERVICE` backends per frontend
/// (its count is 16 bits). Kubernetes caps a slice at 1,000 endpoints but not a Service's
/// slices; beyond the limit the first endpoints in address order are used, and it is said.
fn capped(
    mut endpoints: Vec<super::Endpoint>,
    key: &FrontendKey,
    service: &ObjectKey,
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
            .object(format!("Service {service}")),
        );
        endpoints.truncate(max);
    }
    endpoints
}

mod explain;
pub use explain::{EndpointChoice, ExplainedEndpoint};

/// The endpoints of `listed` that are not among `endpoints` (both sorted and unique).
fn standby_of(listed: &[Endpoint], endpoints: &[Endpoint]) -> Vec<Endpoint> {
    listed
        .iter()
        .filter(|ep| endpoints.binary_search(ep).is_err())
        .copied()
        .collect()
}

#[cfg(test)]
mod key_sharing_tests {
    use super::*;
    use crate::model::fixtures::{service, slice};

    #[test]
    fn a_slice_names_its_service_with_the_key_the_model_holds() {
        let mut state = ClusterState::default();
        let web = service("shop", "web", "198.19.0.1")
            .port("http", 80, "TCP")
            .build();
        let web_slice = |name: &str| {
            slice("shop", name, "web")
                .port("http", 8080, "TCP")
                .endpoint("198.18.0.2", Some(true))
                .build()
        };
        // The Service first: its key is shared.
        state.apply([Change::service(&web), Change::slice(&web_slice("web-a"))]);
        let (held, _) = state
            .services
            .get_key_value(&ObjectKey::new("shop", "web"))
            .expect("the Service");
        let owner_of = |state: &ClusterState, name: &str| {
            let kept = &state.slices[&ObjectKey::new("shop", name)];
            kept.owner.clone().expect("an owner")
        };
        assert!(owner_of(&state, "web-a").is_shared_with(held));
        // A slice of a Service not seen yet shares the key of the slices before it.
        state.apply([
            Change::slice(&slice("shop", "db-a", "db").build()),
            Change::slice(&slice("shop", "db-b", "db").build()),
        ]);
        assert!(owner_of(&state, "db-a").is_shared_with(&owner_of(&state, "db-b")));
        assert_eq!(state.desired().len(), 1, "the slices feed web's frontend");
    }
}
