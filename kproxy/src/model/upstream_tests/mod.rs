//! kube-proxy's own unit tests (kubernetes/kubernetes `pkg/proxy`), ported case by case onto
//! kproxy's model. Each case names the upstream test and sub-case it follows, builds the same
//! Services and EndpointSlices with the fixtures and asserts the ClusterIP frontends that
//! kube-proxy's expectations imply: endpoints, reject or drop, session affinity, problems.
//!
//! kube-proxy runs one proxier per IP family; kproxy serves both families at once, so a case
//! that upstream runs "in IPv4 mode" shows here as the IPv4 frontends (and an IPv6-only
//! Service as IPv6 frontends, which kube-proxy's IPv6 proxier would serve). NodePort,
//! load-balancer and external IP frontends are checked with their kind, their
//! externalTrafficPolicy Local entries (`Scope::All` with the node's endpoints,
//! `Scope::Internal` with the cluster's) and their source ranges; health-check NodePorts in
//! healthcheck.rs. What is left out is named in each file's header.
//!
//! Upstream sources read (kubernetes/kubernetes, file versions as stored by the search
//! index): `pkg/proxy/topology.go` (the version with `topologyModeFromHints`),
//! `endpointslicecache.go` c2c7d50, `endpointslicecache_test.go` 05e1479,
//! `endpointschangetracker{,_test}.go` f2963ef, `servicechangetracker{,_test}.go`
//! f2963ef/008b365, `serviceport.go` 78fc8e4, `topology_test.go` 6c039d9,
//! `util/utils_test.go` f3c7e72, `nftables/proxier_test.go` 81810de,
//! `ipvs/proxier_test.go` (external IPs), `cmd/kube-proxy/app/server.go` (informer
//! label selectors), `serviceport.go` 5ce2290
//! (`newBaseServiceInfo` with load-balancer IP modes), `api/v1/service/util.go`
//! (`ExternallyAccessible`, `ExternalPolicyLocal`, `NeedsHealthCheck`),
//! `endpointschangetracker.go` (`LocalReadyEndpoints`), `topology_test.go` 0275699
//! (`localEndpoints` expectations).

mod endpointschangetracker;
mod endpointslicecache;
mod healthcheck;
mod proxier;
mod servicechangetracker;
mod serviceport;
mod topology;
mod utils;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use ipnet::IpNet;
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use super::{
    Change, ClusterState, Desired, Endpoint, FrontendKey, FrontendKind, LABEL_ZONE, NodeInfo,
    Protocol, Scope, WhenEmpty, desired_state_on,
    fixtures::{service, slice},
    object_key,
};
use crate::problem::ProblemKind;

pub const TCP: Protocol = Protocol::Tcp;
pub const UDP: Protocol = Protocol::Udp;

/// One frontend as a test expects it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Want {
    pub key: FrontendKey,
    pub kind: FrontendKind,
    /// Sorted, as kproxy keeps them.
    pub endpoints: Vec<Endpoint>,
    pub when_empty: WhenEmpty,
    pub affinity: Option<u32>,
    pub external_local: bool,
    /// Sorted.
    pub source_ranges: Vec<IpNet>,
}

fn endpoint(s: &str) -> Endpoint {
    let addr: SocketAddr = s
        .parse()
        .unwrap_or_else(|e| panic!("test endpoint {s:?}: {e}"));
    Endpoint {
        addr: addr.ip(),
        port: addr.port(),
    }
}

fn ip(addr: &str) -> IpAddr {
    addr.parse()
        .unwrap_or_else(|e| panic!("test address {addr:?}: {e}"))
}

fn want(key: FrontendKey, kind: FrontendKind) -> Want {
    Want {
        key,
        kind,
        endpoints: Vec::new(),
        when_empty: WhenEmpty::Reject,
        affinity: None,
        external_local: false,
        source_ranges: Vec::new(),
    }
}

/// The ClusterIP frontend `addr:port/proto`, without endpoints, rejecting new connections
/// (REJECT is what kube-proxy does for a service port with no endpoints anywhere).
pub fn fe(addr: &str, port: u16, proto: Protocol) -> Want {
    want(
        FrontendKey::new(ip(addr), port, proto),
        FrontendKind::ClusterIp,
    )
}

/// The external IP frontend `addr:port/proto` (as `fe`).
pub fn ext(addr: &str, port: u16, proto: Protocol) -> Want {
    want(
        FrontendKey::new(ip(addr), port, proto),
        FrontendKind::ExternalIp,
    )
}

