//! Pre-packed GEMM weights and the register-tiled kernel that reads them.
//! Owns the packed layout ([`PackedWeights`]) and the single-threaded block
//! kernel [`gemm_block`]; splitting a GEMM over the intra-op pool is
//! [`super::kernels::gemm_packed`]'s job. Pure functions over slices: no
//! backend state, so whichever buffer boundary holds the weights can hold the
//! pack next to them.
//!
//! Layout: the weight `w[n, k]` (a Linear layer's `[out, in]`) is cut into
//! panels of [`NR`] = 16 output features; panel `p` stores, for each
//! `kk` in `0..k`, the 16 values `w[16p + j, kk]` contiguously (zero past `n`).
//! The kernel computes a 6 × 16 tile of the output in 12 AVX registers,
//! streaming one panel (two 8-lane loads per k) and broadcasting 6 input values
//! per `kk`; the input is read in place (row-major), never packed.
//!
//! Arithmetic order: every output element is `fma(a[i,kk], w[j,kk], acc)`
//! for `kk = 0, 1, …, k-1` from 0, then `+ bias` — the same for any tiling,
//! any split and any pool size, so results are bitwise deterministic on a
//! given CPU feature level (the portable path rounds each product, as a CPU
//! without FMA must).

/// Output features per packed panel (two 8-lane AVX registers).
pub const NR: usize = 16;
/// Input rows per register tile.
pub const MR: usize = 6;

/// A weight `[n, k]` in the panel layout above. Built once per weight by
/// [`PackedWeights::pack`]; immutable afterwards.
pub struct PackedWeights {
    n: usize,
    k: usize,
    data: Vec<f32>,
}

impl std::fmt::Debug for PackedWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedWeights({} x {})", self.n, self.k)
    }
}

impl PackedWeights {
    /// Pack `w` (row-major `[n, k]`, at least `n·k` elements).
    pub fn pack(w: &[f32], n: usize, k: usize) -> PackedWeights {
        assert!(w.len() >= n * k, "weight smaller than {n} x {k}");
        let panels = n.div_ceil(NR);
        let mut data = vec![0f32; panels * k * NR];
        for p in 0..panels {
            let dst = &mut data[p * k * NR..(p + 1) * k * NR];
            for j in 0..NR.min(n - p * NR) {
                let row = &w[(p * NR + j) * k..(p * NR + j + 1) * k];
                for (kk, &v) in row.iter().enumerate() {
                    dst[kk * NR + j] = v;
                }
            }
        }
        PackedWeights { n, k, data }
    }
    /// Output features (`n`).
    pub fn n(&self) -> usize {
        self.n
    }
    /// Input features (`k`).
    pub fn k(&self) -> usize {
        self.k
    }
    /// Number of 16-feature panels.
    pub fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() * 4
    }
}

/// Rows of `a` per cache block: the block of `a` (`MC × k` floats) is reused
/// across every panel of the task, so it should stay in L2 (~256 KiB here).
fn row_block(k: usize) -> usize {
    ((65536 / k.max(1)) / MR).clamp(1, 64) * MR
}

/// `out[i, 16p + j] = a[i]·w[16p + j] + bias` for rows `r0..r1` and panels
/// `p0..p1`, `out` row stride `ldo` (= n). `a` is row-major with stride `k`.
///
/// # Safety
/// `a` holds rows `r0..r1` of `k` floats; `out` points at an `m × ldo` buffer
/// whose rows `r0..r1`, columns `16·p0 .. min(16·p1, n)` no one else reads or
/// writes during the call.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_block(
    a: &[f32],
    pw: &PackedWeights,
    bias: Option<&[f32]>,
    out: *mut f32,
    ldo: usize,
    r0: usize,
    r1: usize,
    p0: usize,
    p1: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if r1 - r0 == 1 && super::kernels::has_avx2_fma() {
        // One row (batch 1, the GEMV): 4 panels at a time, 8 independent
        // accumulators instead of a 6-row tile computing 5 copies of the row.
        let mut p = p0;
        while p + 4 <= p1 {
            let mut acc = [[0f32; NR]; 4];
            // SAFETY: AVX2 and FMA are present (checked above); panels p..p+4
            // exist (p + 4 <= p1 <= panels) and row r0 holds k floats.
            unsafe { row_avx2(&a[r0 * pw.k..(r0 + 1) * pw.k], &pw.data[p * pw.k * NR..(p + 4) * pw.k * NR], pw.k, &mut acc) };
            for (q, row) in acc.iter().enumerate() {
                // SAFETY: forwarded from the caller (row r0, panel p + q ⊂ p0..p1).
                unsafe { store(&[*row], pw.n, bias, out, ldo, r0, 1, p + q) };
            }
            p += 4;
        }
        for p in p..p1 {
            // SAFETY: forwarded from the caller.
            unsafe { tile(a, pw, bias, out, ldo, r0, 1, p) };
        }
        return;
    }
    let mc = row_block(pw.k);
    let tile_rows = if use_avx512() { MR512 } else { MR };
    let mut rb = r0;
    while rb < r1 {
        let re = (rb + mc).min(r1);
        for p in p0..p1 {
            let mut r = rb;
            while r < re {
                let rows = tile_rows.min(re - r);
                // SAFETY: forwarded from the caller (rows r..r+rows ⊂ r0..r1, panel p ⊂ p0..p1).
                unsafe { tile(a, pw, bias, out, ldo, r, rows, p) };
                r += rows;
            }
        }
        rb = re;
    }
}

