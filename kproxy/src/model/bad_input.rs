//! The corpus of bad Services and EndpointSlices, through the model: each is reported with
//! its object, kind and cause, skipped (the whole object, one port or one endpoint, whichever
//! the problem concerns), and an unrelated service next to it stays served.

use std::net::Ipv4Addr;

use k8s_openapi::{
    api::{core::v1::Service, discovery::v1::EndpointSlice},
    apimachinery::pkg::apis::meta::v1::Time,
};

use super::{
    Change, ClusterState, Endpoint, FrontendKey, Protocol, desired_state,
    fixtures::{ServiceBuilder, service, slice},
    lb_policy::ANNOTATION_LB_ALGORITHM,
};
use crate::problem::{Problem, ProblemKind};

const TCP: Protocol = Protocol::Tcp;
const UDP: Protocol = Protocol::Udp;

fn key(addr: &str, port: u16, proto: Protocol) -> FrontendKey {
    FrontendKey::new(addr.parse().expect("test address"), port, proto)
}

/// `addr:port` endpoints.
fn eps(list: &[&str]) -> Vec<Endpoint> {
    list.iter()
        .map(|s| {
            let sa: std::net::SocketAddr = s.parse().expect("test endpoint");
            Endpoint {
                addr: sa.ip(),
                port: sa.port(),
            }
        })
        .collect()
}

/// The unrelated service every case carries; it must stay served whatever the bad input.
fn bystander() -> (Service, EndpointSlice) {
    (
        service("default", "bystander", "198.19.0.99")
            .port("http", 80, "TCP")
            .build(),
        slice("default", "bystander-1", "bystander")
            .port("http", 8080, "TCP")
            .endpoint("198.18.9.9", Some(true))
            .build(),
    )
}

/// A web service on `vip` with one TCP port `http` 80.
fn web(name: &str, vip: &str) -> ServiceBuilder {
    service("default", name, vip).port("http", 80, "TCP")
}

fn created(mut svc: Service, rfc3339: &str) -> Service {
    let time = k8s_openapi::chrono::DateTime::parse_from_rfc3339(rfc3339)
        .expect("test timestamp")
        .with_timezone(&k8s_openapi::chrono::Utc);
    svc.metadata.creation_timestamp = Some(Time(time));
    svc
}

/// One reported problem as a case expects it: kind, object, and a part of the message.
type Expected = (ProblemKind, &'static str, &'static str);

struct Case {
    name: &'static str,
    services: Vec<Service>,
    slices: Vec<EndpointSlice>,
    /// Every frontend but the bystander's, with its endpoints.
    want: Vec<(FrontendKey, Vec<Endpoint>)>,
    problems: Vec<Expected>,
}

fn check(cases: Vec<Case>) {
    for case in cases {
        let (svc, sl) = bystander();
        let services: Vec<Service> = case.services.into_iter().chain([svc]).collect();
        let slices: Vec<EndpointSlice> = case.slices.into_iter().chain([sl]).collect();
        let (desired, problems) = desired_state(&services, &slices);
        assert_problems(case.name, &problems, &case.problems);
        let mut want = case.want;
        want.push((key("198.19.0.99", 80, TCP), eps(&["198.18.9.9:8080"])));
        want.sort();
        let got: Vec<(FrontendKey, Vec<Endpoint>)> = desired
            .iter()
            .map(|(k, f)| (*k, f.endpoints.clone()))
            .collect();
        assert_eq!(got, want, "case {}: frontends", case.name);
        // The same objects in the other order give the same result (no order dependence).
        let (reversed, reversed_problems) = desired_state(
            &services.iter().rev().cloned().collect::<Vec<_>>(),
            &slices.iter().rev().cloned().collect::<Vec<_>>(),
        );
        assert_eq!(reversed, desired, "case {}: order matters", case.name);
        assert_eq!(reversed_problems, problems, "case {}", case.name);
    }
}

fn assert_problems(case: &str, got: &[Problem], want: &[Expected]) {
    let summary: Vec<String> = got.iter().map(ToString::to_string).collect();
    assert_eq!(
        got.len(),
        want.len(),
        "case {case}: problems {summary:#?}, wanted {want:#?}"
    );
    for (p, (kind, object, part)) in got.iter().zip(want) {
        assert_eq!(p.kind, *kind, "case {case}: {p}");
        assert_eq!(p.object.as_deref(), Some(*object), "case {case}: {p}");
        assert!(
            p.message.contains(part),
            "case {case}: {p:?} does not say {part:?}"
        );
    }
}

