//! Table-driven tests of the Service → frontend semantics.

use super::{
    Desired, Endpoint, FrontendKey, LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME, Protocol, Scope,
    desired_state,
    fixtures::{service, slice},
};
use crate::problem::ProblemKind;

fn key(addr: &str, port: u16, proto: Protocol) -> FrontendKey {
    FrontendKey::new(addr.parse().expect("test address"), port, proto)
}

fn eps(list: &[(&str, u16)]) -> Vec<Endpoint> {
    list.iter()
        .map(|(a, p)| Endpoint {
            addr: a.parse().expect("test address"),
            port: *p,
        })
        .collect()
}

/// Frontend → (endpoints, affinity) in a form easy to write in tables.
fn summary(desired: &Desired) -> Vec<(FrontendKey, Vec<Endpoint>, Option<u32>)> {
    desired
        .iter()
        .map(|(k, f)| (*k, f.endpoints.clone(), f.affinity_timeout_s))
        .collect()
}

struct Case {
    name: &'static str,
    services: Vec<k8s_openapi::api::core::v1::Service>,
    slices: Vec<k8s_openapi::api::discovery::v1::EndpointSlice>,
    want: Vec<(FrontendKey, Vec<Endpoint>, Option<u32>)>,
    /// Problem kinds expected, in order of (object, message).
    problems: Vec<ProblemKind>,
}

const TCP: Protocol = Protocol::Tcp;
const UDP: Protocol = Protocol::Udp;

fn web_slice() -> super::fixtures::SliceBuilder {
    slice("default", "web-abc", "web").port("http", 8080, "TCP")
}

