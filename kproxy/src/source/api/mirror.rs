//! Turns one resource's watcher events into object changes for the agent, the way an
//! informer turns a list+watch into add/update/delete notifications.
//!
//! Objects are converted into what the model keeps of them (`Change::service`) as they
//! arrive and are not stored: the mirror remembers only the resource version it handed out
//! for each object. A relist (after `410 Gone`, or a watch that could not resume) is
//! diffed against those versions, so only objects that really changed, appeared or
//! vanished reach the agent, and a relist of a large, unchanged cluster costs no
//! recomputation.
//!
//! An object that is not valid for its type (see `decoded`) is handed out as absent, like a
//! malformed manifest, and reported by name until it is fixed or deleted.

use std::{fmt::Debug, sync::Arc};

use k8s_openapi::{
    api::{
        core::v1::{Node, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    serde::de::DeserializeOwned,
};
use kube::{Resource, ResourceExt, runtime::watcher::Event};

use super::{decoded::Decoded, protobuf::FromProtobuf};
use crate::{
    model::{Change, KeyMap, KeySet, ObjectKey, object_key, object_name},
    problem::{Problem, ProblemKind},
    source::manifests::node_object_name,
};

/// A resource kproxy watches.
pub trait Watched:
    Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + FromProtobuf + Send + Sync + 'static
{
    /// The change handing `object`, known by `key`, to the agent.
    fn change(key: ObjectKey, object: &Arc<Self>) -> Change;

    /// The change telling the agent the object of `key` is gone.
    fn gone(key: ObjectKey) -> Change;

    /// How problems name an object of this kind with `meta`.
    fn name(meta: &ObjectMeta) -> String;
}

impl Watched for Service {
    fn change(key: ObjectKey, object: &Arc<Self>) -> Change {
        Change::service_of(key, object)
    }

    fn gone(key: ObjectKey) -> Change {
        Change::Service(key, None)
    }

    fn name(meta: &ObjectMeta) -> String {
        object_name("Service", meta)
    }
}

impl Watched for EndpointSlice {
    fn change(key: ObjectKey, object: &Arc<Self>) -> Change {
        Change::slice_of(key, object)
    }

    fn gone(key: ObjectKey) -> Change {
        Change::Slice(key, None)
    }

    fn name(meta: &ObjectMeta) -> String {
        object_name("EndpointSlice", meta)
    }
}

impl Watched for Node {
    /// The agent's own Node, the one object kept whole (its labels, addresses, taints and
    /// deletion mark all matter; there is one).
    fn change(_: ObjectKey, object: &Arc<Self>) -> Change {
        Change::Node(Some(Arc::clone(object)))
    }

    fn gone(_: ObjectKey) -> Change {
        Change::Node(None)
    }

    fn name(meta: &ObjectMeta) -> String {
        node_object_name(meta.name.as_deref().unwrap_or("<unnamed>"))
    }
}

/// A resource version as handed out. Versions are opaque strings that are only compared;
/// etcd's are decimal numbers, kept as one (no allocation per object: at tens of thousands
/// of objects the mirror would otherwise be megabytes of copied strings).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Version {
    Number(u64),
    Text(Box<str>),
}

impl Version {
    fn of(version: &str) -> Self {
        // Only the canonical form: "007" must stay distinct from "7".
        let canonical = !version.is_empty()
            && version.bytes().all(|b| b.is_ascii_digit())
            && (version == "0" || !version.starts_with('0'));
        if canonical && let Ok(number) = version.parse() {
            return Self::Number(number);
        }
        Self::Text(version.into())
    }
}

/// The version of every object handed out, in one word each: `Option<Version>` takes three
/// (two words more per entry of a map of 100,000 Services or slices). etcd's numbers are kept as
/// themselves, plus one (zero: handed out without a version); anything else is `TEXT`, its
/// version kept beside, exactly.
#[derive(Default)]
struct Handed {
    words: KeyMap<ObjectKey, u64>,
    texts: KeyMap<ObjectKey, Version>,
}

impl Handed {
    const NONE: u64 = 0;
    const TEXT: u64 = u64::MAX;

    fn insert(&mut self, key: ObjectKey, version: Option<Version>) {
        let word = match version {
            None => Self::NONE,
            Some(Version::Number(n)) if n < Self::TEXT - 1 => n + 1,
            Some(text) => {
                self.texts.insert(key.clone(), text);
                self.words.insert(key, Self::TEXT);
                return;
            }
        };
        self.texts.remove(&key);
        self.words.insert(key, word);
    }

    /// Whether `key` was handed out in `version`.
    fn has(&self, key: &ObjectKey, version: Option<&Version>) -> bool {
        match (self.words.get(key), version) {
            (Some(&Self::NONE), None) => true,
            (Some(&Self::TEXT), Some(version)) => self.texts.get(key) == Some(version),
            (Some(&word), Some(&Version::Number(n))) => {
                !matches!(word, Self::NONE | Self::TEXT) && word - 1 == n
            }
            // Not handed out, or handed out in another version.
            _ => false,
        }
    }

    /// Forgets `key`; its shared key, if it was handed out.
    fn remove(&mut self, key: &ObjectKey) -> Option<ObjectKey> {
        self.texts.remove(key);
        self.words.remove_entry(key).map(|(key, _)| key)
    }

    fn keys(&self) -> impl Iterator<Item = &ObjectKey> {
        self.words.keys()
    }

    fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.words.len()
    }
}

