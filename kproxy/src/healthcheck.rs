//! healthCheckNodePort servers: for each Service with `externalTrafficPolicy: Local` and a
//! `healthCheckNodePort`, an HTTP server on that port tells load balancers whether this node
//! has endpoints of the Service, as kube-proxy's `pkg/proxy/healthcheck/service_health.go`
//! does.
//!
//! Every path and method gets the same answer: 200 when the Service has local endpoints and
//! the proxy is healthy, 503 otherwise. The proxy's health is kube-proxy's
//! `ProxyHealthServer.Health().Healthy`, what `/livez` reports: no change has waited past the
//! healthz timeout (a node about to be deleted fails `/healthz` only, not these). Answers carry
//! kube-proxy's headers (`Content-Type: application/json`,
//! `X-Content-Type-Options: nosniff`, `X-Load-Balancing-Endpoint-Weight: <local endpoints>`)
//! and its body, byte for byte: `{"service": {"namespace": "ns", "name": "svc"},
//! "localEndpoints": 1, "serviceProxyHealthy": true}` laid out one field a line, indented
//! with tabs, without a final newline (Go's dedented template).
//!
//! A port is listened on at every bind address (kube-proxy binds its nodeport addresses, all
//! addresses by default) or not at all: if one address cannot be bound, the others are closed
//! again and the port is retried at the next sync, as kube-proxy's `closeAll` leaves it. A
//! port that stays wanted keeps its listeners; only what it reports changes, at once.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

use anyhow::Context;
use axum::{
    Router,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use crate::{http::Health, metrics::gauge};

pub use crate::model::ServiceHealth;

/// kube-proxy's default: every address of the node (`--nodeport-addresses` unset).
pub const ALL_ADDRESSES: [IpAddr; 1] = [IpAddr::V4(Ipv4Addr::UNSPECIFIED)];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PortLabel {
    pub port: u16,
}

/// The servers' metrics (`kproxy_health_check_*`).
pub struct HealthCheckMetrics {
    /// Ports listened on at every bind address.
    pub ports_served: Gauge,
    /// Ports wanted but not listened on (tried again at every sync).
    pub ports_failing: Gauge,
    /// Failed attempts to listen, by port (each sync's retry counts).
    pub bind_failures_total: Family<PortLabel, Counter>,
}

impl HealthCheckMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            ports_served: Gauge::default(),
            ports_failing: Gauge::default(),
            bind_failures_total: Family::default(),
        };
        registry.register(
            "health_check_node_ports",
            "healthCheckNodePorts served",
            m.ports_served.clone(),
        );
        registry.register(
            "health_check_node_ports_failing",
            "healthCheckNodePorts that could not be listened on (retried at every sync)",
            m.ports_failing.clone(),
        );
        registry.register(
            "health_check_node_port_bind_failures",
            "Failed attempts to listen on a healthCheckNodePort, by port",
            m.bind_failures_total.clone(),
        );
        m
    }
}

/// The healthCheckNodePort servers of the node, kept in step with the cluster by `sync`.
pub struct HealthCheckServers {
    bind_ips: Vec<IpAddr>,
    proxy_health: Arc<Health>,
    metrics: HealthCheckMetrics,
    serving: BTreeMap<u16, PortServer>,
    /// Ports wanted but not listened on, with the failure last logged (logged again only when
    /// the service or the error changes, so a retry at every sync does not flood the log).
    failing: BTreeMap<u16, Failure>,
}

/// One port's listeners (one per bind address) and what they report.
struct PortServer {
    service: Arc<Mutex<ServiceHealth>>,
    /// Dropped to stop: open connections finish the request they are answering and close.
    _stop: watch::Sender<()>,
    /// One `axum::serve` per listener; each owns its listener.
    tasks: Vec<JoinHandle<()>>,
}

#[derive(Debug, PartialEq, Eq)]
struct Failure {
    service: String,
    error: String,
}

/// What a request handler reads.
#[derive(Clone)]
struct Probe {
    service: Arc<Mutex<ServiceHealth>>,
    proxy_health: Arc<Health>,
}

impl HealthCheckServers {
    /// Servers that will listen on `bind_ips` (`ALL_ADDRESSES` for kube-proxy's default) and
    /// report `proxy_health` as `serviceProxyHealthy`. Nothing listens before `sync`.
    pub fn new(
        bind_ips: Vec<IpAddr>,
        proxy_health: Arc<Health>,
        metrics: HealthCheckMetrics,
    ) -> Self {
        Self {
            bind_ips,
            proxy_health,
            metrics,
            serving: BTreeMap::new(),
            failing: BTreeMap::new(),
        }
    }

