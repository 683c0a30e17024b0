//! [`SentenceEmbedder`] (alias [`MiniLm`]): a sentence-transformers model
//! directory (all-MiniLM-L6-v2: BERT + mean pooling + L2 normalisation)
//! loaded from model.safetensors, config.json and tokenizer.json. Owns
//! reading that directory (max length from sentence_bert_config.json,
//! default 256) and turning texts into normalised embeddings.

use crate::{BertConfig, BertInput, BertModel, HostWeights, Tensor, TextTokenizer};
use braid_runtime::{DType, Device, Error, Result};
use std::path::{Path, PathBuf};

/// sentence-transformers' `max_seq_length` for all-MiniLM-L6-v2.
pub const DEFAULT_MAX_SEQ_LENGTH: usize = 256;

/// Texts in, normalised sentence embeddings out. `Send + Sync`: load once,
/// share with `Arc`; each thread's `embed` runs on its own stream.
#[derive(Debug)]
pub struct SentenceEmbedder {
    model: BertModel,
    tokenizer: TextTokenizer,
    dir: PathBuf,
}

/// The all-MiniLM-L6-v2 sentence embedder.
pub type MiniLm = SentenceEmbedder;

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::Io { path: path.display().to_string(), message: e.to_string() })
}

impl SentenceEmbedder {
    /// Load `dir` (model.safetensors, config.json, tokenizer.json) in f32.
    pub fn load(dir: impl AsRef<Path>, device: &Device) -> Result<SentenceEmbedder> {
        Self::load_with(dir, device, DType::F32)
    }

    /// As [`load`](Self::load), with the weights in `dtype`.
    pub fn load_with(dir: impl AsRef<Path>, device: &Device, dtype: DType) -> Result<SentenceEmbedder> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(Error::Io { path: dir.display().to_string(), message: "model directory not found (run scripts/get-minilm.sh)".into() });
        }
        let config_path = dir.join("config.json");
        let config = BertConfig::from_json(&read(&config_path)?, &config_path.display().to_string())?;
        let max_len = match read(&dir.join("sentence_bert_config.json")) {
            Ok(text) => serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("max_seq_length").and_then(|m| m.as_u64()))
                .map_or(DEFAULT_MAX_SEQ_LENGTH, |m| m as usize),
            Err(_) => DEFAULT_MAX_SEQ_LENGTH,
        }
        .min(config.max_position_embeddings);
        let tokenizer = TextTokenizer::from_file(dir.join("tokenizer.json"), max_len)?;
        let weights = HostWeights::load_safetensors(dir.join("model.safetensors"))?;
        let model = BertModel::load(&weights, &config, device, dtype)?;
        Ok(SentenceEmbedder { model, tokenizer, dir: dir.to_path_buf() })
    }

    pub fn model(&self) -> &BertModel {
        &self.model
    }
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// Width of an embedding (384 for MiniLM).
    pub fn dim(&self) -> usize {
        self.model.config.hidden_size
    }
    /// Tokens per text after truncation (special tokens included).
    pub fn max_seq_length(&self) -> usize {
        self.tokenizer.max_len()
    }

    /// Tokenize a batch (truncated, padded to the longest).
    pub fn tokenize(&self, texts: &[&str]) -> Result<BertInput> {
        self.tokenizer.encode_batch(texts)
    }

    /// Embeddings of a tokenized batch as a `[batch, dim]` tensor on the device.
    pub fn embed_input(&self, input: &BertInput) -> Result<Tensor> {
        self.model.embed(input)
    }

    /// One L2-normalised embedding per text, computed as one batch.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let flat = self.embed_input(&self.tokenize(texts)?)?.to_vec()?;
        Ok(flat.chunks(self.dim()).map(|c| c.to_vec()).collect())
    }
}
