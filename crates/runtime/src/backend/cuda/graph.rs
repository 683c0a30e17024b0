//! Captured CUDA graphs: `CudaStream::end_capture` instantiates the captured
//! work once; [`CudaGraph::launch`] replays it on any CUDA stream of the same
//! context with one `cuGraphLaunch`.

use super::context::Ctx;
use super::stream::CudaStream;
use crate::backend::{BackendGraph, BackendStream};
use crate::error::{Error, Result};
use cudarc::driver::sys::{self, CUgraphExec};
use std::sync::{Arc, Mutex};

/// An instantiated, replayable graph.
pub struct CudaGraph {
    pub(crate) ctx: Arc<Ctx>,
    /// A graph exec must not be launched from two threads at once (CUDA
    /// graph objects are not internally synchronised): the mutex orders
    /// launches, which the driver then orders on the device.
    pub(crate) exec: Mutex<CUgraphExec>,
}

// SAFETY: the exec handle is only used under the mutex, with the context
// current; the driver allows that from any thread.
unsafe impl Send for CudaGraph {}
// SAFETY: as above.
unsafe impl Sync for CudaGraph {}

impl BackendGraph for CudaGraph {
    fn launch(&self, stream: &dyn BackendStream) -> Result<()> {
        let s = stream
            .as_any()
            .downcast_ref::<CudaStream>()
            .ok_or_else(|| Error::DeviceMismatch("a CUDA graph can only be launched on a CUDA stream".into()))?;
        if s.ctx.raw != self.ctx.raw {
            return Err(Error::DeviceMismatch(format!("graph of {} launched on {}", self.ctx.label(), s.ctx.label())));
        }
        self.ctx.bind()?;
        let exec = crate::sync_std_lock(&self.exec);
        // SAFETY: `exec` is a live instantiated graph of this context and
        // `s.raw` a live stream of it; the memory the graph names is kept
        // alive by its owner (the caller's contract, as for eager kernels).
        let r = unsafe { sys::cuGraphLaunch(*exec, s.raw) };
        self.ctx.check("cuGraphLaunch", r)
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        if self.ctx.bind_for_drop() {
            let exec = *self.exec.get_mut().unwrap_or_else(|e| e.into_inner());
            // SAFETY: owned exec, destroyed once; CUDA completes pending
            // launches before releasing it.
            unsafe {
                let _ = sys::cuGraphExecDestroy(exec);
            }
        }
    }
}