#[test]
#[expect(clippy::too_many_lines, reason = "one table of cases")]
fn bad_service_addresses_ports_and_protocols_skip_only_what_they_concern() {
    let svc = "Service default/bad";
    check(vec![
        Case {
            name: "cluster IP with an octet over 255",
            services: vec![web("bad", "198.19.0.300").build()],
            slices: vec![],
            want: vec![],
            problems: vec![(
                ProblemKind::InvalidService,
                svc,
                "invalid cluster IP \"198.19.0.300\"",
            )],
        },
        Case {
            name: "cluster IP that is no address at all",
            services: vec![web("bad", "web.example").build()],
            slices: vec![],
            want: vec![],
            problems: vec![(
                ProblemKind::InvalidService,
                svc,
                "invalid cluster IP \"web.example\"",
            )],
        },
        Case {
            name: "cluster IP 0.0.0.0",
            services: vec![web("bad", "0.0.0.0").build()],
            slices: vec![],
            want: vec![],
            problems: vec![(ProblemKind::InvalidService, svc, "unspecified")],
        },
        Case {
            name: "multicast cluster IP (would capture mDNS)",
            services: vec![web("bad", "224.0.0.251").build()],
            slices: vec![],
            want: vec![],
            problems: vec![(ProblemKind::InvalidService, svc, "multicast")],
        },
        Case {
            name: "broadcast cluster IP",
            services: vec![web("bad", "255.255.255.255").build()],
            slices: vec![],
            want: vec![],
            problems: vec![(ProblemKind::InvalidService, svc, "broadcast")],
        },
        Case {
            name: "loopback cluster IP",
            services: vec![web("bad", "127.0.0.1").build()],
            slices: vec![],
            want: vec![],
            problems: vec![(ProblemKind::InvalidService, svc, "loopback")],
        },
        Case {
            name: "dual-stack with one invalid cluster IP: the whole service is skipped",
            services: vec![
                web("bad", "198.19.0.20")
                    .cluster_ips(&["198.19.0.20", "2001:db8::zz"])
                    .build(),
            ],
            slices: vec![],
            want: vec![],
            problems: vec![(ProblemKind::InvalidService, svc, "\"2001:db8::zz\"")],
        },
        Case {
            name: "a cluster IP listed twice is served once",
            services: vec![
                web("bad", "198.19.0.20")
                    .cluster_ips(&["198.19.0.20", "198.019.000.020"])
                    .build(),
            ],
            slices: vec![],
            want: vec![(key("198.19.0.20", 80, TCP), vec![])],
            problems: vec![(ProblemKind::InvalidService, svc, "more than once")],
        },
        Case {
            name: "leading zeros are decimal, as Kubernetes reads them (no problem)",
            services: vec![web("web", "198.019.000.020").build()],
            slices: vec![
                slice("default", "web-1", "web")
                    .port("http", 8080, "TCP")
                    .endpoint("198.018.002.002", Some(true))
                    .build(),
            ],
            want: vec![(key("198.19.0.20", 80, TCP), eps(&["198.18.2.2:8080"]))],
            problems: vec![],
        },
        Case {
            name: "ports 0, 65536 and -1 are skipped, the valid port stays",
            services: vec![
                service("default", "bad", "198.19.0.20")
                    .port("zero", 0, "TCP")
                    .port("big", 65_536, "TCP")
                    .port("negative", -1, "TCP")
                    .port("http", 80, "TCP")
                    .build(),
            ],
            slices: vec![],
            want: vec![(key("198.19.0.20", 80, TCP), vec![])],
            problems: vec![
                (
                    ProblemKind::InvalidService,
                    svc,
                    "port \"big\": invalid port number 65536",
                ),
                (
                    ProblemKind::InvalidService,
                    svc,
                    "port \"negative\": invalid port number -1",
                ),
                (
                    ProblemKind::InvalidService,
                    svc,
                    "port \"zero\": invalid port number 0",
                ),
            ],
        },
        Case {
            name: "one port number and protocol twice: the first keeps it (used to hang the agent)",
            services: vec![
                service("default", "bad", "198.19.0.20")
                    .port("http", 80, "TCP")
                    .port("http-again", 80, "TCP")
                    .port("dns", 80, "UDP")
                    .build(),
            ],
            slices: vec![
                slice("default", "bad-1", "bad")
                    .port("http", 8080, "TCP")
                    .port("http-again", 9090, "TCP")
                    .endpoint("198.18.2.2", Some(true))
                    .build(),
            ],
            want: vec![
                (key("198.19.0.20", 80, TCP), eps(&["198.18.2.2:8080"])),
                (key("198.19.0.20", 80, UDP), vec![]),
            ],
            problems: vec![(
                ProblemKind::InvalidService,
                svc,
                "port \"http-again\": 80/TCP is already port \"http\"",
            )],
        },
        Case {
            name: "targetPort is not used (the slice port is), so invalid ones change nothing",
            services: vec![
                service("default", "web", "198.19.0.20")
                    .port("http", 80, "TCP")
                    .target_port(0)
                    .port("metrics", 9090, "TCP")
                    .target_port(65_536)
                    .port("admin", 9091, "TCP")
                    .target_port(-5)
                    .build(),
            ],
            slices: vec![
                slice("default", "web-1", "web")
                    .port("http", 8080, "TCP")
                    .port("metrics", 9100, "TCP")
                    .port("admin", 9101, "TCP")
                    .endpoint("198.18.2.2", Some(true))
                    .build(),
            ],
            want: vec![
                (key("198.19.0.20", 80, TCP), eps(&["198.18.2.2:8080"])),
                (key("198.19.0.20", 9090, TCP), eps(&["198.18.2.2:9100"])),
                (key("198.19.0.20", 9091, TCP), eps(&["198.18.2.2:9101"])),
            ],
            problems: vec![],
        },
        Case {
            name: "unknown and unsupported protocols skip their port",
            services: vec![
                service("default", "bad", "198.19.0.20")
                    .port("icmp", 7, "ICMP")
                    .port("lower", 81, "tcp")
                    .port("sctp", 82, "SCTP")
                    .port("http", 80, "TCP")
                    .build(),
            ],
            slices: vec![],
            want: vec![(key("198.19.0.20", 80, TCP), vec![])],
            problems: vec![
                (
                    ProblemKind::InvalidService,
                    svc,
                    "port \"icmp\": unknown protocol \"ICMP\"",
                ),
                (
                    ProblemKind::InvalidService,
                    svc,
                    "port \"lower\": unknown protocol \"tcp\"",
                ),
                (
                    ProblemKind::InvalidService,
                    svc,
                    "port \"sctp\": protocol SCTP is not supported",
                ),
            ],
        },
        Case {
            name: "an lb-algorithm annotation naming no algorithm is ignored; the service is served",
            services: vec![
                web("bad", "198.19.0.20")
                    .annotation(ANNOTATION_LB_ALGORITHM, "least-conn")
                    .build(),
            ],
            slices: vec![],
            want: vec![(key("198.19.0.20", 80, TCP), vec![])],
            problems: vec![(
                ProblemKind::InvalidService,
                svc,
                "kproxy.io/lb-algorithm: unknown value \"least-conn\"",
            )],
        },
    ]);
}

