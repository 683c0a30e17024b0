//! [`CudaStream`]: a non-blocking CUDA stream with its own cuBLAS/cuBLASLt handles and
//! pinned staging pool, and the launch of every kernel the backend offers.

use super::blas::{Blas, Rest};
use super::context::Ctx;
use super::event::cuda_event;
use super::graph::CudaGraph;
use super::module::Unit;
use super::pinned::PinnedPool;
use crate::backend::{Activation, Attention, BackendEvent, BackendGraph, BackendStream, BufSlice, Capture, DType, Gather, Gemm, HostFns, Kernels, LayerNorm, MeanPool, Rope, SegmentMeanPool, VarlenAttention};
use crate::error::{Error, Result};
use cudarc::driver::sys::{self, CUresult, CUstream};
use std::any::Any;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Threads per block of the elementwise kernels.
const EW_BLOCK: u32 = 256;
/// Threads per block of the row kernels (LayerNorm, softmax, L2).
const ROW_BLOCK: u32 = 256;
/// Threads per block of attention (4 warps: 4 keys at a time).
const ATTN_BLOCK: u32 = 128;
/// Threads per block of mean pooling, one thread per output element (large batches).
const POOL_BLOCK: u32 = 128;
/// Threads per block of token-parallel mean pooling (`POOL_WARPS` = 8 warps in `source.rs`).
const POOL_TOK_BLOCK: u32 = 256;
/// Below this many blocks of the one-thread-per-output kernel, mean pooling
/// splits the tokens over warps too (the old kernel cannot fill the GPU and
/// loops serially over a sequence: 14.8 us at batch 1 on an H100). Above it
/// the one-thread kernel is faster (56 vs 33 us at batch 512, H200 vs H100
/// profiles).
const POOL_TOK_BELOW_BLOCKS: usize = 512;
/// Threads per block of the warp-per-row kernels (a row a warp).
const WARP_ROWS_BLOCK: u32 = 128;
/// The widest row the warp-per-row kernels hold in registers.
const WARP_ROW_MAX: usize = 1024;

/// Elements of `dtype` in one 16-byte vector (the `_v` kernels' `VW<T>::n`).
fn vec_width(dtype: DType) -> usize {
    16 / dtype.size()
}

/// Whether the 16-byte vector kernels may run: they are on (`BRAID_CUDA_VEC`),
/// every operand address is 16-byte aligned (0 = an absent operand passes)
/// and `count` (the elements a vector must not straddle: the total, or a
/// row's width) is a multiple of the vector width.
fn vectorisable(on: bool, count: usize, dtype: DType, addrs: &[u64]) -> bool {
    on && count % vec_width(dtype) == 0 && addrs.iter().all(|a| a % 16 == 0)
}

/// One kernel argument, widened to a 64-bit slot. The driver reads each
/// parameter's own size from the slot's start, which on little-endian
/// targets is the value itself.
#[derive(Clone, Copy)]
pub(crate) enum Arg {
    Ptr(u64),
    I64(i64),
    I32(i32),
    F32(f32),
}

impl Arg {
    fn slot(self) -> u64 {
        match self {
            Arg::Ptr(p) => p,
            Arg::I64(v) => v as u64,
            Arg::I32(v) => v as u32 as u64,
            Arg::F32(v) => v.to_bits() as u64,
        }
    }
}

fn opt(p: Option<BufSlice>) -> Arg {
    Arg::Ptr(p.map_or(0, |s| s.addr()))
}

/// A kernel argument for an operand: its device address.
fn ptr(s: BufSlice) -> Arg {
    Arg::Ptr(s.addr())
}

/// The kernel `name_{f32,bf16,f16}` for dtype `d` (static names: no
/// allocation on the launch path).
macro_rules! pick {
    ($d:expr, $name:literal) => {
        match $d {
            DType::F32 => concat!($name, "_f32"),
            DType::BF16 => concat!($name, "_bf16"),
            DType::F16 => concat!($name, "_f16"),
        }
    };
}

fn act_code(a: Activation) -> i32 {
    match a {
        Activation::None => 0,
        Activation::Relu => 1,
        Activation::GeluErf => 2,
        Activation::GeluTanh => 3,
        Activation::Silu => 4,
    }
}

fn i32_dim(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::InvalidArgument(format!("{what}={v} is too large for the CUDA kernels (max {})", i32::MAX)))
}

fn grid_1d(n: usize, block: u32) -> u32 {
    // Grid-stride loops cover the rest; 65535*8 blocks saturate any GPU.
    (n.div_ceil(block as usize)).clamp(1, 65535 * 8) as u32
}

/// A CUDA stream of one context.
pub struct CudaStream {
    pub(crate) ctx: Arc<Ctx>,
    pub(crate) raw: CUstream,
    /// The stream's own cuBLAS handle, created on its first GEMM (or before a
    /// capture); never used by two threads at once.
    blas: Mutex<Option<Blas>>,
    pinned: PinnedPool,
    /// Set between `begin_capture` and `end_capture`. Relaxed is enough: it
    /// only turns host copies into a clear error, and the capture state the
    /// driver keeps is authoritative.
    capturing: AtomicBool,
}

