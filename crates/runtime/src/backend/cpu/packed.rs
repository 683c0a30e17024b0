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

/// Rows of `a` per cache block: the packed block of `a` (`MC × k` floats) is
/// reused across every panel of the task, so it should stay in L2 (256 KiB;
/// every x86 core since 2008 has at least that much).
fn row_block(k: usize, mr: usize) -> usize {
    ((65536 / k.max(1)) / mr).clamp(1, 64) * mr
}

/// Rows per register tile on this CPU: [`MR512`] with AVX-512F, else [`MR`].
pub fn tile_rows() -> usize {
    if use_avx512() {
        MR512
    } else {
        MR
    }
}

thread_local! {
    /// The calling thread's packed rows of `a` (see [`pack_rows`]), kept
    /// between calls: a fresh 256 KiB `Vec` per call would be an `mmap` and
    /// page faults per GEMM task in glibc's allocator.
    static APACK: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Pack rows `rb..re`, columns `k0..k1` of the row-major `a` (stride `k`)
/// into tiles of `mr` rows, k-major: with `kc = k1 − k0`, tile `t`, element
/// `(kk, i)` at `(t·kc + kk)·mr + i` is `a[rb + t·mr + i, k0 + kk]`, zero for
/// rows past `re` (computed, never stored). The kernels then read one
/// pointer with fixed offsets (one register, no spilled row pointers) and
/// the hardware prefetcher sees one stream.
#[allow(clippy::too_many_arguments)]
fn pack_rows(a: &[f32], k: usize, rb: usize, re: usize, k0: usize, k1: usize, mr: usize, dst: &mut Vec<f32>) {
    let tiles = (re - rb).div_ceil(mr);
    let kc = k1 - k0;
    // Every element is written below (the rows past `re` as zeros), so the
    // buffer is only grown, never cleared: clearing it was a memset of up to
    // 256 KiB per block, 3.5% of a 2-core MiniLM profile.
    if dst.len() < tiles * kc * mr {
        dst.resize(tiles * kc * mr, 0.0);
    }
    for t in 0..tiles {
        let tile = &mut dst[t * kc * mr..(t + 1) * kc * mr];
        let real = mr.min(re - rb - t * mr);
        #[cfg(target_arch = "x86_64")]
        if mr == MR512 && kc >= 16 {
            let r0 = rb + t * mr;
            assert!(a.len() >= (r0 + real - 1) * k + k1 && tile.len() >= kc * MR512);
            // SAFETY: tiles of MR512 rows are only made when the AVX-512
            // tile is in use, i.e. where the CPU has AVX-512F; rows
            // r0..r0+real hold columns k0..k1 of `a` and `tile` kc × 12
            // floats (asserted just above).
            unsafe { pack_tile_avx512(a.as_ptr().add(r0 * k + k0), k, real, kc, tile.as_mut_ptr()) };
            continue;
        }
        for i in 0..real {
            let r = rb + t * mr + i;
            for (kk, &v) in a[r * k + k0..r * k + k1].iter().enumerate() {
                tile[kk * mr + i] = v;
            }
        }
        if real < mr {
            for kk in 0..kc {
                tile[kk * mr + real..(kk + 1) * mr].fill(0.0);
            }
        }
    }
}

/// One 12-row tile of [`pack_rows`] on AVX-512: 16 columns at a time, the
/// 12 rows (4 zero rows below them) are loaded as 16 vectors, transposed in
/// registers (the standard unpack / shuffle / 128-bit-lane shuffle
/// sequence: 64 shuffles per 256 values) and written as 16 runs of 12
/// floats. The scalar loop it replaces stored one float at a time, 48 bytes
/// apart, and was 11-18% of the 16-core host's MiniLM and encoder profiles
/// (`perf`, `bench/results/2026-11-26-cpu16/perf/`).
///
/// # Safety
/// The CPU has AVX-512F; `a` points at row 0, column 0 of the slice, rows
/// are `lda` floats apart and `rows` ≤ 12 of them hold `kc` floats; `dst`
/// holds `kc × 12` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pack_tile_avx512(a: *const f32, lda: usize, rows: usize, kc: usize, dst: *mut f32) {
    use std::arch::x86_64::*;
    let mut kk = 0;
    while kk + 16 <= kc {
        // SAFETY: row i < rows holds columns kk..kk+16 < kc (the caller's contract).
        let mut r: [__m512; 16] = std::array::from_fn(|i| if i < rows { unsafe { _mm512_loadu_ps(a.add(i * lda + kk)) } } else { _mm512_setzero_ps() });
        let mut t = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        for g in 0..4 {
            let b = 4 * g;
            r[b] = _mm512_shuffle_ps::<0x44>(t[b], t[b + 2]);
            r[b + 1] = _mm512_shuffle_ps::<0xEE>(t[b], t[b + 2]);
            r[b + 2] = _mm512_shuffle_ps::<0x44>(t[b + 1], t[b + 3]);
            r[b + 3] = _mm512_shuffle_ps::<0xEE>(t[b + 1], t[b + 3]);
        }
        for h in 0..2 {
            let b = 8 * h;
            for q in 0..4 {
                t[b + q] = _mm512_shuffle_f32x4::<0x88>(r[b + q], r[b + 4 + q]);
                t[b + 4 + q] = _mm512_shuffle_f32x4::<0xDD>(r[b + q], r[b + 4 + q]);
            }
        }
        for q in 0..8 {
            r[q] = _mm512_shuffle_f32x4::<0x88>(t[q], t[8 + q]);
            r[8 + q] = _mm512_shuffle_f32x4::<0xDD>(t[q], t[8 + q]);
        }
        // r[j] lane i is row i, column kk + j: its first 12 lanes are the
        // tile's 12 values for that column.
        for (j, v) in r.iter().enumerate() {
            // SAFETY: (kk + j)·12 + 12 ≤ kc·12, inside `dst`.
            unsafe { _mm512_mask_storeu_ps(dst.add((kk + j) * MR512), 0x0FFF, *v) };
        }
        kk += 16;
    }
    for kk in kk..kc {
        for i in 0..MR512 {
            // SAFETY: as above; rows past `rows` are written as zeros.
            unsafe { *dst.add(kk * MR512 + i) = if i < rows { *a.add(i * lda + kk) } else { 0.0 } };
        }
    }
}

