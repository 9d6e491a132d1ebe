//! The netfilter tools the cleanup drives (iptables-save/-restore, nft, ipset, ipvsadm): found
//! on PATH before anything is changed, so a missing one stops the run with its package's name
//! instead of leaving a node half cleaned; then run with their output captured.

use std::{
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

/// A program the cleanup needs and the Debian package that provides it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Needed {
    pub program: String,
    pub package: &'static str,
}

impl Needed {
    pub fn new(program: &str, package: &'static str) -> Self {
        Self {
            program: program.to_owned(),
            package,
        }
    }
}

/// Where `program` is on PATH, if it is there and executable.
pub fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The programs of `needed` that are not on PATH.
pub fn missing(needed: impl IntoIterator<Item = Needed>) -> Vec<Needed> {
    needed
        .into_iter()
        .filter(|n| find(&n.program).is_none())
        .collect()
}

/// Fails naming every missing program and its package, if any is missing.
pub fn require_all(missing: &[Needed]) -> Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    let named: Vec<String> = missing
        .iter()
        .map(|n| format!("{} (Debian package {})", n.program, n.package))
        .collect();
    bail!(
        "removing kube-proxy's leftovers needs programs that are not on PATH: {}; install them \
         and run again (nothing was changed)",
        named.join(", ")
    )
}

/// Runs `program args`, returning its standard output; fails with its standard error.
pub fn output(program: &str, args: &[&str]) -> Result<String> {
    run(program, args, None)
}

/// Runs `program args` with `input` on its standard input.
pub fn feed(program: &str, args: &[&str], input: &str) -> Result<String> {
    run(program, args, Some(input))
}

fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<String> {
    let shown = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{shown}`"))?;
    // A write error (the program quit early) matters less than its own complaint, read below.
    let written = match (input, child.stdin.take()) {
        (Some(text), Some(mut stdin)) => stdin.write_all(text.as_bytes()),
        _ => Ok(()),
    };
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{shown}`"))?;
    if !out.status.success() {
        let mut message = format!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        if let Some(text) = input {
            message.push_str("\ninput:\n");
            message.push_str(text);
        }
        bail!(message);
    }
    written.with_context(|| format!("writing to `{shown}`"))?;
    String::from_utf8(out.stdout).with_context(|| format!("`{shown}` printed non-UTF-8"))
}
