//! A GET from inside a namespace, for the agent's health and metrics endpoints.

use std::net::SocketAddr;

use kproxy_testbed::Netns;

/// Status code and body of `GET path` on `addr`, from inside `ns`.
pub fn get(ns: &Netns, addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    kproxy_testbed::http::get(ns, addr, path)
        .map(|r| (r.status, r.body))
        .map_err(|e| std::io::Error::other(format!("{e:#}")))
}

/// The value of the first sample of `metric` (exact name, labels included if given) in a
/// Prometheus text exposition.
pub fn sample(metrics: &str, metric: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == metric).then(|| value.parse().ok())?
    })
}
