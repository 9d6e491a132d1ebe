//! Checks of the fake Kubernetes API server: its wire format over raw HTTP/1.1, and kube-rs's
//! own watcher and reflector running against it (initial lists, events, selectors, bookmarks,
//! expired histories, dropped watches, held lists), all inside a test network namespace.

use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kproxy_testbed::apiserver::selectors::LabelRequirement;
use kproxy_testbed::apiserver::{
    FIRST_RESOURCE_VERSION, FieldSelector, HISTORY_LIMIT, LabelSelector,
};
use kproxy_testbed::{FakeApiServer, Netns, Topology, require_privileges};
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_objects};
use kube::{Api, Client, Config, ResourceExt};
use serde_json::{Value, json};

/// Longest wait for anything the client or server should do promptly.
const PATIENCE: Duration = Duration::from_secs(5);
/// How kproxy filters Services, as kube-proxy does.
const PROXY_NAME_LABEL: &str = "!service.kubernetes.io/service-proxy-name";
const NOT_HEADLESS: &str = "spec.clusterIP!=None";

// ---------------------------------------------------------------------------------------------
// The bed: a namespace, the server in it, a kubeconfig, and a kube client in the namespace.

struct Bed {
    server: Arc<FakeApiServer>,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
    ns: Netns,
}

fn bed(test: &str) -> Option<Bed> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    if !require_privileges(&format!("apiserver::{test}")) {
        return None;
    }
    Topology::sweep_leftovers();
    let name = format!(
        "kpt-{}-api{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let ns = Netns::create(&name).unwrap();
    let server = Arc::new(FakeApiServer::start_in(&ns).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = server.write_kubeconfig(dir.path()).unwrap();
    Some(Bed {
        server,
        kubeconfig,
        _dir: dir,
        ns,
    })
}

impl Bed {
    /// Runs `test` on a tokio runtime inside the namespace, with a kube client built from the
    /// kubeconfig, so every socket of the client is made in the namespace.
    fn run<F, Fut>(&self, test: F)
    where
        F: FnOnce(Client, Arc<FakeApiServer>) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let server = Arc::clone(&self.server);
        let kubeconfig = self.kubeconfig.clone();
        self.ns
            .run(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let kubeconfig = Kubeconfig::read_from(&kubeconfig).unwrap();
                    let config =
                        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                            .await
                            .unwrap();
                    assert_eq!(config.default_namespace, "default");
                    let client = Client::try_from(config).unwrap();
                    tokio::time::timeout(4 * PATIENCE, test(client, server))
                        .await
                        .expect("the test finished in time");
                });
            })
            .unwrap();
    }

    fn raw(&self, target: &str) -> Raw {
        Raw::request(&self.ns, self.server.addr(), "GET", target)
    }
}

// ---------------------------------------------------------------------------------------------
// Objects.

fn service(name: &str, cluster_ip: &str, labels: &Value) -> Value {
    json!({
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": { "name": name, "namespace": "default", "labels": labels },
        "spec": { "clusterIP": cluster_ip, "ports": [{ "port": 80, "protocol": "TCP" }] },
    })
}

fn slice(namespace: &str, name: &str, service: &str, address: &str) -> Value {
    json!({
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": { "kubernetes.io/service-name": service },
        },
        "addressType": "IPv4",
        "endpoints": [{ "addresses": [address], "conditions": { "ready": true } }],
        "ports": [{ "port": 8080, "protocol": "TCP" }],
    })
}

fn node(name: &str, address: &str) -> Value {
    json!({
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": { "name": name },
        "status": { "addresses": [{ "type": "InternalIP", "address": address }] },
    })
}

// ---------------------------------------------------------------------------------------------
// Helpers for the kube side.

type EventStream<K> = Pin<Box<dyn Stream<Item = watcher::Result<Event<K>>> + Send>>;

fn watch_services(client: &Client, config: watcher::Config) -> EventStream<Service> {
    watch_objects(Api::<Service>::all(client.clone()), config).boxed()
}

/// An event as a short string ("InitApply a@1001", "Delete b", "Error ...").
fn describe<K: ResourceExt>(event: &watcher::Result<Event<K>>) -> String {
    let at = |o: &K| {
        format!(
            "{}@{}",
            o.name_any(),
            o.resource_version().unwrap_or_default()
        )
    };
    match event {
        Ok(Event::Init) => "Init".into(),
        Ok(Event::InitApply(o)) => format!("InitApply {}", at(o)),
        Ok(Event::InitDone) => "InitDone".into(),
        Ok(Event::Apply(o)) => format!("Apply {}", at(o)),
        Ok(Event::Delete(o)) => format!("Delete {}", at(o)),
        Err(e) => format!("Error {e}"),
    }
}

/// The next `n` events, described.
async fn next_events<K: ResourceExt>(stream: &mut EventStream<K>, n: usize) -> Vec<String> {
    let mut seen = Vec::new();
    while seen.len() < n {
        match tokio::time::timeout(PATIENCE, stream.next()).await {
            Ok(Some(event)) => seen.push(describe(&event)),
            Ok(None) => panic!("watch stream ended after {seen:?}"),
            Err(elapsed) => panic!("no event after {seen:?}: {elapsed}"),
        }
    }
    seen
}

