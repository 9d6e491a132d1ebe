//! Tests of the kube-proxy rule generators against names and lines from kube-proxy's own test
//! expectations (pkg/proxy/iptables/proxier_test.go, pkg/proxy/nftables/proxier_test.go) and
//! well-known chain names from real clusters.

use std::net::{Ipv4Addr, SocketAddrV4};

use k8s_openapi::{
    api::{
        core::v1::{Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use super::{iptables::iptables_restore_with, nftables::nftables_script_with, *};

fn ep(addr: &str) -> SocketAddrV4 {
    addr.parse().expect("test endpoint")
}

fn port(
    ns: &str,
    name: &str,
    port_name: &str,
    proto: Proto,
    vip: &str,
    dport: u16,
    eps: &[&str],
) -> ServicePortRules {
    ServicePortRules {
        namespace: ns.into(),
        name: name.into(),
        port_name: port_name.into(),
        protocol: proto,
        cluster_ip: vip.parse().expect("test VIP"),
        port: dport,
        node_port: None,
        endpoints: eps.iter().map(|e| ep(e)).collect(),
    }
}

/// `port` with a NodePort.
fn node_port(mut p: ServicePortRules, node_port: u16) -> ServicePortRules {
    p.node_port = Some(node_port);
    p
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

fn assert_has_lines(text: &str, expected: &[&str]) {
    let all = lines(text);
    for line in expected {
        assert!(all.contains(line), "missing line:\n{line}\nin:\n{text}");
    }
}

/// The lines of `text` starting with `prefix`, in order.
fn lines_starting<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(prefix)).collect()
}

#[test]
fn chain_names_match_kube_proxy() {
    let svc1 = port("ns1", "svc1", "p80", Proto::Tcp, "172.30.0.41", 80, &[]);
    let svc4 = port("ns4", "svc4", "p80", Proto::Tcp, "172.30.0.44", 80, &[]);
    let dns = port(
        "kube-system",
        "kube-dns",
        "dns",
        Proto::Udp,
        "10.96.0.10",
        53,
        &[],
    );
    let dns_tcp = port(
        "kube-system",
        "kube-dns",
        "dns-tcp",
        Proto::Tcp,
        "10.96.0.10",
        53,
        &[],
    );
    let api = port(
        "default",
        "kubernetes",
        "https",
        Proto::Tcp,
        "10.96.0.1",
        443,
        &[],
    );
    let ipt_svc =
        |p: &ServicePortRules| iptables::service_chain(&p.service_port_name(), p.protocol.as_str());
    let ipt_sep = |p: &ServicePortRules, e: &str| {
        iptables::endpoint_chain(&p.service_port_name(), p.protocol.as_str(), &ep(e))
    };
    let nft_svc = |p: &ServicePortRules| nftables::service_chain(p, p.protocol.as_str());
    let nft_ep =
        |p: &ServicePortRules, e: &str| nftables::endpoint_chain(p, p.protocol.as_str(), &ep(e));
    let cases: [(&str, String, &str); 14] = [
        // iptables proxier_test.go
        ("svc1", ipt_svc(&svc1), "KUBE-SVC-XPGD46QRK7WJZT7O"),
        ("svc4", ipt_svc(&svc4), "KUBE-SVC-4SW47YFZTEDKD3PK"),
        (
            "svc1 ep1",
            ipt_sep(&svc1, "10.180.0.1:80"),
            "KUBE-SEP-SXIVWICOYRO3J4NJ",
        ),
        (
            "svc1 ep2",
            ipt_sep(&svc1, "10.180.0.2:80"),
            "KUBE-SEP-LXVODXWDISEETFEF",
        ),
        (
            "svc4 ep4",
            ipt_sep(&svc4, "10.180.0.4:80"),
            "KUBE-SEP-UKSFD7AGPMPPLUHC",
        ),
        (
            "svc4 ep5",
            ipt_sep(&svc4, "10.180.0.5:80"),
            "KUBE-SEP-C6EBXVWJJZMIWKLZ",
        ),
        // Every cluster has these.
        ("kube-dns udp", ipt_svc(&dns), "KUBE-SVC-TCOU7JCQXEZGVUNU"),
        (
            "kube-dns tcp",
            ipt_svc(&dns_tcp),
            "KUBE-SVC-ERIFXISQEP7F7OF4",
        ),
        ("kubernetes", ipt_svc(&api), "KUBE-SVC-NPX46M4PTMTKRN6Y"),
        // nftables proxier_test.go
        (
            "nft svc1",
            nft_svc(&svc1),
            "service-ULMVA6XW-ns1/svc1/tcp/p80",
        ),
        (
            "nft svc4",
            nft_svc(&svc4),
            "service-LAUZTJTB-ns4/svc4/tcp/p80",
        ),
        (
            "nft svc1 ep1",
            nft_ep(&svc1, "10.180.0.1:80"),
            "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80",
        ),
        (
            "nft svc4 ep4",
            nft_ep(&svc4, "10.180.0.4:80"),
            "endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80",
        ),
        (
            "nft svc4 ep5",
            nft_ep(&svc4, "10.180.0.5:80"),
            "endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80",
        ),
    ];
    for (what, got, want) in cases {
        assert_eq!(got, want, "{what}");
    }
}

#[test]
fn external_chain_names_match_kube_proxy() {
    // From kube-proxy's iptables and nftables proxier_test.go.
    let svc3 = port("ns3", "svc3", "p80", Proto::Tcp, "172.30.0.43", 80, &[]);
    let svc4 = port("ns4", "svc4", "p80", Proto::Tcp, "172.30.0.44", 80, &[]);
    let ipt = |p: &ServicePortRules| {
        iptables::external_chain(&p.service_port_name(), p.protocol.as_str())
    };
    assert_eq!(ipt(&svc3), "KUBE-EXT-X27LE4BHSL4DOUIK");
    assert_eq!(ipt(&svc4), "KUBE-EXT-4SW47YFZTEDKD3PK");
    assert_eq!(
        nftables::external_chain(&svc3, "tcp"),
        "external-4AT6LBPK-ns3/svc3/tcp/p80"
    );
    assert_eq!(
        nftables::external_chain(&svc4, "tcp"),
        "external-LAUZTJTB-ns4/svc4/tcp/p80"
    );
}

#[test]
fn base32_prefix_is_standard_base32() {
    // RFC 4648 test vectors.
    let cases = [
        ("", 0, ""),
        ("f", 2, "MY"),
        ("fo", 4, "MZXQ"),
        ("foobar", 8, "MZXW6YTB"),
        ("foobar", 9, "MZXW6YTBO"),
    ];
    for (input, chars, want) in cases {
        assert_eq!(base32_prefix(input.as_bytes(), chars), want, "{input}");
    }
}

#[test]
fn service_port_names() {
    let cases = [("p80", "ns1/svc1:p80"), ("", "ns1/svc1")];
    for (port_name, want) in cases {
        let p = port("ns1", "svc1", port_name, Proto::Tcp, "172.30.0.41", 80, &[]);
        assert_eq!(p.service_port_name(), want);
    }
}

#[test]
fn endpoints_are_in_kube_proxy_string_order() {
    let p = port(
        "ns",
        "s",
        "",
        Proto::Tcp,
        "10.96.0.1",
        80,
        &["10.0.0.9:80", "10.0.0.10:80", "10.0.0.9:80"],
    );
    assert_eq!(
        p.ordered_endpoints().as_ref(),
        [ep("10.0.0.10:80"), ep("10.0.0.9:80")]
    );
}

#[test]
fn iptables_three_endpoints() {
    let svc = port(
        "ns1",
        "svc1",
        "p80",
        Proto::Tcp,
        "172.30.0.41",
        80,
        &["10.180.0.1:80", "10.180.0.2:80", "10.180.0.3:80"],
    );
    let text = iptables_restore(std::slice::from_ref(&svc));
    let seps: Vec<String> = svc
        .endpoints
        .iter()
        .map(|e| iptables::endpoint_chain("ns1/svc1:p80", "tcp", e))
        .collect();
    assert_eq!(seps[0], "KUBE-SEP-SXIVWICOYRO3J4NJ");
    assert_eq!(seps[1], "KUBE-SEP-LXVODXWDISEETFEF");
    let svc_chain = "KUBE-SVC-XPGD46QRK7WJZT7O";
    assert_eq!(
        lines_starting(&text, &format!("-A {svc_chain} ")),
        [
            format!(
                "-A {svc_chain} -m comment --comment \"ns1/svc1:p80 -> 10.180.0.1:80\" -m statistic --mode random --probability 0.3333333333 -j {}",
                seps[0]
            ),
            format!(
                "-A {svc_chain} -m comment --comment \"ns1/svc1:p80 -> 10.180.0.2:80\" -m statistic --mode random --probability 0.5000000000 -j {}",
                seps[1]
            ),
            format!(
                "-A {svc_chain} -m comment --comment \"ns1/svc1:p80 -> 10.180.0.3:80\" -j {}",
                seps[2]
            ),
        ]
    );
    assert_has_lines(
        &text,
        &[
            "-A KUBE-SERVICES -m comment --comment \"ns1/svc1:p80 cluster IP\" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O",
            ":KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]",
            ":KUBE-SEP-SXIVWICOYRO3J4NJ - [0:0]",
            "-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ",
            "-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80",
        ],
    );
}

#[test]
fn iptables_layout() {
    let text = iptables_restore(&[port(
        "ns1",
        "svc1",
        "p80",
        Proto::Tcp,
        "172.30.0.41",
        80,
        &["10.180.0.1:80"],
    )]);
    let all = lines(&text);
    let at = |line: &str| {
        all.iter()
            .position(|l| *l == line)
            .unwrap_or_else(|| panic!("missing {line}"))
    };
    // Tables in kube-proxy's order, chains declared before rules.
    assert!(at("*filter") < at("*nat"));
    assert_eq!(all.iter().filter(|l| **l == "COMMIT").count(), 2);
    assert_eq!(all.last(), Some(&"COMMIT"));
    assert!(
        at(":KUBE-SEP-SXIVWICOYRO3J4NJ - [0:0]")
            < at("-A KUBE-POSTROUTING -j MARK --xor-mark 0x00004000")
    );
    assert_has_lines(
        &text,
        &[
            "-I PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
            "-I OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
            "-I POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
            "-I FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
            "-A KUBE-POSTROUTING -m mark ! --mark 0x00004000/0x00004000 -j RETURN",
            "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully",
            "-A KUBE-MARK-MASQ -j MARK --or-mark 0x00004000",
            "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
        ],
    );
    // Inserted first, kubelet's jump ends up after kube-proxy's, as on a node.
    let input_jumps = lines_starting(&text, "-I INPUT ");
    assert_eq!(input_jumps[0], "-I INPUT -j KUBE-FIREWALL");
    // The nodeports rule closes KUBE-SERVICES.
    let services = lines_starting(&text, "-A KUBE-SERVICES ");
    assert!(
        services
            .last()
            .is_some_and(|l| l.ends_with("-j KUBE-NODEPORTS"))
    );
    // No cluster CIDR, no off-cluster masquerade rule.
    assert!(!text.contains("--dport 80 ! -s "));
}

#[test]
fn iptables_rules_per_case() {
    struct Case {
        name: &'static str,
        port: ServicePortRules,
        config: ProxyConfig,
        want: &'static [&'static str],
        absent: &'static [&'static str],
    }
    let cidr = Ipv4Cidr {
        addr: Ipv4Addr::new(10, 0, 0, 0),
        prefix_len: 8,
    };
    let cases = [
        Case {
            name: "no endpoints: REJECT in filter, nothing in nat",
            port: port("ns6", "svc6", "p80", Proto::Tcp, "172.30.0.46", 80, &[]),
            config: ProxyConfig::default(),
            want: &[
                "-A KUBE-SERVICES -m comment --comment \"ns6/svc6:p80 has no endpoints\" -m tcp -p tcp -d 172.30.0.46 --dport 80 -j REJECT",
            ],
            absent: &["KUBE-SVC-", "KUBE-SEP-"],
        },
        Case {
            name: "udp",
            port: port(
                "kube-system",
                "kube-dns",
                "dns",
                Proto::Udp,
                "10.96.0.10",
                53,
                &["10.244.0.2:53"],
            ),
            config: ProxyConfig::default(),
            want: &[
                "-A KUBE-SERVICES -m comment --comment \"kube-system/kube-dns:dns cluster IP\" -m udp -p udp -d 10.96.0.10 --dport 53 -j KUBE-SVC-TCOU7JCQXEZGVUNU",
                "-A KUBE-SVC-TCOU7JCQXEZGVUNU -m comment --comment \"kube-system/kube-dns:dns -> 10.244.0.2:53\" -j KUBE-SEP-",
            ],
            absent: &["--probability"],
        },
        Case {
            name: "cluster CIDR: masquerade off-cluster clients",
            port: port(
                "ns1",
                "svc1",
                "p80",
                Proto::Tcp,
                "172.30.0.41",
                80,
                &["10.180.0.1:80"],
            ),
            config: ProxyConfig {
                cluster_cidr: Some(cidr),
                service_cidrs: vec![],
            },
            want: &[
                "-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment \"ns1/svc1:p80 cluster IP\" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ",
            ],
            absent: &[],
        },
    ];
    for case in cases {
        let text = iptables_restore_with(std::slice::from_ref(&case.port), &case.config);
        for want in case.want {
            assert!(
                text.lines().any(|l| l.starts_with(want)),
                "{}: missing {want}\n{text}",
                case.name
            );
        }
        for absent in case.absent {
            assert!(
                !text.contains(absent),
                "{}: unexpected {absent}\n{text}",
                case.name
            );
        }
    }
}

