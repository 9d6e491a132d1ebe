//! List, then watch from the list's resourceVersion, as kube-runtime's watcher does (same
//! events, same errors, so the mirror and the failure handling read both alike), with one
//! difference: lists ask for protobuf (see `protobuf`). kube-runtime lists only as JSON.
//!
//! The stream's states: listing page by page (`Init`, one `InitApply` per object,
//! `InitDone`; each page's objects handed on as its body arrives, see `list_reader`), then
//! watching. A failed page restarts the list; a failed watch start is
//! retried from the same version; a watch that ends (its timeout, a dropped connection)
//! resumes from the last version seen; an ERROR event with `410 Gone` relists. Errors are
//! items of the stream, and polling it again retries: the caller paces that with a backoff.

use std::num::NonZeroU32;

use bytes::Bytes;
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
use tokio::sync::mpsc;

use super::{
    decoded::Decoded,
    list_reader::{self, ListReader},
    mirror::Watched,
    protobuf,
};

/// Objects per list page: fifty times client-go's and kube-runtime's 500. Each page is a
/// round trip the API server answers in about the same time whatever its size (measured
/// against the bench's kube-apiserver holding 100,000 Services: 50 ms for a page of 500,
/// 74–88 ms for a page of 5,000), so 500 made a list of 100,000 Services 200 round trips and
/// most of a start. The first list is asked for at resourceVersion 0 and the API server's
/// watch cache answers it whole, whatever the limit (see `ListFrom`); the limit counts for
/// relists and for lists the API server passes on to etcd (while its cache fills).
pub const PAGE_SIZE: NonZeroU32 = NonZeroU32::new(25_000).unwrap();

/// Pieces of a page read ahead of the watcher: enough to keep both busy, few enough that
/// a page is never held whole (a piece is one object, a few hundred bytes).
const READ_AHEAD: usize = 1024;

/// What to list and watch, and how many objects a list page asks for.
#[derive(Clone, Debug)]
pub struct Selectors {
    pub labels: Option<String>,
    pub fields: Option<String>,
    pub page_size: NonZeroU32,
}

type Item<K> = Result<Event<Decoded<K>>, watcher::Error>;

/// What a page's reader hands the watcher, in order: the list's metadata, its objects
/// (still encoded from protobuf, decoded from JSON), then the end of the page.
enum Piece<K> {
    Meta {
        resource_version: Option<String>,
        continue_token: Option<String>,
    },
    Encoded(Bytes),
    Decoded(Decoded<K>),
    End,
}

