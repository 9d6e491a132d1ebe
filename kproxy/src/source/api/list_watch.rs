//! List, then watch from the list's resourceVersion, as kube-runtime's watcher does (same
//! events, same errors, so the mirror and the failure handling read both alike), with one
//! difference: lists ask for protobuf (see `protobuf`). kube-runtime lists only as JSON.
//!
//! The stream's states: listing page by page (`Init`, one `InitApply` per object,
//! `InitDone`), then watching. A failed page restarts the list; a failed watch start is
//! retried from the same version; a watch that ends (its timeout, a dropped connection)
//! resumes from the last version seen; an ERROR event with `410 Gone` relists. Errors are
//! items of the stream, and polling it again retries: the caller paces that with a backoff.

use std::num::NonZeroU32;

use futures::{Stream, StreamExt, stream::BoxStream};
use http_body_util::BodyExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ListParams, WatchEvent, WatchParams},
    core::ErrorResponse,
    runtime::watcher::{self, Event},
};
use serde::Deserialize;

use super::{
    decoded::Decoded,
    mirror::Watched,
    protobuf::{self, Encoded, Page},
};

/// Objects per list page: fifty times client-go's and kube-runtime's 500. Each page is a
/// round trip the API server answers in about the same time whatever its size (measured
/// against the bench's kube-apiserver holding 100,000 Services: 50 ms for a page of 500,
/// 74–88 ms for a page of 5,000), so 500 made a list of 100,000 Services 200 round trips and
/// most of a start. With 25,000 the bench's 100,000 Services were listed in 2.1–2.5 s
/// against 3.5–3.7 s with 5,000 (three runs and two, 2026-12-06). A page of 25,000 Services is
/// about 5 MB of protobuf, its items decoded one at a time as they are handed on, and the
/// next page is read while they are, so the agent holds about two pages' bytes per kind.
/// (A server that answers in JSON would leave pages of as many decoded objects; the
/// kube-apiserver answers every kind kproxy lists in protobuf.)
pub const PAGE_SIZE: NonZeroU32 = NonZeroU32::new(25_000).unwrap();

/// What to list and watch, and how many objects a list page asks for.
#[derive(Clone, Debug)]
pub struct Selectors {
    pub labels: Option<String>,
    pub fields: Option<String>,
    pub page_size: NonZeroU32,
}

type Item<K> = Result<Event<Decoded<K>>, watcher::Error>;

/// A page's objects not handed out yet: decoded (JSON) or still encoded (protobuf).
enum Pending<K> {
    Json(std::vec::IntoIter<Decoded<K>>),
    Protobuf(Encoded<K>),
}

impl<K: Watched> Iterator for Pending<K> {
    type Item = Decoded<K>;

    fn next(&mut self) -> Option<Decoded<K>> {
        match self {
            Self::Json(items) => items.next(),
            Self::Protobuf(items) => items.next(),
        }
    }
}

enum State<K: Watched> {
    /// Nothing listed: the next step starts a list.
    Empty,
    /// A list under way: objects of the page read last not yet handed out, and the next
    /// page, already on its way while they are (`None`: the page was the last).
    Listing {
        pending: Pending<K>,
        next: Option<Prefetch<K>>,
        version: Option<String>,
    },
    /// Listed (or a watch ended): the next step starts a watch from `version`.
    Listed { version: String },
    Watching {
        version: String,
        events: BoxStream<'static, kube::Result<WatchEvent<Decoded<K>>>>,
    },
}

struct Watcher<K: Watched> {
    client: Client,
    api: Api<Decoded<K>>,
    selectors: Selectors,
    state: State<K>,
}

/// The events of `K` matching `selectors`, listed and then watched for as long as the
/// stream is polled.
pub fn list_watch<K: Watched>(
    client: Client,
    selectors: Selectors,
) -> impl Stream<Item = Item<K>> + Send {
    let watcher = Watcher {
        api: Api::all(client.clone()),
        client,
        selectors,
        state: State::Empty,
    };
    futures::stream::unfold(watcher, |mut watcher| async move {
        let item = watcher.step().await;
        Some((item, watcher))
    })
}