/// The load-balancer IP frontend `addr:port/proto` (as `fe`).
pub fn lb(addr: &str, port: u16, proto: Protocol) -> Want {
    want(
        FrontendKey::new(ip(addr), port, proto),
        FrontendKind::LoadBalancer,
    )
}

/// The IPv4 NodePort `port/proto` (as `fe`).
pub fn np(port: u16, proto: Protocol) -> Want {
    want(
        FrontendKey::node_port(false, port, proto),
        FrontendKind::NodePort,
    )
}

/// The IPv6 NodePort `port/proto` (as `fe`).
pub fn np6(port: u16, proto: Protocol) -> Want {
    want(
        FrontendKey::node_port(true, port, proto),
        FrontendKind::NodePort,
    )
}

impl Want {
    /// Endpoints as upstream writes them (`10.0.1.1:80`, `[fd00::1]:80`), in any order.
    pub fn eps(mut self, list: &[&str]) -> Self {
        self.endpoints = list.iter().map(|s| endpoint(s)).collect();
        self.endpoints.sort();
        self
    }

    /// Without usable endpoints new connections are dropped, not rejected (kube-proxy's
    /// "has no local endpoints" DROP rule).
    pub fn drop(mut self) -> Self {
        self.when_empty = WhenEmpty::Drop;
        self
    }

    pub fn affinity(mut self, timeout_s: u32) -> Self {
        self.affinity = Some(timeout_s);
        self
    }

    /// The `Scope::All` entry of an externalTrafficPolicy Local frontend (endpoints: this
    /// node's).
    pub fn local(mut self) -> Self {
        self.external_local = true;
        self
    }

    /// The `Scope::Internal` entry of the same frontend (clients on this node).
    pub fn internal(mut self) -> Self {
        self.key.scope = Scope::Internal;
        self
    }

    /// Source ranges (CIDRs; a bare address is a host route), in any order.
    pub fn ranges(mut self, list: &[&str]) -> Self {
        self.source_ranges = list
            .iter()
            .map(|r| {
                r.parse::<IpNet>()
                    .or_else(|_| r.parse::<IpAddr>().map(IpNet::from))
                    .unwrap_or_else(|e| panic!("test range {r:?}: {e}"))
            })
            .collect();
        self.source_ranges.sort();
        self
    }
}

/// What `desired` holds, in the form of `Want`.
pub fn observed(desired: &Desired) -> Vec<Want> {
    desired
        .iter()
        .map(|(key, f)| Want {
            key: *key,
            kind: f.kind,
            endpoints: f.endpoints.clone(),
            when_empty: f.when_empty,
            affinity: f.affinity_timeout_s,
            external_local: f.external_local,
            source_ranges: f.source_ranges.clone(),
        })
        .collect()
}

fn sorted(mut want: Vec<Want>) -> Vec<Want> {
    want.sort_by_key(|w| w.key);
    want
}

/// A node without labels.
pub fn node(name: &str) -> NodeInfo {
    NodeInfo::named(name)
}

/// A node whose InternalIP is `ip` (kube-proxy's node IP).
pub fn node_with_ip(name: &str, ip: &str) -> NodeInfo {
    let mut node = NodeInfo::named(name);
    node.addresses.push(self::ip(ip));
    node
}

/// A node labelled with `topology.kubernetes.io/zone`.
pub fn node_in_zone(name: &str, zone: &str) -> NodeInfo {
    let mut node = NodeInfo::named(name);
    node.labels.insert(LABEL_ZONE.into(), zone.into());
    node
}

/// One upstream case: these objects on this node give these frontends and problems.
#[derive(Default)]
pub struct Case {
    /// `file_test.go TestName/sub-case`.
    pub name: &'static str,
    pub node: NodeInfo,
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    /// Every frontend, in any order (frontends not listed must not exist).
    pub want: Vec<Want>,
    /// Problem kinds reported, in any order.
    pub problems: Vec<ProblemKind>,
}

pub fn check(cases: Vec<Case>) {
    assert!(!cases.is_empty());
    for case in cases {
        let (desired, problems) = desired_state_on(&case.node, &case.services, &case.slices);
        let problems = without_orphans(problems);
        assert_eq!(
            observed(&desired),
            sorted(case.want),
            "case {}: frontends",
            case.name
        );
        let mut kinds: Vec<ProblemKind> = problems.iter().map(|p| p.kind).collect();
        kinds.sort();
        let mut want_kinds = case.problems;
        want_kinds.sort();
        assert_eq!(
            kinds, want_kinds,
            "case {}: problems {problems:#?}",
            case.name
        );
    }
}

/// One change of a step-by-step (informer event) test.
#[expect(
    clippy::large_enum_variant,
    reason = "a handful of short-lived test values"
)]
pub enum Op {
    Service(Service),
    DeleteService(&'static str, &'static str),
    Slice(EndpointSlice),
    DeleteSlice(&'static str, &'static str),
}

