//! The `kproxy` agent, built for the end-to-end tests (see Cargo.toml).

fn main() -> std::process::ExitCode {
    kproxy::cli::main()
}
