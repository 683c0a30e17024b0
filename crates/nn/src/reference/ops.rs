//! f64 reference ops and modules (see `reference/mod.rs`).

use crate::{BertConfig, BertInput, HostWeights};
use braid_runtime::{Activation, Result};

/// erf in f64 to ~1e-15: Taylor series for |x| < 3, continued fraction for erfc beyond.
pub fn erf(x: f64) -> f64 {
    let z = x.abs();
    let r = if z < 3.0 {
        let mut term = z;
        let mut sum = z;
        let mut n = 0.0;
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= -z * z / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc(z) = exp(-z²)/√π · 1/(z + (1/2)/(z + 1/(z + (3/2)/(z + ...))))
        let mut f = z;
        for k in (1..80).rev() {
            f = z + (k as f64 / 2.0) / f;
        }
        1.0 - (-z * z).exp() / std::f64::consts::PI.sqrt() / f
    };
    if x < 0.0 {
        -r
    } else {
        r
    }
}

pub fn act(x: f64, a: Activation) -> f64 {
    match a {
        Activation::None => x,
        Activation::Relu => x.max(0.0),
        Activation::GeluErf => 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2)),
        Activation::GeluTanh => 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh()),
        Activation::Silu => x / (1.0 + (-x).exp()),
    }
}

fn f(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// `act(x[m,k] · w[n,k]ᵀ + b[n])`.
pub fn linear(x: &[f64], w: &[f64], b: Option<&[f64]>, m: usize, n: usize, k: usize, a: Activation) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = b.map_or(0.0, |b| b[j]);
            for p in 0..k {
                s += x[i * k + p] * w[j * k + p];
            }
            out[i * n + j] = act(s, a);
        }
    }
    out
}

pub fn add(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

pub fn activation(x: &[f64], a: Activation) -> Vec<f64> {
    x.iter().map(|&v| act(v, a)).collect()
}

/// LayerNorm of `x (+ residual)` over rows of `cols`.
pub fn layer_norm(x: &[f64], residual: Option<&[f64]>, g: &[f64], b: &[f64], cols: usize, eps: f64) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for (r, row) in x.chunks(cols).enumerate() {
        let v: Vec<f64> = match residual {
            Some(res) => row.iter().zip(&res[r * cols..]).map(|(a, b)| a + b).collect(),
            None => row.to_vec(),
        };
        let mean = v.iter().sum::<f64>() / cols as f64;
        let var = v.iter().map(|t| (t - mean) * (t - mean)).sum::<f64>() / cols as f64;
        let inv = 1.0 / (var + eps).sqrt();
        out.extend(v.iter().enumerate().map(|(c, t)| (t - mean) * inv * g[c] + b[c]));
    }
    out
}

pub fn softmax(x: &[f64], cols: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(cols) {
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if max == f64::NEG_INFINITY {
            out.extend(std::iter::repeat_n(0.0, cols));
            continue;
        }
        let e: Vec<f64> = row.iter().map(|v| (v - max).exp()).collect();
        let s: f64 = e.iter().sum();
        out.extend(e.iter().map(|v| v / s));
    }
    out
}

/// Attention over dense `q`, `k`, `v` `[b, s, h*hd]`, mask `[b, s]` (0 = padding key).
pub fn attention(q: &[f64], k: &[f64], v: &[f64], mask: Option<&[f64]>, b: usize, s: usize, h: usize, hd: usize) -> Vec<f64> {
    attention_bias(q, k, v, mask, None, b, s, h, hd)
}

/// [`attention`] with `bias` `[h, s, s]` (shared by the batch) added to the scaled scores.
#[allow(clippy::too_many_arguments)]
pub fn attention_bias(q: &[f64], k: &[f64], v: &[f64], mask: Option<&[f64]>, bias: Option<&[f64]>, b: usize, s: usize, h: usize, hd: usize) -> Vec<f64> {
    let d = h * hd;
    let scale = 1.0 / (hd as f64).sqrt();
    let mut out = vec![0.0; b * s * d];
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..s {
                let scores: Vec<f64> = (0..s)
                    .map(|j| {
                        if mask.is_some_and(|m| m[bi * s + j] == 0.0) {
                            f64::NEG_INFINITY
                        } else {
                            (0..hd).map(|c| q[(bi * s + i) * d + hi * hd + c] * k[(bi * s + j) * d + hi * hd + c]).sum::<f64>() * scale + bias.map_or(0.0, |bb| bb[(hi * s + i) * s + j])
                        }
                    })
                    .collect();
                let p = softmax(&scores, s);
                for c in 0..hd {
                    out[(bi * s + i) * d + hi * hd + c] = (0..s).map(|j| p[j] * v[(bi * s + j) * d + hi * hd + c]).sum();
                }
            }
        }
    }
    out
}

