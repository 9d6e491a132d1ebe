//! The real Kubernetes control plane in the test bed: etcd, kube-apiserver and
//! kube-controller-manager of a pinned release, built from their Go modules by
//! `cargo xtask build-kubernetes` (xtask/kubernetes/go.mod) into a cache outside the clone.
//!
//! This module only finds the built programs; [`control_plane`] runs them inside a bed's
//! namespace, [`pki`] makes the certificates they need and [`objects`] the API objects tests
//! create as a user would (there is no kubelet: tests mark pods Ready themselves).

pub mod access;
pub mod control_plane;
pub mod kproxy_access;
pub mod lists_alone;
pub mod objects;
pub mod pki;
pub mod storage;

use std::path::PathBuf;

use anyhow::{Result, bail};

pub use control_plane::ControlPlane;

/// The Kubernetes release every program is built from (xtask/kubernetes/go.mod requires it).
pub const RELEASE: &str = "v1.37.2";
/// The etcd release, the one that Kubernetes release depends on (go.etcd.io/etcd/server/v3).
pub const ETCD_RELEASE: &str = "v3.7.0";
/// Raised when the build itself changes (flags, programs), so an older cache is not reused.
const BUILD_REVISION: u32 = 1;

/// The programs built, each to a file of this name in [`bin_dir`].
pub const PROGRAMS: &[&str] = &[
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-proxy",
    "kubectl",
];

/// The cache of built programs: `$KPROXY_CACHE`, else `$XDG_CACHE_HOME/kproxy`, else
/// `~/.cache/kproxy`. Outside the clone, so every clone and CI run on a machine shares it.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("KPROXY_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("kproxy");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/kproxy")
}

/// Where this release's programs are, once built; keyed by the releases and build revision.
pub fn bin_dir() -> PathBuf {
    cache_root().join(format!(
        "kubernetes-{RELEASE}-etcd-{ETCD_RELEASE}-r{BUILD_REVISION}"
    ))
}

/// Whether every program has been built.
pub fn built() -> bool {
    PROGRAMS.iter().all(|p| bin_dir().join(p).is_file())
}

/// The path of built program `name`, or an error saying how to build it.
pub fn program(name: &str) -> Result<PathBuf> {
    let path = bin_dir().join(name);
    if !path.is_file() {
        bail!(
            "{} is not built: `cargo xtask build-kubernetes` builds Kubernetes {RELEASE} \
             into {} (`cargo xtask test` does it first)",
            name,
            bin_dir().display()
        );
    }
    Ok(path)
}
