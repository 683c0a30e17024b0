//! Tests of the CUDA backend: every kernel against a CPU float64 reference on
//! fresh random inputs with odd sizes, in f32 and bf16; out-of-memory; graph
//! capture and replay; events and cross-stream waits; the kernel cache under
//! concurrency. Without a GPU each test prints `SKIPPED (no CUDA device: ...)`
//! to stderr and returns.

use super::*;
use crate::backend::{Activation, Attention, BufSlice, Kernels, BufferId, Gather, Gemm, LayerNorm, MeanPool, VarlenAttention};

/// Test operands are whole allocations or ranges of them.
type DevicePtr = BufSlice;

/// `s` from `off` bytes on.
fn at(s: BufSlice, off: usize) -> BufSlice {
    s.sub(off, s.len - off).unwrap()
}

/// A raw allocation of the backend as an operand.
fn alloc(be: &CudaBackend, bytes: usize) -> BufSlice {
    BufSlice::whole(be.alloc(bytes).unwrap(), bytes)
}
use std::time::{SystemTime, UNIX_EPOCH};

/// The device, or `None` after printing why the test is skipped.
fn gpu(test: &str) -> Option<Arc<CudaBackend>> {
    match try_new(0) {
        Ok(b) => Some(b),
        Err(Error::Unavailable { reason, .. }) => {
            eprintln!("{test}: SKIPPED (no CUDA device: {reason})");
            None
        }
        Err(e) => panic!("{test}: CUDA present but failed to open: {e}"),
    }
}

/// splitmix64, seeded from the clock so every run draws fresh inputs.
struct Rng(u64);
impl Rng {
    fn new(test: &str) -> Rng {
        let seed = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
        eprintln!("{test}: seed {seed:#x}");
        Rng(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    fn f(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f() * scale).collect()
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn to_bf16(v: f32) -> u16 {
    let u = v.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 0x40) as u16;
    }
    ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
}
fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}
/// Round through bf16 (what a bf16 input really holds).
fn rb(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| from_bf16(to_bf16(x))).collect()
}

/// Device buffers of one test, freed at the end.
struct Mem {
    be: Arc<CudaBackend>,
    s: Arc<dyn BackendStream>,
    bufs: Vec<(DevicePtr, usize)>,
}

impl Mem {
    fn new(be: &Arc<CudaBackend>) -> Mem {
        Mem { be: be.clone(), s: be.new_stream().unwrap(), bufs: Vec::new() }
    }
    fn raw(&mut self, bytes: usize) -> DevicePtr {
        let p = alloc(&self.be, bytes);
        self.bufs.push((p, bytes));
        p
    }
    fn bytes(&mut self, b: &[u8]) -> DevicePtr {
        let p = self.raw(b.len());
        // SAFETY: `p` holds b.len() bytes.
        unsafe { self.s.h2d(b, p).unwrap() };
        p
    }
    /// Upload as `dtype`.
    fn up(&mut self, v: &[f32], dtype: DType) -> DevicePtr {
        match dtype {
            DType::F32 => self.bytes(&v.iter().flat_map(|x| x.to_ne_bytes()).collect::<Vec<_>>()),
            DType::BF16 => self.bytes(&v.iter().flat_map(|x| to_bf16(*x).to_ne_bytes()).collect::<Vec<_>>()),
            DType::F16 => self.bytes(&v.iter().flat_map(|x| half::f16::from_f32(*x).to_bits().to_ne_bytes()).collect::<Vec<_>>()),
        }
    }
    /// An output buffer of `n` elements poisoned with NaN, so an element the
    /// kernel fails to write shows up as NaN.
    fn out(&mut self, n: usize, dtype: DType) -> DevicePtr {
        self.up(&vec![f32::NAN; n], dtype)
    }
    fn down(&self, p: DevicePtr, n: usize, dtype: DType) -> Vec<f32> {
        let mut b = vec![0u8; n * dtype.size()];
        // SAFETY: `p` holds n elements of `dtype`.
        unsafe { self.s.d2h(p, &mut b).unwrap() };
        match dtype {
            DType::F32 => b.chunks_exact(4).map(|c| f32::from_ne_bytes(c.try_into().unwrap())).collect(),
            DType::BF16 => b.chunks_exact(2).map(|c| from_bf16(u16::from_ne_bytes(c.try_into().unwrap()))).collect(),
            DType::F16 => b.chunks_exact(2).map(|c| half::f16::from_bits(u16::from_ne_bytes(c.try_into().unwrap())).to_f32()).collect(),
        }
    }
}

impl Drop for Mem {
    fn drop(&mut self) {
        let _ = self.s.synchronize();
        for &(p, n) in &self.bufs {
            // SAFETY: allocated by `raw`, freed once, stream synchronized.
            unsafe { self.be.free(p.buffer, n) };
        }
    }
}

/// ‖out − ref‖ / ‖ref‖; any non-finite output is an infinite error.
fn rel_err(out: &[f32], r: &[f64]) -> f64 {
    assert_eq!(out.len(), r.len());
    if out.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let num: f64 = out.iter().zip(r).map(|(&o, &x)| (o as f64 - x).powi(2)).sum();
    let den: f64 = r.iter().map(|x| x * x).sum();
    if den == 0.0 {
        return num.sqrt();
    }
    (num / den).sqrt()
}

fn check(name: &str, out: &[f32], r: &[f64], tol: f64) -> f64 {
    let e = rel_err(out, r);
    eprintln!("CHECK {name}: max_rel_err {e:.3e} (tol {tol:.0e})");
    assert!(e < tol, "{name}: rel err {e:e} >= {tol:e}");
    e
}

fn tol(dtype: DType, f32_tol: f64) -> f64 {
    if dtype.is_half() {
        1e-2
    } else {
        f32_tol
    }
}

/// Inputs as the kernel sees them (rounded to bf16 for bf16 runs).
fn input(v: Vec<f32>, dtype: DType) -> Vec<f32> {
    match dtype {
        DType::BF16 => rb(&v),
        DType::F16 => v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect(),
        DType::F32 => v,
    }
}

fn act64(x: f64, a: Activation) -> f64 {
    match a {
        Activation::None => x,
        Activation::Relu => x.max(0.0),
        Activation::GeluErf => 0.5 * x * (1.0 + crate::backend::cpu::kernels::erf64(x / std::f64::consts::SQRT_2)),
        Activation::GeluTanh => 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh()),
        Activation::Silu => x / (1.0 + (-x).exp()),
    }
}

const ACTS: [Activation; 4] = [Activation::None, Activation::Relu, Activation::GeluErf, Activation::GeluTanh];
const DTYPES: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

#[test]
fn unavailable_is_an_error_not_a_panic() {
    match try_new(0) {
        Ok(be) => eprintln!("cuda device present: {} (probe: {:?})", be.device_name(), probe()),
        Err(Error::Unavailable { backend, reason }) => {
            assert_eq!(backend, "cuda");
            assert!(probe().is_err());
            eprintln!("unavailable_is_an_error_not_a_panic: no CUDA device, got Unavailable: {reason}");
        }
        Err(e) => panic!("expected Unavailable, got {e}"),
    }
}

