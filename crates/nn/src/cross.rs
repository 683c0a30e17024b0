//! [`CrossEncoder`]: a `*ForSequenceClassification` checkpoint (a reranker
//! such as ms-marco-MiniLM or bge-reranker, or a single-text classifier):
//! the family's encoder, then its classification head over the first
//! token ([`crate::models::ClassifierHead`]). Scores query–text pairs
//! ([`CrossEncoder::rerank`]) or single texts ([`CrossEncoder::predict`]);
//! labels come from `config.json`'s `id2label`.

use crate::embedder::{load_parts, load_tokenizer};
use crate::models::{ClassifierHead, Encoder, ModelConfig};
use crate::sentence::SbertConfig;
use crate::{ops, BertInput, TextTokenizer};
use braid_runtime::{DType, Device, Error, Result};
use std::path::{Path, PathBuf};

/// Token ids and token type ids of one row.
pub type TypedIds = (Vec<u32>, Vec<u32>);

#[derive(Debug)]
pub struct CrossEncoder {
    encoder: Box<dyn Encoder>,
    head: ClassifierHead,
    tokenizer: TextTokenizer,
    labels: Vec<String>,
    config: ModelConfig,
    dir: PathBuf,
}

/// `1 / (1 + e^-x)`: the score sentence-transformers' CrossEncoder and TEI
/// report for a one-logit reranker unless raw scores are asked for.
pub fn sigmoid(x: f32) -> f32 {
    (1.0 / (1.0 + (-(x as f64)).exp())) as f32
}

impl CrossEncoder {
    pub fn load(dir: impl AsRef<Path>, device: &Device) -> Result<CrossEncoder> {
        Self::load_with(dir, device, DType::F32)
    }

    pub fn load_with(dir: impl AsRef<Path>, device: &Device, dtype: DType) -> Result<CrossEncoder> {
        let dir = dir.as_ref();
        let (config, weights, encoder) = load_parts(dir, device, dtype)?;
        match config.architecture() {
            Some(a) if a.ends_with("ForSequenceClassification") => {}
            other => {
                return Err(Error::Model(format!("{}: field architectures is {other:?}, not a *ForSequenceClassification (a cross-encoder or classifier)", config.path)));
            }
        }
        let head = ClassifierHead::load(&config, &weights, encoder.hidden_size())?;
        let n = head.num_labels();
        let labels = match config.json.get("id2label").and_then(|m| m.as_object()) {
            Some(m) => (0..n)
                .map(|i| m.get(&i.to_string()).and_then(|v| v.as_str()).map(str::to_string).ok_or_else(|| Error::Model(format!("{}: field id2label has no label {i} (the head has {n} outputs)", config.path))))
                .collect::<Result<Vec<_>>>()?,
            None => (0..n).map(|i| format!("LABEL_{i}")).collect(),
        };
        let sb = dir.join("sentence_bert_config.json");
        let default_len = crate::sentence::default_max_len(dir, encoder.max_tokens())?;
        let sbert = if sb.is_file() {
            SbertConfig::parse_or(&crate::embedder::read_file(&sb)?, &sb.display().to_string(), encoder.max_tokens(), default_len)?
        } else {
            SbertConfig { max_seq_length: default_len, do_lower_case: false }
        };
        let tokenizer = load_tokenizer(dir, &config, encoder.as_ref(), sbert.max_seq_length, sbert.do_lower_case)?;
        Ok(CrossEncoder { encoder, head, tokenizer, labels, config, dir: dir.to_path_buf() })
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }
    pub fn encoder(&self) -> &dyn Encoder {
        self.encoder.as_ref()
    }
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// `id2label`, in id order.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }
    pub fn num_labels(&self) -> usize {
        self.head.num_labels()
    }
    pub fn max_seq_length(&self) -> usize {
        self.tokenizer.max_len()
    }

    /// Tokens of `(query, text)`, truncated longest-first.
    pub fn tokenize_pair(&self, query: &str, text: &str) -> Result<TypedIds> {
        self.tokenizer.encode_pair(query, text)
    }

    /// Tokens of one text for a single-text classifier.
    pub fn tokenize_one(&self, text: &str) -> Result<TypedIds> {
        let ids = self.tokenizer.encode(text)?;
        let n = ids.len();
        Ok((ids, vec![0; n]))
    }

    /// Logits `[rows][num_labels]` of tokenized rows, as one batch.
    pub fn logits(&self, rows: &[TypedIds]) -> Result<Vec<Vec<f32>>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let input = BertInput::from_typed_rows(rows, self.tokenizer.pad_id());
        let types = self.encoder.type_vocab_size();
        if let Some(t) = input.type_ids.iter().find(|&&t| t as usize >= types.max(1)) {
            return Err(Error::Model(format!("{}: the tokenizer gives token type {t} but type_vocab_size is {types}", self.config.path)));
        }
        let (h, _) = self.encoder.forward(&input)?;
        let (b, s, d) = (input.batch, input.seq, self.encoder.hidden_size());
        let cls = ops::embedding(&h.reshape(&[b * s, d])?, &(0..b).map(|i| (i * s) as u32).collect::<Vec<_>>())?.to_vec()?;
        let out = self.head.forward(&cls);
        Ok(out.chunks(self.num_labels()).map(|c| c.to_vec()).collect())
    }

    /// Logits of `(query, text)` for each text.
    pub fn rerank(&self, query: &str, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let rows = texts.iter().map(|t| self.tokenize_pair(query, t)).collect::<Result<Vec<_>>>()?;
        self.logits(&rows)
    }

    /// Logits of each text alone.
    pub fn predict(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let rows = texts.iter().map(|t| self.tokenize_one(t)).collect::<Result<Vec<_>>>()?;
        self.logits(&rows)
    }
}
