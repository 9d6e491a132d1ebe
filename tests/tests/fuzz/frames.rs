//! Frames at the byte level for the fuzzer: building Ethernet/IPv4 frames with exact
//! checksums, reading their headers back without trusting them, and one's complement sums.

use std::net::Ipv4Addr;

use crate::support::packets::{CLIENT_MAC, NODE_MAC};

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;
/// Offset of the checksum in a TCP and in a UDP header.
pub const TCP_CSUM: usize = 16;
pub const UDP_CSUM: usize = 6;

/// A big-endian u16 read at `off`; `None` past the end.
pub fn be16(frame: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*frame.get(off)?, *frame.get(off + 1)?]))
}

/// Four bytes at `off`; `None` past the end.
pub fn quad(frame: &[u8], off: usize) -> Option<[u8; 4]> {
    frame.get(off..off + 4)?.try_into().ok()
}

pub fn put16(frame: &mut [u8], off: usize, value: u16) {
    frame[off..off + 2].copy_from_slice(&value.to_be_bytes());
}

/// A length that fits a 16-bit header field (frames here are far smaller).
pub fn len16(len: usize) -> u16 {
    u16::try_from(len).expect("frames are far below 64 KiB")
}

/// One's complement sum of `parts` as 16-bit big-endian words, folded (RFC 1071). Only the
/// last part may have an odd length. Zero is returned as 0xffff: both are one's complement
/// zero, and an incremental update may turn one into the other.
pub fn ones_sum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    for part in parts {
        for pair in part.chunks(2) {
            sum += u64::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let folded = u16::try_from(sum).expect("folded");
    if folded == 0 { 0xffff } else { folded }
}

/// The checksum field value that makes `parts` (with the field zeroed) sum to zero.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    !ones_sum(parts)
}

/// The TCP/UDP pseudo-header of an IPv4 datagram.
pub fn pseudo_header(saddr: [u8; 4], daddr: [u8; 4], proto: u8, l4_len: usize) -> [u8; 12] {
    let mut p = [0u8; 12];
    p[..4].copy_from_slice(&saddr);
    p[4..8].copy_from_slice(&daddr);
    p[9] = proto;
    p[10..].copy_from_slice(&len16(l4_len).to_be_bytes());
    p
}

/// What an untagged IPv4 frame's header says, read without trusting it.
#[derive(Clone, Copy, Debug)]
pub struct Ipv4View {
    pub ihl: usize,
    pub tot_len: usize,
    pub version: u8,
    pub proto: u8,
    /// Fragment offset in 8-byte units (0: a whole datagram or a first fragment).
    pub frag_offset: u16,
    pub more_fragments: bool,
    pub id: [u8; 2],
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
}

/// Offset of the IPv4 header in an untagged frame.
pub const L3: usize = ETH_HLEN;

impl Ipv4View {
    /// Offset of the L4 header.
    pub fn l4(&self) -> usize {
        L3 + self.ihl
    }

    /// Offset of the end of the datagram (where link padding would start).
    pub fn end(&self) -> usize {
        L3 + self.tot_len
    }

    /// The header agrees with itself and with the frame: version 4, IHL at least 5, a total
    /// length that holds the header and fits in the frame.
    pub fn sane(&self, frame_len: usize) -> bool {
        self.version == 4 && self.ihl >= 20 && self.tot_len >= self.ihl && self.end() <= frame_len
    }

    /// A whole datagram or a first fragment: it starts with the L4 header.
    pub fn has_l4_header(&self) -> bool {
        self.frag_offset == 0
    }

    pub fn is_fragment(&self) -> bool {
        self.frag_offset != 0 || self.more_fragments
    }
}

/// The IPv4 header of an untagged frame whose EtherType says IPv4 and that holds at least the
/// 20 bytes of a minimal header.
pub fn ipv4(frame: &[u8]) -> Option<Ipv4View> {
    if frame.len() < L3 + 20 || be16(frame, 12)? != ETH_P_IP {
        return None;
    }
    let frag = be16(frame, L3 + 6)?;
    Some(Ipv4View {
        ihl: usize::from(frame[L3] & 0x0f) * 4,
        tot_len: usize::from(be16(frame, L3 + 2)?),
        version: frame[L3] >> 4,
        proto: frame[L3 + 9],
        frag_offset: frag & 0x1fff,
        more_fragments: frag & 0x2000 != 0,
        id: [frame[L3 + 4], frame[L3 + 5]],
        saddr: quad(frame, L3 + 12)?,
        daddr: quad(frame, L3 + 16)?,
    })
}

/// The IPv4 destination of a frame, looking through up to two VLAN tags (802.1Q, 802.1ad):
/// present when the EtherType inside says IPv4 and the frame holds a minimal IPv4 header.
pub fn ipv4_destination(frame: &[u8]) -> Option<[u8; 4]> {
    let mut off = 12;
    for _ in 0..=2 {
        match be16(frame, off)? {
            ETH_P_IP => {
                let l3 = off + 2;
                return if frame.len() >= l3 + 20 {
                    quad(frame, l3 + 16)
                } else {
                    None
                };
            }
            ETH_P_8021Q | ETH_P_8021AD => off += 4,
            _ => return None,
        }
    }
    None
}

