//! [`MultiheadAttention`]: self-attention with one packed QKV projection
//! (PyTorch's `nn.MultiheadAttention`: `in_proj_weight` `[3d, d]` holding
//! q, k, v stacked, `in_proj_bias`, `out_proj`).

use super::{join, Linear};
use crate::{ops, settle_all, HostWeights, Tensor};
use braid_runtime::{DType, Device, Error, Result};

#[derive(Clone, Debug)]
pub struct MultiheadAttention {
    /// `[3d, d]` weight and `[3d]` bias.
    pub in_proj: Linear,
    pub out_proj: Linear,
    pub heads: usize,
}

impl MultiheadAttention {
    /// `{prefix}.in_proj_weight`, `{prefix}.in_proj_bias`, `{prefix}.out_proj.{weight,bias}`.
    pub fn load(w: &HostWeights, prefix: &str, dim: usize, heads: usize, device: &Device, dtype: DType) -> Result<MultiheadAttention> {
        if heads == 0 || dim % heads != 0 {
            return Err(Error::InvalidArgument(format!("attention width {dim} is not divisible into {heads} heads")));
        }
        let in_proj = Linear {
            weight: w.tensor(&join(prefix, "in_proj_weight"), &[3 * dim, dim], device, dtype)?,
            bias: Some(w.tensor(&join(prefix, "in_proj_bias"), &[3 * dim], device, dtype)?),
        };
        settle_all(&in_proj.params())?;
        let out_proj = Linear::load(w, &join(prefix, "out_proj"), dim, dim, true, device, dtype)?;
        Ok(MultiheadAttention { in_proj, out_proj, heads })
    }

    pub fn params(&self) -> Vec<&Tensor> {
        let mut p = self.in_proj.params();
        p.extend(self.out_proj.params());
        p
    }

    pub fn dim(&self) -> usize {
        self.out_proj.out_features()
    }

    /// Self-attention of `x` `[batch, seq, d]`; `mask` (f32 `[batch, seq]`,
    /// 1 = token, 0 = padding) hides padding keys.
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let qkv = self.in_proj.forward(x)?;
        let a = ops::attention_packed(&qkv, mask, self.heads)?;
        self.out_proj.forward(&a)
    }

    /// Self-attention of a packed token stream `x` `[tokens, d]` holding the
    /// sequences `cu_seqlens` delimits (see [`ops::attention_varlen`]).
    pub fn forward_varlen(&self, x: &Tensor, cu_seqlens: &[u32]) -> Result<Tensor> {
        let qkv = self.in_proj.forward(x)?;
        let a = ops::attention_varlen(&qkv, cu_seqlens, self.heads)?;
        self.out_proj.forward(&a)
    }
}
