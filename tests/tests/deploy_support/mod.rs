//! What the deploy tests share: `deploy/` rendered by kubectl's kustomize, its documents
//! parsed strictly into the Kubernetes API types, and the DaemonSet's containers as the
//! kubelet would start them (environment resolved, `$(VAR)` in the arguments expanded).

#![allow(
    dead_code,
    reason = "each deploy test binary uses a different part of these helpers"
)]

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, Container, PodSpec, Volume, VolumeMount},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

/// The kustomize base and the kind overlay, relative to the repository.
pub const BASE: &str = "deploy/base";
pub const KIND: &str = "deploy/overlays/kind";
/// The base rendered, for `kubectl apply -f`.
pub const RENDERED_BASE: &str = "deploy/kproxy.yaml";

/// `path` (relative to the repository) as an absolute path.
pub fn repo_path(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// The test bed's kubectl (Kubernetes' own, of the pinned release).
pub fn kubectl() -> PathBuf {
    kproxy_testbed::kubernetes::program("kubectl").unwrap_or_else(|e| panic!("{e:#}"))
}

/// `kubectl kustomize dir`: the objects the kustomization `dir` makes, as YAML.
pub fn kustomize(dir: &Path) -> String {
    let output = Command::new(kubectl())
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("running kubectl kustomize");
    assert!(
        output.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// The documents of a YAML text, as JSON values (comments and empty documents dropped).
pub fn documents(text: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).expect("valid YAML");
    docs.into_iter().filter(|v| !v.is_null()).collect()
}

pub fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or("<no kind>")
}

pub fn name(doc: &Value) -> String {
    format!(
        "{} {}",
        kind(doc),
        doc["metadata"]["name"].as_str().unwrap_or("<unnamed>")
    )
}

/// Parses `doc` as `T` and checks that nothing was lost on the way: a field the API type
/// does not know (a typo, a wrong indentation) would vanish in the round trip.
pub fn strict<T: DeserializeOwned + Serialize>(doc: &Value) -> T {
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

/// The one object of `kind_name` among `docs`, parsed strictly.
pub fn the<T: DeserializeOwned + Serialize>(docs: &[Value], kind_name: &str) -> T {
    let matching: Vec<&Value> = docs.iter().filter(|d| kind(d) == kind_name).collect();
    assert_eq!(matching.len(), 1, "one {kind_name} among the objects");
    strict(matching[0])
}

/// The DaemonSet's pod spec.
pub fn pod_spec(docs: &[Value]) -> PodSpec {
    let ds: DaemonSet = the(docs, "DaemonSet");
    ds.spec.expect("spec").template.spec.expect("pod spec")
}

/// The container (or init container) `name` of `pod`.
/// The pod's volume that `mount` mounts.
pub fn volume_of<'a>(pod: &'a PodSpec, mount: &VolumeMount) -> &'a Volume {
    pod.volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .expect("the mount's volume")
}

pub fn container<'a>(pod: &'a PodSpec, name: &str) -> &'a Container {
    pod.containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("a container {name}"))
}

/// The container's environment as the kubelet sets it on node `node_name`: literal values,
/// `spec.nodeName` from the downward API, keys of the ConfigMaps among `docs` (a missing
/// one fails unless the reference is optional, and is then left unset).
pub fn environment(
    container: &Container,
    docs: &[Value],
    node_name: &str,
) -> BTreeMap<String, String> {
    let config_maps: Vec<ConfigMap> = docs
        .iter()
        .filter(|d| kind(d) == "ConfigMap")
        .map(strict)
        .collect();
    let mut env = BTreeMap::new();
    for var in container.env.iter().flatten() {
        let from = var.value_from.as_ref();
        let value = if let Some(value) = &var.value {
            Some(value.clone())
        } else if let Some(field) = from.and_then(|f| f.field_ref.as_ref()) {
            assert_eq!(field.field_path, "spec.nodeName", "{}", var.name);
            Some(node_name.to_owned())
        } else if let Some(key) = from.and_then(|f| f.config_map_key_ref.as_ref()) {
            let found = config_maps
                .iter()
                .find(|cm| cm.metadata.name.as_deref() == Some(key.name.as_str()))
                .and_then(|cm| cm.data.as_ref()?.get(&key.key).cloned());
            assert!(
                found.is_some() || key.optional == Some(true),
                "{}: ConfigMap {} has no key {}",
                var.name,
                key.name,
                key.key
            );
            found
        } else {
            panic!("{}: a source the tests do not know", var.name)
        };
        if let Some(value) = value {
            env.insert(var.name.clone(), value);
        }
    }
    env
}

/// The container's arguments with `$(VAR)` expanded from `env`, as the kubelet does.
pub fn expanded_args(container: &Container, env: &BTreeMap<String, String>) -> Vec<String> {
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
        "every variable the arguments use is set: {args:?}"
    );
    args
}

/// The value of `--name=value` among `args`.
pub fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .find_map(|a| a.strip_prefix(&format!("--{name}="))?.into())
}
