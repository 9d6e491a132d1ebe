//! The seeded frame generator: families of frames the datapath must handle (service traffic
//! to VIPs, backend replies to the flows it created, ICMP errors quoting translated and
//! untranslated flows, other protocols, random bytes), then mutated (IP options, bad IHL,
//! total length and version, random flags and fragment offsets, VLAN tags, padding,
//! truncation, flipped bytes), and sweeps queued whole: one frame truncated at every length,
//! the fragments of one datagram in every order, one ICMP error with its quote cut at every
//! length.

use std::{collections::VecDeque, net::Ipv4Addr};

use fastrand::Rng;

use super::{
    frames::{
        ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, L3,
        TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, Tcp, be16, fix_ip_checksum, fix_l4_checksum, fragment,
        icmp_frame, ipv4, len16, put16, tcp_frame, udp_frame,
    },
    lab::{BACKENDS, NOT_A_VIP, VIP_AFFINITY, VIP_BALANCED, VIP_EMPTY, VIP_LOCAL, VIP_SHARED},
};
use crate::support::datapath::{B1, CLIENT, OTHER_CLIENT};

/// A third client, on the external link of the reference topology.
const EXTERNAL: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 2);
const CLIENTS: [Ipv4Addr; 3] = [CLIENT, OTHER_CLIENT, EXTERNAL];
/// A router between the node and the backends, which sends ICMP errors.
const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);

/// Where clients send: every service port, ports and protocols a VIP does not serve, an
/// address in the VIP range that is no VIP, and a pod directly.
const TARGETS: [(Ipv4Addr, u16, u8); 13] = [
    (VIP_BALANCED, 80, IPPROTO_TCP),
    (VIP_SHARED, 80, IPPROTO_TCP),
    (VIP_BALANCED, 53, IPPROTO_UDP),
    (VIP_AFFINITY, 80, IPPROTO_TCP),
    (VIP_AFFINITY, 53, IPPROTO_UDP),
    (VIP_EMPTY, 80, IPPROTO_TCP),
    (VIP_EMPTY, 53, IPPROTO_UDP),
    (VIP_LOCAL, 80, IPPROTO_TCP),
    (VIP_BALANCED, 81, IPPROTO_TCP),
    (VIP_BALANCED, 80, IPPROTO_UDP),
    (VIP_LOCAL, 53, IPPROTO_UDP),
    (NOT_A_VIP, 80, IPPROTO_TCP),
    (B1, 8080, IPPROTO_TCP),
];

/// A flow the datapath translated, remembered so that replies and ICMP errors can be about it.
#[derive(Clone, Copy, Debug)]
pub struct SeenFlow {
    pub proto: u8,
    pub client: Ipv4Addr,
    /// The client's own port, and the one its packets carry towards the backend.
    pub client_port: u16,
    pub sent_port: u16,
    pub vip: Ipv4Addr,
    pub vip_port: u16,
    pub backend: Ipv4Addr,
    pub backend_port: u16,
}

const FLOW_MEMORY: usize = 256;

pub struct Generator {
    pub rng: Rng,
    queue: VecDeque<Vec<u8>>,
    flows: Vec<SeenFlow>,
    next_flow: usize,
    ip_id: u16,
}