impl Op {
    fn change(self) -> Change {
        let key = super::ObjectKey::new;
        match self {
            Self::Service(s) => Change::service(&s),
            Self::DeleteService(ns, name) => Change::Service(key(ns, name), None),
            Self::Slice(s) => Change::slice(&s),
            Self::DeleteSlice(ns, name) => Change::Slice(key(ns, name), None),
        }
    }
}

/// After `ops` are applied (in one sync), the frontends are `want`.
pub struct Step {
    pub name: &'static str,
    pub ops: Vec<Op>,
    pub want: Vec<Want>,
}

/// Applies the steps one after the other to one `ClusterState` on `node`, checking the
/// frontends after each and that every frontend that changed was reported as changed.
pub fn run_steps(test: &str, node: NodeInfo, steps: Vec<Step>) {
    let mut state = ClusterState::default();
    state.set_node(node);
    for step in steps {
        let before = state.desired().clone();
        let changed = state.apply(step.ops.into_iter().map(Op::change));
        assert_eq!(
            observed(state.desired()),
            sorted(step.want),
            "{test}, step {:?}: frontends",
            step.name
        );
        assert_changes_reported(&before, state.desired(), &changed, test, step.name);
    }
}

fn assert_changes_reported(
    before: &Desired,
    after: &Desired,
    changed: &BTreeSet<FrontendKey>,
    test: &str,
    step: &str,
) {
    for key in before.keys().chain(after.keys()) {
        if before.get(key) != after.get(key) {
            assert!(
                changed.contains(key),
                "{test}, step {step:?}: {key} changed but was not reported"
            );
        }
    }
}

// ---- Upstream EndpointsMap expectations ----------------------------------------------------
//
// kube-proxy's endpointslicecache and endpointschangetracker tests expect an `EndpointsMap`:
// for each ServicePortName, every endpoint with its isLocal/ready/serving/terminating flags.
// kproxy has no such intermediate map, so these cases are checked through the frontends it
// implies. Each case gets one Service per namespace/name it mentions, with one port per
// ServicePortName, and is run twice:
// - internalTrafficPolicy Cluster: the frontend has the Ready endpoints, or when there are
//   none the serving-and-terminating ones, and rejects when it has none;
// - internalTrafficPolicy Local on the case's node: the same choice among the local
//   endpoints (`isLocal`), dropping when only endpoints elsewhere could serve.
// That is CategorizeEndpoints (pkg/proxy/topology.go) without hints, so `isLocal` and every
// condition flag of the expectation is checked.

/// One endpoint of an upstream `EndpointsMap` expectation (a `BaseEndpointInfo`).
#[derive(Clone, Debug)]
pub struct Info {
    pub endpoint: String,
    pub local: bool,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

/// A ready endpoint (`ready: true, serving: true, terminating: false`).
pub fn info(endpoint: &str, local: bool) -> Info {
    Info {
        endpoint: endpoint.to_owned(),
        local,
        ready: true,
        serving: true,
        terminating: false,
    }
}

impl Info {
    /// Sets `ready`, `serving`, `terminating`.
    pub fn cond(mut self, ready: bool, serving: bool, terminating: bool) -> Self {
        self.ready = ready;
        self.serving = serving;
        self.terminating = terminating;
        self
    }

    /// `ready: false, serving: false, terminating: false`.
    pub fn unready(self) -> Self {
        self.cond(false, false, false)
    }

