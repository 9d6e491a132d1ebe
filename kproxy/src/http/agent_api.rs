//! The agent's local API, on the metrics server (local by default, 127.0.0.1:10249, not on
//! the health port load balancers reach), and its client for the `kproxy` commands:
//! `POST /verify` runs the drift check now and answers with its report (`kproxy verify`; it
//! repairs what it finds, hence POST); `GET /frontends` names the Service behind each
//! frontend (`kproxy services`: the pinned maps hold ids, not names).
//!
//! `/frontends` is one JSON list, written a page of frontends at a time, each page a
//! request to the agent's loop: written whole, 100,000 frontends' names were 20 MB held at
//! once, the largest moment of the agent's memory after its start. Frontends are listed in
//! order, each once; one that changes while the list is written appears as it was when its
//! page was (the pages are written from the agent's state of their moment).

use std::{borrow::Cow, net::SocketAddr};

use anyhow::{Context, Result, bail};
use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use futures::StreamExt;
use http_body_util::{BodyExt, Empty};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::model::{EndpointChoice, FrontendKey, Protocol};

/// Frontends per page of `/frontends`.
pub const FRONTEND_PAGE: usize = 2_000;

/// A page of `/frontends`: up to `FRONTEND_PAGE` `FrontendName`s as JSON objects separated
/// by commas, and the last frontend's key when more may follow.
#[derive(Debug, Default)]
pub struct FrontendPage {
    pub json: String,
    pub next: Option<FrontendKey>,
}

/// What a drift check found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Frontends the agent has programmed (all of them compared).
    pub frontends: usize,
    /// Every difference between the maps and the agent's record, repaired.
    pub drift: Vec<String>,
    /// Why the check could not run (maps unreadable), if it could not.
    pub error: Option<String>,
}

/// The Service behind a programmed frontend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontendName {
    /// `VIP:port/PROTO` (`*:port/PROTO` for a NodePort; `[VIP]:port/PROTO` and
    /// `[*]:port/PROTO` in IPv6), as `kproxy services` prints it.
    pub frontend: String,
    /// `all`, or `internal` (an externalTrafficPolicy Local frontend's entry for this node).
    /// This and the other fields of a few known words are borrowed where the agent makes
    /// them: `/frontends` names every frontend, 100,000 at the largest scale.
    pub scope: Cow<'static, str>,
    /// `namespace/name`.
    pub service: String,
    /// The service port's name ("" when unnamed).
    pub port: String,
    /// ClusterIP, NodePort, ExternalIP or LoadBalancer: what the frontend is of its Service.
    pub kind: Cow<'static, str>,
    /// The Service's internalTrafficPolicy: `Local` or `Cluster`.
    pub internal_traffic_policy: Option<Cow<'static, str>>,
    /// For external kinds: `Local` or `Cluster`.
    pub external_traffic_policy: Option<Cow<'static, str>>,
}

/// What is programmed for a frontend: its service port id and the backends taking new
/// flows, in slot order, with their ids.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgrammedBackends {
    pub svc_id: u32,
    pub backends: Vec<(String, u32)>,
}

/// The agent's half of `kproxy explain` for one frontend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontendExplanation {
    pub name: FrontendName,
    /// Which clients this entry serves (an externalTrafficPolicy Local frontend has one for
    /// clients on this node and one for the others).
    pub applies_to: String,
    pub affinity_timeout_s: Option<u32>,
    /// Without endpoints: refused with ICMP (true) or dropped.
    pub rejects_when_empty: bool,
    pub source_ranges: Vec<String>,
    pub choice: Option<EndpointChoice>,
    /// `None`: not programmed (a full map).
    pub programmed: Option<ProgrammedBackends>,
    /// New flows pick their backend by Maglev hashing, from tables of this many entries
    /// (`None`: round robin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev_table_size: Option<u32>,
}

/// A request to the agent's loop; it answers on the sender.
pub enum AgentRequest {
    Verify(oneshot::Sender<VerifyReport>),
    /// Answered with the page of `FrontendName`s after `after` (the first page: `None`).
    Frontends {
        after: Option<FrontendKey>,
        reply: oneshot::Sender<FrontendPage>,
    },
    Explain {
        dst: SocketAddr,
        proto: Protocol,
        reply: oneshot::Sender<Vec<FrontendExplanation>>,
    },
}

pub fn routes(requests: mpsc::Sender<AgentRequest>) -> Router {
    Router::new()
        .route("/verify", post(verify))
        .route("/frontends", get(frontends))
        .route("/explain/{dst}/{proto}", get(explain_route))
        .with_state(requests)
}

type JsonAnswer = Result<([(&'static str, &'static str); 1], String), (StatusCode, String)>;

async fn verify(State(requests): State<mpsc::Sender<AgentRequest>>) -> JsonAnswer {
    ask(&requests, AgentRequest::Verify).await
}

