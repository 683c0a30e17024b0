//! The cuBLAS side of a stream: one cuBLAS handle and one cuBLASLt handle per
//! stream, bound to that stream and never shared (the stream owns them behind
//! one mutex, because a `BackendStream` may be called from several threads
//! and a handle must not be used by two threads at once), with one
//! user-provided workspace that both use (their work is ordered on the one
//! stream, and the mutex orders the calls), so GEMMs can be captured into
//! CUDA graphs (neither library may allocate during capture). TF32 is off
//! unless `BRAID_ALLOW_TF32=1`.
//!
//! GEMMs go through cuBLASLt where it is loaded (`BRAID_CUBLASLT=0` turns it
//! off), with bias and activation fused as an epilogue where cuBLASLt has one
//! (bias, ReLU+bias, GELU-tanh+bias; `BRAID_CUBLASLT_GELU=0` leaves GELU
//! tanh to the kernel); GELU erf, which cuBLASLt lacks, is left
//! to the caller's kernel. The matmul descriptor, the matrix layouts and the
//! heuristic's algorithm are made once per (m, n, k, dtype, epilogue, pointer
//! alignment) and cached per stream; where cuBLASLt rejects a shape the
//! cache remembers it and the GEMM goes to `cublasGemmEx` instead.

use super::context::Ctx;
use super::error::{cublas_error, cublaslt_error};
use crate::backend::{Activation, DType, Gemm};
use crate::error::{Error, Result};
use cudarc::cublas::sys as cb;
use cudarc::cublaslt::sys as lt;
use cudarc::driver::sys::{self, CUdeviceptr, CUstream};
use std::collections::HashMap;
use std::ffi::c_void;

/// Workspace given to cuBLAS and cuBLASLt (cuBLAS's documented
/// recommendation for Hopper).
const WORKSPACE: usize = 32 << 20;

/// Plans kept per stream before the cache is emptied (shapes that vary
/// without bound, e.g. a dynamic batch, must not grow it forever).
const MAX_PLANS: usize = 256;

pub(crate) struct Blas {
    handle: cb::cublasHandle_t,
    /// Null where cuBLASLt is not used (not loaded, or `BRAID_CUBLASLT=0`).
    lt: lt::cublasLtHandle_t,
    workspace: CUdeviceptr,
    stream: CUstream,
    /// `None`: cuBLASLt rejected this key; use `cublasGemmEx`.
    plans: HashMap<Key, Option<Plan>>,
    /// GEMMs run by cuBLASLt / by `cublasGemmEx` (for tests and reports).
    pub(crate) lt_calls: u64,
    pub(crate) gemmex_calls: u64,
}

fn ok(call: &str, s: cb::cublasStatus_t) -> Result<()> {
    if s == cb::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(cublas_error(call, s))
    }
}

fn lt_ok(call: &str, s: lt::cublasStatus_t) -> Result<()> {
    if s == lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(cublaslt_error(call, s))
    }
}

/// What the GEMM left for the caller's bias/activation kernel to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rest {
    pub bias: bool,
    pub act: Activation,
}

/// The cuBLASLt epilogue for a bias/activation pair, and what is left over
/// (`gelu`: use cuBLASLt's GELU, the tanh form, for `GeluTanh`).
fn epilogue(bias: bool, act: Activation, gelu: bool) -> (lt::cublasLtEpilogue_t, Rest) {
    use lt::cublasLtEpilogue_t as E;
    let none = Rest { bias: false, act: Activation::None };
    match (bias, act) {
        (false, Activation::GeluTanh) if !gelu => (E::CUBLASLT_EPILOGUE_DEFAULT, Rest { bias: false, act }),
        (true, Activation::GeluTanh) if !gelu => (E::CUBLASLT_EPILOGUE_BIAS, Rest { bias: false, act }),
        (false, Activation::None) => (E::CUBLASLT_EPILOGUE_DEFAULT, none),
        (true, Activation::None) => (E::CUBLASLT_EPILOGUE_BIAS, none),
        (false, Activation::Relu) => (E::CUBLASLT_EPILOGUE_RELU, none),
        (true, Activation::Relu) => (E::CUBLASLT_EPILOGUE_RELU_BIAS, none),
        // cuBLASLt's GELU is the tanh form.
        (false, Activation::GeluTanh) => (E::CUBLASLT_EPILOGUE_GELU, none),
        (true, Activation::GeluTanh) => (E::CUBLASLT_EPILOGUE_GELU_BIAS, none),
        // No erf GELU in cuBLASLt: fuse the bias, leave the activation.
        (false, Activation::GeluErf) => (E::CUBLASLT_EPILOGUE_DEFAULT, Rest { bias: false, act }),
        (true, Activation::GeluErf) => (E::CUBLASLT_EPILOGUE_BIAS, Rest { bias: false, act }),
        // No SiLU in cuBLASLt either.
        (false, Activation::Silu) => (E::CUBLASLT_EPILOGUE_DEFAULT, Rest { bias: false, act }),
        (true, Activation::Silu) => (E::CUBLASLT_EPILOGUE_BIAS, Rest { bias: false, act }),
    }
}

