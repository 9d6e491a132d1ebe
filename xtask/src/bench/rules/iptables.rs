//! The `iptables-restore` input kube-proxy's iptables mode writes for ClusterIP and NodePort
//! services (pkg/proxy/iptables/proxier.go, `syncProxyRules`).

use std::net::SocketAddrV4;

use super::{ProxyConfig, ServicePortRules, hash_prefix};

/// The masquerade mark: `fmt.Sprintf("%#08x", 1<<masqueradeBit)` in `NewProxier`, with the
/// default `--iptables-masquerade-bit=14`.
const MASQ_MARK: &str = "0x00004000";
/// Above this many endpoints kube-proxy drops the per-endpoint comments to shrink its input
/// (`largeClusterEndpointsThreshold`, `appendServiceCommentLocked`).
const LARGE_CLUSTER_ENDPOINTS_THRESHOLD: usize = 1000;
/// Bytes of output per service port and per endpoint, to size the buffers once.
const BYTES_PER_SERVICE: usize = 320;
const BYTES_PER_ENDPOINT: usize = 420;

/// The jump rules from the built-in chains, as (table, from, to, extra matches, comment):
/// kubelet's (`iptablesKubeletJumpChains`, which kube-proxy also ensures) and kube-proxy's
/// (`iptablesJumpChains`). kube-proxy installs each with `iptables -I` (`EnsureRule(Prepend)`)
/// outside its restore input, unless already there, so the last one listed ends up first in
/// its chain; kubelet starts first on a node, so its jumps end up last.
const JUMPS: [(&str, &str, &str, &str, &str); 14] = [
    ("filter", "INPUT", "KUBE-FIREWALL", "", ""),
    ("filter", "OUTPUT", "KUBE-FIREWALL", "", ""),
    (
        "filter",
        "INPUT",
        "KUBE-EXTERNAL-SERVICES",
        "-m conntrack --ctstate NEW",
        "kubernetes externally-visible service portals",
    ),
    (
        "filter",
        "FORWARD",
        "KUBE-EXTERNAL-SERVICES",
        "-m conntrack --ctstate NEW",
        "kubernetes externally-visible service portals",
    ),
    (
        "filter",
        "INPUT",
        "KUBE-NODEPORTS",
        "",
        "kubernetes health check service ports",
    ),
    (
        "filter",
        "FORWARD",
        "KUBE-SERVICES",
        "-m conntrack --ctstate NEW",
        "kubernetes service portals",
    ),
    (
        "filter",
        "OUTPUT",
        "KUBE-SERVICES",
        "-m conntrack --ctstate NEW",
        "kubernetes service portals",
    ),
    (
        "filter",
        "FORWARD",
        "KUBE-FORWARD",
        "",
        "kubernetes forwarding rules",
    ),
    (
        "filter",
        "INPUT",
        "KUBE-PROXY-FIREWALL",
        "-m conntrack --ctstate NEW",
        "kubernetes load balancer firewall",
    ),
    (
        "filter",
        "OUTPUT",
        "KUBE-PROXY-FIREWALL",
        "-m conntrack --ctstate NEW",
        "kubernetes load balancer firewall",
    ),
    (
        "filter",
        "FORWARD",
        "KUBE-PROXY-FIREWALL",
        "-m conntrack --ctstate NEW",
        "kubernetes load balancer firewall",
    ),
    (
        "nat",
        "OUTPUT",
        "KUBE-SERVICES",
        "",
        "kubernetes service portals",
    ),
    (
        "nat",
        "PREROUTING",
        "KUBE-SERVICES",
        "",
        "kubernetes service portals",
    ),
    (
        "nat",
        "POSTROUTING",
        "KUBE-POSTROUTING",
        "",
        "kubernetes postrouting rules",
    ),
];