// SAFETY: a CUstream is a driver handle usable from any thread with its
// context current (driver calls on one stream are thread-safe); the cuBLAS
// handle and the staging buffers are behind mutexes.
unsafe impl Send for CudaStream {}
// SAFETY: as above.
unsafe impl Sync for CudaStream {}

impl CudaStream {
    pub(crate) fn new(ctx: Arc<Ctx>) -> Result<Self> {
        ctx.bind()?;
        let mut raw: CUstream = std::ptr::null_mut();
        // SAFETY: creates a stream in the current context. Non-blocking: no
        // implicit synchronisation with the legacy default stream.
        let r = unsafe { sys::cuStreamCreate(&mut raw, sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32) };
        ctx.check("cuStreamCreate", r)?;
        Ok(CudaStream { ctx, raw, blas: Mutex::new(None), pinned: PinnedPool::new(), capturing: AtomicBool::new(false) })
    }

    /// The raw stream handle (for interop; valid while `self` lives).
    pub fn raw(&self) -> CUstream {
        self.raw
    }

    /// GEMMs this stream ran through cuBLASLt and through `cublasGemmEx`,
    /// and the cuBLASLt plans it has cached.
    pub fn gemm_stats(&self) -> (u64, u64, usize) {
        let g = crate::sync_std_lock(&self.blas);
        g.as_ref().map_or((0, 0, 0), |b| (b.lt_calls, b.gemmex_calls, b.plans()))
    }

    /// Number of pinned staging buffers this stream holds.
    pub fn staging_buffers(&self) -> usize {
        self.pinned.len()
    }

    fn blas(&self) -> Result<std::sync::MutexGuard<'_, Option<Blas>>> {
        let mut g = crate::sync_std_lock(&self.blas);
        if g.is_none() {
            *g = Some(Blas::new(&self.ctx, self.raw)?);
        }
        Ok(g)
    }

    /// Launch `unit::name_{dtype}`-style kernel `name` with `args`.
    ///
    /// # Safety
    /// The arguments match the kernel's parameters and the memory they name
    /// is valid for the launch (the `BackendStream` contract).
    unsafe fn launch(&self, unit: Unit, name: &str, grid: (u32, u32, u32), block: u32, smem: u32, args: &[Arg]) -> Result<()> {
        self.ctx.bind()?;
        let f = self.ctx.modules.get(&self.ctx, unit, name)?;
        let mut slots = [0u64; 12];
        let mut ptrs = [std::ptr::null_mut::<c_void>(); 12];
        assert!(args.len() <= slots.len(), "too many kernel arguments");
        for (i, a) in args.iter().enumerate() {
            slots[i] = a.slot();
        }
        for (i, p) in ptrs.iter_mut().enumerate().take(args.len()) {
            *p = &mut slots[i] as *mut u64 as *mut c_void;
        }
        // SAFETY: `f` is a live kernel of this context; `ptrs` point at the
        // argument slots, which outlive the call (the driver copies them);
        // the caller vouches for the argument types and memory.
        let r = unsafe { sys::cuLaunchKernel(f.0, grid.0, grid.1, grid.2, block, 1, 1, smem, self.raw, ptrs.as_mut_ptr(), std::ptr::null_mut()) };
        self.ctx.check(name, r)
    }

    fn not_capturing(&self, what: &str) -> Result<()> {
        // Relaxed: see the field's comment.
        if self.capturing.load(Ordering::Relaxed) {
            return Err(Error::Unsupported { backend: "cuda", what: format!("{what} during graph capture (copy before capturing)") });
        }
        Ok(())
    }
}

/// Which attention kernel to launch ([`CudaStream::attention_with`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnKernel {
    /// The tiled kernel (64-query tiles) for head_dim <= 128, else the simple one.
    Auto,
    /// One block per (query, head, batch); K/V read from global memory per query.
    Simple,
    /// The tiled (flash-style) kernel with tiles of 32 or 64 queries; head_dim <= 128.
    Tiled { queries: u32 },
}

/// The tiled kernel's instantiation for (dtype, padded head_dim, query tile).
fn flash_name(d: DType, dpad: usize, bq: u32) -> &'static str {
    match (d, dpad, bq) {
        (DType::F32, 32, 32) => "flash_f32_d32_q32",
        (DType::F32, 32, _) => "flash_f32_d32_q64",
        (DType::F32, 64, 32) => "flash_f32_d64_q32",
        (DType::F32, 64, _) => "flash_f32_d64_q64",
        (DType::F32, _, 32) => "flash_f32_d128_q32",
        (DType::F32, _, _) => "flash_f32_d128_q64",
        (DType::BF16, 32, 32) => "flash_bf16_d32_q32",
        (DType::BF16, 32, _) => "flash_bf16_d32_q64",
        (DType::BF16, 64, 32) => "flash_bf16_d64_q32",
        (DType::BF16, 64, _) => "flash_bf16_d64_q64",
        (DType::BF16, _, 32) => "flash_bf16_d128_q32",
        (DType::BF16, _, _) => "flash_bf16_d128_q64",
        (DType::F16, 32, 32) => "flash_f16_d32_q32",
        (DType::F16, 32, _) => "flash_f16_d32_q64",
        (DType::F16, 64, 32) => "flash_f16_d64_q32",
        (DType::F16, 64, _) => "flash_f16_d64_q64",
        (DType::F16, _, 32) => "flash_f16_d128_q32",
        (DType::F16, _, _) => "flash_f16_d128_q64",
    }
}

