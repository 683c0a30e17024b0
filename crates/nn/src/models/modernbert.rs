//! ModernBERT as an [`Encoder`] (HF `ModernBertModel`): token embeddings
//! and a LayerNorm (no position table), then pre-norm layers — rotary
//! positions on q and k ([`ops::rope_qkv`]), attention that is global on
//! `full_attention` layers and a sliding window (|i − j| ≤ local_attention/2,
//! as an additive −∞ bias, [`ops::attention_packed_bias`]) on
//! `sliding_attention` layers, each with its own rope θ; a GeGLU feed-forward
//! ([`ops::glu`]); no biases by default (`attention_bias`, `mlp_bias`,
//! `norm_bias`) — then a final LayerNorm. Weight names:
//! `embeddings.tok_embeddings`, `embeddings.norm`, `layers.N.{attn_norm,
//! attn.Wqkv, attn.Wo, mlp_norm, mlp.Wi, mlp.Wo}`, `final_norm`, optionally
//! under `model.`. Layer 0 has no `attn_norm` (identity), as in HF.

use super::{Encoder, ModelConfig};
use crate::{ops, settle_all, BertInput, HostWeights, LayerNorm, Linear, Tensor};
use braid_runtime::{Activation, DType, Device, Error, Result};
use serde::Deserialize;

/// The fields of a ModernBERT `config.json` the model needs (transformers 5
/// `layer_types` + `rope_parameters`, or the older `global_attn_every_n_layers`
/// + `global_rope_theta`/`local_rope_theta`).
#[derive(Clone, Debug, Deserialize)]
pub struct ModernBertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default = "default_act")]
    pub hidden_activation: String,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub norm_eps: f64,
    #[serde(default)]
    pub norm_bias: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default = "default_local")]
    pub local_attention: usize,
    pub layer_types: Option<Vec<String>>,
    pub rope_parameters: Option<serde_json::Value>,
    pub global_attn_every_n_layers: Option<usize>,
    pub global_rope_theta: Option<f64>,
    pub local_rope_theta: Option<f64>,
}
fn default_act() -> String {
    "gelu".into()
}
fn default_max_pos() -> usize {
    8192
}
fn default_eps() -> f64 {
    1e-5
}
fn default_local() -> usize {
    128
}

#[derive(Clone, Debug)]
pub struct ModernBertLayer {
    pub attn_norm: Option<LayerNorm>,
    pub wqkv: Linear,
    pub wo: Linear,
    pub mlp_norm: LayerNorm,
    pub wi: Linear,
    pub mlp_wo: Linear,
    /// A sliding-window layer (else global).
    pub sliding: bool,
    pub theta: f64,
}

#[derive(Clone, Debug)]
pub struct ModernBertModel {
    pub config: ModernBertConfig,
    pub tok_embeddings: Tensor,
    pub embeddings_norm: LayerNorm,
    pub layers: Vec<ModernBertLayer>,
    pub final_norm: LayerNorm,
    pub act: Activation,
}

fn norm(w: &HostWeights, prefix: &str, d: usize, eps: f32, bias: bool, device: &Device, dtype: DType) -> Result<LayerNorm> {
    if bias {
        return LayerNorm::load(w, prefix, d, eps, device, dtype);
    }
    let ln = LayerNorm { weight: w.tensor(&format!("{prefix}.weight"), &[d], device, dtype)?, bias: Tensor::zeros(device, &[d], dtype)?, eps };
    settle_all(&ln.params())?;
    Ok(ln)
}