#[test]
#[expect(clippy::too_many_lines, reason = "one table of cases")]
fn bad_endpoint_slices_skip_only_what_they_concern() {
    let sl = "EndpointSlice default/web-1";
    let web_slice = || slice("default", "web-1", "web").port("http", 8080, "TCP");
    check(vec![
        Case {
            name: "addresses that are no IP addresses",
            services: vec![web("web", "198.19.0.20").build()],
            slices: vec![
                web_slice()
                    .endpoint("198.18.2.999", Some(true))
                    .endpoint("pod.example", Some(true))
                    .endpoint("198.18.3.2", Some(true))
                    .build(),
            ],
            want: vec![(key("198.19.0.20", 80, TCP), eps(&["198.18.3.2:8080"]))],
            problems: vec![(
                ProblemKind::InvalidEndpoint,
                sl,
                "2 endpoints skipped: \"198.18.2.999\" is not an IP address, \"pod.example\" is not an IP address",
            )],
        },
        Case {
            name: "IPv6 address in an IPv4 slice",
            services: vec![web("web", "198.19.0.20").build()],
            slices: vec![
                web_slice()
                    .endpoint("2001:db8::2", Some(true))
                    .endpoint("198.18.3.2", Some(true))
                    .build(),
            ],
            want: vec![(key("198.19.0.20", 80, TCP), eps(&["198.18.3.2:8080"]))],
            problems: vec![(
                ProblemKind::InvalidEndpoint,
                sl,
                "endpoint skipped: \"2001:db8::2\" is not an IPv4 address",
            )],
        },
        Case {
            name: "IPv4 address in an IPv6 slice of a dual-stack service",
            services: vec![
                web("web", "198.19.0.20")
                    .cluster_ips(&["198.19.0.20", "2001:db8::20"])
                    .build(),
            ],
            slices: vec![
                web_slice()
                    .address_type("IPv6")
                    .endpoint("198.18.3.2", Some(true))
                    .endpoint("2001:db8::2", Some(true))
                    .build(),
            ],
            want: vec![
                (key("198.19.0.20", 80, TCP), vec![]),
                (key("2001:db8::20", 80, TCP), eps(&["[2001:db8::2]:8080"])),
            ],
            problems: vec![(
                ProblemKind::InvalidEndpoint,
                sl,
                "\"198.18.3.2\" is not an IPv6 address",
            )],
        },
        Case {
            name: "unspecified, multicast, broadcast, loopback and link-local endpoints",
            services: vec![web("web", "198.19.0.20").build()],
            slices: vec![
                web_slice()
                    .endpoint("0.0.0.0", Some(true))
                    .endpoint("224.0.0.1", Some(true))
                    .endpoint("255.255.255.255", Some(true))
                    .endpoint("127.0.0.1", Some(true))
                    .endpoint("169.254.169.254", Some(true))
                    .endpoint("198.18.3.2", Some(true))
                    .build(),
            ],
            want: vec![(key("198.19.0.20", 80, TCP), eps(&["198.18.3.2:8080"]))],
            problems: vec![(
                ProblemKind::InvalidEndpoint,
                sl,
                "5 endpoints skipped: \"0.0.0.0\" is the unspecified address, \"224.0.0.1\" is a \
                 multicast address, \"255.255.255.255\" is the broadcast address, and 2 more",
            )],
        },
        Case {
            name: "slice ports 0, 65536 and -1 are skipped; the slice's other ports stay",
            services: vec![
                service("default", "web", "198.19.0.20")
                    .port("zero", 1000, "TCP")
                    .port("big", 1001, "TCP")
                    .port("negative", 1002, "TCP")
                    .port("http", 80, "TCP")
                    .build(),
            ],
            slices: vec![
                slice("default", "web-1", "web")
                    .port("zero", 0, "TCP")
                    .port("big", 65_536, "TCP")
                    .port("negative", -1, "TCP")
                    .port("http", 8080, "TCP")
                    .endpoint("198.18.3.2", Some(true))
                    .build(),
            ],
            want: vec![
                (key("198.19.0.20", 80, TCP), eps(&["198.18.3.2:8080"])),
                (key("198.19.0.20", 1000, TCP), vec![]),
                (key("198.19.0.20", 1001, TCP), vec![]),
                (key("198.19.0.20", 1002, TCP), vec![]),
            ],
            problems: vec![
                (
                    ProblemKind::InvalidEndpoint,
                    sl,
                    "port \"big\": invalid port number 65536",
                ),
                (
                    ProblemKind::InvalidEndpoint,
                    sl,
                    "port \"negative\": invalid port number -1",
                ),
                (
                    ProblemKind::InvalidEndpoint,
                    sl,
                    "port \"zero\": invalid port number 0",
                ),
            ],
        },
        Case {
            name: "an address type that does not exist",
            services: vec![web("web", "198.19.0.20").build()],
            slices: vec![
                web_slice()
                    .address_type("IPv5")
                    .endpoint("198.18.3.2", Some(true))
                    .build(),
            ],
            want: vec![(key("198.19.0.20", 80, TCP), vec![])],
            problems: vec![(ProblemKind::InvalidEndpoint, sl, "addressType \"IPv5\"")],
        },
        Case {
            // k8s-openapi reads a missing addressType (required) as "".
            name: "no address type at all",
            services: vec![web("web", "198.19.0.20").build()],
            slices: vec![
                web_slice()
                    .address_type("")
                    .endpoint("198.18.3.2", Some(true))
                    .build(),
            ],
            want: vec![(key("198.19.0.20", 80, TCP), vec![])],
            problems: vec![(
                ProblemKind::InvalidEndpoint,
                sl,
                "addressType \"\" is not IPv4, IPv6 or FQDN",
            )],
        },
        Case {
            name: "one endpoint in several slices with other conditions: the usable copy counts",
            services: vec![web("web", "198.19.0.20").build()],
            slices: vec![
                slice("default", "web-1", "web")
                    .port("http", 8080, "TCP")
                    .endpoint("198.18.2.2", Some(false))
                    .endpoint("198.18.3.2", Some(true))
                    .serving_terminating()
                    .build(),
                slice("default", "web-2", "web")
                    .port("http", 8080, "TCP")
                    .endpoint("198.18.2.2", Some(true))
                    .endpoint("198.18.3.2", Some(false))
                    .build(),
            ],
            // 198.18.2.2 is ready in web-2; 198.18.3.2 is not ready in web-2 and terminating in
            // web-1, and a non-terminating copy always wins (kube-proxy): not used.
            want: vec![(key("198.19.0.20", 80, TCP), eps(&["198.18.2.2:8080"]))],
            problems: vec![],
        },
        Case {
            name: "slices labelled for a service that does not exist",
            services: vec![web("web", "198.19.0.20").build()],
            slices: vec![
                slice("default", "ghost-1", "ghost")
                    .port("http", 8080, "TCP")
                    .endpoint("198.18.2.2", Some(true))
                    .build(),
                slice("other", "web-1", "web")
                    .port("http", 8080, "TCP")
                    .endpoint("198.18.3.2", Some(true))
                    .build(),
            ],
            want: vec![(key("198.19.0.20", 80, TCP), vec![])],
            problems: vec![
                (
                    ProblemKind::OrphanSlice,
                    "EndpointSlice default/ghost-1",
                    "Service default/ghost, which does not exist",
                ),
                (
                    ProblemKind::OrphanSlice,
                    "EndpointSlice other/web-1",
                    "Service other/web, which does not exist",
                ),
            ],
        },
    ]);
}

