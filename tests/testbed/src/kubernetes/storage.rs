//! API objects written straight into etcd, under the keys kube-apiserver keeps them at, for
//! clusters too large to create through the API in the time a benchmark has.
//!
//! Why not through the API: kube-apiserver v1.37's ClusterIP allocator recounts every
//! IPAddress object of the family on each allocation (`ipallocator.Allocator.Used`, for a
//! metric), so creating N Services costs O(N²): measured here, creations had slowed to
//! 20 Services/s at 33,000 (0.86 s mean latency of a Service POST with 48 in flight), which
//! puts 100,000 Services hours away. Everything else stays the real API server's: it reads
//! these objects from etcd (its storage decoder takes JSON as well as protobuf), fills in
//! defaults as it decodes them, and serves them to every list and watch; the caller checks
//! that it serves all of them ([`ControlPlane::count`]).
//!
//! What the objects must carry is what the API server's create would have stored: a uid and
//! a creation time, the Service's ClusterIP and the IPAddress object that records its
//! allocation (else the allocator's repair loop would report every Service as unallocated).

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};
use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use serde_json::{Value, json};

use super::control_plane::ControlPlane;
use crate::Netns;

/// Transactions in flight.
const IN_FLIGHT: usize = 8;
/// The ClusterIP allocator's name in the IPAddress objects it manages
/// (`ipallocator.ControllerName`).
const IP_ALLOCATOR: &str = "ipallocator.k8s.io";

/// One object as the API server stores it.
pub struct Stored {
    key: String,
    object: Value,
}

impl Stored {
    /// `object` (with apiVersion, kind and metadata.name, and metadata.namespace if it has
    /// one) as created at `created` (RFC 3339) with uid `uid`; its key is the API server's
    /// for its resource.
    pub fn new(mut object: Value, uid: &str, created: &str) -> Result<Self> {
        let kind = object["kind"].as_str().context("no kind")?;
        let resource = match kind {
            "Service" => "services/specs",
            "EndpointSlice" => "endpointslices",
            "IPAddress" => "ipaddresses",
            other => bail!("no storage key known for kind {other}"),
        };
        let name = object["metadata"]["name"].as_str().context("no name")?;
        let key = match object["metadata"]["namespace"].as_str() {
            Some(ns) => format!("/registry/{resource}/{ns}/{name}"),
            None => format!("/registry/{resource}/{name}"),
        };
        object["metadata"]["uid"] = uid.into();
        object["metadata"]["creationTimestamp"] = created.into();
        Ok(Stored { key, object })
    }

    /// The IPAddress object that records `service`'s ClusterIP as allocated to it (the
    /// allocator's labels and parent reference).
    pub fn ip_address(service: &Value, uid: &str, created: &str) -> Result<Self> {
        let ip = service["spec"]["clusterIP"]
            .as_str()
            .context("a Service without a clusterIP")?;
        let family = if ip.contains(':') { "IPv6" } else { "IPv4" };
        let object = json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "IPAddress",
            "metadata": {
                "name": ip,
                "labels": {
                    "ipaddress.kubernetes.io/ip-family": family,
                    "ipaddress.kubernetes.io/managed-by": IP_ALLOCATOR,
                },
            },
            "spec": {"parentRef": {
                "group": "",
                "resource": "services",
                "namespace": service["metadata"]["namespace"],
                "name": service["metadata"]["name"],
            }},
        });
        Stored::new(object, uid, created)
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// The object as it is stored, to change before [`ControlPlane::overwrite`].
    pub fn object_mut(&mut self) -> &mut Value {
        &mut self.object
    }
}

