//! The `nft -f` input kube-proxy's nftables mode writes for ClusterIP and NodePort services: the
//! transaction of its first full sync (pkg/proxy/nftables/proxier.go, `setupNFTables` and
//! `syncProxyRules`, rendered the way sigs.k8s.io/knftables writes it), and its removal.

use std::{collections::HashSet, net::SocketAddrV4};

use super::{ProxyConfig, ServicePortRules, hash_prefix};

/// kube-proxy's table, in family `ip` for the IPv4 proxier.
const TABLE: &str = "ip kube-proxy";
/// The masquerade mark, as in iptables mode (`%#08x` of 1<<14).
const MASQ_MARK: &str = "0x00004000";
/// knftables.NameLengthMax minus kube-proxy's longest chain-name prefix
/// (`chainNameBaseLengthMax`).
const CHAIN_NAME_BASE_LENGTH_MAX: usize = 256 - 16;
/// Bytes of output per service port and per endpoint, to size the buffer once.
const BYTES_PER_SERVICE: usize = 420;
const BYTES_PER_ENDPOINT: usize = 480;

/// The base chains (`nftablesBaseChains`) as (name, type, hook, priority). knftables prints
/// the priorities as numbers: filter chains at dstnat-10 so they see pre-DNAT addresses,
/// filter-output-post-dnat at dstnat+10, NAT at dstnat and srcnat.
const BASE_CHAINS: [(&str, &str, &str, i32); 8] = [
    ("filter-prerouting", "filter", "prerouting", -110),
    ("filter-input", "filter", "input", -110),
    ("filter-forward", "filter", "forward", -110),
    ("filter-output", "filter", "output", -110),
    ("filter-output-post-dnat", "filter", "output", -90),
    ("nat-prerouting", "nat", "prerouting", -100),
    ("nat-output", "nat", "output", -100),
    ("nat-postrouting", "nat", "postrouting", 100),
];

/// The regular chains jumped to from base chains (`nftablesJumpChains`), as (to, from,
/// matches). The endpoints checks hang off input/forward/output because `reject` is only
/// valid there on kernels before 5.9.
const JUMP_CHAINS: [(&str, &str, &str); 11] = [
    ("nodeport-endpoints-check", "filter-input", "ct state new"),
    ("service-endpoints-check", "filter-input", "ct state new"),
    ("service-endpoints-check", "filter-forward", "ct state new"),
    ("service-endpoints-check", "filter-output", "ct state new"),
    ("firewall-check", "filter-prerouting", "ct state new"),
    ("firewall-check", "filter-output", "ct state new"),
    ("services", "nat-output", ""),
    ("services", "nat-prerouting", ""),
    ("masquerading", "nat-postrouting", ""),
    ("cluster-ips-check", "filter-forward", "ct state new"),
    (
        "cluster-ips-check",
        "filter-output-post-dnat",
        "ct state new",
    ),
];

/// The complete `nft -f` input kube-proxy's nftables mode writes for `ports` with its
/// default configuration. It starts by deleting any previous `ip kube-proxy` table, so
/// loading it again gives the same state; `nft -f` applies it as one transaction.
pub fn nftables_script(ports: &[ServicePortRules]) -> String {
    nftables_script_with(ports, &ProxyConfig::default())
}

/// [`nftables_script`] for kube-proxy started with `config`.
pub fn nftables_script_with(ports: &[ServicePortRules], config: &ProxyConfig) -> String {
    let endpoints: usize = ports.iter().map(|p| p.endpoints.len()).sum();
    let mut out = String::with_capacity(
        8192 + ports.len() * BYTES_PER_SERVICE + endpoints * BYTES_PER_ENDPOINT,
    );
    // "add" first so that "delete" cannot fail on a missing table (knftables does the same to
    // delete something that may not exist).
    emit!(out, "add table {TABLE}");
    emit!(out, "delete table {TABLE}");
    setup(&mut out, config);
    let mut cluster_ips = HashSet::with_capacity(ports.len());
    for port in ports {
        service_port(&mut out, port, config, &mut cluster_ips);
    }
    out
}