/// The packed-layout kernel: `(name, threads, query tile)`. f16/bf16 run the
/// tensor-core (mma) kernel unless `mma` is off; f32 (and half with `mma`
/// off) the CUDA-core tiled kernel. `None`: head_dim over 128.
fn varlen_kernel(d: DType, hd: usize, mma: bool) -> Option<(&'static str, u32, u32)> {
    let dpad = hd.next_power_of_two().max(32);
    if dpad > 128 {
        return None;
    }
    if mma && d.is_half() {
        let name = match (d, dpad) {
            (DType::BF16, 32) => "flash_mma_bf16_d32",
            (DType::BF16, 64) => "flash_mma_bf16_d64",
            (DType::BF16, _) => "flash_mma_bf16_d128",
            (DType::F16, 32) => "flash_mma_f16_d32",
            (DType::F16, 64) => "flash_mma_f16_d64",
            (_, _) => "flash_mma_f16_d128",
        };
        return Some((name, 128, 64));
    }
    let name = match (d, dpad) {
        (DType::F32, 32) => "flash_varlen_f32_d32_q64",
        (DType::F32, 64) => "flash_varlen_f32_d64_q64",
        (DType::F32, _) => "flash_varlen_f32_d128_q64",
        (DType::BF16, 32) => "flash_varlen_bf16_d32_q64",
        (DType::BF16, 64) => "flash_varlen_bf16_d64_q64",
        (DType::BF16, _) => "flash_varlen_bf16_d128_q64",
        (DType::F16, 32) => "flash_varlen_f16_d32_q64",
        (DType::F16, 64) => "flash_varlen_f16_d64_q64",
        (DType::F16, _) => "flash_varlen_f16_d128_q64",
    };
    Some((name, 64 * (dpad as u32 / 32), 64))
}

/// The checks and kernel arguments every attention kernel shares: q, k, v,
/// mask, out, seq, heads, head_dim, row stride, scale; `None` when there is
/// nothing to compute.
fn attention_args(p: &Attention) -> Result<Option<(i32, [Arg; 10])>> {
    if p.batch == 0 || p.seq == 0 || p.heads == 0 || p.head_dim == 0 {
        return Ok(None);
    }
    if p.heads > 65535 || p.batch > 65535 {
        return Err(Error::InvalidArgument(format!("attention: heads ({}) and batch ({}) must be at most 65535 on CUDA", p.heads, p.batch)));
    }
    let seq = i32_dim(p.seq, "seq")?;
    let hd = i32_dim(p.head_dim, "head_dim")?;
    Ok(Some((seq, [ptr(p.q), ptr(p.k), ptr(p.v), opt(p.mask), ptr(p.out), Arg::I32(seq), Arg::I32(p.heads as i32), Arg::I32(hd), Arg::I64(p.row_stride as i64), Arg::F32(p.scale)])))
}

impl CudaStream {
    /// Packed attention with the tensor-core kernel (`mma`, f16/bf16) or
    /// the CUDA-core tiled one (tests compare them);
    /// `Kernels::attention_varlen` uses mma unless `BRAID_ATTN_MMA=0`.
    ///
    /// # Safety
    /// As [`Kernels::attention_varlen`].
    pub unsafe fn attention_varlen_with(&self, p: &VarlenAttention, mma: bool) -> Result<()> {
        if p.batch == 0 || p.max_seq == 0 || p.heads == 0 || p.head_dim == 0 {
            return Ok(());
        }
        if p.heads > 65535 || p.batch > 65535 {
            return Err(Error::InvalidArgument(format!("attention_varlen: heads ({}) and batch ({}) must be at most 65535 on CUDA", p.heads, p.batch)));
        }
        // mma.sync with bf16 needs compute capability 8.0.
        let Some((name, threads, bq)) = varlen_kernel(p.dtype, p.head_dim, mma && self.ctx.cc.0 >= 8) else {
            return Err(Error::Unsupported { backend: "cuda", what: format!("packed attention with head_dim {} > 128", p.head_dim) });
        };
        let max_seq = i32_dim(p.max_seq, "max_seq")? as u32;
        let args = [
            ptr(p.q),
            ptr(p.k),
            ptr(p.v),
            ptr(p.cu_seqlens),
            ptr(p.out),
            Arg::I32(p.heads as i32),
            Arg::I32(i32_dim(p.head_dim, "head_dim")?),
            Arg::I64(p.row_stride as i64),
            Arg::F32(p.scale),
        ];
        let grid = (max_seq.div_ceil(bq), p.heads as u32, p.batch as u32);
        // SAFETY: cu_seqlens holds batch+1 offsets rising to the stream's
        // token count, each segment at most max_seq long (checked by the
        // caller); q/k/v hold that many rows of row_stride and out
        // tokens*heads*head_dim elements; the kernels use static shared memory
        // and read head_dim <= their padded width.
        unsafe { self.launch(Unit::Attention, name, grid, threads, 0, &args) }
    }