/// A NodePort with externalTrafficPolicy Cluster: svc3 of kube-proxy's proxier_test.go
/// (`TestOverallIPTablesRules`, whose expected rules its cleanup test repeats).
#[test]
fn iptables_node_port() {
    let svc3 = node_port(
        port(
            "ns3",
            "svc3",
            "p80",
            Proto::Tcp,
            "172.30.0.43",
            80,
            &["10.180.0.3:80"],
        ),
        3003,
    );
    let text = iptables_restore(std::slice::from_ref(&svc3));
    assert_has_lines(
        &text,
        &[
            ":KUBE-EXT-X27LE4BHSL4DOUIK - [0:0]",
            "-A KUBE-NODEPORTS -m comment --comment ns3/svc3:p80 -m tcp -p tcp --dport 3003 -j KUBE-EXT-X27LE4BHSL4DOUIK",
            "-A KUBE-EXT-X27LE4BHSL4DOUIK -m comment --comment \"masquerade traffic for ns3/svc3:p80 external destinations\" -j KUBE-MARK-MASQ",
            "-A KUBE-EXT-X27LE4BHSL4DOUIK -j KUBE-SVC-X27LE4BHSL4DOUIK",
            "-A KUBE-SERVICES -m comment --comment \"ns3/svc3:p80 cluster IP\" -m tcp -p tcp -d 172.30.0.43 --dport 80 -j KUBE-SVC-X27LE4BHSL4DOUIK",
            "-A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment \"ns3/svc3:p80 -> 10.180.0.3:80\" -j KUBE-SEP-OYPFS5VJICHGATKP",
            "-A KUBE-SEP-OYPFS5VJICHGATKP -m comment --comment ns3/svc3:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.3:80",
        ],
    );
    // Masquerade first, then the endpoint choice.
    assert_eq!(
        lines_starting(&text, "-A KUBE-EXT-X27LE4BHSL4DOUIK ").len(),
        2
    );
    let all = lines(&text);
    let at = |line: &str| all.iter().position(|l| *l == line);
    assert!(
        at("-A KUBE-EXT-X27LE4BHSL4DOUIK -j KUBE-SVC-X27LE4BHSL4DOUIK")
            > at(
                "-A KUBE-EXT-X27LE4BHSL4DOUIK -m comment --comment \"masquerade traffic for ns3/svc3:p80 external destinations\" -j KUBE-MARK-MASQ"
            )
    );
    // KUBE-SERVICES still ends with the jump to KUBE-NODEPORTS for local destinations.
    let services = lines_starting(&text, "-A KUBE-SERVICES ");
    assert_eq!(
        services.last(),
        Some(
            &"-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
        )
    );

    // Without endpoints the NodePort is rejected in the filter table, as the cluster IP is.
    let empty = node_port_without_endpoints();
    let text = iptables_restore(std::slice::from_ref(&empty));
    assert_has_lines(
        &text,
        &[
            "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"ns1/svc1:p80 has no endpoints\" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 3001 -j REJECT",
        ],
    );
    assert!(!text.contains("KUBE-EXT-"), "{text}");
    assert!(!text.contains("-A KUBE-NODEPORTS "), "{text}");
}