/// Rows per register tile of the AVX-512 kernel (12 of its 32 registers
/// accumulate, one holds the panel's 16 values).
pub const MR512: usize = 12;

/// Whether the AVX-512 tile is used: the CPU has AVX-512F and
/// `BRAID_CPU_AVX512=1` asks for it. Off by default: it could not be measured
/// or run on the machine it was written on (no AVX-512 there); it computes
/// every element with the same FMA chain as the AVX2 tile, so turning it on
/// changes speed, never results (`scripts/cpu-gemm.sh` checks both).
pub fn use_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| {
            std::env::var("BRAID_CPU_AVX512").is_ok_and(|v| v.trim() == "1")
                && std::is_x86_feature_detected!("avx512f")
                && super::kernels::has_avx2_fma()
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One `rows × 16` tile (rows ≤ 6, or ≤ [`MR512`] with AVX-512) at row `r`, panel `p`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    a: &[f32],
    pw: &PackedWeights,
    bias: Option<&[f32]>,
    out: *mut f32,
    ldo: usize,
    r: usize,
    rows: usize,
    p: usize,
) {
    let k = pw.k;
    let panel = &pw.data[p * k * NR..(p + 1) * k * NR];
    #[cfg(target_arch = "x86_64")]
    if rows > MR || use_avx512() {
        let mut arow = [&a[..0]; MR512];
        for (i, ar) in arow.iter_mut().enumerate() {
            let ri = r + i.min(rows - 1);
            *ar = &a[ri * k..(ri + 1) * k];
        }
        let mut acc = [[0f32; NR]; MR512];
        // SAFETY: `use_avx512` is true (tiles of more than MR rows are only
        // made when it is), so the CPU has AVX-512F.
        unsafe { tile_avx512(&arow, panel, k, &mut acc) };
        // SAFETY: forwarded from the caller.
        unsafe { store(&acc, pw.n, bias, out, ldo, r, rows, p) };
        return;
    }
    // Rows past `rows` repeat the last real row (computed, never stored).
    let mut arow = [&a[..0]; MR];
    for (i, ar) in arow.iter_mut().enumerate() {
        let ri = r + i.min(rows - 1);
        *ar = &a[ri * k..(ri + 1) * k];
    }
    let mut acc = [[0f32; NR]; MR];
    #[cfg(target_arch = "x86_64")]
    {
        if super::kernels::has_avx2_fma() {
            // SAFETY: AVX2 and FMA are present (checked just above).
            unsafe { tile_avx2(&arow, panel, k, &mut acc) };
        } else {
            tile_portable(&arow, panel, k, &mut acc);
        }
    }
    #[cfg(target_arch = "aarch64")]
    tile_fma(&arow, panel, k, &mut acc);
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    tile_portable(&arow, panel, k, &mut acc);
    // SAFETY: forwarded from the caller.
    unsafe { store(&acc, pw.n, bias, out, ldo, r, rows, p) };
}