#[test]
fn gemm_matches_f64_reference() {
    let Some(be) = gpu("gemm_matches_f64_reference") else { return };
    let mut rng = Rng::new("gemm");
    let shapes = [(1, 1, 1), (7, 13, 5), (33, 65, 129), (1, 1000, 511), (129, 257, 100), (3, 17, 0)];
    for dtype in DTYPES {
        for &(m, n, k) in &shapes {
            for (ai, act) in ACTS.iter().enumerate() {
                let with_bias = (ai + m) % 2 == 0;
                let mut mem = Mem::new(&be);
                let a = input(rng.vec(m * k, 1.0), dtype);
                let w = input(rng.vec(n * k, 1.0), dtype);
                let bias = input(rng.vec(n, 1.0), dtype);
                let (pa, pw) = (mem.up(&a, dtype), mem.up(&w, dtype));
                let pb = with_bias.then(|| mem.up(&bias, dtype));
                let po = mem.out(m * n, dtype);
                let g = Gemm { m, n, k, a: pa, w: pw, bias: pb, out: po, act: *act, dtype };
                // SAFETY: buffers sized per the descriptor.
                unsafe { mem.s.gemm(&g).unwrap() };
                let out = mem.down(po, m * n, dtype);
                let mut r = vec![0f64; m * n];
                for i in 0..m {
                    for j in 0..n {
                        let mut s: f64 = (0..k).map(|t| a[i * k + t] as f64 * w[j * k + t] as f64).sum();
                        if with_bias {
                            s += bias[j] as f64;
                        }
                        r[i * n + j] = act64(s, *act);
                    }
                }
                check(&format!("gemm {} m{m} n{n} k{k} bias={with_bias} {act:?}", dtype.name()), &out, &r, tol(dtype, 1e-4));
            }
        }
    }
}

/// The cuBLASLt path: fused epilogues are taken where cuBLASLt has them;
/// pointers aligned to one element only (views into larger buffers) still
/// give correct results (another plan, or cublasGemmEx); a captured GEMM with
/// a fused bias+ReLU replays equal to eager, also with the bias pointer of
/// the same plan changed after capture.
#[test]
fn gemm_epilogues_unaligned_and_captured() {
    let Some(be) = gpu("gemm_epilogues_unaligned_and_captured") else { return };
    let mut rng = Rng::new("gemm_lt");
    let (m, n, k) = (7usize, 40usize, 64usize);
    for dtype in DTYPES {
        for pad in [0usize, 1] {
            let mut mem = Mem::new(&be);
            let off = pad * dtype.size();
            let padded = |v: &[f32]| [vec![0.0f32; pad], v.to_vec()].concat();
            for act in ACTS {
                let a = input(rng.vec(m * k, 1.0), dtype);
                let w = input(rng.vec(n * k, 1.0), dtype);
                let bias = input(rng.vec(n, 1.0), dtype);
                let pa = at(mem.up(&padded(&a), dtype), off);
                let pw = at(mem.up(&padded(&w), dtype), off);
                let pb = at(mem.up(&padded(&bias), dtype), off);
                let po = at(mem.out(m * n + pad, dtype), off);
                let g = Gemm { m, n, k, a: pa, w: pw, bias: Some(pb), out: po, act, dtype };
                // SAFETY: buffers sized per the descriptor (after the pad).
                unsafe { mem.s.gemm(&g).unwrap() };
                let out = mem.down(po, m * n, dtype);
                let r: Vec<f64> = (0..m * n)
                    .map(|ij| {
                        let (i, j) = (ij / n, ij % n);
                        act64((0..k).map(|t| a[i * k + t] as f64 * w[j * k + t] as f64).sum::<f64>() + bias[j] as f64, act)
                    })
                    .collect();
                check(&format!("gemm-lt {} m{m} n{n} k{k} pad{pad} bias {act:?}", dtype.name()), &out, &r, tol(dtype, 1e-4));
            }
            let cs = mem.s.as_any().downcast_ref::<CudaStream>().unwrap();
            let (lt_calls, gemmex, plans) = cs.gemm_stats();
            eprintln!("CHECK gemm-lt paths {} pad{pad}: cublasLt {lt_calls}, cublasGemmEx {gemmex}, plans {plans} (cublaslt enabled: {})", dtype.name(), be.cublaslt_enabled());
            if be.cublaslt_enabled() && pad == 0 {
                assert_eq!(lt_calls, 4, "aligned GEMMs should all go through cuBLASLt");
            }
        }
    }

    // Capture: bias+ReLU fused; replay equals eager; then the same plan with
    // another bias pointer eagerly must not disturb the graph's.
    let mut mem = Mem::new(&be);
    let a = rng.vec(m * k, 1.0);
    let (pa, pw) = (mem.up(&a, DType::F32), mem.up(&rng.vec(n * k, 1.0), DType::F32));
    let (pb, pb2) = (mem.up(&rng.vec(n, 1.0), DType::F32), mem.up(&rng.vec(n, 1.0), DType::F32));
    let po = mem.out(m * n, DType::F32);
    let g = Gemm { m, n, k, a: pa, w: pw, bias: Some(pb), out: po, act: Activation::Relu, dtype: DType::F32 };
    // SAFETY: buffers sized per the descriptor.
    unsafe { mem.s.gemm(&g).unwrap() };
    let eager = mem.down(po, m * n, DType::F32);
    mem.s.capture().unwrap().begin_capture().unwrap();
    // SAFETY: as above; captured, not run.
    unsafe { mem.s.gemm(&g).unwrap() };
    let graph = mem.s.capture().unwrap().end_capture().unwrap();
    // SAFETY: as above, with the other bias (same plan, new bias pointer).
    unsafe { mem.s.gemm(&Gemm { bias: Some(pb2), ..g }).unwrap() };
    let other = mem.down(po, m * n, DType::F32);
    assert_ne!(other, eager);
    // SAFETY: po holds m*n floats.
    unsafe { mem.s.h2d(&vec![0xffu8; m * n * 4], po).unwrap() };
    graph.launch(&*mem.s).unwrap();
    assert_eq!(mem.down(po, m * n, DType::F32), eager, "graph replay of a fused GEMM differs from eager");
    eprintln!("CHECK gemm-lt graph replay == eager: exact");
}

#[test]
fn elementwise_match_f64_reference() {
    let Some(be) = gpu("elementwise_match_f64_reference") else { return };
    let mut rng = Rng::new("elementwise");
    for dtype in DTYPES {
        for n in [1usize, 1000, 100_003] {
            let mut mem = Mem::new(&be);
            let a = input(rng.vec(n, 4.0), dtype);
            let b = input(rng.vec(n, 4.0), dtype);
            let (pa, pb, po) = (mem.up(&a, dtype), mem.up(&b, dtype), mem.out(n, dtype));
            // SAFETY: all buffers hold n elements.
            unsafe { mem.s.add(pa, pb, po, n, dtype).unwrap() };
            let r: Vec<f64> = a.iter().zip(&b).map(|(x, y)| *x as f64 + *y as f64).collect();
            check(&format!("add {} n{n}", dtype.name()), &mem.down(po, n, dtype), &r, tol(dtype, 1e-5));
            // One-element activations are skipped: a lone GELU(x) at very
            // negative x is a cancellation, not a test of the kernel.
            for act in ACTS.into_iter().filter(|_| n > 1) {
                let po = mem.out(n, dtype);
                // SAFETY: as above.
                unsafe { mem.s.activation(pa, po, n, act, dtype).unwrap() };
                let r: Vec<f64> = a.iter().map(|x| act64(*x as f64, act)).collect();
                check(&format!("activation {act:?} {} n{n}", dtype.name()), &mem.down(po, n, dtype), &r, tol(dtype, 1e-5));
            }
        }
    }
}

