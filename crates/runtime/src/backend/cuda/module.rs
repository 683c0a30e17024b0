//! The NVRTC kernel cache: each [`Unit`] of CUDA C (see `source.rs`) is
//! compiled for the device's exact architecture the first time one of its
//! kernels is launched, loaded into the context, and kept for the context's
//! life. One `OnceLock` per unit means two threads asking for the same kernel
//! at once compile it once (the second blocks until the first is done), and a
//! launch after that costs one atomic load and a small map lookup.

use super::context::Ctx;
use super::source;
use crate::error::{Error, Result};
use cudarc::driver::sys::{self, CUfunction, CUmodule, CUresult};
use cudarc::nvrtc::sys as nv;
use std::collections::HashMap;
use std::ffi::{c_char, CStr, CString};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// A compilation unit: a group of kernels compiled together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unit {
    Elementwise = 0,
    Norm = 1,
    Attention = 2,
    Gather = 3,
}

const UNITS: usize = 4;

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::Elementwise => "braid_elementwise",
            Unit::Norm => "braid_norm",
            Unit::Attention => "braid_attention",
            Unit::Gather => "braid_gather",
        }
    }
    fn source(self) -> &'static str {
        match self {
            Unit::Elementwise => source::ELEMENTWISE,
            Unit::Norm => source::NORM,
            Unit::Attention => source::ATTENTION,
            Unit::Gather => source::GATHER,
        }
    }
}

/// A kernel handle, valid while its module is loaded.
#[derive(Clone, Copy)]
pub(crate) struct Func(pub CUfunction);

// SAFETY: a CUfunction is an immutable handle into a loaded module; the
// driver allows launching it from any thread with the context current.
unsafe impl Send for Func {}
// SAFETY: as above, launching does not mutate the handle.
unsafe impl Sync for Func {}

struct Loaded {
    module: CUmodule,
    funcs: HashMap<&'static str, Func>,
}

// SAFETY: `module` is only touched again by `unload_all` (under `&mut`-like
// exclusivity in `Ctx::drop`); the map is immutable after construction.
unsafe impl Send for Loaded {}
// SAFETY: as above.
unsafe impl Sync for Loaded {}

/// Per-context cache of compiled units.
pub(crate) struct ModuleCache {
    units: [OnceLock<std::result::Result<Loaded, Error>>; UNITS],
    /// How many NVRTC compilations ran (tests check "compiled once").
    compiles: AtomicUsize,
}

impl ModuleCache {
    pub(crate) fn new() -> Self {
        ModuleCache { units: Default::default(), compiles: AtomicUsize::new(0) }
    }

    /// Number of NVRTC compilations so far.
    pub(crate) fn compiles(&self) -> usize {
        // Relaxed: a statistic; no other memory is published through it.
        self.compiles.load(Ordering::Relaxed)
    }

    /// The kernel `name` of `unit`, compiling the unit on first use. The
    /// context must be current on this thread.
    pub(crate) fn get(&self, ctx: &Ctx, unit: Unit, name: &str) -> Result<Func> {
        let loaded = self.units[unit as usize].get_or_init(|| {
            // Relaxed: counted for statistics only.
            self.compiles.fetch_add(1, Ordering::Relaxed);
            compile_and_load(ctx, unit)
        });
        match loaded {
            Ok(l) => l.funcs.get(name).copied().ok_or_else(|| Error::Compile {
                kernel: format!("{}::{name}", unit.name()),
                log: "no such kernel in the unit".into(),
            }),
            Err(e) => Err(e.clone()),
        }
    }

    pub(crate) fn unload_all(&mut self) {
        for cell in &mut self.units {
            if let Some(Ok(l)) = cell.take() {
                // SAFETY: the module was loaded into the (current) context and
                // no kernel of it is used after the context's last user died.
                unsafe {
                    let _ = sys::cuModuleUnload(l.module);
                }
            }
        }
    }
}

fn nvrtc_check(unit: Unit, call: &str, r: nv::nvrtcResult) -> Result<()> {
    if r == nv::nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        Err(Error::Compile { kernel: unit.name().into(), log: format!("{call} failed: {r:?}") })
    }
}