    /// Attention with a chosen kernel (tests and benchmarks compare them);
    /// `BackendStream::attention` is `attention_with(p, AttnKernel::Auto)`.
    ///
    /// # Safety
    /// As [`BackendStream::attention`]: the descriptor's buffers are valid.
    pub unsafe fn attention_with(&self, p: &Attention, kernel: AttnKernel) -> Result<()> {
        let Some((seq, args)) = attention_args(p)? else { return Ok(()) };
        // On an H100 the 64-query tile beat both the 32-query tile and the
        // simple kernel at every measured shape, batch 1 included (RESULTS.md).
        let bq = match kernel {
            AttnKernel::Simple => None,
            _ if p.head_dim > 128 => None,
            AttnKernel::Tiled { queries } => Some(if queries <= 32 { 32 } else { 64 }),
            AttnKernel::Auto => Some(64),
        };
        if let Some(bq) = bq {
            let dpad = p.head_dim.next_power_of_two().max(32);
            let name = flash_name(p.dtype, dpad, bq);
            let threads = bq * (dpad as u32 / 32);
            let grid = ((seq as u32).div_ceil(bq), p.heads as u32, p.batch as u32);
            // SAFETY: q/k/v hold batch*seq rows of row_stride, mask batch*seq
            // f32, out batch*seq*heads*head_dim elements (the contract); the
            // kernel reads head_dim <= dpad columns and uses static shared memory.
            return unsafe { self.launch(Unit::Attention, name, grid, threads, 0, &args) };
        }
        let smem = (p.head_dim + p.seq) * 4;
        if smem > 48 * 1024 {
            return Err(Error::Unsupported { backend: "cuda", what: format!("attention with head_dim {} > 128 and seq {} + head_dim > 12288 floats of shared memory", p.head_dim, p.seq) });
        }
        let name = pick!(p.dtype, "attention");
        // SAFETY: as above; `smem` floats of dynamic shared memory.
        unsafe { self.launch(Unit::Attention, name, (seq as u32, p.heads as u32, p.batch as u32), ATTN_BLOCK, smem as u32, &args) }
    }
}

impl BackendStream for CudaStream {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn synchronize(&self) -> Result<()> {
        self.ctx.bind()?;
        // SAFETY: live stream of the current context.
        let r = unsafe { sys::cuStreamSynchronize(self.raw) };
        self.ctx.check("cuStreamSynchronize", r)
    }

    fn query(&self) -> Result<bool> {
        self.ctx.bind()?;
        // SAFETY: live stream of the current context.
        match unsafe { sys::cuStreamQuery(self.raw) } {
            CUresult::CUDA_SUCCESS => Ok(true),
            CUresult::CUDA_ERROR_NOT_READY => Ok(false),
            e => Err(self.ctx.error("cuStreamQuery", e)),
        }
    }

    fn capture(&self) -> Option<&dyn Capture> {
        Some(self)
    }

    fn host_fns(&self) -> Option<&dyn HostFns> {
        Some(self)
    }

    fn record(&self, event: &dyn BackendEvent) -> Result<()> {
        let e = cuda_event(&self.ctx, event)?;
        self.ctx.bind()?;
        // SAFETY: live event and stream of the current context.
        let r = unsafe { sys::cuEventRecord(e.raw, self.raw) };
        self.ctx.check("cuEventRecord", r)
    }

    fn wait_event(&self, event: &dyn BackendEvent) -> Result<()> {
        let e = cuda_event(&self.ctx, event)?;
        self.ctx.bind()?;
        // SAFETY: live event and stream of the current context.
        let r = unsafe { sys::cuStreamWaitEvent(self.raw, e.raw, 0) };
        self.ctx.check("cuStreamWaitEvent", r)
    }

    unsafe fn h2d(&self, src: &[u8], dst: BufSlice) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        self.not_capturing("host-to-device copy")?;
        self.ctx.bind()?;
        // SAFETY: the caller guarantees `dst` holds `src.len()` bytes and
        // stays allocated until the stream passes the copy.
        unsafe { self.pinned.h2d(&self.ctx, self.raw, src, dst.addr()) }
    }

    unsafe fn d2h(&self, src: BufSlice, dst: &mut [u8]) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        self.not_capturing("device-to-host copy")?;
        self.ctx.bind()?;
        // SAFETY: the caller guarantees `src` holds `dst.len()` bytes.
        unsafe { self.pinned.d2h(&self.ctx, self.raw, src.addr(), dst) }
    }

    unsafe fn d2d(&self, src: BufSlice, dst: BufSlice) -> Result<()> {
        let bytes = src.len;
        if bytes > dst.len {
            return Err(Error::InvalidArgument(format!("d2d of {bytes} bytes into {}", dst.len)));
        }
        if bytes == 0 {
            return Ok(());
        }
        self.ctx.bind()?;
        // SAFETY: the caller guarantees both ranges are valid device memory.
        let r = unsafe { sys::cuMemcpyDtoDAsync_v2(dst.addr(), src.addr(), bytes, self.raw) };
        self.ctx.check("cuMemcpyDtoDAsync", r)
    }

}