/// `out[i, 16p + j] = a[i]·w[16p + j] + bias` for rows `r0..r1` and panels
/// `p0..p1`, `out` row stride `ldo` (= n). `a` is row-major with stride `k`.
///
/// Loop order (per task): rows in blocks of [`row_block`] rows, packed once
/// per block ([`pack_rows`]); for each panel (a pair of panels on AVX-512,
/// so a 12 × 32 tile), every row tile of the block. The panel (pair) is
/// reused by every row tile while it is in L1/L2, the packed block by every
/// panel while it is in L2.
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
    // SAFETY: forwarded from the caller; `use_avx512()` is true only where
    // the CPU has AVX-512F.
    unsafe { gemm_block_at(a, pw, bias, out, ldo, r0, r1, p0, p1, use_avx512()) }
}

/// [`gemm_block`] with the tile chosen by `avx512` (tests compare both).
///
/// # Safety
/// As [`gemm_block`]; `avx512` only where the CPU has AVX-512F and AVX2+FMA.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_block_at(
    a: &[f32],
    pw: &PackedWeights,
    bias: Option<&[f32]>,
    out: *mut f32,
    ldo: usize,
    r0: usize,
    r1: usize,
    p0: usize,
    p1: usize,
    avx512: bool,
) {
    if r0 >= r1 || p0 >= p1 {
        return;
    }
    let k = pw.k;
    #[cfg(target_arch = "x86_64")]
    if r1 - r0 == 1 && super::kernels::has_avx2_fma() {
        // One row (batch 1, the GEMV): 4 panels at a time, 8 independent
        // accumulators instead of a 6-row tile computing 5 copies of the row.
        let row = &a[r0 * k..(r0 + 1) * k];
        let mut p = p0;
        while p < p1 {
            let q = (p1 - p).min(4);
            let mut acc = [[0f32; NR]; 4];
            let panels = &pw.data[p * k * NR..(p + q) * k * NR];
            // SAFETY: AVX2 and FMA are present (checked above); `panels`
            // holds q·k·16 floats and `row` k floats (sliced just above).
            unsafe {
                match q {
                    4 => row_avx2::<4>(row, panels, k, &mut acc),
                    3 => row_avx2::<3>(row, panels, k, &mut acc),
                    2 => row_avx2::<2>(row, panels, k, &mut acc),
                    _ => row_avx2::<1>(row, panels, k, &mut acc),
                }
            }
            for (qq, acc_q) in acc.iter().enumerate().take(q) {
                // SAFETY: forwarded from the caller (row r0, panel p + qq ⊂ p0..p1).
                unsafe { store(&[*acc_q], NR, pw.n, bias, out, ldo, r0, 1, (p + qq) * NR) };
            }
            p += q;
        }
        return;
    }
    let mr = if avx512 { MR512 } else { MR };
    let kc = k_block(k);
    let mc = row_block(kc, mr);
    APACK.with(|cell| {
        let mut buf = cell.borrow_mut();
        let mut rb = r0;
        while rb < r1 {
            let re = (rb + mc).min(r1);
            let tiles = (re - rb).div_ceil(mr);
            let mut k0 = 0;
            while k0 < k {
                let k1 = (k0 + kc).min(k);
                let part = KPart { k0, k1, first: k0 == 0, last: k1 == k };
                pack_rows(a, k, rb, re, k0, k1, mr, &mut buf);
                let mut p = p0;
                while p < p1 {
                    let pair = avx512 && p + 1 < p1;
                    for t in 0..tiles {
                        let rows = mr.min(re - rb - t * mr);
                        let pa = &buf[t * (k1 - k0) * mr..(t + 1) * (k1 - k0) * mr];
                        // SAFETY: forwarded from the caller (rows rb+t·mr ..
                        // +rows ⊂ r0..r1, panels p (and p+1 if `pair`) ⊂
                        // p0..p1); `pa` is one packed tile of `mr` rows and
                        // k1 − k0 columns.
                        unsafe { tile(pa, pw, bias, out, ldo, rb + t * mr, rows, p, pair, avx512, part) };
                    }
                    p += if pair { 2 } else { 1 };
                }
                k0 = k1;
            }
            rb = re;
        }
    });
}