/// The complete `iptables-restore` input (tables filter and nat, each with its header and
/// COMMIT) kube-proxy's iptables mode writes for `ports`, with its default configuration.
/// Service rules follow the order of `ports`.
///
/// Plain `iptables-restore` replaces the whole filter and nat tables with it, so loading it
/// again gives the same state. (With `--noflush`, kube-proxy's way, a second load would
/// duplicate the jump rules: kube-proxy adds those only after checking with `iptables -C`
/// that they are missing, which a restore input cannot do.)
pub fn iptables_restore(ports: &[ServicePortRules]) -> String {
    iptables_restore_with(ports, &ProxyConfig::default())
}

/// [`iptables_restore`] for kube-proxy started with `config`.
pub fn iptables_restore_with(ports: &[ServicePortRules], config: &ProxyConfig) -> String {
    let mut rules = Restore::new(ports, config);
    for port in ports {
        rules.service_port(port);
    }
    rules.finish()
}

/// The four parts kube-proxy assembles into one restore input: chain declarations come
/// before all rules in each table (`filterChains`/`filterRules`, `natChains`/`natRules`).
struct Restore<'a> {
    config: &'a ProxyConfig,
    /// Set when the cluster has more endpoints than [`LARGE_CLUSTER_ENDPOINTS_THRESHOLD`].
    large_cluster_mode: bool,
    /// `--probability` texts by endpoint count, computed once each (`precomputeProbabilities`).
    probabilities: Vec<String>,
    filter_chains: String,
    filter_rules: String,
    nat_chains: String,
    nat_rules: String,
}

impl<'a> Restore<'a> {
    /// The buffers with the rules kube-proxy writes before any service.
    fn new(ports: &[ServicePortRules], config: &'a ProxyConfig) -> Self {
        let endpoints: usize = ports.iter().map(|p| p.endpoints.len()).sum();
        let mut rules = Restore {
            config,
            large_cluster_mode: endpoints > LARGE_CLUSTER_ENDPOINTS_THRESHOLD,
            probabilities: Vec::new(),
            filter_chains: String::with_capacity(1024),
            filter_rules: String::with_capacity(1024 + ports.len() * 160),
            nat_chains: String::with_capacity(512 + (ports.len() + endpoints) * 32),
            nat_rules: String::with_capacity(
                1024 + ports.len() * BYTES_PER_SERVICE + endpoints * BYTES_PER_ENDPOINT,
            ),
        };
        rules.top_level_chains();
        rules
    }

    /// The chains every sync declares and the rules that do not depend on services.
    fn top_level_chains(&mut self) {
        for chain in [
            "KUBE-SERVICES",
            "KUBE-EXTERNAL-SERVICES",
            "KUBE-FORWARD",
            "KUBE-NODEPORTS",
            "KUBE-PROXY-FIREWALL",
        ] {
            emit!(self.filter_chains, ":{chain} - [0:0]");
        }
        for chain in [
            "KUBE-SERVICES",
            "KUBE-NODEPORTS",
            "KUBE-POSTROUTING",
            "KUBE-MARK-MASQ",
        ] {
            emit!(self.nat_chains, ":{chain} - [0:0]");
        }
        // SNAT whatever KUBE-MARK-MASQ marked, clearing the mark so a packet that loops
        // through the stack again is not masqueraded twice. kube-proxy adds --random-fully
        // when iptables supports it (1.6.2 and later).
        let nat = &mut self.nat_rules;
        emit!(
            nat,
            "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"
        );
        emit!(nat, "-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}");
        emit!(
            nat,
            "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully"
        );
        emit!(nat, "-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}");
        // localhostNodePorts (the default) opens NodePorts on 127.0.0.1 through
        // route_localnet; this rule closes the hole that opens (https://issue.k8s.io/90259).
        emit!(self.filter_chains, ":KUBE-FIREWALL - [0:0]");
        emit!(
            self.filter_rules,
            "-A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"
        );
    }