#[test]
#[expect(clippy::too_many_lines, reason = "one table of cases")]
fn services_and_slices_become_frontends() {
    let cases = vec![
        Case {
            name: "ClusterIP with three ready endpoints, sorted",
            services: vec![
                service("default", "web", "198.19.0.10")
                    .port("http", 80, "TCP")
                    .build(),
            ],
            slices: vec![
                web_slice()
                    .endpoint("198.18.4.2", Some(true))
                    .endpoint("198.18.2.2", Some(true))
                    .endpoint("198.18.3.2", None)
                    .build(),
            ],
            want: vec![(
                key("198.19.0.10", 80, TCP),
                eps(&[
                    ("198.18.2.2", 8080),
                    ("198.18.3.2", 8080),
                    ("198.18.4.2", 8080),
                ]),
                None,
            )],
            problems: vec![],
        },
        Case {
            name: "not-ready endpoints are left out; nil ready counts as ready",
            services: vec![
                service("default", "web", "198.19.0.10")
                    .port("http", 80, "TCP")
                    .build(),
            ],
            slices: vec![
                web_slice()
                    .endpoint("198.18.2.2", Some(false))
                    .endpoint("198.18.3.2", None)
                    .build(),
            ],
            want: vec![(
                key("198.19.0.10", 80, TCP),
                eps(&[("198.18.3.2", 8080)]),
                None,
            )],
            problems: vec![],
        },
        Case {
            name: "no slices at all: frontend without endpoints (reject)",
            services: vec![
                service("default", "web", "198.19.0.10")
                    .port("http", 80, "TCP")
                    .build(),
            ],
            slices: vec![],
            want: vec![(key("198.19.0.10", 80, TCP), vec![], None)],
            problems: vec![],
        },
        Case {
            name: "headless, empty clusterIP and ExternalName services are skipped",
            services: vec![
                service("default", "headless", "None")
                    .port("http", 80, "TCP")
                    .build(),
                service("default", "empty", "")
                    .port("http", 80, "TCP")
                    .build(),
                service("default", "ext", "198.19.0.11")
                    .type_("ExternalName")
                    .port("http", 80, "TCP")
                    .build(),
            ],
            slices: vec![],
            want: vec![],
            problems: vec![],
        },
        Case {
            name: "service-proxy-name label hands the service to another proxy",
            services: vec![
                service("default", "web", "198.19.0.10")
                    .label(LABEL_SERVICE_PROXY_NAME, "other")
                    .port("http", 80, "TCP")
                    .build(),
            ],
            slices: vec![],
            want: vec![],
            problems: vec![],
        },
        Case {
            name: "the DNAT port is the slice port of the same name, never targetPort",
            services: vec![
                service("default", "web", "198.19.0.10")
                    .port("http", 80, "TCP")
                    .port("metrics", 9090, "TCP")
                    .build(),
            ],
            slices: vec![
                slice("default", "web-abc", "web")
                    .port("metrics", 9100, "TCP")
                    .port("http", 8080, "TCP")
                    .endpoint("198.18.2.2", Some(true))
                    .build(),
            ],
            want: vec![
                (
                    key("198.19.0.10", 80, TCP),
                    eps(&[("198.18.2.2", 8080)]),
                    None,
                ),
                (
                    key("198.19.0.10", 9090, TCP),
                    eps(&[("198.18.2.2", 9100)]),
                    None,
                ),
            ],
            problems: vec![],
        },
        Case {
            name: "ports are matched by name and protocol",
            services: vec![
                service("kube-system", "dns", "198.19.0.53")
                    .port("dns", 53, "UDP")
                    .port("dns-tcp", 53, "TCP")
                    .build(),
            ],
            slices: vec![
                slice("kube-system", "dns-1", "dns")
                    .port("dns", 5353, "TCP") // same name, other protocol: no match
                    .port("dns-tcp", 5353, "TCP")
                    .endpoint("198.18.2.2", Some(true))
                    .build(),
            ],
            want: vec![
                (
                    key("198.19.0.53", 53, TCP),
                    eps(&[("198.18.2.2", 5353)]),
                    None,
                ),
                (key("198.19.0.53", 53, UDP), vec![], None),
            ],
            problems: vec![],
        },
        Case {
            name: "unnamed single port matches the unnamed slice port",
            services: vec![
                service("default", "web", "198.19.0.10")
                    .port("", 80, "TCP")
                    .build(),
            ],
            slices: vec![
                slice("default", "web-1", "web")
                    .port("", 8080, "TCP")
                    .endpoint("198.18.2.2", Some(true))
                    .build(),
            ],
            want: vec![(
                key("198.19.0.10", 80, TCP),
                eps(&[("198.18.2.2", 8080)]),
                None,
            )],
            problems: vec![],
        },
        Case {
            name: "several slices are merged and duplicates removed; ready in any slice wins",
            services: vec![
                service("default", "web", "198.19.0.10")
                    .port("http", 80, "TCP")
                    .build(),
            ],
            slices: vec![
                slice("default", "web-1", "web")
                    .port("http", 8080, "TCP")
                    .endpoint("198.18.2.2", Some(true))
                    .endpoint("198.18.3.2", Some(false))
                    .build(),
                slice("default", "web-2", "web")
                    .port("http", 8080, "TCP")
                    .endpoint("198.18.2.2", Some(true))
                    .endpoint("198.18.3.2", Some(true))
                    .build(),
            ],
            want: vec![(
                key("198.19.0.10", 80, TCP),
                eps(&[("198.18.2.2", 8080), ("198.18.3.2", 8080)]),
                None,
            )],
            problems: vec![],
        },
        Case {
            name: "slices of other services, namespaces, headless or unlabelled are ignored",
            services: vec![
                service("default", "web", "198.19.0.10")
                    .port("http", 80, "TCP")
                    .build(),
            ],
            slices: vec![
                slice("other", "web-1", "web")
                    .port("http", 8080, "TCP")
                    .endpoint("198.18.2.2", Some(true))
                    .build(),
                slice("default", "api-1", "api")
                    .port("http", 8080, "TCP")
                    .endpoint("198.18.3.2", Some(true))
                    .build(),
                web_slice()
                    .label(LABEL_HEADLESS, "")
                    .endpoint("198.18.4.2", Some(true))
                    .build(),
                web_slice()
                    .without_service_label()
                    .endpoint("198.18.5.2", Some(true))
                    .build(),
            ],
            want: vec![(key("198.19.0.10", 80, TCP), vec![], None)],
            // other/web and default/api do not exist: their slices are orphans.
            problems: vec![ProblemKind::OrphanSlice; 2],
        },
        Case {
            name: "dual-stack: each family's cluster IP gets its family's slices; FQDN slices feed none",
            services: vec![
                service("default", "web", "198.19.0.10")
                    .cluster_ips(&["198.19.0.10", "2001:db8::10"])
                    .port("http", 80, "TCP")
                    .build(),
            ],
            slices: vec![
                slice("default", "web-v4", "web")
                    .port("http", 8080, "TCP")
                    .endpoint("198.18.2.2", Some(true))
                    .build(),
                slice("default", "web-v6", "web")
                    .port("http", 8080, "TCP")
                    .address_type("IPv6")
                    .endpoint("2001:db8::2", Some(true))
                    .build(),
                slice("default", "web-fqdn", "web")
                    .port("http", 8080, "TCP")
                    .address_type("FQDN")
                    .endpoint("example.test", Some(true))
                    .build(),
            ],
            want: vec![
                (
                    key("198.19.0.10", 80, TCP),
                    eps(&[("198.18.2.2", 8080)]),
                    None,
                ),
                (
                    key("2001:db8::10", 80, TCP),
                    eps(&[("2001:db8::2", 8080)]),
                    None,
                ),
            ],
            problems: vec![],
        },
        Case {
            name: "addresses with leading zeros read as decimal",
            services: vec![
                service("default", "web", "198.019.000.010")
                    .port("http", 80, "TCP")
                    .build(),
            ],
            slices: vec![web_slice().endpoint("198.018.002.002", Some(true)).build()],
            want: vec![(
                key("198.19.0.10", 80, TCP),
                eps(&[("198.18.2.2", 8080)]),
                None,
            )],
            problems: vec![],
        },
        Case {
            name: "ClientIP affinity: default timeout, explicit timeout, invalid timeout",
            services: vec![
                service("default", "a", "198.19.0.1")
                    .client_ip_affinity(None)
                    .port("", 80, "TCP")
                    .build(),
                service("default", "b", "198.19.0.2")
                    .client_ip_affinity(Some(60))
                    .port("", 80, "TCP")
                    .build(),
                service("default", "c", "198.19.0.3")
                    .client_ip_affinity(Some(0))
                    .port("", 80, "TCP")
                    .build(),
            ],
            slices: vec![],
            want: vec![
                (key("198.19.0.1", 80, TCP), vec![], Some(10_800)),
                (key("198.19.0.2", 80, TCP), vec![], Some(60)),
                (key("198.19.0.3", 80, TCP), vec![], Some(10_800)),
            ],
            problems: vec![ProblemKind::InvalidService],
        },
        Case {
            name: "an invalid cluster IP skips that service only",
            services: vec![
                service("default", "bad", "198.19.0.300")
                    .port("", 80, "TCP")
                    .build(),
                service("default", "good", "198.19.0.2")
                    .port("", 80, "TCP")
                    .build(),
            ],
            slices: vec![],
            want: vec![(key("198.19.0.2", 80, TCP), vec![], None)],
            problems: vec![ProblemKind::InvalidService],
        },
        Case {
            name: "invalid ports and SCTP are skipped, other ports stay",
            services: vec![
                service("default", "web", "198.19.0.10")
                    .port("zero", 0, "TCP")
                    .port("big", 70_000, "TCP")
                    .port("sctp", 80, "SCTP")
                    .port("http", 80, "TCP")
                    .build(),
            ],
            slices: vec![],
            want: vec![(key("198.19.0.10", 80, TCP), vec![], None)],
            problems: vec![ProblemKind::InvalidService; 3],
        },
        Case {
            name: "an invalid endpoint address skips that endpoint only",
            services: vec![
                service("default", "web", "198.19.0.10")
                    .port("http", 80, "TCP")
                    .build(),
            ],
            slices: vec![
                web_slice()
                    .endpoint("198.18.2.999", Some(true))
                    .endpoint("198.18.3.2", Some(true))
                    .build(),
            ],
            want: vec![(
                key("198.19.0.10", 80, TCP),
                eps(&[("198.18.3.2", 8080)]),
                None,
            )],
            problems: vec![ProblemKind::InvalidEndpoint],
        },
        Case {
            name: "two services on one VIP:port in one batch: the first by namespace/name wins",
            services: vec![
                service("default", "zeta", "198.19.0.10")
                    .port("", 80, "TCP")
                    .build(),
                service("default", "alpha", "198.19.0.10")
                    .port("", 80, "TCP")
                    .build(),
            ],
            slices: vec![
                slice("default", "alpha-1", "alpha")
                    .port("", 8080, "TCP")
                    .endpoint("198.18.2.2", Some(true))
                    .build(),
            ],
            want: vec![(
                key("198.19.0.10", 80, TCP),
                eps(&[("198.18.2.2", 8080)]),
                None,
            )],
            problems: vec![ProblemKind::Conflict],
        },
    ];

    for case in cases {
        let (desired, problems) = desired_state(&case.services, &case.slices);
        assert_eq!(summary(&desired), case.want, "case: {}", case.name);
        let kinds: Vec<ProblemKind> = problems.iter().map(|p| p.kind).collect();
        assert_eq!(
            kinds, case.problems,
            "case: {}: problems {problems:#?}",
            case.name
        );
        for p in &problems {
            assert!(
                p.object.is_some(),
                "case {}: problem names its object: {p}",
                case.name
            );
        }
    }
}