pub fn load(config: &ModelConfig, w: &HostWeights, device: &Device, dtype: DType) -> Result<ModernBertModel> {
    let c: ModernBertConfig = config.typed("ModernBERT")?;
    let origin = &config.path;
    if c.num_attention_heads == 0 || c.hidden_size % c.num_attention_heads != 0 || (c.hidden_size / c.num_attention_heads) % 2 != 0 {
        return Err(Error::Model(format!("{origin}: hidden_size {} must split into num_attention_heads {} of an even width", c.hidden_size, c.num_attention_heads)));
    }
    let act = match c.hidden_activation.as_str() {
        "gelu" => Activation::GeluErf,
        "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
        "relu" => Activation::Relu,
        other => return Err(Error::Model(format!("{origin}: field hidden_activation {other:?} is not supported (gelu, gelu_pytorch_tanh, relu)"))),
    };
    let types: Vec<String> = match (&c.layer_types, c.global_attn_every_n_layers) {
        (Some(t), _) => t.clone(),
        (None, Some(n)) if n > 0 => (0..c.num_hidden_layers).map(|i| if i % n == 0 { "full_attention" } else { "sliding_attention" }.to_string()).collect(),
        _ => return Err(Error::Model(format!("{origin}: neither layer_types nor global_attn_every_n_layers says which layers are global"))),
    };
    if types.len() != c.num_hidden_layers {
        return Err(Error::Model(format!("{origin}: field layer_types has {} entries for {} layers", types.len(), c.num_hidden_layers)));
    }
    let theta = |kind: &str| -> Result<f64> {
        if let Some(p) = &c.rope_parameters {
            let e = &p[kind];
            match e.get("rope_type").and_then(|t| t.as_str()) {
                Some("default") | None => {}
                Some(other) => return Err(Error::Model(format!("{origin}: field rope_parameters.{kind}.rope_type {other:?} is not supported (default)"))),
            }
            return e.get("rope_theta").and_then(|t| t.as_f64()).ok_or_else(|| Error::Model(format!("{origin}: field rope_parameters.{kind}.rope_theta is missing")));
        }
        let old = if kind == "full_attention" { c.global_rope_theta.unwrap_or(160_000.0) } else { c.local_rope_theta.unwrap_or(10_000.0) };
        Ok(old)
    };
    let root = if w.contains("model.embeddings.tok_embeddings.weight") { "model." } else { "" };
    let (d, ff, eps) = (c.hidden_size, c.intermediate_size, c.norm_eps as f32);
    let tok_embeddings = w.tensor(&format!("{root}embeddings.tok_embeddings.weight"), &[c.vocab_size, d], device, dtype)?;
    settle_all(&[&tok_embeddings])?;
    let embeddings_norm = norm(w, &format!("{root}embeddings.norm"), d, eps, c.norm_bias, device, dtype)?;
    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    for (i, kind) in types.iter().enumerate() {
        let sliding = match kind.as_str() {
            "full_attention" => false,
            "sliding_attention" => true,
            other => return Err(Error::Model(format!("{origin}: field layer_types[{i}] {other:?} is not full_attention or sliding_attention"))),
        };
        let p = format!("{root}layers.{i}");
        layers.push(ModernBertLayer {
            attn_norm: if i == 0 { None } else { Some(norm(w, &format!("{p}.attn_norm"), d, eps, c.norm_bias, device, dtype)?) },
            wqkv: Linear::load(w, &format!("{p}.attn.Wqkv"), d, 3 * d, c.attention_bias, device, dtype)?,
            wo: Linear::load(w, &format!("{p}.attn.Wo"), d, d, c.attention_bias, device, dtype)?,
            mlp_norm: norm(w, &format!("{p}.mlp_norm"), d, eps, c.norm_bias, device, dtype)?,
            wi: Linear::load(w, &format!("{p}.mlp.Wi"), d, 2 * ff, c.mlp_bias, device, dtype)?,
            mlp_wo: Linear::load(w, &format!("{p}.mlp.Wo"), ff, d, c.mlp_bias, device, dtype)?,
            sliding,
            theta: theta(kind)?,
        });
    }
    let final_norm = norm(w, &format!("{root}final_norm"), d, eps, c.norm_bias, device, dtype)?;
    Ok(ModernBertModel { config: c, tok_embeddings, embeddings_norm, layers, final_norm, act })
}

