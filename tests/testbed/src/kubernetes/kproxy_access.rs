//! What a cluster operator does before kproxy's DaemonSet can run: apply `deploy/kproxy.yaml`,
//! the rendered `deploy/base` (its ServiceAccount, ClusterRole, binding and ConfigMap; there is
//! no kubelet to run the DaemonSet) and have the node registered. kproxy then reads the API with its service account's token.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::ControlPlane;

/// kproxy's manifest: the objects a cluster operator applies.
pub const DEPLOY_MANIFEST: &str = include_str!("../../../../deploy/kproxy.yaml");
/// Where the manifest puts kproxy's service account.
pub const SERVICE_ACCOUNT: (&str, &str) = ("kube-system", "kproxy");

impl ControlPlane {
    /// Applies kproxy's RBAC from `deploy/kproxy.yaml` and the Node object `node`, and writes
    /// a kubeconfig with a token of kproxy's service account to `kubeconfig`.
    pub fn install_kproxy(&self, node: &Value, kubeconfig: &Path) -> Result<PathBuf> {
        self.apply_yaml(DEPLOY_MANIFEST, &["DaemonSet"])
            .context("applying deploy/kproxy.yaml")?;
        self.apply(node).context("registering the node")?;
        let (namespace, name) = SERVICE_ACCOUNT;
        self.token_kubeconfig(namespace, name, kubeconfig)
            .context("kproxy's token")
    }
}

/// A Node `name` in `zone`; `extra` (spec, finalizers...) merged into the object, one level
/// deep (so `{"metadata": {"labels": ...}}` adds to the metadata).
pub fn node(name: &str, zone: &str, extra: &Value) -> Value {
    let mut node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}},
    });
    if let (Some(base), Some(extra)) = (node.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            match (
                base.get_mut(k).and_then(Value::as_object_mut),
                v.as_object(),
            ) {
                (Some(inner), Some(more)) => inner.extend(more.clone()),
                _ => {
                    base.insert(k.clone(), v.clone());
                }
            }
        }
    }
    node
}

/// A selector Service `default/name` (ClusterIP allocated by the API server) on port 80 to
/// the pods' `target_port`; `spec` is merged in.
pub fn service(name: &str, selector: &Value, target_port: u16, spec: &Value) -> Value {
    let mut svc = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "selector": selector,
            "ports": [{"name": "http", "port": 80, "targetPort": target_port, "protocol": "TCP"}],
        },
    });
    if let (Some(base), Some(extra)) = (svc["spec"].as_object_mut(), spec.as_object()) {
        base.extend(extra.clone());
    }
    svc
}