#[test]
fn frontends_name_their_service_port() {
    let (desired, _) = desired_state(
        &[service("shop", "cart", "198.19.0.10")
            .port("http", 80, "TCP")
            .build()],
        &[],
    );
    let frontend = desired.values().next().expect("one frontend");
    assert_eq!(frontend.service.to_string(), "shop/cart:http");
}

/// Applying changes one at a time, whatever the order (conflicts, relabelled slices,
/// deletions included): a frontend nobody else claims is exactly what a full recompute gives;
/// a contested one is served for one of its claimants, and for the same one as before as
/// long as that one still claims it (a newcomer never takes a frontend over); every other
/// claimant reports the conflict.
#[test]
#[expect(clippy::too_many_lines, reason = "one randomised scenario")]
fn incremental_updates_match_a_full_recompute_and_holders_keep_their_frontends() {
    use std::collections::{BTreeMap, BTreeSet};

    use super::{Change, ClusterState, ObjectKey, object_key};

    let services = [
        service("default", "a", "198.19.0.1")
            .port("http", 80, "TCP")
            .build(),
        service("default", "a", "198.19.0.1")
            .port("http", 80, "TCP")
            .client_ip_affinity(Some(30))
            .build(),
        service("default", "b", "198.19.0.2")
            .port("http", 80, "TCP")
            .port("dns", 53, "UDP")
            .build(),
        // Same VIP:port as "a": conflicts that move as services come and go.
        service("default", "c", "198.19.0.1")
            .port("web", 80, "TCP")
            .build(),
        service("other", "a", "198.19.0.1")
            .port("http", 80, "TCP")
            .build(),
        service("default", "b", "None")
            .port("http", 80, "TCP")
            .build(),
        // "b" moving onto "a"'s frontend, and back off it.
        service("default", "b", "198.19.0.1")
            .port("http", 80, "TCP")
            .build(),
        // External frontends: "d" asks for "a"'s VIP:port as an external IP under the
        // Local policy (two entries that go together), and a NodePort that "e" wants too.
        service("default", "d", "198.19.0.4")
            .type_("NodePort")
            .port("http", 80, "TCP")
            .node_port(30080)
            .external_ips(&["198.19.0.1"])
            .external_traffic_policy("Local")
            .build(),
        service("default", "d", "198.19.0.4")
            .type_("NodePort")
            .port("http", 80, "TCP")
            .node_port(30080)
            .build(),
        service("default", "e", "198.19.0.5")
            .type_("NodePort")
            .port("http", 80, "TCP")
            .node_port(30080)
            .external_traffic_policy("Local")
            .build(),
    ];
    let slices = [
        slice("default", "s1", "a")
            .port("http", 8080, "TCP")
            .endpoint("198.18.2.2", None)
            .build(),
        slice("default", "s1", "b")
            .port("http", 8080, "TCP")
            .endpoint("198.18.3.2", None)
            .build(),
        slice("default", "s2", "a")
            .port("http", 8080, "TCP")
            .endpoint("198.18.4.2", Some(true))
            .build(),
        slice("default", "s2", "c")
            .port("web", 9090, "TCP")
            .endpoint("198.18.5.2", Some(true))
            .build(),
        slice("default", "s3", "b")
            .port("dns", 5353, "UDP")
            .endpoint("198.18.6.2", None)
            .build(),
        slice("other", "s1", "a")
            .port("http", 8080, "TCP")
            .endpoint("198.18.7.2", None)
            .build(),
    ];
    let mut state = ClusterState::default();
    let mut truth_services: BTreeMap<ObjectKey, _> = BTreeMap::new();
    let mut truth_slices: BTreeMap<ObjectKey, _> = BTreeMap::new();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |n: usize| {
        // xorshift64: a fixed, reproducible sequence is all this test needs.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        usize::try_from(seed % n as u64).expect("small")
    };
    let mut contested_steps = 0;
    let (mut internal_served, mut internal_withheld) = (0, 0);
    for step in 0..1000 {
        let change = match next(4) {
            0 => {
                let s = services[next(services.len())].clone();
                let key = object_key(&s.metadata);
                let change = Change::service(&s);
                truth_services.insert(key, s);
                change
            }
            1 => {
                let key = object_key(&services[next(services.len())].metadata);
                truth_services.remove(&key);
                Change::Service(key, None)
            }
            2 => {
                let s = slices[next(slices.len())].clone();
                let key = object_key(&s.metadata);
                let change = Change::slice(&s);
                truth_slices.insert(key, s);
                change
            }
            _ => {
                let key = object_key(&slices[next(slices.len())].metadata);
                truth_slices.remove(&key);
                Change::Slice(key, None)
            }
        };
        let before = state.desired().clone();
        let changed = state.apply([change]);
        let all_services: Vec<_> = truth_services.values().cloned().collect();
        let all_slices: Vec<_> = truth_slices.values().cloned().collect();
        let (want, want_problems) = desired_state(&all_services, &all_slices);
        // What each service would be served alone: who claims which frontend, and with what.
        let alone: Vec<(ObjectKey, Desired)> = all_services
            .iter()
            .map(|s| {
                (
                    object_key(&s.metadata),
                    desired_state(std::slice::from_ref(s), &all_slices).0,
                )
            })
            .collect();
        let keys: BTreeSet<FrontendKey> =
            alone.iter().flat_map(|(_, d)| d.keys()).copied().collect();
        let mut conflicts = 0;
        let served_for = |f: &super::Frontend| -> ObjectKey { f.service.key.clone() };
        let mut served = BTreeSet::new();
        for key in &keys {
            if key.scope == Scope::Internal {
                // Served exactly when whoever serves its frontend to every client asks for
                // it too, as that service alone would have it.
                let holder = state
                    .desired()
                    .get(&key.with_scope(Scope::All))
                    .map(served_for);
                let expected = holder
                    .and_then(|h| alone.iter().find(|(k, _)| *k == h))
                    .and_then(|(_, d)| d.get(key));
                assert_eq!(state.desired().get(key), expected, "step {step}: {key}");
                if expected.is_some() {
                    served.insert(*key);
                    internal_served += 1;
                } else {
                    internal_withheld += 1;
                }
                continue;
            }
            served.insert(*key);
            let claimants: Vec<&(ObjectKey, Desired)> =
                alone.iter().filter(|(_, d)| d.contains_key(key)).collect();
            let got = state.desired().get(key);
            if let [(_, only)] = claimants.as_slice() {
                assert_eq!(got, only.get(key), "step {step}: {key} uncontested");
                assert_eq!(got, want.get(key), "step {step}: {key} as a full recompute");
                continue;
            }
            contested_steps += 1;
            conflicts += claimants.len() - 1;
            let got = got.unwrap_or_else(|| panic!("step {step}: {key} claimed but not served"));
            let holder = served_for(got);
            let (_, holder_alone) = claimants
                .iter()
                .find(|(k, _)| *k == holder)
                .unwrap_or_else(|| panic!("step {step}: {key} served for a non-claimant"));
            assert_eq!(Some(got), holder_alone.get(key), "step {step}: {key}");
            if let Some(previous) = before.get(key).map(served_for)
                && claimants.iter().any(|(k, _)| *k == previous)
            {
                assert_eq!(holder, previous, "step {step}: {key} was taken over");
            }
        }
        assert_eq!(
            state.desired().keys().collect::<Vec<_>>(),
            served.iter().collect::<Vec<_>>(),
            "step {step}: exactly the claimed frontends are served"
        );
        let (state_conflicts, state_other): (Vec<_>, Vec<_>) = state
            .problems()
            .into_iter()
            .partition(|p| p.kind == ProblemKind::Conflict);
        let want_other: Vec<_> = want_problems
            .into_iter()
            .filter(|p| p.kind != ProblemKind::Conflict)
            .collect();
        assert_eq!(state_other, want_other, "step {step}");
        assert_eq!(
            state_conflicts.len(),
            conflicts,
            "step {step}: {state_conflicts:#?}"
        );
        // Every frontend that differs from before is among the reported changes.
        for key in state.desired().keys().chain(before.keys()) {
            if state.desired().get(key) != before.get(key) {
                assert!(
                    changed.contains(key),
                    "step {step}: {key} changed unreported"
                );
            }
        }
    }
    assert!(contested_steps > 100, "the walk contests frontends often");
    assert!(
        internal_served > 50 && internal_withheld > 50,
        "the walk serves and withholds internal entries: {internal_served}, {internal_withheld}"
    );
}

