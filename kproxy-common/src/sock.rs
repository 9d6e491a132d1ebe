//! Socket-level load balancing's maps: the frontend each socket pointed at a backend thinks
//! it talks to, the backend of each unconnected UDP socket's destination, and ClientIP
//! affinity by network namespace.
//!
//! A socket is named by its cookie (`bpf_get_socket_cookie`), a 64-bit number the kernel never
//! gives two sockets; it is kept as two 32-bit words so that no key has padding.

use core::mem::size_of;

use crate::addr::In6Addr;

/// The socket's cookie as `[low, high]` words.
#[inline(always)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "the two halves, on purpose"
)]
pub const fn cookie_words(cookie: u64) -> [u32; 2] {
    [cookie as u32, (cookie >> 32) as u32]
}

/// Key of `KP_SOCK_REV`/`KP_SOCK_REV6`: a backend (address, port) one socket was pointed at.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevKeyOf<A> {
    /// Backend address (network byte order).
    pub addr: A,
    /// Backend port (network byte order).
    pub port: u16,
    pub _pad: u16,
    /// The socket (see `cookie_words`).
    pub cookie: [u32; 2],
}

/// Value of `KP_SOCK_REV`/`KP_SOCK_REV6`: the frontend the application addressed, which
/// getpeername and received datagrams show it instead of the backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevOf<A> {
    pub addr: A,
    pub port: u16,
    pub _pad: u16,
    pub svc_id: u32,
}

/// Key of `KP_SOCK_FLOWS`/`KP_SOCK_FLOWS6`: the destination of an unconnected UDP socket's
/// datagrams, a flow as conntrack would see it (the socket's address and port are fixed).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockFlowKeyOf<A> {
    /// The frontend addressed (network byte order).
    pub addr: A,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
    pub cookie: [u32; 2],
}

/// Value of `KP_SOCK_FLOWS`: the backend the flow keeps while it lives, as conntrack keeps a
/// UDP flow's (the UDP timeouts of `Config`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockFlow {
    pub last_seen_ns: u64,
    pub backend_id: u32,
    /// `SOCK_FLOW_F_*` bits.
    pub flags: u32,
}

/// The flow has received a datagram from its backend (conntrack's "replied": the longer
/// stream timeout applies).
pub const SOCK_FLOW_F_REPLIED: u32 = 1 << 0;

/// Key of `KP_SOCK_AFFINITY`: ClientIP affinity on the socket path, by network namespace.
/// A socket has no source address yet when it connects; a pod's namespace stands for its
/// address (one namespace, one pod IP), the node's for the node.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockAffinityKey {
    pub svc_id: u32,
    pub _pad: u32,
    pub netns_cookie: u64,
}

pub type SockRevKey = SockRevKeyOf<u32>;
pub type SockRevKey6 = SockRevKeyOf<In6Addr>;
pub type SockRev = SockRevOf<u32>;
pub type SockRev6 = SockRevOf<In6Addr>;
pub type SockFlowKey = SockFlowKeyOf<u32>;
pub type SockFlowKey6 = SockFlowKeyOf<In6Addr>;

const _: () = assert!(size_of::<SockRevKey>() == 16);
const _: () = assert!(size_of::<SockRevKey6>() == 28);
const _: () = assert!(size_of::<SockRev>() == 12);
const _: () = assert!(size_of::<SockRev6>() == 24);
const _: () = assert!(size_of::<SockFlowKey>() == 16);
const _: () = assert!(size_of::<SockFlowKey6>() == 28);
const _: () = assert!(size_of::<SockFlow>() == 16);
const _: () = assert!(size_of::<SockAffinityKey>() == 16);
