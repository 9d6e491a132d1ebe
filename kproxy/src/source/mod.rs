//! Where Services, EndpointSlices and the Node come from.

pub mod api;
pub mod files;
pub mod manifests;
pub mod watch;