/// Asserts that no event comes within `quiet`.
async fn no_event<K: ResourceExt>(stream: &mut EventStream<K>, quiet: Duration) {
    if let Ok(event) = tokio::time::timeout(quiet, stream.next()).await {
        panic!("unexpected event {:?}", event.as_ref().map(describe));
    }
}

/// Runs a reflector in the background; returns its store and the log of its events.
fn reflect<K>(api: Api<K>, config: watcher::Config) -> (Store<K>, Arc<Mutex<Vec<String>>>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + k8s_openapi::serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let log = Arc::new(Mutex::new(Vec::new()));
    let events = Arc::clone(&log);
    let stream = watch_objects(api, config).reflect(writer);
    tokio::spawn(stream.for_each(move |event| {
        events.lock().unwrap().push(describe(&event));
        std::future::ready(())
    }));
    (reader, log)
}

/// Waits (without blocking the runtime) until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls a watcher past InitDone (the watch request is only sent when it is polled) until
/// its service watch is open, checking that no event comes meanwhile.
async fn watch_opens<K: ResourceExt>(events: &mut EventStream<K>, server: &FakeApiServer) {
    let deadline = Instant::now() + PATIENCE;
    while server.open_watches("services") == 0 {
        assert!(
            Instant::now() < deadline,
            "the watcher never opened its watch"
        );
        no_event(events, Duration::from_millis(10)).await;
    }
    no_event(events, Duration::from_millis(20)).await;
}

async fn until_watches(server: &FakeApiServer, resource: &str, n: usize) {
    until(&format!("{n} watches are open on {resource}"), || {
        server.open_watches(resource) >= n
    })
    .await;
}

/// Names and resourceVersions in a reflector store, sorted.
fn contents<K: kube::Resource<DynamicType = ()> + Clone>(store: &Store<K>) -> Vec<String> {
    let mut names: Vec<String> = store
        .state()
        .iter()
        .map(|o| {
            format!(
                "{}@{}",
                o.name_any(),
                o.resource_version().unwrap_or_default()
            )
        })
        .collect();
    names.sort();
    names
}

/// LIST (non-watch) and watch requests on a collection path.
fn lists(server: &FakeApiServer, path: &str) -> Vec<String> {
    requests_on(server, path, false)
}

fn watches(server: &FakeApiServer, path: &str) -> Vec<String> {
    requests_on(server, path, true)
}

fn requests_on(server: &FakeApiServer, path: &str, watch: bool) -> Vec<String> {
    let prefix = format!("GET {path}?");
    server
        .requests()
        .into_iter()
        .filter(|r| r.starts_with(&prefix) && r.contains("watch=true") == watch)
        .collect()
}

fn query_param(request: &str, key: &str) -> Option<String> {
    let query = request.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| v.to_owned())
    })
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 client, to check the wire format itself.

struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
    pending: Vec<u8>,
}

/// One step of a chunked watch body.
#[derive(Debug, PartialEq)]
enum Step {
    Event(String, Value),
    /// The terminating chunk: the server ended the response cleanly.
    End,
    /// The connection closed in the middle of the body.
    Cut,
}

