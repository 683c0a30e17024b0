//! DistilBERT as an [`Encoder`]: word + position embeddings (no token
//! types) and LayerNorm, then post-norm layers named `transformer.layer.N`
//! (`attention.{q,k,v,out}_lin`, `sa_layer_norm`, `ffn.lin1/lin2`,
//! `output_layer_norm`), optionally under `distilbert.`.

use super::{Encoder, ModelConfig};
use crate::{ops, settle_all, BertInput, HostWeights, LayerNorm, Tensor, TransformerEncoderLayer};
use braid_runtime::{Activation, DType, Device, Error, Result};
use serde::Deserialize;

/// The fields of a DistilBERT `config.json` the model needs.
#[derive(Clone, Debug, Deserialize)]
pub struct DistilBertConfig {
    pub vocab_size: usize,
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub hidden_dim: usize,
    #[serde(default = "default_act")]
    pub activation: String,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
}
fn default_act() -> String {
    "gelu".into()
}
fn default_max_pos() -> usize {
    512
}

#[derive(Clone, Debug)]
pub struct DistilBertModel {
    pub config: DistilBertConfig,
    pub word_embeddings: Tensor,
    pub position_embeddings: Tensor,
    pub embeddings_norm: LayerNorm,
    pub layers: Vec<TransformerEncoderLayer>,
}

const EPS: f32 = 1e-12;

pub fn load(config: &ModelConfig, w: &HostWeights, device: &Device, dtype: DType) -> Result<DistilBertModel> {
    let c: DistilBertConfig = config.typed("DistilBERT")?;
    if c.n_heads == 0 || c.dim % c.n_heads != 0 {
        return Err(Error::Model(format!("{}: dim {} is not divisible into n_heads {}", config.path, c.dim, c.n_heads)));
    }
    let act = match c.activation.as_str() {
        "gelu" => Activation::GeluErf,
        "relu" => Activation::Relu,
        other => return Err(Error::Model(format!("{}: field activation {other:?} is not supported (gelu, relu)", config.path))),
    };
    let root = if w.contains("distilbert.embeddings.word_embeddings.weight") { "distilbert." } else { "" };
    let (d, ff) = (c.dim, c.hidden_dim);
    let word_embeddings = w.tensor(&format!("{root}embeddings.word_embeddings.weight"), &[c.vocab_size, d], device, dtype)?;
    let position_embeddings = w.tensor(&format!("{root}embeddings.position_embeddings.weight"), &[c.max_position_embeddings, d], device, dtype)?;
    settle_all(&[&word_embeddings, &position_embeddings])?;
    let embeddings_norm = LayerNorm::load(w, &format!("{root}embeddings.LayerNorm"), d, EPS, device, dtype)?;
    let mut layers = Vec::with_capacity(c.n_layers);
    for i in 0..c.n_layers {
        let p = format!("{root}transformer.layer.{i}");
        let mut lw = HostWeights::new(w.origin());
        let cat = |s: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let mut v = Vec::new();
            for n in ["q_lin", "k_lin", "v_lin"] {
                v.extend_from_slice(&w.get(&format!("{p}.attention.{n}.{s}"), shape)?.data);
            }
            Ok(v)
        };
        lw.insert("self_attn.in_proj_weight", &[3 * d, d], cat("weight", &[d, d])?)?;
        lw.insert("self_attn.in_proj_bias", &[3 * d], cat("bias", &[d])?)?;
        for (to, from, shape_w, shape_b) in [
            ("self_attn.out_proj", "attention.out_lin", vec![d, d], vec![d]),
            ("norm1", "sa_layer_norm", vec![d], vec![d]),
            ("linear1", "ffn.lin1", vec![ff, d], vec![ff]),
            ("linear2", "ffn.lin2", vec![d, ff], vec![d]),
            ("norm2", "output_layer_norm", vec![d], vec![d]),
        ] {
            lw.alias(format!("{to}.weight"), w, &format!("{p}.{from}.weight"), &shape_w)?;
            lw.alias(format!("{to}.bias"), w, &format!("{p}.{from}.bias"), &shape_b)?;
        }
        layers.push(TransformerEncoderLayer::load(&lw, "", d, c.n_heads, ff, act, EPS, device, dtype)?);
    }
    Ok(DistilBertModel { config: c, word_embeddings, position_embeddings, embeddings_norm, layers })
}

impl Encoder for DistilBertModel {
    fn model_type(&self) -> &str {
        "distilbert"
    }
    fn hidden_size(&self) -> usize {
        self.config.dim
    }
    fn max_tokens(&self) -> usize {
        self.config.max_position_embeddings
    }
    fn type_vocab_size(&self) -> usize {
        0
    }
    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }
    fn device(&self) -> &Device {
        self.word_embeddings.device()
    }
    fn dtype(&self) -> DType {
        self.word_embeddings.dtype()
    }
    fn params(&self) -> Vec<&Tensor> {
        let mut p = vec![&self.word_embeddings, &self.position_embeddings];
        p.extend(self.embeddings_norm.params());
        p.extend(self.layers.iter().flat_map(|l| l.params()));
        p
    }
    fn forward(&self, input: &BertInput) -> Result<(Tensor, Tensor)> {
        let (b, s, d) = (input.batch, input.seq, self.config.dim);
        let n = b * s;
        if input.ids.len() != n || input.mask.len() != n {
            return Err(Error::Shape { op: "distilbert", detail: format!("batch {b} x seq {s} needs {n} ids and mask values, got {} and {}", input.ids.len(), input.mask.len()) });
        }
        if s > self.config.max_position_embeddings {
            return Err(Error::Shape { op: "distilbert", detail: format!("sequence of {s} tokens is longer than the model's {} positions", self.config.max_position_embeddings) });
        }
        let pos: Vec<u32> = (0..b).flat_map(|_| 0..s as u32).collect();
        let word = ops::embedding(&self.word_embeddings, &input.ids)?;
        let position = ops::embedding(&self.position_embeddings, &pos)?;
        let mut h = self.embeddings_norm.forward_residual(&word, &position)?.reshape(&[b, s, d])?;
        let mask = Tensor::from_slice(self.device(), &input.mask, &[b, s])?;
        for layer in &self.layers {
            h = layer.forward(&h, Some(&mask))?;
        }
        Ok((h, mask))
    }
}