/// Columns of `k` per cache block: all of them, or 256 above k = 512 when
/// k-blocking is on, so the weight panels' slice a tile reads (256 × 32
/// floats on AVX-512, 32 KiB) stays in L1 across the row tiles of a block.
/// On by default with the AVX-512 tile only, whose panel pair is 128 bytes a
/// k (MiniLM's k = 1536: 192 KiB, four times L1); `BRAID_CPU_KBLOCK=0/1` (or
/// [`set_k_blocking`]) overrides. Measured, same call, 3 rounds, 16-core
/// AVX-512 host: MiniLM batch 8/32/128 1.04/1.13/1.15x and mlp batch
/// 64/256 1.23/1.16x with it, encoder mixed (1.13/0.90/0.86x); an earlier
/// call had MiniLM the other way (0.90-0.94x), so on that noisy host it is
/// a small gain at best. On the 2-core AVX2 machine (16-wide panels, 64
/// bytes a k) it lost: `gemm_shapes --ab`, 2048 × 384 × 1536 on two threads
/// 84 GFLOP/s with it, 120 without (`bench/results/2026-11-26-cpu16/`).
/// Either way a result's bits are the same: a partial sum is stored to the
/// output as the f32 it is and the next block's FMA chain continues from it;
/// the bias is added after the last block.
fn k_block(k: usize) -> usize {
    if k <= 512 || !k_blocking() {
        k.max(1)
    } else {
        256
    }
}

/// 0: not read yet; 1: on; 2: off.
static KBLOCK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn k_blocking() -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    // Relaxed: a mode flag; each value is valid on its own and nothing else
    // is published through it.
    match KBLOCK.load(Relaxed) {
        0 => {
            let on = match std::env::var("BRAID_CPU_KBLOCK").as_deref().map(str::trim) {
                Ok("1") => true,
                Ok("0") => false,
                _ => use_avx512(),
            };
            let _ = KBLOCK.compare_exchange(0, if on { 1 } else { 2 }, Relaxed, Relaxed);
            KBLOCK.load(Relaxed) == 1
        }
        v => v == 1,
    }
}

/// Turn k-blocking on or off at run time (in-process A/B runs).
#[doc(hidden)]
pub fn set_k_blocking(on: bool) {
    // Relaxed: as in `k_blocking`.
    KBLOCK.store(if on { 1 } else { 2 }, std::sync::atomic::Ordering::Relaxed);
}

/// Which slice `k0..k1` of the k dimension a tile call computes, and whether
/// it is the first (start from zero) and the last (add the bias, write the
/// result) of the row.
#[derive(Clone, Copy)]
struct KPart {
    k0: usize,
    k1: usize,
    first: bool,
    last: bool,
}