impl Generator {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: Rng::with_seed(seed),
            queue: VecDeque::new(),
            flows: Vec::with_capacity(FLOW_MEMORY),
            next_flow: 0,
            ip_id: 1,
        }
    }

    /// Remembers a translated flow (the most recent `FLOW_MEMORY` flows are kept; a flow
    /// seen again is updated in place).
    pub fn remember(&mut self, flow: SeenFlow) {
        let same = |f: &SeenFlow| {
            (f.proto, f.client, f.client_port, f.vip, f.vip_port)
                == (
                    flow.proto,
                    flow.client,
                    flow.client_port,
                    flow.vip,
                    flow.vip_port,
                )
        };
        if let Some(known) = self.flows.iter_mut().find(|f| same(f)) {
            *known = flow;
        } else if self.flows.len() < FLOW_MEMORY {
            self.flows.push(flow);
        } else {
            self.flows[self.next_flow] = flow;
            self.next_flow = (self.next_flow + 1) % FLOW_MEMORY;
        }
    }

    /// After the endpoint set changed: every remembered flow sends once more (an ACK for
    /// TCP), so the flows whose backend left or stopped being ready meet the change (a reset,
    /// a move) on every run, not only when chance picks them before they are forgotten.
    pub fn endpoints_changed(&mut self) {
        let flows = self.flows.clone();
        for f in flows {
            let (client, vip) = ((f.client, f.client_port), (f.vip, f.vip_port));
            let frame = if f.proto == IPPROTO_TCP {
                self.tcp_with(TCP_ACK, client, vip, 64)
            } else {
                self.udp(client, vip, 64)
            };
            self.queue.push_back(frame);
        }
    }

    /// The next frame to run.
    pub fn next_frame(&mut self) -> Vec<u8> {
        if let Some(frame) = self.queue.pop_front() {
            return frame;
        }
        // Sweeps queue dozens of frames each, so they are picked rarely.
        let mut frame = match self.rng.u32(..200) {
            0..36 => self.service_tcp(),
            36..60 => self.service_udp(),
            60..90 => self.continue_flow(),
            90..120 => self.reply(),
            120..140 => self.icmp_error(),
            140..145 => self.other_ipv4(),
            145..150 => self.not_ipv4(),
            150..162 => return self.random_bytes(),
            162..164 => {
                self.truncation_sweep();
                return self.queue.pop_front().expect("queued");
            }
            164..172 => {
                self.fragments_in_every_order();
                return self.queue.pop_front().expect("queued");
            }
            172..174 => {
                self.quote_truncation_sweep();
                return self.queue.pop_front().expect("queued");
            }
            _ => self.service_or_reply(),
        };
        if self.rng.bool() {
            for _ in 0..self.rng.usize(1..=3) {
                self.mutate(&mut frame);
            }
        }
        frame
    }

    fn id(&mut self) -> u16 {
        self.ip_id = self.ip_id.wrapping_add(1);
        self.ip_id
    }

    fn payload(&mut self, max: usize) -> Vec<u8> {
        let len = if self.rng.u8(..8) == 0 {
            self.rng.usize(..=max)
        } else {
            self.rng.usize(..=32.min(max))
        };
        let mut p = vec![0u8; len];
        self.rng.fill(&mut p);
        p
    }

    fn client(&mut self) -> (Ipv4Addr, u16) {
        let addr = CLIENTS[self.rng.usize(..CLIENTS.len())];
        // A few ports, so that flows come back; sometimes any port.
        let port = if self.rng.u8(..3) == 0 {
            self.rng.u16(1..)
        } else {
            40_000 + self.rng.u16(..12)
        };
        (addr, port)
    }

    fn tcp_flags(&mut self) -> u8 {
        match self.rng.u8(..20) {
            0..6 => TCP_SYN,
            6..11 => TCP_ACK,
            11..13 => TCP_ACK | 0x08,
            13..15 => TCP_FIN | TCP_ACK,
            15 => TCP_RST,
            16 => TCP_RST | TCP_ACK,
            17 => TCP_SYN | TCP_ACK,
            _ => self.rng.u8(..),
        }
    }

    fn tcp(&mut self, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload_max: usize) -> Vec<u8> {
        let flags = self.tcp_flags();
        self.tcp_with(flags, src, dst, payload_max)
    }

    fn tcp_with(
        &mut self,
        flags: u8,
        src: (Ipv4Addr, u16),
        dst: (Ipv4Addr, u16),
        payload_max: usize,
    ) -> Vec<u8> {
        let payload = self.payload(payload_max);
        let (seq, ack) = (self.rng.u32(..), self.rng.u32(..));
        let id = self.id();
        tcp_frame(
            &Tcp {
                src,
                dst,
                flags,
                seq,
                ack,
                payload: &payload,
            },
            id,
        )
    }

    fn udp(&mut self, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload_max: usize) -> Vec<u8> {
        let payload = self.payload(payload_max);
        let id = self.id();
        udp_frame(src, dst, &payload, id)
    }

    fn l4(
        &mut self,
        proto: u8,
        src: (Ipv4Addr, u16),
        dst: (Ipv4Addr, u16),
        payload_max: usize,
    ) -> Vec<u8> {
        if proto == IPPROTO_TCP {
            self.tcp(src, dst, payload_max)
        } else {
            self.udp(src, dst, payload_max)
        }
    }

    fn target(&mut self, proto: Option<u8>) -> (Ipv4Addr, u16, u8) {
        loop {
            let t = TARGETS[self.rng.usize(..TARGETS.len())];
            if proto.is_none_or(|p| p == t.2) {
                return t;
            }
        }
    }

    /// A client's TCP segment towards a service (or a near miss).
    fn service_tcp(&mut self) -> Vec<u8> {
        let (vip, port, _) = self.target(Some(IPPROTO_TCP));
        let client = self.client();
        self.tcp(client, (vip, port), 1400)
    }

    fn service_udp(&mut self) -> Vec<u8> {
        let (vip, port, _) = self.target(Some(IPPROTO_UDP));
        let client = self.client();
        self.udp(client, (vip, port), 1400)
    }

    fn service_or_reply(&mut self) -> Vec<u8> {
        match self.rng.u8(..4) {
            0 => self.service_tcp(),
            1 => self.service_udp(),
            2 => self.continue_flow(),
            _ => self.reply(),
        }
    }

    /// The client's next packet on a flow the datapath translated: data, FIN, RST, a
    /// retransmitted SYN; or the same client port towards another service port.
    fn continue_flow(&mut self) -> Vec<u8> {
        let Some(f) = self.seen_flow() else {
            return self.service_tcp();
        };
        let client = (f.client, f.client_port);
        let vip = match self.rng.u8(..6) {
            0 => {
                let (vip, port, _) = self.target(Some(f.proto));
                (vip, port)
            }
            // The same client port to another VIP with a backend in common: the backend
            // would see one connection for two flows unless the datapath remaps the port.
            1 | 2 if f.vip == VIP_BALANCED && f.vip_port == 80 => (
                if self.rng.bool() {
                    VIP_SHARED
                } else {
                    VIP_AFFINITY
                },
                80,
            ),
            1 | 2 if f.vip_port == 80 && (f.vip == VIP_AFFINITY || f.vip == VIP_SHARED) => {
                (VIP_BALANCED, 80)
            }
            _ => (f.vip, f.vip_port),
        };
        if f.proto == IPPROTO_UDP {
            return self.udp(client, vip, 600);
        }
        let flags = match self.rng.u8(..10) {
            0..4 => TCP_ACK,
            4..6 => TCP_ACK | 0x08,
            6 => TCP_FIN | TCP_ACK,
            7 => TCP_RST,
            _ => TCP_SYN,
        };
        self.tcp_with(flags, client, vip, 600)
    }

    fn seen_flow(&mut self) -> Option<SeenFlow> {
        if self.flows.is_empty() {
            return None;
        }
        Some(self.flows[self.rng.usize(..self.flows.len())])
    }

    /// A backend's reply to a flow the datapath created, or to a tuple it does not know.
    fn reply(&mut self) -> Vec<u8> {
        match self.seen_flow() {
            Some(f) if self.rng.u8(..8) != 0 => self.l4(
                f.proto,
                (f.backend, f.backend_port),
                (f.client, f.sent_port),
                1400,
            ),
            _ => {
                let backend = BACKENDS[self.rng.usize(..BACKENDS.len())];
                let client = self.client();
                if self.rng.bool() {
                    self.tcp((backend, 8080), client, 64)
                } else {
                    self.udp((backend, 5353), client, 64)
                }
            }
        }
    }

    /// An ICMP error type and code (sometimes a message that is no error).
    fn icmp_kind(&mut self) -> (u8, u8) {
        match self.rng.u8(..20) {
            0..10 => (3, self.rng.u8(..16)),
            10..13 => (11, self.rng.u8(..2)),
            13..15 => (12, 0),
            15 => (4, 0),
            16 => (8, 0),
            17 => (0, 0),
            _ => (self.rng.u8(..), self.rng.u8(..)),
        }
    }

    /// An ICMP error (source, destination, the offending frame it quotes): about a packet
    /// the datapath DNATed, sent to the client; about a reply it translated, sent to the VIP;
    /// or about a tuple it never saw.
    fn icmp_error_parts(&mut self) -> (Ipv4Addr, Ipv4Addr, Vec<u8>) {
        let flow = self.seen_flow();
        match (flow, self.rng.u8(..5)) {
            (Some(f), 0..2) => {
                let from = if self.rng.bool() { ROUTER } else { f.backend };
                let offending = self.l4(
                    f.proto,
                    (f.client, f.sent_port),
                    (f.backend, f.backend_port),
                    64,
                );
                (from, f.client, offending)
            }
            (Some(f), 2..4) => {
                let offending =
                    self.l4(f.proto, (f.vip, f.vip_port), (f.client, f.client_port), 64);
                (f.client, f.vip, offending)
            }
            _ => {
                let (vip, port, proto) = self.target(None);
                let client = self.client();
                if self.rng.bool() {
                    let offending = self.l4(proto, (vip, port), client, 64);
                    (client.0, vip, offending)
                } else {
                    let backend = BACKENDS[self.rng.usize(..BACKENDS.len())];
                    let offending = self.l4(proto, client, (backend, 8080), 64);
                    (ROUTER, client.0, offending)
                }
            }
        }
    }

    fn icmp_error(&mut self) -> Vec<u8> {
        let (src, dst, offending) = self.icmp_error_parts();
        let whole = offending.len() - ETH_HLEN;
        let quote = match self.rng.u8(..10) {
            0..3 => 28.min(whole),
            3..7 => whole,
            _ => self.rng.usize(..=whole),
        };
        let kind = self.icmp_kind();
        let rest = [0, 0, 0x05, 0x00]; // a next-hop MTU of 1280 for "fragmentation needed"
        let id = self.id();
        icmp_frame(
            src,
            dst,
            kind,
            rest,
            &offending[ETH_HLEN..ETH_HLEN + quote],
            id,
        )
    }

    /// One ICMP error with its quote cut at every length, each a complete frame; sometimes
    /// followed by link padding the total length does not count.
    fn quote_truncation_sweep(&mut self) {
        let (src, dst, offending) = self.icmp_error_parts();
        let kind = (3, self.rng.u8(..16));
        let padding = if self.rng.u8(..3) == 0 {
            self.rng.usize(1..=48)
        } else {
            0
        };
        let whole = (offending.len() - ETH_HLEN).min(20 + 20 + 16);
        for quote in 0..=whole {
            let id = self.id();
            let mut frame = icmp_frame(
                src,
                dst,
                kind,
                [0; 4],
                &offending[ETH_HLEN..ETH_HLEN + quote],
                id,
            );
            frame.resize(frame.len() + padding, 0);
            self.queue.push_back(frame);
        }
    }

    /// A frame (maybe mutated once) truncated at every length from 0 to its own.
    fn truncation_sweep(&mut self) {
        let mut frame = match self.rng.u8(..4) {
            0 => {
                let (vip, port, proto) = self.target(None);
                let client = self.client();
                self.l4(proto, client, (vip, port), 24)
            }
            1 => match self.seen_flow() {
                Some(f) => self.l4(
                    f.proto,
                    (f.backend, f.backend_port),
                    (f.client, f.sent_port),
                    24,
                ),
                None => self.service_udp(),
            },
            2 => {
                let (src, dst, offending) = self.icmp_error_parts();
                let quote = (offending.len() - ETH_HLEN).min(48);
                let id = self.id();
                icmp_frame(
                    src,
                    dst,
                    (3, 4),
                    [0; 4],
                    &offending[ETH_HLEN..ETH_HLEN + quote],
                    id,
                )
            }
            _ => self.service_tcp(),
        };
        frame.truncate(L3 + 20 + 20 + 24 + 60);
        if self.rng.bool() {
            self.mutate(&mut frame);
        }
        for len in 0..=frame.len() {
            self.queue.push_back(frame[..len].to_vec());
        }
    }

    /// One datagram split into 2 to 4 fragments, queued in every order (a fresh IP id for
    /// each order), sometimes with a fragment repeated or missing.
    fn fragments_in_every_order(&mut self) {
        let whole = match (self.seen_flow(), self.rng.u8(..4)) {
            (Some(f), 0) => {
                let payload = 16 + self.rng.usize(..120);
                self.l4_with_payload(
                    f.proto,
                    (f.backend, f.backend_port),
                    (f.client, f.sent_port),
                    payload,
                )
            }
            _ => {
                let (vip, port, proto) = self.target(None);
                let client = self.client();
                let payload = 16 + self.rng.usize(..120);
                self.l4_with_payload(proto, client, (vip, port), payload)
            }
        };
        let l4_len = whole.len() - L3 - 20;
        let cuts_possible: Vec<usize> = (8..l4_len).step_by(8).collect();
        let pieces = self.rng.usize(2..=4).min(cuts_possible.len() + 1);
        let mut cuts = self.rng.choose_multiple(cuts_possible, pieces - 1);
        cuts.sort_unstable();
        let mut bounds = vec![0];
        bounds.extend(cuts);
        bounds.push(l4_len);
        let orders: Vec<Vec<usize>> = if pieces <= 3 {
            permutations(pieces)
        } else {
            (0..4)
                .map(|_| {
                    let mut o: Vec<usize> = (0..pieces).collect();
                    self.rng.shuffle(&mut o);
                    o
                })
                .collect()
        };
        for mut order in orders {
            match self.rng.u8(..10) {
                0 | 1 => order.push(order[self.rng.usize(..order.len())]),
                2 => {
                    order.remove(self.rng.usize(..order.len()));
                }
                _ => {}
            }
            let id = self.id();
            for piece in order {
                self.queue
                    .push_back(fragment(&whole, bounds[piece], bounds[piece + 1], id));
            }
        }
    }

    fn l4_with_payload(
        &mut self,
        proto: u8,
        src: (Ipv4Addr, u16),
        dst: (Ipv4Addr, u16),
        len: usize,
    ) -> Vec<u8> {
        let mut payload = vec![0u8; len];
        self.rng.fill(&mut payload);
        let id = self.id();
        if proto == IPPROTO_TCP {
            let flags = self.tcp_flags();
            tcp_frame(
                &Tcp {
                    src,
                    dst,
                    flags,
                    seq: self.rng.u32(..),
                    ack: self.rng.u32(..),
                    payload: &payload,
                },
                id,
            )
        } else {
            udp_frame(src, dst, &payload, id)
        }
    }

    /// IPv4 of another protocol than TCP and UDP: echo requests, SCTP, GRE, anything.
    fn other_ipv4(&mut self) -> Vec<u8> {
        let dst = if self.rng.u8(..4) == 0 {
            NOT_A_VIP
        } else {
            self.target(None).0
        };
        let src = self.client().0;
        let id = self.id();
        let payload = self.payload(64);
        match self.rng.u8(..4) {
            0 => icmp_frame(src, dst, (8, 0), [0, 1, 0, 1], &payload, id),
            1 => super::frames::ipv4_frame(src, dst, 132, id, &payload),
            2 => super::frames::ipv4_frame(src, dst, 47, id, &payload),
            _ => {
                let proto = loop {
                    let p = self.rng.u8(..);
                    if ![IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP].contains(&p) {
                        break p;
                    }
                };
                super::frames::ipv4_frame(src, dst, proto, id, &payload)
            }
        }
    }

    /// ARP, IPv6, other EtherTypes.
    fn not_ipv4(&mut self) -> Vec<u8> {
        let (ethertype, len) = match self.rng.u8(..3) {
            0 => (0x0806, 28),
            1 => (0x86dd, 40 + self.rng.usize(..64)),
            _ => (self.rng.u16(..), self.rng.usize(..100)),
        };
        let mut frame = vec![0u8; ETH_HLEN + len];
        self.rng.fill(&mut frame);
        put16(&mut frame, 12, ethertype);
        frame
    }

    /// Random bytes, often with an IPv4 EtherType, a VIP destination, a plausible first byte.
    fn random_bytes(&mut self) -> Vec<u8> {
        let len = if self.rng.u8(..4) == 0 {
            self.rng.usize(..600)
        } else {
            self.rng.usize(..80)
        };
        let mut frame = vec![0u8; len];
        self.rng.fill(&mut frame);
        if len >= ETH_HLEN && self.rng.u8(..5) < 3 {
            put16(&mut frame, 12, ETH_P_IP);
        }
        if len > L3 && self.rng.bool() {
            frame[L3] = 0x45;
        }
        if len > L3 + 9 && self.rng.bool() {
            frame[L3 + 9] = [IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP][self.rng.usize(..3)];
        }
        if len >= L3 + 20 && self.rng.u8(..5) < 2 {
            let vip = self.target(None).0;
            frame[L3 + 16..L3 + 20].copy_from_slice(&vip.octets());
        }
        frame
    }

    /// Applies one random mutation.
    fn mutate(&mut self, frame: &mut Vec<u8>) {
        let ip = ipv4(frame);
        match (self.rng.u8(..17), ip) {
            (0 | 1, Some(ip)) if ip.ihl == 20 => self.add_ip_options(frame),
            (2, Some(_)) => {
                frame[L3] = (frame[L3] & 0xf0) | self.rng.u8(..16);
                if self.rng.bool() {
                    fix_ip_checksum(frame);
                }
            }
            (3, Some(ip)) => {
                let tot = match self.rng.u8(..5) {
                    0 => self.rng.u16(..),
                    1 => self.rng.u16(..40),
                    2 => len16(ip.ihl + self.rng.usize(..24)),
                    _ => len16(frame.len() - L3)
                        .wrapping_add(self.rng.u16(..16))
                        .wrapping_sub(8),
                };
                put16(frame, L3 + 2, tot);
                if self.rng.u8(..5) != 0 {
                    fix_ip_checksum(frame);
                }
            }
            (4, Some(_)) => {
                frame[L3] = (self.rng.u8(..16) << 4) | (frame[L3] & 0x0f);
                if self.rng.u8(..5) != 0 {
                    fix_ip_checksum(frame);
                }
            }
            (5 | 6, Some(_)) => {
                let flags = [0, 0x2000, 0x4000, 0x8000][self.rng.usize(..4)];
                let offset = match self.rng.u8(..3) {
                    0 => 0,
                    1 => self.rng.u16(1..8),
                    _ => self.rng.u16(..0x2000),
                };
                put16(frame, L3 + 6, flags | offset);
                if self.rng.u8(..10) != 0 {
                    fix_ip_checksum(frame);
                }
            }
            (7 | 8, _) => self.add_vlan_tags(frame),
            (9, _) => {
                let mut pad = vec![0u8; self.rng.usize(1..=64)];
                if self.rng.bool() {
                    self.rng.fill(&mut pad);
                }
                frame.extend_from_slice(&pad);
            }
            (10, _) => frame.truncate(self.rng.usize(..=frame.len())),
            (11, _) if !frame.is_empty() => {
                for _ in 0..self.rng.usize(1..=4) {
                    let at = self.rng.usize(..frame.len());
                    frame[at] = self.rng.u8(..);
                }
            }
            (12, Some(ip)) if ip.proto == IPPROTO_TCP && frame.len() >= ip.l4() + 14 => {
                frame[ip.l4() + 13] = self.rng.u8(..);
                if self.rng.u8(..4) != 0 {
                    fix_l4_checksum(frame);
                }
            }
            (13, Some(ip)) if ip.proto == IPPROTO_TCP && frame.len() >= ip.l4() + 14 => {
                frame[ip.l4() + 12] = self.rng.u8(..16) << 4;
                if self.rng.bool() {
                    fix_l4_checksum(frame);
                }
            }
            (14, Some(ip)) if ip.proto == IPPROTO_UDP && frame.len() >= ip.l4() + 8 => {
                if self.rng.bool() {
                    put16(frame, ip.l4() + 6, 0); // no checksum
                } else {
                    let len = self.rng.u16(..);
                    put16(frame, ip.l4() + 4, len);
                    fix_l4_checksum(frame);
                }
            }
            (15, Some(ip)) => {
                // A wrong L4 checksum (the datapath must keep it wrong, not make it right).
                let at = ip.l4() + if ip.proto == IPPROTO_UDP { 6 } else { 16 };
                if let Some(b) = frame.get_mut(at) {
                    *b ^= 1 << self.rng.u8(..8);
                }
            }
            (16, _) if frame.len() >= ETH_HLEN => {
                let ethertype = [0x0806, 0x86dd, 0x8847, ETH_P_IP][self.rng.usize(..4)];
                put16(frame, 12, ethertype);
            }
            _ => {
                // TTL and TOS, the header kept consistent.
                if frame.len() >= L3 + 20 && be16(frame, 12) == Some(ETH_P_IP) {
                    frame[L3 + 8] = self.rng.u8(..);
                    frame[L3 + 1] = self.rng.u8(..);
                    fix_ip_checksum(frame);
                }
            }
        }
    }

    /// Inserts 4 to 40 bytes of IP options after a plain header: NOPs ending in EOL, random
    /// bytes, or a record-route option.
    fn add_ip_options(&mut self, frame: &mut Vec<u8>) {
        let words = self.rng.usize(1..=10);
        let mut options = vec![0u8; words * 4];
        match self.rng.u8(..3) {
            0 => {
                options.fill(1);
                *options.last_mut().expect("not empty") = 0;
            }
            1 => self.rng.fill(&mut options),
            _ => {
                options[0] = 7;
                options[1] = u8::try_from(options.len() - 1).expect("small");
                options[2] = 4;
            }
        }
        let tot = be16(frame, L3 + 2)
            .expect("IPv4")
            .wrapping_add(len16(options.len()));
        frame.splice(L3 + 20..L3 + 20, options);
        frame[L3] = 0x40 | u8::try_from(5 + words).expect("small");
        put16(frame, L3 + 2, tot);
        fix_ip_checksum(frame);
    }

    /// Inserts one or two VLAN tags (802.1Q, 802.1ad) after the MAC addresses.
    fn add_vlan_tags(&mut self, frame: &mut Vec<u8>) {
        if frame.len() < 12 {
            return;
        }
        for _ in 0..self.rng.usize(1..=2) {
            let tpid = if self.rng.bool() {
                ETH_P_8021Q
            } else {
                ETH_P_8021AD
            };
            let mut tag = tpid.to_be_bytes().to_vec();
            tag.extend_from_slice(&self.rng.u16(..).to_be_bytes());
            frame.splice(12..12, tag);
        }
    }
}

/// Every order of `n` pieces (n at most 3 here: 6 orders).
fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![Vec::new()];
    }
    let mut out = Vec::new();
    for rest in permutations(n - 1) {
        for at in 0..=rest.len() {
            let mut p = rest.clone();
            p.insert(at, n - 1);
            out.push(p);
        }
    }
    out
}
