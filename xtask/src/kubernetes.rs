//! `cargo xtask build-kubernetes`: the real Kubernetes programs (kube-apiserver,
//! kube-controller-manager, kube-proxy, kubectl) and etcd, built with the machine's Go from
//! their modules (xtask/kubernetes/go.mod pins the release) into a cache outside the clone,
//! keyed by release, that every later run and clone reuses. The test bed's control plane and
//! the benchmark's kube-proxy run these.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use kproxy_testbed::kubernetes::{self, ETCD_RELEASE, PROGRAMS, RELEASE};

use crate::{run_checked, workspace_root};

/// The module each program's main package is in, and the file `go build` names it.
const PACKAGES: &[(&str, &str, &str)] = &[
    (
        "kube-apiserver",
        "k8s.io/kubernetes/cmd/kube-apiserver",
        "kube-apiserver",
    ),
    (
        "kube-controller-manager",
        "k8s.io/kubernetes/cmd/kube-controller-manager",
        "kube-controller-manager",
    ),
    (
        "kube-proxy",
        "k8s.io/kubernetes/cmd/kube-proxy",
        "kube-proxy",
    ),
    ("kubectl", "k8s.io/kubernetes/cmd/kubectl", "kubectl"),
    // The module path ends in a major version, so `go build` names its binary `server`.
    ("etcd", "go.etcd.io/etcd/server/v3", "server"),
];

/// Where the build records how long it took (README and the closing notes quote it).
const BUILD_TIME_FILE: &str = "build-seconds";

#[derive(clap::Args, Default)]
pub struct Options {
    /// Build again even if the cache already holds this release.
    #[arg(long)]
    pub rebuild: bool,
}

pub fn run(opts: &Options) -> Result<()> {
    let dir = ensure_with(opts.rebuild)?;
    match build_seconds(&dir) {
        Some(secs) => println!("{} (built in {secs} s)", dir.display()),
        None => println!("{}", dir.display()),
    }
    Ok(())
}

/// Builds the programs unless the cache has them; returns the directory holding them.
pub fn ensure() -> Result<std::path::PathBuf> {
    ensure_with(false)
}

fn ensure_with(rebuild: bool) -> Result<std::path::PathBuf> {
    let dir = kubernetes::bin_dir();
    if kubernetes::built() && !rebuild {
        return Ok(dir);
    }
    let go = go_command()?;
    eprintln!(
        "xtask: building Kubernetes {RELEASE} and etcd {ETCD_RELEASE} from their Go modules \
         into {} (once per machine; ~10 min on two cores)",
        dir.display()
    );
    let started = Instant::now();
    // Built beside the cache entry and renamed into place, so an interrupted build never
    // leaves a directory that looks complete.
    let parent = dir.parent().context("cache dir has a parent")?;
    std::fs::create_dir_all(parent)
        .with_context(|| format!("creating the cache {}", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".kubernetes-build-")
        .tempdir_in(parent)?;
    let version = format!(
        "-s -w -X k8s.io/component-base/version.gitVersion={RELEASE} \
         -X k8s.io/component-base/version.gitMajor={major} \
         -X k8s.io/component-base/version.gitMinor={minor} \
         -X k8s.io/component-base/version.gitTreeState=clean \
         -X k8s.io/client-go/pkg/version.gitVersion={RELEASE}",
        major = release_part(1)?,
        minor = release_part(2)?,
    );
    let mut build = Command::new(&go);
    build
        .current_dir(workspace_root().join("xtask/kubernetes"))
        .args(["build", "-trimpath", "-ldflags", &version, "-o"])
        .arg(staging.path())
        .args(PACKAGES.iter().map(|(_, package, _)| *package))
        // Static binaries, as Kubernetes releases them; the machine's own Go, and go.sum
        // exactly as committed.
        .env("CGO_ENABLED", "0")
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=readonly");
    run_checked(&mut build).context(
        "building Kubernetes with Go (needs the Go module proxy; see xtask/kubernetes/go.mod)",
    )?;
    for (program, _, built_as) in PACKAGES {
        std::fs::rename(staging.path().join(built_as), staging.path().join(program))
            .with_context(|| format!("{built_as} was not built"))?;
    }
    for program in PROGRAMS {
        if !staging.path().join(program).is_file() {
            bail!("{program} was not built");
        }
    }
    let took = started.elapsed();
    std::fs::write(
        staging.path().join(BUILD_TIME_FILE),
        format!("{}\n", took.as_secs()),
    )?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::rename(staging.keep(), &dir)
        .with_context(|| format!("moving the build to {}", dir.display()))?;
    eprintln!("xtask: built Kubernetes {RELEASE} in {}", human(took));
    Ok(dir)
}

/// `go` on PATH, or where Debian's golang and the official tarball put it.
fn go_command() -> Result<std::path::PathBuf> {
    for candidate in ["go", "/usr/local/go/bin/go", "/usr/lib/go/bin/go"] {
        let found = Command::new(candidate)
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
        if found {
            return Ok(candidate.into());
        }
    }
    bail!(
        "no Go toolchain found (go on PATH or /usr/local/go/bin/go); the machine should have Go 1.26"
    )
}

/// Part `n` of `vMAJOR.MINOR.PATCH`.
fn release_part(n: usize) -> Result<&'static str> {
    RELEASE
        .trim_start_matches('v')
        .split('.')
        .nth(n - 1)
        .context("RELEASE is vMAJOR.MINOR.PATCH")
}

fn human(d: Duration) -> String {
    format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
}

/// How long the cached build took, if it recorded it.
fn build_seconds(dir: &Path) -> Option<u64> {
    std::fs::read_to_string(dir.join(BUILD_TIME_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}
