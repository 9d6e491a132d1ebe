//! Service load balancing: frontend lookup, backend choice (affinity, round-robin), DNAT of
//! client packets and reverse NAT of backend replies. Entry point for every packet.

use core::sync::atomic::{AtomicU64, Ordering};

use kproxy_common::{
    addr::IpAddress,
    config::IPPROTO_UDP,
    ct::{AffinityKeyOf, AffinityValue, CT_F_RST, CtEntryOf, FlowState, FragPorts},
    lb::{
        BE_F_ACTIVE, BackendOf, SVC_F_AFFINITY, SVC_F_DROP_EMPTY, SVC_F_MAGLEV, ServiceKeyOf,
        ServiceValue, SlotKey,
    },
    maglev::{MAGLEV_CHUNK, MaglevKey},
    names::{TAIL_STAGE_CREATE, TAIL_STAGE_DECIDE, TAIL_STAGE_FLOW, TAIL_STAGE_ICMP},
    stats::Counter,
};

use crate::{
    conntrack::{self, CtMap, Dir, NewFlow},
    family::{CtEntryF, Family, FlowF, FlowKeyF, called},
    filter, frontend,
    maps::{KP_MAGLEV, KP_RETIRED, KP_RR, KP_SLOTS},
    packet::{NatRewrite, Packet, Peer, Side},
    parse::{Fragment, Parsed},
    per_cpu, policy, route,
    scratch::StageState,
    stats, vip,
};

type Backend<F> = BackendOf<<F as Family>::Addr>;

/// What the program does with a packet. No variant carries data: a payload that only some
/// variants define is undefined in the others, and LLVM may spill those undefined bytes,
/// which the verifier rejects (egress rerouting reads the addresses from the packet).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Not service traffic, or service traffic left untranslated (counted): untouched.
    Pass,
    /// Destination translated to a backend.
    Dnat,
    /// A backend's reply with the VIP restored as its source.
    ReverseNat,
    /// Replaced by an ICMP reject or a TCP RST that goes back out where the packet came in.
    SentBack,
    /// Dropped for the counted reason.
    Drop,
}

const NS_PER_SEC: u64 = 1_000_000_000;

/// Where in the service logic a program starts. Families whose state would not fit the
/// BPF stack in one program (`Family::STAGED`: IPv6) run the later steps as programs of
/// their own, tail-called with the packet; each parses it again and goes on from there.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// A packet as it arrives.
    Start,
    /// A packet to a frontend whose flow is not live in its forward entry alone: find its
    /// flow, or see that it needs a new one (`names::TAIL_STAGE_FLOW`).
    Flow,
    /// A new flow: decide its backend (`StageState::stale` is the entry it replaces;
    /// `names::TAIL_STAGE_DECIDE`).
    Decide,
    /// A new flow's backend was chosen (`StageState::decision`): create its entries, then
    /// DNAT (`names::TAIL_STAGE_CREATE`).
    Create,
    /// An ICMP packet, maybe an error about a flow (`names::TAIL_STAGE_ICMP`).
    Icmp,
}

impl Stage {
    /// The tail-call index of the program that runs this stage.
    const fn index(self) -> u32 {
        match self {
            Stage::Start | Stage::Flow => TAIL_STAGE_FLOW,
            Stage::Decide => TAIL_STAGE_DECIDE,
            Stage::Create => TAIL_STAGE_CREATE,
            Stage::Icmp => TAIL_STAGE_ICMP,
        }
    }
}

/// Hands the packet on to the program of `stage`. Returns only if that failed (the agent has
/// not installed it): the packet is dropped, counted.
#[inline(always)]
fn hand_on<P: Packet>(pkt: &P, stage: Stage) -> Result<Action, Counter> {
    pkt.tail_call(stage.index());
    Err(Counter::DropStageMissing)
}

/// This CPU's stage state (see `Stage`), or the reason to drop the packet.
#[inline(always)]
fn stage_state<F: Family>() -> Result<*mut StageState<F::Addr>, Counter> {
    F::stage_state().ok_or(Counter::DropStageMissing)
}

/// Entry point of the service logic for one packet of family `F`.
#[inline(always)]
pub fn handle<F: Family, P: Packet>(pkt: &mut P) -> Action {
    stats::count(Counter::Packets);
    handle_at::<F, P>(pkt, Stage::Start)
}