async fn frontends(
    State(requests): State<mpsc::Sender<AgentRequest>>,
) -> Result<Response, (StatusCode, String)> {
    // The first page before the answer: an agent that is not serving gets its status.
    let first = page_after(&requests, None).await?;
    let opening = Bytes::from(format!("[{}", first.json));
    let listing = Listing {
        requests,
        next: first.next,
        any: !first.json.is_empty(),
        closed: false,
    };
    let rest = futures::stream::unfold(listing, Listing::next_chunk);
    let body = futures::stream::once(async { Ok(opening) }).chain(rest);
    Ok((
        [("content-type", "application/json")],
        Body::from_stream(body),
    )
        .into_response())
}

async fn page_after(
    requests: &mpsc::Sender<AgentRequest>,
    after: Option<FrontendKey>,
) -> Result<FrontendPage, (StatusCode, String)> {
    ask_agent(requests, |reply| AgentRequest::Frontends { after, reply }).await
}

/// The rest of a `/frontends` list being written.
struct Listing {
    requests: mpsc::Sender<AgentRequest>,
    /// The key to ask the next page after; `None`: the list is complete.
    next: Option<FrontendKey>,
    /// Some frontend was written (the next one needs a comma before it).
    any: bool,
    closed: bool,
}

impl Listing {
    /// The next piece of the body: a page, then the closing bracket. An agent that stops
    /// meanwhile ends the body with an error (a cut list, never a wrong one).
    async fn next_chunk(mut self) -> Option<(Result<Bytes, std::io::Error>, Self)> {
        if self.closed {
            return None;
        }
        let Some(after) = self.next.take() else {
            self.closed = true;
            return Some((Ok(Bytes::from_static(b"]")), self));
        };
        match page_after(&self.requests, Some(after)).await {
            Ok(page) => {
                let comma = if self.any && !page.json.is_empty() {
                    ","
                } else {
                    ""
                };
                self.any |= !page.json.is_empty();
                self.next = page.next;
                Some((Ok(Bytes::from(format!("{comma}{}", page.json))), self))
            }
            Err((_, why)) => {
                self.closed = true;
                Some((Err(std::io::Error::other(why.trim_end().to_owned())), self))
            }
        }
    }
}

async fn explain_route(
    State(requests): State<mpsc::Sender<AgentRequest>>,
    Path((dst, proto)): Path<(String, String)>,
) -> JsonAnswer {
    let bad = |what: String| (StatusCode::BAD_REQUEST, format!("{what}\n"));
    let dst: SocketAddr = dst
        .parse()
        .map_err(|_| bad(format!("{dst:?} is not an address:port")))?;
    let proto = match proto.as_str() {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        _ => return Err(bad(format!("protocol {proto:?}: TCP or UDP"))),
    };
    ask(&requests, |reply| AgentRequest::Explain {
        dst,
        proto,
        reply,
    })
    .await
}

/// Sends the request `make` builds to the agent's loop and answers with its reply as JSON.
async fn ask<T: Serialize>(
    requests: &mpsc::Sender<AgentRequest>,
    make: impl FnOnce(oneshot::Sender<T>) -> AgentRequest,
) -> JsonAnswer {
    let value = ask_agent(requests, make).await?;
    let json = serde_json::to_string(&value)
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")))?;
    Ok(([("content-type", "application/json")], json))
}

/// The agent loop's reply to the request `make` builds.
async fn ask_agent<T>(
    requests: &mpsc::Sender<AgentRequest>,
    make: impl FnOnce(oneshot::Sender<T>) -> AgentRequest,
) -> Result<T, (StatusCode, String)> {
    let (reply, answer) = oneshot::channel();
    let unavailable = || {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is not serving yet (or stopping)\n".to_owned(),
        )
    };
    requests
        .send(make(reply))
        .await
        .map_err(|_| unavailable())?;
    answer.await.map_err(|_| unavailable())
}

/// Asks the agent at `addr` (its metrics address) for a drift check: `kproxy verify`.
pub async fn verify_now(addr: SocketAddr) -> Result<VerifyReport> {
    call(addr, http::Method::POST, "/verify").await
}

/// Asks the agent at `addr` which Service each frontend serves: `kproxy services`.
pub async fn frontend_names(addr: SocketAddr) -> Result<Vec<FrontendName>> {
    call(addr, http::Method::GET, "/frontends").await
}

/// Asks the agent at `addr` about the frontends `dst`/`proto` meets: `kproxy explain`.
pub async fn explain(
    addr: SocketAddr,
    dst: SocketAddr,
    proto: Protocol,
) -> Result<Vec<FrontendExplanation>> {
    call(addr, http::Method::GET, &format!("/explain/{dst}/{proto}")).await
}