    /// Makes the servers those of `wanted` (healthCheckNodePort → its Service's health): ports
    /// no longer wanted stop listening (closed when this returns, so the port is free again),
    /// new ports and ports that failed before are listened on, and the others report the new
    /// counts at once, without touching their listeners or connections.
    ///
    /// Must run inside a Tokio runtime (the servers are tasks of it). A port that cannot be
    /// listened on is logged with its Service, counted, and tried again by the next call;
    /// the other ports are not affected.
    pub async fn sync(&mut self, wanted: &BTreeMap<u16, ServiceHealth>) {
        let gone: Vec<u16> = self
            .serving
            .keys()
            .filter(|port| !wanted.contains_key(port))
            .copied()
            .collect();
        for port in gone {
            if let Some(server) = self.serving.remove(&port) {
                let service = server.service();
                tracing::info!(port, service = %qualified(&service), "closing the health check");
                server.stop().await;
            }
        }
        self.failing.retain(|port, _| wanted.contains_key(port));

        for (&port, service) in wanted {
            if let Some(server) = self.serving.get(&port) {
                server.update(port, service);
                continue;
            }
            match self.listen(port).await {
                Ok(listeners) => {
                    let recovered = self.failing.remove(&port).is_some();
                    tracing::info!(
                        port,
                        service = %qualified(service),
                        addresses = ?self.bind_ips,
                        recovered,
                        "serving the health check"
                    );
                    let server = PortServer::start(listeners, service, &self.proxy_health);
                    self.serving.insert(port, server);
                }
                Err(e) => {
                    self.metrics
                        .bind_failures_total
                        .get_or_create(&PortLabel { port })
                        .inc();
                    let failure = Failure {
                        service: qualified(service),
                        error: format!("{e:#}"),
                    };
                    if self.failing.get(&port) == Some(&failure) {
                        tracing::debug!(port, service = %failure.service, error = %failure.error,
                            "the health check still cannot listen");
                    } else {
                        tracing::error!(port, service = %failure.service, error = %failure.error,
                            "failed to start the health check; retried at every sync");
                        self.failing.insert(port, failure);
                    }
                }
            }
        }
        self.metrics.ports_served.set(gauge(self.serving.len()));
        self.metrics.ports_failing.set(gauge(self.failing.len()));
    }

    /// Ports listened on.
    pub fn serving(&self) -> impl Iterator<Item = u16> + '_ {
        self.serving.keys().copied()
    }

    /// Ports wanted by the last sync that could not be listened on; the next sync tries them
    /// again.
    pub fn failing(&self) -> impl Iterator<Item = u16> + '_ {
        self.failing.keys().copied()
    }

    /// One listener per bind address, or none: on an error the ones already bound are closed
    /// (dropped), so nothing half-serves the port and a retry starts clean.
    async fn listen(&self, port: u16) -> anyhow::Result<Vec<TcpListener>> {
        // Port 0 would get an ephemeral port: it is no healthCheckNodePort.
        anyhow::ensure!(port != 0, "port 0 is not a healthCheckNodePort");
        let mut listeners = Vec::with_capacity(self.bind_ips.len());
        for &ip in &self.bind_ips {
            let addr = SocketAddr::new(ip, port);
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}"))?;
            listeners.push(listener);
        }
        Ok(listeners)
    }
}

impl PortServer {
    fn start(
        listeners: Vec<TcpListener>,
        service: &ServiceHealth,
        proxy_health: &Arc<Health>,
    ) -> Self {
        let service = Arc::new(Mutex::new(service.clone()));
        let router = Router::new().fallback(answer).with_state(Probe {
            service: Arc::clone(&service),
            proxy_health: Arc::clone(proxy_health),
        });
        let (stop, _) = watch::channel(());
        let tasks = listeners
            .into_iter()
            .map(|listener| {
                let mut stopped = stop.subscribe();
                let router = router.clone();
                tokio::spawn(async move {
                    let addr = listener.local_addr().ok();
                    let stopped = async move {
                        // Err once the sender is dropped: that is the signal.
                        let _ = stopped.changed().await;
                    };
                    if let Err(e) = axum::serve(listener, router)
                        .with_graceful_shutdown(stopped)
                        .await
                    {
                        tracing::error!(?addr, error = %e, "a health check server stopped");
                    }
                })
            })
            .collect();
        Self {
            service,
            _stop: stop,
            tasks,
        }
    }

    fn service(&self) -> ServiceHealth {
        self.service
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn update(&self, port: u16, wanted: &ServiceHealth) {
        let mut service = self.service.lock().unwrap_or_else(PoisonError::into_inner);
        if *service != *wanted {
            if (&service.namespace, &service.name) != (&wanted.namespace, &wanted.name) {
                tracing::info!(
                    port,
                    from = %qualified(&service),
                    to = %qualified(wanted),
                    "the health check port changed hands"
                );
            }
            service.clone_from(wanted);
        }
    }

    /// Stops listening: returns once every listener is closed. Open connections are told to
    /// finish (graceful shutdown) and close on their own.
    async fn stop(mut self) {
        let tasks = std::mem::take(&mut self.tasks);
        // Dropping the sender starts the connections' graceful shutdown; aborting the serve
        // task drops its listener, and a cancelled task's handle resolves only once the task
        // is dropped, so the port is free when this returns.
        drop(self);
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            if let Err(e) = task.await
                && e.is_panic()
            {
                tracing::error!(error = %e, "a health check server panicked");
            }
        }
    }
}

impl Drop for PortServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// `namespace/name`, as kube-proxy names a Service in its logs.
fn qualified(service: &ServiceHealth) -> String {
    format!("{}/{}", service.namespace, service.name)
}

