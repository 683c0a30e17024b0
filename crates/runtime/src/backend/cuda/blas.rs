//! The cuBLAS side of a stream: one handle per stream, bound to that stream at
//! creation and never shared (the stream owns it behind a mutex, because a
//! `BackendStream` may be called from several threads and a cuBLAS handle
//! must not be used by two threads at once), with a user-provided workspace
//! so GEMMs can be captured into CUDA graphs (cuBLAS must not allocate during
//! capture). TF32 is off unless `BRAID_ALLOW_TF32=1`.

use super::blaslt::Lt;
use super::context::Ctx;
use super::error::cublas_error;
use crate::backend::{DType, Gemm};
use crate::error::{Error, Result};
use cudarc::cublas::sys as cb;
use cudarc::driver::sys::{self, CUdeviceptr, CUstream};
use std::ffi::c_void;

/// Workspace given to cuBLAS (its documented recommendation for Hopper).
const WORKSPACE: usize = 32 << 20;

pub(crate) struct Blas {
    handle: cb::cublasHandle_t,
    workspace: CUdeviceptr,
    stream: CUstream,
    /// cuBLASLt for GEMMs with a fused bias/activation epilogue (`None`
    /// without libcublasLt or with `BRAID_CUBLASLT=0`).
    lt: Option<Lt>,
}

fn ok(call: &str, s: cb::cublasStatus_t) -> Result<()> {
    if s == cb::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(cublas_error(call, s))
    }
}

impl Blas {
    /// A handle bound to `stream`. Context must be current.
    pub(crate) fn new(ctx: &Ctx, stream: CUstream) -> Result<Blas> {
        let mut workspace: CUdeviceptr = 0;
        // SAFETY: plain device allocation in the current context.
        let r = unsafe { sys::cuMemAlloc_v2(&mut workspace, WORKSPACE) };
        ctx.check("cuMemAlloc (cuBLAS workspace)", r)?;
        let mut handle: cb::cublasHandle_t = std::ptr::null_mut();
        let mut blas = Blas { handle, workspace, stream, lt: None };
        // SAFETY: creates a handle in the current context.
        ok("cublasCreate", unsafe { cb::cublasCreate_v2(&mut handle) })?;
        blas.handle = handle;
        // SAFETY: live handle; `stream` is a live stream of this context and
        // outlives the handle (the stream destroys the handle first).
        ok("cublasSetStream", unsafe { cb::cublasSetStream_v2(handle, stream as cb::cudaStream_t) })?;
        // SAFETY: the workspace is device memory of WORKSPACE bytes owned by
        // `blas`, freed only after the handle is destroyed.
        ok("cublasSetWorkspace", unsafe { cb::cublasSetWorkspace_v2(handle, workspace as *mut c_void, WORKSPACE) })?;
        // Default math: with CUBLAS_COMPUTE_32F no TF32 is used (we choose the
        // compute type per call, see `gemm`).
        // SAFETY: live handle.
        ok("cublasSetMathMode", unsafe { cb::cublasSetMathMode(handle, cb::cublasMath_t::CUBLAS_DEFAULT_MATH) })?;
        blas.lt = Lt::new();
        Ok(blas)
    }

    /// `out = act(a · wᵀ + bias)` in one cuBLASLt call; `Ok(false)` when that
    /// path does not cover the descriptor (the caller does GEMM + epilogue).
    ///
    /// # Safety
    /// As `gemm`.
    pub(crate) unsafe fn gemm_fused(&mut self, ctx: &Ctx, g: &Gemm) -> Result<bool> {
        let (stream, ws) = (self.stream, self.workspace);
        match self.lt.as_mut() {
            // SAFETY: per the function contract; the workspace is shared with
            // the cuBLAS handle, both used only in this stream's order.
            Some(lt) => unsafe { lt.gemm(g, ctx.allow_tf32, stream as _, ws, WORKSPACE) },
            None => Ok(false),
        }
    }

    /// `out = a · wᵀ` (no bias/activation; see the stream for the epilogue).
    ///
    /// Row-major `out[m,n]` is column-major `outᵀ` (n×m, ld n), and
    /// `outᵀ = w · aᵀ`. Row-major `w[n,k]` read column-major is `wᵀ` (k×n,
    /// ld k), so op(A) = transpose of it = `w`: `transa = T`, `lda = k`.
    /// Row-major `a[m,k]` read column-major is `aᵀ` (k×m, ld k) as it is:
    /// `transb = N`, `ldb = k`. So: `gemm(T, N, n, m, k, w, k, a, k, out, n)`.
    ///
    /// # Safety
    /// The pointers hold the sizes the descriptor names; context current.
    pub(crate) unsafe fn gemm(&mut self, ctx: &Ctx, g: &Gemm) -> Result<()> {
        let dims = |v: usize, what: &str| i32::try_from(v).map_err(|_| Error::InvalidArgument(format!("gemm {what}={v} exceeds cuBLAS's i32 range")));
        let (m, n, k) = (dims(g.m, "m")?, dims(g.n, "n")?, dims(g.k, "k")?);
        let (ty, compute) = match g.dtype {
            DType::F32 => (
                cb::cudaDataType::CUDA_R_32F,
                if ctx.allow_tf32 { cb::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32 } else { cb::cublasComputeType_t::CUBLAS_COMPUTE_32F },
            ),
            DType::BF16 => (cb::cudaDataType::CUDA_R_16BF, cb::cublasComputeType_t::CUBLAS_COMPUTE_32F),
        };
        let alpha = 1.0f32;
        let beta = 0.0f32;
        // SAFETY: per the function contract; alpha/beta are host f32 as the
        // compute type requires (default host pointer mode).
        let s = unsafe {
            cb::cublasGemmEx(
                self.handle,
                cb::cublasOperation_t::CUBLAS_OP_T,
                cb::cublasOperation_t::CUBLAS_OP_N,
                n,
                m,
                k,
                &alpha as *const f32 as *const c_void,
                g.w as *const c_void,
                ty,
                k,
                g.a as *const c_void,
                ty,
                k,
                &beta as *const f32 as *const c_void,
                g.out as *mut c_void,
                ty,
                n,
                compute,
                cb::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        };
        ok("cublasGemmEx", s)
    }

    /// Destroy the handle and free the workspace. Context must be current and
    /// the stream idle.
    pub(crate) fn destroy(&mut self) {
        drop(self.lt.take());
        // SAFETY: owned handle and workspace, released once (nulled after).
        unsafe {
            if !self.handle.is_null() {
                let _ = cb::cublasDestroy_v2(self.handle);
                self.handle = std::ptr::null_mut();
            }
            if self.workspace != 0 {
                let _ = sys::cuMemFree_v2(self.workspace);
                self.workspace = 0;
            }
        }
    }
}

// SAFETY: the handle is used by one thread at a time (the owning stream keeps
// `Blas` in a mutex); cuBLAS handles may move between threads.
unsafe impl Send for Blas {}

impl Drop for Blas {
    fn drop(&mut self) {
        // The owner (stream drop, or `new` on its error path) has the
        // context current.
        self.destroy();
    }
}
