//! The API server's lists with nothing else reading them: every Service and EndpointSlice
//! listed at once, as a proxy's first lists ask (kproxy's and client-go's informers':
//! protobuf, resourceVersion 0, kube-proxy's selectors), each response read to its end and
//! dropped. What the API server alone takes to serve a proxy's start: the floor under the
//! time any proxy needs to see a large cluster.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};

use super::ControlPlane;

/// kube-proxy's informers' label selector (kproxy's too): not another proxy's, not headless.
const LABELS: &str = "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// One round of both lists.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListsAlone {
    /// Until both responses were read, milliseconds.
    pub ms: f64,
    pub services_ms: f64,
    pub slices_ms: f64,
    /// Both responses' bytes.
    pub bytes: u64,
    /// The API server's CPU time over the round (user and system), seconds.
    pub apiserver_cpu_s: f64,
}

impl ControlPlane {
    /// Lists every Service and EndpointSlice at once, as a proxy's first lists do.
    pub fn lists_alone(&self) -> Result<ListsAlone> {
        let cpu_before = self.apiserver_cpu_seconds()?;
        let services = format!(
            "/api/v1/services?resourceVersion=0&labelSelector={}&fieldSelector={}",
            query(LABELS),
            query("spec.clusterIP!=None")
        );
        let slices = format!(
            "/apis/discovery.k8s.io/v1/endpointslices?resourceVersion=0&labelSelector={}",
            query(LABELS)
        );
        let client = self.client();
        let started = Instant::now();
        let ((services_took, services_bytes), (slices_took, slices_bytes)) =
            self.run(async move {
                let (services, slices) =
                    futures_util::join!(read(&client, services), read(&client, slices));
                Ok::<_, anyhow::Error>((services?, slices?))
            })?;
        let took = started.elapsed();
        Ok(ListsAlone {
            ms: millis(took),
            services_ms: millis(services_took),
            slices_ms: millis(slices_took),
            bytes: services_bytes + slices_bytes,
            apiserver_cpu_s: self.apiserver_cpu_seconds()? - cpu_before,
        })
    }
}

/// Reads the list at `path` as protobuf to its end: how long it took and its bytes.
async fn read(client: &kube::Client, path: String) -> Result<(Duration, u64)> {
    let started = Instant::now();
    let request = http::Request::get(&path)
        .header(http::header::ACCEPT, "application/vnd.kubernetes.protobuf")
        .body(kube::client::Body::empty())?;
    let response = client
        .send(request)
        .await
        .with_context(|| format!("listing {path}"))?;
    if !response.status().is_success() {
        bail!("listing {path}: HTTP {}", response.status());
    }
    let mut body = response.into_body();
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame
            .with_context(|| format!("reading {path}"))?
            .into_data()
        {
            bytes += data.len() as u64;
        }
    }
    Ok((started.elapsed(), bytes))
}

fn query(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
