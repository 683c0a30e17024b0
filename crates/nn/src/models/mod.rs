//! Model families: the [`Encoder`] trait (a token batch in, hidden states
//! out) and [`load_encoder`], which picks the family from `config.json`'s
//! `model_type` — the model directory says what it is; nothing is chosen by
//! a name or a flag. One file per family: [`bert`] (BERT, MiniLM, BGE, E5,
//! GTE, RoBERTa, XLM-RoBERTa), [`distilbert`], [`mpnet`], [`modernbert`] and [`nomic_bert`]. Adding a family is one new
//! file here plus one arm in [`load_encoder`].
//!
//! Also owns the classification heads of `*ForSequenceClassification`
//! checkpoints ([`ClassifierHead`]), used by [`crate::CrossEncoder`].

pub mod bert;
pub mod distilbert;
pub mod modernbert;
pub mod mpnet;
pub mod nomic_bert;

use crate::{BertInput, HostWeights, Tensor};
use braid_runtime::{DType, Device, Error, Result};
use std::path::Path;

/// A transformer encoder on a device. `Send + Sync`: load once, share.
pub trait Encoder: Send + Sync + std::fmt::Debug {
    /// The family's name as `config.json` spells its `model_type`.
    fn model_type(&self) -> &str;
    /// Width of a hidden state.
    fn hidden_size(&self) -> usize;
    /// Tokens a row may hold (positions the model has).
    fn max_tokens(&self) -> usize;
    /// Distinct token type ids the model has (0 = none used).
    fn type_vocab_size(&self) -> usize;
    fn vocab_size(&self) -> usize;
    fn device(&self) -> &Device;
    fn dtype(&self) -> DType;
    fn params(&self) -> Vec<&Tensor>;
    /// The last hidden state `[batch, seq, hidden]` and the attention mask
    /// as an f32 tensor `[batch, seq]` (1 = token, 0 = padding).
    fn forward(&self, input: &BertInput) -> Result<(Tensor, Tensor)>;
    /// The last hidden state in whichever layout the forward produced:
    /// families that run packed (padding-free) batches answer
    /// [`Hidden::Packed`], so that pooling need not unpack it. The default
    /// is [`forward`](Self::forward)'s padded state.
    fn forward_hidden(&self, input: &BertInput) -> Result<Hidden> {
        let (h, mask) = self.forward(input)?;
        Ok(Hidden::Padded { h, mask })
    }
}

/// A last hidden state as an encoder produced it.
#[derive(Clone, Debug)]
pub enum Hidden {
    /// `h` `[batch, seq, hidden]` with padding positions, and the mask
    /// `[batch, seq]` (f32, 1 = token).
    Padded { h: Tensor, mask: Tensor },
    /// `h` `[tokens, hidden]`: only the real tokens, row `i` of the batch at
    /// rows `cu_seqlens[i] .. cu_seqlens[i + 1]` (the layout of
    /// [`crate::ops::attention_varlen`]); its tokens are the first
    /// `cu_seqlens[i+1] - cu_seqlens[i]` positions of row `i` of the
    /// `[batch, seq]` input, the rest being padding.
    Packed { h: Tensor, cu_seqlens: Vec<u32>, batch: usize, seq: usize, mask: Vec<f32> },
}

impl Hidden {
    /// `[batch, seq, hidden]` and the mask: a packed state is gathered back
    /// (padding positions hold a copy of the stream's first row; the mask
    /// hides them).
    pub fn padded(&self) -> Result<(Tensor, Tensor)> {
        match self {
            Hidden::Padded { h, mask } => Ok((h.clone(), mask.clone())),
            Hidden::Packed { h, cu_seqlens: cu, batch, seq, mask } => {
                let (b, s) = (*batch, *seq);
                let d = h.shape().get(1).copied().unwrap_or(0);
                let back: Vec<u32> = (0..b).flat_map(|r| (0..s as u32).map(move |j| (r, j))).map(|(r, j)| if cu[r] + j < cu[r + 1] { cu[r] + j } else { 0 }).collect();
                let full = crate::ops::embedding(h, &back)?.reshape(&[b, s, d])?;
                Ok((full, Tensor::from_slice(h.device(), mask, &[b, s])?))
            }
        }
    }
}

/// `config.json`, parsed once: the raw document and where it came from.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub path: String,
    pub json: serde_json::Value,
    pub model_type: String,
}

/// The `model_type`s braid runs, for error messages and the README.
pub const SUPPORTED: &[&str] = &["bert", "roberta", "xlm-roberta", "camembert", "distilbert", "mpnet", "modernbert", "nomic_bert"];

