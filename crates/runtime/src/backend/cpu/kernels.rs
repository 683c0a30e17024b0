//! The CPU backend's kernels: functions over f32 slices, run on a stream's
//! executor thread, which splits the large ones into tasks on the shared
//! intra-op pool ([`super::pool`]). Owns the CPU arithmetic of every op.
//!
//! - GEMM: on a weight packed once ([`gemm_packed`], the kernel in
//!   [`super::packed`]) for weights with a pack slot, at any row count;
//!   otherwise `matrixmultiply`'s packed SGEMM (it picks its AVX/FMA kernels at
//!   run time) on 2-D blocks of the output, one block per pool thread, shaped
//!   to pack the least, or for fewer than [`SMALL_M`] rows a dot-product
//!   kernel that streams each weight row once.
//!   The bias and activation are applied per block while it is in cache.
//! - The rest (attention, LayerNorm+residual, GELU, softmax, gather, pooling,
//!   L2 norm) are written as plain loops over lane arrays that the compiler
//!   vectorises, compiled twice by [`simd_fn!`]: once for AVX2+FMA, chosen at
//!   run time with `is_x86_feature_detected!`, and once for the baseline
//!   target (SSE2 on x86-64; on aarch64 NEON and FMA are the baseline, which
//!   is what a Mac runs). No build flag is needed and none is assumed, so the
//!   default binary runs on any x86-64.
//!
//! Each output element is computed by the same arithmetic in the same order
//! whichever task computes it: the results depend on the CPU's features (FMA
//! or not), never on the thread count or timing.

use super::packed::{self, PackedWeights};
use super::pool::{self, SendPtr};
use crate::backend::Activation;

const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// erf in f32 via [`erf64`] (kept for callers that want the scalar form).
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

/// Does this CPU have AVX2 and FMA? (`std` caches the answer.)
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn has_avx2_fma() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// The instruction set the vectorised kernels run with on this CPU.
pub fn simd_level() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if packed::use_avx512() {
            "avx512f+fma"
        } else if has_avx2_fma() {
            "avx2+fma"
        } else {
            "sse2"
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        "neon+fma"
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        "portable"
    }
}

/// Define `fn name(args)` whose body is compiled for AVX-512F (taken where
/// [`packed::use_avx512`] says so: the CPU has it and `BRAID_CPU_AVX512` is
/// not 0), for AVX2+FMA (taken when the CPU has them, checked at run time)
/// and for the baseline target. The bodies are written over 16-lane arrays,
/// which the AVX-512 build holds in one register instead of two, and are the
/// same IEEE operations in the same order at every width, so all three give
/// the same bits wherever FMA is used. The
/// body is generic over `const F: bool`, true where fused multiply-add is
/// available (use [`fmadd`]), so the baseline build never calls a slow
/// software `fma`.
macro_rules! simd_fn {
    ($(#[$m:meta])* $vis:vis fn $name:ident<const $F:ident: bool>($($arg:ident : $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body<const $F: bool>($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512($($arg: $ty),*) {
                    body::<true>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) {
                    body::<true>($($arg),*)
                }
                if packed::use_avx512() {
                    // SAFETY: `use_avx512` is true only where the CPU has
                    // AVX-512F/VL/BW/DQ, AVX2 and FMA, this function's features.
                    return unsafe { avx512($($arg),*) };
                }
                if has_avx2_fma() {
                    // SAFETY: the CPU supports AVX2 and FMA (checked just above),
                    // the only requirement of this `target_feature` function.
                    return unsafe { avx2($($arg),*) };
                }
                body::<false>($($arg),*)
            }
            #[cfg(target_arch = "aarch64")]
            {
                body::<true>($($arg),*)
            }
            #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
            {
                body::<false>($($arg),*)
            }
        }
    };
}

