//! Helpers shared by the integration tests.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the support code"
)]

pub mod agent;
pub mod cgroup;
pub mod cluster;
pub mod datapath;
pub mod http;
pub mod lan;
pub mod links;
pub mod manifests;
pub mod objects;
pub mod packets;