#[test]
fn frontend_keys_read_as_operators_write_them() {
    let v4: std::net::IpAddr = "198.19.0.10".parse().expect("address");
    let v6: std::net::IpAddr = "2001:db8::10".parse().expect("address");
    let cases = [
        (FrontendKey::new(v4, 80, TCP), "198.19.0.10:80/TCP"),
        (FrontendKey::new(v6, 53, UDP), "[2001:db8::10]:53/UDP"),
        (FrontendKey::node_port(false, 30080, TCP), "*:30080/TCP"),
        (FrontendKey::node_port(true, 30053, UDP), "[*]:30053/UDP"),
        (
            FrontendKey::node_port(false, 30080, TCP).with_scope(Scope::Internal),
            "*:30080/TCP (internal)",
        ),
        (
            FrontendKey::new(v4, 80, TCP).with_scope(Scope::Internal),
            "198.19.0.10:80/TCP (internal)",
        ),
    ];
    for (key, text) in cases {
        assert_eq!(key.to_string(), text);
    }
    assert!(FrontendKey::node_port(true, 1, TCP).is_node_port());
    assert!(!FrontendKey::new(v4, 1, TCP).is_node_port());
    // A frontend's entries sort together, the entry for every client first.
    let all = FrontendKey::node_port(false, 30080, TCP);
    assert!(all < all.with_scope(Scope::Internal));
}