/// `a·b + c`, fused where `F` (the target has FMA), else two roundings.
#[inline(always)]
fn fmadd<const F: bool>(a: f32, b: f32, c: f32) -> f32 {
    if F {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// e^x in f32 (Cephes `expf`: range reduction by ln 2, degree-6 polynomial,
/// ~1 ulp), branch-free so loops over it vectorise. x < -87 gives 0 (so a
/// masked `-inf` gives exactly 0); NaN stays NaN.
#[inline(always)]
fn exp_f32<const F: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5·2²³: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    // Comparisons, not min/max, so a NaN passes through.
    let xc = if x < -87.0 {
        -87.0
    } else if x > 88.0 {
        88.0
    } else {
        x
    };
    let t = fmadd::<F>(xc, LOG2E, ROUND);
    let n = t - ROUND;
    let r = fmadd::<F>(n, -LN2_HI, xc);
    let r = fmadd::<F>(n, -LN2_LO, r);
    let mut p = 1.987_569_1e-4f32;
    p = fmadd::<F>(p, r, 1.398_199_9e-3);
    p = fmadd::<F>(p, r, 8.333_452e-3);
    p = fmadd::<F>(p, r, 4.166_579_6e-2);
    p = fmadd::<F>(p, r, 1.666_666_5e-1);
    p = fmadd::<F>(p, r, 0.5);
    let y = fmadd::<F>(p, r * r, r) + 1.0;
    // 2ⁿ: t's bits are 0x4B40_0000 + n, and 0x4B40_0000 << 23 wraps to 0.
    let scale = f32::from_bits(t.to_bits().wrapping_add(127) << 23);
    if x < -87.0 {
        0.0
    } else {
        y * scale
    }
}

/// GELU, erf form, as `x·(1 − ½erfc(x/√2))` for x ≥ 0 and `x·½erfc(|x|/√2)`
/// below: no `1 + erf` cancellation in the negative tail. erfc is Numerical
/// Recipes' Chebyshev fit (|rel err| < 1.2e-7).
#[inline(always)]
fn gelu_erf<const F: bool>(x: f32) -> f32 {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / fmadd::<F>(0.5, z, 1.0);
    let mut p = 0.170_872_77f32;
    for c in [-0.822_152_23, 1.488_515_87, -1.135_203_98, 0.278_868_07, -0.186_288_06, 0.096_784_18, 0.374_091_96, 1.000_023_68, -1.265_512_23] {
        p = fmadd::<F>(p, t, c);
    }
    let half_erfc = 0.5 * t * exp_f32::<F>(fmadd::<F>(-z, z, p));
    x * if x >= 0.0 { 1.0 - half_erfc } else { half_erfc }
}

/// GELU, tanh form: 0.5·x·(1 + tanh(u)) = x / (1 + e^(−2u)), the same value
/// without cancellation for x ≪ 0.
#[inline(always)]
fn gelu_tanh<const F: bool>(x: f32) -> f32 {
    let u = SQRT_2_OVER_PI * fmadd::<F>(0.044_715 * x * x, x, x);
    x / (1.0 + exp_f32::<F>(-2.0 * u))
}

#[inline(always)]
fn act_f<const F: bool>(x: f32, a: Activation) -> f32 {
    match a {
        Activation::None => x,
        Activation::Relu => {
            if x < 0.0 {
                0.0
            } else {
                x
            }
        }
        Activation::GeluErf => gelu_erf::<F>(x),
        Activation::GeluTanh => gelu_tanh::<F>(x),
        Activation::Silu => x / (1.0 + exp_f32::<F>(-x)),
    }
}

/// One activation value (the portable form of what the kernels compute).
pub fn act(x: f32, a: Activation) -> f32 {
    act_f::<false>(x, a)
}

/// Sum of `x` over 16 lanes, combined in a fixed order.
#[inline(always)]
fn sum_f32(x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut ch = x.chunks_exact(16);
    for c in &mut ch {
        for l in 0..16 {
            acc[l] += c[l];
        }
    }
    let mut tail = 0f32;
    for &v in ch.remainder() {
        tail += v;
    }
    reduce16(acc) + tail
}

#[inline(always)]
fn reduce16(a: [f32; 16]) -> f32 {
    let mut b = [0f32; 8];
    for l in 0..8 {
        b[l] = a[l] + a[l + 8];
    }
    ((b[0] + b[4]) + (b[1] + b[5])) + ((b[2] + b[6]) + (b[3] + b[7]))
}

/// Max of `x` (−∞ for an empty slice; NaN-ignoring, like `f32::max`).
#[inline(always)]
fn max_f32(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let mut ch = x.chunks_exact(16);
    for c in &mut ch {
        for l in 0..16 {
            acc[l] = acc[l].max(c[l]);
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &v in ch.remainder() {
        m = m.max(v);
    }
    acc.iter().fold(m, |a, &b| a.max(b))
}

/// Dot product over 16 lanes, combined in a fixed order.
#[inline(always)]
fn dot<const F: bool>(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 16];
    let (mut ca, mut cb) = (a.chunks_exact(16), b.chunks_exact(16));
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..16 {
            acc[l] = fmadd::<F>(x[l], y[l], acc[l]);
        }
    }
    let mut tail = 0f32;
    for (&x, &y) in ca.remainder().iter().zip(cb.remainder()) {
        tail = fmadd::<F>(x, y, tail);
    }
    reduce16(acc) + tail
}

/// Sums of `x` and of its squares about `mean`, in f64 over 8 lanes.
#[inline(always)]
fn sum_f64(x: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let mut ch = x.chunks_exact(8);
    for c in &mut ch {
        for l in 0..8 {
            acc[l] += c[l] as f64;
        }
    }
    let mut tail = 0f64;
    for &v in ch.remainder() {
        tail += v as f64;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

#[inline(always)]
fn sq_dev_f64(x: &[f32], mean: f64) -> f64 {
    let mut acc = [0f64; 8];
    let mut ch = x.chunks_exact(8);
    for c in &mut ch {
        for l in 0..8 {
            let d = c[l] as f64 - mean;
            acc[l] += d * d;
        }
    }
    let mut tail = 0f64;
    for &v in ch.remainder() {
        let d = v as f64 - mean;
        tail += d * d;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Split `n` items of `cost` work each into tasks of whole `align`-item
/// chunks and run `f(lo, hi)` on each, on the pool when large.
fn par_ranges(n: usize, cost: usize, align: usize, f: impl Fn(usize, usize) + Sync + Send) {
    let tasks = pool::tasks_for(n.saturating_mul(cost)).min(n.div_ceil(align.max(1))).max(1);
    pool::run(tasks, |i| {
        let (lo, hi) = pool::chunk(n, tasks, i, align);
        if lo < hi {
            f(lo, hi)
        }
    });
}

/// Below this many rows the GEMM takes each weight row once and dots it with
/// every input row (no packing, which for few rows costs as much as the
/// arithmetic); from it on, `matrixmultiply`'s packed kernel.
pub const SMALL_M: usize = 8;

simd_fn! {
    /// `out[i, lo..hi] = act(a[i]·w[j] + bias[j])` for every row i < m: the
    /// few-rows GEMM, one pass over those weight rows.
    fn gemm_small<const F: bool>(m: usize, n: usize, k: usize, a: &[f32], w: &[f32], bias: Option<&[f32]>, out: SendPtr, lo: usize, hi: usize, activation: Activation) {
        for j in lo..hi {
            let wj = &w[j * k..(j + 1) * k];
            let b = bias.map_or(0.0, |b| b[j]);
            for i in 0..m {
                let v = act_f::<F>(dot::<F>(&a[i * k..(i + 1) * k], wj) + b, activation);
                // SAFETY: element (i, j) with j in this task's [lo, hi): no other
                // task writes it; `out` holds m·n elements (the caller's slice).
                unsafe { *out.0.add(i * n + j) = v };
            }
        }
    }
}

simd_fn! {
    /// `row = act(row)` in place (the GEMM epilogue).
    fn act_rows<const F: bool>(row: &mut [f32], activation: Activation) {
        for v in row.iter_mut() {
            *v = act_f::<F>(*v, activation);
        }
    }
}

/// `out[m,n] = act(a[m,k] · w[n,k]ᵀ + bias)`.
#[allow(clippy::too_many_arguments)]
pub fn gemm(m: usize, n: usize, k: usize, a: &[f32], w: &[f32], bias: Option<&[f32]>, out: &mut [f32], activation: Activation) {
    assert!(a.len() >= m * k && w.len() >= n * k && out.len() >= m * n && bias.is_none_or(|b| b.len() >= n), "gemm operands smaller than the descriptor");
    if m == 0 || n == 0 {
        return;
    }
    let o = SendPtr(out.as_mut_ptr());
    let work = m.saturating_mul(n).saturating_mul(k.max(1));
    let tasks = pool::tasks_for(work);
    if m < SMALL_M {
        let nt = tasks.min(n.div_ceil(8)).max(1);
        pool::run(nt, |t| {
            let (lo, hi) = pool::chunk(n, nt, t, 8);
            if lo < hi {
                gemm_small(m, n, k, a, w, bias, o, lo, hi, activation);
            }
        });
        return;
    }
    // One block per pool thread (not more: every block packs its rows of `a`
    // and of `w` again, and packing was a quarter of MiniLM's profile with
    // 4 blocks per thread), shaped mt × nt to pack the least in total,
    // (nt·m + mt·n)·k elements, keeping blocks at least 8 rows / 16 columns.
    let p = tasks.min(pool::threads()).max(1);
    let (mut mt, mut nt, mut best) = (1, 1, usize::MAX);
    for cand_mt in 1..=p {
        let cand_nt = p / cand_mt;
        if cand_mt * cand_nt != p || (cand_mt > 1 && m / cand_mt < 8) || (cand_nt > 1 && n / cand_nt < 16) {
            continue;
        }
        let cost = cand_nt * m + cand_mt * n;
        if cost < best {
            (mt, nt, best) = (cand_mt, cand_nt, cost);
        }
    }
    pool::run(mt * nt, |t| {
        let (r0, r1) = pool::chunk(m, mt, t / nt, 8);
        let (c0, c1) = pool::chunk(n, nt, t % nt, 16);
        if r0 >= r1 || c0 >= c1 {
            return;
        }
        // SAFETY (the block writes below): rows [r0, r1) × columns [c0, c1)
        // of `out` belong to this task alone; all indices are < m·n.
        let beta = match bias {
            Some(b) => {
                for r in r0..r1 {
                    unsafe { std::slice::from_raw_parts_mut(o.ptr().add(r * n + c0), c1 - c0) }.copy_from_slice(&b[c0..c1]);
                }
                1.0
            }
            None => 0.0,
        };
        // SAFETY: a's rows [r0, r1) and w's rows [c0, c1) are in bounds
        // (asserted above); strides describe row-major a (k, 1), wᵀ (1, k)
        // and this task's block of out (n, 1).
        unsafe {
            matrixmultiply::sgemm(
                r1 - r0, k, c1 - c0, 1.0,
                a.as_ptr().add(r0 * k), k as isize, 1,
                w.as_ptr().add(c0 * k), 1, k as isize,
                beta,
                o.ptr().add(r0 * n + c0), n as isize, 1,
            );
        }
        if activation != Activation::None {
            for r in r0..r1 {
                act_rows(unsafe { std::slice::from_raw_parts_mut(o.ptr().add(r * n + c0), c1 - c0) }, activation);
            }
        }
    });
}

/// `out[m,n] = act(a[m,k] · wᵀ + bias)` with `w` pre-packed
/// ([`PackedWeights`]): no packing at all during the call. The output is cut
/// into one block of whole 6-row tiles × whole 16-feature panels per pool
/// thread (shaped to read the least of `a` and of the pack in total); the
/// bias and activation are applied per block while it is in cache.
#[allow(clippy::too_many_arguments)]
pub fn gemm_packed(m: usize, a: &[f32], pw: &PackedWeights, bias: Option<&[f32]>, out: &mut [f32], activation: Activation) {
    let (n, k) = (pw.n(), pw.k());
    assert!(a.len() >= m * k && out.len() >= m * n && bias.is_none_or(|b| b.len() >= n), "gemm operands smaller than the descriptor");
    if m == 0 || n == 0 {
        return;
    }
    let o = SendPtr(out.as_mut_ptr());
    let panels = pw.panels();
    let work = m.saturating_mul(n).saturating_mul(k.max(1));
    // Tasks per pool thread (see `per_thread`): more than one lets threads
    // that finish early take over the work of a thread the host delayed, at
    // the price of packing rows more often; only while a task keeps
    // SPLIT_MIN_TASK multiply-adds.
    let (threads, per) = (pool::threads(), per_thread());
    let per = if work / (threads * per).max(1) >= SPLIT_MIN_TASK { per } else { 1 };
    let p = pool::tasks_for(work).min(threads * per).max(1);
    let (mr, unit) = (packed::tile_rows(), if packed::use_avx512() { 2 } else { 1 });
    let (row_tiles, col_units) = (m.div_ceil(mr), panels.div_ceil(unit));
    let (mt, nt) = gemm_split(m, n, row_tiles, col_units, p, split_mode());
    pool::run(mt * nt, |t| {
        let (r0, r1) = (row_tiles.div_ceil(mt) * mr * (t / nt), row_tiles.div_ceil(mt) * mr * (t / nt + 1));
        let (r0, r1) = (r0.min(m), r1.min(m));
        let per = col_units.div_ceil(nt) * unit;
        let (p0, p1) = ((per * (t % nt)).min(panels), (per * (t % nt + 1)).min(panels));
        if r0 >= r1 || p0 >= p1 {
            return;
        }
        // SAFETY: rows [r0, r1) × panels [p0, p1) of `out` (an m × n buffer,
        // asserted above) belong to this task alone: the chunks partition
        // rows and panels.
        unsafe { packed::gemm_block(a, pw, bias, o.ptr(), n, r0, r1, p0, p1) };
        if activation != Activation::None {
            let (c0, c1) = (p0 * packed::NR, (p1 * packed::NR).min(n));
            for r in r0..r1 {
                // SAFETY: as above, this task's rows and columns.
                act_rows(unsafe { std::slice::from_raw_parts_mut(o.ptr().add(r * n + c0), c1 - c0) }, activation);
            }
        }
    });
}

simd_fn! {
    fn add_range<const F: bool>(a: &[f32], b: &[f32], out: &mut [f32]) {
        for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
            *o = x + y;
        }
    }
}

simd_fn! {
    fn act_range<const F: bool>(x: &[f32], out: &mut [f32], activation: Activation) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = act_f::<F>(v, activation);
        }
    }
}

/// The smallest task (multiply-adds) worth splitting a GEMM further for
/// load balance: 16 M, about 0.1-0.2 ms on one core. Below it (the mlp
/// story's layers, batch 8 encoders) one task per thread is kept, as the
/// fork-join and the repeated row packing cost more than a straggler.
const SPLIT_MIN_TASK: usize = 1 << 24;

/// GEMM tasks per pool thread: `BRAID_CPU_GEMM_SPLIT_PER_THREAD` (1 to 4),
/// read once; default 2 on pools of 8 threads or more, else 1. On the
/// 16-core host (a VM whose vCPUs the hypervisor delays now and then) 2-4
/// tasks a thread beat one on 5 of 6 story rows (encoder batch 8: 1.38x;
/// `bench/results/2026-11-26-cpu16/`): the region's threads claim tasks
/// as they go, so the others absorb a delayed thread's share. On 2 cores
/// there is little to rebalance and each extra task packs its rows again.
fn per_thread() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        let default = if pool::threads() >= 8 { 2 } else { 1 };
        std::env::var("BRAID_CPU_GEMM_SPLIT_PER_THREAD").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default).clamp(1, 4)
    })
}

