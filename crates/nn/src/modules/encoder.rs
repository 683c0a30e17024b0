//! [`TransformerEncoderLayer`], post-norm (PyTorch's default, and BERT's
//! layer): `h = LN1(x + SA(x))`, `y = LN2(h + W2·act(W1·h))`.

use super::{join, LayerNorm, Linear, MultiheadAttention};
use crate::{HostWeights, Tensor};
use braid_runtime::{Activation, DType, Device, Result};

#[derive(Clone, Debug)]
pub struct TransformerEncoderLayer {
    pub self_attn: MultiheadAttention,
    pub linear1: Linear,
    pub linear2: Linear,
    pub norm1: LayerNorm,
    pub norm2: LayerNorm,
    pub act: Activation,
}

impl TransformerEncoderLayer {
    /// PyTorch names: `self_attn.*`, `linear1`, `linear2`, `norm1`, `norm2`.
    #[allow(clippy::too_many_arguments)]
    pub fn load(w: &HostWeights, prefix: &str, dim: usize, heads: usize, ff: usize, act: Activation, eps: f32, device: &Device, dtype: DType) -> Result<Self> {
        Ok(TransformerEncoderLayer {
            self_attn: MultiheadAttention::load(w, &join(prefix, "self_attn"), dim, heads, device, dtype)?,
            linear1: Linear::load(w, &join(prefix, "linear1"), dim, ff, true, device, dtype)?,
            linear2: Linear::load(w, &join(prefix, "linear2"), ff, dim, true, device, dtype)?,
            norm1: LayerNorm::load(w, &join(prefix, "norm1"), dim, eps, device, dtype)?,
            norm2: LayerNorm::load(w, &join(prefix, "norm2"), dim, eps, device, dtype)?,
            act,
        })
    }

    pub fn params(&self) -> Vec<&Tensor> {
        let mut p = self.self_attn.params();
        p.extend(self.linear1.params());
        p.extend(self.linear2.params());
        p.extend(self.norm1.params());
        p.extend(self.norm2.params());
        p
    }

    /// `x` `[batch, seq, d]`; `mask` f32 `[batch, seq]` (1 = token, 0 = padding).
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let a = self.self_attn.forward(x, mask)?;
        let h = self.norm1.forward_residual(&a, x)?;
        let f = self.linear1.forward_act(&h, self.act)?;
        let f = self.linear2.forward(&f)?;
        self.norm2.forward_residual(&f, &h)
    }

    /// As [`forward`](Self::forward) on a packed token stream `x` `[tokens,
    /// d]` (sequences delimited by `cu_seqlens`): no work on padding.
    pub fn forward_varlen(&self, x: &Tensor, cu_seqlens: &[u32]) -> Result<Tensor> {
        let a = self.self_attn.forward_varlen(x, cu_seqlens)?;
        let h = self.norm1.forward_residual(&a, x)?;
        let f = self.linear1.forward_act(&h, self.act)?;
        let f = self.linear2.forward(&f)?;
        self.norm2.forward_residual(&f, &h)
    }
}
