//! client-go's request metrics for kproxy's Kubernetes client, under client-go's names,
//! labels and buckets (`k8s.io/component-base/metrics/prometheus/restclient`), as kube-proxy
//! exports them: `rest_client_requests_total{code,method,host}` and
//! `rest_client_request_duration_seconds{verb,host}`. A tower layer around the client's
//! whole stack counts each request once its response headers arrive (a watch's stream then
//! runs on; its time is not the request's), or once it failed (`code="<error>"`, as
//! client-go labels a request without a response).

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use http::{Request, Response};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};
use tower::{Layer, Service};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub code: String,
    pub method: String,
    pub host: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    pub verb: String,
    pub host: Arc<str>,
}

type Buckets = fn() -> Histogram;

/// client-go's request-latency buckets, 5 ms to 60 s.
fn duration_buckets() -> Histogram {
    Histogram::new([
        0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0,
    ])
}

/// The metrics' handles (cheap to clone: families share their series).
#[derive(Clone, Debug)]
pub struct RestClientMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<DurationLabels, Histogram, Buckets>,
}

impl RestClientMetrics {
    /// Registers the metrics in `registry` (without a prefix: the names are client-go's).
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_buckets),
        };
        registry.register(
            "rest_client_requests",
            "Number of HTTP requests, partitioned by status code, method, and host.",
            m.requests.clone(),
        );
        registry.register(
            "rest_client_request_duration_seconds",
            "Request latency in seconds. Broken down by verb, and host.",
            m.duration.clone(),
        );
        m
    }

    /// The layer that measures a client talking to `host` (`host:port` of the API server).
    pub fn layer(&self, host: &str) -> MeasureLayer {
        MeasureLayer {
            metrics: self.clone(),
            host: host.into(),
        }
    }

    fn record(&self, method: &str, host: &Arc<str>, code: String, started: Instant) {
        self.requests
            .get_or_create(&RequestLabels {
                code,
                method: method.to_owned(),
                host: Arc::clone(host),
            })
            .inc();
        self.duration
            .get_or_create(&DurationLabels {
                verb: method.to_owned(),
                host: Arc::clone(host),
            })
            .observe(started.elapsed().as_secs_f64());
    }
}

#[derive(Clone, Debug)]
pub struct MeasureLayer {
    metrics: RestClientMetrics,
    host: Arc<str>,
}

impl<S> Layer<S> for MeasureLayer {
    type Service = Measured<S>;

    fn layer(&self, inner: S) -> Measured<S> {
        Measured {
            inner,
            metrics: self.metrics.clone(),
            host: Arc::clone(&self.host),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Measured<S> {
    inner: S,
    metrics: RestClientMetrics,
    host: Arc<str>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Measured<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let method = request.method().as_str().to_owned();
        let started = Instant::now();
        let response = self.inner.call(request);
        let (metrics, host) = (self.metrics.clone(), Arc::clone(&self.host));
        Box::pin(async move {
            let response = response.await;
            let code = match &response {
                Ok(r) => r.status().as_u16().to_string(),
                Err(_) => "<error>".to_owned(),
            };
            metrics.record(&method, &host, code, started);
            response
        })
    }
}

#[cfg(test)]
mod tests;
