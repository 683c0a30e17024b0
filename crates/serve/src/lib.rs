//! braid-serve: an HTTP server for sentence embeddings, a thin layer over the
//! dynamic [`Batcher`] and the model (as text-embeddings-inference is): each
//! text of a request becomes one batcher request, so texts from many
//! connections share forwards. Owns the routes and their JSON shapes, the
//! mapping from braid's errors to HTTP statuses, and graceful shutdown
//! (stop accepting connections, answer what was accepted, drain the batcher).
//!
//! Routes:
//! - `POST /embed` `{"inputs": "text"}` or `{"inputs": ["a", "b"]}` →
//!   `[[f32; dim], ...]` (L2-normalised, one per input, in order; the
//!   text-embeddings-inference shape);
//! - `POST /v1/embeddings` `{"input": "text" | [..]}` → the OpenAI shape
//!   (`data[i].embedding`, `usage.prompt_tokens`);
//! - `GET /health` → `{"status": "ok", ...}`;
//! - `GET /info` → model, device, dimension, limits, batcher settings;
//! - `GET /metrics` → the batcher's counters (submitted, completed,
//!   rejected, timed out, batches, queue depth, mean batch, mean wait and
//!   compute).
//!
//! Layout: [`state`] (what the routes share), [`error`] (errors on the
//! wire), `routes/` (one file per API family), and [`serve`] here.
//!
//! Errors are JSON `{"error": "...", "error_type": "..."}`: 400 for bad
//! input, 413 for too many inputs in one request, 503 when the queue is full
//! or the server is shutting down, 504 when a request's deadline passed,
//! 500 for anything else.

mod error;
mod routes;
pub mod state;

pub use error::status_for;
pub use routes::router;
pub use state::{AppState, ServeConfig, TokenEmbedder};

use std::future::Future;
use std::sync::Arc;

/// Serve on `listener` until `shutdown` resolves; then finish the requests
/// in flight and drain the batcher.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<AppState>, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    let r = axum::serve(listener, router(state.clone())).with_graceful_shutdown(shutdown).await;
    // The batcher's shutdown joins its workers: off the async threads.
    let st = state.clone();
    let _ = tokio::task::spawn_blocking(move || st.shutdown()).await;
    r
}
