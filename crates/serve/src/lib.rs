//! braid-serve: an HTTP server for sentence embeddings, a thin layer over the
//! dynamic [`Batcher`] and the model (as text-embeddings-inference is): each
//! text of a request becomes one batcher request, so texts from many
//! connections share forwards. Owns the routes and their JSON shapes, the
//! mapping from braid's errors to HTTP statuses, and graceful shutdown
//! (stop accepting connections, answer what was accepted, drain the batcher).
//!
//! Routes (a drop-in for text-embeddings-inference and the OpenAI
//! embeddings API; see `routes/` and the README's "Serving embeddings over
//! HTTP"): TEI's `POST /embed`, `/`, `/embed_all`, `/similarity`,
//! `/tokenize`, `/decode`; OpenAI's `POST /v1/embeddings` (and
//! `/embeddings`); `GET /health`, `/info`, `/metrics` (Prometheus),
//! `/metrics/json`.
//!
//! Layout: [`state`] (what the routes share), [`error`] (errors on the
//! wire), [`tokens`] (truncation, prompts, token ids), [`metrics`]
//! (Prometheus), [`layers`] (API key, CORS, log, payload limit), `routes/`
//! (one file per API family), and [`serve`] here.
//!
//! Errors are JSON (TEI's `{"error", "error_type"}`, OpenAI's `{"error":
//! {"message", "type", "param", "code"}}` on its routes): 400 for bad
//! input, 401 without the API key, 413 for too many inputs or a text over
//! the model's length with `truncate: false`, 429 (with `Retry-After`) when
//! the queue is full, 503 when the server is shutting down or unhealthy,
//! 504 when a request's deadline passed, 500 for anything else.

mod error;
mod layers;
pub mod metrics;
mod routes;
pub mod state;
pub mod tokens;

pub use error::status_for;
pub use routes::router;
pub use state::{AppState, ServeConfig, ServeModel, TokenEmbedder};

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