#[test]
fn services_claiming_one_frontend_in_one_batch_are_ranked() {
    let older = |svc: ServiceBuilder| created(svc.build(), "2026-01-01T00:00:00Z");
    let newer = |svc: ServiceBuilder| created(svc.build(), "2026-06-01T00:00:00Z");
    let zeta_slice = || {
        slice("default", "zeta-1", "zeta")
            .port("http", 8080, "TCP")
            .endpoint("198.18.2.2", Some(true))
            .build()
    };
    check(vec![
        Case {
            name: "the older creationTimestamp wins, though it sorts last by name",
            services: vec![
                older(web("zeta", "198.19.0.20")),
                newer(web("alpha", "198.19.0.20")),
            ],
            slices: vec![zeta_slice()],
            want: vec![(key("198.19.0.20", 80, TCP), eps(&["198.18.2.2:8080"]))],
            problems: vec![(
                ProblemKind::Conflict,
                "Service default/alpha",
                "198.19.0.20:80/TCP is already served for Service default/zeta",
            )],
        },
        Case {
            name: "an object with a creationTimestamp ranks before one without",
            services: vec![
                newer(web("zeta", "198.19.0.20")),
                web("alpha", "198.19.0.20").build(),
            ],
            slices: vec![zeta_slice()],
            want: vec![(key("198.19.0.20", 80, TCP), eps(&["198.18.2.2:8080"]))],
            problems: vec![(
                ProblemKind::Conflict,
                "Service default/alpha",
                "Service default/zeta",
            )],
        },
        Case {
            name: "without timestamps, namespace then name decide (across namespaces too)",
            services: vec![
                service("team-b", "web", "198.19.0.20")
                    .port("http", 80, "TCP")
                    .build(),
                service("team-a", "web", "198.19.0.20")
                    .port("web", 80, "TCP")
                    .build(),
            ],
            slices: vec![],
            want: vec![(key("198.19.0.20", 80, TCP), vec![])],
            problems: vec![(
                ProblemKind::Conflict,
                "Service team-b/web",
                "port \"http\": 198.19.0.20:80/TCP is already served for Service team-a/web",
            )],
        },
        Case {
            name: "the same VIP on another port or protocol is no conflict",
            services: vec![
                web("a", "198.19.0.20").build(),
                service("default", "b", "198.19.0.20")
                    .port("http", 81, "TCP")
                    .build(),
                service("default", "c", "198.19.0.20")
                    .port("dns", 80, "UDP")
                    .build(),
            ],
            slices: vec![],
            want: vec![
                (key("198.19.0.20", 80, TCP), vec![]),
                (key("198.19.0.20", 80, UDP), vec![]),
                (key("198.19.0.20", 81, TCP), vec![]),
            ],
            problems: vec![],
        },
        Case {
            name: "a conflict on one port leaves the newcomer's other ports served",
            services: vec![
                older(web("holder", "198.19.0.20")),
                newer(web("newcomer", "198.19.0.20").port("metrics", 9090, "TCP")),
            ],
            slices: vec![],
            want: vec![
                (key("198.19.0.20", 80, TCP), vec![]),
                (key("198.19.0.20", 9090, TCP), vec![]),
            ],
            problems: vec![(
                ProblemKind::Conflict,
                "Service default/newcomer",
                "Service default/holder",
            )],
        },
    ]);
}

