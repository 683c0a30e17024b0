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
//! wire), `routes/` (one file per API family), [`conn`] (connections:
//! timeouts, the connection cap, the Host check, JSON for hyper's own
//! errors, bounded shutdown), [`front`] (cutting a long text before it is
//! tokenized), and [`serve`] here.
//!
//! Errors are JSON `{"error": "...", "error_type": "..."}`, every one of
//! them: 400 for bad input (or a request hyper cannot parse), 403 for a
//! foreign Host on a loopback server without an API key, 404, 405, 413 for
//! too many inputs or too large a body, 414/431 for too long a URI or head,
//! 503 when the queue is full, the server is shutting down or the
//! connection cap is reached, 504 when a request's deadline passed, 500 for
//! anything else (a generic message; the detail goes to the log).

pub mod conn;
mod error;
pub mod front;
mod routes;
pub mod state;

pub use conn::ConnConfig;
pub use error::{client_message, status_for};
pub use routes::router;
pub use state::{AppState, ServeConfig, TokenEmbedder};

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
