//! The interfaces of the agent's network namespace through rtnetlink: a full dump
//! (`RTM_GETLINK`) and the stream of `RTM_NEWLINK`/`RTM_DELLINK` notifications
//! (`RTMGRP_LINK`).
//!
//! Only what the watcher needs is read from each message: the interface index (the
//! `ifinfomsg` header) and its name (`IFLA_IFNAME`). Decoding every attribute would tie the
//! agent to the attributes this netlink crate knows about on the running kernel, and a link
//! that failed to decode would look deleted.

use std::{collections::BTreeMap, io};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NetlinkBuffer,
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator,
};
use netlink_packet_route::{RouteNetlinkMessage, link::LinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use tokio::io::{Interest, unix::AsyncFd};

use super::select::Link;

/// `linux/rtnetlink.h`.
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
/// The multicast group of link notifications (`RTMGRP_LINK`, a bit mask for `bind`).
const RTMGRP_LINK: u32 = 1;
/// `linux/if_link.h`.
const IFLA_IFNAME: u16 = 3;
/// `linux/socket.h`: links of every family (bridge ports are also reported as `AF_BRIDGE`).
const AF_UNSPEC: u8 = 0;
/// `sizeof(struct ifinfomsg)`.
const IFINFOMSG_LEN: usize = 16;
/// Room for bursts of notifications (a node starting many pods at once) before the kernel
/// drops some (`ENOBUFS`, after which the watcher dumps everything again).
const NOTIFY_RCVBUF: usize = 4 << 20;
/// A dump interrupted by concurrent changes (`NLM_F_DUMP_INTR`) is retried this often.
const DUMP_ATTEMPTS: usize = 5;

/// One change of the namespace's interfaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// An interface exists with this index and name (new, renamed, or any other change).
    Present(Link),
    /// The interface with this index is gone (deleted or moved to another namespace).
    Gone(u32),
}

/// What one netlink datagram said.
#[derive(Debug, Default)]
pub struct Datagram {
    pub events: Vec<LinkEvent>,
    /// The end of a dump (`NLMSG_DONE`).
    pub done: bool,
    /// A dump message flagged `NLM_F_DUMP_INTR`: the dump may be inconsistent.
    pub interrupted: bool,
    /// An error reply, or a dump that ended with an error.
    pub error: Option<io::Error>,
    /// Messages that could not be read (truncated, or a link message without a name).
    pub undecodable: usize,
}

/// Reads the link messages of one datagram. Messages about other address families (a
/// bridge's `AF_BRIDGE` notifications about its ports, whose `RTM_DELLINK` only means that a
/// port left the bridge) and of other types are skipped.
pub fn parse(datagram: &[u8]) -> Datagram {
    let mut out = Datagram::default();
    let mut offset = 0;
    while offset < datagram.len() {
        let Ok(message) = NetlinkBuffer::new_checked(&datagram[offset..]) else {
            out.undecodable += 1;
            break;
        };
        let length = message.length() as usize;
        if message.flags() & NLM_F_DUMP_INTR != 0 {
            out.interrupted = true;
        }
        let payload = message.payload();
        match message.message_type() {
            RTM_NEWLINK | RTM_DELLINK => match link_of(payload) {
                Some((family, link)) if family == AF_UNSPEC => {
                    out.events.push(if message.message_type() == RTM_NEWLINK {
                        LinkEvent::Present(link)
                    } else {
                        LinkEvent::Gone(link.index)
                    });
                }
                Some(_) => {}
                None => out.undecodable += 1,
            },
            NLMSG_DONE => {
                out.done = true;
                // The kernel may put the dump's error code here.
                if let Some(code) = payload.first_chunk::<4>().map(|b| i32::from_ne_bytes(*b))
                    && code < 0
                {
                    out.error = Some(io::Error::from_raw_os_error(-code));
                }
            }
            NLMSG_ERROR => {
                let code = payload
                    .first_chunk::<4>()
                    .map_or(-libc::EBADMSG, |b| i32::from_ne_bytes(*b));
                if code < 0 {
                    out.error = Some(io::Error::from_raw_os_error(-code));
                }
            }
            _ => {}
        }
        // Messages are 4-byte aligned; a length that would not advance ends the datagram.
        let advance = length.next_multiple_of(4);
        if advance == 0 {
            break;
        }
        offset += advance;
    }
    out
}

