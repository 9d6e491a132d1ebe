//! A GET from inside a namespace, for the agent's health and metrics endpoints.

use std::net::SocketAddr;

use kproxy_testbed::Netns;

/// Status code and body of `GET path` on `addr`, from inside `ns`; a failure keeps the kind
/// of the I/O error behind it (tests tell a refused connection from others).
pub fn get(ns: &Netns, addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    kproxy_testbed::http::get(ns, addr, path)
        .map(|r| (r.status, r.body))
        .map_err(|e| {
            let kind = e
                .root_cause()
                .downcast_ref::<std::io::Error>()
                .map_or(std::io::ErrorKind::Other, std::io::Error::kind);
            std::io::Error::new(kind, format!("{e:#}"))
        })
}

/// The value of the first sample of `metric` (exact name, labels included if given) in a
/// Prometheus text exposition.
pub fn sample(metrics: &str, metric: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == metric).then(|| value.parse().ok())?
    })
}