impl Kernels for CudaStream {
    unsafe fn gemm(&self, g: &Gemm) -> Result<()> {
        if g.m == 0 || g.n == 0 {
            return Ok(());
        }
        self.ctx.bind()?;
        let rest = if g.k == 0 {
            // a·wᵀ is all zeros: cuBLAS may skip the write entirely.
            // SAFETY: `out` holds m*n elements (the contract).
            let r = unsafe { sys::cuMemsetD8Async(g.out.addr(), 0, g.m * g.n * g.dtype.size(), self.raw) };
            self.ctx.check("cuMemsetD8Async", r)?;
            Rest { bias: g.bias.is_some(), act: g.act }
        } else {
            let mut blas = self.blas()?;
            // SAFETY: the caller's contract covers the GEMM's operands.
            unsafe { blas.as_mut().expect("created by blas()").gemm(&self.ctx, g)? }
        };
        // What cuBLASLt could not fuse (GELU erf; everything on the
        // cublasGemmEx path): one elementwise pass over the output.
        if rest.bias || rest.act != Activation::None {
            let total = g.m * g.n;
            let bias = if rest.bias { g.bias } else { None };
            let n = i32_dim(g.n, "gemm n")?;
            let addrs = [g.out.addr(), bias.map_or(0, |b| b.addr())];
            if vectorisable(self.ctx.vec_kernels, g.n, g.dtype, &addrs) {
                // 16-byte vectors that never straddle a row (n is a multiple of the width).
                // Grid: 32-vector column chunks x row groups of 8 (one per
                // warp of the 256-thread block), row groups capped (the
                // kernel strides over the rest).
                let nvc = g.n / vec_width(g.dtype);
                let grid = (nvc.div_ceil(32) as u32, g.m.div_ceil(8).clamp(1, 65535) as u32, 1);
                let args = [ptr(g.out), opt(bias), Arg::I64(g.m as i64), Arg::I32(nvc as i32), Arg::I32(act_code(rest.act))];
                // SAFETY: as below, and every address is 16-byte aligned.
                unsafe { self.launch(Unit::Elementwise, pick!(g.dtype, "bias_act_v"), grid, 256, 0, &args)? };
            } else {
                let args = [ptr(g.out), opt(bias), Arg::I64(total as i64), Arg::I32(n), Arg::I32(act_code(rest.act))];
                // SAFETY: `out` holds m*n and `bias` n elements of `dtype`.
                unsafe { self.launch(Unit::Elementwise, pick!(g.dtype, "bias_act"), (grid_1d(total, EW_BLOCK), 1, 1), EW_BLOCK, 0, &args)? };
            }
        }
        Ok(())
    }