/// cos and sin tables `[seq, head_dim]` for rope base `theta`, computed as
/// HF does (f32 inverse frequencies and angles; the two halves repeat).
pub fn rope_tables(seq: usize, hd: usize, theta: f64) -> (Vec<f32>, Vec<f32>) {
    let inv: Vec<f32> = (0..hd / 2).map(|i| (1.0 / theta.powf((2 * i) as f64 / hd as f64)) as f32).collect();
    let mut cos = Vec::with_capacity(seq * hd);
    let mut sin = Vec::with_capacity(seq * hd);
    for pos in 0..seq {
        for e in 0..hd {
            let a = pos as f32 * inv[e % (hd / 2)];
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    (cos, sin)
}

impl Encoder for ModernBertModel {
    fn model_type(&self) -> &str {
        "modernbert"
    }
    fn hidden_size(&self) -> usize {
        self.config.hidden_size
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
        self.tok_embeddings.device()
    }
    fn dtype(&self) -> DType {
        self.tok_embeddings.dtype()
    }
    fn params(&self) -> Vec<&Tensor> {
        let mut p = vec![&self.tok_embeddings];
        p.extend(self.embeddings_norm.params());
        for l in &self.layers {
            if let Some(n) = &l.attn_norm {
                p.extend(n.params());
            }
            for lin in [&l.wqkv, &l.wo, &l.wi, &l.mlp_wo] {
                p.extend(lin.params());
            }
            p.extend(l.mlp_norm.params());
        }
        p.extend(self.final_norm.params());
        p
    }
    fn forward(&self, input: &BertInput) -> Result<(Tensor, Tensor)> {
        let (b, s, d) = (input.batch, input.seq, self.config.hidden_size);
        let heads = self.config.num_attention_heads;
        let n = b * s;
        if input.ids.len() != n || input.mask.len() != n {
            return Err(Error::Shape { op: "modernbert", detail: format!("batch {b} x seq {s} needs {n} ids and mask values, got {} and {}", input.ids.len(), input.mask.len()) });
        }
        if s > self.max_tokens() {
            return Err(Error::Shape { op: "modernbert", detail: format!("sequence of {s} tokens is longer than the model's {} positions", self.max_tokens()) });
        }
        let device = self.device();
        let e = ops::embedding(&self.tok_embeddings, &input.ids)?;
        let mut h = self.embeddings_norm.forward(&e)?.reshape(&[b, s, d])?;
        let mask = Tensor::from_slice(device, &input.mask, &[b, s])?;
        // Global layers: no bias beyond the padding mask; sliding ones: −∞ outside the window.
        let half = (self.config.local_attention / 2) as i64;
        let window: Vec<f32> = (0..heads * s * s).map(|k| if ((k % s) as i64 - ((k / s) % s) as i64).abs() <= half { 0.0 } else { f32::NEG_INFINITY }).collect();
        let window = Tensor::from_slice(device, &window, &[heads, s, s])?;
        let mut tables: Vec<(f64, Tensor, Tensor)> = Vec::new();
        for l in &self.layers {
            if !tables.iter().any(|t| t.0 == l.theta) {
                let hd = d / heads;
                let (c, sn) = rope_tables(s, hd, l.theta);
                tables.push((l.theta, Tensor::from_slice(device, &c, &[s, hd])?, Tensor::from_slice(device, &sn, &[s, hd])?));
            }
        }
        for l in &self.layers {
            let (_, cos, sin) = tables.iter().find(|t| t.0 == l.theta).expect("made above");
            let x = match &l.attn_norm {
                Some(nrm) => nrm.forward(&h)?,
                None => h.clone(),
            };
            let qkv = ops::rope_qkv(&l.wqkv.forward(&x)?, cos, sin, heads)?;
            let a = if l.sliding { ops::attention_packed_bias(&qkv, Some(&mask), &window, heads)? } else { ops::attention_packed(&qkv, Some(&mask), heads)? };
            h = ops::add(&h, &l.wo.forward(&a)?)?;
            let m = ops::glu(&l.wi.forward(&l.mlp_norm.forward(&h)?)?, self.act)?;
            h = ops::add(&h, &l.mlp_wo.forward(&m)?)?;
        }
        Ok((self.final_norm.forward(&h)?, mask))
    }
}
