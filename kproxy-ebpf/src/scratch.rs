//! Per-CPU memory for what does not fit on the BPF stack (512 bytes for a program and the
//! functions it calls, together): the frames the IPv6 programs answer with (ICMPv6 rejects,
//! RSTs), and what one IPv6 stage hands the next (see `lb::Stage`). A program runs to the
//! end on one CPU, and a tail call keeps the CPU, without another of these programs running
//! there in between (TC and XDP run with bottom halves off), so this memory is its own while
//! it runs.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use kproxy_common::{
    addr::In6Addr,
    config::Config,
    ct::{CtEntryOf, FlowKeyOf},
    lb::{ServiceKeyOf, ServiceValue},
};

use crate::{lb::Decision, packet::NatRewrite, parse::Flow};

/// Bytes in the buffer: the largest frame built in it.
pub const SCRATCH_LEN: usize = 128;

/// Not pinned: nothing in it outlives the program run that wrote it.
#[map]
pub static KP_SCRATCH: PerCpuArray<[u8; SCRATCH_LEN]> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's buffer as an `N`-byte frame, zeroed.
#[inline(always)]
pub fn frame<const N: usize>() -> Option<&'static mut [u8; N]> {
    const { assert!(N <= SCRATCH_LEN && N.is_multiple_of(2)) };
    let buf = KP_SCRATCH.get_ptr_mut(0)?;
    let words = buf.cast::<u16>();
    let mut i = 0;
    while i < N / 2 {
        // SAFETY: inside the buffer (N <= SCRATCH_LEN); a per-CPU array element is aligned
        // for its value, and volatile keeps the stores from becoming a memset call.
        unsafe { words.add(i).write_volatile(0) };
        i += 1;
    }
    // SAFETY: this CPU's element, N bytes of it, all initialised just above; nothing else
    // runs on this CPU until the program returns.
    Some(unsafe { &mut *buf.cast::<[u8; N]>() })
}

/// What an IPv6 stage hands on to the next one's program with the packet (see `lb::Stage`).
#[repr(C)]
pub struct StageState<A> {
    /// The TC program handing on was the egress one (its verdicts differ).
    pub egress: u8,
    pub _pad: [u8; 7],
    /// The packet's flow, as this stage parsed it.
    pub flow: Flow<A>,
    /// The rewrite of a translated packet (see `lb::rewrite`).
    pub rewrite: NatRewrite<A>,
    /// `Stage::Icmp`: the outer header's addresses (see `icmp6::handle`).
    pub icmp_outer: FlowKeyOf<A>,
    /// `Stage::Icmp`: the tuple of the packet that answered the quoted one.
    pub icmp_answer: FlowKeyOf<A>,
    /// `Stage::Icmp`: that tuple's conntrack entry.
    pub icmp_entry: CtEntryOf<A>,
    /// `Stage::Create`: the new flow's entries (see `conntrack::staged`).
    pub ct: CtScratch<A>,
    /// `Stage::Decide`, `Stage::Create`: the forward entry the new flow replaces
    /// (`CtEntry::ZERO` if none).
    pub stale: CtEntryOf<A>,
    /// `Stage::Create`: the new flow's backend and settings.
    pub decision: Decision<A>,
    /// `Stage::Decide`: the frontend found, becoming the entry that serves the flow (see
    /// `policy::serve`).
    pub frontend_key: ServiceKeyOf<A>,
    pub frontend: ServiceValue,
}

/// Not pinned, like `KP_SCRATCH`.
#[map]
pub static KP_STAGE6: PerCpuArray<StageState<In6Addr>> = PerCpuArray::with_max_entries(1, 0);

/// The conntrack entries and keys a new flow's creation (`conntrack::staged::create`) and
/// its claims on backend-side tuples work with. Each function uses its own fields, so a
/// caller's and a callee's never overlap (they are reached through raw pointers, field by
/// field).
#[repr(C)]
pub struct CtScratch<A> {
    /// `create`: the new forward entry.
    pub forward: CtEntryOf<A>,
    /// `create`: the reply entry it claims.
    pub rev: CtEntryOf<A>,
    /// `create`: the backend-side tuple.
    pub rkey: FlowKeyOf<A>,
    /// The claims: the reply entry found at the tuple.
    pub other: CtEntryOf<A>,
    /// The claims: its flow's forward entry, if it still holds the tuple.
    pub other_fwd: CtEntryOf<A>,
    /// The claims: that forward entry's key.
    pub other_key: FlowKeyOf<A>,
    /// `create`: the conntrack settings, when the agent has not written them.
    pub config: Config,
}