    unsafe fn add(&self, a: BufSlice, b: BufSlice, out: BufSlice, n: usize, dtype: DType) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        if vectorisable(self.ctx.vec_kernels, n, dtype, &[a.addr(), b.addr(), out.addr()]) {
            let nv = n / vec_width(dtype);
            // SAFETY: as below, and every address is 16-byte aligned.
            return unsafe { self.launch(Unit::Elementwise, pick!(dtype, "add_v"), (grid_1d(nv, EW_BLOCK), 1, 1), EW_BLOCK, 0, &[ptr(a), ptr(b), ptr(out), Arg::I64(nv as i64)]) };
        }
        let name = pick!(dtype, "add");
        // SAFETY: the three buffers hold n elements of `dtype` (the contract).
        unsafe { self.launch(Unit::Elementwise, name, (grid_1d(n, EW_BLOCK), 1, 1), EW_BLOCK, 0, &[ptr(a), ptr(b), ptr(out), Arg::I64(n as i64)]) }
    }

    unsafe fn activation(&self, x: BufSlice, out: BufSlice, n: usize, act: Activation, dtype: DType) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        if vectorisable(self.ctx.vec_kernels, n, dtype, &[x.addr(), out.addr()]) {
            let nv = n / vec_width(dtype);
            let args = [ptr(x), ptr(out), Arg::I64(nv as i64), Arg::I32(act_code(act))];
            // SAFETY: as below, and both addresses are 16-byte aligned.
            return unsafe { self.launch(Unit::Elementwise, pick!(dtype, "act_v"), (grid_1d(nv, EW_BLOCK), 1, 1), EW_BLOCK, 0, &args) };
        }
        let name = pick!(dtype, "act");
        let args = [ptr(x), ptr(out), Arg::I64(n as i64), Arg::I32(act_code(act))];
        // SAFETY: both buffers hold n elements of `dtype` (the contract).
        unsafe { self.launch(Unit::Elementwise, name, (grid_1d(n, EW_BLOCK), 1, 1), EW_BLOCK, 0, &args) }
    }

    unsafe fn layer_norm(&self, p: &LayerNorm) -> Result<()> {
        if p.rows == 0 || p.cols == 0 {
            return Ok(());
        }
        let rows = u32::try_from(p.rows).ok().filter(|&r| r < i32::MAX as u32).ok_or_else(|| Error::InvalidArgument(format!("layer_norm rows={} too large", p.rows)))?;
        let addrs = [p.x.addr(), p.residual.map_or(0, |r| r.addr()), p.gamma.addr(), p.beta.addr(), p.out.addr()];
        if p.cols <= WARP_ROW_MAX && vectorisable(self.ctx.vec_kernels, p.cols, p.dtype, &addrs) {
            // A warp a row, the row in registers (every row start is aligned:
            // cols is a multiple of the vector width).
            let per = WARP_ROWS_BLOCK / 32;
            let args = [ptr(p.x), opt(p.residual), ptr(p.gamma), ptr(p.beta), ptr(p.out), Arg::I32(rows as i32), Arg::I32(p.cols as i32), Arg::F32(p.eps)];
            // SAFETY: as below, and every address is 16-byte aligned.
            return unsafe { self.launch(Unit::Norm, pick!(p.dtype, "layer_norm_warp"), (rows.div_ceil(per), 1, 1), WARP_ROWS_BLOCK, 0, &args) };
        }
        let name = pick!(p.dtype, "layer_norm");
        let args = [ptr(p.x), opt(p.residual), ptr(p.gamma), ptr(p.beta), ptr(p.out), Arg::I32(i32_dim(p.cols, "cols")?), Arg::F32(p.eps)];
        // SAFETY: x/residual/out hold rows*cols, gamma/beta cols elements.
        unsafe { self.launch(Unit::Norm, name, (rows, 1, 1), ROW_BLOCK, 0, &args) }
    }

    unsafe fn softmax(&self, x: BufSlice, out: BufSlice, rows: usize, cols: usize, dtype: DType) -> Result<()> {
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        let r = i32_dim(rows, "rows")? as u32;
        let name = pick!(dtype, "softmax");
        // SAFETY: both buffers hold rows*cols elements.
        unsafe { self.launch(Unit::Norm, name, (r, 1, 1), ROW_BLOCK, 0, &[ptr(x), ptr(out), Arg::I32(i32_dim(cols, "cols")?)]) }
    }

    unsafe fn attention(&self, p: &Attention) -> Result<()> {
        // SAFETY: the caller's contract, passed on.
        unsafe { self.attention_with(p, AttnKernel::Auto) }
    }

    unsafe fn attention_varlen(&self, p: &VarlenAttention) -> Result<()> {
        // SAFETY: the caller's contract, passed on.
        unsafe { self.attention_varlen_with(p, self.ctx.attn_mma) }
    }

    unsafe fn glu(&self, x: BufSlice, out: BufSlice, rows: usize, cols: usize, act: Activation, dtype: DType) -> Result<()> {
        let n = rows * cols;
        if n == 0 {
            return Ok(());
        }
        let name = pick!(dtype, "glu");
        let args = [ptr(x), ptr(out), Arg::I64(rows as i64), Arg::I32(i32_dim(cols, "cols")?), Arg::I32(act_code(act))];
        // SAFETY: x holds rows*2*cols and out rows*cols elements of `dtype` (the contract).
        unsafe { self.launch(Unit::Elementwise, name, (grid_1d(n, EW_BLOCK), 1, 1), EW_BLOCK, 0, &args) }
    }

    unsafe fn rope_qkv(&self, p: &Rope) -> Result<()> {
        let d = p.heads * p.head_dim;
        let n = p.rows * 3 * d;
        if n == 0 {
            return Ok(());
        }
        if p.head_dim % 2 != 0 || p.seq == 0 {
            return Err(Error::InvalidArgument(format!("rope: head_dim {} must be even and seq {} positive", p.head_dim, p.seq)));
        }
        let name = pick!(p.dtype, "rope");
        let args = [
            ptr(p.x),
            ptr(p.out),
            ptr(p.cos),
            ptr(p.sin),
            Arg::I64(p.rows as i64),
            Arg::I32(i32_dim(p.seq, "seq")?),
            Arg::I32(i32_dim(d, "dim")?),
            Arg::I32(i32_dim(p.head_dim, "head_dim")?),
        ];
        // SAFETY: x and out hold rows*3*d elements, cos and sin seq*head_dim f32 (the contract).
        unsafe { self.launch(Unit::Elementwise, name, (grid_1d(n, EW_BLOCK), 1, 1), EW_BLOCK, 0, &args) }
    }

    unsafe fn attention_bias(&self, p: &Attention, bias: BufSlice) -> Result<()> {
        let Some((seq, a)) = attention_args(p)? else { return Ok(()) };
        let args = [a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], ptr(bias)];
        let smem = (p.head_dim + p.seq) * 4;
        if smem > 48 * 1024 {
            return Err(Error::Unsupported { backend: "cuda", what: format!("attention with a bias and seq {} + head_dim {} > 12288 floats of shared memory", p.seq, p.head_dim) });
        }
        let name = pick!(p.dtype, "attention_bias");
        // SAFETY: q/k/v hold batch*seq rows of row_stride, mask batch*seq f32,
        // bias heads*seq*seq f32, out batch*seq*heads*head_dim elements (the
        // trait's contract); `smem` floats of dynamic shared memory.
        unsafe { self.launch(Unit::Attention, name, (seq as u32, p.heads as u32, p.batch as u32), ATTN_BLOCK, smem as u32, &args) }
    }

    unsafe fn gather(&self, p: &Gather) -> Result<()> {
        if p.n == 0 || p.dim == 0 {
            return Ok(());
        }
        if vectorisable(self.ctx.vec_kernels, p.dim, p.dtype, &[p.table.addr(), p.out.addr()]) {
            let dimv = p.dim / vec_width(p.dtype);
            let args = [ptr(p.table), ptr(p.ids), ptr(p.out), Arg::I64(p.n as i64), Arg::I32(i32_dim(dimv, "dim")?)];
            // SAFETY: as below; table and out are 16-byte aligned and dim is
            // a whole number of 16-byte vectors.
            return unsafe { self.launch(Unit::Gather, "gather_v", (grid_1d(p.n * dimv, EW_BLOCK), 1, 1), EW_BLOCK, 0, &args) };
        }
        let name = pick!(p.dtype, "gather");
        let args = [ptr(p.table), ptr(p.ids), ptr(p.out), Arg::I64(p.n as i64), Arg::I32(i32_dim(p.dim, "dim")?)];
        // SAFETY: ids hold n in-range u32, out n*dim elements (the contract).
        unsafe { self.launch(Unit::Gather, name, (grid_1d(p.n * p.dim, EW_BLOCK), 1, 1), EW_BLOCK, 0, &args) }
    }

    unsafe fn mean_pool(&self, p: &MeanPool) -> Result<()> {
        if p.batch == 0 || p.dim == 0 {
            return Ok(());
        }
        if p.batch > 65535 {
            return Err(Error::InvalidArgument(format!("mean_pool: batch {} exceeds 65535 on CUDA", p.batch)));
        }
        let name = pick!(p.dtype, "mean_pool");
        let dim = i32_dim(p.dim, "dim")?;
        let args = [ptr(p.x), opt(p.mask), ptr(p.out), Arg::I32(i32_dim(p.seq, "seq")?), Arg::I32(dim)];
        if self.ctx.vec_kernels && p.batch * p.dim.div_ceil(POOL_BLOCK as usize) < POOL_TOK_BELOW_BLOCKS {
            let grid = ((p.dim as u32).div_ceil(32), p.batch as u32, 1);
            // SAFETY: as below (same parameters).
            return unsafe { self.launch(Unit::Gather, pick!(p.dtype, "mean_pool_tok"), grid, POOL_TOK_BLOCK, 0, &args) };
        }
        let grid = ((p.dim as u32).div_ceil(POOL_BLOCK), p.batch as u32, 1);
        // SAFETY: x holds batch*seq*dim, mask batch*seq, out batch*dim.
        unsafe { self.launch(Unit::Gather, name, grid, POOL_BLOCK, 0, &args) }
    }

    unsafe fn segment_mean_pool(&self, p: &SegmentMeanPool) -> Result<()> {
        if p.segments == 0 || p.dim == 0 {
            return Ok(());
        }
        if p.segments > 65535 {
            return Err(Error::InvalidArgument(format!("segment_mean_pool: {} segments exceed 65535 on CUDA", p.segments)));
        }
        let name = pick!(p.dtype, "segment_mean_pool");
        let dim = i32_dim(p.dim, "dim")?;
        let args = [ptr(p.x), ptr(p.cu_seqlens), ptr(p.out), Arg::I32(dim)];
        // 32 columns a block, 8 warps over the segment's rows (the kernel's
        // shape: it assumes 256 threads).
        let grid = ((p.dim as u32).div_ceil(32), p.segments as u32, 1);
        // SAFETY: cu_seqlens holds segments+1 offsets rising from 0 to the
        // rows x holds (checked by the op layer), out segments*dim.
        unsafe { self.launch(Unit::Gather, name, grid, 256, 0, &args) }
    }

    unsafe fn l2_normalize(&self, x: BufSlice, out: BufSlice, rows: usize, cols: usize, dtype: DType) -> Result<()> {
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        let r = i32_dim(rows, "rows")? as u32;
        if cols <= WARP_ROW_MAX && vectorisable(self.ctx.vec_kernels, cols, dtype, &[x.addr(), out.addr()]) {
            let per = WARP_ROWS_BLOCK / 32;
            let args = [ptr(x), ptr(out), Arg::I32(r as i32), Arg::I32(cols as i32)];
            // SAFETY: both buffers hold rows*cols elements, 16-byte aligned.
            return unsafe { self.launch(Unit::Norm, pick!(dtype, "l2_normalize_warp"), (r.div_ceil(per), 1, 1), WARP_ROWS_BLOCK, 0, &args) };
        }
        let name = pick!(dtype, "l2_normalize");
        // SAFETY: both buffers hold rows*cols elements.
        unsafe { self.launch(Unit::Norm, name, (r, 1, 1), ROW_BLOCK, 0, &[ptr(x), ptr(out), Arg::I32(i32_dim(cols, "cols")?)]) }
    }

    unsafe fn cast(&self, x: BufSlice, from: DType, out: BufSlice, to: DType, n: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        if from == to {
            // SAFETY: both buffers hold n elements of `from`.
            return unsafe { self.d2d(x.sub(0, n * from.size())?, out.sub(0, n * from.size())?) };
        }
        let name = match (from, to) {
            (DType::F32, DType::BF16) => "cast_f32_bf16",
            (DType::BF16, DType::F32) => "cast_bf16_f32",
            (DType::F32, DType::F16) => "cast_f32_f16",
            (DType::F16, DType::F32) => "cast_f16_f32",
            _ => return Err(Error::Unsupported { backend: "cuda", what: format!("cast {} -> {} (go through f32)", from.name(), to.name()) }),
        };
        // SAFETY: x holds n `from`, out n `to` elements.
        unsafe { self.launch(Unit::Elementwise, name, (grid_1d(n, EW_BLOCK), 1, 1), EW_BLOCK, 0, &[ptr(x), ptr(out), Arg::I64(n as i64)]) }
    }

}

