//! The Prometheus endpoint, `[metrics] address`: `GET /v1/metrics` on TCP, as containerd
//! serves it, in the text exposition format. It shows the task metrics of the cgroups
//! monitor and this process's own (CPU, memory, file descriptors).

use std::sync::Arc;

use anyhow::Context;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use crated_metrics::CgroupsMonitor;
use prometheus::core::Collector;
use prometheus::Encoder;

/// Binds the address now (a bad one stops the daemon at start, as containerd's does) and
/// serves until the returned task is dropped or aborted.
pub async fn serve(
    address: &str,
    monitors: Vec<Arc<CgroupsMonitor>>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("metrics.address {address:?}: listening"))?;
    tracing::info!(address = %address, "serving metrics on /v1/metrics");
    let process = Arc::new(prometheus::process_collector::ProcessCollector::for_self());
    let app = axum::Router::new().route(
        "/v1/metrics",
        axum::routing::get(move || {
            let monitors = monitors.clone();
            let process = process.clone();
            async move { render(&monitors, &*process).await }
        }),
    );
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("metrics endpoint: {e}");
        }
    }))
}

async fn render(monitors: &[Arc<CgroupsMonitor>], process: &dyn Collector) -> impl IntoResponse {
    let mut families = process.collect();
    for monitor in monitors {
        families.extend(monitor.gather().await);
    }
    let encoder = prometheus::TextEncoder::new();
    let mut body = Vec::new();
    match encoder.encode(&families, &mut body) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, encoder.format_type().to_owned())],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain".to_owned())],
            e.to_string().into_bytes(),
        ),
    }
}
