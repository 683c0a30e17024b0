//! [`BertModel`]: a BERT encoder (HF `BertModel` layout): word + position +
//! token-type embeddings and LayerNorm, N post-norm encoder layers, then
//! (for sentence embeddings) mean pooling over the attention mask and L2
//! normalisation. Owns the mapping from HF's parameter names to our modules
//! (q, k and v are packed into one projection at load time) and
//! [`BertConfig`], the subset of `config.json` it needs. RoBERTa and
//! XLM-RoBERTa are this model with positions offset by the padding index.

use super::{LayerNorm, TransformerEncoderLayer};
use crate::{models::Hidden, ops, settle_all, HostWeights, Tensor};
use braid_runtime::{Activation, DType, Device, Error, Result};
use serde::Deserialize;

/// The fields of an HF BERT `config.json` the model needs.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct BertConfig {
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
    /// `bert`, or `roberta`/`xlm-roberta`/`camembert` (positions offset by
    /// the padding index); empty in configs made by hand.
    #[serde(default)]
    pub model_type: String,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_max_pos() -> usize {
    512
}
fn default_types() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

impl BertConfig {
    /// Parse `config.json` text; `origin` names it in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<BertConfig> {
        let c: BertConfig = serde_json::from_str(text).map_err(|e| Error::Io { path: origin.into(), message: format!("not a valid BERT config: {e}") })?;
        if c.num_attention_heads == 0 || c.hidden_size % c.num_attention_heads != 0 {
            return Err(Error::Model(format!("{origin}: hidden_size {} is not divisible into {} heads", c.hidden_size, c.num_attention_heads)));
        }
        c.activation()?;
        Ok(c)
    }

    /// RoBERTa-style models number positions from `pad_token_id + 1`
    /// (HF's `create_position_ids_from_input_ids`); BERT from 0.
    pub fn position_offset(&self) -> usize {
        match self.model_type.as_str() {
            "roberta" | "xlm-roberta" | "camembert" => self.pad_token_id.unwrap_or(1) as usize + 1,
            _ => 0,
        }
    }

    /// Tokens a row may hold: the position table less the offset.
    pub fn max_tokens(&self) -> usize {
        self.max_position_embeddings.saturating_sub(self.position_offset())
    }

    /// The feed-forward activation named by `hidden_act`.
    pub fn activation(&self) -> Result<Activation> {
        match self.hidden_act.as_str() {
            "gelu" => Ok(Activation::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
            "relu" => Ok(Activation::Relu),
            other => Err(Error::Model(format!("config: hidden_act {other:?} is not supported (gelu, gelu_new, gelu_pytorch_tanh, relu)"))),
        }
    }
}

/// A padded batch of token ids: `batch` rows of `seq` tokens, row-major
/// (padding on the right).
#[derive(Clone, Debug, PartialEq)]
pub struct BertInput {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// 1.0 for a token, 0.0 for padding.
    pub mask: Vec<f32>,
    pub batch: usize,
    pub seq: usize,
}

impl BertInput {
    /// Rows of ids of any lengths, padded with `pad_id` to the longest.
    pub fn from_rows(rows: &[Vec<u32>], pad_id: u32) -> BertInput {
        let seq = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let mut input = BertInput { ids: Vec::new(), type_ids: vec![0; rows.len() * seq], mask: Vec::new(), batch: rows.len(), seq };
        for r in rows {
            input.ids.extend(r.iter().copied().chain(std::iter::repeat_n(pad_id, seq - r.len())));
            input.mask.extend(std::iter::repeat_n(1.0, r.len()).chain(std::iter::repeat_n(0.0, seq - r.len())));
        }
        input
    }

    /// Rows of `(ids, type_ids)` (a text pair's segments), padded as in
    /// [`from_rows`](Self::from_rows), type ids with 0.
    pub fn from_typed_rows(rows: &[(Vec<u32>, Vec<u32>)], pad_id: u32) -> BertInput {
        let ids: Vec<Vec<u32>> = rows.iter().map(|r| r.0.clone()).collect();
        let mut input = BertInput::from_rows(&ids, pad_id);
        for (i, (_, t)) in rows.iter().enumerate() {
            input.type_ids[i * input.seq..][..t.len()].copy_from_slice(t);
        }
        input
    }

    /// Tokens (mask 1) in row `i`.
    pub fn row_len(&self, i: usize) -> usize {
        self.mask[i * self.seq..][..self.seq].iter().filter(|&&m| m != 0.0).count()
    }
}

/// A BERT encoder on a device. `Send + Sync`.
#[derive(Clone, Debug)]
pub struct BertModel {
    pub config: BertConfig,
    pub word_embeddings: Tensor,
    pub position_embeddings: Tensor,
    pub token_type_embeddings: Tensor,
    pub embeddings_norm: LayerNorm,
    pub layers: Vec<TransformerEncoderLayer>,
}

