//! The per-device CUDA state every stream, event and graph shares through an
//! `Arc`: the primary context, the device's name and compute capability, the
//! poison flag (the first sticky error, after which every call fails with
//! [`Error::DevicePoisoned`]) and the NVRTC kernel cache.

use super::error::{driver_error, driver_strings, is_sticky};
use super::module::ModuleCache;
use crate::error::{Error, Result};
use cudarc::driver::sys::{self, CUcontext, CUdevice, CUresult};
use std::cell::Cell;
use std::sync::OnceLock;

thread_local! {
    /// The context this thread last made current through [`Ctx::bind`]. A
    /// cache so the hot path skips `cuCtxSetCurrent`; braid only ever makes a
    /// device's *primary* context current, whose handle is stable for the
    /// process, so the cache cannot go stale unless foreign code on this
    /// thread switches contexts behind braid's back.
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

/// One device's context and what hangs off it.
pub(crate) struct Ctx {
    pub ordinal: usize,
    pub device: CUdevice,
    pub raw: CUcontext,
    pub name: String,
    /// Compute capability (major, minor): NVRTC compiles for exactly this.
    pub cc: (i32, i32),
    /// `BRAID_ALLOW_TF32=1`: f32 GEMMs may use TF32 tensor cores.
    pub allow_tf32: bool,
    /// GEMMs through cuBLASLt with fused epilogues: libcublasLt loads and
    /// `BRAID_CUBLASLT` is not `0`.
    pub use_lt: bool,
    /// f16/bf16 packed attention on tensor cores (`BRAID_ATTN_MMA=0`: the CUDA-core kernel).
    pub attn_mma: bool,
    /// GELU tanh fused as cuBLASLt's GELU epilogue (`BRAID_CUBLASLT_GELU`
    /// not `0`); else cuBLASLt fuses the bias and a kernel the GELU.
    pub lt_gelu: bool,
    /// The 16-byte vector and warp-per-row kernels where a launch allows them
    /// (`BRAID_CUDA_VEC=0`: always the element-at-a-time and block-per-row
    /// kernels, for A/B measurements in one run).
    pub vec_kernels: bool,
    /// The first sticky error's description; set once, never cleared.
    poison: OnceLock<String>,
    pub modules: ModuleCache,
}

// SAFETY: `CUcontext` is a handle, not thread-affine data: the driver lets any
// thread make a context current and use it (the driver API is thread-safe).
// The other fields are Send + Sync by themselves.
unsafe impl Send for Ctx {}
// SAFETY: as above; every mutation goes through `OnceLock` or the driver.
unsafe impl Sync for Ctx {}

impl Ctx {
    pub(crate) fn new(ordinal: usize, device: CUdevice, raw: CUcontext, name: String, cc: (i32, i32), lt_loaded: bool) -> Ctx {
        let allow_tf32 = std::env::var("BRAID_ALLOW_TF32").is_ok_and(|v| v == "1");
        let use_lt = lt_loaded && !std::env::var("BRAID_CUBLASLT").is_ok_and(|v| v == "0");
        let lt_gelu = !std::env::var("BRAID_CUBLASLT_GELU").is_ok_and(|v| v == "0");
        let attn_mma = !std::env::var("BRAID_ATTN_MMA").is_ok_and(|v| v == "0");
        let vec_kernels = !std::env::var("BRAID_CUDA_VEC").is_ok_and(|v| v == "0");
        Ctx { ordinal, device, raw, name, cc, allow_tf32, use_lt, attn_mma, lt_gelu, vec_kernels, poison: OnceLock::new(), modules: ModuleCache::new() }
    }

    /// Fail with [`Error::DevicePoisoned`] if a sticky error happened.
    #[inline]
    pub(crate) fn check_poison(&self) -> Result<()> {
        match self.poison.get() {
            None => Ok(()),
            Some(cause) => Err(self.poisoned(cause)),
        }
    }

    fn poisoned(&self, cause: &str) -> Error {
        Error::DevicePoisoned { device: format!("cuda:{} ({})", self.ordinal, self.name), cause: cause.to_string() }
    }

    /// Make this context current on the calling thread (after the poison
    /// check): every driver call needs a current context.
    #[inline]
    pub(crate) fn bind(&self) -> Result<()> {
        self.check_poison()?;
        let key = self.raw as usize;
        if CURRENT.with(|c| c.get()) != key {
            // SAFETY: `raw` is the retained primary context of `device`; it
            // stays valid while `self` lives (released in `Drop`).
            let r = unsafe { sys::cuCtxSetCurrent(self.raw) };
            self.check("cuCtxSetCurrent", r)?;
            CURRENT.with(|c| c.set(key));
        }
        Ok(())
    }

    /// Map a driver status to `Ok` or an error; a sticky error poisons the
    /// device and is returned as [`Error::DevicePoisoned`].
    #[inline]
    pub(crate) fn check(&self, call: &str, r: CUresult) -> Result<()> {
        if r == CUresult::CUDA_SUCCESS {
            return Ok(());
        }
        Err(self.error(call, r))
    }

    /// The error for a failed driver call (poisoning on a sticky one).
    pub(crate) fn error(&self, call: &str, r: CUresult) -> Error {
        if is_sticky(r) {
            let (name, msg) = driver_strings(r);
            let cause = format!("{call} failed with {name} ({}): {msg}", r as i64);
            let _ = self.poison.set(cause);
            return self.poisoned(self.poison.get().map(String::as_str).unwrap_or_default());
        }
        driver_error(call, r)
    }

    /// The device name in `OutOfMemory` and poison messages.
    pub(crate) fn label(&self) -> String {
        format!("cuda:{} ({})", self.ordinal, self.name)
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        // Modules belong to the context: unload them while it is alive.
        if self.bind_for_drop() {
            self.modules.unload_all();
        }
        // SAFETY: `device`'s primary context was retained once in `try_new`
        // and every object using it (streams, events, graphs, modules) holds
        // an `Arc<Ctx>`, so none is left when this runs.
        unsafe {
            let _ = sys::cuDevicePrimaryCtxRelease_v2(self.device);
        }
        CURRENT.with(|c| {
            if c.get() == self.raw as usize {
                c.set(0)
            }
        });
    }
}

impl Ctx {
    /// Best-effort bind in destructors (ignores poison: cleanup still runs).
    pub(crate) fn bind_for_drop(&self) -> bool {
        let key = self.raw as usize;
        if CURRENT.with(|c| c.get()) == key {
            return true;
        }
        // SAFETY: `raw` is a live retained primary context (see `bind`).
        let ok = unsafe { sys::cuCtxSetCurrent(self.raw) } == CUresult::CUDA_SUCCESS;
        if ok {
            CURRENT.with(|c| c.set(key));
        }
        ok
    }
}
