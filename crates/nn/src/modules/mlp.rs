//! [`Mlp`]: Linear layers with an activation between them (none after the
//! last), named as PyTorch's `nn.Sequential(Linear, ReLU, Linear, ...)`
//! names them: `0`, `2`, `4`, ...

use super::{join, Linear};
use crate::{HostWeights, Tensor};
use braid_runtime::{Activation, DType, Device, Error, Result};

#[derive(Clone, Debug)]
pub struct Mlp {
    pub layers: Vec<Linear>,
    pub act: Activation,
}

impl Mlp {
    /// Layers `dims[0] -> dims[1] -> ... -> dims[n]`, each with a bias.
    pub fn load(w: &HostWeights, prefix: &str, dims: &[usize], act: Activation, device: &Device, dtype: DType) -> Result<Mlp> {
        if dims.len() < 2 {
            return Err(Error::InvalidArgument(format!("an MLP needs at least 2 sizes, got {dims:?}")));
        }
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(i, d)| Linear::load(w, &join(prefix, &(2 * i).to_string()), d[0], d[1], true, device, dtype))
            .collect::<Result<Vec<_>>>()?;
        Ok(Mlp { layers, act })
    }

    pub fn params(&self) -> Vec<&Tensor> {
        self.layers.iter().flat_map(|l| l.params()).collect()
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.params().iter().map(|t| t.numel()).sum()
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let last = self.layers.len() - 1;
        let mut h = self.layers[0].forward_act(x, if last == 0 { Activation::None } else { self.act })?;
        for (i, l) in self.layers.iter().enumerate().skip(1) {
            h = l.forward_act(&h, if i == last { Activation::None } else { self.act })?;
        }
        Ok(h)
    }
}
