//! What must hold after every program run, whatever the frame: comparing the input, the
//! output, the verdict and the counter deltas of that one run.
//!
//! - The verdict is one the program may return (TC: tcx next, shot, redirect; XDP: drop,
//!   pass, tx).
//! - A drop counts exactly one drop reason; nothing else counts one.
//! - A frame that passes changed is a translation: DNAT (the destination becomes a backend),
//!   reverse NAT (the source becomes a VIP) or an ICMP error about a translated flow. Only
//!   addresses, ports and checksums inside the datagram change; every checksum keeps its
//!   one's complement sum (so it verifies exactly when the input's did, a UDP checksum of 0
//!   stays 0); conntrack agrees with the rewrite, and a DNAT has its reply entry.
//! - A frame that passes unchanged towards a VIP (looking through up to two VLAN tags) counts
//!   exactly one reason it was left alone (`vip_*`, `xdp_deferred_to_tc`).
//! - A frame sent back is a well-formed ICMP port unreachable or TCP RST from the VIP to the
//!   input's source, every checksum exact.

use std::fmt::Write;

use kproxy_common::stats::{COUNTER_SLOTS, Counter};

use super::{
    frames::{
        ETH_HLEN, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Ipv4View, L3, TCP_ACK, TCP_CSUM, TCP_FIN,
        TCP_RST, TCP_SYN, UDP_CSUM, be16, ipv4, ipv4_destination, ones_sum, pseudo_header, quad,
    },
    lab::{Hook, Lab, addr_bytes, flow_key, port_bytes},
};
use kproxy_common::ct::FragKey;

/// Verdicts as the programs return them.
const TCX_NEXT: u32 = u32::MAX; // -1
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

/// One program run.
pub struct Observation<'a> {
    pub hook: Hook,
    pub input: &'a [u8],
    pub verdict: u32,
    pub output: &'a [u8],
    /// Counter increments of this run alone.
    pub delta: &'a [u64; COUNTER_SLOTS],
}

impl Observation<'_> {
    fn delta(&self, c: Counter) -> u64 {
        self.delta[c as usize]
    }

    /// The counters that moved, as `name+n`.
    pub fn moved_counters(&self) -> String {
        Counter::ALL
            .iter()
            .filter(|c| self.delta(**c) != 0)
            .fold(String::new(), |mut s, c| {
                let _ = write!(s, " {}+{}", c.name(), self.delta(*c));
                s
            })
    }
}

/// What a run did, once its invariants held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Passed untouched.
    Passed,
    Dropped,
    /// Replaced by an ICMP port unreachable.
    Rejected,
    /// Replaced by a TCP RST.
    Reset,
    Dnat,
    ReverseNat,
    /// An ICMP error about a DNATed packet, on its way to the client.
    IcmpToClient,
    /// An ICMP error about a reverse-NATed reply, on its way to the backend.
    IcmpToBackend,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Passed,
        Outcome::Dropped,
        Outcome::Rejected,
        Outcome::Reset,
        Outcome::Dnat,
        Outcome::ReverseNat,
        Outcome::IcmpToClient,
        Outcome::IcmpToBackend,
    ];
}

enum Verdict {
    Pass,
    Drop,
    /// TC redirect or XDP TX: sent back (or, on egress, a DNATed packet routed).
    Redirect,
}

type Checked = Result<Outcome, String>;

/// Checks every invariant of one run.
pub fn check(lab: &Lab, obs: &Observation<'_>) -> Checked {
    let verdict = match (obs.hook, obs.verdict) {
        (Hook::TcIngress | Hook::TcEgress, TCX_NEXT) | (Hook::Xdp, XDP_PASS) => Verdict::Pass,
        (Hook::TcIngress | Hook::TcEgress, TC_ACT_SHOT) | (Hook::Xdp, XDP_DROP) => Verdict::Drop,
        (Hook::TcIngress | Hook::TcEgress, TC_ACT_REDIRECT) | (Hook::Xdp, XDP_TX) => {
            Verdict::Redirect
        }
        (_, other) => {
            return Err(format!(
                "verdict {} is not one this program returns",
                other.cast_signed()
            ));
        }
    };
    if obs.delta(Counter::Packets) != 1 {
        return Err("the run did not count exactly one packet".into());
    }
    let drops: Vec<Counter> = Counter::ALL
        .iter()
        .copied()
        .filter(|c| c.drop_reason().is_some() && obs.delta(*c) != 0)
        .collect();
    match verdict {
        Verdict::Drop => {
            if drops.len() != 1 || obs.delta(drops[0]) != 1 {
                return Err("a drop must count exactly one drop reason, once".into());
            }
            Ok(Outcome::Dropped)
        }
        _ if !drops.is_empty() => Err("a packet that was not dropped counted a drop reason".into()),
        Verdict::Pass if obs.output == obs.input => untouched(lab, obs),
        Verdict::Pass => translated(lab, obs),
        Verdict::Redirect
            if obs.hook == Hook::TcEgress
                && (obs.delta(Counter::ServicePackets) == 1
                    || obs.delta(Counter::IcmpErrorTranslated) == 1) =>
        {
            // Egress routes what it translated towards a backend itself (redirect).
            translated(lab, obs)
        }
        Verdict::Redirect => sent_back(lab, obs),
    }
}