/// One cached cuBLASLt matmul: descriptor, layouts and chosen algorithm.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    m: i32,
    n: i32,
    k: i32,
    dtype: DType,
    epilogue: u32,
    /// log2 of the pointers' common alignment, capped at 256 bytes.
    align_log2: u32,
}

struct Plan {
    desc: lt::cublasLtMatmulDesc_t,
    a: lt::cublasLtMatrixLayout_t,
    b: lt::cublasLtMatrixLayout_t,
    d: lt::cublasLtMatrixLayout_t,
    algo: lt::cublasLtMatmulAlgo_t,
    bias: bool,
}

impl Plan {
    /// Release the descriptors (each once; nulled after).
    fn destroy(&mut self) {
        // SAFETY: owned descriptors; matmuls already enqueued copied what
        // they need from them.
        unsafe {
            if !self.desc.is_null() {
                let _ = lt::cublasLtMatmulDescDestroy(self.desc);
                self.desc = std::ptr::null_mut();
            }
            for l in [&mut self.a, &mut self.b, &mut self.d] {
                if !l.is_null() {
                    let _ = lt::cublasLtMatrixLayoutDestroy(*l);
                    *l = std::ptr::null_mut();
                }
            }
        }
    }
}

impl Drop for Plan {
    fn drop(&mut self) {
        self.destroy();
    }
}

/// Set one descriptor attribute from a plain value.
///
/// # Safety
/// `desc` is live and `T` is the attribute's type.
unsafe fn set_desc<T>(desc: lt::cublasLtMatmulDesc_t, attr: lt::cublasLtMatmulDescAttributes_t, v: &T) -> Result<()> {
    // SAFETY: per the function contract; the library copies the value.
    lt_ok("cublasLtMatmulDescSetAttribute", unsafe { lt::cublasLtMatmulDescSetAttribute(desc, attr, v as *const T as *const c_void, std::mem::size_of::<T>()) })
}

/// # Safety
/// `pref` is live and `T` is the attribute's type.
unsafe fn set_pref<T>(pref: lt::cublasLtMatmulPreference_t, attr: lt::cublasLtMatmulPreferenceAttributes_t, v: &T) -> Result<()> {
    // SAFETY: per the function contract; the library copies the value.
    lt_ok("cublasLtMatmulPreferenceSetAttribute", unsafe { lt::cublasLtMatmulPreferenceSetAttribute(pref, attr, v as *const T as *const c_void, std::mem::size_of::<T>()) })
}

/// The largest power of two (at most 256) dividing every pointer.
fn align_log2(ptrs: &[u64]) -> u32 {
    ptrs.iter().fold(8u32, |acc, &p| if p == 0 { acc } else { acc.min(p.trailing_zeros()) })
}

