//! The text-embeddings-inference routes: `POST /embed` and `POST /`
//! (`inputs`, `normalize`, `truncate`, `truncation_direction`,
//! `prompt_name`, `dimensions` → `[[f32; dim], ...]`), `POST /embed_all`
//! (token embeddings, `[[[f32; dim]; tokens], ...]`), `POST /similarity`
//! (`{"inputs": {"source_sentence", "sentences"}}` → cosine scores),
//! `POST /tokenize` and `POST /decode`. Owns those bodies. Unknown fields
//! are a 400: a field braid ignored would be a silent wrong answer.

use super::{Ask, Inputs};
use crate::error::{body_error, ApiError};
use crate::state::{Timings, Want};
use crate::tokens::{Direction, TokenInfo};
use crate::AppState;
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Instant;

type Res<T> = std::result::Result<T, ApiError>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbedRequest {
    inputs: Inputs,
    #[serde(default)]
    normalize: Option<bool>,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    truncation_direction: Option<Direction>,
    #[serde(default)]
    prompt_name: Option<String>,
    #[serde(default)]
    dimensions: Option<i64>,
    /// The Hugging Face Inference API's shape (what `huggingface_hub`'s
    /// `InferenceClient.feature_extraction` sends): the same options in a
    /// `parameters` object.
    #[serde(default)]
    parameters: Option<Parameters>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Parameters {
    #[serde(default)]
    normalize: Option<bool>,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    truncation_direction: Option<Direction>,
    #[serde(default)]
    prompt_name: Option<String>,
    #[serde(default)]
    dimensions: Option<i64>,
    #[serde(default)]
    encoding_format: Option<String>,
}

/// An option given at the top level or in `parameters`, not both.
fn one_of<T>(top: Option<T>, inner: Option<T>, name: &'static str) -> Res<Option<T>> {
    match (top, inner) {
        (Some(_), Some(_)) => Err(ApiError::bad(format!("{name} is given both at the top level and in parameters: give it once")).param(name)),
        (a, b) => Ok(a.or(b)),
    }
}

const EMBED_SHAPE: &str = r#"{"inputs": "text" | ["text", ...] | [ids] | [[ids], ...], "normalize"?: bool, "truncate"?: bool, "truncation_direction"?: "Left" | "Right", "prompt_name"?: "name", "dimensions"?: int}"#;

async fn embed(State(st): State<Arc<AppState>>, body: std::result::Result<Json<EmbedRequest>, JsonRejection>) -> Res<(HeaderMap, Json<Vec<Vec<f32>>>)> {
    let started = Instant::now();
    let Json(r) = body.map_err(|r| body_error(r, EMBED_SHAPE))?;
    let p = r.parameters.unwrap_or_default();
    if let Some(f) = p.encoding_format.as_deref().filter(|f| *f != "float") {
        return Err(ApiError::bad(format!("encoding_format {f:?} is not supported on this route: use \"float\" (or POST /v1/embeddings for base64)")).param("encoding_format"));
    }
    let mut t = Timings::default();
    let ask = Ask {
        inputs: r.inputs,
        want: Want::Pooled { normalize: one_of(r.normalize, p.normalize, "normalize")?.unwrap_or(true) },
        truncate: one_of(r.truncate, p.truncate, "truncate")?,
        direction: one_of(r.truncation_direction, p.truncation_direction, "truncation_direction")?.unwrap_or_default(),
        prompt_name: one_of(r.prompt_name, p.prompt_name, "prompt_name")?,
        dimensions: one_of(r.dimensions, p.dimensions, "dimensions")?,
    };
    let out = super::run(&st, ask, &mut t).await?;
    Ok((super::timing_headers(&t, started), Json(out)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbedAllRequest {
    inputs: Inputs,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    truncation_direction: Option<Direction>,
    #[serde(default)]
    prompt_name: Option<String>,
}

async fn embed_all(State(st): State<Arc<AppState>>, body: std::result::Result<Json<EmbedAllRequest>, JsonRejection>) -> Res<(HeaderMap, Json<Vec<Vec<Vec<f32>>>>)> {
    let started = Instant::now();
    let Json(r) = body.map_err(|r| body_error(r, r#"{"inputs": "text" | ["text", ...] | [ids] | [[ids], ...], "truncate"?, "truncation_direction"?, "prompt_name"?}"#))?;
    let mut t = Timings::default();
    let ask = Ask { inputs: r.inputs, want: Want::Tokens, truncate: r.truncate, direction: r.truncation_direction.unwrap_or_default(), prompt_name: r.prompt_name, dimensions: None };
    let out = super::run(&st, ask, &mut t).await?;
    let d = st.embedder.dim();
    Ok((super::timing_headers(&t, started), Json(out.into_iter().map(|v| v.chunks(d).map(|c| c.to_vec()).collect()).collect())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SimilarityInputs {
    source_sentence: String,
    sentences: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SimilarityRequest {
    inputs: SimilarityInputs,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    truncation_direction: Option<Direction>,
    #[serde(default)]
    prompt_name: Option<String>,
}

/// Cosine similarity of `source_sentence` with each of `sentences`.
async fn similarity(State(st): State<Arc<AppState>>, body: std::result::Result<Json<SimilarityRequest>, JsonRejection>) -> Res<(HeaderMap, Json<Vec<f32>>)> {
    let started = Instant::now();
    let Json(r) = body.map_err(|r| body_error(r, r#"{"inputs": {"source_sentence": "text", "sentences": ["text", ...]}, "truncate"?, "truncation_direction"?, "prompt_name"?}"#))?;
    if r.inputs.sentences.is_empty() {
        return Err(ApiError::bad("sentences is empty"));
    }
    let mut texts = vec![r.inputs.source_sentence];
    texts.extend(r.inputs.sentences);
    let mut t = Timings::default();
    let ask = Ask { inputs: Inputs::Many(texts), want: Want::Pooled { normalize: true }, truncate: r.truncate, direction: r.truncation_direction.unwrap_or_default(), prompt_name: r.prompt_name, dimensions: None };
    let e = super::run(&st, ask, &mut t).await?;
    let scores = e[1..].iter().map(|v| v.iter().zip(&e[0]).map(|(a, b)| (*a as f64) * (*b as f64)).sum::<f64>() as f32).collect();
    Ok((super::timing_headers(&t, started), Json(scores)))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Texts {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenizeRequest {
    inputs: Texts,
    #[serde(default)]
    add_special_tokens: Option<bool>,
    #[serde(default)]
    prompt_name: Option<String>,
}

async fn tokenize(State(st): State<Arc<AppState>>, body: std::result::Result<Json<TokenizeRequest>, JsonRejection>) -> Res<Json<Vec<Vec<TokenInfo>>>> {
    let Json(r) = body.map_err(|r| body_error(r, r#"{"inputs": "text" | ["text", ...], "add_special_tokens"?: bool, "prompt_name"?}"#))?;
    let texts = match r.inputs {
        Texts::One(s) => vec![s],
        Texts::Many(v) => v,
    };
    super::check_count(&st, texts.len())?;
    let prompt = match &r.prompt_name {
        Some(n) => Some(st.prompts.get(n).cloned().ok_or_else(|| ApiError::bad(format!("prompt_name {n:?}: the model has no such prompt")).param("prompt_name"))?),
        None => st.default_prompt.clone(),
    };
    let special = r.add_special_tokens.unwrap_or(true);
    let tok = st.tokenizer.clone();
    let out = tokio::task::spawn_blocking(move || texts.iter().map(|s| tok.tokens(&format!("{}{s}", prompt.as_deref().unwrap_or("")), special, true, Direction::Right)).collect::<Res<Vec<_>>>())
        .await
        .map_err(|j| ApiError::from(braid_runtime::Error::JobPanicked(format!("tokenizer: {j}"))))??;
    Ok(Json(out))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Ids {
    One(Vec<u32>),
    Many(Vec<Vec<u32>>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecodeRequest {
    ids: Ids,
    #[serde(default)]
    skip_special_tokens: Option<bool>,
}

async fn decode(State(st): State<Arc<AppState>>, body: std::result::Result<Json<DecodeRequest>, JsonRejection>) -> Res<Json<Vec<String>>> {
    let Json(r) = body.map_err(|r| body_error(r, r#"{"ids": [id, ...] | [[id, ...], ...], "skip_special_tokens"?: bool}"#))?;
    let rows = match r.ids {
        Ids::One(v) => vec![v],
        Ids::Many(v) => v,
    };
    super::check_count(&st, rows.len())?;
    let skip = r.skip_special_tokens.unwrap_or(true);
    Ok(Json(rows.iter().map(|ids| st.tokenizer.decode(ids, skip)).collect::<Res<Vec<_>>>()?))
}

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/embed", post(embed))
        .route("/", post(embed))
        .route("/embed_all", post(embed_all))
        .route("/similarity", post(similarity))
        .route("/tokenize", post(tokenize))
        .route("/decode", post(decode))
}