/// ns1/svc1:p80, NodePort 3001, with no endpoints.
fn node_port_without_endpoints() -> ServicePortRules {
    node_port(
        port("ns1", "svc1", "p80", Proto::Tcp, "172.30.0.41", 80, &[]),
        3001,
    )
}

#[test]
fn iptables_large_cluster_mode_drops_endpoint_comments() {
    let ports: Vec<ServicePortRules> = (0..501u16)
        .map(|i| {
            let [hi, lo] = i.to_be_bytes();
            let a = format!("10.1.{hi}.{lo}:80");
            let b = format!("10.2.{hi}.{lo}:80");
            port(
                "ns",
                &format!("s{i}"),
                "",
                Proto::Tcp,
                &format!("10.96.{hi}.{lo}"),
                80,
                &[&a, &b],
            )
        })
        .collect();
    let text = iptables_restore(&ports);
    let sep = iptables::endpoint_chain("ns/s0", "tcp", &ep("10.1.0.0:80"));
    assert_has_lines(
        &text,
        &[
            &format!("-A {sep} -s 10.1.0.0 -j KUBE-MARK-MASQ"),
            &format!("-A {sep} -m tcp -p tcp -j DNAT --to-destination 10.1.0.0:80"),
        ],
    );
    assert!(!text.contains(" -> "));
    // The KUBE-SERVICES comments stay.
    assert!(text.contains("--comment \"ns/s500 cluster IP\""));
}

