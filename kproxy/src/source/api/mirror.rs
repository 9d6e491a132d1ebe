//! Turns one resource's watcher events into object changes for the agent, the way an
//! informer turns a list+watch into add/update/delete notifications.
//!
//! The objects live once, in a kube-runtime reflector store; changes hand out the store's
//! `Arc`s. A relist (after `410 Gone`, or a watch that could not resume) is diffed against
//! what was handed out before, so only objects that really changed, appeared or vanished
//! reach the agent, and a relist of a large, unchanged cluster costs no recomputation.
//!
//! An object that is not valid for its type (see `decoded`) is handed out as absent, like a
//! malformed manifest, and reported by name until it is fixed or deleted.

use std::{collections::HashMap, fmt::Debug, hash::Hash, sync::Arc};

use k8s_openapi::{
    api::{
        core::v1::{Node, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    serde::de::DeserializeOwned,
};
use kube::{
    Resource, ResourceExt,
    runtime::{
        reflector::{ObjectRef, Store, store::Writer},
        watcher::Event,
    },
};

use super::decoded::Decoded;
use crate::{
    model::{Change, ObjectKey, object_key, object_name},
    problem::{Problem, ProblemKind},
    source::{
        manifests::node_object_name,
        trim::{trim_node, trim_service, trim_slice},
    },
};

/// A resource kproxy watches.
pub trait Watched:
    Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static
{
    /// The change handing `object` (or its deletion) to the agent.
    fn change(key: ObjectKey, object: Option<Arc<Self>>) -> Change;

    /// Drops what kproxy never reads before the object is stored (see `source::trim`).
    fn strip(&mut self);

    /// How problems name an object of this kind with `meta`.
    fn name(meta: &ObjectMeta) -> String;
}

impl Watched for Service {
    fn change(key: ObjectKey, object: Option<Arc<Self>>) -> Change {
        Change::Service(key, object)
    }

    fn strip(&mut self) {
        trim_service(self);
    }

    fn name(meta: &ObjectMeta) -> String {
        object_name("Service", meta)
    }
}

impl Watched for EndpointSlice {
    fn change(key: ObjectKey, object: Option<Arc<Self>>) -> Change {
        Change::Slice(key, object)
    }

    fn strip(&mut self) {
        trim_slice(self);
    }

    fn name(meta: &ObjectMeta) -> String {
        object_name("EndpointSlice", meta)
    }
}

impl Watched for Node {
    fn change(_: ObjectKey, object: Option<Arc<Self>>) -> Change {
        Change::Node(object)
    }

    fn strip(&mut self) {
        trim_node(self);
    }

    fn name(meta: &ObjectMeta) -> String {
        node_object_name(meta.name.as_deref().unwrap_or("<unnamed>"))
    }
}

impl<K: Watched> Decoded<K> {
    /// `Watched::strip` for a valid object (an invalid one keeps only its metadata anyway).
    pub fn strip(&mut self) {
        if let Self::Valid(object) = self {
            Arc::make_mut(object).strip();
        }
    }
}

/// The reflector store of one resource, and what of it the agent has been given.
pub struct Mirror<K: Watched>
where
    ObjectRef<Decoded<K>>: Hash + Eq,
{
    writer: Writer<Decoded<K>>,
    store: Store<Decoded<K>>,
    /// Resource version of every object handed out.
    handed: HashMap<ObjectRef<Decoded<K>>, Option<String>>,
    /// Stored objects that are not valid `K`s, with the problem reporting each.
    invalid: HashMap<ObjectRef<Decoded<K>>, Problem>,
    /// `invalid` changed since `take_problems`.
    problems_changed: bool,
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
            invalid: HashMap::new(),
            problems_changed: false,
            listed: false,
        }
    }
}

impl<K: Watched> Mirror<K> {
    /// Whether a complete list has been seen (the cache has synced).
    pub fn listed(&self) -> bool {
        self.listed
    }

    /// The problems of invalid objects, if they changed since the last call.
    pub fn take_problems(&mut self) -> Option<Vec<Problem>> {
        std::mem::take(&mut self.problems_changed).then(|| {
            let mut problems: Vec<Problem> = self.invalid.values().cloned().collect();
            problems.sort_by(|a, b| a.object.cmp(&b.object));
            problems
        })
    }

    /// Applies one watcher event; returns the changes it makes for the agent.
    pub fn apply(&mut self, event: &Event<Decoded<K>>) -> Vec<Change> {
        self.writer.apply_watcher_event(event);
        match event {
            Event::Apply(object) => self
                .hand_out(&ObjectRef::from_obj(object))
                .into_iter()
                .collect(),
            Event::Delete(object) => {
                let reference = ObjectRef::from_obj(object);
                self.set_problem(&reference, None);
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
                let gone: Vec<ObjectRef<Decoded<K>>> = self
                    .handed
                    .keys()
                    .filter(|r| self.store.get(r).is_none())
                    .cloned()
                    .collect();
                for reference in gone {
                    self.handed.remove(&reference);
                    changes.push(K::change(key_of(&reference), None));
                }
                let fixed: Vec<ObjectRef<Decoded<K>>> = self
                    .invalid
                    .keys()
                    .filter(|r| self.store.get(r).is_none())
                    .cloned()
                    .collect();
                for reference in fixed {
                    self.set_problem(&reference, None);
                }
                changes
            }
        }
    }

