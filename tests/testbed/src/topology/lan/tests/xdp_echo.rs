//! A tiny XDP program for checking the bed itself, not kproxy: it sends UDP datagrams for one
//! port back where they came from with XDP_TX, MACs, addresses and ports swapped.
//!
//! Swapping leaves every checksum valid (a one's complement sum does not depend on order), so
//! the echo reaches the sender only if the datagram's checksum was complete when XDP saw it.

use std::io;
use std::os::fd::OwnedFd;

use crate::bpfsys::{EXIT, Insn, MOV_K, XDP_PASS, XDP_TX, load_xdp};

/// Opcodes: loads and stores of 8, 16 and 32 bits, 64-bit moves and adds, jumps.
const LDX_B: u8 = 0x71;
const LDX_H: u8 = 0x69;
const LDX_W: u8 = 0x61;
const STX_H: u8 = 0x6b;
const STX_W: u8 = 0x63;
const MOV_X: u8 = 0xbf;
const ADD_K: u8 = 0x07;
const JGT_X: u8 = 0x2d;
const JNE_K: u8 = 0x55;
/// Jump offset to fill in once the `pass` label is known.
const TO_PASS: i16 = i16::MIN;

/// Loads the program: XDP_TX for IPv4 (no options) UDP to `port` with the pairs swapped,
/// XDP_PASS for anything else.
pub fn load_udp_echo(port: u16) -> io::Result<OwnedFd> {
    load_xdp("kpt_udp_echo", &udp_echo(port))
}

fn udp_echo(port: u16) -> Vec<Insn> {
    let insn = Insn::new;
    // Immediates compare with 16-bit loads, which read network order as the host's.
    let ipv4 = i32::from(u16::from_ne_bytes([0x08, 0x00]));
    let port = i32::from(u16::from_ne_bytes(port.to_be_bytes()));
    let mut prog = vec![
        insn(LDX_W, 2, 1, 0, 0), // r2 = ctx->data
        insn(LDX_W, 3, 1, 4, 0), // r3 = ctx->data_end
        insn(MOV_X, 4, 2, 0, 0),
        insn(ADD_K, 4, 0, 0, 42), // Ethernet 14 + IPv4 20 + UDP 8
        insn(JGT_X, 4, 3, TO_PASS, 0),
        insn(LDX_H, 5, 2, 12, 0), // EtherType
        insn(JNE_K, 5, 0, TO_PASS, ipv4),
        insn(LDX_B, 5, 2, 14, 0), // version and header length
        insn(JNE_K, 5, 0, TO_PASS, 0x45),
        insn(LDX_B, 5, 2, 23, 0), // protocol
        insn(JNE_K, 5, 0, TO_PASS, 17),
        insn(LDX_H, 5, 2, 36, 0), // destination port
        insn(JNE_K, 5, 0, TO_PASS, port),
    ];
    // Destination and source MAC (as 4 + 2 bytes each), addresses, ports.
    for (load, store, a, b) in [
        (LDX_W, STX_W, 0, 6),
        (LDX_H, STX_H, 4, 10),
        (LDX_W, STX_W, 26, 30),
        (LDX_H, STX_H, 34, 36),
    ] {
        prog.extend([
            insn(load, 5, 2, a, 0),
            insn(load, 7, 2, b, 0),
            insn(store, 2, 7, a, 0),
            insn(store, 2, 5, b, 0),
        ]);
    }
    prog.extend([insn(MOV_K, 0, 0, 0, XDP_TX), insn(EXIT, 0, 0, 0, 0)]);
    let pass = prog.len();
    prog.extend([insn(MOV_K, 0, 0, 0, XDP_PASS), insn(EXIT, 0, 0, 0, 0)]);
    for (i, ins) in prog.iter_mut().enumerate() {
        if ins.off == TO_PASS && matches!(ins.code, JGT_X | JNE_K) {
            ins.off = i16::try_from(pass - i - 1).expect("a short program");
        }
    }
    prog
}
