//! `braid rerank --model DIR QUERY TEXT...`: a cross-encoder
//! (`*ForSequenceClassification`) scores each (query, text) pair; answers
//! sorted by score, best first, as TEI's `/rerank` does (score = sigmoid of
//! the logit for a one-logit reranker unless `--raw-scores`). With
//! `--predict`, each text is classified alone and every label's score is
//! printed (softmax over the logits unless `--raw-scores`).

use braid_nn::cross::sigmoid;
use braid_nn::CrossEncoder;
use braid_runtime::{Device, Error, Result};
use std::process::ExitCode;

fn softmax(x: &[f32]) -> Vec<f32> {
    let m = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f64> = x.iter().map(|v| ((v - m) as f64).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| (v / s) as f32).collect()
}

pub fn run(device: &Device, model: &str, query: Option<&str>, texts: &[String], raw: bool, predict: bool, json: bool) -> Result<ExitCode> {
    if texts.is_empty() {
        return Err(Error::InvalidArgument("give texts to score (braid rerank --model DIR QUERY TEXT... or --predict TEXT...)".into()));
    }
    let m = CrossEncoder::load(model, device)?;
    let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
    if predict {
        let logits = m.predict(&refs)?;
        let mut out = Vec::new();
        for (t, l) in texts.iter().zip(&logits) {
            let scores = if raw || l.len() == 1 { if raw { l.clone() } else { vec![sigmoid(l[0])] } } else { softmax(l) };
            let mut labels: Vec<(String, f32)> = m.labels().iter().cloned().zip(scores).collect();
            labels.sort_by(|a, b| b.1.total_cmp(&a.1));
            if !json {
                let s: Vec<String> = labels.iter().map(|(l, s)| format!("{l}={s:.6}")).collect();
                println!("{}\t{t}", s.join(" "));
            }
            out.push(serde_json::json!({ "text": t, "labels": labels.iter().map(|(l, s)| serde_json::json!({"label": l, "score": s})).collect::<Vec<_>>() }));
        }
        if json {
            println!("{}", serde_json::Value::Array(out));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let query = query.ok_or_else(|| Error::InvalidArgument("give a query first (braid rerank --model DIR QUERY TEXT...)".into()))?;
    if m.num_labels() != 1 {
        return Err(Error::Model(format!("{}: a reranker has one output, this classifier has {} (labels {:?}): use --predict", m.config().path, m.num_labels(), m.labels())));
    }
    let logits = m.rerank(query, &refs)?;
    let mut ranked: Vec<(usize, f32)> = logits.iter().enumerate().map(|(i, l)| (i, if raw { l[0] } else { sigmoid(l[0]) })).collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    if json {
        let items: Vec<serde_json::Value> = ranked.iter().map(|(i, s)| serde_json::json!({ "index": i, "score": s, "text": texts[*i] })).collect();
        println!("{}", serde_json::Value::Array(items));
    } else {
        for (i, s) in ranked {
            println!("{i}\t{s:.7}\t{}", texts[i]);
        }
    }
    Ok(ExitCode::SUCCESS)
}