    /// The change for the stored object `reference`, unless the agent has this version. An
    /// invalid object is reported, and taken back if a valid version was handed out.
    fn hand_out(&mut self, reference: &ObjectRef<Decoded<K>>) -> Option<Change> {
        let stored = self.store.get(reference)?;
        match &*stored {
            Decoded::Valid(object) => {
                self.set_problem(reference, None);
                let version = object.resource_version();
                if version.is_some() && self.handed.get(reference) == Some(&version) {
                    return None;
                }
                self.handed.insert(reference.clone(), version);
                Some(K::change(object_key(object.meta()), Some(object.clone())))
            }
            Decoded::Invalid(invalid) => {
                let name = K::name(&invalid.metadata);
                let kind = name.split(' ').next().unwrap_or_default();
                let problem = Problem::new(
                    ProblemKind::Parse,
                    format!("not a valid {kind}: {}; skipped", invalid.error),
                )
                .object(name);
                self.set_problem(reference, Some(problem));
                self.handed
                    .remove(reference)
                    .map(|_| K::change(key_of(reference), None))
            }
        }
    }

    fn set_problem(&mut self, reference: &ObjectRef<Decoded<K>>, problem: Option<Problem>) {
        let changed = match problem {
            Some(p) => self.invalid.insert(reference.clone(), p.clone()).as_ref() != Some(&p),
            None => self.invalid.remove(reference).is_some(),
        };
        self.problems_changed |= changed;
    }
}

/// The key the agent knows an object by, from its reference.
fn key_of<K: Watched>(reference: &ObjectRef<Decoded<K>>) -> ObjectKey {
    (
        reference.namespace.as_deref().unwrap_or("default").into(),
        reference.name.as_str().into(),
    )
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};

    use super::*;
    use crate::source::trim::TRIGGER_TIME_ANNOTATION;

    fn service(name: &str, version: &str) -> Decoded<Service> {
        Decoded::Valid(Arc::new(Service {
            metadata: ObjectMeta {
                namespace: Some("default".into()),
                name: Some(name.into()),
                resource_version: Some(version.into()),
                ..ObjectMeta::default()
            },
            ..Service::default()
        }))
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
    type Case = (
        &'static str,
        Vec<Event<Decoded<Service>>>,
        Vec<&'static str>,
    );

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
        let Decoded::Valid(stored) = &*stored[0] else {
            panic!("a valid object is stored as valid");
        };
        assert!(Arc::ptr_eq(handed, stored), "one copy of each object");
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

    fn invalid(name: &str, version: &str) -> Decoded<Service> {
        Decoded::Invalid(Box::new(super::super::decoded::Invalid {
            metadata: ObjectMeta {
                namespace: Some("default".into()),
                name: Some(name.into()),
                resource_version: Some(version.into()),
                ..ObjectMeta::default()
            },
            error: "invalid type: string \"eighty\", expected i32".into(),
        }))
    }

    /// (case, events, changes handed out, objects reported invalid afterwards)
    type InvalidCase = (
        &'static str,
        Vec<Event<Decoded<Service>>>,
        Vec<&'static str>,
        Vec<&'static str>,
    );

    #[test]
    fn invalid_objects_are_reported_by_name_and_handed_out_as_absent() {
        use Event::{Apply, Delete, Init, InitApply, InitDone};
        let mut mirror = Mirror::<Service>::default();
        let cases: Vec<InvalidCase> = vec![
            (
                "a list with one invalid object: the others are handed out",
                vec![
                    Init,
                    InitApply(service("a", "1")),
                    InitApply(invalid("bad", "2")),
                    InitDone,
                ],
                vec!["a@1"],
                vec!["Service default/bad"],
            ),
            (
                "a valid object turning invalid is taken back",
                vec![Apply(invalid("a", "3"))],
                vec!["-a"],
                vec!["Service default/a", "Service default/bad"],
            ),
            (
                "fixed: handed out again, no longer reported",
                vec![Apply(service("a", "4"))],
                vec!["a@4"],
                vec!["Service default/bad"],
            ),
            (
                "deleting an invalid object resolves its problem, changes nothing",
                vec![Delete(invalid("bad", "5"))],
                vec![],
                vec![],
            ),
            (
                "a relist that no longer has an invalid object resolves it",
                vec![Apply(invalid("gone", "6"))],
                vec![],
                vec!["Service default/gone"],
            ),
            (
                "relist",
                vec![Init, InitApply(service("a", "4")), InitDone],
                vec![],
                vec![],
            ),
        ];
        for (name, events, want, want_invalid) in cases {
            let changes: Vec<Change> = events.iter().flat_map(|e| mirror.apply(e)).collect();
            assert_eq!(summary(&changes), want, "case: {name}");
            let problems = mirror.take_problems().unwrap_or_else(|| {
                panic!("case {name}: the invalid set changed, or was checked again")
            });
            let objects: Vec<&str> = problems
                .iter()
                .filter_map(|p| p.object.as_deref())
                .collect();
            assert_eq!(objects, want_invalid, "case: {name}");
            for p in &problems {
                assert_eq!(p.kind, ProblemKind::Parse);
                assert!(p.message.contains("not a valid Service"), "{p}");
                assert!(p.message.contains("eighty"), "{p}");
            }
        }
        assert_eq!(
            mirror.take_problems(),
            None,
            "unchanged since the last call"
        );
    }
}