impl<K: Watched> Watcher<K> {
    /// Runs the state machine until it has an event or an error to hand out.
    async fn step(&mut self) -> Item<K> {
        loop {
            match std::mem::replace(&mut self.state, State::Empty) {
                State::Empty => {
                    self.state = State::Listing {
                        pending: Pending::Json(Vec::new().into_iter()),
                        next: Some(self.prefetch(String::new())),
                        version: None,
                    };
                    return Ok(Event::Init);
                }
                State::Listing {
                    mut pending,
                    next,
                    version,
                } => {
                    if let Some(object) = pending.next() {
                        self.state = State::Listing {
                            pending,
                            next,
                            version,
                        };
                        return Ok(Event::InitApply(object));
                    }
                    let Some(next) = next else {
                        let Some(version) = version else {
                            // Stays Empty: the next poll lists again.
                            return Err(watcher::Error::NoResourceVersion);
                        };
                        self.state = State::Listed { version };
                        return Ok(Event::InitDone);
                    };
                    // A failed page leaves the state Empty: the list starts over.
                    let page = next
                        .page()
                        .await
                        .map_err(watcher::Error::InitialListFailed)?;
                    self.state = State::Listing {
                        pending: page.items,
                        next: page.continue_token.map(|token| self.prefetch(token)),
                        version: page.resource_version,
                    };
                }
                State::Listed { version } => {
                    let params = self.watch_params();
                    match self.api.watch(&params, &version).await {
                        Ok(events) => {
                            self.state = State::Watching {
                                version,
                                events: events.boxed(),
                            };
                        }
                        Err(e) => {
                            self.state = State::Listed { version };
                            return Err(watcher::Error::WatchStartFailed(e));
                        }
                    }
                }
                State::Watching {
                    mut version,
                    mut events,
                } => match events.next().await {
                    None => self.state = State::Listed { version },
                    Some(Err(e)) => {
                        self.state = State::Listed { version };
                        return Err(watcher::Error::WatchFailed(e));
                    }
                    Some(Ok(event)) => {
                        let item = match event {
                            WatchEvent::Added(object) | WatchEvent::Modified(object) => {
                                advance(&mut version, &object);
                                Ok(Event::Apply(object))
                            }
                            WatchEvent::Deleted(object) => {
                                advance(&mut version, &object);
                                Ok(Event::Delete(object))
                            }
                            WatchEvent::Bookmark(bookmark) => {
                                version = bookmark.metadata.resource_version;
                                self.state = State::Watching { version, events };
                                continue;
                            }
                            WatchEvent::Error(status) => {
                                // 410 Gone: the version is compacted away; relist.
                                if status.code != 410 {
                                    self.state = State::Listed { version };
                                }
                                return Err(watcher::Error::WatchError(status));
                            }
                        };
                        self.state = State::Watching { version, events };
                        return item;
                    }
                },
            }
        }
    }

    /// Starts reading the page at `token` ("" for the first): the agent converts one page's
    /// objects while the API server encodes the next.
    fn prefetch(&self, token: String) -> Prefetch<K> {
        let client = self.client.clone();
        let selectors = self.selectors.clone();
        Prefetch(tokio::spawn(async move {
            page::<K>(&client, &selectors, &token).await
        }))
    }

    fn watch_params(&self) -> WatchParams {
        let mut params = WatchParams::default();
        params.label_selector.clone_from(&self.selectors.labels);
        params.field_selector.clone_from(&self.selectors.fields);
        params
    }
}

/// A page being read; dropped (the list abandoned), it stops.
struct Prefetch<K: Watched>(tokio::task::JoinHandle<kube::Result<Page<Pending<K>>>>);

