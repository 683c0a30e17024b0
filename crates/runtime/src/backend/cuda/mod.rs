//! The CUDA backend. Owns the entry points ([`try_new`], [`probe`]) and
//! [`CudaBackend`], the device-wide half of the backend trait (streams,
//! events, raw memory); the rest lives in small files:
//!
//! - `context.rs`: the primary context, poisoning by sticky errors;
//! - `stream.rs`: streams and every kernel launch; `blas.rs`: cuBLAS and
//!   cuBLASLt (GEMMs with fused bias/activation epilogues);
//! - `source.rs`: the CUDA C of the kernels; `module.rs`: NVRTC + cache;
//! - `pinned.rs`: pooled pinned staging buffers; `event.rs`; `graph.rs`.
//!
//! libcuda, cuBLAS(Lt) and NVRTC are loaded at run time (cudarc's
//! `dynamic-loading`), so building needs no CUDA toolkit, and a machine
//! without a driver gets [`Error::Unavailable`] instead of a crash.

mod blas;
mod context;
mod error;
mod event;
mod graph;
mod module;
mod pinned;
mod source;
mod stream;
#[cfg(test)]
mod tests;

pub use event::CudaEvent;
pub use graph::CudaGraph;
pub use stream::{AttnKernel, CudaStream};

use crate::backend::{Backend, BackendEvent, BackendKind, BackendStream, BufferId, Capabilities, DType};
use crate::error::{Error, Result};
use context::Ctx;
use cudarc::driver::sys::{self, CUresult};
use std::any::Any;
use std::sync::Arc;

/// A CUDA device (its primary context) as a braid backend.
pub struct CudaBackend {
    ctx: Arc<Ctx>,
}

fn unavailable(reason: impl Into<String>) -> Error {
    Error::Unavailable { backend: "cuda", reason: reason.into() }
}

/// Check that a run-time library can be loaded, without cudarc's panic.
fn require_lib(present: bool, what: &str) -> Result<()> {
    if present {
        Ok(())
    } else {
        Err(unavailable(format!("{what} could not be loaded (is it installed and on LD_LIBRARY_PATH?)")))
    }
}

fn driver_reason(call: &str, r: CUresult) -> String {
    let (name, msg) = error::driver_strings(r);
    format!("{call} failed: {name}: {msg}")
}

/// Load the driver, initialise it and return `(device handle, name, cc)`.
fn open_device(ordinal: usize) -> Result<(sys::CUdevice, String, (i32, i32))> {
    // SAFETY: loading libcuda runs only its own initialisers; the check
    // keeps cudarc from panicking later when the library is missing.
    require_lib(unsafe { sys::is_culib_present() }, "libcuda (the NVIDIA driver)")?;
    // SAFETY: cuInit may be called any number of times from any thread.
    let r = unsafe { sys::cuInit(0) };
    if r != CUresult::CUDA_SUCCESS {
        return Err(unavailable(driver_reason("cuInit", r)));
    }
    let mut count = 0i32;
    // SAFETY: the driver is initialised.
    let r = unsafe { sys::cuDeviceGetCount(&mut count) };
    if r != CUresult::CUDA_SUCCESS {
        return Err(unavailable(driver_reason("cuDeviceGetCount", r)));
    }
    if ordinal >= count as usize {
        return Err(unavailable(format!("no CUDA device {ordinal} ({count} found)")));
    }
    let mut dev: sys::CUdevice = 0;
    // SAFETY: ordinal < count.
    let r = unsafe { sys::cuDeviceGet(&mut dev, ordinal as i32) };
    if r != CUresult::CUDA_SUCCESS {
        return Err(unavailable(driver_reason("cuDeviceGet", r)));
    }
    let mut buf = [0 as std::ffi::c_char; 256];
    // SAFETY: `buf` has room for 256 bytes, the length passed.
    let r = unsafe { sys::cuDeviceGetName(buf.as_mut_ptr(), buf.len() as i32, dev) };
    let name = if r == CUresult::CUDA_SUCCESS {
        // SAFETY: the driver wrote a NUL-terminated string into `buf`.
        unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
    } else {
        format!("CUDA device {ordinal}")
    };
    let attr = |a: sys::CUdevice_attribute| {
        let mut v = 0i32;
        // SAFETY: valid device and attribute.
        let r = unsafe { sys::cuDeviceGetAttribute(&mut v, a, dev) };
        if r == CUresult::CUDA_SUCCESS {
            Ok(v)
        } else {
            Err(unavailable(driver_reason("cuDeviceGetAttribute", r)))
        }
    };
    let cc = (
        attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
        attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
    );
    Ok((dev, name, cc))
}

