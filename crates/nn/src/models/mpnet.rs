//! MPNet as an [`Encoder`] (HF `MPNetModel`, e.g. all-mpnet-base-v2):
//! word + position embeddings (positions from the padding index + 1, as
//! RoBERTa) and LayerNorm, then post-norm layers whose self-attention adds a
//! relative-position bias to the scores: `relative_attention_bias`
//! (`[buckets, heads]`) looked up by T5-style buckets of `key − query`,
//! shared by every layer. The bias `[heads, seq, seq]` is built on the host
//! per forward and added by [`ops::attention_packed_bias`]. Weight names:
//! `encoder.layer.N.attention.attn.{q,k,v,o}`, `attention.LayerNorm`,
//! `intermediate.dense`, `output.dense`, `output.LayerNorm`, optionally
//! under `mpnet.`.

use super::{Encoder, ModelConfig};
use crate::{ops, settle_all, BertInput, HostWeights, LayerNorm, Linear, Tensor};
use braid_runtime::{Activation, DType, Device, Error, Result};
use serde::Deserialize;

/// The fields of an MPNet `config.json` the model needs.
#[derive(Clone, Debug, Deserialize)]
pub struct MpnetConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "default_pad")]
    pub pad_token_id: u32,
}
fn default_act() -> String {
    "gelu".into()
}
fn default_max_pos() -> usize {
    514
}
fn default_eps() -> f64 {
    1e-12
}
fn default_buckets() -> usize {
    32
}
fn default_pad() -> u32 {
    1
}

/// HF's `max_distance` of `relative_position_bucket`.
const MAX_DISTANCE: i64 = 128;

/// HF MPNet's `relative_position_bucket`, with its f32 arithmetic.
pub fn relative_position_bucket(relative_position: i64, num_buckets: usize) -> usize {
    let half = (num_buckets / 2) as i64;
    let n = -relative_position;
    let mut ret = if n < 0 { half } else { 0 };
    let n = n.abs();
    let max_exact = half / 2;
    if n < max_exact {
        ret += n;
    } else {
        let denom = ((MAX_DISTANCE as f64) / (max_exact as f64)).ln() as f32;
        let v = max_exact + ((n as f32 / max_exact as f32).ln() / denom * (half - max_exact) as f32) as i64;
        ret += v.min(half - 1);
    }
    ret as usize
}

#[derive(Clone, Debug)]
pub struct MpnetLayer {
    pub qkv: Linear,
    pub o: Linear,
    pub attn_norm: LayerNorm,
    pub ff1: Linear,
    pub ff2: Linear,
    pub out_norm: LayerNorm,
}

#[derive(Clone, Debug)]
pub struct MpnetModel {
    pub config: MpnetConfig,
    pub word_embeddings: Tensor,
    pub position_embeddings: Tensor,
    pub embeddings_norm: LayerNorm,
    pub layers: Vec<MpnetLayer>,
    /// `[buckets, heads]` on the host.
    pub relative_attention_bias: Vec<f32>,
    pub act: Activation,
}

pub fn load(config: &ModelConfig, w: &HostWeights, device: &Device, dtype: DType) -> Result<MpnetModel> {
    let c: MpnetConfig = config.typed("MPNet")?;
    if c.num_attention_heads == 0 || c.hidden_size % c.num_attention_heads != 0 {
        return Err(Error::Model(format!("{}: hidden_size {} is not divisible into num_attention_heads {}", config.path, c.hidden_size, c.num_attention_heads)));
    }
    let act = match c.hidden_act.as_str() {
        "gelu" => Activation::GeluErf,
        "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
        "relu" => Activation::Relu,
        other => return Err(Error::Model(format!("{}: field hidden_act {other:?} is not supported (gelu, gelu_new, relu)", config.path))),
    };
    if c.max_position_embeddings <= c.pad_token_id as usize + 1 {
        return Err(Error::Model(format!("{}: max_position_embeddings {} leaves no positions after the padding offset", config.path, c.max_position_embeddings)));
    }
    let root = if w.contains("mpnet.embeddings.word_embeddings.weight") { "mpnet." } else { "" };
    let (d, ff, eps) = (c.hidden_size, c.intermediate_size, c.layer_norm_eps as f32);
    let word_embeddings = w.tensor(&format!("{root}embeddings.word_embeddings.weight"), &[c.vocab_size, d], device, dtype)?;
    let position_embeddings = w.tensor(&format!("{root}embeddings.position_embeddings.weight"), &[c.max_position_embeddings, d], device, dtype)?;
    settle_all(&[&word_embeddings, &position_embeddings])?;
    let embeddings_norm = LayerNorm::load(w, &format!("{root}embeddings.LayerNorm"), d, eps, device, dtype)?;
    let relative_attention_bias = w.get(&format!("{root}encoder.relative_attention_bias.weight"), &[c.relative_attention_num_buckets, c.num_attention_heads])?.data.into_owned();
    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    for i in 0..c.num_hidden_layers {
        let p = format!("{root}encoder.layer.{i}");
        let mut wcat = Vec::with_capacity(3 * d * d);
        let mut bcat = Vec::with_capacity(3 * d);
        for n in ["q", "k", "v"] {
            wcat.extend_from_slice(&w.get(&format!("{p}.attention.attn.{n}.weight"), &[d, d])?.data);
            bcat.extend_from_slice(&w.get(&format!("{p}.attention.attn.{n}.bias"), &[d])?.data);
        }
        let qkv = Linear { weight: Tensor::from_slice_as(device, &wcat, &[3 * d, d], dtype)?, bias: Some(Tensor::from_slice_as(device, &bcat, &[3 * d], dtype)?) };
        settle_all(&qkv.params())?;
        layers.push(MpnetLayer {
            qkv,
            o: Linear::load(w, &format!("{p}.attention.attn.o"), d, d, true, device, dtype)?,
            attn_norm: LayerNorm::load(w, &format!("{p}.attention.LayerNorm"), d, eps, device, dtype)?,
            ff1: Linear::load(w, &format!("{p}.intermediate.dense"), d, ff, true, device, dtype)?,
            ff2: Linear::load(w, &format!("{p}.output.dense"), ff, d, true, device, dtype)?,
            out_norm: LayerNorm::load(w, &format!("{p}.output.LayerNorm"), d, eps, device, dtype)?,
        });
    }
    Ok(MpnetModel { config: c, word_embeddings, position_embeddings, embeddings_norm, layers, relative_attention_bias, act })
}

