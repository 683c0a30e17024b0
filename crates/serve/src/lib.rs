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
//! wire), [`tokens`] (truncation, prompts, token ids), [`front`] (cutting
//! a long text before it is tokenized), [`metrics`] (Prometheus),
//! [`layers`] (API key, CORS, log, payload limit), `routes/` (one file per
//! API family), [`conn`] (connections: timeouts, the connection cap, the
//! Host check, JSON for hyper's own errors, bounded shutdown), and
//! [`serve`] here.
//!
//! Errors are JSON, every one of them (TEI's `{"error", "error_type"}`;
//! OpenAI's `{"error": {"message", "type", "param", "code"}}` on its
//! routes): 400 for bad input (or a request hyper cannot parse), 401
//! without the API key, 403 for a foreign Host on a loopback server without
//! an API key, 404, 405, 413 for too many inputs, too large a body or a
//! text over the model's length with `truncate: false`, 414/431 for too long
//! a URI or head, 429 (with `Retry-After`) when the queue is full, 503 when
//! the server is shutting down or unhealthy or the connection cap is
//! reached, 504 when a request's deadline passed, 500 for anything else (a
//! generic message; the detail goes to the log).

pub mod conn;
mod error;
pub mod front;
mod layers;
pub mod metrics;
mod routes;
pub mod state;
pub mod tokens;

pub use conn::ConnConfig;
pub use error::{client_message, status_for};
pub use routes::router;
pub use state::{AppState, ServeConfig, ServeModel, TokenEmbedder};

use std::future::Future;
use std::sync::Arc;

/// Serve on `listener` until `shutdown` resolves; then finish the requests
/// in flight (closing connections still open after
/// `state.config.conn.shutdown_timeout`) and drain the batcher (waiting at
/// most what is left of that timeout).
///
/// On a loopback listener without an API key (`state.config.api_key`),
/// requests whose Host header is not a loopback name get 403.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<AppState>, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    let check_host = listener.local_addr()?.ip().is_loopback() && state.config.api_key.is_none();
    let conn = state.config.conn.clone();
    let t_stop = Arc::new(std::sync::Mutex::new(None::<std::time::Instant>));
    let t = t_stop.clone();
    let shutdown = async move {
        shutdown.await;
        *t.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
    };
    let r = conn::run(listener, router(state.clone()), conn.clone(), check_host, shutdown).await;
    // The batcher's shutdown joins its workers: off the async threads.
    let st = state.clone();
    let drain = tokio::task::spawn_blocking(move || st.shutdown());
    let since = t_stop.lock().unwrap_or_else(|p| p.into_inner()).map(|t| t.elapsed()).unwrap_or_default();
    let left = conn.shutdown_timeout.saturating_sub(since);
    if tokio::time::timeout(left, drain).await.is_err() {
        eprintln!("serve: the batcher was still running accepted texts when the shutdown timeout ({:?}) passed; not waiting for it", conn.shutdown_timeout);
    }
    r
}
