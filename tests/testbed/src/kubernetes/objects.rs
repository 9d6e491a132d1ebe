//! API objects as a user (and, since the bed has none, the kubelet) would write them: any
//! object as JSON through server-side apply, pods bound to a node and their status set by
//! hand (Running and Ready with an address of a backend namespace, then terminating).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Mutex, PoisonError},
};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    api::{DeleteParams, DynamicObject, Patch, PatchParams},
    core::{ApiResource, GroupVersionKind},
    discovery::{ApiCapabilities, Scope},
};
use serde_json::{Value, json};

use super::ControlPlane;

/// The field manager of everything tests apply.
const FIELD_MANAGER: &str = "kproxy-testbed";

/// Resolved kinds, so each kind costs one discovery request per control plane.
#[derive(Default)]
pub(super) struct Kinds(Mutex<HashMap<GroupVersionKind, (ApiResource, ApiCapabilities)>>);

/// A pod `name` in `namespace` with `labels`, bound to `node` (as the scheduler would).
pub fn pod(namespace: &str, name: &str, labels: &Value, node: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "app", "image": POD_IMAGE}],
            // Deleting takes the grace period unless forced, as with a kubelet that has not
            // yet seen the pod stop.
            "terminationGracePeriodSeconds": 30,
        },
    })
}

/// The pods' one container's image: never pulled (there is no kubelet), only shown.
const POD_IMAGE: &str = "registry.invalid/who-am-i:1";

/// The status a kubelet reports for a running pod at `ip`, Ready or not, its conditions
/// having changed now (the EndpointSlice controller takes the Ready condition's
/// `lastTransitionTime`, whole seconds, as the slice's `last-change-trigger-time`).
pub fn running_status(ip: IpAddr, ready: bool) -> Value {
    use k8s_openapi::chrono::{SecondsFormat, Utc};
    let ready = if ready { "True" } else { "False" };
    let now = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
    json!({
        "phase": "Running",
        "podIP": ip.to_string(),
        "podIPs": [{"ip": ip.to_string()}],
        "conditions": [
            {"type": "Ready", "status": ready, "lastTransitionTime": now},
            {"type": "ContainersReady", "status": ready, "lastTransitionTime": now},
        ],
        // What `kubectl get pods` counts as READY.
        "containerStatuses": [{
            "name": "app",
            "image": POD_IMAGE,
            "imageID": "",
            "ready": ready == "True",
            "started": true,
            "restartCount": 0,
            "state": {"running": {"startedAt": now}},
        }],
    })
}