/// How [`gemm_packed`] splits a GEMM over the pool (`BRAID_CPU_SPLIT`, or
/// [`set_split_mode`] for in-process A/B runs): 0 balanced (the default),
/// 1 traffic (round 3: exactly p tasks, least re-reading), 2 makespan only.
static SPLIT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(usize::MAX);

fn split_mode() -> usize {
    use std::sync::atomic::Ordering::Relaxed;
    // Relaxed: a mode flag; each value is valid on its own and nothing else
    // is published through it.
    match SPLIT.load(Relaxed) {
        usize::MAX => {
            // Values other than these are refused when a device opens
            // (`config::check_cpu_knobs`).
            let v = match std::env::var("BRAID_CPU_SPLIT").as_deref().map(str::trim) {
                Ok("traffic") => 1,
                Ok("makespan") => 2,
                _ => 0,
            };
            let _ = SPLIT.compare_exchange(usize::MAX, v, Relaxed, Relaxed);
            SPLIT.load(Relaxed)
        }
        v => v,
    }
}

/// Set the GEMM split mode (see [`split_mode`]'s modes) for A/B runs.
#[doc(hidden)]
pub fn set_split_mode(mode: usize) {
    // Relaxed: as in `split_mode`.
    SPLIT.store(mode.min(2), std::sync::atomic::Ordering::Relaxed);
}

