//! The CPU backend's kernels: plain functions over f32 slices, run on a
//! stream's executor thread. Owns the CPU arithmetic of every op; the GEMM is
//! `matrixmultiply`'s packed SGEMM, the rest are straightforward loops.

use crate::backend::Activation;

const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// erf with max abs error ~1.2e-7 (W. J. Cody's rational approximations via
/// `libm`-quality formula from Numerical Recipes' erfc, refined in f64).
pub fn erf(x: f32) -> f32 {
    erf64(x as f64) as f32
}

/// erf in f64 (Numerical Recipes `erfc` Chebyshev fit, |rel err| < 1.2e-7).
pub fn erf64(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t * (-z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
        .exp();
    if x >= 0.0 {
        1.0 - r
    } else {
        r - 1.0
    }
}

#[inline]
pub fn act(x: f32, a: Activation) -> f32 {
    match a {
        Activation::None => x,
        Activation::Relu => x.max(0.0),
        // In f64: for x << 0, 1 + erf(x/√2) cancels to a few f32 ulps of 1
        // and the result would lose all relative precision (PyTorch's f32
        // formula has the same flaw; erfc avoids it).
        Activation::GeluErf => (0.5 * x as f64 * (1.0 + erf64(x as f64 * std::f64::consts::FRAC_1_SQRT_2))) as f32,
        // 0.5·x·(1 + tanh(u)) = x / (1 + e^(-2u)): same value, no cancellation for x << 0.
        Activation::GeluTanh => x / (1.0 + (-2.0 * SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)).exp()),
        Activation::Silu => x / (1.0 + (-x).exp()),
    }
}

/// `out[m,n] = act(a[m,k] · w[n,k]ᵀ + bias)`.
pub fn gemm(m: usize, n: usize, k: usize, a: &[f32], w: &[f32], bias: Option<&[f32]>, out: &mut [f32], activation: Activation) {
    debug_assert!(a.len() >= m * k && w.len() >= n * k && out.len() >= m * n);
    let beta = if let Some(b) = bias {
        for row in out.chunks_exact_mut(n).take(m) {
            row.copy_from_slice(&b[..n]);
        }
        1.0
    } else {
        0.0
    };
    if m > 0 && n > 0 {
        // SAFETY: the slices cover a[m*k], w[n*k], out[m*n] (checked above in
        // debug, guaranteed by the callers' descriptors); strides describe
        // row-major a (k,1), wᵀ (1,k) and out (n,1), all in bounds.
        unsafe {
            matrixmultiply::sgemm(
                m, k, n, 1.0,
                a.as_ptr(), k as isize, 1,
                w.as_ptr(), 1, k as isize,
                beta,
                out.as_mut_ptr(), n as isize, 1,
            );
        }
    }
    if activation != Activation::None {
        for v in &mut out[..m * n] {
            *v = act(*v, activation);
        }
    }
}

pub fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = x + y;
    }
}

pub fn activation(x: &[f32], out: &mut [f32], a: Activation) {
    for (o, v) in out.iter_mut().zip(x) {
        *o = act(*v, a);
    }
}

/// See [`crate::backend::BackendStream::glu`].
pub fn glu(x: &[f32], out: &mut [f32], cols: usize, a: Activation) {
    for (o, row) in out.chunks_mut(cols).zip(x.chunks(2 * cols)) {
        for (i, ov) in o.iter_mut().enumerate() {
            *ov = act(row[i], a) * row[cols + i];
        }
    }
}

/// See [`crate::backend::Rope`].
#[allow(clippy::too_many_arguments)]
pub fn rope_qkv(x: &[f32], out: &mut [f32], cos: &[f32], sin: &[f32], seq: usize, heads: usize, hd: usize) {
    let d = heads * hd;
    let half = hd / 2;
    for (r, (o, row)) in out.chunks_mut(3 * d).zip(x.chunks(3 * d)).enumerate() {
        let pos = r % seq;
        let (c, s) = (&cos[pos * hd..][..hd], &sin[pos * hd..][..hd]);
        for base in (0..2 * heads).map(|h| h * hd) {
            for e in 0..hd {
                let rot = if e < half { -row[base + e + half] } else { row[base + e - half] };
                o[base + e] = row[base + e] * c[e] + rot * s[e];
            }
        }
        o[2 * d..].copy_from_slice(&row[2 * d..]);
    }
}

/// LayerNorm over rows of `cols`, of `x + residual` when a residual is given.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm(x: &[f32], residual: Option<&[f32]>, gamma: &[f32], beta: &[f32], out: &mut [f32], rows: usize, cols: usize, eps: f32) {
    let mut tmp = vec![0f32; cols];
    for r in 0..rows {
        let xr = &x[r * cols..(r + 1) * cols];
        match residual {
            Some(res) => {
                for ((t, a), b) in tmp.iter_mut().zip(xr).zip(&res[r * cols..(r + 1) * cols]) {
                    *t = a + b;
                }
            }
            None => tmp.copy_from_slice(xr),
        }
        let mean = tmp.iter().map(|&v| v as f64).sum::<f64>() / cols as f64;
        let var = tmp.iter().map(|&v| (v as f64 - mean) * (v as f64 - mean)).sum::<f64>() / cols as f64;
        let inv = 1.0 / (var + eps as f64).sqrt();
        let o = &mut out[r * cols..(r + 1) * cols];
        for c in 0..cols {
            o[c] = ((tmp[c] as f64 - mean) * inv) as f32 * gamma[c] + beta[c];
        }
    }
}

