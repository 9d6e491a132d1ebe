//! Turns one resource's watcher events into object changes for the agent, the way an
//! informer turns a list+watch into add/update/delete notifications.
//!
//! The objects live once, in a kube-runtime reflector store; changes hand out the store's
//! `Arc`s. A relist (after `410 Gone`, or a watch that could not resume) is diffed against
//! what was handed out before, so only objects that really changed, appeared or vanished
//! reach the agent, and a relist of a large, unchanged cluster costs no recomputation.

use std::{collections::HashMap, fmt::Debug, hash::Hash, sync::Arc};

use k8s_openapi::{
    api::{
        core::v1::{Node, Service},
        discovery::v1::EndpointSlice,
    },
    serde::de::DeserializeOwned,
};
use kube::{
    Resource, ResourceExt,
    runtime::{
        reflector::{ObjectRef, Store, store::Writer},
        watcher::Event,
    },
};

use crate::{
    model::{Change, ObjectKey, object_key},
    source::trim::{trim_node, trim_service, trim_slice},
};

/// A resource kproxy watches.
pub trait Watched:
    Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static
{
    /// The change handing `object` (or its deletion) to the agent.
    fn change(key: ObjectKey, object: Option<Arc<Self>>) -> Change;

    /// Drops what kproxy never reads before the object is stored (see `source::trim`).
    fn strip(&mut self);
}

impl Watched for Service {
    fn change(key: ObjectKey, object: Option<Arc<Self>>) -> Change {
        Change::Service(key, object)
    }

    fn strip(&mut self) {
        trim_service(self);
    }
}

impl Watched for EndpointSlice {
    fn change(key: ObjectKey, object: Option<Arc<Self>>) -> Change {
        Change::Slice(key, object)
    }

    fn strip(&mut self) {
        trim_slice(self);
    }
}

impl Watched for Node {
    fn change(_: ObjectKey, object: Option<Arc<Self>>) -> Change {
        Change::Node(object)
    }

    fn strip(&mut self) {
        trim_node(self);
    }
}

/// The reflector store of one resource, and what of it the agent has been given.
pub struct Mirror<K: Watched>
where
    ObjectRef<K>: Hash + Eq,
{
    writer: Writer<K>,
    store: Store<K>,
    /// Resource version of every object handed out.
    handed: HashMap<ObjectRef<K>, Option<String>>,
    listed: bool,
}

impl<K: Watched> Default for Mirror<K> {
    fn default() -> Self {
        let writer = Writer::default();
        let store = writer.as_reader();
        Self {
            writer,
            store,
            handed: HashMap::new(),
            listed: false,
        }
    }
}

impl<K: Watched> Mirror<K> {
    /// Whether a complete list has been seen (the cache has synced).
    pub fn listed(&self) -> bool {
        self.listed
    }

    /// Applies one watcher event; returns the changes it makes for the agent.
    pub fn apply(&mut self, event: &Event<K>) -> Vec<Change> {
        self.writer.apply_watcher_event(event);
        match event {
            Event::Apply(object) => self
                .hand_out(&ObjectRef::from_obj(object))
                .into_iter()
                .collect(),
            Event::Delete(object) => {
                let reference = ObjectRef::from_obj(object);
                match self.handed.remove(&reference) {
                    Some(_) => vec![K::change(object_key(object.meta()), None)],
                    None => Vec::new(),
                }
            }
            // Listed objects count only once the list is complete.
            Event::Init | Event::InitApply(_) => Vec::new(),
            Event::InitDone => {
                self.listed = true;
                let mut changes: Vec<Change> = self
                    .store
                    .state()
                    .iter()
                    .filter_map(|object| self.hand_out(&ObjectRef::from_obj(&**object)))
                    .collect();
                let gone: Vec<ObjectRef<K>> = self
                    .handed
                    .keys()
                    .filter(|r| self.store.get(r).is_none())
                    .cloned()
                    .collect();
                for reference in gone {
                    self.handed.remove(&reference);
                    let key = (
                        reference.namespace.as_deref().unwrap_or("default").into(),
                        reference.name.as_str().into(),
                    );
                    changes.push(K::change(key, None));
                }
                changes
            }
        }
    }

    /// The change for the stored object `reference`, unless the agent has this version.
    fn hand_out(&mut self, reference: &ObjectRef<K>) -> Option<Change> {
        let object = self.store.get(reference)?;
        let version = object.resource_version();
        if version.is_some() && self.handed.get(reference) == Some(&version) {
            return None;
        }
        self.handed.insert(reference.clone(), version);
        Some(K::change(object_key(object.meta()), Some(object)))
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};