/// The service logic for one packet of family `F`, from `stage` on (always `Start` for a
/// family that is not staged).
#[inline(always)]
pub fn handle_at<F: Family, P: Packet>(pkt: &mut P, stage: Stage) -> Action {
    let mut flow = match F::parse(pkt) {
        Parsed::Flow(flow) if policy::martian_localhost::<F, P>(pkt, flow.key.daddr) => {
            stats::count(Counter::DropMartianLocalhost);
            return Action::Drop;
        }
        Parsed::Flow(flow) => flow,
        Parsed::NotIp => return Action::Pass,
        Parsed::Vlan(daddr) => return vip::pass_if_vip::<F>(daddr, Counter::VipVlanTagged),
        Parsed::Malformed(daddr) => {
            return vip::drop_if_vip::<F>(Some(daddr), Counter::DropTruncated);
        }
        Parsed::Unparsed(daddr) => {
            return vip::pass_if_vip::<F>(Some(daddr), Counter::VipExtensionHeaders);
        }
        Parsed::Other {
            daddr,
            proto,
            l4_off,
        } => {
            if proto == F::ICMP_PROTO && l4_off != 0 {
                return match stage {
                    // A deferring XDP program leaves ICMP to TC, as it leaves the flows the
                    // errors are about (the later stages do not know they were deferred).
                    Stage::Start if F::STAGED && pkt.must_defer() => {
                        stats::count(Counter::XdpDeferred);
                        Action::Pass
                    }
                    Stage::Start if F::STAGED => hand_on(pkt, Stage::Icmp).unwrap_or_else(dropped),
                    Stage::Start | Stage::Icmp => F::icmp(pkt, daddr, l4_off),
                    // Never handed on to these stages.
                    Stage::Flow | Stage::Decide | Stage::Create => Action::Pass,
                };
            }
            return vip::pass_if_vip::<F>(Some(daddr), Counter::VipUnsupportedProtocol);
        }
    };
    if flow.fragment == Fragment::Later && !later_fragment_ports::<F>(&mut flow) {
        // The first fragment was not seen (yet): nothing to translate this one with.
        let action = vip::drop_if_vip::<F>(Some(flow.key.daddr), Counter::DropFragment);
        if action == Action::Pass {
            stats::count(Counter::FragmentUntracked);
        }
        return action;
    }
    if F::STAGED {
        // The flow is kept in the stage state rather than on the stack, which a staged
        // family has little of (IPv6's flow is 64 bytes, in every frame that takes it).
        let shared = match stage_state::<F>() {
            Ok(shared) => shared,
            Err(why) => return dropped(why),
        };
        // SAFETY: this CPU's stage state; written here, then only read.
        let flow = unsafe {
            let at = &raw mut (*shared).flow;
            at.write(flow);
            &*at
        };
        return serve::<F, P>(pkt, flow, stage);
    }
    serve::<F, P>(pkt, &flow, stage)
}

/// The service logic for the TCP/UDP packet of `flow`, from `stage` on.
#[inline(always)]
fn serve<F: Family, P: Packet>(pkt: &mut P, flow: &FlowF<F>, stage: Stage) -> Action {
    let action = match stage {
        Stage::Start => translate::<F, P>(pkt, flow),
        Stage::Flow => match frontend::find::<F>(flow.key.daddr, flow.key.dport, flow.key.proto) {
            Some(mut found) => {
                let now = conntrack::now_ns();
                to_service::<F, P>(pkt, flow, &mut found, FwdEntry::NOT_LOOKED_UP, now)
                    .unwrap_or_else(dropped)
            }
            None => removed_frontend::<F>(flow),
        },
        Stage::Decide => {
            match frontend::Dest::<F>::of(flow.key.daddr, flow.key.dport, flow.key.proto)
                .find_entry()
            {
                Some(found) => decide_stage::<F, P>(pkt, flow, found).unwrap_or_else(dropped),
                None => removed_frontend::<F>(flow),
            }
        }
        Stage::Create => create_stage::<F, P>(pkt, flow).unwrap_or_else(dropped),
        // An ICMP packet never parses as a flow.
        Stage::Icmp => Action::Pass,
    };
    if flow.fragment == Fragment::First && matches!(action, Action::Dnat | Action::ReverseNat) {
        remember_fragment_ports::<F>(flow);
    }
    action
}

/// A later stage's packet whose frontend was removed since the first program found it.
#[inline(always)]
fn removed_frontend<F: Family>(flow: &FlowF<F>) -> Action {
    vip::pass_if_vip::<F>(Some(flow.key.daddr), Counter::VipNoServicePort)
}

/// A parsed packet with its ports: to a service, from a backend, or neither.
#[inline(always)]
fn translate<F: Family, P: Packet>(pkt: &mut P, flow: &FlowF<F>) -> Action {
    let dest = frontend::Dest::<F>::of(flow.key.daddr, flow.key.dport, flow.key.proto);
    // Read once: every path below (a flow's freshness, a reply's) needs the time.
    let now = conntrack::now_ns();
    let mut fwd_entry = FwdEntry::<F>::NOT_LOOKED_UP;
    if dest.is_nodeport() {
        // Nearly every packet to a NodePort belongs to a live flow, whose forward entry is
        // all it needs: looked up before the frontend, that is one hash lookup per packet
        // less. A live flow's frontend is still there: removing one stamps `KP_RETIRED`.
        fwd_entry = FwdEntry::of(&flow.key);
        if let Some(action) = live_dnat::<F, P>(pkt, flow, &fwd_entry, now) {
            return action;
        }
    }
    match dest.find() {
        Some(mut found) => {
            if pkt.must_defer() {
                stats::count(Counter::XdpDeferred);
                return Action::Pass;
            }
            if F::STAGED {
                // Only a live flow is served in this stage, the bulk of the packets.
                if !fwd_entry.looked_up {
                    fwd_entry = FwdEntry::of(&flow.key);
                    if let Some(action) = live_dnat::<F, P>(pkt, flow, &fwd_entry, now) {
                        return action;
                    }
                }
                return hand_on(pkt, Stage::Flow).unwrap_or_else(dropped);
            }
            to_service::<F, P>(pkt, flow, &mut found, fwd_entry, now).unwrap_or_else(dropped)
        }
        None => from_backend::<F, P>(pkt, flow, now),
    }
}