impl ModelConfig {
    pub fn read(dir: &Path) -> Result<ModelConfig> {
        let path = dir.join("config.json");
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| Error::Io { path: origin.clone(), message: e.to_string() })?;
        ModelConfig::parse(&text, &origin)
    }

    pub fn parse(text: &str, origin: &str) -> Result<ModelConfig> {
        let json: serde_json::Value = serde_json::from_str(text).map_err(|e| Error::Io { path: origin.into(), message: format!("not valid JSON: {e}") })?;
        let model_type = match json.get("model_type") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => return Err(Error::Model(format!("{origin}: field model_type must be a string, got {other}"))),
            None => return Err(Error::Model(format!("{origin}: field model_type is missing (braid picks the model family from it; supported: {})", SUPPORTED.join(", ")))),
        };
        Ok(ModelConfig { path: origin.into(), json, model_type })
    }

    /// `architectures[0]`, if any (e.g. `BertForSequenceClassification`).
    pub fn architecture(&self) -> Option<&str> {
        self.json.get("architectures").and_then(|a| a.get(0)).and_then(|a| a.as_str())
    }

    /// Deserialize the document as a family's typed config.
    pub fn typed<T: serde::de::DeserializeOwned>(&self, family: &str) -> Result<T> {
        serde_json::from_value(self.json.clone()).map_err(|e| Error::Model(format!("{}: not a valid {family} config: {e}", self.path)))
    }
}

/// The encoder `config` names, with its weights from `w`.
pub fn load_encoder(config: &ModelConfig, w: &HostWeights, device: &Device, dtype: DType) -> Result<Box<dyn Encoder>> {
    match config.model_type.as_str() {
        "bert" | "roberta" | "xlm-roberta" | "camembert" => Ok(Box::new(bert::load(config, w, device, dtype)?)),
        "distilbert" => Ok(Box::new(distilbert::load(config, w, device, dtype)?)),
        "mpnet" => Ok(Box::new(mpnet::load(config, w, device, dtype)?)),
        "modernbert" => Ok(Box::new(modernbert::load(config, w, device, dtype)?)),
        "nomic_bert" => Ok(Box::new(nomic_bert::load(config, w, device, dtype)?)),
        other => Err(Error::Model(format!("{}: field model_type {other:?} is not a family braid runs (supported: {})", config.path, SUPPORTED.join(", ")))),
    }
}

/// A host-side dense layer `y = act(W x + b)` of a classification head.
#[derive(Clone, Debug)]
pub struct HeadLayer {
    pub name: String,
    pub weight: Vec<f32>,
    pub bias: Option<Vec<f32>>,
    pub out: usize,
    pub inp: usize,
    pub tanh: bool,
    pub relu: bool,
}

impl HeadLayer {
    fn load(w: &HostWeights, prefix: &str, inp: usize, out: Option<usize>, tanh: bool, relu: bool) -> Result<HeadLayer> {
        let name = format!("{prefix}.weight");
        let any = w.get_any(&name)?;
        let out = out.unwrap_or_else(|| any.shape.first().copied().unwrap_or(0));
        let weight = w.get(&name, &[out, inp])?.data.into_owned();
        let bias = if w.contains(&format!("{prefix}.bias")) { Some(w.get(&format!("{prefix}.bias"), &[out])?.data.into_owned()) } else { None };
        Ok(HeadLayer { name: prefix.into(), weight, bias, out, inp, tanh, relu })
    }

    /// Rows `[n, inp]` to `[n, out]`, accumulated in f64.
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        x.chunks(self.inp)
            .flat_map(|row| {
                (0..self.out).map(move |o| {
                    let wr = &self.weight[o * self.inp..][..self.inp];
                    let mut acc: f64 = wr.iter().zip(row).map(|(a, b)| *a as f64 * *b as f64).sum();
                    acc += self.bias.as_ref().map_or(0.0, |b| b[o] as f64);
                    let v = if self.tanh { acc.tanh() } else if self.relu { acc.max(0.0) } else { acc };
                    v as f32
                })
            })
            .collect()
    }
}

/// The head of a `*ForSequenceClassification` checkpoint over the first
/// token's hidden state: BERT (`bert.pooler.dense` + tanh, `classifier`),
/// RoBERTa/XLM-R (`classifier.dense` + tanh, `classifier.out_proj`),
/// DistilBERT (`pre_classifier` + ReLU, `classifier`). Runs on the host: it
/// is a few hundred multiply-adds per row.
#[derive(Clone, Debug)]
pub struct ClassifierHead {
    pub layers: Vec<HeadLayer>,
}

impl ClassifierHead {
    pub fn load(config: &ModelConfig, w: &HostWeights, hidden: usize) -> Result<ClassifierHead> {
        let layers = match config.model_type.as_str() {
            "bert" => vec![HeadLayer::load(w, "bert.pooler.dense", hidden, Some(hidden), true, false)?, HeadLayer::load(w, "classifier", hidden, None, false, false)?],
            "roberta" | "xlm-roberta" | "camembert" | "mpnet" => vec![HeadLayer::load(w, "classifier.dense", hidden, Some(hidden), true, false)?, HeadLayer::load(w, "classifier.out_proj", hidden, None, false, false)?],
            "distilbert" => vec![HeadLayer::load(w, "pre_classifier", hidden, Some(hidden), false, true)?, HeadLayer::load(w, "classifier", hidden, None, false, false)?],
            other => return Err(Error::Model(format!("{}: model_type {other:?} has no sequence-classification head braid knows", config.path))),
        };
        Ok(ClassifierHead { layers })
    }

    pub fn num_labels(&self) -> usize {
        self.layers.last().map_or(0, |l| l.out)
    }

    pub fn forward(&self, cls: &[f32]) -> Vec<f32> {
        self.layers.iter().fold(cls.to_vec(), |x, l| l.forward(&x))
    }
}
