//! The binary's command line.

use std::process::Command;

fn kproxy(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kproxy"))
        .args(args)
        .output()
        .expect("running kproxy")
}

#[test]
fn help_lists_the_subcommands() {
    let out = kproxy(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["run", "services", "cleanup"] {
        assert!(text.contains(cmd), "{cmd} in --help:\n{text}");
    }
}

#[test]
fn run_requires_its_interface_flags() {
    let out = kproxy(&["run", "--manifests", "/nonexistent", "--node-name", "n"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--attach"));
}

#[test]
fn services_on_a_missing_pin_dir_fails_with_a_clear_error() {
    let out = kproxy(&["services", "--pin-dir", "/nonexistent/kproxy"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/kproxy/KP_SERVICES"), "{err}");
}