/// Translates a packet whose forward entry `fwd_entry` alone says its flow is `live`; `None`
/// if it does not.
#[inline(always)]
fn live_dnat<F: Family, P: Packet>(
    pkt: &mut P,
    flow: &FlowF<F>,
    fwd_entry: &FwdEntry<F>,
    now: u64,
) -> Option<Action> {
    if !live::<F>(flow, &fwd_entry.entry, now) {
        return None;
    }
    if pkt.must_defer() {
        stats::count(Counter::XdpDeferred);
        return Some(Action::Pass);
    }
    let entry = fwd_entry.entry;
    Some(
        known_dnat::<F, P>(pkt, flow, &entry, &live_backend::<F>(&entry), now)
            .unwrap_or_else(dropped),
    )
}

/// Counts the reason of a drop.
#[inline(always)]
fn dropped(reason: Counter) -> Action {
    stats::count(reason);
    Action::Drop
}

/// A packet's forward entry (`CtEntry::ZERO` if none), once looked up.
struct FwdEntry<F: Family> {
    looked_up: bool,
    entry: CtEntryF<F>,
}

impl<F: Family> Clone for FwdEntry<F> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<F: Family> Copy for FwdEntry<F> {}

impl<F: Family> FwdEntry<F> {
    const NOT_LOOKED_UP: Self = Self {
        looked_up: false,
        entry: CtEntryF::<F>::ZERO,
    };

    #[inline(always)]
    fn of(key: &FlowKeyF<F>) -> Self {
        Self {
            looked_up: true,
            entry: conntrack::lookup_or_zero(F::ct_fwd(), key),
        }
    }
}

/// Records the ports of a translated first fragment for the later ones. Only translated
/// traffic is recorded, so other fragmented traffic cannot fill the table.
#[inline(always)]
fn remember_fragment_ports<F: Family>(flow: &FlowF<F>) {
    let ports = FragPorts {
        sport: flow.key.sport,
        dport: flow.key.dport,
    };
    let _ = F::frags().insert(F::frag_key(flow), ports, 0);
}

/// Fills in the ports of a later fragment from its first fragment; false if unknown.
#[inline(always)]
fn later_fragment_ports<F: Family>(flow: &mut FlowF<F>) -> bool {
    // SAFETY: copied out at once.
    match unsafe { F::frags().get(F::frag_key(flow)) }.copied() {
        Some(ports) => {
            flow.key.sport = ports.sport;
            flow.key.dport = ports.dport;
            true
        }
        None => false,
    }
}

/// What the flow a packet belongs to says about it.
enum Known<F: Family> {
    /// A live flow with a backend that serves it.
    Use(CtEntryF<F>, Backend<F>),
    /// A live TCP flow whose endpoint left every EndpointSlice: reset it.
    Reset(CtEntryF<F>),
    /// No usable flow: start a new one, replacing the stale entry given (`CtEntry::ZERO`
    /// if there is none; not an `Option`, see `FlowState::of`).
    New(CtEntryF<F>),
}

/// A packet addressed to a service frontend: find or create its flow, then DNAT.
#[inline(always)]
fn to_service<F: Family, P: Packet>(
    pkt: &mut P,
    flow: &FlowF<F>,
    found: &mut Found<F>,
    fwd_entry: FwdEntry<F>,
    now: u64,
) -> Result<Action, Counter> {
    let fwd_entry = if fwd_entry.looked_up {
        fwd_entry
    } else {
        FwdEntry::<F>::of(&flow.key)
    };
    let (entry, backend) = match known_flow::<F>(flow, fwd_entry.entry, now) {
        Known::Use(entry, backend) => return known_dnat::<F, P>(pkt, flow, &entry, &backend, now),
        Known::Reset(entry) => return reset_flow::<F, P>(pkt, flow, &entry),
        Known::New(stale) if F::STAGED => {
            let shared = stage_state::<F>()?;
            // SAFETY: this CPU's stage state, read by the program handed on to.
            unsafe { (*shared).stale = stale };
            return hand_on(pkt, Stage::Decide);
        }
        Known::New(stale) => match new_flow::<F, P>(pkt, flow, found, &stale) {
            Ok(chosen) => chosen,
            // No endpoints: rejected here, outside the new flow's frame (see `Family::OUTLINED`).
            Err(Counter::Rejected) => return reject::<F, P>(pkt, flow),
            Err(why) => return Err(why),
        },
    };
    dnat::<F, P>(pkt, flow, &entry, &backend)
}

/// A frontend found for a packet: the key it was found under, and its value.
type Found<F> = (ServiceKeyOf<<F as Family>::Addr>, ServiceValue);