impl MpnetModel {
    fn offset(&self) -> usize {
        self.config.pad_token_id as usize + 1
    }

    /// The bias `[heads, seq, seq]`: `bias[h][i][j] = table[bucket(j − i)][h]`.
    pub fn position_bias(&self, seq: usize) -> Vec<f32> {
        let (heads, nb) = (self.config.num_attention_heads, self.config.relative_attention_num_buckets);
        let mut out = vec![0f32; heads * seq * seq];
        for i in 0..seq {
            for j in 0..seq {
                let b = relative_position_bucket(j as i64 - i as i64, nb);
                for h in 0..heads {
                    out[(h * seq + i) * seq + j] = self.relative_attention_bias[b * heads + h];
                }
            }
        }
        out
    }
}

impl Encoder for MpnetModel {
    fn model_type(&self) -> &str {
        "mpnet"
    }
    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }
    fn max_tokens(&self) -> usize {
        self.config.max_position_embeddings - self.offset()
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
        for l in &self.layers {
            p.extend(l.qkv.params());
            p.extend(l.o.params());
            p.extend(l.attn_norm.params());
            p.extend(l.ff1.params());
            p.extend(l.ff2.params());
            p.extend(l.out_norm.params());
        }
        p
    }
    fn forward(&self, input: &BertInput) -> Result<(Tensor, Tensor)> {
        let (b, s, d) = (input.batch, input.seq, self.config.hidden_size);
        let n = b * s;
        if input.ids.len() != n || input.mask.len() != n {
            return Err(Error::Shape { op: "mpnet", detail: format!("batch {b} x seq {s} needs {n} ids and mask values, got {} and {}", input.ids.len(), input.mask.len()) });
        }
        if s > self.max_tokens() {
            return Err(Error::Shape { op: "mpnet", detail: format!("sequence of {s} tokens is longer than the model's {} positions", self.max_tokens()) });
        }
        let offset = self.offset();
        let pad = (offset - 1) as u32;
        let pos: Vec<u32> = input.mask.iter().enumerate().map(|(i, &m)| if m != 0.0 { (offset + i % s.max(1)) as u32 } else { pad }).collect();
        let device = self.device();
        let word = ops::embedding(&self.word_embeddings, &input.ids)?;
        let position = ops::embedding(&self.position_embeddings, &pos)?;
        let mut h = self.embeddings_norm.forward_residual(&word, &position)?.reshape(&[b, s, d])?;
        let mask = Tensor::from_slice(device, &input.mask, &[b, s])?;
        let bias = Tensor::from_slice(device, &self.position_bias(s), &[self.config.num_attention_heads, s, s])?;
        for l in &self.layers {
            let qkv = l.qkv.forward(&h)?;
            let a = ops::attention_packed_bias(&qkv, Some(&mask), &bias, self.config.num_attention_heads)?;
            let a = l.o.forward(&a)?;
            let h1 = l.attn_norm.forward_residual(&a, &h)?;
            let f = l.ff1.forward_act(&h1, self.act)?;
            let f = l.ff2.forward(&f)?;
            h = l.out_norm.forward_residual(&f, &h1)?;
        }
        Ok((h, mask))
    }
}

#[cfg(test)]
mod tests {
    use super::relative_position_bucket as b;
    #[test]
    fn buckets_match_hf() {
        // Values of HF's relative_position_bucket(num_buckets=32, max_distance=128).
        let hf = [
            11, 11, 11, 11, 11, 11, 11, 11, 10, 10, 10, 10, 10, 10, 10, 9, 9, 9, 9, 8, 8, 8, 8, 7, 6, 5, 4, 3, 2, 1, 0, 17, 18, 19, 20, 21, 22, 23, 24, 24, 24, 24, 25, 25, 25, 25, 26, 26, 26, 26, 26, 26, 26, 27, 27, 27, 27, 27, 27, 27, 27,
        ];
        let ours: Vec<usize> = (-30..=30).map(|x| b(x, 32)).collect();
        assert_eq!(ours, hf);
        assert_eq!([b(-200, 32), b(200, 32)], [15, 31]);
    }
}
