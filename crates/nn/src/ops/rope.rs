//! `rope_qkv` (rotary position embedding on packed q, k) and `glu` (gated
//! linear unit): the composable pieces of ModernBERT-style layers.

use crate::tensor::{shape_err, Tensor};
use braid_runtime::{backend::Rope, Activation, DType, Error, Result};

/// Rotary embedding (rotate-half form) of the q and k parts of packed
/// `qkv` `[batch, seq, 3*heads*head_dim]`; v is copied. `cos` and `sin` are
/// f32 `[seq, head_dim]` (position `j` of every row is row `j` of the tables).
pub fn rope_qkv(qkv: &Tensor, cos: &Tensor, sin: &Tensor, heads: usize) -> Result<Tensor> {
    let op = "rope_qkv";
    if qkv.dims() != 3 || heads == 0 || qkv.shape()[2] % (3 * heads) != 0 {
        return Err(shape_err(op, format!("packed qkv {:?} must be [batch, seq, 3*heads*head_dim] with {heads} heads", qkv.shape())));
    }
    let (b, s) = (qkv.shape()[0], qkv.shape()[1]);
    let hd = qkv.shape()[2] / (3 * heads);
    if hd % 2 != 0 {
        return Err(shape_err(op, format!("head_dim {hd} must be even")));
    }
    for (name, t) in [("cos", cos), ("sin", sin)] {
        if t.shape() != [s, hd] {
            return Err(shape_err(op, format!("{name} {:?} does not match qkv {:?}: expected [{s}, {hd}]", t.shape(), qkv.shape())));
        }
        if t.dtype() != DType::F32 {
            return Err(Error::InvalidArgument(format!("{op}: {name} must be f32, got {}", t.dtype().name())));
        }
    }
    let stream = Tensor::prepare(qkv.device(), &[qkv, cos, sin])?;
    let out = Tensor::empty_on(qkv.device(), &stream, qkv.shape(), qkv.dtype())?;
    if b * s > 0 && hd > 0 {
        let p = Rope { x: qkv.view(), out: out.view(), cos: cos.view(), sin: sin.view(), rows: b * s, seq: s, heads, head_dim: hd, dtype: qkv.dtype() };
        stream.rope_qkv(&p)?;
    }
    Ok(out)
}

/// `act(x[..., :n]) * x[..., n:]` for `x` `[..., 2n]`: GeGLU with GELU.
pub fn glu(x: &Tensor, act: Activation) -> Result<Tensor> {
    let two = x.last_dim();
    if x.dims() < 1 || two % 2 != 0 {
        return Err(shape_err("glu", format!("input {:?} needs an even last dimension", x.shape())));
    }
    let cols = two / 2;
    let rows = x.numel() / two.max(1);
    let mut shape = x.shape().to_vec();
    *shape.last_mut().expect("dims >= 1") = cols;
    let stream = Tensor::prepare(x.device(), &[x])?;
    let out = Tensor::empty_on(x.device(), &stream, &shape, x.dtype())?;
    if rows > 0 && cols > 0 {
        stream.glu(x.view(), out.view(), rows, cols, act, x.dtype())?;
    }
    Ok(out)
}