// At most four arguments: a BPF function takes five registers, one of them the address
// of the result.
/// A new flow of `flow` to the frontend `found`, replacing the stale forward entry `stale`
/// (`CtEntry::ZERO` if none): its backend and forward entry. `Rejected` means the frontend
/// has no endpoints and the packet gets the reject.
#[inline(always)]
fn new_flow<F: Family, P: Packet>(
    pkt: &mut P,
    flow: &FlowF<F>,
    found: &mut Found<F>,
    stale: &CtEntryF<F>,
) -> Result<(CtEntryF<F>, Backend<F>), Counter> {
    // Read again rather than passed in (see the argument limit above): the coarse clock's
    // tick between the two reads is far below every timeout.
    let now = conntrack::now_ns();
    let (key, svc) = found;
    let decision = decide::<F, P>(pkt, flow, key, svc, now)?;
    create_flow::<F>(flow, &decision, stale, now)
}

/// What a new flow was given: its forward entry's fields and its backend.
#[derive(Clone, Copy)]
pub struct Decision<A> {
    pub new: NewFlow<A>,
    pub backend: BackendOf<A>,
}

/// Decides a new flow of `flow` to the frontend `found`: its backend (affinity,
/// round-robin) and whether it is masqueraded, as the traffic policies say; nothing is
/// created yet (see `create_flow`). `Rejected`: the frontend has no endpoints, and the
/// packet gets the reject.
#[inline(always)]
fn decide<F: Family, P: Packet>(
    pkt: &mut P,
    flow: &FlowF<F>,
    key: &ServiceKeyOf<F::Addr>,
    svc: &mut ServiceValue,
    now: u64,
) -> Result<Decision<F::Addr>, Counter> {
    if !flow.has_l4_header() {
        return Err(Counter::DropFragment);
    }
    if !policy::source_allowed::<F>(svc, flow.key.saddr) {
        return Err(Counter::DropSourceRange);
    }
    let cfg = conntrack::config();
    let client = policy::Client::of::<F, P>(pkt, flow.key.saddr, &cfg);
    // The frontend's value becomes the entry that serves the client, in place: a second
    // copy of a service value did not fit the IPv6 decide stage's stack.
    let masquerade = policy::serve::<F>(key, svc, client, &cfg);
    let svc = &*svc;
    if let Some(why) = refusal(svc) {
        stats::count_refused(svc.id);
        return Err(why);
    }
    if flow.is_tcp() && !flow.is_syn() {
        return Err(Counter::DropCtInvalid);
    }
    let (backend_id, backend) = select_backend::<F, _>(
        svc,
        &ClientAddr::<F>(flow.key.saddr),
        now,
        // A few dozen ALU instructions for every new flow, Maglev or not: hashing only for a
        // Maglev service port costs the verifier more paths than the hash costs the packet.
        Some(flow.key.maglev_hash()),
    )?;
    // Hairpin: a pod that lands on itself must see the answer come from elsewhere
    // than its own address, as kube-proxy's per-endpoint masquerade rule ensures.
    let masq_addr = if masquerade || backend.addr == flow.key.saddr {
        let addr = route::masquerade_addr::<F, P>(pkt, flow.key.saddr, backend.addr)
            .ok_or(Counter::DropMasqNoAddr)?;
        stats::count(Counter::Masqueraded);
        addr
    } else {
        F::Addr::UNSPECIFIED
    };
    Ok(Decision {
        new: NewFlow {
            backend_id,
            svc_id: svc.id,
            addr: backend.addr,
            port: backend.port,
            masq_addr,
        },
        backend,
    })
}

/// Why a new flow to the serving entry `svc` (see `policy::serve`) gets no backend: none
/// when it has endpoints; `Rejected`, or with `SVC_F_DROP_EMPTY` `DropNoLocalEndpoint`, when
/// it has none. With `policy::serve` and `select_backend`, the decision the packet path and
/// the socket path share.
#[inline(always)]
pub fn refusal(svc: &ServiceValue) -> Option<Counter> {
    if svc.count != 0 {
        None
    } else if svc.flags & SVC_F_DROP_EMPTY != 0 {
        Some(Counter::DropNoLocalEndpoint)
    } else {
        Some(Counter::Rejected)
    }
}

/// Creates the entries of the new flow `decision` describes of `flow`, in place of the
/// stale forward entry `stale` (`CtEntry::ZERO` if none): the forward entry in effect and
/// its backend.
#[inline(always)]
fn create_flow<F: Family>(
    flow: &FlowF<F>,
    decision: &Decision<F::Addr>,
    stale: &CtEntryF<F>,
    now: u64,
) -> Result<(CtEntryF<F>, Backend<F>), Counter> {
    if stale.backend_id != 0 {
        conntrack::retire::<F>(&flow.key, stale);
    }
    let new = &decision.new;
    let entry = conntrack::create::<F>(&flow.key, new, flow.tcp_flags, now)?;
    if entry.backend_id == new.backend_id {
        stats::count_new_flow(new.svc_id, new.backend_id);
        Ok((entry, decision.backend))
    } else {
        // Another CPU created the flow first with another backend: follow it.
        // SAFETY: copied out at once.
        let theirs = unsafe { F::backends().get(entry.backend_id) }
            .copied()
            .ok_or(Counter::DropNoBackend)?;
        Ok((entry, theirs))
    }
}

