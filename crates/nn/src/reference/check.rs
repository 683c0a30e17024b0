//! The checks `braid check` runs: every op and module on a device against
//! the f64 reference on fresh random inputs, in f32 and (where the device
//! supports it) bf16, and parallel correctness (threads sharing one model,
//! every result bitwise equal to the serial one).
//!
//! Error measure: `‖out − ref‖₂ / ‖ref‖₂` over the whole output. Tolerances:
//! f32 1e-5 for elementwise ops, 1e-4 for reductions and GEMMs; bf16 1e-2
//! (inputs are rounded to bf16 first, so the error is the device's own). A
//! NaN anywhere never passes.

use super::ops as r;
use crate::tensor::round_to;
use crate::{ops, workloads, BertConfig, BertInput, BertModel, HostWeights, LayerNorm, Linear, Mlp, MultiheadAttention, Rng, Tensor, TransformerEncoderLayer};
use braid_runtime::{Activation, DType, Device, Result};
use std::sync::Arc;

/// One check's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckResult {
    /// What was checked, e.g. `linear+gelu f32 [7x33]x[19x33]`.
    pub name: String,
    /// The largest relative error over the trials (NaN if any output was NaN).
    pub max_rel_err: f64,
    pub tol: f64,
    pub passed: bool,
    /// Why it failed without a number (an op returned an error).
    pub error: Option<String>,
}

/// `‖out − ref‖ / ‖ref‖` (the absolute norm when `ref` is zero; NaN if
/// `out` has a NaN or the lengths differ).
pub fn rel_err(out: &[f32], reference: &[f64]) -> f64 {
    if out.len() != reference.len() || out.iter().any(|v| v.is_nan()) {
        return f64::NAN;
    }
    let num: f64 = out.iter().zip(reference).map(|(&o, &r)| (o as f64 - r).powi(2)).sum::<f64>().sqrt();
    let den: f64 = reference.iter().map(|r| r * r).sum::<f64>().sqrt();
    if den == 0.0 {
        num
    } else {
        num / den
    }
}

struct Checker {
    device: Device,
    dtype: DType,
    rng: Rng,
    results: Vec<CheckResult>,
}

impl Checker {
    fn tol(&self, reduction: bool) -> f64 {
        match (self.dtype, reduction) {
            (DType::BF16 | DType::F16, _) => 1e-2,
            (DType::F32, false) => 1e-5,
            (DType::F32, true) => 1e-4,
        }
    }

    /// Random values, rounded to the dtype (so the reference sees what the device sees).
    fn rand(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        let v = self.rng.uniform_vec(n, lo, hi);
        self.round(v)
    }

    fn round(&self, v: Vec<f32>) -> Vec<f32> {
        let d = self.dtype;
        v.into_iter().map(|x| round_to(d, x)).collect()
    }

    fn up(&self, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        Tensor::from_slice_as(&self.device, data, shape, self.dtype)
    }

    fn record(&mut self, name: String, reduction: bool, run: impl FnOnce(&mut Self) -> Result<(Tensor, Vec<f64>)>) {
        let tol = self.tol(reduction);
        let name = format!("{name} {}", self.dtype.name());
        let (err, error) = match run(self).and_then(|(t, reference)| Ok((t.to_vec()?, reference))) {
            Ok((out, reference)) => (rel_err(&out, &reference), None),
            Err(e) => (f64::NAN, Some(e.to_string())),
        };
        self.results.push(CheckResult { name, max_rel_err: err, tol, passed: err < tol, error });
    }