impl Blas {
    /// Handles bound to `stream` (cuBLASLt where `use_lt`). Context must be
    /// current.
    pub(crate) fn new(ctx: &Ctx, stream: CUstream) -> Result<Blas> {
        let mut workspace: CUdeviceptr = 0;
        // SAFETY: plain device allocation in the current context.
        let r = unsafe { sys::cuMemAlloc_v2(&mut workspace, WORKSPACE) };
        ctx.check("cuMemAlloc (cuBLAS workspace)", r)?;
        let mut handle: cb::cublasHandle_t = std::ptr::null_mut();
        let mut blas = Blas { handle, lt: std::ptr::null_mut(), workspace, stream, plans: HashMap::new(), lt_calls: 0, gemmex_calls: 0 };
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
        if ctx.use_lt {
            let mut h: lt::cublasLtHandle_t = std::ptr::null_mut();
            // SAFETY: creates a handle in the current context (the library
            // was found loadable when the backend opened).
            lt_ok("cublasLtCreate", unsafe { lt::cublasLtCreate(&mut h) })?;
            blas.lt = h;
        }
        Ok(blas)
    }

    fn types(ctx: &Ctx, d: DType) -> (lt::cudaDataType, lt::cublasComputeType_t) {
        match d {
            DType::F32 => (
                lt::cudaDataType::CUDA_R_32F,
                if ctx.allow_tf32 { lt::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32 } else { lt::cublasComputeType_t::CUBLAS_COMPUTE_32F },
            ),
            DType::BF16 => (lt::cudaDataType::CUDA_R_16BF, lt::cublasComputeType_t::CUBLAS_COMPUTE_32F),
            DType::F16 => (lt::cudaDataType::CUDA_R_16F, lt::cublasComputeType_t::CUBLAS_COMPUTE_32F),
        }
    }

    /// Build the plan for `key`, or `None` where cuBLASLt offers no
    /// algorithm. Descriptors are released on every path (Plan's drop).
    fn make_plan(&self, ctx: &Ctx, key: &Key) -> Result<Option<Plan>> {
        let (ty, compute) = Self::types(ctx, key.dtype);
        let mut p = Plan {
            desc: std::ptr::null_mut(),
            a: std::ptr::null_mut(),
            b: std::ptr::null_mut(),
            d: std::ptr::null_mut(),
            algo: lt::cublasLtMatmulAlgo_t { data: [0; 8] },
            bias: false,
        };
        let (m, n, k) = (key.m as u64, key.n as u64, key.k as u64);
        // SAFETY: creates descriptors owned by `p`; attribute values have
        // the documented types (int32 for TRANSA/B, u32 for the epilogue).
        unsafe {
            lt_ok("cublasLtMatmulDescCreate", lt::cublasLtMatmulDescCreate(&mut p.desc, compute, lt::cudaDataType::CUDA_R_32F))?;
            // See `gemm_ex` for the row-major to column-major mapping.
            set_desc(p.desc, lt::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA, &(cb::cublasOperation_t::CUBLAS_OP_T as i32))?;
            set_desc(p.desc, lt::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB, &(cb::cublasOperation_t::CUBLAS_OP_N as i32))?;
            set_desc(p.desc, lt::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE, &key.epilogue)?;
            lt_ok("cublasLtMatrixLayoutCreate", lt::cublasLtMatrixLayoutCreate(&mut p.a, ty, k, n, k as i64))?;
            lt_ok("cublasLtMatrixLayoutCreate", lt::cublasLtMatrixLayoutCreate(&mut p.b, ty, k, m, k as i64))?;
            lt_ok("cublasLtMatrixLayoutCreate", lt::cublasLtMatrixLayoutCreate(&mut p.d, ty, n, m, n as i64))?;
        }
        p.bias = key.epilogue & (lt::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS as u32) != 0;
        if p.bias {
            // A placeholder so the heuristic sees a bias of the right
            // alignment; the real pointer is set per call.
            let fake: u64 = 1 << key.align_log2;
            // SAFETY: live descriptor; the attribute is a device pointer.
            unsafe { set_desc(p.desc, lt::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &fake)? };
        }
        let mut pref: lt::cublasLtMatmulPreference_t = std::ptr::null_mut();
        // SAFETY: creates a preference, released below on every path.
        lt_ok("cublasLtMatmulPreferenceCreate", unsafe { lt::cublasLtMatmulPreferenceCreate(&mut pref) })?;
        let found = (|| -> Result<Option<lt::cublasLtMatmulAlgo_t>> {
            use lt::cublasLtMatmulPreferenceAttributes_t as P;
            let align: u32 = 1 << key.align_log2;
            // SAFETY: live preference; documented attribute types (u64
            // workspace bytes, u32 alignments).
            unsafe {
                set_pref(pref, P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &(WORKSPACE as u64))?;
                for a in [P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES] {
                    set_pref(pref, a, &align)?;
                }
            }
            // SAFETY: zeroed plain-data result, written by the heuristic.
            let mut res: lt::cublasLtMatmulHeuristicResult_t = unsafe { std::mem::zeroed() };
            let mut count = 0i32;
            // SAFETY: live handle, descriptors and preference; room for 1.
            let s = unsafe { lt::cublasLtMatmulAlgoGetHeuristic(self.lt, p.desc, p.a, p.b, p.d, p.d, pref, 1, &mut res, &mut count) };
            if s != lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS || count < 1 || res.state != lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS || res.workspaceSize > WORKSPACE {
                return Ok(None);
            }
            Ok(Some(res.algo))
        })();
        // SAFETY: created above, released once.
        unsafe {
            let _ = lt::cublasLtMatmulPreferenceDestroy(pref);
        }
        Ok(found?.map(|algo| {
            p.algo = algo;
            p
        }))
    }