/// The service-independent part of the transaction (`setupNFTables`), in kube-proxy's order.
fn setup(out: &mut String, config: &ProxyConfig) {
    emit!(
        out,
        "add table {TABLE} {{ comment \"rules for kube-proxy\" ; }}"
    );
    // kube-proxy's first sync adds and deletes each base chain so that changed properties
    // (such as a priority) are recreated rather than rejected, then recreates and flushes
    // them.
    for (name, ..) in BASE_CHAINS {
        emit!(out, "add chain {TABLE} {name}");
        emit!(out, "delete chain {TABLE} {name}");
    }
    for (name, kind, hook, priority) in BASE_CHAINS {
        emit!(
            out,
            "add chain {TABLE} {name} {{ type {kind} hook {hook} priority {priority} ; }}"
        );
        emit!(out, "flush chain {TABLE} {name}");
    }
    let mut created = HashSet::new();
    for (to, from, matches) in JUMP_CHAINS {
        ensure_chain(out, to, &mut created);
        let sep = if matches.is_empty() { "" } else { " " };
        emit!(out, "add rule {TABLE} {from} {matches}{sep}jump {to}");
    }
    for chain in [
        "services",
        "cluster-ips-check",
        "masquerading",
        "mark-for-masquerade",
    ] {
        ensure_chain(out, chain, &mut created);
    }
    masquerading(out);
    cluster_ips_check(out, config);
    no_endpoint_handling(out);
    service_dispatch(out);
}

/// Adds and flushes a regular chain once per transaction (`ensureChain`).
fn ensure_chain<'a>(out: &mut String, chain: &'a str, created: &mut HashSet<&'a str>) {
    if created.insert(chain) {
        emit!(out, "add chain {TABLE} {chain}");
        emit!(out, "flush chain {TABLE} {chain}");
    }
}

/// Marking for SNAT, and SNAT of marked packets with the mark cleared.
fn masquerading(out: &mut String) {
    emit!(
        out,
        "add rule {TABLE} mark-for-masquerade mark set mark or {MASQ_MARK}"
    );
    emit!(
        out,
        "add rule {TABLE} masquerading mark and {MASQ_MARK} == 0 return"
    );
    emit!(
        out,
        "add rule {TABLE} masquerading mark set mark xor {MASQ_MARK}"
    );
    emit!(out, "add rule {TABLE} masquerading masquerade fully-random");
}

/// Rejects traffic to ports a ClusterIP does not serve and, when the ServiceCIDRs are known,
/// drops traffic to unallocated ClusterIPs. The nodeport-ips set is only used with
/// `--nodeport-addresses`, so kube-proxy adds and deletes it.
fn cluster_ips_check(out: &mut String, config: &ProxyConfig) {
    emit!(
        out,
        "add set {TABLE} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}"
    );
    emit!(
        out,
        "add rule {TABLE} cluster-ips-check ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\""
    );
    if !config.service_cidrs.is_empty() {
        let cidrs: Vec<String> = config
            .service_cidrs
            .iter()
            .map(ToString::to_string)
            .collect();
        emit!(
            out,
            "add rule {TABLE} cluster-ips-check ip daddr {{ {} }} drop comment \"Drop traffic to unallocated ClusterIPs\"",
            cidrs.join(",")
        );
    }
    emit!(
        out,
        "add set {TABLE} nodeport-ips {{ type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ; }}"
    );
    emit!(out, "delete set {TABLE} nodeport-ips");
}

