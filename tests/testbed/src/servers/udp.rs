//! The UDP who-am-I server: answers every datagram, to its sender, with one reply line; a
//! datagram that starts with a sequence number (`seq=<n>`) gets it back in front of the line,
//! so a stream of requests can tell which of them were answered.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, ensure};

use super::{POLL, Reply, SeqReply, ServerHandle, Shared};
use crate::netns::Netns;

/// Starts a UDP who-am-I server bound to `addr` inside `ns`.
///
/// Each datagram is answered with `backend=<addr> peer=<sender ip:port>\n`, preceded by
/// `seq=<n> ` when the datagram starts with that (see [`SeqReply`]). The address must be
/// a specific one: a socket bound to 0.0.0.0 cannot tell which local address a datagram was
/// sent to, and the reply must come from the address the client expects.
pub fn udp_server(ns: &Netns, addr: impl Into<SocketAddr>) -> Result<ServerHandle> {
    let addr: SocketAddr = addr.into();
    ensure!(
        !addr.ip().is_unspecified(),
        "bind UDP who-am-I servers to a specific address, not {addr}"
    );
    let socket = ns
        .run(move || UdpSocket::bind(addr))?
        .with_context(|| format!("binding UDP {addr} in netns {}", ns.name()))?;
    socket.set_read_timeout(Some(POLL))?;
    let local = socket.local_addr()?;
    let shared = Arc::new(Shared::default());
    let thread = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name(format!("udp-srv-{local}"))
            .spawn(move || serve(&socket, &shared))?
    };
    Ok(ServerHandle {
        addr: local,
        shared,
        thread: Some(thread),
    })
}

fn serve(socket: &UdpSocket, shared: &Shared) {
    let Ok(local) = socket.local_addr() else {
        return;
    };
    let mut buf = [0u8; 2048];
    while !shared.stopping() {
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                shared.accepted.fetch_add(1, Ordering::Relaxed);
                shared.requests.fetch_add(1, Ordering::Relaxed);
                let mut reply = Reply::line(local, from);
                if let Some(seq) = SeqReply::request_seq(&buf[..n]) {
                    reply.insert_str(0, &format!("seq={seq} "));
                }
                // A lost reply is the client's timeout to report, not the server's.
                let _ = socket.send_to(reply.as_bytes(), from);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            // Anything else (an interrupted call, a queued error) is passing: keep serving.
            Err(_) => {}
        }
    }
}