impl ControlPlane {
    /// Creates or updates `object` (JSON of any kind with apiVersion, kind and metadata) by
    /// server-side apply, taking over any field another manager set.
    pub fn apply(&self, object: &Value) -> Result<()> {
        let (api, name) = self.dynamic_api(object)?;
        let what = describe(object);
        let object = object.clone();
        self.run(async move {
            api.patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(object),
            )
            .await
            .map(drop)
        })
        .with_context(|| format!("applying {what}"))
    }

    /// Endpoints listed for Service `namespace/service` across its EndpointSlices.
    pub fn endpoint_count(&self, namespace: &str, service: &str) -> Result<usize> {
        let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
            Api::namespaced(self.client(), namespace);
        let params = kube::api::ListParams::default()
            .labels(&format!("kubernetes.io/service-name={service}"));
        let listed = self.run(async move { slices.list(&params).await })?;
        Ok(listed.items.iter().map(|s| s.endpoints.len()).sum())
    }

    /// Applies `object`'s status through the status subresource (a controller's job: the
    /// kubelet's for pods, a cloud controller's for load balancers).
    pub fn apply_status(&self, object: &Value) -> Result<()> {
        let (api, name) = self.dynamic_api(object)?;
        let what = describe(object);
        let object = object.clone();
        self.run(async move {
            api.patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(object),
            )
            .await
            .map(drop)
        })
        .with_context(|| format!("applying the status of {what}"))
    }

    /// Applies every document of a YAML file whose kind is not in `skip_kinds`.
    pub fn apply_yaml(&self, yaml: &str, skip_kinds: &[&str]) -> Result<Vec<String>> {
        let mut applied = Vec::new();
        // Empty documents are left out.
        for object in serde_saphyr::from_multiple::<Value>(yaml)? {
            let Some(kind) = object["kind"].as_str() else {
                continue;
            };
            if skip_kinds.contains(&kind) {
                continue;
            }
            self.apply(&object)?;
            applied.push(describe(&object));
        }
        Ok(applied)
    }

    /// The object `kind` `namespace/name` of `api_version` now, if it exists.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>> {
        let (api, name) = self.dynamic_api(&reference(api_version, kind, namespace, name))?;
        let object = self.run(async move { api.get_opt(&name).await })?;
        Ok(object.map(|o| serde_json::to_value(o).unwrap_or_default()))
    }

    /// The objects `kind` of `api_version` in `namespace` (ignored for cluster-scoped kinds)
    /// whose labels match `label_selector`.
    pub fn list(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        label_selector: &str,
    ) -> Result<Vec<Value>> {
        let (api, _) = self.dynamic_api(&reference(api_version, kind, Some(namespace), ""))?;
        let params = kube::api::ListParams::default().labels(label_selector);
        let list = self
            .run(async move { api.list(&params).await })
            .with_context(|| format!("listing {kind} {label_selector}"))?;
        Ok(list
            .items
            .into_iter()
            .map(|o| serde_json::to_value(o).unwrap_or_default())
            .collect())
    }

    /// Deletes an object; `grace_seconds` of `Some(0)` removes a pod at once (as a kubelet
    /// confirming it stopped), `None` leaves a pod terminating for its grace period.
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        grace_seconds: Option<u32>,
    ) -> Result<()> {
        let (api, object) = self.dynamic_api(&reference(api_version, kind, namespace, name))?;
        let params = DeleteParams {
            grace_period_seconds: grace_seconds,
            ..DeleteParams::default()
        };
        self.run(async move { api.delete(&object, &params).await.map(drop) })
            .with_context(|| format!("deleting {kind} {name}"))
    }

    /// Sets a pod's status (the kubelet's job): see [`running_status`].
    pub fn set_pod_status(&self, namespace: &str, name: &str, status: Value) -> Result<()> {
        let pods: Api<Pod> = Api::namespaced(self.client(), namespace);
        let pod = name.to_owned();
        self.run(async move {
            pods.patch_status(
                &pod,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
            .map(drop)
        })
        .with_context(|| format!("setting the status of pod {namespace}/{name}"))
    }

    /// Creates pod `name` on `node` and marks it Running and Ready at `ip`.
    pub fn ready_pod(
        &self,
        namespace: &str,
        name: &str,
        labels: &Value,
        node: &str,
        ip: IpAddr,
    ) -> Result<()> {
        self.apply(&pod(namespace, name, labels, node))?;
        self.set_pod_status(namespace, name, running_status(ip, true))
    }

    /// An API for `object`'s kind (in its namespace, if namespaced) and its name.
    fn dynamic_api(&self, object: &Value) -> Result<(Api<DynamicObject>, String)> {
        let api_version = object["apiVersion"].as_str().context("no apiVersion")?;
        let kind = object["kind"].as_str().context("no kind")?;
        let name = object["metadata"]["name"]
            .as_str()
            .context("no metadata.name")?
            .to_owned();
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (resource, caps) = self.resolve(&gvk)?;
        let api = match (caps.scope, object["metadata"]["namespace"].as_str()) {
            (Scope::Cluster, _) => Api::all_with(self.client(), &resource),
            (Scope::Namespaced, ns) => {
                Api::namespaced_with(self.client(), ns.unwrap_or("default"), &resource)
            }
        };
        Ok((api, name))
    }

    fn resolve(&self, gvk: &GroupVersionKind) -> Result<(ApiResource, ApiCapabilities)> {
        let kinds = &self.kinds;
        if let Some(found) = kinds
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(gvk)
        {
            return Ok(found.clone());
        }
        let (client, wanted) = (self.client(), gvk.clone());
        let found = self
            .run(async move { kube::discovery::pinned_kind(&client, &wanted).await })
            .with_context(|| format!("discovering {}/{} {}", gvk.group, gvk.version, gvk.kind))?;
        kinds
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(gvk.clone(), found.clone());
        Ok(found)
    }
}

/// The identifying fields of an object, enough to find its API.
fn reference(api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
    })
}

/// `Kind namespace/name` for messages.
pub fn describe(object: &Value) -> String {
    let meta = &object["metadata"];
    let name = meta["name"].as_str().unwrap_or("?");
    match meta["namespace"].as_str() {
        Some(ns) => format!("{} {ns}/{name}", object["kind"].as_str().unwrap_or("?")),
        None => format!("{} {name}", object["kind"].as_str().unwrap_or("?")),
    }
}
