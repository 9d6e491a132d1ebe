//! `cargo xtask <task>`: the project's build, demo, test and benchmark entry points.

mod bench;
mod build_ebpf;
mod demo;
mod deps;
mod fuzz;
mod kubernetes;
mod test;
mod tools;

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "kproxy project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the eBPF object (installs bpf-linker into .tools/ when missing).
    BuildEbpf(build_ebpf::Options),
    /// Measure kproxy against kube-proxy's iptables and nftables rules (needs root).
    Bench(bench::Options),
    /// Build the real Kubernetes programs the tests and the benchmark run (kube-apiserver,
    /// kube-controller-manager, kube-proxy, kubectl, etcd) into the cache outside the clone.
    BuildKubernetes(kubernetes::Options),
    /// Build everything and run a demo in network namespaces (needs root); `--cluster` with
    /// a real Kubernetes control plane.
    Demo(demo::Options),
    /// Fuzz the TC and XDP programs with generated packets for longer than `test` does
    /// (needs root).
    Fuzz(fuzz::Options),
    /// Build everything and run every check and test CI runs (root for the BPF tests).
    Test(test::Options),
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::BuildEbpf(opts) => build_ebpf::run(&opts).map(|_| ()),
        Task::Bench(opts) => bench::run(&opts),
        Task::BuildKubernetes(opts) => kubernetes::run(&opts),
        Task::Demo(opts) => demo::run(&opts),
        Task::Fuzz(opts) => fuzz::run(&opts),
        Task::Test(opts) => test::run(&opts),
    }
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits inside the workspace")
        .to_path_buf()
}

/// The cargo target directory the workspace builds into.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

/// `cargo` in the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(workspace_root());
    cmd
}

/// Runs `cmd` with inherited output; an error if it fails.
pub fn run_checked(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` and returns its standard output; an error if it fails.
pub fn capture(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}
