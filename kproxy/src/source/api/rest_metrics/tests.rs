use http::{Request, Response, StatusCode};
use prometheus_client::registry::Registry;
use prometheus_parse::{Scrape, Value};
use tower::{Layer, ServiceExt, service_fn};

use super::RestClientMetrics;

const HOST: &str = "198.18.199.2:6443";

/// A stand-in for the client's stack below the layer: answers each path's status, and
/// fails `/broken` without a response.
async fn answer(request: Request<()>) -> Result<Response<()>, std::io::Error> {
    match request.uri().path() {
        "/broken" => Err(std::io::Error::other("connection reset")),
        "/missing" => Ok(Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(())
            .expect("response")),
        _ => Ok(Response::new(())),
    }
}

async fn send(metrics: &RestClientMetrics, method: &str, path: &str) {
    let service = metrics.layer(HOST).layer(service_fn(answer));
    let request = Request::builder()
        .method(method)
        .uri(path)
        .body(())
        .expect("request");
    let _ = service.oneshot(request).await;
}

#[tokio::test]
async fn requests_are_counted_by_code_method_and_host_and_timed_by_verb() {
    let mut registry = Registry::default();
    let metrics = RestClientMetrics::new(&mut registry);
    send(&metrics, "GET", "/api/v1/services").await;
    send(&metrics, "GET", "/api/v1/services").await;
    send(&metrics, "GET", "/missing").await;
    send(&metrics, "POST", "/broken").await;

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encoding");
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses");
    let requests = |code: &str, method: &str| {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == "rest_client_requests_total"
                    && s.labels.get("code") == Some(code)
                    && s.labels.get("method") == Some(method)
                    && s.labels.get("host") == Some(HOST)
            })
            .map(|s| match s.value {
                Value::Counter(v) | Value::Untyped(v) | Value::Gauge(v) => v,
                _ => f64::NAN,
            })
    };
    assert_eq!(requests("200", "GET"), Some(2.0), "{text}");
    assert_eq!(requests("404", "GET"), Some(1.0));
    assert_eq!(requests("<error>", "POST"), Some(1.0));
    let get = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "rest_client_request_duration_seconds"
                && s.labels.get("verb") == Some("GET")
                && s.labels.get("host") == Some(HOST)
        })
        .expect("GET timed");
    let Value::Histogram(buckets) = &get.value else {
        panic!("{get:?}");
    };
    let bounds: Vec<f64> = buckets.iter().map(|b| b.less_than).collect();
    assert_eq!(
        bounds,
        [
            0.005,
            0.025,
            0.1,
            0.25,
            0.5,
            1.0,
            2.0,
            4.0,
            8.0,
            15.0,
            30.0,
            60.0,
            f64::INFINITY
        ],
        "client-go's buckets"
    );
    assert_eq!(buckets.last().map(|b| b.count), Some(3.0), "three GETs");
}