impl Raw {
    fn request(ns: &Netns, addr: SocketAddr, method: &str, target: &str) -> Raw {
        let mut stream = ns.run(move || TcpStream::connect(addr)).unwrap().unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        write!(
            stream,
            "{method} {target} HTTP/1.1\r\nHost: fake\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut headers = Vec::new();
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("a header");
            headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
        }
        Raw {
            status,
            headers,
            reader,
            pending: Vec::new(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A whole body with a Content-Length, as JSON.
    fn json(mut self) -> Value {
        let length: usize = self
            .header("content-length")
            .expect("a content-length")
            .parse()
            .unwrap();
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    /// The next event line of a chunked watch body.
    fn step(&mut self) -> Step {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                let mut event: Value = serde_json::from_slice(&line).unwrap();
                let kind = event["type"].as_str().expect("a type").to_owned();
                return Step::Event(kind, event["object"].take());
            }
            let mut size = String::new();
            match self.reader.read_line(&mut size) {
                Ok(0) => return Step::Cut,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Step::Cut,
                Err(e) => panic!("reading a chunk: {e}"),
            }
            let size = usize::from_str_radix(size.trim_end(), 16).expect("a chunk size");
            let mut chunk = vec![0; size + 2];
            if self.reader.read_exact(&mut chunk).is_err() {
                return Step::Cut;
            }
            if size == 0 {
                assert!(self.pending.is_empty(), "half a line before the end");
                return Step::End;
            }
            self.pending.extend_from_slice(&chunk[..size]);
        }
    }

    /// The next `n` events as (type, name, resourceVersion).
    fn events(&mut self, n: usize) -> Vec<(String, String, String)> {
        (0..n)
            .map(|_| match self.step() {
                Step::Event(kind, object) => (
                    kind,
                    object["metadata"]["name"].as_str().unwrap_or("").to_owned(),
                    object["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                ),
                other => panic!("expected an event, got {other:?}"),
            })
            .collect()
    }
}

fn event(kind: &str, name: &str, resource_version: u64) -> (String, String, String) {
    (kind.into(), name.into(), resource_version.to_string())
}

// ---------------------------------------------------------------------------------------------
// Selectors, without a server.

#[test]
fn label_selectors_parse_and_match() {
    let selector =
        LabelSelector::parse("app=web, tier==front,!service.kubernetes.io/headless,env!=prod,zone")
            .unwrap();
    assert_eq!(
        selector.0,
        [
            LabelRequirement::Equals("app".into(), "web".into()),
            LabelRequirement::Equals("tier".into(), "front".into()),
            LabelRequirement::NotExists("service.kubernetes.io/headless".into()),
            LabelRequirement::NotEquals("env".into(), "prod".into()),
            LabelRequirement::Exists("zone".into()),
        ]
    );
    let labelled = |labels: Value| json!({ "metadata": { "labels": labels } });
    let base = json!({ "app": "web", "tier": "front", "zone": "a" });
    assert!(selector.matches(&labelled(base.clone())));
    let mut prod = base.clone();
    prod["env"] = "prod".into();
    assert!(!selector.matches(&labelled(prod)));
    // `!=` matches an object that has another value, like the real server.
    let mut dev = base.clone();
    dev["env"] = "dev".into();
    assert!(selector.matches(&labelled(dev)));
    let mut headless = base.clone();
    headless["service.kubernetes.io/headless"] = "".into();
    assert!(!selector.matches(&labelled(headless)));
    let mut no_zone = base;
    no_zone.as_object_mut().unwrap().remove("zone");
    assert!(!selector.matches(&labelled(no_zone)));
    // No labels at all: only negative requirements can hold.
    assert!(
        LabelSelector::parse(PROXY_NAME_LABEL)
            .unwrap()
            .matches(&json!({}))
    );
    assert!(!LabelSelector::parse("app").unwrap().matches(&json!({})));

    assert_eq!(LabelSelector::parse("").unwrap().0, []);
    assert!(LabelSelector::parse("").unwrap().matches(&json!({})));
    assert!(LabelSelector::parse("app in (web)").is_err());
    assert!(LabelSelector::parse("=web").is_err());
    assert!(LabelSelector::parse("app=we b").is_err());
}

#[test]
fn field_selectors_parse_and_match() {
    let selector =
        FieldSelector::parse("metadata.namespace==default,spec.clusterIP!=None").unwrap();
    assert_eq!(selector.0.len(), 2);
    assert_eq!(selector.0[1].path, "spec.clusterIP");
    assert!(selector.0[1].negated);
    let svc =
        |ip: Value| json!({ "metadata": { "namespace": "default" }, "spec": { "clusterIP": ip } });
    assert!(selector.matches(&svc("198.19.0.1".into())));
    assert!(!selector.matches(&svc("None".into())));
    // A missing field compares as "".
    assert!(selector.matches(&json!({ "metadata": { "namespace": "default" } })));
    assert!(
        FieldSelector::parse("spec.clusterIP=")
            .unwrap()
            .matches(&json!({}))
    );
    assert!(
        !FieldSelector::parse("metadata.name=a")
            .unwrap()
            .matches(&json!({}))
    );
    // Scalars that are not strings compare as their JSON text.
    let unschedulable = FieldSelector::parse("spec.unschedulable=true").unwrap();
    assert!(unschedulable.matches(&json!({ "spec": { "unschedulable": true } })));
    assert!(FieldSelector::parse("metadata.name").is_err());
    assert!(FieldSelector::parse("metadata..name=a").is_err());
}

// ---------------------------------------------------------------------------------------------
// The wire format, over raw HTTP.

#[test]
fn lists_are_sorted_filtered_and_stamped() {
    let Some(bed) = bed("lists_are_sorted_filtered_and_stamped") else {
        return;
    };
    let server = &bed.server;
    assert_eq!(server.current_resource_version(), FIRST_RESOURCE_VERSION);
    assert_eq!(server.apply(service("b", "198.19.0.2", &json!({}))), 1001);
    assert_eq!(
        server.apply(service("a", "None", &json!({ "app": "web" }))),
        1002
    );
    let mut other = service("c", "198.19.0.3", &json!({ "app": "web" }));
    other["metadata"]["namespace"] = "kube-system".into();
    assert_eq!(server.apply(other), 1003);
    assert_eq!(server.apply(node("n1", "198.18.0.1")), 1004);

    let list = bed.raw("/api/v1/services");
    assert_eq!(list.status, 200);
    assert_eq!(list.header("content-type"), Some("application/json"));
    let list = list.json();
    assert_eq!(list["kind"], "ServiceList");
    assert_eq!(list["apiVersion"], "v1");
    assert_eq!(list["metadata"], json!({ "resourceVersion": "1004" }));
    let items = list["items"].as_array().unwrap();
    let names: Vec<&str> = items
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    // namespace/name order: default/a, default/b, kube-system/c.
    assert_eq!(names, ["a", "b", "c"]);
    let a = &items[0];
    assert_eq!(a["metadata"]["resourceVersion"], "1002");
    assert_eq!(a["metadata"]["namespace"], "default");
    assert!(a.get("kind").is_none() && a.get("apiVersion").is_none());
    let uid = a["metadata"]["uid"].as_str().unwrap().to_owned();
    assert_eq!(uid.len(), 36);

    // An update keeps the uid and gets a new resourceVersion.
    assert_eq!(
        server.apply(service("a", "None", &json!({ "app": "db" }))),
        1005
    );
    let a = bed.raw("/api/v1/namespaces/default/services/a").json();
    assert_eq!(a["kind"], "Service");
    assert_eq!(a["metadata"]["uid"], uid.as_str());
    assert_eq!(a["metadata"]["resourceVersion"], "1005");

    let names = |target: &str| -> Vec<String> {
        bed.raw(target).json()["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names("/api/v1/namespaces/kube-system/services"), ["c"]);
    assert_eq!(names("/api/v1/services?labelSelector=app%3Dweb"), ["c"]);
    assert_eq!(names("/api/v1/services?labelSelector=%21app"), ["b"]);
    assert_eq!(
        names("/api/v1/services?fieldSelector=spec.clusterIP%21%3DNone&limit=1"),
        ["b", "c"]
    );
    assert_eq!(
        names("/api/v1/services?fieldSelector=metadata.namespace%3Ddefault,metadata.name%3Da"),
        ["a"]
    );
    assert_eq!(names("/api/v1/nodes"), ["n1"]);
    assert_eq!(
        names("/apis/discovery.k8s.io/v1/endpointslices"),
        Vec::<String>::new()
    );

    assert!(server.delete("Service", Some("default"), "b"));
    assert!(!server.delete("Service", Some("default"), "b"));
    assert_eq!(server.current_resource_version(), 1006);
    assert_eq!(names("/api/v1/services"), ["a", "c"]);

    let requests = server.requests();
    assert_eq!(requests[0], "GET /api/v1/services");
    assert!(requests.contains(&"GET /api/v1/services?labelSelector=%21app".to_owned()));
}

#[test]
fn errors_are_status_objects() {
    let Some(bed) = bed("errors_are_status_objects") else {
        return;
    };
    let pods = bed.raw("/api/v1/pods");
    assert_eq!(pods.status, 404);
    assert_eq!(pods.header("content-type"), Some("application/json"));
    assert_eq!(
        pods.json(),
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "the server could not find the requested resource (/api/v1/pods)",
            "reason": "NotFound", "code": 404,
        })
    );
    // Nodes are not namespaced; a namespaced Service is only named inside its namespace.
    assert_eq!(bed.raw("/api/v1/namespaces/default/nodes").status, 404);
    assert_eq!(bed.raw("/api/v1/services/a").status, 404);
    assert_eq!(bed.raw("/apis/discovery.k8s.io/v1/services").status, 404);

    let missing = bed.raw("/api/v1/nodes/n9");
    assert_eq!(missing.status, 404);
    let missing = missing.json();
    assert_eq!(missing["message"], "nodes \"n9\" not found");
    assert_eq!(missing["details"], json!({ "name": "n9", "kind": "nodes" }));

    let bad = bed.raw("/api/v1/services?labelSelector=app+in+%28web%29");
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["reason"], "BadRequest");
    let bad = bed.raw("/api/v1/services?watch=true&resourceVersion=abc");
    assert_eq!(bad.status, 400);

    let post = Raw::request(&bed.ns, bed.server.addr(), "POST", "/api/v1/services");
    assert_eq!(post.status, 405);
    assert_eq!(post.json()["reason"], "MethodNotAllowed");
}

#[test]
fn watches_replay_history_then_stream_live_changes() {
    let Some(bed) = bed("watches_replay_history_then_stream_live_changes") else {
        return;
    };
    let server = &bed.server;
    server.apply(service("a", "198.19.0.1", &json!({}))); // 1001
    server.apply(node("n1", "198.18.0.1")); // 1002
    server.apply(service("b", "198.19.0.2", &json!({}))); // 1003
    server.apply(service("a", "198.19.0.9", &json!({}))); // 1004

    let mut watch = bed.raw("/api/v1/services?watch=true&resourceVersion=1001&timeoutSeconds=1");
    assert_eq!(watch.status, 200);
    assert_eq!(watch.header("content-type"), Some("application/json"));
    assert_eq!(watch.header("transfer-encoding"), Some("chunked"));
    assert_eq!(
        watch.events(2),
        [event("ADDED", "b", 1003), event("MODIFIED", "a", 1004)]
    );
    server.wait_for_watches("services", 1, PATIENCE).unwrap();
    assert_eq!(server.open_watches("nodes"), 0);
    assert!(server.delete("Service", None, "b")); // 1005
    match watch.step() {
        Step::Event(kind, object) => {
            assert_eq!(kind, "DELETED");
            // Watch objects carry their kind, and a deletion gets a fresh resourceVersion.
            assert_eq!(object["kind"], "Service");
            assert_eq!(object["apiVersion"], "v1");
            assert_eq!(object["metadata"]["resourceVersion"], "1005");
            assert_eq!(object["spec"]["clusterIP"], "198.19.0.2");
        }
        other => panic!("expected DELETED, got {other:?}"),
    }
    // timeoutSeconds ends the response cleanly, and the watch is then closed.
    let started = Instant::now();
    assert_eq!(watch.step(), Step::End);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(server.open_watches("services"), 0);

    // resourceVersion 0 starts from now: the current objects as synthetic ADDED events.
    let mut watch = bed.raw("/api/v1/services?watch=1&resourceVersion=0");
    assert_eq!(watch.events(1), [event("ADDED", "a", 1004)]);
    server.apply(service("c", "198.19.0.3", &json!({}))); // 1006
    assert_eq!(watch.events(1), [event("ADDED", "c", 1006)]);

    // A namespaced watch sees only its namespace; EndpointSlices carry their group.
    let mut slices =
        bed.raw("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?watch=true");
    server
        .wait_for_watches("endpointslices", 1, PATIENCE)
        .unwrap();
    server.apply(slice("other", "s1", "a", "198.18.2.2")); // 1007
    server.apply(slice("default", "s2", "a", "198.18.3.2")); // 1008
    match slices.step() {
        Step::Event(kind, object) => {
            assert_eq!(kind, "ADDED");
            assert_eq!(object["kind"], "EndpointSlice");
            assert_eq!(object["apiVersion"], "discovery.k8s.io/v1");
            assert_eq!(object["metadata"]["name"], "s2");
        }
        other => panic!("expected ADDED, got {other:?}"),
    }

    // Dropped watches are cut mid-body, without a final event.
    server.drop_watches();
    assert_eq!(watch.step(), Step::Cut);
    assert_eq!(slices.step(), Step::Cut);
    assert_eq!(server.open_watches("services"), 0);
}

#[test]
fn watches_translate_selector_transitions() {
    let Some(bed) = bed("watches_translate_selector_transitions") else {
        return;
    };
    let server = &bed.server;
    server.apply(service("a", "198.19.0.1", &json!({}))); // 1001
    let mut watch = bed.raw(
        "/api/v1/services?watch=true&resourceVersion=1001&labelSelector=app%3Dweb\
         &fieldSelector=spec.clusterIP%21%3DNone",
    );
    server.wait_for_watches("services", 1, PATIENCE).unwrap();
    server.apply(service("a", "198.19.0.1", &json!({ "app": "web" }))); // 1002: starts matching
    server.apply(service("a", "198.19.0.2", &json!({ "app": "web" }))); // 1003: still matches
    server.apply(service("a", "None", &json!({ "app": "web" }))); // 1004: stops matching
    server.apply(service("a", "None", &json!({ "app": "db" }))); // 1005: unseen
    server.delete("Service", None, "a"); // 1006: unseen, it did not match
    server.apply(service("b", "198.19.0.3", &json!({ "app": "web" }))); // 1007
    server.delete("Service", None, "b"); // 1008
    assert_eq!(
        watch.events(5),
        [
            event("ADDED", "a", 1002),
            event("MODIFIED", "a", 1003),
            // The object that left the selection, in its new state.
            event("DELETED", "a", 1004),
            event("ADDED", "b", 1007),
            event("DELETED", "b", 1008),
        ]
    );
}

#[test]
fn expired_histories_answer_410() {
    let Some(bed) = bed("expired_histories_answer_410") else {
        return;
    };
    let server = &bed.server;
    server.apply(service("a", "198.19.0.1", &json!({}))); // 1001
    let mut open =
        bed.raw("/api/v1/services?watch=true&resourceVersion=1001&allowWatchBookmarks=true");
    server.wait_for_watches("services", 1, PATIENCE).unwrap();
    server.bookmark();
    match open.step() {
        Step::Event(kind, object) => {
            assert_eq!(kind, "BOOKMARK");
            assert_eq!(
                object,
                json!({ "kind": "Service", "apiVersion": "v1", "metadata": { "resourceVersion": "1001" } })
            );
        }
        other => panic!("expected a BOOKMARK, got {other:?}"),
    }
    server.apply(service("b", "198.19.0.2", &json!({}))); // 1002
    server.expire();
    assert_eq!(open.events(1), [event("ADDED", "b", 1002)]);
    let expired = |requested: u64, compacted: u64| {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("too old resource version: {requested} ({compacted})"),
            "reason": "Expired", "code": 410,
        })
    };
    // An open watch gets the error, then its response ends.
    assert_eq!(
        open.step(),
        Step::Event("ERROR".into(), expired(1002, 1002))
    );
    assert_eq!(open.step(), Step::End);
    assert_eq!(server.open_watches("services"), 0);

    // A new watch from before the expiry: 200, one ERROR event, the end.
    let mut late = bed.raw("/api/v1/services?watch=true&resourceVersion=1001");
    assert_eq!(late.status, 200);
    assert_eq!(
        late.step(),
        Step::Event("ERROR".into(), expired(1001, 1002))
    );
    assert_eq!(late.step(), Step::End);
    // From the expiry on, history is kept again.
    server.apply(service("c", "198.19.0.3", &json!({}))); // 1003
    let mut fresh = bed.raw("/api/v1/services?watch=true&resourceVersion=1002");
    assert_eq!(fresh.events(1), [event("ADDED", "c", 1003)]);

    // The history is bounded: past HISTORY_LIMIT changes, the oldest are forgotten.
    let burst: Vec<Value> = (0..HISTORY_LIMIT + 5)
        .map(|i| node(&format!("n{}", i % 7), "198.18.0.1"))
        .collect();
    let last = server.apply_all(burst);
    assert_eq!(last, 1003 + HISTORY_LIMIT as u64 + 5);
    let mut old = bed.raw("/api/v1/nodes?watch=true&resourceVersion=1003");
    assert_eq!(old.step(), Step::Event("ERROR".into(), expired(1003, 1008)));
    let mut kept = bed.raw(&format!(
        "/api/v1/nodes?watch=true&resourceVersion={}",
        last - 2
    ));
    assert_eq!(
        kept.events(2),
        [
            event(
                "MODIFIED",
                &format!("n{}", (HISTORY_LIMIT + 3) % 7),
                last - 1
            ),
            event("MODIFIED", &format!("n{}", (HISTORY_LIMIT + 4) % 7), last),
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// kube-rs against the server.

#[test]
fn kube_watcher_lists_then_follows_changes() {
    let Some(bed) = bed("kube_watcher_lists_then_follows_changes") else {
        return;
    };
    bed.server.apply(service("b", "198.19.0.2", &json!({}))); // 1001
    bed.server.apply(service("a", "198.19.0.1", &json!({}))); // 1002
    bed.run(|client, server| async move {
        let mut events = watch_services(&client, watcher::Config::default());
        assert_eq!(
            next_events(&mut events, 4).await,
            ["Init", "InitApply a@1002", "InitApply b@1001", "InitDone"]
        );
        // The watch starts from the list's resourceVersion: nothing is replayed twice.
        watch_opens(&mut events, &server).await;
        server.apply(service("c", "198.19.0.3", &json!({}))); // 1003
        server.apply(service("a", "198.19.0.9", &json!({}))); // 1004
        server.delete("Service", Some("default"), "b"); // 1005
        assert_eq!(
            next_events(&mut events, 3).await,
            ["Apply c@1003", "Apply a@1004", "Delete b@1005"]
        );

        let list = lists(&server, "/api/v1/services");
        assert_eq!(list.len(), 1, "{list:?}");
        let watch = watches(&server, "/api/v1/services");
        assert_eq!(watch.len(), 1, "{watch:?}");
        assert_eq!(
            query_param(&watch[0], "resourceVersion").as_deref(),
            Some("1002")
        );
        assert_eq!(
            query_param(&watch[0], "allowWatchBookmarks").as_deref(),
            Some("true")
        );
    });
}

#[test]
fn kube_reflectors_for_slices_and_nodes() {
    let Some(bed) = bed("kube_reflectors_for_slices_and_nodes") else {
        return;
    };
    bed.server
        .apply(slice("default", "web-1", "web", "198.18.2.2")); // 1001
    bed.server
        .apply(slice("other", "web-1", "web", "198.18.3.2")); // 1002
    bed.server.apply(node("n1", "198.18.0.1")); // 1003
    bed.run(|client, server| async move {
        let (slices, _) = reflect(
            Api::<EndpointSlice>::namespaced(client.clone(), "default"),
            watcher::Config::default(),
        );
        let (nodes, _) = reflect(Api::<Node>::all(client), watcher::Config::default());
        tokio::time::timeout(PATIENCE, slices.wait_until_ready())
            .await
            .unwrap()
            .unwrap();
        tokio::time::timeout(PATIENCE, nodes.wait_until_ready())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(contents(&slices), ["web-1@1001"]);
        let web = &slices.state()[0];
        assert_eq!(web.namespace().as_deref(), Some("default"));
        assert_eq!(web.address_type, "IPv4");
        assert_eq!(web.endpoints[0].addresses, ["198.18.2.2"]);
        assert_eq!(
            web.endpoints[0].conditions.as_ref().unwrap().ready,
            Some(true)
        );
        assert_eq!(contents(&nodes), ["n1@1003"]);
        let addresses = nodes.state()[0].status.clone().unwrap().addresses.unwrap();
        assert_eq!(addresses[0].address, "198.18.0.1");

        until_watches(&server, "endpointslices", 1).await;
        until_watches(&server, "nodes", 1).await;
        server.apply(slice("default", "web-2", "web", "198.18.4.2")); // 1004
        server.apply(slice("other", "web-2", "web", "198.18.5.2")); // 1005
        server.apply(node("n2", "198.18.0.2")); // 1006
        server.delete("Node", None, "n1"); // 1007
        until("the reflectors follow", || {
            contents(&slices) == ["web-1@1001", "web-2@1004"] && contents(&nodes) == ["n2@1006"]
        })
        .await;
        assert_eq!(
            watches(
                &server,
                "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
            )
            .len(),
            1
        );
    });
}

#[test]
fn kube_selectors_filter_services() {
    let Some(bed) = bed("kube_selectors_filter_services") else {
        return;
    };
    let proxied_elsewhere = json!({ "service.kubernetes.io/service-proxy-name": "other" });
    bed.server.apply(service("plain", "198.19.0.1", &json!({}))); // 1001
    bed.server.apply(service("headless", "None", &json!({}))); // 1002
    bed.server
        .apply(service("foreign", "198.19.0.3", &proxied_elsewhere)); // 1003
    bed.run(move |client, server| async move {
        let config = watcher::Config::default()
            .labels(PROXY_NAME_LABEL)
            .fields(NOT_HEADLESS);
        let mut events = watch_services(&client, config);
        assert_eq!(
            next_events(&mut events, 3).await,
            ["Init", "InitApply plain@1001", "InitDone"]
        );
        watch_opens(&mut events, &server).await;
        // Headless gets a cluster IP: it enters the selection (ADDED → Apply).
        server.apply(service("headless", "198.19.0.2", &json!({}))); // 1004
        // Plain is handed to another proxy: it leaves the selection (DELETED → Delete).
        server.apply(service("plain", "198.19.0.1", &proxied_elsewhere)); // 1005
        // Foreign changes but stays out of the selection: nothing.
        server.apply(service("foreign", "198.19.0.9", &proxied_elsewhere)); // 1006
        server.apply(service("late", "198.19.0.4", &json!({}))); // 1007
        assert_eq!(
            next_events(&mut events, 3).await,
            [
                "Apply headless@1004",
                "Delete plain@1005",
                "Apply late@1007"
            ]
        );

        for request in server.requests() {
            assert_eq!(
                query_param(&request, "labelSelector").as_deref(),
                Some("%21service.kubernetes.io%2Fservice-proxy-name"),
                "{request}"
            );
            assert_eq!(
                query_param(&request, "fieldSelector").as_deref(),
                Some("spec.clusterIP%21%3DNone"),
                "{request}"
            );
        }
    });
}

#[test]
fn kube_watcher_uses_bookmarks_to_resume() {
    let Some(bed) = bed("kube_watcher_uses_bookmarks_to_resume") else {
        return;
    };
    bed.server.apply(service("a", "198.19.0.1", &json!({}))); // 1001
    bed.run(|client, server| async move {
        let mut events = watch_services(&client, watcher::Config::default());
        assert_eq!(next_events(&mut events, 3).await.len(), 3);
        watch_opens(&mut events, &server).await;
        // Changes elsewhere move the RV on; a bookmark tells the watcher about it.
        server.apply(node("n1", "198.18.0.1")); // 1002
        server.apply(node("n2", "198.18.0.2")); // 1003
        server.bookmark();
        no_event(&mut events, Duration::from_millis(100)).await;
        // The bookmark is invisible but becomes the point the watcher resumes from.
        server.drop_watches();
        server.apply(service("b", "198.19.0.2", &json!({}))); // 1004
        let seen = next_events(&mut events, 2).await;
        // The cut body is reported as an error, then the watcher re-watches.
        assert!(seen[0].starts_with("Error watch stream failed"), "{seen:?}");
        assert_eq!(seen[1], "Apply b@1004");
        let watch = watches(&server, "/api/v1/services");
        assert_eq!(watch.len(), 2, "{watch:?}");
        assert_eq!(
            query_param(&watch[1], "resourceVersion").as_deref(),
            Some("1003")
        );
        assert_eq!(lists(&server, "/api/v1/services").len(), 1);
    });
}

#[test]
fn kube_streaming_list_ends_with_a_bookmark() {
    let Some(bed) = bed("kube_streaming_list_ends_with_a_bookmark") else {
        return;
    };
    bed.server.apply(service("a", "198.19.0.1", &json!({}))); // 1001
    bed.run(|client, server| async move {
        let mut events = watch_services(&client, watcher::Config::default().streaming_lists());
        // No Init event in this mode: the initial objects come as a watch.
        assert_eq!(
            next_events(&mut events, 2).await,
            ["InitApply a@1001", "InitDone"]
        );
        server.apply(service("b", "198.19.0.2", &json!({}))); // 1002
        assert_eq!(next_events(&mut events, 1).await, ["Apply b@1002"]);
        assert_eq!(lists(&server, "/api/v1/services").len(), 0);
        let watch = watches(&server, "/api/v1/services");
        assert_eq!(
            query_param(&watch[0], "sendInitialEvents").as_deref(),
            Some("true")
        );
    });
}

#[test]
fn kube_reflector_relists_after_expiry() {
    let Some(bed) = bed("kube_reflector_relists_after_expiry") else {
        return;
    };
    bed.server.apply(service("a", "198.19.0.1", &json!({}))); // 1001
    bed.server.apply(service("b", "198.19.0.2", &json!({}))); // 1002
    bed.run(|client, server| async move {
        let (store, log) = reflect(Api::<Service>::all(client), watcher::Config::default());
        tokio::time::timeout(PATIENCE, store.wait_until_ready())
            .await
            .unwrap()
            .unwrap();
        until_watches(&server, "services", 1).await;
        server.hold_lists("services");
        server.expire();
        until("the watcher relists", || {
            lists(&server, "/api/v1/services").len() == 2
        })
        .await;
        // Changes no watch sees: only the relist can bring them.
        server.apply(service("c", "198.19.0.3", &json!({}))); // 1003
        server.delete("Service", None, "a"); // 1004
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Until the relist is answered the store keeps the old objects.
        assert_eq!(contents(&store), ["a@1001", "b@1002"]);
        server.release_lists("services");
        until("the store converges", || {
            contents(&store) == ["b@1002", "c@1003"]
        })
        .await;
        let log = log.lock().unwrap().clone();
        let error = log
            .iter()
            .find(|e| e.starts_with("Error"))
            .expect("an error event");
        assert!(error.contains("too old resource version"), "{error}");
        assert_eq!(
            log.iter().filter(|e| *e == "InitDone").count(),
            2,
            "{log:?}"
        );
        // The relisted state is watched from the new list's resourceVersion.
        until_watches(&server, "services", 1).await;
        let watch = watches(&server, "/api/v1/services");
        assert_eq!(
            query_param(watch.last().unwrap(), "resourceVersion").as_deref(),
            Some("1004")
        );
    });
}

#[test]
fn kube_reflector_rewatches_after_dropped_watches() {
    let Some(bed) = bed("kube_reflector_rewatches_after_dropped_watches") else {
        return;
    };
    bed.server.apply(service("a", "198.19.0.1", &json!({}))); // 1001
    bed.server.apply(service("b", "198.19.0.2", &json!({}))); // 1002
    bed.run(|client, server| async move {
        let (store, log) = reflect(Api::<Service>::all(client), watcher::Config::default());
        tokio::time::timeout(PATIENCE, store.wait_until_ready())
            .await
            .unwrap()
            .unwrap();
        until_watches(&server, "services", 1).await;
        server.apply(service("a", "198.19.0.8", &json!({}))); // 1003
        until("the first change arrives", || {
            contents(&store)[0] == "a@1003"
        })
        .await;
        // Cut, then change things before the client can re-watch: they must come from the
        // history when it resumes from 1003.
        server.drop_watches();
        server.apply(service("c", "198.19.0.3", &json!({}))); // 1004
        server.delete("Service", None, "b"); // 1005
        server.apply(service("a", "198.19.0.9", &json!({}))); // 1006
        until("the store converges", || {
            contents(&store) == ["a@1006", "c@1004"]
        })
        .await;
        assert_eq!(lists(&server, "/api/v1/services").len(), 1, "no relist");
        let watch = watches(&server, "/api/v1/services");
        assert_eq!(watch.len(), 2, "{watch:?}");
        assert_eq!(
            query_param(&watch[1], "resourceVersion").as_deref(),
            Some("1003")
        );
        let log = log.lock().unwrap().clone();
        let applied: Vec<&String> = log
            .iter()
            .filter(|e| e.starts_with("Apply") || e.starts_with("Delete"))
            .collect();
        assert_eq!(
            applied,
            [
                "Apply a@1003",
                "Apply c@1004",
                "Delete b@1005",
                "Apply a@1006"
            ],
            "{log:?}"
        );
        assert!(
            log.iter()
                .any(|e| e.starts_with("Error watch stream failed")),
            "the cut is seen as a failed watch stream: {log:?}"
        );
    });
}

#[test]
fn kube_watcher_waits_for_held_lists() {
    let Some(bed) = bed("kube_watcher_waits_for_held_lists") else {
        return;
    };
    bed.server.apply(service("a", "198.19.0.1", &json!({}))); // 1001
    bed.server.hold_lists("services");
    bed.run(|client, server| async move {
        let mut events = watch_services(&client, watcher::Config::default());
        assert_eq!(next_events(&mut events, 1).await, ["Init"]);
        // The LIST is sent but not answered: no InitApply, no InitDone.
        no_event(&mut events, Duration::from_millis(300)).await;
        assert_eq!(lists(&server, "/api/v1/services").len(), 1);
        server.apply(service("b", "198.19.0.2", &json!({}))); // 1002
        server.release_lists("services");
        // The answer is the state when it is sent.
        assert_eq!(
            next_events(&mut events, 3).await,
            ["InitApply a@1001", "InitApply b@1002", "InitDone"]
        );
        // Holding one resource does not hold the others.
        server.hold_lists("services");
        let nodes = Api::<Node>::all(client);
        let listed = tokio::time::timeout(PATIENCE, nodes.list(&ListParams::default()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(listed.metadata.resource_version.as_deref(), Some("1002"));
    });
}

#[test]
fn kube_reflector_absorbs_an_update_storm() {
    let Some(bed) = bed("kube_reflector_absorbs_an_update_storm") else {
        return;
    };
    bed.run(|client, server| async move {
        let config = watcher::Config::default().fields(NOT_HEADLESS);
        let (store, _) = reflect(Api::<Service>::all(client), config);
        tokio::time::timeout(PATIENCE, store.wait_until_ready())
            .await
            .unwrap()
            .unwrap();
        until_watches(&server, "services", 1).await;
        let started = Instant::now();
        let round_of_updates = |round: u32| -> Vec<Value> {
            (0..1000)
                .map(|i| {
                    service(
                        &format!("s{i:04}"),
                        "198.19.0.1",
                        &json!({ "round": round.to_string() }),
                    )
                })
                .collect()
        };
        // The reflector runs on this thread, so it reads nothing while the storm is applied:
        // the storm must not wait for readers.
        assert_eq!(server.apply_all(round_of_updates(1)), 2000);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        let last = server.apply_all(round_of_updates(2));
        assert_eq!(last, 3000);
        until("the store holds the last round", || {
            let state = store.state();
            state.len() == 1000
                && state
                    .iter()
                    .all(|s| s.labels().get("round").map(String::as_str) == Some("2"))
        })
        .await;
        assert_eq!(lists(&server, "/api/v1/services").len(), 1);
    });
}
