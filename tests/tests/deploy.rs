//! The manifests in `deploy/` checked offline against what the agent really is: every field
//! known to the Kubernetes API types, the DaemonSet's command line accepted by `kproxy run`,
//! RBAC granting exactly what the API source watches, probes on the ports it serves.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{Container, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

/// The documents of a manifest file, as JSON values (comments and empty documents dropped).
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("reading the manifest");
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// Parses `doc` as `T` and checks that nothing was lost on the way: a field the API type
/// does not know (a typo, a wrong indentation) would vanish in the round trip.
fn strict<T: DeserializeOwned + Serialize>(doc: &Value) -> T {
    let typed: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{} is not a valid {}: {e}", name(doc), kind(doc)));
    let back = serde_json::to_value(&typed).expect("serializing");
    let mut lost = Vec::new();
    lost_fields(doc, &back, "", &mut lost);
    assert!(
        lost.is_empty(),
        "{} has fields its API type does not know: {lost:?}",
        name(doc)
    );
    assert_eq!(&back, doc, "{} changed in the round trip", name(doc));
    typed
}

/// Paths present in `original` but missing from `parsed`.
fn lost_fields(original: &Value, parsed: &Value, path: &str, lost: &mut Vec<String>) {
    match (original, parsed) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let here = format!("{path}.{key}");
                match b.get(key) {
                    Some(other) => lost_fields(value, other, &here, lost),
                    None => lost.push(here),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                lost_fields(x, y, &format!("{path}[{i}]"), lost);
            }
        }
        _ => {}
    }
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or("<no kind>")
}

fn name(doc: &Value) -> String {
    format!(
        "{} {}",
        kind(doc),
        doc["metadata"]["name"].as_str().unwrap_or("<unnamed>")
    )
}

fn deploy_manifest() -> Vec<Value> {
    documents(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kproxy.yaml"))
}

fn the<T: DeserializeOwned + Serialize>(docs: &[Value], kind_name: &str) -> T {
    let matching: Vec<&Value> = docs.iter().filter(|d| kind(d) == kind_name).collect();
    assert_eq!(matching.len(), 1, "one {kind_name} in deploy/kproxy.yaml");
    strict(matching[0])
}

/// The container's arguments with `$(VAR)` expanded as the kubelet does: literal values as
/// they are, values from the downward API or ConfigMaps as a stand-in.
fn expanded_args(container: &Container) -> Vec<String> {
    let env: BTreeMap<&str, String> = container
        .env
        .iter()
        .flatten()
        .map(|e| {
            let value = e
                .value
                .clone()
                .unwrap_or_else(|| format!("example-{}", e.name.to_lowercase()));
            (e.name.as_str(), value)
        })
        .collect();
    let args: Vec<String> = container
        .args
        .iter()
        .flatten()
        .map(|arg| {
            env.iter()
                .fold(arg.clone(), |a, (k, v)| a.replace(&format!("$({k})"), v))
        })
        .collect();
    assert!(
        args.iter().all(|a| !a.contains("$(")),
        "every variable the arguments use is defined: {args:?}"
    );
    args
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .find_map(|a| a.strip_prefix(&format!("--{name}="))?.into())
}

#[test]
fn every_document_is_a_valid_kubernetes_object() {
    let docs = deploy_manifest();
    assert_eq!(
        docs.len(),
        4,
        "ServiceAccount, ClusterRole, ClusterRoleBinding, DaemonSet"
    );
    let _: ServiceAccount = the(&docs, "ServiceAccount");
    let _: ClusterRole = the(&docs, "ClusterRole");
    let _: ClusterRoleBinding = the(&docs, "ClusterRoleBinding");
    let _: DaemonSet = the(&docs, "DaemonSet");
}

#[test]
fn the_daemonset_command_line_is_one_kproxy_accepts() {
    let ds: DaemonSet = the(&deploy_manifest(), "DaemonSet");
    let pod = ds.spec.expect("spec").template.spec.expect("pod spec");
    assert_eq!(
        pod.host_network,
        Some(true),
        "the datapath attaches to the node's links"
    );
    let container = &pod.containers[0];
    assert_eq!(
        container.command, None,
        "the image's entrypoint is kproxy (deploy/Dockerfile)"
    );
    let args = expanded_args(container);
    assert_eq!(args.first().map(String::as_str), Some("run"));
    kproxy::cli::check_run_args(args[1..].iter().cloned())
        .unwrap_or_else(|e| panic!("kproxy rejects the DaemonSet's arguments: {e}"));
    let env: BTreeSet<&str> = container
        .env
        .iter()
        .flatten()
        .map(|e| e.name.as_str())
        .collect();
    assert!(
        env.contains("NODE_NAME"),
        "--node-name comes from NODE_NAME"
    );
    assert!(
        flag(&args, "manifests").is_none() && flag(&args, "kubeconfig").is_none(),
        "in a cluster the agent reads the API with its service account"
    );

    // bpffs from the host, so pins (and the datapath) outlive the pod.
    let pin_dir = flag(&args, "pin-dir").expect("--pin-dir");
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| pin_dir.starts_with(&m.mount_path))
        .expect("the pin dir is on a mounted volume");
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .expect("the mount's volume");
    assert_eq!(
        volume.host_path.as_ref().map(|h| h.path.as_str()),
        Some("/sys/fs/bpf")
    );

    // The probes ask the endpoints on the port the agent serves them on.
    let healthz_port = flag(&args, "healthz-bind-address")
        .and_then(|a| a.rsplit_once(':'))
        .and_then(|(_, p)| p.parse::<i32>().ok())
        .expect("--healthz-bind-address");
    for (probe, path) in [
        (&container.liveness_probe, "/healthz"),
        (&container.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("an HTTP probe on {path}"));
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, IntOrString::Int(healthz_port));
    }
}

#[test]
fn rbac_grants_exactly_what_the_api_source_watches() {
    let docs = deploy_manifest();
    let role: ClusterRole = the(&docs, "ClusterRole");
    let mut granted: BTreeSet<(String, String, String)> = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    let needed: BTreeSet<(String, String, String)> = kproxy::source::api::REQUIRED_ACCESS
        .iter()
        .flat_map(|(group, resource, verbs)| {
            verbs
                .iter()
                .map(move |v| ((*group).to_owned(), (*resource).to_owned(), (*v).to_owned()))
        })
        .collect();
    assert_eq!(
        granted, needed,
        "read-only, and nothing more than the watches use"
    );

    let binding: ClusterRoleBinding = the(&docs, "ClusterRoleBinding");
    let account: ServiceAccount = the(&docs, "ServiceAccount");
    let ds: DaemonSet = the(&docs, "DaemonSet");
    assert_eq!(
        binding.role_ref.name,
        role.metadata.name.clone().unwrap_or_default()
    );
    let subject = &binding.subjects.expect("subjects")[0];
    assert_eq!(Some(&subject.name), account.metadata.name.as_ref());
    assert_eq!(subject.namespace, account.metadata.namespace);
    let pod = ds.spec.expect("spec").template.spec.expect("pod spec");
    assert_eq!(pod.service_account_name, account.metadata.name);
    assert_eq!(ds.metadata.namespace, account.metadata.namespace);
}