/// Rows per register tile of the AVX-512 kernel: 12 rows × 32 columns (two
/// panels) in 24 of its 32 registers.
pub const MR512: usize = 12;

/// Whether the AVX-512 tile (and the AVX-512 build of the other kernels) is
/// used: the CPU has AVX-512F/VL/BW/DQ (every AVX-512 CPU since Skylake-SP)
/// and AVX2+FMA, unless `BRAID_CPU_AVX512=0`. It computes every element with the same FMA
/// chain as the AVX2 tile, so it changes speed, never results
/// (`scripts/cpu-gemm.sh` checks both give the same hash).
pub fn use_avx512() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    // A value other than 0/1 is refused when a device opens
    // (`config::check_cpu_knobs`); here it means the default.
    *ON.get_or_init(|| std::env::var("BRAID_CPU_AVX512").map_or(true, |v| v.trim() != "0") && cpu_has_avx512())
}

/// Whether this CPU has what the AVX-512 paths use: AVX-512F/BW/DQ/VL,
/// AVX2 and FMA.
pub fn cpu_has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512dq")
            && super::kernels::has_avx2_fma()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One tile: `rows` rows (≤ the packed tile's rows) at output row `r`,
/// panel `p`, and panel `p + 1` too when `pair` (AVX-512 only), over the k
/// slice `part`: it starts from zero on the first slice and from the partial
/// sums it stored in `out` otherwise, and adds the bias on the last.
///
/// # Safety
/// As [`gemm_block_at`], for these rows and panels; `pa` is one packed tile
/// of [`MR512`] rows if `avx512`, else [`MR`], and `part.k1 − part.k0`
/// columns; on a slice after the first, `out` holds this call's partial sums.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile(pa: &[f32], pw: &PackedWeights, bias: Option<&[f32]>, out: *mut f32, ldo: usize, r: usize, rows: usize, p: usize, pair: bool, avx512: bool, part: KPart) {
    let k = pw.k;
    let (k0, kc) = (part.k0, part.k1 - part.k0);
    let c0 = p * NR;
    let bias = if part.last { bias } else { None };
    #[cfg(target_arch = "x86_64")]
    if avx512 {
        let width = if pair { 2 * NR } else { NR };
        let panels = &pw.data[p * k * NR..(p + 1 + pair as usize) * k * NR];
        // A tile whose rows are all real (4, 8 or 12: the kernel's own row
        // count) and whose columns all lie below n is written from the
        // registers; any other goes through `acc` and `store`.
        let direct = (matches!(rows, 4 | 8 | 12) && c0 + width <= pw.n).then(|| Direct::at(out, ldo, r, c0, bias));
        // The spill array is made (zeroed: a memset per tile) only where it
        // is used: to resume a k slice, or for a tile not stored directly.
        let mut spill;
        let mut acc = if direct.is_none() || !part.first {
            spill = [[0f32; 2 * NR]; MR512];
            if !part.first {
                // SAFETY: forwarded from the caller (the partial sums are its).
                unsafe { load(&mut spill, width, pw.n, out, ldo, r, rows, c0) };
            }
            Some(&mut spill)
        } else {
            None
        };
        let first = part.first;
        // SAFETY: `avx512` is only set where the CPU has AVX-512F; `pa` holds
        // kc × 12 floats; every panel holds k × 16 floats, and the kernel
        // reads rows k0..k0+kc of each (`pstride` apart); `direct`, if any,
        // covers this call's rows and columns (forwarded from the caller).
        unsafe {
            let (pp, ps) = (&panels[k0 * NR..], k * NR);
            match (pair, rows) {
                (true, 1..=4) => tile_avx512::<4, 2>(pa, pp, ps, kc, first, acc.as_deref_mut(), direct),
                (true, 5..=8) => tile_avx512::<8, 2>(pa, pp, ps, kc, first, acc.as_deref_mut(), direct),
                (true, _) => tile_avx512::<12, 2>(pa, pp, ps, kc, first, acc.as_deref_mut(), direct),
                (false, 1..=4) => tile_avx512::<4, 1>(pa, pp, ps, kc, first, acc.as_deref_mut(), direct),
                (false, 5..=8) => tile_avx512::<8, 1>(pa, pp, ps, kc, first, acc.as_deref_mut(), direct),
                (false, _) => tile_avx512::<12, 1>(pa, pp, ps, kc, first, acc.as_deref_mut(), direct),
            }
        }
        if let (None, Some(acc)) = (direct, acc) {
            // SAFETY: forwarded from the caller (columns c0..c0+width are
            // panels p and, if `pair`, p + 1).
            unsafe { store(acc, width, pw.n, bias, out, ldo, r, rows, c0) };
        }
        return;
    }
    let panel = &pw.data[p * k * NR + k0 * NR..p * k * NR + (k0 + kc) * NR];
    #[cfg(target_arch = "x86_64")]
    if super::kernels::has_avx2_fma() && rows == MR && c0 + NR <= pw.n && part.first {
        // A whole tile on its first k slice: no spill array at all.
        // SAFETY: AVX2 and FMA are present (checked just above); `pa` holds
        // kc × 6 floats, `panel` kc × 16; the direct target covers this
        // call's rows and columns (forwarded from the caller).
        unsafe { tile_avx2(pa, panel, kc, None, Some(Direct::at(out, ldo, r, c0, bias))) };
        return;
    }
    let mut acc = [[0f32; NR]; MR];
    if !part.first {
        // SAFETY: forwarded from the caller (the partial sums are its).
        unsafe { load(&mut acc, NR, pw.n, out, ldo, r, rows, c0) };
    }
    #[cfg(target_arch = "x86_64")]
    {
        if super::kernels::has_avx2_fma() {
            let direct = (rows == MR && c0 + NR <= pw.n).then(|| Direct::at(out, ldo, r, c0, bias));
            // SAFETY: AVX2 and FMA are present (checked just above); `pa`
            // holds kc × 6 floats, `panel` kc × 16; `direct`, if any, covers
            // this call's rows and columns (forwarded from the caller).
            unsafe { tile_avx2(pa, panel, kc, Some(&mut acc), direct) };
            if direct.is_some() {
                return;
            }
        } else {
            tile_portable(pa, panel, kc, &mut acc);
        }
    }
    #[cfg(target_arch = "aarch64")]
    tile_fma(pa, panel, kc, &mut acc);
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    tile_portable(pa, panel, kc, &mut acc);
    // SAFETY: forwarded from the caller.
    unsafe { store(&acc, NR, pw.n, bias, out, ldo, r, rows, c0) };
}

