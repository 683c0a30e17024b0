//! `POST /v1/embeddings`, the OpenAI embeddings shape. Owns that route's
//! request and response bodies.

use super::check_count;
use super::tei::Inputs;
use crate::error::{body_error, ApiError};
use crate::AppState;
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

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


pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/v1/embeddings", post(openai_embeddings))
}