#[test]
fn casts_round_to_nearest_even() {
    let Some(be) = gpu("casts_round_to_nearest_even") else { return };
    let mut rng = Rng::new("cast");
    let n = 10_007;
    let mut mem = Mem::new(&be);
    let x = rng.vec(n, 100.0);
    let px = mem.up(&x, DType::F32);
    let pb = mem.out(n, DType::BF16);
    let pf = mem.out(n, DType::F32);
    // SAFETY: buffers of n elements of the named types.
    unsafe {
        mem.s.cast(px, DType::F32, pb, DType::BF16, n).unwrap();
        mem.s.cast(pb, DType::BF16, pf, DType::F32, n).unwrap();
    }
    let back = mem.down(pf, n, DType::F32);
    let exact = rb(&x);
    assert_eq!(back, exact, "f32 -> bf16 -> f32 must equal round-to-nearest-even");
    let r: Vec<f64> = x.iter().map(|v| *v as f64).collect();
    check("cast f32->bf16->f32 vs f32", &back, &r, 1e-2);
}

#[test]
fn layer_norm_softmax_l2_match_f64_reference() {
    let Some(be) = gpu("layer_norm_softmax_l2_match_f64_reference") else { return };
    let mut rng = Rng::new("norms");
    for dtype in DTYPES {
        // Block kernels: odd widths, > 1024. Warp-per-row kernels (width a
        // multiple of the 16-byte vector, <= 1024): 384 with a partial last
        // block of rows, 1024 (the widest), 36 (f32 only: not a multiple of 8);
        // 1032 is vectorisable but too wide, so the block kernel again.
        for &(rows, cols) in &[(1usize, 1usize), (5, 383), (17, 1025), (3, 4099), (9, 384), (6, 1024), (7, 36), (2, 1032)] {
            let mut mem = Mem::new(&be);
            let x = input(rng.vec(rows * cols, 3.0), dtype);
            let res = input(rng.vec(rows * cols, 1.0), dtype);
            let gamma = input(rng.vec(cols, 2.0), dtype);
            let beta = input(rng.vec(cols, 1.0), dtype);
            let (px, pr, pg, pbt) = (mem.up(&x, dtype), mem.up(&res, dtype), mem.up(&gamma, dtype), mem.up(&beta, dtype));
            for with_res in [false, true] {
                let po = mem.out(rows * cols, dtype);
                let eps = 1e-5f32;
                let p = LayerNorm { x: px, residual: with_res.then_some(pr), gamma: pg, beta: pbt, out: po, rows, cols, eps, dtype };
                // SAFETY: sized per the descriptor.
                unsafe { mem.s.layer_norm(&p).unwrap() };
                let mut r = vec![0f64; rows * cols];
                for i in 0..rows {
                    let v: Vec<f64> = (0..cols).map(|c| x[i * cols + c] as f64 + if with_res { res[i * cols + c] as f64 } else { 0.0 }).collect();
                    let mean = v.iter().sum::<f64>() / cols as f64;
                    let var = v.iter().map(|t| (t - mean).powi(2)).sum::<f64>() / cols as f64;
                    let inv = 1.0 / (var + eps as f64).sqrt();
                    for c in 0..cols {
                        r[i * cols + c] = (v[c] - mean) * inv * gamma[c] as f64 + beta[c] as f64;
                    }
                }
                check(&format!("layer_norm {} {rows}x{cols} residual={with_res}", dtype.name()), &mem.down(po, rows * cols, dtype), &r, tol(dtype, 1e-4));
            }
            let po = mem.out(rows * cols, dtype);
            // SAFETY: rows*cols elements each.
            unsafe { mem.s.softmax(px, po, rows, cols, dtype).unwrap() };
            let mut r = vec![0f64; rows * cols];
            for i in 0..rows {
                let row = &x[i * cols..(i + 1) * cols];
                let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
                let s: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
                for c in 0..cols {
                    r[i * cols + c] = (row[c] as f64 - m).exp() / s;
                }
            }
            check(&format!("softmax {} {rows}x{cols}", dtype.name()), &mem.down(po, rows * cols, dtype), &r, tol(dtype, 1e-4));
            let po = mem.out(rows * cols, dtype);
            // SAFETY: rows*cols elements each.
            unsafe { mem.s.l2_normalize(px, po, rows, cols, dtype).unwrap() };
            let mut r = vec![0f64; rows * cols];
            for i in 0..rows {
                let row = &x[i * cols..(i + 1) * cols];
                let nrm = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt().max(1e-12);
                for c in 0..cols {
                    r[i * cols + c] = row[c] as f64 / nrm;
                }
            }
            check(&format!("l2_normalize {} {rows}x{cols}", dtype.name()), &mem.down(po, rows * cols, dtype), &r, tol(dtype, 1e-4));
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn attention_ref(qkv: &[f32], rs: usize, qo: usize, ko: usize, vo: usize, mask: Option<&[f32]>, batch: usize, seq: usize, heads: usize, hd: usize, scale: f64) -> Vec<f64> {
    let d = heads * hd;
    let mut out = vec![0f64; batch * seq * d];
    for b in 0..batch {
        for h in 0..heads {
            for i in 0..seq {
                let q = |t: usize| qkv[(b * seq + i) * rs + qo + h * hd + t] as f64;
                let mut sc = vec![f64::NEG_INFINITY; seq];
                for (j, s) in sc.iter_mut().enumerate() {
                    if mask.is_some_and(|m| m[b * seq + j] == 0.0) {
                        continue;
                    }
                    *s = (0..hd).map(|t| q(t) * qkv[(b * seq + j) * rs + ko + h * hd + t] as f64).sum::<f64>() * scale;
                }
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                if m == f64::NEG_INFINITY {
                    continue;
                }
                let e: Vec<f64> = sc.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for t in 0..hd {
                    out[(b * seq + i) * d + h * hd + t] = (0..seq).map(|j| e[j] / z * qkv[(b * seq + j) * rs + vo + h * hd + t] as f64).sum();
                }
            }
        }
    }
    out
}

#[test]
fn attention_matches_f64_reference() {
    let Some(be) = gpu("attention_matches_f64_reference") else { return };
    let mut rng = Rng::new("attention");
    // (batch, seq, heads, head_dim): odd sizes, and the largest supported shape.
    // MiniLM (b 32/128, s 128, h 12, d 32) and the encoder workload (b 256, s 64, h 4, d 64) too.
    let shapes = [
        (1usize, 1usize, 1usize, 1usize),
        (2, 37, 3, 19),
        (3, 64, 4, 64),
        (1, 512, 2, 128),
        (2, 129, 5, 33),
        (2, 70, 3, 100),
        (32, 128, 12, 32),
        (128, 128, 12, 32),
        (256, 64, 4, 64),
    ];
    // BRAID_ATTN_SMALL=1 (under compute-sanitizer) skips the three large shapes.
    let shapes = if std::env::var("BRAID_ATTN_SMALL").is_ok_and(|v| v == "1") { &shapes[..6] } else { &shapes[..] };
    let kernels = [None, Some(AttnKernel::Simple), Some(AttnKernel::Tiled { queries: 32 }), Some(AttnKernel::Tiled { queries: 64 })];
    for dtype in DTYPES {
        for &(batch, seq, heads, hd) in shapes {
            for masked in [false, true] {
                let mut mem = Mem::new(&be);
                let d = heads * hd;
                let rs = 3 * d; // packed QKV
                let qkv = input(rng.vec(batch * seq * rs, 1.0), dtype);
                // Padding at the end of each sequence; the last batch entry fully
                // masked when there are several (its output must be zeros).
                let mask: Vec<f32> = (0..batch * seq)
                    .map(|i| {
                        let (b, s) = (i / seq, i % seq);
                        let last_entry = batch > 1 && b == batch - 1;
                        let padded = s >= seq - seq / 3 || (s != 0 && rng.below(7) == 0);
                        if last_entry || padded {
                            0.0
                        } else {
                            1.0
                        }
                    })
                    .collect();
                let pqkv = mem.up(&qkv, dtype);
                let pm = masked.then(|| mem.up(&mask, DType::F32));
                let po = mem.out(batch * seq * d, dtype);
                let scale = 1.0 / (hd as f32).sqrt();
                let es = dtype.size() as u64;
                let p = Attention {
                    q: pqkv,
                    k: at(pqkv, d * es as usize),
                    v: at(pqkv, 2 * d * es as usize),
                    row_stride: rs,
                    mask: pm,
                    out: po,
                    batch,
                    seq,
                    heads,
                    head_dim: hd,
                    scale,
                    dtype,
                };
                let r = attention_ref(&qkv, rs, 0, d, 2 * d, masked.then_some(&mask[..]), batch, seq, heads, hd, scale as f64);
                for kernel in kernels {
                    if kernel.is_some() {
                        // Poison the output again between kernels.
                        let nan: Vec<u8> = match dtype {
                            DType::F32 => f32::NAN.to_ne_bytes().repeat(batch * seq * d),
                            DType::BF16 => to_bf16(f32::NAN).to_ne_bytes().repeat(batch * seq * d),
                            DType::F16 => half::f16::NAN.to_bits().to_ne_bytes().repeat(batch * seq * d),
                        };
                        // SAFETY: `po` holds batch*seq*d elements.
                        unsafe { mem.s.h2d(&nan, po).unwrap() };
                    }
                    match kernel {
                        // SAFETY: sized per the descriptor.
                        None => unsafe { mem.s.attention(&p).unwrap() },
                        Some(k) => {
                            let cs = mem.s.as_any().downcast_ref::<CudaStream>().unwrap();
                            // SAFETY: sized per the descriptor.
                            unsafe { cs.attention_with(&p, k).unwrap() }
                        }
                    }
                    let out = mem.down(po, batch * seq * d, dtype);
                    let kname = kernel.map_or("auto".to_string(), |k| format!("{k:?}"));
                    check(&format!("attention[{kname}] {} b{batch} s{seq} h{heads} d{hd} mask={masked}", dtype.name()), &out, &r, tol(dtype, 1e-4));
                    if masked && batch > 1 {
                        let last = &out[(batch - 1) * seq * d..];
                        assert!(last.iter().all(|&v| v == 0.0), "fully masked batch entry must give zeros");
                    }
                }
            }
        }
    }
}

/// Packed (varlen) attention, tensor-core (mma) and CUDA-core kernels,
/// against the f64 reference run per sequence: random segment lengths
/// (1, tile edges 63/64/65, up to 300), head_dim 32/64/128 and odd widths,
/// output poisoned with NaN before each kernel.
#[test]
fn attention_varlen_matches_f64_reference() {
    let Some(be) = gpu("attention_varlen_matches_f64_reference") else { return };
    let mut rng = Rng::new("attention_varlen");
    // (segment lengths, heads, head_dim)
    let mut cases: Vec<(Vec<usize>, usize, usize)> = vec![
        (vec![1], 1, 32),
        (vec![5, 63, 64, 65, 1, 17], 3, 32),
        (vec![128, 7, 200], 12, 32),
        (vec![33, 70], 2, 64),
        (vec![129, 2, 64], 2, 128),
        (vec![40, 9], 3, 40),
        (vec![31, 0, 12], 2, 20),
    ];
    if !std::env::var("BRAID_ATTN_SMALL").is_ok_and(|v| v == "1") {
        cases.push(((0..64).map(|_| 8 + rng.below(249) as usize).collect(), 12, 32));
        cases.push((vec![300, 256], 4, 64));
    }
    for dtype in DTYPES {
        for (lens, heads, hd) in &cases {
            let (heads, hd) = (*heads, *hd);
            let mut mem = Mem::new(&be);
            let d = heads * hd;
            let rs = 3 * d;
            let mut cu = vec![0u32];
            for l in lens {
                cu.push(cu.last().unwrap() + *l as u32);
            }
            let t = *cu.last().unwrap() as usize;
            let qkv = input(rng.vec(t * rs, 1.0), dtype);
            let pqkv = mem.up(&qkv, dtype);
            let pcu = mem.bytes(&cu.iter().flat_map(|c| c.to_ne_bytes()).collect::<Vec<_>>());
            let po = mem.out(t * d, dtype);
            let scale = 1.0 / (hd as f32).sqrt();
            let mut r = Vec::with_capacity(t * d);
            for w in cu.windows(2) {
                let (a, n) = (w[0] as usize, (w[1] - w[0]) as usize);
                r.extend(attention_ref(&qkv[a * rs..(a + n) * rs], rs, 0, d, 2 * d, None, 1, n, heads, hd, scale as f64));
            }
            let es = dtype.size() as u64;
            let p = VarlenAttention {
                q: pqkv,
                k: at(pqkv, d * es as usize),
                v: at(pqkv, 2 * d * es as usize),
                row_stride: rs,
                cu_seqlens: pcu,
                out: po,
                batch: lens.len(),
                max_seq: *lens.iter().max().unwrap(),
                heads,
                head_dim: hd,
                scale,
                dtype,
            };
            for mma in [true, false] {
                if mma && !dtype.is_half() {
                    continue;
                }
                let nan = mem.up(&vec![f32::NAN; t * d], dtype);
                // SAFETY: both hold t*d elements of `dtype`.
                unsafe { mem.s.d2d(nan, po).unwrap() };
                let cs = mem.s.as_any().downcast_ref::<CudaStream>().unwrap();
                // SAFETY: sized per the descriptor; cu rises from 0 to t.
                unsafe { cs.attention_varlen_with(&p, mma).unwrap() };
                let out = mem.down(po, t * d, dtype);
                let kname = if mma { "mma" } else { "cuda-core" };
                check(&format!("attention_varlen[{kname}] {} segs{:?} h{heads} d{hd}", dtype.name(), &lens[..lens.len().min(8)]), &out, &r, tol(dtype, 1e-4));
            }
        }
    }
}

#[test]
fn gather_and_mean_pool_match_f64_reference() {
    let Some(be) = gpu("gather_and_mean_pool_match_f64_reference") else { return };
    let mut rng = Rng::new("gather_pool");
    for dtype in DTYPES {
        let mut mem = Mem::new(&be);
        // dim 129: the element kernel; 384: 16-byte vectors.
        for (rows, n, dim) in [(50usize, 37usize, 129usize), (50, 37, 384)] {
            let table = input(rng.vec(rows * dim, 2.0), dtype);
            let ids: Vec<u32> = (0..n).map(|_| rng.below(rows as u64) as u32).collect();
            let pt = mem.up(&table, dtype);
            let pids = mem.bytes(&ids.iter().flat_map(|i| i.to_ne_bytes()).collect::<Vec<_>>());
            let po = mem.out(n * dim, dtype);
            // SAFETY: ids in range, out n*dim.
            unsafe { mem.s.gather(&Gather { table: pt, ids: pids, out: po, n, dim, dtype }).unwrap() };
            let r: Vec<f64> = ids.iter().flat_map(|&i| table[i as usize * dim..(i as usize + 1) * dim].iter().map(|&v| v as f64)).collect();
            check(&format!("gather {} n{n} dim{dim}", dtype.name()), &mem.down(po, n * dim, dtype), &r, 1e-5);
        }

        // Batch 4: the token-parallel kernel; batch 200 (800 blocks of the
        // one-thread-per-output kernel): the serial-over-tokens kernel.
        for (batch, seq, dim) in [(4usize, 31usize, 385usize), (200, 5, 385)] {
            let x = input(rng.vec(batch * seq * dim, 2.0), dtype);
            // Row 2 fully masked (gives zeros), others random 0/1 with the first kept.
            let mask: Vec<f32> = (0..batch * seq).map(|i| if i / seq == 2 { 0.0 } else if i % seq == 0 || rng.below(3) != 0 { 1.0 } else { 0.0 }).collect();
            let px = mem.up(&x, dtype);
            let pm = mem.up(&mask, DType::F32);
            for masked in [false, true] {
                let po = mem.out(batch * dim, dtype);
                // SAFETY: sized per the descriptor.
                unsafe { mem.s.mean_pool(&MeanPool { x: px, mask: masked.then_some(pm), out: po, batch, seq, dim, dtype }).unwrap() };
                let mut r = vec![0f64; batch * dim];
                for b in 0..batch {
                    let cnt: f64 = (0..seq).map(|s| if masked { mask[b * seq + s] as f64 } else { 1.0 }).sum();
                    for t in 0..dim {
                        let s: f64 = (0..seq).map(|s| (if masked { mask[b * seq + s] as f64 } else { 1.0 }) * x[(b * seq + s) * dim + t] as f64).sum();
                        r[b * dim + t] = s / cnt.max(1e-9);
                    }
                }
                check(&format!("mean_pool {} b{batch} s{seq} d{dim} mask={masked}", dtype.name()), &mem.down(po, batch * dim, dtype), &r, tol(dtype, 1e-4));
            }
        }
    }
}

#[test]
fn out_of_memory_is_clear_and_recoverable() {
    let Some(be) = gpu("out_of_memory_is_clear_and_recoverable") else { return };
    let (_, total) = be.memory_info().expect("memory info");
    match be.alloc(total * 2) {
        Err(Error::OutOfMemory { requested, detail, .. }) => {
            assert_eq!(requested, total * 2);
            eprintln!("OOM as expected: {}", Error::OutOfMemory { device: be.device_name(), requested, reserved: 0, allocated: 0, detail });
        }
        Ok(p) => panic!("allocating {} bytes succeeded at {p:?}", total * 2),
        Err(e) => panic!("expected OutOfMemory, got {e}"),
    }
    // The process keeps working.
    let mut mem = Mem::new(&be);
    let a = mem.up(&[1.0, 2.0, 3.0], DType::F32);
    let o = mem.out(3, DType::F32);
    // SAFETY: 3 elements each.
    unsafe { mem.s.add(a, a, o, 3, DType::F32).unwrap() };
    assert_eq!(mem.down(o, 3, DType::F32), vec![2.0, 4.0, 6.0]);
    be.synchronize().unwrap();
}

/// gemm + bias + GELU, then LayerNorm with residual, then softmax.
///
/// # Safety
/// Buffers sized for `m`, `n`, `k`.
#[allow(clippy::too_many_arguments)]
unsafe fn forward(s: &dyn BackendStream, act: Activation, m: usize, n: usize, k: usize, x: DevicePtr, w: DevicePtr, b: DevicePtr, h: DevicePtr, g: DevicePtr, be: DevicePtr, o: DevicePtr) -> Result<()> {
    // SAFETY: per the function contract.
    unsafe {
        s.gemm(&Gemm { m, n, k, a: x, w, bias: Some(b), out: h, act, dtype: DType::F32 })?;
        s.layer_norm(&LayerNorm { x: h, residual: Some(h), gamma: g, beta: be, out: o, rows: m, cols: n, eps: 1e-5, dtype: DType::F32 })?;
        s.softmax(o, o, m, n, DType::F32)
    }
}

#[test]
fn graph_replay_equals_eager() {
    let Some(be) = gpu("graph_replay_equals_eager") else { return };
    // GELU-erf: cuBLAS + epilogue kernel; GELU-tanh and ReLU: cuBLASLt epilogues.
    for act in [Activation::GeluErf, Activation::GeluTanh, Activation::Relu] {
        graph_replay_equals_eager_with(&be, act);
    }
}

fn graph_replay_equals_eager_with(be: &Arc<CudaBackend>, act: Activation) {
    let be = be.clone();
    let mut rng = Rng::new("graph");
    let (m, n, k) = (5usize, 77usize, 131usize);
    let mut mem = Mem::new(&be);
    let x = mem.up(&rng.vec(m * k, 1.0), DType::F32);
    let w = mem.up(&rng.vec(n * k, 1.0), DType::F32);
    let b = mem.up(&rng.vec(n, 1.0), DType::F32);
    let g = mem.up(&rng.vec(n, 1.0), DType::F32);
    let bt = mem.up(&rng.vec(n, 1.0), DType::F32);
    let h = mem.out(m * n, DType::F32);
    let o = mem.out(m * n, DType::F32);
    // SAFETY: sized for m, n, k.
    unsafe { forward(&*mem.s, act, m, n, k, x, w, b, h, g, bt, o).unwrap() };
    let eager = mem.down(o, m * n, DType::F32);
    assert!(eager.iter().all(|v| v.is_finite()));

    mem.s.capture().unwrap().begin_capture().unwrap();
    // SAFETY: as above; captured, not run.
    unsafe { forward(&*mem.s, act, m, n, k, x, w, b, h, g, bt, o).unwrap() };
    let graph = mem.s.capture().unwrap().end_capture().unwrap();
    // Poison the output, replay: must equal eager.
    // SAFETY: o holds m*n floats.
    unsafe { mem.s.h2d(&vec![0xffu8; m * n * 4], o).unwrap() };
    graph.launch(&*mem.s).unwrap();
    assert_eq!(mem.down(o, m * n, DType::F32), eager, "graph replay differs from eager");

    // New input contents, replay on another stream: equals a new eager run.
    let x2 = rng.vec(m * k, 1.0);
    // SAFETY: x holds m*k floats.
    unsafe { mem.s.h2d(&x2.iter().flat_map(|v| v.to_ne_bytes()).collect::<Vec<_>>(), x).unwrap() };
    mem.s.synchronize().unwrap();
    let s2 = be.new_stream().unwrap();
    for _ in 0..3 {
        graph.launch(&*s2).unwrap();
    }
    s2.synchronize().unwrap();
    let replayed = mem.down(o, m * n, DType::F32);
    // SAFETY: as above.
    unsafe { forward(&*mem.s, act, m, n, k, x, w, b, h, g, bt, o).unwrap() };
    assert_eq!(mem.down(o, m * n, DType::F32), replayed, "replay with new inputs differs from eager");
    eprintln!("CHECK graph replay == eager ({act:?}): exact");
}

#[test]
fn events_and_cross_stream_wait() {
    let Some(be) = gpu("events_and_cross_stream_wait") else { return };
    let mut rng = Rng::new("events");
    let (m, n, k) = (1024usize, 1024usize, 1024usize);
    let mut mem = Mem::new(&be);
    let a = rng.vec(m * k, 1.0);
    let pa = mem.up(&a, DType::F32);
    let pw = mem.up(&rng.vec(n * k, 1.0), DType::F32);
    let po = mem.out(m * n, DType::F32);
    let copy = mem.out(m * n, DType::F32);
    mem.s.synchronize().unwrap();
    let s2 = be.new_stream().unwrap();
    let (t0, t1) = (be.new_event(true).unwrap(), be.new_event(true).unwrap());
    let done = be.new_event(false).unwrap();
    assert!(done.query().unwrap(), "a never-recorded event counts as complete");
    // Warm up (cuBLAS handle, kernel loading) outside the timed region.
    // SAFETY: sized per the descriptor.
    unsafe { mem.s.gemm(&Gemm { m, n, k, a: pa, w: pw, bias: None, out: po, act: Activation::Relu, dtype: DType::F32 }).unwrap() };
    mem.s.synchronize().unwrap();
    mem.s.record(&*t0).unwrap();
    for _ in 0..20 {
        // SAFETY: sized per the descriptor.
        unsafe { mem.s.gemm(&Gemm { m, n, k, a: pa, w: pw, bias: None, out: po, act: Activation::Relu, dtype: DType::F32 }).unwrap() };
    }
    mem.s.record(&*t1).unwrap();
    mem.s.record(&*done).unwrap();
    // s2 copies the result only after the GEMMs on s1 (host does not block).
    s2.wait_event(&*done).unwrap();
    // SAFETY: both hold m*n floats.
    unsafe { s2.d2d(po, copy).unwrap() };
    s2.synchronize().unwrap();
    assert!(done.query().unwrap());
    done.synchronize(Some(std::time::Duration::from_secs(10))).unwrap();
    let ms = t1.elapsed_ms(&*t0).unwrap();
    eprintln!("20 x 1024^3 f32 GEMM: {ms:.3} ms ({:.1} TFLOP/s)", 20.0 * 2.0 * 1024f64.powi(3) / (ms as f64 * 1e-3) / 1e12);
    assert!(ms > 0.0);
    assert_eq!(mem.down(copy, m * n, DType::F32), mem.down(po, m * n, DType::F32));
    // Timing on a non-timing event is a clear error.
    assert!(done.elapsed_ms(&*t0).is_err());
}

#[test]
fn kernel_cache_compiles_once_under_concurrency() {
    let Some(be) = gpu("kernel_cache_compiles_once_under_concurrency") else { return };
    assert_eq!(be.kernel_compilations(), 0);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let be = be.clone();
            std::thread::spawn(move || {
                let mut mem = Mem::new(&be);
                let x: Vec<f32> = (0..33).map(|i| (i + t) as f32 * 0.1).collect();
                let px = mem.up(&x, DType::F32);
                let po = mem.out(33, DType::F32);
                // SAFETY: 3x11 floats each.
                unsafe { mem.s.softmax(px, po, 3, 11, DType::F32).unwrap() };
                mem.down(po, 33, DType::F32)
            })
        })
        .collect();
    for t in threads {
        let out = t.join().unwrap();
        assert!(out.iter().all(|v| v.is_finite()));
    }
    assert_eq!(be.kernel_compilations(), 1, "the Norm unit compiled exactly once");
}

/// The kernel cache has no eviction: compiled modules live in their
/// context's `ModuleCache` until the context drops, and every stream (and
/// graph) holds an `Arc` of the context. So a kernel in use is never freed:
/// here the backend handle is dropped while another thread keeps launching
/// the cached softmax kernel on its stream; every launch after the drop
/// runs and gives the same answer as before it.
#[test]
fn kernel_in_use_survives_dropping_the_backend() {
    let Some(be) = gpu("kernel_in_use_survives_dropping_the_backend") else { return };
    let (rows, cols) = (3usize, 11usize);
    let x: Vec<f32> = Rng::new("kernel_in_use").vec(rows * cols, 2.0);
    let s = be.cuda_stream().unwrap();
    let px = alloc(&be, rows * cols * 4);
    let po = alloc(&be, rows * cols * 4);
    let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_ne_bytes()).collect();
    let run = move |s: &CudaStream| -> Vec<f32> {
        let mut back = vec![0u8; rows * cols * 4];
        // SAFETY: px and po hold rows*cols f32 each and stay allocated for
        // the test (their context is kept alive by `s`).
        unsafe {
            s.h2d(&vec![0xffu8; rows * cols * 4], po).unwrap();
            s.h2d(&bytes, px).unwrap();
            s.softmax(px, po, rows, cols, DType::F32).unwrap();
            s.d2h(po, &mut back).unwrap();
        }
        back.chunks(4).map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]])).collect()
    };
    let first = run(&s);
    let r: Vec<f64> = x
        .chunks(cols)
        .flat_map(|row| {
            let m = row.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64));
            let e: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp()).collect();
            let sum: f64 = e.iter().sum();
            e.into_iter().map(move |v| v / sum)
        })
        .collect();
    check("softmax before the drop", &first, &r, 1e-5);
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        for i in 0..200 {
            if i == 20 {
                tx.send(()).unwrap();
            }
            assert_eq!(run(&s), first, "launch {i}: kernel result changed");
        }
        s.synchronize().unwrap();
    });
    rx.recv().unwrap();
    assert_eq!(Arc::strong_count(&be), 1, "the test must hold the only backend handle");
    let weak = Arc::downgrade(&be);
    drop(be);
    assert!(weak.upgrade().is_none(), "backend handle dropped while its kernels are in use");
    t.join().unwrap();
    eprintln!("CHECK kernel in use after the backend handle was dropped: 180 launches, same result");
}

