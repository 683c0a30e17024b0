//! Normalisations over the last dimension: `layer_norm` (with an optional
//! residual added first) and `l2_normalize`.

use crate::tensor::{same_dtype, shape_err, Tensor};
use braid_runtime::{backend::LayerNorm, Result};

/// `LayerNorm(x + residual) * gamma + beta` over the last dimension.
pub fn layer_norm(x: &Tensor, residual: Option<&Tensor>, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Tensor> {
    let op = "layer_norm";
    let d = x.last_dim();
    if x.dims() < 1 {
        return Err(shape_err(op, format!("input {:?} needs at least one dimension", x.shape())));
    }
    if gamma.shape() != [d] || beta.shape() != [d] {
        return Err(shape_err(op, format!("input {:?} needs gamma and beta of shape [{d}], got {:?} and {:?}", x.shape(), gamma.shape(), beta.shape())));
    }
    same_dtype(op, x, gamma)?;
    same_dtype(op, x, beta)?;
    if let Some(r) = residual {
        if r.shape() != x.shape() {
            return Err(shape_err(op, format!("residual {:?} does not match input {:?}", r.shape(), x.shape())));
        }
        same_dtype(op, x, r)?;
    }
    let mut inputs = vec![x, gamma, beta];
    inputs.extend(residual);
    let stream = Tensor::prepare(x.device(), &inputs)?;
    let out = Tensor::empty_on(x.device(), &stream, x.shape(), x.dtype())?;
    let rows = x.numel() / d.max(1);
    if rows > 0 && d > 0 {
        let p = LayerNorm { x: x.view(), residual: residual.map(|r| r.view()), gamma: gamma.view(), beta: beta.view(), out: out.view(), rows, cols: d, eps, dtype: x.dtype() };
        stream.layer_norm(&p)?;
    }
    Ok(out)
}

/// Each row (last dimension) divided by `max(‖row‖₂, 1e-12)`.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let stream = Tensor::prepare(x.device(), &[x])?;
    let out = Tensor::empty_on(x.device(), &stream, x.shape(), x.dtype())?;
    let d = x.last_dim();
    let rows = x.numel() / d.max(1);
    if rows > 0 && d > 0 {
        stream.l2_normalize(x.view(), out.view(), rows, d, x.dtype())?;
    }
    Ok(out)
}
