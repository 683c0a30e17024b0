//! `mean_pool`: the mean over the sequence of the positions a mask keeps;
//! `segment_mean_pool`: the same over each sequence of a packed stream.

use crate::tensor::{shape_err, Tensor};
use braid_runtime::{
    backend::{MeanPool, SegmentMeanPool},
    DType, Error, Result,
};

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

/// The mean of each sequence of a packed token stream `x` `[tokens, dim]`
/// (the layout of [`super::attention_varlen`]): row `i` of the result
/// `[segments, dim]` is the mean of rows `cu_seqlens[i] .. cu_seqlens[i+1]`
/// (zeros for an empty sequence). Offsets that do not rise from 0 to
/// `tokens` are an error. No work is spent on padding: there is none.
pub fn segment_mean_pool(x: &Tensor, cu_seqlens: &[u32]) -> Result<Tensor> {
    let op = "segment_mean_pool";
    if x.dims() != 2 {
        return Err(shape_err(op, format!("input {:?} must be [tokens, dim]", x.shape())));
    }
    let (t, d) = (x.shape()[0], x.shape()[1]);
    if cu_seqlens.len() < 2 || cu_seqlens[0] != 0 || cu_seqlens.windows(2).any(|w| w[1] < w[0]) || *cu_seqlens.last().unwrap_or(&0) as usize != t {
        return Err(Error::InvalidArgument(format!("{op}: cu_seqlens must rise from 0 to the {t} tokens of x {:?}, got {cu_seqlens:?}", x.shape())));
    }
    let segments = cu_seqlens.len() - 1;
    let device = x.device();
    let stream = Tensor::prepare(device, &[x])?;
    let out = Tensor::empty_on(device, &stream, &[segments, d], x.dtype())?;
    if d > 0 {
        let p = SegmentMeanPool { x: x.view(), cu_seqlens, out: out.view(), segments, dim: d, dtype: x.dtype() };
        stream.segment_mean_pool(device, &p)?;
    }
    Ok(out)
}
