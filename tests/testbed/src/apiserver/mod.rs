//! A fake Kubernetes API server for tests of list/watch clients: Services, EndpointSlices and
//! Nodes over plain HTTP/1.1 in the real JSON wire format, with a synchronous control API to
//! change objects and to provoke bookmarks, expired histories, dropped watches and slow lists.
//!
//! Everything else is tested against the real control plane ([`crate::kubernetes`]). This
//! stand-in is kept only for what the real API server cannot be made to do on demand: a list
//! that hangs until released, a watch dropped at a chosen moment, and a watch start refused
//! with HTTP 410 (the real server usually answers an expired resourceVersion with a 410
//! ERROR event in a started watch; kube-runtime 2.0.1 relists after that, but retries a
//! refused start with the same resourceVersion forever, where client-go relists).
//!
//! It serves from its own thread and tokio runtime, on a loopback socket made inside a test
//! namespace; it never listens in the machine's root namespace.

mod holds;
mod http;
pub mod resource;
pub mod selectors;
mod status;
mod store;
mod watch;

use std::future::IntoFuture;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::Netns;
pub use resource::Resource;
pub use selectors::{FieldSelector, LabelSelector, Selectors};
pub use store::HISTORY_LIMIT;

/// The resourceVersion of the empty store; the first change gets the next one.
pub const FIRST_RESOURCE_VERSION: u64 = 1000;

/// A running fake API server; dropping it stops its thread and closes every connection.
#[derive(Debug)]
pub struct FakeApiServer {
    app: Arc<http::App>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeApiServer {
    /// Binds 127.0.0.1:0 inside `netns` and serves from a background thread.
    pub fn start_in(netns: &Netns) -> Result<FakeApiServer> {
        // Sockets keep the namespace they were made in, whichever thread uses them later.
        let listener = netns
            .run(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))?
            .context("binding the fake API server")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the fake API server's runtime")?;
        let listener = {
            let _context = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let app = Arc::new(http::App {
            store: Arc::new(Mutex::new(store::Store::new(FIRST_RESOURCE_VERSION))),
            holds: holds::ListHolds::new(),
            requests: Mutex::new(Vec::new()),
        });
        let router = http::router(Arc::clone(&app));
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("fake-apiserver".into())
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::select! {
                        result = axum::serve(listener, router).into_future() => {
                            if let Err(e) = result {
                                eprintln!("fake API server: serving failed: {e}");
                            }
                        }
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime here cancels every connection task, closing its socket.
            })
            .context("spawning the fake API server thread")?;
        Ok(FakeApiServer {
            app,
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes `dir/kubeconfig` pointing at `url()`, without authentication, namespace
    /// "default", and returns its path.
    pub fn write_kubeconfig(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join("kubeconfig");
        let config = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: fake\n  cluster:\n    server: {url}\n\
             users:\n\
             - name: fake\n  user: {{}}\n\
             contexts:\n\
             - name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
             current-context: fake\n",
            url = self.url()
        );
        std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Creates or replaces an object (kind Service, EndpointSlice or Node; namespace
    /// "default" when a namespaced object has none). Stamps a new resourceVersion, a uid if
    /// it has none (an update keeps the first one), and emits ADDED or MODIFIED. Returns the
    /// new resourceVersion. Panics on an object it cannot store.
    pub fn apply(&self, object: Value) -> u64 {
        store::lock(&self.app.store).apply(object)
    }

    /// Applies all objects under one lock (each still gets its own RV and event); returns the
    /// last resourceVersion.
    pub fn apply_all(&self, objects: Vec<Value>) -> u64 {
        let mut store = store::lock(&self.app.store);
        for object in objects {
            store.apply(object);
        }
        store.resource_version()
    }

    /// Deletes an object (kind as in `apply`); emits DELETED with a fresh resourceVersion.
    /// Returns whether it existed.
    pub fn delete(&self, kind: &str, namespace: Option<&str>, name: &str) -> bool {
        let resource = Resource::from_kind(kind)
            .unwrap_or_else(|| panic!("fake API server: unknown kind {kind:?}"));
        store::lock(&self.app.store).delete(resource, namespace, name)
    }

    /// Sends a BOOKMARK with the current resourceVersion on every open watch that allowed
    /// bookmarks.
    pub fn bookmark(&self) {
        store::lock(&self.app.store).bookmark();
    }

    /// Forgets the event history up to now (watches from an older resourceVersion get 410
    /// Expired) and ends every open watch with a 410 ERROR event: clients must relist.
    pub fn expire(&self) {
        store::lock(&self.app.store).expire();
    }

    /// Forgets the event history up to now and cuts every open watch with no final event;
    /// from now on, a watch that tries to resume from a forgotten resourceVersion is refused
    /// with HTTP 410 before it starts (kube-runtime 2.0.1 retries such a start forever).
    pub fn expire_at_watch_start(&self) {
        store::lock(&self.app.store).expire_at_watch_start();
    }

    /// Cuts every open watch connection with no final event; clients re-watch from their
    /// last resourceVersion and get what they missed from the history.
    pub fn drop_watches(&self) {
        store::lock(&self.app.store).drop_watches();
    }

    /// LIST requests for `resource` ("services", "endpointslices", "nodes") wait, unanswered,
    /// until `release_lists`.
    pub fn hold_lists(&self, resource: &str) {
        self.app.holds.set(resource_named(resource), true);
    }

    pub fn release_lists(&self, resource: &str) {
        self.app.holds.set(resource_named(resource), false);
    }

    /// Every request so far as "METHOD /path?query" (the query as the client sent it).
    pub fn requests(&self) -> Vec<String> {
        self.app
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Watch streams open now for `resource` ("services", ...).
    pub fn open_watches(&self, resource: &str) -> usize {
        store::lock(&self.app.store).open_watches(resource_named(resource))
    }

    /// Waits until at least `n` watches are open on `resource`. Blocks the calling thread:
    /// from async code, call it where it does not stall the client being waited for.
    pub fn wait_for_watches(&self, resource: &str, n: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let open = self.open_watches(resource);
            if open >= n {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("{open} watches open on {resource} after {timeout:?}, wanted {n}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn current_resource_version(&self) -> u64 {
        store::lock(&self.app.store).resource_version()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A resource as the control API names it ("services").
fn resource_named(plural: &str) -> Resource {
    Resource::from_plural(plural).unwrap_or_else(|| {
        panic!("fake API server: unknown resource {plural:?} (services, endpointslices, nodes)")
    })
}