/// Where a whole tile goes when every one of its rows and columns is real:
/// the kernel adds the bias and stores its registers there itself, instead
/// of spilling them to an array that baseline (SSE2) code then copies, which
/// was 6-7% of a 2-core MiniLM profile.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Direct {
    /// The tile's first element in `out`.
    out: *mut f32,
    ldo: usize,
    /// The bias at the tile's first column, or null (no bias, or not the
    /// last k slice).
    bias: *const f32,
}

#[cfg(target_arch = "x86_64")]
impl Direct {
    fn at(out: *mut f32, ldo: usize, r: usize, c0: usize, bias: Option<&[f32]>) -> Direct {
        // `wrapping_add`: only an address here; the kernel writes through it
        // under its caller's contract.
        Direct { out: out.wrapping_add(r * ldo + c0), ldo, bias: bias.map_or(std::ptr::null(), |b| b[c0..].as_ptr()) }
    }
}

/// Read the partial sums a tile stored on its previous k slice back into
/// `acc` (rows `r..r+rows`, columns `c0..min(c0 + width, n)`; other lanes
/// stay zero).
///
/// # Safety
/// As [`store`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn load<const R: usize, const W: usize>(acc: &mut [[f32; W]; R], width: usize, n: usize, out: *mut f32, ldo: usize, r: usize, rows: usize, c0: usize) {
    let cols = width.min(W).min(n - c0);
    for (i, row) in acc.iter_mut().enumerate().take(rows) {
        // SAFETY: row r+i, columns c0..c0+cols < n are the caller's; the
        // buffer holds m × ldo floats.
        let o = unsafe { std::slice::from_raw_parts(out.add((r + i) * ldo + c0), cols) };
        row[..cols].copy_from_slice(o);
    }
}