fn new_backend(ordinal: usize) -> Result<Arc<CudaBackend>> {
    let (dev, name, cc) = open_device(ordinal)?;
    // SAFETY: as for libcuda above.
    require_lib(unsafe { cudarc::cublas::sys::is_culib_present() }, "libcublas (cuBLAS)")?;
    // SAFETY: as for libcuda above.
    require_lib(unsafe { cudarc::nvrtc::sys::is_culib_present() }, "libnvrtc (NVRTC)")?;
    // cuBLASLt is optional: without it GEMMs use cublasGemmEx and a kernel
    // for bias/activation.
    // SAFETY: as for libcuda above.
    let lt_loaded = unsafe { cudarc::cublaslt::sys::is_culib_present() };
    let mut raw: sys::CUcontext = std::ptr::null_mut();
    // SAFETY: `dev` is a valid device; the retain is released in `Ctx::drop`.
    let r = unsafe { sys::cuDevicePrimaryCtxRetain(&mut raw, dev) };
    if r != CUresult::CUDA_SUCCESS {
        return Err(unavailable(driver_reason("cuDevicePrimaryCtxRetain", r)));
    }
    let ctx = Arc::new(Ctx::new(ordinal, dev, raw, name, cc, lt_loaded));
    ctx.bind()?;
    Ok(Arc::new(CudaBackend { ctx }))
}

/// Open CUDA device `ordinal`. Where there is no driver, no device, or a
/// library is missing, this returns [`Error::Unavailable`] (never panics).
pub fn try_new(ordinal: usize) -> Result<Arc<CudaBackend>> {
    match std::panic::catch_unwind(|| new_backend(ordinal)) {
        Ok(r) => r,
        Err(p) => Err(unavailable(format!("loading CUDA failed: {}", crate::panic_message(&p)))),
    }
}

/// How many CUDA devices the driver sees; [`Error::Unavailable`] where
/// there is no driver (never panics).
pub fn device_count() -> Result<usize> {
    let count = || -> Result<usize> {
        // SAFETY: as in `open_device`.
        require_lib(unsafe { sys::is_culib_present() }, "libcuda (the NVIDIA driver)")?;
        // SAFETY: cuInit may be called any number of times from any thread.
        let r = unsafe { sys::cuInit(0) };
        if r != CUresult::CUDA_SUCCESS {
            return Err(unavailable(driver_reason("cuInit", r)));
        }
        let mut n = 0i32;
        // SAFETY: the driver is initialised.
        let r = unsafe { sys::cuDeviceGetCount(&mut n) };
        if r != CUresult::CUDA_SUCCESS {
            return Err(unavailable(driver_reason("cuDeviceGetCount", r)));
        }
        Ok(n.max(0) as usize)
    };
    match std::panic::catch_unwind(count) {
        Ok(r) => r,
        Err(p) => Err(unavailable(format!("loading CUDA failed: {}", crate::panic_message(&p)))),
    }
}

/// For `braid info`: the name of CUDA device 0, or why there is none.
pub fn probe() -> std::result::Result<String, String> {
    match std::panic::catch_unwind(|| open_device(0)) {
        Ok(Ok((_, name, (maj, min)))) => Ok(format!("{name} (sm_{maj}{min})")),
        Ok(Err(Error::Unavailable { reason, .. })) => Err(reason),
        Ok(Err(e)) => Err(e.to_string()),
        Err(p) => Err(format!("loading CUDA failed: {}", crate::panic_message(&p))),
    }
}

