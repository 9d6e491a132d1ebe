//! Packet fuzzing of the real TC and XDP programs (BPF_PROG_TEST_RUN): generated and mutated
//! frames through every program, invariants checked on every output (see fuzz/invariants.rs).
//! The bounded run here covers a fixed seed and one from the clock; `cargo xtask fuzz` runs
//! longer (KPROXY_FUZZ_SEED, KPROXY_FUZZ_ITERATIONS), KPROXY_FUZZ_REPLAY=<hex> one frame.

mod fuzz;
mod support;

use std::net::Ipv4Addr;

use kproxy::model::Protocol;
use kproxy_common::stats::{COUNTER_SLOTS, Counter};
use kproxy_testbed::require_privileges;

use fuzz::{
    CheckedRun, FIXED_SEED, Plan, campaign,
    frames::{
        ETH_HLEN, TCP_ACK, TCP_RST, TCP_SYN, Tcp, fix_ip_checksum, fragment, icmp_frame, put16,
        tcp_frame, udp_frame, unhex,
    },
    in_own_namespace,
    invariants::{Observation, Outcome, check},
    lab::{Hook, Lab, VIP_AFFINITY, VIP_BALANCED},
    replay, run_checked, say,
};
use support::{
    datapath::{B1, CLIENT, TC_ACT_SHOT, TCX_NEXT, flow_key},
    packets::{dst, src},
};

/// Frames per seed in the bounded run (each through three programs).
const BOUNDED_ITERATIONS: u64 = 20_000;

/// Counters the fixed seed's campaign of the bounded size must reach: proof that the
/// generator gets through to every branch it is meant to exercise. A seed's frames are the
/// same on every run only up to the first remapped port (the datapath's choice draws on the
/// clock, and later frames follow the flows it translated), so each of these is reached
/// several times over, not once by luck.
const MUST_REACH: [Counter; 18] = [
    Counter::ServicePackets,
    Counter::ReplyPackets,
    Counter::NewFlows,
    Counter::AffinityHits,
    Counter::Rejected,
    Counter::DropFragment,
    Counter::DropNoLocalEndpoint,
    Counter::DropCtInvalid,
    Counter::ResetBackendGone,
    Counter::FlowRebalanced,
    Counter::PortRemapped,
    Counter::IcmpErrorTranslated,
    Counter::VipIcmpNoFlow,
    Counter::VipNoServicePort,
    Counter::VipUnsupportedProtocol,
    Counter::VipVlanTagged,
    Counter::DropTruncated,
    Counter::XdpDeferred,
];

#[test]
fn fuzzed_frames_keep_every_invariant() {
    if !require_privileges("fuzzed_frames_keep_every_invariant") {
        return;
    }
    if let Ok(text) = std::env::var("KPROXY_FUZZ_REPLAY") {
        let frame = unhex(&text).expect("KPROXY_FUZZ_REPLAY is hex");
        let outcomes = in_own_namespace(move || replay(&frame));
        say(&format!("datapath fuzz: replayed frame: {outcomes:?}"));
        return;
    }
    let plan = Plan::from_env(BOUNDED_ITERATIONS);
    for seed in plan.seeds {
        say(&format!(
            "datapath fuzz: seed {seed:#x}, {} frames (KPROXY_FUZZ_SEED={seed:#x} replays it)",
            plan.iterations
        ));
        let iterations = plan.iterations;
        let report = in_own_namespace(move || campaign(seed, iterations));
        say(&report.summary());
        // The fixed seed proves that the generator reaches every branch it is meant to; other
        // seeds print what they reached (a rare branch may be missed by chance).
        if seed == FIXED_SEED && iterations >= BOUNDED_ITERATIONS {
            let missed: Vec<&str> = MUST_REACH
                .iter()
                .filter(|c| report.counter(**c) == 0)
                .map(|c| c.name())
                .collect();
            assert!(missed.is_empty(), "seed {seed:#x} never reached {missed:?}");
        }
    }
}

// Regression cases: frames the fuzzer (or its invariants) caught mishandled, each replayed
// deterministically through the checked runs.

const C: (Ipv4Addr, u16) = (CLIENT, 40_000);
const WEB: (Ipv4Addr, u16) = (VIP_BALANCED, 80);
const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);

fn syn(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) -> Vec<u8> {
    tcp_frame(
        &Tcp {
            src,
            dst,
            flags: TCP_SYN,
            seq: 1000,
            ack: 0,
            payload,
        },
        7,
    )
}

/// Runs `frame` through `hook`, checked; panics if the kernel refuses it.
fn checked(lab: &Lab, hook: Hook, frame: &[u8]) -> CheckedRun {
    run_checked(lab, hook, frame).expect("the kernel runs the frame")
}

