//! `mean_pool`: the mean over the sequence of the positions a mask keeps.

use crate::tensor::{shape_err, Tensor};
use braid_runtime::{backend::MeanPool, DType, Error, Result};

/// Mean over `seq` of `x` `[batch, seq, dim]`, weighting each position by
/// `mask` (f32 `[batch, seq]`, 1 = token, 0 = padding; all ones if `None`).
/// Returns `[batch, dim]`.
pub fn mean_pool(x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    if x.dims() != 3 {
        return Err(shape_err("mean_pool", format!("input {:?} must be [batch, seq, dim]", x.shape())));
    }
    let (b, s, d) = (x.shape()[0], x.shape()[1], x.shape()[2]);
    if let Some(m) = mask {
        if m.shape() != [b, s] {
            return Err(shape_err("mean_pool", format!("mask {:?} does not match input {:?}: expected [{b}, {s}]", m.shape(), x.shape())));
        }
        if m.dtype() != DType::F32 {
            return Err(Error::InvalidArgument(format!("mean_pool: the mask must be f32, got {}", m.dtype().name())));
        }
    }
    let mut inputs = vec![x];
    inputs.extend(mask);
    let stream = Tensor::prepare(x.device(), &inputs)?;
    let out = Tensor::empty_on(x.device(), &stream, &[b, d], x.dtype())?;
    if b > 0 && d > 0 {
        let p = MeanPool { x: x.view(), mask: mask.map(|m| m.view()), out: out.view(), batch: b, seq: s, dim: d, dtype: x.dtype() };
        stream.mean_pool(&p)?;
    }
    Ok(out)
}