#[test]
fn a_dual_stack_service_has_a_node_port_per_family() {
    let (desired, problems) = desired_state(
        &[service("default", "web", "198.19.0.10")
            .cluster_ips(&["198.19.0.10", "2001:db8::10"])
            .type_("NodePort")
            .port("http", 80, "TCP")
            .node_port(30080)
            .build()],
        &[],
    );
    assert!(problems.is_empty(), "{problems:?}");
    let keys: Vec<String> = desired.keys().map(ToString::to_string).collect();
    assert_eq!(
        keys,
        [
            "*:30080/TCP",
            "198.19.0.10:80/TCP",
            "[*]:30080/TCP",
            "[2001:db8::10]:80/TCP"
        ]
    );
    let kinds: Vec<super::FrontendKind> = desired.values().map(|f| f.kind).collect();
    assert_eq!(
        kinds,
        [
            super::FrontendKind::NodePort,
            super::FrontendKind::ClusterIp,
            super::FrontendKind::NodePort,
            super::FrontendKind::ClusterIp
        ]
    );
}

/// kube-proxy's `--bind-address` makes an address the node's primary IP whatever the Node
/// lists: a LoadBalancer's source ranges then let the node's own (SNATted) traffic in when
/// they hold that address, not when they hold the Node's first InternalIP.
#[test]
fn bind_address_is_the_primary_ip_whatever_the_node_lists() {
    use super::{Change, ClusterState, NodeInfo};
    let lb = service("default", "lb", "198.19.0.40")
        .type_("LoadBalancer")
        .port("http", 80, "TCP")
        .node_port(30_080)
        .load_balancer_ingress(&["198.19.9.1"])
        .load_balancer_source_ranges(&["198.18.7.0/24"])
        .build();
    let ranges = |primary: Option<&str>| {
        let mut state = ClusterState::with_primary_ip(primary.map(|ip| ip.parse().expect("ip")));
        let mut node = NodeInfo::named("node-a");
        node.addresses = vec![
            "198.18.1.5".parse().expect("ip"),
            "198.18.7.5".parse().expect("ip"),
        ];
        state.set_node(node);
        state.apply([Change::service(&lb)]);
        let frontend = &state.desired()[&key("198.19.9.1", 80, TCP)];
        frontend
            .source_ranges
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ranges(None),
        ["198.18.7.0/24"],
        "primary 198.18.1.5 is outside"
    );
    assert_eq!(
        ranges(Some("198.18.7.5")),
        ["198.18.7.0/24", "198.19.9.1/32"],
        "--bind-address 198.18.7.5 is inside: the LB IP is a source too"
    );
    assert_eq!(
        ranges(Some("2001:db8::5")),
        ["198.18.7.0/24"],
        "an IPv6 --bind-address leaves the IPv4 primary alone"
    );
}

