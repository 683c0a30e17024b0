//! `POST /v1/embeddings` (also `POST /embeddings`), the OpenAI embeddings
//! API: `input` (text, texts, token ids, lists of ids), `encoding_format`
//! (`float` or `base64`: little-endian f32, as OpenAI sends it),
//! `dimensions`, `model` and `user`. Errors in OpenAI's body. Owns that
//! route's request and response bodies.

use super::{Ask, Inputs};
use crate::error::{body_error, ApiError, OpenAiError};
use crate::state::{Timings, Want};
use crate::AppState;
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenAiRequest {
    input: Inputs,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<i64>,
    #[serde(default)]
    #[allow(dead_code)]
    user: Option<String>,
}

async fn embeddings(State(st): State<Arc<AppState>>, body: std::result::Result<Json<OpenAiRequest>, JsonRejection>) -> std::result::Result<(HeaderMap, Json<serde_json::Value>), OpenAiError> {
    let started = Instant::now();
    let Json(req) = body.map_err(|r| body_error(r, r#"{"input": "text" | ["text", ...] | [ids] | [[ids], ...], "model"?, "encoding_format"?: "float" | "base64", "dimensions"?, "user"?}"#).param("input"))?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(f) => return Err(ApiError::bad(format!("encoding_format {f:?} is not supported: use \"float\" or \"base64\"")).param("encoding_format").into()),
    };
    let mut t = Timings::default();
    let ask = Ask { inputs: req.input, want: Want::Pooled { normalize: true }, truncate: None, direction: Default::default(), prompt_name: None, dimensions: req.dimensions };
    let embeddings = super::run(&st, ask, &mut t).await?;
    let data: Vec<serde_json::Value> = embeddings
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let emb = if base64 {
                let bytes: Vec<u8> = e.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(e)
            };
            json!({ "object": "embedding", "index": i, "embedding": emb })
        })
        .collect();
    let model = req.model.unwrap_or_else(|| st.model_id.clone());
    let tokens = t.tokens;
    Ok((super::timing_headers(&t, started), Json(json!({ "object": "list", "data": data, "model": model, "usage": { "prompt_tokens": tokens, "total_tokens": tokens } }))))
}

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/v1/embeddings", post(embeddings)).route("/embeddings", post(embeddings))
}