/// Write the first `rows` rows of a tile (plus the bias) to `out`.
///
/// # Safety
/// Rows `r..r+rows`, columns of panel `p` below `n`, of the `ldo`-strided
/// `out` are the caller's alone.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn store<const R: usize>(
    acc: &[[f32; NR]; R],
    n: usize,
    bias: Option<&[f32]>,
    out: *mut f32,
    ldo: usize,
    r: usize,
    rows: usize,
    p: usize,
) {
    let c0 = p * NR;
    let cols = NR.min(n - c0);
    for (i, row) in acc.iter().enumerate().take(rows) {
        // SAFETY: row r+i < r1 and columns c0..c0+cols < n belong to this call
        // (the caller's contract); the buffer holds m × ldo floats.
        let o = unsafe { std::slice::from_raw_parts_mut(out.add((r + i) * ldo + c0), cols) };
        match bias {
            Some(b) => {
                for ((ov, &v), &bv) in o.iter_mut().zip(row).zip(&b[c0..c0 + cols]) {
                    *ov = v + bv;
                }
            }
            None => o.copy_from_slice(&row[..cols]),
        }
    }
}

/// The tile on AVX2+FMA: 12 accumulators of 8 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2(arow: &[&[f32]; MR], panel: &[f32], k: usize, acc: &mut [[f32; NR]; MR]) {
    use std::arch::x86_64::*;
    debug_assert!(panel.len() >= k * NR && arow.iter().all(|r| r.len() >= k));
    let mut c = [[_mm256_setzero_ps(); 2]; MR];
    let pp = panel.as_ptr();
    let ap: [*const f32; MR] = std::array::from_fn(|i| arow[i].as_ptr());
    for kk in 0..k {
        // SAFETY: kk < k; the panel holds k × 16 floats and every row k floats
        // (asserted in debug, guaranteed by `tile`'s slicing).
        unsafe {
            let b0 = _mm256_loadu_ps(pp.add(kk * NR));
            let b1 = _mm256_loadu_ps(pp.add(kk * NR + 8));
            for i in 0..MR {
                let av = _mm256_broadcast_ss(&*ap[i].add(kk));
                c[i][0] = _mm256_fmadd_ps(av, b0, c[i][0]);
                c[i][1] = _mm256_fmadd_ps(av, b1, c[i][1]);
            }
        }
    }
    for i in 0..MR {
        // SAFETY: acc[i] is 16 floats; each store writes 8.
        unsafe {
            _mm256_storeu_ps(acc[i].as_mut_ptr(), c[i][0]);
            _mm256_storeu_ps(acc[i].as_mut_ptr().add(8), c[i][1]);
        }
    }
}

/// One row against 4 consecutive panels (`panels` holds 4·k·16 floats) on
/// AVX2+FMA: 8 accumulators of 8 lanes, each output element the same FMA chain
/// over kk = 0..k as in [`tile_avx2`] (so the same bits).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_avx2(arow: &[f32], panels: &[f32], k: usize, acc: &mut [[f32; NR]; 4]) {
    use std::arch::x86_64::*;
    debug_assert!(panels.len() >= 4 * k * NR && arow.len() >= k);
    let mut c = [_mm256_setzero_ps(); 8];
    let pp = panels.as_ptr();
    for kk in 0..k {
        // SAFETY: kk < k; every panel holds k × 16 floats and the row k floats
        // (asserted in debug, guaranteed by the caller's slicing).
        unsafe {
            let av = _mm256_broadcast_ss(&*arow.as_ptr().add(kk));
            for q in 0..4 {
                let b = pp.add(q * k * NR + kk * NR);
                c[2 * q] = _mm256_fmadd_ps(av, _mm256_loadu_ps(b), c[2 * q]);
                c[2 * q + 1] = _mm256_fmadd_ps(av, _mm256_loadu_ps(b.add(8)), c[2 * q + 1]);
            }
        }
    }
    for q in 0..4 {
        // SAFETY: acc[q] is 16 floats; each store writes 8.
        unsafe {
            _mm256_storeu_ps(acc[q].as_mut_ptr(), c[2 * q]);
            _mm256_storeu_ps(acc[q].as_mut_ptr().add(8), c[2 * q + 1]);
        }
    }
}

/// The tile on AVX-512F: 12 accumulators of 16 lanes, the same FMA chain
/// per element as [`tile_avx2`] (so the same bits).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512(
    arow: &[&[f32]; MR512],
    panel: &[f32],
    k: usize,
    acc: &mut [[f32; NR]; MR512],
) {
    use std::arch::x86_64::*;
    debug_assert!(panel.len() >= k * NR && arow.iter().all(|r| r.len() >= k));
    let mut c = [_mm512_setzero_ps(); MR512];
    let pp = panel.as_ptr();
    let ap: [*const f32; MR512] = std::array::from_fn(|i| arow[i].as_ptr());
    for kk in 0..k {
        // SAFETY: kk < k; the panel holds k × 16 floats and every row k floats.
        unsafe {
            let b = _mm512_loadu_ps(pp.add(kk * NR));
            for i in 0..MR512 {
                c[i] = _mm512_fmadd_ps(_mm512_set1_ps(*ap[i].add(kk)), b, c[i]);
            }
        }
    }
    for i in 0..MR512 {
        // SAFETY: acc[i] is 16 floats.
        unsafe { _mm512_storeu_ps(acc[i].as_mut_ptr(), c[i]) };
    }
}