    fn ops(&mut self) {
        let d = |v: &[f32]| -> Vec<f64> { v.iter().map(|&x| x as f64).collect() };
        for &(m, k, n) in &[(7usize, 33usize, 19usize), (64, 512, 130), (1, 384, 1536)] {
            for (act, an) in [(Activation::None, ""), (Activation::Relu, "+relu"), (Activation::GeluErf, "+gelu"), (Activation::GeluTanh, "+gelu_tanh")] {
                for bias in [true, false] {
                    let name = format!("linear{an}{} [{m}x{k}]x[{n}x{k}]ᵀ", if bias { "+bias" } else { "" });
                    self.record(name, true, |c| {
                        let x = c.rand(m * k, -1.0, 1.0);
                        let w = c.rand(n * k, -1.0, 1.0);
                        let b = c.rand(n, -1.0, 1.0);
                        let bt = if bias { Some(c.up(&b, &[n])?) } else { None };
                        let out = ops::linear(&c.up(&x, &[m, k])?, &c.up(&w, &[n, k])?, bt.as_ref(), act)?;
                        Ok((out, r::linear(&d(&x), &d(&w), bias.then(|| d(&b)).as_deref(), m, n, k, act)))
                    });
                }
            }
        }
        for n in [1usize, 1000, 4097] {
            self.record(format!("add [{n}]"), false, |c| {
                let (a, b) = (c.rand(n, -3.0, 3.0), c.rand(n, -3.0, 3.0));
                Ok((ops::add(&c.up(&a, &[n])?, &c.up(&b, &[n])?)?, r::add(&d(&a), &d(&b))))
            });
            for (act, an) in [(Activation::Relu, "relu"), (Activation::GeluErf, "gelu"), (Activation::GeluTanh, "gelu_tanh")] {
                self.record(format!("{an} [{n}]"), false, |c| {
                    let x = c.rand(n, -5.0, 5.0);
                    Ok((ops::activation(&c.up(&x, &[n])?, act)?, r::activation(&d(&x), act)))
                });
            }
        }
        for (act, an) in [(Activation::GeluErf, "gelu"), (Activation::GeluTanh, "gelu_tanh")] {
            // The negative tail, where 1 + erf / 1 + tanh cancel in a naive f32 formula.
            self.record(format!("{an} tail [-9,-2] [64]"), false, |c| {
                let x = c.rand(64, -9.0, -2.0);
                Ok((ops::activation(&c.up(&x, &[64])?, act)?, r::activation(&d(&x), act)))
            });
        }
        for &(rows, cols) in &[(3usize, 7usize), (65, 384), (2, 1000)] {
            for res in [false, true] {
                self.record(format!("layer_norm{} [{rows}x{cols}]", if res { "+residual" } else { "" }), true, |c| {
                    let x = c.rand(rows * cols, -2.0, 3.0);
                    let rr = c.rand(rows * cols, -1.0, 1.0);
                    let g = c.rand(cols, 0.5, 1.5);
                    let b = c.rand(cols, -0.5, 0.5);
                    let rt = if res { Some(c.up(&rr, &[rows, cols])?) } else { None };
                    let out = ops::layer_norm(&c.up(&x, &[rows, cols])?, rt.as_ref(), &c.up(&g, &[cols])?, &c.up(&b, &[cols])?, 1e-5)?;
                    Ok((out, r::layer_norm(&d(&x), res.then(|| d(&rr)).as_deref(), &d(&g), &d(&b), cols, 1e-5)))
                });
            }
            self.record(format!("softmax [{rows}x{cols}]"), true, |c| {
                let x = c.rand(rows * cols, -8.0, 8.0);
                Ok((ops::softmax(&c.up(&x, &[rows, cols])?)?, r::softmax(&d(&x), cols)))
            });
            self.record(format!("l2_normalize [{rows}x{cols}]"), true, |c| {
                let x = c.rand(rows * cols, -2.0, 2.0);
                Ok((ops::l2_normalize(&c.up(&x, &[rows, cols])?)?, r::l2_normalize(&d(&x), cols)))
            });
        }
        for &(b, s, h, hd) in &[(1usize, 1usize, 1usize, 4usize), (2, 9, 3, 8), (3, 64, 4, 64), (2, 130, 12, 32)] {
            for masked in [false, true] {
                self.record(format!("attention{} b{b} s{s} h{h} d{hd}", if masked { "+mask" } else { "" }), true, |c| {
                    let n = b * s * h * hd;
                    let (q, k, v) = (c.rand(n, -1.0, 1.0), c.rand(n, -1.0, 1.0), c.rand(n, -1.0, 1.0));
                    // row i keeps its first s - i*s/(b+1) keys (at least one).
                    let mask: Vec<f32> = (0..b * s).map(|i| if !masked || (i % s) < (s - (i / s) * s / (b + 1)).max(1) { 1.0 } else { 0.0 }).collect();
                    let mt = if masked { Some(Tensor::from_slice(&c.device, &mask, &[b, s])?) } else { None };
                    let sh = [b, s, h * hd];
                    let out = ops::attention(&c.up(&q, &sh)?, &c.up(&k, &sh)?, &c.up(&v, &sh)?, mt.as_ref(), h)?;
                    Ok((out, r::attention(&d(&q), &d(&k), &d(&v), masked.then(|| d(&mask)).as_deref(), b, s, h, hd)))
                });
            }
        }
        self.record("attention packed qkv b2 s17 h4 d16".into(), true, |c| {
            let (b, s, h, hd) = (2, 17, 4, 16);
            let dim = h * hd;
            let qkv = c.rand(b * s * 3 * dim, -1.0, 1.0);
            let mask: Vec<f32> = (0..b * s).map(|i| if i < s + 5 || i < s { 1.0 } else { 0.0 }).collect();
            let part = |p: usize| -> Vec<f64> { qkv.chunks(3 * dim).flat_map(|row| row[p * dim..(p + 1) * dim].iter().map(|&x| x as f64)).collect() };
            let out = ops::attention_packed(&c.up(&qkv, &[b, s, 3 * dim])?, Some(&Tensor::from_slice(&c.device, &mask, &[b, s])?), h)?;
            Ok((out, r::attention(&part(0), &part(1), &part(2), Some(&d(&mask)), b, s, h, hd)))
        });
        // The packed (varlen) stream: each segment attends to itself only
        // (tensor-core kernel for f16/bf16 on CUDA; tile edges 63/64/65).
        // Only where the device has the kernel (wgpu has not: the CLI prints
        // a SKIPPED line for it, and BERT takes the padded path there).
        let varlen: Vec<(Vec<usize>, usize, usize)> = if self.device.capabilities().varlen_attention { vec![(vec![5, 70, 1, 33], 12, 32), (vec![17, 64, 63, 65], 4, 16), (vec![130, 9], 2, 64)] } else { Vec::new() };
        for (lens, h, hd) in varlen {
            self.record(format!("attention varlen segments {lens:?} h{h} d{hd}"), true, |c| {
                let dim = h * hd;
                let t: usize = lens.iter().sum();
                let qkv = c.rand(t * 3 * dim, -1.0, 1.0);
                let mut cu = vec![0u32];
                let mut reference = Vec::with_capacity(t * dim);
                for &l in &lens {
                    let a = *cu.last().unwrap_or(&0) as usize;
                    let seg = &qkv[a * 3 * dim..(a + l) * 3 * dim];
                    let part = |p: usize| -> Vec<f64> { seg.chunks(3 * dim).flat_map(|row| row[p * dim..(p + 1) * dim].iter().map(|&x| x as f64)).collect() };
                    reference.extend(r::attention(&part(0), &part(1), &part(2), None, 1, l, h, hd));
                    cu.push((a + l) as u32);
                }
                let out = ops::attention_varlen(&c.up(&qkv, &[t, 3 * dim])?, &cu, h)?;
                Ok((out, reference))
            });
        }
        for &(b, s, h, hd) in &[(2usize, 17usize, 4usize, 16usize), (3, 40, 12, 8)] {
            self.record(format!("attention packed qkv + bias b{b} s{s} h{h} d{hd}"), true, |c| {
                let dim = h * hd;
                let qkv = c.rand(b * s * 3 * dim, -1.0, 1.0);
                let bias = c.rand(h * s * s, -2.0, 2.0);
                let mask: Vec<f32> = (0..b * s).map(|i| if i % s < s - (i / s) * 3 { 1.0 } else { 0.0 }).collect();
                let part = |p: usize| -> Vec<f64> { qkv.chunks(3 * dim).flat_map(|row| row[p * dim..(p + 1) * dim].iter().map(|&x| x as f64)).collect() };
                let bt = Tensor::from_slice(&c.device, &bias, &[h, s, s])?;
                let out = ops::attention_packed_bias(&c.up(&qkv, &[b, s, 3 * dim])?, Some(&Tensor::from_slice(&c.device, &mask, &[b, s])?), &bt, h)?;
                Ok((out, r::attention_bias(&part(0), &part(1), &part(2), Some(&d(&mask)), Some(&d(&bias)), b, s, h, hd)))
            });
        }
        for &(b, s, h, hd) in &[(2usize, 7usize, 2usize, 8usize), (3, 33, 4, 16)] {
            self.record(format!("rope_qkv b{b} s{s} h{h} d{hd}"), false, |c| {
                let dim = h * hd;
                let qkv = c.rand(b * s * 3 * dim, -1.0, 1.0);
                let ang: Vec<f64> = (0..s * hd).map(|i| (i / hd) as f64 * 0.37 * ((i % (hd / 2)) as f64 + 1.0)).collect();
                let (cos, sin): (Vec<f32>, Vec<f32>) = ang.iter().map(|a| (a.cos() as f32, a.sin() as f32)).unzip();
                let ct = Tensor::from_slice(&c.device, &cos, &[s, hd])?;
                let st = Tensor::from_slice(&c.device, &sin, &[s, hd])?;
                let out = ops::rope_qkv(&c.up(&qkv, &[b, s, 3 * dim])?, &ct, &st, h)?;
                Ok((out, r::rope_qkv(&d(&qkv), &d(&cos), &d(&sin), s, h, hd)))
            });
        }
        for &(rows, n) in &[(5usize, 7usize), (64, 96)] {
            for (name, act) in [("gelu", Activation::GeluErf), ("relu", Activation::Relu), ("silu", Activation::Silu)] {
                self.record(format!("glu {name} [{rows}x{}]", 2 * n), false, |c| {
                    let x = c.rand(rows * 2 * n, -3.0, 3.0);
                    let f = move |v: f64| r::act(v, act);
                    Ok((ops::glu(&c.up(&x, &[rows, 2 * n])?, act)?, r::glu(&d(&x), n, f)))
                });
            }
        }
        for &(rows, dim, n) in &[(10usize, 3usize, 5usize), (30522, 384, 77)] {
            self.record(format!("embedding [{rows}x{dim}] {n} ids"), false, |c| {
                let t = c.rand(rows * dim, -1.0, 1.0);
                let ids: Vec<u32> = (0..n).map(|_| c.rng.below(rows as u64) as u32).collect();
                Ok((ops::embedding(&c.up(&t, &[rows, dim])?, &ids)?, r::gather(&d(&t), &ids, dim)))
            });
        }
        for &(b, s, dim) in &[(1usize, 1usize, 3usize), (4, 33, 384)] {
            for masked in [false, true] {
                self.record(format!("mean_pool{} [{b}x{s}x{dim}]", if masked { "+mask" } else { "" }), true, |c| {
                    let x = c.rand(b * s * dim, -1.0, 1.0);
                    let mask: Vec<f32> = (0..b * s).map(|i| if !masked || (i % s) <= (i / s) * 7 { 1.0 } else { 0.0 }).collect();
                    let mt = if masked { Some(Tensor::from_slice(&c.device, &mask, &[b, s])?) } else { None };
                    Ok((ops::mean_pool(&c.up(&x, &[b, s, dim])?, mt.as_ref())?, r::mean_pool(&d(&x), masked.then(|| d(&mask)).as_deref(), b, s, dim)))
                });
            }
        }
        // Mean pooling per segment of a packed stream (empty segments give
        // zeros); where the device runs packed batches.
        let segments: Vec<(Vec<usize>, usize)> = if self.device.capabilities().varlen_attention { vec![(vec![3, 0, 1, 17], 5), (vec![70, 128, 1, 33, 256], 384)] } else { Vec::new() };
        for (lens, dim) in segments {
            self.record(format!("segment_mean_pool segments {lens:?} dim {dim}"), true, |c| {
                let t: usize = lens.iter().sum();
                let x = c.rand(t * dim, -1.0, 1.0);
                let mut cu = vec![0u32];
                let mut reference = Vec::with_capacity(lens.len() * dim);
                for &l in &lens {
                    let a = *cu.last().unwrap_or(&0) as usize;
                    reference.extend(if l == 0 { vec![0.0; dim] } else { r::mean_pool(&d(&x[a * dim..(a + l) * dim]), None, 1, l, dim) });
                    cu.push((a + l) as u32);
                }
                Ok((ops::segment_mean_pool(&c.up(&x, &[t, dim])?, &cu)?, reference))
            });
        }
    }

