//! The server's state under one lock: objects, the global resourceVersion, the bounded event
//! history and the open watches that every change is fanned out to.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::{Map, Value};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use super::resource::Resource;
use super::status;
use super::watch::{Frame, WatchFilter, WatchSink, bookmark_line, error_line, event_line};

/// How many changes are kept for watches that resume from an older resourceVersion (the real
/// watch cache keeps a similar window, then answers 410 Expired).
pub const HISTORY_LIMIT: usize = 10_000;

/// The store as the HTTP handlers and the control API share it.
pub type SharedStore = Arc<Mutex<Store>>;

/// Locks the store; a panic elsewhere (a failed test) does not make it unusable.
pub fn lock(store: &SharedStore) -> MutexGuard<'_, Store> {
    store.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Objects are kept per resource, in namespace/name order (the order of list items).
type ObjectKey = (Resource, String, String);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One mutation, as the history keeps it.
#[derive(Debug)]
pub struct Change {
    pub resource_version: u64,
    pub resource: Resource,
    pub kind: ChangeKind,
    /// The object after the change (for a deletion: the last state with a fresh RV).
    pub object: Arc<Value>,
    /// The object before the change, for updates and deletions.
    pub previous: Option<Arc<Value>>,
}

/// Where a new watch starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchStart {
    /// `resourceVersion` "" or "0": synthetic ADDED events for the current objects first; with
    /// `initial_events_end` (streaming lists) then a BOOKMARK that marks their end.
    Now { initial_events_end: bool },
    /// Every retained change after this resourceVersion, then live ones.
    After(u64),
}

#[derive(Debug)]
pub struct Store {
    resource_version: u64,
    /// Changes up to this resourceVersion are forgotten: a watch from an older one is expired.
    compacted: u64,
    /// Watch starts from a compacted resourceVersion are refused with HTTP 410 rather than
    /// answered with a 410 ERROR event.
    gone_at_watch_start: bool,
    objects: BTreeMap<ObjectKey, Arc<Value>>,
    history: VecDeque<Arc<Change>>,
    watches: Vec<WatchSink>,
    next_watch_id: u64,
    next_uid: u64,
}

impl Store {
    pub fn new(first_resource_version: u64) -> Store {
        Store {
            resource_version: first_resource_version,
            compacted: first_resource_version,
            gone_at_watch_start: false,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            watches: Vec::new(),
            next_watch_id: 0,
            next_uid: 0,
        }
    }

    pub fn resource_version(&self) -> u64 {
        self.resource_version
    }

