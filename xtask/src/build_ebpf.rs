//! `cargo xtask build-ebpf`: compiles kproxy-ebpf to BPF without `rust-src`.
//!
//! The usual recipe (`-Z build-std=core --target bpfel-unknown-none`) needs the `rust-src`
//! component. Instead the crate is compiled for the *host* target as a static library of LLVM
//! bitcode (`-C linker-plugin-lto`), and bpf-linker retargets that bitcode, together with the
//! bitcode embedded in the host's precompiled `core`, to BPF. The programs and maps must be
//! exported by name or the linker internalizes and drops them.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};
use kproxy_common::names::{
    BENCH_PROGRAMS, GLOBALS, LAZY_PROGRAMS, MAPS, PROGRAMS, SOCKET_PROGRAMS,
};

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

/// The upgrade-test variant: the same sources built with `KPROXY_EBPF_VARIANT` set, so the
/// programs' bytecode differs (one extra stack store, see kproxy-ebpf/src/lib.rs) and the maps
/// do not. The restart test upgrades a running datapath to it; the agent never embeds it.
pub fn variant_path() -> PathBuf {
    target_dir().join("bpf").join("kproxy-variant.bpf.o")
}

/// Builds the object (and the upgrade-test variant next to it) and returns the object's path.
pub fn run(_opts: &Options) -> Result<PathBuf> {
    let started = Instant::now();
    let linker = tools::bpf_linker()?;
    let host = host_triple()?;
    // Target dirs of their own: these RUSTFLAGS would otherwise invalidate the host build
    // cache, and the variant's env var the object's.
    let out = object_path();
    build(&linker, &host, &target_dir().join("ebpf"), &out, false)?;
    eprintln!(
        "xtask: built {} in {:.1}s",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let variant = variant_path();
    build(
        &linker,
        &host,
        &target_dir().join("ebpf-variant"),
        &variant,
        true,
    )?;
    eprintln!(
        "xtask: built {} (upgrade-test variant) in {:.1}s",
        variant.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(out)
}

/// Compiles kproxy-ebpf to bitcode in `bitcode_dir` and links it into the BPF object `out`.
fn build(linker: &Path, host: &str, bitcode_dir: &Path, out: &Path, variant: bool) -> Result<()> {
    let mut compile = cargo();
    compile
        .args([
            "build",
            "--package",
            "kproxy-ebpf",
            "--profile",
            "bpf",
            "--target",
            host,
        ])
        .arg("--target-dir")
        .arg(bitcode_dir)
        // With an explicit --target these flags reach the target crates, not build scripts.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Clinker-plugin-lto\x1f-Cdebuginfo=2",
        )
        .env_remove("RUSTFLAGS");
    if variant {
        compile.env("KPROXY_EBPF_VARIANT", "1");
    } else {
        compile.env_remove("KPROXY_EBPF_VARIANT");
    }
    run_checked(&mut compile)?;
    let archive = bitcode_dir.join(host).join("bpf").join("libkproxy_ebpf.a");
    std::fs::create_dir_all(out.parent().context("object path has a parent")?)?;
    let mut link = Command::new(linker);
    // --cpu v3: atomic fetch-and-add (the round-robin counter) needs BPF_FETCH.
    link.args(["--target", "bpfel", "--cpu", "v3", "--btf", "-o"])
        .arg(out)
        .arg(&archive);
    for symbol in PROGRAMS
        .iter()
        .chain(&LAZY_PROGRAMS)
        .chain(&SOCKET_PROGRAMS)
        .chain(&BENCH_PROGRAMS)
        .chain(&MAPS)
        .chain(&GLOBALS)
    {
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
        bail!("bpf-linker failed for {}", out.display());
    }
    Ok(())
}

pub fn host_triple() -> Result<String> {
    capture(Command::new("rustc").arg("-vV"))?
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .context("rustc -vV shows no host")
}