    /// Random weights of `w`, rounded to the dtype.
    fn rounded(&self, w: HostWeights) -> Result<HostWeights> {
        let mut out = HostWeights::new(w.origin());
        for n in w.names() {
            let t = w.get_any(n)?;
            out.insert(n, &t.shape, self.round(t.data.to_vec()))?;
        }
        Ok(out)
    }

    fn modules(&mut self) {
        let d = |v: &[f32]| -> Vec<f64> { v.iter().map(|&x| x as f64).collect() };
        let dev = self.device.clone();
        let dt = self.dtype;
        self.record("module Linear 384->1536 +gelu".into(), true, |c| {
            let w = { let seed = c.rng.next_u64(); c.rounded(workloads::mlp_weights_for(&[384, 1536], seed)?)? };
            let l = Linear::load(&w, "0", 384, 1536, true, &dev, dt)?;
            let x = c.rand(5 * 384, -1.0, 1.0);
            Ok((l.forward_act(&c.up(&x, &[5, 384])?, Activation::GeluErf)?, r::mlp(&w, "", &[384, 1536], Activation::None, &x, 5).map(|v| r::activation(&v, Activation::GeluErf))?))
        });
        self.record("module LayerNorm 384".into(), true, |c| {
            let mut w = HostWeights::new("check");
            w.insert("ln.weight", &[384], c.rand(384, 0.5, 1.5))?;
            w.insert("ln.bias", &[384], c.rand(384, -0.5, 0.5))?;
            let ln = LayerNorm::load(&w, "ln", 384, 1e-12, &dev, dt)?;
            let x = c.rand(3 * 384, -2.0, 2.0);
            let reference = r::layer_norm(&d(&x), None, &d(&w.get_any("ln.weight")?.data), &d(&w.get_any("ln.bias")?.data), 384, 1e-12);
            Ok((ln.forward(&c.up(&x, &[3, 384])?)?, reference))
        });
        self.record("module Mlp (workload mlp, batch 8)".into(), true, |c| {
            let w = c.rounded(workloads::mlp_weights()?)?;
            let m = Mlp::load(&w, "", &workloads::MLP_DIMS, Activation::Relu, &dev, dt)?;
            let x = { let seed = c.rng.next_u64(); c.round(workloads::mlp_input(8, seed)) };
            Ok((m.forward(&c.up(&x, &[8, 512])?)?, r::mlp(&w, "", &workloads::MLP_DIMS, Activation::Relu, &x, 8)?))
        });
        let (dim, heads, ff, s, b) = (workloads::ENCODER_DIM, workloads::ENCODER_HEADS, workloads::ENCODER_FF, workloads::ENCODER_SEQ, 2);
        self.record(format!("module MultiheadAttention d{dim} h{heads} b{b} s{s} +mask"), true, |c| {
            let w = { let seed = c.rng.next_u64(); c.rounded(workloads::encoder_weights_for(dim, ff, seed, true)?)? };
            let mha = MultiheadAttention::load(&w, "self_attn", dim, heads, &dev, dt)?;
            let x = c.rand(b * s * dim, -1.0, 1.0);
            let mask: Vec<f32> = (0..b * s).map(|i| if i < s + 40 { 1.0 } else { 0.0 }).collect();
            let out = mha.forward(&c.up(&x, &[b, s, dim])?, Some(&Tensor::from_slice(&dev, &mask, &[b, s])?))?;
            let ipw = d(&w.get_any("self_attn.in_proj_weight")?.data);
            let ipb = d(&w.get_any("self_attn.in_proj_bias")?.data);
            let xd = d(&x);
            let p = |i: usize| r::linear(&xd, &ipw[i * dim * dim..(i + 1) * dim * dim], Some(&ipb[i * dim..(i + 1) * dim]), b * s, dim, dim, Activation::None);
            let a = r::attention(&p(0), &p(1), &p(2), Some(&d(&mask)), b, s, heads, dim / heads);
            let reference = r::linear(&a, &d(&w.get_any("self_attn.out_proj.weight")?.data), Some(&d(&w.get_any("self_attn.out_proj.bias")?.data)), b * s, dim, dim, Activation::None);
            Ok((out, reference))
        });
        self.record(format!("module TransformerEncoderLayer (workload encoder, random norms) b{b} s{s} +mask"), true, |c| {
            let w = { let seed = c.rng.next_u64(); c.rounded(workloads::encoder_weights_for(dim, ff, seed, true)?)? };
            let layer = TransformerEncoderLayer::load(&w, "", dim, heads, ff, Activation::Relu, 1e-5, &dev, dt)?;
            let x = { let seed = c.rng.next_u64(); c.round(workloads::encoder_input(b, seed)) };
            let mask: Vec<f32> = (0..b * s).map(|i| if i < s + 21 { 1.0 } else { 0.0 }).collect();
            let out = layer.forward(&c.up(&x, &[b, s, dim])?, Some(&Tensor::from_slice(&dev, &mask, &[b, s])?))?;
            Ok((out, r::encoder_layer(&w, "", dim, heads, ff, Activation::Relu, 1e-5, &d(&x), Some(&d(&mask)), b, s)?))
        });
        self.record("module BertModel (tiny random, 2 layers, gelu) embeddings".into(), true, |c| {
            let (w, config) = tiny_bert(&mut c.rng)?;
            let w = c.rounded(w)?;
            let model = BertModel::load(&w, &config, &dev, dt)?;
            let rows: Vec<Vec<u32>> = [9usize, 3, 14].iter().map(|&n| (0..n).map(|_| c.rng.below(config.vocab_size as u64) as u32).collect()).collect();
            let input = BertInput::from_rows(&rows, 0);
            Ok((model.embed(&input)?, r::bert_embed(&w, &config, &input)?))
        });
    }
}

