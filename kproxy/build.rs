//! Finds the eBPF object built by `cargo xtask build-ebpf` so the agent can embed it.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=KPROXY_BPF_OBJECT");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    let object = std::env::var_os("KPROXY_BPF_OBJECT").map_or_else(
        || {
            let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
                // Read when the script runs, not when it is compiled: one build script binary
                // may serve several checkouts that share a target directory.
                || {
                    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default())
                        .join("../target")
                },
                PathBuf::from,
            );
            target.join("bpf/kproxy.bpf.o")
        },
        PathBuf::from,
    );
    println!("cargo:rerun-if-changed={}", object.display());
    assert!(
        object.is_file(),
        "\n\nkproxy embeds its eBPF object, which is missing at {}.\n\
         Build it first with:\n\n    cargo xtask build-ebpf\n\n",
        object.display()
    );
    println!("cargo:rustc-env=KPROXY_BPF_OBJECT={}", object.display());
}
