//! The who-am-I answer, `backend=<ip:port> peer=<ip:port>`: which server answered and which
//! source address it saw, so tests can tell backends apart and check source address handling.

use std::fmt;
use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::str::FromStr;

/// A socket address of one family: what a who-am-I exchange over that family reports.
pub trait FamilyAddr:
    Copy + Into<SocketAddr> + FromStr + fmt::Display + fmt::Debug + Send + 'static
{
    /// The unspecified address with port 0, for a client socket to bind.
    const ANY: &'static str;
    /// `(level, option)` of the socket option that delivers ICMP errors on a socket.
    const RECVERR: (libc::c_int, libc::c_int);

    /// The address of this family in `addr`, or an error naming it.
    fn of(addr: SocketAddr) -> io::Result<Self>;
}

impl FamilyAddr for SocketAddrV4 {
    const ANY: &'static str = "0.0.0.0:0";
    const RECVERR: (libc::c_int, libc::c_int) = (libc::IPPROTO_IP, libc::IP_RECVERR);

    fn of(addr: SocketAddr) -> io::Result<Self> {
        match addr {
            SocketAddr::V4(addr) => Ok(addr),
            SocketAddr::V6(addr) => Err(wrong_family(addr)),
        }
    }
}

impl FamilyAddr for SocketAddrV6 {
    const ANY: &'static str = "[::]:0";
    const RECVERR: (libc::c_int, libc::c_int) = (libc::IPPROTO_IPV6, libc::IPV6_RECVERR);

    fn of(addr: SocketAddr) -> io::Result<Self> {
        match addr {
            SocketAddr::V6(addr) => Ok(addr),
            SocketAddr::V4(addr) => Err(wrong_family(addr)),
        }
    }
}

fn wrong_family(addr: impl fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("an address of the other family: {addr}"),
    )
}

/// What a who-am-I server says about a request, in the addresses of its family (IPv4 unless
/// said otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Reply<A = SocketAddrV4> {
    /// The server's own address of the connection (or datagram): which backend served it.
    pub backend: A,
    /// The client address the server saw: the client's own address when the source address was
    /// preserved, a node address when it was masqueraded.
    pub peer: A,
}

impl<A: FamilyAddr> Reply<A> {
    /// Parses one answer line; the trailing newline is optional.
    pub fn parse(line: &str) -> io::Result<Reply<A>> {
        let bad = || {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not a who-am-I reply: {line:?}"),
            )
        };
        let mut backend = None;
        let mut peer = None;
        for field in line.split_whitespace() {
            let (key, value) = field.split_once('=').ok_or_else(bad)?;
            let addr: A = value.parse().map_err(|_| bad())?;
            let slot = match key {
                "backend" => &mut backend,
                "peer" => &mut peer,
                _ => return Err(bad()),
            };
            if slot.replace(addr).is_some() {
                return Err(bad());
            }
        }
        Ok(Reply {
            backend: backend.ok_or_else(bad)?,
            peer: peer.ok_or_else(bad)?,
        })
    }
}

impl Reply {
    /// The answer line a server sends, newline included.
    pub(crate) fn line(backend: SocketAddr, peer: SocketAddr) -> String {
        format!("backend={backend} peer={peer}\n")
    }
}

/// The answer to a sequence-numbered UDP request (`seq=<n>`): `seq=<n> backend=.. peer=..`, so
/// a client sending a stream of datagrams on one flow knows which of them were answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeqReply {
    pub seq: u64,
    pub reply: Reply,
}

impl SeqReply {
    /// The request datagram carrying `seq`.
    pub fn request(seq: u64) -> String {
        format!("seq={seq}\n")
    }

    /// The sequence number a datagram starts with, if it is a sequence-numbered request.
    pub(crate) fn request_seq(datagram: &[u8]) -> Option<u64> {
        let text = std::str::from_utf8(datagram).ok()?;
        let first = text.split_whitespace().next()?;
        first.strip_prefix("seq=")?.parse().ok()
    }

    /// Parses one answer; the trailing newline is optional.
    pub fn parse(line: &str) -> io::Result<SeqReply> {
        let bad = || {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not a sequence-numbered reply: {line:?}"),
            )
        };
        let (first, rest) = line.split_once(' ').ok_or_else(bad)?;
        let seq = first
            .strip_prefix("seq=")
            .and_then(|n| n.parse().ok())
            .ok_or_else(bad)?;
        Ok(SeqReply {
            seq,
            reply: Reply::parse(rest)?,
        })
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "backend={} peer={}", self.backend, self.peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_servers_send() {
        let line = Reply::line(
            "198.18.2.2:8080".parse().unwrap(),
            "198.18.1.2:40000".parse().unwrap(),
        );
        let reply = Reply::parse(&line).unwrap();
        assert_eq!(reply.backend, "198.18.2.2:8080".parse().unwrap());
        assert_eq!(reply.peer, "198.18.1.2:40000".parse().unwrap());
        assert_eq!(Reply::parse(&reply.to_string()).unwrap(), reply);
    }

    #[test]
    fn sequence_numbers_come_back_in_front_of_the_reply() {
        let request = SeqReply::request(42);
        assert_eq!(SeqReply::request_seq(request.as_bytes()), Some(42));
        assert_eq!(SeqReply::request_seq(b"hello\n"), None);
        assert_eq!(SeqReply::request_seq(b"seq=x\n"), None);
        let line = format!(
            "seq=42 {}",
            Reply::line(
                "198.18.2.2:5353".parse().unwrap(),
                "198.18.1.2:40000".parse().unwrap(),
            )
        );
        let answer = SeqReply::parse(&line).unwrap();
        assert_eq!(answer.seq, 42);
        assert_eq!(answer.reply.backend, "198.18.2.2:5353".parse().unwrap());
        assert!(SeqReply::parse("backend=198.18.2.2:1 peer=198.18.1.2:1\n").is_err());
    }

    #[test]
    fn parses_ipv6_replies_in_their_own_family_only() {
        let line = Reply::line(
            "[2001:db8:2::2]:8080".parse().unwrap(),
            "[2001:db8:1::2]:40000".parse().unwrap(),
        );
        let reply = Reply::<SocketAddrV6>::parse(&line).unwrap();
        assert_eq!(reply.backend, "[2001:db8:2::2]:8080".parse().unwrap());
        assert_eq!(reply.peer, "[2001:db8:1::2]:40000".parse().unwrap());
        assert!(Reply::<SocketAddrV4>::parse(&line).is_err());
    }

    #[test]
    fn rejects_other_text() {
        for line in [
            "",
            "hello\n",
            "backend=198.18.2.2:8080\n",
            "backend=198.18.2.2 peer=198.18.1.2:1\n",
            "backend=198.18.2.2:1 peer=198.18.1.2:1 extra=1.2.3.4:5\n",
            "backend=198.18.2.2:1 backend=198.18.1.2:1\n",
        ] {
            let err = Reply::<SocketAddrV4>::parse(line).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{line:?}");
        }
    }
}