/// The maps and chains that reject or drop traffic to services without endpoints.
fn no_endpoint_handling(out: &mut String) {
    emit!(
        out,
        "add map {TABLE} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to services with no endpoints\" ; }}"
    );
    emit!(
        out,
        "add map {TABLE} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ; }}"
    );
    emit!(
        out,
        "add chain {TABLE} reject-chain {{ comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\" ; }}"
    );
    emit!(out, "flush chain {TABLE} reject-chain");
    emit!(out, "add rule {TABLE} reject-chain reject");
    emit!(
        out,
        "add rule {TABLE} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services"
    );
    emit!(
        out,
        "add rule {TABLE} nodeport-endpoints-check ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports"
    );
}

/// LoadBalancerSourceRanges firewalling and the service dispatch maps, then the flush of
/// every map and set kube-proxy refills in the rest of the transaction.
fn service_dispatch(out: &mut String) {
    emit!(
        out,
        "add map {TABLE} firewall-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"destinations that are subject to LoadBalancerSourceRanges\" ; }}"
    );
    emit!(
        out,
        "add rule {TABLE} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips"
    );
    emit!(
        out,
        "add map {TABLE} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}"
    );
    emit!(
        out,
        "add map {TABLE} service-nodeports {{ type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }}"
    );
    emit!(
        out,
        "add rule {TABLE} services ip daddr . meta l4proto . th dport vmap @service-ips"
    );
    emit!(
        out,
        "add rule {TABLE} services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports"
    );
    emit!(out, "flush set {TABLE} cluster-ips");
    for map in [
        "service-ips",
        "firewall-ips",
        "no-endpoint-services",
        "no-endpoint-nodeports",
        "service-nodeports",
    ] {
        emit!(out, "flush map {TABLE} {map}");
    }
}

/// One service port: its endpoint, service and external chains, its map elements, then its
/// rules, in the order of kube-proxy's per-service loop.
fn service_port(
    out: &mut String,
    port: &ServicePortRules,
    config: &ProxyConfig,
    cluster_ips: &mut HashSet<std::net::Ipv4Addr>,
) {
    let name = port.service_port_name();
    let proto = port.protocol.as_str();
    let endpoints = port.ordered_endpoints();
    let (ip, dport) = (port.cluster_ip, port.port);
    let endpoint_chains: Vec<String> = endpoints
        .iter()
        .map(|ep| endpoint_chain(port, proto, ep))
        .collect();
    for chain in &endpoint_chains {
        emit!(out, "add chain {TABLE} {chain}");
        emit!(out, "flush chain {TABLE} {chain}");
    }
    let svc_chain = service_chain(port, proto);
    // The external chain exists for NodePorts with endpoints (`usesExternalTrafficChain`).
    let ext_chain = port
        .node_port
        .filter(|_| !endpoints.is_empty())
        .map(|node_port| (node_port, external_chain(port, proto)));
    if !endpoints.is_empty() {
        emit!(out, "add chain {TABLE} {svc_chain}");
        emit!(out, "flush chain {TABLE} {svc_chain}");
    }
    if let Some((_, chain)) = &ext_chain {
        emit!(out, "add chain {TABLE} {chain}");
        emit!(out, "flush chain {TABLE} {chain}");
    }
    // Several ports of one service share the ClusterIP; the set gets it once.
    if cluster_ips.insert(ip) {
        emit!(out, "add element {TABLE} cluster-ips {{ {ip} }}");
    }
    if endpoints.is_empty() {
        emit!(
            out,
            "add element {TABLE} no-endpoint-services {{ {ip} . {proto} . {dport} comment \"{name}\" : goto reject-chain }}"
        );
        if let Some(node_port) = port.node_port {
            emit!(
                out,
                "add element {TABLE} no-endpoint-nodeports {{ {proto} . {node_port} comment \"{name}\" : goto reject-chain }}"
            );
        }
        return;
    }
    emit!(
        out,
        "add element {TABLE} service-ips {{ {ip} . {proto} . {dport} : goto {svc_chain} }}"
    );
    if let Some((node_port, chain)) = &ext_chain {
        emit!(
            out,
            "add element {TABLE} service-nodeports {{ {proto} . {node_port} : goto {chain} }}"
        );
    }
    // Off-cluster clients reaching a ClusterIP are masqueraded (see the iptables rules).
    if let Some(cidr) = config.cluster_cidr {
        emit!(
            out,
            "add rule {TABLE} {svc_chain} ip daddr {ip} {proto} dport {dport} ip saddr != {cidr} jump mark-for-masquerade"
        );
    }
    // External traffic with policy Cluster may go to another node: masqueraded, then the
    // cluster IP's endpoint choice.
    if let Some((_, chain)) = &ext_chain {
        emit!(out, "add rule {TABLE} {chain} jump mark-for-masquerade");
        emit!(out, "add rule {TABLE} {chain} goto {svc_chain}");
    }
    service_to_endpoints(out, &svc_chain, &endpoint_chains);
    for (endpoint, chain) in endpoints.iter().zip(&endpoint_chains) {
        // Hairpin traffic (the endpoint reaching itself via the service) is masqueraded.
        emit!(
            out,
            "add rule {TABLE} {chain} ip saddr {} jump mark-for-masquerade",
            endpoint.ip()
        );
        emit!(
            out,
            "add rule {TABLE} {chain} meta l4proto {proto} dnat to {endpoint}"
        );
    }
}

