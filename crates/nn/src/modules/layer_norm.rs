//! [`LayerNorm`] over the last dimension (PyTorch's `nn.LayerNorm`), with the
//! residual add fused in for post-norm blocks.

use super::join;
use crate::{ops, settle_all, HostWeights, Tensor};
use braid_runtime::{DType, Device, Result};

#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f32,
}

impl LayerNorm {
    /// `{prefix}.weight` and `{prefix}.bias`, both `[dim]`.
    pub fn load(w: &HostWeights, prefix: &str, dim: usize, eps: f32, device: &Device, dtype: DType) -> Result<LayerNorm> {
        let ln = LayerNorm { weight: w.tensor(&join(prefix, "weight"), &[dim], device, dtype)?, bias: w.tensor(&join(prefix, "bias"), &[dim], device, dtype)?, eps };
        settle_all(&ln.params())?;
        Ok(ln)
    }

    pub fn params(&self) -> Vec<&Tensor> {
        vec![&self.weight, &self.bias]
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::layer_norm(x, None, &self.weight, &self.bias, self.eps)
    }

    /// `LayerNorm(x + residual)`.
    pub fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        ops::layer_norm(x, Some(residual), &self.weight, &self.bias, self.eps)
    }
}