#[test]
fn iptables_service_order_follows_input() {
    let a = port("ns", "a", "", Proto::Tcp, "10.96.0.2", 80, &["10.1.0.1:80"]);
    let b = port("ns", "b", "", Proto::Tcp, "10.96.0.1", 80, &["10.1.0.2:80"]);
    let text = iptables_restore(&[b, a]);
    let services = lines_starting(&text, "-A KUBE-SERVICES ");
    assert!(services[0].contains("\"ns/b cluster IP\""));
    assert!(services[1].contains("\"ns/a cluster IP\""));
}

#[test]
fn nftables_three_endpoints() {
    let svc = port(
        "ns1",
        "svc1",
        "p80",
        Proto::Tcp,
        "198.19.0.10",
        80,
        &["10.180.0.1:80", "10.180.0.2:80", "10.180.0.3:80"],
    );
    let text = nftables_script(std::slice::from_ref(&svc));
    let chain = "service-ULMVA6XW-ns1/svc1/tcp/p80";
    let eps: Vec<String> = svc
        .endpoints
        .iter()
        .map(|e| nftables::endpoint_chain(&svc, "tcp", e))
        .collect();
    assert_has_lines(
        &text,
        &[
            &format!(
                "add element ip kube-proxy service-ips {{ 198.19.0.10 . tcp . 80 : goto {chain} }}"
            ),
            "add element ip kube-proxy cluster-ips { 198.19.0.10 }",
            &format!("add chain ip kube-proxy {chain}"),
            &format!("flush chain ip kube-proxy {chain}"),
            &format!(
                "add rule ip kube-proxy {chain} numgen random mod 3 vmap {{ 0 : goto {} , 1 : goto {} , 2 : goto {} }}",
                eps[0], eps[1], eps[2]
            ),
            "add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 ip saddr 10.180.0.1 jump mark-for-masquerade",
            "add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 meta l4proto tcp dnat to 10.180.0.1:80",
        ],
    );
}

