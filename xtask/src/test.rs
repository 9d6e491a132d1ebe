//! `cargo xtask test`: everything CI checks, in the order a failure is cheapest to find.

use anyhow::Result;

use kproxy_testbed::require_privileges;

use crate::{bench, build_ebpf, cargo, demo, deps, kubernetes, run_checked};

#[derive(clap::Args, Default)]
pub struct Options {
    /// Skip `cargo fmt --check` and clippy (for quick local iterations).
    #[arg(long)]
    pub no_lint: bool,
    /// Skip the benchmark's smoke run (`cargo xtask bench --quick`).
    #[arg(long)]
    pub no_bench: bool,
    /// Skip running the two demos (`cargo xtask demo`, `cargo xtask demo --cluster`).
    #[arg(long)]
    pub no_demo: bool,
    /// Arguments passed on to `cargo test` (after `--`), e.g. a test name filter.
    #[arg(last = true)]
    pub cargo_test_args: Vec<String>,
}

fn cargo_checked(args: &[&str], extra: &[String]) -> Result<()> {
    run_checked(cargo().args(args).args(extra))
}

pub fn run(opts: &Options) -> Result<()> {
    deps::ensure(deps::TEST_TOOLS)?;
    build_ebpf::run(&build_ebpf::Options::default())?;
    // The control-plane tests run the real Kubernetes programs (built once per machine).
    kubernetes::ensure()?;
    if !opts.no_lint {
        cargo_checked(&["fmt", "--all", "--check"], &[])?;
        cargo_checked(&["clippy", "--all-targets", "--", "-D", "warnings"], &[])?;
        // The eBPF crate as the build compiles it (host target, no_std, panic=abort); its own
        // target dir keeps the bitcode build's cache intact.
        let ebpf_target = crate::target_dir().join("ebpf-clippy");
        let host = build_ebpf::host_triple()?;
        cargo_checked(
            &[
                "clippy",
                "--package",
                "kproxy-ebpf",
                "--profile",
                "bpf",
                "--target",
                &host,
                "--target-dir",
            ],
            &[
                ebpf_target.display().to_string(),
                "--".into(),
                "-D".into(),
                "warnings".into(),
            ],
        )?;
    }
    // Root/BPF tests skip loudly outside CI; with CI=true a missing privilege fails them.
    let mut extra = vec!["--".to_owned()];
    extra.extend(opts.cargo_test_args.iter().cloned());
    cargo_checked(&["test"], &extra)?;
    // The demos README opens with, so they never rot (each fails if traffic does not flow).
    if !opts.no_demo && opts.cargo_test_args.is_empty() && require_privileges("cargo xtask demo") {
        demo::run(&demo::Options::default())?;
        demo::run(&demo::Options { cluster: true })?;
    }
    // The benchmark's smoke run, so the harness never rots (its numbers are not judged).
    if !opts.no_bench
        && opts.cargo_test_args.is_empty()
        && require_privileges("cargo xtask bench --quick")
    {
        bench::run(&bench::Options {
            quick: true,
            output: Some(crate::target_dir().join("bench-quick")),
            ..bench::Options::default()
        })?;
    }
    Ok(())
}