/// Evicting a captured graph never frees one in use: the cache hands out
/// `Arc`s, and a graph owns the buffers baked into it. One thread clears the
/// cache over and over while another replays a graph it took from it; every
/// replay gives the eager result, and the graph's buffers go back to the
/// allocator only when the last holder drops it.
#[test]
fn graph_cache_eviction_never_frees_a_graph_in_use() {
    if gpu("graph_cache_eviction_never_frees_a_graph_in_use").is_none() {
        return;
    }
    let dev = crate::Device::cuda(0).unwrap();
    let stream = dev.stream(1).unwrap();
    let (rows, cols) = (4usize, 19usize);
    let x: Vec<f32> = Rng::new("graph_cache_eviction").vec(rows * cols, 3.0);
    let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_ne_bytes()).collect();
    let cache = Arc::new(crate::graph::GraphCache::new());
    // Buffers and the kernel come first: allocating or loading a module
    // during a capture would invalidate it.
    let (bx, bo) = (dev.alloc(rows * cols * 4, &stream).unwrap(), dev.alloc(rows * cols * 4, &stream).unwrap());
    // SAFETY: both blocks hold rows*cols f32 (contents irrelevant: warm-up).
    unsafe { stream.raw().softmax(bx.slice(), bo.slice(), rows, cols, DType::F32).unwrap() };
    let s = stream.clone();
    let g = cache
        .get_or_capture(7, &[rows, cols], &stream, move || {
            // SAFETY: both blocks hold rows*cols f32 and live in the graph's state.
            unsafe { s.raw().softmax(bx.slice(), bo.slice(), rows, cols, DType::F32)? };
            Ok((bx, bo))
        })
        .unwrap();
    let (px, po) = g.state::<(crate::DeviceBlock, crate::DeviceBlock)>().map(|(a, b)| (a.slice(), b.slice())).unwrap();
    let raw = stream.raw();
    let read = |raw: &dyn BackendStream| {
        let mut back = vec![0u8; rows * cols * 4];
        // SAFETY: po holds rows*cols f32 and is kept alive by `g`.
        unsafe { raw.d2h(po, &mut back).unwrap() };
        back.chunks(4).map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]])).collect::<Vec<f32>>()
    };
    // SAFETY: px holds rows*cols f32, kept alive by `g`.
    unsafe { raw.h2d(&bytes, px).unwrap() };
    // SAFETY: as above (eager run of the captured op).
    unsafe { raw.softmax(px, po, rows, cols, DType::F32).unwrap() };
    let eager = read(raw);
    // SeqCst stop flag: only tells the evictor when to end; the join after
    // the store is what orders its work with this thread.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (c2, stop2) = (cache.clone(), stop.clone());
    let evictor = std::thread::spawn(move || {
        let mut n = 0u64;
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
            c2.clear();
            n += 1;
        }
        n
    });
    for i in 0..200 {
        // SAFETY: po holds rows*cols f32, kept alive by `g`.
        unsafe { raw.h2d(&vec![0xffu8; rows * cols * 4], po).unwrap() };
        g.launch().unwrap();
        assert_eq!(read(raw), eager, "replay {i} after eviction differs");
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let clears = evictor.join().unwrap();
    assert!(cache.is_empty());
    let live = dev.memory_stats();
    drop(g);
    stream.synchronize().unwrap();
    let after = dev.memory_stats();
    eprintln!("CHECK graph in use across {clears} cache clears: 200 replays equal eager; allocated {} -> {} bytes when the last holder dropped it", live.allocated, after.allocated);
    assert!(after.allocated < live.allocated, "the graph's buffers are freed with the graph");
}