/// Compile `unit` with NVRTC to a cubin for the device and load it.
fn compile_and_load(ctx: &Ctx, unit: Unit) -> std::result::Result<Loaded, Error> {
    let src = CString::new(unit.source()).expect("kernel source has no NUL");
    let name = CString::new(format!("{}.cu", unit.name())).expect("no NUL");
    let arch = CString::new(format!("--gpu-architecture=sm_{}{}", ctx.cc.0, ctx.cc.1)).expect("no NUL");
    let opts = [arch, CString::new("--std=c++17").expect("no NUL")];
    let opt_ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
    let mut prog: nv::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: `src` and `name` are NUL-terminated and outlive the call; no
    // headers are passed (count 0, null arrays).
    let r = unsafe { nv::nvrtcCreateProgram(&mut prog, src.as_ptr(), name.as_ptr(), 0, std::ptr::null(), std::ptr::null()) };
    nvrtc_check(unit, "nvrtcCreateProgram", r)?;
    // SAFETY: `prog` was created above; the option strings outlive the call.
    let r = unsafe { nv::nvrtcCompileProgram(prog, opt_ptrs.len() as i32, opt_ptrs.as_ptr()) };
    let result = if r != nv::nvrtcResult::NVRTC_SUCCESS {
        // SAFETY: `prog` is valid; the log buffer is sized by NVRTC itself.
        let log = unsafe { program_log(prog) };
        Err(Error::Compile { kernel: unit.name().into(), log: format!("{r:?}: {log}") })
    } else {
        // SAFETY: `prog` compiled successfully; the buffer is sized by NVRTC.
        unsafe { cubin(unit, prog) }
    };
    // SAFETY: `prog` is valid and destroyed once.
    unsafe {
        let _ = nv::nvrtcDestroyProgram(&mut prog);
    }
    let image = result?;
    let mut module: CUmodule = std::ptr::null_mut();
    // SAFETY: `image` is a complete cubin for this device; the context is
    // current (the caller bound it).
    let r = unsafe { sys::cuModuleLoadData(&mut module, image.as_ptr() as *const _) };
    ctx.check("cuModuleLoadData", r)?;
    let mut funcs = HashMap::new();
    for &k in source::kernel_names(unit).iter() {
        let cname = CString::new(k).expect("no NUL");
        let mut f: CUfunction = std::ptr::null_mut();
        // SAFETY: `module` was just loaded; `cname` is NUL-terminated.
        let r = unsafe { sys::cuModuleGetFunction(&mut f, module, cname.as_ptr()) };
        if r != CUresult::CUDA_SUCCESS {
            // SAFETY: unload the module we loaded above; nothing uses it yet.
            unsafe {
                let _ = sys::cuModuleUnload(module);
            }
            return Err(ctx.error(&format!("cuModuleGetFunction({k})"), r));
        }
        funcs.insert(k, Func(f));
    }
    Ok(Loaded { module, funcs })
}

/// # Safety
/// `prog` is a valid NVRTC program.
unsafe fn program_log(prog: nv::nvrtcProgram) -> String {
    let mut size = 0usize;
    // SAFETY: per the function contract.
    if unsafe { nv::nvrtcGetProgramLogSize(prog, &mut size) } != nv::nvrtcResult::NVRTC_SUCCESS {
        return "(no log)".into();
    }
    let mut buf = vec![0u8; size.max(1)];
    // SAFETY: `buf` holds `size` bytes as NVRTC asked.
    if unsafe { nv::nvrtcGetProgramLog(prog, buf.as_mut_ptr() as *mut c_char) } != nv::nvrtcResult::NVRTC_SUCCESS {
        return "(no log)".into();
    }
    CStr::from_bytes_until_nul(&buf).map(|c| c.to_string_lossy().into_owned()).unwrap_or_default()
}

/// # Safety
/// `prog` is a successfully compiled NVRTC program.
unsafe fn cubin(unit: Unit, prog: nv::nvrtcProgram) -> Result<Vec<u8>> {
    let mut size = 0usize;
    // SAFETY: per the function contract.
    nvrtc_check(unit, "nvrtcGetCUBINSize", unsafe { nv::nvrtcGetCUBINSize(prog, &mut size) })?;
    let mut buf = vec![0u8; size];
    // SAFETY: `buf` holds `size` bytes as NVRTC asked.
    nvrtc_check(unit, "nvrtcGetCUBIN", unsafe { nv::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut c_char) })?;
    Ok(buf)
}
