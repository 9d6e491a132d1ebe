//! Tells the restart test where `cargo xtask build-ebpf` puts the upgrade-test variant of the
//! eBPF object (next to the object the agent embeds; see kproxy/build.rs).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=KPROXY_VARIANT_BPF_OBJECT");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    let object = std::env::var_os("KPROXY_VARIANT_BPF_OBJECT").map_or_else(
        || {
            let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
                || {
                    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default())
                        .join("../target")
                },
                PathBuf::from,
            );
            target.join("bpf/kproxy-variant.bpf.o")
        },
        PathBuf::from,
    );
    // Only the path is compiled in: the test reads the file when it runs, and says how to
    // build it when it is missing.
    println!(
        "cargo:rustc-env=KPROXY_VARIANT_BPF_OBJECT={}",
        object.display()
    );
}