enum State<K: Watched> {
    /// Nothing listed: the next step starts a list.
    Empty,
    /// A list under way: the page being read, the next one (started as soon as its token
    /// is known, so the API server answers it while this one's objects are converted), and
    /// the version the list is at.
    Listing {
        page: PageReader<K>,
        next: Option<PageReader<K>>,
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
    /// A list was complete once: a relist is a consistent read (see [`page`]).
    listed_once: bool,
}

/// The events of `K` matching `selectors`, listed and then watched for as long as the
/// stream is polled. `listed_before`: a stream before this one listed them (its watch was
/// refused with `410 Gone`), so even this stream's first list is a relist.
pub fn list_watch<K: Watched>(
    client: Client,
    selectors: Selectors,
    listed_before: bool,
) -> impl Stream<Item = Item<K>> + Send {
    let watcher = Watcher {
        api: Api::all(client.clone()),
        client,
        selectors,
        state: State::Empty,
        listed_once: listed_before,
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
                        page: self.read_page(String::new()),
                        next: None,
                        version: None,
                    };
                    return Ok(Event::Init);
                }
                State::Listing {
                    page,
                    next,
                    version,
                } => {
                    if let Some(item) = self.list_step(page, next, version).await {
                        return item;
                    }
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

    /// Takes a list's next piece: an object to hand out, the list's end (or its failure,
    /// which leaves the state Empty: the list starts over), or nothing to hand out yet (the
    /// list's metadata, a page's end with another to read).
    async fn list_step(
        &mut self,
        mut page: PageReader<K>,
        mut next: Option<PageReader<K>>,
        mut version: Option<String>,
    ) -> Option<Item<K>> {
        let object = match page.next().await {
            Err(e) => return Some(Err(watcher::Error::InitialListFailed(e))),
            Ok(Piece::Meta {
                resource_version,
                continue_token,
            }) => {
                version = resource_version;
                next = continue_token.map(|token| self.read_page(token));
                None
            }
            Ok(Piece::Encoded(bytes)) => Some(protobuf::item(bytes)),
            Ok(Piece::Decoded(object)) => Some(object),
            Ok(Piece::End) => {
                if let Some(next) = next {
                    self.state = State::Listing {
                        page: next,
                        next: None,
                        version,
                    };
                    return None;
                }
                let Some(version) = version else {
                    // Stays Empty: the next poll lists again.
                    return Some(Err(watcher::Error::NoResourceVersion));
                };
                self.state = State::Listed { version };
                self.listed_once = true;
                return Some(Ok(Event::InitDone));
            }
        };
        self.state = State::Listing {
            page,
            next,
            version,
        };
        object.map(|object| Ok(Event::InitApply(object)))
    }

    /// Starts reading the page at `token` ("" for the first) on a task of its own.
    fn read_page(&self, token: String) -> PageReader<K> {
        let client = self.client.clone();
        let selectors = self.selectors.clone();
        let from = if token.is_empty() {
            if self.listed_once {
                ListFrom::Latest
            } else {
                ListFrom::AnyVersion
            }
        } else {
            ListFrom::Continue(token)
        };
        let (tx, pieces) = mpsc::channel(READ_AHEAD);
        let task = tokio::spawn(async move {
            if let Err(e) = page::<K>(&client, &selectors, &from, &tx).await {
                // The watcher gone, nobody is left to tell.
                let _ = tx.send(Err(e)).await;
            }
        });
        PageReader { task, pieces }
    }

    fn watch_params(&self) -> WatchParams {
        let mut params = WatchParams::default();
        params.label_selector.clone_from(&self.selectors.labels);
        params.field_selector.clone_from(&self.selectors.fields);
        params
    }
}

/// A page being read; dropped (the list abandoned), its reading stops.
struct PageReader<K: Watched> {
    task: tokio::task::JoinHandle<()>,
    pieces: mpsc::Receiver<kube::Result<Piece<K>>>,
}

impl<K: Watched> PageReader<K> {
    /// The page's next piece; an error for a page that failed or stopped before its end.
    async fn next(&mut self) -> kube::Result<Piece<K>> {
        self.pieces.recv().await.unwrap_or_else(|| {
            Err(kube::Error::Api(ErrorResponse {
                status: "Failure".into(),
                code: 0,
                message: "reading a list page stopped before its end".into(),
                reason: "ListTaskFailed".into(),
            }))
        })
    }
}

impl<K: Watched> Drop for PageReader<K> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where a list page starts.
enum ListFrom {
    /// The first list: resourceVersion 0, whatever the API server holds. Its watch cache
    /// answers at once, in one response, as it answers client-go's informers; a list at the
    /// latest version is a consistent read, which it pages, and once etcd has compacted past
    /// a quiet kind's last change it passes the pages after the first on to etcd (at the
    /// bench's 100,000 Services: 5-6 CPU-seconds of the API server's and 3.2-3.8 s, against
    /// 0.8-1.8 and 0.7-1.0 s from the cache; docs/lists-paged-after-compaction-2026-12-07.md).
    AnyVersion,
    /// A relist (after `410 Gone`): the latest version, never older than what the watch had
    /// seen (another API server's cache may lag).
    Latest,
    /// The next page of a list.
    Continue(String),
}

/// Reads the page `from` into `tx`, piece by piece, as its body arrives; returns the error
/// that stopped it (the pieces before it are sent).
async fn page<K: Watched>(
    client: &Client,
    selectors: &Selectors,
    from: &ListFrom,
    tx: &mpsc::Sender<kube::Result<Piece<K>>>,
) -> kube::Result<()> {
    let params = ListParams {
        label_selector: selectors.labels.clone(),
        field_selector: selectors.fields.clone(),
        limit: Some(selectors.page_size.get()),
        continue_token: match from {
            ListFrom::Continue(token) => Some(token.clone()),
            ListFrom::AnyVersion | ListFrom::Latest => None,
        },
        ..ListParams::default()
    };
    let mut request = kube::core::Request::new(Decoded::<K>::url_path(&(), None))
        .list(&params)
        .map_err(kube::Error::BuildRequest)?;
    if matches!(from, ListFrom::AnyVersion) {
        // kube's `ListParams` leaves a version of 0 out beside a limit.
        any_version(&mut request)?;
    }
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
    if status.is_success() && protobuf && K::LISTED_AS_PROTOBUF {
        return stream_protobuf(response.into_body(), tx).await;
    }
    let body = response.into_body().collect().await?.to_bytes();
    tracing::debug!(kind = %K::kind(&()), protobuf, bytes = body.len(), "list page");
    if !status.is_success() {
        return Err(kube::Error::Api(error_response(status, protobuf, &body)));
    }
    if protobuf {
        return Err(undecodable(&protobuf::DecodeError::NotAsked));
    }
    let list: JsonList<K> = serde_json::from_slice(&body).map_err(kube::Error::SerdeError)?;
    let pieces = std::iter::once(Piece::Meta {
        resource_version: list.metadata.resource_version,
        continue_token: list.metadata.continue_.filter(|c| !c.is_empty()),
    })
    .chain(list.items.into_iter().map(Piece::Decoded))
    .chain(std::iter::once(Piece::End));
    for piece in pieces {
        if tx.send(Ok(piece)).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// Sends a protobuf list's pieces as its body arrives.
async fn stream_protobuf<K: Watched>(
    mut body: kube::client::Body,
    tx: &mpsc::Sender<kube::Result<Piece<K>>>,
) -> kube::Result<()> {
    let mut reader = ListReader::default();
    let mut bytes = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        bytes += data.len();
        reader.push(&data);
        while let Some(piece) = reader.next().map_err(|e| undecodable(&e))? {
            let piece = match piece {
                list_reader::Piece::Meta {
                    resource_version,
                    continue_token,
                } => Piece::Meta {
                    resource_version,
                    continue_token,
                },
                list_reader::Piece::Item(item) => Piece::Encoded(item),
            };
            if tx.send(Ok(piece)).await.is_err() {
                return Ok(());
            }
        }
    }
    reader.finish().map_err(|e| undecodable(&e))?;
    tracing::debug!(kind = %K::kind(&()), bytes, "list page");
    // The watcher gone, the end is for nobody.
    let _ = tx.send(Ok(Piece::End)).await;
    Ok(())
}

/// Adds `resourceVersion=0` to a list request: any version the API server holds.
fn any_version(request: &mut http::Request<Vec<u8>>) -> kube::Result<()> {
    let uri = format!("{}&resourceVersion=0", request.uri());
    *request.uri_mut() = uri.parse().map_err(|e: http::uri::InvalidUri| {
        kube::Error::BuildRequest(kube::core::request::Error::BuildRequest(e.into()))
    })?;
    Ok(())
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
