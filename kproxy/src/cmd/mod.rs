//! Subcommands other than `run`.

pub mod cleanup;
pub mod explain;
pub mod kube_proxy_leftovers;
pub mod services;
