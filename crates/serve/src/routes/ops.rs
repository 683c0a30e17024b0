//! The operator's routes: `GET /health`, `GET /info`, `GET /metrics`. Owns
//! what the server says about itself.

use crate::AppState;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;

async fn health(State(st): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "device": st.device, "uptime_s": st.started.elapsed().as_secs_f64() }))
}

async fn info(State(st): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let b = &st.config.batcher;
    Json(json!({
        "model": st.embedder.dir().display().to_string(),
        "device": st.device,
        "dim": st.embedder.dim(),
        "max_seq_length": st.embedder.max_seq_length(),
        "modules": st.embedder.describe(),
        "max_inputs": st.config.max_inputs,
        "max_batch_size": b.max_batch_size,
        "max_queue_delay_ms": b.max_queue_delay.as_secs_f64() * 1e3,
        "workers": b.workers,
        "capacity": b.capacity,
    }))
}

async fn metrics(State(st): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let s = st.batcher.stats();
    Json(json!({
        "submitted": s.submitted,
        "completed": s.completed,
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
    Router::new().route("/health", get(health)).route("/info", get(info)).route("/metrics", get(metrics))
}
