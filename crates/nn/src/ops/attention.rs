//! Scaled-dot-product attention with a key padding mask, over separate
//! Q, K, V tensors or one packed QKV tensor (as `MultiheadAttention` makes),
//! optionally with an additive per-head bias on the scores.

use crate::tensor::{same_dtype, shape_err, Tensor};
use braid_runtime::{
    backend::{Attention, VarlenAttention},
    DType, Error, Result, View,
};

fn check_mask(op: &'static str, mask: Option<&Tensor>, b: usize, s: usize, what: &[usize]) -> Result<()> {
    if let Some(m) = mask {
        if m.shape() != [b, s] {
            return Err(shape_err(op, format!("key padding mask {:?} does not match {what:?}: expected [{b}, {s}]", m.shape())));
        }
        if m.dtype() != DType::F32 {
            return Err(Error::InvalidArgument(format!("{op}: the key padding mask must be f32 (1 = token, 0 = padding), got {}", m.dtype().name())));
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn launch(op: &'static str, inputs: &[&Tensor], q: View<'_>, k: View<'_>, v: View<'_>, row_stride: usize, mask: Option<&Tensor>, b: usize, s: usize, heads: usize, hd: usize) -> Result<Tensor> {
    launch_bias(op, inputs, q, k, v, row_stride, mask, None, b, s, heads, hd)
}

#[allow(clippy::too_many_arguments)]
fn launch_bias(op: &'static str, inputs: &[&Tensor], q: View<'_>, k: View<'_>, v: View<'_>, row_stride: usize, mask: Option<&Tensor>, bias: Option<&Tensor>, b: usize, s: usize, heads: usize, hd: usize) -> Result<Tensor> {
    let x = inputs[0];
    let mut all = inputs.to_vec();
    all.extend(mask);
    all.extend(bias);
    let stream = Tensor::prepare(x.device(), &all)?;
    let out = Tensor::empty_on(x.device(), &stream, &[b, s, heads * hd], x.dtype())?;
    let _ = op;
    if b > 0 && s > 0 && heads > 0 && hd > 0 {
        let p = Attention {
            q, k, v, row_stride,
            mask: mask.map(|m| m.view()),
            out: out.view(),
            batch: b, seq: s, heads, head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
            dtype: x.dtype(),
        };
        match bias {
            // The op layer checks that q, k and v hold b*s rows of
            // `row_stride` elements, the mask b*s f32, the bias heads*s*s f32.
            Some(bias) => stream.attention_bias(&p, bias.view())?,
            None => stream.attention(&p)?,
        }
    }
    Ok(out)
}

/// `softmax(q kᵀ / √d_head + mask) v` per head: `q`, `k`, `v` are
/// `[batch, seq, heads*head_dim]`; `mask` (f32 `[batch, seq]`, 1 for tokens
/// and 0 for padding) hides padding keys. Returns `[batch, seq, heads*head_dim]`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, heads: usize) -> Result<Tensor> {
    let op = "attention";
    if q.dims() != 3 || k.shape() != q.shape() || v.shape() != q.shape() {
        return Err(shape_err(op, format!("q, k and v must be equal [batch, seq, dim], got {:?}, {:?} and {:?}", q.shape(), k.shape(), v.shape())));
    }
    let (b, s, d) = (q.shape()[0], q.shape()[1], q.shape()[2]);
    if heads == 0 || d % heads != 0 {
        return Err(shape_err(op, format!("dim {d} of {:?} is not divisible into {heads} heads", q.shape())));
    }
    same_dtype(op, q, k)?;
    same_dtype(op, q, v)?;
    check_mask(op, mask, b, s, q.shape())?;
    launch(op, &[q, k, v], q.view(), k.view(), v.view(), d, mask, b, s, heads, d / heads)
}

/// As [`attention`], with `qkv` `[batch, seq, 3*dim]` holding each token's
/// q, k and v side by side (the output of one fused projection).
pub fn attention_packed(qkv: &Tensor, mask: Option<&Tensor>, heads: usize) -> Result<Tensor> {
    let op = "attention";
    if qkv.dims() != 3 || qkv.shape()[2] % 3 != 0 {
        return Err(shape_err(op, format!("packed qkv {:?} must be [batch, seq, 3*dim]", qkv.shape())));
    }
    let (b, s, d3) = (qkv.shape()[0], qkv.shape()[1], qkv.shape()[2]);
    let d = d3 / 3;
    if heads == 0 || d % heads != 0 {
        return Err(shape_err(op, format!("dim {d} of packed qkv {:?} is not divisible into {heads} heads", qkv.shape())));
    }
    check_mask(op, mask, b, s, qkv.shape())?;
    let es = qkv.dtype().size();
    let base = qkv.view();
    launch(op, &[qkv], base, base.from(d * es)?, base.from(2 * d * es)?, d3, mask, b, s, heads, d / heads)
}

/// As [`attention_packed`], with `bias` (f32 `[heads, seq, seq]`, shared by
/// every batch row) added to each head's scaled scores before the softmax
/// (MPNet's relative-position bias).
pub fn attention_packed_bias(qkv: &Tensor, mask: Option<&Tensor>, bias: &Tensor, heads: usize) -> Result<Tensor> {
    let op = "attention";
    if qkv.dims() != 3 || qkv.shape()[2] % 3 != 0 {
        return Err(shape_err(op, format!("packed qkv {:?} must be [batch, seq, 3*dim]", qkv.shape())));
    }
    let (b, s, d3) = (qkv.shape()[0], qkv.shape()[1], qkv.shape()[2]);
    let d = d3 / 3;
    if heads == 0 || d % heads != 0 {
        return Err(shape_err(op, format!("dim {d} of packed qkv {:?} is not divisible into {heads} heads", qkv.shape())));
    }
    if bias.shape() != [heads, s, s] {
        return Err(shape_err(op, format!("bias {:?} does not match packed qkv {:?}: expected [{heads}, {s}, {s}]", bias.shape(), qkv.shape())));
    }
    if bias.dtype() != DType::F32 {
        return Err(Error::InvalidArgument(format!("{op}: the bias must be f32, got {}", bias.dtype().name())));
    }
    check_mask(op, mask, b, s, qkv.shape())?;
    let es = qkv.dtype().size();
    let base = qkv.view();
    launch_bias(op, &[qkv], base, base.from(d * es)?, base.from(2 * d * es)?, d3, mask, Some(bias), b, s, heads, d / heads)
}

/// Attention over a packed token stream (no padding): `qkv` is `[tokens,
/// 3*dim]` (each token's q, k and v side by side) and `cu_seqlens` the
/// `batch + 1` offsets of the sequences in it (0, len₀, len₀+len₁, ...,
/// tokens); each sequence attends only to itself. Returns `[tokens, dim]`.
/// Offsets that do not rise from 0 to `tokens` are an error.
pub fn attention_varlen(qkv: &Tensor, cu_seqlens: &[u32], heads: usize) -> Result<Tensor> {
    let op = "attention_varlen";
    if qkv.dims() != 2 || qkv.shape()[1] % 3 != 0 {
        return Err(shape_err(op, format!("packed qkv {:?} must be [tokens, 3*dim]", qkv.shape())));
    }
    let (t, d3) = (qkv.shape()[0], qkv.shape()[1]);
    let d = d3 / 3;
    if heads == 0 || d % heads != 0 {
        return Err(shape_err(op, format!("dim {d} of packed qkv {:?} is not divisible into {heads} heads", qkv.shape())));
    }
    if cu_seqlens.len() < 2 || cu_seqlens[0] != 0 || cu_seqlens.windows(2).any(|w| w[1] < w[0]) || *cu_seqlens.last().unwrap_or(&0) as usize != t {
        return Err(Error::InvalidArgument(format!("{op}: cu_seqlens must rise from 0 to the {t} tokens of qkv {:?}, got {cu_seqlens:?}", qkv.shape())));
    }
    let max_seq = cu_seqlens.windows(2).map(|w| (w[1] - w[0]) as usize).max().unwrap_or(0);
    let device = qkv.device();
    let stream = Tensor::prepare(device, &[qkv])?;
    let out = Tensor::empty_on(device, &stream, &[t, d], qkv.dtype())?;
    if t == 0 {
        return Ok(out);
    }
    let es = qkv.dtype().size();
    let base = qkv.view();
    let p = VarlenAttention {
        q: base,
        k: base.from(d * es)?,
        v: base.from(2 * d * es)?,
        row_stride: d3,
        cu_seqlens,
        out: out.view(),
        batch: cu_seqlens.len() - 1,
        max_seq,
        heads,
        head_dim: d / heads,
        scale: 1.0 / ((d / heads) as f32).sqrt(),
        dtype: qkv.dtype(),
    };
    // The op layer checks the offsets again, uploads them, and checks that
    // q/k/v hold their t rows of d3 elements and out t*d.
    stream.attention_varlen(device, &p)?;
    Ok(out)
}
