//! NomicBert as an [`Encoder`] (transformers' native `NomicBertModel`,
//! `model_type: nomic_bert`): word + token-type embeddings and LayerNorm (no
//! position table), then post-norm layers with rotary positions on q and k
//! ([`ops::rope_qkv`]), bias-free projections and a SwiGLU feed-forward
//! (`down(silu(gate(x)) · up(x))`, [`ops::glu`] over gate and up packed into
//! one GEMM). Weight names: `embeddings.{word,token_type}_embeddings`,
//! `embeddings.LayerNorm`, `layers.N.self_attn.{q,k,v,o}_proj`,
//! `layers.N.mlp.{gate,up,down}_proj`, `layers.N.post_attention_layernorm`,
//! `layers.N.post_mlp_layernorm`, or the layout nomic-ai's checkpoints (and
//! transformers, when saving) use on disk: `emb_ln`,
//! `encoder.layers.N.attn.{Wqkv,out_proj}`, `mlp.fc12` (gate), `mlp.fc11`
//! (up), `mlp.fc2`, `norm1`, `norm2`; optionally under `model.`/`nomic_bert.`.

use super::modernbert::rope_tables;
use super::{Encoder, ModelConfig};
use crate::{ops, settle_all, BertInput, HostWeights, LayerNorm, Linear, Tensor};
use braid_runtime::{Activation, DType, Device, Error, Result};
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
pub struct NomicBertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_types")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    pub head_dim: Option<usize>,
    pub rope_parameters: Option<serde_json::Value>,
}
fn default_act() -> String {
    "silu".into()
}
fn default_max_pos() -> usize {
    2048
}
fn default_types() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

#[derive(Clone, Debug)]
pub struct NomicBertLayer {
    pub qkv: Linear,
    pub o: Linear,
    pub attn_norm: LayerNorm,
    pub gate_up: Linear,
    pub down: Linear,
    pub mlp_norm: LayerNorm,
}

#[derive(Clone, Debug)]
pub struct NomicBertModel {
    pub config: NomicBertConfig,
    pub word_embeddings: Tensor,
    pub token_type_embeddings: Tensor,
    pub embeddings_norm: LayerNorm,
    pub layers: Vec<NomicBertLayer>,
    pub act: Activation,
    pub theta: f64,
}

fn packed(w: &HostWeights, names: &[String], rows: usize, cols: usize, device: &Device, dtype: DType) -> Result<Linear> {
    let mut data = Vec::with_capacity(names.len() * rows * cols);
    for n in names {
        data.extend_from_slice(&w.get(n, &[rows, cols])?.data);
    }
    let l = Linear { weight: Tensor::from_slice_as(device, &data, &[names.len() * rows, cols], dtype)?, bias: None };
    settle_all(&l.params())?;
    Ok(l)
}