/// Step by step, as changes arrive: `(step, changes, who serves 198.19.0.20:80/TCP, services
/// reporting a conflict)`.
type Step = (
    &'static str,
    Vec<Change>,
    Option<&'static str>,
    Vec<&'static str>,
);

fn put(svc: &Service) -> Change {
    Change::service(svc)
}

fn delete(name: &str) -> Change {
    Change::Service(super::ObjectKey::new("default", name), None)
}

#[test]
fn a_newcomer_never_takes_a_served_frontend_over() {
    // "alpha" ranks first by name and is older: in one batch it would win. It still never
    // takes the frontend from a service already serving it.
    let alpha = || created(web("alpha", "198.19.0.20").build(), "2026-01-01T00:00:00Z");
    let zeta = || created(web("zeta", "198.19.0.20").build(), "2026-06-01T00:00:00Z");
    let steps: Vec<Step> = vec![
        ("zeta alone", vec![put(&zeta())], Some("zeta"), vec![]),
        (
            "alpha arrives: zeta keeps it",
            vec![put(&alpha())],
            Some("zeta"),
            vec!["alpha"],
        ),
        (
            "zeta updated (a new port): it keeps the frontend",
            vec![put(&created(
                web("zeta", "198.19.0.20")
                    .port("metrics", 9090, "TCP")
                    .build(),
                "2026-06-01T00:00:00Z",
            ))],
            Some("zeta"),
            vec!["alpha"],
        ),
        (
            "zeta deleted: alpha takes over",
            vec![delete("zeta")],
            Some("alpha"),
            vec![],
        ),
        (
            "zeta back: alpha keeps it",
            vec![put(&zeta())],
            Some("alpha"),
            vec!["zeta"],
        ),
        (
            "alpha moves to another VIP: zeta takes over",
            vec![put(&created(
                web("alpha", "198.19.0.21").build(),
                "2026-01-01T00:00:00Z",
            ))],
            Some("zeta"),
            vec![],
        ),
        (
            "alpha moves back while zeta serves: zeta keeps it",
            vec![put(&alpha())],
            Some("zeta"),
            vec!["alpha"],
        ),
        (
            "zeta deleted and a third claimant in the same batch: the rank decides",
            vec![
                delete("zeta"),
                put(&created(
                    web("beta", "198.19.0.20").build(),
                    "2025-01-01T00:00:00Z",
                )),
            ],
            Some("beta"),
            vec!["alpha"],
        ),
    ];
    let mut state = ClusterState::default();
    let vip = key("198.19.0.20", 80, TCP);
    for (step, changes, serves, conflicted) in steps {
        state.apply(changes);
        let got = state.desired().get(&vip).map(|f| f.service.name());
        assert_eq!(got, serves, "step {step}");
        let mut reporting: Vec<String> = state
            .problems()
            .iter()
            .filter(|p| p.kind == ProblemKind::Conflict)
            .filter_map(|p| p.object.clone())
            .collect();
        reporting.dedup();
        let want: Vec<String> = conflicted
            .iter()
            .map(|n| format!("Service default/{n}"))
            .collect();
        assert_eq!(reporting, want, "step {step}: {:#?}", state.problems());
    }
    // A restart sees the final objects (alpha, beta) in one batch: the older one, beta, serves
    // as before the restart.
    let beta = created(web("beta", "198.19.0.20").build(), "2025-01-01T00:00:00Z");
    let (restarted, _) = desired_state(&[alpha(), beta], &[]);
    assert_eq!(restarted.get(&vip).map(|f| f.service.name()), Some("beta"));
}

/// `n` distinct IPv4 endpoint addresses in the test bed's range, from 198.18.16.0 on.
fn many_addresses(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let i = u32::try_from(i).expect("small");
            Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 16, 0)) + i).to_string()
        })
        .collect()
}

