//! [`Linear`]: `y = act(x · Wᵀ + b)` (PyTorch's `nn.Linear`, weight `[out, in]`).

use super::join;
use crate::{ops, settle_all, HostWeights, Tensor};
use braid_runtime::{Activation, DType, Device, Result};

#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// `{prefix}.weight` `[out, in]` and, if `bias`, `{prefix}.bias` `[out]`.
    pub fn load(w: &HostWeights, prefix: &str, in_features: usize, out_features: usize, bias: bool, device: &Device, dtype: DType) -> Result<Linear> {
        let weight = w.tensor(&join(prefix, "weight"), &[out_features, in_features], device, dtype)?;
        let bias = if bias { Some(w.tensor(&join(prefix, "bias"), &[out_features], device, dtype)?) } else { None };
        let l = Linear { weight, bias };
        settle_all(&l.params())?;
        Ok(l)
    }

    pub fn in_features(&self) -> usize {
        self.weight.shape()[1]
    }
    pub fn out_features(&self) -> usize {
        self.weight.shape()[0]
    }

    pub fn params(&self) -> Vec<&Tensor> {
        let mut p = vec![&self.weight];
        p.extend(self.bias.as_ref());
        p
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, Activation::None)
    }

    /// With `act` fused into the GEMM's epilogue.
    pub fn forward_act(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        ops::linear(x, &self.weight, self.bias.as_ref(), act)
    }
}
