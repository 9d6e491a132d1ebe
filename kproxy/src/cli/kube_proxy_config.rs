//! kube-proxy's configuration file (`--config`, `KubeProxyConfiguration`,
//! kubeproxy.config.k8s.io/v1alpha1), read into the `kproxy run` flags that mean the same.
//!
//! Decoded strictly, as kube-proxy decodes it: an unknown or repeated field is an error
//! naming it. A file carries every field (kubeadm's ConfigMap writes them all, mostly at
//! their defaults), so a field for something kproxy does not do is accepted at kube-proxy's
//! default; set to anything else it is treated as its flag on the command line is
//! (`kube_proxy_flags`): noted and ignored where it asks for nothing kproxy does differently
//! (the mode, client rate limits), refused where kproxy would otherwise do something other
//! than asked (another mode's settings, the kernel's conntrack sizing, profiling, feature
//! gates, a masquerade bit other than kube-proxy's own).

use std::{collections::BTreeMap, path::Path};

use serde::Deserialize;

pub const API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";
pub const KIND: &str = "KubeProxyConfiguration";

/// kube-proxy's masquerade bit default: a file naming it asks for nothing kproxy changes.
const DEFAULT_MASQUERADE_BIT: i32 = 14;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KubeProxyConfiguration {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    feature_gates: BTreeMap<String, bool>,
    #[serde(default)]
    client_connection: ClientConnection,
    logging: Option<serde_json::Value>,
    hostname_override: Option<String>,
    bind_address: Option<String>,
    healthz_bind_address: Option<String>,
    metrics_bind_address: Option<String>,
    bind_address_hard_fail: Option<bool>,
    enable_profiling: Option<bool>,
    show_hidden_metrics_for_version: Option<String>,
    mode: Option<String>,
    #[serde(default)]
    iptables: IptablesSection,
    #[serde(default)]
    ipvs: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    nftables: NftablesSection,
    #[serde(default)]
    winkernel: BTreeMap<String, serde_json::Value>,
    detect_local_mode: Option<String>,
    #[serde(default)]
    detect_local: DetectLocal,
    #[serde(rename = "clusterCIDR")]
    cluster_cidr: Option<String>,
    node_port_addresses: Option<Vec<String>>,
    oom_score_adj: Option<i32>,
    #[serde(default)]
    conntrack: Conntrack,
    config_sync_period: Option<String>,
    port_range: Option<String>,
    windows_run_as_service: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ClientConnection {
    kubeconfig: Option<String>,
    accept_content_types: Option<String>,
    content_type: Option<String>,
    qps: Option<f32>,
    burst: Option<i32>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct IptablesSection {
    masquerade_bit: Option<i32>,
    masquerade_all: Option<bool>,
    localhost_node_ports: Option<bool>,
    sync_period: Option<String>,
    min_sync_period: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NftablesSection {
    masquerade_bit: Option<i32>,
    masquerade_all: Option<bool>,
    sync_period: Option<String>,
    min_sync_period: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DetectLocal {
    bridge_interface: Option<String>,
    interface_name_prefix: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Conntrack {
    max_per_core: Option<i32>,
    min: Option<i32>,
    tcp_established_timeout: Option<String>,
    tcp_close_wait_timeout: Option<String>,
    tcp_be_liberal: Option<bool>,
    udp_timeout: Option<String>,
    udp_stream_timeout: Option<String>,
}

/// What a configuration file amounts to: `kproxy run` flags (`--name=value`, canonical
/// names) and notes on what it set that kproxy does not use.
#[derive(Debug, Default, PartialEq)]
pub struct FromFile {
    pub args: Vec<String>,
    pub notes: Vec<String>,
}

/// Reads `path` (YAML or JSON) into flags; `Err` names the file and what is wrong.
pub fn load(path: &Path) -> Result<FromFile, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--config {}: {e}", path.display()))?;
    from_text(&text).map_err(|e| format!("--config {}: {e}", path.display()))
}

fn from_text(text: &str) -> Result<FromFile, String> {
    let config: KubeProxyConfiguration = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    match (config.api_version.as_deref(), config.kind.as_deref()) {
        (Some(API_VERSION), Some(KIND)) => {}
        (version, kind) => {
            return Err(format!(
                "not a {API_VERSION} {KIND} (apiVersion {version:?}, kind {kind:?})"
            ));
        }
    }
    refuse_what_kproxy_cannot_honour(&config)?;
    let (refused, noted): (Vec<Departure>, Vec<Departure>) =
        departures(&config).into_iter().partition(|d| d.refused);
    if let Some(d) = refused.first() {
        return Err(format!(
            "{} differs from kube-proxy's default, and kproxy cannot honour it: {}; remove it",
            d.field, d.why
        ));
    }
    let mut out = FromFile::default();
    flags_of(&config, &mut out);
    out.notes = noted
        .iter()
        .map(|d| format!("{} ignored: {}", d.field, d.why))
        .collect();
    Ok(out)
}

/// Settings kproxy would silently not honour: refused.
fn refuse_what_kproxy_cannot_honour(c: &KubeProxyConfiguration) -> Result<(), String> {
    if !c.feature_gates.is_empty() {
        return Err(format!(
            "featureGates {:?}: kube-proxy's feature gates do not apply to kproxy; remove them",
            c.feature_gates.keys().collect::<Vec<_>>()
        ));
    }
    if c.enable_profiling == Some(true) {
        return Err("enableProfiling: kproxy serves no profiling endpoint".into());
    }
    if c.show_hidden_metrics_for_version
        .as_deref()
        .is_some_and(|v| !v.is_empty())
    {
        return Err("showHiddenMetricsForVersion: kproxy hides no metrics".into());
    }
    for (section, bit) in [
        ("iptables", c.iptables.masquerade_bit),
        ("nftables", c.nftables.masquerade_bit),
    ] {
        if let Some(bit) = bit.filter(|&b| b != DEFAULT_MASQUERADE_BIT) {
            return Err(format!(
                "{section}.masqueradeBit {bit}: kproxy masquerades without a packet mark, so \
                 it cannot leave bit {DEFAULT_MASQUERADE_BIT} free for another; remove it"
            ));
        }
    }
    Ok(())
}

/// The fields with a kproxy flag, as that flag.
fn flags_of(c: &KubeProxyConfiguration, out: &mut FromFile) {
    let mut flag = |name: &str, value: Option<String>| {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            out.args.push(format!("--{name}={value}"));
        }
    };
    flag("kubeconfig", c.client_connection.kubeconfig.clone());
    flag("node-name", c.hostname_override.clone());
    flag("bind-address", c.bind_address.clone());
    flag("healthz-bind-address", c.healthz_bind_address.clone());
    flag("metrics-bind-address", c.metrics_bind_address.clone());
    flag(
        "bind-address-hard-fail",
        c.bind_address_hard_fail.map(|b| b.to_string()),
    );
    // kube-proxy takes masqueradeAll from either mode's section.
    let masquerade_all = [c.iptables.masquerade_all, c.nftables.masquerade_all];
    if masquerade_all.contains(&Some(true)) {
        flag("masquerade-all", Some("true".into()));
    }
    flag(
        "iptables-localhost-nodeports",
        c.iptables.localhost_node_ports.map(|b| b.to_string()),
    );
    flag("detect-local-mode", c.detect_local_mode.clone());
    flag(
        "pod-bridge-interface",
        c.detect_local.bridge_interface.clone(),
    );
    flag(
        "pod-interface-name-prefix",
        c.detect_local.interface_name_prefix.clone(),
    );
    flag("cluster-cidr", c.cluster_cidr.clone());
    flag(
        "nodeport-addresses",
        c.node_port_addresses.as_ref().map(|a| a.join(",")),
    );
    flag("oom-score-adj", c.oom_score_adj.map(|v| v.to_string()));
    flag(
        "conntrack-tcp-timeout-established",
        c.conntrack.tcp_established_timeout.clone(),
    );
    flag("conntrack-udp-timeout", c.conntrack.udp_timeout.clone());
    flag(
        "conntrack-udp-timeout-stream",
        c.conntrack.udp_stream_timeout.clone(),
    );
    let verbosity = c.logging.as_ref().and_then(|l| l.get("verbosity"));
    flag(
        "v",
        verbosity
            .and_then(serde_json::Value::as_u64)
            .map(|v| v.to_string()),
    );
}

/// A field set to something other than kube-proxy's default that kproxy does not use.
struct Departure {
    field: &'static str,
    why: &'static str,
    /// Refused, as the command line refuses the flag (it would change what kube-proxy does);
    /// otherwise noted and ignored, as the command line ignores the flag.
    refused: bool,
}

/// The fields set to something other than kube-proxy's default (or the zero value it
/// defaults from) that kproxy does not use, each as the command line treats its flag. At
/// their defaults they ask for nothing kproxy does differently: a file written by
/// kube-proxy or kubeadm departs only in `mode`, which is noted.
fn departures(c: &KubeProxyConfiguration) -> Vec<Departure> {
    let mut all = noted_departures(c);
    all.extend(refused_departures(c));
    all
}

/// Set, and not to kube-proxy's `default` (nor the zero value it defaults from).
fn changed(v: Option<&String>, default: &str) -> bool {
    v.map(String::as_str)
        .is_some_and(|s| !s.is_empty() && s != default && !is_zero_duration(s))
}

fn departures_of(
    checks: impl IntoIterator<Item = (bool, &'static str, &'static str, bool)>,
) -> Vec<Departure> {
    checks
        .into_iter()
        .filter(|(set, ..)| *set)
        .map(|(_, field, why, refused)| Departure {
            field,
            why,
            refused,
        })
        .collect()
}

/// Departures that ask for nothing kproxy does differently.
fn noted_departures(c: &KubeProxyConfiguration) -> Vec<Departure> {
    let cc = &c.client_connection;
    let format = c
        .logging
        .as_ref()
        .and_then(|l| l.get("format"))
        .and_then(serde_json::Value::as_str);
    departures_of([
        (
            changed(cc.accept_content_types.as_ref(), "")
                || changed(
                    cc.content_type.as_ref(),
                    "application/vnd.kubernetes.protobuf",
                ),
            "clientConnection content types",
            "kproxy chooses its own (protobuf where the API server offers it)",
            false,
        ),
        (
            cc.qps
                .is_some_and(|q| q.abs() > f32::EPSILON && (q - 5.0).abs() > f32::EPSILON)
                || cc.burst.is_some_and(|b| b != 0 && b != 10),
            "clientConnection.qps/burst",
            "kproxy lists and watches each kind once; there is no request rate to limit",
            false,
        ),
        (
            c.mode.as_deref().is_some_and(|m| !m.is_empty()),
            "mode",
            "kube-proxy's choice of datapath; kproxy has one, eBPF",
            false,
        ),
        (
            changed(c.config_sync_period.as_ref(), "15m0s"),
            "configSyncPeriod",
            "kproxy's watches need no periodic resync",
            false,
        ),
        (
            c.conntrack.tcp_be_liberal == Some(true),
            "conntrack.tcpBeLiberal",
            "kproxy's conntrack never checks TCP windows; the kernel's is left alone",
            false,
        ),
        (
            format.is_some_and(|f| !f.is_empty() && f != "text"),
            "logging.format",
            "kproxy logs text",
            false,
        ),
    ])
}

/// Departures kproxy cannot honour.
fn refused_departures(c: &KubeProxyConfiguration) -> Vec<Departure> {
    departures_of([
        (
            changed(c.iptables.sync_period.as_ref(), "30s")
                || changed(c.iptables.min_sync_period.as_ref(), "1s")
                || changed(c.nftables.sync_period.as_ref(), "30s")
                || changed(c.nftables.min_sync_period.as_ref(), "1s"),
            "iptables/nftables syncPeriod, minSyncPeriod",
            "kproxy writes no rules on a period: it writes each change after --sync-debounce-ms",
            true,
        ),
        (
            c.ipvs.values().any(is_set),
            "ipvs",
            "kproxy has no IPVS mode",
            true,
        ),
        (
            c.winkernel.values().any(is_set) || c.windows_run_as_service == Some(true),
            "winkernel, windowsRunAsService",
            "kproxy runs on Linux",
            true,
        ),
        (
            c.conntrack.max_per_core.is_some_and(|v| v != 32_768)
                || c.conntrack.min.is_some_and(|v| v != 131_072),
            "conntrack.maxPerCore/min",
            "they size the kernel's conntrack table, which kproxy leaves alone (its own is --ct-max)",
            true,
        ),
        (
            changed(c.conntrack.tcp_close_wait_timeout.as_ref(), "1h0m0s"),
            "conntrack.tcpCloseWaitTimeout",
            "kproxy keeps a half-closed flow at the established timeout and leaves the kernel's \
             CLOSE_WAIT timeout alone",
            true,
        ),
        (
            changed(c.port_range.as_ref(), ""),
            "portRange",
            "the userspace proxy's setting; kproxy has no userspace proxy",
            true,
        ),
    ])
}

fn is_zero_duration(text: &str) -> bool {
    super::duration::parse(text).is_ok_and(|d| d.is_zero())
}

/// A value other than the zero value of its type (null, "", false, 0, "0s", empty list).
fn is_set(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty() && !is_zero_duration(s),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => o.values().any(is_set),
    }
}

#[cfg(test)]
mod tests;
