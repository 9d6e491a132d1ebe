//! Finds the eBPF object built by `cargo xtask build-ebpf` so the agent can embed it (see
//! src/bpf_object.rs: without it, an empty placeholder, and a warning).

#[path = "src/bpf_object.rs"]
#[expect(
    dead_code,
    reason = "the crate uses MISSING; the build script does not"
)]
mod bpf_object;

use std::path::PathBuf;

use bpf_object::Embedded;

fn main() {
    println!("cargo:rerun-if-env-changed=KPROXY_BPF_OBJECT");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    println!("cargo:rerun-if-changed=src/bpf_object.rs");
    // Read when the script runs, not when it is compiled: one build script binary may serve
    // several checkouts that share a target directory.
    let env_path = |name: &str| std::env::var_os(name).map(PathBuf::from);
    let manifest_dir = env_path("CARGO_MANIFEST_DIR").unwrap_or_default();
    let embedded = bpf_object::locate(
        env_path("KPROXY_BPF_OBJECT"),
        env_path("CARGO_TARGET_DIR"),
        &manifest_dir,
    )
    .unwrap_or_else(|e| panic!("\n\n{e}\n\n"));
    let object = match embedded {
        Embedded::Object(path) => path,
        Embedded::Placeholder { expected } => {
            // Rebuilt once the object appears there.
            println!("cargo:rerun-if-changed={}", expected.display());
            println!(
                "cargo:warning=no eBPF object at {}: kproxy is built without it (its unit \
                 tests run; the agent cannot load the datapath). Build it with `cargo xtask \
                 build-ebpf`.",
                expected.display()
            );
            let placeholder = env_path("OUT_DIR")
                .expect("cargo sets OUT_DIR")
                .join("kproxy.bpf.o-missing");
            std::fs::write(&placeholder, b"").expect("writing the placeholder");
            placeholder
        }
    };
    println!("cargo:rerun-if-changed={}", object.display());
    println!("cargo:rustc-env=KPROXY_BPF_OBJECT={}", object.display());
}
