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
//! Errors are JSON `{"error": "...", "error_type": "..."}`: 400 for bad
//! input, 413 for too many inputs in one request, 503 when the queue is full
//! or the server is shutting down, 504 when a request's deadline passed,
//! 500 for anything else.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use braid_batch::{BatchModel, Batcher, BatcherConfig};
use braid_nn::{BertInput, SentenceEmbedder};
use braid_runtime::{Error, Result};
use serde::Deserialize;
use serde_json::json;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

/// Token ids in, one normalised embedding out: the batcher's view of a
/// [`SentenceEmbedder`]. Rows are padded to the longest within a batch (the
/// batcher groups texts of similar length first).
pub struct TokenEmbedder(pub Arc<SentenceEmbedder>);

impl BatchModel for TokenEmbedder {
    type Input = Vec<u32>;
    type Output = Vec<f32>;
    type Worker = ();
    fn worker(&self, _: usize) -> Result<()> {
        Ok(())
    }
    fn len(&self, ids: &Vec<u32>) -> usize {
        ids.len()
    }
    fn forward(&self, _: &mut (), inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>> {
        let input = BertInput::from_rows(&inputs, self.0.tokenizer().pad_id());
        let out = self.0.embed_input(&input)?.to_vec()?;
        Ok(out.chunks(self.0.dim()).map(|c| c.to_vec()).collect())
    }
}

/// Server settings.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub batcher: BatcherConfig,
    /// Texts in one request, at most (more: 413).
    pub max_inputs: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig { batcher: BatcherConfig { max_batch_size: 32, max_queue_delay: std::time::Duration::from_millis(2), ..BatcherConfig::default() }, max_inputs: 256 }
    }
}

/// What the handlers share.
pub struct AppState {
    embedder: Arc<SentenceEmbedder>,
    batcher: Batcher<TokenEmbedder>,
    config: ServeConfig,
    device: String,
    started: Instant,
}

impl AppState {
    /// Start the batcher's workers over `embedder`.
    pub fn new(embedder: Arc<SentenceEmbedder>, device: String, config: ServeConfig) -> Result<Arc<AppState>> {
        if config.max_inputs == 0 {
            return Err(Error::InvalidArgument("max_inputs must be at least 1".into()));
        }
        let batcher = Batcher::new(Arc::new(TokenEmbedder(embedder.clone())), config.batcher.clone())?;
        Ok(Arc::new(AppState { embedder, batcher, config, device, started: Instant::now() }))
    }

    /// The batcher's counters.
    pub fn stats(&self) -> braid_batch::BatcherStats {
        self.batcher.stats()
    }

    /// Stop taking requests and answer every one already accepted.
    pub fn shutdown(&self) {
        self.batcher.shutdown();
    }

    /// Token ids of `texts` (truncated to the model's length). Tokenizing a
    /// long text takes a while, so it runs on tokio's blocking pool, not on
    /// the threads that drive connections.
    pub async fn tokenize(&self, texts: Vec<String>) -> Result<Vec<Vec<u32>>> {
        let e = self.embedder.clone();
        tokio::task::spawn_blocking(move || texts.iter().map(|t| e.tokenizer().encode(t)).collect::<Result<Vec<_>>>())
            .await
            .map_err(|j| Error::JobPanicked(format!("tokenizer: {j}")))?
    }

    /// Embed token ids through the batcher (each text its own request).
    pub async fn embed_ids(&self, ids: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>> {
        let mut handles = Vec::with_capacity(ids.len());
        for row in ids {
            handles.push(self.batcher.submit(row)?);
        }
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            out.push(h.await?);
        }
        Ok(out)
    }

    /// Tokenize and embed `texts`.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>> {
        let ids = self.tokenize(texts).await?;
        self.embed_ids(ids).await
    }
}

/// The HTTP status for a braid error.
pub fn status_for(e: &Error) -> StatusCode {
    match e {
        Error::InvalidArgument(_) | Error::Shape { .. } => StatusCode::BAD_REQUEST,
        Error::Overloaded { .. } | Error::ShutDown(_) | Error::DeviceShutDown(_) | Error::PoolExhausted { .. } => StatusCode::SERVICE_UNAVAILABLE,
        Error::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A JSON error response.
struct ApiError(StatusCode, String, &'static str);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let kind = match status_for(&e) {
            StatusCode::BAD_REQUEST => "validation",
            StatusCode::SERVICE_UNAVAILABLE => "overloaded",
            StatusCode::GATEWAY_TIMEOUT => "timeout",
            _ => "backend",
        };
        ApiError(status_for(&e), e.to_string(), kind)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1, "error_type": self.2 }))).into_response()
    }
}