pub fn softmax(x: &[f32], out: &mut [f32], rows: usize, cols: usize) {
    for r in 0..rows {
        let xr = &x[r * cols..(r + 1) * cols];
        let o = &mut out[r * cols..(r + 1) * cols];
        softmax_row(xr, o);
    }
}

fn softmax_row(x: &[f32], o: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        // every entry masked: define the result as uniform zeros
        o.iter_mut().for_each(|v| *v = 0.0);
        return;
    }
    let mut sum = 0f32;
    for (ov, &xv) in o.iter_mut().zip(x) {
        *ov = (xv - max).exp();
        sum += *ov;
    }
    let inv = 1.0 / sum;
    o.iter_mut().for_each(|v| *v *= inv);
}

/// See [`crate::backend::Attention`] for the layout.
#[allow(clippy::too_many_arguments)]
pub fn attention(q: &[f32], k: &[f32], v: &[f32], row_stride: usize, mask: Option<&[f32]>, out: &mut [f32], batch: usize, seq: usize, heads: usize, hd: usize, scale: f32) {
    attention_bias(q, k, v, row_stride, mask, None, out, batch, seq, heads, hd, scale)
}

/// [`attention`] with an optional additive `bias` `[heads, seq, seq]`
/// (shared by the batch) on the scaled scores.
#[allow(clippy::too_many_arguments)]
pub fn attention_bias(q: &[f32], k: &[f32], v: &[f32], row_stride: usize, mask: Option<&[f32]>, bias: Option<&[f32]>, out: &mut [f32], batch: usize, seq: usize, heads: usize, hd: usize, scale: f32) {
    let d = heads * hd;
    let mut scores = vec![0f32; seq];
    let mut probs = vec![0f32; seq];
    for b in 0..batch {
        for h in 0..heads {
            for i in 0..seq {
                let qi = &q[(b * seq + i) * row_stride + h * hd..][..hd];
                for j in 0..seq {
                    let masked = mask.is_some_and(|m| m[b * seq + j] == 0.0);
                    scores[j] = if masked {
                        f32::NEG_INFINITY
                    } else {
                        let kj = &k[(b * seq + j) * row_stride + h * hd..][..hd];
                        let s = qi.iter().zip(kj).map(|(a, c)| a * c).sum::<f32>() * scale;
                        match bias {
                            Some(bb) => s + bb[(h * seq + i) * seq + j],
                            None => s,
                        }
                    };
                }
                softmax_row(&scores, &mut probs);
                let o = &mut out[(b * seq + i) * d + h * hd..][..hd];
                o.iter_mut().for_each(|x| *x = 0.0);
                for j in 0..seq {
                    let p = probs[j];
                    if p != 0.0 {
                        let vj = &v[(b * seq + j) * row_stride + h * hd..][..hd];
                        for (ov, vv) in o.iter_mut().zip(vj) {
                            *ov += p * vv;
                        }
                    }
                }
            }
        }
    }
}

pub fn gather(table: &[f32], ids: &[u32], out: &mut [f32], dim: usize) {
    for (i, &id) in ids.iter().enumerate() {
        let id = id as usize;
        out[i * dim..(i + 1) * dim].copy_from_slice(&table[id * dim..(id + 1) * dim]);
    }
}

pub fn mean_pool(x: &[f32], mask: Option<&[f32]>, out: &mut [f32], batch: usize, seq: usize, dim: usize) {
    for b in 0..batch {
        let o = &mut out[b * dim..(b + 1) * dim];
        o.iter_mut().for_each(|v| *v = 0.0);
        let mut count = 0f32;
        for s in 0..seq {
            let w = mask.map_or(1.0, |m| m[b * seq + s]);
            if w != 0.0 {
                count += w;
                let xr = &x[(b * seq + s) * dim..][..dim];
                for (ov, xv) in o.iter_mut().zip(xr) {
                    *ov += w * xv;
                }
            }
        }
        let inv = 1.0 / count.max(1e-9);
        o.iter_mut().for_each(|v| *v *= inv);
    }
}

pub fn l2_normalize(x: &[f32], out: &mut [f32], rows: usize, cols: usize) {
    for r in 0..rows {
        let xr = &x[r * cols..(r + 1) * cols];
        let norm = xr.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>().sqrt().max(1e-12);
        let inv = (1.0 / norm) as f32;
        for (o, v) in out[r * cols..(r + 1) * cols].iter_mut().zip(xr) {
            *o = v * inv;
        }
    }
}
