//! An interface of this network namespace by name, through rtnetlink: its kind
//! (`IFLA_INFO_KIND`) and its deletion. The only kernel-facing code of the cleanup that is
//! not a netfilter tool.

use std::io;

use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
};

use crate::dataplane::rtnl::request as ask;

/// An interface that exists.
#[derive(Debug)]
pub struct Link {
    pub index: u32,
    /// Its kind (`dummy`, `veth`...); `None` for a device without one (a physical NIC).
    pub kind: Option<InfoKind>,
}

/// The interface called `name`, if there is one.
pub fn find(name: &str) -> io::Result<Option<Link>> {
    let mut request = LinkMessage::default();
    request
        .attributes
        .push(LinkAttribute::IfName(name.to_owned()));
    let reply = match ask(RouteNetlinkMessage::GetLink(request), NLM_F_REQUEST) {
        Ok(Some(RouteNetlinkMessage::NewLink(link))) => link,
        Ok(_) => return Err(io::Error::other("unexpected reply to RTM_GETLINK")),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Ok(None),
        Err(e) => return Err(e),
    };
    let kind = reply.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(kind) => Some(kind.clone()),
            _ => None,
        }),
        _ => None,
    });
    Ok(Some(Link {
        index: reply.header.index,
        kind,
    }))
}

/// Deletes interface `index` (`RTM_DELLINK`, acknowledged).
pub fn delete(index: u32) -> io::Result<()> {
    let mut request = LinkMessage::default();
    request.header.index = index;
    ask(
        RouteNetlinkMessage::DelLink(request),
        NLM_F_REQUEST | NLM_F_ACK,
    )
    .map(drop)
}