/// Which frontends use Maglev: the Service's `kproxy.io/lb-algorithm` annotation, else the
/// node's `--lb-algorithm`, within `--maglev-scope`. An annotation that names no algorithm
/// is reported and ignored; the Service is served all the same.
#[test]
#[expect(clippy::too_many_lines, reason = "one table of cases")]
fn the_lb_policy_and_the_annotation_choose_maglev_frontends() {
    use super::{
        Change, ClusterState, LbAlgorithm, LbPolicy, MaglevScope,
        lb_policy::ANNOTATION_LB_ALGORITHM,
    };
    /// (case, node policy, annotation, the frontends that use Maglev)
    type Case = (
        &'static str,
        LbPolicy,
        Option<&'static str>,
        Vec<FrontendKey>,
    );
    let cluster_ip = key("198.19.0.10", 80, TCP);
    let external_ip = key("203.0.113.7", 80, TCP);
    let load_balancer = key("203.0.113.8", 80, TCP);
    let node_port = FrontendKey::node_port(false, 30_080, TCP);
    let external = vec![node_port, external_ip, load_balancer];
    let every = vec![node_port, cluster_ip, external_ip, load_balancer];
    let web = |annotation: Option<&str>| {
        let builder = service("default", "web", "198.19.0.10")
            .type_("LoadBalancer")
            .port("http", 80, "TCP")
            .node_port(30_080)
            .external_ips(&["203.0.113.7"])
            .load_balancer_ingress(&["203.0.113.8"]);
        match annotation {
            Some(value) => builder.annotation(ANNOTATION_LB_ALGORITHM, value),
            None => builder,
        }
        .build()
    };
    let round_robin = LbPolicy::default();
    let maglev_external = LbPolicy {
        algorithm: LbAlgorithm::Maglev,
        ..LbPolicy::default()
    };
    let maglev_all = LbPolicy {
        algorithm: LbAlgorithm::Maglev,
        maglev_scope: MaglevScope::All,
    };
    let cases: Vec<Case> = vec![
        ("round robin, no annotation", round_robin, None, vec![]),
        (
            "round robin, annotated maglev: its external frontends",
            round_robin,
            Some("maglev"),
            external.clone(),
        ),
        (
            "round robin, annotated round-robin",
            round_robin,
            Some("round-robin"),
            vec![],
        ),
        (
            "round robin, bogus annotation: the node's round robin",
            round_robin,
            Some("consistent"),
            vec![],
        ),
        (
            "maglev external, no annotation",
            maglev_external,
            None,
            external.clone(),
        ),
        (
            "maglev external, annotated maglev: the scope still holds",
            maglev_external,
            Some("maglev"),
            external.clone(),
        ),
        (
            "maglev external, annotated round-robin: opted out",
            maglev_external,
            Some("round-robin"),
            vec![],
        ),
        (
            "maglev external, bogus annotation: the node's maglev",
            maglev_external,
            Some("Maglev"),
            external.clone(),
        ),
        ("maglev all, no annotation", maglev_all, None, every.clone()),
        (
            "maglev all, annotated maglev",
            maglev_all,
            Some("maglev"),
            every.clone(),
        ),
        (
            "maglev all, annotated round-robin: opted out",
            maglev_all,
            Some("round-robin"),
            vec![],
        ),
        (
            "maglev all, bogus annotation: the node's maglev",
            maglev_all,
            Some("consistent"),
            every.clone(),
        ),
    ];
    // `every` and `external` are in key order, as `Desired` is.
    for (case, policy, annotation, want) in cases {
        let mut state = ClusterState::default().with_lb_policy(policy);
        state.apply([Change::service(&web(annotation))]);
        let desired = state.desired();
        let served: Vec<FrontendKey> = desired.keys().copied().collect();
        assert_eq!(served, every, "{case}: every frontend is served");
        let maglev: Vec<FrontendKey> = desired
            .iter()
            .filter(|(_, f)| f.maglev)
            .map(|(k, _)| *k)
            .collect();
        assert_eq!(maglev, want, "{case}");

        let problems = state.problems();
        let bogus = annotation.filter(|v| LbAlgorithm::from_annotation(v).is_none());
        match bogus {
            None => assert!(problems.is_empty(), "{case}: {problems:?}"),
            Some(value) => {
                assert_eq!(problems.len(), 1, "{case}: {problems:?}");
                let p = &problems[0];
                assert_eq!(p.kind, ProblemKind::InvalidService, "{case}");
                assert_eq!(p.object.as_deref(), Some("Service default/web"), "{case}");
                assert!(
                    p.message.contains(ANNOTATION_LB_ALGORITHM)
                        && p.message.contains(&format!("{value:?}")),
                    "{case}: {p}"
                );
            }
        }
    }
}