/// The tile with fused multiply-add in the baseline target (aarch64: NEON
/// and FMA are always there; the compiler vectorises the lane loop).
#[cfg(target_arch = "aarch64")]
fn tile_fma(arow: &[&[f32]; MR], panel: &[f32], k: usize, acc: &mut [[f32; NR]; MR]) {
    for kk in 0..k {
        let b = &panel[kk * NR..(kk + 1) * NR];
        for i in 0..MR {
            let av = arow[i][kk];
            for j in 0..NR {
                acc[i][j] = av.mul_add(b[j], acc[i][j]);
            }
        }
    }
}

/// The tile without FMA (products rounded before the add).
#[allow(dead_code)]
fn tile_portable(arow: &[&[f32]; MR], panel: &[f32], k: usize, acc: &mut [[f32; NR]; MR]) {
    for kk in 0..k {
        let b = &panel[kk * NR..(kk + 1) * NR];
        for i in 0..MR {
            let av = arow[i][kk];
            for j in 0..NR {
                acc[i][j] += av * b[j];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-row path (batch 1) gives the same bits as the same row
    /// computed inside a multi-row tile, and the f64 answer.
    #[test]
    fn one_row_path_matches_the_tile_bitwise() {
        let (n, k) = (16 * 9 + 5, 300);
        let a: Vec<f32> = (0..3 * k).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 104729 % 997) as f32 / 498.5) - 1.0).collect();
        let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
        let pw = PackedWeights::pack(&w, n, k);
        let mut three = vec![f32::NAN; 3 * n];
        // SAFETY: out is 3 × n, the call owns all of it.
        unsafe { gemm_block(&a, &pw, Some(&b), three.as_mut_ptr(), n, 0, 3, 0, pw.panels()) };
        for r in 0..3 {
            let mut one = vec![f32::NAN; n];
            // SAFETY: out is 1 × n (row r of `a` given as a 1-row matrix).
            unsafe { gemm_block(&a[r * k..(r + 1) * k], &pw, Some(&b), one.as_mut_ptr(), n, 0, 1, 0, pw.panels()) };
            assert!(one.iter().zip(&three[r * n..(r + 1) * n]).all(|(x, y)| x.to_bits() == y.to_bits()), "row {r}: one-row path differs from the tile");
            let worst = (0..n).map(|j| ((0..k).map(|kk| a[r * k + kk] as f64 * w[j * k + kk] as f64).sum::<f64>() + b[j] as f64 - one[j] as f64).abs()).fold(0f64, f64::max);
            assert!(worst < 1e-4, "row {r}: off by {worst}");
        }
    }

    #[test]
    fn packed_block_matches_f64() {
        // Odd sizes: partial row tiles, a partial panel, k not a multiple of 8.
        for &(m, n, k) in &[(1, 1, 1), (7, 33, 19), (13, 48, 64), (50, 17, 300)] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 104729 % 997) as f32 / 498.5) - 1.0)
                .collect();
            let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
            let pw = PackedWeights::pack(&w, n, k);
            let mut out = vec![f32::NAN; m * n];
            // SAFETY: out is m × n, the call owns all of it.
            unsafe { gemm_block(&a, &pw, Some(&b), out.as_mut_ptr(), n, 0, m, 0, pw.panels()) };
            let (mut num, mut den) = (0f64, 0f64);
            for i in 0..m {
                for j in 0..n {
                    let r: f64 = (0..k)
                        .map(|kk| a[i * k + kk] as f64 * w[j * k + kk] as f64)
                        .sum::<f64>()
                        + b[j] as f64;
                    num += (out[i * n + j] as f64 - r).powi(2);
                    den += r * r;
                }
            }
            let rel = (num / den.max(1e-30)).sqrt();
            assert!(rel < 1e-5, "{m}x{n}x{k}: rel err {rel}");
        }
    }
}