#[test]
fn ten_thousand_endpoints_in_one_slice_are_all_served() {
    let mut big = slice("default", "web-1", "web").port("http", 8080, "TCP");
    for addr in many_addresses(10_000) {
        big = big.endpoint(&addr, Some(true));
    }
    let (svc, sl) = bystander();
    let (desired, problems) = desired_state(
        &[web("web", "198.19.0.20").build(), svc],
        &[big.build(), sl],
    );
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(
        desired[&key("198.19.0.20", 80, TCP)].endpoints.len(),
        10_000
    );
    assert_eq!(desired[&key("198.19.0.99", 80, TCP)].endpoints.len(), 1);
}

#[test]
fn more_endpoints_than_the_datapath_balances_over_are_capped_and_reported() {
    // 70 slices of 1,000 (the API's limit per slice): 70,000 endpoints for one port.
    let addresses = many_addresses(70_000);
    let mut slices: Vec<EndpointSlice> = addresses
        .chunks(1000)
        .enumerate()
        .map(|(i, chunk)| {
            chunk
                .iter()
                .fold(
                    slice("default", &format!("web-{i}"), "web").port("http", 8080, "TCP"),
                    |s, addr| s.endpoint(addr, Some(true)),
                )
                .build()
        })
        .collect();
    let (svc, sl) = bystander();
    slices.push(sl);
    let (desired, problems) = desired_state(&[web("web", "198.19.0.20").build(), svc], &slices);
    let max = kproxy_common::lb::MAX_BACKENDS_PER_SERVICE as usize;
    let served = &desired[&key("198.19.0.20", 80, TCP)].endpoints;
    assert_eq!(served.len(), max);
    assert_eq!(
        served[0].addr.to_string(),
        addresses[0],
        "the first by address"
    );
    assert_problems(
        "capped",
        &problems,
        &[(
            ProblemKind::Datapath,
            "Service default/web",
            "has 70000 endpoints, more than the 65535",
        )],
    );
    assert_eq!(desired[&key("198.19.0.99", 80, TCP)].endpoints.len(), 1);
}

/// The same corpus fed one object at a time, in both orders, ends where one batch ends when
/// nothing is contested: what the corpus reports does not depend on how it arrives.
#[test]
fn bad_objects_arriving_one_by_one_are_reported_the_same() {
    let services = vec![
        web("bad-ip", "198.19.0.300").build(),
        service("default", "bad-port", "198.19.0.21")
            .port("zero", 0, "TCP")
            .port("http", 80, "TCP")
            .build(),
        web("web", "198.19.0.20").build(),
    ];
    let slices = vec![
        slice("default", "web-1", "web")
            .port("http", 8080, "TCP")
            .endpoint("0.0.0.0", Some(true))
            .endpoint("198.18.3.2", Some(true))
            .build(),
        slice("default", "ghost-1", "ghost").build(),
    ];
    let (want, want_problems) = desired_state(&services, &slices);
    for reversed in [false, true] {
        let mut changes: Vec<Change> = services
            .iter()
            .map(put)
            .chain(slices.iter().map(Change::slice))
            .collect();
        if reversed {
            changes.reverse();
        }
        let mut state = ClusterState::default();
        for change in changes {
            state.apply([change]);
        }
        assert_eq!(state.desired(), &want);
        assert_eq!(state.problems(), want_problems);
    }
    assert_eq!(want_problems.len(), 4, "{want_problems:#?}");
}

fn node_port(port: u16) -> FrontendKey {
    FrontendKey::node_port(false, port, TCP)
}

