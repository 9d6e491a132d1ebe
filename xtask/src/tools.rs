//! Project-local tools: bpf-linker, installed into `.tools/` on first use and reused after.

use std::{
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::{capture, cargo, run_checked, workspace_root};

/// bpf-linker release known to retarget host bitcode with this toolchain's LLVM.
const BPF_LINKER_VERSION: &str = "0.13.0";

fn tools_dir() -> PathBuf {
    workspace_root().join(".tools")
}

/// Path to a working bpf-linker, installing it first if needed.
pub fn bpf_linker() -> Result<PathBuf> {
    let root = tools_dir().join("bpf-linker");
    let bin = root.join("bin/bpf-linker");
    if Command::new(&bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(bin);
    }
    eprintln!(
        "xtask: installing bpf-linker {BPF_LINKER_VERSION} into {} (once, ~2 min)",
        root.display()
    );
    let (llvm_prefix, major) = rust_llvm_prefix()?;
    run_checked(
        cargo()
            .args(["install", "bpf-linker", "--locked", "--no-default-features"])
            .args(["--version", BPF_LINKER_VERSION, "--features"])
            .arg(format!("llvm-{major}"))
            .arg("--root")
            .arg(&root)
            .env("LLVM_PREFIX", &llvm_prefix),
    )?;
    Ok(bin)
}

/// bpf-linker links against an LLVM of the same major version as rustc's. The toolchain
/// ships its own `libLLVM` in the sysroot (no rust-src or system LLVM needed): expose it under
/// a prefix laid out the way bpf-linker's build script expects (`$LLVM_PREFIX/lib/libLLVM.so`).
fn rust_llvm_prefix() -> Result<(PathBuf, String)> {
    let version = capture(Command::new("rustc").arg("-vV"))?;
    let major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc -vV shows no LLVM version")?
        .to_owned();
    let sysroot =
        PathBuf::from(capture(Command::new("rustc").args(["--print", "sysroot"]))?.trim());
    let lib = sysroot.join("lib");
    let libllvm = std::fs::read_dir(&lib)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("libLLVM.so.")
                    || (n.starts_with("libLLVM-")
                        && Path::new(n).extension().is_some_and(|e| e == "so"))
            })
        })
        .with_context(|| format!("no libLLVM in {}", lib.display()))?;
    let prefix = tools_dir().join("llvm");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    let name = libllvm.file_name().context("libLLVM has a file name")?;
    for link in [prefix_lib.join("libLLVM.so"), prefix_lib.join(name)] {
        replace_symlink(&libllvm, &link)?;
    }
    Ok((prefix, major))
}

fn replace_symlink(target: &Path, link: &Path) -> Result<()> {
    let _ = std::fs::remove_file(link);
    symlink(target, link)
        .with_context(|| format!("linking {} -> {}", link.display(), target.display()))
}