    /// `out = epilogue(a · wᵀ)`: through cuBLASLt with the bias/activation
    /// fused where it can, else `cublasGemmEx`. Returns what is left for the
    /// caller's bias/activation kernel.
    ///
    /// # Safety
    /// The pointers hold the sizes the descriptor names; context current.
    pub(crate) unsafe fn gemm(&mut self, ctx: &Ctx, g: &Gemm) -> Result<Rest> {
        let dims = |v: usize, what: &str| i32::try_from(v).map_err(|_| Error::InvalidArgument(format!("gemm {what}={v} exceeds cuBLAS's i32 range")));
        let (m, n, k) = (dims(g.m, "m")?, dims(g.n, "n")?, dims(g.k, "k")?);
        let unfused = Rest { bias: g.bias.is_some(), act: g.act };
        if !self.lt.is_null() {
            let (epi, rest) = epilogue(g.bias.is_some(), g.act, ctx.lt_gelu);
            let key = Key { m, n, k, dtype: g.dtype, epilogue: epi as u32, align_log2: align_log2(&[g.a.addr(), g.w.addr(), g.out.addr(), g.bias.map_or(0, |b| b.addr())]) };
            if !self.plans.contains_key(&key) {
                if self.plans.len() >= MAX_PLANS {
                    self.plans.clear();
                }
                let plan = self.make_plan(ctx, &key)?;
                self.plans.insert(key, plan);
            }
            let status = match self.plans.get(&key) {
                Some(Some(plan)) => {
                    if plan.bias {
                        let b: u64 = g.bias.map_or(0, |b| b.addr());
                        // SAFETY: live descriptor, used by this thread only
                        // (the stream's mutex); the matmul below reads it.
                        unsafe { set_desc(plan.desc, lt::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &b)? };
                    }
                    let (alpha, beta) = (1.0f32, 0.0f32);
                    // SAFETY: per the function contract; C = D with beta 0;
                    // host f32 scalars (scale type f32, host pointer mode);
                    // the workspace is ours and large enough for the algo.
                    Some(unsafe {
                        lt::cublasLtMatmul(
                            self.lt,
                            plan.desc,
                            &alpha as *const f32 as *const c_void,
                            g.w.addr() as *const c_void,
                            plan.a,
                            g.a.addr() as *const c_void,
                            plan.b,
                            &beta as *const f32 as *const c_void,
                            g.out.addr() as *const c_void,
                            plan.d,
                            g.out.addr() as *mut c_void,
                            plan.d,
                            &plan.algo,
                            self.workspace as *mut c_void,
                            WORKSPACE,
                            self.stream as lt::cudaStream_t,
                        )
                    })
                }
                _ => None,
            };
            match status {
                None => {}
                Some(lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS) => {
                    self.lt_calls += 1;
                    return Ok(rest);
                }
                // Rejected (checked on the host, nothing enqueued): remember,
                // and use cublasGemmEx for this key from now on.
                Some(lt::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED | lt::cublasStatus_t::CUBLAS_STATUS_INVALID_VALUE) => {
                    self.plans.insert(key, None);
                }
                Some(s) => return Err(cublaslt_error("cublasLtMatmul", s)),
            }
        }
        // SAFETY: per the function contract.
        unsafe { self.gemm_ex(ctx, g, m, n, k)? };
        self.gemmex_calls += 1;
        Ok(unfused)
    }