async fn call<T: serde::de::DeserializeOwned>(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
) -> Result<T> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<axum::body::Bytes>>();
    let uri: http::Uri = format!("http://{addr}{path}").parse()?;
    let request = http::Request::builder()
        .method(method)
        .uri(uri)
        .body(Empty::new())?;
    let response = client
        .request(request)
        .await
        .with_context(|| format!("asking the agent at {addr} (its --metrics-bind-address)"))?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!(
            "the agent at {addr} answered {status}: {}",
            String::from_utf8_lossy(&body).trim_end()
        );
    }
    serde_json::from_slice(&body).context("reading the agent's report")
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt;

    use super::*;

    /// What the explain route hands the agent for `path`, or the status it refuses it with.
    async fn explain_request(path: &str) -> Result<(SocketAddr, Protocol), StatusCode> {
        let (requests, mut agent) = mpsc::channel(1);
        let answering = tokio::spawn(async move {
            let Some(AgentRequest::Explain { dst, proto, reply }) = agent.recv().await else {
                return None;
            };
            let _ = reply.send(Vec::new());
            Some((dst, proto))
        });
        let request = http::Request::builder()
            .uri(path)
            .body(axum::body::Body::empty())
            .expect("request");
        let response = routes(requests).oneshot(request).await.expect("answer");
        let asked = answering.await.expect("the agent's task");
        match asked {
            Some(asked) if response.status().is_success() => Ok(asked),
            _ => Err(response.status()),
        }
    }

    /// `GET /frontends` against an agent holding `count` frontends that answers pages of
    /// two, and stops answering after `pages_answered` pages: the body, or why it broke.
    async fn frontends_body(count: u8, pages_answered: usize) -> Result<Vec<FrontendName>, String> {
        let key = |n: u8| FrontendKey::new([198, 19, 0, n].into(), 80, Protocol::Tcp);
        let name = move |n: u8| FrontendName {
            frontend: key(n).to_string(),
            scope: "all".into(),
            service: format!("default/web-{n}"),
            port: String::new(),
            kind: "ClusterIP".into(),
            internal_traffic_policy: None,
            external_traffic_policy: None,
        };
        let (requests, mut agent) = mpsc::channel(1);
        tokio::spawn(async move {
            for _ in 0..pages_answered {
                let Some(AgentRequest::Frontends { after, reply }) = agent.recv().await else {
                    return;
                };
                let from = after.map_or(0, |k: FrontendKey| match k.addr {
                    std::net::IpAddr::V4(a) => a.octets()[3] + 1,
                    std::net::IpAddr::V6(_) => unreachable!("IPv4 keys only"),
                });
                let page: Vec<u8> = (from..count).take(2).collect();
                let json: Vec<String> = page
                    .iter()
                    .map(|n| serde_json::to_string(&name(*n)).expect("JSON"))
                    .collect();
                let next = page
                    .last()
                    .filter(|last| **last + 1 < count)
                    .map(|n| key(*n));
                let _ = reply.send(FrontendPage {
                    json: json.join(","),
                    next,
                });
            }
        });
        let request = http::Request::builder()
            .uri("/frontends")
            .body(axum::body::Body::empty())
            .expect("request");
        let response = routes(requests).oneshot(request).await.expect("answer");
        if !response.status().is_success() {
            return Err(response.status().to_string());
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body cut: {e}"))?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| format!("not a list: {e}"))
    }

    #[tokio::test]
    async fn frontends_are_one_list_written_a_page_at_a_time() {
        let names = |list: &[FrontendName]| -> Vec<String> {
            list.iter().map(|n| n.service.clone()).collect()
        };
        let all = frontends_body(5, 3).await.expect("three pages of two");
        assert_eq!(
            names(&all),
            [
                "default/web-0",
                "default/web-1",
                "default/web-2",
                "default/web-3",
                "default/web-4"
            ]
        );
        let none = frontends_body(0, 1).await.expect("an empty list");
        assert!(none.is_empty());
        // An agent that stops after the first page: the list is cut, never passed as whole.
        let cut = frontends_body(5, 1).await;
        assert!(
            cut.as_ref().is_err_and(|e| e.starts_with("body cut")),
            "{cut:?}"
        );
        // One that does not answer at all: refused with its status, before any body.
        assert_eq!(
            frontends_body(5, 0).await,
            Err(StatusCode::SERVICE_UNAVAILABLE.to_string())
        );
    }

    #[tokio::test]
    async fn explain_takes_a_destination_of_either_family() {
        let cases = [
            (
                format!("/explain/{}/TCP", SocketAddr::from(([198, 19, 0, 10], 80))),
                Ok(("198.19.0.10:80", Protocol::Tcp)),
            ),
            (
                format!("/explain/{}/UDP", "[2001:db8::10]:53"),
                Ok(("[2001:db8::10]:53", Protocol::Udp)),
            ),
            (
                "/explain/2001:db8::10:53/UDP".to_owned(),
                Err(StatusCode::BAD_REQUEST),
            ),
            (
                "/explain/[2001:db8::10]:53/SCTP".to_owned(),
                Err(StatusCode::BAD_REQUEST),
            ),
        ];
        for (path, want) in cases {
            let want = want.map(|(dst, proto)| (dst.parse().expect("test address"), proto));
            assert_eq!(explain_request(&path).await, want, "{path}");
        }
    }
}
