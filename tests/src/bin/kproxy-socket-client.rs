//! A client of the who-am-I servers as a process of its own, for the socket-level load
//! balancing tests: its sockets must belong to the cgroup kproxy's socket programs are
//! attached to, and a cgroup holds processes, not threads. The test starts it in a network
//! namespace and a cgroup.
//!
//! `kproxy-socket-client MODE TARGET [COUNT]` prints one line per request: the server's
//! answer, a tab, and `seen=ADDR`, the address the application sees for its peer
//! (getpeername of the socket, or the source of the datagram received).
//!
//! Modes: `tcp` (a connection per request), `udp` (a connected socket per request),
//! `udp-sendto` (one unconnected socket for all requests), `udp-hold` (one connected socket;
//! a request per line read on stdin; a failed one prints `error=KIND` and connects a
//! new socket).

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    process::ExitCode,
    time::Duration,
};

const TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST: &[u8] = b"hello\n";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(mode), Some(target)) = (args.first(), args.get(1)) else {
        eprintln!("usage: kproxy-socket-client tcp|udp|udp-sendto|udp-hold TARGET [COUNT]");
        return ExitCode::from(2);
    };
    let Ok(target) = target.parse::<SocketAddr>() else {
        eprintln!("not an address:port: {target}");
        return ExitCode::from(2);
    };
    let count: usize = args.get(2).and_then(|c| c.parse().ok()).unwrap_or(1);
    let result = match mode.as_str() {
        "tcp" => (0..count).try_for_each(|_| tcp(target)),
        "udp" => (0..count).try_for_each(|_| udp_connected(&connected_udp(target)?)),
        "udp-sendto" => udp_sendto(target, count),
        "udp-hold" => udp_hold(target),
        other => {
            eprintln!("unknown mode {other}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error={:?} {e}", e.kind());
            ExitCode::FAILURE
        }
    }
}

fn print(answer: &str, seen: SocketAddr) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{}\tseen={seen}", answer.trim_end())?;
    out.flush()
}

fn tcp(target: SocketAddr) -> io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&target, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.write_all(REQUEST)?;
    let mut line = String::new();
    BufReader::new(stream.try_clone()?).read_line(&mut line)?;
    print(&line, stream.peer_addr()?)
}

fn unbound_udp(target: SocketAddr) -> io::Result<UdpSocket> {
    let any: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().expect("an address")
    } else {
        "[::]:0".parse().expect("an address")
    };
    let socket = UdpSocket::bind(any)?;
    socket.set_read_timeout(Some(TIMEOUT))?;
    Ok(socket)
}

fn connected_udp(target: SocketAddr) -> io::Result<UdpSocket> {
    let socket = unbound_udp(target)?;
    socket.connect(target)?;
    Ok(socket)
}

fn udp_connected(socket: &UdpSocket) -> io::Result<()> {
    socket.send(REQUEST)?;
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf)?;
    print(&String::from_utf8_lossy(&buf[..n]), socket.peer_addr()?)
}

fn udp_sendto(target: SocketAddr, count: usize) -> io::Result<()> {
    let socket = unbound_udp(target)?;
    for _ in 0..count {
        socket.send_to(REQUEST, target)?;
        let mut buf = [0u8; 512];
        let (n, from) = socket.recv_from(&mut buf)?;
        print(&String::from_utf8_lossy(&buf[..n]), from)?;
    }
    Ok(())
}

/// One request per line of stdin, until it closes, on one connected socket; after a failed
/// request the socket is connected anew, as a resolver does.
fn udp_hold(target: SocketAddr) -> io::Result<()> {
    let mut socket = connected_udp(target)?;
    let mut stdin = io::stdin().lock();
    let mut byte = [0u8; 1];
    while stdin.read(&mut byte)? == 1 {
        if byte[0] != b'\n' {
            continue;
        }
        if let Err(e) = udp_connected(&socket) {
            let mut out = io::stdout().lock();
            writeln!(out, "error={:?} {e}", e.kind())?;
            out.flush()?;
            socket = connected_udp(target)?;
        }
    }
    Ok(())
}