#[test]
fn nftables_layout() {
    let text = nftables_script(&[port(
        "ns1",
        "svc1",
        "p80",
        Proto::Tcp,
        "198.19.0.10",
        80,
        &["10.180.0.1:80"],
    )]);
    let all = lines(&text);
    assert_eq!(
        all[..3],
        [
            "add table ip kube-proxy",
            "delete table ip kube-proxy",
            "add table ip kube-proxy { comment \"rules for kube-proxy\" ; }"
        ]
    );
    assert_has_lines(
        &text,
        &[
            "add chain ip kube-proxy filter-prerouting { type filter hook prerouting priority -110 ; }",
            "add chain ip kube-proxy filter-output-post-dnat { type filter hook output priority -90 ; }",
            "add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }",
            "add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }",
            "add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }",
            "add rule ip kube-proxy nat-prerouting jump services",
            "add rule ip kube-proxy nat-output jump services",
            "add rule ip kube-proxy nat-postrouting jump masquerading",
            "add rule ip kube-proxy filter-forward ct state new jump service-endpoints-check",
            "add rule ip kube-proxy filter-output-post-dnat ct state new jump cluster-ips-check",
            "add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }",
            "add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips",
            "add rule ip kube-proxy service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services",
            "add rule ip kube-proxy mark-for-masquerade mark set mark or 0x00004000",
            "add rule ip kube-proxy masquerading mark and 0x00004000 == 0 return",
            "add rule ip kube-proxy masquerading mark set mark xor 0x00004000",
            "add rule ip kube-proxy masquerading masquerade fully-random",
            "add rule ip kube-proxy cluster-ips-check ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\"",
        ],
    );
    // Each regular chain is created and flushed once.
    assert_eq!(
        all.iter()
            .filter(|l| **l == "add chain ip kube-proxy services")
            .count(),
        1
    );
    // Maps are flushed before any element is added.
    let flush = all
        .iter()
        .position(|l| *l == "flush map ip kube-proxy service-ips");
    let element = all
        .iter()
        .position(|l| l.starts_with("add element ip kube-proxy service-ips"));
    assert!(flush.is_some() && flush < element);
    assert!(!text.contains("ip saddr !="));
}

