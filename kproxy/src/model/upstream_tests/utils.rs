//! pkg/proxy/util/utils_test.go: TestShouldSkipService and TestGetClusterIPByFamily, plus the
//! label selectors cmd/kube-proxy/app/server.go puts on its informers
//! (`!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless`, on one
//! informer factory shared by Services and EndpointSlices).

use super::{Case, TCP, check, fe, node};
use crate::model::{
    LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME,
    fixtures::{service, slice},
};

#[test]
fn should_skip_service() {
    let svc = |cluster_ip: &str, type_: Option<&str>| {
        let mut b = service("foo", "bar", cluster_ip).port("", 80, "TCP");
        if let Some(t) = type_ {
            b = b.type_(t);
        }
        b.build()
    };
    // The fixture sets type ClusterIP; upstream's first two cases leave it empty.
    let untyped = |cluster_ip: &str| {
        let mut s = svc(cluster_ip, None);
        s.spec.as_mut().expect("spec").type_ = None;
        s
    };
    let served = || vec![fe("1.2.3.4", 80, TCP)];
    check(vec![
        Case {
            name: "util/utils_test.go TestShouldSkipService/Cluster IP is None",
            services: vec![untyped("None")],
            ..Case::default()
        },
        Case {
            name: "util/utils_test.go TestShouldSkipService/Cluster IP is empty",
            services: vec![untyped("")],
            ..Case::default()
        },
        Case {
            name: "util/utils_test.go TestShouldSkipService/ExternalName type service",
            services: vec![svc("1.2.3.4", Some("ExternalName"))],
            ..Case::default()
        },
        Case {
            name: "util/utils_test.go TestShouldSkipService/ClusterIP type service with ClusterIP set",
            services: vec![svc("1.2.3.4", Some("ClusterIP"))],
            want: served(),
            ..Case::default()
        },
        Case {
            name: "util/utils_test.go TestShouldSkipService/NodePort type service with ClusterIP set",
            services: vec![svc("1.2.3.4", Some("NodePort"))],
            want: served(),
            ..Case::default()
        },
        Case {
            name: "util/utils_test.go TestShouldSkipService/LoadBalancer type service with ClusterIP set",
            services: vec![svc("1.2.3.4", Some("LoadBalancer"))],
            want: served(),
            ..Case::default()
        },
    ]);
}

#[test]
fn informer_label_selectors() {
    let svc = || service("foo", "bar", "1.2.3.4").port("http", 80, "TCP");
    let eps = || {
        slice("foo", "bar-1", "bar")
            .port("http", 8080, "TCP")
            .endpoint("10.0.1.1", None)
    };
    check(vec![
        Case {
            name: "server.go informer selector/Service labelled service-proxy-name is another proxy's",
            node: node("test-node"),
            services: vec![svc().label(LABEL_SERVICE_PROXY_NAME, "other-proxy").build()],
            slices: vec![eps().build()],
            ..Case::default()
        },
        Case {
            // The selector `!service.kubernetes.io/headless` applies to Services too.
            name: "server.go informer selector/Service labelled headless is not watched",
            node: node("test-node"),
            services: vec![svc().label(LABEL_HEADLESS, "").build()],
            slices: vec![eps().build()],
            ..Case::default()
        },
        Case {
            name: "server.go informer selector/EndpointSlice labelled service-proxy-name is not watched",
            node: node("test-node"),
            services: vec![svc().build()],
            slices: vec![eps().label(LABEL_SERVICE_PROXY_NAME, "other-proxy").build()],
            want: vec![fe("1.2.3.4", 80, TCP)],
            ..Case::default()
        },
        Case {
            name: "server.go informer selector/EndpointSlice labelled headless is not watched",
            node: node("test-node"),
            services: vec![svc().build()],
            slices: vec![eps().label(LABEL_HEADLESS, "").build()],
            want: vec![fe("1.2.3.4", 80, TCP)],
            ..Case::default()
        },
        Case {
            name: "server.go informer selector/unlabelled objects are served",
            node: node("test-node"),
            services: vec![svc().build()],
            slices: vec![eps().build()],
            want: vec![fe("1.2.3.4", 80, TCP).eps(&["10.0.1.1:8080"])],
            ..Case::default()
        },
    ]);
}

/// Each upstream case asks for one family; kproxy serves both, so a case checks every
/// frontend: the requested family's ClusterIP (or none) and the other family's.
/// Upstream's cases with `clusterIPs` leave `clusterIP` empty, which ShouldSkipService
/// would skip; the API server always sets `clusterIP` to `clusterIPs[0]`, and so do these.
#[test]
fn get_cluster_ip_by_family() {
    let old_style = |ip: &str| service("ns", "svc", ip).port("p", 80, "TCP").build();
    let with_families = |ips: &[&str], families: &[&str]| {
        service("ns", "svc", ips[0])
            .cluster_ips(ips)
            .ip_families(families)
            .port("p", 80, "TCP")
            .build()
    };
    let v4 = || fe("10.0.0.10", 80, TCP);
    let v6 = || fe("2000::1", 80, TCP);
    let name = "util/utils_test.go TestGetClusterIPByFamily/";
    let cases: Vec<(&str, k8s_openapi::api::core::v1::Service, Vec<super::Want>)> = vec![
        (
            "old style service ipv4. want ipv4",
            old_style("10.0.0.10"),
            vec![v4()],
        ),
        (
            "old style service ipv4. want ipv6",
            old_style("10.0.0.10"),
            vec![v4()],
        ),
        (
            "old style service ipv6. want ipv6",
            old_style("2000::1"),
            vec![v6()],
        ),
        (
            "old style service ipv6. want ipv4",
            old_style("2000::1"),
            vec![v6()],
        ),
        (
            "service single stack ipv4. want ipv4",
            with_families(&["10.0.0.10"], &["IPv4"]),
            vec![v4()],
        ),
        (
            "service single stack ipv4. want ipv6",
            with_families(&["10.0.0.10"], &["IPv4"]),
            vec![v4()],
        ),
        (
            "service single stack ipv6. want ipv6",
            with_families(&["2000::1"], &["IPv6"]),
            vec![v6()],
        ),
        (
            "service single stack ipv6. want ipv4",
            with_families(&["2000::1"], &["IPv6"]),
            vec![v6()],
        ),
        (
            "service dual stack ipv4,6. want ipv4",
            with_families(&["10.0.0.10", "2000::1"], &["IPv4", "IPv6"]),
            vec![v4(), v6()],
        ),
        (
            "service dual stack ipv4,6. want ipv6",
            with_families(&["10.0.0.10", "2000::1"], &["IPv4", "IPv6"]),
            vec![v4(), v6()],
        ),
        (
            "service dual stack ipv6,4. want ipv6",
            with_families(&["2000::1", "10.0.0.10"], &["IPv6", "IPv4"]),
            vec![v4(), v6()],
        ),
        (
            "service dual stack ipv6,4. want ipv4",
            with_families(&["2000::1", "10.0.0.10"], &["IPv6", "IPv4"]),
            vec![v4(), v6()],
        ),
    ];
    for (case, svc, want) in cases {
        let full = format!("{name}{case}");
        let (desired, problems) = crate::model::desired_state(&[svc], &[]);
        assert_eq!(super::observed(&desired), want, "case {full}");
        assert!(problems.is_empty(), "case {full}: {problems:#?}");
    }
}