    /// Creates or replaces an object; see `FakeApiServer::apply`.
    pub fn apply(&mut self, object: Value) -> u64 {
        let Value::Object(mut object) = object else {
            panic!("fake API server: apply needs a JSON object, got {object}");
        };
        let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
        let resource = Resource::from_kind(kind).unwrap_or_else(|| {
            panic!("fake API server: kind {kind:?} is not one of Service, EndpointSlice, Node")
        });
        object.insert("apiVersion".into(), resource.api_version().into());
        let metadata = object
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()))
            .as_object_mut()
            .expect("metadata is an object");
        let name = metadata
            .get("name")
            .and_then(Value::as_str)
            .expect("fake API server: apply needs metadata.name")
            .to_owned();
        let namespace = if resource.namespaced() {
            let namespace = metadata
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_owned();
            metadata.insert("namespace".into(), namespace.clone().into());
            namespace
        } else {
            metadata.remove("namespace");
            String::new()
        };
        let key = (resource, namespace, name);
        let previous = self.objects.get(&key).cloned();

        // Like the real server, an update keeps the identity the object was created with.
        for field in ["uid", "creationTimestamp"] {
            if let Some(kept) = previous.as_ref().and_then(|p| p["metadata"].get(field)) {
                metadata.entry(field).or_insert_with(|| kept.clone());
            }
        }
        if !metadata.contains_key("uid") {
            self.next_uid += 1;
            let uid = format!("fa4e0000-0000-4000-8000-{:012x}", self.next_uid);
            metadata.insert("uid".into(), uid.into());
        }
        self.resource_version += 1;
        metadata.insert(
            "resourceVersion".into(),
            self.resource_version.to_string().into(),
        );

        let object = Arc::new(Value::Object(object));
        self.objects.insert(key, Arc::clone(&object));
        let kind = if previous.is_some() {
            ChangeKind::Modified
        } else {
            ChangeKind::Added
        };
        self.record(Change {
            resource_version: self.resource_version,
            resource,
            kind,
            object,
            previous,
        });
        self.resource_version
    }

    /// Deletes an object; the DELETED event carries its last state with a fresh RV.
    pub fn delete(&mut self, resource: Resource, namespace: Option<&str>, name: &str) -> bool {
        let namespace = if resource.namespaced() {
            namespace.unwrap_or("default")
        } else {
            ""
        };
        let key = (resource, namespace.to_owned(), name.to_owned());
        let Some(previous) = self.objects.remove(&key) else {
            return false;
        };
        self.resource_version += 1;
        let mut object = (*previous).clone();
        object["metadata"]["resourceVersion"] = self.resource_version.to_string().into();
        self.record(Change {
            resource_version: self.resource_version,
            resource,
            kind: ChangeKind::Deleted,
            object: Arc::new(object),
            previous: Some(previous),
        });
        true
    }

    pub fn get(
        &self,
        resource: Resource,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Arc<Value>> {
        let namespace = if resource.namespaced() {
            namespace.unwrap_or("default")
        } else {
            ""
        };
        self.objects
            .get(&(resource, namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// The current resourceVersion and the objects the filter lets through, in
    /// namespace/name order.
    pub fn list(&self, filter: &WatchFilter) -> (u64, Vec<Arc<Value>>) {
        let items = self
            .objects_of(filter.resource)
            .filter(|object| filter.visible(object))
            .cloned()
            .collect();
        (self.resource_version, items)
    }

    /// Opens a watch: queues what it must see first (or the 410 error that ends it) and,
    /// unless it is already over, registers it for live changes. Returns its id if registered.
    pub fn start_watch(
        &mut self,
        filter: WatchFilter,
        start: WatchStart,
        bookmarks: bool,
    ) -> (Option<u64>, UnboundedReceiver<Frame>) {
        let (tx, rx) = unbounded_channel();
        // Sends cannot fail here: the receiver is still in hand.
        match start {
            WatchStart::Now { initial_events_end } => {
                for object in self.objects_of(filter.resource) {
                    if filter.visible(object) {
                        let _ = tx.send(Frame::Line(event_line("ADDED", object)));
                    }
                }
                if initial_events_end && bookmarks {
                    let line = bookmark_line(filter.resource, self.resource_version, true);
                    let _ = tx.send(Frame::Line(line));
                }
            }
            WatchStart::After(from) if from < self.compacted => {
                let expired = status::expired(from, self.compacted);
                let _ = tx.send(Frame::Line(error_line(&expired)));
                let _ = tx.send(Frame::End);
                return (None, rx);
            }
            WatchStart::After(from) => {
                for change in self.history.iter().filter(|c| c.resource_version > from) {
                    if let Some(event_type) = filter.event_type(change) {
                        let _ = tx.send(Frame::Line(event_line(event_type, &change.object)));
                    }
                }
            }
        }
        self.next_watch_id += 1;
        let id = self.next_watch_id;
        self.watches.push(WatchSink {
            id,
            filter,
            bookmarks,
            tx,
        });
        (Some(id), rx)
    }

    /// Forgets a watch whose response has ended.
    pub fn stop_watch(&mut self, id: u64) {
        self.watches.retain(|watch| watch.id != id);
    }

    /// Watches open now on `resource` (a client that went away no longer counts).
    pub fn open_watches(&self, resource: Resource) -> usize {
        self.watches
            .iter()
            .filter(|watch| watch.filter.resource == resource && !watch.tx.is_closed())
            .count()
    }

    /// Sends a BOOKMARK with the current RV on every watch that allowed bookmarks.
    pub fn bookmark(&mut self) {
        let resource_version = self.resource_version;
        self.watches.retain(|watch| {
            !watch.bookmarks
                || watch
                    .tx
                    .send(Frame::Line(bookmark_line(
                        watch.filter.resource,
                        resource_version,
                        false,
                    )))
                    .is_ok()
        });
    }

    /// Forgets the history up to now and ends every open watch with 410 Expired.
    pub fn expire(&mut self) {
        self.compacted = self.resource_version;
        self.history.clear();
        let expired = error_line(&status::expired(self.compacted, self.compacted));
        for watch in self.watches.drain(..) {
            let _ = watch.tx.send(Frame::Line(expired.clone()));
            let _ = watch.tx.send(Frame::End);
        }
    }

    /// Forgets the history up to now and cuts every open watch; from now on a watch start
    /// from a forgotten resourceVersion is refused with HTTP 410.
    pub fn expire_at_watch_start(&mut self) {
        self.compacted = self.resource_version;
        self.history.clear();
        self.gone_at_watch_start = true;
        self.drop_watches();
    }

    /// The `Status` to refuse a watch start from `from` with, if this store refuses it.
    pub fn refused_watch_start(&self, from: u64) -> Option<Value> {
        (self.gone_at_watch_start && from < self.compacted)
            .then(|| status::expired(from, self.compacted))
    }

    /// Cuts every open watch connection without a final event.
    pub fn drop_watches(&mut self) {
        for watch in self.watches.drain(..) {
            let _ = watch.tx.send(Frame::Abort);
        }
    }

    fn objects_of(&self, resource: Resource) -> impl Iterator<Item = &Arc<Value>> {
        self.objects
            .range((resource, String::new(), String::new())..)
            .take_while(move |((r, _, _), _)| *r == resource)
            .map(|(_, object)| object)
    }

    /// Keeps a change in the bounded history and sends it to every watch that sees it.
    fn record(&mut self, change: Change) {
        let change = Arc::new(change);
        self.history.push_back(Arc::clone(&change));
        while self.history.len() > HISTORY_LIMIT {
            if let Some(forgotten) = self.history.pop_front() {
                self.compacted = forgotten.resource_version;
            }
        }
        // One serialisation per change and event type, shared by all the watches.
        let mut lines: Vec<(&'static str, axum::body::Bytes)> = Vec::new();
        self.watches.retain(|watch| {
            let Some(event_type) = watch.filter.event_type(&change) else {
                return true;
            };
            let line = match lines.iter().find(|(t, _)| *t == event_type) {
                Some((_, line)) => line.clone(),
                None => {
                    let line = event_line(event_type, &change.object);
                    lines.push((event_type, line.clone()));
                    line
                }
            };
            // A watch whose client went away is dropped from the fan-out.
            watch.tx.send(Frame::Line(line)).is_ok()
        });
    }
}

/// Removes its watch from the store when the response body is dropped (client gone, stream
/// ended, server stopped).
#[derive(Debug)]
pub struct WatchGuard {
    pub store: SharedStore,
    pub id: u64,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        lock(&self.store).stop_watch(self.id);
    }
}