const TRANSLATION_COUNTERS: [Counter; 5] = [
    Counter::ServicePackets,
    Counter::ReplyPackets,
    Counter::IcmpErrorTranslated,
    Counter::Rejected,
    Counter::ResetBackendGone,
];

/// The counters that say why a packet towards a VIP was left untranslated.
fn left_alone_counters() -> impl Iterator<Item = Counter> {
    Counter::ALL
        .iter()
        .copied()
        .filter(|c| c.name().starts_with("vip_") || *c == Counter::XdpDeferred)
}

fn untouched(lab: &Lab, obs: &Observation<'_>) -> Checked {
    if let Some(c) = TRANSLATION_COUNTERS.iter().find(|c| obs.delta(**c) != 0) {
        return Err(format!("passed unchanged but counted {}", c.name()));
    }
    let reasons: u64 = left_alone_counters().map(|c| obs.delta(c)).sum();
    let towards_vip = ipv4_destination(obs.input).is_some_and(|d| lab.is_vip(d));
    if towards_vip && reasons != 1 {
        return Err(format!(
            "addressed to a VIP, left untranslated, and {reasons} reasons counted (want exactly one \
             vip_* or xdp_deferred_to_tc)"
        ));
    }
    if !towards_vip && left_alone_counters().any(|c| c != Counter::XdpDeferred && obs.delta(c) != 0)
    {
        return Err("not addressed to a VIP but counted as such".into());
    }
    if obs.delta(Counter::XdpDeferred) != 0 && obs.hook != Hook::Xdp {
        return Err("only XDP defers to TC".into());
    }
    Ok(Outcome::Passed)
}

/// Byte ranges a translation may change.
struct Allowed {
    ranges: Vec<(usize, usize, &'static str)>,
}

impl Allowed {
    fn new() -> Self {
        Self { ranges: Vec::new() }
    }

    /// Allows `[start, start + len)` if all of it lies before `end` (inside the datagram).
    fn add(&mut self, start: usize, len: usize, end: usize, what: &'static str) {
        if start + len <= end {
            self.ranges.push((start, start + len, what));
        }
    }

