//! The reference comparison for a model directory that carries
//! `reference.json` (the family fixtures under `crates/nn/tests/fixtures/`,
//! made by `make_families.py` with transformers / sentence-transformers):
//! token ids equal, worst cosine ≥ 0.99999 and max abs difference < 1e-4.
//! Used by `braid check` (any device) and shareable by tests.

use super::CheckResult;
use crate::{CrossEncoder, SentenceEmbedder};
use braid_runtime::{Device, Error, Result};
use serde_json::Value;
use std::path::Path;

/// Worst cosine and max abs difference, and whether token ids all matched.
#[derive(Clone, Copy, Debug)]
pub struct FamilyResult {
    pub worst_cosine: f64,
    pub max_abs: f64,
    pub rows: usize,
    pub ids_equal: bool,
}

impl FamilyResult {
    pub fn passed(&self) -> bool {
        self.ids_equal && self.worst_cosine >= 0.99999 && self.max_abs < 1e-4 && self.rows > 0
    }
    /// As a [`CheckResult`] line named after the directory.
    pub fn check_result(&self, name: &str) -> CheckResult {
        CheckResult {
            name: format!("family {name} vs python reference, {} rows{}: worst cosine {:.9}, max abs diff", self.rows, if self.ids_equal { "" } else { " (TOKEN IDS DIFFER)" }, self.worst_cosine),
            max_rel_err: self.max_abs,
            tol: 1e-4,
            passed: self.passed(),
            error: None,
        }
    }
}

fn bad(path: &Path, what: &str) -> Error {
    Error::Io { path: path.display().to_string(), message: format!("reference.json: {what}") }
}

fn strs<'a>(v: &'a Value, path: &Path, key: &str) -> Result<Vec<&'a str>> {
    v[key].as_array().ok_or_else(|| bad(path, &format!("{key} is not a list")))?.iter().map(|t| t.as_str().ok_or_else(|| bad(path, &format!("{key} holds a non-string")))).collect()
}

fn rows_f64(v: &Value, path: &Path, key: &str) -> Result<Vec<Vec<f64>>> {
    v[key]
        .as_array()
        .ok_or_else(|| bad(path, &format!("{key} is not a list")))?
        .iter()
        .map(|r| r.as_array().ok_or_else(|| bad(path, key)).map(|r| r.iter().map(|x| x.as_f64().unwrap_or(f64::NAN)).collect()))
        .collect()
}

fn ids(v: &Value) -> Vec<Vec<u32>> {
    v.as_array().into_iter().flatten().map(|r| r.as_array().into_iter().flatten().map(|x| x.as_u64().unwrap_or(u64::MAX) as u32).collect()).collect()
}

fn fold(acc: &mut FamilyResult, got: &[Vec<f32>], want: &[Vec<f64>], by_row: bool) {
    if got.len() != want.len() {
        acc.ids_equal = false;
        acc.max_abs = f64::NAN;
        return;
    }
    let rows: Vec<(Vec<f64>, Vec<f64>)> = if by_row {
        got.iter().zip(want).map(|(g, w)| (g.iter().map(|&x| x as f64).collect(), w.clone())).collect()
    } else {
        vec![(got.concat().iter().map(|&x| x as f64).collect(), want.concat())]
    };
    for (g, w) in rows {
        if g.len() != w.len() {
            acc.max_abs = f64::NAN;
            continue;
        }
        let dot: f64 = g.iter().zip(&w).map(|(a, b)| a * b).sum();
        let c = dot / (g.iter().map(|a| a * a).sum::<f64>().sqrt() * w.iter().map(|b| b * b).sum::<f64>().sqrt());
        acc.worst_cosine = if c.is_nan() || acc.worst_cosine.is_nan() { f64::NAN } else { acc.worst_cosine.min(c) };
        for (a, b) in g.iter().zip(&w) {
            let d = (a - b).abs();
            acc.max_abs = if d.is_nan() || acc.max_abs.is_nan() { f64::NAN } else { acc.max_abs.max(d) };
        }
    }
    acc.rows += got.len();
}

/// Compare `dir`'s model on `device` with `dir/reference.json`. For a
/// classifier the cosine is over all logits at once (a row of one logit has
/// no direction).
pub fn check_model_dir(dir: &Path, device: &Device) -> Result<FamilyResult> {
    let path = dir.join("reference.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::Io { path: path.display().to_string(), message: e.to_string() })?;
    let r: Value = serde_json::from_str(&text).map_err(|e| bad(&path, &e.to_string()))?;
    let mut acc = FamilyResult { worst_cosine: 1.0, max_abs: 0.0, rows: 0, ids_equal: true };
    match r["kind"].as_str() {
        Some("embed") => {
            let model = SentenceEmbedder::load(dir, device)?;
            for b in r["batches"].as_array().ok_or_else(|| bad(&path, "batches is not a list"))? {
                let texts = strs(b, &path, "sentences")?;
                let want_ids = ids(&b["token_ids"]);
                for (t, w) in texts.iter().zip(&want_ids) {
                    acc.ids_equal &= model.tokenizer().encode(t)? == *w;
                }
                let got = model.embed(&texts)?;
                fold(&mut acc, &got, &rows_f64(b, &path, "embeddings")?, true);
            }
        }
        Some("classify") => {
            let model = CrossEncoder::load(dir, device)?;
            let query = r["query"].as_str().ok_or_else(|| bad(&path, "query is not a string"))?;
            let texts = strs(&r, &path, "texts")?;
            for (t, w) in texts.iter().zip(ids(&r["pair_token_ids"])) {
                acc.ids_equal &= model.tokenize_pair(query, t)?.0 == w;
            }
            fold(&mut acc, &model.rerank(query, &texts)?, &rows_f64(&r, &path, "pair_logits")?, false);
            let singles = strs(&r, &path, "single_texts")?;
            fold(&mut acc, &model.predict(&singles)?, &rows_f64(&r, &path, "single_logits")?, false);
        }
        other => return Err(bad(&path, &format!("kind {other:?} is neither \"embed\" nor \"classify\""))),
    }
    Ok(acc)
}
