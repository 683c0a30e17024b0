//! `linear` (x·wᵀ + b with an activation epilogue) and `matmul`, both one GEMM.

use crate::tensor::{same_dtype, shape_err, Tensor};
use braid_runtime::{backend::Gemm, Activation, Result};

/// `act(x · wᵀ + b)`: `x` is `[..., k]`, `w` is `[n, k]` (a Linear layer's
/// weight), `b` is `[n]`; the result is `[..., n]`.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, act: Activation) -> Result<Tensor> {
    let op = "linear";
    if x.dims() < 1 || w.dims() != 2 {
        return Err(shape_err(op, format!("input {:?} must have at least 1 dimension and weight {:?} exactly 2 ([out, in])", x.shape(), w.shape())));
    }
    let (n, k) = (w.shape()[0], w.shape()[1]);
    if x.last_dim() != k {
        return Err(shape_err(op, format!("input {:?} has {} features but weight {:?} expects {k}", x.shape(), x.last_dim(), w.shape())));
    }
    same_dtype(op, x, w)?;
    if let Some(b) = b {
        if b.shape() != [n] {
            return Err(shape_err(op, format!("bias {:?} does not match weight {:?}: expected [{n}]", b.shape(), w.shape())));
        }
        same_dtype(op, x, b)?;
    }
    let m: usize = x.shape()[..x.dims() - 1].iter().product();
    let mut out_shape = x.shape().to_vec();
    *out_shape.last_mut().expect("dims >= 1") = n;
    let mut inputs = vec![x, w];
    inputs.extend(b);
    let stream = Tensor::prepare(x.device(), &inputs)?;
    let out = Tensor::empty_on(x.device(), &stream, &out_shape, x.dtype())?;
    if m > 0 && n > 0 {
        // The weight's buffer carries its packed form (`Buffer::gemm_pack`).
        stream.gemm_weight(&Gemm { m, n, k, a: x.view(), w: w.view(), bias: b.map(|b| b.view()), out: out.view(), act, dtype: x.dtype() })?;
    }
    Ok(out)
}

/// `a · bᵀ` for `a` `[..., k]` and `b` `[n, k]` (no bias, no activation).
pub fn matmul(a: &Tensor, b_t: &Tensor) -> Result<Tensor> {
    linear(a, b_t, None, Activation::None)
}