    fn contains(&self, i: usize) -> bool {
        self.ranges.iter().any(|(s, e, _)| (*s..*e).contains(&i))
    }
}

/// The checksum sum over `parts` of the input equals the output's: `bytes` picks the same
/// ranges from either frame.
fn same_sum<'f>(
    input: &'f [u8],
    output: &'f [u8],
    bytes: impl Fn(&'f [u8]) -> Vec<&'f [u8]>,
) -> bool {
    ones_sum(&bytes(input)) == ones_sum(&bytes(output))
}

fn translated(lab: &Lab, obs: &Observation<'_>) -> Checked {
    let (input, output) = (obs.input, obs.output);
    if input.len() != output.len() {
        return Err("translated frame changed length".into());
    }
    let Some(i) = ipv4(input) else {
        return Err("changed a frame that is not untagged IPv4".into());
    };
    let Some(o) = ipv4(output) else {
        return Err("the output is no longer IPv4".into());
    };
    if !i.sane(input.len()) {
        return Err("translated a datagram whose header contradicts itself or the frame".into());
    }
    let end = i.end();
    let mut allowed = Allowed::new();
    if obs.hook == Hook::TcEgress {
        allowed.add(0, 12, end, "MAC addresses (egress routing)");
    }
    allowed.add(L3 + 10, 2, end, "IPv4 checksum");
    allowed.add(L3 + 12, 8, end, "IPv4 addresses");
    let outcome = match i.proto {
        IPPROTO_TCP | IPPROTO_UDP => l4_translation(lab, obs, &i, &o, &mut allowed)?,
        IPPROTO_ICMP => icmp_translation(lab, obs, &i, &o, &mut allowed)?,
        p => return Err(format!("translated IP protocol {p}")),
    };
    if let Some(at) = (0..input.len()).find(|n| input[*n] != output[*n] && !allowed.contains(*n)) {
        let place = if at >= end {
            "link padding after the datagram"
        } else {
            "the datagram"
        };
        return Err(format!(
            "byte {at} changed ({place}), which is no address, port or checksum of this translation"
        ));
    }
    if !same_sum(input, output, |f| vec![&f[L3..L3 + i.ihl]]) {
        return Err(format!(
            "IPv4 header checksum not updated exactly (the input's verified: {})",
            ones_sum(&[&input[L3..L3 + i.ihl]]) == 0xffff
        ));
    }
    if obs.hook == Hook::TcEgress
        && input[..12] != output[..12]
        && !matches!(outcome, Outcome::Dnat | Outcome::IcmpToBackend)
    {
        return Err(
            "egress rewrote MAC addresses of a packet it does not route to a backend".into(),
        );
    }
    let want = match outcome {
        Outcome::Dnat => Counter::ServicePackets,
        Outcome::ReverseNat => Counter::ReplyPackets,
        _ => Counter::IcmpErrorTranslated,
    };
    for c in TRANSLATION_COUNTERS {
        let n = u64::from(c == want);
        if obs.delta(c) != n {
            return Err(format!(
                "{outcome:?} must count {} once, counted {} {}",
                want.name(),
                c.name(),
                obs.delta(c)
            ));
        }
    }
    Ok(outcome)
}

/// Checks the L4 checksum of a TCP/UDP header at `l4` that ends its datagram at `end`:
/// the sum over pseudo-header and segment is the same in and out; a UDP 0 stays 0.
fn l4_checksum_kept(
    input: &[u8],
    output: &[u8],
    (saddr_at, daddr_at): (usize, usize),
    proto: u8,
    l4: usize,
    end: usize,
    what: &str,
) -> Result<(), String> {
    let csum = if proto == IPPROTO_TCP {
        TCP_CSUM
    } else {
        UDP_CSUM
    };
    if l4 + csum + 2 > end {
        return Ok(()); // no checksum in the bytes present (a short quote)
    }
    let (before, after) = (be16(input, l4 + csum), be16(output, l4 + csum));
    if proto == IPPROTO_UDP && before == Some(0) {
        return if after == Some(0) {
            Ok(())
        } else {
            Err(format!("{what}: a UDP checksum of 0 (none) must stay 0"))
        };
    }
    if proto == IPPROTO_UDP && after == Some(0) {
        return Err(format!("{what}: a UDP checksum became 0, which means none"));
    }
    let sum = |f: &[u8]| {
        let pseudo = pseudo_header(
            quad(f, saddr_at).expect("address"),
            quad(f, daddr_at).expect("address"),
            proto,
            end - l4,
        );
        ones_sum(&[&pseudo, &f[l4..end]])
    };
    if sum(input) != sum(output) {
        return Err(format!(
            "{what}: checksum not updated exactly (the input's verified: {})",
            sum(input) == 0xffff
        ));
    }
    Ok(())
}

fn l4_translation(
    lab: &Lab,
    obs: &Observation<'_>,
    i: &Ipv4View,
    o: &Ipv4View,
    allowed: &mut Allowed,
) -> Checked {
    let (input, output) = (obs.input, obs.output);
    let (l4, end) = (i.l4(), i.end());
    let csum = if i.proto == IPPROTO_TCP {
        TCP_CSUM
    } else {
        UDP_CSUM
    };
    if i.has_l4_header() {
        allowed.add(l4, 4, end, "ports");
        allowed.add(l4 + csum, 2, end, "L4 checksum");
        if l4 + csum + 2 > end {
            return Err("translated a datagram too short for its L4 header".into());
        }
        l4_checksum_kept(input, output, (L3 + 12, L3 + 16), i.proto, l4, end, "L4")?;
    }
    let ports = |f: &[u8]| -> Option<([u8; 2], [u8; 2])> {
        Some((
            f.get(l4..l4 + 2)?.try_into().ok()?,
            f.get(l4 + 2..l4 + 4)?.try_into().ok()?,
        ))
    };
    // Later fragments carry no ports: the datapath took them from the first fragment.
    let (in_ports, out_ports) = if i.has_l4_header() {
        (
            ports(input).expect("checked"),
            ports(output).expect("checked"),
        )
    } else {
        let key = FragKey {
            saddr: u32::from_ne_bytes(i.saddr),
            daddr: u32::from_ne_bytes(i.daddr),
            id: u16::from_ne_bytes(i.id),
            proto: i.proto,
            _pad: 0,
        };
        let Some(p) = lab.fragment_ports(&key) else {
            return Err("translated a later fragment whose first fragment is not recorded".into());
        };
        (
            (port_bytes(p.sport), port_bytes(p.dport)),
            (port_bytes(p.sport), port_bytes(p.dport)),
        )
    };
    match (i.saddr != o.saddr, i.daddr != o.daddr) {
        (false, true) => {
            if !lab.is_vip(i.daddr) || !lab.is_backend(o.daddr) {
                return Err("DNAT must rewrite a VIP to a backend".into());
            }
            let key = flow_key(i.saddr, i.daddr, in_ports.0, in_ports.1, i.proto);
            let Some(fwd) = lab.forward_entry(&key) else {
                return Err("DNAT without a KP_CT_FWD entry".into());
            };
            let sport = if fwd.alt_port != 0 {
                port_bytes(fwd.alt_port)
            } else {
                in_ports.0
            };
            let dport = port_bytes(fwd.nat_port);
            if addr_bytes(fwd.nat_addr) != o.daddr
                || (i.has_l4_header() && out_ports != (sport, dport))
            {
                return Err("DNAT disagrees with its KP_CT_FWD entry".into());
            }
            let reply = flow_key(o.daddr, i.saddr, dport, sport, i.proto);
            match lab.reply_entry(&reply) {
                Some(rev)
                    if addr_bytes(rev.nat_addr) == i.daddr
                        && port_bytes(rev.nat_port) == in_ports.1 =>
                {
                    Ok(Outcome::Dnat)
                }
                _ => Err("DNAT without its reverse path (no matching KP_CT_REV entry)".into()),
            }
        }
        (true, false) => {
            if !lab.is_backend(i.saddr) || !lab.is_vip(o.saddr) {
                return Err("reverse NAT must rewrite a backend to a VIP".into());
            }
            let key = flow_key(i.saddr, i.daddr, in_ports.0, in_ports.1, i.proto);
            let Some(rev) = lab.reply_entry(&key) else {
                return Err("reverse NAT without a KP_CT_REV entry".into());
            };
            let dport = if rev.alt_port != 0 {
                port_bytes(rev.alt_port)
            } else {
                in_ports.1
            };
            if addr_bytes(rev.nat_addr) != o.saddr
                || (i.has_l4_header() && out_ports != (port_bytes(rev.nat_port), dport))
            {
                return Err("reverse NAT disagrees with its KP_CT_REV entry".into());
            }
            Ok(Outcome::ReverseNat)
        }
        _ => Err("a translation must rewrite exactly one of source and destination".into()),
    }
}

const ICMP_ERRORS: [u8; 4] = [3, 4, 11, 12];

fn icmp_translation(
    lab: &Lab,
    obs: &Observation<'_>,
    i: &Ipv4View,
    o: &Ipv4View,
    allowed: &mut Allowed,
) -> Checked {
    let (input, output) = (obs.input, obs.output);
    let (icmp, end) = (i.l4(), i.end());
    if !i.has_l4_header() || !ICMP_ERRORS.contains(&input[icmp]) {
        return Err("translated ICMP that is not an error message".into());
    }
    let inner = icmp + 8;
    let inner_l4 = inner + 20;
    if input.get(inner) != Some(&0x45) {
        return Err("translated an ICMP error whose quote is no plain IPv4 header".into());
    }
    let proto = input[inner + 9];
    let csum = match proto {
        IPPROTO_TCP => TCP_CSUM,
        IPPROTO_UDP => UDP_CSUM,
        p => return Err(format!("translated an ICMP error quoting protocol {p}")),
    };
    allowed.add(icmp + 2, 2, end, "ICMP checksum");
    allowed.add(inner + 10, 2, end, "quoted IPv4 checksum");
    allowed.add(inner + 12, 8, end, "quoted addresses");
    allowed.add(inner_l4, 4, end, "quoted ports");
    allowed.add(inner_l4 + csum, 2, end, "quoted L4 checksum");
    if inner_l4 + 4 > end {
        return Err(
            "translated an ICMP error whose quote (per its total length) ends before the ports"
                .into(),
        );
    }
    if !same_sum(input, output, |f| vec![&f[icmp..end]]) {
        return Err(format!(
            "ICMP checksum not updated exactly (the input's verified: {})",
            ones_sum(&[&input[icmp..end]]) == 0xffff
        ));
    }
    if !same_sum(input, output, |f| vec![&f[inner..inner + 20]]) {
        return Err("quoted IPv4 header checksum not updated exactly".into());
    }
    l4_checksum_kept(
        input,
        output,
        (inner + 12, inner + 16),
        proto,
        inner_l4,
        end.min(inner_l4 + csum + 2),
        "quoted L4",
    )?;
    let before = Quoted::read(input, inner);
    let after = Quoted::read(output, inner);
    icmp_conntrack(lab, i, o, proto, &before, &after)
}

/// The tuple of the packet an ICMP error quotes.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Quoted {
    saddr: [u8; 4],
    daddr: [u8; 4],
    sport: [u8; 2],
    dport: [u8; 2],
}