/// A body axum could not read as the expected JSON. The rejection's own
/// status where it is 413 (body over the limit); 400 otherwise (axum says
/// 415 or 422 for some; one status for "fix your body" is simpler for
/// clients).
fn body_error(r: JsonRejection, expected: &str) -> ApiError {
    let status = if r.status() == StatusCode::PAYLOAD_TOO_LARGE { StatusCode::PAYLOAD_TOO_LARGE } else { StatusCode::BAD_REQUEST };
    ApiError(status, format!("expected {expected}: {}", r.body_text()), "validation")
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Inputs {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct EmbedRequest {
    inputs: Inputs,
}

async fn embed(State(st): State<Arc<AppState>>, body: std::result::Result<Json<EmbedRequest>, JsonRejection>) -> std::result::Result<Json<Vec<Vec<f32>>>, ApiError> {
    let Json(req) = body.map_err(|r| body_error(r, r#"{"inputs": "text" | ["text", ...]}"#))?;
    let texts = match req.inputs {
        Inputs::One(t) => vec![t],
        Inputs::Many(v) => v,
    };
    check_count(&st, texts.len())?;
    Ok(Json(st.embed(texts).await?))
}

#[derive(Deserialize)]
struct OpenAiRequest {
    input: Inputs,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    encoding_format: Option<String>,
}

/// `POST /v1/embeddings`, the OpenAI shape (as text-embeddings-inference
/// also offers): `{"input": "text" | [..], "model"?: ".."}` →
/// `{"object": "list", "data": [{"object": "embedding", "index", "embedding"}], "model", "usage"}`.
async fn openai_embeddings(State(st): State<Arc<AppState>>, body: std::result::Result<Json<OpenAiRequest>, JsonRejection>) -> std::result::Result<Json<serde_json::Value>, ApiError> {
    let Json(req) = body.map_err(|r| body_error(r, r#"{"input": "text" | ["text", ...]}"#))?;
    if let Some(f) = req.encoding_format.as_deref().filter(|f| *f != "float") {
        return Err(ApiError(StatusCode::BAD_REQUEST, format!("encoding_format {f:?} is not supported (only \"float\")"), "validation"));
    }
    let texts = match req.input {
        Inputs::One(t) => vec![t],
        Inputs::Many(v) => v,
    };
    check_count(&st, texts.len())?;
    let ids = st.tokenize(texts).await?;
    let tokens: usize = ids.iter().map(|r| r.len()).sum();
    let embeddings = st.embed_ids(ids).await?;
    let data: Vec<serde_json::Value> = embeddings.into_iter().enumerate().map(|(i, e)| json!({ "object": "embedding", "index": i, "embedding": e })).collect();
    let model = req.model.unwrap_or_else(|| st.embedder.dir().display().to_string());
    Ok(Json(json!({ "object": "list", "data": data, "model": model, "usage": { "prompt_tokens": tokens, "total_tokens": tokens } })))
}

/// 400 for no inputs, 413 for more than `max_inputs`.
fn check_count(st: &AppState, n: usize) -> std::result::Result<(), ApiError> {
    if n == 0 {
        return Err(ApiError(StatusCode::BAD_REQUEST, "no inputs".into(), "validation"));
    }
    if n > st.config.max_inputs {
        return Err(ApiError(StatusCode::PAYLOAD_TOO_LARGE, format!("{n} inputs in one request; at most {} (--max-inputs)", st.config.max_inputs), "validation"));
    }
    Ok(())
}

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

/// The routes over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/embed", post(embed))
        .route("/v1/embeddings", post(openai_embeddings))
        .route("/health", get(health))
        .route("/info", get(info))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such route: POST /embed, POST /v1/embeddings, GET /health, /info, /metrics".into(), "validation") })
        .with_state(state)
}

/// Serve on `listener` until `shutdown` resolves; then finish the requests
/// in flight and drain the batcher.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<AppState>, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    let r = axum::serve(listener, router(state.clone())).with_graceful_shutdown(shutdown).await;
    // The batcher's shutdown joins its workers: off the async threads.
    let st = state.clone();
    let _ = tokio::task::spawn_blocking(move || st.shutdown()).await;
    r
}