struct NftCase {
    name: &'static str,
    ports: Vec<ServicePortRules>,
    config: ProxyConfig,
    want: &'static [&'static str],
    absent: &'static [&'static str],
}

/// A NodePort with externalTrafficPolicy Cluster: svc3 of kube-proxy's nftables
/// proxier_test.go (`TestOverallNFTablesRules`).
#[test]
fn nftables_node_port() {
    let svc3 = node_port(
        port(
            "ns3",
            "svc3",
            "p80",
            Proto::Tcp,
            "172.30.0.43",
            80,
            &["10.180.0.3:80"],
        ),
        3003,
    );
    let text = nftables_script(std::slice::from_ref(&svc3));
    let want = [
        "add chain ip kube-proxy external-4AT6LBPK-ns3/svc3/tcp/p80",
        "add rule ip kube-proxy external-4AT6LBPK-ns3/svc3/tcp/p80 jump mark-for-masquerade",
        "add rule ip kube-proxy external-4AT6LBPK-ns3/svc3/tcp/p80 goto service-4AT6LBPK-ns3/svc3/tcp/p80",
        "add rule ip kube-proxy service-4AT6LBPK-ns3/svc3/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-UEIP74TE-ns3/svc3/tcp/p80__10.180.0.3/80 }",
        "add rule ip kube-proxy endpoint-UEIP74TE-ns3/svc3/tcp/p80__10.180.0.3/80 meta l4proto tcp dnat to 10.180.0.3:80",
        "add element ip kube-proxy service-ips { 172.30.0.43 . tcp . 80 : goto service-4AT6LBPK-ns3/svc3/tcp/p80 }",
        "add element ip kube-proxy service-nodeports { tcp . 3003 : goto external-4AT6LBPK-ns3/svc3/tcp/p80 }",
        // The base rule that sends local destinations to the NodePort map.
        "add rule ip kube-proxy services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports",
    ];
    assert_has_lines(&text, &want);
    // The chain exists before the element that jumps to it, and is flushed once.
    let all = lines(&text);
    let at = |line: &str| all.iter().position(|l| *l == line);
    assert!(at(want[0]) < at(want[6]));
    assert_eq!(
        all.iter()
            .filter(|l| **l == "flush chain ip kube-proxy external-4AT6LBPK-ns3/svc3/tcp/p80")
            .count(),
        1
    );

    // Without endpoints: rejected through the no-endpoint-nodeports map, no external chain.
    let empty = node_port_without_endpoints();
    let text = nftables_script(std::slice::from_ref(&empty));
    assert_has_lines(
        &text,
        &[
            "add element ip kube-proxy no-endpoint-nodeports { tcp . 3001 comment \"ns1/svc1:p80\" : goto reject-chain }",
        ],
    );
    assert!(!text.contains("external-"), "{text}");
    assert!(
        !text.contains("add element ip kube-proxy service-nodeports"),
        "{text}"
    );
}

