//! One watch: which changes it sees (selectors applied the way the real watch cache applies
//! them), the newline-delimited JSON events it sends, and its streaming response body.

use std::io;
use std::time::Duration;

use axum::body::{Body, Bytes};
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::time::Instant;

use super::resource::Resource;
use super::selectors::Selectors;
use super::store::{Change, ChangeKind, WatchGuard};

/// What the store sends down a watch.
#[derive(Debug)]
pub enum Frame {
    /// One event, already serialised with its trailing newline.
    Line(Bytes),
    /// End the response cleanly (after a final ERROR event).
    End,
    /// Cut the connection with no final event and no end of the chunked body.
    Abort,
}

/// Which objects a list or watch request sees.
#[derive(Clone, Debug)]
pub struct WatchFilter {
    pub resource: Resource,
    /// `Some` for a request under `/namespaces/{ns}/`.
    pub namespace: Option<String>,
    pub selectors: Selectors,
}

impl WatchFilter {
    /// Whether an object of this filter's resource is in its namespace and matches its
    /// selectors.
    pub fn visible(&self, object: &Value) -> bool {
        let in_namespace = self.namespace.as_deref().is_none_or(|namespace| {
            object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                == Some(namespace)
        });
        in_namespace && self.selectors.matches(object)
    }

    /// The event type this watch gets for a change, if any. As in the real watch cache, an
    /// update that makes an object stop matching is a DELETED, one that makes it start
    /// matching an ADDED.
    pub fn event_type(&self, change: &Change) -> Option<&'static str> {
        if change.resource != self.resource {
            return None;
        }
        let now = self.visible(&change.object);
        let before = change.previous.as_deref().is_some_and(|p| self.visible(p));
        match (change.kind, before, now) {
            (ChangeKind::Deleted, before, now) => (before || now).then_some("DELETED"),
            (_, true, true) => Some("MODIFIED"),
            (_, false, true) => Some("ADDED"),
            (_, true, false) => Some("DELETED"),
            (_, false, false) => None,
        }
    }
}

/// A registered watch as the store fans changes out to it.
#[derive(Debug)]
pub struct WatchSink {
    pub id: u64,
    pub filter: WatchFilter,
    /// The client asked for BOOKMARK events (`allowWatchBookmarks=true`).
    pub bookmarks: bool,
    pub tx: UnboundedSender<Frame>,
}

/// `{"type":"ADDED","object":{...}}` and a newline.
pub fn event_line(event_type: &str, object: &Value) -> Bytes {
    let object = serde_json::to_string(object).expect("JSON values serialise");
    Bytes::from(format!(
        "{{\"type\":\"{event_type}\",\"object\":{object}}}\n"
    ))
}

/// A BOOKMARK at `resource_version`; `initial_events_end` adds the annotation that ends the
/// initial events of a streaming list.
pub fn bookmark_line(resource: Resource, resource_version: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({ "resourceVersion": resource_version.to_string() });
    if initial_events_end {
        metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    let object = json!({
        "kind": resource.kind(),
        "apiVersion": resource.api_version(),
        "metadata": metadata,
    });
    event_line("BOOKMARK", &object)
}

/// An ERROR event carrying a `Status`.
pub fn error_line(status: &Value) -> Bytes {
    event_line("ERROR", status)
}

/// The streaming body of a watch response: every frame the store sends, until `End`, an
/// `Abort`, the timeout, or the store forgetting the watch.
pub fn body(
    rx: UnboundedReceiver<Frame>,
    timeout: Option<Duration>,
    guard: Option<WatchGuard>,
) -> Body {
    struct Open {
        rx: UnboundedReceiver<Frame>,
        deadline: Option<Instant>,
        aborted: bool,
        // Held for its Drop: the watch is unregistered when the body goes away.
        _guard: Option<WatchGuard>,
    }
    let open = Open {
        rx,
        deadline: timeout.map(|t| Instant::now() + t),
        aborted: false,
        _guard: guard,
    };
    let frames = futures_util::stream::unfold(open, |mut open| async move {
        if open.aborted {
            return None;
        }
        let frame = match open.deadline {
            Some(deadline) => tokio::select! {
                frame = open.rx.recv() => frame,
                () = tokio::time::sleep_until(deadline) => None,
            },
            None => open.rx.recv().await,
        };
        match frame? {
            Frame::Line(line) => Some((Ok(line), open)),
            Frame::End => None,
            Frame::Abort => {
                // An error from the body makes hyper close the connection mid-response.
                open.aborted = true;
                let cut = io::Error::new(io::ErrorKind::ConnectionAborted, "watch dropped");
                Some((Err(cut), open))
            }
        }
    });
    Body::from_stream(frames)
}
