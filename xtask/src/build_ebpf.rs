//! `cargo xtask build-ebpf`: compiles kproxy-ebpf to BPF without `rust-src`.
//!
//! The usual recipe (`-Z build-std=core --target bpfel-unknown-none`) needs the `rust-src`
//! component. Instead the crate is compiled for the *host* target as a static library of LLVM
//! bitcode (`-C linker-plugin-lto`), and bpf-linker retargets that bitcode, together with the
//! bitcode embedded in the host's precompiled `core`, to BPF. The programs and maps must be
//! exported by name or the linker internalizes and drops them.

use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{Context, Result, bail};
use kproxy_common::names::{MAPS, PROGRAMS};

use crate::{capture, cargo, run_checked, target_dir, tools};

#[derive(clap::Args, Default)]
pub struct Options {
    /// Accepted for aya-template habits: the object is always optimised (the verifier only
    /// accepts optimised code), so both modes build the same object.
    #[arg(long)]
    pub release: bool,
}

/// Where the agent's build script looks for the object (see kproxy/build.rs).
pub fn object_path() -> PathBuf {
    target_dir().join("bpf").join("kproxy.bpf.o")
}

/// Builds the object and returns its path.
pub fn run(_opts: &Options) -> Result<PathBuf> {
    let started = Instant::now();
    let linker = tools::bpf_linker()?;
    let host = host_triple()?;
    // A target dir of its own: these RUSTFLAGS would otherwise invalidate the host build cache.
    let bitcode_dir = target_dir().join("ebpf");
    run_checked(
        cargo()
            .args([
                "build",
                "--package",
                "kproxy-ebpf",
                "--profile",
                "bpf",
                "--target",
                &host,
            ])
            .arg("--target-dir")
            .arg(&bitcode_dir)
            // With an explicit --target these flags reach the target crates, not build scripts.
            .env(
                "CARGO_ENCODED_RUSTFLAGS",
                "-Clinker-plugin-lto\x1f-Cdebuginfo=2",
            )
            .env_remove("RUSTFLAGS"),
    )?;
    let archive = bitcode_dir.join(&host).join("bpf").join("libkproxy_ebpf.a");
    let out = object_path();
    std::fs::create_dir_all(out.parent().context("object path has a parent")?)?;
    let mut link = Command::new(&linker);
    // --cpu v3: atomic fetch-and-add (the round-robin counter) needs BPF_FETCH.
    link.args(["--target", "bpfel", "--cpu", "v3", "--btf", "-o"])
        .arg(&out)
        .arg(&archive);
    for symbol in PROGRAMS.iter().chain(MAPS.iter()) {
        link.args(["--export", symbol]);
    }
    let output = link.output().context("running bpf-linker")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    // compiler_builtins carries no bitcode; bpf-linker says so for every member. Harmless.
    for line in stderr
        .lines()
        .filter(|l| !l.contains("no embedded bitcode"))
    {
        eprintln!("bpf-linker: {line}");
    }
    if !output.status.success() {
        bail!("bpf-linker failed");
    }
    eprintln!(
        "xtask: built {} in {:.1}s",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(out)
}

pub fn host_triple() -> Result<String> {
    capture(Command::new("rustc").arg("-vV"))?
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .context("rustc -vV shows no host")
}