/// What one resource's watcher has handed the agent, by the key the agent knows each
/// object by (the same shared strings the change carries).
pub struct Mirror<K: Watched> {
    /// Resource version of every object handed out.
    handed: Handed,
    /// Objects that are not valid `K`s, with the problem reporting each.
    invalid: KeyMap<ObjectKey, Problem>,
    /// `invalid` changed since `take_problems`.
    problems_changed: bool,
    /// A list in progress: what it found so far, converted (objects the agent has in this
    /// version already are only noted), handed out when it is complete; except during the
    /// first list, whose objects are handed out as they arrive (see `apply`).
    listing: Option<Vec<(ObjectKey, Listed)>>,
    /// The list in progress is the first and the mirror had nothing when it started: every
    /// object handed out or reported is one of its own, so none can be missing from it, and
    /// its objects are not noted in `listing` at all (at 100,000 objects a note each was
    /// megabytes held to the list's end, and a set of their keys built and walked).
    listing_from_nothing: bool,
    /// Objects of the list in progress so far.
    listing_count: usize,
    /// When the list in progress started.
    listing_since: Option<std::time::Instant>,
    listed: bool,
    kind: std::marker::PhantomData<K>,
}

/// One object of a list in progress.
enum Listed {
    /// The agent has this version.
    Unchanged,
    /// New or changed: its version and the change handing it out.
    Changed(Option<Version>, Change),
    Invalid(Problem),
    /// Handed out (or reported) as it arrived, during the first list: only its presence
    /// counts when the list completes.
    HandedOut,
}

