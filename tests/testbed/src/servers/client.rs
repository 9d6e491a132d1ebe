//! Clients of the who-am-I servers. Their sockets are created inside a namespace (the client's,
//! usually) and can then be used from the calling thread. Errors are plain `io::Error`s whose
//! kind tells what happened: `ConnectionRefused`, `NetworkUnreachable`, `TimedOut`, ...

use std::io::{self, Read, Write};
use std::net::{SocketAddrV4, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use super::{FamilyAddr, Reply, netns_error};
use crate::netns::Netns;

/// What clients send; the servers answer any line.
const REQUEST: &[u8] = b"hello\n";

/// Connects from `ns` to `target`, sends one line, reads the reply and closes.
///
/// `timeout` bounds the connect and each of the send and the receive.
pub fn tcp_request<A: FamilyAddr>(
    ns: &Netns,
    target: A,
    timeout: Duration,
) -> io::Result<Reply<A>> {
    TcpSession::connect(ns, target, timeout)?.request()
}

/// Sends one datagram from `ns` to `target` and reads the reply.
///
/// The socket is connected, so the kernel delivers only replies whose source is `target`
/// itself (proving that the reply came back from the VIP, not from the backend's address),
/// and an ICMP error about the flow fails the receive at once: `ConnectionRefused` for a port
/// unreachable, `NetworkUnreachable` / `HostUnreachable` for those.
pub fn udp_request<A: FamilyAddr>(
    ns: &Netns,
    target: A,
    timeout: Duration,
) -> io::Result<Reply<A>> {
    UdpSession::connect(ns, target, timeout)?.request()
}

/// A TCP connection to a who-am-I server that can carry many requests, e.g. to check that an
/// established connection keeps its backend while Services change.
#[derive(Debug)]
pub struct TcpSession<A = SocketAddrV4> {
    stream: TcpStream,
    pending: Vec<u8>,
    family: std::marker::PhantomData<A>,
}

impl<A: FamilyAddr> TcpSession<A> {
    /// Connects from `ns` to `target`; `timeout` also bounds each later send and receive.
    pub fn connect(ns: &Netns, target: A, timeout: Duration) -> io::Result<TcpSession<A>> {
        let stream = ns
            .run(move || TcpStream::connect_timeout(&target.into(), timeout))
            .map_err(netns_error)??;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(TcpSession {
            stream,
            pending: Vec::new(),
            family: std::marker::PhantomData,
        })
    }

    /// Sends one line and reads the reply line.
    pub fn request(&mut self) -> io::Result<Reply<A>> {
        self.stream.write_all(REQUEST).map_err(timeout_kind)?;
        let line = self.read_line()?;
        Reply::parse(&line)
    }

    /// Sends one line of `len` bytes (big enough to need full-size segments) and reads the
    /// reply line.
    pub fn request_large(&mut self, len: usize) -> io::Result<Reply<A>> {
        let mut line = vec![b'x'; len.max(1)];
        *line.last_mut().expect("at least one byte") = b'\n';
        self.stream.write_all(&line).map_err(timeout_kind)?;
        let line = self.read_line()?;
        Reply::parse(&line)
    }

    /// The client's side of the connection.
    pub fn local_addr(&self) -> io::Result<A> {
        A::of(self.stream.local_addr()?)
    }

    /// The address connected to (the VIP, for a Service).
    pub fn peer_addr(&self) -> io::Result<A> {
        A::of(self.stream.peer_addr()?)
    }

    fn read_line(&mut self) -> io::Result<String> {
        let mut buf = [0u8; 1024];
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection before replying",
                    ));
                }
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(timeout_kind(e)),
            }
        }
    }
}

/// A connected UDP socket to a who-am-I server, keeping its source port across requests.
#[derive(Debug)]
pub struct UdpSession<A = SocketAddrV4> {
    socket: UdpSocket,
    family: std::marker::PhantomData<A>,
}

impl<A: FamilyAddr> UdpSession<A> {
    /// Creates a socket in `ns` connected to `target`; `timeout` bounds each receive.
    pub fn connect(ns: &Netns, target: A, timeout: Duration) -> io::Result<UdpSession<A>> {
        let socket = ns
            .run(move || -> io::Result<UdpSocket> {
                let socket = UdpSocket::bind(A::ANY)?;
                // Without IP_RECVERR a connected UDP socket reports only "hard" ICMP errors
                // (port unreachable); with it, a "network unreachable" from the node also fails
                // the receive at once instead of running into the timeout.
                set_recverr::<A>(&socket)?;
                socket.connect(target.into())?;
                Ok(socket)
            })
            .map_err(netns_error)??;
        socket.set_read_timeout(Some(timeout))?;
        Ok(UdpSession {
            socket,
            family: std::marker::PhantomData,
        })
    }

    /// Sends one datagram and reads the reply.
    pub fn request(&self) -> io::Result<Reply<A>> {
        self.socket.send(REQUEST)?;
        let mut buf = [0u8; 1024];
        let n = self.socket.recv(&mut buf).map_err(timeout_kind)?;
        Reply::parse(&String::from_utf8_lossy(&buf[..n]))
    }

    /// The client's side of the flow.
    pub fn local_addr(&self) -> io::Result<A> {
        A::of(self.socket.local_addr()?)
    }
}

/// Has ICMP errors about the socket's flow (a socket of `A`'s family) delivered as errors on
/// it.
pub(crate) fn set_recverr<A: FamilyAddr>(socket: &impl AsRawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    let (level, option) = A::RECVERR;
    // SAFETY: a valid int option value for a socket we own.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            option,
            (&raw const on).cast(),
            libc::socklen_t::try_from(std::mem::size_of_val(&on)).expect("an int fits socklen_t"),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An expired socket timeout shows up as `WouldBlock`; tests read `TimedOut` more naturally.
fn timeout_kind(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        io::Error::new(io::ErrorKind::TimedOut, "no reply before the timeout")
    } else {
        e
    }
}
