//! The agent's HTTP endpoints, as kube-proxy serves them: `/healthz` (and `/livez`) and
//! `/readyz` on the health address (kube-proxy's 10256), `/metrics` on the metrics address
//! (10249).
//!
//! Health follows kube-proxy's ProxyHealthServer: the agent is unhealthy once a change has
//! waited longer than the timeout without being programmed, healthy otherwise; `/healthz`
//! (not `/livez`) also fails while the node is leaving (being deleted, or tainted by the
//! Cluster Autoscaler for deletion), so load balancers drain it first. Ready means the
//! datapath was programmed from a complete view of the cluster at least once.

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

    /// Healthy unless a change has waited longer than the timeout.
    pub fn healthy_at(&self, now: Instant) -> bool {
        self.state()
            .pending_since
            .is_none_or(|since| now.saturating_duration_since(since) <= self.timeout)
    }

    pub fn ready(&self) -> bool {
        self.state().ready
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
/// proxy is alive and must not be restarted.
async fn livez(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let healthy = health.healthy_at(Instant::now());
    health_response(&health, healthy, None)
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
    if health.ready() {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the datapath has not been programmed from a synced cluster view yet\n",
        )
    }
}

async fn metrics(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/plain")],
            format!("encoding metrics failed: {e}\n"),
        ),
    }
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

/// Binds `addr` now (so a taken port fails the start) and serves `router` in the background.
pub async fn serve(addr: SocketAddr, router: Router, what: &'static str) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} address {addr}"))?;
    let bound = listener.local_addr().unwrap_or(addr);
    tracing::info!(%bound, "serving {what}");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "the {what} server stopped");
        }
    });
    Ok(())
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