    /// `ready: false, serving: true, terminating: true`.
    pub fn serving_terminating(self) -> Self {
        self.cond(false, true, true)
    }
}

/// The endpoints one ServicePortName maps to (`makeServicePortName(ns, name, port, proto)`).
pub struct PortEndpoints {
    pub namespace: &'static str,
    pub service: &'static str,
    pub port: &'static str,
    pub proto: Protocol,
    pub infos: Vec<Info>,
}

pub fn spn(
    namespace: &'static str,
    service: &'static str,
    port: &'static str,
    proto: Protocol,
    infos: Vec<Info>,
) -> PortEndpoints {
    PortEndpoints {
        namespace,
        service,
        port,
        proto,
        infos,
    }
}

/// The Services behind an endpoints-map case: `(namespace, name)` → its ports (name,
/// protocol). Service `i` (in order) gets ClusterIP `172.30.<i+1>.1`, its port `j` the
/// number `1000 + j`.
pub struct MapServices(pub Vec<ServicePorts>);

/// `(namespace, name, [(port name, protocol)])`.
pub type ServicePorts = (&'static str, &'static str, Vec<(&'static str, Protocol)>);

impl MapServices {
    /// The Services the ServicePortNames of `maps` name, in order of first mention.
    pub fn from_maps(maps: &[&[PortEndpoints]]) -> Self {
        let mut services: Vec<ServicePorts> = Vec::new();
        for e in maps.iter().copied().flatten() {
            let i = match services
                .iter()
                .position(|(ns, name, _)| (*ns, *name) == (e.namespace, e.service))
            {
                Some(i) => i,
                None => {
                    services.push((e.namespace, e.service, Vec::new()));
                    services.len() - 1
                }
            };
            let ports = &mut services[i].2;
            if !ports.contains(&(e.port, e.proto)) {
                ports.push((e.port, e.proto));
            }
        }
        Self(services)
    }

    fn cluster_ip(i: usize) -> String {
        format!("172.30.{}.1", i + 1)
    }

    fn port_number(j: usize) -> u16 {
        1000 + u16::try_from(j).expect("few ports")
    }

    fn build(&self, local: bool) -> Vec<Service> {
        self.0
            .iter()
            .enumerate()
            .map(|(i, (ns, name, ports))| {
                let mut b = service(ns, name, &Self::cluster_ip(i));
                for (j, (port, proto)) in ports.iter().enumerate() {
                    b = b.port(port, i32::from(Self::port_number(j)), &proto.to_string());
                }
                if local {
                    b = b.internal_traffic_policy("Local");
                }
                b.build()
            })
            .collect()
    }

    /// The frontends `expected` implies under the Cluster (`local` false) or Local policy.
    fn expect(&self, expected: &[PortEndpoints], local: bool, case: &str) -> Vec<Want> {
        let mut by_port: BTreeMap<(&str, &str, &str, Protocol), &[Info]> = BTreeMap::new();
        for e in expected {
            by_port.insert((e.namespace, e.service, e.port, e.proto), &e.infos);
        }
        let mut want = Vec::new();
        for (i, (ns, name, ports)) in self.0.iter().enumerate() {
            for (j, (port, proto)) in ports.iter().enumerate() {
                let infos = by_port
                    .remove(&(*ns, *name, *port, *proto))
                    .unwrap_or_default();
                let (endpoints, when_empty) = categorize(infos, local);
                let mut w = fe(&Self::cluster_ip(i), Self::port_number(j), *proto).eps(&endpoints);
                w.when_empty = when_empty;
                want.push(w);
            }
        }
        assert!(
            by_port.is_empty(),
            "case {case}: expectation names ports no Service has: {:?}",
            by_port.keys()
        );
        want
    }
}

/// kube-proxy's choice of ClusterIP endpoints from an endpoints-map entry (see above).
fn categorize(infos: &[Info], local: bool) -> (Vec<&str>, WhenEmpty) {
    let pick = |keep: &dyn Fn(&Info) -> bool| -> Vec<&str> {
        infos
            .iter()
            .filter(|i| keep(i))
            .map(|i| i.endpoint.as_str())
            .collect()
    };
    let usable = |i: &Info| i.ready || (i.serving && i.terminating);
    if local {
        let mut eps = pick(&|i| i.local && i.ready);
        if eps.is_empty() {
            eps = pick(&|i| i.local && i.serving && i.terminating);
        }
        let when_empty = if infos.iter().any(usable) {
            WhenEmpty::Drop
        } else {
            WhenEmpty::Reject
        };
        (eps, when_empty)
    } else {
        let mut eps = pick(&|i| i.ready);
        if eps.is_empty() {
            eps = pick(&|i| i.serving && i.terminating);
        }
        (eps, WhenEmpty::Reject)
    }
}

/// Upstream tests feed slices whose Service is not there (kube-proxy caches them until it
/// is, silently); kproxy reports those as orphans, which these ported cases do not expect.
fn without_orphans(problems: Vec<crate::problem::Problem>) -> Vec<crate::problem::Problem> {
    problems
        .into_iter()
        .filter(|p| p.kind != ProblemKind::OrphanSlice)
        .collect()
}

/// `slices` (applied in order, a later slice of the same name replacing an earlier one, as
/// kube-proxy's cache does) give the `expected` endpoints map on `node`.
pub fn check_map(
    case: &str,
    node: &str,
    services: &MapServices,
    slices: &[EndpointSlice],
    expected: &[PortEndpoints],
) {
    for local in [false, true] {
        let policy = if local { "Local" } else { "Cluster" };
        let (desired, problems) =
            desired_state_on(&self::node(node), &services.build(local), slices);
        let problems = without_orphans(problems);
        assert_eq!(
            observed(&desired),
            sorted(services.expect(expected, local, case)),
            "case {case} (internalTrafficPolicy {policy})"
        );
        assert!(
            problems.is_empty(),
            "case {case} (internalTrafficPolicy {policy}): {problems:#?}"
        );
    }
}

/// An endpoints-map update case: `previous` slices give `previous_map`; then each slot goes
/// from `previous[i]` to `current[i]` (added, updated or deleted) and gives `expected`.
pub struct Transition {
    pub name: &'static str,
    pub previous: Vec<Option<EndpointSlice>>,
    pub current: Vec<Option<EndpointSlice>>,
    /// What `previous` gives, when upstream states it.
    pub previous_map: Option<Vec<PortEndpoints>>,
    pub expected: Vec<PortEndpoints>,
}

pub fn check_transition(node: &str, services: &MapServices, t: &Transition) {
    assert_eq!(t.previous.len(), t.current.len(), "case {}", t.name);
    for local in [false, true] {
        let policy = if local { "Local" } else { "Cluster" };
        let mut state = ClusterState::default();
        state.set_node(self::node(node));
        state.apply(
            services
                .build(local)
                .into_iter()
                .map(|s| Op::Service(s).change()),
        );
        state.apply(
            t.previous
                .iter()
                .flatten()
                .map(|s| Op::Slice(s.clone()).change()),
        );
        if let Some(previous_map) = &t.previous_map {
            assert_eq!(
                observed(state.desired()),
                sorted(services.expect(previous_map, local, t.name)),
                "case {} (internalTrafficPolicy {policy}): before",
                t.name
            );
        }
        let before = state.desired().clone();
        let changes: Vec<Change> = t
            .previous
            .iter()
            .zip(&t.current)
            .filter_map(|(prev, curr)| match (prev, curr) {
                (_, Some(curr)) => Some(Op::Slice(curr.clone()).change()),
                (Some(prev), None) => Some(Change::Slice(object_key(&prev.metadata), None)),
                (None, None) => None,
            })
            .collect();
        let reported = state.apply(changes);
        assert_eq!(
            observed(state.desired()),
            sorted(services.expect(&t.expected, local, t.name)),
            "case {} (internalTrafficPolicy {policy}): after",
            t.name
        );
        assert_changes_reported(&before, state.desired(), &reported, t.name, policy);
        let problems = without_orphans(state.problems());
        assert!(problems.is_empty(), "case {}: {problems:#?}", t.name);
    }
}

/// `generateEndpointSliceWithOffset` of endpointslicecache_test.go, with kproxy's
/// builders: slice `<service>-<slice_num>` with endpoints `10.0.<offset>.<i>` for i in
/// 1..=n, unready when `i % unready_mod == 0`, terminating when `i % terminating_mod == 0`
/// (ready only when neither; serving when not unready), on node `hosts[i % hosts.len()]`
/// when hosts are given, and TCP ports `port-<k>` numbered `ports[k]`.
#[expect(clippy::too_many_arguments, reason = "mirrors the upstream helper")]
pub fn generate_slice_with_offset(
    service_name: &str,
    namespace: &str,
    slice_num: u32,
    offset: u32,
    n: u32,
    unready_mod: u32,
    terminating_mod: u32,
    hosts: &[&str],
    ports: &[Option<i32>],
) -> EndpointSlice {
    let mut b = slice(
        namespace,
        &format!("{service_name}-{slice_num}"),
        service_name,
    );
    for (k, port) in ports.iter().enumerate() {
        b = b.port_raw(Some(&format!("port-{k}")), *port, "TCP");
    }
    for i in 1..=n {
        let ready = i % unready_mod != 0;
        let terminating = i % terminating_mod == 0;
        b = b.endpoint(&format!("10.0.{offset}.{i}"), None).conditions(
            Some(ready && !terminating),
            Some(ready),
            Some(terminating),
        );
        if !hosts.is_empty() {
            b = b.node(hosts[usize::try_from(i).expect("small") % hosts.len()]);
        }
    }
    b.build()
}

/// `generateEndpointSlice`: offset = slice number.
#[expect(clippy::too_many_arguments, reason = "mirrors the upstream helper")]
pub fn generate_slice(
    service_name: &str,
    namespace: &str,
    slice_num: u32,
    n: u32,
    unready_mod: u32,
    terminating_mod: u32,
    hosts: &[&str],
    ports: &[Option<i32>],
) -> EndpointSlice {
    generate_slice_with_offset(
        service_name,
        namespace,
        slice_num,
        slice_num,
        n,
        unready_mod,
        terminating_mod,
        hosts,
        ports,
    )
}