fn nft_cases() -> Vec<NftCase> {
    let cidr = |a, b, c, d, len| Ipv4Cidr {
        addr: Ipv4Addr::new(a, b, c, d),
        prefix_len: len,
    };
    vec![
        NftCase {
            name: "no endpoints: reject via the no-endpoint-services map",
            ports: vec![port(
                "ns6",
                "svc6",
                "p80",
                Proto::Tcp,
                "172.30.0.46",
                80,
                &[],
            )],
            config: ProxyConfig::default(),
            want: &[
                "add element ip kube-proxy no-endpoint-services { 172.30.0.46 . tcp . 80 comment \"ns6/svc6:p80\" : goto reject-chain }",
                "add element ip kube-proxy cluster-ips { 172.30.0.46 }",
            ],
            absent: &[
                "goto service-",
                "numgen",
                "add element ip kube-proxy service-ips",
            ],
        },
        NftCase {
            name: "udp, one endpoint",
            ports: vec![port(
                "kube-system",
                "kube-dns",
                "dns",
                Proto::Udp,
                "10.96.0.10",
                53,
                &["10.244.0.2:53"],
            )],
            config: ProxyConfig::default(),
            want: &[
                "add element ip kube-proxy service-ips { 10.96.0.10 . udp . 53 : goto service-",
                "add rule ip kube-proxy endpoint-",
                "numgen random mod 1 vmap { 0 : goto endpoint-",
            ],
            absent: &[" tcp dnat", "l4proto tcp"],
        },
        NftCase {
            name: "two ports of one service: one cluster-ips element",
            ports: vec![
                port(
                    "kube-system",
                    "kube-dns",
                    "dns",
                    Proto::Udp,
                    "10.96.0.10",
                    53,
                    &["10.244.0.2:53"],
                ),
                port(
                    "kube-system",
                    "kube-dns",
                    "dns-tcp",
                    Proto::Tcp,
                    "10.96.0.10",
                    53,
                    &["10.244.0.2:53"],
                ),
            ],
            config: ProxyConfig::default(),
            want: &[
                "add element ip kube-proxy service-ips { 10.96.0.10 . tcp . 53 : goto service-",
            ],
            absent: &[],
        },
        NftCase {
            name: "cluster and service CIDRs",
            ports: vec![port(
                "ns1",
                "svc1",
                "p80",
                Proto::Tcp,
                "172.30.0.41",
                80,
                &["10.180.0.1:80"],
            )],
            config: ProxyConfig {
                cluster_cidr: Some(cidr(10, 0, 0, 0, 8)),
                service_cidrs: vec![cidr(172, 30, 0, 0, 16), cidr(172, 31, 0, 0, 16)],
            },
            want: &[
                "add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 ip daddr 172.30.0.41 tcp dport 80 ip saddr != 10.0.0.0/8 jump mark-for-masquerade",
                "add rule ip kube-proxy cluster-ips-check ip daddr { 172.30.0.0/16,172.31.0.0/16 } drop comment \"Drop traffic to unallocated ClusterIPs\"",
            ],
            absent: &[],
        },
    ]
}

#[test]
fn nftables_rules_per_case() {
    for case in nft_cases() {
        let text = nftables_script_with(&case.ports, &case.config);
        for want in case.want {
            assert!(
                text.lines().any(|l| l.contains(want)),
                "{}: missing {want}\n{text}",
                case.name
            );
        }
        for absent in case.absent {
            assert!(
                !text.contains(absent),
                "{}: unexpected {absent}\n{text}",
                case.name
            );
        }
        let cluster_ip_elements =
            lines_starting(&text, "add element ip kube-proxy cluster-ips").len();
        assert_eq!(cluster_ip_elements, 1, "{}", case.name);
    }
}

fn meta(ns: &str, name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        labels: Some(
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ),
        ..ObjectMeta::default()
    }
}