    use super::*;
    use crate::source::trim::TRIGGER_TIME_ANNOTATION;

    fn service(name: &str, version: &str) -> Service {
        Service {
            metadata: ObjectMeta {
                namespace: Some("default".into()),
                name: Some(name.into()),
                resource_version: Some(version.into()),
                ..ObjectMeta::default()
            },
            ..Service::default()
        }
    }

    /// `name@version` for a change that hands out an object, `-name` for a deletion.
    fn summary(changes: &[Change]) -> Vec<String> {
        let mut out: Vec<String> = changes
            .iter()
            .map(|c| match c {
                Change::Service(key, Some(s)) => {
                    format!("{}@{}", key.1, s.resource_version().unwrap_or_default())
                }
                Change::Service(key, None) => format!("-{}", key.1),
                other => panic!("unexpected change {other:?}"),
            })
            .collect();
        out.sort();
        out
    }

    /// (case, events, changes handed out)
    type Case = (&'static str, Vec<Event<Service>>, Vec<&'static str>);

    #[test]
    fn events_become_changes_and_relists_hand_out_only_differences() {
        use Event::{Apply, Delete, Init, InitApply, InitDone};
        let mut mirror = Mirror::<Service>::default();
        let cases: Vec<Case> = vec![
            (
                "initial list: nothing until it is complete",
                vec![
                    Init,
                    InitApply(service("a", "1")),
                    InitApply(service("b", "2")),
                ],
                vec![],
            ),
            ("list complete", vec![InitDone], vec!["a@1", "b@2"]),
            ("a modified", vec![Apply(service("a", "3"))], vec!["a@3"]),
            (
                "the same version again is no change",
                vec![Apply(service("a", "3"))],
                vec![],
            ),
            ("c added", vec![Apply(service("c", "4"))], vec!["c@4"]),
            ("b deleted", vec![Delete(service("b", "5"))], vec!["-b"]),
            (
                "deleting what is not there",
                vec![Delete(service("x", "6"))],
                vec![],
            ),
            (
                "relist: a unchanged, c changed, d new, nothing else",
                vec![
                    Init,
                    InitApply(service("a", "3")),
                    InitApply(service("c", "7")),
                    InitApply(service("d", "8")),
                    InitDone,
                ],
                vec!["c@7", "d@8"],
            ),
            (
                "relist that lost objects deletes them",
                vec![Init, InitApply(service("d", "8")), InitDone],
                vec!["-a", "-c"],
            ),
        ];
        for (name, events, want) in cases {
            let changes: Vec<Change> = events.iter().flat_map(|e| mirror.apply(e)).collect();
            assert_eq!(summary(&changes), want, "case: {name}");
        }
        assert!(mirror.listed());
        assert_eq!(mirror.store.state().len(), 1);
    }

    #[test]
    fn handed_out_objects_are_the_stored_ones() {
        let mut mirror = Mirror::<Service>::default();
        let changes = mirror.apply(&Event::Apply(service("a", "1")));
        let [Change::Service(_, Some(handed))] = changes.as_slice() else {
            panic!("one change expected, got {changes:?}");
        };
        let stored = mirror.store.state();
        assert!(Arc::ptr_eq(handed, &stored[0]), "one copy of each object");
        assert!(!mirror.listed(), "no list seen yet");
    }

    #[test]
    fn stripping_keeps_only_what_kproxy_reads() {
        let mut slice = EndpointSlice {
            metadata: ObjectMeta {
                annotations: Some(
                    [
                        (TRIGGER_TIME_ANNOTATION, "2026-11-22T07:00:00Z"),
                        ("kubectl.kubernetes.io/last-applied-configuration", "{...}"),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
                ),
                managed_fields: Some(vec![ManagedFieldsEntry::default()]),
                ..ObjectMeta::default()
            },
            ..EndpointSlice::default()
        };
        slice.strip();
        assert_eq!(slice.managed_fields().len(), 0);
        assert_eq!(
            slice.annotations().keys().collect::<Vec<_>>(),
            vec![TRIGGER_TIME_ANNOTATION]
        );
        let mut svc = service("a", "1");
        svc.annotations_mut().insert("x".into(), "y".into());
        svc.strip();
        assert!(svc.annotations().is_empty());
    }
}