/// Recomputes the IPv4 header checksum of an untagged frame over the IHL it states (at
/// least 20 bytes, at most what the frame holds).
pub fn fix_ip_checksum(frame: &mut [u8]) {
    if frame.len() < L3 + 20 {
        return;
    }
    let ihl = (usize::from(frame[L3] & 0x0f) * 4).clamp(20, frame.len() - L3);
    put16(frame, L3 + 10, 0);
    let sum = checksum(&[&frame[L3..L3 + ihl]]);
    put16(frame, L3 + 10, sum);
}

/// Recomputes the TCP or UDP checksum of a whole datagram in an untagged frame (nothing if
/// the header does not make that possible).
pub fn fix_l4_checksum(frame: &mut [u8]) {
    let Some(ip) = ipv4(frame) else { return };
    let csum = match ip.proto {
        IPPROTO_TCP => TCP_CSUM,
        IPPROTO_UDP => UDP_CSUM,
        _ => return,
    };
    if !ip.sane(frame.len()) || ip.is_fragment() || ip.l4() + csum + 2 > ip.end() {
        return;
    }
    let (l4, end) = (ip.l4(), ip.end());
    put16(frame, l4 + csum, 0);
    let pseudo = pseudo_header(ip.saddr, ip.daddr, ip.proto, end - l4);
    let mut sum = checksum(&[&pseudo, &frame[l4..end]]);
    if ip.proto == IPPROTO_UDP && sum == 0 {
        sum = 0xffff;
    }
    put16(frame, l4 + csum, sum);
}

/// An untagged Ethernet frame holding an IPv4 datagram with `l4` as its payload, DF set,
/// checksums exact (the L4 one is the caller's).
pub fn ipv4_frame(saddr: Ipv4Addr, daddr: Ipv4Addr, proto: u8, id: u16, l4: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(L3 + 20 + l4.len());
    f.extend_from_slice(&NODE_MAC);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&ETH_P_IP.to_be_bytes());
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&len16(20 + l4.len()).to_be_bytes());
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&[0x40, 0, 64, proto, 0, 0]);
    f.extend_from_slice(&saddr.octets());
    f.extend_from_slice(&daddr.octets());
    f.extend_from_slice(l4);
    fix_ip_checksum(&mut f);
    f
}

/// A TCP segment in a frame, checksums exact.
pub struct Tcp<'a> {
    pub src: (Ipv4Addr, u16),
    pub dst: (Ipv4Addr, u16),
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub payload: &'a [u8],
}

pub fn tcp_frame(t: &Tcp<'_>, id: u16) -> Vec<u8> {
    let mut l4 = Vec::with_capacity(20 + t.payload.len());
    l4.extend_from_slice(&t.src.1.to_be_bytes());
    l4.extend_from_slice(&t.dst.1.to_be_bytes());
    l4.extend_from_slice(&t.seq.to_be_bytes());
    l4.extend_from_slice(&t.ack.to_be_bytes());
    l4.extend_from_slice(&[5 << 4, t.flags, 0xfa, 0xf0, 0, 0, 0, 0]);
    l4.extend_from_slice(t.payload);
    let mut f = ipv4_frame(t.src.0, t.dst.0, IPPROTO_TCP, id, &l4);
    fix_l4_checksum(&mut f);
    f
}

pub fn udp_frame(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8], id: u16) -> Vec<u8> {
    let mut l4 = Vec::with_capacity(8 + payload.len());
    l4.extend_from_slice(&src.1.to_be_bytes());
    l4.extend_from_slice(&dst.1.to_be_bytes());
    l4.extend_from_slice(&len16(8 + payload.len()).to_be_bytes());
    l4.extend_from_slice(&[0, 0]);
    l4.extend_from_slice(payload);
    let mut f = ipv4_frame(src.0, dst.0, IPPROTO_UDP, id, &l4);
    fix_l4_checksum(&mut f);
    f
}

/// An ICMP message `kind` (type, code) with the 4 bytes after the checksum `rest` and `body`.
pub fn icmp_frame(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    kind: (u8, u8),
    rest: [u8; 4],
    body: &[u8],
    id: u16,
) -> Vec<u8> {
    let mut l4 = vec![kind.0, kind.1, 0, 0];
    l4.extend_from_slice(&rest);
    l4.extend_from_slice(body);
    let sum = checksum(&[&l4]);
    put16(&mut l4, 2, sum);
    ipv4_frame(src, dst, IPPROTO_ICMP, id, &l4)
}

/// The fragment of the untagged, option-less IPv4 datagram in `whole` that carries bytes
/// `start..end` of its payload (`start` a multiple of 8), with IP id `id`.
pub fn fragment(whole: &[u8], start: usize, end: usize, id: u16) -> Vec<u8> {
    let payload_len = whole.len() - L3 - 20;
    let mut frag = whole[..L3 + 20].to_vec();
    frag.extend_from_slice(&whole[L3 + 20 + start..L3 + 20 + end]);
    put16(&mut frag, L3 + 2, len16(20 + end - start));
    put16(&mut frag, L3 + 4, id);
    let more = if end < payload_len { 0x2000 } else { 0 };
    put16(&mut frag, L3 + 6, len16(start / 8) | more);
    fix_ip_checksum(&mut frag);
    frag
}

/// Lowercase hex of `bytes`, for replaying a frame.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The bytes of a hex string (whitespace ignored).
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}