#[test]
fn one_stream_from_many_threads_and_staging_pool() {
    let Some(be) = gpu("one_stream_from_many_threads_and_staging_pool") else { return };
    let mut rng = Rng::new("threads");
    let (m, n, k) = (9usize, 31usize, 47usize);
    let a = rng.vec(m * k, 1.0);
    let w = rng.vec(n * k, 1.0);
    let s = be.cuda_stream().unwrap();
    let shared: Arc<dyn BackendStream> = s.clone();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (be, s, a, w) = (be.clone(), shared.clone(), a.clone(), w.clone());
            std::thread::spawn(move || {
                let mut mem = Mem { be: be.clone(), s, bufs: Vec::new() };
                let pa = mem.up(&a, DType::F32);
                let pw = mem.up(&w, DType::F32);
                let po = mem.out(m * n, DType::F32);
                for _ in 0..50 {
                    // SAFETY: sized per the descriptor.
                    unsafe { mem.s.gemm(&Gemm { m, n, k, a: pa, w: pw, bias: None, out: po, act: Activation::None, dtype: DType::F32 }).unwrap() };
                }
                mem.down(po, m * n, DType::F32)
            })
        })
        .collect();
    let outs: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(outs.windows(2).all(|p| p[0] == p[1]));
    assert!(s.staging_buffers() <= 8, "staging pool is bounded");
    // A copy larger than one staging chunk round-trips.
    let big: Vec<u8> = (0..(40usize << 20) + 3).map(|i| (i * 7 + 1) as u8).collect();
    let p = alloc(&be, big.len());
    let mut back = vec![0u8; big.len()];
    // SAFETY: p holds big.len() bytes.
    unsafe {
        s.h2d(&big, p).unwrap();
        s.d2h(p, &mut back).unwrap();
        be.free(p.buffer, big.len());
    }
    assert!(back == big, "40 MiB round trip through staging chunks");
    eprintln!("staging buffers held: {}", s.staging_buffers());
}