impl Capture for CudaStream {
    fn begin_capture(&self) -> Result<()> {
        self.ctx.bind()?;
        // cuBLAS must exist (and own its workspace) before capture starts:
        // creating a handle allocates and synchronises.
        drop(self.blas()?);
        // Relaxed capture: other threads may keep allocating (cuMemAlloc)
        // while this stream captures; only work on this stream is captured.
        // SAFETY: live stream of the current context.
        let r = unsafe { sys::cuStreamBeginCapture_v2(self.raw, sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED) };
        self.ctx.check("cuStreamBeginCapture", r)?;
        // Relaxed: see the field's comment.
        self.capturing.store(true, Ordering::Relaxed);
        Ok(())
    }

    fn end_capture(&self) -> Result<Arc<dyn BackendGraph>> {
        self.ctx.bind()?;
        let mut graph: sys::CUgraph = std::ptr::null_mut();
        // SAFETY: live stream of the current context, capturing.
        let r = unsafe { sys::cuStreamEndCapture(self.raw, &mut graph) };
        // Relaxed: see the field's comment.
        self.capturing.store(false, Ordering::Relaxed);
        self.ctx.check("cuStreamEndCapture", r)?;
        let mut exec: sys::CUgraphExec = std::ptr::null_mut();
        // SAFETY: `graph` is the captured graph; instantiate copies it.
        let r = unsafe { sys::cuGraphInstantiateWithFlags(&mut exec, graph, 0) };
        // SAFETY: the graph is no longer needed once instantiated (or failed).
        unsafe {
            let _ = sys::cuGraphDestroy(graph);
        }
        self.ctx.check("cuGraphInstantiate", r)?;
        Ok(Arc::new(CudaGraph { ctx: self.ctx.clone(), exec: Mutex::new(exec) }))
    }
}