/// The `Decide` stage: a new flow of `flow` to the frontend `found` decided, handed on to
/// the `Create` stage; or the reject.
#[inline(always)]
fn decide_stage<F: Family, P: Packet>(
    pkt: &mut P,
    flow: &FlowF<F>,
    (key, svc): (ServiceKeyOf<F::Addr>, &ServiceValue),
) -> Result<Action, Counter> {
    let state = stage_state::<F>()?;
    // Copied from the map straight into the stage state, off the stack: IPv6's key and
    // value are 48 bytes, and the stage's stack is all but full.
    // SAFETY: this CPU's stage state, its own while the program runs.
    let (key, svc) = unsafe {
        (&raw mut (*state).frontend_key).write(key);
        (&raw mut (*state).frontend).write(*svc);
        (&(*state).frontend_key, &mut (*state).frontend)
    };
    match decide::<F, P>(pkt, flow, key, svc, conntrack::now_ns()) {
        Ok(decision) => {
            // SAFETY: this CPU's stage state, read by the program handed on to.
            unsafe { (*state).decision = decision };
            hand_on(pkt, Stage::Create)
        }
        Err(Counter::Rejected) => reject::<F, P>(pkt, flow),
        Err(why) => Err(why),
    }
}

/// The `Create` stage: the new flow the earlier stages decided, created; its first packet
/// translated.
#[inline(always)]
fn create_stage<F: Family, P: Packet>(pkt: &mut P, flow: &FlowF<F>) -> Result<Action, Counter> {
    let shared = stage_state::<F>()?;
    // SAFETY: this CPU's stage state, written by the programs that handed on; the entry
    // created is left in its conntrack scratch, which nothing else writes meanwhile.
    unsafe {
        let (decision, stale) = (&(*shared).decision, &(*shared).stale);
        if stale.backend_id != 0 {
            conntrack::retire::<F>(&flow.key, stale);
        }
        let new = &decision.new;
        let entry =
            &*conntrack::create_staged::<F>(&flow.key, new, flow.tcp_flags, conntrack::now_ns())?;
        if entry.backend_id == new.backend_id {
            stats::count_new_flow(new.svc_id, new.backend_id);
            return dnat::<F, P>(pkt, flow, entry, &decision.backend);
        }
        // Another CPU created the flow first with another backend: follow it.
        let theirs = F::backends()
            .get_ptr(entry.backend_id)
            .ok_or(Counter::DropNoBackend)?;
        dnat::<F, P>(pkt, flow, entry, &*theirs)
    }
}

/// A packet of a known flow: recorded in its forward entry `entry`, then translated to the
/// flow's backend `backend`.
#[inline(always)]
fn known_dnat<F: Family, P: Packet>(
    pkt: &mut P,
    flow: &FlowF<F>,
    entry: &CtEntryF<F>,
    backend: &Backend<F>,
    now: u64,
) -> Result<Action, Counter> {
    conntrack::record::<F>(&flow.key, entry, Dir::Forward, flow.tcp_flags, now);
    dnat::<F, P>(pkt, flow, entry, backend)
}

called! {
    fn dnat<F: Family, P: Packet>(
        pkt: &mut P,
        flow: &FlowF<F>,
        entry: &CtEntryF<F>,
        backend: &Backend<F>,
    ) -> Result<Action, Counter> => dnat_here
}

/// Translates a packet of the flow of forward entry `entry` to its backend `backend`.
#[inline(always)]
fn dnat_here<F: Family, P: Packet>(
    pkt: &mut P,
    flow: &FlowF<F>,
    entry: &CtEntryF<F>,
    backend: &Backend<F>,
) -> Result<Action, Counter> {
    // Counted before the rewrite (same length): after it, the XDP program's verification
    // grows by half (its states stop pruning); a packet the rewrite then drops, which a
    // well-formed one never is, is counted towards its backend but not its frontend.
    stats::count_backend_packet(entry.backend_id, pkt.len());
    rewrite::<F, P>(
        pkt,
        NatRewrite {
            side: Side::Destination,
            old_addr: flow.key.daddr,
            new_addr: backend.addr,
            old_port: flow.key.dport,
            new_port: backend.port,
            peer: client_side(entry, flow.key.saddr, flow.key.sport),
            l4_off: flow.has_l4_header().then_some(flow.l4_off),
            udp: flow.key.proto == IPPROTO_UDP,
        },
    )
    .map_err(|()| Counter::DropNat)?;
    stats::count(Counter::ServicePackets);
    stats::count_service_packet(entry.svc_id, pkt.len());
    Ok(Action::Dnat)
}

