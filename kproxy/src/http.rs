//! The agent's HTTP endpoints, as kube-proxy serves them: `/healthz` (and `/livez`) and
//! `/readyz` on the health address (kube-proxy's 10256), `/metrics` on the metrics address
//! (10249).
//!
//! Health follows kube-proxy's ProxyHealthServer: the agent is unhealthy once a change has
//! waited longer than the timeout without being programmed, healthy otherwise; `/healthz`
//! (not `/livez`) also fails while the node is leaving (being deleted, or tainted by the
//! Cluster Autoscaler for deletion), so load balancers drain it first. Ready means the
//! datapath was programmed from a complete view of the cluster at least once.

pub mod agent_api;
mod exposition;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};
use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use prometheus_client::registry::Registry;

#[derive(Debug, Default)]
struct HealthState {
    /// When the oldest change not yet programmed arrived.
    pending_since: Option<Instant>,
    last_programmed: Option<SystemTime>,
    ready: bool,
    /// Whether the node may take load-balancer traffic: `None` before the first sync,
    /// `Some(false)` while it is leaving.
    node_eligible: Option<bool>,
}

/// Whether the agent keeps up; shared by the agent (writer) and the HTTP server (reader).
#[derive(Debug)]
pub struct Health {
    timeout: Duration,
    state: Mutex<HealthState>,
}

impl Health {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A change arrived at `at` that is not programmed yet.
    pub fn queued(&self, at: Instant) {
        self.state().pending_since.get_or_insert(at);
    }

    /// Everything queued so far is programmed; `complete` says the agent had a complete
    /// view of the cluster (every cache synced), which makes it ready.
    pub fn programmed(&self, complete: bool) {
        let mut state = self.state();
        state.pending_since = None;
        state.last_programmed = Some(SystemTime::now());
        state.ready |= complete;
    }

    /// A sync wrote what it could, but part of it failed (a full map): what is queued stays
    /// pending, so the agent turns unhealthy once that has lasted the timeout, as
    /// kube-proxy does when its rules fail to apply, and healthy again at the first sync
    /// that writes everything. The rest is served meanwhile: a `complete` view makes the
    /// agent ready as [`Health::programmed`] does.
    pub fn partly_programmed(&self, complete: bool, at: Instant) {
        let mut state = self.state();
        state.pending_since.get_or_insert(at);
        state.ready |= complete;
    }

    /// Healthy unless a change has waited longer than the timeout.
    pub fn healthy_at(&self, now: Instant) -> bool {
        self.state()
            .pending_since
            .is_none_or(|since| now.saturating_duration_since(since) <= self.timeout)
    }

    pub fn ready(&self) -> bool {
        self.state().ready
    }

    /// `/livez`: before the first complete view of the cluster the agent is alive however
    /// long that takes (an unreachable API server, a role missing a verb: a restart would not
    /// help, and the datapath a previous agent pinned keeps serving); after it, healthy.
    pub fn alive_at(&self, now: Instant) -> bool {
        !self.ready() || self.healthy_at(now)
    }

    /// `/readyz`: ready once, and in step now (no change waiting longer than the timeout).
    fn ready_at(&self, now: Instant) -> bool {
        self.ready() && self.healthy_at(now)
    }

    /// The node's Node object says whether it is leaving ([`crate::model::NodeInfo`]).
    pub fn set_node_eligible(&self, eligible: bool) {
        self.state().node_eligible = Some(eligible);
    }

    /// `/healthz`: kept up with changes, and the node is not leaving.
    fn healthz_at(&self, now: Instant) -> (bool, Option<bool>) {
        let eligible = self.state().node_eligible;
        (self.healthy_at(now) && eligible != Some(false), eligible)
    }

    /// The `/healthz` and `/livez` body: kube-proxy's fields (`nodeEligible` only on
    /// `/healthz`, once the node is known).
    fn report(&self, healthy: bool, node_eligible: Option<bool>) -> String {
        let rfc3339 = |t: SystemTime| {
            k8s_openapi::chrono::DateTime::<k8s_openapi::chrono::Utc>::from(t).to_rfc3339()
        };
        let last = self.state().last_programmed.map(rfc3339);
        let mut body = serde_json::json!({
            "lastUpdated": last,
            "currentTime": rfc3339(SystemTime::now()),
            "healthy": healthy,
        });
        if let Some(eligible) = node_eligible {
            body["nodeEligible"] = eligible.into();
        }
        body.to_string()
    }
}

async fn healthz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let (healthy, eligible) = health.healthz_at(Instant::now());
    health_response(&health, healthy, eligible)
}

/// Like `/healthz`, without the node's eligibility (kube-proxy's `/livez`): a leaving node's
/// proxy is alive and must not be restarted. Nor is one still waiting for its first
/// complete view of the cluster (see [`Health::alive_at`]).
async fn livez(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let alive = health.alive_at(Instant::now());
    health_response(&health, alive, None)
}

fn health_response(
    health: &Health,
    healthy: bool,
    eligible: Option<bool>,
) -> impl IntoResponse + use<> {
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [("content-type", "application/json")],
        health.report(healthy, eligible),
    )
}

