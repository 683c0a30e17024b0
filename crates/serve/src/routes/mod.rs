//! Every HTTP route, one file per API family: [`tei`] (text-embeddings-
//! inference), [`openai`], [`ops`] (health, info, metrics). A new route is a
//! new file here whose `routes()` is merged in [`router`]. Owns the router
//! and the checks the embedding routes share.

pub(crate) mod openai;
pub(crate) mod ops;
pub(crate) mod rerank;
pub(crate) mod tei;

use crate::error::ApiError;
use crate::AppState;
use axum::http::StatusCode;
use axum::Router;
use std::sync::Arc;

/// 400 for no inputs, 413 for more than `max_inputs`.
pub(crate) fn check_count(st: &AppState, n: usize) -> std::result::Result<(), ApiError> {
    if n == 0 {
        return Err(ApiError(StatusCode::BAD_REQUEST, "no inputs".into(), "validation"));
    }
    if n > st.config.max_inputs {
        return Err(ApiError(StatusCode::PAYLOAD_TOO_LARGE, format!("{n} inputs in one request; at most {} (--max-inputs)", st.config.max_inputs), "validation"));
    }
    Ok(())
}

/// The routes over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .merge(tei::routes())
        .merge(openai::routes())
        .merge(ops::routes())
        .merge(rerank::routes())
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such route: POST /embed, POST /v1/embeddings, GET /health, /info, /metrics".into(), "validation") })
        .with_state(state)
}