    /// `out = a · wᵀ` with `cublasGemmEx` (no bias/activation).
    ///
    /// Row-major `out[m,n]` is column-major `outᵀ` (n×m, ld n), and
    /// `outᵀ = w · aᵀ`. Row-major `w[n,k]` read column-major is `wᵀ` (k×n,
    /// ld k), so op(A) = transpose of it = `w`: `transa = T`, `lda = k`.
    /// Row-major `a[m,k]` read column-major is `aᵀ` (k×m, ld k) as it is:
    /// `transb = N`, `ldb = k`. So: `gemm(T, N, n, m, k, w, k, a, k, out, n)`.
    ///
    /// # Safety
    /// The pointers hold the sizes the descriptor names; context current.
    unsafe fn gemm_ex(&mut self, ctx: &Ctx, g: &Gemm, m: i32, n: i32, k: i32) -> Result<()> {
        let (ty, compute) = match g.dtype {
            DType::F32 => (
                cb::cudaDataType::CUDA_R_32F,
                if ctx.allow_tf32 { cb::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32 } else { cb::cublasComputeType_t::CUBLAS_COMPUTE_32F },
            ),
            DType::BF16 => (cb::cudaDataType::CUDA_R_16BF, cb::cublasComputeType_t::CUBLAS_COMPUTE_32F),
            DType::F16 => (cb::cudaDataType::CUDA_R_16F, cb::cublasComputeType_t::CUBLAS_COMPUTE_32F),
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
                g.w.addr() as *const c_void,
                ty,
                k,
                g.a.addr() as *const c_void,
                ty,
                k,
                &beta as *const f32 as *const c_void,
                g.out.addr() as *mut c_void,
                ty,
                n,
                compute,
                cb::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        };
        ok("cublasGemmEx", s)
    }

    /// Cached cuBLASLt plans (rejected keys included).
    pub(crate) fn plans(&self) -> usize {
        self.plans.len()
    }

    /// Destroy the handles and free the workspace. Context must be current
    /// and the stream idle.
    pub(crate) fn destroy(&mut self) {
        self.plans.clear();
        // SAFETY: owned handles and workspace, released once (nulled after).
        unsafe {
            if !self.lt.is_null() {
                let _ = lt::cublasLtDestroy(self.lt);
                self.lt = std::ptr::null_mut();
            }
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

// SAFETY: the handles and descriptors are used by one thread at a time (the
// owning stream keeps `Blas` in a mutex); cuBLAS/cuBLASLt handles and
// descriptors may move between threads.
unsafe impl Send for Blas {}

impl Drop for Blas {
    fn drop(&mut self) {
        // The owner (stream drop, or `new` on its error path) has the
        // context current.
        self.destroy();
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn epilogues_cover_what_cublaslt_offers() {
        use lt::cublasLtEpilogue_t as E;
        assert_eq!(epilogue(true, Activation::Relu, true), (E::CUBLASLT_EPILOGUE_RELU_BIAS, Rest { bias: false, act: Activation::None }));
        assert_eq!(epilogue(true, Activation::GeluTanh, true).0, E::CUBLASLT_EPILOGUE_GELU_BIAS);
        assert_eq!(epilogue(true, Activation::GeluTanh, false), (E::CUBLASLT_EPILOGUE_BIAS, Rest { bias: false, act: Activation::GeluTanh }));
        assert_eq!(epilogue(true, Activation::GeluErf, true), (E::CUBLASLT_EPILOGUE_BIAS, Rest { bias: false, act: Activation::GeluErf }));
        assert_eq!(epilogue(false, Activation::None, true).0, E::CUBLASLT_EPILOGUE_DEFAULT);
        assert_eq!(align_log2(&[256, 512, 0]), 8);
        assert_eq!(align_log2(&[256, 4 + 256]), 2);
    }
}