/// Applies `rw` to the packet. A staged family's rewrite is kept in the stage state rather
/// than on the stack (an IPv6 one is 96 bytes).
#[inline(always)]
fn rewrite<F: Family, P: Packet>(pkt: &mut P, rw: NatRewrite<F::Addr>) -> Result<(), ()> {
    if F::STAGED {
        let state = F::stage_state().ok_or(())?;
        // SAFETY: this CPU's stage state; written here, then only read.
        let rw = unsafe {
            let at = &raw mut (*state).rewrite;
            at.write(rw);
            &*at
        };
        return F::rewrite(pkt, rw);
    }
    F::rewrite(pkt, &rw)
}

/// How a flow's entry changes the client end of its packets: forward entries replace the
/// client's address and port (`addr`, `port`) with the ones used towards the backend,
/// reply entries restore them. Zero fields leave that part alone.
#[inline(always)]
fn client_side<A: IpAddress>(entry: &CtEntryOf<A>, addr: A, port: u16) -> Peer<A> {
    Peer {
        old_addr: addr,
        new_addr: if entry.alt_addr.is_unspecified() {
            addr
        } else {
            entry.alt_addr
        },
        old_port: port,
        new_port: if entry.alt_port != 0 {
            entry.alt_port
        } else {
            port
        },
    }
}

/// Whether forward entry `entry` (`CtEntry::ZERO` if none) alone says its flow is live and
/// keeps its backend for this packet: its last refresh saw its frontend and backend, and
/// none has been removed, nor a backend stopped taking connections, since (`KP_RETIRED`).
/// The entry then has the backend's address and port (see `live_backend`).
#[inline(always)]
fn live<F: Family>(flow: &FlowF<F>, entry: &CtEntryF<F>, now: u64) -> bool {
    let syn = flow.is_tcp() && flow.is_syn();
    conntrack::fresh(entry, syn, now) && nothing_retired_since(entry.last_seen_ns)
}

/// The backend of a `live` flow, as its forward entry has it.
#[inline(always)]
fn live_backend<F: Family>(entry: &CtEntryF<F>) -> Backend<F> {
    BackendOf {
        addr: entry.nat_addr,
        port: entry.nat_port,
        flags: BE_F_ACTIVE,
        _pad: 0,
        svc_id: entry.svc_id,
    }
}

/// Decides what the flow of `flow` with forward entry `entry` (`CtEntry::ZERO` if none)
/// means for it, as kube-proxy's conntrack would: a live flow keeps its endpoint while the
/// endpoint is listed at all (TCP) or still takes new connections (UDP, whose flows
/// kube-proxy clears when an endpoint stops being used).
#[inline(always)]
fn known_flow<F: Family>(flow: &FlowF<F>, entry: CtEntryF<F>, now: u64) -> Known<F> {
    if live::<F>(flow, &entry, now) {
        return Known::Use(entry, live_backend::<F>(&entry));
    }
    let cfg = conntrack::config();
    let syn = flow.is_tcp() && flow.is_syn();
    let mut state = FlowState::ZERO;
    if !conntrack::existing::<F>(&flow.key, &entry, syn, now, &mut state) {
        return Known::New(CtEntryF::<F>::ZERO);
    }
    if syn && state.tcp_closing() {
        // The client reuses the port of a finished connection: a new flow.
        stats::count(Counter::CtReopened);
        return Known::New(entry);
    }
    if cfg.expired(flow.key.proto, &state, now) {
        return Known::New(entry);
    }
    // SAFETY: copied out at once.
    match unsafe { F::backends().get(entry.backend_id) }.copied() {
        Some(backend) if backend.is_active() || (flow.is_tcp() && !flow.is_syn()) => {
            Known::Use(entry, backend)
        }
        // A later fragment has no TCP header to answer with a RST (nor ports to start a new
        // flow with): it is dropped as a fragment without a flow.
        _ if !flow.has_l4_header() => Known::New(entry),
        None if flow.is_tcp() && !flow.is_syn() => Known::Reset(entry),
        // Gone, or no longer taking new connections: UDP flows and unanswered SYNs move.
        _ => {
            stats::count(Counter::FlowRebalanced);
            Known::New(entry)
        }
    }
}

/// Whether no frontend or backend was removed, nor a backend stopped taking new connections,
/// after `ns`.
#[inline(always)]
fn nothing_retired_since(ns: u64) -> bool {
    KP_RETIRED.get(0).is_some_and(|retired| *retired < ns)
}

called! {
    fn reset_flow<F: Family, P: Packet>(
        pkt: &mut P,
        flow: &FlowF<F>,
        entry: &CtEntryF<F>,
    ) -> Result<Action, Counter> => reset_flow_here
}