impl ControlPlane {
    /// Writes `objects` into etcd (as a restore would), a run of `group` objects to a
    /// transaction and [`IN_FLIGHT`] transactions at a time. A run is never split (a Service
    /// and its IPAddress record: the API server's repair loop, seeing a Service without its
    /// record, would write one, and the transaction holding ours would fail), nor are two
    /// runs put together: the API server only ever writes one object of a resource per etcd
    /// revision, and with 42 IPAddress records to a revision (transactions of 126 puts) its
    /// repair loop's informer went on missing 2,488 of the 100,000 for minutes, retrying
    /// their Services at each resync (6,963 errors in its log).
    /// Fails if any key already exists: a transaction puts only if none of its keys has a
    /// value.
    pub fn store(&self, ns: &Netns, objects: &[Stored], group: usize) -> Result<()> {
        let chunks: Vec<&[Stored]> = objects.chunks(group.max(1)).collect();
        let next = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..IN_FLIGHT.min(chunks.len()))
                .map(|_| {
                    scope.spawn(|| -> Result<()> {
                        while let Some(chunk) = chunks.get(next.fetch_add(1, Ordering::Relaxed)) {
                            put_absent(ns, chunk)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for worker in workers {
                worker
                    .join()
                    .map_err(|_| anyhow::anyhow!("an etcd-writing thread panicked"))??;
            }
            Ok(())
        })
    }
}

/// What a namespaced kind must be to be counted.
pub trait Listed:
    kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
    + serde::de::DeserializeOwned
    + Clone
    + std::fmt::Debug
    + Send
    + 'static
{
}

impl<K> Listed for K where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + serde::de::DeserializeOwned
        + Clone
        + std::fmt::Debug
        + Send
        + 'static
{
}

impl ControlPlane {
    /// The first `limit` objects stored under the keys that start with `prefix` (as
    /// [`Stored::key`] names them), in key order.
    pub fn stored(&self, ns: &Netns, prefix: &str, limit: usize) -> Result<Vec<Stored>> {
        // The range of every key with the prefix: from it to the prefix with its last byte
        // incremented (etcd's `--prefix`).
        let mut end = prefix.as_bytes().to_vec();
        let last = end.last_mut().context("an empty prefix")?;
        *last += 1;
        let body = json!({
            "key": BASE64.encode(prefix),
            "range_end": BASE64.encode(&end),
            "limit": limit,
        })
        .to_string();
        let answer = super::control_plane::etcd_post(ns, "/v3/kv/range", &body)?;
        let kvs = answer["kvs"].as_array().cloned().unwrap_or_default();
        kvs.iter()
            .map(|kv| {
                let decode = |field: &str| -> Result<Vec<u8>> {
                    let text = kv[field].as_str().with_context(|| format!("no {field}"))?;
                    Ok(BASE64.decode(text)?)
                };
                Ok(Stored {
                    key: String::from_utf8(decode("key")?)?,
                    object: serde_json::from_slice(&decode("value")?)
                        .context("a stored object that is not JSON")?,
                })
            })
            .collect()
    }

    /// Puts `objects` over what their keys hold, in one transaction (an update as the API
    /// server's would store it; the API server's watch of etcd serves it to every watcher).
    pub fn overwrite(&self, ns: &Netns, objects: &[&Stored]) -> Result<()> {
        let puts = objects
            .iter()
            .map(|s| {
                let value = serde_json::to_vec(&s.object)?;
                Ok(json!({"request_put": {
                    "key": BASE64.encode(&s.key),
                    "value": BASE64.encode(value),
                }}))
            })
            .collect::<Result<Vec<Value>>>()?;
        let body = json!({"success": puts}).to_string();
        let answer = super::control_plane::etcd_post(ns, "/v3/kv/txn", &body)?;
        if answer["succeeded"] != Value::Bool(true) {
            bail!("etcd did not store {} objects: {answer}", objects.len());
        }
        Ok(())
    }

    /// How many objects of `K` the API server serves in `namespace` (a list of one, plus
    /// the count of those left, which it gives for a list without selectors), and the
    /// resourceVersion of that list.
    pub fn count<K: Listed>(&self, namespace: &str) -> Result<(u64, String)> {
        let api: kube::Api<K> = kube::Api::namespaced(self.client(), namespace);
        let list = self.run(async move {
            api.list_metadata(&kube::api::ListParams::default().limit(1))
                .await
                .map_err(anyhow::Error::from)
        })?;
        let remaining = list.metadata.remaining_item_count.unwrap_or(0);
        let version = list.metadata.resource_version.unwrap_or_default();
        Ok((list.items.len() as u64 + u64::try_from(remaining)?, version))
    }

    /// Whether the API server's watch cache of `K` has caught up with `version`: a list
    /// served from the cache, not older than `version`. (After objects are stored straight
    /// into etcd, the cache decodes them one by one from its watch; a proxy's list made
    /// before it has caught up waits for it and fails after a few seconds.)
    pub fn cached<K: Listed>(&self, namespace: &str, version: &str) -> bool {
        let api: kube::Api<K> = kube::Api::namespaced(self.client(), namespace);
        let params = kube::api::ListParams::default()
            .limit(1)
            .at(version)
            .matching(kube::api::VersionMatch::NotOlderThan);
        self.run(async move { api.list_metadata(&params).await.is_ok() })
    }
}

/// One transaction: if none of `chunk`'s keys exists (created revision 0), put them all.
fn put_absent(ns: &Netns, chunk: &[Stored]) -> Result<()> {
    let key = |s: &Stored| BASE64.encode(&s.key);
    let compare: Vec<Value> = chunk
        .iter()
        .map(|s| {
            json!({"key": key(s), "target": "CREATE", "result": "EQUAL", "create_revision": "0"})
        })
        .collect();
    let puts = chunk
        .iter()
        .map(|s| {
            let value = serde_json::to_vec(&s.object)?;
            Ok(json!({"request_put": {"key": key(s), "value": BASE64.encode(value)}}))
        })
        .collect::<Result<Vec<Value>>>()?;
    let body = json!({"compare": compare, "success": puts}).to_string();
    let answer = super::control_plane::etcd_post(ns, "/v3/kv/txn", &body)?;
    if answer["succeeded"] != Value::Bool(true) {
        bail!(
            "etcd did not store {} objects from {}: one of the keys exists",
            chunk.len(),
            chunk.first().map_or("", Stored::key)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_the_api_servers_and_the_ip_records_its_service() {
        let service = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "svc-00001", "namespace": "bench"},
            "spec": {"clusterIP": "2001:db8:ffff::2", "ports": [{"port": 80}]},
        });
        let stored = Stored::new(service.clone(), "u-1", "2026-12-05T10:00:00Z").unwrap();
        assert_eq!(stored.key(), "/registry/services/specs/bench/svc-00001");
        assert_eq!(stored.object["metadata"]["uid"], "u-1");
        assert_eq!(
            stored.object["metadata"]["creationTimestamp"],
            "2026-12-05T10:00:00Z"
        );
        let ip = Stored::ip_address(&service, "u-2", "2026-12-05T10:00:00Z").unwrap();
        assert_eq!(ip.key(), "/registry/ipaddresses/2001:db8:ffff::2");
        assert_eq!(
            ip.object["metadata"]["labels"]["ipaddress.kubernetes.io/ip-family"],
            "IPv6"
        );
        assert_eq!(ip.object["spec"]["parentRef"]["name"], "svc-00001");
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "svc-00001-abc", "namespace": "bench"},
        });
        let slice = Stored::new(slice, "u-3", "2026-12-05T10:00:00Z").unwrap();
        assert_eq!(slice.key(), "/registry/endpointslices/bench/svc-00001-abc");
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}});
        assert!(Stored::new(pod, "u", "t").is_err());
        let headless = json!({"kind": "Service", "metadata": {"name": "h"}, "spec": {}});
        assert!(Stored::ip_address(&headless, "u", "t").is_err());
    }
}