/// Poisons the context on purpose, so it runs alone in its own process:
/// `cargo test ... -- --ignored --exact backend::cuda::tests::sticky_error_poisons_the_device`.
#[test]
#[ignore = "poisons the process's CUDA context; run alone"]
fn sticky_error_poisons_the_device() {
    let Some(be) = gpu("sticky_error_poisons_the_device") else { return };
    let s = be.new_stream().unwrap();
    // Write through a wild device address: an illegal-address fault.
    // SAFETY: deliberately violated to provoke the sticky error; the GPU
    // traps the access, the host memory is not touched.
    unsafe { s.add(BufSlice::whole(BufferId::from_raw(0x10), 4 << 20), BufSlice::whole(BufferId::from_raw(0x10), 4 << 20), BufSlice::whole(BufferId::from_raw(0x10), 4 << 20), 1 << 20, DType::F32).unwrap() };
    let e = s.synchronize().unwrap_err();
    eprintln!("first error: {e}");
    assert!(matches!(e, Error::DevicePoisoned { .. }), "{e:?}");
    let later = be.alloc(16).unwrap_err();
    eprintln!("later call: {later}");
    assert!(matches!(later, Error::DevicePoisoned { .. }));
    assert!(matches!(be.new_stream().err(), Some(Error::DevicePoisoned { .. })));
}