/// Write the first `rows` rows of a tile (plus the bias) to `out` at column
/// `c0`: `width` ≤ W columns, cut at `n`.
///
/// # Safety
/// Rows `r..r+rows`, columns `c0..min(c0 + width, n)` of the `ldo`-strided
/// `out` are the caller's alone.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn store<const R: usize, const W: usize>(
    acc: &[[f32; W]; R],
    width: usize,
    n: usize,
    bias: Option<&[f32]>,
    out: *mut f32,
    ldo: usize,
    r: usize,
    rows: usize,
    c0: usize,
) {
    let cols = width.min(W).min(n - c0);
    for (i, row) in acc.iter().enumerate().take(rows) {
        // SAFETY: row r+i and columns c0..c0+cols < n belong to this call
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

/// The tile on AVX2+FMA: 6 packed rows × one panel in 12 accumulators of 8
/// lanes, continuing from the sums in `acc`. Per k: two panel loads, six
/// broadcasts from one pointer.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2(pa: &[f32], panel: &[f32], k: usize, mut acc: Option<&mut [[f32; NR]; MR]>, direct: Option<Direct>) {
    use std::arch::x86_64::*;
    debug_assert!(panel.len() >= k * NR && pa.len() >= k * MR && (acc.is_some() || direct.is_some()));
    // Start from the sums in `acc` when there is one, else from zero.
    let mut c: [[__m256; 2]; MR] = match &acc {
        // SAFETY: acc[i] is 16 floats; each load reads 8.
        Some(a) => std::array::from_fn(|i| unsafe { [_mm256_loadu_ps(a[i].as_ptr()), _mm256_loadu_ps(a[i].as_ptr().add(8))] }),
        None => [[_mm256_setzero_ps(); 2]; MR],
    };
    let pp = panel.as_ptr();
    let ap = pa.as_ptr();
    for kk in 0..k {
        // SAFETY: kk < k; the panel holds k × 16 floats and the packed tile
        // k × 6 (asserted in debug, guaranteed by the callers' slicing).
        unsafe {
            let b0 = _mm256_loadu_ps(pp.add(kk * NR));
            let b1 = _mm256_loadu_ps(pp.add(kk * NR + 8));
            for (i, ci) in c.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*ap.add(kk * MR + i));
                ci[0] = _mm256_fmadd_ps(av, b0, ci[0]);
                ci[1] = _mm256_fmadd_ps(av, b1, ci[1]);
            }
        }
    }
    if let Some(d) = direct {
        for (i, ci) in c.iter().enumerate() {
            // SAFETY: `direct` covers MR rows × 16 columns of `out` (the
            // caller's check) and, if not null, 16 bias values.
            unsafe {
                let o = d.out.add(i * d.ldo);
                if d.bias.is_null() {
                    _mm256_storeu_ps(o, ci[0]);
                    _mm256_storeu_ps(o.add(8), ci[1]);
                } else {
                    _mm256_storeu_ps(o, _mm256_add_ps(ci[0], _mm256_loadu_ps(d.bias)));
                    _mm256_storeu_ps(o.add(8), _mm256_add_ps(ci[1], _mm256_loadu_ps(d.bias.add(8))));
                }
            }
        }
        return;
    }
    if let Some(acc) = acc.as_mut() {
        for i in 0..MR {
            // SAFETY: acc[i] is 16 floats; each store writes 8.
            unsafe {
                _mm256_storeu_ps(acc[i].as_mut_ptr(), c[i][0]);
                _mm256_storeu_ps(acc[i].as_mut_ptr().add(8), c[i][1]);
            }
        }
    }
}

/// One row against `Q` ≤ 4 consecutive panels (`panels` holds Q·k·16 floats)
/// on AVX2+FMA: 2·Q accumulators of 8 lanes, each output element the same FMA
/// chain over kk = 0..k as in [`tile_avx2`] (so the same bits).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_avx2<const Q: usize>(arow: &[f32], panels: &[f32], k: usize, acc: &mut [[f32; NR]; 4]) {
    use std::arch::x86_64::*;
    debug_assert!(Q <= 4 && panels.len() >= Q * k * NR && arow.len() >= k);
    let mut c = [_mm256_setzero_ps(); 8];
    let pp = panels.as_ptr();
    for kk in 0..k {
        // SAFETY: kk < k; every panel holds k × 16 floats and the row k floats
        // (asserted in debug, guaranteed by the caller's slicing).
        unsafe {
            let av = _mm256_broadcast_ss(&*arow.as_ptr().add(kk));
            for q in 0..Q {
                let b = pp.add(q * k * NR + kk * NR);
                c[2 * q] = _mm256_fmadd_ps(av, _mm256_loadu_ps(b), c[2 * q]);
                c[2 * q + 1] = _mm256_fmadd_ps(av, _mm256_loadu_ps(b.add(8)), c[2 * q + 1]);
            }
        }
    }
    for q in 0..Q {
        // SAFETY: acc[q] is 16 floats; each store writes 8.
        unsafe {
            _mm256_storeu_ps(acc[q].as_mut_ptr(), c[2 * q]);
            _mm256_storeu_ps(acc[q].as_mut_ptr().add(8), c[2 * q + 1]);
        }
    }
}