    /// The rules of one service port: REJECT in the filter table when it has no endpoints,
    /// else the KUBE-SERVICES match, the NodePort's KUBE-NODEPORTS match and KUBE-EXT chain,
    /// the KUBE-SVC chain and one KUBE-SEP chain per endpoint (in the order kube-proxy writes
    /// them).
    fn service_port(&mut self, port: &ServicePortRules) {
        let name = port.service_port_name();
        let proto = port.protocol.as_str();
        let endpoints = port.ordered_endpoints();
        let (ip, dport) = (port.cluster_ip, port.port);
        if endpoints.is_empty() {
            emit!(
                self.filter_rules,
                "-A KUBE-SERVICES -m comment --comment \"{name} has no endpoints\" -m {proto} -p {proto} -d {ip} --dport {dport} -j REJECT"
            );
            if let Some(node_port) = port.node_port {
                emit!(
                    self.filter_rules,
                    "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"{name} has no endpoints\" -m addrtype --dst-type LOCAL -m {proto} -p {proto} --dport {node_port} -j REJECT"
                );
            }
            return;
        }
        let svc_chain = service_chain(&name, proto);
        emit!(
            self.nat_rules,
            "-A KUBE-SERVICES -m comment --comment \"{name} cluster IP\" -m {proto} -p {proto} -d {ip} --dport {dport} -j {svc_chain}"
        );
        let ext_chain = port.node_port.map(|node_port| {
            let ext_chain = external_chain(&name, proto);
            emit!(
                self.nat_rules,
                "-A KUBE-NODEPORTS -m comment --comment {name} -m {proto} -p {proto} --dport {node_port} -j {ext_chain}"
            );
            ext_chain
        });
        // Off-cluster clients reaching a ClusterIP (a static route to the service range via
        // any node) are masqueraded, since their endpoint may be on another node.
        if let Some(cidr) = self.config.cluster_cidr {
            emit!(
                self.nat_rules,
                "-A {svc_chain} -m comment --comment \"{name} cluster IP\" -m {proto} -p {proto} -d {ip} --dport {dport} ! -s {cidr} -j KUBE-MARK-MASQ"
            );
        }
        // External traffic (here: to the NodePort) with policy Cluster may be sent to another
        // node, so it is masqueraded before it joins the cluster IP's endpoint choice.
        if let Some(ext_chain) = ext_chain {
            emit!(self.nat_chains, ":{ext_chain} - [0:0]");
            emit!(
                self.nat_rules,
                "-A {ext_chain} -m comment --comment \"masquerade traffic for {name} external destinations\" -j KUBE-MARK-MASQ"
            );
            emit!(self.nat_rules, "-A {ext_chain} -j {svc_chain}");
        }
        emit!(self.nat_chains, ":{svc_chain} - [0:0]");
        let sep_chains: Vec<String> = endpoints
            .iter()
            .map(|ep| endpoint_chain(&name, proto, ep))
            .collect();
        self.service_to_endpoints(&name, &svc_chain, &endpoints, &sep_chains);
        for (endpoint, sep_chain) in endpoints.iter().zip(&sep_chains) {
            self.endpoint_chain(&name, proto, endpoint, sep_chain);
        }
    }

    /// Random choice of an endpoint (`writeServiceToEndpointRules`): endpoint i of n is taken
    /// with probability 1/(n-i) among those left, the last one unconditionally.
    fn service_to_endpoints(
        &mut self,
        name: &str,
        svc_chain: &str,
        endpoints: &[SocketAddrV4],
        sep_chains: &[String],
    ) {
        let count = endpoints.len();
        for (i, (endpoint, sep_chain)) in endpoints.iter().zip(sep_chains).enumerate() {
            let comment = self.comment(&format!("\"{name} -> {endpoint}\""));
            let statistic = if i + 1 < count {
                format!(
                    " -m statistic --mode random --probability {}",
                    self.probability(count - i)
                )
            } else {
                String::new()
            };
            emit!(
                self.nat_rules,
                "-A {svc_chain}{comment}{statistic} -j {sep_chain}"
            );
        }
    }

