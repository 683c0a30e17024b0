//! cuBLASLt GEMMs with the bias and activation fused into the epilogue
//! (`BIAS`, `RELU(_BIAS)`, `GELU(_BIAS)`: cuBLASLt's GELU is the tanh form,
//! so GELU-erf keeps the separate kernel). One Lt handle per stream (inside
//! the stream's `Blas`, behind its mutex), sharing the cuBLAS workspace: both
//! run in the stream's order, never at once. Descriptors, layouts and the
//! heuristic's algorithm are cached per (shape, dtype, epilogue, operand
//! alignment); a call after the first costs one attribute set (the bias
//! pointer) and the matmul, so it can be captured into graphs. TF32 only with
//! `BRAID_ALLOW_TF32=1`, as for cuBLAS.

use super::error::cublas_error;
use crate::backend::{Activation, DType, Gemm};
use crate::error::Result;
use cudarc::cublaslt::sys as lt;
use std::collections::HashMap;
use std::ffi::c_void;

fn ok(call: &str, s: lt::cublasStatus_t) -> Result<()> {
    if s == lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        // The two crates' status enums have the same values.
        // SAFETY: same C enum (cublasStatus_t), same representation.
        let s: cudarc::cublas::sys::cublasStatus_t = unsafe { std::mem::transmute(s) };
        Err(cublas_error(call, s))
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    m: usize,
    n: usize,
    k: usize,
    dtype: DType,
    epilogue: u32,
    /// Alignment (bytes, up to 256) of a, w, out, bias.
    align: [u32; 4],
}

struct Plan {
    desc: lt::cublasLtMatmulDesc_t,
    layouts: [lt::cublasLtMatrixLayout_t; 3], // w (A), a (B), out (C = D)
    algo: lt::cublasLtMatmulAlgo_t,
}

impl Plan {
    fn destroy(&mut self) {
        // SAFETY: owned descriptors, destroyed once (the plan is dropped after).
        unsafe {
            let _ = lt::cublasLtMatmulDescDestroy(self.desc);
            for l in self.layouts {
                let _ = lt::cublasLtMatrixLayoutDestroy(l);
            }
        }
    }
}

pub(crate) struct Lt {
    handle: lt::cublasLtHandle_t,
    /// `None`: no algorithm for that key; the caller falls back.
    plans: HashMap<Key, Option<Plan>>,
}

fn align_of(p: u64) -> u32 {
    if p == 0 {
        256
    } else {
        (1u64 << p.trailing_zeros().min(8)) as u32
    }
}

fn epilogue(bias: bool, act: Activation) -> Option<lt::cublasLtEpilogue_t> {
    use lt::cublasLtEpilogue_t::*;
    Some(match (bias, act) {
        (true, Activation::None) => CUBLASLT_EPILOGUE_BIAS,
        (true, Activation::Relu) => CUBLASLT_EPILOGUE_RELU_BIAS,
        (true, Activation::GeluTanh) => CUBLASLT_EPILOGUE_GELU_BIAS,
        (false, Activation::Relu) => CUBLASLT_EPILOGUE_RELU,
        (false, Activation::GeluTanh) => CUBLASLT_EPILOGUE_GELU,
        _ => return None,
    })
}