impl CudaBackend {
    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.ctx.ordinal
    }
    /// Compute capability (major, minor).
    pub fn compute_capability(&self) -> (i32, i32) {
        self.ctx.cc
    }
    /// How many NVRTC compilations this device has run (each unit once).
    pub fn kernel_compilations(&self) -> usize {
        self.ctx.modules.compiles()
    }
    /// Whether f32 GEMMs may use TF32 (`BRAID_ALLOW_TF32=1`).
    pub fn tf32_allowed(&self) -> bool {
        self.ctx.allow_tf32
    }
    /// Whether GEMMs go through cuBLASLt (fused epilogues): libcublasLt was
    /// found and `BRAID_CUBLASLT` is not `0`.
    pub fn cublaslt_enabled(&self) -> bool {
        self.ctx.use_lt
    }
    /// A CUDA stream with its concrete type (the trait returns `dyn`).
    pub fn cuda_stream(&self) -> Result<Arc<CudaStream>> {
        Ok(Arc::new(CudaStream::new(self.ctx.clone())?))
    }
}

impl Backend for CudaBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Cuda
    }
    fn ordinal(&self) -> usize {
        self.ctx.ordinal
    }
    fn device_name(&self) -> String {
        self.ctx.name.clone()
    }
    fn new_stream(&self) -> Result<Arc<dyn BackendStream>> {
        Ok(self.cuda_stream()?)
    }
    fn new_event(&self, timing: bool) -> Result<Arc<dyn BackendEvent>> {
        Ok(Arc::new(CudaEvent::new(self.ctx.clone(), timing)?))
    }
    fn alloc(&self, bytes: usize) -> Result<BufferId> {
        self.ctx.bind()?;
        let mut p: sys::CUdeviceptr = 0;
        // SAFETY: plain device allocation in the current context.
        let r = unsafe { sys::cuMemAlloc_v2(&mut p, bytes.max(1)) };
        match r {
            CUresult::CUDA_SUCCESS => Ok(BufferId::from_raw(p)),
            CUresult::CUDA_ERROR_OUT_OF_MEMORY => {
                let detail = match self.memory_info() {
                    Some((free, total)) => format!(" (CUDA_ERROR_OUT_OF_MEMORY: {free} of {total} bytes free on the device)"),
                    None => " (CUDA_ERROR_OUT_OF_MEMORY)".into(),
                };
                Err(Error::OutOfMemory { device: self.ctx.label(), requested: bytes, reserved: 0, allocated: 0, detail })
            }
            e => Err(self.ctx.error("cuMemAlloc", e)),
        }
    }
    unsafe fn free(&self, buffer: BufferId, _bytes: usize) {
        let ptr = buffer.raw();
        if !self.ctx.bind_for_drop() {
            return;
        }
        // SAFETY: the caller guarantees `ptr` came from `alloc`, is freed
        // once and no work uses it any more.
        let r = unsafe { sys::cuMemFree_v2(ptr) };
        if r != CUresult::CUDA_SUCCESS {
            // Records a sticky error as poison; nothing else to do in `free`.
            let _ = self.ctx.error("cuMemFree", r);
        }
    }
    fn memory_info(&self) -> Option<(usize, usize)> {
        self.ctx.bind().ok()?;
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: the context is current.
        let r = unsafe { sys::cuMemGetInfo_v2(&mut free, &mut total) };
        (r == CUresult::CUDA_SUCCESS).then_some((free, total))
    }
    fn synchronize(&self) -> Result<()> {
        self.ctx.bind()?;
        // SAFETY: the context is current.
        let r = unsafe { sys::cuCtxSynchronize() };
        self.ctx.check("cuCtxSynchronize", r)
    }
    fn supports(&self, dtype: DType) -> bool {
        matches!(dtype, DType::F32 | DType::BF16 | DType::F16)
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities { graph_capture: true, host_functions: true, dtypes: vec![DType::F32, DType::BF16, DType::F16], timing: true, varlen_attention: true }
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}