/// The tile on AVX-512F: `R` ≤ 12 packed rows (tile stride [`MR512`]) ×
/// `P` ∈ {1, 2} panels (`pstride` floats apart, `k` rows of 16 read from
/// each), continuing from the sums in `acc`, in R·P accumulators of 16 lanes (24 of the 32
/// registers at 12 × 2). Per k: P panel loads and R broadcasts from one
/// pointer, for R·P FMAs — the 12 × 16 tile this replaces did 13 loads for
/// 12 FMAs and held 12 row pointers, more than x86-64 has registers for.
/// Each output element is the same FMA chain as in [`tile_avx2`] (same bits).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx512<const R: usize, const P: usize>(pa: &[f32], panels: &[f32], pstride: usize, k: usize, first: bool, mut acc: Option<&mut [[f32; 2 * NR]; MR512]>, direct: Option<Direct>) {
    use std::arch::x86_64::*;
    debug_assert!(R <= MR512 && P <= 2 && panels.len() >= (P - 1) * pstride + k * NR && pa.len() >= k * MR512 && (acc.is_some() || direct.is_some()) && (first || acc.is_some()));
    // Start from zero on the first k slice, else from the sums in `acc`.
    let mut c: [[__m512; P]; R] = match &acc {
        // SAFETY: acc[i] is 32 floats; each load reads 16 at 16·q ≤ 16.
        Some(a) if !first => std::array::from_fn(|i| std::array::from_fn(|q| unsafe { _mm512_loadu_ps(a[i].as_ptr().add(q * NR)) })),
        _ => [[_mm512_setzero_ps(); P]; R],
    };
    let pp = panels.as_ptr();
    let ap = pa.as_ptr();
    for kk in 0..k {
        // SAFETY: kk < k; each panel holds k × 16 floats and the packed tile
        // k × 12 (asserted in debug, guaranteed by the callers' slicing).
        unsafe {
            let b: [__m512; P] = std::array::from_fn(|q| _mm512_loadu_ps(pp.add(q * pstride + kk * NR)));
            for (i, ci) in c.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*ap.add(kk * MR512 + i));
                for q in 0..P {
                    ci[q] = _mm512_fmadd_ps(av, b[q], ci[q]);
                }
            }
        }
    }
    if let Some(d) = direct {
        for (i, ci) in c.iter().enumerate() {
            for (q, v) in ci.iter().enumerate() {
                // SAFETY: `direct` covers R rows × 16·P columns of `out` (the
                // caller's check) and, if not null, 16·P bias values.
                unsafe {
                    let o = d.out.add(i * d.ldo + q * NR);
                    if d.bias.is_null() {
                        _mm512_storeu_ps(o, *v);
                    } else {
                        _mm512_storeu_ps(o, _mm512_add_ps(*v, _mm512_loadu_ps(d.bias.add(q * NR))));
                    }
                }
            }
        }
        return;
    }
    if let Some(acc) = acc.as_mut() {
        for (i, ci) in c.iter().enumerate() {
            for (q, v) in ci.iter().enumerate() {
                // SAFETY: acc[i] is 32 floats; this store writes 16 at 16·q ≤ 16.
                unsafe { _mm512_storeu_ps(acc[i].as_mut_ptr().add(q * NR), *v) };
            }
        }
    }
}

/// The tile with fused multiply-add in the baseline target (aarch64: NEON
/// and FMA are always there; the compiler vectorises the lane loop).
#[cfg(target_arch = "aarch64")]
fn tile_fma(pa: &[f32], panel: &[f32], k: usize, acc: &mut [[f32; NR]; MR]) {
    for kk in 0..k {
        let b = &panel[kk * NR..(kk + 1) * NR];
        for i in 0..MR {
            let av = pa[kk * MR + i];
            for j in 0..NR {
                acc[i][j] = av.mul_add(b[j], acc[i][j]);
            }
        }
    }
}