#[test]
#[expect(clippy::too_many_lines, reason = "one table of cases")]
fn bad_external_fields_skip_only_what_they_concern() {
    let svc = "Service default/bad";
    let lb = || web("bad", "198.19.0.20").type_("LoadBalancer");
    let cluster_ip = || (key("198.19.0.20", 80, TCP), vec![]);
    check(vec![
        Case {
            name: "an externalIPs entry that is no address: that entry is skipped",
            services: vec![
                web("bad", "198.19.0.20")
                    .external_ips(&["nope", "192.0.2.10"])
                    .build(),
            ],
            slices: vec![],
            want: vec![cluster_ip(), (key("192.0.2.10", 80, TCP), vec![])],
            problems: vec![(
                ProblemKind::InvalidService,
                svc,
                "externalIPs: \"nope\" is not an IP address",
            )],
        },
        Case {
            name: "a multicast or loopback external IP is no VIP",
            services: vec![
                web("bad", "198.19.0.20")
                    .external_ips(&["224.0.0.251", "127.0.0.1"])
                    .build(),
            ],
            slices: vec![],
            want: vec![cluster_ip()],
            problems: vec![
                (ProblemKind::InvalidService, svc, "127.0.0.1 is a loopback"),
                (
                    ProblemKind::InvalidService,
                    svc,
                    "224.0.0.251 is a multicast",
                ),
            ],
        },
        Case {
            name: "a load-balancer ingress IP that is no address; an unknown ipMode",
            services: vec![
                lb().load_balancer_ingress_with(&[
                    (Some("1.2.3.999"), None, None),
                    (Some("1.2.3.5"), None, Some("Magic")),
                    (Some("1.2.3.4"), None, None),
                ])
                .build(),
            ],
            slices: vec![],
            want: vec![cluster_ip(), (key("1.2.3.4", 80, TCP), vec![])],
            problems: vec![
                (
                    ProblemKind::InvalidService,
                    svc,
                    "status.loadBalancer.ingress 1.2.3.5: unknown ipMode \"Magic\"",
                ),
                (
                    ProblemKind::InvalidService,
                    svc,
                    "status.loadBalancer.ingress: \"1.2.3.999\" is not an IP address",
                ),
            ],
        },
        Case {
            name: "nodePorts outside 1..=65535: the NodePort is skipped, the port served",
            services: vec![
                web("bad", "198.19.0.20")
                    .type_("NodePort")
                    .node_port(70_000)
                    .port("dns", 53, "UDP")
                    .node_port(-1)
                    .build(),
            ],
            slices: vec![],
            want: vec![cluster_ip(), (key("198.19.0.20", 53, UDP), vec![])],
            problems: vec![
                (ProblemKind::InvalidService, svc, "invalid nodePort -1"),
                (ProblemKind::InvalidService, svc, "invalid nodePort 70000"),
            ],
        },
        Case {
            name: "a nodePort on a ClusterIP Service is ignored (the API server refuses it)",
            services: vec![web("bad", "198.19.0.20").node_port(30080).build()],
            slices: vec![],
            want: vec![cluster_ip()],
            problems: vec![(
                ProblemKind::InvalidService,
                svc,
                "neither NodePort nor LoadBalancer",
            )],
        },
        Case {
            name: "an unknown type is served as ClusterIP",
            services: vec![
                web("bad", "198.19.0.20")
                    .type_("Ingress")
                    .node_port(30080)
                    .build(),
            ],
            slices: vec![],
            want: vec![cluster_ip()],
            problems: vec![
                (
                    ProblemKind::InvalidService,
                    svc,
                    "neither NodePort nor LoadBalancer",
                ),
                (ProblemKind::InvalidService, svc, "unknown type \"Ingress\""),
            ],
        },
        Case {
            name: "one nodePort and protocol on two ports: the first keeps it; another protocol may share it",
            services: vec![
                web("bad", "198.19.0.20")
                    .type_("NodePort")
                    .node_port(30080)
                    .port("alt", 81, "TCP")
                    .node_port(30080)
                    .port("dns", 53, "UDP")
                    .node_port(30080)
                    .build(),
            ],
            slices: vec![],
            want: vec![
                cluster_ip(),
                (key("198.19.0.20", 81, TCP), vec![]),
                (key("198.19.0.20", 53, UDP), vec![]),
                (node_port(30080), vec![]),
                (FrontendKey::node_port(false, 30080, UDP), vec![]),
            ],
            problems: vec![(
                ProblemKind::InvalidService,
                svc,
                "port \"alt\": nodePort 30080/TCP is already the NodePort of port \"http\"",
            )],
        },
        Case {
            name: "a source range that is no CIDR is skipped, the others restrict",
            services: vec![
                lb().load_balancer_ingress(&["1.2.3.4"])
                    .load_balancer_source_ranges(&["203.0.113.0/25", "nonsense"])
                    .build(),
            ],
            slices: vec![],
            want: vec![cluster_ip(), (key("1.2.3.4", 80, TCP), vec![])],
            problems: vec![(
                ProblemKind::InvalidService,
                svc,
                "loadBalancerSourceRanges: \"nonsense\" is not a CIDR",
            )],
        },
        Case {
            name: "no source range readable: the load-balancer IPs are not served, the NodePort is",
            services: vec![
                lb().node_port(30080)
                    .load_balancer_ingress(&["1.2.3.4"])
                    .load_balancer_source_ranges(&["nonsense", "10.0.0.0/33"])
                    .build(),
            ],
            slices: vec![],
            want: vec![cluster_ip(), (node_port(30080), vec![])],
            problems: vec![
                (
                    ProblemKind::InvalidService,
                    svc,
                    "loadBalancerSourceRanges: \"10.0.0.0/33\" is not a CIDR",
                ),
                (
                    ProblemKind::InvalidService,
                    svc,
                    "loadBalancerSourceRanges: \"nonsense\" is not a CIDR",
                ),
                (
                    ProblemKind::InvalidService,
                    svc,
                    "the load-balancer IPs are not served",
                ),
            ],
        },
        Case {
            name: "an externalTrafficPolicy Local LoadBalancer without or with a bad healthCheckNodePort is served",
            services: vec![
                lb().external_traffic_policy("Local").build(),
                web("bad2", "198.19.0.21")
                    .type_("LoadBalancer")
                    .external_traffic_policy("Local")
                    .health_check_node_port(70_000)
                    .build(),
            ],
            slices: vec![],
            want: vec![cluster_ip(), (key("198.19.0.21", 80, TCP), vec![])],
            problems: vec![
                (
                    ProblemKind::InvalidService,
                    svc,
                    "without a healthCheckNodePort",
                ),
                (
                    ProblemKind::InvalidService,
                    "Service default/bad2",
                    "invalid healthCheckNodePort 70000",
                ),
            ],
        },
    ]);
}

