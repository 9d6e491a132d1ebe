//! One request and its reply on a route netlink socket of this network namespace, for the
//! few one-off questions and changes that do not need the link watcher's socket.

use std::io;

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// Sends `message` with `flags` (`NLM_F_REQUEST`, plus `NLM_F_ACK` for a change); returns the
/// reply's message, or `None` for a bare acknowledgement.
pub fn request(
    message: RouteNetlinkMessage,
    flags: u16,
) -> io::Result<Option<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut request = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::InnerMessage(message),
    );
    request.header.flags = flags;
    request.finalize();
    let mut sent = vec![0; request.buffer_len()];
    request.serialize(&mut sent);
    socket.send(&sent, 0)?;
    let mut reply = Vec::with_capacity(16 * 1024);
    socket.recv(&mut reply, 0)?;
    match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply)
        .map_err(io::Error::other)?
        .payload
    {
        NetlinkPayload::InnerMessage(m) => Ok(Some(m)),
        NetlinkPayload::Error(e) => match e.code {
            None => Ok(None),
            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
        },
        _ => Err(io::Error::other("netlink: unexpected reply")),
    }
}
