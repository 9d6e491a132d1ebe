//! The HTTP face of the server: routes GET requests to list, watch or get, reads their query
//! parameters, and answers in the API server's JSON (errors as `Status` objects).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::holds::ListHolds;
use super::resource::Route;
use super::selectors::Selectors;
use super::status;
use super::store::{self, SharedStore, WatchGuard, WatchStart};
use super::watch::{self, WatchFilter};

/// Everything the handlers share with the control API.
#[derive(Debug)]
pub struct App {
    pub store: SharedStore,
    pub holds: ListHolds,
    /// "GET /path?query" of every request, in arrival order.
    pub requests: Mutex<Vec<String>>,
}

pub fn router(app: Arc<App>) -> Router {
    Router::new().fallback(handle).with_state(app)
}

async fn handle(State(app): State<Arc<App>>, request: Request) -> Response {
    let uri = request.uri();
    let line = match uri.query() {
        Some(query) => format!("{} {}?{query}", request.method(), uri.path()),
        None => format!("{} {}", request.method(), uri.path()),
    };
    app.requests
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(line);

    let Some(route) = Route::parse(uri.path()) else {
        let message = format!(
            "the server could not find the requested resource ({})",
            uri.path()
        );
        return failure(StatusCode::NOT_FOUND, "NotFound", &message);
    };
    if request.method() != Method::GET {
        let message = format!(
            "{} is not supported by this fake API server",
            request.method()
        );
        return failure(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", &message);
    }
    let query = match Query::parse(uri.query().unwrap_or("")) {
        Ok(query) => query,
        Err(e) => return failure(StatusCode::BAD_REQUEST, "BadRequest", &format!("{e:#}")),
    };
    if let Some(name) = &route.name {
        return get(&app, &route, name);
    }
    let filter = WatchFilter {
        resource: route.resource,
        namespace: route.namespace,
        selectors: query.selectors.clone(),
    };
    if query.watch {
        watch(&app, filter, &query)
    } else {
        app.holds.released(filter.resource).await;
        list(&app, &filter)
    }
}

fn list(app: &App, filter: &WatchFilter) -> Response {
    let (resource_version, objects) = store::lock(&app.store).list(filter);
    // Like the real server, list items carry no kind/apiVersion of their own.
    let items: Vec<Value> = objects
        .iter()
        .map(|object| {
            let mut item = (**object).clone();
            if let Some(fields) = item.as_object_mut() {
                fields.remove("kind");
                fields.remove("apiVersion");
            }
            item
        })
        .collect();
    let resource = filter.resource;
    let body = json!({
        "kind": resource.list_kind(),
        "apiVersion": resource.api_version(),
        "metadata": { "resourceVersion": resource_version.to_string() },
        "items": items,
    });
    json_response(StatusCode::OK, &body)
}

fn get(app: &App, route: &Route, name: &str) -> Response {
    let found = store::lock(&app.store).get(route.resource, route.namespace.as_deref(), name);
    match found {
        Some(object) => json_response(StatusCode::OK, &object),
        None => {
            let plural = route.resource.plural();
            let mut body =
                status::failure(404, "NotFound", &format!("{plural} \"{name}\" not found"));
            body["details"] = json!({ "name": name, "kind": plural });
            json_response(StatusCode::NOT_FOUND, &body)
        }
    }
}

fn watch(app: &App, filter: WatchFilter, query: &Query) -> Response {
    let start = match query.resource_version.as_deref() {
        None | Some("" | "0") => WatchStart::Now {
            initial_events_end: query.send_initial_events,
        },
        Some(text) => match text.parse() {
            Ok(resource_version) => WatchStart::After(resource_version),
            Err(_) => {
                let message = format!("invalid resource version {text:?}");
                return failure(StatusCode::BAD_REQUEST, "BadRequest", &message);
            }
        },
    };
    let mut store = store::lock(&app.store);
    if let WatchStart::After(from) = start
        && let Some(gone) = store.refused_watch_start(from)
    {
        return json_response(StatusCode::GONE, &gone);
    }
    let (id, rx) = store.start_watch(filter, start, query.bookmarks);
    drop(store);
    let guard = id.map(|id| WatchGuard {
        store: Arc::clone(&app.store),
        id,
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(watch::body(rx, query.timeout, guard))
        .expect("a valid response")
}

/// The query parameters this server understands; others (limit, continue,
/// resourceVersionMatch, ...) are ignored: lists always return everything, current.
#[derive(Debug, Default)]
struct Query {
    watch: bool,
    resource_version: Option<String>,
    selectors: Selectors,
    timeout: Option<Duration>,
    bookmarks: bool,
    send_initial_events: bool,
}

impl Query {
    fn parse(raw: &str) -> anyhow::Result<Query> {
        let mut query = Query::default();
        let (mut labels, mut fields) = (String::new(), String::new());
        let flag = |value: &str| matches!(value, "true" | "1");
        for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
            match &*key {
                "watch" => query.watch = flag(&value),
                "resourceVersion" => query.resource_version = Some(value.into_owned()),
                "labelSelector" => labels = value.into_owned(),
                "fieldSelector" => fields = value.into_owned(),
                "allowWatchBookmarks" => query.bookmarks = flag(&value),
                "sendInitialEvents" => query.send_initial_events = flag(&value),
                "timeoutSeconds" => {
                    let seconds: u64 = value
                        .parse()
                        .map_err(|_| anyhow::anyhow!("invalid timeoutSeconds {value:?}"))?;
                    query.timeout = Some(Duration::from_secs(seconds));
                }
                _ => {}
            }
        }
        query.selectors = Selectors::parse(&labels, &fields)?;
        Ok(query)
    }
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    let body = serde_json::to_vec(body).expect("JSON values serialise");
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(body),
    )
        .into_response()
}

fn failure(code: StatusCode, reason: &str, message: &str) -> Response {
    json_response(code, &status::failure(code.as_u16(), reason, message))
}