#[test]
fn a_double_tagged_frame_to_a_vip_passes_counted() {
    if !require_privileges("a_double_tagged_frame_to_a_vip_passes_counted") {
        return;
    }
    in_own_namespace(|| {
        let lab = Lab::new();
        // QinQ: an 802.1ad tag outside, an 802.1Q tag inside, then IPv4 to a VIP.
        let mut qinq = syn(C, WEB, b"");
        qinq.splice(12..12, [0x81, 0x00, 0x00, 0x07]);
        qinq.splice(12..12, [0x88, 0xa8, 0x00, 0x64]);
        for hook in [Hook::TcIngress, Hook::Xdp] {
            let run = checked(&lab, hook, &qinq);
            assert_eq!(run.outcome, Outcome::Passed, "{hook:?}");
            assert_eq!(run.output, qinq, "{hook:?}: untouched");
            assert_eq!(run.counted(Counter::VipVlanTagged), 1, "{hook:?}: counted");
        }
    });
}

#[test]
fn an_icmp_error_quoting_less_than_the_ports_is_not_translated_from_link_padding() {
    if !require_privileges(
        "an_icmp_error_quoting_less_than_the_ports_is_not_translated_from_link_padding",
    ) {
        return;
    }
    in_own_namespace(|| {
        let lab = Lab::new();
        let query = udp_frame((CLIENT, 5353), (VIP_BALANCED, 53), b"query", 1);
        let dnated = checked(&lab, Hook::TcIngress, &query);
        assert_eq!(dnated.outcome, Outcome::Dnat);
        let quote = &dnated.output[ETH_HLEN..ETH_HLEN + 28];
        // The whole header quoted: translated.
        let whole = icmp_frame(ROUTER, CLIENT, (3, 4), [0, 0, 5, 0], quote, 2);
        assert_eq!(
            checked(&lab, Hook::TcIngress, &whole).outcome,
            Outcome::IcmpToClient
        );
        // The total length ends the quote 2 bytes into the UDP header; the frame goes on
        // with bytes that are link padding (here: the rest of that header).
        let mut short = icmp_frame(ROUTER, CLIENT, (3, 4), [0, 0, 5, 0], &quote[..22], 2);
        short.extend_from_slice(&quote[22..]);
        for hook in [Hook::TcIngress, Hook::Xdp] {
            let run = checked(&lab, hook, &short);
            assert_eq!(run.outcome, Outcome::Passed, "{hook:?}");
            assert_eq!(run.output, short, "{hook:?}: untouched");
        }
    });
}

#[test]
fn a_tcp_header_cut_by_the_total_length_is_not_translated_into_link_padding() {
    if !require_privileges(
        "a_tcp_header_cut_by_the_total_length_is_not_translated_into_link_padding",
    ) {
        return;
    }
    in_own_namespace(|| {
        let lab = Lab::new();
        // 17 bytes of TCP header in the datagram; the frame holds all 20 after it.
        let mut cut = syn(C, WEB, b"");
        put16(&mut cut, ETH_HLEN + 2, 20 + 17);
        fix_ip_checksum(&mut cut);
        for hook in [Hook::TcIngress, Hook::Xdp] {
            let run = checked(&lab, hook, &cut);
            assert_eq!(run.outcome, Outcome::Dropped, "{hook:?}");
            assert_eq!(run.counted(Counter::DropTruncated), 1, "{hook:?}");
        }
        assert_eq!(
            lab.counters()[Counter::NewFlows as usize],
            0,
            "no flow for it"
        );
    });
}

#[test]
fn a_flow_whose_backend_tuple_another_flow_took_is_not_dnated_onto_it() {
    if !require_privileges("a_flow_whose_backend_tuple_another_flow_took_is_not_dnated_onto_it") {
        return;
    }
    in_own_namespace(|| {
        let lab = Lab::new();
        let to_b1 = checked(&lab, Hook::TcIngress, &syn(C, WEB, b""));
        assert_eq!(dst(&to_b1.output), (B1, 8080));
        // B1 resets it: the flow is finished, though the client has not sent its last
        // segment yet.
        let reset = tcp_frame(
            &Tcp {
                src: (B1, 8080),
                dst: C,
                flags: TCP_RST | TCP_ACK,
                seq: 1,
                ack: 1001,
                payload: b"",
            },
            8,
        );
        assert_eq!(
            checked(&lab, Hook::TcIngress, &reset).outcome,
            Outcome::ReverseNat
        );
        // Another flow from the same client port reaches B1:8080 through the other VIP and
        // takes the finished flow's tuple.
        let other = checked(&lab, Hook::TcIngress, &syn(C, (VIP_AFFINITY, 80), b""));
        assert_eq!(other.outcome, Outcome::Dnat);
        assert_eq!((dst(&other.output), src(&other.output)), ((B1, 8080), C));
        // The first flow's next segment must not go to B1 from that tuple: its replies would
        // be translated as the other VIP's.
        let ack = tcp_frame(
            &Tcp {
                src: C,
                dst: WEB,
                flags: TCP_ACK,
                seq: 1001,
                ack: 1,
                payload: b"GET /",
            },
            8,
        );
        let run = checked(&lab, Hook::TcIngress, &ack);
        assert_eq!(run.outcome, Outcome::Dropped);
        assert_eq!(run.counted(Counter::DropCtInvalid), 1);
        // A new connection from that port starts afresh, with a reverse path of its own.
        assert_eq!(
            checked(&lab, Hook::TcIngress, &syn(C, WEB, b"")).outcome,
            Outcome::Dnat
        );
    });
}

