use super::*;

/// What kube-proxy v1.37.2 writes with `--write-config-to` (its defaults, every field).
const KUBE_PROXY_DEFAULTS: &str = include_str!("written-by-kube-proxy-v1.37.2.yaml");

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn kube_proxys_own_defaults_become_its_flags_with_a_note_on_the_mode_only() {
    let got = from_text(KUBE_PROXY_DEFAULTS).expect("kube-proxy's own file");
    assert_eq!(
        got.args,
        strings(&[
            "--bind-address=0.0.0.0",
            "--healthz-bind-address=0.0.0.0:10256",
            "--metrics-bind-address=127.0.0.1:10249",
            "--bind-address-hard-fail=false",
            "--iptables-localhost-nodeports=true",
            "--detect-local-mode=ClusterCIDR",
            "--oom-score-adj=-999",
            "--conntrack-tcp-timeout-established=24h0m0s",
            "--conntrack-udp-timeout=0s",
            "--conntrack-udp-timeout-stream=0s",
            "--v=0",
        ])
    );
    assert_eq!(got.notes.len(), 1, "{:?}", got.notes);
    assert!(got.notes[0].starts_with("mode ignored"), "{:?}", got.notes);
}

#[test]
fn settings_with_a_kproxy_flag_become_that_flag() {
    let got = from_text(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
hostnameOverride: node-7
clusterCIDR: 10.244.0.0/16,fd00:10:244::/56
nodePortAddresses: [primary]
nftables:
  masqueradeAll: true
detectLocalMode: InterfaceNamePrefix
detectLocal:
  interfaceNamePrefix: veth
conntrack:
  tcpEstablishedTimeout: 2h0m0s
  udpTimeout: 45s
logging:
  verbosity: 4
",
    )
    .expect("valid");
    assert_eq!(
        got.args,
        strings(&[
            "--kubeconfig=/var/lib/kube-proxy/kubeconfig.conf",
            "--node-name=node-7",
            "--masquerade-all=true",
            "--detect-local-mode=InterfaceNamePrefix",
            "--pod-interface-name-prefix=veth",
            "--cluster-cidr=10.244.0.0/16,fd00:10:244::/56",
            "--nodeport-addresses=primary",
            "--conntrack-tcp-timeout-established=2h0m0s",
            "--conntrack-udp-timeout=45s",
            "--v=4",
        ])
    );
    assert_eq!(got.notes, Vec::<String>::new());
}

#[test]
fn settings_kproxy_does_not_use_are_noted_or_refused_as_their_flags_are() {
    let got = from_text(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  qps: 50
configSyncPeriod: 1m
conntrack:
  tcpBeLiberal: true
logging:
  format: json
",
    )
    .expect("accepted");
    let fields: Vec<&str> = got
        .notes
        .iter()
        .map(|n| n.split(" ignored: ").next().unwrap_or_default())
        .collect();
    assert_eq!(
        fields,
        [
            "clientConnection.qps/burst",
            "configSyncPeriod",
            "conntrack.tcpBeLiberal",
            "logging.format",
        ]
    );
    assert!(got.args.is_empty(), "{:?}", got.args);

    let head = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n";
    for (body, field) in [
        ("ipvs: {scheduler: lc}\n", "ipvs differs"),
        ("iptables: {minSyncPeriod: 10s}\n", "minSyncPeriod differs"),
        ("conntrack: {maxPerCore: 0}\n", "maxPerCore/min differs"),
        (
            "conntrack: {tcpCloseWaitTimeout: 30m}\n",
            "tcpCloseWaitTimeout differs",
        ),
        ("portRange: 30000-32767\n", "portRange differs"),
        ("winkernel: {enableDSR: true}\n", "winkernel"),
    ] {
        let err = from_text(&format!("{head}{body}")).expect_err(body);
        assert!(
            err.contains(field) && err.contains("cannot honour"),
            "{body}: {err}"
        );
    }
    for body in [
        "ipvs: {scheduler: \"\", tcpTimeout: 0s, excludeCIDRs: null}\n",
        "conntrack: {maxPerCore: 32768, tcpCloseWaitTimeout: 1h0m0s}\n",
        "iptables: {syncPeriod: 30s, minSyncPeriod: 1s}\n",
    ] {
        assert!(
            from_text(&format!("{head}{body}")).is_ok(),
            "defaults: {body}"
        );
    }
}

#[test]
fn what_kproxy_cannot_honour_and_what_kube_proxy_would_not_read_is_refused() {
    let head = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n";
    let cases: &[(&str, &str)] = &[
        ("featureGates: {Foo: true}\n", "feature gates"),
        ("enableProfiling: true\n", "profiling"),
        ("iptables: {masqueradeBit: 15}\n", "packet mark"),
        ("clusterCidr: 10.0.0.0/8\n", "unknown field `clusterCidr`"),
        (
            "conntrack: {tcpTimeout: 1h}\n",
            "unknown field `tcpTimeout`",
        ),
        ("mode: nftables\nmode: iptables\n", "duplicate"),
        ("bindAddress: [1]\n", "bindAddress"),
    ];
    for (body, part) in cases {
        let err = from_text(&format!("{head}{body}")).expect_err(body);
        assert!(err.contains(part), "{body}: {err}");
    }
    for (text, part) in [
        ("kind: KubeProxyConfiguration\n", "apiVersion None"),
        (
            "apiVersion: kubeproxy.config.k8s.io/v1beta1\nkind: KubeProxyConfiguration\n",
            "v1beta1",
        ),
        (
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeletConfiguration\n",
            "KubeletConfiguration",
        ),
    ] {
        let err = from_text(text).expect_err(text);
        assert!(err.contains(part), "{text}: {err}");
    }
}
