//! Who-am-I servers for backend namespaces and the clients that talk to them: every answer
//! says which backend served the request and which source address it saw.

mod client;
mod reply;
mod tcp;
mod udp;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use std::net::SocketAddr;

pub(crate) use client::set_recverr;
pub use client::{TcpSession, UdpSession, tcp_request, udp_request};
pub use reply::{FamilyAddr, Reply, SeqReply};
pub use tcp::tcp_server;
pub use udp::udp_server;

/// How long server threads block before they look at the stop flag again.
const POLL: Duration = Duration::from_millis(100);

/// Counters and the stop flag shared between a handle and its server threads.
#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    accepted: AtomicUsize,
    requests: AtomicUsize,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// A running server; dropping it stops its threads and closes its sockets (within ~100 ms).
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// The address the server listens on (with the real port when it was bound to port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted (TCP) or datagrams received (UDP) so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Requests answered so far: lines for TCP, datagrams for UDP.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Stops the server and waits until its sockets are closed.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Turns an error of `Netns::run` (the thread could not enter the namespace) into an io::Error,
/// so client helpers keep one error type whose kind tests can match.
fn netns_error(e: anyhow::Error) -> std::io::Error {
    std::io::Error::other(e)
}
