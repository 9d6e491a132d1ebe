//! Subcommands other than `run`.

pub mod cleanup;
pub mod services;
