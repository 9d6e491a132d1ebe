//! The real section's control plane: etcd, kube-apiserver and kube-controller-manager in a
//! network namespace of their own, started once per scale, and a veth link from it to the
//! node namespace of each fresh bench bed.
//!
//! Why its own namespace rather than one bed per scale: starting the control plane and
//! creating tens of thousands of objects costs minutes, so it has to outlive the beds; and
//! every mode still gets a fresh bed (as the generated-rules section does), so no netfilter
//! table, conntrack entry or pinned map of one proxy can leak into the next one's numbers —
//! nothing to clean up with `kube-proxy --cleanup` and `conntrack -F`, and nothing to trust
//! a cleanup for. When a bed's node namespace goes, its end of the link goes with it and the
//! pair vanishes; the next bed gets a new one.
//!
//! The link uses 198.18.199.0/24: the bench bed's three backends take 198.18.2-4.0/24, the
//! client 198.18.1.0/24, pod clients 198.18.201-250.0/24 (the bench adds none).

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use kproxy_testbed::{
    Netns,
    kubernetes::{ControlPlane, control_plane::APISERVER_PORT, pki, storage::Stored},
};
use serde_json::json;

use super::super::{bed::BenchBed, modes::NODE_NAME};

/// kproxy's manifest (the rendered deploy/base): its service account, read-only RBAC and
/// settings (the DaemonSet is not applied: there is no kubelet; the bench starts kproxy
/// itself).
const DEPLOY_MANIFEST: &str = include_str!("../../../../deploy/kproxy.yaml");
/// The link's interface name, at both ends.
const LINK: &str = "kbench-cp";
/// The control plane's address on the link (the API server's advertised address, the
/// `kubernetes` Service's endpoint) and the node's, which is also its Node's InternalIP.
pub const PLANE_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 199, 2);
pub const NODE_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 199, 1);
const PREFIX_LEN: u8 = 24;

/// A running control plane with the bench node registered and both proxies' kubeconfigs.
pub struct Plane {
    /// Declared first: dropped (its processes stopped) before the namespace goes.
    pub cp: ControlPlane,
    ns: Netns,
    /// kproxy's: a token of its own service account.
    pub kproxy_kubeconfig: PathBuf,
    /// kube-proxy's: the `system:kube-proxy` client certificate (bound to
    /// `system:node-proxier` by the default RBAC).
    pub kube_proxy_kubeconfig: PathBuf,
}

impl Plane {
    /// Starts the control plane under `dir`, applies kproxy's RBAC and registers the node.
    pub fn start(dir: &Path) -> Result<Plane> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        // Absolute: the kubeconfigs name their certificates by path, relative to themselves.
        let dir = &std::path::absolute(dir)?;
        let ns = Netns::create(&format!("kpt-{}-bench-cp", std::process::id()))?;
        let cp = ControlPlane::start(&ns, dir, PLANE_ADDR).context("starting the control plane")?;
        cp.apply_yaml(DEPLOY_MANIFEST, &["DaemonSet"])
            .context("applying deploy/kproxy.yaml")?;
        cp.apply(&json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": NODE_NAME},
        }))?;
        cp.apply_status(&json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": NODE_NAME},
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": NODE_ADDR.to_string()},
                    {"type": "Hostname", "address": NODE_NAME},
                ],
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }))?;
        let token = cp
            .token_kubeconfig(
                "kube-system",
                "kproxy",
                &dir.join("kproxy-token.kubeconfig"),
            )
            .context("kproxy's service-account token")?;
        let kproxy_kubeconfig = over_link(&token, &dir.join("kproxy.kubeconfig"))?;
        let kube_proxy_kubeconfig = over_link(
            &cp.kubeconfig(pki::KUBE_PROXY),
            &dir.join("kube-proxy-node.kubeconfig"),
        )?;
        Ok(Plane {
            cp,
            ns,
            kproxy_kubeconfig,
            kube_proxy_kubeconfig,
        })
    }

    /// Links the control plane to `bed`'s node namespace.
    /// Writes `objects` straight into the control plane's etcd, never splitting a run of
    /// `group` of them between transactions.
    pub fn store(&self, objects: &[Stored], group: usize) -> Result<()> {
        self.cp.store(&self.ns, objects, group)
    }

    /// The first `limit` objects stored under `prefix` (see `ControlPlane::stored`).
    pub fn stored(&self, prefix: &str, limit: usize) -> Result<Vec<Stored>> {
        self.cp.stored(&self.ns, prefix, limit)
    }

    /// Puts `objects` over what etcd holds for them, in one transaction.
    pub fn overwrite(&self, objects: &[&Stored]) -> Result<()> {
        self.cp.overwrite(&self.ns, objects)
    }

    pub fn link(&self, bed: &BenchBed) -> Result<()> {
        // The previous bed's link went with its namespace; this only clears a leftover.
        let _ = self.ns.ip(&["link", "del", LINK]);
        let node = bed.topo.node.name();
        self.ns.ip_batch(&[
            format!("link add {LINK} type veth peer name {LINK} netns {node}"),
            format!("addr add {PLANE_ADDR}/{PREFIX_LEN} dev {LINK}"),
            format!("link set {LINK} up"),
        ])?;
        bed.topo.node.ip_batch(&[
            format!("addr add {NODE_ADDR}/{PREFIX_LEN} dev {LINK}"),
            format!("link set {LINK} up"),
        ])?;
        Ok(())
    }

    /// The control plane's log tails, for an error message.
    pub fn log_tails(&self, lines: usize) -> String {
        self.cp.log_tails(lines)
    }
}

/// Copies `kubeconfig` (written for the API server on the control plane's own loopback) to
/// `to`, pointed at the API server's address on the link, which its certificate covers.
fn over_link(kubeconfig: &Path, to: &Path) -> Result<PathBuf> {
    let text = std::fs::read_to_string(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let local = format!("server: {}", ControlPlane::url());
    if !text.contains(&local) {
        bail!(
            "{} has no `{local}` to point elsewhere",
            kubeconfig.display()
        );
    }
    let remote = format!(
        "server: https://{}:{APISERVER_PORT}",
        IpAddr::V4(PLANE_ADDR)
    );
    std::fs::write(to, text.replace(&local, &remote))
        .with_context(|| format!("writing {}", to.display()))?;
    Ok(to.to_path_buf())
}
