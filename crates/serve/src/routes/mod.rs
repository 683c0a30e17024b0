//! Every HTTP route, one file per API family: [`tei`] (text-embeddings-
//! inference: `/embed`, `/`, `/embed_all`, `/similarity`, `/tokenize`,
//! `/decode`), [`openai`] (`/v1/embeddings`, `/embeddings`), [`ops`]
//! (`/health`, `/info`, `/metrics`, `/metrics/json`). A new route is a new
//! file here whose `routes()` is merged in [`router`]. Owns the router, the
//! layers every route passes (see [`crate::layers`]) and what the
//! embedding routes share: the [`Inputs`] shape, turning a request into
//! batcher jobs (prompts, truncation, token ids), `dimensions`, and the
//! timing headers.

pub(crate) mod openai;
pub(crate) mod ops;
pub(crate) mod rerank;
pub(crate) mod tei;

use crate::error::ApiError;
use crate::state::{Job, Timings, Want};
use crate::tokens::Direction;
use crate::AppState;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::Router;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Instant;

/// A request's inputs: a text, texts, token ids, or lists of token ids.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum Inputs {
    One(String),
    Many(Vec<String>),
    Ids(Vec<u32>),
    ManyIds(Vec<Vec<u32>>),
}

impl Inputs {
    fn len(&self) -> usize {
        match self {
            Inputs::One(_) | Inputs::Ids(_) => 1,
            Inputs::Many(v) => v.len(),
            Inputs::ManyIds(v) => v.len(),
        }
    }
}

/// What an embedding request asks, whatever its API family.
pub(crate) struct Ask {
    pub inputs: Inputs,
    pub want: Want,
    pub truncate: Option<bool>,
    pub direction: Direction,
    pub prompt_name: Option<String>,
    pub dimensions: Option<i64>,
}

/// 400 for no inputs, 413 for more than `max_inputs`.
pub(crate) fn check_count(st: &AppState, n: usize) -> std::result::Result<(), ApiError> {
    if n == 0 {
        return Err(ApiError::bad("no inputs"));
    }
    if n > st.config.max_inputs {
        return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("{n} inputs in one request; at most {} (--max-client-batch-size)", st.config.max_inputs)));
    }
    Ok(())
}

/// `dimensions` checked against the model's width.
fn check_dimensions(st: &AppState, d: Option<i64>) -> std::result::Result<Option<usize>, ApiError> {
    let dim = st.embedder.dim();
    match d {
        None => Ok(None),
        Some(n) if n >= 1 && (n as u64) <= dim as u64 => Ok(Some(n as usize)),
        Some(n) => Err(ApiError::bad(format!("dimensions must be between 1 and the model's width {dim} (got {n})")).param("dimensions")),
    }
}

/// Keep the first `n` values and L2-normalise again (when `normalize`).
fn cut(v: &mut Vec<f32>, n: usize, normalize: bool) {
    v.truncate(n);
    if normalize {
        let norm = v.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>().sqrt();
        if norm > 0.0 {
            for x in v.iter_mut() {
                *x = (*x as f64 / norm) as f32;
            }
        }
    }
}

/// Run an embedding request: inputs → jobs (prompts, truncation, id
/// checks) → the batcher (all admitted or none) → `dimensions`.
pub(crate) async fn run(st: &Arc<AppState>, ask: Ask, t: &mut Timings) -> std::result::Result<Vec<Vec<f32>>, ApiError> {
    check_count(st, ask.inputs.len())?;
    let dims = check_dimensions(st, ask.dimensions)?;
    if dims.is_some() && ask.want == Want::Tokens {
        return Err(ApiError::bad("dimensions applies to sentence embeddings, not to /embed_all's token embeddings").param("dimensions"));
    }
    let truncate = ask.truncate.unwrap_or(st.config.auto_truncate);
    let prompt = match &ask.prompt_name {
        Some(n) => Some(st.prompts.get(n).cloned().ok_or_else(|| ApiError::bad(format!("prompt_name {n:?}: the model has no such prompt (it has: {:?})", st.prompts.keys().collect::<Vec<_>>())).param("prompt_name"))?),
        None => st.default_prompt.clone(),
    };
    let ids: Vec<Vec<u32>> = match ask.inputs {
        Inputs::Ids(_) | Inputs::ManyIds(_) if ask.prompt_name.is_some() => {
            return Err(ApiError::bad("prompt_name cannot be applied to token-id inputs: send text").param("prompt_name"));
        }
        Inputs::Ids(v) => vec![st.tokenizer.check_ids(v, truncate, ask.direction)?],
        Inputs::ManyIds(v) => v.into_iter().map(|r| st.tokenizer.check_ids(r, truncate, ask.direction)).collect::<std::result::Result<_, _>>()?,
        Inputs::One(s) => st.tokenize_request(vec![s], prompt, truncate, ask.direction, t).await?,
        Inputs::Many(v) => st.tokenize_request(v, prompt, truncate, ask.direction, t).await?,
    };
    let jobs = ids.into_iter().map(|ids| Job { ids, want: ask.want }).collect();
    let mut out = st.run_jobs(jobs, t).await?;
    if let Some(n) = dims {
        let normalize = ask.want == Want::Pooled { normalize: true };
        for v in &mut out {
            cut(v, n, normalize);
        }
    }
    Ok(out)
}

/// TEI's timing headers (milliseconds) and the token count.
pub(crate) fn timing_headers(t: &Timings, started: Instant) -> HeaderMap {
    let mut h = HeaderMap::new();
    let ms = |d: std::time::Duration| HeaderValue::from_str(&format!("{:.3}", d.as_secs_f64() * 1e3)).unwrap_or(HeaderValue::from_static("0"));
    h.insert("x-total-time", ms(started.elapsed()));
    h.insert("x-tokenization-time", ms(t.tokenization));
    h.insert("x-queue-time", ms(t.queue));
    h.insert("x-inference-time", ms(t.inference));
    h.insert("x-compute-tokens", HeaderValue::from(t.tokens));
    h
}

/// The routes over `state`, with the layers (payload limit, API key, CORS,
/// metrics and the request log).
pub fn router(state: Arc<AppState>) -> Router {
    let r = Router::new()
        .merge(tei::routes())
        .merge(openai::routes())
        .merge(ops::routes())
        .merge(rerank::routes())
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route: POST /embed, /, /embed_all, /similarity, /tokenize, /decode, /rerank, /predict, /v1/embeddings, /embeddings; GET /health, /info, /metrics, /metrics/json".into()) });
    crate::layers::apply(r, &state).with_state(state)
}