/// The random choice of an endpoint: one `numgen` verdict map (`writeServiceToEndpointRules`).
fn service_to_endpoints(out: &mut String, svc_chain: &str, endpoint_chains: &[String]) {
    let mut vmap = String::with_capacity(endpoint_chains.len() * 64);
    for (i, chain) in endpoint_chains.iter().enumerate() {
        if i > 0 {
            vmap.push_str(" , ");
        }
        vmap.push_str(&i.to_string());
        vmap.push_str(" : goto ");
        vmap.push_str(chain);
    }
    emit!(
        out,
        "add rule {TABLE} {svc_chain} numgen random mod {} vmap {{ {vmap} }}",
        endpoint_chains.len()
    );
}

/// `service-<hash>-ns/name/proto/port` (`servicePortPolicyClusterChainNamePrefix`).
pub(super) fn service_chain(port: &ServicePortRules, proto: &str) -> String {
    format!("service-{}", chain_name_base(port, proto))
}

/// `external-<hash>-ns/name/proto/port` (`serviceExternalChainNamePrefix`): the
/// external-traffic chain.
pub(super) fn external_chain(port: &ServicePortRules, proto: &str) -> String {
    format!("external-{}", chain_name_base(port, proto))
}

/// `<hash>-ns/name/proto/port` (`servicePortChainNameBase`), shared by a service port's chains.
fn chain_name_base(port: &ServicePortRules, proto: &str) -> String {
    hash_and_truncate(&format!(
        "{}/{}/{proto}/{}",
        port.namespace, port.name, port.port_name
    ))
}

/// `endpoint-<hash>-ns/name/proto/port__ip/port` (`servicePortEndpointChainNameBase`).
pub(super) fn endpoint_chain(
    port: &ServicePortRules,
    proto: &str,
    endpoint: &SocketAddrV4,
) -> String {
    let base = format!(
        "{}/{}/{proto}/{}__{}/{}",
        port.namespace,
        port.name,
        port.port_name,
        endpoint.ip(),
        endpoint.port()
    );
    format!("endpoint-{}", hash_and_truncate(&base))
}

/// `hashAndTruncate`: the name prefixed with 8 base32 characters of its sha256, cut to
/// [`CHAIN_NAME_BASE_LENGTH_MAX`] with "..." if longer (never for valid Kubernetes names).
fn hash_and_truncate(name: &str) -> String {
    let mut out = hash_prefix(&[name], 8);
    out.push('-');
    out.push_str(name);
    if out.len() > CHAIN_NAME_BASE_LENGTH_MAX {
        let mut cut = CHAIN_NAME_BASE_LENGTH_MAX - 3;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("...");
    }
    out
}
