//! Elementwise ops: `add` and the activations (ReLU, GELU erf and tanh).

use crate::tensor::{same_dtype, shape_err, Tensor};
use braid_runtime::{Activation, Result};

/// `a + b`, same shapes (no broadcasting).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        return Err(shape_err("add", format!("shapes differ: {:?} and {:?}", a.shape(), b.shape())));
    }
    same_dtype("add", a, b)?;
    let stream = Tensor::prepare(a.device(), &[a, b])?;
    let out = Tensor::empty_on(a.device(), &stream, a.shape(), a.dtype())?;
    if a.numel() > 0 {
        stream.add(a.view(), b.view(), out.view(), a.numel(), a.dtype())?;
    }
    Ok(out)
}

/// `act(x)` elementwise.
pub fn activation(x: &Tensor, act: Activation) -> Result<Tensor> {
    let stream = Tensor::prepare(x.device(), &[x])?;
    let out = Tensor::empty_on(x.device(), &stream, x.shape(), x.dtype())?;
    if x.numel() > 0 {
        stream.activation(x.view(), out.view(), x.numel(), act, x.dtype())?;
    }
    Ok(out)
}

pub fn relu(x: &Tensor) -> Result<Tensor> {
    activation(x, Activation::Relu)
}

/// GELU, exact (erf) form.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    activation(x, Activation::GeluErf)
}

/// GELU, tanh approximation.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    activation(x, Activation::GeluTanh)
}
