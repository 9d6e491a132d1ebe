//! The real kube-proxy (built into the Kubernetes cache, see [`crate::kubernetes`]) running in
//! a bed's node namespace, as kubeadm runs it (the `system:kube-proxy` certificate), with
//! nothing changed but what keeps it inside the bed (see [`args`]).

use std::{ffi::OsString, path::Path};

use anyhow::Result;

use crate::{LoggedProcess, Netns, kubernetes};

/// Where a bed's kube-proxy serves `/healthz` and `/metrics`: the node's loopback.
pub const HEALTHZ_ADDR: &str = "127.0.0.1:10256";
pub const METRICS_ADDR: &str = "127.0.0.1:10249";

/// kube-proxy's command line for `mode` (`iptables`, `nftables`, `ipvs`) as kubeadm
/// configures it, except: conntrack sysctls left alone (a max of 0 per core and timeouts of 0
/// mean "do not set"; `nf_conntrack_max` is global, not the bed's), metrics and healthz on
/// the node's loopback, `--v=2` for its sync log lines, and no OOM score change of a process
/// on a shared machine.
pub fn args(mode: &str, kubeconfig: &Path, node_name: &str) -> Vec<OsString> {
    [
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--hostname-override={node_name}"),
        format!("--proxy-mode={mode}"),
        format!("--metrics-bind-address={METRICS_ADDR}"),
        format!("--healthz-bind-address={HEALTHZ_ADDR}"),
        "--conntrack-max-per-core=0".into(),
        "--conntrack-tcp-timeout-established=0".into(),
        "--conntrack-tcp-timeout-close-wait=0".into(),
        "--conntrack-udp-timeout=0".into(),
        "--conntrack-udp-timeout-stream=0".into(),
        "--oom-score-adj=0".into(),
        "--v=2".into(),
    ]
    .map(OsString::from)
    .to_vec()
}

/// Starts kube-proxy in `mode` inside `ns` with `env` (a `PATH` choosing its iptables, say),
/// its log appended to `log`; returns at once.
pub fn start(
    ns: &Netns,
    mode: &str,
    kubeconfig: &Path,
    node_name: &str,
    env: &[(&str, &str)],
    log: &Path,
) -> Result<LoggedProcess> {
    let program = kubernetes::program("kube-proxy")?;
    LoggedProcess::spawn(ns, &program, &args(mode, kubeconfig, node_name), env, log)
}