impl HostFns for CudaStream {
    fn host_fn(&self, f: Box<dyn FnOnce() + Send>) -> Result<()> {
        type HostFn = Box<dyn FnOnce() + Send>;
        /// Called once by a driver thread when the stream reaches the call.
        unsafe extern "C" fn trampoline(data: *mut c_void) {
            // SAFETY: `data` is the `Box<HostFn>` leaked by `host_fn` below;
            // the driver calls a launched host function exactly once (it is
            // never captured into a graph: refused while capturing), so the
            // box is reclaimed exactly once.
            let f = unsafe { Box::from_raw(data as *mut HostFn) };
            // A panic must not unwind into the driver's thread.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || f())).is_err() {
                eprintln!("braid: a host function panicked on a CUDA stream");
            }
        }
        // A captured host node would call the trampoline on every replay,
        // reclaiming the box again: not allowed.
        self.not_capturing("host function")?;
        self.ctx.bind()?;
        let data = Box::into_raw(Box::new(f)) as *mut c_void;
        // SAFETY: live stream of the current context; on success the
        // trampoline owns `data`.
        let r = unsafe { sys::cuLaunchHostFunc(self.raw, Some(trampoline), data) };
        if r != CUresult::CUDA_SUCCESS {
            // SAFETY: the launch failed, so the driver never calls the
            // trampoline; `data` is still ours to reclaim.
            drop(unsafe { Box::from_raw(data as *mut HostFn) });
        }
        self.ctx.check("cuLaunchHostFunc", r)
    }
}

impl Drop for CudaStream {
    fn drop(&mut self) {
        if !self.ctx.bind_for_drop() {
            return;
        }
        // SAFETY: live stream; wait so the staging buffers and the cuBLAS
        // workspace are no longer in use, then release everything once.
        unsafe {
            let _ = sys::cuStreamSynchronize(self.raw);
        }
        drop(self.blas.get_mut().unwrap_or_else(|e| e.into_inner()).take());
        self.pinned.clear();
        // SAFETY: owned stream, destroyed once, after everything using it.
        unsafe {
            let _ = sys::cuStreamDestroy_v2(self.raw);
        }
    }
}
