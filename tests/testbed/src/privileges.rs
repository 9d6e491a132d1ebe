//! Decides whether a test that needs root and BPF can run here: it runs when it can, skips
//! loudly on a developer's machine when it cannot, and fails in CI, where a skip would hide it.

use std::io::{self, Write};
use std::sync::OnceLock;

use crate::bpfsys;

/// Returns true when the process can build test beds: it is root, may create network
/// namespaces and may create BPF maps.
///
/// Otherwise a test should return at once: with `CI` set to `true` or `1` this panics instead,
/// because a missing privilege in CI must fail the run rather than skip tests silently.
pub fn require_privileges(test: &str) -> bool {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    match CHECK.get_or_init(check) {
        Ok(()) => true,
        Err(why) if in_ci() => panic!("{test}: needs root and BPF, but {why} (CI must run it)"),
        Err(why) => {
            // Written to the stderr handle, not with eprintln!: the test harness captures the
            // latter and shows it only for failed tests, which would make the skip silent.
            let bar = "*".repeat(72);
            let _ = writeln!(
                io::stderr(),
                "{bar}\nSKIPPED {test}: needs root and BPF ({why})\n{bar}"
            );
            false
        }
    }
}

fn in_ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true" | "1"))
}

fn check() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the process is not root".into());
    }
    can_create_netns().map_err(|e| format!("cannot create a network namespace: {e}"))?;
    can_create_bpf_map().map_err(|e| format!("cannot create a BPF map: {e}"))?;
    Ok(())
}

/// Tries `unshare(CLONE_NEWNET)` on a throwaway thread: it only moves that thread, and the
/// namespace disappears with it.
fn can_create_netns() -> io::Result<()> {
    std::thread::spawn(|| {
        // SAFETY: unshare affects only this short-lived thread.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    })
    .join()
    .map_err(|_| io::Error::other("probe thread panicked"))?
}

/// Creates and closes a one-element array map.
fn can_create_bpf_map() -> io::Result<()> {
    bpfsys::create_array_map().map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_here_means_privileges_are_granted() {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if root || !in_ci() {
            // As root the checks must pass; a non-root run outside CI just skips.
            assert_eq!(
                require_privileges("privileges::self_check"),
                check().is_ok()
            );
        }
        if root {
            assert!(check().is_ok(), "{:?}", check());
        }
    }
}
