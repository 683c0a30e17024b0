//! CUDA events: markers in a stream's order, used for cross-stream waits,
//! host waits (with an optional timeout) and, when created with timing,
//! elapsed time between two records.

use super::context::Ctx;
use crate::backend::BackendEvent;
use crate::error::{Error, Result};
use cudarc::driver::sys::{self, CUevent, CUresult};
use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A CUDA event of one context.
pub struct CudaEvent {
    pub(crate) ctx: Arc<Ctx>,
    pub(crate) raw: CUevent,
    pub(crate) timing: bool,
}

// SAFETY: a CUevent is a driver handle usable from any thread with its
// context current; the driver synchronises record/query/wait internally.
unsafe impl Send for CudaEvent {}
// SAFETY: as above; no Rust-side mutable state.
unsafe impl Sync for CudaEvent {}

impl CudaEvent {
    pub(crate) fn new(ctx: Arc<Ctx>, timing: bool) -> Result<Self> {
        ctx.bind()?;
        let flags = if timing { sys::CUevent_flags::CU_EVENT_DEFAULT } else { sys::CUevent_flags::CU_EVENT_DISABLE_TIMING };
        let mut raw: CUevent = std::ptr::null_mut();
        // SAFETY: the context is current; `raw` receives a new event.
        let r = unsafe { sys::cuEventCreate(&mut raw, flags as u32) };
        ctx.check("cuEventCreate", r)?;
        Ok(CudaEvent { ctx, raw, timing })
    }
}

/// Downcast a trait object to a CUDA event of the same context.
pub(crate) fn cuda_event<'a>(ctx: &Ctx, e: &'a dyn BackendEvent) -> Result<&'a CudaEvent> {
    let ev = e.as_any().downcast_ref::<CudaEvent>().ok_or_else(|| Error::DeviceMismatch("a non-CUDA event was used with a CUDA stream".into()))?;
    if ev.ctx.raw != ctx.raw {
        return Err(Error::DeviceMismatch(format!("event of {} used on {}", ev.ctx.label(), ctx.label())));
    }
    Ok(ev)
}

impl BackendEvent for CudaEvent {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn query(&self) -> Result<bool> {
        self.ctx.bind()?;
        // SAFETY: live event of the current context.
        match unsafe { sys::cuEventQuery(self.raw) } {
            CUresult::CUDA_SUCCESS => Ok(true),
            CUresult::CUDA_ERROR_NOT_READY => Ok(false),
            e => Err(self.ctx.error("cuEventQuery", e)),
        }
    }
    fn synchronize(&self, timeout: Option<Duration>) -> Result<()> {
        self.ctx.bind()?;
        let Some(t) = timeout else {
            // SAFETY: live event of the current context.
            let r = unsafe { sys::cuEventSynchronize(self.raw) };
            return self.ctx.check("cuEventSynchronize", r);
        };
        // Bounded wait: poll with a short back-off (the driver has no timed wait).
        let deadline = Instant::now() + t;
        let mut nap = Duration::from_micros(5);
        loop {
            if self.query()? {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout(t));
            }
            std::thread::sleep(nap.min(deadline - now));
            nap = (nap * 2).min(Duration::from_millis(1));
        }
    }
    fn elapsed_ms(&self, earlier: &dyn BackendEvent) -> Result<f32> {
        let e = cuda_event(&self.ctx, earlier)?;
        if !self.timing || !e.timing {
            return Err(Error::InvalidArgument("elapsed_ms needs two events created with timing".into()));
        }
        self.ctx.bind()?;
        let mut ms = 0f32;
        // SAFETY: both are live timing events of the current context.
        let r = unsafe { sys::cuEventElapsedTime_v2(&mut ms, e.raw, self.raw) };
        self.ctx.check("cuEventElapsedTime", r)?;
        Ok(ms)
    }
}

impl Drop for CudaEvent {
    fn drop(&mut self) {
        if self.ctx.bind_for_drop() {
            // SAFETY: the event is owned by `self` and destroyed once; CUDA
            // defers the destruction until pending records complete.
            unsafe {
                let _ = sys::cuEventDestroy_v2(self.raw);
            }
        }
    }
}
