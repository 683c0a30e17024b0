//! Packed (varlen) attention on the CPU backend: each sequence of the token
//! stream (`cu_seqlens[b] .. cu_seqlens[b+1]`) attends to itself with the
//! dense kernel's per-head arithmetic ([`super::kernels::attention_segments`]),
//! no mask, so no work is spent on padding; every (segment, head) is one task
//! of a single pool region. Owns the checks of the offsets; the arithmetic
//! is the dense kernel's.

use super::kernels;
use crate::error::{Error, Result};

/// `cu` holds `batch + 1` offsets; `q`/`k`/`v` hold the stream's rows
/// `row_stride` apart, `out` is `[tokens, heads*hd]`. Offsets that decrease
/// or pass the buffers are an error, never an out-of-bounds read.
#[allow(clippy::too_many_arguments)]
pub fn attention_varlen(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    row_stride: usize,
    cu: &[u32],
    out: &mut [f32],
    heads: usize,
    hd: usize,
    scale: f32,
) -> Result<()> {
    let d = heads * hd;
    let tokens = *cu.last().unwrap_or(&0) as usize;
    if cu.first().is_some_and(|&c| c != 0)
        || cu.windows(2).any(|w| w[1] < w[0])
        || out.len() < tokens * d
    {
        return Err(Error::InvalidArgument(format!(
            "attention_varlen: cu_seqlens {cu:?} must rise from 0 to the stream's {} tokens",
            out.len() / d.max(1)
        )));
    }
    let mut segs = Vec::with_capacity(cu.len().saturating_sub(1));
    for w in cu.windows(2) {
        let (start, len) = (w[0] as usize, (w[1] - w[0]) as usize);
        if len == 0 {
            continue;
        }
        let span = (len - 1) * row_stride + d;
        let at = start * row_stride;
        if at + span > q.len().min(k.len()).min(v.len()) {
            return Err(Error::InvalidArgument(format!(
                "attention_varlen: segment at {start} of {len} tokens runs past the q/k/v rows"
            )));
        }
        segs.push((start, len));
    }
    kernels::attention_segments(q, k, v, row_stride, &segs, out, heads, hd, scale);
    Ok(())
}

/// Mean pooling per segment of the packed stream `x[tokens, dim]`:
/// `out[i, :]` is the mean of rows `cu[i] .. cu[i + 1]` (zeros for an empty
/// segment), summed in f64 so the result does not depend on the order.
/// Offsets that decrease or pass `x` are an error, never an out-of-bounds read.
pub fn segment_mean_pool(x: &[f32], cu: &[u32], out: &mut [f32], dim: usize) -> Result<()> {
    let segments = cu.len().saturating_sub(1);
    let tokens = *cu.last().unwrap_or(&0) as usize;
    if cu.first().is_some_and(|&c| c != 0) || cu.windows(2).any(|w| w[1] < w[0]) || x.len() < tokens * dim || out.len() < segments * dim {
        return Err(Error::InvalidArgument(format!("segment_mean_pool: cu_seqlens {cu:?} must rise from 0 to the {} rows of x", x.len() / dim.max(1))));
    }
    let mut acc = vec![0f64; dim];
    for (i, w) in cu.windows(2).enumerate() {
        let (start, end) = (w[0] as usize, w[1] as usize);
        acc.iter_mut().for_each(|a| *a = 0.0);
        for row in x[start * dim..end * dim].chunks_exact(dim.max(1)) {
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += v as f64;
            }
        }
        let inv = if end > start { 1.0 / (end - start) as f64 } else { 0.0 };
        for (o, a) in out[i * dim..(i + 1) * dim].iter_mut().zip(&acc) {
            *o = (a * inv) as f32;
        }
    }
    Ok(())
}
