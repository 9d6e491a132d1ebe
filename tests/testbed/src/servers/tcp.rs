//! The TCP who-am-I server: answers every line of a connection with one reply line, until the
//! client closes, so it serves both one-shot requests and long-lived sessions.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{POLL, Reply, ServerHandle, Shared};
use crate::netns::Netns;

/// A connection must send its first line within this time, or it is closed.
const FIRST_LINE: Duration = Duration::from_secs(5);
/// A client sending this much without a newline is not speaking the protocol.
const MAX_LINE: usize = 64 * 1024;
/// Deep enough for connection-rate tests, whose bursts a default backlog would drop.
const BACKLOG: libc::c_int = 4096;

/// Starts a TCP who-am-I server listening on `addr` inside `ns`.
///
/// Each connection gets its own thread, so a slow or idle client never delays others. Each
/// line received is answered with `backend=<local ip:port> peer=<peer ip:port>\n`.
pub fn tcp_server(ns: &Netns, addr: impl Into<SocketAddr>) -> Result<ServerHandle> {
    let addr: SocketAddr = addr.into();
    let listener = ns
        .run(move || TcpListener::bind(addr))?
        .with_context(|| format!("binding TCP {addr} in netns {}", ns.name()))?;
    // SAFETY: listen on our own listening socket only raises its backlog.
    if unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) } != 0 {
        return Err(io::Error::last_os_error()).context("raising the listen backlog");
    }
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let shared = Arc::new(Shared::default());
    let thread = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name(format!("tcp-srv-{local}"))
            .spawn(move || accept_loop(&listener, &shared))?
    };
    Ok(ServerHandle {
        addr: local,
        shared,
        thread: Some(thread),
    })
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    while !shared.stopping() {
        // Finished workers are forgotten so a long test does not pile up handles.
        workers.retain(|worker| !worker.is_finished());
        if !readable(listener.as_raw_fd(), POLL) {
            continue;
        }
        match listener.accept() {
            Ok((stream, _)) => {
                shared.accepted.fetch_add(1, Ordering::Relaxed);
                let worker_shared = shared.clone();
                match std::thread::Builder::new()
                    .name("tcp-srv-conn".into())
                    .spawn(move || serve(stream, &worker_shared))
                {
                    Ok(worker) => workers.push(worker),
                    // Out of threads under load: the connection is closed, the client sees it.
                    Err(e) => eprintln!("who-am-I server: no thread for a connection: {e}"),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // E.g. out of descriptors: back off briefly instead of spinning.
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    for worker in workers {
        let _ = worker.join();
    }
}

/// Answers each line of one connection until EOF, an error, the first-line deadline or stop.
fn serve(mut stream: TcpStream, shared: &Shared) {
    let (Ok(local), Ok(peer)) = (stream.local_addr(), stream.peer_addr()) else {
        return;
    };
    let reply = Reply::line(local, peer);
    // Short read timeouts let the thread notice the stop flag; the write timeout bounds a
    // client that stopped reading.
    if stream.set_nonblocking(false).is_err()
        || stream.set_read_timeout(Some(POLL)).is_err()
        || stream.set_write_timeout(Some(FIRST_LINE)).is_err()
    {
        return;
    }
    let _ = stream.set_nodelay(true);
    let deadline = Instant::now() + FIRST_LINE;
    let mut answered = false;
    let mut pending = Vec::new();
    let mut buf = [0u8; 2048];
    while !shared.stopping() {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                pending.extend_from_slice(&buf[..n]);
                while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    pending.drain(..=end);
                    shared.requests.fetch_add(1, Ordering::Relaxed);
                    if stream.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                    answered = true;
                }
                if pending.len() > MAX_LINE {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                // Idle sessions may stay open; only a connection that never asked is closed.
                if !answered && Instant::now() > deadline {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Waits up to `timeout` for `fd` to become readable.
fn readable(fd: libc::c_int, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: pfd is one valid pollfd for the duration of the call.
    unsafe { libc::poll(&raw mut pfd, 1, ms) > 0 }
}