/// Split an `m × n` GEMM (`row_tiles` register tiles of rows, `col_units`
/// panel units) into `mt` row chunks × `nt` panel chunks, `mt·nt ≤ p`.
///
/// Balanced (mode 0): the largest task, counted in whole tiles × whole
/// units (a chunk that ends mid-tile still pays for the tile), within 10% of
/// the smallest possible, and among those the split that re-reads the least
/// (every row chunk reads all its panels' weights, every panel chunk packs
/// all its rows of `a`: `nt·m + mt·n`). Makespan alone (mode 2) picked
/// 1 × 16 for 2048 × 1536 (3% shorter on paper than 4 × 4, but every task
/// packed all 2048 rows) and lost 40% on the 16-core host.
fn gemm_split(m: usize, n: usize, row_tiles: usize, col_units: usize, p: usize, mode: usize) -> (usize, usize) {
    let traffic = |mt: usize, nt: usize| nt * m + mt * n;
    let cands = || (1..=p.min(row_tiles)).flat_map(move |mt| (1..=(p / mt).min(col_units)).map(move |nt| (mt, nt)));
    let span = |(mt, nt): (usize, usize)| row_tiles.div_ceil(mt) * col_units.div_ceil(nt);
    match mode {
        1 => cands().filter(|&(mt, nt)| mt * nt == p).min_by_key(|&(mt, nt)| traffic(mt, nt)).unwrap_or((1, 1)),
        2 => cands().min_by_key(|&c| (span(c), traffic(c.0, c.1))).unwrap_or((1, 1)),
        _ => {
            let best = cands().map(span).min().unwrap_or(1);
            cands().filter(|&c| span(c) * 10 <= best * 11).min_by_key(|&c| (traffic(c.0, c.1), c.0 * c.1)).unwrap_or((1, 1))
        }
    }
}

/// `out = a + b` elementwise (`out` may be `a` or `b`).
pub fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
    let n = out.len().min(a.len()).min(b.len());
    let o = SendPtr(out.as_mut_ptr());
    par_ranges(n, 1, 64, |lo, hi| {
        // SAFETY: [lo, hi) is this task's alone and within `out`; an alias of
        // `a`/`b` is read before written, element by element.
        add_range(&a[lo..hi], &b[lo..hi], unsafe { std::slice::from_raw_parts_mut(o.ptr().add(lo), hi - lo) })
    });
}

/// `out = act(x)` elementwise (`out` may be `x`).
pub fn activation(x: &[f32], out: &mut [f32], a: Activation) {
    let n = out.len().min(x.len());
    let o = SendPtr(out.as_mut_ptr());
    let cost = if matches!(a, Activation::GeluErf | Activation::GeluTanh) { 16 } else { 1 };
    par_ranges(n, cost, 64, |lo, hi| {
        // SAFETY: as in `add`.
        act_range(&x[lo..hi], unsafe { std::slice::from_raw_parts_mut(o.ptr().add(lo), hi - lo) }, a)
    });
}

simd_fn! {
    fn layer_norm_rows<const F: bool>(x: &[f32], residual: Option<&[f32]>, gamma: &[f32], beta: &[f32], out: SendPtr, r0: usize, r1: usize, cols: usize, eps: f32) {
        let mut tmp = vec![0f32; cols];
        for r in r0..r1 {
            let xr = &x[r * cols..(r + 1) * cols];
            match residual {
                Some(res) => {
                    for ((t, a), b) in tmp.iter_mut().zip(xr).zip(&res[r * cols..(r + 1) * cols]) {
                        *t = a + b;
                    }
                }
                None => tmp.copy_from_slice(xr),
            }
            let mean = sum_f64(&tmp) / cols as f64;
            let var = sq_dev_f64(&tmp, mean) / cols as f64;
            let inv = (1.0 / (var + eps as f64).sqrt()) as f32;
            let mean = mean as f32;
            // SAFETY: row r is this task's alone and within `out` (rows·cols);
            // the row was copied to `tmp` above, so `out` may alias `x`.
            let o = unsafe { std::slice::from_raw_parts_mut(out.0.add(r * cols), cols) };
            for (((o, &t), &g), &b) in o.iter_mut().zip(&tmp).zip(gamma).zip(beta) {
                *o = fmadd::<F>((t - mean) * inv, g, b);
            }
        }
    }
}

