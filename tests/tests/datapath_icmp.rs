//! ICMP errors about translated flows, on hand-built packets (BPF_PROG_TEST_RUN): the quoted
//! packet and the outer header translated as netfilter's NAT does, every checksum exact.

mod support;

use std::net::Ipv4Addr;

use kproxy::model::Protocol;
use kproxy_common::stats::Counter;
use kproxy_testbed::require_privileges;
use support::{
    datapath::{B1, CLIENT, TCX_NEXT, VIP, XDP_PASS, loaded, three_backends},
    packets::{ACK, FRAG_NEEDED, PORT_UNREACHABLE, SYN, SYN_ACK, icmp_error, tcp_frame, udp_frame},
};

const C: (Ipv4Addr, u16) = (CLIENT, 40_000);
const SVC: (Ipv4Addr, u16) = (VIP, 80);
const BACKEND: (Ipv4Addr, u16) = (B1, 8080);
/// A router between the node and the backend.
const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);

#[test]
fn errors_about_dnated_packets_reach_the_client_as_if_from_the_vip() {
    if !require_privileges("errors_about_dnated_packets_reach_the_client_as_if_from_the_vip") {
        return;
    }
    let payload = [0x5a; 1200];
    for (what, proto, quote_len) in [
        ("TCP, the whole packet quoted", Protocol::Tcp, 20 + 20 + 64),
        ("TCP, IP header and 8 bytes (RFC 792)", Protocol::Tcp, 28),
        ("UDP, the whole header quoted", Protocol::Udp, 20 + 8 + 64),
    ] {
        let dp = loaded(&three_backends(proto, None));
        let packet = |src, dst| match proto {
            Protocol::Tcp => tcp_frame(src, dst, ACK, &payload),
            Protocol::Udp => udp_frame(src, dst, &payload),
        };
        if proto == Protocol::Tcp {
            dp.tc(&tcp_frame(C, SVC, SYN, b""));
            dp.tc(&tcp_frame(BACKEND, C, SYN_ACK, b""));
        }
        assert_eq!(dp.tc(&packet(C, SVC)).1, packet(C, BACKEND), "{what}: DNAT");
        // The link towards the backend is too small: a router answers the client.
        let error = icmp_error(ROUTER, CLIENT, FRAG_NEEDED, &packet(C, BACKEND), quote_len);
        let want = icmp_error(VIP, CLIENT, FRAG_NEEDED, &packet(C, SVC), quote_len);
        assert_eq!(dp.tc(&error), (TCX_NEXT, want.clone()), "{what}: TC");
        assert_eq!(dp.xdp(&error), (XDP_PASS, want), "{what}: XDP");
        assert_eq!(dp.counter(Counter::IcmpErrorTranslated), 2, "{what}");
    }
}

#[test]
fn errors_about_translated_replies_reach_the_backend() {
    if !require_privileges("errors_about_translated_replies_reach_the_backend") {
        return;
    }
    let dp = loaded(&three_backends(Protocol::Udp, None));
    dp.tc(&udp_frame(C, SVC, b"query"));
    let answer = udp_frame(BACKEND, C, b"answer");
    assert_eq!(dp.tc(&answer).1, udp_frame(SVC, C, b"answer"));
    // The client's socket is gone: its host says so, to the VIP it heard from.
    let error = icmp_error(
        CLIENT,
        VIP,
        PORT_UNREACHABLE,
        &udp_frame(SVC, C, b"answer"),
        34,
    );
    let want = icmp_error(CLIENT, B1, PORT_UNREACHABLE, &answer, 34);
    assert_eq!(dp.tc(&error), (TCX_NEXT, want.clone()));
    assert_eq!(dp.xdp(&error), (XDP_PASS, want));
    assert_eq!(dp.counter(Counter::IcmpErrorTranslated), 2);
}

#[test]
fn icmp_that_is_not_about_a_flow_passes_and_is_counted_when_for_a_vip() {
    if !require_privileges("icmp_that_is_not_about_a_flow_passes_and_is_counted_when_for_a_vip") {
        return;
    }
    let dp = loaded(&three_backends(Protocol::Udp, None));
    let stranger = (Ipv4Addr::new(198, 18, 1, 9), 9999);
    let cases = [
        (
            "an error to a VIP about no flow",
            icmp_error(
                CLIENT,
                VIP,
                PORT_UNREACHABLE,
                &udp_frame(SVC, stranger, b"0123456789"),
                36,
            ),
            Some(Counter::VipIcmpNoFlow),
        ),
        (
            "an error to a client about no flow",
            icmp_error(
                ROUTER,
                CLIENT,
                FRAG_NEEDED,
                &udp_frame(C, BACKEND, b"0123456789"),
                36,
            ),
            None,
        ),
        (
            "an echo request to a VIP (kube-proxy does not answer those either)",
            {
                let mut out = Vec::new();
                etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
                    .ipv4(CLIENT.octets(), VIP.octets(), 64)
                    .icmpv4_echo_request(1, 1)
                    .write(&mut out, b"ping")
                    .expect("echo");
                out
            },
            Some(Counter::VipUnsupportedProtocol),
        ),
        (
            "an error quoting less than the ports",
            icmp_error(
                ROUTER,
                CLIENT,
                FRAG_NEEDED,
                &udp_frame(C, BACKEND, b"x"),
                24,
            ),
            None,
        ),
    ];
    for (what, frame, counter) in cases {
        let before = counter.map(|c| dp.counter(c));
        assert_eq!(dp.tc(&frame), (TCX_NEXT, frame.clone()), "{what}");
        assert_eq!(dp.xdp(&frame), (XDP_PASS, frame.clone()), "{what}");
        if let (Some(c), Some(before)) = (counter, before) {
            assert_eq!(dp.counter(c), before + 2, "{what}: counted");
        }
    }
    assert_eq!(dp.counter(Counter::IcmpErrorTranslated), 0);
}