/// A small random BERT (HF names) and its config, for checks and tests.
pub fn tiny_bert(rng: &mut Rng) -> Result<(HostWeights, BertConfig)> {
    let config = BertConfig {
        vocab_size: 50,
        hidden_size: 32,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 64,
        hidden_act: "gelu".into(),
        max_position_embeddings: 40,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
        model_type: "bert".into(),
        pad_token_id: Some(0),
    };
    let (d, ff) = (config.hidden_size, config.intermediate_size);
    let mut w = HostWeights::new("tiny bert");
    w.insert("embeddings.word_embeddings.weight", &[config.vocab_size, d], rng.normal_vec(config.vocab_size * d, 0.5))?;
    w.insert("embeddings.position_embeddings.weight", &[config.max_position_embeddings, d], rng.normal_vec(config.max_position_embeddings * d, 0.5))?;
    w.insert("embeddings.token_type_embeddings.weight", &[2, d], rng.normal_vec(2 * d, 0.5))?;
    let ln = |w: &mut HostWeights, p: &str, rng: &mut Rng| -> Result<()> {
        w.insert(format!("{p}.weight"), &[d], rng.uniform_vec(d, 0.5, 1.5))?;
        w.insert(format!("{p}.bias"), &[d], rng.uniform_vec(d, -0.3, 0.3))
    };
    ln(&mut w, "embeddings.LayerNorm", rng)?;
    for i in 0..config.num_hidden_layers {
        let p = format!("encoder.layer.{i}");
        for n in ["query", "key", "value"] {
            workloads::init_linear(&mut w, rng, &format!("{p}.attention.self.{n}"), d, d)?;
        }
        workloads::init_linear(&mut w, rng, &format!("{p}.attention.output.dense"), d, d)?;
        ln(&mut w, &format!("{p}.attention.output.LayerNorm"), rng)?;
        workloads::init_linear(&mut w, rng, &format!("{p}.intermediate.dense"), d, ff)?;
        workloads::init_linear(&mut w, rng, &format!("{p}.output.dense"), ff, d)?;
        ln(&mut w, &format!("{p}.output.LayerNorm"), rng)?;
    }
    Ok((w, config))
}