/// The built-in `mlp` workload (512 -> 1024 -> 1024 -> 512, ReLU between) at
/// batch 1: forwards/s with per-thread streams, one shared stream, and graph
/// replay, each forward synchronised (a request's latency path). Not a
/// correctness test: `-- --ignored --exact backend::cuda::tests::bench_mlp`.
#[test]
#[ignore = "benchmark; run on a GPU explicitly"]
fn bench_mlp() {
    let Some(be) = gpu("bench_mlp") else { return };
    let mut rng = Rng::new("bench_mlp");
    let dims = [512usize, 1024, 1024, 512];
    let mut mem = Mem::new(&be);
    let layers: Vec<(DevicePtr, DevicePtr)> = dims
        .windows(2)
        .map(|d| (mem.up(&rng.vec(d[0] * d[1], 0.05), DType::F32), mem.up(&rng.vec(d[1], 0.05), DType::F32)))
        .collect();
    let layers = Arc::new(layers);
    // SAFETY: `bufs` = [x(512), h1(1024), h2(1024), y(512)] on this stream.
    unsafe fn fwd(s: &dyn BackendStream, layers: &[(DevicePtr, DevicePtr)], bufs: &[DevicePtr; 4]) {
        let dims = [512usize, 1024, 1024, 512];
        for (i, &(w, b)) in layers.iter().enumerate() {
            let act = if i + 1 < layers.len() { Activation::Relu } else { Activation::None };
            // SAFETY: per the function contract.
            unsafe { s.gemm(&Gemm { m: 1, n: dims[i + 1], k: dims[i], a: bufs[i], w, bias: Some(b), out: bufs[i + 1], act, dtype: DType::F32 }).unwrap() };
        }
    }
    eprintln!("BENCH cublaslt enabled: {} (BRAID_CUBLASLT={:?})", be.cublaslt_enabled(), std::env::var("BRAID_CUBLASLT").ok());
    let secs = 0.5f64;
    let mut table = Vec::new();
    for mode in ["per-thread-stream", "shared-stream", "graph"] {
        for threads in [1usize, 2, 4, 8, 16] {
            let shared = be.new_stream().unwrap();
            let barrier = Arc::new(std::sync::Barrier::new(threads));
            let hs: Vec<_> = (0..threads)
                .map(|_| {
                    let (be, layers, shared, barrier) = (be.clone(), layers.clone(), shared.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        let s = if mode == "shared-stream" { shared } else { be.new_stream().unwrap() };
                        let mut mem = Mem { be: be.clone(), s: s.clone(), bufs: Vec::new() };
                        let bufs = [mem.out(512, DType::F32), mem.out(1024, DType::F32), mem.out(1024, DType::F32), mem.out(512, DType::F32)];
                        let x: Vec<u8> = (0..512).flat_map(|i| ((i as f32) * 1e-3).to_ne_bytes()).collect();
                        // SAFETY: bufs[0] holds 512 floats.
                        unsafe { s.h2d(&x, bufs[0]).unwrap() };
                        // SAFETY: buffers sized for the mlp.
                        unsafe { fwd(&*s, &layers, &bufs) };
                        s.synchronize().unwrap();
                        let graph = (mode == "graph").then(|| {
                            s.capture().unwrap().begin_capture().unwrap();
                            // SAFETY: as above (captured).
                            unsafe { fwd(&*s, &layers, &bufs) };
                            s.capture().unwrap().end_capture().unwrap()
                        });
                        barrier.wait();
                        let t = std::time::Instant::now();
                        let mut n = 0u64;
                        while t.elapsed().as_secs_f64() < secs {
                            match &graph {
                                Some(g) => g.launch(&*s).unwrap(),
                                // SAFETY: as above.
                                None => unsafe { fwd(&*s, &layers, &bufs) },
                            }
                            s.synchronize().unwrap();
                            n += 1;
                        }
                        let el = t.elapsed().as_secs_f64();
                        drop(mem);
                        n as f64 / el
                    })
                })
                .collect();
            let total: f64 = hs.into_iter().map(|h| h.join().unwrap()).sum();
            eprintln!("BENCH mlp batch1 {mode:18} threads {threads:2}: {total:10.0} forwards/s");
            table.push((mode, threads, total));
        }
    }
    drop(mem);
}