/// The family and the interface of an `ifinfomsg` payload, if it names one.
fn link_of(payload: &[u8]) -> Option<(u8, Link)> {
    let header = payload.get(..IFINFOMSG_LEN)?;
    let family = header[0];
    let index = u32::from_ne_bytes(header[4..8].try_into().ok()?);
    let name = NlasIterator::new(&payload[IFINFOMSG_LEN..])
        .map_while(Result::ok)
        .find(|nla| nla.kind() == IFLA_IFNAME)
        .map(|nla| {
            let value = nla.value();
            let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
            String::from_utf8_lossy(&value[..end]).into_owned()
        })?;
    (index != 0 && !name.is_empty()).then(|| (family, Link::new(index, name)))
}

/// Every interface of the calling thread's network namespace (index → name).
pub fn dump() -> io::Result<BTreeMap<u32, String>> {
    for _ in 0..DUMP_ATTEMPTS {
        let (links, interrupted) = dump_once()?;
        if !interrupted {
            return Ok(links);
        }
    }
    Err(io::Error::other(format!(
        "the interface dump was interrupted by changes {DUMP_ATTEMPTS} times in a row"
    )))
}

fn dump_once() -> io::Result<(BTreeMap<u32, String>, bool)> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut request = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetLink(LinkMessage::default())),
    );
    request.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    request.header.sequence_number = 1;
    request.finalize();
    let mut sent = vec![0; request.buffer_len()];
    request.serialize(&mut sent);
    socket.send(&sent, 0)?;
    let mut links = BTreeMap::new();
    let mut interrupted = false;
    loop {
        let (datagram, _) = socket.recv_from_full()?;
        let parsed = parse(&datagram);
        if let Some(e) = parsed.error {
            return Err(e);
        }
        if parsed.undecodable > 0 {
            return Err(io::Error::other(
                "the interface dump holds messages that cannot be read",
            ));
        }
        interrupted |= parsed.interrupted;
        for event in parsed.events {
            if let LinkEvent::Present(link) = event {
                links.insert(link.index, link.name);
            }
        }
        if parsed.done {
            return Ok((links, interrupted));
        }
    }
}

/// Notifications that arrived together.
#[derive(Debug, Default)]
pub struct Notifications {
    pub events: Vec<LinkEvent>,
    /// Some notifications were dropped (the socket overflowed) or could not be read: only a
    /// full dump tells the current state.
    pub lost: bool,
}

/// A subscription to the link notifications of the calling thread's network namespace.
pub struct LinkEvents {
    socket: AsyncFd<Socket>,
}