pub fn gather(table: &[f64], ids: &[u32], dim: usize) -> Vec<f64> {
    ids.iter().flat_map(|&i| table[i as usize * dim..(i as usize + 1) * dim].iter().copied()).collect()
}

pub fn mean_pool(x: &[f64], mask: Option<&[f64]>, b: usize, s: usize, d: usize) -> Vec<f64> {
    let mut out = vec![0.0; b * d];
    for bi in 0..b {
        let mut count = 0.0;
        for si in 0..s {
            let w = mask.map_or(1.0, |m| m[bi * s + si]);
            count += w;
            for c in 0..d {
                out[bi * d + c] += w * x[(bi * s + si) * d + c];
            }
        }
        for c in 0..d {
            out[bi * d + c] /= count.max(1e-9);
        }
    }
    out
}

pub fn l2_normalize(x: &[f64], cols: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(cols) {
        let n = row.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
        out.extend(row.iter().map(|v| v / n));
    }
    out
}

fn get(w: &HostWeights, name: &str, shape: &[usize]) -> Result<Vec<f64>> {
    Ok(f(&w.get(name, shape)?.data))
}

fn pre(prefix: &str, name: &str) -> String {
    crate::modules::join(prefix, name)
}

/// An MLP (PyTorch `Sequential` names) on `x` `[m, dims[0]]`.
pub fn mlp(w: &HostWeights, prefix: &str, dims: &[usize], a: Activation, x: &[f32], m: usize) -> Result<Vec<f64>> {
    let mut h = f(x);
    let last = dims.len() - 2;
    for (i, d) in dims.windows(2).enumerate() {
        let p = pre(prefix, &(2 * i).to_string());
        let wt = get(w, &pre(&p, "weight"), &[d[1], d[0]])?;
        let b = get(w, &pre(&p, "bias"), &[d[1]])?;
        h = linear(&h, &wt, Some(&b), m, d[1], d[0], if i == last { Activation::None } else { a });
    }
    Ok(h)
}

/// A post-norm TransformerEncoderLayer (PyTorch names) on `x` `[b, s, dim]`.
#[allow(clippy::too_many_arguments)]
pub fn encoder_layer(w: &HostWeights, prefix: &str, dim: usize, heads: usize, ff: usize, a: Activation, eps: f64, x: &[f64], mask: Option<&[f64]>, b: usize, s: usize) -> Result<Vec<f64>> {
    let m = b * s;
    let ipw = get(w, &pre(prefix, "self_attn.in_proj_weight"), &[3 * dim, dim])?;
    let ipb = get(w, &pre(prefix, "self_attn.in_proj_bias"), &[3 * dim])?;
    let proj = |i: usize| linear(x, &ipw[i * dim * dim..(i + 1) * dim * dim], Some(&ipb[i * dim..(i + 1) * dim]), m, dim, dim, Activation::None);
    let (q, k, v) = (proj(0), proj(1), proj(2));
    let att = attention(&q, &k, &v, mask, b, s, heads, dim / heads);
    let lin = |name: &str, x: &[f64], n: usize, kk: usize, a: Activation| -> Result<Vec<f64>> {
        Ok(linear(x, &get(w, &pre(prefix, &format!("{name}.weight")), &[n, kk])?, Some(&get(w, &pre(prefix, &format!("{name}.bias")), &[n])?), m, n, kk, a))
    };
    let ln = |name: &str, x: &[f64], r: &[f64]| -> Result<Vec<f64>> {
        Ok(layer_norm(x, Some(r), &get(w, &pre(prefix, &format!("{name}.weight")), &[dim])?, &get(w, &pre(prefix, &format!("{name}.bias")), &[dim])?, dim, eps))
    };
    let o = lin("self_attn.out_proj", &att, dim, dim, Activation::None)?;
    let h = ln("norm1", &o, x)?;
    let f1 = lin("linear1", &h, ff, dim, a)?;
    let f2 = lin("linear2", &f1, dim, ff, Activation::None)?;
    ln("norm2", &f2, &h)
}