fn service(ns: &str, name: &str, cluster_ip: &str, ports: &[(&str, &str, i32)]) -> Service {
    Service {
        metadata: meta(ns, name, &[]),
        spec: Some(ServiceSpec {
            cluster_ip: Some(cluster_ip.into()),
            ports: Some(
                ports
                    .iter()
                    .map(|(name, proto, port)| ServicePort {
                        name: Some((*name).into()),
                        protocol: Some((*proto).into()),
                        port: *port,
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn slice(
    ns: &str,
    service: &str,
    ports: &[(&str, &str, i32)],
    endpoints: &[(&[&str], Option<bool>)],
) -> EndpointSlice {
    EndpointSlice {
        metadata: meta(
            ns,
            &format!("{service}-abcde"),
            &[("kubernetes.io/service-name", service)],
        ),
        address_type: "IPv4".into(),
        ports: Some(
            ports
                .iter()
                .map(|(name, proto, port)| EndpointPort {
                    name: Some((*name).into()),
                    protocol: Some((*proto).into()),
                    port: Some(*port),
                    ..EndpointPort::default()
                })
                .collect(),
        ),
        endpoints: endpoints
            .iter()
            .map(|(addresses, ready)| Endpoint {
                addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
                conditions: Some(EndpointConditions {
                    ready: *ready,
                    ..EndpointConditions::default()
                }),
                ..Endpoint::default()
            })
            .collect(),
    }
}

#[test]
fn service_ports_reads_like_kube_proxy() {
    let mut external = service("ns", "ext", "", &[("http", "TCP", 80)]);
    if let Some(spec) = external.spec.as_mut() {
        spec.type_ = Some("ExternalName".into());
    }
    let services = [
        service(
            "ns",
            "web",
            "10.96.0.5",
            &[("http", "TCP", 80), ("dns", "UDP", 53), ("sctp", "SCTP", 9)],
        ),
        service("ns", "headless", "None", &[("http", "TCP", 80)]),
        external,
        service("ns", "empty", "10.96.0.6", &[("", "TCP", 8080)]),
    ];
    let slices = [
        slice(
            "ns",
            "web",
            &[("http", "TCP", 8080), ("dns", "UDP", 5353)],
            &[
                (&["10.1.0.9", "10.9.9.9"], None),
                (&["10.1.0.10"], Some(true)),
                (&["10.1.0.11"], Some(false)),
            ],
        ),
        // A second slice repeating one endpoint, and a port that matches by name but not
        // protocol.
        slice(
            "ns",
            "web",
            &[("http", "TCP", 8080), ("dns", "TCP", 53)],
            &[(&["10.1.0.9"], Some(true)), (&["10.1.0.12"], None)],
        ),
        // Same service name in another namespace.
        slice(
            "other",
            "web",
            &[("http", "TCP", 8080)],
            &[(&["10.7.0.1"], None)],
        ),
    ];
    let got = service_ports(&services, &slices);
    let want = [
        port(
            "ns",
            "web",
            "http",
            Proto::Tcp,
            "10.96.0.5",
            80,
            &["10.1.0.10:8080", "10.1.0.12:8080", "10.1.0.9:8080"],
        ),
        port(
            "ns",
            "web",
            "dns",
            Proto::Udp,
            "10.96.0.5",
            53,
            &["10.1.0.10:5353", "10.1.0.9:5353"],
        ),
        port("ns", "empty", "", Proto::Tcp, "10.96.0.6", 8080, &[]),
    ];
    assert_eq!(got, want);
}

#[test]
fn service_ports_reads_node_ports() {
    let with_node_port = |name: &str, policy: Option<&str>| {
        let mut svc = service(
            "ns",
            name,
            "10.96.0.7",
            &[("http", "TCP", 80), ("dns", "UDP", 53)],
        );
        let spec = svc.spec.as_mut().expect("spec");
        spec.type_ = Some("NodePort".into());
        spec.external_traffic_policy = policy.map(Into::into);
        for (port, node_port) in spec
            .ports
            .as_mut()
            .expect("ports")
            .iter_mut()
            .zip([30080, 0])
        {
            port.node_port = Some(node_port);
        }
        svc
    };
    let services = [
        with_node_port("cluster", Some("Cluster")),
        with_node_port("default", None),
        with_node_port("local", Some("Local")),
    ];
    let got: Vec<(String, Option<u16>)> = service_ports(&services, &[])
        .into_iter()
        .map(|p| (p.service_port_name(), p.node_port))
        .collect();
    assert_eq!(
        got,
        [
            ("ns/cluster:http".to_owned(), Some(30080)),
            ("ns/cluster:dns".to_owned(), None),
            ("ns/default:http".to_owned(), Some(30080)),
            ("ns/default:dns".to_owned(), None),
            // Not generated: see the module doc.
            ("ns/local:http".to_owned(), None),
            ("ns/local:dns".to_owned(), None),
        ]
    );
}

/// Loads are sized for 10,000 services with 3 endpoints each; check the output has the
/// expected shape at that size.
#[test]
fn ten_thousand_services() {
    let ports: Vec<ServicePortRules> = (0..10_000u16)
        .map(|i| {
            let [hi, lo] = i.to_be_bytes();
            let eps: Vec<String> = (1..=3).map(|k| format!("10.{k}.{hi}.{lo}:8080")).collect();
            let eps: Vec<&str> = eps.iter().map(String::as_str).collect();
            port(
                "bench",
                &format!("svc-{i}"),
                "http",
                Proto::Tcp,
                &format!("198.19.{hi}.{lo}"),
                80,
                &eps,
            )
        })
        .collect();
    let ipt = iptables_restore(&ports);
    assert_eq!(lines_starting(&ipt, ":KUBE-SEP-").len(), 30_000);
    assert_eq!(lines_starting(&ipt, ":KUBE-SVC-").len(), 10_000);
    let nft = nftables_script(&ports);
    assert_eq!(
        lines_starting(&nft, "add element ip kube-proxy service-ips").len(),
        10_000
    );
    assert_eq!(
        lines_starting(&nft, "add chain ip kube-proxy endpoint-").len(),
        30_000
    );
}