impl Quoted {
    /// The tuple quoted by the IPv4 header at `inner` (followed by the ports).
    fn read(f: &[u8], inner: usize) -> Self {
        let port = |off: usize| -> [u8; 2] { [f[off], f[off + 1]] };
        Self {
            saddr: quad(f, inner + 12).expect("quote"),
            daddr: quad(f, inner + 16).expect("quote"),
            sport: port(inner + 20),
            dport: port(inner + 22),
        }
    }
}

/// An ICMP error translation agrees with conntrack: the quote becomes what the error's
/// receiver sent, and the outer address the one it expects.
fn icmp_conntrack(
    lab: &Lab,
    i: &Ipv4View,
    o: &Ipv4View,
    proto: u8,
    before: &Quoted,
    after: &Quoted,
) -> Checked {
    // The quoted packet, reversed, is the tuple of the packet that answered it.
    let answer = flow_key(
        before.daddr,
        before.saddr,
        before.dport,
        before.sport,
        proto,
    );
    match (i.saddr != o.saddr, i.daddr != o.daddr) {
        (true, false) => {
            // About a DNATed packet (client → backend): the client must see client → VIP.
            let Some(rev) = lab.reply_entry(&answer) else {
                return Err(
                    "ICMP error translated towards the client without a KP_CT_REV entry".into(),
                );
            };
            let vip = addr_bytes(rev.nat_addr);
            let want = Quoted {
                saddr: before.saddr,
                daddr: vip,
                sport: if rev.alt_port != 0 {
                    port_bytes(rev.alt_port)
                } else {
                    before.sport
                },
                dport: port_bytes(rev.nat_port),
            };
            if !lab.is_vip(vip) || o.saddr != vip || *after != want {
                return Err(
                    "ICMP error towards the client disagrees with its KP_CT_REV entry".into(),
                );
            }
            Ok(Outcome::IcmpToClient)
        }
        (false, true) => {
            // About a reverse-NATed reply (VIP → client): the backend must see backend → client.
            if !lab.is_vip(i.daddr) {
                return Err(
                    "ICMP error translated towards a backend was not addressed to a VIP".into(),
                );
            }
            let Some(fwd) = lab.forward_entry(&answer) else {
                return Err(
                    "ICMP error translated towards the backend without a KP_CT_FWD entry".into(),
                );
            };
            let backend = addr_bytes(fwd.nat_addr);
            let want = Quoted {
                saddr: backend,
                daddr: before.daddr,
                sport: port_bytes(fwd.nat_port),
                dport: if fwd.alt_port != 0 {
                    port_bytes(fwd.alt_port)
                } else {
                    before.dport
                },
            };
            if !lab.is_backend(backend) || o.daddr != backend || *after != want {
                return Err(
                    "ICMP error towards the backend disagrees with its KP_CT_FWD entry".into(),
                );
            }
            Ok(Outcome::IcmpToBackend)
        }
        _ => Err("an ICMP error translation must rewrite exactly one outer address".into()),
    }
}

