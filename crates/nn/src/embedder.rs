//! [`SentenceEmbedder`]: any sentence-transformers model directory —
//! `config.json` (its `model_type` picks the encoder family, see
//! [`crate::models`]), `model.safetensors`, `tokenizer.json`, and the
//! modules of [`crate::sentence`] (pooling, Dense, Normalize,
//! `sentence_bert_config.json`) — turned into one object that maps texts to
//! sentence embeddings. Owns reading that directory and checking its parts
//! agree (the tokenizer's vocabulary fits the model's, `max_seq_length` fits
//! its positions, the Dense widths chain). [`MiniLm`] is the old name.

use crate::models::{load_encoder, Encoder, ModelConfig};
use crate::sentence::{read, SentenceModules};
use crate::{BertInput, HostWeights, Tensor, TextTokenizer};
use braid_runtime::{DType, Device, Error, Result};
use std::path::{Path, PathBuf};

/// sentence-transformers' `max_seq_length` for all-MiniLM-L6-v2.
pub const DEFAULT_MAX_SEQ_LENGTH: usize = 256;

/// Texts in, sentence embeddings out. `Send + Sync`: load once, share with
/// `Arc`; each thread's `embed` runs on its own stream.
#[derive(Debug)]
pub struct SentenceEmbedder {
    encoder: Box<dyn Encoder>,
    modules: SentenceModules,
    tokenizer: TextTokenizer,
    config: ModelConfig,
    dir: PathBuf,
}

/// The old name, from when braid ran all-MiniLM-L6-v2 only.
pub type MiniLm = SentenceEmbedder;

/// Check `dir` is a model directory; the message says how to get one.
pub(crate) fn check_dir(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        return Err(Error::Io { path: dir.display().to_string(), message: "model directory not found (run scripts/get-minilm.sh for all-MiniLM-L6-v2)".into() });
    }
    Ok(())
}

/// The encoder, its weights and a tokenizer that agrees with it.
pub(crate) fn load_parts(dir: &Path, device: &Device, dtype: DType) -> Result<(ModelConfig, HostWeights, Box<dyn Encoder>)> {
    check_dir(dir)?;
    let config = ModelConfig::read(dir)?;
    let wpath = dir.join("model.safetensors");
    if !wpath.is_file() {
        return Err(Error::Io { path: wpath.display().to_string(), message: "weights not found (braid reads model.safetensors)".into() });
    }
    let weights = HostWeights::load_safetensors(&wpath)?;
    let encoder = load_encoder(&config, &weights, device, dtype)?;
    Ok((config, weights, encoder))
}

/// tokenizer.json, checked against the model: every id it can produce must
/// be a row of the embedding table; padding uses config.json's `pad_token_id`.
pub(crate) fn load_tokenizer(dir: &Path, config: &ModelConfig, encoder: &dyn Encoder, max_len: usize, lowercase: bool) -> Result<TextTokenizer> {
    let tpath = dir.join("tokenizer.json");
    let mut tokenizer = TextTokenizer::from_file(&tpath, max_len)?;
    tokenizer.set_lowercase(lowercase);
    let vocab = tokenizer.vocab_size();
    if vocab > encoder.vocab_size() {
        return Err(Error::Model(format!(
            "{}: the tokenizer has {vocab} tokens but {} field vocab_size is {}: the tokenizer does not match the model's vocabulary",
            tpath.display(),
            config.path,
            encoder.vocab_size()
        )));
    }
    if let Some(pad) = config.json.get("pad_token_id").and_then(|p| p.as_u64()) {
        if pad as usize >= encoder.vocab_size() {
            return Err(Error::Model(format!("{}: field pad_token_id {pad} is outside the vocabulary of {}", config.path, encoder.vocab_size())));
        }
        tokenizer.set_pad_id(pad as u32);
    }
    Ok(tokenizer)
}

impl SentenceEmbedder {
    /// Load `dir` in f32.
    pub fn load(dir: impl AsRef<Path>, device: &Device) -> Result<SentenceEmbedder> {
        Self::load_with(dir, device, DType::F32)
    }

    /// As [`load`](Self::load), with the weights in `dtype`.
    pub fn load_with(dir: impl AsRef<Path>, device: &Device, dtype: DType) -> Result<SentenceEmbedder> {
        let dir = dir.as_ref();
        let (config, _weights, encoder) = load_parts(dir, device, dtype)?;
        if let Some(arch) = config.architecture() {
            if arch.ends_with("ForSequenceClassification") {
                return Err(Error::Model(format!("{}: architectures {arch:?} is a classifier (cross-encoder): use braid rerank / CrossEncoder, not an embedder", config.path)));
            }
        }
        let modules = SentenceModules::load(dir, encoder.max_tokens(), device, dtype)?;
        modules.check_widths(encoder.hidden_size(), &dir.join("modules.json").display().to_string())?;
        let tokenizer = load_tokenizer(dir, &config, encoder.as_ref(), modules.sbert.max_seq_length, modules.sbert.do_lower_case)?;
        Ok(SentenceEmbedder { encoder, modules, tokenizer, config, dir: dir.to_path_buf() })
    }

    pub fn encoder(&self) -> &dyn Encoder {
        self.encoder.as_ref()
    }
    pub fn modules(&self) -> &SentenceModules {
        &self.modules
    }
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// Width of an embedding (384 for MiniLM).
    pub fn dim(&self) -> usize {
        self.modules.dim(self.encoder.hidden_size())
    }
    /// Tokens per text after truncation (special tokens included).
    pub fn max_seq_length(&self) -> usize {
        self.tokenizer.max_len()
    }
    /// One line: family, pooling and modules, and each default used.
    pub fn describe(&self) -> String {
        let mut s = format!("{} (hidden {}), {}", self.encoder.model_type(), self.encoder.hidden_size(), self.modules.describe());
        for n in &self.modules.notes {
            s.push_str("; default: ");
            s.push_str(n);
        }
        s
    }

    /// Tokenize a batch (truncated, padded to the longest).
    pub fn tokenize(&self, texts: &[&str]) -> Result<BertInput> {
        self.tokenizer.encode_batch(texts)
    }

    /// Embeddings of a tokenized batch as a `[batch, dim]` tensor on the device.
    pub fn embed_input(&self, input: &BertInput) -> Result<Tensor> {
        self.modules.embed(self.encoder.as_ref(), input)
    }

    /// The last hidden state and the embedding before a final Normalize
    /// module (see [`SentenceModules::forward_parts`]).
    pub fn forward_parts(&self, input: &BertInput) -> Result<(crate::models::Hidden, Tensor)> {
        self.modules.forward_parts(self.encoder.as_ref(), input)
    }

    /// One embedding per text, computed as one batch.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let flat = self.embed_input(&self.tokenize(texts)?)?.to_vec()?;
        Ok(flat.chunks(self.dim()).map(|c| c.to_vec()).collect())
    }
}

/// `read` re-exported for the cross-encoder.
pub(crate) fn read_file(path: &Path) -> Result<String> {
    read(path)
}