#[test]
#[expect(clippy::too_many_lines, reason = "one table of cases")]
fn services_claiming_one_external_frontend_are_ranked_like_cluster_ips() {
    check(vec![
        Case {
            name: "two Services with one external IP and port: the first by namespace/name keeps it",
            services: vec![
                web("zeta", "198.19.0.31")
                    .external_ips(&["192.0.2.10"])
                    .build(),
                web("alpha", "198.19.0.30")
                    .external_ips(&["192.0.2.10"])
                    .build(),
            ],
            slices: vec![
                slice("default", "zeta-1", "zeta")
                    .port("http", 8080, "TCP")
                    .endpoint("198.18.3.3", None)
                    .build(),
            ],
            want: vec![
                (key("198.19.0.30", 80, TCP), vec![]),
                (key("198.19.0.31", 80, TCP), eps(&["198.18.3.3:8080"])),
                (key("192.0.2.10", 80, TCP), vec![]),
            ],
            problems: vec![(
                ProblemKind::Conflict,
                "Service default/zeta",
                "192.0.2.10:80/TCP is already served for Service default/alpha",
            )],
        },
        Case {
            name: "an external IP that is another Service's cluster IP: the older one keeps it",
            services: vec![
                created(web("alpha", "198.19.0.31").build(), "2026-01-02T00:00:00Z"),
                created(web("zeta", "198.19.0.30").build(), "2026-01-01T00:00:00Z"),
                created(
                    web("beta", "198.19.0.32")
                        .external_ips(&["198.19.0.30"])
                        .external_traffic_policy("Local")
                        .build(),
                    "2026-01-03T00:00:00Z",
                ),
            ],
            slices: vec![],
            // beta gets neither entry of 198.19.0.30:80: its Scope::Internal entry goes with
            // the Scope::All one, which zeta holds. One problem, not two.
            want: vec![
                (key("198.19.0.30", 80, TCP), vec![]),
                (key("198.19.0.31", 80, TCP), vec![]),
                (key("198.19.0.32", 80, TCP), vec![]),
            ],
            problems: vec![(
                ProblemKind::Conflict,
                "Service default/beta",
                "198.19.0.30:80/TCP is already served for Service default/zeta",
            )],
        },
        Case {
            name: "two Services with one nodePort: the first keeps it, both entries under eTP Local",
            services: vec![
                web("a", "198.19.0.30")
                    .type_("NodePort")
                    .node_port(30080)
                    .external_traffic_policy("Local")
                    .build(),
                web("b", "198.19.0.31")
                    .type_("NodePort")
                    .node_port(30080)
                    .build(),
            ],
            slices: vec![],
            want: vec![
                (key("198.19.0.30", 80, TCP), vec![]),
                (key("198.19.0.31", 80, TCP), vec![]),
                (node_port(30080), vec![]),
                (
                    node_port(30080).with_scope(crate::model::Scope::Internal),
                    vec![],
                ),
            ],
            problems: vec![(
                ProblemKind::Conflict,
                "Service default/b",
                "*:30080/TCP is already served for Service default/a",
            )],
        },
        Case {
            name: "two Services with one healthCheckNodePort: the first by namespace/name serves it",
            services: vec![
                web("b", "198.19.0.31")
                    .type_("LoadBalancer")
                    .external_traffic_policy("Local")
                    .health_check_node_port(30000)
                    .build(),
                web("a", "198.19.0.30")
                    .type_("LoadBalancer")
                    .external_traffic_policy("Local")
                    .health_check_node_port(30000)
                    .build(),
            ],
            slices: vec![],
            want: vec![
                (key("198.19.0.30", 80, TCP), vec![]),
                (key("198.19.0.31", 80, TCP), vec![]),
            ],
            problems: vec![(
                ProblemKind::Conflict,
                "Service default/b",
                "healthCheckNodePort 30000 is already served for Service default/a",
            )],
        },
    ]);
}

/// Over a sequence of changes, an eTP Local frontend's `Scope::Internal` entry is served
/// exactly while its `Scope::All` entry is served for the same Service, and follows it when
/// the holder goes.
#[test]
fn an_internal_entry_follows_its_frontend() {
    use crate::model::Scope;
    let all = key("192.0.2.10", 80, TCP);
    let internal = all.with_scope(Scope::Internal);
    let holder = web("holder", "198.19.0.30")
        .external_ips(&["192.0.2.10"])
        .build();
    let local = web("local", "198.19.0.31")
        .external_ips(&["192.0.2.10"])
        .external_traffic_policy("Local")
        .build();
    let mut state = ClusterState::default();
    let served_for = |state: &ClusterState, k: &FrontendKey| {
        state
            .desired()
            .get(k)
            .map(|f| (f.service.name().to_owned(), f.external_local))
    };
    state.apply([put(&holder)]);
    state.apply([put(&local.clone())]);
    assert_eq!(served_for(&state, &all), Some(("holder".into(), false)));
    assert_eq!(served_for(&state, &internal), None);
    let changed = state.apply([delete("holder")]);
    assert_eq!(served_for(&state, &all), Some(("local".into(), true)));
    assert_eq!(served_for(&state, &internal), Some(("local".into(), false)));
    assert!(changed.contains(&all) && changed.contains(&internal));
    // Back to the Cluster policy: the Internal entry goes, the frontend stays.
    let mut cluster = local;
    cluster.spec.as_mut().expect("spec").external_traffic_policy = Some("Cluster".into());
    let changed = state.apply([put(&cluster)]);
    assert_eq!(served_for(&state, &all), Some(("local".into(), false)));
    assert_eq!(served_for(&state, &internal), None);
    assert!(changed.contains(&internal));
    assert!(state.problems().is_empty(), "{:?}", state.problems());
}