/// Answers a packet of a TCP flow whose endpoint is gone with a RST, and marks the flow
/// reset so it expires after the close timeout.
#[inline(always)]
fn reset_flow_here<F: Family, P: Packet>(
    pkt: &mut P,
    flow: &FlowF<F>,
    entry: &CtEntryF<F>,
) -> Result<Action, Counter> {
    let mut local = *entry;
    let closed = if F::STAGED {
        // The copy in the stage state's conntrack scratch: stack a stage lacks.
        let state = stage_state::<F>()?;
        // SAFETY: this CPU's stage state; the `Flow` stage creates nothing, so its `ct` is
        // free.
        unsafe {
            let at = &raw mut (*state).ct.forward;
            at.write(*entry);
            &mut *at
        }
    } else {
        &mut local
    };
    closed.flags |= CT_F_RST;
    let _ = F::ct_fwd().update(&flow.key, closed, aya_ebpf::bindings::BPF_EXIST);
    F::send_reset(pkt, flow).map_err(|()| Counter::DropReset)?;
    stats::count(Counter::ResetBackendGone);
    Ok(Action::SentBack)
}

/// Whose ClientIP affinity a new flow follows: a client address on the packet path, a
/// network namespace on the socket path (see `kproxy_common::sock::SockAffinityKey`).
pub trait AffinityOwner {
    /// The affinity of this owner to service port `svc_id`, if any.
    fn affinity(&self, svc_id: u32) -> Option<AffinityValue>;
    /// Records backend `backend_id` as this owner's affinity to service port `svc_id`.
    fn remember(&self, svc_id: u32, backend_id: u32, now: u64);
}

/// A client address of family `F`: the packet path's affinity owner.
pub struct ClientAddr<F: Family>(pub F::Addr);

impl<F: Family> AffinityOwner for ClientAddr<F> {
    #[inline(always)]
    fn affinity(&self, svc_id: u32) -> Option<AffinityValue> {
        let key = AffinityKeyOf {
            svc_id,
            client: self.0,
        };
        // SAFETY: copied out at once.
        unsafe { F::affinity().get(key) }.copied()
    }

    #[inline(always)]
    fn remember(&self, svc_id: u32, backend_id: u32, now: u64) {
        let key = AffinityKeyOf {
            svc_id,
            client: self.0,
        };
        let _ = F::affinity().insert(key, affinity_value(backend_id, now), 0);
    }
}

/// An affinity to `backend_id` last used at `now`.
#[inline(always)]
pub fn affinity_value(backend_id: u32, now: u64) -> AffinityValue {
    AffinityValue {
        last_seen_ns: now,
        backend_id,
        _pad: 0,
    }
}

/// Chooses the backend of a new flow of `owner` to service port `svc`: the owner's ClientIP
/// affinity if that is still valid and its backend still takes new connections, otherwise,
/// for a Maglev service port, the entry of its table `flow_hash` picks (the packet path's;
/// `None` from a socket's connect, whose source port may not be chosen yet), otherwise the
/// next one round-robin. Either way the affinity is (re)set: kube-proxy's `recent` match
/// refreshes it on new connections only, not on every packet.
#[inline(always)]
pub fn select_backend<F: Family, O: AffinityOwner>(
    svc: &ServiceValue,
    owner: &O,
    now: u64,
    flow_hash: Option<u32>,
) -> Result<(u32, Backend<F>), Counter> {
    let affinity = svc.flags & SVC_F_AFFINITY != 0;
    if affinity
        && let Some(a) = owner.affinity(svc.id)
        && now.saturating_sub(a.last_seen_ns) <= u64::from(svc.affinity_timeout_s) * NS_PER_SEC
        // SAFETY: copied out at once.
        && let Some(b) = unsafe { F::backends().get(a.backend_id) }.copied()
        && b.is_active()
    {
        stats::count(Counter::AffinityHits);
        owner.remember(svc.id, a.backend_id, now);
        return Ok((a.backend_id, b));
    }
    let maglev = svc.flags & SVC_F_MAGLEV != 0;
    let by_hash = match flow_hash {
        Some(hash) if maglev => maglev_backend_id(svc.id, svc.bank, hash),
        _ => NO_BACKEND,
    };
    let id = if by_hash == NO_BACKEND {
        if maglev {
            stats::count(Counter::MaglevFallback);
        }
        next_in_turn(svc)?
    } else {
        by_hash
    };
    // SAFETY: copied out at once.
    let backend = unsafe { F::backends().get(id) }
        .copied()
        .ok_or(Counter::DropNoBackend)?;
    if affinity {
        owner.remember(svc.id, id, now);
    }
    Ok((id, backend))
}

/// The backend id in `svc`'s next slot in turn (round robin): in the value itself for a few
/// backends, else in `KP_SLOTS`.
#[inline(always)]
fn next_in_turn(svc: &ServiceValue) -> Result<u32, Counter> {
    let rr = KP_RR
        .get_ptr_mut(per_cpu::index(svc.id))
        .ok_or(Counter::DropNoSlot)?;
    // This CPU's own counter, yet still an atomic add: a cgroup socket program runs in
    // process context and a TC program in softirq can interrupt it on the same CPU between
    // a plain read and write, losing a turn. Uncontended, the atomic costs little.
    // SeqCst, not Relaxed: LLVM's BPF backend lowers a *monotonic* atomicrmw add to the
    // non-fetching `lock +=` even when the old value is used, which silently returns garbage.
    // SAFETY: an array element of a u64 is 8-byte aligned and lives as long as the map (array
    // elements are never recycled).
    let turn = unsafe { AtomicU64::from_ptr(rr) }.fetch_add(1, Ordering::SeqCst);
    // Never 0 here (`refusal` came first), but said so: a division the compiler cannot see
    // is safe brings in a panic path, a call the verifier refuses beside tail calls.
    let count = u64::from(svc.count);
    if count == 0 {
        return Err(Counter::DropNoSlot);
    }
    let index = (turn % count) as u32;
    if svc.slots_inline() {
        return Ok(svc.inline_id(index));
    }
    // SAFETY: copied out at once.
    unsafe { KP_SLOTS.get(SlotKey::new(svc.id, svc.bank, index)) }
        .copied()
        .ok_or(Counter::DropNoSlot)
}