pub fn load(config: &ModelConfig, w: &HostWeights, device: &Device, dtype: DType) -> Result<NomicBertModel> {
    let c: NomicBertConfig = config.typed("NomicBert")?;
    let origin = &config.path;
    let (d, heads, ff) = (c.hidden_size, c.num_attention_heads, c.intermediate_size);
    if heads == 0 || d % heads != 0 || (d / heads) % 2 != 0 {
        return Err(Error::Model(format!("{origin}: hidden_size {d} must split into num_attention_heads {heads} of an even width")));
    }
    if let Some(hd) = c.head_dim {
        if hd * heads != d {
            return Err(Error::Model(format!("{origin}: field head_dim {hd} x {heads} heads is not hidden_size {d} (braid needs them equal)")));
        }
    }
    let act = match c.hidden_act.as_str() {
        "silu" | "swish" => Activation::Silu,
        "gelu" => Activation::GeluErf,
        "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
        "relu" => Activation::Relu,
        other => return Err(Error::Model(format!("{origin}: field hidden_act {other:?} is not supported (silu, gelu, gelu_new, relu)"))),
    };
    let theta = match &c.rope_parameters {
        Some(p) => {
            match p.get("rope_type").and_then(|t| t.as_str()) {
                Some("default") | None => {}
                Some(other) => return Err(Error::Model(format!("{origin}: field rope_parameters.rope_type {other:?} is not supported (default)"))),
            }
            p.get("rope_theta").and_then(|t| t.as_f64()).ok_or_else(|| Error::Model(format!("{origin}: field rope_parameters.rope_theta is missing")))?
        }
        None => config.json.get("rope_theta").and_then(|t| t.as_f64()).unwrap_or(1000.0),
    };
    let root = ["", "model.", "nomic_bert."].into_iter().find(|r| w.contains(&format!("{r}embeddings.word_embeddings.weight"))).unwrap_or("");
    let eps = c.layer_norm_eps as f32;
    let word_embeddings = w.tensor(&format!("{root}embeddings.word_embeddings.weight"), &[c.vocab_size, d], device, dtype)?;
    let token_type_embeddings = w.tensor(&format!("{root}embeddings.token_type_embeddings.weight"), &[c.type_vocab_size, d], device, dtype)?;
    settle_all(&[&word_embeddings, &token_type_embeddings])?;
    let nomic = w.contains(&format!("{root}emb_ln.weight"));
    let embeddings_norm = LayerNorm::load(w, &format!("{root}{}", if nomic { "emb_ln" } else { "embeddings.LayerNorm" }), d, eps, device, dtype)?;
    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    for i in 0..c.num_hidden_layers {
        let names = |ns: &[&str]| ns.iter().map(|n| format!("{n}.weight")).collect::<Vec<_>>();
        layers.push(if nomic {
            let p = format!("{root}encoder.layers.{i}");
            NomicBertLayer {
                qkv: packed(w, &names(&[&format!("{p}.attn.Wqkv")]), 3 * d, d, device, dtype)?,
                o: Linear::load(w, &format!("{p}.attn.out_proj"), d, d, false, device, dtype)?,
                attn_norm: LayerNorm::load(w, &format!("{p}.norm1"), d, eps, device, dtype)?,
                gate_up: packed(w, &names(&[&format!("{p}.mlp.fc12"), &format!("{p}.mlp.fc11")]), ff, d, device, dtype)?,
                down: Linear::load(w, &format!("{p}.mlp.fc2"), ff, d, false, device, dtype)?,
                mlp_norm: LayerNorm::load(w, &format!("{p}.norm2"), d, eps, device, dtype)?,
            }
        } else {
            let p = format!("{root}layers.{i}");
            NomicBertLayer {
                qkv: packed(w, &names(&[&format!("{p}.self_attn.q_proj"), &format!("{p}.self_attn.k_proj"), &format!("{p}.self_attn.v_proj")]), d, d, device, dtype)?,
                o: Linear::load(w, &format!("{p}.self_attn.o_proj"), d, d, false, device, dtype)?,
                attn_norm: LayerNorm::load(w, &format!("{p}.post_attention_layernorm"), d, eps, device, dtype)?,
                gate_up: packed(w, &names(&[&format!("{p}.mlp.gate_proj"), &format!("{p}.mlp.up_proj")]), ff, d, device, dtype)?,
                down: Linear::load(w, &format!("{p}.mlp.down_proj"), ff, d, false, device, dtype)?,
                mlp_norm: LayerNorm::load(w, &format!("{p}.post_mlp_layernorm"), d, eps, device, dtype)?,
            }
        });
    }
    Ok(NomicBertModel { config: c, word_embeddings, token_type_embeddings, embeddings_norm, layers, act, theta })
}

impl Encoder for NomicBertModel {
    fn model_type(&self) -> &str {
        "nomic_bert"
    }
    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }
    fn max_tokens(&self) -> usize {
        self.config.max_position_embeddings
    }
    fn type_vocab_size(&self) -> usize {
        self.config.type_vocab_size
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
        let mut p = vec![&self.word_embeddings, &self.token_type_embeddings];
        p.extend(self.embeddings_norm.params());
        for l in &self.layers {
            for lin in [&l.qkv, &l.o, &l.gate_up, &l.down] {
                p.extend(lin.params());
            }
            p.extend(l.attn_norm.params());
            p.extend(l.mlp_norm.params());
        }
        p
    }
    fn forward(&self, input: &BertInput) -> Result<(Tensor, Tensor)> {
        let (b, s, d) = (input.batch, input.seq, self.config.hidden_size);
        let heads = self.config.num_attention_heads;
        let n = b * s;
        if input.ids.len() != n || input.type_ids.len() != n || input.mask.len() != n {
            return Err(Error::Shape { op: "nomic_bert", detail: format!("batch {b} x seq {s} needs {n} ids, type ids and mask values") });
        }
        if s > self.max_tokens() {
            return Err(Error::Shape { op: "nomic_bert", detail: format!("sequence of {s} tokens is longer than the model's {} positions", self.max_tokens()) });
        }
        let device = self.device();
        let word = ops::embedding(&self.word_embeddings, &input.ids)?;
        let types = ops::embedding(&self.token_type_embeddings, &input.type_ids)?;
        let mut h = self.embeddings_norm.forward_residual(&word, &types)?.reshape(&[b, s, d])?;
        let mask = Tensor::from_slice(device, &input.mask, &[b, s])?;
        let hd = d / heads;
        let (c, sn) = rope_tables(s, hd, self.theta);
        let (cos, sin) = (Tensor::from_slice(device, &c, &[s, hd])?, Tensor::from_slice(device, &sn, &[s, hd])?);
        for l in &self.layers {
            let qkv = ops::rope_qkv(&l.qkv.forward(&h)?, &cos, &sin, heads)?;
            let a = l.o.forward(&ops::attention_packed(&qkv, Some(&mask), heads)?)?;
            h = l.attn_norm.forward_residual(&a, &h)?;
            let m = l.down.forward(&ops::glu(&l.gate_up.forward(&h)?, self.act)?)?;
            h = l.mlp_norm.forward_residual(&m, &h)?;
        }
        Ok((h, mask))
    }
}
