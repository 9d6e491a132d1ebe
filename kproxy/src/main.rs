//! The `kproxy` binary; everything lives in the library.

fn main() -> std::process::ExitCode {
    kproxy::cli::main()
}