fn fresh_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0x5eed)
}

/// Every op and module on `device` against the f64 reference, on fresh
/// random inputs: f32, and bf16 where the device supports it.
pub fn check(device: &Device) -> Result<Vec<CheckResult>> {
    check_seeded(device, fresh_seed())
}

/// As [`check`] with a given seed (to reproduce a failure).
pub fn check_seeded(device: &Device, seed: u64) -> Result<Vec<CheckResult>> {
    let mut results = Vec::new();
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        if !device.supports(dtype) {
            continue;
        }
        let mut c = Checker { device: device.clone(), dtype, rng: Rng::new(seed), results: Vec::new() };
        c.ops();
        c.modules();
        results.append(&mut c.results);
    }
    Ok(results)
}

/// Parallel correctness of the built-in workloads: `threads` threads share
/// one `Arc` model, each running `iters` forwards on its own input; every
/// result must be bitwise equal to the serial result for that input.
pub fn check_parallel(device: &Device, threads: usize, iters: usize) -> Result<Vec<CheckResult>> {
    let mlp = Arc::new(workloads::mlp(device)?);
    let enc = Arc::new(workloads::encoder(device)?);
    let mlp_r = parallel_equal(device, threads, iters, |dev, t| workloads::mlp_input_tensor(dev, 1 + t % 4, t as u64), {
        let m = mlp.clone();
        move |x| m.forward(x)
    })?;
    let enc_r = parallel_equal(device, threads, iters, |dev, t| workloads::encoder_input_tensor(dev, 1 + t % 2, t as u64), {
        let e = enc.clone();
        move |x| e.forward(x, None)
    })?;
    Ok(vec![
        CheckResult { name: format!("parallel mlp: {threads} threads x {iters} forwards == serial"), ..mlp_r },
        CheckResult { name: format!("parallel encoder: {threads} threads x {iters} forwards == serial"), ..enc_r },
    ])
}