/// An ICMP port unreachable or a TCP RST in place of the input, back to its sender.
fn sent_back(lab: &Lab, obs: &Observation<'_>) -> Checked {
    let (input, output) = (obs.input, obs.output);
    let Some(i) = ipv4(input) else {
        return Err("sent back an answer to a frame that is not untagged IPv4".into());
    };
    let Some(o) = ipv4(output) else {
        return Err("sent back something that is not IPv4".into());
    };
    if output[..6] != input[6..12] || output[6..12] != input[..6] {
        return Err("the answer is not addressed back to the sender's MAC".into());
    }
    if output[L3] != 0x45 || o.tot_len != output.len() - ETH_HLEN || o.is_fragment() {
        return Err("the answer's IPv4 header is malformed".into());
    }
    if ones_sum(&[&output[L3..L3 + 20]]) != 0xffff {
        return Err("the answer's IPv4 header checksum is wrong".into());
    }
    if o.saddr != i.daddr || o.daddr != i.saddr || !lab.is_vip(i.daddr) {
        return Err(
            "the answer must go from the VIP the sender addressed back to the sender".into(),
        );
    }
    if !i.sane(input.len()) || !i.has_l4_header() {
        return Err("answered a packet without a whole header to answer".into());
    }
    let answer = match (o.proto, output.len()) {
        (IPPROTO_ICMP, 70) => {
            let icmp = &output[34..];
            if (icmp[0], icmp[1]) != (3, 3) || ones_sum(&[icmp]) != 0xffff {
                return Err("the reject is not a port unreachable with an exact checksum".into());
            }
            if i.ihl != 20 || output[42..70] != input[L3..L3 + 28] {
                return Err(
                    "the reject must quote the IPv4 header and 8 bytes of the packet".into(),
                );
            }
            Outcome::Rejected
        }
        (IPPROTO_TCP, 54) => {
            let tcp = &output[34..54];
            let l4 = i.l4();
            if i.proto != IPPROTO_TCP || l4 + 14 > i.end() {
                return Err("a RST answers a TCP header".into());
            }
            if tcp[0..2] != input[l4 + 2..l4 + 4] || tcp[2..4] != input[l4..l4 + 2] {
                return Err("the RST's ports are not the segment's, swapped".into());
            }
            let pseudo = pseudo_header(o.saddr, o.daddr, IPPROTO_TCP, 20);
            if tcp[12] >> 4 != 5 || ones_sum(&[&pseudo, tcp]) != 0xffff {
                return Err("the RST's TCP header or checksum is wrong".into());
            }
            let flags = input[l4 + 13];
            let seg_len = i
                .tot_len
                .saturating_sub(i.ihl + usize::from(input[l4 + 12] >> 4) * 4)
                + usize::from(flags & TCP_SYN != 0)
                + usize::from(flags & TCP_FIN != 0);
            let seq = u32::from_be_bytes(input[l4 + 4..l4 + 8].try_into().expect("4"));
            let want: ([u8; 4], [u8; 4], u8) = if flags & TCP_ACK != 0 {
                (
                    input[l4 + 8..l4 + 12].try_into().expect("4"),
                    [0; 4],
                    TCP_RST,
                )
            } else {
                let seg = u32::try_from(seg_len).expect("small");
                (
                    [0; 4],
                    seq.wrapping_add(seg).to_be_bytes(),
                    TCP_RST | TCP_ACK,
                )
            };
            if (
                tcp[4..8].try_into().expect("4"),
                tcp[8..12].try_into().expect("4"),
                tcp[13],
            ) != want
            {
                return Err("the RST's sequence numbers or flags do not follow RFC 793".into());
            }
            Outcome::Reset
        }
        _ => return Err("sent back something that is neither a port unreachable nor a RST".into()),
    };
    let want = if answer == Outcome::Rejected {
        Counter::Rejected
    } else {
        Counter::ResetBackendGone
    };
    for c in TRANSLATION_COUNTERS {
        if obs.delta(c) != u64::from(c == want) {
            return Err(format!("{answer:?} must count {} once", want.name()));
        }
    }
    Ok(answer)
}