/// LayerNorm over rows of `cols`, of `x + residual` when a residual is given.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm(x: &[f32], residual: Option<&[f32]>, gamma: &[f32], beta: &[f32], out: &mut [f32], rows: usize, cols: usize, eps: f32) {
    let o = SendPtr(out.as_mut_ptr());
    par_ranges(rows, cols * 4, 1, |r0, r1| layer_norm_rows(x, residual, gamma, beta, o, r0, r1, cols, eps));
}

#[inline(always)]
fn softmax_row<const F: bool>(x: &[f32], o: &mut [f32]) {
    let max = max_f32(x);
    if max == f32::NEG_INFINITY {
        // every entry masked: define the result as uniform zeros
        o.iter_mut().for_each(|v| *v = 0.0);
        return;
    }
    for (ov, &xv) in o.iter_mut().zip(x) {
        *ov = exp_f32::<F>(xv - max);
    }
    let inv = 1.0 / sum_f32(o);
    o.iter_mut().for_each(|v| *v *= inv);
}

simd_fn! {
    fn softmax_rows<const F: bool>(x: &[f32], out: SendPtr, r0: usize, r1: usize, cols: usize) {
        for r in r0..r1 {
            // SAFETY: row r is this task's alone and within `out`; an alias of
            // `x` is read (max) before any write.
            let o = unsafe { std::slice::from_raw_parts_mut(out.0.add(r * cols), cols) };
            softmax_row::<F>(&x[r * cols..(r + 1) * cols], o);
        }
    }
}

/// Row-wise softmax.
pub fn softmax(x: &[f32], out: &mut [f32], rows: usize, cols: usize) {
    let o = SendPtr(out.as_mut_ptr());
    par_ranges(rows, cols * 8, 1, |r0, r1| softmax_rows(x, o, r0, r1, cols));
}

/// Keys per tile of the attention kernel: a tile of Kᵀ and V (2·128·64 f32
/// at head_dim 64) stays in L2 while every query of the head passes over it.
const KEY_TILE: usize = 128;


/// `ai[lo..] += Σ_jj s[jj]·vt[jj, lo..]` over the keys in order (the head
/// lanes past the last whole register block, one query).
#[inline(always)]
fn pv_lanes<const F: bool>(ai: &mut [f32], s: &[f32], vt: &[f32], hd: usize, lo: usize) {
    if lo < hd {
        for (jj, &p) in s.iter().enumerate() {
            for (av, &vv) in ai[lo..].iter_mut().zip(&vt[jj * hd + lo..(jj + 1) * hd]) {
                *av = fmadd::<F>(p, vv, *av);
            }
        }
    }
}

