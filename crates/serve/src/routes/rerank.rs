//! `POST /rerank` and `POST /predict`, text-embeddings-inference's shapes,
//! over the cross-encoder given to `braid serve --reranker DIR` (a
//! `*ForSequenceClassification` model directory; see
//! `braid_nn::CrossEncoder`). Owns those requests, the [`Reranker`] (the
//! model and its own batcher of (query, text) rows) and the scoring rules:
//! `/rerank` answers `[{"index", "score", "text"?}]` sorted by score, best
//! first (score = sigmoid of the logit unless `raw_scores`); `/predict`
//! answers `[{"label", "score"}]` per text, sorted by score (softmax over the
//! labels, or sigmoid for a one-logit model, unless `raw_scores`). A request
//! field braid cannot honour (`truncate: false`, left truncation, an unknown
//! field) is a 400, never ignored.

use super::check_count;
use super::Inputs;
use crate::error::{body_error, ApiError};
use crate::AppState;
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use braid_batch::{Batcher, BatcherConfig};
use braid_nn::cross::{sigmoid, TypedIds};
use braid_nn::{CrossEncoder, PairScorer};
use braid_runtime::{Error, Result};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// A cross-encoder and the batcher over it.
pub struct Reranker {
    pub model: Arc<CrossEncoder>,
    pub batcher: Batcher<PairScorer>,
}

impl Reranker {
    pub fn new(model: Arc<CrossEncoder>, config: BatcherConfig) -> Result<Reranker> {
        Ok(Reranker { batcher: Batcher::new(Arc::new(PairScorer(model.clone())), config)?, model })
    }

    async fn logits(&self, rows: Vec<TypedIds>) -> Result<Vec<Vec<f32>>> {
        let mut handles = Vec::with_capacity(rows.len());
        for r in rows {
            handles.push(self.batcher.submit(r)?);
        }
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            out.push(h.await?);
        }
        Ok(out)
    }

    /// Tokenize on the blocking pool (long texts take a while).
    async fn tokenize(&self, query: Option<String>, texts: Vec<String>) -> Result<Vec<TypedIds>> {
        let m = self.model.clone();
        tokio::task::spawn_blocking(move || {
            texts.iter().map(|t| match &query {
                Some(q) => m.tokenize_pair(q, t),
                None => m.tokenize_one(t),
            }).collect::<Result<Vec<_>>>()
        })
        .await
        .map_err(|j| Error::JobPanicked(format!("tokenizer: {j}")))?
    }
}

fn reranker(st: &AppState) -> std::result::Result<&Reranker, ApiError> {
    st.reranker.as_deref().ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no reranker loaded: start braid serve with --reranker DIR (a *ForSequenceClassification model)".into()))
}

fn check_truncation(truncate: Option<bool>, direction: Option<&str>) -> std::result::Result<(), ApiError> {
    if truncate == Some(false) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "truncate: false is not supported: braid always truncates to the model's max_seq_length".into()));
    }
    match direction {
        None | Some("Right") | Some("right") => Ok(()),
        Some(d) => Err(ApiError::new(StatusCode::BAD_REQUEST, format!("truncation_direction {d:?} is not supported (Right only)"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RerankRequest {
    query: String,
    texts: Vec<String>,
    #[serde(default)]
    raw_scores: bool,
    #[serde(default)]
    return_text: bool,
    truncate: Option<bool>,
    truncation_direction: Option<String>,
}

async fn rerank(State(st): State<Arc<AppState>>, body: std::result::Result<Json<RerankRequest>, JsonRejection>) -> std::result::Result<Json<Vec<Value>>, ApiError> {
    let Json(req) = body.map_err(|r| body_error(r, r#"{"query": "text", "texts": ["text", ...], "raw_scores"?: bool, "return_text"?: bool}"#))?;
    let rr = reranker(&st)?;
    check_count(&st, req.texts.len())?;
    check_truncation(req.truncate, req.truncation_direction.as_deref())?;
    if rr.model.num_labels() != 1 {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("the loaded model is a {}-label classifier, not a reranker: use POST /predict", rr.model.num_labels())));
    }
    let rows = rr.tokenize(Some(req.query), req.texts.clone()).await?;
    let logits = rr.logits(rows).await?;
    let mut ranked: Vec<(usize, f32)> = logits.iter().enumerate().map(|(i, l)| (i, if req.raw_scores { l[0] } else { sigmoid(l[0]) })).collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(Json(
        ranked
            .into_iter()
            .map(|(i, s)| if req.return_text { json!({ "index": i, "score": s, "text": req.texts[i] }) } else { json!({ "index": i, "score": s }) })
            .collect(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PredictRequest {
    inputs: Inputs,
    #[serde(default)]
    raw_scores: bool,
    truncate: Option<bool>,
    truncation_direction: Option<String>,
}

fn label_scores(labels: &[String], logits: &[f32], raw: bool) -> Value {
    let scores: Vec<f32> = if raw {
        logits.to_vec()
    } else if logits.len() == 1 {
        vec![sigmoid(logits[0])]
    } else {
        let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f64> = logits.iter().map(|v| ((v - m) as f64).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| (v / s) as f32).collect()
    };
    let mut pairs: Vec<(&String, f32)> = labels.iter().zip(scores).collect();
    pairs.sort_by(|a, b| b.1.total_cmp(&a.1));
    Value::Array(pairs.into_iter().map(|(l, s)| json!({ "label": l, "score": s })).collect())
}

async fn predict(State(st): State<Arc<AppState>>, body: std::result::Result<Json<PredictRequest>, JsonRejection>) -> std::result::Result<Json<Value>, ApiError> {
    let Json(req) = body.map_err(|r| body_error(r, r#"{"inputs": "text" | ["text", ...], "raw_scores"?: bool}"#))?;
    let rr = reranker(&st)?;
    check_truncation(req.truncate, req.truncation_direction.as_deref())?;
    let (texts, one) = match req.inputs {
        Inputs::One(t) => (vec![t], true),
        Inputs::Many(v) => (v, false),
        Inputs::Ids(_) | Inputs::ManyIds(_) => return Err(ApiError::new(StatusCode::BAD_REQUEST, "/predict takes texts, not token ids".into())),
    };
    check_count(&st, texts.len())?;
    let logits = rr.logits(rr.tokenize(None, texts).await?).await?;
    let mut out: Vec<Value> = logits.iter().map(|l| label_scores(rr.model.labels(), l, req.raw_scores)).collect();
    Ok(Json(if one { out.remove(0) } else { Value::Array(out) }))
}

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/rerank", post(rerank)).route("/predict", post(predict))
}