fn concat(w: &HostWeights, names: &[String], shape: &[usize]) -> Result<Vec<f32>> {
    let mut out = Vec::new();
    for n in names {
        out.extend_from_slice(&w.get(n, shape)?.data);
    }
    Ok(out)
}

impl BertModel {
    /// Load from HF names (`embeddings.*`, `encoder.layer.N.*`, optionally
    /// under `bert.`); a missing or misshapen tensor is an error naming it.
    pub fn load(w: &HostWeights, config: &BertConfig, device: &Device, dtype: DType) -> Result<BertModel> {
        let c = config;
        let root = ["", "bert.", "roberta."].into_iter().find(|r| w.contains(&format!("{r}embeddings.word_embeddings.weight"))).unwrap_or("");
        let (d, ff) = (c.hidden_size, c.intermediate_size);
        let eps = c.layer_norm_eps as f32;
        let act = c.activation()?;
        let word_embeddings = w.tensor(&format!("{root}embeddings.word_embeddings.weight"), &[c.vocab_size, d], device, dtype)?;
        let position_embeddings = w.tensor(&format!("{root}embeddings.position_embeddings.weight"), &[c.max_position_embeddings, d], device, dtype)?;
        let token_type_embeddings = w.tensor(&format!("{root}embeddings.token_type_embeddings.weight"), &[c.type_vocab_size, d], device, dtype)?;
        settle_all(&[&word_embeddings, &position_embeddings, &token_type_embeddings])?;
        let embeddings_norm = LayerNorm::load(w, &format!("{root}embeddings.LayerNorm"), d, eps, device, dtype)?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("{root}encoder.layer.{i}");
            let mut lw = HostWeights::new(w.origin());
            let qkv = |s: &str| ["query", "key", "value"].map(|n| format!("{p}.attention.self.{n}.{s}")).to_vec();
            lw.insert("self_attn.in_proj_weight", &[3 * d, d], concat(w, &qkv("weight"), &[d, d])?)?;
            lw.insert("self_attn.in_proj_bias", &[3 * d], concat(w, &qkv("bias"), &[d])?)?;
            let mut copy = |to: &str, from: &str, shape: &[usize]| -> Result<()> { lw.alias(to, w, &format!("{p}.{from}"), shape) };
            copy("self_attn.out_proj.weight", "attention.output.dense.weight", &[d, d])?;
            copy("self_attn.out_proj.bias", "attention.output.dense.bias", &[d])?;
            copy("norm1.weight", "attention.output.LayerNorm.weight", &[d])?;
            copy("norm1.bias", "attention.output.LayerNorm.bias", &[d])?;
            copy("linear1.weight", "intermediate.dense.weight", &[ff, d])?;
            copy("linear1.bias", "intermediate.dense.bias", &[ff])?;
            copy("linear2.weight", "output.dense.weight", &[d, ff])?;
            copy("linear2.bias", "output.dense.bias", &[d])?;
            copy("norm2.weight", "output.LayerNorm.weight", &[d])?;
            copy("norm2.bias", "output.LayerNorm.bias", &[d])?;
            layers.push(TransformerEncoderLayer::load(&lw, "", d, c.num_attention_heads, ff, act, eps, device, dtype)?);
        }
        Ok(BertModel { config: c.clone(), word_embeddings, position_embeddings, token_type_embeddings, embeddings_norm, layers })
    }

    pub fn device(&self) -> &Device {
        self.word_embeddings.device()
    }

    pub fn dtype(&self) -> DType {
        self.word_embeddings.dtype()
    }

    pub fn params(&self) -> Vec<&Tensor> {
        let mut p = vec![&self.word_embeddings, &self.position_embeddings, &self.token_type_embeddings];
        p.extend(self.embeddings_norm.params());
        p.extend(self.layers.iter().flat_map(|l| l.params()));
        p
    }

    fn check(&self, input: &BertInput) -> Result<()> {
        let n = input.batch * input.seq;
        if input.ids.len() != n || input.type_ids.len() != n || input.mask.len() != n {
            return Err(Error::Shape {
                op: "bert",
                detail: format!("batch {} x seq {} needs {n} ids, type ids and mask values, got {}, {} and {}", input.batch, input.seq, input.ids.len(), input.type_ids.len(), input.mask.len()),
            });
        }
        if input.seq > self.config.max_tokens() {
            return Err(Error::Shape { op: "bert", detail: format!("sequence of {} tokens is longer than the model's {} positions", input.seq, self.config.max_tokens()) });
        }
        Ok(())
    }

    /// The last hidden state `[batch, seq, hidden]` and the mask tensor `[batch, seq]`.
    pub fn forward(&self, input: &BertInput) -> Result<(Tensor, Tensor)> {
        self.forward_hidden(input)?.padded()
    }

    /// The last hidden state, packed where the batch ran packed (see
    /// [`Hidden`]), so that mean pooling can run per segment.
    pub fn forward_hidden(&self, input: &BertInput) -> Result<Hidden> {
        self.check(input)?;
        // Packed batches need the device's varlen attention kernel (wgpu
        // has none): without it, the padded path below.
        if packing() && self.device().capabilities().varlen_attention {
            if let Some(r) = self.forward_packed(input)? {
                return Ok(r);
            }
        }
        let (h, mask) = self.forward_padded(input)?;
        Ok(Hidden::Padded { h, mask })
    }

    fn forward_padded(&self, input: &BertInput) -> Result<(Tensor, Tensor)> {
        let (b, s, d) = (input.batch, input.seq, self.config.hidden_size);
        let device = self.device();
        let offset = self.config.position_offset();
        let pos: Vec<u32> = if offset == 0 {
            (0..b).flat_map(|_| 0..s as u32).collect()
        } else {
            // HF: padding keeps the padding index, tokens count from it + 1.
            let pad = (offset - 1) as u32;
            input.mask.iter().enumerate().map(|(i, &m)| if m != 0.0 { (offset + i % s) as u32 } else { pad }).collect()
        };
        let word = ops::embedding(&self.word_embeddings, &input.ids)?;
        let position = ops::embedding(&self.position_embeddings, &pos)?;
        let token_type = ops::embedding(&self.token_type_embeddings, &input.type_ids)?;
        let e = ops::add(&word, &position)?;
        let mut h = self.embeddings_norm.forward_residual(&e, &token_type)?.reshape(&[b, s, d])?;
        let mask = Tensor::from_slice(device, &input.mask, &[b, s])?;
        for layer in &self.layers {
            h = layer.forward(&h, Some(&mask))?;
        }
        Ok((h, mask))
    }

    /// [`forward`](Self::forward) on the packed token stream: only the real
    /// tokens of each row (a row is its tokens, then padding) go through the
    /// layers, as one stream delimited by cumulative offsets, so no GEMM or
    /// attention work is spent on padding. The last hidden state stays
    /// packed ([`Hidden::Packed`]); pooling runs per segment, and
    /// [`Hidden::padded`] gathers it back where a caller needs
    /// `[batch, seq, hidden]`. `None` where a row's mask is not
    /// tokens-then-padding or there are no tokens (the padded path handles
    /// those).
    fn forward_packed(&self, input: &BertInput) -> Result<Option<Hidden>> {
        let (b, s) = (input.batch, input.seq);
        let offset = self.config.position_offset() as u32;
        let mut cu = Vec::with_capacity(b + 1);
        cu.push(0u32);
        let (mut ids, mut types, mut pos) = (Vec::new(), Vec::new(), Vec::new());
        for r in 0..b {
            let row = &input.mask[r * s..][..s];
            let len = row.iter().take_while(|&&m| m != 0.0).count();
            if row[len..].iter().any(|&m| m != 0.0) {
                return Ok(None);
            }
            ids.extend_from_slice(&input.ids[r * s..][..len]);
            types.extend_from_slice(&input.type_ids[r * s..][..len]);
            pos.extend((0..len as u32).map(|j| j + offset));
            cu.push(ids.len() as u32);
        }
        if ids.is_empty() {
            return Ok(None);
        }
        let word = ops::embedding(&self.word_embeddings, &ids)?;
        let position = ops::embedding(&self.position_embeddings, &pos)?;
        let token_type = ops::embedding(&self.token_type_embeddings, &types)?;
        let e = ops::add(&word, &position)?;
        let mut h = self.embeddings_norm.forward_residual(&e, &token_type)?;
        for layer in &self.layers {
            h = layer.forward_varlen(&h, &cu)?;
        }
        Ok(Some(Hidden::Packed { h, cu_seqlens: cu, batch: b, seq: s, mask: input.mask.clone() }))
    }

    /// Mean-pooled (over the mask), L2-normalised sentence embeddings `[batch, hidden]`.
    pub fn embed(&self, input: &BertInput) -> Result<Tensor> {
        let pooled = match self.forward_hidden(input)? {
            Hidden::Packed { h, cu_seqlens, .. } => ops::segment_mean_pool(&h, &cu_seqlens)?,
            hidden => {
                let (h, mask) = hidden.padded()?;
                ops::mean_pool(&h, Some(&mask))?
            }
        };
        ops::l2_normalize(&pooled)
    }
}

/// Packed (padding-free) batches: on unless `BRAID_PACK=0` (read once).
pub fn packing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| !std::env::var("BRAID_PACK").is_ok_and(|v| v == "0"))
}