async fn answer(State(probe): State<Probe>) -> Response {
    let service = probe
        .service
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    report(&service, probe.proxy_health.healthy_at(Instant::now()))
}

/// kube-proxy's answer (`hcHandler.ServeHTTP`): 200 only with local endpoints and a healthy
/// proxy; the weight header is the local endpoint count either way.
fn report(service: &ServiceHealth, proxy_healthy: bool) -> Response {
    let status = if service.local_endpoints != 0 && proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // kube-proxy prints the names with Go's %q; for Kubernetes names (DNS labels) that is
    // the same as a JSON string, which this is for any name.
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {},\n\t\"serviceProxyHealthy\": {}\n}}",
        quote(&service.namespace),
        quote(&service.name),
        service.local_endpoints,
        proxy_healthy,
    );
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::HeaderName::from_static("x-load-balancing-endpoint-weight"),
                HeaderValue::from(service.local_endpoints),
            ),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(local_endpoints: usize) -> ServiceHealth {
        ServiceHealth {
            namespace: "a".into(),
            name: "b".into(),
            local_endpoints,
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    }

    /// Status, the values of each kube-proxy header, and the body.
    fn parts(response: Response) -> (u16, Vec<Vec<String>>, String) {
        let status = response.status().as_u16();
        let headers = [
            "content-type",
            "x-content-type-options",
            "x-load-balancing-endpoint-weight",
        ]
        .iter()
        .map(|name| {
            response
                .headers()
                .get_all(*name)
                .iter()
                .map(|v| v.to_str().expect("an ASCII header").to_owned())
                .collect()
        })
        .collect();
        let body = runtime()
            .block_on(axum::body::to_bytes(response.into_body(), usize::MAX))
            .expect("the body");
        (
            status,
            headers,
            String::from_utf8(body.to_vec()).expect("UTF-8"),
        )
    }

    #[test]
    fn answers_as_kube_proxy_does() {
        // kube-proxy's TestServer cases: (local endpoints, proxy healthy) → status.
        for (endpoints, healthy, status) in [
            (0, true, 503),
            (18, true, 200),
            (1, true, 200),
            (7, false, 503),
            (0, false, 503),
        ] {
            let (got, headers, body) = parts(report(&service(endpoints), healthy));
            assert_eq!(got, status, "{endpoints} endpoints, healthy {healthy}");
            assert_eq!(
                headers,
                [
                    vec!["application/json".to_owned()],
                    vec!["nosniff".to_owned()],
                    vec![endpoints.to_string()],
                ],
                "{endpoints} endpoints, healthy {healthy}"
            );
            let json: serde_json::Value = serde_json::from_str(&body).expect("a JSON body");
            assert_eq!(
                json,
                serde_json::json!({
                    "service": { "namespace": "a", "name": "b" },
                    "localEndpoints": endpoints,
                    "serviceProxyHealthy": healthy,
                })
            );
        }
    }

    #[test]
    fn the_body_is_laid_out_as_kube_proxy_prints_it() {
        let (_, _, body) = parts(report(&service(3), true));
        assert_eq!(
            body,
            "{\n\t\"service\": {\n\t\t\"namespace\": \"a\",\n\t\t\"name\": \"b\"\n\t},\n\t\"localEndpoints\": 3,\n\t\"serviceProxyHealthy\": true\n}"
        );
        // Names are quoted as JSON strings whatever they hold.
        let odd = ServiceHealth {
            namespace: "n\"s".into(),
            name: "x\\y".into(),
            local_endpoints: 0,
        };
        let (_, _, body) = parts(report(&odd, false));
        let json: serde_json::Value = serde_json::from_str(&body).expect("a JSON body");
        assert_eq!(json["service"]["namespace"], "n\"s");
        assert_eq!(json["service"]["name"], "x\\y");
    }

    /// The agent may hold the sync future across a spawn.
    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn port_zero_is_reported_not_bound() {
        let mut registry = Registry::with_prefix("kproxy");
        let metrics = HealthCheckMetrics::new(&mut registry);
        let health = Arc::new(Health::new(std::time::Duration::from_mins(1)));
        let mut servers = HealthCheckServers::new(ALL_ADDRESSES.to_vec(), health, metrics);
        let wanted = BTreeMap::from([(0, service(1))]);
        runtime().block_on(async {
            let first = servers.sync(&wanted);
            assert_send(&first);
            first.await;
            servers.sync(&wanted).await;
        });
        assert_eq!(servers.failing().collect::<Vec<_>>(), [0]);
        assert_eq!(servers.serving().count(), 0);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("metrics");
        assert!(
            text.contains("kproxy_health_check_node_port_bind_failures_total{port=\"0\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("kproxy_health_check_node_ports_failing 1\n"),
            "{text}"
        );
        assert!(
            text.contains("kproxy_health_check_node_ports 0\n"),
            "{text}"
        );

        runtime().block_on(servers.sync(&BTreeMap::new()));
        assert_eq!(
            servers.failing().count(),
            0,
            "no longer wanted, no longer failing"
        );
    }
}