#[test]
fn a_later_fragment_of_a_flow_whose_backend_left_gets_no_rst_from_its_payload() {
    if !require_privileges(
        "a_later_fragment_of_a_flow_whose_backend_left_gets_no_rst_from_its_payload",
    ) {
        return;
    }
    in_own_namespace(|| {
        let mut lab = Lab::new();
        let segment = syn(C, WEB, &[0x10; 40]);
        let (first, later) = (fragment(&segment, 0, 24, 9), fragment(&segment, 24, 60, 9));
        let run = checked(&lab, Hook::TcIngress, &first);
        assert_eq!((run.outcome, dst(&run.output)), (Outcome::Dnat, (B1, 8080)));
        // B1 leaves every slice of the service between the two fragments.
        lab.next_phase();
        for hook in [Hook::TcIngress, Hook::Xdp] {
            let run = checked(&lab, hook, &later);
            assert_eq!(
                run.outcome,
                Outcome::Dropped,
                "{hook:?}: no RST without a TCP header"
            );
            assert_eq!(run.counted(Counter::DropFragment), 1, "{hook:?}");
        }
    });
}

/// The invariants are not vacuous: outputs broken the ways a datapath bug would break them
/// are rejected.
#[test]
fn the_invariants_reject_broken_outputs() {
    if !require_privileges("the_invariants_reject_broken_outputs") {
        return;
    }
    in_own_namespace(|| {
        const NEXT: u32 = TCX_NEXT.cast_unsigned();
        const SHOT: u32 = TC_ACT_SHOT.cast_unsigned();
        let lab = Lab::new();
        let input = syn(C, WEB, b"payload");
        let good = checked(&lab, Hook::TcIngress, &input);
        assert_eq!(good.outcome, Outcome::Dnat);
        let judge = |verdict: u32, output: &[u8], delta: &[u64; COUNTER_SLOTS]| {
            let obs = Observation {
                hook: Hook::TcIngress,
                input: &input,
                verdict,
                output,
                delta,
            };
            check(&lab, &obs)
        };
        assert!(judge(NEXT, &good.output, &good.delta).is_ok());
        let broken = |at: usize, value: u8| {
            let mut out = good.output.clone();
            out[at] = value;
            out
        };
        let tcp = ETH_HLEN + 20;
        for (what, output) in [
            ("L4 checksum", broken(tcp + 16, good.output[tcp + 16] ^ 1)),
            (
                "IPv4 checksum",
                broken(ETH_HLEN + 10, good.output[ETH_HLEN + 10] ^ 1),
            ),
            ("payload", broken(tcp + 20, good.output[tcp + 20] ^ 1)),
            ("TTL", broken(ETH_HLEN + 8, 1)),
            ("destination no backend", broken(ETH_HLEN + 19, 99)),
            ("destination port", broken(tcp + 3, 81)),
            ("MAC", broken(0, 0xff)),
            ("length", good.output[..good.output.len() - 1].to_vec()),
        ] {
            assert!(
                judge(NEXT, &output, &good.delta).is_err(),
                "{what} accepted"
            );
        }
        let mut uncounted = good.delta;
        uncounted[Counter::ServicePackets as usize] = 0;
        assert!(
            judge(NEXT, &good.output, &uncounted).is_err(),
            "an uncounted DNAT"
        );
        let mut one_packet = [0u64; COUNTER_SLOTS];
        one_packet[Counter::Packets as usize] = 1;
        assert!(
            judge(SHOT, &input, &one_packet).is_err(),
            "a drop without a reason"
        );
        assert!(
            judge(NEXT, &input, &one_packet).is_err(),
            "a VIP packet passed uncounted"
        );
        assert!(judge(5, &input, &one_packet).is_err(), "an unknown verdict");
        let mut two_drops = one_packet;
        two_drops[Counter::DropTruncated as usize] = 1;
        two_drops[Counter::DropFragment as usize] = 1;
        assert!(judge(SHOT, &input, &two_drops).is_err(), "two drop reasons");
        // A DNAT whose reverse path is gone.
        let mut lab = lab;
        lab.remove_reply_entry(&flow_key((B1, 8080), C, Protocol::Tcp));
        let obs = Observation {
            hook: Hook::TcIngress,
            input: &input,
            verdict: NEXT,
            output: &good.output,
            delta: &good.delta,
        };
        assert!(check(&lab, &obs).is_err(), "a DNAT without its reply entry");
    });
}