/// The tile without FMA (products rounded before the add).
#[allow(dead_code)]
fn tile_portable(pa: &[f32], panel: &[f32], k: usize, acc: &mut [[f32; NR]; MR]) {
    for kk in 0..k {
        let b = &panel[kk * NR..(kk + 1) * NR];
        for i in 0..MR {
            let av = pa[kk * MR + i];
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
        // k = 300 runs the tile in one k slice, k = 1300 in six with
        // k-blocking on (the one-row path never splits k, so this also shows
        // k-blocking keeps the bits).
        for k in [300, 1300] {
            one_row_vs_tile(k);
        }
        set_k_blocking(true);
        one_row_vs_tile(1300);
        set_k_blocking(false);
    }

    fn one_row_vs_tile(k: usize) {
        let n = 16 * 9 + 5;
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

    /// The AVX-512 tiles (12 × 32, 12 × 16 and their 4- and 8-row forms)
    /// give the same bits as the AVX2 tile on every shape, tails included.
    /// Skipped, and says so, on a CPU without AVX-512F.
    #[test]
    fn avx512_tiles_match_avx2_bitwise() {
        #[cfg(target_arch = "x86_64")]
        {
            if !(std::is_x86_feature_detected!("avx512f") && crate::backend::cpu::kernels::has_avx2_fma()) {
                eprintln!("SKIPPED avx512_tiles_match_avx2_bitwise: this CPU has no AVX-512F");
                return;
            }
            for &(m, n, k) in &[(1, 16, 8), (2, 48, 33), (5, 40, 64), (9, 100, 19), (12, 32, 384), (13, 33, 7), (30, 80, 300), (64, 1152, 96), (25, 48, 1100), (7, 40, 600)] {
                let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
                let w: Vec<f32> = (0..n * k).map(|i| ((i * 104729 % 997) as f32 / 498.5) - 1.0).collect();
                let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
                let pw = PackedWeights::pack(&w, n, k);
                let (mut o2, mut o5) = (vec![f32::NAN; m * n], vec![f32::NAN; m * n]);
                // Split the panels unevenly (an odd first range) so single
                // and paired panels both run.
                let split = 1.min(pw.panels());
                for (p0, p1) in [(0, split), (split, pw.panels())] {
                    // SAFETY: each output is m × n and the call owns the panels' columns; AVX-512F is present (checked above).
                    unsafe {
                        gemm_block_at(&a, &pw, Some(&b), o2.as_mut_ptr(), n, 0, m, p0, p1, false);
                        gemm_block_at(&a, &pw, Some(&b), o5.as_mut_ptr(), n, 0, m, p0, p1, true);
                    }
                }
                assert!(o2.iter().all(|v| v.is_finite()), "{m}x{n}x{k}: AVX2 left an element unwritten");
                assert!(o2.iter().zip(&o5).all(|(x, y)| x.to_bits() == y.to_bits()), "{m}x{n}x{k}: AVX-512 tile differs from the AVX2 tile");
            }
        }
    }

    #[test]
    fn packed_block_matches_f64() {
        // Odd sizes: partial row tiles, a partial panel, k not a multiple of 8.
        for &(m, n, k) in &[(1, 1, 1), (7, 33, 19), (13, 48, 64), (50, 17, 300), (20, 40, 1030)] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 104729 % 997) as f32 / 498.5) - 1.0)
                .collect();
            let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
            let pw = PackedWeights::pack(&w, n, k);
            // Without a bias too (the kernels' other store path).
            let mut nob = vec![f32::NAN; m * n];
            // SAFETY: out is m × n, the call owns all of it.
            unsafe { gemm_block(&a, &pw, None, nob.as_mut_ptr(), n, 0, m, 0, pw.panels()) };
            let mut out = vec![f32::NAN; m * n];
            // SAFETY: out is m × n, the call owns all of it.
            unsafe { gemm_block(&a, &pw, Some(&b), out.as_mut_ptr(), n, 0, m, 0, pw.panels()) };
            for (i, (x, y)) in nob.iter().zip(&out).enumerate() {
                assert_eq!((x + b[i % n]).to_bits(), y.to_bits(), "{m}x{n}x{k}: the bias path differs from the no-bias one at {i}");
            }
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