impl LinkEvents {
    /// Subscribes. Notifications queue from here on, so a dump made afterwards misses
    /// nothing: what changed during it arrives here as well.
    pub fn subscribe() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind(&SocketAddr::new(0, RTMGRP_LINK))?;
        // Best effort: the kernel caps it at net.core.rmem_max.
        let _ = socket.set_rx_buf_sz(NOTIFY_RCVBUF);
        socket.set_non_blocking(true)?;
        // SAFETY: the socket owns its descriptor, closes it only when dropped, and always
        // returns the same one; the AsyncFd owns the socket from here on.
        let socket = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }?;
        Ok(Self { socket })
    }

    /// Waits for notifications and returns all that are queued by then. Cancel safe: nothing
    /// is read before the socket is readable, and what is read is returned.
    pub async fn next(&mut self) -> io::Result<Notifications> {
        loop {
            let mut ready = self.socket.readable().await?;
            let mut out = Notifications::default();
            loop {
                match ready.get_inner().recv_from_full() {
                    Ok((datagram, from)) => {
                        // Only the kernel (port 0) speaks for the namespace.
                        if from.port_number() != 0 {
                            continue;
                        }
                        let parsed = parse(&datagram);
                        out.events.extend(parsed.events);
                        out.lost |= parsed.undecodable > 0;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        ready.clear_ready();
                        break;
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => out.lost = true,
                    Err(e) => return Err(e),
                }
            }
            if out.lost || !out.events.is_empty() {
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{DoneMessage, ErrorMessage};
    use netlink_packet_route::{
        AddressFamily,
        link::{LinkAttribute, LinkMessage},
    };

    use super::*;

    fn message(payload: NetlinkPayload<RouteNetlinkMessage>, flags: u16) -> Vec<u8> {
        let mut m = NetlinkMessage::new(NetlinkHeader::default(), payload);
        m.header.flags = flags;
        m.finalize();
        let mut bytes = vec![0; m.buffer_len()];
        m.serialize(&mut bytes);
        bytes
    }

    fn link(family: AddressFamily, index: u32, name: Option<&str>) -> LinkMessage {
        let mut l = LinkMessage::default();
        l.header.interface_family = family;
        l.header.index = index;
        if let Some(name) = name {
            l.attributes.push(LinkAttribute::Mtu(1500));
            l.attributes.push(LinkAttribute::IfName(name.into()));
        }
        l
    }

    fn new_link(index: u32, name: &str) -> Vec<u8> {
        let l = link(AddressFamily::Unspec, index, Some(name));
        message(
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)),
            0,
        )
    }

    fn del_link(family: AddressFamily, index: u32, name: &str) -> Vec<u8> {
        let l = link(family, index, Some(name));
        message(
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)),
            0,
        )
    }

    #[test]
    fn new_and_deleted_links_of_one_datagram_in_order() {
        let mut datagram = new_link(7, "veth1");
        datagram.extend(del_link(AddressFamily::Unspec, 7, "veth1"));
        datagram.extend(new_link(9, "veth1"));
        let parsed = parse(&datagram);
        assert_eq!(
            parsed.events,
            [
                LinkEvent::Present(Link::new(7, "veth1")),
                LinkEvent::Gone(7),
                LinkEvent::Present(Link::new(9, "veth1")),
            ]
        );
        assert_eq!(parsed.undecodable, 0);
        assert!(!parsed.done && !parsed.interrupted && parsed.error.is_none());
    }

    #[test]
    fn a_port_leaving_its_bridge_is_not_a_deleted_interface() {
        let parsed = parse(&del_link(AddressFamily::Bridge, 7, "veth1"));
        assert!(parsed.events.is_empty(), "{:?}", parsed.events);
        assert_eq!(parsed.undecodable, 0);
    }

    #[test]
    fn a_link_without_a_name_is_undecodable() {
        let l = link(AddressFamily::Unspec, 7, None);
        let parsed = parse(&message(
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)),
            0,
        ));
        assert!(parsed.events.is_empty());
        assert_eq!(parsed.undecodable, 1);
    }

    #[test]
    fn truncated_datagrams_keep_what_came_before() {
        let mut datagram = new_link(7, "veth1");
        let second = new_link(8, "veth2");
        datagram.extend(&second[..second.len() - 3]);
        let parsed = parse(&datagram);
        assert_eq!(parsed.events, [LinkEvent::Present(Link::new(7, "veth1"))]);
        assert_eq!(parsed.undecodable, 1);
    }

    #[test]
    fn dump_end_interruption_and_errors() {
        let mut datagram = new_link(1, "lo");
        datagram.extend(message(
            NetlinkPayload::Done(DoneMessage::default()),
            NLM_F_DUMP_INTR,
        ));
        let parsed = parse(&datagram);
        assert!(parsed.done);
        assert!(parsed.interrupted);
        assert!(parsed.error.is_none());

        let mut error = ErrorMessage::default();
        error.code = std::num::NonZeroI32::new(-libc::EPERM);
        let parsed = parse(&message(NetlinkPayload::Error(error), 0));
        assert_eq!(
            parsed.error.and_then(|e| e.raw_os_error()),
            Some(libc::EPERM)
        );
        // An acknowledgement (code 0) is no error.
        let parsed = parse(&message(NetlinkPayload::Error(ErrorMessage::default()), 0));
        assert!(parsed.error.is_none());
    }
}
