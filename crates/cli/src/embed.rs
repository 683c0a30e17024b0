//! `braid embed --model DIR TEXT...`: one sentence embedding per text from
//! any sentence-transformers model directory (its family, pooling and
//! modules are read from the directory), as lines of numbers or as JSON.

use braid_nn::SentenceEmbedder;
use braid_runtime::{Device, Error, Result};
use std::process::ExitCode;

pub fn run(device: &Device, model: &str, texts: &[String], json: bool) -> Result<ExitCode> {
    if texts.is_empty() {
        return Err(Error::InvalidArgument("give at least one text to embed (braid embed --model DIR TEXT...)".into()));
    }
    let embedder = SentenceEmbedder::load(model, device)?;
    eprintln!("{}: {}", model, embedder.describe());
    let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
    let embeddings = embedder.embed(&refs)?;
    if json {
        let items: Vec<serde_json::Value> = texts.iter().zip(&embeddings).map(|(t, e)| serde_json::json!({ "text": t, "embedding": e })).collect();
        let doc = serde_json::json!({ "model": model, "device": device.name(), "dim": embedder.dim(), "modules": embedder.describe(), "embeddings": items });
        println!("{}", serde_json::to_string(&doc).map_err(|e| Error::InvalidArgument(e.to_string()))?);
    } else {
        for e in &embeddings {
            let line: Vec<String> = e.iter().map(|v| format!("{v:.7}")).collect();
            println!("{}", line.join(" "));
        }
    }
    Ok(ExitCode::SUCCESS)
}