impl<K: Watched> Prefetch<K> {
    async fn page(mut self) -> kube::Result<Page<Pending<K>>> {
        (&mut self.0).await.unwrap_or_else(|e| {
            Err(kube::Error::Api(ErrorResponse {
                status: "Failure".into(),
                code: 0,
                message: format!("reading a list page: {e}"),
                reason: "ListTaskFailed".into(),
            }))
        })
    }
}

impl<K: Watched> Drop for Prefetch<K> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One page of the list, from `token` ("" for the first).
async fn page<K: Watched>(
    client: &Client,
    selectors: &Selectors,
    token: &str,
) -> kube::Result<Page<Pending<K>>> {
    let params = ListParams {
        label_selector: selectors.labels.clone(),
        field_selector: selectors.fields.clone(),
        limit: Some(selectors.page_size.get()),
        continue_token: (!token.is_empty()).then(|| token.to_owned()),
        ..ListParams::default()
    };
    let mut request = kube::core::Request::new(Decoded::<K>::url_path(&(), None))
        .list(&params)
        .map_err(kube::Error::BuildRequest)?;
    let accept = if K::LISTED_AS_PROTOBUF {
        protobuf::ACCEPT
    } else {
        "application/json"
    };
    request
        .headers_mut()
        .insert(http::header::ACCEPT, http::HeaderValue::from_static(accept));
    let response = client.send(request.map(kube::client::Body::from)).await?;
    let status = response.status();
    let protobuf = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(protobuf::is_protobuf);
    let body = response.into_body().collect().await?.to_bytes();
    tracing::debug!(
        kind = %K::kind(&()),
        protobuf,
        bytes = body.len(),
        "list page"
    );
    if !status.is_success() {
        return Err(kube::Error::Api(error_response(status, protobuf, &body)));
    }
    if protobuf {
        let page = protobuf::list::<K>(&body).map_err(|e| undecodable(&e))?;
        return Ok(page.map_items(Pending::Protobuf));
    }
    let list: JsonList<K> = serde_json::from_slice(&body).map_err(kube::Error::SerdeError)?;
    Ok(Page {
        items: Pending::Json(list.items.into_iter()),
        resource_version: list.metadata.resource_version,
        continue_token: list.metadata.continue_.filter(|c| !c.is_empty()),
    })
}

/// A list as JSON: each item decoded on its own (see `decoded`).
#[derive(Deserialize)]
#[serde(bound = "")]
struct JsonList<K: Watched> {
    #[serde(default)]
    metadata: ListMeta,
    #[serde(default)]
    items: Vec<Decoded<K>>,
}

/// Moves the watch's version on to `object`'s (an invalid object's is unknown).
fn advance<K: Watched>(version: &mut String, object: &Decoded<K>) {
    if let Some(v) = object.resource_version() {
        *version = v;
    }
}

/// The API's refusal as kube reports it (the code is what the agent acts on).
fn error_response(status: http::StatusCode, protobuf: bool, body: &bytes::Bytes) -> ErrorResponse {
    let decoded = if protobuf {
        protobuf::status(body)
            .ok()
            .map(|(code, reason, message)| ErrorResponse {
                status: "Failure".into(),
                code: if code == 0 { status.as_u16() } else { code },
                message,
                reason,
            })
    } else {
        serde_json::from_slice::<ErrorResponse>(body).ok()
    };
    decoded.unwrap_or_else(|| ErrorResponse {
        status: "Failure".into(),
        code: status.as_u16(),
        message: String::from_utf8_lossy(body).into_owned(),
        reason: status.canonical_reason().unwrap_or_default().into(),
    })
}

fn undecodable(e: &protobuf::DecodeError) -> kube::Error {
    kube::Error::Api(ErrorResponse {
        status: "Failure".into(),
        code: 0,
        message: format!("undecodable list: {e}"),
        reason: "Undecodable".into(),
    })
}