impl Lt {
    /// A handle, or `None` when libcublasLt is missing or fails to start.
    pub(crate) fn new() -> Option<Lt> {
        if std::env::var("BRAID_CUBLASLT").is_ok_and(|v| v == "0") {
            return None;
        }
        // SAFETY: only probes whether the library can be loaded.
        if !unsafe { lt::is_culib_present() } {
            return None;
        }
        let mut handle: lt::cublasLtHandle_t = std::ptr::null_mut();
        // SAFETY: creates a handle in the current context (the caller bound it).
        if unsafe { lt::cublasLtCreate(&mut handle) } != lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            return None;
        }
        Some(Lt { handle, plans: HashMap::new() })
    }

    /// `out = act(a · wᵀ + bias)` in one cuBLASLt call, when an epilogue
    /// covers (bias, act) and an algorithm exists; `Ok(false)` otherwise (the
    /// caller runs the plain GEMM and the epilogue kernel). Same column-major
    /// mapping as `Blas::gemm`: D(n×m) = op(w)(n×k) · a(k×m), bias over D's rows.
    ///
    /// # Safety
    /// The descriptor's pointers hold its sizes; the context is current;
    /// `workspace` holds `ws_bytes` bytes used only in `stream`'s order.
    pub(crate) unsafe fn gemm(&mut self, g: &Gemm, allow_tf32: bool, stream: lt::cudaStream_t, workspace: u64, ws_bytes: usize) -> Result<bool> {
        let Some(epi) = epilogue(g.bias.is_some(), g.act) else { return Ok(false) };
        if g.m == 0 || g.n == 0 || g.k == 0 {
            return Ok(false);
        }
        let key = Key {
            m: g.m,
            n: g.n,
            k: g.k,
            dtype: g.dtype,
            epilogue: epi as u32,
            align: [align_of(g.a), align_of(g.w), align_of(g.out), align_of(g.bias.unwrap_or(0))],
        };
        if !self.plans.contains_key(&key) {
            // SAFETY: host-side descriptor creation with a live handle.
            let plan = unsafe { self.plan(&key, epi, allow_tf32, ws_bytes) };
            self.plans.insert(key, plan.ok().flatten());
        }
        let Some(plan) = self.plans.get(&key).and_then(|p| p.as_ref()) else { return Ok(false) };
        if let Some(b) = g.bias {
            // SAFETY: live descriptor; the attribute is a device pointer (u64).
            ok("cublasLtMatmulDescSetAttribute(BIAS_POINTER)", unsafe {
                lt::cublasLtMatmulDescSetAttribute(plan.desc, lt::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &b as *const u64 as *const c_void, 8)
            })?;
        }
        let (alpha, beta) = (1.0f32, 0.0f32);
        let [la, lb, ld] = plan.layouts;
        // SAFETY: per the function contract; alpha/beta are host f32 (scale
        // type 32F); C = D with beta 0; the algorithm was chosen for these
        // descriptors and alignments, with at most `ws_bytes` of workspace.
        let s = unsafe {
            lt::cublasLtMatmul(
                self.handle,
                plan.desc,
                &alpha as *const f32 as *const c_void,
                g.w as *const c_void,
                la,
                g.a as *const c_void,
                lb,
                &beta as *const f32 as *const c_void,
                g.out as *const c_void,
                ld,
                g.out as *mut c_void,
                ld,
                &plan.algo,
                workspace as *mut c_void,
                ws_bytes,
                stream,
            )
        };
        ok("cublasLtMatmul", s)?;
        Ok(true)
    }

    /// # Safety
    /// Live handle; host-side calls only.
    unsafe fn plan(&self, key: &Key, epi: lt::cublasLtEpilogue_t, allow_tf32: bool, ws_bytes: usize) -> Result<Option<Plan>> {
        let (ty, compute) = match key.dtype {
            DType::F32 => (
                lt::cudaDataType::CUDA_R_32F,
                if allow_tf32 { lt::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32 } else { lt::cublasComputeType_t::CUBLAS_COMPUTE_32F },
            ),
            DType::BF16 => (lt::cudaDataType::CUDA_R_16BF, lt::cublasComputeType_t::CUBLAS_COMPUTE_32F),
        };
        let mut plan = Plan { desc: std::ptr::null_mut(), layouts: [std::ptr::null_mut(); 3], algo: lt::cublasLtMatmulAlgo_t { data: [0; 8] } };
        let result = (|| -> Result<bool> {
            use lt::cublasLtMatmulDescAttributes_t as A;
            // SAFETY (whole closure): host-side descriptor calls on objects
            // created here; attribute buffers are locals of the named sizes.
            unsafe {
                ok("cublasLtMatmulDescCreate", lt::cublasLtMatmulDescCreate(&mut plan.desc, compute, lt::cudaDataType::CUDA_R_32F))?;
                // cublasOperation_t (a C enum, int32): CUBLAS_OP_T = 1, CUBLAS_OP_N = 0.
                let ta = 1i32;
                let tb = 0i32;
                let sz = 4;
                ok("set TRANSA", lt::cublasLtMatmulDescSetAttribute(plan.desc, A::CUBLASLT_MATMUL_DESC_TRANSA, &ta as *const _ as *const c_void, sz))?;
                ok("set TRANSB", lt::cublasLtMatmulDescSetAttribute(plan.desc, A::CUBLASLT_MATMUL_DESC_TRANSB, &tb as *const _ as *const c_void, sz))?;
                let e = epi;
                ok("set EPILOGUE", lt::cublasLtMatmulDescSetAttribute(plan.desc, A::CUBLASLT_MATMUL_DESC_EPILOGUE, &e as *const _ as *const c_void, std::mem::size_of_val(&e)))?;
                let (m, n, k) = (key.m as u64, key.n as u64, key.k as u64);
                ok("layout w", lt::cublasLtMatrixLayoutCreate(&mut plan.layouts[0], ty, k, n, k as i64))?;
                ok("layout a", lt::cublasLtMatrixLayoutCreate(&mut plan.layouts[1], ty, k, m, k as i64))?;
                ok("layout out", lt::cublasLtMatrixLayoutCreate(&mut plan.layouts[2], ty, n, m, n as i64))?;
                let mut pref: lt::cublasLtMatmulPreference_t = std::ptr::null_mut();
                ok("cublasLtMatmulPreferenceCreate", lt::cublasLtMatmulPreferenceCreate(&mut pref))?;
                use lt::cublasLtMatmulPreferenceAttributes_t as P;
                let ws = ws_bytes as u64;
                let mut r = lt::cublasLtMatmulPreferenceSetAttribute(pref, P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws as *const u64 as *const c_void, 8);
                let [aa, aw, ao, ab] = key.align;
                for (attr, v) in [
                    (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, aw),
                    (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, aa),
                    (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, ao),
                    (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, ao),
                ] {
                    if r == lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                        r = lt::cublasLtMatmulPreferenceSetAttribute(pref, attr, &v as *const u32 as *const c_void, 4);
                    }
                }
                let mut res: lt::cublasLtMatmulHeuristicResult_t = std::mem::zeroed();
                let mut count = 0i32;
                if r == lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                    let [la, lb, ld] = plan.layouts;
                    r = lt::cublasLtMatmulAlgoGetHeuristic(self.handle, plan.desc, la, lb, ld, ld, pref, 1, &mut res, &mut count);
                }
                let _ = lt::cublasLtMatmulPreferenceDestroy(pref);
                // The bias must be aligned to its element size at least.
                if r != lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS || count < 1 || (ab as usize) < key.dtype.size() {
                    return Ok(false);
                }
                plan.algo = res.algo;
                Ok(true)
            }
        })();
        match result {
            Ok(true) => Ok(Some(plan)),
            other => {
                plan.destroy();
                other.map(|_| None)
            }
        }
    }
}

impl Drop for Lt {
    fn drop(&mut self) {
        for (_, p) in self.plans.iter_mut() {
            if let Some(p) = p {
                p.destroy();
            }
        }
        // SAFETY: owned handle, destroyed once, after its plans; the owner has
        // the context current and the stream idle.
        unsafe {
            let _ = lt::cublasLtDestroy(self.handle);
        }
    }
}

// SAFETY: used by one thread at a time (inside the stream's `Blas` mutex);
// Lt handles and descriptors may move between threads.
unsafe impl Send for Lt {}