    /// An endpoint's chain: mark hairpin traffic (the endpoint reaching itself through the
    /// service) for masquerade, then DNAT.
    fn endpoint_chain(&mut self, name: &str, proto: &str, endpoint: &SocketAddrV4, chain: &str) {
        let comment = self.comment(name);
        let ip = endpoint.ip();
        emit!(self.nat_chains, ":{chain} - [0:0]");
        emit!(
            self.nat_rules,
            "-A {chain}{comment} -s {ip} -j KUBE-MARK-MASQ"
        );
        emit!(
            self.nat_rules,
            "-A {chain}{comment} -m {proto} -p {proto} -j DNAT --to-destination {endpoint}"
        );
    }

    /// ` -m comment --comment <text>`, or nothing in large cluster mode.
    fn comment(&self, text: &str) -> String {
        if self.large_cluster_mode {
            String::new()
        } else {
            format!(" -m comment --comment {text}")
        }
    }

    /// 1/n the way kube-proxy prints it (`computeProbability`: `%0.10f`).
    fn probability(&mut self, n: usize) -> &str {
        while self.probabilities.len() <= n {
            let k = self.probabilities.len();
            // Endpoint counts are far below 2^52, so the conversion is exact.
            #[allow(clippy::cast_precision_loss)]
            let p = 1.0 / k as f64;
            self.probabilities.push(format!("{p:.10}"));
        }
        &self.probabilities[n]
    }

    /// The restore input: filter then nat, each with its jump rules, as kube-proxy writes it.
    fn finish(self) -> String {
        let mut out = String::with_capacity(
            self.filter_chains.len()
                + self.filter_rules.len()
                + self.nat_chains.len()
                + self.nat_rules.len()
                + 4096,
        );
        out.push_str("*filter\n");
        out.push_str(&self.filter_chains);
        jump_rules(&mut out, "filter");
        out.push_str(&self.filter_rules);
        // kube-proxy drops packets conntrack finds INVALID (unless nf_conntrack_tcp_be_liberal
        // is set), lest they reset connections, then accepts marked and established traffic
        // in case FORWARD's policy is DROP.
        emit!(
            out,
            "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP"
        );
        emit!(
            out,
            "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT"
        );
        emit!(
            out,
            "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        );
        out.push_str("COMMIT\n*nat\n");
        out.push_str(&self.nat_chains);
        jump_rules(&mut out, "nat");
        out.push_str(&self.nat_rules);
        // NodePorts are matched last, on every local address (nodePortAddresses unset);
        // localhostNodePorts keeps 127.0.0.0/8 in.
        emit!(
            out,
            "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
        );
        out.push_str("COMMIT\n");
        out
    }
}

/// The jump rules of `table`, each inserted at the head of its chain like kube-proxy does.
fn jump_rules(out: &mut String, table: &str) {
    for (_, from, to, matches, comment) in JUMPS.iter().filter(|j| j.0 == table) {
        let sep = if matches.is_empty() { "" } else { " " };
        let comment = if comment.is_empty() {
            String::new()
        } else {
            format!(" -m comment --comment \"{comment}\"")
        };
        emit!(out, "-I {from}{sep}{matches}{comment} -j {to}");
    }
}

/// `KUBE-SVC-<portProtoHash>` (`servicePortPolicyClusterChain`).
pub(super) fn service_chain(service_port_name: &str, proto: &str) -> String {
    format!("KUBE-SVC-{}", hash_prefix(&[service_port_name, proto], 16))
}

/// `KUBE-EXT-<portProtoHash>` (`serviceExternalChainName`): the external-traffic chain.
pub(super) fn external_chain(service_port_name: &str, proto: &str) -> String {
    format!("KUBE-EXT-{}", hash_prefix(&[service_port_name, proto], 16))
}

/// `KUBE-SEP-<hash of name, protocol and ip:port>` (`servicePortEndpointChainName`).
pub(super) fn endpoint_chain(
    service_port_name: &str,
    proto: &str,
    endpoint: &SocketAddrV4,
) -> String {
    let endpoint = endpoint.to_string();
    format!(
        "KUBE-SEP-{}",
        hash_prefix(&[service_port_name, proto, &endpoint], 16)
    )
}