/// Attention kernel time (CUDA events around each launch, median of 100) for
/// the MiniLM and encoder shapes, simple vs tiled kernel, f32 and bf16, and a
/// graph replay of the tiled kernel compared with eager. Not a correctness
/// test: `-- --ignored --exact backend::cuda::tests::bench_attention`.
#[test]
#[ignore = "benchmark; run on a GPU explicitly"]
fn bench_attention() {
    let Some(be) = gpu("bench_attention") else { return };
    let mut rng = Rng::new("bench_attention");
    let shapes = [
        ("minilm", 1usize, 128usize, 12usize, 32usize),
        ("minilm", 8, 128, 12, 32),
        ("minilm", 32, 128, 12, 32),
        ("minilm", 128, 128, 12, 32),
        ("encoder", 1, 64, 4, 64),
        ("encoder", 32, 64, 4, 64),
        ("encoder", 256, 64, 4, 64),
    ];
    let kernels = [AttnKernel::Simple, AttnKernel::Tiled { queries: 32 }, AttnKernel::Tiled { queries: 64 }, AttnKernel::Auto];
    let (e0, e1) = (be.new_event(true).unwrap(), be.new_event(true).unwrap());
    for dtype in DTYPES {
        for &(wl, batch, seq, heads, hd) in &shapes {
            let mut mem = Mem::new(&be);
            let d = heads * hd;
            let rs = 3 * d;
            let pqkv = mem.up(&rng.vec(batch * seq * rs, 1.0), dtype);
            // Real tokens with some padding at the end of odd batch entries.
            let mask: Vec<f32> = (0..batch * seq).map(|i| if (i / seq) % 2 == 1 && i % seq >= seq * 3 / 4 { 0.0 } else { 1.0 }).collect();
            let pm = mem.up(&mask, DType::F32);
            let po = mem.out(batch * seq * d, dtype);
            let es = dtype.size() as u64;
            let p = Attention {
                q: pqkv,
                k: at(pqkv, d * es as usize),
                v: at(pqkv, 2 * d * es as usize),
                row_stride: rs,
                mask: Some(pm),
                out: po,
                batch,
                seq,
                heads,
                head_dim: hd,
                scale: 1.0 / (hd as f32).sqrt(),
                dtype,
            };
            let cs = mem.s.as_any().downcast_ref::<CudaStream>().unwrap();
            let mut times = Vec::new();
            for k in kernels {
                for _ in 0..5 {
                    // SAFETY: sized per the descriptor.
                    unsafe { cs.attention_with(&p, k).unwrap() };
                }
                let mut ts: Vec<f32> = (0..100)
                    .map(|_| {
                        mem.s.record(&*e0).unwrap();
                        // SAFETY: as above.
                        unsafe { cs.attention_with(&p, k).unwrap() };
                        mem.s.record(&*e1).unwrap();
                        e1.synchronize(None).unwrap();
                        e1.elapsed_ms(&*e0).unwrap()
                    })
                    .collect();
                ts.sort_by(|a, b| a.partial_cmp(b).unwrap());
                times.push(ts[ts.len() / 2] * 1000.0);
            }
            eprintln!(
                "BENCH attention {} {wl} b{batch} s{seq} h{heads} d{hd}: simple {:.1} us, tiled32 {:.1} us, tiled64 {:.1} us, auto {:.1} us, simple/auto {:.2}x",
                dtype.name(),
                times[0],
                times[1],
                times[2],
                times[3],
                times[0] / times[3]
            );
            // Graph replay of the auto kernel equals eager bit for bit.
            // SAFETY: as above.
            unsafe { mem.s.attention(&p).unwrap() };
            let eager = mem.down(po, batch * seq * d, dtype);
            // SAFETY: `po` holds batch*seq*d elements.
            unsafe { mem.s.h2d(&vec![0u8; batch * seq * d * dtype.size()], po).unwrap() };
            mem.s.synchronize().unwrap();
            mem.s.capture().unwrap().begin_capture().unwrap();
            // SAFETY: as above (captured).
            unsafe { mem.s.attention(&p).unwrap() };
            let g = mem.s.capture().unwrap().end_capture().unwrap();
            g.launch(&*mem.s).unwrap();
            let replay = mem.down(po, batch * seq * d, dtype);
            assert!(eager.iter().zip(&replay).all(|(a, b)| a.to_bits() == b.to_bits()), "graph replay != eager");
        }
    }
}
