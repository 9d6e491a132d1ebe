//! Where the eBPF object that kproxy embeds comes from. Shared by build.rs (which includes
//! this file) and the crate (whose tests check it): without the object (a plain `cargo test`
//! of a fresh clone, before `cargo xtask build-ebpf`), the build embeds an empty placeholder
//! and says so, so the pure tests still run; loading the datapath then fails with
//! [`MISSING`]'s advice instead.

use std::path::{Path, PathBuf};

/// Why a build without its object cannot load the datapath, and what to do.
pub const MISSING: &str = "this kproxy was built without its eBPF object: build it with \
                           `cargo xtask build-ebpf`, then build kproxy again";

/// What build.rs embeds.
#[derive(Debug, PartialEq, Eq)]
pub enum Embedded {
    /// The object at this path.
    Object(PathBuf),
    /// None was found at `expected`: an empty placeholder is embedded instead.
    Placeholder { expected: PathBuf },
}

/// The object: `KPROXY_BPF_OBJECT` if set (`explicit`), else `bpf/kproxy.bpf.o` under the
/// target directory (`CARGO_TARGET_DIR`, else the workspace's `target/` beside
/// `manifest_dir`). An object named explicitly must exist; the default one may be missing.
pub fn locate(
    explicit: Option<PathBuf>,
    target_dir: Option<PathBuf>,
    manifest_dir: &Path,
) -> Result<Embedded, String> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(Embedded::Object(path))
        } else {
            Err(format!(
                "KPROXY_BPF_OBJECT names {}, which is not a file",
                path.display()
            ))
        };
    }
    let target = target_dir.unwrap_or_else(|| manifest_dir.join("../target"));
    let path = target.join("bpf/kproxy.bpf.o");
    Ok(if path.is_file() {
        Embedded::Object(path)
    } else {
        Embedded::Placeholder { expected: path }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_object_may_be_missing_an_explicit_one_may_not() {
        let dir = tempfile::tempdir().expect("temp dir");
        let manifest = dir.path().join("kproxy");
        let expected = manifest.join("../target/bpf/kproxy.bpf.o");
        assert_eq!(
            locate(None, None, &manifest),
            Ok(Embedded::Placeholder {
                expected: expected.clone()
            }),
            "a fresh clone: unit tests still build"
        );
        std::fs::create_dir_all(expected.parent().expect("parent")).expect("mkdir");
        std::fs::write(&expected, b"\x7fELF").expect("object");
        assert_eq!(
            locate(None, None, &manifest),
            Ok(Embedded::Object(expected.clone()))
        );
        let elsewhere = dir.path().join("elsewhere");
        assert_eq!(
            locate(None, Some(elsewhere.clone()), &manifest),
            Ok(Embedded::Placeholder {
                expected: elsewhere.join("bpf/kproxy.bpf.o")
            }),
            "CARGO_TARGET_DIR decides"
        );
        let named = dir.path().join("named.o");
        let err = locate(Some(named.clone()), None, &manifest).expect_err("missing named object");
        assert!(err.contains("KPROXY_BPF_OBJECT"), "{err}");
        std::fs::write(&named, b"\x7fELF").expect("object");
        assert_eq!(
            locate(Some(named.clone()), None, &manifest),
            Ok(Embedded::Object(named))
        );
    }
}