impl<K: Watched> Default for Mirror<K> {
    fn default() -> Self {
        Self {
            handed: Handed::default(),
            invalid: KeyMap::default(),
            problems_changed: false,
            listing: None,
            listing_from_nothing: false,
            listing_count: 0,
            listing_since: None,
            listed: false,
            kind: std::marker::PhantomData,
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
        match event {
            Event::Apply(object) => self.apply_object(object),
            Event::Delete(object) => {
                let reference = object_key(object.meta());
                self.set_problem(&reference, None);
                match self.handed.remove(&reference) {
                    Some(reference) => vec![K::gone(reference)],
                    None => Vec::new(),
                }
            }
            // Listed objects count only once the list is complete.
            Event::Init => {
                self.listing = Some(Vec::new());
                self.listing_from_nothing =
                    !self.listed && self.handed.is_empty() && self.invalid.is_empty();
                self.listing_count = 0;
                self.listing_since = Some(std::time::Instant::now());
                Vec::new()
            }
            // The first list: the agent has nothing to keep serving meanwhile (it programs
            // the datapath before attaching it, and waits for every list to complete before
            // that), so its objects go out as they arrive, and a large cluster's first view
            // is converted and programmed while the rest of it is still being listed. Each
            // is noted as listed, so that the list's completion hands out nothing twice.
            Event::InitApply(object) if !self.listed => {
                self.listing_count += 1;
                if !self.listing_from_nothing {
                    let reference = object_key(object.meta());
                    self.listing
                        .get_or_insert_with(Vec::new)
                        .push((reference, Listed::HandedOut));
                }
                self.apply_object(object)
            }
            Event::InitApply(object) => {
                self.listing_count += 1;
                let reference = object_key(object.meta());
                let read = self.read(&reference, object);
                self.listing
                    .get_or_insert_with(Vec::new)
                    .push((reference, read));
                Vec::new()
            }
            Event::InitDone => self.list_done(),
        }
    }

    /// `object` added or changed outside a list (or in the first one, as it arrives).
    fn apply_object(&mut self, object: &Decoded<K>) -> Vec<Change> {
        let reference = object_key(object.meta());
        match self.read(&reference, object) {
            // (`read` never says HandedOut: only a list in progress does.)
            Listed::Unchanged | Listed::HandedOut => Vec::new(),
            Listed::Changed(version, change) => {
                self.set_problem(&reference, None);
                self.handed.insert(reference, version);
                vec![change]
            }
            Listed::Invalid(problem) => self.take_back(&reference, problem),
        }
    }

    /// What `object` is to the agent.
    fn read(&self, reference: &ObjectKey, object: &Decoded<K>) -> Listed {
        match object {
            Decoded::Valid(object) => {
                let version = object.resource_version().as_deref().map(Version::of);
                if version.is_some() && self.handed.has(reference, version.as_ref()) {
                    Listed::Unchanged
                } else {
                    Listed::Changed(version, K::change(reference.clone(), object))
                }
            }
            Decoded::Invalid(invalid) => {
                let name = K::name(&invalid.metadata);
                let kind = name.split(' ').next().unwrap_or_default();
                Listed::Invalid(
                    Problem::new(
                        ProblemKind::Parse,
                        format!("not a valid {kind}: {}; skipped", invalid.error),
                    )
                    .object(name),
                )
            }
        }
    }

    /// An invalid object is reported, and taken back if a valid version was handed out.
    fn take_back(&mut self, reference: &ObjectKey, problem: Problem) -> Vec<Change> {
        self.set_problem(reference, Some(problem));
        self.handed
            .remove(reference)
            .map(K::gone)
            .into_iter()
            .collect()
    }

    /// A list is complete: what it changed, and what it no longer has, go to the agent.
    fn list_done(&mut self) -> Vec<Change> {
        self.listed = true;
        let listing = self.listing.take().unwrap_or_default();
        tracing::info!(
            kind = %K::kind(&()),
            objects = self.listing_count,
            took_ms = self.listing_since.take().map(|t| t.elapsed().as_millis()),
            "listed"
        );
        if std::mem::take(&mut self.listing_from_nothing) {
            // Everything it has came from this list, handed out as it arrived.
            return Vec::new();
        }
        let present: KeySet<ObjectKey> = listing.iter().map(|(r, _)| r.clone()).collect();
        let mut changes = Vec::new();
        for (reference, read) in listing {
            match read {
                Listed::Unchanged => self.set_problem(&reference, None),
                Listed::HandedOut => {}
                Listed::Changed(version, change) => {
                    self.set_problem(&reference, None);
                    self.handed.insert(reference, version);
                    changes.push(change);
                }
                Listed::Invalid(problem) => changes.extend(self.take_back(&reference, problem)),
            }
        }
        for reference in absent(self.handed.keys(), &present) {
            self.handed.remove(&reference);
            changes.push(K::gone(reference));
        }
        for reference in absent(self.invalid.keys(), &present) {
            self.set_problem(&reference, None);
        }
        changes
    }

    fn set_problem(&mut self, reference: &ObjectKey, problem: Option<Problem>) {
        let changed = match problem {
            Some(p) => self.invalid.insert(reference.clone(), p.clone()).as_ref() != Some(&p),
            None => self.invalid.remove(reference).is_some(),
        };
        self.problems_changed |= changed;
    }
}

/// The keys among `known` that a complete list did not have.
fn absent<'a>(
    known: impl Iterator<Item = &'a ObjectKey>,
    present: &KeySet<ObjectKey>,
) -> Vec<ObjectKey> {
    known.filter(|r| !present.contains(*r)).cloned().collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{api::core::v1::ServiceSpec, apimachinery::pkg::apis::meta::v1::ObjectMeta};

    use super::*;

    #[test]
    fn versions_compare_as_the_strings_they_are() {
        assert_eq!(Version::of("12345"), Version::Number(12_345));
        assert_eq!(Version::of("0"), Version::Number(0));
        assert_eq!(Version::of("007"), Version::of("007"));
        assert_ne!(Version::of("007"), Version::of("7"));
        assert_ne!(Version::of("+7"), Version::of("7"));
        assert_eq!(Version::of(""), Version::Text("".into()));
        assert_eq!(
            Version::of("99999999999999999999"),
            Version::Text("99999999999999999999".into()),
            "beyond u64: kept as text"
        );
    }

    #[test]
    fn a_handed_version_in_one_word_compares_exactly() {
        /// (case, versions handed out in turn, asked, expected)
        type Case = (&'static str, Vec<Option<Version>>, Option<Version>, bool);
        let key = ObjectKey::new("default", "web");
        let number = |n| Some(Version::Number(n));
        let text = |t: &str| Some(Version::Text(t.into()));
        let cases: [Case; 9] = [
            ("a number", vec![number(5)], number(5), true),
            ("another number", vec![number(5)], number(6), false),
            ("zero", vec![number(0)], number(0), true),
            ("none is not zero", vec![None], number(0), false),
            ("none", vec![None], None, true),
            (
                "the largest numbers go beside",
                vec![number(u64::MAX)],
                number(u64::MAX),
                true,
            ),
            ("a text", vec![text("a7")], text("a7"), true),
            ("another text", vec![text("a7")], text("a8"), false),
            (
                "a number after a text",
                vec![text("a7"), number(9)],
                text("a7"),
                false,
            ),
        ];
        for (case, versions, asked, expected) in cases {
            let mut handed = Handed::default();
            for version in versions {
                handed.insert(key.clone(), version);
            }
            assert_eq!(handed.has(&key, asked.as_ref()), expected, "{case}");
            assert_eq!(handed.len(), 1, "{case}");
            assert!(handed.remove(&key).is_some(), "{case}");
            assert!(!handed.has(&key, asked.as_ref()), "{case}: forgotten");
            assert!(handed.texts.is_empty(), "{case}: nothing left beside");
        }
    }

    /// Version `version` of Service `name`; its cluster IP ends in the version, so the
    /// change handing it out says which version it is.
    fn service(name: &str, version: &str) -> Decoded<Service> {
        Decoded::Valid(Arc::new(Service {
            metadata: ObjectMeta {
                namespace: Some("default".into()),
                name: Some(name.into()),
                resource_version: Some(version.into()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(format!("10.0.0.{version}")),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }))
    }

    /// `name@version` for a change that hands out an object, `-name` for a deletion.
    fn summary(changes: &[Change]) -> Vec<String> {
        let mut out: Vec<String> = changes
            .iter()
            .map(|c| match c {
                Change::Service(key, Some(s)) => {
                    let ip = s.spec.as_ref().expect("served").cluster_ips[0].to_string();
                    let version = ip.rsplit('.').next().unwrap_or_default().to_owned();
                    format!("{}@{version}", key.name())
                }
                Change::Service(key, None) => format!("-{}", key.name()),
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

    /// Applies each case's events in turn and checks the changes they hand out.
    fn run(mirror: &mut Mirror<Service>, cases: Vec<Case>) {
        for (name, events, want) in cases {
            let changes: Vec<Change> = events.iter().flat_map(|e| mirror.apply(e)).collect();
            assert_eq!(summary(&changes), want, "case: {name}");
        }
    }

    #[test]
    fn events_become_changes_and_relists_hand_out_only_differences() {
        use Event::{Apply, Delete, Init, InitApply, InitDone};
        let mut mirror = Mirror::<Service>::default();
        let cases: Vec<Case> = vec![
            (
                "first list: objects as they arrive",
                vec![
                    Init,
                    InitApply(service("a", "1")),
                    InitApply(service("b", "2")),
                ],
                vec!["a@1", "b@2"],
            ),
            ("list complete: nothing twice", vec![InitDone], vec![]),
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
        run(&mut mirror, cases);
        assert!(mirror.listed());
        assert_eq!(mirror.handed.len(), 1, "only d is remembered");
    }

    #[test]
    fn a_first_list_that_starts_over_still_converges() {
        use Event::{Init, InitApply, InitDone};
        let mut mirror = Mirror::<Service>::default();
        let cases: Vec<Case> = vec![
            (
                "first list, broken off",
                vec![
                    Init,
                    InitApply(service("a", "1")),
                    InitApply(service("b", "2")),
                ],
                vec!["a@1", "b@2"],
            ),
            (
                "started over: a unchanged, c new, b gone meanwhile",
                vec![
                    Init,
                    InitApply(service("a", "1")),
                    InitApply(service("c", "3")),
                ],
                vec!["c@3"],
            ),
            (
                "complete: what it no longer has",
                vec![InitDone],
                vec!["-b"],
            ),
            (
                "a relist is buffered again",
                vec![Init, InitApply(service("d", "4"))],
                vec![],
            ),
            ("relist complete", vec![InitDone], vec!["-a", "-c", "d@4"]),
        ];
        run(&mut mirror, cases);
    }

    #[test]
    fn a_first_list_from_nothing_notes_nothing_and_loses_nothing() {
        use Event::{Init, InitApply, InitDone};
        let mut mirror = Mirror::<Service>::default();
        let mut handed = Vec::new();
        for event in [
            Init,
            InitApply(service("a", "1")),
            InitApply(service("b", "2")),
        ] {
            handed.extend(mirror.apply(&event));
        }
        assert_eq!(summary(&handed), ["a@1", "b@2"]);
        assert!(
            mirror.listing.as_ref().is_none_or(Vec::is_empty),
            "objects of a first list from nothing are not noted"
        );
        assert_eq!(mirror.listing_count, 2);
        assert!(
            mirror.apply(&InitDone).is_empty(),
            "nothing twice, nothing gone"
        );
        assert_eq!(mirror.handed.len(), 2);
        // The next list is a relist: what it lacks goes.
        let relisted: Vec<Change> = [Init, InitApply(service("b", "2")), InitDone]
            .iter()
            .flat_map(|e| mirror.apply(e))
            .collect();
        assert_eq!(summary(&relisted), ["-a"]);
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