/// One (batch, head) of attention: key tiles of [`KEY_TILE`] keys (masked
/// keys dropped), online softmax across tiles (running max and sum per
/// query, earlier partial sums rescaled when the max grows).
///
/// Compiled three times like a [`simd_fn!`] kernel, and also over `KW`, the
/// width of its register blocks (keys per score block, head lanes per P·V
/// block), and `QB`, the queries per block: every build takes 4 × 16 (8 ymm
/// accumulators on AVX2, 4 zmm on AVX-512). Two AVX-512 shapes were tried
/// on the 16-core host: 4 × 32 was scalarised by LLVM (the MiniLM rows
/// halved), and 8 × 16 vectorised but gained nothing (MiniLM 0.87-0.98x,
/// encoder 0.80-1.05x, 3 rounds in one call; attention stayed 15% of
/// MiniLM batch 32), so the kernel is not bound by its FMA chains there.
/// Check the AVX-512 build's disassembly for zmm FMAs after any change
/// here. Each score is the same FMA chain over the head dimension, and each
/// output lane the same chain over the keys, at any block shape, so the
/// bits do not change.
#[allow(clippy::too_many_arguments)]
fn attention_head(q: &[f32], k: &[f32], v: &[f32], row_stride: usize, mask: Option<&[f32]>, bias: Option<&[f32]>, out: SendPtr, b: usize, h: usize, seq: usize, heads: usize, hd: usize, scale: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn avx512(q: &[f32], k: &[f32], v: &[f32], row_stride: usize, mask: Option<&[f32]>, bias: Option<&[f32]>, out: SendPtr, b: usize, h: usize, seq: usize, heads: usize, hd: usize, scale: f32) {
            attention_head_body::<true, 16, 4>(q, k, v, row_stride, mask, bias, out, b, h, seq, heads, hd, scale)
        }
        #[target_feature(enable = "avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn avx2(q: &[f32], k: &[f32], v: &[f32], row_stride: usize, mask: Option<&[f32]>, bias: Option<&[f32]>, out: SendPtr, b: usize, h: usize, seq: usize, heads: usize, hd: usize, scale: f32) {
            attention_head_body::<true, 16, 4>(q, k, v, row_stride, mask, bias, out, b, h, seq, heads, hd, scale)
        }
        if packed::use_avx512() {
            // SAFETY: `use_avx512` is true only where the CPU has the
            // features `avx512` is compiled for.
            return unsafe { avx512(q, k, v, row_stride, mask, bias, out, b, h, seq, heads, hd, scale) };
        }
        if has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return unsafe { avx2(q, k, v, row_stride, mask, bias, out, b, h, seq, heads, hd, scale) };
        }
        attention_head_body::<false, 16, 4>(q, k, v, row_stride, mask, bias, out, b, h, seq, heads, hd, scale)
    }
    #[cfg(target_arch = "aarch64")]
    attention_head_body::<true, 16, 4>(q, k, v, row_stride, mask, bias, out, b, h, seq, heads, hd, scale);
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    attention_head_body::<false, 16, 4>(q, k, v, row_stride, mask, bias, out, b, h, seq, heads, hd, scale);
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attention_head_body<const F: bool, const KW: usize, const QB: usize>(q: &[f32], k: &[f32], v: &[f32], row_stride: usize, mask: Option<&[f32]>, bias: Option<&[f32]>, out: SendPtr, b: usize, h: usize, seq: usize, heads: usize, hd: usize, scale: f32) {
    let d = heads * hd;
    let keys: Vec<usize> = (0..seq).filter(|&j| mask.is_none_or(|m| m[b * seq + j] != 0.0)).collect();
    let tile = KEY_TILE.min(keys.len().max(1));
    let mut kt = vec![0f32; hd * tile];
    let mut vt = vec![0f32; tile * hd];
    let mut sb = vec![0f32; QB * tile];
    let mut qs = vec![0f32; QB * hd];
    let mut acc = vec![0f32; seq * hd];
    let mut run_max = vec![f32::NEG_INFINITY; seq];
    let mut run_sum = vec![0f32; seq];
    let base = |tok: usize| (b * seq + tok) * row_stride + h * hd;
    for ks in keys.chunks(tile) {
        let tk = ks.len();
        for (jj, &j) in ks.iter().enumerate() {
            // Key rows are a whole hidden row apart (row_stride floats, 4.6
            // KiB for MiniLM's fused QKV), so each one is a fresh cache miss:
            // ask for the rows 8 keys ahead while this one is copied (the
            // load latency was 17% of this kernel's 2-core profile).
            #[cfg(target_arch = "x86_64")]
            if let Some(&jn) = ks.get(jj + 8) {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                for src in [k, v] {
                    let row = &src[base(jn)..][..hd];
                    for line in (0..hd).step_by(16) {
                        // SAFETY: a prefetch is a hint: it reads nothing
                        // architecturally and cannot fault; the address is
                        // inside `row` anyway.
                        unsafe { _mm_prefetch::<_MM_HINT_T0>(row[line..].as_ptr() as *const i8) };
                    }
                }
            }
            let kr = &k[base(j)..][..hd];
            for dd in 0..hd {
                kt[dd * tk + jj] = kr[dd];
            }
            vt[jj * hd..(jj + 1) * hd].copy_from_slice(&v[base(j)..][..hd]);
        }
        let mut i0 = 0;
        while i0 < seq {
            let qb = QB.min(seq - i0);
            // The block's queries, scaled; a short last block repeats its
            // last query (computed, never used).
            for u in 0..QB {
                let i = i0 + u.min(qb - 1);
                for (qv, &x) in qs[u * hd..(u + 1) * hd].iter_mut().zip(&q[base(i)..][..hd]) {
                    *qv = x * scale;
                }
            }
            // Scores of QB queries × KW keys at a time, kept in registers
            // across the whole head dimension (each K load serves QB
            // queries; QB·2 independent FMA chains hide the FMA latency);
            // per score the same FMA chain over d = 0..hd as a plain loop.
            let full = tk / KW * KW;
            let mut c = 0;
            while c < full {
                let mut a = [[0f32; KW]; QB];
                for dd in 0..hd {
                    let kr = &kt[dd * tk + c..dd * tk + c + KW];
                    for (u, au) in a.iter_mut().enumerate() {
                        let qd = qs[u * hd + dd];
                        for l in 0..KW {
                            au[l] = fmadd::<F>(qd, kr[l], au[l]);
                        }
                    }
                }
                for (u, au) in a.iter().enumerate() {
                    sb[u * tile + c..u * tile + c + KW].copy_from_slice(au);
                }
                c += KW;
            }
            let mut live = [false; QB];
            for u in 0..qb {
                let i = i0 + u;
                let s = &mut sb[u * tile..u * tile + tk];
                // The last < KW keys: vectorised across keys instead (the
                // same chain per score).
                let st = &mut s[full..];
                st.iter_mut().for_each(|x| *x = 0.0);
                for (dd, &qd) in qs[u * hd..(u + 1) * hd].iter().enumerate() {
                    for (sv, &kv) in st.iter_mut().zip(&kt[dd * tk + full..(dd + 1) * tk]) {
                        *sv = fmadd::<F>(qd, kv, *sv);
                    }
                }
                if let Some(bb) = bias {
                    let row = &bb[(h * seq + i) * seq..][..seq];
                    for (sv, &j) in s.iter_mut().zip(ks) {
                        *sv += row[j];
                    }
                }
                let m_new = run_max[i].max(max_f32(s));
                if m_new == f32::NEG_INFINITY {
                    // Every key so far is hidden by the bias (a window):
                    // nothing to add, and −∞ − −∞ would be NaN.
                    continue;
                }
                let corr = exp_f32::<F>(run_max[i] - m_new);
                for sv in s.iter_mut() {
                    *sv = exp_f32::<F>(*sv - m_new);
                }
                run_sum[i] = fmadd::<F>(run_sum[i], corr, sum_f32(s));
                run_max[i] = m_new;
                if corr != 1.0 {
                    acc[i * hd..(i + 1) * hd].iter_mut().for_each(|x| *x *= corr);
                }
                live[u] = true;
            }
            // P·V, KW head lanes × QB queries at a time in registers
            // across the tile's keys (each V load serves QB queries; per
            // lane the same FMA chain, key order unchanged). A short or
            // partly hidden block goes one query at a time.
            let hfull = hd / KW * KW;
            if qb == QB && live.iter().all(|&l| l) {
                let mut c = 0;
                while c < hfull {
                    let mut a = [[0f32; KW]; QB];
                    for (u, au) in a.iter_mut().enumerate() {
                        au.copy_from_slice(&acc[(i0 + u) * hd + c..(i0 + u) * hd + c + KW]);
                    }
                    for jj in 0..tk {
                        let vr = &vt[jj * hd + c..jj * hd + c + KW];
                        for (u, au) in a.iter_mut().enumerate() {
                            let p = sb[u * tile + jj];
                            for l in 0..KW {
                                au[l] = fmadd::<F>(p, vr[l], au[l]);
                            }
                        }
                    }
                    for (u, au) in a.iter().enumerate() {
                        acc[(i0 + u) * hd + c..(i0 + u) * hd + c + KW].copy_from_slice(au);
                    }
                    c += KW;
                }
                if hfull < hd {
                    for u in 0..QB {
                        pv_lanes::<F>(&mut acc[(i0 + u) * hd..(i0 + u + 1) * hd], &sb[u * tile..u * tile + tk], &vt, hd, hfull);
                    }
                }
            } else {
                for u in (0..qb).filter(|&u| live[u]) {
                    let ai = &mut acc[(i0 + u) * hd..(i0 + u + 1) * hd];
                    let s = &sb[u * tile..u * tile + tk];
                    let mut c = 0;
                    while c < hfull {
                        let mut aw = [0f32; KW];
                        aw.copy_from_slice(&ai[c..c + KW]);
                        for (jj, &p) in s.iter().enumerate() {
                            let vr = &vt[jj * hd + c..jj * hd + c + KW];
                            for l in 0..KW {
                                aw[l] = fmadd::<F>(p, vr[l], aw[l]);
                            }
                        }
                        ai[c..c + KW].copy_from_slice(&aw);
                        c += KW;
                    }
                    pv_lanes::<F>(ai, s, &vt, hd, hfull);
                }
            }
            i0 += qb;
        }
    }
    for i in 0..seq {
        // All keys masked: zeros (the softmax of an all −∞ row, by definition).
        let inv = if keys.is_empty() || run_sum[i] == 0.0 { 0.0 } else { 1.0 / run_sum[i] };
        // SAFETY: token i's head-h slice of `out` (hd elements at
        // (b·seq+i)·d + h·hd) is written by this (b, h) task alone and is
        // within out's batch·seq·d elements.
        let o = unsafe { std::slice::from_raw_parts_mut(out.0.add((b * seq + i) * d + h * hd), hd) };
        for (ov, &a) in o.iter_mut().zip(&acc[i * hd..(i + 1) * hd]) {
            *ov = a * inv;
        }
    }
}