async fn readyz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    if health.ready_at(Instant::now()) {
        (StatusCode::OK, "ok\n")
    } else if health.ready() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: a change has waited longer than --healthz-timeout to be programmed\n",
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the datapath has not been programmed from a synced cluster view yet\n",
        )
    }
}

async fn metrics(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    exposition::respond(registry)
}

pub fn health_routes(health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(health)
}

pub fn metrics_routes(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(registry)
}

/// How often a server whose address could not be bound tries again (kube-proxy's period).
const BIND_RETRY: Duration = Duration::from_secs(5);

/// Binds `addr` now and serves `router` in the background. An address that cannot be bound
/// (a port taken) fails the start with `hard_fail` (kube-proxy's `--bind-address-hard-fail`);
/// without it, as kube-proxy, the failure is logged and the bind retried every 5 s while
/// the datapath is served: a taken metrics port is no reason to stop balancing traffic.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    what: &'static str,
    hard_fail: bool,
) -> Result<()> {
    match bind(addr, what).await {
        Ok(listener) => {
            tokio::spawn(serve_on(listener, router, what));
            Ok(())
        }
        Err(e) if hard_fail => Err(e.context("--bind-address-hard-fail is set")),
        Err(e) => {
            tracing::error!(
                error = format!("{e:#}"),
                "cannot serve {what} yet; retrying every {}s (--bind-address-hard-fail makes this fatal)",
                BIND_RETRY.as_secs()
            );
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(BIND_RETRY).await;
                    if let Ok(listener) = bind(addr, what).await {
                        serve_on(listener, router, what).await;
                        return;
                    }
                }
            });
            Ok(())
        }
    }
}

async fn bind(addr: SocketAddr, what: &str) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} address {addr}"))
}

async fn serve_on(listener: tokio::net::TcpListener, router: Router, what: &'static str) {
    let bound = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(%bound, "serving {what}");
    if let Err(e) = axum::serve(listener, router).await {
        tracing::error!(error = %e, "the {what} server stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unhealthy_only_while_a_change_waits_too_long() {
        let health = Health::new(Duration::from_mins(1));
        let t0 = Instant::now();
        assert!(health.healthy_at(t0), "nothing queued");
        assert!(!health.ready());
        health.queued(t0);
        health.queued(t0 + Duration::from_secs(30));
        assert!(health.healthy_at(t0 + Duration::from_mins(1)));
        assert!(
            !health.healthy_at(t0 + Duration::from_secs(61)),
            "the oldest queued change counts"
        );
        health.programmed(false);
        assert!(health.healthy_at(t0 + Duration::from_mins(5)));
        assert!(!health.ready(), "programmed from an incomplete view");
        health.programmed(true);
        assert!(health.ready());
        assert!(health.report(true, None).contains("\"lastUpdated\":\"20"));
    }

    #[test]
    fn alive_while_waiting_for_the_first_view_however_long() {
        let health = Health::new(Duration::from_mins(1));
        let t0 = Instant::now();
        health.queued(t0);
        let late = t0 + Duration::from_mins(10);
        assert!(!health.healthy_at(late), "/healthz fails");
        assert!(!health.ready_at(late), "/readyz fails");
        assert!(health.alive_at(late), "/livez: no restart loop");
        health.programmed(true);
        health.queued(late);
        assert!(
            !health.alive_at(late + Duration::from_secs(61)),
            "stuck after it"
        );
    }

    #[test]
    fn a_sync_that_fails_in_part_leaves_its_change_pending_until_one_succeeds() {
        let health = Health::new(Duration::from_mins(1));
        let t0 = Instant::now();
        health.queued(t0);
        health.partly_programmed(true, t0 + Duration::from_secs(1));
        assert!(health.ready(), "the rest of a complete view is served");
        assert!(health.ready_at(t0 + Duration::from_secs(30)));
        let late = t0 + Duration::from_secs(61);
        assert!(
            !health.healthy_at(late),
            "the failing change waited too long"
        );
        assert!(!health.ready_at(late), "/readyz drops with it");
        health.programmed(true);
        assert!(health.healthy_at(late));
        assert!(health.ready_at(late));
        // Failing with nothing queued (a retry after a restart's first sync) starts the clock.
        let t1 = t0 + Duration::from_mins(10);
        health.partly_programmed(true, t1);
        assert!(!health.healthy_at(t1 + Duration::from_secs(61)));
    }

    #[test]
    fn a_leaving_node_fails_healthz_only() {
        let health = Health::new(Duration::from_mins(1));
        let now = Instant::now();
        assert_eq!(
            health.healthz_at(now),
            (true, None),
            "before the first sync"
        );
        health.set_node_eligible(true);
        assert_eq!(health.healthz_at(now), (true, Some(true)));
        health.set_node_eligible(false);
        assert_eq!(health.healthz_at(now), (false, Some(false)));
        assert!(health.healthy_at(now), "/livez ignores the node");
        assert!(
            health
                .report(false, Some(false))
                .contains("\"nodeEligible\":false")
        );
        assert!(!health.report(true, None).contains("nodeEligible"));
    }
}
