//! `POST /embed`, the text-embeddings-inference shape: `{"inputs": "text" |
//! ["text", ...]}` → `[[f32; dim], ...]`, one L2-normalised embedding per
//! input, in order. Owns that route's request type and the [`Inputs`] shape
//! the other embedding routes share.

use super::check_count;
use crate::error::{body_error, ApiError};
use crate::AppState;
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum Inputs {
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


pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/embed", post(embed))
}