/// See [`crate::backend::Attention`] for the layout. One task per
/// (batch, head) when the work is large enough to share.
#[allow(clippy::too_many_arguments)]
pub fn attention(q: &[f32], k: &[f32], v: &[f32], row_stride: usize, mask: Option<&[f32]>, out: &mut [f32], batch: usize, seq: usize, heads: usize, hd: usize, scale: f32) {
    attention_bias(q, k, v, row_stride, mask, None, out, batch, seq, heads, hd, scale)
}

/// [`attention`] with an optional additive `bias` `[heads, seq, seq]`
/// (shared by the batch) on the scaled scores; −∞ entries hide keys.
#[allow(clippy::too_many_arguments)]
pub fn attention_bias(q: &[f32], k: &[f32], v: &[f32], row_stride: usize, mask: Option<&[f32]>, bias: Option<&[f32]>, out: &mut [f32], batch: usize, seq: usize, heads: usize, hd: usize, scale: f32) {
    assert!(out.len() >= batch * seq * heads * hd, "attention output smaller than the descriptor");
    let o = SendPtr(out.as_mut_ptr());
    let n = batch * heads;
    let work = n.saturating_mul(seq * seq * hd * 2);
    let tasks = if pool::tasks_for(work) > 1 { n } else { 1 };
    if tasks == 1 {
        for bh in 0..n {
            attention_head(q, k, v, row_stride, mask, bias, o, bh / heads, bh % heads, seq, heads, hd, scale);
        }
    } else {
        pool::run(n, |bh| attention_head(q, k, v, row_stride, mask, bias, o, bh / heads, bh % heads, seq, heads, hd, scale));
    }
}

