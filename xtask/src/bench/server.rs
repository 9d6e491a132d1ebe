//! The benchmark's who-am-I server: runs in a backend namespace and answers one request line per
//! connection with `backend=<ip:port> peer=<ip:port>`, fast enough for tens of thousands of new
//! connections per second, so the server is never what limits the measured connection rate.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use kproxy_testbed::Netns;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Deep enough for the bursts of a connection-rate benchmark; the kernel caps it at somaxconn
/// (4096 by default), which is what we want anyway.
const BACKLOG: i32 = 4096;
/// A client must send its request line within this time.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// After the reply the server waits this long for the client to close first (see `serve`).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// A request line longer than this is not the benchmark's client: the connection is dropped.
const MAX_REQUEST: usize = 1024;
/// How long `accept` errors (e.g. out of descriptors) pause the accept loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// A running benchmark server; dropping it stops it and closes every socket.
///
/// Stopping is bounded: the accept loop ends at once and the runtime is shut down with every
/// connection task cancelled, however slow the clients are.
#[derive(Debug)]
pub struct BenchServer {
    accepted: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl BenchServer {
    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        // A send error means the server thread already ended; there is nothing left to stop.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts a benchmark server listening on `addr` inside `ns`.
///
/// The listener is made on a thread that entered `ns`, so it (and every connection it accepts)
/// lives in that namespace; the server itself then runs on its own thread with a single-threaded
/// tokio runtime: one thread per backend keeps the 2-core machine's CPU for the client and the
/// node, and an event loop handles tens of thousands of short connections per second where a
/// thread per connection could not.
pub fn start(ns: &Netns, addr: SocketAddr) -> Result<BenchServer> {
    let listener = ns
        .run(move || bind(addr))?
        .with_context(|| format!("binding bench server {addr} in netns {}", ns.name()))?;
    let local = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("building the bench server runtime")?;
    let accepted = Arc::new(AtomicU64::new(0));
    let (stop, stopped) = oneshot::channel();
    let thread = {
        let accepted = accepted.clone();
        std::thread::Builder::new()
            .name(format!("bench-srv-{local}"))
            .spawn(move || serve_until_stopped(&runtime, listener, &accepted, stopped))
            .context("spawning the bench server thread")?
    };
    Ok(BenchServer {
        accepted,
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// A non-blocking listener on `addr` with SO_REUSEADDR (a restarted bench can rebind while old
/// connections linger) and a deep backlog; to be called inside the target namespace.
fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    // tokio's from_std requires a non-blocking socket.
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Runs the accept loop on `runtime` until `stopped` fires (or its sender is dropped).
fn serve_until_stopped(
    runtime: &tokio::runtime::Runtime,
    listener: std::net::TcpListener,
    accepted: &Arc<AtomicU64>,
    stopped: oneshot::Receiver<()>,
) {
    runtime.block_on(async {
        let listener = match TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("bench server: cannot register the listener: {e}");
                return;
            }
        };
        tokio::select! {
            () = accept_loop(&listener, accepted) => {}
            _ = stopped => {}
        }
    });
    // The thread's closure owns the runtime and drops it when this returns: that cancels every
    // connection task and closes its socket, so stopping never waits for slow clients.
}

async fn accept_loop(listener: &TcpListener, accepted: &AtomicU64) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                accepted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve(stream, peer));
            }
            // Out of descriptors or memory: pause instead of spinning on the same error.
            Err(_) => tokio::time::sleep(ACCEPT_BACKOFF).await,
        }
    }
}

/// Answers one request line, then waits for the client to close before closing.
///
/// Letting the client close first keeps TIME_WAIT on the client, where tcp_tw_reuse recycles
/// ports; a server that closed first would hold TIME_WAIT for every connection on its side.
async fn serve(mut stream: TcpStream, peer: SocketAddr) {
    let Ok(local) = stream.local_addr() else {
        return;
    };
    // Any error or timeout just drops the connection: the client counts it as a failure.
    if !matches!(
        tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut stream)).await,
        Ok(Ok(()))
    ) {
        return;
    }
    let reply = format!("backend={local} peer={peer}\n");
    if stream.write_all(reply.as_bytes()).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, wait_for_close(&mut stream)).await;
}

/// Reads until the end of the first line (a client may send it in pieces).
async fn read_request(stream: &mut TcpStream) -> io::Result<()> {
    let mut buf = [0u8; MAX_REQUEST];
    let mut len = 0;
    loop {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if buf[len..len + n].contains(&b'\n') {
            return Ok(());
        }
        len += n;
        if len == buf.len() {
            return Err(io::ErrorKind::InvalidData.into());
        }
    }
}

/// Reads (and ignores) whatever else the client sends until it closes.
async fn wait_for_close(stream: &mut TcpStream) -> io::Result<()> {
    let mut buf = [0u8; 256];
    while stream.read(&mut buf).await? > 0 {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kproxy_testbed::{TcpSession, Topology, TopologyOptions, require_privileges, tcp_request};
    use std::time::Instant;

    #[test]
    fn answers_who_am_i_and_stops_with_idle_clients() {
        if !require_privileges("bench::server::answers_who_am_i_and_stops_with_idle_clients") {
            return;
        }
        let topo = Topology::build(TopologyOptions {
            backends: 1,
            ..TopologyOptions::default()
        })
        .unwrap();
        let addr = std::net::SocketAddrV4::new(topo.backend_addr(0), 8080);
        let server = start(&topo.backends[0], addr.into()).unwrap();

        // The reply is the test bed's who-am-I format, so its parser and clients work too.
        let reply = tcp_request(&topo.client, addr, Duration::from_secs(2)).unwrap();
        assert_eq!(reply.backend, addr);
        assert_eq!(*reply.peer.ip(), topo.client_addr());

        // A client that connects and never sends must not delay stopping.
        let _idle = TcpSession::connect(&topo.client, addr, Duration::from_secs(2)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        while server.accepted() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(server.accepted(), 2);
        let stopping = Instant::now();
        drop(server);
        assert!(stopping.elapsed() < Duration::from_secs(1));
        // Stopped means closed: a new connection is refused.
        let err = tcp_request(&topo.client, addr, Duration::from_secs(2)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    }
}
