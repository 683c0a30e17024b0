//! `braid embed --model DIR TEXT...`: one sentence embedding per text from
//! any sentence-transformers model directory (its family, pooling and
//! modules are read from the directory), as lines of numbers or as JSON.
//! Over several devices (`--device cuda:all`, `cpu:0,1`) the model is
//! loaded on each, in parallel, and the texts are split among them in
//! order; each device embeds its share and the output keeps the input order.

use braid_nn::SentenceEmbedder;
use braid_runtime::{DType, Device, Error, Result};
use std::process::ExitCode;

pub fn run(devices: &[Device], model: &str, texts: &[String], json: bool, dtype: DType) -> Result<ExitCode> {
    if texts.is_empty() {
        return Err(Error::InvalidArgument("give at least one text to embed (braid embed --model DIR TEXT...)".into()));
    }
    let device = &devices[0];
    let share = texts.len().div_ceil(devices.len());
    let results: Vec<(SentenceEmbedder, Vec<Vec<f32>>)> = std::thread::scope(|s| {
        let hs: Vec<_> = devices
            .iter()
            .zip(texts.chunks(share).chain(std::iter::repeat(&[][..])))
            .map(|(d, chunk)| {
                s.spawn(move || -> Result<(SentenceEmbedder, Vec<Vec<f32>>)> {
                    let e = SentenceEmbedder::load_with(model, d, dtype)?;
                    let refs: Vec<&str> = chunk.iter().map(|s| s.as_str()).collect();
                    let out = e.embed(&refs)?;
                    Ok((e, out))
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or_else(|p| Err(Error::JobPanicked(braid_runtime::panic_message(&p))))).collect::<Result<Vec<_>>>()
    })?;
    let embedder = &results[0].0;
    eprintln!("{}: {}{}", model, embedder.describe(), if devices.len() > 1 { format!(" ({} devices)", devices.len()) } else { String::new() });
    let embeddings: Vec<Vec<f32>> = results.iter().flat_map(|(_, e)| e.iter().cloned()).collect();
    if json {
        let items: Vec<serde_json::Value> = texts.iter().zip(&embeddings).map(|(t, e)| serde_json::json!({ "text": t, "embedding": e })).collect();
        let doc = serde_json::json!({ "model": model, "device": device.name(), "dim": embedder.dim(), "dtype": dtype.name(), "modules": embedder.describe(), "embeddings": items });
        println!("{}", serde_json::to_string(&doc).map_err(|e| Error::InvalidArgument(e.to_string()))?);
    } else {
        for e in &embeddings {
            let line: Vec<String> = e.iter().map(|v| format!("{v:.7}")).collect();
            println!("{}", line.join(" "));
        }
    }
    Ok(ExitCode::SUCCESS)
}
