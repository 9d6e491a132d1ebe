//! `cargo xtask fuzz`: the datapath packet fuzzer (tests/tests/datapath_fuzz.rs) for longer
//! than the bounded run every `cargo xtask test` includes. One implementation: this runs that
//! test through `cargo test` with KPROXY_FUZZ_ITERATIONS and KPROXY_FUZZ_SEED.

use anyhow::{Result, bail};

use kproxy_testbed::require_privileges;

use crate::{build_ebpf, cargo, deps, run_checked};

#[derive(clap::Args)]
pub struct Options {
    /// Frames per seed (each runs through the TC ingress, XDP and TC egress programs).
    #[arg(long, default_value_t = 500_000)]
    pub iterations: u64,
    /// The seed, decimal or 0x hex (a violation names the one to replay). Default: the
    /// bounded run's fixed seed, then one from the clock.
    #[arg(long, value_parser = parse_seed)]
    pub seed: Option<u64>,
}

fn parse_seed(s: &str) -> Result<u64, String> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("{s:?} is no seed: {e}"))
}

pub fn run(opts: &Options) -> Result<()> {
    if !require_privileges("cargo xtask fuzz") {
        bail!("cargo xtask fuzz runs BPF programs in a network namespace: it needs root");
    }
    deps::ensure(deps::TEST_TOOLS)?;
    build_ebpf::run(&build_ebpf::Options::default())?;
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--package",
        "kproxy-tests",
        "--test",
        "datapath_fuzz",
        "--",
        "--exact",
        "fuzzed_frames_keep_every_invariant",
        "--nocapture",
    ])
    .env("KPROXY_FUZZ_ITERATIONS", opts.iterations.to_string());
    if let Some(seed) = opts.seed {
        cmd.env("KPROXY_FUZZ_SEED", format!("{seed:#x}"));
    }
    run_checked(&mut cmd)
}