/// Packed (varlen) attention over `segs` (start token, tokens) of one token
/// stream, each segment attending to itself without a mask: one task per
/// (segment, head), all in one pool region, so a batch of many short
/// sequences keeps every pool thread busy with no barrier between segments.
/// The caller checked that every segment lies inside `q`/`k`/`v` (rows
/// `row_stride` apart) and `out` (`heads·hd` a token).
#[allow(clippy::too_many_arguments)]
pub fn attention_segments(q: &[f32], k: &[f32], v: &[f32], row_stride: usize, segs: &[(usize, usize)], out: &mut [f32], heads: usize, hd: usize, scale: f32) {
    let d = heads * hd;
    assert!(segs.iter().all(|&(s, l)| l == 0 || ((s + l - 1) * row_stride + d <= q.len().min(k.len()).min(v.len()) && (s + l) * d <= out.len())), "attention segments outside the operands");
    let o = SendPtr(out.as_mut_ptr());
    let n = segs.len() * heads;
    let work: usize = segs.iter().map(|&(_, l)| heads * l * l * hd * 2).sum();
    let one = |i: usize| {
        let (start, len) = segs[i / heads];
        if len == 0 {
            return;
        }
        let at = start * row_stride;
        let span = (len - 1) * row_stride + d;
        // SAFETY: the segment's `len` rows of `out` start at start·d (asserted
        // in bounds above); the (segment, head) task writes only head h's
        // columns of those rows, and segments do not overlap (the caller's
        // offsets rise).
        let os = SendPtr(unsafe { o.ptr().add(start * d) });
        attention_head(&q[at..at + span], &k[at..at + span], &v[at..at + span], row_stride, None, None, os, 0, i % heads, len, heads, hd, scale);
    };
    if pool::tasks_for(work) > 1 {
        pool::run(n, one);
    } else {
        (0..n).for_each(one);
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

/// `out[i,:] = table[ids[i],:]`.
pub fn gather(table: &[f32], ids: &[u32], out: &mut [f32], dim: usize) {
    let o = SendPtr(out.as_mut_ptr());
    assert!(out.len() >= ids.len() * dim, "gather output smaller than the descriptor");
    par_ranges(ids.len(), dim, 1, |lo, hi| {
        for (i, &id) in ids.iter().enumerate().take(hi).skip(lo) {
            let id = id as usize;
            // SAFETY: row i is this task's alone and within `out` (asserted).
            unsafe { std::slice::from_raw_parts_mut(o.ptr().add(i * dim), dim) }.copy_from_slice(&table[id * dim..(id + 1) * dim]);
        }
    });
}

simd_fn! {
    fn mean_pool_rows<const F: bool>(x: &[f32], mask: Option<&[f32]>, out: SendPtr, b0: usize, b1: usize, seq: usize, dim: usize) {
        for b in b0..b1 {
            // SAFETY: batch row b of `out` is this task's alone and in bounds.
            let o = unsafe { std::slice::from_raw_parts_mut(out.0.add(b * dim), dim) };
            o.iter_mut().for_each(|v| *v = 0.0);
            let mut count = 0f32;
            for s in 0..seq {
                let w = mask.map_or(1.0, |m| m[b * seq + s]);
                if w != 0.0 {
                    count += w;
                    for (ov, &xv) in o.iter_mut().zip(&x[(b * seq + s) * dim..][..dim]) {
                        *ov = fmadd::<F>(w, xv, *ov);
                    }
                }
            }
            let inv = 1.0 / count.max(1e-9);
            o.iter_mut().for_each(|v| *v *= inv);
        }
    }
}

/// Mean over the sequence, counting only positions the mask keeps.
pub fn mean_pool(x: &[f32], mask: Option<&[f32]>, out: &mut [f32], batch: usize, seq: usize, dim: usize) {
    assert!(out.len() >= batch * dim, "mean_pool output smaller than the descriptor");
    let o = SendPtr(out.as_mut_ptr());
    par_ranges(batch, seq * dim, 1, |b0, b1| mean_pool_rows(x, mask, o, b0, b1, seq, dim));
}

simd_fn! {
    fn l2_rows<const F: bool>(x: &[f32], out: SendPtr, r0: usize, r1: usize, cols: usize) {
        for r in r0..r1 {
            let xr = &x[r * cols..(r + 1) * cols];
            let mut acc = [0f64; 8];
            let mut ch = xr.chunks_exact(8);
            for c in &mut ch {
                for l in 0..8 {
                    acc[l] += c[l] as f64 * c[l] as f64;
                }
            }
            let tail: f64 = ch.remainder().iter().map(|&v| v as f64 * v as f64).sum();
            let ss = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail;
            let inv = (1.0 / ss.sqrt().max(1e-12)) as f32;
            // SAFETY: row r is this task's alone and within `out`; the norm
            // was computed before the row is written, so `out` may alias `x`.
            let o = unsafe { std::slice::from_raw_parts_mut(out.0.add(r * cols), cols) };
            for (o, &v) in o.iter_mut().zip(xr) {
                *o = v * inv;
            }
        }
    }
}

/// Row-wise `x / max(‖x‖₂, 1e-12)`.
pub fn l2_normalize(x: &[f32], out: &mut [f32], rows: usize, cols: usize) {
    assert!(out.len() >= rows * cols, "l2_normalize output smaller than the descriptor");
    let o = SendPtr(out.as_mut_ptr());
    par_ranges(rows, cols * 2, 1, |r0, r1| l2_rows(x, o, r0, r1, cols));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The GEMM split never makes more tasks than allowed, covers the work,
    /// and the balanced mode avoids the 1 × 16 split that made every task of
    /// 2048 × 1536 pack all rows (it chose a square-ish split instead).
    #[test]
    fn gemm_split_is_balanced_and_bounded() {
        for &(m, n, mr, unit, p) in &[(2048usize, 1536usize, 12usize, 2usize, 16usize), (4096, 384, 12, 2, 32), (128, 384, 6, 1, 2), (1, 1024, 12, 2, 16), (16, 1152, 6, 1, 16), (100, 17, 6, 1, 7)] {
            let (row_tiles, col_units) = (m.div_ceil(mr), (n.div_ceil(16)).div_ceil(unit));
            for mode in 0..3 {
                let (mt, nt) = gemm_split(m, n, row_tiles, col_units, p, mode);
                assert!(mt >= 1 && nt >= 1 && mt * nt <= p.max(1), "{m}x{n} p {p} mode {mode}: {mt} x {nt}");
                assert!(mt <= row_tiles && nt <= col_units, "{m}x{n} p {p} mode {mode}: {mt} x {nt} has empty tasks");
            }
        }
        let (mt, nt) = gemm_split(2048, 1536, 171, 48, 16, 0);
        assert!(mt > 1 && nt > 1, "balanced split of 2048 x 1536 on 16: {mt} x {nt}");
        assert_eq!(gemm_split(2048, 1536, 171, 48, 16, 2), (1, 16), "makespan-only mode is the rule the balanced one replaced");
    }

    #[test]
    fn exp_matches_std() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let got = exp_f32::<false>(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 5e-7, "exp rel err {worst}");
        assert_eq!(exp_f32::<false>(f32::NEG_INFINITY), 0.0);
        assert!(exp_f32::<false>(f32::NAN).is_nan());
    }

    /// The one-region varlen kernel gives, bitwise, what the dense kernel
    /// gives on each segment alone (batch 1, no mask): the split over
    /// (segment, head) tasks changes nothing. Segments of 5, 70, 1, 0 and 33
    /// tokens in a q|k|v row layout; large enough to use the pool.
    #[test]
    fn attention_segments_match_per_segment_dense() {
        let (heads, hd) = (12, 32);
        let d = heads * hd;
        let lens = [5usize, 70, 1, 0, 33];
        let tokens: usize = lens.iter().sum();
        let stride = 3 * d;
        let mut state = 0x5eed_u64;
        let qkv: Vec<f32> = (0..tokens * stride)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        let (q, k, v) = (&qkv[..], &qkv[d..], &qkv[2 * d..]);
        let mut segs = Vec::new();
        let mut start = 0;
        for &l in &lens {
            segs.push((start, l));
            start += l;
        }
        let scale = 1.0 / (hd as f32).sqrt();
        let mut got = vec![f32::NAN; tokens * d];
        attention_segments(q, k, v, stride, &segs, &mut got, heads, hd, scale);
        let mut want = vec![f32::NAN; tokens * d];
        for &(s, l) in segs.iter().filter(|s| s.1 > 0) {
            let (at, span) = (s * stride, (l - 1) * stride + d);
            attention(&q[at..at + span], &k[at..at + span], &v[at..at + span], stride, None, &mut want[s * d..(s + l) * d], 1, l, heads, hd, scale);
        }
        assert!(got.iter().all(|x| x.is_finite()), "every output written");
        assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "varlen differs from per-segment dense");
    }

    #[test]
    fn gelu_erf_matches_f64() {
        let mut worst = 0f64;
        let mut x = -12.0f32;
        while x < 12.0 {
            let xd = x as f64;
            let want = 0.5 * xd * (1.0 + erf64(xd * std::f64::consts::FRAC_1_SQRT_2));
            let got = gelu_erf::<false>(x) as f64;
            // relative where the value is not tiny, absolute below
            worst = worst.max((got - want).abs() / want.abs().max(1e-3));
            x += 0.0071;
        }
        assert!(worst < 2e-6, "gelu rel err {worst}");
    }
}
