//! Packet fuzzing of the real TC and XDP programs through BPF_PROG_TEST_RUN: seeded frames
//! (`generate`) run through every program of a datapath programmed so that its branches are
//! reachable (`lab`), each run checked against the invariants (`invariants`). A violation stops the
//! run with the seed, the iteration and the frame in hex, so it can be replayed.

pub mod frames;
pub mod generate;
pub mod invariants;
pub mod lab;

use std::{
    io::Write,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use kproxy_common::stats::{COUNTER_SLOTS, Counter};

use frames::{hex, ipv4};
use generate::{Generator, SeenFlow};
use invariants::{Observation, Outcome, check};
use lab::{Hook, Lab};

/// The seed every bounded run starts with, so CI always covers the same frames too.
pub const FIXED_SEED: u64 = 0x6b70_726f_7879_f022;
/// Frames after which the lab moves to its next endpoint set.
const PHASE_FRAMES: u64 = 1_500;
/// New flows after which conntrack is flushed (its reply table holds 16,384).
const FLUSH_AFTER_FLOWS: u64 = 8_000;

/// What to run: from `KPROXY_FUZZ_SEED` and `KPROXY_FUZZ_ITERATIONS` if set.
pub struct Plan {
    pub seeds: Vec<u64>,
    /// Frames per seed (each runs through the three programs).
    pub iterations: u64,
}

impl Plan {
    /// One given seed, or the fixed seed and one from the clock.
    pub fn from_env(default_iterations: u64) -> Plan {
        let seeds = match std::env::var("KPROXY_FUZZ_SEED") {
            Ok(s) => vec![
                parse_seed(&s).unwrap_or_else(|| panic!("KPROXY_FUZZ_SEED={s:?} is no number")),
            ],
            Err(_) => vec![FIXED_SEED, clock_seed()],
        };
        let iterations = match std::env::var("KPROXY_FUZZ_ITERATIONS") {
            Ok(n) => n
                .parse()
                .unwrap_or_else(|_| panic!("KPROXY_FUZZ_ITERATIONS={n:?} is no number")),
            Err(_) => default_iterations,
        };
        Plan { seeds, iterations }
    }
}

/// A seed in decimal or `0x` hex.
pub fn parse_seed(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

fn clock_seed() -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    // The nanoseconds vary most; the seconds keep two runs in the same second apart.
    (t.as_secs() << 32) ^ u64::from(t.subsec_nanos()) ^ u64::from(std::process::id())
}

/// What one campaign saw.
pub struct Report {
    pub seed: u64,
    pub frames: u64,
    pub runs: u64,
    /// Runs the kernel refused (see `kernel_refuses`).
    pub refused: u64,
    pub elapsed: Duration,
    pub outcomes: [u64; Outcome::ALL.len()],
    /// Every counter's total over the campaign.
    pub counters: [u64; COUNTER_SLOTS],
}

impl Report {
    pub fn runs_per_second(&self) -> f64 {
        #[expect(clippy::cast_precision_loss, reason = "a rate for people to read")]
        let runs = self.runs as f64;
        runs / self.elapsed.as_secs_f64()
    }

    pub fn counter(&self, c: Counter) -> u64 {
        self.counters[c as usize]
    }

    /// A few lines for people: rate, outcomes, counters reached.
    pub fn summary(&self) -> String {
        let outcomes: Vec<String> = Outcome::ALL
            .iter()
            .zip(self.outcomes)
            .map(|(o, n)| format!("{o:?} {n}"))
            .collect();
        let reached: Vec<String> = Counter::ALL
            .iter()
            .filter(|c| self.counter(**c) != 0)
            .map(|c| format!("{} {}", c.name(), self.counter(*c)))
            .collect();
        let never: Vec<&str> = Counter::ALL
            .iter()
            .filter(|c| self.counter(**c) == 0)
            .map(|c| c.name())
            .collect();
        format!(
            "datapath fuzz: seed {:#x}: {} frames, {} program runs checked in {:.2} s ({:.0} runs/s; \
             {} runs refused by the kernel)\n  outcomes: {}\n  counters: {}\n  never counted: {}",
            self.seed,
            self.frames,
            self.runs,
            self.elapsed.as_secs_f64(),
            self.runs_per_second(),
            self.refused,
            outcomes.join(", "),
            reached.join(", "),
            if never.is_empty() {
                "-".to_owned()
            } else {
                never.join(", ")
            },
        )
    }
}

/// Writes to the process's stderr directly: the test harness captures `eprintln!`, and the
/// seed of a run must be visible even when it passes.
pub fn say(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// Runs `iterations` frames from `seed` through the three programs, checking every run.
/// Panics at the first violation with everything needed to replay it.
pub fn campaign(seed: u64, iterations: u64) -> Report {
    let mut lab = Lab::new();
    let mut generator = Generator::new(seed);
    let mut report = Report {
        seed,
        frames: 0,
        runs: 0,
        refused: 0,
        elapsed: Duration::ZERO,
        outcomes: [0; Outcome::ALL.len()],
        counters: [0; COUNTER_SLOTS],
    };
    let start = Instant::now();
    let mut before = lab.counters();
    let mut flows_at_flush = 0;
    for iteration in 0..iterations {
        if iteration > 0 && iteration % PHASE_FRAMES == 0 {
            lab.next_phase();
            let new_flows = before[Counter::NewFlows as usize];
            if new_flows - flows_at_flush > FLUSH_AFTER_FLOWS {
                lab.flush_conntrack();
                flows_at_flush = new_flows;
            } else {
                lab.evict_one_side(5);
            }
            generator.endpoints_changed();
        }
        let frame = generator.next_frame();
        let mut hooks = Hook::ALL;
        generator.rng.shuffle(&mut hooks);
        for hook in hooks {
            let Some((verdict, output)) = lab.run(hook, &frame) else {
                if !kernel_refuses(hook, &frame) {
                    let err = lab.dp.try_run(lab.program(hook), &frame).err();
                    let why = format!("the kernel refused to run the frame: {err:?}");
                    violation(Some((seed, iteration)), &lab, hook, &frame, None, &why);
                }
                report.refused += 1;
                continue;
            };
            let after = lab.counters();
            let delta = increments(&before, &after);
            before = after;
            let obs = Observation {
                hook,
                input: &frame,
                verdict,
                output: &output,
                delta: &delta,
            };
            match check(&lab, &obs) {
                Ok(outcome) => {
                    report.outcomes[Outcome::ALL
                        .iter()
                        .position(|o| *o == outcome)
                        .expect("listed")] += 1;
                    if outcome == Outcome::Dnat {
                        remember(&mut generator, &frame, &output);
                    }
                }
                Err(why) => violation(
                    Some((seed, iteration)),
                    &lab,
                    hook,
                    &frame,
                    Some(&obs),
                    &why,
                ),
            }
            for (total, d) in report.counters.iter_mut().zip(delta) {
                *total += d;
            }
            report.runs += 1;
        }
        report.frames += 1;
    }
    report.elapsed = start.elapsed();
    report
}

/// Runs one frame through the three programs of a fresh lab (first endpoint set), checking
/// every run; the outcomes in program order. For frames a campaign reported.
pub fn replay(frame: &[u8]) -> Vec<(Hook, Outcome)> {
    let lab = Lab::new();
    Hook::ALL
        .into_iter()
        .filter_map(|hook| run_checked(&lab, hook, frame).map(|run| (hook, run.outcome)))
        .collect()
}

/// One checked run.
pub struct CheckedRun {
    pub outcome: Outcome,
    pub output: Vec<u8>,
    pub delta: [u64; COUNTER_SLOTS],
}

impl CheckedRun {
    pub fn counted(&self, c: Counter) -> u64 {
        self.delta[c as usize]
    }
}

/// Runs `frame` through `hook` and checks the run against every invariant (panicking with
/// the details on a violation); `None` if the kernel refuses the frame.
pub fn run_checked(lab: &Lab, hook: Hook, frame: &[u8]) -> Option<CheckedRun> {
    let before = lab.counters();
    let Some((verdict, output)) = lab.run(hook, frame) else {
        assert!(
            kernel_refuses(hook, frame),
            "the kernel refused to run the frame"
        );
        return None;
    };
    let delta = increments(&before, &lab.counters());
    let obs = Observation {
        hook,
        input: frame,
        verdict,
        output: &output,
        delta: &delta,
    };
    match check(lab, &obs) {
        Ok(outcome) => Some(CheckedRun {
            outcome,
            output,
            delta,
        }),
        Err(why) => violation(None, lab, hook, frame, Some(&obs), &why),
    }
}

/// What each counter went up by between two readings.
fn increments(before: &[u64; COUNTER_SLOTS], after: &[u64; COUNTER_SLOTS]) -> [u64; COUNTER_SLOTS] {
    let mut delta = [0u64; COUNTER_SLOTS];
    for (d, (a, b)) in delta.iter_mut().zip(after.iter().zip(before)) {
        *d = a - b;
    }
    delta
}

/// Whether BPF_PROG_TEST_RUN refuses `frame` for `hook` by its own rules (EINVAL): anything
/// shorter than an Ethernet header, and for TC (an skb) an IPv4 or IPv6 EtherType without room
/// for the fixed IP header. Those frames never reach a program.
fn kernel_refuses(hook: Hook, frame: &[u8]) -> bool {
    let ip_header = match frames::be16(frame, 12) {
        Some(frames::ETH_P_IP) => 20,
        Some(0x86dd) => 40,
        _ => 0,
    };
    frame.len() < frames::ETH_HLEN
        || (hook != Hook::Xdp && frame.len() < frames::ETH_HLEN + ip_header)
}

/// Remembers the flow of a DNATed packet for replies and ICMP errors.
fn remember(generator: &mut Generator, input: &[u8], output: &[u8]) {
    let (Some(i), Some(o)) = (ipv4(input), ipv4(output)) else {
        return;
    };
    if !i.has_l4_header() {
        return;
    }
    let port = |f: &[u8], off: usize| frames::be16(f, off).expect("translated header");
    generator.remember(SeenFlow {
        proto: i.proto,
        client: i.saddr.into(),
        client_port: port(input, i.l4()),
        sent_port: port(output, o.l4()),
        vip: i.daddr.into(),
        vip_port: port(input, i.l4() + 2),
        backend: o.daddr.into(),
        backend_port: port(output, o.l4() + 2),
    });
}

/// Stops with everything needed to replay a violation: the seed and iteration of the
/// campaign (`run`), the frame, the output and the counters that moved.
fn violation(
    run: Option<(u64, u64)>,
    lab: &Lab,
    hook: Hook,
    frame: &[u8],
    obs: Option<&Observation<'_>>,
    why: &str,
) -> ! {
    let detail = obs.map_or_else(String::new, |o| {
        format!(
            "  verdict {}\n  output ({} bytes) {}\n  counters:{}\n",
            o.verdict.cast_signed(),
            o.output.len(),
            hex(o.output),
            o.moved_counters()
        )
    });
    let (at, replay_run) = run.map_or_else(
        || (String::new(), String::new()),
        |(seed, iteration)| {
            (
                format!("seed {seed:#x}, iteration {iteration}, "),
                format!(
                    "  replay the run: cargo xtask fuzz --seed {seed:#x} --iterations {}\n",
                    iteration + 1
                ),
            )
        },
    );
    panic!(
        "datapath fuzz: invariant violated: {why}\n  {at}{hook:?}, endpoint set {}\n  input ({} \
         bytes) {}\n{detail}{replay_run}  replay the frame alone: KPROXY_FUZZ_REPLAY={} cargo test \
         -p kproxy-tests --test datapath_fuzz",
        lab.phase(),
        frame.len(),
        hex(frame),
        hex(frame),
    );
}

/// Runs `f` on a thread inside a network namespace of its own, so that the egress program's
/// FIB lookups see a known table (never the machine's): B1 and B2 on a veth, forwarding on,
/// B1's MAC known (a lookup that resolves), B2's not (the kernel resolves it on redirect), no
/// route to B3 (dropped). The namespace is deleted afterwards.
pub fn in_own_namespace<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(0);
    kproxy_testbed::Topology::sweep_leftovers();
    let name = format!(
        "kpt-{}-fuzz{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let ns = kproxy_testbed::Netns::create(&name).expect("fuzz namespace");
    ns.ip_batch(&[
        // Fixed addresses: the router's rewritten frames carry fz0's, and a seed's campaign
        // must see the same bytes on every run.
        "link add fz0 address 02:00:00:00:02:01 type veth peer name fz1 address 02:00:00:00:02:03"
            .to_owned(),
        "addr add 198.18.2.1/24 dev fz0".to_owned(),
        "link set fz0 up".to_owned(),
        "link set fz1 up".to_owned(),
        "route add 198.18.3.0/24 dev fz0".to_owned(),
        format!(
            "neigh replace {} lladdr 02:00:00:00:02:02 dev fz0 nud permanent",
            crate::support::datapath::B1
        ),
    ])
    .expect("fuzz namespace links");
    ns.sysctl("net.ipv4.ip_forward", "1").expect("forwarding");
    ns.run(f).expect("entering the fuzz namespace")
}