#[test]
fn standby_holds_the_listed_endpoints_that_take_no_new_connections() {
    /// (case, internalTrafficPolicy, slice, endpoints, standby) on node "here"
    type Case = (
        &'static str,
        &'static str,
        fn() -> k8s_openapi::api::discovery::v1::EndpointSlice,
        &'static [&'static str],
        &'static [&'static str],
    );
    let cases: [Case; 4] = [
        (
            "all ready: nothing on standby (and nothing allocated for it)",
            "Cluster",
            || {
                web_slice()
                    .endpoint("198.18.2.2", Some(true))
                    .endpoint("198.18.3.2", Some(true))
                    .build()
            },
            &["198.18.2.2", "198.18.3.2"],
            &[],
        ),
        (
            "not ready and terminating ones wait on standby",
            "Cluster",
            || {
                web_slice()
                    .endpoint("198.18.2.2", Some(true))
                    .endpoint("198.18.4.2", Some(false))
                    .endpoint("198.18.3.2", Some(false))
                    .serving_terminating()
                    .build()
            },
            &["198.18.2.2"],
            &["198.18.3.2", "198.18.4.2"],
        ),
        (
            "internalTrafficPolicy Local: other nodes' endpoints are on standby",
            "Local",
            || {
                web_slice()
                    .endpoint("198.18.5.2", Some(true))
                    .node("elsewhere")
                    .endpoint("198.18.2.2", Some(true))
                    .node("here")
                    .build()
            },
            &["198.18.2.2"],
            &["198.18.5.2"],
        ),
        (
            "no endpoint ready: all of them on standby",
            "Cluster",
            || {
                web_slice()
                    .endpoint("198.18.3.2", Some(false))
                    .endpoint("198.18.2.2", Some(false))
                    .build()
            },
            &[],
            &["198.18.2.2", "198.18.3.2"],
        ),
    ];
    for (case, policy, slice, endpoints, standby) in cases {
        let svc = service("default", "web", "198.19.0.10")
            .port("http", 80, "TCP")
            .internal_traffic_policy(policy)
            .build();
        let (desired, problems) =
            super::desired_state_on(&super::NodeInfo::named("here"), &[svc], &[slice()]);
        assert!(problems.is_empty(), "{case}: {problems:?}");
        let frontend = &desired[&key("198.19.0.10", 80, TCP)];
        let with_port = |list: &[&str]| -> Vec<Endpoint> {
            eps(&list.iter().map(|a| (*a, 8080)).collect::<Vec<_>>())
        };
        assert_eq!(
            frontend.endpoints,
            with_port(endpoints),
            "{case}: endpoints"
        );
        assert_eq!(frontend.standby, with_port(standby), "{case}: standby");
        if standby.is_empty() {
            assert_eq!(frontend.standby.capacity(), 0, "{case}: no allocation");
        }
    }
}
