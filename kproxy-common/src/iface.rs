//! `KP_IFACES`: what kproxy does on each interface it serves (key: ifindex, value: `IFACE_F_*`).

/// kproxy runs on this interface's ingress (TC or XDP): packets forwarded from it were
/// handled there, so the egress program lets them through without a second look.
pub const IFACE_F_INGRESS: u32 = 1 << 0;
/// The interface may hand XDP frames whose L4 checksum is only partial (a veth whose peer
/// transmits with checksum offload): XDP cannot tell, so it leaves service packets to the
/// TC program attached to the same interface, whose kernel helpers know the difference.
pub const IFACE_F_XDP_DEFER: u32 = 1 << 1;