/// Load-time constant (`names::GLOBAL_MAGLEV_TABLE_SIZE`): the size M of every Maglev
/// table, a prime. A constant, so `hash % M` needs no map read and the verifier knows its
/// bound.
#[unsafe(no_mangle)]
static KP_MAGLEV_TABLE_SIZE: u32 = 16_381;

/// Backend id 0 is never handed out: "none".
const NO_BACKEND: u32 = 0;

/// The backend id the Maglev table of service port `svc_id` in `bank` gives flow hash
/// `hash`, or `NO_BACKEND` if the table is missing (being written or replaced, or of
/// another size).
#[inline(always)]
fn maglev_backend_id(svc_id: u32, bank: u8, hash: u32) -> u32 {
    // SAFETY: a global of the object, read as the verifier sees it: a constant.
    let size = unsafe { core::ptr::read_volatile(&raw const KP_MAGLEV_TABLE_SIZE) };
    if size == 0 {
        return NO_BACKEND;
    }
    let entry = hash % size;
    let key = MaglevKey::new(svc_id, size, bank, (entry / MAGLEV_CHUNK) as u16);
    let index = (entry % MAGLEV_CHUNK) as usize;
    // SAFETY: copied out at once; `get` bounds `index` by the chunk's length.
    match unsafe { KP_MAGLEV.get(key) } {
        Some(chunk) => chunk.backend_ids.get(index).copied().unwrap_or(NO_BACKEND),
        None => NO_BACKEND,
    }
}

called! {
    fn reject<F: Family, P: Packet>(pkt: &mut P, flow: &FlowF<F>) -> Result<Action, Counter> => reject_here
}

/// No endpoints: answer with ICMP port unreachable, as kube-proxy's REJECT rule does.
#[inline(always)]
fn reject_here<F: Family, P: Packet>(pkt: &mut P, flow: &FlowF<F>) -> Result<Action, Counter> {
    F::send_reject(pkt, flow).map_err(|()| Counter::DropReject)?;
    stats::count(Counter::Rejected);
    Ok(Action::SentBack)
}

/// A packet not addressed to a service: a backend's reply to translate back, or not ours.
#[inline(always)]
fn from_backend<F: Family, P: Packet>(pkt: &mut P, flow: &FlowF<F>, now: u64) -> Action {
    // A reply is translated even if its flow timed out and is not collected yet: the
    // backend still uses the tuple, and the client only knows the VIP.
    let mut entry = CtEntryF::<F>::ZERO;
    if !conntrack::existing_reply::<F>(&flow.key, now, &mut entry) {
        // Most packets that end here concern no Service: `KP_FILTER` spares them the VIP
        // lookup (IPv4 only; IPv6's stages have no stack for it).
        if !F::STAGED && !filter::may_be_frontend::<F>(flow.key.daddr) {
            return Action::Pass;
        }
        return vip::pass_if_vip::<F>(Some(flow.key.daddr), Counter::VipNoServicePort);
    }
    if pkt.must_defer() {
        stats::count(Counter::XdpDeferred);
        return Action::Pass;
    }
    conntrack::record::<F>(&flow.key, &entry, Dir::Reply, flow.tcp_flags, now);
    reverse_nat::<F, P>(pkt, flow, &entry)
}

called! {
    fn reverse_nat<F: Family, P: Packet>(
        pkt: &mut P,
        flow: &FlowF<F>,
        entry: &CtEntryF<F>,
    ) -> Action => reverse_nat_here
}

/// Translates a backend's reply of the flow whose reply entry is `entry` back: the VIP as
/// its source, the client's own address and port as its destination.
#[inline(always)]
fn reverse_nat_here<F: Family, P: Packet>(
    pkt: &mut P,
    flow: &FlowF<F>,
    entry: &CtEntryF<F>,
) -> Action {
    let back = NatRewrite {
        side: Side::Source,
        old_addr: flow.key.saddr,
        new_addr: entry.nat_addr,
        old_port: flow.key.sport,
        new_port: entry.nat_port,
        peer: client_side(entry, flow.key.daddr, flow.key.dport),
        l4_off: flow.has_l4_header().then_some(flow.l4_off),
        udp: flow.key.proto == IPPROTO_UDP,
    };
    if rewrite::<F, P>(pkt, back).is_err() {
        stats::count(Counter::DropNat);
        return Action::Drop;
    }
    stats::count(Counter::ReplyPackets);
    Action::ReverseNat
}