/// Run `forward` serially once per thread's input, then from `threads`
/// threads `iters` times each, comparing bitwise.
pub fn parallel_equal<I, F>(device: &Device, threads: usize, iters: usize, input: I, forward: F) -> Result<CheckResult>
where
    I: Fn(&Device, usize) -> Result<Tensor> + Sync,
    F: Fn(&Tensor) -> Result<Tensor> + Sync,
{
    let serial: Vec<Vec<f32>> = (0..threads).map(|t| forward(&input(device, t)?)?.to_vec()).collect::<Result<_>>()?;
    let outcomes: Vec<Result<(usize, f64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (input, forward, serial) = (&input, &forward, &serial);
                s.spawn(move || -> Result<(usize, f64)> {
                    let x = input(device, t)?;
                    let mut mismatches = 0;
                    let mut worst = 0.0f64;
                    for _ in 0..iters {
                        let y = forward(&x)?.to_vec()?;
                        if y.iter().map(|v| v.to_bits()).ne(serial[t].iter().map(|v| v.to_bits())) {
                            mismatches += 1;
                            let r: Vec<f64> = serial[t].iter().map(|&v| v as f64).collect();
                            worst = worst.max(rel_err(&y, &r));
                        }
                    }
                    Ok((mismatches, worst))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|p| Err(braid_runtime::Error::JobPanicked(braid_runtime::panic_message(&p))))).collect()
    });
    let mut mismatches = 0;
    let mut worst = 0.0f64;
    let mut error = None;
    for o in outcomes {
        match o {
            Ok((m, w)) => {
                mismatches += m;
                worst = if w.is_nan() { f64::NAN } else { worst.max(w) };
            }
            Err(e) => error = Some(e.to_string()),
        }
    }
    let passed = mismatches == 0 && error.is_none();
    let error = error.or_else(|| (mismatches > 0).then(|| format!("{mismatches} results differ from the serial result")));
    Ok(CheckResult { name: String::new(), max_rel_err: worst, tol: 0.0, passed, error })
}