/// BERT sentence embeddings (HF names; mean pooling, L2 normalised) `[batch, hidden]`.
pub fn bert_embed(w: &HostWeights, c: &BertConfig, input: &BertInput) -> Result<Vec<f64>> {
    let (b, s, d) = (input.batch, input.seq, c.hidden_size);
    let eps = c.layer_norm_eps;
    let word = gather(&get(w, "embeddings.word_embeddings.weight", &[c.vocab_size, d])?, &input.ids, d);
    let pos_ids: Vec<u32> = (0..b).flat_map(|_| 0..s as u32).collect();
    let pos = gather(&get(w, "embeddings.position_embeddings.weight", &[c.max_position_embeddings, d])?, &pos_ids, d);
    let typ = gather(&get(w, "embeddings.token_type_embeddings.weight", &[c.type_vocab_size, d])?, &input.type_ids, d);
    let e = add(&add(&word, &pos), &typ);
    let mut h = layer_norm(&e, None, &get(w, "embeddings.LayerNorm.weight", &[d])?, &get(w, "embeddings.LayerNorm.bias", &[d])?, d, eps);
    let mask = f(&input.mask);
    for i in 0..c.num_hidden_layers {
        // Rename the HF layer into PyTorch's encoder-layer names.
        let p = format!("encoder.layer.{i}");
        let mut lw = HostWeights::new(w.origin());
        let cat = |s: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let mut v = Vec::new();
            for n in ["query", "key", "value"] {
                v.extend_from_slice(&w.get(&format!("{p}.attention.self.{n}.{s}"), shape)?.data);
            }
            Ok(v)
        };
        lw.insert("self_attn.in_proj_weight", &[3 * d, d], cat("weight", &[d, d])?)?;
        lw.insert("self_attn.in_proj_bias", &[3 * d], cat("bias", &[d])?)?;
        for (to, from) in [
            ("self_attn.out_proj", "attention.output.dense"),
            ("norm1", "attention.output.LayerNorm"),
            ("linear1", "intermediate.dense"),
            ("linear2", "output.dense"),
            ("norm2", "output.LayerNorm"),
        ] {
            for s in ["weight", "bias"] {
                let name = format!("{p}.{from}.{s}");
                let shape = w.get_any(&name)?.shape;
                lw.alias(format!("{to}.{s}"), w, &name, &shape)?;
            }
        }
        h = encoder_layer(&lw, "", d, c.num_attention_heads, c.intermediate_size, c.activation()?, eps, &h, Some(&mask), b, s)?;
    }
    Ok(l2_normalize(&mean_pool(&h, Some(&mask), b, s, d), d))
}


/// GLU: `act(x[:, :n]) * x[:, n:]` per row of `2n`.
pub fn glu(x: &[f64], n: usize, act: impl Fn(f64) -> f64) -> Vec<f64> {
    x.chunks(2 * n).flat_map(|r| (0..n).map(|i| act(r[i]) * r[n + i]).collect::<Vec<_>>()).collect()
}

/// Rotary embedding (rotate-half) of q and k in packed rows `[rows, 3*h*hd]`.
pub fn rope_qkv(x: &[f64], cos: &[f64], sin: &[f64], seq: usize, h: usize, hd: usize) -> Vec<f64> {
    let d = h * hd;
    let half = hd / 2;
    let mut out = x.to_vec();
    for (r, row) in x.chunks(3 * d).enumerate() {
        let pos = r % seq;
        for part in 0..2 * h {
            for e in 0..hd {
                let i = part * hd + e;
                let rot = if e < half { -row[i + half] } else { row[i - half] };
                out[r * 3 * d + i] = row[i] * cos[pos * hd + e] + rot * sin[pos * hd + e];
            }
        }
    }
    out
}
