//! The operator's routes: `GET /health` (a one-token forward within a
//! timeout; 503 when it fails or the device is poisoned), `GET /info`
//! (TEI's fields next to braid's own), `GET /metrics` (Prometheus, OpenMetrics text format) and
//! `GET /metrics/json` (the batcher's counters as JSON). Owns what the
//! server says about itself.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;

async fn health(State(st): State<Arc<AppState>>) -> std::result::Result<Json<serde_json::Value>, ApiError> {
    let probe = st.probe().await;
    // Which devices serve, and why the others do not (`--device cuda:all`).
    let devices: Vec<serde_json::Value> = st.devices().into_iter().map(|d| json!({ "device": d.name, "serving": d.serving, "reason": d.reason, "batches": d.batches, "retried": d.retried })).collect();
    match probe {
        Ok(took) => Ok(Json(json!({ "status": "ok", "device": st.device, "devices": devices, "uptime_s": st.started.elapsed().as_secs_f64(), "probe_ms": took.as_secs_f64() * 1e3 }))),
        Err(e) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: the probe forward failed: {}; devices: {}", crate::error::client_message(&e), serde_json::Value::Array(devices)))),
    }
}

async fn info(State(st): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let b = &st.config.batcher;
    Json(json!({
        // text-embeddings-inference's fields.
        "model_id": st.model_id,
        "model_sha": null,
        "model_dtype": match st.embedder.encoder().dtype() {
            braid_runtime::DType::F32 => "float32",
            braid_runtime::DType::BF16 => "bfloat16",
            braid_runtime::DType::F16 => "float16",
        },
        "model_type": { "embedding": { "pooling": "mean" } },
        "max_concurrent_requests": b.capacity,
        "max_input_length": st.embedder.max_seq_length(),
        "max_batch_tokens": b.max_batch_tokens,
        "max_batch_requests": b.max_batch_size,
        "max_client_batch_size": st.config.max_inputs,
        "auto_truncate": st.config.auto_truncate,
        "tokenization_workers": null,
        "version": env!("CARGO_PKG_VERSION"),
        "sha": null,
        "docker_label": null,
        "prompts": st.prompts,
        "default_prompt": st.default_prompt,
        // braid's own.
        "device": st.device,
        "dim": st.embedder.dim(),
        "max_seq_length": st.embedder.max_seq_length(),
        "modules": st.embedder.describe(),
        "max_inputs": st.config.max_inputs,
        "max_batch_size": b.max_batch_size,
        "batch_policy": b.policy.name(),
        "max_queue_delay_ms": b.max_queue_delay.as_secs_f64() * 1e3,
        "workers": b.workers,
        "capacity": b.capacity,
        "payload_limit": st.config.payload_limit,
        "api_key_required": st.config.api_key.is_some(),
    }))
}

async fn metrics(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    let reserved = st.allocator_bytes_by_device();
    let devices: Vec<crate::metrics::DeviceFigures> = st
        .devices()
        .into_iter()
        .zip(reserved)
        .map(|(d, (label, _, r))| crate::metrics::DeviceFigures { label, serving: d.serving, batches: d.batches as u64, reserved: r })
        .collect();
    let text = st.metrics.render(&st.batcher.stats(), Some(st.allocator_bytes()), &devices);
    // The OpenMetrics text format (what prometheus-client writes: counter
    // families named without `_total`, `# EOF` at the end); Prometheus
    // scrapes it by this content type.
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
}

async fn metrics_json(State(st): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let s = st.batcher.stats();
    Json(json!({
        "submitted": s.submitted,
        "completed": s.completed,
        "cancelled": s.cancelled,
        "rejected": s.rejected,
        "timed_out": s.timed_out,
        "batches": s.batches,
        "queue_depth": s.queue_depth,
        "mean_batch_size": s.mean_batch_size,
        "mean_queue_wait_ms": s.mean_queue_wait.as_secs_f64() * 1e3,
        "mean_compute_ms": s.mean_compute.as_secs_f64() * 1e3,
    }))
}

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/health", get(health)).route("/info", get(info)).route("/metrics", get(metrics)).route("/metrics/json", get(metrics_json))
}
