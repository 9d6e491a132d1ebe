//! The manifests judged by the real API server (the test bed's kube-apiserver of the pinned
//! release, with its validation and admission): `kubectl apply --dry-run=server` of the base
//! and of the kind overlay succeeds without a warning and creates nothing, broken copies of
//! the base fail, and the pods the DaemonSets would create are admitted, their priority class
//! resolved.
//!
//! The test bed's API server runs with `--allow-privileged=true`, as kubeadm and kind run it:
//! the kind overlay has one privileged init container (it mounts kind's missing bpffs).

mod deploy_support;

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Output, Stdio},
};

use deploy_support::{BASE, KIND, documents, kubectl, kustomize, repo_path};
use kproxy_testbed::{
    Netns, Topology, TopologyOptions,
    kubernetes::{ControlPlane, pki},
    require_privileges,
};
use serde_json::{Value, json};

/// system-node-critical's priority, as the API server defines it.
const NODE_CRITICAL_PRIORITY: i64 = 2_000_001_000;

/// kubectl as the cluster's administrator, inside the namespace the API server listens in.
struct Kubectl<'a> {
    ns: &'a Netns,
    kubeconfig: PathBuf,
}

impl Kubectl<'_> {
    fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = self
            .ns
            .command(kubectl())
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting kubectl");
        let mut input = child.stdin.take().expect("stdin");
        input
            .write_all(stdin.unwrap_or_default().as_bytes())
            .expect("writing to kubectl");
        drop(input);
        child.wait_with_output().expect("kubectl")
    }

    /// `kubectl apply --dry-run=server -k dir`: the objects as the API server would store
    /// them, or its refusal.
    fn dry_run_apply(&self, dir: &Path) -> Result<Vec<Value>, String> {
        let dir = dir.display().to_string();
        let out = self.run(
            &[
                "apply",
                "--dry-run=server",
                "--validate=strict",
                "-o",
                "json",
                "-k",
                &dir,
            ],
            None,
        );
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            return Err(stderr);
        }
        assert!(stderr.trim().is_empty(), "{dir}: warnings: {stderr}");
        let list: Value = serde_json::from_slice(&out.stdout).expect("kubectl's JSON");
        Ok(list["items"].as_array().expect("a list").clone())
    }

    /// `kubectl create --dry-run=server` of `object`: as the API server would store it, or
    /// its refusal.
    fn dry_run_create(&self, object: &Value) -> Result<Value, String> {
        let out = self.run(
            &["create", "--dry-run=server", "-o", "json", "-f", "-"],
            Some(&object.to_string()),
        );
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(serde_json::from_slice(&out.stdout).expect("kubectl's JSON"))
    }
}

/// A copy of the base in `copy` with `from` replaced by `to` in its DaemonSet.
fn broken_base(copy: &Path, from: &str, to: &str) -> PathBuf {
    std::fs::create_dir(copy).expect("creating the copy");
    for entry in std::fs::read_dir(repo_path(BASE)).expect("reading the base") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("reading the base");
        let text = if path.ends_with("daemonset.yaml") {
            assert!(text.contains(from), "{from:?} in the DaemonSet");
            text.replacen(from, to, 1)
        } else {
            text
        };
        std::fs::write(copy.join(path.file_name().expect("a name")), text).expect("copying");
    }
    copy.to_path_buf()
}

/// The pod the DaemonSet among `objects` would create.
fn daemonset_pod(objects: &[Value]) -> Value {
    let ds = objects
        .iter()
        .find(|o| o["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    let template = &ds["spec"]["template"];
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "kproxy-dry-run",
            "namespace": ds["metadata"]["namespace"],
            "labels": template["metadata"]["labels"],
        },
        "spec": template["spec"],
    })
}

#[test]
fn the_api_server_accepts_the_base_and_the_kind_overlay() {
    if !require_privileges("the_api_server_accepts_the_base_and_the_kind_overlay") {
        return;
    }
    let topo = Topology::build(TopologyOptions {
        backends: 1,
        ..TopologyOptions::default()
    })
    .expect("building the test bed");
    let dir = tempfile::Builder::new()
        .prefix("kpt-deploy-")
        .tempdir()
        .expect("temp dir");
    let plane = ControlPlane::start(
        &topo.node,
        &dir.path().join("kubernetes"),
        topo.client_gateway(),
    )
    .unwrap_or_else(|e| panic!("starting the control plane: {e:#}"));
    let kubectl = Kubectl {
        ns: &topo.node,
        kubeconfig: plane.kubeconfig(pki::ADMIN),
    };

    for variant in [BASE, KIND] {
        let objects = kubectl
            .dry_run_apply(&repo_path(variant))
            .unwrap_or_else(|refusal| panic!("the API server refuses {variant}: {refusal}"));
        let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
        assert!(kinds.contains(&"DaemonSet"), "{variant}: {kinds:?}");
    }
    let get = kubectl.run(&["-n", "kube-system", "get", "daemonset", "kproxy"], None);
    assert!(
        !get.status.success() && String::from_utf8_lossy(&get.stderr).contains("NotFound"),
        "a dry run creates nothing"
    );

    broken_copies_are_refused(&kubectl, dir.path());
    pods_are_admitted(&kubectl);
}

/// The check can fail: a field the API does not know, a rolling update that could never
/// make progress (no pod may be down, none may be added).
fn broken_copies_are_refused(kubectl: &Kubectl, dir: &Path) {
    for (i, (from, to, complaint)) in [
        (
            "hostNetwork: true",
            "hostNetwork: true\n      hostNetwrk: true",
            "hostNetwrk",
        ),
        ("maxUnavailable: 1", "maxUnavailable: 0", "maxUnavailable"),
    ]
    .into_iter()
    .enumerate()
    {
        let copy = broken_base(&dir.join(format!("broken-{i}")), from, to);
        let refusal = kubectl.dry_run_apply(&copy).expect_err(to);
        assert!(refusal.contains(complaint), "{to}: {refusal}");
    }
}

/// The pods the DaemonSets would create are admitted. Their service account must exist
/// (the admission plugin looks it up), so the base is applied for real; nothing runs it (no
/// DaemonSet controller, no kubelet).
fn pods_are_admitted(kubectl: &Kubectl) {
    let applied = kubectl.run(
        &["apply", "-k", &repo_path(BASE).display().to_string()],
        None,
    );
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    for variant in [BASE, KIND] {
        let pod = daemonset_pod(&documents(&kustomize(&repo_path(variant))));
        let admitted = kubectl
            .dry_run_create(&pod)
            .unwrap_or_else(|refusal| panic!("{variant}: the pod is refused: {refusal}"));
        assert_eq!(
            admitted["spec"]["priority"].as_i64(),
            Some(NODE_CRITICAL_PRIORITY),
            "{variant}: system-node-critical resolved"
        );
    }
}
